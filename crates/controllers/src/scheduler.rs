//! The scheduler's loop around `skiff-scheduler`'s pure core: it follows nodes and pods into a
//! snapshot, takes unscheduled pods by priority, binds them through `pods/binding` (counting a
//! pod as placed as soon as it is chosen, so that nothing is over-committed while bindings are
//! in flight), explains the pods that fit nowhere with the PodScheduled condition and a
//! FailedScheduling event, and preempts lower-priority pods when that makes room.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_api::object::Lookup;
use skiff_scheduler::{schedule, NodeInfo, PodInfo, Snapshot};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::cluster::{Changed, Cluster, ClusterError};
use crate::events::{Note, Recorder};
use crate::runtime::kind;

pub const SCHEDULER_NAME: &str = "default-scheduler";
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Bindings in flight at once.
const BINDERS: usize = 64;

/// An unscheduled pod waiting for a node.
struct Pending {
    info: Arc<PodInfo>,
    /// The pod as last seen, for status writes and events.
    json: Arc<Value>,
    attempts: u32,
    /// The message of its last failure, to write the condition only when it changes.
    last_message: Option<String>,
    /// Whether it waits for the cluster to change (and a backoff), rather than its turn.
    parked: bool,
}

#[derive(Default)]
struct State {
    snapshot: Snapshot,
    pending: HashMap<String, Pending>,
    /// Pods ready to try: highest priority first, then first come.
    active: BinaryHeap<(i32, std::cmp::Reverse<u64>, String)>,
    /// Pods waiting for their backoff to end.
    backoff: BTreeMap<(Instant, u64), String>,
    seq: u64,
    /// Rotates where each search starts, to spread load over the cluster.
    start: usize,
}

impl State {
    fn activate(&mut self, uid: &str) {
        if let Some(p) = self.pending.get_mut(uid) {
            p.parked = false;
            self.seq += 1;
            self.active.push((
                p.info.priority,
                std::cmp::Reverse(self.seq),
                uid.to_string(),
            ));
        }
    }

    /// The cluster changed in a way that may let parked pods in: try them again now.
    fn wake_parked(&mut self) {
        let parked: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.parked)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in parked {
            self.activate(&uid);
        }
    }

    fn park(&mut self, uid: &str) {
        let Some(p) = self.pending.get_mut(uid) else {
            return;
        };
        p.attempts += 1;
        p.parked = true;
        let delay = INITIAL_BACKOFF
            .saturating_mul(1 << p.attempts.min(8).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.seq += 1;
        self.backoff
            .insert((Instant::now() + delay, self.seq), uid.to_string());
    }
}

pub struct Scheduler {
    cluster: Arc<dyn Cluster>,
    state: Mutex<State>,
    wake: Notify,
    events: Recorder,
    binders: Arc<Semaphore>,
}

fn is_ours(pod: &Value) -> bool {
    pod.lookup("/spec/schedulerName")
        .and_then(Value::as_str)
        .is_none_or(|n| n == SCHEDULER_NAME)
}

