//! Events the controllers record, correlated as Kubernetes' recorders do
//! ([`skiff_api::events`]: repeats counted, similar ones combined, a budget per object), and
//! their expiry after a time to live.

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
}

impl Recorder {
    pub fn new(component: &'static str) -> Recorder {
        Recorder {
            component,
            correlator: Mutex::default(),
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
        let (name, message, count) = match decision {
            Decision::Skip => return Ok(()),
            Decision::Create { name, message } => (name, message, 1),
            Decision::Update {
                name,
                count,
                message,
            } => {
                if let Some(mut event) = cluster.get(events, namespace, &name).await? {
                    event["count"] = json!(count);
                    event["message"] = json!(message);
                    event["lastTimestamp"] = json!(stamp);
                    cluster.update(events, event).await?;
                    return Ok(());
                }
                // Gone (expired, or never written for being over budget): written anew.
                (name, message, count)
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
