//! `skiff up`: a whole cluster in one process: the API server with its controllers on the
//! embedded store, and a node agent running the pods on this machine. Stopping it leaves the
//! containers running; the next `skiff up` on the same data directory adopts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skiff_agent::join::{self, Credentials};
use skiff_agent::{AgentConfig, Backoff, NetworkSettings, NodeIdentity, ServingTls};
use skiff_api::service::ServiceRanges;
use skiff_runtime::{LocalConfig, LocalRuntime, OciRuntime, Runtime};

use crate::server::{self, parse_duration, ServerArgs};

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
}

/// What a node agent is told.
#[derive(Args)]
pub struct NodeArgs {
    /// The node's name [default: the machine's hostname].
    #[arg(long, env = "SKIFF_NODE_NAME")]
    node_name: Option<String>,
    /// The node's address [default: for `skiff up` the address the API server listens on (or
    /// 127.0.0.1), for `skiff agent` this machine's source address toward the server].
    #[arg(long, env = "SKIFF_NODE_IP")]
    pub node_ip: Option<String>,
    /// The port of the agent's HTTPS endpoint (container logs for the API server).
    #[arg(long, default_value_t = 10250, env = "SKIFF_AGENT_PORT")]
    agent_port: u16,
    /// Run containers with the runc binary at this path instead of the built-in libcontainer.
    #[arg(long, env = "SKIFF_RUNC")]
    runc: Option<PathBuf>,
    /// The delay before restarting a container that crashed again; it doubles with each crash.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "SKIFF_RESTART_BACKOFF")]
    restart_backoff: Duration,
    /// The longest delay before restarting a crashing container.
    #[arg(long, default_value = "300s", value_parser = parse_duration, env = "SKIFF_RESTART_BACKOFF_MAX")]
    restart_backoff_max: Duration,
    /// Registries (host:port) pulled from over plain HTTP, comma-separated.
    #[arg(long, value_delimiter = ',', env = "SKIFF_INSECURE_REGISTRIES")]
    insecure_registries: Vec<String>,
    /// Nothing leaves the machine: images are pulled only from registries on loopback (tests
    /// and air-gapped machines).
    #[arg(long, env = "SKIFF_ISOLATED")]
    isolated: bool,
    /// A label of the node, as key=value (repeatable).
    #[arg(long = "node-label", env = "SKIFF_NODE_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
}

impl NodeArgs {
    /// The node's name: `--node-name`, or the machine's hostname.
    pub fn name(&self) -> String {
        self.node_name.clone().unwrap_or_else(hostname)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".into())
}

/// The node's runtime on `data_dir/runtime`, as `skiff image` finds it.
fn runtime(
    data_dir: &std::path::Path,
    node: &str,
    runc: Option<PathBuf>,
) -> anyhow::Result<LocalRuntime> {
    let monitor = vec![
        std::env::current_exe()
            .context("find the skiff binary")?
            .into(),
        "monitor".into(),
    ];
    let mut config = LocalConfig::new(data_dir.join("runtime"), node, monitor);
    if let Some(runc) = runc {
        config.oci = OciRuntime::Runc(runc);
    }
    Ok(LocalRuntime::open(config)?)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _pid = crate::pidfile::PidFile::claim(&args.server.data_dir)?;
    let running = server::start(&args.server).await?;
    let data_dir = args.server.data_dir.clone();
    let node_name = args.node.name();
    let node_ip = args.node.node_ip.clone().unwrap_or_else(|| {
        let ip = args.server.listen.ip();
        if ip.is_unspecified() {
            "127.0.0.1".into()
        } else {
            ip.to_string()
        }
    });

    // The node's credentials come straight from the cluster CA: the agent is in this process.
    let pki = &running.pki;
    let user = format!("system:node:{node_name}");
    let (client_cert, client_key) = pki.issue(&user, &["system:nodes"], &[])?;
    let (serving_cert, serving_key) = pki.issue(
        &user,
        &["system:nodes"],
        &[node_ip.clone(), node_name.clone()],
    )?;
    let credentials = Credentials {
        ca: pki.ca_cert.clone(),
        client_cert,
        client_key,
        serving_cert,
        serving_key,
    };
    let ranges = ServiceRanges::parse(&args.server.service_cidr, "30000-32767")
        .map_err(anyhow::Error::msg)?;
    let api_service = Some((ranges.first_ip().to_string(), 443));
    let node = Node {
        name: node_name,
        ip: node_ip,
        data_dir,
        credentials,
        api_service,
        network: NetworkSettings {
            cluster_cidr: args.server.cluster_cidr,
            service_cidr: ranges.cidr(),
            dns_holder: dns_holder()?,
        },
    };
    start_node(&args.node, &running.url, node, started).await?;
    server::announce("skiff up", &running);
    server::wait(running).await
}

/// A node about to start: who it is and what it holds.
pub struct Node {
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub credentials: Credentials,
    /// The `kubernetes` Service's address and port, given to containers.
    pub api_service: Option<(String, u16)>,
    pub network: NetworkSettings,
}

/// Starts the node agent on this machine's runtime; ready (the Node registered) on return.
pub async fn start_node(
    args: &NodeArgs,
    server: &str,
    node: Node,
    started: std::time::Instant,
) -> anyhow::Result<skiff_agent::Running> {
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--node-label {l:?} is not key=value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let c = &node.credentials;
    let client = join::client(
        server,
        &c.ca,
        join::Auth::Certificate {
            cert: &c.client_cert,
            key: &c.client_key,
        },
    )
    .await?;
    let agent_dir = node.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("creating {}", agent_dir.display()))?;
    let local = runtime(&node.data_dir, &node.name, args.runc.clone())?;
    let images = local.images().clone();
    let config = AgentConfig {
        node: NodeIdentity {
            name: node.name.clone(),
            ip: node.ip.clone(),
            port: args.agent_port,
            labels,
            taints: Vec::new(),
        },
        data_dir: agent_dir,
        listen: format!("{}:{}", node.ip, args.agent_port)
            .parse()
            .with_context(|| format!("--node-ip {:?} is not an IP address", node.ip))?,
        tls: ServingTls {
            ca_cert: c.ca.clone(),
            cert: c.serving_cert.clone(),
            key: c.serving_key.clone(),
            client: skiff_apiserver::logs::KUBELET_CLIENT.into(),
        },
        backoff: Backoff {
            initial: args.restart_backoff,
            max: args.restart_backoff_max,
            ..Backoff::default()
        },
        lease_interval: Duration::from_secs(2),
        lease_duration: Duration::from_secs(8),
        status_every: Duration::from_secs(10),
        api_service: node.api_service,
        insecure_registries: args.insecure_registries.clone(),
        isolated: args.isolated,
        network: Some(node.network),
    };
    let runtime: Arc<dyn Runtime> = Arc::new(local);
    // Usually ready in milliseconds; a wait (for the server, for the node's pod CIDR) shows.
    let progress = crate::progress::Progress::new("");
    let starting = skiff_agent::start(client, runtime, Some(images), config);
    tokio::pin!(starting);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    let agent = loop {
        tokio::select! {
            started = &mut starting => break started?,
            _ = tick.tick() => progress.waiting(&format!("node {} to be ready", node.name)),
        }
    };
    progress.finish();
    tracing::info!(node = %node.name, agent = %agent.addr, elapsed_ms = started.elapsed().as_millis() as u64, "node ready");
    println!("node {} ready (agent on {})", node.name, agent.addr);
    Ok(agent)
}

