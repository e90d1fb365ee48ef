//! gce-instance-setup end to end: the real binary, the real `ssh-keygen`, a real sshd serving the
//! keys it made and a real ssh pinning them the way gcloud does, against the metadata emulator.
//! Each test runs in its own sandbox (testkit: private mount, network, pid, UTS and IPC
//! namespaces and a private copy of /etc), so /etc/ssh, /etc/hosts, /etc/hostname and the
//! hostname it changes are the sandbox's; the parent checks afterwards that the host's are not.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gce_metadata_emulator::{EmulatorHandle, Fault, RunningEmulator};
use gce_testkit::{BackgroundRuntime, daemon_command, free_port, keypair, sandbox, temp_dir};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_gce-instance-setup");
const ID: u64 = 5737554347302044216;
const TYPES: [&str; 3] = ["ecdsa", "ed25519", "rsa"];
const ALGORITHMS: [&str; 3] = ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"];
const SSH: &str = "/etc/ssh";
const ID_FILE: &str = "/etc/google_instance_id";

/// What of the host these tests could conceivably touch: its hostname and the files. Compared
/// before and after each sandboxed run, in the parent.
fn host_fingerprint() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "hostname".to_string(),
        std::fs::read("/proc/sys/kernel/hostname").unwrap_or_default(),
    )];
    let mut paths: Vec<PathBuf> = ["/etc/hosts", "/etc/hostname", ID_FILE]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Ok(rd) = std::fs::read_dir(SSH) {
        paths.extend(rd.flatten().map(|e| e.path()));
    }
    paths.sort();
    for p in paths {
        let meta = std::fs::symlink_metadata(&p)
            .map(|m| format!("{} {} {}", m.ino(), m.mtime(), m.mtime_nsec()))
            .unwrap_or_default();
        let mut v = std::fs::read(&p).unwrap_or_default();
        v.extend_from_slice(meta.as_bytes());
        out.push((p.display().to_string(), v));
    }
    out
}

/// Runs `body` in a fresh sandbox; in the parent, checks that the host was left alone.
fn sandboxed(test: &str, body: impl FnOnce()) {
    let before = host_fingerprint();
    if sandbox(test) {
        // The sandbox's /etc is its own tmpfs copy, never the host's.
        let dev = |p| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev("/etc"),
            dev("/"),
            "/etc is not private: refusing to run"
        );
        let _ = std::fs::remove_file(ID_FILE);
        body();
        return;
    }
    assert!(
        host_fingerprint() == before,
        "the host's hostname, /etc/hosts, /etc/hostname, {ID_FILE} or /etc/ssh changed"
    );
}

struct World {
    _rt: BackgroundRuntime,
    emu: RunningEmulator,
    dir: PathBuf,
    config: PathBuf,
}

impl World {
    fn new(extra_config: &str) -> World {
        let rt = BackgroundRuntime::new();
        let emu = rt
            .block_on(gce_metadata_emulator::Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
        let dir = temp_dir("setup");
        let config = dir.join("instance_configs.cfg");
        let w = World {
            _rt: rt,
            emu,
            dir,
            config,
        };
        w.configure(extra_config);
        w
    }

    fn configure(&self, extra: &str) {
        std::fs::write(
            &self.config,
            format!("[InstanceSetup]\nmetadata_timeout_secs = 2\n{extra}"),
        )
        .unwrap();
    }

    fn h(&self) -> EmulatorHandle {
        self.emu.handle()
    }

    fn command(&self, path_prefix: Option<&Path>) -> Command {
        let mut cmd = daemon_command(
            Path::new(BIN),
            &self.config,
            &self.dir.join("setup.lock"),
            &self.emu.metadata_host(),
        );
        cmd.arg("-v")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM");
        if let Some(p) = path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", p.display()));
        }
        cmd
    }

    /// Run once; (success, log).
    fn run_with(&self, path_prefix: Option<&Path>) -> (bool, String) {
        let out: Output = self.command(path_prefix).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("--- gce-instance-setup ({}) ---\n{log}", out.status);
        (out.status.success(), log)
    }

    fn run(&self) -> (bool, String) {
        self.run_with(None)
    }

    fn attr(&self, alg: &str) -> Option<String> {
        self.h().guest_attribute("hostkeys", alg)
    }

