//! The accounts daemon as a [`Service`]: one pass takes the last metadata snapshot, asks
//! [`crate::decide`] what should be, runs the plan through [`crate::system`] (in [`apply`]),
//! keeps [`crate::record`] up to date, refreshes the `gce-authorized-keys` cache and the ready
//! markers ([`outputs`]), and arms a timer for the next key expiry so an expired key is gone on
//! the second — with no metadata change and with the metadata server unreachable ([`expiry`]).

mod apply;
mod expiry;
mod outputs;

use crate::action::Action;
use crate::decide::authorized_keys::ExpiryOption;
use crate::decide::cache;
use crate::decide::delta::{self, Inputs};
use crate::decide::desired::{Desired, desired_keys_memo};
use crate::decide::keys::ParseMemo;
use crate::decide::oslogin::{self, OsLoginSettings};
use crate::decide::plan::{PlanConfig, plan};
use crate::decide::takeover::{self, Evidence};
use crate::record::{self, Loaded, Origin, State};
use crate::system::commands;
use crate::system::key_cache::KeyCache;
use crate::system::markers::Markers;
use crate::system::passwd::{Nss, parse_passwd, parse_shadow_passwords, uid_min};
use chrono::{DateTime, Utc};
use gce_agent::config::{self, Config};
use gce_agent::daemon::Service;
use gce_metadata::{Client, Root, Snapshot};
use std::collections::{BTreeSet, HashMap, HashSet};
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
    cache: KeyCache,
    markers: Markers,
    /// Parsed key lines and SHA-256 fingerprints carried between snapshots, so one changed key
    /// among a thousand costs one parse and one hash.
    memo: ParseMemo,
    fingerprints: HashMap<String, String>,
    /// The inputs and result of the last pass, for the incremental path ([`delta`]).
    inputs: Option<Inputs>,
    desired: Option<Desired>,
    /// OS Login as of the last snapshot.
    oslogin: OsLoginSettings,
    /// The content of `google_users` as last written (rewritten only when the names change).
    google_users_written: Option<String>,
    /// When the current pass began (for the debug timings).
    pass_started: std::time::Instant,
    /// Users whose keys could not be written (a refused home): planned again at every pass,
    /// also an incremental one whose changes are elsewhere.
    keys_pending: BTreeSet<String>,
}

impl Accounts {
    pub fn new(config: &Config, client: Client, paths: Paths) -> Accounts {
        let plan_cfg = PlanConfig {
            deprovision_remove: config.accounts.deprovision_remove,
            uid_min: uid_min(&paths.login_defs),
            allowed_system_users: config.accounts.allowed_system_users.clone(),
            expiry: ExpiryOption::None,
        };
        let state = match record::load(&paths.state) {
            Loaded::State(s) => s,
            Loaded::Missing => take_over(&paths, plan_cfg.uid_min),
            Loaded::Unusable => record::read_google_users(&paths.google_users)
                .map(|text| State::from_google_users_file(&text))
                .unwrap_or_default(),
        };
        let nss = Nss::new(&paths.passwd);
        nss.look_everywhere_for(
            state
                .users
                .iter()
                .filter(|(_, u)| u.origin == Origin::Adopted)
                .map(|(name, _)| name),
        );
        let next_expiry = expiry::state_next_expiry(&state, Utc::now());
        Accounts {
            cfg: config.accounts.clone(),
            nss,
            cache: KeyCache::new(paths.cache_dir.clone()),
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
            markers: Markers::default(),
            memo: ParseMemo::default(),
            fingerprints: HashMap::new(),
            inputs: None,
            desired: None,
            oslogin: OsLoginSettings::default(),
            google_users_written: None,
            pass_started: std::time::Instant::now(),
            keys_pending: BTreeSet::new(),
        }
    }

    /// Notes a change of the OS Login settings (logged once per change).
    fn switch_oslogin(&mut self, settings: OsLoginSettings) {
        if settings == self.oslogin {
            return;
        }
        if settings.enabled != self.oslogin.enabled {
            if settings.enabled {
                info!(
                    "OS Login is on: removing the SSH keys and sudo this agent granted from metadata (accounts and users' own keys stay)"
                );
            } else {
                info!("OS Login is off: metadata SSH keys are managed again");
            }
        }
        self.oslogin = settings;
    }

    fn warn_once(&mut self, key: String, msg: impl FnOnce()) {
        if self.warned.insert(key) {
            msg();
        }
    }

    /// Saves the record, and Google's user list when its names changed.
    fn save_state(&mut self) {
        self.save_record();
        let text = record::google_users_text(&self.state);
        if self.google_users_written.as_ref() != Some(&text)
            && record::save_google_users(&text, &self.paths.google_users)
        {
            self.google_users_written = Some(text);
        }
    }

    /// Saves the record alone: the write-ahead step before useradd, which should cost one
    /// durable write and nothing else.
    fn save_record(&self) {
        record::save(&self.state, &self.paths.state);
    }

