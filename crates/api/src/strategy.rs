//! What the server does to an object on create and update, whatever its kind: type and name
//! checks, system metadata (uid, timestamps, generation), status kept to its own endpoint.
//!
//! Pure: the caller supplies the clock, the uid and the random name suffix.

use serde_json::{Map, Value};

use crate::kinds::Kind;
use crate::object::{self, FieldError};
use crate::{defaults, validation};

/// Why a create or update is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the body does not fit the request.
    BadRequest(String),
    /// 422: field errors.
    Invalid(Vec<FieldError>),
}

/// What the server supplies to a create.
pub struct CreateContext<'a> {
    /// The namespace of the URL, for namespaced kinds.
    pub namespace: Option<&'a str>,
    pub uid: &'a str,
    /// RFC 3339, seconds precision, UTC.
    pub now: &'a str,
    /// Appended to `generateName` when the object has no name.
    pub name_suffix: &'a str,
}

/// Which endpoint an update came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The object itself: status changes are ignored for kinds with a status subresource.
    Main,
    /// `/status`: only status changes are taken.
    Status,
}

/// Metadata fields only the server writes; a client's values are dropped on create.
const SYSTEM_ON_CREATE: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "selfLink",
];

/// Metadata fields an update keeps from the stored object, whatever the client sent.
const SYSTEM_ON_UPDATE: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
];

/// Checks `apiVersion` and `kind` of a body against the endpoint's, filling them when absent.
fn check_type(obj: &mut Map<String, Value>, kind: &Kind) -> Result<(), Rejection> {
    let want_version = kind.api_version();
    for (field, want) in [("apiVersion", want_version.as_str()), ("kind", kind.kind)] {
        match obj.get(field) {
            None => {
                obj.insert(field.into(), Value::String(want.into()));
            }
            Some(Value::String(s)) if s.is_empty() => {
                obj.insert(field.into(), Value::String(want.into()));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => {
                let what = if field == "kind" {
                    "kind"
                } else {
                    "API version"
                };
                return Err(Rejection::BadRequest(format!(
                    "the {what} in the data ({}) does not match the expected {what} ({want})",
                    other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_string)
                )));
            }
        }
    }
    Ok(())
}

fn as_object(body: Value) -> Result<Map<String, Value>, Rejection> {
    match body {
        Value::Object(map) => Ok(map),
        other => Err(Rejection::BadRequest(format!(
            "the request body must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn metadata_mut(obj: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, Rejection> {
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    if !meta.is_object() {
        return Err(Rejection::Invalid(vec![FieldError::invalid(
            "metadata",
            &meta.to_string(),
            "must be an object",
        )]));
    }
    Ok(meta.as_object_mut().expect("checked above"))
}

/// Kinds whose names are DNS labels rather than subdomains.
fn name_is_label(kind: &Kind) -> bool {
    kind.group.is_empty() && matches!(kind.kind, "Namespace" | "Service")
}

fn validate(obj: &Value, kind: &Kind) -> Result<(), Rejection> {
    let mut errs = object::validate_metadata(obj, name_is_label(kind));
    errs.extend(validation::validate(kind, obj));
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Rejection::Invalid(errs))
    }
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_part(obj: &Map<String, Value>) -> std::collections::BTreeMap<&String, &Value> {
    obj.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
        .collect()
}

/// The object to store for a create.
pub fn prepare_create(kind: &Kind, body: Value, ctx: &CreateContext) -> Result<Value, Rejection> {
    let mut obj = as_object(body)?;
    check_type(&mut obj, kind)?;
    fold_string_data(kind, &mut obj)?;
    let meta = metadata_mut(&mut obj)?;
    for field in SYSTEM_ON_CREATE {
        meta.shift_remove(*field);
    }
    match (kind.namespaced, ctx.namespace) {
        (true, Some(ns)) => match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(Rejection::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .into(),
                ))
            }
            _ => {
                meta.insert("namespace".into(), ns.into());
            }
        },
        _ => {
            meta.shift_remove("namespace");
        }
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if prefix.is_empty() {
            return Err(Rejection::Invalid(vec![FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )]));
        }
        let generated = format!("{prefix}{}", ctx.name_suffix);
        meta.insert("name".into(), generated.into());
    }
    meta.insert("uid".into(), ctx.uid.into());
    meta.insert("creationTimestamp".into(), ctx.now.into());
    if kind.has_status() {
        meta.insert("generation".into(), 1.into());
        obj.insert("status".into(), initial_status(kind));
    }
    if kind.group.is_empty() && kind.kind == "Namespace" {
        let spec = obj
            .entry("spec")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(spec) = spec.as_object_mut() {
            spec.entry("finalizers")
                .or_insert_with(|| Value::Array(vec!["kubernetes".into()]));
        }
    }
    let mut obj = Value::Object(obj);
    strip_nulls(&mut obj);
    defaults::apply(kind, &mut obj);
    if kind.group.is_empty() && kind.kind == "Pod" {
        let qos = defaults::qos_class(obj.get("spec").unwrap_or(&Value::Null));
        obj["status"]["qosClass"] = qos.into();
    }
    validate(&obj, kind)?;
    Ok(obj)
}

