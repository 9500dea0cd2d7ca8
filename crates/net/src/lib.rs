//! Skiff's node network: pods' interfaces on the node's bridge with host-local addresses and
//! routes to the other nodes' pods ([`link`], [`ipam`]), and Services in the kernel through
//! nftables ([`proxy`]: what Services and endpoints ask for; [`rules`]: the table as text, by
//! parts; [`nft`]: applied, a change in one transaction), cluster DNS ([`dns`], [`dnsserver`],
//! [`holder`]).

pub mod dns;
pub mod dnsserver;
pub mod holder;
pub mod ipam;
mod libnft;
pub mod link;
pub mod nft;
pub mod proxy;
pub mod rules;

use std::path::{Path, PathBuf};

use skiff_api::cidr::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Netlink(String),
    #[error("no free pod address is left in {0}")]
    Exhausted(Ipv4Cidr),
    #[error("nft: {0}")]
    Nft(String),
    /// The DNS socket holder could not be started or asked.
    #[error("DNS socket holder: {0}")]
    Holder(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn netlink(what: String, e: rtnetlink::Error) -> Error {
        Error::Netlink(format!("{what}: {e}"))
    }
}
