//! Host-key pinning end to end, through the real binaries inside a private namespace: gce-ssh
//! talks HTTPS (test CA) to the emulator's Compute API with real credentials, the accounts
//! daemon installs the key, a real sshd accepts the login. The guest's host key is published in
//! `hostkeys/` by hand here (gce-instance-setup will publish it for real), the way Google's agent
//! writes it: the base64 blob under the key type.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestCa, TokenRules};
use gce_metadata_emulator::{Emulator, EmulatorHandle, RunningEmulator};
use gce_testkit::{BackgroundRuntime, Sshd, bin, daemon_command, sandbox, temp_dir, wait_until};

struct Guest {
    rt: BackgroundRuntime,
    emu: RunningEmulator,
    ca: TestCa,
    api: String,
    dir: PathBuf,
    home: PathBuf,
    daemon: std::process::Child,
}

impl Guest {
    /// The emulator (with 127.0.0.1 as the instance's external IP) behind HTTPS, and the
    /// accounts daemon serving it.
    fn start(name: &str) -> Guest {
        let rt = BackgroundRuntime::new();
        let emu = rt
            .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
        emu.handle().set(
            "/instance/networkInterfaces/0/accessConfigs",
            serde_json::json!([{"externalIp": "127.0.0.1", "type": "ONE_TO_ONE_NAT"}]),
        );
        let ca = TestCa::new(name);
        let api = ca.front(&rt, emu.addr());
        let dir = temp_dir(name);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(dir.join("cfg"), "").unwrap();
        let daemon = daemon_command(
            &bin("gce-accounts-daemon"),
            &dir.join("cfg"),
            &dir.join("lock"),
            &emu.metadata_host(),
        )
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
        wait_until(Duration::from_secs(10), || {
            emu.handle()
                .guest_attribute("gce-agent", "accounts-etag")
                .is_some()
        })
        .expect("the daemon publishes its first pass");
        Guest {
            rt,
            emu,
            ca,
            api,
            dir,
            home,
            daemon,
        }
    }

    fn h(&self) -> EmulatorHandle {
        self.emu.handle()
    }

    fn id(&self) -> String {
        self.h().doc()["instance"]["id"]
            .to_string()
            .trim_matches('"')
            .to_string()
    }

    fn known_hosts(&self) -> PathBuf {
        self.home.join(".ssh/google_compute_known_hosts")
    }

