//! The switch's effects on the host: probing what is installed, editing files through the one
//! atomic, `O_NOFOLLOW` writer (keeping each file's mode and owner), the sudoers directories,
//! and reloading services (systemd when it runs, else sshd's pid file).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gce_agent::cmd::{self, CmdError, RunOpts};
use gce_agent::fs::{self as afs, FileKind, FsError, WriteOpts};
use nix::errno::Errno;
use nix::unistd::UnlinkatFlags;

use crate::listeners;
use crate::plan::{Paths, Probe};

/// Config files are small; anything bigger is not what we think it is.
const MAX_CONFIG: u64 = 4 << 20;
/// A PAM module or program we only scan for a symbol name.
const MAX_MODULE: u64 = 64 << 20;
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reload may take before sshd listens again (a re-exec takes milliseconds).
pub const RELISTEN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{}: does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{}: is a symbolic link; not editing through it (configuration management owns it?)", .0.display())]
    Symlink(PathBuf),
    #[error("{}: not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("{}: not UTF-8 text; not editing it", .0.display())]
    NotText(PathBuf),
    #[error("{}: holds more than files (left in place)", .0.display())]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{what}: {error}")]
    Io { what: String, error: String },
}

impl HostError {
    /// Errors that a retry cannot fix (the admin has to act); logged once, not retried.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HostError::Missing(_)
                | HostError::Symlink(_)
                | HostError::NotAFile(_)
                | HostError::NotText(_)
                | HostError::NotEmpty(_)
                | HostError::Fs(
                    FsError::SymlinkInPath { .. }
                        | FsError::NotADirectory { .. }
                        | FsError::NotARegularFile { .. }
                        | FsError::TooLarge { .. }
                )
        )
    }
}

