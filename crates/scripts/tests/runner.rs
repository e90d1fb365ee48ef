//! The runner against the metadata emulator and a small local HTTP server standing in for Cloud
//! Storage and the web. Each test is a row of SPEC §5 / issue 4.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gce_metadata_emulator::{Emulator, EmulatorHandle, RunningEmulator};
use gce_scripts::{Event, Origin, RunnerOptions, ScriptKind, Sink, Termination};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Request = (String, Option<String>);

/// Serves `files` (path → (status, body)) and records `(path, Authorization)` of each request.
struct FileServer {
    url: String,
    /// `(path, Authorization header)` of each request.
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FileServer {
    async fn start(files: &[(&str, u16, &str)]) -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<HashMap<String, (u16, String)>> = Arc::new(
            files
                .iter()
                .map(|(p, s, b)| (p.to_string(), (*s, b.to_string())))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rec = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let files = files.clone();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let auth = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    });
                    rec.lock().unwrap().push((path.clone(), auth));
                    let (status, body) = files
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, "not found".to_string()));
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        FileServer { url, requests }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().clone()
    }
}

struct Fixture {
    _emu: RunningEmulator,
    md: EmulatorHandle,
    client: gce_metadata::Client,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let client = gce_metadata::Client::new(
        &gce_metadata::client::base_url_for_host(&emu.metadata_host()),
        gce_metadata::ClientOptions::default(),
    )
    .unwrap();
    Fixture {
        md: emu.handle(),
        _emu: emu,
        client,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    fn opts(&self, kind: ScriptKind, gcs: &str) -> RunnerOptions {
        let mut o = RunnerOptions::new(kind);
        o.run_dir = Some(self.dir.path().to_path_buf());
        o.fetch.gcs_endpoint = gcs.to_string();
        o.fetch.backoff = Duration::from_millis(50);
        o.metadata_backoff = Duration::from_millis(50);
        o
    }

    /// Run and return the report plus every logged line, in order.
    async fn run(&self, opts: &RunnerOptions) -> (gce_scripts::Report, Vec<String>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let sink: Sink = Arc::new(move |e: &Event| l.lock().unwrap().push(e.to_string()));
        let report = gce_scripts::run(self.client.clone(), opts, Some(sink))
            .await
            .expect("runner ran");
        let lines = lines.lock().unwrap().clone();
        // The private directory is gone afterwards.
        assert_eq!(
            std::fs::read_dir(self.dir.path()).unwrap().count(),
            0,
            "run dir left behind"
        );
        (report, lines)
    }
}

#[tokio::test]
async fn inline_script_output_is_logged_line_by_line_then_its_status() {
    let f = fixture().await;
    f.md.set_instance_attribute(
        "startup-script",
        "echo hello\necho oops >&2\necho world\nexit 3",
    );
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(report.origin, Origin::Instance);
    // stdout and stderr are separate pipes, so only each stream's own order is guaranteed.
    let pos = |s: &str| {
        lines
            .iter()
            .position(|l| l == s)
            .unwrap_or_else(|| panic!("{s:?} not in {lines:?}"))
    };
    assert!(pos("startup-script: hello") < pos("startup-script: world"));
    assert!(pos("startup-script: oops") < pos("startup-script exited with status 3"));
    assert_eq!(lines.last().unwrap(), "startup-script exited with status 3");
    assert_eq!(
        report.scripts[0].result.as_ref().unwrap().termination,
        Termination::Exited(3)
    );
}

#[tokio::test]
async fn plain_url_is_fetched_without_credentials() {
    let f = fixture().await;
    let web = FileServer::start(&[("/s.sh", 200, "echo from-url")]).await;
    f.md.set_instance_attribute("startup-script-url", &format!("{}/s.sh", web.url));
    let (_, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(
        lines,
        [
            "startup-script-url: from-url",
            "startup-script-url exited with status 0"
        ]
    );
    assert_eq!(web.requests(), [("/s.sh".to_string(), None)]);
}

#[tokio::test]
async fn gs_url_is_fetched_from_the_endpoint_with_the_service_account_token() {
    let f = fixture().await;
    let gcs = FileServer::start(&[("/my-bucket/dir/boot.sh", 200, "echo from-gcs")]).await;
    f.md.set_instance_attribute("shutdown-script-url", "gs://my-bucket/dir/boot.sh");
    let (_, lines) = f.run(&f.opts(ScriptKind::Shutdown, &gcs.url)).await;
    assert_eq!(
        lines,
        [
            "shutdown-script-url: from-gcs",
            "shutdown-script-url exited with status 0"
        ]
    );
    let token: serde_json::Value = f
        .client
        .get_json("instance/service-accounts/default/token")
        .await
        .unwrap();
    let want = format!("Bearer {}", token["access_token"].as_str().unwrap());
    assert_eq!(
        gcs.requests(),
        [("/my-bucket/dir/boot.sh".to_string(), Some(want))]
    );
}

#[tokio::test]
async fn https_gcs_forms_are_rewritten_onto_the_endpoint() {
    let f = fixture().await;
    let gcs = FileServer::start(&[
        ("/b/one.sh", 200, "echo one"),
        ("/b/two.sh", 200, "echo two"),
    ])
    .await;
    f.md.set_instance_attribute(
        "startup-script-url",
        "https://b.storage.googleapis.com/one.sh",
    );
    f.md.set_project_attribute(
        "startup-script-url",
        "https://storage.googleapis.com/b/two.sh",
    );
    let (_, lines) = f.run(&f.opts(ScriptKind::Startup, &gcs.url)).await;
    assert_eq!(lines[0], "startup-script-url: one");
    f.md.remove_instance_attribute("startup-script-url");
    let (report, lines) = f.run(&f.opts(ScriptKind::Startup, &gcs.url)).await;
    assert_eq!(report.origin, Origin::Project);
    assert_eq!(lines[0], "startup-script-url: two");
    assert!(
        gcs.requests()
            .iter()
            .all(|(_, a)| a.as_deref().is_some_and(|a| a.starts_with("Bearer ya29.")))
    );
}

#[tokio::test]
async fn instance_keys_shadow_project_keys_entirely() {
    let f = fixture().await;
    f.md.set_project_attribute("startup-script", "echo project");
    f.md.set_project_attribute("startup-script-url", "http://127.0.0.1:9/never");
    f.md.set_instance_attribute("startup-script", "echo instance");
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(report.origin, Origin::Instance);
    assert_eq!(
        lines,
        [
            "startup-script: instance",
            "startup-script exited with status 0"
        ]
    );
    // Without instance keys the project's run, URL first.
    f.md.remove_instance_attribute("startup-script");
    f.md.set_project_attribute("startup-script-url", "");
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(report.origin, Origin::Project);
    assert_eq!(
        lines,
        [
            "startup-script: project",
            "startup-script exited with status 0"
        ]
    );
}

#[tokio::test]
async fn url_script_runs_before_inline_script() {
    let f = fixture().await;
    let web = FileServer::start(&[("/u.sh", 200, "echo url")]).await;
    f.md.set_instance_attribute("startup-script", "echo inline");
    f.md.set_instance_attribute("startup-script-url", &format!("{}/u.sh", web.url));
    let (_, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(
        lines,
        [
            "startup-script-url: url",
            "startup-script-url exited with status 0",
            "startup-script: inline",
            "startup-script exited with status 0"
        ]
    );
}

#[tokio::test]
async fn missing_keys_run_nothing_and_succeed() {
    let f = fixture().await;
    f.md.set_instance_attribute("shutdown-script", "echo not-mine");
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(report.origin, Origin::None);
    assert!(report.scripts.is_empty() && lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn failing_download_is_logged_and_the_inline_script_still_runs() {
    let f = fixture().await;
    let web = FileServer::start(&[]).await;
    f.md.set_instance_attribute("startup-script-url", &format!("{}/missing.sh", web.url));
    f.md.set_instance_attribute("startup-script", "echo still-here");
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("startup-script-url: could not download the script:"),
        "{lines:?}"
    );
    assert!(lines[0].contains("404"), "{lines:?}");
    assert_eq!(lines[1], "startup-script: still-here");
    assert!(report.scripts[0].result.is_none());
    // 404 is final: one request, no retries.
    assert_eq!(web.requests().len(), 1);
}

#[tokio::test]
async fn unreachable_download_is_retried_then_reported() {
    let f = fixture().await;
    // A port nobody listens on: connection refused, retried 3 times.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    f.md.set_instance_attribute("startup-script-url", &format!("http://{closed}/x.sh"));
    let (_, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("gave up after 3 tries"), "{lines:?}");
}

#[tokio::test]
async fn timed_out_script_has_its_whole_group_killed() {
    let f = fixture().await;
    f.md.set_instance_attribute("shutdown-script", "echo started\nsleep 60\necho never");
    let mut opts = f.opts(ScriptKind::Shutdown, "http://127.0.0.1:9");
    opts.exec.timeout = Some(Duration::from_secs(1));
    let t = Instant::now();
    let (report, lines) = f.run(&opts).await;
    let elapsed = t.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let r = report.scripts[0].result.as_ref().unwrap();
    assert!(r.timed_out);
    assert_eq!(r.termination, Termination::Signaled(15));
    assert!(
        !gce_scripts::exec::group_alive(r.pgid),
        "process group {} survived",
        r.pgid
    );
    assert_eq!(
        lines,
        [
            "shutdown-script: started",
            "shutdown-script still running after its 1s budget: killing its process group",
            "shutdown-script was killed by signal 15 (SIGTERM)"
        ]
    );
}

#[tokio::test]
async fn term_ignoring_script_is_killed_after_the_grace() {
    let f = fixture().await;
    f.md.set_instance_attribute(
        "shutdown-script",
        "trap '' TERM\nsleep 60 &\nwhile :; do sleep 0.1; done",
    );
    let mut opts = f.opts(ScriptKind::Shutdown, "http://127.0.0.1:9");
    opts.exec.timeout = Some(Duration::from_millis(300));
    opts.exec.kill_grace = Duration::from_millis(500);
    let t = Instant::now();
    let (report, lines) = f.run(&opts).await;
    let r = report.scripts[0].result.as_ref().unwrap();
    assert_eq!(r.termination, Termination::Signaled(9), "{lines:?}");
    assert!(!gce_scripts::exec::group_alive(r.pgid), "{lines:?} {r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn background_child_holding_stdout_does_not_hang_the_runner() {
    let f = fixture().await;
    f.md.set_instance_attribute("startup-script", "sleep 30 &\necho bye\nexit 0");
    let t = Instant::now();
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let r = report.scripts[0].result.as_ref().unwrap();
    assert!(r.orphans && r.termination == Termination::Exited(0));
    assert_eq!(
        lines,
        [
            "startup-script: bye",
            "startup-script left background processes holding its output open; no longer reading it",
            "startup-script exited with status 0"
        ]
    );
    // The background child is left alone (a startup script may start a daemon); clean up here.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(r.pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn shebang_is_honoured() {
    let f = fixture().await;
    // With the default shell pointed at something that cannot run scripts, only the shebang works.
    f.md.set_instance_attribute("startup-script", "#!/bin/sh\necho \"shell=$0\"");
    let mut opts = f.opts(ScriptKind::Startup, "http://127.0.0.1:9");
    opts.exec.shell = "/bin/false".into();
    let (_, lines) = f.run(&opts).await;
    assert!(
        lines[0].starts_with("startup-script: shell=") && lines[0].ends_with("/startup-script"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "startup-script exited with status 0");
}

#[tokio::test]
async fn scripts_run_with_the_configured_shell_in_their_private_directory() {
    let f = fixture().await;
    f.md.set_instance_attribute(
        "startup-script",
        "echo \"$(basename \"$PWD\") $(stat -c %a .)\"; [ -n \"$BASH_VERSION\" ] && echo bash",
    );
    let (_, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert!(
        lines[0].starts_with("startup-script: gce-startup-scripts.") && lines[0].ends_with(" 700"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "startup-script: bash");
}

#[tokio::test]
async fn failing_script_is_reported_and_the_next_still_runs() {
    let f = fixture().await;
    let web = FileServer::start(&[("/f.sh", 200, "echo failing; false")]).await;
    f.md.set_instance_attribute("startup-script-url", &format!("{}/f.sh", web.url));
    f.md.set_instance_attribute("startup-script", "echo next");
    let (report, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(
        lines,
        [
            "startup-script-url: failing",
            "startup-script-url exited with status 1",
            "startup-script: next",
            "startup-script exited with status 0"
        ]
    );
    assert_eq!(report.scripts.len(), 2);
}

#[tokio::test]
async fn unreachable_metadata_is_an_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = gce_metadata::Client::new(
        &gce_metadata::client::base_url_for_host(&closed.to_string()),
        gce_metadata::ClientOptions::default(),
    )
    .unwrap();
    let mut opts = RunnerOptions::new(ScriptKind::Startup);
    opts.metadata_attempts = 2;
    opts.metadata_backoff = Duration::from_millis(10);
    let err = gce_scripts::run(client, &opts, None).await.unwrap_err();
    assert!(err.to_string().contains("instance attributes"), "{err}");
}

#[tokio::test]
async fn https_downloads_go_through_curl() {
    let f = fixture().await;
    // Nothing listens there, so curl itself reports the failure (this build has no TLS in
    // reqwest; https is curl's job).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    f.md.set_instance_attribute("startup-script-url", &format!("https://{closed}/x.sh"));
    let (_, lines) = f
        .run(&f.opts(ScriptKind::Startup, "http://127.0.0.1:9"))
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("curl failed"), "{lines:?}");
}
