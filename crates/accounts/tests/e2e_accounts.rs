//! gce-accounts-daemon end to end: the real daemon binary, the real useradd/gpasswd/userdel, a
//! real sshd and real ssh logins, each test inside its own private mount+net+pid namespace (a
//! copy of /etc, empty /home and /run), against the metadata emulator.

use gce_metadata_emulator::{Emulator, RunningEmulator};
use gce_testkit::{Sshd, daemon_command, keypair, sandbox, temp_dir, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_gce-accounts-daemon");
const AKC: &str = env!("CARGO_BIN_EXE_gce-authorized-keys");

struct World {
    rt: gce_testkit::BackgroundRuntime,
    emu: Option<RunningEmulator>,
    host: String,
    dir: PathBuf,
    daemon: Option<Child>,
    config: String,
}

impl World {
    fn new(config: &str) -> World {
        World::with_keys(config, "")
    }

    /// A world whose metadata already carries `ssh-keys` when the daemon starts.
    fn with_keys(config: &str, keys: &str) -> World {
        let rt = gce_testkit::BackgroundRuntime::new();
        let emu = rt
            .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
        if !keys.is_empty() {
            emu.handle().set_instance_attribute("ssh-keys", keys);
        }
        let host = emu.metadata_host();
        let dir = temp_dir("world");
        let mut w = World {
            rt,
            emu: Some(emu),
            host,
            dir,
            daemon: None,
            config: config.to_string(),
        };
        w.start_daemon();
        w
    }

    fn emu(&self) -> &RunningEmulator {
        self.emu.as_ref().expect("emulator running")
    }

    fn start_daemon(&mut self) {
        let cfg = self.dir.join("instance_configs.cfg");
        std::fs::write(&cfg, &self.config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = daemon_command(
            Path::new(DAEMON),
            &cfg,
            &self.dir.join("daemon.lock"),
            &self.host,
        )
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        self.daemon = Some(child);
    }

    fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn set_keys(&self, value: &str) {
        self.emu()
            .handle()
            .set_instance_attribute("ssh-keys", value);
    }

    fn stop_emulator(&mut self) {
        if let Some(emu) = self.emu.take() {
            self.rt.block_on(emu.shutdown());
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_daemon();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

fn ak_path(user: &str) -> PathBuf {
    PathBuf::from(format!("/home/{user}/.ssh/authorized_keys"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn user_exists(user: &str) -> bool {
    Command::new("getent")
        .args(["passwd", user])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether `user` is in google-sudoers, waiting up to 5 s for it to become `wanted`: the daemon
/// changes the group (gpasswd) after it writes the keys the tests wait for.
fn sudoer_becomes(user: &str, wanted: bool) -> bool {
    let member = || {
        let out = Command::new("id").args(["-nG", user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|g| g == "google-sudoers")
    };
    wait_until(Duration::from_secs(5), || member() == wanted).is_some()
}

fn uid_of(user: &str) -> String {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn blob(public: &str) -> &str {
    public.split_whitespace().nth(1).unwrap()
}

fn expiring(user: &str, public: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{user}:ssh-ed25519 {} google-ssh {{\"userName\":\"{user}@example.com\",\"expireOn\":\"{}\"}}",
        blob(public),
        at.format("%Y-%m-%dT%H:%M:%S+0000")
    )
}

fn login_ok(sshd: &Sshd, user: &str, key: &Path) -> bool {
    let out = sshd.login(user, key, "id -un");
    String::from_utf8_lossy(&out.stdout).trim() == user
}

#[test]
fn e2e_push_login_sudo_then_removal_keeps_the_users_own_lines() {
    if !sandbox("e2e_push_login_sudo_then_removal_keeps_the_users_own_lines") {
        return;
    }
    let w = World::new("");
    let keys = temp_dir("keys");
    let (k1, p1) = keypair(&keys, "alice1");
    let (own, own_pub) = keypair(&keys, "own");
    w.set_keys(&format!("alice:{p1}"));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("alice")).contains(blob(&p1))
    })
    .expect("key installed");
    let sshd = Sshd::start("");
    assert!(
        login_ok(&sshd, "alice", &k1),
        "login with the pushed key: {}",
        sshd.log()
    );
    let out = sshd.login("alice", &k1, "sudo -n true && echo SUDO-OK");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUDO-OK"),
        "sudo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sudoers = std::fs::metadata("/etc/sudoers.d/google_sudoers").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&sudoers.permissions()) & 0o777,
        0o440
    );

    // The user adds their own lines (CRLF, a comment, no final newline).
    let path = ak_path("alice");
    let mut content = read(&path).into_bytes();
    let own_lines = format!("# my own key\r\n{own_pub}\r\n# last line without newline");
    content.extend_from_slice(own_lines.as_bytes());
    std::fs::write(&path, &content).unwrap();

    w.set_keys("");
    wait_until(Duration::from_secs(10), || !read(&path).contains(blob(&p1)))
        .expect("managed key removed");
    let after = read(&path);
    assert!(
        after.contains(&own_lines),
        "user lines kept byte for byte: {after:?}"
    );
    assert!(!after.contains("# Added by Google"));
    assert!(!login_ok(&sshd, "alice", &k1), "removed key refused");
    assert!(
        login_ok(&sshd, "alice", &own),
        "the user's own key still works"
    );
    assert!(
        user_exists("alice"),
        "deprovision_remove=false keeps the account"
    );
    assert!(sudoer_becomes("alice", false), "sudo membership removed");
}

#[test]
fn e2e_expired_key_is_refused_within_a_second_with_the_metadata_server_stopped() {
    if !sandbox("e2e_expired_key_is_refused_within_a_second_with_the_metadata_server_stopped") {
        return;
    }
    let mut w = World::new("");
    let keys = temp_dir("keys");
    let (k, p) = keypair(&keys, "bob");
    // Whole seconds, like gcloud; at least 5 s away (time for sshd and a login on a loaded machine).
    let expire = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 6, 0).unwrap();
    w.set_keys(&expiring("bob", &p, expire));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("bob")).contains(blob(&p))
    })
    .expect("key installed");
    let file = read(&ak_path("bob"));
    assert!(
        file.contains("expiry-time=\""),
        "sshd-side expiry written too: {file}"
    );
    let sshd = Sshd::start("");
    assert!(login_ok(&sshd, "bob", &k));
    w.stop_emulator();
    let gone = wait_until(Duration::from_secs(10), || {
        !read(&ak_path("bob")).contains(blob(&p))
    })
    .expect("removed");
    let late = chrono::Utc::now() - expire;
    assert!(
        late < chrono::Duration::milliseconds(1000),
        "removed {late:?} after expireOn (waited {gone:?})"
    );
    assert!(!login_ok(&sshd, "bob", &k), "expired key refused");
    eprintln!(
        "expired key removed {} ms after expireOn",
        late.num_milliseconds()
    );
    wait_until(Duration::from_secs(5), || w.log().contains("key removed"))
        .unwrap_or_else(|| panic!("removal logged: {}", w.log()));
}

/// A user leaving metadata loses the sudo that metadata gave even when the keys cannot be
/// removed (a home that is no longer the user's); the key stays recorded and goes at the next
/// pass after the home is fixed, even an incremental one about another user.
#[test]
fn e2e_leaving_user_with_a_refused_home_loses_sudo_and_the_key_goes_once_it_is_fixed() {
    if !sandbox("e2e_leaving_user_with_a_refused_home_loses_sudo_and_the_key_goes_once_it_is_fixed")
    {
        return;
    }
    let w = World::new("");
    let keys = temp_dir("keys");
    let (_k, p) = keypair(&keys, "hank");
    let (_k2, p2) = keypair(&keys, "ivy");
    w.set_keys(&format!("hank:{p}"));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("hank")).contains(blob(&p))
    })
    .expect("key installed");
    assert!(sudoer_becomes("hank", true), "sudo granted");
    // The home stops being hank's: the daemon refuses to write there.
    let chown = |owner: &str| {
        assert!(
            Command::new("chown")
                .args([owner, "/home/hank"])
                .status()
                .unwrap()
                .success()
        )
    };
    chown("root");
    w.set_keys("");
    assert!(
        sudoer_becomes("hank", false),
        "sudo taken away although the keys could not be: {}",
        w.log()
    );
    assert!(
        read(&ak_path("hank")).contains(blob(&p)),
        "key left: home refused"
    );
    let state_file = Path::new("/var/lib/google/gce-accounts-state.json");
    let state: serde_json::Value = serde_json::from_str(&read(state_file)).unwrap();
    assert!(!state["users"]["hank"].is_null(), "still recorded: {state}");
    assert!(w.log().contains("is not usable"), "{}", w.log());
    // Fixed: the next pass, though its change is another user's, removes the key (hank's
    // record stays, keyless: a created account kept with deprovision_remove=false).
    chown("hank");
    w.set_keys(&format!("ivy:{p2}"));
    wait_until(Duration::from_secs(10), || {
        let state: serde_json::Value = serde_json::from_str(&read(state_file)).unwrap_or_default();
        !read(&ak_path("hank")).contains(blob(&p))
            && state["users"]["hank"]["keys"] == serde_json::json!([])
            && state["users"]["hank"]["in_sudoers"] == false
    })
    .unwrap_or_else(|| panic!("key removed once the home is fixed: {}", w.log()));
    assert!(
        user_exists("hank"),
        "deprovision_remove=false keeps the account"
    );
}

#[test]
fn e2e_symlinked_ssh_dir_pointing_at_a_root_file_is_left_untouched() {
    if !sandbox("e2e_symlinked_ssh_dir_pointing_at_a_root_file_is_left_untouched") {
        return;
    }
    assert!(
        Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", "-p", "*", "mallory"])
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir_all("/root/target").unwrap();
    std::fs::write("/root/target/authorized_keys", "ROOT SECRET\n").unwrap();
    std::os::unix::fs::symlink("/root/target", "/home/mallory/.ssh").unwrap();
    let w = World::new("");
    let keys = temp_dir("keys");
    let (_k, p) = keypair(&keys, "m");
    w.set_keys(&format!("mallory:{p}"));
    wait_until(Duration::from_secs(10), || w.log().contains("symlink")).expect("refusal logged");
    assert_eq!(
        read(Path::new("/root/target/authorized_keys")),
        "ROOT SECRET\n"
    );
    assert_eq!(
        std::fs::read_dir("/root/target").unwrap().count(),
        1,
        "no temp files left in the target"
    );
    let meta = std::fs::symlink_metadata("/home/mallory/.ssh").unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "the link itself is left as it was"
    );
    // The same for a symlinked authorized_keys file inside a real ~/.ssh.
    std::fs::remove_file("/home/mallory/.ssh").unwrap();
    std::fs::create_dir("/home/mallory/.ssh").unwrap();
    std::os::unix::fs::symlink(
        "/root/target/authorized_keys",
        "/home/mallory/.ssh/authorized_keys",
    )
    .unwrap();
    Command::new("chown")
        .args(["-R", "mallory:mallory", "/home/mallory/.ssh"])
        .status()
        .unwrap();
    let (_k2, p2) = keypair(&keys, "m2");
    w.set_keys(&format!("mallory:{p2}"));
    wait_until(Duration::from_secs(10), || {
        w.log().contains("authorized_keys is a symlink")
    })
    .expect("refusal logged");
    assert_eq!(
        read(Path::new("/root/target/authorized_keys")),
        "ROOT SECRET\n"
    );
}

#[test]
fn e2e_adopted_user_keeps_the_account_created_user_is_deprovisioned() {
    if !sandbox("e2e_adopted_user_keeps_the_account_created_user_is_deprovisioned") {
        return;
    }
    assert!(
        Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", "-p", "*", "carol"])
            .status()
            .unwrap()
            .success()
    );
    let w = World::new("[Accounts]\ndeprovision_remove = true\n");
    let keys = temp_dir("keys");
    let (_kc, pc) = keypair(&keys, "carol");
    let (_kd, pd) = keypair(&keys, "dave");
    w.set_keys(&format!("carol:{pc}\ndave:{pd}"));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("carol")).contains(blob(&pc)) && read(&ak_path("dave")).contains(blob(&pd))
    })
    .expect("both installed");
    let state_file = Path::new("/var/lib/google/gce-accounts-state.json");
    wait_until(Duration::from_secs(10), || {
        let s = read(state_file);
        s.contains("carol") && s.contains("dave")
    })
    .unwrap_or_else(|| panic!("state records both: {}", read(state_file)));
    w.set_keys("");
    wait_until(Duration::from_secs(10), || !user_exists("dave"))
        .expect("created user deleted with deprovision_remove");
    wait_until(Duration::from_secs(10), || {
        !read(&ak_path("carol")).contains(blob(&pc))
    })
    .expect("adopted user's key removed");
    assert!(user_exists("carol"), "an adopted user is never deleted");
    assert!(Path::new("/home/carol").is_dir());
}

