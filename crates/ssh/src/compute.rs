//! A small client for the Compute API paths `gce-ssh` needs: `instances.get` (id, addresses,
//! metadata), `projects.get` (common instance metadata), `instances.setMetadata` guarded by the fingerprint (retrying on 412
//! conditionNotMet), and `instances.getGuestAttributes`. The same paths serve the emulator
//! (`http://…`, no token needed) and the real API (`https://compute.googleapis.com`, bearer
//! token).

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::http::{Api, Http, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(transparent)]
    Transport(#[from] HttpError),
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error(
        "setMetadata kept failing with 412 conditionNotMet after {0} attempts (someone else is editing metadata)"
    )]
    Contended(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Metadata {
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub items: Vec<Item>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|i| i.key == key)
            .map(|i| i.value.as_str())
    }

    pub fn set(&mut self, key: &str, value: String) {
        match self.items.iter_mut().find(|i| i.key == key) {
            Some(i) => i.value = value,
            None => self.items.push(Item {
                key: key.to_string(),
                value,
            }),
        }
    }
}

/// Which instance: project, zone and name (or numeric id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub project: String,
    pub zone: String,
    pub name: String,
}

/// What `instances.get` tells about an instance.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    pub status: String,
    pub metadata: Metadata,
    /// `networkInterfaces[].accessConfigs[].natIP`, in order.
    pub external_ips: Vec<String>,
    /// `networkInterfaces[].networkIP`, in order.
    pub internal_ips: Vec<String>,
}

impl InstanceInfo {
    pub fn from_json(v: &serde_json::Value) -> Result<InstanceInfo, String> {
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err("the instance has no id".into()),
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let metadata = match v.get("metadata") {
            Some(md) => serde_json::from_value(md.clone()).map_err(|e| e.to_string())?,
            None => Metadata::default(),
        };
        let nics = v
            .get("networkInterfaces")
            .and_then(|n| n.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let external_ips = nics
            .iter()
            .flat_map(|nic| {
                nic.get("accessConfigs")
                    .and_then(|a| a.as_array())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
            })
            .filter_map(|ac| ac.get("natIP").and_then(|x| x.as_str()))
            .filter(|ip| !ip.is_empty())
            .map(str::to_string)
            .collect();
        let internal_ips = nics
            .iter()
            .filter_map(|nic| nic.get("networkIP").and_then(|x| x.as_str()))
            .filter(|ip| !ip.is_empty())
            .map(str::to_string)
            .collect();
        Ok(InstanceInfo {
            id,
            name: s("name"),
            status: s("status"),
            metadata,
            external_ips,
            internal_ips,
        })
    }
}

pub struct Compute<'h> {
    api: Api<'h>,
}

