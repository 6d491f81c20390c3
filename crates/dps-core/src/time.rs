//! UTC timestamps as DPS writes them: ISO-8601 with seven fractional digits and `Z`
//! (`2020-04-10T03:11:13.0276997Z`). Pure arithmetic, no clock: the clock is a port.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.fffffffZ`.
pub fn format_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos() / 100
    )
}

/// RFC 1123 (`Sun, 29 Nov 2026 06:27:11 GMT`), as ARM writes certificate dates.
pub fn format_rfc1123(t: SystemTime) -> String {
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let wd = WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mon = MONTHS[usize::try_from(m - 1).unwrap_or(0)];
    format!("{wd}, {d:02} {mon} {y:04} {:02}:{:02}:{:02} GMT", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_dps() {
        let t = UNIX_EPOCH + Duration::new(1_586_488_273, 27_699_700);
        assert_eq!(format_utc(t), "2020-04-10T03:11:13.0276997Z");
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(format_rfc1123(UNIX_EPOCH + Duration::from_secs(1_795_933_631)), "Sun, 29 Nov 2026 06:27:11 GMT");
    }
}
