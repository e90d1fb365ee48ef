//! OS Login: the directory of Google accounts behind the metadata server's `oslogin/` endpoints
//! and the OS Login API, and the pure answers to both.
//!
//! The shapes are the ones Google's guest package (`google-compute-engine-oslogin`, sources in
//! GoogleCloudPlatform/guest-oslogin `src/oslogin_utils.cc`) parses: `loginProfiles` with
//! `posixAccounts` and an `sshPublicKeys` object keyed by fingerprint; `posixGroups`;
//! `usernames`; `nextPageToken`, where `"0"` means "no more pages" (for users that last page
//! carries no profiles, for groups it still carries groups); `{"success":…}` for `authorize`;
//! `trustedCertificateAuthorities` for `certificates`.
//!
//! Expired keys are served as stored: the package itself drops a key whose
//! `expirationTimeUsec` is in the past (`ParseJsonToSshKeys` compares it with the clock at
//! authentication time), which is how an expired key is refused to the microsecond.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// First uid handed out; OS Login uids are large and far above any local range (the package
/// refuses uids below 1000).
const FIRST_UID: u32 = 1_000_000_001;
/// Group ids live in their own range so a user's self-group (gid = uid) never collides.
const FIRST_GID: u32 = 1_500_000_001;
/// Longest POSIX user name OS Login hands out (the package's `^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,31}$`).
const MAX_USERNAME: usize = 32;

/// One SSH key of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub key: String,
    pub expiration_usec: Option<u64>,
    pub fingerprint: String,
}

/// A Google account with its POSIX account and the effect of its IAM roles on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsLoginUser {
    pub email: String,
    pub username: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    pub keys: BTreeMap<String, SshKey>,
    /// `roles/compute.osLogin`: `authorize?policy=login` succeeds.
    pub login: bool,
    /// `roles/compute.osAdminLogin`: `policy=adminLogin` succeeds (and implies `login`).
    pub admin_login: bool,
}

/// A POSIX group of OS Login users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsLoginGroup {
    pub name: String,
    pub gid: u32,
    /// Member emails.
    pub members: BTreeSet<String>,
}

/// What went wrong, as the OS Login API says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsLoginError {
    NotFound(String),
    Invalid(String),
}

impl OsLoginError {
    pub fn code(&self) -> u16 {
        match self {
            OsLoginError::NotFound(_) => 404,
            OsLoginError::Invalid(_) => 400,
        }
    }

    /// Google's JSON error body (`{"error":{"code","message","status"}}`).
    pub fn body(&self) -> Value {
        let (status, message) = match self {
            OsLoginError::NotFound(m) => ("NOT_FOUND", m),
            OsLoginError::Invalid(m) => ("INVALID_ARGUMENT", m),
        };
        json!({"error": {"code": self.code(), "message": message, "status": status}})
    }
}

/// The accounts the emulated OS Login service knows, plus the trusted user CA keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    users: BTreeMap<String, OsLoginUser>,
    groups: BTreeMap<String, OsLoginGroup>,
    ca_keys: Vec<String>,
    next_uid: u32,
    next_gid: u32,
}

/// The POSIX user name Google derives from an email: lowercased, every character other than a
/// letter or digit becomes `_`, at most 32 characters (`alice.smith@example.com` →
/// `alice_smith_example_com`).
pub fn username_for(email: &str) -> String {
    let mut name: String = email
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(MAX_USERNAME);
    name
}