#[test]
fn e2e_hostile_names_and_system_accounts_are_refused() {
    if !sandbox("e2e_hostile_names_and_system_accounts_are_refused") {
        return;
    }
    let root_keys_before = read(Path::new("/root/.ssh/authorized_keys"));
    let passwd_before = read(Path::new("/etc/passwd"));
    let w = World::new("");
    let keys = temp_dir("keys");
    let (_k, p) = keypair(&keys, "h");
    let value = [
        "-g",
        "../root",
        "a/b",
        "root",
        "daemon",
        "na\u{a0}me",
        "x\u{3000}y",
        ".",
        "..",
        &"a".repeat(33),
    ]
    .iter()
    .map(|u| format!("{u}:{p}"))
    .chain(std::iter::once(format!("okuser:{p}")))
    .collect::<Vec<_>>()
    .join("\n");
    w.set_keys(&value);
    wait_until(Duration::from_secs(10), || user_exists("okuser"))
        .expect("the valid user is still served");
    std::thread::sleep(Duration::from_millis(300));
    let passwd_after = read(Path::new("/etc/passwd"));
    let new_lines: Vec<&str> = passwd_after
        .lines()
        .filter(|l| !passwd_before.contains(*l))
        .collect();
    assert_eq!(new_lines.len(), 1, "only okuser was created: {new_lines:?}");
    assert!(new_lines[0].starts_with("okuser:"));
    assert_eq!(
        read(Path::new("/root/.ssh/authorized_keys")),
        root_keys_before,
        "root untouched"
    );
    let log = w.log();
    assert!(log.contains("not managing user root"), "{log}");
    assert_eq!(
        log.matches("not managing user root").count(),
        1,
        "refusal logged once"
    );
}

