//! The scores: among the nodes that fit, which is best. Each part gives 0 to 100 per node,
//! normalized over the candidates as Kubernetes' plugins do, and they add up by weight.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::WeightedPodAffinityTerm;

use crate::filter::{selector, term_matches, term_selects, tolerates, Context};
use crate::node::{scored, NodeInfo, Snapshot};
use crate::pod::PodInfo;

/// Kubernetes' default plugin weights.
const W_FIT: i64 = 1;
const W_BALANCED: i64 = 1;
const W_NODE_AFFINITY: i64 = 2;
const W_TAINT: i64 = 3;
const W_POD_AFFINITY: i64 = 2;
const W_SPREAD: i64 = 2;

fn fractions(pod: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let (cpu, memory) = scored(&pod.requests);
    let frac = |used: i64, have: i64| {
        if have <= 0 {
            1.0
        } else {
            ((used as f64) / (have as f64)).min(1.0)
        }
    };
    (
        frac(node.scored_cpu_milli + cpu, node.allocatable.cpu_milli),
        frac(node.scored_memory + memory, node.allocatable.memory),
    )
}

/// Scales raw values to 0..100, the largest getting 100 (`reverse`: the smallest).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|&v| {
            if max == min {
                if reverse || max > 0 {
                    100
                } else {
                    0
                }
            } else if reverse {
                (max - v) * 100 / (max - min)
            } else {
                (v - min) * 100 / (max - min)
            }
        })
        .collect()
}

/// Matching pods per domain value, for a preferred inter-pod term.
fn domain_counts(
    snapshot: &Snapshot,
    pod: &PodInfo,
    term: &WeightedPodAffinityTerm,
) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    let t = &term.pod_affinity_term;
    let Some(sel) = selector(t.label_selector.as_ref()) else {
        return counts;
    };
    for node in snapshot.nodes() {
        let Some(value) = node.labels.get(&t.topology_key) else {
            continue;
        };
        let n = node
            .pods
            .iter()
            .filter(|p| term_selects(t, &pod.namespace, &sel, p))
            .count() as i64;
        if n > 0 {
            *counts.entry(value.clone()).or_default() += n;
        }
    }
    counts
}

/// The weighted total score of each candidate (`nodes`, indices into the snapshot's nodes).
pub fn scores(ctx: &Context, snapshot: &Snapshot, nodes: &[usize]) -> Vec<i64> {
    let pod = ctx.pod;
    let all = snapshot.nodes();
    let candidates: Vec<&NodeInfo> = nodes.iter().map(|&i| &all[i]).collect();
    let mut total = vec![0i64; candidates.len()];
    let mut add = |weight: i64, part: Vec<i64>| {
        for (t, p) in total.iter_mut().zip(part) {
            *t += weight * p;
        }
    };

    // Least allocated and balanced, on CPU and memory.
    let fracs: Vec<(f64, f64)> = candidates.iter().map(|n| fractions(pod, n)).collect();
    add(
        W_FIT,
        fracs
            .iter()
            .map(|(c, m)| ((2.0 - c - m) * 50.0) as i64)
            .collect(),
    );
    add(
        W_BALANCED,
        fracs
            .iter()
            .map(|(c, m)| ((1.0 - (c - m).abs() / 2.0) * 100.0) as i64)
            .collect(),
    );

    // Preferred node affinity.
    let preferred = pod
        .affinity
        .node_affinity
        .as_ref()
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    if !preferred.is_empty() {
        let raw = candidates
            .iter()
            .map(|n| {
                preferred
                    .iter()
                    .filter(|p| term_matches(&p.preference, n))
                    .map(|p| i64::from(p.weight))
                    .sum()
            })
            .collect::<Vec<i64>>();
        add(W_NODE_AFFINITY, normalize(&raw, false));
    }

    // PreferNoSchedule taints not tolerated: fewer is better.
    let raw: Vec<i64> = candidates
        .iter()
        .map(|n| {
            n.taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|taint| !pod.tolerations.iter().any(|t| tolerates(t, taint)))
                .count() as i64
        })
        .collect();
    add(W_TAINT, normalize(&raw, true));

    // Preferred inter-pod affinity (+) and anti-affinity (-).
    fn weighted(
        terms: Option<&Vec<WeightedPodAffinityTerm>>,
        sign: i64,
    ) -> Vec<(&WeightedPodAffinityTerm, i64)> {
        terms.into_iter().flatten().map(|t| (t, sign)).collect()
    }
    let mut pod_terms = weighted(
        pod.affinity.pod_affinity.as_ref().and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }),
        1,
    );
    pod_terms.extend(weighted(
        pod.affinity.pod_anti_affinity.as_ref().and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }),
        -1,
    ));
    if !pod_terms.is_empty() {
        let counted: Vec<(&WeightedPodAffinityTerm, i64, HashMap<String, i64>)> = pod_terms
            .into_iter()
            .map(|(t, sign)| (t, sign, domain_counts(snapshot, pod, t)))
            .collect();
        let raw: Vec<i64> = candidates
            .iter()
            .map(|n| {
                counted
                    .iter()
                    .map(|(t, sign, counts)| {
                        let here = n
                            .labels
                            .get(&t.pod_affinity_term.topology_key)
                            .and_then(|v| counts.get(v))
                            .copied()
                            .unwrap_or(0);
                        sign * i64::from(t.weight) * here
                    })
                    .sum()
            })
            .collect();
        add(W_POD_AFFINITY, normalize(&raw, false));
    }

    // Spreading: the pod's soft constraints, or by default its controller's pods over
    // hostnames and zones (Kubernetes' system defaults, skew 3 and 5).
    let soft: Vec<_> = ctx.spread.iter().filter(|c| !c.hard).collect();
    let raw: Vec<i64> = if !soft.is_empty() {
        candidates
            .iter()
            .map(|n| {
                soft.iter()
                    .map(|c| {
                        n.labels
                            .get(&c.key)
                            .and_then(|v| c.counts.get(v))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .collect()
    } else if let (Some(owner), true) = (&pod.owner, pod.spread.is_empty()) {
        // Counted once per zone (a few), not per node (thousands).
        let mut zones: Vec<(&str, i64)> = Vec::new();
        let on_nodes = snapshot.on_nodes(owner);
        candidates
            .iter()
            .zip(nodes)
            .map(|(n, &i)| {
                let on_node = i64::from(on_nodes[i]);
                let in_zone = n.zone.as_deref().map_or(0, |z| {
                    match zones.iter().find(|(seen, _)| *seen == z) {
                        Some((_, count)) => *count,
                        None => {
                            let count = i64::from(snapshot.in_zone(z, owner));
                            zones.push((z, count));
                            count
                        }
                    }
                });
                // Hostname spreading weighs as much as zone spreading, each in its own scale.
                on_node * 2 + in_zone
            })
            .collect()
    } else {
        Vec::new()
    };
    if !raw.is_empty() {
        add(W_SPREAD, normalize(&raw, true));
    }
    total
}
