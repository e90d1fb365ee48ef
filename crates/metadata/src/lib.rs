//! Client for the GCE metadata server: a typed model of what the daemons read, a strict HTTP
//! client (by IP — IPv4 or IPv6, chosen by reachability —, no proxy, no redirects, flavor header
//! required both ways, capped bodies) and a long-poll watcher that notices a recovered server
//! within about a second. This crate holds no policy: it reports what metadata says.

pub mod client;
pub mod endpoint;
pub mod error;
pub mod model;
pub mod ready;
pub mod watch;

pub use client::{Client, ClientOptions, DEFAULT_BASE_URL, Response};
pub use endpoint::{Endpoint, GCE_IPV4, GCE_IPV6, SelectOptions};
pub use error::Error;
pub use model::{Instance, NetworkInterface, Project, Root, VirtualClock};
pub use watch::{Backoff, Poll, Snapshot, Source, Watcher, WatcherOptions};