#[test]
fn e2e_sigkill_during_applies_never_leaves_a_torn_authorized_keys() {
    if !sandbox("e2e_sigkill_during_applies_never_leaves_a_torn_authorized_keys") {
        return;
    }
    let mut w = World::new("");
    let keys = temp_dir("keys");
    let pubs: Vec<String> = (0..6).map(|i| keypair(&keys, &format!("k{i}")).1).collect();
    let users = ["u1", "u2", "u3", "u4"];
    // Users' own lines, which must survive every kill.
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..50 {
        let value: Vec<String> = users
            .iter()
            .enumerate()
            .flat_map(|(i, u)| {
                let n = ((round + i) % 3) + 1;
                (0..n).map(move |j| (u, (i + j + round) % 6))
            })
            .map(|(u, k)| format!("{u}:{}", pubs[k]))
            .collect();
        w.set_keys(&value.join("\n"));
        std::thread::sleep(Duration::from_millis(rnd(40)));
        w.kill_daemon();
        for u in users {
            let p = ak_path(u);
            if !p.exists() {
                continue;
            }
            let text = read(&p);
            let lines: Vec<&str> = text.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                if lines[i] == "# Added by Google" {
                    let key = lines.get(i + 1).unwrap_or_else(|| {
                        panic!("round {round}: marker without key in {u}: {text:?}")
                    });
                    assert!(
                        pubs.iter().any(|p| key.contains(blob(p))),
                        "round {round}: torn key line in {u}: {key:?}"
                    );
                    i += 2;
                } else {
                    assert_eq!(
                        lines[i], "# own line",
                        "round {round}: unexpected line in {u}: {text:?}"
                    );
                    i += 1;
                }
            }
            assert!(text.ends_with('\n'), "round {round}: file ends mid-line");
            if !text.contains("# own line") {
                // Add the user's own line once the file exists; it must be kept from then on.
                std::fs::write(&p, format!("# own line\n{text}")).unwrap();
            }
            let leftovers: Vec<_> = std::fs::read_dir(format!("/home/{u}/.ssh"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(
                leftovers.len() <= 2,
                "round {round}: temp files pile up: {leftovers:?}"
            );
        }
        w.start_daemon();
    }
    // Converges after the last restart, and every own line survived.
    let last: Vec<String> = users.iter().map(|u| format!("{u}:{}", pubs[0])).collect();
    w.set_keys(&last.join("\n"));
    for u in users {
        wait_until(Duration::from_secs(10), || {
            let t = read(&ak_path(u));
            t.matches("# Added by Google").count() == 1 && t.contains(blob(&pubs[0]))
        })
        .unwrap_or_else(|| panic!("{u} did not converge: {}", read(&ak_path(u))));
        let t = read(&ak_path(u));
        if Path::new(&format!("/home/{u}/.ssh/authorized_keys")).exists()
            && t.contains("# own line")
        {
            assert_eq!(t.matches("# own line").count(), 1);
        }
    }
    // Leftovers are swept once untouched for ten minutes (a write takes milliseconds): planted,
    // one abandoned (its mtime 11 minutes ago) and one as fresh as a write in progress, before a
    // daemon starts and writes the file again.
    w.kill_daemon();
    let abandoned = "/home/u1/.ssh/.authorized_keys.tmp-4194305-0";
    let fresh = "/home/u1/.ssh/.authorized_keys.tmp-4194305-1";
    let f = std::fs::File::create(abandoned).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(660))
        .unwrap();
    std::fs::write(fresh, "being written").unwrap();
    w.start_daemon();
    let next: Vec<String> = users.iter().map(|u| format!("{u}:{}", pubs[1])).collect();
    w.set_keys(&next.join("\n"));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("u1")).contains(blob(&pubs[1])) && !Path::new(abandoned).exists()
    })
    .unwrap_or_else(|| panic!("abandoned temp file swept: {}", w.log()));
    assert!(Path::new(fresh).exists(), "a fresh temp file stays");
    wait_until(Duration::from_secs(5), || {
        w.log().contains("left by an interrupted write")
    })
    .unwrap_or_else(|| panic!("the sweep is logged: {}", w.log()));
}

