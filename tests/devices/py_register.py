"""Registers one device with the official Azure IoT DPS Python device SDK (azure-iot-device, MQTT)
and prints exactly one JSON line on stdout: {"ok": true, "result": {...}} or
{"ok": false, "error": {...}}. Driven by test_device_sdks.py in its own process, so a hung SDK
thread can be killed by the test's timeout and never outlives the test.

Usage: py_register.py --host IP --id-scope SCOPE --registration-id ID --root-ca PEM
                      (--symmetric-key KEY | --cert FILE --key FILE)
"""

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--id-scope", required=True)
    p.add_argument("--registration-id", required=True)
    p.add_argument("--root-ca", required=True)
    p.add_argument("--symmetric-key")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--websockets", action="store_true", help="MQTT over WebSockets on 443")
    a = p.parse_args()

    from azure.iot.device import ProvisioningDeviceClient, X509

    with open(a.root_ca) as f:
        root = f.read()
    common = dict(
        provisioning_host=a.host,
        registration_id=a.registration_id,
        id_scope=a.id_scope,
        server_verification_cert=root,
        websockets=a.websockets,
    )
    if a.symmetric_key:
        client = ProvisioningDeviceClient.create_from_symmetric_key(symmetric_key=a.symmetric_key, **common)
    else:
        client = ProvisioningDeviceClient.create_from_x509_certificate(x509=X509(a.cert, a.key), **common)

    try:
        result = client.register()
    except Exception as e:  # noqa: BLE001 - every SDK error is an answer here
        err = {"name": type(e).__name__, "module": type(e).__module__, "message": str(e)}
        cause = e.__cause__ or e.__context__
        if cause is not None:
            err["cause"] = {"name": type(cause).__name__, "message": str(cause)}
        print(json.dumps({"ok": False, "error": err}), flush=True)
        return 0

    state = result.registration_state
    out = {
        "operationId": result.operation_id,
        "status": result.status,
        "registrationState": None
        if state is None
        else {
            "assignedHub": state.assigned_hub,
            "deviceId": state.device_id,
            "subStatus": state.sub_status,
            "createdDateTimeUtc": state.created_date_time,
            "lastUpdatedDateTimeUtc": state.last_update_date_time,
            "etag": state.etag,
            "payload": state.response_payload,
        },
    }
    print(json.dumps({"ok": True, "result": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
