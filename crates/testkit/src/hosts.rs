//! Several hosts on one machine for multi-node tests: each host a network namespace with an
//! `eth0` on a LAN, the LAN a bridge in a namespace of its own (so the machine's firewall never
//! sees the hosts' traffic), and this machine's namespace on the LAN too, where the test and
//! the API server run. Everything is removed when dropped, whatever the test did.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// One host: its namespace and its address on the LAN.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// Where `nsenter --net=` finds the namespace.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// `program` to be run in the host's namespace (only the network namespace is entered, so
    /// the machine's files and cgroups stay visible).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns_path().display()))
            .arg(program);
        command
    }

    /// Runs `args` in the host's namespace; its output, or why it failed.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let (program, rest) = args.split_first().ok_or("nothing to run")?;
        let out = self
            .command(program)
            .args(rest)
            .output()
            .map_err(|e| format!("nsenter (util-linux) is needed: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The LAN and its hosts.
pub struct Hosts {
    lan: String,
    /// This machine's end on the LAN.
    link: String,
    /// This machine's address on the LAN (the API server listens there).
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` (iproute2) is needed for multi-node tests: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// Makes `count` hosts on the LAN `10.213.<subnet>.0/24` (this machine .1, hosts .11 on),
    /// named after `tag` (short: interface names have 15 characters).
    pub fn create(tag: &str, subnet: u8, count: usize) -> Result<Hosts, String> {
        let mut hosts = Hosts {
            lan: format!("sklan-{tag}"),
            link: format!("skl{tag}"),
            gateway: Ipv4Addr::new(10, 213, subnet, 1),
            hosts: Vec::new(),
        };
        hosts.build(tag, subnet, count)?;
        Ok(hosts)
    }

    fn build(&mut self, tag: &str, subnet: u8, count: usize) -> Result<(), String> {
        let lan = self.lan.clone();
        ip(&["netns", "add", &lan])?;
        let in_lan = |args: &[&str]| {
            let mut all = vec!["-n", lan.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_lan(&["link", "add", "br0", "type", "bridge"])?;
        in_lan(&["link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", &self.link, "type", "veth", "peer", "name", "machine", "netns", &lan,
        ])?;
        in_lan(&["link", "set", "machine", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &self.link,
        ])?;
        ip(&["link", "set", &self.link, "up"])?;
        for i in 0..count {
            let netns = format!("skh-{tag}-{i}");
            let host_ip = Ipv4Addr::new(10, 213, subnet, 11 + i as u8);
            ip(&["netns", "add", &netns])?;
            self.hosts.push(Host {
                netns: netns.clone(),
                ip: host_ip,
            });
            let port = format!("h{i}");
            in_lan(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            in_lan(&["link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// `https://<this machine's LAN address>:<port>`.
    pub fn url(&self, port: u16) -> String {
        format!("https://{}:{port}", self.gateway)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.netns]);
        }
        // The LAN's namespace takes the bridge and every port with it; this machine's end goes
        // with its peer.
        let _ = ip(&["netns", "del", &self.lan]);
        let _ = ip(&["link", "del", &self.link]);
    }
}
