//! A pod spec's placement rules, as Kubernetes checks them: node affinity's selector terms,
//! pod (anti-)affinity terms and topology spread constraints.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{items, one_of, str_at};
use crate::names;
use crate::object::{selector_from_json, FieldError};

/// `spec.affinity` of a pod spec at `path`.
pub(super) fn affinity(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(affinity) = spec.get("affinity").filter(|a| !a.is_null()) else {
        return;
    };
    let path = format!("{path}.affinity");
    if let Some(node) = affinity.get("nodeAffinity") {
        let at = format!("{path}.nodeAffinity");
        if let Some(required) = node
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .filter(|r| !r.is_null())
        {
            let at = format!("{at}.requiredDuringSchedulingIgnoredDuringExecution");
            if items(required, "nodeSelectorTerms").next().is_none() {
                errs.push(FieldError::required(
                    format!("{at}.nodeSelectorTerms"),
                    "must have at least one node selector term",
                ));
            }
            for (i, term) in items(required, "nodeSelectorTerms") {
                node_selector_term(term, &format!("{at}.nodeSelectorTerms[{i}]"), errs);
            }
        }
        let at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution");
        for (i, preferred) in items(node, "preferredDuringSchedulingIgnoredDuringExecution") {
            let at = format!("{at}[{i}]");
            weight(preferred, &at, errs);
            let term = preferred.get("preference").unwrap_or(&Value::Null);
            node_selector_term(term, &format!("{at}.preference"), errs);
        }
    }
    for which in ["podAffinity", "podAntiAffinity"] {
        let Some(terms) = affinity.get(which) else {
            continue;
        };
        let at = format!("{path}.{which}");
        let required = "requiredDuringSchedulingIgnoredDuringExecution";
        for (i, term) in items(terms, required) {
            pod_affinity_term(term, &format!("{at}.{required}[{i}]"), errs);
        }
        let preferred = "preferredDuringSchedulingIgnoredDuringExecution";
        for (i, weighted) in items(terms, preferred) {
            let at = format!("{at}.{preferred}[{i}]");
            weight(weighted, &at, errs);
            let term = weighted.get("podAffinityTerm").unwrap_or(&Value::Null);
            pod_affinity_term(term, &format!("{at}.podAffinityTerm"), errs);
        }
    }
}

/// A preferred term's weight, 1 to 100.
fn weight(term: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let weight = term.get("weight").and_then(Value::as_i64).unwrap_or(0);
    if !(1..=100).contains(&weight) {
        errs.push(FieldError::invalid_shown(
            format!("{path}.weight"),
            &weight.to_string(),
            "must be in the range 1-100",
        ));
    }
}

fn label_key(key: &str, path: String, errs: &mut Vec<FieldError>) {
    for problem in names::qualified_name(key) {
        errs.push(FieldError::invalid(path.clone(), key, &problem));
    }
}

