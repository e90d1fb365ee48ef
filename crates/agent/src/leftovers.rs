//! Temp files left by an interrupted atomic write. [`crate::fs::write_atomic_at`] writes
//! `.NAME.tmp-PID-N` beside `NAME` and renames it into place; a process killed between the two
//! leaves it behind, and nothing else would ever remove it. After each successful write of
//! `NAME` the directory is swept of such leftovers — only names of exactly that shape, only
//! regular files, and only those whose writer is gone (no `/proc/PID`) or that are over an hour
//! old (a pid recycled since). A temp file of a live writer is never touched, nor anything else.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, SystemTime};

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A temp file this old is a leftover whatever its pid says.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// The pid in `entry` when it is a temp name [`crate::fs`] makes for `prefix` (`.NAME.tmp-`).
pub fn writer_pid(entry: &str, prefix: &str) -> Option<u32> {
    let (pid, counter) = entry.strip_prefix(prefix)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Removes leftovers of writes of `prefix` (`.NAME.tmp-`) from `dir`, best effort: returns the
/// names removed. Without `/proc` nothing is known about writers, so nothing is removed.
pub fn sweep(dir: BorrowedFd<'_>, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(pid) = writer_pid(&name, prefix) else {
            continue;
        };
        if pid == me {
            // Ours: another write of this process may be under way.
            continue;
        }
        let Ok(st) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let age = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(st.st_mtime.max(0) as u64));
        let writer_gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if (writer_gone || age > ABANDONED_AFTER)
            && unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir).is_ok()
        {
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
    fn only_names_of_the_exact_temp_shape_name_a_writer() {
        let p = ".authorized_keys.tmp-";
        assert_eq!(writer_pid(".authorized_keys.tmp-123-0", p), Some(123));
        assert_eq!(writer_pid(".authorized_keys.tmp-123-", p), None);
        assert_eq!(writer_pid(".authorized_keys.tmp-12x-1", p), None);
        assert_eq!(writer_pid(".authorized_keys.tmp-1-2-3", p), None);
        assert_eq!(writer_pid("authorized_keys.tmp-1-2", p), None);
        assert_eq!(writer_pid(".authorized_keys2.tmp-1-2", p), None);
    }

    #[test]
    fn leftovers_of_dead_writers_go_live_ones_and_other_files_stay() {
        let dir = std::env::temp_dir().join(format!("gce-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A pid that cannot be running: above the kernel's pid_max limit (4194304).
        let dead = ".f.tmp-4194305-0";
        let live = format!(".f.tmp-{}-0", std::process::id());
        let parent = format!(".f.tmp-{}-7", std::os::unix::process::parent_id());
        for name in [dead, &live, &parent, ".g.tmp-4194305-0", "f", ".f.tmp-x-0"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.join(".f.tmp-4194306-0")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(".f.tmp-4194307-0")).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let removed = sweep(fd.as_fd(), ".f.tmp-");
        assert_eq!(removed, vec![dead.to_string()]);
        for kept in [
            live.as_str(),
            &parent,
            ".g.tmp-4194305-0",
            "f",
            ".f.tmp-x-0",
            ".f.tmp-4194306-0",
        ] {
            assert!(dir.join(kept).exists(), "{kept} kept");
        }
        assert!(dir.join(".f.tmp-4194307-0").symlink_metadata().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
