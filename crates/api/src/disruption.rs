//! PodDisruptionBudgets as pure functions: which pods a budget covers, its status from those
//! pods and their controllers' scale (the disruption controller's arithmetic), and whether an
//! eviction may go ahead (the `pods/eviction` subresource's checks), in Kubernetes' words.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::object::Lookup;
use crate::object::{condition_true, selector_from_json, timestamp};
use crate::LabelSelector;

/// How long a pod an eviction took a disruption for counts as disrupted: the controller stops
/// expecting its deletion after that.
pub const DELETION_TIMEOUT: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

/// More pods than this waiting for their eviction's deletion refuses further evictions.
const MAX_DISRUPTED_PODS: usize = 2000;

pub const DENIED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.lookup(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.lookup(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The object's labels.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.lookup("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The budget's selector (policy/v1: none, or one that does not parse, covers nothing; an
/// empty one every pod of the namespace).
pub fn selector(pdb: &Value) -> Option<LabelSelector> {
    pdb.lookup("/spec/selector")
        .filter(|s| !s.is_null())
        .and_then(|s| selector_from_json(s).ok())
}

/// Whether budget `pdb` covers `pod`: the same namespace and a selector matching its labels.
pub fn covers(pdb: &Value, pod: &Value) -> bool {
    text(pdb, "/metadata/namespace") == text(pod, "/metadata/namespace")
        && selector(pdb).is_some_and(|s| s.matches(&labels_of(pod)))
}

/// Whether the budget's arithmetic needs the scale of the pods' controllers: `maxUnavailable`,
/// or `minAvailable` as a percentage.
pub fn needs_scale(pdb: &Value) -> bool {
    pdb.lookup("/spec/maxUnavailable")
        .is_some_and(|v| !v.is_null())
        || pdb
            .lookup("/spec/minAvailable")
            .is_some_and(Value::is_string)
}

/// An int-or-percent against `total` (percentages rounded up, as Kubernetes scales budgets).
fn scaled(value: &Value, total: i64, field: &str) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{field}: {n} is not an integer")),
        Value::String(s) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(|| {
                    format!("{field}: invalid value for IntOrString: invalid value {s:?}")
                })?;
            Ok((percent * total + 99) / 100)
        }
        other => Err(format!("{field}: {other} is not an integer or percentage")),
    }
}

/// The pods an eviction recorded and that are neither deleted yet nor overdue.
fn still_disrupted(pdb: &Value, pods: &[&Value], now: jiff::Timestamp) -> Map<String, Value> {
    let recorded = pdb
        .lookup("/status/disruptedPods")
        .and_then(Value::as_object);
    let mut kept = Map::new();
    for pod in pods {
        if pod.lookup("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let name = text(pod, "/metadata/name");
        let Some(at) = recorded.and_then(|r| r.get(name)) else {
            continue;
        };
        let when = at.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if when.is_some_and(|w| w + DELETION_TIMEOUT > now) {
            kept.insert(name.to_string(), at.clone());
        }
    }
    kept
}

/// The `DisruptionAllowed` condition, its transition time kept while its status stays.
fn allowed_condition(pdb: &Value, allowed: bool, reason: &str, message: &str, now: &str) -> Value {
    let status = if allowed { "True" } else { "False" };
    let before = pdb
        .lookup("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"));
    let since = before
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({
        "type": "DisruptionAllowed",
        "status": status,
        "observedGeneration": int(pdb, "/metadata/generation"),
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    })
}

