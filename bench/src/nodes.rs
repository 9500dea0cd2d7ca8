//! A release `skiff server` with real nodes joined by token (busybox imported, nothing
//! pulled, `--isolated`), for the benchmarks that run containers: all on this machine, or each
//! node on a host of a test LAN (network namespaces, `skiff_testkit::hosts`) so that pods of
//! different nodes reach each other; the nodes' containers, mounts, cgroups and networks are
//! removed (`skiff reset`) when it is dropped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use skiff_testkit::hosts::{Host, Hosts};
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};
use skiff_testkit::{SkiffAgent, SkiffServer};

pub struct Cluster {
    pub skiff: PathBuf,
    pub server: SkiffServer,
    token: String,
    archives: Vec<PathBuf>,
    /// The joined nodes' names, data directories and hosts.
    nodes: Vec<(String, PathBuf, Option<Host>)>,
    work: tempfile::TempDir,
    /// The LAN the nodes are on, when they are not on this machine; dropped last.
    lan: Option<Hosts>,
}

/// One joined node.
pub struct Node {
    pub agent: SkiffAgent,
    pub name: String,
    pub dir: PathBuf,
    /// Its host on the LAN, if the cluster has one.
    pub host: Option<Host>,
}

impl Cluster {
    /// `benchmark` names what needs root in the error when not run as root.
    pub fn start(benchmark: &str) -> anyhow::Result<Cluster> {
        Self::start_with(benchmark, None, &[ImageSpec::busybox()])
    }

    /// Like [`Cluster::start`], the server on a LAN of `hosts` hosts, each joined node on the
    /// next one, with busybox and `my-api:v2.1` imported.
    pub fn start_lan(benchmark: &str, hosts: usize) -> anyhow::Result<Cluster> {
        let pid = std::process::id();
        let lan = Hosts::create(
            &format!("b{}", pid % 100_000),
            (pid % 200 + 20) as u8,
            hosts,
        )
        .map_err(anyhow::Error::msg)?;
        Self::start_with(
            benchmark,
            Some(lan),
            &[ImageSpec::busybox(), ImageSpec::my_api("v2.1")],
        )
    }

    fn start_with(
        benchmark: &str,
        lan: Option<Hosts>,
        images: &[ImageSpec],
    ) -> anyhow::Result<Cluster> {
        // SAFETY: geteuid has no preconditions.
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "the {benchmark} benchmark runs containers: run it as root"
        );
        let skiff = crate::binary::release_binary()?;
        let work = tempfile::tempdir()?;
        let archives = images
            .iter()
            .map(|spec| build(spec, ArchiveFormat::Oci, work.path()))
            .collect();
        let server = match &lan {
            Some(lan) => SkiffServer::start_on(&skiff, lan.gateway.into(), &[]),
            None => SkiffServer::start(&skiff, &[]),
        }
        .map_err(anyhow::Error::msg)?;
        let token = Command::new(&skiff)
            .args(["token", "create", "--data-dir"])
            .arg(server.data_dir())
            .output()?;
        anyhow::ensure!(
            token.status.success(),
            "skiff token create: {}",
            String::from_utf8_lossy(&token.stderr)
        );
        Ok(Cluster {
            token: String::from_utf8(token.stdout)?.trim().to_string(),
            skiff,
            server,
            archives,
            nodes: Vec::new(),
            work,
            lan,
        })
    }

    /// A new node `bench-<label>-<pid>` joined with the token, ready.
    pub fn join(&mut self, label: &str) -> anyhow::Result<Node> {
        self.join_under(label, &[])
    }

    /// Like [`Cluster::join`], the agent run by `wrapper` (a profiler and its options, e.g.
    /// `valgrind --tool=callgrind`; the agent's PID is then the wrapper's); on this machine only.
    pub fn join_under(&mut self, label: &str, wrapper: &[&str]) -> anyhow::Result<Node> {
        let name = format!("bench-{label}-{}", std::process::id());
        let dir = self.work.path().join(&name);
        for archive in &self.archives {
            let imported = Command::new(&self.skiff)
                .args(["image", "import", "--data-dir"])
                .arg(&dir)
                .arg(archive)
                .status()?;
            anyhow::ensure!(
                imported.success(),
                "importing {} into {name} failed",
                archive.display()
            );
        }
        anyhow::ensure!(
            wrapper.is_empty() || self.lan.is_none(),
            "a wrapped agent runs on this machine, not on a LAN host"
        );
        let host = match &self.lan {
            Some(lan) => Some(
                lan.hosts
                    .get(self.nodes.len())
                    .cloned()
                    .context("more nodes than hosts on the LAN")?,
            ),
            None => None,
        };
        self.nodes.push((name.clone(), dir.clone(), host.clone()));
        let args = ["--token", &self.token, "--isolated"];
        let url = self.server.url();
        let agent = match &host {
            Some(host) => SkiffAgent::start_on(&self.skiff, host, &url, &dir, &name, &args),
            None => match wrapper.split_first() {
                Some((program, options)) => {
                    let mut command = Command::new(program);
                    command.args(options).arg(&self.skiff);
                    command.args(["agent", "--node-ip", "127.0.0.1"]);
                    SkiffAgent::start_command(command, &url, &dir, &name, &args)
                }
                None => SkiffAgent::start(&self.skiff, &url, &dir, &name, &args),
            },
        }
        .map_err(anyhow::Error::msg)?;
        Ok(Node {
            agent,
            name,
            dir,
            host,
        })
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        self.server.client().await.map_err(anyhow::Error::msg)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (name, dir, host) in &self.nodes {
            skiff_testkit::reset_node(&self.skiff, name, dir, host.as_ref());
        }
    }
}
