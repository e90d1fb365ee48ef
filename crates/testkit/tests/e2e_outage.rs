//! Issue 9 §2 with a real daemon, in real time: `gce-accounts-daemon` (the release-shaped binary
//! as `scripts/test` builds it) in a private namespace against the emulator; the metadata server
//! fails for 10 s in each way it can (503 answers, refused connections, a server that accepts and
//! never answers — the parked long poll included —, every connection dropped); a key pushed as
//! it comes back is in `authorized_keys` within 2 s, and each outage is two log lines.

use gce_metadata_emulator::{Emulator, Outage};
use gce_testkit::{BackgroundRuntime, bin, daemon_command, keypair, sandbox, temp_dir, wait_until};
use std::process::Stdio;
use std::time::{Duration, Instant};

const KEYS: &str = "/home/outage/.ssh/authorized_keys";

#[test]
fn e2e_daemon_applies_a_change_within_2_s_after_a_10_s_outage_of_each_kind() {
    if !sandbox("e2e_daemon_applies_a_change_within_2_s_after_a_10_s_outage_of_each_kind") {
        return;
    }
    let rt = BackgroundRuntime::new();
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .unwrap();
    let h = emu.handle();
    let dir = temp_dir("outage");
    let keydir = temp_dir("outage-keys");
    let (_, first) = keypair(&keydir, "first");
    h.set_instance_attribute("ssh-keys", &format!("outage:{first}"));
    std::fs::write(dir.join("cfg"), "").unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = daemon_command(
        &bin("gce-accounts-daemon"),
        &dir.join("cfg"),
        &dir.join("lock"),
        &emu.metadata_host(),
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let has = |needle: &str| {
        std::fs::read_to_string(KEYS)
            .unwrap_or_default()
            .contains(needle)
    };
    assert!(
        wait_until(Duration::from_secs(10), || has(&first)).is_some(),
        "first key applied"
    );

    let kinds = [
        Outage::Status(503),
        Outage::Refuse,
        Outage::Hang,
        Outage::Drop,
    ];
    let mut report = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        // Let the long poll park (and, for the hang, be swallowed by it).
        std::thread::sleep(Duration::from_millis(1500));
        let before = h.request_count();
        h.begin_outage(kind);
        std::thread::sleep(Duration::from_secs(10));
        let requests = h.request_count() - before;
        let (_, key) = keypair(&keydir, &format!("after{i}"));
        h.set_instance_attribute("ssh-keys", &format!("outage:{first}\noutage:{key}"));
        h.end_outage();
        rt.block_on(h.listening());
        let back = Instant::now();
        let applied = wait_until(Duration::from_secs(10), || has(&key));
        let took = applied.map(|_| back.elapsed());
        report.push(format!("{kind:?}: applied {took:?} after the server came back, {requests} request(s) during the 10 s"));
        let took = took.unwrap_or_else(|| panic!("{kind:?}: key never applied; {report:?}"));
        assert!(
            took <= Duration::from_secs(2),
            "{kind:?}: applied {took:?} after the server came back; {report:?}"
        );
        assert!(requests <= 13, "{kind:?}: {requests} requests in 10 s");
    }
    // Let the last episode's closing line be written.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    eprintln!("{}", report.join("\n"));
    let count = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    assert_eq!(
        (count("not answering"), count("answering again")),
        (kinds.len(), kinds.len()),
        "one line when each outage starts, one when it ends:\n{log}"
    );
}
