//! Where things are, what is installed, and — purely — what the host should look like.

use std::path::PathBuf;

use crate::edit::{PamWant, SshdWant};
use crate::settings::Settings;

/// Every path the OS Login switch reads or writes; arguments so tests and packagers can move
/// them. The defaults are the paths Google's package and agent use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub sshd_config: PathBuf,
    pub nsswitch: PathBuf,
    pub pam_sshd: PathBuf,
    pub group_conf: PathBuf,
    /// `#includedir /var/google-sudoers.d`.
    pub sudoers_include: PathBuf,
    /// Per-user sudoers files, written by the package's PAM module for `adminLogin`.
    pub sudoers_dir: PathBuf,
    /// Per-user marker files / sshd snippets, written by the package.
    pub users_dir: PathBuf,
    /// `TrustedUserCAKeys` file, from `oslogin/certificates`.
    pub trusted_ca: PathBuf,
    /// The package's NSS cache files (filled by `google_oslogin_nss_cache`).
    pub nss_caches: Vec<PathBuf>,
    /// The switch's journal (intent record and what we created).
    pub journal: PathBuf,
    pub authorized_keys: PathBuf,
    pub authorized_keys_sk: PathBuf,
    pub authorized_principals: PathBuf,
    pub nss_cache_command: PathBuf,
    /// Where PAM looks for modules, most specific first.
    pub pam_module_dirs: Vec<PathBuf>,
    /// sshd's pid file, used to reload it where systemd is not running.
    pub sshd_pid: PathBuf,
    /// Exists when systemd is the init system (`sd_booted`).
    pub systemd_marker: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        Paths {
            sshd_config: "/etc/ssh/sshd_config".into(),
            nsswitch: "/etc/nsswitch.conf".into(),
            pam_sshd: "/etc/pam.d/sshd".into(),
            group_conf: "/etc/security/group.conf".into(),
            sudoers_include: "/etc/sudoers.d/google-oslogin".into(),
            sudoers_dir: "/var/google-sudoers.d".into(),
            users_dir: "/var/google-users.d".into(),
            trusted_ca: "/etc/ssh/oslogin_trustedca.pub".into(),
            nss_caches: vec![
                "/etc/oslogin_passwd.cache".into(),
                "/etc/oslogin_group.cache".into(),
            ],
            journal: "/var/lib/google/gce-oslogin.json".into(),
            authorized_keys: "/usr/bin/google_authorized_keys".into(),
            authorized_keys_sk: "/usr/bin/google_authorized_keys_sk".into(),
            authorized_principals: "/usr/bin/google_authorized_principals".into(),
            nss_cache_command: "/usr/bin/google_oslogin_nss_cache".into(),
            pam_module_dirs: vec![
                format!("/usr/lib/{triplet}/security").into(),
                format!("/lib/{triplet}/security").into(),
                "/usr/lib64/security".into(),
                "/lib64/security".into(),
                "/usr/lib/security".into(),
                "/lib/security".into(),
            ],
            sshd_pid: "/run/sshd.pid".into(),
            systemd_marker: "/run/systemd/system".into(),
        }
    }
}

/// What is installed; gathered by [`crate::host::probe`], read by [`plan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// `google_authorized_keys` exists: Google's OS Login package is installed.
    pub package: bool,
    pub keys_sk: bool,
    pub principals: bool,
    /// `pam_oslogin_login.so` exists and implements account management.
    pub pam_login_account: bool,
    /// `pam_oslogin_admin.so` exists and implements account management.
    pub pam_admin_account: bool,
}

/// Something the admin should know about the plan, logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Note {
    /// OS Login is on but `google-compute-engine-oslogin` is not installed.
    PackageMissing,
    /// `enable-oslogin-sk` is on but `google_authorized_keys_sk` is missing.
    SecurityKeyCommandMissing,
    /// `enable-oslogin-certificates` is on but `google_authorized_principals` is missing: keys
    /// still work, and a certificate is accepted when it names the user as a principal.
    PrincipalsCommandMissing,
    /// The package's PAM modules lack account management (guest-oslogin #123): `adminLogin`
    /// users get no sudo from PAM.
    PamAccountMissing,
}

/// What the host should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The host is configured for OS Login (enabled and the package is there).
    pub on: bool,
    pub sshd: Option<SshdWant>,
    pub pam: Option<PamWant>,
    pub nsswitch: bool,
    pub group_conf: bool,
    pub sudoers: bool,
    pub trusted_ca: bool,
    pub notes: Vec<Note>,
}

