//! The node's pod network through netlink: a bridge holding the pod CIDR's gateway, a veth pair
//! per pod (the pod's end is its `eth0`, with an address from [`Ipam`]), and routes to the other
//! nodes' pod CIDRs through their addresses (host-gw: no tunnel, no NAT between pods).
//! Everything host-wide is named after the node, so nodes sharing a machine never meet.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use skiff_api::cidr::Ipv4Cidr;

use crate::ipam::{self, Ipam};
use crate::Error;

/// Marks the routes to other nodes this agent owns (the kernel keeps the number opaquely).
const ROUTE_PROTOCOL: u8 = 0x5c;

/// What the node's network is made of.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    /// The node's share of the cluster CIDR (its `spec.podCIDR`).
    pub pod_cidr: Ipv4Cidr,
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    /// The node's address toward the other nodes: the interface holding it forwards to pods.
    pub node_ip: Option<Ipv4Addr>,
    /// Pods get routes to the cluster's pods and Services only, no default route.
    pub isolated: bool,
    /// Where the address files live.
    pub state_dir: PathBuf,
}

/// A 64-bit FNV-1a hash: short, stable interface names from long node names and uids.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ u64::from(b'/')).wrapping_mul(0x100_0000_01b3);
        }
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The node's bridge (15 characters at most, as interface names must be).
pub fn bridge_name(node: &str) -> String {
    format!("skiff{:08x}", fnv(&[node]) as u32)
}

/// The host end of a pod's veth pair.
pub fn veth_name(node: &str, pod_uid: &str) -> String {
    format!("skv{:012x}", fnv(&[node, pod_uid]) & 0xffff_ffff_ffff)
}

