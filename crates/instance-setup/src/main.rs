//! `gce-instance-setup [--config P] [-v]`: once per boot, before sshd: per-instance SSH host
//! keys (published to `hostkeys/` guest attributes), hostname and /etc/hosts. Exit status 1 when
//! the metadata server gave no usable answer in time or a configured host key could not be made
//! (both are retried at the next boot), else 0.

use anyhow::Context;
use gce_agent::{CommonArgs, InstanceLock, LockError};
use gce_metadata::ClientOptions;

const NAME: &str = "gce-instance-setup";
const ABOUT: &str =
    "Per-instance SSH host keys, hostname and /etc/hosts from GCE metadata (once per boot)";

fn main() -> std::process::ExitCode {
    let cli = CommonArgs::from_env(NAME, ABOUT);
    let config = gce_agent::daemon::start(NAME, &cli);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli, &config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: &CommonArgs, config: &gce_agent::Config) -> anyhow::Result<()> {
    // Two runs at once (the unit and an admin) would race over the same keys.
    let _lock = match InstanceLock::acquire(&cli.lock_path("instance-setup")) {
        Ok(lock) => Some(lock),
        Err(e @ LockError::Held { .. }) => return Err(e).context("not running twice"),
        Err(e) => {
            tracing::debug!("running without a lock: {e}");
            None
        }
    };
    // IPv4 or IPv6 by reachability, or the override (the one place every binary gets it from).
    let client = config
        .metadata_client(ClientOptions::default())
        .context("metadata client")?;
    let opts = gce_instance_setup::Options::from_config(config);
    tracing::debug!(
        METADATA = %config.metadata_endpoint(),
        "{NAME} {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let report = gce_instance_setup::run(&client, &opts).await?;
    tracing::info!(
        "instance setup done: {} key(s) made{}, {} published, hostname {}, /etc/hosts {}",
        report.generated.len(),
        if report.id_recorded {
            ", id recorded"
        } else {
            ""
        },
        report.published.len(),
        if report.hostname_changed {
            "changed"
        } else {
            "unchanged"
        },
        if report.hosts_changed {
            "changed"
        } else {
            "unchanged"
        },
    );
    Ok(())
}
