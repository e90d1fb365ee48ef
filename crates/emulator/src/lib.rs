//! A GCE metadata server and Compute control-plane emulator for tests, demos and developers.
//!
//! It follows SPEC §1: the guest API under `/computeMetadata/v1/` (flavor header, ETags,
//! listings, recursive JSON/text, long polls, guest attributes), the Compute API's metadata
//! calls under `/compute/v1/` (fingerprints, 412 on a stale one, GCE's size limits), and an
//! `/emulator/` API that mirrors [`EmulatorHandle`] for shell demos and out-of-process tests.
//!
//! The document is one camelCase JSON value held in a `tokio::sync::watch` channel as an
//! immutable snapshot; every change publishes a new snapshot, which wakes every long poll; each
//! poll then recomputes only its own subtree's ETag.

mod admin;
mod conn;
mod control;
pub mod doc;
mod guest;
pub mod oslogin;
mod oslogin_http;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Guest attributes: namespace -> key -> value.
pub(crate) type GuestAttrs = BTreeMap<String, BTreeMap<String, String>>;

/// One immutable version of the server's state.
pub(crate) struct Snapshot {
    pub doc: Value,
    /// `doc` as the guest sees it (service accounts also under their email).
    pub view: Value,
    pub guest: GuestAttrs,
}

impl Snapshot {
    fn new(doc: Value, guest: GuestAttrs) -> Snapshot {
        let view = doc::guest_view(&doc);
        Snapshot { doc, view, guest }
    }
}

/// A misbehaviour of the guest API, applied to the next `count` guest requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (e.g. 503 as during a live migration).
    Status { status: u16, count: u32 },
    /// Delay the answer by `ms` milliseconds.
    Latency { ms: u64, count: u32 },
    /// Close the connection without answering.
    Drop { count: u32 },
    /// Answer normally but without the `Metadata-Flavor` header.
    NoFlavor { count: u32 },
    /// Accept the request and never answer it, not even after the fault is cleared: a wedged
    /// server. Injecting it also wedges every long poll parked at that moment.
    Hang { count: u32 },
}

/// A whole outage, begun with [`EmulatorHandle::begin_outage`] and ended with
/// [`EmulatorHandle::end_outage`]; what a client meets meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Every guest request answered with this status (503 in a live migration, 500, 429),
    /// the parked long polls at once.
    Status(u16),
    /// Not listening: connections refused, open ones closed.
    Refuse,
    /// Requests accepted and never answered, parked long polls included, even after the end.
    Hang,
    /// Every connection closed without an answer, the open ones at once.
    Drop,
}

impl Fault {
    fn count_mut(&mut self) -> &mut u32 {
        match self {
            Fault::Status { count, .. }
            | Fault::Latency { count, .. }
            | Fault::Drop { count }
            | Fault::NoFlavor { count }
            | Fault::Hang { count } => count,
        }
    }
}

pub(crate) struct Shared {
    pub snap: watch::Sender<Arc<Snapshot>>,
    pub faults: Mutex<VecDeque<Fault>>,
    pub paused: watch::Sender<bool>,
    pub shutdown: watch::Sender<bool>,
    /// Bumped when a hang begins: long polls parked before it never answer.
    pub hang_epoch: watch::Sender<u64>,
    /// Bumped to close every open connection.
    pub cut_epoch: watch::Sender<u64>,
    /// Bumped (with a status) to answer every parked long poll with that status.
    pub fail_parked: watch::Sender<(u64, u16)>,
    /// Whether the listeners should be bound (false: connections are refused).
    pub listening: watch::Sender<bool>,
    /// How many listeners are bound right now, and how many there are.
    pub bound: watch::Sender<usize>,
    pub listeners: AtomicU64,
    pub requests: AtomicU64,
    pub waiters: AtomicU64,
    pub operations: AtomicU64,
    /// The OS Login service's accounts: not part of the metadata document (they live with
    /// Google, not with the instance), so changing them wakes no long poll.
    pub oslogin: Mutex<oslogin::Directory>,
    /// The bearer token the Compute API requires (`None`: any or none, the default).
    pub compute_token: Mutex<Option<String>>,
}

