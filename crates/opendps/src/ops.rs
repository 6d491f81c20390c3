//! Operator commands, shaped like `az iot dps` (same verbs, flags and short aliases): deployments,
//! instances (`dps`), linked hubs, access policies, CA certificates, enrollments, enrollment
//! groups, registrations. Each goes through the management or service API of the running server
//! (`client.rs`); results are printed by `output.rs` (`-o`, `--query`).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{manage, seg, Service, Target};
use crate::output::Printer;

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000";
const DPS: &str = "providers/Microsoft.Devices/provisioningServices";

#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {
    /// Deploy an ARM template to a resource group (like `az deployment group create`).
    #[command(after_help = "Example:\n  opendps deployment create -g my-rg -f template.json -p dpsName=my-dps")]
    Create {
        /// Resource group to deploy to.
        #[arg(long, short = 'g')]
        resource_group: String,
        /// The ARM template (JSON; a trailing comma is tolerated).
        #[arg(long, short = 'f')]
        template_file: PathBuf,
        /// `name=value`, or `@params.json` (an ARM parameters file); repeatable.
        #[arg(long, short = 'p', num_args = 1..)]
        parameters: Vec<String>,
        /// Deployment name (default: the template file's stem).
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// Location of the resource group (what `[resourceGroup().location]` returns).
        #[arg(long, short = 'l')]
        location: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DpsCmd {
    /// List DPS instances.
    #[command(after_help = "Example:\n  opendps dps list -o table")]
    List {
        /// Only the instances of this resource group.
        #[arg(long, short = 'g')]
        resource_group: Option<String>,
    },
    /// Show an instance (ID scope, host names, linked hubs, policies without keys).
    #[command(after_help = "Example:\n  opendps dps show -n opendps --query properties.idScope -o tsv")]
    Show(NameArg),
    /// Create a DPS instance (like `az iot dps create`).
    #[command(after_help = "Example:\n  opendps dps create -n my-dps -g my-rg -l westeurope")]
    Create {
        /// Name of the new instance.
        #[arg(long = "dps-name", short = 'n', visible_alias = "name")]
        name: String,
        /// Resource group of the new instance.
        #[arg(long, short = 'g')]
        resource_group: String,
        /// Location (region) of the instance (default: the server's region).
        #[arg(long, short = 'l')]
        location: Option<String>,
        /// Minimum TLS version devices must use ("1.2" or "1.3"); fixed at creation.
        #[arg(long)]
        min_tls_version: Option<String>,
    },
    /// Update an instance: allocation policy, tags, or any property with --set.
    #[command(after_help = "Example:\n  opendps dps update -n opendps --allocation-policy GeoLatency --tags env=lab")]
    Update {
        #[command(flatten)]
        dps: NameArg,
        /// Instance allocation policy: Hashed, GeoLatency or Static.
        #[arg(long, visible_alias = "ap")]
        allocation_policy: Option<String>,
        /// Tags as key=value (replaces the instance's tags); repeatable.
        #[arg(long, num_args = 1..)]
        tags: Vec<String>,
        /// Set a property by its path, e.g. properties.allocationPolicy=Hashed (value as JSON or text); repeatable.
        #[arg(long, num_args = 1..)]
        set: Vec<String>,
        /// Only update if the instance's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// Delete an instance and everything it holds.
    #[command(after_help = "Example:\n  opendps dps delete -n my-dps")]
    Delete(NameArg),
    /// Print the service connection string (what the service SDKs take).
    #[command(after_help = "Example:\n  opendps dps connection-string --query connectionString -o tsv")]
    ConnectionString {
        #[command(flatten)]
        name: NameArg,
        /// Shared access policy (default provisioningserviceowner).
        #[arg(long, visible_alias = "pn")]
        policy: Option<String>,
        /// Which key the string carries: primary (default) or secondary.
        #[arg(long, visible_alias = "kt", value_enum, default_value_t = KeyType::Primary)]
        key_type: KeyType,
    },
    /// Linked IoT hubs.
    #[command(subcommand, after_help = "Example:\n  opendps dps linked-hub list -o table")]
    LinkedHub(HubCmd),
    /// Shared access policies.
    #[command(subcommand, after_help = "Example:\n  opendps dps policy list -o table")]
    Policy(PolicyCmd),
    /// CA certificates and their proof of possession.
    #[command(subcommand, after_help = "Example:\n  opendps dps certificate list")]
    Certificate(CertCmd),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum KeyType {
    Primary,
    Secondary,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RenewKey {
    Primary,
    Secondary,
    /// Both keys.
    Both,
    /// Exchange primary and secondary.
    Swap,
}

/// Which DPS instance a command addresses.
#[derive(Args, Debug, Clone, Default)]
pub struct NameArg {
    /// DPS instance name (optional when the server has one instance).
    #[arg(long = "dps-name", short = 'n', visible_alias = "name")]
    pub name: Option<String>,
    /// Resource group of the instance (optional; narrows --dps-name).
    #[arg(long, short = 'g')]
    pub resource_group: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum HubCmd {
    /// Link an IoT hub to the instance.
    #[command(
        after_help = "Example:\n  opendps dps linked-hub create --connection-string \"HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=…\" --location local"
    )]
    Create {
        #[command(flatten)]
        dps: NameArg,
        /// The hub's owner connection string.
        #[arg(long, visible_alias = "cs")]
        connection_string: String,
        /// The hub's region (a known Azure region or the server's own region).
        #[arg(long, short = 'l')]
        location: String,
        /// Weight of the hub in hashed allocation (1 to 1000).
        #[arg(long, visible_alias = "aw")]
        allocation_weight: Option<i64>,
        /// Whether the instance's allocation policy may assign devices to this hub.
        #[arg(long, visible_alias = "aap")]
        apply_allocation_policy: Option<bool>,
    },
    /// List the linked hubs.
    #[command(after_help = "Example:\n  opendps dps linked-hub list -o table")]
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    /// Show one linked hub.
    #[command(after_help = "Example:\n  opendps dps linked-hub show --linked-hub myhub.azure-devices.net")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// The hub's host name.
        #[arg(long, visible_alias = "lh")]
        linked_hub: String,
    },
    /// Change a linked hub's allocation weight or whether allocation applies to it.
    #[command(
        after_help = "Example:\n  opendps dps linked-hub update --linked-hub myhub.azure-devices.net --allocation-weight 10"
    )]
    Update {
        #[command(flatten)]
        dps: NameArg,
        /// The hub's host name.
        #[arg(long, visible_alias = "lh")]
        linked_hub: String,
        /// Weight of the hub in hashed allocation (1 to 1000).
        #[arg(long, visible_alias = "aw")]
        allocation_weight: Option<i64>,
        /// Whether the instance's allocation policy may assign devices to this hub.
        #[arg(long, visible_alias = "aap")]
        apply_allocation_policy: Option<bool>,
    },
    /// Unlink a hub.
    #[command(after_help = "Example:\n  opendps dps linked-hub delete --linked-hub myhub.azure-devices.net")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// The hub's host name.
        #[arg(long, visible_alias = "lh")]
        linked_hub: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create a shared access policy (keys generated unless given).
    #[command(
        after_help = "Example:\n  opendps dps policy create --policy-name reader --rights EnrollmentRead RegistrationStatusRead"
    )]
    Create {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the policy.
        #[arg(long, visible_alias = "pn")]
        policy_name: String,
        /// Rights, space or comma separated: ServiceConfig EnrollmentRead EnrollmentWrite DeviceConnect RegistrationStatusRead RegistrationStatusWrite.
        #[arg(long, short = 'r', num_args = 1..)]
        rights: Vec<String>,
        /// Primary key (base64 of 16 to 64 bytes; generated when left out).
        #[arg(long, visible_alias = "pk")]
        primary_key: Option<String>,
        /// Secondary key (base64 of 16 to 64 bytes; generated when left out).
        #[arg(long, visible_alias = "sk")]
        secondary_key: Option<String>,
    },
    /// List the policies (without keys).
    #[command(after_help = "Example:\n  opendps dps policy list -o table")]
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    /// Show a policy with its keys.
    #[command(after_help = "Example:\n  opendps dps policy show --policy-name provisioningserviceowner")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the policy.
        #[arg(long, visible_alias = "pn")]
        policy_name: String,
    },
    /// Change a policy's rights or keys.
    #[command(
        after_help = "Example:\n  opendps dps policy update --policy-name reader --rights EnrollmentRead --renew-key secondary"
    )]
    Update {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the policy.
        #[arg(long, visible_alias = "pn")]
        policy_name: String,
        /// New rights (replace the old ones), space or comma separated.
        #[arg(long, short = 'r', num_args = 1..)]
        rights: Vec<String>,
        /// New primary key (base64 of 16 to 64 bytes).
        #[arg(long, visible_alias = "pk")]
        primary_key: Option<String>,
        /// New secondary key (base64 of 16 to 64 bytes).
        #[arg(long, visible_alias = "sk")]
        secondary_key: Option<String>,
        /// Regenerate a key: primary, secondary, both, or swap them.
        #[arg(long, value_enum)]
        renew_key: Option<RenewKey>,
    },
    /// Regenerate a policy's primary or secondary key (or both, or swap them).
    #[command(
        after_help = "Example:\n  opendps dps policy renew-key --policy-name provisioningserviceowner --key-type secondary"
    )]
    RenewKey {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the policy.
        #[arg(long, visible_alias = "pn")]
        policy_name: String,
        /// Which key: primary, secondary, both, or swap.
        #[arg(long, visible_alias = "kt", value_enum)]
        key_type: RenewKey,
    },
    /// Delete a policy (an instance keeps at least one).
    #[command(after_help = "Example:\n  opendps dps policy delete --policy-name reader")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the policy.
        #[arg(long, visible_alias = "pn")]
        policy_name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Upload a CA certificate (PEM or DER file).
    #[command(after_help = "Example:\n  opendps dps certificate create --certificate-name my-ca --path ca.pem")]
    Create {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the certificate in the instance.
        #[arg(long)]
        certificate_name: String,
        /// The certificate file (PEM or DER).
        #[arg(long, short = 'p')]
        path: PathBuf,
        /// Mark verified on upload (skips proof of possession).
        #[arg(long)]
        verified: bool,
    },
    /// List the CA certificates.
    #[command(after_help = "Example:\n  opendps dps certificate list -o table")]
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    /// Show a CA certificate.
    #[command(after_help = "Example:\n  opendps dps certificate show --certificate-name my-ca")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the certificate in the instance.
        #[arg(long)]
        certificate_name: String,
    },
    /// Delete a CA certificate.
    #[command(after_help = "Example:\n  opendps dps certificate delete --certificate-name my-ca --etag \"<etag>\"")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the certificate in the instance.
        #[arg(long)]
        certificate_name: String,
        /// Only delete if the certificate's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// Get a verification code: sign a certificate with CN = code using the CA's key.
    #[command(after_help = "Example:\n  opendps dps certificate generate-verification-code --certificate-name my-ca")]
    GenerateVerificationCode {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the certificate in the instance.
        #[arg(long)]
        certificate_name: String,
        /// Only if the certificate's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// Prove possession with the verification certificate.
    #[command(
        after_help = "Example:\n  opendps dps certificate verify --certificate-name my-ca --path verification.pem"
    )]
    Verify {
        #[command(flatten)]
        dps: NameArg,
        /// Name of the certificate in the instance.
        #[arg(long)]
        certificate_name: String,
        /// The verification certificate (CN = the code), signed by the CA's key.
        #[arg(long, short = 'p')]
        path: PathBuf,
        /// Only if the certificate's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
}

