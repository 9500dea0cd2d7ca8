//! Reading and checking API objects held as JSON: metadata accessors, labels and selectable
//! fields for selectors, and field errors in Kubernetes' words.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::kinds::Kind;
use crate::{names, FieldSelector, LabelSelector};

/// One problem with one field of an object, as a `Status` cause reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    /// The field path (`metadata.name`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }

    /// An invalid value shown as it is (a number, a list or a struct as Kubernetes prints
    /// them) rather than quoted.
    pub fn invalid_shown(field: impl Into<String>, shown: &str, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if detail.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// A value the field does not take, with those it does.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|v| format!("{v:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value:?}"),
        }
    }

    /// A reference to something that is not there (a volume a mount names).
    pub fn not_found(field: impl Into<String>, value: &str) -> Self {
        FieldError {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {value:?}"),
        }
    }
}

/// RFC 3339 in whole seconds, as Kubernetes writes object timestamps.
pub fn timestamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether the object's `status.conditions` has `kind` with status `True`.
pub fn condition_true(obj: &Value, kind: &str) -> bool {
    obj.lookup("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// Puts `condition` into `status.conditions`, replacing the one of the same `type` (and making
/// `status` and the list when missing).
pub fn set_condition(obj: &mut Value, condition: Value) {
    if !obj["status"].is_object() {
        obj["status"] = Value::Object(Map::new());
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = Value::Array(Vec::new());
    }
    if let Value::Array(conditions) = &mut obj["status"]["conditions"] {
        conditions.retain(|c| c["type"] != condition["type"]);
        conditions.push(condition);
    }
}

/// The object's `metadata`, if it is an object.
pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

/// A string field of `metadata` (`name`, `namespace`, `uid`, `resourceVersion`, ...).
/// JSON Pointer look-ups that allocate nothing: `Value::pointer` makes a `String` of every
/// token, and the write path and the controllers look up pointers thousands of times a second.
pub trait Lookup {
    /// What `pointer` leads to, as `Value::pointer` finds it.
    fn lookup(&self, pointer: &str) -> Option<&Value>;
}

impl Lookup for Value {
    fn lookup(&self, pointer: &str) -> Option<&Value> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut here = self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = if token.contains('~') {
                std::borrow::Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                std::borrow::Cow::Borrowed(token)
            };
            here = match here {
                Value::Object(map) => map.get(token.as_ref())?,
                Value::Array(list) => list.get(index(&token)?)?,
                _ => return None,
            };
        }
        Some(here)
    }
}

/// An array index token as JSON Pointer writes it (no sign, no leading zero).
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj)?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

/// The object's finalizers (empty when it has none).
pub fn finalizers(obj: &Value) -> Vec<&str> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What selectors look at in an object: its labels and the fields its kind selects on
/// (`metadata.name`, `metadata.namespace` and the kind's own), taken out once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectable {
    pub labels: BTreeMap<String, String>,
    pub fields: Vec<(&'static str, String)>,
}

impl Selectable {
    pub fn of(kind: &Kind, obj: &Value) -> Self {
        let labels = metadata(obj)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let mut fields = Vec::with_capacity(2 + kind.selectable_fields.len());
        for field in ["metadata.name", "metadata.namespace"]
            .into_iter()
            .chain(kind.selectable_fields.iter().copied())
        {
            // Events' `source` selects on the reporting component.
            let path = if field == "source" {
                "source.component"
            } else {
                field
            };
            fields.push((field, field_value(obj, path).unwrap_or_default()));
        }
        Selectable { labels, fields }
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The value of a dotted field path as a field selector compares it: strings as they are,
/// booleans and numbers in their JSON spelling; `None` when absent or not a scalar.
pub fn field_value(obj: &Value, path: &str) -> Option<String> {
    let mut v = obj;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        _ => None,
    }
}

/// A list or watch filter: label and field selectors together.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
}

impl Filter {
    pub fn is_everything(&self) -> bool {
        self.labels
            .as_ref()
            .is_none_or(LabelSelector::is_everything)
            && self
                .fields
                .as_ref()
                .is_none_or(FieldSelector::is_everything)
    }

