//! The controllers inside `skiff server`, seen through the real kubectl: Deployments make
//! ReplicaSets and pods, scale, roll to a new template, roll back, and take their dependents
//! when deleted. No node runs the pods yet (issue 8), so they stay Pending.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs `check` until it holds, for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            None => return,
            Some(state) => last = state,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen; last seen: {last}");
}

/// The names and images of the ReplicaSets, with their replicas and revisions.
fn replica_sets(server: &SkiffServer) -> String {
    kubectl(server, &[
        "get", "rs", "--sort-by=.metadata.annotations.deployment\\.kubernetes\\.io/revision",
        "-o", "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.spec.template.spec.containers[0].image} {.spec.replicas}{\"\\n\"}{end}",
    ])
    .out()
}

fn pods(server: &SkiffServer) -> usize {
    kubectl(server, &["get", "pods", "-o", "name"])
        .out()
        .lines()
        .count()
}

#[test]
fn the_articles_deployment_gets_its_pods_and_rolls() {
    let server = server();
    kubectl(
        &server,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    eventually("3 pods", || {
        (pods(&server) != 3).then(|| format!("{} pods", pods(&server)))
    });
    let pod = json(&kubectl(&server, &["get", "pods", "-o", "json"]).out())["items"][0].clone();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert_eq!(pod["metadata"]["labels"]["app"], "api");
    assert_eq!(pod["spec"]["containers"][0]["image"], "my-api:v2.1");
    assert_eq!(pod["status"]["phase"], "Pending");
    eventually("the status", || {
        let d = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
        (d["status"]["updatedReplicas"] != 3 || d["status"]["observedGeneration"] != 1)
            .then(|| d["status"].to_string())
    });

    kubectl(&server, &["scale", "deployment/api-server", "--replicas=5"]).out();
    eventually("5 pods", || {
        (pods(&server) != 5).then(|| format!("{} pods", pods(&server)))
    });
    kubectl(&server, &["scale", "deployment/api-server", "--replicas=3"]).out();
    eventually("3 pods again", || {
        (pods(&server) != 3).then(|| format!("{} pods", pods(&server)))
    });

    // A new template: a second ReplicaSet, within maxSurge 25% (1 of 3) and maxUnavailable
    // 25% (0 of 3); with no node the new pod never becomes available, so the rollout waits.
    kubectl(
        &server,
        &[
            "set",
            "image",
            "deployment/api-server",
            "server=my-api:v2.2",
        ],
    )
    .out();
    eventually("the second revision", || {
        let sets = replica_sets(&server);
        (sets != "1 my-api:v2.1 3\n2 my-api:v2.2 1\n").then_some(sets)
    });
    let history = kubectl(&server, &["rollout", "history", "deployment/api-server"]).out();
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    // Undo adopts the first ReplicaSet again, as revision 3. The v2.2 pod never became
    // available, and with maxUnavailable 0 of 3 nothing may go until pods run (issue 8).
    kubectl(&server, &["rollout", "undo", "deployment/api-server"]).out();
    eventually("the rollback", || {
        let sets = replica_sets(&server);
        (sets != "2 my-api:v2.2 1\n3 my-api:v2.1 3\n").then_some(sets)
    });

    // Deleting the Deployment takes its ReplicaSets and pods (background propagation).
    kubectl(&server, &["delete", "deployment", "api-server"]).out();
    eventually("no pods", || {
        let left = kubectl(&server, &["get", "rs,pods", "-o", "name"]).out();
        (!left.is_empty()).then_some(left)
    });
}
