//! HMAC-SHA256 N times on SAS-shaped input, for counting instructions per call under callgrind
//! (bench/results/2026-12-01-hmac.md): `hmac_ops N`.
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let key = [7u8; 64];
    let mut acc = 0u8;
    for i in 0..n {
        let data = format!("0ne00000000%2Fregistrations%2Fdevice-{i:08}\n1764633600");
        acc ^= dps_attest::hmac_sha256(&key, data.as_bytes())[0];
    }
    println!("{acc}");
}
