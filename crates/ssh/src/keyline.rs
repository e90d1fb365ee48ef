//! Editing the `ssh-keys` metadata value: add one expiring key line in gcloud's format and drop
//! this user's `google-ssh` keys that have already expired (gcloud does the same housekeeping).

use chrono::{DateTime, NaiveDateTime, Utc};

/// The line gcloud writes: `USER:TYPE BLOB google-ssh {"userName":"USER","expireOn":"…+0000"}`.
pub fn expiring_line(user: &str, public_key: &str, expire_on: DateTime<Utc>) -> String {
    let mut fields = public_key.split_whitespace();
    let key_type = fields.next().unwrap_or_default();
    let blob = fields.next().unwrap_or_default();
    let json = serde_json::json!({"userName": user, "expireOn": expire_on.format("%Y-%m-%dT%H:%M:%S+0000").to_string()});
    format!("{user}:{key_type} {blob} google-ssh {json}")
}

/// `current` with `new_line` appended, minus `user`'s google-ssh lines that expired before `now`.
/// Every other line is kept as it was.
pub fn add_key(current: &str, user: &str, new_line: &str, now: DateTime<Utc>) -> String {
    let mut out: Vec<&str> = current
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !is_expired_google_key_of(l, user, now))
        .collect();
    out.push(new_line);
    out.join("\n")
}

fn is_expired_google_key_of(line: &str, user: &str, now: DateTime<Utc>) -> bool {
    let Some((u, key)) = line.split_once(':') else {
        return false;
    };
    if u != user {
        return false;
    }
    let Some((_, json)) = key.split_once(" google-ssh ") else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
        return false;
    };
    let Some(exp) = v.get("expireOn").and_then(|e| e.as_str()) else {
        return false;
    };
    let parsed = DateTime::parse_from_rfc3339(exp)
        .or_else(|_| DateTime::parse_from_str(exp, "%Y-%m-%dT%H:%M:%S%z"))
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(exp, "%Y-%m-%dT%H:%M:%S").map(|n| n.and_utc()));
    parsed.is_ok_and(|t| now > t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn writes_gcloud_format() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 16, 59, 3).unwrap();
        let l = expiring_line("alice", "ssh-ed25519 AAAAC3Nz alice@laptop\n", t);
        assert_eq!(
            l,
            r#"alice:ssh-ed25519 AAAAC3Nz google-ssh {"expireOn":"2026-11-21T16:59:03+0000","userName":"alice"}"#
        );
    }

    #[test]
    fn add_key_keeps_others_and_drops_only_this_users_expired_google_keys() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let current = "bob:ssh-rsa AAAA bob\r\n\
alice:ssh-ed25519 OLD google-ssh {\"userName\":\"alice\",\"expireOn\":\"2026-11-21T11:00:00+0000\"}\n\
alice:ssh-ed25519 LIVE google-ssh {\"userName\":\"alice\",\"expireOn\":\"2026-11-21T13:00:00+0000\"}\n\
carol:ssh-ed25519 OLD google-ssh {\"userName\":\"carol\",\"expireOn\":\"2026-11-21T11:00:00+0000\"}\n\n";
        let out = add_key(current, "alice", "alice:NEW", now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("bob:"));
        assert!(lines[1].contains("LIVE"));
        assert!(
            lines[2].starts_with("carol:"),
            "another user's expired key is theirs to clean"
        );
        assert_eq!(lines[3], "alice:NEW");
    }
}
