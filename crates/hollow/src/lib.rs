//! Hollow nodes: Nodes registered through the real API, with the standard labels, capacity and a
//! Ready condition, their Leases renewed, and the pods bound to them reported Running and Ready
//! after a delay (and finished when deleted), without running anything. Like Kubernetes'
//! kubemark, they try the control plane (scheduler, controllers, API server) at scale.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("registering node {node}: {source}")]
    Register { node: String, source: kube::Error },
}

#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub count: usize,
    /// Node `i` is named `<prefix><i>`.
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// Spread the nodes over this many zones (`topology.kubernetes.io/zone=zone-<k>`); none if 0.
    pub zones: usize,
    /// Extra labels and taints of every node.
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Value>,
    /// How long a bound pod takes to become Running and Ready.
    pub ready_delay: Duration,
    pub lease_interval: Duration,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            count: 1,
            prefix: "hollow-".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            zones: 0,
            labels: Vec::new(),
            taints: Vec::new(),
            ready_delay: Duration::ZERO,
            lease_interval: Duration::from_secs(10),
        }
    }
}

impl HollowConfig {
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}{i}", self.prefix))
            .collect()
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn node_object(config: &HollowConfig, index: usize, name: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "hollow",
    });
    if config.zones > 0 {
        labels["topology.kubernetes.io/zone"] = json!(format!("zone-{}", index % config.zones));
    }
    for (k, v) in &config.labels {
        labels[k] = json!(v);
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": config.taints},
    })
}

fn node_status(config: &HollowConfig, index: usize) -> Value {
    let resources = json!({"cpu": config.cpu, "memory": config.memory, "pods": config.pods, "ephemeral-storage": "100Gi"});
    let stamp = now();
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({
            "type": kind, "status": status, "reason": reason,
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp,
        })
    };
    json!({
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": format!("10.{}.{}.{}", 64 + index / 65536, (index / 256) % 256, index % 256)}],
        "nodeInfo": {"kubeletVersion": "v1.33.0-skiff-hollow", "containerRuntimeVersion": "skiff://hollow",
                     "operatingSystem": "linux", "architecture": "amd64", "osImage": "hollow",
                     "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    })
}

/// Registers (or re-registers) one node with its status.
async fn register(
    nodes: &Api<Node>,
    config: &HollowConfig,
    index: usize,
    name: &str,
) -> Result<(), kube::Error> {
    let object: Node = serde_json::from_value(node_object(config, index, name)).expect("a node");
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let status = json!({"status": node_status(config, index)});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Renews every node's Lease once per `interval`, like each node's agent would: many at a
/// time, and the next round due `interval` after the last one began (a round done one lease
/// after the other took 5,000 × the write latency, and a slow server saw its nodes' Leases
/// expire for the bench's own fault).
async fn renew_leases(client: kube::Client, names: Vec<String>, interval: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let due = tokio::time::Instant::now() + interval;
        futures::stream::iter(&names)
            .for_each_concurrent(16, |name| renew_lease(&leases, name))
            .await;
        tokio::time::sleep_until(due).await;
    }
}

async fn renew_lease(leases: &Api<Lease>, name: &str) {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&lease))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(ae)) if ae.code == 404 => {
            let lease: Lease = serde_json::from_value(lease).expect("a lease");
            let _ = leases.create(&PostParams::default(), &lease).await;
        }
        Err(e) => tracing::debug!(node = %name, error = %e, "renewing the lease"),
    }
}

