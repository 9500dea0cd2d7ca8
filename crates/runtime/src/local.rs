//! The runtime of real nodes: sandboxes and containers on this machine, each container owned by
//! a monitor process, every piece of state in files so that a new instance adopts what an old
//! one started.
//!
//! Layout under the runtime's root (one per node):
//! - `images/`: the image store;
//! - `pods/<uid>/`: `sandbox.json`, `ns/`, `etc/`, and `containers/<name>/<attempt>/` holding
//!   the OCI bundle (`config.json`, `rootfs/`, `upper/`, `work/`), `container.json` (what was
//!   asked), `monitor.json` and `state.json` (what happened);
//! - `logs/<namespace>_<name>_<uid>/<container>/<attempt>.log`: CRI logs, as kubelet lays them out;
//! - `oci/`: the OCI runtime's state.
//!
//! Host-wide names carry the node's name (cgroups under `/skiff/<node>`), so that several nodes
//! can share a machine.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::files::{read_json, write_atomic};
use crate::monitor::{self, MonitorConfig, MonitorState, OciRuntime};
use crate::types::*;
use crate::{cgroups, crilog, sandbox, spec, Error, ImageStore};

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The node's runtime directory.
    pub root: PathBuf,
    /// Names what the node creates outside `root` (its cgroup tree).
    pub node: String,
    /// The program and arguments that start a monitor (`skiff monitor`); the runtime appends
    /// `zygote ROOT` (the node's process monitors are forked from) or `exec DIR COMMAND...`.
    pub monitor: Vec<OsString>,
    pub oci: OciRuntime,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
}

impl LocalConfig {
    pub fn new(root: impl Into<PathBuf>, node: &str, monitor: Vec<OsString>) -> LocalConfig {
        LocalConfig {
            root: root.into(),
            node: node.into(),
            monitor,
            oci: OciRuntime::Libcontainer,
            log_max_bytes: 10 << 20,
            log_max_files: 5,
        }
    }
}

/// What was asked of a container, kept beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerRecord {
    config: ContainerConfig,
    image_id: String,
    log_path: PathBuf,
}

pub struct LocalRuntime {
    config: LocalConfig,
    images: ImageStore,
}

