//! SSH host keys, the pure part: which key types to (re)generate on this boot, how a public key
//! file reads, and what is published to the `hostkeys/` guest attributes.
//!
//! Rules (SPEC §9, Google's agents, and what we do better):
//! - A new instance regenerates the configured types (`[InstanceSetup] host_key_types`) and, as
//!   Google's agents do, every other `ssh_host_<type>_key` already on disk: a key left in the image
//!   is shared by every clone. Failing to regenerate a configured type keeps the id unrecorded
//!   (retried next boot); an unconfigured leftover is best effort, so a type the local
//!   `ssh-keygen` no longer makes (DSA) cannot hold the id back forever.
//! - Each key we make carries the comment `gce-instance-<id>`. A retry after a partial failure
//!   regenerates only the keys not yet made for this instance, so a boot that fails half-way does
//!   not rotate the keys it already made again. The public file is renamed into place after the
//!   private one, so its comment never claims a key that is not in place.
//! - A configured key that is missing is generated on any boot (Debian's sshd refuses to start
//!   with no host key at all); existing keys of a known instance are never touched.
//! - Published value: the base64 key blob alone, keyed by the algorithm name — what gcloud reads
//!   (`hostkeys/ssh-ed25519` = `AAAAC3Nza…`; it takes the value's first word and requires it to be
//!   base64), exactly as Google's agents write it.

use std::collections::BTreeMap;

use crate::instance_id::Boot;

/// Types `ssh-keygen -t` makes host keys of (`-sk` types need a hardware token).
pub const KNOWN_TYPES: [&str; 4] = ["dsa", "ecdsa", "ed25519", "rsa"];

/// `ssh_host_<type>_key`.
pub fn key_file(ktype: &str) -> String {
    format!("ssh_host_{ktype}_key")
}

/// `ssh_host_<type>_key.pub`.
pub fn pub_file(ktype: &str) -> String {
    format!("ssh_host_{ktype}_key.pub")
}

/// The type named by a private key file name (`ssh_host_ed25519_key` → `ed25519`).
pub fn type_of_file(name: &str) -> Option<&str> {
    name.strip_prefix("ssh_host_")?
        .strip_suffix("_key")
        .filter(|t| !t.is_empty())
}

/// The comment that marks a key as made for instance `id`.
pub fn marker(id: u64) -> String {
    format!("gce-instance-{id}")
}

/// Split `[InstanceSetup] host_key_types` into types we can make and unknown names (lower-cased,
/// duplicates dropped).
pub fn configured_types(list: &[String]) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut unknown = Vec::new();
    for t in list {
        let t = t.trim().to_ascii_lowercase();
        let dest = if KNOWN_TYPES.contains(&t.as_str()) {
            &mut ok
        } else {
            &mut unknown
        };
        if !dest.contains(&t) {
            dest.push(t);
        }
    }
    (ok, unknown)
}

/// One line of a `.pub` file: `algorithm base64 [comment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algorithm: String,
    pub blob: String,
    pub comment: String,
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && s.len() - body.len() <= 2
        && s.len().is_multiple_of(4)
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Guest attribute keys allow `[A-Za-z0-9_-]{1,128}` (SPEC §1).
fn is_attribute_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parse a public key file (its first line); `None` unless it is `algorithm base64 [comment]`
/// with an algorithm usable as a guest attribute key.
pub fn parse_public(text: &[u8]) -> Option<PublicKey> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().next()?.trim();
    let mut parts = line.splitn(3, [' ', '\t']);
    let algorithm = parts.next()?.to_string();
    let blob = parts.next()?.trim().to_string();
    let comment = parts.next().unwrap_or("").trim().to_string();
    (is_attribute_key(&algorithm) && is_base64(&blob)).then_some(PublicKey {
        algorithm,
        blob,
        comment,
    })
}

/// What is on disk for one type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyState {
    /// `ssh_host_<type>_key` exists (a regular file).
    pub private: bool,
    /// The parsed `.pub`, if it exists and parses.
    pub public: Option<PublicKey>,
}

/// Why a key is to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// First boot of this instance: the key came with the image.
    NewInstance,
    /// A configured type has no key at all.
    Missing,
}

/// One key to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTask {
    pub ktype: String,
    pub reason: Reason,
    /// Its failure keeps the instance id unrecorded (configured types only).
    pub required: bool,
}

/// The keys to make on this boot. `configured`: valid configured types; `on_disk`: every type
/// with a private key file or configured, and its state.
pub fn plan(
    configured: &[String],
    on_disk: &BTreeMap<String, KeyState>,
    boot: &Boot,
    id: u64,
) -> Vec<KeyTask> {
    let mark = marker(id);
    let mut types: Vec<&str> = configured.iter().map(String::as_str).collect();
    for (t, state) in on_disk {
        if state.private && KNOWN_TYPES.contains(&t.as_str()) && !types.contains(&t.as_str()) {
            types.push(t);
        }
    }
    types.sort_unstable();
    let mut tasks = Vec::new();
    for t in types {
        let required = configured.iter().any(|c| c == t);
        let state = on_disk.get(t).cloned().unwrap_or_default();
        let made_for_this_instance =
            state.private && state.public.as_ref().is_some_and(|p| p.comment == mark);
        let reason = if !state.private {
            // Only configured types get here without a private key.
            Some(Reason::Missing)
        } else if matches!(boot, Boot::NewInstance { .. }) && !made_for_this_instance {
            Some(Reason::NewInstance)
        } else {
            None
        };
        if let Some(reason) = reason {
            tasks.push(KeyTask {
                ktype: t.to_string(),
                reason,
                required,
            });
        }
    }
    tasks
}

