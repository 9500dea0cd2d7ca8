//! `skiff hollow`: registers hollow nodes with a cluster (through its API, as agents do) whose
//! pods are reported Running without running anything, to try the control plane at scale.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_hollow::HollowConfig;

#[derive(Args)]
pub struct HollowArgs {
    /// The kubeconfig of the cluster to join.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Node `i` is called `<prefix><i>`.
    #[arg(long, default_value = "hollow-")]
    prefix: String,
    /// Each node's CPU, memory and pod capacity.
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "16Gi")]
    memory: String,
    #[arg(long, default_value = "110")]
    pods: String,
    /// Spread the nodes over this many zones (`topology.kubernetes.io/zone`).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// A label for every node, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A taint for every node, `key=value:Effect` (repeatable).
    #[arg(long = "taint", value_parser = parse_taint)]
    taints: Vec<serde_json::Value>,
    /// How long a bound pod takes to be reported Running and Ready, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ready_delay_ms: u64,
    /// How often each node's Lease is renewed, in seconds.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: a label is key=value"))
}

fn parse_taint(s: &str) -> Result<serde_json::Value, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: a taint is key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "{s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(serde_json::json!({"key": key, "value": value, "effect": effect}))
}

pub async fn run(args: HollowArgs) -> anyhow::Result<()> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("{}: not a usable kubeconfig", args.kubeconfig.display()))?;
    let client = kube::Client::try_from(config)?;
    let hollow = HollowConfig {
        count: args.count,
        prefix: args.prefix,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        zones: args.zones,
        labels: args.labels,
        taints: args.taints,
        ready_delay: Duration::from_millis(args.ready_delay_ms),
        lease_interval: Duration::from_secs(args.lease_interval.max(1)),
    };
    tracing::info!(count = hollow.count, "registering hollow nodes");
    skiff_hollow::run(client, hollow).await?;
    Ok(())
}
