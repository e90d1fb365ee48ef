//! `/etc/default/instance_configs.cfg`: the layered INI configuration every daemon reads.
//!
//! Owns the INI parser, the precedence rules (`.template` > admin file > `.distro` > built-in
//! defaults, SPEC §6), the typed [`Config`] and the tolerant value readers. Nothing here may
//! panic or fail hard on bad input: the Python daemons crashed in `main` on a bad boolean, so
//! every bad line or value becomes a [`ConfigWarning`] and the default is used instead.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The admin's configuration file on a real system.
pub const SYSTEM_CONFIG: &str = "/etc/default/instance_configs.cfg";

/// Default metadata server address over IPv4 (by IP: the DNS name was spoofed via DHCP in 2021).
/// Without an override the client also finds the IPv6 one (`gce_metadata::Endpoint::gce`).
pub const DEFAULT_METADATA_HOST: &str = "169.254.169.254";
const DEFAULT_BASE_URL: &str = gce_metadata::DEFAULT_BASE_URL;

/// Environment variable the Google client libraries honour to redirect the metadata server.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

/// Something wrong in a configuration file. Never fatal: the line or value is skipped and the
/// default (or lower layer) is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// The file exists but could not be read (permissions, I/O error, a directory, …).
    #[error("{}: cannot read configuration: {error}", file.display())]
    Unreadable { file: PathBuf, error: String },
    /// A line that is neither a section header, a `key = value` pair, a comment nor blank.
    #[error("{}:{line}: ignoring malformed line: {text:?}", file.display())]
    Malformed {
        file: PathBuf,
        line: usize,
        text: String,
    },
    /// A value that does not parse as the type the key needs.
    #[error(
        "{}: [{section}] {key} = {value:?} is not {expected}; using default {default:?}",
        file.display()
    )]
    BadValue {
        file: PathBuf,
        section: String,
        key: String,
        value: String,
        expected: String,
        default: String,
    },
}

/// Where the three layers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPaths {
    /// Image builder's forced values; highest precedence.
    pub template: PathBuf,
    /// The admin's file.
    pub admin: PathBuf,
    /// Distribution defaults; lowest file precedence.
    pub distro: PathBuf,
}

impl ConfigPaths {
    /// The real system paths under `/etc/default`.
    pub fn system() -> Self {
        Self::for_admin(SYSTEM_CONFIG)
    }

    /// Layers derived from an admin file path: `PATH.template` and `PATH.distro` beside it.
    pub fn for_admin(path: impl AsRef<Path>) -> Self {
        let admin = path.as_ref().to_path_buf();
        let with_suffix = |suffix: &str| {
            let mut s = admin.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        Self {
            template: with_suffix(".template"),
            distro: with_suffix(".distro"),
            admin,
        }
    }
}

/// One parsed INI file: `section -> key -> value`.
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// Parse INI text. Sections are case-sensitive (as Google writes them: `Accounts`,
/// `MetadataScripts`); keys are lowercased, like Python's ConfigParser, so `Groups` == `groups`.
/// Later duplicates win. Inline comments are *not* stripped (ConfigParser's default), because
/// command templates may legitimately contain `#` or `;`.
fn parse_ini(text: &str, file: &Path, warnings: &mut Vec<ConfigWarning>) -> Sections {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let malformed = |warnings: &mut Vec<ConfigWarning>| {
            warnings.push(ConfigWarning::Malformed {
                file: file.to_path_buf(),
                line: idx + 1,
                text: line.to_string(),
            })
        };
        if let Some(rest) = line.strip_prefix('[') {
            match rest.strip_suffix(']').map(str::trim) {
                Some(name) if !name.is_empty() => {
                    sections.entry(name.to_string()).or_default();
                    current = Some(name.to_string());
                }
                _ => malformed(warnings),
            }
            continue;
        }
        // The first of `=` or `:` separates key from value, so `metadata_host = 10.0.0.1:80`
        // keeps its port.
        let Some(pos) = line.find(['=', ':']) else {
            malformed(warnings);
            continue;
        };
        let key = line[..pos].trim().to_ascii_lowercase();
        let value = line[pos + 1..].trim().to_string();
        match (&current, key.is_empty()) {
            (Some(section), false) => {
                sections
                    .entry(section.clone())
                    .or_default()
                    .insert(key, value);
            }
            // A key before any section header, or an empty key.
            _ => malformed(warnings),
        }
    }
    sections
}

