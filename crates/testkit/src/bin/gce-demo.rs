//! gce-demo: the whole product on a plain Linux box, in a private sandbox (mount + network + pid
//! namespaces: private /etc, /home, /run; loopback and one veth only). It starts the metadata
//! emulator, the accounts and ip-forwarding daemons and a real sshd, pushes a short-lived key with
//! gce-ssh, logs in and runs `id`, waits for the expiry and shows the login refused, then shows a
//! forwarded IP becoming a local route and a startup script's output in the log. Every step is
//! printed with its time. Run as root: `scripts/demo`.

use gce_testkit::{Sshd, bin, daemon_command, sandbox_main, spawn_error, temp_dir, tools};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

struct Clock(Instant);

impl Clock {
    fn say(&self, msg: &str) {
        println!("[{:>7.3}s] {msg}", self.0.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }
}

fn http(addr: &str, request: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("emulator at {addr}: {e}"))?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("emulator at {addr}: {e}"))?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    Ok(resp)
}

fn put(addr: &str, path: &str, json: &str) -> Result<(), String> {
    let resp = http(
        addr,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ),
    )?;
    if !resp.starts_with("HTTP/1.1 2") {
        return Err(format!("emulator refused {path}: {resp}"));
    }
    Ok(())
}

fn get(addr: &str, path: &str) -> Result<String, String> {
    let resp = http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
        ),
    )?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Runs a program; its stdout, or one line saying why not (naming the package when the program
/// is missing).
fn sh(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| spawn_error(cmd[0], &e))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts one of our binaries.
fn spawn(cmd: &mut Command, what: &str) -> Result<Child, String> {
    cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> ExitCode {
    // Everything the demo runs, checked before two minutes of work rather than at the step that
    // needs it.
    if let Err(missing) =
        tools::require_all(&["unshare", "ip", "sshd", "ssh", "ssh-keygen", "useradd"])
    {
        eprintln!("gce-demo: {missing}");
        return ExitCode::FAILURE;
    }
    sandbox_main();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gce-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let clock = Clock(Instant::now());
    clock.say("sandbox ready: private /etc, /home, /run and network namespace (host users and routes untouched)");
    let dir = temp_dir("demo");
    let cfg = dir.join("instance_configs.cfg");
    std::fs::write(&cfg, "").map_err(|e| format!("{}: {e}", cfg.display()))?;
    let mut procs = Kill(Vec::new());

    let mut emu = spawn(
        Command::new(bin("gce-metadata-emulator"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        "gce-metadata-emulator",
    )?;
    let mut line = String::new();
    if let Some(out) = emu.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    procs.0.push(emu);
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or("the emulator did not say where it listens")?
        .to_string();
    let addr = url.trim_start_matches("http://").to_string();
    clock.say(&format!("metadata emulator listening on {url}"));

    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    sh(&[
        "ip",
        "link",
        "set",
        "eth0",
        "address",
        "42:01:0a:8a:00:07",
        "up",
    ])?;
    sh(&["ip", "link", "set", "eth0-peer", "up"])?;
    clock.say("NIC eth0 (veth) carries the metadata MAC 42:01:0a:8a:00:07");

    for daemon in ["gce-accounts-daemon", "gce-ip-forwarding-daemon"] {
        let log_path = dir.join(format!("{daemon}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = spawn(
            daemon_command(
                &bin(daemon),
                &cfg,
                &dir.join(format!("{daemon}.lock")),
                &addr,
            )
            .stderr(log),
            daemon,
        )?;
        procs.0.push(child);
    }
    let sshd = Sshd::try_start("")?;
    std::thread::sleep(Duration::from_millis(300));
    clock.say(&format!(
        "gce-accounts-daemon, gce-ip-forwarding-daemon and sshd (127.0.0.1:{}) running",
        sshd.port
    ));

    let t = Instant::now();
    let out = Command::new(bin("gce-ssh"))
        .args([
            "--endpoint",
            &url,
            "--user",
            "demo",
            "--port",
            &sshd.port.to_string(),
            "--ttl",
            "8s",
            "--push-only",
            "--timings",
        ])
        .output()
        .map_err(|e| format!("cannot run gce-ssh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gce-ssh: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    clock.say(&format!(
        "gce-ssh pushed an 8 s key for user \"demo\" and the guest confirmed it in {:.0} ms:",
        t.elapsed().as_secs_f64() * 1e3
    ));
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        println!("            {l}");
    }
    let keys = get(&addr, "/computeMetadata/v1/instance/attributes/ssh-keys")?;
    println!("            ssh-keys metadata: {}", keys.trim());
    let expire = keys
        .split("\"expireOn\":\"")
        .nth(1)
        .and_then(|s| s.get(..19))
        .ok_or("the pushed key carries no expireOn")?
        .to_string();

    let t = Instant::now();
    let login = sshd.login("demo", std::path::Path::new(&key), "id");
    if !login.status.success() {
        return Err(format!(
            "login failed: {}\n{}",
            String::from_utf8_lossy(&login.stderr).trim(),
            sshd.log()
        ));
    }
    clock.say(&format!(
        "ssh demo@127.0.0.1 id  ({:.0} ms):",
        t.elapsed().as_secs_f64() * 1e3
    ));
    println!(
        "            {}",
        String::from_utf8_lossy(&login.stdout).trim()
    );

    clock.say(&format!(
        "waiting for the key to expire at {expire}Z (the metadata server is not asked again)..."
    ));
    let expire_at = chrono_free_parse(&expire);
    let t = Instant::now();
    loop {
        let l = sshd.login("demo", std::path::Path::new(&key), "id");
        if !l.status.success() {
            let now = unix_ms();
            clock.say(&format!(
                "ssh after expiry refused {} ms after expireOn: {}",
                now - expire_at * 1000,
                String::from_utf8_lossy(&l.stderr).trim()
            ));
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the key still works 30 s after it should have expired".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let t = Instant::now();
    put(
        &addr,
        "/emulator/doc/instance/networkInterfaces/0/forwardedIps",
        r#"["10.9.8.7"]"#,
    )?;
    let route = loop {
        let r = sh(&["ip", "route", "show", "table", "local", "proto", "66"])?;
        if r.contains("10.9.8.7") {
            break r;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err("the forwarded IP's route never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    clock.say(&format!("forwarded IP 10.9.8.7 set in metadata; {:.1} ms later `ip route show table local proto 66`:", t.elapsed().as_secs_f64() * 1e3));
    println!("            {}", route.trim());

    put(
        &addr,
        "/emulator/doc/instance/attributes/startup-script",
        r##""#!/bin/bash\necho hello from the startup script\nuname -s""##,
    )?;
    let out = Command::new(bin("gce-metadata-script-runner"))
        .arg("--config")
        .arg(&cfg)
        .arg("startup")
        .env("GCE_METADATA_HOST", &addr)
        .output()
        .map_err(|e| format!("cannot run gce-metadata-script-runner: {e}"))?;
    clock.say("startup-script set in metadata; gce-metadata-script-runner startup logged:");
    let mut saw_output = false;
    for l in String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("startup-script"))
    {
        saw_output |= l.contains("hello from the startup script");
        println!("            {l}");
    }
    if !saw_output {
        return Err("the startup script's output is not in the runner's log".into());
    }
    clock.say("the accounts daemon's log tells the story:");
    let log = std::fs::read_to_string(dir.join("gce-accounts-daemon.log")).unwrap_or_default();
    for l in log.lines().filter(|l| l.contains("USER=")) {
        println!("            {l}");
    }
    let _ = std::fs::remove_file(&key);
    drop(procs);
    clock.say("done: the sandbox, its users and routes vanish with it");
    Ok(())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `YYYY-mm-ddTHH:MM:SS` (UTC) to unix seconds, without a date library.
fn chrono_free_parse(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).unwrap_or(0);
    let (y, m, d, hh, mm, ss) = (n(0..4), n(5..7), n(8..10), n(11..13), n(14..16), n(17..19));
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + hh * 3600 + mm * 60 + ss
}
