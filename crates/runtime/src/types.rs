//! What the node agent asks of a runtime and what it learns back: the [`Runtime`] trait and its
//! plain data.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A pod's sandbox: the namespaces its containers share and the files every one of them sees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxConfig {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// The contents of the pod's `/etc/hosts` and `/etc/resolv.conf`.
    pub hosts: String,
    pub resolv_conf: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    pub config: SandboxConfig,
    /// The pod's network namespace, for the network plugin.
    pub netns: PathBuf,
}

/// A bind mount from the node into the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Requests and limits, already turned into cgroup terms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU shares (cgroup v1; v2 weights are derived by the cgroup driver): 1024 per CPU
    /// requested, 2 at least, as kubelet computes them.
    pub cpu_shares: Option<u64>,
    /// Microseconds of CPU per `cpu_period`.
    pub cpu_quota: Option<i64>,
    pub cpu_period: u64,
    pub memory_limit: Option<i64>,
    pub oom_score_adj: Option<i32>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_shares: None,
            cpu_quota: None,
            cpu_period: 100_000,
            memory_limit: None,
            oom_score_adj: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub read_only_root_filesystem: bool,
    /// Off by default, as `noNewPrivileges` is containerd's default.
    pub allow_privilege_escalation: bool,
}

/// One run (attempt) of one container of a pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    pub name: String,
    /// Counts the restarts of the container: each attempt is a new container.
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub security: Security,
}

impl ContainerConfig {
    /// A container running `image` with the image's own command and nothing else set.
    pub fn new(name: &str, image: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            attempt: 0,
            image: image.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            mounts: vec![],
            resources: Resources::default(),
            security: Security::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerId {
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.pod_uid, self.name, self.attempt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    Running,
    Exited,
}

/// What became of a container, as the agent turns it into a Kubernetes container status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub id: ContainerId,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    pub pid: Option<i32>,
    /// The process that owns the container and records its end.
    pub monitor_pid: Option<i32>,
    /// RFC 3339 times.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Why it could not start (Kubernetes' `StartError`), in words.
    pub error: Option<String>,
    pub log_path: PathBuf,
}

/// The result of a command run in a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The operations the node agent needs; implemented by the local runtime (real containers) and
/// the fake one (hollow nodes, tests of the agent).
pub trait Runtime: Send + Sync {
    /// Creates the pod's sandbox, or does nothing when it exists.
    fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus, Error>;
    /// Kills the pod's containers and removes the sandbox; a missing one is no error.
    fn remove_sandbox(&self, pod_uid: &str) -> Result<(), Error>;
    fn sandboxes(&self) -> Result<Vec<SandboxStatus>, Error>;
    /// Creates and starts a container in an existing sandbox. A container that could not start
    /// is still returned (exited, with `error`), so that its failure can be reported.
    fn start_container(
        &self,
        pod_uid: &str,
        config: &ContainerConfig,
    ) -> Result<ContainerStatus, Error>;
    /// Sends SIGTERM, then SIGKILL after `grace`, and returns once the container has exited.
    fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<ContainerStatus, Error>;
    /// Removes an exited container and its logs (stopping it first if it runs).
    fn remove_container(&self, id: &ContainerId) -> Result<(), Error>;
    /// Every container of a pod, or of the node when `pod_uid` is `None`.
    fn containers(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerStatus>, Error>;
    fn exec(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, Error>;

    /// Removes exited containers (and their logs) beyond the newest `keep` of each container
    /// of each pod (kubelet keeps one, for `kubectl logs --previous`); returns what went.
    fn prune_exited(&self, keep: usize) -> Result<Vec<ContainerId>, Error> {
        let doomed = exited_beyond(&self.containers(None)?, keep);
        for id in &doomed {
            self.remove_container(id)?;
        }
        Ok(doomed)
    }
}

/// The exited containers beyond the newest `keep` attempts of each container of each pod. A
/// running attempt is never among them and does not count.
pub fn exited_beyond(statuses: &[ContainerStatus], keep: usize) -> Vec<ContainerId> {
    let mut exited: Vec<&ContainerId> = statuses
        .iter()
        .filter(|c| c.state == ContainerState::Exited)
        .map(|c| &c.id)
        .collect();
    // Newest attempt first within each (pod, container).
    exited.sort_by(|a, b| {
        (&a.pod_uid, &a.name)
            .cmp(&(&b.pod_uid, &b.name))
            .then(b.attempt.cmp(&a.attempt))
    });
    let mut doomed = Vec::new();
    let mut seen = 0;
    for (i, id) in exited.iter().enumerate() {
        let same =
            i > 0 && (&exited[i - 1].pod_uid, &exited[i - 1].name) == (&id.pod_uid, &id.name);
        seen = if same { seen + 1 } else { 1 };
        if seen > keep {
            doomed.push((*id).clone());
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pod: &str, name: &str, attempt: u32, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            id: ContainerId {
                pod_uid: pod.into(),
                name: name.into(),
                attempt,
            },
            image: String::new(),
            image_id: String::new(),
            state,
            pid: None,
            monitor_pid: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            log_path: PathBuf::new(),
        }
    }

    #[test]
    fn only_older_exited_attempts_are_pruned() {
        use ContainerState::*;
        let statuses = [
            status("p1", "app", 0, Exited),
            status("p1", "app", 1, Exited),
            status("p1", "app", 2, Exited),
            status("p1", "app", 3, Running),
            status("p1", "side", 0, Exited),
            status("p2", "app", 0, Exited),
            status("p2", "app", 1, Exited),
        ];
        let names = |ids: Vec<ContainerId>| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(exited_beyond(&statuses, 1)),
            ["p1-app-1", "p1-app-0", "p2-app-0"]
        );
        assert_eq!(names(exited_beyond(&statuses, 0)).len(), 6);
        assert!(exited_beyond(&statuses, 5).is_empty());
    }
}