fn phase_done(pod: &Value) -> bool {
    matches!(
        pod.lookup("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    fn node_changed(&self, change: Changed) {
        let mut state = self.state.lock().expect("scheduler lock");
        if change.deleted {
            let name = change.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default();
            state.snapshot.remove_node(name);
        } else {
            state.snapshot.set_node(NodeInfo::from_json(&change.object));
            state.wake_parked();
        }
        drop(state);
        self.wake.notify_one();
    }

    fn pod_changed(&self, change: Changed) {
        let pod = change.object;
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut state = self.state.lock().expect("scheduler lock");
        let node = pod
            .lookup("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        if change.deleted || phase_done(&pod) {
            state.pending.remove(&uid);
            if state.snapshot.unplace(&uid).is_some() {
                state.wake_parked();
            }
        } else if let Some(node) = node {
            state.pending.remove(&uid);
            state
                .snapshot
                .place(Arc::new(PodInfo::from_json(&pod)), node);
        } else if is_ours(&pod) && pod.lookup("/metadata/deletionTimestamp").is_none() {
            let info = Arc::new(PodInfo::from_json(&pod));
            match state.pending.get_mut(&uid) {
                Some(p) => {
                    p.info = info;
                    p.json = pod;
                }
                None => {
                    // Assumed on a node while its binding is in flight: the binding decides.
                    if state.snapshot.placed_on(&uid).is_some() {
                        return;
                    }
                    state.pending.insert(
                        uid.clone(),
                        Pending {
                            info,
                            json: pod,
                            attempts: 0,
                            last_message: None,
                            parked: false,
                        },
                    );
                    state.activate(&uid);
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The next pod to try, waiting for one.
    async fn next(&self) -> String {
        loop {
            let wait_until = {
                let mut state = self.state.lock().expect("scheduler lock");
                let now = Instant::now();
                while let Some((&(at, seq), _)) = state.backoff.iter().next() {
                    if at > now {
                        break;
                    }
                    let uid = state.backoff.remove(&(at, seq)).expect("just seen");
                    if state.pending.get(&uid).is_some_and(|p| p.parked) {
                        state.activate(&uid);
                    }
                }
                while let Some((_, _, uid)) = state.active.pop() {
                    if state.pending.get(&uid).is_some_and(|p| !p.parked) {
                        return uid;
                    }
                }
                state.backoff.keys().next().map(|(at, _)| *at)
            };
            match wait_until {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn attempt(self: &Arc<Self>, uid: String) {
        let decision = {
            let mut state = self.state.lock().expect("scheduler lock");
            let Some(pending) = state.pending.get(&uid) else {
                return;
            };
            let info = pending.info.clone();
            let json = pending.json.clone();
            state.start = state.start.wrapping_add(1);
            let start = state.start;
            let decision = schedule(&state.snapshot, &info, start);
            if let Ok(placement) = &decision {
                // Assumed: counted on the node before the binding is seen back.
                state.pending.remove(&uid);
                state.snapshot.place(info.clone(), &placement.node);
            }
            (decision, info, json)
        };
        match decision {
            (Ok(placement), info, json) => {
                let permit = self
                    .binders
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let this = self.clone();
                tokio::spawn(async move {
                    this.bind(&info, json, &placement.node).await;
                    drop(permit);
                });
            }
            (Err(diagnosis), info, json) => {
                if let Some(preemption) = &diagnosis.preemption {
                    self.preempt(&info, &json, preemption).await;
                }
                self.unschedulable(&uid, json, &diagnosis.message).await;
            }
        }
    }

    async fn bind(&self, info: &PodInfo, json: Arc<Value>, node: &str) {
        match self
            .cluster
            .bind(&info.namespace, &info.name, &info.uid, node)
            .await
        {
            Ok(()) => {
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    info.namespace, info.name
                );
                self.events
                    .record(
                        self.cluster.as_ref(),
                        &json,
                        Note {
                            warning: false,
                            reason: "Scheduled",
                            message,
                        },
                    )
                    .await;
            }
            Err(e) => {
                tracing::debug!(pod = %info.name, %node, error = %e, "binding failed");
                let mut state = self.state.lock().expect("scheduler lock");
                if state.snapshot.placed_on(&info.uid) == Some(node) {
                    state.snapshot.unplace(&info.uid);
                }
                // Gone, or bound by someone else: its feed says which; otherwise try again.
                if !matches!(e, ClusterError::NotFound(_)) {
                    state.pending.insert(
                        info.uid.clone(),
                        Pending {
                            info: Arc::new(info.clone()),
                            json,
                            attempts: 1,
                            last_message: None,
                            parked: true,
                        },
                    );
                    state.park(&info.uid);
                }
                drop(state);
                self.wake.notify_one();
            }
        }
    }

    /// Evicts the victims and nominates the node, where the pod will fit once they are gone.
    async fn preempt(
        &self,
        info: &PodInfo,
        json: &Value,
        preemption: &skiff_scheduler::Preemption,
    ) {
        let pods = kind("", "pods");
        for victim in &preemption.victims {
            let victim_json = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": victim.name, "namespace": victim.namespace, "uid": victim.uid},
            });
            match self
                .cluster
                .delete(pods, &victim.namespace, &victim.name, &victim.uid, false)
                .await
            {
                Ok(()) | Err(ClusterError::NotFound(_)) => {
                    let message =
                        format!("Preempted by pod {} on node {}", info.uid, preemption.node);
                    self.events
                        .record(
                            self.cluster.as_ref(),
                            &victim_json,
                            Note {
                                warning: false,
                                reason: "Preempted",
                                message,
                            },
                        )
                        .await;
                }
                Err(e) => tracing::debug!(victim = %victim.name, error = %e, "preempting"),
            }
        }
        let mut nominated = json.clone();
        nominated["status"]["nominatedNodeName"] = json!(preemption.node);
        let _ = self.cluster.update_status(pods, nominated).await;
    }

    async fn unschedulable(&self, uid: &str, json: Arc<Value>, message: &str) {
        let changed = {
            let mut state = self.state.lock().expect("scheduler lock");
            let Some(p) = state.pending.get_mut(uid) else {
                return;
            };
            let changed = p.last_message.as_deref() != Some(message);
            p.last_message = Some(message.to_string());
            state.park(uid);
            changed
        };
        self.events
            .record(
                self.cluster.as_ref(),
                &json,
                Note {
                    warning: true,
                    reason: "FailedScheduling",
                    message: message.to_string(),
                },
            )
            .await;
        if changed {
            let mut pod = Arc::unwrap_or_clone(json);
            let now = skiff_api::object::timestamp(jiff::Timestamp::now());
            skiff_api::object::set_condition(
                &mut pod,
                json!({
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": now, "lastProbeTime": null,
                }),
            );
            if let Err(e) = self.cluster.update_status(kind("", "pods"), pod).await {
                tracing::debug!(error = %e, "writing the PodScheduled condition");
            }
        }
    }
}

/// Follows one kind for the life of the server.
async fn follow(scheduler: Arc<Scheduler>, plural: &'static str) {
    let k = kind("", plural);
    loop {
        match scheduler.cluster.changes(k).await {
            Ok(feed) => {
                let mut changes = feed.changes;
                while let Some(change) = changes.recv().await {
                    match plural {
                        "nodes" => scheduler.node_changed(change),
                        _ => scheduler.pod_changed(change),
                    }
                }
            }
            Err(e) => tracing::warn!(kind = plural, error = %e, "scheduler following changes"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the scheduler: it follows nodes and pods always, and schedules while `leader` says
/// this server leads.
pub fn start(cluster: Arc<dyn Cluster>, mut leader: watch::Receiver<bool>) -> Arc<Scheduler> {
    let scheduler = Arc::new(Scheduler {
        cluster,
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        events: Recorder::new(SCHEDULER_NAME),
        binders: Arc::new(Semaphore::new(BINDERS)),
    });
    tokio::spawn(follow(scheduler.clone(), "nodes"));
    tokio::spawn(follow(scheduler.clone(), "pods"));
    let this = scheduler.clone();
    tokio::spawn(async move {
        loop {
            if leader.wait_for(|leads| *leads).await.is_err() {
                return;
            }
            let uid = this.next().await;
            this.attempt(uid).await;
        }
    });
    scheduler
}
