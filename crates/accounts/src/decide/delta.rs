//! Incremental desired keys: a metadata change usually edits one line of an `ssh-keys` value
//! that holds hundreds. Recomputing and re-planning every user for it would cost milliseconds,
//! so the daemon diffs the values line by line, recomputes only the users whose lines changed,
//! and merges them into the previous [`Desired`]. Whenever that would not give exactly what
//! [`desired_keys`] gives — a flag changed, a key expired since, a changed line names no user —
//! [`update`] declines and the caller recomputes in full.

use crate::decide::desired::{Desired, desired_keys};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// Where each key source lives: (instance attribute?, key), in precedence order.
const SOURCES: [(bool, &str); 4] = [
    (true, "sshKeys"),
    (true, "ssh-keys"),
    (false, "ssh-keys"),
    (false, "sshKeys"),
];

/// The attribute values [`desired_keys`] reads, kept to compare one snapshot with the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    values: [Option<String>; 4],
    instance_oslogin: Option<String>,
    project_oslogin: Option<String>,
    block_project: Option<String>,
}

impl Inputs {
    pub fn of(instance: &BTreeMap<String, String>, project: &BTreeMap<String, String>) -> Inputs {
        let values = SOURCES.map(|(inst, key)| {
            if inst {
                instance.get(key)
            } else {
                project.get(key)
            }
            .cloned()
        });
        Inputs {
            values,
            instance_oslogin: instance.get("enable-oslogin").cloned(),
            project_oslogin: project.get("enable-oslogin").cloned(),
            block_project: instance.get("block-project-ssh-keys").cloned(),
        }
    }

    /// Everything but the key values: when any of it changes, only a full recompute is right.
    fn same_flags(&self, other: &Inputs) -> bool {
        let legacy_set = |i: &Inputs| i.values[0].as_deref().is_some_and(|v| !v.trim().is_empty());
        self.instance_oslogin == other.instance_oslogin
            && self.project_oslogin == other.project_oslogin
            && self.block_project == other.block_project
            && legacy_set(self) == legacy_set(other)
    }
}

/// The user a line belongs to: `Some(None)` for a blank line, `None` for a line without `:`.
fn user_of(line: &str) -> Option<Option<&str>> {
    let line = line.strip_suffix('\r').unwrap_or(line).trim_ascii();
    if line.is_empty() {
        return Some(None);
    }
    line.split_once(':').map(|(u, _)| Some(u))
}

/// Adds to `out` the users of the lines that differ between `old` and `new` (everything between
/// the common leading and trailing lines). `None` when such a line names no user.
pub fn changed_users(old: &str, new: &str, out: &mut BTreeSet<String>) -> Option<()> {
    let a: Vec<&str> = old.split('\n').collect();
    let b: Vec<&str> = new.split('\n').collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    for line in a[prefix..a.len() - suffix]
        .iter()
        .chain(&b[prefix..b.len() - suffix])
    {
        if let Some(user) = user_of(line)? {
            out.insert(user.to_string());
        }
    }
    Some(())
}

/// `value` with the lines of other users blanked, so line numbers in warnings stay true.
fn only_users(value: &str, users: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(value.len() / 8);
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if matches!(user_of(line), Some(Some(u)) if users.contains(u)) {
            out.push_str(line);
        }
    }
    out
}

/// Brings `desired` (computed from `prev`) up to date with `next` by recomputing only the users
/// whose lines changed; returns them. `None`: not possible, recompute in full (`desired` is then
/// left as it was).
pub fn update(
    prev: &Inputs,
    desired: &mut Desired,
    next: &Inputs,
    now: DateTime<Utc>,
) -> Option<BTreeSet<String>> {
    if desired.oslogin || !prev.same_flags(next) || desired.next_expiry.is_some_and(|e| now > e) {
        return None;
    }
    let mut dirty = BTreeSet::new();
    for (a, b) in prev.values.iter().zip(&next.values) {
        let (a, b) = (a.as_deref().unwrap_or(""), b.as_deref().unwrap_or(""));
        if a != b {
            changed_users(a, b, &mut dirty)?;
        }
    }
    if dirty.is_empty() {
        return Some(dirty);
    }
    let mut instance = BTreeMap::new();
    let mut project = BTreeMap::new();
    for ((is_instance, key), value) in SOURCES.iter().zip(&next.values) {
        let Some(value) = value else { continue };
        let map = if *is_instance {
            &mut instance
        } else {
            &mut project
        };
        map.insert(key.to_string(), only_users(value, &dirty));
    }
    // Filtering can blank the legacy value that blocked project keys: keep the block explicit.
    if desired.project_keys_blocked {
        instance.insert("block-project-ssh-keys".to_string(), "true".to_string());
        project.clear();
    }
    let part = desired_keys(&instance, &project, now);
    for user in &dirty {
        desired.users.remove(user);
    }
    desired.users.extend(part.users);
    desired
        .rejected
        .retain(|r| r.error.user.as_ref().is_none_or(|u| !dirty.contains(u)));
    desired.rejected.extend(part.rejected);
    desired.expired.retain(|e| !dirty.contains(&e.user));
    desired.expired.extend(part.expired);
    desired.next_expiry = desired
        .users
        .values()
        .flatten()
        .filter_map(|e| e.expires)
        .min();
    Some(dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_users_finds_edits_inserts_and_removals() {
        let rows: [(&str, &str, Option<Vec<&str>>); 6] = [
            ("a:1\nb:2\nc:3", "a:1\nb:X\nc:3", Some(vec!["b"])),
            ("a:1\nc:3", "a:1\nb:2\nc:3", Some(vec!["b"])),
            ("a:1\nb:2\nc:3", "a:1\nc:3", Some(vec!["b"])),
            ("a:1\na:1", "a:1", Some(vec!["a"])),
            ("a:1", "a:1\n\n", Some(vec![])),
            ("a:1", "a:1\nno-colon", None),
        ];
        for (old, new, want) in rows {
            let mut out = BTreeSet::new();
            let got = changed_users(old, new, &mut out)
                .map(|()| out.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(got, want, "{old:?} -> {new:?}");
        }
    }
}
