//! The Endpoints and EndpointSlice controllers in one: each Service with a selector gets an
//! `Endpoints` object of its name and EndpointSlices labelled with it, listing the addresses of
//! the pods it selects (ready, not ready, terminating), their target ports resolved per pod.
//! `desired` is the pure decision; `start` follows Services and pods and writes what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_api::cidr::Ipv4Cidr;
use skiff_api::object::Lookup;
use skiff_api::object::{condition_true, selector_from_json, Filter};
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterError};
use crate::queue::Queue;
use crate::runtime::kind;
use crate::runtime::text;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per EndpointSlice, Kubernetes' default (`--max-endpoints-per-slice`): a change of
/// one endpoint of a large Service rewrites one slice, not all its addresses.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Addresses an `Endpoints` object keeps at most; beyond them it is truncated and says so, as
/// in Kubernetes (EndpointSlices carry them all).
const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// The cluster DNS endpoints are synced at most about once per this, however many nodes change.
const DNS_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A Service's port as its endpoints carry it: name, protocol, and the target (a number, or a
/// container port's name to look up in each pod).
struct PortSpec<'a> {
    name: &'a str,
    protocol: &'a str,
    target: &'a Value,
    port: &'a Value,
}

fn ports_of(service: &Value) -> Vec<PortSpec<'_>> {
    service
        .lookup("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| PortSpec {
            name: p["name"].as_str().unwrap_or(""),
            protocol: p["protocol"].as_str().unwrap_or("TCP"),
            target: if p["targetPort"].is_null() {
                &p["port"]
            } else {
                &p["targetPort"]
            },
            port: &p["port"],
        })
        .collect()
}

/// The pod's port numbers for the Service's ports; a named target the pod lacks leaves that
/// port out for this pod, as Kubernetes does.
fn resolve(ports: &[PortSpec<'_>], pod: &Value) -> Vec<(String, String, u64)> {
    let containers = pod.lookup("/spec/containers").and_then(Value::as_array);
    ports
        .iter()
        .filter_map(|p| {
            let number = match p.target {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => match s.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => containers.into_iter().flatten().find_map(|c| {
                        c["ports"].as_array().into_iter().flatten().find_map(|cp| {
                            (cp["name"] == s.as_str()
                                && cp["protocol"].as_str().unwrap_or("TCP") == p.protocol)
                                .then(|| cp["containerPort"].as_u64())
                                .flatten()
                        })
                    }),
                },
                _ => p.port.as_u64(),
            }?;
            Some((p.name.to_string(), p.protocol.to_string(), number))
        })
        .collect()
}

/// A stable short suffix for a slice of a port set.
fn suffix(ports: &[(String, String, u64)]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for (name, proto, port) in ports {
        for b in format!("{name}/{proto}/{port};").bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|i| ALPHABET[(h >> (i * 5)) as usize % ALPHABET.len()] as char)
        .collect()
}

