//! `skiff server`: the API server on the embedded store or etcd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use skiff_api::service::ServiceRanges;
use skiff_apiserver::server::{self, Config};
use skiff_store::{EtcdOptions, EtcdStore, RedbOptions, RedbStore, Store};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StoreKind {
    /// The embedded store in the data directory.
    Redb,
    /// An etcd cluster (`--etcd-endpoints`).
    Etcd,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Where the store, the certificates and the admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The address the API listens on.
    #[arg(long, default_value = "127.0.0.1:6443", env = "SKIFF_LISTEN")]
    pub listen: SocketAddr,
    /// Another name or address for the serving certificate (repeatable).
    #[arg(long = "tls-san", env = "SKIFF_TLS_SAN", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Where the cluster's state is kept.
    #[arg(long, value_enum, default_value = "redb", env = "SKIFF_STORE")]
    store: StoreKind,
    /// Where Services' cluster IPs come from.
    #[arg(long, default_value = "10.43.0.0/16", env = "SKIFF_SERVICE_CIDR")]
    pub service_cidr: String,
    /// Where pods' addresses come from: each node gets a /24 of it.
    #[arg(long, default_value = "10.42.0.0/16", env = "SKIFF_CLUSTER_CIDR")]
    pub cluster_cidr: skiff_api::cidr::Ipv4Cidr,
    /// Where NodePort Services' ports come from.
    #[arg(
        long,
        default_value = "30000-32767",
        env = "SKIFF_SERVICE_NODE_PORT_RANGE"
    )]
    service_node_port_range: String,
    /// How long Events are kept after they were last seen, like `24h`, `90m` or `30s`
    /// (Kubernetes keeps them 1h; a day lets yesterday's failure still be read).
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "SKIFF_EVENT_TTL")]
    event_ttl: std::time::Duration,
    /// How long a node's Lease may go unrenewed before the node is unreachable (a Lease's own
    /// longer duration counts instead).
    #[arg(long, default_value = "8s", value_parser = parse_duration, env = "SKIFF_NODE_GRACE_PERIOD")]
    node_grace_period: std::time::Duration,
    /// How long pods stay on an unreachable node before they are evicted and replaced, unless
    /// they tolerate `node.kubernetes.io/unreachable` for another time.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "SKIFF_POD_EVICTION_TIMEOUT")]
    pod_eviction_timeout: std::time::Duration,
    /// etcd client URLs, comma-separated, for `--store etcd`.
    #[arg(long, value_delimiter = ',', env = "SKIFF_ETCD_ENDPOINTS")]
    etcd_endpoints: Vec<String>,
}

/// `24h`, `90m`, `30s`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 24h, 90m or 30s"))?;
    let seconds = match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        _ => return Err(format!("{text:?} is not a duration like 24h, 90m or 30s")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match args.store {
        StoreKind::Redb => {
            let path = crate::store::store_path(&args.data_dir);
            let options = RedbOptions {
                // The watch cache holds every object; redb's own cache only needs the B-tree's
                // upper levels and recent writes.
                cache_bytes: 4 << 20,
                ..RedbOptions::default()
            };
            Arc::new(RedbStore::open(&path, options)?)
        }
        StoreKind::Etcd => {
            anyhow::ensure!(
                !args.etcd_endpoints.is_empty(),
                "--store etcd needs --etcd-endpoints (e.g. http://127.0.0.1:2379)"
            );
            Arc::new(EtcdStore::connect(EtcdOptions::new(args.etcd_endpoints.clone())).await?)
        }
    })
}

/// Starts the API server (and its controllers) as the arguments say.
pub async fn start(args: &ServerArgs) -> anyhow::Result<server::Running> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store = open_store(args).await?;
    let config = Config {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        tls_sans: args.tls_sans.clone(),
        watch_history: skiff_apiserver::cache::History::default(),
        service_ranges: ServiceRanges::parse(&args.service_cidr, &args.service_node_port_range)
            .map_err(anyhow::Error::msg)?,
        controllers: true,
        event_ttl: args.event_ttl,
        node_lifecycle: skiff_controllers::nodelifecycle::Settings {
            grace: args.node_grace_period,
            eviction_wait: args.pod_eviction_timeout,
            ..Default::default()
        },
        node_ipam: skiff_controllers::nodeipam::Settings {
            cluster_cidr: args.cluster_cidr,
            ..Default::default()
        },
    };
    Ok(server::start(config, store).await?)
}

/// Prints where the cluster is and how to use it (test harnesses wait for the `kubeconfig:`
/// line).
pub fn announce(what: &str, running: &server::Running) {
    tracing::info!(addr = %running.addr, "API server ready");
    println!("{what} listening on https://{}", running.addr);
    println!("kubeconfig: {}", running.kubeconfig.display());
    println!(
        "try: KUBECONFIG={} kubectl get namespaces",
        running.kubeconfig.display()
    );
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let running = start(&args).await?;
    announce("skiff server", &running);
    wait(running).await
}

/// Serves until the listener fails or the process is asked to stop.
pub async fn wait(running: server::Running) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = running.serving => r.context("the listener task failed")?.context("serving")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}
