//! Real clients nobody here wrote, pointed at the emulator: Python's `google-auth` (what Google's
//! Python libraries use to find the metadata server and get tokens) and npm's `gcp-metadata`
//! (the same for Node.js), at the versions `scripts/setup clients` pins and installs into a
//! private directory. Each library runs unmodified in a child process (tests/clients/*) and
//! prints what it got; the checks here compare that with the emulator's document.
//!
//! They run inside a testkit sandbox: a private network namespace with only loopback, so nothing
//! a library might try besides the emulator (a DNS lookup of metadata.google.internal, a proxy)
//! can leave the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gce_metadata_emulator::Emulator;
use gce_testkit::{BackgroundRuntime, sandbox, spawn_error, temp_dir};
use serde_json::Value;

/// Where `scripts/setup clients` installs the pinned clients (same variable, same default).
fn clients_dir() -> PathBuf {
    std::env::var_os("GCE_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/gce-guest-agents/clients"))
}

/// The installed client `name`, or a failure that says how to install it.
fn client(name: &str) -> PathBuf {
    let dir = clients_dir().join(name);
    assert!(
        dir.join(".pins").is_file(),
        "{} is missing: the real metadata clients are installed by `sudo scripts/setup clients` \
         (scripts/test runs it)",
        dir.display()
    );
    dir
}

/// Runs a client script with the metadata server set to `host` (`127.0.0.1:PORT`) the two ways
/// the libraries read it, no proxy and no other credentials; returns its JSON output.
fn run_client(program: &str, script: &str, lib_env: (&str, &Path), host: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let home = temp_dir("client-home");
    let mut cmd = Command::new(program);
    cmd.arg(&script)
        .env(lib_env.0, lib_env.1)
        .env("GCE_METADATA_HOST", host)
        .env("GCE_METADATA_IP", host)
        .env("HOME", &home)
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "CLOUDSDK_CONFIG",
        "METADATA_SERVER_DETECTION",
        "GCE_METADATA_MTLS_MODE",
    ] {
        cmd.env_remove(var);
    }
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}", spawn_error(program, &e)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{} took {:.0} ms{}",
        script.display(),
        t.elapsed().as_secs_f64() * 1e3,
        if stderr.is_empty() {
            String::new()
        } else {
            format!("; stderr:\n{stderr}")
        }
    );
    assert!(
        out.status.success(),
        "{} failed: {stderr}",
        script.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{} printed no JSON ({e}): {stdout}", script.display()))
}

/// The emulator with its default document, plus a project attribute to read back.
fn start(rt: &BackgroundRuntime) -> (gce_metadata_emulator::RunningEmulator, Value) {
    let emu = rt
        .block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
        .expect("start emulator");
    emu.handle()
        .set_project_attribute("client-check", "value from the emulator");
    let doc = emu.handle().doc();
    (emu, doc)
}