/// What the Service's endpoints should be, given the pods its selector selects: the
/// `Endpoints` object and the EndpointSlices (one per distinct set of resolved ports), without
/// resourceVersions. Pods without an address, and finished ones, are left out.
pub fn desired(service: &Value, pods: &[Value]) -> (Value, Vec<Value>) {
    let namespace = text(service, "/metadata/namespace");
    let name = text(service, "/metadata/name");
    let publish_not_ready = service.lookup("/spec/publishNotReadyAddresses") == Some(&json!(true));
    let ports = ports_of(service);
    // Port set → (ready addresses, not-ready addresses, slice endpoints), in pod order.
    type Group = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut groups: BTreeMap<Vec<(String, String, u64)>, Group> = BTreeMap::new();
    let mut sorted: Vec<&Value> = pods.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |p| (text(p, "/status/podIP"), text(p, "/metadata/name"));
        key(a).cmp(&key(b))
    });
    for pod in sorted {
        let ip = text(pod, "/status/podIP");
        let phase = text(pod, "/status/phase");
        if ip.is_empty() || phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let terminating = pod.lookup("/metadata/deletionTimestamp").is_some();
        let serving = condition_true(pod, "Ready");
        let ready = publish_not_ready || (serving && !terminating);
        let node = text(pod, "/spec/nodeName");
        let target = json!({
            "kind": "Pod",
            "namespace": namespace,
            "name": text(pod, "/metadata/name"),
            "uid": text(pod, "/metadata/uid"),
        });
        let group = groups.entry(resolve(&ports, pod)).or_default();
        let mut address = json!({"ip": ip, "targetRef": target});
        if !node.is_empty() {
            address["nodeName"] = json!(node);
        }
        if ready {
            group.0.push(address);
        } else if !terminating {
            group.1.push(address);
        }
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving || publish_not_ready, "terminating": terminating},
            "targetRef": target,
        });
        if !node.is_empty() {
            endpoint["nodeName"] = json!(node);
        }
        group.2.push(endpoint);
    }
    let owner = json!([{
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "uid": text(service, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let mut subsets = Vec::new();
    let mut slices = Vec::new();
    for (port_set, (ready, not_ready, endpoints)) in groups {
        let core_ports: Vec<Value> = port_set
            .iter()
            .map(|(n, proto, port)| {
                let mut p = json!({"port": port, "protocol": proto});
                if !n.is_empty() {
                    p["name"] = json!(n);
                }
                p
            })
            .collect();
        if !ready.is_empty() || !not_ready.is_empty() {
            let mut subset = json!({"ports": core_ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subsets.push(subset);
        }
        let slice_ports: Vec<Value> = port_set
            .iter()
            .map(|(n, proto, port)| json!({"name": n, "port": port, "protocol": proto}))
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-{}", suffix(&port_set)),
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": owner,
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": slice_ports,
        }));
    }
    let mut endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace, "labels": {SERVICE_NAME_LABEL: name}},
    });
    if truncate(&mut subsets) {
        endpoints["metadata"]["annotations"] = json!({OVER_CAPACITY: "truncated"});
    }
    if !subsets.is_empty() {
        endpoints["subsets"] = json!(subsets);
    }
    (endpoints, slices)
}

/// Cuts `subsets` to `MAX_ENDPOINTS_ADDRESSES` addresses, ready ones kept first, and says
/// whether it had to.
fn truncate(subsets: &mut Vec<Value>) -> bool {
    let count = |list: &str| -> usize {
        subsets
            .iter()
            .filter_map(|s| s.get(list).and_then(Value::as_array))
            .map(Vec::len)
            .sum()
    };
    if count("addresses") + count("notReadyAddresses") <= MAX_ENDPOINTS_ADDRESSES {
        return false;
    }
    let mut room = MAX_ENDPOINTS_ADDRESSES;
    for list in ["addresses", "notReadyAddresses"] {
        for subset in subsets.iter_mut() {
            let Some(addresses) = subset.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            addresses.truncate(room);
            room -= addresses.len();
            if addresses.is_empty() {
                subset.as_object_mut().expect("a subset").remove(list);
            }
        }
    }
    subsets.retain(|s| s.get("addresses").is_some() || s.get("notReadyAddresses").is_some());
    true
}

