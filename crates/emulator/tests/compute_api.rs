//! The Compute API answers `gce-ssh` relies on against the real API, checked over real HTTP on
//! 127.0.0.1: external addresses in `instances.get`, Google's not-found answer for guest
//! attributes, and Google's 401 when a bearer token is required.

use gce_metadata_emulator::{Emulator, RunningEmulator};
use serde_json::{Value, json};

const INSTANCE: &str = "/compute/v1/projects/my-proj/zones/us-west1-b/instances/vm0";

async fn start() -> (RunningEmulator, reqwest::Client) {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("start emulator");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    (emu, http)
}

async fn get(
    http: &reqwest::Client,
    emu: &RunningEmulator,
    path: &str,
    auth: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = http.get(format!("{}{path}", emu.url()));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    (
        status,
        www,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test]
async fn instances_get_names_the_external_ip_as_nat_ip() {
    let (emu, http) = start().await;
    emu.handle().set(
        "/instance/networkInterfaces/0/accessConfigs",
        json!([{"externalIp": "127.0.0.1", "type": "ONE_TO_ONE_NAT"}]),
    );
    let (status, _, v) = get(&http, &emu, INSTANCE, None).await;
    assert_eq!(status, 200);
    let nic = &v["networkInterfaces"][0];
    assert_eq!(nic["networkIP"], "10.138.0.7");
    assert_eq!(
        nic["accessConfigs"],
        json!([{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": "External NAT",
                "natIP": "127.0.0.1", "networkTier": "PREMIUM"}])
    );
    assert_eq!(
        v["id"], "5737554347302044216",
        "ids are strings, as Google sends them"
    );
}

#[tokio::test]
async fn guest_attributes_not_published_answer_googles_404() {
    let (emu, http) = start().await;
    let (status, _, v) = get(
        &http,
        &emu,
        &format!("{INSTANCE}/getGuestAttributes?queryPath=hostkeys/"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // gcloud matches this text to tell "no host keys" from a failure.
    assert_eq!(
        v["error"]["message"],
        "The resource 'hostkeys/' of type 'Guest Attribute' was not found."
    );
}

#[tokio::test]
async fn a_required_bearer_token_is_checked_like_google() {
    let (emu, http) = start().await;
    let h = emu.handle();
    // (required, Authorization) -> (status, reason)
    type Row<'a> = (Option<&'a str>, Option<&'a str>, u16, Option<&'a str>);
    let rows: [Row; 5] = [
        (None, None, 200, None),
        (Some("ya29.good"), None, 401, Some("required")),
        (
            Some("ya29.good"),
            Some("Bearer ya29.bad"),
            401,
            Some("authError"),
        ),
        (Some("ya29.good"), Some("ya29.good"), 401, Some("authError")),
        (Some("ya29.good"), Some("Bearer ya29.good"), 200, None),
    ];
    for (required, auth, want, reason) in rows {
        h.require_compute_token(required);
        for path in [
            INSTANCE.to_string(),
            format!("{INSTANCE}/getGuestAttributes?queryPath=gce-agent/"),
            "/compute/v1/projects/my-proj".to_string(),
        ] {
            let (status, www, v) = get(&http, &emu, &path, auth).await;
            if want == 200 {
                assert_ne!(status, 401, "{path} {auth:?}: {v}");
                continue;
            }
            assert_eq!(status, want, "{path} {auth:?}: {v}");
            assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
            assert_eq!(v["error"]["errors"][0]["reason"].as_str(), reason);
            assert_eq!(v["error"]["errors"][0]["location"], "Authorization");
            assert!(www.unwrap_or_default().starts_with("Bearer"), "{path}");
        }
    }
    // setMetadata is refused before anything changes.
    h.require_compute_token(Some("ya29.good"));
    let before = h.doc()["instance"]["attributes"].clone();
    let resp = http
        .post(format!("{}{INSTANCE}/setMetadata", emu.url()))
        .body(r#"{"fingerprint":"x","items":[{"key":"a","value":"b"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(h.doc()["instance"]["attributes"], before);
}
