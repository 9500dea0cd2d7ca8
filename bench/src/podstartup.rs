//! The pod start-up benchmark: a release `skiff server` and a `skiff agent` joined to it with a
//! token (the image imported, nothing pulled), pods created at a steady rate and scheduled onto
//! that node; creation to Ready as a watch sees it, and the agent's memory idle and with every
//! pod running, with the per-container monitors counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skiff_testkit::{memory_of, memory_under};

use crate::nodes::Cluster;
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

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    let mut cluster = Cluster::start("pod start-up")?;
    let node = cluster.join("node")?;
    let (agent, node_dir) = (&node.agent, node.dir.as_path());
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, "default");
    let name = &node.name;

    // Idle: registered, heartbeating, no pods, past its start (the agent gives back what only
    // its start used 10 s after joining).
    tokio::time::sleep(Duration::from_secs(30)).await;
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
        "creating {} pods at {}/s on node {name}",
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
    let (count, monitors_rss, monitors_pss) = memory_under(node_dir, Some("monitor"));

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
