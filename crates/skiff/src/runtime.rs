//! `skiff runtime` (hidden): runs and lists containers on a node's runtime without an API
//! server, as `crictl` does for containerd; for people debugging a node and for the tests that
//! kill the process driving the runtime.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use skiff_runtime::{
    ContainerConfig, LocalConfig, LocalRuntime, OciRuntime, Runtime, SandboxConfig,
};

#[derive(Args)]
pub struct RuntimeArgs {
    /// The node's runtime directory.
    #[arg(long, default_value = "/var/lib/skiff/runtime")]
    root: PathBuf,
    /// The node's name (names its cgroup tree).
    #[arg(long, default_value = "local")]
    node: String,
    /// Use the runc binary at this path instead of the built-in libcontainer.
    #[arg(long)]
    runc: Option<PathBuf>,
    #[command(subcommand)]
    command: RuntimeCommand,
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Start a container in a pod sandbox (made if missing) and print its status as JSON.
    Run {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        image: String,
        /// Stay alive afterwards (until killed), as an agent would.
        #[arg(long)]
        hold: bool,
        /// The command; the image's when omitted.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print every container of the node as JSON.
    Ps,
    /// Remove everything the node made: containers, sandboxes, mounts, cgroups, the root.
    Reset,
}

pub fn run(args: RuntimeArgs) -> anyhow::Result<()> {
    let monitor = vec![
        std::env::current_exe()
            .context("find the skiff binary")?
            .into(),
        "monitor".into(),
    ];
    let mut config = LocalConfig::new(&args.root, &args.node, monitor);
    if let Some(runc) = args.runc {
        config.oci = OciRuntime::Runc(runc);
    }
    let runtime = LocalRuntime::open(config)?;
    match args.command {
        RuntimeCommand::Run {
            pod,
            name,
            image,
            hold,
            command,
        } => {
            runtime.run_sandbox(&SandboxConfig {
                uid: pod.clone(),
                namespace: "default".into(),
                name: pod.clone(),
                hostname: pod.clone(),
                hosts: format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{pod}\n"),
                resolv_conf: String::new(),
            })?;
            let status = runtime.start_container(
                &pod,
                &ContainerConfig {
                    command,
                    ..ContainerConfig::new(&name, &image)
                },
            )?;
            println!("{}", serde_json::to_string(&status)?);
            if hold {
                loop {
                    std::thread::park();
                }
            }
        }
        RuntimeCommand::Reset => runtime.reset()?,
        RuntimeCommand::Ps => {
            for status in runtime.containers(None)? {
                println!("{}", serde_json::to_string(&status)?);
            }
        }
    }
    Ok(())
}
