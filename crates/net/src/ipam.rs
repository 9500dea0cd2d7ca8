//! Host-local address management: each pod's address in the node's pod CIDR is a file named
//! by the address and holding the pod's uid, created exclusively, so a restarted agent finds
//! every address it handed out and two pods never share one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use skiff_api::cidr::Ipv4Cidr;

use crate::Error;

/// The node's gateway on its pod bridge: the pod CIDR's first address.
pub fn gateway(subnet: &Ipv4Cidr) -> Ipv4Addr {
    subnet
        .nth(1)
        .expect("a pod CIDR holds at least four addresses")
}

/// The next free pod address after `last` (wrapping), skipping the network, the gateway and
/// the broadcast address. Pure.
pub fn next_free(
    subnet: &Ipv4Cidr,
    taken: &BTreeMap<Ipv4Addr, String>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, end) = (2u64, subnet.size().saturating_sub(1));
    let count = end.saturating_sub(first);
    let start = last
        .and_then(|l| subnet.offset(l))
        .filter(|o| (first..end).contains(o))
        .map_or(0, |o| o + 1 - first);
    (0..count)
        .filter_map(|i| subnet.nth(first + (start + i) % count))
        .find(|a| !taken.contains_key(a))
}

/// The addresses of one node's pod CIDR, kept in a directory.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Cidr,
    /// Held while choosing, so two pods of this agent do not race for one file.
    lock: Mutex<()>,
}

const LAST: &str = "last-reserved";
const SUBNET: &str = "subnet";

impl Ipam {
    /// Opens the store in `dir` for `subnet`. Entries of another subnet (the node was given a
    /// new pod CIDR) are dropped.
    pub fn open(dir: &Path, subnet: Ipv4Cidr) -> Result<Ipam, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let marker = dir.join(SUBNET);
        let recorded = fs::read_to_string(&marker).unwrap_or_default();
        if recorded.trim() != subnet.to_string() {
            for (addr, _) in read_entries(dir)? {
                let path = dir.join(addr.to_string());
                fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
            let _ = fs::remove_file(dir.join(LAST));
            write_atomic(&marker, &subnet.to_string())?;
        }
        Ok(Ipam {
            dir: dir.to_path_buf(),
            subnet,
            lock: Mutex::new(()),
        })
    }

    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    /// The address of `owner` (a pod uid): the one it has, or a new one.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, Error> {
        let _held = self.lock.lock().expect("ipam lock");
        let entries = read_entries(&self.dir)?;
        if let Some((addr, _)) = entries.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*addr);
        }
        let last = fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let addr = next_free(&self.subnet, &entries, last).ok_or(Error::Exhausted(self.subnet))?;
        let path = self.dir.join(addr.to_string());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("reserve", &path, e))?;
        file.write_all(owner.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write", &path, e))?;
        write_atomic(&self.dir.join(LAST), &addr.to_string())?;
        Ok(addr)
    }

    /// Frees `owner`'s address; an owner without one is no error.
    pub fn release(&self, owner: &str) -> Result<(), Error> {
        let _held = self.lock.lock().expect("ipam lock");
        for (addr, o) in read_entries(&self.dir)? {
            if o == owner {
                let path = self.dir.join(addr.to_string());
                fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        Ok(())
    }

    /// Every address handed out, with its owner.
    pub fn owners(&self) -> Result<BTreeMap<Ipv4Addr, String>, Error> {
        read_entries(&self.dir)
    }
}

fn read_entries(dir: &Path) -> Result<BTreeMap<Ipv4Addr, String>, Error> {
    let mut entries = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read", dir, e))?;
        let Some(addr) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        match fs::read_to_string(entry.path()) {
            Ok(owner) => {
                entries.insert(addr, owner.trim().to_string());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read", &entry.path(), e)),
        }
    }
    Ok(entries)
}

fn write_atomic(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(|e| Error::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn next_free_skips_reserved_and_taken_and_wraps() {
        let subnet = cidr("10.42.0.0/29"); // .2 to .6 are for pods
        let taken = |addrs: &[u8]| -> BTreeMap<Ipv4Addr, String> {
            addrs
                .iter()
                .map(|a| (Ipv4Addr::new(10, 42, 0, *a), "x".to_string()))
                .collect()
        };
        let at = |a| Some(Ipv4Addr::new(10, 42, 0, a));
        assert_eq!(next_free(&subnet, &taken(&[]), None), at(2));
        assert_eq!(next_free(&subnet, &taken(&[2, 3]), None), at(4));
        // After the last one handed out, so a freed address is not reused at once.
        assert_eq!(next_free(&subnet, &taken(&[]), at(4)), at(5));
        assert_eq!(next_free(&subnet, &taken(&[]), at(6)), at(2));
        assert_eq!(next_free(&subnet, &taken(&[2, 3, 4, 5]), at(6)), at(6));
        assert_eq!(next_free(&subnet, &taken(&[2, 3, 4, 5, 6]), None), None);
        assert_eq!(gateway(&subnet), Ipv4Addr::new(10, 42, 0, 1));
    }

    #[test]
    fn addresses_survive_reopening_and_a_new_subnet_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.42.0.0/24")).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(
            (a.to_string().as_str(), b.to_string().as_str()),
            ("10.42.0.2", "10.42.0.3")
        );
        assert_eq!(
            ipam.allocate("pod-a").unwrap(),
            a,
            "the same pod keeps its address"
        );
        ipam.release("pod-a").unwrap();
        ipam.release("pod-never").unwrap();

        let ipam = Ipam::open(dir.path(), cidr("10.42.0.0/24")).unwrap();
        assert_eq!(
            ipam.owners().unwrap().into_iter().collect::<Vec<_>>(),
            [(b, "pod-b".to_string())]
        );
        assert_eq!(ipam.allocate("pod-c").unwrap().to_string(), "10.42.0.4");

        let ipam = Ipam::open(dir.path(), cidr("10.42.7.0/24")).unwrap();
        assert!(ipam.owners().unwrap().is_empty());
        assert_eq!(ipam.allocate("pod-b").unwrap().to_string(), "10.42.7.2");
    }
}
