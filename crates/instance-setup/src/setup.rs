//! One run of instance setup, from the metadata facts to the machine: host keys (and the
//! recorded id), their guest attributes, the hostname, /etc/hosts. Every part logs what it did
//! in one line; only "no metadata" and "a configured host key could not be made" fail the run.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gce_agent::Config;
use gce_agent::logging::msgid;
use gce_metadata::{Client, Error as MdsError};

use crate::facts::{self, Facts, FactsError};
use crate::hostkeys::{Reason, attribute, configured_types, marker, plan};
use crate::hostname::{self, BadHostname, HostName};
use crate::hosts::{self, HostEntry, Stack};
use crate::instance_id::{self, Boot};
use crate::keygen::KeyDir;
use crate::system::{self, FileError, Selinux};

/// Namespace of the host key guest attributes (what `gcloud compute ssh` reads).
pub const HOSTKEYS_NAMESPACE: &str = "hostkeys";

/// Everything a run needs; [`Options::from_config`] gives the system's.
#[derive(Debug, Clone)]
pub struct Options {
    /// `[InstanceSetup] network_enabled`: false skips the whole run.
    pub network_enabled: bool,
    pub set_host_keys: bool,
    pub host_key_types: Vec<String>,
    pub host_key_dir: PathBuf,
    pub id_file: PathBuf,
    /// `[Instance] instance_id` (legacy record).
    pub legacy_id: String,
    pub set_hostname: bool,
    pub set_fqdn: bool,
    pub hosts_file: PathBuf,
    pub hostname_file: PathBuf,
    pub metadata_timeout: Duration,
    pub keygen_timeout: Duration,
    pub selinux: Selinux,
}

