//! Whether sshd listens again after a reload. SIGHUP makes sshd close its listening sockets and
//! re-execute itself; until the new image has opened fresh ones, connections are refused. Both
//! our SIGHUP and `systemctl reload` (whose ExecReload is a SIGHUP too) return before that, so
//! the switch waits for it here before it reports the host configured: "configured" then means
//! a login can start.
//!
//! sshd's listening sockets are the socket inodes among its `/proc/PID/fd` links that its network
//! namespace's `/proc/PID/net/tcp{,6}` shows in state LISTEN. Inherited sockets (a journal
//! stream on stderr) survive the re-exec and are not listeners, so they do not blur the picture.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The inodes of the TCP sockets `pid` holds in state LISTEN; empty when the process is gone or
/// unreadable.
pub fn listening_inodes(pid: i32) -> BTreeSet<u64> {
    let held = socket_inodes(pid);
    if held.is_empty() {
        return held;
    }
    let mut listening = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        if let Ok(text) = std::fs::read_to_string(&path) {
            listening.extend(parse_listen_inodes(&text));
        }
    }
    held.intersection(&listening).copied().collect()
}

/// Socket inodes among the open files of `pid` (`socket:[N]` links).
fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| socket_inode(&target))
        .collect()
}

fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inodes of the rows in state LISTEN (`0A`) of a `/proc/net/tcp` or `tcp6` table.
pub fn parse_listen_inodes(table: &str) -> BTreeSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            (f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Waits until the sshd that `current_pid` names (read anew each time: a restart changes it)
/// listens on sockets none of which is in `before`. The time it took, or `None` after `timeout`.
pub async fn wait_relistening(
    before: &BTreeSet<u64>,
    mut current_pid: impl FnMut() -> Option<i32>,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if let Some(pid) = current_pid() {
            let now = listening_inodes(pid);
            if !now.is_empty() && now.is_disjoint(before) {
                return Some(start.elapsed());
            }
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rows_are_picked_from_a_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_listen_inodes(table),
            BTreeSet::from([31337, 777]),
            "the established row (01) is not a listener"
        );
        assert!(parse_listen_inodes("header only\n").is_empty());
        assert!(
            parse_listen_inodes("h\n 0: x y 0A z\n").is_empty(),
            "short row"
        );
    }

    #[test]
    fn socket_links_are_recognised() {
        assert_eq!(socket_inode(Path::new("socket:[123]")), Some(123));
        assert_eq!(socket_inode(Path::new("pipe:[123]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[tokio::test]
    async fn this_process_listening_is_seen_and_a_new_listener_is_told_apart() {
        let pid = std::process::id() as i32;
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = listening_inodes(pid);
        assert!(!before.is_empty(), "our own listener is seen");
        // Same sockets as before: not "listening again".
        let same = wait_relistening(&before, || Some(pid), Duration::from_millis(30)).await;
        assert_eq!(same, None);
        drop(first);
        let _second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let again = wait_relistening(&before, || Some(pid), Duration::from_secs(2)).await;
        assert!(again.is_some(), "a fresh listener counts");
    }
}
