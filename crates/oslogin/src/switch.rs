//! The switch: brings the host to the plan for the current settings, in an order that keeps
//! logins working at every step, with an intent record written first so that a start after a
//! crash finishes the job (and reloads sshd, which the crash may have skipped).
//!
//! On: the sudoers directories and include, nsswitch, PAM, group.conf, the trusted CA, and
//! sshd_config last (sshd asks the package only once everything it needs is in place); then
//! sshd is reloaded, nscd/unscd try-restarted, and the package's NSS cache filled in the
//! background. Off: the same in reverse, sshd_config first, and what we created is removed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use gce_agent::cmd::{self, RunOpts};
use gce_agent::config::Config;
use gce_metadata::Client;
use tracing::{debug, error, info, warn};

use crate::certs;
use crate::edit::{self, SUDOERS_INCLUDE};
use crate::host::{self, HostError};
use crate::journal::Journal;
use crate::plan::{Note, Paths, Plan, plan};
use crate::settings::{OsLoginConfig, Settings};

/// `journalctl MESSAGE_ID=…` finds every OS Login switch.
pub const MSGID_SWITCHED: &str = "ab7e3d284a30421da13ca54b6ca46418";

/// Test hook: abort the process after this many edits of one switch, as a crash would
/// (`tests/e2e_oslogin.rs` proves that the next start finishes the job).
pub const ABORT_AFTER_EDITS_ENV: &str = "GCE_OSLOGIN_ABORT_AFTER_EDITS";

const NSS_CACHE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Sshd,
    Nsswitch,
    Pam,
    GroupConf,
}

/// One step of a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Edit(File),
    EnsureDir(PathBuf),
    RemoveDir(PathBuf),
    CreateInclude,
    RemoveInclude,
    /// Remove a file we created (the package's NSS caches, the CA file).
    RemoveCreated(PathBuf),
    TrustedCa,
}

pub struct OsLogin {
    paths: Paths,
    cfg: OsLoginConfig,
    client: Client,
    journal: Journal,
    /// Settings of the last switch that left nothing to retry.
    converged: Option<Settings>,
    /// The last settings metadata asked for.
    last: Option<Settings>,
    /// The journal said a switch was under way when we started.
    interrupted: bool,
    logged: HashSet<String>,
    ca_due: Option<tokio::time::Instant>,
    cache_fill: Option<tokio::task::JoinHandle<()>>,
    abort_after: Option<usize>,
    edits: usize,
    /// The last switch found OS Login on and the package missing: each apply looks again.
    package_missing: bool,
}

