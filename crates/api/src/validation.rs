//! Per-kind checks beyond metadata, in Kubernetes' words and field paths: pod specs (and pod
//! templates), the workload kinds' selectors and replicas, ConfigMap and Secret keys and
//! values, Secret types, EndpointSlices, Leases.
//!
//! FIXME(issue 5): probes, volumes, Nodes' and Events' fields are not checked yet.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::kinds::Kind;
use crate::names;
use crate::object::{selector_from_json, FieldError};
use crate::quantity::{self, Quantity};

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
        resources(c, &at("resources"), errs);
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

/// A container's requests and limits: quantities, none negative, no request above its limit.
fn resources(container: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let read = |list: &str| -> Vec<(String, String, Option<Quantity>)> {
        container
            .pointer(&format!("/resources/{list}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let parsed = quantity::parse(&text).ok();
                (name.clone(), text, parsed)
            })
            .collect()
    };
    let (limits, requests) = (read("limits"), read("requests"));
    for (list, items) in [("limits", &limits), ("requests", &requests)] {
        for (name, text, parsed) in items {
            let field = format!("{path}.{list}[{name}]");
            match parsed {
                None => errs.push(FieldError::invalid(
                    field,
                    text,
                    &quantity::QuantityError.to_string(),
                )),
                Some(q) if q.milli() < 0 => errs.push(FieldError::invalid(
                    field,
                    text,
                    "must be greater than or equal to 0",
                )),
                Some(_) => {}
            }
        }
    }
    for (name, text, request) in &requests {
        let limit = limits.iter().find(|(n, _, _)| n == name);
        if let (Some(request), Some((_, limit_text, Some(limit)))) = (request, limit) {
            if request > limit {
                errs.push(FieldError::invalid(
                    format!("{path}.requests"),
                    text,
                    &format!("must be less than or equal to {name} limit of {limit_text}"),
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

/// Keys of ConfigMaps and Secrets, as Kubernetes' IsConfigMapKey has them.
fn config_key(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.len() > 253 {
        return Some("must be no more than 253 characters and not empty");
    }
    if key == "." || key == ".." {
        return Some("must not be '.' or '..'");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        );
    }
    None
}

/// The keys of `data` and `binaryData` (ConfigMaps, Secrets), each valid and not in both;
/// Secrets' values are base64.
fn data_keys(obj: &Value, binary: bool, errs: &mut Vec<FieldError>) {
    use base64::Engine;
    let mut seen = BTreeSet::new();
    for field in ["data", "binaryData"] {
        let Some(map) = obj.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in map {
            let path = format!("{field}[{key}]");
            if let Some(problem) = config_key(key) {
                errs.push(FieldError::invalid(&path, key, problem));
            }
            if !seen.insert(key.clone()) {
                errs.push(FieldError::invalid(
                    &path,
                    key,
                    "duplicate of key present in data",
                ));
            }
            let text = value.as_str();
            let decodes = |t: &str| base64::engine::general_purpose::STANDARD.decode(t).is_ok();
            let ok = match (binary || field == "binaryData", text) {
                (_, None) => false,
                (true, Some(t)) => decodes(t),
                (false, Some(_)) => true,
            };
            if !ok {
                let shown = text.map_or_else(|| value.to_string(), str::to_string);
                let want = if binary || field == "binaryData" {
                    "must be base64-encoded data"
                } else {
                    "must be a string"
                };
                errs.push(FieldError::invalid(&path, &shown, want));
            }
        }
    }
}

/// Secrets of the well-known types carry the keys their type promises.
fn secret_type(obj: &Value, errs: &mut Vec<FieldError>) {
    let has = |key: &str| obj.pointer(&format!("/data/{key}")).is_some();
    let needed: &[&str] = match str_at(obj, "type") {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/basic-auth" | "kubernetes.io/ssh-auth" | "Opaque" | "" => &[],
        _ => &[],
    };
    for key in needed {
        if !has(key) {
            errs.push(FieldError::required(format!("data[{key}]"), ""));
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
        ("", "ConfigMap") => data_keys(obj, false, &mut errs),
        ("", "Secret") => {
            data_keys(obj, true, &mut errs);
            secret_type(obj, &mut errs);
        }
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(obj, &mut errs),
        ("coordination.k8s.io", "Lease") => {
            if let Some(d) = obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
            {
                if d <= 0 {
                    errs.push(FieldError::invalid(
                        "spec.leaseDurationSeconds",
                        &d.to_string(),
                        "must be greater than 0",
                    ));
                }
            }
        }
        _ => {}
    }
    errs
}

fn endpoint_slice(obj: &Value, errs: &mut Vec<FieldError>) {
    let kind = str_at(obj, "addressType");
    if !matches!(kind, "IPv4" | "IPv6" | "FQDN") {
        errs.push(FieldError {
            reason: "FieldValueNotSupported",
            field: "addressType".into(),
            message: format!(
                "Unsupported value: {kind:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ),
        });
    }
    let endpoints = obj
        .get("endpoints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, e) in endpoints.iter().enumerate() {
        if e.get("addresses")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            errs.push(FieldError::required(
                format!("endpoints[{i}].addresses"),
                "must contain at least 1 address",
            ));
        }
    }
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
            (find("", "v1", "configmaps").unwrap(), json!({"data": {"ok.key": "v", "bad key": "v"}, "binaryData": {"ok.key": "AA=="}}),
             vec!["data[bad key]: Invalid value: \"bad key\": a valid config key", "binaryData[ok.key]: Invalid value: \"ok.key\": duplicate of key present in data"]),
            (find("", "v1", "secrets").unwrap(), json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "not base64!"}}),
             vec!["data[tls.crt]: Invalid value: \"not base64!\": must be base64-encoded data", "data[tls.key]: Required value"]),
            (find("discovery.k8s.io", "v1", "endpointslices").unwrap(), json!({"addressType": "IPv5", "endpoints": [{"addresses": []}]}),
             vec!["addressType: Unsupported value: \"IPv5\"", "endpoints[0].addresses: Required value"]),
        ];
        for (kind, obj, want) in cases {
            crate::testing::check_errors(&obj, &validate(kind, &obj), &want);
        }
    }
}
