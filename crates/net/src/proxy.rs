//! The Service proxy's rules as a pure function: Services and their EndpointSlices become one
//! nftables table per node (kube-proxy's nftables design: verdict maps keyed by address,
//! protocol and port, a chain per Service port choosing an endpoint at random), and two rule
//! sets become the one transaction, in nft's own syntax, that turns the first into the second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::Value;
use skiff_api::cidr::Ipv4Cidr;

/// What the node's table is for.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The table's name (one per node: nodes sharing a machine keep to their own).
    pub table: String,
    pub cluster_cidr: Ipv4Cidr,
    pub pod_cidr: Ipv4Cidr,
    pub bridge: String,
    /// Pods' connections to the world leave masqueraded as the node (off when isolated).
    pub masquerade_egress: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "" | "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service, with the endpoints traffic to it may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints, sorted, each once.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// ClientIP session affinity, in seconds.
    pub affinity: Option<u32>,
}

impl ServicePort {
    fn chain(&self) -> String {
        format!(
            "svc/{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }

    fn endpoint_chain(&self, (ip, port): (Ipv4Addr, u16)) -> String {
        format!(
            "ep/{}/{}/{}/{}/{ip}/{port}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }

    fn affinity_set(&self, (ip, port): (Ipv4Addr, u16)) -> String {
        format!(
            "aff/{}/{}/{}/{}/{ip}/{port}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }
}

/// A pod's port opened on the node (`hostPort`): connections to any of the node's addresses
/// on `port` go to the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: Protocol,
    pub port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

impl HostPort {
    /// The host ports of a pod (as JSON) at `pod_ip`.
    pub fn of_pod(pod: &Value, pod_ip: Ipv4Addr) -> Vec<HostPort> {
        let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
        containers
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                Some(HostPort {
                    protocol: Protocol::parse(p["protocol"].as_str().unwrap_or(""))?,
                    port: u16::try_from(p["hostPort"].as_u64()?)
                        .ok()
                        .filter(|p| *p > 0)?,
                    pod_ip,
                    container_port: u16::try_from(p["containerPort"].as_u64()?).ok()?,
                })
            })
            .collect()
    }
}

/// The Service's ports as the proxy serves them, endpoints taken from its EndpointSlices
/// (ready ones; a slice port is matched by name). Services without a cluster IP (headless,
/// ExternalName) have none.
pub fn service_ports(service: &Value, slices: &[&Value]) -> Vec<ServicePort> {
    let spec = &service["spec"];
    let Some(cluster_ip) = spec["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return Vec::new();
    };
    let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| {
        spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
            .and_then(Value::as_u64)
            .map_or(10800, |t| t as u32)
    });
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    for port in spec["ports"].as_array().into_iter().flatten() {
        let (Some(protocol), Some(number)) = (
            Protocol::parse(port["protocol"].as_str().unwrap_or("")),
            port["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) else {
            continue;
        };
        let port_name = text(port, "name");
        let mut endpoints = Vec::new();
        for slice in slices {
            if slice["addressType"] != "IPv4" {
                continue;
            }
            let Some(target) = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|p| {
                    (p["name"].as_str().unwrap_or("") == port_name
                        && Protocol::parse(p["protocol"].as_str().unwrap_or("")) == Some(protocol))
                    .then(|| p["port"].as_u64().and_then(|n| u16::try_from(n).ok()))
                    .flatten()
                })
            else {
                continue;
            };
            for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                if endpoint.pointer("/conditions/ready") == Some(&Value::Bool(false)) {
                    continue;
                }
                for address in endpoint["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = address.as_str().and_then(|a| a.parse().ok()) {
                        endpoints.push((ip, target));
                    }
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        out.push(ServicePort {
            namespace: text(&service["metadata"], "namespace"),
            name: text(&service["metadata"], "name"),
            protocol,
            cluster_ip,
            port: number,
            node_port: port["nodePort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok()),
            endpoints,
            affinity,
        });
    }
    out
}

/// UDP flows to endpoints a change removed: (the Service's address and port or the node
/// port, the endpoint). Their conntrack entries would keep sending a client's datagrams to the
/// old endpoint (UDP has no connection to end), so they are deleted once the rules changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaleFlow {
    ClusterIp(Ipv4Addr, u16, Ipv4Addr),
    NodePort(u16, Ipv4Addr),
}

/// What `old` sent UDP traffic to that `new` does not.
pub fn stale_udp(old: &[ServicePort], new: &[ServicePort]) -> Vec<StaleFlow> {
    let mut stale = Vec::new();
    for before in old.iter().filter(|p| p.protocol == Protocol::Udp) {
        let now = new.iter().find(|p| {
            p.protocol == Protocol::Udp
                && p.cluster_ip == before.cluster_ip
                && p.port == before.port
        });
        for (ip, _) in &before.endpoints {
            if now.is_some_and(|n| n.endpoints.iter().any(|(e, _)| e == ip)) {
                continue;
            }
            stale.push(StaleFlow::ClusterIp(before.cluster_ip, before.port, *ip));
            if let Some(node_port) = before.node_port {
                stale.push(StaleFlow::NodePort(node_port, *ip));
            }
        }
    }
    stale
}

const SERVICES: &str = "services";
const NODE_PORTS: &str = "nodeports";
const NO_ENDPOINTS: &str = "no-endpoints";
const NO_ENDPOINT_NODE_PORTS: &str = "no-endpoint-nodeports";
const HAIRPIN: &str = "hairpin";
const REJECT: &str = "reject-chain";

/// The part of the table that follows the Services: chains, affinity sets, and the elements
/// of the table's fixed maps and sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets, by name, with their timeout in seconds.
    sets: BTreeMap<String, u32>,
    /// Map or set name → key → value ("" for a set).
    elements: BTreeMap<&'static str, BTreeMap<String, String>>,
}

impl Ruleset {
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }
}

/// The rules for `ports` and the node's pods' `host_ports`.
pub fn ruleset(ports: &[ServicePort], host_ports: &[HostPort]) -> Ruleset {
    let mut r = Ruleset::default();
    for name in [
        SERVICES,
        NODE_PORTS,
        NO_ENDPOINTS,
        NO_ENDPOINT_NODE_PORTS,
        HAIRPIN,
    ] {
        r.elements.insert(name, BTreeMap::new());
    }
    for sp in ports {
        let proto = sp.protocol.nft();
        let ip_key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
        let node_key = sp.node_port.map(|p| format!("{proto} . {p}"));
        if sp.endpoints.is_empty() {
            let reject = format!("goto {REJECT}");
            r.elements
                .get_mut(NO_ENDPOINTS)
                .expect("map")
                .insert(ip_key, reject.clone());
            if let Some(key) = node_key {
                r.elements
                    .get_mut(NO_ENDPOINT_NODE_PORTS)
                    .expect("map")
                    .insert(key, reject);
            }
            continue;
        }
        let chain = sp.chain();
        let to = format!("goto {chain}");
        r.elements
            .get_mut(SERVICES)
            .expect("map")
            .insert(ip_key, to.clone());
        if let Some(key) = node_key {
            r.elements.get_mut(NODE_PORTS).expect("map").insert(key, to);
        }
        for (ip, _) in &sp.endpoints {
            r.elements
                .get_mut(HAIRPIN)
                .expect("set")
                .insert(format!("{ip} . {ip}"), String::new());
        }
        let n = sp.endpoints.len();
        let rules = match sp.affinity {
            None => {
                let targets: Vec<String> = sp
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                    .collect();
                vec![format!(
                    "meta l4proto {proto} dnat ip to numgen random mod {n} map {{ {} }}",
                    targets.join(", ")
                )]
            }
            Some(timeout) => {
                let mut rules = Vec::new();
                let mut choices = Vec::new();
                for (i, ep) in sp.endpoints.iter().enumerate() {
                    let (set, ep_chain) = (sp.affinity_set(*ep), sp.endpoint_chain(*ep));
                    rules.push(format!("ip saddr @{set} goto {ep_chain}"));
                    choices.push(format!("{i} : goto {ep_chain}"));
                    r.chains.insert(
                        ep_chain,
                        vec![
                            format!("update @{set} {{ ip saddr }}"),
                            format!("meta l4proto {proto} dnat ip to {}:{}", ep.0, ep.1),
                        ],
                    );
                    r.sets.insert(set, timeout);
                }
                rules.push(format!(
                    "numgen random mod {n} vmap {{ {} }}",
                    choices.join(", ")
                ));
                rules
            }
        };
        r.chains.insert(chain, rules);
    }
    for hp in host_ports {
        let proto = hp.protocol.nft();
        let chain = format!("hp/{proto}/{}", hp.port);
        r.elements
            .get_mut(NODE_PORTS)
            .expect("map")
            .insert(format!("{proto} . {}", hp.port), format!("goto {chain}"));
        r.elements
            .get_mut(HAIRPIN)
            .expect("set")
            .insert(format!("{0} . {0}", hp.pod_ip), String::new());
        r.chains.insert(
            chain,
            vec![format!(
                "meta l4proto {proto} dnat ip to {}:{}",
                hp.pod_ip, hp.container_port
            )],
        );
    }
    r
}

/// The fixed part of the table: hooks, the maps the Services fill, rejection.
fn base(s: &Settings, out: &mut String) {
    let cluster = s.cluster_cidr;
    let maps = [
        (SERVICES, "ipv4_addr . inet_proto . inet_service : verdict"),
        (NODE_PORTS, "inet_proto . inet_service : verdict"),
        (
            NO_ENDPOINTS,
            "ipv4_addr . inet_proto . inet_service : verdict",
        ),
        (
            NO_ENDPOINT_NODE_PORTS,
            "inet_proto . inet_service : verdict",
        ),
    ];
    for (name, ty) in maps {
        let _ = writeln!(out, "add map ip {} {name} {{ type {ty}; }}", s.table);
    }
    let _ = writeln!(
        out,
        "add set ip {} {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}",
        s.table
    );
    let mut postrouting = vec![
        format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade"),
        // NodePort and node-originated connections to pods: replies must come back here, to
        // an address every pod has a route to (an isolated pod has no route to the nodes').
        format!(
            "ct status dnat ip saddr != {cluster} snat ip to {}",
            crate::ipam::gateway(&s.pod_cidr)
        ),
    ];
    if s.masquerade_egress {
        postrouting.push(format!(
            "ip saddr {} ip daddr != {cluster} oifname != \"{}\" masquerade",
            s.pod_cidr, s.bridge
        ));
    }
    let chains: [(&str, Option<&str>, Vec<String>); 9] = [
        (
            "services",
            None,
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICES}"),
                format!("fib daddr type local meta l4proto . th dport vmap @{NODE_PORTS}"),
            ],
        ),
        (
            "endpoints-check",
            None,
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINTS}"),
                format!(
                    "fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODE_PORTS}"
                ),
            ],
        ),
        (
            REJECT,
            None,
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
        (
            "nat-prerouting",
            Some("nat hook prerouting priority dstnat"),
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            Some("nat hook output priority -100"),
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            Some("nat hook postrouting priority srcnat"),
            postrouting,
        ),
        (
            "filter-input",
            Some("filter hook input priority -110"),
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-forward",
            Some("filter hook forward priority -110"),
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-output",
            Some("filter hook output priority -110"),
            vec!["ct state new jump endpoints-check".into()],
        ),
    ];
    for (name, hook, _) in &chains {
        match hook {
            Some(hook) => {
                let _ = writeln!(
                    out,
                    "add chain ip {} {name} {{ type {hook}; policy accept; }}",
                    s.table
                );
            }
            None => {
                let _ = writeln!(out, "add chain ip {} {name}", s.table);
            }
        }
    }
    for (name, _, rules) in &chains {
        for rule in rules {
            let _ = writeln!(out, "add rule ip {} {name} {rule}", s.table);
        }
    }
}

