//! Single-instance lock: one running copy of each daemon.
//!
//! `flock(2)` on a file under `/run/gce-guest-agents/`. The kernel drops the lock when the
//! process dies, so a crashed daemon never leaves a stale lock behind (unlike pid files).
//! The file is never deleted: unlinking a flock file races with a newcomer locking the old inode.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where lock files live unless `GCE_AGENT_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/gce-guest-agents";

/// Environment override for the run directory (tests, unprivileged runs).
pub const RUN_DIR_ENV: &str = "GCE_AGENT_RUN_DIR";

/// Errors from [`InstanceLock::acquire`].
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another instance is running (lock {} held)", path.display())]
    Held { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The run directory: `$GCE_AGENT_RUN_DIR` if set and non-empty, else `/run/gce-guest-agents`.
pub fn run_dir() -> PathBuf {
    match std::env::var_os(RUN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_RUN_DIR),
    }
}

/// `<run dir>/<daemon>.lock`.
pub fn default_lock_path(daemon: &str) -> PathBuf {
    run_dir().join(format!("{daemon}.lock"))
}

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Take the lock without waiting, creating the parent directory (0755) and the file (0644)
    /// as needed, and record our pid in it for humans.
    pub fn acquire(path: &Path) -> Result<InstanceLock, LockError> {
        let io = |op, source| LockError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| io("create directory for", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // truncating before we hold the lock would wipe the holder's pid
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io("open", e))?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                });
            }
            Err((_, e)) => return Err(io("lock", e.into())),
        };
        locked.set_len(0).map_err(|e| io("truncate", e))?;
        writeln!(&mut *locked, "{}", std::process::id()).map_err(|e| io("write", e))?;
        Ok(InstanceLock {
            _file: locked,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_until_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/daemon.lock");
        let first = InstanceLock::acquire(&path).expect("first acquire");
        let pid = std::fs::read_to_string(&path).expect("read lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        // A second open file description conflicts with the first even in the same process.
        let err = InstanceLock::acquire(&path).expect_err("second acquire must fail");
        assert!(matches!(&err, LockError::Held { path: p } if *p == path));
        assert_eq!(
            err.to_string(),
            format!("another instance is running (lock {} held)", path.display())
        );
        drop(first);
        let again = InstanceLock::acquire(&path).expect("acquire after drop");
        assert_eq!(again.path(), path);
    }

    #[test]
    fn lock_file_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").expect("write");
        let link = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(
            InstanceLock::acquire(&link),
            Err(LockError::Io { op: "open", .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }

    #[test]
    fn default_path_honours_run_dir_env() {
        let _env = crate::test_env_lock();
        unsafe { std::env::remove_var(RUN_DIR_ENV) };
        assert_eq!(
            default_lock_path("accounts"),
            PathBuf::from("/run/gce-guest-agents/accounts.lock")
        );
        unsafe { std::env::set_var(RUN_DIR_ENV, "/tmp/x") };
        let got = default_lock_path("accounts");
        unsafe { std::env::remove_var(RUN_DIR_ENV) };
        assert_eq!(got, PathBuf::from("/tmp/x/accounts.lock"));
    }
}
