//! The long-poll watcher: `?recursive=true&alt=json&wait_for_change=true&last_etag=E&timeout_sec=N`
//! on one subtree, yielding a snapshot only when the ETag changes.
//!
//! The promise (issue 9 §2): once the server answers again after an outage of any kind — 5xx or
//! 429 answers, refused connections, dropped connections, a server that accepts and never
//! answers — the next change is delivered within about a second, while the outage costs at most
//! about one request a second, one log line when it starts and one when it ends. How:
//!
//! - **During an outage** no long poll is sent (it could hang on a half-dead server): short
//!   non-waiting GETs of the same path, each bounded by `probe_timeout` (1 s), the first after
//!   250 ms (live migration answers 503 for about a second), then one a second (start to start,
//!   +0–25 % jitter so a fleet does not retry in step). The first answer ends the outage: a new
//!   ETag is delivered at once; the same ETag resumes the long poll at once. So after the server
//!   is back, the next change arrives within 1.25 s plus a round trip.
//! - **A hung long poll** cannot be told from a legitimate wait, so while one is outstanding a
//!   non-waiting probe of the same path goes out every `probe_every` (5 s). Its answer's ETag is
//!   compared with ours (the body is not even read when they match): a new ETag is delivered at
//!   once and the long poll abandoned; no answer within `probe_timeout` abandons the long poll
//!   and starts the outage schedule above. The bound this gives: a hang of 5 s or more is always
//!   seen, and the rule above holds after it; a shorter hang that swallowed the long poll
//!   without meeting a probe delays a change by at most `probe_every` plus a round trip. The
//!   cost in normal operation: one header-only request per 5 s per daemon.
//! - **Refusals** (a 404 for a deleted key, 403, an answer without the flavor header) are not
//!   outages: the server answers and says no. They back off exponentially to 30 s.
//! - A server that answers at once with an unchanged ETag (or garbage) meets a floor on the time
//!   between requests, so it cannot make us spin; a server that answers probes but fails every
//!   long poll is asked at most once a second.
//! - Content that does not decode is logged once, its ETag remembered so we wait for the next
//!   change, and nothing is yielded: the caller keeps its last good state.

use crate::client::{Client, Response, decode};
use crate::error::Error;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