impl OsLogin {
    pub fn new(config: &Config, client: Client, paths: Paths) -> OsLogin {
        let mut warnings = Vec::new();
        let cfg = OsLoginConfig::from_config(config, &mut warnings);
        for w in warnings {
            warn!("configuration: {w}");
        }
        let (journal, problem) = Journal::load(&paths.journal);
        if let Some(p) = problem {
            warn!("OS Login journal: {p}");
        }
        let interrupted = journal.pending.is_some();
        if let Some(p) = journal.pending {
            warn!(
                OSLOGIN = p.enabled,
                "an OS Login switch was interrupted (crash or power loss); finishing it"
            );
        }
        let abort_after = std::env::var(ABORT_AFTER_EDITS_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        OsLogin {
            paths,
            cfg,
            client,
            journal,
            converged: None,
            last: None,
            interrupted,
            logged: HashSet::new(),
            ca_due: None,
            cache_fill: None,
            abort_after,
            edits: 0,
            package_missing: false,
        }
    }

    /// Logs `msg` once per process (per key).
    fn once(&mut self, key: String, msg: impl FnOnce()) {
        if self.logged.insert(key) {
            msg();
        }
    }

    /// Brings the host in line with `settings` (from a new metadata snapshot); returns a status
    /// line. Nothing is done when the settings are those of the last finished switch, except
    /// refreshing the trusted CA.
    pub async fn apply(&mut self, settings: Settings) -> String {
        let s = settings.effective();
        self.last = Some(s);
        let installed_since = self.package_missing && self.paths.authorized_keys.is_file();
        if self.converged == Some(s) && !self.interrupted && !installed_since {
            if self.ca_due.is_some() {
                self.refresh_ca().await;
            }
            return self.status(s);
        }
        self.converge(s).await
    }

    /// Resolves when the switch has its own work: finishing an interrupted switch before any
    /// metadata arrived, or refreshing the trusted CA. Cancel-safe.
    pub async fn wakeup(&self) {
        if self.interrupted && self.last.is_none() {
            return;
        }
        match self.ca_due {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    pub async fn on_wakeup(&mut self) -> Option<String> {
        if self.interrupted && self.last.is_none() {
            // The metadata server may be down; the journal knows where the switch was going.
            let target = self.journal.pending.unwrap_or_default();
            return Some(self.converge(target).await);
        }
        if self
            .ca_due
            .is_some_and(|t| t <= tokio::time::Instant::now())
        {
            self.refresh_ca().await;
        }
        None
    }

    /// A new configuration (SIGHUP): applied at once to the last settings.
    pub async fn reload(&mut self, config: &Config) {
        let mut warnings = Vec::new();
        self.cfg = OsLoginConfig::from_config(config, &mut warnings);
        for w in warnings {
            warn!("configuration: {w}");
        }
        self.logged.clear();
        self.converged = None;
        if let Some(s) = self.last {
            self.converge(s).await;
        }
    }

    fn status(&self, s: Settings) -> String {
        let on = s.enabled;
        let what = match (on, self.cfg.manage_config) {
            (false, _) => "off",
            (true, false) => "on (configuration left to configuration management)",
            (true, true) if self.package_missing => {
                "on, but google-compute-engine-oslogin is not installed"
            }
            (true, true) => "on",
        };
        format!("OS Login {what}")
    }

    fn log_notes(&mut self, plan: &Plan) {
        for note in [
            Note::PackageMissing,
            Note::SecurityKeyCommandMissing,
            Note::PrincipalsCommandMissing,
            Note::PamAccountMissing,
        ] {
            let key = format!("note:{note:?}");
            if !plan.notes.contains(&note) {
                // Said again if it comes back.
                self.logged.remove(&key);
                continue;
            }
            let p = self.paths.clone();
            self.once(key, || match note {
                Note::PackageMissing => error!(
                    "OS Login is enabled but Google's OS Login package is not installed \
                     ({} missing): install google-compute-engine-oslogin; until then OS Login \
                     users cannot log in",
                    p.authorized_keys.display()
                ),
                Note::SecurityKeyCommandMissing => warn!(
                    "enable-oslogin-sk is on but {} is missing; using {}",
                    p.authorized_keys_sk.display(),
                    p.authorized_keys.display()
                ),
                Note::PrincipalsCommandMissing => warn!(
                    "enable-oslogin-certificates is on but {} is missing (older \
                     google-compute-engine-oslogin): keys keep working and a certificate from \
                     the trusted CA is accepted when it names the user as a principal",
                    p.authorized_principals.display()
                ),
                Note::PamAccountMissing => warn!(
                    "pam_oslogin_admin.so is missing or has no account management (see \
                     guest-oslogin #123): its PAM line is left out, so adminLogin users get \
                     no sudo from PAM"
                ),
            });
        }
    }

    /// The steps of a switch to `plan`, in order.
    fn steps(&self, plan: &Plan) -> Vec<Step> {
        let p = &self.paths;
        if plan.on {
            let mut v = vec![
                Step::EnsureDir(p.sudoers_dir.clone()),
                Step::EnsureDir(p.users_dir.clone()),
                Step::CreateInclude,
                Step::Edit(File::Nsswitch),
                Step::Edit(File::Pam),
                Step::Edit(File::GroupConf),
                Step::TrustedCa,
                Step::Edit(File::Sshd),
            ];
            if !plan.trusted_ca && self.journal.created.contains(&p.trusted_ca) {
                v.push(Step::RemoveCreated(p.trusted_ca.clone()));
            }
            v
        } else {
            let mut v = vec![
                Step::Edit(File::Sshd),
                Step::Edit(File::Pam),
                Step::Edit(File::GroupConf),
                Step::Edit(File::Nsswitch),
                Step::RemoveInclude,
                Step::RemoveDir(p.sudoers_dir.clone()),
                Step::RemoveDir(p.users_dir.clone()),
            ];
            for f in std::iter::once(&p.trusted_ca).chain(&p.nss_caches) {
                if self.journal.created.contains(f) {
                    v.push(Step::RemoveCreated(f.clone()));
                }
            }
            v
        }
    }

    fn path_of(&self, f: File) -> &PathBuf {
        match f {
            File::Sshd => &self.paths.sshd_config,
            File::Nsswitch => &self.paths.nsswitch,
            File::Pam => &self.paths.pam_sshd,
            File::GroupConf => &self.paths.group_conf,
        }
    }

    /// Runs (or with `dry_run` only checks) one step; `Ok(true)` when it changes something.
    /// Paths a real run is about to create are added to `creates`.
    async fn step(
        &mut self,
        step: &Step,
        plan: &Plan,
        dry_run: bool,
        creates: &mut Vec<PathBuf>,
    ) -> Result<bool, HostError> {
        match step {
            Step::Edit(f) => {
                let path = self.path_of(*f).clone();
                match f {
                    File::Sshd => {
                        let want = plan.sshd.clone();
                        host::edit_file(&path, dry_run, |t| edit::sshd_config(t, want.as_ref()))
                    }
                    File::Nsswitch => {
                        host::edit_file(&path, dry_run, |t| edit::nsswitch(t, plan.nsswitch))
                    }
                    File::Pam => {
                        let want = plan.pam;
                        host::edit_file(&path, dry_run, |t| edit::pam_sshd(t, want.as_ref()))
                    }
                    File::GroupConf => {
                        host::edit_file(&path, dry_run, |t| edit::group_conf(t, plan.group_conf))
                    }
                }
            }
            Step::EnsureDir(d) => {
                let meta = std::fs::symlink_metadata(d).ok();
                let ok = meta.as_ref().is_some_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.is_dir() && m.permissions().mode() & 0o7777 == 0o750
                });
                if ok {
                    return Ok(false);
                }
                if meta.is_none() {
                    creates.push(d.clone());
                }
                if !dry_run {
                    host::ensure_dir(d, 0o750)?;
                }
                Ok(true)
            }
            Step::RemoveDir(d) => {
                if !self.journal.created.contains(d) {
                    return Ok(false);
                }
                if dry_run {
                    return Ok(host::kind_of(d)?.is_some());
                }
                let removed = host::remove_dir(d)?;
                self.journal.created.remove(d);
                Ok(removed)
            }
            Step::CreateInclude => {
                let path = self.paths.sudoers_include.clone();
                match host::read_text(&path)? {
                    Some(t) if t == SUDOERS_INCLUDE => Ok(false),
                    Some(_) => {
                        self.once(format!("include:{}", path.display()), || {
                            warn!(FILE = %path.display(), "{} exists with other content; leaving it as it is", path.display())
                        });
                        Ok(false)
                    }
                    None => {
                        creates.push(path.clone());
                        if !dry_run {
                            host::write_file(&path, SUDOERS_INCLUDE.as_bytes(), 0o440)?;
                        }
                        Ok(true)
                    }
                }
            }
            Step::RemoveInclude => {
                let path = self.paths.sudoers_include.clone();
                // Exactly the OS Login include, whoever wrote it (Google's agent writes the
                // same line): with OS Login off it would only keep stale grants alive.
                if host::read_text(&path)?.as_deref() != Some(SUDOERS_INCLUDE) {
                    return Ok(false);
                }
                if !dry_run {
                    host::remove_file(&path)?;
                    self.journal.created.remove(&path);
                }
                Ok(true)
            }
            Step::RemoveCreated(path) => {
                if dry_run {
                    return Ok(host::kind_of(path)?.is_some());
                }
                let removed = host::remove_file(path)?;
                self.journal.created.remove(path);
                Ok(removed)
            }
            Step::TrustedCa => {
                if dry_run || !plan.trusted_ca {
                    // Fetched and written in the real run only (it needs the server).
                    return Ok(false);
                }
                self.sync_trusted_ca().await
            }
        }
    }

    /// Fetches `oslogin/certificates` and writes the CA file if it changed. A failure keeps the
    /// last good file.
    async fn sync_trusted_ca(&mut self) -> Result<bool, HostError> {
        self.ca_due = Some(tokio::time::Instant::now() + self.cfg.ca_refresh);
        let answer = match self.client.get_text("oslogin/certificates").await {
            Ok(t) => t,
            Err(e) => {
                self.once("ca-fetch".into(), || {
                    warn!("oslogin/certificates: {e}; keeping the current trusted CA file")
                });
                return Ok(false);
            }
        };
        let text = match certs::trusted_ca_text(&answer) {
            Ok(t) => t,
            Err(e) => {
                self.once(format!("ca-bad:{e}"), || {
                    warn!("oslogin/certificates: {e}; keeping the current trusted CA file")
                });
                return Ok(false);
            }
        };
        self.logged.remove("ca-fetch");
        let path = self.paths.trusted_ca.clone();
        let current = host::read_text(&path)?;
        if current.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        if current.is_none() && self.journal.created.insert(path.clone()) {
            self.save_journal();
        }
        host::write_file(&path, text.as_bytes(), 0o644)?;
        info!(FILE = %path.display(), "trusted user CA keys updated ({} keys)", text.lines().count());
        Ok(true)
    }

    async fn refresh_ca(&mut self) {
        if let Err(e) = self.sync_trusted_ca().await {
            warn!("trusted CA file: {e}");
        }
    }

    fn save_journal(&mut self) {
        if let Err(e) = self.journal.save(&self.paths.journal) {
            self.once(format!("journal:{e}"), || {
                error!("OS Login journal: {e}; a crash now could leave a switch half done")
            });
        }
    }

    fn count_edit(&mut self) {
        self.edits += 1;
        if self.abort_after.is_some_and(|n| self.edits >= n) {
            error!(
                "{ABORT_AFTER_EDITS_ENV}: aborting after {} edits",
                self.edits
            );
            std::process::abort();
        }
    }

    async fn converge(&mut self, s: Settings) -> String {
        let probe = host::probe(&self.paths);
        let plan = plan(s, &probe, &self.paths);
        self.log_notes(&plan);
        self.package_missing = plan.notes.contains(&Note::PackageMissing);
        if !self.cfg.manage_config {
            self.once("stand-aside".into(), || {
                info!(
                    "[OSLogin] manage_config = false: sshd_config, nsswitch.conf, PAM, group.conf \
                     and the sudoers include are left to configuration management"
                )
            });
            if plan.trusted_ca {
                self.refresh_ca().await;
            } else {
                self.ca_due = None;
            }
            if plan.on && self.converged.is_none_or(|c| !c.enabled) {
                self.fill_nss_cache();
            }
            // An interrupted switch is the admin's to finish now: forget it for good.
            self.interrupted = false;
            if self.journal.pending.take().is_some() {
                self.save_journal();
            }
            self.converged = Some(s);
            return self.status(s);
        }
        self.logged.remove("stand-aside");

        let steps = self.steps(&plan);
        let mut creates = Vec::new();
        let mut pending = false;
        for step in &steps {
            match self.step(step, &plan, true, &mut creates).await {
                Ok(true) => pending = true,
                Ok(false) => {}
                // Reported by the real run.
                Err(_) => pending = true,
            }
        }
        let first_on = plan.on && self.converged.is_none_or(|c| !c.enabled);
        if !pending && !self.interrupted {
            if plan.trusted_ca {
                self.refresh_ca().await;
            } else {
                self.ca_due = None;
            }
            if first_on {
                self.fill_nss_cache();
            }
            self.converged = Some(s);
            self.journal.applied = Some(s);
            return self.status(s);
        }

        if !plan.on {
            self.stop_nss_cache_fill().await;
        }

        // Intent first, with everything we are about to create.
        self.journal.pending = Some(s);
        self.journal.created.extend(creates);
        self.save_journal();
        info!(
            OSLOGIN = plan.on,
            MESSAGE_ID = MSGID_SWITCHED,
            "switching the host's OS Login configuration {}",
            if plan.on { "on" } else { "off" }
        );

        let mut retry = false;
        let mut changed_sshd = false;
        let mut changed_nss = false;
        for step in &steps {
            let mut ignored = Vec::new();
            match self.step(step, &plan, false, &mut ignored).await {
                Ok(true) => {
                    debug!("OS Login step done: {step:?}");
                    changed_sshd |= *step == Step::Edit(File::Sshd);
                    changed_nss |= *step == Step::Edit(File::Nsswitch);
                    self.count_edit();
                }
                Ok(false) => {}
                Err(e) if e.is_permanent() => {
                    let msg = e.to_string();
                    self.once(format!("step:{msg}"), || warn!("OS Login: {msg}"));
                }
                Err(e) => {
                    retry = true;
                    error!("OS Login: {e}");
                }
            }
        }
        if !plan.trusted_ca {
            self.ca_due = None;
        }
        if changed_sshd || self.interrupted {
            // Under systemd, until this daemon is ready (and while it reloads), ssh.service's
            // reload job waits for our job (we are ordered Before=ssh.service): waiting for
            // sshd then would stall.
            let wait = gce_agent::notify::settled() || !host::systemd_running(&self.paths);
            match host::reload_sshd(&self.paths, wait).await {
                Ok(what) => info!("sshd reloaded: {what}"),
                Err(e) => {
                    retry = true;
                    error!("reloading sshd: {e}");
                }
            }
        }
        if changed_nss || self.interrupted {
            match host::restart_name_caches(&self.paths).await {
                Ok(what) => debug!("name caches: {what}"),
                Err(e) => warn!("restarting nscd/unscd: {e}"),
            }
        }
        self.journal.pending = None;
        self.journal.applied = Some(s);
        self.save_journal();
        self.interrupted = false;
        if plan.on {
            self.fill_nss_cache();
        }
        info!(
            OSLOGIN = plan.on,
            MESSAGE_ID = MSGID_SWITCHED,
            "OS Login is {} on this host",
            if plan.on { "configured" } else { "off" }
        );
        self.converged = (!retry).then_some(s);
        self.status(s)
    }

    /// Lets a running cache fill finish (briefly) before OS Login goes off, so it cannot put
    /// a cache file back after the switch removed it.
    async fn stop_nss_cache_fill(&mut self) {
        let Some(mut h) = self.cache_fill.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(10), &mut h)
            .await
            .is_err()
        {
            warn!("the OS Login NSS cache fill is still running; stopping it");
            h.abort();
        }
    }

    /// Runs `google_oslogin_nss_cache` in the background (Google's agent does the same: it can
    /// take a while and must not hold up the switch). The cache files it creates are recorded
    /// first, so turning OS Login off removes them.
    fn fill_nss_cache(&mut self) {
        if self.cache_fill.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let program = self.paths.nss_cache_command.clone();
        if !program.is_file() {
            return;
        }
        let absent: Vec<PathBuf> = self
            .paths
            .nss_caches
            .iter()
            .filter(|p| matches!(host::kind_of(p), Ok(None)))
            .cloned()
            .collect();
        if !absent.is_empty() && self.cfg.manage_config {
            self.journal.created.extend(absent);
            self.save_journal();
        }
        let argv = vec![program.display().to_string()];
        self.cache_fill = Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            match cmd::run(&argv, &RunOpts::with_timeout(NSS_CACHE_TIMEOUT)).await {
                Ok(_) => debug!("OS Login NSS cache filled in {:?}", started.elapsed()),
                Err(e) => warn!("filling the OS Login NSS cache: {e}"),
            }
        }));
    }
}

impl Drop for OsLogin {
    fn drop(&mut self) {
        if let Some(h) = self.cache_fill.take() {
            h.abort();
        }
    }
}
