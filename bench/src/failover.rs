//! The failover benchmark (issue 11, without Services yet): a release `skiff server` and two
//! `skiff agent`s joined by token; a one-replica Deployment preferring the second node; that
//! node's agent frozen (SIGSTOP). Seconds from the freeze to the node seen unreachable and to
//! a replacement pod Ready on the other node, over several runs.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use skiff_testkit::SkiffAgent;

use crate::nodes::Cluster;
use crate::report::{ms, percentile, Better, Report};

/// Issue 11's target for a replacement Ready, and Kubernetes' defaults (40 s + 300 s).
const TARGET_S: f64 = 15.0;
const KUBERNETES_S: f64 = 340.0;

fn signal(agent: &SkiffAgent, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), signal)?;
    Ok(())
}

fn condition(node: &Node, kind: &str) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Ready and without the unreachable taints: pods may be placed there again.
fn back(node: &Node) -> bool {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/unreachable"));
    condition(node, "Ready") == "True" && !tainted
}

fn ready_on(pod: &Pod, node: &str) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn run(runs: usize) -> anyhow::Result<Report> {
    let mut cluster = Cluster::start("failover")?;
    let stays = cluster.join("stays")?;
    let fails = cluster.join("fails")?;
    let client = cluster.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let (stays, agent, fails) = (&stays.name, &fails.agent, &fails.name);
    let poll = Duration::from_millis(100);
    let mut unreachable = Vec::new();
    let mut replaced = Vec::new();
    for run in 0..runs {
        // The failing node is back, Ready and untainted before each run.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !back(&nodes.get(fails).await?) {
            anyhow::ensure!(Instant::now() < deadline, "{fails} did not come back");
            tokio::time::sleep(poll).await;
        }
        let name = format!("mover-{run}");
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [fails]}]}}]}},
                    "containers": [{"name": "main", "image": "busybox",
                        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}}}
        }))?;
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        let selector = ListParams::default().labels(&format!("app={name}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pods
            .list(&selector)
            .await?
            .items
            .iter()
            .any(|p| ready_on(p, fails))
        {
            anyhow::ensure!(Instant::now() < deadline, "the pod never ran on {fails}");
            tokio::time::sleep(poll).await;
        }
        signal(agent, nix::sys::signal::Signal::SIGSTOP)?;
        let frozen = Instant::now();
        let mut seen_unreachable = None;
        let deadline = frozen + Duration::from_secs(120);
        let ready_elsewhere = loop {
            anyhow::ensure!(Instant::now() < deadline, "no replacement within 2 minutes");
            if seen_unreachable.is_none()
                && condition(&nodes.get(fails).await?, "Ready") == "Unknown"
            {
                seen_unreachable = Some(frozen.elapsed());
            }
            if pods
                .list(&selector)
                .await?
                .items
                .iter()
                .any(|p| ready_on(p, stays))
            {
                break frozen.elapsed();
            }
            tokio::time::sleep(poll).await;
        };
        signal(agent, nix::sys::signal::Signal::SIGCONT)?;
        eprintln!(
            "run {run}: unreachable after {:.1?}, replacement Ready after {ready_elsewhere:.1?}",
            seen_unreachable.unwrap_or_default()
        );
        unreachable.push(seen_unreachable.context("the node was never seen Unknown")?);
        replaced.push(ready_elsewhere);
        deployments.delete(&name, &DeleteParams::default()).await?;
    }
    let mut report = Report::new("failover", "skiff", "target (issue 11)".into());
    let s = |d: Duration| ms(d) / 1000.0;
    for (what, samples) in [
        ("node unreachable", &mut unreachable),
        ("replacement Ready", &mut replaced),
    ] {
        report.measured(
            format!("{what} p50, {runs} runs"),
            "s",
            Better::Lower,
            s(percentile(samples, 50.0)),
        );
        let max = s(percentile(samples, 100.0));
        if what == "replacement Ready" {
            report.add(
                format!("{what} max, {runs} runs"),
                "s",
                Better::Lower,
                max,
                TARGET_S,
            );
        } else {
            report.measured(format!("{what} max, {runs} runs"), "s", Better::Lower, max);
        }
    }
    report.measured(
        "Kubernetes' defaults (40 s + 300 s)",
        "s",
        Better::Lower,
        KUBERNETES_S,
    );
    Ok(report)
}
