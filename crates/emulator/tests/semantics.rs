//! The metadata server's documented behaviour (SPEC §1), one row or test per rule, checked over
//! real HTTP on 127.0.0.1 against the in-process emulator.

use std::time::{Duration, Instant};

use gce_metadata_emulator::{Emulator, EmulatorHandle, Fault, RunningEmulator};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const MD: &str = "/computeMetadata/v1";

struct Env {
    emu: RunningEmulator,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn etag(&self) -> String {
        self.header("etag").expect("etag header").to_string()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn env() -> Env {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("start emulator");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client");
    Env { emu, http }
}

impl Env {
    fn h(&self) -> EmulatorHandle {
        self.emu.handle()
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.emu.url()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A guest request with the flavor header.
    async fn md(&self, path: &str) -> Reply {
        self.send(
            "GET",
            &format!("{MD}{path}"),
            &[("Metadata-Flavor", "Google")],
            None,
        )
        .await
    }

    async fn md_method(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.send(
            method,
            &format!("{MD}{path}"),
            &[("Metadata-Flavor", "Google")],
            body,
        )
        .await
    }
}

/// What a row expects of a plain guest GET.
struct Row {
    rule: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    content_type: Option<&'static str>,
    body: Body,
}

enum Body {
    Exact(&'static str),
    Contains(&'static [&'static str]),
    Json(fn() -> Value),
    Any,
}

const FLAVOR: &[(&str, &str)] = &[("Metadata-Flavor", "Google")];

#[tokio::test]
async fn guest_reads_follow_the_spec() {
    let e = env().await;
    e.h()
        .set_instance_attribute("ssh-keys", "alice:ssh-ed25519 AAAAC3Nza alice@laptop");
    let rows = [
        Row {
            rule: "403 without Metadata-Flavor, with an HTML body",
            path: "/computeMetadata/v1/instance/id",
            headers: &[],
            status: 403,
            content_type: Some("text/html; charset=UTF-8"),
            body: Body::Contains(&["<html", "Metadata-Flavor"]),
        },
        Row {
            rule: "403 with a wrong flavor",
            path: "/computeMetadata/v1/instance/id",
            headers: &[("Metadata-Flavor", "Amazon")],
            status: 403,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "403 with X-Forwarded-For",
            path: "/computeMetadata/v1/instance/id",
            headers: &[
                ("Metadata-Flavor", "Google"),
                ("X-Forwarded-For", "10.0.0.1"),
            ],
            status: 403,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "root listing: directories carry a trailing slash",
            path: "/computeMetadata/v1/",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/text"),
            body: Body::Exact("instance/\noslogin/\nproject/\n"),
        },
        Row {
            rule: "instance listing is kebab-case with slashes on directories",
            path: "/computeMetadata/v1/instance/",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/text"),
            body: Body::Contains(&[
                "attributes/\n",
                "network-interfaces/\n",
                "virtual-clock/\n",
                "machine-type\n",
                "id\n",
            ]),
        },
        Row {
            rule: "attribute keys are listed verbatim",
            path: "/computeMetadata/v1/instance/attributes/",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("enable-guest-attributes\nenable-oslogin\nssh-keys\n"),
        },
        Row {
            rule: "arrays are directories of indices",
            path: "/computeMetadata/v1/instance/network-interfaces/",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("0/\n"),
        },
        Row {
            rule: "network interface listing",
            path: "/computeMetadata/v1/instance/network-interfaces/0/",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Contains(&[
                "forwarded-ips/\n",
                "forwarded-ipv6s/\n",
                "ip-aliases/\n",
                "target-instance-ips/\n",
                "mac\n",
                "mtu\n",
            ]),
        },
        Row {
            rule: "leaf as text",
            path: "/computeMetadata/v1/instance/network-interfaces/0/mac",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/text"),
            body: Body::Exact("42:01:0a:8a:00:07"),
        },
        Row {
            rule: "number leaf as decimal text",
            path: "/computeMetadata/v1/instance/network-interfaces/0/mtu",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("1460"),
        },
        Row {
            rule: "instance id above 2^53 is exact as text",
            path: "/computeMetadata/v1/instance/id",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("5737554347302044216"),
        },
        Row {
            rule: "instance id above 2^53 is exact as JSON",
            path: "/computeMetadata/v1/instance/id?alt=json",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/json"),
            body: Body::Exact("5737554347302044216"),
        },
        Row {
            rule: "alt=json on a string leaf gives a JSON string",
            path: "/computeMetadata/v1/instance/virtual-clock/drift-token?alt=json",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/json"),
            body: Body::Exact("\"0\""),
        },
        Row {
            rule: "project ids",
            path: "/computeMetadata/v1/project/numeric-project-id",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("523926462582"),
        },
        Row {
            rule: "recursive=true is camelCase JSON, attribute keys verbatim",
            path: "/computeMetadata/v1/instance/network-interfaces/?recursive=true",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/json"),
            body: Body::Json(|| {
                json!([{"accessConfigs":[],"dnsServers":["169.254.169.254"],"forwardedIps":[],"forwardedIpv6s":[],
                "gateway":"10.138.0.1","ip":"10.138.0.7","ipAliases":[],"mac":"42:01:0a:8a:00:07","mtu":1460,
                "network":"projects/523926462582/networks/default","subnetmask":"255.255.240.0","targetInstanceIps":[]}])
            }),
        },
        Row {
            rule: "recursive alt=text gives path-value lines relative to the directory",
            path: "/computeMetadata/v1/instance/?recursive=true&alt=text",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/text"),
            body: Body::Contains(&[
                "attributes/ssh-keys alice:ssh-ed25519 AAAAC3Nza alice@laptop\n",
                "network-interfaces/0/mtu 1460\n",
                "virtual-clock/drift-token 0\n",
                "id 5737554347302044216\n",
            ]),
        },
        Row {
            rule: "service accounts list default and the email",
            path: "/computeMetadata/v1/instance/service-accounts/",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("523926462582-compute@developer.gserviceaccount.com/\ndefault/\n"),
        },
        Row {
            rule: "a service account lists its generated leaves",
            path: "/computeMetadata/v1/instance/service-accounts/default/",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("aliases\nemail\nidentity\nscopes\ntoken\n"),
        },
        Row {
            rule: "scopes one per line",
            path: "/computeMetadata/v1/instance/service-accounts/default/scopes",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("https://www.googleapis.com/auth/cloud-platform\n"),
        },
        Row {
            rule: "email",
            path: "/computeMetadata/v1/instance/service-accounts/default/email",
            headers: FLAVOR,
            status: 200,
            content_type: None,
            body: Body::Exact("523926462582-compute@developer.gserviceaccount.com"),
        },
        Row {
            rule: "token is JSON",
            path: "/computeMetadata/v1/instance/service-accounts/default/token",
            headers: FLAVOR,
            status: 200,
            content_type: Some("application/json"),
            body: Body::Contains(&[
                "\"access_token\":\"ya29.emulated-",
                "\"expires_in\":3599",
                "\"token_type\":\"Bearer\"",
            ]),
        },
        Row {
            rule: "404 on an unknown path",
            path: "/computeMetadata/v1/instance/no-such-thing",
            headers: FLAVOR,
            status: 404,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "404 on a camelCase path segment",
            path: "/computeMetadata/v1/instance/networkInterfaces/",
            headers: FLAVOR,
            status: 404,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "400 on a non-integer timeout_sec",
            path: "/computeMetadata/v1/instance/id?wait_for_change=true&timeout_sec=1.5",
            headers: FLAVOR,
            status: 400,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "400 on wait_for_change on a plain listing",
            path: "/computeMetadata/v1/instance/attributes/?wait_for_change=true",
            headers: FLAVOR,
            status: 400,
            content_type: None,
            body: Body::Any,
        },
        Row {
            rule: "400 on wait_for_change on a token",
            path: "/computeMetadata/v1/instance/service-accounts/default/token?wait_for_change=true",
            headers: FLAVOR,
            status: 400,
            content_type: None,
            body: Body::Any,
        },
    ];
    for row in rows {
        let r = e.send("GET", row.path, row.headers, None).await;
        assert_eq!(
            r.status, row.status,
            "{}: status (body {:?})",
            row.rule, r.body
        );
        if let Some(ct) = row.content_type {
            assert_eq!(
                r.header("content-type"),
                Some(ct),
                "{}: content type",
                row.rule
            );
        }
        match row.body {
            Body::Exact(want) => assert_eq!(r.body, want, "{}", row.rule),
            Body::Contains(parts) => {
                for p in parts {
                    assert!(
                        r.body.contains(p),
                        "{}: {p:?} not in {:?}",
                        row.rule,
                        r.body
                    );
                }
            }
            Body::Json(want) => assert_eq!(r.json(), want(), "{}", row.rule),
            Body::Any => {}
        }
        // Every guest answer carries the flavor, the server name and a 16-hex ETag.
        assert_eq!(
            r.header("metadata-flavor"),
            Some("Google"),
            "{}: flavor header",
            row.rule
        );
        assert_eq!(
            r.header("server"),
            Some("Metadata Server for VM"),
            "{}: server header",
            row.rule
        );
        let etag = r.etag();
        assert!(
            etag.len() == 16
                && etag
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{}: etag {etag:?}",
            row.rule
        );
    }
}

#[tokio::test]
async fn directory_without_slash_redirects_keeping_the_query() {
    let e = env().await;
    let r = e.md("/instance/attributes?recursive=false&x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("/computeMetadata/v1/instance/attributes/?recursive=false&x=1")
    );
    let r = e.md("/instance/network-interfaces").await;
    assert_eq!(
        (r.status, r.header("location")),
        (
            301,
            Some("/computeMetadata/v1/instance/network-interfaces/")
        )
    );
}

#[tokio::test]
async fn recursive_output_is_camel_case_and_excludes_tokens_and_guest_attributes() {
    let e = env().await;
    e.h().set_guest_attribute("hostkeys", "ssh-ed25519", "AAAA");
    let root = e.md("/?recursive=true").await.json();
    let inst = &root["instance"];
    assert_eq!(
        inst["id"].as_u64(),
        Some(5_737_554_347_302_044_216),
        "exact u64 id"
    );
    assert_eq!(inst["virtualClock"]["driftToken"], "0");
    assert_eq!(inst["networkInterfaces"][0]["mtu"], 1460);
    assert_eq!(inst["attributes"]["enable-guest-attributes"], "TRUE");
    assert_eq!(root["project"]["projectId"], "my-proj");
    assert!(
        inst["serviceAccounts"]["default"].get("token").is_none(),
        "token excluded"
    );
    assert!(
        inst.get("guestAttributes").is_none(),
        "guest attributes excluded"
    );
    assert!(
        !e.md("/?recursive=true").await.body.contains("ya29."),
        "no token anywhere"
    );
}

#[tokio::test]
async fn etag_is_a_hash_of_the_subtree() {
    let e = env().await;
    let a1 = e.md("/instance/attributes/?recursive=true").await.etag();
    let z1 = e.md("/instance/zone").await.etag();
    assert_eq!(
        e.md("/instance/attributes/?recursive=true").await.etag(),
        a1,
        "unchanged content, unchanged etag"
    );
    e.h().set_instance_attribute("k", "v");
    assert_ne!(
        e.md("/instance/attributes/?recursive=true").await.etag(),
        a1,
        "changed subtree, new etag"
    );
    assert_eq!(
        e.md("/instance/zone").await.etag(),
        z1,
        "other subtree keeps its etag"
    );
}

const ATTRS_WAIT: &str = "/instance/attributes/?recursive=true&wait_for_change=true";

#[tokio::test]
async fn wait_with_a_stale_etag_returns_at_once() {
    let e = env().await;
    for stale in ["NONE", "0", "0123456789abcdef"] {
        let t = Instant::now();
        let r = e
            .md(&format!("{ATTRS_WAIT}&last_etag={stale}&timeout_sec=30"))
            .await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stale {stale} answered at once"
        );
        assert_eq!(r.json()["enable-oslogin"], "FALSE");
    }
}

/// Wait until `n` long polls are parked in the emulator.
async fn parked(h: &EmulatorHandle, n: u64) {
    let t = Instant::now();
    while h.waiters() < n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "long poll never parked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn wait_with_the_current_etag_blocks_until_the_subtree_changes() {
    let e = std::sync::Arc::new(env().await);
    let etag = e.md("/instance/attributes/?recursive=true").await.etag();
    let e2 = e.clone();
    let path = format!("{ATTRS_WAIT}&last_etag={etag}&timeout_sec=30");
    let poll = tokio::spawn(async move { e2.md(&path).await });
    parked(&e.h(), 1).await;
    // A change elsewhere does not answer this poll.
    e.h().set("/instance/virtualClock/driftToken", json!("1"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !poll.is_finished(),
        "a change outside the subtree must not wake the poll"
    );
    e.h()
        .set_instance_attribute("ssh-keys", "bob:ssh-ed25519 BBBB bob");
    let r = poll.await.unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(r.etag(), etag);
    assert_eq!(r.json()["ssh-keys"], "bob:ssh-ed25519 BBBB bob");
    assert_eq!(e.h().waiters(), 0);
}

#[tokio::test]
async fn wait_without_last_etag_waits_for_the_next_change() {
    let e = std::sync::Arc::new(env().await);
    let e2 = e.clone();
    let poll = tokio::spawn(async move {
        e2.md("/instance/virtual-clock/drift-token?wait_for_change=true&timeout_sec=30")
            .await
    });
    parked(&e.h(), 1).await;
    e.h().set("/instance/virtualClock/driftToken", json!("7"));
    let r = poll.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "7"));
}

#[tokio::test]
async fn wait_timeout_returns_the_same_content_and_etag() {
    let e = env().await;
    let before = e.md("/instance/attributes/?recursive=true").await;
    let t = Instant::now();
    let r = e
        .md(&format!(
            "{ATTRS_WAIT}&last_etag={}&timeout_sec=1",
            before.etag()
        ))
        .await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "blocked until the timeout"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.etag(), before.etag());
    assert_eq!(r.body, before.body);
}

