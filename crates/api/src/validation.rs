//! Per-kind checks beyond metadata, in Kubernetes' words and field paths: pod specs (and pod
//! templates), the workload kinds' selectors and replicas, ConfigMap and Secret keys and
//! values, Secret types, EndpointSlices, Leases.
//!
//! Pod specs include probes and lifecycle handlers, volumes and their mounts, tolerations,
//! security contexts, affinity and spread constraints;
//! Nodes their CIDRs and taints; core Events their type and involved object's namespace.
//!
//! Security contexts are checked in `security`, affinity and topology spread constraints in
//! `placement`, the workload and scheduling kinds' own fields (Deployment strategies, Job
//! counts, CronJob schedules, HPA bounds, PodDisruptionBudgets, PriorityClasses) in
//! `workloads`; what an update may not change in `update`.
//!
//! FIXME: the other kinds get the checks every kind gets (metadata, field validation against
//! their schema, immutable fields) but not their own yet: Ingress rules and path types,
//! NetworkPolicy peers and ports, RBAC rules and subjects, PersistentVolume and claim specs,
//! StorageClass parameters, ServiceAccount secrets, ControllerRevision data.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::kinds::Kind;
use crate::names;
use crate::object::Lookup;
use crate::object::{selector_from_json, FieldError};
use crate::quantity::{self, Quantity};

