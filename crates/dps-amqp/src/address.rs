//! Link addresses: `{idScope}/registrations/{registrationId}`, optionally behind
//! `amqps://{host}/` (the C SDK's form). Pure.

use crate::sasl::machine::{parse_username, Identity};

/// The identity a link address names, or `None` when it is not a DPS registration address.
pub fn parse_link_address(address: &str) -> Option<Identity> {
    let path = match address.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("amqps://") => address.get(8..)?.split_once('/')?.1,
        _ => address,
    };
    parse_username(path)
}

/// Whether two identities are the same device (ID scope and registration id compare without
/// regard to ASCII case, as on the other transports).
pub fn same_device(a: &Identity, b: &Identity) -> bool {
    a.id_scope.eq_ignore_ascii_case(&b.id_scope) && a.registration_id.eq_ignore_ascii_case(&b.registration_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str, r: &str) -> Identity {
        Identity { id_scope: s.into(), registration_id: r.into() }
    }

    #[test]
    fn accepts_both_address_forms() {
        assert_eq!(parse_link_address("0ne00000001/registrations/dev-1"), Some(id("0ne00000001", "dev-1")));
        assert_eq!(
            parse_link_address("amqps://global.azure-devices-provisioning.net/0ne00000001/registrations/dev-1"),
            Some(id("0ne00000001", "dev-1"))
        );
        assert_eq!(parse_link_address("AMQPS://127.0.0.1:5671/s/registrations/d"), Some(id("s", "d")));
    }

    #[test]
    fn refuses_other_addresses() {
        for bad in [
            "",
            "amqps://",
            "amqps://host",
            "s/registrations/",
            "/registrations/d",
            "s/registrations/d/extra",
            "s/devices/d",
            "amqps://host/s/devices/d",
            "amqps:/host/s/registrations/d",
            "é/registrations/ü\u{0}",
        ] {
            assert_eq!(parse_link_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compares_without_ascii_case() {
        assert!(same_device(&id("0NE0000000A", "Dev-1"), &id("0ne0000000a", "dev-1")));
        assert!(!same_device(&id("s", "dev-1"), &id("s", "dev-2")));
        assert!(!same_device(&id("s1", "dev"), &id("s2", "dev")));
    }
}
