//! SPEC §2 vectors and hostile inputs for the pure core of gce-accounts.
//! Each table row is one documented behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use gce_accounts::decide::authorized_keys::{
    self, ExpiryOption, MARKER, key_line, managed_lines_in, openssh_supports_utc_expiry, render,
};
use gce_accounts::decide::keys::{GoogleSshError, KeyError, parse_authorized_key, parse_expire_on};
use gce_accounts::names::{NameError, is_reserved, parse_uid_min, validate_username};
use gce_accounts::{
    Action, Desired, KeySource, LocalUser, Origin, PlanConfig, State, StateError, UserState,
    desired_keys, parse_ssh_keys, plan,
};

// Real keys (ssh-keygen), with the fingerprints `ssh-keygen -lf` printed for them.
const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHH6CZSppuT7KlDIcAFspWbjmISIAl6e9/RQiEqfDAPx";
const ED_FP: &str = "SHA256:wY7c6EYIU7JQCWM9VmTrMGJQvYeLtkLIxXGxRMgTgDM";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDzNABm75cP4s5tC2Lm9zC3NEAbMw231VFtmIxtzXAkLA1lPBMxpBe4mzXXVpP8LiWUI4VrL2HVdXqIIU3oGxV5T3ZDB35F1+NY204bCfTu6+EmKL9x/k1XMt6uOrrTkMgz9UUMsCEi0XhWG/K+yBKyzeSuRgCpvfZA5zw4kcsrlw==";
const RSA_FP: &str = "SHA256:8VXADTdSiSaYHP7vcBLFGgNV28iSSgHYk8nUNZSdb1c";
const EC256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGCk26rem9Yt+yriEj4Uzs8npcnFgj7v/4Z+tpwH9KMGja/ejiJMBU/isHZddqxLhuvsY39iqcHRDsyHCPF2V/4=";
const EC256_FP: &str = "SHA256:eeKNht7vxtI4pUgriLArfSiuWAXtK6U2Ss81nzhZSY4";
const EC384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBP1/xHJHO1qArtpylS7+rKaDt7U0mEo5KKFrQEpfc1O8uCkx5K88LaJfL81+nGU/SIbPhdkD3XK6aKtv6lxW4oEtu/fgkGhkeHn+OINzoubeMZ//LK5POdZlgNLCjybvHA==";
const EC384_FP: &str = "SHA256:ZkzDah8o8lYPtbF9sjimwDmdETs4Iysf4IqlaV9EHC4";