/// `--attestation-type`, in az's spelling (`symmetricKey`) or lower case.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AttestationKind {
    #[value(name = "symmetricKey", alias = "symmetrickey")]
    SymmetricKey,
    X509,
    Tpm,
}

impl AttestationKind {
    fn wire(self) -> &'static str {
        match self {
            AttestationKind::SymmetricKey => "symmetricKey",
            AttestationKind::X509 => "x509",
            AttestationKind::Tpm => "tpm",
        }
    }
}

/// What an enrollment or group can be given (create and update).
#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentSettings {
    /// Primary symmetric key (base64; generated when left out).
    #[arg(long, visible_alias = "pk")]
    primary_key: Option<String>,
    /// Secondary symmetric key (base64; generated when left out).
    #[arg(long, visible_alias = "sk")]
    secondary_key: Option<String>,
    /// X.509 certificate file: the device certificate (individual) or the signing CA (group).
    #[arg(long, visible_alias = "cp")]
    certificate_path: Option<PathBuf>,
    /// Secondary X.509 certificate file (a secondary alone is a valid attestation too).
    #[arg(long, visible_alias = "scp")]
    secondary_certificate_path: Option<PathBuf>,
    /// Group: name of a CA certificate uploaded to the instance, instead of --certificate-path.
    #[arg(long, visible_alias = "cn")]
    ca_name: Option<String>,
    /// Group: a second uploaded CA certificate.
    #[arg(long, visible_alias = "scn")]
    secondary_ca_name: Option<String>,
    /// TPM endorsement key (base64).
    #[arg(long, visible_alias = "ek")]
    endorsement_key: Option<String>,
    /// TPM storage root key (base64).
    #[arg(long, visible_alias = "srk")]
    storage_root_key: Option<String>,
    /// Device id in the hub (individual enrollments; default: the registration id).
    #[arg(long, visible_alias = "did")]
    device_id: Option<String>,
    /// enabled or disabled.
    #[arg(long, visible_alias = "ps", value_parser = ["enabled", "disabled"], ignore_case = true)]
    provisioning_status: Option<String>,
    /// hashed, geoLatency, static or custom.
    #[arg(long, visible_alias = "ap", value_parser = ["hashed", "geoLatency", "static", "custom"], ignore_case = true)]
    allocation_policy: Option<String>,
    /// Linked hub host names the enrollment may be assigned to.
    #[arg(long, visible_alias = "ih", num_args = 1..)]
    iot_hubs: Vec<String>,
    /// Initial twin tags (JSON object).
    #[arg(long, visible_alias = "tags")]
    initial_twin_tags: Option<String>,
    /// Initial twin desired properties (JSON object).
    #[arg(long, visible_alias = "props")]
    initial_twin_properties: Option<String>,
    /// IoT Edge device (true or false; the flag alone means true).
    #[arg(long, visible_alias = "ee", num_args = 0..=1, default_missing_value = "true")]
    edge_enabled: Option<bool>,
    /// Custom allocation webhook URL.
    #[arg(long, visible_alias = "wh")]
    webhook_url: Option<String>,
    /// api-version sent to the custom allocation webhook (default 2021-10-01).
    #[arg(long, visible_alias = "av")]
    api_version: Option<String>,
    /// Reprovision policy: reprovisionandmigratedata, reprovisionandresetdata or never.
    #[arg(long, visible_alias = "rp", value_parser = ["reprovisionandmigratedata", "reprovisionandresetdata", "never"], ignore_case = true)]
    reprovision_policy: Option<String>,
    /// Optional device information (JSON object), individual enrollments.
    #[arg(long, visible_alias = "di")]
    device_information: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentCmd {
    /// Create or replace an individual enrollment (keys generated when none are given).
    #[command(
        after_help = "Example:\n  opendps enrollment create --enrollment-id my-device --attestation-type symmetricKey"
    )]
    Create {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_alias = "eid")]
        enrollment_id: String,
        /// symmetricKey, x509 or tpm.
        #[arg(long, visible_alias = "at", ignore_case = true)]
        attestation_type: AttestationKind,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
    },
    /// Update an individual enrollment: only what is given changes (GET, modify, PUT with the etag).
    #[command(after_help = "Example:\n  opendps enrollment update --eid my-device --provisioning-status disabled")]
    Update {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_alias = "eid")]
        enrollment_id: String,
        /// Change the attestation type (the new type's settings are then needed).
        #[arg(long, visible_alias = "at", ignore_case = true)]
        attestation_type: Option<AttestationKind>,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
        /// Remove the primary certificate.
        #[arg(long, visible_alias = "rcp")]
        remove_certificate: bool,
        /// Remove the secondary certificate.
        #[arg(long, visible_alias = "rscp")]
        remove_secondary_certificate: bool,
        /// Only update if the enrollment's etag still is this one (default: the etag just read).
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// Show an individual enrollment.
    #[command(after_help = "Example:\n  opendps enrollment show --eid my-device --show-keys")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_alias = "eid")]
        enrollment_id: String,
        /// Include the attestation keys.
        #[arg(long, visible_alias = "keys")]
        show_keys: bool,
    },
    /// List the individual enrollments.
    #[command(after_help = "Example:\n  opendps enrollment list --query \"[].registrationId\" -o tsv")]
    List {
        #[command(flatten)]
        dps: NameArg,
        /// A DPS query (e.g. "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'").
        #[arg(long = "where-query", visible_alias = "wq")]
        where_query: Option<String>,
    },
    /// Delete an individual enrollment (and the registration it made).
    #[command(after_help = "Example:\n  opendps enrollment delete --eid my-device")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_alias = "eid")]
        enrollment_id: String,
        /// Only delete if the enrollment's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Create or replace an enrollment group.
    #[command(
        after_help = "Example:\n  opendps enrollment-group create --gid my-group --attestation-type symmetricKey"
    )]
    Create {
        #[command(flatten)]
        dps: NameArg,
        /// Id of the enrollment group.
        #[arg(long, visible_aliases = ["gid", "enrollment-id", "eid"])]
        group_id: String,
        /// symmetricKey or x509.
        #[arg(long, visible_alias = "at", ignore_case = true)]
        attestation_type: AttestationKind,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
    },
    /// Update an enrollment group: only what is given changes (GET, modify, PUT with the etag).
    #[command(
        after_help = "Example:\n  opendps enrollment-group update --gid my-group --iot-hubs myhub.azure-devices.net"
    )]
    Update {
        #[command(flatten)]
        dps: NameArg,
        /// Id of the enrollment group.
        #[arg(long, visible_aliases = ["gid", "enrollment-id", "eid"])]
        group_id: String,
        /// Change the attestation type (the new type's settings are then needed).
        #[arg(long, visible_alias = "at", ignore_case = true)]
        attestation_type: Option<AttestationKind>,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
        /// Remove the primary signing certificate.
        #[arg(long, visible_alias = "rcp")]
        remove_certificate: bool,
        /// Remove the secondary signing certificate.
        #[arg(long, visible_alias = "rscp")]
        remove_secondary_certificate: bool,
        /// Only update if the group's etag still is this one (default: the etag just read).
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// Show an enrollment group.
    #[command(after_help = "Example:\n  opendps enrollment-group show --gid my-group --show-keys")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// Id of the enrollment group.
        #[arg(long, visible_aliases = ["gid", "enrollment-id", "eid"])]
        group_id: String,
        /// Include the attestation keys.
        #[arg(long, visible_alias = "keys")]
        show_keys: bool,
    },
    /// List the enrollment groups.
    #[command(after_help = "Example:\n  opendps enrollment-group list -o table")]
    List {
        #[command(flatten)]
        dps: NameArg,
        /// A DPS query (e.g. "SELECT * FROM enrollmentGroups WHERE attestation.type = 'x509'").
        #[arg(long = "where-query", visible_alias = "wq")]
        where_query: Option<String>,
    },
    /// Delete an enrollment group.
    #[command(after_help = "Example:\n  opendps enrollment-group delete --gid my-group")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// Id of the enrollment group.
        #[arg(long, visible_aliases = ["gid", "enrollment-id", "eid"])]
        group_id: String,
        /// Only delete if the group's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
    /// The device key a device of a symmetric-key group uses:
    /// base64(HMAC-SHA256(group key, registration id)).
    #[command(
        after_help = "Examples:\n  opendps enrollment-group compute-device-key --gid my-group --rid device-1\n  opendps enrollment-group compute-device-key --key <groupKey> --rid device-1"
    )]
    ComputeDeviceKey {
        #[command(flatten)]
        dps: NameArg,
        /// Id of the enrollment group whose primary key is used (read from the server).
        #[arg(long, visible_aliases = ["gid", "enrollment-id", "eid"], required_unless_present = "key")]
        group_id: Option<String>,
        /// The group key itself (base64); nothing is read from the server.
        #[arg(long, conflicts_with = "group_id")]
        key: Option<String>,
        /// Use the group's secondary key instead of the primary.
        #[arg(long)]
        secondary: bool,
        /// Registration id of the device.
        #[arg(long, visible_alias = "rid")]
        registration_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistrationCmd {
    /// Registrations of an enrollment group (or all, without --group-id).
    #[command(after_help = "Example:\n  opendps registration list --gid my-group -o table")]
    List {
        #[command(flatten)]
        dps: NameArg,
        /// Only the registrations made through this enrollment group.
        #[arg(long, visible_alias = "gid")]
        group_id: Option<String>,
        /// Show the whole TLS offer of each device (versions, suites, groups, signature algorithms).
        #[arg(long)]
        show_tls: bool,
    },
    /// A registration record, with the TLS facts of the connection that registered.
    #[command(after_help = "Example:\n  opendps registration show --rid my-device")]
    Show {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_aliases = ["rid", "id"])]
        registration_id: String,
        /// Show the whole TLS offer of the device (versions, suites, groups, signature algorithms).
        #[arg(long)]
        show_tls: bool,
    },
    /// Delete a registration record (the device may register again).
    #[command(after_help = "Example:\n  opendps registration delete --rid my-device")]
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// Registration id of the device.
        #[arg(long, visible_aliases = ["rid", "id"])]
        registration_id: String,
        /// Only delete if the record's etag still is this one.
        #[arg(long, short = 'e')]
        etag: Option<String>,
    },
}

