//! The accounts daemon's effects: turn a plan into useradd/gpasswd runs and authorized_keys
//! writes, remember what was done, keep the AuthorizedKeysCommand cache and the guest-attribute
//! ready markers current, and wake itself at the next key expiry so an expired key is gone on the
//! second — with no metadata change and with the metadata server unreachable.

use crate::authorized_keys::{ExpiryOption, key_line};
use crate::cache;
use crate::delta::{self, Inputs};
use crate::desired::{Desired, desired_keys_memo};
use crate::home::{self, HomeError, Outcome};
use crate::keys::{KeyEntry, ParseMemo, google_ssh_expiry, parse_authorized_key};
use crate::passwd::{Nss, uid_min};
use crate::plan::{Action, LocalUsers, PlanConfig, plan};
use crate::state::State;
use chrono::{DateTime, Utc};
use gce_agent::cmd::{self, RunOpts};
use gce_agent::config::{self, Config};
use gce_agent::daemon::Service;
use gce_agent::fs::{self as afs, WriteOpts};
use gce_agent::msgid;
use gce_metadata::model::attribute_is_true;
use gce_metadata::{Client, Root, Snapshot, ready};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Where the daemon keeps and publishes things; every path is an argument so tests and packagers
/// can move them.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    /// Google's list of managed users, kept in step so either agent can take over.
    pub google_users: PathBuf,
    pub cache_dir: PathBuf,
    pub sudoers: PathBuf,
    pub login_defs: PathBuf,
    pub passwd: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state: "/var/lib/google/gce-accounts-state.json".into(),
            google_users: "/var/lib/google/google_users".into(),
            cache_dir: cache::DEFAULT_DIR.into(),
            sudoers: "/etc/sudoers.d/google_sudoers".into(),
            login_defs: "/etc/login.defs".into(),
            passwd: "/etc/passwd".into(),
        }
    }
}

const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(300);

pub struct Accounts {
    cfg: config::Accounts,
    paths: Paths,
    plan_cfg: PlanConfig,
    client: Client,
    nss: Nss,
    state: State,
    last: Option<Snapshot<Root>>,
    /// Messages already logged, so a refusal is said once, not every cycle.
    warned: HashSet<String>,
    next_expiry: Option<DateTime<Utc>>,
    retry_at: Option<tokio::time::Instant>,
    expiry_checked: bool,
    sudoers_ready: bool,
    cache_written: BTreeMap<String, String>,
    cache_complete: bool,
    published: BTreeMap<String, String>,
    published_etag: String,
    /// Parsed key lines and SHA-256 fingerprints carried between snapshots, so one changed key
    /// among a thousand costs one parse and one hash.
    memo: ParseMemo,
    fingerprints: HashMap<String, String>,
    /// The inputs and result of the last pass, for the incremental path ([`delta`]).
    inputs: Option<Inputs>,
    desired: Option<Desired>,
}

impl Accounts {
    pub fn new(config: &Config, client: Client, paths: Paths) -> Accounts {
        let state = load_state(&paths);
        let plan_cfg = PlanConfig {
            deprovision_remove: config.accounts.deprovision_remove,
            uid_min: uid_min(&paths.login_defs),
            allowed_system_users: config.accounts.allowed_system_users.clone(),
            expiry: ExpiryOption::None,
        };
        let nss = Nss::new(&paths.passwd);
        nss.look_everywhere_for(
            state
                .users
                .iter()
                .filter(|(_, u)| u.origin == crate::state::Origin::Adopted)
                .map(|(name, _)| name),
        );
        let next_expiry = state_next_expiry(&state, Utc::now());
        Accounts {
            cfg: config.accounts.clone(),
            nss,
            paths,
            plan_cfg,
            client,
            state,
            last: None,
            warned: HashSet::new(),
            // Keys recorded as installed still expire before the first snapshot arrives.
            next_expiry,
            retry_at: None,
            expiry_checked: false,
            sudoers_ready: false,
            cache_written: BTreeMap::new(),
            cache_complete: false,
            published: BTreeMap::new(),
            published_etag: String::new(),
            memo: ParseMemo::default(),
            fingerprints: HashMap::new(),
            inputs: None,
            desired: None,
        }
    }

    fn warn_once(&mut self, key: String, msg: impl FnOnce()) {
        if self.warned.insert(key) {
            msg();
        }
    }

