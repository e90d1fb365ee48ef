//! The switch's record on disk: the intent written before the first edit (so a start after a
//! crash finishes the job) and every path this agent created (so turning OS Login off removes
//! exactly those, and never anything it did not create).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gce_agent::fs::{self as afs, WriteOpts};
use serde::{Deserialize, Serialize};

use crate::settings::Settings;

const VERSION: u32 = 1;
const MAX_LEN: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    #[serde(default)]
    pub version: u32,
    /// A switch to these settings is under way: set before the first edit, cleared after the
    /// last step.
    #[serde(default)]
    pub pending: Option<Settings>,
    /// The settings of the last switch that finished.
    #[serde(default)]
    pub applied: Option<Settings>,
    /// Files and directories that did not exist before this agent created them.
    #[serde(default)]
    pub created: BTreeSet<PathBuf>,
}

impl Journal {
    /// The journal at `path`; a missing file is an empty journal, an unreadable or corrupt
    /// one too (with the reason, for one log line): the edits themselves are recomputed from
    /// the files, so nothing is lost but the list of what we created.
    pub fn load(path: &Path) -> (Journal, Option<String>) {
        match afs::read_nofollow(path, MAX_LEN) {
            Ok(None) => (Journal::default(), None),
            Ok(Some(bytes)) => match serde_json::from_slice::<Journal>(&bytes) {
                Ok(j) => (j, None),
                Err(e) => (
                    Journal::default(),
                    Some(format!(
                        "{}: not a valid journal ({e}); starting afresh",
                        path.display()
                    )),
                ),
            },
            Err(e) => (Journal::default(), Some(format!("{e}; starting afresh"))),
        }
    }

    pub fn save(&mut self, path: &Path) -> Result<(), afs::FsError> {
        self.version = VERSION;
        let mut text = serde_json::to_vec_pretty(self).expect("journal serialises");
        text.push(b'\n');
        afs::write_atomic(path, &text, &WriteOpts::new(0o600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_forgives_corruption() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().canonicalize().expect("canon").join("j.json");
        assert_eq!(Journal::load(&p), (Journal::default(), None));
        let mut j = Journal {
            pending: Some(Settings {
                enabled: true,
                ..Settings::default()
            }),
            ..Journal::default()
        };
        j.created.insert("/var/google-users.d".into());
        j.save(&p).expect("save");
        let (back, warn) = Journal::load(&p);
        assert_eq!(warn, None);
        assert_eq!(back, j);
        std::fs::write(&p, "{not json").expect("write");
        let (back, warn) = Journal::load(&p);
        assert_eq!(back, Journal::default());
        assert!(warn.expect("warning").contains("not a valid journal"));
    }
}
