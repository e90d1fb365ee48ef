//! Shared by the namespaced end-to-end tests and the latency benchmark: a private network
//! namespace per test (never the host's), veth NICs carrying metadata MACs, the emulator on the
//! namespace's loopback, and the forwarder running on its own thread and runtime like the daemon.
//!
//! Network namespaces are per thread on Linux: `unshare(CLONE_NEWNET)` moves only the calling
//! thread, and threads and processes it starts inherit the namespace. So each test runs on a
//! fresh thread that unshares first; everything it opens or spawns lives in the namespace.
#![allow(dead_code)]

use gce_ip_forwarding::{Forwarder, Netlink, Options};
use gce_metadata::{Client, ClientOptions, NetworkInterface, Watcher, WatcherOptions};
use std::collections::BTreeSet;
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

pub const MAC0: &str = "42:01:0a:8a:00:07";
pub const MAC1: &str = "42:01:0a:8a:00:08";

/// False (with a printed reason) when namespaces cannot be created.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root to create a private network namespace");
        return false;
    }
    true
}

/// Run `body` on a new thread inside a new network namespace whose loopback is up.
pub fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        assert_ne!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            std::fs::read_link("/proc/self/ns/net").unwrap(),
            "refusing to run outside a private network namespace"
        );
        ip(&["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Run the real `ip` (in the calling thread's namespace); panics on failure; returns stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A NIC: a veth pair `name`/`name`p, `name` carrying `mac`, both up (no `dummy` on this kernel).
pub fn add_nic(name: &str, mac: &str) {
    let peer = format!("{name}p");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", name, "address", mac]);
    ip(&["link", "set", name, "up"]);
    ip(&["link", "set", &peer, "up"]);
}

/// The forwarder on its own thread and runtime (as the daemon would run), in the caller's
/// namespace, watching `metadata_host`. Stops when dropped.
pub struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn start(metadata_host: &str, opts: Options) -> Daemon {
        let base = gce_metadata::client::base_url_for_host(metadata_host);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = Client::new(&base, ClientOptions::default()).unwrap();
                let mut watcher = Watcher::new(
                    client,
                    gce_ip_forwarding::WATCH_PATH,
                    WatcherOptions::default(),
                );
                let mut fwd = Forwarder::new(Netlink::open().unwrap(), opts);
                // The shape of gce_agent::daemon::run, minus systemd and signals.
                loop {
                    tokio::select! {
                        snap = watcher.next::<Vec<NetworkInterface>>() => {
                            fwd.apply(snap.value).await.unwrap();
                        }
                        () = fwd.changed() => {
                            fwd.reconcile().await.unwrap();
                        }
                        _ = &mut stopped => return,
                    }
                }
            });
        });
        Daemon {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Our routes as `DST dev NAME`, read through netlink.
pub async fn routes(nl: &Netlink, proto: u8) -> BTreeSet<String> {
    let links = nl.links().await.unwrap();
    let name = |i: u32| {
        links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
            .unwrap_or_default()
    };
    nl.routes(proto)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{} dev {}", r.dst, name(r.ifindex)))
        .collect()
}

pub fn set(want: &[&str]) -> BTreeSet<String> {
    want.iter().map(|s| s.to_string()).collect()
}

/// Poll until our routes equal `want`; returns how long it took. Panics after `limit`.
pub async fn wait_routes(nl: &Netlink, want: &[&str], limit: Duration) -> Duration {
    let want = set(want);
    let start = Instant::now();
    loop {
        let got = routes(nl, 66).await;
        if got == want {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("after {limit:?} our routes are {got:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
