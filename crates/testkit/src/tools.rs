//! The system programs the end-to-end tests and the demo run, and the package that ships each.
//! A missing one is reported in one line that names the package and `scripts/setup`, never as a
//! bare "No such file or directory" (or a panic with a backtrace) from deep inside a test.
//!
//! Every package named here is in the `base` group of `scripts/setup`, the one package list; a
//! unit test below keeps the two in step.

use std::path::{Path, PathBuf};

/// (program, Debian package, Fedora package) for everything a sandboxed test may run.
pub const BASE: &[(&str, &str, &str)] = &[
    ("unshare", "util-linux", "util-linux"),
    ("ip", "iproute2", "iproute"),
    ("sshd", "openssh-server", "openssh-server"),
    ("ssh", "openssh-client", "openssh-clients"),
    ("ssh-keygen", "openssh-client", "openssh-clients"),
    ("useradd", "passwd", "shadow-utils"),
    ("usermod", "passwd", "shadow-utils"),
    ("userdel", "passwd", "shadow-utils"),
    ("gpasswd", "passwd", "shadow-utils"),
    ("curl", "curl", "curl"),
];

/// Where programs are looked for when `PATH` lacks the sbin directories (a non-login root shell
/// on some systems).
const FALLBACK_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The absolute path of `program` (searched in `PATH`, then the usual bin and sbin directories).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The package that ships `program`, as this machine's package manager names it.
pub fn package_of(program: &str) -> Option<&'static str> {
    let fedora =
        !Path::new("/etc/debian_version").exists() && Path::new("/etc/redhat-release").exists();
    let name = program.rsplit('/').next().unwrap_or(program);
    BASE.iter()
        .find(|(p, _, _)| *p == name)
        .map(|(_, deb, rpm)| if fedora { *rpm } else { *deb })
}

/// The one line for a program that is not installed.
pub fn missing_message(programs: &[&str]) -> String {
    let named: Vec<String> = programs
        .iter()
        .map(|p| match package_of(p) {
            Some(pkg) => format!("{p} (package {pkg})"),
            None => (*p).to_string(),
        })
        .collect();
    format!(
        "not installed: {}; run `sudo scripts/setup` to install what the tests and the demo need",
        named.join(", ")
    )
}

/// The absolute path of `program`, or the one-line message naming its package.
pub fn require(program: &str) -> Result<PathBuf, String> {
    which(program).ok_or_else(|| missing_message(&[program]))
}

/// Checks all of `programs` at once, so a fresh machine hears about everything it lacks in one
/// line rather than one test failure at a time.
pub fn require_all(programs: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_message(&missing))
    }
}

/// Every program of [`BASE`].
pub fn require_base() -> Result<(), String> {
    require_all(&BASE.iter().map(|(p, _, _)| *p).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scripts/setup is the one package list: every package this table names must be in its
    /// `base` group, under both package managers' names.
    #[test]
    fn every_package_named_is_in_setup_base_group() {
        let setup = include_str!("../../../scripts/setup");
        let base: Vec<(&str, &str)> = setup
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some("base")).then(|| (f.next().unwrap_or(""), f.next().unwrap_or("")))
            })
            .collect();
        assert!(!base.is_empty(), "scripts/setup has no base group lines");
        for (program, deb, rpm) in BASE {
            assert!(
                base.iter().any(|(d, r)| d == deb && r == rpm),
                "{program}: ({deb}, {rpm}) is not a base line of scripts/setup"
            );
        }
    }

    #[test]
    fn missing_program_message_names_package_and_setup() {
        let msg = missing_message(&["sshd", "no-such-tool"]);
        assert!(msg.contains("sshd (package openssh-server)"), "{msg}");
        assert!(msg.contains("no-such-tool"), "{msg}");
        assert!(msg.contains("scripts/setup"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(require("gce-testkit-no-such-program").is_err());
        assert!(require_all(&["sh"]).is_ok());
        assert_eq!(which("sh").map(|p| p.is_absolute()), Some(true));
    }
}
