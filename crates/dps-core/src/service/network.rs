//! An instance's network rules (`publicNetworkAccess`, `ipFilterRules`) applied to a request,
//! and the store probe behind the admin listener's readiness check.
//!
//! Every transport reaches the check through the domain: the device API in
//! `DeviceSession` (HTTPS, MQTT, AMQP and their WebSocket forms), the service API after its
//! caller is resolved. A transport that learns the instance in some other way calls
//! [`Services::check_network_access`] itself.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use super::Services;
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::observe::Api;

/// Remembers which (instance, address) refusals were logged, so a refused source is logged
/// once, not once per request. Bounded: forgotten wholesale when full.
#[derive(Debug, Default)]
pub(crate) struct LoggedOnce(Mutex<HashSet<(String, IpAddr)>>);

const LOGGED_MAX: usize = 4096;

impl LoggedOnce {
    /// True the first time `(instance, ip)` is seen (since the set was last emptied).
    fn first(&self, instance: &str, ip: IpAddr) -> bool {
        let Ok(mut set) = self.0.lock() else { return true };
        if set.len() >= LOGGED_MAX {
            set.clear();
        }
        set.insert((instance.to_owned(), ip))
    }
}

/// The refusal every filtered request gets: DPS answers 401 and does not say why.
pub(crate) fn refused() -> Error {
    Error::Unauthorized("the request is not authorized for this Device Provisioning Service".into())
}

impl Services {
    /// Applies `instance`'s network rules to a request of `api` from `peer`: `Ok` if admitted;
    /// else DPS's 401 (which names no rule), counted, and logged once per source.
    pub fn check_network_access(&self, instance: &Instance, peer: IpAddr, api: Api) -> Result<()> {
        match instance.network_access(peer, api) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.observer.network_refusal(&instance.name, api, why.as_str());
                if self.refusals_logged.first(&instance.name, peer) {
                    tracing::warn!(
                        instance = %instance.name,
                        %peer,
                        api = api.as_str(),
                        reason = why.as_str(),
                        "request refused by the instance's network rules (logged once per source)"
                    );
                }
                Err(refused())
            }
        }
    }

    /// Whether the store answers (the admin listener's `/health/ready`).
    pub async fn store_ready(&self) -> Result<()> {
        self.store.instance("opendps-readiness-probe").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::model::{Instance, IpFilterAction, IpFilterRule, IpFilterTarget, NetworkRefusal};
    use crate::observe::Api;

    fn rule(action: IpFilterAction, mask: &str, target: IpFilterTarget) -> IpFilterRule {
        IpFilterRule { filter_name: format!("r{mask}"), action, ip_mask: mask.into(), target }
    }

    fn instance(rules: Vec<IpFilterRule>, public: &str) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "name": "dps", "resourceGroup": "rg", "location": "local", "sku": {"name": "S1", "capacity": 1},
            "idScope": "0ne00000001", "state": "Active", "created": "t", "updated": "t", "etag": "e"
        }))
        .expect("instance");
        i.ip_filter_rules = rules;
        i.public_network_access = public.into();
        i
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn first_matching_rule_decides_and_unmatched_addresses_are_accepted() {
        use IpFilterAction::{Accept, Reject};
        let i = instance(
            vec![rule(Accept, "192.168.100.0/22", IpFilterTarget::All), rule(Reject, "0.0.0.0/0", IpFilterTarget::All)],
            "Enabled",
        );
        assert_eq!(i.network_access(ip("192.168.101.7"), Api::Device), Ok(()));
        assert_eq!(i.network_access(ip("192.168.104.1"), Api::Device), Err(NetworkRefusal::IpFilter));
        assert_eq!(i.network_access(ip("::ffff:192.168.100.1"), Api::Service), Ok(()));
        assert_eq!(i.network_access(ip("2001:db8::1"), Api::Service), Err(NetworkRefusal::IpFilter));
        // The management API is never filtered.
        assert_eq!(i.network_access(ip("10.0.0.1"), Api::Management), Ok(()));
        // Reversed order: the reject-all rule matches first.
        let r = instance(
            vec![rule(Reject, "0.0.0.0/0", IpFilterTarget::All), rule(Accept, "192.168.100.0/22", IpFilterTarget::All)],
            "Enabled",
        );
        assert_eq!(r.network_access(ip("192.168.101.7"), Api::Device), Err(NetworkRefusal::IpFilter));
        let none = instance(vec![rule(Reject, "10.0.0.0/8", IpFilterTarget::All)], "Enabled");
        assert_eq!(none.network_access(ip("127.0.0.1"), Api::Device), Ok(()));
        assert_eq!(none.network_access(ip("10.1.2.3"), Api::Device), Err(NetworkRefusal::IpFilter));
        assert_eq!(none.network_access(ip("10.1.2.3"), Api::Service), Err(NetworkRefusal::IpFilter));
    }

    #[test]
    fn targets_select_the_api() {
        use IpFilterAction::Reject;
        let i = instance(vec![rule(Reject, "127.0.0.1", IpFilterTarget::DeviceApi)], "Enabled");
        assert_eq!(i.network_access(ip("127.0.0.1"), Api::Device), Err(NetworkRefusal::IpFilter));
        assert_eq!(i.network_access(ip("127.0.0.1"), Api::Service), Ok(()));
        let s = instance(vec![rule(Reject, "127.0.0.0/8", IpFilterTarget::ServiceApi)], "Enabled");
        assert_eq!(s.network_access(ip("127.0.0.9"), Api::Device), Ok(()));
        assert_eq!(s.network_access(ip("127.0.0.9"), Api::Service), Err(NetworkRefusal::IpFilter));
    }

    #[test]
    fn public_network_access_disabled_refuses_device_and_service_traffic() {
        let i = instance(vec![], "Disabled");
        assert_eq!(i.network_access(ip("127.0.0.1"), Api::Device), Err(NetworkRefusal::PublicNetworkAccessDisabled));
        assert_eq!(i.network_access(ip("127.0.0.1"), Api::Service), Err(NetworkRefusal::PublicNetworkAccessDisabled));
        assert_eq!(i.network_access(ip("127.0.0.1"), Api::Management), Ok(()));
    }
}
