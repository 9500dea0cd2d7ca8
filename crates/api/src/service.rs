//! Services: defaults, checks, and the choice of cluster IPs and node ports from the server's
//! ranges. Pure: the caller reads what is taken and stores the claims.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

use crate::cidr::Ipv4Cidr;
use crate::object::FieldError;

/// The ranges Services draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceRanges {
    cidr: Ipv4Cidr,
    ports: (u16, u16),
}

/// Addresses at the start of the range are for Services that ask for them by number (the API's
/// own at .1, cluster DNS at .10); dynamic choices take them only when nothing else is free.
const RESERVED_LOW: u32 = 16;

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges::parse("10.43.0.0/16", "30000-32767").expect("the default ranges parse")
    }
}

impl ServiceRanges {
    /// `cidr` like `10.43.0.0/16` (a /8 to a /28), `ports` like `30000-32767`.
    pub fn parse(cidr: &str, ports: &str) -> Result<ServiceRanges, String> {
        let range = Ipv4Cidr::parse_any(cidr).map_err(|e| format!("service CIDR {e}"))?;
        if !(8..=28).contains(&range.prefix()) {
            return Err(format!("service CIDR {cidr:?}: the prefix must be 8 to 28"));
        }
        let (low, high) = ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
            .filter(|(a, b)| a <= b && *a > 0)
            .ok_or_else(|| format!("node port range {ports:?} is not LOW-HIGH"))?;
        Ok(ServiceRanges {
            cidr: range,
            ports: (low, high),
        })
    }

    /// The range cluster IPs come from.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    fn size(&self) -> u32 {
        self.cidr.size() as u32
    }

    /// The API server's own Service address (`kubernetes.default`).
    pub fn first_ip(&self) -> Ipv4Addr {
        self.cidr.nth(1).expect("a range has two addresses")
    }

    /// The cluster DNS Service's address (`kube-dns.kube-system`): the tenth, as Kubernetes'
    /// installers choose it.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.cidr.nth(10).expect("a range has sixteen addresses")
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.cidr
            .offset(ip)
            .is_some_and(|offset| offset > 0 && offset < u64::from(self.size()) - 1)
    }

    fn node_port_ok(&self, port: u16) -> bool {
        (self.ports.0..=self.ports.1).contains(&port)
    }

    /// A free address, searched from `seed` in the dynamic part of the range first.
    pub fn pick_ip(&self, taken: &BTreeSet<Ipv4Addr>, seed: u32) -> Option<Ipv4Addr> {
        let last = self.size() - 2;
        let low = RESERVED_LOW.min(last);
        let dynamic = last.saturating_sub(low);
        let from_dynamic = (0..dynamic).map(|i| low + 1 + (seed.wrapping_add(i) % dynamic.max(1)));
        from_dynamic
            .chain(1..=low)
            .filter_map(|offset| self.cidr.nth(u64::from(offset)))
            .find(|ip| !taken.contains(ip))
    }

    /// A free node port, searched from `seed`.
    pub fn pick_port(&self, taken: &BTreeSet<u16>, seed: u32) -> Option<u16> {
        let count = u32::from(self.ports.1 - self.ports.0) + 1;
        (0..count)
            .map(|i| self.ports.0 + ((seed.wrapping_add(i)) % count) as u16)
            .find(|p| !taken.contains(p))
    }
}

fn spec(obj: &Value) -> &Value {
    obj.get("spec").unwrap_or(&Value::Null)
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

pub fn service_type(obj: &Value) -> &str {
    match str_at(spec(obj), "type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn uses_node_ports(obj: &Value) -> bool {
    matches!(service_type(obj), "NodePort" | "LoadBalancer")
}

/// Whether the Service gets a cluster IP (not ExternalName, not headless).
fn wants_ip(obj: &Value) -> bool {
    service_type(obj) != "ExternalName" && str_at(spec(obj), "clusterIP") != "None"
}

/// Fills Kubernetes' defaults into a Service.
pub fn set_defaults(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let spec = map
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    spec.insert("type".into(), kind.clone().into());
    spec.entry("sessionAffinity")
        .or_insert_with(|| "None".into());
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| "TCP".into());
            if let Some(number) = port.get("port").cloned() {
                port.entry("targetPort").or_insert(number);
            }
        }
    }
    if kind != "ExternalName" {
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| "Cluster".into());
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| "SingleStack".into());
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert_with(|| "Cluster".into());
    }
    map.entry("status")
        .or_insert_with(|| json!({"loadBalancer": {}}));
}

