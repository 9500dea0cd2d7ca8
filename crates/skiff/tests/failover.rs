//! End to end as root, on a LAN of hosts: a node cut off from the network has its pods replaced
//! on the others while clients of their Service see only a few seconds of errors, and its return
//! leaves exactly the replicas the Deployment asks for.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

const USER_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: user-service
spec:
  selector:
    app: api
  ports:
  - port: 8080
";

fn jsonpath(server: &SkiffServer, args: &[&str], path: &str) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let path = format!("jsonpath={path}");
    all.extend(["-o", &path]);
    kubectl(server, &all).stdout
}

/// The nodes of the api-server's pods that are Ready and not being deleted.
fn ready_replicas(server: &SkiffServer) -> Vec<String> {
    let path = "{range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
    jsonpath(server, &["get", "pods", "-l", "app=api"], path)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() == 2 && fields[1] == "True").then(|| fields[0].to_string())
        })
        .collect()
}

#[test]
fn a_cut_node_is_replaced_and_its_return_leaves_three_replicas() {
    let cluster = LanCluster::start("cut", 3);
    let server = &cluster.server;
    // Spread over the nodes (softly: the replacement must be allowed two on one node).
    let spread = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        whenUnsatisfiable: ScheduleAnyway\n        labelSelector:\n          matchLabels:\n            app: api\n      containers:",
        );
    assert!(spread.contains("topologySpreadConstraints"), "{spread}");
    apply(server, &spread);
    apply(server, USER_SERVICE);
    eventually("a Ready replica on every node", || {
        let mut nodes = ready_replicas(server);
        nodes.sort();
        let want: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        (nodes != want).then(|| format!("{nodes:?}"))
    });
    // A client on the first node, a request every 0.2 s, each given 2 s.
    let client =
        "while true; do if timeout 2 wget -qO- http://user-service:8080/ >/dev/null 2>&1; \
                  then echo ok; else echo FAIL; fi; sleep 0.2; done";
    apply(
        server,
        &busybox_pod("client", "Never", client).replace(
            "spec:\n",
            &format!("spec:\n  nodeName: {}\n", cluster.nodes[0].name),
        ),
    );
    eventually("the client is answered", || {
        let logs = kubectl(server, &["logs", "client"]).stdout;
        (logs.lines().filter(|l| *l == "ok").count() < 5).then_some(logs)
    });

    // Cut the third node off: its link down.
    let cut = &cluster.nodes[2];
    let before = kubectl(server, &["logs", "client"]).stdout.lines().count();
    let began = Instant::now();
    cut.host
        .run(&["ip", "link", "set", "eth0", "down"])
        .unwrap();
    let mut replaced = None;
    while began.elapsed() < Duration::from_secs(40) {
        let nodes = ready_replicas(server);
        if nodes.len() == 3 && !nodes.contains(&cut.name) {
            replaced = Some(began.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let replaced = replaced.expect("the cut node's replica was not replaced within 40 s");
    assert!(
        replaced < Duration::from_secs(15),
        "replaced after {replaced:?}"
    );
    // The client's errors end once the endpoints moved.
    std::thread::sleep(Duration::from_secs(3));
    let logs = kubectl(server, &["logs", "client"]).stdout;
    let during: Vec<&str> = logs.lines().skip(before).collect();
    let failed = during.iter().filter(|l| **l == "FAIL").count();
    let tail: Vec<&&str> = during.iter().rev().take(10).collect();
    assert!(
        tail.iter().all(|l| **l == "ok"),
        "still failing after the replacement: {during:?}"
    );
    // Each failure costs up to 2 s: a few seconds' worth, at most the grace period's.
    assert!(
        failed <= 6,
        "{failed} of {} requests failed: {during:?}",
        during.len()
    );

    // The node comes back: its old pod was deleted from the API, so it is stopped there and
    // exactly three replicas remain.
    cut.host.run(&["ip", "link", "set", "eth0", "up"]).unwrap();
    eventually("the node is Ready again", || {
        let ready = jsonpath(
            server,
            &["get", "node", &cut.name],
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        );
        (ready != "True").then_some(ready)
    });
    // The old pod has its grace period (30 s, which httpd as PID 1 uses up, ignoring SIGTERM)
    // from when the agent sees it deleted, as kubelet gives it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = "{.items[*].metadata.name}";
        let pods = jsonpath(server, &["get", "pods", "-l", "app=api"], names);
        if pods.split_whitespace().count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not three replicas: {pods}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eventually("nothing of the old replica is left on the node", || {
        let sandboxes: Vec<_> = std::fs::read_dir(cut.data.path().join("runtime/pods"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        (!sandboxes.is_empty()).then(|| format!("{sandboxes:?}"))
    });
    eprintln!(
        "replaced after {replaced:?}; {failed} of {} requests failed",
        during.len()
    );
}
