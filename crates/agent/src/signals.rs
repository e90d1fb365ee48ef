//! Process signals a daemon reacts to, reduced to two intents: stop, or reload the config.
//!
//! SIGTERM (systemd stop) and SIGINT (Ctrl-C when run by hand) mean terminate; SIGHUP means
//! reload (`systemctl reload`, `ExecReload=kill -HUP $MAINPID`).

use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// What the daemon was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
}

/// Installed handlers for SIGTERM, SIGINT and SIGHUP. Create it early in `main` (inside the
/// runtime): from then on those signals no longer kill the process by default.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers. Must be called from within a tokio runtime.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Wait for the next signal. Cancel-safe, so it can sit in a `select!` beside the poll loop.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            // `None` only happens when the runtime's signal driver is gone; stopping is the only
            // sensible reaction.
            r = self.term.recv() => { let _ = r; Signal::Terminate }
            r = self.int.recv() => { let _ = r; Signal::Terminate }
            r = self.hup.recv() => match r {
                Some(()) => Signal::Reload,
                None => Signal::Terminate,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn hup_reloads_term_and_int_terminate() {
        let mut signals = Signals::new().expect("install handlers");
        for (sig, want) in [
            (nix::sys::signal::Signal::SIGHUP, Signal::Reload),
            (nix::sys::signal::Signal::SIGTERM, Signal::Terminate),
            (nix::sys::signal::Signal::SIGINT, Signal::Terminate),
        ] {
            // Handlers are installed, so raising the signal only wakes the stream.
            nix::sys::signal::raise(sig).expect("raise");
            let got = tokio::time::timeout(Duration::from_secs(5), signals.recv())
                .await
                .expect("signal delivered");
            assert_eq!(got, want, "{sig}");
        }
    }
}
