//! The record: what the daemon remembers between runs — which users it manages, whether it
//! created or adopted each, and which key lines it installed — in memory ([`State`]) and on disk
//! ([`load`], [`save`]). Nothing else reads or writes the state file.
//!
//! The record is what makes removal safe (only `Created` users may ever be
//! `userdel`'d — the legacy Go agent deleted adopted users, #202) and what makes
//! restarts incremental (a user whose installed lines equal the desired ones is
//! not touched). Stored as versioned JSON; unknown fields are ignored and missing
//! ones take the safe default.

use std::collections::BTreeMap;
use std::path::Path;

use gce_agent::fs::{self as afs, WriteOpts};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, error};

use crate::action::Action;
use crate::names::validate_username;

/// The format version this code writes.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file is not valid JSON: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error(
        "state file has version {found}, newer than the {STATE_VERSION} this daemon understands"
    )]
    FutureVersion { found: u32 },
}

/// How a user came under our management.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// We ran useradd for it: may be removed with `deprovision_remove`.
    Created,
    /// It existed before (or we cannot tell): never removed, only its managed keys
    /// and sudoers membership. The default, because it is the safe side.
    #[default]
    Adopted,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserState {
    pub origin: Origin,
    /// The managed lines we installed (without markers), in order.
    pub keys: Vec<String>,
    pub in_sudoers: bool,
    /// Consecutive transient creation failures, for the daemon's backoff.
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub version: u32,
    pub users: BTreeMap<String, UserState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            users: BTreeMap::new(),
        }
    }
}

impl State {
    /// Parses the state file. Bad JSON is an error: the daemon must then not
    /// deprovision anybody (it no longer knows whom it manages).
    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        let mut state: State = serde_json::from_slice(bytes)?;
        if state.version > STATE_VERSION {
            return Err(StateError::FutureVersion {
                found: state.version,
            });
        }
        state.version = STATE_VERSION;
        Ok(state)
    }

    /// Pretty JSON with a trailing newline (a person may read it while debugging).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("State serializes");
        v.push(b'\n');
        v
    }

    /// Reads Google's `/var/lib/google/google_users` (one user per line): every valid name,
    /// `Adopted` (never deleted) — the file alone does not say who created whom;
    /// [`crate::decide::takeover`] upgrades the users Google's agents demonstrably created.
    /// Google's agents put them in google-sudoers. Their installed keys are unknown (empty), so
    /// the first plan rewrites them.
    pub fn from_google_users_file(text: &str) -> State {
        let mut state = State::default();
        for line in text.lines() {
            let name = line.trim_ascii();
            if name.is_empty() || name.starts_with('#') || validate_username(name).is_err() {
                continue;
            }
            state.users.insert(
                name.to_string(),
                UserState {
                    origin: Origin::Adopted,
                    keys: Vec::new(),
                    in_sudoers: true,
                    failures: 0,
                },
            );
        }
        state
    }

    /// Records that `action` was applied successfully, so the next plan does not
    /// repeat it.
    pub fn record(&mut self, action: &Action) {
        match action {
            Action::CreateUser { user } => {
                let u = self.users.entry(user.clone()).or_default();
                u.origin = Origin::Created;
                u.failures = 0;
            }
            Action::Adopt { user } => {
                self.users.entry(user.clone()).or_default().origin = Origin::Adopted;
            }
            Action::AddToSudoers { user } => {
                self.users.entry(user.clone()).or_default().in_sudoers = true;
            }
            Action::RemoveFromSudoers { user } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.in_sudoers = false;
                }
            }
            Action::WriteKeys { user, lines } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.keys = lines.clone();
                }
            }
            Action::DeleteUser { .. } => {}
            Action::Forget { user } => {
                self.users.remove(user);
            }
        }
    }

    /// Records a transient failure to create `user`; the entry stays `Created` so
    /// the daemon retries (with backoff on `failures`) instead of forgetting it.
    pub fn record_create_failure(&mut self, user: &str) -> u32 {
        let u = self.users.entry(user.to_string()).or_insert(UserState {
            origin: Origin::Created,
            ..UserState::default()
        });
        u.failures = u.failures.saturating_add(1);
        u.failures
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    State(State),
    /// No state file: a first start, or a takeover from Google's agents.
    Missing,
    /// A state file that cannot be used (moved aside when it is not valid JSON). What we knew is
    /// lost, so nobody may be taken for created: the caller adopts the users of `google_users`.
    Unusable,
}

/// Reads the state file.
pub fn load(state_path: &Path) -> Loaded {
    match afs::read_nofollow(state_path, 64 << 20) {
        Ok(Some(bytes)) => match State::parse(&bytes) {
            Ok(s) => Loaded::State(s),
            Err(e) => {
                let aside = state_path.with_extension("corrupt");
                let _ = std::fs::rename(state_path, &aside);
                error!(
                    "state file {} is unreadable ({e}); moved to {}; users from google_users are treated as adopted",
                    state_path.display(),
                    aside.display()
                );
                Loaded::Unusable
            }
        },
        Ok(None) => Loaded::Missing,
        Err(e) => {
            error!(
                "state file {}: {e}; users from google_users are treated as adopted",
                state_path.display()
            );
            Loaded::Unusable
        }
    }
}

/// The text of Google's `google_users` list, if there is one.
pub fn read_google_users(path: &Path) -> Option<String> {
    match afs::read_nofollow(path, 16 << 20) {
        Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => None,
        Err(e) => {
            error!("{}: {e}", path.display());
            None
        }
    }
}

/// Writes the state file: atomic and fsync'd, so a write-ahead record of a creation survives a
/// crash.
pub fn save(state: &State, state_path: &Path) {
    if let Some(dir) = state_path.parent()
        && !dir.is_dir()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let opts = WriteOpts::new(0o600).owner(0, 0);
    if let Err(e) = afs::write_atomic(state_path, &state.to_bytes(), &opts) {
        error!("saving {}: {e}", state_path.display());
    }
}

/// Google's list of managed users (one name per line), as Google's agents write it.
pub fn google_users_text(state: &State) -> String {
    let mut names = String::new();
    for u in state.users.keys() {
        names.push_str(u);
        names.push('\n');
    }
    names
}

/// Writes Google's list of managed users, kept in step so either agent can take over. Not part
/// of the write-ahead record: nothing of ours depends on it.
pub fn save_google_users(text: &str, path: &Path) -> bool {
    match afs::write_atomic(path, text.as_bytes(), &WriteOpts::new(0o600).owner(0, 0)) {
        Ok(()) => true,
        Err(e) => {
            debug!("saving {}: {e}", path.display());
            false
        }
    }
}