/// The slices to keep for `want` (one slice per port set, as `desired` gives them, of any
/// length) given the `current` ones: at most `MAX_ENDPOINTS_PER_SLICE` endpoints each, every
/// endpoint left in the slice it is in (so a change rewrites the slices it touches), new ones
/// filling slices with room before new slices are named. Current slices that end up empty, or
/// whose port set is no longer wanted, are not returned (the caller deletes them).
pub fn pack_slices(want: Vec<Value>, current: &[Value]) -> Vec<Value> {
    let key = |e: &Value| {
        e.lookup("/addresses/0")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut taken: HashSet<String> = current
        .iter()
        .map(|c| text(c, "/metadata/name").to_string())
        .collect();
    let mut packed = Vec::new();
    for mut template in want {
        let base = text(&template, "/metadata/name").to_string();
        // The endpoints are moved, not copied: a slice of the cluster DNS lists every node.
        let mut wanted: Vec<Option<Value>> = match template.get_mut("endpoints").map(Value::take) {
            Some(Value::Array(endpoints)) => endpoints.into_iter().map(Some).collect(),
            _ => Vec::new(),
        };
        let index: HashMap<String, usize> = wanted
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((key(e.as_ref()?)?, i)))
            .collect();
        let mut slices: Vec<(String, Vec<Value>)> = Vec::new();
        let mut same_ports: Vec<&Value> = current
            .iter()
            .filter(|c| c.get("ports") == template.get("ports"))
            .collect();
        same_ports.sort_by_key(|c| text(c, "/metadata/name"));
        for slice in same_ports {
            let kept: Vec<Value> = slice["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| wanted.get_mut(*index.get(&key(e)?)?)?.take())
                .collect();
            slices.push((text(slice, "/metadata/name").to_string(), kept));
        }
        let mut fresh = wanted.iter_mut().filter_map(Option::take).peekable();
        for (_, endpoints) in &mut slices {
            while endpoints.len() < MAX_ENDPOINTS_PER_SLICE {
                match fresh.next() {
                    Some(e) => endpoints.push(e),
                    None => break,
                }
            }
        }
        while fresh.peek().is_some() {
            let name = std::iter::once(base.clone())
                .chain((1..).map(|n| format!("{base}-{n}")))
                .find(|n| !taken.contains(n))
                .expect("an unused name");
            taken.insert(name.clone());
            slices.push((name, fresh.by_ref().take(MAX_ENDPOINTS_PER_SLICE).collect()));
        }
        for (name, endpoints) in slices.into_iter().filter(|(_, e)| !e.is_empty()) {
            let mut slice = template.clone();
            slice["metadata"]["name"] = json!(name);
            slice["endpoints"] = json!(endpoints);
            packed.push(slice);
        }
    }
    packed
}

/// The cluster DNS Service: its endpoints are the nodes' DNS servers, not pods.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The cluster DNS Service's endpoints: every node with a pod CIDR answers DNS on its
/// gateway address (the CIDR's first host). Each is ready whatever the node's Ready condition
/// says: kube-dns's `internalTrafficPolicy: Local` sends a pod only to its own node's server,
/// which answers while the node's agent runs, also when the control plane has lost sight of
/// it (a node coming back must not wait for its readiness to travel around before its pods
/// can resolve names). So only a node's CIDR, not its status, changes these endpoints.
pub fn node_dns(service: &Value, nodes: &DnsNodes) -> (Value, Vec<Value>) {
    let as_targets: Vec<Value> = nodes
        .iter()
        .filter_map(|(name, (uid, cidr))| {
            Some(json!({
                "metadata": {"name": name, "uid": uid},
                "spec": {"nodeName": name},
                "status": {"phase": "Running", "podIP": cidr.nth(1)?.to_string(),
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
        })
        .collect();
    let (mut endpoints, mut slices) = desired(service, &as_targets);
    // The addresses are nodes', and say so.
    let retarget = |v: &mut Value| {
        if let Some(t) = v.get_mut("targetRef") {
            *t = json!({"kind": "Node", "name": t["name"], "uid": t["uid"]});
        }
    };
    for subset in endpoints["subsets"].as_array_mut().into_iter().flatten() {
        for list in ["addresses", "notReadyAddresses"] {
            subset
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .for_each(retarget);
        }
    }
    for slice in &mut slices {
        slice["endpoints"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .for_each(retarget);
    }
    (endpoints, slices)
}

/// What the cluster DNS endpoints need of the nodes: the uid and pod CIDR of each node that
/// has one, by name. The controller keeps it from its feed of nodes, so that a sync does not
/// list and parse every node (at 5,000 nodes that took a tenth of a second per sync).
pub type DnsNodes = BTreeMap<String, (String, Ipv4Cidr)>;

/// A node's entry in [`DnsNodes`], if it has a pod CIDR.
pub fn dns_node(node: &Value) -> Option<(String, Ipv4Cidr)> {
    let cidr = text(node, "/spec/podCIDR").parse().ok()?;
    Some((text(node, "/metadata/uid").to_string(), cidr))
}

/// The nodes as the DNS endpoints see them, and whether the feed has delivered every node
/// that existed when it began: until it has, the DNS endpoints are left as they are (they
/// would lose the nodes not seen yet).
#[derive(Default)]
struct FollowedNodes {
    synced: bool,
    nodes: DnsNodes,
}

/// The Service's equality selector, if it has one (a Service without one has endpoints kept
/// by hand, which this controller leaves alone).
fn selector(service: &Value) -> Option<&serde_json::Map<String, Value>> {
    service
        .lookup("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
}

fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    let labels = pod.lookup("/metadata/labels");
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

type ServiceKey = (String, String);

/// What the feeds know: each Service's selector, and which Services each pod was last seen to
/// belong to (a pod whose labels change must leave the Services it left).
#[derive(Default)]
struct Index {
    selectors: HashMap<ServiceKey, serde_json::Map<String, Value>>,
    pods: HashMap<ServiceKey, HashSet<ServiceKey>>,
}

/// Starts the controller: feeds of Services and pods queue Services; while this server leads,
/// a worker brings each queued Service's endpoints up to date.
pub fn start(cluster: Arc<dyn Cluster>, leader: watch::Receiver<bool>) {
    let queue: Queue<ServiceKey> = Queue::default();
    let index = Arc::new(Mutex::new(Index::default()));
    {
        let (cluster, queue, index) = (cluster.clone(), queue.clone(), index.clone());
        tokio::spawn(crate::runtime::follow(
            cluster,
            kind("", "services"),
            move |change| {
                let obj = &change.object;
                let key = (
                    text(obj, "/metadata/namespace").to_string(),
                    text(obj, "/metadata/name").to_string(),
                );
                let mut index = index.lock().expect("endpoints index");
                match selector(obj).filter(|_| !change.deleted) {
                    Some(s) => index.selectors.insert(key.clone(), s.clone()),
                    None => index.selectors.remove(&key),
                };
                queue.add(key);
            },
        ));
    }
    {
        let (cluster, queue, index) = (cluster.clone(), queue.clone(), index.clone());
        tokio::spawn(crate::runtime::follow(
            cluster,
            kind("", "pods"),
            move |change| {
                let obj = &change.object;
                let namespace = text(obj, "/metadata/namespace").to_string();
                let pod = (namespace.clone(), text(obj, "/metadata/name").to_string());
                let mut index = index.lock().expect("endpoints index");
                let now: HashSet<ServiceKey> = if change.deleted {
                    HashSet::new()
                } else {
                    index
                        .selectors
                        .iter()
                        .filter(|((ns, _), s)| *ns == namespace && selects(s, obj))
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                let before = index.pods.remove(&pod).unwrap_or_default();
                for key in now.union(&before) {
                    queue.add(key.clone());
                }
                if !now.is_empty() {
                    index.pods.insert(pod, now);
                }
            },
        ));
    }
    let followed = Arc::new(Mutex::new(FollowedNodes::default()));
    tokio::spawn(follow_nodes(
        cluster.clone(),
        followed.clone(),
        queue.clone(),
    ));
    crate::runtime::work_while_leading(queue, leader, "endpoints", move |key: ServiceKey| {
        let (cluster, followed) = (cluster.clone(), followed.clone());
        async move {
            sync(cluster.as_ref(), &followed, &key.0, &key.1)
                .await
                .map(|()| None)
        }
    });
}

/// When to sync what changes often: thousands of nodes joining at once would sync the DNS
/// endpoints (all their addresses) once per node. A change is synced at once unless a sync was
/// queued less than `interval` before; the changes meanwhile are synced together, `interval`
/// after it.
struct Pace {
    interval: Duration,
    /// The earliest the next sync may run.
    due: Instant,
    /// When the last sync queued runs.
    queued: Option<Instant>,
}

impl Pace {
    fn new(now: Instant, interval: Duration) -> Pace {
        Pace {
            interval,
            due: now,
            queued: None,
        }
    }

    /// After a change at `now`: in how long to queue a sync, or none if one queued will see it.
    fn change(&mut self, now: Instant) -> Option<Duration> {
        if self.queued.is_some_and(|at| at > now) {
            return None;
        }
        let at = self.due.max(now);
        self.queued = Some(at);
        self.due = at + self.interval;
        Some(at - now)
    }
}

/// Follows the nodes for the cluster DNS endpoints: each feed's first objects make a fresh
/// [`DnsNodes`] (a node deleted while no feed was open does not linger), taken once complete;
/// then a change of a node's pod CIDR (not of its status or heartbeats) queues the DNS Service.
async fn follow_nodes(
    cluster: Arc<dyn Cluster>,
    followed: Arc<Mutex<FollowedNodes>>,
    queue: Queue<ServiceKey>,
) {
    let key = || (DNS_SERVICE.0.to_string(), DNS_SERVICE.1.to_string());
    let mut pace = Pace::new(Instant::now(), DNS_SYNC_INTERVAL);
    loop {
        match cluster.changes(kind("", "nodes")).await {
            Ok(mut feed) => {
                let mut first = DnsNodes::new();
                let mut complete = true;
                for _ in 0..feed.initial {
                    let Some(change) = feed.changes.recv().await else {
                        complete = false;
                        break;
                    };
                    let name = text(&change.object, "/metadata/name");
                    if let Some(entry) = dns_node(&change.object) {
                        first.insert(name.to_string(), entry);
                    }
                }
                if complete {
                    *followed.lock().expect("followed nodes") = FollowedNodes {
                        synced: true,
                        nodes: first,
                    };
                    queue.add(key());
                }
                while let Some(change) = feed.changes.recv().await {
                    let node = &change.object;
                    let name = text(node, "/metadata/name");
                    let entry = dns_node(node).filter(|_| !change.deleted);
                    let nodes = &mut followed.lock().expect("followed nodes").nodes;
                    let changed = match entry {
                        Some(entry) if nodes.get(name) != Some(&entry) => {
                            nodes.insert(name.to_string(), entry);
                            true
                        }
                        Some(_) => false,
                        None => nodes.remove(name).is_some(),
                    };
                    if !changed {
                        continue;
                    }
                    match pace.change(Instant::now()) {
                        Some(Duration::ZERO) => queue.add(key()),
                        Some(delay) => queue.add_after(key(), delay),
                        None => {}
                    }
                }
                tracing::info!("the DNS endpoints' feed of nodes ended; following again");
            }
            Err(e) => tracing::warn!(error = %e, "following nodes for the DNS endpoints"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Brings one Service's Endpoints and EndpointSlices up to date (removes them when the Service
/// is gone or lost its selector).
async fn sync(
    cluster: &dyn Cluster,
    followed: &Mutex<FollowedNodes>,
    namespace: &str,
    name: &str,
) -> Result<(), ClusterError> {
    if (namespace, name) == DNS_SERVICE && !followed.lock().expect("followed nodes").synced {
        // Queued again once the feed has delivered every node.
        return Ok(());
    }
    let (services, endpoints_kind, slices_kind, pods) = (
        kind("", "services"),
        kind("", "endpoints"),
        skiff_api::kinds::find("discovery.k8s.io", "v1", "endpointslices").expect("a served kind"),
        kind("", "pods"),
    );
    let service = cluster.get(services, namespace, name).await?;
    let current_endpoints = cluster.get(endpoints_kind, namespace, name).await?;
    let by_service = Filter {
        labels: skiff_api::LabelSelector::parse(&format!("{SERVICE_NAME_LABEL}={name}")).ok(),
        fields: None,
    };
    let current_slices: Vec<Value> = cluster
        .list(slices_kind, namespace, &by_service)
        .await?
        .into_iter()
        .filter(|s| {
            text(
                s,
                &format!("/metadata/labels/{}", MANAGED_BY_LABEL.replace('/', "~1")),
            ) == MANAGED_BY
        })
        .collect();
    let is_dns = (namespace, name) == DNS_SERVICE;
    if service
        .as_ref()
        .is_some_and(|s| !is_dns && selector(s).is_none())
    {
        // A Service without a selector has endpoints kept by someone else (the API server
        // keeps `kubernetes`'s).
        return Ok(());
    }
    let (want_endpoints, want_slices) = match service
        .as_ref()
        .filter(|s| is_dns || selector(s).is_some())
    {
        Some(service) if is_dns => {
            let (e, s) = node_dns(service, &followed.lock().expect("followed nodes").nodes);
            (Some(e), s)
        }
        Some(service) => {
            let selected = Filter {
                labels: selector_from_json(&json!({"matchLabels": service["spec"]["selector"]}))
                    .ok(),
                fields: None,
            };
            let pods = cluster.list(pods, namespace, &selected).await?;
            let (e, s) = desired(service, &pods);
            (Some(e), s)
        }
        None => (None, Vec::new()),
    };
    write(
        cluster,
        endpoints_kind,
        namespace,
        current_endpoints,
        want_endpoints,
        &["subsets"],
    )
    .await?;
    let want_slices = pack_slices(want_slices, &current_slices);
    let mut current: HashMap<String, Value> = current_slices
        .into_iter()
        .map(|s| (text(&s, "/metadata/name").to_string(), s))
        .collect();
    for want in want_slices {
        let had = current.remove(text(&want, "/metadata/name"));
        write(
            cluster,
            slices_kind,
            namespace,
            had,
            Some(want),
            &["endpoints", "ports"],
        )
        .await?;
    }
    for (_, gone) in current {
        write(cluster, slices_kind, namespace, Some(gone), None, &[]).await?;
    }
    Ok(())
}

/// Creates, updates (when one of `fields` or the labels differ) or deletes one object.
async fn write(
    cluster: &dyn Cluster,
    kind: &'static skiff_api::kinds::Kind,
    namespace: &str,
    current: Option<Value>,
    want: Option<Value>,
    fields: &[&str],
) -> Result<(), ClusterError> {
    match (current, want) {
        (None, Some(want)) => cluster.create(kind, namespace, want).await.map(|_| ()),
        (Some(current), Some(want)) => {
            let over = format!("/metadata/annotations/{}", OVER_CAPACITY.replace('/', "~1"));
            let differs = fields.iter().any(|f| current.get(*f) != want.get(*f))
                || current.lookup("/metadata/labels") != want.lookup("/metadata/labels")
                || current.lookup(&over) != want.lookup(&over);
            if !differs {
                return Ok(());
            }
            let mut next = current;
            for f in fields {
                match want.get(*f) {
                    Some(v) => next[*f] = v.clone(),
                    None => {
                        next.as_object_mut().expect("an object").remove(*f);
                    }
                }
            }
            next["metadata"]["labels"] = want["metadata"]["labels"].clone();
            match want.lookup(&over) {
                Some(v) => next["metadata"]["annotations"][OVER_CAPACITY] = v.clone(),
                None => {
                    if let Some(a) = next["metadata"]
                        .get_mut("annotations")
                        .and_then(Value::as_object_mut)
                    {
                        a.remove(OVER_CAPACITY);
                    }
                }
            }
            cluster.update(kind, next).await.map(|_| ())
        }
        (Some(current), None) => {
            let (name, uid) = (
                text(&current, "/metadata/name"),
                text(&current, "/metadata/uid"),
            );
            match cluster.delete(kind, namespace, name, uid, false).await {
                Ok(()) | Err(ClusterError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(publish_not_ready: bool) -> Value {
        json!({"metadata": {"namespace": "default", "name": "user-service", "uid": "s1"},
               "spec": {"selector": {"app": "api"}, "publishNotReadyAddresses": publish_not_ready,
                        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]}})
    }

    fn pod(name: &str, ip: &str, ready: bool, terminating: bool, port_name: &str) -> Value {
        let mut p = json!({"metadata": {"namespace": "default", "name": name, "uid": format!("u-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "server", "ports": [{"name": port_name, "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-30T00:00:00Z");
        }
        p
    }

    #[test]
    fn ready_not_ready_and_terminating_pods() {
        let pods = [
            pod("b", "10.42.0.3", true, false, "http"),
            pod("a", "10.42.0.2", false, false, "http"),
            pod("c", "10.42.0.4", true, true, "http"),
            pod("pending", "", false, false, "http"),
        ];
        let (endpoints, slices) = desired(&service(false), &pods);
        let subset = &endpoints["subsets"][0];
        assert_eq!(subset["addresses"][0]["ip"], "10.42.0.3");
        assert_eq!(subset["addresses"].as_array().unwrap().len(), 1);
        assert_eq!(
            subset["notReadyAddresses"][0]["ip"], "10.42.0.2",
            "terminating pods are left out"
        );
        assert_eq!(
            subset["ports"],
            json!([{"port": 8080, "protocol": "TCP", "name": "http"}])
        );
        assert_eq!(slices.len(), 1);
        let conditions: Vec<(String, Value)> = slices[0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["addresses"][0].as_str().unwrap().to_string(),
                    e["conditions"].clone(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                (
                    "10.42.0.2".into(),
                    json!({"ready": false, "serving": false, "terminating": false})
                ),
                (
                    "10.42.0.3".into(),
                    json!({"ready": true, "serving": true, "terminating": false})
                ),
                (
                    "10.42.0.4".into(),
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
            ]
        );
        assert_eq!(
            slices[0]["metadata"]["labels"][SERVICE_NAME_LABEL],
            "user-service"
        );
        assert!(slices[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("user-service-"));

        let (endpoints, _) = desired(&service(true), &pods[1..2]);
        assert_eq!(
            endpoints["subsets"][0]["addresses"][0]["ip"], "10.42.0.2",
            "published though not ready"
        );
    }

    #[test]
    fn a_burst_of_changes_is_synced_at_most_once_a_second() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut pace = Pace::new(start, second);
        let ms = Duration::from_millis;
        let at = |t: u64| start + ms(t);
        // (change at, sync queued after)
        let cases = [
            (0, Some(ms(0))),      // the first at once
            (100, Some(ms(900))),  // then a second after the last
            (500, None),           // that one will see it
            (1050, Some(ms(950))), // the next a second after that
            (1999, None),          // queued for 2000: it will see it
            (2100, Some(ms(900))), // a second after the one at 2000
            (9000, Some(ms(0))),   // quiet for long: at once
        ];
        for (t, want) in cases {
            assert_eq!(pace.change(at(t)), want, "a change at {t} ms");
        }
    }

    #[test]
    fn cluster_dns_endpoints_are_the_nodes_gateways() {
        let svc = json!({"metadata": {"namespace": "kube-system", "name": "kube-dns", "uid": "d"},
            "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
        let node = |name: &str, cidr: Option<&str>, ready: &str| {
            json!({"metadata": {"name": name, "uid": name}, "spec": {"podCIDR": cidr},
                   "status": {"conditions": [{"type": "Ready", "status": ready}]}})
        };
        let nodes = [
            node("a", Some("10.42.0.0/24"), "True"),
            node("b", Some("10.42.1.0/24"), "Unknown"),
            node("c", None, "True"),
        ];
        let nodes: DnsNodes = nodes
            .iter()
            .filter_map(|n| Some((text(n, "/metadata/name").to_string(), dns_node(n)?)))
            .collect();
        let (endpoints, slices) = node_dns(&svc, &nodes);
        let target = |ip: &str, name: &str| json!({"ip": ip, "targetRef": {"kind": "Node", "name": name, "uid": name}, "nodeName": name});
        assert_eq!(
            endpoints["subsets"][0]["addresses"],
            json!([target("10.42.0.1", "a"), target("10.42.1.1", "b")]),
            "a node's DNS serves its own pods whatever its Ready condition; no CIDR, no DNS"
        );
        assert!(endpoints["subsets"][0].get("notReadyAddresses").is_none());
        assert_eq!(slices[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(slices[0]["endpoints"][1]["conditions"]["ready"], true);
    }

    fn pods(count: usize, ready: usize) -> Vec<Value> {
        (0..count)
            .map(|i| {
                let ip = format!("10.42.{}.{}", i / 250, i % 250 + 2);
                pod(&format!("p{i:04}"), &ip, i < ready, false, "http")
            })
            .collect()
    }

    fn names_and_sizes(slices: &[Value]) -> Vec<(String, usize)> {
        slices
            .iter()
            .map(|s| {
                (
                    text(s, "/metadata/name").to_string(),
                    s["endpoints"].as_array().unwrap().len(),
                )
            })
            .collect()
    }

    #[test]
    fn large_services_get_slices_of_a_hundred_and_a_change_rewrites_one() {
        let (_, want) = desired(&service(false), &pods(250, 250));
        let first = pack_slices(want, &[]);
        let base = text(&first[0], "/metadata/name").to_string();
        assert_eq!(
            names_and_sizes(&first),
            [
                (base.clone(), 100),
                (format!("{base}-1"), 100),
                (format!("{base}-2"), 50)
            ]
        );
        // One pod goes, two come: the gap is filled first, then the slice with room; the
        // slice nothing happened in is left as it was.
        let ips = |s: &Value| -> Vec<String> {
            s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["addresses"][0].as_str().unwrap().to_string())
                .collect()
        };
        let gone = "10.42.0.152";
        let had_gone = first
            .iter()
            .position(|s| ips(s).contains(&gone.to_string()))
            .unwrap();
        let mut now = pods(252, 252);
        now.retain(|p| p["status"]["podIP"] != gone);
        let (_, want) = desired(&service(false), &now);
        let second = pack_slices(want, &first);
        assert_eq!(
            names_and_sizes(&second),
            [
                (base.clone(), 100),
                (format!("{base}-1"), 100),
                (format!("{base}-2"), 51)
            ]
        );
        for (i, (before, after)) in first.iter().zip(&second).enumerate() {
            let (was, is) = (ips(before), ips(after));
            if i == had_gone {
                assert!(!is.contains(&gone.to_string()));
                assert_eq!(
                    is.iter().filter(|ip| !was.contains(ip)).collect::<Vec<_>>(),
                    ["10.42.1.2"]
                );
            } else if i == 2 {
                assert_eq!(is[..50], was[..], "kept in place");
                assert_eq!(is[50], "10.42.1.3");
            } else {
                assert!(before == after, "slice {i} untouched");
            }
        }
        // Fewer pods: the rest stay where they are; slices left empty are not kept (the
        // caller deletes them), and none at all when no pod is left.
        let (_, want) = desired(&service(false), &pods(30, 30));
        let third = names_and_sizes(&pack_slices(want, &second));
        assert_eq!(third.iter().map(|(_, n)| n).sum::<usize>(), 30);
        assert!(third
            .iter()
            .all(|(name, n)| *n > 0 && name.starts_with(&base)));
        let (_, want) = desired(&service(false), &[]);
        assert!(pack_slices(want, &second).is_empty());
    }

    #[test]
    fn a_new_port_set_gets_new_slices_and_the_old_ones_go() {
        let (_, want) = desired(&service(false), &pods(3, 3));
        let before = pack_slices(want, &[]);
        let mut changed = service(false);
        changed["spec"]["ports"][0]["targetPort"] = json!(9090);
        let (_, want) = desired(&changed, &pods(3, 3));
        let after = pack_slices(want, &before);
        assert_eq!(after.len(), 1);
        assert_ne!(after[0]["metadata"]["name"], before[0]["metadata"]["name"]);
        assert_eq!(after[0]["ports"][0]["port"], 9090);
    }

    #[test]
    fn endpoints_keep_a_thousand_addresses_ready_first_and_say_they_were_cut() {
        let (endpoints, slices) = desired(&service(false), &pods(1200, 900));
        let subset = &endpoints["subsets"][0];
        assert_eq!(subset["addresses"].as_array().unwrap().len(), 900);
        assert_eq!(subset["notReadyAddresses"].as_array().unwrap().len(), 100);
        assert_eq!(
            endpoints["metadata"]["annotations"][OVER_CAPACITY],
            "truncated"
        );
        assert_eq!(
            slices[0]["endpoints"].as_array().unwrap().len(),
            1200,
            "slices carry all"
        );
        let (endpoints, _) = desired(&service(false), &pods(1000, 1000));
        assert!(endpoints["metadata"].get("annotations").is_none());
    }

    #[test]
    fn pods_resolving_ports_differently_get_their_own_slices() {
        let pods = [
            pod("a", "10.42.0.2", true, false, "http"),
            pod("b", "10.42.0.3", true, false, "web"),
        ];
        let (endpoints, slices) = desired(&service(false), &pods);
        // b lacks the named port: it is listed without ports, in a slice of its own.
        assert_eq!(slices.len(), 2);
        assert_ne!(slices[0]["metadata"]["name"], slices[1]["metadata"]["name"]);
        assert_eq!(endpoints["subsets"].as_array().unwrap().len(), 2);
        let (empty, _) = desired(&service(false), &[]);
        assert!(empty.get("subsets").is_none());
    }
}
