//! A throw-away `skiff server` on loopback, with its own data directory and admin kubeconfig,
//! and `skiff agent`s joining it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::free_port;

/// A `skiff server` process; killed (by its PID) and reaped when dropped, its data directory
/// removed.
pub struct SkiffServer {
    child: Child,
    host: std::net::IpAddr,
    port: u16,
    dir: tempfile::TempDir,
    /// The binary and its arguments after the data directory and address, for a resume.
    bin: PathBuf,
    extra: Vec<String>,
}

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl SkiffServer {
    /// Starts the `skiff` binary at `bin` as `skiff server` plus `extra` arguments, and waits
    /// until it says it is ready.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<SkiffServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        Self::start_in(bin, dir, extra)
    }

    /// Like [`SkiffServer::start`], listening on `host` (a test LAN's address) instead of
    /// loopback.
    pub fn start_on(
        bin: &Path,
        host: std::net::IpAddr,
        extra: &[&str],
    ) -> Result<SkiffServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        Self::start_at(bin, dir, host, extra)
    }

    /// `skiff up` (server and node agent) on `dir`, with `extra` arguments.
    pub fn up_in(
        bin: &Path,
        dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Result<SkiffServer, String> {
        let mut args = vec!["up"];
        args.extend_from_slice(extra);
        Self::start_in(bin, dir, &args)
    }

    /// Like [`SkiffServer::start`], on an existing data directory (a restart). A port taken
    /// between choosing and binding (tests run in parallel) costs a retry on another.
    /// `extra` may start with another subcommand than `server` (`up`).
    pub fn start_in(
        bin: &Path,
        dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Result<SkiffServer, String> {
        Self::start_at(bin, dir, LOOPBACK, extra)
    }

    fn start_at(
        bin: &Path,
        dir: tempfile::TempDir,
        host: std::net::IpAddr,
        extra: &[&str],
    ) -> Result<SkiffServer, String> {
        let mut dir = dir;
        for _ in 0..2 {
            match Self::start_once(bin, dir, host, extra) {
                Ok(server) => return Ok(server),
                Err((returned, log)) if log.contains("Address already in use") => dir = returned,
                Err((_, log)) => return Err(log),
            }
        }
        Self::start_once(bin, dir, host, extra).map_err(|(_, log)| log)
    }

    fn start_once(
        bin: &Path,
        dir: tempfile::TempDir,
        host: std::net::IpAddr,
        extra: &[&str],
    ) -> Result<SkiffServer, (tempfile::TempDir, String)> {
        let port = free_port();
        let (child, ready) = match spawn(bin, dir.path(), host, port, extra) {
            Ok(started) => started,
            Err(e) => return Err((dir, e)),
        };
        let mut server = SkiffServer {
            child,
            host,
            port,
            dir,
            bin: bin.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        if let Err(log) = server.wait_ready(ready) {
            return Err((server.stop(), log));
        }
        Ok(server)
    }

    fn wait_ready(&mut self, ready: mpsc::Receiver<()>) -> Result<(), String> {
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = self.child.try_wait().ok().flatten();
            return Err(format!(
                "skiff server did not become ready (exit: {status:?}); its log:\n{}",
                self.log()
            ));
        }
        Ok(())
    }

    /// Kills the process (SIGKILL) and leaves the server down, its data kept for
    /// [`SkiffServer::resume`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its data directory, address and port, with the same
    /// arguments, and waits until it is ready.
    pub fn resume(&mut self) -> Result<(), String> {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, ready) = spawn(&self.bin, self.dir.path(), self.host, self.port, &extra)?;
        self.child = child;
        self.wait_ready(ready)
    }

    /// `https://HOST:PORT`.
    pub fn url(&self) -> String {
        format!(
            "https://{}",
            std::net::SocketAddr::new(self.host, self.port)
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A `kube` client of the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, String> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())
            .map_err(|e| format!("the admin kubeconfig: {e}"))?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| format!("the admin kubeconfig: {e}"))?;
        kube::Client::try_from(config).map_err(|e| format!("a client: {e}"))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) at once, leaving what it started, and hands back its data
    /// directory, for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for SkiffServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `skiff server` (or `up`, when `extra` starts with it) on `dir` listening on