#[test]
fn e2e_authorized_keys_command_mode_logs_in_without_a_key_file_and_expires_on_time() {
    if !sandbox("e2e_authorized_keys_command_mode_logs_in_without_a_key_file_and_expires_on_time") {
        return;
    }
    // sshd requires the command and its directories to be root-owned and not writable by others.
    std::fs::create_dir_all("/run/gce-bin").unwrap();
    std::fs::copy(AKC, "/run/gce-bin/gce-authorized-keys").unwrap();
    let w = World::new("");
    let keys = temp_dir("keys");
    let (k, p) = keypair(&keys, "erin");
    let expire = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 6, 0).unwrap();
    w.set_keys(&expiring("erin", &p, expire));
    wait_until(Duration::from_secs(10), || {
        Path::new("/run/gce-guest-agents/authorized-keys/erin").exists()
    })
    .expect("cache written");
    let sshd = Sshd::start(
        "AuthorizedKeysFile none\nAuthorizedKeysCommand /run/gce-bin/gce-authorized-keys %u %f\nAuthorizedKeysCommandUser nobody\n",
    );
    // Prove the file is not what lets us in.
    std::fs::remove_file(ak_path("erin")).unwrap();
    let t = Instant::now();
    let out = Command::new("/run/gce-bin/gce-authorized-keys")
        .arg("erin")
        .output()
        .unwrap();
    eprintln!("gce-authorized-keys call took {:?}", t.elapsed());
    assert!(String::from_utf8_lossy(&out.stdout).contains(blob(&p)));
    assert!(
        login_ok(&sshd, "erin", &k),
        "AuthorizedKeysCommand login: {}",
        sshd.log()
    );
    // Hostile argument: nothing printed, exit 0.
    let bad = Command::new("/run/gce-bin/gce-authorized-keys")
        .arg("../root")
        .output()
        .unwrap();
    assert!(bad.status.success() && bad.stdout.is_empty());
    // Expiry is checked at login time, even with the daemon stopped.
    let mut w = w;
    w.kill_daemon();
    let wait = (expire - chrono::Utc::now()).num_milliseconds() + 50;
    std::thread::sleep(Duration::from_millis(wait.max(0) as u64));
    assert!(
        !login_ok(&sshd, "erin", &k),
        "expired key refused by the command"
    );
}

