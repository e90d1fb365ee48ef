//! `gce-ip-forwarding-daemon`: parse the command line, load config and logging, then run the
//! [`Forwarder`] in the shared daemon loop until SIGTERM (or after one snapshot with `--once`).

use anyhow::Context;
use gce_agent::CommonArgs;
use gce_agent::daemon;
use gce_ip_forwarding::{Forwarder, Netlink, options_from_config};
use std::process::ExitCode;
use tracing::{error, info};

const NAME: &str = "gce-ip-forwarding-daemon";

const ABOUT: &str = "Keeps local routes for forwarded IPs, alias ranges and target-instance IPs in step with GCE metadata";

fn main() -> ExitCode {
    let args = CommonArgs::from_env(NAME, ABOUT);
    let config = daemon::start(NAME, &args);
    if !config.daemons.network_daemon {
        info!("disabled by [Daemons] network_daemon = false; exiting");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(daemon::run(NAME, &args, config, |config, _client| {
        let kernel = Netlink::open().context("netlink")?;
        Ok(Forwarder::new(
            kernel,
            options_from_config(&config.ip_forwarding),
        ))
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
