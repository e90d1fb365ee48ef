//! End to end, with the real kernel inside a private network namespace per test: the emulator
//! on the namespace's loopback, veth NICs carrying the metadata MACs, the forwarder on its own
//! runtime, and results read back both through netlink and with the real `ip` tool.

mod common;

use common::*;
use gce_ip_forwarding::{Netlink, Options};
use gce_metadata_emulator::Emulator;
use serde_json::json;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(3);
const NIC0: &str = "/instance/networkInterfaces/0";

async fn setup(opts: Options) -> (gce_metadata_emulator::RunningEmulator, Daemon, Netlink) {
    add_nic("eth0", MAC0);
    setup_existing(opts).await
}

#[test]
fn e2e_forwarded_ip_added_changed_and_removed() {
    if !can_run("e2e_forwarded_ip_added_changed_and_removed") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        let h = emu.handle();

        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], SOON).await;
        // The same route as Google's `ip route add to local 10.1.2.3/32 scope host dev eth0 proto 66`.
        let shown = ip(&["route", "show", "table", "local", "proto", "66"]);
        assert_eq!(
            shown.trim(),
            "local 10.1.2.3 dev eth0 scope host",
            "ip shows:\n{shown}"
        );

        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.4"]));
        wait_routes(&nl, &["10.1.2.4/32 dev eth0"], SOON).await;

        h.set(&format!("{NIC0}/forwardedIps"), json!([]));
        wait_routes(&nl, &[], SOON).await;
        let shown = ip(&["route", "show", "table", "local", "proto", "66"]);
        assert_eq!(shown.trim(), "", "ip shows:\n{shown}");
    });
}

#[test]
fn e2e_alias_ranges_ipv6_and_target_instance_ips() {
    if !can_run("e2e_alias_ranges_ipv6_and_target_instance_ips") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        let h = emu.handle();
        h.set(&format!("{NIC0}/ipAliases"), json!(["10.24.3.0/24"]));
        h.set(&format!("{NIC0}/forwardedIpv6s"), json!(["2001:db8::1"]));
        h.set(&format!("{NIC0}/targetInstanceIps"), json!(["10.9.9.9"]));
        wait_routes(
            &nl,
            &[
                "10.24.3.0/24 dev eth0",
                "10.9.9.9/32 dev eth0",
                "2001:db8::1/128 dev eth0",
            ],
            SOON,
        )
        .await;
        let v4 = ip(&["route", "show", "table", "local", "proto", "66"]);
        assert!(
            v4.contains("local 10.24.3.0/24 dev eth0 scope host"),
            "CIDR kept:\n{v4}"
        );
        let v6 = ip(&["-6", "route", "show", "table", "local", "proto", "66"]);
        assert!(
            v6.contains("local 2001:db8::1 dev eth0"),
            "ip -6 shows:\n{v6}"
        );
    });
}

#[test]
fn e2e_alias_and_target_flags_off_route_forwarded_ips_only() {
    if !can_run("e2e_alias_and_target_flags_off_route_forwarded_ips_only") {
        return;
    }
    in_netns(|| async {
        let opts = Options {
            ip_aliases: false,
            target_instance_ips: false,
            ..Options::default()
        };
        let (emu, _d, nl) = setup(opts).await;
        let h = emu.handle();
        h.set(&format!("{NIC0}/ipAliases"), json!(["10.24.3.0/24"]));
        h.set(&format!("{NIC0}/targetInstanceIps"), json!(["10.9.9.9"]));
        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], SOON).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(routes(&nl, 66).await, set(&["10.1.2.3/32 dev eth0"]));
    });
}

