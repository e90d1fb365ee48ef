//! The metadata document: the built-in default, the mapping between kebab-case URL paths and the
//! camelCase document, ETags, and the text renderings the metadata server gives.
//!
//! Everything here is pure: `(document, path) -> answer`. The HTTP layer lives in `guest.rs`.

use serde_json::{Map, Value, json};

/// The realistic default document (SPEC §1 example, completed).
pub fn default_doc() -> Value {
    json!({
        "instance": {
            "attributes": {
                "enable-guest-attributes": "TRUE",
                "enable-oslogin": "FALSE"
            },
            "cpuPlatform": "Intel Broadwell",
            "description": "",
            "disks": [
                {"deviceName": "persistent-disk-0", "index": 0, "interface": "SCSI",
                 "mode": "READ_WRITE", "type": "PERSISTENT-BALANCED"}
            ],
            "hostname": "vm0.c.my-proj.internal",
            "id": 5737554347302044216u64,
            "image": "projects/debian-cloud/global/images/debian-12-bookworm-v20250101",
            "licenses": [],
            "machineType": "projects/523926462582/machineTypes/e2-medium",
            "maintenanceEvent": "NONE",
            "name": "vm0",
            "networkInterfaces": [
                {
                    "accessConfigs": [],
                    "dnsServers": ["169.254.169.254"],
                    "forwardedIps": [],
                    "forwardedIpv6s": [],
                    "gateway": "10.138.0.1",
                    "ip": "10.138.0.7",
                    "ipAliases": [],
                    "mac": "42:01:0a:8a:00:07",
                    "mtu": 1460,
                    "network": "projects/523926462582/networks/default",
                    "subnetmask": "255.255.240.0",
                    "targetInstanceIps": []
                }
            ],
            "preempted": "FALSE",
            "remainingCpuTime": -1,
            "scheduling": {"automaticRestart": "TRUE", "onHostMaintenance": "MIGRATE", "preemptible": "FALSE"},
            "serviceAccounts": {
                "default": {
                    "aliases": ["default"],
                    "email": "523926462582-compute@developer.gserviceaccount.com",
                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]
                }
            },
            "tags": [],
            "virtualClock": {"driftToken": "0"},
            "zone": "projects/523926462582/zones/us-west1-b"
        },
        "oslogin": {},
        "project": {
            "attributes": {},
            "numericProjectId": 523926462582u64,
            "projectId": "my-proj"
        }
    })
}

