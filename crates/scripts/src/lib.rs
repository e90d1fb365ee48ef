//! `gce-metadata-script-runner startup|shutdown`: fetch the startup or shutdown scripts named in
//! metadata (SPEC §5) and run them in sequence, logging every output line as `<key>: <line>`.
//!
//! - [`select`]: keys, instance-over-project precedence, order (URL script, then inline). Pure.
//! - [`url`]: Cloud Storage URL forms and the configurable endpoint. Pure.
//! - [`fetch`]: downloads with the service-account token, retries, time and size bounds.
//! - [`exec`]: one script in its own process group, streamed output, timeout kill, orphan rule.
//! - [`runner`]: one run from attributes to report.
//! - [`event`]: the log lines, also handed to an injectable sink.
//! - [`cli`]: the command line (shared with the manual page).

pub mod cli;
pub mod event;
pub mod exec;
pub mod fetch;
pub mod runner;
pub mod select;
pub mod url;

pub use event::{Event, Sink, Stream, Termination};
pub use exec::{ExecOptions, ExecResult};
pub use fetch::{FetchError, FetchOptions, Fetcher};
pub use runner::{Report, RunError, RunnerOptions, ScriptReport, run};
pub use select::{Origin, Script, ScriptKind, Source};