#[tokio::test]
async fn a_key_deleted_while_waited_on_is_404() {
    let e = std::sync::Arc::new(env().await);
    e.h().set_instance_attribute("doomed", "x");
    let etag = e.md("/instance/attributes/doomed").await.etag();
    let e2 = e.clone();
    let path =
        format!("/instance/attributes/doomed?wait_for_change=true&last_etag={etag}&timeout_sec=30");
    let poll = tokio::spawn(async move { e2.md(&path).await });
    parked(&e.h(), 1).await;
    e.h().remove_instance_attribute("doomed");
    assert_eq!(poll.await.unwrap().status, 404);
}

#[tokio::test]
async fn guest_attributes_put_get_list_delete() {
    let e = env().await;
    let base = "/instance/guest-attributes";
    assert_eq!(
        e.md_method(
            "PUT",
            &format!("{base}/hostkeys/ssh-ed25519"),
            Some("AAAAC3Nza")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        e.md_method(
            "PUT",
            &format!("{base}/hostkeys/ssh-rsa"),
            Some("AAAAB3Nza")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        e.h().guest_attribute("hostkeys", "ssh-ed25519").as_deref(),
        Some("AAAAC3Nza")
    );
    let rows = [
        ("namespace listing", format!("{base}/"), 200, "hostkeys/\n"),
        (
            "key listing",
            format!("{base}/hostkeys/"),
            200,
            "ssh-ed25519\nssh-rsa\n",
        ),
        (
            "value",
            format!("{base}/hostkeys/ssh-rsa"),
            200,
            "AAAAB3Nza",
        ),
    ];
    for (rule, path, status, body) in rows {
        let r = e.md(&path).await;
        assert_eq!((r.status, r.body.as_str()), (status, body), "{rule}");
    }
    let inst = e.md("/instance/?recursive=true").await.body;
    assert!(
        !inst.contains("AAAAB3Nza") && !inst.contains("hostkeys"),
        "not in recursive output"
    );
    assert_eq!(
        e.md_method("DELETE", &format!("{base}/hostkeys/ssh-rsa"), None)
            .await
            .status,
        200
    );
    assert_eq!(e.md(&format!("{base}/hostkeys/ssh-rsa")).await.status, 404);
    assert_eq!(e.h().guest_attribute("hostkeys", "ssh-rsa"), None);
}

#[tokio::test]
async fn guest_attributes_need_enable_guest_attributes() {
    let e = env().await;
    async fn put(e: &Env) -> Reply {
        e.md_method("PUT", "/instance/guest-attributes/ns/k", Some("v"))
            .await
    }
    e.h()
        .set_instance_attribute("enable-guest-attributes", "false");
    e.h()
        .set_project_attribute("enable-guest-attributes", "TRUE");
    let r = put(&e).await;
    assert_eq!(r.status, 403, "instance value overrides the project's");
    assert!(
        r.body
            .contains("Guest attributes endpoint access is disabled.")
    );
    e.h().remove_instance_attribute("enable-guest-attributes");
    assert_eq!(
        put(&e).await.status,
        200,
        "project value applies when the instance sets none"
    );
    e.h().remove_project_attribute("enable-guest-attributes");
    assert_eq!(put(&e).await.status, 403, "off by default");
    assert_eq!(e.md("/instance/guest-attributes/").await.status, 403);
}

#[tokio::test]
async fn other_methods_are_405() {
    let e = env().await;
    assert_eq!(
        e.md_method("POST", "/instance/id", Some("x")).await.status,
        405
    );
    assert_eq!(
        e.md_method("PUT", "/instance/attributes/ssh-keys", Some("x"))
            .await
            .status,
        405
    );
}

const INSTANCE: &str = "/compute/v1/projects/my-proj/zones/us-west1-b/instances/vm0";

fn items(pairs: &[(&str, &str)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

#[tokio::test]
async fn control_plane_set_metadata_with_fingerprints() {
    let e = env().await;
    let auth = [("Authorization", "Bearer anything")];
    let inst = e.send("GET", INSTANCE, &auth, None).await.json();
    assert_eq!(inst["kind"], "compute#instance");
    assert_eq!(inst["id"], "5737554347302044216");
    assert_eq!(inst["name"], "vm0");
    assert_eq!(inst["status"], "RUNNING");
    let fp = inst["metadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        inst["metadata"]["items"],
        items(&[
            ("enable-guest-attributes", "TRUE"),
            ("enable-oslogin", "FALSE")
        ])
    );

    for (rule, path) in [
        (
            "unknown instance",
            "/compute/v1/projects/my-proj/zones/us-west1-b/instances/vm9",
        ),
        (
            "wrong zone",
            "/compute/v1/projects/my-proj/zones/us-east1-b/instances/vm0",
        ),
        (
            "wrong project",
            "/compute/v1/projects/other/zones/us-west1-b/instances/vm0",
        ),
    ] {
        let r = e.send("GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{rule}");
        assert_eq!(
            r.json()["error"]["errors"][0]["reason"],
            "notFound",
            "{rule}"
        );
    }
    assert_eq!(
        e.send(
            "GET",
            "/compute/v1/projects/523926462582/zones/us-west1-b/instances/vm0",
            &[],
            None
        )
        .await
        .status,
        200
    );

    // A poll parked on the attributes is answered by setMetadata.
    let etag = e.md("/instance/attributes/?recursive=true").await.etag();
    let set = |fp: &str, it: Value| json!({"fingerprint": fp, "items": it}).to_string();
    let new_items = items(&[
        ("ssh-keys", "alice:ssh-ed25519 AAAA alice"),
        ("enable-oslogin", "FALSE"),
    ]);
    let r = e
        .send(
            "POST",
            &format!("{INSTANCE}/setMetadata"),
            &auth,
            Some(&set(&fp, new_items)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["kind"], "compute#operation");
    assert_eq!(r.json()["status"], "DONE");
    assert_eq!(r.json()["operationType"], "setMetadata");
    let r = e
        .md(&format!("{ATTRS_WAIT}&last_etag={etag}&timeout_sec=5"))
        .await;
    assert_eq!(
        r.json(),
        json!({"enable-oslogin":"FALSE","ssh-keys":"alice:ssh-ed25519 AAAA alice"}),
        "all items replaced"
    );

    let r = e
        .send(
            "POST",
            &format!("{INSTANCE}/setMetadata"),
            &[],
            Some(&set(&fp, items(&[]))),
        )
        .await;
    assert_eq!(r.status, 412, "stale fingerprint");
    assert_eq!(r.json()["error"]["errors"][0]["reason"], "conditionNotMet");
    assert_eq!(
        e.h().doc()["instance"]["attributes"]["ssh-keys"],
        "alice:ssh-ed25519 AAAA alice",
        "nothing changed"
    );
}

#[tokio::test]
async fn control_plane_validates_items_as_gce_does() {
    let e = env().await;
    let fp = e.send("GET", INSTANCE, &[], None).await.json()["metadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let big = "x".repeat(256 * 1024 + 1);
    let quarter = "y".repeat(200 * 1024);
    let rows: Vec<(&str, Value)> = vec![
        ("key with a dot", items(&[("bad.key", "v")])),
        ("empty key", items(&[("", "v")])),
        ("key over 128 chars", items(&[(&"k".repeat(129), "v")])),
        ("value over 256 KiB", items(&[("k", &big)])),
        (
            "total over 512 KiB",
            items(&[("a", &quarter), ("b", &quarter), ("c", &quarter)]),
        ),
        ("duplicate keys", items(&[("k", "1"), ("k", "2")])),
    ];
    for (rule, it) in rows {
        let body = json!({"fingerprint": fp, "items": it}).to_string();
        let r = e
            .send("POST", &format!("{INSTANCE}/setMetadata"), &[], Some(&body))
            .await;
        assert_eq!(r.status, 400, "{rule}");
        assert_eq!(
            r.json()["error"]["errors"][0]["reason"],
            "invalid",
            "{rule}"
        );
    }
    assert_eq!(
        e.send("GET", INSTANCE, &[], None).await.json()["metadata"]["fingerprint"],
        fp.as_str(),
        "nothing changed"
    );
    let ok = json!({"fingerprint": fp, "items": items(&[("k-_9", &"v".repeat(256 * 1024))])})
        .to_string();
    assert_eq!(
        e.send("POST", &format!("{INSTANCE}/setMetadata"), &[], Some(&ok))
            .await
            .status,
        200,
        "limits are inclusive"
    );
}

#[tokio::test]
async fn control_plane_project_metadata() {
    let e = env().await;
    let p = e
        .send("GET", "/compute/v1/projects/my-proj", &[], None)
        .await
        .json();
    assert_eq!(
        (p["kind"].as_str(), p["name"].as_str(), p["id"].as_str()),
        (
            Some("compute#project"),
            Some("my-proj"),
            Some("523926462582")
        )
    );
    let fp = p["commonInstanceMetadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        json!({"fingerprint": fp, "items": items(&[("ssh-keys", "carol:ssh-ed25519 CCCC carol")])})
            .to_string();
    let r = e
        .send(
            "POST",
            "/compute/v1/projects/my-proj/setCommonInstanceMetadata",
            &[],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        e.md("/project/attributes/ssh-keys").await.body,
        "carol:ssh-ed25519 CCCC carol"
    );
    let r = e
        .send(
            "POST",
            "/compute/v1/projects/my-proj/setCommonInstanceMetadata",
            &[],
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["errors"][0]["reason"].as_str()),
        (412, Some("conditionNotMet"))
    );
}

#[tokio::test]
async fn control_plane_get_guest_attributes() {
    let e = env().await;
    e.md_method(
        "PUT",
        "/instance/guest-attributes/hostkeys/ssh-ed25519",
        Some("AAAA"),
    )
    .await;
    let q = |s: &str| format!("{INSTANCE}/getGuestAttributes?{s}");
    let r = e
        .send("GET", &q("queryPath=hostkeys/"), &[], None)
        .await
        .json();
    assert_eq!(r["kind"], "compute#guestAttributes");
    assert_eq!(
        r["queryValue"]["items"],
        json!([{"namespace":"hostkeys","key":"ssh-ed25519","value":"AAAA"}])
    );
    for query in [
        "queryPath=hostkeys/ssh-ed25519",
        "variableKey=hostkeys/ssh-ed25519",
    ] {
        let r = e.send("GET", &q(query), &[], None).await.json();
        assert_eq!(
            (r["variableKey"].as_str(), r["variableValue"].as_str()),
            (Some("hostkeys/ssh-ed25519"), Some("AAAA")),
            "{query}"
        );
    }
    assert_eq!(
        e.send("GET", &q("variableKey=hostkeys/ssh-rsa"), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        e.send("GET", &q("queryPath=nope/"), &[], None).await.status,
        404
    );
}

#[tokio::test]
async fn faults_apply_in_order_to_the_guest_api_only() {
    let e = env().await;
    let h = e.h();
    h.inject(Fault::Status {
        status: 503,
        count: 2,
    });
    h.inject(Fault::NoFlavor { count: 1 });
    // Control plane and /emulator are never faulted.
    assert_eq!(e.send("GET", INSTANCE, &[], None).await.status, 200);
    assert_eq!(
        e.send("GET", "/emulator/stats", &[], None).await.status,
        200
    );
    assert_eq!(e.md("/instance/id").await.status, 503);
    assert_eq!(e.md("/instance/id").await.status, 503);
    let r = e.md("/instance/id").await;
    assert_eq!(
        (r.status, r.body.as_str(), r.header("metadata-flavor")),
        (200, "5737554347302044216", None),
        "no flavor"
    );
    assert_eq!(
        e.md("/instance/id").await.header("metadata-flavor"),
        Some("Google"),
        "faults used up"
    );

    h.inject(Fault::Drop { count: 1 });
    let dropped = e
        .http
        .get(format!("{}{MD}/instance/id", e.emu.url()))
        .header("Metadata-Flavor", "Google")
        .send()
        .await;
    assert!(
        dropped.is_err(),
        "connection closed without an answer: {dropped:?}"
    );
    assert_eq!(e.md("/instance/id").await.status, 200);

    h.inject(Fault::Latency { ms: 300, count: 1 });
    let t = Instant::now();
    assert_eq!(e.md("/instance/id").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(280), "latency applied");

    h.inject(Fault::Status {
        status: 500,
        count: 5,
    });
    h.clear_faults();
    assert_eq!(e.md("/instance/id").await.status, 200, "cleared");
}

#[tokio::test]
async fn faults_and_pause_over_http() {
    let e = std::sync::Arc::new(env().await);
    assert_eq!(
        e.send(
            "POST",
            "/emulator/faults",
            &[],
            Some(r#"{"status":503,"count":1}"#)
        )
        .await
        .status,
        204
    );
    assert_eq!(e.md("/").await.status, 503);
    assert_eq!(
        e.send("POST", "/emulator/faults", &[], Some(r#"{"drop":1}"#))
            .await
            .status,
        204
    );
    assert_eq!(
        e.send("DELETE", "/emulator/faults", &[], None).await.status,
        204
    );
    assert_eq!(e.md("/").await.status, 200);

    assert_eq!(
        e.send("POST", "/emulator/pause", &[], None).await.status,
        204
    );
    let e2 = e.clone();
    let req = tokio::spawn(async move { e2.md("/instance/id").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!req.is_finished(), "paused: the guest request hangs");
    assert_eq!(
        e.send("GET", INSTANCE, &[], None).await.status,
        200,
        "control plane still answers"
    );
    assert_eq!(
        e.send("POST", "/emulator/resume", &[], None).await.status,
        204
    );
    assert_eq!(req.await.unwrap().status, 200);
    let before = e.h().request_count();
    e.md("/").await;
    assert_eq!(e.h().request_count(), before + 1);
    let stats = e.send("GET", "/emulator/stats", &[], None).await.json();
    assert_eq!(stats["requests"].as_u64(), Some(before + 1));
    assert_eq!(stats["waiters"].as_u64(), Some(0));
}

#[tokio::test]
async fn emulator_doc_endpoints_mirror_the_handle() {
    let e = env().await;
    let r = e
        .send(
            "PUT",
            "/emulator/doc/instance/virtualClock/driftToken",
            &[],
            Some("\"7\""),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(e.md("/instance/virtual-clock/drift-token").await.body, "7");
    assert_eq!(
        e.send("GET", "/emulator/doc/instance/virtualClock", &[], None)
            .await
            .json(),
        json!({"driftToken":"7"})
    );
    assert_eq!(
        e.send(
            "PUT",
            "/emulator/doc/oslogin/users/alice",
            &[],
            Some("{\"uid\":1001}")
        )
        .await
        .status,
        204
    );
    assert_eq!(
        e.h().doc()["oslogin"]["users"]["alice"]["uid"],
        1001,
        "intermediate objects created"
    );
    assert_eq!(
        e.send("DELETE", "/emulator/doc/oslogin/users", &[], None)
            .await
            .status,
        204
    );
    assert_eq!(
        e.send("GET", "/emulator/doc/oslogin/users", &[], None)
            .await
            .status,
        404
    );
    let whole = e.send("GET", "/emulator/doc", &[], None).await.json();
    assert_eq!(
        whole["instance"]["id"].as_u64(),
        Some(5_737_554_347_302_044_216)
    );
    let put = e
        .send(
            "PUT",
            "/emulator/doc",
            &[],
            Some(r#"{"instance":{"id":1,"attributes":{}},"project":{},"oslogin":{}}"#),
        )
        .await;
    assert_eq!(put.status, 204);
    assert_eq!(e.md("/instance/id").await.body, "1");
}

#[tokio::test]
async fn shutdown_closes_parked_long_polls() {
    let e = env().await;
    let url = format!("{}{MD}{ATTRS_WAIT}&timeout_sec=60", e.emu.url());
    let h = e.h();
    let poll = tokio::spawn(e.http.get(url).header("Metadata-Flavor", "Google").send());
    parked(&h, 1).await;
    let t = Instant::now();
    e.emu.shutdown().await;
    let r = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("poll ended")
        .unwrap();
    assert!(r.is_err(), "connection closed: {r:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Above `/computeMetadata/v1/` the real server answers the discovery paths clients probe
/// (google-auth's `ping()` is `GET /`); the retired APIs and everything else are 404.
#[tokio::test]
async fn paths_above_v1_answer_as_the_real_server() {
    struct Above {
        rule: &'static str,
        method: &'static str,
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        status: u16,
        body: Option<&'static str>,
        location: Option<&'static str>,
    }
    let rows = [
        Above {
            rule: "root lists computeMetadata/ (the ping)",
            method: "GET",
            path: "/",
            headers: FLAVOR,
            status: 200,
            body: Some("computeMetadata/\n"),
            location: None,
        },
        Above {
            rule: "root needs no flavor header",
            method: "GET",
            path: "/",
            headers: &[],
            status: 200,
            body: Some("computeMetadata/\n"),
            location: None,
        },
        Above {
            rule: "root rejects X-Forwarded-For",
            method: "GET",
            path: "/",
            headers: &[("X-Forwarded-For", "10.0.0.1")],
            status: 403,
            body: None,
            location: None,
        },
        Above {
            rule: "computeMetadata/ lists v1/",
            method: "GET",
            path: "/computeMetadata/",
            headers: FLAVOR,
            status: 200,
            body: Some("v1/\n"),
            location: None,
        },
        Above {
            rule: "computeMetadata/ needs the flavor header",
            method: "GET",
            path: "/computeMetadata/",
            headers: &[],
            status: 403,
            body: None,
            location: None,
        },
        Above {
            rule: "computeMetadata without slash redirects",
            method: "GET",
            path: "/computeMetadata",
            headers: FLAVOR,
            status: 301,
            body: None,
            location: Some("/computeMetadata/"),
        },
        Above {
            rule: "v1 without slash redirects",
            method: "GET",
            path: "/computeMetadata/v1",
            headers: FLAVOR,
            status: 301,
            body: None,
            location: Some("/computeMetadata/v1/"),
        },
        Above {
            rule: "root is read-only",
            method: "POST",
            path: "/",
            headers: FLAVOR,
            status: 405,
            body: None,
            location: None,
        },
        Above {
            rule: "v1beta1 was retired",
            method: "GET",
            path: "/computeMetadata/v1beta1/",
            headers: FLAVOR,
            status: 404,
            body: None,
            location: None,
        },
        Above {
            rule: "the 0.1 API was retired",
            method: "GET",
            path: "/0.1/meta-data/",
            headers: FLAVOR,
            status: 404,
            body: None,
            location: None,
        },
        Above {
            rule: "unknown paths are 404",
            method: "GET",
            path: "/latest/meta-data/",
            headers: FLAVOR,
            status: 404,
            body: None,
            location: None,
        },
    ];
    let e = env().await;
    for row in &rows {
        let r = e.send(row.method, row.path, row.headers, None).await;
        assert_eq!(r.status, row.status, "{}: {}", row.rule, r.body);
        if let Some(body) = row.body {
            assert_eq!(r.body, body, "{}", row.rule);
            assert_eq!(
                r.header("content-type"),
                Some("application/text"),
                "{}",
                row.rule
            );
        }
        assert_eq!(r.header("location"), row.location, "{}", row.rule);
        if row.status != 404 {
            assert_eq!(r.header("metadata-flavor"), Some("Google"), "{}", row.rule);
        }
    }
    // The root is the same server: an outage there is an outage of the ping too.
    e.h().inject(Fault::Status {
        status: 503,
        count: 1,
    });
    assert_eq!(e.send("GET", "/", FLAVOR, None).await.status, 503);
    assert_eq!(e.send("GET", "/", FLAVOR, None).await.status, 200);
}
