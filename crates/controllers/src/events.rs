//! Events the controllers record, correlated as Kubernetes' recorders do
//! ([`skiff_api::events`]: repeats counted, similar ones combined, a budget per object), and
//! their expiry after a time to live.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use skiff_api::events::{Correlator, Decision, Occurrence};
use skiff_api::object::Filter;

use crate::cluster::{Cluster, ClusterError};
use crate::runtime::kind;
use crate::runtime::text;

fn now() -> String {
    skiff_api::object::timestamp(jiff::Timestamp::now())
}

/// How many times a repeat's update is tried against others' writes of the event.
const UPDATE_ATTEMPTS: usize = 4;

/// What an event says.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Records events for one component, remembering the ones it wrote to correlate repeats.
pub struct Recorder {
    component: &'static str,
    correlator: Mutex<Correlator>,
    /// Events being updated, by name, with the newest repeat that came meanwhile.
    updating: Mutex<HashMap<String, Option<Repeat>>>,
}

/// What a repeat of an event writes over it.
struct Repeat {
    count: i64,
    message: String,
    stamp: String,
}

/// Writes `repeat` over the event `name`; false when the event is gone.
async fn update(
    cluster: &dyn Cluster,
    namespace: &str,
    name: &str,
    repeat: &Repeat,
) -> Result<bool, ClusterError> {
    let events = kind("", "events");
    for _ in 0..UPDATE_ATTEMPTS {
        let Some(mut event) = cluster.get(events, namespace, name).await? else {
            return Ok(false);
        };
        event["count"] = json!(repeat.count);
        event["message"] = json!(repeat.message);
        event["lastTimestamp"] = json!(repeat.stamp);
        match cluster.update(events, event).await {
            Err(ClusterError::Conflict(_)) => continue,
            Err(ClusterError::NotFound(_)) => return Ok(false),
            other => return other.map(|_| true),
        }
    }
    Err(ClusterError::Conflict(format!(
        "event {name} changed {UPDATE_ATTEMPTS} times while being updated"
    )))
}

impl Recorder {
    pub fn new(component: &'static str) -> Recorder {
        Recorder {
            component,
            correlator: Mutex::default(),
            updating: Mutex::default(),
        }
    }

    /// Records `note` about `involved`. Failing to record is logged, never an error of the
    /// caller's work.
    pub async fn record(&self, cluster: &dyn Cluster, involved: &Value, note: Note<'_>) {
        if let Err(e) = self.write(cluster, involved, &note).await {
            tracing::debug!(reason = note.reason, error = %e, "recording an event");
        }
    }

    async fn write(
        &self,
        cluster: &dyn Cluster,
        involved: &Value,
        note: &Note<'_>,
    ) -> Result<(), ClusterError> {
        let events = kind("", "events");
        // Events about cluster-scoped objects (nodes) live in `default`, as Kubernetes keeps them.
        let namespace = match text(involved, "/metadata/namespace") {
            "" => "default",
            ns => ns,
        };
        let occurrence = Occurrence {
            object: text(involved, "/metadata/uid"),
            warning: note.warning,
            reason: note.reason,
            message: &note.message,
        };
        let new_name = || {
            let suffix = jiff::Timestamp::now().as_nanosecond();
            format!("{}.{suffix:x}", text(involved, "/metadata/name"))
        };
        let decision = self.correlator.lock().expect("recorder lock").correlate(
            occurrence,
            Instant::now(),
            new_name,
        );
        let stamp = now();
        let (name, message, count, stamp) = match decision {
            Decision::Skip => return Ok(()),
            Decision::Create { name, message } => (name, message, 1, stamp),
            Decision::Update {
                name,
                count,
                message,
            } => {
                // Repeats recorded at once (a ReplicaSet makes its pods in concurrent
                // batches) would race to update one event, and all but one fail: the first
                // writes, and the newest of those that came meanwhile is written after it.
                let mut repeat = Repeat {
                    count,
                    message,
                    stamp,
                };
                {
                    let mut updating = self.updating.lock().expect("recorder lock");
                    if let Some(waiting) = updating.get_mut(&name) {
                        if waiting.as_ref().is_none_or(|w| w.count < repeat.count) {
                            *waiting = Some(repeat);
                        }
                        return Ok(());
                    }
                    updating.insert(name.clone(), None);
                }
                loop {
                    let written = update(cluster, namespace, &name, &repeat).await;
                    let newer = {
                        let mut updating = self.updating.lock().expect("recorder lock");
                        let newer = updating
                            .get_mut(&name)
                            .and_then(Option::take)
                            .filter(|n| n.count > repeat.count);
                        if newer.is_none() || !matches!(written, Ok(true)) {
                            updating.remove(&name);
                        }
                        newer
                    };
                    match (written?, newer) {
                        (true, Some(newer)) => repeat = newer,
                        (true, None) => return Ok(()),
                        (false, newer) => {
                            repeat = newer.unwrap_or(repeat);
                            break;
                        }
                    }
                }
                // Gone (expired, or never written for being over budget): written anew.
                (name, repeat.message, repeat.count, repeat.stamp)
            }
        };
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name},
            "involvedObject": {
                "apiVersion": text(involved, "/apiVersion"),
                "kind": text(involved, "/kind"),
                "name": text(involved, "/metadata/name"),
                "namespace": text(involved, "/metadata/namespace"),
                "uid": text(involved, "/metadata/uid"),
                "resourceVersion": text(involved, "/metadata/resourceVersion"),
            },
            "reason": note.reason,
            "message": message,
            "source": {"component": self.component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": count,
            "type": if note.warning { "Warning" } else { "Normal" },
            "reportingComponent": self.component,
            "reportingInstance": "",
        });
        cluster.create(events, namespace, event).await?;
        Ok(())
    }
}