#[test]
fn e2e_route_deleted_by_hand_comes_back_within_a_second() {
    if !can_run("e2e_route_deleted_by_hand_comes_back_within_a_second") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        let h = emu.handle();
        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        h.set(&format!("{NIC0}/forwardedIpv6s"), json!(["2001:db8::7"]));
        let both = ["10.1.2.3/32 dev eth0", "2001:db8::7/128 dev eth0"];
        wait_routes(&nl, &both, SOON).await;

        ip(&[
            "route",
            "del",
            "local",
            "10.1.2.3/32",
            "dev",
            "eth0",
            "table",
            "local",
            "proto",
            "66",
        ]);
        let took = wait_routes(&nl, &both, Duration::from_secs(1)).await;
        eprintln!("IPv4 route restored after {took:?}");

        ip(&[
            "-6",
            "route",
            "del",
            "local",
            "2001:db8::7/128",
            "dev",
            "eth0",
            "table",
            "local",
            "proto",
            "66",
        ]);
        let took = wait_routes(&nl, &both, Duration::from_secs(1)).await;
        eprintln!("IPv6 route restored after {took:?}");

        // A link bounce flushes the IPv4 route without any RTM_DELROUTE; the link event heals it.
        ip(&["link", "set", "eth0", "down"]);
        ip(&["link", "set", "eth0", "up"]);
        let took = wait_routes(&nl, &both, Duration::from_secs(1)).await;
        eprintln!("routes restored after a link bounce after {took:?}");
    });
}

#[test]
fn e2e_nic_added_later_gets_its_routes_without_a_metadata_change() {
    if !can_run("e2e_nic_added_later_gets_its_routes_without_a_metadata_change") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        let h = emu.handle();
        let mut nic1 = h.doc()["instance"]["networkInterfaces"][0].clone();
        nic1["mac"] = json!(MAC1.to_uppercase());
        nic1["forwardedIps"] = json!(["10.2.0.1"]);
        h.set("/instance/networkInterfaces/1", nic1);
        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], SOON).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        add_nic("eth1", MAC1);
        let took = wait_routes(
            &nl,
            &["10.1.2.3/32 dev eth0", "10.2.0.1/32 dev eth1"],
            Duration::from_secs(1),
        )
        .await;
        // Metadata did not change after the NIC appeared: the link event alone did it.
        eprintln!("hot-plugged NIC routed after {took:?}");
    });
}

#[test]
fn e2e_foreign_routes_are_never_touched() {
    if !can_run("e2e_foreign_routes_are_never_touched") {
        return;
    }
    in_netns(|| async {
        add_nic("eth0", MAC0);
        let foreign = [
            vec![
                "route",
                "add",
                "local",
                "10.5.5.5/32",
                "dev",
                "eth0",
                "table",
                "local",
                "proto",
                "42",
            ],
            vec![
                "route",
                "add",
                "local",
                "10.6.6.6/32",
                "dev",
                "eth0",
                "table",
                "local",
                "proto",
                "static",
            ],
            vec![
                "-6",
                "route",
                "add",
                "local",
                "2001:db8::9/128",
                "dev",
                "eth0",
                "table",
                "local",
                "proto",
                "42",
            ],
            // Our protocol id, but not a local route in table local: not ours either.
            vec!["route", "add", "10.7.7.0/24", "dev", "eth0", "proto", "66"],
        ];
        for args in &foreign {
            ip(args);
        }
        let snapshot = || {
            (
                ip(&["route", "show", "table", "local"])
                    .lines()
                    .filter(|l| !l.contains(" proto 66"))
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
                ip(&["route", "show", "table", "main"]),
                ip(&["-6", "route", "show", "table", "all"])
                    .lines()
                    .filter(|l| !l.contains(" proto 66"))
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        let before = snapshot();
        // iproute2 names protocol 42 "babel"; match on the addresses.
        assert!(
            before.0.iter().any(|l| l.contains("10.5.5.5"))
                && before.0.iter().any(|l| l.contains("10.6.6.6"))
                && before.2.iter().any(|l| l.contains("2001:db8::9")),
            "{before:?}"
        );

        let (emu, _d, nl) = setup_existing(Options::default()).await;
        let h = emu.handle();
        h.set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], SOON).await;
        h.set(&format!("{NIC0}/forwardedIps"), json!([]));
        wait_routes(&nl, &[], SOON).await;
        // Provoke reconciles through events too.
        ip(&["link", "set", "eth0", "mtu", "1400"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(snapshot(), before);
    });
}

/// As `setup`, for a namespace whose NIC already exists.
async fn setup_existing(
    opts: Options,
) -> (gce_metadata_emulator::RunningEmulator, Daemon, Netlink) {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let daemon = Daemon::start(&emu.metadata_host(), opts);
    let nl = Netlink::open().unwrap();
    (emu, daemon, nl)
}

#[test]
fn e2e_invalid_addresses_are_skipped() {
    if !can_run("e2e_invalid_addresses_are_skipped") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        let h = emu.handle();
        h.set(
            &format!("{NIC0}/forwardedIps"),
            json!([
                "1111.1.1.1",
                "1.1.1.",
                "10.1.2.3",
                "123.123.123.123/123",
                "1.1.1.1.1"
            ]),
        );
        h.set(
            &format!("{NIC0}/forwardedIpv6s"),
            json!(["2001:db8::zz", "2001:db8::/129"]),
        );
        h.set(
            &format!("{NIC0}/ipAliases"),
            json!(["1.1.1.1/11", "123.123.123.123/"]),
        );
        wait_routes(&nl, &["1.0.0.0/11 dev eth0", "10.1.2.3/32 dev eth0"], SOON).await;
    });
}

