//! Pod sandboxes: network, IPC and UTS namespaces held open by bind mounts (no pause process),
//! and the `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` every container of the pod mounts.

use std::fs;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::types::SandboxConfig;
use crate::Error;

/// The namespaces a sandbox holds, by their `/proc/<pid>/ns/` names.
pub const NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

/// Creates the sandbox in `dir` (which exists): new namespaces, made in a thread of their own so
/// that the caller's are untouched, and the pod's files.
pub fn create(dir: &Path, config: &SandboxConfig) -> Result<(), Error> {
    let etc = dir.join("etc");
    let ns = dir.join("ns");
    for d in [&etc, &ns] {
        fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
    }
    for (file, contents) in [
        ("hosts", config.hosts.as_str()),
        ("resolv.conf", config.resolv_conf.as_str()),
        ("hostname", &format!("{}\n", config.hostname)),
    ] {
        let path = etc.join(file);
        fs::write(&path, contents).map_err(|e| Error::io("write", &path, e))?;
    }
    let hostname = config.hostname.clone();
    let ns_dir = ns.clone();
    let made = std::thread::spawn(move || -> Result<(), Error> {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| Error::io("unshare namespaces for", &ns_dir, e.into()))?;
        nix::unistd::sethostname(&hostname)
            .map_err(|e| Error::io("set hostname in", &ns_dir, e.into()))?;
        loopback_up().map_err(|e| Error::io("bring up lo in", &ns_dir, e))?;
        for name in NAMESPACES {
            let target = ns_dir.join(name);
            fs::File::create(&target).map_err(|e| Error::io("create", &target, e))?;
            let source = format!("/proc/thread-self/ns/{name}");
            mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::io("bind namespace to", &target, e.into()))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::Corrupt("the namespace thread panicked".into()))?;
    if made.is_err() {
        let _ = release(dir);
    }
    made
}

/// Unmounts the namespace files, which ends the namespaces once no process is in them.
pub fn release(dir: &Path) -> Result<(), Error> {
    for name in NAMESPACES {
        let target = dir.join("ns").join(name);
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::io("unmount", &target, e.into())),
        }
    }
    Ok(())
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket for ioctls, closed below; ifreq is plain data zeroed before use.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}
