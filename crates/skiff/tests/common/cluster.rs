//! A `skiff up` cluster for end-to-end tests as root, and more nodes joining it: images
//! imported (never pulled), ranges of their own, everything removed when dropped.

use std::path::Path;
use std::process::Command;

use skiff_testkit::images::{self, ArchiveFormat};

use super::*;

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A `skiff up` node with the project's images imported; its containers, mounts, cgroups and
/// data are removed (`skiff reset`) when dropped, whatever the test did.
pub struct Cluster {
    pub server: Option<SkiffServer>,
    pub node: String,
    pub dir: std::path::PathBuf,
    /// `--cluster-cidr` and `--service-cidr`, the cluster's own.
    pub ranges: [String; 4],
}

/// Pod and Service ranges of their own for each cluster of this run: the clusters of tests
/// running side by side share the machine's network namespace, where each node's bridge holds
/// its pod CIDR's gateway and its Service CIDR is routed to it.
pub fn ranges() -> [String; 4] {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 32;
    [
        "--cluster-cidr".into(),
        format!("100.{}.0.0/16", 64 + n),
        "--service-cidr".into(),
        format!("100.{}.0.0/16", 96 + n),
    ]
}

/// `--node-name NODE --agent-port 0 --isolated` and the cluster's ranges, then `extra`.
pub fn up_args<'a>(node: &'a str, ranges: &'a [String; 4], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--node-name", node, "--agent-port", "0", "--isolated"];
    args.extend(ranges.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args
}

impl Cluster {
    pub fn start(node: &str) -> Cluster {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test runs containers and needs root"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let archives = dir.path().join("images");
        std::fs::create_dir_all(&archives).unwrap();
        for spec in [
            images::ImageSpec::busybox(),
            images::ImageSpec::my_api("v2.1"),
        ] {
            import(
                dir.path(),
                &images::build(&spec, ArchiveFormat::Oci, &archives),
            );
        }
        let path = dir.path().to_path_buf();
        let node = format!("{node}-{}", std::process::id());
        let ranges = ranges();
        let extra = ["--restart-backoff", "1s", "--pod-eviction-timeout", "3s"];
        let server = SkiffServer::up_in(Path::new(SKIFF), dir, &up_args(&node, &ranges, &extra))
            .unwrap_or_else(|e| panic!("{e}"));
        Cluster {
            server: Some(server),
            node,
            dir: path,
            ranges,
        }
    }

    pub fn server(&self) -> &SkiffServer {
        self.server.as_ref().expect("running")
    }

    /// SIGKILL of `skiff up`, then a new one on the same data directory.
    pub fn kill_and_restart(&mut self) {
        let dir = self.server.take().expect("running").stop();
        let args = up_args(&self.node, &self.ranges, &["--restart-backoff", "1s"]);
        let server =
            SkiffServer::up_in(Path::new(SKIFF), dir, &args).unwrap_or_else(|e| panic!("{e}"));
        self.server = Some(server);
    }

