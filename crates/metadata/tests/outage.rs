//! Issue 9 §2 against the emulator, in real time: after an outage of 10 s and of 60 s of every
//! kind (503, 500, 429 answers; connections refused; a server that accepts and never answers,
//! also the long poll it had parked; every connection dropped), the next change is delivered
//! within 2 s of the server answering again, and the outage cost about one request a second.
//! The kinds run side by side, each with its own emulator and watcher.

use gce_metadata::{Client, ClientOptions, Watcher, WatcherOptions};
use gce_metadata_emulator::{Emulator, Outage};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type Attrs = BTreeMap<String, String>;

const KINDS: [Outage; 6] = [
    Outage::Status(503),
    Outage::Status(500),
    Outage::Status(429),
    Outage::Refuse,
    Outage::Hang,
    Outage::Drop,
];

struct Result {
    kind: Outage,
    latency: Duration,
    requests: u64,
}

async fn one(kind: Outage, length: Duration) -> Result {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("emulator");
    let h = emu.handle();
    let client = Client::new(
        &gce_metadata::client::base_url_for_host(&emu.metadata_host()),
        ClientOptions::default(),
    )
    .unwrap();
    let mut w = Watcher::new(client, "instance/attributes/", WatcherOptions::default());
    w.next::<Attrs>().await;
    let script = async {
        // The long poll is parked, between two of its probes.
        tokio::time::sleep(Duration::from_millis(7300)).await;
        let before = h.request_count();
        h.begin_outage(kind);
        tokio::time::sleep(length).await;
        let requests = h.request_count() - before;
        h.set_instance_attribute("ssh-keys", "alice:ssh-ed25519 AAAA after-the-outage");
        h.end_outage();
        h.listening().await;
        (Instant::now(), requests)
    };
    let watch = async {
        let s = w.next::<Attrs>().await;
        (s, Instant::now())
    };
    let ((back, requests), (snap, got)) = tokio::join!(script, watch);
    assert_eq!(
        snap.value["ssh-keys"], "alice:ssh-ed25519 AAAA after-the-outage",
        "{kind:?}"
    );
    Result {
        kind,
        latency: got.saturating_duration_since(back),
        requests,
    }
}

async fn all_kinds(length: Duration) {
    let mut set = tokio::task::JoinSet::new();
    for kind in KINDS {
        set.spawn(one(kind, length));
    }
    let runs = set.join_all().await;
    for r in &runs {
        eprintln!(
            "{:?} for {length:?}: change delivered {:?} after the server came back; {} request(s) during the outage",
            r.kind, r.latency, r.requests
        );
    }
    for r in runs {
        assert!(
            r.latency <= Duration::from_secs(2),
            "{:?} for {length:?}: {:?}",
            r.kind,
            r.latency
        );
        assert!(
            r.requests <= length.as_secs() + 3,
            "{:?} for {length:?}: {} requests",
            r.kind,
            r.requests
        );
    }
}

#[tokio::test]
async fn after_a_10_s_outage_of_every_kind_the_next_change_lands_within_2_s() {
    all_kinds(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn after_a_60_s_outage_of_every_kind_the_next_change_lands_within_2_s() {
    all_kinds(Duration::from_secs(60)).await;
}
