//! Skiff's benchmarks: each subcommand measures, writes its figures as JSON and prints a table.

mod apiserver;
mod binary;
mod controllers;
mod density;
mod failover;
mod footprint;
mod hottext;
mod network;
mod nodes;
mod podstartup;
mod report;
mod runtime;
mod store;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Skiff benchmarks: measure, write the figures to a file, print a table")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The store: the embedded redb backend against a Debian etcd on loopback, same workloads.
    Store {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Smaller workloads, for a quick look (the figures are not the ones to report).
        #[arg(long)]
        quick: bool,
    },
    /// The API server: a release `skiff server` over TLS and HTTP/2 against issue 3's targets.
    Apiserver {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Smaller workloads, for a quick look (the figures are not the ones to report).
        #[arg(long)]
        quick: bool,
    },
    /// The controllers: large Deployments rolled out on a fake node, times and memory.
    Controllers {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Smaller workloads, for a quick look (the figures are not the ones to report).
        #[arg(long)]
        quick: bool,
    },
    /// The container runtime: start latency (libcontainer vs runc), monitor memory, image import.
    Runtime {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Smaller workloads, for a quick look (the figures are not the ones to report).
        #[arg(long)]
        quick: bool,
    },
    /// The scalability envelope: hollow nodes, pods through Deployments, the scheduler's rate.
    Density {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        #[arg(long, default_value_t = 150_000)]
        pods: usize,
    },
    /// Pod start-up on a real node: creation to Ready, and the agent's memory idle and busy.
    PodStartup {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods created per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// What a new user meets: `skiff up` to API ready, the article's example Ready after
    /// apply, the memory of every Skiff process with it running.
    Footprint {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Fresh clusters brought up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Node failure (agent frozen, link cut) on a test LAN: node seen unreachable, endpoint
    /// removed, pod replaced elsewhere, requests failed through the Service.
    Failover {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Runs of each kind of failure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Pod network and Services: proxy rules at 10,000 Services, pod set-up, DNS rate, endpoint
    /// change to rule live.
    Network {
        /// Where to write the figures (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Smaller workloads, for a quick look (the figures are not the ones to report).
        #[arg(long)]
        quick: bool,
    },
    /// Not a benchmark: profiles an idle node agent under callgrind and writes the linker script
    /// that packs the code it runs (`crates/skiff/hot-text.ld`); rerun when the agent changes.
    HotText {
        /// Where to write the script.
        #[arg(long, default_value = "crates/skiff/hot-text.ld")]
        out: PathBuf,
        /// Seconds the agent stays idle under the profiler once ready.
        #[arg(long, default_value_t = 45)]
        seconds: u64,
    },
    /// Loads objects into a fresh redb store and prints this process's memory (used by `store`).
    #[command(hide = true)]
    StoreMemoryChild {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        count: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Store { out, quick } => {
            let report = runtime.block_on(store::run(store::Sizes::new(quick)))?;
            report.write(&out)?;
        }
        Command::Apiserver { out, quick } => {
            let report = runtime.block_on(apiserver::run(apiserver::Sizes::new(quick)))?;
            report.write(&out)?;
        }
        Command::Controllers { out, quick } => {
            let report = runtime.block_on(controllers::run(controllers::Sizes::new(quick)))?;
            report.write(&out)?;
        }
        Command::Runtime { out, quick } => {
            runtime::run(runtime::Sizes::new(quick))?.write(&out)?;
        }
        Command::Density { out, nodes, pods } => {
            let report = runtime.block_on(density::run(density::Sizes { nodes, pods }))?;
            report.write(&out)?;
        }
        Command::PodStartup { out, pods, rate } => {
            let sizes = podstartup::Sizes {
                pods,
                per_second: rate,
            };
            runtime.block_on(podstartup::run(sizes))?.write(&out)?;
        }
        Command::Footprint { out, runs } => {
            runtime.block_on(footprint::run(runs))?.write(&out)?;
        }
        Command::Failover { out, runs } => {
            runtime.block_on(failover::run(runs))?.write(&out)?;
        }
        Command::Network { out, quick } => {
            runtime
                .block_on(network::run(network::Sizes::new(quick)))?
                .write(&out)?;
        }
        Command::HotText { out, seconds } => {
            runtime.block_on(hottext::run(&out, seconds))?;
        }
        Command::StoreMemoryChild { path, count } => {
            runtime.block_on(store::memory_child(&path, count))?;
        }
    }
    Ok(())
}
