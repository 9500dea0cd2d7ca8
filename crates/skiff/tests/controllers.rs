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

/// The Events of `reason`, as `kubectl get -o <output>` prints them.
fn events(server: &SkiffServer, reason: &str, output: &str) -> String {
    let reason = format!("reason={reason}");
    kubectl(
        server,
        &["get", "events", "--field-selector", &reason, "-o", output],
    )
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
    let created = events(&server, "SuccessfulCreate", "name");
    assert_eq!(created.lines().count(), 3, "{created}");
    let deleted = events(&server, "SuccessfulDelete", "name");
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

#[test]
fn a_replica_sets_many_creations_are_combined_into_counted_events() {
    let server = server();
    let deployment = [
        "create",
        "deployment",
        "many",
        "--image=my-api:v2.1",
        "--replicas=40",
    ];
    kubectl(&server, &deployment).out();
    eventually("40 pods", || {
        (pods(&server) != 40).then(|| format!("{} pods", pods(&server)))
    });
    // Its ReplicaSet counts them, each carrying every label of its template.
    eventually(
        "the ReplicaSet's count of 40 pods, 40 fully labeled",
        || {
            let counts =
                "jsonpath={.items[0].status.replicas}/{.items[0].status.fullyLabeledReplicas}";
            let counts = kubectl(&server, &["get", "rs", "-o", counts]).out();
            (counts != "40/40").then_some(counts)
        },
    );
    // As Kubernetes' recorders: nine events name a pod each, the next ones are combined into
    // one counted event, and the ReplicaSet's budget of 25 events at once drops the last 15.
    // The pods are made in concurrent batches (up to 16), whose combined repeats race to
    // update one event: none may be lost.
    eventually("nine events and one of 16", || {
        let counted = "jsonpath={range .items[*]}{.count} {.message}{\"\\n\"}{end}";
        let events = events(&server, "SuccessfulCreate", counted);
        let singles = events
            .lines()
            .filter(|l| l.starts_with("1 Created pod: "))
            .count();
        let combined: Vec<&str> = events
            .lines()
            .filter(|l| l.contains("(combined from similar events): Created pod: "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        (singles != 9 || combined != ["16"] || events.lines().count() != 10).then_some(events)
    });
}

/// A Deployment of `replicas` pods of my-api:v2.1 that surges by 3 and may lose 2.
fn web(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  strategy:
    rollingUpdate:
      maxSurge: 3
      maxUnavailable: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: server
        image: my-api:v2.1
"
    )
}

fn progressing(server: &SkiffServer, deployment: &str) -> String {
    kubectl(
        server,
        &[
            "get",
            "deploy",
            deployment,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].status} {.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
    )
    .out()
}

#[test]
fn a_paused_deployment_waits_and_scaling_mid_rollout_is_proportional() {
    let server = server();
    let _node = HollowNodes::start(&server, HollowConfig::default());
    apply(&server, &web(10));
    kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .out();

    // Paused: a new template makes no new ReplicaSet, and the condition says why.
    let out = kubectl(&server, &["rollout", "pause", "deployment/web"]).out();
    assert_eq!(out, "deployment.apps/web paused\n");
    kubectl(
        &server,
        &["set", "image", "deployment/web", "server=my-api:v2.2"],
    )
    .out();
    eventually("the paused condition", || {
        let p = progressing(&server, "web");
        (p != "Unknown DeploymentPaused").then_some(p)
    });
    let status = kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--watch=false"],
    )
    .out();
    assert_eq!(
        status,
        "Waiting for deployment \"web\" rollout to finish: 0 out of 10 new replicas have been updated...\n"
    );
    // Scaling still works while paused, on the ReplicaSet there is.
    kubectl(&server, &["scale", "deployment/web", "--replicas=12"]).out();
    eventually("12 replicas of v2.1", || {
        let sets = replica_sets(&server);
        (sets != "1 my-api:v2.1 12\n").then_some(sets)
    });
    kubectl(&server, &["scale", "deployment/web", "--replicas=10"]).out();

    // New pods that can never be placed stall the rollout where Kubernetes' documentation
    // shows it: 8 old and 5 new pods (10 + 3 surge; 8 must stay available).
    kubectl(
        &server,
        &[
            "patch",
            "deployment/web",
            "-p",
            r#"{"spec":{"template":{"spec":{"nodeSelector":{"nowhere":"true"}}}}}"#,
        ],
    )
    .out();
    let out = kubectl(&server, &["rollout", "resume", "deployment/web"]).out();
    assert_eq!(out, "deployment.apps/web resumed\n");
    eventually("the stalled rollout", || {
        let sets = replica_sets(&server);
        (sets != "1 my-api:v2.1 8\n2 my-api:v2.2 5\n").then_some(sets)
    });
    let p = progressing(&server, "web");
    assert_eq!(p, "True ReplicaSetUpdated");

    // Scaled to 15 mid-rollout: the 5 more are shared in proportion, 3 old and 2 new.
    kubectl(&server, &["scale", "deployment/web", "--replicas=15"]).out();
    eventually("the proportional scale", || {
        let sets = replica_sets(&server);
        (sets != "1 my-api:v2.1 11\n2 my-api:v2.2 7\n").then_some(sets)
    });
    let events = kubectl(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=ScalingReplicaSet",
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ],
    )
    .out();
    assert!(events.contains("from 8 to 11"), "{events}");
    assert!(events.contains("from 5 to 7"), "{events}");
}

