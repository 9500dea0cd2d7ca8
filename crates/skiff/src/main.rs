//! The `skiff` binary: parses the command line and hands each subcommand to its own module.

mod agent;
mod alloc;
mod config;
mod hollow;
mod image;
mod monitor;
mod pidfile;
mod progress;
mod runtime;
mod server;
mod store;
mod token;
mod trim;
mod up;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: the Kubernetes API in one binary",
    // A flag given again (on the command line after the config file) wins.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A YAML file of flags (`listen: 0.0.0.0:6443`, `node-label: [zone=a]`); flags on the
    /// command line win.
    #[arg(long, global = true, env = "SKIFF_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine: the API server and a node agent in one process.
    Up(up::UpArgs),
    /// Join a cluster as a node and run the pods it is given.
    Agent(agent::AgentArgs),
    /// Print the admin kubeconfig of a server's data directory.
    Kubeconfig(KubeconfigArgs),
    /// Make join tokens for agents.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Stop `skiff up` (or the agent) on a data directory and the node's containers, keeping the
    /// cluster's state and images: the next `skiff up` starts the pods again.
    Down(up::DownArgs),
    /// Remove a node's containers, mounts, cgroups and its data directory.
    Reset(up::ResetArgs),
    /// Run the API server.
    Server(server::ServerArgs),
    /// Look at a node's embedded store.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Import, list and remove the images of a node.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Register hollow nodes (pods reported running, nothing run) to try a cluster at scale.
    Hollow(hollow::HollowArgs),
    /// Run and list containers on a node's runtime directly (for debugging).
    #[command(hide = true)]
    Runtime(runtime::RuntimeArgs),
}

#[derive(clap::Args)]
struct KubeconfigArgs {
    /// The server's data directory.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    data_dir: std::path::PathBuf,
}

#[global_allocator]
static ALLOCATOR: alloc::Chosen = alloc::Chosen;

/// glibc gives threads that allocate arenas of their own (up to eight per core), each keeping
/// what was freed in it: an agent with a hundred pods held 8.6 MiB more so (pod-startup
/// benchmark: 35.4 MiB PSS against 26.7 with two arenas). Two are enough for two worker
/// threads.
fn few_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    few_malloc_arenas();
    // The container monitor must start before any thread exists (it forks), so it is looked
    // for before the command line parser, the logger and the async runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "server") {
        alloc::use_mimalloc();
    }
    if args.get(1).is_some_and(|a| a == "monitor") {
        return monitor::main(&args[2..]);
    }
    // So must the holder of the node's DNS sockets (`net-hold DIR`, started by the agent).
    if args.get(1).is_some_and(|a| a == "net-hold") {
        match args.get(2) {
            Some(dir) => skiff_net::holder::hold(std::path::Path::new(dir)),
            None => return std::process::ExitCode::FAILURE,
        }
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain on one line, without a backtrace: CLI errors are for people.
            eprintln!("skiff: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The DNS server's own logs say a line per query: kept for RUST_LOG to ask for.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Blocking threads (runtime and file calls) go after 2 s idle, not tokio's 10 s: a
        // burst of pod starts would otherwise leave dozens behind, kept alive by light work.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()?;
    let args = config::expand(std::env::args_os().collect(), |name| {
        let command = Cli::command();
        let sub = command.find_subcommand(name)?;
        Some(
            sub.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect(),
        )
    })?;
    match Cli::parse_from(args).command {
        Command::Up(args) => runtime.block_on(up::run(args)),
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::Token(cmd) => runtime.block_on(token::run(cmd)),
        Command::Kubeconfig(args) => {
            let path = args.data_dir.join("admin.kubeconfig");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "reading {}: {e} (is --data-dir the server's, and has it started once?)",
                    path.display()
                )
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Reset(args) => up::reset(args),
        Command::Down(args) => up::down(args),
        Command::Server(args) => runtime.block_on(server::run(args)),
        Command::Store(cmd) => runtime.block_on(store::run(cmd)),
        Command::Image(cmd) => runtime.block_on(image::run(cmd)),
        Command::Hollow(args) => runtime.block_on(hollow::run(args)),
        Command::Runtime(args) => runtime::run(args),
    }
}
