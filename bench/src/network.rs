//! The network benchmark (issue 9): the Service proxy's rules at 10,000 Services (a full
//! write, then one change), pod network set-up per pod, both in a network namespace of their
//! own; cluster DNS queries per second with Debian's dnsperf; and, on a release cluster, the
//! time from an EndpointSlice written to the API to its rule live in a node's kernel (seen by
//! `nft monitor`).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_net::dns::Zone;
use skiff_net::nft::Table;
use skiff_net::proxy::{self, Protocol, ServicePort};
use skiff_net::rules::{Change, Ruleset};

use crate::nodes::Cluster;
use crate::report::{ms, percentile, Better, Report};

pub struct Sizes {
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub changes: usize,
    pub dns_seconds: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                services: 1000,
                endpoints: 10,
                pods: 20,
                changes: 20,
                dns_seconds: 3,
            }
        } else {
            Sizes {
                services: 10_000,
                endpoints: 10,
                pods: 100,
                changes: 100,
                dns_seconds: 10,
            }
        }
    }
}

fn settings() -> proxy::Settings {
    proxy::Settings {
        table: "skiffbench".into(),
        cluster_cidr: "10.42.0.0/16".parse().expect("a CIDR"),
        pod_cidr: "10.42.0.0/24".parse().expect("a CIDR"),
        bridge: "skiffbench0".into(),
        masquerade_egress: false,
    }
}

fn service_port(i: usize, endpoints: usize, generation: usize) -> ServicePort {
    let ip = |base: u32, n: usize| Ipv4Addr::from(base + n as u32);
    ServicePort {
        namespace: "default".into(),
        name: format!("svc-{i}"),
        protocol: Protocol::Tcp,
        cluster_ip: ip(u32::from(Ipv4Addr::new(10, 43, 0, 0)), i + 16),
        port: 80,
        node_port: None,
        endpoints: (0..endpoints)
            .map(|e| {
                (
                    ip(
                        u32::from(Ipv4Addr::new(10, 42, 0, 0)),
                        (i * endpoints + e + generation) % 65_000 + 2,
                    ),
                    8080,
                )
            })
            .collect(),
        affinity: None,
    }
}

/// Runs `f` on a thread inside a new network namespace (whatever it makes there goes with
/// the namespace), on a runtime of that thread.
fn in_new_netns<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare a network namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
}

/// Full write and single changes of the proxy's table at `services` Services.
fn proxy_figures(report: &mut Report, sizes: &Sizes) -> anyhow::Result<()> {
    let (services, endpoints, changes) = (sizes.services, sizes.endpoints, sizes.changes);
    let (full, mut incremental) = in_new_netns(move || {
        let mut table = Table::new(settings());
        let mut rules = Ruleset::default();
        // What the agent does: each Service into the rules, then one write.
        let began = Instant::now();
        let mut change = Change::default();
        for i in 0..services {
            rules.set_service(
                &format!("default/svc-{i}"),
                &[service_port(i, endpoints, 0)],
                &mut change,
            );
        }
        table.apply(&change, &rules)?;
        let full = began.elapsed();
        let mut incremental = Vec::new();
        for generation in 1..=changes {
            let i = generation * 7919 % services;
            let began = Instant::now();
            let mut change = Change::default();
            rules.set_service(
                &format!("default/svc-{i}"),
                &[service_port(i, endpoints, generation)],
                &mut change,
            );
            table.apply(&change, &rules)?;
            incremental.push(began.elapsed());
        }
        Ok((full, incremental))
    })?;
    let label = format!("{services} Services x {endpoints} endpoints");
    report.add(
        format!("proxy full write, {label}"),
        "ms",
        Better::Lower,
        ms(full),
        2000.0,
    );
    report.add(
        format!("proxy one change p50, {label}"),
        "ms",
        Better::Lower,
        ms(percentile(&mut incremental, 50.0)),
        50.0,
    );
    report.add(
        format!("proxy one change p99, {label}"),
        "ms",
        Better::Lower,
        ms(percentile(&mut incremental, 99.0)),
        50.0,
    );
    Ok(())
}

/// Time to give a pod its interface and address (bridge made beforehand).
fn pod_setup_figures(report: &mut Report, sizes: &Sizes) -> anyhow::Result<()> {
    let pods = sizes.pods.min(250);
    let mut times = in_new_netns(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = tempfile::tempdir()?;
        let namespaces = tempfile::tempdir()?;
        runtime.block_on(async {
            let network = skiff_net::link::PodNetwork::start(skiff_net::link::Config {
                node: "bench".into(),
                pod_cidr: "10.42.0.0/24".parse().map_err(anyhow::Error::msg)?,
                cluster_cidr: "10.42.0.0/16".parse().map_err(anyhow::Error::msg)?,
                service_cidr: "10.43.0.0/16".parse().map_err(anyhow::Error::msg)?,
                node_ip: None,
                isolated: true,
                state_dir: state.path().to_path_buf(),
            })
            .await?;
            let mut times = Vec::new();
            let mut held = Vec::new();
            for i in 0..pods {
                let path = namespaces.path().join(format!("pod-{i}"));
                held.push(NetnsFile::create(path.clone())?);
                let began = Instant::now();
                network.attach(&format!("pod-{i}"), &path).await?;
                times.push(began.elapsed());
            }
            for i in 0..pods {
                network.detach(&format!("pod-{i}")).await?;
            }
            drop(held);
            anyhow::Ok(times)
        })
    })?;
    report.add(
        format!("pod network set-up p50 ({pods} pods)"),
        "ms",
        Better::Lower,
        ms(percentile(&mut times, 50.0)),
        10.0,
    );
    report.add(
        format!("pod network set-up p99 ({pods} pods)"),
        "ms",
        Better::Lower,
        ms(percentile(&mut times, 99.0)),
        10.0,
    );
    Ok(())
}

