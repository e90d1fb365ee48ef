//! The real `gce-metadata-script-runner` binary against the emulator (in-process): command line,
//! config file, `GCE_METADATA_HOST`, log output and exit status.

use std::path::Path;
use std::process::Output;

use gce_metadata_emulator::Emulator;

async fn runner(args: &[&str], host: &str, dir: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gce-metadata-script-runner"))
        .args(args)
        .env("GCE_METADATA_HOST", host)
        .env("GCE_AGENT_RUN_DIR", dir)
        // Must not reach the scripts.
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn config(dir: &Path, extra: &str) -> String {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let path = dir.join("instance_configs.cfg");
    std::fs::write(
        &path,
        format!("[MetadataScripts]\nrun_dir = {}\n{extra}", run.display()),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn startup_runs_the_inline_script_and_logs_its_lines() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    emu.handle().set_instance_attribute(
        "startup-script",
        "#!/bin/sh\necho hello\necho \"notify=${NOTIFY_SOCKET:-unset}\"\nexit 4",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = runner(
        &["--config", &cfg, "startup"],
        &emu.metadata_host(),
        dir.path(),
    )
    .await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let pos = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in:\n{log}"))
    };
    assert!(pos("startup-script: hello") < pos("startup-script: notify=unset"));
    assert!(pos("startup-script: notify=unset") < pos("startup-script exited with status 4"));
    // The private run directory is gone.
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn shutdown_with_no_scripts_exits_zero_and_disabled_kind_runs_nothing() {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = runner(
        &["--config", &cfg, "shutdown"],
        &emu.metadata_host(),
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shutdown scripts in metadata"));

    emu.handle()
        .set_instance_attribute("shutdown-script", "echo should-not-run");
    let cfg = config(dir.path(), "shutdown = false\n");
    let out = runner(
        &["--config", &cfg, "shutdown"],
        &emu.metadata_host(),
        dir.path(),
    )
    .await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(!log.contains("should-not-run"), "{log}");
}

#[tokio::test]
async fn unreachable_metadata_and_bad_arguments_fail() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = runner(
        &["--config", &cfg, "startup"],
        &closed.to_string(),
        dir.path(),
    )
    .await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("cannot read instance attributes"), "{log}");

    let out = runner(&["reboot"], &closed.to_string(), dir.path()).await;
    assert_eq!(out.status.code(), Some(2));
}

/// Without `run_dir`, the runner must not write scripts where they cannot be executed: Debian
/// mounts `/run` noexec. Here `/run` and `/var/lib/google` are noexec tmpfs in a private mount
/// namespace (root only), and the script must still run (from `$TMPDIR`).
#[tokio::test]
async fn e2e_default_run_dir_skips_noexec_mounts() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return;
    }
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    emu.handle()
        .set_instance_attribute("startup-script", "#!/bin/sh\necho ran-from-an-exec-mount");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("empty.cfg");
    std::fs::write(&cfg, "").unwrap();
    let lockdir = dir.path().join("lock");
    let inner = format!(
        "mount --make-rprivate / && mount -t tmpfs -o noexec tmpfs /run && \
         mkdir -p /var/lib/google && mount -t tmpfs -o noexec tmpfs /var/lib/google && \
         exec {} --config {} startup",
        env!("CARGO_BIN_EXE_gce-metadata-script-runner"),
        cfg.display()
    );
    let out = tokio::process::Command::new("unshare")
        .args(["--mount", "--fork", "sh", "-c", &inner])
        .env("GCE_METADATA_HOST", emu.metadata_host())
        .env("GCE_AGENT_RUN_DIR", &lockdir)
        .env("TMPDIR", dir.path())
        .env_remove("JOURNAL_STREAM")
        .output()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("startup-script: ran-from-an-exec-mount"),
        "{log}"
    );
    assert!(log.contains("exited with status 0"), "{log}");
}
