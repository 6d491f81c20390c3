//! Domain entities. They serialize in the DPS wire shape (camelCase, docs/protocol.md, "Enrollments"): the
//! enrollment document is an externally defined schema whose every field must round-trip, so the
//! domain keeps one definition of it instead of a wire copy and a domain copy (see ARCHITECTURE.md).

mod certificate;
mod connection_string;
mod enrollment;
mod hub;
mod ids;
mod instance;
mod registration;
mod tpm;

pub use certificate::CaCertificate;
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use enrollment::{
    AllocationPolicy, AttestationMechanism, AttestationType, Capabilities, CustomAllocationDefinition, EnrollmentGroup,
    IndividualEnrollment, ProvisioningStatus, ReprovisionPolicy, SymmetricKeyAttestation, TpmAttestation,
    X509Attestation, X509CaReferences, X509CertificateInfo, X509CertificateWithInfo, X509Certificates,
};
pub use hub::{Hub, HubDevice, HubPolicy, HubRight, HUB_POLICIES};
pub use ids::{validate_group_id, validate_instance_name, validate_registration_id, IdScope};
pub use instance::{
    AccessPolicy, AccessRight, Instance, IpFilterAction, IpFilterRule, IpFilterTarget, LinkedHub, NetworkRefusal,
    ServiceAllocationPolicy, Sku,
};
pub use registration::{DeviceRegistrationState, RegistrationRecord, RegistrationStatus};
pub use tpm::{IssuedTpmKey, TpmIssuedKeys, MAX_ISSUED_TPM_KEYS};
