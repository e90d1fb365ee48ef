//! User-name rules: which metadata user names may become local accounts.
//!
//! The syntax rule is the one Python's daemon and OS Login enforce,
//! `^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$` minus `.` and `..`. The Go agent only
//! rejected whitespace, which let `-g`, `../root` and `a/b` reach `useradd`; this
//! module is the fix. Whether an existing account is a system account needs the
//! passwd database, so that check is a pure helper ([`is_reserved`]) fed by the
//! caller.

use thiserror::Error;

/// Longest accepted user name, in bytes (`useradd` on most distributions allows 32).
pub const MAX_USERNAME_LEN: usize = 32;

/// `UID_MIN` when `/etc/login.defs` is missing or silent (shadow-utils' default).
pub const DEFAULT_UID_MIN: u32 = 1000;

/// Why a user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("user name is empty")]
    Empty,
    #[error("user name is {len} characters long; at most {MAX_USERNAME_LEN} are allowed")]
    TooLong { len: usize },
    #[error("user name starts with '-' (it would be read as a command-line option)")]
    LeadingHyphen,
    #[error("user name contains {ch:?} (U+{:04X}); only A-Z a-z 0-9 . _ - are allowed", *ch as u32)]
    BadChar { ch: char },
    #[error("user name is '.' or '..'")]
    DotName,
}

fn is_name_byte(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// Checks `name` against `^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$`, not `.` or `..`.
///
/// Every non-ASCII character is refused, which covers the Unicode spaces
/// (U+00A0, U+2000, U+2009, U+202F, U+3000, …) that other tools split on.
pub fn validate_username(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingHyphen);
    }
    if let Some(ch) = name.chars().find(|&c| !is_name_byte(c)) {
        return Err(NameError::BadChar { ch });
    }
    // All ASCII from here on, so bytes == characters.
    if name.len() > MAX_USERNAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName);
    }
    Ok(())
}

/// True when the daemon must not manage this account: uid 0, or a system account
/// (uid below `uid_min`), unless the configuration allow-lists the name.
/// `uid == None` means the account does not exist yet (it would be created with a
/// regular uid), so it is not reserved.
pub fn is_reserved(name: &str, uid: Option<u32>, uid_min: u32, allow: &[String]) -> bool {
    if allow.iter().any(|a| a == name) {
        return false;
    }
    match uid {
        Some(uid) => uid == 0 || uid < uid_min,
        None => false,
    }
}

/// Reads `UID_MIN` from the text of `/etc/login.defs`; [`DEFAULT_UID_MIN`] when
/// absent or unparseable. Like shadow-utils, a later definition wins and `#`
/// starts a comment line.
pub fn parse_uid_min(login_defs: &str) -> u32 {
    let mut uid_min = DEFAULT_UID_MIN;
    for line in login_defs.lines() {
        let line = line.trim_ascii();
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        if fields.next() != Some("UID_MIN") {
            continue;
        }
        let Some(value) = fields.next() else { continue };
        let parsed = match value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"))
        {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => value.parse::<u32>().ok(),
        };
        if let Some(v) = parsed {
            uid_min = v;
        }
    }
    uid_min
}
