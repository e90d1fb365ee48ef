//! The drift-token rule and the choice of how to step (SPEC §3, issue 4), and the daemon service.
//!
//! - The first token seen after start-up is only recorded: we cannot know whether the clock was
//!   already corrected for it (boot sets the clock from the RTC anyway).
//! - A later, different token means a live migration or host clock event: step the clock.
//! - How: if chronyd runs, `chronyc makestep` (stepping behind its back would make it fight us);
//!   else, only when the RTC keeps UTC, set the time from the RTC (read directly, `hwclock` as
//!   fallback). An RTC in local time is refused: we cannot know its zone offset reliably.

use std::time::{Instant, SystemTime};

use gce_agent::msgid;
use gce_metadata::Snapshot;
use tracing::{debug, error, info, warn};

use crate::rtc::{RtcScale, format_utc};
use crate::system::ClockSystem;

/// The watched leaf; with `alt=json` it is a JSON string.
pub const WATCH_PATH: &str = "instance/virtual-clock/drift-token";

/// What a new token means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    First,
    Same,
    Changed,
}

pub fn classify(last: Option<&str>, token: &str) -> TokenChange {
    match last {
        None => TokenChange::First,
        Some(l) if l == token => TokenChange::Same,
        Some(_) => TokenChange::Changed,
    }
}

/// What to do about a token. Pure: the decision table of the issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Record,
    Nothing,
    ChronyMakestep,
    /// Set the system time from the RTC (direct read, `hwclock` if that fails).
    StepFromRtc,
    RefuseLocalRtc,
    /// `/etc/adjtime` could not be read: we do not guess.
    RefuseUnknownRtc(String),
}

pub fn decide(
    change: &TokenChange,
    chrony_running: bool,
    scale: Result<RtcScale, String>,
) -> Action {
    match change {
        TokenChange::First => Action::Record,
        TokenChange::Same => Action::Nothing,
        TokenChange::Changed if chrony_running => Action::ChronyMakestep,
        TokenChange::Changed => match scale {
            Ok(RtcScale::Utc) => Action::StepFromRtc,
            Ok(RtcScale::Local) => Action::RefuseLocalRtc,
            Err(e) => Action::RefuseUnknownRtc(e),
        },
    }
}

/// How the clock was actually stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Chrony,
    Rtc,
    Hwclock,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Chrony => "chronyc makestep",
            Method::Rtc => "the RTC",
            Method::Hwclock => "hwclock --hctosys",
        }
    }
}

/// The result of one token, also the `STATUS=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    Unchanged,
    Stepped { method: Method, offset_ms: i64 },
    Refused(String),
    Failed(String),
    Disabled,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Recorded => f.write_str("watching the drift token"),
            Outcome::Unchanged => f.write_str("drift token unchanged"),
            Outcome::Stepped { method, offset_ms } => {
                write!(f, "clock stepped by {offset_ms} ms via {}", method.as_str())
            }
            Outcome::Refused(why) => write!(f, "clock not stepped: {why}"),
            Outcome::Failed(why) => write!(f, "clock step failed: {why}"),
            Outcome::Disabled => f.write_str("disabled by [Daemons] clock_skew_daemon"),
        }
    }
}

/// `a - b` in milliseconds, signed.
pub fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The clock-skew service: remembers the last token and steps on change.
pub struct ClockSkew<C> {
    sys: C,
    last: Option<String>,
    enabled: bool,
    warned_local: bool,
}

impl<C: ClockSystem> ClockSkew<C> {
    pub fn new(sys: C, enabled: bool) -> Self {
        ClockSkew {
            sys,
            last: None,
            enabled,
            warned_local: false,
        }
    }

    pub fn system(&self) -> &C {
        &self.sys
    }