/// The SHA-256 fingerprint (lowercase hex) OS Login identifies a key by, computed over the
/// key's decoded blob; `None` when the text is not `TYPE BASE64 [COMMENT]` with a blob that
/// names the same type.
pub fn fingerprint_of(key: &str) -> Option<String> {
    let mut parts = key.split_ascii_whitespace();
    let kind = parts.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    // The blob starts with the key type as an SSH string (u32 length, bytes).
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    if blob.get(4..4 + len)? != kind.as_bytes() {
        return None;
    }
    let digest = Sha256::digest(&blob);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn normalize_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

impl Directory {
    pub fn user(&self, email: &str) -> Option<&OsLoginUser> {
        self.users.get(&normalize_email(email))
    }

    pub fn users(&self) -> impl Iterator<Item = &OsLoginUser> {
        self.users.values()
    }

    pub fn group(&self, name: &str) -> Option<&OsLoginGroup> {
        self.groups.get(name)
    }

    pub fn ca_keys(&self) -> &[String] {
        &self.ca_keys
    }

    /// The user for `email`, created with a POSIX account (derived name, fresh uid = gid, home
    /// `/home/<name>`, shell `/bin/bash`) and no roles if it does not exist yet.
    pub fn ensure_user(&mut self, email: &str) -> Result<&mut OsLoginUser, OsLoginError> {
        let email = normalize_email(email);
        if email.is_empty() || !email.contains('@') {
            return Err(OsLoginError::Invalid(format!(
                "Invalid user email address: {email:?}"
            )));
        }
        if !self.users.contains_key(&email) {
            let username = self.free_username(&username_for(&email));
            let uid = self.allocate_uid();
            let user = OsLoginUser {
                email: email.clone(),
                home: format!("/home/{username}"),
                username,
                uid,
                gid: uid,
                shell: "/bin/bash".into(),
                keys: BTreeMap::new(),
                login: false,
                admin_login: false,
            };
            self.users.insert(email.clone(), user);
        }
        Ok(self.users.get_mut(&email).expect("inserted above"))
    }

    fn free_username(&self, base: &str) -> String {
        let taken = |n: &str| self.users.values().any(|u| u.username == n);
        if !taken(base) {
            return base.to_string();
        }
        (2u32..)
            .map(|i| {
                let suffix = format!("_{i}");
                let mut name = base.to_string();
                name.truncate(MAX_USERNAME - suffix.len());
                name + &suffix
            })
            .find(|n| !taken(n))
            .expect("an unused suffix exists")
    }

    fn allocate_uid(&mut self) -> u32 {
        let mut uid = self.next_uid.max(FIRST_UID);
        while self.users.values().any(|u| u.uid == uid) {
            uid += 1;
        }
        self.next_uid = uid + 1;
        uid
    }

    fn allocate_gid(&mut self) -> u32 {
        let mut gid = self.next_gid.max(FIRST_GID);
        while self.groups.values().any(|g| g.gid == gid) {
            gid += 1;
        }
        self.next_gid = gid + 1;
        gid
    }

    /// `importSshPublicKey`: adds (or re-imports, updating the expiry of) `key` for `email`,
    /// creating the profile if needed; returns the key's fingerprint.
    pub fn import_key(
        &mut self,
        email: &str,
        key: &str,
        expiration_usec: Option<u64>,
    ) -> Result<String, OsLoginError> {
        let key = key.trim();
        let fingerprint = fingerprint_of(key)
            .ok_or_else(|| OsLoginError::Invalid(format!("Invalid SSH public key: {key:?}")))?;
        let user = self.ensure_user(email)?;
        user.keys.insert(
            fingerprint.clone(),
            SshKey {
                key: key.to_string(),
                expiration_usec,
                fingerprint: fingerprint.clone(),
            },
        );
        Ok(fingerprint)
    }

    pub fn delete_key(&mut self, email: &str, fingerprint: &str) -> Result<(), OsLoginError> {
        let user = self
            .users
            .get_mut(&normalize_email(email))
            .ok_or_else(|| not_found_user(email))?;
        user.keys.remove(fingerprint).map(|_| ()).ok_or_else(|| {
            OsLoginError::NotFound(format!(
                "Requested entity was not found: users/{email}/sshPublicKeys/{fingerprint}"
            ))
        })
    }

    /// The IAM roles' effect: `login` (`roles/compute.osLogin`) and `admin_login`
    /// (`roles/compute.osAdminLogin`) for `email`, creating the profile if needed.
    pub fn set_policy(
        &mut self,
        email: &str,
        login: bool,
        admin_login: bool,
    ) -> Result<(), OsLoginError> {
        let user = self.ensure_user(email)?;
        user.login = login;
        user.admin_login = admin_login;
        Ok(())
    }

    pub fn remove_user(&mut self, email: &str) -> bool {
        let email = normalize_email(email);
        for g in self.groups.values_mut() {
            g.members.remove(&email);
        }
        self.users.remove(&email).is_some()
    }

    /// Creates or replaces group `name` with `members` (emails); a new group gets a fresh gid
    /// unless `gid` is given. Returns the gid.
    pub fn set_group(
        &mut self,
        name: &str,
        gid: Option<u32>,
        members: &[String],
    ) -> Result<u32, OsLoginError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_USERNAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(OsLoginError::Invalid(format!(
                "Invalid group name {name:?}"
            )));
        }
        if gid == Some(0) {
            return Err(OsLoginError::Invalid("gid 0 is reserved".into()));
        }
        let gid = match (gid, self.groups.get(name)) {
            (Some(g), _) => g,
            (None, Some(existing)) => existing.gid,
            (None, None) => self.allocate_gid(),
        };
        let members = members.iter().map(|m| normalize_email(m)).collect();
        self.groups.insert(
            name.to_string(),
            OsLoginGroup {
                name: name.to_string(),
                gid,
                members,
            },
        );
        Ok(gid)
    }

    pub fn remove_group(&mut self, name: &str) -> bool {
        self.groups.remove(name).is_some()
    }

    pub fn set_ca_keys(&mut self, keys: Vec<String>) {
        self.ca_keys = keys;
    }

    fn by_username(&self, name: &str) -> Option<&OsLoginUser> {
        self.users.values().find(|u| u.username == name)
    }

    fn by_uid(&self, uid: u32) -> Option<&OsLoginUser> {
        self.users.values().find(|u| u.uid == uid)
    }
}