impl LocalRuntime {
    pub fn open(config: LocalConfig) -> Result<LocalRuntime, Error> {
        for dir in ["pods", "logs", "oci"] {
            let dir = config.root.join(dir);
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        let images = ImageStore::open(config.root.join("images"))?;
        Ok(LocalRuntime { config, images })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The cgroup tree of the node, relative to the hierarchies' roots.
    pub fn cgroup_root(&self) -> String {
        format!("/skiff/{}", self.config.node)
    }

    /// A container's cgroup, relative to the hierarchies' roots.
    pub fn cgroup_of(&self, id: &ContainerId) -> String {
        format!(
            "{}/pod{}/{}-{}",
            self.cgroup_root(),
            id.pod_uid,
            id.name,
            id.attempt
        )
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.root.join("pods").join(uid)
    }

    fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.pod_dir(&id.pod_uid)
            .join("containers")
            .join(&id.name)
            .join(id.attempt.to_string())
    }

    fn sandbox_config(&self, uid: &str) -> Result<SandboxConfig, Error> {
        read_json(&self.pod_dir(uid).join("sandbox.json"))?
            .ok_or_else(|| Error::SandboxNotFound(uid.to_string()))
    }

    fn log_dir(&self, sandbox: &SandboxConfig) -> PathBuf {
        self.config.root.join("logs").join(format!(
            "{}_{}_{}",
            sandbox.namespace, sandbox.name, sandbox.uid
        ))
    }

    fn status(&self, id: &ContainerId) -> Result<ContainerStatus, Error> {
        let dir = self.container_dir(id);
        let record: ContainerRecord = read_json(&dir.join("container.json"))?
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        let state: Option<MonitorState> = read_json(&dir.join(monitor::STATE_FILE))?;
        let mut state = state.unwrap_or_else(|| MonitorState {
            error: Some("the container's monitor never reported".into()),
            exit_code: Some(128),
            ..Default::default()
        });
        if state.error.is_none() && !state.exited() && !alive(state.monitor_pid) {
            // The monitor was killed: what the container did next is unknown.
            state.error = Some("the container's monitor died".into());
            state.exit_code = Some(255);
        }
        Ok(ContainerStatus {
            id: id.clone(),
            image: record.config.image.clone(),
            image_id: record.image_id,
            state: if state.exited() || state.error.is_some() {
                ContainerState::Exited
            } else {
                ContainerState::Running
            },
            pid: state.pid,
            monitor_pid: (state.monitor_pid > 0).then_some(state.monitor_pid),
            started_at: state.started_at,
            finished_at: state.finished_at,
            exit_code: state.exit_code,
            signal: state.signal,
            oom_killed: state.oom_killed,
            error: state.error,
            log_path: record.log_path,
        })
    }

    fn container_ids(&self, pod_uid: &str) -> Vec<ContainerId> {
        let mut ids = Vec::new();
        let base = self.pod_dir(pod_uid).join("containers");
        for name in read_names(&base) {
            for attempt in read_names(&base.join(&name)) {
                if let Ok(attempt) = attempt.parse() {
                    ids.push(ContainerId {
                        pod_uid: pod_uid.to_string(),
                        name: name.clone(),
                        attempt,
                    });
                }
            }
        }
        ids.sort();
        ids
    }

    fn monitor_command(&self, verb: &str, dir: &Path) -> Command {
        let mut command = Command::new(&self.config.monitor[0]);
        command.args(&self.config.monitor[1..]).arg(verb).arg(dir);
        command
    }

    /// Has the node's zygote fork a monitor for the container in `dir` and returns the monitor's
    /// one-line report. The zygote is started when none answers.
    fn ask_zygote(&self, dir: &Path) -> Result<String, Error> {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let socket = self.config.root.join(monitor::ZYGOTE_SOCKET);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut started = false;
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::io("reach the monitor zygote at", &socket, e))
                }
                Err(_) if !started => {
                    let log = self.config.root.join("monitor.log");
                    let stderr = fs::File::options()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .map_err(|e| Error::io("open", &log, e))?;
                    let mut child = self
                        .monitor_command("zygote", &self.config.root)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(stderr)
                        .spawn()
                        .map_err(|e| Error::io("start monitor", &self.config.monitor[0], e))?;
                    let _ = child.wait();
                    started = true;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let mut writer = stream
            .try_clone()
            .map_err(|e| Error::io("talk to", &socket, e))?;
        writeln!(writer, "{}", dir.display()).map_err(|e| Error::io("talk to", &socket, e))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| Error::io("read the report of monitor", dir, e))?;
        Ok(line)
    }

    /// Ends the node's zygote (its pid is in `monitor.pid`), if it runs.
    fn stop_zygote(&self) {
        let pid_file = self.config.root.join(monitor::ZYGOTE_PID);
        let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        // Only our zygote: its command line names this root.
        let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline).contains(&*self.config.root.to_string_lossy())
        });
        if !ours || kill(Pid::from_raw(pid), Signal::SIGKILL).is_err() {
            return;
        }
        // A killed process takes a moment to exit: the caller (a reset) is done only once it
        // has, or has become a zombie for its reaper.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && running(pid) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a container's monitor to record its end.
    fn wait_exited(&self, id: &ContainerId, timeout: Duration) -> Result<ContainerStatus, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id)?;
            if status.state == ContainerState::Exited || Instant::now() >= deadline {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops every container of the node (SIGTERM, SIGKILL after `grace`, all at once) and
    /// removes the sandboxes and the zygote, keeping the images: what `skiff down` does.
    /// Returns how many pods were stopped.
    pub fn stop_all(&self, grace: Duration) -> Result<usize, Error> {
        let sandboxes = self.sandboxes()?;
        let running: Vec<ContainerId> = self
            .containers(None)?
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.id)
            .collect();
        std::thread::scope(|scope| {
            for id in &running {
                scope.spawn(move || {
                    if let Err(e) = self.stop_container(id, grace) {
                        tracing::warn!(container = %id, %e, "stop");
                    }
                });
            }
        });
        for sandbox in &sandboxes {
            self.remove_sandbox(&sandbox.config.uid)?;
        }
        self.stop_zygote();
        Ok(sandboxes.len())
    }

    /// Removes everything the node made: containers, sandboxes, mounts under its root, its
    /// cgroup tree, and the root itself (what `skiff reset` does, and what tests end with).
    pub fn reset(&self) -> Result<(), Error> {
        for sandbox in self.sandboxes().unwrap_or_default() {
            if let Err(e) = self.remove_sandbox(&sandbox.config.uid) {
                tracing::warn!(uid = %sandbox.config.uid, %e, "remove sandbox");
            }
        }
        self.stop_zygote();
        // What a crash may have left: monitors and containers in the cgroup tree, mounts.
        cgroups::remove_tree(&self.cgroup_root())?;
        unmount_under(&self.config.root)?;
        match fs::remove_dir_all(&self.config.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &self.config.root, e)),
        }
    }

    /// Looks up the image's `User` (`name`, `uid`, `name:group`, `uid:gid`) in its layers'
    /// `/etc/passwd` and `/etc/group`.
    fn image_user(&self, user: Option<&str>, layers: &[PathBuf]) -> Result<(u32, u32), Error> {
        let user = user.unwrap_or("");
        let find = |file: &str| {
            layers
                .iter()
                .map(|l| l.join(file))
                .find(|p| p.is_file())
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        spec::resolve_user(user, &find("etc/passwd"), &find("etc/group"))
    }
}

