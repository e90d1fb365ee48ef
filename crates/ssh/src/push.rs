//! How a key reaches the instance. [`KeyPusher`] is the seam between "push through instance
//! metadata" (`ssh-keys` with a `google-ssh` expiry, then the guest's ready marker) and "import
//! through the OS Login API and log in as the profile's POSIX user": both take the same request
//! and answer with the user to log in as, how to know the key works, and what to tidy up once
//! the session is over.

use std::time::{Duration, Instant};

use gce_metadata::ready;

use crate::compute::{Compute, ComputeError, Instance, Metadata, items_of};
use crate::keyline;
use crate::oslogin::{self, OsLoginApi, OsLoginError};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    OsLogin(#[from] OsLoginError),
}

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
    /// What to remove once the session is over (OS Login key fingerprints).
    pub remove_after: Vec<String>,
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
    /// Nothing to wait for: the guest reads the key from the API at login (OS Login).
    Effective,
}

pub trait KeyPusher {
    fn push(&self, req: &PushRequest) -> Result<Pushed, PushError>;
    /// Waits until the key is usable or `deadline`.
    fn wait_usable(&self, req: &PushRequest, pushed: &Pushed, deadline: Instant) -> Usable;
    /// After the session: removes what [`Pushed::remove_after`] lists. Metadata keys are left
    /// to their expiry (the next push drops them), as gcloud does.
    fn cleanup(&self, pushed: &Pushed) -> Result<(), PushError> {
        let _ = pushed;
        Ok(())
    }
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
    fn push(&self, req: &PushRequest) -> Result<Pushed, PushError> {
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
            remove_after: Vec::new(),
        })
    }

    fn wait_usable(&self, req: &PushRequest, pushed: &Pushed, deadline: Instant) -> Usable {
        let marker = ready::user_key(&pushed.login_user);
        let query = format!("{}/", ready::NAMESPACE);
        let mut seen_namespace = false;
        // Every 5 ms for the first 250 ms (a guest confirms within milliseconds), then slower,
        // so a long wait does not spend the real API's read quota.
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
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
            std::thread::sleep(pause);
            if started.elapsed() > Duration::from_millis(250) {
                pause = (pause * 3 / 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Imports the key into the account's OS Login profile with the key's expiry; the login is as
/// the profile's POSIX user for the project. The key works at once: the guest's OS Login module
/// asks the metadata server for the user's keys at every login. After the session the key is
/// deleted (it only ever lived for that session, and a profile is capped at 32 KiB; gcloud
/// leaves its keys to their expiry), and so are expired keys of earlier gce-ssh runs the answer
/// lists.
pub struct OsLoginPusher<'a> {
    pub api: &'a OsLoginApi<'a>,
    pub email: String,
    pub project: String,
}

fn usec(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_micros().max(0) as u64
}

impl KeyPusher for OsLoginPusher<'_> {
    fn push(&self, req: &PushRequest) -> Result<Pushed, PushError> {
        let profile = self.api.import_key(
            &self.email,
            &self.project,
            &req.public_key,
            usec(req.expire_on),
        )?;
        let login_user = oslogin::login_user(&profile, &self.email, &self.project)?;
        // The answer's own fingerprint; OS Login's rule (hex SHA-256 of the blob) if it lists
        // none for the key.
        let mut remove_after: Vec<String> = profile
            .fingerprint_of(&req.public_key)
            .map(str::to_string)
            .or_else(|| oslogin::key_fingerprint(&req.public_key))
            .into_iter()
            .collect();
        let stale = profile.stale_keys(usec(chrono::Utc::now()));
        let detail = format!(
            "OS Login profile of {}, POSIX user {login_user}{}",
            self.email,
            if stale.is_empty() {
                String::new()
            } else {
                format!(", {} expired gce-ssh key(s) to remove", stale.len())
            }
        );
        remove_after.extend(stale);
        Ok(Pushed {
            login_user,
            detail,
            remove_after,
        })
    }

    fn wait_usable(&self, _req: &PushRequest, _pushed: &Pushed, _deadline: Instant) -> Usable {
        Usable::Effective
    }

    fn cleanup(&self, pushed: &Pushed) -> Result<(), PushError> {
        let mut first = None;
        for fp in &pushed.remove_after {
            if let Err(e) = self.api.delete_key(&self.email, fp) {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