    /// gcloud's known-hosts file for `id`, from the `hostkeys/` guest attributes.
    fn known_hosts(&self, id: u64, name: &str) -> PathBuf {
        let mut text = String::new();
        for alg in ALGORITHMS {
            let blob = self
                .attr(alg)
                .unwrap_or_else(|| panic!("hostkeys/{alg} not published"));
            text.push_str(&format!("compute.{id} {alg} {blob}\n"));
        }
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn pub_path(t: &str) -> String {
    format!("{SSH}/ssh_host_{t}_key.pub")
}

fn key_path(t: &str) -> String {
    format!("{SSH}/ssh_host_{t}_key")
}

/// (inode, mtime ns, content) of every host key file, the id file, /etc/hosts, /etc/hostname.
fn snapshot() -> BTreeMap<String, (u64, i64, i64, Vec<u8>)> {
    let mut paths: Vec<String> = TYPES
        .iter()
        .flat_map(|t| [key_path(t), pub_path(t)])
        .collect();
    paths.extend([ID_FILE, "/etc/hosts", "/etc/hostname"].map(String::from));
    paths
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            Some((
                p.clone(),
                (m.ino(), m.mtime(), m.mtime_nsec(), std::fs::read(&p).ok()?),
            ))
        })
        .collect()
}

/// The comment of a public key file.
fn comment(t: &str) -> String {
    read(pub_path(t))
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .to_string()
}

/// The private key's public half (`ssh-keygen -y`) is the `.pub` file's key: the pair is whole.
fn assert_pair_consistent(t: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-f", &key_path(t)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{t}: {:?}", out);
    let derived = String::from_utf8_lossy(&out.stdout);
    let derived: Vec<&str> = derived.split_whitespace().take(2).collect();
    let file = read(pub_path(t));
    let file: Vec<&str> = file.split_whitespace().take(2).collect();
    assert_eq!(derived, file, "{t}: private and public key differ");
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A real sshd on 127.0.0.1 serving the host keys in /etc/ssh, root logins with `user_key`.
struct HostSshd {
    port: u16,
    child: Child,
    dir: PathBuf,
    user_key: PathBuf,
}

impl HostSshd {
    fn start() -> HostSshd {
        let dir = temp_dir("hostsshd");
        let (user_key, public) = keypair(&dir, "user");
        std::fs::write(dir.join("authorized_keys"), format!("{public}\n")).unwrap();
        let port = free_port();
        let host_keys: String = TYPES
            .iter()
            .map(|t| format!("HostKey {}\n", key_path(t)))
            .collect();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1:{port}\n{host_keys}PidFile none\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nStrictModes no\n\
                 AuthorizedKeysFile {}\nLogLevel VERBOSE\n",
                dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        HostSshd {
            port,
            child,
            dir,
            user_key,
        }
    }