/// One term of node selector requirements: label expressions and `metadata.name` fields.
fn node_selector_term(term: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for (j, req) in items(term, "matchExpressions") {
        let at = |f: &str| format!("{path}.matchExpressions[{j}].{f}");
        label_key(str_at(req, "key"), at("key"), errs);
        let values: Vec<&Value> = items(req, "values").map(|(_, v)| v).collect();
        match str_at(req, "operator") {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                at("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                at("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "Exists" | "DoesNotExist" => {}
            "Gt" | "Lt" if values.len() != 1 => errs.push(FieldError::required(
                at("values"),
                "must be specified single value when `operator` is 'Lt' or 'Gt'",
            )),
            "Gt" | "Lt" => {
                let v = values[0].as_str().unwrap_or("");
                if v.parse::<i64>().is_err() {
                    errs.push(FieldError::invalid(
                        format!("{}[0]", at("values")),
                        v,
                        "must be an integer",
                    ));
                }
            }
            other => errs.push(FieldError::invalid(
                at("operator"),
                other,
                "not a valid selector operator",
            )),
        }
    }
    for (j, req) in items(term, "matchFields") {
        let at = |f: &str| format!("{path}.matchFields[{j}].{f}");
        let key = str_at(req, "key");
        if key != "metadata.name" {
            errs.push(FieldError::not_supported(
                at("key"),
                key,
                &["metadata.name"],
            ));
        }
        let count = items(req, "values").count();
        match str_at(req, "operator") {
            "In" | "NotIn" if count != 1 => errs.push(FieldError::required(
                at("values"),
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            )),
            "In" | "NotIn" => {}
            other => errs.push(FieldError::not_supported(
                at("operator"),
                other,
                &["In", "NotIn"],
            )),
        }
    }
}

/// A label selector field, when given.
fn selector(obj: &Value, field: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(selector) = obj.get(field).filter(|s| !s.is_null()) {
        if let Err(e) = selector_from_json(selector) {
            errs.push(FieldError::invalid(format!("{path}.{field}"), "", &e));
        }
    }
}

fn pod_affinity_term(term: &Value, path: &str, errs: &mut Vec<FieldError>) {
    selector(term, "labelSelector", path, errs);
    selector(term, "namespaceSelector", path, errs);
    for (i, ns) in items(term, "namespaces") {
        let ns = ns.as_str().unwrap_or("");
        for problem in names::dns1123_label(ns) {
            errs.push(FieldError::invalid(
                format!("{path}.namespaces[{i}]"),
                ns,
                &problem,
            ));
        }
    }
    let key = str_at(term, "topologyKey");
    if key.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.topologyKey"),
            "can not be empty",
        ));
    } else {
        label_key(key, format!("{path}.topologyKey"), errs);
    }
}

const WHEN_UNSATISFIABLE: [&str; 2] = ["DoNotSchedule", "ScheduleAnyway"];
const POLICIES: [&str; 2] = ["Honor", "Ignore"];