impl Shared {
    pub fn oslogin_dir(&self) -> std::sync::MutexGuard<'_, oslogin::Directory> {
        self.oslogin.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.borrow().clone()
    }

    /// Apply `f` to a copy of the state and publish it (waking every long poll) when `f`
    /// returns `Ok`. Nothing changes on `Err`. The check and the update are atomic.
    pub fn try_update<E>(
        &self,
        f: impl FnOnce(&mut Value, &mut GuestAttrs) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut result = None;
        self.snap.send_if_modified(|snap| {
            let mut doc = snap.doc.clone();
            let mut guest = snap.guest.clone();
            let r = f(&mut doc, &mut guest);
            let ok = r.is_ok();
            result = Some(r);
            if ok {
                *snap = Arc::new(Snapshot::new(doc, guest));
            }
            ok
        });
        result.expect("closure ran")
    }

    pub fn update(&self, f: impl FnOnce(&mut Value, &mut GuestAttrs)) {
        let _ = self.try_update::<()>(|d, g| {
            f(d, g);
            Ok(())
        });
    }

    /// The fault for the next guest request, if any (first queued with a remaining count).
    pub fn next_fault(&self) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = faults.front_mut() {
            let count = front.count_mut();
            if *count == 0 {
                faults.pop_front();
                continue;
            }
            *count -= 1;
            let fault = front.clone();
            if *front.count_mut() == 0 {
                faults.pop_front();
            }
            return Some(fault);
        }
        None
    }
}

/// An emulator that has not been started yet.
pub struct Emulator {
    shared: Arc<Shared>,
}

impl Emulator {
    /// An emulator serving `doc`, the recursive root `{"instance":…,"project":…,"oslogin":…}`.
    pub fn new(doc: Value) -> Emulator {
        Emulator {
            shared: Arc::new(Shared {
                snap: watch::Sender::new(Arc::new(Snapshot::new(doc, GuestAttrs::new()))),
                faults: Mutex::new(VecDeque::new()),
                paused: watch::Sender::new(false),
                shutdown: watch::Sender::new(false),
                hang_epoch: watch::Sender::new(0),
                cut_epoch: watch::Sender::new(0),
                fail_parked: watch::Sender::new((0, 0)),
                listening: watch::Sender::new(true),
                bound: watch::Sender::new(0),
                listeners: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                waiters: AtomicU64::new(0),
                operations: AtomicU64::new(0),
                oslogin: Mutex::new(oslogin::Directory::default()),
                compute_token: Mutex::new(None),
            }),
        }
    }

    /// An emulator serving [`doc::default_doc`]: the SPEC §1 example VM `vm0` in `my-proj`.
    pub fn with_default_doc() -> Emulator {
        Emulator::new(doc::default_doc())
    }

    /// Direct control before the server starts (the same state as after).
    pub fn handle(&self) -> EmulatorHandle {
        EmulatorHandle {
            shared: self.shared.clone(),
        }
    }

    /// Bind `addr` (e.g. `127.0.0.1:0`, `[::1]:0`, `[fd20:ce::254]:80`) and serve on a spawned
    /// task.
    pub async fn start(self, addr: &str) -> std::io::Result<RunningEmulator> {
        self.start_on(&[addr]).await
    }

    /// Bind every address in `addrs` (e.g. one IPv4 and one IPv6) and serve the same state on
    /// each. A port 0 after the first address means "the first address's port".
    pub async fn start_on(self, addrs: &[&str]) -> std::io::Result<RunningEmulator> {
        let mut locals = Vec::new();
        let mut tasks = Vec::new();
        for addr in addrs {
            let mut sa: Option<SocketAddr> = addr.parse().ok();
            if let (Some(sa), Some(first)) = (sa.as_mut(), locals.first())
                && sa.port() == 0
            {
                sa.set_port(SocketAddr::port(first));
            }
            let listener = match sa {
                Some(sa) => bind(&sa.to_string()).await?,
                None => bind(addr).await?,
            };
            let local = listener.local_addr()?;
            let app = router(self.shared.clone());
            self.shared.listeners.fetch_add(1, Ordering::Relaxed);
            let listener = conn::KillListener::new(listener, local, &self.shared);
            let service = app.into_make_service_with_connect_info::<conn::ConnTag>();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service).await {
                    tracing::error!(error = %e, "metadata emulator server stopped");
                }
            }));
            tracing::info!(addr = %local, "metadata emulator listening");
            locals.push(local);
        }
        if locals.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no address to listen on",
            ));
        }
        Ok(RunningEmulator {
            addrs: locals,
            shared: self.shared,
            tasks,
        })
    }
}

