//! `gce-clock-skew-daemon`: long-polls the drift token and steps the clock on change.

use gce_agent::CommonArgs;
use gce_clock_skew::{ClockSkew, RealClock};

const NAME: &str = "gce-clock-skew-daemon";

const ABOUT: &str = "Step the system clock when the GCE drift token changes";

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
    let result = rt.block_on(gce_agent::daemon::run(
        NAME,
        &cli,
        config,
        |config, _client| {
            let enabled = config.daemons.clock_skew_daemon;
            if !enabled {
                tracing::info!("[Daemons] clock_skew_daemon is off: watching, never stepping");
            }
            Ok(ClockSkew::new(RealClock::default(), enabled))
        },
    ));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
