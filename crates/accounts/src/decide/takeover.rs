//! Taking over from Google's agents: which users listed in their `/var/lib/google/google_users`
//! they created, so that `deprovision_remove` still applies to those, while every other listed
//! user stays adopted (never deleted).
//!
//! The file alone cannot tell: the Python daemons and the Go agent list every user they manage,
//! including accounts that existed before them (the image's own user, one made by cloud-init),
//! and deleting such a user is exactly the Go agent's bug #202. So a listed user counts as
//! created only with the mark Google's agents leave on the accounts they make —
//! `useradd -m -s /bin/bash -p * USER` gives a `*` password field, where `useradd` without `-p`
//! leaves `!` and a person's account carries a hash — and only when it is an ordinary local
//! account: in `/etc/passwd` itself (not a directory service), uid ≥ `UID_MIN`, never uid 0,
//! whatever `allowed_system_users` says. Any doubt leaves the user adopted, the safe side.

use std::collections::HashMap;

use crate::decide::plan::LocalUsers;
use crate::record::{Origin, State};

/// What the machine says about the listed users.
pub struct Evidence<'a> {
    /// `/etc/passwd` itself (the files, not NSS).
    pub passwd: &'a dyn LocalUsers,
    /// The password field of each `/etc/shadow` entry.
    pub shadow: &'a HashMap<String, String>,
    /// `UID_MIN` of login.defs.
    pub uid_min: u32,
}

/// Whether Google's agents created `name`: see the module doc for the rule.
pub fn created_by_google_agent(name: &str, ev: &Evidence) -> bool {
    let Some(account) = ev.passwd.lookup(name) else {
        return false;
    };
    account.uid != 0 && account.uid >= ev.uid_min && ev.shadow.get(name).is_some_and(|p| p == "*")
}

/// The record to start from when we have none: every valid name of `google_users` (as
/// [`State::from_google_users_file`] reads it), created when the evidence says so, adopted
/// otherwise.
pub fn from_google_agents(google_users: &str, ev: &Evidence) -> State {
    let mut state = State::from_google_users_file(google_users);
    for (name, user) in state.users.iter_mut() {
        if created_by_google_agent(name, ev) {
            user.origin = Origin::Created;
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::plan::LocalUser;
    use std::collections::BTreeMap;

    #[test]
    fn only_ordinary_accounts_with_googles_password_mark_count_as_created() {
        let account = |uid| LocalUser {
            uid,
            gid: uid,
            home: format!("/home/u{uid}").into(),
            shell: "/bin/bash".into(),
        };
        let passwd: BTreeMap<String, LocalUser> = [
            ("made", 1001),
            ("preexisting", 1002),
            ("hashed", 1003),
            ("root", 0),
            ("daemon", 1),
            ("sysstar", 999),
            ("noshadow", 1004),
        ]
        .into_iter()
        .map(|(n, uid)| (n.to_string(), account(uid)))
        .collect();
        let shadow: HashMap<String, String> = [
            ("made", "*"),
            ("preexisting", "!"),
            ("hashed", "$y$j9T$abc"),
            ("root", "*"),
            ("daemon", "*"),
            ("sysstar", "*"),
            ("elsewhere", "*"),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect();
        let ev = Evidence {
            passwd: &passwd,
            shadow: &shadow,
            uid_min: 1000,
        };
        let rows = [
            ("made", true, "useradd -p * by Google's agent"),
            (
                "preexisting",
                false,
                "locked by useradd without -p: not theirs",
            ),
            ("hashed", false, "a person's password"),
            ("root", false, "uid 0, never"),
            ("daemon", false, "system account"),
            ("sysstar", false, "uid below UID_MIN"),
            ("noshadow", false, "no shadow entry"),
            ("elsewhere", false, "not in /etc/passwd"),
            ("ghost", false, "does not exist"),
        ];
        for (name, want, rule) in rows {
            assert_eq!(created_by_google_agent(name, &ev), want, "{name}: {rule}");
        }
        let state = from_google_agents(
            "made\npreexisting\nroot\n../etc\n-g\nghost\n# comment\n",
            &ev,
        );
        let origins: Vec<(&str, Origin)> = state
            .users
            .iter()
            .map(|(n, u)| (n.as_str(), u.origin))
            .collect();
        assert_eq!(
            origins,
            [
                ("ghost", Origin::Adopted),
                ("made", Origin::Created),
                ("preexisting", Origin::Adopted),
                ("root", Origin::Adopted),
            ]
        );
    }
}
