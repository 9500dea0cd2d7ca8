//! Cluster DNS as a pure function: the records of `cluster.local` that Services and their
//! EndpointSlices call for (Kubernetes' DNS specification: A for a Service's cluster IP or a
//! headless Service's ready endpoints, SRV per named port, CNAME for ExternalName, A for pods
//! by their dashed address), and the answer to one question about them.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use serde_json::Value;

/// The cluster's DNS domain.
pub const DOMAIN: &str = "cluster.local";

/// What a name holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    /// port, target name
    Srv(u16, String),
    Cname(String),
}

/// The question's type, as far as the zone answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    A,
    Srv,
    /// Anything else (AAAA, TXT, ...): the zone holds none, a name that exists answers empty.
    Other,
}

/// An answer from the zone.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The name exists; the records of the wanted type (possibly none), each with its owner
    /// name (a CNAME's target is not followed outside the zone).
    Records(Vec<(String, Data)>),
    /// The name is inside the zone and does not exist.
    NxDomain,
    /// The name is not the cluster's: forwarded, or refused when isolated.
    Outside,
}

/// Every name of the zone, lowercase, without the trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    names: HashMap<String, Vec<Data>>,
    /// Names that exist only because names below them do (`default.svc.cluster.local`).
    branches: HashSet<String>,
}

impl Zone {
    fn add(&mut self, name: String, data: Data) {
        let mut parent = name.as_str();
        while let Some((_, rest)) = parent.split_once('.') {
            if rest.len() < DOMAIN.len() {
                break;
            }
            self.branches.insert(rest.to_string());
            parent = rest;
        }
        self.names.entry(name).or_default().push(data);
    }