impl<'h> Compute<'h> {
    /// `endpoint` is the API root (`http://127.0.0.1:8080` for the emulator,
    /// `https://compute.googleapis.com` for GCE); `token`, when given, is sent as a bearer token.
    pub fn new(http: &'h Http, endpoint: &str, token: Option<String>) -> Compute<'h> {
        Compute {
            api: Api::new(http, endpoint, token),
        }
    }

    fn instance_url(&self, i: &Instance) -> String {
        format!(
            "{}/compute/v1/projects/{}/zones/{}/instances/{}",
            self.api.endpoint(),
            i.project,
            i.zone,
            i.name
        )
    }

    fn get_json(&self, url: &str) -> Result<Option<serde_json::Value>, ComputeError> {
        let resp = self.api.get(url)?;
        match resp.status {
            200 => serde_json::from_str(&resp.body)
                .map(Some)
                .map_err(|e| ComputeError::Decode {
                    url: url.to_string(),
                    reason: e.to_string(),
                }),
            404 => Ok(None),
            status => Err(status_error(url, status, &resp.body)),
        }
    }

    pub fn get_instance(&self, i: &Instance) -> Result<InstanceInfo, ComputeError> {
        let url = self.instance_url(i);
        let v = self.get_json(&url)?.ok_or_else(|| ComputeError::Status {
            url: url.clone(),
            status: 404,
            message: format!(
                "instance {} not found in project {} zone {}",
                i.name, i.project, i.zone
            ),
        })?;
        InstanceInfo::from_json(&v).map_err(|reason| ComputeError::Decode { url, reason })
    }

    /// `projects.get`: the project's common instance metadata.
    pub fn get_project_metadata(&self, project: &str) -> Result<Metadata, ComputeError> {
        let url = format!("{}/compute/v1/projects/{project}", self.api.endpoint());
        let v = self.get_json(&url)?.ok_or_else(|| ComputeError::Status {
            url: url.clone(),
            status: 404,
            message: format!("project {project} not found"),
        })?;
        match v.get("commonInstanceMetadata") {
            Some(md) => serde_json::from_value(md.clone()).map_err(|e| ComputeError::Decode {
                url,
                reason: e.to_string(),
            }),
            None => Ok(Metadata::default()),
        }
    }

    /// Read-modify-write of the instance metadata: `edit` is applied to `current` first, then
    /// to a fresh copy after each 412, and every write carries the fingerprint it was based on.
    pub fn update_metadata(
        &self,
        i: &Instance,
        current: Metadata,
        edit: impl Fn(&mut Metadata),
    ) -> Result<u32, ComputeError> {
        const ATTEMPTS: u32 = 8;
        let url = format!("{}/setMetadata", self.instance_url(i));
        let mut md = current;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                md = self.get_instance(i)?.metadata;
            }
            edit(&mut md);
            let body = serde_json::json!({"fingerprint": md.fingerprint, "items": md.items});
            let resp = self.api.post_json(&url, &body)?;
            match resp.status {
                200 => return Ok(attempt),
                412 => std::thread::sleep(Duration::from_millis(10 * attempt as u64)),
                status => return Err(status_error(&url, status, &resp.body)),
            }
        }
        Err(ComputeError::Contended(ATTEMPTS))
    }

    /// `getGuestAttributes?queryPath=PATH`: `None` when nothing is published there (404).
    pub fn guest_attributes(
        &self,
        i: &Instance,
        query_path: &str,
    ) -> Result<Option<serde_json::Value>, ComputeError> {
        let url = format!(
            "{}/getGuestAttributes?queryPath={}",
            self.instance_url(i),
            query_path
        );
        self.get_json(&url)
    }
}

/// A Google API error body's message (`{"error":{"message":…}}`), else the body's first line.
fn status_error(url: &str, status: u16, body: &str) -> ComputeError {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let message = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().lines().next().unwrap_or("").to_string());
    ComputeError::Status {
        url: url.to_string(),
        status,
        message,
    }
}

/// The values of a `getGuestAttributes` listing: `(key, value)` of `namespace`'s items.
pub fn items_of<'a>(
    answer: &'a serde_json::Value,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    answer
        .pointer("/queryValue/items")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(move |it| it.get("namespace").and_then(|n| n.as_str()) == Some(namespace))
        .map(|it| {
            let s = |k: &str| it.get(k).and_then(|x| x.as_str()).unwrap_or("");
            (s("key"), s("value"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_and_id_come_from_the_real_api_shape() {
        // Trimmed from a real instances.get answer.
        let v = serde_json::json!({
            "kind": "compute#instance",
            "id": "4520031799277581759",
            "name": "vm0",
            "status": "RUNNING",
            "networkInterfaces": [
                {"networkIP": "10.128.0.2", "accessConfigs": [
                    {"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT",
                     "name": "External NAT", "natIP": "34.66.1.2", "networkTier": "PREMIUM"}]},
                {"networkIP": "10.1.0.5"}
            ],
            "metadata": {"kind": "compute#metadata", "fingerprint": "abc=",
                         "items": [{"key": "ssh-keys", "value": "a:b"}]}
        });
        let i = InstanceInfo::from_json(&v).unwrap();
        assert_eq!(i.id, "4520031799277581759");
        assert_eq!(i.external_ips, ["34.66.1.2"]);
        assert_eq!(i.internal_ips, ["10.128.0.2", "10.1.0.5"]);
        assert_eq!(i.metadata.get("ssh-keys"), Some("a:b"));
        assert_eq!(i.metadata.fingerprint, "abc=");
        let numeric = InstanceInfo::from_json(&serde_json::json!({"id": 17})).unwrap();
        assert_eq!(numeric.id, "17");
        assert!(numeric.external_ips.is_empty());
        assert!(InstanceInfo::from_json(&serde_json::json!({"name": "x"})).is_err());
    }

    #[test]
    fn api_errors_show_googles_message() {
        let e = status_error(
            "u",
            403,
            r#"{"error":{"code":403,"message":"Required 'compute.instances.setMetadata' permission"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "u answered 403: Required 'compute.instances.setMetadata' permission"
        );
        assert_eq!(
            status_error("u", 502, "bad gateway\nx").to_string(),
            "u answered 502: bad gateway"
        );
    }
}
