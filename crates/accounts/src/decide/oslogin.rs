//! Whether the instance uses OS Login instead of metadata SSH keys (SPEC §10), from the instance
//! and project attributes: `enable-oslogin` and its companions `enable-oslogin-2fa`,
//! `enable-oslogin-sk` and `enable-oslogin-certificates`.
//!
//! Each value is read the way Google's agent reads it, with Go's `strconv.ParseBool`: `1 t T
//! TRUE true True` and `0 f F FALSE false False` (surrounding blanks ignored), nothing else. An instance value
//! that parses overrides the project's; one that does not (blank, `yes`, a typo) is as if unset,
//! so the project value decides. The companions count only while OS Login itself is on.

use std::collections::BTreeMap;

/// What OS Login asks of this instance: the same type, and the same parser, as the host switch in
/// `gce_oslogin` uses, so the key removal here and the sshd/NSS/PAM configuration there can never
/// disagree about a value.
pub use gce_oslogin::Settings as OsLoginSettings;

/// The OS Login settings of a snapshot (companions only while OS Login itself is on).
pub fn settings(
    instance: &BTreeMap<String, String>,
    project: &BTreeMap<String, String>,
) -> OsLoginSettings {
    OsLoginSettings::from_attributes(instance, project).effective()
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
    fn instance_value_that_parses_overrides_the_project() {
        let rows: [(Option<&str>, Option<&str>, bool, &str); 9] = [
            (None, None, false, "unset: off"),
            (None, Some("TRUE"), true, "project on"),
            (Some("FALSE"), Some("TRUE"), false, "instance off overrides"),
            (Some("1"), Some("false"), true, "instance on overrides"),
            (Some("t"), None, true, "Go spelling t"),
            (
                Some(""),
                Some("true"),
                true,
                "blank instance value: project decides",
            ),
            (
                Some("yes"),
                Some("T"),
                true,
                "unparsable instance value: project decides",
            ),
            (None, Some("on"), false, "unparsable project value: off"),
            (Some("0"), None, false, "instance off"),
        ];
        for (inst, proj, want, rule) in rows {
            let i = attrs(
                &inst
                    .map(|v| vec![("enable-oslogin", v)])
                    .unwrap_or_default(),
            );
            let p = attrs(
                &proj
                    .map(|v| vec![("enable-oslogin", v)])
                    .unwrap_or_default(),
            );
            assert_eq!(settings(&i, &p).enabled, want, "{rule}");
        }
    }

    #[test]
    fn companions_count_only_while_os_login_is_on() {
        let all_on = [
            ("enable-oslogin-2fa", "TRUE"),
            ("enable-oslogin-sk", "true"),
            ("enable-oslogin-certificates", "1"),
        ];
        let project = attrs(&all_on);
        let off = settings(&attrs(&[]), &project);
        assert_eq!(off, OsLoginSettings::default());
        let on = settings(&attrs(&[("enable-oslogin", "TRUE")]), &project);
        assert_eq!(
            on,
            OsLoginSettings {
                enabled: true,
                two_factor: true,
                security_key: true,
                certificates: true
            }
        );
        let no_2fa = settings(
            &attrs(&[("enable-oslogin", "TRUE"), ("enable-oslogin-2fa", "FALSE")]),
            &project,
        );
        assert!(no_2fa.enabled && !no_2fa.two_factor && no_2fa.security_key);
    }
}
