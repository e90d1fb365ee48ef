//! The `ssh-keys` / `sshKeys` metadata value: one `USER:KEY` entry per line.
//!
//! `KEY` is an authorized_keys entry (optionally with options) and, when its
//! comment is `google-ssh {JSON}`, carries an expiry. Parsing is strict because
//! what passes here ends up in `useradd` argv and in authorized_keys files: a bad
//! user name, a control character (a `\r` or NUL would inject a second line into
//! authorized_keys), Unicode whitespace that another tool would split on, a
//! malformed blob or a malformed `google-ssh` expiry makes the line an error entry
//! with a reason, never a silently "fixed" or never-expiring key.

use std::fmt;

use chrono::{DateTime, Utc};
use thiserror::Error;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest as _, Sha256};

use crate::names::{NameError, validate_username};

/// Key types OpenSSH accepts in authorized_keys (plus their certificate forms).
pub const KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// The comment prefix gcloud uses for expiring keys.
pub const GOOGLE_SSH: &str = "google-ssh";

/// One parsed authorized_keys entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The options field exactly as written (`restrict,command="…"`), if any.
    pub options: Option<String>,
    pub key_type: String,
    /// Base64 of the public key blob.
    pub blob: String,
    /// Everything after the blob (may be empty, may be non-ASCII).
    pub comment: String,
}

/// A valid `USER:KEY` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub user: String,
    pub key: AuthorizedKey,
    /// `expireOn` of a `google-ssh` key; `None` for keys that never expire.
    pub expires: Option<DateTime<Utc>>,
    /// The `KEY` part exactly as given (after trimming ASCII whitespace at both ends).
    pub raw: String,
}

/// One non-blank line of the value: a key or the reason it was refused.
pub type ParsedLine = Result<KeyEntry, LineError>;

/// A refused line, with enough context for one useful warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number within the metadata value.
    pub line_no: usize,
    /// The text before the first `:`, when there was one (possibly invalid).
    pub user: Option<String>,
    pub reason: KeyError,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            // Debug formatting: the name may hold the very characters we refuse.
            Some(user) => write!(f, "line {} (user {user:?}): {}", self.line_no, self.reason),
            None => write!(f, "line {}: {}", self.line_no, self.reason),
        }
    }
}

impl std::error::Error for LineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reason)
    }
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("no ':' between user name and key")]
    MissingSeparator,
    #[error("invalid user name: {0}")]
    BadUser(#[from] NameError),
    #[error("empty key")]
    EmptyKey,
    #[error("control character U+{:04X} in key (would corrupt authorized_keys)", *ch as u32)]
    ControlChar { ch: char },
    #[error("Unicode whitespace U+{:04X} in key", *ch as u32)]
    UnicodeWhitespace { ch: char },
    #[error("non-ASCII character U+{:04X} in key {field}", *ch as u32)]
    NonAscii { field: &'static str, ch: char },
    #[error("unterminated quote in key options")]
    UnterminatedQuote,
    #[error("no key type after the options")]
    MissingKeyType,
    #[error("unknown key type {token:?}")]
    UnknownKeyType { token: String },
    #[error("no key data after the key type")]
    MissingBlob,
    #[error("key data is not valid base64: {reason}")]
    BadBase64 { reason: &'static str },
    #[error("key data is malformed: {reason}")]
    BadBlob { reason: &'static str },
    #[error("key type {declared:?} does not match the key data ({embedded:?})")]
    KeyTypeMismatch { declared: String, embedded: String },
    #[error("bad google-ssh expiry: {0}")]
    BadGoogleSsh(#[from] GoogleSshError),
}

/// What is wrong with a `google-ssh {JSON}` comment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GoogleSshError {
    #[error("no JSON after 'google-ssh'")]
    MissingJson,
    #[error("malformed JSON: {0}")]
    BadJson(String),
    #[error("JSON is not an object")]
    NotAnObject,
    #[error("no expireOn field")]
    MissingExpireOn,
    #[error("expireOn is a {found}, not a string")]
    ExpireOnNotString { found: &'static str },
    #[error("expireOn {value:?} is not a recognised date")]
    BadDate { value: String },
}

impl AuthorizedKey {
    /// The OpenSSH `SHA256:` fingerprint (what `ssh-keygen -l` and sshd's log show),
    /// for log fields. Falls back to the type and the blob's tail if the blob does
    /// not decode (only possible for hand-built values).
    pub fn fingerprint(&self) -> String {
        match decode_blob(&self.blob) {
            Ok(bytes) => format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&bytes))),
            Err(_) => {
                let tail = self.blob.len().saturating_sub(12);
                format!("{} …{}", self.key_type, self.blob.get(tail..).unwrap_or(""))
            }
        }
    }

    /// Stable identification for logs; the same as [`AuthorizedKey::fingerprint`].
    pub fn fingerprint_hint(&self) -> String {
        self.fingerprint()
    }
}

impl KeyEntry {
    /// A key is expired when now is strictly after `expireOn` (SPEC §2).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| now > e)
    }
}

