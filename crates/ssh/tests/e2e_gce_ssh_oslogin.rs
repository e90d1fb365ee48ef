//! gce-ssh with OS Login (issue 11), end to end with Google's real OS Login package: inside a
//! private namespace the emulator answers at 169.254.169.254:80 (the package hard-codes it), the
//! real `gce-accounts-daemon` switches the host to OS Login when the *project* turns it on, a
//! real sshd with `UsePAM yes` asks Google's `google_authorized_keys` and PAM modules, and the
//! instance publishes sshd's host key in `hostkeys/`, so every login below is strictly pinned.
//!
//! gce-ssh detects OS Login from the project's metadata, imports its key through the OS Login
//! API with an expiry, logs in as the profile's POSIX user and removes the key afterwards;
//! `--no-oslogin` pushes to metadata instead and that login is refused while OS Login is on; an
//! account without the `login` role is refused with a clear error; the instance's
//! `enable-oslogin=FALSE` overrides the project's and a metadata-key login works again.

use gce_metadata_emulator::{Emulator, EmulatorHandle, RunningEmulator};
use gce_testkit::oslogin::{setup_world, start_system_sshd, wait_switch_finished};
use gce_testkit::{BackgroundRuntime, Sshd, bin, daemon_command, sandbox, temp_dir};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const MDS: &str = "169.254.169.254:80";
const ALICE: &str = "alice@example.com";
const ALICE_USER: &str = "alice_example_com";
const BOB: &str = "bob@example.com";

struct World {
    _rt: BackgroundRuntime,
    _emu: RunningEmulator,
    h: EmulatorHandle,
    sshd: Sshd,
    dir: PathBuf,
    daemon: Child,
}

