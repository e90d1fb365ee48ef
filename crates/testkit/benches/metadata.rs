//! The metadata client's figures, printed by a program (README "Performance"):
//!
//! - `recovery` (issue 9 §2): the release `gce-accounts-daemon`, with no override, finds the
//!   emulator at `169.254.169.254:80` inside a private namespace; for each outage kind the server
//!   fails for `--outage-secs` (10), and a key is pushed as it comes back. Prints "change applied
//!   N ms after the server came back" per run, then the median and worst per kind.
//!   `--daemon PATH` measures another build of the daemon (e.g. an older one) the same way.
//! - `select` (issue 10): what choosing between `169.254.169.254` and `[fd20:ce::254]` costs —
//!   the first request of a fresh client (fixed IPv4 URL vs the auto client while IPv4 answers,
//!   IPv4 unroutable, IPv4 silent), and a real daemon's start to its first applied snapshot.
//!
//! Run: `scripts/bench metadata` (= `cargo build --release --workspace --bins && cargo bench -p
//! gce-testkit --bench metadata -- [recovery|select] [--outage-secs N] [--runs N] [--daemon P]`).
//! Needs root: everything happens in a private network namespace.

use gce_metadata::{Client, ClientOptions, DEFAULT_BASE_URL};
use gce_metadata_emulator::{Emulator, Outage, RunningEmulator};
use gce_testkit::{
    BackgroundRuntime, bin, keypair, median_p90, sandbox_main, sh, temp_dir, wait_until,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    what: Vec<String>,
    outage: Duration,
    runs: usize,
    daemon: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        what: Vec::new(),
        outage: Duration::from_secs(10),
        runs: 3,
        daemon: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--outage-secs" => {
                a.outage = Duration::from_secs(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--outage-secs N"),
                )
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--daemon" => a.daemon = Some(PathBuf::from(it.next().expect("--daemon PATH"))),
            "recovery" | "select" => a.what.push(arg),
            other => panic!("unknown argument {other:?}"),
        }
    }
    if a.what.is_empty() {
        a.what = vec!["select".into(), "recovery".into()];
    }
    a
}

