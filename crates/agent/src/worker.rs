//! One pod's worker: follows the pod as the API says it is, makes its sandbox and volumes,
//! starts and restarts its containers as [`plan`](crate::plan) decides, writes its status when
//! it changes, and on deletion stops everything within the grace period, removes it, and
//! completes the deletion in the API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use skiff_runtime::{ContainerState, ContainerStatus, Runtime, SandboxConfig};
use tokio::sync::watch;

use crate::agent::Agent;
use crate::container::{self, Data, Sources};
use crate::plan::{self, Plan};
use crate::probe::{Outcome, PodProbes, Verdict};
use crate::prober::{self, Action, Target};
use crate::status::{self, pod_ref, Note, StatusInput};

/// How often the files of configMap and secret volumes are brought up to date, and the longest
/// a worker sleeps: exits wake it sooner (the agent's relist), as do changes of the pod.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// A container that could not be started for a reason of the node's (image, configuration):
/// what the status says, and when to try again.
struct Failure {
    note: Note,
    retry_at: Timestamp,
    count: u32,
}

struct Worker {
    agent: Arc<Agent>,
    uid: String,
    failures: BTreeMap<String, Failure>,
    written: Option<Value>,
    volumes_at: Option<Timestamp>,
    volume_dirs: BTreeMap<String, PathBuf>,
    /// The pod's network namespace, where probes and hooks connect from.
    netns: Option<PathBuf>,
    /// The node's facts with this pod's address.
    facts: crate::container::NodeFacts,
    probes: PodProbes,
    streaks: plan::Streaks,
    /// The back-off waits a BackOff event was recorded for, by container and end.
    backoff_told: BTreeSet<(String, Timestamp)>,
    /// The ConfigMaps and Secrets as last read, used while the API cannot be read (a crashed
    /// container restarts with them while the node is cut off).
    known: Sources,
}

pub fn pod_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The longest a terminating pod waits for Service traffic to leave it before its containers
/// get SIGTERM.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How long a deleted pod's containers get between SIGTERM and SIGKILL.
fn grace(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// A runtime or file call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("runtime and file calls do not panic")
}

/// The worker's registration for the relist's wake-ups, dropped with the worker.
struct Waker {
    notify: Arc<tokio::sync::Notify>,
    agent: Arc<Agent>,
    uid: String,
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.agent.forget_waker(&self.uid, &self.notify);
    }
}