/// A raw value and the file it came from (for warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawValue {
    value: String,
    file: PathBuf,
}

/// The merged raw layers. Later services read keys not (yet) in the typed [`Config`] through
/// this, with the same warn-and-default behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    values: BTreeMap<(String, String), RawValue>,
}

impl RawConfig {
    /// Load and merge the layers. Missing files are skipped silently; unreadable files and
    /// malformed lines are reported.
    pub fn load(paths: &ConfigPaths) -> (RawConfig, Vec<ConfigWarning>) {
        let mut raw = RawConfig::default();
        let mut warnings = Vec::new();
        // Lowest precedence first: each layer overwrites the one before.
        for file in [&paths.distro, &paths.admin, &paths.template] {
            match std::fs::read(file) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    raw.merge_text(&text, file, &mut warnings);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warnings.push(ConfigWarning::Unreadable {
                    file: file.clone(),
                    error: e.to_string(),
                }),
            }
        }
        (raw, warnings)
    }

    /// Parse `text` (read from `file`) and lay it over the current values.
    pub fn merge_text(&mut self, text: &str, file: &Path, warnings: &mut Vec<ConfigWarning>) {
        for (section, keys) in parse_ini(text, file, warnings) {
            for (key, value) in keys {
                self.values.insert(
                    (section.clone(), key),
                    RawValue {
                        value,
                        file: file.to_path_buf(),
                    },
                );
            }
        }
    }

    /// Build from INI text alone (tests, tools).
    pub fn from_text(text: &str, file: &Path) -> (RawConfig, Vec<ConfigWarning>) {
        let mut raw = RawConfig::default();
        let mut warnings = Vec::new();
        raw.merge_text(text, file, &mut warnings);
        (raw, warnings)
    }

    fn lookup(&self, section: &str, key: &str) -> Option<&RawValue> {
        self.values
            .get(&(section.to_string(), key.to_ascii_lowercase()))
    }

    /// The raw string, if any layer set it.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.lookup(section, key).map(|v| v.value.as_str())
    }

    /// The file the effective value of `[section] key` came from.
    pub fn source(&self, section: &str, key: &str) -> Option<&Path> {
        self.lookup(section, key).map(|v| v.file.as_path())
    }

    /// A string value; any string is valid, so this never warns. The `warnings` parameter keeps
    /// the getters uniform.
    pub fn get_str(
        &self,
        section: &str,
        key: &str,
        default: &str,
        _warnings: &mut Vec<ConfigWarning>,
    ) -> String {
        self.get(section, key).unwrap_or(default).to_string()
    }

    /// A boolean: `1/yes/true/on` or `0/no/false/off`, case-insensitive.
    pub fn get_bool(
        &self,
        section: &str,
        key: &str,
        default: bool,
        warnings: &mut Vec<ConfigWarning>,
    ) -> bool {
        self.get_parsed(
            section,
            key,
            default,
            "a boolean (1/yes/true/on or 0/no/false/off)",
            parse_bool,
            warnings,
        )
    }

    /// A non-negative integer.
    pub fn get_u64(
        &self,
        section: &str,
        key: &str,
        default: u64,
        warnings: &mut Vec<ConfigWarning>,
    ) -> u64 {
        self.get_u64_in(section, key, default, 0..=u64::MAX, warnings)
    }

    /// A non-negative integer within `range`.
    pub fn get_u64_in(
        &self,
        section: &str,
        key: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        warnings: &mut Vec<ConfigWarning>,
    ) -> u64 {
        let expected = if range == (0..=u64::MAX) {
            "a non-negative integer".to_string()
        } else {
            format!("an integer in {}..={}", range.start(), range.end())
        };
        self.get_parsed(
            section,
            key,
            default,
            &expected,
            |s| s.parse::<u64>().ok().filter(|n| range.contains(n)),
            warnings,
        )
    }

    /// A comma-separated list; blanks around items and empty items are dropped, so an empty
    /// value means an empty list.
    pub fn get_list(
        &self,
        section: &str,
        key: &str,
        default: &str,
        _warnings: &mut Vec<ConfigWarning>,
    ) -> Vec<String> {
        split_list(self.get(section, key).unwrap_or(default))
    }

    fn get_parsed<T: fmt::Debug + Copy>(
        &self,
        section: &str,
        key: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
        warnings: &mut Vec<ConfigWarning>,
    ) -> T {
        let Some(raw) = self.lookup(section, key) else {
            return default;
        };
        match parse(raw.value.trim()) {
            Some(v) => v,
            None => {
                warnings.push(ConfigWarning::BadValue {
                    file: raw.file.clone(),
                    section: section.to_string(),
                    key: key.to_ascii_lowercase(),
                    value: raw.value.clone(),
                    expected: expected.to_string(),
                    default: format!("{default:?}"),
                });
                default
            }
        }
    }
}

