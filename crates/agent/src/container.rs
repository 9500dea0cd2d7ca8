//! What one run of a container is given, decided without I/O: its environment (values,
//! ConfigMap and Secret keys, the downward API, `$(VAR)` references), command and arguments,
//! cgroup resources, security settings and mounts, as the runtime's `ContainerConfig`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use skiff_api::quantity;
use skiff_runtime::{ContainerConfig, Mount, Resources, Security};

/// One ConfigMap's or Secret's data (Secret values decoded, ConfigMaps' `binaryData` included).
pub type Data = BTreeMap<String, Vec<u8>>;

/// The ConfigMaps and Secrets a pod refers to, as the worker fetched them (`None`: not found).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<Data>>,
    pub secrets: BTreeMap<String, Option<Data>>,
}

/// Why a container cannot be given its configuration (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the node contributes: its address, the pod's address, the Services' variables, its
/// memory (for the OOM score of burstable pods).
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub host_ip: String,
    pub pod_ip: Option<String>,
    /// `KUBERNETES_SERVICE_HOST` and the like (and the other Services' of the pod's
    /// namespace, when links are on), given before the container's own variables.
    pub service_env: Vec<(String, String)>,
    pub memory_bytes: i64,
    pub cpu_millis: i64,
}

/// One Service's variables, as Docker links named them and kubelet still gives every
/// container (`USER_SERVICE_SERVICE_HOST`, `USER_SERVICE_PORT_8080_TCP_ADDR`, ...): `ports` as
/// (name, number, protocol), the first one also the Service's default. Services without a
/// cluster IP have none.
pub fn service_link_env(
    service: &str,
    cluster_ip: &str,
    ports: &[(String, u16, String)],
) -> Vec<(String, String)> {
    if cluster_ip.is_empty() || cluster_ip == "None" {
        return Vec::new();
    }
    let prefix = service.to_uppercase().replace('-', "_");
    let mut env = vec![(format!("{prefix}_SERVICE_HOST"), cluster_ip.to_string())];
    if let Some((_, first, proto)) = ports.first() {
        env.push((format!("{prefix}_SERVICE_PORT"), first.to_string()));
        for (name, port, _) in ports.iter().filter(|(n, ..)| !n.is_empty()) {
            let name = name.to_uppercase().replace('-', "_");
            env.push((format!("{prefix}_SERVICE_PORT_{name}"), port.to_string()));
        }
        env.push((
            format!("{prefix}_PORT"),
            format!("{}://{cluster_ip}:{first}", proto.to_lowercase()),
        ));
    }
    for (_, port, proto) in ports {
        let (upper, lower) = (proto.to_uppercase(), proto.to_lowercase());
        let base = format!("{prefix}_PORT_{port}_{upper}");
        env.push((base.clone(), format!("{lower}://{cluster_ip}:{port}")));
        env.push((format!("{base}_PROTO"), lower));
        env.push((format!("{base}_PORT"), port.to_string()));
        env.push((format!("{base}_ADDR"), cluster_ip.to_string()));
    }
    env
}

/// Adds the names of the ConfigMaps and Secrets a container's environment refers to.
pub fn references(container: &Container, config_maps: &mut Vec<String>, secrets: &mut Vec<String>) {
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref {
            config_maps.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
}

/// Expands `$(NAME)` from `vars` (unknown names stay as written; `$$` is a literal `$`), as
/// Kubernetes expands command, args and env values.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// A downward API field of the pod (`metadata.name`, `metadata.labels['app']`, `status.podIP`...).
pub fn pod_field(pod: &Pod, path: &str, node: &NodeFacts) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", m.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", m.annotations.as_ref()) {
        return Ok(v);
    }
    let all = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => namespace(pod).to_string(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => all(m.labels.as_ref()),
        "metadata.annotations" => all(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => node.host_ip.clone(),
        "status.podIP" | "status.podIPs" => node.pod_ip.clone().unwrap_or_default(),
        other => return Err(ConfigError(format!("unsupported fieldRef path {other:?}"))),
    })
}

/// A container's resource (`limits.cpu`, `requests.memory`, ...) divided by `divisor`, rounded
/// up; a missing limit is the node's allocatable, as kubelet gives it.
fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node: &NodeFacts,
) -> Result<String, ConfigError> {
    let bad = || ConfigError(format!("unsupported resourceFieldRef {resource:?}"));
    let (which, name) = resource.split_once('.').ok_or_else(bad)?;
    let resources = container.resources.as_ref();
    let list = match which {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(bad()),
    };
    let quantity =
        |q: &str| quantity::parse(q).map_err(|e| ConfigError(format!("{resource}: {e}")));
    let value = match list.and_then(|l| l.get(name)) {
        Some(q) => quantity(&q.0)?,
        None => match name {
            "cpu" => quantity::Quantity(i128::from(node.cpu_millis)),
            "memory" => quantity::Quantity::from_units(i128::from(node.memory_bytes)),
            "ephemeral-storage" => quantity::Quantity(0),
            _ => return Err(bad()),
        },
    };
    let divisor = quantity(divisor.unwrap_or("1"))?;
    if divisor.0 <= 0 {
        return Err(ConfigError(format!(
            "{resource}: the divisor must be positive"
        )));
    }
    Ok(((value.0 + divisor.0 - 1).div_euclid(divisor.0)).to_string())
}

