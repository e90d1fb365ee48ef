//! Temp files left by an interrupted atomic write. [`crate::fs::write_atomic_at`] writes
//! `.NAME.tmp-PID-N` beside `NAME` and renames it into place; a process killed between the two
//! leaves it behind, and nothing else would ever remove it. After a successful write of `NAME`
//! the directory is swept of such leftovers — only names of exactly that shape, only regular
//! files, and only those untouched for [`ABANDONED_AFTER`]: a write takes milliseconds, so a
//! file that old is abandoned whoever made it (the pid in the name proves nothing on a home
//! shared with other machines, or in another pid namespace). Each (directory, name) is swept at
//! most once per [`ABANDONED_AFTER`] in a process, so a directory with many files written in a
//! row (the key cache: one file per user) is not read again at every write.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A temp file untouched this long is a leftover.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// A directory (device, inode) and the temp-name prefix swept in it.
type SweepKey = (u64, u64, String);

/// When each directory and prefix was last swept by this process.
static LAST_SWEEP: Mutex<Option<HashMap<SweepKey, Instant>>> = Mutex::new(None);

/// Whether `entry` is a temp name [`crate::fs`] makes for `prefix` (`.NAME.tmp-`): `PID-N`.
pub fn is_temp_name(entry: &str, prefix: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    entry
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

/// Whether `dir` is due a sweep for `prefix` (and, if so, notes that it is being swept now).
fn due(dir: BorrowedFd<'_>, prefix: &str) -> bool {
    let Ok(st) = fstat(dir) else {
        return false;
    };
    let key = (st.st_dev, st.st_ino, prefix.to_string());
    let mut last = LAST_SWEEP.lock().unwrap_or_else(|e| e.into_inner());
    let map = last.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get(&key) {
        Some(t) if now.duration_since(*t) < ABANDONED_AFTER => false,
        _ => {
            map.insert(key, now);
            true
        }
    }
}

/// Removes abandoned temp files of writes of `prefix` (`.NAME.tmp-`) from `dir` when it is due
/// a sweep, best effort: returns the names removed.
pub fn sweep(dir: BorrowedFd<'_>, prefix: &str) -> Vec<String> {
    if !due(dir, prefix) {
        return Vec::new();
    }
    sweep_now(dir, prefix)
}

fn sweep_now(dir: BorrowedFd<'_>, prefix: &str) -> Vec<String> {
    // A second descriptor for listing, so the caller's keeps its own offset.
    let Ok(list) = nix::dir::Dir::openat(
        dir,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let names: Vec<String> = list
        .into_iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
        .filter(|n| is_temp_name(n, prefix))
        .collect();
    let cutoff = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(ABANDONED_AFTER)
        .as_secs() as i64;
    let mut removed = Vec::new();
    for name in names {
        let Ok(st) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mtime >= cutoff {
            continue;
        }
        if unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn only_names_of_the_exact_temp_shape_count() {
        let p = ".authorized_keys.tmp-";
        assert!(is_temp_name(".authorized_keys.tmp-123-0", p));
        assert!(!is_temp_name(".authorized_keys.tmp-123-", p));
        assert!(!is_temp_name(".authorized_keys.tmp-12x-1", p));
        assert!(!is_temp_name(".authorized_keys.tmp-1-2-3", p));
        assert!(!is_temp_name("authorized_keys.tmp-1-2", p));
        assert!(!is_temp_name(".authorized_keys2.tmp-1-2", p));
    }

    #[test]
    fn old_leftovers_go_fresh_ones_and_other_files_stay_and_a_dir_is_swept_once_a_while() {
        let dir = std::env::temp_dir().join(format!("gce-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - ABANDONED_AFTER - Duration::from_secs(5);
        let plant = |name: &str, mtime: Option<SystemTime>| {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if let Some(t) = mtime {
                f.set_modified(t).unwrap();
            }
        };
        plant(".f.tmp-4194305-0", Some(old)); // abandoned: goes
        plant(&format!(".f.tmp-{}-0", std::process::id()), Some(old)); // ours, abandoned: goes
        plant(".f.tmp-4194305-1", None); // being written right now: stays
        for other in [".g.tmp-4194305-0", "f", ".f.tmp-x-0", ".f.tmp-1-2-3"] {
            plant(other, Some(old));
        }
        std::fs::create_dir(dir.join(".f.tmp-4194306-0")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(".f.tmp-4194307-0")).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let mut removed = sweep(fd.as_fd(), ".f.tmp-");
        removed.sort();
        let mut expected = [
            ".f.tmp-4194305-0".to_string(),
            format!(".f.tmp-{}-0", std::process::id()),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        for kept in [
            ".f.tmp-4194305-1",
            ".g.tmp-4194305-0",
            "f",
            ".f.tmp-x-0",
            ".f.tmp-1-2-3",
            ".f.tmp-4194306-0",
        ] {
            assert!(dir.join(kept).exists(), "{kept} kept");
        }
        assert!(dir.join(".f.tmp-4194307-0").symlink_metadata().is_ok());
        // Swept moments ago: not read again until ABANDONED_AFTER has passed.
        plant(".f.tmp-4194305-2", Some(old));
        assert!(sweep(fd.as_fd(), ".f.tmp-").is_empty());
        assert!(dir.join(".f.tmp-4194305-2").exists());
        // Another name in the same directory has its own turn.
        plant(".g.tmp-4194305-1", Some(old));
        assert_eq!(sweep(fd.as_fd(), ".g.tmp-").len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