/// Bind with a listen backlog of 4096 (tokio's `bind` uses 1024): thousands of agents
/// reconnecting at once must not see dropped SYNs, each of which costs a 1 s retransmit.
pub(crate) async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(4096)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no address for {addr}"),
        )
    }))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(control::routes())
        .merge(admin::routes())
        .merge(oslogin_http::routes())
        .fallback(guest::handle)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(shared)
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<conn::ConnTag>>()
        .map(|c| c.0.remote);
    let start = Instant::now();
    let resp = next.run(req).await;
    let ms = start.elapsed().as_millis() as u64;
    tracing::debug!(?remote, %method, %uri, status = resp.status().as_u16(), ms, "request");
    resp
}

/// A started emulator. Dropping it stops the server.
pub struct RunningEmulator {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningEmulator {
    /// The first address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address it listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `http://127.0.0.1:PORT` (`http://[::1]:PORT` on IPv6), no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT` (`[::1]:PORT`), the value for `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        self.addr().to_string()
    }

    pub fn handle(&self) -> EmulatorHandle {
        EmulatorHandle {
            shared: self.shared.clone(),
        }
    }

    /// Stop accepting and close every connection, parked long polls included.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// In-process control of a (running or not yet started) emulator. Cheap to clone.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
}

impl EmulatorHandle {
    /// The whole camelCase document.
    pub fn doc(&self) -> Value {
        self.shared.snapshot().doc.clone()
    }

    pub fn set_doc(&self, doc: Value) {
        self.shared.update(|d, _| *d = doc);
    }

    /// Set the value at a JSON pointer (`/instance/attributes/ssh-keys`), creating objects on
    /// the way; wakes long polls.
    pub fn set(&self, pointer: &str, value: Value) {
        self.shared
            .update(|d, _| doc::pointer_set(d, pointer, value));
    }

    pub fn remove(&self, pointer: &str) {
        self.shared.update(|d, _| {
            doc::pointer_remove(d, pointer);
        });
    }

    /// Make the Compute API (`/compute/v1/`) answer 401, as Google's does, unless a request
    /// carries `Authorization: Bearer <token>`; `None` accepts anything again.
    pub fn require_compute_token(&self, token: Option<&str>) {
        *self
            .shared
            .compute_token
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = token.map(str::to_string);
    }

    pub fn set_instance_attribute(&self, key: &str, value: &str) {
        self.set_attribute("instance", key, value);
    }

    pub fn remove_instance_attribute(&self, key: &str) {
        self.remove_attribute("instance", key);
    }

    pub fn set_project_attribute(&self, key: &str, value: &str) {
        self.set_attribute("project", key, value);
    }

    pub fn remove_project_attribute(&self, key: &str) {
        self.remove_attribute("project", key);
    }

    fn set_attribute(&self, scope: &str, key: &str, value: &str) {
        self.shared.update(|d, _| {
            // Built from tokens rather than a pointer string: keys may hold '/' or '~'.
            doc::pointer_set(d, &format!("/{scope}/attributes"), attributes_of(d, scope));
            if let Some(Value::Object(attrs)) = d.pointer_mut(&format!("/{scope}/attributes")) {
                attrs.insert(key.to_string(), Value::String(value.to_string()));
            }
        });
    }

    fn remove_attribute(&self, scope: &str, key: &str) {
        self.shared.update(|d, _| {
            if let Some(Value::Object(attrs)) = d.pointer_mut(&format!("/{scope}/attributes")) {
                attrs.remove(key);
            }
        });
    }