fn split(path: &Path) -> Result<(std::os::fd::OwnedFd, &str), HostError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| HostError::NotAFile(path.to_path_buf()))?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match afs::open_dir_nofollow(parent) {
        Ok(fd) => Ok((fd, name)),
        Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(HostError::Missing(parent.to_path_buf()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Rewrites the text file `path` as `edit(current)`; returns whether it changed. The file must
/// exist and be a regular file (a symbolic link is refused, never followed or replaced); the
/// new content keeps the old mode and owner. With `dry_run` nothing is written.
pub fn edit_file(
    path: &Path,
    dry_run: bool,
    edit: impl FnOnce(&str) -> String,
) -> Result<bool, HostError> {
    let (dir, name) = split(path)?;
    let Some(st) = afs::lstat_at(dir.as_fd(), name)? else {
        return Err(HostError::Missing(path.to_path_buf()));
    };
    match st.kind {
        FileKind::File => {}
        FileKind::Symlink => return Err(HostError::Symlink(path.to_path_buf())),
        _ => return Err(HostError::NotAFile(path.to_path_buf())),
    }
    let bytes = afs::read_at_nofollow(dir.as_fd(), name, MAX_CONFIG)?
        .ok_or_else(|| HostError::Missing(path.to_path_buf()))?;
    let text = String::from_utf8(bytes).map_err(|_| HostError::NotText(path.to_path_buf()))?;
    let new = edit(&text);
    if new == text {
        return Ok(false);
    }
    if !dry_run {
        let opts = WriteOpts::new(st.mode).owner(st.uid, st.gid);
        afs::write_atomic_at(dir.as_fd(), name, new.as_bytes(), &opts)?;
    }
    Ok(true)
}

/// The content of a regular file, `None` if absent; links are refused.
pub fn read_text(path: &Path) -> Result<Option<String>, HostError> {
    let (dir, name) = split(path)?;
    match afs::lstat_at(dir.as_fd(), name)? {
        None => return Ok(None),
        Some(st) if st.kind == FileKind::Symlink => {
            return Err(HostError::Symlink(path.to_path_buf()));
        }
        Some(st) if st.kind != FileKind::File => {
            return Err(HostError::NotAFile(path.to_path_buf()));
        }
        Some(_) => {}
    }
    let bytes = afs::read_at_nofollow(dir.as_fd(), name, MAX_CONFIG)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// What kind of thing is at `path` (not following a final link); `None` if nothing.
pub fn kind_of(path: &Path) -> Result<Option<FileKind>, HostError> {
    match split(path) {
        Ok((dir, name)) => Ok(afs::lstat_at(dir.as_fd(), name)?.map(|s| s.kind)),
        Err(HostError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), HostError> {
    let (dir, name) = split(path)?;
    afs::write_atomic_at(dir.as_fd(), name, contents, &WriteOpts::new(mode))?;
    Ok(())
}

pub fn remove_file(path: &Path) -> Result<bool, HostError> {
    let (dir, name) = match split(path) {
        Ok(x) => x,
        Err(HostError::Missing(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(afs::remove_at(dir.as_fd(), name)?)
}

/// A root-owned directory with `mode` at `path` (created if missing; an existing one gets its
/// mode back, as Google's agent does); a link there is refused.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), HostError> {
    let (dir, name) = split(path)?;
    afs::mkdirat_nofollow(dir.as_fd(), name, mode, None)?;
    Ok(())
}

/// Removes the directory `path` and the plain files or links directly in it (the package's
/// per-user files). A sub-directory means someone else put things there: it is left alone.
pub fn remove_dir(path: &Path) -> Result<bool, HostError> {
    let (parent, name) = match split(path) {
        Ok(x) => x,
        Err(HostError::Missing(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    match afs::lstat_at(parent.as_fd(), name)? {
        None => return Ok(false),
        Some(st) if st.kind != FileKind::Dir => return Err(HostError::NotAFile(path.into())),
        Some(_) => {}
    }
    let dir = afs::openat_dir_nofollow(parent.as_fd(), name)?;
    let io = |e: Errno| HostError::Io {
        what: format!("listing {}", path.display()),
        error: e.to_string(),
    };
    let mut names = Vec::new();
    {
        let dup = dir.try_clone().map_err(|e| HostError::Io {
            what: path.display().to_string(),
            error: e.to_string(),
        })?;
        let mut listing = nix::dir::Dir::from_fd(dup).map_err(io)?;
        for entry in listing.iter() {
            let entry = entry.map_err(io)?;
            let n = entry.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
    }
    for n in &names {
        match afs::lstat_at(dir.as_fd(), n)?.map(|s| s.kind) {
            Some(FileKind::Dir) => return Err(HostError::NotEmpty(path.into())),
            Some(_) => {
                afs::remove_at(dir.as_fd(), n)?;
            }
            None => {}
        }
    }
    match nix::unistd::unlinkat(parent.as_fd(), name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(Errno::ENOTEMPTY) => Err(HostError::NotEmpty(path.into())),
        Err(e) => Err(HostError::Io {
            what: format!("removing {}", path.display()),
            error: e.to_string(),
        }),
    }
}

/// Whether the shared object at `path` defines `pam_sm_acct_mgmt`. A module that lacks it makes
/// libpam fail the `account` stack, and with `default=die` nobody logs in (guest-oslogin #123);
/// PAM modules never import that name, so its presence in the file's string table means it is
/// exported.
fn implements_account(path: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut bytes = Vec::new();
    if file.take(MAX_MODULE).read_to_end(&mut bytes).is_err() {
        return false;
    }
    let needle = b"pam_sm_acct_mgmt\0";
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// What of Google's OS Login package is installed. Reads only; programs and modules are
/// looked up where sshd and libpam will look for them.
pub fn probe(paths: &Paths) -> Probe {
    let exists = |p: &Path| p.is_file();
    let module = |name: &str| {
        paths
            .pam_module_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    Probe {
        package: exists(&paths.authorized_keys),
        keys_sk: exists(&paths.authorized_keys_sk),
        principals: exists(&paths.authorized_principals),
        pam_login_account: module("pam_oslogin_login.so").is_some_and(|p| implements_account(&p)),
        pam_admin_account: module("pam_oslogin_admin.so").is_some_and(|p| implements_account(&p)),
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Which of `units` systemd has loaded, by their real names (an alias such as Debian's
/// `sshd.service` → `ssh.service` counts once).
async fn loaded_units(units: &[&str]) -> Result<Vec<String>, HostError> {
    let mut a = vec!["systemctl", "show", "--property=Id,LoadState"];
    a.extend_from_slice(units);
    let out = cmd::run(&argv(&a), &RunOpts::with_timeout(SYSTEMCTL_TIMEOUT)).await?;
    Ok(parse_loaded(&out.stdout_lossy()))
}

/// `systemctl show -p Id,LoadState` output (one block per unit) → loaded unit ids, deduplicated.
fn parse_loaded(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut loaded = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("Id=") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("LoadState=") {
                loaded = v.trim() == "loaded";
            }
        }
        if let Some(id) = id.filter(|i| loaded && !i.is_empty())
            && !found.contains(&id)
        {
            found.push(id);
        }
    }
    found
}

pub fn systemd_running(paths: &Paths) -> bool {
    paths.systemd_marker.is_dir()
}

/// Makes sshd read its configuration again. Under systemd: `try-reload-or-restart` of the ssh
/// unit(s) (a stopped sshd stays stopped), queued with `--no-block`: at boot the accounts daemon
/// runs before ssh.service, whose start job waits for it, and waiting for our job in turn would
/// deadlock. Elsewhere SIGHUP to the pid in sshd's pid file. Then, with `wait` and when an sshd
/// was listening, waits (at most [`RELISTEN_TIMEOUT`]) until it listens on fresh sockets, so that
/// a login tried once the switch is reported is not refused mid-reload. Returns what was done,
/// for the log.
pub async fn reload_sshd(paths: &Paths, wait: bool) -> Result<String, HostError> {
    let running = running_sshd(paths);
    let before = running
        .as_ref()
        .map(|&pid| listeners::listen_table(pid))
        .unwrap_or_default();
    let systemd = systemd_running(paths);
    let what = if systemd {
        let units = loaded_units(&["ssh.service", "sshd.service"]).await?;
        if units.is_empty() {
            return Ok("no ssh unit loaded".into());
        }
        let mut a = vec!["systemctl", "--no-block", "try-reload-or-restart"];
        a.extend(units.iter().map(String::as_str));
        cmd::run(&argv(&a), &RunOpts::with_timeout(SYSTEMCTL_TIMEOUT)).await?;
        format!("systemctl try-reload-or-restart {}", units.join(" "))
    } else {
        let pid = match running {
            Ok(pid) => pid,
            Err(why) => return Ok(why),
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| HostError::Io {
            what: format!("SIGHUP to sshd {pid}"),
            error: e.to_string(),
        })?;
        format!("SIGHUP to sshd {pid}")
    };
    if before.is_empty() {
        // No sshd daemon (socket activation, or stopped), or no listener: nothing to wait for.
        return Ok(what);
    }
    if !wait {
        return Ok(format!("{what} (runs once this daemon has started)"));
    }
    // Socket activation (Ubuntu's ssh.socket): systemd holds the listening socket across
    // sshd's re-exec, so connections queue instead of being refused, and nothing changes that
    // could be waited for.
    if systemd && socket_activated().await {
        return Ok(format!("{what} (ssh.socket holds the listener)"));
    }
    let again =
        listeners::wait_relistening(&before, || running_sshd(paths).ok(), RELISTEN_TIMEOUT).await;
    Ok(match again {
        Some(took) => format!("{what}; listening again after {} ms", took.as_millis()),
        None => format!(
            "{what}; not listening on fresh sockets after {} s (still reloading?)",
            RELISTEN_TIMEOUT.as_secs()
        ),
    })
}

/// Whether an ssh socket unit is active (`systemctl is-active` is true when any is).
async fn socket_activated() -> bool {
    let a = [
        "systemctl",
        "is-active",
        "--quiet",
        "ssh.socket",
        "sshd.socket",
    ];
    cmd::run(&argv(&a), &RunOpts::with_timeout(SYSTEMCTL_TIMEOUT))
        .await
        .is_ok()
}

/// The pid of the running sshd from its pid file, or why there is none. A stale pid file must
/// not make us signal whatever now has that pid: the process must be sshd.
fn running_sshd(paths: &Paths) -> Result<i32, String> {
    let Some(text) = read_text(&paths.sshd_pid).ok().flatten() else {
        return Err("sshd is not running (no pid file)".into());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Err(format!("{}: not a pid", paths.sshd_pid.display()));
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !comm.trim().starts_with("sshd") {
        return Err(format!(
            "pid {pid} from {} is not sshd",
            paths.sshd_pid.display()
        ));
    }
    Ok(pid)
}

/// `systemctl try-restart` of nscd/unscd (their caches hold lookups made before the NSS
/// change); nothing without systemd.
pub async fn restart_name_caches(paths: &Paths) -> Result<String, HostError> {
    if !systemd_running(paths) {
        return Ok("no systemd: name caches not restarted".into());
    }
    let units = loaded_units(&["nscd.service", "unscd.service"]).await?;
    if units.is_empty() {
        return Ok("no nscd/unscd".into());
    }
    let mut a = vec!["systemctl", "--no-block", "try-restart"];
    a.extend(units.iter().map(String::as_str));
    cmd::run(&argv(&a), &RunOpts::with_timeout(SYSTEMCTL_TIMEOUT)).await?;
    Ok(format!("systemctl try-restart {}", units.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tempdir() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().canonicalize().expect("canonicalize");
        (d, p)
    }

    #[test]
    fn edit_keeps_mode_and_refuses_links_and_binary() {
        let (_d, p) = tempdir();
        let f = p.join("sshd_config");
        std::fs::write(&f, "Port 22\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(edit_file(&f, true, |t| format!("{t}X\n")).unwrap());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "Port 22\n", "dry run");
        assert!(edit_file(&f, false, |t| format!("{t}X\n")).unwrap());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "Port 22\nX\n");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(
            !edit_file(&f, false, |t| t.to_string()).unwrap(),
            "unchanged"
        );

        std::fs::write(p.join("real"), "passwd: files\n").unwrap();
        symlink(p.join("real"), p.join("nsswitch.conf")).unwrap();
        let err = edit_file(&p.join("nsswitch.conf"), false, |t| format!("{t}x")).unwrap_err();
        assert!(matches!(err, HostError::Symlink(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(p.join("real")).unwrap(),
            "passwd: files\n"
        );
        assert!(
            std::fs::symlink_metadata(p.join("nsswitch.conf"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link itself is not replaced either"
        );
        std::fs::write(p.join("bin"), [0xff, 0xfe, 0]).unwrap();
        assert!(matches!(
            edit_file(&p.join("bin"), false, |t| t.to_string()).unwrap_err(),
            HostError::NotText(_)
        ));
        let missing = edit_file(&p.join("nope"), false, |t| t.to_string()).unwrap_err();
        assert!(matches!(missing, HostError::Missing(_)) && missing.is_permanent());
    }

    #[test]
    fn dirs_are_created_and_removed_with_their_files_only() {
        let (_d, p) = tempdir();
        let d = p.join("google-sudoers.d");
        ensure_dir(&d, 0o750).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        std::fs::write(d.join("alice"), "alice ALL=(ALL) NOPASSWD: ALL\n").unwrap();
        symlink("/etc/passwd", d.join("link")).unwrap();
        assert!(remove_dir(&d).unwrap());
        assert!(!d.exists());
        assert!(
            std::path::Path::new("/etc/passwd").exists(),
            "link target untouched"
        );
        assert!(!remove_dir(&d).unwrap(), "already gone");
        ensure_dir(&d, 0o750).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        assert!(matches!(
            remove_dir(&d).unwrap_err(),
            HostError::NotEmpty(_)
        ));
        assert!(d.join("sub").exists());
        symlink(&p, p.join("lnk")).unwrap();
        assert!(
            ensure_dir(&p.join("lnk"), 0o750).is_err(),
            "a link is refused"
        );
    }

    #[test]
    fn account_management_is_detected_by_symbol() {
        let (_d, p) = tempdir();
        std::fs::write(
            p.join("with.so"),
            b"\x7fELF...pam_sm_authenticate\0pam_sm_acct_mgmt\0..",
        )
        .unwrap();
        std::fs::write(
            p.join("without.so"),
            b"\x7fELF...pam_sm_authenticate\0pam_sm_acct_mgmt_x",
        )
        .unwrap();
        assert!(implements_account(&p.join("with.so")));
        assert!(!implements_account(&p.join("without.so")));
        assert!(!implements_account(&p.join("missing.so")));
    }

    #[test]
    fn probe_looks_where_sshd_and_libpam_do() {
        let (_d, p) = tempdir();
        let sec = p.join("security");
        std::fs::create_dir(&sec).unwrap();
        std::fs::write(p.join("google_authorized_keys"), "#!/bin/sh\n").unwrap();
        std::fs::write(sec.join("pam_oslogin_admin.so"), b"pam_sm_acct_mgmt\0").unwrap();
        std::fs::write(sec.join("pam_oslogin_login.so"), b"pam_sm_authenticate\0").unwrap();
        let paths = Paths {
            authorized_keys: p.join("google_authorized_keys"),
            authorized_keys_sk: p.join("none"),
            authorized_principals: p.join("none"),
            pam_module_dirs: vec![p.join("nowhere"), sec],
            ..Paths::default()
        };
        assert_eq!(
            probe(&paths),
            Probe {
                package: true,
                keys_sk: false,
                principals: false,
                pam_login_account: false,
                pam_admin_account: true,
            }
        );
    }

    #[test]
    fn systemctl_show_parsing() {
        let debian = "Id=ssh.service\nLoadState=loaded\n\nId=ssh.service\nLoadState=loaded\n";
        assert_eq!(parse_loaded(debian), ["ssh.service"]);
        let rhel = "Id=ssh.service\nLoadState=not-found\n\nId=sshd.service\nLoadState=loaded\n";
        assert_eq!(parse_loaded(rhel), ["sshd.service"]);
        assert!(parse_loaded("Id=nscd.service\nLoadState=not-found\n").is_empty());
    }
}
