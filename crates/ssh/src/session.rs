//! One `gce-ssh` run: find credentials and the instance, read its published host keys while an
//! ephemeral key is generated, refuse a changed host key before touching anything, push the key,
//! pin the host keys, wait until the guest confirms the key, then run `ssh` with strict host-key
//! checking (or trust on first use, with a warning, when the guest publishes no host keys).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::auth;
use crate::cli::Args;
use crate::compute::{Compute, Instance, InstanceInfo};
use crate::gcloud;
use crate::hostkeys::{self, HostKey};
use crate::http::{Http, Trust};
use crate::oslogin::{self, Detected, OsLoginApi};
use crate::push::{KeyPusher, MetadataPusher, OsLoginPusher, PushRequest, Usable};
use crate::tool;

/// Prints the time each step took (`--timings`).
struct Timer {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Timer {
    fn step(&mut self, what: &str) {
        if self.on {
            let now = Instant::now();
            eprintln!(
                "gce-ssh: {what}: {:.1} ms (total {:.1} ms)",
                (now - self.last).as_secs_f64() * 1e3,
                (now - self.start).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}

/// A private 0700 directory for the ephemeral key, removed on drop unless kept.
struct KeyDir {
    path: PathBuf,
    keep: bool,
}

impl KeyDir {
    fn create() -> anyhow::Result<KeyDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let template = base.join("gce-ssh-XXXXXX");
        let path = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("cannot create a key directory under {}", base.display()))?;
        Ok(KeyDir { path, keep: false })
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The ephemeral key: private key path, public key line, fingerprint.
struct Key {
    path: PathBuf,
    public: String,
    fingerprint: String,
}

fn generate_key(dir: &Path) -> anyhow::Result<Key> {
    let path = dir.join("id_ed25519");
    tool::run(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                oslogin::KEY_COMMENT,
                "-f",
            ])
            .arg(&path),
        Duration::from_secs(30),
    )?;
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .context("reading the new public key")?
        .trim()
        .to_string();
    let mut f = public.split_whitespace();
    let fingerprint = HostKey {
        kind: f.next().unwrap_or_default().to_string(),
        blob: f.next().unwrap_or_default().to_string(),
    }
    .fingerprint();
    Ok(Key {
        path,
        public,
        fingerprint,
    })
}

/// Asks the emulator's own metadata API (it emulates one instance) for what was not given.
fn emulator_value(http: &Http, endpoint: &str, path: &str) -> anyhow::Result<String> {
    let url = format!(
        "{}/computeMetadata/v1/{path}",
        endpoint.trim_end_matches('/')
    );
    let resp = http
        .get(&url, &[("Metadata-Flavor", "Google")])
        .with_context(|| {
            format!("--project/--zone/INSTANCE not given and {path} could not be read")
        })?;
    if resp.status != 200 {
        bail!(
            "--project/--zone/INSTANCE not given and {url} answered {}",
            resp.status
        );
    }
    Ok(resp.body.trim().to_string())
}

fn resolve_instance(
    args: &Args,
    http: &Http,
    name: Option<String>,
    env: &gcloud::Env,
) -> anyhow::Result<Instance> {
    if args.is_emulator() {
        let project = match &args.project {
            Some(p) => p.clone(),
            None => emulator_value(http, &args.endpoint, "project/project-id")?,
        };
        let zone = match &args.zone {
            Some(z) => z.clone(),
            None => gcloud::last_segment(&emulator_value(http, &args.endpoint, "instance/zone")?)
                .to_string(),
        };
        let name = match name {
            Some(n) => n,
            None => emulator_value(http, &args.endpoint, "instance/name")?,
        };
        return Ok(Instance {
            project,
            zone,
            name,
        });
    }
    let Some(name) = name else {
        bail!("no instance: give [USER@]INSTANCE (or --instance)");
    };
    let project = match &args.project {
        Some(p) => p.clone(),
        None => gcloud::project(env)
            .map(|f| f.value)
            .map_err(|tried| no_property("project", "--project", &tried))?,
    };
    let zone = match &args.zone {
        Some(z) => gcloud::last_segment(z).to_string(),
        None => gcloud::zone(env)
            .map(|f| f.value)
            .map_err(|tried| no_property("zone", "--zone", &tried))?,
    };
    Ok(Instance {
        project,
        zone,
        name,
    })
}

fn no_property(what: &str, flag: &str, tried: &[String]) -> anyhow::Error {
    let mut s = format!("no {what}; tried:\n  {flag}: not given");
    for t in tried {
        s.push_str("\n  ");
        s.push_str(t);
    }
    anyhow::anyhow!(s)
}

/// The address to ssh to: `--host`, else `--internal-ip`'s, else the external IP (the emulator:
/// this machine).
fn ssh_host(args: &Args, info: &InstanceInfo, instance: &Instance) -> anyhow::Result<String> {
    if let Some(h) = &args.host {
        return Ok(h.clone());
    }
    if args.internal_ip {
        return info
            .internal_ips
            .first()
            .cloned()
            .with_context(|| format!("instance {} has no internal IP address", instance.name));
    }
    if args.is_emulator() {
        return Ok("127.0.0.1".into());
    }
    info.external_ips.first().cloned().with_context(|| {
        format!(
            "instance {} in zone {} has no external IP address: use --internal-ip from inside its network, or --host",
            instance.name, instance.zone
        )
    })
}

/// Where host keys are pinned.
fn known_hosts_file(args: &Args, env: &gcloud::Env, key_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(f) = &args.known_hosts_file {
        return Ok(f.clone());
    }
    if args.is_emulator() {
        // Emulator instance ids are fixed test values that every new emulator and sshd reuse:
        // pinning them for good would make the next run look like an impersonation.
        return Ok(key_dir.join("known_hosts"));
    }
    hostkeys::default_file(env.home.as_deref())
        .context("HOME is not set: pass --known-hosts-file for pinned host keys")
}

/// The ssh options for the key and the pinned host keys; `batch` forbids prompts (off only where
/// OS Login asks for a second factor).
fn ssh_options(
    key: &Path,
    known_hosts: &Path,
    alias: &str,
    strict: bool,
    port: u16,
    batch: bool,
) -> Vec<String> {
    let mut v = vec!["-i".to_string(), key.display().to_string()];
    for o in [
        "IdentitiesOnly=yes".to_string(),
        format!("BatchMode={}", if batch { "yes" } else { "no" }),
        format!("HostKeyAlias={alias}"),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        format!(
            "StrictHostKeyChecking={}",
            if strict { "yes" } else { "accept-new" }
        ),
        "CheckHostIP=no".to_string(),
        "HashKnownHosts=no".to_string(),
        "LogLevel=ERROR".to_string(),
    ] {
        v.push("-o".into());
        v.push(o);
    }
    v.push("-p".into());
    v.push(port.to_string());
    v
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whose OS Login profile receives the key: `--account`, else the account the credentials
/// belong to, else Google's token info endpoint. `(email, where it came from)`.
fn oslogin_account(
    args: &Args,
    credentials: Option<&auth::AccessToken>,
    http: &Http,
) -> anyhow::Result<(String, String)> {
    if let Some(a) = args
        .account
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        return Ok((a.to_string(), "--account".into()));
    }
    let Some(creds) = credentials else {
        bail!(
            "OS Login needs the account whose profile receives the key: pass --account EMAIL \
             (the emulator takes no credentials to tell it)"
        );
    };
    if let Some(a) = &creds.account {
        return Ok((a.clone(), creds.source.clone()));
    }
    match auth::token_email(http, &args.tokeninfo_url, &creds.token) {
        Ok(a) => Ok((a, format!("token info for the token from {}", creds.source))),
        Err(e) => bail!(
            "OS Login needs the account whose profile receives the key, and the credentials \
             ({}) do not say: {e}; pass --account EMAIL",
            creds.source
        ),
    }
}

/// What to tell the user when sshd refuses the login.
fn refusal_hint(
    oslogin_on: bool,
    detected_on: bool,
    login_user: &str,
    email: Option<&str>,
) -> Option<String> {
    if oslogin_on {
        Some(format!(
            "sshd refused OS Login user {login_user} (account {}). The account needs \
             roles/compute.osLogin (roles/compute.osAdminLogin for sudo) on the instance or its \
             project, and the instance needs Google's OS Login package \
             (google-compute-engine-oslogin).",
            email.unwrap_or("?")
        ))
    } else if detected_on {
        Some(
            "sshd refused the key: OS Login is on for this instance, and its guest does not \
             accept keys from metadata; run without --no-oslogin."
                .to_string(),
        )
    } else {
        None
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut t = Timer {
        on: args.timings,
        start: Instant::now(),
        last: Instant::now(),
    };
    let (user, name) = args
        .user_and_instance(std::env::var("USER").ok())
        .map_err(anyhow::Error::msg)?;
    let env = gcloud::Env::from_process();
    let http = Http::new(
        Trust {
            ca_files: args.ca_files.clone(),
        },
        Duration::from_secs(30),
    );

    // Credentials: the real API needs a token; the emulator takes one only when given.
    let credentials = if args.is_emulator() {
        None
    } else {
        let sources = auth::Sources::from_process(args.token.clone(), &env);
        let tok = auth::access_token(&http, &sources)?;
        t.step(&format!("access token from {}", tok.source));
        Some(tok)
    };
    let token = match &credentials {
        Some(c) => Some(c.token.clone()),
        None => args.token.clone().filter(|t| !t.is_empty()),
    };
    let compute = Compute::new(&http, &args.endpoint, token.clone());
    let instance = resolve_instance(&args, &http, name, &env)?;
    let key_dir = KeyDir::create()?;

    // Everything that needs no answer from another is asked at once: the key is generated while
    // the instance, its host keys and the project's metadata (OS Login may be on there) are read.
    let (key, info, published, project_md) = std::thread::scope(|s| {
        let keygen = s.spawn(|| generate_key(&key_dir.path));
        let hostkeys = s.spawn(|| compute.guest_attributes(&instance, "hostkeys/"));
        let project = s.spawn(|| compute.get_project_metadata(&instance.project));
        let info = compute
            .get_instance(&instance)
            .context("reading the instance (instances.get)");
        let join = "a reading thread";
        let published = hostkeys
            .join()
            .expect(join)
            .context("reading the instance's host keys (getGuestAttributes hostkeys/)");
        let project = project.join().expect(join);
        let key = keygen.join().expect(join);
        (key, info, published, project)
    });
    let key = key?;
    let info = info?;
    let (published, skipped) = match published {
        Ok(Some(answer)) => hostkeys::from_guest_attributes(&answer),
        Ok(None) => (Vec::new(), Vec::new()),
        Err(e) => {
            eprintln!("gce-ssh: warning: {e:#}");
            (Vec::new(), Vec::new())
        }
    };
    for s in skipped {
        eprintln!("gce-ssh: warning: ignoring a published host key: {s}");
    }
    t.step(&format!(
        "key generated, instance {} (id {}) read, {} host key(s) published",
        info.name,
        info.id,
        published.len()
    ));

    // OS Login: the instance's metadata, else the project's, unless a flag decides.
    let project_md = match project_md {
        Ok(md) => Some(md),
        Err(e) => {
            if args.oslogin_override().is_none() && !Detected::instance_decides(&info.metadata) {
                eprintln!(
                    "gce-ssh: warning: cannot read project {}'s metadata, so whether it turns \
                     OS Login on is unknown; following the instance's metadata (use --oslogin \
                     if the project turns it on): {e}",
                    instance.project
                );
            }
            None
        }
    };
    let detected = Detected::from_metadata(&info.metadata, project_md.as_ref());
    let oslogin_on = args.oslogin_override().unwrap_or(detected.enabled);
    let account = if oslogin_on {
        let (email, from) = oslogin_account(&args, credentials.as_ref(), &http)?;
        t.step(&format!(
            "OS Login {}: account {email} (from {from})",
            match args.oslogin_override() {
                Some(true) => "forced by --oslogin",
                _ => "on in metadata",
            }
        ));
        if detected.security_key && !args.ignore_oslogin_sk {
            // Stop before importing anything: the guest's google_authorized_keys_sk offers sshd
            // only the profile's security keys, so an ephemeral key would be refused.
            anyhow::bail!(
                "instance {} accepts only security keys for OS Login (enable-oslogin-sk is on); \
                 gce-ssh's ephemeral key is not one and would be refused, so nothing was \
                 imported. Log in with ssh and a security key registered in the OS Login profile \
                 of {email}, or pass --ignore-oslogin-sk if the guest lacks \
                 google_authorized_keys_sk (it then accepts ordinary keys)",
                info.name
            );
        } else if detected.security_key {
            eprintln!(
                "gce-ssh: warning: enable-oslogin-sk is on; importing an ordinary key anyway \
                 (--ignore-oslogin-sk)"
            );
        }
        Some(email)
    } else {
        if detected.enabled {
            eprintln!(
                "gce-ssh: warning: OS Login is on for instance {} but --no-oslogin pushes the key \
                 to instance metadata, which its guest ignores",
                info.name
            );
        }
        None
    };

    // Pinning: decided before anything is pushed, so a refused host key changes nothing.
    let alias = hostkeys::alias(&info.id);
    let known_hosts = known_hosts_file(&args, &env, &key_dir.path)?;
    let known_text = hostkeys::read(&known_hosts)
        .with_context(|| format!("reading {}", known_hosts.display()))?;
    let pinned = hostkeys::pinned(&known_text, &alias);
    let plan = hostkeys::plan(&pinned, &published).map_err(|c| {
        anyhow::anyhow!(
            "REFUSED: the host key of instance {} (id {}) has changed.\n  \
             pinned in {}: {alias} {} {}\n  \
             published now: {} {}\n  \
             Someone may be impersonating the instance, or it was given new host keys. If you \
             know it was, remove the old entry with `ssh-keygen -R {alias} -f {}` and run gce-ssh again.",
            info.name,
            info.id,
            known_hosts.display(),
            c.pinned.kind,
            c.pinned.fingerprint(),
            c.published.kind,
            c.published.fingerprint(),
            known_hosts.display(),
        )
    })?;
    let host = ssh_host(&args, &info, &instance)?;

    let user = match (&user, &account) {
        (Some(u), _) => u.clone(),
        // OS Login names the user itself.
        (None, Some(_)) => String::new(),
        (None, None) => bail!(crate::cli::NO_USER),
    };
    let request = PushRequest {
        user: user.clone(),
        public_key: key.public.clone(),
        fingerprint: key.fingerprint.clone(),
        expire_on: chrono::Utc::now() + chrono::Duration::from_std(args.ttl)?,
    };
    let oslogin_api = OsLoginApi::new(&http, &args.oslogin_api(), token.clone());
    let pusher: Box<dyn KeyPusher + '_> = match &account {
        Some(email) => Box::new(OsLoginPusher {
            api: &oslogin_api,
            email: email.clone(),
            project: instance.project.clone(),
        }),
        None => Box::new(MetadataPusher {
            compute: &compute,
            instance: &instance,
            current: info.metadata.clone(),
        }),
    };
    let pushed = pusher.push(&request).with_context(|| match &account {
        Some(email) => format!("importing the key into the OS Login profile of {email}"),
        None => "pushing the key".to_string(),
    })?;
    if account.is_some() && args.user_given() && pushed.login_user != user {
        eprintln!(
            "gce-ssh: using OS Login user {} instead of the requested user {user}",
            pushed.login_user
        );
    }
    if !plan.add.is_empty() {
        hostkeys::write(
            &known_hosts,
            &hostkeys::with_added(&known_text, &alias, &plan.add),
        )
        .with_context(|| format!("writing {}", known_hosts.display()))?;
    }
    t.step(&format!(
        "key pushed to {}/{}/{} ({})",
        instance.project, instance.zone, instance.name, pushed.detail
    ));
    if plan.strict {
        if !plan.add.is_empty() && args.timings {
            eprintln!(
                "gce-ssh: pinned {} host key(s) as {alias} in {}",
                plan.add.len(),
                known_hosts.display()
            );
        }
    } else {
        hostkeys::ensure_dir(&known_hosts)
            .with_context(|| format!("creating the directory of {}", known_hosts.display()))?;
        eprintln!(
            "gce-ssh: WARNING: instance {} (id {}) publishes no host keys (guest attribute \
             hostkeys/); trusting the key its sshd presents on first contact and pinning it as \
             {alias} in {}",
            info.name,
            info.id,
            known_hosts.display()
        );
    }

    // OS Login's 2-step verification asks for a second factor: ssh must be allowed to prompt.
    let interactive = account.is_some() && detected.two_factor;
    if interactive {
        eprintln!(
            "gce-ssh: OS Login 2-step verification is on: ssh will ask for the second factor"
        );
    }
    let options = ssh_options(
        &key.path,
        &known_hosts,
        &alias,
        plan.strict,
        args.port,
        !interactive,
    );
    let destination = format!("{}@{host}", pushed.login_user);
    let deadline = Instant::now() + args.ready_timeout;
    match pusher.wait_usable(&request, &pushed, deadline) {
        Usable::Confirmed => t.step("guest confirmed the key"),
        Usable::Effective => {}
        Usable::TimedOut => eprintln!(
            "gce-ssh: the guest did not confirm the key within {:?}; trying ssh anyway",
            args.ready_timeout
        ),
        Usable::Unknown => {
            eprintln!(
                "gce-ssh: the guest publishes no ready markers; waiting for the key by trying ssh"
            );
            if wait_for_login(&options, &args.ssh_flags, &destination, deadline) {
                t.step("ssh login works");
            } else {
                eprintln!(
                    "gce-ssh: no login within {:?}; trying once more",
                    args.ready_timeout
                );
            }
        }
    }

    if args.push_only {
        let mut key_dir = key_dir;
        key_dir.keep = true;
        let quoted: Vec<String> = options.iter().map(|o| shell_quote(o)).collect();
        eprintln!(
            "gce-ssh: key kept{}; known hosts {}, alias {alias}; log in with:\n  ssh {} {}",
            match &account {
                Some(email) => format!(
                    " (in the OS Login profile of {email} until {})",
                    request.expire_on.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                None => String::new(),
            },
            known_hosts.display(),
            quoted.join(" "),
            shell_quote(&destination)
        );
        println!("{}", key.path.display());
        return Ok(ExitCode::SUCCESS);
    }

    let hint = refusal_hint(
        account.is_some(),
        detected.enabled,
        &pushed.login_user,
        account.as_deref(),
    );
    let status = run_ssh(
        &options,
        &args.ssh_flags,
        &destination,
        &args.remote(),
        hint.as_deref(),
    )?;
    t.step("ssh finished");
    if let Err(e) = pusher.cleanup(&pushed) {
        eprintln!(
            "gce-ssh: warning: could not remove the session's key (it expires at {}): {e}",
            request.expire_on.format("%Y-%m-%dT%H:%M:%SZ")
        );
    } else if !pushed.remove_after.is_empty() {
        t.step("session key removed from the OS Login profile");
    }
    Ok(ExitCode::from(status))
}

/// Runs the session's ssh; its exit status. With a `hint`, ssh's own error output is passed
/// through as it comes and watched, and a refused authentication gets the hint after it.
fn run_ssh(
    options: &[String],
    flags: &[String],
    destination: &str,
    remote: &[String],
    hint: Option<&str>,
) -> anyhow::Result<u8> {
    let mut cmd = Command::new("ssh");
    cmd.args(options).args(flags).arg(destination);
    if !remote.is_empty() {
        // After `--`, a command starting with `-` is not read as an option of ssh's.
        cmd.arg("--").args(remote);
    }
    if hint.is_some() {
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("ssh not found: install openssh-client"),
        _ => anyhow::anyhow!("cannot run ssh: {e}"),
    })?;
    let refused = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut seen = false;
            let mut tail = Vec::<u8>::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = std::io::stderr().write_all(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                seen |= tail.windows(18).any(|w| w == b"Permission denied ");
                let keep = tail.len().saturating_sub(32);
                tail.drain(..keep);
            }
            seen
        })
    });
    let status = child
        .wait()
        .map_err(|e| anyhow::anyhow!("waiting for ssh: {e}"))?;
    let code = status.code().unwrap_or(255).clamp(0, 255) as u8;
    let refused = refused.and_then(|h| h.join().ok()).unwrap_or(false);
    if let (true, 255, Some(h)) = (refused, code, hint) {
        eprintln!("gce-ssh: {h}");
    }
    Ok(code)
}