/// `spec.topologySpreadConstraints` of a pod spec at `path`.
pub(super) fn spread(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    for (i, c) in items(spec, "topologySpreadConstraints") {
        let path = format!("{path}.topologySpreadConstraints[{i}]");
        let at = |f: &str| format!("{path}.{f}");
        let skew = c.get("maxSkew").and_then(Value::as_i64).unwrap_or(0);
        if skew <= 0 {
            errs.push(FieldError::invalid_shown(
                at("maxSkew"),
                &skew.to_string(),
                "must be greater than zero",
            ));
        }
        let key = str_at(c, "topologyKey");
        if key.is_empty() {
            errs.push(FieldError::required(at("topologyKey"), "can not be empty"));
        } else {
            label_key(key, at("topologyKey"), errs);
        }
        let when = str_at(c, "whenUnsatisfiable");
        if !WHEN_UNSATISFIABLE.contains(&when) {
            errs.push(FieldError::not_supported(
                at("whenUnsatisfiable"),
                when,
                &WHEN_UNSATISFIABLE,
            ));
        }
        if !seen.insert((key, when)) {
            errs.push(FieldError::duplicate(
                at("{topologyKey, whenUnsatisfiable}"),
                &format!("{{{key}, {when}}}"),
            ));
        }
        if let Some(min) = c.get("minDomains").and_then(Value::as_i64) {
            if min <= 0 {
                errs.push(FieldError::invalid_shown(
                    at("minDomains"),
                    &min.to_string(),
                    "must be greater than 0",
                ));
            } else if when != "DoNotSchedule" {
                errs.push(FieldError::invalid_shown(
                    at("minDomains"),
                    &min.to_string(),
                    &format!(
                        "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not {when}"
                    ),
                ));
            }
        }
        for policy in ["nodeAffinityPolicy", "nodeTaintsPolicy"] {
            one_of(c, policy, &path, &POLICIES, errs);
        }
        selector(c, "labelSelector", &path, errs);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testing::check_errors;

    fn check(spec_part: serde_json::Value, want: &[&str]) {
        let mut spec = json!({"containers": [{"name": "c", "image": "x"}]});
        for (k, v) in spec_part.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let errs = super::super::pod_spec(&spec, "spec", &["Always"]);
        check_errors(&spec_part, &errs, want);
    }

    #[test]
    fn node_affinity() {
        let required = |terms: serde_json::Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}});
        let at = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";
        check(
            required(
                json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]),
            ),
            &[],
        );
        check(
            required(json!([])),
            &[&format!(
                "{at}.nodeSelectorTerms: Required value: must have at least one node selector term"
            )],
        );
        check(
            required(json!([{"matchExpressions": [
                {"key": "disk", "operator": "In"},
                {"key": "disk", "operator": "Exists", "values": ["x"]},
                {"key": "cores", "operator": "Gt", "values": ["many"]},
                {"key": "bad key", "operator": "Near", "values": ["x"]}],
                "matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["a", "b"]}]}])),
            &[
                &format!("{at}.nodeSelectorTerms[0].matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"),
                &format!("{at}.nodeSelectorTerms[0].matchExpressions[1].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
                &format!("{at}.nodeSelectorTerms[0].matchExpressions[2].values[0]: Invalid value: \"many\": must be an integer"),
                &format!("{at}.nodeSelectorTerms[0].matchExpressions[3].key: Invalid value: \"bad key\""),
                &format!("{at}.nodeSelectorTerms[0].matchExpressions[3].operator: Invalid value: \"Near\": not a valid selector operator"),
                &format!("{at}.nodeSelectorTerms[0].matchFields[0].key: Unsupported value: \"metadata.labels\""),
                &format!("{at}.nodeSelectorTerms[0].matchFields[0].values: Required value: must be only one value"),
            ],
        );
        check(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 0, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}}),
            &["spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100"],
        );
    }

    #[test]
    fn pod_affinity() {
        let at = "spec.affinity.podAntiAffinity";
        check(
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
            &[],
        );
        check(
            json!({"affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Sometimes"}]}, "namespaces": ["Bad"]}],
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 101, "podAffinityTerm": {"topologyKey": "zone"}}]}}}),
            &[
                &format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector: Invalid value"),
                &format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[0].namespaces[0]: Invalid value: \"Bad\""),
                &format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty"),
                &format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 101: must be in the range 1-100"),
            ],
        );
    }

    #[test]
    fn spread_constraints() {
        let c = |skew: i64, key: &str, when: &str| json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}});
        check(
            json!({"topologySpreadConstraints": [c(1, "zone", "DoNotSchedule"), c(1, "zone", "ScheduleAnyway")]}),
            &[],
        );
        let mut with_min = c(1, "zone", "ScheduleAnyway");
        with_min["minDomains"] = json!(2);
        let mut bad_policy = c(1, "host", "DoNotSchedule");
        bad_policy["nodeTaintsPolicy"] = json!("Sometimes");
        check(
            json!({"topologySpreadConstraints": [c(0, "", "Never"), c(1, "zone", "DoNotSchedule"), c(1, "zone", "DoNotSchedule"), with_min, bad_policy]}),
            &[
                "spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero",
                "spec.topologySpreadConstraints[0].topologyKey: Required value: can not be empty",
                "spec.topologySpreadConstraints[0].whenUnsatisfiable: Unsupported value: \"Never\": supported values: \"DoNotSchedule\", \"ScheduleAnyway\"",
                "spec.topologySpreadConstraints[2].{topologyKey, whenUnsatisfiable}: Duplicate value: \"{zone, DoNotSchedule}\"",
                "spec.topologySpreadConstraints[3].minDomains: Invalid value: 2: can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                "spec.topologySpreadConstraints[4].nodeTaintsPolicy: Unsupported value: \"Sometimes\"",
            ],
        );
    }
}