    /// Fields the kind does not select on are refused before matching (see
    /// [`check_selectable`]).
    pub fn matches(&self, obj: &Selectable) -> bool {
        self.labels.as_ref().is_none_or(|l| l.matches(&obj.labels))
            && self
                .fields
                .as_ref()
                .is_none_or(|f| f.matches(|name| obj.field(name)))
    }
}

/// A selector written as an API object (`spec.selector` of Deployments and friends:
/// `matchLabels` and `matchExpressions`), or as a plain map of labels (ReplicationControllers).
pub fn selector_from_json(selector: &Value) -> Result<LabelSelector, String> {
    use crate::{Operator, Requirement};
    let Some(map) = selector.as_object() else {
        return Ok(LabelSelector::everything());
    };
    let structured = map.contains_key("matchLabels") || map.contains_key("matchExpressions");
    let labels = if structured {
        map.get("matchLabels").and_then(Value::as_object)
    } else {
        Some(map)
    };
    let mut requirements = Vec::new();
    for (key, value) in labels.into_iter().flatten() {
        let value = value.as_str().unwrap_or_default().to_string();
        requirements.push(Requirement::new(key, Operator::Equals, vec![value])?);
    }
    let expressions = map.get("matchExpressions").and_then(Value::as_array);
    for expr in expressions.into_iter().flatten() {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
        let operator = match expr.get("operator").and_then(Value::as_str) {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        };
        let values = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        requirements.push(Requirement::new(key, operator, values)?);
    }
    Ok(LabelSelector::from_requirements(requirements))
}

