//! DNS sockets that outlive the agent. The node's DNS server answers on a UDP socket and a TCP
//! listener that a small detached process (`skiff net-hold DIR`, see [`hold`]) holds as well:
//! while the agent restarts, pods' queries wait in the sockets' buffers instead of being
//! refused, and the next agent takes the same sockets back from the holder.

use std::ffi::OsString;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::Error;

const SOCKET: &str = "dns-holder.sock";
const PID: &str = "dns-holder.pid";
const LOCK: &str = "dns-holder.lock";
/// Where the held sockets are in the holder.
const UDP_FD: RawFd = 3;
const TCP_FD: RawFd = 4;

/// The DNS sockets bound to `addr`: the holder's in `dir` if one runs with sockets bound
/// there; otherwise bound now and handed to a new holder, run as `holder DIR` (the command of
/// `skiff net-hold`).
pub fn dns_sockets(
    dir: &Path,
    addr: SocketAddr,
    holder: &[OsString],
) -> Result<(UdpSocket, TcpListener), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    if let Some((udp, tcp)) = take(dir) {
        if udp.local_addr().ok() == Some(addr) && tcp.local_addr().ok() == Some(addr) {
            tracing::info!(%addr, "DNS sockets taken back from their holder");
            return Ok((udp, tcp));
        }
        // The node's address changed: the old holder's sockets are of no use.
        stop(dir);
    }
    let where_ = Path::new("dns");
    let udp = UdpSocket::bind(addr)
        .map_err(|e| Error::io("bind DNS (udp) on", &where_.join(addr.to_string()), e))?;
    let tcp = TcpListener::bind(addr)
        .map_err(|e| Error::io("bind DNS (tcp) on", &where_.join(addr.to_string()), e))?;
    let (program, args) = holder
        .split_first()
        .ok_or_else(|| Error::Holder("no command given to start it".into()))?;
    let (u, t) = (udp.as_raw_fd(), tcp.as_raw_fd());
    let mut command = std::process::Command::new(program);
    command.args(args).arg(dir);
    // SAFETY: only async-signal-safe calls between fork and exec: dup2 (which leaves the
    // copies open across exec).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(u, UDP_FD) < 0 || libc::dup2(t, TCP_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The holder forks itself away; this waits for its first process only.
    let status = command
        .status()
        .map_err(|e| Error::io("start the DNS socket holder", Path::new(program), e))?;
    if !status.success() {
        tracing::warn!(%status, "the DNS socket holder did not start; DNS stops while the agent restarts");
    }
    Ok((udp, tcp))
}

/// The sockets of the holder in `dir`, if one answers.
fn take(dir: &Path) -> Option<(UdpSocket, TcpListener)> {
    let conn = UnixStream::connect(dir.join(SOCKET)).ok()?;
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let fds: Vec<RawFd> = msg
        .cmsgs()
        .ok()?
        .filter_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    // SAFETY: the descriptors were just received and belong to nobody else in this process.
    let owned: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    let mut owned = owned.into_iter();
    let (udp, tcp) = (owned.next()?, owned.next()?);
    Some((UdpSocket::from(udp), TcpListener::from(tcp)))
}

/// Stops the holder of `dir`, if one runs (`skiff reset`, `skiff down`, a changed address).
pub fn stop(dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join(PID)) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    // Only our holder: the pid file may be stale and the number reused.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("net-hold") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = std::fs::remove_file(dir.join(PID));
    let _ = std::fs::remove_file(dir.join(SOCKET));
}

/// The holder's main: never returns. Detaches, holds descriptors 3 (UDP) and 4 (TCP), and
/// gives copies to whoever connects to `DIR/dns-holder.sock`. One per directory (an flock).
/// Must run before any thread starts.
pub fn hold(dir: &Path) -> ! {
    // SAFETY: single-threaded (dispatched before any thread starts).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => std::process::exit(1),
    }
    let _ = nix::unistd::setsid();
    let Ok(lock) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
    else {
        std::process::exit(1)
    };
    let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        std::process::exit(0)
    };
    let socket = dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let Ok(listener) = UnixListener::bind(&socket) else {
        std::process::exit(1)
    };
    let _ = std::fs::write(dir.join(PID), std::process::id().to_string());
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let fds = [UDP_FD, TCP_FD];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let _ = sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(b"s")],
            &cmsg,
            MsgFlags::empty(),
            None,
        );
    }
    std::process::exit(0)
}
