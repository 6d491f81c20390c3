//! Operator commands: deployments, instances (`dps`), linked hubs, policies, CA certificates,
//! enrollments, enrollment groups, registrations. Each goes through the management or service
//! API of the running server (`client.rs`).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{manage, seg, Service, Target};

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000";
const DPS: &str = "providers/Microsoft.Devices/provisioningServices";

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    #[default]
    Json,
    Table,
}

#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {
    /// Deploy an ARM template to a resource group (like `az deployment group create`).
    Create {
        #[arg(long, short = 'g')]
        resource_group: String,
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
    List {
        #[arg(long, short = 'g')]
        resource_group: Option<String>,
    },
    /// Show an instance (ID scope, host names, linked hubs, policies without keys).
    Show(NameArg),
    /// Delete an instance and everything it holds.
    Delete(NameArg),
    /// Print the service connection string (what the service SDKs take).
    ConnectionString {
        #[command(flatten)]
        name: NameArg,
        /// Shared access policy (default provisioningserviceowner).
        #[arg(long)]
        policy: Option<String>,
    },
    /// Linked IoT hubs.
    #[command(subcommand)]
    LinkedHub(HubCmd),
    /// Shared access policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// CA certificates and their proof of possession.
    #[command(subcommand)]
    Certificate(CertCmd),
}

#[derive(Args, Debug, Clone)]
pub struct NameArg {
    /// DPS instance name (optional when the server has one instance).
    #[arg(long = "dps-name", visible_alias = "name", short = 'n')]
    pub name: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum HubCmd {
    Create {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        connection_string: String,
        #[arg(long, short = 'l')]
        location: String,
        #[arg(long)]
        allocation_weight: Option<i64>,
        #[arg(long)]
        apply_allocation_policy: Option<bool>,
    },
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        /// The hub's host name.
        #[arg(long)]
        linked_hub: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    Create {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        policy_name: String,
        /// Rights, space or comma separated: ServiceConfig EnrollmentRead EnrollmentWrite DeviceConnect RegistrationStatusRead RegistrationStatusWrite.
        #[arg(long, num_args = 1..)]
        rights: Vec<String>,
    },
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    /// Show a policy with its keys.
    Show {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        policy_name: String,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        policy_name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Upload a CA certificate (PEM or DER file).
    Create {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        certificate_name: String,
        #[arg(long)]
        path: PathBuf,
        /// Mark verified on upload (skips proof of possession).
        #[arg(long)]
        verified: bool,
    },
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    Show {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        certificate_name: String,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        certificate_name: String,
        #[arg(long)]
        etag: Option<String>,
    },
    /// Get a verification code: sign a certificate with CN = code using the CA's key.
    GenerateVerificationCode {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        certificate_name: String,
        #[arg(long)]
        etag: Option<String>,
    },
    /// Prove possession with the verification certificate.
    Verify {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        certificate_name: String,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AttestationKind {
    #[value(name = "symmetrickey")]
    SymmetricKey,
    X509,
    Tpm,
}

#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentSettings {
    #[arg(long)]
    primary_key: Option<String>,
    #[arg(long)]
    secondary_key: Option<String>,
    /// X.509 certificate file: the device certificate (individual) or the signing CA (group).
    #[arg(long)]
    certificate_path: Option<PathBuf>,
    #[arg(long)]
    secondary_certificate_path: Option<PathBuf>,
    /// Group: name of a CA certificate uploaded to the instance, instead of --certificate-path.
    #[arg(long)]
    ca_name: Option<String>,
    /// TPM endorsement key (base64).
    #[arg(long)]
    endorsement_key: Option<String>,
    #[arg(long)]
    device_id: Option<String>,
    /// enabled or disabled.
    #[arg(long)]
    provisioning_status: Option<String>,
    /// hashed, geoLatency, static or custom.
    #[arg(long)]
    allocation_policy: Option<String>,
    /// Linked hub host names the enrollment may be assigned to.
    #[arg(long, num_args = 1..)]
    iot_hubs: Vec<String>,
    /// Initial twin tags (JSON object).
    #[arg(long)]
    initial_twin_tags: Option<String>,
    /// Initial twin desired properties (JSON object).
    #[arg(long)]
    initial_twin_properties: Option<String>,
    #[arg(long)]
    edge_enabled: bool,
    /// Custom allocation webhook URL.
    #[arg(long)]
    webhook_url: Option<String>,
    #[arg(long)]
    api_version: Option<String>,
    /// Reprovision policy: reprovisionandmigratedata, reprovisionandresetdata or never.
    #[arg(long)]
    reprovision_policy: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentCmd {
    /// Create or replace an individual enrollment (keys generated when none are given).
    Create {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        enrollment_id: String,
        #[arg(long)]
        attestation_type: AttestationKind,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
    },
    Show {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        enrollment_id: String,
        /// Include the attestation keys.
        #[arg(long)]
        show_keys: bool,
    },
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        enrollment_id: String,
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Create or replace an enrollment group.
    Create {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long, visible_alias = "enrollment-id")]
        group_id: String,
        #[arg(long)]
        attestation_type: AttestationKind,
        #[command(flatten)]
        settings: Box<EnrollmentSettings>,
    },
    Show {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long, visible_alias = "enrollment-id")]
        group_id: String,
        #[arg(long)]
        show_keys: bool,
    },
    List {
        #[command(flatten)]
        dps: NameArg,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long, visible_alias = "enrollment-id")]
        group_id: String,
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistrationCmd {
    /// Registrations of an enrollment group (or all, without --group-id).
    List {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long)]
        group_id: Option<String>,
    },
    /// A registration record, with the TLS facts of the connection that registered.
    Show {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long, visible_alias = "id")]
        registration_id: String,
    },
    Delete {
        #[command(flatten)]
        dps: NameArg,
        #[arg(long, visible_alias = "id")]
        registration_id: String,
        #[arg(long)]
        etag: Option<String>,
    },
}

