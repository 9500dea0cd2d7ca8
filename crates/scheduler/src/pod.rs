//! What the scheduler reads of a pod, taken out of its JSON once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use serde_json::Value;

use crate::resources::Resources;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub port: i32,
    /// Empty for every address.
    pub ip: String,
}

#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    /// `spec.nodeName`: where it is bound (or asks to be).
    pub node_name: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Affinity,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub spread: Vec<TopologySpreadConstraint>,
    pub priority: i32,
    /// `preemptionPolicy: Never`: waits rather than evict anyone.
    pub never_preempts: bool,
    /// The uid of its controller (ReplicaSet, StatefulSet, ...), whose pods are spread.
    pub owner: Option<String>,
    pub scheduler_name: String,
    pub terminating: bool,
}

fn typed<T: serde::de::DeserializeOwned + Default>(value: Option<&Value>) -> T {
    value
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl PodInfo {
    pub fn from_json(pod: &Value) -> PodInfo {
        let meta = &pod["metadata"];
        let spec = &pod["spec"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let host_ports = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                let port = p["hostPort"].as_i64().filter(|p| *p > 0)? as i32;
                Some(HostPort {
                    protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    port,
                    ip: p["hostIP"]
                        .as_str()
                        .filter(|ip| *ip != "0.0.0.0")
                        .unwrap_or("")
                        .to_string(),
                })
            })
            .collect();
        PodInfo {
            namespace: text(&meta["namespace"]),
            name: text(&meta["name"]),
            uid: text(&meta["uid"]),
            labels: strings(meta.get("labels")),
            requests: Resources::of_pod(spec),
            node_name: spec["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(String::from),
            node_selector: strings(spec.get("nodeSelector")),
            affinity: typed(spec.get("affinity")),
            tolerations: typed(spec.get("tolerations")),
            host_ports,
            spread: typed(spec.get("topologySpreadConstraints")),
            priority: spec["priority"].as_i64().unwrap_or(0) as i32,
            never_preempts: spec["preemptionPolicy"] == "Never",
            owner: meta["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true)
                .and_then(|r| r["uid"].as_str())
                .map(String::from),
            scheduler_name: spec["schedulerName"]
                .as_str()
                .unwrap_or("default-scheduler")
                .to_string(),
            terminating: meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
        }
    }

    /// Whether the pod has required inter-pod anti-affinity terms that other pods must respect.
    pub fn has_required_anti_affinity(&self) -> bool {
        self.affinity
            .pod_anti_affinity
            .as_ref()
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }
}
