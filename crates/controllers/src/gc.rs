//! The garbage collector: the graph of ownerReferences over every collected kind. Dependents of
//! an owner that is gone, or never existed (a dangling reference), are deleted once no owner of
//! theirs remains; owners held by the `orphan` finalizer let go once their dependents no longer
//! name them, those held by `foregroundDeletion` once the dependents that block it are gone.
//! The graph says whom to look at; what is done is decided from the objects read again.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_api::kinds::{self, Kind};
use skiff_api::object::Lookup;
use tokio::sync::watch;

use crate::cluster::{Changed, Cluster, ClusterError};
use crate::queue::Queue;
use crate::runtime::{deleting, text};

/// How long a reference to an owner not seen yet waits before it is looked up: at start the
/// owners' feeds may not have delivered them.
const DANGLING_WAIT: Duration = Duration::from_secs(2);

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// An object's uid, kept small (uids are UUIDs; anything else is hashed).
type Uid = u128;

fn uid_of(text: &str) -> Option<Uid> {
    if text.is_empty() {
        return None;
    }
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 {
        if let Ok(u) = u128::from_str_radix(&hex, 16) {
            return Some(u);
        }
    }
    let mut high = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut high);
    let mut low = std::collections::hash_map::DefaultHasher::new();
    (text, 1u8).hash(&mut low);
    Some((u128::from(high.finish()) << 64) | u128::from(low.finish()))
}