fn lookup(
    sources: &BTreeMap<String, Option<Data>>,
    what: &str,
    namespace: &str,
    name: &str,
    key: Option<&str>,
    optional: bool,
) -> Result<Option<String>, ConfigError> {
    let Some(Some(data)) = sources.get(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(ConfigError(format!(
                "{} {name:?} not found",
                what.to_lowercase()
            )))
        };
    };
    let Some(key) = key else { return Ok(None) };
    match data.get(key) {
        Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
        None if optional => Ok(None),
        None => Err(ConfigError(format!(
            "couldn't find key {key} in {what} {namespace}/{name}"
        ))),
    }
}

fn var_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    sources: &Sources,
    node: &NodeFacts,
    vars: &BTreeMap<String, String>,
) -> Result<Option<String>, ConfigError> {
    let ns = namespace(pod);
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or_default(), vars)));
    };
    if let Some(r) = &from.field_ref {
        return pod_field(pod, &r.field_path, node).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
        return resource_field(container, &r.resource, divisor, node).map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional.unwrap_or(false);
        return lookup(
            &sources.config_maps,
            "ConfigMap",
            ns,
            &r.name,
            Some(&r.key),
            optional,
        );
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional.unwrap_or(false);
        return lookup(
            &sources.secrets,
            "Secret",
            ns,
            &r.name,
            Some(&r.key),
            optional,
        );
    }
    Ok(None)
}

/// The container's environment: Services' variables, then `envFrom` sources in order, then
/// `env` in order, each later one replacing an earlier one of the same name.
pub fn environment(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    node: &NodeFacts,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = namespace(pod);
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |name: String, value: String, vars: &mut BTreeMap<String, String>| {
        if !vars.contains_key(&name) {
            order.push(name.clone());
        }
        vars.insert(name, value);
    };
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    for (name, value) in &node.service_env {
        // The API server's own variables are always there; other Services' only with links.
        if links || name.starts_with("KUBERNETES_") {
            set(name.clone(), value.clone(), &mut vars);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            lookup(
                &sources.config_maps,
                "ConfigMap",
                ns,
                &r.name,
                None,
                r.optional.unwrap_or(false),
            )?;
            sources.config_maps.get(&r.name).cloned().flatten()
        } else if let Some(r) = &from.secret_ref {
            lookup(
                &sources.secrets,
                "Secret",
                ns,
                &r.name,
                None,
                r.optional.unwrap_or(false),
            )?;
            sources.secrets.get(&r.name).cloned().flatten()
        } else {
            None
        };
        for (key, value) in data.unwrap_or_default() {
            let value = String::from_utf8_lossy(&value).into_owned();
            set(format!("{prefix}{key}"), value, &mut vars);
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = var_value(pod, container, var, sources, node, &vars)? {
            set(var.name.clone(), value, &mut vars);
        }
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let value = vars[&name].clone();
            (name, value)
        })
        .collect())
}

/// cgroup settings from requests and limits, as kubelet computes them: shares from the CPU
/// request (limit when no request), quota from the CPU limit, the memory limit, and the OOM
/// score adjustment of the pod's QoS class.
pub fn resources(pod: &Pod, container: &Container, node: &NodeFacts) -> Resources {
    let get = |list: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               name: &str| {
        list.and_then(|l| l.get(name))
            .and_then(|q| quantity::parse(&q.0).ok())
    };
    let r = container.resources.as_ref();
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let cpu_request = get(requests, "cpu").or(get(limits, "cpu"));
    let cpu_limit = get(limits, "cpu");
    let memory_limit = get(limits, "memory");
    let memory_request = get(requests, "memory").or(memory_limit);
    let period: i64 = 100_000;
    let qos = skiff_api::defaults::qos_class(
        &serde_json::to_value(pod.spec.as_ref()).unwrap_or_default(),
    );
    let oom_score_adj = match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = memory_request.map_or(0, |q| q.units() as i64);
            let capacity = node.memory_bytes.max(1);
            (1000 - 1000 * request / capacity).clamp(2, 999) as i32
        }
    };
    Resources {
        cpu_shares: Some(cpu_request.map_or(2, |q| ((q.milli() * 1024) / 1000).max(2) as u64)),
        cpu_quota: cpu_limit.map(|q| ((q.milli() as i64 * period) / 1000).max(1000)),
        cpu_period: period as u64,
        memory_limit: memory_limit.map(|q| q.units() as i64),
        oom_score_adj: Some(oom_score_adj),
    }
}

