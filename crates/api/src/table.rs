//! `kubectl get` columns: the server-side Table of each kind, with Kubernetes' column names and
//! cell values (pods' READY and STATUS, Deployments' UP-TO-DATE, Services' PORT(S), ages).

use serde_json::{json, Value};

use crate::kinds::Kind;
use crate::object::Lookup;

/// One column: its name, JSON type, and whether only `-o wide` shows it (priority 1).
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub wide: bool,
    pub description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind,
        wide: false,
        description,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        wide: true,
        description,
    }
}

const NAME: Column = col("Name", "string", "Name must be unique within a namespace.");
const AGE: Column = col("Age", "string", "How long ago the object was created.");

/// A kind's columns; kinds without their own have Name and Age.
pub fn columns(kind: &Kind) -> Vec<Column> {
    let own: &[Column] = match (kind.group, kind.kind) {
        ("", "Pod") => &[
            NAME,
            col("Ready", "string", "Ready containers of all containers."),
            col(
                "Status",
                "string",
                "The pod's state, or why it is not running.",
            ),
            col(
                "Restarts",
                "string",
                "Container restarts, and how long ago the last was.",
            ),
            AGE,
            wide("IP", "The pod's IP address."),
            wide("Node", "The node the pod runs on."),
            wide(
                "Nominated Node",
                "The node the pod is expected on after preemption.",
            ),
            wide("Readiness Gates", "Ready readiness gates of all."),
        ],
        ("apps", "Deployment") => &[
            NAME,
            col("Ready", "string", "Ready replicas of the desired."),
            col("Up-to-date", "integer", "Replicas of the current template."),
            col("Available", "integer", "Replicas available to users."),
            AGE,
            wide("Containers", "Container names of the template."),
            wide("Images", "Images of the template."),
            wide("Selector", "The label selector of the pods."),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => &[
            NAME,
            col("Desired", "integer", "Desired replicas."),
            col("Current", "integer", "Replicas that exist."),
            col("Ready", "integer", "Replicas that are ready."),
            AGE,
            wide("Containers", "Container names of the template."),
            wide("Images", "Images of the template."),
            wide("Selector", "The label selector of the pods."),
        ],
        ("apps", "StatefulSet") => &[
            NAME,
            col("Ready", "string", "Ready replicas of the desired."),
            AGE,
            wide("Containers", "Container names of the template."),
            wide("Images", "Images of the template."),
        ],
        ("apps", "DaemonSet") => &[
            NAME,
            col("Desired", "integer", "Nodes that should run the pod."),
            col("Current", "integer", "Nodes running the pod."),
            col("Ready", "integer", "Nodes with the pod ready."),
            col(
                "Up-to-date",
                "integer",
                "Nodes running the current template.",
            ),
            col("Available", "integer", "Nodes with the pod available."),
            col("Node Selector", "string", "Where the pods may run."),
            AGE,
        ],
        ("", "Service") => &[
            NAME,
            col("Type", "string", "How the Service is exposed."),
            col(
                "Cluster-IP",
                "string",
                "The Service's address in the cluster.",
            ),
            col("External-IP", "string", "Addresses outside the cluster."),
            col("Port(s)", "string", "The Service's ports."),
            AGE,
            wide("Selector", "The pods the Service sends to."),
        ],
        ("", "ConfigMap") => &[NAME, col("Data", "integer", "Number of entries."), AGE],
        ("", "Secret") => &[
            NAME,
            col("Type", "string", "The secret's type."),
            col("Data", "integer", "Number of entries."),
            AGE,
        ],
        ("", "Namespace") => &[NAME, col("Status", "string", "Active or Terminating."), AGE],
        ("", "Node") => &[
            NAME,
            col("Status", "string", "Ready or not, and whether schedulable."),
            col("Roles", "string", "The node's roles."),
            AGE,
            col("Version", "string", "The node agent's version."),
            wide("Internal-IP", "The node's internal address."),
        ],
        ("", "Endpoints") => &[NAME, col("Endpoints", "string", "Ready addresses."), AGE],
        ("", "ServiceAccount") => &[NAME, col("Secrets", "integer", "Token secrets."), AGE],
        ("", "Event") => &[
            col("Last Seen", "string", "When the event was last seen."),
            col("Type", "string", "Normal or Warning."),
            col("Reason", "string", "Why it happened, in one word."),
            col("Object", "string", "What it happened to."),
            col("Message", "string", "What happened."),
        ],
        ("certificates.k8s.io", "CertificateSigningRequest") => &[
            NAME,
            AGE,
            col("SignerName", "string", "Who is asked to sign."),
            col("Requestor", "string", "Who asked."),
            col(
                "RequestedDuration",
                "string",
                "How long the certificate is asked to last.",
            ),
            col(
                "Condition",
                "string",
                "Pending, Approved, Denied or Failed, and Issued.",
            ),
        ],
        ("batch", "Job") => &[
            NAME,
            col("Status", "string", "Running, Complete or Failed."),
            col(
                "Completions",
                "string",
                "Succeeded of the wanted completions.",
            ),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => &[NAME, col("Holder", "string", "Who holds it."), AGE],
        ("policy", "PodDisruptionBudget") => &[
            NAME,
            col("Min Available", "string", "Pods that must stay available."),
            col("Max Unavailable", "string", "Pods that may be unavailable."),
            col("Allowed Disruptions", "integer", "Evictions allowed now."),
            AGE,
        ],
        _ => &[NAME, AGE],
    };
    own.to_vec()
}

/// Kubernetes' human durations: `17s`, `5m3s`, `3h2m`, `2d4h`, `1y20d`.
pub fn human_duration(seconds: i64) -> String {
    // `3h`, or `3h2m` when the smaller unit is not zero.
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let days = hours / 24;
    match seconds {
        s if s < -1 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => pair(minutes, "m", seconds % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => pair(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => pair(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => pair(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.lookup(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.lookup(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn count(obj: &Value, pointer: &str) -> usize {
    match obj.lookup(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// Seconds since an RFC 3339 timestamp, given `now` in seconds since the epoch.
fn age(obj: &Value, pointer: &str, now: i64) -> String {
    let at = text(obj, pointer);
    match at.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

/// A map of strings as `k=v,k=v` (selectors, node selectors), or `<none>`.
fn pairs(obj: &Value, pointer: &str) -> String {
    let text = obj
        .lookup(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    or_none(text)
}

fn template_containers(obj: &Value, field: &str) -> String {
    obj.lookup("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| c[field].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector(obj: &Value) -> String {
    obj.lookup("/spec/selector")
        .map(|s| {
            crate::object::selector_from_json(s)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The pod's STATUS column, as kubectl shows it: the phase, or a container's reason for not
/// running (`CrashLoopBackOff`, `ErrImagePull`, `Error`), or `Terminating`.
fn pod_status(pod: &Value) -> String {
    let mut reason = text(pod, "/status/phase").to_string();
    if !text(pod, "/status/reason").is_empty() {
        reason = text(pod, "/status/reason").to_string();
    }
    let statuses = pod
        .lookup("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for status in statuses.iter().rev() {
        let waiting = text(status, "/state/waiting/reason");
        let terminated = status.lookup("/state/terminated");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if let Some(t) = terminated {
            reason = match (t["reason"].as_str(), t["signal"].as_i64()) {
                (Some(r), _) if !r.is_empty() => r.to_string(),
                (_, Some(sig)) if sig != 0 => format!("Signal:{sig}"),
                _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            };
        }
    }
    if pod.lookup("/metadata/deletionTimestamp").is_some() && reason != "NodeLost" {
        reason = "Terminating".into();
    }
    if reason.is_empty() {
        "Unknown".into()
    } else {
        reason
    }
}

fn pod_cells(pod: &Value, now: i64) -> Vec<Value> {
    let containers = count(pod, "/spec/containers");
    let statuses = pod
        .lookup("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|s| s["ready"].as_bool() == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let last_restart = statuses
        .iter()
        .filter_map(|s| s.lookup("/lastState/terminated/finishedAt")?.as_str())
        .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
        .max();
    let restarts = match last_restart {
        Some(t) if restarts > 0 => {
            format!("{restarts} ({} ago)", human_duration(now - t.as_second()))
        }
        _ => restarts.to_string(),
    };
    let gates = count(pod, "/spec/readinessGates");
    vec![
        json!(text(pod, "/metadata/name")),
        json!(format!("{ready}/{containers}")),
        json!(pod_status(pod)),
        json!(restarts),
        json!(age(pod, "/metadata/creationTimestamp", now)),
        json!(or_none(text(pod, "/status/podIP").to_string())),
        json!(or_none(text(pod, "/spec/nodeName").to_string())),
        json!(or_none(text(pod, "/status/nominatedNodeName").to_string())),
        json!(if gates == 0 {
            "<none>".to_string()
        } else {
            format!("0/{gates}")
        }),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports = svc
        .lookup("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let shown: Vec<String> = ports
        .iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{node}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    or_none(shown.join(","))
}

fn node_status(node: &Value) -> String {
    let conditions = node
        .lookup("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        })
        .unwrap_or("Unknown");
    if node.lookup("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    }
}

/// A row's cells for `obj` of `kind`, in the order of [`columns`]; `now` in seconds since the
/// epoch.
pub fn cells(kind: &Kind, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(text(obj, "/metadata/name"));
    let created = json!(age(obj, "/metadata/creationTimestamp", now));
    match (kind.group, kind.kind) {
        ("", "Pod") => pod_cells(obj, now),
        ("apps", "Deployment") => vec![
            name,
            json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                int(obj, "/spec/replicas")
            )),
            json!(int(obj, "/status/updatedReplicas")),
            json!(int(obj, "/status/availableReplicas")),
            created,
            json!(template_containers(obj, "name")),
            json!(template_containers(obj, "image")),
            json!(selector(obj)),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            name,
            json!(int(obj, "/spec/replicas")),
            json!(int(obj, "/status/replicas")),
            json!(int(obj, "/status/readyReplicas")),
            created,
            json!(template_containers(obj, "name")),
            json!(template_containers(obj, "image")),
            json!(selector(obj)),
        ],
        ("apps", "StatefulSet") => vec![
            name,
            json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                int(obj, "/spec/replicas")
            )),
            created,
            json!(template_containers(obj, "name")),
            json!(template_containers(obj, "image")),
        ],
        ("apps", "DaemonSet") => vec![
            name,
            json!(int(obj, "/status/desiredNumberScheduled")),
            json!(int(obj, "/status/currentNumberScheduled")),
            json!(int(obj, "/status/numberReady")),
            json!(int(obj, "/status/updatedNumberScheduled")),
            json!(int(obj, "/status/numberAvailable")),
            json!(pairs(obj, "/spec/template/spec/nodeSelector")),
            created,
        ],
        ("", "Service") => {
            let external = obj
                .lookup("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(text(obj, "/spec/type")),
                json!(or_none(text(obj, "/spec/clusterIP").to_string())),
                json!(or_none(external)),
                json!(service_ports(obj)),
                created,
                json!(pairs(obj, "/spec/selector")),
            ]
        }
        ("", "ConfigMap") => vec![
            name,
            json!(count(obj, "/data") + count(obj, "/binaryData")),
            created,
        ],
        ("", "Secret") => vec![
            name,
            json!(text(obj, "/type")),
            json!(count(obj, "/data")),
            created,
        ],
        ("", "Namespace") => vec![name, json!(text(obj, "/status/phase")), created],
        ("", "Node") => {
            let roles: Vec<&str> = obj
                .lookup("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            let internal = obj
                .lookup("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                .and_then(|x| x["address"].as_str())
                .unwrap_or("<none>");
            vec![
                name,
                json!(node_status(obj)),
                json!(or_none(roles.join(","))),
                created,
                json!(text(obj, "/status/nodeInfo/kubeletVersion")),
                json!(internal),
            ]
        }
        ("", "Endpoints") => {
            let addresses: Vec<String> = obj
                .lookup("/subsets")
                .and_then(Value::as_array)
                .map(|subsets| {
                    subsets
                        .iter()
                        .flat_map(|s| {
                            let ports: Vec<i64> = s["ports"]
                                .as_array()
                                .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
                                .unwrap_or_default();
                            let ips: Vec<String> = s["addresses"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|a| a["ip"].as_str().map(str::to_string))
                                        .collect()
                                })
                                .unwrap_or_default();
                            ips.into_iter().flat_map(move |ip| {
                                let ports = ports.clone();
                                ports.into_iter().map(move |p| format!("{ip}:{p}"))
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![name, json!(or_none(addresses.join(","))), created]
        }
        ("", "ServiceAccount") => vec![name, json!(count(obj, "/secrets")), created],
        ("", "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find(|p| !text(obj, p).is_empty())
            .map(|p| age(obj, p, now))
            .unwrap_or_default();
            let object = format!(
                "{}/{}",
                text(obj, "/involvedObject/kind").to_lowercase(),
                text(obj, "/involvedObject/name")
            );
            vec![
                json!(last),
                json!(text(obj, "/type")),
                json!(text(obj, "/reason")),
                json!(object),
                json!(text(obj, "/message")),
            ]
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            let mut condition: Vec<&str> = obj
                .lookup("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| c["status"] != "False")
                .filter_map(|c| c["type"].as_str())
                .collect();
            if condition.is_empty() {
                condition.push("Pending");
            }
            if obj.lookup("/status/certificate").is_some() {
                condition.push("Issued");
            }
            let duration = match obj
                .lookup("/spec/expirationSeconds")
                .and_then(Value::as_i64)
            {
                Some(seconds) => human_duration(seconds),
                None => "<none>".into(),
            };
            vec![
                json!(text(obj, "/metadata/name")),
                json!(age(obj, "/metadata/creationTimestamp", now)),
                json!(text(obj, "/spec/signerName")),
                json!(text(obj, "/spec/username")),
                json!(duration),
                json!(condition.join(",")),
            ]
        }
        ("batch", "Job") => {
            let succeeded = int(obj, "/status/succeeded");
            let wanted = obj
                .lookup("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let conditions = obj
                .lookup("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let done = |t: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if done("Complete") {
                "Complete"
            } else if done("Failed") {
                "Failed"
            } else {
                "Running"
            };
            vec![
                name,
                json!(status),
                json!(format!("{succeeded}/{wanted}")),
                created,
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(text(obj, "/spec/holderIdentity")), created]
        }
        ("policy", "PodDisruptionBudget") => {
            let bound = |field: &str| match obj.lookup(field) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(bound("/spec/minAvailable")),
                json!(bound("/spec/maxUnavailable")),
                json!(int(obj, "/status/disruptionsAllowed")),
                created,
            ]
        }
        _ => vec![name, created],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (17, "17s"),
            (119, "119s"),
            (303, "5m3s"),
            (300, "5m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600 + 120, "3h2m"),
            (20 * 3600, "20h"),
            (2 * 86400 + 4 * 3600, "2d4h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 20 * 86400, "3y20d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn rows_have_one_cell_per_column() {
        let now = "2026-11-25T12:10:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-11-25T12:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-25T12:08:00Z"}}}
            ]}
        });
        let pods = find("", "v1", "pods").unwrap();
        let row = cells(pods, &pod, now);
        assert_eq!(row.len(), columns(pods).len());
        assert_eq!(
            row[..6],
            [
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("4 (2m ago)"),
                json!("10m"),
                json!("10.42.0.5")
            ]
        );
        let deploy = json!({"metadata": {"name": "api-server", "creationTimestamp": "2026-11-25T12:09:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"spec": {"containers": [{"name": "server", "image": "my-api:v2.1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let deployments = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            cells(deployments, &deploy, now),
            [
                json!("api-server"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60s"),
                json!("server"),
                json!("my-api:v2.1"),
                json!("app=api")
            ]
        );
        let svc = json!({"metadata": {"name": "user-service"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
            "ports": [{"port": 8080, "protocol": "TCP", "nodePort": 30080}], "selector": {"app": "users"}}});
        let services = find("", "v1", "services").unwrap();
        let row = cells(services, &svc, now);
        assert_eq!(row[4], json!("8080:30080/TCP"));
        assert_eq!(row[3], json!("<none>"));
        for kind in crate::kinds::all() {
            let row = cells(kind, &json!({"metadata": {"name": "x"}}), now);
            assert_eq!(row.len(), columns(kind).len(), "{}", kind.kind);
        }
        let terminating =
            json!({"metadata": {"deletionTimestamp": "t"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&terminating), "Terminating");
    }
}