    /// A new `skiff up` on the same data directory once the last one has ended.
    pub fn up_again(&mut self) {
        let dir = self.server.take().expect("started once").stop();
        let server = SkiffServer::up_in(
            Path::new(SKIFF),
            dir,
            &up_args(&self.node, &self.ranges, &[]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.server = Some(server);
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        kubectl(self.server(), args).out()
    }

    /// Waits until `path` of `object` reads `want`; `what` says what is awaited.
    pub fn wait_for(&self, what: &str, object: &str, path: &str, want: &str) {
        eventually(what, || {
            let s = self.get(object, path);
            (s != want).then_some(s)
        });
    }

    /// Waits until `kubectl <logs_args>` prints `want`.
    pub fn wait_for_logs(&self, what: &str, logs_args: &[&str], want: &str) {
        eventually(what, || {
            let logs = kubectl(self.server(), logs_args).stdout;
            (logs != want).then_some(logs)
        });
    }

    pub fn get(&self, what: &str, path: &str) -> String {
        kubectl(
            self.server(),
            &["get", what, "-o", &format!("jsonpath={path}")],
        )
        .stdout
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let dir = server.stop();
            reset(&self.node, dir.path(), None);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pod of busybox running `script` with `sh -c`, never pulled (no registry is reachable).
pub fn busybox_pod(name: &str, restart: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {script:?}]\n"
    )
}

/// `skiff image import` of `archive` into the node of `data_dir`.
pub fn import(data_dir: &Path, archive: &Path) {
    let out = Command::new(SKIFF)
        .args(["image", "import", "--data-dir"])
        .arg(data_dir)
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A join token of the cluster whose server keeps its data in `server_dir`.
pub fn join_token(server_dir: &Path) -> String {
    let out = Command::new(SKIFF)
        .args(["token", "create", "--data-dir"])
        .arg(server_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Another node of the cluster on this machine: its own data directory with the cluster's
/// images imported (never a pull); its containers and mounts removed (`skiff reset`) when
/// dropped.
pub struct SecondNode {
    pub name: String,
    pub data: tempfile::TempDir,
}

impl SecondNode {
    pub fn new(cluster: &Cluster, name: &str) -> SecondNode {
        let data = tempfile::tempdir().unwrap();
        for archive in std::fs::read_dir(cluster.dir.join("images")).unwrap() {
            import(data.path(), &archive.unwrap().path());
        }
        SecondNode {
            name: format!("{name}-{}", std::process::id()),
            data,
        }
    }

    /// Its agent, joined to the cluster (`extra`: the token the first time).
    pub fn start(&self, cluster: &Cluster, extra: &[&str]) -> skiff_testkit::SkiffAgent {
        let mut args = vec!["--isolated"];
        args.extend(cluster.ranges.iter().map(String::as_str));
        args.extend_from_slice(extra);
        skiff_testkit::SkiffAgent::start(
            Path::new(SKIFF),
            &cluster.server().url(),
            self.data.path(),
            &self.name,
            &args,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        reset(&self.name, self.data.path(), None);
    }
}

/// `skiff reset` of node `name` on `dir`, whatever the test did.
fn reset(name: &str, dir: &Path, host: Option<&skiff_testkit::hosts::Host>) {
    skiff_testkit::reset_node(Path::new(SKIFF), name, dir, host);
}

/// The monitors (and so the containers) running under `dir`.
pub fn monitors_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("\0monitor\0") && text.contains(&needle)
        })
        .collect()
}

/// A cluster over a test LAN: `skiff server` on this machine's LAN address and a `skiff agent`
/// in each host's network namespace, joined with a token, the project's images (busybox,
/// my-api v2.1 and v2.2) imported on every node. Dropped in order: agents (and their nodes'
/// containers, `skiff reset`), the server, the hosts.
pub struct LanCluster {
    pub nodes: Vec<LanNode>,
    pub server: SkiffServer,
    pub ranges: [String; 4],
    /// Where the image archives are.
    pub images: tempfile::TempDir,
    pub hosts: skiff_testkit::hosts::Hosts,
}

/// One node of a [`LanCluster`].
pub struct LanNode {
    pub name: String,
    pub host: skiff_testkit::hosts::Host,
    pub data: tempfile::TempDir,
    pub agent: Option<skiff_testkit::SkiffAgent>,
}

impl LanCluster {
    /// `count` nodes named `<name>-<i>`.
    pub fn start(name: &str, count: usize) -> LanCluster {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test makes network namespaces and runs containers: it needs root"
        );
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 10000);
        let subnet = ((pid % 200) as u8).wrapping_add(n * 7) % 250;
        let hosts = skiff_testkit::hosts::Hosts::create(&tag, subnet, count)
            .unwrap_or_else(|e| panic!("making the test hosts: {e}"));
        let ranges = ranges();
        let mut server_args: Vec<&str> = ranges.iter().map(String::as_str).collect();
        server_args.extend(["--pod-eviction-timeout", "3s"]);
        let server = SkiffServer::start_on(Path::new(SKIFF), hosts.gateway.into(), &server_args)
            .unwrap_or_else(|e| panic!("{e}"));
        let images = tempfile::tempdir().unwrap();
        for spec in [
            images::ImageSpec::busybox(),
            images::ImageSpec::my_api("v2.1"),
            images::ImageSpec::my_api("v2.2"),
        ] {
            images::build(&spec, ArchiveFormat::Oci, images.path());
        }
        let mut cluster = LanCluster {
            nodes: Vec::new(),
            server,
            ranges,
            images,
            hosts,
        };
        let token = join_token(cluster.server.data_dir());
        for (i, host) in cluster.hosts.hosts.clone().into_iter().enumerate() {
            let data = tempfile::tempdir().unwrap();
            for archive in std::fs::read_dir(cluster.images.path()).unwrap() {
                import(data.path(), &archive.unwrap().path());
            }
            let mut node = LanNode {
                name: format!("{name}-{i}-{pid}"),
                host,
                data,
                agent: None,
            };
            node.start(&cluster.server.url(), &cluster.ranges, &["--token", &token]);
            cluster.nodes.push(node);
        }
        cluster
    }
}

impl LanNode {
    /// Starts the node's agent on the cluster's `server` and `ranges` (`extra`: the token the
    /// first time).
    pub fn start(&mut self, server: &str, ranges: &[String; 4], extra: &[&str]) {
        let mut args = vec!["--isolated"];
        args.extend(ranges.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let agent = skiff_testkit::SkiffAgent::start_on(
            Path::new(SKIFF),
            &self.host,
            server,
            self.data.path(),
            &self.name,
            &args,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.agent = Some(agent);
    }
}

impl Drop for LanNode {
    fn drop(&mut self) {
        drop(self.agent.take());
        reset(&self.name, self.data.path(), Some(&self.host));
    }
}
