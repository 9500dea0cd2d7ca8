//! IPv4 networks written as CIDRs (`10.42.0.0/16`): parsing, membership, addresses by offset,
//! and the choice of a free per-node pod CIDR from the cluster's range. Pure.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: its first address (host bits cleared) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network containing `addr` with `prefix` bits (0 to 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32).then(|| Ipv4Cidr {
            network: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the network holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The address `offset` from the network's first, if inside it.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(self.network + offset as u32))
    }

    /// Where `addr` is in the network, if it is in it.
    pub fn offset(&self, addr: Ipv4Addr) -> Option<u64> {
        self.contains(addr)
            .then(|| u64::from(u32::from(addr) - self.network))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == self.network
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// The `index`th subnet of `prefix` bits, if there is one.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 || index >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        Ipv4Cidr::new(Ipv4Addr::from(self.network + (index * step) as u32), prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl Ipv4Cidr {
    /// `ADDRESS/PREFIX`, host bits in the address cleared (as Kubernetes reads its servers'
    /// range flags).
    pub fn parse_any(s: &str) -> Result<Ipv4Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix must be 0 to 32"))?;
        Ok(Ipv4Cidr::new(addr, prefix).expect("the prefix was checked"))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// `ADDRESS/PREFIX`; host bits set in the address are an error, as Kubernetes' CIDR
    /// fields refuse them.
    fn from_str(s: &str) -> Result<Ipv4Cidr, String> {
        let cidr = Ipv4Cidr::parse_any(s)?;
        let given = s.split_once('/').map_or(s, |(a, _)| a);
        if cidr.network().to_string() != given {
            return Err(format!("{s:?} has host bits set (the network is {cidr})"));
        }
        Ok(cidr)
    }
}

/// The subnets of `node_prefix` bits of `cluster` that no CIDR of `taken` overlaps, in order
/// (`taken` may hold CIDRs outside the cluster's, which are ignored). Each candidate costs a
/// few lookups, not a scan of `taken`: thousands of nodes are given theirs in one pass.
pub fn free_node_cidrs<'a>(
    cluster: &Ipv4Cidr,
    node_prefix: u8,
    taken: &'a BTreeSet<Ipv4Cidr>,
) -> impl Iterator<Item = Ipv4Cidr> + 'a {
    let cluster = *cluster;
    let count = node_prefix
        .checked_sub(cluster.prefix)
        .map_or(0, |bits| 1u64 << bits.min(24));
    (0..count)
        .filter_map(move |i| cluster.subnet(node_prefix, i))
        .filter(move |c| !overlaps_any(c, taken))
}

/// Whether any CIDR of `taken` lies inside `c` or contains it.
fn overlaps_any(c: &Ipv4Cidr, taken: &BTreeSet<Ipv4Cidr>) -> bool {
    let last = c.network + (c.size() - 1) as u32;
    let first = Ipv4Cidr {
        network: c.network,
        prefix: 0,
    };
    let end = Ipv4Cidr {
        network: last,
        prefix: 32,
    };
    taken.range(first..=end).next().is_some()
        || (0..c.prefix).any(|p| {
            taken.contains(&Ipv4Cidr {
                network: c.network & mask(p),
                prefix: p,
            })
        })
}

/// The first subnet [`free_node_cidrs`] gives, or None when all are taken.
pub fn free_node_cidr(
    cluster: &Ipv4Cidr,
    node_prefix: u8,
    taken: &BTreeSet<Ipv4Cidr>,
) -> Option<Ipv4Cidr> {
    free_node_cidrs(cluster, node_prefix, taken).next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_parse;

    #[test]
    fn parses_cidrs() {
        check_parse(
            &[
                ("10.42.0.0/16", "10.42.0.0/16"),
                ("0.0.0.0/0", "0.0.0.0/0"),
                ("10.42.3.7/32", "10.42.3.7/32"),
                (
                    "10.42.0.1/16",
                    "error: host bits set (the network is 10.42.0.0/16)",
                ),
                ("10.42.0.0", "error: not ADDRESS/PREFIX"),
                ("10.42.0.0/33", "error: the prefix must be 0 to 32"),
                ("fd00::/8", "error: not an IPv4 address"),
            ],
            |s| s.parse::<Ipv4Cidr>(),
        );
    }

    #[test]
    fn addresses_and_subnets() {
        let c: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.size(), 65536);
        assert_eq!(c.nth(257), Some(Ipv4Addr::new(10, 42, 1, 1)));
        assert_eq!(c.nth(65536), None);
        assert_eq!(c.offset(Ipv4Addr::new(10, 42, 1, 1)), Some(257));
        assert_eq!(c.offset(Ipv4Addr::new(10, 43, 0, 0)), None);
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        assert!(c.covers(&"10.42.9.0/24".parse().unwrap()));
        assert!(!c.covers(&"10.0.0.0/8".parse().unwrap()));
    }

    #[test]
    fn node_cidrs_are_the_first_free() {
        let cluster: Ipv4Cidr = "10.42.0.0/22".parse().unwrap();
        let set =
            |v: &[&str]| -> BTreeSet<Ipv4Cidr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let free =
            |taken: &[&str]| free_node_cidr(&cluster, 24, &set(taken)).map(|c| c.to_string());
        assert_eq!(free(&[]).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(
            free(&["10.42.0.0/24", "10.42.2.0/24"]).as_deref(),
            Some("10.42.1.0/24")
        );
        // A wider CIDR some node was given by hand blocks the subnets inside it.
        assert_eq!(free(&["10.42.0.0/23"]).as_deref(), Some("10.42.2.0/24"));
        // And a narrower one the subnet around it.
        assert_eq!(
            free(&["10.42.0.0/24", "10.42.1.128/25"]).as_deref(),
            Some("10.42.2.0/24")
        );
        let all: Vec<String> = free_node_cidrs(&cluster, 24, &set(&["10.42.1.0/24"]))
            .map(|c| c.to_string())
            .collect();
        assert_eq!(all, ["10.42.0.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
        assert_eq!(free(&["192.168.0.0/24"]).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(
            free(&[
                "10.42.0.0/24",
                "10.42.1.0/24",
                "10.42.2.0/24",
                "10.42.3.0/24"
            ]),
            None
        );
        assert_eq!(free_node_cidr(&cluster, 20, &set(&[])), None);
    }
}
