//! Choosing between the IPv4 and IPv6 addresses of the metadata server, against emulators on
//! 127.0.0.1 and [::1] standing in for 169.254.169.254 and [fd20:ce::254]: each test is one
//! rule of `gce_metadata::endpoint`.

use gce_metadata::{Client, ClientOptions, Endpoint, SelectOptions};
use gce_metadata_emulator::{Emulator, RunningEmulator};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn emulator(addr: &str) -> RunningEmulator {
    Emulator::with_default_doc()
        .start(addr)
        .await
        .expect("emulator")
}

/// A port on `ip` that nobody listens on: connections are refused.
async fn refused(ip: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    l.local_addr().unwrap()
}

fn url(addr: SocketAddr) -> String {
    gce_metadata::endpoint::base_url(addr)
}

fn fast() -> SelectOptions {
    SelectOptions {
        recheck_fallback: Duration::from_millis(300),
        ..SelectOptions::default()
    }
}

#[tokio::test]
async fn ipv4_is_used_where_it_answers() {
    let v4 = emulator("127.0.0.1:0").await;
    let v6 = emulator("[::1]:0").await;
    let c = Client::choosing(vec![v4.addr(), v6.addr()], fast(), ClientOptions::default()).unwrap();
    assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0");
    assert_eq!(c.base_url(), url(v4.addr()));
    assert_eq!(v4.handle().request_count(), 1);
    assert_eq!(
        v6.handle().request_count(),
        0,
        "IPv6 was only dialled, never asked"
    );
}

#[tokio::test]
async fn ipv6_is_used_where_ipv4_is_refused() {
    let v6 = emulator("[::1]:0").await;
    let c = Client::choosing(
        vec![refused("127.0.0.1").await, v6.addr()],
        fast(),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0");
    assert_eq!(c.base_url(), url(v6.addr()));
}

#[tokio::test]
async fn ipv6_is_used_where_ipv4_never_answers_after_the_head_start() {
    // A loopback listener with a full backlog drops SYNs: IPv4 as on an IPv6-only instance
    // whose stack still routes 169.254.0.0/16 somewhere silent.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = s.listen(0).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _filler = tokio::net::TcpStream::connect(silent_addr).await.unwrap();
    let v6 = emulator("[::1]:0").await;
    let c = Client::choosing(
        vec![silent_addr, v6.addr()],
        SelectOptions::default(),
        ClientOptions::default(),
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0");
    let took = t.elapsed();
    assert_eq!(c.base_url(), url(v6.addr()));
    assert!(
        took < Duration::from_millis(1500),
        "head start (250 ms) and a request, far below the 3 s connect timeout: {took:?}"
    );
}

#[tokio::test]
async fn an_override_in_any_form_is_used_as_is() {
    let v6 = emulator("[::1]:0").await;
    let port = v6.addr().port();
    for host in [format!("[::1]:{port}"), format!("http://[::1]:{port}/")] {
        let c =
            Client::for_endpoint(&Endpoint::from_host(&host), ClientOptions::default()).unwrap();
        assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0", "{host}");
        assert_eq!(c.base_url(), url(v6.addr()));
    }
    // An override is never second-guessed: no fallback when it fails.
    let closed = refused("[::1]").await;
    let c = Client::for_endpoint(
        &Endpoint::from_host(&closed.to_string()),
        ClientOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        c.get_text("instance/name").await,
        Err(gce_metadata::Error::Connect { .. })
    ));
    assert_eq!(c.base_url(), url(closed));
}

#[tokio::test]
async fn the_choice_is_made_again_when_the_chosen_address_fails_and_ipv4_is_taken_back() {
    let v4 = emulator("127.0.0.1:0").await;
    let v6 = emulator("[::1]:0").await;
    v6.handle().set_instance_attribute("stack", "v6");
    v4.handle().set_instance_attribute("stack", "v4");
    let c = Client::choosing(vec![v4.addr(), v6.addr()], fast(), ClientOptions::default()).unwrap();
    let stack = || async { c.get_text("instance/attributes/stack").await.unwrap() };
    assert_eq!(stack().await, "v4");
    let clone = c.clone();

    // The network changes: IPv4 refuses. The very request that meets it moves to IPv6.
    v4.handle().stop_listening();
    assert_eq!(stack().await, "v6");
    assert_eq!(clone.base_url(), url(v6.addr()), "clones share the choice");

    // IPv4 is back: once the fallback is due for a second look, it is taken back.
    v4.handle().start_listening();
    v4.handle().listening().await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(stack().await, "v4");

    // Both gone: the request fails, and the choice stays where it was.
    v4.handle().stop_listening();
    v6.handle().stop_listening();
    assert!(c.get_text("instance/attributes/stack").await.is_err());
    assert_eq!(c.base_url(), url(v4.addr()));
    v6.handle().start_listening();
    v6.handle().listening().await;
    assert_eq!(stack().await, "v6");
}

#[tokio::test]
async fn a_watcher_follows_the_server_to_ipv6() {
    use gce_metadata::{Watcher, WatcherOptions};
    type Attrs = std::collections::BTreeMap<String, String>;
    let v4 = emulator("127.0.0.1:0").await;
    let v6 = emulator("[::1]:0").await;
    let c = Client::choosing(vec![v4.addr(), v6.addr()], fast(), ClientOptions::default()).unwrap();
    let mut w = Watcher::new(c.clone(), "instance/attributes/", WatcherOptions::default());
    w.next::<Attrs>().await;
    v4.handle().stop_listening();
    v6.handle()
        .set_instance_attribute("ssh-keys", "alice:ssh-ed25519 AAAA a");
    let t = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(5), w.next::<Attrs>())
        .await
        .expect("delivered from IPv6");
    assert_eq!(s.value["ssh-keys"], "alice:ssh-ed25519 AAAA a");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(c.base_url(), url(v6.addr()));
}
