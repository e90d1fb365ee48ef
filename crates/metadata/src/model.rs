//! Typed view of the recursive metadata document (`/?recursive=true`), limited to what the
//! daemons read. Unknown fields are ignored; a field of the wrong type is a decode error, never a
//! panic. Attribute values are kept as strings exactly as the server sends them.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The recursive root: `{"instance":{…},"project":{…},"oslogin":{…}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Root {
    pub instance: Instance,
    pub project: Project,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Instance {
    pub attributes: BTreeMap<String, String>,
    /// Above 2^53 on real instances: decoded as u64 directly, never through f64.
    pub id: u64,
    pub hostname: String,
    pub name: String,
    /// `projects/<number>/zones/<zone>`.
    pub zone: String,
    pub network_interfaces: Vec<NetworkInterface>,
    pub virtual_clock: VirtualClock,
}

impl Instance {
    /// The zone's short name (`us-west1-b`) from `projects/N/zones/us-west1-b`.
    pub fn zone_name(&self) -> &str {
        self.zone.rsplit('/').next().unwrap_or("")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Project {
    pub attributes: BTreeMap<String, String>,
    pub project_id: String,
    pub numeric_project_id: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkInterface {
    pub mac: String,
    pub ip: String,
    /// The interface's own IPv6 addresses (`ipv6s`): the only addresses of an IPv6-only
    /// instance, whose `ip` is empty.
    pub ipv6s: Vec<String>,
    pub forwarded_ips: Vec<String>,
    pub forwarded_ipv6s: Vec<String>,
    pub ip_aliases: Vec<String>,
    pub target_instance_ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualClock {
    /// A string on the wire (Google's legacy Go code read it as an int and never fired).
    pub drift_token: String,
}

/// Interpret a GCE boolean attribute (`TRUE`, `true`, ` True `). Anything else is false.
pub fn attribute_is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Go's `strconv.ParseBool` (surrounding blanks forgiven), the spelling Google's agent accepts
/// for `enable-oslogin` and its companions; anything else is `None` (unset).
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An OS Login switch (`enable-oslogin`, `-2fa`, `-sk`, `-certificates`): the instance's value
/// if it parses, else the project's, else off (Google's `getOSLoginEnabled`). One rule for the
/// daemon's host switch and for `gce-ssh`'s detection.
pub fn oslogin_flag(instance: Option<&str>, project: Option<&str>) -> bool {
    instance
        .and_then(parse_go_bool)
        .or_else(|| project.and_then(parse_go_bool))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_document() {
        let doc = r#"{"instance":{"attributes":{"ssh-keys":"alice:ssh-ed25519 AAAA alice","block-project-ssh-keys":"FALSE"},
          "hostname":"vm0.c.my-proj.internal","id":5737554347302044216,"name":"vm0",
          "zone":"projects/523926462582/zones/us-west1-b","machineType":"x","unknownThing":{"a":[1,2]},
          "networkInterfaces":[{"mac":"42:01:0a:8a:00:07","ip":"10.138.0.7","mtu":1460,
            "forwardedIps":["1.2.3.4"],"forwardedIpv6s":[],"ipAliases":["10.24.3.0/24"],"targetInstanceIps":[]}],
          "virtualClock":{"driftToken":"0"}},
          "project":{"attributes":{"ssh-keys":""},"numericProjectId":523926462582,"projectId":"my-proj"},
          "oslogin":{}}"#;
        let root: Root = serde_json::from_str(doc).unwrap();
        assert_eq!(
            root.instance.id, 5737554347302044216,
            "id decoded exactly, not via f64"
        );
        assert_eq!(root.instance.zone_name(), "us-west1-b");
        assert_eq!(
            root.instance.network_interfaces[0].forwarded_ips,
            ["1.2.3.4"]
        );
        assert_eq!(
            root.instance.network_interfaces[0].ip_aliases,
            ["10.24.3.0/24"]
        );
        assert_eq!(root.instance.virtual_clock.drift_token, "0");
        assert_eq!(root.project.project_id, "my-proj");
        assert_eq!(
            root.instance.attributes["ssh-keys"],
            "alice:ssh-ed25519 AAAA alice"
        );
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        let rows = [
            r#"{"instance":{"id":"not-a-number"}}"#,
            r#"{"instance":{"attributes":{"ssh-keys":7}}}"#,
            r#"{"instance":{"virtualClock":{"driftToken":5}}}"#,
            r#"{"instance":{"networkInterfaces":{"mac":"x"}}}"#,
            r#"{"instance":{"id":-1}}"#,
            r#"[1,2,3]"#,
        ];
        for row in rows {
            assert!(
                serde_json::from_str::<Root>(row).is_err(),
                "{row} must be rejected"
            );
        }
    }

    /// `enable-oslogin` and companions: the instance's value when it parses, else the project's.
    #[test]
    fn oslogin_flags_instance_overrides_project_in_go_spelling() {
        let rows: [(Option<&str>, Option<&str>, bool); 10] = [
            (None, None, false),
            (None, Some("TRUE"), true),
            (None, Some("1"), true),
            (Some("FALSE"), Some("TRUE"), false),
            (Some("true"), Some("false"), true),
            (Some("T"), None, true),
            (Some(" True\n"), None, true),
            // Not Go's spelling: unset, so the project decides.
            (Some("yes"), Some("TRUE"), true),
            (Some("tRuE"), None, false),
            (Some(""), Some("f"), false),
        ];
        for (instance, project, want) in rows {
            assert_eq!(
                oslogin_flag(instance, project),
                want,
                "instance {instance:?} project {project:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_only_interface_has_ipv6s_and_no_ip() {
        let nic: NetworkInterface =
            serde_json::from_str(r#"{"mac":"42:01:0a:8a:00:07","ipv6s":["fd20:1:2:3:0:5::"]}"#)
                .unwrap();
        assert_eq!(nic.ip, "");
        assert_eq!(nic.ipv6s, ["fd20:1:2:3:0:5::"]);
    }

    #[test]
    fn booleans_follow_gce_rules() {
        for (v, want) in [
            ("TRUE", true),
            ("true", true),
            (" True\n", true),
            ("FALSE", false),
            ("1", false),
            ("", false),
        ] {
            assert_eq!(attribute_is_true(Some(&v.to_string())), want, "{v:?}");
        }
        assert!(!attribute_is_true(None));
    }
}
