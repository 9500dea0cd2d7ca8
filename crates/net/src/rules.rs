//! The node's nftables table as text, built from parts: one per Service port (its chain, which
//! picks an endpoint as a packet mark, its endpoints in the table's `endpoints` map under the
//! marks of a slot of its own, its entries in the
//! `services`/`nodeports`/`no-endpoints` maps), one for the node's pods' host ports, one for its
//! pods' addresses (hairpin). A change touches only the parts it changes; a whole write goes
//! into a second table in several transactions (one huge transaction costs the kernel time
//! quadratic in its elements: 100,000 endpoints took 23 s in one, 0.7 s in ten) and the last
//! one removes the table it replaces, so traffic never sees half a table.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::proxy::{HostPort, ServicePort, Settings};

const SERVICES: &str = "services";
const NODE_PORTS: &str = "nodeports";
const NO_ENDPOINTS: &str = "no-endpoints";
const NO_ENDPOINT_NODE_PORTS: &str = "no-endpoint-nodeports";
const HAIRPIN: &str = "hairpin";
const ENDPOINTS: &str = "endpoints";
const REJECT: &str = "reject-chain";

/// Endpoint keys (packet marks) of one Service port: `slot * STRIDE + 1 + index`.
const STRIDE: u32 = 1 << 16;
/// Elements per transaction of a whole write.
const BATCH: usize = 5000;

/// The rules one thing contributes: chains, affinity sets (by name, timeout in seconds), and
/// elements of the table's shared maps and sets (map → key → value, "" for a set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    chains: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, u32>,
    elements: BTreeMap<&'static str, BTreeMap<String, String>>,
}

impl Part {
    fn element(&mut self, map: &'static str, key: String, value: String) {
        self.elements.entry(map).or_default().insert(key, value);
    }
}

/// A Service port's part, its endpoints under `slot`.
fn service_part(sp: &ServicePort, slot: u32) -> Part {
    let mut part = Part::default();
    let proto = sp.protocol.nft();
    let ip_key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
    let node_key = sp.node_port.map(|p| format!("{proto} . {p}"));
    if sp.endpoints.is_empty() {
        let reject = format!("goto {REJECT}");
        part.element(NO_ENDPOINTS, ip_key, reject.clone());
        if let Some(key) = node_key {
            part.element(NO_ENDPOINT_NODE_PORTS, key, reject);
        }
        return part;
    }
    let chain = sp.chain();
    let to = format!("goto {chain}");
    part.element(SERVICES, ip_key, to.clone());
    if let Some(key) = node_key {
        part.element(NODE_PORTS, key, to);
    }
    let n = sp.endpoints.len();
    let rules = match sp.affinity {
        None => {
            // The endpoint is chosen here as a mark; the base chain's one rule DNATs by it.
            let base = slot * STRIDE + 1;
            for (i, (ip, port)) in sp.endpoints.iter().enumerate() {
                part.element(
                    ENDPOINTS,
                    (base + i as u32).to_string(),
                    format!("{ip} . {port}"),
                );
            }
            vec![format!("meta mark set numgen random mod {n} offset {base}")]
        }
        Some(timeout) => {
            let mut rules = Vec::new();
            let mut choices = Vec::new();
            for (i, ep) in sp.endpoints.iter().enumerate() {
                let (set, ep_chain) = (sp.affinity_set(*ep), sp.endpoint_chain(*ep));
                rules.push(format!("ip saddr @{set} goto {ep_chain}"));
                choices.push(format!("{i} : goto {ep_chain}"));
                part.chains.insert(
                    ep_chain,
                    vec![
                        format!("update @{set} {{ ip saddr }}"),
                        format!("meta l4proto {proto} dnat ip to {}:{}", ep.0, ep.1),
                    ],
                );
                part.sets.insert(set, timeout);
            }
            rules.push(format!(
                "numgen random mod {n} vmap {{ {} }}",
                choices.join(", ")
            ));
            rules
        }
    };
    part.chains.insert(chain, rules);
    part
}

/// The part of the node's pods' host ports.
fn host_ports_part(ports: &[HostPort]) -> Part {
    let mut part = Part::default();
    for hp in ports {
        let proto = hp.protocol.nft();
        let chain = format!("hp/{proto}/{}", hp.port);
        part.element(
            NODE_PORTS,
            format!("{proto} . {}", hp.port),
            format!("goto {chain}"),
        );
        part.chains.insert(
            chain,
            vec![format!(
                "meta l4proto {proto} dnat ip to {}:{}",
                hp.pod_ip, hp.container_port
            )],
        );
    }
    part
}