    /// Bring the machine in line with the last snapshot at the current time.
    pub async fn reconcile(&mut self) -> anyhow::Result<String> {
        let Some(snap) = self.last.clone() else {
            return Ok(self.expire_from_state());
        };
        let root = &snap.value;
        let started = std::time::Instant::now();
        self.pass_started = started;
        let now = Utc::now();
        // Only the users whose lines changed, when that gives the same answer as a full pass.
        let inputs = Inputs::of(&root.instance.attributes, &root.project.attributes);
        let mut cached = self.desired.take();
        let dirty = match (&self.inputs, cached.as_mut()) {
            (Some(prev), Some(d)) => delta::update(prev, d, &inputs, now).map(|mut users| {
                users.extend(self.keys_pending.iter().cloned());
                users
            }),
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
        self.report_rejected(&desired);
        if !self.expiry_checked {
            self.plan_cfg.expiry = match commands::openssh_expiry_option().await {
                Ok(opt) => opt,
                Err(e) => {
                    warn!(
                        "cannot tell the OpenSSH version ({e}); not writing expiry-time= options"
                    );
                    ExpiryOption::None
                }
            };
            self.expiry_checked = true;
        }
        // Under OS Login the sudoers group is not ours to grant (the package has its own).
        if !self.sudoers_ready && !desired.oslogin {
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
        let any_created = !creating.is_empty();
        if any_created {
            for a in creating {
                self.state.record(a);
            }
            self.save_record();
        }
        let t_recorded = started.elapsed();

        let changed = self.run_plan(plan.actions).await || any_created;
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
            "reconcile timings: desired {t_desired:?}, write-ahead recorded {t_recorded:?}, applied {t_applied:?}, \
             state saved {t_state:?}, cache {t_cache:?}, published {:?}",
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
        if self.oslogin.enabled {
            status.push_str("; OS Login on: metadata keys grant nothing");
        }
        if let Some(t) = self.next_expiry {
            status.push_str(&format!("; next expiry {}", t.format("%Y-%m-%dT%H:%M:%SZ")));
        }
        Ok(status)
    }

    fn report_rejected(&mut self, desired: &Desired) {
        for r in &desired.rejected {
            let text = r.to_string();
            self.warn_once(format!("rejected:{text}"), || {
                warn!("ignoring ssh-keys entry: {text}")
            });
        }
    }

    /// The sudoers group and `/etc/sudoers.d/google_sudoers` (0440), created once.
    async fn ensure_sudoers(&mut self) -> bool {
        let g = self.cfg.sudoers_group.clone();
        if !self.nss.group_exists(&g)
            && let Err(e) = commands::groupadd(&self.cfg, &g).await
        {
            error!("{e}");
            return false;
        }
        match commands::install_sudoers_rule(&self.paths.sudoers, &g) {
            Ok(true) => true,
            Ok(false) => {
                debug!(
                    "{} has no directory; sudo rule not installed",
                    self.paths.sudoers.display()
                );
                true
            }
            Err(e) => {
                error!("writing {}: {e}", self.paths.sudoers.display());
                false
            }
        }
    }
}

/// The first start without a state file: the users Google's agents listed in `google_users`,
/// created where the accounts bear their `useradd`'s mark ([`takeover`]), adopted otherwise.
fn take_over(paths: &Paths, uid_min: u32) -> State {
    let Some(text) = record::read_google_users(&paths.google_users) else {
        return State::default();
    };
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let passwd = parse_passwd(&read(paths.passwd.clone()));
    let shadow = parse_shadow_passwords(&read(paths.passwd.with_file_name("shadow")));
    let ev = Evidence {
        passwd: &passwd,
        shadow: &shadow,
        uid_min,
    };
    let state = takeover::from_google_agents(&text, &ev);
    for (name, u) in &state.users {
        if u.origin == Origin::Created {
            info!(USER = %name, "user {name} was created by Google's agent (listed in google_users, password '*' as its useradd sets): recorded as created, deprovision_remove applies");
        }
    }
    if !state.users.is_empty() {
        let created = state
            .users
            .values()
            .filter(|u| u.origin == Origin::Created)
            .count();
        info!(
            "taking over {} user(s) listed in {}: {created} created by Google's agent, {} adopted (never deleted)",
            state.users.len(),
            paths.google_users.display(),
            state.users.len() - created
        );
    }
    state
}

impl Service for Accounts {
    type Snapshot = Root;

    fn watch_path(&self) -> String {
        String::new()
    }

    async fn apply(&mut self, snap: &Snapshot<Root>) -> anyhow::Result<String> {
        self.last = Some(snap.clone());
        // The one place the snapshot's OS Login state is read. The keys side follows from it in
        // the pass below (decide::desired and decide::plan read the same settings): on, the
        // metadata keys we installed and the AuthorizedKeysCommand cache are emptied; off, they
        // come back. Configuring the host for the OS Login package hooks in here too.
        let attrs = &snap.value;
        let oslogin = oslogin::settings(&attrs.instance.attributes, &attrs.project.attributes);
        self.switch_oslogin(oslogin);
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