/// Parses a whole metadata value. Blank lines are skipped; every other line
/// yields a key or an error, in order. Linear in the size of the value.
pub fn parse_ssh_keys(value: &str) -> Vec<ParsedLine> {
    parse_ssh_keys_memo(value, &mut ParseMemo::default())
}

type LineResult = Result<KeyEntry, (Option<String>, KeyError)>;

/// Parsed lines remembered between snapshots: a metadata change usually touches one line among
/// many, and re-validating a thousand unchanged keys (base64, blob structure) would dominate the
/// time to apply it. Each call keeps only the lines it saw, so the memo never outgrows the value.
#[derive(Debug, Default)]
pub struct ParseMemo {
    lines: std::collections::HashMap<String, LineResult>,
    next: std::collections::HashMap<String, LineResult>,
}

impl ParseMemo {
    /// Ends a round: lines not seen since the last call are forgotten.
    pub fn finish(&mut self) {
        self.lines = std::mem::take(&mut self.next);
    }
}

/// [`parse_ssh_keys`] with a memo of already parsed lines (call [`ParseMemo::finish`] after
/// each snapshot's values are parsed).
pub fn parse_ssh_keys_memo(value: &str, memo: &mut ParseMemo) -> Vec<ParsedLine> {
    let mut out = Vec::new();
    for (i, line) in value.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_ascii();
        if line.is_empty() {
            continue;
        }
        // Move the remembered result (and its key) into this round's map: one clone per line
        // for the caller, no re-parse, no new key allocation.
        let result = match memo.lines.remove_entry(line) {
            Some((key, r)) => {
                let out = r.clone();
                memo.next.insert(key, r);
                out
            }
            None => match memo.next.get(line) {
                Some(r) => r.clone(),
                None => {
                    let r = parse_line(line);
                    memo.next.insert(line.to_string(), r.clone());
                    r
                }
            },
        };
        out.push(result.map_err(|(user, reason)| LineError {
            line_no: i + 1,
            user,
            reason,
        }));
    }
    out
}

fn parse_line(line: &str) -> Result<KeyEntry, (Option<String>, KeyError)> {
    let Some((user, key)) = line.split_once(':') else {
        return Err((None, KeyError::MissingSeparator));
    };
    let fail = |reason| (Some(user.to_string()), reason);
    validate_username(user).map_err(|e| fail(e.into()))?;
    let raw = key.trim_ascii();
    let parsed = parse_authorized_key(raw).map_err(fail)?;
    let expires = google_ssh_expiry(&parsed.comment).map_err(|e| fail(e.into()))?;
    Ok(KeyEntry {
        user: user.to_string(),
        key: parsed,
        expires,
        raw: raw.to_string(),
    })
}

fn is_field_sep(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn skip_sep(s: &str) -> &str {
    s.trim_start_matches(is_field_sep)
}

fn split_token(s: &str) -> (&str, &str) {
    match s.find(is_field_sep) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Length of the options field, scanned exactly like OpenSSH's
/// `sshkey_advance_past_options`: ends at a space/tab outside double quotes; `\"`
/// is skipped as a unit.
fn options_len(s: &str) -> Result<usize, KeyError> {
    let b = s.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < b.len() && (quoted || (b[i] != b' ' && b[i] != b'\t')) {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'"') {
            i += 1;
        } else if b[i] == b'"' {
            quoted = !quoted;
        }
        i += 1;
    }
    if quoted {
        return Err(KeyError::UnterminatedQuote);
    }
    Ok(i)
}

/// Parses one authorized_keys entry (`[options] type blob [comment]`).
pub fn parse_authorized_key(s: &str) -> Result<AuthorizedKey, KeyError> {
    if s.is_empty() {
        return Err(KeyError::EmptyKey);
    }
    // Checked over the whole entry, comment included: a control character or a
    // Unicode space is never harmless in a file other tools parse line by line.
    for ch in s.chars() {
        if ch == '\t' {
            continue;
        }
        if ch.is_control() {
            return Err(KeyError::ControlChar { ch });
        }
        if ch.is_whitespace() && !ch.is_ascii() {
            return Err(KeyError::UnicodeWhitespace { ch });
        }
    }

    let (first, _) = split_token(s);
    let (options, rest) = if KEY_TYPES.contains(&first) {
        (None, s)
    } else {
        let n = options_len(s)?;
        let opts = &s[..n];
        if let Some(ch) = opts.chars().find(|c| !c.is_ascii()) {
            return Err(KeyError::NonAscii {
                field: "options",
                ch,
            });
        }
        (Some(opts), skip_sep(&s[n..]))
    };

    let (key_type, rest) = split_token(rest);
    if key_type.is_empty() {
        return Err(KeyError::MissingKeyType);
    }
    if !KEY_TYPES.contains(&key_type) {
        // "ssh-foo AAAA…" reads as options "ssh-foo"; name the token the user meant.
        let meant = match options {
            Some(o) if !o.contains(['=', ',']) => o,
            _ => key_type,
        };
        return Err(KeyError::UnknownKeyType {
            token: meant.chars().take(40).collect(),
        });
    }

    let (blob, rest) = split_token(skip_sep(rest));
    if blob.is_empty() {
        return Err(KeyError::MissingBlob);
    }
    if let Some(ch) = blob.chars().find(|c| !c.is_ascii()) {
        return Err(KeyError::NonAscii { field: "data", ch });
    }
    check_blob(key_type, blob)?;

    Ok(AuthorizedKey {
        options: options.map(str::to_string),
        key_type: key_type.to_string(),
        blob: blob.to_string(),
        comment: skip_sep(rest).trim_end_matches(is_field_sep).to_string(),
    })
}

/// Strict standard base64 (canonical padding, no stray trailing bits), as OpenSSH reads a key
/// blob; the error names what is wrong in words for the log line.
fn decode_blob(blob: &str) -> Result<Vec<u8>, &'static str> {
    if blob.is_empty() {
        return Err("empty");
    }
    if !blob.len().is_multiple_of(4) {
        return Err("length is not a multiple of 4");
    }
    STANDARD.decode(blob).map_err(|e| match e {
        base64::DecodeError::InvalidByte(_, b'=') => "'=' before the end",
        base64::DecodeError::InvalidByte(..) => "character outside the base64 alphabet",
        base64::DecodeError::InvalidLength(_) => "length is not a multiple of 4",
        base64::DecodeError::InvalidLastSymbol { .. } => "non-zero trailing bits",
        base64::DecodeError::InvalidPadding => "bad '=' padding",
    })
}

