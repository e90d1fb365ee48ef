//! Idle memory of the three resident daemons, as shipped: the release binaries, each with work to
//! do (five users with keys; a forwarded IP on a veth carrying the metadata MAC; a drift token),
//! inside a private namespace with a copy of /etc, against the emulator. Prints VmRSS, anonymous
//! RSS, PSS and the shared objects each daemon has mapped, after the first applies and 5 s of
//! idle long polling.
//!
//! Run: `scripts/bench rss` (or `cargo build --release --workspace --bins &&
//! cargo bench -p gce-testkit --bench idle_rss`). Needs root. `BENCH_IDLE_SECS=30` idles longer.

use gce_metadata_emulator::Emulator;
use gce_testkit::{BackgroundRuntime, bin, daemon_command, keypair, sandbox_main, sh, temp_dir};
use std::process::{Command, Stdio};
use std::time::Duration;

const DAEMONS: [&str; 3] = [
    "gce-accounts-daemon",
    "gce-clock-skew-daemon",
    "gce-ip-forwarding-daemon",
];

fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    sandbox_main();
    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let h = emu.handle();
    let keys = temp_dir("rss-keys");
    let lines: Vec<String> = (0..5)
        .map(|i| format!("idle{i}:{}", keypair(&keys, &format!("k{i}")).1))
        .collect();
    h.set_instance_attribute("ssh-keys", &lines.join("\n"));
    // The metadata NIC, locally: a veth with its MAC; one forwarded IP to route.
    let veth = [
        "ip", "link", "add", "rss0", "type", "veth", "peer", "name", "rss1",
    ];
    sh(&veth).unwrap();
    sh(&[
        "ip",
        "link",
        "set",
        "rss0",
        "address",
        "42:01:0a:8a:00:07",
        "up",
    ])
    .unwrap();
    h.set(
        "/instance/networkInterfaces/0/forwardedIps",
        serde_json::json!(["10.138.0.50"]),
    );
    h.set(
        "/instance/virtualClock/driftToken",
        serde_json::json!("123456"),
    );

    let dir = temp_dir("rss");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let mut children: Vec<_> = DAEMONS
        .iter()
        .map(|name| {
            daemon_command(
                &bin(name),
                &dir.join("cfg"),
                &dir.join(format!("{name}.lock")),
                &emu.metadata_host(),
            )
            .env("RUST_LOG", "info")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    // BENCH_IDLE_SECS=N idles longer (the watcher probes every 5 s while a long poll waits).
    let idle = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    std::thread::sleep(Duration::from_secs(idle));
    let routes = Command::new("ip")
        .args(["route", "show", "table", "local", "proto", "66"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("10.138.0.50"),
        "ip-forwarding did not install its route"
    );
    assert!(
        std::path::Path::new("/home/idle4/.ssh/authorized_keys").exists(),
        "accounts did not apply the keys"
    );
    for (name, child) in DAEMONS.iter().zip(&children) {
        let pid = child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut libs: Vec<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains(".so"))
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .collect();
        libs.sort();
        libs.dedup();
        println!(
            "{name}: idle VmRSS {:.2} MiB (anon {:.2} MiB, PSS {:.2} MiB, {} thread(s)); maps {}",
            kib(&status, "VmRSS:") as f64 / 1024.0,
            kib(&status, "RssAnon:") as f64 / 1024.0,
            kib(&rollup, "Pss:") as f64 / 1024.0,
            kib(&status, "Threads:"),
            libs.join(" ")
        );
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
