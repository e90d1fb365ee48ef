//! SPEC §6 as tables: layer precedence per key, and every bad value falls back to its default
//! with exactly one warning naming the file, section and key.

use std::path::{Path, PathBuf};

use gce_agent::config::{Config, ConfigPaths, ConfigWarning, RawConfig};

/// Write the given layers (None = file absent) into a temp dir and load them.
fn load(
    template: Option<&str>,
    admin: Option<&str>,
    distro: Option<&str>,
) -> (tempfile::TempDir, ConfigPaths, Config, Vec<ConfigWarning>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = ConfigPaths::for_admin(dir.path().join("instance_configs.cfg"));
    for (path, text) in [
        (&paths.template, template),
        (&paths.admin, admin),
        (&paths.distro, distro),
    ] {
        if let Some(text) = text {
            std::fs::write(path, text).expect("write layer");
        }
    }
    let (config, warnings) = Config::load(&paths);
    (dir, paths, config, warnings)
}

fn section(s: &str, key: &str, value: &str) -> String {
    format!("[{s}]\n{key} = {value}\n")
}

#[test]
fn for_admin_derives_template_and_distro_paths() {
    let p = ConfigPaths::for_admin("/etc/default/instance_configs.cfg");
    assert_eq!(
        p.template,
        PathBuf::from("/etc/default/instance_configs.cfg.template")
    );
    assert_eq!(
        p.distro,
        PathBuf::from("/etc/default/instance_configs.cfg.distro")
    );
    assert_eq!(ConfigPaths::system(), p);
}

#[test]
fn missing_files_give_defaults_and_no_warnings() {
    let (_d, _p, config, warnings) = load(None, None, None);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config, Config::default());
}

/// Which layer wins, per key: (template, admin, distro, expected effective value).
#[test]
fn precedence_template_over_admin_over_distro_over_default() {
    type Get = fn(&Config) -> String;
    let keys: &[(&str, &str, [&str; 3], &str, Get)] = &[
        // (section, key, [template, admin, distro] values, default, getter)
        (
            "Accounts",
            "useradd_cmd",
            ["t-add {user}", "a-add {user}", "d-add {user}"],
            "useradd -m -s /bin/bash -p * -G {groups} {user}",
            |c| c.accounts.useradd_cmd.clone(),
        ),
        (
            "Accounts",
            "deprovision_remove",
            ["true", "false", "true"],
            "false",
            |c| c.accounts.deprovision_remove.to_string(),
        ),
        (
            "Accounts",
            "groups",
            ["t1,t2", "a1", "d1"],
            "adm,dip,docker,lxd,plugdev,video",
            |c| c.accounts.groups.join(","),
        ),
        (
            "Daemons",
            "network_daemon",
            ["false", "true", "false"],
            "true",
            |c| c.daemons.network_daemon.to_string(),
        ),
        (
            "IpForwarding",
            "ethernet_proto_id",
            ["77", "88", "99"],
            "66",
            |c| c.ip_forwarding.ethernet_proto_id.to_string(),
        ),
        (
            "MetadataScripts",
            "default_shell",
            ["/bin/t", "/bin/a", "/bin/d"],
            "/bin/bash",
            |c| c.metadata_scripts.default_shell.clone(),
        ),
        (
            "MetadataScripts",
            "shutdown_timeout_secs",
            ["1", "2", "3"],
            "90",
            |c| c.metadata_scripts.shutdown_timeout_secs.to_string(),
        ),
        (
            "Core",
            "log_level",
            ["trace", "debug", "warn"],
            "info",
            |c| c.core.log_level.clone(),
        ),
    ];
    // Each row: which layers define the key → index of the winning layer (None = default).
    let rows: &[([bool; 3], Option<usize>)] = &[
        ([true, true, true], Some(0)),
        ([true, false, true], Some(0)),
        ([false, true, true], Some(1)),
        ([false, false, true], Some(2)),
        ([true, false, false], Some(0)),
        ([false, false, false], None),
    ];
    for &(sect, key, values, default, get) in keys {
        for &(present, winner) in rows {
            let layer = |i: usize| present[i].then(|| section(sect, key, values[i]));
            let (_d, paths, config, warnings) = load(
                layer(0).as_deref(),
                layer(1).as_deref(),
                layer(2).as_deref(),
            );
            assert!(
                warnings.is_empty(),
                "{sect}.{key} {present:?}: {warnings:?}"
            );
            let want = winner.map_or(default, |i| values[i]);
            assert_eq!(get(&config), want, "[{sect}] {key} with layers {present:?}");
            let source = config.raw().source(sect, key).map(Path::to_path_buf);
            let want_source =
                winner.map(|i| [&paths.template, &paths.admin, &paths.distro][i].clone());
            assert_eq!(source, want_source, "[{sect}] {key} source");
        }
    }
}

