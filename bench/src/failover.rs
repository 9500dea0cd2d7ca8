//! The failover benchmark (issue 11): a release `skiff server` and two `skiff agent`s joined by
//! token, each node on a host of a test LAN; a one-replica Deployment of `my-api` preferring
//! the second node behind a Service, and a client on the first node's host requesting it
//! every 100 ms. The second node fails, by turns its agent frozen (SIGSTOP: its pod still
//! serves) and its link cut (nothing reaches it). Seconds from the failure to (a) the node
//! seen unreachable, (b) its endpoint gone from the Service's EndpointSlices, (c) a
//! replacement Ready on the other node, over several runs; and the client's failed requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use skiff_testkit::hosts::Host;

use crate::nodes::{self, Cluster};
use crate::report::{ms, percentile, Better, Report};

/// Issue 11's target for a replacement Ready, and Kubernetes' defaults (40 s + 300 s).
const TARGET_S: f64 = 15.0;
const KUBERNETES_S: f64 = 340.0;
const APP: &str = "mover";

/// How the node fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Freeze,
    Cut,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Freeze => "agent frozen",
            Failure::Cut => "link cut",
        }
    }

    fn apply(self, node: &nodes::Node, failing: bool) -> anyhow::Result<()> {
        use nix::sys::signal::Signal;
        match self {
            Failure::Freeze => {
                let signal = if failing {
                    Signal::SIGSTOP
                } else {
                    Signal::SIGCONT
                };
                let pid = nix::unistd::Pid::from_raw(node.agent.pid() as i32);
                nix::sys::signal::kill(pid, signal)?;
            }
            Failure::Cut => {
                let host = node.host.as_ref().context("a node on the LAN")?;
                let state = if failing { "down" } else { "up" };
                host.run(&["ip", "link", "set", "eth0", state])
                    .map_err(anyhow::Error::msg)?;
            }
        }
        Ok(())
    }
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

/// Whether the Service's slices send traffic to an endpoint on `node`.
fn serves_from(slices: &[EndpointSlice], node: &str) -> bool {
    slices.iter().flat_map(|s| &s.endpoints).any(|e| {
        e.node_name.as_deref() == Some(node)
            && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}

/// Requests of the client: when each was sent and whether it was answered.
type Requests = Arc<Mutex<Vec<(Instant, bool)>>>;

/// One HTTP request to `addr`, given a second to connect and a second to answer.
fn request(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: mover\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.") && {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(16)]).into_owned();
        head.contains(" 200")
    }
}

/// A thread in `host`'s network namespace requesting `addr` every 100 ms until `stop`.
fn client(
    host: &Host,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Requests, std::thread::JoinHandle<()>)> {
    let netns = std::fs::File::open(host.netns_path())
        .with_context(|| format!("opening {}", host.netns_path().display()))?;
    let requests = Requests::default();
    let seen = requests.clone();
    let thread = std::thread::spawn(move || {
        // This thread alone moves into the host's network namespace.
        if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("the client cannot enter the host's network namespace: {e}");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let ok = request(addr);
            seen.lock().expect("requests").push((sent, ok));
            std::thread::sleep(Duration::from_millis(100).saturating_sub(sent.elapsed()));
        }
    });
    Ok((requests, thread))
}

/// Polls `check` every 100 ms until it holds, at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What one kind of failure measured over its runs.
#[derive(Default)]
struct Figures {
    unreachable: Vec<Duration>,
    endpoints_removed: Vec<Duration>,
    replaced: Vec<Duration>,
    /// Until the client was answered again for good.
    outage: Vec<Duration>,
    requests: usize,
    failed: usize,
}

