//! The decision: the diff between what metadata wants ([`Desired`]), what we remember
//! ([`State`]) and what the system has ([`LocalUsers`]), as an ordered list of
//! [`Action`]s for the service to run.
//!
//! Incremental by construction: a user whose installed lines equal the desired
//! ones and who is already in the sudoers group gets no action at all, so a
//! restart or an unrelated metadata change touches nobody. With OS Login on, the
//! plan takes back what metadata keys granted and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use crate::action::Action;
use crate::decide::authorized_keys::{ExpiryOption, key_line};
use crate::decide::desired::Desired;
use crate::names::{DEFAULT_UID_MIN, is_reserved, validate_username};
use crate::record::{Origin, State};

/// An account as the passwd database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// Read access to local accounts (NSS in the daemon, a map in tests).
pub trait LocalUsers {
    fn lookup(&self, name: &str) -> Option<LocalUser>;
}

impl LocalUsers for BTreeMap<String, LocalUser> {
    fn lookup(&self, name: &str) -> Option<LocalUser> {
        self.get(name).cloned()
    }
}

impl LocalUsers for HashMap<String, LocalUser> {
    fn lookup(&self, name: &str) -> Option<LocalUser> {
        self.get(name).cloned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// `userdel -r` users we created when they leave metadata.
    pub deprovision_remove: bool,
    /// Accounts with a uid below this are system accounts (login.defs `UID_MIN`).
    pub uid_min: u32,
    /// System accounts (or root) the administrator explicitly lets us manage.
    pub allowed_system_users: Vec<String>,
    /// How managed lines carry the expiry for sshd itself.
    pub expiry: ExpiryOption,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            deprovision_remove: false,
            uid_min: DEFAULT_UID_MIN,
            allowed_system_users: Vec::new(),
            expiry: ExpiryOption::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In user order; within a user, in the order they must run.
    pub actions: Vec<Action>,
    /// Users left alone (or given no keys), with the reason, for one warning each.
    pub refused: Vec<(String, String)>,
}

/// Shells that cannot log in: such users get no keys (and no sudo).
fn is_nologin(shell: &str) -> bool {
    shell.ends_with("nologin") || shell.ends_with("/false")
}

fn reserved_reason(user: &LocalUser, cfg: &PlanConfig) -> String {
    if user.uid == 0 {
        "uid 0 (superuser); not managed unless allow-listed".to_string()
    } else {
        format!(
            "system account (uid {} < UID_MIN {}); not managed unless allow-listed",
            user.uid, cfg.uid_min
        )
    }
}

/// Computes the actions that bring the machine to `desired`. Deterministic:
/// users are visited in name order.
pub fn plan(desired: &Desired, state: &State, local: &dyn LocalUsers, cfg: &PlanConfig) -> Plan {
    let mut out = Plan::default();
    if desired.oslogin {
        return plan_oslogin(state, local);
    }
    let names: BTreeSet<&String> = desired.users.keys().chain(state.users.keys()).collect();
    for name in names {
        let user = name.clone();
        if let Err(e) = validate_username(name) {
            // Only reachable through a hand-edited state file: stop tracking it.
            out.refused.push((user.clone(), e.to_string()));
            if state.users.contains_key(name) {
                out.actions.push(Action::Forget { user });
            }
            continue;
        }
        let account = local.lookup(name);
        let reserved = account.as_ref().is_some_and(|a| {
            is_reserved(name, Some(a.uid), cfg.uid_min, &cfg.allowed_system_users)
        });
        let remembered = state.users.get(name);

        match (desired.users.get(name), remembered) {
            (Some(entries), _) => {
                let mut lines: Vec<String> =
                    entries.iter().map(|e| key_line(e, cfg.expiry)).collect();
                let Some(account) = account else {
                    // New, or vanished since (deleted by someone, or creation failed).
                    out.actions.push(Action::CreateUser { user: user.clone() });
                    out.actions
                        .push(Action::AddToSudoers { user: user.clone() });
                    out.actions.push(Action::WriteKeys { user, lines });
                    continue;
                };
                if reserved {
                    out.refused.push((user, reserved_reason(&account, cfg)));
                    continue;
                }
                let can_login = !is_nologin(&account.shell);
                if !can_login {
                    out.refused.push((
                        user.clone(),
                        format!(
                            "login shell {} cannot log in; no keys installed",
                            account.shell
                        ),
                    ));
                    lines.clear();
                }
                let (in_sudoers, installed) = match remembered {
                    Some(s) => (s.in_sudoers, s.keys.as_slice()),
                    None => {
                        out.actions.push(Action::Adopt { user: user.clone() });
                        // Unknown content: Google's agent may have left managed lines.
                        (false, &[][..])
                    }
                };
                if can_login && !in_sudoers {
                    out.actions
                        .push(Action::AddToSudoers { user: user.clone() });
                }
                if remembered.is_none() || installed != lines.as_slice() {
                    out.actions.push(Action::WriteKeys { user, lines });
                }
            }
            (None, Some(remembered)) => {
                // A created account that stays (deprovision_remove=false) keeps its record, with
                // no keys and no sudo, so that if the user comes back it is still known as
                // ours and not mistaken for an adopted one.
                let keep_record = remembered.origin == Origin::Created
                    && account.is_some()
                    && (!cfg.deprovision_remove || reserved);
                let retired = keep_record && remembered.keys.is_empty() && !remembered.in_sudoers;
                if retired {
                    continue;
                }
                if account.is_some() {
                    out.actions.push(Action::WriteKeys {
                        user: user.clone(),
                        lines: Vec::new(),
                    });
                    out.actions
                        .push(Action::RemoveFromSudoers { user: user.clone() });
                    if cfg.deprovision_remove && remembered.origin == Origin::Created && !reserved {
                        out.actions.push(Action::DeleteUser { user: user.clone() });
                    }
                }
                if !keep_record {
                    out.actions.push(Action::Forget { user });
                }
            }
            (None, None) => unreachable!("name comes from desired or state"),
        }
    }
    out
}

/// OS Login owns access: whatever metadata keys granted goes — the lines we installed (the
/// user's own lines stay, as always) and the sudoers membership — while every account and its
/// record stay (nobody is deleted; a created user is still ours when OS Login is turned off and
/// the metadata keys come back). A user taken over from Google's agents has no recorded lines
/// but is in the sudoers group, so its file is cleaned too; once both are gone, nothing more.
fn plan_oslogin(state: &State, local: &dyn LocalUsers) -> Plan {
    let mut out = Plan::default();
    for (name, remembered) in &state.users {
        let user = name.clone();
        if let Err(e) = validate_username(name) {
            out.refused.push((user.clone(), e.to_string()));
            out.actions.push(Action::Forget { user });
            continue;
        }
        let granted = !remembered.keys.is_empty() || remembered.in_sudoers;
        if !granted || local.lookup(name).is_none() {
            continue;
        }
        out.actions.push(Action::WriteKeys {
            user: user.clone(),
            lines: Vec::new(),
        });
        out.actions.push(Action::RemoveFromSudoers { user });
    }
    out
}