#[test]
fn precedence_is_per_key_not_per_file() {
    let (_d, _p, config, warnings) = load(
        Some("[Accounts]\ngroups = forced\n"),
        Some("[Accounts]\ngroups = admin\nuserdel_cmd = admin-del {user}\n"),
        Some("[Accounts]\nuserdel_cmd = distro-del {user}\nsudoers_group = wheel\n"),
    );
    assert!(warnings.is_empty());
    assert_eq!(config.accounts.groups, ["forced"]);
    assert_eq!(config.accounts.userdel_cmd, "admin-del {user}");
    assert_eq!(config.accounts.sudoers_group, "wheel");
    assert_eq!(config.accounts.usermod_cmd, "usermod -G {groups} {user}");
}

/// Each bad value: the typed field keeps its default and one warning names file/section/key.
#[test]
fn bad_values_fall_back_to_default_with_one_warning() {
    type Get = fn(&Config) -> String;
    let rows: &[(&str, &str, &str, &str, Get)] = &[
        ("Accounts", "deprovision_remove", "maybe", "false", |c| {
            c.accounts.deprovision_remove.to_string()
        }),
        ("Daemons", "accounts_daemon", "", "true", |c| {
            c.daemons.accounts_daemon.to_string()
        }),
        ("Daemons", "clock_skew_daemon", "2", "true", |c| {
            c.daemons.clock_skew_daemon.to_string()
        }),
        ("IpForwarding", "ethernet_proto_id", "256", "66", |c| {
            c.ip_forwarding.ethernet_proto_id.to_string()
        }),
        ("IpForwarding", "ethernet_proto_id", "-1", "66", |c| {
            c.ip_forwarding.ethernet_proto_id.to_string()
        }),
        ("IpForwarding", "ethernet_proto_id", "sixty", "66", |c| {
            c.ip_forwarding.ethernet_proto_id.to_string()
        }),
        ("IpForwarding", "ip_aliases", "yes please", "true", |c| {
            c.ip_forwarding.ip_aliases.to_string()
        }),
        ("MetadataScripts", "startup", "nope", "true", |c| {
            c.metadata_scripts.startup.to_string()
        }),
        (
            "MetadataScripts",
            "shutdown_timeout_secs",
            "1.5",
            "90",
            |c| c.metadata_scripts.shutdown_timeout_secs.to_string(),
        ),
        (
            "MetadataScripts",
            "startup_timeout_secs",
            "99999999999999999999999",
            "0",
            |c| c.metadata_scripts.startup_timeout_secs.to_string(),
        ),
    ];
    for &(sect, key, value, default, get) in rows {
        let text = section(sect, key, value);
        let (_d, paths, config, warnings) = load(None, Some(&text), None);
        assert_eq!(get(&config), default, "[{sect}] {key} = {value:?}");
        assert_eq!(
            warnings.len(),
            1,
            "[{sect}] {key} = {value:?}: {warnings:?}"
        );
        match &warnings[0] {
            ConfigWarning::BadValue {
                file,
                section,
                key: k,
                value: v,
                default: d,
                ..
            } => {
                assert_eq!(file, &paths.admin);
                assert_eq!(
                    (section.as_str(), k.as_str(), v.as_str()),
                    (sect, key, value)
                );
                assert_eq!(d, default);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = warnings[0].to_string();
        assert!(
            msg.contains(&paths.admin.display().to_string())
                && msg.contains(sect)
                && msg.contains(key),
            "{msg}"
        );
    }
}

#[test]
fn bad_value_in_higher_layer_falls_back_to_default_not_lower_layer() {
    // The higher layer's value is the effective one; when it is invalid the built-in default is
    // used (as Python's ConfigParser getboolean fallback did), and the warning names that file.
    let (_d, paths, config, warnings) = load(
        Some("[IpForwarding]\nethernet_proto_id = 300\n"),
        Some("[IpForwarding]\nethernet_proto_id = 70\n"),
        None,
    );
    assert_eq!(config.ip_forwarding.ethernet_proto_id, 66);
    assert!(
        matches!(&warnings[..], [ConfigWarning::BadValue { file, .. }] if *file == paths.template)
    );
}

#[test]
fn good_values_parse() {
    let (_d, _p, config, warnings) = load(
        None,
        Some(
            "[Accounts]\nDeprovision_Remove = YES\ngroups = a , b,,c\nallowed_system_users = ubuntu, admin\n\
             [IpForwarding]\nethernet_proto_id = 255\nip_aliases = off\ntarget_instance_ips = 0\n\
             [MetadataScripts]\nrun_dir = /var/run/scripts\nstartup_timeout_secs = 600\n\
             [Core]\nmetadata_host = 127.0.0.1:8080\nlog_level = debug\n",
        ),
        None,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(config.accounts.deprovision_remove);
    assert_eq!(config.accounts.groups, ["a", "b", "c"]);
    assert_eq!(config.accounts.allowed_system_users, ["ubuntu", "admin"]);
    assert_eq!(config.ip_forwarding.ethernet_proto_id, 255);
    assert!(!config.ip_forwarding.ip_aliases && !config.ip_forwarding.target_instance_ips);
    assert_eq!(config.metadata_scripts.run_dir, "/var/run/scripts");
    assert_eq!(config.metadata_scripts.startup_timeout_secs, 600);
    assert_eq!(config.core.metadata_host.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(
        config.metadata_endpoint_from(None),
        gce_metadata::Endpoint::Fixed("http://127.0.0.1:8080/computeMetadata/v1/".into())
    );
}

#[test]
fn raw_layer_reads_unknown_keys_with_the_same_warning_behaviour() {
    let (_d, paths, config, mut warnings) = load(
        None,
        Some(
            "[Accounts]\nreuse_homedir = true\nfuture_int = x\n[NetworkInterfaces]\nsetup = false\n",
        ),
        None,
    );
    assert!(warnings.is_empty());
    let raw: &RawConfig = config.raw();
    assert!(raw.get_bool("Accounts", "reuse_homedir", false, &mut warnings));
    assert!(!raw.get_bool("NetworkInterfaces", "setup", true, &mut warnings));
    assert_eq!(
        raw.get_str("Accounts", "nothing", "dflt", &mut warnings),
        "dflt"
    );
    assert!(warnings.is_empty());
    assert_eq!(raw.get_u64("Accounts", "future_int", 5, &mut warnings), 5);
    assert!(
        matches!(&warnings[..], [ConfigWarning::BadValue { file, key, .. }] if *file == paths.admin && key == "future_int")
    );
}

#[test]
fn malformed_lines_warn_but_the_rest_of_the_file_applies() {
    let (_d, paths, config, warnings) = load(
        None,
        Some("[Accounts]\nthis line is junk\ndeprovision_remove = true\n"),
        None,
    );
    assert!(config.accounts.deprovision_remove);
    assert!(matches!(
        &warnings[..],
        [ConfigWarning::Malformed { file, line: 2, .. }] if *file == paths.admin
    ));
}
