//! Events the controllers record, aggregated as Kubernetes' recorder does (the same event again
//! raises the count of the one already written), and their expiry after a time to live.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use skiff_api::object::Filter;

use crate::cluster::{Cluster, ClusterError};
use crate::runtime::kind;
use crate::runtime::text;

fn now() -> String {
    skiff_api::object::timestamp(jiff::Timestamp::now())
}

/// What an event says.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub message: String,
}

/// What makes two events the same: namespace, involved object's uid, reason, message.
type Sameness = (String, String, String, String);

/// Records events for one component, remembering the ones it wrote to aggregate repeats.
pub struct Recorder {
    component: &'static str,
    /// The event written for each kind of event, and its count.
    written: Mutex<HashMap<Sameness, (String, i64)>>,
}

impl Recorder {
    pub fn new(component: &'static str) -> Recorder {
        Recorder {
            component,
            written: Mutex::new(HashMap::new()),
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
            "" => "default".to_string(),
            ns => ns.to_string(),
        };
        let key = (
            namespace.clone(),
            text(involved, "/metadata/uid").to_string(),
            note.reason.to_string(),
            note.message.clone(),
        );
        let known = self
            .written
            .lock()
            .expect("recorder lock")
            .get(&key)
            .cloned();
        let stamp = now();
        if let Some((name, count)) = known {
            let existing = cluster.get(events, &namespace, &name).await?;
            if let Some(mut event) = existing {
                event["count"] = json!(count + 1);
                event["lastTimestamp"] = json!(stamp);
                cluster.update(events, event).await?;
                self.written
                    .lock()
                    .expect("recorder lock")
                    .insert(key, (name, count + 1));
                return Ok(());
            }
        }
        let suffix = jiff::Timestamp::now().as_nanosecond();
        let name = format!("{}.{:x}", text(involved, "/metadata/name"), suffix);
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
            "message": note.message,
            "source": {"component": self.component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": if note.warning { "Warning" } else { "Normal" },
            "reportingComponent": self.component,
            "reportingInstance": "",
        });
        cluster.create(events, &namespace, event).await?;
        let mut written = self.written.lock().expect("recorder lock");
        // Bounded memory: forgetting only costs a new event instead of a higher count.
        if written.len() > 10_000 {
            written.clear();
        }
        written.insert(key, (name, 1));
        Ok(())
    }
}

/// Deletes events last seen longer than `ttl` ago, every minute (or half the time to live, if
/// shorter), for the life of the server.
pub async fn expire(cluster: std::sync::Arc<dyn Cluster>, ttl: Duration) {
    let events = kind("", "events");
    loop {
        let cutoff = jiff::Timestamp::now().as_second() - ttl.as_secs() as i64;
        match cluster.list(events, "", &Filter::default()).await {
            Ok(all) => {
                for e in all {
                    let last = [
                        "/lastTimestamp",
                        "/eventTime",
                        "/metadata/creationTimestamp",
                    ]
                    .iter()
                    .map(|p| text(&e, p))
                    .find(|t| !t.is_empty())
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_second());
                    if last.is_some_and(|t| t < cutoff) {
                        let (ns, name, uid) = (
                            text(&e, "/metadata/namespace"),
                            text(&e, "/metadata/name"),
                            text(&e, "/metadata/uid"),
                        );
                        let _ = cluster.delete(events, ns, name, uid, false).await;
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