/// The part of the node's pods' addresses: a pod reaching itself through a Service is
/// masqueraded (hairpin), or its reply would not come back through the NAT.
fn local_pods_part(pods: &[Ipv4Addr]) -> Part {
    let mut part = Part::default();
    for ip in pods {
        part.element(HAIRPIN, format!("{ip} . {ip}"), String::new());
    }
    part
}

const HOST_PORTS: &str = "~host-ports";
const LOCAL_PODS: &str = "~local-pods";

/// The whole table's parts, and the endpoint slots given out.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    parts: BTreeMap<String, Part>,
    /// Each Service's parts, by the Service's `namespace/name`.
    by_service: HashMap<String, Vec<String>>,
    slots: HashMap<String, u32>,
    free: Vec<u32>,
    next: u32,
}

/// Parts as they were and are now, for the parts a change touched.
#[derive(Debug, Default)]
pub struct Change {
    parts: Vec<(Part, Part)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|(old, new)| old == new)
    }
}

impl Ruleset {
    fn set_part(&mut self, key: &str, part: Option<Part>, change: &mut Change) {
        let old = match part {
            Some(part) => self.parts.insert(key.to_string(), part.clone()),
            None => self.parts.remove(key),
        }
        .unwrap_or_default();
        let new = self.parts.get(key).cloned().unwrap_or_default();
        if old != new {
            change.parts.push((old, new));
        }
    }

    fn slot(&mut self, key: &str) -> u32 {
        if let Some(slot) = self.slots.get(key) {
            return *slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.slots.insert(key.to_string(), slot);
        slot
    }

    /// Makes the rules of Service `service` (`namespace/name`) those of `ports` (none when the
    /// Service is gone).
    pub fn set_service(&mut self, service: &str, ports: &[ServicePort], change: &mut Change) {
        let keys: Vec<String> = ports.iter().map(ServicePort::chain).collect();
        for gone in self.by_service.remove(service).unwrap_or_default() {
            if !keys.contains(&gone) {
                self.set_part(&gone, None, change);
                if let Some(slot) = self.slots.remove(&gone) {
                    self.free.push(slot);
                }
            }
        }
        for (sp, key) in ports.iter().zip(&keys) {
            // More endpoints than a slot holds are cut, as a safety net (Services have fewer).
            let mut sp = sp.clone();
            sp.endpoints.truncate(STRIDE as usize);
            let slot = self.slot(key);
            self.set_part(key, Some(service_part(&sp, slot)), change);
        }
        if !keys.is_empty() {
            self.by_service.insert(service.to_string(), keys);
        }
    }

    /// Makes the node's host ports `ports`.
    pub fn set_host_ports(&mut self, ports: &[HostPort], change: &mut Change) {
        self.set_part(HOST_PORTS, Some(host_ports_part(ports)), change);
    }

    /// Makes the node's pods' addresses `pods`.
    pub fn set_local_pods(&mut self, pods: &[Ipv4Addr], change: &mut Change) {
        self.set_part(LOCAL_PODS, Some(local_pods_part(pods)), change);
    }
}

/// The transactions that write `rules` whole into table `table` (made afresh), the last one
/// removing table `replaced` (when it is another) so that the switch is one step.
pub fn full(s: &Settings, table: &str, replaced: &str, rules: &Ruleset) -> Vec<String> {
    let mut first = String::new();
    // Adding first makes the delete valid when the table does not exist yet.
    let _ = writeln!(
        first,
        "add table ip {table}\ndelete table ip {table}\nadd table ip {table}"
    );
    base(table, s, &mut first);
    let mut without_elements = Part::default();
    for part in rules.parts.values() {
        without_elements.chains.extend(part.chains.clone());
        without_elements.sets.extend(part.sets.clone());
    }
    diff_into(table, &Part::default(), &without_elements, &mut first);
    let mut transactions = vec![first];
    let mut elements: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for part in rules.parts.values() {
        for (map, entries) in &part.elements {
            let list = elements.entry(map).or_default();
            list.extend(entries.iter().map(|(k, v)| element(k, v)));
        }
    }
    for (map, entries) in elements {
        for batch in entries.chunks(BATCH) {
            transactions.push(format!(
                "add element ip {table} {map} {{ {} }}\n",
                batch.join(", ")
            ));
        }
    }
    if replaced != table {
        transactions.push(format!(
            "add table ip {replaced}\ndelete table ip {replaced}\n"
        ));
    }
    transactions
}

fn element(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

/// The transaction that applies `change` to table `table`; empty when nothing changed.
pub fn diff(table: &str, change: &Change) -> String {
    let mut out = String::new();
    for (old, new) in &change.parts {
        diff_into(table, old, new, &mut out);
    }
    out
}

/// The fixed part of the table: hooks, the maps the Services fill, rejection.
fn base(table: &str, s: &Settings, out: &mut String) {
    let cluster = s.cluster_cidr;
    let _ = writeln!(
        out,
        "add map ip {table} {ENDPOINTS} {{ typeof meta mark : ip daddr . tcp dport; }}"
    );
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
        let _ = writeln!(out, "add map ip {} {name} {{ type {ty}; }}", table);
    }
    let _ = writeln!(
        out,
        "add set ip {} {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}",
        table
    );
    let mut postrouting = vec![
        format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade"),
        // NodePort and node-originated connections to pods: replies must come back here, to
        // an address every pod has a route to (an isolated pod has no route to the nodes').
        format!(
            "ct status dnat ip saddr != {cluster} snat ip to {}",
            crate::ipam::gateway(&s.pod_cidr)
        ),
        // Service traffic sent to an endpoint outside the pods (the API server): it leaves as
        // the node, whose address the endpoint can answer.
        format!("ct status dnat ip daddr != {cluster} masquerade"),
    ];
    if s.masquerade_egress {
        postrouting.push(format!(
            "ip saddr {} ip daddr != {cluster} oifname != \"{}\" masquerade",
            s.pod_cidr, s.bridge
        ));
    }
    // A Service's chain (reached from `services`) marks the packet with its endpoint's key;
    // these rules, the only ones referring to the endpoints map, DNAT by it. (One rule per
    // Service referring to one shared map would make the kernel check every element for every
    // rule: 10,000 Services took 72 s.) Service traffic's packet mark is the proxy's.
    let mut dnat = vec!["jump services".to_string()];
    for proto in ["tcp", "udp", "sctp"] {
        dnat.push(format!(
            "meta l4proto {proto} dnat ip to meta mark map @{ENDPOINTS}"
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
            dnat.clone(),
        ),
        ("nat-output", Some("nat hook output priority -100"), dnat),
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
                    table
                );
            }
            None => {
                let _ = writeln!(out, "add chain ip {} {name}", table);
            }
        }
    }
    for (name, _, rules) in &chains {
        for rule in rules {
            let _ = writeln!(out, "add rule ip {} {name} {rule}", table);
        }
    }
}

