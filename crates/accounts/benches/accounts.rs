//! Accounts benchmark: prints the figures of the accounts issue, each measured from the
//! emulator's change to the effect visible on disk (or the login accepted), with the release
//! binaries, the real useradd and sshd, inside a private namespace.
//!
//! Run: `scripts/bench accounts` (or `cargo build --release --workspace --bins &&
//! cargo bench -p gce-accounts --bench accounts`). Needs root.

use gce_metadata_emulator::Emulator;
use gce_testkit::{Sshd, bin, daemon_command, keypair, median_p90, sandbox_main, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ak(user: &str) -> PathBuf {
    PathBuf::from(format!("/home/{user}/.ssh/authorized_keys"))
}

fn has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.contains(needle))
        .unwrap_or(false)
}

/// Tight poll (the daemon has the other core).
fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out");
        std::thread::sleep(Duration::from_micros(50));
    }
    t.elapsed()
}

fn blob(public: &str) -> String {
    public.split_whitespace().nth(1).unwrap().to_string()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:` …).
fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    sandbox_main();
    let rt = gce_testkit::BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let h = emu.handle();
    let dir = temp_dir("bench");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let mut daemon = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock"),
        &emu.metadata_host(),
    )
    .env(
        "RUST_LOG",
        std::env::var("BENCH_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
    .spawn()
    .unwrap();
    let keys = temp_dir("keys");
    let pubs: Vec<String> = (0..8).map(|i| keypair(&keys, &format!("k{i}")).1).collect();
    let mut lines: Vec<String> = Vec::new();
    std::thread::sleep(Duration::from_millis(500));

    // 1. New user + key.
    let mut s = Vec::new();
    for i in 0..20 {
        let user = format!("new{i}");
        lines.push(format!("{user}:{}", pubs[i % 8]));
        let want = blob(&pubs[i % 8]);
        let t = Instant::now();
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        until(Duration::from_secs(10), || has(&ak(&user), &want));
        s.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(30)); // let group changes finish
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "new user + key: median {m:.2} ms, p90 {p:.2} ms (n={})",
        s.len()
    );
    // The floor under that figure: the same useradd command line, run directly in this sandbox.
    let mut s = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let st = Command::new("useradd")
            .args([
                "-m",
                "-s",
                "/bin/bash",
                "-p",
                "*",
                "-G",
                "adm,dip,plugdev,video,google-sudoers",
            ])
            .arg(format!("floor{i}"))
            .status()
            .unwrap();
        s.push(t.elapsed());
        assert!(st.success());
    }
    let (m, p) = median_p90(&mut s);
    println!("  (useradd alone, same command line, no daemon: median {m:.2} ms, p90 {p:.2} ms)");

    // 2. Key change for an existing user.
    let mut s = Vec::new();
    for i in 0..30 {
        let k = (i + 1) % 8;
        lines[0] = format!("new0:{}", pubs[k]);
        let want = blob(&pubs[k]);
        let t = Instant::now();
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        until(Duration::from_secs(10), || has(&ak("new0"), &want));
        s.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "key change for an existing user: median {m:.3} ms, p90 {p:.3} ms (n={})",
        s.len()
    );

    // 3. 200 new users in one change.
    for i in 0..200 {
        lines.push(format!("batch{i}:{}", pubs[i % 8]));
    }
    let t = Instant::now();
    h.set_instance_attribute("ssh-keys", &lines.join("\n"));
    // Poll cheaply (this loop shares the two cores with the useradd runs it is timing): resume
    // at the first file still missing, 1 ms between rounds.
    let mut first_missing = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while first_missing < 200 {
        while first_missing < 200 && ak(&format!("batch{first_missing}")).exists() {
            first_missing += 1;
        }
        if first_missing < 200 {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!(
        "200 new users in one change, all keys on disk: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // 4. One changed key among 1,000 users.
    for i in 0..(1000 - lines.len()) {
        lines.push(format!("many{i}:{}", pubs[i % 8]));
    }
    h.set_instance_attribute("ssh-keys", &lines.join("\n"));
    let last = lines.last().unwrap().split(':').next().unwrap().to_string();
    until(Duration::from_secs(300), || ak(&last).exists());
    std::thread::sleep(Duration::from_secs(2));
    let rss_1000 = status_kib(daemon.id(), "VmRSS:");
    let mut s = Vec::new();
    for i in 0..20 {
        let k = (i + 3) % 8;
        lines[500] = format!("{}:{}", lines[500].split(':').next().unwrap(), pubs[k]);
        let user = lines[500].split(':').next().unwrap().to_string();
        let want = blob(&pubs[k]);
        let t = Instant::now();
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        until(Duration::from_secs(10), || has(&ak(&user), &want));
        s.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "one changed key among 1,000 users: median {m:.2} ms, p90 {p:.2} ms (n={})",
        s.len()
    );
    if std::env::var_os("BENCH_DAEMON_LOG").is_some() {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("reconcile timings"))
            .rev()
            .take(5)
        {
            println!("    {l}");
        }
    }
    println!(
        "daemon RSS with 1,000 managed users: {:.1} MiB",
        rss_1000 as f64 / 1024.0
    );

    // 5. Expired key removed after expireOn (metadata unchanged).
    let mut s = Vec::new();
    for i in 0..3 {
        let exp = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 2, 0).unwrap();
        let k = blob(&pubs[i + 4]);
        lines[1] = format!(
            "new1:ssh-ed25519 {k} google-ssh {{\"userName\":\"x\",\"expireOn\":\"{}\"}}",
            exp.format("%Y-%m-%dT%H:%M:%S+0000")
        );
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        until(Duration::from_secs(10), || has(&ak("new1"), &k));
        until(Duration::from_secs(10), || !has(&ak("new1"), &k));
        s.push((chrono::Utc::now() - exp).to_std().unwrap_or_default());
    }
    let (m, _) = median_p90(&mut s);
    println!(
        "expired key removed after expireOn: median {m:.1} ms (n={})",
        s.len()
    );

    // 6. gce-authorized-keys per call.
    let akc = bin("gce-authorized-keys");
    let mut s = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let out = Command::new(&akc).args(["new0"]).output().unwrap();
        s.push(t.elapsed());
        assert!(!out.stdout.is_empty());
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "gce-authorized-keys per call: median {m:.2} ms, p90 {p:.2} ms (n={})",
        s.len()
    );

    // 7. gce-ssh push -> remote command done (ssh handshake included), with host-key pinning
    // on: the sshd's host key is published in `hostkeys/` as Google's agent does, so gce-ssh
    // reads it, pins it and runs ssh with strict host-key checking.
    let sshd = Sshd::start("");
    let host_key = std::fs::read_to_string(sshd.dir.join("hostkey.pub")).unwrap();
    let mut hk = host_key.split_whitespace();
    h.set_guest_attribute("hostkeys", hk.next().unwrap(), hk.next().unwrap());
    let mut s = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let out = Command::new(bin("gce-ssh"))
            .args([
                "--endpoint",
                &emu.url(),
                "--user",
                &format!("sshuser{i}"),
                "--port",
                &sshd.port.to_string(),
                "--ttl",
                "5m",
                "--",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        s.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "gce-ssh push -> login -> command done (new user each time): median {m:.0} ms, p90 {p:.0} ms (n={})",
        s.len()
    );
    let mut s = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = Command::new(bin("gce-ssh"))
            .args([
                "--endpoint",
                &emu.url(),
                "--user",
                "sshuser0",
                "--port",
                &sshd.port.to_string(),
                "--ttl",
                "5m",
                "--",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        s.push(t.elapsed());
        assert!(out.status.success());
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "gce-ssh push -> login -> command done (existing user): median {m:.0} ms, p90 {p:.0} ms (n={})",
        s.len()
    );

    // 8. Idle RSS of a fresh daemon with a handful of users.
    daemon.kill().unwrap();
    let _ = daemon.wait();
    h.set_instance_attribute("ssh-keys", &lines[..5].join("\n"));
    let mut fresh = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock2"),
        &emu.metadata_host(),
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let anon = status_kib(fresh.id(), "RssAnon:");
    println!(
        "RSS of a restarted daemon that dropped 995 of 1,000 users and idles with 5: {:.2} MiB (anon {:.2} MiB); a fresh machine: scripts/bench rss",
        status_kib(fresh.id(), "VmRSS:") as f64 / 1024.0,
        anon as f64 / 1024.0
    );
    fresh.kill().unwrap();
    let _ = fresh.wait();
}
