//! Geolatency without measuring: the lowest-latency hub is the one in this node's region, then
//! the nearest by great-circle distance between region centres (a documented stand-in for
//! latency, see docs/allocation.md), ties broken by hashing.

/// Azure regions and their approximate centres (latitude, longitude in degrees).
pub const REGIONS: &[(&str, f64, f64)] = &[
    ("eastus", 37.37, -79.82),
    ("eastus2", 36.67, -78.39),
    ("centralus", 41.59, -93.60),
    ("northcentralus", 41.88, -87.63),
    ("southcentralus", 29.42, -98.49),
    ("westcentralus", 41.14, -104.82),
    ("westus", 37.78, -122.42),
    ("westus2", 47.23, -119.85),
    ("westus3", 33.45, -112.07),
    ("canadacentral", 43.65, -79.38),
    ("canadaeast", 46.82, -71.22),
    ("brazilsouth", -23.55, -46.63),
    ("mexicocentral", 20.59, -100.39),
    ("northeurope", 53.35, -6.26),
    ("westeurope", 52.37, 4.90),
    ("uksouth", 50.94, -0.80),
    ("ukwest", 53.43, -3.08),
    ("francecentral", 46.38, 2.37),
    ("germanywestcentral", 50.11, 8.68),
    ("switzerlandnorth", 47.45, 8.56),
    ("norwayeast", 59.91, 10.75),
    ("swedencentral", 60.67, 17.14),
    ("polandcentral", 52.23, 21.01),
    ("italynorth", 45.46, 9.19),
    ("spaincentral", 40.42, -3.70),
    ("uaenorth", 25.27, 55.30),
    ("qatarcentral", 25.29, 51.53),
    ("israelcentral", 31.77, 35.21),
    ("southafricanorth", -25.73, 28.22),
    ("centralindia", 18.58, 73.92),
    ("southindia", 12.98, 80.16),
    ("westindia", 19.09, 72.87),
    ("eastasia", 22.27, 114.19),
    ("southeastasia", 1.28, 103.83),
    ("japaneast", 35.68, 139.77),
    ("japanwest", 34.69, 135.50),
    ("koreacentral", 37.57, 126.98),
    ("australiaeast", -33.86, 151.21),
    ("australiasoutheast", -37.81, 144.96),
    ("newzealandnorth", -36.85, 174.76),
];

fn normalize(region: &str) -> String {
    region.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// Whether `region` is in the table.
pub fn is_known(region: &str) -> bool {
    let r = normalize(region);
    REGIONS.iter().any(|(n, _, _)| *n == r)
}

/// Distance in km between two regions; 0 for the same region, `None` if either is unknown.
pub fn distance_km(a: &str, b: &str) -> Option<f64> {
    let (a, b) = (normalize(a), normalize(b));
    if a == b {
        return Some(0.0);
    }
    let find = |r: &str| REGIONS.iter().find(|(n, _, _)| *n == r).map(|(_, lat, lon)| (*lat, *lon));
    let ((la1, lo1), (la2, lo2)) = (find(&a)?, find(&b)?);
    let (p1, p2) = (la1.to_radians(), la2.to_radians());
    let dp = (la2 - la1).to_radians();
    let dl = (lo2 - lo1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    Some(2.0 * 6371.0 * h.sqrt().asin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance_km("westus", "West US"), Some(0.0));
        let eu = distance_km("westeurope", "northeurope").expect("known");
        let us = distance_km("westeurope", "eastus").expect("known");
        assert!(eu < 1000.0 && us > 5000.0, "{eu} {us}");
        assert_eq!(distance_km("westeurope", "mars"), None);
        assert!(is_known("eastus2") && !is_known("local"));
    }
}