/// Refuses a field selector naming a field the kind does not support, as Kubernetes does.
pub fn check_selectable(selector: &FieldSelector, kind: &crate::kinds::Kind) -> Result<(), String> {
    for r in selector.requirements() {
        let f = r.field.as_str();
        if f != "metadata.name" && f != "metadata.namespace" && !kind.selectable_fields.contains(&f)
        {
            return Err(format!(
                "field label not supported: {f} (supported for {}: metadata.name, metadata.namespace{})",
                kind.plural,
                kind.selectable_fields
                    .iter()
                    .map(|f| format!(", {f}"))
                    .collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Checks the syntax of metadata every kind shares: the name (a DNS label or subdomain, as the
/// kind wants), label keys and values, annotation keys.
pub fn validate_metadata(obj: &Value, name_is_label: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = name(obj);
    let rule = if name_is_label {
        names::dns1123_label
    } else {
        names::dns1123_subdomain
    };
    for problem in rule(name) {
        errs.push(FieldError::invalid("metadata.name", name, &problem));
    }
    let Some(meta) = metadata(obj) else {
        return errs;
    };
    for (field, check_values) in [("labels", true), ("annotations", false)] {
        let Some(map) = meta.get(field) else { continue };
        let Some(map) = map.as_object() else {
            errs.push(FieldError::invalid(
                format!("metadata.{field}"),
                &map.to_string(),
                "must be a map of strings",
            ));
            continue;
        };
        for (key, value) in map {
            let path = format!("metadata.{field}");
            for problem in names::qualified_name(key) {
                errs.push(FieldError::invalid(&path, key, &problem));
            }
            match value.as_str() {
                Some(v) if check_values => {
                    for problem in names::label_value(v) {
                        errs.push(FieldError::invalid(format!("{path}[{key}]"), v, &problem));
                    }
                }
                Some(_) => {}
                None => errs.push(FieldError::invalid(
                    format!("{path}[{key}]"),
                    &value.to_string(),
                    "must be a string",
                )),
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_looked_up_as_serde_json_looks_them_up() {
        let obj = serde_json::json!({"a": {"b/c": 1, "d~e": [10, 20, {"f": "g"}], "": 3},
            "list": [0], "0": "zero"});
        for pointer in [
            "",
            "/",
            "/a",
            "/a/b~1c",
            "/a/d~0e",
            "/a/d~0e/1",
            "/a/d~0e/2/f",
            "/a/d~0e/01",
            "/a/d~0e/+1",
            "/a/d~0e/9",
            "/list/0",
            "/0",
            "a",
            "/a/missing/x",
            "/a/b~1c/x",
            "/a/",
            "/a/d~0e/-",
        ] {
            assert_eq!(obj.lookup(pointer), obj.pointer(pointer), "{pointer:?}");
        }
    }
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
            "spec": {"nodeName": "n1", "hostNetwork": false},
            "status": {"phase": "Running"}
        })
    }

    #[test]
    fn conditions_are_set_by_type() {
        let mut pod = serde_json::json!({"metadata": {}});
        set_condition(
            &mut pod,
            serde_json::json!({"type": "Ready", "status": "False"}),
        );
        set_condition(
            &mut pod,
            serde_json::json!({"type": "PodScheduled", "status": "True"}),
        );
        set_condition(
            &mut pod,
            serde_json::json!({"type": "Ready", "status": "True"}),
        );
        assert_eq!(
            pod["status"]["conditions"],
            serde_json::json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn filters_match_labels_and_fields() {
        let cases = [
            ("app=web", "", true),
            ("app=db", "", false),
            ("app in (web,db),!canary", "", true),
            ("", "spec.nodeName=n1", true),
            ("", "spec.nodeName=n2", false),
            ("", "spec.nodeName!=n2,status.phase=Running", true),
            ("", "spec.hostNetwork=false", true),
            (
                "tier=front",
                "metadata.name=web-1,metadata.namespace=default",
                true,
            ),
            ("", "status.podIP=", true),
            ("", "status.podIP!=", false),
        ];
        for (labels, fields, want) in cases {
            let filter = Filter {
                labels: Some(LabelSelector::parse(labels).unwrap()),
                fields: Some(FieldSelector::parse(fields).unwrap()),
            };
            let pods = crate::kinds::find("", "v1", "pods").unwrap();
            let selectable = Selectable::of(pods, &pod());
            assert_eq!(filter.matches(&selectable), want, "{labels:?} {fields:?}");
        }
    }

    #[test]
    fn selectors_written_as_objects() {
        let cases = [
            (json!({"matchLabels": {"app": "api"}}), "app=api"),
            (
                json!({"matchLabels": {"b": "1"}, "matchExpressions": [{"key": "a", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "DoesNotExist"}]}),
                "a in (x,y),b=1,!c",
            ),
            (json!({"app": "web"}), "app=web"),
            (json!({}), ""),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}),
                "error: Some(\"Near\") is not a valid",
            ),
        ];
        for (selector, want) in cases {
            let got = selector_from_json(&selector)
                .map_or_else(|e| format!("error: {e}"), |s| s.to_string());
            assert!(got.starts_with(want), "{selector}: {got}");
        }
    }

    #[test]
    fn unsupported_fields_are_refused_naming_the_supported_ones() {
        let pods = crate::kinds::find("", "v1", "pods").unwrap();
        let cms = crate::kinds::find("", "v1", "configmaps").unwrap();
        let check = |kind, s: &str| check_selectable(&FieldSelector::parse(s).unwrap(), kind);
        assert_eq!(check(pods, "spec.nodeName=n1,metadata.name=a"), Ok(()));
        let err = check(cms, "spec.nodeName=n1").unwrap_err();
        assert!(
            err.contains("field label not supported: spec.nodeName")
                && err.contains("metadata.name, metadata.namespace"),
            "{err}"
        );
    }

    #[test]
    fn metadata_errors_name_the_field() {
        let cases = [
            (json!({"metadata": {"name": "ok-name"}}), false, vec![]),
            (
                json!({"metadata": {"name": "Bad_Name"}}),
                false,
                vec!["metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"],
            ),
            (
                json!({"metadata": {"name": "a.b"}}),
                true,
                vec!["metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label"],
            ),
            (
                json!({"metadata": {"name": "x", "labels": {"app": "has space", "-k": "v"}}}),
                false,
                vec![
                    "metadata.labels[app]: Invalid value: \"has space\"",
                    "metadata.labels: Invalid value: \"-k\"",
                ],
            ),
            (
                json!({"metadata": {"name": "x", "annotations": {"note": 3}}}),
                false,
                vec!["metadata.annotations[note]: Invalid value: \"3\": must be a string"],
            ),
        ];
        for (obj, label, want) in cases {
            crate::testing::check_errors(&obj, &validate_metadata(&obj, label), &want);
        }
    }
}