/// Whether nsswitch.conf lists only files/systemd for passwd and group (Debian's default), in
/// which case the daemon must not map any NSS module.
fn nsswitch_is_files_only() -> bool {
    let text = read(Path::new("/etc/nsswitch.conf"));
    let o = gce_accounts::system::passwd::parse_nsswitch(&text);
    !o.passwd && !o.group
}

#[test]
fn e2e_many_new_users_in_one_change_all_get_accounts_groups_and_keys() {
    if !sandbox("e2e_many_new_users_in_one_change_all_get_accounts_groups_and_keys") {
        return;
    }
    let w = World::new("");
    let keys = temp_dir("keys");
    let (k, p) = keypair(&keys, "many");
    let names: Vec<String> = (0..24).map(|i| format!("crowd{i}")).collect();
    let value: Vec<String> = names.iter().map(|n| format!("{n}:{p}")).collect();
    w.set_keys(&value.join("\n"));
    wait_until(Duration::from_secs(30), || {
        names.iter().all(|n| read(&ak_path(n)).contains(blob(&p)))
    })
    .unwrap_or_else(|| panic!("all keys installed: {}", w.log()));
    // Concurrent useradd runs (create_parallelism 4) lost nothing: distinct uids, every user in
    // google-sudoers and in the default groups that exist here.
    let passwd = read(Path::new("/etc/passwd"));
    let mut uids: Vec<&str> = passwd
        .lines()
        .filter(|l| l.starts_with("crowd"))
        .map(|l| l.split(':').nth(2).unwrap())
        .collect();
    assert_eq!(uids.len(), 24, "{passwd}");
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 24, "distinct uids: {passwd}");
    let group = read(Path::new("/etc/group"));
    for g in ["google-sudoers", "adm"] {
        let line = group
            .lines()
            .find(|l| l.starts_with(&format!("{g}:")))
            .unwrap();
        let members: Vec<&str> = line.rsplit(':').next().unwrap().split(',').collect();
        for n in &names {
            assert!(members.contains(&n.as_str()), "{n} in {g}: {line}");
        }
    }
    let gshadow = read(Path::new("/etc/gshadow"));
    let line = gshadow
        .lines()
        .find(|l| l.starts_with("google-sudoers:"))
        .unwrap();
    for n in &names {
        assert!(line.contains(n.as_str()), "{n} in gshadow: {line}");
    }
    let sshd = Sshd::start("");
    assert!(login_ok(&sshd, "crowd17", &k), "login: {}", sshd.log());
    // Debian's nsswitch (files systemd): the resident daemon never mapped an NSS module. (libm is
    // a build matter: `scripts/bench rss` lists the shipped binaries' mappings.)
    if nsswitch_is_files_only() {
        let pid = w.daemon.as_ref().unwrap().id();
        let maps = read(Path::new(&format!("/proc/{pid}/maps")));
        assert!(!maps.contains("libnss_"), "NSS module mapped:\n{maps}");
    }
}