    /// ssh as gcloud runs it: `HostKeyAlias=compute.<id>`, strict checking, only `known_hosts`;
    /// `alg` forces the host key algorithm so each published key is proven on its own.
    fn login(&self, known_hosts: &Path, id: u64, alg: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(&self.user_key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("HostKeyAlias=compute.{id}"))
            .arg("-o")
            // An `ssh-rsa` key signs with rsa-sha2-* (SHA-1 `ssh-rsa` is off since OpenSSH 8.8).
            .arg(format!(
                "HostKeyAlgorithms={}",
                if alg == "ssh-rsa" {
                    "rsa-sha2-512,rsa-sha2-256"
                } else {
                    alg
                }
            ))
            .args(["-o", "ConnectTimeout=5", "-p"])
            .arg(self.port.to_string())
            .args(["root@127.0.0.1", "echo pinned-login-ok"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn assert_every_key_pinned(&self, known_hosts: &Path, id: u64) {
        for alg in ALGORITHMS {
            let out = self.login(known_hosts, id, alg);
            assert!(
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout).contains("pinned-login-ok"),
                "login pinning {alg} failed: {}\nsshd: {}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
            );
        }
    }
}

impl Drop for HostSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn e2e_first_boot_makes_new_host_keys_that_sshd_serves_and_gcloud_can_pin() {
    sandboxed(
        "e2e_first_boot_makes_new_host_keys_that_sshd_serves_and_gcloud_can_pin",
        || {
            let old: Vec<String> = TYPES
                .iter()
                .map(|t| std::fs::read_to_string(pub_path(t)).unwrap_or_default())
                .collect();
            let w = World::new("");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert!(
                log.contains(&format!("first boot of instance {ID}")),
                "{log}"
            );
            for (t, old) in TYPES.iter().zip(&old) {
                let new = read(pub_path(t));
                assert_ne!(&new, old, "{t} key not regenerated");
                assert_eq!(comment(t), format!("gce-instance-{ID}"));
                assert_eq!(mode(&key_path(t)), 0o600, "{t}");
                assert_eq!(mode(&pub_path(t)), 0o644, "{t}");
                assert_pair_consistent(t);
            }
            assert_eq!(read(ID_FILE), format!("{ID}\n"));
            assert_eq!(mode(ID_FILE), 0o644);
            // Published exactly as gcloud reads them: the base64 blob of each .pub.
            for (t, alg) in TYPES.iter().zip(ALGORITHMS) {
                let pubfile = read(pub_path(t));
                let mut f = pubfile.split_whitespace();
                assert_eq!(f.next(), Some(alg));
                assert_eq!(w.attr(alg).as_deref(), f.next(), "hostkeys/{alg}");
            }
            // No temp files left beside the keys.
            let leftovers: Vec<String> = std::fs::read_dir(SSH)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
            // A real sshd serves the new keys; ssh pinning each published key logs in.
            let sshd = HostSshd::start();
            sshd.assert_every_key_pinned(&w.known_hosts(ID, "known_hosts"), ID);
        },
    );
}

#[test]
fn e2e_same_instance_id_touches_nothing() {
    sandboxed("e2e_same_instance_id_touches_nothing", || {
        let w = World::new("");
        let (ok, log) = w.run();
        assert!(ok, "{log}");
        let first = snapshot();
        assert_eq!(first.len(), 9, "{:?}", first.keys());
        std::thread::sleep(Duration::from_millis(20));
        let (ok, log) = w.run();
        assert!(ok, "{log}");
        assert!(!log.contains("new SSH host key"), "{log}");
        assert!(!log.contains("first boot"), "{log}");
        assert!(
            snapshot() == first,
            "a file was rewritten on an ordinary reboot"
        );

        // A configured key that has gone missing is made again, and only that one.
        std::fs::remove_file(key_path("ecdsa")).unwrap();
        std::fs::remove_file(pub_path("ecdsa")).unwrap();
        let (ok, log) = w.run();
        assert!(ok, "{log}");
        assert!(log.contains("(missing)"), "{log}");
        assert_pair_consistent("ecdsa");
        let after = snapshot();
        for t in ["ed25519", "rsa"] {
            for p in [key_path(t), pub_path(t)] {
                assert_eq!(after[&p], first[&p], "{p} touched");
            }
        }
        assert_eq!(after[ID_FILE], first[ID_FILE]);
    });
}

#[test]
fn e2e_new_instance_id_regenerates_keys_and_the_old_pin_is_refused() {
    sandboxed(
        "e2e_new_instance_id_regenerates_keys_and_the_old_pin_is_refused",
        || {
            let w = World::new("");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            let old_known = w.known_hosts(ID, "known_hosts_old");
            let before = snapshot();

            const NEW_ID: u64 = 9_007_199_254_740_993; // above 2^53
            w.h().set("/instance/id", json!(NEW_ID));
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert!(log.contains(&format!("first boot of instance {NEW_ID} (recorded: {ID})")));
            let after = snapshot();
            for t in TYPES {
                assert_ne!(after[&pub_path(t)].3, before[&pub_path(t)].3, "{t} kept");
                assert_ne!(after[&key_path(t)].3, before[&key_path(t)].3, "{t} kept");
                assert_eq!(comment(t), format!("gce-instance-{NEW_ID}"));
                assert_pair_consistent(t);
            }
            assert_eq!(read(ID_FILE), format!("{NEW_ID}\n"));

            let sshd = HostSshd::start();
            sshd.assert_every_key_pinned(&w.known_hosts(NEW_ID, "known_hosts_new"), NEW_ID);
            // The image's keys, pinned under the old instance, no longer match.
            let out = sshd.login(&old_known, ID, "ssh-ed25519");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "old pin accepted");
            assert!(err.contains("Host key verification failed"), "{err}");
        },
    );
}

#[test]
fn e2e_metadata_down_503_or_bad_id_keeps_keys_and_records_nothing() {
    sandboxed(
        "e2e_metadata_down_503_or_bad_id_keeps_keys_and_records_nothing",
        || {
            let w = World::new("");
            let before = snapshot();
            assert!(!before.contains_key(ID_FILE));
            let hostname = read("/proc/sys/kernel/hostname");
            let check = |what: &str, (ok, log): (bool, String), took: Duration| {
                assert!(!ok, "{what}: must exit non-zero\n{log}");
                assert!(log.contains("next boot tries again"), "{what}: {log}");
                assert!(!log.contains("first boot"), "{what}: {log}");
                // Bounded: the 2 s budget plus start-up, never a hang.
                assert!(took < Duration::from_secs(6), "{what}: took {took:?}");
                assert!(snapshot() == before, "{what}: something was written");
                assert_eq!(read("/proc/sys/kernel/hostname"), hostname, "{what}");
            };

            // Unreachable: every request hangs.
            w.h().pause();
            let t = Instant::now();
            let r = w.run();
            check("paused", r, t.elapsed());
            w.h().resume();

            // 503 on every request (Google's Go agent regenerated every key here and recorded
            // an empty id).
            w.h().inject(Fault::Status {
                status: 503,
                count: 10_000,
            });
            let t = Instant::now();
            let r = w.run();
            assert!(r.1.contains("503"), "{}", r.1);
            check("503", r, t.elapsed());
            w.h().clear_faults();

            // An id of 0, or none at all.
            w.h().set("/instance/id", json!(0));
            let t = Instant::now();
            let r = w.run();
            check("id 0", r, t.elapsed());
            w.h().remove("/instance/id");
            let t = Instant::now();
            let r = w.run();
            check("no id", r, t.elapsed());

            // Connection refused: nothing listens on the port.
            let port = free_port();
            let mut cmd = w.command(None);
            cmd.env("GCE_METADATA_HOST", format!("127.0.0.1:{port}"));
            let t = Instant::now();
            let out = cmd.output().unwrap();
            check(
                "refused",
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ),
                t.elapsed(),
            );

            // Back to normal: the first boot happens now.
            w.h().set("/instance/id", json!(ID));
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(read(ID_FILE), format!("{ID}\n"));
        },
    );
}