/// Parse a config boolean (SPEC §6).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `[Accounts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// `userdel` users removed from metadata (default false: only keys and sudo are dropped).
    pub deprovision_remove: bool,
    /// Supplementary groups for created users (only those that exist are used).
    pub groups: Vec<String>,
    pub useradd_cmd: String,
    pub userdel_cmd: String,
    pub usermod_cmd: String,
    pub groupadd_cmd: String,
    pub gpasswd_add_cmd: String,
    pub gpasswd_remove_cmd: String,
    /// Our extension: system users (uid below the normal range) that may still get keys.
    pub allowed_system_users: Vec<String>,
    /// Group that gets passwordless sudo via `/etc/sudoers.d/google_sudoers`.
    pub sudoers_group: String,
    /// Our extension: how many `useradd_cmd` runs may be in flight at once when one change adds
    /// several users (shadow's useradd serialises its file edits with `lckpwdf`, so its start-up,
    /// home directory and skeleton copy overlap safely). 1 runs them one by one.
    pub create_parallelism: usize,
}

/// `[Daemons]`: which daemons should act at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemons {
    pub accounts_daemon: bool,
    pub clock_skew_daemon: bool,
    pub network_daemon: bool,
}

/// `[IpForwarding]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpForwarding {
    /// Route protocol id marking our routes (`proto 66`).
    pub ethernet_proto_id: u8,
    pub ip_aliases: bool,
    pub target_instance_ips: bool,
}

/// `[MetadataScripts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataScripts {
    pub startup: bool,
    pub shutdown: bool,
    pub default_shell: String,
    /// Where scripts are staged; empty means a private directory under /run or `$TMPDIR`.
    pub run_dir: String,
    /// Our extension: kill shutdown scripts after this many seconds (GCE's on-demand budget).
    pub shutdown_timeout_secs: u64,
    /// Our extension: kill startup scripts after this many seconds; 0 = no limit.
    pub startup_timeout_secs: u64,
}

/// `[Instance]` (Google's names): where the id of the instance whose first boot was handled is
/// recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Legacy: the recorded id kept in this file (Python agent); used when the id file is
    /// missing or empty.
    pub instance_id: String,
    /// Directory of `google_instance_id` (default `/etc`), as Google's Go agent read it until
    /// 2023 and its current agent does; the 2023–2026 Go agent read it as the file's path
    /// (default `/etc/google_instance_id`), so a value ending in `google_instance_id` is the file.
    pub instance_id_dir: String,
}

/// `[InstanceSetup]`: `gce-instance-setup` (Google's names; `metadata_timeout_secs` is ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSetup {
    /// false: skip everything that needs metadata (which is everything here).
    pub network_enabled: bool,
    /// Regenerate SSH host keys when the instance id changes.
    pub set_host_keys: bool,
    pub host_key_types: Vec<String>,
    pub host_key_dir: String,
    /// Set the hostname from `instance/hostname`. Falls back to Google's newer
    /// `[Unstable] set_hostname` when only that is set.
    pub set_hostname: bool,
    /// Keep the `# Added by Google` lines of /etc/hosts. Falls back to `[Unstable] set_fqdn`.
    pub set_fqdn: bool,
    /// How long to keep trying the metadata server before giving up for this boot.
    pub metadata_timeout_secs: u64,
}

