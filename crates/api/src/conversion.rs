//! Kinds served in several group-versions are one stored object: these convert between the
//! version an endpoint serves and the version kept in the store (core/v1 Events for
//! events.k8s.io/v1, autoscaling/v2 HorizontalPodAutoscalers for autoscaling/v1).

use serde_json::{json, Value};

use crate::kinds::Kind;

/// Pairs of fields renamed between events.k8s.io/v1 (left) and core/v1 (right).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn is(kind: &Kind, group: &str, version: &str, name: &str) -> bool {
    kind.group == group && kind.version == version && kind.kind == name
}

/// The conversions between a served version and the stored one.
enum Conversion {
    /// events.k8s.io/v1 Events, stored as core/v1 Events.
    Event,
    /// autoscaling/v1 HorizontalPodAutoscalers, stored as autoscaling/v2.
    HpaV1,
}

fn conversion(kind: &Kind) -> Option<Conversion> {
    if is(kind, "events.k8s.io", "v1", "Event") {
        Some(Conversion::Event)
    } else if is(kind, "autoscaling", "v1", "HorizontalPodAutoscaler") {
        Some(Conversion::HpaV1)
    } else {
        None
    }
}

/// Whether `kind`'s endpoint serves objects as the store keeps them (most kinds): then
/// [`to_storage`] and [`from_storage`] return what they are given.
pub fn stored_as_served(kind: &Kind) -> bool {
    conversion(kind).is_none()
}

/// The object as the store keeps it.
pub fn to_storage(kind: &Kind, obj: Value) -> Value {
    match conversion(kind) {
        Some(Conversion::Event) => rename(obj, EVENT_FIELDS.iter().map(|(a, b)| (*a, *b)), "v1"),
        Some(Conversion::HpaV1) => hpa_v1_to_v2(obj),
        None => obj,
    }
}

/// The object as the endpoint of `kind` serves it.
pub fn from_storage(kind: &Kind, obj: Value) -> Value {
    match conversion(kind) {
        Some(Conversion::Event) => rename(
            obj,
            EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)),
            "events.k8s.io/v1",
        ),
        Some(Conversion::HpaV1) => hpa_v2_to_v1(obj),
        None => obj,
    }
}

fn rename<'a>(
    obj: Value,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    api_version: &str,
) -> Value {
    let Value::Object(mut map) = obj else {
        return obj;
    };
    for (from, to) in pairs {
        if let Some(v) = map.shift_remove(from) {
            map.insert(to.into(), v);
        }
    }
    map.insert("apiVersion".into(), api_version.into());
    Value::Object(map)
}

fn hpa_v1_to_v2(obj: Value) -> Value {
    let Value::Object(mut map) = obj else {
        return obj;
    };
    map.insert("apiVersion".into(), "autoscaling/v2".into());
    if let Some(Value::Object(spec)) = map.get_mut("spec") {
        if let Some(target) = spec.shift_remove("targetCPUUtilizationPercentage") {
            spec.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}]),
            );
        }
    }
    if let Some(Value::Object(status)) = map.get_mut("status") {
        if let Some(current) = status.shift_remove("currentCPUUtilizationPercentage") {
            status.insert(
                "currentMetrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}]),
            );
        }
    }
    Value::Object(map)
}

/// The CPU utilization a v2 metrics list holds, as v1 has it.
fn cpu_utilization(metrics: Option<&Value>, field: &str) -> Option<Value> {
    metrics?.as_array()?.iter().find_map(|m| {
        let resource = m.get("resource")?;
        (m.get("type")? == "Resource" && resource.get("name")? == "cpu")
            .then(|| resource.get(field)?.get("averageUtilization").cloned())
            .flatten()
    })
}

fn hpa_v2_to_v1(obj: Value) -> Value {
    let Value::Object(mut map) = obj else {
        return obj;
    };
    map.insert("apiVersion".into(), "autoscaling/v1".into());
    if let Some(Value::Object(spec)) = map.get_mut("spec") {
        let metrics = spec.shift_remove("metrics");
        spec.shift_remove("behavior");
        if let Some(target) = cpu_utilization(metrics.as_ref(), "target") {
            spec.insert("targetCPUUtilizationPercentage".into(), target);
        }
    }
    if let Some(Value::Object(status)) = map.get_mut("status") {
        let current = status.shift_remove("currentMetrics");
        status.shift_remove("conditions");
        if let Some(current) = cpu_utilization(current.as_ref(), "current") {
            status.insert("currentCPUUtilizationPercentage".into(), current);
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;

    #[test]
    fn only_the_converted_kinds_are_stored_otherwise_than_served() {
        for (group, version, plural, converted) in [
            ("events.k8s.io", "v1", "events", true),
            ("autoscaling", "v1", "horizontalpodautoscalers", true),
            ("", "v1", "events", false),
            ("autoscaling", "v2", "horizontalpodautoscalers", false),
            ("", "v1", "pods", false),
            ("coordination.k8s.io", "v1", "leases", false),
        ] {
            let kind = find(group, version, plural).unwrap();
            assert_eq!(
                stored_as_served(kind),
                !converted,
                "{group}/{version} {plural}"
            );
        }
    }

    #[test]
    fn events_convert_both_ways() {
        let new_events = find("events.k8s.io", "v1", "events").unwrap();
        let event = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "web"},
            "note": "Pulled image", "reason": "Pulled", "type": "Normal",
            "reportingController": "skiff/agent", "reportingInstance": "node-1",
            "eventTime": "2026-11-25T12:00:00.000000Z"
        });
        let stored = to_storage(new_events, event.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "web");
        assert_eq!(stored["message"], "Pulled image");
        assert_eq!(stored["reportingComponent"], "skiff/agent");
        assert!(stored.get("note").is_none());
        assert_eq!(from_storage(new_events, stored), event);
        let core = find("", "v1", "events").unwrap();
        assert_eq!(
            to_storage(core, event.clone()),
            event,
            "core/v1 is stored as it is"
        );
    }

    #[test]
    fn hpas_convert_between_v1_and_v2() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let hpa = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "api"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "api-server"}, "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70},
            "status": {"currentReplicas": 3, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 55}
        });
        let stored = to_storage(v1, hpa.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        assert_eq!(
            stored["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            55
        );
        assert_eq!(from_storage(v1, stored), hpa);
    }
}
