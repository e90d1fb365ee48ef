//! The hardware clock, read directly: `RTC_RD_TIME` on `/dev/rtc0`, broken-down time to
//! `SystemTime`, and `/etc/adjtime`'s UTC/LOCAL line. Calendar arithmetic is pure and tested;
//! the device read is exercised read-only by a test when the device exists.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `struct rtc_time` from `<linux/rtc.h>` (same layout as the first nine fields of `struct tm`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub tm_sec: libc::c_int,
    pub tm_min: libc::c_int,
    pub tm_hour: libc::c_int,
    pub tm_mday: libc::c_int,
    /// 0-11.
    pub tm_mon: libc::c_int,
    /// Years since 1900.
    pub tm_year: libc::c_int,
    pub tm_wday: libc::c_int,
    pub tm_yday: libc::c_int,
    pub tm_isdst: libc::c_int,
}

// RTC_RD_TIME = _IOR('p', 0x09, struct rtc_time)
nix::ioctl_read!(rtc_rd_time, b'p', 0x09, RtcTime);

/// How `/etc/adjtime` says the RTC keeps time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcScale {
    Utc,
    Local,
}

/// Line 3 of `/etc/adjtime` is `UTC` or `LOCAL`; util-linux treats a missing line (or file) as
/// UTC.
pub fn parse_adjtime(text: &str) -> RtcScale {
    match text.lines().nth(2).map(str::trim) {
        Some("LOCAL") => RtcScale::Local,
        _ => RtcScale::Utc,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month 1-12, day 1-31)`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The instant an RTC reading names, taking the RTC as UTC. Out-of-range fields (a flat CMOS
/// battery gives garbage) are an error, never a wrapped date.
pub fn rtc_to_system_time(t: &RtcTime) -> Result<SystemTime, String> {
    let ok = (0..=60).contains(&t.tm_sec)
        && (0..=59).contains(&t.tm_min)
        && (0..=23).contains(&t.tm_hour)
        && (1..=31).contains(&t.tm_mday)
        && (0..=11).contains(&t.tm_mon)
        && (70..=1100).contains(&t.tm_year);
    if !ok {
        return Err(format!("RTC holds an impossible date: {t:?}"));
    }
    let days = days_from_civil(
        1900 + t.tm_year as i64,
        t.tm_mon as u32 + 1,
        t.tm_mday as u32,
    );
    let secs = days * 86_400 + t.tm_hour as i64 * 3600 + t.tm_min as i64 * 60 + t.tm_sec as i64;
    Ok(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// `2024-05-01T12:00:00.123Z`, for log lines.
pub fn format_utc(t: SystemTime) -> String {
    let (secs, millis) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => (-(e.duration().as_secs() as i64) - 1, 0),
    };
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// One `RTC_RD_TIME` on an open device.
fn read_once(fd: &std::fs::File) -> Result<RtcTime, String> {
    let mut t = RtcTime::default();
    // SAFETY: `t` is a properly sized, writable `struct rtc_time` and `fd` is open.
    unsafe { rtc_rd_time(fd.as_raw_fd(), &mut t) }.map_err(|e| format!("RTC_RD_TIME: {e}"))?;
    Ok(t)
}

/// Read the RTC at `device` (read-only). The RTC counts whole seconds, so a single read is up to
/// a second behind; with `align` we poll until the seconds field changes, as `hwclock` does, and
/// return the instant of that edge (a few ms of error instead of up to 1 s).
pub fn read_device(device: &Path, align: bool) -> Result<SystemTime, String> {
    let named = |e: String| format!("{}: {e}", device.display());
    let file = std::fs::File::open(device).map_err(|e| named(e.to_string()))?;
    let first = read_once(&file).map_err(named)?;
    if !align {
        return rtc_to_system_time(&first);
    }
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let t = read_once(&file).map_err(named)?;
        if t != first {
            return rtc_to_system_time(&t);
        }
        if started.elapsed() > Duration::from_millis(1500) {
            return Err(format!("{}: the RTC is not ticking", device.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtc(y: i32, mon: i32, d: i32, h: i32, mi: i32, s: i32) -> RtcTime {
        RtcTime {
            tm_year: y - 1900,
            tm_mon: mon - 1,
            tm_mday: d,
            tm_hour: h,
            tm_min: mi,
            tm_sec: s,
            ..RtcTime::default()
        }
    }

    #[test]
    fn rtc_readings_map_to_unix_time() {
        let rows = [
            (rtc(1970, 1, 1, 0, 0, 0), 0u64),
            (rtc(2000, 2, 29, 12, 0, 0), 951_825_600),
            (rtc(2024, 12, 31, 23, 59, 59), 1_735_689_599),
            (rtc(2038, 1, 19, 3, 14, 8), 2_147_483_648),
        ];
        for (t, want) in rows {
            let got = rtc_to_system_time(&t).unwrap();
            assert_eq!(
                got.duration_since(UNIX_EPOCH).unwrap().as_secs(),
                want,
                "{t:?}"
            );
        }
        for bad in [
            rtc(1969, 12, 31, 0, 0, 0),
            rtc(2024, 13, 1, 0, 0, 0),
            rtc(2024, 1, 0, 0, 0, 0),
            rtc(2024, 1, 1, 24, 0, 0),
        ] {
            assert!(rtc_to_system_time(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn civil_round_trips_and_formats() {
        for days in [-1000, 0, 59, 10_957, 19_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let t = UNIX_EPOCH + Duration::from_millis(951_825_600_123);
        assert_eq!(format_utc(t), "2000-02-29T12:00:00.123Z");
    }

    #[test]
    fn adjtime_third_line_decides_the_scale() {
        let rows = [
            ("0.0 0 0.0\n0\nUTC\n", RtcScale::Utc),
            ("0.0 0 0.0\n0\nLOCAL\n", RtcScale::Local),
            ("0.0 0 0.0\n0\n", RtcScale::Utc),
            ("", RtcScale::Utc),
        ];
        for (text, want) in rows {
            assert_eq!(parse_adjtime(text), want, "{text:?}");
        }
    }

    /// The real read path, read-only: the RTC is never written, the system clock never set.
    #[test]
    fn real_rtc_reads_a_plausible_time_when_present() {
        let dev = Path::new("/dev/rtc0");
        if !dev.exists() {
            println!("skipped: {} does not exist on this machine", dev.display());
            return;
        }
        match read_device(dev, true) {
            Ok(t) => {
                let skew = t
                    .duration_since(SystemTime::now())
                    .unwrap_or_else(|e| e.duration());
                println!("RTC reads {} (|skew| {skew:?})", format_utc(t));
                assert!(t > UNIX_EPOCH + Duration::from_secs(1_600_000_000));
            }
            // No permission (unprivileged test run) or busy: the error names the device.
            Err(e) => {
                println!("skipped: cannot read the RTC: {e}");
                assert!(e.contains("/dev/rtc0"), "{e}");
            }
        }
    }
}
