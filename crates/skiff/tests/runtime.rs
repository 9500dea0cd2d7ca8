//! The container runtime conformance suite, run as root against each OCI runtime (youki's
//! libcontainer, and runc): real images, containers, cgroups and monitor processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_runtime::{
    cgroups, crilog, ContainerConfig, ContainerId, ContainerState, ContainerStatus, LocalConfig,
    LocalRuntime, OciRuntime, Runtime, SandboxConfig,
};
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};

/// A node's runtime in a temporary directory, reset (containers, mounts, cgroups) when dropped,
/// even when the test failed.
struct Node {
    runtime: LocalRuntime,
    root: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.reset() {
            eprintln!("reset of {}: {e}", self.root.display());
        }
    }
}

impl Node {
    fn node_name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for Node {
    type Target = LocalRuntime;
    fn deref(&self) -> &LocalRuntime {
        &self.runtime
    }
}

fn config(root: &Path, node: &str, oci: &OciRuntime) -> LocalConfig {
    let mut config = LocalConfig::new(
        root,
        node,
        vec![env!("CARGO_BIN_EXE_skiff").into(), "monitor".into()],
    );
    config.oci = oci.clone();
    config
}

fn node(oci: &OciRuntime) -> Node {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runtime suite needs root (containers, mounts, cgroups)"
    );
    if let OciRuntime::Runc(path) = oci {
        assert!(
            path.exists(),
            "runc not found at {}: install Debian's runc (scripts/install-deps)",
            path.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!(
        "t{}",
        &dir.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "")[..6]
            .to_lowercase()
    );
    let root = dir.path().join("runtime");
    let runtime = LocalRuntime::open(config(&root, &name, oci)).unwrap();
    for spec in [ImageSpec::busybox(), ImageSpec::my_api("v2.1")] {
        let archive = build(&spec, ArchiveFormat::Oci, dir.path());
        runtime.images().import(&archive).unwrap();
    }
    Node {
        runtime,
        root,
        name,
        _dir: dir,
    }
}

fn sandbox(node: &LocalRuntime, uid: &str) -> SandboxConfig {
    let config = SandboxConfig {
        uid: uid.into(),
        namespace: "default".into(),
        name: format!("pod-{uid}"),
        hostname: format!("pod-{uid}"),
        hosts: "127.0.0.1\tlocalhost\n".into(),
        resolv_conf: "nameserver 10.43.0.10\n".into(),
    };
    node.run_sandbox(&config).unwrap();
    config
}

fn shell(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..ContainerConfig::new(name, "busybox")
    }
}

fn wait_exit(node: &LocalRuntime, id: &ContainerId, within: Duration) -> ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = node
            .containers(Some(&id.pod_uid))
            .unwrap()
            .into_iter()
            .find(|c| c.id == *id)
            .expect("container listed");
        if status.state == ContainerState::Exited {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_exits_with_its_code_and_logs_in_cri_format(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let started = node
        .start_container(
            "p1",
            &shell("app", "echo hello; echo oops >&2; hostname; exit 3"),
        )
        .unwrap();
    assert_eq!(started.error, None);
    let status = wait_exit(&node, &started.id, Duration::from_secs(10));
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.signal, None);
    assert!(!status.oom_killed);
    let raw = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(raw.lines().any(|l| l.ends_with(" stdout F hello")), "{raw}");
    assert!(raw.lines().any(|l| l.ends_with(" stderr F oops")), "{raw}");
    let text = crilog::read_text(&status.log_path).unwrap();
    assert!(
        text.contains("pod-p1\n"),
        "hostname from the sandbox: {text}"
    );
}

