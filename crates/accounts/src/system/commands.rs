//! Every program the accounts daemon runs: `useradd`, `usermod`, `gpasswd`, `userdel`,
//! `groupadd` (from the `[Accounts]` templates of instance_configs.cfg, argv only, never a shell)
//! and `ssh -V`; plus the one file that goes with the sudoers group, `google_sudoers`.
//! Each returns a typed error; the caller decides what to log and what to retry.

use crate::decide::authorized_keys::ExpiryOption;
use gce_agent::cmd::{self, CmdError, RunOpts};
use gce_agent::config;
use gce_agent::fs::{self as afs, FsError, WriteOpts};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Expands `template` now and returns the run as an owned future (it can be spawned).
fn run_template(
    template: &str,
    vars: &[(&str, &str)],
) -> impl Future<Output = Result<(), CmdError>> + Send + 'static + use<> {
    let argv = config::expand_command(template, vars);
    async move {
        cmd::run(&argv, &RunOpts::with_timeout(CMD_TIMEOUT))
            .await
            .map(|_| ())
    }
}

/// `useradd_cmd` for `user` with its supplementary `groups` (comma-separated), as an owned future
/// so several can run at once.
pub fn useradd(
    cfg: &config::Accounts,
    user: &str,
    groups: &str,
) -> impl Future<Output = Result<(), CmdError>> + Send + 'static + use<> {
    run_template(&cfg.useradd_cmd, &[("user", user), ("groups", groups)])
}

/// Whether `useradd_cmd` already puts the new user in its groups (no separate `usermod`).
pub fn useradd_sets_groups(cfg: &config::Accounts) -> bool {
    cfg.useradd_cmd.contains("{groups}")
}

/// `usermod_cmd`: a new user's supplementary groups, when `useradd_cmd` does not set them.
pub async fn set_groups(cfg: &config::Accounts, user: &str, groups: &str) -> Result<(), CmdError> {
    run_template(&cfg.usermod_cmd, &[("user", user), ("groups", groups)]).await
}

/// `gpasswd_add_cmd`: `user` joins `group`.
pub async fn add_to_group(cfg: &config::Accounts, user: &str, group: &str) -> Result<(), CmdError> {
    run_template(&cfg.gpasswd_add_cmd, &[("user", user), ("group", group)]).await
}

/// `gpasswd_remove_cmd`: `user` leaves `group`.
pub async fn remove_from_group(
    cfg: &config::Accounts,
    user: &str,
    group: &str,
) -> Result<(), CmdError> {
    run_template(&cfg.gpasswd_remove_cmd, &[("user", user), ("group", group)]).await
}

/// `userdel_cmd` (`userdel -r` by default).
pub async fn userdel(cfg: &config::Accounts, user: &str) -> Result<(), CmdError> {
    run_template(&cfg.userdel_cmd, &[("user", user)]).await
}

/// `groupadd_cmd`.
pub async fn groupadd(cfg: &config::Accounts, group: &str) -> Result<(), CmdError> {
    run_template(&cfg.groupadd_cmd, &[("group", group)]).await
}

/// `%group ALL=(ALL:ALL) NOPASSWD:ALL` in `path` (0440, root), written only when different.
/// Returns false without writing when the sudoers.d directory does not exist (no sudo here).
pub fn install_sudoers_rule(path: &Path, group: &str) -> Result<bool, FsError> {
    let Some(dir) = path.parent() else {
        return Ok(false);
    };
    if !dir.is_dir() {
        return Ok(false);
    }
    let want = format!("%{group} ALL=(ALL:ALL) NOPASSWD:ALL\n");
    let have = afs::read_nofollow(path, 4096).ok().flatten();
    if have.as_deref() != Some(want.as_bytes()) {
        afs::write_atomic(path, want.as_bytes(), &WriteOpts::new(0o440).owner(0, 0))?;
    }
    Ok(true)
}

/// Which `expiry-time=` form the installed OpenSSH reads: with `Z` from 9.1, local time from 7.7
/// (when the option appeared), none before (an unknown option would void the whole key line).
pub async fn openssh_expiry_option() -> Result<ExpiryOption, CmdError> {
    let argv = vec!["ssh".to_string(), "-V".to_string()];
    let o = cmd::run_status(&argv, &RunOpts::with_timeout(Duration::from_secs(5))).await?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(ExpiryOption::for_openssh(
        &out,
        *chrono::Local::now().offset(),
    ))
}
