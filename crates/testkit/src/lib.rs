//! Real peers for Skiff's tests and benchmarks, started on loopback and stopped by their PID,
//! hosts as network namespaces on a LAN of their own ([`hosts`]) for multi-node tests, and
//! hollow nodes that report their pods running through the API.

mod etcd;
mod hollow;
pub mod hosts;
pub mod images;
mod registry;
mod skiff;

pub use etcd::EtcdServer;
pub use hollow::{HollowConfig, HollowNodes};
pub use registry::Registry;
pub use skiff::{reset_node, SkiffAgent, SkiffServer};

use std::net::TcpListener;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// Resident and proportional set size of a process, in bytes, from `/proc/PID/smaps_rollup`.
pub fn memory_of(pid: u32) -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    Ok((field("Rss:"), field("Pss:")))
}

/// The processes whose command line names `dir` (a node's data directory: its `skiff up` or
/// `agent`, monitors, DNS socket holder), those whose first argument is `role` when given
/// (`monitor`): their count and summed RSS and PSS in bytes (shared pages counted in each RSS).
pub fn memory_under(dir: &std::path::Path, role: Option<&str>) -> (usize, u64, u64) {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = (0, 0, 0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let in_role = role.is_none_or(|r| args.get(1).is_some_and(|a| a == r));
        if in_role && args.iter().any(|a| a.contains(&needle)) {
            if let Ok((rss, pss)) = memory_of(pid) {
                found.0 += 1;
                found.1 += rss;
                found.2 += pss;
            }
        }
    }
    found
}

/// CPU time a process has used (user + system), in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds_of(pid: u32) -> std::io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks_per_second = 100.0; // USER_HZ on Linux
    Ok((ticks(11) + ticks(12)) / ticks_per_second)
}
