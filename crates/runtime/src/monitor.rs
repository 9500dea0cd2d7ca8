//! The per-container monitor: detached and single-threaded, it starts one container, writes its
//! output to the CRI log and its fate to `state.json`, so that the agent can die and come back at
//! any time without losing a container or its exit.
//!
//! Monitors are forked from the node's zygote (`skiff` re-executed once per node): the runtime
//! sends the container's directory (holding `monitor.json` and the OCI bundle) to the zygote's
//! socket and reads one line back from the new monitor: `ok` once the container runs, or the
//! error.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::crilog::{Framer, RotatingFile, Stream};
use crate::files::write_atomic;
use crate::Error;

/// The OCI runtime a monitor drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OciRuntime {
    /// youki's libcontainer, in the monitor's own process.
    Libcontainer,
    /// The `runc` binary at this path.
    Runc(PathBuf),
}

/// What the runtime tells a monitor (`monitor.json` in the container's directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorConfig {
    /// The container's ID for the OCI runtime.
    pub id: String,
    /// The OCI runtime's state directory for this node.
    pub state_root: PathBuf,
    pub oci: OciRuntime,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// The image's unpacked layers, topmost first.
    pub lower_dirs: Vec<PathBuf>,
    /// The cgroup file whose `oom_kill` line counts the OOM killer's kills.
    pub oom_file: PathBuf,
}

/// What became of the container (`state.json`), written atomically by the monitor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorState {
    pub monitor_pid: i32,
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
}

impl MonitorState {
    pub fn exited(&self) -> bool {
        self.finished_at.is_some()
    }
}

pub const CONFIG_FILE: &str = "monitor.json";
pub const STATE_FILE: &str = "state.json";

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The per-node process monitors are forked from (`skiff monitor zygote ROOT`), listening on
/// `ROOT/monitor.sock` for container directories. Forked rather than executed, every monitor
/// shares its relocated tables and code with the zygote and its siblings instead of holding a
/// private copy: a monitor's proportional memory is then mostly its own small heap and stack.
pub const ZYGOTE_SOCKET: &str = "monitor.sock";
pub const ZYGOTE_PID: &str = "monitor.pid";

/// The zygote's main: never returns. One per runtime root (an flock on `monitor.lock`); a second
/// one leaves at once. `on_child` runs first in each forked monitor (to set up its logging).
pub fn zygote(root: &Path, on_child: fn(&Path)) -> ! {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    // SAFETY: single-threaded (dispatched before any thread starts).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(_) => std::process::exit(1),
    }
    let _ = setsid();
    let lock_path = root.join("monitor.lock");
    let Ok(lock) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    else {
        std::process::exit(1)
    };
    let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        // Another zygote serves this root.
        std::process::exit(0)
    };
    let socket = root.join(ZYGOTE_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let Ok(listener) = UnixListener::bind(&socket) else {
        std::process::exit(1)
    };
    let _ = std::fs::write(root.join(ZYGOTE_PID), std::process::id().to_string());
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    // Monitors are reaped by the kernel: the zygote never waits for them.
    // SAFETY: setting a signal disposition to ignore.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        let read = conn
            .try_clone()
            .map(|c| std::io::BufReader::new(c).read_line(&mut line));
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            continue;
        }
        let dir = PathBuf::from(line.trim_end());
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(listener);
                // A monitor waits for its container: it must not inherit the zygote's
                // auto-reaping. SAFETY: restoring the default disposition.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                let _ = setsid();
                let _ = nix::unistd::dup2(conn.as_raw_fd(), 1);
                drop(conn);
                on_child(&dir);
                run_detached(&dir)
            }
            Ok(ForkResult::Parent { .. }) => drop(conn),
            Err(e) => {
                let mut conn = conn;
                let _ = writeln!(conn, "error: fork a monitor: {e}");
            }
        }
    }
    std::process::exit(0)
}

/// A monitor's work, in a child of the zygote: start the container, then watch it.
fn run_detached(dir: &Path) -> ! {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let config: MonitorConfig = match crate::files::read_json(&dir.join(CONFIG_FILE)) {
        Ok(Some(c)) => c,
        Ok(None) => report_and_exit(&format!("{}: missing", dir.join(CONFIG_FILE).display())),
        Err(e) => report_and_exit(&e.to_string()),
    };
    let mut state = MonitorState {
        monitor_pid: std::process::id() as i32,
        ..Default::default()
    };
    match start(dir, &config) {
        Ok(started) => {
            state.pid = Some(started.pid.as_raw());
            state.started_at = Some(now());
            if let Err(e) = write_state(dir, &state) {
                tracing::error!(?dir, %e, "cannot record the container's start");
            }
            report("ok");
            // Starting the container took memory the long watch ahead does not need: give the
            // freed heap back, so that a thousand monitors cost little (see the runtime bench).
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
            supervise(dir, &config, started, state)
        }
        Err(message) => {
            state.finished_at = Some(now());
            state.exit_code = Some(128);
            state.error = Some(message.clone());
            teardown(dir, &config);
            let _ = write_state(dir, &state);
            report_and_exit(&message)
        }
    }
}

