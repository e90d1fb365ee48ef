//! The emulator's outages and listening addresses, over real sockets: what a client meets during
//! each kind of outage, and IPv4 and IPv6 listeners serving one state.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gce_metadata_emulator::{Emulator, EmulatorHandle, Fault, Outage};

const NAME: &str = "/computeMetadata/v1/instance/name";

/// What a raw HTTP/1.1 GET of `path` on a new connection meets within `wait`.
#[derive(Debug, PartialEq)]
enum Met {
    Answer(u16),
    Refused,
    Closed,
    NoAnswer,
}

fn get(addr: SocketAddr, path: &str, wait: Duration) -> Met {
    let mut s = match TcpStream::connect_timeout(&addr, wait) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Met::Refused,
        Err(e) => panic!("connect: {e}"),
    };
    s.set_read_timeout(Some(wait)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) if out.is_empty() => Met::Closed,
        Ok(_) => Met::Answer(String::from_utf8_lossy(&out[9..12]).parse().unwrap_or(0)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Met::Closed,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Met::NoAnswer
        }
        Err(e) => panic!("read: {e}"),
    }
}

/// Blocking requests go through the runtime's blocking pool so the emulator keeps serving.
fn met(addr: SocketAddr, path: &str, wait_ms: u64) -> impl Future<Output = Met> + 'static {
    let path = path.to_string();
    async move {
        tokio::task::spawn_blocking(move || get(addr, &path, Duration::from_millis(wait_ms)))
            .await
            .unwrap()
    }
}

async fn parked(h: &EmulatorHandle, n: u64) {
    for _ in 0..200 {
        if h.waiters() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("long poll did not park");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outage_kind_looks_as_documented_and_ends_cleanly() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let h = emu.handle();
    let a = emu.addr();
    let rows = [
        (Outage::Status(503), Met::Answer(503)),
        (Outage::Status(429), Met::Answer(429)),
        (Outage::Refuse, Met::Refused),
        (Outage::Hang, Met::NoAnswer),
        (Outage::Drop, Met::Closed),
    ];
    for (kind, during) in rows {
        assert_eq!(
            met(a, NAME, 2000).await,
            Met::Answer(200),
            "{kind:?} before"
        );
        h.begin_outage(kind);
        h.listening().await;
        assert_eq!(met(a, NAME, 300).await, during, "{kind:?} during");
        h.end_outage();
        h.listening().await;
        assert_eq!(met(a, NAME, 2000).await, Met::Answer(200), "{kind:?} after");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_reach_the_parked_long_polls_as_a_dead_server_would() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let h = emu.handle();
    let a = emu.addr();
    let etag = {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = c
            .get(format!(
                "http://{a}/computeMetadata/v1/instance/attributes/?recursive=true"
            ))
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .unwrap();
        r.headers()["etag"].to_str().unwrap().to_string()
    };
    let wait = format!(
        "/computeMetadata/v1/instance/attributes/?recursive=true&wait_for_change=true&last_etag={etag}&timeout_sec=60"
    );
    // Refused and dropped: the parked long poll's connection is closed at once.
    // Hang: it is never answered, not even when the content changes after the outage.
    // Status: it is answered with the status at once.
    let rows = [
        (Outage::Refuse, Met::Closed),
        (Outage::Drop, Met::Closed),
        (Outage::Hang, Met::NoAnswer),
        (Outage::Status(503), Met::Answer(503)),
    ];
    for (i, (kind, fate)) in rows.into_iter().enumerate() {
        let poll = tokio::spawn(met(a, &wait, 1500));
        parked(&h, 1).await;
        h.begin_outage(kind);
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.end_outage();
        h.listening().await;
        h.set_instance_attribute("n", &i.to_string());
        assert_eq!(poll.await.unwrap(), fate, "{kind:?}");
        // Back to the content `etag` names, and nobody parked (a wedged poll is not waiting).
        h.remove_instance_attribute("n");
        while h.waiters() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_fault_swallows_exactly_its_count() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    emu.handle().inject(Fault::Hang { count: 1 });
    assert_eq!(met(emu.addr(), NAME, 300).await, Met::NoAnswer);
    assert_eq!(met(emu.addr(), NAME, 2000).await, Met::Answer(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_state_is_served_on_ipv4_and_ipv6_on_the_same_port() {
    let emu = Emulator::with_default_doc()
        .start_on(&["127.0.0.1:0", "[::1]:0"])
        .await
        .unwrap();
    let addrs = emu.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    assert_eq!(
        addrs[0].port(),
        addrs[1].port(),
        "port 0 after the first means the same port"
    );
    assert_eq!(emu.metadata_host(), addrs[0].to_string());
    emu.handle().set_instance_attribute("k", "v");
    for a in &addrs {
        assert_eq!(
            met(*a, "/computeMetadata/v1/instance/attributes/k", 2000).await,
            Met::Answer(200),
            "{a}"
        );
    }
    // Stopping listening stops both, and both come back.
    emu.handle().stop_listening();
    emu.handle().listening().await;
    for a in &addrs {
        assert_eq!(met(*a, NAME, 300).await, Met::Refused, "{a}");
    }
    emu.handle().start_listening();
    emu.handle().listening().await;
    for a in &addrs {
        assert_eq!(met(*a, NAME, 2000).await, Met::Answer(200), "{a}");
    }
    let v6 = Emulator::with_default_doc().start("[::1]:0").await.unwrap();
    assert!(
        v6.metadata_host().starts_with("[::1]:"),
        "{}",
        v6.metadata_host()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_over_http_ends_by_itself() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let a = emu.addr();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = c
        .post(format!("http://{a}/emulator/outage"))
        .body(r#"{"kind":"refuse","ms":2000}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Well inside the outage even on a loaded machine.
    assert_eq!(met(a, NAME, 300).await, Met::Refused);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    emu.handle().listening().await;
    assert_eq!(met(a, NAME, 2000).await, Met::Answer(200));
    let bad = c
        .post(format!("http://{a}/emulator/outage"))
        .body(r#"{"kind":"flood"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[test]
fn the_binary_listens_on_every_listen_address() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gce-metadata-emulator"))
        .args(["--listen", "127.0.0.1:0", "--listen", "[::1]:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn emulator");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        addrs.push(addr.parse().unwrap());
    }
    let got: Vec<Met> = addrs
        .iter()
        .map(|a| get(*a, NAME, Duration::from_secs(2)))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    assert_eq!(got, [Met::Answer(200), Met::Answer(200)]);
}
