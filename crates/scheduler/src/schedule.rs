//! One scheduling decision: the best node for a pod, or why there is none, and whom to preempt
//! when evicting lower-priority pods would make room.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::filter::{self, AffinityContext, Context};
use crate::node::{NodeInfo, Snapshot};
use crate::pod::PodInfo;
use crate::score;

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node: String,
    /// How many nodes were looked at and how many fitted (the search stops once it has enough
    /// candidates, as Kubernetes' percentageOfNodesToScore does in large clusters).
    pub evaluated: usize,
    pub feasible: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<Victim>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// Kubernetes' FailedScheduling message: `0/3 nodes are available: 1 node(s) had
    /// untolerated taint {nvidia.com/gpu: true}, 2 Insufficient cpu.`, with what preemption found.
    pub message: String,
    /// Whom to evict, when that would let the pod in.
    pub preemption: Option<Preemption>,
}

/// How many fitting nodes to find before choosing among them: all of a small cluster, a
/// shrinking share of a large one (Kubernetes' adaptive percentageOfNodesToScore), 100 at least.
fn enough(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percent / 100).max(100)
}

/// Where `pod` should go, looking at nodes from `start` (rotated by the caller so that the search
/// spreads over the cluster).
pub fn schedule(snapshot: &Snapshot, pod: &PodInfo, start: usize) -> Result<Placement, Diagnosis> {
    let nodes = snapshot.nodes();
    let ctx = Context {
        pod,
        affinity: AffinityContext::new(snapshot, pod),
        spread: filter::spread_constraints(snapshot, pod),
    };
    let want = enough(nodes.len());
    let mut feasible = Vec::new();
    let mut reasons: Vec<(usize, Vec<String>)> = Vec::new();
    let mut evaluated = 0;
    for k in 0..nodes.len() {
        let i = (start + k) % nodes.len();
        evaluated += 1;
        let why = filter::filter(&ctx, &nodes[i]);
        if why.is_empty() {
            feasible.push(i);
            if feasible.len() >= want {
                break;
            }
        } else {
            reasons.push((i, why));
        }
    }
    if feasible.is_empty() {
        return Err(diagnose(snapshot, pod, &reasons));
    }
    let scores = score::scores(&ctx, snapshot, &feasible);
    // The best score; among equals, the first from the rotated start.
    let best = scores
        .iter()
        .enumerate()
        .max_by_key(|&(k, s)| (*s, std::cmp::Reverse(k)))
        .map(|(k, _)| feasible[k])
        .expect("some node fits");
    Ok(Placement {
        node: nodes[best].name.clone(),
        evaluated,
        feasible: feasible.len(),
    })
}

/// Counts reasons over nodes in Kubernetes' form: `N reason`, sorted, joined.
fn histogram<'a>(reasons: impl Iterator<Item = &'a String>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

/// Reasons preemption can do something about: room, pod count and ports.
fn resolvable(reason: &str) -> bool {
    reason.starts_with("Insufficient ")
        || reason == filter::TOO_MANY_PODS
        || reason == filter::PORTS
}

fn diagnose(snapshot: &Snapshot, pod: &PodInfo, reasons: &[(usize, Vec<String>)]) -> Diagnosis {
    let total = snapshot.nodes().len();
    let mut message = if total == 0 {
        "0/0 nodes are available: no nodes available to schedule pods.".to_string()
    } else {
        format!(
            "0/{total} nodes are available: {}.",
            histogram(reasons.iter().flat_map(|(_, r)| r))
        )
    };
    if total == 0 {
        return Diagnosis {
            message,
            preemption: None,
        };
    }
    if pod.never_preempts {
        message.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
        return Diagnosis {
            message,
            preemption: None,
        };
    }
    let mut best: Option<((i32, i64, usize), Preemption)> = None;
    let mut outcomes = Vec::new();
    for (i, why) in reasons {
        if !why.iter().all(|r| resolvable(r)) {
            outcomes.push("Preemption is not helpful for scheduling".to_string());
            continue;
        }
        match victims_on(&snapshot.nodes()[*i], pod) {
            None => outcomes.push("No preemption victims found for incoming pod".to_string()),
            Some(victims) => {
                // Kubernetes' order: the lowest highest-victim priority, then the smallest sum
                // of priorities, then the fewest victims.
                let rank = (
                    victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
                    victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
                    victims.len(),
                );
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((
                        rank,
                        Preemption {
                            node: snapshot.nodes()[*i].name.clone(),
                            victims,
                        },
                    ));
                }
            }
        }
    }
    match best {
        Some((_, preemption)) => Diagnosis {
            message,
            preemption: Some(preemption),
        },
        None => {
            message.push_str(&format!(
                " preemption: 0/{total} nodes are available: {}.",
                histogram(outcomes.iter())
            ));
            Diagnosis {
                message,
                preemption: None,
            }
        }
    }
}

/// The fewest lower-priority pods to evict from `node` for `pod` to fit, keeping the
/// highest-priority ones where room allows.
fn victims_on(node: &NodeInfo, pod: &PodInfo) -> Option<Vec<Victim>> {
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority && !p.terminating)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for p in &lower {
        trial.remove_pod(&p.uid);
    }
    let fits =
        |n: &NodeInfo| filter::insufficient(pod, n).is_empty() && !filter::ports_conflict(pod, n);
    if !fits(&trial) {
        return None;
    }
    // Reprieve the most important first.
    lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let mut victims = Vec::new();
    for p in lower {
        trial.add_pod(p.clone());
        if !fits(&trial) {
            trial.remove_pod(&p.uid);
            victims.push(Victim {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
                priority: p.priority,
            });
        }
    }
    Some(victims)
}
