//! `skiff agent`: a node joining a cluster over HTTPS with a join token, then running the pods
//! the cluster binds to it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use skiff_agent::join::{self, JoinToken};

use crate::up::{start_node, Node, NodeArgs};

#[derive(Args)]
pub struct AgentArgs {
    /// The API server, as https://HOST:PORT.
    #[arg(long, env = "SKIFF_SERVER")]
    server: String,
    /// The join token `skiff token create` printed (needed only until the node has its
    /// certificates).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the node keeps its certificates, images, containers and volumes.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// The cluster's pod addresses, as the server was told them (`--cluster-cidr`).
    #[arg(long, default_value = "10.42.0.0/16", env = "SKIFF_CLUSTER_CIDR")]
    cluster_cidr: skiff_api::cidr::Ipv4Cidr,
    /// The cluster's Service addresses, as the server was told them (`--service-cidr`).
    #[arg(long, default_value = "10.43.0.0/16", env = "SKIFF_SERVICE_CIDR")]
    service_cidr: skiff_api::cidr::Ipv4Cidr,
    #[command(flatten)]
    node: NodeArgs,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _pid = crate::pidfile::PidFile::claim(&args.data_dir)?;
    let token = args.token.as_deref().map(JoinToken::parse).transpose()?;
    let name = args.node.name();
    let ip = match &args.node.node_ip {
        Some(ip) => ip.clone(),
        None => join::source_address(&args.server)?.to_string(),
    };
    let pki_dir = args.data_dir.join("agent/pki");
    let credentials = join::credentials(&args.server, token.as_ref(), &name, &ip, &pki_dir)
        .await
        .with_context(|| format!("joining {} as node {name}", args.server))?;
    // Recorded for a restart while the server is out of reach.
    let local =
        skiff_agent::local::Local::new(args.data_dir.join("agent").join(skiff_agent::local::DIR));
    let api_service = match kubernetes_service(&args.server, &credentials).await {
        Some(service) => {
            local.set_api_service(&service);
            Some(service)
        }
        None => local.api_service(),
    };
    let node = Node {
        name,
        ip,
        data_dir: args.data_dir.clone(),
        credentials,
        api_service,
        network: skiff_agent::NetworkSettings {
            cluster_cidr: args.cluster_cidr,
            service_cidr: args.service_cidr,
            dns_holder: crate::up::dns_holder()?,
        },
    };
    let _agent = start_node(&args.node, &args.server, node, started).await?;
    tokio::spawn(async {
        // By then the Node's status, its Lease and the pod watch have had their first rounds.
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        crate::trim::release_startup_memory();
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping (the pods keep running)"),
        _ = term.recv() => tracing::info!("terminated; stopping (the pods keep running)"),
    }
    Ok(())
}

/// The `kubernetes` Service's address and port, for the containers' environment.
async fn kubernetes_service(server: &str, c: &join::Credentials) -> Option<(String, u16)> {
    let auth = join::Auth::Certificate {
        cert: &c.client_cert,
        key: &c.client_key,
    };
    let client = join::client(server, &c.ca, auth).await.ok()?;
    let services = Api::<Service>::namespaced(client, "default");
    let service = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        services.get("kubernetes"),
    )
    .await
    .map_err(|_| tracing::warn!("reading the kubernetes Service: no answer"))
    .ok()?
    .map_err(|e| tracing::warn!(error = %e, "reading the kubernetes Service"))
    .ok()?;
    let spec = service.spec?;
    let port = spec.ports?.first()?.port;
    Some((spec.cluster_ip?, u16::try_from(port).ok()?))
}
