//! The reconciler: keeps the last good metadata snapshot and makes the kernel's routes match it,
//! on every snapshot and whenever the kernel tells us something changed under our feet.

use crate::netlink::{Error, Netlink};
use crate::plan::{self, Link, Options, Route};
use gce_agent::msgid;
use gce_metadata::NetworkInterface;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use tracing::{debug, info, warn};

/// What the reconciler needs from the kernel. [`Netlink`] is the real one; unit tests use a
/// recording fake.
pub trait Kernel {
    fn links(&self) -> impl Future<Output = Result<Vec<Link>, Error>>;
    /// Our routes (table local, type local, protocol `proto`).
    fn routes(&self, proto: u8) -> impl Future<Output = Result<BTreeSet<Route>, Error>>;
    fn add(&self, route: &Route, proto: u8) -> impl Future<Output = Result<(), Error>>;
    fn del(&self, route: &Route, proto: u8) -> impl Future<Output = Result<(), Error>>;
    /// Resolves when the kernel state may have drifted from what we set. Cancel-safe.
    fn changed(&mut self, proto: u8) -> impl Future<Output = ()> {
        let _ = proto;
        std::future::pending()
    }
}

impl Kernel for Netlink {
    async fn links(&self) -> Result<Vec<Link>, Error> {
        Netlink::links(self).await
    }
    async fn routes(&self, proto: u8) -> Result<BTreeSet<Route>, Error> {
        Netlink::routes(self, proto).await
    }
    async fn add(&self, route: &Route, proto: u8) -> Result<(), Error> {
        Netlink::add(self, route, proto).await
    }
    async fn del(&self, route: &Route, proto: u8) -> Result<(), Error> {
        Netlink::del(self, route, proto).await
    }
    async fn changed(&mut self, proto: u8) {
        Netlink::changed(self, proto).await
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Routes we want and could place.
    pub routes: usize,
    pub added: usize,
    pub removed: usize,
    /// Adds or deletes the kernel refused (logged).
    pub failed: usize,
    /// Metadata NICs with something to route but no local interface.
    pub missing_nics: usize,
}

impl Outcome {
    /// A one-line summary for systemd's `STATUS=`.
    pub fn status(&self) -> String {
        let mut s = format!(
            "{} local route(s) for forwarded IPs ({} added, {} removed)",
            self.routes, self.added, self.removed
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        if self.missing_nics > 0 {
            s.push_str(&format!(", {} NIC(s) not present", self.missing_nics));
        }
        s
    }
}

/// The daemon's state: options, the last good snapshot, and what was already reported.
pub struct Forwarder<K> {
    kernel: K,
    opts: Options,
    last: Option<Vec<NetworkInterface>>,
    /// Keys of the warnings currently in force, so each is logged once, when it starts.
    warned: BTreeSet<String>,
    /// Routes whose add/delete failed last time, so the failure is logged once.
    failing: BTreeSet<Route>,
}

impl<K: Kernel> Forwarder<K> {
    pub fn new(kernel: K, opts: Options) -> Self {
        Forwarder {
            kernel,
            opts,
            last: None,
            warned: BTreeSet::new(),
            failing: BTreeSet::new(),
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// New options (config reload). Takes effect at the next reconcile. A changed protocol id
    /// leaves the routes of the old id alone: they are no longer ours to judge.
    pub fn set_options(&mut self, opts: Options) {
        self.opts = opts;
    }

    /// Remember `nics` as the last good snapshot and reconcile against it.
    pub async fn apply(&mut self, nics: Vec<NetworkInterface>) -> Result<Outcome, Error> {
        self.last = Some(nics);
        self.reconcile().await
    }

    /// Make the kernel match the last snapshot. Before the first snapshot nothing is touched:
    /// routes left by a previous run stay until metadata says otherwise.
    pub async fn reconcile(&mut self) -> Result<Outcome, Error> {
        let Some(nics) = &self.last else {
            return Ok(Outcome::default());
        };
        let proto = self.opts.proto;
        // Links are re-read every time: NICs can be hot-plugged or renamed.
        let links = self.kernel.links().await?;
        let (desired, warnings) = plan::desired_routes(nics, &links, &self.opts);
        let missing_nics = warnings
            .iter()
            .filter(|w| matches!(w, plan::Warning::NicNotFound { .. }))
            .count();
        self.report(warnings);
        let current = self.kernel.routes(proto).await?;
        let (to_add, to_remove) = plan::diff(&desired, &current);
        let names: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let name = |r: &Route| names.get(&r.ifindex).copied().unwrap_or("?").to_string();

        let mut out = Outcome {
            missing_nics,
            ..Outcome::default()
        };
        // Removals first: the kernel keys IPv4 local routes on (prefix, tos, priority), so a route
        // moving to another NIC must leave before it can be added back.
        for r in &to_remove {
            match self.kernel.del(r, proto).await {
                Ok(()) => {
                    out.removed += 1;
                    self.failing.remove(r);
                    info!(
                        MESSAGE_ID = msgid::ROUTE_REMOVED,
                        ROUTE = %r.dst,
                        INTERFACE = %name(r),
                        "removed local route {} on {}", r.dst, name(r)
                    );
                }
                Err(e) => {
                    out.failed += 1;
                    self.fail(r, &e);
                }
            }
        }
        for r in &to_add {
            match self.kernel.add(r, proto).await {
                Ok(()) => {
                    out.added += 1;
                    self.failing.remove(r);
                    info!(
                        MESSAGE_ID = msgid::ROUTE_ADDED,
                        ROUTE = %r.dst,
                        INTERFACE = %name(r),
                        "added local route {} on {}", r.dst, name(r)
                    );
                }
                Err(e) => {
                    out.failed += 1;
                    self.fail(r, &e);
                }
            }
        }
        out.routes = desired.len() - to_add.len() + out.added;
        Ok(out)
    }

    /// Resolves when the kernel may have lost one of our routes (see [`Kernel::changed`]).
    pub async fn changed(&mut self) {
        let proto = self.opts.proto;
        self.kernel.changed(proto).await
    }

    fn fail(&mut self, r: &Route, e: &Error) {
        if self.failing.insert(*r) {
            warn!(ROUTE = %r.dst, "{e}");
        } else {
            debug!(ROUTE = %r.dst, "still failing: {e}");
        }
    }

    fn report(&mut self, warnings: Vec<plan::Warning>) {
        let mut now = BTreeSet::new();
        for w in warnings {
            let key = w.key();
            if !self.warned.contains(&key) {
                warn!("{w}");
            }
            now.insert(key);
        }
        for gone in self.warned.difference(&now) {
            if let Some(mac) = gone.strip_prefix("missing ") {
                info!("an interface with MAC {mac} is now present");
            }
        }
        self.warned = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_prefix;
    use std::cell::RefCell;

    /// Records every call; holds a route table of our protocol only.
    #[derive(Default)]
    struct Fake {
        links: Vec<Link>,
        routes: RefCell<BTreeSet<Route>>,
        calls: RefCell<Vec<String>>,
    }

    impl Kernel for Fake {
        async fn links(&self) -> Result<Vec<Link>, Error> {
            Ok(self.links.clone())
        }
        async fn routes(&self, _proto: u8) -> Result<BTreeSet<Route>, Error> {
            Ok(self.routes.borrow().clone())
        }
        async fn add(&self, r: &Route, proto: u8) -> Result<(), Error> {
            self.calls
                .borrow_mut()
                .push(format!("add {} #{} proto {proto}", r.dst, r.ifindex));
            self.routes.borrow_mut().insert(*r);
            Ok(())
        }
        async fn del(&self, r: &Route, proto: u8) -> Result<(), Error> {
            self.calls
                .borrow_mut()
                .push(format!("del {} #{} proto {proto}", r.dst, r.ifindex));
            self.routes.borrow_mut().remove(r);
            Ok(())
        }
    }

    fn fake() -> Fake {
        Fake {
            links: vec![Link {
                index: 2,
                name: "eth0".into(),
                mac: "42:01:0a:8a:00:07".into(),
            }],
            ..Fake::default()
        }
    }

    fn nics(ips: &[&str]) -> Vec<NetworkInterface> {
        vec![NetworkInterface {
            mac: "42:01:0a:8a:00:07".into(),
            forwarded_ips: ips.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }]
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn take_calls(f: &Forwarder<Fake>) -> Vec<String> {
        std::mem::take(&mut *f.kernel().calls.borrow_mut())
    }

    #[test]
    fn nothing_is_touched_before_the_first_snapshot() {
        block_on(async {
            let k = fake();
            k.routes.borrow_mut().insert(Route {
                dst: parse_prefix("10.9.9.9").unwrap(),
                ifindex: 2,
            });
            let mut f = Forwarder::new(k, Options::default());
            assert_eq!(f.reconcile().await.unwrap(), Outcome::default());
            assert!(take_calls(&f).is_empty());
        });
    }

    #[test]
    fn snapshots_add_change_and_remove_routes_with_our_protocol() {
        block_on(async {
            let opts = Options {
                proto: 77,
                ..Options::default()
            };
            let mut f = Forwarder::new(fake(), opts);
            let o = f.apply(nics(&["10.1.2.3"])).await.unwrap();
            assert_eq!((o.routes, o.added, o.removed), (1, 1, 0));
            assert_eq!(take_calls(&f), ["add 10.1.2.3/32 #2 proto 77"]);

            let o = f.apply(nics(&["10.1.2.4", "10.1.2.3"])).await.unwrap();
            assert_eq!((o.routes, o.added, o.removed), (2, 1, 0));
            assert_eq!(take_calls(&f), ["add 10.1.2.4/32 #2 proto 77"]);

            let o = f.apply(nics(&["10.1.2.4"])).await.unwrap();
            assert_eq!((o.routes, o.added, o.removed), (1, 0, 1));
            assert_eq!(take_calls(&f), ["del 10.1.2.3/32 #2 proto 77"]);

            // Same snapshot again: no calls at all.
            f.apply(nics(&["10.1.2.4"])).await.unwrap();
            assert!(take_calls(&f).is_empty());
        });
    }

    #[test]
    fn a_route_lost_behind_our_back_is_restored_from_the_last_snapshot() {
        block_on(async {
            let mut f = Forwarder::new(fake(), Options::default());
            f.apply(nics(&["10.1.2.3"])).await.unwrap();
            take_calls(&f);
            f.kernel().routes.borrow_mut().clear();
            let o = f.reconcile().await.unwrap();
            assert_eq!(o.added, 1);
            assert_eq!(take_calls(&f), ["add 10.1.2.3/32 #2 proto 66"]);
        });
    }

    #[test]
    fn a_route_moving_to_another_nic_is_removed_before_it_is_added() {
        block_on(async {
            let mut k = fake();
            k.links.push(Link {
                index: 3,
                name: "eth1".into(),
                mac: "42:01:0a:8a:00:08".into(),
            });
            let mut f = Forwarder::new(k, Options::default());
            f.apply(nics(&["10.1.2.3"])).await.unwrap();
            take_calls(&f);
            let mut moved = nics(&[]);
            moved.push(NetworkInterface {
                mac: "42:01:0a:8a:00:08".into(),
                forwarded_ips: vec!["10.1.2.3".into()],
                ..Default::default()
            });
            f.apply(moved).await.unwrap();
            assert_eq!(
                take_calls(&f),
                ["del 10.1.2.3/32 #2 proto 66", "add 10.1.2.3/32 #3 proto 66"]
            );
        });
    }

    #[test]
    fn status_line_summarises_the_outcome() {
        let o = Outcome {
            routes: 3,
            added: 1,
            removed: 2,
            failed: 1,
            missing_nics: 1,
        };
        assert_eq!(
            o.status(),
            "3 local route(s) for forwarded IPs (1 added, 2 removed), 1 failed, 1 NIC(s) not present"
        );
    }
}
