//! The node's network, as the agent runs it: waits for the node's pod CIDR, sets up the bridge
//! (`skiff-net`'s [`PodNetwork`]), keeps routes to the other nodes' pods, keeps the node's
//! nftables table in step with the Services and EndpointSlices of the cluster, and answers the
//! cluster's DNS from the same Services and slices.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::Value;
use skiff_api::cidr::Ipv4Cidr;
use skiff_net::dns::Zone;
use skiff_net::link::{self, PodNetwork};
use skiff_net::nft::Table;
use skiff_net::proxy::{self, HostPort, ServicePort};
use skiff_net::rules::{Change, Ruleset};
use skiff_net::{dnsserver, holder, ipam};
use tokio::sync::{mpsc, watch};

use crate::local::Local;

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
        match tokio::time::timeout(Duration::from_secs(3), nodes.get(node)).await {
            Ok(Ok(n)) => {
                if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
                    if let Ok(parsed) = cidr.parse::<Ipv4Cidr>() {
                        local.set_pod_cidr(&cidr);
                        return parsed;
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(%node, error = %e, "reading the node for its pod CIDR"),
            Err(_) => tracing::warn!(%node, "reading the node for its pod CIDR: no answer"),
        }
        if let Some(cidr) = recorded {
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
type LocalPods = Arc<Mutex<BTreeMap<String, (Ipv4Addr, Vec<HostPort>)>>>;

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

/// A change the proxy follows: an object by namespace and name, or gone.
enum Seen {
    Service((String, String), Option<Value>),
    Slice((String, String), Option<Value>),
    /// A watch (re)listed: everything of that kind not listed since is gone.
    Relisted(bool, Vec<(String, String)>),
    /// The node's pods (addresses, host ports) changed.
    LocalPods,
}

fn key(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Follows one kind into the proxy's channel.
async fn watch_into<K>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Seen>,
    wrap: fn((String, String), Option<Value>) -> Seen,
    services: bool,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + 'static,
{
    let mut events = watcher(api, watcher::Config::default()).boxed();
    let mut listed = Vec::new();
    while let Some(event) = events.next().await {
        let seen = match event {
            Ok(watcher::Event::Init) => {
                listed.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                listed.push(key(o.meta()));
                wrap(key(o.meta()), serde_json::to_value(&o).ok())
            }
            Ok(watcher::Event::InitDone) => Seen::Relisted(services, std::mem::take(&mut listed)),
            Ok(watcher::Event::Apply(o)) => wrap(key(o.meta()), serde_json::to_value(&o).ok()),
            Ok(watcher::Event::Delete(o)) => wrap(key(o.meta()), None),
            Err(e) => {
                tracing::warn!(error = %e, "watching for the Service proxy");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

/// The Service a slice belongs to (its `kubernetes.io/service-name` label).
fn owner_of(namespace: &str, slice: &Value) -> Option<(String, String)> {
    slice
        .pointer("/metadata/labels/kubernetes.io~1service-name")
        .and_then(Value::as_str)
        .map(|s| (namespace.to_string(), s.to_string()))
}

/// The cluster's Services by namespace and name, shared by the proxy (which writes them) and
/// the pod workers (which give their variables to containers).
type Services = Arc<RwLock<BTreeMap<(String, String), Value>>>;

/// What the proxy knows: Services, their slices, and each Service's ports as last computed.
#[derive(Default)]
struct ProxyState {
    services: Services,
    /// Slices by the Service they belong to, then by their own name.
    slices: HashMap<(String, String), BTreeMap<String, Value>>,
    /// The Service each slice was filed under.
    slice_owner: HashMap<(String, String), (String, String)>,
    ports: BTreeMap<(String, String), Vec<ServicePort>>,
    /// This node's name (Services with `internalTrafficPolicy: Local` use its endpoints only).
    node: String,
    /// Whether Services and slices have been listed whole once.
    listed: (bool, bool),
}

impl ProxyState {
    /// Takes one change in; returns the Services whose rules it may change.
    fn take(&mut self, seen: Seen, touched: &mut BTreeSet<(String, String)>) {
        match seen {
            Seen::Service(k, obj) => {
                match obj {
                    Some(o) => self
                        .services
                        .write()
                        .expect("services")
                        .insert(k.clone(), o),
                    None => self.services.write().expect("services").remove(&k),
                };
                touched.insert(k);
            }
            Seen::Slice(k, obj) => {
                if let Some(before) = self.slice_owner.remove(&k) {
                    if let Some(of) = self.slices.get_mut(&before) {
                        of.remove(&k.1);
                    }
                    touched.insert(before);
                }
                if let Some((o, owner)) = obj.and_then(|o| owner_of(&k.0, &o).map(|w| (o, w))) {
                    self.slices
                        .entry(owner.clone())
                        .or_default()
                        .insert(k.1.clone(), o);
                    self.slice_owner.insert(k, owner.clone());
                    touched.insert(owner);
                }
            }
            Seen::LocalPods => {}
            Seen::Relisted(services, listed) => {
                if services {
                    self.listed.0 = true;
                } else {
                    self.listed.1 = true;
                }
                let listed: HashSet<(String, String)> = listed.into_iter().collect();
                if services {
                    let mut services = self.services.write().expect("services");
                    services.retain(|k, _| listed.contains(k));
                } else {
                    let gone: Vec<_> = self
                        .slice_owner
                        .keys()
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.take(Seen::Slice(k, None), touched);
                    }
                }
                touched.extend(self.ports.keys().cloned());
                touched.extend(self.services.read().expect("services").keys().cloned());
            }
        }
    }

    /// What the rules route to, and every address the slices list.
    fn routed(&self) -> Routed {
        let listed = self
            .slices
            .values()
            .flat_map(|s| s.values())
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().and_then(|a| a.parse().ok()))
            .collect();
        Routed {
            ready: self
                .ports
                .values()
                .flatten()
                .flat_map(|p| p.endpoints.iter().map(|(ip, _)| *ip))
                .collect(),
            listed,
        }
    }

    /// The cluster's DNS records.
    fn zone(&self) -> Zone {
        let mut zone = Zone::default();
        for (k, svc) in self.services.read().expect("services").iter() {
            let slices: Vec<&Value> = self
                .slices
                .get(k)
                .into_iter()
                .flat_map(|s| s.values())
                .collect();
            zone.add_service(svc, &slices);
        }
        zone
    }

    fn recompute(&mut self, k: (String, String)) {
        match self.services.read().expect("services").get(&k) {
            Some(svc) => {
                let slices: Vec<&Value> = self
                    .slices
                    .get(&k)
                    .into_iter()
                    .flat_map(|s| s.values())
                    .collect();
                self.ports
                    .insert(k, proxy::service_ports(svc, &slices, &self.node));
            }
            None => {
                self.ports.remove(&k);
            }
        }
    }
}

/// The Service proxy: every change of a Service or EndpointSlice recomputes that Service's
/// ports; changes that arrive together are applied as one transaction.
/// The node's DNS server before it starts: its sockets, where other names go, its records.
struct Dns {
    sockets: (std::net::UdpSocket, std::net::TcpListener),
    upstream: Vec<SocketAddr>,
    zone: Arc<RwLock<Zone>>,
}

impl Dns {
    /// Starts answering (once the records are whole: a query waiting in the socket is better
    /// than a wrong NXDOMAIN).
    fn start(self) {
        let addr = self.sockets.0.local_addr().ok();
        match dnsserver::serve(self.sockets.0, self.sockets.1, self.zone, self.upstream) {
            Ok(mut server) => {
                tracing::info!(?addr, "DNS server answering");
                tokio::spawn(async move {
                    if let Err(e) = server.block_until_done().await {
                        tracing::error!(error = %e, "the DNS server stopped");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "starting the DNS server"),
        }
    }
}

/// What the Service proxy writes to: the node's table, its DNS server, what its rules route
/// to, the Services (for containers' variables); and the node's pods it reads.
struct Proxy {
    node: String,
    table: Table,
    dns: Dns,
    routed: watch::Sender<Arc<Routed>>,
    services: Services,
    local_pods: LocalPods,
}

async fn follow_services(
    client: kube::Client,
    proxy: Proxy,
    tx: mpsc::UnboundedSender<Seen>,
    mut rx: mpsc::UnboundedReceiver<Seen>,
) {
    let Proxy {
        node,
        table,
        dns,
        routed,
        services,
        local_pods,
    } = proxy;
    tokio::spawn(watch_into(
        Api::<Service>::all(client.clone()),
        tx.clone(),
        Seen::Service,
        true,
    ));
    tokio::spawn(watch_into(
        Api::<EndpointSlice>::all(client),
        tx,
        Seen::Slice,
        false,
    ));
    let mut table = table;
    let zone = dns.zone.clone();
    let mut waiting = Some(dns);
    let mut state = ProxyState {
        services,
        node,
        ..ProxyState::default()
    };
    let mut rules = Ruleset::default();
    while let Some(first) = rx.recv().await {
        let mut touched = BTreeSet::new();
        state.take(first, &mut touched);
        while let Ok(seen) = rx.try_recv() {
            state.take(seen, &mut touched);
        }
        let mut change = Change::default();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for k in &touched {
            before.extend(state.ports.get(k).into_iter().flatten().cloned());
            state.recompute(k.clone());
            let ports = state.ports.get(k).map(Vec::as_slice).unwrap_or_default();
            after.extend(ports.iter().cloned());
            rules.set_service(&format!("{}/{}", k.0, k.1), ports, &mut change);
        }
        let (addresses, host): (Vec<Ipv4Addr>, Vec<HostPort>) = {
            let local = local_pods.lock().expect("local pods");
            (
                local.values().map(|(ip, _)| *ip).collect(),
                local
                    .values()
                    .flat_map(|(_, ports)| ports.iter().cloned())
                    .collect(),
            )
        };
        rules.set_local_pods(&addresses, &mut change);
        rules.set_host_ports(&host, &mut change);
        if state.listed != (true, true) {
            // Half a picture (Services without their endpoints) would reject traffic that the
            // kernel's rules, left by the last agent, still route well.
            continue;
        }
        let stale = proxy::stale_udp(&before, &after);
        let began = std::time::Instant::now();
        // On this worker thread: the change refers to the rules, which are not copied.
        while let Err(e) = tokio::task::block_in_place(|| table.apply(&change, &rules)) {
            tracing::error!(error = %e, "applying the Service rules; trying again in a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::debug!(
            took_us = began.elapsed().as_micros() as u64,
            "service rules applied"
        );
        routed.send_replace(Arc::new(state.routed()));
        *zone.write().expect("dns zone") = state.zone();
        if let Some(dns) = waiting.take() {
            dns.start();
        }
        if !stale.is_empty() {
            let cleared =
                crate::worker::blocking(move || skiff_net::nft::clear_flows(&stale)).await;
            if let Err(e) = cleared {
                tracing::warn!(error = %e, "clearing UDP flows to removed endpoints");
            }
        }
    }
}