/// Settings + what is installed → the wanted host (Google's `updateSSHConfig` and friends).
pub fn plan(settings: Settings, probe: &Probe, paths: &Paths) -> Plan {
    let s = settings.effective();
    let mut notes = Vec::new();
    if s.enabled && !probe.package {
        notes.push(Note::PackageMissing);
    }
    let on = s.enabled && probe.package;
    if !on {
        return Plan {
            on: false,
            sshd: None,
            pam: None,
            nsswitch: false,
            group_conf: false,
            sudoers: false,
            trusted_ca: false,
            notes,
        };
    }
    // Google: certificates only without security keys.
    let certs = s.certificates && !s.security_key;
    let principals = certs && probe.principals;
    if certs && !probe.principals {
        notes.push(Note::PrincipalsCommandMissing);
    }
    let keys_command = if principals {
        None
    } else if s.security_key && probe.keys_sk {
        Some(paths.authorized_keys_sk.display().to_string())
    } else {
        if s.security_key {
            notes.push(Note::SecurityKeyCommandMissing);
        }
        Some(paths.authorized_keys.display().to_string())
    };
    if !probe.pam_admin_account {
        notes.push(Note::PamAccountMissing);
    }
    Plan {
        on,
        sshd: Some(SshdWant {
            keys_command,
            trusted_ca: certs.then(|| paths.trusted_ca.display().to_string()),
            principals_command: principals
                .then(|| paths.authorized_principals.display().to_string()),
            two_factor: s.two_factor,
            users_dir: paths.users_dir.display().to_string(),
        }),
        pam: Some(PamWant {
            two_factor: s.two_factor,
            account_login: probe.pam_login_account,
            account_admin: probe.pam_admin_account,
        }),
        nsswitch: true,
        group_conf: true,
        sudoers: true,
        trusted_ca: certs,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: Probe = Probe {
        package: true,
        keys_sk: true,
        principals: false,
        pam_login_account: true,
        pam_admin_account: true,
    };

    fn on(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings {
            enabled: true,
            ..Settings::default()
        };
        f(&mut s);
        s
    }

    #[test]
    fn plans_follow_googles_rules() {
        let p = Paths::default();
        let keys = Some("/usr/bin/google_authorized_keys".to_string());
        let sk = Some("/usr/bin/google_authorized_keys_sk".to_string());
        let newer = Probe {
            principals: true,
            ..BOOKWORM
        };
        for (rule, settings, probe, command, ca, principals, notes) in [
            (
                "plain OS Login",
                on(|_| {}),
                BOOKWORM,
                keys.clone(),
                false,
                false,
                vec![],
            ),
            (
                "security keys use the _sk command",
                on(|s| s.security_key = true),
                BOOKWORM,
                sk.clone(),
                false,
                false,
                vec![],
            ),
            (
                "security keys without the _sk command fall back",
                on(|s| s.security_key = true),
                Probe {
                    keys_sk: false,
                    ..BOOKWORM
                },
                keys.clone(),
                false,
                false,
                vec![Note::SecurityKeyCommandMissing],
            ),
            (
                "certificates with a principals command replace keys",
                on(|s| s.certificates = true),
                newer,
                None,
                true,
                true,
                vec![],
            ),
            (
                "certificates without one keep keys and the CA",
                on(|s| s.certificates = true),
                BOOKWORM,
                keys.clone(),
                true,
                false,
                vec![Note::PrincipalsCommandMissing],
            ),
            (
                "security keys win over certificates",
                on(|s| {
                    s.certificates = true;
                    s.security_key = true
                }),
                newer,
                sk.clone(),
                false,
                false,
                vec![],
            ),
        ] {
            let plan = plan(settings, &probe, &p);
            assert!(plan.on, "{rule}");
            let sshd = plan.sshd.expect("sshd");
            assert_eq!(sshd.keys_command, command, "{rule}");
            assert_eq!(sshd.trusted_ca.is_some(), ca, "{rule}");
            assert_eq!(plan.trusted_ca, ca, "{rule}");
            assert_eq!(sshd.principals_command.is_some(), principals, "{rule}");
            assert_eq!(plan.notes, notes, "{rule}");
        }
    }

    #[test]
    fn off_or_without_the_package_nothing_is_configured() {
        let p = Paths::default();
        let off = plan(
            Settings {
                two_factor: true,
                ..Settings::default()
            },
            &BOOKWORM,
            &p,
        );
        assert!(!off.on && off.sshd.is_none() && off.pam.is_none() && !off.nsswitch);
        assert!(off.notes.is_empty());
        let missing = plan(on(|_| {}), &Probe::default(), &p);
        assert!(!missing.on && missing.sshd.is_none() && !missing.sudoers);
        assert_eq!(missing.notes, [Note::PackageMissing]);
    }

    #[test]
    fn pam_account_lines_only_where_the_module_implements_them() {
        let p = Paths::default();
        let plan = plan(
            on(|s| s.two_factor = true),
            &Probe {
                pam_login_account: false,
                pam_admin_account: false,
                ..BOOKWORM
            },
            &p,
        );
        assert_eq!(
            plan.pam,
            Some(PamWant {
                two_factor: true,
                account_login: false,
                account_admin: false
            })
        );
        assert_eq!(plan.notes, [Note::PamAccountMissing]);
        assert!(plan.sshd.expect("sshd").two_factor);
    }
}