/// The budget's status from the pods it covers and `scale`, the sum of their controllers'
/// replicas (needed only when [`needs_scale`]; an error says why it is unknown, which fails
/// the budget safe: no disruption allowed).
pub fn status(
    pdb: &Value,
    pods: &[&Value],
    scale: Result<i64, String>,
    now: jiff::Timestamp,
) -> Value {
    let now_text = timestamp(now);
    let disrupted = still_disrupted(pdb, pods, now);
    let healthy = pods
        .iter()
        .filter(|p| p.lookup("/metadata/deletionTimestamp").is_none())
        .filter(|p| !disrupted.contains_key(text(p, "/metadata/name")))
        .filter(|p| condition_true(p, "Ready"))
        .count() as i64;
    let spec = &pdb["spec"];
    let counts = if !spec["maxUnavailable"].is_null() {
        scale.and_then(|expected| {
            let unavailable = scaled(&spec["maxUnavailable"], expected, "spec.maxUnavailable")?;
            Ok((expected, (expected - unavailable).max(0)))
        })
    } else {
        match &spec["minAvailable"] {
            Value::Null => Ok((0, 0)),
            Value::Number(_) => scaled(&spec["minAvailable"], 0, "spec.minAvailable")
                .map(|desired| (pods.len() as i64, desired)),
            min => scale
                .and_then(|expected| Ok((expected, scaled(min, expected, "spec.minAvailable")?))),
        }
    };
    let mut status = json!({
        "observedGeneration": int(pdb, "/metadata/generation"),
        "currentHealthy": healthy,
    });
    match counts {
        Ok((expected, desired)) => {
            let allowed = if expected <= 0 {
                0
            } else {
                (healthy - desired).max(0)
            };
            status["desiredHealthy"] = json!(desired);
            status["expectedPods"] = json!(expected);
            status["disruptionsAllowed"] = json!(allowed);
            let reason = if allowed > 0 {
                "SufficientPods"
            } else {
                "InsufficientPods"
            };
            status["conditions"] =
                json!([allowed_condition(pdb, allowed > 0, reason, "", &now_text)]);
        }
        Err(message) => {
            status["desiredHealthy"] = json!(int(pdb, "/status/desiredHealthy"));
            status["expectedPods"] = json!(int(pdb, "/status/expectedPods"));
            status["disruptionsAllowed"] = json!(0);
            status["conditions"] = json!([allowed_condition(
                pdb,
                false,
                "SyncFailed",
                &message,
                &now_text
            )]);
        }
    }
    if !disrupted.is_empty() {
        status["disruptedPods"] = Value::Object(disrupted);
    }
    status
}

/// Whether an eviction of `pod` deletes it without asking any budget: it has finished, has
/// not started, or is being deleted already.
pub fn ignores_budgets(pod: &Value) -> bool {
    matches!(
        text(pod, "/status/phase"),
        "Succeeded" | "Failed" | "Pending"
    ) || pod.lookup("/metadata/deletionTimestamp").is_some()
}

/// Why an eviction is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 429: the budget allows no disruption now (or has not caught up with its spec); the
    /// cause's message says which.
    TooManyRequests(String),
    /// 403 on the budget, with the message.
    Forbidden(String),
}