/// `[Core]`: our own section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    pub log_level: String,
    /// `host:port` of the metadata server (overridden by `GCE_METADATA_HOST`).
    pub metadata_host: Option<String>,
}

/// The typed configuration plus the raw merged layers it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub accounts: Accounts,
    pub daemons: Daemons,
    pub ip_forwarding: IpForwarding,
    pub metadata_scripts: MetadataScripts,
    pub core: Core,
    pub instance: Instance,
    pub instance_setup: InstanceSetup,
    raw: RawConfig,
}

const DEFAULT_GROUPS: &str = "adm,dip,docker,lxd,plugdev,video";

impl Default for Config {
    fn default() -> Self {
        let mut ignored = Vec::new();
        Self::from_raw(RawConfig::default(), &mut ignored)
    }
}

impl Config {
    /// Load the layers in `paths`; never fails, every problem is a warning.
    pub fn load(paths: &ConfigPaths) -> (Config, Vec<ConfigWarning>) {
        let (raw, mut warnings) = RawConfig::load(paths);
        let config = Self::from_raw(raw, &mut warnings);
        (config, warnings)
    }

    /// Build the typed view of already-merged raw values.
    pub fn from_raw(raw: RawConfig, w: &mut Vec<ConfigWarning>) -> Config {
        const A: &str = "Accounts";
        const D: &str = "Daemons";
        const I: &str = "IpForwarding";
        const M: &str = "MetadataScripts";
        const C: &str = "Core";
        let r = &raw;
        let accounts = Accounts {
            deprovision_remove: r.get_bool(A, "deprovision_remove", false, w),
            groups: r.get_list(A, "groups", DEFAULT_GROUPS, w),
            useradd_cmd: r.get_str(
                A,
                "useradd_cmd",
                "useradd -m -s /bin/bash -p * -G {groups} {user}",
                w,
            ),
            userdel_cmd: r.get_str(A, "userdel_cmd", "userdel -r {user}", w),
            usermod_cmd: r.get_str(A, "usermod_cmd", "usermod -G {groups} {user}", w),
            groupadd_cmd: r.get_str(A, "groupadd_cmd", "groupadd {group}", w),
            gpasswd_add_cmd: r.get_str(A, "gpasswd_add_cmd", "gpasswd -a {user} {group}", w),
            gpasswd_remove_cmd: r.get_str(A, "gpasswd_remove_cmd", "gpasswd -d {user} {group}", w),
            allowed_system_users: r.get_list(A, "allowed_system_users", "", w),
            sudoers_group: r.get_str(A, "sudoers_group", "google-sudoers", w),
            create_parallelism: usize::try_from(r.get_u64_in(
                A,
                "create_parallelism",
                4,
                1..=64,
                w,
            ))
            .unwrap_or(4),
        };
        let daemons = Daemons {
            accounts_daemon: r.get_bool(D, "accounts_daemon", true, w),
            clock_skew_daemon: r.get_bool(D, "clock_skew_daemon", true, w),
            network_daemon: r.get_bool(D, "network_daemon", true, w),
        };
        let ip_forwarding = IpForwarding {
            // The range check guarantees the value fits a u8.
            ethernet_proto_id: u8::try_from(r.get_u64_in(I, "ethernet_proto_id", 66, 0..=255, w))
                .unwrap_or(66),
            ip_aliases: r.get_bool(I, "ip_aliases", true, w),
            target_instance_ips: r.get_bool(I, "target_instance_ips", true, w),
        };
        let metadata_scripts = MetadataScripts {
            startup: r.get_bool(M, "startup", true, w),
            shutdown: r.get_bool(M, "shutdown", true, w),
            default_shell: r.get_str(M, "default_shell", "/bin/bash", w),
            run_dir: r.get_str(M, "run_dir", "", w),
            shutdown_timeout_secs: r.get_u64(M, "shutdown_timeout_secs", 90, w),
            startup_timeout_secs: r.get_u64(M, "startup_timeout_secs", 0, w),
        };
        let core = Core {
            log_level: r.get_str(C, "log_level", "info", w),
            metadata_host: r
                .get(C, "metadata_host")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        let instance = Instance {
            instance_id: r
                .get_str("Instance", "instance_id", "", w)
                .trim()
                .to_string(),
            instance_id_dir: r.get_str("Instance", "instance_id_dir", "/etc", w),
        };
        const S: &str = "InstanceSetup";
        // Our key in [InstanceSetup] wins; else Google's newer agent's [Unstable] key; else on.
        let ours_or_unstable = |key: &str, w: &mut Vec<ConfigWarning>| match r.get(S, key) {
            Some(_) => r.get_bool(S, key, true, w),
            None => r.get_bool("Unstable", key, true, w),
        };
        let instance_setup = InstanceSetup {
            network_enabled: r.get_bool(S, "network_enabled", true, w),
            set_host_keys: r.get_bool(S, "set_host_keys", true, w),
            host_key_types: r.get_list(S, "host_key_types", "ecdsa,ed25519,rsa", w),
            host_key_dir: r.get_str(S, "host_key_dir", "/etc/ssh", w),
            set_hostname: ours_or_unstable("set_hostname", w),
            set_fqdn: ours_or_unstable("set_fqdn", w),
            metadata_timeout_secs: r.get_u64_in(S, "metadata_timeout_secs", 15, 1..=3600, w),
        };
        Config {
            accounts,
            daemons,
            ip_forwarding,
            metadata_scripts,
            core,
            instance,
            instance_setup,
            raw,
        }
    }

    /// The merged raw layers, for keys the typed struct does not cover.
    pub fn raw(&self) -> &RawConfig {
        &self.raw
    }

    /// Where the metadata server is: `GCE_METADATA_HOST` from the environment, then
    /// `[Core] metadata_host`, else GCE's server by IP — `169.254.169.254` where reachable,
    /// `[fd20:ce::254]` on IPv6-only instances.
    pub fn metadata_endpoint(&self) -> gce_metadata::Endpoint {
        let env = std::env::var(METADATA_HOST_ENV).ok();
        self.metadata_endpoint_from(env.as_deref())
    }

    /// As [`Config::metadata_endpoint`] with the environment value passed in. Empty values
    /// are ignored.
    pub fn metadata_endpoint_from(&self, env: Option<&str>) -> gce_metadata::Endpoint {
        [env, self.core.metadata_host.as_deref()]
            .into_iter()
            .flatten()
            .map(normalize_host)
            .find(|h| !h.is_empty())
            .map_or_else(
                gce_metadata::Endpoint::gce,
                gce_metadata::Endpoint::from_host,
            )
    }

    /// The metadata client of every binary (daemons, script runner, instance setup): the one
    /// place the server's address comes from.
    pub fn metadata_client(
        &self,
        opts: gce_metadata::ClientOptions,
    ) -> Result<gce_metadata::Client, gce_metadata::Error> {
        gce_metadata::Client::for_endpoint(&self.metadata_endpoint(), opts)
    }

    /// A fixed base URL: the override, else `169.254.169.254` only.
    #[deprecated(
        note = "never finds the IPv6-only server: build clients with `Config::metadata_client`"
    )]
    pub fn metadata_base_url(&self) -> String {
        match self.metadata_endpoint() {
            gce_metadata::Endpoint::Fixed(url) => url,
            gce_metadata::Endpoint::Auto(_) => DEFAULT_BASE_URL.to_string(),
        }
    }
}

