//! The node's Service proxy loop, as the agent runs it: follows Services and EndpointSlices
//! (and the node's own pods, told by the workers) into the nftables rules of `skiff-net`, the
//! cluster DNS zone, and what the rules route to (for the drain of terminating pods).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::Value;
use skiff_net::dns::Zone;
use skiff_net::dnsserver;
use skiff_net::nft::Table;
use skiff_net::proxy::{self, HostPort, ServicePort};
use skiff_net::rules::{Change, Ruleset};
use tokio::sync::{mpsc, watch};

use crate::network::{LocalPods, Routed};

/// A change the proxy follows: an object by namespace and name, or gone.
pub(crate) enum Seen {
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
pub(crate) type Services = Arc<RwLock<BTreeMap<(String, String), Value>>>;

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
pub(crate) struct Dns {
    pub(crate) sockets: (std::net::UdpSocket, std::net::TcpListener),
    pub(crate) upstream: Vec<SocketAddr>,
    pub(crate) zone: Arc<RwLock<Zone>>,
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
pub(crate) struct Proxy {
    pub(crate) node: String,
    pub(crate) table: Table,
    pub(crate) dns: Dns,
    pub(crate) routed: watch::Sender<Arc<Routed>>,
    pub(crate) services: Services,
    pub(crate) local_pods: LocalPods,
}

pub(crate) async fn follow_services(
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