/// A name that only another NSS source knows (here a systemd userdb record, as systemd-homed
/// users are): useradd refuses it, and the daemon adopts it instead of retrying forever — keys
/// installed in its home, never userdel'd, never added to /etc/passwd.
#[test]
fn e2e_a_user_known_only_to_another_nss_source_is_adopted() {
    if !sandbox("e2e_a_user_known_only_to_another_nss_source_is_adopted") {
        return;
    }
    let nss = read(Path::new("/etc/nsswitch.conf"));
    if !nss
        .lines()
        .any(|l| l.starts_with("passwd:") && l.contains("systemd"))
    {
        eprintln!("SKIPPED: nsswitch.conf has no systemd source for passwd");
        return;
    }
    std::fs::create_dir_all("/etc/userdb").unwrap();
    std::fs::write(
        "/etc/userdb/homer.user",
        r#"{"userName":"homer","uid":60123,"gid":60123,"homeDirectory":"/home/homer","shell":"/bin/bash","disposition":"regular"}"#,
    )
    .unwrap();
    assert!(user_exists("homer"), "the userdb record is visible via NSS");
    std::fs::create_dir_all("/home/homer").unwrap();
    nix::unistd::chown(
        "/home/homer",
        Some(nix::unistd::Uid::from_raw(60123)),
        Some(nix::unistd::Gid::from_raw(60123)),
    )
    .unwrap();
    let w = World::new("[Accounts]\ndeprovision_remove = true\n");
    let keys = temp_dir("keys");
    let (_k, p) = keypair(&keys, "homer");
    w.set_keys(&format!("homer:{p}"));
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("homer")).contains(blob(&p))
    })
    .unwrap_or_else(|| panic!("key installed for the directory user: {}", w.log()));
    let state_file = Path::new("/var/lib/google/gce-accounts-state.json");
    // The state is saved once the whole pass is done, just after the key file.
    wait_until(Duration::from_secs(10), || {
        let state: serde_json::Value = serde_json::from_str(&read(state_file)).unwrap_or_default();
        state["users"]["homer"]["origin"] == "adopted"
            && state["users"]["homer"]["keys"] != serde_json::json!([])
    })
    .unwrap_or_else(|| panic!("recorded as adopted: {}", read(state_file)));
    assert!(!read(Path::new("/etc/passwd")).contains("homer:"));
    assert!(
        w.log().contains("exists outside /etc/passwd"),
        "{}",
        w.log()
    );
    // Gone from metadata with deprovision_remove: keys removed, account untouched.
    w.set_keys("");
    wait_until(Duration::from_secs(10), || {
        !read(&ak_path("homer")).contains(blob(&p))
    })
    .expect("managed key removed");
    assert!(user_exists("homer"));
    assert!(!w.log().contains("deleted user homer"), "{}", w.log());
}