/// `network-interfaces` -> `networkInterfaces`.
pub fn kebab_to_camel(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    let mut upper = false;
    for c in seg.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `networkInterfaces` -> `network-interfaces`.
pub fn camel_to_kebab(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keys of these objects are data (attribute keys, account names), not schema: kept verbatim.
fn verbatim_children(doc_key: &str) -> bool {
    matches!(doc_key, "attributes" | "serviceAccounts")
}

/// URL segment for a child key of an object whose own document key is `parent_key`.
pub fn url_segment(parent_key: &str, child: &str) -> String {
    if verbatim_children(parent_key) {
        child.to_string()
    } else {
        camel_to_kebab(child)
    }
}

/// FNV-1a, 64 bit: stable across runs and platforms, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn etag_of_bytes(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// ETag of a subtree: a hash of its content, so unchanged content keeps its ETag.
pub fn etag_of(v: &Value) -> String {
    etag_of_bytes(&serde_json::to_vec(v).unwrap_or_default())
}

/// The document as the guest sees it: each service account is reachable under its name and
/// under its email, as on GCE.
pub fn guest_view(doc: &Value) -> Value {
    let mut view = doc.clone();
    if let Some(Value::Object(sas)) = view.pointer_mut("/instance/serviceAccounts") {
        let extra: Vec<(String, Value)> = sas
            .iter()
            .filter_map(|(name, acct)| {
                let email = acct.get("email")?.as_str()?;
                (email != name && !sas.contains_key(email))
                    .then(|| (email.to_string(), acct.clone()))
            })
            .collect();
        sas.extend(extra);
    }
    view
}

/// What a guest-API path names.
#[derive(Debug)]
pub enum Target<'a> {
    /// A node of the document; `key` is its document key (for the listing's verbatim rule),
    /// `account` whether it is a service account (whose listing adds `identity` and `token`).
    Node {
        value: &'a Value,
        key: String,
        account: bool,
    },
    /// `service-accounts/ACCT/token`: generated, never part of recursive output.
    Token { account: &'a Value },
    /// `service-accounts/ACCT/identity`.
    Identity { account: &'a Value },
}

/// Resolve URL segments (kebab-case, verbatim under attributes/service accounts) in the view.
pub fn resolve<'a>(view: &'a Value, segs: &[&str]) -> Option<Target<'a>> {
    let mut node = view;
    let mut key = String::new();
    let mut parent_key = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let next = match node {
            Value::Object(map) => {
                let found = if verbatim_children(&key) {
                    map.get_key_value(*seg)
                } else if seg.chars().any(|c| c.is_ascii_uppercase()) {
                    // Schema keys are kebab-case in URLs; `networkInterfaces` is a 404 on GCE.
                    None
                } else {
                    map.get_key_value(kebab_to_camel(seg).as_str())
                        .or_else(|| map.get_key_value(*seg))
                };
                found.map(|(k, v)| (k.as_str(), v))
            }
            Value::Array(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|v| (*seg, v)),
            _ => None,
        };
        let (k, v) = match next {
            Some(kv) => kv,
            None => {
                // Token and identity are generated leaves of a service account.
                let last = i + 1 == segs.len();
                if last && parent_key == "serviceAccounts" && node.is_object() {
                    match *seg {
                        "token" => return Some(Target::Token { account: node }),
                        "identity" => return Some(Target::Identity { account: node }),
                        _ => {}
                    }
                }
                return None;
            }
        };
        parent_key = std::mem::replace(&mut key, k.to_string());
        node = v;
    }
    Some(Target::Node {
        value: node,
        key,
        account: parent_key == "serviceAccounts",
    })
}

/// Arrays of addresses that GCE presents as directories of indices even when empty.
const DIR_ARRAYS: &[&str] = &[
    "forwardedIps",
    "forwardedIpv6s",
    "ipAliases",
    "targetInstanceIps",
];

/// Whether the node with document key `key` is a directory. Other scalar arrays (scopes,
/// aliases, tags) read as a leaf with one element per line, as on GCE.
pub fn is_dir(key: &str, v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(items) => {
            DIR_ARRAYS.contains(&key) || items.iter().any(|i| i.is_object() || i.is_array())
        }
        _ => false,
    }
}

/// Text of a leaf as the metadata server prints it: numbers exact, strings raw.
pub fn leaf_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(|i| leaf_text(i) + "\n").collect(),
        Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

/// Non-recursive listing: one child per line, sub-directories with a trailing slash.
pub fn listing(v: &Value, key: &str, extra: &[&str]) -> String {
    let mut out = String::new();
    let mut push = |name: String, ckey: &str, child: &Value| {
        out.push_str(&name);
        if is_dir(ckey, child) {
            out.push('/');
        }
        out.push('\n');
    };
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                push(url_segment(key, k), k, child);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                push(i.to_string(), "", child);
            }
        }
        _ => {}
    }
    for e in extra {
        out.push_str(e);
        out.push('\n');
    }
    out
}

