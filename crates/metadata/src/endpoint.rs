//! Where the metadata server is. GCE serves it at `169.254.169.254` and, for instances whose
//! stack is IPv6-only, at `[fd20:ce::254]` (SPEC §1); on such instances the IPv4 address is
//! unreachable. Without an override the client decides between them by IP, never by name (the
//! name was spoofed in the wild): IPv4 where a TCP connection to it succeeds, IPv6 where it does
//! not.
//!
//! The decision is a TCP connect race in the manner of Happy Eyeballs (RFC 8305): IPv4 first,
//! IPv6 after a short head start or as soon as IPv4 fails, first connection wins. It is made
//! with the first request (when IPv4 answers it costs one handshake on a link-local address),
//! made again when a request to the chosen address fails at the connection level (refused,
//! unreachable, timed out, dropped: the network changed under us) unless another decision was
//! made since that request started, and, while the fallback is in use, every few minutes, so
//! IPv4 is taken back once it returns. Callers pace their requests (the watcher asks at most
//! about once a second during an outage), so the races are paced too.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

/// GCE's metadata server over IPv4.
pub const GCE_IPV4: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));

/// GCE's metadata server on IPv6-only instances, `[fd20:ce::254]:80`.
pub const GCE_IPV6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
    80,
    0,
    0,
));

/// The path every base URL ends with.
pub const API_PATH: &str = "/computeMetadata/v1/";

/// How a client finds the metadata server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One base URL, used as it is: an override (`GCE_METADATA_HOST`, `[Core] metadata_host`)
    /// or a test server.
    Fixed(String),
    /// Candidate addresses, most preferred first: the first that accepts a TCP connection is
    /// used, and the choice is revisited as the module doc says.
    Auto(Vec<SocketAddr>),
}

impl Endpoint {
    /// GCE's server: `169.254.169.254` where reachable, else `[fd20:ce::254]`.
    pub fn gce() -> Endpoint {
        Endpoint::Auto(vec![GCE_IPV4, GCE_IPV6])
    }

    /// An override in the `GCE_METADATA_HOST` form: `host`, `host:port`, `[v6]`, `[v6]:port` (a
    /// bare IPv6 address is bracketed), with a pasted `http://` or trailing `/` forgiven.
    pub fn from_host(host: &str) -> Endpoint {
        Endpoint::Fixed(crate::client::base_url_for_host(host))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Fixed(url) => f.write_str(url),
            Endpoint::Auto(addrs) => {
                f.write_str("auto:")?;
                for (i, a) in addrs.iter().enumerate() {
                    let sep = if i == 0 { " " } else { " or " };
                    write!(f, "{sep}{}", base_url(*a))?;
                }
                Ok(())
            }
        }
    }
}

/// `http://ADDR/computeMetadata/v1/`, with `:80` left out as a browser would.
pub fn base_url(addr: SocketAddr) -> String {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    if addr.port() == 80 {
        format!("http://{host}{API_PATH}")
    } else {
        format!("http://{host}:{}{API_PATH}", addr.port())
    }
}

/// Timing of the decision.
#[derive(Debug, Clone)]
pub struct SelectOptions {
    /// How long the preferred address may take to connect before the next one is also tried.
    pub head_start: Duration,
    /// Bound on each connection attempt of the race.
    pub attempt_timeout: Duration,
    /// While on a fallback address, look again after this long (the preferred may be back).
    pub recheck_fallback: Duration,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            head_start: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(1),
            recheck_fallback: Duration::from_secs(300),
        }
    }
}

struct Decision {
    chosen: Option<usize>,
    at: Option<Instant>,
}

/// The shared state of an [`Endpoint::Auto`] client; every clone of the client sees one choice.
pub(crate) struct Selector {
    addrs: Vec<SocketAddr>,
    urls: Vec<String>,
    opts: SelectOptions,
    decision: Mutex<Decision>,
    deciding: tokio::sync::Mutex<()>,
}