/// The guest attribute for a public key file: (`ssh-ed25519`, base64 blob).
pub fn attribute(public: &PublicKey) -> (String, String) {
    (public.algorithm.clone(), public.blob.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 42;

    fn pk(comment: &str) -> Option<PublicKey> {
        Some(PublicKey {
            algorithm: "ssh-ed25519".into(),
            blob: "AAAA".into(),
            comment: comment.into(),
        })
    }

    fn disk(rows: &[(&str, bool, Option<&str>)]) -> BTreeMap<String, KeyState> {
        rows.iter()
            .map(|(t, private, comment)| {
                (
                    t.to_string(),
                    KeyState {
                        private: *private,
                        public: comment.and_then(pk),
                    },
                )
            })
            .collect()
    }

    fn tasks(v: &[(&str, Reason, bool)]) -> Vec<KeyTask> {
        v.iter()
            .map(|(t, reason, required)| KeyTask {
                ktype: t.to_string(),
                reason: *reason,
                required: *required,
            })
            .collect()
    }

    fn conf() -> Vec<String> {
        vec!["ecdsa".into(), "ed25519".into(), "rsa".into()]
    }

    #[test]
    fn new_instance_regenerates_configured_and_leftover_types() {
        let new = Boot::NewInstance {
            recorded: Some("1".into()),
        };
        let on_disk = disk(&[
            ("dsa", true, Some("root@image")),
            ("ecdsa", true, Some("root@image")),
            ("ed25519", true, Some("root@image")),
            ("rsa", true, Some("root@image")),
            // Not a type ssh-keygen makes: left alone.
            ("weird", true, Some("x")),
        ]);
        use Reason::NewInstance as N;
        assert_eq!(
            plan(&conf(), &on_disk, &new, ID),
            tasks(&[
                ("dsa", N, false),
                ("ecdsa", N, true),
                ("ed25519", N, true),
                ("rsa", N, true),
            ])
        );
    }

    #[test]
    fn same_instance_touches_nothing_but_makes_missing_configured_keys() {
        let on_disk = disk(&[
            ("ecdsa", true, Some("root@image")),
            ("ed25519", true, None),
            ("dsa", true, None),
        ]);
        assert_eq!(
            plan(&conf(), &on_disk, &Boot::SameInstance, ID),
            tasks(&[("rsa", Reason::Missing, true)])
        );
        let all = disk(&[
            ("ecdsa", true, Some("a")),
            ("ed25519", true, Some("b")),
            ("rsa", true, Some("c")),
        ]);
        assert!(plan(&conf(), &all, &Boot::SameInstance, ID).is_empty());
    }

    /// A retry after a partial failure redoes only what was not made for this instance; a key of
    /// an earlier instance (another marker) or whose private half is missing is redone.
    #[test]
    fn retry_redoes_only_keys_not_made_for_this_instance() {
        let new = Boot::NewInstance {
            recorded: Some("1".into()),
        };
        let on_disk = disk(&[
            ("ecdsa", true, Some("gce-instance-42")),
            ("ed25519", true, Some("gce-instance-41")),
            ("rsa", false, Some("gce-instance-42")),
        ]);
        assert_eq!(
            plan(&conf(), &on_disk, &new, ID),
            tasks(&[
                ("ed25519", Reason::NewInstance, true),
                ("rsa", Reason::Missing, true),
            ])
        );
    }

    #[test]
    fn configured_types_are_validated() {
        let list: Vec<String> = ["ECDSA", " ed25519", "rsa", "rsa", "ed2551", "ecdsa-sk"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (ok, bad) = configured_types(&list);
        assert_eq!(ok, ["ecdsa", "ed25519", "rsa"]);
        assert_eq!(bad, ["ed2551", "ecdsa-sk"]);
    }

    #[test]
    fn file_names_and_types() {
        assert_eq!(type_of_file("ssh_host_ed25519_key"), Some("ed25519"));
        assert_eq!(type_of_file("ssh_host_ed25519_key.pub"), None);
        assert_eq!(type_of_file("ssh_host__key"), None);
        assert_eq!(type_of_file("sshd_config"), None);
        assert_eq!(key_file("rsa"), "ssh_host_rsa_key");
        assert_eq!(pub_file("rsa"), "ssh_host_rsa_key.pub");
    }

    /// (algorithm, blob, comment).
    type Parsed<'a> = Option<(&'a str, &'a str, &'a str)>;

    /// Published as gcloud reads it: key = algorithm, value = the base64 blob alone.
    #[test]
    fn public_key_files_parse_into_guest_attributes() {
        let rows: [(&[u8], Parsed); 8] = [
            (
                b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0 gce-instance-42\n",
                Some((
                    "ssh-ed25519",
                    "AAAAC3NzaC1lZDI1NTE5AAAAIOv0",
                    "gce-instance-42",
                )),
            ),
            (
                b"ecdsa-sha2-nistp256 AAAAE2VjZHNh+/A= root@host name\n",
                Some(("ecdsa-sha2-nistp256", "AAAAE2VjZHNh+/A=", "root@host name")),
            ),
            (b"ssh-rsa AAAAB3Nz\n", Some(("ssh-rsa", "AAAAB3Nz", ""))),
            (b"ssh-rsa\n", None),
            (b"ssh-rsa not*base64\n", None),
            (b"ssh-rsa AAA\n", None),
            (b"ssh-ed25519-cert-v01@openssh.com AAAA x\n", None),
            (b"\xff\xfe", None),
        ];
        for (text, want) in rows {
            let got = parse_public(text);
            let got = got.as_ref().map(|p| {
                let (k, v) = attribute(p);
                (k, v, p.comment.clone())
            });
            let want = want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
            assert_eq!(got, want, "{}", String::from_utf8_lossy(text));
        }
    }
}
