//! The whole product loop through the real binaries, inside a private namespace: gce-ssh pushes a
//! short-lived key through the emulator's control plane, gce-accounts-daemon installs it and
//! publishes the ready marker, a real sshd accepts the login, and after expiry it refuses.

use gce_metadata_emulator::Emulator;
use gce_testkit::{Sshd, bin, daemon_command, sandbox, temp_dir, wait_until};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn e2e_gce_ssh_pushes_logs_in_and_the_key_expires() {
    if !sandbox("e2e_gce_ssh_pushes_logs_in_and_the_key_expires") {
        return;
    }
    let rt = gce_testkit::BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let dir = temp_dir("gce-ssh");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let mut daemon = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock"),
        &emu.metadata_host(),
    )
    .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
    .spawn()
    .unwrap();
    let sshd = Sshd::start("");
    // The daemon's first pass is done (it publishes its ready marker) before the push below.
    wait_until(Duration::from_secs(10), || {
        emu.handle()
            .guest_attribute("gce-agent", "accounts-etag")
            .is_some()
    })
    .expect("the daemon publishes its first pass");
    let gce_ssh = |extra: &[&str]| {
        let t = Instant::now();
        let out = Command::new(bin("gce-ssh"))
            .args([
                "--endpoint",
                &emu.url(),
                "--user",
                "frank",
                "--port",
                &sshd.port.to_string(),
                "--timings",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out, t.elapsed())
    };

    let (out, took) = gce_ssh(&["--ttl", "1h", "--", "id", "-un"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "frank",
        "{stderr}\n{}",
        std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
    );
    assert!(stderr.contains("guest confirmed the key"), "{stderr}");
    assert!(
        !stderr.contains("trying ssh anyway"),
        "the ready marker must arrive: {stderr}"
    );
    eprintln!("gce-ssh push -> remote command done: {took:?}\n{stderr}");

    // A second push for the same user keeps the first key (read-modify-write), adds one more.
    let (out, _) = gce_ssh(&["--ttl", "5s", "--push-only"]);
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let keys = emu.handle().doc()["instance"]["attributes"]["ssh-keys"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(keys.lines().count(), 2, "{keys}");
    let login = |k: &str| {
        String::from_utf8_lossy(
            &sshd
                .login("frank", std::path::Path::new(k), "id -un")
                .stdout,
        )
        .trim()
            == "frank"
    };
    assert!(login(&key), "pushed key logs in");
    // Expiry: refused within a second of expireOn, no metadata change needed.
    let expire_on = keys
        .lines()
        .last()
        .unwrap()
        .split("\"expireOn\":\"")
        .nth(1)
        .unwrap()[..19]
        .to_string();
    let expire = chrono::NaiveDateTime::parse_from_str(&expire_on, "%Y-%m-%dT%H:%M:%S")
        .unwrap()
        .and_utc();
    let refused =
        wait_until(Duration::from_secs(15), || !login(&key)).expect("expired key refused");
    let late = chrono::Utc::now() - expire;
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "refused {late:?} after expiry (polled for {refused:?})"
    );
    daemon.kill().unwrap();
    let _ = daemon.wait();
    // The kept key's private directory (key, public key, known hosts).
    let _ = std::fs::remove_dir_all(std::path::Path::new(&key).parent().unwrap());
}

/// A guest that publishes no ready markers (guest attributes off, or Google's agent): gce-ssh
/// finds out when the key works by trying ssh, as gcloud does, and still logs in.
#[test]
fn e2e_gce_ssh_without_ready_markers_waits_by_trying_ssh() {
    if !sandbox("e2e_gce_ssh_without_ready_markers_waits_by_trying_ssh") {
        return;
    }
    let rt = gce_testkit::BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    emu.handle()
        .set_instance_attribute("enable-guest-attributes", "FALSE");
    let dir = temp_dir("gce-ssh-nomarker");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let mut daemon = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock"),
        &emu.metadata_host(),
    )
    .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
    .spawn()
    .unwrap();
    let sshd = Sshd::start("");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(bin("gce-ssh"))
        .args(["--endpoint", &emu.url(), "--user", "gina", "--timings"])
        .args(["--port", &sshd.port.to_string(), "--", "id", "-un"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "gina",
        "{stderr}"
    );
    assert!(
        stderr.contains("publishes no ready markers") && stderr.contains("ssh login works"),
        "{stderr}"
    );
    assert_eq!(
        emu.handle().guest_attribute("gce-agent", "accounts-etag"),
        None
    );
    daemon.kill().unwrap();
    let _ = daemon.wait();
}