/// Prints JSON, or a table of the scalar fields.
pub fn print(v: &Value, out: Output) {
    let text = match out {
        Output::Json => serde_json::to_string_pretty(v).unwrap_or_default(),
        Output::Table => table(v),
    };
    let _ = crate::print(&(text + "\n"));
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table(v: &Value) -> String {
    let rows: Vec<&serde_json::Map<String, Value>> = match v {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(o) if o.get("value").is_some_and(Value::is_array) => {
            return table(&o["value"]);
        }
        Value::Object(o) => vec![o],
        other => return cell(other),
    };
    let mut cols: Vec<String> = Vec::new();
    for r in &rows {
        for (k, v) in r.iter() {
            if !v.is_object() && !v.is_array() && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| rows.iter().map(|r| cell(r.get(c).unwrap_or(&Value::Null)).len()).max().unwrap_or(0).max(c.len()))
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<String>| {
        vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    out += &line(cols.clone());
    out += "\n";
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        out += "\n";
        out += &line(cols.iter().map(|c| cell(r.get(c).unwrap_or(&Value::Null))).collect());
    }
    out
}

async fn instances(t: &Target) -> anyhow::Result<Vec<Value>> {
    let v = manage(t, "GET", &format!("{SUB}/{DPS}"), &[], None).await?;
    Ok(v.get("value").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// The instance named, or the only one.
async fn instance(t: &Target, name: &NameArg) -> anyhow::Result<Value> {
    let all = instances(t).await?;
    let names: Vec<&str> = all.iter().filter_map(|i| i.get("name").and_then(Value::as_str)).collect();
    match &name.name {
        Some(n) => all
            .iter()
            .find(|i| i["name"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(n)))
            .cloned()
            .ok_or_else(|| anyhow!("no DPS instance named {n} (instances: {})", names.join(", "))),
        None if all.len() == 1 => Ok(all[0].clone()),
        None => bail!("pass --dps-name: the server has {} instances ({})", all.len(), names.join(", ")),
    }
}

fn path_of(i: &Value) -> String {
    format!(
        "{SUB}/resourceGroups/{}/{DPS}/{}",
        seg(i["resourcegroup"].as_str().unwrap_or("")),
        seg(i["name"].as_str().unwrap_or(""))
    )
}

async fn connection_string(t: &Target, i: &Value, policy: Option<&str>) -> anyhow::Result<String> {
    let keys = manage(t, "POST", &format!("{}/listKeys", path_of(i)), &[], None).await?;
    let list = keys.get("value").and_then(Value::as_array).cloned().unwrap_or_default();
    let want = policy.unwrap_or("provisioningserviceowner");
    let p = list
        .iter()
        .find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(want)))
        .or_else(|| if policy.is_none() { list.first() } else { None })
        .ok_or_else(|| anyhow!("instance has no shared access policy {want}"))?;
    let host = i.pointer("/properties/serviceOperationsHostName").and_then(Value::as_str).unwrap_or("localhost");
    let cs = dps_core::model::ConnectionString {
        host_name: host.into(),
        key_name: cell(&p["keyName"]),
        key: cell(&p["primaryKey"]),
    };
    Ok(cs.to_string())
}

async fn service(t: &Target, name: &NameArg) -> anyhow::Result<Service> {
    let i = instance(t, name).await?;
    Service::from_connection_string(t, &connection_string(t, &i, None).await?)
}

pub async fn deployment(t: &Target, cmd: DeploymentCmd, out: Output) -> anyhow::Result<()> {
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
    print(&v, out);
    Ok(())
}

fn rights_list(rights: &[String]) -> String {
    rights.iter().flat_map(|r| r.split([',', ' '])).filter(|r| !r.is_empty()).collect::<Vec<_>>().join(", ")
}

pub async fn dps(t: &Target, cmd: DpsCmd, out: Output) -> anyhow::Result<()> {
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
                .map(|i| if out == Output::Table { summary(&i) } else { i })
                .collect();
            print(&Value::Array(all), out);
        }
        DpsCmd::Show(n) => {
            let i = instance(t, &n).await?;
            print(&if out == Output::Table { summary(&i) } else { i }, out);
        }
        DpsCmd::Delete(n) => {
            let i = instance(t, &n).await?;
            manage(t, "DELETE", &path_of(&i), &[], None).await?;
            print(&json!({ "deleted": i["name"] }), out);
        }
        DpsCmd::ConnectionString { name, policy } => {
            let i = instance(t, &name).await?;
            let cs = connection_string(t, &i, policy.as_deref()).await?;
            print(&json!({ "connectionString": cs, "idScope": i.pointer("/properties/idScope") }), out);
        }
        DpsCmd::LinkedHub(h) => hubs(t, h, out).await?,
        DpsCmd::Policy(p) => policies(t, p, out).await?,
        DpsCmd::Certificate(c) => certificates(t, c, out).await?,
    }
    Ok(())
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
async fn modify(t: &Target, n: &NameArg, f: impl FnOnce(&mut Value) -> anyhow::Result<()>) -> anyhow::Result<Value> {
    let mut i = instance(t, n).await?;
    let etag = i["etag"].as_str().unwrap_or("*").to_owned();
    let path = path_of(&i);
    f(&mut i)?;
    manage(t, "PUT", &path, &[("if-match", &etag)], Some(&i)).await
}

async fn hubs(t: &Target, cmd: HubCmd, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        HubCmd::Create { dps, connection_string, location, allocation_weight, apply_allocation_policy } => {
            let i = modify(t, &dps, |i| {
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
        HubCmd::Delete { dps, linked_hub } => {
            let i = modify(t, &dps, |i| {
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
    print(&v, out);
    Ok(())
}

async fn policies(t: &Target, cmd: PolicyCmd, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        PolicyCmd::Create { dps, policy_name, rights } => {
            let i = modify(t, &dps, |i| {
                let list =
                    i["properties"]["authorizationPolicies"].as_array_mut().ok_or_else(|| anyhow!("no policy list"))?;
                if list.iter().any(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(&policy_name))) {
                    bail!("policy {policy_name} exists");
                }
                list.push(json!({ "keyName": policy_name, "rights": rights_list(&rights) }));
                Ok(())
            })
            .await?;
            i.pointer("/properties/authorizationPolicies").cloned().unwrap_or_default()
        }
        PolicyCmd::List { dps } => {
            instance(t, &dps).await?.pointer("/properties/authorizationPolicies").cloned().unwrap_or_default()
        }
        PolicyCmd::Show { dps, policy_name } => {
            let i = instance(t, &dps).await?;
            let keys = manage(t, "POST", &format!("{}/listKeys", path_of(&i)), &[], None).await?;
            keys["value"]
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(&policy_name)))
                        .cloned()
                })
                .ok_or_else(|| anyhow!("no policy {policy_name}"))?
        }
        PolicyCmd::Delete { dps, policy_name } => {
            let i = modify(t, &dps, |i| {
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
    print(&v, out);
    Ok(())
}

fn read_cert(path: &PathBuf) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match String::from_utf8(bytes.clone()) {
        Ok(s) if s.contains("-----BEGIN") => s,
        _ => dps_core::base64::encode(&bytes),
    })
}

async fn certificates(t: &Target, cmd: CertCmd, out: Output) -> anyhow::Result<()> {
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
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            manage(t, "DELETE", &cert_path(&i, &certificate_name), &h, None).await?;
            json!({ "deleted": certificate_name })
        }
        CertCmd::GenerateVerificationCode { dps, certificate_name, etag } => {
            let i = instance(t, &dps).await?;
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            manage(t, "POST", &format!("{}/generateVerificationCode", cert_path(&i, &certificate_name)), &h, None)
                .await?
        }
        CertCmd::Verify { dps, certificate_name, path, etag } => {
            let i = instance(t, &dps).await?;
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            let body = json!({ "certificate": read_cert(&path)? });
            manage(t, "POST", &format!("{}/verify", cert_path(&i, &certificate_name)), &h, Some(&body)).await?
        }
    };
    print(&v, out);
    Ok(())
}

fn attestation(kind: AttestationKind, s: &EnrollmentSettings, group: bool) -> anyhow::Result<Value> {
    Ok(match kind {
        AttestationKind::SymmetricKey => {
            json!({ "type": "symmetricKey", "symmetricKey": { "primaryKey": s.primary_key, "secondaryKey": s.secondary_key } })
        }
        AttestationKind::Tpm => {
            let ek = s.endorsement_key.as_ref().ok_or_else(|| anyhow!("--endorsement-key is required for tpm"))?;
            json!({ "type": "tpm", "tpm": { "endorsementKey": ek } })
        }
        AttestationKind::X509 => {
            if group && s.ca_name.is_some() {
                json!({ "type": "x509", "x509": { "caReferences": { "primary": s.ca_name } } })
            } else {
                let primary =
                    s.certificate_path.as_ref().ok_or_else(|| anyhow!("--certificate-path is required for x509"))?;
                let mut certs = json!({ "primary": { "certificate": read_cert(primary)? } });
                if let Some(p) = &s.secondary_certificate_path {
                    certs["secondary"] = json!({ "certificate": read_cert(p)? });
                }
                let field = if group { "signingCertificates" } else { "clientCertificates" };
                json!({ "type": "x509", "x509": { field: certs } })
            }
        }
    })
}

fn enrollment_body(
    id_field: &str,
    id: &str,
    kind: AttestationKind,
    s: &EnrollmentSettings,
    group: bool,
) -> anyhow::Result<Value> {
    let mut b = json!({ id_field: id, "attestation": attestation(kind, s, group)?, "capabilities": { "iotEdge": s.edge_enabled } });
    if let Some(d) = &s.device_id {
        if group {
            bail!("--device-id applies to individual enrollments only");
        }
        b["deviceId"] = json!(d);
    }
    if let Some(p) = &s.provisioning_status {
        b["provisioningStatus"] = json!(p);
    }
    if let Some(p) = &s.allocation_policy {
        b["allocationPolicy"] = json!(p);
    }
    if !s.iot_hubs.is_empty() {
        b["iotHubs"] = json!(s.iot_hubs);
    }
    if s.initial_twin_tags.is_some() || s.initial_twin_properties.is_some() {
        let parse = |t: &Option<String>, what: &str| -> anyhow::Result<Value> {
            t.as_deref()
                .map_or(Ok(json!({})), |t| serde_json::from_str(t).with_context(|| format!("{what} is not JSON")))
        };
        b["initialTwin"] = json!({ "tags": parse(&s.initial_twin_tags, "--initial-twin-tags")?, "properties": { "desired": parse(&s.initial_twin_properties, "--initial-twin-properties")? } });
    }
    if let Some(url) = &s.webhook_url {
        b["customAllocationDefinition"] =
            json!({ "webhookUrl": url, "apiVersion": s.api_version.as_deref().unwrap_or("2021-10-01") });
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
    Ok(b)
}

async fn all_pages(svc: &Service, path: &str) -> anyhow::Result<Value> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100_000 {
        let mut h: Vec<(&str, &str)> = vec![("x-ms-max-item-count", "1000")];
        if let Some(t) = &token {
            h.push(("x-ms-continuation", t));
        }
        let r = svc.call("POST", path, &h, Some(&json!({ "query": "SELECT *" }))).await?;
        items.extend(r.body.as_array().cloned().unwrap_or_default());
        token = r.headers.get("x-ms-continuation").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(Value::Array(items))
}

pub async fn enrollment(t: &Target, cmd: EnrollmentCmd, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        EnrollmentCmd::Create { dps, enrollment_id, attestation_type, settings } => {
            let svc = service(t, &dps).await?;
            let body = enrollment_body("registrationId", &enrollment_id, attestation_type, &settings, false)?;
            let mut e = svc.call("PUT", &format!("/enrollments/{}", seg(&enrollment_id)), &[], Some(&body)).await?.body;
            let a = svc
                .call("POST", &format!("/enrollments/{}/attestationmechanism", seg(&enrollment_id)), &[], None)
                .await?
                .body;
            e["attestation"] = a;
            e
        }
        EnrollmentCmd::Show { dps, enrollment_id, show_keys } => {
            let svc = service(t, &dps).await?;
            let mut e = svc.call("GET", &format!("/enrollments/{}", seg(&enrollment_id)), &[], None).await?.body;
            if show_keys {
                e["attestation"] = svc
                    .call("POST", &format!("/enrollments/{}/attestationmechanism", seg(&enrollment_id)), &[], None)
                    .await?
                    .body;
            }
            e
        }
        EnrollmentCmd::List { dps } => all_pages(&service(t, &dps).await?, "/enrollments/query").await?,
        EnrollmentCmd::Delete { dps, enrollment_id, etag } => {
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            service(t, &dps).await?.call("DELETE", &format!("/enrollments/{}", seg(&enrollment_id)), &h, None).await?;
            json!({ "deleted": enrollment_id })
        }
    };
    print(&v, out);
    Ok(())
}

pub async fn group(t: &Target, cmd: GroupCmd, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        GroupCmd::Create { dps, group_id, attestation_type, settings } => {
            if attestation_type == AttestationKind::Tpm {
                bail!("enrollment groups support symmetrickey and x509 attestation");
            }
            let svc = service(t, &dps).await?;
            let body = enrollment_body("enrollmentGroupId", &group_id, attestation_type, &settings, true)?;
            let mut g = svc.call("PUT", &format!("/enrollmentGroups/{}", seg(&group_id)), &[], Some(&body)).await?.body;
            g["attestation"] = svc
                .call("POST", &format!("/enrollmentGroups/{}/attestationmechanism", seg(&group_id)), &[], None)
                .await?
                .body;
            g
        }
        GroupCmd::Show { dps, group_id, show_keys } => {
            let svc = service(t, &dps).await?;
            let mut g = svc.call("GET", &format!("/enrollmentGroups/{}", seg(&group_id)), &[], None).await?.body;
            if show_keys {
                g["attestation"] = svc
                    .call("POST", &format!("/enrollmentGroups/{}/attestationmechanism", seg(&group_id)), &[], None)
                    .await?
                    .body;
            }
            g
        }
        GroupCmd::List { dps } => all_pages(&service(t, &dps).await?, "/enrollmentGroups/query").await?,
        GroupCmd::Delete { dps, group_id, etag } => {
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            service(t, &dps).await?.call("DELETE", &format!("/enrollmentGroups/{}", seg(&group_id)), &h, None).await?;
            json!({ "deleted": group_id })
        }
    };
    print(&v, out);
    Ok(())
}