    fn ssh_keys(&self) -> String {
        self.h().doc()["instance"]["attributes"]["ssh-keys"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// gce-ssh as a user would run it: nothing but `HOME`, `PATH` and what `env` adds.
    fn gce_ssh(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("gce-ssh"));
        for k in common::USER_ENV {
            cmd.env_remove(k);
        }
        cmd.env("HOME", &self.home)
            .env("NO_GCE_CHECK", "true")
            .env_remove("XDG_RUNTIME_DIR")
            .args(["--endpoint", &self.api])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The sshd's host key as Google's agent publishes it: `hostkeys/<type>` = the base64 blob.
fn publish_host_key(h: &EmulatorHandle, sshd: &Sshd) -> String {
    let line = std::fs::read_to_string(sshd.dir.join("hostkey.pub")).unwrap();
    let mut f = line.split_whitespace();
    let (kind, blob) = (f.next().unwrap(), f.next().unwrap());
    h.set_guest_attribute("hostkeys", kind, blob);
    format!("{kind} {blob}")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn e2e_gce_ssh_pins_published_host_keys_and_refuses_a_swapped_one() {
    if !sandbox("e2e_gce_ssh_pins_published_host_keys_and_refuses_a_swapped_one") {
        return;
    }
    let g = Guest::start("gce-ssh-pin");
    // Credentials: a service account key, exchanged at a token endpoint that checks the JWT;
    // the API accepts only the token it hands out.
    let rules = Arc::new(Mutex::new(TokenRules::default()));
    let token_uri = format!(
        "{}/token",
        g.ca.front(&g.rt, common::token_server(&g.rt, rules.clone()))
    );
    let sa = common::ServiceAccount::new(&g.dir, &token_uri);
    {
        let mut r = rules.lock().unwrap();
        r.audience = token_uri.clone();
        r.service_accounts.push((
            sa.email.clone(),
            sa.public_der.clone(),
            sa.key_id.clone(),
            "ya29.pin-test".into(),
        ));
    }
    g.h().require_compute_token(Some("ya29.pin-test"));
    let cfg = common::gcloud_config(&g.dir, "my-proj", "us-west1-b", None);
    let ca = g.ca.write_pem(&g.dir);
    let env = [
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            sa.json_path.to_str().unwrap(),
        ),
        ("CLOUDSDK_CONFIG", cfg.to_str().unwrap()),
    ];
    let sshd = Sshd::start("");
    let host_key = publish_host_key(&g.h(), &sshd);
    let alias = format!("compute.{}", g.id());
    let port = sshd.port.to_string();
    let ca_arg = ["--ca-file", ca.to_str().unwrap()];

    // 1. Published key: pinned on push, strict checking, login works. No --host: the
    //    instance's external IP (natIP) is used.
    let out = g.gce_ssh(
        &env,
        &[
            &["frank@vm0", "--port", &port, "--timings"][..],
            &ca_arg[..],
            &["--", "id", "-un"],
        ]
        .concat(),
    );
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).trim(), "frank", "{err}\n{}", sshd.log());
    assert!(!err.contains("WARNING"), "{err}");
    assert!(err.contains("pinned 1 host key(s) as compute."), "{err}");
    let pinned = read(&g.known_hosts());
    assert_eq!(pinned, format!("{alias} {host_key}\n"));

    // 2. The instance's sshd presents another key while the published one stays: ssh refuses.
    let impostor = Sshd::start("");
    let keys_before = g.ssh_keys();
    let out = g.gce_ssh(
        &env,
        &[
            &["frank@vm0", "--port", &impostor.port.to_string()][..],
            &ca_arg[..],
            &["--", "true"],
        ]
        .concat(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "{err}"
    );
    eprintln!("-- an sshd with another key, refused by ssh:\n{err}");
    assert_eq!(read(&g.known_hosts()), pinned, "never replaced");
    assert!(
        !impostor.log().contains("Accepted publickey"),
        "{}",
        impostor.log()
    );

    // 3. The instance now publishes another key under the same id: refused loudly before
    //    anything is pushed.
    let keys_before_refusal = g.ssh_keys();
    assert_ne!(keys_before, keys_before_refusal, "run 2 had pushed its key");
    publish_host_key(&g.h(), &impostor);
    let out = g.gce_ssh(
        &env,
        &[
            &["frank@vm0", "--port", &impostor.port.to_string()][..],
            &ca_arg[..],
            &["--", "true"],
        ]
        .concat(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "REFUSED: the host key of instance vm0 (id {}) has changed",
            g.id()
        )) && err.contains(&format!("ssh-keygen -R {alias} -f")),
        "{err}"
    );
    eprintln!("-- a changed published key, refused by gce-ssh:\n{err}");
    assert_eq!(g.ssh_keys(), keys_before_refusal, "nothing pushed");
    assert_eq!(read(&g.known_hosts()), pinned, "never replaced");

    // 4. --push-only with the right key published again: the key path on stdout, and ssh
    //    options on stderr that log in as printed (strict, pinned alias, our known-hosts file).
    publish_host_key(&g.h(), &sshd);
    let out = g.gce_ssh(
        &env,
        &[
            &["frank@vm0", "--port", &port, "--push-only", "--ttl", "2m"][..],
            &ca_arg[..],
        ]
        .concat(),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let key = text(&out.stdout).trim().to_string();
    assert!(Path::new(&key).exists(), "{key}");
    assert!(
        err.contains(&format!(
            "known hosts {}, alias {alias}",
            g.known_hosts().display()
        )),
        "{err}"
    );
    let line = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("ssh "))
        .unwrap_or_else(|| panic!("no ssh line in {err}"));
    for want in [
        format!("-i {key}"),
        format!("HostKeyAlias={alias}"),
        format!("UserKnownHostsFile={}", g.known_hosts().display()),
        "StrictHostKeyChecking=yes".to_string(),
        format!("-p {port} frank@127.0.0.1"),
    ] {
        assert!(line.contains(&want), "{want} in {line}");
    }
    let args: Vec<&str> = line.split_whitespace().collect();
    let login = Command::new("ssh")
        .args(&args)
        .arg("id -un")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        text(&login.stdout).trim(),
        "frank",
        "{}",
        text(&login.stderr)
    );
    let _ = std::fs::remove_dir_all(Path::new(&key).parent().unwrap());
}

#[test]
fn e2e_gce_ssh_trusts_on_first_use_with_a_warning_when_no_host_keys_are_published() {
    if !sandbox("e2e_gce_ssh_trusts_on_first_use_with_a_warning_when_no_host_keys_are_published") {
        return;
    }
    let g = Guest::start("gce-ssh-tofu");
    // Credentials from gcloud, project and zone from the environment, roots via SSL_CERT_FILE.
    let path = common::fake_gcloud(&g.dir, "ya29.tofu-test");
    g.h().require_compute_token(Some("ya29.tofu-test"));
    let ca = g.ca.write_pem(&g.dir);
    let env = [
        ("PATH", path.as_str()),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ("CLOUDSDK_CORE_PROJECT", "my-proj"),
        ("CLOUDSDK_COMPUTE_ZONE", "us-west1-b"),
    ];
    let sshd = Sshd::start("");
    let alias = format!("compute.{}", g.id());
    let port = sshd.port.to_string();

    // First contact: a visible warning, login works, the key sshd presented is now pinned.
    let out = g.gce_ssh(&env, &["frank@vm0", "--port", &port, "--", "id", "-un"]);
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).trim(), "frank", "{err}");
    assert!(
        err.contains("WARNING: instance vm0")
            && err.contains("publishes no host keys")
            && err.contains("trusting the key its sshd presents on first contact"),
        "{err}"
    );
    let host_key = read(&sshd.dir.join("hostkey.pub"));
    let blob = host_key.split_whitespace().nth(1).unwrap();
    let pinned = read(&g.known_hosts());
    assert!(
        pinned.contains(&format!("{alias} ssh-ed25519 {blob}")),
        "{pinned}"
    );

    // Second contact: the alias is known, so checking is strict and there is no warning.
    let out = g.gce_ssh(&env, &["frank@vm0", "--port", &port, "--", "id", "-un"]);
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).trim(), "frank", "{err}");
    assert!(!err.contains("WARNING"), "{err}");

    // Another sshd answering for the same instance: refused.
    let impostor = Sshd::start("");
    let out = g.gce_ssh(
        &env,
        &[
            "frank@vm0",
            "--port",
            &impostor.port.to_string(),
            "--",
            "true",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "{err}"
    );
    assert_eq!(read(&g.known_hosts()), pinned);
}
