//! Per-kind checks beyond metadata, in Kubernetes' words and field paths: pod specs (and pod
//! templates) and the workload kinds' selectors and replicas.
//!
//! FIXME(issue 5): quantities, probes, volumes and the other kinds' fields are not checked yet.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::kinds::Kind;
use crate::names;
use crate::object::{selector_from_json, FieldError};

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn containers(spec: &Value, list: &str, path: &str, errs: &mut Vec<FieldError>) {
    let items = spec
        .get(list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list == "containers" && items.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in items.iter().enumerate() {
        let at = |f: &str| format!("{path}.{list}[{i}].{f}");
        let name = str_at(c, "name");
        if name.is_empty() {
            errs.push(FieldError::required(at("name"), ""));
        } else {
            for problem in names::dns1123_label(name) {
                errs.push(FieldError::invalid(at("name"), name, &problem));
            }
            if !seen.insert(name.to_string()) {
                errs.push(FieldError {
                    reason: "FieldValueDuplicate",
                    field: at("name"),
                    message: format!("Duplicate value: {name:?}"),
                });
            }
        }
        if str_at(c, "image").trim().is_empty() {
            errs.push(FieldError::required(at("image"), ""));
        }
        let ports = c
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, port) in ports.iter().enumerate() {
            let number = port
                .get("containerPort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if !(1..=65535).contains(&number) {
                errs.push(FieldError::invalid(
                    format!("{path}.{list}[{i}].ports[{j}].containerPort"),
                    &number.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// Checks a pod spec at `path`; `restart_policies` are those its owner allows.
pub fn pod_spec(spec: &Value, path: &str, restart_policies: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    containers(spec, "containers", path, &mut errs);
    containers(spec, "initContainers", path, &mut errs);
    let policy = str_at(spec, "restartPolicy");
    if !policy.is_empty() && !restart_policies.contains(&policy) {
        let supported: Vec<String> = restart_policies.iter().map(|p| format!("{p:?}")).collect();
        errs.push(FieldError {
            reason: "FieldValueNotSupported",
            field: format!("{path}.restartPolicy"),
            message: format!(
                "Unsupported value: {policy:?}: supported values: {}",
                supported.join(", ")
            ),
        });
    }
    errs
}

/// The selector of a workload must be given and must select its template's labels.
fn selector_and_template(obj: &Value, errs: &mut Vec<FieldError>) {
    let selector = obj.pointer("/spec/selector");
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    match selector.map(selector_from_json) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(Err(e)) => errs.push(FieldError::invalid("spec.selector", "", &e)),
        Some(Ok(s)) if s.is_everything() => errs.push(FieldError::invalid(
            "spec.selector",
            "{}",
            "empty selector is invalid for deployment",
        )),
        Some(Ok(s)) => {
            let labels: std::collections::BTreeMap<String, String> = labels
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if !s.matches(&labels) {
                let shown: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    &format!("map[string]string{{{}}}", shown.join(", ")),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

fn replicas(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid(
                "spec.replicas",
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// The kind's own checks of `obj` (metadata is checked for every kind elsewhere).
pub fn validate(kind: &Kind, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Value::Null;
    let template = obj.pointer("/spec/template/spec").unwrap_or(&empty);
    match (kind.group, kind.kind) {
        ("", "Pod") => {
            let spec = obj.get("spec").unwrap_or(&empty);
            errs.extend(pod_spec(spec, "spec", &["Always", "OnFailure", "Never"]));
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            replicas(obj, &mut errs);
            selector_and_template(obj, &mut errs);
            errs.extend(pod_spec(template, "spec.template.spec", &["Always"]));
        }
        ("", "ReplicationController") => {
            replicas(obj, &mut errs);
            errs.extend(pod_spec(template, "spec.template.spec", &["Always"]));
        }
        ("batch", "Job") => {
            errs.extend(pod_spec(
                template,
                "spec.template.spec",
                &["OnFailure", "Never"],
            ));
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;
    use serde_json::json;

    fn deployment(labels: Value, containers: Value) -> Value {
        json!({"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Always", "containers": containers}}}})
    }

    #[test]
    fn workloads_and_pods() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let pods = find("", "v1", "pods").unwrap();
        let good =
            json!([{"name": "server", "image": "my-api:v2.1", "ports": [{"containerPort": 8080}]}]);
        let cases = [
            (deploy, deployment(json!({"app": "api"}), good.clone()), vec![]),
            (
                deploy,
                deployment(json!({"app": "web"}), good.clone()),
                vec!["spec.template.metadata.labels: Invalid value: \"map[string]string{\\\"app\\\":\\\"web\\\"}\": `selector` does not match template `labels`"],
            ),
            (
                deploy,
                deployment(json!({"app": "api"}), json!([{"name": "server"}, {"name": "server", "image": "x", "ports": [{"containerPort": 0}]}])),
                vec![
                    "spec.template.spec.containers[0].image: Required value",
                    "spec.template.spec.containers[1].name: Duplicate value: \"server\"",
                    "spec.template.spec.containers[1].ports[0].containerPort: Invalid value: \"0\"",
                ],
            ),
            (deploy, json!({"spec": {"template": {"spec": {"containers": good.clone()}}}}), vec!["spec.selector: Required value"]),
            (pods, json!({"spec": {"containers": []}}), vec!["spec.containers: Required value"]),
            (pods, json!({"spec": {"restartPolicy": "Sometimes", "containers": good.clone()}}), vec!["spec.restartPolicy: Unsupported value: \"Sometimes\""]),
            (pods, json!({"spec": {"containers": [{"name": "Bad_Name", "image": "x"}]}}), vec!["spec.containers[0].name: Invalid value: \"Bad_Name\""]),
        ];
        for (kind, obj, want) in cases {
            let got: Vec<String> = validate(kind, &obj)
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            assert_eq!(got.len(), want.len(), "{obj}: {got:?}");
            for w in want {
                assert!(
                    got.iter().any(|g| g.starts_with(w)),
                    "{obj}: {got:?} lacks {w}"
                );
            }
        }
    }
}
