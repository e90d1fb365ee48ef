//! `gce-metadata-emulator`: serve the metadata emulator until killed.
//!
//! Prints `listening on http://ADDR` on stdout for each address once bound (tests parse the
//! first); logs to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gce_metadata_emulator::{Emulator, doc};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "gce-metadata-emulator",
    about = "GCE metadata server and Compute control-plane emulator"
)]
struct Args {
    /// Address to listen on (port 0: any free port); repeat it to listen on several, e.g.
    /// `--listen 127.0.0.1:8080 --listen [::1]:8080` or `--listen [fd20:ce::254]:80`. A port 0
    /// after the first address means the first address's port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: Vec<String>,
    /// Recursive root JSON ({"instance":…,"project":…,"oslogin":…}); missing top-level keys
    /// are taken from the built-in document.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Log every request (debug level). `RUST_LOG=debug` does the same.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.verbose {
        tracing::Level::DEBUG
    } else {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(tracing::Level::INFO)
    };
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();

    let doc = match &args.seed {
        None => doc::default_doc(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading seed {}", path.display()))?;
            let seed: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing seed {}", path.display()))?;
            merge_seed(seed)
                .with_context(|| format!("seed {} is not a JSON object", path.display()))?
        }
    };

    // One thread serves thousands of parked long polls (the fanout bench); a multi-thread
    // runtime would also unify tokio's rt-multi-thread feature (and libm) into the daemons when
    // the workspace is built together.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async {
        let addrs: Vec<&str> = args.listen.iter().map(String::as_str).collect();
        let running = Emulator::new(doc)
            .start_on(&addrs)
            .await
            .with_context(|| format!("binding {}", args.listen.join(", ")))?;
        let mut out = std::io::stdout().lock();
        for addr in running.addrs() {
            writeln!(out, "listening on http://{addr}")?;
        }
        out.flush()?;
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

/// Top-level keys of the seed win; absent ones come from the built-in document.
fn merge_seed(seed: Value) -> Option<Value> {
    let Value::Object(seed) = seed else {
        return None;
    };
    let mut doc = doc::default_doc();
    let root = doc.as_object_mut()?;
    for (k, v) in seed {
        root.insert(k, v);
    }
    Some(doc)
}