impl Options {
    pub fn from_config(config: &Config) -> Options {
        let s = &config.instance_setup;
        Options {
            network_enabled: s.network_enabled,
            set_host_keys: s.set_host_keys,
            host_key_types: s.host_key_types.clone(),
            host_key_dir: PathBuf::from(s.host_key_dir.trim()),
            id_file: instance_id::id_file_path(&config.instance.instance_id_dir),
            legacy_id: config.instance.instance_id.clone(),
            set_hostname: s.set_hostname,
            set_fqdn: s.set_fqdn,
            hosts_file: PathBuf::from("/etc/hosts"),
            hostname_file: PathBuf::from("/etc/hostname"),
            metadata_timeout: Duration::from_secs(s.metadata_timeout_secs),
            // RSA generation in a slow (emulated) VM takes seconds; systemd's TimeoutStartSec
            // bounds the whole run.
            keygen_timeout: Duration::from_secs(120),
            selinux: Selinux::detect(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Key types made on this run.
    pub generated: Vec<String>,
    /// Configured key types that could not be made (the id stays unrecorded).
    pub failed: Vec<String>,
    pub id_recorded: bool,
    /// Algorithms published to `hostkeys/`.
    pub published: Vec<String>,
    pub hostname_changed: bool,
    pub hosts_changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}; host keys, hostname and /etc/hosts are left as they are, next boot tries again")]
    Metadata(#[from] FactsError),
    #[error(
        "could not make the SSH host key(s) {0}; the instance id is not recorded, so the next boot tries again"
    )]
    Keys(String),
}

/// Run instance setup once.
pub async fn run(client: &Client, opts: &Options) -> Result<Report, SetupError> {
    let mut report = Report::default();
    if !opts.network_enabled {
        tracing::info!("[InstanceSetup] network_enabled is off: nothing to do");
        return Ok(report);
    }
    let facts = facts::fetch(client, opts.metadata_timeout).await?;
    tracing::debug!(INSTANCE_ID = facts.id, "metadata: {facts:?}");

    host_keys(&facts, opts, &mut report).await;
    if facts.guest_attributes {
        publish_host_keys(client, opts, &mut report).await;
    } else {
        tracing::debug!("guest attributes are not enabled: host keys not published");
    }
    let name = hostname::parse(&facts.hostname);
    if let Err(e) = &name
        && (opts.set_hostname || opts.set_fqdn)
    {
        match e {
            BadHostname::MetadataServer(_) => tracing::error!("{e}"),
            _ => tracing::warn!("{e}; hostname left as it is"),
        }
    }
    if opts.set_hostname
        && let Ok(name) = &name
    {
        set_hostname(name, opts, &mut report).await;
    }
    if opts.set_fqdn {
        set_hosts(name.as_ref().ok(), &facts, opts, &mut report).await;
    }

    if report.failed.is_empty() {
        Ok(report)
    } else {
        Err(SetupError::Keys(report.failed.join(", ")))
    }
}

/// First-boot decision, key generation, and the id record (only once every configured key is in
/// place).
async fn host_keys(facts: &Facts, opts: &Options, report: &mut Report) {
    let id = facts.id;
    let file = match system::read_file(&opts.id_file) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                "cannot read the recorded instance id, not deciding whether this is a first boot: {e}"
            );
            return;
        }
    };
    let recorded = instance_id::recorded_id(file.as_deref(), &opts.legacy_id);
    let boot = instance_id::classify(recorded.as_deref(), id);
    match &boot {
        Boot::NewInstance { recorded } => tracing::info!(
            INSTANCE_ID = id,
            RECORDED_ID = recorded.as_deref().unwrap_or(""),
            "first boot of instance {id} (recorded: {}){}",
            recorded.as_deref().unwrap_or("none"),
            if opts.set_host_keys {
                ": regenerating SSH host keys"
            } else {
                "; [InstanceSetup] set_host_keys is off"
            }
        ),
        Boot::SameInstance => tracing::debug!(INSTANCE_ID = id, "same instance as recorded"),
    }

    let mut keys_ok = true;
    if opts.set_host_keys {
        keys_ok = make_keys(id, &boot, opts, report).await;
    }
    if keys_ok && instance_id::needs_record(file.as_deref(), id) {
        let contents = instance_id::file_contents(id);
        match system::rewrite_file(&opts.id_file, 0o644, |_| contents.into_bytes()) {
            Ok(_) => {
                report.id_recorded = true;
                tracing::info!(
                    INSTANCE_ID = id,
                    "recorded instance id {id} in {}",
                    opts.id_file.display()
                );
                opts.selinux
                    .restore(std::slice::from_ref(&opts.id_file))
                    .await;
            }
            Err(e) => tracing::error!("cannot record the instance id (next boot tries again): {e}"),
        }
    }
}

/// Make the planned keys; false when a configured type could not be made (or not even looked
/// at).
async fn make_keys(id: u64, boot: &Boot, opts: &Options, report: &mut Report) -> bool {
    let (types, unknown) = configured_types(&opts.host_key_types);
    for t in &unknown {
        tracing::warn!(
            "[InstanceSetup] host_key_types: {t:?} is not a host key type ssh-keygen makes; skipped"
        );
    }
    let dir = match KeyDir::open(&opts.host_key_dir) {
        Ok(d) => d,
        Err(gce_agent::FsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::info!(
                "{} does not exist (no SSH server here): no host keys to make",
                opts.host_key_dir.display()
            );
            return true;
        }
        Err(e) => {
            tracing::error!("host key directory: {e}");
            report.failed.extend(types);
            return false;
        }
    };
    let state = match dir.scan(&types) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("host key directory: {e}");
            report.failed.extend(types);
            return false;
        }
    };
    // What a killed run left holds key material: removed whatever this run does.
    dir.sweep_leftovers();
    let tasks = plan(&types, &state, boot, id);
    let mark = marker(id);
    for task in tasks {
        let why = match task.reason {
            Reason::NewInstance => "new instance",
            Reason::Missing => "missing",
        };
        match dir.generate(&task.ktype, &mark, opts.keygen_timeout).await {
            Ok(paths) => {
                let public = dir.public_key(&task.ktype);
                tracing::info!(
                    MESSAGE_ID = msgid::HOST_KEY_GENERATED,
                    KEY_TYPE = %task.ktype,
                    INSTANCE_ID = id,
                    "new SSH host key {} ({why}): {}",
                    paths[0].display(),
                    public.map(|p| p.algorithm).unwrap_or_default()
                );
                opts.selinux.restore(&paths).await;
                report.generated.push(task.ktype);
            }
            Err(e) if task.required => {
                tracing::error!(KEY_TYPE = %task.ktype, "SSH host key {} ({why}) not made, the old one stays: {e}", task.ktype);
                report.failed.push(task.ktype);
            }
            Err(e) => tracing::warn!(
                KEY_TYPE = %task.ktype,
                "leftover SSH host key type {} (not in host_key_types) could not be regenerated, it stays as it was: {e}",
                task.ktype
            ),
        }
    }
    report.failed.is_empty()
}