/// Secrets: `stringData` is a write-only convenience, folded into `data` (base64) by the server;
/// its keys win over `data`'s.
fn fold_string_data(kind: &Kind, obj: &mut Map<String, Value>) -> Result<(), Rejection> {
    use base64::Engine;
    if !(kind.group.is_empty() && kind.kind == "Secret") {
        return Ok(());
    }
    let Some(string_data) = obj.shift_remove("stringData") else {
        return Ok(());
    };
    let Value::Object(string_data) = string_data else {
        return Err(Rejection::Invalid(vec![FieldError::invalid(
            "stringData",
            &string_data.to_string(),
            "must be a map of strings",
        )]));
    };
    let data = obj
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if data.is_null() {
        *data = Value::Object(Map::new());
    }
    let Some(data) = data.as_object_mut() else {
        return Err(Rejection::Invalid(vec![FieldError::invalid(
            "data",
            &data.to_string(),
            "must be a map of base64 strings",
        )]));
    };
    for (key, value) in string_data {
        let Some(text) = value.as_str() else {
            return Err(Rejection::Invalid(vec![FieldError::invalid(
                format!("stringData[{key}]"),
                &value.to_string(),
                "must be a string",
            )]));
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        data.insert(key, encoded.into());
    }
    Ok(())
}

/// Drops fields set to null: typed decoding reads them as unset (kubectl writes
/// `creationTimestamp: null` into templates), so two objects that mean the same compare equal.
/// Empty lists and maps of the metadata go too, as Kubernetes' encoding omits them (a
/// controller that takes the last owner reference off leaves no `ownerReferences: []`).
fn strip_nulls(v: &mut Value) {
    strip_null_fields(v);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|field, value| {
            let empty = value.as_array().is_some_and(Vec::is_empty)
                || value.as_object().is_some_and(Map::is_empty);
            !(empty
                && matches!(
                    field.as_str(),
                    "ownerReferences" | "finalizers" | "labels" | "annotations"
                ))
        });
    }
}

fn strip_null_fields(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, child| !child.is_null());
            map.values_mut().for_each(strip_null_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_fields),
        _ => {}
    }
}

/// The status a new object starts with: clients do not set it.
fn initial_status(kind: &Kind) -> Value {
    let phase = match (kind.group, kind.kind) {
        ("", "Namespace") => Some("Active"),
        ("", "Pod") => Some("Pending"),
        _ => None,
    };
    let mut status = Map::new();
    if let Some(phase) = phase {
        status.insert("phase".into(), phase.into());
    }
    Value::Object(status)
}

/// Whether `a` equals `b` with its fields in the same order (at its top: the order of what
/// the server fills in, metadata's, is the one that can differ).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().eq(y.keys()) && a == b,
        _ => a == b,
    }
}