/// The container's security settings, its own over the pod's.
pub fn security(pod: &Pod, container: &Container) -> Security {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    Security {
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user))
            .map(|u| u as u32),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group))
            .map(|g| g as u32),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        read_only_root_filesystem: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        allow_privilege_escalation: sc
            .and_then(|s| s.allow_privilege_escalation)
            .unwrap_or(false),
    }
}

/// Bind mounts for the container's `volumeMounts`, from the host directories the worker
/// prepared for the pod's volumes, plus its termination message file.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    termination_file: &Path,
) -> Result<Vec<Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(dir) = volumes.get(&m.name) else {
            return Err(ConfigError(format!(
                "volume {:?} of volumeMount {:?} is not a volume of the pod",
                m.name, m.mount_path
            )));
        };
        let sub = m.sub_path.as_deref().unwrap_or("");
        if sub.split('/').any(|part| part == "..") || sub.starts_with('/') {
            return Err(ConfigError(format!(
                "subPath {sub:?} must be a relative path without '..'"
            )));
        }
        out.push(Mount {
            host_path: if sub.is_empty() {
                dir.clone()
            } else {
                dir.join(sub)
            },
            container_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    let path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    out.push(Mount {
        host_path: termination_file.to_path_buf(),
        container_path: path,
        read_only: false,
    });
    Ok(out)
}

/// The runtime's configuration of attempt `attempt` of `container`.
#[allow(clippy::too_many_arguments)]
pub fn config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
    mounts: Vec<Mount>,
    node: &NodeFacts,
) -> ContainerConfig {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, &vars)).collect()
    };
    ContainerConfig {
        name: container.name.clone(),
        attempt,
        image: container.image.clone().unwrap_or_default(),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        env,
        working_dir: container.working_dir.clone().filter(|w| !w.is_empty()),
        mounts,
        resources: resources(pod, container, node),
        security: security(pod, container),
    }
}

/// The article's `app-config` (with `log_level` as given) and `db-creds`, and a ConfigMap
/// `gone` that does not exist: what the agent's tests read.
#[cfg(test)]
impl Sources {
    pub(crate) fn article(log_level: &str) -> Sources {
        let data = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        Sources {
            config_maps: BTreeMap::from([
                (
                    "app-config".into(),
                    data(&[("log_level", log_level), ("database_url", "postgres://db")]),
                ),
                ("gone".into(), None),
            ]),
            secrets: BTreeMap::from([("db-creds".into(), data(&[("password", "s3cr3t")]))]),
        }
    }
}

#[cfg(test)]
mod link_tests {
    use super::service_link_env;

