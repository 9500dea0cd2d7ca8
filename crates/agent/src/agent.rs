//! The agent's shell: registers the node, keeps its heartbeat, follows the pods bound to it
//! (one watch, one worker per pod), pulls images, removes what no pod claims any more, prunes
//! old container attempts, and serves logs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use kube::runtime::watcher;
use skiff_runtime::image::{PullOptions, RegistryAuth};
use skiff_runtime::{ContainerStatus, ImageStore, Runtime};
use tokio::sync::{watch, Notify};

use crate::container::NodeFacts;
use crate::events::Recorder;
use crate::local::Local;
use crate::logs::ServingTls;
use crate::node::{self, Machine, NodeIdentity};
use crate::plan::Backoff;
use crate::volumes::Volumes;
use crate::worker::{self, pod_name};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering node {node}: {source}")]
    Register { node: String, source: kube::Error },
    #[error("registering node {node}: the server did not answer within {waited:?}")]
    RegisterTimeout { node: String, waited: Duration },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("agent TLS: {0}")]
    Tls(String),
    #[error("pod network: {0}")]
    Network(#[from] skiff_net::Error),
}

pub struct AgentConfig {
    pub node: NodeIdentity,
    /// Where the agent keeps the pods' volumes (`<dir>/pods`).
    pub data_dir: PathBuf,
    /// Where the agent's HTTPS endpoint (logs) listens; its port is published on the Node.
    pub listen: SocketAddr,
    pub tls: ServingTls,
    pub backoff: Backoff,
    pub lease_interval: Duration,
    pub lease_duration: Duration,
    pub status_every: Duration,
    /// The `kubernetes` Service's address and port, given to containers.
    pub api_service: Option<(String, u16)>,
    /// Registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Nothing leaves the machine: images are pulled only from registries on loopback, pods
    /// get no route out.
    pub isolated: bool,
    /// Pods get addresses on the node's bridge and Services are proxied; without it pods have
    /// loopback only.
    pub network: Option<crate::network::NetworkSettings>,
}

