//! Writes the root-owned cache that `gce-authorized-keys` (sshd's AuthorizedKeysCommand) reads:
//! one file per user with keys, in the format of [`crate::decide::cache`], plus a `.complete`
//! marker once a full set has been written (without it the command asks the metadata server).
//! Only what changed is rewritten; files of users who no longer have keys are removed.

use crate::decide::cache::COMPLETE;
use gce_agent::fs::{self as afs, WriteOpts};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use tracing::error;

pub struct KeyCache {
    dir: PathBuf,
    /// What each user's file holds, as last written.
    written: BTreeMap<String, String>,
    /// A full set is on disk (and `.complete` with it).
    complete: bool,
    /// The directory could not be created: said once.
    dir_failed: bool,
}

impl KeyCache {
    pub fn new(dir: PathBuf) -> KeyCache {
        KeyCache {
            dir,
            written: BTreeMap::new(),
            complete: false,
            dir_failed: false,
        }
    }

    /// Whether a partial update is possible (a full set was written before).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Makes the files of `only` (every user when `None`) equal to `want` (user → file text);
    /// a user of `only` missing from `want` loses its file. A full sync also removes leftovers
    /// of a past run. An empty full sync leaves no key at all (OS Login, or no metadata keys).
    pub fn sync(&mut self, want: BTreeMap<String, String>, only: Option<&BTreeSet<String>>) {
        if only.is_none() && want == self.written && self.complete {
            return;
        }
        let dir = self.dir.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            if !std::mem::replace(&mut self.dir_failed, true) {
                error!("cannot create {}: {e}", dir.display());
            }
            return;
        }
        self.dir_failed = false;
        let dfd = match afs::open_dir_nofollow(&dir) {
            Ok(fd) => fd,
            Err(e) => {
                error!("cache directory {}: {e}", dir.display());
                return;
            }
        };
        let opts = WriteOpts::new(0o644).owner(0, 0);
        let mut ok = true;
        for (user, text) in &want {
            if (self.written.get(user) != Some(text) || !self.complete)
                && let Err(e) = afs::write_atomic_at(dfd.as_fd(), user, text.as_bytes(), &opts)
            {
                error!(USER = %user, "cache write failed: {e}");
                ok = false;
            }
        }
        if let Some(only) = only {
            for user in only {
                if !want.contains_key(user) && self.written.remove(user).is_some() {
                    let _ = afs::remove_at(dfd.as_fd(), user);
                }
            }
            self.written.extend(want);
            self.complete = ok;
            return;
        }
        // Remove files of users who no longer have keys (including leftovers of a past run).
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !want.contains_key(&name) {
                    let _ = afs::remove_at(dfd.as_fd(), &name);
                }
            }
        }
        if ok && !self.complete {
            ok = afs::write_atomic_at(dfd.as_fd(), COMPLETE, b"", &opts).is_ok();
        }
        self.complete = ok;
        self.written = want;
    }
}
