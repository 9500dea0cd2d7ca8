//! Applies the proxy's rules with `nft -f -`: the first time (and after a failure) the whole
//! table in one transaction, then only what changed, each change one transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::proxy::{self, Ruleset, Settings, StaleFlow};
use crate::Error;

/// The node's table and what it holds now.
pub struct Table {
    settings: Settings,
    /// What the kernel holds, as far as this process knows; None forces a full write.
    applied: Option<Ruleset>,
}

impl Table {
    pub fn new(settings: Settings) -> Table {
        Table {
            settings,
            applied: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Makes the table hold `rules`. A failed incremental change is retried as a full write.
    pub fn apply(&mut self, rules: Ruleset) -> Result<(), Error> {
        if let Some(applied) = &self.applied {
            let change = proxy::diff(&self.settings, applied, &rules);
            if change.is_empty() {
                return Ok(());
            }
            match run(&change) {
                Ok(()) => {
                    self.applied = Some(rules);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incremental nftables change failed; rewriting the table")
                }
            }
        }
        self.applied = None;
        run(&proxy::full(&self.settings, &rules))?;
        self.applied = Some(rules);
        Ok(())
    }
}

/// Removes the table named `table` (a missing one is no error).
pub fn remove(table: &str) -> Result<(), Error> {
    run(&format!("add table ip {table}\ndelete table ip {table}\n"))
}

/// Runs one transaction.
pub fn run(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Nft(format!(
                "cannot run nft ({e}): Services need the nftables package's `nft` command"
            ))
        })?;
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
            .map_err(|e| {
                Error::Nft(format!(
                    "cannot run conntrack ({e}): clearing UDP flows needs the conntrack package"
                ))
            })?;
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