    /// Handle one drift-token value.
    pub async fn on_token(&mut self, token: &str) -> Outcome {
        if !self.enabled {
            return Outcome::Disabled;
        }
        let change = classify(self.last.as_deref(), token);
        let previous = self.last.replace(token.to_string());
        let chrony = change == TokenChange::Changed && self.sys.chrony_running().await;
        let scale = if change == TokenChange::Changed && !chrony {
            self.sys.rtc_scale().map_err(|e| e.to_string())
        } else {
            Ok(RtcScale::Utc)
        };
        let from = previous.as_deref().unwrap_or("");
        match decide(&change, chrony, scale) {
            Action::Record => {
                info!(DRIFT_TOKEN = %token, "drift token is {token:?}; stepping the clock when it changes");
                Outcome::Recorded
            }
            Action::Nothing => Outcome::Unchanged,
            Action::RefuseLocalRtc => {
                let why = "the RTC keeps local time (/etc/adjtime says LOCAL)".to_string();
                if !self.warned_local {
                    warn!(DRIFT_TOKEN = %token, "drift token changed but not stepping the clock: {why}");
                    self.warned_local = true;
                } else {
                    debug!("drift token changed; still not stepping: {why}");
                }
                Outcome::Refused(why)
            }
            Action::RefuseUnknownRtc(why) => {
                error!(DRIFT_TOKEN = %token, "drift token changed but not stepping the clock: {why}");
                Outcome::Refused(why)
            }
            Action::ChronyMakestep => {
                let r = self.measured(|s| s.chronyc_makestep()).await;
                self.report(from, token, Method::Chrony, r)
            }
            Action::StepFromRtc => {
                let before = self.sys.now();
                match self.sys.read_rtc() {
                    Ok(rtc) => {
                        let offset = signed_ms(rtc, before);
                        let r = self
                            .sys
                            .set_system_time(rtc)
                            .map(|()| (offset, before, rtc));
                        self.report(from, token, Method::Rtc, r)
                    }
                    Err(e) => {
                        warn!("{e}; falling back to hwclock");
                        let r = self.measured(|s| s.hwclock_hctosys()).await;
                        self.report(from, token, Method::Hwclock, r)
                    }
                }
            }
        }
    }

    /// Run a step we cannot see inside and measure the jump of the wall clock against the
    /// monotonic clock: the correction is wall delta minus elapsed time.
    async fn measured<'a, F, Fut>(
        &'a self,
        step: F,
    ) -> Result<(i64, SystemTime, SystemTime), crate::system::ClockError>
    where
        F: FnOnce(&'a C) -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::system::ClockError>>,
    {
        let before = self.sys.now();
        let mono = Instant::now();
        step(&self.sys).await?;
        let after = self.sys.now();
        let offset = signed_ms(after, before) - mono.elapsed().as_millis() as i64;
        Ok((offset, before, after))
    }

    fn report(
        &self,
        from: &str,
        token: &str,
        method: Method,
        r: Result<(i64, SystemTime, SystemTime), crate::system::ClockError>,
    ) -> Outcome {
        match r {
            Ok((offset_ms, old, new)) => {
                info!(
                    MESSAGE_ID = msgid::CLOCK_STEPPED,
                    OFFSET_MS = offset_ms,
                    DRIFT_TOKEN = %token,
                    "drift token changed ({from:?} -> {token:?}): stepped the system clock by {offset_ms} ms via {} ({} -> {})",
                    method.as_str(),
                    format_utc(old),
                    format_utc(new),
                );
                Outcome::Stepped { method, offset_ms }
            }
            Err(e) => {
                error!(DRIFT_TOKEN = %token, "drift token changed but stepping the clock via {} failed: {e}", method.as_str());
                Outcome::Failed(e.to_string())
            }
        }
    }
}

impl<C: ClockSystem> gce_agent::daemon::Service for ClockSkew<C> {
    type Snapshot = String;

    fn watch_path(&self) -> String {
        WATCH_PATH.to_string()
    }

    async fn apply(&mut self, snap: &Snapshot<String>) -> anyhow::Result<String> {
        Ok(self.on_token(&snap.value).await.to_string())
    }

    async fn reload(&mut self, config: &gce_agent::Config) {
        self.enabled = config.daemons.clock_skew_daemon;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::ClockError;
    use std::sync::Mutex;
    use std::time::Duration;

    /// What the fake was asked to do.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Makestep,
        SetTime,
        Hwclock,
    }

