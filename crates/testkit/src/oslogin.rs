//! OS Login worlds inside a sandbox (call after [`crate::sandbox`] or [`crate::sandbox_main`]):
//! Google's real OS Login package, extracted by `scripts/setup` (never installed), laid over
//! `/usr/bin` and the libc's library directory with read-only overlays; a writable overlay on
//! `/var` (the package writes `/var/google-*.d`); the metadata address `169.254.169.254` on
//! lo, which the package hard-codes; and a real sshd with `UsePAM yes` reading the private
//! `/etc/ssh/sshd_config`. Everything is private to the sandbox's mount and network
//! namespaces and disappears with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Sshd, free_port, sh, target_dir, temp_dir};

/// Overrides where `scripts/setup` extracted the package (the directory holding `root/`).
pub const PACKAGE_DIR_ENV: &str = "GCE_OSLOGIN_DIR";
const DEFAULT_PACKAGE_DIR: &str = "/var/cache/gce-guest-agents/google-compute-engine-oslogin";

/// The address Google's package sends every request to.
pub const METADATA_IP: &str = "169.254.169.254";

/// The extracted package's root (`…/root/usr/bin/google_authorized_keys` exists), or why not.
pub fn package_root() -> Result<PathBuf, String> {
    let dir = std::env::var(PACKAGE_DIR_ENV).unwrap_or_else(|_| DEFAULT_PACKAGE_DIR.into());
    let root = PathBuf::from(dir).join("root");
    if root.join("usr/bin/google_authorized_keys").is_file() {
        Ok(root)
    } else {
        Err(format!(
            "Google's OS Login package is not extracted in {} (run scripts/setup base as root; \
             it downloads google-compute-engine-oslogin with apt-get and extracts it, never \
             installs it)",
            root.display()
        ))
    }
}

/// The package's version as `scripts/setup` recorded it.
pub fn package_version() -> String {
    package_root()
        .ok()
        .and_then(|r| std::fs::read_to_string(r.with_file_name("version")).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn triplet() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// A read-only overlay on `dir` with `layers` above it (first = topmost).
fn overlay_ro(dir: &str, layers: &[PathBuf]) -> Result<(), String> {
    let mut lower: Vec<String> = layers
        .iter()
        .filter(|l| l.is_dir())
        .map(|l| l.display().to_string())
        .collect();
    lower.push(dir.to_string());
    sh(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &format!("lowerdir={}", lower.join(":")),
        dir,
    ])
}

/// Makes the package's programs, NSS modules and PAM modules appear where the system looks for
/// them: `/usr/bin/google_authorized_keys`, `libnss_oslogin.so.2` in the libc's directory,
/// `pam_oslogin_*.so` in its `security/`.
pub fn install_package(root: &Path) -> Result<(), String> {
    let t = triplet();
    overlay_ro("/usr/bin", &[root.join("usr/bin")])?;
    overlay_ro(
        &format!("/usr/lib/{t}"),
        &[
            root.join(format!("usr/lib/{t}")),
            root.join(format!("lib/{t}")),
        ],
    )
}

/// A writable `/var` whose changes live in the sandbox's `/run` (the package creates
/// `/var/google-sudoers.d` and `/var/google-users.d`). Mounts made under `/var` before are
/// hidden by it, so `/var/lib/google` gets a fresh tmpfs again, and the build's target
/// directory is bound back if it lives under `/var`.
pub fn writable_var() -> Result<(), String> {
    let base = PathBuf::from("/run/gce-testkit/var-overlay");
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let keep = target_dir();
    let stash = "/run/gce-testkit/var-keep";
    if keep.starts_with("/var") {
        std::fs::create_dir_all(stash).map_err(|e| e.to_string())?;
        sh(&["mount", "--bind", &keep.to_string_lossy(), stash])?;
    }
    sh(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &format!(
            "lowerdir=/var,upperdir={},workdir={}",
            upper.display(),
            work.display()
        ),
        "/var",
    ])?;
    std::fs::create_dir_all("/var/lib/google").map_err(|e| e.to_string())?;
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "tmpfs",
        "/var/lib/google",
    ])?;
    if keep.starts_with("/var") {
        sh(&["mount", "--bind", stash, &keep.to_string_lossy()])?;
    }
    Ok(())
}

