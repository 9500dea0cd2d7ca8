//! The disruption controller: keeps each PodDisruptionBudget's status (healthy, desired and
//! expected pods, disruptions allowed, the pods evictions are deleting) from the pods it covers
//! and their controllers' scale. The arithmetic is `skiff_api::disruption`'s; this follows
//! budgets, pods and workloads and writes what changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skiff_api::disruption;
use skiff_api::object::Filter;
use skiff_api::object::Lookup;
use skiff_api::LabelSelector;
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterError};
use crate::queue::Queue;
use crate::runtime::text;
use crate::runtime::{controller_of, kind};

type BudgetKey = (String, String);

fn budgets() -> &'static skiff_api::kinds::Kind {
    skiff_api::kinds::find("policy", "v1", "poddisruptionbudgets").expect("a served kind")
}

/// What the feeds need of a budget: its selector, parsed once, and whether it counts against
/// the workloads' scale.
struct Followed {
    selector: Option<LabelSelector>,
    needs_scale: bool,
}

/// The budgets as the feeds saw them last, to find those a pod's change concerns.
#[derive(Default)]
struct Index {
    budgets: HashMap<BudgetKey, Followed>,
    /// Which budgets each pod was last seen covered by (a pod whose labels change leaves them).
    pods: HashMap<BudgetKey, BTreeSet<BudgetKey>>,
}

fn key_of(obj: &Value) -> BudgetKey {
    (
        text(obj, "/metadata/namespace").to_string(),
        text(obj, "/metadata/name").to_string(),
    )
}

/// Starts following budgets, pods and the workloads whose scale budgets count, while this
/// server leads.
pub fn start(cluster: Arc<dyn Cluster>, leader: watch::Receiver<bool>) {
    let queue: Queue<BudgetKey> = Queue::default();
    let index = Arc::new(Mutex::new(Index::default()));
    {
        let (queue, index) = (queue.clone(), index.clone());
        tokio::spawn(crate::runtime::follow(
            cluster.clone(),
            budgets(),
            move |change| {
                let key = key_of(&change.object);
                let mut index = index.lock().expect("disruption index");
                if change.deleted {
                    index.budgets.remove(&key);
                } else {
                    let followed = Followed {
                        selector: disruption::selector(&change.object),
                        needs_scale: disruption::needs_scale(&change.object),
                    };
                    index.budgets.insert(key.clone(), followed);
                }
                queue.add(key);
            },
        ));
    }
    {
        let (queue, index) = (queue.clone(), index.clone());
        tokio::spawn(crate::runtime::follow(
            cluster.clone(),
            kind("", "pods"),
            move |change| {
                let pod_key = key_of(&change.object);
                let labels = disruption::labels_of(&change.object);
                let mut index = index.lock().expect("disruption index");
                let now: BTreeSet<BudgetKey> = if change.deleted {
                    BTreeSet::new()
                } else {
                    index
                        .budgets
                        .iter()
                        .filter(|((ns, _), b)| {
                            *ns == pod_key.0
                                && b.selector.as_ref().is_some_and(|s| s.matches(&labels))
                        })
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                let before = index.pods.remove(&pod_key).unwrap_or_default();
                for key in now.union(&before) {
                    queue.add(key.clone());
                }
                if !now.is_empty() {
                    index.pods.insert(pod_key, now);
                }
            },
        ));
    }
    // A workload's scale is what budgets with maxUnavailable or percentages count against.
    for workload in [kind("apps", "deployments"), kind("apps", "replicasets")] {
        let (queue, index) = (queue.clone(), index.clone());
        tokio::spawn(crate::runtime::follow(
            cluster.clone(),
            workload,
            move |change| {
                let namespace = text(&change.object, "/metadata/namespace");
                let index = index.lock().expect("disruption index");
                for (key, budget) in &index.budgets {
                    if key.0 == namespace && budget.needs_scale {
                        queue.add(key.clone());
                    }
                }
            },
        ));
    }
    crate::runtime::work_while_leading(queue, leader, "disruption", move |key: BudgetKey| {
        let cluster = cluster.clone();
        async move { sync(cluster.as_ref(), &key.0, &key.1).await }
    });
}

/// The summed replicas of the pods' controllers, each counted once (a ReplicaSet of a
/// Deployment counts as the Deployment), or why it is unknown.
async fn scale_of(
    cluster: &dyn Cluster,
    namespace: &str,
    pods: &[Value],
) -> Result<Result<i64, String>, ClusterError> {
    let mut counted = BTreeSet::new();
    let mut looked_up = BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let name = text(pod, "/metadata/name");
        let Some((rs_name, rs_uid)) = controller_of(pod, "ReplicaSet") else {
            return Ok(Err(match pod.lookup("/metadata/ownerReferences") {
                Some(_) => format!("found no controllers for pod {name:?}"),
                None => format!("found no controller ref for pod {name:?}"),
            }));
        };
        // Pods of one ReplicaSet share its lookup.
        if !looked_up.insert(rs_uid) {
            continue;
        }
        let Some(rs) = cluster
            .get(kind("apps", "replicasets"), namespace, rs_name)
            .await?
        else {
            return Ok(Err(format!("found no controllers for pod {name:?}")));
        };
        let owner = match controller_of(&rs, "Deployment") {
            Some((deployment, _)) => {
                cluster
                    .get(kind("apps", "deployments"), namespace, deployment)
                    .await?
            }
            None => Some(rs),
        };
        let Some(owner) = owner else {
            return Ok(Err(format!("found no controllers for pod {name:?}")));
        };
        if counted.insert(text(&owner, "/metadata/uid").to_string()) {
            total += owner
                .lookup("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
        }
    }
    Ok(Ok(total))
}

/// Writes the budget's status if it changed; answers when to look again for pods recorded as
/// disrupted that may become overdue.
async fn sync(
    cluster: &dyn Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<Duration>, ClusterError> {
    let Some(pdb) = cluster.get(budgets(), namespace, name).await? else {
        return Ok(None);
    };
    let pods = match disruption::selector(&pdb) {
        Some(labels) => {
            let filter = Filter {
                labels: Some(labels),
                fields: None,
            };
            cluster.list(kind("", "pods"), namespace, &filter).await?
        }
        None => Vec::new(),
    };
    let scale = if disruption::needs_scale(&pdb) {
        scale_of(cluster, namespace, &pods).await?
    } else {
        Err("not needed".to_string())
    };
    let covered: Vec<&Value> = pods.iter().collect();
    let status = disruption::status(&pdb, &covered, scale, jiff::Timestamp::now());
    let recheck = status["disruptedPods"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|_| Duration::from_secs(10));
    if pdb.get("status") != Some(&status) {
        let mut updated = pdb;
        updated["status"] = status;
        cluster.update_status(budgets(), updated).await?;
    }
    Ok(recheck)
}
