//! Choosing an IoT hub (docs/allocation.md): static, and evenly weighted (hashed).
//!
//! Hashed allocation is weighted rendezvous hashing over the eligible hubs: deterministic per
//! registration id, proportional to `allocationWeight`, and stable when hubs are added or
//! removed (only the devices that must move, move).

use crate::model::{AllocationPolicy, Instance, LinkedHub, ServiceAllocationPolicy};

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby inputs spread (splitmix64 finalizer).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hub for `key` among `hubs` (each with a weight ≥ 1), by weighted rendezvous hashing.
pub fn weighted_choice<'a>(key: &str, hubs: &[(&'a str, i64)]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    hubs.iter()
        .map(|(name, weight)| {
            let h = fnv1a(format!("{key}\u{0}{}", name.to_ascii_lowercase()).as_bytes());
            // u in (0, 1]; score = -w / ln(u): larger weight, larger score.
            #[allow(clippy::cast_precision_loss)]
            let u = ((h >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
            #[allow(clippy::cast_precision_loss)]
            let score = -(*weight.max(&1) as f64) / u.ln();
            (score, *name)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

/// The outcome of allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    Hub(String),
    /// No hub could be assigned, with why (errorCode 400208).
    NoHub(String),
    /// Custom allocation: ask the enrollment's webhook, offering these hubs.
    Custom(Vec<String>),
}

/// Picks the hub for a registration under the enrollment's or the instance's policy.
pub fn allocate(
    instance: &Instance,
    registration_id: &str,
    policy: Option<AllocationPolicy>,
    enrollment_hubs: Option<&[String]>,
    legacy_hub: Option<&str>,
    node_region: &str,
) -> Allocation {
    let linked = |name: &str| instance.iot_hubs.iter().find(|h| h.name.eq_ignore_ascii_case(name));
    let eligible: Vec<&LinkedHub> = match enrollment_hubs.filter(|h| !h.is_empty()) {
        Some(names) => names.iter().filter_map(|n| linked(n)).collect(),
        None => instance.iot_hubs.iter().filter(|h| h.allocatable()).collect(),
    };
    let policy = policy.unwrap_or(match instance.allocation_policy {
        ServiceAllocationPolicy::Hashed => AllocationPolicy::Hashed,
        ServiceAllocationPolicy::GeoLatency => AllocationPolicy::GeoLatency,
        ServiceAllocationPolicy::Static => AllocationPolicy::Static,
    });
    match policy {
        AllocationPolicy::Static => {
            if let Some(h) = legacy_hub.and_then(linked) {
                return Allocation::Hub(h.name.clone());
            }
            match eligible.as_slice() {
                [one] => Allocation::Hub(one.name.clone()),
                [] => Allocation::NoHub("static allocation needs a linked IoT hub named on the enrollment".into()),
                _ => Allocation::NoHub("static allocation needs exactly one IoT hub on the enrollment".into()),
            }
        }
        AllocationPolicy::Custom => {
            if eligible.is_empty() {
                return Allocation::NoHub(format!(
                    "DPS instance {} has no linked IoT hub to offer the webhook",
                    instance.name
                ));
            }
            Allocation::Custom(eligible.iter().map(|h| h.name.clone()).collect())
        }
        AllocationPolicy::GeoLatency => {
            // Nearest region first (unknown regions are farthest); ties hashed.
            let dist = |h: &LinkedHub| super::regions::distance_km(node_region, &h.location).unwrap_or(f64::INFINITY);
            let best = eligible.iter().map(|h| dist(h)).fold(f64::INFINITY, f64::min);
            let nearest: Vec<&LinkedHub> = eligible.iter().copied().filter(|h| dist(h) <= best).collect();
            hashed(instance, registration_id, &nearest)
        }
        AllocationPolicy::Hashed => hashed(instance, registration_id, &eligible),
    }
}

fn hashed(instance: &Instance, registration_id: &str, eligible: &[&LinkedHub]) -> Allocation {
    let hubs: Vec<(&str, i64)> = eligible.iter().map(|h| (h.name.as_str(), h.weight())).collect();
    match weighted_choice(registration_id, &hubs) {
        Some(h) => Allocation::Hub(h.to_owned()),
        None => Allocation::NoHub(format!("DPS instance {} has no linked IoT hub to assign devices to", instance.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_deterministic_and_follows_weights() {
        let hubs = [("a.example", 1), ("b.example", 3)];
        assert_eq!(weighted_choice("dev-1", &hubs), weighted_choice("DEV-1", &hubs), "case-insensitive ids");
        let mut counts = [0u32; 2];
        for n in 0..4000 {
            match weighted_choice(&format!("device-{n}"), &hubs) {
                Some("a.example") => counts[0] += 1,
                Some(_) => counts[1] += 1,
                None => unreachable!(),
            }
        }
        // Expect about 1:3; allow wide bounds (deterministic, but no exact promise).
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn adding_a_hub_moves_only_devices_to_it() {
        let before = [("a", 1), ("b", 1)];
        let after = [("a", 1), ("b", 1), ("c", 1)];
        for n in 0..500 {
            let id = format!("d{n}");
            let (x, y) = (weighted_choice(&id, &before), weighted_choice(&id, &after));
            assert!(x == y || y == Some("c"), "{id} moved from {x:?} to {y:?}");
        }
        assert_eq!(weighted_choice("x", &[]), None);
    }
}
