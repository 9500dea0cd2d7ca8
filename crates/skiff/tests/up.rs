//! End to end as root: `skiff up` (API server and node agent in one process) running the
//! article's Deployment and other pods in real containers, driven by the machine's kubectl.

mod common;

use std::path::Path;
use std::process::Command;

use common::cluster::*;
use common::*;

#[test]
fn the_articles_deployment_runs_and_survives_a_killed_skiff_up() {
    let mut cluster = Cluster::start("article");
    apply(
        cluster.server(),
        &std::fs::read_to_string(example("api-server.yaml")).unwrap(),
    );
    let ready = |c: &Cluster| {
        c.get(
            "pods",
            "{range .items[*]}{.metadata.name} {.status.phase} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
        )
    };
    eventually("3 Ready api-server pods", || {
        let pods = ready(&cluster);
        (pods.lines().filter(|l| l.ends_with("Running true")).count() == 3)
            .then_some(())
            .map_or(Some(pods), |_| None)
    });
    let ids = |c: &Cluster| {
        c.get(
            "pods",
            "{range .items[*]}{.metadata.name} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
        )
    };
    let before = ids(&cluster);
    // The containers are real: the API server answers inside one.
    let pod = before
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let cgroup = format!("/sys/fs/cgroup/memory/skiff/{}", cluster.node);
    let limits: Vec<String> = std::fs::read_dir(&cgroup)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pod"))
        .map(|e| {
            std::fs::read_to_string(e.path().join("server-0/memory.limit_in_bytes"))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        limits,
        vec!["536870912\n"; 3],
        "the 512Mi limit of each container"
    );

    cluster.kill_and_restart();
    // The same containers, adopted, none restarted.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(ids(&cluster), before);
    assert!(ready(&cluster).lines().all(|l| l.ends_with("Running true")));

    cluster.kubectl(&["delete", "pod", &pod]);
    let sandbox = cluster.dir.join("runtime/pods");
    eventually(
        "the deleted pod's replacement and nothing left of it",
        || {
            let pods = ready(&cluster);
            let cgroups = std::fs::read_dir(&cgroup)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("pod"))
                        .count()
                })
                .unwrap_or(0);
            let sandboxes = std::fs::read_dir(&sandbox).map(|d| d.count()).unwrap_or(0);
            let ok = !pods.contains(&pod)
                && pods.lines().filter(|l| l.ends_with("Running true")).count() == 3
                && cgroups == 3
                && sandboxes == 3;
            (!ok).then(|| format!("{pods} cgroups={cgroups} sandboxes={sandboxes}"))
        },
    );
}

