//! Credentials and TLS without the internet: the emulator and an OAuth token endpoint behind
//! HTTPS fronts signed by a test CA. Each source of a token is exercised through the real
//! exchange (a JWT checked with the test key, a refresh token, the metadata server, a fake
//! gcloud), and the binary shows trust via `SSL_CERT_FILE`, refusal of an untrusted
//! certificate, Google's 401, and project/zone from a gcloud configuration.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestCa, TokenRules};
use gce_metadata_emulator::Emulator;
use gce_ssh::auth::{self, Sources};
use gce_ssh::http::{Http, HttpError, Trust};
use gce_testkit::{BackgroundRuntime, bin, temp_dir};

struct World {
    rt: BackgroundRuntime,
    ca: TestCa,
    dir: std::path::PathBuf,
    ca_file: std::path::PathBuf,
    token_uri: String,
    rules: Arc<Mutex<TokenRules>>,
}

fn world(name: &str) -> World {
    let rt = BackgroundRuntime::new();
    let ca = TestCa::new(name);
    let dir = temp_dir(name);
    let ca_file = ca.write_pem(&dir);
    let rules = Arc::new(Mutex::new(TokenRules::default()));
    let token_addr = common::token_server(&rt, rules.clone());
    let token_uri = format!("{}/token", ca.front(&rt, token_addr));
    rules.lock().unwrap().audience = token_uri.clone();
    World {
        rt,
        ca,
        dir,
        ca_file,
        token_uri,
        rules,
    }
}

impl World {
    fn http(&self) -> Http {
        Http::new(
            Trust {
                ca_files: vec![self.ca_file.clone()],
            },
            Duration::from_secs(10),
        )
    }
}

#[test]
fn a_service_account_key_is_exchanged_with_a_signed_jwt() {
    let w = world("gce-ssh-sa");
    let sa = common::ServiceAccount::new(&w.dir, &w.token_uri);
    w.rules.lock().unwrap().service_accounts.push((
        sa.email.clone(),
        sa.public_der.clone(),
        sa.key_id.clone(),
        "ya29.from-service-account".into(),
    ));
    let sources = Sources {
        application_credentials: Some(sa.json_path.clone()),
        gcloud: Some("/bin/false".into()),
        ..Sources::default()
    };
    let t = auth::access_token(&w.http(), &sources).unwrap();
    assert_eq!(t.token, "ya29.from-service-account");
    assert_eq!(
        t.account.as_deref(),
        Some(sa.email.as_str()),
        "client_email"
    );
    assert!(
        t.source.starts_with("GOOGLE_APPLICATION_CREDENTIALS="),
        "{}",
        t.source
    );
    assert_eq!(w.rules.lock().unwrap().rejected, Vec::<String>::new());

    // The same account with another key: the endpoint's signature check refuses it, and the
    // search stops there (no fall-through to gcloud) with the endpoint's reason.
    let other_dir = w.dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let impostor = common::ServiceAccount::new(&other_dir, &w.token_uri);
    let sources = Sources {
        application_credentials: Some(impostor.json_path.clone()),
        gcloud: Some("/bin/false".into()),
        ..Sources::default()
    };
    let e = auth::access_token(&w.http(), &sources)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("answered 400: invalid_grant bad signature"),
        "{e}"
    );
    assert!(
        e.contains("tried:\n  --token / GCE_ACCESS_TOKEN: not set"),
        "{e}"
    );
}