fn write_state(dir: &Path, state: &MonitorState) -> Result<(), Error> {
    write_atomic(
        &dir.join(STATE_FILE),
        &serde_json::to_vec(state).expect("states serialize"),
    )
}

/// Writes the one-line report to stdout and detaches from it.
fn report(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", line.replace('\n', " "));
    let _ = stdout.flush();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn report_and_exit(message: &str) -> ! {
    report(&format!("error: {message}"));
    std::process::exit(1)
}

struct Started {
    pid: Pid,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn rootfs(dir: &Path) -> PathBuf {
    dir.join("rootfs")
}

fn start(dir: &Path, config: &MonitorConfig) -> Result<Started, String> {
    let lower = config
        .lower_dirs
        .iter()
        .map(|d| d.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        dir.join("upper").display(),
        dir.join("work").display()
    );
    mount(
        Some("overlay"),
        &rootfs(dir),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount the root filesystem: {e}"))?;
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let null = File::open("/dev/null").map_err(|e| e.to_string())?;
    let started = match &config.oci {
        OciRuntime::Libcontainer => {
            in_child(move || start_libcontainer(dir, config, null.into(), out_w, err_w))
        }
        OciRuntime::Runc(runc) => start_runc(dir, config, runc, null, out_w, err_w),
    };
    let pid = started.map_err(|message| {
        // The OCI runtime's own account of the failure went to the container's stderr.
        let said = drain(&err_r);
        let detail = String::from_utf8_lossy(&said);
        let last = detail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        if let Ok(mut log) =
            RotatingFile::open(&config.log_path, config.log_max_bytes, config.log_max_files)
        {
            let mut framer = Framer::default();
            let _ = log.write(&framer.push(Stream::Stderr, &said, &now()));
            let _ = log.write(&framer.finish(&now()));
        }
        if last.is_empty() {
            message
        } else {
            format!("{message}: {}", last.trim())
        }
    })?;
    Ok(Started {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}

/// Runs `work` in a forked child and returns what it returned. libcontainer's start touches
/// much memory (heap, stack, code) that the monitor's long watch never needs again; done in a
/// child, it leaves the monitor small. The container's processes, orphaned when the child
/// exits, come to the monitor, their subreaper.
fn in_child(work: impl FnOnce() -> Result<Pid, String>) -> Result<Pid, String> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(read_end);
            let said = match work() {
                Ok(pid) => format!("ok {pid}"),
                Err(message) => message,
            };
            let _ = File::from(write_end).write_all(said.as_bytes());
            // SAFETY: leaving without running the parent's exit handlers or destructors twice.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            drop(work);
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut File::from(read_end), &mut said);
            let _ = waitpid(child, None);
            match said.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
                Some(pid) => Ok(Pid::from_raw(pid)),
                None if said.is_empty() => Err("the container's creator died".into()),
                None => Err(said),
            }
        }
    }
}

fn start_libcontainer(
    dir: &Path,
    config: &MonitorConfig,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Pid, String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let mut container = ContainerBuilder::new(config.id.clone(), SyscallType::Linux)
        .with_root_path(&config.state_root)
        .map_err(|e| e.to_string())?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .validate_id()
        .map_err(|e| e.to_string())?
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    container.start().map_err(|e| e.to_string())?;
    container
        .pid()
        .ok_or_else(|| "the runtime did not report the container's pid".to_string())
}

