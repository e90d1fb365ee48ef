//! Local account and group lookups for the planner, without loading NSS modules into the
//! resident daemon when the machine does not need them.
//!
//! `/etc/passwd` and `/etc/group` are parsed once and re-read only when they change (a thousand
//! `getpwnam` calls would each scan the file). A name they do not hold goes to NSS
//! (`getpwnam_r`/`getgrnam_r`) only when `/etc/nsswitch.conf` lists a source beyond `files` and
//! `systemd` (LDAP, sssd, NIS, winbind…), or when the name is already known to live outside the
//! files (an adopted directory user). Debian's default `files systemd` therefore never maps
//! `libnss_systemd` (and the libm and libcap it pulls in) into the daemon: about 0.65 MiB of
//! resident memory for a module that only knows DynamicUser and systemd-homed accounts. Such a
//! name is still caught: useradd itself asks NSS and fails, and the daemon then looks the name
//! up through NSS and adopts it ([`Nss::lookup_everywhere`]).

use crate::decide::plan::{LocalUser, LocalUsers};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Identity of a version of a file: inode, mtime (s, ns), size.
type FileId = (u64, i64, i64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.ino(), md.mtime(), md.mtime_nsec(), md.size()))
}

/// A parsed file, re-read when its identity changes.
struct Cached<T> {
    path: PathBuf,
    parse: fn(&str) -> T,
    value: Option<(FileId, T)>,
}

impl<T> Cached<T> {
    fn new(path: PathBuf, parse: fn(&str) -> T) -> Cached<T> {
        Cached {
            path,
            parse,
            value: None,
        }
    }

    /// Re-reads the file if it changed; returns whether it did.
    fn refresh(&mut self) -> bool {
        let Some(id) = file_id(&self.path) else {
            let had = self.value.is_some();
            self.value = None;
            return had;
        };
        if self.value.as_ref().is_some_and(|(old, _)| *old == id) {
            return false;
        }
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        self.value = Some((id, (self.parse)(&text)));
        true
    }

    fn get(&self) -> Option<&T> {
        self.value.as_ref().map(|(_, v)| v)
    }
}

/// Which databases have sources other than `files` and `systemd` in nsswitch.conf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtherSources {
    pub passwd: bool,
    pub group: bool,
}

/// `passwd: files systemd` → no other source; `passwd: files ldap` → other. `compat` counts as
/// other (it can pull NIS entries in); a database without a line uses glibc's default, which is
/// files-only for passwd and group on glibc ≥ 2.34 — but we read that as "other" to be safe.
pub fn parse_nsswitch(text: &str) -> OtherSources {
    let mut out = OtherSources {
        passwd: true,
        group: true,
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((db, rest)) = line.split_once(':') else {
            continue;
        };
        let other = rest
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .any(|w| w != "files" && w != "systemd");
        match db.trim() {
            "passwd" => out.passwd = other,
            "group" => out.group = other,
            _ => {}
        }
    }
    out
}

pub struct Nss {
    passwd: RefCell<Cached<HashMap<String, LocalUser>>>,
    group: RefCell<Cached<HashMap<String, Vec<String>>>>,
    nsswitch: RefCell<Cached<OtherSources>>,
    /// Names found through NSS outside the files: always looked up there.
    elsewhere: RefCell<HashSet<String>>,
}

impl Nss {
    pub fn new(passwd: impl Into<PathBuf>) -> Nss {
        let passwd: PathBuf = passwd.into();
        let etc = passwd.parent().unwrap_or(Path::new("/etc")).to_path_buf();
        Nss::with_files(passwd, etc.join("group"), etc.join("nsswitch.conf"))
    }

    pub fn with_files(passwd: PathBuf, group: PathBuf, nsswitch: PathBuf) -> Nss {
        Nss {
            passwd: RefCell::new(Cached::new(passwd, parse_passwd)),
            group: RefCell::new(Cached::new(group, parse_group)),
            nsswitch: RefCell::new(Cached::new(nsswitch, parse_nsswitch)),
            elsewhere: RefCell::new(HashSet::new()),
        }
    }

