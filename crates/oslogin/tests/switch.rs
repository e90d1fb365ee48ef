//! The switch's rules on a private file tree (no root, no sandbox): every path under a temp
//! directory, the package "installed" as files at the probed paths, the emulator on
//! 127.0.0.1 for `oslogin/certificates`. The real package and sshd are proven in
//! `e2e_oslogin.rs`; this checks order, journal and ownership rules quickly.

use gce_agent::config::Config;
use gce_metadata::{Client, ClientOptions};
use gce_metadata_emulator::{Emulator, RunningEmulator};
use gce_oslogin::edit::{BLOCK_START, SUDOERS_INCLUDE};
use gce_oslogin::{OsLogin, Paths, Settings};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

const CA: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGBeOo8qSjOysw15rHU0334Tcr720ziK986QwjjDp53s ca";

struct Tree {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    paths: Paths,
    emu: RunningEmulator,
}

const SSHD: &str = "# admin\nPort 22\nMatch User backup\n    ForceCommand internal-sftp\n";
const NSS: &str = "passwd: files systemd\ngroup: files systemd\nshadow: files\n";
const PAM: &str = "@include common-auth\naccount required pam_nologin.so\n@include common-account\n@include common-session";
const GROUP: &str = "# group.conf\n";

async fn tree(with_package: bool) -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    for d in [
        "etc/ssh",
        "etc/pam.d",
        "etc/security",
        "etc/sudoers.d",
        "var/lib/google",
        "usr/bin",
        "lib/security",
        "run",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/ssh/sshd_config"), SSHD).unwrap();
    std::fs::write(root.join("etc/nsswitch.conf"), NSS).unwrap();
    std::fs::write(root.join("etc/pam.d/sshd"), PAM).unwrap();
    std::fs::write(root.join("etc/security/group.conf"), GROUP).unwrap();
    if with_package {
        std::fs::write(root.join("usr/bin/google_authorized_keys"), "#!/bin/sh\n").unwrap();
        std::fs::write(
            root.join("lib/security/pam_oslogin_login.so"),
            b"..pam_sm_acct_mgmt\0..",
        )
        .unwrap();
        std::fs::write(
            root.join("lib/security/pam_oslogin_admin.so"),
            b"..pam_sm_acct_mgmt\0..",
        )
        .unwrap();
    }
    let r = |p: &str| root.join(p);
    let paths = Paths {
        sshd_config: r("etc/ssh/sshd_config"),
        nsswitch: r("etc/nsswitch.conf"),
        pam_sshd: r("etc/pam.d/sshd"),
        group_conf: r("etc/security/group.conf"),
        sudoers_include: r("etc/sudoers.d/google-oslogin"),
        sudoers_dir: r("var/google-sudoers.d"),
        users_dir: r("var/google-users.d"),
        trusted_ca: r("etc/ssh/oslogin_trustedca.pub"),
        nss_caches: vec![r("etc/oslogin_passwd.cache")],
        journal: r("var/lib/google/gce-oslogin.json"),
        authorized_keys: r("usr/bin/google_authorized_keys"),
        authorized_keys_sk: r("usr/bin/google_authorized_keys_sk"),
        authorized_principals: r("usr/bin/google_authorized_principals"),
        nss_cache_command: r("usr/bin/google_oslogin_nss_cache"),
        pam_module_dirs: vec![r("lib/security")],
        sshd_pid: r("run/sshd.pid"),
        systemd_marker: r("run/systemd/system"),
    };
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    Tree {
        _tmp: tmp,
        root,
        paths,
        emu,
    }
}

impl Tree {
    fn switch(&self, config: &str) -> OsLogin {
        let (raw, _) = gce_agent::RawConfig::from_text(config, Path::new("t.cfg"));
        let cfg = Config::from_raw(raw, &mut Vec::new());
        let client = Client::new(
            &format!("{}/computeMetadata/v1/", self.emu.url()),
            ClientOptions::default(),
        )
        .unwrap();
        OsLogin::new(&cfg, client, self.paths.clone())
    }

