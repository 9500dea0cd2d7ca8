//! The footprint benchmark (issue 10): what a new user meets. A release `skiff up` on a fresh
//! data directory with the project's images imported, as `scripts/run` does: time from the
//! command to the API answering, then from `kubectl apply -f examples/article/` to the
//! api-server Deployment's three replicas all Ready; and the memory of every Skiff process of
//! the node (the `skiff up` process, the container monitors, the DNS socket holder; the
//! containers' own processes left out) with the example running and idle. Several runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};
use skiff_testkit::{memory_of, memory_under, SkiffServer};

use crate::podstartup::mib;
use crate::report::{ms, percentile, Better, Report};

/// Issue 10's targets, and what a k3s server with a workload uses.
const API_READY_MS: f64 = 1000.0;
const EXAMPLE_READY_MS: f64 = 3000.0;
const MEMORY_MIB: f64 = 50.0;
const K3S_MIB: f64 = 1600.0;

/// How long the example runs before its memory is read.
const SETTLE: Duration = Duration::from_secs(10);

struct Run {
    api_ready: Duration,
    example_ready: Duration,
    /// The `skiff up` process alone: RSS, PSS.
    up: (u64, u64),
    /// Every Skiff process of the node: count, RSS summed, PSS summed.
    all: (usize, u64, u64),
}

fn all_ready(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.as_ref();
    let generation = d.metadata.generation.unwrap_or(0);
    status.is_some_and(|s| {
        s.observed_generation.unwrap_or(0) >= generation
            && s.updated_replicas == Some(want)
            && s.ready_replicas == Some(want)
            && s.available_replicas == Some(want)
    })
}

/// One `skiff up` on a fresh directory with `archives` imported, the example applied.
async fn once(skiff: &Path, archives: &[std::path::PathBuf], run: usize) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    for archive in archives {
        let imported = Command::new(skiff)
            .args(["image", "import", "--data-dir"])
            .arg(dir.path())
            .arg(archive)
            .output()?;
        anyhow::ensure!(
            imported.status.success(),
            "importing {}: {}",
            archive.display(),
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    let node = format!("footprint-{}-{run}", std::process::id());
    let data = dir.path().to_path_buf();
    let began = Instant::now();
    let up = SkiffServer::up_in(
        skiff,
        dir,
        &["--node-name", &node, "--agent-port", "0", "--isolated"],
    )
    .map_err(anyhow::Error::msg)?;
    let api_ready = began.elapsed();
    let result = measure(&up, &data, api_ready).await;
    drop(up);
    skiff_testkit::reset_node(skiff, &node, &data, None);
    result
}

async fn measure(up: &SkiffServer, data: &Path, api_ready: Duration) -> anyhow::Result<Run> {
    let client = up.client().await.map_err(anyhow::Error::msg)?;
    // The API answers: it is what the time above waited for; check it once.
    client.apiserver_version().await?;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/article");
    let applied = Instant::now();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .args(["apply", "-f"])
        .arg(&examples)
        .output()
        .context("kubectl (the machine's) is needed")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = applied + Duration::from_secs(60);
    let example_ready = loop {
        if deployments
            .get_opt("api-server")
            .await?
            .is_some_and(|d| all_ready(&d))
        {
            break applied.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the example was not Ready within a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(SETTLE).await;
    Ok(Run {
        api_ready,
        example_ready,
        up: memory_of(up.pid())?,
        all: memory_under(data, None),
    })
}

pub async fn run(runs: usize) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the footprint benchmark runs containers: run it as root"
    );
    let skiff = crate::binary::release_binary()?;
    let images = tempfile::tempdir()?;
    let archives: Vec<_> = [
        ImageSpec::busybox(),
        ImageSpec::my_api("v2.1"),
        ImageSpec::my_api("v2.2"),
    ]
    .iter()
    .map(|spec| build(spec, ArchiveFormat::Oci, images.path()))
    .collect();
    let mut measured = Vec::new();
    for run in 0..runs {
        let one = once(&skiff, &archives, run).await?;
        eprintln!(
            "run {run}: API ready after {:.0?}, example Ready {:.0?} after apply; skiff up PSS {:.1} MiB, all {} Skiff processes PSS {:.1} MiB",
            one.api_ready,
            one.example_ready,
            mib(one.up.1),
            one.all.0,
            mib(one.all.2)
        );
        measured.push(one);
    }
    let mut report = Report::new("footprint", "skiff", "target (issue 10)".into());
    let mut api: Vec<Duration> = measured.iter().map(|r| r.api_ready).collect();
    let mut example: Vec<Duration> = measured.iter().map(|r| r.example_ready).collect();
    report.measured(
        format!("skiff up to API ready p50, {runs} runs"),
        "ms",
        Better::Lower,
        ms(percentile(&mut api, 50.0)),
    );
    report.add(
        format!("skiff up to API ready max, {runs} runs"),
        "ms",
        Better::Lower,
        ms(percentile(&mut api, 100.0)),
        API_READY_MS,
    );
    report.measured(
        format!("apply to example all Ready p50, {runs} runs"),
        "ms",
        Better::Lower,
        ms(percentile(&mut example, 50.0)),
    );
    report.add(
        format!("apply to example all Ready max, {runs} runs"),
        "ms",
        Better::Lower,
        ms(percentile(&mut example, 100.0)),
        EXAMPLE_READY_MS,
    );
    // Memory: the largest of the runs.
    let largest = |f: &dyn Fn(&Run) -> u64| measured.iter().map(f).max().unwrap_or(0);
    let count = measured.iter().map(|r| r.all.0).max().unwrap_or(0);
    report.measured(
        "skiff up process, RSS",
        "MiB",
        Better::Lower,
        mib(largest(&|r| r.up.0)),
    );
    report.measured(
        "skiff up process, PSS",
        "MiB",
        Better::Lower,
        mib(largest(&|r| r.up.1)),
    );
    report.measured(
        format!("{count} Skiff processes, RSS summed (shared pages counted in each)"),
        "MiB",
        Better::Lower,
        mib(largest(&|r| r.all.1)),
    );
    report.add(
        format!("{count} Skiff processes with the example running, PSS summed"),
        "MiB",
        Better::Lower,
        mib(largest(&|r| r.all.2)),
        MEMORY_MIB,
    );
    report.measured(
        "a k3s server with a workload (issue 10's figure)",
        "MiB",
        Better::Lower,
        K3S_MIB,
    );
    Ok(report)
}
