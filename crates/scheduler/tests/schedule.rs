//! The scheduler's decisions from tables of cases: every filter with its message, every score,
//! and preemption.

use std::sync::Arc;

use serde_json::{json, Value};
use skiff_scheduler::{schedule, NodeInfo, PodInfo, Snapshot};

fn node(name: &str, cpu: &str, memory: &str, extra: Value) -> Value {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    });
    merge(&mut n, extra);
    n
}

fn pod(name: &str, cpu: &str, extra: Value) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {}},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]},
    });
    merge(&mut p, extra);
    p
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A snapshot of `nodes` with `placed` pods (each with `spec.nodeName`).
fn snapshot(nodes: &[Value], placed: &[Value]) -> Snapshot {
    let mut s = Snapshot::default();
    for n in nodes {
        s.set_node(NodeInfo::from_json(n));
    }
    for p in placed {
        let info = PodInfo::from_json(p);
        let on = info.node_name.clone().expect("placed pods name their node");
        s.place(Arc::new(info), &on);
    }
    s
}

/// The node chosen, or the diagnosis message.
fn decide(s: &Snapshot, p: &Value) -> String {
    match schedule(s, &PodInfo::from_json(p), 0) {
        Ok(placement) => placement.node,
        Err(d) => d.message,
    }
}

fn on(node: &str, p: Value) -> Value {
    let mut p = p;
    p["spec"]["nodeName"] = json!(node);
    p
}

#[test]
fn resources_filter_and_least_allocated_wins() {
    let nodes = [
        node("a", "4", "8Gi", json!({})),
        node("b", "4", "8Gi", json!({})),
    ];
    let busy = snapshot(&nodes, &[on("a", pod("x", "3", json!({})))]);
    assert_eq!(decide(&busy, &pod("p", "500m", json!({}))), "b");
    assert_eq!(
        decide(&busy, &pod("p", "5", json!({}))),
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    let mem = pod(
        "p",
        "0",
        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": "9Gi"}}}]}}),
    );
    assert!(decide(&busy, &mem).starts_with("0/2 nodes are available: 2 Insufficient memory."));
    let gpu = pod(
        "p",
        "0",
        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}}),
    );
    assert!(
        decide(&busy, &gpu).starts_with("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    );
    let full = node(
        "f",
        "4",
        "8Gi",
        json!({"status": {"allocatable": {"pods": "1"}}}),
    );
    let s = snapshot(&[full], &[on("f", pod("x", "0", json!({})))]);
    assert!(decide(&s, &pod("p", "0", json!({})))
        .starts_with("0/1 nodes are available: 1 Too many pods."));
}

#[test]
fn taints_need_tolerations_and_the_message_counts_each_reason() {
    let nodes = [
        node(
            "gpu",
            "8",
            "32Gi",
            json!({"spec": {"taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]}}),
        ),
        node("s1", "2", "4Gi", json!({})),
        node("s2", "2", "4Gi", json!({})),
    ];
    let s = snapshot(&nodes, &[]);
    assert_eq!(
        decide(&s, &pod("big", "3", json!({}))),
        "0/3 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: true}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
    let tolerant = json!({"spec": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}});
    assert_eq!(decide(&s, &pod("big", "3", tolerant)), "gpu");
    // A small pod avoids the GPU node only because of the taint.
    for i in 0..5 {
        assert_ne!(
            decide(&s, &pod(&format!("small{i}"), "100m", json!({}))),
            "gpu"
        );
    }
    // PreferNoSchedule only weighs on the score.
    let soft = [
        node(
            "a",
            "4",
            "8Gi",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        ),
        node("b", "4", "8Gi", json!({})),
    ];
    assert_eq!(
        decide(&snapshot(&soft, &[]), &pod("p", "100m", json!({}))),
        "b"
    );
}

#[test]
fn cordoned_not_ready_and_named_nodes() {
    let nodes = [
        node(
            "cordoned",
            "4",
            "8Gi",
            json!({"spec": {"unschedulable": true}}),
        ),
        node(
            "sick",
            "4",
            "8Gi",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        node("ok", "4", "8Gi", json!({})),
    ];
    let s = snapshot(&nodes, &[]);
    assert_eq!(decide(&s, &pod("p", "1", json!({}))), "ok");
    let named = pod("p", "1", json!({"spec": {"nodeName": "cordoned"}}));
    assert!(decide(&s, &named).starts_with(
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match the requested node name."
    ));
    let sick = snapshot(&nodes[1..2], &[]);
    assert!(decide(&sick, &pod("p", "1", json!({}))).starts_with(
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
    ));
}

#[test]
fn node_selectors_and_node_affinity() {
    let nodes = [
        node(
            "a",
            "4",
            "8Gi",
            json!({"metadata": {"labels": {"disk": "ssd", "gen": "3"}}}),
        ),
        node(
            "b",
            "4",
            "8Gi",
            json!({"metadata": {"labels": {"disk": "hdd", "gen": "5"}}}),
        ),
    ];
    let s = snapshot(&nodes, &[]);
    assert_eq!(
        decide(
            &s,
            &pod("p", "1", json!({"spec": {"nodeSelector": {"disk": "ssd"}}}))
        ),
        "a"
    );
    let affinity = |exprs: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}});
    for (exprs, want) in [
        (json!([{"key": "disk", "operator": "In", "values": ["hdd"]}]), "b"),
        (json!([{"key": "disk", "operator": "NotIn", "values": ["hdd"]}]), "a"),
        (json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]), "b"),
        (json!([{"key": "gen", "operator": "Lt", "values": ["4"]}]), "a"),
        (json!([{"key": "gpu", "operator": "Exists"}]), "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."),
    ] {
        assert_eq!(decide(&s, &pod("p", "1", affinity(exprs.clone()))), want, "{exprs}");
    }
    let fields = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}});
    assert_eq!(decide(&s, &pod("p", "1", fields)), "b");
    let preferred = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}}]}}}});
    assert_eq!(decide(&s, &pod("p", "1", preferred)), "b");
}

