//! The node IPAM controller: every node gets its own pod CIDR (`spec.podCIDR`), the first free
//! subnet of the cluster CIDR, which its agent then hands out to its pods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_api::cidr::{self, Ipv4Cidr};
use skiff_api::object::Lookup;
use tokio::sync::{watch, Notify};

use crate::cluster::{Cluster, ClusterError};
use crate::runtime::kind;

/// The range pod CIDRs come from.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub cluster_cidr: Ipv4Cidr,
    /// Each node's share: a /24 holds 253 pods, more than a node runs (110 by default).
    pub node_prefix: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_cidr: "10.42.0.0/16".parse().expect("the default cluster CIDR"),
            node_prefix: 24,
        }
    }
}

/// Nodes by name: their pod CIDR, if they have one.
type Seen = BTreeMap<String, Option<Ipv4Cidr>>;

fn pod_cidr(node: &Value) -> Option<Ipv4Cidr> {
    node.lookup("/spec/podCIDR")?.as_str()?.parse().ok()
}

pub fn start(cluster: Arc<dyn Cluster>, leader: watch::Receiver<bool>, settings: Settings) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let wake = Arc::new(Notify::new());
    {
        let (seen, wake) = (seen.clone(), wake.clone());
        tokio::spawn(crate::runtime::follow(
            cluster.clone(),
            kind("", "nodes"),
            move |change| {
                let name = change.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let mut seen = seen.lock().expect("nodes seen");
                if change.deleted {
                    seen.remove(&name);
                } else {
                    let cidr = pod_cidr(&change.object);
                    if cidr.is_none() {
                        wake.notify_one();
                    }
                    seen.insert(name, cidr);
                }
            },
        ));
    }
    tokio::spawn(async move {
        let mut reported: Option<Instant> = None;
        loop {
            // A missed or failed assignment is tried again within a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            if !*leader.borrow() {
                continue;
            }
            let (waiting, taken): (Vec<String>, BTreeSet<Ipv4Cidr>) = {
                let seen = seen.lock().expect("nodes seen");
                (
                    seen.iter()
                        .filter(|(_, c)| c.is_none())
                        .map(|(n, _)| n.clone())
                        .collect(),
                    seen.values().flatten().copied().collect(),
                )
            };
            // One pass over the range finds every waiting node its CIDR.
            let free: Vec<Ipv4Cidr> =
                cidr::free_node_cidrs(&settings.cluster_cidr, settings.node_prefix, &taken)
                    .take(waiting.len())
                    .collect();
            if free.len() < waiting.len()
                && reported.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
            {
                // The range is full: said once a minute, not once per node and second.
                tracing::error!(nodes = waiting.len() - free.len(), cluster_cidr = %settings.cluster_cidr,
                    node_prefix = settings.node_prefix,
                    "no pod CIDR is left for these nodes: their pods get no addresses (a larger --cluster-cidr makes room)");
                reported = Some(Instant::now());
            }
            for (node, free) in waiting.iter().zip(free) {
                match assign(cluster.as_ref(), node, free).await {
                    Ok(Some(given)) => {
                        seen.lock()
                            .expect("nodes seen")
                            .insert(node.clone(), Some(given));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%node, error = %e, "assigning a pod CIDR"),
                }
            }
        }
    });
}

/// Gives `node` the pod CIDR `free`, unless it has one by now (answered instead).
async fn assign(
    cluster: &dyn Cluster,
    node: &str,
    free: Ipv4Cidr,
) -> Result<Option<Ipv4Cidr>, ClusterError> {
    let Some(mut obj) = cluster.get(kind("", "nodes"), "", node).await? else {
        return Ok(None);
    };
    if let Some(has) = pod_cidr(&obj) {
        return Ok(Some(has));
    }
    obj["spec"]["podCIDR"] = json!(free.to_string());
    obj["spec"]["podCIDRs"] = json!([free.to_string()]);
    cluster.update(kind("", "nodes"), obj).await?;
    tracing::info!(%node, pod_cidr = %free, "pod CIDR assigned");
    Ok(Some(free))
}
