//! The one way to read and write files: atomic and symlink-safe.
//!
//! Every path is walked from `/` (or the cwd) one component at a time with `O_NOFOLLOW`, so no
//! component may be a symbolic link; files are then created relative to the directory fd. The
//! anchors got this wrong: Python copied a /tmp file over the target after an `islink` check
//! (racy), the Go agent opened a fixed temp name without `O_NOFOLLOW` and chowned through links.
//! Writing goes temp file → `fchown`/`fchmod` → `fsync` → `renameat` → fsync the directory, so a
//! reader sees either the old or the new content, and a crash never leaves a half-written file.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

/// Errors from this module. `path` is the best description available: the full path when the
/// directory fd's path can be recovered, else the name.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("refusing to follow symbolic link at {}", path.display())]
    SymlinkInPath { path: PathBuf },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotARegularFile { path: PathBuf },
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("invalid file name {name:?} (must be one non-empty path component)")]
    InvalidName { name: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, FsError>;

/// How to create a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOpts {
    /// Permission bits (e.g. `0o600`), applied with `fchmod` so the umask does not matter.
    pub mode: u32,
    /// `(uid, gid)` to `fchown` the new file to; `None` keeps the caller's.
    pub owner: Option<(u32, u32)>,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            mode: 0o644,
            owner: None,
        }
    }
}

impl WriteOpts {
    pub fn new(mode: u32) -> Self {
        WriteOpts { mode, owner: None }
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }
}

/// What a directory entry is, without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// `lstat` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub kind: FileKind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`& 0o7777`).
    pub mode: u32,
    pub size: u64,
}

fn io_err(op: &'static str, path: impl Into<PathBuf>, e: Errno) -> FsError {
    FsError::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}

/// The path a directory fd refers to, for error messages only (never used to open anything).
fn describe(dir: BorrowedFd<'_>, name: &str) -> PathBuf {
    let link = format!("/proc/self/fd/{}", dir.as_raw_fd());
    match std::fs::read_link(link) {
        Ok(p) => p.join(name),
        Err(_) => PathBuf::from(name),
    }
}

/// A name usable relative to a directory fd: exactly one normal component.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn kind_of(mode: libc::mode_t) -> FileKind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn stat_of(st: &libc::stat) -> FileStat {
    FileStat {
        kind: kind_of(st.st_mode),
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        size: u64::try_from(st.st_size).unwrap_or(0),
    }
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    // Not O_PATH: the fd is fsync'ed after a rename, which O_PATH fds do not allow.
    .union(OFlag::O_RDONLY);

/// Open one directory below `parent` without following a link at `name`.
fn open_component(parent: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOFOLLOW on a link gives ELOOP; O_DIRECTORY may report ENOTDIR first, so look.
        Err(Errno::ELOOP) => Err(FsError::SymlinkInPath {
            path: shown.to_path_buf(),
        }),
        Err(Errno::ENOTDIR) => {
            let is_link = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map(|st| kind_of(st.st_mode) == FileKind::Symlink)
                .unwrap_or(false);
            if is_link {
                Err(FsError::SymlinkInPath {
                    path: shown.to_path_buf(),
                })
            } else {
                Err(FsError::NotADirectory {
                    path: shown.to_path_buf(),
                })
            }
        }
        Err(e) => Err(io_err("open directory", shown, e)),
    }
}

/// Open the directory `path`, refusing a symbolic link in any component. Relative paths are
/// walked from the current directory the same way.
pub fn open_dir_nofollow(path: &Path) -> Result<OwnedFd> {
    if path.as_os_str().is_empty() {
        return Err(FsError::InvalidName {
            name: String::new(),
        });
    }
    let mut shown = PathBuf::new();
    let mut cur: OwnedFd = if path.is_absolute() {
        shown.push("/");
        openat(AT_FDCWD, "/", DIR_FLAGS, Mode::empty()).map_err(|e| io_err("open", "/", e))?
    } else {
        openat(AT_FDCWD, ".", DIR_FLAGS, Mode::empty()).map_err(|e| io_err("open", ".", e))?
    };
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                shown.push("..");
                cur = open_component(cur.as_fd(), OsStr::new(".."), &shown)?;
            }
            Component::Normal(name) => {
                shown.push(name);
                cur = open_component(cur.as_fd(), name, &shown)?;
            }
        }
    }
    Ok(cur)
}

