"""Microsoft's Python DPS service SDKs, unchanged, against OpenDPS: `azure-iot-deviceprovisioning`
(1.0.0b1, azure-core) and `azure-iothub-provisioningserviceclient` (1.2.0, msrest). Both create
enrollments and groups, query them with and without WHERE, page by page, and read them back.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from provisioningserviceclient import ProvisioningServiceClient, QuerySpecification
from provisioningserviceclient.models import AttestationMechanism, IndividualEnrollment, SymmetricKeyAttestation

IDS = [f"py-dev-{n:02}" for n in range(7)]
GROUPS = ["py-group-a", "py-group-b", "py-group-c"]


@pytest.fixture(scope="module")
def new_sdk(server):
    return DeviceProvisioningClient.from_connection_string(server.connection_string)


@pytest.fixture(scope="module")
def old_sdk(server):
    return ProvisioningServiceClient.create_from_connection_string(server.connection_string)


@pytest.fixture(scope="module")
def enrolled(new_sdk, old_sdk):
    """7 individual enrollments (every third disabled) and 3 groups (the middle one disabled),
    written by both SDKs."""
    for n, rid in enumerate(IDS):
        body = {"registrationId": rid, "attestation": {"type": "symmetricKey"}}
        if n % 3 == 0:
            body["provisioningStatus"] = "disabled"
        if n % 2 == 0:
            created = new_sdk.enrollment.create_or_update(id=rid, enrollment=body)
            keys = created["attestation"]["symmetricKey"]
            assert keys["primaryKey"] and keys["secondaryKey"], f"create response carries the keys: {created}"
        else:
            # 1.2.0 has no helper for symmetric keys: the generated model, empty keys to be generated.
            mechanism = AttestationMechanism(type="symmetricKey", symmetric_key=SymmetricKeyAttestation())
            e = IndividualEnrollment.create(rid, mechanism)
            if n % 3 == 0:
                e.provisioning_status = "disabled"
            created = old_sdk.create_or_update(e)
            assert created.attestation.symmetric_key.primary_key, "create response carries the keys"
    for g in GROUPS:
        body = {"enrollmentGroupId": g, "attestation": {"type": "symmetricKey"},
                "provisioningStatus": "disabled" if g == "py-group-b" else "enabled"}
        new_sdk.enrollment_group.create_or_update(id=g, enrollment_group=body)
    return True


DISABLED = [rid for n, rid in enumerate(IDS) if n % 3 == 0]
QUERIES = ["*", "SELECT *", "SELECT * FROM enrollments"]


@pytest.mark.parametrize("query", QUERIES)
def test_new_sdk_queries_every_enrollment_paged(new_sdk, enrolled, query):
    pages = [list(p) for p in new_sdk.enrollment.query(query_specification={"query": query}, top=3).by_page()]
    assert [len(p) for p in pages] == [3, 3, 1], query
    assert [e["registrationId"] for p in pages for e in p] == IDS


def test_new_sdk_where_and_groups(new_sdk, enrolled):
    q = {"query": "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'"}
    assert [e["registrationId"] for e in new_sdk.enrollment.query(query_specification=q, top=2)] == DISABLED
    assert [g["enrollmentGroupId"] for g in new_sdk.enrollment_group.query(query_specification={"query": "*"}, top=2)] == GROUPS
    q = {"query": "SELECT * FROM enrollmentGroups WHERE provisioningStatus = 'enabled'"}
    assert [g["enrollmentGroupId"] for g in new_sdk.enrollment_group.query(query_specification=q, top=1)] == ["py-group-a", "py-group-c"]
    with pytest.raises(HttpResponseError) as err:
        list(new_sdk.enrollment.query(query_specification={"query": "SELECT registrationId FROM enrollments"}))
    assert err.value.status_code == 400


def _old_query_all(query):
    ids, pages = [], 0
    while query.has_next:
        try:
            page = query.next()
        except StopIteration:
            break
        pages += 1
        assert pages < 100, "the query does not end"
        ids.extend(getattr(i, "registration_id", None) or getattr(i, "enrollment_group_id") for i in page)
    return ids, pages


def test_old_sdk_queries_paged_with_and_without_where(old_sdk, enrolled):
    for text in QUERIES:
        ids, pages = _old_query_all(old_sdk.create_individual_enrollment_query(QuerySpecification(query=text), page_size=2))
        assert ids == IDS, text
        assert pages == 4, text
    q = QuerySpecification(query="SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'")
    ids, _ = _old_query_all(old_sdk.create_individual_enrollment_query(q, page_size=1))
    assert ids == DISABLED
    ids, _ = _old_query_all(old_sdk.create_enrollment_group_query(QuerySpecification(query="*"), page_size=2))
    assert ids == GROUPS
    q = QuerySpecification(query="SELECT * FROM enrollmentGroups WHERE provisioningStatus = 'disabled'")
    ids, _ = _old_query_all(old_sdk.create_enrollment_group_query(q))
    assert ids == ["py-group-b"]
    # (1.2.0's create_registration_state_query cannot run: its Query passes `raw` twice.)


def test_new_sdk_registration_states_of_a_group(new_sdk, enrolled):
    # The registrations of a group (none yet): an empty answer, not an error.
    assert list(new_sdk.device_registration_state.query(id="py-group-a", top=5)) == []


def test_x509_from_pem_files_and_round_trip(server, new_sdk, old_sdk, tmp_path):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=py-x509", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    pem = cert.read_text()
    b64_pem = base64.b64encode(pem.encode()).decode()
    # The old SDK with the PEM text, the new one with base64 of the PEM text.
    e = IndividualEnrollment.create("py-x509-a", AttestationMechanism.create_with_x509_client_certs(pem))
    old_sdk.create_or_update(e)
    body = {"enrollmentGroupId": "py-x509-g", "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": b64_pem}}}}}
    created = new_sdk.enrollment_group.create_or_update(id="py-x509-g", enrollment_group=body)
    thumb = created["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["sha256Thumbprint"]
    got = old_sdk.get_individual_enrollment("py-x509-a")
    assert got.attestation.x509.client_certificates.primary.info.sha256_thumbprint == thumb
    # GET-modify-PUT through the old SDK (its models reformat the timestamps): certificates kept.
    got.provisioning_status = "disabled"
    updated = old_sdk.create_or_update(got)
    assert updated.provisioning_status == "disabled"
    assert updated.attestation.x509.client_certificates.primary.info.sha256_thumbprint == thumb
    group = old_sdk.get_enrollment_group("py-x509-g")
    group.provisioning_status = "disabled"
    assert old_sdk.create_or_update(group).provisioning_status == "disabled"
    q = {"query": "SELECT * FROM enrollments WHERE attestation.type = 'x509'"}
    assert [x["registrationId"] for x in new_sdk.enrollment.query(query_specification=q)] == ["py-x509-a"]


def test_tpm_enrollments_through_both_sdks(new_sdk, old_sdk):
    """TPM individual enrollments as the SDKs write them; the EK is checked on write (an ECC EK is
    refused with a message that says so, and nothing is stored); a GET-modify-PUT keeps the EK."""
    data = Path(__file__).resolve().parent.parent.parent / "crates" / "dps-attest" / "testdata" / "tpm"
    ek = base64.b64encode((data / "swtpm-ek.pub").read_bytes()).decode()
    ecc = base64.b64encode((data / "swtpm-ek-ecc.pub").read_bytes()).decode()
    old_sdk.create_or_update(IndividualEnrollment.create("py-tpm-a", AttestationMechanism.create_with_tpm(ek)))
    body = {"registrationId": "py-tpm-b", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}}
    created = new_sdk.enrollment.create_or_update(id="py-tpm-b", enrollment=body)
    assert created["attestation"]["tpm"]["endorsementKey"] == ek
    got = old_sdk.get_individual_enrollment("py-tpm-a")
    assert got.attestation.type == "tpm" and got.attestation.tpm.endorsement_key == ek
    got.provisioning_status = "disabled"
    updated = old_sdk.create_or_update(got)
    assert updated.provisioning_status == "disabled" and updated.attestation.tpm.endorsement_key == ek
    bad = {"registrationId": "py-tpm-ecc", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ecc}}}
    with pytest.raises(HttpResponseError) as refused:
        new_sdk.enrollment.create_or_update(id="py-tpm-ecc", enrollment=bad)
    assert refused.value.status_code == 400 and "ECC" in str(refused.value)
    with pytest.raises(HttpResponseError) as missing:
        new_sdk.enrollment.get(id="py-tpm-ecc")
    assert missing.value.status_code == 404
    q = {"query": "SELECT * FROM enrollments WHERE attestation.type = 'tpm'"}
    assert sorted(x["registrationId"] for x in new_sdk.enrollment.query(query_specification=q)) == ["py-tpm-a", "py-tpm-b"]