async fn instances(t: &Target) -> anyhow::Result<Vec<Value>> {
    let v = manage(t, "GET", &format!("{SUB}/{DPS}"), &[], None).await?;
    Ok(v.get("value").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// The instance named (in the resource group, if given), or the only one.
async fn instance(t: &Target, name: &NameArg) -> anyhow::Result<Value> {
    let all: Vec<Value> = instances(t)
        .await?
        .into_iter()
        .filter(|i| {
            name.resource_group
                .as_ref()
                .is_none_or(|g| i["resourcegroup"].as_str().is_some_and(|r| r.eq_ignore_ascii_case(g)))
        })
        .collect();
    let names: Vec<&str> = all.iter().filter_map(|i| i.get("name").and_then(Value::as_str)).collect();
    let rg = name.resource_group.as_deref().map(|g| format!(" in resource group {g}")).unwrap_or_default();
    match &name.name {
        Some(n) => all
            .iter()
            .find(|i| i["name"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(n)))
            .cloned()
            .ok_or_else(|| anyhow!("no DPS instance named {n}{rg} (instances: {})", names.join(", "))),
        None if all.len() == 1 => Ok(all[0].clone()),
        None if all.is_empty() => bail!("no DPS instance{rg}"),
        None => bail!("pass --dps-name: the server has {} instances{rg} ({})", all.len(), names.join(", ")),
    }
}

fn path_of(i: &Value) -> String {
    format!(
        "{SUB}/resourceGroups/{}/{DPS}/{}",
        seg(i["resourcegroup"].as_str().unwrap_or("")),
        seg(i["name"].as_str().unwrap_or(""))
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn connection_string(t: &Target, i: &Value, policy: Option<&str>, key: KeyType) -> anyhow::Result<String> {
    let keys = manage(t, "POST", &format!("{}/listKeys", path_of(i)), &[], None).await?;
    let list = keys.get("value").and_then(Value::as_array).cloned().unwrap_or_default();
    let want = policy.unwrap_or("provisioningserviceowner");
    let p = list
        .iter()
        .find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(want)))
        .or_else(|| if policy.is_none() { list.first() } else { None })
        .ok_or_else(|| anyhow!("instance has no shared access policy {want}"))?;
    let host = i.pointer("/properties/serviceOperationsHostName").and_then(Value::as_str).unwrap_or("localhost");
    let k = match key {
        KeyType::Primary => &p["primaryKey"],
        KeyType::Secondary => &p["secondaryKey"],
    };
    let cs = dps_core::model::ConnectionString { host_name: host.into(), key_name: text(&p["keyName"]), key: text(k) };
    Ok(cs.to_string())
}

async fn service(t: &Target, name: &NameArg) -> anyhow::Result<Service> {
    let i = instance(t, name).await?;
    Service::from_connection_string(t, &connection_string(t, &i, None, KeyType::Primary).await?)
}

fn if_match(etag: Option<&str>) -> Vec<(&str, &str)> {
    etag.map(|e| vec![("if-match", e)]).unwrap_or_default()
}

pub async fn deployment(t: &Target, cmd: DeploymentCmd, out: &Printer) -> anyhow::Result<()> {
    let DeploymentCmd::Create { resource_group, template_file, parameters, name, location } = cmd;
    let text =
        std::fs::read_to_string(&template_file).with_context(|| format!("cannot read {}", template_file.display()))?;
    let template: Value = serde_json::from_str(&dps_arm::relax_json(&text)).map_err(|e| {
        anyhow!("{} is not valid JSON at line {} column {}: {e}", template_file.display(), e.line(), e.column())
    })?;
    let mut values = serde_json::Map::new();
    let mut file_params = serde_json::Map::new();
    for p in &parameters {
        if let Some(path) = p.strip_prefix('@') {
            let f: Value = serde_json::from_str(&dps_arm::relax_json(
                &std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
            ))
            .with_context(|| format!("{path} is not valid JSON"))?;
            if let Some(o) = f.get("parameters").and_then(Value::as_object) {
                file_params.extend(o.clone());
            }
        } else {
            let (k, v) =
                p.split_once('=').ok_or_else(|| anyhow!("--parameters {p:?} is not name=value or @file.json"))?;
            values.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    }
    let name =
        name.unwrap_or_else(|| template_file.file_stem().and_then(|s| s.to_str()).unwrap_or("deployment").to_owned());
    let mut props = json!({ "mode": "Incremental", "template": template, "parameterValues": values });
    if !file_params.is_empty() {
        props["parameters"] = Value::Object(file_params);
    }
    if let Some(l) = location {
        props["resourceGroupLocation"] = json!(l);
    }
    let path = format!(
        "{SUB}/resourcegroups/{}/providers/Microsoft.Resources/deployments/{}",
        seg(&resource_group),
        seg(&name)
    );
    let v = manage(t, "PUT", &path, &[], Some(&json!({ "properties": props }))).await?;
    out.print(&v)
}

fn rights_list(rights: &[String]) -> String {
    rights.iter().flat_map(|r| r.split([',', ' '])).filter(|r| !r.is_empty()).collect::<Vec<_>>().join(", ")
}

/// Parses `a=b` into a JSON value for `b`: JSON when it parses, else the text.
fn loose_value(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
}

/// Sets `path` (dot separated, e.g. `properties.allocationPolicy`) in `doc`.
fn set_path(doc: &mut Value, path: &str, value: Value) -> anyhow::Result<()> {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            bail!("--set {path:?}: empty path segment");
        }
        let obj = cur.as_object_mut().ok_or_else(|| anyhow!("--set {path:?}: {p} is not inside an object"))?;
        if i + 1 == parts.len() {
            obj.insert((*p).to_owned(), value);
            return Ok(());
        }
        cur = obj.entry((*p).to_owned()).or_insert_with(|| json!({}));
    }
    Ok(())
}

pub async fn dps(t: &Target, cmd: DpsCmd, out: &Printer) -> anyhow::Result<()> {
    match cmd {
        DpsCmd::List { resource_group } => {
            let all: Vec<Value> = instances(t)
                .await?
                .into_iter()
                .filter(|i| {
                    resource_group
                        .as_ref()
                        .is_none_or(|g| i["resourcegroup"].as_str().is_some_and(|r| r.eq_ignore_ascii_case(g)))
                })
                .map(|i| if out.is_table() { summary(&i) } else { i })
                .collect();
            out.print(&Value::Array(all))
        }
        DpsCmd::Show(n) => {
            let i = instance(t, &n).await?;
            out.print(&if out.is_table() { summary(&i) } else { i })
        }
        DpsCmd::Create { name, resource_group, location, min_tls_version } => {
            let path = format!("{SUB}/resourceGroups/{}/{DPS}/{}", seg(&resource_group), seg(&name));
            let mut body = json!({ "sku": { "name": "S1", "capacity": 1 }, "properties": {} });
            if let Some(l) = location {
                body["location"] = json!(l);
            }
            if let Some(v) = min_tls_version {
                body["properties"]["minTlsVersion"] = json!(v);
            }
            // Create only: an existing instance of that name is an error, not a replacement.
            if instances(t).await?.iter().any(|i| i["name"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(&name))) {
                bail!("a DPS instance named {name} exists; use opendps dps update to change it");
            }
            out.print(&manage(t, "PUT", &path, &[], Some(&body)).await?)
        }
        DpsCmd::Update { dps, allocation_policy, tags, set, etag } => {
            let i = modify(t, &dps, etag.as_deref(), |i| {
                if let Some(p) = &allocation_policy {
                    i["properties"]["allocationPolicy"] = json!(p);
                }
                if !tags.is_empty() {
                    let mut map = serde_json::Map::new();
                    for tag in &tags {
                        let (k, v) = tag.split_once('=').ok_or_else(|| anyhow!("--tags {tag:?} is not key=value"))?;
                        map.insert(k.to_owned(), json!(v));
                    }
                    i["tags"] = Value::Object(map);
                }
                for s in &set {
                    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("--set {s:?} is not path=value"))?;
                    set_path(i, k, loose_value(v))?;
                }
                Ok(())
            })
            .await?;
            out.print(&i)
        }
        DpsCmd::Delete(n) => {
            let i = instance(t, &n).await?;
            manage(t, "DELETE", &path_of(&i), &[], None).await?;
            out.print(&json!({ "deleted": i["name"] }))
        }
        DpsCmd::ConnectionString { name, policy, key_type } => {
            let i = instance(t, &name).await?;
            let cs = connection_string(t, &i, policy.as_deref(), key_type).await?;
            out.print(&json!({ "connectionString": cs, "idScope": i.pointer("/properties/idScope") }))
        }
        DpsCmd::LinkedHub(h) => hubs(t, h, out).await,
        DpsCmd::Policy(p) => policies(t, p, out).await,
        DpsCmd::Certificate(c) => certificates(t, c, out).await,
    }
}

