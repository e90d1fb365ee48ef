//! `gce-ssh`: generate an ephemeral ed25519 key, push it with a `google-ssh` expiry through the
//! control plane, wait until the guest says login will work, then run `ssh` with the key.

use anyhow::{Context, bail};
use clap::Parser;
use gce_metadata::{Client, ClientOptions, ready};
use gce_ssh::compute::{Compute, Instance};
use gce_ssh::keyline;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "gce-ssh",
    version,
    about = "Push a short-lived SSH key to an instance and log in"
)]
struct Args {
    /// Control-plane root (the emulator's address, or the Compute API's). Env: GCE_SSH_ENDPOINT.
    #[arg(
        long,
        env = "GCE_SSH_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Project id; asked from the endpoint's metadata API when omitted.
    #[arg(long)]
    project: Option<String>,
    /// Zone; asked from the endpoint's metadata API when omitted.
    #[arg(long)]
    zone: Option<String>,
    /// Instance name; asked from the endpoint's metadata API when omitted.
    #[arg(long)]
    instance: Option<String>,
    /// Lifetime of the key: `90s`, `5m`, `1h` or plain seconds.
    #[arg(long, default_value = "5m", value_parser = parse_ttl)]
    ttl: Duration,
    /// Remote user name (default: $USER).
    #[arg(long)]
    user: Option<String>,
    /// Address sshd listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// sshd port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// Extra option for ssh (repeatable), e.g. `--ssh-flag=-v`.
    #[arg(long = "ssh-flag", allow_hyphen_values = true)]
    ssh_flags: Vec<String>,
    /// How long to wait for the guest's ready marker before trying ssh anyway.
    #[arg(long, default_value = "60s", value_parser = parse_ttl)]
    ready_timeout: Duration,
    /// Push the key and wait for the marker, but do not run ssh; print the key's path instead
    /// (the key is kept).
    #[arg(long)]
    push_only: bool,
    /// Print the time each step took on stderr.
    #[arg(long)]
    timings: bool,
    /// Bearer token for the real Compute API. Env: GCE_ACCESS_TOKEN.
    #[arg(long, env = "GCE_ACCESS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The remote command (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
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

/// A private 0700 directory for the ephemeral key, removed on drop.
struct KeyDir(PathBuf);

impl KeyDir {
    fn create() -> anyhow::Result<KeyDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let template = base.join("gce-ssh-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("cannot create a key directory under {}", base.display()))?;
        Ok(KeyDir(dir))
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn generate_key(dir: &Path) -> anyhow::Result<(PathBuf, String, String)> {
    let key = dir.join("id_ed25519");
    run_tool(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "gce-ssh", "-f"])
            .arg(&key),
    )?;
    let public =
        std::fs::read_to_string(key.with_extension("pub")).context("reading the new public key")?;
    let listing = run_tool(
        Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(key.with_extension("pub")),
    )?;
    let fingerprint = listing
        .split_whitespace()
        .nth(1)
        .context("ssh-keygen -l printed no fingerprint")?
        .to_string();
    Ok((key, public.trim().to_string(), fingerprint))
}

async fn resolve_instance(args: &Args) -> anyhow::Result<Instance> {
    if let (Some(p), Some(z), Some(i)) = (&args.project, &args.zone, &args.instance) {
        return Ok(Instance {
            project: p.clone(),
            zone: z.clone(),
            name: i.clone(),
        });
    }
    let md = Client::new(
        &format!(
            "{}/computeMetadata/v1/",
            args.endpoint.trim_end_matches('/')
        ),
        ClientOptions::default(),
    )?;
    let ask = |path: &'static str| {
        let md = md.clone();
        async move {
            md.get_text(path).await.with_context(|| {
                format!("--project/--zone/--instance not given and {path} could not be read")
            })
        }
    };
    let project = match &args.project {
        Some(p) => p.clone(),
        None => ask("project/project-id").await?,
    };
    let zone = match &args.zone {
        Some(z) => z.clone(),
        None => ask("instance/zone")
            .await?
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    let name = match &args.instance {
        Some(n) => n.clone(),
        None => ask("instance/name").await?,
    };
    Ok(Instance {
        project,
        zone,
        name,
    })
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut t = Timer {
        on: args.timings,
        start: Instant::now(),
        last: Instant::now(),
    };
    let user = match args.user.clone().or_else(|| std::env::var("USER").ok()) {
        Some(u) if !u.is_empty() => u,
        _ => bail!("no user name: pass --user"),
    };
    let compute = Compute::new(&args.endpoint, args.token.clone())?;
    let instance = resolve_instance(&args).await?;
    let dir = KeyDir::create()?;
    let (key, public, fingerprint) = generate_key(&dir.0)?;
    t.step("key generated");

    let expire_on = chrono::Utc::now() + chrono::Duration::from_std(args.ttl)?;
    let line = keyline::expiring_line(&user, &public, expire_on);
    let attempts = compute
        .update_metadata(&instance, |md| {
            let current = md.get("ssh-keys").unwrap_or_default().to_string();
            md.set(
                "ssh-keys",
                keyline::add_key(&current, &user, &line, chrono::Utc::now()),
            );
        })
        .await
        .context("pushing the key with setMetadata")?;
    t.step(&format!(
        "key pushed to {}/{}/{} (setMetadata attempts: {attempts})",
        instance.project, instance.zone, instance.name
    ));

    let marker = format!("{}/{}", ready::NAMESPACE, ready::user_key(&user));
    let deadline = Instant::now() + args.ready_timeout;
    loop {
        match compute.guest_attribute(&instance, &marker).await {
            Ok(Some(v)) if ready::lists(&v, &fingerprint) => break,
            Ok(_) => {}
            Err(e) => eprintln!("gce-ssh: reading the ready marker failed (will keep trying): {e}"),
        }
        if Instant::now() >= deadline {
            eprintln!(
                "gce-ssh: the guest did not confirm the key within {:?}; trying ssh anyway",
                args.ready_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.step("guest confirmed the key");

    if args.push_only {
        let kept = dir.0.clone();
        std::mem::forget(dir);
        println!("{}", kept.join("id_ed25519").display());
        return Ok(ExitCode::SUCCESS);
    }
    let status = Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-p",
        ])
        .arg(args.port.to_string())
        .args(&args.ssh_flags)
        .arg(format!("{user}@{}", args.host))
        .args(&args.command)
        .status()
        .context("cannot run ssh")?;
    t.step("ssh finished");
    Ok(ExitCode::from(
        status.code().unwrap_or(255).clamp(0, 255) as u8
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gce-ssh: {e:#}");
            ExitCode::from(2)
        }
    }
}