#[test]
fn e2e_google_auth_finds_the_emulator_reads_metadata_and_gets_a_token() {
    if !sandbox("e2e_google_auth_finds_the_emulator_reads_metadata_and_gets_a_token") {
        return;
    }
    let lib = client("python");
    let rt = BackgroundRuntime::new();
    let (emu, doc) = start(&rt);
    // The interpreter the clients were installed for (scripts/setup uses the same one).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let got = run_client(
        python,
        "google_auth.py",
        ("PYTHONPATH", &lib),
        &emu.metadata_host(),
    );
    eprintln!("google-auth {}", got["version"]);

    let sa = &doc["instance"]["serviceAccounts"]["default"];
    let checks: &[(&str, &Value, Value)] = &[
        (
            "ping() is true (GET / answers 200 with the flavor)",
            &got["ping"],
            Value::Bool(true),
        ),
        (
            "a leaf: instance/hostname",
            &got["hostname"],
            doc["instance"]["hostname"].clone(),
        ),
        (
            "project/project-id",
            &got["project_id"],
            doc["project"]["projectId"].clone(),
        ),
        (
            "recursive: the instance id, exact above 2^53",
            &got["instance"]["id"],
            doc["instance"]["id"].clone(),
        ),
        (
            "recursive: the NIC's MAC",
            &got["instance"]["networkInterfaces"][0]["mac"],
            doc["instance"]["networkInterfaces"][0]["mac"].clone(),
        ),
        (
            "recursive: the default service account",
            &got["instance"]["serviceAccounts"]["default"]["email"],
            sa["email"].clone(),
        ),
        (
            "service-accounts/default/?recursive=true: email",
            &got["service_account"]["email"],
            sa["email"].clone(),
        ),
        (
            "service-accounts/default/?recursive=true: scopes",
            &got["service_account"]["scopes"],
            sa["scopes"].clone(),
        ),
        (
            "Credentials.refresh: the account's email",
            &got["email"],
            sa["email"].clone(),
        ),
        (
            "Credentials.refresh: the account's scopes",
            &got["scopes"],
            sa["scopes"].clone(),
        ),
        (
            "Credentials.refresh: the token is valid",
            &got["token_valid"],
            Value::Bool(true),
        ),
        (
            "universe domain: the default when the server has none",
            &got["universe_domain"],
            Value::from("googleapis.com"),
        ),
        (
            "google.auth.default(): compute engine credentials",
            &got["default_type"],
            Value::from("google.auth.compute_engine.credentials.Credentials"),
        ),
        (
            "google.auth.default(): the project from metadata",
            &got["default_project"],
            doc["project"]["projectId"].clone(),
        ),
    ];
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| *got != want)
        .map(|(rule, got, want)| format!("{rule}: got {got}, want {want}"))
        .collect();
    assert!(failed.is_empty(), "google-auth:\n{}", failed.join("\n"));
    let token = got["token"].as_str().unwrap_or_default();
    assert!(token.starts_with("ya29."), "access token {token:?}");
    let left = got["token_seconds_left"].as_f64().unwrap_or_default();
    assert!((3000.0..=3600.0).contains(&left), "token lifetime {left} s");
}

#[test]
fn e2e_gcp_metadata_finds_the_emulator_and_reads_instance_and_project() {
    if !sandbox("e2e_gcp_metadata_finds_the_emulator_and_reads_instance_and_project") {
        return;
    }
    let lib = client("node");
    let rt = BackgroundRuntime::new();
    let (emu, doc) = start(&rt);
    let got = run_client(
        "node",
        "gcp_metadata.js",
        ("NODE_PATH", &lib.join("node_modules")),
        &emu.metadata_host(),
    );

    let listing = got["instanceListing"].as_str().unwrap_or_default();
    for entry in [
        "hostname",
        "id",
        "attributes/",
        "service-accounts/",
        "network-interfaces/",
    ] {
        assert!(
            listing.lines().any(|l| l == entry),
            "instance() lists {entry}: {listing:?}"
        );
    }
    let checks: &[(&str, &Value, Value)] = &[
        ("isAvailable()", &got["isAvailable"], Value::Bool(true)),
        (
            "instance('hostname')",
            &got["hostname"],
            doc["instance"]["hostname"].clone(),
        ),
        (
            "instance('id'), exact above 2^53",
            &got["id"],
            Value::from(doc["instance"]["id"].to_string()),
        ),
        (
            "project('project-id')",
            &got["projectId"],
            doc["project"]["projectId"].clone(),
        ),
        (
            "project('numeric-project-id')",
            &got["numericProjectId"],
            Value::from(doc["project"]["numericProjectId"].to_string()),
        ),
        (
            "instance({recursive}): id",
            &got["recursiveId"],
            Value::from(doc["instance"]["id"].to_string()),
        ),
        (
            "instance({recursive}): service account",
            &got["recursiveEmail"],
            doc["instance"]["serviceAccounts"]["default"]["email"].clone(),
        ),
        (
            "instance({recursive}): MAC",
            &got["recursiveMac"],
            doc["instance"]["networkInterfaces"][0]["mac"].clone(),
        ),
        (
            "project({recursive}): projectId",
            &got["projectRecursiveId"],
            doc["project"]["projectId"].clone(),
        ),
        (
            "project('attributes/client-check')",
            &got["projectAttribute"],
            Value::from("value from the emulator"),
        ),
    ];
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| *got != want)
        .map(|(rule, got, want)| format!("{rule}: got {got}, want {want}"))
        .collect();
    assert!(failed.is_empty(), "gcp-metadata:\n{}", failed.join("\n"));
}
