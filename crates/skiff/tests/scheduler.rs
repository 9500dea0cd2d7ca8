//! The scheduler through the real kubectl, with hollow nodes: explanations of pods that fit
//! nowhere, taints, cordon and drain, spreading, preemption.

mod common;

use common::*;
use skiff_testkit::{HollowConfig, HollowNodes};

/// Where each pod of a selector runs: `pod node` lines.
fn placement(server: &skiff_testkit::SkiffServer, selector: &str) -> Vec<(String, String)> {
    kubectl(
        server,
        &[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ],
    )
    .out()
    .lines()
    .filter_map(|l| {
        l.split_once(' ')
            .map(|(p, n)| (p.to_string(), n.to_string()))
    })
    .collect()
}

fn deployment(name: &str, replicas: u32, cpu: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      {extra_spec}
      containers:
      - name: c
        image: my-api:v2.1
        resources: {{requests: {{cpu: {cpu}}}}}
"
    )
}

#[test]
fn a_pod_that_fits_nowhere_is_explained_by_describe() {
    let server = server();
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: 3,
            cpu: "2".into(),
            ..HollowConfig::default()
        },
    );
    apply(
        &server,
        "apiVersion: v1
kind: Pod
metadata: {name: huge}
spec:
  containers:
  - {name: c, image: my-api:v2.1, resources: {requests: {cpu: '8'}}}
",
    );
    eventually("a FailedScheduling explanation", || {
        let described = kubectl(&server, &["describe", "pod", "huge"]).out();
        let ok = described.contains("FailedScheduling")
            && described.contains("0/3 nodes are available: 3 Insufficient cpu.");
        (!ok).then_some(described)
    });
    let phase = kubectl(
        &server,
        &[
            "get",
            "pod",
            "huge",
            "-o",
            "jsonpath={.status.phase} {.status.conditions[0].reason}",
        ],
    )
    .out();
    assert_eq!(phase, "Pending Unschedulable");
}

#[test]
fn gpu_tainted_nodes_only_take_pods_that_tolerate_them() {
    let server = server();
    let _plain = HollowNodes::start(
        &server,
        HollowConfig {
            count: 2,
            prefix: "cpu-".into(),
            ..HollowConfig::default()
        },
    );
    let _gpu = HollowNodes::start(
        &server,
        HollowConfig {
            count: 1,
            prefix: "gpu-".into(),
            labels: vec![("accelerator".into(), "nvidia".into())],
            taints: vec![
                serde_json::json!({"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}),
            ],
            ..HollowConfig::default()
        },
    );
    apply(&server, &deployment("web", 6, "100m", ""));
    apply(&server, &deployment("train", 1, "100m",
        "nodeSelector: {accelerator: nvidia}\n      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]"));
    eventually("all pods placed", || {
        let placed = placement(&server, "app in (web,train)");
        (placed.len() != 7 || placed.iter().any(|(_, n)| n.is_empty()))
            .then(|| format!("{placed:?}"))
    });
    for (pod, node) in placement(&server, "app=web") {
        assert!(node.starts_with("cpu-"), "{pod} went to {node}");
    }
    assert_eq!(placement(&server, "app=train")[0].1, "gpu-0");
}

#[test]
fn replicas_spread_and_cordon_and_drain_move_them() {
    let server = server();
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: 3,
            ..HollowConfig::default()
        },
    );
    apply(&server, &deployment("web", 6, "100m", ""));
    let per_node = |server| {
        let mut counts = std::collections::BTreeMap::new();
        for (_, node) in placement(server, "app=web") {
            *counts.entry(node).or_insert(0) += 1;
        }
        counts
    };
    eventually("two replicas on each node", || {
        let counts = per_node(&server);
        (counts.values().copied().collect::<Vec<_>>() != [2, 2, 2]).then(|| format!("{counts:?}"))
    });
    kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .out();
    let drained = kubectl(
        &server,
        &["drain", "hollow-0", "--ignore-daemonsets", "--timeout=60s"],
    )
    .out();
    assert!(drained.contains("node/hollow-0 drained"), "{drained}");
    let node = json(&kubectl(&server, &["get", "node", "hollow-0", "-o", "json"]).out());
    assert_eq!(node["spec"]["unschedulable"], true, "drain cordons");
    eventually("six replicas on the other nodes", || {
        let placed = placement(&server, "app=web");
        let moved = placed.len() == 6
            && placed
                .iter()
                .all(|(_, n)| n == "hollow-1" || n == "hollow-2");
        (!moved).then(|| format!("{placed:?}"))
    });
    kubectl(&server, &["uncordon", "hollow-0"]).out();
    kubectl(&server, &["scale", "deployment/web", "--replicas=9"]).out();
    eventually("new replicas use the uncordoned node", || {
        let counts = per_node(&server);
        (counts.get("hollow-0").copied().unwrap_or(0) == 0 || counts.values().sum::<i32>() != 9)
            .then(|| format!("{counts:?}"))
    });
}