#[test]
fn application_default_credentials_refresh_an_authorized_user() {
    let w = world("gce-ssh-adc");
    w.rules.lock().unwrap().refresh.push((
        "client-1.apps.googleusercontent.com".into(),
        "secret-1".into(),
        "1//refresh-1".into(),
        "ya29.from-refresh".into(),
    ));
    w.rules
        .lock()
        .unwrap()
        .id_tokens
        .push(("ya29.from-refresh".into(), "dev@example.com".into()));
    let adc = serde_json::json!({
        "type": "authorized_user",
        "client_id": "client-1.apps.googleusercontent.com",
        "client_secret": "secret-1",
        "refresh_token": "1//refresh-1",
        "token_uri": w.token_uri,
    })
    .to_string();
    let cfg = common::gcloud_config(&w.dir, "my-proj", "us-west1-b", Some(&adc));
    let env = gce_ssh::gcloud::Env {
        cloudsdk_config: Some(cfg),
        ..Default::default()
    };
    let sources = Sources {
        adc_file: env.adc_file(),
        ..Sources::default()
    };
    let t = auth::access_token(&w.http(), &sources).unwrap();
    assert_eq!(t.token, "ya29.from-refresh");
    assert!(t.source.contains("application_default_credentials.json"));
    assert_eq!(
        t.account.as_deref(),
        Some("dev@example.com"),
        "the id_token's email claim"
    );
    // Without an id_token (a grant without openid): no account; token info names it.
    w.rules.lock().unwrap().id_tokens.clear();
    let t = auth::access_token(&w.http(), &sources).unwrap();
    assert_eq!(t.account, None);
    let tokeninfo = w.token_uri.replace("/token", "/tokeninfo");
    let e = auth::token_email(&w.http(), &tokeninfo, &t.token).unwrap_err();
    assert!(e.contains("answered 400: Invalid Value"), "{e}");
    w.rules
        .lock()
        .unwrap()
        .token_emails
        .push(("ya29.from-refresh".into(), "dev@example.com".into()));
    assert_eq!(
        auth::token_email(&w.http(), &tokeninfo, &t.token).unwrap(),
        "dev@example.com"
    );

    // A revoked refresh token is an error naming the file, not a silent fall-through.
    w.rules.lock().unwrap().refresh.clear();
    let e = auth::access_token(&w.http(), &sources)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("application default credentials ") && e.contains("unknown refresh token"),
        "{e}"
    );
}

#[test]
fn the_metadata_server_and_gcloud_come_last_in_that_order() {
    let w = world("gce-ssh-md");
    let emu =
        w.rt.block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
    let path = common::fake_gcloud(&w.dir, "ya29.from-gcloud");
    let gcloud = path.split(':').next().unwrap().to_string() + "/gcloud";
    let sources = Sources {
        adc_file: Some(w.dir.join("no-adc.json")),
        metadata_host: Some(emu.metadata_host()),
        gcloud: Some(gcloud.clone().into()),
        gcloud_account: Some("dev@example.com".into()),
        ..Sources::default()
    };
    let t = auth::access_token(&w.http(), &sources).unwrap();
    assert!(t.token.starts_with("ya29.emulated-"), "{t:?}");
    assert_eq!(
        t.source,
        format!(
            "metadata server http://{}/computeMetadata/v1/",
            emu.metadata_host()
        )
    );
    assert_eq!(
        t.account.as_deref(),
        Some("523926462582-compute@developer.gserviceaccount.com"),
        "the VM's default service account"
    );

    // No metadata server answering: gcloud's token.
    let sources = Sources {
        metadata_host: Some(format!("127.0.0.1:{}", gce_testkit::free_port())),
        ..sources
    };
    let t = auth::access_token(&w.http(), &sources).unwrap();
    assert_eq!(t.token, "ya29.from-gcloud");
    assert!(
        t.source.ends_with("gcloud auth print-access-token"),
        "{t:?}"
    );
    assert_eq!(
        t.account.as_deref(),
        Some("dev@example.com"),
        "gcloud's account"
    );
}

