//! What instance setup needs to know from the metadata server, read once per boot within a
//! deadline: the instance id, the hostname, the primary IPv4 and IPv6 addresses and whether guest
//! attributes are on.
//!
//! No answer is a decision to do nothing: Google's Go agent, started while the server answered
//! 503, took the empty id for a new instance and rotated every host key (SPEC §9). Here a 503, a
//! refused connection, a body that does not decode or an id of 0 (no GCE instance has it) are
//! all retried until the deadline, then reported as "no facts".

use std::time::{Duration, Instant};

use gce_metadata::model::attribute_is_true;
use gce_metadata::{Client, Error, Instance};

/// The instance document, with everything instance setup reads in one request.
pub const INSTANCE_PATH: &str = "instance/?recursive=true&alt=json";
/// Asked only when the instance does not set `enable-guest-attributes` itself.
pub const PROJECT_GUEST_ATTRIBUTES_PATH: &str = "project/attributes/enable-guest-attributes";
const GUEST_ATTRIBUTES_KEY: &str = "enable-guest-attributes";

/// The metadata facts of this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `instance/id`, never 0.
    pub id: u64,
    /// `instance/hostname` as served (validated later).
    pub hostname: String,
    /// `networkInterfaces[0].ip` as served; empty when the instance has none (IPv6-only).
    pub primary_ip: String,
    /// `networkInterfaces[0].ipv6s[0]` as served; empty when the interface has no IPv6 address.
    pub primary_ipv6: String,
    /// `enable-guest-attributes`, the instance's value overriding the project's.
    pub guest_attributes: bool,
}

/// Why there are no facts this boot.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(
        "no usable answer from the metadata server within {after:?} ({attempts} attempts); last error: {last}"
    )]
    GaveUp {
        after: Duration,
        attempts: u32,
        last: String,
    },
}

/// Whether guest attributes are on: the instance's attribute if it has one, else the project's
/// (`project`: the project's value, `None` when it has none).
pub fn guest_attributes_enabled(instance: &Instance, project: Option<&str>) -> bool {
    match instance.attributes.get(GUEST_ATTRIBUTES_KEY) {
        Some(v) => attribute_is_true(Some(v)),
        None => attribute_is_true(project.map(str::to_string).as_ref()),
    }
}

/// Pure: the facts in an instance document, or why it is not usable (an id of 0 means the
/// field was missing or empty).
pub fn facts_from(instance: &Instance, project_flag: Option<&str>) -> Result<Facts, String> {
    if instance.id == 0 {
        return Err("instance/id is missing or 0".to_string());
    }
    Ok(Facts {
        id: instance.id,
        hostname: instance.hostname.trim().to_string(),
        primary_ip: instance
            .network_interfaces
            .first()
            .map(|n| n.ip.trim().to_string())
            .unwrap_or_default(),
        primary_ipv6: instance
            .network_interfaces
            .first()
            .and_then(|n| n.ipv6s.first())
            .map(|ip| ip.trim().to_string())
            .unwrap_or_default(),
        guest_attributes: guest_attributes_enabled(instance, project_flag),
    })
}

/// Delay before retry `attempt` (1-based): fast first (live-migration 503s last about a second),
/// doubling, capped at 2 s so the deadline is used well.
pub fn retry_delay(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(10);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(2))
}

/// Read the facts, retrying anything that is not a usable answer until `timeout` has passed.
pub async fn fetch(client: &Client, timeout: Duration) -> Result<Facts, FactsError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempts = 0u32;
    let mut logged: Option<&'static str> = None;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let bound = left
            .min(Duration::from_secs(10))
            .max(Duration::from_millis(50));
        let result = match client.get_with_timeout(INSTANCE_PATH, bound).await {
            Ok(resp) => match serde_json::from_slice::<Instance>(&resp.body) {
                Ok(instance) => {
                    let project = if instance.attributes.contains_key(GUEST_ATTRIBUTES_KEY) {
                        None
                    } else {
                        project_flag(client, deadline).await
                    };
                    facts_from(&instance, project.as_deref()).map_err(|e| ("invalid", e))
                }
                Err(e) => Err(("decode", format!("{}: {e}", client.url(INSTANCE_PATH)))),
            },
            Err(e) => Err((e.kind(), e.to_string())),
        };
        let (kind, last) = match result {
            Ok(facts) => {
                if logged.is_some() {
                    tracing::info!(
                        "metadata server answered after {attempts} attempts ({:?})",
                        started.elapsed()
                    );
                }
                return Ok(facts);
            }
            Err(e) => e,
        };
        // One line when a kind of failure starts, not one per retry.
        if logged != Some(kind) {
            tracing::warn!("metadata server not usable yet, retrying: {last}");
            logged = Some(kind);
        }
        let delay = retry_delay(attempts);
        if Instant::now() + delay >= deadline {
            return Err(FactsError::GaveUp {
                after: started.elapsed(),
                attempts,
                last,
            });
        }
        tokio::time::sleep(delay).await;
    }
}

