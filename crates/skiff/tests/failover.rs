//! End to end as root, on a LAN of hosts: a node cut off from the network or whose agent is
//! frozen has its pods replaced on the others while clients of their Service see only a few
//! seconds of errors, and its return leaves exactly the replicas the Deployment asks for; a
//! server away for a minute evicts nothing, and an agent restarted meanwhile keeps its pods.

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

/// The article's Deployment spread over the nodes (softly: a replacement must be allowed two
/// on one node), a Ready replica on each.
fn spread_api_server(cluster: &LanCluster) {
    let spread = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        whenUnsatisfiable: ScheduleAnyway\n        labelSelector:\n          matchLabels:\n            app: api\n      containers:",
        );
    assert!(spread.contains("topologySpreadConstraints"), "{spread}");
    apply(&cluster.server, &spread);
    eventually("a Ready replica on every node", || {
        let mut nodes = ready_replicas(&cluster.server);
        nodes.sort();
        let want: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        (nodes != want).then(|| format!("{nodes:?}"))
    });
}

/// The api-server's pods: `name uid node restarts ready` each.
fn replicas(server: &SkiffServer) -> Vec<String> {
    let path = "{range .items[*]}{.metadata.name} {.metadata.uid} {.spec.nodeName} {.status.containerStatuses[0].restartCount} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
    let mut lines: Vec<String> = jsonpath(server, &["get", "pods", "-l", "app=api"], path)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The processes named `comm` in the containers of the node whose data directory is `dir`.
fn container_processes(dir: &std::path::Path, comm: &str) -> Vec<u32> {
    let monitors = monitors_under(dir);
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter(|pid| {
            let mut at = *pid;
            while let Some(up) = parent(at).filter(|p| *p > 1) {
                if monitors.contains(&up) {
                    return true;
                }
                at = up;
            }
            false
        })
        .collect()
}

/// Restarts the agent of `node`, which cannot reach the server: it runs the node's pods from
/// its local record.
fn restart_cut_off(node: &mut LanNode, url: &str, ranges: &[String; 4]) {
    drop(node.agent.take());
    node.start(url, ranges, &[]);
    eventually("the restarted agent runs its pod as last told", || {
        let log = node.agent.as_ref().unwrap().log();
        (!log.contains("running the pod as last told")).then_some(log)
    });
}

#[test]
fn a_server_away_for_a_minute_evicts_nothing_and_an_agent_restarted_meanwhile_keeps_its_pods() {
    let mut cluster = LanCluster::start("away", 3);
    spread_api_server(&cluster);
    let before = replicas(&cluster.server);
    assert_eq!(before.len(), 3, "{before:?}");
    let (url, ranges) = (cluster.server.url(), cluster.ranges.clone());
    let node = &mut cluster.nodes[1];
    let first = container_processes(node.data.path(), "httpd");
    assert_eq!(
        first.len(),
        1,
        "one replica's httpd on {}: {first:?}",
        node.name
    );

    cluster.server.kill();
    let away = Instant::now();
    // The agent, restarted while the server is away, runs the node's pods as last told ...
    restart_cut_off(node, &url, &ranges);
    // ... and restarts a container that dies meanwhile, as its restart policy says.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        "the killed container runs again with the server still away",
        || {
            let now = container_processes(node.data.path(), "httpd");
            (now.len() != 1 || now == first).then(|| format!("{now:?}"))
        },
    );
    assert!(
        away.elapsed() < Duration::from_secs(60),
        "the steps took {:?}",
        away.elapsed()
    );
    std::thread::sleep(Duration::from_secs(60).saturating_sub(away.elapsed()));

    cluster.server.resume().unwrap_or_else(|e| panic!("{e}"));
    eventually("every node Ready again", || {
        let ready = jsonpath(
            &cluster.server,
            &["get", "nodes"],
            "{.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        );
        (ready != "True True True").then_some(ready)
    });
    // Longer than the grace period and the eviction wait together (8 s + 3 s here).
    std::thread::sleep(Duration::from_secs(15));
    let after = replicas(&cluster.server);
    let want: Vec<String> = before
        .iter()
        .map(|line| {
            let restarted = line.contains(&format!(" {} ", cluster.nodes[1].name));
            let fields: Vec<&str> = line.split_whitespace().collect();
            let restarts = if restarted { "1" } else { "0" };
            format!("{} {} {} {restarts} True", fields[0], fields[1], fields[2])
        })
        .collect();
    assert_eq!(
        after, want,
        "the same pods, only the killed container restarted once"
    );
    let reasons = jsonpath(&cluster.server, &["get", "events"], "{.items[*].reason}");
    assert!(
        !reasons.contains("TaintManagerEviction") && !reasons.contains("Killing"),
        "{reasons}"
    );
}

/// How a node fails, and comes back.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Its link down: nothing reaches it, its pods serve nobody.
    Cut,
    /// Its agent frozen (SIGSTOP): the node is silent but its pods still serve.
    Freeze,
}