pub async fn run(runs: usize) -> anyhow::Result<Report> {
    let mut cluster = Cluster::start_lan("failover", 2)?;
    let stays = cluster.join("stays")?;
    let fails = cluster.join("fails")?;
    let client_api = cluster.client().await?;
    let nodes: Api<Node> = Api::all(client_api.clone());
    let pods: Api<Pod> = Api::namespaced(client_api.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client_api.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client_api.clone(), "default");
    let services: Api<Service> = Api::namespaced(client_api, "default");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"port": 8080}]}
    }))?;
    let service = services.create(&PostParams::default(), &service).await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no cluster IP")?;
    let addr = std::net::SocketAddr::new(cluster_ip.parse()?, 8080);
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, client_thread) = client(
        stays.host.as_ref().context("a node on the LAN")?,
        addr,
        stop.clone(),
    )?;
    let of_app = ListParams::default().labels(&format!("app={APP}"));
    let by_service = ListParams::default().labels(&format!("kubernetes.io/service-name={APP}"));
    let (stays_name, fails_name) = (stays.name.as_str(), fails.name.as_str());
    let mut figures: Vec<(Failure, Figures)> = Vec::new();
    for how in [Failure::Freeze, Failure::Cut] {
        let mut f = Figures::default();
        for run in 0..runs {
            until("the failing node back", Duration::from_secs(90), || async {
                Ok(back(&nodes.get(fails_name).await?))
            })
            .await?;
            until(
                "the last run's pods gone",
                Duration::from_secs(90),
                || async { Ok(pods.list(&of_app).await?.items.is_empty()) },
            )
            .await?;
            let deployment: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": APP},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": APP}},
                    "template": {"metadata": {"labels": {"app": APP}}, "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "preference": {"matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [fails_name]}]}}]}},
                        "containers": [{"name": "main", "image": "my-api:v2.1",
                            "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 8080}]}]}}}
            }))?;
            deployments
                .create(&PostParams::default(), &deployment)
                .await?;
            until(
                "the pod Ready on the failing node",
                Duration::from_secs(60),
                || async {
                    Ok(pods
                        .list(&of_app)
                        .await?
                        .items
                        .iter()
                        .any(|p| ready_on(p, fails_name)))
                },
            )
            .await?;
            until("the client answered", Duration::from_secs(30), || async {
                let seen = requests.lock().expect("requests");
                Ok(seen.len() >= 5 && seen.iter().rev().take(5).all(|(_, ok)| *ok))
            })
            .await?;
            how.apply(&fails, true)?;
            let failed_at = Instant::now();
            let (mut unreachable, mut removed) = (None, None);
            let deadline = failed_at + Duration::from_secs(120);
            let replaced = loop {
                anyhow::ensure!(Instant::now() < deadline, "no replacement within 2 minutes");
                if unreachable.is_none()
                    && condition(&nodes.get(fails_name).await?, "Ready") == "Unknown"
                {
                    unreachable = Some(failed_at.elapsed());
                }
                if removed.is_none()
                    && !serves_from(&slices.list(&by_service).await?.items, fails_name)
                {
                    removed = Some(failed_at.elapsed());
                }
                if pods
                    .list(&of_app)
                    .await?
                    .items
                    .iter()
                    .any(|p| ready_on(p, stays_name))
                {
                    break failed_at.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // The client's view: every request from the failure until it is answered again
            // for a second, replacement included.
            until(
                "the client answered again",
                Duration::from_secs(30),
                || async {
                    let seen = requests.lock().expect("requests");
                    Ok(seen.iter().rev().take(10).all(|(_, ok)| *ok))
                },
            )
            .await?;
            let during: Vec<(Instant, bool)> = requests
                .lock()
                .expect("requests")
                .iter()
                .filter(|(at, _)| *at >= failed_at)
                .copied()
                .collect();
            how.apply(&fails, false)?;
            let failed = during.iter().filter(|(_, ok)| !*ok).count();
            // From the failure to the first request answered after the last failed one.
            let last_failed = during.iter().rposition(|(_, ok)| !*ok);
            let outage = last_failed
                .and_then(|i| during.get(i + 1))
                .map_or(Duration::ZERO, |(at, _)| at.duration_since(failed_at));
            eprintln!(
                "{} run {run}: unreachable after {:.1?}, endpoints removed after {:.1?}, replacement Ready after {replaced:.1?}; {failed} of {} requests failed, answered again after {outage:.1?}",
                how.name(),
                unreachable.unwrap_or_default(),
                removed.unwrap_or_default(),
                during.len()
            );
            f.unreachable
                .push(unreachable.context("the node was never seen Unknown")?);
            f.endpoints_removed
                .push(removed.context("the endpoint was never removed")?);
            f.replaced.push(replaced);
            f.outage.push(outage);
            f.requests += during.len();
            f.failed += failed;
            deployments.delete(APP, &DeleteParams::default()).await?;
        }
        figures.push((how, f));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client_thread.join();
    let mut report = Report::new("failover", "skiff", "target (issue 11)".into());
    let s = |d: Duration| ms(d) / 1000.0;
    for (how, mut f) in figures {
        let name = how.name();
        for (what, samples) in [
            ("node unreachable", &mut f.unreachable),
            ("endpoints removed", &mut f.endpoints_removed),
            ("replacement Ready", &mut f.replaced),
            ("client answered again", &mut f.outage),
        ] {
            report.measured(
                format!("{name}: {what} p50, {runs} runs"),
                "s",
                Better::Lower,
                s(percentile(samples, 50.0)),
            );
            let max = s(percentile(samples, 100.0));
            let row = format!("{name}: {what} max, {runs} runs");
            if what == "replacement Ready" {
                report.add(row, "s", Better::Lower, max, TARGET_S);
            } else {
                report.measured(row, "s", Better::Lower, max);
            }
        }
        report.measured(
            format!("{name}: requests failed of {} (every 100 ms)", f.requests),
            "requests",
            Better::Lower,
            f.failed as f64,
        );
    }
    report.measured(
        "Kubernetes' defaults (40 s + 300 s)",
        "s",
        Better::Lower,
        KUBERNETES_S,
    );
    Ok(report)
}