fn summary(i: &Value) -> Value {
    json!({
        "name": i["name"], "resourceGroup": i["resourcegroup"], "location": i["location"],
        "idScope": i.pointer("/properties/idScope"), "minTlsVersion": i.pointer("/properties/minTlsVersion"),
        "serviceHost": i.pointer("/properties/serviceOperationsHostName"), "state": i.pointer("/properties/state"),
        "linkedHubs": i.pointer("/properties/iotHubs").and_then(Value::as_array).map_or(0, Vec::len),
    })
}

/// GET-modify-PUT of an instance with its etag, so concurrent changes are not lost.
async fn modify(
    t: &Target,
    n: &NameArg,
    etag: Option<&str>,
    f: impl FnOnce(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    let mut i = instance(t, n).await?;
    let etag = etag.map_or_else(|| i["etag"].as_str().unwrap_or("*").to_owned(), str::to_owned);
    let path = path_of(&i);
    f(&mut i)?;
    manage(t, "PUT", &path, &[("if-match", &etag)], Some(&i)).await
}

fn hub_mut<'a>(i: &'a mut Value, name: &str) -> anyhow::Result<&'a mut Value> {
    i["properties"]["iotHubs"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("instance has no iotHubs list"))?
        .iter_mut()
        .find(|h| h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .ok_or_else(|| anyhow!("no linked hub {name}"))
}