/// What the workers share.
pub struct Agent {
    pub client: kube::Client,
    pub config: AgentConfig,
    pub runtime: Arc<dyn Runtime>,
    /// The node's image store; none for runtimes without images (the fake one).
    pub images: Option<ImageStore>,
    pub volumes: Volumes,
    pub facts: NodeFacts,
    pub events: Recorder,
    /// The node's pod network, when it has one.
    pub network: Option<Arc<crate::network::Network>>,
    /// What the API last said of the node's pods, for a restart while the server is away.
    pub local: Local,
    /// Each pod of the node by namespace and name, as last seen, for the log endpoint.
    pods: Mutex<HashMap<(String, String), Arc<Pod>>>,
    /// How each worker is woken when the relist sees its containers change, by pod uid.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A started agent.
pub struct Running {
    pub agent: Arc<Agent>,
    /// The address of the agent's endpoint.
    pub addr: SocketAddr,
}

impl Agent {
    /// The waker of the worker of pod `uid`: notified when its containers change.
    pub fn waker(&self, uid: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("wakers lock")
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    /// Forgets the waker `waker` of pod `uid` (a newer worker's stays).
    pub fn forget_waker(&self, uid: &str, waker: &Arc<Notify>) {
        let mut wakers = self.wakers.lock().expect("wakers lock");
        if wakers.get(uid).is_some_and(|w| Arc::ptr_eq(w, waker)) {
            wakers.remove(uid);
        }
    }

    /// The pod of this node with that namespace and name, as last seen.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .lock()
            .expect("pods lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Makes sure the container's image is in the store, pulling it as its pull policy says.
    pub async fn ensure_image(&self, pod: &Pod, container: &Container) -> Result<(), String> {
        let Some(images) = &self.images else {
            return Ok(());
        };
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| skiff_api::defaults::pull_policy(&image).to_string());
        let present = images.get(&image).is_ok();
        match policy.as_str() {
            "Never" if present => return Ok(()),
            "Never" => {
                return Err(format!(
                    "container image {image:?} is not present with pull policy of Never"
                ))
            }
            "IfNotPresent" if present => {
                self.events.normal(
                    pod,
                    Some(&container.name),
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(());
            }
            _ => {}
        }
        if self.config.isolated {
            let registry = registry_of(&image);
            if !on_loopback(&registry) {
                return Err(format!(
                    "not pulling image {image:?} from {registry}: the node is isolated and reaches only registries on loopback"
                ));
            }
        }
        let auth = self.pull_credentials(pod, &image).await;
        let options = PullOptions {
            auth,
            insecure_registries: self.config.insecure_registries.clone(),
        };
        tracing::info!(%image, "pulling image");
        let name = Some(container.name.as_str());
        self.events
            .normal(pod, name, "Pulling", format!("Pulling image {image:?}"));
        let began = std::time::Instant::now();
        match images.pull(&image, &options, &|_| {}).await {
            Ok(_) => {
                let took = began.elapsed().as_secs_f64();
                self.events.normal(
                    pod,
                    name,
                    "Pulled",
                    format!("Successfully pulled image {image:?} in {took:.3}s"),
                );
                Ok(())
            }
            Err(e) => {
                let message = format!("failed to pull image {image:?}: {e}");
                self.events.warning(
                    pod,
                    name,
                    "Failed",
                    format!("Failed to pull image {image:?}: {e}"),
                );
                Err(message)
            }
        }
    }

    /// Credentials for the image's registry from the pod's `imagePullSecrets`.
    async fn pull_credentials(&self, pod: &Pod, image: &str) -> RegistryAuth {
        let (namespace, _) = pod_name(pod);
        let registry = registry_of(image);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        for reference in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            let Ok(Some(secret)) = secrets.get_opt(&reference.name).await else {
                continue;
            };
            let Some(config) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
            else {
                continue;
            };
            if let Ok(auth) = RegistryAuth::from_docker_config(&config.0, &registry) {
                if auth != RegistryAuth::Anonymous {
                    return auth;
                }
            }
        }
        RegistryAuth::Anonymous
    }
}

/// The registry (host[:port]) an image reference names.
fn registry_of(image: &str) -> String {
    skiff_runtime::image::normalize(image)
        .ok()
        .and_then(|n| n.split('/').next().map(str::to_string))
        .unwrap_or_default()
}

/// Whether a registry's host is this machine's loopback.
fn on_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The variables every container gets for the API server's Service.
fn api_service_env(service: &Option<(String, u16)>) -> Vec<(String, String)> {
    let Some((ip, port)) = service else {
        return Vec::new();
    };
    crate::container::service_link_env("kubernetes", ip, &[("https".into(), *port, "TCP".into())])
}

/// Registers the node and starts following its pods. Ready (the Node exists and is Ready)
/// when this returns.
pub async fn start(
    client: kube::Client,
    runtime: Arc<dyn Runtime>,
    images: Option<ImageStore>,
    mut config: AgentConfig,
) -> Result<Running, AgentError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.listen,
        source,
    })?;
    config.node.port = addr.port();
    let machine = Machine::read(&config.data_dir);
    let local = Local::new(config.data_dir.join(crate::local::DIR));
    let registered = tokio::time::timeout(
        REGISTER_WAIT,
        node::register(&client, &config.node, &machine),
    )
    .await;
    let node_name = config.node.name.clone();
    let offline = match registered {
        Ok(Ok(())) => {
            local.set_registered();
            false
        }
        Ok(Err(e)) if local.registered() => {
            tracing::warn!(node = %node_name, error = %e, "the server is out of reach; running the node's pods as last told");
            true
        }
        Err(_) if local.registered() => {
            tracing::warn!(node = %node_name, "the server does not answer; running the node's pods as last told");
            true
        }
        Ok(Err(source)) => {
            return Err(AgentError::Register {
                node: node_name,
                source,
            })
        }
        Err(_) => {
            return Err(AgentError::RegisterTimeout {
                node: node_name,
                waited: REGISTER_WAIT,
            })
        }
    };
    let network = match &config.network {
        Some(settings) => Some(
            crate::network::start(
                &client,
                &config.node.name,
                &config.node.ip,
                settings,
                config.isolated,
                config.data_dir.join("network"),
                &local,
            )
            .await?,
        ),
        None => None,
    };
    let facts = NodeFacts {
        host_ip: config.node.ip.clone(),
        pod_ip: None,
        service_env: api_service_env(&config.api_service),
        memory_bytes: machine.memory_bytes as i64,
        cpu_millis: machine.cpus as i64 * 1000,
    };
    let tls = crate::logs::server_config(&config.tls).map_err(AgentError::Tls)?;
    let agent = Arc::new(Agent {
        client: client.clone(),
        volumes: Volumes::new(config.data_dir.join("pods")),
        runtime,
        images,
        facts,
        events: Recorder::new(client.clone(), &config.node.name),
        network,
        local,
        pods: Mutex::new(HashMap::new()),
        wakers: Mutex::new(HashMap::new()),
        config,
    });
    let heartbeat = node::heartbeat(
        client,
        agent.config.node.clone(),
        machine,
        agent.config.lease_interval,
        agent.config.lease_duration,
        agent.config.status_every,
    );
    if offline {
        tokio::spawn(register_later(agent.clone(), heartbeat));
    } else {
        tokio::spawn(heartbeat);
    }
    tokio::spawn(crate::logs::serve(listener, tls, agent.clone()));
    tokio::spawn(follow_pods(agent.clone(), offline));
    tokio::spawn(prune(agent.clone()));
    tokio::spawn(relist(agent.clone()));
    Ok(Running { agent, addr })
}

/// How long the agent waits for the server at start before running from its local record.
const REGISTER_WAIT: Duration = Duration::from_secs(5);