#[test]
fn host_ports_conflict() {
    let nodes = [
        node("a", "4", "8Gi", json!({})),
        node("b", "4", "8Gi", json!({})),
    ];
    let ported = |name: &str| {
        pod(
            name,
            "100m",
            json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
        )
    };
    let s = snapshot(&nodes, &[on("a", ported("x"))]);
    assert_eq!(decide(&s, &ported("p")), "b");
    let s = snapshot(&nodes, &[on("a", ported("x")), on("b", ported("y"))]);
    assert!(decide(&s, &ported("p")).starts_with(
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    ));
}

fn zoned(name: &str, zone: &str) -> Value {
    node(
        name,
        "4",
        "8Gi",
        json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}}),
    )
}

#[test]
fn pod_affinity_and_anti_affinity() {
    let nodes = [zoned("a1", "a"), zoned("b1", "b"), zoned("b2", "b")];
    let cache = pod(
        "cache",
        "100m",
        json!({"metadata": {"labels": {"app": "cache"}}}),
    );
    let term = |key: &str| json!([{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": key}]);
    let near = pod(
        "web",
        "100m",
        json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("topology.kubernetes.io/zone")}}}}),
    );
    let s = snapshot(&nodes, &[on("a1", cache.clone())]);
    assert_eq!(decide(&s, &near), "a1");
    let alone = snapshot(&nodes, &[]);
    assert!(decide(&alone, &near)
        .starts_with("0/3 nodes are available: 3 node(s) didn't match pod affinity rules."));
    // The first of a group that matches its own term may go anywhere.
    let first = pod(
        "cache2",
        "100m",
        json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("topology.kubernetes.io/zone")}}}}),
    );
    assert!(!decide(&alone, &first).starts_with("0/"));

    let apart = pod(
        "cache3",
        "100m",
        json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("topology.kubernetes.io/zone")}}}}),
    );
    let s = snapshot(&nodes, &[on("b1", cache.clone())]);
    assert_eq!(decide(&s, &apart), "a1");
    // A placed pod's anti-affinity keeps others out of its zone.
    let s = snapshot(&nodes, &[on("b1", on("b1", apart.clone()))]);
    let other_cache = pod(
        "cache4",
        "100m",
        json!({"metadata": {"labels": {"app": "cache"}}}),
    );
    assert_eq!(decide(&s, &other_cache), "a1");
    let s = snapshot(&[zoned("b1", "b")], &[on("b1", apart)]);
    assert!(decide(&s, &other_cache).starts_with(
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    ));
    // Preferred anti-affinity spreads.
    let soft = pod(
        "w",
        "100m",
        json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}}]}}}}),
    );
    let s = snapshot(&nodes, &[on("b1", cache)]);
    assert_eq!(decide(&s, &soft), "a1");
}

#[test]
fn topology_spread_constraints() {
    let nodes = [
        zoned("a1", "a"),
        zoned("a2", "a"),
        zoned("b1", "b"),
        node("nolabel", "4", "8Gi", json!({})),
    ];
    let web = |name: &str, when: &str| {
        pod(
            name,
            "100m",
            json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        )
    };
    let s = snapshot(&nodes, &[on("a1", web("w1", "DoNotSchedule"))]);
    assert_eq!(decide(&s, &web("w2", "DoNotSchedule")), "b1");
    let s = snapshot(
        &[zoned("a1", "a"), zoned("b1", "b")],
        &[
            on("a1", web("w1", "DoNotSchedule")),
            on("b1", web("w2", "DoNotSchedule")),
        ],
    );
    assert!(!decide(&s, &web("w3", "DoNotSchedule")).starts_with("0/"));
    let s = snapshot(&[node("nolabel", "4", "8Gi", json!({}))], &[]);
    assert!(decide(&s, &web("w", "DoNotSchedule")).starts_with("0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."));
    // ScheduleAnyway prefers the emptier zone without requiring it.
    let s = snapshot(
        &[zoned("a1", "a"), zoned("b1", "b")],
        &[on("a1", web("w1", "ScheduleAnyway"))],
    );
    assert_eq!(decide(&s, &web("w2", "ScheduleAnyway")), "b1");
}