/// Checks what the allocator and the network rely on.
pub fn validate(obj: &Value, ranges: &ServiceRanges) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = spec(obj);
    let kind = service_type(obj);
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            kind,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    if kind == "ExternalName" && str_at(spec, "externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let ip = str_at(spec, "clusterIP");
    if !ip.is_empty() && ip != "None" {
        match ip.parse::<Ipv4Addr>() {
            Err(_) => errs.push(FieldError::invalid(
                "spec.clusterIP",
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Ok(addr) if !ranges.usable(addr) => errs.push(FieldError::invalid(
                "spec.clusterIP",
                ip,
                "provided IP is not in the valid range. The range of valid IPs is the service CIDR",
            )),
            Ok(_) => {}
        }
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && ip != "None" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errs.push(FieldError::invalid(
                at("port"),
                &number.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = str_at(port, "protocol");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(
                at("protocol"),
                protocol,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let name = str_at(port, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(at("name"), ""));
        }
        if !name.is_empty() && !names.insert(name) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: at("name"),
                message: format!("Duplicate value: {name:?}"),
            });
        }
        if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64) {
            if !uses_node_ports(obj) {
                errs.push(FieldError::forbidden(
                    at("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !u16::try_from(node_port).is_ok_and(|p| ranges.node_port_ok(p)) {
                errs.push(FieldError::invalid(
                    at("nodePort"),
                    &node_port.to_string(),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        ranges.ports.0, ranges.ports.1
                    ),
                ));
            }
        }
    }
    errs
}

/// What a Service holds of the ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub ip: Option<Ipv4Addr>,
    pub node_ports: BTreeSet<u16>,
}

pub fn held(obj: &Value) -> Held {
    let spec = spec(obj);
    let ip = if wants_ip(obj) {
        str_at(spec, "clusterIP").parse().ok()
    } else {
        None
    };
    let node_ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort")?.as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    Held { ip, node_ports }
}

/// Keeps what an update leaves out: the cluster IP and the node port of each port still there
/// (matched by port number and protocol), as Kubernetes does.
pub fn carry_over(old: &Value, new: &mut Value) {
    let old_spec = spec(old).clone();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let keep_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if keep_ip {
        for field in ["clusterIP", "clusterIPs"] {
            if let Some(v) = old_spec.get(field) {
                spec.insert(field.into(), v.clone());
            }
        }
    }
    let old_ports = old_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            if port.contains_key("nodePort") {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == port.get("port") && o.get("protocol") == port.get("protocol")
            });
            if let Some(node_port) = same.and_then(|o| o.get("nodePort")) {
                port.insert("nodePort".into(), node_port.clone());
            }
        }
    }
}