#[test]
fn crashes_restart_with_backoff_and_logs_show_each_attempt() {
    let cluster = Cluster::start("crash");
    apply(
        cluster.server(),
        &busybox_pod(
            "crash",
            "Always",
            "echo attempt at $(date +%s); echo goodbye > /dev/termination-log; exit 3",
        ),
    );
    apply(
        cluster.server(),
        &busybox_pod("once", "Never", "echo hello from once; echo to stderr >&2"),
    );
    eventually("a crash loop", || {
        let s = cluster.get("pod/crash", "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount}");
        let restarts: u32 = s
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (!(s.starts_with("CrashLoopBackOff") && restarts >= 2)).then_some(s)
    });
    let last = cluster.get("pod/crash", "{.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.exitCode} {.status.containerStatuses[0].lastState.terminated.message}");
    assert_eq!(last.trim(), "Error 3 goodbye");
    let message = cluster.get(
        "pod/crash",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        message.starts_with("back-off ")
            && message.contains("restarting failed container=main pod=crash_default("),
        "{message}"
    );
    let previous = cluster.kubectl(&["logs", "crash", "--previous"]);
    assert!(previous.starts_with("attempt at "), "{previous}");
    // kubectl get shows the crash loop as kubectl users know it.
    let table = cluster.kubectl(&["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    cluster.wait_for(
        "the pod that runs once completes",
        "pod/once",
        "{.status.phase} {.status.containerStatuses[0].state.terminated.reason}",
        "Succeeded Completed",
    );
    assert_eq!(
        cluster.kubectl(&["logs", "once"]),
        "hello from once\nto stderr\n"
    );
    let stamped = cluster.kubectl(&["logs", "once", "--timestamps", "--tail=1"]);
    assert!(
        stamped.ends_with(" to stderr\n") && stamped.starts_with("20"),
        "{stamped}"
    );
    let err = kubectl(cluster.server(), &["logs", "once", "--previous"]).err();
    assert!(
        err.contains("previous terminated container \"main\" in pod \"once\" not found"),
        "{err}"
    );
}

#[test]
fn configuration_arrives_as_environment_and_files_and_updates_propagate() {
    let cluster = Cluster::start("config");
    apply(
        cluster.server(),
        &std::fs::read_to_string(example("config.yaml")).unwrap(),
    );
    apply(
        cluster.server(),
        r#"apiVersion: v1
kind: Pod
metadata:
  name: configured
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: config
    configMap: {name: app-config}
  - name: creds
    secret: {secretName: db-creds}
  - name: shared
    emptyDir: {}
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo "env $LOG_LEVEL $DB_PASSWORD $POD_NAME"; while true; do cat /etc/app/log_level > /shared/seen; sleep 0.2; done']
    env:
    - name: LOG_LEVEL
      valueFrom: {configMapKeyRef: {name: app-config, key: log_level}}
    - name: DB_PASSWORD
      valueFrom: {secretKeyRef: {name: db-creds, key: password}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts:
    - {name: config, mountPath: /etc/app}
    - {name: creds, mountPath: /etc/creds, readOnly: true}
    - {name: shared, mountPath: /shared}
  - name: reader
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'while true; do cat /shared/seen 2>/dev/null; echo; sleep 0.5; done']
    volumeMounts:
    - {name: shared, mountPath: /shared}
"#,
    );
    cluster.wait_for(
        "the pod runs",
        "pod/configured",
        "{.status.phase}",
        "Running",
    );
    cluster.wait_for_logs(
        "the environment from the ConfigMap, the Secret and the downward API",
        &["logs", "configured", "-c", "main"],
        "env debug s3cur3-p4ss configured\n",
    );
    // The second container sees what the first writes into their emptyDir.
    eventually("the shared emptyDir", || {
        let logs = kubectl(
            cluster.server(),
            &["logs", "configured", "-c", "reader", "--tail=1"],
        )
        .stdout;
        (logs.trim() != "debug").then_some(logs)
    });
    cluster.kubectl(&[
        "patch",
        "configmap",
        "app-config",
        "-p",
        r#"{"data":{"log_level":"info"}}"#,
    ]);
    eventually(
        "the ConfigMap's update in the running container's file",
        || {
            let logs = kubectl(
                cluster.server(),
                &["logs", "configured", "-c", "reader", "--tail=1"],
            )
            .stdout;
            (logs.trim() != "info").then_some(logs)
        },
    );
    let missing = busybox_pod("missing", "Always", "sleep 100").replace(
        "    command:",
        "    env:\n    - name: X\n      valueFrom: {configMapKeyRef: {name: nope, key: k}}\n    command:",
    );
    apply(cluster.server(), &missing);
    cluster.wait_for("a configuration error in kubelet's words", "pod/missing", "{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}", "CreateContainerConfigError: configmap \"nope\" not found");
}

#[test]
fn sigterm_gets_its_grace_period_and_deletion_removes_everything() {
    let cluster = Cluster::start("grace");
    apply(
        cluster.server(),
        &busybox_pod("graceful", "Always", "trap 'echo got TERM; sleep 1; echo done > /dev/termination-log; exit 0' TERM; echo started; while true; do sleep 0.1; done"),
    );
    eventually("the pod runs", || {
        let s = cluster.get(
            "pod/graceful",
            "{.status.containerStatuses[0].state.running.startedAt}",
        );
        s.is_empty().then_some(s)
    });
    cluster.wait_for_logs("the trap is set", &["logs", "graceful"], "started\n");
    let uid = cluster.get("pod/graceful", "{.metadata.uid}");
    let start = std::time::Instant::now();
    cluster.kubectl(&["delete", "pod", "graceful"]);
    let took = start.elapsed();
    // The handler's second of work was waited for, and not the 5 s grace.
    assert!(
        took >= std::time::Duration::from_secs(1),
        "deleted after {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "deleted after {took:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&uid), "a mount of the pod is left");
    assert!(!cluster.dir.join("runtime/pods").join(&uid).exists());
    assert!(!Path::new(&format!(
        "/sys/fs/cgroup/memory/skiff/{}/pod{uid}",
        cluster.node
    ))
    .exists());
}

#[test]
fn probes_restart_and_unready_hooks_run_memory_limits_kill_and_events_tell() {
    let cluster = Cluster::start("probes");
    let hooks = cluster.dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    apply(
        cluster.server(),
        r#"apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 600"]
    livenessProbe:
      exec: {command: [test, -f, /tmp/healthy]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: flaky
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "touch /tmp/ready; sleep 12; rm /tmp/ready; sleep 600"]
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: api
    image: my-api:v2.1
    imagePullPolicy: IfNotPresent
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
    startupProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  terminationGracePeriodSeconds: 5
  volumes:
  - name: hooks
    hostPath: {path: HOOKS}
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "while [ ! -f /tmp/hook ]; do sleep 0.1; done; cat /tmp/hook; sleep 600"]
    volumeMounts: [{name: hooks, mountPath: /hooks}]
    lifecycle:
      postStart:
        exec: {command: [sh, -c, "echo from postStart > /tmp/hook"]}
      preStop:
        exec: {command: [sh, -c, "echo from preStop > /hooks/stopped"]}
---
apiVersion: v1
kind: Pod
metadata:
  name: hungry
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [tail, /dev/zero]
    resources:
      limits: {memory: 16Mi}
---
apiVersion: v1
kind: Pod
metadata:
  name: remote
spec:
  containers:
  - name: main
    image: registry.example/app:v1
"#
        .replace("HOOKS", hooks.to_str().unwrap())
        .as_str(),
    );

    // A failing liveness probe restarts the container and says why.
    eventually("the liveness probe restarts the container", || {
        let s = cluster.get("pod/live", "{.status.containerStatuses[0].restartCount}");
        (s.parse::<u32>().unwrap_or(0) < 1).then_some(s)
    });
    let events = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=live",
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ]);
    assert!(
        events.contains(
            "Liveness probe failed: command [\"test\", \"-f\", \"/tmp/healthy\"] exited with 1"
        ),
        "{events}"
    );
    assert!(
        events.contains("Container main failed liveness probe, will be restarted"),
        "{events}"
    );
    for reason in ["Pulled", "Created", "Started", "Killing", "Unhealthy"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }
    let described = cluster.kubectl(&["describe", "pod", "live"]);
    assert!(
        described.contains("kubelet") && described.contains("Liveness probe failed"),
        "{described}"
    );

    // Readiness follows the probe both ways, without restarts.
    cluster.wait_for(
        "the flaky pod becomes ready",
        "pod/flaky",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    cluster.wait_for(
        "the flaky pod becomes unready",
        "pod/flaky",
        "{.status.conditions[?(@.type==\"Ready\")].status}/{.status.containerStatuses[0].ready}",
        "False/false",
    );
    assert_eq!(
        cluster.get(
            "pod/flaky",
            "{.status.containerStatuses[0].restartCount}/{.status.phase}"
        ),
        "0/Running"
    );

    // HTTP and TCP probes reach the server inside the pod's network namespace.
    cluster.wait_for(
        "the web pod is started and ready",
        "pod/web",
        "{.status.containerStatuses[0].started}/{.status.containerStatuses[0].ready}",
        "true/true",
    );

    // postStart ran before the container went on; preStop runs on deletion.
    cluster.wait_for_logs(
        "the postStart hook's file is read",
        &["logs", "hooked"],
        "from postStart\n",
    );
    cluster.kubectl(&["delete", "pod", "hooked"]);
    assert_eq!(
        std::fs::read_to_string(hooks.join("stopped")).unwrap(),
        "from preStop\n"
    );

    // Exceeding the memory limit is OOMKilled.
    cluster.wait_for("the hungry container is OOM-killed", "pod/hungry", "{.status.phase}/{.status.containerStatuses[0].state.terminated.reason}/{.status.containerStatuses[0].state.terminated.exitCode}", "Failed/OOMKilled/137");
    // An isolated node pulls from nowhere but loopback, and says so.
    eventually("the remote image is refused", || {
        let s = cluster.get(
            "pod/remote",
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        (!s.contains("the node is isolated and reaches only registries on loopback")).then_some(s)
    });
    assert_eq!(
        cluster.get("pod/web", "{.status.containerStatuses[0].restartCount}"),
        "0",
        "healthy probes restarted nothing"
    );
}

#[test]
fn a_second_agent_joins_with_a_token_and_runs_its_pods() {
    let cluster = Cluster::start("first");
    let token = join_token(&cluster.dir);
    let (hash, bootstrap) = token.split_once("::").expect("K10<hash>::<token>");
    assert!(hash.starts_with("K10") && hash.len() == 67, "{token}");

    // A token for another CA is refused before anything is sent with it.
    let other_dir = tempfile::tempdir().unwrap();
    let wrong = format!("K10{}::{bootstrap}", "0".repeat(64));
    let refused = Command::new(SKIFF)
        .args([
            "agent",
            "--server",
            &cluster.server().url(),
            "--token",
            &wrong,
        ])
        .args(["--node-name", "nobody", "--data-dir"])
        .arg(other_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("does not match the join token's hash"),
        "{stderr}"
    );

    // The bootstrap token alone reads nothing but certificate requests.
    let ca = std::fs::read_to_string(cluster.dir.join("pki/ca.crt")).unwrap();
    let ca_file = other_dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).unwrap();
    let denied = Command::new("kubectl")
        .args(["--server", &cluster.server().url(), "--token", bootstrap])
        .arg(format!("--certificate-authority={}", ca_file.display()))
        .args(["-n", "kube-system", "get", "secrets"])
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "{stderr}"
    );

    let node = SecondNode::new(&cluster, "second");
    let second = node.name.clone();
    {
        let agent = node.start(&cluster, &["--token", &token]);
        cluster.wait_for(
            "the second node is Ready",
            &format!("node/{second}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
            "True",
        );
        let csrs = cluster.kubectl(&["get", "csr", "-o", "custom-columns=SIGNER:.spec.signerName,REQUESTOR:.spec.username,CONDITION:.status.conditions[0].type"]);
        let rows: Vec<Vec<&str>> = csrs
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        let node_user = format!("system:node:{second}");
        assert_eq!(rows.len(), 2, "{csrs}");
        assert!(
            rows.iter()
                .any(|r| r[0] == "kubernetes.io/kube-apiserver-client-kubelet"
                    && r[1].starts_with("system:bootstrap:")
                    && r[2] == "Approved"),
            "{csrs}"
        );
        assert!(
            rows.iter().any(|r| r[0] == "kubernetes.io/kubelet-serving"
                && r[1] == node_user
                && r[2] == "Approved"),
            "{csrs}"
        );

        apply(
            cluster.server(),
            &busybox_pod(
                "elsewhere",
                "Always",
                "echo hello from the second node; sleep 600",
            )
            .replace("spec:\n", &format!("spec:\n  nodeName: {second}\n")),
        );
        cluster.wait_for_logs(
            "the pod's log comes through the second agent",
            &["logs", "elsewhere"],
            "hello from the second node\n",
        );
        drop(agent);
    }
    // Restarted without the token: the kept certificates suffice, and the pod is adopted.
    let _agent = node.start(&cluster, &[]);
    cluster.wait_for(
        "the pod still runs, not restarted",
        "pod/elsewhere",
        "{.status.phase}/{.status.containerStatuses[0].restartCount}",
        "Running/0",
    );
    let logs = kubectl(cluster.server(), &["logs", "elsewhere"]).stdout;
    assert_eq!(logs, "hello from the second node\n");
}