#[test]
fn a_relabelled_pod_is_released_and_replaced() {
    let server = server();
    let _node = HollowNodes::start(&server, HollowConfig::default());
    apply(&server, &web(3));
    kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .out();
    let pod = kubectl(
        &server,
        &["get", "pods", "-o", "jsonpath={.items[0].metadata.name}"],
    )
    .out();
    // Taken out of the Deployment for debugging, as users of Kubernetes do.
    kubectl(&server, &["label", "pod", &pod, "app=debug", "--overwrite"]).out();
    eventually("the release", || {
        let owners = kubectl(
            &server,
            &[
                "get",
                "pod",
                &pod,
                "-o",
                "jsonpath={.metadata.ownerReferences}",
            ],
        )
        .out();
        (!owners.is_empty()).then_some(owners)
    });
    eventually("a replacement", || {
        let web = kubectl(&server, &["get", "pods", "-l", "app=web", "-o", "name"]).out();
        (web.lines().count() != 3).then_some(web)
    });
    assert_eq!(pods(&server), 4, "the released pod stays");
}

#[test]
fn owners_of_any_kind_take_their_dependents_and_dangling_references_go() {
    let server = server();
    // Creates a ConfigMap or a Secret; answers its uid.
    let object = |kind: &str, name: &str| {
        let mut args = vec!["create", kind];
        if kind == "secret" {
            args.push("generic");
        }
        args.extend([name, "--from-literal=k=v", "-o", "jsonpath={.metadata.uid}"]);
        kubectl(&server, &args).out()
    };
    let owned = |name: &str, owners: &[(&str, &str, &str, bool)]| {
        let refs: Vec<serde_json::Value> = owners
            .iter()
            .map(|(kind, owner, uid, block)| {
                serde_json::json!({"apiVersion": "v1", "kind": kind, "name": owner, "uid": uid,
                    "blockOwnerDeletion": block})
            })
            .collect();
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "ownerReferences": refs}});
        apply(&server, &cm.to_string());
    };
    let exists = |name: &str| kubectl(&server, &["get", "configmap", name]).ok;
    let owner = object("configmap", "owner");
    let keeper = object("secret", "keeper");
    owned("child", &[("ConfigMap", "owner", &owner, false)]);
    owned(
        "shared",
        &[
            ("ConfigMap", "owner", &owner, false),
            ("Secret", "keeper", &keeper, false),
        ],
    );
    // An owner that never existed: the dependent goes after a moment.
    owned(
        "dangling",
        &[(
            "ConfigMap",
            "ghost",
            "0b3e0bd4-7a4e-4c1b-a5b8-2f4c3c0e9d11",
            false,
        )],
    );
    eventually("the dangling dependent gone", || {
        exists("dangling").then(|| "still there".into())
    });
    assert!(exists("child") && exists("shared"));

    // Background: the owner's only dependent goes; a dependent with another owner stays,
    // without the reference.
    kubectl(&server, &["delete", "configmap", "owner"]).out();
    eventually("the child gone", || {
        exists("child").then(|| "still there".into())
    });
    let refs = kubectl(
        &server,
        &[
            "get",
            "configmap",
            "shared",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ],
    )
    .out();
    assert_eq!(refs, "keeper");

    // Foreground and orphan on a kind that is not a workload.
    let fg = object("secret", "fg");
    owned("fg-child", &[("Secret", "fg", &fg, true)]);
    let or = object("secret", "or");
    owned("or-child", &[("Secret", "or", &or, true)]);
    kubectl(
        &server,
        &[
            "delete",
            "secret",
            "fg",
            "--cascade=foreground",
            "--timeout=20s",
        ],
    )
    .out();
    kubectl(&server, &["get", "secret", "fg"]).err();
    assert!(!exists("fg-child"), "deleted before its owner");
    kubectl(
        &server,
        &[
            "delete",
            "secret",
            "or",
            "--cascade=orphan",
            "--timeout=20s",
        ],
    )
    .out();
    kubectl(&server, &["get", "secret", "or"]).err();
    let refs = kubectl(
        &server,
        &[
            "get",
            "configmap",
            "or-child",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ],
    )
    .out();
    assert_eq!(refs, "", "orphaned");
}

#[test]
fn pods_that_cannot_be_created_say_why() {
    let server = server();
    let manifest = web(3).replace(
        "      containers:\n",
        "      priorityClassName: urgent\n      containers:\n",
    );
    apply(&server, &manifest);
    let failure = |kind: &str| {
        kubectl(
            &server,
            &[
                "get",
                kind,
                "-o",
                "jsonpath={.items[0].status.conditions[?(@.type==\"ReplicaFailure\")].reason}: {.items[0].status.conditions[?(@.type==\"ReplicaFailure\")].message}",
            ],
        )
        .out()
    };
    let want = "FailedCreate: pods \"web-";
    eventually("the ReplicaSet's failure", || {
        let f = failure("rs");
        (!f.starts_with(want)
            || !f.ends_with("is forbidden: no PriorityClass with name urgent was found"))
        .then_some(f)
    });
    eventually("the Deployment's failure", || {
        let f = failure("deploy");
        (!f.starts_with(want)).then_some(f)
    });
    let events = kubectl(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=FailedCreate",
            "-o",
            "jsonpath={.items[0].type} {.items[0].message}",
        ],
    )
    .out();
    assert!(
        events.starts_with("Warning Error creating: pods \"web-"),
        "{events}"
    );
    // Once the class exists the pods are made and the condition goes.
    kubectl(
        &server,
        &["create", "priorityclass", "urgent", "--value=1000"],
    )
    .out();
    eventually("3 pods", || {
        (pods(&server) != 3).then(|| format!("{} pods", pods(&server)))
    });
    eventually("no failure left", || {
        let f = failure("rs") + &failure("deploy");
        (f != ": : ").then_some(f)
    });
}
