//! How a key reaches the instance. [`KeyPusher`] is the seam between "push through instance
//! metadata" (this file: `ssh-keys` with a `google-ssh` expiry, then the guest's ready marker)
//! and, later, "import through the OS Login API and log in as the profile's POSIX user": both
//! take the same request and answer with the user to log in as and how to know the key works.

use std::time::{Duration, Instant};

use gce_metadata::ready;

use crate::compute::{Compute, ComputeError, Instance, Metadata, items_of};
use crate::keyline;

/// A key to make usable for login.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The user asked for (metadata keys: the account name; OS Login: ignored in favour of the
    /// profile's POSIX name).
    pub user: String,
    /// `TYPE BLOB [comment]`.
    pub public_key: String,
    /// `SHA256:…` of the key.
    pub fingerprint: String,
    pub expire_on: chrono::DateTime<chrono::Utc>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The POSIX user to log in as.
    pub login_user: String,
    /// For `--timings`: what happened, in a few words.
    pub detail: String,
}

/// Whether the guest confirmed that login will work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usable {
    /// The guest said so (ready marker listing the key).
    Confirmed,
    /// The guest publishes no confirmation (not this project's agent, or guest attributes
    /// off): the caller finds out by trying, as gcloud does.
    Unknown,
    /// The guest publishes confirmations but did not list this key in time.
    TimedOut,
}

pub trait KeyPusher {
    fn push(&self, req: &PushRequest) -> Result<Pushed, ComputeError>;
    /// Waits until the key is usable or `deadline`.
    fn wait_usable(&self, req: &PushRequest, pushed: &Pushed, deadline: Instant) -> Usable;
}

/// Pushes into the instance's `ssh-keys` metadata (read-modify-write on the fingerprint),
/// dropping this user's expired `google-ssh` keys, and waits for `gce-agent/ssh-ready-<user>`.
pub struct MetadataPusher<'a> {
    pub compute: &'a Compute<'a>,
    pub instance: &'a Instance,
    /// The metadata as just read by `instances.get`: the first write is based on it.
    pub current: Metadata,
}

impl KeyPusher for MetadataPusher<'_> {
    fn push(&self, req: &PushRequest) -> Result<Pushed, ComputeError> {
        let line = keyline::expiring_line(&req.user, &req.public_key, req.expire_on);
        let attempts = self
            .compute
            .update_metadata(self.instance, self.current.clone(), |md| {
                let current = md.get("ssh-keys").unwrap_or_default().to_string();
                md.set(
                    "ssh-keys",
                    keyline::add_key(&current, &req.user, &line, chrono::Utc::now()),
                );
            })?;
        Ok(Pushed {
            login_user: req.user.clone(),
            detail: format!("instance metadata ssh-keys, setMetadata attempts: {attempts}"),
        })
    }

    fn wait_usable(&self, req: &PushRequest, pushed: &Pushed, deadline: Instant) -> Usable {
        let marker = ready::user_key(&pushed.login_user);
        let query = format!("{}/", ready::NAMESPACE);
        let mut seen_namespace = false;
        loop {
            match self.compute.guest_attributes(self.instance, &query) {
                Ok(Some(answer)) => {
                    seen_namespace = true;
                    if items_of(&answer, ready::NAMESPACE)
                        .any(|(k, v)| k == marker && ready::lists(v, &req.fingerprint))
                    {
                        return Usable::Confirmed;
                    }
                }
                // Our agent publishes its namespace from its first pass on, long before anyone
                // pushes a key: none at all means nobody will confirm.
                Ok(None) if !seen_namespace => return Usable::Unknown,
                Ok(None) => {}
                // Guest attributes switched off answers a client error, not a marker.
                Err(ComputeError::Status {
                    status, message, ..
                }) if !seen_namespace && (400..500).contains(&status) => {
                    eprintln!("gce-ssh: no ready markers to read ({status}: {message})");
                    return Usable::Unknown;
                }
                Err(e) => {
                    eprintln!("gce-ssh: reading the ready marker failed (will keep trying): {e}")
                }
            }
            if Instant::now() >= deadline {
                return Usable::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