    pub fn inject(&self, fault: Fault) {
        let hang = matches!(fault, Fault::Hang { .. });
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fault);
        if hang {
            self.shared.hang_epoch.send_modify(|e| *e += 1);
        }
    }

    /// Close every open connection now, parked long polls included, without an answer.
    pub fn cut_connections(&self) {
        self.shared.cut_epoch.send_modify(|e| *e += 1);
    }

    /// Close the listening sockets (connections are refused) and every open connection.
    pub fn stop_listening(&self) {
        self.shared.listening.send_replace(false);
        self.cut_connections();
    }

    /// Bind the same addresses again after [`stop_listening`](Self::stop_listening).
    pub fn start_listening(&self) {
        self.shared.listening.send_replace(true);
    }

    /// Resolves once the listeners are as last asked: every one bound again after
    /// [`start_listening`](Self::start_listening), every one closed after
    /// [`stop_listening`](Self::stop_listening) (both happen on the server's tasks).
    pub async fn listening(&self) {
        let want = if *self.shared.listening.borrow() {
            self.shared.listeners.load(Ordering::Relaxed) as usize
        } else {
            0
        };
        let mut rx = self.shared.bound.subscribe();
        let _ = rx.wait_for(|n| *n == want).await;
    }

    /// Start an outage of `kind` (replacing queued faults); it lasts until
    /// [`end_outage`](Self::end_outage).
    pub fn begin_outage(&self, kind: Outage) {
        self.clear_faults();
        match kind {
            Outage::Status(status) => {
                self.inject(Fault::Status {
                    status,
                    count: u32::MAX,
                });
                self.shared
                    .fail_parked
                    .send_modify(|(epoch, s)| (*epoch, *s) = (*epoch + 1, status));
            }
            Outage::Refuse => self.stop_listening(),
            Outage::Hang => self.inject(Fault::Hang { count: u32::MAX }),
            Outage::Drop => {
                self.cut_connections();
                self.inject(Fault::Drop { count: u32::MAX });
            }
        }
    }

    /// End any outage: faults cleared, listening again. Requests a hang swallowed stay
    /// unanswered.
    pub fn end_outage(&self) {
        self.clear_faults();
        self.start_listening();
    }

    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Guest-API requests hang until [`resume`](Self::resume) (an unreachable server).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Guest-API requests received so far.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Long polls currently parked waiting for a change.
    pub fn waiters(&self) -> u64 {
        self.shared.waiters.load(Ordering::Relaxed)
    }

    pub fn guest_attribute(&self, ns: &str, key: &str) -> Option<String> {
        self.shared.snapshot().guest.get(ns)?.get(key).cloned()
    }

    /// Set a guest attribute as a guest would (no enable check).
    pub fn set_guest_attribute(&self, ns: &str, key: &str, value: &str) {
        self.shared.update(|_, g| {
            g.entry(ns.to_string())
                .or_default()
                .insert(key.to_string(), value.to_string());
        });
    }
}

/// OS Login (SPEC §10): the accounts behind `oslogin/…` and the OS Login API.
impl EmulatorHandle {
    /// Creates the OS Login profile of `email` (POSIX name derived as Google does, fresh
    /// uid = gid, `/home/<name>`, `/bin/bash`) if needed; returns it.
    pub fn oslogin_add_user(&self, email: &str) -> oslogin::OsLoginUser {
        self.shared
            .oslogin_dir()
            .ensure_user(email)
            .unwrap_or_else(|e| panic!("oslogin_add_user({email}): {e:?}"))
            .clone()
    }

    pub fn oslogin_user(&self, email: &str) -> Option<oslogin::OsLoginUser> {
        self.shared.oslogin_dir().user(email).cloned()
    }

    /// `importSshPublicKey` for `email` with an optional expiry (microseconds since the epoch);
    /// returns the key's fingerprint.
    pub fn oslogin_import_key(
        &self,
        email: &str,
        key: &str,
        expiration_usec: Option<u64>,
    ) -> Result<String, oslogin::OsLoginError> {
        self.shared
            .oslogin_dir()
            .import_key(email, key, expiration_usec)
    }

    /// Grants or revokes the effect of `roles/compute.osLogin` (`login`) and
    /// `roles/compute.osAdminLogin` (`admin_login`) for `email`.
    pub fn oslogin_set_policy(&self, email: &str, login: bool, admin_login: bool) {
        self.shared
            .oslogin_dir()
            .set_policy(email, login, admin_login)
            .unwrap_or_else(|e| panic!("oslogin_set_policy({email}): {e:?}"));
    }

    pub fn oslogin_remove_user(&self, email: &str) -> bool {
        self.shared.oslogin_dir().remove_user(email)
    }

    /// Creates or replaces a POSIX group of OS Login users; returns its gid.
    pub fn oslogin_set_group(&self, name: &str, members: &[&str]) -> u32 {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        self.shared
            .oslogin_dir()
            .set_group(name, None, &members)
            .unwrap_or_else(|e| panic!("oslogin_set_group({name}): {e:?}"))
    }

    /// The trusted user CA keys `oslogin/certificates` serves.
    pub fn oslogin_set_ca_keys(&self, keys: &[&str]) {
        self.shared
            .oslogin_dir()
            .set_ca_keys(keys.iter().map(|k| k.to_string()).collect());
    }
}

/// The current attributes object of `scope`, or an empty one.
fn attributes_of(d: &Value, scope: &str) -> Value {
    match d.pointer(&format!("/{scope}/attributes")) {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Default::default()),
    }
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("requests", &self.request_count())
            .field("waiters", &self.waiters())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}
