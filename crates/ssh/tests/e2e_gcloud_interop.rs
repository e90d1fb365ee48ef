//! Google's own client as the reference: `gcloud compute ssh --dry-run` pointed at the emulator's
//! Compute API (inside a private network namespace: only loopback, so it can reach nothing
//! else) reads the published host key, and the known-hosts file it writes is the one gce-ssh
//! writes; gce-ssh then logs in with strict checking against gcloud's own file. Skipped where
//! the Google Cloud CLI is not installed (it is not a Debian package; scripts/setup cannot add it).

use gce_metadata_emulator::Emulator;
use gce_testkit::{Sshd, bin, daemon_command, sandbox, temp_dir, wait_until};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const GCLOUD: &str = "/usr/bin/gcloud";

#[test]
fn e2e_gcloud_and_gce_ssh_pin_the_same_host_key_in_the_same_file() {
    if !Path::new(GCLOUD).exists() {
        eprintln!("SKIPPED: {GCLOUD} (the Google Cloud CLI) is not installed");
        return;
    }
    if !sandbox("e2e_gcloud_and_gce_ssh_pin_the_same_host_key_in_the_same_file") {
        return;
    }
    let rt = gce_testkit::BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let h = emu.handle();
    h.set(
        "/instance/networkInterfaces/0/accessConfigs",
        serde_json::json!([{"externalIp": "127.0.0.1", "type": "ONE_TO_ONE_NAT"}]),
    );
    let sshd = Sshd::start("");
    let line = std::fs::read_to_string(sshd.dir.join("hostkey.pub")).unwrap();
    let mut f = line.split_whitespace();
    let (kind, blob) = (f.next().unwrap(), f.next().unwrap());
    // As Google's agent publishes it: the blob under the key type.
    h.set_guest_attribute("hostkeys", kind, blob);
    let id = h.doc()["instance"]["id"]
        .to_string()
        .trim_matches('"')
        .to_string();

    let dir = temp_dir("gcloud-interop");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(dir.join("token"), "ya29.gcloud-interop\n").unwrap();
    let out = Command::new(GCLOUD)
        .args([
            "compute",
            "ssh",
            "vm0",
            "--zone",
            "us-west1-b",
            "--dry-run",
            "--quiet",
        ])
        .args(["--ssh-key-expire-after", "5m", "--access-token-file"])
        .arg(dir.join("token"))
        .env("HOME", &home)
        .env("CLOUDSDK_CONFIG", dir.join("gcloud"))
        .env("CLOUDSDK_CORE_PROJECT", "my-proj")
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
            format!("{}/compute/v1/", emu.url()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let ssh_line = said
        .lines()
        .find(|l| l.contains("ssh ") && l.contains("HostKeyAlias="))
        .unwrap_or_else(|| panic!("no ssh command in gcloud's output:\n{said}"));
    for want in [
        format!("HostKeyAlias=compute.{id}"),
        "StrictHostKeyChecking=yes".to_string(),
        "@127.0.0.1".to_string(),
    ] {
        assert!(ssh_line.contains(&want), "{want} in {ssh_line}");
    }
    let gcloud_file = home.join(".ssh/google_compute_known_hosts");
    let gcloud_pins = std::fs::read_to_string(&gcloud_file).unwrap();
    assert_eq!(gcloud_pins, format!("compute.{id} {kind} {blob}\n"));

    // gce-ssh with gcloud's file: it finds the pin, adds nothing, and logs in strictly.
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
    wait_until(Duration::from_secs(10), || {
        emu.handle()
            .guest_attribute("gce-agent", "accounts-etag")
            .is_some()
    })
    .expect("the daemon publishes its first pass");
    let out = Command::new(bin("gce-ssh"))
        .args(["--endpoint", &emu.url(), "--user", "hal", "--timings"])
        .args(["--port", &sshd.port.to_string(), "--known-hosts-file"])
        .arg(&gcloud_file)
        .args(["--", "id", "-un"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hal", "{err}");
    assert!(!err.contains("WARNING") && !err.contains("pinned"), "{err}");
    assert_eq!(std::fs::read_to_string(&gcloud_file).unwrap(), gcloud_pins);
    daemon.kill().unwrap();
    let _ = daemon.wait();
}