/// Runs until the pod is gone from the node: `pod` carries the API's view, `None` once the pod
/// was deleted from the API.
pub async fn run(agent: Arc<Agent>, uid: String, mut pod: watch::Receiver<Option<Arc<Pod>>>) {
    let waker = Waker {
        notify: agent.waker(&uid),
        agent: agent.clone(),
        uid: uid.clone(),
    };
    let mut worker = Worker {
        agent,
        uid,
        failures: BTreeMap::new(),
        written: None,
        volumes_at: None,
        volume_dirs: BTreeMap::new(),
        netns: None,
        facts: waker.agent.facts.clone(),
        probes: PodProbes::default(),
        streaks: plan::Streaks::default(),
        backoff_told: BTreeSet::new(),
        known: Sources::default(),
    };
    // A sync's and a tear-down's futures are large (every await of starting containers, probing
    // and writing status is in them); boxed, they take memory only while they run, and what a
    // pod's worker keeps between syncs stays small.
    loop {
        let current = pod.borrow_and_update().clone();
        let wake = match current {
            None => {
                // Deleted without a grace period we saw: end it as a forced deletion does.
                let grace = Duration::from_secs(2);
                Box::pin(worker.tear_down(None, grace)).await;
                worker.agent.local.forget_pod(&worker.uid);
                return;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                Box::pin(worker.tear_down(Some(&p), grace(&p))).await;
                Box::pin(worker.finish_deletion(&p)).await;
                worker.agent.local.forget_pod(&worker.uid);
                return;
            }
            Some(p) => Box::pin(worker.sync(&p)).await,
        };
        let sleep = wake
            .map(|at| {
                let now = Timestamp::now();
                if at > now {
                    at.duration_since(now).unsigned_abs()
                } else {
                    Duration::ZERO
                }
            })
            .map_or(VOLUME_REFRESH, |d| d.min(VOLUME_REFRESH));
        tokio::select! {
            changed = pod.changed() => {
                if changed.is_err() {
                    // The agent stopped following the pod (it is shutting down).
                    return;
                }
            }
            _ = waker.notify.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

impl Worker {
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.agent.runtime.clone()
    }

    async fn observe(&self) -> Vec<ContainerStatus> {
        let runtime = self.runtime();
        let uid = self.uid.clone();
        match blocking(move || runtime.containers(Some(&uid))).await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!(pod = %self.uid, error = %e, "listing the pod's containers");
                Vec::new()
            }
        }
    }

    /// The ConfigMaps and Secrets the pod refers to, read from the API now; those that cannot
    /// be read (the server is out of reach) as last read.
    async fn sources(&mut self, pod: &Pod) -> Sources {
        let (namespace, _) = pod_name(pod);
        let (config_maps, secrets) = crate::volumes::references(pod);
        let mut sources = Sources::default();
        let cms: Api<ConfigMap> = Api::namespaced(self.agent.client.clone(), &namespace);
        for name in config_maps {
            let data = match cms.get_opt(&name).await {
                Ok(found) => found.map(|cm| {
                    let mut data: Data = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    data
                }),
                Err(e) => {
                    tracing::warn!(%namespace, configmap = %name, error = %e, "reading a ConfigMap");
                    self.known.config_maps.get(&name).cloned().flatten()
                }
            };
            sources.config_maps.insert(name, data);
        }
        let api: Api<Secret> = Api::namespaced(self.agent.client.clone(), &namespace);
        for name in secrets {
            let data = match api.get_opt(&name).await {
                Ok(found) => found.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                }),
                Err(e) => {
                    tracing::warn!(%namespace, secret = %name, error = %e, "reading a Secret");
                    self.known.secrets.get(&name).cloned().flatten()
                }
            };
            sources.secrets.insert(name, data);
        }
        self.known = sources.clone();
        sources
    }

    /// The pod's sandbox with its address: reserved first (its `/etc/hosts` names it), then
    /// the pod's end of a veth on the node's bridge. Pods of the host's network have none.
    async fn make_sandbox(&mut self, pod: &Pod) -> Result<(), Note> {
        let failed = |message: String| Note {
            reason: "FailedCreatePodSandBox".into(),
            message,
        };
        let (namespace, name) = pod_name(pod);
        // The pod as JSON, for the network's pure functions (resolv.conf, host ports).
        let pod_json = serde_json::to_value(pod).unwrap_or_default();
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone());
        let network = self
            .agent
            .network
            .clone()
            .filter(|_| !spec.and_then(|s| s.host_network).unwrap_or(false));
        let address = match &network {
            Some(net) => Some(
                net.pods
                    .address(&self.uid)
                    .map_err(|e| failed(e.to_string()))?,
            ),
            None => None,
        };
        let named = address.map_or("127.0.1.1".to_string(), |a| a.to_string());
        let sandbox = SandboxConfig {
            uid: self.uid.clone(),
            namespace,
            name,
            hosts: format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{named}\t{hostname}\n"),
            resolv_conf: self
                .agent
                .network
                .as_ref()
                .map(|n| n.resolv_conf(&pod_json))
                .unwrap_or_default(),
            hostname,
        };
        let runtime = self.runtime();
        let made = blocking(move || runtime.run_sandbox(&sandbox))
            .await
            .map_err(|e| failed(e.to_string()))?;
        if let (Some(net), Some(ip)) = (&network, address) {
            net.pods
                .attach(&self.uid, &made.netns)
                .await
                .map_err(|e| failed(format!("setting up the pod's network: {e}")))?;
            let host_ports = skiff_net::proxy::HostPort::of_pod(&pod_json, ip);
            net.set_local_pod(&self.uid, Some((ip, host_ports)));
        }
        self.facts.pod_ip = match address {
            Some(a) => Some(a.to_string()),
            None if network.is_none() && self.agent.network.is_some() => {
                Some(self.facts.host_ip.clone())
            }
            None => None,
        };
        self.netns = Some(made.netns);
        Ok(())
    }

    /// Makes the sandbox (once), then the volumes (again every few seconds, so that
    /// configuration updates reach running containers).
    /// Returns the ConfigMaps and Secrets it read, if it read them, so that a pass reads them
    /// once.
    async fn prepare(&mut self, pod: &Pod, now: Timestamp) -> Result<Option<Sources>, Note> {
        if self.netns.is_none() {
            self.make_sandbox(pod).await?;
        }
        // Made once; again every few seconds only where files follow the API.
        let due = match self.volumes_at {
            None => true,
            Some(at) => {
                crate::volumes::follows_api(pod)
                    && now.duration_since(at).unsigned_abs() >= VOLUME_REFRESH
            }
        };
        if due {
            let sources = self.sources(pod).await;
            let volumes = self.agent.volumes.clone();
            let facts = self.facts.clone();
            let pod = pod.clone();
            let prepared = blocking(move || {
                volumes
                    .prepare(&pod, &sources, &facts)
                    .map(|d| (d, sources))
            });
            match prepared.await {
                Ok((dirs, sources)) => {
                    self.volume_dirs = dirs;
                    self.volumes_at = Some(now);
                    return Ok(Some(sources));
                }
                Err(e) => {
                    return Err(Note {
                        reason: "CreateContainerConfigError".into(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(None)
    }

    /// One pass: start what the plan says, then write the status if it changed. Returns when
    /// the worker must look again at the latest.
    async fn sync(&mut self, pod: &Pod) -> Option<Timestamp> {
        let now = Timestamp::now();
        let prepared = self.prepare(pod, now).await;
        let mut observed = self.observe().await;
        let backoff = self.agent.config.backoff;
        self.streaks.observe(&observed, &backoff);
        let plan = plan::plan(pod, &observed, now, &backoff, &self.streaks);
        match prepared {
            Err(note) => {
                for (name, _) in &plan.start {
                    self.fail(pod, name, note.clone(), now);
                }
            }
            Ok(read) if !plan.start.is_empty() => {
                let sources = match read {
                    Some(sources) => sources,
                    None => self.sources(pod).await,
                };
                for (name, attempt) in &plan.start {
                    if self.failures.get(name).is_some_and(|f| f.retry_at > now) {
                        continue;
                    }
                    let Some(container) = find_container(pod, name) else {
                        continue;
                    };
                    match self.start(pod, container, *attempt, &sources).await {
                        Ok(()) => {
                            self.failures.remove(name);
                        }
                        Err(note) => self.fail(pod, name, note, now),
                    }
                }
                observed = self.observe().await;
            }
            Ok(_) => {}
        }
        if self.probe(pod, &observed).await {
            observed = self.observe().await;
        }
        self.streaks.observe(&observed, &backoff);
        let plan = plan::plan(pod, &observed, Timestamp::now(), &backoff, &self.streaks);
        self.tell_backoff(pod, &plan);
        self.write_status(pod, &observed, &plan).await;
        [
            plan.next_wake(),
            self.failures.values().map(|f| f.retry_at).min(),
            self.probes.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Records a BackOff event once per wait of a container before its restart.
    fn tell_backoff(&mut self, pod: &Pod, plan: &Plan) {
        for (name, wait) in &plan.backoff {
            if self.backoff_told.insert((name.clone(), wait.until)) {
                self.agent.events.warning(
                    pod,
                    Some(name),
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}",
                        pod_ref(pod)
                    ),
                );
            }
        }
        self.backoff_told
            .retain(|(name, until)| plan.backoff.get(name).is_some_and(|w| w.until == *until));
    }

    /// Runs the probes that are due on the running main containers, records what they found,
    /// and kills containers whose liveness or startup probe gave up. True when one was killed.
    async fn probe(&mut self, pod: &Pod, observed: &[ContainerStatus]) -> bool {
        let Some(spec) = pod.spec.as_ref() else {
            return false;
        };
        let attempts = plan::Attempts::new(observed);
        let now = Timestamp::now();
        let mut due = Vec::new();
        for container in &spec.containers {
            let Some(current) = attempts
                .latest(&container.name)
                .filter(|s| plan::running(s))
            else {
                continue;
            };
            let started_at = current
                .started_at
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(now);
            let probes = self
                .probes
                .attempt(container, current.id.attempt, started_at);
            for (kind, timeout) in probes.due(now) {
                let Some(action) = kind.of(container).and_then(Action::of_probe) else {
                    continue;
                };
                due.push((container, current, kind, action, timeout));
            }
        }
        self.probes.retain(|name, attempt| {
            attempts
                .latest(name)
                .is_some_and(|s| plan::running(s) && s.id.attempt == attempt)
        });
        if due.is_empty() {
            return false;
        }
        let runs = due.iter().map(|(container, current, _, action, timeout)| {
            let target = self.target(container, current);
            async move { prober::run(action, &target, *timeout).await }
        });
        let outcomes = futures::future::join_all(runs).await;
        let mut killed = false;
        for ((container, current, kind, _, _), outcome) in due.into_iter().zip(outcomes) {
            let name = container.name.as_str();
            if let Outcome::Failure(message) = &outcome {
                self.agent.events.warning(
                    pod,
                    Some(name),
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.title()),
                );
            }
            let verdict = self
                .probes
                .attempt(container, current.id.attempt, now)
                .record(kind, &outcome, Timestamp::now());
            if verdict == Verdict::Kill {
                let which = kind.title().to_lowercase();
                tracing::info!(pod = %self.uid, container = name, probe = %which, "probe failed its threshold: killing the container");
                self.agent.events.normal(
                    pod,
                    Some(name),
                    "Killing",
                    format!("Container {name} failed {which} probe, will be restarted"),
                );
                let probe_grace = kind
                    .of(container)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map(|s| Duration::from_secs(s.max(0) as u64));
                self.kill(pod, container, current, probe_grace.unwrap_or(grace(pod)))
                    .await;
                killed = true;
            }
        }
        killed
    }

    fn target(&self, container: &Container, current: &ContainerStatus) -> Target {
        Target {
            runtime: self.runtime(),
            id: current.id.clone(),
            netns: self.netns.clone(),
            pod_ip: self.facts.pod_ip.clone(),
            container: container.clone(),
        }
    }

    /// Stops a running container: its preStop hook first, then SIGTERM and SIGKILL once what
    /// is left of `grace` has passed.
    async fn kill(
        &self,
        pod: &Pod,
        container: &Container,
        current: &ContainerStatus,
        grace: Duration,
    ) {
        let began = Instant::now();
        let hook = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(Action::of_hook);
        if let Some(action) = hook {
            let target = self.target(container, current);
            if let Outcome::Failure(message) = prober::run(&action, &target, grace).await {
                self.agent.events.warning(
                    pod,
                    Some(&container.name),
                    "FailedPreStopHook",
                    format!(
                        "{} for Container {:?} in Pod {:?} failed - error: {message}",
                        action.describe(),
                        container.name,
                        pod_ref(pod)
                    ),
                );
            }
        }
        let left = grace.saturating_sub(began.elapsed());
        let runtime = self.runtime();
        let id = current.id.clone();
        if let Err(e) = blocking(move || runtime.stop_container(&id, left)).await {
            tracing::warn!(pod = %self.uid, container = %container.name, error = %e, "stopping a container");
        }
    }

    /// Notes why a container could not start; the retry waits as a crash's restart does, and
    /// a failed pull says `ImagePullBackOff` while it waits.
    fn fail(&mut self, pod: &Pod, name: &str, note: Note, now: Timestamp) {
        let count = self.failures.get(name).map_or(0, |f| f.count) + 1;
        let delay = self
            .agent
            .config
            .backoff
            .delay(count, Duration::ZERO)
            .max(Duration::from_secs(1));
        tracing::info!(pod = %self.uid, container = name, reason = %note.reason, message = %note.message, "container not started");
        self.agent.events.warning(
            pod,
            Some(name),
            "Failed",
            format!("Error: {}", note.message),
        );
        self.failures.insert(
            name.to_string(),
            Failure {
                note,
                retry_at: now.checked_add(delay).unwrap_or(now),
                count,
            },
        );
    }

    async fn start(
        &self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sources: &Sources,
    ) -> Result<(), Note> {
        let config_error = |message: String| Note {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        self.agent
            .ensure_image(pod, container)
            .await
            .map_err(|message| Note {
                reason: "ErrImagePull".into(),
                message,
            })?;
        let mut facts = self.facts.clone();
        if let Some(network) = &self.agent.network {
            // The Services of the pod's namespace as they are when the container starts.
            facts
                .service_env
                .extend(network.service_env(&pod_name(pod).0));
        }
        let facts = &facts;
        let env = container::environment(pod, container, sources, facts)
            .map_err(|e| config_error(e.0))?;
        let termination = self
            .agent
            .volumes
            .termination_file(&self.uid, &container.name, attempt)
            .map_err(|e| config_error(e.to_string()))?;
        let mounts = container::mounts(container, &self.volume_dirs, &termination)
            .map_err(|e| config_error(e.0))?;
        let config = container::config(pod, container, attempt, env, mounts, facts);
        let runtime = self.runtime();
        let uid = self.uid.clone();
        let started = blocking(move || runtime.start_container(&uid, &config))
            .await
            .map_err(|e| Note {
                reason: "CreateContainerError".into(),
                message: e.to_string(),
            })?;
        let name = container.name.as_str();
        let events = &self.agent.events;
        events.normal(
            pod,
            Some(name),
            "Created",
            format!("Created container: {name}"),
        );
        if let Some(error) = &started.error {
            tracing::info!(pod = %self.uid, container = name, %error, "container failed to start");
            events.warning(pod, Some(name), "Failed", format!("Error: {error}"));
            return Ok(());
        }
        events.normal(
            pod,
            Some(name),
            "Started",
            format!("Started container {name}"),
        );
        self.post_start(pod, container, &started).await;
        Ok(())
    }

    /// Runs the container's postStart hook; when it fails the container is killed (and
    /// restarts as the restart policy says), as the kubelet does.
    async fn post_start(&self, pod: &Pod, container: &Container, started: &ContainerStatus) {
        let Some(action) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(Action::of_hook)
        else {
            return;
        };
        let target = self.target(container, started);
        if let Outcome::Failure(message) = prober::run(&action, &target, grace(pod)).await {
            let name = container.name.as_str();
            self.agent.events.warning(
                pod,
                Some(name),
                "FailedPostStartHook",
                format!(
                    "{} for Container {name:?} in Pod {:?} failed - error: {message}",
                    action.describe(),
                    pod_ref(pod)
                ),
            );
            self.agent.events.normal(
                pod,
                Some(name),
                "Killing",
                format!("FailedPostStartHook: stopping container {name}"),
            );
            self.kill(pod, container, started, grace(pod)).await;
        }
    }

    /// Termination messages of the exited attempts: the file the container wrote, or the end
    /// of its log under `FallbackToLogsOnError` when it failed without writing one.
    fn messages(&self, pod: &Pod, observed: &[ContainerStatus]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for c in observed
            .iter()
            .filter(|c| c.state == ContainerState::Exited)
        {
            let mut message = self
                .agent
                .volumes
                .termination_message(&self.uid, &c.id.name, c.id.attempt)
                .unwrap_or_default();
            let fallback = find_container(pod, &c.id.name)
                .and_then(|spec| spec.termination_message_policy.as_deref())
                == Some("FallbackToLogsOnError");
            if message.is_empty() && fallback && c.exit_code != Some(0) {
                message = crate::logs::tail_text(&c.log_path, 80, 2048);
            }
            if !message.is_empty() {
                out.insert(c.id.to_string(), message);
            }
        }
        out
    }

    async fn write_status(&mut self, pod: &Pod, observed: &[ContainerStatus], plan: &Plan) {
        let notes: BTreeMap<String, Note> = self
            .failures
            .iter()
            .map(|(name, f)| {
                let mut note = f.note.clone();
                if note.reason == "ErrImagePull" && f.retry_at > Timestamp::now() && f.count > 1 {
                    note.reason = "ImagePullBackOff".into();
                    note.message = format!(
                        "Back-off pulling image {:?}: {}",
                        image_of(pod, name),
                        f.note.message
                    );
                }
                (name.clone(), note)
            })
            .collect();
        let messages = self.messages(pod, observed);
        let status = status::pod_status(&StatusInput {
            pod,
            observed,
            plan,
            notes: &notes,
            messages: &messages,
            health: &self.probes.health(),
            host_ip: &self.facts.host_ip,
            pod_ip: self.facts.pod_ip.as_deref(),
            now: Timestamp::now(),
        });
        // Written already, unless someone else changed a condition since (the node controller
        // marks pods of an unreachable node not Ready; back in touch, the agent says again).
        if self.written.as_ref() == Some(&status) && conditions_agree(pod, &status) {
            return;
        }
        let (namespace, name) = pod_name(pod);
        let pods: Api<Pod> = Api::namespaced(self.agent.client.clone(), &namespace);
        let patch = json!({"status": status});
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(e) => tracing::warn!(%namespace, pod = %name, error = %e, "writing the pod status"),
        }
    }

    /// Stops every container (preStop hooks, SIGTERM, SIGKILL after `grace`), then removes
    /// the sandbox, the containers' logs and the volumes. Without the pod (it is gone from the
    /// API) there are no hooks to run.
    async fn tear_down(&self, pod: Option<&Pod>, grace: Duration) {
        let began = Instant::now();
        let ip = self.facts.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        if let (Some(network), Some(ip), Some(_)) = (&self.agent.network, ip, pod) {
            // Requests stop coming before the containers are told to stop.
            network
                .leave_endpoints(ip, (grace / 2).min(DRAIN_LIMIT))
                .await;
        }
        let grace = grace.saturating_sub(began.elapsed());
        let observed = self.observe().await;
        let running = observed
            .iter()
            .filter(|c| c.state == ContainerState::Running);
        let stops = running.map(|c| async move {
            match pod.and_then(|p| find_container(p, &c.id.name).map(|spec| (p, spec))) {
                Some((pod, spec)) => {
                    self.agent.events.normal(
                        pod,
                        Some(&spec.name),
                        "Killing",
                        format!("Stopping container {}", spec.name),
                    );
                    self.kill(pod, spec, c, grace).await
                }
                None => {
                    let runtime = self.runtime();
                    let id = c.id.clone();
                    if let Err(e) = blocking(move || runtime.stop_container(&id, grace)).await {
                        tracing::warn!(pod = %self.uid, error = %e, "stopping a container");
                    }
                }
            }
        });
        futures::future::join_all(stops).await;
        let runtime = self.runtime();
        let uid = self.uid.clone();
        if let Err(e) = blocking(move || runtime.remove_sandbox(&uid)).await {
            tracing::warn!(pod = %self.uid, error = %e, "removing the pod sandbox");
        }
        if let Err(e) = self.agent.volumes.remove(&self.uid) {
            tracing::warn!(pod = %self.uid, error = %e, "removing the pod's volumes");
        }
        if let Some(network) = &self.agent.network {
            network.set_local_pod(&self.uid, None);
            if let Err(e) = network.pods.detach(&self.uid).await {
                tracing::warn!(pod = %self.uid, error = %e, "removing the pod's network");
            }
        }
        tracing::info!(pod = %self.uid, "pod stopped and removed");
    }

    /// Deletes the pod for good (grace 0, this uid only): its containers are gone.
    async fn finish_deletion(&self, pod: &Pod) {
        let (namespace, name) = pod_name(pod);
        let pods: Api<Pod> = Api::namespaced(self.agent.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(%namespace, pod = %name, error = %e, "completing the pod's deletion")
            }
        }
    }
}

/// Whether the pod's conditions in the API have the statuses of `status`'s.
fn conditions_agree(pod: &Pod, status: &Value) -> bool {
    let api = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|ours| {
            api.into_iter()
                .flatten()
                .find(|c| ours["type"] == c.type_.as_str())
                .is_some_and(|c| ours["status"] == c.status.as_str())
        })
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
}

fn image_of(pod: &Pod, name: &str) -> String {
    find_container(pod, name)
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// The size of what `f` returns: here, of a future that is never made.
    fn returned_size<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_pods_worker_between_syncs_is_small() {
        // Every pod of the node keeps one such future for its whole life.
        let size = returned_size(super::run);
        assert!(size < 2048, "a pod worker's future takes {size} bytes");
    }
}