/// What hollow nodes and the density benchmark read of a pod. Watch events are parsed into
/// this outline rather than into whole pods (which most of a pod's JSON, its managed fields
/// above all, would cost): the benchmark's process shares the machine with the server it
/// measures.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodOutline {
    pub metadata: OutlineMeta,
    pub spec: OutlineSpec,
    pub status: OutlineStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlineMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub deletion_timestamp: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlineSpec {
    pub node_name: Option<String>,
    pub containers: Vec<OutlineContainer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutlineContainer {
    pub name: String,
    pub image: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutlineStatus {
    pub phase: Option<String>,
}

/// The pods of the cluster (those matching the field selector `fields`, when given) as their
/// watch events, from the start and for ever: a watch the server ends is resumed after the
/// last resourceVersion seen, one that expired starts over (every pod again, as added).
pub fn watch_pods(
    client: kube::Client,
    fields: Option<&str>,
) -> impl Stream<Item = WatchEvent<PodOutline>> {
    let mut params = WatchParams::default();
    if let Some(fields) = fields {
        params = params.fields(fields);
    }
    let state = (String::from("0"), None);
    futures::stream::unfold(state, move |(mut version, mut events)| {
        let (client, params) = (client.clone(), params.clone());
        async move {
            loop {
                let Some(stream) = events.as_mut() else {
                    let request = kube::core::Request::new("/api/v1/pods")
                        .watch(&params, &version)
                        .expect("a valid watch");
                    match client.request_events::<PodOutline>(request).await {
                        Ok(stream) => events = Some(stream.boxed()),
                        Err(e) => {
                            tracing::debug!(error = %e, "watching pods");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    continue;
                };
                match stream.next().await {
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        version = "0".into();
                        events = None;
                    }
                    Some(Ok(WatchEvent::Error(_)) | Err(_)) | None => events = None,
                    Some(Ok(event)) => {
                        match &event {
                            WatchEvent::Added(p)
                            | WatchEvent::Modified(p)
                            | WatchEvent::Deleted(p) => {
                                version.clone_from(&p.metadata.resource_version)
                            }
                            WatchEvent::Bookmark(b) => {
                                version.clone_from(&b.metadata.resource_version)
                            }
                            WatchEvent::Error(_) => {}
                        }
                        return Some((event, (version, events)));
                    }
                }
            }
        }
    })
}

/// Reports a bound pod Running and Ready, or finishes its deletion.
async fn tend(
    client: kube::Client,
    pod: PodOutline,
    ready_delay: Duration,
) -> Result<(), kube::Error> {
    let PodOutline {
        metadata,
        spec,
        status,
    } = pod;
    let api: Api<Pod> = Api::namespaced(client, &metadata.namespace);
    let name = metadata.name;
    if metadata.deletion_timestamp.is_some() {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        api.delete(&name, &now).await?;
        return Ok(());
    }
    if status.phase.as_deref() == Some("Running") {
        return Ok(());
    }
    tokio::time::sleep(ready_delay).await;
    let stamp = now();
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0,
                        "started": true, "state": {"running": {"startedAt": stamp}}}))
        .collect();
    let status = json!({"status": {
        "phase": "Running", "podIP": "10.42.0.2", "hostIP": "10.64.0.1", "startTime": stamp,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": "True", "lastTransitionTime": stamp},
        ],
        "containerStatuses": statuses,
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Registers the nodes, then renews their Leases and tends their pods until the task is
/// dropped.
pub async fn run(client: kube::Client, config: HollowConfig) -> Result<(), HollowError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let names = config.names();
    let shared = Arc::new(config.clone());
    let mut registrations = futures::stream::iter(names.clone().into_iter().enumerate())
        .map(|(i, name)| {
            let nodes = nodes.clone();
            let config = shared.clone();
            async move {
                register(&nodes, &config, i, &name)
                    .await
                    .map_err(|source| HollowError::Register { node: name, source })
            }
        })
        .buffer_unordered(32);
    while let Some(result) = registrations.next().await {
        result?;
    }
    drop(registrations);
    tokio::spawn(renew_leases(
        client.clone(),
        names.clone(),
        config.lease_interval,
    ));
    let ours: Arc<HashSet<String>> = Arc::new(names.into_iter().collect());
    let tending = Arc::new(tokio::sync::Semaphore::new(64));
    let mut events = std::pin::pin!(watch_pods(client.clone(), Some("spec.nodeName!=")));
    while let Some(event) = events.next().await {
        let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
            continue;
        };
        let on_ours = pod
            .spec
            .node_name
            .as_ref()
            .is_some_and(|n| ours.contains(n));
        if !on_ours {
            continue;
        }
        let permit = tending.clone().acquire_owned().await.expect("never closed");
        let client = client.clone();
        let delay = config.ready_delay;
        tokio::spawn(async move {
            // Failures are retried on the pod's next event.
            if let Err(e) = tend(client, pod, delay).await {
                tracing::debug!(error = %e, "tending a hollow pod");
            }
            drop(permit);
        });
    }
    Ok(())
}
