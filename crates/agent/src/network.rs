//! The node's network, as the agent runs it: waits for the node's pod CIDR, sets up the bridge
//! (`skiff-net`'s [`PodNetwork`]) and the DNS sockets, keeps routes to the other nodes' pods,
//! starts the Service proxy loop (`service_proxy.rs`: rules and DNS zone from the cluster's
//! Services and EndpointSlices), and is what the pod workers use (addresses, resolv.conf,
//! Service variables, the drain of terminating pods).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::Value;
use skiff_api::cidr::Ipv4Cidr;
use skiff_net::dns::Zone;
use skiff_net::link::{self, PodNetwork};
use skiff_net::nft::Table;
use skiff_net::proxy::{self, HostPort};
use skiff_net::{dnsserver, holder, ipam};
use tokio::sync::{mpsc, watch};

use crate::local::Local;
use crate::service_proxy::{follow_services, Dns, Proxy, Seen, Services};

/// The cluster's address ranges, as the agent is told them.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    /// The command that holds the DNS sockets across agent restarts (`skiff net-hold`), given
    /// the directory to hold them in.
    pub dns_holder: Vec<std::ffi::OsString>,
}

/// The pod CIDR the server gave the node, waited for; the one recorded locally when the server
/// does not answer (an agent restarted while the server is away).
async fn pod_cidr(client: &kube::Client, node: &str, local: &Local) -> Ipv4Cidr {
    let nodes: Api<Node> = Api::all(client.clone());
    let recorded = local.pod_cidr().and_then(|c| c.parse::<Ipv4Cidr>().ok());
    let mut told = false;
    loop {
        let answered = match tokio::time::timeout(Duration::from_secs(3), nodes.get(node)).await {
            Ok(Ok(n)) => {
                if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
                    if let Ok(parsed) = cidr.parse::<Ipv4Cidr>() {
                        local.set_pod_cidr(&cidr);
                        return parsed;
                    }
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(%node, error = %e, "reading the node for its pod CIDR");
                false
            }
            Err(_) => {
                tracing::warn!(%node, "reading the node for its pod CIDR: no answer");
                false
            }
        };
        if let Some(cidr) = recorded.filter(|_| !answered) {
            tracing::info!(%node, %cidr, "the server is out of reach; using the pod CIDR recorded");
            return cidr;
        }
        if !told {
            tracing::info!(%node, "waiting for the server to give the node a pod CIDR");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pod addresses as the node's Service rules know them.
#[derive(Debug, Default)]
pub struct Routed {
    /// Addresses the applied rules send Service traffic to.
    pub ready: HashSet<Ipv4Addr>,
    /// Addresses any EndpointSlice lists, in any condition.
    pub listed: HashSet<Ipv4Addr>,
}

/// How long a terminating pod keeps running after this node's rules stopped sending it
/// traffic, for the other nodes to apply the same change.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// The node's network as the pod workers use it.
pub struct Network {
    pub pods: PodNetwork,
    /// The node's pods' addresses and host ports, by pod uid.
    local_pods: LocalPods,
    /// Tells the proxy of changes it does not watch (host ports).
    proxy: mpsc::UnboundedSender<Seen>,
    /// The cluster's Services, as the proxy last saw them.
    services: Services,
    routed: watch::Receiver<Arc<Routed>>,
    /// The cluster DNS Service's address, pods' nameserver.
    pub dns_ip: Ipv4Addr,
    /// The node's own `/etc/resolv.conf`, for pods of dnsPolicy `Default`.
    pub node_resolv_conf: String,
}

/// The node's pods' addresses and host ports by pod uid, shared by the workers and the proxy.
pub(crate) type LocalPods = Arc<Mutex<BTreeMap<String, (Ipv4Addr, Vec<HostPort>)>>>;

impl Network {
    /// Notes pod `uid`'s address and opens its host ports; with None, forgets them.
    pub fn set_local_pod(&self, uid: &str, pod: Option<(Ipv4Addr, Vec<HostPort>)>) {
        let mut all = self.local_pods.lock().expect("local pods");
        let changed = match pod {
            None => all.remove(uid).is_some(),
            Some(pod) => all.insert(uid.to_string(), pod.clone()) != Some(pod),
        };
        if changed {
            let _ = self.proxy.send(Seen::LocalPods);
        }
    }

    /// Waits, for at most `limit`, until Service traffic no longer goes to `ip` (a terminating
    /// pod): this node's rules changed, then a margin for the other nodes'. A pod no Service
    /// lists does not wait. Kubernetes leaves this race to each pod's preStop hook.
    pub async fn leave_endpoints(&self, ip: Ipv4Addr, limit: Duration) {
        let began = std::time::Instant::now();
        let mut routed = self.routed.clone();
        if !routed.borrow().listed.contains(&ip) {
            return;
        }
        let left = async {
            routed
                .wait_for(|r| !r.ready.contains(&ip))
                .await
                .map(|_| ())
        };
        let gone = tokio::time::timeout(limit, left).await;
        tracing::debug!(%ip, left_rules = gone.is_ok(), waited_ms = began.elapsed().as_millis() as u64, "terminating pod out of the Service rules");
        tokio::time::sleep(DRAIN_MARGIN.min(limit.saturating_sub(began.elapsed()))).await;
    }

    /// The variables of the Services of `namespace` (the `kubernetes` Service's come
    /// separately).
    pub fn service_env(&self, namespace: &str) -> Vec<(String, String)> {
        let services = self.services.read().expect("services");
        let mut env = Vec::new();
        for ((ns, name), svc) in services.range((namespace.to_string(), String::new())..) {
            if ns != namespace {
                break;
            }
            if ns == "default" && name == "kubernetes" {
                continue;
            }
            let ports: Vec<(String, u16, String)> = svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p["name"].as_str().unwrap_or("").to_string(),
                        u16::try_from(p["port"].as_u64()?).ok()?,
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    ))
                })
                .collect();
            let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
            env.extend(crate::container::service_link_env(name, ip, &ports));
        }
        env
    }

    /// The pod's `/etc/resolv.conf`, by its DNS policy.
    pub fn resolv_conf(&self, pod: &Value) -> String {
        skiff_net::dns::resolv_conf(pod, self.dns_ip, &self.node_resolv_conf)
    }
}

