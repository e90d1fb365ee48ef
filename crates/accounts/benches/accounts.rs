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

/// Google's Python accounts daemon, the figure to beat: google-compute-engine 2.8.13 (the last
/// release of the Python guest environment) from PyPI, installed once with pip into
/// `target/bench-python` (before the sandbox is entered: inside there is no network).
fn python_daemon_dir() -> Result<PathBuf, String> {
    let target = bin("gce-accounts-daemon")
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?
        .to_path_buf();
    let dir = target.join("bench-python");
    if dir
        .join("google_compute_engine/accounts/accounts_daemon.py")
        .exists()
    {
        return Ok(dir);
    }
    if std::env::var_os("GCE_TESTKIT_INNER").is_some() {
        return Err("not installed (pip runs outside the sandbox)".into());
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(&dir)
        .args(["google-compute-engine==2.8.13", "distro==1.9.0"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(dir)
}

/// New user + key with the Python daemon, in this sandbox: it only reaches
/// `metadata.google.internal` on port 80, so a second emulator answers at 169.254.169.254:80 on
/// this namespace's loopback and the private /etc/hosts names it. Its users and its
/// google_users are left behind for nobody: the file is removed before our daemon starts.
fn python_new_user(
    rt: &gce_testkit::BackgroundRuntime,
    dir: &Path,
    pubs: &[String],
) -> Result<Vec<Duration>, String> {
    gce_testkit::sh(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"])?;
    let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts.push_str("169.254.169.254 metadata.google.internal\n");
    std::fs::write("/etc/hosts", hosts).map_err(|e| e.to_string())?;
    std::fs::create_dir_all("/run/lock").map_err(|e| e.to_string())?;
    let emu = rt
        .block_on(Emulator::with_default_doc().start("169.254.169.254:80"))
        .map_err(|e| e.to_string())?;
    let h = emu.handle();
    let log = temp_dir("python").join("daemon.log");
    let mut py = Command::new("python3")
        .env("PYTHONPATH", dir)
        .args([
            "-c",
            "from google_compute_engine.accounts import accounts_daemon; accounts_daemon.main()",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut lines: Vec<String> = Vec::new();
    let mut s = Vec::new();
    for i in 0..20 {
        let user = format!("py{i}");
        lines.push(format!("{user}:{}", pubs[i % 8]));
        let want = blob(&pubs[i % 8]);
        let t = Instant::now();
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !has(&ak(&user), &want) {
            if Instant::now() > deadline {
                let _ = py.kill();
                return Err(format!(
                    "{user}'s key not installed in 20 s; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        s.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(30));
    }
    let _ = py.kill();
    let _ = py.wait();
    let _ = std::fs::remove_file("/var/lib/google/google_users");
    rt.block_on(emu.shutdown());
    Ok(s)
}

fn main() {
    let python = python_daemon_dir();
    sandbox_main();
    let rt = gce_testkit::BackgroundRuntime::new();
    let keys = temp_dir("keys");
    let pubs: Vec<String> = (0..8).map(|i| keypair(&keys, &format!("k{i}")).1).collect();
    // The Python daemon first, alone, so the two never share google_users.
    let python_median = match python.and_then(|dir| python_new_user(&rt, &dir, &pubs)) {
        Ok(mut s) => {
            let (m, p) = median_p90(&mut s);
            println!(
                "Python daemon (google-compute-engine 2.8.13), new user + key: median {m:.2} ms, p90 {p:.2} ms (n={})",
                s.len()
            );
            Some(m)
        }
        Err(e) => {
            println!("Python daemon: not measured: {e}");
            None
        }
    };
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
    let mut lines: Vec<String> = Vec::new();
    std::thread::sleep(Duration::from_millis(500));

    // 1. New user + key, each run paired with the same useradd command line run alone right
    // after it (the floor under that figure), so a busy machine shifts both alike: the daemon's
    // own share is the median of the paired differences.
    let useradd_alone = |name: &str| {
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
            .arg(name)
            .status()
            .unwrap();
        assert!(st.success());
        t.elapsed()
    };
    let (mut s, mut floor, mut share) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let user = format!("new{i}");
        lines.push(format!("{user}:{}", pubs[i % 8]));
        let want = blob(&pubs[i % 8]);
        let t = Instant::now();
        h.set_instance_attribute("ssh-keys", &lines.join("\n"));
        until(Duration::from_secs(10), || has(&ak(&user), &want));
        let daemon_run = t.elapsed();
        std::thread::sleep(Duration::from_millis(30)); // let group changes finish
        let alone = useradd_alone(&format!("floor{i}"));
        s.push(daemon_run);
        floor.push(alone);
        share.push(daemon_run.as_secs_f64() * 1e3 - alone.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(30));
    }
    let (m, p) = median_p90(&mut s);
    println!(
        "new user + key: median {m:.2} ms, p90 {p:.2} ms (n={}){}",
        s.len(),
        python_median
            .map(|py| format!("; {:.2}x the Python daemon in this run", m / py))
            .unwrap_or_default()
    );
    let (m, p) = median_p90(&mut floor);
    println!("  (useradd alone, same command line, no daemon: median {m:.2} ms, p90 {p:.2} ms)");
    share.sort_by(f64::total_cmp);
    println!(
        "  daemon's own share above useradd alone (paired runs): median {:.2} ms",
        share[share.len() / 2]
    );
    // With BENCH_DAEMON_LOG=info,gce_accounts=debug: the same share as the daemon itself times
    // it (its pass up to useradd's start plus everything after useradd returned), free of the
    // metadata round trip and of this process's polling.
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let mut own: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("new user new"))
        .filter_map(|l| l.split("OWN_US=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|us| us / 1e3)
        .collect();
    if !own.is_empty() {
        own.sort_by(f64::total_cmp);
        println!(
            "  the daemon's own share as it times it: median {:.2} ms (n={})",
            own[own.len() / 2],
            own.len()
        );
    }

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