pub async fn registration(t: &Target, cmd: RegistrationCmd, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        RegistrationCmd::List { dps, group_id } => {
            let svc = service(t, &dps).await?;
            match group_id {
                Some(g) => all_pages(&svc, &format!("/registrations/{}/query", seg(&g))).await?,
                None => all_pages(&svc, "/registrations/query").await?,
            }
        }
        RegistrationCmd::Show { dps, registration_id } => {
            service(t, &dps)
                .await?
                .call("GET", &format!("/registrations/{}", seg(&registration_id)), &[], None)
                .await?
                .body
        }
        RegistrationCmd::Delete { dps, registration_id, etag } => {
            let h: Vec<(&str, &str)> = etag.as_deref().map(|e| vec![("if-match", e)]).unwrap_or_default();
            service(t, &dps)
                .await?
                .call("DELETE", &format!("/registrations/{}", seg(&registration_id)), &h, None)
                .await?;
            json!({ "deleted": registration_id })
        }
    };
    print(&v, out);
    Ok(())
}

/// `opendps tls readiness`.
pub async fn readiness(
    t: &Target,
    dps: &NameArg,
    profile: Option<String>,
    tls13: bool,
    min_tls_version: Option<String>,
    out: Output,
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
    if out == Output::Table {
        print(&v["refused"], out);
        let _ = crate::print(&format!(
            "\n{} of {} devices with TLS facts would be refused ({} without facts)\n",
            v["wouldBeRefused"],
            v["evaluated"],
            v["withoutTlsFacts"].as_array().map_or(0, Vec::len)
        ));
    } else {
        print(&v, out);
    }
    Ok(())
}
