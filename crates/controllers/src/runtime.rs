//! The controller runtime inside `skiff server`: feeds of changes per kind turn into keys on a
//! work queue; workers reconcile each key from the current state (level-triggered), retrying
//! with backoff on failure.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_api::kinds::{self, Kind};

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
    /// The dependents of a deleted owner (by uid) in a namespace.
    Orphans {
        namespace: String,
        owner: String,
    },
    /// An owner held by a `foregroundDeletion` or `orphan` finalizer.
    Finalize {
        kind: &'static Kind,
        namespace: String,
        name: String,
    },
}

/// The kind of an owner reference's `kind`, among those the collector follows.
fn owner_kind(kind: &str) -> Option<&'static Kind> {
    match kind {
        "Deployment" => Some(self::kind("apps", "deployments")),
        "ReplicaSet" => Some(self::kind("apps", "replicasets")),
        _ => None,
    }
}

/// Held by a finalizer the garbage collector takes off.
fn held(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|f| f == "orphan" || f == "foregroundDeletion"))
}

pub(crate) fn kind(group: &str, plural: &str) -> &'static Kind {
    kinds::find(group, "v1", plural).expect("a kind of the table")
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The controlling owner of `obj` of `owner_kind`, if any: (name, uid).
pub(crate) fn controller_of<'a>(obj: &'a Value, owner_kind: &str) -> Option<(&'a str, &'a str)> {
    obj.pointer("/metadata/ownerReferences")?
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

/// The keys a change of an object of `kind` calls for.
fn keys_for(kind: &Kind, change: &Changed) -> Vec<Key> {
    let obj = &change.object;
    let namespace = meta(obj, "namespace").to_string();
    let name = meta(obj, "name").to_string();
    let mut keys = Vec::new();
    // Only kinds that own something have dependents to delete (a deleted pod has none).
    if change.deleted && owner_kind(kind.kind).is_some() {
        keys.push(Key::Orphans {
            namespace: namespace.clone(),
            owner: meta(obj, "uid").to_string(),
        });
    }
    if held(obj) {
        if let Some(k) = owner_kind(kind.kind) {
            keys.push(Key::Finalize {
                kind: k,
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
    }
    // A dependent that goes (or changes) may release an owner waiting for it.
    let owners = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for owner in owners {
        if let (Some(k), Some(owner)) = (
            owner["kind"].as_str().and_then(owner_kind),
            owner["name"].as_str(),
        ) {
            keys.push(Key::Finalize {
                kind: k,
                namespace: namespace.clone(),
                name: owner.to_string(),
            });
        }
    }
    match kind.kind {
        "Deployment" => keys.push(Key::Deployment { namespace, name }),
        "ReplicaSet" => {
            if let Some((owner, _)) = controller_of(obj, "Deployment") {
                keys.push(Key::Deployment {
                    namespace: namespace.clone(),
                    name: owner.to_string(),
                });
            }
            keys.push(Key::ReplicaSet { namespace, name });
        }
        "Pod" => {
            if let Some((owner, _)) = controller_of(obj, "ReplicaSet") {
                keys.push(Key::ReplicaSet {
                    namespace,
                    name: owner.to_string(),
                });
            }
        }
        _ => {}
    }
    keys
}

/// Follows one kind's changes for the life of the server, handing each to `on`.
pub(crate) async fn follow(
    cluster: Arc<dyn Cluster>,
    kind: &'static Kind,
    mut on: impl FnMut(&Changed) + Send + 'static,
) {
    loop {
        match cluster.changes(kind).await {
            Ok(mut changes) => {
                while let Some(change) = changes.recv().await {
                    on(&change);
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

async fn work(
    cluster: Arc<dyn Cluster>,
    queue: Queue<Key>,
    events: Arc<Recorders>,
    mut leader: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // Only the leader's workers take keys; the others' wait in the queue, so a new leader
        // starts with every object's key.
        if leader.wait_for(|leads| *leads).await.is_err() {
            return;
        }
        let key = queue.next().await;
        let result = match &key {
            Key::ReplicaSet { namespace, name } => {
                reconcile::replica_set(cluster.as_ref(), &events.replicaset, namespace, name).await
            }
            Key::Deployment { namespace, name } => {
                match reconcile::deployment(cluster.as_ref(), &events.deployment, namespace, name)
                    .await
                {
                    Ok(Some(later)) => {
                        queue.add_after(key.clone(), later);
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            Key::Orphans { namespace, owner } => {
                reconcile::orphans(cluster.as_ref(), namespace, owner).await
            }
            Key::Finalize {
                kind,
                namespace,
                name,
            } => reconcile::finalize(cluster.as_ref(), kind, namespace, name).await,
        };
        match result {
            Ok(()) => queue.done(&key),
            Err(ClusterError::NotFound(_)) => queue.done(&key),
            Err(e) => {
                let delay = queue.retry(key.clone());
                tracing::debug!(?key, error = %e, ?delay, "reconcile failed; retrying");
            }
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
    for k in [
        kind("apps", "deployments"),
        kind("apps", "replicasets"),
        kind("", "pods"),
    ] {
        let queue = queue.clone();
        tokio::spawn(follow(cluster.clone(), k, move |change| {
            for key in keys_for(k, change) {
                queue.add(key);
            }
        }));
    }
    for _ in 0..settings.workers {
        tokio::spawn(work(
            cluster.clone(),
            queue.clone(),
            events.clone(),
            leader.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_call_for_their_owners() {
        let pod = json!({"metadata": {"name": "web-abc", "namespace": "default", "uid": "p1",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9", "uid": "r1", "controller": true}]}});
        let rs = json!({"metadata": {"name": "web-7d9", "namespace": "default", "uid": "r1",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}});
        let key = |kind, obj: &Value, deleted| {
            keys_for(
                kind,
                &Changed {
                    object: obj.clone(),
                    deleted,
                },
            )
        };
        let ns = || "default".to_string();
        assert_eq!(
            key(kind("", "pods"), &pod, false),
            [
                Key::Finalize {
                    kind: kind("apps", "replicasets"),
                    namespace: ns(),
                    name: "web-7d9".into()
                },
                Key::ReplicaSet {
                    namespace: ns(),
                    name: "web-7d9".into()
                }
            ]
        );
        assert_eq!(
            key(kind("apps", "replicasets"), &rs, true),
            [
                Key::Orphans {
                    namespace: ns(),
                    owner: "r1".into()
                },
                Key::Finalize {
                    kind: kind("apps", "deployments"),
                    namespace: ns(),
                    name: "web".into()
                },
                Key::Deployment {
                    namespace: ns(),
                    name: "web".into()
                },
                Key::ReplicaSet {
                    namespace: ns(),
                    name: "web-7d9".into()
                },
            ]
        );
    }
}
