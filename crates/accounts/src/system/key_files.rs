//! Writing a user's `~/.ssh/authorized_keys` without ever following a link the user controls.
//!
//! The home's parent directories belong to root and are resolved normally; from the home
//! directory down, every step is an `openat` with `O_NOFOLLOW` relative to the directory fd
//! opened before it. A home not owned by the user, a symlinked `~/.ssh` or `authorized_keys`, or
//! an `authorized_keys` owned by someone else is refused, never "fixed". Writes go through the
//! one atomic, fsync'd writer of gce-agent (temp file + rename in the same directory).

use crate::decide::authorized_keys::render;
use crate::decide::plan::LocalUser;
use gce_agent::fs::{self as afs, FileKind, FsError, WriteOpts};
use std::os::fd::AsFd;

/// Largest authorized_keys we read (a larger one is refused, not truncated).
pub const MAX_AUTHORIZED_KEYS: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("home directory {home} of {user} is not usable: {reason}")]
    Refused {
        user: String,
        home: String,
        reason: String,
    },
    #[error("{user}: {source}")]
    Fs {
        user: String,
        #[source]
        source: FsError,
    },
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
    /// No `~/.ssh` and nothing of ours to remove.
    NothingToDo,
}

/// Make the managed part of `name`'s authorized_keys exactly `lines`, keeping every other line.
pub fn write_keys(name: &str, user: &LocalUser, lines: &[String]) -> Result<Outcome, HomeError> {
    let home_str = user.home.display().to_string();
    let refuse = |reason: String| HomeError::Refused {
        user: name.to_string(),
        home: home_str.clone(),
        reason,
    };
    let fs_err = |source: FsError| HomeError::Fs {
        user: name.to_string(),
        source,
    };

    let (Some(parent), Some(base)) = (
        user.home.parent(),
        user.home.file_name().and_then(|b| b.to_str()),
    ) else {
        return Err(refuse("not an absolute path below a directory".into()));
    };
    if !user.home.is_absolute() {
        return Err(refuse("not absolute".into()));
    }
    // The parent chain is root's (e.g. /home, possibly a symlink to /var/home): resolve it.
    let parent = std::fs::canonicalize(parent).map_err(|e| refuse(format!("parent: {e}")))?;
    let pfd = afs::open_dir_nofollow(&parent).map_err(fs_err)?;
    let hfd = match afs::openat_dir_nofollow(pfd.as_fd(), base) {
        Ok(fd) => fd,
        Err(FsError::SymlinkInPath { .. }) => return Err(refuse("is a symlink".into())),
        Err(e) => {
            if lines.is_empty() {
                return Ok(Outcome::NothingToDo);
            }
            return Err(fs_err(e));
        }
    };
    let hst = nix::sys::stat::fstat(hfd.as_fd()).map_err(|e| refuse(format!("fstat: {e}")))?;
    if hst.st_uid != user.uid {
        return Err(refuse(format!(
            "owned by uid {}, not {}",
            hst.st_uid, user.uid
        )));
    }
    let owner = Some((user.uid, user.gid));
    let sfd = match afs::lstat_at(hfd.as_fd(), ".ssh").map_err(fs_err)? {
        None if lines.is_empty() => return Ok(Outcome::NothingToDo),
        None => afs::mkdirat_nofollow(hfd.as_fd(), ".ssh", 0o700, owner).map_err(fs_err)?,
        Some(st) if st.kind == FileKind::Dir && st.uid == user.uid => {
            afs::openat_dir_nofollow(hfd.as_fd(), ".ssh").map_err(fs_err)?
        }
        Some(st) if st.kind == FileKind::Symlink => {
            return Err(refuse("~/.ssh is a symlink".into()));
        }
        Some(st) if st.kind == FileKind::Dir => {
            return Err(refuse(format!("~/.ssh is owned by uid {}", st.uid)));
        }
        Some(_) => return Err(refuse("~/.ssh is not a directory".into())),
    };
    let existing = match afs::lstat_at(sfd.as_fd(), "authorized_keys").map_err(fs_err)? {
        None => Vec::new(),
        Some(st) if st.kind == FileKind::File && st.uid == user.uid => {
            afs::read_at_nofollow(sfd.as_fd(), "authorized_keys", MAX_AUTHORIZED_KEYS)
                .map_err(fs_err)?
                .unwrap_or_default()
        }
        Some(st) if st.kind == FileKind::Symlink => {
            return Err(refuse("~/.ssh/authorized_keys is a symlink".into()));
        }
        Some(st) if st.kind == FileKind::File => {
            return Err(refuse(format!(
                "~/.ssh/authorized_keys is owned by uid {}",
                st.uid
            )));
        }
        Some(_) => {
            return Err(refuse(
                "~/.ssh/authorized_keys is not a regular file".into(),
            ));
        }
    };
    let new = render(&existing, lines);
    if new == existing {
        return Ok(Outcome::Unchanged);
    }
    let opts = WriteOpts::new(0o600).owner(user.uid, user.gid);
    afs::write_atomic_at(sfd.as_fd(), "authorized_keys", &new, &opts).map_err(fs_err)?;
    Ok(Outcome::Written)
}
