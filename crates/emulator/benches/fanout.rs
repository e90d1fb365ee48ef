//! Fan-out: N long polls parked on the attributes, one change, time until all N are answered.
//!
//! `cargo bench -p gce-metadata-emulator --bench fanout` (`FANOUT_N` overrides N = 10,000).
//! Loopback only. The emulator runs in this process (2 tokio workers); the clients run in a
//! child process of the same program, as raw tokio TCP streams writing a minimal HTTP/1.1
//! request, so the figure measures the server, not a client library's pool. Latencies are
//! measured on CLOCK_MONOTONIC, shared by both processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gce_metadata_emulator::Emulator;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use nix::time::{ClockId, clock_gettime};

/// Raise RLIMIT_NOFILE towards `want`; returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= want {
        return soft;
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let target = want.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => target,
        Err(e) => {
            eprintln!("fanout: cannot raise RLIMIT_NOFILE ({e}); staying at {soft}");
            soft
        }
    }
}

fn etag_of(response: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(response).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    head.lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .map(str::to_string)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    out
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Nanoseconds on CLOCK_MONOTONIC: comparable between the two processes of this benchmark.
fn mono_ns() -> i64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    t.tv_sec() * 1_000_000_000 + t.tv_nsec()
}

/// The server side (this process): emulator, park, change, report.
async fn server(n: usize) {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("start emulator");
    let addr = emu.addr();
    let h = emu.handle();
    let old = etag_of(&get(addr, BASE).await).expect("etag");

    // The clients live in a child process (this same program) so that each process holds one
    // fd per poll: 10,000 polls fit a hard RLIMIT_NOFILE of 20,000.
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env("FANOUT_CLIENT", format!("{addr} {n} {old}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client process");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));

    let start = Instant::now();
    while (h.waiters() as usize) < n {
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "only {} of {n} polls parked",
            h.waiters()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let parked = start.elapsed();

    let changed = mono_ns();
    h.set_instance_attribute("fanout", "1");
    writeln!(to_child, "{changed}").expect("tell the clients when");
    let mut result = String::new();
    tokio::task::block_in_place(|| from_child.read_line(&mut result)).expect("client result");
    let status = child.wait().expect("client process");
    assert!(status.success(), "client process failed: {status}");
    let f: Vec<f64> = result
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    let [answered, all, p50, p99] = f[..] else {
        panic!("bad client result {result:?}")
    };
    assert_eq!(
        answered as usize, n,
        "every poll answered with the new ETag"
    );
    println!(
        "fanout: {n} long polls parked in {} ms; all woken and answered in {all:.0} ms (p50 {p50:.1} ms, p99 {p99:.1} ms)",
        parked.as_millis()
    );
    emu.shutdown().await;
}

/// The client side (child process): N raw long polls; prints `answered all_ms p50_ms p99_ms`.
async fn clients(spec: &str) {
    let mut parts = spec.split(' ');
    let addr: std::net::SocketAddr = parts.next().and_then(|a| a.parse().ok()).expect("addr");
    let n: usize = parts.next().and_then(|a| a.parse().ok()).expect("n");
    let old = parts.next().expect("etag").to_string();
    let request: Arc<str> = format!(
        "GET {BASE}&wait_for_change=true&last_etag={old}&timeout_sec=120 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
    .into();

    // Throttle connects so the listen backlog never overflows (a dropped SYN costs 1 s).
    let connecting = Arc::new(Semaphore::new(256));
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, Option<String>)>();
    for _ in 0..n {
        let (tx, request, connecting) = (tx.clone(), request.clone(), connecting.clone());
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.expect("semaphore");
            let mut s = loop {
                match TcpStream::connect(addr).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            s.write_all(request.as_bytes())
                .await
                .expect("write request");
            drop(permit);
            let mut out = Vec::with_capacity(512);
            let ok = s.read_to_end(&mut out).await.is_ok();
            let _ = tx.send((mono_ns(), if ok { etag_of(&out) } else { None }));
        });
    }
    drop(tx);

    let mut arrivals = Vec::with_capacity(n);
    while let Some((at, etag)) = rx.recv().await {
        if etag.is_some_and(|e| e != old) {
            arrivals.push(at);
        }
    }
    let changed: i64 = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("change time");
        line.trim().parse().expect("change time")
    })
    .await
    .expect("stdin reader");
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .map(|a| Duration::from_nanos((a - changed).max(0) as u64))
        .collect();
    latencies.sort_unstable();
    let all = latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0;
    println!(
        "{} {all:.1} {:.2} {:.2}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
}

const BASE: &str = "/computeMetadata/v1/instance/attributes/?recursive=true";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    if let Ok(spec) = std::env::var("FANOUT_CLIENT") {
        let n: usize = spec
            .split(' ')
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        raise_nofile(n as u64 + 256);
        runtime().block_on(clients(&spec));
        return;
    }
    let mut n: usize = std::env::var("FANOUT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let limit = raise_nofile(n as u64 + 256) as usize;
    if limit < n + 128 {
        eprintln!(
            "fanout: RLIMIT_NOFILE {limit} fits only {} polls",
            limit - 128
        );
        n = limit - 128;
    }
    runtime().block_on(server(n));
}