/// PUT every host key (a private key file with a parsable `.pub`) to `hostkeys/<algorithm>`.
async fn publish_host_keys(client: &Client, opts: &Options, report: &mut Report) {
    let dir = match KeyDir::open(&opts.host_key_dir) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("no host keys to publish: {e}");
            return;
        }
    };
    let state = match dir.scan(&[]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("host keys not published: {e}");
            return;
        }
    };
    let keys: Vec<(String, String, String)> = state
        .into_iter()
        .filter(|(_, st)| st.private)
        .filter_map(|(ktype, st)| {
            let (key, value) = attribute(st.public.as_ref()?);
            Some((ktype, key, value))
        })
        .collect();
    // In parallel: on an ordinary boot these writes are most of the run's time.
    let results = futures_util::future::join_all(
        keys.iter()
            .map(|(_, key, value)| put_with_retry(client, key, value)),
    )
    .await;
    for ((ktype, key, _), result) in keys.iter().zip(results) {
        match result {
            Ok(()) => report.published.push(key.clone()),
            Err(e) => tracing::warn!(
                KEY_TYPE = %ktype,
                STATUS = e.status().unwrap_or(0),
                "host key not published to guest attribute {HOSTKEYS_NAMESPACE}/{key}: {e}"
            ),
        }
    }
    if !report.published.is_empty() {
        tracing::debug!(
            "published host keys to guest attributes: {}",
            report.published.join(" ")
        );
    }
}

/// A 5xx or 429 (live migration, rate limit) or a lost connection is tried twice more; any other
/// answer is final.
async fn put_with_retry(client: &Client, key: &str, value: &str) -> Result<(), MdsError> {
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match client
            .put_guest_attribute(HOSTKEYS_NAMESPACE, key, value)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_outage() || attempt >= 3 => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!("the loop returns")
}

/// The kernel hostname and /etc/hostname: the short name.
async fn set_hostname(name: &HostName, opts: &Options, report: &mut Report) {
    match system::set_kernel_hostname(&name.short) {
        Ok(true) => {
            report.hostname_changed = true;
            tracing::info!(HOSTNAME = %name.short, "hostname set to {}", name.short);
        }
        Ok(false) => {}
        Err(e) => tracing::error!(HOSTNAME = %name.short, "cannot set the hostname: {e}"),
    }
    let path = &opts.hostname_file;
    let result = system::rewrite_file(path, 0o644, |current| match current {
        Some(c) if hostname::hostname_file_says(c, &name.short) => c.to_vec(),
        _ => hostname::hostname_file(&name.short).into_bytes(),
    });
    after_rewrite(path, result, opts, &mut report.hostname_changed).await;
}