#[test]
fn an_untrusted_certificate_is_refused_with_what_to_do() {
    let w = world("gce-ssh-untrusted");
    let untrusted = Http::new(Trust::default(), Duration::from_secs(5));
    match untrusted.get(&w.token_uri, &[]) {
        Err(HttpError::Untrusted { reason, .. }) => {
            assert!(reason.contains("unknown certificate authority"), "{reason}")
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    // The same server is fine once its CA is trusted.
    let resp = w
        .http()
        .post_form(&w.token_uri, &[("grant_type", "x")])
        .unwrap();
    assert_eq!(resp.status, 400);
    // A CA file with no certificate in it is an error, not an empty trust store.
    let empty = w.dir.join("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    let bad = Http::new(
        Trust {
            ca_files: vec![empty],
        },
        Duration::from_secs(5),
    );
    let e = bad.get(&w.token_uri, &[]).unwrap_err().to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let _ = &w.ca;
}

/// The binary against the emulator behind HTTPS: everything a real run reads before it pushes.
#[test]
fn the_binary_trusts_ssl_cert_file_reads_gcloud_config_and_reports_googles_errors() {
    let w = world("gce-ssh-bin");
    let emu =
        w.rt.block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
    let api = w.ca.front(&w.rt, emu.addr());
    emu.handle().require_compute_token(Some("ya29.from-gcloud"));
    let path = common::fake_gcloud(&w.dir, "ya29.from-gcloud");
    let cfg = common::gcloud_config(&w.dir, "my-proj", "us-west1-b", None);
    let home = w.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(bin("gce-ssh"));
        for k in common::USER_ENV {
            cmd.env_remove(k);
        }
        cmd.env("HOME", &home)
            .env("NO_GCE_CHECK", "true")
            .env("CLOUDSDK_CONFIG", &cfg)
            .env("PATH", &path)
            .args(["--endpoint", &api])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = w.ca_file.to_str().unwrap();

    // Not trusted: one clear line, before any credential is sent.
    let (code, err) = run(&[], &["alice@vm0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is not trusted") && err.contains("--ca-file or SSL_CERT_FILE"),
        "{err}"
    );

    // Trusted through SSL_CERT_FILE, gcloud's token, project and zone from its active
    // configuration: the instance is read, and the run stops at the missing external IP
    // (the default emulator instance has none), before anything is pushed.
    let (code, err) = run(&[("SSL_CERT_FILE", ca)], &["alice@vm0", "--timings"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("access token from") && err.contains("gcloud auth print-access-token"),
        "{err}"
    );
    assert!(
        err.contains("instance vm0 in zone us-west1-b has no external IP address"),
        "{err}"
    );
    assert_eq!(
        emu.handle().doc()["instance"]["attributes"].get("ssh-keys"),
        None,
        "nothing pushed"
    );

    // A token the API refuses: Google's message, one line.
    let (code, err) = run(
        &[("SSL_CERT_FILE", ca)],
        &["alice@vm0", "--token", "ya29.stale"],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("answered 401: Request had invalid authentication credentials"),
        "{err}"
    );

    // Flags beat the configuration; an unknown zone is Google's 404.
    let (_, err) = run(
        &[],
        &["alice@vm0", "--ca-file", ca, "--zone", "europe-west1-b"],
    );
    assert!(
        err.contains("instance vm0 not found in project my-proj zone europe-west1-b"),
        "{err}"
    );

    // No project anywhere: what was tried, one line each.
    let (code, err) = run(
        &[("CLOUDSDK_CONFIG", w.dir.join("nowhere").to_str().unwrap())],
        &["alice@vm0", "--ca-file", ca],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "no project; tried:\n  --project: not given\n  CLOUDSDK_CORE_PROJECT: not set\n"
        ),
        "{err}"
    );
}

/// OS Login through the binary over HTTPS: the account comes from the service account key's
/// `client_email`, or from token info for a bare `--token`; the OS Login API's errors are
/// Google's, one line.
#[test]
fn the_binary_imports_into_the_oslogin_profile_of_the_credentials_account() {
    let w = world("gce-ssh-oslogin-https");
    let emu =
        w.rt.block_on(Emulator::with_default_doc().start("127.0.0.1:0"))
            .unwrap();
    let api = w.ca.front(&w.rt, emu.addr());
    let h = emu.handle();
    h.set_instance_attribute("enable-oslogin", "TRUE");
    let sa = common::ServiceAccount::new(&w.dir, &w.token_uri);
    {
        let mut r = w.rules.lock().unwrap();
        r.service_accounts.push((
            sa.email.clone(),
            sa.public_der.clone(),
            sa.key_id.clone(),
            "ya29.sa".into(),
        ));
        r.token_emails
            .push(("ya29.bare".into(), "dev@example.com".into()));
    }
    let home = w.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tokeninfo = w.token_uri.replace("/token", "/tokeninfo");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(bin("gce-ssh"));
        for k in common::USER_ENV {
            cmd.env_remove(k);
        }
        cmd.env("HOME", &home)
            .env("NO_GCE_CHECK", "true")
            .env("CLOUDSDK_CONFIG", w.dir.join("no-gcloud"))
            .env("PATH", "/usr/bin:/bin")
            .env("SSL_CERT_FILE", &w.ca_file)
            .args(["--endpoint", &api, "--oslogin-endpoint", &api])
            .args(["--tokeninfo-url", &tokeninfo])
            .args(["--project", "my-proj", "--zone", "us-west1-b", "vm0"])
            .args(["--host", "127.0.0.1", "--push-only", "--timings"])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !key.is_empty() {
            let _ = std::fs::remove_dir_all(std::path::Path::new(&key).parent().unwrap());
        }
        (out.status.code(), err)
    };

    h.require_compute_token(Some("ya29.sa"));
    let (code, err) = run(
        &[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            sa.json_path.to_str().unwrap(),
        )],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "OS Login on in metadata: account {} (from GOOGLE_APPLICATION_CREDENTIALS=",
            sa.email
        )),
        "{err}"
    );
    let profile = h
        .oslogin_user(&sa.email)
        .expect("profile made by the import");
    assert_eq!(profile.keys.len(), 1);
    assert!(
        err.contains(&format!("POSIX user {}", profile.username)),
        "{err}"
    );
    // The fingerprint gce-ssh would delete is the emulator's (OS Login's) own.
    let k = profile.keys.values().next().unwrap();
    assert_eq!(
        gce_ssh::oslogin::key_fingerprint(&k.key).as_deref(),
        Some(k.fingerprint.as_str())
    );

    // A bare token says nothing about its account: token info does.
    h.require_compute_token(Some("ya29.bare"));
    let (code, err) = run(&[], &["--token", "ya29.bare"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("account dev@example.com (from token info for the token from --token)"),
        "{err}"
    );
    assert_eq!(h.oslogin_user("dev@example.com").unwrap().keys.len(), 1);

    // Token info does not know the token: the error says so and what to do.
    h.require_compute_token(Some("ya29.unknown"));
    let (code, err) = run(&[], &["--token", "ya29.unknown"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("answered 400: Invalid Value") && err.contains("pass --account EMAIL"),
        "{err}"
    );

    // The OS Login API refuses the account: Google's error, one line, nothing pushed.
    let (code, err) = run(
        &[],
        &["--token", "ya29.unknown", "--account", "not-an-email"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("importing the key into the OS Login profile of not-an-email")
            && err.contains("answered 400 INVALID_ARGUMENT: Invalid user email address"),
        "{err}"
    );
    assert_eq!(h.doc()["instance"]["attributes"].get("ssh-keys"), None);

    // enable-oslogin-sk: the guest accepts only security keys; gce-ssh stops before importing.
    h.set_instance_attribute("enable-oslogin-sk", "TRUE");
    h.require_compute_token(Some("ya29.bare"));
    let (code, err) = run(&[], &["--token", "ya29.bare"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("accepts only security keys") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(
        h.oslogin_user("dev@example.com").unwrap().keys.len(),
        1,
        "no key imported"
    );
    // --ignore-oslogin-sk: imported anyway, with a warning.
    let (code, err) = run(&[], &["--token", "ya29.bare", "--ignore-oslogin-sk"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("importing an ordinary key anyway"), "{err}");
    assert_eq!(h.oslogin_user("dev@example.com").unwrap().keys.len(), 2);
}
