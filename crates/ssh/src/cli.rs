//! The command line: `gce-ssh [USER@]INSTANCE [--zone Z] [--project P] [-- CMD…]`, shaped like
//! `gcloud compute ssh`, plus the flags scripts and tests already use (`--endpoint`, `--user`,
//! `--instance`, `--host`, `--port`, `--ttl`, `--timings`, `--push-only`), and the OS Login
//! switches (`--oslogin`, `--no-oslogin`, `--account`).

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

pub const COMPUTE_API: &str = "https://compute.googleapis.com";

/// Why a metadata-key push cannot go ahead without a user.
pub const NO_USER: &str = "no user name: give USER@INSTANCE or --user";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gce-ssh",
    version,
    about = "Push a short-lived SSH key to a GCE instance and log in",
    after_help = "Credentials (real API), first found wins: --token/GCE_ACCESS_TOKEN, \
GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata server \
(on a GCE VM), `gcloud auth print-access-token`. Project and zone: flags, then \
CLOUDSDK_CORE_PROJECT/CLOUDSDK_COMPUTE_ZONE, then gcloud's active configuration. \
OS Login (instance or project metadata enable-oslogin, or --oslogin): the key is imported into \
the account's OS Login profile and the login is as its POSIX user; the account is --account, \
else the one the credentials belong to (a service account key's client_email, an authorized \
user's ID token, the VM's service account, gcloud's account), else Google's token info."
)]
pub struct Args {
    /// `[USER@]INSTANCE`: the instance name (or id), optionally with the remote user.
    pub target: Option<String>,
    /// Compute API root: the real API, or the emulator's `http://ADDR`. Env: GCE_SSH_ENDPOINT.
    #[arg(long, env = "GCE_SSH_ENDPOINT", default_value = COMPUTE_API)]
    pub endpoint: String,
    /// Project id (default: CLOUDSDK_CORE_PROJECT, then gcloud's configuration; the emulator's
    /// own project when the endpoint is the emulator).
    #[arg(long)]
    pub project: Option<String>,
    /// Zone (default: CLOUDSDK_COMPUTE_ZONE, then gcloud's configuration; the emulator's own).
    #[arg(long)]
    pub zone: Option<String>,
    /// Instance name, as an alternative to the positional INSTANCE.
    #[arg(long)]
    pub instance: Option<String>,
    /// Lifetime of the key: `90s`, `5m`, `1h` or plain seconds.
    #[arg(long, default_value = "5m", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Remote user name (default: USER@ of the target, else $USER).
    #[arg(long)]
    pub user: Option<String>,
    /// Address to ssh to (default: the instance's external IP; 127.0.0.1 for the emulator).
    #[arg(long, conflicts_with = "internal_ip")]
    pub host: Option<String>,
    /// ssh to the instance's internal IP (from a machine inside its VPC).
    #[arg(long)]
    pub internal_ip: bool,
    /// sshd port.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// Extra option for ssh (repeatable), e.g. `--ssh-flag=-v`.
    #[arg(long = "ssh-flag", allow_hyphen_values = true)]
    pub ssh_flags: Vec<String>,
    /// How long to wait for the guest to confirm the key before trying ssh anyway.
    #[arg(long, default_value = "60s", value_parser = parse_ttl)]
    pub ready_timeout: Duration,
    /// Push the key and wait until it works, but do not run ssh: print the key's path on stdout
    /// (the key is kept) and the ssh options to reuse on stderr.
    #[arg(long)]
    pub push_only: bool,
    /// Print the time each step took on stderr.
    #[arg(long)]
    pub timings: bool,
    /// Bearer token for the Compute API. Env: GCE_ACCESS_TOKEN.
    #[arg(long, env = "GCE_ACCESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust the CA certificates in this PEM file (repeatable).
    #[arg(long = "ca-file")]
    pub ca_files: Vec<PathBuf>,
    /// Known-hosts file for pinned host keys (default: ~/.ssh/google_compute_known_hosts, as
    /// gcloud; against the emulator, a file that lives only as long as the key).
    #[arg(long, env = "GCE_SSH_KNOWN_HOSTS")]
    pub known_hosts_file: Option<PathBuf>,
    /// Use OS Login whatever the metadata says: import the key through the OS Login API and log
    /// in as the profile's POSIX user.
    #[arg(long, conflicts_with = "no_oslogin")]
    pub oslogin: bool,
    /// Push the key to instance metadata even where OS Login is on.
    #[arg(long)]
    pub no_oslogin: bool,
    /// Import the ephemeral key although the instance accepts only security keys
    /// (enable-oslogin-sk): a guest without google_authorized_keys_sk falls back to ordinary keys.
    #[arg(long)]
    pub ignore_oslogin_sk: bool,
    /// The OS Login account (an email) whose profile receives the key (default: the account of
    /// the credentials). Env: GCE_SSH_ACCOUNT.
    #[arg(long, env = "GCE_SSH_ACCOUNT")]
    pub account: Option<String>,
    /// OS Login API root (default: https://oslogin.googleapis.com; the emulator's own endpoint
    /// when --endpoint is the emulator). Env: GCE_SSH_OSLOGIN_ENDPOINT.
    #[arg(long, env = "GCE_SSH_OSLOGIN_ENDPOINT")]
    pub oslogin_endpoint: Option<String>,
    /// Google's token info endpoint, asked whose a token is when nothing else says.
    #[arg(long, hide = true, default_value = crate::auth::GOOGLE_TOKENINFO_URI)]
    pub tokeninfo_url: String,
    /// Remote command, as gcloud's `--command` (same as after `--`).
    #[arg(long, conflicts_with = "command")]
    pub remote_command: Option<String>,
    /// The remote command (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl Args {
    /// The endpoint is the emulator (plain HTTP) rather than the real API.
    pub fn is_emulator(&self) -> bool {
        self.endpoint.starts_with("http://")
    }