/// The node's pod network, set up.
pub struct PodNetwork {
    config: Config,
    ipam: Ipam,
    handle: Handle,
    bridge: u32,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl PodNetwork {
    /// Makes (or finds) the bridge with the gateway address, lets it forward, and routes the
    /// Service CIDR onto it so that the node's own connections to Services have a route.
    pub async fn start(config: Config) -> Result<PodNetwork, Error> {
        let ipam = Ipam::open(&config.state_dir, config.pod_cidr)?;
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::io("open netlink", Path::new("-"), e))?;
        let connection = tokio::spawn(connection);
        let name = bridge_name(&config.node);
        let bridge = match link_index(&handle, &name).await? {
            Some(index) => index,
            None => {
                ignore_exists(
                    handle
                        .link()
                        .add(LinkBridge::new(&name).build())
                        .execute()
                        .await,
                )
                .map_err(|e| Error::netlink(format!("create bridge {name}"), e))?;
                link_index(&handle, &name)
                    .await?
                    .ok_or_else(|| Error::Netlink(format!("bridge {name} vanished")))?
            }
        };
        let gateway = ipam::gateway(&config.pod_cidr);
        ignore_exists(
            handle
                .address()
                .add(bridge, IpAddr::V4(gateway), config.pod_cidr.prefix())
                .execute()
                .await,
        )
        .map_err(|e| Error::netlink(format!("address {gateway} on {name}"), e))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(bridge).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("bring up {name}"), e))?;
        forwarding(&name)?;
        if let Some(ip) = config.node_ip.filter(|ip| !ip.is_loopback()) {
            if let Some(nic) = interface_of(&handle, ip).await? {
                forwarding(&nic)?;
            }
        }
        let service = config.service_cidr;
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(service.network(), service.prefix())
                    .output_interface(bridge)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("route {service} to {name}"), e))?;
        tracing::info!(bridge = %name, pod_cidr = %config.pod_cidr, %gateway, "pod network ready");
        Ok(PodNetwork {
            config,
            ipam,
            handle,
            bridge,
            connection,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pod's address, reserved now if it has none: known before its sandbox exists, so
    /// that the pod's `/etc/hosts` can name it.
    pub fn address(&self, pod_uid: &str) -> Result<Ipv4Addr, Error> {
        self.ipam.allocate(pod_uid)
    }

    /// Gives the pod in `netns` its `eth0` on the bridge; a pod already attached is left as
    /// it is.
    pub async fn attach(&self, pod_uid: &str, netns: &Path) -> Result<Ipv4Addr, Error> {
        let addr = self.address(pod_uid)?;
        let host = veth_name(&self.config.node, pod_uid);
        if link_index(&self.handle, &host).await?.is_some() {
            return Ok(addr);
        }
        let ns = fs::File::open(netns).map_err(|e| Error::io("open", netns, e))?;
        let peer = LinkUnspec::new_with_name("eth0")
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns))
            .build();
        let veth = LinkVeth::new(&host, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(self.bridge)
            .up()
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("create veth {host} for pod {pod_uid}"), e))?;
        let mut routes = vec![self.config.cluster_cidr, self.config.service_cidr];
        if !self.config.isolated {
            routes.push(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("the default route"));
        }
        let inside = PodSide {
            addr,
            prefix: self.config.pod_cidr.prefix(),
            gateway: ipam::gateway(&self.config.pod_cidr),
            routes,
        };
        if let Err(e) = inside.configure(netns).await {
            let _ = self.remove_veth(&host).await;
            return Err(e);
        }
        Ok(addr)
    }

    /// Removes the pod's veth pair and frees its address; a pod without them is no error.
    pub async fn detach(&self, pod_uid: &str) -> Result<(), Error> {
        self.remove_veth(&veth_name(&self.config.node, pod_uid))
            .await?;
        self.ipam.release(pod_uid)
    }

    async fn remove_veth(&self, name: &str) -> Result<(), Error> {
        if let Some(index) = link_index(&self.handle, name).await? {
            match self.handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                Err(e) => return Err(Error::netlink(format!("delete {name}"), e)),
            }
        }
        Ok(())
    }

    /// Detaches every pod holding an address whose uid is not in `live`.
    pub async fn retain(&self, live: &HashSet<String>) -> Result<(), Error> {
        for owner in self.ipam.owners()?.into_values() {
            if !live.contains(&owner) {
                tracing::info!(pod_uid = %owner, "releasing the network of a pod that is gone");
                self.detach(&owner).await?;
            }
        }
        Ok(())
    }

    /// Makes the routes to other nodes' pod CIDRs exactly `peers` (CIDR → node address).
    pub async fn set_routes(&self, peers: &BTreeMap<Ipv4Cidr, Ipv4Addr>) -> Result<(), Error> {
        let mut current: BTreeMap<Ipv4Cidr, (Option<Ipv4Addr>, RouteMessage)> = BTreeMap::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(|e| Error::netlink("list routes".into(), e))?
        {
            if route.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            let (dst, gw) = route_ends(&route);
            let Some(dst) =
                dst.and_then(|d| Ipv4Cidr::new(d, route.header.destination_prefix_length))
            else {
                continue;
            };
            if self.config.cluster_cidr.covers(&dst) {
                current.insert(dst, (gw, route));
            }
        }
        for (cidr, (gw, route)) in &current {
            if peers.get(cidr) != gw.as_ref() {
                self.handle
                    .route()
                    .del(route.clone())
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(format!("delete route {cidr}"), e))?;
            }
        }
        for (cidr, via) in peers {
            // Nodes sharing this machine's namespace (tests, `skiff up` beside an agent) reach
            // each other's bridges directly.
            let local = via.is_loopback() || Some(*via) == self.config.node_ip;
            if local
                || *cidr == self.config.pod_cidr
                || current
                    .get(cidr)
                    .is_some_and(|(gw, _)| gw.as_ref() == Some(via))
            {
                continue;
            }
            self.handle
                .route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(cidr.network(), cidr.prefix())
                        .gateway(*via)
                        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("route {cidr} via {via}"), e))?;
            tracing::info!(%cidr, %via, "route to a node's pods");
        }
        Ok(())
    }
}

