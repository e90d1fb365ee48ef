//! gce-instance-setup on a boot that regenerates nothing (the instance id is the recorded one):
//! wall time from spawning the real binary to its exit, against the emulator, in a private
//! namespace (its /etc, hostname and network are the sandbox's). Every run does the whole job: it
//! reads the metadata, compares the id, publishes the three host keys to guest attributes, checks
//! the hostname, /etc/hostname and /etc/hosts. Target: ≤ 20 ms.
//!
//! Run: `cargo bench -p gce-instance-setup --bench no_regen` (as root).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gce_metadata_emulator::Emulator;
use gce_testkit::{BackgroundRuntime, daemon_command, median_p90, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_gce-instance-setup");
const RUNS: usize = 300;

/// CPU time (user + system) of all waited-for children so far: unlike wall time, barely moved by
/// other load on the machine.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    gce_testkit::sandbox_main();
    let dev = |p| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev("/etc"),
        dev("/"),
        "/etc is not private: refusing to run"
    );
    let _ = std::fs::remove_file("/etc/google_instance_id");

    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let dir = temp_dir("no-regen-bench");
    let config = dir.join("instance_configs.cfg");
    std::fs::write(&config, "").unwrap();
    let run = || {
        let t = Instant::now();
        let status = daemon_command(
            Path::new(BIN),
            &config,
            &dir.join("lock"),
            &emu.metadata_host(),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
        assert!(status.success(), "gce-instance-setup failed");
        t.elapsed()
    };

    // First boot of the instance: three new keys (RSA dominates), for context only.
    let first = run();
    assert!(Path::new("/etc/google_instance_id").exists());
    let keys_before = std::fs::read("/etc/ssh/ssh_host_ed25519_key.pub").unwrap();
    for _ in 0..10 {
        run();
    }
    let cpu_before = children_cpu();
    let mut samples: Vec<Duration> = (0..RUNS).map(|_| run()).collect();
    let cpu_per_run = (children_cpu() - cpu_before) / RUNS as u32;
    assert_eq!(
        std::fs::read("/etc/ssh/ssh_host_ed25519_key.pub").unwrap(),
        keys_before,
        "an ordinary boot regenerated a key"
    );
    assert!(
        emu.handle()
            .guest_attribute("hostkeys", "ssh-ed25519")
            .is_some(),
        "host keys were not published"
    );
    let (median, p90) = median_p90(&mut samples);
    let max = samples.last().unwrap().as_secs_f64() * 1e3;

    // The floor: spawning a program that does nothing.
    let mut floor: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            Command::new("/bin/true").status().unwrap();
            t.elapsed()
        })
        .collect();
    let (floor_median, _) = median_p90(&mut floor);

    println!(
        "gce-instance-setup, boot that regenerates nothing: median {median:.2} ms, p90 {p90:.2} ms, max {max:.2} ms (n={RUNS}; target ≤ 20 ms)"
    );
    println!(
        "  CPU time (user + system) per run: {:.2} ms; spawning /bin/true for comparison: median {floor_median:.2} ms",
        cpu_per_run.as_secs_f64() * 1e3
    );
    println!(
        "  first boot (ecdsa, ed25519, rsa keys made with ssh-keygen): {:.0} ms",
        first.as_secs_f64() * 1e3
    );
}
