//! The node as the API sees it: the machine's capacity and identity, the Node object with the
//! standard labels, its status (conditions, addresses, the agent's endpoint), and the Lease in
//! `kube-node-lease` renewed as its heartbeat.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::status::stamp;

/// What the node offers and what it is, read from the machine once.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub arch: &'static str,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

impl Machine {
    pub fn read(data_dir: &Path) -> Machine {
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let disk_bytes = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: memory_kib * 1024,
            disk_bytes,
            kernel: first_line("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: first_line("/etc/machine-id"),
            boot_id: first_line("/proc/sys/kernel/random/boot_id"),
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
        }
    }
}

/// Who the node is and how it registers.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: String,
    /// The port of the agent's HTTPS endpoint (logs), published in `daemonEndpoints`.
    pub port: u16,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Value>,
}

pub fn node_object(id: &NodeIdentity, machine: &Machine) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": id.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": machine.arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": machine.arch,
    });
    for (k, v) in &id.labels {
        labels[k] = json!(v);
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": id.name, "labels": labels},
        "spec": {"taints": id.taints},
    })
}

pub fn node_status(id: &NodeIdentity, machine: &Machine, now: jiff::Timestamp) -> Value {
    let resources = json!({
        "cpu": machine.cpus.to_string(),
        "memory": format!("{}Ki", machine.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", machine.disk_bytes / 1024),
        "pods": "110",
    });
    let t = stamp(now);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "skiff agent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": id.ip},
            {"type": "Hostname", "address": id.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": id.port}},
        "nodeInfo": {
            "kubeletVersion": "v1.33.0-skiff", "kubeProxyVersion": "",
            "containerRuntimeVersion": "skiff://0.1.0",
            "operatingSystem": "linux", "architecture": machine.arch,
            "osImage": machine.os_image, "kernelVersion": machine.kernel,
            "machineID": machine.machine_id, "systemUUID": machine.machine_id, "bootID": machine.boot_id,
        },
    })
}

/// Creates the Node, or takes over an existing one of the same name (an agent's restart),
/// then writes its status.
pub async fn register(
    client: &kube::Client,
    id: &NodeIdentity,
    machine: &Machine,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object = node_object(id, machine);
    let node: Node = serde_json::from_value(object.clone()).expect("a Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let labels = json!({"metadata": {"labels": object["metadata"]["labels"]}});
            nodes
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(&labels))
                .await?;
        }
        Err(e) => return Err(e),
    }
    update_status(client, id, machine).await
}

pub async fn update_status(
    client: &kube::Client,
    id: &NodeIdentity,
    machine: &Machine,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": node_status(id, machine, jiff::Timestamp::now())});
    nodes
        .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn renew_lease(
    client: &kube::Client,
    node: &str,
    duration: Duration,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration.as_secs().max(1),
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&lease))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(lease).expect("a Lease");
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Renews the Lease every `interval` and rewrites the status every `status_every`, forever.
pub async fn heartbeat(
    client: kube::Client,
    id: NodeIdentity,
    machine: Machine,
    interval: Duration,
    lease_duration: Duration,
    status_every: Duration,
) {
    let mut last_status = tokio::time::Instant::now();
    loop {
        // A renewal that hangs (the server out of reach) must not hold up the next ones.
        match tokio::time::timeout(
            lease_duration,
            renew_lease(&client, &id.name, lease_duration),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(node = %id.name, error = %e, "renewing the node lease"),
            Err(_) => tracing::warn!(node = %id.name, "renewing the node lease: no answer"),
        }
        if last_status.elapsed() >= status_every {
            last_status = tokio::time::Instant::now();
            if let Err(e) = update_status(&client, &id, &machine).await {
                tracing::warn!(node = %id.name, error = %e, "updating the node status");
            }
        }
        tokio::time::sleep(interval).await;
    }
}
