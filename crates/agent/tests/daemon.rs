//! The shared daemon loop, end to end against the emulator: systemd hears READY=1 after the
//! first apply and STATUS= after each, SIGHUP reloads, SIGTERM stops with STOPPING=1.

use gce_agent::daemon::{self, Service};
use gce_agent::{CommonArgs, Config};
use gce_metadata::{Client, Snapshot};
use gce_metadata_emulator::Emulator;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Recorder {
    applied: Arc<Mutex<Vec<String>>>,
    reloads: Arc<Mutex<u32>>,
}

impl Service for Recorder {
    type Snapshot = BTreeMap<String, String>;
    fn watch_path(&self) -> String {
        "instance/attributes/".into()
    }
    async fn apply(&mut self, snap: &Snapshot<Self::Snapshot>) -> anyhow::Result<String> {
        let v = snap.value.get("color").cloned().unwrap_or_default();
        self.applied.lock().unwrap().push(v.clone());
        Ok(format!("color={v}"))
    }
    async fn reload(&mut self, _config: &Config) {
        *self.reloads.lock().unwrap() += 1;
    }
}

fn recv_until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.contains(want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("never received {want:?}; got {seen:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn ready_after_first_apply_status_after_each_reload_on_hup_stop_on_term() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    emu.handle().set_instance_attribute("color", "red");
    // SAFETY: the only test in this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &sock_path);
        std::env::set_var("GCE_METADATA_HOST", emu.metadata_host());
    }
    let args = CommonArgs {
        config: Some(dir.path().join("instance_configs.cfg")),
        lock_file: Some(dir.path().join("test.lock")),
        ..Default::default()
    };
    let applied = Arc::new(Mutex::new(Vec::new()));
    let reloads = Arc::new(Mutex::new(0));
    let (a, r) = (applied.clone(), reloads.clone());
    let config = Config::load(&args.config_paths()).0;
    let run_args = args.clone();
    let task = tokio::spawn(async move {
        daemon::run(
            "test-daemon",
            &run_args,
            config,
            move |_c: &Config, _client: Client| {
                Ok(Recorder {
                    applied: a,
                    reloads: r,
                })
            },
        )
        .await
    });

    let sock = Arc::new(sock);
    let s = sock.clone();
    let first = tokio::task::spawn_blocking(move || recv_until(&s, "READY=1"))
        .await
        .unwrap();
    assert!(
        first.iter().any(|m| m.contains("STATUS=color=red")),
        "{first:?}"
    );
    assert_eq!(*applied.lock().unwrap(), ["red"]);

    // A second instance is refused by the lock.
    let second = daemon::run(
        "test-daemon",
        &args,
        Config::default(),
        |_c: &Config, _cl: Client| {
            Ok(Recorder {
                applied: Arc::default(),
                reloads: Arc::default(),
            })
        },
    )
    .await;
    assert!(
        second.unwrap_err().to_string().contains("another instance"),
        "lock must refuse a second instance"
    );

    emu.handle().set_instance_attribute("color", "blue");
    let s = sock.clone();
    tokio::task::spawn_blocking(move || recv_until(&s, "STATUS=color=blue"))
        .await
        .unwrap();

    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    let s = sock.clone();
    tokio::task::spawn_blocking(move || recv_until(&s, "RELOADING=1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*reloads.lock().unwrap(), 1);

    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    let s = sock.clone();
    tokio::task::spawn_blocking(move || recv_until(&s, "STOPPING=1"))
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("daemon stopped")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(*applied.lock().unwrap(), ["red", "blue"]);
}