fn start_runc(
    dir: &Path,
    config: &MonitorConfig,
    runc: &Path,
    stdin: File,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Pid, String> {
    let pid_file = dir.join("pid");
    let output = std::process::Command::new(runc)
        .arg("--root")
        .arg(&config.state_root)
        .args(["create", "--bundle"])
        .arg(dir)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&config.id)
        .stdin(stdin)
        .stdout(File::from(stdout))
        .stderr(File::from(stderr))
        .status()
        .map_err(|e| format!("{}: {e}", runc.display()))?;
    if !output.success() {
        return Err(format!(
            "runc create failed ({output}); see the container's log"
        ));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("{}: {e}", pid_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let started = std::process::Command::new(runc)
        .arg("--root")
        .arg(&config.state_root)
        .args(["start", &config.id])
        .status()
        .map_err(|e| format!("{}: {e}", runc.display()))?;
    if !started.success() {
        return Err(format!("runc start failed ({started})"));
    }
    Ok(Pid::from_raw(pid))
}

/// Copies the container's output to its log until it exits, then records how it ended.
fn supervise(dir: &Path, config: &MonitorConfig, started: Started, mut state: MonitorState) -> ! {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let _ = mask.thread_block();
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .expect("signalfd");
    let mut log =
        RotatingFile::open(&config.log_path, config.log_max_bytes, config.log_max_files).ok();
    let mut framer = Framer::default();
    let mut streams = [Some(started.stdout), Some(started.stderr)];
    let mut exit: Option<WaitStatus> = reap(started.pid);
    for fd in streams.iter().flatten() {
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exit.is_some() && streams.iter().all(Option::is_none) {
            break;
        }
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            streams
                .iter()
                .flatten()
                .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
        );
        // Once the container is gone, whatever still holds its pipes gets a second to finish.
        let timeout = if exit.is_some() {
            PollTimeout::from(1000u16)
        } else {
            PollTimeout::NONE
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) if exit.is_some() => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        drop(fds);
        while let Ok(Some(_)) = sigfd.read_signal() {}
        if exit.is_none() {
            exit = reap(started.pid);
        }
        for (slot, stream) in streams.iter_mut().zip([Stream::Stdout, Stream::Stderr]) {
            let Some(fd) = slot else { continue };
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    let records = framer.push(stream, &buf[..n], &now());
                    if let Some(log) = &mut log {
                        let _ = log.write(&records);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => *slot = None,
            }
        }
    }
    if let Some(log) = &mut log {
        let _ = log.write(&framer.finish(&now()));
    }
    match exit {
        Some(WaitStatus::Exited(_, code)) => state.exit_code = Some(code),
        Some(WaitStatus::Signaled(_, signal, _)) => {
            state.signal = Some(signal as i32);
            state.exit_code = Some(128 + signal as i32);
        }
        _ => state.exit_code = Some(255),
    }
    state.oom_killed = oom_kills(&config.oom_file) > 0;
    state.finished_at = Some(now());
    teardown(dir, config);
    let _ = write_state(dir, &state);
    std::process::exit(0)
}

/// What is in a pipe now, without waiting for more.
fn drain(fd: &OwnedFd) -> Vec<u8> {
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
}

/// Reaps every exited child (the monitor is their subreaper); returns the container's status
/// once its init process is among them.
fn reap(init: Pid) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid() == Some(init) {
                    found = Some(status);
                }
            }
        }
    }
}

/// The `oom_kill` count of a memory cgroup (`memory.oom_control` in v1, `memory.events` in v2).
pub fn oom_kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Deletes the OCI runtime's container (and its cgroup) and unmounts the root filesystem.
pub fn teardown(dir: &Path, config: &MonitorConfig) {
    match &config.oci {
        OciRuntime::Libcontainer => {
            let state = config.state_root.join(&config.id);
            if let Some(mut container) = state
                .exists()
                .then(|| libcontainer::container::Container::load(state).ok())
                .flatten()
            {
                if let Err(e) = container.delete(true) {
                    tracing::warn!(id = %config.id, %e, "delete container");
                }
            }
        }
        OciRuntime::Runc(runc) => {
            let _ = std::process::Command::new(runc)
                .arg("--root")
                .arg(&config.state_root)
                .args(["delete", "--force", &config.id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    match umount2(&rootfs(dir), MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(?dir, %e, "unmount the root filesystem"),
    }
}

/// `skiff monitor exec DIR -- COMMAND...`: runs a command in the running container with this
/// process's stdio and returns its exit code.
pub fn exec(dir: &Path, command: &[String]) -> Result<i32, String> {
    let config: MonitorConfig = crate::files::read_json(&dir.join(CONFIG_FILE))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: missing", dir.join(CONFIG_FILE).display()))?;
    if let OciRuntime::Runc(runc) = &config.oci {
        let status = std::process::Command::new(runc)
            .arg("--root")
            .arg(&config.state_root)
            .arg("exec")
            .arg(&config.id)
            .args(command)
            .status()
            .map_err(|e| format!("{}: {e}", runc.display()))?;
        return Ok(status.code().unwrap_or(128 + 9));
    }
    // As runc does, a command runs as the container's user unless told otherwise.
    let spec: serde_json::Value = crate::files::read_json(&dir.join("config.json"))
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let id_of = |field: &str| spec["process"]["user"][field].as_u64().map(|v| v as u32);
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let pid = libcontainer::container::builder::ContainerBuilder::new(
        config.id.clone(),
        libcontainer::syscall::syscall::SyscallType::Linux,
    )
    .with_root_path(&config.state_root)
    .map_err(|e| e.to_string())?
    .as_tenant()
    .with_container_args(command.to_vec())
    .with_user(id_of("uid"))
    .with_group(id_of("gid"))
    .with_detach(false)
    .build()
    .map_err(|e| e.to_string())?;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code),
            Ok(WaitStatus::Signaled(p, signal, _)) if p == pid => return Ok(128 + signal as i32),
            Ok(_) => continue,
            Err(e) => return Err(format!("wait for the command: {e}")),
        }
    }
}
