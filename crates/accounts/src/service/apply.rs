//! Running a plan: each user's actions in [`rank`] order through [`crate::system`], new users
//! created up to `create_parallelism` at a time, each success written into the record so the next
//! plan does not repeat it, each failure logged once and retried (creation with backoff).

use super::Accounts;
use crate::action::{Action, rank};
use crate::decide::plan::LocalUsers as _;
use crate::names::is_reserved;
use crate::record::Origin;
use crate::system::commands;
use crate::system::key_files::{self, HomeError, Outcome};
use gce_agent::cmd::CmdError;
use gce_agent::msgid;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Longest wait between two attempts to create a user.
const RETRY_MAX: Duration = Duration::from_secs(300);

impl Accounts {
    /// Runs `actions` (in user order, as the planner returns them); returns whether the record
    /// changed. Existing users go first (no exec for a key change), then the slow useradd runs.
    pub(super) async fn run_plan(&mut self, actions: Vec<Action>) -> bool {
        let mut changed = false;
        let mut new_users: Vec<(String, Vec<Action>)> = Vec::new();
        let mut actions = actions.into_iter().peekable();
        while let Some(first) = actions.next() {
            let user = first.user().to_string();
            let mut group = vec![first];
            while let Some(next) = actions.next_if(|a| a.user() == user) {
                group.push(next);
            }
            // Keys first: login works as soon as the file is there; sudo follows.
            group.sort_by_key(rank);
            if matches!(group.first(), Some(Action::CreateUser { .. })) {
                new_users.push((user, group));
            } else {
                changed |= self.apply_user(&user, &group, None).await;
            }
        }
        changed |= self.create_users(new_users).await;
        changed
    }

