//! SSH host keys, the effects: what is in the host key directory, and making one key with the
//! real `ssh-keygen` (as Google's agents do: sshd's own tool knows every format and distro policy
//! it expects, and no crypto code enters this binary; it only runs on a first boot, so the cost of
//! a process does not touch the ≤ 20 ms of an ordinary boot).
//!
//! A key is never missing or half-written, even if we are killed: `ssh-keygen` writes into a
//! private directory (0700) beside the keys; the pair is then read back and each file replaced
//! through the one atomic writer (temp file, fsync, rename over the old key, fsync of the
//! directory) — private key first, public key second, so a public file that carries this
//! instance's marker always has its private key in place. Until the rename sshd's old key stays
//! valid; after it, the new one is complete. Leftovers of a killed run are swept on the next one.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gce_agent::cmd::{self, CmdError, RunOpts};
use gce_agent::fs::{self as afs, FileKind, FsError, WriteOpts};
use nix::unistd::UnlinkatFlags;

use crate::hostkeys::{KeyState, PublicKey, key_file, parse_public, pub_file, type_of_file};

const TEMP_PREFIX: &str = ".gce-keygen-";
/// A key file is a few KiB; anything larger is not a key.
const MAX_KEY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error(
        "ssh-keygen not found: install openssh-client (Debian, Ubuntu) or openssh (Fedora, EL)"
    )]
    MissingTool,
    #[error("{0}")]
    Keygen(CmdError),
    #[error("ssh-keygen left no usable {what} in {}", dir.display())]
    BadOutput { what: &'static str, dir: PathBuf },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The host key directory (`[InstanceSetup] host_key_dir`), opened without following links.
pub struct KeyDir {
    pub path: PathBuf,
    fd: OwnedFd,
}

/// Names in a directory fd (through /proc, so the directory is the one we opened).
fn names_in(dir: BorrowedFd<'_>) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        if let Some(n) = entry?.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn unlink(dir: BorrowedFd<'_>, name: &str, flag: UnlinkatFlags) {
    match nix::unistd::unlinkat(dir, name, flag) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!("cannot remove leftover {name}: {e}"),
    }
}

impl KeyDir {
    pub fn open(path: &Path) -> Result<KeyDir, FsError> {
        Ok(KeyDir {
            path: path.to_path_buf(),
            fd: afs::open_dir_nofollow(path)?,
        })
    }

    /// The state of every type that has a private key file, plus the `also` types.
    pub fn scan(&self, also: &[String]) -> Result<BTreeMap<String, KeyState>, FsError> {
        let names = names_in(self.fd.as_fd()).map_err(|source| FsError::Io {
            op: "list",
            path: self.path.clone(),
            source,
        })?;
        let mut types: Vec<String> = names
            .iter()
            .filter_map(|n| type_of_file(n))
            .map(str::to_string)
            .collect();
        types.extend(also.iter().cloned());
        let mut out = BTreeMap::new();
        for t in types {
            let private = afs::lstat_at(self.fd.as_fd(), &key_file(&t))?
                .is_some_and(|st| st.kind == FileKind::File);
            let public = self.public_key(&t);
            out.insert(t, KeyState { private, public });
        }
        Ok(out)
    }

    /// The parsed `.pub` of `ktype`; `None` when missing, a link, unreadable or malformed.
    pub fn public_key(&self, ktype: &str) -> Option<PublicKey> {
        match afs::read_at_nofollow(self.fd.as_fd(), &pub_file(ktype), MAX_KEY) {
            Ok(Some(text)) => parse_public(&text),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("host key {}: {e}", pub_file(ktype));
                None
            }
        }
    }

    /// Remove what a killed run left: our private keygen directories and the atomic writer's
    /// temp files of host keys (both hold key material, and only we create them).
    pub fn sweep_leftovers(&self) {
        let Ok(names) = names_in(self.fd.as_fd()) else {
            return;
        };
        for name in names {
            if name.starts_with(TEMP_PREFIX) {
                tracing::info!("removing {} left by an interrupted run", name);
                self.remove_temp_dir(&name);
            } else if name.starts_with(".ssh_host_")
                && name.contains("_key")
                && name.contains(".tmp-")
            {
                tracing::info!("removing {} left by an interrupted write", name);
                unlink(self.fd.as_fd(), &name, UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    fn remove_temp_dir(&self, name: &str) {
        if let Ok(dir) = afs::openat_dir_nofollow(self.fd.as_fd(), name) {
            for entry in names_in(dir.as_fd()).unwrap_or_default() {
                unlink(dir.as_fd(), &entry, UnlinkatFlags::NoRemoveDir);
            }
        }
        unlink(self.fd.as_fd(), name, UnlinkatFlags::RemoveDir);
    }

    /// Make a new `ktype` key pair with `comment` and put it in place of the old one; returns
    /// the paths written (private, public).
    pub async fn generate(
        &self,
        ktype: &str,
        comment: &str,
        timeout: Duration,
    ) -> Result<[PathBuf; 2], KeygenError> {
        let tmp_name = format!("{TEMP_PREFIX}{}-{ktype}", std::process::id());
        self.remove_temp_dir(&tmp_name);
        let tmp = afs::mkdirat_nofollow(self.fd.as_fd(), &tmp_name, 0o700, None)?;
        let result = self
            .generate_in(&tmp, &tmp_name, ktype, comment, timeout)
            .await;
        self.remove_temp_dir(&tmp_name);
        result
    }

    async fn generate_in(
        &self,
        tmp: &OwnedFd,
        tmp_name: &str,
        ktype: &str,
        comment: &str,
        timeout: Duration,
    ) -> Result<[PathBuf; 2], KeygenError> {
        let tmp_path = self.path.join(tmp_name);
        let argv: Vec<String> = [
            "ssh-keygen",
            "-q",
            "-t",
            ktype,
            "-N",
            "",
            "-C",
            comment,
            "-f",
            &tmp_path.join(key_file(ktype)).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match cmd::run(&argv, &RunOpts::with_timeout(timeout)).await {
            Ok(_) => {}
            Err(CmdError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(KeygenError::MissingTool);
            }
            Err(e) => return Err(KeygenError::Keygen(e)),
        }
        let bad = |what| KeygenError::BadOutput {
            what,
            dir: tmp_path.clone(),
        };
        let private = afs::read_at_nofollow(tmp.as_fd(), &key_file(ktype), MAX_KEY)?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("private key"))?;
        let public = afs::read_at_nofollow(tmp.as_fd(), &pub_file(ktype), MAX_KEY)?
            .filter(|p| parse_public(p).is_some_and(|k| k.comment == comment))
            .ok_or_else(|| bad("public key"))?;
        // Private first: a public file with this instance's marker implies its key is in place.
        afs::write_atomic_at(
            self.fd.as_fd(),
            &key_file(ktype),
            &private,
            &WriteOpts::new(0o600),
        )?;
        afs::write_atomic_at(
            self.fd.as_fd(),
            &pub_file(ktype),
            &public,
            &WriteOpts::new(0o644),
        )?;
        Ok([
            self.path.join(key_file(ktype)),
            self.path.join(pub_file(ktype)),
        ])
    }
}