/// The address of this instance's host line, and which metadata pins it gets: the primary IPv4
/// address, else (IPv6-only) the primary interface's first IPv6 address. `Err` says why there is
/// no usable address.
pub fn host_address(facts: &Facts) -> (Result<IpAddr, String>, Stack) {
    let v4 = facts.primary_ip.as_str();
    let v6 = facts.primary_ipv6.as_str();
    if !v4.is_empty() {
        let ip = match v4.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => Ok(ip),
            _ => Err(format!("invalid primary IP {v4:?}")),
        };
        return (ip, Stack::Ipv4);
    }
    if v6.is_empty() {
        return (
            Err("the first network interface has no IP address".into()),
            Stack::Ipv4,
        );
    }
    let ip = match v6.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V6(_)) => Ok(ip),
        _ => Err(format!("invalid primary IPv6 address {v6:?}")),
    };
    (ip, Stack::Ipv6Only)
}

/// The `# Added by Google` lines of /etc/hosts.
async fn set_hosts(name: Option<&HostName>, facts: &Facts, opts: &Options, report: &mut Report) {
    let (ip, stack) = host_address(facts);
    let entry = match (name, ip) {
        (Some(n), Ok(ip)) => {
            if stack == Stack::Ipv6Only {
                tracing::debug!(
                    "IPv6-only instance: host entry for {ip}, metadata server pinned at fd20:ce::254 too"
                );
            }
            Some(HostEntry {
                ip,
                fqdn: n.fqdn.clone(),
                short: n.short.clone(),
            })
        }
        (Some(_), Err(why)) => {
            tracing::warn!("{why}: no host entry in /etc/hosts");
            None
        }
        (None, _) => None,
    };
    let path = &opts.hosts_file;
    let result = system::rewrite_file(path, 0o644, |current| {
        let current = current.unwrap_or_default();
        for line in hosts::foreign_metadata_entries(current) {
            tracing::warn!(
                "{} sends metadata.google.internal elsewhere and wins over our pinned line: {line:?}",
                path.display()
            );
        }
        hosts::rewrite(current, entry.as_ref(), stack)
    });
    after_rewrite(path, result, opts, &mut report.hosts_changed).await;
}

async fn after_rewrite(
    path: &Path,
    result: Result<bool, FileError>,
    opts: &Options,
    changed: &mut bool,
) {
    match result {
        Ok(true) => {
            *changed = true;
            tracing::info!("updated {}", path.display());
            opts.selinux.restore(&[path.to_path_buf()]).await;
        }
        Ok(false) => tracing::debug!("{} already right", path.display()),
        Err(e) => tracing::warn!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host line's address: the primary IPv4, else (IPv6-only) the first IPv6 address,
    /// which also pins the metadata server's IPv6 address.
    #[test]
    fn the_host_address_is_ipv4_else_ipv6_on_ipv6_only_instances() {
        let rows = [
            ("10.0.0.2", "", Ok("10.0.0.2"), Stack::Ipv4),
            ("10.0.0.2", "fd20:1::5", Ok("10.0.0.2"), Stack::Ipv4),
            ("", "fd20:1::5", Ok("fd20:1::5"), Stack::Ipv6Only),
            ("", "", Err("no IP address"), Stack::Ipv4),
            ("10.0.0", "", Err("invalid primary IP"), Stack::Ipv4),
            ("fd20::1", "", Err("invalid primary IP"), Stack::Ipv4),
            ("", "10.0.0.9", Err("invalid primary IPv6"), Stack::Ipv6Only),
        ];
        for (v4, v6, want, want_stack) in rows {
            let facts = Facts {
                id: 1,
                hostname: "vm0".into(),
                primary_ip: v4.into(),
                primary_ipv6: v6.into(),
                guest_attributes: false,
            };
            let (got, stack) = host_address(&facts);
            assert_eq!(stack, want_stack, "{v4:?} {v6:?}");
            match (got, want) {
                (Ok(ip), Ok(w)) => assert_eq!(ip.to_string(), w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{v4:?} {v6:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
