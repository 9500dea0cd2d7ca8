//! The agent's Events about its pods (Pulling, Created, Started, Killing, BackOff, Unhealthy,
//! ...), written as the kubelet writes them: core/v1 Events from component `kubelet` naming
//! the container by field path, correlated as the kubelet's recorder does
//! ([`skiff_api::events`]: repeats counted, similar ones combined, a budget per pod).

use std::sync::Mutex;
use std::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_api::events::{Correlator, Decision, Occurrence};

use crate::status::stamp;

pub struct Recorder {
    client: kube::Client,
    node: String,
    correlator: Mutex<Correlator>,
}

/// The field path the kubelet gives a container of a pod (`spec.containers{web}`).
fn field_path(pod: &Pod, container: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == container));
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{container}}}")
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_string(),
            correlator: Mutex::default(),
        }
    }

    pub fn normal(&self, pod: &Pod, container: Option<&str>, reason: &str, message: String) {
        self.record(pod, container, false, reason, message)
    }

    pub fn warning(&self, pod: &Pod, container: Option<&str>, reason: &str, message: String) {
        self.record(pod, container, true, reason, message)
    }

    /// Writes the event in the background: recording never holds up the pod, and a failure to
    /// record is only logged.
    fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = stamp(Timestamp::now());
        let occurrence = Occurrence {
            object: &uid,
            warning,
            reason,
            message: &message,
        };
        let new_name = || {
            let suffix = Timestamp::now().as_nanosecond();
            format!("{pod_name}.{suffix:x}")
        };
        let decision = self.correlator.lock().expect("events lock").correlate(
            occurrence,
            Instant::now(),
            new_name,
        );
        let (name, message, count) = match decision {
            Decision::Skip => return,
            Decision::Create { name, message } => (name, message, 1),
            Decision::Update {
                name,
                count,
                message,
            } => (name, message, count),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod_name,
                "namespace": namespace,
                "uid": uid,
                "fieldPath": container.map(|c| field_path(pod, c)),
            },
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
            "type": if warning { "Warning" } else { "Normal" },
        });
        tokio::spawn(async move {
            if count > 1 {
                let patch =
                    json!({"count": count, "message": event["message"], "lastTimestamp": now});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return,
                    // Gone (expired, or never written for being over budget): written anew.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::debug!(event = %name, error = %e, "recording an event");
                        return;
                    }
                }
            }
            let event = match serde_json::from_value::<Event>(event) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "an event the agent made does not parse");
                    return;
                }
            };
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(event = %name, error = %e, "recording an event");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_named_by_their_list() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "web"}]}
        }))
        .unwrap();
        assert_eq!(field_path(&pod, "web"), "spec.containers{web}");
        assert_eq!(field_path(&pod, "setup"), "spec.initContainers{setup}");
    }
}