fn not_found_user(email: &str) -> OsLoginError {
    OsLoginError::NotFound(format!("Requested entity was not found: users/{email}"))
}

/// A login profile as the OS Login API and the metadata server render it. `project` is the
/// project the POSIX account belongs to.
pub fn profile_json(user: &OsLoginUser, project: &str) -> Value {
    let keys: Map<String, Value> = user
        .keys
        .values()
        .map(|k| {
            let mut v = json!({
                "key": k.key,
                "fingerprint": k.fingerprint,
                "name": format!("users/{}/sshPublicKeys/{}", user.email, k.fingerprint),
            });
            if let Some(exp) = k.expiration_usec {
                // int64 fields travel as strings in Google's JSON.
                v["expirationTimeUsec"] = json!(exp.to_string());
            }
            (k.fingerprint.clone(), v)
        })
        .collect();
    json!({
        "name": user.email,
        "posixAccounts": [{
            "primary": true,
            "username": user.username,
            "uid": user.uid.to_string(),
            "gid": user.gid.to_string(),
            "homeDirectory": user.home,
            "shell": user.shell,
            "gecos": "",
            "systemId": project,
            "accountId": project,
            "operatingSystemType": "LINUX",
            "name": format!("users/{}/projects/{project}", user.email),
        }],
        "sshPublicKeys": keys,
    })
}

fn group_json(g: &OsLoginGroup) -> Value {
    json!({"name": g.name, "gid": g.gid.to_string()})
}

/// One query parameter (already percent-decoded).
fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `pagesize` and `pagetoken` (the token is the offset of the next page; never `"0"`, which
/// means "done").
fn page(query: &[(String, String)]) -> Result<(usize, usize), (u16, Value)> {
    let bad = |what: &str| (400, json!({"error": format!("invalid {what}")}));
    let size = match param(query, "pagesize") {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("pagesize"))?,
        None => usize::MAX,
    };
    let offset = match param(query, "pagetoken") {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| bad("pagetoken"))?,
    };
    Ok((size, offset))
}

/// The answer of `oslogin/<endpoint>?<query>` (an HTTP status and a JSON body; the caller has
/// checked that OS Login is enabled).
pub fn guest_answer(
    dir: &Directory,
    endpoint: &str,
    query: &[(String, String)],
    project: &str,
) -> (u16, Value) {
    let not_found = || (404, json!({"error": "not found"}));
    let one_profile = |u: &OsLoginUser| (200, json!({"loginProfiles": [profile_json(u, project)]}));
    match endpoint {
        "users" => {
            if let Some(name) = param(query, "username") {
                return dir.by_username(name).map_or_else(not_found, one_profile);
            }
            if let Some(uid) = param(query, "uid") {
                return uid
                    .parse::<u32>()
                    .ok()
                    .and_then(|uid| dir.by_uid(uid))
                    .map_or_else(not_found, one_profile);
            }
            if let Some(group) = param(query, "groupname") {
                let Some(g) = dir.group(group) else {
                    return not_found();
                };
                let names: Vec<&str> = g
                    .members
                    .iter()
                    .filter_map(|m| dir.user(m))
                    .map(|u| u.username.as_str())
                    .collect();
                return (200, json!({"usernames": names, "nextPageToken": "0"}));
            }
            if param(query, "pagesize").is_none() {
                return (
                    400,
                    json!({"error": "username, uid, groupname or pagesize required"}),
                );
            }
            let (size, offset) = match page(query) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let users: Vec<&OsLoginUser> = dir.users.values().collect();
            if offset >= users.len() {
                // The users' last page: a "0" token and no profiles.
                return (200, json!({"nextPageToken": "0"}));
            }
            let end = offset.saturating_add(size).min(users.len());
            let profiles: Vec<Value> = users[offset..end]
                .iter()
                .map(|u| profile_json(u, project))
                .collect();
            (
                200,
                json!({"loginProfiles": profiles, "nextPageToken": end.to_string()}),
            )
        }
        "groups" => {
            if let Some(name) = param(query, "groupname") {
                return dir.group(name).map_or_else(not_found, |g| {
                    (200, json!({"posixGroups": [group_json(g)]}))
                });
            }
            if let Some(gid) = param(query, "gid") {
                let found = gid
                    .parse::<u32>()
                    .ok()
                    .and_then(|gid| dir.groups.values().find(|g| g.gid == gid));
                return found.map_or_else(not_found, |g| {
                    (200, json!({"posixGroups": [group_json(g)]}))
                });
            }
            if let Some(email) = param(query, "email") {
                let email = normalize_email(email);
                let groups: Vec<Value> = dir
                    .groups
                    .values()
                    .filter(|g| g.members.contains(&email))
                    .map(group_json)
                    .collect();
                return (200, json!({"posixGroups": groups, "nextPageToken": "0"}));
            }
            if param(query, "pagesize").is_none() {
                return (
                    400,
                    json!({"error": "groupname, gid, email or pagesize required"}),
                );
            }
            let (size, offset) = match page(query) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let groups: Vec<&OsLoginGroup> = dir.groups.values().collect();
            let start = offset.min(groups.len());
            let end = start.saturating_add(size).min(groups.len());
            // The groups' last page carries groups *and* the "0" token.
            let token = if end >= groups.len() {
                "0".to_string()
            } else {
                end.to_string()
            };
            let page: Vec<Value> = groups[start..end].iter().map(|g| group_json(g)).collect();
            (200, json!({"posixGroups": page, "nextPageToken": token}))
        }
        "authorize" => {
            let (Some(email), Some(policy)) = (param(query, "email"), param(query, "policy"))
            else {
                return (400, json!({"error": "email and policy required"}));
            };
            let user = dir.user(email);
            let success = match policy {
                "login" => user.is_some_and(|u| u.login || u.admin_login),
                "adminLogin" => user.is_some_and(|u| u.admin_login),
                _ => return (400, json!({"error": format!("unknown policy {policy:?}")})),
            };
            (200, json!({"success": success}))
        }
        "certificates" => {
            let cas: Vec<Value> = dir
                .ca_keys
                .iter()
                .map(|k| json!({"publicKey": k}))
                .collect();
            (200, json!({"trustedCertificateAuthorities": cas}))
        }
        _ => not_found(),
    }
}