/// Accept `host:port`, and forgive a pasted `http://` prefix or trailing slash.
fn normalize_host(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("http://").unwrap_or(s);
    s.trim_end_matches('/')
}

/// Split a command template on ASCII whitespace into argv and substitute `{name}` placeholders
/// per argument. Values are inserted verbatim in a single pass (a value containing `{user}` is
/// not expanded again, and a value with spaces stays one argument): no shell is ever involved.
/// Unknown placeholders are left as written.
pub fn expand_command(template: &str, vars: &[(&str, &str)]) -> Vec<String> {
    template
        .split_ascii_whitespace()
        .map(|arg| expand_arg(arg, vars))
        .collect()
}

fn expand_arg(arg: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replaced = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v, close))
        });
        match replaced {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Sections, Vec<ConfigWarning>) {
        let mut w = Vec::new();
        let s = parse_ini(text, Path::new("t.cfg"), &mut w);
        (s, w)
    }

    #[test]
    fn ini_accepts_both_separators_comments_and_later_duplicates_win() {
        let (s, w) = parse(
            "# comment\n; other\n\n[Accounts]\n  Groups = a,b  \nkey: v:1\nx=1\nx=2\n[Core]\nmetadata_host = 127.0.0.1:8080\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s["Accounts"]["groups"], "a,b");
        assert_eq!(s["Accounts"]["key"], "v:1");
        assert_eq!(s["Accounts"]["x"], "2");
        assert_eq!(s["Core"]["metadata_host"], "127.0.0.1:8080");
    }

    #[test]
    fn ini_malformed_lines_warn_with_line_number_and_are_skipped() {
        let (s, w) = parse("orphan = 1\n[Accounts]\nno separator here\n[broken\n = v\nok = 1\n");
        assert_eq!(s["Accounts"]["ok"], "1");
        let lines: Vec<usize> = w
            .iter()
            .map(|w| match w {
                ConfigWarning::Malformed { line, .. } => *line,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(lines, vec![1, 3, 4, 5]);
        assert!(w[0].to_string().starts_with("t.cfg:1:"));
    }

    #[test]
    fn ini_sections_are_case_sensitive() {
        let (raw, _) = RawConfig::from_text("[accounts]\ngroups = x\n", Path::new("t"));
        let c = Config::from_raw(raw, &mut Vec::new());
        assert_eq!(c.accounts.groups, split_list(DEFAULT_GROUPS));
    }

    #[test]
    fn booleans_follow_spec_table() {
        for (s, want) in [
            ("1", Some(true)),
            ("yes", Some(true)),
            ("TRUE", Some(true)),
            ("On", Some(true)),
            ("0", Some(false)),
            ("no", Some(false)),
            ("False", Some(false)),
            ("OFF", Some(false)),
            ("", None),
            ("2", None),
            ("y", None),
        ] {
            assert_eq!(parse_bool(s), want, "{s:?}");
        }
    }

    #[test]
    fn defaults_match_spec() {
        let c = Config::default();
        assert!(!c.accounts.deprovision_remove);
        assert_eq!(
            c.accounts.groups,
            ["adm", "dip", "docker", "lxd", "plugdev", "video"]
        );
        assert_eq!(
            c.accounts.useradd_cmd,
            "useradd -m -s /bin/bash -p * -G {groups} {user}"
        );
        assert_eq!(c.accounts.sudoers_group, "google-sudoers");
        assert!(c.accounts.allowed_system_users.is_empty());
        assert!(
            c.daemons.accounts_daemon && c.daemons.clock_skew_daemon && c.daemons.network_daemon
        );
        assert_eq!(c.ip_forwarding.ethernet_proto_id, 66);
        assert!(c.ip_forwarding.ip_aliases && c.ip_forwarding.target_instance_ips);
        assert_eq!(c.metadata_scripts.default_shell, "/bin/bash");
        assert_eq!(c.metadata_scripts.run_dir, "");
        assert_eq!(c.metadata_scripts.shutdown_timeout_secs, 90);
        assert_eq!(c.metadata_scripts.startup_timeout_secs, 0);
        assert_eq!(c.core.log_level, "info");
        assert_eq!(c.core.metadata_host, None);
        assert_eq!(c.instance.instance_id_dir, "/etc");
        assert_eq!(c.instance.instance_id, "");
        let s = &c.instance_setup;
        assert!(s.network_enabled && s.set_host_keys && s.set_hostname && s.set_fqdn);
        assert_eq!(s.host_key_types, ["ecdsa", "ed25519", "rsa"]);
        assert_eq!(s.host_key_dir, "/etc/ssh");
        assert_eq!(s.metadata_timeout_secs, 15);
    }

    /// Google's newer agent keeps its hostname switches in `[Unstable]`; ours win when both are
    /// set.
    #[test]
    fn hostname_switches_honour_googles_unstable_keys() {
        let rows = [
            ("", (true, true)),
            ("[Unstable]\nset_hostname = false\n", (false, true)),
            ("[Unstable]\nset_fqdn = false\n", (true, false)),
            (
                "[Unstable]\nset_hostname = false\n[InstanceSetup]\nset_hostname = true\n",
                (true, true),
            ),
            ("[InstanceSetup]\nset_fqdn = no\n", (true, false)),
        ];
        for (text, want) in rows {
            let (raw, _) = RawConfig::from_text(text, Path::new("t"));
            let c = Config::from_raw(raw, &mut Vec::new());
            let s = &c.instance_setup;
            assert_eq!((s.set_hostname, s.set_fqdn), want, "{text:?}");
        }
    }

    #[test]
    fn empty_groups_value_means_no_groups() {
        let (raw, _) = RawConfig::from_text("[Accounts]\ngroups =\n", Path::new("t"));
        let c = Config::from_raw(raw, &mut Vec::new());
        assert!(c.accounts.groups.is_empty());
    }

    #[test]
    fn metadata_endpoint_precedence_env_then_config_then_auto() {
        use gce_metadata::Endpoint;
        let mut c = Config::default();
        let ep = |c: &Config, env| c.metadata_endpoint_from(env);
        let fixed = |u: &str| Endpoint::Fixed(u.to_string());
        assert_eq!(ep(&c, None), Endpoint::gce());
        assert_eq!(ep(&c, Some("")), Endpoint::gce());
        assert_eq!(ep(&c, Some("  ")), Endpoint::gce());
        c.core.metadata_host = Some("127.0.0.1:8080".into());
        assert_eq!(
            ep(&c, None),
            fixed("http://127.0.0.1:8080/computeMetadata/v1/")
        );
        let rows = [
            ("10.0.0.1:81", "http://10.0.0.1:81/computeMetadata/v1/"),
            (
                "http://10.0.0.1:81/",
                "http://10.0.0.1:81/computeMetadata/v1/",
            ),
            (
                "[fd20:ce::254]",
                "http://[fd20:ce::254]/computeMetadata/v1/",
            ),
            (
                "[fd20:ce::254]:8080",
                "http://[fd20:ce::254]:8080/computeMetadata/v1/",
            ),
            (
                "169.254.169.254",
                "http://169.254.169.254/computeMetadata/v1/",
            ),
        ];
        for (env, url) in rows {
            assert_eq!(ep(&c, Some(env)), fixed(url), "env {env}");
        }
        c.core.metadata_host = Some("[fd20:ce::254]".into());
        assert_eq!(
            ep(&c, None),
            fixed("http://[fd20:ce::254]/computeMetadata/v1/")
        );
    }

    #[test]
    fn expand_command_substitutes_per_argument_without_a_shell() {
        let argv = expand_command("useradd -m -s /bin/bash -p * {user}", &[("user", "alice")]);
        assert_eq!(
            argv,
            ["useradd", "-m", "-s", "/bin/bash", "-p", "*", "alice"]
        );
        // A value with spaces or shell syntax stays a single argument.
        let argv = expand_command(
            "gpasswd -a {user} {group}",
            &[("user", "a b; rm -rf /"), ("group", "g")],
        );
        assert_eq!(argv, ["gpasswd", "-a", "a b; rm -rf /", "g"]);
        // Values are not re-expanded, unknown placeholders stay, embedded placeholders work.
        let argv = expand_command(
            "x --name={user} {group} {unknown} {",
            &[("user", "{group}"), ("group", "g")],
        );
        assert_eq!(argv, ["x", "--name={group}", "g", "{unknown}", "{"]);
        assert!(expand_command("   ", &[]).is_empty());
    }

    #[test]
    fn unreadable_file_warns_missing_is_silent() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the admin file should be: read fails with EISDIR.
        let admin = dir.path().join("cfg");
        std::fs::create_dir(&admin).expect("mkdir");
        let (_, w) = Config::load(&ConfigPaths::for_admin(&admin));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(matches!(&w[0], ConfigWarning::Unreadable { file, .. } if *file == admin));
    }
}