#[test]
fn a_controllers_replicas_spread_by_default() {
    let nodes = [
        node("a", "8", "16Gi", json!({})),
        node("b", "8", "16Gi", json!({})),
        node("c", "8", "16Gi", json!({})),
    ];
    let replica = |name: &str| {
        pod(
            name,
            "100m",
            json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]}}),
        )
    };
    let mut s = snapshot(&nodes, &[]);
    let mut placed = std::collections::BTreeMap::new();
    for i in 0..9 {
        let p = replica(&format!("r{i}"));
        let chosen = decide(&s, &p);
        *placed.entry(chosen.clone()).or_insert(0) += 1;
        s.place(Arc::new(PodInfo::from_json(&on(&chosen, p))), &chosen);
    }
    assert_eq!(
        placed.values().copied().collect::<Vec<_>>(),
        [3, 3, 3],
        "{placed:?}"
    );
}

#[test]
fn a_higher_priority_pod_preempts_the_fewest_lowest_pods() {
    let nodes = [
        node("a", "4", "8Gi", json!({})),
        node("b", "4", "8Gi", json!({})),
    ];
    let low = |name: &str, cpu: &str, priority: i32| {
        pod(name, cpu, json!({"spec": {"priority": priority}}))
    };
    let s = snapshot(
        &nodes,
        &[
            on("a", low("a-low", "2", 10)),
            on("a", low("a-mid", "2", 500)),
            on("b", low("b-low1", "1", 10)),
            on("b", low("b-low2", "1", 10)),
            on("b", low("b-mid", "2", 500)),
        ],
    );
    let urgent = pod("urgent", "2", json!({"spec": {"priority": 1000}}));
    let diagnosis = schedule(&s, &PodInfo::from_json(&urgent), 0).unwrap_err();
    let preemption = diagnosis.preemption.expect("preemption helps");
    // On a, one victim of priority 10 suffices; on b, two would be needed.
    assert_eq!(preemption.node, "a");
    assert_eq!(
        preemption
            .victims
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["a-low"]
    );
    let never = pod(
        "polite",
        "2",
        json!({"spec": {"priority": 1000, "preemptionPolicy": "Never"}}),
    );
    assert_eq!(
        decide(&s, &never),
        "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
}

#[test]
fn zones_are_spread_over_and_their_counts_follow_pods_and_nodes() {
    let nodes = [zoned("x1", "x"), zoned("x2", "x"), zoned("y1", "y")];
    let replica = |name: &str| {
        pod(
            name,
            "100m",
            json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]}}),
        )
    };
    let mut s = snapshot(&nodes, &[]);
    for i in 0..6 {
        let p = replica(&format!("r{i}"));
        let chosen = decide(&s, &p);
        s.place(Arc::new(PodInfo::from_json(&on(&chosen, p))), &chosen);
    }
    // Two per node: hostname and zone spreading weigh against each other as in Kubernetes'
    // system defaults, which also end at 2-2-2 here.
    assert_eq!((s.in_zone("x", "rs-1"), s.in_zone("y", "rs-1")), (4, 2));
    let on_nodes = |s: &Snapshot| -> Vec<(String, u32)> {
        let names = s.nodes().iter().map(|n| n.name.clone());
        let mut counts: Vec<_> = names.zip(s.on_nodes("rs-1")).collect();
        counts.sort();
        counts
    };
    let two_each = vec![("x1".into(), 2), ("x2".into(), 2), ("y1".into(), 2)];
    assert_eq!(on_nodes(&s), two_each);
    assert_eq!(s.on_nodes("another").iter().sum::<u32>(), 0);
    let r0_node = s
        .nodes()
        .iter()
        .find(|n| n.pods.iter().any(|p| p.uid == "uid-r0"));
    let r0_node = r0_node.unwrap().name.clone();
    s.unplace("uid-r0");
    assert_eq!(s.in_zone("x", "rs-1") + s.in_zone("y", "rs-1"), 5);
    let one_less: u32 = on_nodes(&s)
        .iter()
        .map(|(name, n)| if *name == r0_node { n + 1 } else { *n })
        .sum();
    assert_eq!(one_less, 6);
    let y_before = s.in_zone("y", "rs-1");
    // A node moving to another zone takes its pods' counts along; a node removed, its pods'.
    let moved = zoned("y1", "z");
    s.set_node(NodeInfo::from_json(&moved));
    assert_eq!(
        (s.in_zone("y", "rs-1"), s.in_zone("z", "rs-1")),
        (0, y_before)
    );
    s.remove_node("y1");
    assert_eq!(s.in_zone("z", "rs-1"), 0);
    assert!(on_nodes(&s).iter().all(|(name, _)| name != "y1"));
    // Back, with the pods that waited for it.
    s.set_node(NodeInfo::from_json(&moved));
    let y1 = on_nodes(&s).into_iter().find(|(name, _)| name == "y1");
    assert_eq!(y1, Some(("y1".into(), y_before)));
    assert_eq!(s.in_zone("z", "rs-1"), y_before);
}
