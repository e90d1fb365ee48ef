//! OS Login in the emulator (SPEC §10): the metadata server's `oslogin/` endpoints in the shapes
//! Google's package parses (guest-oslogin `src/oslogin_utils.cc`), and the OS Login API's
//! control plane. One row or test per rule, over real HTTP on 127.0.0.1.

use gce_metadata_emulator::{Emulator, EmulatorHandle, RunningEmulator};
use serde_json::{Value, json};

const OSL: &str = "/computeMetadata/v1/oslogin";
const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGBeOo8qSjOysw15rHU0334Tcr720ziK986QwjjDp53s alice";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGHqt2skloV/XSgQvit8IxfxlvR+z69o1Zr6LA7AJKMI bob";

struct Env {
    emu: RunningEmulator,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn env(oslogin_on: bool) -> Env {
    let emu = Emulator::with_default_doc()
        .start("127.0.0.1:0")
        .await
        .expect("start emulator");
    if oslogin_on {
        emu.handle().set_project_attribute("enable-oslogin", "TRUE");
        emu.handle().remove_instance_attribute("enable-oslogin");
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    Env { emu, http }
}

impl Env {
    fn h(&self) -> EmulatorHandle {
        self.emu.handle()
    }

    async fn send(&self, method: &str, path: &str, flavor: bool, body: Option<&str>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.emu.url()));
        if flavor {
            req = req.header("Metadata-Flavor", "Google");
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        Reply {
            status: resp.status().as_u16(),
            body: resp.text().await.expect("body"),
        }
    }

    async fn guest(&self, path: &str) -> Reply {
        self.send("GET", &format!("{OSL}/{path}"), true, None).await
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        self.send(method, path, false, body.as_deref()).await
    }
}

/// Three users (alice with `login`, bob with `adminLogin`, carol with nothing) and a group.
fn populate(h: &EmulatorHandle) {
    h.oslogin_import_key("alice@example.com", KEY_A, None)
        .expect("alice key");
    h.oslogin_import_key("bob@example.com", KEY_B, Some(4_102_444_800_000_000))
        .expect("bob key");
    h.oslogin_add_user("carol@example.com");
    h.oslogin_set_policy("alice@example.com", true, false);
    h.oslogin_set_policy("bob@example.com", false, true);
    h.oslogin_set_group("devs", &["alice@example.com", "bob@example.com"]);
}

#[tokio::test]
async fn every_oslogin_endpoint_is_a_404_while_oslogin_is_off() {
    let e = env(false).await;
    populate(&e.h());
    for path in [
        "users?username=alice_example_com",
        "users?uid=1000000001",
        "users?pagesize=10",
        "users?groupname=devs",
        "groups?pagesize=10",
        "groups?groupname=devs",
        "groups?email=alice@example.com",
        "authorize?email=alice@example.com&policy=login",
        "certificates",
    ] {
        assert_eq!(e.guest(path).await.status, 404, "{path}");
    }
    // The instance value wins over the project's, in Go's ParseBool spelling.
    e.h().set_project_attribute("enable-oslogin", "false");
    e.h().set_instance_attribute("enable-oslogin", "True");
    assert_eq!(
        e.guest("users?username=alice_example_com").await.status,
        200
    );
}

#[tokio::test]
async fn guest_requests_need_the_flavor_header() {
    let e = env(true).await;
    populate(&e.h());
    let r = e
        .send(
            "GET",
            &format!("{OSL}/users?username=alice_example_com"),
            false,
            None,
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn users_by_name_and_uid_have_the_profile_shape_the_package_parses() {
    let e = env(true).await;
    populate(&e.h());
    let alice = e.h().oslogin_user("alice@example.com").expect("alice");
    let by_name = e.guest("users?username=alice_example_com").await;
    assert_eq!(by_name.status, 200);
    let v = by_name.json();
    let profile = &v["loginProfiles"][0];
    assert_eq!(profile["name"], "alice@example.com");
    let acct = &profile["posixAccounts"][0];
    assert_eq!(acct["primary"], true);
    assert_eq!(acct["username"], "alice_example_com");
    assert_eq!(acct["uid"], alice.uid.to_string());
    assert_eq!(acct["gid"], alice.uid.to_string(), "self-group: gid = uid");
    assert_eq!(acct["homeDirectory"], "/home/alice_example_com");
    assert_eq!(acct["shell"], "/bin/bash");
    let keys = profile["sshPublicKeys"].as_object().expect("keys object");
    assert_eq!(keys.len(), 1);
    let (fp, key) = keys.iter().next().unwrap();
    assert_eq!(key["fingerprint"], fp.as_str());
    assert_eq!(key["key"], KEY_A);
    assert!(key.get("expirationTimeUsec").is_none(), "no expiry given");

    let by_uid = e.guest(&format!("users?uid={}", alice.uid)).await;
    assert_eq!(by_uid.json(), v, "same profile by uid");
    // Percent-encoded names are decoded (the package URL-encodes its parameters).
    assert_eq!(
        e.guest("users?username=alice%5Fexample%5Fcom").await.json(),
        v
    );

    for (rule, path, status) in [
        ("unknown name", "users?username=nobody", 404),
        ("unknown uid", "users?uid=4242", 404),
        ("non-numeric uid", "users?uid=abc", 404),
        ("no selector", "users", 400),
        ("bad page size", "users?pagesize=0", 400),
        ("bad page token", "users?pagesize=2&pagetoken=x", 400),
        ("unknown endpoint", "nothing", 404),
        ("unknown group's members", "users?groupname=nope", 404),
    ] {
        assert_eq!(e.guest(path).await.status, status, "{rule}: {path}");
    }
}

#[tokio::test]
async fn users_pages_end_with_a_zero_token_and_no_profiles() {
    let e = env(true).await;
    // No users at all: the first page is already the last.
    assert_eq!(
        e.guest("users?pagesize=2").await.json(),
        json!({"nextPageToken":"0"})
    );
    populate(&e.h());
    let p1 = e.guest("users?pagesize=2").await.json();
    assert_eq!(p1["loginProfiles"].as_array().unwrap().len(), 2);
    let t1 = p1["nextPageToken"].as_str().unwrap().to_string();
    assert_ne!(t1, "0");
    let p2 = e
        .guest(&format!("users?pagesize=2&pagetoken={t1}"))
        .await
        .json();
    assert_eq!(p2["loginProfiles"].as_array().unwrap().len(), 1);
    let t2 = p2["nextPageToken"].as_str().unwrap().to_string();
    assert_ne!(
        t2, "0",
        "a page with profiles never carries the final token"
    );
    let p3 = e
        .guest(&format!("users?pagesize=2&pagetoken={t2}"))
        .await
        .json();
    assert_eq!(p3, json!({"nextPageToken":"0"}));
    let mut names: Vec<String> = [&p1, &p2]
        .iter()
        .flat_map(|p| p["loginProfiles"].as_array().unwrap().clone())
        .map(|p| {
            p["posixAccounts"][0]["username"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alice_example_com", "bob_example_com", "carol_example_com"]
    );
}

#[tokio::test]
async fn groups_pages_and_lookups() {
    let e = env(true).await;
    populate(&e.h());
    let gid = e.h().oslogin_set_group("ops", &["bob@example.com"]);
    e.h().oslogin_set_group("qa", &[]);
    // The groups' last page carries groups *and* the "0" token.
    let p1 = e.guest("groups?pagesize=2").await.json();
    assert_eq!(p1["posixGroups"].as_array().unwrap().len(), 2);
    assert_eq!(p1["nextPageToken"], "2");
    let p2 = e.guest("groups?pagesize=2&pagetoken=2").await.json();
    assert_eq!(p2["posixGroups"].as_array().unwrap().len(), 1);
    assert_eq!(p2["nextPageToken"], "0");
    assert_eq!(p2["posixGroups"][0]["name"], "qa");

    assert_eq!(
        e.guest("groups?groupname=ops").await.json(),
        json!({"posixGroups":[{"name":"ops","gid":gid.to_string()}]})
    );
    assert_eq!(
        e.guest(&format!("groups?gid={gid}")).await.json()["posixGroups"][0]["name"],
        "ops"
    );
    assert_eq!(e.guest("groups?groupname=nope").await.status, 404);
    assert_eq!(e.guest("groups?gid=7").await.status, 404);
    let bobs = e.guest("groups?email=bob@example.com").await.json();
    let names: Vec<&str> = bobs["posixGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["devs", "ops"]);
    assert_eq!(bobs["nextPageToken"], "0");
    assert_eq!(
        e.guest("groups?email=carol@example.com").await.json(),
        json!({"posixGroups":[],"nextPageToken":"0"})
    );
    assert_eq!(
        e.guest("users?groupname=devs").await.json(),
        json!({"usernames":["alice_example_com","bob_example_com"],"nextPageToken":"0"})
    );
}

#[tokio::test]
async fn authorize_follows_the_roles() {
    let e = env(true).await;
    populate(&e.h());
    for (email, policy, want) in [
        ("alice@example.com", "login", true),
        ("alice@example.com", "adminLogin", false),
        ("bob@example.com", "login", true),
        ("bob@example.com", "adminLogin", true),
        ("carol@example.com", "login", false),
        ("carol@example.com", "adminLogin", false),
        ("nobody@example.com", "login", false),
    ] {
        let r = e
            .guest(&format!("authorize?email={email}&policy={policy}"))
            .await;
        assert_eq!(r.json(), json!({"success": want}), "{email} {policy}");
    }
    assert_eq!(
        e.guest("authorize?email=alice%40example.com&policy=login")
            .await
            .json(),
        json!({"success": true}),
        "encoded @"
    );
    assert_eq!(
        e.guest("authorize?email=alice@example.com").await.status,
        400
    );
    assert_eq!(
        e.guest("authorize?email=alice@example.com&policy=root")
            .await
            .status,
        400
    );
    // Revoking takes effect on the next request.
    e.h().oslogin_set_policy("alice@example.com", false, false);
    assert_eq!(
        e.guest("authorize?email=alice@example.com&policy=login")
            .await
            .json(),
        json!({"success": false})
    );
}

#[tokio::test]
async fn certificates_list_the_trusted_user_cas() {
    let e = env(true).await;
    assert_eq!(
        e.guest("certificates").await.json(),
        json!({"trustedCertificateAuthorities": []})
    );
    e.h().oslogin_set_ca_keys(&[KEY_A, KEY_B]);
    assert_eq!(
        e.guest("certificates").await.json(),
        json!({"trustedCertificateAuthorities": [{"publicKey": KEY_A}, {"publicKey": KEY_B}]})
    );
    let r = e
        .api(
            "PUT",
            "/emulator/oslogin/certificates",
            Some(json!({"trustedCertificateAuthorities":[{"publicKey": KEY_B}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        e.guest("certificates").await.json()["trustedCertificateAuthorities"],
        json!([{"publicKey": KEY_B}])
    );
    let r = e
        .api(
            "PUT",
            "/emulator/oslogin/certificates",
            Some(json!([KEY_A])),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        e.h().doc()["oslogin"],
        json!({}),
        "not part of the metadata document"
    );
}

#[tokio::test]
async fn import_creates_the_profile_with_a_posix_account() {
    let e = env(true).await;
    let r = e
        .api(
            "POST",
            "/v1/users/alice@example.com:importSshPublicKey?projectId=my-proj",
            Some(json!({"key": KEY_A, "expirationTimeUsec": "1700000000000000"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let profile = &v["loginProfile"];
    assert_eq!(profile["name"], "alice@example.com");
    let acct = &profile["posixAccounts"][0];
    assert_eq!(acct["username"], "alice_example_com");
    assert_eq!(acct["homeDirectory"], "/home/alice_example_com");
    assert_eq!(acct["shell"], "/bin/bash");
    assert_eq!(acct["accountId"], "my-proj");
    let uid: u64 = acct["uid"].as_str().unwrap().parse().unwrap();
    assert!(uid >= 1000, "OS Login refuses uids below 1000");
    assert_eq!(acct["gid"], acct["uid"]);
    let keys = profile["sshPublicKeys"].as_object().unwrap();
    let (fp, key) = keys.iter().next().unwrap();
    assert_eq!(fp.len(), 64, "SHA-256 in hex");
    assert_eq!(key["expirationTimeUsec"], "1700000000000000");

    // Re-importing the same key (numeric expiry) updates it in place; another key adds one.
    let r = e
        .api(
            "POST",
            "/v1/users/alice%40example.com:importSshPublicKey",
            Some(json!({"key": KEY_A, "expirationTimeUsec": 1800000000000000u64})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["loginProfile"]["sshPublicKeys"][fp]["expirationTimeUsec"],
        "1800000000000000"
    );
    e.api(
        "POST",
        "/v1/users/alice@example.com:importSshPublicKey",
        Some(json!({"key": KEY_B})),
    )
    .await;
    let profile = e
        .api("GET", "/v1/users/alice@example.com/loginProfile", None)
        .await;
    assert_eq!(profile.status, 200);
    assert_eq!(
        profile.json()["sshPublicKeys"].as_object().unwrap().len(),
        2
    );
    // The same profile (uid included) through the guest API.
    let guest = e.guest("users?username=alice_example_com").await.json();
    assert_eq!(guest["loginProfiles"][0], profile.json());
    // A key past its expiry is still served: the package refuses it at login time.
    assert_eq!(
        guest["loginProfiles"][0]["sshPublicKeys"][fp]["expirationTimeUsec"],
        "1800000000000000"
    );

    let get = e
        .api(
            "GET",
            &format!("/v1/users/alice@example.com/sshPublicKeys/{fp}"),
            None,
        )
        .await;
    assert_eq!(get.json()["key"], KEY_A);
    let del = e
        .api(
            "DELETE",
            &format!("/v1/users/alice@example.com/sshPublicKeys/{fp}"),
            None,
        )
        .await;
    assert_eq!((del.status, del.json()), (200, json!({})));
    let again = e
        .api(
            "DELETE",
            &format!("/v1/users/alice@example.com/sshPublicKeys/{fp}"),
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["error"]["status"], "NOT_FOUND");
    assert_eq!(
        e.api("GET", "/v1/users/alice@example.com/loginProfile", None)
            .await
            .json()["sshPublicKeys"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn control_plane_errors() {
    let e = env(true).await;
    for (rule, method, path, body, status) in [
        (
            "malformed key",
            "POST",
            "/v1/users/alice@example.com:importSshPublicKey",
            Some(json!({"key": "ssh-ed25519 notbase64"})),
            400,
        ),
        (
            "missing key",
            "POST",
            "/v1/users/alice@example.com:importSshPublicKey",
            Some(json!({})),
            400,
        ),
        (
            "bad expiry",
            "POST",
            "/v1/users/alice@example.com:importSshPublicKey",
            Some(json!({"key": KEY_A, "expirationTimeUsec": "soon"})),
            400,
        ),
        (
            "not an email",
            "POST",
            "/v1/users/alice:importSshPublicKey",
            Some(json!({"key": KEY_A})),
            400,
        ),
        (
            "unknown method",
            "POST",
            "/v1/users/alice@example.com:frobnicate",
            Some(json!({})),
            404,
        ),
        (
            "unknown profile",
            "GET",
            "/v1/users/nobody@example.com/loginProfile",
            None,
            404,
        ),
        (
            "unknown key",
            "DELETE",
            "/v1/users/nobody@example.com/sshPublicKeys/00",
            None,
            404,
        ),
    ] {
        let r = e.api(method, path, body).await;
        assert_eq!(r.status, status, "{rule}: {}", r.body);
        assert_eq!(
            r.json()["error"]["code"],
            status,
            "{rule}: Google's error body"
        );
    }
    assert!(
        e.h().oslogin_user("alice@example.com").is_none(),
        "nothing created on error"
    );
}

#[tokio::test]
async fn emulator_endpoints_grant_and_revoke_roles_and_manage_groups() {
    let e = env(true).await;
    let r = e
        .api(
            "PUT",
            "/emulator/oslogin/users/dave@example.com",
            Some(json!({"login": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["posixAccounts"][0]["username"], "dave_example_com");
    let e = &e;
    let auth = |policy: &'static str| async move {
        e.guest(&format!("authorize?email=dave@example.com&policy={policy}"))
            .await
            .json()["success"]
            .clone()
    };
    assert_eq!(auth("login").await, true);
    assert_eq!(auth("adminLogin").await, false);
    e.api(
        "PUT",
        "/emulator/oslogin/users/dave@example.com/policy",
        Some(json!({"login": true, "adminLogin": true})),
    )
    .await;
    assert_eq!(auth("adminLogin").await, true);
    e.api(
        "PUT",
        "/emulator/oslogin/users/dave@example.com/policy",
        Some(json!({})),
    )
    .await;
    assert_eq!(auth("login").await, false);

    let g = e
        .api(
            "PUT",
            "/emulator/oslogin/groups/admins",
            Some(json!({"gid": "4242", "members": ["dave@example.com"]})),
        )
        .await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(
        e.guest("groups?gid=4242").await.json()["posixGroups"][0]["name"],
        "admins"
    );
    let dump = e.api("GET", "/emulator/oslogin", None).await.json();
    assert_eq!(dump["users"][0]["name"], "dave@example.com");
    assert_eq!(
        e.api("DELETE", "/emulator/oslogin/groups/admins", None)
            .await
            .status,
        200
    );
    assert_eq!(e.guest("groups?gid=4242").await.status, 404);
    assert_eq!(
        e.api("DELETE", "/emulator/oslogin/users/dave@example.com", None)
            .await
            .status,
        200
    );
    assert_eq!(e.guest("users?username=dave_example_com").await.status, 404);
    assert_eq!(
        e.api(
            "PUT",
            "/emulator/oslogin/groups/bad%20name",
            Some(json!({}))
        )
        .await
        .status,
        400
    );
}
