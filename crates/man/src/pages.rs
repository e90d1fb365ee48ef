//! The shipped binaries' pages: each function gives one binary's clap definition (the real one,
//! or for the hand-parsed daemons the `CommonArgs` definition their parser is tested against)
//! and the prose clap cannot know. Keep the prose true: it is what an administrator reads.

use clap::{Arg, Args, Command};
use gce_agent::CommonArgs;
use gce_agent::config::{DEFAULT_METADATA_HOST, METADATA_HOST_ENV, SYSTEM_CONFIG};
use gce_agent::lock::{DEFAULT_RUN_DIR, RUN_DIR_ENV};

use crate::{Page, Section};

/// Every shipped binary's page. Adding a binary: its function below, and one line here.
pub fn all() -> Vec<Page> {
    vec![
        accounts_daemon(),
        authorized_keys(),
        clock_skew_daemon(),
        ip_forwarding_daemon(),
        script_runner(),
        instance_setup(),
    ]
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A resident daemon's command line: `CommonArgs`, which its hand parser implements.
fn daemon_command(name: &'static str, about: &'static str) -> Command {
    // After augment_args, which sets the struct's own doc comment as the summary.
    CommonArgs::augment_args(Command::new(name))
        .about(about)
        .version(VERSION)
}

fn item(term: impl Into<String>, text: impl Into<String>) -> (String, String) {
    (term.into(), text.into())
}

/// The configuration layers every binary reads.
fn config_files() -> Vec<(String, String)> {
    vec![
        item(
            SYSTEM_CONFIG,
            "The administrator's configuration (INI sections [Accounts], [Daemons], [IpForwarding], [Instance], [InstanceSetup], [OSLogin], \
             [MetadataScripts], [Core]); another file with --config. A bad line or value is logged \
             and the default used.",
        ),
        item(
            format!("{SYSTEM_CONFIG}.template"),
            "Settings an image builder forces; they win over the administrator's file.",
        ),
        item(
            format!("{SYSTEM_CONFIG}.distro"),
            "A distribution's defaults, below the administrator's file.",
        ),
    ]
}

fn metadata_host_env() -> (String, String) {
    item(
        METADATA_HOST_ENV,
        format!(
            "host:port of the metadata server, as Google's client libraries read it ([fd20:ce::254] \
             and [fd20:ce::254]:port too); wins over [Core] metadata_host. Default: \
             {DEFAULT_METADATA_HOST} where a TCP connection to it succeeds, else [fd20:ce::254] \
             (IPv6-only instances), chosen by IP address (the name metadata.google.internal is \
             never resolved)."
        ),
    )
}

fn daemon_environment() -> Vec<(String, String)> {
    vec![
        metadata_host_env(),
        item(
            "RUST_LOG",
            "Log filter (for example info,gce_accounts=debug); wins over --log-level, -v and \
             [Core] log_level.",
        ),
        item(
            RUN_DIR_ENV,
            format!("Directory of the single-instance lock file (default {DEFAULT_RUN_DIR})."),
        ),
        item(
            "NOTIFY_SOCKET, WATCHDOG_USEC",
            "Set by systemd: readiness and watchdog keep-alives are sent there (Type=notify). \
             Programs the daemon runs never inherit them.",
        ),
        item(
            "JOURNAL_STREAM",
            "Set by systemd: logs go to the journal with structured fields (USER, \
             KEY_FINGERPRINT, ROUTE, ETAG, MESSAGE_ID), else to standard error.",
        ),
    ]
}

fn daemon_signals() -> Vec<(String, String)> {
    vec![
        item(
            "SIGHUP",
            "Reload the configuration files (systemctl reload).",
        ),
        item("SIGTERM, SIGINT", "Stop cleanly."),
    ]
}

fn lock_file(name: &str) -> (String, String) {
    item(
        format!("{DEFAULT_RUN_DIR}/{name}.lock"),
        "Single-instance lock (flock); a second copy exits. Changed with --lock-file or \
         GCE_AGENT_RUN_DIR.",
    )
}

const DAEMON_EXIT: &str = "0 after a clean stop, or when switched off in [Daemons] (or, with \
     --once, after one snapshot was applied); 1 when it cannot run (another instance holds the \
     lock, the runtime cannot start); 2 on a bad command line.";

fn accounts_daemon() -> Page {
    let name = "gce-accounts-daemon";
    let mut files = config_files();
    files.extend([
        item(
            "~USER/.ssh/authorized_keys",
            "Each managed user's keys, below a \"# Added by Google\" marker; the user's own lines \
             are kept byte for byte. Written atomically, never through a symbolic link, never in \
             a home or file owned by someone else.",
        ),
        item(
            "/var/lib/google/gce-accounts-state.json",
            "Which users this daemon created and which it adopted (written before useradd runs); \
             only created users are ever deleted (deprovision_remove).",
        ),
        item(
            "/var/lib/google/google_users",
            "The managed user names, one per line, as Google's agents keep them.",
        ),
        item(
            "/etc/sudoers.d/google_sudoers",
            "Passwordless sudo for the [Accounts] sudoers_group (default google-sudoers).",
        ),
        item(
            "/run/gce-guest-agents/authorized-keys/",
            "Root-owned cache of each user's keys and expiries, read by gce-authorized-keys(8).",
        ),
        item(
            "/etc/passwd, /etc/group, /etc/login.defs, /etc/nsswitch.conf",
            "Read to know existing users, groups and UID_MIN; NSS is asked only when \
             nsswitch.conf names a source beyond files and systemd. Users and groups are changed \
             only through useradd, usermod, userdel, groupadd and gpasswd (the [Accounts] *_cmd \
             templates).",
        ),
        lock_file(name),
    ]);
    Page {
        name,
        section: Section::Admin,
        command: daemon_command(
            name,
            "Keeps local users and their SSH keys equal to GCE metadata",
        ),
        description: "
gce-accounts-daemon long-polls the metadata server for the instance and project attributes and
keeps local users and their SSH keys in step with the ssh-keys metadata: instance sshKeys (legacy)
and ssh-keys, then project ssh-keys and sshKeys unless block-project-ssh-keys is true. A missing
user is created with useradd and added to the [Accounts] groups and the sudoers group; a key whose
google-ssh expireOn has passed is removed on the second, by a timer, even while the metadata
server is down. When enable-oslogin is true it stands down and manages no keys.

Names must match ^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$; root and system accounts (uid below
UID_MIN) are refused unless [Accounts] allowed_system_users names them. An unreachable server or
unparseable metadata changes nothing. With guest attributes enabled, it publishes
gce-agent/ssh-ready-USER and gce-agent/accounts-etag after each change, which gce-ssh waits for.

It is started by gce-accounts-daemon.service; run by hand only for debugging.",
        files,
        environment: daemon_environment(),
        signals: daemon_signals(),
        exit_status: DAEMON_EXIT,
        see_also: &[
            "gce-authorized-keys(8)",
            "useradd(8)",
            "sshd(8)",
            "sshd_config(5)",
            "systemd.service(5)",
        ],
        has_help: true,
    }
}

fn authorized_keys() -> Page {
    let name = "gce-authorized-keys";
    let command = Command::new(name)
        .about("Print a user's currently valid SSH keys from GCE metadata for sshd")
        .disable_help_flag(true)
        .arg(
            Arg::new("user")
                .value_name("USER")
                .required(true)
                .help("The user sshd asks about (sshd's %u)."),
        )
        .arg(
            Arg::new("fingerprint")
                .value_name("FINGERPRINT")
                .help("Only the key with this SHA256 fingerprint (sshd's %f)."),
        );
    let mut files = vec![
        item(
            "/run/gce-guest-agents/authorized-keys/USER",
            "The user's keys and their expiries, written by gce-accounts-daemon(8). Trusted only \
             when it and its directory are owned by root and not writable by group or others.",
        ),
        item(
            "/run/gce-guest-agents/authorized-keys/.complete",
            "Present once the daemon wrote the whole cache: a user without a file then has no \
             keys. Without it, the metadata server is asked once (1.5 s budget).",
        ),
        item(
            "/usr/share/gce-guest-agents/sshd_config.d/60-gce-authorized-keys.conf",
            "The sshd configuration that enables this command; link it into \
             /etc/ssh/sshd_config.d/ and reload sshd.",
        ),
    ];
    files.extend(config_files());
    Page {
        name,
        section: Section::Admin,
        command,
        description: "
gce-authorized-keys is sshd's AuthorizedKeysCommand:

    AuthorizedKeysCommand /usr/bin/gce-authorized-keys %u %f
    AuthorizedKeysCommandUser root

It prints, one per line, the managed keys of USER that are valid at this very moment (only the
offered key's line when FINGERPRINT is given), so an expired key stops working on the second
without any file being rewritten. Keys come from the cache gce-accounts-daemon keeps; if the
daemon never wrote it, the metadata server is asked once (no keys when enable-oslogin is true).
On any error it prints nothing and exits 0, so sshd's other methods still work. Each
lookup is logged to syslog (authpriv) with the user, the fingerprint and the number of keys.",
        files,
        environment: vec![
            metadata_host_env(),
            item(
                "GCE_AUTHORIZED_KEYS_CACHE",
                "Directory of the key cache (default /run/gce-guest-agents/authorized-keys).",
            ),
        ],
        signals: Vec::new(),
        exit_status: "Always 0: sshd treats any output as keys and a failure as no keys.",
        see_also: &["gce-accounts-daemon(8)", "sshd_config(5)", "sshd(8)"],
        has_help: false,
    }
}

fn clock_skew_daemon() -> Page {
    let name = "gce-clock-skew-daemon";
    let mut files = config_files();
    files.extend([
        item(
            "/dev/rtc0",
            "The hardware clock, read to set the system time when chronyd does not run.",
        ),
        item(
            "/etc/adjtime",
            "Says whether the hardware clock keeps UTC; a clock in local time is never used.",
        ),
        item(
            "/run/chrony/chronyd.pid, /var/run/chronyd.pid",
            "When chronyd runs, the clock is stepped with chronyc makestep instead.",
        ),
        lock_file(name),
    ]);
    Page {
        name,
        section: Section::Admin,
        command: daemon_command(
            name,
            "Step the system clock when the GCE drift token changes",
        ),
        description: "
gce-clock-skew-daemon long-polls instance/virtual-clock/drift-token. The first token after start
is only recorded; each later change means a live migration or a host clock event, and the system
clock is stepped: with chronyc makestep when chronyd runs (stepping behind its back would make
them fight), else from the hardware clock when it keeps UTC (read directly, hwclock as fallback).
With [Daemons] clock_skew_daemon = false it watches but never steps.

It is started by gce-clock-skew-daemon.service; run by hand only for debugging.",
        files,
        environment: daemon_environment(),
        signals: daemon_signals(),
        exit_status: DAEMON_EXIT,
        see_also: &["chronyc(1)", "hwclock(8)", "rtc(4)", "systemd.service(5)"],
        has_help: true,
    }
}

fn ip_forwarding_daemon() -> Page {
    let name = "gce-ip-forwarding-daemon";
    let mut files = config_files();
    files.push(item(
        "/run/gce-ip-forwarding/gce-ip-forwarding-daemon.lock",
        "Single-instance lock under systemd (the unit sets GCE_AGENT_RUN_DIR; DynamicUser cannot \
         write /run/gce-guest-agents).",
    ));
    Page {
        name,
        section: Section::Admin,
        command: daemon_command(
            name,
            "Keeps local routes for forwarded IPs, alias ranges and target-instance IPs in step with GCE metadata",
        ),
        description: "
gce-ip-forwarding-daemon long-polls instance/network-interfaces/ and keeps one route of type
local, scope host, in the kernel's local table, tagged with the [IpForwarding] ethernet_proto_id
(default 66), for each forwarded IP, alias IP range ([IpForwarding] ip_aliases) and
target-instance IP ([IpForwarding] target_instance_ips) of each interface, matched to a local link
by its MAC address. It speaks rtnetlink directly (the same routes as ip route add to local ADDR
scope host dev DEV proto 66), removes only routes carrying its protocol id, and puts back within a
second a route that something else deleted. With [Daemons] network_daemon = false it exits.

It is started by gce-ip-forwarding-daemon.service with only CAP_NET_ADMIN; run by hand only for
debugging.",
        files,
        environment: daemon_environment(),
        signals: daemon_signals(),
        exit_status: DAEMON_EXIT,
        see_also: &["ip-route(8)", "rtnetlink(7)", "systemd.service(5)"],
        has_help: true,
    }
}

fn script_runner() -> Page {
    use clap::CommandFactory;
    let name = "gce-metadata-script-runner";
    let mut files = config_files();
    files.extend([
        item(
            "/var/lib/google/gce-startup-scripts.XXXXXX/, /var/lib/google/gce-shutdown-scripts.XXXXXX/",
            "A private 0700 directory per run for the scripts ([MetadataScripts] run_dir, else the \
             first of /var/lib/google, /run, $TMPDIR that is writable and not mounted noexec); \
             removed afterwards.",
        ),
        item(
            format!("{DEFAULT_RUN_DIR}/metadata-script-runner-startup.lock, …-shutdown.lock"),
            "One run of each kind at a time; an unprivileged run goes on without it.",
        ),
    ]);
    Page {
        name,
        section: Section::Admin,
        command: gce_scripts::cli::Cli::command(),
        description: "
gce-metadata-script-runner runs the startup or the shutdown scripts named in metadata, once: for
startup, the keys startup-script-url then startup-script (shutdown-script-url, shutdown-script for
shutdown), the instance's value winning over the project's. A URL script is downloaded first:
gs:// and Cloud Storage URLs with the instance's service-account token, other URLs
unauthenticated, https through curl. Each script runs in its own process group, as an executable
when it starts with #! and through the [MetadataScripts] default_shell otherwise, and every line
it prints is logged as KEY: LINE. Scripts are stopped after [MetadataScripts]
startup_timeout_secs (0, the default: no limit) or shutdown_timeout_secs (90). A failing script is
logged and the next one still runs.

It is run by gce-startup-scripts.service at boot and by gce-shutdown-scripts.service at
shutdown.",
        files,
        environment: vec![
            metadata_host_env(),
            item(
                "RUST_LOG",
                "Log filter; wins over --log-level, -v and [Core] log_level.",
            ),
            item(
                RUN_DIR_ENV,
                format!("Directory of the lock files (default {DEFAULT_RUN_DIR})."),
            ),
        ],
        signals: Vec::new(),
        exit_status: "0 when it ran what it found, failing scripts included (their status is \
             logged); 1 when it could not run at all (no metadata, another run of the same kind); \
             2 on a bad command line.",
        see_also: &["gce-accounts-daemon(8)", "systemd.service(5)", "curl(1)"],
        has_help: true,
    }
}

fn instance_setup() -> Page {
    let name = "gce-instance-setup";
    let mut files = config_files();
    files.extend([
        item(
            "/etc/google_instance_id",
            "The id of the instance the host keys were made for ([Instance] instance_id_dir; \
             the same file and format as Google's agents). Written only after every configured \
             key is in place, so a failed key is retried at the next boot.",
        ),
        item(
            "/etc/ssh/ssh_host_TYPE_key, /etc/ssh/ssh_host_TYPE_key.pub",
            "Regenerated with ssh-keygen when the instance id changed ([InstanceSetup] \
             set_host_keys, host_key_types, host_key_dir); each replaced atomically, private key \
             0600 first, public key 0644 second.",
        ),
        item(
            "/etc/hostname",
            "The short host name from instance/hostname ([InstanceSetup] set_hostname).",
        ),
        item(
            "/etc/hosts",
            "Only the lines ending in \"# Added by Google\": the instance's address, FQDN and \
             short name, and 169.254.169.254 metadata.google.internal ([InstanceSetup] set_fqdn); \
             byte for byte what guest-configs' google_set_hostname writes. Other lines are kept.",
        ),
        lock_file("instance-setup"),
    ]);
    Page {
        name,
        section: Section::Admin,
        command: daemon_command(
            name,
            "Per-instance SSH host keys, hostname and /etc/hosts from GCE metadata (once per boot)",
        ),
        description: "
gce-instance-setup runs once per boot, before sshd, and reads instance/ from the metadata server.
When the instance id differs from the one recorded in /etc/google_instance_id (a new instance
cloned from an image), it makes new SSH host keys of the configured types with ssh-keygen and
records the id last. It publishes every host key to the guest attributes hostkeys/ALGORITHM
(when enable-guest-attributes is on), where gcloud compute ssh and gce-ssh pin them. It sets the
host name and keeps its marked lines in /etc/hosts. With the metadata server unreachable it
changes nothing and exits 1 after [InstanceSetup] metadata_timeout_secs; the next boot tries again.

It is run by gce-instance-setup.service; a second run on the same instance changes nothing.",
        files,
        environment: daemon_environment()
            .into_iter()
            .filter(|(term, _)| !term.starts_with("NOTIFY_SOCKET"))
            .collect(),
        signals: Vec::new(),
        exit_status: "0 when the host matches the metadata (failed guest-attribute writes are \
             logged, not fatal); 1 when the metadata server gave no usable answer in time or a \
             configured host key could not be made (both retried at the next boot); 2 on a bad \
             command line.",
        see_also: &["ssh-keygen(1)", "sshd(8)", "hosts(5)", "hostname(5)"],
        has_help: true,
    }
}
