//! OS Login end to end with Google's real package (issue 11, "Proven with the real package"):
//! the real `gce-accounts-daemon` switches the host; Google's `google_authorized_keys`, NSS
//! modules and PAM modules (Debian bookworm's google-compute-engine-oslogin, extracted by
//! scripts/setup and laid over /usr inside the sandbox only) resolve users and keys from the
//! emulator answering at 169.254.169.254:80 inside the sandbox's network namespace; a real sshd
//! with `UsePAM yes` and real ssh logins decide. Each test runs in its own private mount, net,
//! pid and UTS namespace with a private /etc, /home, /run and /var.

use gce_metadata_emulator::{Emulator, EmulatorHandle, RunningEmulator};
use gce_testkit::oslogin::{
    SWITCH_JOURNAL, SWITCHED_PATHS, setup_world, start_system_sshd, wait_switch_finished,
};
use gce_testkit::{BackgroundRuntime, Sshd, bin, daemon_command, keypair, sandbox, temp_dir};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ALICE: &str = "alice@example.com";
const ALICE_USER: &str = "alice_example_com";
const BOB: &str = "bob@example.com";
const BOB_USER: &str = "bob_example_com";

struct World {
    _rt: BackgroundRuntime,
    _emu: RunningEmulator,
    h: EmulatorHandle,
    sshd: Sshd,
    dir: PathBuf,
    daemon: Option<Child>,
}

/// A path's bytes, or how it is a directory, or absent.
fn state_of(path: &str) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        return Some(format!("directory {:o}", meta.permissions().mode()).into_bytes());
    }
    std::fs::read(path).ok()
}

fn snapshot() -> Vec<(&'static str, Option<Vec<u8>>)> {
    SWITCHED_PATHS.iter().map(|p| (*p, state_of(p))).collect()
}