    /// `--oslogin` / `--no-oslogin`, or `None` to follow the metadata.
    pub fn oslogin_override(&self) -> Option<bool> {
        match (self.oslogin, self.no_oslogin) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// The OS Login API root.
    pub fn oslogin_api(&self) -> String {
        match &self.oslogin_endpoint {
            Some(e) => e.clone(),
            None if self.is_emulator() => self.endpoint.clone(),
            None => crate::oslogin::OSLOGIN_API.to_string(),
        }
    }

    /// Whether a remote user was named (`USER@` or `--user`), rather than taken from `$USER`.
    pub fn user_given(&self) -> bool {
        self.user.is_some() || self.target.as_deref().is_some_and(|t| t.contains('@'))
    }

    /// `(user, instance)` from the positional target and the flags; they must agree. No user at
    /// all is `None` here: OS Login needs none (its profile names the user), metadata keys do
    /// ([`NO_USER`]).
    pub fn user_and_instance(
        &self,
        env_user: Option<String>,
    ) -> Result<(Option<String>, Option<String>), String> {
        let (t_user, t_instance) = match &self.target {
            Some(t) => match t.split_once('@') {
                Some((u, i)) => (Some(u.to_string()), Some(i.to_string())),
                None => (None, Some(t.clone())),
            },
            None => (None, None),
        };
        let user = match (t_user, &self.user) {
            (Some(a), Some(b)) if &a != b => {
                return Err(format!("user {a:?} in the target and --user {b:?} differ"));
            }
            (Some(a), _) => Some(a),
            (None, b) => b.clone(),
        };
        let user = user.or(env_user.filter(|u| !u.is_empty()));
        if let Some(u) = &user
            && (u.is_empty() || u.contains(|c: char| c == ':' || c.is_whitespace()))
        {
            return Err(format!("bad user name {u:?}"));
        }
        let instance = match (t_instance, &self.instance) {
            (Some(a), Some(b)) if &a != b => {
                return Err(format!("instance {a:?} and --instance {b:?} differ"));
            }
            (Some(a), _) => Some(a),
            (None, b) => b.clone(),
        };
        if instance.as_deref() == Some("") {
            return Err("empty instance name".into());
        }
        Ok((user, instance))
    }

    /// The remote command words.
    pub fn remote(&self) -> Vec<String> {
        match &self.remote_command {
            Some(c) => vec![c.clone()],
            None => self.command.clone(),
        }
    }
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 90s, 5m, 1h"))?;
    if n == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("gce-ssh").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn target_flags_and_environment_combine_like_gcloud() {
        // (argv, $USER) -> Ok((user, instance)) or Err(part of the message)
        type Row<'a> = (
            &'a [&'a str],
            Option<&'a str>,
            Result<(Option<&'a str>, Option<&'a str>), &'a str>,
        );
        let rows: [Row; 9] = [
            (&["vm0"], Some("me"), Ok((Some("me"), Some("vm0")))),
            (&["alice@vm0"], Some("me"), Ok((Some("alice"), Some("vm0")))),
            (
                &["alice@vm0", "--user", "alice"],
                None,
                Ok((Some("alice"), Some("vm0"))),
            ),
            (&["alice@vm0", "--user", "bob"], None, Err("differ")),
            (&["--user", "frank"], Some("me"), Ok((Some("frank"), None))),
            (
                &["--instance", "vm1", "--user", "u"],
                None,
                Ok((Some("u"), Some("vm1"))),
            ),
            (&["vm0", "--instance", "vm1"], Some("me"), Err("differ")),
            // No user anywhere: decided later (OS Login needs none).
            (&["vm0"], None, Ok((None, Some("vm0")))),
            (&["a:b@vm0"], None, Err("bad user name")),
        ];
        for (argv, env_user, want) in rows {
            let got = parse(argv).user_and_instance(env_user.map(str::to_string));
            match (got, want) {
                (Ok((u, i)), Ok((wu, wi))) => {
                    assert_eq!((u.as_deref(), i.as_deref()), (wu, wi), "{argv:?}")
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{argv:?}: {e}"),
                (got, want) => panic!("{argv:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_flag_scripts_use_still_parses() {
        let a = parse(&[
            "--endpoint",
            "http://127.0.0.1:8080",
            "--user",
            "tester",
            "--host",
            "127.0.0.1",
            "--port",
            "2222",
            "--ttl",
            "40s",
            "--timings",
            "--push-only",
            "--instance",
            "vm0",
            "--",
            "id -un && echo ok",
        ]);
        assert!(a.is_emulator() && a.push_only && a.timings);
        assert_eq!(a.port, 2222);
        assert_eq!(a.ttl, Duration::from_secs(40));
        assert_eq!(a.remote(), ["id -un && echo ok"]);
        let real = parse(&[
            "alice@vm0",
            "--zone",
            "us-central1-a",
            "--project",
            "p",
            "--",
            "uname",
            "-a",
        ]);
        assert_eq!(real.endpoint, COMPUTE_API);
        assert!(!real.is_emulator());
        assert_eq!(real.remote(), ["uname", "-a"]);
        assert_eq!(real.oslogin_api(), "https://oslogin.googleapis.com");
        assert!(real.user_given() && !parse(&["vm0"]).user_given());
        assert!(Args::try_parse_from(["gce-ssh", "vm0", "--host", "h", "--internal-ip"]).is_err());
    }

    #[test]
    fn oslogin_flags_override_the_metadata_and_exclude_each_other() {
        assert_eq!(parse(&["vm0"]).oslogin_override(), None);
        assert_eq!(parse(&["vm0", "--oslogin"]).oslogin_override(), Some(true));
        assert_eq!(
            parse(&["vm0", "--no-oslogin"]).oslogin_override(),
            Some(false)
        );
        assert!(Args::try_parse_from(["gce-ssh", "vm0", "--oslogin", "--no-oslogin"]).is_err());
        let emu = parse(&["--endpoint", "http://127.0.0.1:8080", "--account", "a@b.c"]);
        assert_eq!(emu.oslogin_api(), "http://127.0.0.1:8080");
        assert_eq!(emu.account.as_deref(), Some("a@b.c"));
        let own = parse(&["vm0", "--oslogin-endpoint", "https://127.0.0.1:9/"]);
        assert_eq!(own.oslogin_api(), "https://127.0.0.1:9/");
    }

    #[test]
    fn durations_accept_seconds_minutes_hours() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7"), Ok(Duration::from_secs(7)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("x").is_err());
    }
}