    #[test]
    fn service_links_name_the_first_port_and_every_port() {
        let ports = [
            ("http".to_string(), 8080, "TCP".to_string()),
            ("metrics".into(), 9090, "TCP".into()),
        ];
        let env = service_link_env("user-service", "10.43.0.20", &ports);
        let text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                "USER_SERVICE_SERVICE_HOST=10.43.0.20",
                "USER_SERVICE_SERVICE_PORT=8080",
                "USER_SERVICE_SERVICE_PORT_HTTP=8080",
                "USER_SERVICE_SERVICE_PORT_METRICS=9090",
                "USER_SERVICE_PORT=tcp://10.43.0.20:8080",
                "USER_SERVICE_PORT_8080_TCP=tcp://10.43.0.20:8080",
                "USER_SERVICE_PORT_8080_TCP_PROTO=tcp",
                "USER_SERVICE_PORT_8080_TCP_PORT=8080",
                "USER_SERVICE_PORT_8080_TCP_ADDR=10.43.0.20",
                "USER_SERVICE_PORT_9090_TCP=tcp://10.43.0.20:9090",
                "USER_SERVICE_PORT_9090_TCP_PROTO=tcp",
                "USER_SERVICE_PORT_9090_TCP_PORT=9090",
                "USER_SERVICE_PORT_9090_TCP_ADDR=10.43.0.20",
            ]
        );
        assert!(service_link_env("db", "None", &ports).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "web"}, "annotations": {"team": "a"}},
            "spec": {"nodeName": "n1", "containers": [container]},
        }))
        .unwrap()
    }

    fn node() -> NodeFacts {
        NodeFacts {
            host_ip: "10.0.0.5".into(),
            pod_ip: Some("10.42.0.7".into()),
            service_env: vec![("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into())],
            memory_bytes: 8 << 30,
            cpu_millis: 2000,
        }
    }

    fn env_of(container: serde_json::Value) -> Result<Vec<(String, String)>, ConfigError> {
        let p = pod(container);
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        environment(&p, &c, &Sources::article("debug"), &node())
    }

    #[test]
    fn environment_from_every_source_in_kubernetes_order() {
        let env = env_of(json!({
            "name": "app", "image": "my-api",
            "envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}],
            "env": [
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "log_level"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "URL", "value": "$(POD).$(NS) at $(CFG_database_url) $$(KEEP) $(MISSING)"},
                {"name": "LEVEL", "value": "info"},
                {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": true}}},
            ],
        }))
        .unwrap();
        let text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                "KUBERNETES_SERVICE_HOST=10.43.0.1",
                "CFG_database_url=postgres://db",
                "CFG_log_level=debug",
                "LEVEL=info",
                "PASSWORD=s3cr3t",
                "POD=web-1",
                "NS=shop",
                "APP=web",
                "IP=10.42.0.7",
                "HOST=10.0.0.5",
                "NODE=n1",
                "MEM=8192",
                "URL=web-1.shop at postgres://db $(KEEP) $(MISSING)",
            ]
        );
    }

    #[test]
    fn missing_sources_are_configuration_errors_in_kubelet_words() {
        let cases = [
            (
                json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]),
                None,
                "configmap \"nope\" not found",
            ),
            (
                json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "k"}}}]),
                None,
                "couldn't find key k in ConfigMap shop/app-config",
            ),
            (
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "user"}}}]),
                None,
                "couldn't find key user in Secret shop/db-creds",
            ),
            (
                json!([]),
                Some(json!([{"secretRef": {"name": "gone"}}])),
                "secret \"gone\" not found",
            ),
            (
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]),
                None,
                "unsupported fieldRef path \"spec.bogus\"",
            ),
        ];
        for (env, env_from, want) in cases {
            let mut c = json!({"name": "app", "image": "x", "env": env});
            if let Some(f) = env_from {
                c["envFrom"] = f;
            }
            assert_eq!(env_of(c), Err(ConfigError(want.into())));
        }
        // Optional ones are simply absent.
        let env = env_of(json!({"name": "app", "image": "x",
            "envFrom": [{"secretRef": {"name": "gone", "optional": true}}],
            "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "user", "optional": true}}}]}))
        .unwrap();
        assert_eq!(env.len(), 1, "only the service variable: {env:?}");
    }

    #[test]
    fn resources_follow_kubelet_arithmetic() {
        let check = |resources: serde_json::Value,
                     want: (Option<u64>, Option<i64>, Option<i64>, i32)| {
            let p = pod(json!({"name": "app", "image": "x", "resources": resources}));
            let c = &p.spec.as_ref().unwrap().containers[0];
            let r = super::resources(&p, c, &node());
            assert_eq!(
                (
                    r.cpu_shares,
                    r.cpu_quota,
                    r.memory_limit,
                    r.oom_score_adj.unwrap()
                ),
                want
            );
        };
        // The article's api-server: burstable.
        check(
            json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}),
            (Some(256), Some(50_000), Some(512 << 20), 969),
        );
        check(
            json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
            (Some(1024), Some(100_000), Some(1 << 30), -997),
        );
        check(json!({}), (Some(2), None, None, 1000));
    }

    #[test]
    fn mounts_and_commands() {
        let p = pod(json!({"name": "app", "image": "x",
            "command": ["sh", "-c"], "args": ["echo $(GREETING) $$(HOME)"],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"},
                             {"name": "config", "mountPath": "/etc/app/level", "subPath": "log_level", "readOnly": true}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let volumes = BTreeMap::from([
            ("cache".to_string(), PathBuf::from("/v/cache")),
            ("config".to_string(), PathBuf::from("/v/config")),
        ]);
        let mounts = mounts(c, &volumes, Path::new("/v/term")).unwrap();
        let config = config(
            &p,
            c,
            2,
            vec![("GREETING".into(), "hi".into())],
            mounts,
            &node(),
        );
        assert_eq!(config.command, ["sh", "-c"]);
        assert_eq!(config.args, ["echo hi $(HOME)"]);
        assert_eq!(config.attempt, 2);
        let m: Vec<(String, &str, bool)> = config
            .mounts
            .iter()
            .map(|m| {
                (
                    m.host_path.display().to_string(),
                    m.container_path.as_str(),
                    m.read_only,
                )
            })
            .collect();
        assert_eq!(
            m,
            [
                ("/v/cache".to_string(), "/cache", false),
                ("/v/config/log_level".to_string(), "/etc/app/level", true),
                ("/v/term".to_string(), "/dev/termination-log", false),
            ]
        );
        let bad = pod(
            json!({"name": "app", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        );
        let c = &bad.spec.as_ref().unwrap().containers[0];
        assert!(super::mounts(c, &volumes, Path::new("/t")).is_err());
    }
}
