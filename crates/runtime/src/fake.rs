//! A runtime that runs nothing: containers are entries in memory that run until told otherwise.
//! Hollow nodes use it to try the control plane at scale; the agent's tests use it to drive
//! exits, crashes and OOM kills without root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::types::*;
use crate::Error;

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, SandboxStatus>,
    containers: BTreeMap<ContainerId, ContainerStatus>,
    next_pid: i32,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Ends a running container as if its process had exited with `code` (or been killed by
    /// the OOM killer).
    pub fn finish(&self, id: &ContainerId, code: i32, oom_killed: bool) -> Result<(), Error> {
        let mut state = self.state.lock().expect("fake runtime lock");
        let status = state
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        if status.state == ContainerState::Running {
            status.state = ContainerState::Exited;
            status.exit_code = Some(code);
            status.signal = (code > 128).then_some(code - 128);
            status.oom_killed = oom_killed;
            status.finished_at = Some(now());
        }
        Ok(())
    }
}

impl Runtime for FakeRuntime {
    fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus, Error> {
        let mut state = self.state.lock().expect("fake runtime lock");
        let status = state
            .sandboxes
            .entry(config.uid.clone())
            .or_insert_with(|| SandboxStatus {
                config: config.clone(),
                netns: PathBuf::from(format!("/fake/{}/ns/net", config.uid)),
            });
        Ok(status.clone())
    }

    fn remove_sandbox(&self, pod_uid: &str) -> Result<(), Error> {
        let mut state = self.state.lock().expect("fake runtime lock");
        state.containers.retain(|id, _| id.pod_uid != pod_uid);
        state.sandboxes.remove(pod_uid);
        Ok(())
    }

    fn sandboxes(&self) -> Result<Vec<SandboxStatus>, Error> {
        let state = self.state.lock().expect("fake runtime lock");
        Ok(state.sandboxes.values().cloned().collect())
    }

    fn start_container(
        &self,
        pod_uid: &str,
        config: &ContainerConfig,
    ) -> Result<ContainerStatus, Error> {
        let mut state = self.state.lock().expect("fake runtime lock");
        if !state.sandboxes.contains_key(pod_uid) {
            return Err(Error::SandboxNotFound(pod_uid.to_string()));
        }
        let id = ContainerId {
            pod_uid: pod_uid.to_string(),
            name: config.name.clone(),
            attempt: config.attempt,
        };
        if state.containers.contains_key(&id) {
            return Err(Error::ContainerExists(id.to_string()));
        }
        state.next_pid += 1;
        let status = ContainerStatus {
            id: id.clone(),
            image: config.image.clone(),
            image_id: format!("sha256:fake-{}", config.image),
            state: ContainerState::Running,
            pid: Some(1000 + state.next_pid),
            monitor_pid: None,
            started_at: Some(now()),
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            log_path: PathBuf::from(format!(
                "/fake/{pod_uid}/{}/{}.log",
                config.name, config.attempt
            )),
        };
        state.containers.insert(id, status.clone());
        Ok(status)
    }

    fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<ContainerStatus, Error> {
        // A fake process honours SIGTERM when it is given time to, and dies of SIGKILL otherwise.
        let code = if grace.is_zero() { 137 } else { 0 };
        self.finish(id, code, false)?;
        let state = self.state.lock().expect("fake runtime lock");
        Ok(state.containers[id].clone())
    }

    fn remove_container(&self, id: &ContainerId) -> Result<(), Error> {
        let mut state = self.state.lock().expect("fake runtime lock");
        state.containers.remove(id);
        Ok(())
    }

    fn containers(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerStatus>, Error> {
        let state = self.state.lock().expect("fake runtime lock");
        Ok(state
            .containers
            .values()
            .filter(|c| pod_uid.is_none_or(|uid| c.id.pod_uid == uid))
            .cloned()
            .collect())
    }

    fn exec(
        &self,
        id: &ContainerId,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<ExecResult, Error> {
        let state = self.state.lock().expect("fake runtime lock");
        match state.containers.get(id) {
            Some(c) if c.state == ContainerState::Running => Ok(ExecResult {
                exit_code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            }),
            Some(_) => Err(Error::NotRunning(id.to_string())),
            None => Err(Error::ContainerNotFound(id.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_run_until_stopped_or_finished() {
        let runtime = FakeRuntime::new();
        let sandbox = SandboxConfig {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web".into(),
            hostname: "web".into(),
            hosts: String::new(),
            resolv_conf: String::new(),
        };
        assert!(matches!(
            runtime.start_container("u1", &ContainerConfig::new("app", "busybox")),
            Err(Error::SandboxNotFound(_))
        ));
        runtime.run_sandbox(&sandbox).unwrap();
        let app = runtime
            .start_container("u1", &ContainerConfig::new("app", "busybox"))
            .unwrap();
        let side = runtime
            .start_container("u1", &ContainerConfig::new("side", "busybox"))
            .unwrap();
        assert_eq!(app.state, ContainerState::Running);
        runtime.finish(&side.id, 137, true).unwrap();
        let stopped = runtime.stop_container(&app.id, Duration::ZERO).unwrap();
        assert_eq!((stopped.exit_code, stopped.signal), (Some(137), Some(9)));
        let statuses = runtime.containers(Some("u1")).unwrap();
        assert!(statuses.iter().all(|c| c.state == ContainerState::Exited));
        assert!(statuses.iter().any(|c| c.oom_killed));
        assert!(matches!(
            runtime.exec(&app.id, &[], Duration::ZERO),
            Err(Error::NotRunning(_))
        ));
        runtime.remove_sandbox("u1").unwrap();
        assert!(runtime.containers(None).unwrap().is_empty());
    }
}
