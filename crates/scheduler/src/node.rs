//! Nodes as the scheduler sees them, each with the pods placed on it and what they use, and the
//! snapshot of all of them that `schedule` decides on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Taint;
use serde_json::Value;
use skiff_api::object::Lookup;

use crate::pod::{HostPort, PodInfo};
use crate::resources::{Resources, DEFAULT_CPU_MILLI, DEFAULT_MEMORY};

/// The label naming a node's zone.
pub const ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its `topology.kubernetes.io/zone`, looked up once.
    pub zone: Option<String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// What the pods on it request.
    pub requested: Resources,
    /// CPU (millicores) and memory requested, counting pods that ask nothing as asking the
    /// non-zero defaults: what scores compare.
    pub scored_cpu_milli: i64,
    pub scored_memory: i64,
    pub pods: Vec<Arc<PodInfo>>,
}

/// A node's status conditions say it is not ready: it is treated as tainted so, as the node
/// lifecycle controller would taint it.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

impl NodeInfo {
    pub fn from_json(node: &Value) -> NodeInfo {
        let labels: BTreeMap<String, String> = node["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let mut taints: Vec<Taint> = node
            .lookup("/spec/taints")
            .and_then(|t| serde_json::from_value(t.clone()).ok())
            .unwrap_or_default();
        let ready = skiff_api::object::condition_true(node, "Ready");
        if !ready
            && !taints
                .iter()
                .any(|t| t.key.starts_with("node.kubernetes.io/"))
        {
            taints.push(Taint {
                key: NOT_READY_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        let status = &node["status"];
        let allocatable = Resources::from_list(
            status
                .get("allocatable")
                .filter(|a| a.is_object())
                .or(status.get("capacity")),
        );
        NodeInfo {
            name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            zone: labels.get(ZONE).cloned(),
            labels,
            taints,
            unschedulable: node.lookup("/spec/unschedulable") == Some(&Value::Bool(true)),
            allocatable,
            ..Default::default()
        }
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        let (cpu, memory) = scored(&pod.requests);
        self.scored_cpu_milli += cpu;
        self.scored_memory += memory;
        self.pods.push(pod);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid == uid)?;
        let pod = self.pods.swap_remove(i);
        self.requested.subtract(&pod.requests);
        let (cpu, memory) = scored(&pod.requests);
        self.scored_cpu_milli -= cpu;
        self.scored_memory -= memory;
        Some(pod)
    }

    /// How many pods of each controller (by uid) run here.
    fn owners(&self) -> HashMap<&str, u32> {
        let mut owners = HashMap::new();
        for owner in self.pods.iter().filter_map(|p| p.owner.as_deref()) {
            *owners.entry(owner).or_default() += 1;
        }
        owners
    }

    /// Host ports in use on the node.
    pub fn ports(&self) -> impl Iterator<Item = &HostPort> {
        self.pods.iter().flat_map(|p| p.host_ports.iter())
    }
}

/// Adds `delta` to the count kept for (`outer`, `inner`), never below zero; counts (and
/// inner maps) that reach zero go.
fn add_count(
    counts: &mut HashMap<String, HashMap<String, u32>>,
    outer: &str,
    inner: &str,
    delta: i64,
) {
    if !counts.contains_key(outer) {
        counts.insert(outer.to_string(), HashMap::new());
    }
    let map = counts.get_mut(outer).expect("just made");
    let count = match map.get_mut(inner) {
        Some(count) => count,
        None => map.entry(inner.to_string()).or_default(),
    };
    *count = (i64::from(*count) + delta).max(0) as u32;
    if *count == 0 {
        map.remove(inner);
        if map.is_empty() {
            counts.remove(outer);
        }
    }
}

pub(crate) fn scored(requests: &Resources) -> (i64, i64) {
    let cpu = if requests.cpu_milli == 0 {
        DEFAULT_CPU_MILLI
    } else {
        requests.cpu_milli
    };
    let memory = if requests.memory == 0 {
        DEFAULT_MEMORY
    } else {
        requests.memory
    };
    (cpu, memory)
}

/// Every node and the pods placed on each; pods bound to a node not (yet) known wait aside and
/// join it when it comes.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    placed: HashMap<String, String>,
    waiting: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Placed pods with required anti-affinity, which every other pod must respect: few, so
    /// they are kept aside rather than searched for among all pods.
    anti_affinity: HashMap<String, (String, Arc<PodInfo>)>,
    /// Pods per (zone, controller uid), kept as pods come and go, so that spreading over zones
    /// costs a lookup rather than a walk over every node.
    zone_owners: HashMap<String, HashMap<String, u32>>,
    /// Pods per controller uid and node name (known or not), for spreading over nodes: one
    /// lookup per pod scored, not one per node scored in each node's own map (which cost
    /// more than the rest of scoring at 5,000 nodes).
    owner_nodes: HashMap<String, HashMap<String, u32>>,
}

impl Snapshot {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds or replaces a node, keeping the pods placed on it.
    pub fn set_node(&mut self, mut node: NodeInfo) {
        match self.index.get(&node.name) {
            Some(&i) => {
                let old = std::mem::take(&mut self.nodes[i]);
                if old.zone != node.zone {
                    let owners = old.owners();
                    self.count_zone(old.zone.as_deref(), &owners, -1);
                    self.count_zone(node.zone.as_deref(), &owners, 1);
                }
                node.requested = old.requested;
                node.scored_cpu_milli = old.scored_cpu_milli;
                node.scored_memory = old.scored_memory;
                node.pods = old.pods;
                self.nodes[i] = node;
            }
            None => {
                let name = node.name.clone();
                for pod in self.waiting.remove(&name).unwrap_or_default() {
                    node.add_pod(pod);
                }
                self.count_zone(node.zone.as_deref(), &node.owners(), 1);
                self.index.insert(name, self.nodes.len());
                self.nodes.push(node);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let node = self.nodes.swap_remove(i);
        self.count_zone(node.zone.as_deref(), &node.owners(), -1);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        if !node.pods.is_empty() {
            self.waiting.insert(node.name, node.pods);
        }
    }

    /// Counts a pod on a node (bound, or assumed bound by the scheduler). A pod placed again
    /// moves.
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.unplace(&pod.uid);
        self.placed.insert(pod.uid.clone(), node.to_string());
        if pod.has_required_anti_affinity() {
            self.anti_affinity
                .insert(pod.uid.clone(), (node.to_string(), pod.clone()));
        }
        if let Some(owner) = &pod.owner {
            add_count(&mut self.owner_nodes, owner, node, 1);
        }
        match self.index.get(node) {
            Some(&i) => {
                if let (Some(zone), Some(owner)) = (&self.nodes[i].zone, &pod.owner) {
                    add_count(&mut self.zone_owners, zone, owner, 1);
                }
                self.nodes[i].add_pod(pod)
            }
            None => self.waiting.entry(node.to_string()).or_default().push(pod),
        }
    }

    /// How many pods of a controller run in a zone.
    pub fn in_zone(&self, zone: &str, owner: &str) -> u32 {
        self.zone_owners
            .get(zone)
            .and_then(|owners| owners.get(owner))
            .copied()
            .unwrap_or(0)
    }

    /// How many pods of a controller run on each node, by the nodes' places in [`Self::nodes`].
    pub fn on_nodes(&self, owner: &str) -> Vec<u32> {
        let mut counts = vec![0; self.nodes.len()];
        for (node, n) in self.owner_nodes.get(owner).into_iter().flatten() {
            if let Some(&i) = self.index.get(node) {
                counts[i] = *n;
            }
        }
        counts
    }

    fn count_zone(&mut self, zone: Option<&str>, owners: &HashMap<&str, u32>, sign: i64) {
        let Some(zone) = zone else { return };
        for (owner, n) in owners {
            add_count(&mut self.zone_owners, zone, owner, sign * i64::from(*n));
        }
    }

    pub fn unplace(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let node = self.placed.remove(uid)?;
        self.anti_affinity.remove(uid);
        let pod = match self.index.get(&node) {
            Some(&i) => {
                let pod = self.nodes[i].remove_pod(uid)?;
                if let (Some(zone), Some(owner)) = (&self.nodes[i].zone, &pod.owner) {
                    add_count(&mut self.zone_owners, zone, owner, -1);
                }
                pod
            }
            None => {
                let pods = self.waiting.get_mut(&node)?;
                let i = pods.iter().position(|p| p.uid == uid)?;
                pods.swap_remove(i)
            }
        };
        if let Some(owner) = &pod.owner {
            add_count(&mut self.owner_nodes, owner, &node, -1);
        }
        Some(pod)
    }

    /// Placed pods with required anti-affinity, with their nodes.
    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = (&str, &Arc<PodInfo>)> {
        self.anti_affinity
            .values()
            .map(|(node, pod)| (node.as_str(), pod))
    }

    /// Where a pod is placed.
    pub fn placed_on(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(String::as_str)
    }
}
