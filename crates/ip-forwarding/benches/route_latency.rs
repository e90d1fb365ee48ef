//! Route latency benchmark, in a private network namespace (never the host's):
//! (a) a forwarded IP set in the emulator → the route's RTM_NEWROUTE seen by a netlink listener;
//! (b) one of our routes deleted behind the daemon's back → restored;
//! (c) idle RSS of the real daemon binary after some long polls.
//!
//! Run: `cargo bench -p gce-ip-forwarding --bench route_latency` (as root).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use futures_util::StreamExt;
use gce_ip_forwarding::netlink::our_route;
use gce_ip_forwarding::{Netlink, Options, Route, plan::parse_prefix};
use gce_metadata_emulator::Emulator;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use serde_json::json;
use std::time::{Duration, Instant};

const ADDS: usize = 50;
const HEALS: usize = 20;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

fn main() {
    if !can_run("route_latency") {
        return;
    }
    in_netns(|| async {
        add_nic("eth0", MAC0);
        let emu = Emulator::with_default_doc()
            .start("127.0.0.1:0")
            .await
            .unwrap();
        let h = emu.handle();
        let _daemon = Daemon::start(&emu.metadata_host(), Options::default());
        let nl = Netlink::open().unwrap();
        let eth0 = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap()
            .index;

        // A listener of our own for RTM_NEWROUTE, so the clock stops when the kernel has it.
        let (mut conn, _lh, events) = rtnetlink::new_connection().unwrap();
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE))
            .unwrap();
        tokio::spawn(conn);
        let new_routes = events.filter_map(|(m, _)| async move {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => our_route(&r, 66),
                _ => None,
            }
        });
        let mut new_routes = std::pin::pin!(new_routes);
        let mut wait_new = async |want: Route| {
            tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(r) = new_routes.next().await {
                    if r == want {
                        return;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no RTM_NEWROUTE for {} within 5 s", want.dst));
        };

        // Warm up: the first snapshot and the daemon's sockets.
        h.set(
            "/instance/networkInterfaces/0/forwardedIps",
            json!(["10.99.0.1"]),
        );
        wait_new(route("10.99.0.1", eth0)).await;

        let mut add = Vec::new();
        for i in 0..ADDS {
            let ip = format!("10.100.{}.{}", i / 200, 1 + i % 200);
            let want = route(&ip, eth0);
            tokio::time::sleep(Duration::from_millis(20)).await; // let the next long poll park
            let t0 = Instant::now();
            h.set("/instance/networkInterfaces/0/forwardedIps", json!([ip]));
            wait_new(want).await;
            add.push(t0.elapsed());
        }

        let mut heal = Vec::new();
        let last = route(
            &format!("10.100.{}.{}", (ADDS - 1) / 200, 1 + (ADDS - 1) % 200),
            eth0,
        );
        for _ in 0..HEALS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t0 = Instant::now();
            nl.del(&last, 66).await.unwrap();
            wait_new(last).await;
            heal.push(t0.elapsed());
        }

        let (m, p90) = stats(&mut add);
        println!(
            "route add latency: median {:.2} ms p90 {:.2} ms (n={ADDS})",
            ms(m),
            ms(p90)
        );
        let (m, p90) = stats(&mut heal);
        println!(
            "route self-heal: median {:.1} ms p90 {:.1} ms (n={HEALS}; includes the {} ms debounce)",
            ms(m),
            ms(p90),
            gce_ip_forwarding::netlink::DEBOUNCE.as_millis()
        );

        idle_rss(&emu.metadata_host()).await;
    });
}

/// (c) The real binary, in this namespace, against the emulator: VmRSS after ~5 s of polling.
async fn idle_rss(host: &str) {
    let dir = std::env::temp_dir().join(format!("ipfwd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gce-ip-forwarding-daemon"))
        .env("GCE_METADATA_HOST", host)
        .arg("--config")
        .arg(dir.join("instance_configs.cfg"))
        .arg("--lock-file")
        .arg(dir.join("lock"))
        .arg("--log-level")
        .arg("warn")
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "daemon idle (bench-profile build, unwinding kept): VmRSS {} RssAnon {} threads {}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("Threads:")
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn route(ip: &str, ifindex: u32) -> Route {
    Route {
        dst: parse_prefix(ip).unwrap(),
        ifindex,
    }
}

fn stats(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9).div_ceil(10) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