/// Removes the node's bridge (what `skiff reset` leaves behind otherwise); pods' veths go with
/// their namespaces. A missing bridge is no error.
pub async fn remove_bridge(node: &str) -> Result<(), Error> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("open netlink", Path::new("-"), e))?;
    let connection = tokio::spawn(connection);
    let name = bridge_name(node);
    let removed = match link_index(&handle, &name).await? {
        Some(index) => match handle.link().del(index).execute().await {
            Err(e) if errno(&e) != Some(libc::ENODEV) => {
                Err(Error::netlink(format!("delete {name}"), e))
            }
            _ => Ok(()),
        },
        None => Ok(()),
    };
    connection.abort();
    removed
}

/// What the pod's end of its veth gets, set from inside the pod's network namespace.
struct PodSide {
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    routes: Vec<Ipv4Cidr>,
}

impl PodSide {
    async fn configure(self, netns: &Path) -> Result<(), Error> {
        let (connection, handle) = connect_in(netns)?;
        let connection = tokio::spawn(connection);
        let done = self.apply(&handle).await;
        connection.abort();
        done
    }

    async fn apply(&self, handle: &Handle) -> Result<(), Error> {
        let eth0 = link_index(handle, "eth0")
            .await?
            .ok_or_else(|| Error::Netlink("eth0 is missing in the pod".into()))?;
        ignore_exists(
            handle
                .address()
                .add(eth0, IpAddr::V4(self.addr), self.prefix)
                .execute()
                .await,
        )
        .map_err(|e| Error::netlink(format!("address {} on the pod's eth0", self.addr), e))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink("bring up the pod's eth0".into(), e))?;
        for cidr in &self.routes {
            handle
                .route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(cidr.network(), cidr.prefix())
                        .gateway(self.gateway)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("route {cidr} in the pod"), e))?;
        }
        Ok(())
    }
}

type Connection = rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>;

/// A netlink connection whose socket lives in the network namespace at `netns`: made by a
/// thread that entered it (a socket stays in the namespace it was created in) and never runs
/// anything else.
fn connect_in(netns: &Path) -> Result<(Connection, Handle), Error> {
    let ns = fs::File::open(netns).map_err(|e| Error::io("open", netns, e))?;
    let runtime = tokio::runtime::Handle::current();
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("enter", &path, e.into()))?;
        let _entered = runtime.enter();
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("open netlink in", &path, e))?;
        Ok((connection, handle))
    })
    .join()
    .map_err(|_| Error::Netlink("the namespace thread panicked".into()))?
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink(format!("look up {name}"), e)),
    }
}

/// The interface holding `ip`, by name.
async fn interface_of(handle: &Handle, ip: Ipv4Addr) -> Result<Option<String>, Error> {
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| Error::netlink("list addresses".into(), e))?
    {
        let holds = msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip));
        if holds {
            let mut links = handle.link().get().match_index(msg.header.index).execute();
            if let Ok(Some(link)) = links.try_next().await {
                return Ok(link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }));
            }
        }
    }
    Ok(None)
}

fn route_ends(route: &RouteMessage) -> (Option<Ipv4Addr>, Option<Ipv4Addr>) {
    let (mut dst, mut gw) = (None, None);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
            _ => {}
        }
    }
    (dst, gw)
}

/// Lets `interface` forward IPv4 (the decision is the receiving interface's: the machine's
/// other interfaces stay as they are).
fn forwarding(interface: &str) -> Result<(), Error> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"));
    fs::write(&path, "1").map_err(|e| Error::io("write", &path, e))
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn ignore_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ_by_node() {
        let b = bridge_name("a-very-long-node-name.example.com");
        assert!(b.len() <= 15, "{b}");
        assert_ne!(bridge_name("n1"), bridge_name("n2"));
        let v = veth_name("n1", "6f1b0c2e-1111-2222-3333-444455556666");
        assert!(v.len() <= 15 && v.starts_with("skv"), "{v}");
        assert_ne!(v, veth_name("n2", "6f1b0c2e-1111-2222-3333-444455556666"));
    }
}
