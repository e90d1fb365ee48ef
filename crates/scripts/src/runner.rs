//! One run of `startup` or `shutdown`: read the attributes, pick the scripts, fetch, run each in
//! sequence from a private directory, report. Only "could not run at all" is an error; a failed
//! download or a failing script is reported and the run goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gce_agent::Config;
use gce_agent::fs::WriteOpts;

use crate::event::{Event, Sink, emit};
use crate::exec::{ExecOptions, ExecResult, run_script};
use crate::fetch::{FetchOptions, Fetcher};
use crate::select::{Origin, ScriptKind, Source, has_keys, select};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOptions {
    pub kind: ScriptKind,
    /// `[MetadataScripts] startup` / `shutdown`.
    pub enabled: bool,
    pub exec: ExecOptions,
    pub fetch: FetchOptions,
    /// Parent of the private per-run directory; `None` = `/run` when writable, else `$TMPDIR`.
    pub run_dir: Option<PathBuf>,
    /// Tries for each metadata read before giving up.
    pub metadata_attempts: u32,
    pub metadata_backoff: Duration,
}

impl RunnerOptions {
    pub fn new(kind: ScriptKind) -> Self {
        RunnerOptions {
            kind,
            enabled: true,
            exec: ExecOptions::default(),
            fetch: FetchOptions::default(),
            run_dir: None,
            metadata_attempts: 5,
            metadata_backoff: Duration::from_millis(500),
        }
    }

    /// From `[MetadataScripts]`: `startup`, `shutdown`, `default_shell`, `run_dir`,
    /// `shutdown_timeout_secs` (90), `startup_timeout_secs` (0 = none) and our `gcs_endpoint`.
    pub fn from_config(kind: ScriptKind, config: &Config) -> Self {
        let m = &config.metadata_scripts;
        let mut o = RunnerOptions::new(kind);
        let (enabled, secs) = match kind {
            ScriptKind::Startup => (m.startup, m.startup_timeout_secs),
            ScriptKind::Shutdown => (m.shutdown, m.shutdown_timeout_secs),
        };
        o.enabled = enabled;
        o.exec.shell = m.default_shell.clone();
        o.exec.timeout = (secs > 0).then(|| Duration::from_secs(secs));
        o.run_dir = Some(PathBuf::from(m.run_dir.trim())).filter(|p| !p.as_os_str().is_empty());
        if let Some(ep) = config
            .raw()
            .get("MetadataScripts", "gcs_endpoint")
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            o.fetch.gcs_endpoint = ep.to_string();
        }
        o
    }
}

/// What one script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptReport {
    pub key: String,
    /// `None` when it could not be fetched or started.
    pub result: Option<ExecResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub origin: Origin,
    pub scripts: Vec<ScriptReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    // The cause is part of the message (not a `source`), so `{:#}` does not print it twice.
    #[error("cannot read {what} from the metadata server: {error}")]
    Metadata {
        what: &'static str,
        error: gce_metadata::Error,
    },
    #[error("cannot create a private directory under {}: {error}", dir.display())]
    RunDir { dir: PathBuf, error: nix::Error },
    #[error("{0}")]
    Setup(String),
}

/// Run the scripts of `opts.kind` found in metadata.
pub async fn run(
    client: gce_metadata::Client,
    opts: &RunnerOptions,
    sink: Option<Sink>,
) -> Result<Report, RunError> {
    let kind = opts.kind;
    if !opts.enabled {
        tracing::info!("{kind} scripts are disabled in [MetadataScripts]; nothing to do");
        return Ok(Report {
            origin: Origin::None,
            scripts: Vec::new(),
        });
    }
    let instance = attributes(&client, "instance/attributes/", "instance attributes", opts).await?;
    // The project is read only when the instance leaves the choice to it.
    let project = if has_keys(kind, &instance) {
        BTreeMap::new()
    } else {
        attributes(&client, "project/attributes/", "project attributes", opts).await?
    };
    let (origin, scripts) = select(kind, &instance, &project);
    if scripts.is_empty() {
        tracing::info!("no {kind} scripts in metadata");
        return Ok(Report {
            origin,
            scripts: Vec::new(),
        });
    }
    let names: Vec<&str> = scripts.iter().map(|s| s.key.as_str()).collect();
    tracing::info!(
        "running {kind} scripts from {origin:?} metadata: {}",
        names.join(", ")
    );

    let dir = private_dir(kind, opts.run_dir.as_deref())?;
    let mut fetcher =
        Fetcher::new(client, opts.fetch.clone()).map_err(|e| RunError::Setup(e.to_string()))?;
    let mut reports = Vec::new();
    for script in scripts {
        let key = script.key;
        let content = match script.source {
            Source::Inline(text) => text.into_bytes(),
            Source::Url(url) => match fetcher.fetch(&url, &dir).await {
                Ok(body) => body,
                Err(e) => {
                    emit(
                        sink.as_ref(),
                        Event::DownloadFailed {
                            key: key.clone(),
                            error: e.to_string(),
                        },
                    );
                    reports.push(ScriptReport { key, result: None });
                    continue;
                }
            },
        };
        let file = dir.join(&key);
        let result = match gce_agent::fs::write_atomic(&file, &content, &WriteOpts::new(0o700)) {
            Err(e) => Err(e.to_string()),
            Ok(()) => run_script(&key, &file, &content, &dir, &opts.exec, sink.as_ref())
                .await
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(r) => reports.push(ScriptReport {
                key,
                result: Some(r),
            }),
            Err(error) => {
                emit(
                    sink.as_ref(),
                    Event::StartFailed {
                        key: key.clone(),
                        error,
                    },
                );
                reports.push(ScriptReport { key, result: None });
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!("cannot remove {}: {e}", dir.display());
    }
    tracing::info!("finished running {kind} scripts");
    Ok(Report {
        origin,
        scripts: reports,
    })
}

async fn attributes(
    client: &gce_metadata::Client,
    path: &str,
    what: &'static str,
    opts: &RunnerOptions,
) -> Result<BTreeMap<String, String>, RunError> {
    let query = format!("{path}?recursive=true&alt=json");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.get_json::<BTreeMap<String, String>>(&query).await {
            Ok(map) => return Ok(map),
            // No attributes at all.
            Err(gce_metadata::Error::Status { status: 404, .. }) => return Ok(BTreeMap::new()),
            Err(e) if attempt < opts.metadata_attempts.max(1) => {
                let wait = opts
                    .metadata_backoff
                    .saturating_mul(1 << (attempt - 1).min(10));
                tracing::warn!("reading {what} failed (try {attempt}), retrying in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(RunError::Metadata { what, error }),
        }
    }
}

/// A fresh 0700 directory (mkdtemp) under `parent`; without one, under the first of
/// `/var/lib/google`, `/run`, `$TMPDIR` that is writable and allows execution — Debian mounts
/// `/run` noexec, and a script written there could not be run.
fn private_dir(kind: ScriptKind, parent: Option<&Path>) -> Result<PathBuf, RunError> {
    let usable = |p: &Path| {
        nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
            && nix::sys::statvfs::statvfs(p)
                .is_ok_and(|v| !v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC))
    };
    let parent = match parent {
        Some(p) => p.to_path_buf(),
        None => [PathBuf::from("/var/lib/google"), PathBuf::from("/run")]
            .into_iter()
            .find(|p| usable(p))
            .unwrap_or_else(std::env::temp_dir),
    };
    let template = parent.join(format!("gce-{kind}-scripts.XXXXXX"));
    nix::unistd::mkdtemp(&template).map_err(|error| RunError::RunDir { dir: parent, error })
}