fn blob(key: &str) -> &str {
    key.split(' ').nth(1).unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn now() -> DateTime<Utc> {
    t("2026-06-01T12:00:00Z")
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expiring(key: &str, expire_on: &str) -> String {
    format!(r#"{key} google-ssh {{"userName":"alice@example.com","expireOn":"{expire_on}"}}"#)
}

// ---------------------------------------------------------------- names

#[test]
fn username_rule() {
    let long32 = "a".repeat(32);
    let long33 = "a".repeat(33);
    let rows: Vec<(&str, Result<(), NameError>)> = vec![
        ("alice", Ok(())),
        ("a", Ok(())),
        ("_svc", Ok(())),
        (".hidden", Ok(())),
        ("A.b-c_9", Ok(())),
        ("a-", Ok(())),
        ("root", Ok(())), // a valid name: refused later, by uid, in the plan
        (&long32, Ok(())),
        (&long33, Err(NameError::TooLong { len: 33 })),
        ("", Err(NameError::Empty)),
        ("-g", Err(NameError::LeadingHyphen)),
        ("--help", Err(NameError::LeadingHyphen)),
        ("../root", Err(NameError::BadChar { ch: '/' })),
        ("a/b", Err(NameError::BadChar { ch: '/' })),
        (".", Err(NameError::DotName)),
        ("..", Err(NameError::DotName)),
        ("a b", Err(NameError::BadChar { ch: ' ' })),
        ("a\tb", Err(NameError::BadChar { ch: '\t' })),
        ("a:b", Err(NameError::BadChar { ch: ':' })),
        ("a\0b", Err(NameError::BadChar { ch: '\0' })),
        ("a$b", Err(NameError::BadChar { ch: '$' })),
        ("al\u{a0}ice", Err(NameError::BadChar { ch: '\u{a0}' })),
        ("al\u{2000}ice", Err(NameError::BadChar { ch: '\u{2000}' })),
        ("al\u{2009}ice", Err(NameError::BadChar { ch: '\u{2009}' })),
        ("al\u{202f}ice", Err(NameError::BadChar { ch: '\u{202f}' })),
        ("al\u{3000}ice", Err(NameError::BadChar { ch: '\u{3000}' })),
        ("josé", Err(NameError::BadChar { ch: 'é' })),
        ("аlice", Err(NameError::BadChar { ch: 'а' })), // Cyrillic a
    ];
    for (name, want) in rows {
        assert_eq!(validate_username(name), want, "name {name:?}");
    }
}

#[test]
fn reserved_accounts() {
    let allow = vec!["root".to_string(), "backup".to_string()];
    let rows = [
        // (name, uid, uid_min, allow-listed?, reserved)
        ("alice", None, 1000, false, false),
        ("alice", Some(1001), 1000, false, false),
        ("alice", Some(1000), 1000, false, false),
        ("daemon", Some(1), 1000, false, true),
        ("svc", Some(999), 1000, false, true),
        ("svc", Some(999), 500, false, false),
        ("root", Some(0), 1000, false, true),
        ("toor", Some(0), 0, false, true), // uid 0 whatever UID_MIN says
        ("root", Some(0), 1000, true, false),
        ("backup", Some(34), 1000, true, false),
    ];
    for (name, uid, uid_min, allowed, want) in rows {
        let list = if allowed { allow.as_slice() } else { &[] };
        assert_eq!(
            is_reserved(name, uid, uid_min, list),
            want,
            "{name} {uid:?}"
        );
    }
}

#[test]
fn uid_min_from_login_defs() {
    let rows = [
        ("", 1000),
        ("# UID_MIN 5\n", 1000),
        ("UID_MIN\t\t\t 500\n", 500),
        ("MAIL_DIR /var/mail\nUID_MIN 1000\nUID_MAX 60000\n", 1000),
        ("  UID_MIN 2000  \n", 2000),
        ("UID_MIN 500\nUID_MIN 600\n", 600), // the later definition wins
        ("UID_MIN abc\n", 1000),
        ("UID_MIN\n", 1000),
        ("UID_MIN 0x200\n", 512),
        ("SYS_UID_MIN 100\n", 1000),
    ];
    for (text, want) in rows {
        assert_eq!(parse_uid_min(text), want, "{text:?}");
    }
}

// ---------------------------------------------------------------- line format

#[test]
fn line_format_accepted() {
    struct Row {
        rule: &'static str,
        line: String,
        user: &'static str,
        options: Option<&'static str>,
        key_type: &'static str,
        comment: &'static str,
    }
    let rows = vec![
        Row {
            rule: "plain key with comment",
            line: format!("alice:{ED} alice@laptop"),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "alice@laptop",
        },
        Row {
            rule: "no comment",
            line: format!("bob:{RSA}"),
            user: "bob",
            options: None,
            key_type: "ssh-rsa",
            comment: "",
        },
        Row {
            rule: "split on the first colon: colons in the comment stay",
            line: format!("alice:{ED} a:b:c"),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "a:b:c",
        },
        Row {
            rule: "options without quotes",
            line: format!("alice:restrict,pty {ED} x"),
            user: "alice",
            options: Some("restrict,pty"),
            key_type: "ssh-ed25519",
            comment: "x",
        },
        Row {
            rule: "quoted option with spaces and colons",
            line: format!(r#"alice:command="echo a b: c" {EC256} ops"#),
            user: "alice",
            options: Some(r#"command="echo a b: c""#),
            key_type: "ecdsa-sha2-nistp256",
            comment: "ops",
        },
        Row {
            rule: "escaped quotes inside a quoted option",
            line: format!(r#"alice:command="echo \"hi there\"",no-pty {ED}"#),
            user: "alice",
            options: Some(r#"command="echo \"hi there\"",no-pty"#),
            key_type: "ssh-ed25519",
            comment: "",
        },
        Row {
            rule: "from= and no-pty",
            line: format!(r#"alice:from="10.0.0.0/8",no-pty {EC384} c"#),
            user: "alice",
            options: Some(r#"from="10.0.0.0/8",no-pty"#),
            key_type: "ecdsa-sha2-nistp384",
            comment: "c",
        },
        Row {
            rule: "tabs and repeated spaces separate fields",
            line: format!(
                "alice:restrict\t{}  \t{}   my  laptop",
                "ssh-ed25519",
                blob(ED)
            ),
            user: "alice",
            options: Some("restrict"),
            key_type: "ssh-ed25519",
            comment: "my  laptop",
        },
        Row {
            rule: "ASCII whitespace around the line is trimmed",
            line: format!("  \talice:{ED} c \t "),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "c",
        },
        Row {
            rule: "non-ASCII comment is the user's label",
            line: format!("alice:{ED} José's laptop ✓ 日本"),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "José's laptop ✓ 日本",
        },
        Row {
            rule: "a comment that merely mentions google-ssh is a plain key",
            line: format!("alice:{ED} my google-ssh key"),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "my google-ssh key",
        },
        Row {
            rule: "google-ssh glued to other text is a plain comment",
            line: format!("alice:{ED} google-ssh-backup"),
            user: "alice",
            options: None,
            key_type: "ssh-ed25519",
            comment: "google-ssh-backup",
        },
    ];
    for r in rows {
        let parsed = parse_ssh_keys(&r.line);
        assert_eq!(parsed.len(), 1, "{}", r.rule);
        let e = parsed[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", r.rule));
        assert_eq!(e.user, r.user, "{}", r.rule);
        assert_eq!(e.key.options.as_deref(), r.options, "{}", r.rule);
        assert_eq!(e.key.key_type, r.key_type, "{}", r.rule);
        assert_eq!(e.key.comment, r.comment, "{}", r.rule);
        assert_eq!(e.expires, None, "{}", r.rule);
        assert_eq!(
            e.raw,
            r.line.trim_ascii().split_once(':').unwrap().1,
            "{}",
            r.rule
        );
    }
}

#[test]
fn crlf_and_blank_lines() {
    let value = format!("\r\nalice:{ED} a\r\n\r\n   \n\t\nbob:{RSA} b\r\n\ncarol:{EC256}");
    let parsed = parse_ssh_keys(&value);
    let got: Vec<(&str, &str)> = parsed
        .iter()
        .map(|p| {
            let e = p.as_ref().unwrap();
            (e.user.as_str(), e.key.comment.as_str())
        })
        .collect();
    assert_eq!(got, [("alice", "a"), ("bob", "b"), ("carol", "")]);
    for p in &parsed {
        assert!(!p.as_ref().unwrap().raw.contains('\r'));
    }
    // Line numbers count blank lines, so a warning points at the right line.
    let bad = parse_ssh_keys("\n\nnocolon\r\n");
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].as_ref().unwrap_err().line_no, 3);
}

#[test]
fn line_format_rejected() {
    let ed_blob = blob(ED);
    let rows: Vec<(&str, String, Option<&str>, KeyError)> = vec![
        (
            "no colon",
            format!("alice {ED}"),
            None,
            KeyError::MissingSeparator,
        ),
        (
            "empty user",
            format!(":{ED}"),
            Some(""),
            KeyError::BadUser(NameError::Empty),
        ),
        (
            "empty key",
            "alice:".into(),
            Some("alice"),
            KeyError::EmptyKey,
        ),
        (
            "type only",
            "alice:ssh-ed25519".into(),
            Some("alice"),
            KeyError::MissingBlob,
        ),
        (
            "options only",
            "alice:restrict,pty".into(),
            Some("alice"),
            KeyError::MissingKeyType,
        ),
        (
            "unknown type",
            format!("alice:ssh-foo {ed_blob}"),
            Some("alice"),
            KeyError::UnknownKeyType {
                token: "ssh-foo".into(),
            },
        ),
        (
            "unterminated quote",
            format!(r#"alice:command="echo {ED}"#),
            Some("alice"),
            KeyError::UnterminatedQuote,
        ),
        (
            "blob outside the base64 alphabet",
            "alice:ssh-ed25519 AAAA!AAA".into(),
            Some("alice"),
            KeyError::BadBase64 {
                reason: "character outside the base64 alphabet",
            },
        ),
        (
            "blob with a bad length",
            "alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5A".into(),
            Some("alice"),
            KeyError::BadBase64 {
                reason: "length is not a multiple of 4",
            },
        ),
        (
            "blob too short to hold a key",
            "alice:ssh-ed25519 AAAA".into(),
            Some("alice"),
            KeyError::BadBlob {
                reason: "too short to hold a key",
            },
        ),
        (
            "declared type differs from the blob's",
            format!("alice:ssh-rsa {ed_blob}"),
            Some("alice"),
            KeyError::KeyTypeMismatch {
                declared: "ssh-rsa".into(),
                embedded: "ssh-ed25519".into(),
            },
        ),
        (
            "CR in the middle would inject a line",
            format!("alice:{ED}\rbob:{RSA}"),
            Some("alice"),
            KeyError::ControlChar { ch: '\r' },
        ),
        (
            "NUL",
            format!("alice:{ED} a\0b"),
            Some("alice"),
            KeyError::ControlChar { ch: '\0' },
        ),
        (
            "DEL",
            format!("alice:{ED} a\x7fb"),
            Some("alice"),
            KeyError::ControlChar { ch: '\x7f' },
        ),
        (
            "vertical tab",
            format!("alice:{ED} a\x0bb"),
            Some("alice"),
            KeyError::ControlChar { ch: '\x0b' },
        ),
        (
            "C1 NEL (a line break for some readers)",
            format!("alice:{ED} a\u{85}b"),
            Some("alice"),
            KeyError::ControlChar { ch: '\u{85}' },
        ),
        (
            "U+00A0 between type and blob",
            format!("alice:ssh-ed25519\u{a0}{ed_blob}"),
            Some("alice"),
            KeyError::UnicodeWhitespace { ch: '\u{a0}' },
        ),
        (
            "U+3000 in the comment",
            format!("alice:{ED} my\u{3000}key"),
            Some("alice"),
            KeyError::UnicodeWhitespace { ch: '\u{3000}' },
        ),
        (
            "U+2028 line separator",
            format!("alice:{ED} a\u{2028}b"),
            Some("alice"),
            KeyError::UnicodeWhitespace { ch: '\u{2028}' },
        ),
        (
            "non-ASCII in options",
            format!(r#"alice:from="é" {ED}"#),
            Some("alice"),
            KeyError::NonAscii {
                field: "options",
                ch: 'é',
            },
        ),
        (
            "non-ASCII in the blob",
            format!("alice:ssh-ed25519 {ed_blob}é"),
            Some("alice"),
            KeyError::NonAscii {
                field: "data",
                ch: 'é',
            },
        ),
        (
            "user name with a leading hyphen",
            format!("-g:{ED}"),
            Some("-g"),
            KeyError::BadUser(NameError::LeadingHyphen),
        ),
        (
            "path traversal in the user name",
            format!("../root:{ED}"),
            Some("../root"),
            KeyError::BadUser(NameError::BadChar { ch: '/' }),
        ),
        (
            "slash in the user name",
            format!("a/b:{ED}"),
            Some("a/b"),
            KeyError::BadUser(NameError::BadChar { ch: '/' }),
        ),
        (
            "U+00A0 inside the user name",
            format!("al\u{a0}ice:{ED}"),
            Some("al\u{a0}ice"),
            KeyError::BadUser(NameError::BadChar { ch: '\u{a0}' }),
        ),
        (
            "U+3000 before the user name is not trimmed",
            format!("\u{3000}alice:{ED}"),
            Some("\u{3000}alice"),
            KeyError::BadUser(NameError::BadChar { ch: '\u{3000}' }),
        ),
        (
            "33-character user name",
            format!("{}:{ED}", "a".repeat(33)),
            Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            KeyError::BadUser(NameError::TooLong { len: 33 }),
        ),
        (
            "dot-dot user name",
            format!("..:{ED}"),
            Some(".."),
            KeyError::BadUser(NameError::DotName),
        ),
    ];
    for (rule, line, user, want) in rows {
        let parsed = parse_ssh_keys(&line);
        assert_eq!(parsed.len(), 1, "{rule}");
        let err = parsed[0].as_ref().expect_err(rule);
        assert_eq!(err.reason, want, "{rule}");
        assert_eq!(err.user.as_deref(), user, "{rule}");
        assert_eq!(err.line_no, 1, "{rule}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn every_known_key_type_is_recognised_without_options() {
    for ty in gce_accounts::decide::keys::KEY_TYPES {
        // A minimal well-formed blob: the length-prefixed type string.
        let mut wire = (ty.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(ty.as_bytes());
        let b64 = std_b64(&wire);
        let k = parse_authorized_key(&format!("{ty} {b64} c")).unwrap();
        assert_eq!(k.key_type, *ty);
        assert_eq!(k.options, None);
    }
}

fn std_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn fingerprints_match_ssh_keygen() {
    for (key, fp) in [
        (ED, ED_FP),
        (RSA, RSA_FP),
        (EC256, EC256_FP),
        (EC384, EC384_FP),
    ] {
        let k = parse_authorized_key(key).unwrap();
        assert_eq!(k.fingerprint(), fp);
        assert_eq!(k.fingerprint_hint(), fp);
    }
}

// ---------------------------------------------------------------- expiry

#[test]
fn expire_on_accepted_forms() {
    let rows = [
        ("2026-11-21T16:59:03+0000", "2026-11-21T16:59:03Z"),
        ("2026-11-21T16:59:03-0700", "2026-11-21T23:59:03Z"),
        ("2026-11-21T16:59:03+0530", "2026-11-21T11:29:03Z"),
        ("2026-11-21T16:59:03.250+0000", "2026-11-21T16:59:03.25Z"),
        ("2026-11-21T16:59:03Z", "2026-11-21T16:59:03Z"),
        ("2026-11-21T16:59:03+00:00", "2026-11-21T16:59:03Z"),
        ("2026-11-21T16:59:03-07:00", "2026-11-21T23:59:03Z"),
        ("2026-11-21T16:59:03.123Z", "2026-11-21T16:59:03.123Z"),
        (
            "2026-11-21T16:59:03.123456789+01:00",
            "2026-11-21T15:59:03.123456789Z",
        ),
    ];
    for (form, want) in rows {
        assert_eq!(parse_expire_on(form), Some(t(want)), "{form}");
        let line = format!("alice:{}", expiring(ED, form));
        let e = parse_ssh_keys(&line).remove(0).unwrap();
        assert_eq!(e.expires, Some(t(want)), "{form}");
    }
}

#[test]
fn google_ssh_malformed_is_rejected() {
    let bad_date = |v: &str| GoogleSshError::BadDate { value: v.into() };
    let rows: Vec<(&str, String, GoogleSshError)> = vec![
        ("no JSON", "google-ssh".into(), GoogleSshError::MissingJson),
        (
            "only spaces after",
            "google-ssh   ".into(),
            GoogleSshError::MissingJson,
        ),
        (
            "missing expireOn",
            r#"google-ssh {"userName":"a@b"}"#.into(),
            GoogleSshError::MissingExpireOn,
        ),
        (
            "expireOn number",
            r#"google-ssh {"userName":"a","expireOn":1700000000}"#.into(),
            GoogleSshError::ExpireOnNotString { found: "number" },
        ),
        (
            "expireOn null",
            r#"google-ssh {"expireOn":null}"#.into(),
            GoogleSshError::ExpireOnNotString { found: "null" },
        ),
        (
            "expireOn bool",
            r#"google-ssh {"expireOn":true}"#.into(),
            GoogleSshError::ExpireOnNotString { found: "boolean" },
        ),
        (
            "expireOn garbage",
            r#"google-ssh {"expireOn":"garbage"}"#.into(),
            bad_date("garbage"),
        ),
        (
            "expireOn empty",
            r#"google-ssh {"expireOn":""}"#.into(),
            bad_date(""),
        ),
        (
            "date without time",
            r#"google-ssh {"expireOn":"2026-11-21"}"#.into(),
            bad_date("2026-11-21"),
        ),
        (
            "no offset",
            r#"google-ssh {"expireOn":"2026-11-21T16:59:03"}"#.into(),
            bad_date("2026-11-21T16:59:03"),
        ),
        (
            "month 13",
            r#"google-ssh {"expireOn":"2026-13-01T00:00:00+0000"}"#.into(),
            bad_date("2026-13-01T00:00:00+0000"),
        ),
        (
            "epoch seconds as a string",
            r#"google-ssh {"expireOn":"1700000000"}"#.into(),
            bad_date("1700000000"),
        ),
        (
            "JSON array",
            r#"google-ssh ["expireOn"]"#.into(),
            GoogleSshError::NotAnObject,
        ),
    ];
    for (rule, comment, want) in rows {
        let line = format!("alice:{ED} {comment}");
        let err = parse_ssh_keys(&line).remove(0).expect_err(rule);
        assert_eq!(err.reason, KeyError::BadGoogleSsh(want), "{rule}");
        assert_eq!(err.user.as_deref(), Some("alice"), "{rule}");
    }
    // Malformed JSON: the message comes from serde_json, so match the variant only.
    for comment in [
        r#"google-ssh {"expireOn":"2026-11-21T16:59:03+0000""#,
        r#"google-ssh {expireOn:"2026-11-21T16:59:03+0000"}"#,
        r#"google-ssh {"expireOn":"2026-11-21T16:59:03+0000"} trailing"#,
        "google-ssh not json",
    ] {
        let err = parse_ssh_keys(&format!("alice:{ED} {comment}"))
            .remove(0)
            .unwrap_err();
        assert!(
            matches!(
                err.reason,
                KeyError::BadGoogleSsh(GoogleSshError::BadJson(_))
            ),
            "{comment}: {err}"
        );
    }
}

#[test]
fn google_ssh_json_with_spaces_is_tolerated() {
    let line = format!(
        r#"alice:{ED} google-ssh  {{ "userName" : "alice@example.com", "expireOn" : "2026-11-21T16:59:03+0000" }}"#
    );
    let e = parse_ssh_keys(&line).remove(0).unwrap();
    assert_eq!(e.expires, Some(t("2026-11-21T16:59:03Z")));
}

#[test]
fn expiry_boundary_is_strictly_after() {
    let exp = t("2026-06-01T12:00:00Z");
    let e = parse_ssh_keys(&format!(
        "alice:{}",
        expiring(ED, "2026-06-01T12:00:00+0000")
    ))
    .remove(0)
    .unwrap();
    let rows = [
        (exp - Duration::seconds(1), false),
        (exp, false), // now == expireOn: still valid
        (exp + Duration::nanoseconds(1), true),
        (exp + Duration::seconds(1), true),
    ];
    for (now, expired) in rows {
        assert_eq!(e.is_expired(now), expired, "{now}");
    }
}

// ---------------------------------------------------------------- sources

fn users_of(d: &Desired) -> Vec<&str> {
    d.users.keys().map(String::as_str).collect()
}

#[test]
fn source_precedence() {
    let legacy = format!("legacy:{ED}");
    let inst = format!("inst:{ED}");
    let proj = format!("proj:{ED}");
    let projlegacy = format!("projlegacy:{ED}");
    let project = meta(&[("ssh-keys", &proj), ("sshKeys", &projlegacy)]);
    let all_project = vec!["inst", "proj", "projlegacy"];
    // (rule, instance attributes, users that get keys)
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let rows: Vec<Row> = vec![
        (
            "no blocking: instance and project",
            vec![("ssh-keys", &inst)],
            all_project.clone(),
        ),
        (
            "block TRUE",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", "TRUE")],
            vec!["inst"],
        ),
        (
            "block true",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", "true")],
            vec!["inst"],
        ),
        (
            "block ' True ' trimmed",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", " True \n")],
            vec!["inst"],
        ),
        (
            "block False",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", "False")],
            all_project.clone(),
        ),
        (
            "block empty",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", "")],
            all_project.clone(),
        ),
        (
            "block yes is not true",
            vec![("ssh-keys", &inst), ("block-project-ssh-keys", "yes")],
            all_project.clone(),
        ),
        (
            "legacy instance sshKeys blocks project keys",
            vec![("sshKeys", &legacy), ("ssh-keys", &inst)],
            vec!["inst", "legacy"],
        ),
        (
            "blank legacy sshKeys does not block",
            vec![("sshKeys", " \n\t"), ("ssh-keys", &inst)],
            all_project.clone(),
        ),
        ("no instance keys", vec![], vec!["proj", "projlegacy"]),
    ];
    for (rule, instance, want) in rows {
        let d = desired_keys(&meta(&instance), &project, now());
        assert!(!d.oslogin, "{rule}");
        assert_eq!(users_of(&d), want, "{rule}");
        assert_eq!(d.project_keys_blocked, !want.contains(&"proj"), "{rule}");
    }
}

#[test]
fn oslogin_instance_overrides_project() {
    let keys = format!("alice:{ED}");
    let rows = [
        // (instance enable-oslogin, project enable-oslogin, stands down)
        (None, None, false),
        (Some("true"), None, true),
        (Some("TRUE"), Some("false"), true),
        (None, Some("True"), true),
        (Some("false"), Some("true"), false),
        (Some("FALSE"), Some("TRUE"), false),
        (Some(""), Some("true"), true), // a blank instance value does not override
        (Some("true"), Some("false"), true),
        (None, Some("no"), false),
    ];
    for (inst, proj, want) in rows {
        let mut i = vec![("ssh-keys", keys.as_str())];
        let mut p = vec![("ssh-keys", keys.as_str())];
        if let Some(v) = inst {
            i.push(("enable-oslogin", v));
        }
        if let Some(v) = proj {
            p.push(("enable-oslogin", v));
        }
        let d = desired_keys(&meta(&i), &meta(&p), now());
        assert_eq!(d.oslogin, want, "{inst:?} {proj:?}");
        if want {
            assert!(d.users.is_empty() && d.rejected.is_empty() && d.next_expiry.is_none());
        } else {
            assert_eq!(users_of(&d), ["alice"]);
        }
    }
}

#[test]
fn keys_keep_source_order_and_duplicates_collapse() {
    let instance = meta(&[(
        "ssh-keys",
        &format!("alice:{ED} a\nalice:{RSA} r\nalice:{ED} a"),
    )]);
    let project = meta(&[
        (
            "ssh-keys",
            &format!("alice:{ED} a\nalice:{EC256} e\nbob:{ED} a"),
        ),
        ("sshKeys", &format!("alice:{EC384}")),
    ]);
    let d = desired_keys(&instance, &project, now());
    let alice: Vec<&str> = d.users["alice"].iter().map(|e| e.raw.as_str()).collect();
    let want_ed = format!("{ED} a");
    let want_rsa = format!("{RSA} r");
    let want_ec = format!("{EC256} e");
    assert_eq!(alice, [want_ed.as_str(), &want_rsa, &want_ec, EC384]);
    assert_eq!(d.users["bob"].len(), 1, "dedup is per user");
}

#[test]
fn expired_keys_are_dropped_and_next_expiry_is_the_earliest_kept() {
    let value = [
        format!("alice:{}", expiring(ED, "2026-06-01T11:59:59+0000")), // past
        format!("alice:{}", expiring(RSA, "2026-06-01T12:00:00Z")),    // == now: kept
        format!("bob:{}", expiring(EC256, "2026-06-01T13:00:00+0000")),
        format!("bob:{}", expiring(ED, "2026-06-01T12:30:00+00:00")),
        format!("carol:{}", expiring(ED, "2020-01-01T00:00:00Z")), // only key is past
        format!("dave:{EC384}"),
    ]
    .join("\n");
    let d = desired_keys(&meta(&[("ssh-keys", &value)]), &BTreeMap::new(), now());
    assert_eq!(users_of(&d), ["alice", "bob", "dave"]);
    assert_eq!(d.users["alice"].len(), 1);
    assert_eq!(d.users["alice"][0].key.key_type, "ssh-rsa");
    assert_eq!(d.expired.len(), 2);
    assert_eq!(d.next_expiry, Some(t("2026-06-01T12:00:00Z")));

    let later = desired_keys(
        &meta(&[("ssh-keys", &value)]),
        &BTreeMap::new(),
        t("2026-06-01T12:00:01Z"),
    );
    assert_eq!(later.next_expiry, Some(t("2026-06-01T12:30:00Z")));
    let none = desired_keys(
        &meta(&[("ssh-keys", &format!("dave:{EC384}"))]),
        &BTreeMap::new(),
        now(),
    );
    assert_eq!(none.next_expiry, None);
}

#[test]
fn rejected_lines_carry_their_source() {
    let instance = meta(&[("ssh-keys", &format!("alice:{ED}\n-g:{ED}"))]);
    let project = meta(&[
        ("ssh-keys", &format!("../root:{ED}")),
        (
            "sshKeys",
            &format!("bob:{}", r#"ssh-ed25519 AAAA google-ssh {"expireOn":null}"#),
        ),
    ]);
    let d = desired_keys(&instance, &project, now());
    assert_eq!(users_of(&d), ["alice"]);
    let got: Vec<(KeySource, usize, Option<&str>)> = d
        .rejected
        .iter()
        .map(|r| (r.source, r.error.line_no, r.error.user.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (KeySource::InstanceSshKeys, 2, Some("-g")),
            (KeySource::ProjectSshKeys, 1, Some("../root")),
            (KeySource::ProjectSshKeysLegacy, 1, Some("bob")),
        ]
    );
    assert_eq!(
        d.rejected[0].to_string().split(':').next(),
        Some("instance ssh-keys line 2 (user \"-g\")")
    );
}

#[test]
fn huge_value_is_parsed_completely() {
    // Metadata values are capped at 256 KiB; fill one with mostly short ed25519
    // lines (thousands of them), some expiring, one in ten refused.
    let keys = [
        ED, ED, ED, ED, ED, EC256, ED, RSA, ED, ED, ED, ED, ED, ED, ED, EC384,
    ];
    let mut lines = Vec::new();
    let mut len = 0;
    let mut i = 0;
    loop {
        let line = match i % 10 {
            9 => format!("bad user {i}:{ED}"),
            8 => format!(
                r#"u{}:{} google-ssh {{"userName":"u{i}@example.com","expireOn":"2030-01-01T00:00:00Z"}}"#,
                i % 1000,
                keys[i % 16]
            ),
            _ => format!("u{}:{} h{i}", i % 1000, keys[i % 16]),
        };
        if len + line.len() + 2 > 256 * 1024 {
            break;
        }
        len += line.len() + 2;
        lines.push(line);
        i += 1;
    }
    let value = lines.join("\r\n");
    assert!(
        value.len() > 255 * 1024 && lines.len() > 2000,
        "{} {}",
        value.len(),
        lines.len()
    );
    let start = Instant::now();
    let d = desired_keys(&meta(&[("ssh-keys", &value)]), &BTreeMap::new(), now());
    eprintln!(
        "{} bytes, {} lines: {:?}",
        value.len(),
        lines.len(),
        start.elapsed()
    );
    let bad = (0..lines.len()).filter(|i| i % 10 == 9).count();
    let kept: usize = d.users.values().map(Vec::len).sum();
    assert_eq!(d.rejected.len(), bad);
    assert_eq!(
        kept,
        lines.len() - bad,
        "every line is distinct (h{{i}} comments)"
    );
    assert_eq!(
        d.users.len(),
        900,
        "users u*9 only ever appear on refused lines"
    );
    assert_eq!(d.next_expiry, Some(t("2030-01-01T00:00:00Z")));
}

// ---------------------------------------------------------------- authorized_keys

#[test]
fn render_keeps_user_lines_byte_for_byte() {
    let m = "# Added by Google";
    // (rule, existing file, managed lines, expected file)
    type Row<'a> = (&'a str, Vec<u8>, Vec<&'a str>, Vec<u8>);
    let rows: Vec<Row> = vec![
        (
            "empty file, nothing managed",
            b"".to_vec(),
            vec![],
            b"".to_vec(),
        ),
        (
            "empty file, one key",
            b"".to_vec(),
            vec!["K1"],
            format!("{m}\nK1\n").into(),
        ),
        (
            "user lines only, nothing managed: unchanged",
            b"ssh-rsa U1 me\n# my comment\n\n  \nssh-ed25519 U2".to_vec(),
            vec![],
            b"ssh-rsa U1 me\n# my comment\n\n  \nssh-ed25519 U2".to_vec(),
        ),
        (
            "no trailing newline: one is inserted before our pairs",
            b"ssh-rsa U1".to_vec(),
            vec!["K1", "K2"],
            format!("ssh-rsa U1\n{m}\nK1\n{m}\nK2\n").into(),
        ),
        (
            "old pairs replaced, user lines around them kept",
            format!("U1\n{m}\nOLD1\nU2\n{m}\nOLD2\n").into(),
            vec!["K1"],
            format!("U1\nU2\n{m}\nK1\n").into(),
        ),
        (
            "all managed keys gone: user lines stay",
            format!("U1\n{m}\nOLD1\n#c\n").into(),
            vec![],
            b"U1\n#c\n".to_vec(),
        ),
        (
            "CRLF user lines kept with their CR",
            format!("U1\r\n{m}\r\nOLD\r\nU2\r\n").into(),
            vec![],
            b"U1\r\nU2\r\n".to_vec(),
        ),
        (
            "marker on the last line, no newline, nothing after",
            format!("U1\n{m}").into(),
            vec![],
            b"U1\n".to_vec(),
        ),
        (
            "marker on the last line with newline",
            format!("U1\n{m}\n").into(),
            vec!["K"],
            format!("U1\n{m}\nK\n").into(),
        ),
        (
            "managed key on the last line without newline",
            format!("U1\n{m}\nOLD").into(),
            vec!["K"],
            format!("U1\n{m}\nK\n").into(),
        ),
        (
            "consecutive markers: both dropped with the line after the last",
            format!("{m}\n{m}\nOLD\nU1\n").into(),
            vec![],
            b"U1\n".to_vec(),
        ),
        (
            "marker look-alikes are user lines",
            format!("{m} \n#Added by Google\n  {m}\n# added by google\n").into(),
            vec![],
            format!("{m} \n#Added by Google\n  {m}\n# added by google\n").into(),
        ),
        (
            "non-UTF-8 bytes preserved",
            [
                &b"\xff\xfe ssh-rsa U1 caf\xe9\n"[..],
                m.as_bytes(),
                b"\nOLD\xff\n",
            ]
            .concat(),
            vec!["K"],
            [
                &b"\xff\xfe ssh-rsa U1 caf\xe9\n"[..],
                m.as_bytes(),
                b"\nK\n",
            ]
            .concat(),
        ),
    ];
    for (rule, existing, managed, want) in rows {
        let got = render(&existing, &managed);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{rule}"
        );
        assert_eq!(got, want, "{rule}");
        // Rendering is idempotent and what we wrote is what we read back.
        assert_eq!(render(&got, &managed), got, "{rule}: idempotent");
        assert_eq!(managed_lines_in(&got), managed, "{rule}: read back");
    }
}

/// A small deterministic generator, so the property below needs no dependency.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn user_lines_survive_any_rewrite() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let pieces: [&[u8]; 8] = [
        b"ssh-rsa USER",
        b"# note",
        b"",
        b"  ",
        b"\xff\x00bin",
        b"x\r",
        b"# Added by Googl",
        b"command=\"a b\" k",
    ];
    for _ in 0..500 {
        let mut existing = Vec::new();
        let mut user = Vec::new();
        let n = rng.next() % 8;
        for i in 0..n {
            if rng.next().is_multiple_of(3) {
                existing.extend_from_slice(format!("{MARKER}\nmanaged{i}\n").as_bytes());
            } else {
                let p = pieces[(rng.next() % pieces.len() as u64) as usize];
                let eol: &[u8] = if rng.next().is_multiple_of(2) {
                    b"\n"
                } else {
                    b"\r\n"
                };
                existing.extend_from_slice(p);
                existing.extend_from_slice(eol);
                user.extend_from_slice(p);
                user.extend_from_slice(eol);
            }
        }
        let managed: Vec<String> = (0..rng.next() % 3).map(|i| format!("K{i}")).collect();
        let out = render(&existing, &managed);
        assert!(
            out.starts_with(&user),
            "{:?}",
            String::from_utf8_lossy(&existing)
        );
        assert_eq!(authorized_keys::user_lines_in(&out), user);
        assert_eq!(managed_lines_in(&out), managed);
    }
}

/// Google's guest agent (Go) reading a file: skip the line after each marker,
/// keep the rest (google-guest-agent's updateAuthorizedKeysFile).
fn google_reader(file: &str) -> (Vec<String>, Vec<String>) {
    let (mut user, mut managed) = (Vec::new(), Vec::new());
    let mut is_google = false;
    for l in file.split('\n') {
        if is_google {
            is_google = false;
            managed.push(l.to_string());
            continue;
        }
        if l == MARKER {
            is_google = true;
            continue;
        }
        user.push(l.to_string());
    }
    (user, managed)
}

/// Google's agents write the user's lines, then "# Added by Google\n<key>\n" per key.
fn google_writer(user: &[&str], keys: &[&str]) -> String {
    let mut s: String = user.iter().map(|l| format!("{l}\n")).collect();
    for k in keys {
        s.push_str(&format!("{MARKER}\n{k}\n"));
    }
    s
}

#[test]
fn round_trip_with_google_agents() {
    let gk = expiring(ED, "2026-11-21T16:59:03+0000");
    let google_file = google_writer(&["ssh-rsa USERKEY me@laptop", "# mine"], &[&gk, RSA]);
    // Theirs → ours: we see their keys as managed and keep the user's lines.
    assert_eq!(managed_lines_in(google_file.as_bytes()), [gk.as_str(), RSA]);
    let ours = render(google_file.as_bytes(), &[EC256]);
    assert_eq!(
        String::from_utf8(ours.clone()).unwrap(),
        format!("ssh-rsa USERKEY me@laptop\n# mine\n{MARKER}\n{EC256}\n")
    );
    // Ours → theirs: Google's reader finds the same user lines and our key.
    let (user, managed) = google_reader(std::str::from_utf8(&ours).unwrap());
    assert_eq!(user, ["ssh-rsa USERKEY me@laptop", "# mine", ""]);
    assert_eq!(managed, [EC256]);
    // And their rewrite of our file is byte-identical to ours.
    assert_eq!(
        google_writer(
            &user[..2].iter().map(String::as_str).collect::<Vec<_>>(),
            &[EC256]
        )
        .as_bytes(),
        &ours[..]
    );
}

#[test]
fn key_line_expiry_option() {
    let gssh = r#"google-ssh {"userName":"a@b","expireOn":"2026-11-21T16:59:03+0000"}"#;
    let plain = parse_ssh_keys(&format!("alice:{ED} x")).remove(0).unwrap();
    let exp = parse_ssh_keys(&format!("alice:{ED} {gssh}"))
        .remove(0)
        .unwrap();
    let exp_opts = parse_ssh_keys(&format!("alice:restrict,pty {ED} {gssh}"))
        .remove(0)
        .unwrap();
    let pdt = ExpiryOption::LocalTime(FixedOffset::west_opt(7 * 3600).unwrap());
    let rows: Vec<(&str, &_, ExpiryOption, String)> = vec![
        (
            "non-expiring key is written as given",
            &plain,
            ExpiryOption::Utc,
            format!("{ED} x"),
        ),
        (
            "expiry not requested",
            &exp,
            ExpiryOption::None,
            format!("{ED} {gssh}"),
        ),
        (
            "UTC with Z",
            &exp,
            ExpiryOption::Utc,
            format!(r#"expiry-time="20261121165903Z" {ED} {gssh}"#),
        ),
        (
            "prepended to existing options",
            &exp_opts,
            ExpiryOption::Utc,
            format!(r#"expiry-time="20261121165903Z",restrict,pty {ED} {gssh}"#),
        ),
        (
            "local time for OpenSSH < 9.1, no Z",
            &exp,
            pdt,
            format!(r#"expiry-time="20261121095903" {ED} {gssh}"#),
        ),
    ];
    for (rule, entry, opt, want) in rows {
        let line = key_line(entry, opt);
        assert_eq!(line, want, "{rule}");
        // The line we write is itself a valid authorized_keys entry.
        let k = parse_authorized_key(&line).unwrap();
        assert_eq!(k.blob, blob(ED), "{rule}");
    }
}

#[test]
fn openssh_version_for_utc_expiry() {
    let rows = [
        (
            "OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024",
            true,
        ),
        ("OpenSSH_9.1p1", true),
        ("OpenSSH_9.0p1 Ubuntu-1ubuntu7", false),
        ("OpenSSH_8.9p1", false),
        (
            "OpenSSH_8.9p1 Ubuntu-3ubuntu0.10, OpenSSL 3.0.2 15 Mar 2022",
            false,
        ),
        ("OpenSSH_7.4p1, OpenSSL 1.0.2k-fips  26 Jan 2017", false),
        ("OpenSSH_10.0p2 Debian-5", true),
        ("OpenSSH_9.10", true),
        ("unknown option -- V", false),
        ("", false),
    ];
    for (v, want) in rows {
        assert_eq!(openssh_supports_utc_expiry(v), want, "{v}");
    }
    let local = FixedOffset::east_opt(3600).unwrap();
    let choose = [
        ("OpenSSH_9.6p1 Ubuntu-3ubuntu13", ExpiryOption::Utc),
        ("OpenSSH_8.9p1", ExpiryOption::LocalTime(local)),
        ("OpenSSH_8.2p1", ExpiryOption::LocalTime(local)),
        // An sshd that does not know the option would refuse the whole line.
        ("OpenSSH_7.4p1", ExpiryOption::None),
        ("", ExpiryOption::None),
    ];
    for (v, want) in choose {
        assert_eq!(ExpiryOption::for_openssh(v, local), want, "{v}");
    }
}

// ---------------------------------------------------------------- state

#[test]
fn state_parse_is_tolerant_but_refuses_bad_json() {
    let ok_rows = [
        ("{}", State::default()),
        (
            r#"{"users":{"alice":{}}}"#,
            state(&[("alice", UserState::default())]),
        ),
        (
            r#"{"version":1,"users":{"alice":{"origin":"created","keys":["k"],"in_sudoers":true,"failures":2,"future":1}},"extra":[]}"#,
            state(&[(
                "alice",
                UserState {
                    origin: Origin::Created,
                    keys: vec!["k".into()],
                    in_sudoers: true,
                    failures: 2,
                },
            )]),
        ),
    ];
    for (text, want) in ok_rows {
        assert_eq!(State::parse(text.as_bytes()).unwrap(), want, "{text}");
    }
    assert_eq!(
        UserState::default().origin,
        Origin::Adopted,
        "unknown origin is the safe side"
    );
    for bad in [
        "",
        "{",
        "not json",
        r#"{"users":[]}"#,
        r#"{"users":{"a":{"origin":"stolen"}}}"#,
        "\u{feff}{}",
    ] {
        assert!(
            matches!(State::parse(bad.as_bytes()), Err(StateError::BadJson(_))),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        State::parse(br#"{"version":99}"#),
        Err(StateError::FutureVersion { found: 99 })
    ));
}

#[test]
fn state_round_trip() {
    let s = state(&[
        (
            "alice",
            UserState {
                origin: Origin::Created,
                keys: vec![ED.into()],
                in_sudoers: true,
                failures: 0,
            },
        ),
        (
            "bob",
            UserState {
                origin: Origin::Adopted,
                keys: vec![],
                in_sudoers: false,
                failures: 3,
            },
        ),
    ]);
    let bytes = s.to_bytes();
    assert!(
        std::str::from_utf8(&bytes)
            .unwrap()
            .contains(r#""origin": "created""#)
    );
    assert_eq!(State::parse(&bytes).unwrap(), s);
}

#[test]
fn google_users_file_migrates_as_adopted() {
    let s = State::from_google_users_file("alice\nbob\r\n\n  carol  \n-g\n../root\n# comment\n");
    assert_eq!(
        s.users.keys().collect::<Vec<_>>(),
        ["alice", "bob", "carol"]
    );
    for u in s.users.values() {
        assert_eq!(u.origin, Origin::Adopted);
        assert!(u.keys.is_empty());
    }
}

// ---------------------------------------------------------------- plan

fn state(users: &[(&str, UserState)]) -> State {
    let mut s = State::default();
    for (n, u) in users {
        s.users.insert(n.to_string(), u.clone());
    }
    s
}

fn local(users: &[(&str, u32, &str)]) -> BTreeMap<String, LocalUser> {
    users
        .iter()
        .map(|(n, uid, shell)| {
            (
                n.to_string(),
                LocalUser {
                    uid: *uid,
                    gid: *uid,
                    home: PathBuf::from(format!("/home/{n}")),
                    shell: shell.to_string(),
                },
            )
        })
        .collect()
}

fn managed(origin: Origin, keys: &[&str]) -> UserState {
    UserState {
        origin,
        keys: keys.iter().map(|k| k.to_string()).collect(),
        in_sudoers: true,
        failures: 0,
    }
}

fn desired(lines: &str) -> Desired {
    desired_keys(&meta(&[("ssh-keys", lines)]), &BTreeMap::new(), now())
}

fn create(u: &str) -> Action {
    Action::CreateUser { user: u.into() }
}
fn adopt(u: &str) -> Action {
    Action::Adopt { user: u.into() }
}
fn sudo(u: &str) -> Action {
    Action::AddToSudoers { user: u.into() }
}
fn unsudo(u: &str) -> Action {
    Action::RemoveFromSudoers { user: u.into() }
}
fn write(u: &str, lines: &[&str]) -> Action {
    Action::WriteKeys {
        user: u.into(),
        lines: lines.iter().map(|l| l.to_string()).collect(),
    }
}
fn delete(u: &str) -> Action {
    Action::DeleteUser { user: u.into() }
}
fn forget(u: &str) -> Action {
    Action::Forget { user: u.into() }
}

#[test]
fn plan_rules() {
    let bash = "/bin/bash";
    let remove = PlanConfig {
        deprovision_remove: true,
        ..PlanConfig::default()
    };
    let keep = PlanConfig::default();
    struct Row {
        rule: &'static str,
        desired: Desired,
        state: State,
        local: BTreeMap<String, LocalUser>,
        cfg: PlanConfig,
        actions: Vec<Action>,
        refused: Vec<&'static str>,
    }
    let rows = vec![
        Row {
            rule: "new user: create, sudoers, keys",
            desired: desired(&format!("alice:{ED}")),
            state: State::default(),
            local: local(&[]),
            cfg: keep.clone(),
            actions: vec![create("alice"), sudo("alice"), write("alice", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "existing local user not in state: adopt",
            desired: desired(&format!("ubuntu:{ED}")),
            state: State::default(),
            local: local(&[("ubuntu", 1000, bash)]),
            cfg: keep.clone(),
            actions: vec![adopt("ubuntu"), sudo("ubuntu"), write("ubuntu", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "unchanged user: no action at all",
            desired: desired(&format!("alice:{ED}")),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![],
            refused: vec![],
        },
        Row {
            rule: "changed keys: only WriteKeys",
            desired: desired(&format!("alice:{ED}\nalice:{RSA}")),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![write("alice", &[ED, RSA])],
            refused: vec![],
        },
        Row {
            rule: "sudoers membership not recorded: retried alone",
            desired: desired(&format!("alice:{ED}")),
            state: state(&[(
                "alice",
                UserState {
                    in_sudoers: false,
                    ..managed(Origin::Created, &[ED])
                },
            )]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![sudo("alice")],
            refused: vec![],
        },
        Row {
            rule: "created user removed with deprovision_remove: deleted",
            desired: desired(""),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[("alice", 1001, bash)]),
            cfg: remove.clone(),
            actions: vec![
                write("alice", &[]),
                unsudo("alice"),
                delete("alice"),
                forget("alice"),
            ],
            refused: vec![],
        },
        Row {
            rule: "created user removed without deprovision_remove: kept, and its record too",
            desired: desired(""),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![write("alice", &[]), unsudo("alice")],
            refused: vec![],
        },
        Row {
            rule: "a retired created user (no keys, no sudo) needs nothing",
            desired: desired(""),
            state: state(&[(
                "alice",
                UserState {
                    in_sudoers: false,
                    ..managed(Origin::Created, &[])
                },
            )]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![],
            refused: vec![],
        },
        Row {
            rule: "a retired created user who returns is still ours, not adopted",
            desired: desired(&format!("alice:{ED}")),
            state: state(&[(
                "alice",
                UserState {
                    in_sudoers: false,
                    ..managed(Origin::Created, &[])
                },
            )]),
            local: local(&[("alice", 1001, bash)]),
            cfg: keep.clone(),
            actions: vec![sudo("alice"), write("alice", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "adopted user removed: never DeleteUser",
            desired: desired(""),
            state: state(&[("ubuntu", managed(Origin::Adopted, &[ED]))]),
            local: local(&[("ubuntu", 1000, bash)]),
            cfg: remove.clone(),
            actions: vec![write("ubuntu", &[]), unsudo("ubuntu"), forget("ubuntu")],
            refused: vec![],
        },
        Row {
            rule: "removed user already gone locally: just forget",
            desired: desired(""),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[]),
            cfg: remove.clone(),
            actions: vec![forget("alice")],
            refused: vec![],
        },
        Row {
            rule: "root (uid 0) is refused",
            desired: desired(&format!("root:{ED}")),
            state: State::default(),
            local: local(&[("root", 0, bash)]),
            cfg: remove.clone(),
            actions: vec![],
            refused: vec!["root"],
        },
        Row {
            rule: "root allow-listed is adopted",
            desired: desired(&format!("root:{ED}")),
            state: State::default(),
            local: local(&[("root", 0, bash)]),
            cfg: PlanConfig {
                allowed_system_users: vec!["root".into()],
                ..keep.clone()
            },
            actions: vec![adopt("root"), sudo("root"), write("root", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "system account below UID_MIN is refused",
            desired: desired(&format!("daemon:{ED}")),
            state: State::default(),
            local: local(&[("daemon", 1, bash)]),
            cfg: keep.clone(),
            actions: vec![],
            refused: vec!["daemon"],
        },
        Row {
            rule: "UID_MIN from login.defs decides",
            desired: desired(&format!("svc:{ED}")),
            state: State::default(),
            local: local(&[("svc", 600, bash)]),
            cfg: PlanConfig {
                uid_min: 500,
                ..keep.clone()
            },
            actions: vec![adopt("svc"), sudo("svc"), write("svc", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "nologin shell: adopted, no keys, no sudo",
            desired: desired(&format!("svc:{ED}")),
            state: State::default(),
            local: local(&[("svc", 1500, "/usr/sbin/nologin")]),
            cfg: keep.clone(),
            actions: vec![adopt("svc"), write("svc", &[])],
            refused: vec!["svc"],
        },
        Row {
            rule: "/bin/false shell with our keys installed: keys removed",
            desired: desired(&format!("svc:{ED}")),
            state: state(&[("svc", managed(Origin::Adopted, &[ED]))]),
            local: local(&[("svc", 1500, "/bin/false")]),
            cfg: keep.clone(),
            actions: vec![write("svc", &[])],
            refused: vec!["svc"],
        },
        Row {
            rule: "managed user deleted by someone else: recreated",
            desired: desired(&format!("alice:{ED}")),
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[]),
            cfg: keep.clone(),
            actions: vec![create("alice"), sudo("alice"), write("alice", &[ED])],
            refused: vec![],
        },
        Row {
            rule: "OS Login: the keys and sudo metadata granted are taken back; nobody is deleted",
            desired: Desired {
                oslogin: true,
                ..Desired::default()
            },
            state: state(&[("alice", managed(Origin::Created, &[ED]))]),
            local: local(&[("alice", 1001, bash)]),
            cfg: remove.clone(),
            actions: vec![write("alice", &[]), unsudo("alice")],
            refused: vec![],
        },
        Row {
            rule: "OS Login: a user with nothing granted, or without an account, gets no action",
            desired: Desired {
                oslogin: true,
                ..Desired::default()
            },
            state: state(&[
                (
                    "bob",
                    UserState {
                        origin: Origin::Created,
                        ..UserState::default()
                    },
                ),
                ("gone", managed(Origin::Adopted, &[ED])),
            ]),
            local: local(&[("bob", 1002, bash)]),
            cfg: remove.clone(),
            actions: vec![],
            refused: vec![],
        },
        Row {
            rule: "several users: sorted by name, each in its own order",
            desired: desired(&format!("zed:{ED}\nbob:{RSA}")),
            state: state(&[("carl", managed(Origin::Created, &[ED]))]),
            local: local(&[("carl", 1002, bash), ("zed", 1003, bash)]),
            cfg: remove.clone(),
            actions: vec![
                create("bob"),
                sudo("bob"),
                write("bob", &[RSA]),
                write("carl", &[]),
                unsudo("carl"),
                delete("carl"),
                forget("carl"),
                adopt("zed"),
                sudo("zed"),
                write("zed", &[ED]),
            ],
            refused: vec![],
        },
        Row {
            rule: "invalid name in a hand-edited state is forgotten",
            desired: desired(""),
            state: state(&[("../x", managed(Origin::Created, &[ED]))]),
            local: local(&[]),
            cfg: remove.clone(),
            actions: vec![forget("../x")],
            refused: vec!["../x"],
        },
    ];
    for r in rows {
        let p = plan(&r.desired, &r.state, &r.local, &r.cfg);
        assert_eq!(p.actions, r.actions, "{}", r.rule);
        let refused: Vec<&str> = p.refused.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(refused, r.refused, "{}", r.rule);
    }
}

#[test]
fn plan_after_apply_is_empty_across_restart() {
    let d = desired(&format!(
        "alice:{ED}\nbob:{}\nubuntu:{RSA}",
        expiring(EC256, "2026-06-01T13:00:00+0000")
    ));
    let users = local(&[("ubuntu", 1000, "/bin/bash")]);
    let cfg = PlanConfig {
        expiry: ExpiryOption::Utc,
        ..PlanConfig::default()
    };
    let mut s = State::default();
    let first = plan(&d, &s, &users, &cfg);
    assert_eq!(first.actions.len(), 9);
    for a in &first.actions {
        s.record(a);
    }
    assert_eq!(s.users["alice"].origin, Origin::Created);
    assert_eq!(s.users["ubuntu"].origin, Origin::Adopted);
    assert!(s.users["bob"].keys[0].starts_with(r#"expiry-time="20260601130000Z" "#));
    // A restart reloads the state from disk: still nothing to do.
    let s = State::parse(&s.to_bytes()).unwrap();
    let users = local(&[
        ("ubuntu", 1000, "/bin/bash"),
        ("alice", 1001, "/bin/bash"),
        ("bob", 1002, "/bin/bash"),
    ]);
    assert_eq!(plan(&d, &s, &users, &cfg).actions, []);
}

#[test]
fn hostile_names_never_reach_the_plan() {
    let value = [
        format!("-g:{ED}"),
        format!("../root:{ED}"),
        format!("a/b:{ED}"),
        format!("al\u{a0}ice:{ED}"),
        format!("al\u{3000}ice:{ED}"),
        format!("{}:{ED}", "a".repeat(33)),
        format!(".:{ED}"),
        format!("..:{ED}"),
        format!("root:{ED}"),
    ]
    .join("\n");
    let d = desired(&value);
    assert_eq!(d.rejected.len(), 8);
    assert_eq!(users_of(&d), ["root"]);
    let p = plan(
        &d,
        &State::default(),
        &local(&[("root", 0, "/bin/bash")]),
        &PlanConfig::default(),
    );
    assert!(p.actions.is_empty());
    assert_eq!(p.refused.len(), 1);
    assert!(p.refused[0].1.contains("uid 0"), "{}", p.refused[0].1);
}

#[test]
fn creation_failures_are_remembered_for_backoff() {
    let mut s = State::default();
    assert_eq!(s.record_create_failure("alice"), 1);
    assert_eq!(s.record_create_failure("alice"), 2);
    assert_eq!(s.users["alice"].origin, Origin::Created);
    let d = desired(&format!("alice:{ED}"));
    let p = plan(&d, &s, &local(&[]), &PlanConfig::default());
    assert_eq!(p.actions[0], create("alice"), "retried, not forgotten");
    s.record(&create("alice"));
    assert_eq!(s.users["alice"].failures, 0);
}
