//! The watcher and client against the emulator: each test is one documented behaviour.

use gce_metadata::watch::Poll;
use gce_metadata::{Backoff, Client, ClientOptions, Error, Root, Watcher, WatcherOptions};
use gce_metadata_emulator::{Emulator, Fault, RunningEmulator};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Attrs = BTreeMap<String, String>;

async fn emulator() -> RunningEmulator {
    Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("emulator")
}

fn client(host: &str) -> Client {
    Client::new(
        &gce_metadata::client::base_url_for_host(host),
        ClientOptions::default(),
    )
    .unwrap()
}

fn fast_opts(timeout_sec: u64) -> WatcherOptions {
    WatcherOptions {
        timeout_sec,
        client_slack: Duration::from_secs(5),
        floor: Duration::from_millis(300),
        backoff: Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
            refusal_max: Duration::from_millis(200),
            jitter: 0.1,
        },
        ..WatcherOptions::default()
    }
}

#[tokio::test]
async fn first_poll_is_immediate_and_a_change_yields_exactly_one_snapshot() {
    let emu = emulator().await;
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(30),
    );
    let t = Instant::now();
    let first = w.next::<Attrs>().await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "NONE etag must be answered at once"
    );
    assert_eq!(first.etag.len(), 16);

    let h = emu.handle();
    let changer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.set_instance_attribute("ssh-keys", "alice:ssh-ed25519 AAAA a");
    });
    let second = tokio::time::timeout(Duration::from_secs(5), w.next::<Attrs>())
        .await
        .expect("change delivered");
    changer.await.unwrap();
    assert_ne!(second.etag, first.etag);
    assert_eq!(second.value["ssh-keys"], "alice:ssh-ed25519 AAAA a");
    // No further change: nothing more is yielded.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), w.next::<Attrs>())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_server_timeout_with_the_same_etag_yields_nothing() {
    let emu = emulator().await;
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(1),
    );
    w.next::<Attrs>().await;
    let before = emu.handle().request_count();
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), w.next::<Attrs>())
            .await
            .is_err(),
        "timeout must not yield"
    );
    let requests = emu.handle().request_count() - before;
    assert!(
        (2..=4).contains(&requests),
        "one long poll per timeout_sec, got {requests}"
    );
}

#[tokio::test]
async fn a_stale_etag_is_answered_at_once() {
    let emu = emulator().await;
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(30),
    );
    w.next::<Attrs>().await;
    // The change happens while nobody is waiting; the next poll carries the old ETag.
    emu.handle().set_instance_attribute("k", "v");
    let t = Instant::now();
    let s = w.next::<Attrs>().await;
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(s.value["k"], "v");
}

#[tokio::test]
async fn a_burst_of_503s_is_retried_fast_and_recovers() {
    let emu = emulator().await;
    emu.handle().inject(Fault::Status {
        status: 503,
        count: 4,
    });
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(30),
    );
    let t = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(5), w.next::<Attrs>())
        .await
        .expect("recovered");
    assert_eq!(s.etag.len(), 16);
    // 20+40+80+160 ms of backoff (±10%): well under a second, as live migration needs.
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(emu.handle().request_count(), 5);
}

#[tokio::test]
async fn an_answer_without_the_flavor_header_is_refused() {
    let emu = emulator().await;
    emu.handle().inject(Fault::NoFlavor { count: 1 });
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(30),
    );
    match w.poll_once::<Attrs>().await {
        Err(Error::NotMetadataServer { .. }) => {}
        other => panic!("expected NotMetadataServer, got {other:?}"),
    }
    assert_eq!(w.etag(), "NONE", "a refused answer changes nothing");
    let c = client(&emu.metadata_host());
    emu.handle().inject(Fault::NoFlavor { count: 1 });
    assert!(matches!(
        c.get_text("instance/name").await,
        Err(Error::NotMetadataServer { .. })
    ));
    assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0");
}

#[tokio::test]
async fn dropped_connections_and_pauses_are_survived() {
    let emu = emulator().await;
    emu.handle().inject(Fault::Drop { count: 2 });
    let mut w = Watcher::new(
        client(&emu.metadata_host()),
        "instance/attributes/",
        fast_opts(30),
    );
    tokio::time::timeout(Duration::from_secs(5), w.next::<Attrs>())
        .await
        .expect("recovered after drops");
}

