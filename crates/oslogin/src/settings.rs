//! What metadata and the configuration file ask for.

use std::collections::BTreeMap;
use std::time::Duration;

use gce_agent::config::{Config, ConfigWarning};
use serde::{Deserialize, Serialize};

/// The OS Login switches of metadata (SPEC §10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `enable-oslogin`.
    pub enabled: bool,
    /// `enable-oslogin-2fa`.
    pub two_factor: bool,
    /// `enable-oslogin-sk` (security keys: `google_authorized_keys_sk`).
    pub security_key: bool,
    /// `enable-oslogin-certificates` (trusted user CA from `oslogin/certificates`).
    pub certificates: bool,
}

/// Go's `strconv.ParseBool`; shared with `gce-ssh`'s OS Login detection through gce-metadata.
pub use gce_metadata::model::parse_go_bool;

impl Settings {
    /// Each key: the instance value if it parses, else the project value, else off (Google's
    /// `getOSLoginEnabled`).
    pub fn from_attributes(
        instance: &BTreeMap<String, String>,
        project: &BTreeMap<String, String>,
    ) -> Settings {
        let flag = |key: &str| {
            gce_metadata::model::oslogin_flag(
                instance.get(key).map(String::as_str),
                project.get(key).map(String::as_str),
            )
        };
        Settings {
            enabled: flag("enable-oslogin"),
            two_factor: flag("enable-oslogin-2fa"),
            security_key: flag("enable-oslogin-sk"),
            certificates: flag("enable-oslogin-certificates"),
        }
    }

    /// What the host should look like: every companion switch means nothing without OS Login.
    pub fn effective(self) -> Settings {
        if self.enabled {
            self
        } else {
            Settings::default()
        }
    }
}

/// `[OSLogin]` in instance_configs.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsLoginConfig {
    /// `manage_config` (default true): false leaves sshd_config, nsswitch.conf, PAM,
    /// group.conf and the sudoers include to configuration management (Google's agent has no
    /// such switch: guest-agent #277).
    pub manage_config: bool,
    /// `ca_refresh_secs` (default 300): how often the trusted user CA file is re-read from
    /// `oslogin/certificates` while certificates are on (also at every metadata change).
    pub ca_refresh: Duration,
}

impl Default for OsLoginConfig {
    fn default() -> Self {
        OsLoginConfig {
            manage_config: true,
            ca_refresh: Duration::from_secs(300),
        }
    }
}

impl OsLoginConfig {
    pub fn from_config(config: &Config, warnings: &mut Vec<ConfigWarning>) -> OsLoginConfig {
        const S: &str = "OSLogin";
        let raw = config.raw();
        OsLoginConfig {
            manage_config: raw.get_bool(S, "manage_config", true, warnings),
            ca_refresh: Duration::from_secs(raw.get_u64_in(
                S,
                "ca_refresh_secs",
                300,
                1..=86_400,
                warnings,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn instance_overrides_project_in_gos_spelling() {
        for (rule, instance, project, want) in [
            ("nothing set", vec![], vec![], false),
            ("project on", vec![], vec![("enable-oslogin", "TRUE")], true),
            (
                "instance off wins",
                vec![("enable-oslogin", "false")],
                vec![("enable-oslogin", "TRUE")],
                false,
            ),
            ("instance T", vec![("enable-oslogin", "T")], vec![], true),
            ("1 is true", vec![("enable-oslogin", "1")], vec![], true),
            (
                "unparsable instance value falls back to the project",
                vec![("enable-oslogin", "yes")],
                vec![("enable-oslogin", "true")],
                true,
            ),
            (
                "blank instance value falls back to the project",
                vec![("enable-oslogin", "")],
                vec![("enable-oslogin", "True")],
                true,
            ),
            (
                "mixed case is not Go",
                vec![("enable-oslogin", "tRuE")],
                vec![],
                false,
            ),
            (
                " surrounding blanks",
                vec![("enable-oslogin", " true\n")],
                vec![],
                true,
            ),
        ] {
            let s = Settings::from_attributes(&attrs(&instance), &attrs(&project));
            assert_eq!(s.enabled, want, "{rule}");
        }
    }

    #[test]
    fn companions_are_read_and_mean_nothing_without_oslogin() {
        let s = Settings::from_attributes(
            &attrs(&[
                ("enable-oslogin-2fa", "true"),
                ("enable-oslogin-certificates", "TRUE"),
            ]),
            &attrs(&[("enable-oslogin-sk", "1"), ("enable-oslogin", "true")]),
        );
        assert_eq!(
            s,
            Settings {
                enabled: true,
                two_factor: true,
                security_key: true,
                certificates: true
            }
        );
        let off = Settings {
            enabled: false,
            ..s
        };
        assert_eq!(off.effective(), Settings::default());
    }

    #[test]
    fn config_defaults_and_bad_values() {
        let (raw, _) = gce_agent::RawConfig::from_text(
            "[OSLogin]\nmanage_config = off\nca_refresh_secs = 0\n",
            std::path::Path::new("t.cfg"),
        );
        let cfg = Config::from_raw(raw, &mut Vec::new());
        let mut w = Vec::new();
        let c = OsLoginConfig::from_config(&cfg, &mut w);
        assert!(!c.manage_config);
        assert_eq!(c.ca_refresh, Duration::from_secs(300), "0 is out of range");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            OsLoginConfig::from_config(&Config::default(), &mut Vec::new()),
            OsLoginConfig::default()
        );
    }
}