impl World {
    fn new() -> World {
        setup_world();
        let rt = BackgroundRuntime::new();
        let emu = rt
            .block_on(Emulator::with_default_doc().start(MDS))
            .expect("emulator on 169.254.169.254:80");
        let h = emu.handle();
        let sshd = start_system_sshd();
        // The instance publishes its sshd's host key, as our instance setup does.
        let host_key = std::fs::read_to_string(sshd.dir.join("hostkey.pub")).unwrap();
        let mut hk = host_key.split_whitespace();
        h.set_guest_attribute("hostkeys", hk.next().unwrap(), hk.next().unwrap());
        let dir = temp_dir("gce-ssh-oslogin");
        std::fs::write(dir.join("cfg"), "").unwrap();
        let daemon = daemon_command(
            &bin("gce-accounts-daemon"),
            &dir.join("cfg"),
            &dir.join("lock"),
            MDS,
        )
        .arg("--verbose")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
        World {
            _rt: rt,
            _emu: emu,
            h,
            sshd,
            dir,
            daemon,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Waits until the daemon's journal records a finished switch to `on`.
    fn wait_switched(&self, on: bool) {
        wait_switch_finished(on, || self.log());
    }

    fn gce_ssh(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("gce-ssh"))
            .args(["--endpoint", &format!("http://{MDS}")])
            .args(["--port", &self.sshd.port.to_string(), "--timings"])
            .args(args)
            .env_remove("GCE_SSH_ACCOUNT")
            .env_remove("GCE_SSH_OSLOGIN_ENDPOINT")
            .env_remove("GCE_SSH_KNOWN_HOSTS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "--- gce-ssh {args:?}: {} ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn keys_of(&self, email: &str) -> Vec<String> {
        self.h
            .oslogin_user(email)
            .map(|u| u.keys.values().map(|k| k.key.clone()).collect())
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn usec_from_now(secs: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_micros() as i64 + secs * 1_000_000) as u64
}

#[test]
fn e2e_gce_ssh_oslogin_detects_imports_logs_in_as_the_posix_user_and_cleans_up() {
    if !sandbox("e2e_gce_ssh_oslogin_detects_imports_logs_in_as_the_posix_user_and_cleans_up") {
        return;
    }
    let w = World::new();
    // OS Login from the project's metadata only (the default instance says FALSE, which would
    // win): gce-ssh must read the project to know.
    w.h.remove_instance_attribute("enable-oslogin");
    w.h.set_project_attribute("enable-oslogin", "TRUE");
    w.wait_switched(true);
    // The switch is reported only once the reloaded sshd listens again: the one ssh attempt
    // gce-ssh makes below cannot meet a re-executing sshd.
    assert!(w.log().contains("listening again after"), "{}", w.log());
    w.h.oslogin_set_policy(ALICE, true, false);
    // A key an earlier gce-ssh run left behind, expired: removed along with this run's.
    let (_, stale) = gce_testkit::keypair(&w.dir, "gce-ssh");
    w.h.oslogin_import_key(ALICE, &stale, Some(usec_from_now(-60)))
        .unwrap();
    // The user's own key stays whatever happens.
    let (_, own) = gce_testkit::keypair(&w.dir, "alice-laptop");
    w.h.oslogin_import_key(ALICE, &own, None).unwrap();

    let out = w.gce_ssh(&[
        "--account",
        ALICE,
        "--user",
        "bob",
        "--ttl",
        "10m",
        "--",
        "id -un; echo $HOME",
    ]);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "{err}\n--- sshd ---\n{}",
        w.sshd.log()
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [ALICE_USER, "/home/alice_example_com"],
        "{err}"
    );
    assert!(
        err.contains("OS Login on in metadata: account alice@example.com (from --account)"),
        "{err}"
    );
    assert!(
        err.contains("using OS Login user alice_example_com instead of the requested user bob"),
        "{err}"
    );
    assert!(err.contains("1 expired gce-ssh key(s) to remove"), "{err}");
    assert!(
        !err.contains("WARNING"),
        "host keys published: strict pinning, no trust on first use: {err}"
    );
    assert!(err.contains("session key removed"), "{err}");
    // The imported key and the stale one are gone; the user's own key stays.
    assert_eq!(w.keys_of(ALICE), [own]);
    // Nothing went to instance metadata.
    assert_eq!(w.h.doc()["instance"]["attributes"].get("ssh-keys"), None);

    // --push-only keeps the key in the profile, with the expiry asked for.
    let out = w.gce_ssh(&["--account", ALICE, "--ttl", "90s", "--push-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("key kept (in the OS Login profile of alice@example.com until"),
        "{}",
        stderr(&out)
    );
    let user = w.h.oslogin_user(ALICE).unwrap();
    let kept: Vec<_> = user
        .keys
        .values()
        .filter(|k| k.key.ends_with(" gce-ssh"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", user.keys);
    let left = kept[0].expiration_usec.unwrap() as i64 - usec_from_now(0) as i64;
    assert!(
        (80_000_000..=91_000_000).contains(&left),
        "expiry {left} µs from now"
    );
    let key = PathBuf::from(stdout(&out));
    let login = w.sshd.login(ALICE_USER, &key, "id -un");
    assert_eq!(stdout(&login), ALICE_USER, "{}", stderr(&login));
    let _ = std::fs::remove_dir_all(key.parent().unwrap());

    // --no-oslogin: the key goes to instance metadata, which the guest ignores under OS Login.
    let out = w.gce_ssh(&[
        "--no-oslogin",
        "--user",
        "carol",
        "--ready-timeout",
        "2s",
        "--",
        "true",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("warning: OS Login is on for instance vm0 but --no-oslogin"),
        "{err}"
    );
    assert!(
        err.contains("OS Login is on for this instance")
            && err.contains("run without --no-oslogin"),
        "{err}"
    );
    let ssh_keys = w.h.doc()["instance"]["attributes"]["ssh-keys"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ssh_keys.starts_with("carol:ssh-ed25519 "), "{ssh_keys}");

    // An account without the login role: imported, but sshd refuses, and gce-ssh says why.
    w.h.oslogin_add_user(BOB);
    let out = w.gce_ssh(&["--account", BOB, "--", "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("sshd refused OS Login user bob_example_com (account bob@example.com)")
            && err.contains("roles/compute.osLogin"),
        "{err}"
    );
    assert!(
        w.keys_of(BOB).is_empty(),
        "the refused session's key is removed too"
    );

    // The instance's FALSE overrides the project's TRUE: the guest switches back to metadata
    // keys, and gce-ssh pushes there and logs in.
    w.h.set_instance_attribute("enable-oslogin", "FALSE");
    w.wait_switched(false);
    let out = w.gce_ssh(&["--user", "carol", "--", "id", "-un"]);
    let err = stderr(&out);
    assert_eq!(stdout(&out), "carol", "{err}\n{}", w.log());
    assert!(err.contains("guest confirmed the key"), "{err}");
    assert!(!err.contains("OS Login"), "{err}");
}