fn usec_from_now(secs: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_micros() as i64 + secs * 1_000_000) as u64
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl World {
    /// The OS Login world (package, /var, 169.254.169.254) with `with_package`; sshd started;
    /// OS Login off in metadata; the daemon not started yet.
    fn new(with_package: bool, config: &str) -> World {
        if with_package {
            setup_world();
        } else {
            gce_testkit::oslogin::writable_var().expect("writable /var");
            gce_testkit::oslogin::metadata_address().expect("metadata address");
        }
        let rt = BackgroundRuntime::new();
        let emu = rt
            .block_on(Emulator::with_default_doc().start("169.254.169.254:80"))
            .expect("emulator on 169.254.169.254:80");
        let h = emu.handle();
        let sshd = start_system_sshd();
        let dir = temp_dir("oslogin");
        std::fs::write(dir.join("instance_configs.cfg"), config).unwrap();
        World {
            _rt: rt,
            _emu: emu,
            h,
            sshd,
            dir,
            daemon: None,
        }
    }

    fn start_daemon(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = daemon_command(
            &bin("gce-accounts-daemon"),
            &self.dir.join("instance_configs.cfg"),
            &self.dir.join("daemon.lock"),
            "169.254.169.254:80",
        );
        cmd.arg("--verbose").stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.daemon = Some(cmd.spawn().expect("start daemon"));
    }

    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Waits for the daemon to exit by itself; returns how.
    fn wait_daemon_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.daemon.take().expect("daemon running");
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                t.elapsed() < timeout,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn login(&self, user: &str, key: &Path, cmd: &str) -> Output {
        self.sshd.login(user, key, cmd)
    }

    /// Polls until `user` logs in with `key` and `id -un` says so.
    fn wait_login(&self, user: &str, key: &Path) -> Duration {
        let t = Instant::now();
        loop {
            let out = self.login(user, key, "id -un");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == user {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{user} could not log in: {}\n--- daemon ---\n{}\n--- sshd ---\n{}",
                text(&out),
                self.log(),
                self.sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_refused(&self, user: &str, key: &Path, why: &str) {
        let out = self.login(user, key, "true");
        assert!(
            !out.status.success(),
            "{why}: {user} logged in: {}\n--- sshd ---\n{}",
            text(&out),
            self.sshd.log()
        );
    }

    fn set_oslogin(&self, on: bool) {
        self.h
            .set_instance_attribute("enable-oslogin", if on { "TRUE" } else { "FALSE" });
    }

    /// Waits until the journal records a finished switch to `on`.
    fn wait_switched(&self, on: bool) {
        wait_switch_finished(on, || self.log());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// A metadata-key user (managed by the accounts daemon), to show metadata-key logins around the
/// switch.
fn metadata_user(w: &World, dir: &Path) -> PathBuf {
    let (key, public) = keypair(dir, "carol");
    w.h.set_instance_attribute("ssh-keys", &format!("carol:{public}"));
    w.wait_login("carol", &key);
    key
}

#[test]
fn e2e_oslogin_login_sudo_revocation_and_expiry_with_googles_package() {
    if !sandbox("e2e_oslogin_login_sudo_revocation_and_expiry_with_googles_package") {
        return;
    }
    let mut w = World::new(true, "");
    w.start_daemon(&[]);
    let keys = temp_dir("keys");
    metadata_user(&w, &keys);

    let (alice_key, alice_pub) = keypair(&keys, "alice");
    let (alice_old, alice_old_pub) = keypair(&keys, "alice-old");
    let (bob_key, bob_pub) = keypair(&keys, "bob");
    w.h.oslogin_import_key(ALICE, &alice_pub, Some(usec_from_now(3600)))
        .unwrap();
    // An OS Login key past its expirationTimeUsec.
    w.h.oslogin_import_key(ALICE, &alice_old_pub, Some(usec_from_now(-60)))
        .unwrap();
    w.h.oslogin_import_key(BOB, &bob_pub, None).unwrap();
    w.h.oslogin_set_policy(ALICE, true, false);
    w.h.oslogin_set_policy(BOB, true, true);
    w.h.oslogin_set_group("devs", &[ALICE, BOB]);

    w.set_oslogin(true);
    w.wait_switched(true);
    let took = w.wait_login(ALICE_USER, &alice_key);
    eprintln!("first OS Login login possible {took:?} after the switch finished");

    // NSS resolves the user from the metadata server; PAM made the home directory.
    let id = w.login(ALICE_USER, &alice_key, "id -u; echo $HOME; pwd");
    let out = String::from_utf8_lossy(&id.stdout).to_string();
    let uid = w.h.oslogin_user(ALICE).unwrap().uid;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            uid.to_string().as_str(),
            "/home/alice_example_com",
            "/home/alice_example_com"
        ],
        "{}",
        text(&id)
    );

    // login only: no sudo.
    let sudo = w.login(ALICE_USER, &alice_key, "sudo -n true");
    assert!(
        !sudo.status.success(),
        "alice must not sudo: {}",
        text(&sudo)
    );
    // adminLogin: sudo works (pam_oslogin_admin wrote the per-user sudoers file).
    let sudo = w.login(BOB_USER, &bob_key, "sudo -n id -u");
    assert!(
        sudo.status.success(),
        "bob sudo: {}\n{}",
        text(&sudo),
        w.sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&sudo.stdout).trim(), "0");
    assert!(Path::new("/var/google-sudoers.d/bob_example_com").exists());
    assert!(!Path::new("/var/google-sudoers.d/alice_example_com").exists());

    // A key past expirationTimeUsec is refused; the user's valid key still works.
    w.assert_refused(ALICE_USER, &alice_old, "expired OS Login key");
    w.wait_login(ALICE_USER, &alice_key);

    // Revoking login refuses the next login.
    w.h.oslogin_set_policy(ALICE, false, false);
    w.assert_refused(ALICE_USER, &alice_key, "login revoked");
    // Revoking adminLogin takes sudo away at the next login.
    w.h.oslogin_set_policy(BOB, true, false);
    let sudo = w.login(BOB_USER, &bob_key, "sudo -n true");
    assert!(!sudo.status.success(), "bob after revoke: {}", text(&sudo));
    assert!(!Path::new("/var/google-sudoers.d/bob_example_com").exists());

    // The NSS cache was filled by google_oslogin_nss_cache (passwd first, then groups).
    let t = Instant::now();
    let cached = |file: &str, what: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .contains(what)
    };
    while !cached("/etc/oslogin_passwd.cache", BOB_USER)
        || !cached("/etc/oslogin_group.cache", "devs:")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "NSS cache not filled: groups {:?}",
            std::fs::read_to_string("/etc/oslogin_group.cache")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // OS Login groups reach the session (NSS initgroups from groups?email=, names from the
    // group cache).
    let id = w.login(BOB_USER, &bob_key, "id -Gn");
    let names = String::from_utf8_lossy(&id.stdout).to_string();
    assert!(
        names.split_whitespace().any(|g| g == "devs"),
        "bob's groups: {}",
        text(&id)
    );
}

#[test]
fn e2e_oslogin_off_restores_every_file_and_metadata_key_logins_then_on_again() {
    if !sandbox("e2e_oslogin_off_restores_every_file_and_metadata_key_logins_then_on_again") {
        return;
    }
    let mut w = World::new(true, "");
    w.start_daemon(&[]);
    let keys = temp_dir("keys");
    let carol = metadata_user(&w, &keys);
    let before = snapshot();

    let (alice_key, alice_pub) = keypair(&keys, "alice");
    w.h.oslogin_import_key(ALICE, &alice_pub, None).unwrap();
    w.h.oslogin_set_policy(ALICE, true, false);
    w.set_oslogin(true);
    w.wait_switched(true);
    w.wait_login(ALICE_USER, &alice_key);
    let on = snapshot();
    for (path, bytes) in &on[..7] {
        assert!(bytes.is_some(), "{path} exists while OS Login is on");
    }
    let sshd_config = String::from_utf8(on[0].1.clone().unwrap()).unwrap();
    assert!(
        sshd_config.starts_with("#### Google OS Login control. Do not edit this section. ####\nAuthorizedKeysCommand /usr/bin/google_authorized_keys\nAuthorizedKeysCommandUser root\n"),
        "{sshd_config}"
    );
    assert!(sshd_config.contains(gce_testkit::oslogin::ADMIN_SSHD_TAIL));

    w.set_oslogin(false);
    w.wait_switched(false);
    assert_eq!(snapshot(), before, "every file as it was, byte for byte");
    w.wait_login("carol", &carol);
    w.assert_refused(ALICE_USER, &alice_key, "OS Login off");

    // On again works, and a restart while on changes nothing.
    w.set_oslogin(true);
    w.wait_switched(true);
    w.wait_login(ALICE_USER, &alice_key);
    let again = snapshot();
    w.stop_daemon();
    w.start_daemon(&[]);
    w.wait_switched(true);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(snapshot()[..4], again[..4], "idempotent across restarts");
    assert_eq!(
        w.log()
            .matches("switching the host's OS Login configuration on")
            .count(),
        2,
        "{}",
        w.log()
    );
}

#[test]
fn e2e_oslogin_crash_mid_switch_is_finished_at_the_next_start() {
    if !sandbox("e2e_oslogin_crash_mid_switch_is_finished_at_the_next_start") {
        return;
    }
    let mut w = World::new(true, "");
    w.start_daemon(&[]);
    let keys = temp_dir("keys");
    let carol = metadata_user(&w, &keys);
    let before = snapshot();
    w.stop_daemon();

    let (alice_key, alice_pub) = keypair(&keys, "alice");
    w.h.oslogin_import_key(ALICE, &alice_pub, None).unwrap();
    w.h.oslogin_set_policy(ALICE, true, false);
    w.set_oslogin(true);
    // Crash after 4 edits of the switch on: the two directories, the sudoers include and
    // nsswitch.conf are done; PAM, group.conf and sshd_config are not.
    w.start_daemon(&[("GCE_OSLOGIN_ABORT_AFTER_EDITS", "4")]);
    let st = w.wait_daemon_exit(Duration::from_secs(20));
    assert_eq!(st.signal(), Some(6), "aborted: {st:?}");
    let half = snapshot();
    assert_ne!(half[1], before[1], "nsswitch.conf edited");
    assert_eq!(half[2], before[2], "PAM not yet");
    assert_eq!(half[0], before[0], "sshd_config not yet");
    let j = std::fs::read_to_string(SWITCH_JOURNAL).unwrap();
    assert!(j.contains("\"pending\": {"), "intent recorded: {j}");

    // The next start finishes the switch from the journal even with the metadata server
    // unreachable, and reloads sshd.
    w.h.pause();
    w.start_daemon(&[]);
    w.wait_switched(true);
    assert!(w.log().contains("an OS Login switch was interrupted"));
    let done = snapshot();
    assert_ne!(done[0], before[0]);
    assert_ne!(done[2], before[2]);
    w.h.resume();
    w.wait_login(ALICE_USER, &alice_key);

    // A crash in the middle of switching off: sshd_config and PAM restored, the rest not.
    w.stop_daemon();
    w.start_daemon(&[("GCE_OSLOGIN_ABORT_AFTER_EDITS", "2")]);
    std::thread::sleep(Duration::from_millis(300));
    w.set_oslogin(false);
    let st = w.wait_daemon_exit(Duration::from_secs(20));
    assert_eq!(st.signal(), Some(6), "aborted: {st:?}");
    let half = snapshot();
    assert_eq!(half[0], before[0], "sshd_config restored first");
    assert_ne!(half[1], before[1], "nsswitch.conf not yet");
    w.start_daemon(&[]);
    w.wait_switched(false);
    assert_eq!(snapshot(), before, "every file restored after the restart");
    w.wait_login("carol", &carol);
    w.assert_refused(ALICE_USER, &alice_key, "OS Login off");
}

#[test]
fn e2e_oslogin_without_the_package_names_it_at_each_start_and_touches_nothing() {
    if !sandbox("e2e_oslogin_without_the_package_names_it_at_each_start_and_touches_nothing") {
        return;
    }
    let mut w = World::new(false, "");
    let before = snapshot();
    w.set_oslogin(true);
    w.start_daemon(&[]);
    let t = Instant::now();
    while !w.log().contains("install google-compute-engine-oslogin") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    w.stop_daemon();
    w.start_daemon(&[]);
    let t = Instant::now();
    while w
        .log()
        .matches("install google-compute-engine-oslogin")
        .count()
        < 2
    {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        snapshot(),
        before,
        "nothing points at a package that is not there"
    );
}

#[test]
fn e2e_oslogin_manage_config_false_leaves_the_files_to_configuration_management() {
    if !sandbox("e2e_oslogin_manage_config_false_leaves_the_files_to_configuration_management") {
        return;
    }
    let mut w = World::new(true, "[OSLogin]\nmanage_config = false\n");
    let before = snapshot();
    w.start_daemon(&[]);
    w.set_oslogin(true);
    let t = Instant::now();
    let said = "[OSLogin] manage_config = false";
    while !w.log().contains(said) {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    w.set_oslogin(false);
    std::thread::sleep(Duration::from_millis(300));
    w.set_oslogin(true);
    std::thread::sleep(Duration::from_millis(300));
    let after = snapshot();
    assert_eq!(after[..7], before[..7], "config files and dirs untouched");
    assert_eq!(w.log().matches(said).count(), 1, "said once");
}

/// Signs `public` (a `.pub` file) with `ca` for `principal`, next to the key, where ssh picks
/// the certificate up by itself.
fn sign(ca: &Path, key: &Path, principal: &str) {
    gce_testkit::sh(&[
        "ssh-keygen",
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-I",
        "oslogin-test",
        "-n",
        principal,
        "-V",
        "-5m:+1h",
        key.with_extension("pub").to_str().unwrap(),
    ])
    .expect("sign");
}

#[test]
fn e2e_oslogin_certificates_trusted_ca_follows_oslogin_certificates() {
    if !sandbox("e2e_oslogin_certificates_trusted_ca_follows_oslogin_certificates") {
        return;
    }
    let mut w = World::new(true, "[OSLogin]\nca_refresh_secs = 1\n");
    let keys = temp_dir("keys");
    let (ca1, ca1_pub) = keypair(&keys, "ca1");
    let (ca2, ca2_pub) = keypair(&keys, "ca2");
    w.h.oslogin_set_ca_keys(&[&ca1_pub]);
    w.h.oslogin_set_policy(ALICE, true, false);
    // No key imported: the certificate is alice's only way in.
    let (alice_key, _) = keypair(&keys, "alice");
    sign(&ca1, &alice_key, ALICE_USER);
    w.h.set_instance_attribute("enable-oslogin-certificates", "TRUE");
    w.set_oslogin(true);
    w.start_daemon(&[]);
    w.wait_switched(true);
    let ca_file = "/etc/ssh/oslogin_trustedca.pub";
    assert_eq!(
        std::fs::read_to_string(ca_file).unwrap(),
        format!("{ca1_pub}\n")
    );
    let cfg = std::fs::read_to_string("/etc/ssh/sshd_config").unwrap();
    assert!(
        cfg.contains(&format!("TrustedUserCAKeys {ca_file}\n")),
        "{cfg}"
    );
    w.wait_login(ALICE_USER, &alice_key);

    // The CA rotates: the file follows within ca_refresh_secs; the old certificate stops
    // working, one from the new CA works.
    w.h.oslogin_set_ca_keys(&[&ca2_pub]);
    let t = Instant::now();
    while std::fs::read_to_string(ca_file).unwrap_or_default() != format!("{ca2_pub}\n") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "CA file not refreshed\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("CA rotation reached the file after {:?}", t.elapsed());
    w.assert_refused(ALICE_USER, &alice_key, "certificate from the old CA");
    sign(&ca2, &alice_key, ALICE_USER);
    w.wait_login(ALICE_USER, &alice_key);
    // A certificate for someone else's name does not let alice in.
    let (other, _) = keypair(&keys, "other");
    sign(&ca2, &other, "someone_else");
    w.assert_refused(ALICE_USER, &other, "certificate without alice as principal");

    // Certificates off: the CA file (ours) and the sshd line go.
    w.h.set_instance_attribute("enable-oslogin-certificates", "FALSE");
    let t = Instant::now();
    while Path::new(ca_file).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "CA file not removed\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.wait_switched(true);
    let cfg = std::fs::read_to_string("/etc/ssh/sshd_config").unwrap();
    assert!(!cfg.contains("TrustedUserCAKeys"), "{cfg}");
    w.assert_refused(ALICE_USER, &alice_key, "certificates off");
}
