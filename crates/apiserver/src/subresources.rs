//! Subresources that are views or actions rather than parts of the object: `scale` of the
//! workload kinds, `binding` and `eviction` of pods.

use serde_json::{json, Value};
use skiff_api::disruption;
use skiff_api::kinds;
use skiff_api::object::Lookup;
use skiff_api::object::{self, selector_from_json, Filter};
use skiff_api::patch::PatchType;
use skiff_api::strategy::Endpoint;

use crate::registry::{DeleteOptions, Ownership, Registry, Run, Target};
use crate::status::{ApiError, Cause, Details};

/// The `autoscaling/v1` Scale of a workload object.
pub fn scale_of(obj: &Value) -> Result<Value, ApiError> {
    let selector = obj
        .lookup("/spec/selector")
        .map(selector_from_json)
        .transpose()
        .map_err(ApiError::internal)?
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = object::metadata(obj).cloned().unwrap_or_default();
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let metadata: serde_json::Map<String, Value> = meta
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .collect();
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": obj.lookup("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.lookup("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    }))
}

/// How a request changes a Scale.
pub enum ScaleChange {
    /// PUT: the new Scale.
    Replace(Value),
    /// PATCH: a patch of the current Scale.
    Patch(PatchType, Value),
}

/// Sets the replicas of a workload through its Scale, as `manager`; answers the new Scale.
pub async fn update_scale(
    registry: &Registry,
    target: &Target<'_>,
    change: ScaleChange,
    manager: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let current = registry.get(target).await?;
    let scale = match change {
        ScaleChange::Replace(scale) => scale,
        ScaleChange::Patch(patch_type, patch) => {
            let mut scale = scale_of(&current)?;
            patch_type
                .apply(&mut scale, &patch, None)
                .map_err(|e| patch_error(target.name, e))?;
            scale
        }
    };
    let replicas = scale
        .lookup("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                target.name,
                vec![crate::status::Cause {
                    reason: "FieldValueInvalid",
                    message: "Invalid value: must be greater than or equal to 0".into(),
                    field: "spec.replicas".into(),
                }],
            )
        })?;
    let mut obj = current;
    obj["spec"]["replicas"] = replicas.into();
    // A Scale that names a resourceVersion is a precondition; without one, the latest counts.
    let rv = object::meta_str(&scale, "resourceVersion").map(str::to_string);
    if let (Some(rv), Some(meta)) = (rv, obj.get_mut("metadata").and_then(Value::as_object_mut)) {
        meta.insert("resourceVersion".into(), rv.into());
    }
    let ownership = Ownership::Manager {
        name: manager,
        subresource: Some("scale"),
    };
    let updated = registry
        .update(
            target,
            obj,
            Endpoint::Main,
            Run::Object.or_dry(dry_run),
            ownership,
        )
        .await?;
    scale_of(&updated.object)
}

/// Server-side apply of a Scale: `manager` then owns the workload's `spec.replicas` through the
/// `scale` subresource (meeting the other owners of the replicas, unless `force`); answers the
/// new Scale.
pub async fn apply_scale(
    registry: &Registry,
    target: &Target<'_>,
    config: &Value,
    manager: &str,
    force: bool,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let mut parent = json!({
        "apiVersion": target.kind.api_version(),
        "kind": target.kind.kind,
        "metadata": {"name": target.name},
    });
    if let Some(replicas) = config.lookup("/spec/replicas") {
        if replicas.as_i64().is_none_or(|r| r < 0) {
            return Err(ApiError::invalid(
                "Scale",
                target.name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                    field: "spec.replicas".into(),
                }],
            ));
        }
        parent["spec"] = json!({"replicas": replicas});
    }
    let updated = registry
        .apply(
            target,
            &parent,
            (manager, Some("scale")),
            force,
            Run::Object.or_dry(dry_run),
        )
        .await?;
    scale_of(&updated.object)
}

/// A patch that cannot be applied, as Kubernetes answers it.
pub fn patch_error(name: &str, reason: String) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("the patch of \"{name}\" cannot be applied: {reason}"),
    )
}