/// Open the directory `name` inside `parent`, refusing a link.
pub fn openat_dir_nofollow(parent: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    check_name(name)?;
    open_component(parent, OsStr::new(name), &describe(parent, name))
}

/// Make sure `name` inside `parent` is a real directory (not a link) with `mode` and, if given,
/// `owner`, creating it if missing; returns its fd. Mode and owner are applied through the fd
/// every time, so an existing directory with loose permissions (e.g. `~/.ssh` 0777) is repaired.
pub fn mkdirat_nofollow(
    parent: BorrowedFd<'_>,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd> {
    check_name(name)?;
    let shown = describe(parent, name);
    match mkdirat(parent, name, Mode::from_bits_truncate(mode & 0o7777)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(io_err("mkdir", &shown, e)),
    }
    let fd = open_component(parent, OsStr::new(name), &shown)?;
    // chown before chmod: chown clears set-id bits.
    if let Some((uid, gid)) = owner {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| io_err("chown", &shown, e))?;
    }
    fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777)).map_err(|e| io_err("chmod", &shown, e))?;
    Ok(fd)
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> Result<Option<FileStat>> {
    check_name(name)?;
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(stat_of(&st))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(io_err("stat", describe(dir, name), e)),
    }
}

/// Read the regular file `name` in `dir`, at most `max_len` bytes. `None` if missing; an error if
/// it is a link, not a regular file, or larger than `max_len`.
pub fn read_at_nofollow(dir: BorrowedFd<'_>, name: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
    check_name(name)?;
    // O_NONBLOCK so a FIFO planted at the name cannot hang us in open().
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(FsError::SymlinkInPath {
                path: describe(dir, name),
            });
        }
        Err(e) => return Err(io_err("open", describe(dir, name), e)),
    };
    let st = fstat(&fd).map_err(|e| io_err("stat", describe(dir, name), e))?;
    if kind_of(st.st_mode) != FileKind::File {
        return Err(FsError::NotARegularFile {
            path: describe(dir, name),
        });
    }
    let mut buf = Vec::new();
    // Read one byte past the limit to detect oversize files without trusting st_size.
    File::from(fd)
        .take(max_len.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| FsError::Io {
            op: "read",
            path: describe(dir, name),
            source: e,
        })?;
    if buf.len() as u64 > max_len {
        return Err(FsError::TooLarge {
            path: describe(dir, name),
            max: max_len,
        });
    }
    Ok(Some(buf))
}

/// Split `path` into its parent directory (walked with [`open_dir_nofollow`]) and file name.
fn split(path: &Path) -> Result<(OwnedFd, &str)> {
    let invalid = || FsError::InvalidName {
        name: path.display().to_string(),
    };
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(invalid)?;
    if path.as_os_str().as_bytes().ends_with(b"/") {
        return Err(invalid());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir_nofollow(parent)?, name))
}

/// [`read_at_nofollow`] for a full path.
pub fn read_nofollow(path: &Path, max_len: u64) -> Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    read_at_nofollow(dir.as_fd(), name, max_len)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp name beside the target. Dot-prefixed so globbing readers (`sudoers.d` skips names with a
/// `.`) ignore it; the name part is shortened so the whole stays under NAME_MAX.
fn temp_name(name: &str) -> String {
    format!(
        "{}{}-{}",
        temp_prefix(name),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What every temp name for `name` starts with (`.NAME.tmp-`).
fn temp_prefix(name: &str) -> String {
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp-", &name[..end])
}

/// Atomically replace `name` in `dir` with `contents`.
///
/// If `name` is a symbolic link, the link itself is replaced; its target is never written.
/// Callers that must refuse links altogether check [`lstat_at`] first.
pub fn write_atomic_at(
    dir: BorrowedFd<'_>,
    name: &str,
    contents: &[u8],
    opts: &WriteOpts,
) -> Result<()> {
    check_name(name)?;
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_WRONLY;
    let (tmp, fd) = loop {
        let tmp = temp_name(name);
        // 0600 until fchmod: the content is never readable by others before it is final.
        match openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => break (tmp, fd),
            // A leftover from a crashed run with a recycled pid: take the next counter value.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(io_err("create temp file for", describe(dir, name), e)),
        }
    };
    let result = fill_and_rename(dir, name, &tmp, fd, contents, opts);
    if result.is_err() {
        // The rename did not happen (or failed), so the temp file is ours to remove.
        match unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => tracing::warn!(
                "cannot remove temp file {}: {e}",
                describe(dir, &tmp).display()
            ),
        }
        return result;
    }
    // The new content is in place; make the rename itself durable.
    fsync(dir).map_err(|e| io_err("fsync directory of", describe(dir, name), e))?;
    for left in crate::leftovers::sweep(dir, &temp_prefix(name)) {
        tracing::info!(
            "removed {}, left by an interrupted write",
            describe(dir, &left).display()
        );
    }
    Ok(())
}

fn fill_and_rename(
    dir: BorrowedFd<'_>,
    name: &str,
    tmp: &str,
    fd: OwnedFd,
    contents: &[u8],
    opts: &WriteOpts,
) -> Result<()> {
    let shown = || describe(dir, name);
    let mut file = File::from(fd);
    file.write_all(contents).map_err(|e| FsError::Io {
        op: "write",
        path: shown(),
        source: e,
    })?;
    // chown before chmod: chown clears set-id bits.
    if let Some((uid, gid)) = opts.owner {
        fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| io_err("chown", shown(), e))?;
    }
    fchmod(&file, Mode::from_bits_truncate(opts.mode & 0o7777))
        .map_err(|e| io_err("chmod", shown(), e))?;
    fsync(&file).map_err(|e| io_err("fsync", shown(), e))?;
    drop(file);
    renameat(dir, tmp, dir, name).map_err(|e| io_err("rename into", shown(), e))
}

