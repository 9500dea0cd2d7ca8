//! Real peers for Skiff's tests and benchmarks, started on loopback and stopped by their PID.

mod etcd;
mod skiff;

pub use etcd::EtcdServer;
pub use skiff::SkiffServer;

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
