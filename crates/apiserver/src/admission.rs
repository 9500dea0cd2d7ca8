//! Admission of pods' priority: `priorityClassName` (or the cluster's global default class)
//! becomes `spec.priority` and `spec.preemptionPolicy`, as Kubernetes' Priority admission
//! plugin does, so that the scheduler orders and preempts by number.

use serde_json::{json, Value};
use skiff_api::kinds;
use skiff_api::object::Lookup;

use crate::registry::{Registry, Target};
use crate::status::ApiError;

/// The classes every cluster has.
const BUILT_IN: [(&str, i64); 2] = [
    ("system-cluster-critical", 2_000_000_000),
    ("system-node-critical", 2_000_001_000),
];

fn priority_classes() -> &'static kinds::Kind {
    kinds::find("scheduling.k8s.io", "v1", "priorityclasses").expect("priority classes are served")
}

/// Sets a new pod's priority from its class.
pub async fn pod_priority(registry: &Registry, pod: &mut Value) -> Result<(), ApiError> {
    let name = pod
        .lookup("/spec/priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Names are not generated yet: messages name the prefix, as Kubernetes' admission does.
    let pod_name = ["/metadata/name", "/metadata/generateName"]
        .iter()
        .filter_map(|p| pod.lookup(p).and_then(Value::as_str))
        .find(|n| !n.is_empty())
        .unwrap_or("")
        .to_string();
    let (class, priority, policy) =
        if let Some((_, value)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
            (name.clone(), *value, "PreemptLowerPriority".to_string())
        } else if name.is_empty() {
            let classes = registry
                .list(
                    priority_classes(),
                    None,
                    &Default::default(),
                    None,
                    None,
                    None,
                )
                .await?;
            match classes.items.iter().find(|c| c["globalDefault"] == true) {
                Some(c) => (
                    c["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"]
                        .as_str()
                        .unwrap_or("PreemptLowerPriority")
                        .to_string(),
                ),
                None => (String::new(), 0, "PreemptLowerPriority".to_string()),
            }
        } else {
            let target = Target {
                kind: priority_classes(),
                namespace: None,
                name: &name,
            };
            match registry.get(&target).await {
                Ok(c) => (
                    name.clone(),
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"]
                        .as_str()
                        .unwrap_or("PreemptLowerPriority")
                        .to_string(),
                ),
                Err(e) if e.code == 404 => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                    "pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"
                ),
                    ))
                }
                Err(e) => return Err(e),
            }
        };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64) {
        if given != priority {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("pods \"{pod_name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"),
            ));
        }
    }
    if !class.is_empty() {
        spec.insert("priorityClassName".into(), json!(class));
    }
    spec.insert("priority".into(), json!(priority));
    spec.entry("preemptionPolicy").or_insert(json!(policy));
    Ok(())
}