/// The blob is an SSH wire-format key: a length-prefixed type string first, which
/// must name the declared type (sshd would ignore the line otherwise).
fn check_blob(key_type: &str, blob: &str) -> Result<(), KeyError> {
    let bytes = decode_blob(blob).map_err(|reason| KeyError::BadBase64 { reason })?;
    let Some(len) = bytes.get(..4) else {
        return Err(KeyError::BadBlob {
            reason: "too short to hold a key",
        });
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(embedded) = bytes.get(4..).and_then(|b| b.get(..len)) else {
        return Err(KeyError::BadBlob {
            reason: "key type string runs past the end",
        });
    };
    if embedded != key_type.as_bytes() {
        return Err(KeyError::KeyTypeMismatch {
            declared: key_type.to_string(),
            embedded: String::from_utf8_lossy(embedded).chars().take(40).collect(),
        });
    }
    Ok(())
}

/// The expiry carried by a key comment. `Ok(None)` for ordinary comments
/// (including ones that merely start with other text); an error when the comment
/// is `google-ssh` followed by anything that is not valid JSON with a parseable
/// string `expireOn` — such a key is not installed (as the Go agent does; Python
/// treated it as never expiring, which turns a short-lived key into a permanent one).
pub fn google_ssh_expiry(comment: &str) -> Result<Option<DateTime<Utc>>, GoogleSshError> {
    let Some(after) = comment.strip_prefix(GOOGLE_SSH) else {
        return Ok(None);
    };
    if !(after.is_empty() || after.starts_with(is_field_sep)) {
        // e.g. "google-ssh-backup": just a comment.
        return Ok(None);
    }
    let json = after.trim_ascii();
    if json.is_empty() {
        return Err(GoogleSshError::MissingJson);
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| GoogleSshError::BadJson(e.to_string()))?;
    let obj = value.as_object().ok_or(GoogleSshError::NotAnObject)?;
    let expire = match obj.get("expireOn") {
        None => return Err(GoogleSshError::MissingExpireOn),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            return Err(GoogleSshError::ExpireOnNotString {
                found: json_kind(other),
            });
        }
    };
    parse_expire_on(expire)
        .map(Some)
        .ok_or_else(|| GoogleSshError::BadDate {
            value: expire.chars().take(64).collect(),
        })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Parses the `expireOn` forms seen in the wild: `2026-11-21T16:59:03+0000` (what
/// gcloud writes; any ±hhmm), RFC 3339 with `Z` or `±hh:mm`, each with optional
/// fractional seconds.
pub fn parse_expire_on(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .ok()
        .map(|t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSH refuses a blob that is not canonical base64, so we do too (sshd would ignore the
    /// line, and the user would see a key "installed" that never works).
    #[test]
    fn blob_base64_is_strict() {
        let rows = [
            ("Zm9v", Ok::<&[u8], &str>(b"foo")),
            ("Zm9vYg==", Ok(b"foob")),
            ("Zm9vYmE=", Ok(b"fooba")),
            ("", Err("empty")),
            ("Zg=", Err("length is not a multiple of 4")),
            ("Zm9vYmFyA", Err("length is not a multiple of 4")),
            ("Zm9v!A==", Err("character outside the base64 alphabet")),
            ("Zm9v Yg=", Err("character outside the base64 alphabet")),
            ("Z=g=", Err("'=' before the end")),
            ("Zh==", Err("non-zero trailing bits")),
        ];
        for (text, want) in rows {
            assert_eq!(
                decode_blob(text).as_deref().map_err(|e| *e),
                want,
                "{text:?}"
            );
        }
        for bad in ["Zg===", "Z===", "Zm9vYg=A"] {
            assert!(decode_blob(bad).is_err(), "{bad:?} accepted");
        }
    }
}