fn stop_sends_sigterm_then_sigkill_after_the_grace_period(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let polite = node
        .start_container(
            "p1",
            &shell(
                "polite",
                "trap 'exit 0' TERM; while true; do sleep 0.05; done",
            ),
        )
        .unwrap();
    // PID 1 has no default signal actions: a sleep there ignores SIGTERM.
    let stubborn = node
        .start_container(
            "p1",
            &ContainerConfig {
                command: vec!["sleep".into(), "1000".into()],
                ..ContainerConfig::new("stubborn", "busybox")
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let status = node
        .stop_container(&polite.id, Duration::from_secs(10))
        .unwrap();
    assert_eq!((status.exit_code, status.signal), (Some(0), None));
    let begun = Instant::now();
    let status = node
        .stop_container(&stubborn.id, Duration::from_millis(300))
        .unwrap();
    assert!(begun.elapsed() >= Duration::from_millis(300));
    assert_eq!((status.exit_code, status.signal), (Some(137), Some(9)));
    assert!(!status.oom_killed);
}

fn an_oom_kill_is_reported_as_such(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let mut hog = ContainerConfig {
        command: [
            "dd",
            "if=/dev/zero",
            "of=/dev/shm/fill",
            "bs=1M",
            "count=60",
        ]
        .map(String::from)
        .to_vec(),
        ..ContainerConfig::new("hog", "busybox")
    };
    hog.resources.memory_limit = Some(24 << 20);
    let started = node.start_container("p1", &hog).unwrap();
    let status = wait_exit(&node, &started.id, Duration::from_secs(20));
    assert!(status.oom_killed, "{status:?}");
    assert_eq!((status.exit_code, status.signal), (Some(137), Some(9)));
}

fn limits_are_visible_in_the_cgroup(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let mut c = ContainerConfig {
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::new("limited", "busybox")
    };
    c.resources.cpu_shares = Some(512);
    c.resources.cpu_quota = Some(25_000);
    c.resources.memory_limit = Some(48 << 20);
    let started = node.start_container("p1", &c).unwrap();
    let cgroup = node.cgroup_of(&started.id);
    let read = |controller: &str, file: &str| {
        let path = cgroups::controller_dir(controller, &cgroup).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (48u64 << 20).to_string()
    );
    let procs = read("memory", "cgroup.procs");
    assert!(
        procs.lines().any(|p| p == started.pid.unwrap().to_string()),
        "{procs}"
    );
}

fn security_defaults_are_containerds(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let sleeper = |name: &str| ContainerConfig {
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::new(name, "busybox")
    };
    let plain = node.start_container("p1", &sleeper("plain")).unwrap();
    let status = exec(
        &node,
        &plain.id,
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
    );
    // 0xa80425fb: containerd's and Docker's default capability set.
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let masked = exec(
        &node,
        &plain.id,
        "cat /proc/kcore | wc -c; touch /proc/sysrq-trigger 2>&1 || echo ro",
    );
    assert!(masked.starts_with("0\n"), "/proc/kcore masked: {masked}");
    assert!(masked.contains("ro"), "{masked}");

    let mut locked = sleeper("locked");
    locked.security.run_as_user = Some(1000);
    locked.security.run_as_group = Some(3000);
    locked.security.read_only_root_filesystem = true;
    locked.security.drop_capabilities = vec!["ALL".into()];
    let locked = node.start_container("p1", &locked).unwrap();
    assert_eq!(exec(&node, &locked.id, "id -u; id -g"), "1000\n3000\n");
    assert!(exec(&node, &locked.id, "touch /x 2>&1; true").contains("Read-only file system"));
    assert!(exec(&node, &locked.id, "grep CapBnd /proc/self/status").contains("0000000000000000"));
}

fn exec(node: &LocalRuntime, id: &ContainerId, script: &str) -> String {
    let result = node
        .exec(
            id,
            &["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(10),
        )
        .unwrap();
    String::from_utf8(result.stdout).unwrap()
}

fn exec_runs_commands_in_the_container(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let api = node
        .start_container("p1", &ContainerConfig::new("api", "my-api:v2.1"))
        .unwrap();
    assert_eq!(api.error, None);
    assert_eq!(exec(&node, &api.id, "cat /etc/hostname"), "pod-p1\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = exec(&node, &api.id, "wget -qO- http://127.0.0.1:8080/ 2>&1");
        if body == "my-api v2.1 pod-p1\n" {
            break;
        }
        assert!(Instant::now() < deadline, "my-api does not answer: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = node
        .exec(
            &api.id,
            &["sh".into(), "-c".into(), "echo err >&2; exit 4".into()],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        (result.exit_code, result.stderr.as_slice()),
        (4, &b"err\n"[..])
    );
    let done = node.start_container("p1", &shell("done", "true")).unwrap();
    wait_exit(&node, &done.id, Duration::from_secs(10));
    assert!(matches!(
        node.exec(&done.id, &["true".into()], Duration::from_secs(1)),
        Err(skiff_runtime::Error::NotRunning(_))
    ));
}

fn a_container_that_cannot_start_says_why(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let status = node
        .start_container(
            "p1",
            &ContainerConfig {
                command: vec!["no-such-binary".into()],
                ..ContainerConfig::new("broken", "busybox")
            },
        )
        .unwrap();
    assert_eq!(status.state, ContainerState::Exited);
    let error = status.error.unwrap_or_default();
    assert!(error.contains("no-such-binary"), "{error}");
    assert!(matches!(
        node.start_container("p1", &ContainerConfig::new("x", "nothing:here")),
        Err(skiff_runtime::Error::ImageNotFound(_))
    ));
    assert!(matches!(
        node.start_container("nopod", &ContainerConfig::new("x", "busybox")),
        Err(skiff_runtime::Error::SandboxNotFound(_))
    ));
}

/// SIGKILL of the process driving the runtime leaves its containers running; a new runtime
/// on the same directory adopts them and learns the exit of one that ended meanwhile.
fn a_new_runtime_adopts_the_containers_of_a_killed_one(oci: OciRuntime) {
    let node = node(&oci);
    let driver = |name: &str, hold: bool, command: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.args(["runtime", "--root"])
            .arg(&node.root)
            .args(["--node", node.node_name()]);
        if let OciRuntime::Runc(path) = &oci {
            cmd.arg("--runc").arg(path);
        }
        cmd.args(["run", "--pod", "p1", "--name", name, "--image", "busybox"]);
        if hold {
            cmd.arg("--hold");
        }
        cmd.arg("--")
            .args(command)
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let status: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        (child, status)
    };
    let (mut first, long) = driver("long", false, &["sleep", "1000"]);
    first.wait().unwrap();
    let (mut held, _) = driver("short", true, &["sh", "-c", "sleep 1; exit 7"]);
    held.kill().unwrap();
    held.wait().unwrap();

    let adopted = LocalRuntime::open(config(&node.root, node.node_name(), &oci)).unwrap();
    let long_id = ContainerId {
        pod_uid: "p1".into(),
        name: "long".into(),
        attempt: 0,
    };
    let short_id = ContainerId {
        pod_uid: "p1".into(),
        name: "short".into(),
        attempt: 0,
    };
    let status = adopted
        .containers(Some("p1"))
        .unwrap()
        .into_iter()
        .find(|c| c.id == long_id)
        .unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.pid, long["pid"].as_i64().map(|p| p as i32));
    let short = wait_exit(&adopted, &short_id, Duration::from_secs(10));
    assert_eq!(short.exit_code, Some(7));
    assert!(matches!(
        adopted.start_container("p1", &ContainerConfig::new("long", "busybox")),
        Err(skiff_runtime::Error::ContainerExists(_))
    ));
    let stopped = adopted.stop_container(&long_id, Duration::ZERO).unwrap();
    assert_eq!(stopped.signal, Some(9));
}

fn two_nodes_on_one_machine_do_not_see_each_other(oci: OciRuntime) {
    let a = node(&oci);
    let b = node(&oci);
    sandbox(&a, "p1");
    sandbox(&b, "p1");
    let sleeper = ContainerConfig {
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::new("app", "busybox")
    };
    let on_a = a.start_container("p1", &sleeper).unwrap();
    let on_b = b.start_container("p1", &sleeper).unwrap();
    assert_ne!(a.cgroup_of(&on_a.id), b.cgroup_of(&on_b.id));
    assert_eq!(
        a.containers(None)
            .unwrap()
            .iter()
            .map(|c| c.pid)
            .collect::<Vec<_>>(),
        [on_a.pid]
    );
    assert_eq!(
        b.containers(None)
            .unwrap()
            .iter()
            .map(|c| c.pid)
            .collect::<Vec<_>>(),
        [on_b.pid]
    );
    a.reset().unwrap();
    let still = b.containers(Some("p1")).unwrap();
    assert_eq!(
        still[0].state,
        ContainerState::Running,
        "resetting one node leaves the other's containers"
    );
    assert!(alive(on_b.pid.unwrap()));
    assert!(!alive(on_a.pid.unwrap()));
}

fn nothing_is_left_behind(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let sleeper = ContainerConfig {
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::new("app", "busybox")
    };
    let running = node.start_container("p1", &sleeper).unwrap();
    let cgroup_root = node.cgroup_root();
    let zygote: i32 = std::fs::read_to_string(node.root.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(zygote), "monitors are forked from the node's zygote");
    node.reset().unwrap();
    assert!(!alive(zygote), "the zygote is gone");
    assert!(
        !alive(running.pid.unwrap()),
        "the container's process is gone"
    );
    assert!(!alive(running.monitor_pid.unwrap()), "its monitor is gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(node.root.to_str().unwrap()),
        "no mount under the node's root: {mounts}"
    );
    for hierarchy in cgroups::hierarchies() {
        let dir = hierarchy.join(cgroup_root.trim_start_matches('/'));
        assert!(!dir.exists(), "{} remains", dir.display());
    }
    assert!(!node.root.exists());
}

fn exited_attempts_are_pruned_with_their_logs(oci: OciRuntime) {
    let node = node(&oci);
    sandbox(&node, "p1");
    let mut logs = Vec::new();
    for attempt in 0..3 {
        let config = ContainerConfig {
            attempt,
            ..shell("app", &format!("echo attempt {attempt}"))
        };
        let started = node.start_container("p1", &config).unwrap();
        logs.push(wait_exit(&node, &started.id, Duration::from_secs(10)).log_path);
    }
    let pruned = node.prune_exited(1).unwrap();
    assert_eq!(
        pruned.iter().map(|id| id.attempt).collect::<Vec<_>>(),
        [1, 0]
    );
    assert!(!logs[0].exists() && !logs[1].exists());
    assert_eq!(
        crilog::read_text(&logs[2]).unwrap(),
        "attempt 2\n",
        "the newest is kept for --previous"
    );
    assert_eq!(node.containers(None).unwrap().len(), 1);
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: its monitor has not reaped it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod libcontainer {
            $(#[test] fn $test() { super::$test(skiff_runtime::OciRuntime::Libcontainer) })*
        }
        mod runc {
            $(#[test] fn $test() { super::$test(skiff_runtime::OciRuntime::Runc("/usr/sbin/runc".into())) })*
        }
    };
}

conformance!(
    run_exits_with_its_code_and_logs_in_cri_format,
    stop_sends_sigterm_then_sigkill_after_the_grace_period,
    an_oom_kill_is_reported_as_such,
    limits_are_visible_in_the_cgroup,
    security_defaults_are_containerds,
    exec_runs_commands_in_the_container,
    a_container_that_cannot_start_says_why,
    a_new_runtime_adopts_the_containers_of_a_killed_one,
    two_nodes_on_one_machine_do_not_see_each_other,
    nothing_is_left_behind,
    exited_attempts_are_pruned_with_their_logs,
);
