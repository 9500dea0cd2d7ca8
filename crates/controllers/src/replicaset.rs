//! The decisions of the ReplicaSet controller: how many pods to make, which to remove (the
//! least valuable first, as Kubernetes ranks them), and the status the set reports.

use std::cmp::Reverse;

use serde_json::Value;
use skiff_api::object::Lookup;

/// A pod as the ReplicaSet controller weighs it, read from the pod object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Bound to a node.
    pub assigned: bool,
    pub phase: String,
    pub ready: bool,
    /// Seconds since the epoch when it became ready, if it is.
    pub ready_since: Option<i64>,
    pub restarts: i64,
    /// Seconds since the epoch.
    pub created: i64,
    /// Being deleted, or finished (Succeeded/Failed): it no longer counts.
    pub gone: bool,
}

/// An RFC 3339 timestamp in seconds since the epoch.
fn seconds(v: Option<&Value>) -> Option<i64> {
    v?.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

impl PodView {
    /// Reads what the controller needs from a pod object.
    pub fn of(pod: &Value) -> PodView {
        let text = |p: &str| {
            pod.lookup(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let phase = text("/status/phase");
        let ready_condition = pod
            .lookup("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
        let ready = ready_condition.is_some_and(|c| c["status"] == "True");
        let restarts = pod
            .lookup("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum())
            .unwrap_or(0);
        PodView {
            name: text("/metadata/name"),
            assigned: !text("/spec/nodeName").is_empty(),
            gone: pod.lookup("/metadata/deletionTimestamp").is_some()
                || phase == "Succeeded"
                || phase == "Failed",
            phase,
            ready,
            ready_since: ready_condition
                .filter(|_| ready)
                .and_then(|c| seconds(c.get("lastTransitionTime"))),
            restarts,
            created: seconds(pod.lookup("/metadata/creationTimestamp")).unwrap_or(0),
        }
    }

    /// How much a pod is worth keeping: lower goes first.
    fn worth(&self) -> impl Ord {
        let phase = match self.phase.as_str() {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        };
        (
            self.assigned,
            phase,
            self.ready,
            // Ready for longer is worth more (not ready sorts as "just now").
            Reverse(self.ready_since.unwrap_or(i64::MAX)),
            Reverse(self.restarts),
            Reverse(self.created),
        )
    }
}

/// What to do to reach the desired replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub create: usize,
    /// Pods to delete, least valuable first.
    pub delete: Vec<String>,
}

/// Creates the missing pods, or deletes the surplus: unassigned before assigned, pending before
/// running, not ready before ready, recently ready before long ready, more restarts before
/// fewer, newer before older (Kubernetes' ranking).
pub fn plan(desired: usize, pods: &[PodView]) -> Plan {
    let mut active: Vec<&PodView> = pods.iter().filter(|p| !p.gone).collect();
    if active.len() <= desired {
        return Plan {
            create: desired - active.len(),
            delete: Vec::new(),
        };
    }
    active.sort_by_key(|p| p.worth());
    let surplus = active.len() - desired;
    Plan {
        create: 0,
        delete: active[..surplus].iter().map(|p| p.name.clone()).collect(),
    }
}

/// The counts a ReplicaSet's status reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i64,
    pub ready: i64,
    /// Ready for at least `minReadySeconds`.
    pub available: i64,
}

pub fn counts(pods: &[PodView], min_ready_seconds: i64, now: i64) -> Counts {
    let active = pods.iter().filter(|p| !p.gone);
    let mut c = Counts::default();
    for p in active {
        c.replicas += 1;
        if p.ready {
            c.ready += 1;
            if p.ready_since.is_some_and(|t| now - t >= min_ready_seconds) || min_ready_seconds == 0
            {
                c.available += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready_at: Option<&str>,
        restarts: i64,
        created: &str,
    ) -> Value {
        let conditions = match ready_at {
            Some(t) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]),
            None => json!([{"type": "Ready", "status": "False"}]),
        };
        json!({"metadata": {"name": name, "creationTimestamp": created},
               "spec": {"nodeName": node},
               "status": {"phase": phase, "conditions": conditions, "containerStatuses": [{"restartCount": restarts}]}})
    }

    #[test]
    fn the_least_valuable_pods_go_first() {
        let pods: Vec<PodView> = [
            pod(
                "old-ready",
                "n1",
                "Running",
                Some("2026-11-25T10:00:00Z"),
                0,
                "2026-11-25T09:00:00Z",
            ),
            pod(
                "new-ready",
                "n1",
                "Running",
                Some("2026-11-25T11:59:00Z"),
                0,
                "2026-11-25T11:58:00Z",
            ),
            pod("crashing", "n1", "Running", None, 5, "2026-11-25T09:00:00Z"),
            pod("pending", "n1", "Pending", None, 0, "2026-11-25T09:00:00Z"),
            pod(
                "unscheduled",
                "",
                "Pending",
                None,
                0,
                "2026-11-25T09:00:00Z",
            ),
            pod(
                "restarted",
                "n1",
                "Running",
                Some("2026-11-25T10:00:00Z"),
                3,
                "2026-11-25T09:00:00Z",
            ),
        ]
        .iter()
        .map(PodView::of)
        .collect();
        let got = plan(1, &pods);
        assert_eq!(got.create, 0);
        assert_eq!(
            got.delete,
            [
                "unscheduled",
                "pending",
                "crashing",
                "new-ready",
                "restarted"
            ]
        );
        assert_eq!(
            plan(8, &pods),
            Plan {
                create: 2,
                delete: vec![]
            }
        );
        assert_eq!(
            plan(6, &pods),
            Plan {
                create: 0,
                delete: vec![]
            }
        );
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let mut terminating = pod(
            "t",
            "n1",
            "Running",
            Some("2026-11-25T10:00:00Z"),
            0,
            "2026-11-25T09:00:00Z",
        );
        terminating["metadata"]["deletionTimestamp"] = json!("2026-11-25T12:00:00Z");
        let done = pod("d", "n1", "Succeeded", None, 0, "2026-11-25T09:00:00Z");
        let ok = pod(
            "ok",
            "n1",
            "Running",
            Some("2026-11-25T11:59:50Z"),
            0,
            "2026-11-25T09:00:00Z",
        );
        let pods: Vec<PodView> = [terminating, done, ok].iter().map(PodView::of).collect();
        assert_eq!(
            plan(2, &pods),
            Plan {
                create: 1,
                delete: vec![]
            }
        );
        let now = seconds(Some(&json!("2026-11-25T12:00:00Z"))).unwrap();
        assert_eq!(
            counts(&pods, 0, now),
            Counts {
                replicas: 1,
                ready: 1,
                available: 1
            }
        );
        assert_eq!(
            counts(&pods, 30, now),
            Counts {
                replicas: 1,
                ready: 1,
                available: 0
            },
            "ready 10 s of the 30 minReadySeconds"
        );
    }
}
