//! `skiff token create`: a join token for agents: a bootstrap token Secret in `kube-system`,
//! printed with the hash of the cluster CA.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_agent::join::JoinToken;

use crate::server::parse_duration;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The server's data directory (its CA and admin kubeconfig).
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// How long the token may be used to join, like 24h; 0s for ever.
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "SKIFF_TOKEN_TTL")]
    ttl: Duration,
}

/// `len` characters of [a-z0-9] from the system's random source.
fn random(len: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut bytes).context("reading /dev/urandom")?;
    // 252 = 7 * 36: bytes above it would skew the choice, so they are drawn again.
    let mut out = String::new();
    for b in bytes {
        let mut b = b;
        while b >= 252 {
            let mut one = [0u8];
            std::io::Read::read_exact(&mut urandom, &mut one)?;
            b = one[0];
        }
        out.push(ALPHABET[usize::from(b) % 36] as char);
    }
    Ok(out)
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = command;
    let ca_path = args.data_dir.join("pki/ca.crt");
    let ca = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "reading the cluster CA {} (is --data-dir the server's?)",
            ca_path.display()
        )
    })?;
    let kubeconfig_path = args.data_dir.join("admin.kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)
        .with_context(|| format!("reading {}", kubeconfig_path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("{}", kubeconfig_path.display()))?;
    let client = kube::Client::try_from(config)?;
    let (id, secret) = (random(6)?, random(16)?);
    let mut data = serde_json::json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "description": "made by skiff token create",
    });
    if !args.ttl.is_zero() {
        let expires = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(args.ttl)?)?
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        data["expiration"] = expires.into();
    }
    let object: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": data,
    }))?;
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &object)
        .await
        .context("creating the bootstrap token Secret (is the server running?)")?;
    println!("{}", JoinToken::new(&ca, &format!("{id}.{secret}")));
    Ok(())
}
