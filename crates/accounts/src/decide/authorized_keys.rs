//! The authorized_keys file format shared with Google's agents.
//!
//! Each managed key is the line `# Added by Google` followed by the key. On
//! rewrite every marker line and the line after it are dropped, every other line
//! is kept byte for byte, and the managed pairs are appended. Using the same
//! convention as Google's Python and Go agents lets an image move between them
//! and us in both directions. Works on bytes: a user's file need not be UTF-8.

use chrono::{DateTime, FixedOffset, Utc};

use crate::decide::keys::KeyEntry;

/// The line that marks the next line as managed by us (and by Google's agents).
pub const MARKER: &str = "# Added by Google";

/// Whether and how to write OpenSSH's `expiry-time=` option for expiring keys,
/// so sshd itself refuses the key after expiry even if the daemon is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryOption {
    /// Do not write `expiry-time=`.
    #[default]
    None,
    /// `expiry-time="YYYYMMDDHHMMSSZ"` (OpenSSH ≥ 9.1 understands the `Z`).
    Utc,
    /// Older OpenSSH reads the time in the system time zone: write the instant in
    /// this offset, without `Z`. The caller picks the offset valid at the expiry.
    LocalTime(FixedOffset),
}

/// One line of `bytes`, without its `\n` terminator; `\r` kept.
fn lines_with_ends(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    // split_inclusive yields nothing for empty input, which is what we want.
    bytes.split_inclusive(|&b| b == b'\n')
}

fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_marker(line: &[u8]) -> bool {
    content(line) == MARKER.as_bytes()
}

/// Splits the file into the user's own lines (with their endings, untouched) and
/// the lines that follow markers. A marker directly after a marker is itself a
/// marker: it is dropped and so is the line after it, so a managed key can never
/// be turned into a permanent "user" line by a stray doubled marker.
fn split(existing: &[u8]) -> (Vec<&[u8]>, Vec<&[u8]>) {
    let (mut user, mut managed) = (Vec::new(), Vec::new());
    let mut after_marker = false;
    for line in lines_with_ends(existing) {
        if is_marker(line) {
            after_marker = true;
        } else if after_marker {
            after_marker = false;
            managed.push(line);
        } else {
            user.push(line);
        }
    }
    (user, managed)
}

/// The new file content: the user's lines from `existing`, byte for byte, then one
/// marker + key pair per managed line. With no managed lines the result is just
/// the user's lines (never an empty file because our keys went away).
pub fn render<S: AsRef<str>>(existing: &[u8], managed: &[S]) -> Vec<u8> {
    let (user, _) = split(existing);
    let mut out: Vec<u8> = Vec::with_capacity(existing.len() + managed.len() * 128);
    for line in user {
        out.extend_from_slice(line);
    }
    if !managed.is_empty() && !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    for line in managed {
        out.extend_from_slice(MARKER.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(line.as_ref().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The managed lines currently in the file (the non-empty lines after markers,
/// without line endings), for diffing against what should be there.
pub fn managed_lines_in(existing: &[u8]) -> Vec<String> {
    split(existing)
        .1
        .into_iter()
        .map(content)
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// The user's own lines only (what [`render`] keeps), for tests and checks.
pub fn user_lines_in(existing: &[u8]) -> Vec<u8> {
    split(existing).0.concat()
}

/// The authorized_keys line for a managed key: the key as given in metadata,
/// with `expiry-time="…"` put first in the options when the key expires and
/// `opt` asks for it. sshd applies the earliest of several expiry-time options,
/// so a user-supplied one still holds.
pub fn key_line(entry: &KeyEntry, opt: ExpiryOption) -> String {
    let Some(expires) = entry.expires else {
        return entry.raw.clone();
    };
    let stamp = match opt {
        ExpiryOption::None => return entry.raw.clone(),
        ExpiryOption::Utc => format_utc(expires),
        ExpiryOption::LocalTime(offset) => expires
            .with_timezone(&offset)
            .format("%Y%m%d%H%M%S")
            .to_string(),
    };
    match &entry.key.options {
        // raw starts with the options field verbatim (see keys::parse_authorized_key).
        Some(o) if entry.raw.starts_with(o.as_str()) => {
            format!("expiry-time=\"{stamp}\",{}", entry.raw)
        }
        _ => format!("expiry-time=\"{stamp}\" {}", entry.raw),
    }
}

fn format_utc(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%SZ").to_string()
}

/// Parses `OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15` (the `ssh -V` /
/// `sshd -V` banner) into (major, minor).
pub fn parse_openssh_version(version: &str) -> Option<(u32, u32)> {
    let start = version.find("OpenSSH_")? + "OpenSSH_".len();
    let rest = &version[start..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// True when the installed OpenSSH knows the `expiry-time=` option at all. An
/// sshd that does not know an option refuses the whole key line, so writing it
/// to an older sshd would lock the user out. The option dates from OpenSSH 7.7's
/// authorized_keys option rewrite; 8.2 is used as a conservative floor.
pub fn openssh_supports_expiry_time(version: &str) -> bool {
    parse_openssh_version(version).is_some_and(|v| v >= (8, 2))
}

impl ExpiryOption {
    /// The richest form the installed OpenSSH understands: UTC with `Z` from 9.1,
    /// local time (in `local`, the offset in force at the expiry) before that,
    /// nothing when the version is unknown or too old.
    pub fn for_openssh(version: &str, local: FixedOffset) -> ExpiryOption {
        if openssh_supports_utc_expiry(version) {
            ExpiryOption::Utc
        } else if openssh_supports_expiry_time(version) {
            ExpiryOption::LocalTime(local)
        } else {
            ExpiryOption::None
        }
    }
}

/// True when the installed OpenSSH reads `expiry-time="…Z"` as UTC (≥ 9.1).
/// Unknown versions answer false: the caller then writes local time or nothing.
pub fn openssh_supports_utc_expiry(version: &str) -> bool {
    parse_openssh_version(version).is_some_and(|v| v >= (9, 1))
}