impl Selector {
    pub(crate) fn new(addrs: Vec<SocketAddr>, opts: SelectOptions) -> Selector {
        let urls = addrs.iter().map(|a| base_url(*a)).collect();
        Selector {
            addrs,
            urls,
            opts,
            decision: Mutex::new(Decision {
                chosen: None,
                at: None,
            }),
            deciding: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Decision> {
        self.decision.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The base URL of candidate `i`.
    pub(crate) fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// The chosen candidate, or the preferred one before any decision (for messages).
    pub(crate) fn current_or_preferred(&self) -> usize {
        self.lock().chosen.unwrap_or(0)
    }

    /// The candidate to send a request to, deciding first when nothing is decided yet or a
    /// fallback is due for a second look.
    pub(crate) async fn current(&self) -> usize {
        if let Some(i) = self.fresh() {
            return i;
        }
        self.decide(None).await
    }

    fn fresh(&self) -> Option<usize> {
        let d = self.lock();
        let i = d.chosen?;
        let stale = i != 0
            && d.at
                .is_none_or(|at| at.elapsed() >= self.opts.recheck_fallback);
        (!stale).then_some(i)
    }

    /// Decide (again). `failed` names the candidate a request that started at the given
    /// instant just failed on: the decision is skipped when one was made since that request
    /// started (concurrent failures cost one race, not one each).
    pub(crate) async fn decide(&self, failed: Option<(usize, Instant)>) -> usize {
        let _one_at_a_time = self.deciding.lock().await;
        {
            let d = self.lock();
            match (failed, d.chosen) {
                (Some((f, _)), Some(c)) if c != f => return c,
                (Some((_, started)), Some(c)) if d.at.is_some_and(|at| at >= started) => {
                    return c;
                }
                _ => {}
            }
        }
        if let (None, Some(i)) = (failed, self.fresh()) {
            return i;
        }
        let winner = race(&self.addrs, self.opts.head_start, self.opts.attempt_timeout).await;
        let mut d = self.lock();
        let previous = d.chosen;
        let chosen = winner.or(previous).unwrap_or(0);
        d.chosen = Some(chosen);
        d.at = Some(Instant::now());
        drop(d);
        match winner {
            Some(i) if previous != Some(i) => {
                let skipped: Vec<&str> = self.urls[..i].iter().map(String::as_str).collect();
                if skipped.is_empty() {
                    info!(METADATA = %self.urls[i], "metadata server reachable at {}", self.urls[i]);
                } else {
                    info!(
                        METADATA = %self.urls[i],
                        "metadata server reachable at {}; not reachable at {}",
                        self.urls[i],
                        skipped.join(", ")
                    );
                }
            }
            Some(_) => {}
            None => debug!(
                "no metadata server address accepts connections; keeping {}",
                self.urls[chosen]
            ),
        }
        chosen
    }
}

type Attempt = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Connect to `addrs` in order, each starting `head_start` after the previous or as soon as the
/// previous failed; the index of the first to connect, or `None` when none did.
pub(crate) async fn race(
    addrs: &[SocketAddr],
    head_start: Duration,
    timeout: Duration,
) -> Option<usize> {
    let attempt = |a: SocketAddr| -> Attempt {
        Box::pin(async move {
            matches!(
                tokio::time::timeout(timeout, TcpStream::connect(a)).await,
                Ok(Ok(_))
            )
        })
    };
    let mut running: Vec<(usize, Attempt)> = Vec::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    loop {
        if next < addrs.len() && (running.is_empty() || Instant::now() >= next_at) {
            running.push((next, attempt(addrs[next])));
            next += 1;
            next_at = Instant::now() + head_start;
            continue;
        }
        if running.is_empty() {
            return None;
        }
        let mut timer = (next < addrs.len()).then(|| Box::pin(tokio::time::sleep_until(next_at)));
        let done = std::future::poll_fn(|cx| {
            for (k, (_, f)) in running.iter_mut().enumerate() {
                if let Poll::Ready(ok) = f.as_mut().poll(cx) {
                    return Poll::Ready(Some((k, ok)));
                }
            }
            if let Some(t) = timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if let Some((k, ok)) = done {
            let (i, _) = running.remove(k);
            if ok {
                return Some(i);
            }
            // A failure hands over at once: no reason to wait out the head start.
            next_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_bracket_ipv6_and_omit_port_80() {
        assert_eq!(
            base_url(GCE_IPV4),
            "http://169.254.169.254/computeMetadata/v1/"
        );
        assert_eq!(
            base_url(GCE_IPV6),
            "http://[fd20:ce::254]/computeMetadata/v1/"
        );
        assert_eq!(
            base_url("[::1]:8080".parse().unwrap()),
            "http://[::1]:8080/computeMetadata/v1/"
        );
        assert_eq!(
            Endpoint::gce().to_string(),
            "auto: http://169.254.169.254/computeMetadata/v1/ or http://[fd20:ce::254]/computeMetadata/v1/"
        );
    }

    #[test]
    fn overrides_accept_every_host_form() {
        let rows = [
            (
                "169.254.169.254",
                "http://169.254.169.254/computeMetadata/v1/",
            ),
            (
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/computeMetadata/v1/",
            ),
            (
                "[fd20:ce::254]",
                "http://[fd20:ce::254]/computeMetadata/v1/",
            ),
            (
                "[fd20:ce::254]:8080",
                "http://[fd20:ce::254]:8080/computeMetadata/v1/",
            ),
            ("fd20:ce::254", "http://[fd20:ce::254]/computeMetadata/v1/"),
            (" http://[::1]:81/ ", "http://[::1]:81/computeMetadata/v1/"),
            (
                "metadata.google.internal",
                "http://metadata.google.internal/computeMetadata/v1/",
            ),
        ];
        for (host, url) in rows {
            assert_eq!(
                Endpoint::from_host(host),
                Endpoint::Fixed(url.into()),
                "{host}"
            );
        }
    }

    async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// A port nobody listens on (bound, then closed).
    async fn refused() -> SocketAddr {
        listener().await.1
    }

    #[tokio::test]
    async fn the_race_prefers_the_first_address_that_connects() {
        let (_a, a) = listener().await;
        let (_b, b) = listener().await;
        let closed = refused().await;
        let t = Duration::from_secs(1);
        let h = Duration::from_millis(250);
        assert_eq!(race(&[a, b], h, t).await, Some(0), "both answer: the first");
        let started = std::time::Instant::now();
        assert_eq!(race(&[closed, b], h, t).await, Some(1), "first refused");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "a refusal hands over without waiting out the head start"
        );
        assert_eq!(race(&[closed, closed], h, t).await, None);
        assert_eq!(race(&[], h, t).await, None);
    }

    /// A loopback address whose SYNs go unanswered: a listener with a backlog of 0 whose one
    /// slot is taken by a connection nobody accepts (Linux then drops further SYNs).
    async fn silent() -> (tokio::net::TcpListener, TcpStream, SocketAddr) {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = s.listen(0).unwrap();
        let a = l.local_addr().unwrap();
        let filler = TcpStream::connect(a).await.unwrap();
        (l, filler, a)
    }

    #[tokio::test]
    async fn a_silent_preferred_address_costs_only_the_head_start() {
        let (_l, _filler, silent) = silent().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent))
                .await
                .is_err(),
            "the test address must not answer"
        );
        let (_b, b) = listener().await;
        let head = Duration::from_millis(250);
        let started = std::time::Instant::now();
        let won = race(&[silent, b], head, Duration::from_secs(2)).await;
        assert_eq!(won, Some(1));
        let took = started.elapsed();
        assert!(
            took >= head && took < head + Duration::from_millis(200),
            "{took:?}"
        );
    }
}