#[test]
fn e2e_metadata_outage_keeps_routes_and_self_healing() {
    if !can_run("e2e_metadata_outage_keeps_routes_and_self_healing") {
        return;
    }
    in_netns(|| async {
        let (emu, _d, nl) = setup(Options::default()).await;
        emu.handle()
            .set(&format!("{NIC0}/forwardedIps"), json!(["10.1.2.3"]));
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], SOON).await;
        emu.shutdown().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(routes(&nl, 66).await, set(&["10.1.2.3/32 dev eth0"]));
        ip(&[
            "route",
            "del",
            "local",
            "10.1.2.3/32",
            "dev",
            "eth0",
            "table",
            "local",
            "proto",
            "66",
        ]);
        wait_routes(&nl, &["10.1.2.3/32 dev eth0"], Duration::from_secs(1)).await;
    });
}

#[test]
fn e2e_daemon_binary_once_applies_one_snapshot_and_exits() {
    if !can_run("e2e_daemon_binary_once_applies_one_snapshot_and_exits") {
        return;
    }
    in_netns(|| async {
        add_nic("eth0", MAC0);
        let emu = Emulator::with_default_doc()
            .start("127.0.0.1:0")
            .await
            .unwrap();
        emu.handle().set(
            &format!("{NIC0}/forwardedIps"),
            json!(["10.1.2.3", "1.1.1.a"]),
        );
        let dir = std::env::temp_dir().join(format!("ipfwd-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("instance_configs.cfg"),
            "[IpForwarding]\nethernet_proto_id = 77\n",
        )
        .unwrap();
        // The child inherits this thread's network namespace.
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gce-ip-forwarding-daemon"))
            .env("GCE_METADATA_HOST", emu.metadata_host())
            .env_remove("NOTIFY_SOCKET")
            .arg("--once")
            .arg("--config")
            .arg(dir.join("instance_configs.cfg"))
            .arg("--lock-file")
            .arg(dir.join("lock"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The emulator runs on this thread's runtime: wait without blocking it.
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "daemon failed: {log}");
        let shown = ip(&["route", "show", "table", "local", "proto", "77"]);
        assert_eq!(shown.trim(), "local 10.1.2.3 dev eth0 scope host", "{log}");
        assert!(log.contains("10.1.2.3"), "one line per route added:\n{log}");
        assert!(log.contains("1.1.1.a"), "invalid address warned:\n{log}");
        std::fs::remove_dir_all(&dir).unwrap();
    });
}