fn main() {
    sandbox_main();
    let args = args();
    // The metadata server's addresses, on this namespace's loopback.
    sh(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).unwrap();
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
    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(
            Emulator::with_default_doc().start_on(&["169.254.169.254:80", "[fd20:ce::254]:80"]),
        )
        .unwrap();
    for what in &args.what {
        match what.as_str() {
            "select" => select(&emu),
            "recovery" => recovery(&rt, &emu, &args),
            _ => unreachable!(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- recovery -------------------------------------------------------------------------------

fn recovery(rt: &BackgroundRuntime, emu: &RunningEmulator, args: &Args) {
    let h = emu.handle();
    let daemon_path = args
        .daemon
        .clone()
        .unwrap_or_else(|| bin("gce-accounts-daemon"));
    let dir = temp_dir("recovery");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let (_, first) = keypair(&dir, "first");
    h.set_instance_attribute("ssh-keys", &format!("bench:{first}"));
    let mut daemon = spawn(&daemon_path, &dir, "accounts", None);
    let keys = "/home/bench/.ssh/authorized_keys";
    let has = |k: &str| std::fs::read_to_string(keys).is_ok_and(|t| t.contains(k));
    assert!(
        wait_until(Duration::from_secs(20), || has(&first)).is_some(),
        "daemon did not start"
    );
    println!(
        "recovery: {} (no override: it found 169.254.169.254 by itself), outage {} s, {} run(s) per kind",
        daemon_path.display(),
        args.outage.as_secs(),
        args.runs
    );
    let kinds = [
        ("503", Outage::Status(503)),
        ("500", Outage::Status(500)),
        ("429", Outage::Status(429)),
        ("refused", Outage::Refuse),
        ("hang", Outage::Hang),
        ("dropped", Outage::Drop),
    ];
    let mut results: Vec<(&str, Vec<Duration>)> =
        kinds.iter().map(|(n, _)| (*n, Vec::new())).collect();
    let mut n = 0;
    for _ in 0..args.runs {
        for (i, (name, kind)) in kinds.iter().enumerate() {
            n += 1;
            std::thread::sleep(Duration::from_millis(1500));
            let before = h.request_count();
            h.begin_outage(*kind);
            std::thread::sleep(args.outage);
            let requests = h.request_count() - before;
            let (_, key) = keypair(&dir, &format!("k{n}"));
            h.set_instance_attribute("ssh-keys", &format!("bench:{first}\nbench:{key}"));
            h.end_outage();
            rt.block_on(h.listening());
            let back = Instant::now();
            let took = wait_until(Duration::from_secs(120), || has(&key)).map(|_| back.elapsed());
            match took {
                Some(t) => {
                    println!(
                        "  {name:>8}: change applied {:.0} ms after the server came back ({requests} request(s) during the outage)",
                        ms(t)
                    );
                    results[i].1.push(t);
                }
                None => println!("  {name:>8}: change NOT applied within 120 s"),
            }
        }
    }
    println!("recovery summary (median / worst, ms):");
    for (name, mut v) in results {
        if v.is_empty() {
            continue;
        }
        let worst = *v.iter().max().unwrap();
        let (med, _) = median_p90(&mut v);
        println!("  {name:>8}: {med:.0} / {:.0}", ms(worst));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn spawn(program: &Path, dir: &Path, tag: &str, host: Option<&str>) -> Child {
    let mut cmd = Command::new(program);
    cmd.arg("--config")
        .arg(dir.join("cfg"))
        .arg("--lock-file")
        .arg(dir.join(format!("{tag}.lock")))
        .env_remove("GCE_METADATA_HOST")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap());
    if let Some(h) = host {
        cmd.env("GCE_METADATA_HOST", h);
    }
    cmd.spawn().unwrap()
}

// ---- select ---------------------------------------------------------------------------------

fn select(_emu: &RunningEmulator) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first_request = |make: &dyn Fn() -> Client, n: usize| -> (f64, f64) {
        let mut v: Vec<Duration> = (0..n)
            .map(|_| {
                rt.block_on(async {
                    let c = make();
                    let t = Instant::now();
                    c.get_text("instance/id").await.expect("answer");
                    t.elapsed()
                })
            })
            .collect();
        median_p90(&mut v)
    };
    let fixed = || Client::new(DEFAULT_BASE_URL, ClientOptions::default()).unwrap();
    let auto = || Client::gce(ClientOptions::default()).unwrap();
    println!("select: first request of a fresh client, median / p90 (ms)");
    // Interleaved rounds, so machine noise hits both alike.
    let (mut f, mut a) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        f.push(first_request(&fixed, 200));
        a.push(first_request(&auto, 200));
    }
    let med = |v: &mut Vec<(f64, f64)>| {
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        v[v.len() / 2]
    };
    let (fm, fp) = med(&mut f);
    let (am, ap) = med(&mut a);
    println!("  fixed http://169.254.169.254/ (no decision):   {fm:.3} / {fp:.3}");
    println!(
        "  auto, IPv4 answers (one TCP connect to decide): {am:.3} / {ap:.3}  (+{:.3})",
        am - fm
    );

    // IPv6-only: IPv4 has no route at all.
    sh(&["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"]).unwrap();
    let (u, up) = first_request(&auto, 200);
    println!("  auto, no IPv4 route (IPv6-only instance):      {u:.3} / {up:.3}");
    sh(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).unwrap();

    // A real daemon, the three cases interleaved round by round so machine noise hits all alike.
    let dir = temp_dir("ready");
    std::fs::write(dir.join("cfg"), "").unwrap();
    let (mut rf, mut ra, mut r6) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..40 {
        rf.push(daemon_ready(
            &dir,
            &format!("f{i}"),
            Some("169.254.169.254"),
        ));
        ra.push(daemon_ready(&dir, &format!("a{i}"), None));
        sh(&["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"]).unwrap();
        r6.push(daemon_ready(&dir, &format!("s{i}"), None));
        sh(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).unwrap();
    }
    let (rf, rfp) = median_p90(&mut rf);
    let (ra, rap) = median_p90(&mut ra);
    let (r6, r6p) = median_p90(&mut r6);

    // IPv4 routed to a link where nobody answers (ARP goes unanswered): the head start.
    sh(&[
        "ip", "link", "add", "sil0", "type", "veth", "peer", "name", "sil1",
    ])
    .unwrap();
    sh(&["ip", "link", "set", "sil0", "up"]).unwrap();
    sh(&["ip", "link", "set", "sil1", "up"]).unwrap();
    sh(&["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"]).unwrap();
    sh(&["ip", "route", "add", "169.254.169.254/32", "dev", "sil0"]).unwrap();
    let (s, sp) = first_request(&auto, 10);
    println!(
        "  auto, IPv4 silent (routed, never answers):     {s:.3} / {sp:.3}  (250 ms head start)"
    );
    sh(&["ip", "route", "del", "169.254.169.254/32", "dev", "sil0"]).unwrap();
    sh(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).unwrap();

    println!("select: gce-clock-skew-daemon start to first applied snapshot, median / p90 (ms)");
    println!("  GCE_METADATA_HOST=169.254.169.254 (no decision): {rf:.2} / {rfp:.2}");
    println!(
        "  no override, IPv4 answers:                       {ra:.2} / {rap:.2}  (+{:.2})",
        ra - rf
    );
    println!("  no override, IPv6-only:                          {r6:.2} / {r6p:.2}");
}

/// One start of the release clock-skew daemon until it logs its first apply.
fn daemon_ready(dir: &Path, tag: &str, host: Option<&str>) -> Duration {
    let t = Instant::now();
    let mut child = spawn(&bin("gce-clock-skew-daemon"), dir, tag, host);
    let log = dir.join(format!("{tag}.log"));
    // Polled every 100 µs: wait_until's 2 ms step would hide what is measured here.
    let took = loop {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("first snapshot applied")) {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "daemon not ready");
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    took
}
