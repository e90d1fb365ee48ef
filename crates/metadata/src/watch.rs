//! The long-poll watcher: `?recursive=true&alt=json&wait_for_change=true&last_etag=E&timeout_sec=N`
//! on one subtree, yielding a snapshot only when the ETag changes.
//!
//! What it guards against, each learnt from the agents this project replaces:
//! - errors: exponential backoff with jitter, a fast first retry (live migration answers 503 for
//!   about a second), capped at 30 s;
//! - a server that answers at once with an unchanged ETag (or garbage): a floor on the time between
//!   requests, so it cannot make us spin;
//! - log floods: a failure is logged once when it starts (and when its kind changes) and once when
//!   it clears, never on every retry;
//! - content that does not decode: logged once, the ETag is remembered so we wait for the next
//!   change, and nothing is yielded — the caller keeps its last good state.

use crate::client::{Client, decode};
use crate::error::Error;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Retry schedule after failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First retry: short, because live-migration 503s last about a second.
    pub first: Duration,
    pub max: Duration,
    /// Fraction of each delay that is randomised (0.0..=1.0), so a fleet does not retry in step.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(30),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(1u32 << exp).min(self.max)
    }
}

#[derive(Debug, Clone)]
pub struct WatcherOptions {
    /// `timeout_sec` sent to the server (agents use 60).
    pub timeout_sec: u64,
    /// Added to `timeout_sec` for the client-side bound.
    pub client_slack: Duration,
    /// Least time between the starts of two requests that brought nothing new.
    pub floor: Duration,
    pub backoff: Backoff,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        WatcherOptions {
            timeout_sec: 60,
            client_slack: Duration::from_secs(10),
            floor: Duration::from_secs(1),
            backoff: Backoff::default(),
        }
    }
}

/// A decoded subtree and the ETag it came with.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    pub etag: String,
    pub value: T,
}

/// What one request brought.
#[derive(Debug)]
pub enum Poll<T> {
    Changed(Snapshot<T>),
    Unchanged,
    /// New ETag, but the content did not decode; the ETag is now current.
    Undecodable(Error),
}

pub struct Watcher {
    client: Client,
    path: String,
    etag: String,
    opts: WatcherOptions,
    failing: Option<(&'static str, u32)>,
    rng: u64,
}

impl Watcher {
    /// Watch `path` (a directory such as `""` for the root, `instance/network-interfaces/`, or a
    /// leaf such as `instance/virtual-clock/drift-token`).
    pub fn new(client: Client, path: &str, opts: WatcherOptions) -> Watcher {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        Watcher {
            client,
            path: path.to_string(),
            etag: "NONE".to_string(),
            opts,
            failing: None,
            rng: seed | 1,
        }
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn request_path(&self) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}recursive=true&alt=json&wait_for_change=true&last_etag={}&timeout_sec={}",
            self.path, self.etag, self.opts.timeout_sec
        )
    }

    /// One long-poll request. Errors are returned as they are (no backoff, no logging).
    pub async fn poll_once<T: DeserializeOwned>(&mut self) -> Result<Poll<T>, Error> {
        let bound = Duration::from_secs(self.opts.timeout_sec) + self.opts.client_slack;
        let path = self.request_path();
        let resp = self.client.get_with_timeout(&path, bound).await?;
        let etag = resp.etag.clone().unwrap_or_default();
        if !etag.is_empty() && etag == self.etag {
            return Ok(Poll::Unchanged);
        }
        let url = self.client.url(&path);
        match decode::<T>(&url, &resp.body) {
            Ok(value) => {
                self.etag = etag.clone();
                Ok(Poll::Changed(Snapshot { etag, value }))
            }
            Err(e) => {
                self.etag = etag;
                Ok(Poll::Undecodable(e))
            }
        }
    }

    /// Wait until the subtree has new, decodable content. Never returns an error: failures are
    /// retried with backoff and logged once per episode.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Snapshot<T> {
        loop {
            let started = Instant::now();
            match self.poll_once::<T>().await {
                Ok(poll) => {
                    if let Some((kind, n)) = self.failing.take() {
                        info!(PATH = %self.path, "metadata server answering again after {n} failed request(s) ({kind})");
                    }
                    match poll {
                        Poll::Changed(s) => return s,
                        Poll::Unchanged => {}
                        Poll::Undecodable(e) => {
                            error!(ETAG = %self.etag, "ignoring metadata snapshot, keeping the last good state: {e}");
                        }
                    }
                    self.sleep_floor(started).await;
                }
                Err(e) => {
                    let attempt = match &mut self.failing {
                        Some((kind, n)) if *kind == e.kind() => {
                            *n += 1;
                            *n
                        }
                        _ => {
                            warn!(PATH = %self.path, "metadata request failing, retrying with backoff: {e}");
                            self.failing = Some((e.kind(), 1));
                            1
                        }
                    };
                    let delay = self.jittered(self.opts.backoff.delay(attempt));
                    // Even a fast failure must respect the floor's spirit: the backoff delay is
                    // the floor for errors.
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn sleep_floor(&self, started: Instant) {
        let elapsed = started.elapsed();
        if elapsed < self.opts.floor {
            tokio::time::sleep(self.opts.floor - elapsed).await;
        }
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        // xorshift64: enough randomness to de-synchronise a fleet, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0,1)
        let j = self.opts.backoff.jitter.clamp(0.0, 1.0);
        d.mul_f64(1.0 - j + 2.0 * j * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_fast_first_then_exponential_and_capped() {
        let b = Backoff::default();
        let rows = [
            (1, 250),
            (2, 500),
            (3, 1000),
            (4, 2000),
            (7, 16000),
            (8, 30000),
            (50, 30000),
        ];
        for (attempt, ms) in rows {
            assert_eq!(
                b.delay(attempt),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }
}
