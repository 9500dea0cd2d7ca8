//! The reconcilers: each reads the current state of one key through the cluster, decides with
//! the pure cores (`replicaset`, `rollout`) and writes only what must change.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::cluster::{Cluster, ClusterError};
use crate::events::{Note, Recorder};
use crate::replicaset::{self, PodView};
use crate::rollout::{self, IntOrPercent, Set, Step};
use crate::runtime::{controller_of, kind};
use crate::runtime::{deleting, text};
use skiff_api::kinds::Kind;
use skiff_api::object::Lookup;
use skiff_api::object::{selector_from_json, Filter};

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

fn int(obj: &Value, pointer: &str, default: i64) -> i64 {
    obj.lookup(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

fn owner_reference(kind: &str, api_version: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": text(owner, "/metadata/name"),
        "uid": text(owner, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The objects of `selected` that `owner` controls, adopting those nobody controls (as
/// Kubernetes does after `delete --cascade=orphan` and a new owner with the same selector).
async fn claim(
    cluster: &dyn Cluster,
    kind: &'static Kind,
    owner: &Value,
    owner_kind: &str,
    selected: Vec<Arc<Value>>,
) -> Result<Vec<Arc<Value>>, ClusterError> {
    let uid = text(owner, "/metadata/uid");
    let has_controller = |o: &Value| {
        o.lookup("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true))
    };
    let mut mine = Vec::new();
    for obj in selected {
        if controller_of(&obj, owner_kind).is_some_and(|(_, u)| u == uid) {
            mine.push(obj);
        } else if !has_controller(&obj) && !deleting(&obj) && !deleting(owner) {
            let mut adopted = Arc::unwrap_or_clone(obj);
            let reference = owner_reference(owner_kind, "apps/v1", owner);
            match adopted["metadata"]["ownerReferences"].as_array_mut() {
                Some(refs) => refs.push(reference),
                None => adopted["metadata"]["ownerReferences"] = json!([reference]),
            }
            mine.push(Arc::new(cluster.update(kind, adopted).await?));
        }
    }
    Ok(mine)
}

/// What `owner`'s selector selects (callers keep only what it controls), to decode no more
/// than needed.
fn selected_by(owner: &Value) -> Filter {
    let labels = owner
        .lookup("/spec/selector")
        .and_then(|s| selector_from_json(s).ok());
    Filter {
        labels,
        fields: None,
    }
}

/// Creates and deletes pods until the ReplicaSet has its replicas; reports its status, with
/// the `ReplicaFailure` condition while pods cannot be made or removed.
pub async fn replica_set(
    cluster: &dyn Cluster,
    events: &Recorder,
    namespace: &str,
    name: &str,
) -> Result<(), ClusterError> {
    let (sets, pods) = (kind("apps", "replicasets"), kind("", "pods"));
    let Some(rs) = cluster.get(sets, namespace, name).await? else {
        return Ok(());
    };
    if deleting(&rs) {
        return Ok(());
    }
    let selects = selected_by(&rs);
    let selected = cluster.list_shared(pods, namespace, &selects).await?;
    let mut mine = claim(cluster, pods, &rs, "ReplicaSet", selected).await?;
    let views: Vec<PodView> = mine.iter().map(|pod| PodView::of(pod)).collect();
    let desired = int(&rs, "/spec/replicas", 1).max(0) as usize;
    let plan = replicaset::plan(desired, &views);
    let note = |warning, reason, message| Note {
        warning,
        reason,
        message,
    };
    let mut failure: Option<(&str, ClusterError)> = None;
    // Kubernetes' slow start: pods are made in concurrent batches of 1, 2, 4, ..., so that a
    // ReplicaSet whose pods cannot be made finds out after one try, and one whose pods can is
    // not held up by one write (and its event) at a time.
    // Pods carrying every label of the template (a pod relabelled by hand may not).
    let template_labels = rs
        .lookup("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let fully_labeled = |pod: &Value| {
        template_labels
            .into_iter()
            .flatten()
            .all(|(k, v)| pod.lookup("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
    };
    let (mut left, mut batch) = (plan.create, 1);
    // The pods made, as the status counts them: not the pods themselves, which their binding
    // takes over without a copy once nothing else holds them.
    let mut made = Vec::new();
    while left > 0 && failure.is_none() {
        let size = batch.min(left);
        let results = futures::future::join_all((0..size).map(|_| async {
            let made = cluster.create(pods, namespace, pod_from(&rs)).await;
            let said = match &made {
                Ok(pod) => note(
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {}", text(pod, "/metadata/name")),
                ),
                Err(e) => note(true, "FailedCreate", format!("Error creating: {e}")),
            };
            events.record(cluster, &rs, said).await;
            made
        }))
        .await;
        for result in results {
            match result {
                Ok(pod) => made.push((PodView::of(&pod), fully_labeled(&pod))),
                Err(e) => failure = failure.or(Some(("FailedCreate", e))),
            }
        }
        left -= size;
        batch *= 2;
    }
    // Surplus pods are deleted all at once.
    let (owned, owner) = (&mine, &rs);
    let deleted = futures::future::join_all(plan.delete.iter().map(|gone| async move {
        let pod_uid = owned
            .iter()
            .find(|p| text(p, "/metadata/name") == gone)
            .map(|p| text(p, "/metadata/uid"))
            .unwrap_or("");
        let result = match cluster.delete(pods, namespace, gone, pod_uid, false).await {
            Err(ClusterError::NotFound(_)) => return Ok(()),
            result => result,
        };
        let said = match &result {
            Ok(()) => note(false, "SuccessfulDelete", format!("Deleted pod: {gone}")),
            Err(e) => note(true, "FailedDelete", format!("Error deleting: {e}")),
        };
        events.record(cluster, owner, said).await;
        result
    }))
    .await;
    if let Some(e) = deleted.into_iter().find_map(Result::err) {
        failure = failure.or(Some(("FailedDelete", e)));
    }
    // The status counts the pods as they are after this sync: listed again after deletions
    // (a pod deleted with a grace period stays, terminating); else the pods just made are
    // added as their creates answered them, rather than listing (and parsing) all the others
    // again.
    let mut views: Vec<PodView> = if !plan.delete.is_empty() {
        let selected = cluster.list_shared(pods, namespace, &selects).await?;
        mine = claim(cluster, pods, &rs, "ReplicaSet", selected).await?;
        mine.iter().map(|pod| PodView::of(pod)).collect()
    } else {
        views
    };
    let mut labeled = mine
        .iter()
        .zip(&views)
        .filter(|(pod, view)| !view.gone && fully_labeled(pod))
        .count();
    if plan.delete.is_empty() {
        for (view, carries) in made {
            labeled += usize::from(carries);
            views.push(view);
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let counts = replicaset::counts(&views, int(&rs, "/spec/minReadySeconds", 0), now);
    let mut status = Map::new();
    status.insert("replicas".into(), counts.replicas.into());
    if labeled > 0 {
        status.insert("fullyLabeledReplicas".into(), labeled.into());
    }
    for (field, n) in [
        ("readyReplicas", counts.ready),
        ("availableReplicas", counts.available),
    ] {
        if n > 0 {
            status.insert(field.into(), n.into());
        }
    }
    status.insert(
        "observedGeneration".into(),
        int(&rs, "/metadata/generation", 0).into(),
    );
    let kept_failure = rs
        .lookup("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "ReplicaFailure"));
    match (&failure, kept_failure) {
        // The condition stays as first written while the failure goes on.
        (Some(_), Some(kept)) => {
            status.insert("conditions".into(), json!([kept]));
        }
        (Some((reason, e)), None) => {
            let now = skiff_api::object::timestamp(jiff::Timestamp::now());
            status.insert(
                "conditions".into(),
                json!([{"type": "ReplicaFailure", "status": "True", "lastTransitionTime": now,
                        "reason": reason, "message": e.to_string()}]),
            );
        }
        (None, _) => {}
    }
    let status = Value::Object(status);
    if rs.get("status") != Some(&status) {
        let mut updated = rs.clone();
        updated["status"] = status;
        cluster.update_status(sets, updated).await?;
    }
    match failure {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A new pod of a ReplicaSet, from its template.
fn pod_from(rs: &Value) -> Value {
    let template = rs.lookup("/spec/template").cloned().unwrap_or(json!({}));
    let mut metadata = json!({
        "generateName": format!("{}-", text(rs, "/metadata/name")),
        "ownerReferences": [owner_reference("ReplicaSet", "apps/v1", rs)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.lookup(&format!("/metadata/{field}")) {
            metadata[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// Kubernetes' template hash: FNV-1a of the template, its decimal digits spelled in letters
/// and digits that make no words.
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    for byte in serde_json::to_vec(template).expect("JSON serializes") {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// A template without the hash label, as templates are compared.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.shift_remove(HASH_LABEL);
    }
    t
}

fn annotation<T: std::str::FromStr>(obj: &Value, key: &str) -> Option<T> {
    text(
        obj,
        &format!("/metadata/annotations/{}", key.replace('/', "~1")),
    )
    .parse()
    .ok()
}

fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION).unwrap_or(0)
}

/// The new ReplicaSet of a Deployment whose template has none yet.
fn new_replica_set(d: &Value, hash: &str, revision: i64, max_surge: i32) -> Value {
    let mut template = d.lookup("/spec/template").cloned().unwrap_or(json!({}));
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d.lookup("/spec/selector").cloned().unwrap_or(json!({}));
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let replicas = int(d, "/spec/replicas", 1);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", text(d, "/metadata/name")),
            "labels": template["metadata"]["labels"].clone(),
            "annotations": {
                REVISION: revision.to_string(),
                DESIRED: replicas.to_string(),
                MAX: (replicas + i64::from(max_surge)).to_string(),
            },
            "ownerReferences": [owner_reference("Deployment", "apps/v1", d)],
        },
        "spec": {
            "replicas": 0,
            "minReadySeconds": int(d, "/spec/minReadySeconds", 0),
            "selector": selector,
            "template": template,
        },
    })
}

fn set_of(rs: &Value) -> Set {
    Set {
        name: text(rs, "/metadata/name").to_string(),
        replicas: int(rs, "/spec/replicas", 0) as i32,
        available: int(rs, "/status/availableReplicas", 0) as i32,
        desired_then: annotation(rs, DESIRED),
        max_then: annotation(rs, MAX),
    }
}

/// Rolls a Deployment's ReplicaSets toward its template, one step at a time, and reports its
/// status as `kubectl rollout status` reads it. A paused Deployment, or one whose replicas
/// changed, only has its sets scaled (in proportion, mid-rollout). Answers when to look again if
/// nothing changes (the progress deadline).
pub async fn deployment(
    cluster: &dyn Cluster,
    events: &Recorder,
    namespace: &str,
    name: &str,
) -> Result<Option<std::time::Duration>, ClusterError> {
    let (deployments, sets_kind) = (kind("apps", "deployments"), kind("apps", "replicasets"));
    let Some(d) = cluster.get(deployments, namespace, name).await? else {
        return Ok(None);
    };
    if deleting(&d) {
        return Ok(None);
    }
    let template = d.lookup("/spec/template").cloned().unwrap_or(json!({}));
    let paused = d.lookup("/spec/paused") == Some(&json!(true));
    let selected = cluster
        .list_shared(sets_kind, namespace, &selected_by(&d))
        .await?;
    let claimed = claim(cluster, sets_kind, &d, "Deployment", selected).await?;
    // Changed below: each set's own copy (the shared one when nothing else holds it).
    let mut sets: Vec<Value> = claimed.into_iter().map(Arc::unwrap_or_clone).collect();
    // Oldest first; revisions order sets made within the same second.
    sets.sort_by_key(|rs| {
        (
            text(rs, "/metadata/creationTimestamp").to_string(),
            revision(rs),
        )
    });
    let (new, old): (Vec<Value>, Vec<Value>) = sets
        .into_iter()
        .partition(|rs| rs.lookup("/spec/template").map(without_hash) == Some(template.clone()));
    let newest = old.iter().map(revision).max().unwrap_or(0);
    let desired = int(&d, "/spec/replicas", 1) as i32;
    let strategy = d.lookup("/spec/strategy").cloned().unwrap_or(json!({}));
    let recreate = strategy["type"] == "Recreate";
    let bound = |field: &str| {
        IntOrPercent::parse(&strategy["rollingUpdate"][field]).unwrap_or(IntOrPercent::Percent(25))
    };
    let limits = if recreate {
        rollout::Limits {
            max_surge: 0,
            max_unavailable: desired,
        }
    } else {
        rollout::limits(desired, bound("maxSurge"), bound("maxUnavailable"))
    };
    // A paused Deployment makes no new ReplicaSet: its template waits for the resume.
    let new = match new.into_iter().next() {
        None if paused => None,
        None => {
            let hash = template_hash(&template);
            let rs = new_replica_set(&d, &hash, newest + 1, limits.max_surge);
            cluster.create(sets_kind, namespace, rs).await?;
            return Ok(None);
        }
        Some(mut new) => {
            if revision(&new) <= newest {
                // A rollback to an older template: that ReplicaSet becomes the newest revision.
                new["metadata"]["annotations"][REVISION] = json!((newest + 1).to_string());
                new = cluster.update(sets_kind, new).await?;
            }
            Some(new)
        }
    };
    let old_sets: Vec<Set> = old.iter().map(set_of).collect();
    let new_set = new.as_ref().map(set_of);
    let all_sets: Vec<&Set> = old_sets.iter().chain(new_set.as_ref()).collect();
    let scaling = paused || rollout::is_scaling_event(desired, &all_sets);
    let step = match &new_set {
        _ if scaling => {
            let deployed = int(&d, "/status/replicas", 0) as i32;
            let changes = rollout::proportional(
                desired,
                limits.max_surge,
                !recreate,
                deployed,
                new_set.as_ref(),
                &old_sets,
            );
            if changes.is_empty() {
                Step::Wait
            } else {
                Step::ScaleOld(changes)
            }
        }
        Some(new_set) if recreate => {
            let running: i32 = old
                .iter()
                .map(|rs| int(rs, "/status/replicas", 0) as i32)
                .sum();
            rollout::recreate_step(desired, new_set, &old_sets, running)
        }
        Some(new_set) => rollout::rolling_step(desired, limits, new_set, &old_sets),
        None => Step::Wait,
    };
    let by_name = |name: &str| {
        old.iter()
            .chain(new.as_ref())
            .find(|rs| text(rs, "/metadata/name") == name)
    };
    match step {
        Step::Wait => prune_history(cluster, &d, &old).await?,
        Step::ScaleNew(n) => {
            if let Some(new) = &new {
                scale(cluster, events, &d, new.clone(), n, limits.max_surge).await?;
            }
        }
        Step::ScaleOld(changes) => {
            for (name, n) in changes {
                if let Some(rs) = by_name(&name) {
                    scale(cluster, events, &d, rs.clone(), n, limits.max_surge).await?;
                }
            }
        }
    }
    report(
        cluster,
        &d,
        new.as_ref(),
        &old,
        i64::from(desired - limits.max_unavailable),
    )
    .await
}

/// Keeps `revisionHistoryLimit` old ReplicaSets that no longer run pods, deleting those of the
/// oldest revisions beyond it.
async fn prune_history(
    cluster: &dyn Cluster,
    d: &Value,
    old: &[Value],
) -> Result<(), ClusterError> {
    let limit = int(d, "/spec/revisionHistoryLimit", 10).max(0) as usize;
    let mut idle: Vec<&Value> = old
        .iter()
        .filter(|rs| int(rs, "/spec/replicas", 0) == 0 && int(rs, "/status/replicas", 0) == 0)
        .collect();
    idle.sort_by_key(|rs| revision(rs));
    let surplus = idle.len().saturating_sub(limit);
    for rs in &idle[..surplus] {
        let (name, uid) = (text(rs, "/metadata/name"), text(rs, "/metadata/uid"));
        match cluster
            .delete(
                kind("apps", "replicasets"),
                text(d, "/metadata/namespace"),
                name,
                uid,
                false,
            )
            .await
        {
            Ok(()) | Err(ClusterError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives a ReplicaSet `replicas`, noting the Deployment's size (and size with the surge) in its
/// annotations; an event tells of a change of size.
async fn scale(
    cluster: &dyn Cluster,
    events: &Recorder,
    d: &Value,
    mut rs: Value,
    replicas: i32,
    max_surge: i32,
) -> Result<(), ClusterError> {
    let before = int(&rs, "/spec/replicas", 0);
    let desired = int(d, "/spec/replicas", 1);
    rs["spec"]["replicas"] = json!(replicas);
    rs["metadata"]["annotations"][DESIRED] = json!(desired.to_string());
    rs["metadata"]["annotations"][MAX] = json!((desired + i64::from(max_surge)).to_string());
    cluster
        .update(kind("apps", "replicasets"), rs.clone())
        .await?;
    if before == i64::from(replicas) {
        return Ok(());
    }
    let direction = if i64::from(replicas) > before {
        "up"
    } else {
        "down"
    };
    let message = format!(
        "Scaled {direction} replica set {} from {before} to {replicas}",
        text(&rs, "/metadata/name")
    );
    events
        .record(
            cluster,
            d,
            Note {
                warning: false,
                reason: "ScalingReplicaSet",
                message,
            },
        )
        .await;
    Ok(())
}

/// The Deployment's status from its ReplicaSets', written when it changed. It is Available when
/// at least `min_available` pods are.
async fn report(
    cluster: &dyn Cluster,
    d: &Value,
    new: Option<&Value>,
    old: &[Value],
    min_available: i64,
) -> Result<Option<std::time::Duration>, ClusterError> {
    let all: Vec<&Value> = old.iter().chain(new).collect();
    let sum = |field: &str| -> i64 {
        all.iter()
            .map(|rs| int(rs, &format!("/status/{field}"), 0))
            .sum()
    };
    let desired = int(d, "/spec/replicas", 1);
    let updated = new.map_or(0, |new| int(new, "/status/replicas", 0));
    let available = sum("availableReplicas");
    let complete = updated == desired && sum("replicas") == desired && available == desired;
    let now = skiff_api::object::timestamp(jiff::Timestamp::now());
    let condition = |kind: &str, ok: bool, reason: &str, message: String| {
        let previous = d
            .lookup("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
        let same = previous.is_some_and(|c| {
            c["status"] == if ok { "True" } else { "False" } && c["reason"] == reason
        });
        let since = |field: &str| {
            previous
                .filter(|_| same)
                .map_or(json!(now), |c| c[field].clone())
        };
        json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastUpdateTime": since("lastUpdateTime"),
               "lastTransitionTime": since("lastTransitionTime"), "reason": reason, "message": message})
    };
    let name = text(d, "/metadata/name");
    let new_name = new.map_or("", |new| text(new, "/metadata/name"));
    let counts = |status: &Value| {
        [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .map(|f| int(status, &format!("/{f}"), 0))
    };
    let now_counts = [
        sum("replicas"),
        updated,
        sum("readyReplicas"),
        available,
        int(d, "/metadata/generation", 0),
    ];
    let progressed = d.get("status").map(counts) != Some(now_counts);
    let mut conditions = vec![
        if available >= min_available {
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        progressing(
            d,
            new_name,
            complete,
            progressed,
            jiff::Timestamp::now().as_second(),
        ),
    ];
    // A ReplicaSet that cannot make or remove pods says why on the Deployment too.
    conditions.extend(
        all.iter()
            .filter_map(|rs| rs.lookup("/status/conditions").and_then(Value::as_array))
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure")
            .map(|c| {
                let mut c = c.clone();
                c["lastUpdateTime"] = c["lastTransitionTime"].clone();
                c
            }),
    );
    let mut status = json!({
        "observedGeneration": int(d, "/metadata/generation", 0),
        "replicas": sum("replicas"),
        "updatedReplicas": updated,
        "readyReplicas": sum("readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": conditions,
    });
    // Counts of zero are left out, as Kubernetes' omitempty does.
    let map = status.as_object_mut().expect("an object");
    map.retain(|_, v| *v != json!(0));
    // The Deployment carries the revision of its newest ReplicaSet.
    let new_revision = new.map(revision).filter(|r| *r != revision(d));
    if d.get("status") == Some(&status) && new_revision.is_none() {
        return Ok(recheck_after(d));
    }
    let mut updated_d = d.clone();
    updated_d["status"] = status;
    if let Some(new_revision) = new_revision {
        let mut with_revision = d.clone();
        with_revision["metadata"]["annotations"][REVISION] = json!(new_revision.to_string());
        let written = cluster
            .update(kind("apps", "deployments"), with_revision)
            .await?;
        updated_d["metadata"] = written["metadata"].clone();
    }
    tracing::debug!(deployment = name, "status");
    let written = cluster
        .update_status(kind("apps", "deployments"), updated_d)
        .await?;
    Ok(recheck_after(&written))
}

/// The Progressing condition: `NewReplicaSetAvailable` once the rollout is complete;
/// `ReplicaSetUpdated`, its update time moving with each step of progress, while it goes on;
/// `ProgressDeadlineExceeded` once no progress was made for `progressDeadlineSeconds`;
/// Unknown with `DeploymentPaused` while paused (no deadline runs) and `DeploymentResumed` from
/// the resume until the rollout moves (the deadline counting from the resume).
fn progressing(d: &Value, new_name: &str, complete: bool, progressed: bool, now: i64) -> Value {
    let stamp = |t: i64| {
        jiff::Timestamp::from_second(t)
            .map(skiff_api::object::timestamp)
            .unwrap_or_default()
    };
    let mut previous = d
        .lookup("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
        .cloned();
    let reason_of = |c: &Option<Value>| c.as_ref().map_or(json!(null), |c| c["reason"].clone());
    let unknown = |reason: &str, message: &str| {
        json!({"type": "Progressing", "status": "Unknown", "lastUpdateTime": stamp(now),
               "lastTransitionTime": stamp(now), "reason": reason, "message": message})
    };
    let paused = d.lookup("/spec/paused") == Some(&json!(true));
    let was_paused = reason_of(&previous) == "DeploymentPaused";
    if paused && reason_of(&previous) != "ProgressDeadlineExceeded" {
        return match previous {
            Some(c) if was_paused => c,
            _ => unknown("DeploymentPaused", "Deployment is paused"),
        };
    }
    if was_paused {
        previous = Some(unknown("DeploymentResumed", "Deployment is resumed"));
    }
    let seconds = |c: &Value, field: &str| {
        c[field]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    let deadline = int(d, "/spec/progressDeadlineSeconds", 600);
    let timed_out = previous
        .as_ref()
        .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded");
    if timed_out && !progressed && !complete {
        // Timed out stays timed out until something moves.
        return previous.expect("checked above");
    }
    let resumed_at = previous
        .as_ref()
        .filter(|c| c["reason"] == "DeploymentResumed")
        .and_then(|c| seconds(c, "lastUpdateTime"));
    if resumed_at.is_some_and(|t| now - t <= deadline) && !progressed && !complete {
        // Resumed stays resumed until the rollout moves or its deadline passes.
        return previous.expect("checked above");
    }
    let (status, reason, message) = if complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        let last_progress = previous
            .as_ref()
            .filter(|_| !progressed)
            .and_then(|c| seconds(c, "lastUpdateTime"))
            .unwrap_or(now);
        if now - last_progress > deadline {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            )
        }
    };
    let same = previous
        .as_ref()
        .is_some_and(|c| c["status"] == status && c["reason"] == reason);
    let kept = |field: &str| {
        previous
            .as_ref()
            .filter(|_| same)
            .and_then(|c| seconds(c, field))
            .unwrap_or(now)
    };
    let updated_at = if progressed || !same {
        now
    } else {
        kept("lastUpdateTime")
    };
    json!({"type": "Progressing", "status": status, "lastUpdateTime": stamp(updated_at),
           "lastTransitionTime": stamp(kept("lastTransitionTime")), "reason": reason, "message": message})
}

/// When a Deployment still rolling out must be looked at again even if nothing changes: when
/// its progress deadline passes.
pub fn recheck_after(d: &Value) -> Option<std::time::Duration> {
    let progressing = d
        .lookup("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))?;
    if !matches!(
        progressing["reason"].as_str(),
        Some("ReplicaSetUpdated" | "DeploymentResumed")
    ) {
        return None;
    }
    let deadline = int(d, "/spec/progressDeadlineSeconds", 600);
    let last = progressing["lastUpdateTime"]
        .as_str()?
        .parse::<jiff::Timestamp>()
        .ok()?
        .as_second();
    let due = last + deadline + 1 - jiff::Timestamp::now().as_second();
    Some(std::time::Duration::from_secs(due.max(1) as u64))
}

/// Lets an object of `kind` (a pod, a ReplicaSet) go whose labels no longer match the selector
/// of its controller `owner` (by uid), as Kubernetes' controllers release what they stop
/// selecting: the reference is taken off, unless the owner is being deleted. The controller
/// then makes a replacement.
pub async fn release(
    cluster: &dyn Cluster,
    kind: &'static Kind,
    namespace: &str,
    name: &str,
    owner: &str,
) -> Result<(), ClusterError> {
    let (owner_kind, owners) = match kind.kind {
        "Pod" => ("ReplicaSet", self::kind("apps", "replicasets")),
        _ => ("Deployment", self::kind("apps", "deployments")),
    };
    let Some(mut obj) = cluster.get(kind, namespace, name).await? else {
        return Ok(());
    };
    let Some((owner_name, _)) = controller_of(&obj, owner_kind).filter(|(_, u)| *u == owner) else {
        return Ok(());
    };
    let Some(controller) = cluster.get(owners, namespace, owner_name).await? else {
        return Ok(());
    };
    let labels = skiff_api::disruption::labels_of(&obj);
    let selects = selected_by(&controller)
        .labels
        .is_some_and(|s| s.matches(&labels));
    if text(&controller, "/metadata/uid") != owner || deleting(&controller) || selects {
        return Ok(());
    }
    if let Some(refs) = obj
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        refs.retain(|r| r["uid"] != owner);
    }
    tracing::debug!(
        kind = kind.plural,
        namespace,
        name,
        "released by its controller"
    );
    cluster.update(kind, obj).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_its_deadline() {
        let d = |reason: &str, updated: &str| {
            json!({"spec": {"progressDeadlineSeconds": 60}, "status": {"conditions": [
                {"type": "Progressing", "status": "True", "reason": reason, "lastUpdateTime": updated, "lastTransitionTime": "2026-11-25T11:00:00Z"}]}})
        };
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_second();
        let now = at("2026-11-25T12:00:00Z");
        let cases = [
            // Progress moves the update time, keeps the transition time.
            (
                d("ReplicaSetUpdated", "2026-11-25T11:00:00Z"),
                false,
                true,
                "True ReplicaSetUpdated 2026-11-25T12:00:00Z 2026-11-25T11:00:00Z",
            ),
            // No progress within the deadline: unchanged.
            (
                d("ReplicaSetUpdated", "2026-11-25T11:59:30Z"),
                false,
                false,
                "True ReplicaSetUpdated 2026-11-25T11:59:30Z 2026-11-25T11:00:00Z",
            ),
            // No progress past it: exceeded, a transition now.
            (
                d("ReplicaSetUpdated", "2026-11-25T11:58:00Z"),
                false,
                false,
                "False ProgressDeadlineExceeded 2026-11-25T12:00:00Z 2026-11-25T12:00:00Z",
            ),
            // Complete.
            (
                d("ReplicaSetUpdated", "2026-11-25T11:58:00Z"),
                true,
                true,
                "True NewReplicaSetAvailable 2026-11-25T12:00:00Z 2026-11-25T12:00:00Z",
            ),
        ];
        for (deployment, complete, progressed, want) in cases {
            let c = progressing(&deployment, "rs", complete, progressed, now);
            let got = format!(
                "{} {} {} {}",
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
                c["lastUpdateTime"].as_str().unwrap(),
                c["lastTransitionTime"].as_str().unwrap()
            );
            assert_eq!(got, want);
        }
        // Paused: Unknown, no deadline; resumed: Unknown until the rollout moves, the deadline
        // counting from the resume.
        let mut paused = d("ReplicaSetUpdated", "2026-11-25T11:00:00Z");
        paused["spec"]["paused"] = json!(true);
        let c = progressing(&paused, "rs", false, false, now);
        assert_eq!(
            (&c["status"], &c["reason"], &c["lastUpdateTime"]),
            (
                &json!("Unknown"),
                &json!("DeploymentPaused"),
                &json!("2026-11-25T12:00:00Z")
            )
        );
        paused["status"]["conditions"] = json!([c]);
        let later = now + 3600;
        assert_eq!(
            progressing(&paused, "rs", false, true, later)["lastUpdateTime"],
            "2026-11-25T12:00:00Z"
        );
        paused["spec"]["paused"] = json!(false);
        let c = progressing(&paused, "rs", false, false, later);
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("Unknown"), &json!("DeploymentResumed"))
        );
        let mut resumed = paused.clone();
        resumed["status"]["conditions"] = json!([c]);
        assert!(recheck_after(&resumed).is_some());
        assert_eq!(
            progressing(&resumed, "rs", false, false, later + 30)["reason"],
            "DeploymentResumed"
        );
        assert_eq!(
            progressing(&resumed, "rs", false, true, later + 30)["reason"],
            "ReplicaSetUpdated"
        );
        assert_eq!(
            progressing(&resumed, "rs", false, false, later + 61)["reason"],
            "ProgressDeadlineExceeded"
        );
        assert!(recheck_after(&d("ReplicaSetUpdated", "2026-11-25T11:00:00Z")).is_some());
        assert!(recheck_after(&d("NewReplicaSetAvailable", "2026-11-25T11:00:00Z")).is_none());
    }

    #[test]
    fn template_hashes_are_stable_word_free_and_ignore_the_hash_label() {
        let t = json!({"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "server", "image": "my-api:v2.1"}]}});
        let h = template_hash(&t);
        assert_eq!(h, template_hash(&t.clone()));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        let mut other = t.clone();
        other["spec"]["containers"][0]["image"] = json!("my-api:v2.2");
        assert_ne!(h, template_hash(&other));
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(without_hash(&labelled), t);
    }

    #[test]
    fn new_replica_sets_select_their_own_pods() {
        let d = json!({"metadata": {"name": "api-server", "uid": "d1"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "server", "image": "x"}]}}}});
        let rs = new_replica_set(&d, "7d9", 2, 1);
        assert_eq!(rs["metadata"]["name"], "api-server-7d9");
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"],
            json!({"app": "api", HASH_LABEL: "7d9"})
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            "7d9"
        );
        assert_eq!(rs["metadata"]["annotations"][REVISION], "2");
        assert_eq!(rs["metadata"]["annotations"][DESIRED], "3");
        assert_eq!(rs["metadata"]["annotations"][MAX], "4");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d1");
        let pod = pod_from(&rs);
        assert_eq!(pod["metadata"]["generateName"], "api-server-7d9-");
        assert_eq!(pod["metadata"]["labels"][HASH_LABEL], "7d9");
    }
}