impl Failure {
    fn begin(self, node: &LanNode) {
        match self {
            Failure::Cut => drop(
                node.host
                    .run(&["ip", "link", "set", "eth0", "down"])
                    .unwrap(),
            ),
            Failure::Freeze => signal(node, nix::sys::signal::Signal::SIGSTOP),
        }
    }

    fn end(self, node: &LanNode) {
        match self {
            Failure::Cut => drop(node.host.run(&["ip", "link", "set", "eth0", "up"]).unwrap()),
            Failure::Freeze => signal(node, nix::sys::signal::Signal::SIGCONT),
        }
    }
}

fn signal(node: &LanNode, signal: nix::sys::signal::Signal) {
    let pid = node.agent.as_ref().expect("a running agent").pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

#[test]
fn a_cut_node_is_replaced_and_its_return_leaves_three_replicas() {
    fails_over(Failure::Cut);
}

#[test]
fn a_frozen_agent_has_its_pods_replaced_and_its_return_leaves_three_replicas() {
    fails_over(Failure::Freeze);
}

/// The article's Deployment over three nodes and a client looping through its Service on the
/// first; the third fails `how`: its replica is replaced within 15 s, the client sees a few
/// failed requests at most, a cut node's agent restarted meanwhile keeps its pod running, and
/// the node's return leaves exactly three replicas.
fn fails_over(how: Failure) {
    let mut cluster = LanCluster::start(&format!("{how:?}").to_lowercase(), 3);
    let server = &cluster.server;
    spread_api_server(&cluster);
    apply(server, USER_SERVICE);
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

    let cut = &cluster.nodes[2];
    let before = kubectl(server, &["logs", "client"]).stdout.lines().count();
    let began = Instant::now();
    how.begin(cut);
    let mut replaced = None;
    while began.elapsed() < Duration::from_secs(40) {
        let nodes = ready_replicas(server);
        if nodes.len() == 3 && !nodes.contains(&cut.name) {
            replaced = Some(began.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let replaced = replaced.expect("the failed node's replica was not replaced within 40 s");
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

    if let Failure::Cut = how {
        // An agent restarted while cut off keeps the node's pod running: only the API, once it
        // answers again, says that the pod was replaced.
        let (url, ranges) = (server.url(), cluster.ranges.clone());
        let node = &mut cluster.nodes[2];
        let running = container_processes(node.data.path(), "httpd");
        assert_eq!(running.len(), 1, "the cut node's replica: {running:?}");
        restart_cut_off(node, &url, &ranges);
        std::thread::sleep(Duration::from_secs(2));
        let still = container_processes(node.data.path(), "httpd");
        assert_eq!(
            still, running,
            "the pod kept running through the agent's restart"
        );
    }
    let cut = &cluster.nodes[2];

    // The node comes back: its old pod was deleted from the API, so it is stopped there and
    // exactly three replicas remain.
    how.end(cut);
    eventually("the node is Ready again", || {
        let ready = jsonpath(
            server,
            &["get", "node", &cut.name],
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        );
        (ready != "True").then_some(ready)
    });
    // The old pod is stopped once the agent sees it deleted (its drain and SIGTERM), as
    // kubelet does.
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
    // Its pods reach the replicas on the other nodes again (a link that went down took the
    // node's routes with it).
    let script =
        "for i in 1 2 3 4 5 6; do timeout 2 wget -qO- http://user-service:8080/ || echo FAIL; done";
    apply(
        server,
        &busybox_pod("back", "Never", script)
            .replace("spec:\n", &format!("spec:\n  nodeName: {}\n", cut.name)),
    );
    eventually("a pod of the returned node reaches the Service", || {
        let logs = kubectl(server, &["logs", "back"]).stdout;
        (logs.lines().filter(|l| l.starts_with("my-api")).count() < 6).then_some(logs)
    });
    eprintln!(
        "{how:?}: replaced after {replaced:?}; {failed} of {} requests failed",
        during.len()
    );
}
