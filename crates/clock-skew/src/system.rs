//! The effects of stepping the clock, behind [`ClockSystem`]: the real implementation talks to
//! chronyd, the RTC device, `hwclock` and `clock_settime`; unit tests use a recording fake.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gce_agent::cmd::{self, CmdError, RunOpts};

use crate::rtc::{self, RtcScale};

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("cannot read the hardware clock: {0}")]
    Rtc(String),
    #[error("cannot read {}: {source}", path.display())]
    Adjtime {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clock_settime(CLOCK_REALTIME) failed: {0}")]
    SetTime(nix::Error),
    #[error(transparent)]
    Command(#[from] CmdError),
}

/// What the daemon needs from the machine.
pub trait ClockSystem {
    /// chronyd is running and would fight a step it did not make.
    fn chrony_running(&self) -> impl Future<Output = bool>;
    /// How the RTC keeps time (`/etc/adjtime`; no file means UTC).
    fn rtc_scale(&self) -> Result<RtcScale, ClockError>;
    /// The RTC's time, read as UTC.
    fn read_rtc(&self) -> Result<SystemTime, ClockError>;
    fn set_system_time(&self, t: SystemTime) -> Result<(), ClockError>;
    fn chronyc_makestep(&self) -> impl Future<Output = Result<(), ClockError>>;
    /// `hwclock --hctosys -u --noadjfile`, when the RTC device cannot be read directly.
    fn hwclock_hctosys(&self) -> impl Future<Output = Result<(), ClockError>>;
    fn now(&self) -> SystemTime;
}

/// The machine. Every path and program is a field so nothing is hard-wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealClock {
    pub rtc_device: PathBuf,
    pub adjtime: PathBuf,
    /// chronyd's pid file (Debian and EL both use the first; older EL the second).
    pub chrony_pidfiles: Vec<PathBuf>,
    pub chronyc: String,
    pub hwclock: String,
    pub command_timeout: Duration,
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock {
            rtc_device: PathBuf::from("/dev/rtc0"),
            adjtime: PathBuf::from("/etc/adjtime"),
            chrony_pidfiles: vec![
                PathBuf::from("/run/chrony/chronyd.pid"),
                PathBuf::from("/var/run/chronyd.pid"),
            ],
            chronyc: "chronyc".to_string(),
            hwclock: "hwclock".to_string(),
            command_timeout: Duration::from_secs(10),
        }
    }
}

impl RealClock {
    fn pidfile_names_live_chronyd(&self) -> bool {
        self.chrony_pidfiles.iter().any(|p| {
            let Ok(text) = std::fs::read_to_string(p) else {
                return false;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                return false;
            };
            // A stale pid file whose pid was reused by something else does not count.
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "chronyd")
        })
    }
}

impl ClockSystem for RealClock {
    async fn chrony_running(&self) -> bool {
        if self.pidfile_names_live_chronyd() {
            return true;
        }
        // No pid file where we looked: ask chronyd itself. Not installed or not answering = no.
        let argv = [self.chronyc.clone(), "-n".into(), "tracking".into()];
        cmd::run(&argv, &RunOpts::with_timeout(Duration::from_secs(3)))
            .await
            .is_ok()
    }

    fn rtc_scale(&self) -> Result<RtcScale, ClockError> {
        match std::fs::read_to_string(&self.adjtime) {
            Ok(text) => Ok(rtc::parse_adjtime(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RtcScale::Utc),
            Err(source) => Err(ClockError::Adjtime {
                path: self.adjtime.clone(),
                source,
            }),
        }
    }

    fn read_rtc(&self) -> Result<SystemTime, ClockError> {
        rtc::read_device(&self.rtc_device, true).map_err(ClockError::Rtc)
    }

    fn set_system_time(&self, t: SystemTime) -> Result<(), ClockError> {
        use nix::sys::time::TimeSpec;
        use nix::time::{ClockId, clock_settime};
        let since = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ClockError::SetTime(nix::Error::EINVAL))?;
        clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from_duration(since))
            .map_err(ClockError::SetTime)
    }

    async fn chronyc_makestep(&self) -> Result<(), ClockError> {
        let argv = [self.chronyc.clone(), "makestep".into()];
        cmd::run(&argv, &RunOpts::with_timeout(self.command_timeout)).await?;
        Ok(())
    }

    async fn hwclock_hctosys(&self) -> Result<(), ClockError> {
        let argv = [
            self.hwclock.clone(),
            "--hctosys".into(),
            "-u".into(),
            "--noadjfile".into(),
        ];
        cmd::run(&argv, &RunOpts::with_timeout(self.command_timeout)).await?;
        Ok(())
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    //! The real implementation's read-only parts. Nothing here sets the clock or runs hwclock.
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gce-clock-skew-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn adjtime_file_missing_means_utc_local_means_local() {
        let dir = scratch("adjtime");
        let mut clock = RealClock {
            adjtime: dir.join("adjtime"),
            ..RealClock::default()
        };
        assert_eq!(clock.rtc_scale().unwrap(), RtcScale::Utc);
        std::fs::write(&clock.adjtime, "0.0 0 0.0\n0\nLOCAL\n").unwrap();
        assert_eq!(clock.rtc_scale().unwrap(), RtcScale::Local);
        clock.adjtime = dir.clone(); // a directory: unreadable, so an error, not a guess
        assert!(clock.rtc_scale().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn chrony_is_detected_by_a_live_pidfile_named_chronyd() {
        let dir = scratch("chrony");
        let pidfile = dir.join("chronyd.pid");
        let clock = RealClock {
            chrony_pidfiles: vec![pidfile.clone()],
            chronyc: dir.join("no-chronyc").to_string_lossy().into_owned(),
            ..RealClock::default()
        };
        assert!(!clock.chrony_running().await, "no pid file, no chronyc");
        // A stale pid file naming some other live process does not count.
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert!(!clock.chrony_running().await);
        // A process whose name is chronyd does (a copy of sleep, so nothing real runs).
        let fake = dir.join("chronyd");
        std::fs::copy("/bin/sleep", &fake).unwrap();
        let mut child = std::process::Command::new(&fake).arg("10").spawn().unwrap();
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        // Between fork and exec the child still carries our name.
        let comm = format!("/proc/{}/comm", child.id());
        for _ in 0..200 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "chronyd") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let running = clock.chrony_running().await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(running);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