/// Sets up the node's pod network and DNS server, and starts the routes and Service proxy
/// loops.
pub async fn start(
    client: &kube::Client,
    node: &str,
    node_ip: &str,
    settings: &NetworkSettings,
    isolated: bool,
    state_dir: PathBuf,
    local: &Local,
) -> Result<Arc<Network>, skiff_net::Error> {
    let pod_cidr = pod_cidr(client, node, local).await;
    let config = link::Config {
        node: node.to_string(),
        pod_cidr,
        cluster_cidr: settings.cluster_cidr,
        service_cidr: settings.service_cidr,
        node_ip: node_ip.parse().ok(),
        isolated,
        state_dir,
    };
    let state_dir = config.state_dir.clone();
    let pods = PodNetwork::start(config).await?;
    let node_resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream = if isolated {
        Vec::new()
    } else {
        dnsserver::node_resolvers(&node_resolv_conf)
    };
    let zone = Arc::new(RwLock::new(Zone::default()));
    let dns_addr = SocketAddr::new(ipam::gateway(&pod_cidr).into(), 53);
    let (holder_dir, command) = (state_dir.join("dns"), settings.dns_holder.clone());
    let sockets =
        crate::worker::blocking(move || holder::dns_sockets(&holder_dir, dns_addr, &command))
            .await?;
    let dns = Dns {
        sockets,
        upstream,
        zone: zone.clone(),
    };
    let (routed_tx, routed) = watch::channel(Arc::new(Routed::default()));
    let services = Services::default();
    let local_pods = LocalPods::default();
    let (proxy_tx, proxy_rx) = mpsc::unbounded_channel();
    let network = Arc::new(Network {
        pods,
        local_pods: local_pods.clone(),
        proxy: proxy_tx.clone(),
        services: services.clone(),
        routed,
        dns_ip: settings
            .service_cidr
            .nth(10)
            .expect("a Service range of 16 addresses"),
        node_resolv_conf,
    });
    let table = Table::new(proxy::Settings {
        // One name for the node's bridge and table.
        table: link::bridge_name(node),
        cluster_cidr: settings.cluster_cidr,
        pod_cidr,
        bridge: link::bridge_name(node),
        masquerade_egress: !isolated,
    });
    tokio::spawn(follow_nodes(client.clone(), network.clone()));
    let proxy = Proxy {
        node: node.to_string(),
        table,
        dns,
        routed: routed_tx,
        services,
        local_pods,
    };
    tokio::spawn(follow_services(client.clone(), proxy, proxy_tx, proxy_rx));
    Ok(network)
}

/// How often the routes are checked against the kernel's: a link that went down took its
/// routes with it, and nothing in the API changes when it comes back.
const ROUTES_RECHECK: Duration = Duration::from_secs(5);

/// Routes to every other node's pod CIDR through its InternalIP, kept as nodes come and go
/// and put back when the kernel lost them.
async fn follow_nodes(client: kube::Client, network: Arc<Network>) {
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes, watcher::Config::default()).boxed();
    let mut peers: BTreeMap<String, (Ipv4Cidr, Ipv4Addr)> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, (Ipv4Cidr, Ipv4Addr)>> = None;
    let mut recheck = tokio::time::interval(ROUTES_RECHECK);
    let mut listed = false;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = recheck.tick() => {
                if listed {
                    set_routes(&network, &peers).await;
                }
                continue;
            }
        };
        let changed = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                if let (Some(l), Some((name, peer))) = (listing.as_mut(), peer_of(&n)) {
                    l.insert(name, peer);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                peers = listing.take().unwrap_or_default();
                listed = true;
                true
            }
            Ok(watcher::Event::Apply(n)) => match peer_of(&n) {
                Some((name, peer)) => peers.insert(name, peer) != Some(peer),
                None => false,
            },
            Ok(watcher::Event::Delete(n)) => peers
                .remove(n.metadata.name.as_deref().unwrap_or(""))
                .is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "watching nodes for routes");
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        };
        if changed {
            set_routes(&network, &peers).await;
        }
    }
}

/// Makes the kernel's routes to the other nodes' pods those of `peers`.
async fn set_routes(network: &Network, peers: &BTreeMap<String, (Ipv4Cidr, Ipv4Addr)>) {
    let own = network.pods.config().pod_cidr;
    let routes: BTreeMap<Ipv4Cidr, Ipv4Addr> = peers
        .values()
        .copied()
        .filter(|(cidr, _)| *cidr != own)
        .collect();
    if let Err(e) = network.pods.set_routes(&routes).await {
        tracing::warn!(error = %e, "setting routes to other nodes");
    }
}

/// A node's pod CIDR and InternalIP, if it has both.
fn peer_of(node: &Node) -> Option<(String, (Ipv4Cidr, Ipv4Addr))> {
    let cidr = node.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let ip = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((node.metadata.name.clone()?, (cidr, ip)))
}