    pub fn system() -> Nss {
        Nss::new("/etc/passwd")
    }

    /// Re-read the files that changed since the last call. Lookups use the copies read here
    /// (a miss re-checks once), so the daemon calls this once per reconcile rather than paying
    /// a `stat` per user.
    pub fn refresh(&self) {
        self.passwd.borrow_mut().refresh();
        self.group.borrow_mut().refresh();
        self.nsswitch.borrow_mut().refresh();
    }

    fn other_sources(&self) -> OtherSources {
        let mut ns = self.nsswitch.borrow_mut();
        if ns.get().is_none() {
            ns.refresh();
        }
        ns.get().copied().unwrap_or(OtherSources {
            passwd: true,
            group: true,
        })
    }

    /// The account as the files database has it, re-reading `/etc/passwd` once if it changed
    /// (a user created since the last refresh).
    pub fn in_files(&self, name: &str) -> Option<LocalUser> {
        if let Some(u) = self.passwd.borrow().get().and_then(|m| m.get(name)) {
            return Some(u.clone());
        }
        if !self.passwd.borrow_mut().refresh() {
            return None;
        }
        self.passwd
            .borrow()
            .get()
            .and_then(|m| m.get(name))
            .cloned()
    }

    /// The account through every NSS source (`getpwnam_r`); remembers names found only there.
    pub fn lookup_everywhere(&self, name: &str) -> Option<LocalUser> {
        let u = nix::unistd::User::from_name(name).ok().flatten()?;
        if self.in_files(name).is_none() {
            self.elsewhere.borrow_mut().insert(name.to_string());
        }
        Some(LocalUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
            shell: u.shell.to_string_lossy().into_owned(),
        })
    }

    /// Names to look up through NSS when the files lack them (adopted users from the state file,
    /// which may live in a directory service).
    pub fn look_everywhere_for<'a>(&self, names: impl IntoIterator<Item = &'a String>) {
        self.elsewhere
            .borrow_mut()
            .extend(names.into_iter().cloned());
    }

    /// Whether a group exists: `/etc/group`, then NSS when nsswitch lists other sources.
    pub fn group_exists(&self, name: &str) -> bool {
        self.with_group(name, |m| m.is_some())
            || (self.other_sources().group
                && matches!(nix::unistd::Group::from_name(name), Ok(Some(_))))
    }

    /// Whether `user` is a listed member of `group` in `/etc/group` (what gpasswd edits).
    pub fn is_member(&self, user: &str, group: &str) -> bool {
        self.with_group(group, |m| m.is_some_and(|m| m.iter().any(|u| u == user)))
    }

    /// `/etc/group` as of the last [`Self::refresh`] (read now if it never was).
    fn with_group<R>(&self, name: &str, f: impl FnOnce(Option<&Vec<String>>) -> R) -> R {
        if self.group.borrow().get().is_none() {
            self.group.borrow_mut().refresh();
        }
        f(self.group.borrow().get().and_then(|m| m.get(name)))
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

/// `name:password:…` lines of `/etc/shadow` → name → password field; malformed lines skipped.
pub fn parse_shadow_passwords(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(password)) = (f.next(), f.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with('+') || name.starts_with('-') {
            continue;
        }
        map.entry(name.to_string())
            .or_insert_with(|| password.to_string());
    }
    map
}

/// `name:x:gid:member,member` lines → name → members; malformed lines are skipped.
pub fn parse_group(text: &str) -> HashMap<String, Vec<String>> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 || f[0].is_empty() || f[0].starts_with('+') || f[0].starts_with('-') {
            continue;
        }
        let members = f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        map.entry(f[0].to_string()).or_insert(members);
    }
    map
}