/// The project's `enable-guest-attributes`, asked once; `None` when it has none or the answer is
/// unusable (logged: publishing is then skipped, nothing else depends on it).
async fn project_flag(client: &Client, deadline: Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let bound = left
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(50));
    match client
        .get_with_timeout(PROJECT_GUEST_ATTRIBUTES_PATH, bound)
        .await
    {
        Ok(resp) => Some(String::from_utf8_lossy(&resp.body).into_owned()),
        Err(Error::Status { status: 404, .. }) => None,
        Err(e) => {
            tracing::warn!("cannot tell whether the project enables guest attributes: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(json: &str) -> Instance {
        serde_json::from_str(json).expect("instance json")
    }

    /// The instance's `enable-guest-attributes` overrides the project's, whatever its value.
    #[test]
    fn guest_attributes_instance_overrides_project() {
        let rows = [
            (r#"{}"#, None, false),
            (r#"{}"#, Some("TRUE"), true),
            (r#"{}"#, Some("false"), false),
            (
                r#"{"attributes":{"enable-guest-attributes":"TRUE"}}"#,
                None,
                true,
            ),
            (
                r#"{"attributes":{"enable-guest-attributes":"true"}}"#,
                Some("FALSE"),
                true,
            ),
            (
                r#"{"attributes":{"enable-guest-attributes":"FALSE"}}"#,
                Some("TRUE"),
                false,
            ),
            (
                r#"{"attributes":{"enable-guest-attributes":""}}"#,
                Some("TRUE"),
                false,
            ),
        ];
        for (doc, project, want) in rows {
            assert_eq!(
                guest_attributes_enabled(&instance(doc), project),
                want,
                "{doc} project={project:?}"
            );
        }
    }

    /// An id of 0 (missing, or the empty id of a server in trouble) is never a new instance.
    #[test]
    fn facts_need_a_real_id() {
        assert!(facts_from(&instance(r#"{"hostname":"a"}"#), None).is_err());
        assert!(facts_from(&instance(r#"{"id":0}"#), None).is_err());
        let f = facts_from(
            &instance(
                r#"{"id":5737554347302044216,"hostname":" vm0.c.p.internal\n",
                   "networkInterfaces":[{"ip":"10.0.0.2"},{"ip":"10.1.0.2"}]}"#,
            ),
            None,
        )
        .expect("facts");
        assert_eq!(
            f,
            Facts {
                id: 5737554347302044216,
                hostname: "vm0.c.p.internal".into(),
                primary_ip: "10.0.0.2".into(),
                primary_ipv6: String::new(),
                guest_attributes: false,
            }
        );
        let f = facts_from(&instance(r#"{"id":7}"#), None).expect("facts");
        assert_eq!(f.primary_ip, "");
        let v6 = facts_from(
            &instance(r#"{"id":7,"networkInterfaces":[{"ipv6s":[" fd20:1::5 ","fd20:1::6"]}]}"#),
            None,
        )
        .expect("facts");
        assert_eq!(
            (v6.primary_ip.as_str(), v6.primary_ipv6.as_str()),
            ("", "fd20:1::5")
        );
    }

    #[test]
    fn retries_start_fast_and_are_capped() {
        let ms: Vec<u128> = (1..=7).map(|a| retry_delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(retry_delay(100), Duration::from_secs(2));
    }
}
