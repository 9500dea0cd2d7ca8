//! The density benchmark, Kubernetes' scalability envelope: a release `skiff server` with N hollow
//! nodes, and pods created through Deployments of 100 (30 to a namespace, the envelope's 3,000
//! pods per namespace) until P run, then latency pods one at a time. Figures: bindings per
//! second, pod startup latency (first seen by a watch to Running seen by the watch) of the
//! latency pods (held to the SLO, as Kubernetes' density test measures it) and of the
//! saturation burst, API call latency during the run, and the server's memory at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams, WatchEvent};
use serde_json::json;
use skiff_testkit::{cpu_seconds_of, memory_of, HollowConfig, HollowNodes, SkiffServer};

use crate::report::{ms, percentile, Better, Report};

pub struct Sizes {
    pub nodes: usize,
    pub pods: usize,
}

/// Pods per Deployment: the envelope's 30 pods per node come from Deployments of this size.
const REPLICAS: usize = 100;
/// Deployments per namespace: the envelope's limit of 3,000 pods per namespace.
const PER_NAMESPACE: usize = 30;

/// Pods created at a steady pace once the saturation pods run, whose start-up is held to the
/// SLO: Kubernetes' density test (ClusterLoader2) measures `PodStartupLatency` on such latency
/// pods only, since in the saturation burst a pod's time queued behind thousands of others
/// measures the throughput, not the start-up.
const LATENCY_PODS: usize = 200;
const LATENCY_PACE: Duration = Duration::from_millis(50);
const LATENCY_NAMESPACE: &str = "density-latency";

/// What the watch saw of each pod (by uid), saturation and latency pods apart.
#[derive(Default)]
struct Seen {
    first: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    latency: std::collections::HashSet<String>,
}

impl Seen {
    /// Start-up latencies (seen to Running) of the latency pods or of the others.
    fn startup(&self, latency: bool) -> Vec<Duration> {
        self.running
            .iter()
            .filter(|(uid, _)| self.latency.contains(*uid) == latency)
            .filter_map(|(uid, running)| Some(*running - *self.first.get(uid)?))
            .collect()
    }