#[test]
fn drain_stops_at_a_disruption_budget() {
    let server = server();
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: 3,
            ..HollowConfig::default()
        },
    );
    apply(&server, &deployment("web", 3, "100m", ""));
    eventually("a replica on each node", || {
        let mut nodes: Vec<String> = placement(&server, "app=web")
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        nodes.sort();
        (nodes != ["hollow-0", "hollow-1", "hollow-2"]).then(|| format!("{nodes:?}"))
    });
    apply(
        &server,
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 3
  selector: {matchLabels: {app: web}}
",
    );
    let budget = |server: &skiff_testkit::SkiffServer| {
        json(&kubectl(server, &["get", "pdb", "web", "-o", "json"]).out())["status"].clone()
    };
    eventually(
        "the budget counts three healthy pods and allows no disruption",
        || {
            let status = budget(&server);
            let counted = (status["currentHealthy"] == 3 && status["desiredHealthy"] == 3)
                && (status["expectedPods"] == 3 && status["disruptionsAllowed"] == 0);
            (!counted).then(|| status.to_string())
        },
    );
    let listed = kubectl(&server, &["get", "pdb"]).out();
    let header: Vec<&str> = listed
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{listed}"
    );
    let row: Vec<&str> = listed
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "3", "N/A", "0"], "{listed}");

    // The drain cordons the node, then every eviction is refused until its time is up.
    let on_first = placement(&server, "app=web")
        .into_iter()
        .find(|(_, n)| n == "hollow-0")
        .map(|(p, _)| p)
        .unwrap();
    let refused = kubectl(&server, &["drain", "hollow-0", "--timeout=8s"]).err();
    assert!(
        refused.contains(&format!(
            "error when evicting pods/\"{on_first}\" -n \"default\""
        )) && refused.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{refused}"
    );
    assert!(placement(&server, "app=web").contains(&(on_first.clone(), "hollow-0".to_string())));
    // The API's answer itself: 429 with the budget's reason as the cause.
    let eviction = format!(
        "{{\"apiVersion\": \"policy/v1\", \"kind\": \"Eviction\", \"metadata\": {{\"name\": \"{on_first}\"}}}}"
    );
    let path = format!("/api/v1/namespaces/default/pods/{on_first}/eviction");
    let answer = kubectl_stdin(&server, &["create", "--raw", &path, "-f", "-"], &eviction).err();
    assert!(
        answer.contains(
            "Error from server (TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{answer}"
    );

    // A budget that allows one disruption lets the drain through; the replica moves.
    apply(
        &server,
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
",
    );
    eventually("the budget allows one disruption", || {
        let status = budget(&server);
        (status["disruptionsAllowed"] != 1).then(|| status.to_string())
    });
    let drained = kubectl(&server, &["drain", "hollow-0", "--timeout=60s"]).out();
    assert!(
        drained.contains(&format!("pod/{on_first} evicted")),
        "{drained}"
    );
    eventually(
        "three replicas on the other nodes, the budget met again",
        || {
            let placed = placement(&server, "app=web");
            let status = budget(&server);
            let moved = placed.len() == 3 && placed.iter().all(|(_, n)| n != "hollow-0");
            (!moved || status["currentHealthy"] != 3 || status["disruptionsAllowed"] != 1)
                .then(|| format!("{placed:?} {status}"))
        },
    );
}

#[test]
fn a_high_priority_pod_preempts_lower_ones() {
    let server = server();
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: 2,
            cpu: "2".into(),
            ..HollowConfig::default()
        },
    );
    apply(
        &server,
        "apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: critical}
value: 1000000
description: the article's API in front of everything else
",
    );
    apply(&server, &deployment("batch", 4, "900m", ""));
    kubectl(
        &server,
        &["rollout", "status", "deployment/batch", "--timeout=60s"],
    )
    .out();
    apply(
        &server,
        "apiVersion: v1
kind: Pod
metadata: {name: urgent}
spec:
  priorityClassName: critical
  containers:
  - {name: c, image: my-api:v2.1, resources: {requests: {cpu: '1'}}}
",
    );
    let priority = kubectl(
        &server,
        &["get", "pod", "urgent", "-o", "jsonpath={.spec.priority}"],
    )
    .out();
    assert_eq!(
        priority, "1000000",
        "admission set the priority from the class"
    );
    eventually("the urgent pod runs", || {
        let phase = kubectl(
            &server,
            &[
                "get",
                "pod",
                "urgent",
                "-o",
                "jsonpath={.status.phase} {.spec.nodeName}",
            ],
        )
        .out();
        (!phase.starts_with("Running hollow-")).then_some(phase)
    });
    let events = kubectl(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "jsonpath={.items[*].message}",
        ],
    )
    .out();
    assert!(events.contains("Preempted by pod"), "{events}");
    let unknown = kubectl_stdin(
        &server,
        &["apply", "-f", "-"],
        "apiVersion: v1
kind: Pod
metadata: {name: nobody}
spec:
  priorityClassName: imaginary
  containers: [{name: c, image: my-api:v2.1}]
",
    )
    .err();
    assert!(
        unknown.contains("no PriorityClass with name imaginary was found"),
        "{unknown}"
    );
}
