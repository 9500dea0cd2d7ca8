//! A release `skiff server` with real nodes joined by token (busybox imported, nothing
//! pulled, `--isolated`), for the benchmarks that run containers; the nodes' containers,
//! mounts and cgroups are removed (`skiff reset`) when it is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};
use skiff_testkit::{SkiffAgent, SkiffServer};

pub struct Cluster {
    pub skiff: PathBuf,
    pub server: SkiffServer,
    token: String,
    archive: PathBuf,
    /// The joined nodes' names and data directories.
    nodes: Vec<(String, PathBuf)>,
    work: tempfile::TempDir,
}

/// One joined node.
pub struct Node {
    pub agent: SkiffAgent,
    pub name: String,
    pub dir: PathBuf,
}

impl Cluster {
    /// `benchmark` names what needs root in the error when not run as root.
    pub fn start(benchmark: &str) -> anyhow::Result<Cluster> {
        // SAFETY: geteuid has no preconditions.
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "the {benchmark} benchmark runs containers: run it as root"
        );
        let skiff = crate::binary::release_binary()?;
        let work = tempfile::tempdir()?;
        let archive = build(&ImageSpec::busybox(), ArchiveFormat::Oci, work.path());
        let server = SkiffServer::start(&skiff, &[]).map_err(anyhow::Error::msg)?;
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
            archive,
            nodes: Vec::new(),
            work,
        })
    }

    /// A new node `bench-<label>-<pid>` joined with the token, ready.
    pub fn join(&mut self, label: &str) -> anyhow::Result<Node> {
        let name = format!("bench-{label}-{}", std::process::id());
        let dir = self.work.path().join(&name);
        let imported = Command::new(&self.skiff)
            .args(["image", "import", "--data-dir"])
            .arg(&dir)
            .arg(&self.archive)
            .status()?;
        anyhow::ensure!(imported.success(), "importing busybox into {name} failed");
        self.nodes.push((name.clone(), dir.clone()));
        let agent = SkiffAgent::start(
            &self.skiff,
            &self.server.url(),
            &dir,
            &name,
            &["--token", &self.token, "--isolated"],
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Node { agent, name, dir })
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        self.server.client().await.map_err(anyhow::Error::msg)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (name, dir) in &self.nodes {
            reset(&self.skiff, name, dir);
        }
    }
}

fn reset(skiff: &Path, name: &str, dir: &Path) {
    let reset = Command::new(skiff)
        .args(["reset", "--node-name", name, "--data-dir"])
        .arg(dir)
        .status();
    if !reset.is_ok_and(|s| s.success()) {
        eprintln!("warning: skiff reset of {} failed", dir.display());
    }
}
