//! Publishes the ready markers clients wait for (`gce-ssh`): guest attribute
//! `gce-agent/ssh-ready-<user>` with the fingerprints of that user's valid keys, and
//! `gce-agent/accounts-etag` once every marker of a snapshot is out. Only changed markers are
//! written; markers of users who no longer have keys are deleted.

use gce_metadata::{Client, ready};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Markers {
    /// user → value, as the metadata server has it.
    published: BTreeMap<String, String>,
    etag: String,
}

impl Markers {
    /// Publishes `want` (user → encoded fingerprints) for the users `considered` selects, then
    /// `etag`. Returns the last failure, if any (the next call retries what failed).
    pub async fn publish(
        &mut self,
        client: &Client,
        want: &BTreeMap<String, String>,
        etag: &str,
        considered: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let mut failed = None;
        for (user, value) in want {
            if self.published.get(user) != Some(value) {
                match client
                    .put_guest_attribute(ready::NAMESPACE, &ready::user_key(user), value)
                    .await
                {
                    Ok(()) => {
                        self.published.insert(user.clone(), value.clone());
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|u| considered(u) && !want.contains_key(*u))
            .cloned()
            .collect();
        for user in gone {
            match client
                .delete_guest_attribute(ready::NAMESPACE, &ready::user_key(&user))
                .await
            {
                Ok(()) => {
                    self.published.remove(&user);
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if failed.is_none() && self.etag != etag {
            match client
                .put_guest_attribute(ready::NAMESPACE, ready::ETAG_KEY, etag)
                .await
            {
                Ok(()) => self.etag = etag.to_string(),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