async fn hubs(t: &Target, cmd: HubCmd, out: &Printer) -> anyhow::Result<()> {
    let v = match cmd {
        HubCmd::Create { dps, connection_string, location, allocation_weight, apply_allocation_policy } => {
            let i = modify(t, &dps, None, |i| {
                let mut hub = json!({ "connectionString": connection_string, "location": location });
                if let Some(w) = allocation_weight {
                    hub["allocationWeight"] = json!(w);
                }
                if let Some(a) = apply_allocation_policy {
                    hub["applyAllocationPolicy"] = json!(a);
                }
                i["properties"]["iotHubs"]
                    .as_array_mut()
                    .ok_or_else(|| anyhow!("instance has no iotHubs list"))?
                    .push(hub);
                Ok(())
            })
            .await?;
            i.pointer("/properties/iotHubs").cloned().unwrap_or_default()
        }
        HubCmd::List { dps } => instance(t, &dps).await?.pointer("/properties/iotHubs").cloned().unwrap_or_default(),
        HubCmd::Show { dps, linked_hub } => hub_mut(&mut instance(t, &dps).await?, &linked_hub)?.clone(),
        HubCmd::Update { dps, linked_hub, allocation_weight, apply_allocation_policy } => {
            if allocation_weight.is_none() && apply_allocation_policy.is_none() {
                bail!("nothing to update: pass --allocation-weight or --apply-allocation-policy");
            }
            let mut i = modify(t, &dps, None, |i| {
                let h = hub_mut(i, &linked_hub)?;
                if let Some(w) = allocation_weight {
                    h["allocationWeight"] = json!(w);
                }
                if let Some(a) = apply_allocation_policy {
                    h["applyAllocationPolicy"] = json!(a);
                }
                Ok(())
            })
            .await?;
            hub_mut(&mut i, &linked_hub)?.clone()
        }
        HubCmd::Delete { dps, linked_hub } => {
            let i = modify(t, &dps, None, |i| {
                let hubs =
                    i["properties"]["iotHubs"].as_array_mut().ok_or_else(|| anyhow!("instance has no iotHubs list"))?;
                let before = hubs.len();
                hubs.retain(|h| !h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&linked_hub)));
                if hubs.len() == before {
                    bail!("no linked hub {linked_hub}");
                }
                Ok(())
            })
            .await?;
            i.pointer("/properties/iotHubs").cloned().unwrap_or_default()
        }
    };
    out.print(&v)
}

/// A fresh policy key: base64 of 32 random bytes.
fn new_key() -> String {
    let mut b = [0u8; 32];
    dps_core::ports::Entropy::fill(&dps_attest::OpensslEntropy, &mut b);
    dps_core::base64::encode(&b)
}

async fn policy_with_keys(t: &Target, dps: &NameArg, name: &str) -> anyhow::Result<Value> {
    let i = instance(t, dps).await?;
    let keys = manage(t, "POST", &format!("{}/listKeys", path_of(&i)), &[], None).await?;
    keys["value"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name))).cloned())
        .ok_or_else(|| anyhow!("no policy {name}"))
}

fn policy_mut<'a>(i: &'a mut Value, name: &str) -> anyhow::Result<&'a mut Value> {
    i["properties"]["authorizationPolicies"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("no policy list"))?
        .iter_mut()
        .find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .ok_or_else(|| anyhow!("no policy {name}"))
}

/// Sets keys and rights of a policy in an instance document.
async fn change_policy(
    t: &Target,
    dps: &NameArg,
    name: &str,
    rights: &[String],
    primary: Option<String>,
    secondary: Option<String>,
    renew: Option<RenewKey>,
) -> anyhow::Result<Value> {
    let (mut primary, mut secondary) = (primary, secondary);
    match renew {
        None => {}
        Some(RenewKey::Primary) => primary = Some(new_key()),
        Some(RenewKey::Secondary) => secondary = Some(new_key()),
        Some(RenewKey::Both) => (primary, secondary) = (Some(new_key()), Some(new_key())),
        Some(RenewKey::Swap) => {
            let cur = policy_with_keys(t, dps, name).await?;
            (primary, secondary) = (Some(text(&cur["secondaryKey"])), Some(text(&cur["primaryKey"])));
        }
    }
    if rights.is_empty() && primary.is_none() && secondary.is_none() {
        bail!("nothing to update: pass --rights, --primary-key, --secondary-key or --renew-key");
    }
    modify(t, dps, None, |i| {
        let p = policy_mut(i, name)?;
        if !rights.is_empty() {
            p["rights"] = json!(rights_list(rights));
        }
        if let Some(k) = &primary {
            p["primaryKey"] = json!(k);
        }
        if let Some(k) = &secondary {
            p["secondaryKey"] = json!(k);
        }
        Ok(())
    })
    .await?;
    policy_with_keys(t, dps, name).await
}

async fn policies(t: &Target, cmd: PolicyCmd, out: &Printer) -> anyhow::Result<()> {
    let v = match cmd {
        PolicyCmd::Create { dps, policy_name, rights, primary_key, secondary_key } => {
            if rights.is_empty() {
                bail!("--rights is required");
            }
            modify(t, &dps, None, |i| {
                let list =
                    i["properties"]["authorizationPolicies"].as_array_mut().ok_or_else(|| anyhow!("no policy list"))?;
                if list.iter().any(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(&policy_name))) {
                    bail!("policy {policy_name} exists");
                }
                let mut p = json!({ "keyName": policy_name, "rights": rights_list(&rights) });
                if let Some(k) = &primary_key {
                    p["primaryKey"] = json!(k);
                }
                if let Some(k) = &secondary_key {
                    p["secondaryKey"] = json!(k);
                }
                list.push(p);
                Ok(())
            })
            .await?;
            policy_with_keys(t, &dps, &policy_name).await?
        }
        PolicyCmd::List { dps } => {
            instance(t, &dps).await?.pointer("/properties/authorizationPolicies").cloned().unwrap_or_default()
        }
        PolicyCmd::Show { dps, policy_name } => policy_with_keys(t, &dps, &policy_name).await?,
        PolicyCmd::Update { dps, policy_name, rights, primary_key, secondary_key, renew_key } => {
            change_policy(t, &dps, &policy_name, &rights, primary_key, secondary_key, renew_key).await?
        }
        PolicyCmd::RenewKey { dps, policy_name, key_type } => {
            change_policy(t, &dps, &policy_name, &[], None, None, Some(key_type)).await?
        }
        PolicyCmd::Delete { dps, policy_name } => {
            let i = modify(t, &dps, None, |i| {
                let list =
                    i["properties"]["authorizationPolicies"].as_array_mut().ok_or_else(|| anyhow!("no policy list"))?;
                let before = list.len();
                list.retain(|p| !p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(&policy_name)));
                if list.len() == before {
                    bail!("no policy {policy_name}");
                }
                if list.is_empty() {
                    bail!("an instance needs at least one shared access policy");
                }
                Ok(())
            })
            .await?;
            i.pointer("/properties/authorizationPolicies").cloned().unwrap_or_default()
        }
    };
    out.print(&v)
}