/// Retry schedule after failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First retry: short, because live-migration 503s last about a second.
    pub first: Duration,
    /// Steady interval while the server is down or busy: politeness to a link-local server.
    pub max: Duration,
    /// Cap for refusals (the server answers, but no): 404, 403, no flavor header.
    pub refusal_max: Duration,
    /// Fraction by which each delay is stretched at random (0.0..=1.0), so a fleet does not
    /// retry in step. Only ever stretched: the schedule never asks more often than it says.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(1),
            refusal_max: Duration::from_secs(30),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay, start to start, before retry number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32, refusal: bool) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let cap = if refusal { self.refusal_max } else { self.max };
        self.first.saturating_mul(1u32 << exp).min(cap)
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
    /// While a long poll is outstanding, a non-waiting probe of the same path this often
    /// (at least every 100 ms; `Duration::MAX` turns probing off).
    pub probe_every: Duration,
    /// Bound on every non-waiting request (probes and the requests of the outage schedule).
    /// Also how long a long poll must hold after an outage before the outage counts as over.
    pub probe_timeout: Duration,
    pub backoff: Backoff,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        WatcherOptions {
            timeout_sec: 60,
            client_slack: Duration::from_secs(10),
            floor: Duration::from_secs(1),
            probe_every: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
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

/// What the watcher asks of the server: the [`Client`], or a scripted fake in unit tests.
pub trait Source {
    /// GET `path` within `timeout`; `None` when the answer's ETag equals `unless_etag`.
    fn fetch(
        &self,
        path: &str,
        timeout: Duration,
        unless_etag: Option<&str>,
    ) -> impl Future<Output = Result<Option<Response>, Error>>;

    /// The full URL of `path`, for messages.
    fn url(&self, path: &str) -> String;
}

impl Source for Client {
    async fn fetch(
        &self,
        path: &str,
        timeout: Duration,
        unless_etag: Option<&str>,
    ) -> Result<Option<Response>, Error> {
        match unless_etag {
            Some(etag) => self.get_unless_etag(path, timeout, etag).await,
            None => self.get_with_timeout(path, timeout).await.map(Some),
        }
    }

    fn url(&self, path: &str) -> String {
        Client::url(self, path)
    }
}

/// "Never", for a probe interval too long to add to an instant.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// One failure episode, from the first failed request to the first that holds again.
#[derive(Debug)]
struct Outage {
    since: Instant,
    failures: u32,
    kind: &'static str,
    /// The latest failure was a refusal, not an outage.
    refusal: bool,
    /// A non-waiting request was answered; the episode ends once a long poll holds too.
    answered: bool,
    /// Long polls that failed right after a non-waiting request was answered.
    relapses: u32,
}

/// How a guarded long poll ended.
enum LongPoll {
    Answer(Result<Option<Response>, Error>, Instant),
    ProbeChanged(Response),
    ProbeFailed(Error, Instant),
}

pub struct Watcher<S = Client> {
    source: S,
    path: String,
    etag: String,
    opts: WatcherOptions,
    outage: Option<Outage>,
    next_attempt: Instant,
    rng: u64,
}

impl<S: Source> Watcher<S> {
    /// Watch `path` (a directory such as `""` for the root, `instance/network-interfaces/`, or a
    /// leaf such as `instance/virtual-clock/drift-token`).
    pub fn new(source: S, path: &str, opts: WatcherOptions) -> Watcher<S> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        Watcher {
            source,
            path: path.to_string(),
            etag: "NONE".to_string(),
            opts,
            outage: None,
            next_attempt: Instant::now(),
            rng: seed | 1,
        }
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    fn sep(&self) -> char {
        if self.path.contains('?') { '&' } else { '?' }
    }

    fn request_path(&self) -> String {
        format!(
            "{}{}recursive=true&alt=json&wait_for_change=true&last_etag={}&timeout_sec={}",
            self.path,
            self.sep(),
            self.etag,
            self.opts.timeout_sec
        )
    }

    /// The same subtree, same rendering, without waiting: its ETag is the long poll's.
    fn probe_path(&self) -> String {
        format!("{}{}recursive=true&alt=json", self.path, self.sep())
    }

    fn long_poll_bound(&self) -> Duration {
        Duration::from_secs(self.opts.timeout_sec) + self.opts.client_slack
    }

    /// One long-poll request. Errors are returned as they are (no backoff, no logging).
    pub async fn poll_once<T: DeserializeOwned>(&mut self) -> Result<Poll<T>, Error> {
        let path = self.request_path();
        let resp = self
            .source
            .fetch(&path, self.long_poll_bound(), Some(&self.etag))
            .await?;
        Ok(self.take(resp, &path))
    }

    /// Turn an answer into a [`Poll`]; a new ETag becomes current.
    fn take<T: DeserializeOwned>(&mut self, resp: Option<Response>, path: &str) -> Poll<T> {
        let Some(resp) = resp else {
            return Poll::Unchanged;
        };
        let etag = resp.etag.clone().unwrap_or_default();
        if !etag.is_empty() && etag == self.etag {
            return Poll::Unchanged;
        }
        match decode::<T>(&self.source.url(path), &resp.body) {
            Ok(value) => {
                self.etag = etag.clone();
                Poll::Changed(Snapshot { etag, value })
            }
            Err(e) => {
                self.etag = etag;
                Poll::Undecodable(e)
            }
        }
    }

    /// Wait until the subtree has new, decodable content. Never returns an error: failures are
    /// retried on the schedule of the module doc and logged once per episode.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Snapshot<T> {
        loop {
            if self.outage.as_ref().is_some_and(|o| !o.answered) {
                sleep_until(self.next_attempt).await;
                let started = Instant::now();
                let path = self.probe_path();
                match self
                    .source
                    .fetch(&path, self.opts.probe_timeout, Some(&self.etag))
                    .await
                {
                    Err(e) => self.failed(e, started),
                    Ok(resp) => {
                        let new = resp.as_ref().is_some_and(|r| has_new_etag(r, &self.etag));
                        if new {
                            self.end_outage();
                            if let Some(s) = self.deliver(resp, &path) {
                                return s;
                            }
                        } else if let Some(o) = &mut self.outage {
                            // Answering, nothing new: resume the long poll now.
                            o.answered = true;
                        }
                    }
                }
                continue;
            }
            match self.guarded_long_poll().await {
                LongPoll::Answer(Ok(resp), started) => {
                    self.end_outage();
                    let path = self.request_path();
                    if let Some(s) = self.deliver(resp, &path) {
                        return s;
                    }
                    sleep_until(started + self.opts.floor).await;
                }
                // A long poll may have been out for a minute: its retry counts from its failure.
                LongPoll::Answer(Err(e), _) => self.failed(e, Instant::now()),
                LongPoll::ProbeFailed(e, started) => self.failed(e, started),
                LongPoll::ProbeChanged(resp) => {
                    let path = self.probe_path();
                    if let Some(s) = self.deliver(Some(resp), &path) {
                        return s;
                    }
                }
            }
        }
    }

    /// A snapshot to return, or `None` after logging an undecodable one.
    fn deliver<T: DeserializeOwned>(
        &mut self,
        resp: Option<Response>,
        path: &str,
    ) -> Option<Snapshot<T>> {
        match self.take(resp, path) {
            Poll::Changed(s) => Some(s),
            Poll::Unchanged => None,
            Poll::Undecodable(e) => {
                error!(ETAG = %self.etag, "ignoring metadata snapshot, keeping the last good state: {e}");
                None
            }
        }
    }

    /// A long poll, with a probe every `probe_every` while it is outstanding.
    async fn guarded_long_poll(&mut self) -> LongPoll {
        let lp_path = self.request_path();
        let probe_path = self.probe_path();
        let bound = self.long_poll_bound();
        let started = Instant::now();
        let Watcher {
            source,
            path,
            etag,
            opts,
            outage,
            ..
        } = self;
        let lp = source.fetch(&lp_path, bound, Some(etag.as_str()));
        tokio::pin!(lp);
        let every = opts.probe_every.max(Duration::from_millis(100));
        let after = |t: Instant| t.checked_add(every).unwrap_or_else(|| t + YEAR);
        let mut next_probe = after(started);
        let settled_at = started + opts.probe_timeout;
        loop {
            let settling = outage.as_ref().is_some_and(|o| o.answered);
            tokio::select! {
                r = &mut lp => return LongPoll::Answer(r, started),
                () = sleep_until(settled_at), if settling => end_outage(outage, path),
                () = sleep_until(next_probe) => {
                    let probe_started = Instant::now();
                    let probe = source.fetch(&probe_path, opts.probe_timeout, Some(etag.as_str()));
                    tokio::pin!(probe);
                    // The long poll keeps being served while the probe is out.
                    tokio::select! {
                        r = &mut lp => return LongPoll::Answer(r, started),
                        p = &mut probe => match p {
                            Ok(Some(resp)) if has_new_etag(&resp, etag) => {
                                return LongPoll::ProbeChanged(resp);
                            }
                            Ok(_) => next_probe = after(probe_started),
                            Err(e) => return LongPoll::ProbeFailed(e, probe_started),
                        },
                    }
                }
            }
        }
    }

    /// Record a failed request that started at `started` and schedule the next attempt.
    fn failed(&mut self, e: Error, started: Instant) {
        let refusal = !e.is_outage();
        let o = match &mut self.outage {
            None => {
                if refusal {
                    warn!(PATH = %self.path, ERROR_KIND = e.kind(), "metadata request refused, retrying with backoff: {e}");
                } else {
                    warn!(PATH = %self.path, ERROR_KIND = e.kind(), "metadata server not answering, retrying about once a second: {e}");
                }
                self.outage.insert(Outage {
                    since: Instant::now(),
                    failures: 1,
                    kind: e.kind(),
                    refusal,
                    answered: false,
                    relapses: 0,
                })
            }
            Some(o) => {
                o.failures += 1;
                if o.answered {
                    o.answered = false;
                    o.relapses += 1;
                }
                o.kind = e.kind();
                o.refusal = refusal;
                debug!(PATH = %self.path, "metadata request failed again ({}): {e}", o.failures);
                o
            }
        };
        let mut delay = self.opts.backoff.delay(o.failures, o.refusal);
        if o.relapses > 0 {
            // Plain GETs are answered but long polls fail: each round costs two requests.
            delay = delay.max(self.opts.backoff.max * 2);
        }
        let delay = self.jittered(delay);
        self.next_attempt = started + delay;
    }

    fn end_outage(&mut self) {
        end_outage(&mut self.outage, &self.path);
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        // xorshift64: enough randomness to de-synchronise a fleet, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0,1)
        let j = self.opts.backoff.jitter.clamp(0.0, 1.0);
        d.mul_f64(1.0 + j * unit)
    }
}

fn has_new_etag(resp: &Response, current: &str) -> bool {
    resp.etag
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != current)
}

fn end_outage(outage: &mut Option<Outage>, path: &str) {
    if let Some(o) = outage.take() {
        let secs = o.since.elapsed().as_secs_f64();
        info!(
            PATH = %path,
            "metadata server answering again after {} failed request(s) over {secs:.1} s ({})",
            o.failures,
            o.kind
        );
    }
}

#[cfg(test)]
mod tests;