/// Restarted while the metadata server is down: no snapshot ever arrives, yet a key installed
/// before the restart is removed on time, its expiry read back from the state file.
#[test]
fn e2e_a_key_expires_on_time_after_a_restart_with_the_metadata_server_down() {
    if !sandbox("e2e_a_key_expires_on_time_after_a_restart_with_the_metadata_server_down") {
        return;
    }
    let mut w = World::new("");
    let keys = temp_dir("keys");
    let (_k, p) = keypair(&keys, "erin");
    let (_k2, p2) = keypair(&keys, "erin-forever");
    // Whole seconds: that is what the expireOn string carries.
    let at = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 6, 0).unwrap();
    w.set_keys(&format!("{}\nerin:{p2}", expiring("erin", &p, at)));
    let state_file = Path::new("/var/lib/google/gce-accounts-state.json");
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("erin")).contains(blob(&p)) && read(state_file).contains(blob(&p))
    })
    .expect("installed and recorded");
    w.kill_daemon();
    w.stop_emulator();
    w.start_daemon();
    let removed = wait_until(Duration::from_secs(10), || {
        !read(&ak_path("erin")).contains(blob(&p))
    })
    .unwrap_or_else(|| panic!("expired key not removed: {}", w.log()));
    let late = chrono::Utc::now() - at;
    assert!(
        late < chrono::Duration::milliseconds(1000),
        "removed {late:?} after expireOn ({removed:?} of waiting)"
    );
    assert!(late > chrono::Duration::zero(), "removed before expireOn");
    assert!(
        read(&ak_path("erin")).contains(blob(&p2)),
        "the other key stays"
    );
    // The daemon logs the removal after renaming the file into place.
    wait_until(Duration::from_secs(5), || {
        w.log().contains("expiry read from the state file")
    })
    .unwrap_or_else(|| panic!("removal logged: {}", w.log()));
}

/// Taking over from Google's agents: of the users listed in their `google_users`, the one their
/// `useradd -p *` made is recognised as created (deleted with `deprovision_remove=true` once it
/// leaves metadata); an account that existed before them, root, a system account, a name that
/// does not exist and a hostile line stay adopted or are ignored — never deleted.
#[test]
fn e2e_users_googles_agent_created_are_deprovisioned_the_others_stay() {
    if !sandbox("e2e_users_googles_agent_created_are_deprovisioned_the_others_stay") {
        return;
    }
    let useradd = |args: &[&str]| {
        assert!(
            Command::new("useradd")
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    // What Google's agent ran for a user it created, and an image's own pre-existing user.
    useradd(&["-m", "-s", "/bin/bash", "-p", "*", "gmade"]);
    useradd(&["-m", "-s", "/bin/bash", "imageuser"]);
    std::fs::create_dir_all("/var/lib/google").unwrap();
    std::fs::write(
        "/var/lib/google/google_users",
        "gmade\nimageuser\nroot\ndaemon\n../etc\nghost\n",
    )
    .unwrap();
    let passwd_before = read(Path::new("/etc/passwd"));
    let uid_before = uid_of("gmade");
    let keys = temp_dir("keys");
    let (kg, pg) = keypair(&keys, "gmade");
    let (_ki, pi) = keypair(&keys, "imageuser");
    // Both users are in metadata when our daemon first starts, as on a machine where Google's
    // agent ran until the swap: gmade is taken over, not deleted and made again.
    let w = World::with_keys(
        "[Accounts]\ndeprovision_remove = true\n",
        &format!("gmade:{pg}\nimageuser:{pi}"),
    );
    let state_file = Path::new("/var/lib/google/gce-accounts-state.json");
    // The keys are written before the state is saved: wait for both.
    let mut state = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        state = serde_json::from_str(&read(state_file)).unwrap_or_default();
        read(&ak_path("gmade")).contains(blob(&pg))
            && read(&ak_path("imageuser")).contains(blob(&pi))
            && !state["users"]["gmade"].is_null()
            && !state["users"]["imageuser"].is_null()
    })
    .unwrap_or_else(|| panic!("keys installed and recorded: {state} {}", w.log()));
    assert_eq!(uid_of("gmade"), uid_before, "gmade kept, not made again");
    assert!(!w.log().contains("deleted user gmade"), "{}", w.log());
    assert_eq!(state["users"]["gmade"]["origin"], "created", "{state}");
    assert_eq!(state["users"]["imageuser"]["origin"], "adopted", "{state}");
    assert_ne!(state["users"]["root"]["origin"], "created", "{state}");
    // daemon's home (/usr/sbin) is not its own: nothing of ours can be there, so it is let go
    // rather than retried forever.
    assert!(state["users"].get("daemon").is_none(), "{state}");
    assert!(state["users"].get("../etc").is_none(), "{state}");
    let sshd = Sshd::start("");
    assert!(login_ok(&sshd, "gmade", &kg), "login: {}", sshd.log());

    w.set_keys("");
    wait_until(Duration::from_secs(10), || !user_exists("gmade"))
        .unwrap_or_else(|| panic!("created user deprovisioned: {}", w.log()));
    wait_until(Duration::from_secs(10), || {
        !read(&ak_path("imageuser")).contains(blob(&pi))
    })
    .expect("adopted user's managed key removed");
    assert!(
        user_exists("imageuser"),
        "a user Google's agent did not create stays"
    );
    assert!(Path::new("/home/imageuser").is_dir());
    for kept in ["root", "daemon"] {
        assert!(user_exists(kept));
    }
    let passwd_after = read(Path::new("/etc/passwd"));
    let lost: Vec<&str> = passwd_before
        .lines()
        .filter(|l| !passwd_after.contains(*l))
        .collect();
    assert_eq!(lost.len(), 1, "only gmade was deleted: {lost:?}");
    assert!(lost[0].starts_with("gmade:"));
    assert!(w.log().contains("created by Google's agent"), "{}", w.log());
}