/// The eviction of `pod` under budget `pdb`: `Ok(None)` when it may go without taking a
/// disruption (an unhealthy pod the policy lets go), `Ok(Some(status))` with the budget's
/// status after taking one (the pod recorded as disrupted at `now`).
pub fn evict(pdb: &Value, pod: &Value, now: jiff::Timestamp) -> Result<Option<Value>, Refusal> {
    let name = text(pdb, "/metadata/name");
    let status = &pdb["status"];
    let (healthy, desired) = (
        int(pdb, "/status/currentHealthy"),
        int(pdb, "/status/desiredHealthy"),
    );
    if !condition_true(pod, "Ready") {
        let policy = text(pdb, "/spec/unhealthyPodEvictionPolicy");
        if policy == "AlwaysAllow" || (healthy >= desired && desired > 0) {
            return Ok(None);
        }
    }
    if int(pdb, "/status/observedGeneration") < int(pdb, "/metadata/generation") {
        return Err(Refusal::TooManyRequests(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    let allowed = int(pdb, "/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(Refusal::Forbidden(
            "pdb disruptions allowed is negative".into(),
        ));
    }
    let disrupted = status["disruptedPods"].as_object().map_or(0, Map::len);
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(Refusal::Forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller".into(),
        ));
    }
    if allowed == 0 {
        let condition = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"));
        let failed =
            condition.filter(|c| c["status"] == "False" && !text(c, "/message").is_empty());
        let message = match failed {
            Some(c) if c["reason"] == "SyncFailed" => format!(
                "The disruption budget {name} does not allow evicting pods currently because it failed sync: {}",
                text(c, "/message")
            ),
            _ if healthy <= desired => format!(
                "The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"
            ),
            Some(c) => format!(
                "The disruption budget {name} does not allow evicting pods currently ({}): {}",
                text(c, "/reason"),
                text(c, "/message")
            ),
            None => format!("The disruption budget {name} does not allow evicting pods currently"),
        };
        return Err(Refusal::TooManyRequests(message));
    }
    let mut after = status.clone();
    after["disruptionsAllowed"] = json!(allowed - 1);
    if allowed == 1 {
        let now_text = timestamp(now);
        after["conditions"] = json!([allowed_condition(
            pdb,
            false,
            "InsufficientPods",
            "",
            &now_text
        )]);
    }
    let pod_name = text(pod, "/metadata/name").to_string();
    match after["disruptedPods"].as_object_mut() {
        Some(map) => {
            map.insert(pod_name, json!(timestamp(now)));
        }
        None => after["disruptedPods"] = json!({pod_name: timestamp(now)}),
    }
    Ok(Some(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "api"}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "api"}});
        json!({"metadata": {"name": "api", "namespace": "default", "generation": 1}, "spec": spec})
    }

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-11-30T12:00:00Z";

    #[test]
    fn budgets_cover_pods_by_selector_in_their_namespace() {
        let budget = pdb(json!({}));
        assert!(covers(&budget, &pod("a", true)));
        let mut other = pod("a", true);
        other["metadata"]["namespace"] = json!("prod");
        assert!(!covers(&budget, &other));
        let mut unlabelled = pod("a", true);
        unlabelled["metadata"]["labels"] = json!({"app": "web"});
        assert!(!covers(&budget, &unlabelled));
        let everything = json!({"metadata": {"namespace": "default"}, "spec": {"selector": {}}});
        assert!(covers(&everything, &unlabelled));
        let nothing = json!({"metadata": {"namespace": "default"}, "spec": {}});
        assert!(!covers(&nothing, &unlabelled));
    }

    #[test]
    fn status_follows_kubernetes_arithmetic() {
        let (a, b, c) = (pod("a", true), pod("b", true), pod("c", false));
        let pods = [&a, &b, &c];
        // (spec, controllers' scale, expected, desired, allowed)
        let cases = [
            (
                json!({"minAvailable": 2}),
                Err("unused".to_string()),
                3,
                2,
                0,
            ),
            (
                json!({"minAvailable": 1}),
                Err("unused".to_string()),
                3,
                1,
                1,
            ),
            (json!({"minAvailable": "50%"}), Ok(3), 3, 2, 0),
            (json!({"minAvailable": "30%"}), Ok(3), 3, 1, 1),
            (json!({"maxUnavailable": 1}), Ok(3), 3, 2, 0),
            (json!({"maxUnavailable": 2}), Ok(3), 3, 1, 1),
            (json!({"maxUnavailable": "34%"}), Ok(3), 3, 1, 1),
            (json!({"maxUnavailable": 5}), Ok(3), 3, 0, 2),
            (json!({"maxUnavailable": 1}), Ok(0), 0, 0, 0),
        ];
        for (spec, scale, expected, desired, allowed) in cases {
            let s = status(&pdb(spec.clone()), &pods, scale, at(NOW));
            assert_eq!(
                (
                    &s["expectedPods"],
                    &s["desiredHealthy"],
                    &s["disruptionsAllowed"]
                ),
                (&json!(expected), &json!(desired), &json!(allowed)),
                "{spec}"
            );
            assert_eq!(s["currentHealthy"], 2, "{spec}");
            let condition = &s["conditions"][0];
            let want = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            assert_eq!(
                (
                    condition["status"].as_str().unwrap(),
                    condition["reason"].as_str().unwrap()
                ),
                want
            );
        }
    }

    #[test]
    fn an_unknown_scale_fails_safe() {
        let a = pod("a", true);
        let s = status(
            &pdb(json!({"maxUnavailable": 1})),
            &[&a],
            Err("found no controllers for pod \"a\"".into()),
            at(NOW),
        );
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["reason"], "SyncFailed");
        assert_eq!(
            s["conditions"][0]["message"],
            "found no controllers for pod \"a\""
        );
    }

    #[test]
    fn disrupted_pods_do_not_count_until_deleted_or_overdue() {
        let (a, b) = (pod("a", true), pod("b", true));
        let mut budget = pdb(json!({"minAvailable": 1}));
        budget["status"] = json!({"disruptedPods": {"a": "2026-11-30T11:59:00Z", "b": "2026-11-30T11:57:00Z", "gone": "2026-11-30T11:59:30Z"}});
        let s = status(&budget, &[&a, &b], Err(String::new()), at(NOW));
        // a: recorded a minute ago, still expected to go; b: overdue; gone: not a pod any more.
        assert_eq!(s["disruptedPods"], json!({"a": "2026-11-30T11:59:00Z"}));
        assert_eq!(s["currentHealthy"], 1);
        assert_eq!(s["disruptionsAllowed"], 0);
    }

    #[test]
    fn evictions_take_a_disruption_or_are_refused_with_kubernetes_messages() {
        let mut budget = pdb(json!({"minAvailable": 2}));
        let (a, b, c) = (pod("a", true), pod("b", true), pod("c", true));
        budget["status"] = status(&budget, &[&a, &b, &c], Err(String::new()), at(NOW));
        let after = evict(&budget, &a, at(NOW)).unwrap().unwrap();
        assert_eq!(after["disruptionsAllowed"], 0);
        assert_eq!(after["disruptedPods"], json!({"a": "2026-11-30T12:00:00Z"}));
        assert_eq!(after["conditions"][0]["status"], "False");
        budget["status"] = after;
        assert_eq!(
            evict(&budget, &b, at(NOW)),
            Err(Refusal::TooManyRequests(
                "The disruption budget api does not allow evicting pods currently".into()
            )),
            "healthy 3 > desired 2, yet the one disruption is taken"
        );
        budget["status"] = status(&budget, &[&a, &b, &c], Err(String::new()), at(NOW));
        assert_eq!(
            evict(&budget, &b, at(NOW)),
            Err(Refusal::TooManyRequests(
                "The disruption budget api needs 2 healthy pods and has 2 currently".into()
            ))
        );
        // An unhealthy pod goes freely while the budget is met (IfHealthyBudget) ...
        let sick = pod("d", false);
        assert_eq!(evict(&budget, &sick, at(NOW)), Ok(None));
        // ... and only under AlwaysAllow once it is not.
        budget["status"]["currentHealthy"] = json!(1);
        assert!(evict(&budget, &sick, at(NOW)).is_err());
        budget["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert_eq!(evict(&budget, &sick, at(NOW)), Ok(None));
        // A spec the controller has not seen yet.
        budget["metadata"]["generation"] = json!(2);
        assert_eq!(
            evict(&budget, &b, at(NOW)),
            Err(Refusal::TooManyRequests(
                "The disruption budget api is still being processed by the server.".into()
            ))
        );
    }

    #[test]
    fn finished_pending_and_deleted_pods_ignore_budgets() {
        for phase in ["Succeeded", "Failed", "Pending"] {
            let mut p = pod("a", false);
            p["status"]["phase"] = json!(phase);
            assert!(ignores_budgets(&p), "{phase}");
        }
        let mut deleting = pod("a", true);
        deleting["metadata"]["deletionTimestamp"] = json!(NOW);
        assert!(ignores_budgets(&deleting));
        assert!(!ignores_budgets(&pod("a", true)));
    }
}