fn diff_into(t: &str, old: &Part, new: &Part, out: &mut String) {
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
    let maps: std::collections::BTreeSet<&&str> =
        old.elements.keys().chain(new.elements.keys()).collect();
    for map in maps {
        let before = old.elements.get(*map).unwrap_or(&empty);
        let elements = new.elements.get(*map).unwrap_or(&empty);
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
    use crate::proxy::testing::*;
    use crate::proxy::{service_ports, Protocol};

    fn with(ruleset: &mut Ruleset, slices: &[&serde_json::Value]) -> Change {
        let mut change = Change::default();
        ruleset.set_service(
            "default/user-service",
            &service_ports(&user_service(), slices, "node-0"),
            &mut change,
        );
        change
    }

    #[test]
    fn a_whole_write_goes_into_a_new_table_then_replaces_the_old() {
        let two = slice(&[("10.42.0.7", true), ("10.42.1.3", true)]);
        let mut rules = Ruleset::default();
        with(&mut rules, &[&two]);
        let mut change = Change::default();
        rules.set_local_pods(&["10.42.0.7".parse().unwrap()], &mut change);
        let txs = full(&settings(), "skiff-n1-b", "skiff-n1-a", &rules);
        let script = txs.join("--\n");
        for want in [
            "add table ip skiff-n1-b\ndelete table ip skiff-n1-b\nadd table ip skiff-n1-b\n",
            "add chain ip skiff-n1-b nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }",
            "add rule ip skiff-n1-b svc/default/user-service/tcp/8080 meta mark set numgen random mod 2 offset 65537",
            "add rule ip skiff-n1-b nat-prerouting meta l4proto tcp dnat ip to meta mark map @endpoints",
            "add element ip skiff-n1-b endpoints { 65537 : 10.42.0.7 . 8080, 65538 : 10.42.1.3 . 8080 }",
            "add element ip skiff-n1-b services { 10.43.0.20 . tcp . 8080 : goto svc/default/user-service/tcp/8080 }",
            "add element ip skiff-n1-b nodeports { tcp . 30080 : goto svc/default/user-service/tcp/8080 }",
            "add element ip skiff-n1-b hairpin { 10.42.0.7 . 10.42.0.7 }",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
        assert_eq!(
            txs.last().unwrap(),
            "add table ip skiff-n1-a\ndelete table ip skiff-n1-a\n"
        );
        assert!(
            !script.contains("oifname"),
            "isolated: no egress masquerade\n{script}"
        );
        // Elements come in transactions of at most BATCH.
        let mut big = Ruleset::default();
        let many: Vec<(String, bool)> = (0..12_000)
            .map(|i| (format!("10.42.{}.{}", i / 250, i % 250 + 2), true))
            .collect();
        let many: Vec<(&str, bool)> = many.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
        with(&mut big, &[&slice(&many)]);
        let txs = full(&settings(), "t-a", "t-a", &big);
        assert_eq!(
            txs.len(),
            1 + 3 + 2,
            "tables and chains, 3 batches of endpoints, services, nodeports"
        );
    }

    #[test]
    fn changes_touch_only_their_parts() {
        let t = "skiff-n1-a";
        let two = slice(&[("10.42.0.7", true), ("10.42.1.3", true)]);
        let mut rules = Ruleset::default();
        with(&mut rules, &[&two]);
        assert!(with(&mut rules, &[&two]).is_empty());

        // One endpoint goes: the Service's chain is rewritten and the endpoint's element goes.
        let one = slice(&[("10.42.0.7", true)]);
        assert_eq!(
            diff(t, &with(&mut rules, &[&one])),
            "flush chain ip skiff-n1-a svc/default/user-service/tcp/8080\n\
             add rule ip skiff-n1-a svc/default/user-service/tcp/8080 meta mark set numgen random mod 1 offset 65537\n\
             delete element ip skiff-n1-a endpoints { 65538 }\n"
        );

        // No endpoints left: the address and the node port reject, the chain goes last.
        assert_eq!(
            diff(t, &with(&mut rules, &[])),
            "flush chain ip skiff-n1-a svc/default/user-service/tcp/8080\n\
             delete element ip skiff-n1-a endpoints { 65537 }\n\
             add element ip skiff-n1-a no-endpoint-nodeports { tcp . 30080 : goto reject-chain }\n\
             add element ip skiff-n1-a no-endpoints { 10.43.0.20 . tcp . 8080 : goto reject-chain }\n\
             delete element ip skiff-n1-a nodeports { tcp . 30080 }\n\
             delete element ip skiff-n1-a services { 10.43.0.20 . tcp . 8080 }\n\
             delete chain ip skiff-n1-a svc/default/user-service/tcp/8080\n"
        );

        // A Service gone frees its slot for the next.
        let mut change = Change::default();
        rules.set_service("default/user-service", &[], &mut change);
        assert!(
            rules.parts.is_empty() && rules.slots.is_empty(),
            "{rules:?}"
        );
        with(&mut rules, &[&two]);
        assert_eq!(rules.slots.values().collect::<Vec<_>>(), [&1]);
    }

    #[test]
    fn host_ports_open_on_the_node() {
        let ports = [HostPort {
            protocol: Protocol::Udp,
            port: 5353,
            pod_ip: "10.42.0.7".parse().unwrap(),
            container_port: 53,
        }];
        let mut rules = Ruleset::default();
        let mut change = Change::default();
        rules.set_host_ports(&ports, &mut change);
        assert_eq!(
            diff("t", &change),
            "add chain ip t hp/udp/5353\n\
             add rule ip t hp/udp/5353 meta l4proto udp dnat ip to 10.42.0.7:53\n\
             add element ip t nodeports { udp . 5353 : goto hp/udp/5353 }\n"
        );
    }

    #[test]
    fn client_ip_affinity_uses_a_set_per_endpoint() {
        let mut svc = user_service();
        svc["spec"]["sessionAffinity"] = serde_json::json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] =
            serde_json::json!({"clientIP": {"timeoutSeconds": 60}});
        let one = slice(&[("10.42.0.7", true)]);
        let mut rules = Ruleset::default();
        let mut change = Change::default();
        rules.set_service(
            "default/user-service",
            &service_ports(&svc, &[&one], "node-0"),
            &mut change,
        );
        let script = full(&settings(), "t", "t", &rules).join("");
        for want in [
            "add set ip t aff/default/user-service/tcp/8080/10.42.0.7/8080 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }",
            "add rule ip t svc/default/user-service/tcp/8080 ip saddr @aff/default/user-service/tcp/8080/10.42.0.7/8080 goto ep/default/user-service/tcp/8080/10.42.0.7/8080",
            "add rule ip t ep/default/user-service/tcp/8080/10.42.0.7/8080 update @aff/default/user-service/tcp/8080/10.42.0.7/8080 { ip saddr }",
            "add rule ip t ep/default/user-service/tcp/8080/10.42.0.7/8080 meta l4proto tcp dnat ip to 10.42.0.7:8080",
        ] {
            assert!(script.contains(want), "{want}\nnot in\n{script}");
        }
    }
}