/// OS Login switches the instance away from metadata keys and back, while running and at start:
/// project `enable-oslogin=TRUE` takes the key we installed away (login refused; the user's own
/// line, the account and the AuthorizedKeysCommand cache's absence of keys prove what stays and
/// what goes), an instance `enable-oslogin=FALSE` overrides it and the key comes back; a daemon
/// started while OS Login is on removes the key too. deprovision_remove=true: nobody is deleted.
#[test]
fn e2e_oslogin_on_takes_metadata_keys_away_and_off_brings_them_back() {
    if !sandbox("e2e_oslogin_on_takes_metadata_keys_away_and_off_brings_them_back") {
        return;
    }
    let mut w = World::new("[Accounts]\ndeprovision_remove = true\n");
    let handle = w.emu().handle();
    // The default document sets the instance value to FALSE, which would override the project.
    handle.remove_instance_attribute("enable-oslogin");
    let keys = temp_dir("keys");
    let (k, p) = keypair(&keys, "olga");
    let (own, own_pub) = keypair(&keys, "olga-own");
    w.set_keys(&format!("olga:{p}"));
    let cache = Path::new("/run/gce-guest-agents/authorized-keys/olga");
    wait_until(Duration::from_secs(10), || {
        read(&ak_path("olga")).contains(blob(&p)) && read(cache).contains(blob(&p))
    })
    .unwrap_or_else(|| panic!("key installed: {}", w.log()));
    let path = ak_path("olga");
    let mut content = read(&path).into_bytes();
    content.extend_from_slice(format!("{own_pub}\n").as_bytes());
    std::fs::write(&path, &content).unwrap();
    let sshd = Sshd::start("");
    assert!(login_ok(&sshd, "olga", &k), "metadata key: {}", sshd.log());

    handle.set_project_attribute("enable-oslogin", "TRUE");
    wait_until(Duration::from_secs(10), || !read(&path).contains(blob(&p)))
        .unwrap_or_else(|| panic!("managed key removed under OS Login: {}", w.log()));
    assert!(!login_ok(&sshd, "olga", &k), "metadata key refused");
    assert!(login_ok(&sshd, "olga", &own), "the user's own key stays");
    assert!(read(&path).contains(&own_pub));
    wait_until(Duration::from_secs(10), || !cache.exists())
        .expect("AuthorizedKeysCommand cache emptied");
    let akc = Command::new(AKC).arg("olga").output().unwrap();
    assert!(akc.status.success() && akc.stdout.is_empty());
    assert!(user_exists("olga"), "OS Login deletes nobody");
    assert!(
        sudoer_becomes("olga", false),
        "sudo granted by metadata is taken back"
    );

    handle.set_instance_attribute("enable-oslogin", "FALSE");
    wait_until(Duration::from_secs(10), || read(&path).contains(blob(&p)))
        .unwrap_or_else(|| panic!("key back when the instance overrides: {}", w.log()));
    assert!(sudoer_becomes("olga", true), "sudo given back");
    assert!(login_ok(&sshd, "olga", &k), "login works again");
    let out = sshd.login("olga", &k, "sudo -n true && echo SUDO-OK");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUDO-OK"));

    // At start: the daemon is down when OS Login is turned on.
    w.kill_daemon();
    handle.set_instance_attribute("enable-oslogin", "true");
    w.start_daemon();
    wait_until(Duration::from_secs(10), || !read(&path).contains(blob(&p)))
        .unwrap_or_else(|| panic!("key removed at start under OS Login: {}", w.log()));
    assert!(!login_ok(&sshd, "olga", &k));
    assert!(login_ok(&sshd, "olga", &own));
    assert!(user_exists("olga"));
    let state: serde_json::Value =
        serde_json::from_str(&read(Path::new("/var/lib/google/gce-accounts-state.json"))).unwrap();
    assert_eq!(
        state["users"]["olga"]["origin"], "created",
        "the record survives OS Login"
    );
}