/// [`write_atomic_at`] for a full path; no component of the parent may be a link.
pub fn write_atomic(path: &Path, contents: &[u8], opts: &WriteOpts) -> Result<()> {
    let (dir, name) = split(path)?;
    write_atomic_at(dir.as_fd(), name, contents, opts)
}

/// Remove the file (or link) `name` from `dir`. Returns whether something was removed; a missing
/// file is not an error.
pub fn remove_at(dir: BorrowedFd<'_>, name: &str) -> Result<bool> {
    check_name(name)?;
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(io_err("remove", describe(dir, name), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// A temp dir with a canonical path, so the walk never meets a link of the test machine's.
    fn tempdir() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().canonicalize().expect("canonicalize");
        (d, p)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_replaces_content_with_mode_and_leaves_no_temp() {
        let (_d, p) = tempdir();
        let f = p.join("file");
        write_atomic(&f, b"one", &WriteOpts::new(0o640)).expect("write 1");
        write_atomic(&f, b"two", &WriteOpts::new(0o600)).expect("write 2");
        assert_eq!(std::fs::read(&f).expect("read"), b"two");
        let meta = std::fs::metadata(&f).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(names(&p), ["file"]);
    }

    #[test]
    fn write_sets_owner_when_root() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let (_d, p) = tempdir();
        let f = p.join("owned");
        write_atomic(&f, b"x", &WriteOpts::new(0o600).owner(65534, 65534)).expect("write");
        let meta = std::fs::symlink_metadata(&f).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[test]
    fn symlinked_directory_component_is_refused() {
        let (_d, p) = tempdir();
        std::fs::create_dir(p.join("real")).expect("mkdir");
        symlink(p.join("real"), p.join("link")).expect("symlink");
        let err = write_atomic(&p.join("link/file"), b"x", &WriteOpts::default())
            .expect_err("must refuse");
        assert!(
            matches!(&err, FsError::SymlinkInPath { path } if *path == p.join("link")),
            "{err:?}"
        );
        assert!(names(&p.join("real")).is_empty());
        assert!(matches!(
            open_dir_nofollow(&p.join("link")),
            Err(FsError::SymlinkInPath { .. })
        ));
        // A file in the middle of the path is a different error.
        std::fs::write(p.join("plain"), "x").expect("write");
        assert!(matches!(
            open_dir_nofollow(&p.join("plain/sub")),
            Err(FsError::NotADirectory { .. })
        ));
    }

    #[test]
    fn symlink_at_target_is_replaced_not_followed() {
        let (_d, p) = tempdir();
        std::fs::write(p.join("victim"), "orig").expect("write");
        symlink(p.join("victim"), p.join("target")).expect("symlink");
        let dir = open_dir_nofollow(&p).expect("open");
        assert_eq!(
            lstat_at(dir.as_fd(), "target")
                .expect("lstat")
                .map(|s| s.kind),
            Some(FileKind::Symlink)
        );
        write_atomic_at(dir.as_fd(), "target", b"new", &WriteOpts::new(0o644)).expect("write");
        assert_eq!(
            std::fs::read_to_string(p.join("victim")).expect("read"),
            "orig"
        );
        let st = lstat_at(dir.as_fd(), "target")
            .expect("lstat")
            .expect("exists");
        assert_eq!(st.kind, FileKind::File);
        assert_eq!(std::fs::read(p.join("target")).expect("read"), b"new");
    }

    #[test]
    fn temp_file_is_removed_when_rename_fails() {
        let (_d, p) = tempdir();
        // Renaming a file over a directory fails with EISDIR, even as root.
        std::fs::create_dir(p.join("target")).expect("mkdir");
        let err =
            write_atomic(&p.join("target"), b"x", &WriteOpts::default()).expect_err("must fail");
        assert!(
            matches!(
                err,
                FsError::Io {
                    op: "rename into",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(names(&p), ["target"]);
    }

    #[test]
    fn read_refuses_links_and_non_files_and_oversize() {
        let (_d, p) = tempdir();
        std::fs::write(p.join("f"), "hello").expect("write");
        symlink(p.join("f"), p.join("l")).expect("symlink");
        std::fs::create_dir(p.join("d")).expect("mkdir");
        let dir = open_dir_nofollow(&p).expect("open");
        let d = dir.as_fd();
        assert_eq!(
            read_at_nofollow(d, "f", 5).expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(read_at_nofollow(d, "missing", 5).expect("read"), None);
        assert!(matches!(
            read_at_nofollow(d, "l", 5),
            Err(FsError::SymlinkInPath { .. })
        ));
        assert!(matches!(
            read_at_nofollow(d, "d", 5),
            Err(FsError::NotARegularFile { .. })
        ));
        assert!(matches!(
            read_at_nofollow(d, "f", 4),
            Err(FsError::TooLarge { max: 4, .. })
        ));
        assert!(matches!(
            read_at_nofollow(d, "../f", 5),
            Err(FsError::InvalidName { .. })
        ));
        assert_eq!(
            read_nofollow(&p.join("f"), 10).expect("read"),
            Some(b"hello".to_vec())
        );
    }

    #[test]
    fn mkdirat_creates_repairs_and_refuses_links() {
        let (_d, p) = tempdir();
        let dir = open_dir_nofollow(&p).expect("open");
        let sub = mkdirat_nofollow(dir.as_fd(), "ssh", 0o700, None).expect("mkdir");
        write_atomic_at(sub.as_fd(), "k", b"x", &WriteOpts::new(0o600)).expect("write in sub");
        assert_eq!(std::fs::read(p.join("ssh/k")).expect("read"), b"x");
        std::fs::set_permissions(p.join("ssh"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        mkdirat_nofollow(dir.as_fd(), "ssh", 0o700, None).expect("existing");
        let st = lstat_at(dir.as_fd(), "ssh")
            .expect("lstat")
            .expect("exists");
        assert_eq!((st.kind, st.mode), (FileKind::Dir, 0o700));
        symlink(&p, p.join("lnk")).expect("symlink");
        assert!(matches!(
            mkdirat_nofollow(dir.as_fd(), "lnk", 0o700, None),
            Err(FsError::SymlinkInPath { .. })
        ));
        assert!(matches!(
            openat_dir_nofollow(dir.as_fd(), "lnk"),
            Err(FsError::SymlinkInPath { .. })
        ));
        openat_dir_nofollow(dir.as_fd(), "ssh").expect("open sub");
    }

    #[test]
    fn remove_and_relative_paths() {
        let (_d, p) = tempdir();
        let dir = open_dir_nofollow(&p).expect("open");
        write_atomic_at(dir.as_fd(), "f", b"x", &WriteOpts::default()).expect("write");
        assert!(remove_at(dir.as_fd(), "f").expect("remove"));
        assert!(!remove_at(dir.as_fd(), "f").expect("remove missing"));
        assert_eq!(lstat_at(dir.as_fd(), "f").expect("lstat"), None);
        // Relative paths walk from the cwd without changing it.
        open_dir_nofollow(Path::new(".")).expect("cwd");
        assert!(matches!(
            write_atomic(Path::new("/"), b"x", &WriteOpts::default()),
            Err(FsError::InvalidName { .. })
        ));
    }
}
