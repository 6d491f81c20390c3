//! `opendps hub …`: embedded IoT hubs (docs/hub.md), shaped like `az iot hub`: the hubs
//! themselves through the management API, and their device identities and twins through the
//! hub's own registry API with a SAS token of its `iothubowner` policy, as any service SDK does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{check, manage, request, seg, Target};
use crate::output::Printer;

const HUBS: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Devices/IotHubs";
/// The IoT Hub registry api-version the CLI speaks.
const HUB_API_VERSION: &str = "2021-04-12";

#[derive(Subcommand, Debug)]
pub enum IotHubCmd {
    /// Create an IoT hub served by this server (registry API on the HTTPS port, same TLS).
    #[command(
        after_help = "Example:\n  opendps hub create -n my-hub\n  opendps hub create -n hub2 --host-name hub2.example.com"
    )]
    Create {
        /// Name of the new hub.
        #[arg(long, short = 'n')]
        name: String,
        /// The host name devices and service clients reach the hub by: a name or address of
        /// this server (default: the server's public host). Unique among hubs.
        #[arg(long)]
        host_name: Option<String>,
        /// Location (region) of the hub (default: the server's region).
        #[arg(long, short = 'l')]
        location: Option<String>,
    },
    /// List the embedded hubs.
    #[command(after_help = "Example:\n  opendps hub list -o table")]
    List,
    /// Show one hub (host name, policies without keys).
    #[command(after_help = "Example:\n  opendps hub show -n my-hub --query properties.hostName -o tsv")]
    Show {
        /// The hub's name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Delete a hub and every device identity in it.
    #[command(after_help = "Example:\n  opendps hub delete -n my-hub")]
    Delete {
        /// The hub's name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Print a connection string of the hub (what `opendps dps linked-hub create` and the hub
    /// service SDKs take).
    #[command(after_help = "Example:\n  opendps hub connection-string -n my-hub --query connectionString -o tsv")]
    ConnectionString {
        /// The hub's name.
        #[arg(long, short = 'n')]
        name: String,
        /// Shared access policy (default iothubowner).
        #[arg(long, visible_alias = "pn", default_value = "iothubowner")]
        policy_name: String,
    },
    /// Device identities of a hub (`az iot hub device-identity`).
    #[command(subcommand, after_help = "Example:\n  opendps hub device-identity list -n my-hub -o table")]
    DeviceIdentity(DeviceIdentityCmd),
    /// Device twins of a hub (`az iot hub device-twin`).
    #[command(subcommand, after_help = "Example:\n  opendps hub device-twin show -n my-hub -d device-1")]
    DeviceTwin(DeviceTwinCmd),
}

#[derive(Subcommand, Debug)]
pub enum DeviceIdentityCmd {
    /// List the device identities (at most 1000).
    #[command(after_help = "Example:\n  opendps hub device-identity list -n my-hub -o table")]
    List {
        /// The hub's name.
        #[arg(long = "hub-name", short = 'n')]
        hub: String,
    },
    /// Show one device identity (authentication type, keys or thumbprints, iotEdge).
    #[command(after_help = "Example:\n  opendps hub device-identity show -n my-hub -d device-1")]
    Show {
        /// The hub's name.
        #[arg(long = "hub-name", short = 'n')]
        hub: String,
        /// The device id.
        #[arg(long, short = 'd')]
        device_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceTwinCmd {
    /// Show a device's twin (tags, desired and reported properties).
    #[command(
        after_help = "Example:\n  opendps hub device-twin show -n my-hub -d device-1 --query properties.desired"
    )]
    Show {
        /// The hub's name.
        #[arg(long = "hub-name", short = 'n')]
        hub: String,
        /// The device id.
        #[arg(long, short = 'd')]
        device_id: String,
    },
}

async fn connection_string(t: &Target, name: &str, policy: &str) -> anyhow::Result<(String, String, String)> {
    let hub = manage(t, "GET", &format!("{HUBS}/{}", seg(name)), &[], None).await?;
    let host = hub.pointer("/properties/hostName").and_then(Value::as_str).unwrap_or_default().to_owned();
    let keys = manage(t, "POST", &format!("{HUBS}/{}/listkeys", seg(name)), &[], None).await?;
    let key = keys["value"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["keyName"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(policy)))
        .and_then(|p| p["primaryKey"].as_str())
        .ok_or_else(|| anyhow!("hub {name} has no shared access policy {policy}"))?;
    Ok((host, policy.to_owned(), key.to_owned()))
}

/// A registry API call to hub `name`, addressed by its host name, with an `iothubowner` token.
async fn registry(t: &Target, name: &str, path: &str) -> anyhow::Result<Value> {
    let (host, key_name, key) = connection_string(t, name, "iothubowner").await?;
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + Duration::from_secs(3600).as_secs();
    let token = dps_attest::sas::make_token(&host.to_ascii_lowercase(), &key, expiry, Some(&key_name))
        .ok_or_else(|| anyhow!("the hub's key is not base64"))?;
    let target = Target { server_name: host.clone(), ..t.clone() };
    let path = format!("{path}?api-version={HUB_API_VERSION}");
    let reply = request(&target, "GET", &path, Some(&token), &[], None)
        .await
        .with_context(|| format!("hub {name} at {host}"))?;
    Ok(check(reply)?.body)
}

fn summary(h: &Value) -> Value {
    json!({ "name": h["name"], "hostName": h.pointer("/properties/hostName"), "location": h["location"] })
}

fn device_summary(d: &Value) -> Value {
    json!({
        "deviceId": d["deviceId"],
        "status": d["status"],
        "authenticationType": d.pointer("/authentication/type"),
        "iotEdge": d.pointer("/capabilities/iotEdge"),
    })
}

pub async fn hub(t: &Target, cmd: IotHubCmd, out: &Printer) -> anyhow::Result<()> {
    match cmd {
        IotHubCmd::Create { name, host_name, location } => {
            let mut body = json!({ "properties": {} });
            if let Some(h) = host_name {
                body["properties"]["hostName"] = json!(h);
            }
            if let Some(l) = location {
                body["location"] = json!(l);
            }
            out.print(&manage(t, "PUT", &format!("{HUBS}/{}", seg(&name)), &[], Some(&body)).await?)
        }
        IotHubCmd::List => {
            let all = manage(t, "GET", HUBS, &[], None).await?;
            let list: Vec<Value> = all["value"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| if out.is_table() { summary(h) } else { h.clone() })
                .collect();
            out.print(&Value::Array(list))
        }
        IotHubCmd::Show { name } => {
            let h = manage(t, "GET", &format!("{HUBS}/{}", seg(&name)), &[], None).await?;
            out.print(&if out.is_table() { summary(&h) } else { h })
        }
        IotHubCmd::Delete { name } => {
            manage(t, "DELETE", &format!("{HUBS}/{}", seg(&name)), &[], None).await?;
            Ok(())
        }
        IotHubCmd::ConnectionString { name, policy_name } => {
            let (host, key_name, key) = connection_string(t, &name, &policy_name).await?;
            let cs = format!("HostName={host};SharedAccessKeyName={key_name};SharedAccessKey={key}");
            out.print(&json!({ "connectionString": cs }))
        }
        IotHubCmd::DeviceIdentity(DeviceIdentityCmd::List { hub }) => {
            let all = registry(t, &hub, "/devices/").await?;
            let list: Vec<Value> = all
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| if out.is_table() { device_summary(d) } else { d.clone() })
                .collect();
            out.print(&Value::Array(list))
        }
        IotHubCmd::DeviceIdentity(DeviceIdentityCmd::Show { hub, device_id }) => {
            let d = registry(t, &hub, &format!("/devices/{}", seg(&device_id))).await?;
            out.print(&if out.is_table() { device_summary(&d) } else { d })
        }
        IotHubCmd::DeviceTwin(DeviceTwinCmd::Show { hub, device_id }) => {
            out.print(&registry(t, &hub, &format!("/twins/{}", seg(&device_id))).await?)
        }
    }
}
