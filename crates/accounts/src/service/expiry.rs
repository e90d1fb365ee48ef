//! Expiry without metadata: before the first snapshot (a restart while the metadata server is
//! unreachable), the keys this daemon installed still expire on time — their `expireOn` is read
//! back from the lines kept in the record. Nothing is ever added or created without metadata.

use super::Accounts;
use crate::action::Action;
use crate::decide::keys::{google_ssh_expiry, parse_authorized_key};
use crate::record::State;
use chrono::{DateTime, Utc};
use tracing::info;

impl Accounts {
    /// Removes the recorded lines that have expired; arms the timer for the next one.
    pub(super) fn expire_from_state(&mut self) -> String {
        let now = Utc::now();
        let mut due: Vec<(String, Vec<String>)> = Vec::new();
        for (name, u) in &self.state.users {
            let keep: Vec<String> = u
                .keys
                .iter()
                .filter(|l| line_expiry(l).is_none_or(|t| now <= t))
                .cloned()
                .collect();
            if keep.len() != u.keys.len() {
                due.push((name.clone(), keep));
            }
        }
        if !due.is_empty() {
            self.nss.refresh();
        }
        for (user, keep) in due {
            if self.write_keys(&user, &keep) {
                info!(USER = %user, "expired key removed for {user} (no metadata yet: expiry read from the state file)");
                self.state.record(&Action::WriteKeys { user, lines: keep });
                self.save_state();
            }
        }
        // Only expiries still ahead: a line that could not be rewritten must not spin the timer.
        self.next_expiry = state_expiries(&self.state).filter(|t| *t >= now).min();
        "waiting for metadata".into()
    }
}

/// The `expireOn` of a managed line as recorded in the state file (`google-ssh` comment).
fn line_expiry(line: &str) -> Option<DateTime<Utc>> {
    let key = parse_authorized_key(line).ok()?;
    google_ssh_expiry(&key.comment).ok().flatten()
}

/// The earliest expiry among the recorded lines still valid at `now`, or an already passed one
/// (so the timer fires at once); `None` without expiring keys.
pub(super) fn state_next_expiry(state: &State, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let all: Vec<DateTime<Utc>> = state_expiries(state).collect();
    let passed = all.iter().filter(|t| now > **t).min();
    passed.or_else(|| all.iter().min()).copied()
}

/// The expiries of every managed line recorded in the state file.
fn state_expiries(state: &State) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    state
        .users
        .values()
        .flat_map(|u| u.keys.iter())
        .filter_map(|l| line_expiry(l))
}