/// `169.254.169.254/32` on the sandbox's loopback, so a server bound there answers the
/// package's hard-coded URL.
pub fn metadata_address() -> Result<(), String> {
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{METADATA_IP}/32"),
        "dev",
        "lo",
    ])
}

/// The whole OS Login world: package, writable /var, metadata address. Panics with the reason
/// when something is missing.
pub fn setup_world() -> PathBuf {
    let root = package_root().unwrap_or_else(|e| panic!("{e}"));
    install_package(&root).expect("laying the OS Login package over /usr");
    writable_var().expect("writable /var");
    metadata_address().expect("169.254.169.254 on lo");
    root
}

/// The sshd settings the tests need, first in `/etc/ssh/sshd_config`; what an admin would have
/// follows them.
fn sshd_head(port: u16, dir: &Path) -> String {
    format!(
        "# test settings\nListenAddress 127.0.0.1:{port}\nHostKey {}/hostkey\nPidFile /run/sshd.pid\n\
         UsePAM yes\nStrictModes yes\nPermitRootLogin no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         AuthorizedKeysFile .ssh/authorized_keys\nLogLevel VERBOSE\nMaxStartups 100\n\
         MaxAuthTries 20\n",
        dir.display()
    )
}

/// An admin's sshd_config tail: comments, an Include and a Match block, which every OS Login
/// edit must keep byte for byte.
pub const ADMIN_SSHD_TAIL: &str = "\n# The admin's own settings.\nInclude /etc/ssh/test.d/*.conf\n\
     X11Forwarding no\n\nMatch User backup\n    ForceCommand internal-sftp\n";

/// Starts `/usr/sbin/sshd -D` on `/etc/ssh/sshd_config` (written here: test settings, then
/// [`ADMIN_SSHD_TAIL`]), pid file `/run/sshd.pid` so the daemon under test can reload it.
pub fn start_system_sshd() -> Sshd {
    let dir = temp_dir("sshd-system");
    let port = free_port();
    sh(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        dir.join("hostkey").to_str().expect("utf-8"),
    ])
    .expect("host key");
    std::fs::create_dir_all("/etc/ssh/test.d").expect("test.d");
    std::fs::write(
        "/etc/ssh/sshd_config",
        format!("{}{ADMIN_SSHD_TAIL}", sshd_head(port, &dir)),
    )
    .expect("sshd_config");
    let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", "/etc/ssh/sshd_config"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Sshd {
        port,
        dir,
        ip: "127.0.0.1".to_string(),
        child,
    }
}

/// Every path the switch writes, creates or removes.
pub const SWITCHED_PATHS: &[&str] = &[
    "/etc/ssh/sshd_config",
    "/etc/nsswitch.conf",
    "/etc/pam.d/sshd",
    "/etc/security/group.conf",
    "/etc/sudoers.d/google-oslogin",
    "/var/google-sudoers.d",
    "/var/google-users.d",
    "/etc/ssh/oslogin_trustedca.pub",
    "/etc/oslogin_passwd.cache",
    "/etc/oslogin_group.cache",
];

/// The OS Login switch's journal, where the accounts daemon records its intent and result.
pub const SWITCH_JOURNAL: &str = "/var/lib/google/gce-oslogin.json";

/// Whether the switch journal records a finished switch to `on` (nothing pending).
pub fn switch_finished(on: bool) -> bool {
    let j = std::fs::read_to_string(SWITCH_JOURNAL).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
    v["pending"].is_null() && v["applied"]["enabled"] == on
}

/// Waits up to 20 s for a finished switch to `on`; panics with the journal and `log()` (the
/// daemon's log, say) when none comes.
pub fn wait_switch_finished(on: bool, log: impl Fn() -> String) {
    let t = Instant::now();
    while !switch_finished(on) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no finished switch to {on}: {}\n{}",
            std::fs::read_to_string(SWITCH_JOURNAL).unwrap_or_default(),
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
