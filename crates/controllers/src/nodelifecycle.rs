//! The node lifecycle controller: a node whose Lease is not renewed within the grace period
//! becomes Ready=Unknown with the `node.kubernetes.io/unreachable` taints, its pods are marked
//! not Ready at once, and pods that do not tolerate the taint longer are deleted after a few
//! seconds so that their controllers replace them elsewhere. Grace periods count from this
//! server's own sight of each Lease (a restarted server evicts nothing at once), and nothing is
//! evicted while most nodes look unreachable (the control plane's outage, not theirs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_api::object::Filter;
use skiff_api::object::Lookup;
use skiff_api::FieldSelector;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterError};
use crate::events::{Note, Recorder};
use crate::runtime::kind;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Pods evicted per second at most, so that a partition does not empty the cluster at once.
const EVICTIONS_PER_SECOND: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a Lease may go unrenewed (a Lease's own longer duration counts instead).
    pub grace: Duration,
    /// How long pods without their own toleration stay on an unreachable node (Kubernetes
    /// gives 300 s).
    pub eviction_wait: Duration,
    /// From this share of unreachable nodes on (with three nodes or more), nothing is evicted.
    pub mass_outage: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace: Duration::from_secs(8),
            eviction_wait: Duration::from_secs(5),
            mass_outage: 0.55,
        }
    }
}

/// A Lease as this server saw it last change.
#[derive(Debug, Clone)]
struct Seen {
    renew_time: String,
    at: Instant,
    duration: Duration,
}

/// Whether a Lease last seen renewed at `seen` is overdue at `now`.
pub fn overdue(seen: Instant, lease_duration: Duration, grace: Duration, now: Instant) -> bool {
    now.saturating_duration_since(seen) > grace.max(lease_duration)
}

/// How long `pod` may stay on an unreachable node: its own toleration of the taint (`None`:
/// for ever), or `default`.
pub fn tolerated_for(pod: &Value, default: Duration) -> Option<Duration> {
    let tolerations = pod
        .lookup("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for t in tolerations {
        let key = t["key"].as_str().unwrap_or("");
        let operator = t["operator"].as_str().unwrap_or("Equal");
        let effect = t["effect"].as_str().unwrap_or("");
        let matches = (key == UNREACHABLE || (key.is_empty() && operator == "Exists"))
            && (effect.is_empty() || effect == "NoExecute");
        if matches {
            return t["tolerationSeconds"]
                .as_i64()
                .map(|s| Duration::from_secs(s.max(0) as u64));
        }
    }
    Some(default)
}

/// Whether evictions stop: most nodes unreachable at once.
pub fn mass_outage(unreachable: usize, nodes: usize, share: f64) -> bool {
    nodes >= 3 && unreachable as f64 >= share * nodes as f64
}

/// The node with every condition Unknown (the agent stopped reporting).
fn unknown_conditions(node: &mut Value, now: &str) {
    if let Some(conditions) = node
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conditions {
            if c["status"] != "Unknown" {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Kubelet stopped posting node status.");
        }
    }
}

/// The node's taints with (`on`) or without the unreachable ones.
fn with_unreachable_taints(node: &mut Value, on: bool, now: &str) -> bool {
    let mut taints: Vec<Value> = node
        .lookup("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let before = taints.len();
    taints.retain(|t| t["key"] != UNREACHABLE);
    let had = taints.len() != before;
    if on {
        taints.push(json!({"key": UNREACHABLE, "effect": "NoSchedule"}));
        taints.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now}));
    }
    node["spec"]["taints"] = json!(taints);
    had != on
}

fn by(field: &str, value: &str) -> Filter {
    Filter {
        labels: None,
        fields: FieldSelector::parse(&format!("{field}={value}")).ok(),
    }
}

fn now_text() -> String {
    skiff_api::object::timestamp(jiff::Timestamp::now())
}

