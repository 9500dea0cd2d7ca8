//! The filters: whether a pod may go to a node, and if not, why, in the words Kubernetes'
//! scheduler uses (they end up in the FailedScheduling event).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PodAffinityTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as TypedSelector;
use skiff_api::LabelSelector;

use crate::node::{NodeInfo, Snapshot};
use crate::pod::PodInfo;

pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
pub const TOO_MANY_PODS: &str = "Too many pods";

/// Whether a toleration tolerates a taint (empty effect: every effect; empty key with
/// `Exists`: every taint).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key
        && (exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""))
}

/// The first taint with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(node: &'a NodeInfo, pod: &PodInfo, effects: &[&str]) -> Option<&'a Taint> {
    node.taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|taint| !pod.tolerations.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// A node selector term: all its expressions (on labels) and fields (`metadata.name`) match.
/// A term with neither matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
}

/// `nodeSelector` and required node affinity.
pub fn node_affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    if !pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    let required = pod.affinity.node_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

pub fn selector(typed: Option<&TypedSelector>) -> Option<LabelSelector> {
    let value = serde_json::to_value(typed?).ok()?;
    skiff_api::object::selector_from_json(&value).ok()
}

/// Whether a pod-affinity term selects `other` (of a term written by a pod in `namespace`).
pub fn term_selects(
    term: &PodAffinityTerm,
    namespace: &str,
    selector: &LabelSelector,
    other: &PodInfo,
) -> bool {
    let in_namespace = match term.namespaces.as_deref() {
        Some(list) if !list.is_empty() => list.contains(&other.namespace),
        _ => other.namespace == namespace,
    };
    in_namespace && selector.matches(&other.labels)
}

fn terms(list: Option<&Vec<PodAffinityTerm>>) -> &[PodAffinityTerm] {
    list.map(Vec::as_slice).unwrap_or_default()
}

/// Topology domains (`(key, value)`) per required term of the pod, worked out once per
/// scheduling attempt.
#[derive(Default)]
pub struct AffinityContext {
    /// For each required affinity term: its key and the values where a matching pod runs.
    affinity: Vec<(String, HashSet<String>)>,
    /// The pod is the first of its group: nothing matches its terms yet, but it matches them.
    first_of_group: bool,
    anti_affinity: Vec<(String, HashSet<String>)>,
    /// Domains where a placed pod's required anti-affinity forbids this pod.
    forbidden: HashSet<(String, String)>,
}

impl AffinityContext {
    pub fn new(snapshot: &Snapshot, pod: &PodInfo) -> AffinityContext {
        let mut ctx = AffinityContext::default();
        let required = |a: Option<&Vec<PodAffinityTerm>>| terms(a).to_vec();
        let affinity = required(pod.affinity.pod_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let anti = required(pod.affinity.pod_anti_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let domains = |list: &[PodAffinityTerm]| -> Vec<(String, HashSet<String>)> {
            list.iter()
                .map(|term| {
                    let mut values = HashSet::new();
                    if let Some(sel) = selector(term.label_selector.as_ref()) {
                        for node in snapshot.nodes() {
                            let Some(value) = node.labels.get(&term.topology_key) else {
                                continue;
                            };
                            if node.pods.iter().any(|p| {
                                p.uid != pod.uid && term_selects(term, &pod.namespace, &sel, p)
                            }) {
                                values.insert(value.clone());
                            }
                        }
                    }
                    (term.topology_key.clone(), values)
                })
                .collect()
        };
        if !affinity.is_empty() {
            ctx.affinity = domains(&affinity);
            ctx.first_of_group = ctx.affinity.iter().all(|(_, v)| v.is_empty())
                && affinity.iter().all(|t| {
                    selector(t.label_selector.as_ref())
                        .is_some_and(|s| term_selects(t, &pod.namespace, &s, pod))
                });
        }
        if !anti.is_empty() {
            ctx.anti_affinity = domains(&anti);
        }
        for (node_name, other) in snapshot.anti_affinity_pods() {
            let Some(node) = snapshot.node(node_name) else {
                continue;
            };
            let other_terms = terms(other.affinity.pod_anti_affinity.as_ref().and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }));
            for term in other_terms {
                let (Some(sel), Some(value)) = (
                    selector(term.label_selector.as_ref()),
                    node.labels.get(&term.topology_key),
                ) else {
                    continue;
                };
                if term_selects(term, &other.namespace, &sel, pod) {
                    ctx.forbidden
                        .insert((term.topology_key.clone(), value.clone()));
                }
            }
        }
        ctx
    }

    fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        let in_domain = |(key, values): &(String, HashSet<String>)| {
            node.labels.get(key).is_some_and(|v| values.contains(v))
        };
        if !self.affinity.is_empty() && !self.first_of_group && !self.affinity.iter().all(in_domain)
        {
            return Some(POD_AFFINITY);
        }
        if self.first_of_group
            && !self
                .affinity
                .iter()
                .all(|(key, _)| node.labels.contains_key(key))
        {
            return Some(POD_AFFINITY);
        }
        if self.anti_affinity.iter().any(in_domain) {
            return Some(POD_ANTI_AFFINITY);
        }
        if self
            .forbidden
            .iter()
            .any(|(key, value)| node.labels.get(key) == Some(value))
        {
            return Some(EXISTING_ANTI_AFFINITY);
        }
        None
    }
}

/// Matching pods per topology domain for each of the pod's spread constraints.
pub struct SpreadConstraint {
    pub key: String,
    pub max_skew: i64,
    pub hard: bool,
    pub counts: HashMap<String, i64>,
    /// Whether the pod itself matches the selector (it will count once placed).
    pub self_match: i64,
}

pub fn spread_constraints(snapshot: &Snapshot, pod: &PodInfo) -> Vec<SpreadConstraint> {
    pod.spread
        .iter()
        .map(|c| {
            let sel = selector(c.label_selector.as_ref());
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in snapshot.nodes() {
                // Only nodes the pod could go to count, as with nodeAffinityPolicy: Honor.
                let Some(value) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                if !node_affinity_matches(pod, node) {
                    continue;
                }
                let n = sel.as_ref().map_or(0, |s| {
                    node.pods
                        .iter()
                        .filter(|p| {
                            p.namespace == pod.namespace && !p.terminating && s.matches(&p.labels)
                        })
                        .count() as i64
                });
                *counts.entry(value.clone()).or_default() += n;
            }
            SpreadConstraint {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew.max(1)),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                self_match: i64::from(sel.is_some_and(|s| s.matches(&pod.labels))),
                counts,
            }
        })
        .collect()
}

/// Everything the filters need, worked out once per attempt.
pub struct Context<'a> {
    pub pod: &'a PodInfo,
    pub affinity: AffinityContext,
    pub spread: Vec<SpreadConstraint>,
}

/// Why `node` cannot take the pod: empty when it can. Resource shortages are all listed; other
/// filters stop at the first failure, as Kubernetes' do.
pub fn filter(ctx: &Context, node: &NodeInfo) -> Vec<String> {
    let pod = ctx.pod;
    if node.unschedulable
        && !pod.tolerations.iter().any(|t| {
            tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
            )
        })
    {
        return vec![UNSCHEDULABLE.into()];
    }
    if pod.node_name.as_deref().is_some_and(|n| n != node.name) {
        return vec![NODE_NAME.into()];
    }
    if let Some(taint) = untolerated(node, pod, &["NoSchedule", "NoExecute"]) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        )];
    }
    if !node_affinity_matches(pod, node) {
        return vec![NODE_AFFINITY.into()];
    }
    if ports_conflict(pod, node) {
        return vec![PORTS.into()];
    }
    let short = insufficient(pod, node);
    if !short.is_empty() {
        return short;
    }
    for c in ctx.spread.iter().filter(|c| c.hard) {
        let Some(value) = node.labels.get(&c.key) else {
            return vec![SPREAD_LABEL.into()];
        };
        let min = c.counts.values().copied().min().unwrap_or(0);
        let here = c.counts.get(value).copied().unwrap_or(0);
        if here + c.self_match - min > c.max_skew {
            return vec![SPREAD.into()];
        }
    }
    if let Some(reason) = ctx.affinity.check(node) {
        return vec![reason.into()];
    }
    Vec::new()
}

pub fn ports_conflict(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.host_ports.iter().any(|want| {
        node.ports().any(|used| {
            used.port == want.port
                && used.protocol == want.protocol
                && (used.ip.is_empty() || want.ip.is_empty() || used.ip == want.ip)
        })
    })
}

/// The resources the node lacks for the pod ("Insufficient cpu", ..., "Too many pods").
pub fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let want = &pod.requests;
    let (have, used) = (&node.allocatable, &node.requested);
    let mut short = Vec::new();
    if used.pods + 1 > have.pods {
        short.push(TOO_MANY_PODS.to_string());
    }
    for (name, asked, free) in [
        ("cpu", want.cpu_milli, have.cpu_milli - used.cpu_milli),
        ("memory", want.memory, have.memory - used.memory),
        (
            "ephemeral-storage",
            want.ephemeral_storage,
            have.ephemeral_storage - used.ephemeral_storage,
        ),
    ] {
        if asked > 0 && asked > free {
            short.push(format!("Insufficient {name}"));
        }
    }
    for (name, asked) in &want.extended {
        let free = have.extended.get(name).copied().unwrap_or(0)
            - used.extended.get(name).copied().unwrap_or(0);
        if *asked > 0 && *asked > free {
            short.push(format!("Insufficient {name}"));
        }
    }
    short
}