/// A server that answers every request at once, always with the same ETag (or, with
/// `changing`, a new ETag and undecodable content each time): the floor must stop a spin.
async fn instant_server(changing: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (etag, body) = if changing {
                        (format!("{n:016x}"), "not json".to_string())
                    } else {
                        ("00000000000000aa".into(), "{}".into())
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nETag: {etag}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn an_instant_unchanged_answer_cannot_make_the_watcher_spin() {
    for changing in [false, true] {
        let (addr, count) = instant_server(changing).await;
        let mut w = Watcher::new(client(&addr), "", fast_opts(60));
        if !changing {
            w.next::<Attrs>().await; // first answer is new
        }
        let before = count.load(std::sync::atomic::Ordering::SeqCst);
        let r = tokio::time::timeout(Duration::from_millis(1000), w.next::<Attrs>()).await;
        assert!(
            r.is_err(),
            "nothing new must be yielded (changing={changing})"
        );
        let n = count.load(std::sync::atomic::Ordering::SeqCst) - before;
        // 300 ms floor: at most 4 requests in a second, where a spin would make thousands.
        assert!(n <= 4, "{n} requests in 1 s with changing={changing}");
    }
}

#[tokio::test]
async fn undecodable_content_is_skipped_and_the_last_good_state_kept() {
    let emu = emulator().await;
    let mut w = Watcher::new(client(&emu.metadata_host()), "", fast_opts(30));
    let good = w.next::<Root>().await;
    assert_eq!(good.value.instance.id, 5737554347302044216);
    // A wrong type in a field we read: not yielded, but the ETag moves on.
    emu.handle()
        .set("/instance/virtualClock/driftToken", serde_json::json!(17));
    match w.poll_once::<Root>().await.unwrap() {
        Poll::Undecodable(Error::Decode { .. }) => {}
        other => panic!("expected Undecodable, got {other:?}"),
    }
    emu.handle()
        .set("/instance/virtualClock/driftToken", serde_json::json!("18"));
    let s = w.next::<Root>().await;
    assert_eq!(s.value.instance.virtual_clock.drift_token, "18");
}

#[tokio::test]
async fn the_client_never_follows_redirects_and_caps_bodies() {
    let emu = emulator().await;
    let c = client(&emu.metadata_host());
    match c.get("instance/attributes").await {
        Err(Error::Status { status: 301, .. }) => {}
        other => panic!("a directory without slash must surface the 301, got {other:?}"),
    }
    match c.get("instance/nope").await {
        Err(Error::Status { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }
    emu.handle()
        .set_instance_attribute("big", &"x".repeat(1_200_000));
    match c.get("instance/attributes/big").await {
        Err(Error::TooLarge {
            limit: 1_048_576, ..
        }) => {}
        other => panic!("expected TooLarge, got {:?}", other.map(|r| r.body.len())),
    }
}

#[tokio::test]
async fn the_client_ignores_http_proxy_settings() {
    let emu = emulator().await;
    // A proxy that does not exist: if the client used it, the request would fail.
    // SAFETY: this test binary's other tests do not read these variables.
    unsafe {
        std::env::set_var("HTTP_PROXY", "http://127.0.0.1:9");
        std::env::set_var("http_proxy", "http://127.0.0.1:9");
    }
    let c = client(&emu.metadata_host());
    assert_eq!(c.get_text("instance/name").await.unwrap(), "vm0");
}

#[tokio::test]
async fn guest_attributes_round_trip() {
    let emu = emulator().await;
    let c = client(&emu.metadata_host());
    assert_eq!(c.get_guest_attribute("gce-agent", "k").await.unwrap(), None);
    c.put_guest_attribute("gce-agent", "k", "v1").await.unwrap();
    assert_eq!(
        c.get_guest_attribute("gce-agent", "k")
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );
    assert_eq!(
        emu.handle().guest_attribute("gce-agent", "k").as_deref(),
        Some("v1")
    );
    c.delete_guest_attribute("gce-agent", "k").await.unwrap();
    assert_eq!(c.get_guest_attribute("gce-agent", "k").await.unwrap(), None);
    c.delete_guest_attribute("gce-agent", "k").await.unwrap();
}