fn read_cert(path: &PathBuf) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match String::from_utf8(bytes.clone()) {
        Ok(s) if s.contains("-----BEGIN") => s,
        _ => dps_core::base64::encode(&bytes),
    })
}

async fn certificates(t: &Target, cmd: CertCmd, out: &Printer) -> anyhow::Result<()> {
    let cert_path = |i: &Value, name: &str| format!("{}/certificates/{}", path_of(i), seg(name));
    let v = match cmd {
        CertCmd::Create { dps, certificate_name, path, verified } => {
            let i = instance(t, &dps).await?;
            let body = json!({ "properties": { "certificate": read_cert(&path)?, "isVerified": verified } });
            manage(t, "PUT", &cert_path(&i, &certificate_name), &[], Some(&body)).await?
        }
        CertCmd::List { dps } => {
            let i = instance(t, &dps).await?;
            manage(t, "GET", &format!("{}/certificates", path_of(&i)), &[], None).await?
        }
        CertCmd::Show { dps, certificate_name } => {
            let i = instance(t, &dps).await?;
            manage(t, "GET", &cert_path(&i, &certificate_name), &[], None).await?
        }
        CertCmd::Delete { dps, certificate_name, etag } => {
            let i = instance(t, &dps).await?;
            manage(t, "DELETE", &cert_path(&i, &certificate_name), &if_match(etag.as_deref()), None).await?;
            json!({ "deleted": certificate_name })
        }
        CertCmd::GenerateVerificationCode { dps, certificate_name, etag } => {
            let i = instance(t, &dps).await?;
            let path = format!("{}/generateVerificationCode", cert_path(&i, &certificate_name));
            manage(t, "POST", &path, &if_match(etag.as_deref()), None).await?
        }
        CertCmd::Verify { dps, certificate_name, path, etag } => {
            let i = instance(t, &dps).await?;
            let body = json!({ "certificate": read_cert(&path)? });
            let url = format!("{}/verify", cert_path(&i, &certificate_name));
            manage(t, "POST", &url, &if_match(etag.as_deref()), Some(&body)).await?
        }
    };
    out.print(&v)
}

/// The certificate set field of an X.509 attestation.
fn cert_field(group: bool) -> &'static str {
    if group {
        "signingCertificates"
    } else {
        "clientCertificates"
    }
}

/// A new attestation mechanism of `kind` from the settings.
fn attestation(kind: AttestationKind, s: &EnrollmentSettings, group: bool) -> anyhow::Result<Value> {
    let mut a = json!({ "type": kind.wire() });
    match kind {
        AttestationKind::SymmetricKey => a["symmetricKey"] = json!({}),
        AttestationKind::Tpm => {
            if group {
                bail!("enrollment groups support symmetricKey and x509 attestation");
            }
            a["tpm"] = json!({});
            if s.endorsement_key.is_none() {
                bail!("--endorsement-key is required for tpm");
            }
        }
        AttestationKind::X509 => {
            a["x509"] = json!({});
            let has_ca = s.ca_name.is_some() || s.secondary_ca_name.is_some();
            let has_file = s.certificate_path.is_some() || s.secondary_certificate_path.is_some();
            if !(has_file || (group && has_ca)) {
                bail!(
                    "x509 needs --certificate-path or --secondary-certificate-path{}",
                    if group { " (or --ca-name)" } else { "" }
                );
            }
        }
    }
    change_attestation(&mut a, s, group, false, false)?;
    Ok(a)
}

/// Applies the attestation settings given to an existing mechanism (of the same type).
fn change_attestation(
    a: &mut Value,
    s: &EnrollmentSettings,
    group: bool,
    remove_primary: bool,
    remove_secondary: bool,
) -> anyhow::Result<()> {
    let kind = a["type"].as_str().unwrap_or("").to_owned();
    let only = |what: &str, flag: bool| -> anyhow::Result<()> {
        if flag {
            bail!("{what} does not apply to {kind} attestation");
        }
        Ok(())
    };
    match kind.as_str() {
        "symmetricKey" => {
            only("--certificate-path", s.certificate_path.is_some() || s.secondary_certificate_path.is_some())?;
            only("--endorsement-key", s.endorsement_key.is_some())?;
            let keys = a.as_object_mut().and_then(|o| {
                o.entry("symmetricKey").or_insert_with(|| json!({}));
                o.get_mut("symmetricKey")
            });
            if let Some(keys) = keys {
                if let Some(k) = &s.primary_key {
                    keys["primaryKey"] = json!(k);
                }
                if let Some(k) = &s.secondary_key {
                    keys["secondaryKey"] = json!(k);
                }
            }
        }
        "tpm" => {
            only("--primary-key", s.primary_key.is_some() || s.secondary_key.is_some())?;
            if let Some(ek) = &s.endorsement_key {
                a["tpm"]["endorsementKey"] = json!(ek);
            }
            if let Some(srk) = &s.storage_root_key {
                a["tpm"]["storageRootKey"] = json!(srk);
            }
        }
        "x509" => {
            only("--primary-key", s.primary_key.is_some() || s.secondary_key.is_some())?;
            let field = cert_field(group);
            let x = &mut a["x509"];
            if s.ca_name.is_some() || s.secondary_ca_name.is_some() {
                if !group {
                    bail!("--ca-name applies to enrollment groups only");
                }
                if let Some(o) = x.as_object_mut() {
                    o.remove(field);
                }
                if let Some(n) = &s.ca_name {
                    x["caReferences"]["primary"] = json!(n);
                }
                if let Some(n) = &s.secondary_ca_name {
                    x["caReferences"]["secondary"] = json!(n);
                }
            }
            for (slot, path, remove) in [
                ("primary", &s.certificate_path, remove_primary),
                ("secondary", &s.secondary_certificate_path, remove_secondary),
            ] {
                if let Some(p) = path {
                    if let Some(o) = x.as_object_mut() {
                        o.remove("caReferences");
                    }
                    x[field][slot] = json!({ "certificate": read_cert(p)? });
                } else if remove {
                    if let Some(o) = x.get_mut(field).and_then(Value::as_object_mut) {
                        o.remove(slot);
                    }
                    if let Some(o) = x.get_mut("caReferences").and_then(Value::as_object_mut) {
                        o.remove(slot);
                    }
                }
            }
        }
        other => bail!("unknown attestation type {other:?}"),
    }
    Ok(())
}

