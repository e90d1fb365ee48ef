//! `gce-clock-skew-daemon`: step the system clock when the metadata drift token changes (a live
//! migration or host clock event, SPEC §3).
//!
//! - [`service`]: the token rule, the decision of how to step (pure) and the daemon service.
//! - [`system`]: the effects behind [`ClockSystem`] (chronyd, RTC, hwclock, `clock_settime`).
//! - [`rtc`]: the RTC read via `RTC_RD_TIME`, calendar arithmetic, `/etc/adjtime`.

pub mod rtc;
pub mod service;
pub mod system;

pub use rtc::RtcScale;
pub use service::{Action, ClockSkew, Method, Outcome, TokenChange, WATCH_PATH, classify, decide};
pub use system::{ClockError, ClockSystem, RealClock};
