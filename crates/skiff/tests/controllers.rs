//! The controllers inside `skiff server`, seen through the real kubectl: Deployments make
//! ReplicaSets and pods, scale, roll to a new template, roll back, and take their dependents
//! when deleted. Where pods must run, a hollow node reports them running.

mod common;

use std::time::{Duration, Instant};

use common::*;
use skiff_testkit::{HollowConfig, HollowNodes};

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

    // Events explain what the controllers did: exactly 3 pods made, none made too many.
    let created = kubectl(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulCreate",
            "-o",
            "name",
        ],
    )
    .out();
    assert_eq!(created.lines().count(), 3, "{created}");
    let deleted = kubectl(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulDelete",
            "-o",
            "name",
        ],
    )
    .out();
    assert_eq!(deleted, "", "no pod was made in surplus");
    let described = kubectl(&server, &["describe", "deployment", "api-server"]).out();
    assert!(
        described.contains("ScalingReplicaSet")
            && described.contains("Scaled up replica set api-server-"),
        "{described}"
    );

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

#[test]
fn rollout_status_follows_a_rolling_update_to_the_end() {
    let server = server();
    let _node = HollowNodes::start(&server, HollowConfig::default());
    kubectl(
        &server,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    let first = kubectl(
        &server,
        &[
            "rollout",
            "status",
            "deployment/api-server",
            "--timeout=60s",
        ],
    )
    .out();
    assert!(
        first.contains("deployment \"api-server\" successfully rolled out"),
        "{first}"
    );
    let ready = kubectl(
        &server,
        &[
            "get",
            "deploy",
            "api-server",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.availableReplicas}",
        ],
    )
    .out();
    assert_eq!(ready, "3/3");

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
    let second = kubectl(
        &server,
        &[
            "rollout",
            "status",
            "deployment/api-server",
            "--timeout=60s",
        ],
    )
    .out();
    // (The fake node makes pods ready at once: the rollout may be over before kubectl looks.)
    assert!(
        second.contains("deployment \"api-server\" successfully rolled out"),
        "{second}"
    );
    eventually("the old pods to go", || {
        let sets = replica_sets(&server);
        (sets != "1 my-api:v2.1 0\n2 my-api:v2.2 3\n").then_some(sets)
    });
    let images = kubectl(
        &server,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    )
    .out();
    assert_eq!(images, "my-api:v2.2 my-api:v2.2 my-api:v2.2");
}

#[test]
fn with_max_unavailable_zero_availability_never_drops() {
    let server = server();
    let _node = HollowNodes::start(&server, HollowConfig::default());
    let manifest = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace("  replicas: 3\n", "  replicas: 3\n  strategy:\n    rollingUpdate:\n      maxUnavailable: 0\n      maxSurge: 1\n");
    apply(&server, &manifest);
    kubectl(
        &server,
        &[
            "rollout",
            "status",
            "deployment/api-server",
            "--timeout=60s",
        ],
    )
    .out();
    let watching = watch(
        &server,
        &[
            "get",
            "deploy",
            "api-server",
            "-w",
            "-o",
            "jsonpath={.status.availableReplicas} {.status.updatedReplicas} {.status.replicas}{\"\\n\"}",
        ],
    );
    let rx = &watching.lines;
    std::thread::sleep(Duration::from_millis(500));
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
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        seen.push(line.clone());
        let fields: Vec<i64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert!(
            fields.first().is_some_and(|available| *available >= 3),
            "availability dropped: {seen:?}"
        );
        assert!(
            fields.get(2).is_none_or(|total| *total <= 4),
            "more than one surge pod: {seen:?}"
        );
        let rolling = seen.iter().any(|l| l != "3 3 3");
        if fields == [3, 3, 3] && rolling {
            break;
        }
    }
    drop(watching);
    assert_eq!(seen.last().map(String::as_str), Some("3 3 3"), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.ends_with(" 4")),
        "the rollout went through a surge pod: {seen:?}"
    );
}

