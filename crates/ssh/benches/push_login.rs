//! gce-ssh benchmark: push → login → remote command done, with host-key pinning on, through the
//! release binaries inside a private namespace: the emulator's Compute API, the accounts daemon
//! installing the key (real useradd), a real sshd whose host key is published in `hostkeys/` as
//! Google's agent does, so gce-ssh pins it and runs ssh with strict host-key checking.
//!
//! Prints medians for an existing user and for a new user each time, and the step timings of
//! one run. `GCE_SSH_BENCH_COMPARE=/path/to/another/gce-ssh` interleaves runs of that binary
//! (e.g. an older build) with this one, so both see the same machine load.
//!
//! Run: `scripts/bench ssh` (or `cargo build --release --workspace --bins &&
//! cargo bench -p gce-ssh --bench push_login`). Needs root.

use gce_metadata_emulator::Emulator;
use gce_testkit::{Sshd, bin, daemon_command, median_p90, sandbox_main, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(gce_ssh: &Path, url: &str, user: &str, port: u16, timings: bool) -> (Duration, Output) {
    let t = Instant::now();
    let mut cmd = Command::new(gce_ssh);
    cmd.args([
        "--endpoint",
        url,
        "--user",
        user,
        "--port",
        &port.to_string(),
    ])
    .args(["--ttl", "5m"]);
    if timings {
        cmd.arg("--timings");
    }
    let out = cmd
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        gce_ssh.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (took, out)
}

fn main() {
    sandbox_main();
    let rt = gce_testkit::BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let h = emu.handle();
    let dir = temp_dir("ssh-bench");
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
    let host_key = std::fs::read_to_string(sshd.dir.join("hostkey.pub")).unwrap();
    let mut hk = host_key.split_whitespace();
    h.set_guest_attribute("hostkeys", hk.next().unwrap(), hk.next().unwrap());
    std::thread::sleep(Duration::from_millis(500));

    let mut binaries: Vec<(String, PathBuf)> = vec![(
        "gce-ssh (host keys pinned, strict checking)".into(),
        bin("gce-ssh"),
    )];
    if let Some(other) = std::env::var_os("GCE_SSH_BENCH_COMPARE") {
        binaries.push((
            format!("compare ({})", Path::new(&other).display()),
            PathBuf::from(other),
        ));
    }
    let url = emu.url();

    // One run with --timings, to show where the time goes.
    let (_, out) = run(&binaries[0].1, &url, "warm", sshd.port, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("guest confirmed the key") && !stderr.contains("WARNING"),
        "pinning on and the key confirmed: {stderr}"
    );
    println!("one run, gce-ssh --timings:");
    for l in stderr.lines() {
        println!("    {l}");
    }

    for (b, (_, path)) in binaries.iter().enumerate() {
        run(path, &url, &format!("same{b}"), sshd.port, false);
    }
    const N: usize = 15;
    for (label, what) in [("existing user", false), ("new user each time", true)] {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); binaries.len()];
        for i in 0..N {
            for (b, (_, path)) in binaries.iter().enumerate() {
                let user = if what {
                    format!("u{b}x{i}")
                } else {
                    format!("same{b}")
                };
                samples[b].push(run(path, &url, &user, sshd.port, false).0);
            }
        }
        for (b, (name, _)) in binaries.iter().enumerate() {
            let (m, p) = median_p90(&mut samples[b]);
            println!(
                "{name}: push -> login -> command done ({label}): median {m:.0} ms, p90 {p:.0} ms (n={N})"
            );
        }
    }
    daemon.kill().unwrap();
    let _ = daemon.wait();
}