    /// A recording fake machine whose wall clock is `real now + shift`; steps change the shift.
    struct FakeClock {
        chrony: bool,
        scale: Result<RtcScale, String>,
        /// RTC minus wall clock, or an error.
        rtc_ahead: Result<Duration, String>,
        /// What makestep / hwclock do to the clock.
        jump: Duration,
        shift: Mutex<Duration>,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeClock {
        fn new() -> Self {
            FakeClock {
                chrony: false,
                scale: Ok(RtcScale::Utc),
                rtc_ahead: Ok(Duration::from_secs(2)),
                jump: Duration::from_secs(3),
                shift: Mutex::new(Duration::ZERO),
                calls: Mutex::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn step(&self, call: Call, by: Duration) {
            self.calls.lock().unwrap().push(call);
            *self.shift.lock().unwrap() += by;
        }
    }

    impl ClockSystem for FakeClock {
        async fn chrony_running(&self) -> bool {
            self.chrony
        }
        fn rtc_scale(&self) -> Result<RtcScale, ClockError> {
            self.scale.clone().map_err(ClockError::Rtc)
        }
        fn read_rtc(&self) -> Result<SystemTime, ClockError> {
            match &self.rtc_ahead {
                Ok(d) => Ok(self.now() + *d),
                Err(e) => Err(ClockError::Rtc(e.clone())),
            }
        }
        fn set_system_time(&self, t: SystemTime) -> Result<(), ClockError> {
            let by = t.duration_since(self.now()).unwrap_or_default();
            self.step(Call::SetTime, by);
            Ok(())
        }
        async fn chronyc_makestep(&self) -> Result<(), ClockError> {
            self.step(Call::Makestep, self.jump);
            Ok(())
        }
        async fn hwclock_hctosys(&self) -> Result<(), ClockError> {
            self.step(Call::Hwclock, self.jump);
            Ok(())
        }
        fn now(&self) -> SystemTime {
            SystemTime::now() + *self.shift.lock().unwrap()
        }
    }

    #[test]
    fn decision_table() {
        use Action::*;
        use TokenChange::*;
        let utc = || Ok(RtcScale::Utc);
        type Row = (
            &'static str,
            TokenChange,
            bool,
            Result<RtcScale, String>,
            Action,
        );
        let rows: Vec<Row> = vec![
            ("first token is only recorded", First, true, utc(), Record),
            ("same token does nothing", Same, false, utc(), Nothing),
            (
                "new token, RTC in UTC: step from the RTC",
                Changed,
                false,
                utc(),
                StepFromRtc,
            ),
            (
                "new token, chrony running: ask chrony",
                Changed,
                true,
                Ok(RtcScale::Local),
                ChronyMakestep,
            ),
            (
                "new token, RTC in local time: refuse",
                Changed,
                false,
                Ok(RtcScale::Local),
                RefuseLocalRtc,
            ),
            (
                "new token, adjtime unreadable: refuse",
                Changed,
                false,
                Err("EACCES".into()),
                RefuseUnknownRtc("EACCES".into()),
            ),
        ];
        for (name, change, chrony, scale, want) in rows {
            assert_eq!(decide(&change, chrony, scale), want, "{name}");
        }
        assert_eq!(classify(None, "0"), First);
        assert_eq!(classify(Some("0"), "0"), Same);
        assert_eq!(classify(Some("0"), "1"), Changed);
    }

    /// Feed `tokens` to a service over `fake`; return the outcomes and the recorded calls.
    async fn feed(fake: FakeClock, tokens: &[&str]) -> (Vec<Outcome>, Vec<Call>) {
        let mut svc = ClockSkew::new(fake, true);
        let mut out = Vec::new();
        for t in tokens {
            out.push(svc.on_token(t).await);
        }
        (out, svc.system().calls())
    }

    fn approx(o: &Outcome, method: Method, ms: i64) -> bool {
        matches!(o, Outcome::Stepped { method: m, offset_ms } if *m == method && (offset_ms - ms).abs() < 200)
    }

    #[tokio::test]
    async fn effects_per_row_of_the_table() {
        // New token, RTC in UTC: the time is set from the RTC, offset = RTC - wall clock.
        let (out, calls) = feed(FakeClock::new(), &["0", "0", "1"]).await;
        assert_eq!(out[..2], [Outcome::Recorded, Outcome::Unchanged]);
        assert!(approx(&out[2], Method::Rtc, 2000), "{out:?}");
        assert_eq!(calls, [Call::SetTime]);

        // chrony present: makestep, never touch the clock ourselves; the jump is measured.
        let fake = FakeClock {
            chrony: true,
            ..FakeClock::new()
        };
        let (out, calls) = feed(fake, &["a", "b"]).await;
        assert!(approx(&out[1], Method::Chrony, 3000), "{out:?}");
        assert_eq!(calls, [Call::Makestep]);

        // RTC in local time: refused, every time, nothing called.
        let fake = FakeClock {
            scale: Ok(RtcScale::Local),
            ..FakeClock::new()
        };
        let (out, calls) = feed(fake, &["a", "b", "c"]).await;
        assert!(matches!(out[1], Outcome::Refused(_)) && matches!(out[2], Outcome::Refused(_)));
        assert!(calls.is_empty());

        // RTC unreadable: hwclock fallback.
        let fake = FakeClock {
            rtc_ahead: Err("EBUSY".into()),
            ..FakeClock::new()
        };
        let (out, calls) = feed(fake, &["a", "b"]).await;
        assert!(approx(&out[1], Method::Hwclock, 3000), "{out:?}");
        assert_eq!(calls, [Call::Hwclock]);

        // Disabled by config: nothing at all.
        let mut svc = ClockSkew::new(FakeClock::new(), false);
        assert_eq!(svc.on_token("a").await, Outcome::Disabled);
        assert_eq!(svc.on_token("b").await, Outcome::Disabled);
        assert!(svc.system().calls().is_empty());
    }

    #[test]
    fn signed_offsets() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(signed_ms(t + Duration::from_millis(1500), t), 1500);
        assert_eq!(signed_ms(t, t + Duration::from_millis(1500)), -1500);
    }

    /// End to end with the metadata emulator: the real watcher long-polls the leaf, the service
    /// over the fake machine steps exactly once per change and never for the first token.
    #[tokio::test]
    async fn watcher_and_service_step_once_per_token_change() {
        use gce_metadata::{Client, Watcher, WatcherOptions, client::base_url_for_host};
        let emu = gce_metadata_emulator::Emulator::with_default_doc()
            .start("127.0.0.1:0")
            .await
            .unwrap();
        let md = emu.handle();
        let client =
            Client::new(&base_url_for_host(&emu.metadata_host()), Default::default()).unwrap();
        let opts = WatcherOptions {
            floor: Duration::from_millis(10),
            ..WatcherOptions::default()
        };
        let mut watcher = Watcher::new(client, WATCH_PATH, opts);
        let mut svc = ClockSkew::new(FakeClock::new(), true);

        let snap = watcher.next::<String>().await;
        assert_eq!(snap.value, "0");
        assert_eq!(svc.on_token(&snap.value).await, Outcome::Recorded);

        for (i, token) in ["5", "6", "7"].iter().enumerate() {
            md.set(
                "/instance/virtualClock/driftToken",
                serde_json::json!(token),
            );
            let snap = tokio::time::timeout(Duration::from_secs(5), watcher.next::<String>())
                .await
                .expect("watcher saw the change");
            assert_eq!(snap.value, *token);
            let out = svc.on_token(&snap.value).await;
            assert!(
                matches!(
                    out,
                    Outcome::Stepped {
                        method: Method::Rtc,
                        ..
                    }
                ),
                "{out:?}"
            );
            assert_eq!(svc.system().calls().len(), i + 1);
        }
        // An unrelated change elsewhere does not wake the leaf watcher.
        md.set_instance_attribute("foo", "bar");
        let quiet =
            tokio::time::timeout(Duration::from_millis(500), watcher.next::<String>()).await;
        assert!(
            quiet.is_err(),
            "watcher yielded without a token change: {quiet:?}"
        );
        assert_eq!(svc.system().calls().len(), 3);
    }
}
