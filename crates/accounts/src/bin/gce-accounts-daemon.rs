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
        // OS Login (SPEC §10): the same snapshots also switch the host's sshd/NSS/PAM setup.
        let oslogin = gce_oslogin::OsLogin::new(cfg, client.clone(), gce_oslogin::Paths::default());
        let accounts = Accounts::new(cfg, client, Paths::default());
        Ok(gce_oslogin::WithOsLogin::new(accounts, oslogin))
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
