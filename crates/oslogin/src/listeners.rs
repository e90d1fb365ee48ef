//! Whether sshd listens again after a reload. SIGHUP makes sshd close its listening sockets and
//! re-execute itself; until the new image has opened fresh ones, connections are refused. Both
//! our SIGHUP and `systemctl reload` (whose ExecReload is a SIGHUP too) return before that, so
//! the switch waits for it here before it reports the host configured: "configured" then means
//! a login can start.
//!
//! Which sockets are sshd's cannot be read from its `/proc/PID/fd`: sshd makes itself
//! non-dumpable, and the daemon's unit rightly lacks `CAP_SYS_PTRACE`. But the LISTEN rows of
//! sshd's network namespace (`/proc/PID/net/tcp{,6}`, readable by anyone) show the reload: every
//! address sshd listens on comes back with a new socket inode, while other services' rows stay
//! as they were. Only root's rows count (sshd listens as root; the forwardings of user sessions
//! and users' own servers come and go under their uids). So: sshd listens again once every
//! address root listened on before listens now, and at least one of them on a new socket.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Listening TCP sockets by local address (`tcp 00000000:0016`, `tcp6 …`) → socket inode.
pub type ListenTable = BTreeMap<String, u64>;

/// The LISTEN rows of the network namespace `pid` is in; empty when unreadable.
pub fn listen_table(pid: i32) -> ListenTable {
    let mut table = ListenTable::new();
    for proto in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}"))
            .or_else(|_| std::fs::read_to_string(format!("/proc/self/net/{proto}")));
        if let Ok(text) = text {
            table.extend(parse_listen_rows(proto, &text));
        }
    }
    table
}

/// Root's rows in state LISTEN (`0A`) of a `/proc/net/tcp` or `tcp6` table: (`PROTO ADDR`,
/// inode).
pub fn parse_listen_rows(proto: &str, text: &str) -> Vec<(String, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.get(3) != Some(&"0A") || f.get(7) != Some(&"0") {
                return None;
            }
            let inode = f.get(9)?.parse().ok()?;
            Some((format!("{proto} {}", f.get(1)?), inode))
        })
        .collect()
}

/// Every address of `before` listens in `now`, at least one on a new socket.
pub fn relistened(before: &ListenTable, now: &ListenTable) -> bool {
    before.keys().all(|a| now.contains_key(a))
        && before.iter().any(|(a, inode)| now.get(a) != Some(inode))
}

/// Waits until [`relistened`] holds in the network namespace of the sshd that `current_pid`
/// names (read anew each time: a restart changes it). The time it took, or `None` after
/// `timeout`.
pub async fn wait_relistening(
    before: &ListenTable,
    mut current_pid: impl FnMut() -> Option<i32>,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if let Some(pid) = current_pid()
            && relistened(before, &listen_table(pid))
        {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        // Reading the tables walks every socket of the namespace: not too often.
        tokio::time::sleep(Duration::from_millis(10)).await;
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
            parse_listen_rows("tcp", table),
            [("tcp 00000000:0016".to_string(), 31337)],
            "the established row (01) is not a listener, uid 1000's listener is not sshd's"
        );
        assert!(parse_listen_rows("tcp", "header only\n").is_empty());
        assert!(
            parse_listen_rows("tcp", "h\n 0: x y 0A z\n").is_empty(),
            "short row"
        );
    }

    #[test]
    fn a_reload_is_every_address_back_and_one_on_a_new_socket() {
        let t = |rows: &[(&str, u64)]| -> ListenTable {
            rows.iter().map(|(a, i)| (a.to_string(), *i)).collect()
        };
        let before = t(&[("tcp :22", 1), ("tcp6 :22", 2), ("tcp :80", 3)]);
        // Not processed yet: nothing changed.
        assert!(!relistened(&before, &before));
        // Closed, or half reopened.
        assert!(!relistened(&before, &t(&[("tcp :80", 3)])));
        assert!(!relistened(&before, &t(&[("tcp :22", 4), ("tcp :80", 3)])));
        // Both of sshd's back on new sockets; the web server's untouched; a new listener is fine.
        assert!(relistened(
            &before,
            &t(&[
                ("tcp :22", 4),
                ("tcp6 :22", 5),
                ("tcp :80", 3),
                ("tcp :9", 6)
            ])
        ));
    }

    #[tokio::test]
    async fn a_listener_reopened_on_the_same_address_is_seen() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root's listeners count, and this test is not root");
            return;
        }
        let pid = std::process::id() as i32;
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let before = listen_table(pid);
        assert!(!before.is_empty(), "our own listener is seen");
        let same = wait_relistening(&before, || Some(pid), Duration::from_millis(30)).await;
        assert_eq!(same, None, "the same sockets are not 'listening again'");
        drop(first);
        // std sets SO_REUSEADDR: the address is free again at once, as for sshd's re-exec.
        let _second = std::net::TcpListener::bind(addr).unwrap();
        let again = wait_relistening(&before, || Some(pid), Duration::from_secs(2)).await;
        assert!(again.is_some(), "a fresh socket on the same address counts");
    }
}
