//! gce-accounts-daemon: local users and SSH keys from metadata (see the gce_accounts library).

use clap::Parser;
use gce_accounts::reconcile::{Accounts, Paths};
use gce_agent::{CommonArgs, daemon};
use std::process::ExitCode;

const NAME: &str = "gce-accounts-daemon";

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Keeps local users and their SSH keys equal to GCE metadata")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = daemon::start(NAME, &args.common);
    if !config.daemons.accounts_daemon {
        tracing::info!("disabled by [Daemons] accounts_daemon = false");
        return ExitCode::SUCCESS;
    }
    match daemon::run(NAME, &args.common, config, |cfg, client| {
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
