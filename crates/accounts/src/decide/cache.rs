//! The root-owned cache the daemon keeps for `gce-authorized-keys` (sshd's
//! AuthorizedKeysCommand): one file per user, one line per key:
//! `<expiry unix seconds or 0> <SHA256 fingerprint> <authorized_keys line>`. The command checks
//! the expiry against the clock at login time, so a key stops working on the second even if the
//! daemon is stopped.

use crate::decide::keys::KeyEntry;

/// Default location (tmpfs: rebuilt by the daemon at every start).
pub const DEFAULT_DIR: &str = "/run/gce-guest-agents/authorized-keys";
/// Present once the daemon has written a complete cache.
pub const COMPLETE: &str = ".complete";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKey {
    /// Unix seconds of `expireOn`; the key is valid while now <= expires.
    pub expires: Option<i64>,
    pub fingerprint: String,
    pub line: String,
}

/// One cache file: each entry with its authorized_keys line and fingerprint.
pub fn render(entries: &[(&KeyEntry, String, String)]) -> String {
    let mut out = String::new();
    for (e, line, fingerprint) in entries {
        let exp = e.expires.map(|t| t.timestamp()).unwrap_or(0);
        out.push_str(&format!("{exp} {fingerprint} {line}\n"));
    }
    out
}

pub fn parse(text: &str) -> Vec<CachedKey> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let exp: i64 = it.next()?.parse().ok()?;
            let fingerprint = it.next()?.to_string();
            let line = it.next()?.to_string();
            Some(CachedKey {
                expires: (exp != 0).then_some(exp),
                fingerprint,
                line,
            })
        })
        .collect()
}

/// The lines to print at `now_unix_ms`, only the offered key's when `fingerprint` is given. A
/// key is valid while now <= expireOn (whole seconds), as for metadata keys.
pub fn valid_lines<'a>(
    keys: &'a [CachedKey],
    now_unix_ms: i64,
    fingerprint: Option<&str>,
) -> Vec<&'a str> {
    keys.iter()
        .filter(|k| k.expires.is_none_or(|e| now_unix_ms <= e * 1000))
        .filter(|k| fingerprint.is_none_or(|f| f == k.fingerprint))
        .map(|k| k.line.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_fingerprint_filters() {
        let keys =
            parse("0 SHA256:a ssh-ed25519 AAAA a\n1000 SHA256:b ssh-ed25519 BBBB b\ngarbage\n");
        assert_eq!(keys.len(), 2);
        let rows = [
            (
                999_000,
                None,
                vec!["ssh-ed25519 AAAA a", "ssh-ed25519 BBBB b"],
            ),
            (
                1_000_000,
                None,
                vec!["ssh-ed25519 AAAA a", "ssh-ed25519 BBBB b"],
            ),
            (1_000_001, None, vec!["ssh-ed25519 AAAA a"]),
            (999_000, Some("SHA256:b"), vec!["ssh-ed25519 BBBB b"]),
            (1_000_001, Some("SHA256:b"), vec![]),
            (0, Some("SHA256:zzz"), vec![]),
        ];
        for (now, fp, want) in rows {
            assert_eq!(valid_lines(&keys, now, fp), want, "now={now} fp={fp:?}");
        }
    }
}