fn has_finalizer(obj: &Value, finalizer: &str) -> bool {
    obj.lookup("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// Deleted and held by a finalizer the collector takes off.
fn held(obj: &Value) -> bool {
    deleting(obj) && (has_finalizer(obj, ORPHAN) || has_finalizer(obj, FOREGROUND))
}

fn references(obj: &Value) -> &[Value] {
    obj.lookup("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Where an object is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    pub kind: &'static Kind,
    pub namespace: String,
    pub name: String,
}

impl Place {
    fn of(kind: &'static Kind, obj: &Value) -> Place {
        Place {
            kind,
            namespace: text(obj, "/metadata/namespace").to_string(),
            name: text(obj, "/metadata/name").to_string(),
        }
    }
}

/// What the collector's workers look at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// A dependent whose owners may be gone: deleted, or freed of the references, once none
    /// remains.
    Dependent { place: Place, uid: String },
    /// An owner held by the `orphan` or `foregroundDeletion` finalizer.
    Owner(Place),
}

/// An object that names owners.
struct Node {
    place: Place,
    uid: String,
    /// Its owners, each with whether it blocks that owner's foreground deletion.
    owners: Vec<(Uid, bool)>,
}

/// The ownerReferences of every object followed, both ways.
#[derive(Default)]
pub struct Graph {
    /// Every object seen and not deleted.
    present: HashSet<Uid>,
    /// The objects that name owners.
    nodes: HashMap<Uid, Node>,
    /// Each owner's dependents.
    dependents: HashMap<Uid, HashSet<Uid>>,
    /// Owners held by one of the collector's finalizers.
    held: HashMap<Uid, Place>,
}

impl Graph {
    /// Takes in one change of an object of `kind`; answers what to look at, and after how long.
    pub fn observe(&mut self, kind: &'static Kind, change: &Changed) -> Vec<(Work, Duration)> {
        let obj = &change.object;
        let Some(uid) = uid_of(text(obj, "/metadata/uid")) else {
            return Vec::new();
        };
        let mut work = Vec::new();
        let before = self.unlink(uid);
        if change.deleted {
            self.present.remove(&uid);
            self.held.remove(&uid);
            // Its dependents may have lost their last owner.
            for dependent in self.dependents.get(&uid).into_iter().flatten() {
                if let Some(node) = self.nodes.get(dependent) {
                    work.push((
                        Work::Dependent {
                            place: node.place.clone(),
                            uid: node.uid.clone(),
                        },
                        Duration::ZERO,
                    ));
                }
            }
        } else {
            self.present.insert(uid);
            if held(obj) {
                self.held.insert(uid, Place::of(kind, obj));
                work.push((Work::Owner(Place::of(kind, obj)), Duration::ZERO));
            } else {
                self.held.remove(&uid);
            }
            let owners: Vec<(Uid, bool)> = references(obj)
                .iter()
                .filter_map(|r| {
                    let owner = uid_of(r["uid"].as_str().unwrap_or(""))?;
                    Some((owner, r["blockOwnerDeletion"] == true))
                })
                .collect();
            if !owners.is_empty() {
                let new_owner = |o: &Uid| !before.iter().any(|(b, _)| b == o);
                if owners
                    .iter()
                    .any(|(o, _)| new_owner(o) && !self.present.contains(o))
                {
                    // An owner not seen: it may not exist at all.
                    work.push((
                        Work::Dependent {
                            place: Place::of(kind, obj),
                            uid: text(obj, "/metadata/uid").to_string(),
                        },
                        DANGLING_WAIT,
                    ));
                }
                for (owner, _) in &owners {
                    self.dependents.entry(*owner).or_default().insert(uid);
                }
                self.nodes.insert(
                    uid,
                    Node {
                        place: Place::of(kind, obj),
                        uid: text(obj, "/metadata/uid").to_string(),
                        owners: owners.clone(),
                    },
                );
            }
        }
        // A dependent that changes or goes may release an owner waiting for it.
        let after = self.nodes.get(&uid).map(|n| n.owners.clone());
        for (owner, _) in before.iter().chain(after.iter().flatten()) {
            if let Some(place) = self.held.get(owner) {
                work.push((Work::Owner(place.clone()), Duration::ZERO));
            }
        }
        work.dedup();
        work
    }

    /// Takes `uid`'s references out of the graph; answers them.
    fn unlink(&mut self, uid: Uid) -> Vec<(Uid, bool)> {
        let Some(node) = self.nodes.remove(&uid) else {
            return Vec::new();
        };
        for (owner, _) in &node.owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(&uid);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
        node.owners
    }

    /// The dependents of `owner`, each with whether it blocks the owner's foreground deletion.
    fn dependents_of(&self, owner: Uid) -> Vec<(Place, String, bool)> {
        self.dependents
            .get(&owner)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
            .map(|n| {
                let blocks = n.owners.iter().any(|(o, b)| *o == owner && *b);
                (n.place.clone(), n.uid.clone(), blocks)
            })
            .collect()
    }

    fn has_dependents(&self, uid: &str) -> bool {
        uid_of(uid).is_some_and(|u| self.dependents.contains_key(&u))
    }

    /// Whether every owner `uid` names has been seen and none is held.
    fn owners_present(&self, uid: &str) -> bool {
        uid_of(uid)
            .and_then(|u| self.nodes.get(&u))
            .is_some_and(|n| {
                n.owners
                    .iter()
                    .all(|(o, _)| self.present.contains(o) && !self.held.contains_key(o))
            })
    }
}

/// The garbage collector: its graph, fed by the controllers' feeds, and its work queue.
pub struct Collector {
    graph: Mutex<Graph>,
    queue: Queue<Work>,
    /// Feeds that have not yet delivered the objects that existed when they began.
    unsynced: AtomicUsize,
    synced: watch::Sender<bool>,
}

/// The kinds the collector follows: those it collects, each once (a kind served in two
/// versions is followed in its storage version).
pub fn followed() -> impl Iterator<Item = &'static Kind> {
    kinds::all()
        .iter()
        .filter(|k| k.collected() && k.stored_as.is_none())
}

impl Collector {
    /// Takes in one change of an object of `kind`.
    pub fn observe(&self, kind: &'static Kind, change: &Changed) {
        let work = self.graph.lock().expect("gc graph").observe(kind, change);
        for (w, after) in work {
            if after.is_zero() {
                self.queue.add(w);
            } else {
                self.queue.add_after(w, after);
            }
        }
    }

    /// Notes that one followed kind's feed delivered its first objects; the collector works
    /// once all have, so that it never takes an owner not seen yet for one that is gone.
    pub fn synced(&self) {
        if self.unsynced.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.synced.send_replace(true);
        }
    }
}

/// Starts the collector's workers (while this server leads, once every feed has synced). The
/// caller feeds it every followed kind's changes and says when each feed synced.
pub fn start(cluster: Arc<dyn Cluster>, leader: watch::Receiver<bool>) -> Arc<Collector> {
    let (synced, mut ready) = watch::channel(false);
    let collector = Arc::new(Collector {
        graph: Mutex::new(Graph::default()),
        queue: Queue::default(),
        unsynced: AtomicUsize::new(followed().count()),
        synced,
    });
    let gc = collector.clone();
    tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let queue = gc.queue.clone();
        crate::runtime::work_while_leading(queue, leader, "garbage collector", move |work| {
            let (cluster, gc) = (cluster.clone(), gc.clone());
            async move {
                match work {
                    Work::Dependent { place, uid } => {
                        attempt_to_delete(cluster.as_ref(), &gc, &place, &uid).await?
                    }
                    Work::Owner(place) => release(cluster.as_ref(), &gc, &place).await?,
                }
                Ok(None)
            }
        });
    });
    collector
}

/// What became of one owner a dependent names.
#[derive(Debug, PartialEq, Eq)]
enum OwnerState {
    /// Exists (or cannot be looked up: an unknown kind is never taken for gone).
    Solid,
    /// Gone, or replaced by another object of the same name.
    Dangling,
    /// Being deleted in the foreground: waiting for its dependents.
    Waiting,
}

