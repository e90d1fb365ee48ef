//! A small client for the Compute API paths `gce-ssh` needs: read an instance's metadata, replace
//! it with `setMetadata` guarded by the fingerprint (retrying on 412 conditionNotMet), and read
//! guest attributes. The same paths serve the emulator and the real API.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
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

#[derive(Debug, Clone)]
pub struct Instance {
    pub project: String,
    pub zone: String,
    pub name: String,
}

pub struct Compute {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Compute {
    /// `endpoint` is the API root (`http://127.0.0.1:8080` for the emulator); `token`, when
    /// given, is sent as a bearer token.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Compute, ComputeError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ComputeError::Transport {
                url: endpoint.to_string(),
                source,
            })?;
        Ok(Compute {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn instance_url(&self, i: &Instance) -> String {
        format!(
            "{}/compute/v1/projects/{}/zones/{}/instances/{}",
            self.endpoint, i.project, i.zone, i.name
        )
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(u16, String), ComputeError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| ComputeError::Transport {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|source| ComputeError::Transport {
                url: url.to_string(),
                source,
            })?;
        Ok((status, body))
    }

    async fn get_json(&self, url: &str) -> Result<Option<serde_json::Value>, ComputeError> {
        let (status, body) = self.call(self.http.get(url), url).await?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|source| ComputeError::Decode {
                    url: url.to_string(),
                    source,
                }),
            404 => Ok(None),
            _ => Err(ComputeError::Status {
                url: url.to_string(),
                status,
                body,
            }),
        }
    }

    pub async fn get_metadata(&self, i: &Instance) -> Result<Metadata, ComputeError> {
        let url = self.instance_url(i);
        let v = self
            .get_json(&url)
            .await?
            .ok_or_else(|| ComputeError::Status {
                url: url.clone(),
                status: 404,
                body: "instance not found".into(),
            })?;
        let md = v.get("metadata").cloned().unwrap_or_default();
        serde_json::from_value(md).map_err(|source| ComputeError::Decode { url, source })
    }

    /// Read-modify-write of the instance metadata: `edit` is applied to a fresh copy on each
    /// attempt, and the write carries the fingerprint it was based on.
    pub async fn update_metadata(
        &self,
        i: &Instance,
        edit: impl Fn(&mut Metadata),
    ) -> Result<u32, ComputeError> {
        const ATTEMPTS: u32 = 8;
        let url = format!("{}/setMetadata", self.instance_url(i));
        for attempt in 1..=ATTEMPTS {
            let mut md = self.get_metadata(i).await?;
            edit(&mut md);
            let body = serde_json::json!({"fingerprint": md.fingerprint, "items": md.items});
            let (status, text) = self
                .call(self.http.post(&url).json_body(&body), &url)
                .await?;
            match status {
                200 => return Ok(attempt),
                412 => tokio::time::sleep(Duration::from_millis(10 * attempt as u64)).await,
                _ => {
                    return Err(ComputeError::Status {
                        url,
                        status,
                        body: text,
                    });
                }
            }
        }
        Err(ComputeError::Contended(ATTEMPTS))
    }

    /// One guest attribute (`NS/KEY`), `None` when absent.
    pub async fn guest_attribute(
        &self,
        i: &Instance,
        path: &str,
    ) -> Result<Option<String>, ComputeError> {
        let url = format!(
            "{}/getGuestAttributes?queryPath={}",
            self.instance_url(i),
            path
        );
        let Some(v) = self.get_json(&url).await? else {
            return Ok(None);
        };
        if let Some(s) = v.get("variableValue").and_then(|x| x.as_str()) {
            return Ok(Some(s.to_string()));
        }
        let items = v
            .pointer("/queryValue/items")
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(items
            .first()
            .and_then(|it| it.get("value"))
            .and_then(|x| x.as_str())
            .map(str::to_string))
    }
}

/// reqwest is built without its `json` feature; this sends a JSON body by hand.
trait JsonBody {
    fn json_body(self, v: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
}