#[test]
fn down_stops_the_node_and_its_containers_and_up_brings_them_back() {
    let mut cluster = Cluster::start("down");
    apply(
        cluster.server(),
        &busybox_pod("sleeper", "Always", "echo up; sleep 600"),
    );
    cluster.wait_for("the pod runs", "pod/sleeper", "{.status.phase}", "Running");
    assert!(!monitors_under(&cluster.dir).is_empty());

    let second = Command::new(SKIFF)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            &cluster.node,
            "--data-dir",
        ])
        .arg(&cluster.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(stderr.contains("skiff already runs on"), "{stderr}");

    let down = Command::new(SKIFF)
        .args([
            "down",
            "--grace",
            "2s",
            "--node-name",
            &cluster.node,
            "--data-dir",
        ])
        .arg(&cluster.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(stdout.contains("stopped 1 pod(s)"), "{stdout}");
    let pid = cluster.server().pid();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "skiff up still runs: {state}"
    );
    assert_eq!(
        monitors_under(&cluster.dir),
        Vec::<u32>::new(),
        "containers left running"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*cluster.dir.join("runtime/pods").to_string_lossy()),
        "a sandbox mount is left"
    );

    cluster.up_again();
    cluster.wait_for(
        "the pod runs again",
        "pod/sleeper",
        "{.status.phase}",
        "Running",
    );
    cluster.wait_for_logs("its output comes back", &["logs", "sleeper"], "up\n");
}

