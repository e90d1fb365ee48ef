//! Host-key pinning as `gcloud compute ssh` does it (SPEC §9): the guest publishes its host keys
//! as `hostkeys/<type>` guest attributes, read through `instances.getGuestAttributes`; they are
//! kept in a known-hosts file under the alias `compute.<instance id>`, and ssh runs with
//! `HostKeyAlias` and strict checking whenever that alias is known.
//!
//! Where gcloud only adds keys for an alias it does not know yet and leaves the rest to ssh, a
//! published key that differs from the pinned key of the same type is refused here, before any
//! key is pushed: a changed host key for the same instance id is either a rebuilt instance or
//! an impersonation, and only the user can tell which. Nothing pinned is ever replaced.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The key types gcloud accepts from guest attributes.
pub const SUPPORTED: &[&str] = &["ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256"];

/// The known-hosts alias of an instance.
pub fn alias(instance_id: &str) -> String {
    format!("compute.{instance_id}")
}

/// A host key: its type and base64 blob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostKey {
    pub kind: String,
    pub blob: String,
}

impl HostKey {
    /// `SHA256:…` as ssh prints it.
    pub fn fingerprint(&self) -> String {
        let raw = STANDARD.decode(&self.blob).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
        )
    }
}

/// Validates one published value: the blob (Google's agent writes only the base64 blob; a
/// `type blob` line is accepted too), base64 whose wire encoding names the same key type.
pub fn parse_published(kind: &str, value: &str) -> Result<HostKey, String> {
    if !SUPPORTED.contains(&kind) {
        return Err(format!("key type {kind:?} is not one gcloud pins"));
    }
    let mut fields = value.split_whitespace();
    let mut blob = fields.next().unwrap_or("");
    if blob == kind {
        blob = fields.next().unwrap_or("");
    }
    let raw = STANDARD
        .decode(blob)
        .map_err(|_| format!("{kind}: value is not base64"))?;
    // The SSH wire format starts with the key type as a length-prefixed string.
    let named = raw
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| raw.get(4..4 + n))
        .map(|t| t == kind.as_bytes())
        .unwrap_or(false);
    if !named {
        return Err(format!("{kind}: the key inside is not a {kind} key"));
    }
    Ok(HostKey {
        kind: kind.to_string(),
        blob: blob.to_string(),
    })
}

/// The `hostkeys/` items of a `getGuestAttributes` answer (`queryValue.items[]`), validated;
/// the second list holds one line per item that was skipped and why.
pub fn from_guest_attributes(answer: &serde_json::Value) -> (Vec<HostKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (kind, value) in crate::compute::items_of(answer, "hostkeys") {
        match parse_published(kind, value) {
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(e),
        }
    }
    keys.sort();
    keys.dedup();
    (keys, skipped)
}

/// The entries of one alias in a known-hosts text (plain host patterns only; hashed entries
/// and `@cert-authority`/`@revoked` lines are never ours and are left alone).
pub fn pinned(text: &str, alias: &str) -> Vec<HostKey> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let hosts = f.next()?;
            if hosts.starts_with('#') || hosts.starts_with('@') {
                return None;
            }
            if !hosts.split(',').any(|h| h == alias) {
                return None;
            }
            Some(HostKey {
                kind: f.next()?.to_string(),
                blob: f.next()?.to_string(),
            })
        })
        .collect()
}

/// What to do with the published keys given what is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Keys to add to the file under the alias.
    pub add: Vec<HostKey>,
    /// Run ssh with `StrictHostKeyChecking=yes` (the alias is known after `add`); otherwise
    /// trust on first use.
    pub strict: bool,
}

/// A published key that contradicts a pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub pinned: HostKey,
    pub published: HostKey,
}

/// Decides the pinning: refuses a published key whose type is pinned with a different key;
/// adds the types not pinned yet.
pub fn plan(pinned: &[HostKey], published: &[HostKey]) -> Result<Plan, Changed> {
    let mut add = Vec::new();
    for p in published {
        let same_type: Vec<&HostKey> = pinned.iter().filter(|k| k.kind == p.kind).collect();
        if same_type.is_empty() {
            add.push(p.clone());
        } else if !same_type.contains(&p) {
            return Err(Changed {
                pinned: same_type[0].clone(),
                published: p.clone(),
            });
        }
    }
    Ok(Plan {
        strict: !pinned.is_empty() || !add.is_empty(),
        add,
    })
}

/// `text` with `keys` appended under `alias` (one `alias type blob` line each).
pub fn with_added(text: &str, alias: &str, keys: &[HostKey]) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for k in keys {
        out.push_str(&format!("{alias} {} {}\n", k.kind, k.blob));
    }
    out
}

/// The known-hosts file gcloud uses: `~/.ssh/google_compute_known_hosts`.
pub fn default_file(home: Option<&Path>) -> Option<PathBuf> {
    home.map(|h| h.join(".ssh/google_compute_known_hosts"))
}

/// Reads a known-hosts file; a missing one is empty.
pub fn read(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Creates the file's directory (0700, as `~/.ssh` should be) when missing, so ssh can record
/// a key it trusted on first use.
pub fn ensure_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        _ => Ok(()),
    }
}