mod placement;
mod security;
mod update;
mod workloads;
pub use update::validate_update;

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn containers(
    spec: &Value,
    list: &str,
    path: &str,
    volumes: &BTreeSet<String>,
    errs: &mut Vec<FieldError>,
) {
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
                errs.push(FieldError::duplicate(at("name"), name));
            }
        }
        if str_at(c, "image").trim().is_empty() {
            errs.push(FieldError::required(at("image"), ""));
        }
        resources(c, &at("resources"), errs);
        security::container(c, &format!("{path}.{list}[{i}]"), errs);
        volume_mounts(c, volumes, &format!("{path}.{list}[{i}]"), errs);
        // Init containers run to completion before the others start; only those that keep
        // running beside them (sidecars, restartPolicy Always) are probed and hooked.
        let plain_init = list == "initContainers" && str_at(c, "restartPolicy") != "Always";
        if plain_init && c.get("lifecycle").is_some_and(|l| !l.is_null()) {
            errs.push(FieldError::forbidden(
                at("lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
        for which in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(p) = c.get(which).filter(|p| !p.is_null()) {
                if plain_init {
                    errs.push(FieldError::forbidden(
                        at(which),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                } else {
                    probe(p, &at(which), which, errs);
                }
            }
        }
        for hook in ["postStart", "preStop"] {
            if let Some(h) = c
                .lookup(&format!("/lifecycle/{hook}"))
                .filter(|h| !h.is_null())
            {
                handler(
                    h,
                    &["exec", "httpGet", "tcpSocket", "sleep"],
                    &at(&format!("lifecycle.{hook}")),
                    errs,
                );
            }
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

/// A container's requests and limits: quantities, none negative, no request above its limit.
fn resources(container: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let read = |list: &str| -> Vec<(String, String, Option<Quantity>)> {
        container
            .lookup(&format!("/resources/{list}"))
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

/// The items of the list at `key` of `obj`, numbered (none when it is absent).
fn items<'a>(obj: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    obj.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// Exactly one of `kinds` is set in `obj` (a probe's handler, a volume's source): none is
/// required (`missing` says what), each one beyond the first is forbidden (`extra`).
fn exactly_one(
    obj: &Value,
    kinds: &[&str],
    path: &str,
    (missing, extra): (&str, &str),
    errs: &mut Vec<FieldError>,
) {
    let mut given = kinds
        .iter()
        .filter(|k| obj.get(**k).is_some_and(|v| !v.is_null()));
    if given.next().is_none() {
        errs.push(FieldError::required(path, missing));
    }
    for k in given {
        errs.push(FieldError::forbidden(format!("{path}.{k}"), extra));
    }
}

/// The string at `key` of `obj` (at `path`; empty at the top), when set, is one of `allowed`.
fn one_of(obj: &Value, key: &str, path: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    let given = str_at(obj, key);
    if !given.is_empty() && !allowed.contains(&given) {
        let at = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        errs.push(FieldError::not_supported(at, given, allowed));
    }
}

fn nonnegative(obj: &Value, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj.get(key).and_then(Value::as_i64).filter(|n| *n < 0) {
        errs.push(FieldError::invalid(
            format!("{path}.{key}"),
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// A port given as a number (1-65535) or as a container port's name (an IANA service name).
fn port_number_or_name(port: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match port {
        Value::Number(n) => {
            if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                errs.push(FieldError::invalid(
                    path,
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        Value::String(name) => {
            for problem in names::port_name(name) {
                errs.push(FieldError::invalid(path, name, &problem));
            }
        }
        _ => errs.push(FieldError::required(path, "")),
    }
}

const HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

/// One probe: exactly one handler, sensible timings; liveness and startup probes succeed once.
fn probe(probe: &Value, path: &str, which: &str, errs: &mut Vec<FieldError>) {
    handler(probe, &HANDLERS, path, errs);
    for key in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(probe, key, path, errs);
    }
    if let Some(n) = probe.get("successThreshold").and_then(Value::as_i64) {
        if which != "readinessProbe" && n != 1 {
            errs.push(FieldError::invalid(
                format!("{path}.successThreshold"),
                &n.to_string(),
                "must be 1",
            ));
        }
    }
    if let Some(n) = probe
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        let field = format!("{path}.terminationGracePeriodSeconds");
        if which == "readinessProbe" {
            errs.push(FieldError::invalid(
                field,
                &n.to_string(),
                "must not be set for readinessProbes",
            ));
        } else if n <= 0 {
            errs.push(FieldError::invalid(
                field,
                &n.to_string(),
                "must be greater than 0",
            ));
        }
    }
}

/// A probe's or hook's handler: exactly one of `kinds`, each with what it needs.
fn handler(obj: &Value, kinds: &[&str], path: &str, errs: &mut Vec<FieldError>) {
    exactly_one(
        obj,
        kinds,
        path,
        (
            "must specify a handler type",
            "may not specify more than 1 handler type",
        ),
        errs,
    );
    if let Some(exec) = obj.get("exec").filter(|v| !v.is_null()) {
        if exec
            .get("command")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            errs.push(FieldError::required(format!("{path}.exec.command"), ""));
        }
    }
    if let Some(http) = obj.get("httpGet").filter(|v| !v.is_null()) {
        port_number_or_name(
            http.get("port").unwrap_or(&Value::Null),
            &format!("{path}.httpGet.port"),
            errs,
        );
        let scheme = str_at(http, "scheme");
        if !matches!(scheme, "" | "HTTP" | "HTTPS") {
            errs.push(FieldError::not_supported(
                format!("{path}.httpGet.scheme"),
                scheme,
                &["HTTP", "HTTPS"],
            ));
        }
    }
    if let Some(tcp) = obj.get("tcpSocket").filter(|v| !v.is_null()) {
        port_number_or_name(
            tcp.get("port").unwrap_or(&Value::Null),
            &format!("{path}.tcpSocket.port"),
            errs,
        );
    }
    if let Some(grpc) = obj.get("grpc").filter(|v| !v.is_null()) {
        let port = grpc.get("port").unwrap_or(&Value::Null);
        if port.is_string() {
            errs.push(FieldError::invalid(
                format!("{path}.grpc.port"),
                port.as_str().unwrap_or(""),
                "must be between 1 and 65535, inclusive",
            ));
        } else {
            port_number_or_name(port, &format!("{path}.grpc.port"), errs);
        }
    }
}

const VOLUME_SOURCES: [&str; 10] = [
    "emptyDir",
    "configMap",
    "secret",
    "hostPath",
    "downwardAPI",
    "projected",
    "persistentVolumeClaim",
    "nfs",
    "csi",
    "ephemeral",
];
/// `0` to `0777`, as file modes of volumes are.
const FILE_MODE: &str = "must be a number between 0 and 0777 (octal), both inclusive";

/// A path inside a volume: relative, without `..`.
fn local_path(path: &str, field: &str, errs: &mut Vec<FieldError>) {
    if path.is_empty() {
        errs.push(FieldError::required(field, ""));
    } else if path.starts_with('/') {
        errs.push(FieldError::invalid(field, path, "must be a relative path"));
    } else if path.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(field, path, "must not contain '..'"));
    }
}

fn file_mode(obj: &Value, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(mode) = obj.get(key).and_then(Value::as_i64) {
        if !(0..=0o777).contains(&mode) {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &mode.to_string(),
                FILE_MODE,
            ));
        }
    }
}

/// `items` of configMap, secret and projected sources: a key and a path inside the volume each.
fn key_items(source: &Value, path: &str, errs: &mut Vec<FieldError>) {
    file_mode(source, "defaultMode", path, errs);
    for (i, item) in items(source, "items") {
        let at = format!("{path}.items[{i}]");
        if str_at(item, "key").is_empty() {
            errs.push(FieldError::required(format!("{at}.key"), ""));
        }
        local_path(str_at(item, "path"), &format!("{at}.path"), errs);
        file_mode(item, "mode", &at, errs);
    }
}

/// The pod's volumes (names unique, one source each, with what that source needs); returns
/// their names for the mounts to refer to.
fn volumes(spec: &Value, path: &str, errs: &mut Vec<FieldError>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, volume) in items(spec, "volumes") {
        let at = format!("{path}.volumes[{i}]");
        let name = str_at(volume, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        } else {
            for problem in names::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, &problem));
            }
            if !seen.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
        }
        exactly_one(
            volume,
            &VOLUME_SOURCES,
            &at,
            (
                "must specify a volume type",
                "may not specify more than 1 volume type",
            ),
            errs,
        );
        let required = |source: &str, field: &str, errs: &mut Vec<FieldError>| {
            if let Some(s) = volume.get(source).filter(|v| !v.is_null()) {
                if str_at(s, field).is_empty() {
                    errs.push(FieldError::required(format!("{at}.{source}.{field}"), ""));
                }
            }
        };
        required("configMap", "name", errs);
        required("secret", "secretName", errs);
        required("hostPath", "path", errs);
        required("persistentVolumeClaim", "claimName", errs);
        for source in ["configMap", "secret"] {
            if let Some(s) = volume.get(source).filter(|v| !v.is_null()) {
                key_items(s, &format!("{at}.{source}"), errs);
            }
        }
        if let Some(projected) = volume.get("projected").filter(|v| !v.is_null()) {
            file_mode(projected, "defaultMode", &format!("{at}.projected"), errs);
        }
        if let Some(d) = volume.get("downwardAPI").filter(|v| !v.is_null()) {
            file_mode(d, "defaultMode", &format!("{at}.downwardAPI"), errs);
            for (j, item) in items(d, "items") {
                local_path(
                    str_at(item, "path"),
                    &format!("{at}.downwardAPI.items[{j}].path"),
                    errs,
                );
            }
        }
        if let Some(host) = volume.get("hostPath").filter(|v| !v.is_null()) {
            let kind = str_at(host, "type");
            const TYPES: [&str; 8] = [
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if !TYPES.contains(&kind) {
                errs.push(FieldError::not_supported(
                    format!("{at}.hostPath.type"),
                    kind,
                    &TYPES,
                ));
            }
        }
        if let Some(dir) = volume.get("emptyDir").filter(|v| !v.is_null()) {
            let medium = str_at(dir, "medium");
            if !matches!(medium, "" | "Memory" | "HugePages") {
                errs.push(FieldError::not_supported(
                    format!("{at}.emptyDir.medium"),
                    medium,
                    &["", "HugePages", "Memory"],
                ));
            }
        }
    }
    seen
}

/// A container's mounts: of volumes the pod has, each at its own absolute path.
fn volume_mounts(
    container: &Value,
    volumes: &BTreeSet<String>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let mut paths = BTreeSet::new();
    for (i, mount) in items(container, "volumeMounts") {
        let at = format!("{path}.volumeMounts[{i}]");
        let name = str_at(mount, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        } else if !volumes.contains(name) {
            errs.push(FieldError::not_found(format!("{at}.name"), name));
        }
        let mount_path = str_at(mount, "mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{at}.mountPath"), ""));
        } else if !paths.insert(mount_path.to_string()) {
            errs.push(FieldError::invalid(
                format!("{at}.mountPath"),
                mount_path,
                "must be unique",
            ));
        }
        let sub_path = str_at(mount, "subPath");
        if !sub_path.is_empty() {
            local_path(sub_path, &format!("{at}.subPath"), errs);
        }
    }
}

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A pod's tolerations, as Kubernetes checks them.
fn tolerations(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for (i, t) in items(spec, "tolerations") {
        let at = |f: &str| format!("{path}.tolerations[{i}].{f}");
        let (key, operator, value, effect) = (
            str_at(t, "key"),
            str_at(t, "operator"),
            str_at(t, "value"),
            str_at(t, "effect"),
        );
        if !key.is_empty() {
            for problem in names::qualified_name(key) {
                errs.push(FieldError::invalid(at("key"), key, &problem));
            }
        }
        match operator {
            "" | "Equal" if key.is_empty() => errs.push(FieldError::invalid(at("operator"), operator,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"")),
            "" | "Equal" => {
                for problem in names::label_value(value) {
                    errs.push(FieldError::invalid(at("value"), value, &problem));
                }
            }
            "Exists" if !value.is_empty() => errs.push(FieldError::invalid(at("operator"), value,
                "value must be empty when `operator` is 'Exists'")),
            "Exists" => {}
            other => errs.push(FieldError::not_supported(at("operator"), other, &["Equal", "Exists"])),
        }
        one_of(
            t,
            "effect",
            &format!("{path}.tolerations[{i}]"),
            &EFFECTS,
            errs,
        );
        if t.get("tolerationSeconds").is_some_and(|s| !s.is_null()) && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                at("effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
    }
}

/// A Node's spec: its pod CIDRs and taints (a key and an effect each, unique by the pair).
fn node(obj: &Value, errs: &mut Vec<FieldError>) {
    let cidr = obj
        .lookup("/spec/podCIDR")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !cidr.is_empty() && cidr.parse::<crate::cidr::Ipv4Cidr>().is_err() {
        errs.push(FieldError::invalid(
            "spec.podCIDR",
            cidr,
            "must be a valid CIDR",
        ));
    }
    for (i, c) in obj
        .lookup("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let c = c.as_str().unwrap_or("");
        if c.parse::<crate::cidr::Ipv4Cidr>().is_err() {
            errs.push(FieldError::invalid(
                format!("spec.podCIDRs[{i}]"),
                c,
                "must be a valid CIDR",
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, t) in obj
        .lookup("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = |f: &str| format!("spec.taints[{i}].{f}");
        let (key, value, effect) = (str_at(t, "key"), str_at(t, "value"), str_at(t, "effect"));
        if key.is_empty() {
            errs.push(FieldError::required(at("key"), ""));
        }
        for problem in names::qualified_name(key)
            .into_iter()
            .filter(|_| !key.is_empty())
        {
            errs.push(FieldError::invalid(at("key"), key, &problem));
        }
        for problem in names::label_value(value) {
            errs.push(FieldError::invalid(at("value"), value, &problem));
        }
        if effect.is_empty() {
            errs.push(FieldError::required(at("effect"), ""));
        } else if !EFFECTS.contains(&effect) {
            errs.push(FieldError::not_supported(at("effect"), effect, &EFFECTS));
        }
        if !seen.insert((key, effect)) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: format!("spec.taints[{i}]"),
                message: format!("Duplicate value: {{{key:?}: {effect:?}}}: taints must be unique by key and effect pair"),
            });
        }
    }
}

/// A core Event: of a known type, about an object in its own namespace (cluster-scoped objects
/// have none).
fn event(obj: &Value, errs: &mut Vec<FieldError>) {
    let kind = str_at(obj, "type");
    if !matches!(kind, "" | "Normal" | "Warning") {
        errs.push(FieldError::invalid(
            "type",
            kind,
            "has invalid value: must be Normal or Warning",
        ));
    }
    let namespace = crate::object::meta_str(obj, "namespace").unwrap_or("");
    let involved = obj
        .lookup("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !involved.is_empty() && involved != namespace {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            involved,
            "does not match event.namespace",
        ));
    }
    for (field, limit) in [("reason", 128), ("action", 128)] {
        let text = str_at(obj, field);
        if text.len() > limit {
            errs.push(FieldError::invalid(
                field,
                "",
                &format!("can have at most {limit} characters"),
            ));
        }
    }
}

/// Checks a pod spec at `path`; `restart_policies` are those its owner allows.
pub fn pod_spec(spec: &Value, path: &str, restart_policies: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let volumes = volumes(spec, path, &mut errs);
    containers(spec, "containers", path, &volumes, &mut errs);
    containers(spec, "initContainers", path, &volumes, &mut errs);
    tolerations(spec, path, &mut errs);
    security::pod(spec, path, &mut errs);
    placement::affinity(spec, path, &mut errs);
    placement::spread(spec, path, &mut errs);
    one_of(spec, "restartPolicy", path, restart_policies, &mut errs);
    errs
}

/// The selector of a workload must be given and must select its template's labels.
fn selector_and_template(obj: &Value, errs: &mut Vec<FieldError>) {
    let selector = obj.lookup("/spec/selector");
    let labels = obj
        .lookup("/spec/template/metadata/labels")
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
    if let Some(n) = obj.lookup("/spec/replicas").and_then(Value::as_i64) {
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
    let has = |key: &str| obj.lookup(&format!("/data/{key}")).is_some();
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
    let template = obj.lookup("/spec/template/spec").unwrap_or(&empty);
    match (kind.group, kind.kind) {
        ("", "Pod") => {
            let spec = obj.get("spec").unwrap_or(&empty);
            errs.extend(pod_spec(spec, "spec", &["Always", "OnFailure", "Never"]));
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            replicas(obj, &mut errs);
            selector_and_template(obj, &mut errs);
            errs.extend(pod_spec(template, "spec.template.spec", &["Always"]));
            match kind.kind {
                "Deployment" => workloads::deployment(obj, &mut errs),
                "ReplicaSet" => {
                    let spec = obj.get("spec").unwrap_or(&empty);
                    nonnegative(spec, "minReadySeconds", "spec", &mut errs);
                }
                _ => workloads::update_strategy(obj, &mut errs),
            }
        }
        ("", "ReplicationController") => {
            replicas(obj, &mut errs);
            errs.extend(pod_spec(template, "spec.template.spec", &["Always"]));
        }
        ("batch", "Job") => {
            workloads::job_spec(obj.get("spec").unwrap_or(&empty), "spec", &mut errs);
            errs.extend(pod_spec(
                template,
                "spec.template.spec",
                &["OnFailure", "Never"],
            ));
        }
        ("batch", "CronJob") => workloads::cron_job(obj, &mut errs),
        ("autoscaling", "HorizontalPodAutoscaler") => workloads::autoscaler(obj, &mut errs),
        ("policy", "PodDisruptionBudget") => workloads::disruption_budget(obj, &mut errs),
        ("scheduling.k8s.io", "PriorityClass") => workloads::priority_class(obj, &mut errs),
        ("", "ConfigMap") => data_keys(obj, false, &mut errs),
        ("", "Secret") => {
            data_keys(obj, true, &mut errs);
            secret_type(obj, &mut errs);
        }
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(obj, &mut errs),
        ("", "Node") => node(obj, &mut errs),
        ("", "Event") => event(obj, &mut errs),
        ("coordination.k8s.io", "Lease") => {
            if let Some(d) = obj
                .lookup("/spec/leaseDurationSeconds")
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
        errs.push(FieldError::not_supported(
            "addressType",
            kind,
            &["FQDN", "IPv4", "IPv6"],
        ));
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

    #[test]
    fn probes_volumes_tolerations_nodes_and_events() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = |extra: Value| {
            let mut spec = json!({"containers": [{"name": "c", "image": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                if k == "container" {
                    for (ck, cv) in v.as_object().unwrap() {
                        spec["containers"][0][ck] = cv.clone();
                    }
                } else {
                    spec[k] = v.clone();
                }
            }
            json!({"spec": spec})
        };
        let cases = [
            (pods, pod(json!({"container": {"livenessProbe": {"httpGet": {"port": 8080}, "periodSeconds": 10, "successThreshold": 1}}})), vec![]),
            (pods, pod(json!({"container": {"livenessProbe": {"periodSeconds": 10}}})),
             vec!["spec.containers[0].livenessProbe: Required value: must specify a handler type"]),
            (pods, pod(json!({"container": {"readinessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}, "successThreshold": 2}}})),
             vec!["spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"]),
            (pods, pod(json!({"container": {"livenessProbe": {"exec": {}, "successThreshold": 2, "periodSeconds": -1}}})),
             vec!["spec.containers[0].livenessProbe.exec.command: Required value",
                  "spec.containers[0].livenessProbe.successThreshold: Invalid value: \"2\": must be 1",
                  "spec.containers[0].livenessProbe.periodSeconds: Invalid value: \"-1\": must be greater than or equal to 0"]),
            (pods, pod(json!({"container": {"startupProbe": {"httpGet": {"port": "Web_Port", "scheme": "FTP"}}}})),
             vec!["spec.containers[0].startupProbe.httpGet.port: Invalid value: \"Web_Port\": must contain only alpha-numeric",
                  "spec.containers[0].startupProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\""]),
            (pods, pod(json!({"container": {"readinessProbe": {"tcpSocket": {"port": 70000}, "terminationGracePeriodSeconds": 5}}})),
             vec!["spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: \"70000\": must be between 1 and 65535, inclusive",
                  "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: \"5\": must not be set for readinessProbes"]),
            (pods, pod(json!({"container": {"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}})), vec![]),
            (pods, pod(json!({
                "volumes": [{"name": "config", "configMap": {"name": "app-config", "defaultMode": 420, "items": [{"key": "k", "path": "conf/app.yaml"}]}},
                            {"name": "scratch", "emptyDir": {}}],
                "container": {"volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "scratch", "mountPath": "/tmp", "subPath": "a/b"}]}})), vec![]),
            (pods, pod(json!({
                "volumes": [{"name": "v", "emptyDir": {}, "secret": {}}, {"name": "v", "configMap": {"name": "c", "defaultMode": 1000, "items": [{"key": "", "path": "../x"}]}}, {"name": "none"}],
                "container": {"volumeMounts": [{"name": "gone", "mountPath": "/a"}, {"name": "v", "mountPath": "/a", "subPath": "/abs"}]}})),
             vec!["spec.volumes[0].secret: Forbidden: may not specify more than 1 volume type",
                  "spec.volumes[0].secret.secretName: Required value",
                  "spec.volumes[1].name: Duplicate value: \"v\"",
                  "spec.volumes[1].configMap.defaultMode: Invalid value: \"1000\": must be a number between 0 and 0777 (octal), both inclusive",
                  "spec.volumes[1].configMap.items[0].key: Required value",
                  "spec.volumes[1].configMap.items[0].path: Invalid value: \"../x\": must not contain '..'",
                  "spec.volumes[2]: Required value: must specify a volume type",
                  "spec.containers[0].volumeMounts[0].name: Not found: \"gone\"",
                  "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/a\": must be unique",
                  "spec.containers[0].volumeMounts[1].subPath: Invalid value: \"/abs\": must be a relative path"]),
            (pods, pod(json!({"tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"operator": "Exists"},
                {"key": "k", "operator": "Exists", "value": "v"},
                {"operator": "Equal", "value": "v"},
                {"key": "k", "operator": "Like", "effect": "Sometimes"},
                {"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 30}]})),
             vec!["spec.tolerations[2].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
                  "spec.tolerations[3].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty",
                  "spec.tolerations[4].operator: Unsupported value: \"Like\": supported values: \"Equal\", \"Exists\"",
                  "spec.tolerations[4].effect: Unsupported value: \"Sometimes\"",
                  "spec.tolerations[5].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set"]),
            (find("", "v1", "nodes").unwrap(), json!({"spec": {"podCIDR": "10.42.0.0/24", "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]}}), vec![]),
            (find("", "v1", "nodes").unwrap(), json!({"spec": {"podCIDR": "10.42.0.0/33", "taints": [
                {"key": "gpu", "effect": "NoSchedule"}, {"key": "gpu", "effect": "NoSchedule"}, {"effect": "Never"}]}}),
             vec!["spec.podCIDR: Invalid value: \"10.42.0.0/33\": must be a valid CIDR",
                  "spec.taints[1]: Duplicate value: {\"gpu\": \"NoSchedule\"}: taints must be unique by key and effect pair",
                  "spec.taints[2].key: Required value",
                  "spec.taints[2].effect: Unsupported value: \"Never\""]),
            (find("", "v1", "events").unwrap(), json!({"metadata": {"namespace": "default"}, "type": "Normal", "involvedObject": {"kind": "Pod", "namespace": "default"}}), vec![]),
            (find("", "v1", "events").unwrap(), json!({"metadata": {"namespace": "default"}, "type": "Bad", "involvedObject": {"kind": "Pod", "namespace": "other"}}),
             vec!["type: Invalid value: \"Bad\"", "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"]),
        ];
        for (kind, obj, want) in cases {
            crate::testing::check_errors(&obj, &validate(kind, &obj), &want);
        }
    }
}
