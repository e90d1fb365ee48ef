//! Local account lookups for the planner. `/etc/passwd` is parsed once and re-read only when the
//! file changes (a thousand `getpwnam` calls would each scan it); names it does not hold fall back
//! to NSS (`getpwnam_r`), so LDAP or sssd accounts are still seen.

use crate::plan::{LocalUser, LocalUsers};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Identity of a version of /etc/passwd: inode, mtime (s, ns), size.
type FileId = (u64, i64, i64, u64);

pub struct Nss {
    passwd: PathBuf,
    cache: RefCell<Option<(FileId, HashMap<String, LocalUser>)>>,
}

impl Nss {
    pub fn new(passwd: impl Into<PathBuf>) -> Nss {
        Nss {
            passwd: passwd.into(),
            cache: RefCell::new(None),
        }
    }

    pub fn system() -> Nss {
        Nss::new("/etc/passwd")
    }

    /// Re-read `/etc/passwd` if it changed since the last call. Lookups use the copy read here
    /// (names it lacks still reach NSS), so the daemon calls this once per reconcile rather
    /// than paying a `stat` per user.
    pub fn refresh(&self) {
        let Ok(md) = std::fs::metadata(&self.passwd) else {
            *self.cache.borrow_mut() = None;
            return;
        };
        let id = (md.ino(), md.mtime(), md.mtime_nsec(), md.size());
        if self
            .cache
            .borrow()
            .as_ref()
            .is_some_and(|(old, _)| *old == id)
        {
            return;
        }
        let text = std::fs::read_to_string(&self.passwd).unwrap_or_default();
        *self.cache.borrow_mut() = Some((id, parse_passwd(&text)));
    }
}

/// `name:x:uid:gid:gecos:home:shell` lines; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> HashMap<String, LocalUser> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 || f[0].is_empty() || f[0].starts_with('+') || f[0].starts_with('-') {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) else {
            continue;
        };
        map.entry(f[0].to_string()).or_insert(LocalUser {
            uid,
            gid,
            home: PathBuf::from(f[5]),
            shell: f[6].to_string(),
        });
    }
    map
}

impl LocalUsers for Nss {
    fn lookup(&self, name: &str) -> Option<LocalUser> {
        if let Some((_, map)) = self.cache.borrow().as_ref()
            && let Some(u) = map.get(name)
        {
            return Some(u.clone());
        }
        let u = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(LocalUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
            shell: u.shell.to_string_lossy().into_owned(),
        })
    }
}

/// Whether a group exists (NSS).
pub fn group_exists(name: &str) -> bool {
    matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
}

/// `UID_MIN` from a login.defs file (1000 when absent).
pub fn uid_min(login_defs: &Path) -> u32 {
    std::fs::read_to_string(login_defs)
        .map(|t| crate::names::parse_uid_min(&t))
        .unwrap_or(crate::names::DEFAULT_UID_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines_and_skips_garbage() {
        let m = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1001:1001::/home/alice:/bin/sh\n+nis::::::\nbob:x:NaN:1::/h:/s\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m["alice"].uid, 1001);
        assert_eq!(m["alice"].home, PathBuf::from("/home/alice"));
        assert_eq!(m["root"].shell, "/bin/bash");
    }

    #[test]
    fn cache_follows_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(&p, "a:x:1001:1001::/home/a:/bin/sh\n").unwrap();
        let nss = Nss::new(&p);
        nss.refresh();
        assert_eq!(nss.lookup("a").unwrap().uid, 1001);
        std::fs::write(
            &p,
            "a:x:1001:1001::/home/a:/bin/sh\nzz-new-user:x:1002:1002::/home/b:/bin/sh\n",
        )
        .unwrap();
        assert!(
            nss.lookup("zz-new-user").is_none(),
            "not re-read before refresh"
        );
        nss.refresh();
        assert_eq!(nss.lookup("zz-new-user").unwrap().uid, 1002);
        assert!(nss.lookup("zz-nobody-has-this-name").is_none());
    }
}
