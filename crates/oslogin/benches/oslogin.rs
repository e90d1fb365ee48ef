//! OS Login benchmark: prints the figures of issue 11's performance section, with the release
//! `gce-accounts-daemon`, Google's real OS Login package (extracted by scripts/setup, laid over
//! /usr inside the sandbox only), a real sshd with `UsePAM yes` and real ssh logins, against the
//! emulator at 169.254.169.254:80 inside a private network namespace.
//!
//! 1. `enable-oslogin` set → the host configured (the journal records the finished switch,
//!    sshd reloaded) and → the first OS Login login completed.
//! 2. The cost of an OS Login login over a metadata-key login on the same sshd, with the time
//!    of Google's pieces alone (`google_authorized_keys`, an NSS lookup through
//!    `libnss_oslogin`), and the daemon's CPU time during the OS Login logins (ours is not on
//!    the login path: it should stay at zero).
//!
//! Run: `scripts/bench oslogin` (or `cargo build --release --workspace --bins &&
//! cargo bench -p gce-oslogin --bench oslogin`). Needs root.

use gce_metadata_emulator::Emulator;
use gce_testkit::oslogin::{package_version, setup_world, start_system_sshd, switch_finished};
use gce_testkit::{
    BackgroundRuntime, bin, daemon_command, keypair, median_p90, sandbox_main, temp_dir,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;
const LOGINS: usize = 20;

fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            let log = std::fs::read_to_string("/run/gce-testkit/daemon.log").unwrap_or_default();
            panic!("timed out; daemon log:\n{log}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    t.elapsed()
}

fn until_ok(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Some(t.elapsed())
}

/// CPU time (user + system) of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit(')').next().unwrap();
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the comm.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn report(label: &str, samples: &mut [Duration]) -> f64 {
    let (med, p90) = median_p90(samples);
    println!(
        "{label}: median {med:.1} ms, p90 {p90:.1} ms (n={})",
        samples.len()
    );
    med
}

fn timed(mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(f(), "command failed");
    t.elapsed()
}

fn main() {
    sandbox_main();
    setup_world();
    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("169.254.169.254:80"))
        .unwrap();
    let h = emu.handle();
    let sshd = start_system_sshd();
    let dir = temp_dir("bench-oslogin");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let log = std::fs::File::create("/run/gce-testkit/daemon.log").unwrap();
    let mut daemon = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock"),
        "169.254.169.254:80",
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    println!(
        "google-compute-engine-oslogin {} (Debian, extracted), OpenSSH sshd with UsePAM yes",
        package_version()
    );

    let keys = temp_dir("bench-keys");
    let (carol, carol_pub) = keypair(&keys, "carol");
    h.set_instance_attribute("ssh-keys", &format!("carol:{carol_pub}"));
    let (alice, alice_pub) = keypair(&keys, "alice");
    h.oslogin_import_key("alice@example.com", &alice_pub, None)
        .unwrap();
    h.oslogin_set_policy("alice@example.com", true, false);
    let login = |user: &str, key: &Path| sshd.login(user, key, "true").status.success();
    if until_ok(Duration::from_secs(20), || login("carol", &carol)).is_none() {
        let out = sshd.login("carol", &carol, "true");
        panic!(
            "carol cannot log in: {:?} {}\n--- sshd ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            sshd.log()
        );
    }

    // 1. Switch on → configured → first OS Login login (each round from a finished switch off).
    h.set_instance_attribute("enable-oslogin", "TRUE");
    until(Duration::from_secs(20), || switch_finished(true));
    let mut configured = Vec::new();
    let mut first_login = Vec::new();
    let mut possible = Vec::new();
    let mut key_back = Vec::new();
    for _ in 0..ROUNDS {
        // Off: the host switched back and the metadata keys restored (first carol login).
        let t = Instant::now();
        h.set_instance_attribute("enable-oslogin", "FALSE");
        until(Duration::from_secs(20), || switch_finished(false));
        until(Duration::from_secs(20), || login("carol", &carol));
        key_back.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        h.set_instance_attribute("enable-oslogin", "TRUE");
        until(Duration::from_secs(20), || switch_finished(true));
        configured.push(t.elapsed());
        // Back-to-back attempts; the first that succeeds says when a login became possible.
        loop {
            let started = t.elapsed();
            if login("alice_example_com", &alice) {
                possible.push(started);
                first_login.push(t.elapsed());
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "alice never logged in"
            );
        }
    }
    println!("\n1. enable-oslogin=TRUE in metadata →");
    report(
        "   host configured (journal: switch finished, sshd reloaded)",
        &mut configured,
    );
    report(
        "   first successful OS Login login attempt started (login possible)",
        &mut possible,
    );
    report(
        "   first OS Login login completed (ssh alice_example_com true)",
        &mut first_login,
    );

    report(
        "   (enable-oslogin=FALSE → first metadata-key login completed, keys restored)",
        &mut key_back,
    );

    // 2. Login cost: metadata-key login with OS Login off, then both kinds with it on.
    h.set_instance_attribute("enable-oslogin", "FALSE");
    until(Duration::from_secs(20), || switch_finished(false));
    until(Duration::from_secs(20), || login("carol", &carol));
    std::thread::sleep(Duration::from_millis(300));
    let mut key_off: Vec<Duration> = (0..LOGINS)
        .map(|_| timed(|| login("carol", &carol)))
        .collect();
    h.set_instance_attribute("enable-oslogin", "TRUE");
    until(Duration::from_secs(20), || switch_finished(true));
    until(Duration::from_secs(20), || {
        login("alice_example_com", &alice)
    });
    let pid = daemon.id();
    // Metadata keys are taken away while OS Login is on (as Google's agent does): carol's
    // attempts are refused and still cost the sshd and Google's modules their lookups.
    let (mut os, mut key_on) = (Vec::new(), Vec::new());
    let ticks_before = cpu_ticks(pid);
    let requests_before = h.request_count();
    for _ in 0..LOGINS {
        os.push(timed(|| login("alice_example_com", &alice)));
        key_on.push(timed(|| !login("carol", &carol)));
    }
    let ticks = cpu_ticks(pid) - ticks_before;
    let requests = h.request_count() - requests_before;
    let mut gak: Vec<Duration> = (0..LOGINS)
        .map(|_| {
            timed(|| {
                Command::new("/usr/bin/google_authorized_keys")
                    .arg("alice_example_com")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .collect();
    let mut nss: Vec<Duration> = (0..LOGINS)
        .map(|_| {
            timed(|| {
                Command::new("getent")
                    .args(["passwd", "alice_example_com"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .collect();
    println!("\n2. one login (ssh USER@127.0.0.1 true), same sshd:");
    let base = report("   metadata-key user, OS Login off", &mut key_off);
    let with = report("   OS Login user, OS Login on", &mut os);
    report(
        "   metadata-key user, OS Login on (refused: the daemon removed the metadata keys)",
        &mut key_on,
    );
    println!(
        "   extra time of an OS Login login over a metadata-key login: {:.1} ms",
        with - base
    );
    report(
        "   Google's google_authorized_keys alone (users?username + authorize)",
        &mut gak,
    );
    report(
        "   getent passwd through libnss_oslogin (users?username)",
        &mut nss,
    );
    println!(
        "   during the {} OS Login and {} metadata-key logins: gce-accounts-daemon used {} CPU \
         ticks ({:.0} ms), the metadata server answered {requests} requests (all from Google's \
         package and sshd's lookups)",
        LOGINS,
        LOGINS,
        ticks,
        ticks as f64 * 1e3 / clock_ticks() as f64
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}
