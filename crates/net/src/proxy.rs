//! What the Service proxy serves, as pure functions: Services and their EndpointSlices become
//! `ServicePort`s (ready endpoints, affinity, node ports), pods' host ports become `HostPort`s,
//! and the UDP flows a change leaves stale. [`crate::rules`] turns them into nftables rules.

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

    pub(crate) fn nft(self) -> &'static str {
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
    pub(crate) fn chain(&self) -> String {
        format!(
            "svc/{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }

    pub(crate) fn endpoint_chain(&self, (ip, port): (Ipv4Addr, u16)) -> String {
        format!(
            "ep/{}/{}/{}/{}/{ip}/{port}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }

    pub(crate) fn affinity_set(&self, (ip, port): (Ipv4Addr, u16)) -> String {
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

/// The Service's ports as the proxy of node `node` serves them, endpoints taken from its
/// EndpointSlices (ready ones; a slice port is matched by name; only the node's own under
/// `internalTrafficPolicy: Local`). Services without a cluster IP (headless, ExternalName) have
/// none.
// FIXME: a NodePort Service with `internalTrafficPolicy: Local` has its node port restricted
// to local endpoints too (its `externalTrafficPolicy` is not followed yet).
pub fn service_ports(service: &Value, slices: &[&Value], node: &str) -> Vec<ServicePort> {
    let spec = &service["spec"];
    let local_only = spec["internalTrafficPolicy"] == "Local";
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
                if local_only && endpoint["nodeName"].as_str() != Some(node) {
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

/// Fixtures shared by this crate's tests: the article's user-service and its slices.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use serde_json::json;

    pub fn settings() -> Settings {
        Settings {
            table: "skiff-n1".into(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            pod_cidr: "10.42.0.0/24".parse().unwrap(),
            bridge: "skiff0".into(),
            masquerade_egress: false,
        }
    }

    pub fn user_service() -> Value {
        json!({"metadata": {"namespace": "default", "name": "user-service"},
               "spec": {"clusterIP": "10.43.0.20", "type": "NodePort",
                        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}]}})
    }

    pub fn slice(ready: &[(&str, bool)]) -> Value {
        let endpoints: Vec<Value> = ready
            .iter()
            .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}}))
            .collect();
        json!({"addressType": "IPv4", "endpoints": endpoints,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn services_and_slices_become_ports_with_ready_endpoints() {
        let s = slice(&[
            ("10.42.1.3", true),
            ("10.42.0.7", true),
            ("10.42.0.9", false),
        ]);
        let ports = service_ports(&user_service(), &[&s, &s], "node-0");
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
        assert!(service_ports(&headless, &[&s], "node-0").is_empty());
    }

    #[test]
    fn a_local_internal_traffic_policy_keeps_the_nodes_own_endpoints() {
        let mut s = slice(&[("10.42.1.3", true), ("10.42.0.7", true)]);
        s["endpoints"][0]["nodeName"] = json!("node-1");
        s["endpoints"][1]["nodeName"] = json!("node-0");
        let mut local = user_service();
        local["spec"]["internalTrafficPolicy"] = json!("Local");
        let endpoints =
            |svc: &Value, node: &str| service_ports(svc, &[&s], node)[0].endpoints.clone();
        assert_eq!(
            endpoints(&local, "node-0"),
            [("10.42.0.7".parse().unwrap(), 8080)]
        );
        assert_eq!(
            endpoints(&local, "node-1"),
            [("10.42.1.3".parse().unwrap(), 8080)]
        );
        assert_eq!(endpoints(&local, "node-2"), []);
        assert_eq!(endpoints(&user_service(), "node-2").len(), 2);
    }

    #[test]
    fn host_ports_of_a_pod() {
        let pod = json!({"spec": {"containers": [{"ports": [
            {"containerPort": 8080, "hostPort": 18080},
            {"containerPort": 9090},
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}]}]}});
        let ports = HostPort::of_pod(&pod, "10.42.0.7".parse().unwrap());
        let got: Vec<(Protocol, u16, u16)> = ports
            .iter()
            .map(|p| (p.protocol, p.port, p.container_port))
            .collect();
        assert_eq!(
            got,
            [(Protocol::Tcp, 18080, 8080), (Protocol::Udp, 5353, 53)]
        );
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
}