/// `alt=text` on a recursive directory: `path value` per leaf, paths relative to the directory.
pub fn recursive_text(v: &Value, key: &str) -> String {
    fn walk(v: &Value, key: &str, prefix: &str, out: &mut String) {
        let mut child = |name: String, c: &Value, ckey: &str| {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            match c {
                Value::Object(_) | Value::Array(_) => walk(c, ckey, &path, out),
                leaf => {
                    out.push_str(&path);
                    out.push(' ');
                    out.push_str(&leaf_text(leaf));
                    out.push('\n');
                }
            }
        };
        match v {
            Value::Object(map) => {
                for (k, c) in map {
                    child(url_segment(key, k), c, k);
                }
            }
            Value::Array(items) => {
                for (i, c) in items.iter().enumerate() {
                    child(i.to_string(), c, "");
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    walk(v, key, "", &mut out);
    out
}

/// Split a JSON pointer (`/instance/attributes/ssh-keys`) into unescaped tokens.
pub fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(usize::from(pointer.starts_with('/')))
        .filter(|t| !t.is_empty())
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Set the value at `pointer`, creating objects on the way (replacing non-containers).
pub fn pointer_set(root: &mut Value, pointer: &str, value: Value) {
    let tokens = pointer_tokens(pointer);
    let Some((last, path)) = tokens.split_last() else {
        *root = value;
        return;
    };
    let mut node = root;
    for t in path {
        node = child_mut(node, t);
    }
    match node {
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => items[i] = value,
            Ok(i) if i == items.len() => items.push(value),
            _ => {
                let mut map = Map::new();
                map.insert(last.clone(), value);
                *node = Value::Object(map);
            }
        },
        _ => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            if let Value::Object(map) = node {
                map.insert(last.clone(), value);
            }
        }
    }
}

fn child_mut<'a>(node: &'a mut Value, token: &str) -> &'a mut Value {
    let index = match node {
        Value::Array(items) => token.parse::<usize>().ok().filter(|i| *i < items.len()),
        _ => None,
    };
    if let Some(i) = index {
        return match node {
            Value::Array(items) => &mut items[i],
            _ => unreachable!("index is only set for arrays"),
        };
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => map
            .entry(token.to_string())
            .or_insert_with(|| Value::Object(Map::new())),
        _ => unreachable!("made an object above"),
    }
}

/// Remove the value at `pointer`; returns whether something was removed.
pub fn pointer_remove(root: &mut Value, pointer: &str) -> bool {
    let tokens = pointer_tokens(pointer);
    let Some((last, path)) = tokens.split_last() else {
        return false;
    };
    let mut node = root;
    for t in path {
        node = match node {
            Value::Object(map) => match map.get_mut(t.as_str()) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(items) => match t.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Object(map) => map.remove(last.as_str()).is_some(),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Standard base64 with padding (RFC 4648 §4), for control-plane fingerprints.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_mapping_round_trips() {
        for (kebab, camel) in [
            ("network-interfaces", "networkInterfaces"),
            ("forwarded-ipv6s", "forwardedIpv6s"),
            ("numeric-project-id", "numericProjectId"),
            ("drift-token", "driftToken"),
            ("id", "id"),
        ] {
            assert_eq!(kebab_to_camel(kebab), camel);
            assert_eq!(camel_to_kebab(camel), kebab);
        }
    }

    #[test]
    fn pointer_set_creates_objects() {
        let mut v = json!({});
        pointer_set(&mut v, "/instance/virtualClock/driftToken", json!("7"));
        assert_eq!(v, json!({"instance":{"virtualClock":{"driftToken":"7"}}}));
        pointer_set(&mut v, "/instance/attributes/a~1b", json!("x"));
        assert_eq!(v["instance"]["attributes"]["a/b"], "x");
        assert!(pointer_remove(&mut v, "/instance/virtualClock"));
        assert!(!pointer_remove(&mut v, "/instance/virtualClock"));
    }

    #[test]
    fn resolve_maps_kebab_paths_and_keeps_attribute_keys() {
        let mut doc = default_doc();
        doc["instance"]["attributes"]["ssh-keys"] = json!("k");
        let view = guest_view(&doc);
        let node = |p: &str| match resolve(&view, &p.split('/').collect::<Vec<_>>()) {
            Some(Target::Node { value, .. }) => Some(value.clone()),
            _ => None,
        };
        assert_eq!(node("instance/network-interfaces/0/mtu"), Some(json!(1460)));
        assert_eq!(node("instance/virtual-clock/drift-token"), Some(json!("0")));
        assert_eq!(node("instance/attributes/ssh-keys"), Some(json!("k")));
        assert_eq!(node("instance/networkInterfaces"), None);
        assert!(matches!(
            resolve(&view, &["instance", "service-accounts", "default", "token"]),
            Some(Target::Token { .. })
        ));
    }
}
