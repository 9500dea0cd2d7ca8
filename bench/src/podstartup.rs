//! The pod start-up benchmark: a release `skiff server` and a `skiff agent` joined to it with a
//! token (the image imported, nothing pulled), pods created at a steady rate and scheduled onto
//! that node; creation to Ready as a watch sees it, and the agent's memory idle and with every
//! pod running, with the per-container monitors counted.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::json;
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};
use skiff_testkit::{memory_of, SkiffAgent, SkiffServer};

use crate::report::{ms, percentile, Better, Report};

pub struct Sizes {
    pub pods: usize,
    pub per_second: f64,
}

/// Issue 8's targets.
const P50_MS: f64 = 150.0;
const P99_MS: f64 = 500.0;
const IDLE_MIB: f64 = 15.0;
const BUSY_MIB: f64 = 40.0;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The monitors of the node whose data directory is `dir`: (count, RSS sum, PSS sum).
fn monitors(dir: &Path) -> (usize, u64, u64) {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = (0, 0, 0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let monitor = args.get(1).is_some_and(|a| a == "monitor");
        if monitor && args.iter().any(|a| a.contains(&needle)) {
            if let Ok((rss, pss)) = memory_of(pid) {
                found.0 += 1;
                found.1 += rss;
                found.2 += pss;
            }
        }
    }
    found
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the pod start-up benchmark runs containers: run it as root"
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
    let token = String::from_utf8(token.stdout)?.trim().to_string();
    let node_dir = work.path().join("node");
    let imported = Command::new(&skiff)
        .args(["image", "import", "--data-dir"])
        .arg(&node_dir)
        .arg(&archive)
        .status()?;
    anyhow::ensure!(imported.success(), "importing busybox failed");
    let node = format!("bench-node-{}", std::process::id());
    let result = measure(&skiff, &server, &node_dir, &node, &token, &sizes).await;
    let reset = Command::new(&skiff)
        .args(["reset", "--node-name", &node, "--data-dir"])
        .arg(&node_dir)
        .status();
    if !reset.is_ok_and(|s| s.success()) {
        eprintln!("warning: skiff reset of {} failed", node_dir.display());
    }
    result
}

async fn measure(
    skiff: &Path,
    server: &SkiffServer,
    node_dir: &Path,
    node: &str,
    token: &str,
    sizes: &Sizes,
) -> anyhow::Result<Report> {
    let agent = SkiffAgent::start(
        skiff,
        &server.url(),
        node_dir,
        node,
        &["--token", token, "--isolated"],
    )
    .map_err(anyhow::Error::msg)?;
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig())?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Idle: registered, heartbeating, no pods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle_rss, idle_pss) = memory_of(agent.pid()).context("the agent's memory")?;

    let readiness: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watching = {
        let readiness = readiness.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event {
                    if ready(&pod) {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        readiness
                            .lock()
                            .expect("readiness lock")
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        })
    };
    eprintln!(
        "creating {} pods at {}/s on node {node}",
        sizes.pods, sizes.per_second
    );
    let mut created = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / sizes.per_second);
    let began = Instant::now();
    for i in 0..sizes.pods {
        let due = began + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let name = format!("startup-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "busybox",
                    "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
            },
        }))?;
        let sent = Instant::now();
        pods.create(&PostParams::default(), &pod).await?;
        created.insert(name, sent);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = readiness.lock().expect("readiness lock").len();
        if done >= sizes.pods {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {} pods became Ready within 2 minutes; the agent's log:\n{}",
            sizes.pods,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.abort();
    let mut latencies: Vec<Duration> = {
        let readiness = readiness.lock().expect("readiness lock");
        created
            .iter()
            .filter_map(|(name, sent)| {
                readiness
                    .get(name)
                    .map(|r| r.saturating_duration_since(*sent))
            })
            .collect()
    };

    // Busy: every pod running, the status writes settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (busy_rss, busy_pss) = memory_of(agent.pid()).context("the agent's memory")?;
    let (count, monitors_rss, monitors_pss) = monitors(node_dir);
    drop(agent);

    let mut report = Report::new("pod-startup", "skiff", "target (issue 8)".into());
    let n = sizes.pods;
    for (p, target) in [(50.0, P50_MS), (99.0, P99_MS)] {
        report.add(
            format!(
                "creation to Ready p{p:.0}, {n} pods at {}/s",
                sizes.per_second
            ),
            "ms",
            Better::Lower,
            ms(percentile(&mut latencies, p)),
            target,
        );
    }
    for (what, bytes) in [
        ("resident (RSS)", idle_rss),
        ("proportional (PSS)", idle_pss),
    ] {
        report.add(
            format!("agent idle, {what}"),
            "MiB",
            Better::Lower,
            mib(bytes),
            IDLE_MIB,
        );
    }
    report.measured(
        format!("agent with {n} pods, RSS"),
        "MiB",
        Better::Lower,
        mib(busy_rss),
    );
    report.measured(
        format!("agent with {n} pods, PSS"),
        "MiB",
        Better::Lower,
        mib(busy_pss),
    );
    report.measured(
        format!("{count} monitors, PSS summed"),
        "MiB",
        Better::Lower,
        mib(monitors_pss),
    );
    report.measured(
        format!("{count} monitors, RSS summed (shared pages counted {count} times)"),
        "MiB",
        Better::Lower,
        mib(monitors_rss),
    );
    report.add(
        format!("agent + monitors with {n} pods, PSS"),
        "MiB",
        Better::Lower,
        mib(busy_pss + monitors_pss),
        BUSY_MIB,
    );
    Ok(report)
}