impl LocalUsers for Nss {
    fn lookup(&self, name: &str) -> Option<LocalUser> {
        if let Some(u) = self.in_files(name) {
            return Some(u);
        }
        if self.other_sources().passwd || self.elsewhere.borrow().contains(name) {
            return self.lookup_everywhere(name);
        }
        None
    }
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
    fn nsswitch_sources_beyond_files_and_systemd() {
        let none = OtherSources {
            passwd: false,
            group: false,
        };
        assert_eq!(
            parse_nsswitch("passwd:  files systemd\ngroup: files systemd\nhosts: files dns\n"),
            none
        );
        assert_eq!(
            parse_nsswitch("passwd: files\ngroup: files [SUCCESS=merge] systemd # comment ldap\n"),
            none
        );
        let ldap = parse_nsswitch("passwd: files ldap\ngroup: files\n");
        assert!(ldap.passwd && !ldap.group);
        assert!(parse_nsswitch("passwd: compat\ngroup: sss files\n").group);
        assert!(parse_nsswitch("passwd: compat\n").passwd);
        // A database without a line: assume other sources.
        assert!(parse_nsswitch("hosts: files\n").passwd);
    }

    #[test]
    fn parses_group_members() {
        let g = parse_group("sudo:x:27:alice,bob\nempty:x:5:\nbad\ndocker:x:999: carol \n");
        assert_eq!(g["sudo"], vec!["alice", "bob"]);
        assert!(g["empty"].is_empty());
        assert_eq!(g["docker"], vec!["carol"]);
        assert_eq!(g.len(), 3);
    }

    /// With files-only nsswitch, a name missing from the files is absent without asking NSS
    /// (here `root`, which the host's NSS knows); with another source listed it is asked.
    #[test]
    fn nss_is_asked_only_when_nsswitch_lists_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let (p, g, n) = (
            dir.path().join("passwd"),
            dir.path().join("group"),
            dir.path().join("nsswitch.conf"),
        );
        std::fs::write(&p, "a:x:1001:1001::/home/a:/bin/sh\n").unwrap();
        std::fs::write(&g, "google-sudoers:x:1500:a\nadm:x:4:\n").unwrap();
        std::fs::write(&n, "passwd: files systemd\ngroup: files systemd\n").unwrap();
        let nss = Nss::with_files(p.clone(), g.clone(), n.clone());
        nss.refresh();
        assert_eq!(nss.lookup("a").unwrap().uid, 1001);
        assert!(nss.lookup("root").is_none(), "files-only: NSS not asked");
        assert!(nss.group_exists("adm"));
        assert!(!nss.group_exists("root"), "files-only: NSS not asked");
        assert!(nss.is_member("a", "google-sudoers"));
        assert!(!nss.is_member("b", "google-sudoers"));
        // A name known to live elsewhere is looked up through NSS.
        nss.look_everywhere_for([&"root".to_string()]);
        assert_eq!(nss.lookup("root").unwrap().uid, 0);

        std::fs::write(&n, "passwd: files ldap\ngroup: files sss\n").unwrap();
        let nss = Nss::with_files(p, g, n);
        nss.refresh();
        assert_eq!(nss.lookup("root").unwrap().uid, 0);
        assert!(nss.group_exists("root"));
    }

    #[test]
    fn a_user_created_after_the_refresh_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(dir.path().join("nsswitch.conf"), "passwd: files\n").unwrap();
        std::fs::write(&p, "a:x:1001:1001::/home/a:/bin/sh\n").unwrap();
        let nss = Nss::new(&p);
        nss.refresh();
        assert!(nss.lookup("new").is_none());
        std::fs::write(
            &p,
            "a:x:1001:1001::/home/a:/bin/sh\nnew:x:1002:1002::/home/new:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(nss.lookup("new").unwrap().uid, 1002);
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
        nss.refresh();
        assert_eq!(nss.lookup("zz-new-user").unwrap().uid, 1002);
        assert!(nss.lookup("zz-nobody-has-this-name").is_none());
    }
}