#[test]
fn propagation_policies_keep_their_promises() {
    let server = server();
    let manifest = std::fs::read_to_string(example("api-server.yaml")).unwrap();
    // Each its own name and selector (overlapping selectors would let one adopt the other's).
    let named = |name: &str| {
        manifest
            .replace("name: api-server", &format!("name: {name}"))
            .replace("app: api", &format!("app: {name}"))
    };
    apply(&server, &named("orphaning"));
    apply(&server, &named("foreground"));
    eventually("6 pods", || {
        (pods(&server) != 6).then(|| format!("{} pods", pods(&server)))
    });

    // Orphan: the Deployment goes; its ReplicaSet and pods stay, no longer owned.
    let out = kubectl(
        &server,
        &[
            "delete",
            "deployment",
            "orphaning",
            "--cascade=orphan",
            "--timeout=20s",
        ],
    )
    .out();
    assert!(out.contains("deleted"), "{out}");
    kubectl(&server, &["get", "deployment", "orphaning"]).err();
    let sets = json(&kubectl(&server, &["get", "rs", "-o", "json"]).out());
    let orphan = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rs| {
            rs["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("orphaning-")
        })
        .expect("the orphaned ReplicaSet stays");
    assert!(
        orphan["metadata"]
            .get("ownerReferences")
            .is_none_or(|r| r.as_array().unwrap().is_empty()),
        "{orphan}"
    );
    assert_eq!(pods(&server), 6);

    // A new Deployment with the same selector adopts the orphaned ReplicaSet and its pods.
    apply(&server, &named("orphaning"));
    let uid = kubectl(
        &server,
        &[
            "get",
            "deploy",
            "orphaning",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    )
    .out();
    eventually("the adoption", || {
        let owner = kubectl(
            &server,
            &[
                "get",
                "rs",
                orphan["metadata"]["name"].as_str().unwrap(),
                "-o",
                "jsonpath={.metadata.ownerReferences[0].uid}",
            ],
        )
        .out();
        (owner != uid).then_some(owner)
    });
    let sets = kubectl(&server, &["get", "rs", "-o", "name"]).out();
    assert_eq!(
        sets.lines().filter(|l| l.contains("orphaning-")).count(),
        1,
        "no second ReplicaSet: {sets}"
    );
    assert_eq!(pods(&server), 6);

    // Foreground: the Deployment waits for its ReplicaSet and pods to go, then goes.
    kubectl(
        &server,
        &[
            "delete",
            "deployment",
            "foreground",
            "--cascade=foreground",
            "--timeout=20s",
        ],
    )
    .out();
    kubectl(&server, &["get", "deployment", "foreground"]).err();
    let left = kubectl(&server, &["get", "rs,pods", "-o", "name"]).out();
    assert!(!left.contains("foreground-"), "{left}");
    assert_eq!(pods(&server), 3, "the orphaned pods stay: {left}");
}

#[test]
fn a_rollout_that_makes_no_progress_fails_after_its_deadline() {
    let server = server();
    // No node: the pods never become ready.
    let manifest = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace(
            "  replicas: 3\n",
            "  replicas: 3\n  progressDeadlineSeconds: 2\n",
        );
    apply(&server, &manifest);
    let started = Instant::now();
    let err = kubectl(
        &server,
        &[
            "rollout",
            "status",
            "deployment/api-server",
            "--timeout=30s",
        ],
    )
    .err();
    assert!(
        err.contains("deployment \"api-server\" exceeded its progress deadline"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "noticed in {:?}",
        started.elapsed()
    );
    let reason = kubectl(
        &server,
        &[
            "get",
            "deploy",
            "api-server",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
    )
    .out();
    assert_eq!(reason, "ProgressDeadlineExceeded");
}

#[test]
fn old_replica_sets_beyond_the_history_limit_go() {
    let server = server();
    let _node = HollowNodes::start(&server, HollowConfig::default());
    let manifest = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace(
            "  replicas: 3\n",
            "  replicas: 3\n  revisionHistoryLimit: 1\n",
        );
    apply(&server, &manifest);
    for version in ["v2.2", "v2.3", "v2.4"] {
        kubectl(
            &server,
            &[
                "set",
                "image",
                "deployment/api-server",
                &format!("server=my-api:{version}"),
            ],
        )
        .out();
        kubectl(
            &server,
            &[
                "rollout",
                "status",
                "deployment/api-server",
                "--timeout=60s",
            ],
        )
        .out();
    }
    eventually("one old ReplicaSet kept", || {
        let sets = replica_sets(&server);
        (sets != "3 my-api:v2.3 0\n4 my-api:v2.4 3\n").then_some(sets)
    });
}

#[test]
fn events_expire_after_their_time_to_live() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_skiff"));
    let server = SkiffServer::start(bin, &["--event-ttl", "3s"]).unwrap();
    kubectl(
        &server,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    eventually("events", || {
        let n = kubectl(&server, &["get", "events", "-o", "name"])
            .out()
            .lines()
            .count();
        (n == 0).then(|| "none yet".to_string())
    });
    eventually("their expiry", || {
        let left = kubectl(&server, &["get", "events", "-o", "name"]).out();
        (!left.is_empty()).then_some(left)
    });
    let bad = SkiffServer::start(bin, &["--event-ttl", "soon"])
        .err()
        .unwrap_or_default();
    assert!(
        bad.contains("\"soon\" is not a duration like 24h, 90m or 30s"),
        "{bad}"
    );
}
