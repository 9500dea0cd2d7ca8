//! Applies the proxy's rules (through libnftables, or `nft -f -`): the first time (and after a failure) the whole
//! table, written beside the old one and switched in one step, then only what changed, each
//! change one transaction; and clears stale UDP flows with `conntrack`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::proxy::{Settings, StaleFlow};
use crate::rules::{self, Change, Ruleset};
use crate::Error;

/// The node's table: `<name>-a` or `<name>-b`, whichever was written whole last.
pub struct Table {
    settings: Settings,
    /// The table this process wrote and keeps changing; None forces a whole write.
    current: Option<String>,
    /// libnftables in this process, if the machine has it; otherwise `nft` runs each script.
    lib: Option<crate::libnft::Context>,
}

/// The two names a node's table takes in turn.
fn names(base: &str) -> [String; 2] {
    [format!("{base}-a"), format!("{base}-b")]
}

impl Table {
    /// The node's table, changed from the calling thread's network namespace.
    pub fn new(settings: Settings) -> Table {
        let lib = crate::libnft::Context::open();
        if lib.is_none() {
            tracing::info!("libnftables not found: the nft command applies each change");
        }
        Table {
            settings,
            current: None,
            lib,
        }
    }

    fn exec(&mut self, script: &str) -> Result<(), Error> {
        match &mut self.lib {
            Some(lib) => lib.run(script),
            None => run(script),
        }
    }

    /// Applies `change` (which brought the rules to `rules`); a change that fails, or a first
    /// write, writes `rules` whole.
    pub fn apply(&mut self, change: &Change, rules: &Ruleset) -> Result<(), Error> {
        if let Some(table) = &self.current {
            let script = rules::diff(table, change);
            if script.is_empty() {
                return Ok(());
            }
            match self.exec(&script) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "incremental nftables change failed; rewriting the table")
                }
            }
        }
        self.write_all(rules)
    }

    /// Writes `rules` whole into the name not in use, then removes the other (a restarted
    /// agent replaces its predecessor's table without a moment of no rules).
    pub fn write_all(&mut self, rules: &Ruleset) -> Result<(), Error> {
        let [a, b] = names(&self.settings.table);
        let in_use = match &self.current {
            Some(current) => current.clone(),
            None if list_tables()?.contains(&a) => a.clone(),
            None => b.clone(),
        };
        let (new, old) = if in_use == a { (b, a) } else { (a, b) };
        self.current = None;
        for transaction in rules::full(&self.settings, &new, &old, rules) {
            self.exec(&transaction)?;
        }
        self.current = Some(new);
        Ok(())
    }
}

/// The ip tables the kernel holds, by name.
fn list_tables() -> Result<Vec<String>, Error> {
    let out = Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .map_err(missing(
            "nft",
            "Services need the nftables package's `nft` command",
        ))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .map(|n| n.trim().to_string())
        .collect())
}

/// Removes the node's tables named after `base` (missing ones are no error).
pub fn remove(base: &str) -> Result<(), Error> {
    let mut script = String::new();
    for table in [base.to_string()].into_iter().chain(names(base)) {
        script.push_str(&format!("add table ip {table}\ndelete table ip {table}\n"));
    }
    run(&script)
}

/// The error of a command that could not be started, saying what needs it.
fn missing(tool: &'static str, need: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Nft(format!("cannot run {tool} ({e}): {need}"))
}

/// Runs one transaction.
pub fn run(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing(
            "nft",
            "Services need the nftables package's `nft` command",
        ))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    written.map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first: String = stderr.lines().take(6).collect::<Vec<_>>().join("\n");
        return Err(Error::Nft(format!(
            "{} ({} lines): {first}",
            out.status,
            script.lines().count()
        )));
    }
    Ok(())
}

/// Deletes the conntrack entries of UDP flows to removed endpoints (`conntrack -D`; finding
/// none is no error).
pub fn clear_flows(flows: &[StaleFlow]) -> Result<(), Error> {
    for flow in flows {
        let args: Vec<String> = match flow {
            StaleFlow::ClusterIp(ip, port, endpoint) => vec![
                "--orig-dst".into(),
                ip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ],
            StaleFlow::NodePort(port, endpoint) => vec![
                "--orig-port-dst".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ],
        };
        let status = Command::new("conntrack")
            .args(["-D", "-p", "udp"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(missing(
                "conntrack",
                "clearing UDP flows needs the conntrack package",
            ))?;
        // 1: no entry matched.
        if !matches!(status.code(), Some(0 | 1)) {
            return Err(Error::Nft(format!(
                "conntrack -D {}: {status}",
                args.join(" ")
            )));
        }
    }
    Ok(())
}