fn alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` exists and has not exited (a zombie, which `alive` counts, has).
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn read_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Unmounts every mount at or below `root`, deepest first.
fn unmount_under(root: &Path) -> Result<(), Error> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        if let Err(e) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                return Err(Error::io("unmount", &point, e.into()));
            }
        }
    }
    Ok(())
}

impl Runtime for LocalRuntime {
    fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus, Error> {
        let dir = self.pod_dir(&config.uid);
        let status = SandboxStatus {
            config: config.clone(),
            netns: dir.join("ns/net"),
        };
        if dir.join("sandbox.json").exists() {
            return Ok(status);
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        sandbox::create(&dir, config)?;
        write_atomic(
            &dir.join("sandbox.json"),
            &serde_json::to_vec_pretty(config).expect("configs serialize"),
        )?;
        Ok(status)
    }

    fn remove_sandbox(&self, pod_uid: &str) -> Result<(), Error> {
        let dir = self.pod_dir(pod_uid);
        if !dir.exists() {
            return Ok(());
        }
        for id in self.container_ids(pod_uid) {
            self.remove_container(&id)?;
        }
        sandbox::release(&dir)?;
        cgroups::remove_tree(&format!("{}/pod{pod_uid}", self.cgroup_root()))?;
        if let Ok(sandbox) = self.sandbox_config(pod_uid) {
            let logs = self.log_dir(&sandbox);
            let _ = fs::remove_dir_all(&logs);
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))
    }

    fn sandboxes(&self) -> Result<Vec<SandboxStatus>, Error> {
        let mut out = Vec::new();
        for uid in read_names(&self.config.root.join("pods")) {
            if let Ok(config) = self.sandbox_config(&uid) {
                out.push(SandboxStatus {
                    netns: self.pod_dir(&uid).join("ns/net"),
                    config,
                });
            }
        }
        Ok(out)
    }

    fn start_container(
        &self,
        pod_uid: &str,
        config: &ContainerConfig,
    ) -> Result<ContainerStatus, Error> {
        let sandbox = self.sandbox_config(pod_uid)?;
        let image = self.images.get(&config.image)?;
        let image_config = self.images.config(&image)?;
        let layers = self.images.layer_dirs(&image)?;
        let id = ContainerId {
            pod_uid: pod_uid.to_string(),
            name: config.name.clone(),
            attempt: config.attempt,
        };
        let dir = self.container_dir(&id);
        if dir.exists() {
            return Err(Error::ContainerExists(id.to_string()));
        }
        for sub in ["rootfs", "upper", "work"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io("create directory", &d, e))?;
        }
        let log_dir = self.log_dir(&sandbox).join(&config.name);
        fs::create_dir_all(&log_dir).map_err(|e| Error::io("create directory", &log_dir, e))?;
        let log_path = log_dir.join(format!("{}.log", config.attempt));
        let cgroup = self.cgroup_of(&id);
        let image_user = self.image_user(image_config.config.user.as_deref(), &layers)?;
        let mut oci_spec = spec::build(&spec::SpecInput {
            container: config,
            image: &image_config.config,
            sandbox_dir: &self.pod_dir(pod_uid),
            hostname: &sandbox.hostname,
            cgroup_path: &cgroup,
            image_user,
        })?;
        oci_spec["root"]["path"] = dir.join("rootfs").to_string_lossy().into_owned().into();
        write_atomic(&dir.join("config.json"), &pretty(&oci_spec))?;
        let record = ContainerRecord {
            config: config.clone(),
            image_id: image.id.clone(),
            log_path: log_path.clone(),
        };
        write_atomic(&dir.join("container.json"), &pretty(&record))?;
        let monitor_config = MonitorConfig {
            id: id.to_string(),
            state_root: self.config.root.join("oci"),
            oci: self.config.oci.clone(),
            log_path,
            log_max_bytes: self.config.log_max_bytes,
            log_max_files: self.config.log_max_files,
            lower_dirs: layers,
            oom_file: cgroups::oom_file(&cgroup),
        };
        write_atomic(&dir.join(monitor::CONFIG_FILE), &pretty(&monitor_config))?;

        let line = self.ask_zygote(&dir)?;
        if line.trim() != "ok" && !dir.join(monitor::STATE_FILE).exists() {
            // The monitor could not even record its failure.
            let state = MonitorState {
                finished_at: Some(jiff::Timestamp::now().to_string()),
                exit_code: Some(128),
                error: Some(match line.trim() {
                    "" => "the monitor exited without a report".to_string(),
                    said => said.trim_start_matches("error: ").to_string(),
                }),
                ..Default::default()
            };
            write_atomic(&dir.join(monitor::STATE_FILE), &pretty(&state))?;
        }
        let _ = self
            .images
            .touch(&image.id, jiff::Timestamp::now().as_second());
        self.status(&id)
    }

    fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<ContainerStatus, Error> {
        let status = self.status(id)?;
        let Some(pid) = status
            .pid
            .filter(|_| status.state == ContainerState::Running)
        else {
            return Ok(status);
        };
        let pid = Pid::from_raw(pid);
        if !grace.is_zero() {
            let _ = kill(pid, Signal::SIGTERM);
            let status = self.wait_exited(id, grace)?;
            if status.state == ContainerState::Exited {
                return Ok(status);
            }
        }
        // Killing the init of a PID namespace kills everything in it.
        let _ = kill(pid, Signal::SIGKILL);
        let status = self.wait_exited(id, Duration::from_secs(10))?;
        if status.state != ContainerState::Exited {
            return Err(Error::StopTimeout(id.to_string()));
        }
        Ok(status)
    }

    fn remove_container(&self, id: &ContainerId) -> Result<(), Error> {
        let status = match self.status(id) {
            Ok(status) => status,
            Err(Error::ContainerNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if status.state == ContainerState::Running {
            self.stop_container(id, Duration::ZERO)?;
        }
        let dir = self.container_dir(id);
        if let Some(config) = read_json::<MonitorConfig>(&dir.join(monitor::CONFIG_FILE))? {
            // A monitor that died could not clean up after its container.
            monitor::teardown(&dir, &config);
        }
        cgroups::remove_tree(&self.cgroup_of(id))?;
        for path in crilog::files(&status.log_path, self.config.log_max_files) {
            let _ = fs::remove_file(path);
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))
    }

    fn containers(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerStatus>, Error> {
        let pods = match pod_uid {
            Some(uid) => vec![uid.to_string()],
            None => read_names(&self.config.root.join("pods")),
        };
        let mut out = Vec::new();
        for uid in pods {
            for id in self.container_ids(&uid) {
                match self.status(&id) {
                    Ok(status) => out.push(status),
                    Err(Error::ContainerNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn exec(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, Error> {
        let status = self.status(id)?;
        if status.state != ContainerState::Running {
            return Err(Error::NotRunning(id.to_string()));
        }
        let dir = self.container_dir(id);
        let mut child = self
            .monitor_command("exec", &dir)
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("start monitor", &self.config.monitor[0], e))?;
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + timeout;
        let code = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code().unwrap_or(128 + 9),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::ExecTimeout(id.to_string(), timeout));
                }
                Err(e) => return Err(Error::io("wait for exec in", &dir, e)),
            }
        };
        Ok(ExecResult {
            exit_code: code,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("runtime files serialize")
}