/// The object to store for an update of `old` with `body` through `endpoint`. The caller
/// compares the result with `old` to skip writes that change nothing.
pub fn prepare_update(
    kind: &Kind,
    old: &Value,
    body: Value,
    endpoint: Endpoint,
) -> Result<Value, Rejection> {
    let mut new = as_object(body)?;
    check_type(&mut new, kind)?;
    fold_string_data(kind, &mut new)?;
    let no_fields = Map::new();
    let old_obj = old.as_object().unwrap_or(&no_fields);
    let old_meta = object::metadata(old).unwrap_or(&no_fields);
    let name = object::name(old);
    {
        let meta = metadata_mut(&mut new)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(given) if given != name => {
                return Err(Rejection::BadRequest(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), name.into());
            }
        }
        if let (Some(given), Some(had)) = (
            meta.get("uid").and_then(Value::as_str),
            old_meta.get("uid").and_then(Value::as_str),
        ) {
            if !given.is_empty() && given != had {
                return Err(Rejection::Invalid(vec![FieldError::invalid(
                    "metadata.uid",
                    given,
                    "field is immutable",
                )]));
            }
        }
        meta.shift_remove("resourceVersion");
        meta.shift_remove("selfLink");
        for field in SYSTEM_ON_UPDATE {
            match old_meta.get(*field) {
                Some(v) => meta.insert((*field).into(), v.clone()),
                None => meta.shift_remove(*field),
            };
        }
    }
    let mut result = match endpoint {
        Endpoint::Main => {
            if kind.has_status() {
                match old_obj.get("status") {
                    Some(s) => new.insert("status".into(), s.clone()),
                    None => new.shift_remove("status"),
                };
            }
            new
        }
        Endpoint::Status => {
            // Only status changes; everything else stays as stored. A field the body carries as
            // stored is taken from the body (a patch's are), any other copied from the stored.
            let mut status = new.shift_remove("status");
            let mut kept = Map::with_capacity(old_obj.len() + 1);
            for (name, stored) in old_obj {
                if name == "status" {
                    if let Some(s) = status.take() {
                        kept.insert(name.clone(), s);
                    }
                    continue;
                }
                let value = match new.shift_remove(name) {
                    Some(given) if same(&given, stored) => given,
                    _ => stored.clone(),
                };
                kept.insert(name.clone(), value);
            }
            if let Some(s) = status {
                kept.insert("status".into(), s);
            }
            kept
        }
    };
    if kind.has_status() && endpoint == Endpoint::Main && spec_part(&result) != spec_part(old_obj) {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), (generation + 1).into());
        }
    }
    let mut result = Value::Object(result);
    strip_nulls(&mut result);
    defaults::apply(kind, &mut result);
    match endpoint {
        Endpoint::Main => {
            validate(&result, kind)?;
            let errs = validation::validate_update(kind, old, &result);
            if !errs.is_empty() {
                return Err(Rejection::Invalid(errs));
            }
        }
        // Through the status endpoint only the status changes (the kind's checks are of the
        // rest, which stays as stored) and nothing fixed can have moved: as Kubernetes'
        // status strategies, only the metadata is checked.
        Endpoint::Status => {
            let errs = object::validate_metadata(&result, name_is_label(kind));
            if !errs.is_empty() {
                return Err(Rejection::Invalid(errs));
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;
    use serde_json::json;

    fn ctx(namespace: Option<&str>) -> CreateContext<'_> {
        CreateContext {
            namespace,
            uid: "u-1",
            now: "2026-11-25T12:00:00Z",
            name_suffix: "x7k2p",
        }
    }

    fn show(r: Result<Value, Rejection>) -> String {
        match r {
            Ok(v) => v.to_string(),
            Err(Rejection::BadRequest(m)) => format!("400 {m}"),
            Err(Rejection::Invalid(errs)) => format!(
                "422 {}",
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    #[test]
    fn create() {
        let cm = find("", "v1", "configmaps").unwrap();
        let pdb = find("policy", "v1", "poddisruptionbudgets").unwrap();
        let ns = find("", "v1", "namespaces").unwrap();
        let secret = find("", "v1", "secrets").unwrap();
        let cases = [
            (
                cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config", "resourceVersion": "9", "uid": "mine"}, "data": {"a": "1"}}),
                Some("default"),
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"app-config","namespace":"default","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z"},"data":{"a":"1"}}"#,
            ),
            (
                cm,
                json!({"metadata": {"generateName": "cfg-"}}),
                Some("default"),
                r#"{"metadata":{"generateName":"cfg-","namespace":"default","name":"cfg-x7k2p","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z"},"apiVersion":"v1","kind":"ConfigMap"}"#,
            ),
            (
                pdb,
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "api-server"}, "spec": {"replicas": 3}, "status": {"replicas": 9}}),
                Some("default"),
                r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"api-server","namespace":"default","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z","generation":1},"spec":{"replicas":3},"status":{}}"#,
            ),
            (
                ns,
                json!({"metadata": {"name": "team-a", "namespace": "ignored"}}),
                None,
                r#"{"metadata":{"name":"team-a","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z","generation":1},"apiVersion":"v1","kind":"Namespace","status":{"phase":"Active"},"spec":{"finalizers":["kubernetes"]}}"#,
            ),
            (cm, json!({"metadata": {}}), Some("default"), "422 metadata.name: Required value: name or generateName is required"),
            (cm, json!({"metadata": {"name": "Bad"}}), Some("default"), "422 metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 subdomain"),
            (ns, json!({"metadata": {"name": "a.b"}}), None, "422 metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label"),
            (cm, json!({"apiVersion": "apps/v1", "metadata": {"name": "a"}}), Some("default"), "400 the API version in the data (apps/v1) does not match the expected API version (v1)"),
            (cm, json!({"kind": "Secret", "metadata": {"name": "a"}}), Some("default"), "400 the kind in the data (Secret) does not match the expected kind (ConfigMap)"),
            (cm, json!({"metadata": {"name": "a", "namespace": "other"}}), Some("default"), "400 the namespace of the provided object does not match"),
            (cm, json!([1]), Some("default"), "400 the request body must be a JSON object, not an array"),
            (
                cm,
                json!({"metadata": {"name": "n", "creationTimestamp": null, "labels": {"a": "b"}, "finalizers": [], "annotations": {}}, "data": {"k": null}}),
                Some("default"),
                r#"{"metadata":{"name":"n","labels":{"a":"b"},"namespace":"default","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z"},"data":{},"apiVersion":"v1","kind":"ConfigMap"}"#,
            ),
            (cm, json!({"metadata": 5}), Some("default"), "422 metadata: Invalid value: \"5\": must be an object"),
            (
                secret,
                json!({"metadata": {"name": "db-creds"}, "type": "Opaque", "data": {"user": "YQ==", "password": "b2xk"}, "stringData": {"password": "s3cur3-p4ss"}}),
                Some("default"),
                r#"{"metadata":{"name":"db-creds","namespace":"default","uid":"u-1","creationTimestamp":"2026-11-25T12:00:00Z"},"type":"Opaque","data":{"user":"YQ==","password":"czNjdXIzLXA0c3M="},"apiVersion":"v1","kind":"Secret"}"#,
            ),
            (secret, json!({"metadata": {"name": "s"}, "stringData": {"a": 1}}), Some("default"), "422 stringData[a]: Invalid value: \"1\": must be a string"),
        ];
        for (kind, body, namespace, want) in cases {
            let got = show(prepare_create(kind, body.clone(), &ctx(namespace)));
            assert!(got.starts_with(want), "{body}:\n got {got}\nwant {want}");
        }
    }

    #[test]
    fn update() {
        let pdb = find("policy", "v1", "poddisruptionbudgets").unwrap();
        let cm = find("", "v1", "configmaps").unwrap();
        let old = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "d", "namespace": "default", "uid": "u-1", "creationTimestamp": "t0", "generation": 2},
            "spec": {"replicas": 3}, "status": {"replicas": 3}});
        let mut no_status = old.clone();
        no_status.as_object_mut().unwrap().shift_remove("status");
        let mut invalid = old.clone();
        invalid["spec"] = json!({"minAvailable": "150%"});
        let old_cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u-1", "creationTimestamp": "t0"}, "data": {"a": "1"}});
        let cases = [
            // A spec change bumps generation; the status sent on the main endpoint is ignored.
            (
                pdb,
                &old,
                json!({"metadata": {"name": "d", "resourceVersion": "5"}, "spec": {"replicas": 4}, "status": {"replicas": 0}}),
                Endpoint::Main,
                r#"{"metadata":{"name":"d","uid":"u-1","creationTimestamp":"t0","generation":3,"namespace":"default"},"spec":{"replicas":4},"status":{"replicas":3},"apiVersion":"policy/v1","kind":"PodDisruptionBudget"}"#,
            ),
            // A label change alone does not.
            (
                pdb,
                &old,
                json!({"metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"replicas": 3}}),
                Endpoint::Main,
                r#"{"metadata":{"name":"d","labels":{"a":"b"},"uid":"u-1","creationTimestamp":"t0","generation":2,"namespace":"default"},"spec":{"replicas":3},"apiVersion":"policy/v1","kind":"PodDisruptionBudget","status":{"replicas":3}}"#,
            ),
            // The status endpoint takes status only.
            (
                pdb,
                &old,
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 9}, "status": {"replicas": 1}}),
                Endpoint::Status,
                r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"d","namespace":"default","uid":"u-1","creationTimestamp":"t0","generation":2},"spec":{"replicas":3},"status":{"replicas":1}}"#,
            ),
            // A body carrying the stored fields (a patch's) keeps them and the stored order; a
            // stored object without status gets the new one last.
            (
                pdb,
                &old,
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": "d", "namespace": "default", "uid": "u-1", "creationTimestamp": "t0", "generation": 2},
                    "spec": {"replicas": 3}, "status": {"replicas": 2}}),
                Endpoint::Status,
                r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"d","namespace":"default","uid":"u-1","creationTimestamp":"t0","generation":2},"spec":{"replicas":3},"status":{"replicas":2}}"#,
            ),
            (
                pdb,
                &no_status,
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 9}, "status": {"replicas": 1}}),
                Endpoint::Status,
                r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"d","namespace":"default","uid":"u-1","creationTimestamp":"t0","generation":2},"spec":{"replicas":3},"status":{"replicas":1}}"#,
            ),
            // A status write checks the metadata only, as Kubernetes' status strategies: an
            // object stored with a spec today's checks refuse still takes its status.
            (
                pdb,
                &invalid,
                json!({"metadata": {"name": "d"}, "status": {"replicas": 1}}),
                Endpoint::Status,
                r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"d","namespace":"default","uid":"u-1","creationTimestamp":"t0","generation":2},"spec":{"minAvailable":"150%"},"status":{"replicas":1}}"#,
            ),
            (
                pdb,
                &invalid,
                json!({"metadata": {"name": "d"}, "spec": {"minAvailable": "150%"}}),
                Endpoint::Main,
                "422 spec.minAvailable: Invalid value: \"150%\": must not be greater than 100%",
            ),
            // System fields cannot be overwritten.
            (
                cm,
                &old_cm,
                json!({"metadata": {"name": "c", "creationTimestamp": "t9", "namespace": "x"}, "data": {"a": "2"}}),
                Endpoint::Main,
                r#"{"metadata":{"name":"c","creationTimestamp":"t0","namespace":"default","uid":"u-1"},"data":{"a":"2"},"apiVersion":"v1","kind":"ConfigMap"}"#,
            ),
            (
                cm,
                &old_cm,
                json!({"metadata": {"name": "other"}}),
                Endpoint::Main,
                "400 the name of the object (other) does not match the name on the URL (c)",
            ),
            (
                cm,
                &old_cm,
                json!({"metadata": {"name": "c", "uid": "u-2"}}),
                Endpoint::Main,
                "422 metadata.uid: Invalid value: \"u-2\": field is immutable",
            ),
        ];
        for (kind, old, body, endpoint, want) in cases {
            let got = show(prepare_update(kind, old, body.clone(), endpoint));
            assert!(got.starts_with(want), "{body}:\n got {got}\nwant {want}");
        }
    }
}