async fn owner_state(
    cluster: &dyn Cluster,
    dependent: &Place,
    reference: &Value,
) -> Result<OwnerState, ClusterError> {
    let Some(kind) = kinds::owner(
        reference["apiVersion"].as_str().unwrap_or(""),
        reference["kind"].as_str().unwrap_or(""),
    ) else {
        return Ok(OwnerState::Solid);
    };
    let namespace = match (kind.namespaced, dependent.namespace.as_str()) {
        (false, _) => "",
        // A cluster-scoped object cannot be owned by a namespaced one: left alone, as Kubernetes.
        (true, "") => return Ok(OwnerState::Solid),
        (true, ns) => ns,
    };
    let name = reference["name"].as_str().unwrap_or("");
    Ok(match cluster.get(kind, namespace, name).await? {
        Some(owner) if text(&owner, "/metadata/uid") == reference["uid"].as_str().unwrap_or("") => {
            if deleting(&owner) && has_finalizer(&owner, FOREGROUND) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        }
        _ => OwnerState::Dangling,
    })
}

/// Kubernetes' `attemptToDeleteItem`: a dependent with an owner left loses its references to
/// the gone and the waiting ones; one without is deleted (in the foreground when an owner waits
/// for it and it has dependents of its own).
async fn attempt_to_delete(
    cluster: &dyn Cluster,
    gc: &Collector,
    place: &Place,
    uid: &str,
) -> Result<(), ClusterError> {
    let suspect = {
        let graph = gc.graph.lock().expect("gc graph");
        !graph.owners_present(uid)
    };
    if !suspect {
        return Ok(());
    }
    let Some(obj) = cluster
        .get(place.kind, &place.namespace, &place.name)
        .await?
    else {
        return Ok(());
    };
    if text(&obj, "/metadata/uid") != uid || deleting(&obj) {
        return Ok(());
    }
    let mut solid = 0;
    let mut gone = Vec::new();
    let mut waiting = false;
    for reference in references(&obj) {
        match owner_state(cluster, place, reference).await? {
            OwnerState::Solid => solid += 1,
            OwnerState::Dangling => gone.push(reference["uid"].clone()),
            OwnerState::Waiting => {
                waiting = true;
                gone.push(reference["uid"].clone());
            }
        }
    }
    if solid > 0 {
        if gone.is_empty() {
            return Ok(());
        }
        let mut freed = obj.clone();
        if let Some(refs) = freed
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| !gone.contains(&r["uid"]));
        }
        cluster.update(place.kind, freed).await?;
        return Ok(());
    }
    let foreground = waiting && gc.graph.lock().expect("gc graph").has_dependents(uid);
    tracing::debug!(kind = place.kind.plural, namespace = %place.namespace, name = %place.name,
        foreground, "deleting an object whose owners are gone");
    match cluster
        .delete(place.kind, &place.namespace, &place.name, uid, foreground)
        .await
    {
        Ok(()) | Err(ClusterError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// An owner held by `orphan` lets go once its dependents no longer name it (the collector takes
/// the references off); one held by `foregroundDeletion` once the dependents that block it are
/// gone (the collector deletes them all).
async fn release(cluster: &dyn Cluster, gc: &Collector, place: &Place) -> Result<(), ClusterError> {
    let Some(owner) = cluster
        .get(place.kind, &place.namespace, &place.name)
        .await?
    else {
        return Ok(());
    };
    if !held(&owner) {
        return Ok(());
    }
    let uid = text(&owner, "/metadata/uid").to_string();
    let dependents = gc
        .graph
        .lock()
        .expect("gc graph")
        .dependents_of(uid_of(&uid).unwrap_or_default());
    let finalizer = if has_finalizer(&owner, ORPHAN) {
        for (dep_place, dep_uid, _) in &dependents {
            let Some(mut dep) = cluster
                .get(dep_place.kind, &dep_place.namespace, &dep_place.name)
                .await?
            else {
                continue;
            };
            if text(&dep, "/metadata/uid") != dep_uid {
                continue;
            }
            if let Some(refs) = dep
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r["uid"] != uid.as_str());
            }
            cluster.update(dep_place.kind, dep).await?;
        }
        ORPHAN
    } else {
        for (dep_place, dep_uid, _) in &dependents {
            attempt_to_delete(cluster, gc, dep_place, dep_uid).await?;
        }
        if dependents.iter().any(|(_, _, blocks)| *blocks) {
            // Looked at again as each of them goes.
            return Ok(());
        }
        FOREGROUND
    };
    let mut released = owner.clone();
    if let Some(list) = released
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        list.retain(|f| f != finalizer);
    }
    if released["metadata"]["finalizers"] == json!([]) {
        released["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("finalizers");
    }
    cluster.update(place.kind, released).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(group: &str, plural: &str) -> &'static Kind {
        kinds::find(group, "v1", plural).unwrap()
    }

    const RS: &str = "00000000-0000-0000-0000-0000000000a1";
    const POD: &str = "00000000-0000-0000-0000-0000000000b1";

    fn pod(owner: Option<(&str, bool)>) -> Value {
        let mut p = json!({"metadata": {"name": "web-1", "namespace": "default", "uid": POD}});
        if let Some((uid, block)) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web", "uid": uid, "controller": true, "blockOwnerDeletion": block}]);
        }
        p
    }

    fn rs(finalizer: Option<&str>) -> Value {
        let mut r = json!({"metadata": {"name": "web", "namespace": "default", "uid": RS}});
        if let Some(f) = finalizer {
            r["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
            r["metadata"]["finalizers"] = json!([f]);
        }
        r
    }

    fn put(object: Value) -> Changed {
        Changed {
            object: object.into(),
            deleted: false,
        }
    }

    fn gone(object: Value) -> Changed {
        Changed {
            object: object.into(),
            deleted: true,
        }
    }

    fn dependent() -> Work {
        Work::Dependent {
            place: Place::of(kind("", "pods"), &pod(None)),
            uid: POD.into(),
        }
    }

    #[test]
    fn uids_are_numbers_and_other_texts_are_hashed() {
        assert_eq!(uid_of(RS), Some(0xa1));
        assert_eq!(uid_of(""), None);
        assert_eq!(uid_of("not-a-uuid"), uid_of("not-a-uuid"));
        assert_ne!(uid_of("not-a-uuid"), uid_of("not-a-uuid2"));
    }

    #[test]
    fn owners_that_go_or_were_never_seen_make_their_dependents_looked_at() {
        let (pods, sets) = (kind("", "pods"), kind("apps", "replicasets"));
        let mut g = Graph::default();
        // A pod whose owner was not seen (yet): looked at after a while.
        assert_eq!(
            g.observe(pods, &put(pod(Some((RS, true))))),
            [(dependent(), DANGLING_WAIT)]
        );
        assert!(!g.owners_present(POD));
        // Its owner appears: nothing to do, and the pod's owners are all there.
        assert!(g.observe(sets, &put(rs(None))).is_empty());
        assert!(g.owners_present(POD));
        // The same pod again: nothing.
        assert!(g.observe(pods, &put(pod(Some((RS, true))))).is_empty());
        // The owner goes: its dependent is looked at at once.
        assert_eq!(
            g.observe(sets, &gone(rs(None))),
            [(dependent(), Duration::ZERO)]
        );
        // The pod goes: no longer anyone's dependent.
        assert!(g.observe(pods, &gone(pod(Some((RS, true))))).is_empty());
        assert!(g.dependents.is_empty() && g.nodes.is_empty());
        // Objects without owners are only counted present.
        assert!(g.observe(pods, &put(pod(None))).is_empty());
        assert!(g.present.contains(&uid_of(POD).unwrap()));
    }

    #[test]
    fn held_owners_are_looked_at_as_their_dependents_change() {
        let (pods, sets) = (kind("", "pods"), kind("apps", "replicasets"));
        let mut g = Graph::default();
        g.observe(sets, &put(rs(None)));
        g.observe(pods, &put(pod(Some((RS, true)))));
        let owner = Work::Owner(Place::of(sets, &rs(None)));
        // Deleted in the foreground: the owner is held and looked at.
        assert_eq!(
            g.observe(sets, &put(rs(Some(FOREGROUND)))),
            [(owner.clone(), Duration::ZERO)]
        );
        assert_eq!(
            g.dependents_of(uid_of(RS).unwrap()),
            [(Place::of(pods, &pod(None)), POD.to_string(), true)]
        );
        assert!(
            !g.owners_present(POD),
            "a held owner makes its dependents suspect"
        );
        // Each change of the dependent, and its going, bring the owner back.
        assert_eq!(
            g.observe(pods, &put(pod(Some((RS, true))))),
            [(owner.clone(), Duration::ZERO)]
        );
        assert_eq!(
            g.observe(pods, &gone(pod(Some((RS, true))))),
            [(owner, Duration::ZERO)]
        );
        assert!(g.dependents_of(uid_of(RS).unwrap()).is_empty());
        // A dependent that does not block is not waited for.
        g.observe(pods, &put(pod(Some((RS, false)))));
        assert_eq!(
            g.dependents_of(uid_of(RS).unwrap()),
            [(Place::of(pods, &pod(None)), POD.to_string(), false)]
        );
        // The owner gone for good: not held any more.
        g.observe(sets, &gone(rs(Some(FOREGROUND))));
        assert!(g.held.is_empty());
    }
}