/// Applies every non-attestation setting given to an enrollment or group document.
fn apply_settings(b: &mut Value, s: &EnrollmentSettings, group: bool) -> anyhow::Result<()> {
    if let Some(d) = &s.device_id {
        if group {
            bail!("--device-id applies to individual enrollments only");
        }
        b["deviceId"] = json!(d);
    }
    if let Some(p) = &s.provisioning_status {
        b["provisioningStatus"] = json!(p.to_ascii_lowercase());
    }
    if let Some(p) = &s.allocation_policy {
        let p = match p.to_ascii_lowercase().as_str() {
            "geolatency" => "geoLatency".to_owned(),
            other => other.to_owned(),
        };
        b["allocationPolicy"] = json!(p);
    }
    if !s.iot_hubs.is_empty() {
        b["iotHubs"] =
            json!(s.iot_hubs.iter().flat_map(|h| h.split([' ', ','])).filter(|h| !h.is_empty()).collect::<Vec<_>>());
    }
    let parse = |t: &str, what: &str| -> anyhow::Result<Value> {
        let v: Value = serde_json::from_str(t).with_context(|| format!("{what} is not JSON"))?;
        if !v.is_object() {
            bail!("{what} must be a JSON object");
        }
        Ok(v)
    };
    if let Some(tags) = &s.initial_twin_tags {
        if !b["initialTwin"].is_object() {
            b["initialTwin"] = json!({});
        }
        b["initialTwin"]["tags"] = parse(tags, "--initial-twin-tags")?;
    }
    if let Some(props) = &s.initial_twin_properties {
        if !b["initialTwin"].is_object() {
            b["initialTwin"] = json!({});
        }
        b["initialTwin"]["properties"] = json!({ "desired": parse(props, "--initial-twin-properties")? });
    }
    if let Some(e) = s.edge_enabled {
        b["capabilities"] = json!({ "iotEdge": e });
    }
    if let Some(url) = &s.webhook_url {
        b["customAllocationDefinition"] =
            json!({ "webhookUrl": url, "apiVersion": s.api_version.as_deref().unwrap_or("2021-10-01") });
    } else if let Some(v) = &s.api_version {
        if !b["customAllocationDefinition"].is_object() {
            bail!("--api-version needs --webhook-url (or an enrollment with a custom allocation webhook)");
        }
        b["customAllocationDefinition"]["apiVersion"] = json!(v);
    }
    if let Some(r) = &s.reprovision_policy {
        b["reprovisionPolicy"] = match r.to_ascii_lowercase().as_str() {
            "reprovisionandmigratedata" => json!({ "updateHubAssignment": true, "migrateDeviceData": true }),
            "reprovisionandresetdata" => json!({ "updateHubAssignment": true, "migrateDeviceData": false }),
            "never" => json!({ "updateHubAssignment": false, "migrateDeviceData": false }),
            other => bail!(
                "--reprovision-policy {other:?} is not reprovisionandmigratedata, reprovisionandresetdata or never"
            ),
        };
    }
    if let Some(di) = &s.device_information {
        if group {
            bail!("--device-information applies to individual enrollments only");
        }
        b["optionalDeviceInformation"] = parse(di, "--device-information")?;
    }
    Ok(())
}

fn new_body(
    id_field: &str,
    id: &str,
    kind: AttestationKind,
    s: &EnrollmentSettings,
    group: bool,
) -> anyhow::Result<Value> {
    let mut b =
        json!({ id_field: id, "attestation": attestation(kind, s, group)?, "capabilities": { "iotEdge": false } });
    apply_settings(&mut b, s, group)?;
    Ok(b)
}

/// The parts of an update: GET the current document, change what was given, PUT it back under
/// its etag. Certificates come back as their `info` only; the server keeps the stored ones.
struct Update<'a> {
    kind: Option<AttestationKind>,
    settings: &'a EnrollmentSettings,
    remove_primary: bool,
    remove_secondary: bool,
    etag: Option<String>,
}