/// The transaction that replaces the node's table (whatever is there) by `rules`.
pub fn full(s: &Settings, rules: &Ruleset) -> String {
    let mut out = String::new();
    // Adding first makes the delete valid when the table does not exist yet.
    let _ = writeln!(out, "add table ip {}", s.table);
    let _ = writeln!(out, "delete table ip {}", s.table);
    let _ = writeln!(out, "add table ip {}", s.table);
    base(s, &mut out);
    diff_into(s, &Ruleset::default(), rules, &mut out);
    out
}

/// The transaction that turns `old` (what the table holds) into `new`; empty when they agree.
pub fn diff(s: &Settings, old: &Ruleset, new: &Ruleset) -> String {
    let mut out = String::new();
    diff_into(s, old, new, &mut out);
    out
}

fn diff_into(s: &Settings, old: &Ruleset, new: &Ruleset, out: &mut String) {
    let t = &s.table;
    for (set, timeout) in &new.sets {
        if old.sets.get(set) != Some(timeout) {
            if old.sets.contains_key(set) {
                let _ = writeln!(out, "delete set ip {t} {set}");
            }
            let _ = writeln!(
                out,
                "add set ip {t} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
            );
        }
    }
    // Every chain exists before any rule may jump to it.
    let mut written = Vec::new();
    for (chain, rules) in &new.chains {
        match old.chains.get(chain) {
            None => {
                let _ = writeln!(out, "add chain ip {t} {chain}");
            }
            Some(before) if before == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {t} {chain}");
            }
        }
        written.push((chain, rules));
    }
    for (chain, rules) in written {
        for rule in rules {
            let _ = writeln!(out, "add rule ip {t} {chain} {rule}");
        }
    }
    let gone_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for chain in &gone_chains {
        let _ = writeln!(out, "flush chain ip {t} {chain}");
    }
    let empty = BTreeMap::new();
    for (map, elements) in &new.elements {
        let before = old.elements.get(map).unwrap_or(&empty);
        let element = |k: &String, v: &String| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k} : {v}")
            }
        };
        let removed: Vec<String> = before
            .iter()
            .filter(|(k, v)| elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        if !removed.is_empty() {
            let _ = writeln!(
                out,
                "delete element ip {t} {map} {{ {} }}",
                removed.join(", ")
            );
        }
        let added: Vec<String> = elements
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| element(k, v))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(out, "add element ip {t} {map} {{ {} }}", added.join(", "));
        }
    }
    for chain in gone_chains {
        let _ = writeln!(out, "delete chain ip {t} {chain}");
    }
    for set in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        let _ = writeln!(out, "delete set ip {t} {set}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ruleset_of(ports: &[ServicePort]) -> Ruleset {
        ruleset(ports, &[])
    }

    fn settings() -> Settings {
        Settings {
            table: "skiff-n1".into(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            pod_cidr: "10.42.0.0/24".parse().unwrap(),
            bridge: "skiff0".into(),
            masquerade_egress: false,
        }
    }

    fn user_service() -> Value {
        json!({"metadata": {"namespace": "default", "name": "user-service"},
               "spec": {"clusterIP": "10.43.0.20", "type": "NodePort",
                        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}]}})
    }

    fn slice(ready: &[(&str, bool)]) -> Value {
        let endpoints: Vec<Value> = ready
            .iter()
            .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}}))
            .collect();
        json!({"addressType": "IPv4", "endpoints": endpoints,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    }

    #[test]
    fn services_and_slices_become_ports_with_ready_endpoints() {
        let s = slice(&[
            ("10.42.1.3", true),
            ("10.42.0.7", true),
            ("10.42.0.9", false),
        ]);
        let ports = service_ports(&user_service(), &[&s, &s]);
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(
            (p.cluster_ip.to_string().as_str(), p.port, p.node_port),
            ("10.43.0.20", 8080, Some(30080))
        );
        assert_eq!(
            p.endpoints,
            [
                ("10.42.0.7".parse().unwrap(), 8080),
                ("10.42.1.3".parse().unwrap(), 8080)
            ]
        );
        let headless = json!({"metadata": {"namespace": "default", "name": "h"},
                              "spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert!(service_ports(&headless, &[&s]).is_empty());
    }

    #[test]
    fn rules_and_incremental_changes() {
        let s = settings();
        let two = slice(&[("10.42.0.7", true), ("10.42.1.3", true)]);
        let rules = ruleset_of(&service_ports(&user_service(), &[&two]));
        let script = full(&s, &rules);
        for want in [
            "add table ip skiff-n1\ndelete table ip skiff-n1\nadd table ip skiff-n1\n",
            "add chain ip skiff-n1 nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }",
            "add rule ip skiff-n1 svc/default/user-service/tcp/8080 meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.42.0.7 . 8080, 1 : 10.42.1.3 . 8080 }",
            "add element ip skiff-n1 services { 10.43.0.20 . tcp . 8080 : goto svc/default/user-service/tcp/8080 }",
            "add element ip skiff-n1 nodeports { tcp . 30080 : goto svc/default/user-service/tcp/8080 }",
            "add element ip skiff-n1 hairpin { 10.42.0.7 . 10.42.0.7, 10.42.1.3 . 10.42.1.3 }",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
        assert!(
            !script.contains("oifname"),
            "isolated: no egress masquerade\n{script}"
        );
        assert_eq!(diff(&s, &rules, &rules), "");

        // One endpoint goes: the Service's chain is rewritten, nothing else.
        let one = slice(&[("10.42.0.7", true)]);
        let fewer = ruleset_of(&service_ports(&user_service(), &[&one]));
        assert_eq!(
            diff(&s, &rules, &fewer),
            "flush chain ip skiff-n1 svc/default/user-service/tcp/8080\n\
             add rule ip skiff-n1 svc/default/user-service/tcp/8080 meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 10.42.0.7 . 8080 }\n\
             delete element ip skiff-n1 hairpin { 10.42.1.3 . 10.42.1.3 }\n"
        );

        // No endpoints left: the address and the node port reject, the chain goes last.
        let none = ruleset_of(&service_ports(&user_service(), &[]));
        assert_eq!(
            diff(&s, &fewer, &none),
            "flush chain ip skiff-n1 svc/default/user-service/tcp/8080\n\
             delete element ip skiff-n1 hairpin { 10.42.0.7 . 10.42.0.7 }\n\
             add element ip skiff-n1 no-endpoint-nodeports { tcp . 30080 : goto reject-chain }\n\
             add element ip skiff-n1 no-endpoints { 10.43.0.20 . tcp . 8080 : goto reject-chain }\n\
             delete element ip skiff-n1 nodeports { tcp . 30080 }\n\
             delete element ip skiff-n1 services { 10.43.0.20 . tcp . 8080 }\n\
             delete chain ip skiff-n1 svc/default/user-service/tcp/8080\n"
        );
    }

    #[test]
    fn host_ports_open_on_the_node() {
        let pod = json!({"spec": {"containers": [{"ports": [
            {"containerPort": 8080, "hostPort": 18080},
            {"containerPort": 9090},
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}]}]}});
        let ports = HostPort::of_pod(&pod, "10.42.0.7".parse().unwrap());
        assert_eq!(ports.len(), 2);
        let script = full(&settings(), &ruleset(&[], &ports));
        for want in [
            "add element ip skiff-n1 nodeports { tcp . 18080 : goto hp/tcp/18080, udp . 5353 : goto hp/udp/5353 }",
            "add rule ip skiff-n1 hp/tcp/18080 meta l4proto tcp dnat ip to 10.42.0.7:8080",
            "add rule ip skiff-n1 hp/udp/5353 meta l4proto udp dnat ip to 10.42.0.7:53",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
    }

    #[test]
    fn removed_udp_endpoints_are_stale_flows() {
        let dns = |endpoints: &[&str]| ServicePort {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: "10.43.0.10".parse().unwrap(),
            port: 53,
            node_port: None,
            endpoints: endpoints.iter().map(|e| (e.parse().unwrap(), 53)).collect(),
            affinity: None,
        };
        let (a, b) = ("10.42.0.1", "10.42.1.1");
        assert_eq!(
            stale_udp(&[dns(&[a, b])], &[dns(&[a])]),
            [StaleFlow::ClusterIp(
                "10.43.0.10".parse().unwrap(),
                53,
                b.parse().unwrap()
            )]
        );
        assert_eq!(stale_udp(&[dns(&[a])], &[dns(&[a, b])]), []);
        assert_eq!(
            stale_udp(&[dns(&[a])], &[]).len(),
            1,
            "a Service gone leaves its flows stale"
        );
        // TCP connections end by themselves.
        let mut tcp = dns(&[a]);
        tcp.protocol = Protocol::Tcp;
        assert_eq!(stale_udp(&[tcp], &[]), []);
    }

    #[test]
    fn client_ip_affinity_uses_a_set_per_endpoint() {
        let mut svc = user_service();
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        let one = slice(&[("10.42.0.7", true)]);
        let script = full(&settings(), &ruleset_of(&service_ports(&svc, &[&one])));
        for want in [
            "add set ip skiff-n1 aff/default/user-service/tcp/8080/10.42.0.7/8080 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }",
            "add rule ip skiff-n1 svc/default/user-service/tcp/8080 ip saddr @aff/default/user-service/tcp/8080/10.42.0.7/8080 goto ep/default/user-service/tcp/8080/10.42.0.7/8080",
            "add rule ip skiff-n1 ep/default/user-service/tcp/8080/10.42.0.7/8080 update @aff/default/user-service/tcp/8080/10.42.0.7/8080 { ip saddr }",
            "add rule ip skiff-n1 ep/default/user-service/tcp/8080/10.42.0.7/8080 meta l4proto tcp dnat ip to 10.42.0.7:8080",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
    }
}
