//! Issue 10, IPv6-only instances: a private network namespace with no IPv4 address at all (even
//! loopback's 127.0.0.1 is removed), the metadata emulator at `[fd20:ce::254]:80` on loopback and
//! a veth carrying the metadata MAC. The shipped binaries run with no override, so they must
//! find the server by themselves: keys (a real sshd login over `::1`), routes (a forwarded IPv6
//! address as a local route), clock (a drift-token change runs `hwclock`, a recording fake, so
//! the host's clock is never touched), scripts (the runner, by itself and with
//! `GCE_METADATA_HOST=[fd20:ce::254]`) and instance setup (host keys made for the new instance
//! id, the id recorded, the keys published to `hostkeys/`, the hostname set, and /etc/hosts
//! naming the instance's IPv6 address and pinning the metadata server at `fd20:ce::254`).

use gce_metadata_emulator::Emulator;
use gce_testkit::{BackgroundRuntime, Sshd, bin, keypair, sandbox, sh, temp_dir, wait_until};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);
const V6_URL: &str = "http://[fd20:ce::254]/computeMetadata/v1/";

/// A daemon with no metadata override: it has to choose the address itself.
fn start(name: &str, dir: &Path, path: Option<&Path>) -> Child {
    let mut cmd = Command::new(bin(name));
    cmd.arg("--config")
        .arg(dir.join("cfg"))
        .arg("--lock-file")
        .arg(dir.join(format!("{name}.lock")))
        .env_remove("GCE_METADATA_HOST")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    if let Some(p) = path {
        let old = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{old}", p.display()));
    }
    cmd.spawn().unwrap()
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn e2e_ipv6_only_instance_keys_routes_clock_and_scripts_work_without_an_override() {
    if !sandbox("e2e_ipv6_only_instance_keys_routes_clock_and_scripts_work_without_an_override") {
        return;
    }
    // No IPv4 at all; the metadata server's IPv6 address on loopback; the metadata NIC.
    sh(&["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"]).unwrap();
    sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd20:ce::254/128",
        "dev",
        "lo",
        "nodad",
    ])
    .unwrap();
    sh(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    sh(&[
        "ip",
        "link",
        "set",
        "eth0",
        "address",
        "42:01:0a:8a:00:07",
        "up",
    ])
    .unwrap();
    sh(&["ip", "link", "set", "eth0p", "up"]).unwrap();
    let v4 = Command::new("ip").args(["-4", "addr"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&v4.stdout).trim().is_empty(),
        "no IPv4 address may be left"
    );
    // The clock daemon must never reach a real RTC from here: the host's clock is not ours.
    if Path::new("/dev/rtc0").exists() {
        sh(&["mount", "--bind", "/dev/null", "/dev/rtc0"]).unwrap();
    }

    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("[fd20:ce::254]:80"))
        .unwrap();
    let h = emu.handle();
    let dir = temp_dir("v6only");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let (key, public) = keypair(&dir, "six");
    h.set_instance_attribute("ssh-keys", &format!("sixuser:{public}"));
    // An IPv6-only instance: its interface has IPv6 addresses and no IPv4 one.
    h.remove("/instance/networkInterfaces/0/ip");
    h.set(
        "/instance/networkInterfaces/0/ipv6s",
        json!(["fd20:1:2:3:0:5::"]),
    );
    h.set(
        "/instance/networkInterfaces/0/forwardedIpv6s",
        json!(["fd00:ce::5"]),
    );
    h.set("/instance/virtualClock/driftToken", json!("1"));
    let out = dir.join("startup.out");
    h.set_instance_attribute(
        "startup-script",
        &format!("#!/bin/sh\necho ran >> {}\n", out.display()),
    );
    let fake = temp_dir("fakebin");
    let calls = dir.join("hwclock.calls");
    script(
        &fake.join("hwclock"),
        &format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    );
    script(&fake.join("chronyc"), "#!/bin/sh\nexit 1\n");

    let mut children = vec![
        start("gce-accounts-daemon", &dir, None),
        start("gce-ip-forwarding-daemon", &dir, None),
        start("gce-clock-skew-daemon", &dir, Some(&fake)),
    ];

    // Keys: installed, and a real login over IPv6 loopback.
    let keys = "/home/sixuser/.ssh/authorized_keys";
    let installed = wait_until(SOON, || {
        std::fs::read_to_string(keys).is_ok_and(|k| k.contains(&public))
    });
    assert!(
        installed.is_some(),
        "key not installed:\n{}",
        log(&dir, "gce-accounts-daemon")
    );
    let sshd = Sshd::start_on("::1", "");
    let login = sshd.login("sixuser", &key, "id -un");
    assert_eq!(
        String::from_utf8_lossy(&login.stdout).trim(),
        "sixuser",
        "ssh over ::1: {}\n{}",
        String::from_utf8_lossy(&login.stderr),
        sshd.log()
    );

    // Routes: the forwarded IPv6 address is a local route on the metadata NIC.
    let routed = wait_until(SOON, || {
        let o = Command::new("ip")
            .args(["-6", "route", "show", "table", "local", "proto", "66"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains("local fd00:ce::5 dev eth0")
    });
    assert!(
        routed.is_some(),
        "route missing:\n{}",
        log(&dir, "gce-ip-forwarding-daemon")
    );

    // Clock: the first token is recorded; a new one steps the clock (via the fake hwclock).
    let recorded = wait_until(SOON, || {
        log(&dir, "gce-clock-skew-daemon").contains("drift token is \"1\"")
    });
    assert!(recorded.is_some(), "{}", log(&dir, "gce-clock-skew-daemon"));
    h.set("/instance/virtualClock/driftToken", json!("2"));
    let stepped = wait_until(SOON, || {
        std::fs::read_to_string(&calls).is_ok_and(|c| c.contains("--hctosys -u --noadjfile"))
    });
    assert!(stepped.is_some(), "{}", log(&dir, "gce-clock-skew-daemon"));

    // Every daemon found the server by itself, at the IPv6 address, and said so once.
    for name in [
        "gce-accounts-daemon",
        "gce-ip-forwarding-daemon",
        "gce-clock-skew-daemon",
    ] {
        let l = log(&dir, name);
        let said = l
            .lines()
            .filter(|line| line.contains(&format!("metadata server reachable at {V6_URL}")))
            .count();
        assert_eq!(said, 1, "{name}:\n{l}");
        for line in l.lines().filter(|line| line.contains("reachable at")) {
            eprintln!("{name}: {line}");
        }
        assert!(
            l.contains("not reachable at http://169.254.169.254/computeMetadata/v1/"),
            "{name}:\n{l}"
        );
    }

    // Scripts: the runner by itself, then with the override in its IPv6 form.
    let runner = |host: Option<&str>| {
        let mut cmd = Command::new(bin("gce-metadata-script-runner"));
        cmd.args(["--config"])
            .arg(dir.join("cfg"))
            .arg("--lock-file")
            .arg(dir.join("runner.lock"))
            .arg("startup")
            .env_remove("GCE_METADATA_HOST")
            .stdin(Stdio::null());
        if let Some(h) = host {
            cmd.env("GCE_METADATA_HOST", h);
        }
        cmd.output().unwrap()
    };
    for (i, host) in [None, Some("[fd20:ce::254]"), Some("[fd20:ce::254]:80")]
        .into_iter()
        .enumerate()
    {
        let o = runner(host);
        let ran = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            o.status.success() && ran.lines().count() == i + 1,
            "runner with {host:?}: {}\n{ran}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Instance setup, as at boot: a new instance id (nothing recorded in this private /etc).
    let _ = std::fs::remove_file("/etc/google_instance_id");
    let setup = Command::new(bin("gce-instance-setup"))
        .arg("--config")
        .arg(dir.join("cfg"))
        .arg("--lock-file")
        .arg(dir.join("setup.lock"))
        .arg("-v")
        .env_remove("GCE_METADATA_HOST")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let slog = String::from_utf8_lossy(&setup.stderr);
    assert!(setup.status.success(), "instance setup:\n{slog}");
    assert!(
        slog.contains(&format!("metadata server reachable at {V6_URL}")),
        "{slog}"
    );
    let id = h.doc()["instance"]["id"].to_string();
    assert_eq!(
        std::fs::read_to_string("/etc/google_instance_id")
            .unwrap()
            .trim(),
        id,
        "{slog}"
    );
    let ed25519 = std::fs::read_to_string("/etc/ssh/ssh_host_ed25519_key.pub").unwrap();
    assert_eq!(
        ed25519.split_whitespace().nth(2),
        Some(format!("gce-instance-{id}").as_str()),
        "keys made for this instance: {ed25519}\n{slog}"
    );
    let blob = ed25519.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        h.guest_attribute("hostkeys", "ssh-ed25519").as_deref(),
        Some(blob.as_str()),
        "published: {slog}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "vm0"
    );
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert!(
        hosts.ends_with(
            "fd20:1:2:3:0:5:: vm0.c.my-proj.internal vm0  # Added by Google\n\
             fd20:ce::254 metadata.google.internal  # Added by Google\n\
             169.254.169.254 metadata.google.internal  # Added by Google\n"
        ),
        "{hosts}"
    );
    // The name resolves to the IPv6 address first (the IPv4 one is unreachable here).
    let getent = Command::new("getent")
        .args(["ahosts", "metadata.google.internal"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&getent.stdout).starts_with("fd20:ce::254 "),
        "{}",
        String::from_utf8_lossy(&getent.stdout)
    );

    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