/// `host:port`, its log appended to `server.log`; the receiver hears when it is ready.
fn spawn(
    bin: &Path,
    dir: &Path,
    host: std::net::IpAddr,
    port: u16,
    extra: &[&str],
) -> Result<(Child, mpsc::Receiver<()>), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| format!("server log: {e}"))?;
    let (command, extra) = match extra.first() {
        Some(&"up") => ("up", &extra[1..]),
        _ => ("server", extra),
    };
    let mut child = Command::new(bin)
        .arg(command)
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(std::net::SocketAddr::new(host, port).to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let ready = announced(&mut child, "kubeconfig:".into());
    Ok((child, ready))
}

/// Hears when the child's stdout (piped) has a line starting with `prefix`.
fn announced(child: &mut Child, prefix: String) -> mpsc::Receiver<()> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&prefix) {
                let _ = tx.send(());
            }
        }
    });
    rx
}

/// `skiff reset` of node `name` on `dir`, in `host`'s network namespace when it is on a test
/// LAN (its bridge and table are there); false (with a warning) when it failed.
pub fn reset_node(bin: &Path, name: &str, dir: &Path, host: Option<&crate::hosts::Host>) -> bool {
    let mut command = match host {
        Some(host) => host.command(bin),
        None => Command::new(bin),
    };
    let reset = command
        .args(["reset", "--node-name", name, "--data-dir"])
        .arg(dir)
        .status();
    let done = reset.is_ok_and(|s| s.success());
    if !done {
        eprintln!("warning: skiff reset of {} failed", dir.display());
    }
    done
}

/// A `skiff agent` process joined to a server; killed (by its PID) and reaped when dropped,
/// leaving its containers (the owner runs `skiff reset` on its data directory).
pub struct SkiffAgent {
    child: Child,
    pub node: String,
    log: PathBuf,
}

impl SkiffAgent {
    /// Starts `skiff agent --server SERVER --data-dir DIR --node-name NODE --node-ip 127.0.0.1
    /// --agent-port 0` plus `extra` (e.g. `--token T`), and waits until its node is ready.
    pub fn start(
        bin: &Path,
        server: &str,
        dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<SkiffAgent, String> {
        let mut command = Command::new(bin);
        command.args(["agent", "--node-ip", "127.0.0.1"]);
        Self::start_command(command, server, dir, node, extra)
    }

    /// Like [`SkiffAgent::start`], on `host` of a test LAN: the agent runs in the host's
    /// network namespace (`nsenter --net`, nothing else entered) and its node's address is
    /// the host's.
    pub fn start_on(
        bin: &Path,
        host: &crate::hosts::Host,
        server: &str,
        dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<SkiffAgent, String> {
        let mut command = host.command(bin);
        command.args(["agent", "--node-ip", &host.ip.to_string()]);
        Self::start_command(command, server, dir, node, extra)
    }

    /// Starts `command` (a `skiff agent` with its `--node-ip`, possibly run by a profiler)
    /// with the arguments [`SkiffAgent::start`] adds, and waits until its node is ready.
    pub fn start_command(
        mut command: Command,
        server: &str,
        dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<SkiffAgent, String> {
        let log = dir.join(format!("agent-{node}.log"));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log_file = std::fs::File::create(&log).map_err(|e| format!("agent log: {e}"))?;
        let mut child = command
            .args(["--server", server, "--node-name", node])
            .args(["--agent-port", "0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        let rx = announced(&mut child, format!("node {node} ready"));
        let agent = SkiffAgent {
            child,
            node: node.to_string(),
            log,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            return Err(format!(
                "skiff agent {node} did not become ready; its log:\n{}",
                agent.log()
            ));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SkiffAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
