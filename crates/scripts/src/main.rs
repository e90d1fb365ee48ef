//! `gce-metadata-script-runner [--config P] [-v] startup|shutdown`: one-shot, no long poll.
//! Exit status 0 when it ran what it found (failing scripts included), 1 when it could not run.

use anyhow::Context;
use clap::Parser;
use gce_agent::{Config, InstanceLock, LockError};
use gce_scripts::RunnerOptions;
use gce_scripts::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gce-metadata-script-runner: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, warnings) = Config::load(&cli.common.config_paths());
    let ident = "gce-metadata-script-runner";
    if let Err(e) = gce_agent::logging::init(ident, &cli.common.effective_log_level(&config)) {
        eprintln!("{ident}: {e}");
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    // One runner per kind at a time; a lock we cannot even create (unprivileged run) is no
    // reason not to run.
    let lock_name = format!("metadata-script-runner-{}", cli.kind);
    let _lock = match InstanceLock::acquire(&cli.common.lock_path(&lock_name)) {
        Ok(lock) => Some(lock),
        Err(e @ LockError::Held { .. }) => return Err(e).context("not running the scripts twice"),
        Err(e) => {
            tracing::debug!("running without a lock: {e}");
            None
        }
    };
    let client = config
        .metadata_client(gce_metadata::ClientOptions::default())
        .with_context(|| format!("metadata server address {}", config.metadata_endpoint()))?;
    let opts = RunnerOptions::from_config(cli.kind, &config);
    gce_scripts::run(client, &opts, None).await?;
    Ok(())
}