    /// Runs `useradd_cmd` for each new user, up to `create_parallelism` at once, and each user's
    /// remaining actions (keys, then sudo) as soon as that user's useradd is done.
    async fn create_users(&mut self, users: Vec<(String, Vec<Action>)>) -> bool {
        if users.is_empty() {
            return false;
        }
        let groups = self.new_user_groups();
        let limit = self.cfg.create_parallelism.max(1);
        let mut queue = users.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut changed = false;
        loop {
            while running.len() < limit {
                let Some((user, actions)) = queue.next() else {
                    break;
                };
                let run = commands::useradd(&self.cfg, &user, &groups);
                running.spawn(async move {
                    let started = Instant::now();
                    let res = run.await;
                    (user, actions, res, started, started.elapsed())
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            match done {
                Ok((user, actions, res, started, useradd)) => {
                    changed |= self.apply_user(&user, &actions, Some(res)).await;
                    // The daemon's own share of a new user: the pass up to this useradd's start,
                    // plus everything after it returned (keys, sudo); `scripts/bench accounts`
                    // reads these fields.
                    let own =
                        started.duration_since(self.pass_started) + started.elapsed() - useradd;
                    debug!(
                        USER = %user,
                        USERADD_US = useradd.as_micros() as u64,
                        OWN_US = own.as_micros() as u64,
                        "new user {user}: useradd {useradd:?}, the daemon's own share {own:?}"
                    );
                }
                // A panic aborts the process (panic = "abort"); cancellation does not happen.
                Err(e) => error!("user creation task failed: {e}"),
            }
        }
        changed
    }

    /// Runs one user's actions; returns whether the record changed. `created` is the outcome of
    /// this user's useradd: a plan's `CreateUser` (always first, see [`rank`]) is run by
    /// [`Self::create_users`], which passes its result here.
    async fn apply_user(
        &mut self,
        user: &str,
        actions: &[Action],
        created: Option<Result<(), CmdError>>,
    ) -> bool {
        let mut changed = false;
        let mut created_now = false;
        let mut created = created;
        // Set when the keys could not be written: the user stays recorded so the write is tried
        // again, and of the rest only a removal from the sudoers group still runs (sudo granted
        // through metadata goes with the user, whatever state the home is in).
        let mut keys_failed = false;
        for action in actions {
            if keys_failed && !matches!(action, Action::RemoveFromSudoers { .. }) {
                continue;
            }
            let ok = match action {
                Action::CreateUser { .. } => {
                    let Some(res) = created.take() else {
                        error!(USER = %user, "internal: creation of {user} was not run; retried on the next pass");
                        return changed;
                    };
                    match res {
                        Ok(()) => {
                            info!(USER = %user, MESSAGE_ID = msgid::USER_CREATED, "created user {user}");
                            created_now = true;
                            true
                        }
                        Err(e) => {
                            if self.exists_elsewhere(user) {
                                // useradd refused a name another NSS source (LDAP, sssd,
                                // systemd-homed…) already has: not ours, so adopt it.
                                info!(USER = %user, "user {user} exists outside /etc/passwd; managing its keys (adopted: never deleted)");
                                self.state.record(&Action::Adopt {
                                    user: user.to_string(),
                                });
                                changed = true;
                                continue;
                            }
                            let n = self.state.record_create_failure(user);
                            let delay = Duration::from_secs(1u64 << n.min(8)).min(RETRY_MAX);
                            let at = tokio::time::Instant::now() + delay;
                            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
                            warn!(USER = %user, "creating user {user} failed (attempt {n}, retry in {delay:?}): {e}");
                            return true;
                        }
                    }
                }
                Action::Adopt { .. } => {
                    info!(USER = %user, "managing keys of existing user {user} (adopted: never deleted)");
                    true
                }
                Action::WriteKeys { lines, .. } => self.write_keys(user, lines),
                Action::AddToSudoers { .. } => {
                    let res = if created_now && commands::useradd_sets_groups(&self.cfg) {
                        // useradd already put the new user in its groups: one exec, not two.
                        Ok(())
                    } else if created_now {
                        let groups = self.new_user_groups();
                        commands::set_groups(&self.cfg, user, &groups).await
                    } else {
                        commands::add_to_group(&self.cfg, user, &self.cfg.sudoers_group).await
                    };
                    logged(res)
                }
                Action::RemoveFromSudoers { .. } => {
                    let g = &self.cfg.sudoers_group;
                    if self.nss.is_member(user, g) {
                        logged(commands::remove_from_group(&self.cfg, user, g).await)
                    } else {
                        true
                    }
                }
                Action::DeleteUser { .. } => {
                    let ok = logged(commands::userdel(&self.cfg, user).await);
                    if ok {
                        info!(USER = %user, MESSAGE_ID = msgid::USER_REMOVED, "deleted user {user} (created by this agent, deprovision_remove=true)");
                    }
                    ok
                }
                Action::Forget { .. } => {
                    info!(USER = %user, "user {user} left metadata; no longer managed");
                    true
                }
            };
            if matches!(action, Action::WriteKeys { .. }) {
                if ok {
                    self.keys_pending.remove(user);
                } else {
                    self.keys_pending.insert(user.to_string());
                }
            }
            if ok {
                self.state.record(action);
                changed = true;
            } else if matches!(action, Action::WriteKeys { .. }) {
                keys_failed = true;
            } else if matches!(action, Action::DeleteUser { .. }) {
                // Keep the user in the state so the step is tried again; skip the rest.
                break;
            }
        }
        changed
    }

    /// Makes `user`'s managed authorized_keys lines exactly `lines`; false when it could not.
    pub(super) fn write_keys(&mut self, user: &str, lines: &[String]) -> bool {
        let Some(local) = self.nss.lookup(user) else {
            self.warn_once(
                format!("nouser:{user}"),
                || warn!(USER = %user, "user {user} does not exist; keys not written"),
            );
            return false;
        };
        match key_files::write_keys(user, &local, lines) {
            Ok(outcome) => {
                if outcome != Outcome::Unchanged {
                    let old = self.state.users.get(user).map(|u| u.keys.as_slice());
                    log_key_changes(user, old.unwrap_or_default(), lines);
                }
                self.warned
                    .retain(|w| !w.starts_with(&format!("home:{user}:")));
                true
            }
            Err(e @ HomeError::Refused { .. })
                if lines.is_empty()
                    && is_reserved(
                        user,
                        Some(local.uid),
                        self.plan_cfg.uid_min,
                        &self.plan_cfg.allowed_system_users,
                    )
                    && self
                        .state
                        .users
                        .get(user)
                        .is_none_or(|u| u.origin == Origin::Adopted && u.keys.is_empty()) =>
            {
                // A system account (taken over from Google's google_users) with a home that is
                // not its own: we never manage such an account's keys, so nothing of ours is
                // there, and retrying at every snapshot would change nothing. Any other user
                // stays recorded and is retried: a marked key may be in a home refused today.
                let msg = e.to_string();
                self.warn_once(
                    format!("home:{user}:{msg}"),
                    || info!(USER = %user, "{msg}; no key of ours to remove there"),
                );
                true
            }
            Err(e @ HomeError::Refused { .. }) => {
                let msg = e.to_string();
                self.warn_once(
                    format!("home:{user}:{msg}"),
                    || warn!(USER = %user, "{msg}; keys not written"),
                );
                false
            }
            Err(e) => {
                error!(USER = %user, "writing authorized_keys failed: {e}");
                false
            }
        }
    }

    /// Whether `user`, whose creation just failed, exists through NSS but not in /etc/passwd.
    fn exists_elsewhere(&self, user: &str) -> bool {
        self.nss.in_files(user).is_none() && self.nss.lookup_everywhere(user).is_some()
    }

    /// A new user's supplementary groups: the configured ones that exist, and the sudoers group.
    fn new_user_groups(&self) -> String {
        let mut groups: Vec<String> = self
            .cfg
            .groups
            .iter()
            .filter(|g| self.nss.group_exists(g))
            .cloned()
            .collect();
        groups.push(self.cfg.sudoers_group.clone());
        groups.join(",")
    }
}

/// A command's outcome as a success flag, its error logged.
fn logged(res: Result<(), CmdError>) -> bool {
    match res {
        Ok(()) => true,
        Err(e) => {
            error!("{e}");
            false
        }
    }
}

fn log_key_changes(user: &str, old: &[String], new: &[String]) {
    let old_set: BTreeSet<&String> = old.iter().collect();
    let new_set: BTreeSet<&String> = new.iter().collect();
    let fp = |l: &str| {
        crate::decide::keys::parse_authorized_key(l)
            .map(|k| k.fingerprint())
            .unwrap_or_else(|_| "?".into())
    };
    for l in new_set.difference(&old_set) {
        info!(USER = %user, KEY_FINGERPRINT = %fp(l), MESSAGE_ID = msgid::KEY_ADDED, "key added for {user}");
    }
    for l in old_set.difference(&new_set) {
        info!(USER = %user, KEY_FINGERPRINT = %fp(l), MESSAGE_ID = msgid::KEY_REMOVED, "key removed for {user}");
    }
}
