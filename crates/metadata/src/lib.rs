//! Client for the GCE metadata server: a typed model of what the daemons read, a strict HTTP
//! client (by IP, no proxy, no redirects, flavor header required both ways, capped bodies) and a
//! long-poll watcher with backoff. This crate holds no policy: it reports what metadata says.

pub mod client;
pub mod error;
pub mod model;
pub mod ready;
pub mod watch;

pub use client::{Client, ClientOptions, DEFAULT_BASE_URL, Response};
pub use error::Error;
pub use model::{Instance, NetworkInterface, Project, Root, VirtualClock};
pub use watch::{Backoff, Poll, Snapshot, Watcher, WatcherOptions};