    fn running_of(&self, latency: bool) -> usize {
        self.running
            .keys()
            .filter(|uid| self.latency.contains(*uid) == latency)
            .count()
    }
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    crate::controllers::deployment_of(
        name,
        replicas,
        json!({"name": "c", "image": "my-api:v2.1",
               "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}),
    )
}

/// The scheduler's core alone, in this process: decisions per second placing `pods` pods of
/// Deployments of 100 on `nodes` nodes in three zones (no API, no binding).
fn core_decisions_per_second(nodes: usize, pods: usize) -> f64 {
    use skiff_scheduler::{schedule, NodeInfo, PodInfo, Snapshot};
    let mut snapshot = Snapshot::default();
    for i in 0..nodes {
        snapshot.set_node(NodeInfo::from_json(&json!({
            "metadata": {"name": format!("n{i}"), "labels": {
                "kubernetes.io/hostname": format!("n{i}"),
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
            "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })));
    }
    let pods: Vec<PodInfo> = (0..pods)
        .map(|i| {
            PodInfo::from_json(&json!({
                "metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}"),
                             "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": format!("rs{}", i / REPLICAS), "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "i",
                         "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
            }))
        })
        .collect();
    let started = Instant::now();
    for (i, pod) in pods.into_iter().enumerate() {
        match schedule(&snapshot, &pod, i) {
            Ok(placement) => snapshot.place(Arc::new(pod), &placement.node),
            Err(d) => panic!("the core benchmark's pods all fit: {}", d.message),
        }
    }
    let n = snapshot.nodes().iter().map(|n| n.pods.len()).sum::<usize>();
    n as f64 / started.elapsed().as_secs_f64()
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    eprintln!(
        "scheduling {} pods on {} nodes with the core alone",
        sizes.pods, sizes.nodes
    );
    let core = core_decisions_per_second(sizes.nodes, sizes.pods);
    let bin = crate::binary::release_binary()?;
    // A /24 of pod addresses per node: the default /16 holds 256 nodes, a /10 16,384.
    let server = SkiffServer::start(&bin, &["--cluster-cidr", "10.64.0.0/10"])
        .map_err(anyhow::Error::msg)?;
    eprintln!("registering {} hollow nodes", sizes.nodes);
    let nodes_started = Instant::now();
    let _nodes = HollowNodes::start(
        &server,
        HollowConfig {
            count: sizes.nodes,
            zones: 3,
            ..HollowConfig::default()
        },
    );
    eprintln!("registered in {:.1?}", nodes_started.elapsed());
    let client = server.client().await.map_err(anyhow::Error::msg)?;

    // One watch of every pod records when each was first seen, bound and Running.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watching = {
        let seen = seen.clone();
        let events = skiff_hollow::watch_pods(client.clone(), None);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
                    continue;
                };
                let now = Instant::now();
                let uid = pod.metadata.uid;
                let mut seen = seen.lock().expect("seen");
                if pod.metadata.namespace == LATENCY_NAMESPACE {
                    seen.latency.insert(uid.clone());
                }
                seen.first.entry(uid.clone()).or_insert(now);
                if pod.spec.node_name.is_some() {
                    seen.bound.entry(uid.clone()).or_insert(now);
                }
                if pod.status.phase.as_deref() == Some("Running") {
                    seen.running.entry(uid).or_insert(now);
                }
            }
        })
    };

    // API latency during the run: a client reading a ConfigMap twenty times a second.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "probe"}, "data": {"k": "v"}}))?,
        )
        .await?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let probing = {
        let latencies = latencies.clone();
        tokio::spawn(async move {
            loop {
                let begun = Instant::now();
                if configmaps.get("probe").await.is_ok() {
                    latencies.lock().expect("latencies").push(begun.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let count = sizes.pods.div_ceil(REPLICAS);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for k in 0..count.div_ceil(PER_NAMESPACE) {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("density-{k}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    eprintln!("creating {count} Deployments for {} pods", sizes.pods);
    // CPU time per pod, unlike the rates, hardly depends on how much of this shared machine
    // the run was given: it tells a change's effect apart from the machine's mood.
    let cpu_before = (
        cpu_seconds_of(server.pid())?,
        cpu_seconds_of(std::process::id())?,
    );
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let deployments: Api<Deployment> =
                Api::namespaced(client.clone(), &format!("density-{}", i / PER_NAMESPACE));
            let replicas = REPLICAS.min(sizes.pods - i * REPLICAS);
            async move {
                deployments
                    .create(
                        &PostParams::default(),
                        &deployment(&format!("d{i}"), replicas),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let limit = Duration::from_secs(3600);
    loop {
        let (bound, running) = {
            let seen = seen.lock().expect("seen");
            (seen.bound.len(), seen.running_of(false))
        };
        if running >= sizes.pods {
            break;
        }
        if started.elapsed() > limit {
            anyhow::bail!("{running} of {} pods running after {limit:?}", sizes.pods);
        }
        eprint!(
            "\r  {:>6.1}s  bound {bound:>7}  running {running:>7}",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!();
    let total = started.elapsed();
    let per_pod = |before: f64, pid: u32| -> anyhow::Result<f64> {
        Ok((cpu_seconds_of(pid)? - before) * 1000.0 / sizes.pods as f64)
    };
    let server_cpu = per_pod(cpu_before.0, server.pid())?;
    let bench_cpu = per_pod(cpu_before.1, std::process::id())?;
    let saturation_binds: Vec<Instant> = {
        let seen = seen.lock().expect("seen");
        seen.bound.values().copied().collect()
    };

    eprintln!("creating {LATENCY_PODS} latency pods, one each {LATENCY_PACE:?}");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": LATENCY_NAMESPACE}}))?,
        )
        .await?;
    let latency: Api<Deployment> = Api::namespaced(client.clone(), LATENCY_NAMESPACE);
    let mut pace = tokio::time::interval(LATENCY_PACE);
    for i in 0..LATENCY_PODS {
        pace.tick().await;
        latency
            .create(&PostParams::default(), &deployment(&format!("l{i}"), 1))
            .await?;
    }
    let waited = Instant::now();
    while seen.lock().expect("seen").running_of(true) < LATENCY_PODS {
        if waited.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("latency pods not all running after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probing.abort();
    watching.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let (first_bind, last_bind) =
        saturation_binds
            .iter()
            .fold((None::<Instant>, None::<Instant>), |(lo, hi), &t| {
                (
                    Some(lo.map_or(t, |l| l.min(t))),
                    Some(hi.map_or(t, |h| h.max(t))),
                )
            });
    let binding_span = match (first_bind, last_bind) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => total.as_secs_f64(),
    };
    let mut latency_startup = seen.startup(true);
    let mut saturation_startup = seen.startup(false);
    let mut api = latencies.lock().expect("latencies").clone();
    let (rss, _) = memory_of(server.pid())?;

    let mut report = Report::new(
        "density",
        "skiff",
        format!("targets for {} nodes, {} pods", sizes.nodes, sizes.pods),
    );
    report.add(
        "bindings per second",
        "pods/s",
        Better::Higher,
        saturation_binds.len() as f64 / binding_span,
        1000.0,
    );
    report.measured(
        "scheduler core alone, decisions per second",
        "pods/s",
        Better::Higher,
        core,
    );
    report.measured(
        "server CPU time per saturation pod",
        "ms",
        Better::Lower,
        server_cpu,
    );
    report.measured(
        "hollow nodes' and watchers' CPU time per saturation pod",
        "ms",
        Better::Lower,
        bench_cpu,
    );
    report.measured(
        "all saturation pods running",
        "s",
        Better::Lower,
        total.as_secs_f64(),
    );
    report.measured(
        "latency pods' startup p50 (seen to Running, by watch)",
        "ms",
        Better::Lower,
        ms(percentile(&mut latency_startup, 50.0)),
    );
    report.add(
        "latency pods' startup p99 (seen to Running, by watch)",
        "ms",
        Better::Lower,
        ms(percentile(&mut latency_startup, 99.0)),
        5000.0,
    );
    report.measured(
        "saturation pods' startup p50 (queued behind the burst)",
        "ms",
        Better::Lower,
        ms(percentile(&mut saturation_startup, 50.0)),
    );
    report.measured(
        "saturation pods' startup p99 (queued behind the burst)",
        "ms",
        Better::Lower,
        ms(percentile(&mut saturation_startup, 99.0)),
    );
    report.add(
        "API GET p99 during the run",
        "ms",
        Better::Lower,
        ms(percentile(&mut api, 99.0)),
        1000.0,
    );
    report.add(
        "server resident memory at the end",
        "MiB",
        Better::Lower,
        rss as f64 / (1 << 20) as f64,
        4096.0,
    );
    Ok(report)
}
