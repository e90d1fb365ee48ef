//! gce-accounts-daemon: local users and SSH keys from metadata (see the gce_accounts library).

use gce_accounts::service::{Accounts, Paths};
use gce_agent::{CommonArgs, daemon};
use std::process::ExitCode;

const NAME: &str = "gce-accounts-daemon";

const ABOUT: &str = "Keeps local users and their SSH keys equal to GCE metadata";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = CommonArgs::from_env(NAME, ABOUT);
    let config = daemon::start(NAME, &args);
    if !config.daemons.accounts_daemon {
        tracing::info!("disabled by [Daemons] accounts_daemon = false");
        return ExitCode::SUCCESS;
    }
    match daemon::run(NAME, &args, config, |cfg, client| {
        Ok(Accounts::new(cfg, client, Paths::default()))
    })
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
