//! The agent's Events about its pods (Pulling, Created, Started, Killing, BackOff, Unhealthy,
//! ...), written as the kubelet writes them: core/v1 Events from component `kubelet` naming
//! the container by field path, the same event again raising the count of the one written.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::status::stamp;

/// What makes two events the same: pod uid, reason, message.
type Sameness = (String, String, String);

pub struct Recorder {
    client: kube::Client,
    node: String,
    written: Mutex<HashMap<Sameness, (String, i32)>>,
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
            written: Mutex::new(HashMap::new()),
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
        let key = (uid.clone(), reason.to_string(), message.clone());
        let (name, count) = {
            let mut written = self.written.lock().expect("events lock");
            // Bounded memory: forgetting only costs a new event instead of a higher count.
            if written.len() > 10_000 {
                written.clear();
            }
            let entry = written.entry(key).or_insert_with(|| {
                let suffix = Timestamp::now().as_nanosecond();
                (format!("{pod_name}.{suffix:x}"), 0)
            });
            entry.1 += 1;
            entry.clone()
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
            let written = if count == 1 {
                match serde_json::from_value::<Event>(event) {
                    Ok(event) => api.create(&PostParams::default(), &event).await.map(drop),
                    Err(e) => {
                        tracing::warn!(error = %e, "an event the agent made does not parse");
                        return;
                    }
                }
            } else {
                let patch = json!({"count": count, "lastTimestamp": now});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(drop)
            };
            if let Err(e) = written {
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