    /// Bring the machine in line with the last snapshot at the current time.
    pub async fn reconcile(&mut self) -> anyhow::Result<String> {
        let Some(snap) = self.last.clone() else {
            return Ok(self.expire_from_state());
        };
        let root = &snap.value;
        let started = std::time::Instant::now();
        let now = Utc::now();
        // Only the users whose lines changed, when that gives the same answer as a full pass.
        let inputs = Inputs::of(&root.instance.attributes, &root.project.attributes);
        let mut cached = self.desired.take();
        let dirty = match (&self.inputs, cached.as_mut()) {
            (Some(prev), Some(d)) => delta::update(prev, d, &inputs, now),
            _ => None,
        };
        let desired = match (&dirty, cached) {
            (Some(_), Some(d)) => d,
            _ => desired_keys_memo(
                &root.instance.attributes,
                &root.project.attributes,
                now,
                &mut self.memo,
            ),
        };
        self.inputs = Some(inputs);
        match &dirty {
            Some(users) => self.add_fingerprints(&desired, users),
            None => self.remember_fingerprints(&desired),
        }
        let t_desired = started.elapsed();
        self.next_expiry = desired.next_expiry;
        if desired.oslogin {
            self.warn_once("oslogin".into(), || {
                info!("OS Login is enabled: metadata SSH keys are not managed")
            });
            return Ok("OS Login enabled; standing down".into());
        }
        self.warned.remove("oslogin");
        self.report_rejected(&desired);
        if !self.expiry_checked {
            self.plan_cfg.expiry = detect_expiry_option().await;
            self.expiry_checked = true;
        }
        if !self.sudoers_ready {
            self.sudoers_ready = self.ensure_sudoers().await;
        }

        self.nss.refresh();
        let plan = match &dirty {
            Some(users) => {
                let part = Desired {
                    users: users
                        .iter()
                        .filter_map(|u| desired.users.get(u).map(|k| (u.clone(), k.clone())))
                        .collect(),
                    ..Desired::default()
                };
                let state = State {
                    version: self.state.version,
                    users: users
                        .iter()
                        .filter_map(|u| self.state.users.get(u).map(|s| (u.clone(), s.clone())))
                        .collect(),
                };
                plan(&part, &state, &self.nss, &self.plan_cfg)
            }
            None => plan(&desired, &self.state, &self.nss, &self.plan_cfg),
        };
        for (user, reason) in &plan.refused {
            let (u, r) = (user.clone(), reason.clone());
            self.warn_once(
                format!("refused:{user}:{reason}"),
                || warn!(USER = %u, "not managing user {u}: {r}"),
            );
        }

        // Write-ahead: creations are recorded before useradd runs, in one state write, so a crash
        // after useradd can never make our user look adopted (and an adopted one never looks
        // created: only names that do not exist yet get here).
        let creating: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::CreateUser { .. }))
            .collect();
        if !creating.is_empty() {
            for a in &creating {
                self.state.record(a);
            }
            self.save_state();
        }

        let mut changed = !creating.is_empty();
        let mut new_users: Vec<(String, Vec<Action>)> = Vec::new();
        let mut i = 0;
        while i < plan.actions.len() {
            let user = plan.actions[i].user().to_string();
            let mut group: Vec<Action> = Vec::new();
            while i < plan.actions.len() && plan.actions[i].user() == user {
                group.push(plan.actions[i].clone());
                i += 1;
            }
            // Keys first: login works as soon as the file is there; sudo follows.
            group.sort_by_key(priority);
            if matches!(group.first(), Some(Action::CreateUser { .. })) {
                new_users.push((user, group));
            } else {
                changed |= self.apply_user(&user, &group, None).await;
            }
        }
        // Existing users first (no exec for a key change), then the slow useradd runs.
        changed |= self.create_users(new_users).await;
        let t_applied = started.elapsed();
        if changed {
            self.save_state();
        }
        let t_state = started.elapsed();
        self.update_cache(&desired, dirty.as_ref());
        let t_cache = started.elapsed();
        self.publish(&desired, root, &snap.etag, dirty.as_ref())
            .await;
        debug!(
            "reconcile timings: desired {t_desired:?}, applied {t_applied:?}, state saved {t_state:?}, \
             cache {t_cache:?}, published {:?}",
            started.elapsed()
        );

        self.desired = Some(desired);
        let keys: usize = self.state.users.values().map(|u| u.keys.len()).sum();
        let with_keys = self
            .state
            .users
            .values()
            .filter(|u| !u.keys.is_empty())
            .count();
        let mut status = format!("{with_keys} users, {keys} keys managed");
        if let Some(t) = self.next_expiry {
            status.push_str(&format!("; next expiry {}", t.format("%Y-%m-%dT%H:%M:%SZ")));
        }
        Ok(status)
    }

    /// Before the first snapshot (a restart while the metadata server is unreachable), the keys
    /// this daemon installed still expire on time: their `expireOn` is read back from the lines
    /// recorded in the state file, and expired lines are removed. Nothing is ever added or
    /// created without metadata.
    fn expire_from_state(&mut self) -> String {
        let now = Utc::now();
        let mut due: Vec<(String, Vec<String>)> = Vec::new();
        for (name, u) in &self.state.users {
            let keep: Vec<String> = u
                .keys
                .iter()
                .filter(|l| line_expiry(l).is_none_or(|t| now <= t))
                .cloned()
                .collect();
            if keep.len() != u.keys.len() {
                due.push((name.clone(), keep));
            }
        }
        if !due.is_empty() {
            self.nss.refresh();
        }
        for (user, keep) in due {
            if self.write_keys(&user, &keep) {
                info!(USER = %user, "expired key removed for {user} (no metadata yet: expiry read from the state file)");
                self.state.record(&Action::WriteKeys { user, lines: keep });
                self.save_state();
            }
        }
        // Only expiries still ahead: a line that could not be rewritten must not spin the timer.
        self.next_expiry = state_expiries(&self.state).filter(|t| *t >= now).min();
        "waiting for metadata".into()
    }

    /// Fingerprints of the keys in `desired`, computed once per distinct key.
    fn remember_fingerprints(&mut self, desired: &Desired) {
        let mut next = HashMap::with_capacity(self.fingerprints.len());
        for e in desired.users.values().flatten() {
            let fp = match self
                .fingerprints
                .remove(&e.key.blob)
                .or_else(|| next.get(&e.key.blob).cloned())
            {
                Some(fp) => fp,
                None => e.key.fingerprint(),
            };
            next.insert(e.key.blob.clone(), fp);
        }
        self.fingerprints = next;
    }

    /// Adds the fingerprints of `users`' keys (incremental pass; nothing is forgotten).
    fn add_fingerprints(&mut self, desired: &Desired, users: &BTreeSet<String>) {
        for e in users.iter().filter_map(|u| desired.users.get(u)).flatten() {
            if !self.fingerprints.contains_key(&e.key.blob) {
                self.fingerprints
                    .insert(e.key.blob.clone(), e.key.fingerprint());
            }
        }
    }

    fn fingerprint(&self, e: &KeyEntry) -> String {
        self.fingerprints
            .get(&e.key.blob)
            .cloned()
            .unwrap_or_else(|| e.key.fingerprint())
    }

    fn report_rejected(&mut self, desired: &Desired) {
        for r in &desired.rejected {
            let text = r.to_string();
            self.warn_once(format!("rejected:{text}"), || {
                warn!("ignoring ssh-keys entry: {text}")
            });
        }
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
                let run = run_template(
                    &self.cfg.useradd_cmd,
                    &[("user", &user), ("groups", &groups)],
                );
                running.spawn(async move { (user, actions, run.await) });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            match done {
                Ok((user, actions, res)) => {
                    changed |= self.apply_user(&user, &actions, Some(res)).await;
                }
                // A panic aborts the process (panic = "abort"); cancellation does not happen.
                Err(e) => error!("user creation task failed: {e}"),
            }
        }
        changed
    }

    /// Runs one user's actions; returns whether the state changed. `created` is the outcome of
    /// this user's useradd: a plan's `CreateUser` (always first, see [`priority`]) is run by
    /// [`Self::create_users`], which passes its result here.
    async fn apply_user(
        &mut self,
        user: &str,
        actions: &[Action],
        created: Option<Result<(), cmd::CmdError>>,
    ) -> bool {
        let mut changed = false;
        let mut created_now = false;
        let mut created = created;
        for action in actions {
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
                    if created_now && self.cfg.useradd_cmd.contains("{groups}") {
                        // useradd already put the new user in its groups: one exec, not two.
                        true
                    } else if created_now {
                        let groups = self.new_user_groups();
                        self.run_logged(
                            &self.cfg.usermod_cmd.clone(),
                            &[("user", user), ("groups", &groups)],
                        )
                        .await
                    } else {
                        let g = self.cfg.sudoers_group.clone();
                        self.run_logged(
                            &self.cfg.gpasswd_add_cmd.clone(),
                            &[("user", user), ("group", &g)],
                        )
                        .await
                    }
                }
                Action::RemoveFromSudoers { .. } => {
                    let g = self.cfg.sudoers_group.clone();
                    if self.nss.is_member(user, &g) {
                        self.run_logged(
                            &self.cfg.gpasswd_remove_cmd.clone(),
                            &[("user", user), ("group", &g)],
                        )
                        .await
                    } else {
                        true
                    }
                }
                Action::DeleteUser { .. } => {
                    let ok = self
                        .run_logged(&self.cfg.userdel_cmd.clone(), &[("user", user)])
                        .await;
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
            if ok {
                self.state.record(action);
                changed = true;
            } else if matches!(action, Action::WriteKeys { .. } | Action::DeleteUser { .. }) {
                // Keep the user in the state so the step is tried again; skip the rest.
                break;
            }
        }
        changed
    }

    fn write_keys(&mut self, user: &str, lines: &[String]) -> bool {
        let Some(local) = self.nss.lookup(user) else {
            self.warn_once(
                format!("nouser:{user}"),
                || warn!(USER = %user, "user {user} does not exist; keys not written"),
            );
            return false;
        };
        match home::write_keys(user, &local, lines) {
            Ok(outcome) => {
                let old: Vec<String> = self
                    .state
                    .users
                    .get(user)
                    .map(|u| u.keys.clone())
                    .unwrap_or_default();
                if outcome != Outcome::Unchanged {
                    log_key_changes(user, &old, lines);
                }
                self.warned
                    .retain(|w| !w.starts_with(&format!("home:{user}:")));
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

    async fn run_logged(&self, template: &str, vars: &[(&str, &str)]) -> bool {
        match run_template(template, vars).await {
            Ok(()) => true,
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    /// The sudoers group and `/etc/sudoers.d/google_sudoers` (0440), created once.
    async fn ensure_sudoers(&mut self) -> bool {
        let g = self.cfg.sudoers_group.clone();
        if !self.nss.group_exists(&g)
            && !self
                .run_logged(&self.cfg.groupadd_cmd.clone(), &[("group", &g)])
                .await
        {
            return false;
        }
        let Some(dir) = self.paths.sudoers.parent() else {
            return true;
        };
        if !dir.is_dir() {
            debug!("{} does not exist; sudo rule not installed", dir.display());
            return true;
        }
        let want = format!("%{g} ALL=(ALL:ALL) NOPASSWD:ALL\n");
        let have = afs::read_nofollow(&self.paths.sudoers, 4096).ok().flatten();
        if have.as_deref() != Some(want.as_bytes())
            && let Err(e) = afs::write_atomic(
                &self.paths.sudoers,
                want.as_bytes(),
                &WriteOpts::new(0o440).owner(0, 0),
            )
        {
            error!("writing {}: {e}", self.paths.sudoers.display());
            return false;
        }
        true
    }

    fn save_state(&self) {
        let opts = WriteOpts::new(0o600).owner(0, 0);
        if let Some(dir) = self.paths.state.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = afs::write_atomic(&self.paths.state, &self.state.to_bytes(), &opts) {
            error!("saving {}: {e}", self.paths.state.display());
        }
        let mut names = String::new();
        for u in self.state.users.keys() {
            names.push_str(u);
            names.push('\n');
        }
        if let Err(e) = afs::write_atomic(
            &self.paths.google_users,
            names.as_bytes(),
            &WriteOpts::new(0o600).owner(0, 0),
        ) {
            debug!("saving {}: {e}", self.paths.google_users.display());
        }
    }

    /// The AuthorizedKeysCommand cache: a file per managed user with keys.
    /// Writes the cache files of `only` (all users when `None` or before the first full write).
    fn update_cache(&mut self, desired: &Desired, only: Option<&BTreeSet<String>>) {
        let only = only.filter(|_| self.cache_complete);
        let considered = |u: &String| only.is_none_or(|d| d.contains(u));
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (user, us) in &self.state.users {
            if us.keys.is_empty() || !considered(user) {
                continue;
            }
            let Some(entries) = desired.users.get(user) else {
                continue;
            };
            let pairs: Vec<(&KeyEntry, String, String)> = entries
                .iter()
                .map(|e| (e, key_line(e, self.plan_cfg.expiry), self.fingerprint(e)))
                .collect();
            want.insert(user.clone(), cache::render(&pairs));
        }
        if only.is_none() && want == self.cache_written && self.cache_complete {
            return;
        }
        let dir = self.paths.cache_dir.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.warn_once("cache-dir".into(), || {
                error!("cannot create {}: {e}", dir.display())
            });
            return;
        }
        let dfd = match afs::open_dir_nofollow(&dir) {
            Ok(fd) => fd,
            Err(e) => {
                error!("cache directory {}: {e}", dir.display());
                return;
            }
        };
        let opts = WriteOpts::new(0o644).owner(0, 0);
        let mut ok = true;
        for (user, text) in &want {
            if (self.cache_written.get(user) != Some(text) || !self.cache_complete)
                && let Err(e) = afs::write_atomic_at(dfd.as_fd(), user, text.as_bytes(), &opts)
            {
                error!(USER = %user, "cache write failed: {e}");
                ok = false;
            }
        }
        if let Some(only) = only {
            for user in only {
                if !want.contains_key(user) && self.cache_written.remove(user).is_some() {
                    let _ = afs::remove_at(dfd.as_fd(), user);
                }
            }
            self.cache_written.extend(want);
            self.cache_complete = ok;
            return;
        }
        // Remove files of users who no longer have keys (including leftovers of a past run).
        if let Ok(rd) = std::fs::read_dir(dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !want.contains_key(&name) {
                    let _ = afs::remove_at(dfd.as_fd(), &name);
                }
            }
        }
        if ok && !self.cache_complete {
            ok = afs::write_atomic_at(dfd.as_fd(), cache::COMPLETE, b"", &opts).is_ok();
        }
        self.cache_complete = ok;
        self.cache_written = want;
    }

    /// Ready markers for clients (gce-ssh), when guest attributes are enabled.
    /// Publishes the markers of `only` (all users when `None`).
    async fn publish(
        &mut self,
        desired: &Desired,
        root: &Root,
        etag: &str,
        only: Option<&BTreeSet<String>>,
    ) {
        let inst = &root.instance.attributes;
        let key = "enable-guest-attributes";
        let enabled = match inst.get(key) {
            Some(v) => attribute_is_true(Some(v)),
            None => attribute_is_true(root.project.attributes.get(key)),
        };
        if !enabled {
            return;
        }
        let now = Utc::now();
        let considered = |u: &String| only.is_none_or(|d| d.contains(u));
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (user, us) in &self.state.users {
            if us.keys.is_empty() || !considered(user) {
                continue;
            }
            let fps: Vec<String> = desired
                .users
                .get(user)
                .map(|es| {
                    es.iter()
                        .filter(|e| !e.is_expired(now))
                        .map(|e| self.fingerprint(e))
                        .collect()
                })
                .unwrap_or_default();
            want.insert(user.clone(), ready::encode(&fps));
        }
        let mut failed = None;
        for (user, value) in &want {
            if self.published.get(user) != Some(value) {
                match self
                    .client
                    .put_guest_attribute(ready::NAMESPACE, &ready::user_key(user), value)
                    .await
                {
                    Ok(()) => {
                        self.published.insert(user.clone(), value.clone());
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|u| considered(u) && !want.contains_key(*u))
            .cloned()
            .collect();
        for user in gone {
            match self
                .client
                .delete_guest_attribute(ready::NAMESPACE, &ready::user_key(&user))
                .await
            {
                Ok(()) => {
                    self.published.remove(&user);
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if failed.is_none() && self.published_etag != etag {
            match self
                .client
                .put_guest_attribute(ready::NAMESPACE, ready::ETAG_KEY, etag)
                .await
            {
                Ok(()) => self.published_etag = etag.to_string(),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        match failed {
            Some(e) => self.warn_once("publish".into(), || {
                warn!("publishing ready markers as guest attributes failed: {e}")
            }),
            None => {
                self.warned.remove("publish");
            }
        }
    }
}

/// Expands `template` now and returns the run as an owned future (it can be spawned).
fn run_template(
    template: &str,
    vars: &[(&str, &str)],
) -> impl std::future::Future<Output = Result<(), cmd::CmdError>> + Send + 'static {
    let argv = config::expand_command(template, vars);
    async move {
        cmd::run(&argv, &RunOpts::with_timeout(CMD_TIMEOUT))
            .await
            .map(|_| ())
    }
}

fn priority(a: &Action) -> u8 {
    match a {
        Action::CreateUser { .. } | Action::Adopt { .. } => 0,
        Action::WriteKeys { .. } => 1,
        Action::AddToSudoers { .. } => 2,
        Action::RemoveFromSudoers { .. } => 3,
        Action::DeleteUser { .. } => 4,
        Action::Forget { .. } => 5,
    }
}

/// The `expireOn` of a managed line as recorded in the state file (`google-ssh` comment).
fn line_expiry(line: &str) -> Option<DateTime<Utc>> {
    let key = parse_authorized_key(line).ok()?;
    google_ssh_expiry(&key.comment).ok().flatten()
}

/// The earliest expiry among the recorded lines still valid at `now`, or an already passed one
/// (so the timer fires at once); `None` without expiring keys.
fn state_next_expiry(state: &State, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let all: Vec<DateTime<Utc>> = state_expiries(state).collect();
    let passed = all.iter().filter(|t| now > **t).min();
    passed.or_else(|| all.iter().min()).copied()
}

/// The expiries of every managed line recorded in the state file.
fn state_expiries(state: &State) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    state
        .users
        .values()
        .flat_map(|u| u.keys.iter())
        .filter_map(|l| line_expiry(l))
}

fn log_key_changes(user: &str, old: &[String], new: &[String]) {
    let old_set: BTreeSet<&String> = old.iter().collect();
    let new_set: BTreeSet<&String> = new.iter().collect();
    let fp = |l: &str| {
        parse_authorized_key(l)
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

fn load_state(paths: &Paths) -> State {
    match afs::read_nofollow(&paths.state, 64 << 20) {
        Ok(Some(bytes)) => match State::parse(&bytes) {
            Ok(s) => return s,
            Err(e) => {
                let aside = paths.state.with_extension("corrupt");
                let _ = std::fs::rename(&paths.state, &aside);
                error!(
                    "state file {} is unreadable ({e}); moved to {}; users from google_users are treated as adopted",
                    paths.state.display(),
                    aside.display()
                );
            }
        },
        Ok(None) => {}
        Err(e) => error!("state file {}: {e}", paths.state.display()),
    }
    match std::fs::read_to_string(&paths.google_users) {
        Ok(text) => {
            let s = State::from_google_users_file(&text);
            if !s.users.is_empty() {
                info!(
                    "taking over {} user(s) listed in {} as adopted",
                    s.users.len(),
                    paths.google_users.display()
                );
            }
            s
        }
        Err(_) => State::default(),
    }
}

/// Which `expiry-time=` form the installed OpenSSH reads: with `Z` from 9.1, local time from 7.7
/// (when the option appeared), none before (an unknown option would void the whole key line).
pub async fn detect_expiry_option() -> ExpiryOption {
    let argv = vec!["ssh".to_string(), "-V".to_string()];
    let out = match cmd::run_status(&argv, &RunOpts::with_timeout(Duration::from_secs(5))).await {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            warn!("cannot tell the OpenSSH version ({e}); not writing expiry-time= options");
            return ExpiryOption::None;
        }
    };
    ExpiryOption::for_openssh(&out, *chrono::Local::now().offset())
}

impl Service for Accounts {
    type Snapshot = Root;

    fn watch_path(&self) -> String {
        String::new()
    }

    async fn apply(&mut self, snap: &Snapshot<Root>) -> anyhow::Result<String> {
        self.last = Some(snap.clone());
        self.reconcile().await
    }

    async fn wakeup(&mut self) {
        let expiry = self.next_expiry.map(|t| {
            // Expired means now > expireOn: wake 1 ms after it.
            let ms = (t - Utc::now()).num_milliseconds() + 1;
            tokio::time::Instant::now() + Duration::from_millis(ms.max(0) as u64)
        });
        let at = match (expiry, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    async fn on_wakeup(&mut self) -> anyhow::Result<Option<String>> {
        if self
            .retry_at
            .is_some_and(|r| r <= tokio::time::Instant::now())
        {
            self.retry_at = None;
        }
        // Timers (expiry, creation retry) need a full pass: nothing in metadata changed.
        self.inputs = None;
        self.reconcile().await.map(Some)
    }

    async fn reload(&mut self, config: &Config) {
        self.inputs = None;
        self.cfg = config.accounts.clone();
        self.plan_cfg.deprovision_remove = config.accounts.deprovision_remove;
        self.plan_cfg.allowed_system_users = config.accounts.allowed_system_users.clone();
        self.sudoers_ready = false;
        self.warned.clear();
    }
}
