//! End to end as root: pods' addresses on the node's bridge and Services balanced in the kernel
//! (nftables), on `skiff up`, driven by the machine's kubectl.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::cluster::*;
use common::*;

/// The article's user-service, selecting the api-server's pods, as a NodePort; and a headless
/// Service of the same pods.
const USER_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: user-service
spec:
  type: NodePort
  selector:
    app: api
  ports:
  - name: http
    port: 8080
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: api-headless
spec:
  clusterIP: None
  selector:
    app: api
  ports:
  - port: 8080
";

/// `busybox wget` from this machine's namespace (as a user on the node would `curl`).
fn wget_from_node(url: &str) -> Result<String, String> {
    let out = Command::new("busybox")
        .args(["wget", "-qO-", url])
        .output()
        .expect("busybox (Debian's busybox-static) is needed on the test machine");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `kubectl get KIND -l SELECTOR -o jsonpath=PATH`.
fn select(server: &SkiffServer, kind: &str, selector: &str, path: &str) -> String {
    let jsonpath = format!("jsonpath={path}");
    kubectl(server, &["get", kind, "-l", selector, "-o", &jsonpath]).out()
}

#[test]
fn pods_get_addresses_and_services_balance_over_ready_replicas() {
    let cluster = Cluster::start("svc");
    let server = cluster.server();
    kubectl(
        server,
        &["apply", "-f", &example("api-server.yaml").to_string_lossy()],
    )
    .out();
    apply(server, USER_SERVICE);
    cluster.wait_for(
        "three replicas are available",
        "deployment/api-server",
        "{.status.availableReplicas}",
        "3",
    );

    // Each pod has its own address in the node's pod CIDR.
    let pod_cidr = cluster.get(&format!("node/{}", cluster.node), "{.spec.podCIDR}");
    let prefix = pod_cidr.trim_end_matches("0/24");
    assert!(pod_cidr.ends_with(".0/24"), "pod CIDR {pod_cidr:?}");
    let ips = select(server, "pods", "app=api", "{.items[*].status.podIP}");
    let ips: BTreeSet<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    assert!(
        ips.iter().all(|ip| ip.starts_with(prefix)),
        "{ips:?} outside {pod_cidr}"
    );

    // The Service's endpoints are the three pods, as Endpoints and as an EndpointSlice.
    eventually("the endpoints list every replica", || {
        let listed = cluster.get("endpoints/user-service", "{.subsets[*].addresses[*].ip}");
        let listed: BTreeSet<&str> = listed.split_whitespace().collect();
        (listed != ips).then(|| format!("{listed:?}"))
    });
    let slice = select(
        server,
        "endpointslices",
        "kubernetes.io/service-name=user-service",
        "{.items[*].endpoints[*].conditions.ready}",
    );
    assert_eq!(slice, "true true true");

    // A client pod reaches every replica by the Service's name (cluster DNS, search path),
    // and the headless Service's name resolves to every ready pod.
    let cluster_ip = cluster.get("service/user-service", "{.spec.clusterIP}");
    let script =
        "for i in $(seq 30); do wget -qO- http://user-service:8080/ || echo failed; done; \
                  echo; echo service-host=$USER_SERVICE_SERVICE_HOST; cat /etc/resolv.conf; \
                  nslookup api-headless.default.svc.cluster.local; \
                  nslookup example.com; sleep 600";
    apply(server, &busybox_pod("client", "Never", script));
    let mut answers = String::new();
    eventually(
        "the client's 30 requests are answered and its lookups done",
        || {
            answers = kubectl(server, &["logs", "client"]).stdout;
            (!answers.contains("example.com")).then(|| answers.clone())
        },
    );
    let dns = [
        "get",
        "service/kube-dns",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ];
    let dns_ip = kubectl(server, &dns).out();
    assert!(
        answers.contains(&format!("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns_ip}\noptions ndots:5\n")),
        "{answers}"
    );
    for ip in &ips {
        assert!(
            answers.contains(&format!("Address: {ip}\n")),
            "{ip} not resolved:\n{answers}"
        );
    }
    assert!(
        answers.contains("can't find example.com: REFUSED"),
        "an isolated node forwards no name:\n{answers}"
    );
    let names = select(server, "pods", "app=api", "{.items[*].metadata.name}");
    for name in names.split_whitespace() {
        assert!(
            answers.contains(&format!("my-api v2.1 {name}\n")),
            "replica {name} never answered:\n{answers}"
        );
    }
    assert!(!answers.contains("failed"), "{answers}");

    // The node port answers on the node's own address (its bridge's), from the host.
    let node_port = cluster.get("service/user-service", "{.spec.ports[0].nodePort}");
    let gateway = format!("{prefix}1");
    let body = wget_from_node(&format!("http://{gateway}:{node_port}/")).unwrap();
    assert!(body.starts_with("my-api v2.1 api-server-"), "{body}");

    // ClientIP affinity: one client's requests all land on one replica.
    let sticky = "apiVersion: v1\nkind: Service\nmetadata:\n  name: sticky\nspec:\n  selector:\n    app: api\n  sessionAffinity: ClientIP\n  ports:\n  - port: 8080\n";
    apply(server, sticky);
    let script = "sleep 1; for i in $(seq 12); do wget -qO- http://sticky:8080/ || echo failed; done; echo done; sleep 600";
    apply(server, &busybox_pod("sticky-client", "Never", script));
    let mut answers = String::new();
    eventually("the sticky client's requests are answered", || {
        answers = kubectl(server, &["logs", "sticky-client"]).stdout;
        (!answers.contains("done")).then(|| answers.clone())
    });
    let replicas: BTreeSet<&str> = answers.lines().filter(|l| *l != "done").collect();
    assert_eq!(replicas.len(), 1, "{answers}");
    assert!(!answers.contains("failed"), "{answers}");

    // A pod's hostPort opens on the node (a port of this run's own: clusters of tests running
    // side by side share this namespace's addresses).
    let host_port = 20000 + std::process::id() % 10000;
    let web = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: api\n    image: my-api:v2.1\n    imagePullPolicy: IfNotPresent\n    ports:\n    - containerPort: 8080\n      hostPort: {host_port}\n"
    );
    apply(server, &web);
    cluster.wait_for("the web pod runs", "pod/web", "{.status.phase}", "Running");
    eventually("the host port answers", || {
        match wget_from_node(&format!("http://{gateway}:{host_port}/")) {
            Ok(body) if body == "my-api v2.1 web\n" => None,
            other => Some(format!("{other:?}")),
        }
    });

    // Without ready endpoints the cluster IP refuses at once (no timeout).
    kubectl(server, &["scale", "deployment/api-server", "--replicas=0"]).out();
    eventually("the endpoints empty", || {
        let left = cluster.get("endpoints/user-service", "{.subsets}");
        (!left.is_empty()).then_some(left)
    });
    eventually("the cluster IP refuses connections", || {
        let began = std::time::Instant::now();
        match wget_from_node(&format!("http://{cluster_ip}:8080/")) {
            Err(e) if e.contains("refused") && began.elapsed().as_secs() < 1 => None,
            other => Some(format!("{other:?} after {:?}", began.elapsed())),
        }
    });

    // The pods' addresses are given back when they go.
    kubectl(
        server,
        &["delete", "pods", "-l", "app=api", "--grace-period=1"],
    )
    .out();
    let reserved = cluster.dir.join("agent/network");
    eventually("the replicas' addresses are released", || {
        let held: Vec<String> = std::fs::read_dir(&reserved)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        // The clients and the web pod keep theirs.
        (held.len() != 3).then(|| format!("{held:?}"))
    });
}