/// A network namespace held by a bind mount on a file, as sandboxes hold theirs.
struct NetnsFile(std::path::PathBuf);

impl NetnsFile {
    fn create(path: std::path::PathBuf) -> anyhow::Result<NetnsFile> {
        std::fs::File::create(&path)?;
        let target = path.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
        Ok(NetnsFile(path))
    }
}

impl Drop for NetnsFile {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Queries per second the node's DNS server answers, measured by dnsperf on this machine.
async fn dns_figures(report: &mut Report, sizes: &Sizes) -> anyhow::Result<()> {
    let mut zone = Zone::default();
    for i in 0..1000 {
        let svc = json!({"metadata": {"namespace": "default", "name": format!("svc-{i}")},
            "spec": {"clusterIP": format!("10.43.{}.{}", i / 250, i % 250 + 1), "ports": [{"name": "http", "port": 80}]}});
        zone.add_service(&svc, &[]);
    }
    let port = skiff_testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let (udp, tcp) = (
        std::net::UdpSocket::bind(addr)?,
        std::net::TcpListener::bind(addr)?,
    );
    let mut server =
        skiff_net::dnsserver::serve(udp, tcp, Arc::new(RwLock::new(zone)), Vec::new())?;
    let queries = tempfile::NamedTempFile::new()?;
    {
        let mut f = queries.as_file();
        for i in 0..1000 {
            writeln!(f, "svc-{i}.default.svc.cluster.local A")?;
        }
    }
    let seconds = sizes.dns_seconds.to_string();
    let out = tokio::process::Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-l",
            &seconds,
            "-c",
            "8",
            "-q",
            "200",
            "-d",
        ])
        .arg(queries.path())
        .output()
        .await
        .context("dnsperf (Debian package dnsperf) is needed for the DNS figure")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let qps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("dnsperf printed no rate:\n{text}"))?;
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost"))
        .unwrap_or("")
        .trim()
        .to_string();
    server.shutdown_gracefully().await.ok();
    report.add(
        format!("DNS queries per second (dnsperf; {lost})"),
        "queries/s",
        Better::Higher,
        qps,
        30_000.0,
    );
    Ok(())
}

/// An EndpointSlice written through the API until its address is in the node's kernel rules.
async fn endpoint_change_figures(report: &mut Report, sizes: &Sizes) -> anyhow::Result<()> {
    let mut cluster = Cluster::start("network")?;
    let node = cluster.join("net")?;
    let client = cluster.client().await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))?,
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let table = skiff_net::link::bridge_name(&node.name);
    let mut monitor = Command::new("nft")
        .args(["monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .context("nft (Debian package nftables) is needed")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let stdout = monitor.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let mut times = Vec::new();
    for i in 0..sizes.changes {
        let ip = format!("10.42.{}.{}", 200 + i / 250, i % 250 + 2);
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "bench-manual", "labels": {"kubernetes.io/service-name": "bench"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
        let began = Instant::now();
        if i == 0 {
            slices
                .create(&PostParams::default(), &serde_json::from_value(slice)?)
                .await?;
        } else {
            slices
                .patch(
                    "bench-manual",
                    &PatchParams::default(),
                    &Patch::Merge(&slice),
                )
                .await?;
        }
        let deadline = began + Duration::from_secs(10);
        let needle = format!("{ip} . 80");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = rx
                .recv_timeout(left)
                .with_context(|| format!("{ip} never reached table {table}"))?;
            if line.contains(&table) && line.contains(&needle) {
                times.push(at.duration_since(began));
                break;
            }
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    drop(node);
    report.add(
        "endpoint change to rule live p50",
        "ms",
        Better::Lower,
        ms(percentile(&mut times, 50.0)),
        100.0,
    );
    report.add(
        "endpoint change to rule live p99",
        "ms",
        Better::Lower,
        ms(percentile(&mut times, 99.0)),
        100.0,
    );
    Ok(())
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the network benchmark makes network namespaces: run it as root"
    );
    let mut report = Report::new("network", "skiff", "issue 9 targets".into());
    proxy_figures(&mut report, &sizes)?;
    pod_setup_figures(&mut report, &sizes)?;
    dns_figures(&mut report, &sizes).await?;
    endpoint_change_figures(&mut report, &sizes).await?;
    Ok(report)
}
