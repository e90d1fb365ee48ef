//! What a pass hands to others once the machine is in line: the `gce-authorized-keys` cache
//! and the guest-attribute ready markers, both built from the desired keys and the record, with
//! the fingerprint memo they share.

use super::Accounts;
use crate::decide::authorized_keys::key_line;
use crate::decide::cache;
use crate::decide::desired::Desired;
use crate::decide::keys::KeyEntry;
use chrono::Utc;
use gce_metadata::model::attribute_is_true;
use gce_metadata::{Root, ready};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tracing::warn;

impl Accounts {
    /// Fingerprints of the keys in `desired`, computed once per distinct key.
    pub(super) fn remember_fingerprints(&mut self, desired: &Desired) {
        let mut next = HashMap::with_capacity(self.fingerprints.len());
        for e in desired.users.values().flatten() {
            let fp = match self
                .fingerprints
                .remove(&e.key.blob)
                .or_else(|| next.get(&e.key.blob).cloned())
            {
                Some(fp) => fp,
                None => e.key.fingerprint(),
            };
            next.insert(e.key.blob.clone(), fp);
        }
        self.fingerprints = next;
    }

    /// Adds the fingerprints of `users`' keys (incremental pass; nothing is forgotten).
    pub(super) fn add_fingerprints(&mut self, desired: &Desired, users: &BTreeSet<String>) {
        for e in users.iter().filter_map(|u| desired.users.get(u)).flatten() {
            if !self.fingerprints.contains_key(&e.key.blob) {
                self.fingerprints
                    .insert(e.key.blob.clone(), e.key.fingerprint());
            }
        }
    }

    fn fingerprint(&self, e: &KeyEntry) -> String {
        self.fingerprints
            .get(&e.key.blob)
            .cloned()
            .unwrap_or_else(|| e.key.fingerprint())
    }

    /// The AuthorizedKeysCommand cache: a file per managed user with keys.
    /// Writes the cache files of `only` (all users when `None` or before the first full write).
    pub(super) fn update_cache(&mut self, desired: &Desired, only: Option<&BTreeSet<String>>) {
        let only = only.filter(|_| self.cache.is_complete());
        let considered = |u: &String| only.is_none_or(|d| d.contains(u));
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (user, us) in &self.state.users {
            if us.keys.is_empty() || !considered(user) {
                continue;
            }
            let Some(entries) = desired.users.get(user) else {
                continue;
            };
            let pairs: Vec<(&KeyEntry, String, String)> = entries
                .iter()
                .map(|e| (e, key_line(e, self.plan_cfg.expiry), self.fingerprint(e)))
                .collect();
            want.insert(user.clone(), cache::render(&pairs));
        }
        self.cache.sync(want, only);
    }

    /// Ready markers for clients (gce-ssh), when guest attributes are enabled.
    /// Publishes the markers of `only` (all users when `None`).
    pub(super) async fn publish(
        &mut self,
        desired: &Desired,
        root: &Root,
        etag: &str,
        only: Option<&BTreeSet<String>>,
    ) {
        let key = "enable-guest-attributes";
        let enabled = match root.instance.attributes.get(key) {
            Some(v) => attribute_is_true(Some(v)),
            None => attribute_is_true(root.project.attributes.get(key)),
        };
        if !enabled {
            return;
        }
        let now = Utc::now();
        let considered = |u: &str| only.is_none_or(|d| d.contains(u));
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (user, us) in &self.state.users {
            if us.keys.is_empty() || !considered(user) {
                continue;
            }
            let fps: Vec<String> = desired
                .users
                .get(user)
                .map(|es| {
                    es.iter()
                        .filter(|e| !e.is_expired(now))
                        .map(|e| self.fingerprint(e))
                        .collect()
                })
                .unwrap_or_default();
            want.insert(user.clone(), ready::encode(&fps));
        }
        match self
            .markers
            .publish(&self.client, &want, etag, considered)
            .await
        {
            Err(e) => self.warn_once("publish".into(), || {
                warn!("publishing ready markers as guest attributes failed: {e}")
            }),
            Ok(()) => {
                self.warned.remove("publish");
            }
        }
    }
}