    /// Adds the records of one Service and its slices.
    pub fn add_service(&mut self, service: &Value, slices: &[&Value]) {
        let meta = &service["metadata"];
        let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
            return;
        };
        let spec = &service["spec"];
        let fqdn = format!("{name}.{ns}.svc.{DOMAIN}");
        if spec["type"] == "ExternalName" {
            if let Some(target) = spec["externalName"].as_str() {
                self.add(
                    fqdn,
                    Data::Cname(target.trim_end_matches('.').to_lowercase()),
                );
            }
            return;
        }
        let cluster_ip = spec["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        // Headless: the ready endpoints' addresses, each also under a name of its own.
        let mut endpoints: Vec<Ipv4Addr> = Vec::new();
        if cluster_ip.is_none() {
            for slice in slices {
                for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                    if endpoint.pointer("/conditions/ready") == Some(&Value::Bool(false)) {
                        continue;
                    }
                    for a in endpoint["addresses"].as_array().into_iter().flatten() {
                        if let Some(ip) = a.as_str().and_then(|a| a.parse().ok()) {
                            endpoints.push(ip);
                        }
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
        }
        match cluster_ip {
            Some(ip) => self.add(fqdn.clone(), Data::A(ip)),
            None if endpoints.is_empty() => {
                self.branches.insert(fqdn.clone());
            }
            None => {
                for ip in &endpoints {
                    self.add(fqdn.clone(), Data::A(*ip));
                    self.add(format!("{}.{fqdn}", dashed(*ip)), Data::A(*ip));
                }
            }
        }
        for port in spec["ports"].as_array().into_iter().flatten() {
            let (Some(port_name), Some(number)) = (
                port["name"].as_str().filter(|n| !n.is_empty()),
                port["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            let proto = port["protocol"].as_str().unwrap_or("TCP").to_lowercase();
            let srv = format!("_{port_name}._{proto}.{fqdn}");
            if cluster_ip.is_some() {
                self.add(srv, Data::Srv(number, fqdn.clone()));
            } else {
                let target_port = slice_port(slices, port_name).unwrap_or(number);
                for ip in &endpoints {
                    self.add(
                        srv.clone(),
                        Data::Srv(target_port, format!("{}.{fqdn}", dashed(*ip))),
                    );
                }
            }
        }
    }

    /// The answer to a question about `name` (any case, trailing dot or not).
    pub fn answer(&self, name: &str, want: Want) -> Reply {
        let name = name.trim_end_matches('.').to_lowercase();
        if name != DOMAIN && !name.ends_with(&format!(".{DOMAIN}")) {
            return Reply::Outside;
        }
        let data = match self.names.get(&name) {
            Some(data) => data.clone(),
            None => match pod_address(&name) {
                Some(ip) => vec![Data::A(ip)],
                None if name == DOMAIN
                    || self.branches.contains(&name)
                    || is_fixed_branch(&name) =>
                {
                    Vec::new()
                }
                None => return Reply::NxDomain,
            },
        };
        let cname = data.iter().find_map(|d| match d {
            Data::Cname(t) => Some(t.clone()),
            _ => None,
        });
        if let Some(target) = cname {
            let mut out = vec![(name, Data::Cname(target.clone()))];
            if let Reply::Records(more) = self.answer(&target, want) {
                out.extend(more);
            }
            return Reply::Records(out);
        }
        Reply::Records(
            data.into_iter()
                .filter(|d| {
                    matches!(
                        (d, want),
                        (Data::A(_), Want::A) | (Data::Srv(..), Want::Srv)
                    )
                })
                .map(|d| (name.clone(), d))
                .collect(),
        )
    }
}

/// `svc.cluster.local`, `pod.cluster.local` and a namespace under each exist even when empty.
fn is_fixed_branch(name: &str) -> bool {
    let Some(rest) = name.strip_suffix(&format!(".{DOMAIN}")) else {
        return false;
    };
    matches!(rest.rsplit_once('.'), Some((ns, "svc" | "pod")) if !ns.contains('.'))
        || rest == "svc"
        || rest == "pod"
}

/// `10-42-0-7.<ns>.pod.cluster.local` → 10.42.0.7.
fn pod_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(&format!(".pod.{DOMAIN}"))?;
    let (host, ns) = rest.split_once('.')?;
    if ns.contains('.') {
        return None;
    }
    host.replace('-', ".").parse().ok()
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// The number a slice gives a named port.
fn slice_port(slices: &[&Value], name: &str) -> Option<u16> {
    slices.iter().find_map(|s| {
        s["ports"].as_array()?.iter().find_map(|p| {
            (p["name"] == name)
                .then(|| p["port"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .flatten()
        })
    })
}

/// A pod's `/etc/resolv.conf` by its DNS policy, as kubelet writes it: `ClusterFirst` (the
/// default) and `ClusterFirstWithHostNet` ask the cluster's DNS with the namespace's search
/// path and `ndots:5`; `Default` takes the node's file; `None` only the pod's `dnsConfig`,
/// which the others merge in too.
pub fn resolv_conf(pod: &Value, dns_ip: Ipv4Addr, node_resolv_conf: &str) -> String {
    let spec = &pod["spec"];
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let host_network = spec["hostNetwork"] == true;
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, host_network) {
            ("ClusterFirst", false) | ("ClusterFirstWithHostNet", _) => (
                vec![dns_ip.to_string()],
                vec![
                    format!("{ns}.svc.{DOMAIN}"),
                    format!("svc.{DOMAIN}"),
                    DOMAIN.to_string(),
                ],
                vec!["ndots:5".into()],
            ),
            ("None", _) => (Vec::new(), Vec::new(), Vec::new()),
            _ => {
                let mut parsed = (Vec::new(), Vec::new(), Vec::new());
                for line in node_resolv_conf.lines() {
                    let mut words = line.split_whitespace();
                    match words.next() {
                        Some("nameserver") => parsed.0.extend(words.map(String::from)),
                        Some("search") | Some("domain") => parsed.1.extend(words.map(String::from)),
                        Some("options") => parsed.2.extend(words.map(String::from)),
                        _ => {}
                    }
                }
                parsed
            }
        };
    let config = &spec["dnsConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    servers.extend(strings(&config["nameservers"]));
    searches.extend(strings(&config["searches"]));
    for option in config["options"].as_array().into_iter().flatten() {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        options.retain(|o| o.split(':').next() != Some(name));
        options.push(match option["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers.iter().take(3) {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        let mut z = Zone::default();
        let user = json!({"metadata": {"namespace": "default", "name": "user-service"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}});
        z.add_service(&user, &[]);
        let headless = json!({"metadata": {"namespace": "default", "name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}});
        let slice = json!({"ports": [{"name": "pg", "port": 5433}], "endpoints": [
            {"addresses": ["10.42.1.5"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.9"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.4"], "conditions": {"ready": false}}]});
        z.add_service(&headless, &[&slice]);
        let external = json!({"metadata": {"namespace": "prod", "name": "search"},
            "spec": {"type": "ExternalName", "externalName": "Search.Example.com."}});
        z.add_service(&external, &[]);
        z
    }

    fn a(ip: &str) -> Data {
        Data::A(ip.parse().unwrap())
    }

    #[test]
    fn answers_as_the_kubernetes_dns_specification_says() {
        let z = zone();
        let records = |name: &str, want| match z.answer(name, want) {
            Reply::Records(r) => r.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            records("User-Service.default.svc.cluster.local.", Want::A),
            [a("10.43.0.20")]
        );
        assert_eq!(
            records(
                "_http._tcp.user-service.default.svc.cluster.local",
                Want::Srv
            ),
            [Data::Srv(
                8080,
                "user-service.default.svc.cluster.local".into()
            )]
        );
        // A name that exists answers AAAA with nothing (not NXDOMAIN: resolvers would stop).
        assert_eq!(
            records("user-service.default.svc.cluster.local", Want::Other),
            []
        );
        assert_eq!(
            records("db.default.svc.cluster.local", Want::A),
            [a("10.42.0.9"), a("10.42.1.5")]
        );
        assert_eq!(
            records("10-42-1-5.db.default.svc.cluster.local", Want::A),
            [a("10.42.1.5")]
        );
        assert_eq!(
            records("_pg._tcp.db.default.svc.cluster.local", Want::Srv),
            [
                Data::Srv(5433, "10-42-0-9.db.default.svc.cluster.local".into()),
                Data::Srv(5433, "10-42-1-5.db.default.svc.cluster.local".into())
            ]
        );
        assert_eq!(
            records("10-42-0-7.default.pod.cluster.local", Want::A),
            [a("10.42.0.7")]
        );
        assert_eq!(
            records("search.prod.svc.cluster.local", Want::A),
            [Data::Cname("search.example.com".into())]
        );
        for branch in [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "kube-system.svc.cluster.local",
        ] {
            assert_eq!(records(branch, Want::A), [], "{branch}");
        }
        for missing in [
            "nope.default.svc.cluster.local",
            "user-service.default.svc.default.svc.cluster.local",
            "user-service.cluster.local",
        ] {
            assert_eq!(z.answer(missing, Want::A), Reply::NxDomain, "{missing}");
        }
        assert_eq!(z.answer("example.com", Want::A), Reply::Outside);
    }

    #[test]
    fn resolv_conf_by_dns_policy() {
        let dns: Ipv4Addr = "10.43.0.10".parse().unwrap();
        let node = "nameserver 192.168.1.1\nsearch lan\n";
        let pod = |spec: Value| json!({"metadata": {"namespace": "shop"}, "spec": spec});
        assert_eq!(
            resolv_conf(&pod(json!({})), dns, node),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({"dnsPolicy": "Default"})), dns, node),
            "search lan\nnameserver 192.168.1.1\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({"hostNetwork": true})), dns, node),
            "search lan\nnameserver 192.168.1.1\n",
            "ClusterFirst with the host's network falls back to the node's"
        );
        assert_eq!(
            resolv_conf(
                &pod(
                    json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})
                ),
                dns,
                node
            ),
            "nameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}})), dns, node),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:1\n"
        );
    }
}
