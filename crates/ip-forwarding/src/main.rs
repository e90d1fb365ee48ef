//! `gce-ip-forwarding-daemon`: parse the command line, load config and logging, then run the
//! [`Forwarder`] against `instance/network-interfaces/` until SIGTERM.
//!
//! TEMPORARY: a thin loop with the same pieces as `gce_agent::daemon::run` (watcher in its own
//! task, READY after the first apply or a grace period, STATUS=, SIGHUP reload, --once), until
//! that module is exported; then this file becomes a call to it.

use anyhow::Context;
use clap::Parser;
use gce_agent::config::Config;
use gce_agent::signals::{Signal, Signals};
use gce_agent::{CommonArgs, InstanceLock, notify};
use gce_ip_forwarding::{Forwarder, Netlink, WATCH_PATH, options_from_config};
use gce_metadata::{Client, ClientOptions, NetworkInterface, Snapshot, Watcher, WatcherOptions};
use std::process::ExitCode;
use std::time::Duration;
use tracing::{error, info, warn};

const NAME: &str = "gce-ip-forwarding-daemon";
const READY_GRACE: Duration = Duration::from_secs(20);

/// Keeps local routes for forwarded IPs, alias ranges and target-instance IPs in step with the
/// GCE metadata server.
#[derive(Debug, Parser)]
#[command(name = NAME, version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.common)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &CommonArgs) -> Config {
    let (config, warnings) = Config::load(&args.config_paths());
    let level = args.effective_log_level(&config);
    if let Err(e) = gce_agent::logging::init(NAME, &level) {
        eprintln!("{NAME}: logging could not be initialised: {e}");
    }
    for w in warnings {
        warn!("configuration: {w}");
    }
    config
}

async fn run(args: CommonArgs) -> anyhow::Result<()> {
    let mut config = start(&args);
    if !config.daemons.network_daemon {
        info!("disabled by [Daemons] network_daemon = false; exiting");
        return Ok(());
    }
    let _lock = InstanceLock::acquire(&args.lock_path(NAME))?;
    let base = config.metadata_base_url();
    let client = Client::new(&base, ClientOptions::default()).context("metadata client")?;
    let kernel = Netlink::open().context("netlink")?;
    let mut fwd = Forwarder::new(kernel, options_from_config(&config.ip_forwarding));
    info!(METADATA = %base, WATCH = WATCH_PATH, "{NAME} {} starting", env!("CARGO_PKG_VERSION"));

    let (tx, mut rx) = tokio::sync::watch::channel::<Option<Snapshot<Vec<NetworkInterface>>>>(None);
    let mut watcher = Watcher::new(client, WATCH_PATH, WatcherOptions::default());
    let poller = tokio::spawn(async move {
        loop {
            let snap = watcher.next::<Vec<NetworkInterface>>().await;
            if tx.send(Some(snap)).is_err() {
                return;
            }
        }
    });
    let _poller = AbortOnDrop(poller);
    let mut signals = Signals::new().context("installing signal handlers")?;
    let _watchdog = notify::spawn_watchdog().map(AbortOnDrop);
    let mut ready = false;
    let grace = tokio::time::sleep(READY_GRACE);
    tokio::pin!(grace);

    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("metadata watcher stopped");
                }
                let Some(snap) = rx.borrow_and_update().clone() else { continue };
                match fwd.apply(snap.value).await {
                    Ok(out) => {
                        notify::status(&out.status());
                        if !ready {
                            ready = true;
                            notify::ready();
                            info!(ETAG = %snap.etag, "first snapshot applied: {}", out.status());
                        }
                    }
                    Err(e) => error!(ETAG = %snap.etag, "applying metadata failed, will retry on the next change or kernel event: {e}"),
                }
                if args.once {
                    return Ok(());
                }
            }
            () = fwd.changed() => match fwd.reconcile().await {
                Ok(out) => notify::status(&out.status()),
                Err(e) => error!("repairing routes after a kernel change failed: {e}"),
            },
            () = &mut grace, if !ready => {
                ready = true;
                warn!("no metadata snapshot within {READY_GRACE:?}; reporting ready and continuing to retry");
                notify::status("waiting for the metadata server");
                notify::ready();
            }
            sig = signals.recv() => match sig {
                Signal::Terminate => {
                    info!("{NAME} stopping");
                    notify::stopping();
                    return Ok(());
                }
                Signal::Reload => {
                    notify::reloading();
                    let (new, warnings) = Config::load(&args.config_paths());
                    for w in warnings {
                        warn!("configuration: {w}");
                    }
                    if new.metadata_base_url() != config.metadata_base_url() {
                        warn!("the metadata server address changed; it takes effect on restart");
                    }
                    fwd.set_options(options_from_config(&new.ip_forwarding));
                    config = new;
                    if let Err(e) = fwd.reconcile().await {
                        error!("reconciling after reload failed: {e}");
                    }
                    info!("configuration reloaded");
                    notify::ready();
                }
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
