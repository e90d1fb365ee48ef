//! systemd readiness and watchdog notifications (`Type=notify`, `WatchdogSec=`).
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, and failures are logged at debug only: a
//! daemon must keep working when started by hand, in a container, or under another init.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

/// `READY=1` sent and no reload or stop begun since.
static SETTLED: AtomicBool = AtomicBool::new(false);

/// Whether this daemon has told its service manager it is ready and is not reloading or
/// stopping: while it is not, systemd holds back jobs of units ordered after ours (their reload
/// of `ssh.service`, for one), so waiting for such a job would stall.
pub fn settled() -> bool {
    SETTLED.load(Ordering::Relaxed)
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// `READY=1`: initial setup is done (config loaded, first snapshot applied or attempted).
pub fn ready() {
    send(&[NotifyState::Ready]);
    SETTLED.store(true, Ordering::Relaxed);
}

/// `STATUS=…`: one line shown by `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    SETTLED.store(false, Ordering::Relaxed);
    send(&[NotifyState::Stopping]);
}

/// `RELOADING=1` plus the `MONOTONIC_USEC` systemd ≥ 253 requires with it; send [`ready`] when
/// the reload is done.
pub fn reloading() {
    SETTLED.store(false, Ordering::Relaxed);
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::debug!("reading CLOCK_MONOTONIC failed: {e}");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// The watchdog period, if systemd asked for one (`WATCHDOG_USEC`, for our pid).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// When the watchdog is enabled, spawn a task on the current tokio runtime that sends
/// `WATCHDOG=1` every half period (systemd's recommendation) and return its handle.
///
/// This proves only that the runtime is alive, not that the poll loop makes progress; daemons
/// that want the stronger guarantee should ping from their loop instead.
pub fn spawn_watchdog() -> Option<JoinHandle<()>> {
    let period = watchdog_interval()?;
    let every = (period / 2).max(Duration::from_millis(1));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_notify_socket() {
        let _env = crate::test_env_lock();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // SAFETY: env mutation is serialized by the test env lock.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        ready();
        status("x");
        stopping();
        reloading();
        let got = [recv(&sock), recv(&sock), recv(&sock), recv(&sock)];
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert_eq!(got[0], "READY=1\n");
        assert_eq!(got[1], "STATUS=x\n");
        assert_eq!(got[2], "STOPPING=1\n");
        assert!(
            got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{}",
            got[3]
        );
        // Without the socket nothing happens and nothing fails.
        ready();
    }

    #[test]
    fn watchdog_pings_at_half_period() {
        // A sync test with its own runtime, so the (std) env lock is not held across an await
        // of a runtime shared with other tests.
        let _env = crate::test_env_lock();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        // SAFETY: env mutation is serialized by the test env lock.
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
            std::env::set_var("WATCHDOG_USEC", "200000");
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let enabled = rt.block_on(async {
            let Some(handle) = spawn_watchdog() else {
                return false;
            };
            // The first ping is immediate, the second after half the 200 ms period.
            tokio::time::sleep(Duration::from_millis(150)).await;
            handle.abort();
            true
        });
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        assert!(enabled, "watchdog not enabled");
        let mut pings = Vec::new();
        sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            pings.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        // Two expected (0 ms and 100 ms); a third is possible if this machine is very loaded.
        assert!(pings.len() >= 2, "{pings:?}");
        assert!(pings.iter().all(|p| p == "WATCHDOG=1\n"), "{pings:?}");
        assert_eq!(watchdog_interval(), None);
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored() {
        let _env = crate::test_env_lock();
        unsafe {
            std::env::set_var("WATCHDOG_USEC", "200000");
            std::env::set_var("WATCHDOG_PID", "1");
        }
        let got = watchdog_interval();
        unsafe {
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        // pid 1 is never the test process (unless the test runs as init, which it does not).
        assert_eq!(got, None);
    }
}