/// Waits until the api-server Deployment has its three replicas available.
fn wait_available(server: &SkiffServer) {
    eventually("three replicas are available", || {
        let path = "jsonpath={.status.availableReplicas}";
        let available = kubectl(server, &["get", "deployment/api-server", "-o", path]).stdout;
        (available != "3").then_some(available)
    });
}

/// A busybox pod on `node` running `script`.
fn pod_on(name: &str, node: &str, script: &str) -> String {
    busybox_pod(name, "Never", script).replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"))
}

#[test]
fn services_reach_replicas_on_every_node_over_host_routes() {
    let cluster = LanCluster::start("lan", 2);
    let server = &cluster.server;
    kubectl(
        server,
        &["apply", "-f", &example("api-server.yaml").to_string_lossy()],
    )
    .out();
    apply(server, USER_SERVICE);
    wait_available(server);
    let placed = select(server, "pods", "app=api", "{.items[*].spec.nodeName}");
    for node in &cluster.nodes {
        assert!(
            placed.contains(&node.name),
            "no replica on {}: {placed}",
            node.name
        );
    }

    // From a pod on each node, by name: every replica answers, on this node and the other.
    let script = "for i in $(seq 30); do wget -qO- http://user-service:8080/ || echo failed; done; \
                  nc -w 2 kubernetes.default.svc.cluster.local 443 </dev/null && echo api-reachable; \
                  echo done; sleep 600";
    for (i, node) in cluster.nodes.iter().enumerate() {
        apply(server, &pod_on(&format!("client-{i}"), &node.name, script));
    }
    let names = select(server, "pods", "app=api", "{.items[*].metadata.name}");
    for i in 0..cluster.nodes.len() {
        let mut answers = String::new();
        eventually(&format!("client-{i}'s requests are answered"), || {
            answers = kubectl(server, &["logs", &format!("client-{i}")]).stdout;
            (!answers.contains("done")).then(|| answers.clone())
        });
        assert!(!answers.contains("failed"), "client-{i}:\n{answers}");
        // The API server, listening on the LAN, is the `kubernetes` Service's endpoint.
        assert!(answers.contains("api-reachable"), "client-{i}:\n{answers}");
        for name in names.split_whitespace() {
            assert!(
                answers.contains(&format!(" {name}\n")),
                "client-{i} never reached {name}:\n{answers}"
            );
        }
    }

    // The node port answers on every node's address, from another host's namespace.
    let node_port = kubectl(
        server,
        &[
            "get",
            "service/user-service",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .out();
    let from = &cluster.nodes[0].host;
    for node in &cluster.nodes {
        let url = format!("http://{}:{node_port}/", node.host.ip);
        for _ in 0..4 {
            let body = from
                .run(&["busybox", "wget", "-qO-", &url])
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(body.starts_with("my-api v2.1 api-server-"), "{url}: {body}");
        }
    }
}

/// The article's Deployment with a readiness probe, so a rollout's losses would show (the
/// server exits at once on SIGTERM, as most do).
const PROMPT_API: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api-server
spec:
  replicas: 3
  selector:
    matchLabels:
      app: api
  template:
    metadata:
      labels:
        app: api
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: server
        image: my-api:v2.1
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet:
            path: /
            port: 8080
          periodSeconds: 1
";

#[test]
fn a_rolling_update_loses_no_request() {
    let cluster = LanCluster::start("roll", 2);
    let server = &cluster.server;
    apply(server, PROMPT_API);
    apply(server, USER_SERVICE);
    wait_available(server);
    let script = "while true; do wget -qO- http://user-service:8080/ || echo FAILED; done";
    apply(server, &pod_on("client", &cluster.nodes[1].name, script));
    eventually("the client gets answers", || {
        let logs = kubectl(server, &["logs", "client"]).stdout;
        (!logs.contains("my-api v2.1")).then_some(logs)
    });

    kubectl(
        server,
        &[
            "set",
            "image",
            "deployment/api-server",
            "server=my-api:v2.2",
        ],
    )
    .out();
    kubectl(
        server,
        &[
            "rollout",
            "status",
            "deployment/api-server",
            "--timeout=120s",
        ],
    )
    .out();
    // The old pods are gone (their draining and SIGTERM included) and the new ones answer.
    eventually("only the new replicas remain", || {
        let images = select(
            server,
            "pods",
            "app=api",
            "{.items[*].spec.containers[0].image}",
        );
        (images != "my-api:v2.2 my-api:v2.2 my-api:v2.2").then_some(images)
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let logs = kubectl(server, &["logs", "client"]).stdout;
    let answered = logs.lines().filter(|l| l.starts_with("my-api v2.")).count();
    assert!(logs.contains("my-api v2.2"), "no answer from v2.2:\n{logs}");
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| !l.starts_with("my-api v2."))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {answered} requests failed: {failed:?}",
        failed.len()
    );
}

#[test]
fn dns_keeps_answering_while_an_agent_restarts() {
    let mut cluster = LanCluster::start("dns", 2);
    let server = &cluster.server;
    apply(server, USER_SERVICE);
    let script =
        "while true; do if nslookup user-service.default.svc.cluster.local >/dev/null 2>&1; \
                  then echo ok; else echo FAIL; fi; sleep 0.1; done";
    let node = cluster.nodes[1].name.clone();
    apply(server, &pod_on("resolver", &node, script));
    let lines = |server: &SkiffServer| kubectl(server, &["logs", "resolver"]).stdout;
    eventually("the pod resolves the Service", || {
        let logs = lines(server);
        (logs.lines().filter(|l| *l == "ok").count() < 5).then_some(logs)
    });
    assert!(!lines(server).contains("FAIL"), "{}", lines(server));

    // SIGKILL of the pod's node agent, a pause, a new agent: the pod's lookups go on.
    let url = server.url();
    let ranges = cluster.ranges.clone();
    let before = lines(&cluster.server).lines().count();
    drop(cluster.nodes[1].agent.take());
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.nodes[1].start(&url, &ranges, &[]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let logs = lines(&cluster.server);
    let during: Vec<&str> = logs.lines().skip(before).collect();
    assert!(during.len() >= 10, "the pod stopped asking: {during:?}");
    assert!(
        during.iter().all(|l| *l == "ok"),
        "lookups failed while the agent restarted: {during:?}"
    );
}
