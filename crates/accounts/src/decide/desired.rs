//! From a metadata snapshot to the keys each user should have (SPEC §2).
//!
//! Pure: a function of the instance and project attributes and the clock. It
//! decides which sources count (`block-project-ssh-keys`, legacy `sshKeys`),
//! whether OS Login replaces metadata keys, drops expired keys and reports
//! when the next kept key expires so the daemon can arm a timer instead of
//! waiting for the next metadata change.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::decide::keys::{KeyEntry, LineError, ParseMemo, parse_ssh_keys_memo};
use crate::decide::oslogin;

/// Where a key line came from, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeySource {
    /// Instance `sshKeys` (legacy; blocks project keys when non-empty).
    InstanceSshKeysLegacy,
    InstanceSshKeys,
    ProjectSshKeys,
    ProjectSshKeysLegacy,
}

impl KeySource {
    /// The metadata attribute name.
    pub fn attribute(self) -> &'static str {
        match self {
            KeySource::InstanceSshKeysLegacy | KeySource::ProjectSshKeysLegacy => "sshKeys",
            KeySource::InstanceSshKeys | KeySource::ProjectSshKeys => "ssh-keys",
        }
    }

    pub fn is_project(self) -> bool {
        matches!(
            self,
            KeySource::ProjectSshKeys | KeySource::ProjectSshKeysLegacy
        )
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = if self.is_project() {
            "project"
        } else {
            "instance"
        };
        write!(f, "{scope} {}", self.attribute())
    }
}

/// A refused line and the attribute it was in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub source: KeySource,
    pub error: LineError,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.source, self.error)
    }
}

/// What metadata says the machine should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// OS Login is enabled ([`oslogin::settings`]): no metadata key may grant access, so there
    /// are no users here and the plan removes what metadata keys had granted.
    pub oslogin: bool,
    /// Users and their valid, unexpired keys, deduplicated, in source order.
    pub users: BTreeMap<String, Vec<KeyEntry>>,
    /// Lines that were refused, with the reason.
    pub rejected: Vec<Rejected>,
    /// Keys dropped because they have expired (for a "key expired" log line).
    pub expired: Vec<KeyEntry>,
    /// Earliest `expireOn` among kept keys: the key stops being valid right after it.
    pub next_expiry: Option<DateTime<Utc>>,
    /// Project keys were not consulted (`block-project-ssh-keys` or instance `sshKeys`).
    pub project_keys_blocked: bool,
}

/// Metadata booleans: `true` in any case, surrounding whitespace ignored.
fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn non_blank(v: Option<&String>) -> Option<&String> {
    v.filter(|v| !v.trim().is_empty())
}

/// Computes the desired keys from the instance and project attributes at `now`.
pub fn desired_keys(
    instance: &BTreeMap<String, String>,
    project: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Desired {
    desired_keys_memo(instance, project, now, &mut ParseMemo::default())
}

/// [`desired_keys`] reusing the lines parsed for earlier snapshots (the daemon keeps the memo).
pub fn desired_keys_memo(
    instance: &BTreeMap<String, String>,
    project: &BTreeMap<String, String>,
    now: DateTime<Utc>,
    memo: &mut ParseMemo,
) -> Desired {
    if oslogin::settings(instance, project).enabled {
        return Desired {
            oslogin: true,
            ..Desired::default()
        };
    }

    let legacy = instance.get("sshKeys");
    let project_keys_blocked =
        is_true(instance.get("block-project-ssh-keys")) || non_blank(legacy).is_some();
    let mut sources = vec![
        (KeySource::InstanceSshKeysLegacy, legacy),
        (KeySource::InstanceSshKeys, instance.get("ssh-keys")),
    ];
    if !project_keys_blocked {
        sources.push((KeySource::ProjectSshKeys, project.get("ssh-keys")));
        sources.push((KeySource::ProjectSshKeysLegacy, project.get("sshKeys")));
    }

    let mut out = Desired {
        project_keys_blocked,
        ..Desired::default()
    };
    for (source, value) in sources {
        let Some(value) = value else { continue };
        for line in parse_ssh_keys_memo(value, memo) {
            let entry = match line {
                Ok(entry) => entry,
                Err(error) => {
                    out.rejected.push(Rejected { source, error });
                    continue;
                }
            };
            if entry.is_expired(now) {
                out.expired.push(entry);
                continue;
            }
            // Identical lines (same user, same key text) collapse to the first. A user has a few
            // keys, so a scan of theirs beats hashing every line.
            if let Some(e) = entry.expires {
                // A duplicate has the same expiry, so counting it here changes nothing.
                out.next_expiry = Some(out.next_expiry.map_or(e, |n| n.min(e)));
            }
            match out.users.get_mut(&entry.user) {
                Some(list) if list.iter().any(|k| k.raw == entry.raw) => continue,
                Some(list) => list.push(entry),
                None => {
                    out.users.insert(entry.user.clone(), vec![entry]);
                }
            }
        }
    }
    memo.finish();
    out
}