/// Follows the node Leases into `seen`.
async fn follow_leases(cluster: Arc<dyn Cluster>, seen: Arc<Mutex<HashMap<String, Seen>>>) {
    let leases = kind("coordination.k8s.io", "leases");
    loop {
        match cluster.changes(leases).await {
            Ok(feed) => {
                let mut changes = feed.changes;
                while let Some(change) = changes.recv().await {
                    let lease = &change.object;
                    if lease.lookup("/metadata/namespace") != Some(&json!("kube-node-lease")) {
                        continue;
                    }
                    let name = lease["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let mut seen = seen.lock().expect("leases lock");
                    if change.deleted {
                        seen.remove(&name);
                        continue;
                    }
                    let renew = lease
                        .lookup("/spec/renewTime")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let duration = Duration::from_secs(
                        lease
                            .lookup("/spec/leaseDurationSeconds")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    );
                    let renewed = seen.get(&name).is_none_or(|s| s.renew_time != renew);
                    if renewed {
                        seen.insert(
                            name,
                            Seen {
                                renew_time: renew,
                                at: Instant::now(),
                                duration,
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "following node leases"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the controller for the life of the server, acting while this server leads.
pub fn start(cluster: Arc<dyn Cluster>, leader: watch::Receiver<bool>, settings: Settings) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(follow_leases(cluster.clone(), seen.clone()));
    tokio::spawn(async move {
        let recorder = Recorder::new("node-controller");
        // Nodes marked unreachable, and when.
        let mut marked: HashMap<String, Instant> = HashMap::new();
        let mut halted = false;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !*leader.borrow() {
                marked.clear();
                continue;
            }
            let now = Instant::now();
            let (overdue_nodes, total): (Vec<String>, usize) = {
                let seen = seen.lock().expect("leases lock");
                let overdue_nodes = seen
                    .iter()
                    .filter(|(_, s)| overdue(s.at, s.duration, settings.grace, now))
                    .map(|(n, _)| n.clone())
                    .collect();
                (overdue_nodes, seen.len())
            };
            for node in &overdue_nodes {
                if !marked.contains_key(node) {
                    match mark(cluster.as_ref(), &recorder, node).await {
                        Ok(()) => {
                            marked.insert(node.clone(), now);
                        }
                        Err(e) => tracing::warn!(%node, error = %e, "marking a node unreachable"),
                    }
                }
            }
            let back: Vec<String> = marked
                .keys()
                .filter(|n| !overdue_nodes.contains(n))
                .cloned()
                .collect();
            for node in back {
                match unmark(cluster.as_ref(), &node).await {
                    Ok(()) => {
                        marked.remove(&node);
                        tracing::info!(%node, "node reachable again");
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "clearing a node's unreachable taints")
                    }
                }
            }
            if mass_outage(marked.len(), total, settings.mass_outage) {
                if !halted {
                    let message = format!(
                        "{} of {total} nodes are unreachable: no pod is evicted while most nodes look unreachable (the control plane's own connectivity is the likelier fault)",
                        marked.len()
                    );
                    tracing::warn!(%message, "evictions stop");
                    halt_event(cluster.as_ref(), &recorder, marked.keys(), message).await;
                    halted = true;
                }
                continue;
            }
            halted = false;
            let mut budget = EVICTIONS_PER_SECOND;
            for (node, since) in &marked {
                match evict(
                    cluster.as_ref(),
                    &recorder,
                    node,
                    *since,
                    now,
                    settings,
                    budget,
                )
                .await
                {
                    Ok(evicted) => budget -= evicted,
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "evicting pods of an unreachable node")
                    }
                }
                if budget == 0 {
                    break;
                }
            }
        }
    });
}

/// Ready=Unknown, the unreachable taints, and every pod of the node not Ready.
async fn mark(cluster: &dyn Cluster, recorder: &Recorder, name: &str) -> Result<(), ClusterError> {
    let nodes = kind("", "nodes");
    let Some(mut node) = cluster.get(nodes, "", name).await? else {
        return Ok(());
    };
    let now = now_text();
    unknown_conditions(&mut node, &now);
    let mut node = cluster.update_status(nodes, node).await?;
    if with_unreachable_taints(&mut node, true, &now) {
        cluster.update(nodes, node.clone()).await?;
    }
    tracing::warn!(node = name, "node unreachable: its Lease was not renewed");
    recorder
        .record(
            cluster,
            &node,
            Note {
                warning: false,
                reason: "NodeNotReady",
                message: format!(
                    "Node {name} status is now: NodeNotReady (its Lease was not renewed)"
                ),
            },
        )
        .await;
    let pods = kind("", "pods");
    for mut pod in cluster.list(pods, "", &by("spec.nodeName", name)).await? {
        let Some(conditions) = pod
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let mut changed = false;
        for c in conditions.iter_mut() {
            if (c["type"] == "Ready" || c["type"] == "ContainersReady") && c["status"] != "False" {
                c["status"] = json!("False");
                c["reason"] = json!("NodeUnreachable");
                c["message"] = json!(format!("node {name} is unreachable"));
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
        }
        if changed {
            if let Err(e) = cluster.update_status(pods, pod).await {
                tracing::debug!(error = %e, "marking a pod not ready");
            }
        }
    }
    Ok(())
}

async fn unmark(cluster: &dyn Cluster, name: &str) -> Result<(), ClusterError> {
    let nodes = kind("", "nodes");
    if let Some(mut node) = cluster.get(nodes, "", name).await? {
        if with_unreachable_taints(&mut node, false, &now_text()) {
            cluster.update(nodes, node).await?;
        }
    }
    Ok(())
}

/// Says on the unreachable nodes why their pods stay.
async fn halt_event<'a>(
    cluster: &dyn Cluster,
    recorder: &Recorder,
    nodes: impl Iterator<Item = &'a String>,
    message: String,
) {
    for name in nodes {
        if let Ok(Some(node)) = cluster.get(kind("", "nodes"), "", name).await {
            let note = Note {
                warning: true,
                reason: "EvictionHalted",
                message: message.clone(),
            };
            recorder.record(cluster, &node, note).await;
        }
    }
}

/// Deletes, up to `budget`, the pods of an unreachable node whose toleration has run out;
/// returns how many.
async fn evict(
    cluster: &dyn Cluster,
    recorder: &Recorder,
    node: &str,
    since: Instant,
    now: Instant,
    settings: Settings,
    budget: usize,
) -> Result<usize, ClusterError> {
    let pods = kind("", "pods");
    let mut evicted = 0;
    for pod in cluster.list(pods, "", &by("spec.nodeName", node)).await? {
        if evicted == budget {
            break;
        }
        if pod.lookup("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let Some(wait) = tolerated_for(&pod, settings.eviction_wait) else {
            continue;
        };
        if now.saturating_duration_since(since) < wait {
            continue;
        }
        let text = |f: &str| pod["metadata"][f].as_str().unwrap_or("").to_string();
        let (namespace, name, uid) = (text("namespace"), text("name"), text("uid"));
        cluster.delete(pods, &namespace, &name, &uid, false).await?;
        evicted += 1;
        tracing::info!(%node, pod = %format!("{namespace}/{name}"), "evicted from an unreachable node");
        recorder
            .record(
                cluster,
                &pod,
                Note {
                    warning: false,
                    reason: "TaintManagerEviction",
                    message: format!("Marking for deletion Pod {namespace}/{name}"),
                },
            )
            .await;
    }
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_overdue_after_the_longer_of_grace_and_their_duration() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(8);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(!overdue(t0, Duration::from_secs(8), grace, at(8)));
        assert!(overdue(t0, Duration::from_secs(8), grace, at(9)));
        // Hollow nodes declare 40 s Leases renewed every 10 s: not overdue at 20 s.
        assert!(!overdue(t0, Duration::from_secs(40), grace, at(20)));
        assert!(overdue(t0, Duration::from_secs(40), grace, at(41)));
    }

    #[test]
    fn tolerations_decide_how_long_pods_stay() {
        let five = Duration::from_secs(5);
        let pod = |tolerations: Value| json!({"spec": {"tolerations": tolerations}});
        assert_eq!(tolerated_for(&json!({}), five), Some(five));
        assert_eq!(
            tolerated_for(
                &pod(
                    json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}])
                ),
                five
            ),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            tolerated_for(
                &pod(json!([{"key": UNREACHABLE, "operator": "Exists"}])),
                five
            ),
            None,
            "no tolerationSeconds: for ever"
        );
        assert_eq!(
            tolerated_for(&pod(json!([{"operator": "Exists"}])), five),
            None
        );
        assert_eq!(
            tolerated_for(&pod(json!([{"key": "gpu", "operator": "Exists"}])), five),
            Some(five)
        );
    }

    #[test]
    fn most_nodes_unreachable_stops_evictions() {
        assert!(!mass_outage(1, 3, 0.55));
        assert!(mass_outage(2, 3, 0.55));
        assert!(
            !mass_outage(1, 1, 0.55),
            "one node alone is not an outage of the control plane"
        );
        assert!(!mass_outage(2, 2, 0.55));
    }

    #[test]
    fn nodes_get_and_lose_the_unreachable_taints() {
        let mut node = json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        unknown_conditions(&mut node, "2026-11-30T00:00:00Z");
        assert_eq!(node["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(
            node["status"]["conditions"][0]["reason"],
            "NodeStatusUnknown"
        );
        assert!(with_unreachable_taints(&mut node, true, "t"));
        assert_eq!(node["spec"]["taints"].as_array().unwrap().len(), 3);
        assert!(
            !with_unreachable_taints(&mut node, true, "t"),
            "already there"
        );
        assert!(with_unreachable_taints(&mut node, false, "t"));
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "gpu", "effect": "NoSchedule"}])
        );
    }
}