#[test]
fn a_frozen_node_is_marked_unreachable_and_its_pods_replaced() {
    let cluster = Cluster::start("survivor");
    let token = join_token(&cluster.dir);
    let node = SecondNode::new(&cluster, "frozen");
    let agent = node.start(&cluster, &["--token", &token]);
    cluster.wait_for(
        "the second node is Ready",
        &format!("node/{}", node.name),
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    // One replica, preferring the second node; it may run on the first when it must.
    apply(
        cluster.server(),
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: mover
spec:
  replicas: 1
  selector: {{matchLabels: {{app: mover}}}}
  template:
    metadata: {{labels: {{app: mover}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{}]}}]
      containers:
      - name: main
        image: busybox
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "sleep 600"]
"#,
            node.name
        ),
    );
    let placed =
        "{range .items[*]}{.spec.nodeName}/{.status.phase}/{.metadata.deletionTimestamp} {end}";
    let on_second = format!("{}/Running/ ", node.name);
    eventually("the pod runs on the second node", || {
        let s = cluster.get("pods", placed);
        (s != on_second).then_some(s)
    });

    // Freeze the second agent: its Lease stops, its containers go on.
    let frozen = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let began = std::time::Instant::now();
    let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
    let deadline = std::time::Duration::from_secs(30);
    let mut seen = String::new();
    let on_first = format!("{}/Running/ ", cluster.node);
    while began.elapsed() < deadline {
        seen = cluster.get(
            "pods",
            "{range .items[?(@.metadata.deletionTimestamp)]}x{end}|",
        ) + &cluster.get("pods", placed);
        if seen.contains(&on_first) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        seen.contains(&on_first),
        "no replacement Running on the first node within {deadline:?}: {seen}"
    );
    let took = began.elapsed();
    assert_eq!(
        cluster.get(&format!("node/{}", node.name), ready),
        "Unknown"
    );
    let taints = cluster.get(&format!("node/{}", node.name), "{.spec.taints[*].key}");
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    let events = cluster.kubectl(&["get", "events", "-A", "-o", "custom-columns=REASON:.reason"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    eprintln!("replacement Running {took:?} after the freeze");

    // Thawed, the agent finishes the evicted pod's deletion: exactly one pod is left, and the
    // node is Ready and untainted again.
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGCONT).unwrap();
    eventually("one pod is left, on the first node", || {
        let s = cluster.get("pods", placed);
        (s != on_first).then_some(s)
    });
    cluster.wait_for(
        "the second node is Ready again",
        &format!("node/{}", node.name),
        ready,
        "True",
    );
    eventually("the unreachable taints are gone", || {
        let s = cluster.get(&format!("node/{}", node.name), "{.spec.taints[*].key}");
        s.contains("unreachable").then_some(s)
    });
    drop(agent);
}
