//! What the runner reports, one value per log line. Every event is logged through `tracing`
//! (with `SCRIPT=<key>`), and also handed to an optional [`Sink`] so tests — and any embedding
//! program — can see exactly which lines were produced, in order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Exited(code) => write!(f, "exited with status {code}"),
            Termination::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(*sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "was killed by signal {sig} ({name})")
            }
        }
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line the script printed: logged as `<key>: <line>`.
    Output {
        key: String,
        stream: Stream,
        line: String,
    },
    /// The script's main process ended.
    Finished {
        key: String,
        termination: Termination,
        elapsed: Duration,
    },
    /// The budget ran out; the script's process group is being killed.
    TimedOut { key: String, after: Duration },
    /// The script exited but something it started still holds its output open.
    Orphans { key: String },
    /// The script could not be fetched; other scripts still run.
    DownloadFailed { key: String, error: String },
    /// The script could not be started at all.
    StartFailed { key: String, error: String },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Output { key, .. }
            | Event::Finished { key, .. }
            | Event::TimedOut { key, .. }
            | Event::Orphans { key }
            | Event::DownloadFailed { key, .. }
            | Event::StartFailed { key, .. } => key,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Output { key, line, .. } => write!(f, "{key}: {line}"),
            Event::Finished {
                key, termination, ..
            } => write!(f, "{key} {termination}"),
            Event::TimedOut { key, after } => write!(
                f,
                "{key} still running after its {}s budget: killing its process group",
                after.as_secs()
            ),
            Event::Orphans { key } => write!(
                f,
                "{key} left background processes holding its output open; no longer reading it"
            ),
            Event::DownloadFailed { key, error } => {
                write!(f, "{key}: could not download the script: {error}")
            }
            Event::StartFailed { key, error } => {
                write!(f, "{key}: could not run the script: {error}")
            }
        }
    }
}

/// Receives every event after it is logged.
pub type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Log `event` and pass it to `sink`.
pub fn emit(sink: Option<&Sink>, event: Event) {
    let key = event.key();
    match &event {
        Event::Output { .. } => tracing::info!(SCRIPT = %key, "{event}"),
        Event::Finished {
            termination: Termination::Exited(0),
            ..
        } => tracing::info!(
            SCRIPT = %key,
            MESSAGE_ID = gce_agent::msgid::SCRIPT_FINISHED,
            "{event}"
        ),
        Event::Finished { .. } => tracing::warn!(
            SCRIPT = %key,
            MESSAGE_ID = gce_agent::msgid::SCRIPT_FINISHED,
            "{event}"
        ),
        Event::TimedOut { .. } | Event::Orphans { .. } => tracing::warn!(SCRIPT = %key, "{event}"),
        Event::DownloadFailed { .. } | Event::StartFailed { .. } => {
            tracing::error!(SCRIPT = %key, "{event}")
        }
    }
    if let Some(sink) = sink {
        sink(&event);
    }
}