/// Registers the node once the server answers again, then keeps its heartbeat.
async fn register_later(agent: Arc<Agent>, heartbeat: impl std::future::Future<Output = ()>) {
    let machine = Machine::read(&agent.config.data_dir);
    loop {
        let attempt = node::register(&agent.client, &agent.config.node, &machine);
        match tokio::time::timeout(REGISTER_WAIT, attempt).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => tracing::debug!(error = %e, "registering the node"),
            Err(_) => tracing::debug!("registering the node: no answer"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::info!(node = %agent.config.node.name, "the server answers again; node registered");
    heartbeat.await
}

/// How often every container of the node is listed to notice exits.
const RELIST: Duration = Duration::from_secs(1);

/// One list of the node's containers every second (kubelet's PLEG): the worker of each pod
/// whose containers changed since the last list is woken. Workers do not poll.
async fn relist(agent: Arc<Agent>) {
    let mut last: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
    loop {
        tokio::time::sleep(RELIST).await;
        let runtime = agent.runtime.clone();
        let listed = match worker::blocking(move || runtime.containers(None)).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "listing the node's containers");
                continue;
            }
        };
        let mut now: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for status in listed {
            now.entry(status.id.pod_uid.clone())
                .or_default()
                .push(status);
        }
        for statuses in now.values_mut() {
            statuses.sort_by(|a, b| (&a.id.name, a.id.attempt).cmp(&(&b.id.name, b.id.attempt)));
        }
        let wakers = agent.wakers.lock().expect("wakers lock");
        for (uid, waker) in wakers.iter() {
            if now.get(uid) != last.get(uid) {
                waker.notify_one();
            }
        }
        drop(wakers);
        last = now;
    }
}

/// Removes exited attempts beyond the newest of each container, now and then.
async fn prune(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let runtime = agent.runtime.clone();
        if let Err(e) = worker::blocking(move || runtime.prune_exited(1)).await {
            tracing::warn!(error = %e, "pruning exited containers");
        }
    }
}

/// One watch of the node's pods, each handed to its worker. `offline`: the server is out of
/// reach, so the pods of the local record run until the API's list says otherwise.
async fn follow_pods(agent: Arc<Agent>, offline: bool) {
    let pods: Api<Pod> = Api::all(agent.client.clone());
    let selector = format!("spec.nodeName={}", agent.config.node.name);
    let mut events = watcher(pods, watcher::Config::default().fields(&selector)).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    if offline {
        for pod in agent.local.pods() {
            tracing::info!(pod = ?pod_name(&pod), "running the pod as last told");
            route(&agent, &mut workers, pod);
        }
    }
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                route(&agent, &mut workers, pod);
            }
            Ok(watcher::Event::Apply(pod)) => route(&agent, &mut workers, pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                agent
                    .pods
                    .lock()
                    .expect("pods lock")
                    .remove(&pod_name(&pod));
                if let Some(tx) = workers.remove(&uid) {
                    tx.send_replace(None);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while the watch was down, and pods the runtime has that the
                // API does not (deleted while the agent was away): stop and remove them.
                let gone: Vec<String> = workers
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(tx) = workers.remove(&uid) {
                        tx.send_replace(None);
                    }
                }
                remove_orphans(&agent, &mut workers).await;
                if let Some(network) = &agent.network {
                    let live: HashSet<String> = workers.keys().cloned().collect();
                    if let Err(e) = network.pods.retain(&live).await {
                        tracing::warn!(error = %e, "releasing the network of pods that are gone");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the node's pods");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn route(
    agent: &Arc<Agent>,
    workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    mut pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    // The agent never reads who owns which field; every pod it keeps would carry them.
    pod.metadata.managed_fields = None;
    let pod = Arc::new(pod);
    agent
        .pods
        .lock()
        .expect("pods lock")
        .insert(pod_name(&pod), pod.clone());
    if pod.metadata.deletion_timestamp.is_none() {
        agent.local.keep_pod(&pod);
    }
    if let Some(tx) = workers.get(&uid) {
        if !tx.is_closed() {
            tx.send_replace(Some(pod));
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // Its worker finished the deletion already.
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(pod));
    tokio::spawn(worker::run(agent.clone(), uid.clone(), rx));
    workers.insert(uid, tx);
}

/// Sandboxes (and volumes) no pod of the API claims: pods deleted while the agent was away.
async fn remove_orphans(
    agent: &Arc<Agent>,
    workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
) {
    let runtime = agent.runtime.clone();
    let Ok(sandboxes) = worker::blocking(move || runtime.sandboxes()).await else {
        return;
    };
    let mut uids: HashSet<String> = sandboxes.into_iter().map(|s| s.config.uid).collect();
    uids.extend(agent.volumes.pods());
    for uid in uids {
        if workers.contains_key(&uid) {
            continue;
        }
        tracing::info!(pod = %uid, "removing a pod the API no longer has");
        let (tx, rx) = watch::channel(None);
        tokio::spawn(worker::run(agent.clone(), uid.clone(), rx));
        drop(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_count_as_local() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:v1"), "127.0.0.1:5000");
        for local in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
        ] {
            assert!(on_loopback(local), "{local}");
        }
        for remote in ["docker.io", "10.0.0.1:5000", "registry.example:5000"] {
            assert!(!on_loopback(remote), "{remote}");
        }
    }
}