/// Tries `ssh … true` until it logs in or `deadline` (gcloud's key-propagation wait, for guests
/// that publish no ready markers).
fn wait_for_login(
    options: &[String],
    flags: &[String],
    destination: &str,
    deadline: Instant,
) -> bool {
    loop {
        let ok = Command::new("ssh")
            .args(options)
            .args(["-o", "ConnectTimeout=5"])
            .args(flags)
            .arg(destination)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_options_pin_the_alias_and_choose_strictness() {
        let o = ssh_options(
            Path::new("/k/id"),
            Path::new("/h/kh"),
            "compute.7",
            true,
            22,
            true,
        );
        let joined = o.join(" ");
        for want in [
            "-i /k/id",
            "HostKeyAlias=compute.7",
            "UserKnownHostsFile=/h/kh",
            "StrictHostKeyChecking=yes",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "-p 22",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
        let tofu = ssh_options(
            Path::new("/k"),
            Path::new("/h"),
            "compute.7",
            false,
            2222,
            false,
        )
        .join(" ");
        assert!(tofu.contains("StrictHostKeyChecking=accept-new"), "{tofu}");
        assert!(tofu.contains("BatchMode=no"), "{tofu}");
    }

    #[test]
    fn shell_quoting_is_only_added_where_needed() {
        assert_eq!(
            shell_quote("UserKnownHostsFile=/a/b"),
            "UserKnownHostsFile=/a/b"
        );
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