/// A directory holding an `ssh-keygen` that misbehaves for RSA and runs the real one otherwise.
fn keygen_shim(dir: &Path, rsa_behaviour: &str) -> PathBuf {
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let real = Command::new("sh")
        .args(["-c", "command -v ssh-keygen"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do if [ \"$a\" = rsa ]; then {rsa_behaviour}; fi; done\nexec {real} \"$@\"\n"
    );
    let path = shim.join("ssh-keygen");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

#[test]
fn e2e_keygen_failing_midway_leaves_working_keys_and_the_id_unrecorded() {
    sandboxed(
        "e2e_keygen_failing_midway_leaves_working_keys_and_the_id_unrecorded",
        || {
            let w = World::new("");
            let before = snapshot();

            // No ssh-keygen at all: one line naming the package, nothing changed.
            let mut cmd = w.command(None);
            cmd.env("PATH", w.dir.join("empty"));
            let out = cmd.output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{log}");
            assert!(
                log.contains("ssh-keygen not found: install openssh-client"),
                "{log}"
            );
            assert!(
                snapshot()
                    .iter()
                    .filter(|(p, _)| p.starts_with(SSH))
                    .eq(before.iter().filter(|(p, _)| p.starts_with(SSH)))
            );
            assert!(!Path::new(ID_FILE).exists());

            let shim = keygen_shim(&w.dir, "echo 'shim: no RSA today' >&2; exit 1");
            let (ok, log) = w.run_with(Some(&shim));
            assert!(!ok, "{log}");
            assert!(log.contains("no RSA today"), "{log}");
            assert!(log.contains("instance id is not recorded"), "{log}");
            assert!(!Path::new(ID_FILE).exists(), "id recorded after a failure");
            let mid = snapshot();
            assert_eq!(mid[&key_path("rsa")], before[&key_path("rsa")]);
            assert_eq!(mid[&pub_path("rsa")], before[&pub_path("rsa")]);
            for t in TYPES {
                assert_pair_consistent(t);
            }
            for t in ["ecdsa", "ed25519"] {
                assert_eq!(comment(t), format!("gce-instance-{ID}"));
            }
            // sshd works with what is there, and every published key is the one it serves.
            {
                let sshd = HostSshd::start();
                sshd.assert_every_key_pinned(&w.known_hosts(ID, "kh_mid"), ID);
            }

            // Next boot: only the missing piece is made; the keys already made stay.
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            let after = snapshot();
            assert_ne!(after[&pub_path("rsa")].3, before[&pub_path("rsa")].3);
            for t in ["ecdsa", "ed25519"] {
                assert_eq!(after[&key_path(t)], mid[&key_path(t)], "{t} made twice");
                assert_eq!(after[&pub_path(t)], mid[&pub_path(t)], "{t} made twice");
            }
            assert_eq!(read(ID_FILE), format!("{ID}\n"));

            // Killed in the middle of a generation (new instance id): every key stays whole,
            // the id stays the old one, and the next run cleans up and finishes.
            const NEW_ID: u64 = 77;
            w.h().set("/instance/id", json!(NEW_ID));
            let pidfile = w.dir.join("keygen.pid");
            let shim = keygen_shim(
                &w.dir,
                &format!("echo $$ > {}; sleep 60", pidfile.display()),
            );
            let mut child = w
                .command(Some(&shim))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // `>` creates the file before echo fills it: wait for a whole pid.
            let t = Instant::now();
            let shim_pid: i32 = loop {
                let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
                if let Ok(pid) = text.trim().parse() {
                    break pid;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "shim never ran");
                std::thread::sleep(Duration::from_millis(5));
            };
            child.kill().unwrap();
            child.wait().unwrap();
            // The shim runs in its own process group (the command runner's); end it too.
            unsafe {
                libc::kill(-shim_pid, libc::SIGKILL);
            }
            for t in TYPES {
                assert_pair_consistent(t);
            }
            assert_eq!(
                read(ID_FILE),
                format!("{ID}\n"),
                "id changed by a killed run"
            );
            let leftovers = || {
                std::fs::read_dir(SSH)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".gce-keygen-"))
                    .count()
            };
            assert_eq!(leftovers(), 1, "the killed run's private directory");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(leftovers(), 0);
            assert_eq!(read(ID_FILE), format!("{NEW_ID}\n"));
            for t in TYPES {
                assert_eq!(comment(t), format!("gce-instance-{NEW_ID}"));
                assert_pair_consistent(t);
            }
        },
    );
}

#[test]
fn e2e_guest_attributes_published_every_boot_and_a_failed_put_is_logged_with_its_status() {
    sandboxed(
        "e2e_guest_attributes_published_every_boot_and_a_failed_put_is_logged_with_its_status",
        || {
            let w = World::new("");
            // Disabled on the instance (overriding the project): nothing is written.
            w.h()
                .set_project_attribute("enable-guest-attributes", "TRUE");
            w.h()
                .set_instance_attribute("enable-guest-attributes", "FALSE");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert!(w.attr("ssh-ed25519").is_none());
            assert!(!log.contains("guest attribute hostkeys/"), "{log}");

            // Enabled by the project only; also with OS Login on.
            w.h().remove_instance_attribute("enable-guest-attributes");
            w.h().set_instance_attribute("enable-oslogin", "TRUE");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            for (t, alg) in TYPES.iter().zip(ALGORITHMS) {
                let pubfile = read(pub_path(t));
                assert_eq!(
                    w.attr(alg).as_deref(),
                    pubfile.split_whitespace().nth(1),
                    "{alg}"
                );
            }

            // Every boot, not only the first: a wiped attribute comes back.
            w.h()
                .set_guest_attribute("hostkeys", "ssh-ed25519", "stale");
            let (ok, _) = w.run();
            assert!(ok);
            assert_ne!(w.attr("ssh-ed25519").as_deref(), Some("stale"));

            // The server refuses the writes: each failure is logged with its status; the run
            // still succeeds (the keys are fine).
            w.h()
                .set_instance_attribute("enable-guest-attributes", "TRUE");
            w.h().inject(Fault::Latency { ms: 0, count: 1 }); // the metadata read goes through
            w.h().inject(Fault::Status {
                status: 403,
                count: 3,
            });
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            for alg in ALGORITHMS {
                let line = log
                    .lines()
                    .find(|l| l.contains(&format!("guest attribute hostkeys/{alg}")))
                    .unwrap_or_else(|| panic!("no failure line for {alg}:\n{log}"));
                assert!(line.contains("403"), "{line}");
            }

            // A 503 (live migration) is retried.
            w.h()
                .set_guest_attribute("hostkeys", "ecdsa-sha2-nistp256", "stale");
            w.h().inject(Fault::Latency { ms: 0, count: 1 });
            w.h().inject(Fault::Status {
                status: 503,
                count: 1,
            });
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert!(!log.contains("guest attribute hostkeys/"), "{log}");
            assert_ne!(
                w.attr("ecdsa-sha2-nistp256").as_deref(),
                Some("stale"),
                "{log}"
            );
        },
    );
}

const OURS_VM0: &str = "10.138.0.7 vm0.c.my-proj.internal vm0  # Added by Google\n169.254.169.254 metadata.google.internal  # Added by Google\n";

fn getent(name: &str) -> String {
    let out = Command::new("getent")
        .args(["hosts", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// What guest-configs' `google_set_hostname` does to /etc/hosts on a DHCP event, restated from
/// its documented steps (the script itself is not shipped in Debian).
fn run_hook(ip: &str, fqdn: &str) {
    let script = r#"
sed -i"" '/Added by Google/d' /etc/hosts
echo "${new_ip_address} ${new_host_name} ${new_host_name%%.*}  # Added by Google" >> /etc/hosts
if [ -z "$(grep -E '^169\.254\.169\.254' /etc/hosts)" ]; then
  echo "169.254.169.254 metadata.google.internal  # Added by Google" >> /etc/hosts
fi
"#;
    let st = Command::new("sh")
        .args(["-c", script])
        .env("new_ip_address", ip)
        .env("new_host_name", fqdn)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn e2e_hostname_and_hosts_lines_set_updated_refused_and_shared_with_the_dhcp_hook() {
    sandboxed(
        "e2e_hostname_and_hosts_lines_set_updated_refused_and_shared_with_the_dhcp_hook",
        || {
            // The sandbox's copy of the host's file, without marked or metadata lines, plus a
            // foreign line that must survive byte for byte whatever happens.
            // (A minimal Debian root has no /etc/hosts at all: start from nothing then.)
            let original = std::fs::read("/etc/hosts").unwrap_or_default();
            let mut base: Vec<u8> = original
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| {
                    let l = String::from_utf8_lossy(l);
                    !l.contains("Added by Google") && !l.starts_with("169.254.169.254")
                })
                .flatten()
                .copied()
                .collect();
            if !base.is_empty() && !base.ends_with(b"\n") {
                base.push(b'\n');
            }
            base.extend_from_slice(b"10.1.2.3 build-cache   # the admin's\r\n");
            std::fs::write("/etc/hosts", &base).unwrap();

            let w = World::new("");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(read("/proc/sys/kernel/hostname").trim(), "vm0");
            assert_eq!(read("/etc/hostname"), "vm0\n");
            let want = [base.as_slice(), OURS_VM0.as_bytes()].concat();
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read("/etc/hosts").unwrap()),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(getent("metadata.google.internal"), "169.254.169.254");
            assert_eq!(getent("vm0.c.my-proj.internal"), "10.138.0.7");
            assert_eq!(getent("build-cache"), "10.1.2.3");

            // A DHCP renew running the hook after us changes nothing; nor do we after it.
            let ino = |p| std::fs::metadata(p).unwrap().ino();
            run_hook("10.138.0.7", "vm0.c.my-proj.internal");
            assert_eq!(
                std::fs::read("/etc/hosts").unwrap(),
                want,
                "the hook flapped"
            );
            let hook_inode = ino("/etc/hosts");
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(
                ino("/etc/hosts"),
                hook_inode,
                "we rewrote the hook's identical file"
            );

            // New name and address: our lines follow, the admin's stay.
            w.h()
                .set("/instance/hostname", json!("vm1.c.my-proj.internal"));
            w.h()
                .set("/instance/networkInterfaces/0/ip", json!("10.138.0.9"));
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(read("/proc/sys/kernel/hostname").trim(), "vm1");
            assert_eq!(read("/etc/hostname"), "vm1\n");
            let want1 = [
                base.as_slice(),
                b"10.138.0.9 vm1.c.my-proj.internal vm1  # Added by Google\n169.254.169.254 metadata.google.internal  # Added by Google\n",
            ]
            .concat();
            assert_eq!(std::fs::read("/etc/hosts").unwrap(), want1);

            // The spoofing name is refused: hostname kept, host line removed, pin kept.
            w.h()
                .set("/instance/hostname", json!("metadata.google.internal"));
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert!(
                log.contains("refusing hostname \"metadata.google.internal\""),
                "{log}"
            );
            assert_eq!(read("/proc/sys/kernel/hostname").trim(), "vm1");
            assert_eq!(read("/etc/hostname"), "vm1\n");
            let want2 = [
                base.as_slice(),
                b"169.254.169.254 metadata.google.internal  # Added by Google\n",
            ]
            .concat();
            assert_eq!(std::fs::read("/etc/hosts").unwrap(), want2);
            assert_eq!(getent("metadata.google.internal"), "169.254.169.254");

            // Switched off: neither is touched.
            w.configure("set_hostname = false\n[Unstable]\nset_fqdn = false\n");
            w.h()
                .set("/instance/hostname", json!("vm2.c.my-proj.internal"));
            let before = snapshot();
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            assert_eq!(read("/proc/sys/kernel/hostname").trim(), "vm1");
            let after = snapshot();
            assert_eq!(after["/etc/hosts"], before["/etc/hosts"]);
            assert_eq!(after["/etc/hostname"], before["/etc/hostname"]);

            // A symlinked /etc/hosts is refused in one line, its target untouched.
            w.configure("");
            let real = w.dir.join("hosts.real");
            std::fs::copy("/etc/hosts", &real).unwrap();
            std::fs::remove_file("/etc/hosts").unwrap();
            std::os::unix::fs::symlink(&real, "/etc/hosts").unwrap();
            let (ok, log) = w.run();
            assert!(ok, "{log}");
            let refusals: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("refusing to rewrite /etc/hosts: it is a symbolic link"))
                .collect();
            assert_eq!(refusals.len(), 1, "{log}");
            assert_eq!(std::fs::read(&real).unwrap(), want2);
            assert!(
                std::fs::symlink_metadata("/etc/hosts")
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(read("/proc/sys/kernel/hostname").trim(), "vm2");
        },
    );
}

#[test]
fn e2e_selinux_labels_are_restored_where_selinux_is_present() {
    sandboxed(
        "e2e_selinux_labels_are_restored_where_selinux_is_present",
        || {
            // This machine has no SELinux: make it look enabled in this mount namespace only,
            // with a restorecon that records what it is asked to relabel.
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs", "/sys/fs"])
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::create_dir_all("/sys/fs/selinux").unwrap();
            std::fs::write("/sys/fs/selinux/enforce", "1").unwrap();
            let w = World::new("");
            let shim = w.dir.join("shim");
            std::fs::create_dir_all(&shim).unwrap();
            let record = w.dir.join("restorecon.log");
            std::fs::write(
                shim.join("restorecon"),
                format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
            )
            .unwrap();
            std::fs::set_permissions(
                shim.join("restorecon"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            let (ok, log) = w.run_with(Some(&shim));
            assert!(ok, "{log}");
            let relabelled = read(&record);
            for p in TYPES
                .iter()
                .flat_map(|t| [key_path(t), pub_path(t)])
                .chain([ID_FILE, "/etc/hosts", "/etc/hostname"].map(String::from))
            {
                assert!(
                    relabelled
                        .lines()
                        .any(|l| l.starts_with("-F ") && l.split(' ').any(|a| a == p)),
                    "{p} not relabelled:\n{relabelled}"
                );
            }

            // Without restorecon: one line naming the package, and the work is still done.
            w.h().set("/instance/id", json!(12345));
            let mut cmd = w.command(None);
            cmd.env("PATH", "/usr/bin:/bin");
            let out = cmd.output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{log}");
            assert!(log.contains("install policycoreutils"), "{log}");
            assert_eq!(read(ID_FILE), "12345\n");
        },
    );
}