    /// Every file and directory below the tree's etc/ and var/ with its bytes or mode.
    fn state(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for top in ["etc", "var"] {
            walk(&self.root.join(top), &self.root, &mut out);
        }
        out.sort();
        out
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_default()
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.push((rel, format!("dir {:o}", meta.permissions().mode() & 0o7777)));
            walk(&p, root, out);
        } else if rel.ends_with("gce-oslogin.json") {
            // The journal is ours and stays.
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            out.push((
                rel,
                format!(
                    "{mode:o} {}",
                    std::fs::read_to_string(&p).unwrap_or_default()
                ),
            ));
        }
    }
}

fn on() -> Settings {
    Settings {
        enabled: true,
        ..Settings::default()
    }
}

#[tokio::test]
async fn on_configures_every_file_and_off_restores_the_tree_exactly() {
    let t = tree(true).await;
    let before = t.state();
    let mut s = t.switch("");
    assert_eq!(s.apply(on()).await, "OS Login on");
    assert!(t.read("etc/ssh/sshd_config").starts_with(BLOCK_START));
    assert!(t.read("etc/ssh/sshd_config").contains(SSHD));
    assert!(
        t.read("etc/nsswitch.conf")
            .contains("files systemd cache_oslogin oslogin")
    );
    assert!(t.read("etc/pam.d/sshd").contains("pam_oslogin_admin.so"));
    assert!(
        t.read("etc/security/group.conf")
            .contains("sshd;*;*;Al0000-2400;video")
    );
    assert_eq!(t.read("etc/sudoers.d/google-oslogin"), SUDOERS_INCLUDE);
    let mode = |rel: &str| {
        std::fs::metadata(t.root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("etc/sudoers.d/google-oslogin"), 0o440);
    assert_eq!(mode("var/google-sudoers.d"), 0o750);
    assert_eq!(mode("var/google-users.d"), 0o750);
    let on_state = t.state();
    // The same settings again: nothing is touched.
    assert_eq!(s.apply(on()).await, "OS Login on");
    assert_eq!(t.state(), on_state);
    // The package writes its per-user files; off removes them with the directories we made.
    std::fs::write(
        t.root.join("var/google-sudoers.d/bob_example_com"),
        "bob ALL=(ALL) NOPASSWD: ALL\n",
    )
    .unwrap();
    assert_eq!(s.apply(Settings::default()).await, "OS Login off");
    assert_eq!(t.state(), before, "byte for byte, nothing left behind");
    let journal = t.read("var/lib/google/gce-oslogin.json");
    assert!(journal.contains("\"pending\": null"), "{journal}");
}

#[tokio::test]
async fn a_new_process_with_the_same_settings_changes_nothing_and_finishes_an_interrupted_switch() {
    let t = tree(true).await;
    let mut s = t.switch("");
    s.apply(on()).await;
    let on_state = t.state();
    drop(s);
    let mut s = t.switch("");
    s.apply(on()).await;
    assert_eq!(t.state(), on_state, "restart: idempotent");
    drop(s);

    // A journal that says a switch off was under way, and a half-done tree (sshd_config
    // already restored): the next process finishes it before any metadata arrives.
    let j = t.read("var/lib/google/gce-oslogin.json");
    let j = j.replace("\"pending\": null", "\"pending\": {\"enabled\": false, \"two_factor\": false, \"security_key\": false, \"certificates\": false}");
    std::fs::write(t.root.join("var/lib/google/gce-oslogin.json"), j).unwrap();
    std::fs::write(t.root.join("etc/ssh/sshd_config"), SSHD).unwrap();
    let mut s = t.switch("");
    tokio::time::timeout(std::time::Duration::from_secs(5), s.wakeup())
        .await
        .expect("recovery is due at once");
    assert_eq!(s.on_wakeup().await.as_deref(), Some("OS Login off"));
    assert_eq!(t.read("etc/nsswitch.conf"), NSS);
    assert_eq!(t.read("etc/pam.d/sshd"), PAM);
    assert!(!t.root.join("var/google-users.d").exists());
}

#[tokio::test]
async fn without_the_package_nothing_is_touched() {
    let t = tree(false).await;
    let before = t.state();
    let mut s = t.switch("");
    assert_eq!(
        s.apply(on()).await,
        "OS Login on, but google-compute-engine-oslogin is not installed"
    );
    assert_eq!(t.state(), before);
    // Installed later: the next snapshot configures the host.
    std::fs::write(t.root.join("usr/bin/google_authorized_keys"), "#!/bin/sh\n").unwrap();
    assert_eq!(s.apply(on()).await, "OS Login on");
    assert!(t.read("etc/ssh/sshd_config").starts_with(BLOCK_START));
}

#[tokio::test]
async fn manage_config_false_leaves_every_file_alone() {
    let t = tree(true).await;
    let before = t.state();
    let mut s = t.switch("[OSLogin]\nmanage_config = false\n");
    assert_eq!(
        s.apply(on()).await,
        "OS Login on (configuration left to configuration management)"
    );
    s.apply(Settings::default()).await;
    s.apply(on()).await;
    assert_eq!(t.state(), before);
}

#[tokio::test]
async fn links_are_refused_and_admin_files_are_not_ours() {
    let t = tree(true).await;
    // nsswitch.conf managed elsewhere (authselect-style link); a sudoers include with other
    // content; an existing users directory.
    let real = t.root.join("etc/authselect-nsswitch.conf");
    std::fs::rename(t.root.join("etc/nsswitch.conf"), &real).unwrap();
    symlink(&real, t.root.join("etc/nsswitch.conf")).unwrap();
    std::fs::write(
        t.root.join("etc/sudoers.d/google-oslogin"),
        "# the admin's\n",
    )
    .unwrap();
    std::fs::create_dir(t.root.join("var/google-users.d")).unwrap();
    let mut s = t.switch("");
    s.apply(on()).await;
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        NSS,
        "not written through the link"
    );
    assert!(
        std::fs::symlink_metadata(t.root.join("etc/nsswitch.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(t.read("etc/sudoers.d/google-oslogin"), "# the admin's\n");
    assert!(
        t.read("etc/ssh/sshd_config").starts_with(BLOCK_START),
        "the rest goes on"
    );
    s.apply(Settings::default()).await;
    assert_eq!(t.read("etc/ssh/sshd_config"), SSHD);
    assert_eq!(
        t.read("etc/sudoers.d/google-oslogin"),
        "# the admin's\n",
        "not ours: kept"
    );
    assert!(
        t.root.join("var/google-users.d").is_dir(),
        "existed before: kept"
    );
    assert!(
        !t.root.join("var/google-sudoers.d").exists(),
        "ours: removed"
    );
}

#[tokio::test]
async fn certificates_write_the_trusted_ca_and_take_it_away() {
    let t = tree(true).await;
    t.emu
        .handle()
        .set_instance_attribute("enable-oslogin", "TRUE");
    t.emu.handle().oslogin_set_ca_keys(&[CA]);
    let mut s = t.switch("");
    let certs = Settings {
        certificates: true,
        ..on()
    };
    s.apply(certs).await;
    assert_eq!(t.read("etc/ssh/oslogin_trustedca.pub"), format!("{CA}\n"));
    assert!(t.read("etc/ssh/sshd_config").contains("TrustedUserCAKeys "));
    // A lying server (not JSON) keeps the last good file.
    t.emu.handle().remove_instance_attribute("enable-oslogin");
    s.apply(certs).await;
    assert_eq!(t.read("etc/ssh/oslogin_trustedca.pub"), format!("{CA}\n"));
    s.apply(on()).await;
    assert!(!t.root.join("etc/ssh/oslogin_trustedca.pub").exists());
    assert!(!t.read("etc/ssh/sshd_config").contains("TrustedUserCAKeys"));
}