/// Fills the cluster IP and node ports a Service lacks with free ones. Fails naming the field
/// when a range is full.
pub fn assign(
    obj: &mut Value,
    ranges: &ServiceRanges,
    taken_ips: &BTreeSet<Ipv4Addr>,
    taken_ports: &BTreeSet<u16>,
    seed: u32,
) -> Result<(), FieldError> {
    let wants_ip = wants_ip(obj);
    let node_ports = uses_node_ports(obj);
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if wants_ip {
        let current = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = if current.is_empty() {
            ranges
                .pick_ip(taken_ips, seed)
                .ok_or_else(|| {
                    FieldError::invalid("spec.clusterIP", "", "the service CIDR is full")
                })?
                .to_string()
        } else {
            current
        };
        spec.insert("clusterIP".into(), ip.clone().into());
        spec.insert("clusterIPs".into(), json!([ip]));
    } else if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
        spec.insert("clusterIPs".into(), json!(["None"]));
    }
    if node_ports {
        let mut taken = taken_ports.clone();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, port) in ports.iter_mut().enumerate() {
                let Some(port) = port.as_object_mut() else {
                    continue;
                };
                if let Some(given) = port.get("nodePort").and_then(Value::as_u64) {
                    taken.insert(given as u16);
                    continue;
                }
                let chosen = ranges
                    .pick_port(&taken, seed.wrapping_add(i as u32))
                    .ok_or_else(|| {
                        FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            "",
                            "the node port range is full",
                        )
                    })?;
                taken.insert(chosen);
                port.insert("nodePort".into(), chosen.into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        let mut obj = json!({"metadata": {"name": "s"}, "spec": spec});
        set_defaults(&mut obj);
        obj
    }

    #[test]
    fn ranges_parse_and_pick_free_values_outside_the_reserved_start() {
        let r = ServiceRanges::default();
        assert_eq!(r.first_ip(), Ipv4Addr::new(10, 43, 0, 1));
        for (cidr, ports, want) in [
            ("10.96.0.0/12", "30000-32767", None),
            ("10.96.0.0", "1-2", Some("not ADDRESS/PREFIX")),
            ("10.96.0.0/30", "1-2", Some("prefix must be 8 to 28")),
            ("10.96.0.0/24", "5-1", Some("not LOW-HIGH")),
        ] {
            let got = ServiceRanges::parse(cidr, ports).err();
            match (got, want) {
                (None, None) => {}
                (Some(e), Some(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{cidr} {ports}: {got:?} vs {want:?}"),
            }
        }
        let small = ServiceRanges::parse("10.0.0.0/27", "30000-30001").unwrap();
        let mut taken = BTreeSet::new();
        let mut picked = Vec::new();
        while let Some(ip) = small.pick_ip(&taken, 7) {
            taken.insert(ip);
            picked.push(u32::from(ip) & 0xff);
        }
        // 30 usable addresses; the dynamic part (17..=30) comes first, then 1..=16.
        assert_eq!(picked.len(), 30);
        assert!(picked[..14].iter().all(|o| *o > 16), "{picked:?}");
        assert!(!picked.contains(&0) && !picked.contains(&31));
        let ports: BTreeSet<u16> = [30000].into();
        assert_eq!(small.pick_port(&ports, 0), Some(30001));
        assert_eq!(small.pick_port(&[30000, 30001].into(), 0), None);
    }

    #[test]
    fn defaults_and_checks() {
        let r = ServiceRanges::default();
        let article = svc(json!({"selector": {"app": "users"}, "ports": [{"port": 8080}]}));
        assert_eq!(article["spec"]["type"], "ClusterIP");
        assert_eq!(article["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(article["spec"]["ports"][0]["targetPort"], 8080);
        assert!(validate(&article, &r).is_empty());
        let cases = [
            (json!({"ports": []}), "spec.ports: Required value"),
            (json!({"type": "Magic", "ports": [{"port": 1}]}), "spec.type: Unsupported value: \"Magic\""),
            (json!({"ports": [{"port": 70000}]}), "spec.ports[0].port: Invalid value: \"70000\""),
            (json!({"ports": [{"port": 1}, {"port": 2}]}), "spec.ports[0].name: Required value"),
            (json!({"ports": [{"port": 1, "nodePort": 30001}]}), "spec.ports[0].nodePort: Forbidden"),
            (json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}), "provided port is not in the valid range. The range of valid ports is 30000-32767"),
            (json!({"clusterIP": "10.44.0.5", "ports": [{"port": 1}]}), "spec.clusterIP: Invalid value: \"10.44.0.5\": provided IP is not in the valid range"),
            (json!({"clusterIP": "banana", "ports": [{"port": 1}]}), "must be a valid IP address"),
            (json!({"type": "ExternalName"}), "spec.externalName: Required value"),
        ];
        for (spec, want) in cases {
            let errs: Vec<String> = validate(&svc(spec.clone()), &r)
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            assert!(errs.iter().any(|e| e.contains(want)), "{spec}: {errs:?}");
        }
        assert!(
            validate(&svc(json!({"clusterIP": "None"})), &r).is_empty(),
            "headless needs no ports"
        );
    }

    #[test]
    fn assignment_fills_what_is_missing_and_updates_keep_it() {
        let r = ServiceRanges::default();
        let mut s = svc(
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}),
        );
        let taken_ports: BTreeSet<u16> = [30081].into();
        assign(&mut s, &r, &BTreeSet::new(), &taken_ports, 3).unwrap();
        let h = held(&s);
        assert!(h.ip.is_some_and(|ip| r.usable(ip)));
        assert_eq!(h.node_ports.len(), 2);
        assert!(h.node_ports.contains(&30081));
        assert_eq!(s["spec"]["clusterIPs"][0], s["spec"]["clusterIP"]);

        let mut update = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        carry_over(&s, &mut update);
        assert_eq!(update["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        assert_eq!(
            update["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][0]["nodePort"]
        );
        assert_eq!(
            held(&update).node_ports.len(),
            1,
            "the dropped port's node port goes"
        );

        let headless = svc(json!({"clusterIP": "None"}));
        assert_eq!(held(&headless), Held::default());
    }
}
