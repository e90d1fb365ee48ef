//! The "login will work now" marker, shared by the accounts daemon (writer) and `gce-ssh`
//! (reader). After applying a snapshot the daemon publishes, per user, the fingerprints of the
//! keys that are installed and valid, as guest attribute `gce-agent/ssh-ready-<user>`; a client
//! that pushed a key waits until its fingerprint appears instead of retrying ssh for a minute.
//! It also publishes `gce-agent/accounts-etag`, the metadata ETag it last applied.

/// Guest-attribute namespace of this project.
pub const NAMESPACE: &str = "gce-agent";
/// Key holding the ETag of the last applied snapshot.
pub const ETAG_KEY: &str = "accounts-etag";

/// The guest-attribute key for `user`. Guest attribute keys allow only `[A-Za-z0-9_-]`, while
/// user names may hold `.`; other bytes are written `_XX` (hex), `_` itself included, so the
/// mapping is reversible and collision-free.
pub fn user_key(user: &str) -> String {
    let mut out = String::from("ssh-ready-");
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The marker's value: one `SHA256:…` fingerprint per line, sorted.
pub fn encode(fingerprints: &[String]) -> String {
    let mut v: Vec<&str> = fingerprints.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v.join("\n")
}

/// Whether a marker value lists `fingerprint`.
pub fn lists(value: &str, fingerprint: &str) -> bool {
    value.lines().any(|l| l.trim() == fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_use_only_guest_attribute_characters_and_do_not_collide() {
        let rows = [
            ("alice", "ssh-ready-alice"),
            ("a.b", "ssh-ready-a_2eb"),
            ("a_b", "ssh-ready-a_5fb"),
            ("x-y", "ssh-ready-x-y"),
        ];
        for (user, key) in rows {
            assert_eq!(user_key(user), key);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
        assert_ne!(user_key("a.b"), user_key("a_b"));
    }

    #[test]
    fn encode_is_sorted_and_lists_finds_entries() {
        let v = encode(&["SHA256:b".into(), "SHA256:a".into(), "SHA256:b".into()]);
        assert_eq!(v, "SHA256:a\nSHA256:b");
        assert!(lists(&v, "SHA256:b"));
        assert!(!lists(&v, "SHA256:c"));
    }
}
