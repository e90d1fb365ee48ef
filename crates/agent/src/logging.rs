//! Logging setup shared by every daemon: native journald fields under systemd, plain stderr
//! otherwise, one verbosity knob, and the fixed `MESSAGE_ID`s of security-relevant events.
//!
//! Under journald, structured fields (`USER`, `ETAG`, `MESSAGE_ID`, …) become real journal fields
//! so `journalctl USER=alice` and `journalctl MESSAGE_ID=…` work.

use std::path::Path;
use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Fixed journal `MESSAGE_ID`s (128-bit, generated once) so admins can filter security events:
/// `journalctl MESSAGE_ID=<id>`. Log them as `tracing::info!(MESSAGE_ID = msgid::KEY_ADDED, …)`.
pub mod msgid {
    pub const KEY_ADDED: &str = "a1b3c310b00d7141e807923aa0855211";
    pub const KEY_REMOVED: &str = "ca69b75ecf58fe572a6673caa3f0fce2";
    pub const USER_CREATED: &str = "a30e9afa45bc3e4560cf61ec86e3008a";
    pub const USER_REMOVED: &str = "7c1645cdbb25e8a6d006a9c6d3f20a37";
    pub const ROUTE_ADDED: &str = "0934711d713d51715ff9f3e4fb5a2021";
    pub const ROUTE_REMOVED: &str = "ca45f7d8c78f482ac582ea7ecf964731";
    pub const CLOCK_STEPPED: &str = "a56833e774dcf4bbd5e410a5bec11431";
    pub const SCRIPT_FINISHED: &str = "8d2cf955bdfa22bc6bcba41aa7dfbdf4";
    pub const HOST_KEY_GENERATED: &str = "5ea7fe584c6d3a5f88c5117f3a65c9f4";
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Errors from [`init`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A global subscriber was already installed (init called twice, or by a test harness).
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogBackend {
    Journald,
    Stderr,
}

/// Parse a level name (`error`, `warn`/`warning`, `info`, `debug`, `trace`, `off`),
/// case-insensitive.
pub fn parse_level(level: &str) -> Option<LevelFilter> {
    match level.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

/// The filter for `level`, unless `rust_log` (the `RUST_LOG` value) is set and non-empty, which
/// wins. Returns human-readable warnings for values that could not be used (the caller logs them
/// once the subscriber exists).
pub fn build_filter(level: &str, rust_log: Option<&str>) -> (Targets, Vec<String>) {
    let mut warnings = Vec::new();
    if let Some(spec) = rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        match Targets::from_str(spec) {
            Ok(targets) => return (targets, warnings),
            Err(e) => warnings.push(format!("ignoring RUST_LOG={spec:?}: {e}")),
        }
    }
    let default = parse_level(level).unwrap_or_else(|| {
        warnings.push(format!("unknown log level {level:?}; using info"));
        LevelFilter::INFO
    });
    // The level speaks of our own crates; the HTTP and netlink libraries below us would drown a
    // debug log in connection-pool chatter, so they stay at warn unless RUST_LOG asks for them.
    let ours = Targets::new().with_default(default.min(LevelFilter::WARN));
    let ours = OUR_CRATES
        .iter()
        .fold(ours, |t, c| t.with_target(*c, default));
    (ours, warnings)
}

/// Crates whose events follow the configured level (binaries log under their crate's target).
const OUR_CRATES: &[&str] = &[
    "gce_metadata",
    "gce_agent",
    "gce_accounts",
    "gce_accounts_daemon",
    "gce_oslogin",
    "gce_authorized_keys",
    "gce_clock_skew",
    "gce_clock_skew_daemon",
    "gce_ip_forwarding",
    "gce_ip_forwarding_daemon",
    "gce_scripts",
    "gce_metadata_script_runner",
    "gce_metadata_emulator",
    "gce_ssh",
    "gce_instance_setup",
];

/// True when stderr is connected to the journal and the journal socket exists.
fn journal_available() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() && Path::new(JOURNAL_SOCKET).exists()
}

/// Install the global subscriber. `ident` is the syslog identifier; `level` comes from
/// `[Core] log_level` or the command line (`RUST_LOG` overrides it).
pub fn init(ident: &str, level: &str) -> Result<LogBackend, LogError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, mut warnings) = build_filter(level, rust_log.as_deref());
    // systemd timestamps every line itself; ours would only duplicate them.
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();

    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let mut backend = LogBackend::Stderr;
    let mut layer: Option<Boxed> = None;
    if journal_available() {
        match tracing_journald::Layer::new() {
            Ok(journald) => {
                backend = LogBackend::Journald;
                layer = Some(Box::new(
                    journald
                        .with_syslog_identifier(ident.to_string())
                        // Without this every field gets an `F_` prefix and MESSAGE_ID is lost.
                        .with_field_prefix(None)
                        // The crate maps INFO to notice (5) by default; keep syslog's meaning.
                        .with_priority_mappings(tracing_journald::PriorityMappings {
                            error: tracing_journald::Priority::Error,
                            warn: tracing_journald::Priority::Warning,
                            info: tracing_journald::Priority::Informational,
                            debug: tracing_journald::Priority::Debug,
                            trace: tracing_journald::Priority::Debug,
                        }),
                ));
            }
            Err(e) => warnings.push(format!("journald unavailable ({e}); logging to stderr")),
        }
    }
    let layer: Boxed = match layer {
        Some(l) => l,
        None => {
            // ANSI colour codes would end up raw in the journal or a log file.
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false);
            if under_systemd {
                Box::new(fmt.without_time())
            } else {
                Box::new(fmt)
            }
        }
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LogError::AlreadyInstalled(e.to_string()))?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_128_bit_lowercase_hex() {
        let ids = [
            msgid::KEY_ADDED,
            msgid::KEY_REMOVED,
            msgid::USER_CREATED,
            msgid::USER_REMOVED,
            msgid::ROUTE_ADDED,
            msgid::ROUTE_REMOVED,
            msgid::CLOCK_STEPPED,
            msgid::SCRIPT_FINISHED,
            msgid::HOST_KEY_GENERATED,
        ];
        for id in ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn levels_parse_and_bad_level_falls_back_to_info_with_warning() {
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::WARN));
        assert_eq!(parse_level(" debug "), Some(LevelFilter::DEBUG));
        let (t, w) = build_filter("loud", None);
        assert!(t.would_enable("gce_accounts", &tracing::Level::INFO));
        assert!(!t.would_enable("gce_accounts", &tracing::Level::DEBUG));
        assert_eq!(w.len(), 1);
        let (t, w) = build_filter("trace", None);
        assert!(t.would_enable("gce_agent::daemon", &tracing::Level::TRACE));
        // Libraries below us stay at warn unless RUST_LOG asks for them.
        assert!(!t.would_enable("hyper_util::client", &tracing::Level::DEBUG));
        assert!(t.would_enable("hyper_util::client", &tracing::Level::WARN));
        assert!(w.is_empty());
    }

    #[test]
    fn rust_log_overrides_level_and_bad_rust_log_is_ignored() {
        let (t, w) = build_filter("info", Some("warn,gce_accounts=debug"));
        assert!(w.is_empty());
        assert_eq!(t.default_level(), Some(LevelFilter::WARN));
        assert!(t.would_enable("gce_accounts", &tracing::Level::DEBUG));
        assert!(!t.would_enable("gce_other", &tracing::Level::INFO));
        let (t, w) = build_filter("debug", Some("=!bad[")); // not a directive
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(t.would_enable("gce_metadata", &tracing::Level::DEBUG));
        let (t, _) = build_filter("debug", Some("  "));
        assert!(t.would_enable("gce_metadata", &tracing::Level::DEBUG));
    }
}