/// Replaces the file atomically (a new file beside it, written, fsynced, renamed over it, the
/// directory fsynced), creating its directory when missing. A symlinked file is updated where it
/// points, so a user's dotfile links keep working.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    ensure_dir(&path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("known_hosts");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real keys made with ssh-keygen (public halves only).
    const ED_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIMclxvgmacsFixf9XHmFTN/l9s7pc97rOHmhx6pY5uL3";
    const ED_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIDQ1QLKl51nKT6tic2OjcGBXdatffNEpmtdMJrN1a5J8";
    const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBG0cfh3Y3poH3hXhFPJVjmui6s1MhLiTii0DdEhVXkPWwiZZzPREhSpCYiqMC+wI3q8tRnYl8/X3pQtV77aTB3o=";

    fn key(kind: &str, blob: &str) -> HostKey {
        HostKey {
            kind: kind.into(),
            blob: blob.into(),
        }
    }

    #[test]
    fn published_values_are_validated_like_gcloud() {
        let rows: [(&str, String, Result<&str, &str>); 7] = [
            ("ssh-ed25519", ED_A.to_string(), Ok(ED_A)),
            ("ssh-ed25519", format!("ssh-ed25519 {ED_A}"), Ok(ED_A)),
            ("ssh-ed25519", format!("{ED_A}\nevil"), Ok(ED_A)),
            ("ssh-ed25519", "not base64!".into(), Err("not base64")),
            ("ssh-rsa", ED_A.to_string(), Err("not a ssh-rsa key")),
            ("ssh-dss", ED_A.to_string(), Err("not one gcloud pins")),
            ("ecdsa-sha2-nistp256", ECDSA.to_string(), Ok(ECDSA)),
        ];
        for (kind, value, want) in rows {
            match (parse_published(kind, &value), want) {
                (Ok(k), Ok(blob)) => assert_eq!(k.blob, blob),
                (Err(e), Err(w)) => assert!(e.contains(w), "{kind} {value}: {e}"),
                (got, want) => panic!("{kind} {value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn guest_attribute_answers_yield_only_hostkeys_items() {
        let answer = serde_json::json!({
            "queryPath": "hostkeys/",
            "queryValue": {"items": [
                {"namespace": "hostkeys", "key": "ssh-ed25519", "value": ED_A},
                {"namespace": "hostkeys", "key": "ssh-rsa", "value": "junk"},
                {"namespace": "gce-agent", "key": "ssh-ed25519", "value": ED_B},
            ]}
        });
        let (keys, skipped) = from_guest_attributes(&answer);
        assert_eq!(keys, [key("ssh-ed25519", ED_A)]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(from_guest_attributes(&serde_json::json!({})).0, []);
    }

    #[test]
    fn pinning_adds_new_types_keeps_known_and_refuses_changed() {
        let a = key("ssh-ed25519", ED_A);
        let b = key("ssh-ed25519", ED_B);
        let e = key("ecdsa-sha2-nistp256", ECDSA);
        // (pinned, published) -> Ok(add, strict) or Err(changed)
        type Row = (Vec<HostKey>, Vec<HostKey>, Result<(Vec<HostKey>, bool), ()>);
        let rows: Vec<Row> = vec![
            (vec![], vec![], Ok((vec![], false))),
            (vec![], vec![a.clone()], Ok((vec![a.clone()], true))),
            (vec![a.clone()], vec![], Ok((vec![], true))),
            (vec![a.clone()], vec![a.clone()], Ok((vec![], true))),
            (
                vec![a.clone()],
                vec![a.clone(), e.clone()],
                Ok((vec![e.clone()], true)),
            ),
            (vec![a.clone()], vec![b.clone()], Err(())),
            (
                vec![a.clone(), b.clone()],
                vec![b.clone()],
                Ok((vec![], true)),
            ),
            (
                vec![e.clone()],
                vec![b.clone()],
                Ok((vec![b.clone()], true)),
            ),
        ];
        for (pinned, published, want) in rows {
            let got = plan(&pinned, &published);
            match want {
                Ok((add, strict)) => assert_eq!(got, Ok(Plan { add, strict })),
                Err(()) => assert_eq!(
                    got,
                    Err(Changed {
                        pinned: a.clone(),
                        published: b.clone()
                    })
                ),
            }
        }
    }

    #[test]
    fn known_hosts_entries_are_found_by_alias_and_appended_without_touching_others() {
        let text = format!(
            "# comment\n|1|hashed= ssh-ed25519 {ED_B}\n@cert-authority compute.7 ssh-ed25519 {ED_B}\n\
             compute.7,10.0.0.2 ssh-ed25519 {ED_A}\ncompute.70 ssh-ed25519 {ED_B}"
        );
        assert_eq!(pinned(&text, "compute.7"), [key("ssh-ed25519", ED_A)]);
        assert_eq!(pinned(&text, "compute.8"), []);
        let out = with_added(&text, "compute.8", &[key("ecdsa-sha2-nistp256", ECDSA)]);
        assert!(out.starts_with(&text));
        assert!(out.ends_with(&format!("\ncompute.8 ecdsa-sha2-nistp256 {ECDSA}\n")));
        assert_eq!(
            pinned(&out, "compute.8"),
            [key("ecdsa-sha2-nistp256", ECDSA)]
        );
    }

    #[test]
    fn the_file_is_replaced_atomically_and_its_directory_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let f = default_file(Some(home.path())).unwrap();
        assert_eq!(read(&f).unwrap(), "");
        write(&f, "compute.1 ssh-ed25519 AAAA\n").unwrap();
        assert_eq!(read(&f).unwrap(), "compute.1 ssh-ed25519 AAAA\n");
        let dir_mode = std::fs::metadata(f.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // Through a symlink: the target is updated, the link stays.
        let real = home.path().join("dotfiles-known-hosts");
        std::fs::write(&real, "").unwrap();
        let link = home.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write(&link, "x\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "x\n");
    }
}
