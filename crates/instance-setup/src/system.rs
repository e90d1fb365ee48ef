//! The effects: files rewritten through `gce_agent::fs` (atomic, never through a symbolic link,
//! mode and owner kept), the kernel hostname, SELinux labels, and the programs we run.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gce_agent::cmd::{self, CmdError, RunOpts};
use gce_agent::fs::{self as afs, FileKind, FsError, WriteOpts};

/// Files we read to rewrite are small; anything bigger is not what we think it is.
const MAX_FILE: u64 = 4 << 20;

/// Errors of a file rewrite.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("refusing to rewrite {}: it is a symbolic link (edit its target yourself, or turn this part off)", path.display())]
    Symlink { path: PathBuf },
    #[error("refusing to rewrite {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The parent directory (walked without following links) and the file name of `path`.
pub fn open_parent(path: &Path) -> Result<(OwnedFd, String), FsError> {
    let invalid = || FsError::InvalidName {
        name: path.display().to_string(),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?
        .to_string();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((afs::open_dir_nofollow(parent)?, name))
}

/// Rewrite `path` to `compute(current)` when that differs from what is there; `current` is
/// `None` for a missing file. A symbolic link is refused, never followed or replaced. A new
/// file gets `default_mode` (root-owned); an existing one keeps its mode and owner. Returns
/// whether the file was written.
pub fn rewrite_file(
    path: &Path,
    default_mode: u32,
    compute: impl FnOnce(Option<&[u8]>) -> Vec<u8>,
) -> Result<bool, FileError> {
    let (dir, name) = open_parent(path)?;
    let stat = afs::lstat_at(dir.as_fd(), &name)?;
    let opts = match stat {
        None => WriteOpts::new(default_mode),
        Some(st) if st.kind == FileKind::Symlink => {
            return Err(FileError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Some(st) if st.kind != FileKind::File => {
            return Err(FileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Some(st) => WriteOpts::new(st.mode).owner(st.uid, st.gid),
    };
    let current = match stat {
        None => None,
        Some(_) => afs::read_at_nofollow(dir.as_fd(), &name, MAX_FILE)?,
    };
    let wanted = compute(current.as_deref());
    if current.as_deref() == Some(wanted.as_slice()) {
        return Ok(false);
    }
    afs::write_atomic_at(dir.as_fd(), &name, &wanted, &opts)?;
    Ok(true)
}

/// Read a small file without following links; `None` when missing.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    afs::read_nofollow(path, MAX_FILE)
}

/// Set the kernel hostname (this UTS namespace's) to `name` unless it already is; returns
/// whether it changed.
pub fn set_kernel_hostname(name: &str) -> Result<bool, nix::Error> {
    let current = nix::unistd::gethostname()?;
    if current.to_str() == Some(name) {
        return Ok(false);
    }
    nix::unistd::sethostname(name)?;
    Ok(true)
}

/// SELinux labels: files we create by rename get the directory's default label (`etc_t`), not
/// the one policy gives the path (`sshd_key_t`, `net_conf_t`), so each is restored afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selinux {
    pub enabled: bool,
    pub restorecon: String,
}

/// Where selinuxfs is mounted when SELinux is enabled.
pub const SELINUX_ENFORCE: &str = "/sys/fs/selinux/enforce";

impl Selinux {
    /// Enabled when selinuxfs is mounted (as libselinux decides).
    pub fn detect() -> Selinux {
        Selinux {
            enabled: Path::new(SELINUX_ENFORCE).exists(),
            restorecon: "restorecon".to_string(),
        }
    }

    pub fn disabled() -> Selinux {
        Selinux {
            enabled: false,
            restorecon: "restorecon".to_string(),
        }
    }

    /// `restorecon -F PATHS…`; a failure is logged (the file is in place either way).
    pub async fn restore(&self, paths: &[PathBuf]) {
        if !self.enabled || paths.is_empty() {
            return;
        }
        let mut argv = vec![self.restorecon.clone(), "-F".to_string()];
        argv.extend(paths.iter().map(|p| p.display().to_string()));
        match cmd::run(&argv, &RunOpts::with_timeout(Duration::from_secs(30))).await {
            Ok(_) => {}
            Err(CmdError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(
                    "SELinux is enabled but restorecon is missing (install policycoreutils): labels of {} not restored",
                    argv[2..].join(" ")
                )
            }
            Err(e) => tracing::warn!("restoring SELinux labels: {e}"),
        }
    }
}