async fn update_doc(svc: &Service, path: &str, group: bool, u: Update<'_>) -> anyhow::Result<Value> {
    let current = svc.call("GET", path, &[], None).await?;
    let etag = u
        .etag
        .or_else(|| current.headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .or_else(|| current.body["etag"].as_str().map(str::to_owned));
    let mut b = current.body;
    let same = u.kind.is_none_or(|k| b["attestation"]["type"].as_str() == Some(k.wire()));
    if same {
        change_attestation(&mut b["attestation"], u.settings, group, u.remove_primary, u.remove_secondary)?;
    } else if let Some(k) = u.kind {
        b["attestation"] = attestation(k, u.settings, group)?;
    }
    apply_settings(&mut b, u.settings, group)?;
    if let Some(o) = b.as_object_mut() {
        for read_only in ["registrationState", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"] {
            o.remove(read_only);
        }
    }
    let h = if_match(etag.as_deref());
    Ok(svc.call("PUT", path, &h, Some(&b)).await?.body)
}

async fn list_all(svc: &Service, path: &str, query: Option<&str>) -> anyhow::Result<Value> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let body = json!({ "query": query.unwrap_or("SELECT *") });
    for _ in 0..100_000 {
        let mut h: Vec<(&str, &str)> = vec![("x-ms-max-item-count", "1000")];
        if let Some(t) = &token {
            h.push(("x-ms-continuation", t));
        }
        let r = svc.call("POST", path, &h, Some(&body)).await?;
        items.extend(r.body.as_array().cloned().unwrap_or_default());
        token = r.headers.get("x-ms-continuation").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(Value::Array(items))
}

pub async fn enrollment(t: &Target, cmd: EnrollmentCmd, out: &Printer) -> anyhow::Result<()> {
    let path = |id: &str| format!("/enrollments/{}", seg(id));
    let v = match cmd {
        EnrollmentCmd::Create { dps, enrollment_id, attestation_type, settings } => {
            let svc = service(t, &dps).await?;
            let body = new_body("registrationId", &enrollment_id, attestation_type, &settings, false)?;
            svc.call("PUT", &path(&enrollment_id), &[], Some(&body)).await?.body
        }
        EnrollmentCmd::Update {
            dps,
            enrollment_id,
            attestation_type,
            settings,
            remove_certificate,
            remove_secondary_certificate,
            etag,
        } => {
            let svc = service(t, &dps).await?;
            let u = Update {
                kind: attestation_type,
                settings: &settings,
                remove_primary: remove_certificate,
                remove_secondary: remove_secondary_certificate,
                etag,
            };
            update_doc(&svc, &path(&enrollment_id), false, u).await?
        }
        EnrollmentCmd::Show { dps, enrollment_id, show_keys } => {
            let svc = service(t, &dps).await?;
            let mut e = svc.call("GET", &path(&enrollment_id), &[], None).await?.body;
            if show_keys {
                let mechanism = format!("{}/attestationmechanism", path(&enrollment_id));
                e["attestation"] = svc.call("POST", &mechanism, &[], None).await?.body;
            }
            e
        }
        EnrollmentCmd::List { dps, where_query } => {
            list_all(&service(t, &dps).await?, "/enrollments/query", where_query.as_deref()).await?
        }
        EnrollmentCmd::Delete { dps, enrollment_id, etag } => {
            service(t, &dps).await?.call("DELETE", &path(&enrollment_id), &if_match(etag.as_deref()), None).await?;
            json!({ "deleted": enrollment_id })
        }
    };
    out.print(&v)
}

pub async fn group(t: &Target, cmd: GroupCmd, out: &Printer) -> anyhow::Result<()> {
    let path = |id: &str| format!("/enrollmentGroups/{}", seg(id));
    let v = match cmd {
        GroupCmd::Create { dps, group_id, attestation_type, settings } => {
            let svc = service(t, &dps).await?;
            let body = new_body("enrollmentGroupId", &group_id, attestation_type, &settings, true)?;
            svc.call("PUT", &path(&group_id), &[], Some(&body)).await?.body
        }
        GroupCmd::Update {
            dps,
            group_id,
            attestation_type,
            settings,
            remove_certificate,
            remove_secondary_certificate,
            etag,
        } => {
            let svc = service(t, &dps).await?;
            let u = Update {
                kind: attestation_type,
                settings: &settings,
                remove_primary: remove_certificate,
                remove_secondary: remove_secondary_certificate,
                etag,
            };
            update_doc(&svc, &path(&group_id), true, u).await?
        }
        GroupCmd::Show { dps, group_id, show_keys } => {
            let svc = service(t, &dps).await?;
            let mut g = svc.call("GET", &path(&group_id), &[], None).await?.body;
            if show_keys {
                let mechanism = format!("{}/attestationmechanism", path(&group_id));
                g["attestation"] = svc.call("POST", &mechanism, &[], None).await?.body;
            }
            g
        }
        GroupCmd::List { dps, where_query } => {
            list_all(&service(t, &dps).await?, "/enrollmentGroups/query", where_query.as_deref()).await?
        }
        GroupCmd::Delete { dps, group_id, etag } => {
            service(t, &dps).await?.call("DELETE", &path(&group_id), &if_match(etag.as_deref()), None).await?;
            json!({ "deleted": group_id })
        }
        GroupCmd::ComputeDeviceKey { dps, group_id, key, secondary, registration_id } => {
            let key = match (key, group_id) {
                (Some(k), _) => k,
                (None, Some(g)) => {
                    let svc = service(t, &dps).await?;
                    let mechanism = format!("{}/attestationmechanism", path(&g));
                    let a = svc.call("POST", &mechanism, &[], None).await?.body;
                    let which = if secondary { "secondaryKey" } else { "primaryKey" };
                    a.pointer(&format!("/symmetricKey/{which}")).and_then(Value::as_str).map(str::to_owned).ok_or_else(
                        || anyhow!("enrollment group {g} has no symmetric key (its attestation is {})", a["type"]),
                    )?
                }
                (None, None) => bail!("pass --group-id or --key"),
            };
            derived_key(&key, &registration_id)?
        }
    };
    out.print(&v)
}

/// The device key of `registration_id` in a symmetric-key group with key `group_key`.
pub fn derived_key(group_key: &str, registration_id: &str) -> anyhow::Result<Value> {
    let derived = dps_attest::derive_device_key(group_key, registration_id)
        .ok_or_else(|| anyhow!("the group key is not base64"))?;
    Ok(json!(derived))
}

/// A registration record for people: the negotiated TLS facts only (version, suite, group,
/// client certificate, SNI), unless `full`; in a table, one `tls` column.
fn registration_view(mut r: Value, full: bool, table: bool) -> Value {
    if full {
        return r;
    }
    if let Some(tls) = r.get("tls").filter(|t| t.is_object()) {
        let n = &tls["negotiated"];
        let compact = if table {
            let parts: Vec<String> = [&n["version"], &n["cipherSuite"], &n["group"]]
                .into_iter()
                .map(text)
                .filter(|s| !s.is_empty())
                .collect();
            json!(parts.join(" "))
        } else {
            json!({
                "version": n["version"],
                "cipherSuite": n["cipherSuite"],
                "group": n["group"],
                "resumed": n["resumed"],
                "clientCertificate": n["clientCertificate"],
                "sni": tls.pointer("/offered/sni"),
            })
        };
        r["tls"] = compact;
    }
    r
}

pub async fn registration(t: &Target, cmd: RegistrationCmd, out: &Printer) -> anyhow::Result<()> {
    let v = match cmd {
        RegistrationCmd::List { dps, group_id, show_tls } => {
            let svc = service(t, &dps).await?;
            let list = match group_id {
                Some(g) => list_all(&svc, &format!("/registrations/{}/query", seg(&g)), None).await?,
                None => list_all(&svc, "/registrations/query", None).await?,
            };
            Value::Array(
                list.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| registration_view(r, show_tls, out.is_table()))
                    .collect(),
            )
        }
        RegistrationCmd::Show { dps, registration_id, show_tls } => {
            let r = service(t, &dps)
                .await?
                .call("GET", &format!("/registrations/{}", seg(&registration_id)), &[], None)
                .await?
                .body;
            registration_view(r, show_tls, out.is_table())
        }
        RegistrationCmd::Delete { dps, registration_id, etag } => {
            service(t, &dps)
                .await?
                .call("DELETE", &format!("/registrations/{}", seg(&registration_id)), &if_match(etag.as_deref()), None)
                .await?;
            json!({ "deleted": registration_id })
        }
    };
    out.print(&v)
}

/// `opendps tls readiness`.
pub async fn readiness(
    t: &Target,
    dps: &NameArg,
    profile: Option<String>,
    tls13: bool,
    min_tls_version: Option<String>,
    out: &Printer,
) -> anyhow::Result<()> {
    let i = instance(t, dps).await?;
    let mut body = json!({ "tls13": tls13 });
    if let Some(p) = profile {
        body["profile"] = json!(p);
    }
    if let Some(v) = min_tls_version {
        body["minTlsVersion"] = json!(v);
    }
    let v = manage(t, "POST", &format!("{}/tlsReadiness", path_of(&i)), &[], Some(&body)).await?;
    if out.is_table() && out.query.is_none() {
        out.print(&v["refused"])?;
        crate::print(&format!(
            "\n{} of {} devices with TLS facts would be refused ({} without facts)\n",
            v["wouldBeRefused"],
            v["evaluated"],
            v["withoutTlsFacts"].as_array().map_or(0, Vec::len)
        ))
    } else {
        out.print(&v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_path_creates_objects() {
        let mut v = json!({ "properties": { "a": 1 } });
        set_path(&mut v, "properties.allocationPolicy", loose_value("Static")).unwrap();
        set_path(&mut v, "tags.x.y", loose_value("3")).unwrap();
        assert_eq!(v, json!({ "properties": { "a": 1, "allocationPolicy": "Static" }, "tags": { "x": { "y": 3 } } }));
        assert!(set_path(&mut v, "properties.a.b", json!(1)).is_err());
    }

    #[test]
    fn registration_view_is_compact() {
        let r = json!({ "registrationId": "d", "tls": { "negotiated": { "version": "TLSv1.2", "cipherSuite": "S", "group": "P-256", "resumed": false, "clientCertificate": false }, "offered": { "sni": "h", "cipherSuites": ["a", "b"] } } });
        let c = registration_view(r.clone(), false, false);
        assert_eq!(c["tls"]["version"], "TLSv1.2");
        assert_eq!(c["tls"]["sni"], "h");
        assert!(c["tls"].get("offered").is_none());
        assert_eq!(registration_view(r.clone(), true, false), r);
        assert_eq!(registration_view(r, false, true)["tls"], "TLSv1.2 S P-256");
    }

    #[test]
    fn update_keeps_what_is_not_given() {
        let mut a = json!({ "type": "x509", "x509": { "clientCertificates": { "primary": { "info": { "sha1Thumbprint": "AB" } }, "secondary": { "info": {} } } } });
        let s = EnrollmentSettings::default();
        change_attestation(&mut a, &s, false, false, true).unwrap();
        assert_eq!(a["x509"]["clientCertificates"]["primary"]["info"]["sha1Thumbprint"], "AB");
        assert!(a["x509"]["clientCertificates"].get("secondary").is_none());
        let mut k = json!({ "type": "symmetricKey", "symmetricKey": {} });
        let s = EnrollmentSettings { primary_key: Some("cGs=".into()), ..Default::default() };
        change_attestation(&mut k, &s, false, false, false).unwrap();
        assert_eq!(k["symmetricKey"]["primaryKey"], "cGs=");
        let s = EnrollmentSettings { endorsement_key: Some("ZWs=".into()), ..Default::default() };
        assert!(change_attestation(&mut k, &s, false, false, false).is_err());
    }
}