/// `enable-oslogin` as Google's agents read it: the instance value wins over the project's,
/// spelled as Go's `strconv.ParseBool` accepts; anything else counts as unset.
pub fn enabled(view: &Value) -> bool {
    let flag = |scope: &str| {
        view.pointer(&format!("/{scope}/attributes/enable-oslogin"))
            .and_then(Value::as_str)
            .and_then(parse_go_bool)
    };
    flag("instance")
        .or_else(|| flag("project"))
        .unwrap_or(false)
}

fn parse_go_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGBeOo8qSjOysw15rHU0334Tcr720ziK986QwjjDp53s alice";

    #[test]
    fn usernames_follow_googles_derivation() {
        for (email, want) in [
            ("alice@example.com", "alice_example_com"),
            ("Alice.Smith@Example.COM", "alice_smith_example_com"),
            ("a+b@x.io", "a_b_x_io"),
            (
                "a-very-long-name-for-a-user@subdomain.example.com",
                "a_very_long_name_for_a_user_subd",
            ),
        ] {
            assert_eq!(username_for(email), want, "{email}");
        }
    }

    #[test]
    fn fingerprint_needs_a_well_formed_key() {
        let fp = fingerprint_of(ED25519).expect("valid");
        assert_eq!(fp.len(), 64);
        assert_eq!(
            fingerprint_of(ED25519),
            fingerprint_of(&ED25519.replace(" alice", ""))
        );
        assert_eq!(
            fingerprint_of(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGBeOo8qSjOysw15rHU0334Tcr720ziK986QwjjDp53s"
            ),
            None
        );
        assert_eq!(fingerprint_of("ssh-ed25519 not-base64!"), None);
        assert_eq!(fingerprint_of(""), None);
    }

    #[test]
    fn colliding_names_get_a_suffix_and_uids_are_unique() {
        let mut d = Directory::default();
        let a = d.ensure_user("a.b@x.io").expect("a").clone();
        let b = d.ensure_user("a_b@x.io").expect("b").clone();
        assert_eq!(a.username, "a_b_x_io");
        assert_eq!(b.username, "a_b_x_io_2");
        assert_ne!(a.uid, b.uid);
        assert_eq!((a.uid, a.gid), (FIRST_UID, FIRST_UID));
        assert!(d.ensure_user("nobody").is_err());
    }

    #[test]
    fn go_bool_spellings() {
        let doc = |i: Option<&str>, p: Option<&str>| {
            let mut v = json!({"instance":{"attributes":{}},"project":{"attributes":{}}});
            if let Some(i) = i {
                v["instance"]["attributes"]["enable-oslogin"] = json!(i);
            }
            if let Some(p) = p {
                v["project"]["attributes"]["enable-oslogin"] = json!(p);
            }
            v
        };
        for (i, p, want) in [
            (None, None, false),
            (None, Some("TRUE"), true),
            (Some("false"), Some("TRUE"), false),
            (Some("T"), None, true),
            (Some("yes"), Some("true"), true),
            (Some(""), Some("1"), true),
        ] {
            assert_eq!(enabled(&doc(i, p)), want, "{i:?} {p:?}");
        }
    }
}