/// What the expiry reads of an event: who it is and when it was last seen (the rest of its
/// JSON is skipped, not built: every event is read each minute).
#[derive(serde::Deserialize)]
struct Seen {
    metadata: SeenMeta,
    #[serde(rename = "lastTimestamp")]
    last_timestamp: Option<String>,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
}

#[derive(serde::Deserialize)]
struct SeenMeta {
    #[serde(default)]
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
}

impl Seen {
    /// When the event was last seen, in seconds: its lastTimestamp, eventTime or creation.
    fn last(&self) -> Option<i64> {
        [
            &self.last_timestamp,
            &self.event_time,
            &self.metadata.creation_timestamp,
        ]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
    }
}

/// Deletes events last seen longer than `ttl` ago, every minute (or half the time to live, if
/// shorter), for the life of the server.
pub async fn expire(cluster: std::sync::Arc<dyn Cluster>, ttl: Duration) {
    let events = kind("", "events");
    loop {
        let cutoff = jiff::Timestamp::now().as_second() - ttl.as_secs() as i64;
        match cluster.list_json(events, "", &Filter::default()).await {
            Ok(all) => {
                for json in all {
                    let seen: Seen = match serde_json::from_slice(&json) {
                        Ok(seen) => seen,
                        Err(e) => {
                            tracing::debug!(error = %e, "an event without a name");
                            continue;
                        }
                    };
                    if seen.last().is_some_and(|t| t < cutoff) {
                        let SeenMeta {
                            namespace,
                            name,
                            uid,
                            ..
                        } = &seen.metadata;
                        let _ = cluster.delete(events, namespace, name, uid, false).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing events to expire"),
        }
        tokio::time::sleep(
            Duration::from_secs(60)
                .min(ttl / 2)
                .max(Duration::from_secs(1)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_was_last_seen_at_its_last_timestamp_event_time_or_creation() {
        let cases = [
            (
                r#"{"metadata":{"name":"a","creationTimestamp":"2026-12-01T00:00:00Z"},"lastTimestamp":"2026-12-01T00:00:09Z","eventTime":null}"#,
                Some(9),
            ),
            (
                r#"{"metadata":{"name":"a","creationTimestamp":"2026-12-01T00:00:00Z"},"lastTimestamp":null,"eventTime":"2026-12-01T00:00:05.123456Z"}"#,
                Some(5),
            ),
            (
                r#"{"metadata":{"name":"a","creationTimestamp":"2026-12-01T00:00:02Z"},"lastTimestamp":""}"#,
                Some(2),
            ),
            (r#"{"metadata":{"name":"a"},"count":3}"#, None),
        ];
        let base = "2026-12-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        for (json, want) in cases {
            let seen: Seen = serde_json::from_str(json).unwrap();
            assert_eq!(seen.last().map(|t| t - base), want, "{json}");
        }
        let named: Seen = serde_json::from_str(
            r#"{"metadata":{"name":"web.1","namespace":"a","uid":"u","managedFields":[{"manager":"x"}]},"involvedObject":{"kind":"Pod"}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                named.metadata.namespace.as_str(),
                named.metadata.name.as_str(),
                named.metadata.uid.as_str()
            ),
            ("a", "web.1", "u")
        );
    }
}
