//! The controller runtime inside `skiff server`: feeds of changes per kind turn into keys on a
//! work queue; workers reconcile each key from the current state (level-triggered), retrying
//! with backoff on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skiff_api::kinds::{self, Kind};
use skiff_api::object::selector_from_json;
use skiff_api::object::Lookup;
use skiff_api::LabelSelector;

use crate::cluster::{Changed, Cluster, ClusterError};
use crate::events::Recorder;
use crate::queue::Queue;
use crate::reconcile;

/// What a worker reconciles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    ReplicaSet {
        namespace: String,
        name: String,
    },
    Deployment {
        namespace: String,
        name: String,
    },
    /// An object (a pod, a ReplicaSet) whose labels no longer match the selector of its
    /// controller (by uid), which lets it go.
    Release {
        kind: &'static Kind,
        namespace: String,
        name: String,
        owner: String,
    },
}

pub(crate) fn kind(group: &str, plural: &str) -> &'static Kind {
    kinds::find(group, "v1", plural).expect("a kind of the table")
}

/// The string at `pointer` in `obj`, or "".
pub(crate) fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.lookup(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether `obj` is being deleted.
pub(crate) fn deleting(obj: &Value) -> bool {
    obj.lookup("/metadata/deletionTimestamp").is_some()
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.lookup(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The controlling owner of `obj` of `owner_kind`, if any: (name, uid).
pub(crate) fn controller_of<'a>(obj: &'a Value, owner_kind: &str) -> Option<(&'a str, &'a str)> {
    obj.lookup("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true && r["kind"] == owner_kind)
        .map(|r| {
            (
                r["name"].as_str().unwrap_or(""),
                r["uid"].as_str().unwrap_or(""),
            )
        })
}

/// The selectors of the Deployments and ReplicaSets followed, by uid, parsed once: an object
/// whose labels stop matching its controller's is released.
#[derive(Default)]
struct Selectors(Mutex<HashMap<String, LabelSelector>>);

impl Selectors {
    fn observe(&self, change: &Changed) {
        let uid = meta(&change.object, "uid").to_string();
        let mut map = self.0.lock().expect("selectors");
        match change
            .object
            .lookup("/spec/selector")
            .and_then(|s| selector_from_json(s).ok())
        {
            Some(selector) if !change.deleted => {
                map.insert(uid, selector);
            }
            _ => {
                map.remove(&uid);
            }
        }
    }

    /// Whether `obj`'s controller (by uid) is known and no longer selects it.
    fn strays(&self, obj: &Value, owner: &str) -> bool {
        let labels = skiff_api::disruption::labels_of(obj);
        self.0
            .lock()
            .expect("selectors")
            .get(owner)
            .is_some_and(|s| !s.matches(&labels))
    }
}

/// The keys a change of an object of `kind` calls for.
fn keys_for(kind: &'static Kind, change: &Changed, selectors: &Selectors) -> Vec<Key> {
    let obj = &change.object;
    let namespace = meta(obj, "namespace").to_string();
    let name = meta(obj, "name").to_string();
    let mut keys = Vec::new();
    let owner_kind = match kind.kind {
        "ReplicaSet" => "Deployment",
        "Pod" => "ReplicaSet",
        _ => "",
    };
    if let Some((owner, owner_uid)) = controller_of(obj, owner_kind) {
        if !change.deleted
            && obj.lookup("/metadata/deletionTimestamp").is_none()
            && selectors.strays(obj, owner_uid)
        {
            keys.push(Key::Release {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                owner: owner_uid.to_string(),
            });
        }
        let owner = owner.to_string();
        keys.push(match kind.kind {
            "ReplicaSet" => Key::Deployment {
                namespace: namespace.clone(),
                name: owner,
            },
            _ => Key::ReplicaSet {
                namespace: namespace.clone(),
                name: owner,
            },
        });
    }
    match kind.kind {
        "Deployment" => keys.push(Key::Deployment { namespace, name }),
        "ReplicaSet" => keys.push(Key::ReplicaSet { namespace, name }),
        _ => {}
    }
    keys
}

/// Follows one kind's changes for the life of the server, handing each to `on`.
pub(crate) async fn follow(
    cluster: Arc<dyn Cluster>,
    kind: &'static Kind,
    on: impl FnMut(&Changed) + Send + 'static,
) {
    follow_then(cluster, kind, on, || {}).await
}

/// Follows one kind's changes like [`follow`], calling `synced` once the first feed has
/// delivered the objects that existed when it began.
pub(crate) async fn follow_then(
    cluster: Arc<dyn Cluster>,
    kind: &'static Kind,
    mut on: impl FnMut(&Changed) + Send + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    let mut synced = Some(synced);
    loop {
        match cluster.changes(kind).await {
            Ok(feed) => {
                let (mut initial, mut changes) = (feed.initial, feed.changes);
                loop {
                    if initial == 0 {
                        if let Some(f) = synced.take() {
                            f();
                        }
                    }
                    let Some(change) = changes.recv().await else {
                        break;
                    };
                    on(&change);
                    initial = initial.saturating_sub(1);
                }
                tracing::info!(kind = kind.plural, "controller feed ended; following again");
            }
            Err(e) => tracing::warn!(kind = kind.plural, error = %e, "following changes"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Works `queue`'s keys with `sync` while this server leads: a key is done when synced (and
/// comes back after the delay `sync` answers, if any) or gone, and retried with backoff
/// otherwise. `what` names the controller in logs.
pub(crate) fn work_while_leading<K, F, Fut>(
    queue: Queue<K>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    sync: F,
) where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(K) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Duration>, ClusterError>> + Send,
{
    tokio::spawn(async move {
        loop {
            if leader.wait_for(|leads| *leads).await.is_err() {
                return;
            }
            let key = queue.next().await;
            match sync(key.clone()).await {
                Ok(again) => {
                    queue.done(&key);
                    if let Some(after) = again {
                        queue.add_after(key, after);
                    }
                }
                Err(ClusterError::NotFound(_)) => queue.done(&key),
                Err(e) => {
                    let delay = queue.retry(key.clone());
                    tracing::debug!(controller = what, ?key, error = %e, ?delay, "sync failed; retrying");
                }
            }
        }
    });
}

/// The recorders of the controllers' events, one per component.
struct Recorders {
    replicaset: Recorder,
    deployment: Recorder,
}

/// Reconciles one key; answers when to look at it again if nothing changes.
async fn sync(
    cluster: &dyn Cluster,
    events: &Recorders,
    key: Key,
) -> Result<Option<Duration>, ClusterError> {
    match key {
        Key::ReplicaSet { namespace, name } => {
            reconcile::replica_set(cluster, &events.replicaset, &namespace, &name).await?;
            Ok(None)
        }
        Key::Deployment { namespace, name } => {
            reconcile::deployment(cluster, &events.deployment, &namespace, &name).await
        }
        Key::Release {
            kind,
            namespace,
            name,
            owner,
        } => {
            reconcile::release(cluster, kind, &namespace, &name, &owner).await?;
            Ok(None)
        }
    }
}

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Workers reconciling Deployments, ReplicaSets and owners.
    pub workers: usize,
    /// Events last seen longer ago are deleted.
    pub event_ttl: Duration,
    pub node_lifecycle: crate::nodelifecycle::Settings,
    pub node_ipam: crate::nodeipam::Settings,
}

/// Starts the controllers, the scheduler, the node lifecycle, node IPAM, endpoints and
/// disruption controllers: leader election as `identity`, one feed per watched kind, workers that work
/// while this server leads, and the expiry of old events.
pub fn start(cluster: Arc<dyn Cluster>, identity: String, settings: Settings) {
    let queue = Queue::default();
    let leader = crate::leader::elect(cluster.clone(), identity);
    crate::scheduler::start(cluster.clone(), leader.clone());
    crate::nodelifecycle::start(cluster.clone(), leader.clone(), settings.node_lifecycle);
    crate::nodeipam::start(cluster.clone(), leader.clone(), settings.node_ipam);
    crate::endpoints::start(cluster.clone(), leader.clone());
    crate::disruption::start(cluster.clone(), leader.clone());
    let events = Arc::new(Recorders {
        replicaset: Recorder::new("replicaset-controller"),
        deployment: Recorder::new("deployment-controller"),
    });
    tokio::spawn(crate::events::expire(cluster.clone(), settings.event_ttl));
    let gc = crate::gc::start(cluster.clone(), leader.clone());
    let selectors = Arc::new(Selectors::default());
    // One feed per collected kind, shared by the collector and, for the workloads' kinds, the
    // Deployment and ReplicaSet controllers.
    for k in crate::gc::followed() {
        let (queue, gc, selectors) = (queue.clone(), gc.clone(), selectors.clone());
        let workload = matches!(k.kind, "Deployment" | "ReplicaSet" | "Pod");
        let synced = gc.clone();
        tokio::spawn(follow_then(
            cluster.clone(),
            k,
            move |change| {
                gc.observe(k, change);
                if workload {
                    if k.kind != "Pod" {
                        selectors.observe(change);
                    }
                    for key in keys_for(k, change, &selectors) {
                        queue.add(key);
                    }
                }
            },
            move || synced.synced(),
        ));
    }
    for _ in 0..settings.workers {
        let (cluster, events) = (cluster.clone(), events.clone());
        work_while_leading(queue.clone(), leader.clone(), "workloads", move |key| {
            let (cluster, events) = (cluster.clone(), events.clone());
            async move { sync(cluster.as_ref(), &events, key).await }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_call_for_their_controllers_and_strays_are_released() {
        let pod = |app: &str| {
            json!({"metadata": {"name": "web-abc", "namespace": "default", "uid": "p1", "labels": {"app": app},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9", "uid": "r1", "controller": true}]}})
        };
        let rs = json!({"metadata": {"name": "web-7d9", "namespace": "default", "uid": "r1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}});
        let selectors = Selectors::default();
        let keys = |kind, obj: &Value, deleted| {
            keys_for(
                kind,
                &Changed {
                    object: obj.clone().into(),
                    deleted,
                },
                &selectors,
            )
        };
        let ns = || "default".to_string();
        let rs_key = vec![Key::ReplicaSet {
            namespace: ns(),
            name: "web-7d9".into(),
        }];
        assert_eq!(keys(kind("", "pods"), &pod("web"), false), rs_key);
        // Relabelled before its controller is known: nothing to release yet.
        assert_eq!(keys(kind("", "pods"), &pod("debug"), false), rs_key);
        selectors.observe(&Changed {
            object: rs.clone().into(),
            deleted: false,
        });
        assert_eq!(keys(kind("", "pods"), &pod("web"), false), rs_key);
        let release = Key::Release {
            kind: kind("", "pods"),
            namespace: ns(),
            name: "web-abc".into(),
            owner: "r1".into(),
        };
        assert_eq!(
            keys(kind("", "pods"), &pod("debug"), false),
            [release, rs_key[0].clone()]
        );
        // A deleted pod is not released, its controller looks again.
        assert_eq!(keys(kind("", "pods"), &pod("debug"), true), rs_key);
        assert_eq!(keys(kind("apps", "replicasets"), &rs, false), rs_key);
    }
}