/// `pods/binding`: puts a pod on a node, once.
pub async fn bind(
    registry: &Registry,
    target: &Target<'_>,
    binding: &Value,
) -> Result<(), ApiError> {
    let node = binding
        .lookup("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("a Binding needs target.name, the node"))?;
    registry
        .modify(target, |pod| {
            let want_uid = binding.lookup("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            let uid = pod.lookup("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            if !want_uid.is_empty() && want_uid != uid {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{}\": the UID in the precondition ({want_uid}) does not match the UID in record ({uid}). The object might have been deleted and then recreated",
                        target.name
                    ),
                ));
            }
            let assigned = pod
                .lookup("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !assigned.is_empty() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{assigned}\"",
                        target.name, target.name
                    ),
                ));
            }
            if pod.lookup("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("pod {} is being deleted, cannot be assigned to a host", target.name),
                ));
            }
            pod["spec"]["nodeName"] = node.into();
            let now = object::timestamp(jiff::Timestamp::now());
            object::set_condition(
                pod,
                json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}),
            );
            Ok(true)
        })
        .await
}

/// `pods/eviction`: deletes the pod as its Eviction's options say, unless the one
/// PodDisruptionBudget covering it allows no disruption now (429, as Kubernetes answers, with
/// the budget's reason as the cause); an allowed eviction first takes one of the budget's
/// disruptions and records the pod in its `disruptedPods`.
pub async fn evict(
    registry: &Registry,
    target: &Target<'_>,
    eviction: &Value,
) -> Result<Value, ApiError> {
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .unwrap_or(Value::Null);
    let delete = DeleteOptions::from_json(&options)?;
    let pod = registry.get(target).await?;
    if !disruption::ignores_budgets(&pod) {
        let budgets = kinds::find("policy", "v1", "poddisruptionbudgets").expect("a served kind");
        let covering: Vec<Value> = registry
            .list(
                budgets,
                target.namespace,
                &Filter::default(),
                None,
                None,
                None,
            )
            .await?
            .items
            .into_iter()
            .filter(|pdb| disruption::covers(pdb, &pod))
            .collect();
        if covering.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = covering.first() {
            let budget = Target {
                kind: budgets,
                namespace: target.namespace,
                name: object::name(pdb),
            };
            let take = |obj: &mut Value| {
                let now = jiff::Timestamp::now();
                match disruption::evict(obj, &pod, now).map_err(|r| refused(&budget, r))? {
                    Some(status) if !delete.dry_run && obj["status"] != status => {
                        obj["status"] = status;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            };
            registry.modify(&budget, take).await?;
        }
    }
    registry.delete(target, &delete).await?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// A refused eviction as Kubernetes answers it.
fn refused(budget: &Target<'_>, refusal: disruption::Refusal) -> ApiError {
    match refusal {
        disruption::Refusal::TooManyRequests(cause) => {
            ApiError::new(429, "TooManyRequests", disruption::DENIED).with_details(Details {
                causes: vec![Cause {
                    reason: "DisruptionBudget",
                    message: cause,
                    field: String::new(),
                }],
                ..Details::default()
            })
        }
        disruption::Refusal::Forbidden(why) => ApiError::new(
            403,
            "Forbidden",
            format!(
                "poddisruptionbudgets.policy {:?} is forbidden: {why}",
                budget.name
            ),
        )
        .with_details(Details {
            name: budget.name.to_string(),
            group: "policy",
            kind: "poddisruptionbudgets",
            ..Details::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_views_replicas_and_the_selector() {
        let deploy = json!({
            "metadata": {"name": "api-server", "namespace": "default", "uid": "u", "resourceVersion": "7", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}}},
            "status": {"replicas": 2}
        });
        let scale = scale_of(&deploy).unwrap();
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(
            scale["status"],
            json!({"replicas": 2, "selector": "app=api"})
        );
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
        assert!(scale["metadata"].get("labels").is_none());
    }
}