/// The command holding the node's DNS sockets across agent restarts: this binary's hidden
/// `net-hold`.
pub fn dns_holder() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("find the skiff binary")?;
    Ok(vec![exe.into(), "net-hold".into()])
}

/// Where the agent of `data_dir` keeps its network state (addresses, the DNS holder's files).
fn network_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("agent/network")
}

/// Removes the node's bridge and nftables table.
fn remove_network(node: &str) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(skiff_net::link::remove_bridge(node))?;
    skiff_net::nft::remove(&skiff_net::link::bridge_name(node))?;
    Ok(())
}

#[derive(Args)]
pub struct ResetArgs {
    /// The data directory of the cluster (or node) to remove.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// The node's name [default: the machine's hostname].
    #[arg(long, env = "SKIFF_NODE_NAME")]
    node_name: Option<String>,
}

#[derive(Args)]
pub struct DownArgs {
    /// The data directory of the cluster (or node) to stop.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// The node's name [default: the machine's hostname].
    #[arg(long, env = "SKIFF_NODE_NAME")]
    node_name: Option<String>,
    /// How long containers get between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "SKIFF_GRACE")]
    grace: Duration,
}

/// `skiff down`: stops the process running the node on the data directory, then the node's
/// containers (within the grace period), their sandboxes and volumes; the cluster's state and
/// the images stay.
pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let node = args.node_name.unwrap_or_else(hostname);
    if crate::pidfile::stop(&args.data_dir, Duration::from_secs(15)) {
        println!("stopped skiff on {}", args.data_dir.display());
    }
    let stopped = runtime(&args.data_dir, &node, None)?.stop_all(args.grace)?;
    skiff_net::holder::stop(&network_dir(&args.data_dir).join("dns"));
    let volumes = skiff_agent::volumes::Volumes::new(args.data_dir.join("agent/pods"));
    for uid in volumes.pods() {
        volumes.remove(&uid)?;
    }
    println!(
        "stopped {stopped} pod(s) of node {node}; the cluster stays in {} (`skiff up` starts them again)",
        args.data_dir.display()
    );
    Ok(())
}

/// `skiff reset`: removes the node's containers, sandboxes, volumes, mounts and cgroups, and
/// the data directory.
pub fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let node = args.node_name.unwrap_or_else(hostname);
    crate::pidfile::stop(&args.data_dir, Duration::from_secs(15));
    let volumes = skiff_agent::volumes::Volumes::new(args.data_dir.join("agent/pods"));
    for uid in volumes.pods() {
        volumes.remove(&uid)?;
    }
    runtime(&args.data_dir, &node, None)?.reset()?;
    skiff_net::holder::stop(&network_dir(&args.data_dir).join("dns"));
    if let Err(e) = remove_network(&node) {
        eprintln!("warning: removing node {node}'s network: {e:#}");
    }
    match std::fs::remove_dir_all(&args.data_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", args.data_dir.display()))
        }
        _ => Ok(()),
    }
}
