//! What an update may not change, per kind, in Kubernetes' words: a pod's spec beyond its
//! images, deadline and added tolerations; workloads' selectors; a Job's template; immutable
//! ConfigMaps and Secrets; a Service's cluster IP; a Node's pod CIDR once set; and the fields
//! Kubernetes fixes at creation on the other kinds (an EndpointSlice's address type, a
//! PriorityClass's value, a binding's roleRef, a StorageClass's provisioner, ...).
//!
//! Both objects are as stored: defaulted, and (for the new one) already valid on its own.

use serde_json::{Map, Value};

use super::str_at;
use crate::kinds::Kind;
use crate::object::FieldError;
use crate::object::Lookup;

const POD_MUTABLE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// The errors of updating `old` to `new`, both of `kind`.
pub fn validate_update(kind: &Kind, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let null = Value::Null;
    let (old_spec, new_spec) = (
        old.get("spec").unwrap_or(&null),
        new.get("spec").unwrap_or(&null),
    );
    match (kind.group, kind.kind) {
        ("", "Pod") => pod(old_spec, new_spec, &mut errs),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            fixed(old_spec, new_spec, "selector", "spec", &mut errs)
        }
        ("apps", "StatefulSet") => {
            fixed(old_spec, new_spec, "selector", "spec", &mut errs);
            if without(old_spec, STATEFULSET_MUTABLE) != without(new_spec, STATEFULSET_MUTABLE) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        ("apps", "ControllerRevision") => fixed(old, new, "data", "", &mut errs),
        ("batch", "Job") => {
            for field in ["selector", "template", "completionMode", "completions"] {
                fixed(old_spec, new_spec, field, "spec", &mut errs);
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if old.get("immutable") == Some(&Value::Bool(true)) {
                let detail = "field is immutable when `immutable` is set";
                for field in ["data", "binaryData"] {
                    if old.get(field) != new.get(field) {
                        errs.push(FieldError::forbidden(field, detail));
                    }
                }
                if new.get("immutable") != Some(&Value::Bool(true)) {
                    errs.push(FieldError::forbidden("immutable", detail));
                }
            }
            if kind.kind == "Secret" {
                fixed(old, new, "type", "", &mut errs);
            }
        }
        ("", "Service") => service(old_spec, new_spec, &mut errs),
        ("", "Node") => {
            for (field, path) in [("podCIDR", "podCIDRs"), ("providerID", "providerID")] {
                let was = str_at(old_spec, field);
                if !was.is_empty() && was != str_at(new_spec, field) {
                    errs.push(FieldError::forbidden(
                        format!("spec.{path}"),
                        &format!("node updates may not change {field} except from \"\" to valid"),
                    ));
                }
            }
        }
        ("", "PersistentVolumeClaim") => claim(old, new, &mut errs),
        ("", "PersistentVolume") => {
            let source = |spec: &Value| without(spec, PV_NOT_SOURCE);
            if source(old_spec) != source(new_spec) {
                errs.push(FieldError::forbidden(
                    "spec.persistentvolumesource",
                    "spec.persistentvolumesource is immutable after creation",
                ));
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => fixed(old, new, "addressType", "", &mut errs),
        ("scheduling.k8s.io", "PriorityClass") => {
            if old.get("value") != new.get("value") {
                errs.push(FieldError::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
            fixed(old, new, "preemptionPolicy", "", &mut errs);
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding")
            if old.get("roleRef") != new.get("roleRef") =>
        {
            errs.push(FieldError::invalid_shown(
                "roleRef",
                &go_role_ref(new.get("roleRef").unwrap_or(&null)),
                "cannot change roleRef",
            ));
        }
        ("storage.k8s.io", "StorageClass") => {
            for field in ["parameters", "provisioner", "reclaimPolicy"] {
                if old.get(field) != new.get(field) {
                    errs.push(FieldError::forbidden(
                        field,
                        &format!("updates to {field} are forbidden."),
                    ));
                }
            }
            if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
                errs.push(FieldError::forbidden(
                    "volumeBindingMode",
                    "field is immutable",
                ));
            }
        }
        ("networking.k8s.io", "IngressClass") => {
            fixed(old_spec, new_spec, "controller", "spec", &mut errs)
        }
        _ => {}
    }
    errs
}

/// `field` of `old` and `new` (objects at `path`) must be equal: Kubernetes' "field is immutable".
fn fixed(old: &Value, new: &Value, field: &str, path: &str, errs: &mut Vec<FieldError>) {
    let (was, now) = (old.get(field), new.get(field));
    if was != now {
        let at = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        let null = Value::Null;
        let now = now.unwrap_or(&null);
        let shown = if field == "selector" {
            go_label_selector(now)
        } else {
            shown(now)
        };
        errs.push(FieldError::invalid_shown(at, &shown, "field is immutable"));
    }
}

/// A value as a field error shows it: strings quoted, numbers bare, objects as JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A label selector as Kubernetes prints it in its errors (Go's `%#v`).
fn go_label_selector(v: &Value) -> String {
    let labels: Vec<String> = v
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{}", shown(v)))
        .collect();
    let labels = if labels.is_empty() {
        "map[string]string(nil)".to_string()
    } else {
        format!("map[string]string{{{}}}", labels.join(", "))
    };
    let expressions: Vec<String> = v
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(shown)
                .collect();
            format!(
                "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:[]string{{{}}}}}",
                str_at(e, "key"),
                str_at(e, "operator"),
                values.join(", ")
            )
        })
        .collect();
    let expressions = if expressions.is_empty() {
        "[]v1.LabelSelectorRequirement(nil)".to_string()
    } else {
        format!(
            "[]v1.LabelSelectorRequirement{{{}}}",
            expressions.join(", ")
        )
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{expressions}}}")
}

/// A binding's roleRef as Kubernetes prints it in its errors.
fn go_role_ref(v: &Value) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        str_at(v, "apiGroup"),
        str_at(v, "kind"),
        str_at(v, "name")
    )
}

/// The object without `fields` (what is left to compare).
fn without(obj: &Value, fields: &[&str]) -> Map<String, Value> {
    let mut rest = obj.as_object().cloned().unwrap_or_default();
    for f in fields {
        rest.shift_remove(*f);
    }
    rest
}

/// The spec fields of a PersistentVolume that are not its volume source.
const PV_NOT_SOURCE: &[&str] = &[
    "capacity",
    "accessModes",
    "claimRef",
    "persistentVolumeReclaimPolicy",
    "storageClassName",
    "mountOptions",
    "volumeMode",
    "nodeAffinity",
    "volumeAttributesClassName",
];

/// A pod's spec changes only where Kubernetes lets it: images, a deadline set or shortened,
/// tolerations added, a negative grace period made 1, scheduling gates removed.
fn pod(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let deadline = |spec: &Value| spec.get("activeDeadlineSeconds").and_then(Value::as_i64);
    match (deadline(old), deadline(new)) {
        (Some(_), None) => errs.push(FieldError::invalid_shown(
            "spec.activeDeadlineSeconds",
            "null",
            "must not update from a positive integer to nil value",
        )),
        (Some(was), Some(now)) if now > was => errs.push(FieldError::invalid_shown(
            "spec.activeDeadlineSeconds",
            &now.to_string(),
            "must be less than or equal to previous value",
        )),
        _ => {}
    }
    let tolerations = |spec: &Value| {
        spec.get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let kept = tolerations(new);
    let modified = tolerations(old).iter().any(|was| {
        !kept.iter().any(|now| {
            let same = |f: &str| was.get(f) == now.get(f);
            let shorter = match (
                was.get("tolerationSeconds").and_then(Value::as_i64),
                now.get("tolerationSeconds").and_then(Value::as_i64),
            ) {
                (None, _) => true,
                (Some(w), Some(n)) => n <= w,
                (Some(_), None) => false,
            };
            ["key", "operator", "value", "effect"]
                .iter()
                .all(|f| same(f))
                && shorter
        })
    });
    if modified {
        errs.push(FieldError::forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        ));
    }
    let (mut was, mut now) = (mutable_masked(old), mutable_masked(new));
    let grace = |spec: &Value| {
        spec.get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
    };
    if grace(old).is_some_and(|g| g < 0) && grace(new) == Some(1) {
        was.shift_remove("terminationGracePeriodSeconds");
        now.shift_remove("terminationGracePeriodSeconds");
    }
    let gates = |spec: &Value| {
        spec.get("schedulingGates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (old_gates, new_gates) = (gates(old), gates(new));
    if new_gates.iter().all(|g| old_gates.contains(g)) {
        was.shift_remove("schedulingGates");
        now.shift_remove("schedulingGates");
    }
    let (was, now) = (Value::Object(was), Value::Object(now));
    if was != now {
        errs.push(FieldError::forbidden(
            "spec",
            &format!("{POD_MUTABLE}\n{}", diff(&was, &now, "spec")),
        ));
    }
}

/// A pod spec without what an update may change: images (of containers that are still the same
/// list), the deadline and the tolerations (checked on their own).
fn mutable_masked(spec: &Value) -> Map<String, Value> {
    let mut masked = without(spec, &["activeDeadlineSeconds", "tolerations"]);
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = masked.get_mut(list) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                c.shift_remove("image");
            }
        }
    }
    masked
}

/// The leaves that differ between `old` and `new` under `path`, as `- path: old` and
/// `+ path: new` lines (the first few; Kubernetes prints a diff of the Go structs there).
fn diff(old: &Value, new: &Value, path: &str) -> String {
    const SHOWN: usize = 8;
    fn walk(old: Option<&Value>, new: Option<&Value>, path: String, out: &mut Vec<String>) {
        if out.len() >= 2 * SHOWN || old == new {
            return;
        }
        match (old, new) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    walk(a.get(k), b.get(k), format!("{path}.{k}"), out);
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(Some(x), Some(y), format!("{path}[{i}]"), out);
                }
            }
            _ => {
                let show = |v: Option<&Value>| v.map(shown).unwrap_or_else(|| "null".into());
                out.push(format!("  - {path}: {}", show(old)));
                out.push(format!("  + {path}: {}", show(new)));
            }
        }
    }
    let mut out = Vec::new();
    walk(Some(old), Some(new), path.to_string(), &mut out);
    out.join("\n")
}

/// A Service's cluster IP may not change once set (unless it stops or starts being an
/// ExternalName, which has none).
fn service(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let (was, now) = (str_at(old, "clusterIP"), str_at(new, "clusterIP"));
    let external = |spec: &Value| str_at(spec, "type") == "ExternalName";
    if !was.is_empty() && !now.is_empty() && was != now && !external(old) && !external(new) {
        errs.push(FieldError::invalid_shown(
            "spec.clusterIPs[0]",
            &format!("[]string{{{now:?}}}"),
            "may not change once set",
        ));
    }
}

/// A claim's spec is fixed once created, but for the storage a bound claim requests and the
/// volume it is bound to.
fn claim(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let null = Value::Null;
    let (old_spec, new_spec) = (
        old.get("spec").unwrap_or(&null),
        new.get("spec").unwrap_or(&null),
    );
    let bound = old.lookup("/status/phase").and_then(Value::as_str) == Some("Bound");
    let mut free = vec![];
    if bound {
        free.push("volumeAttributesClassName");
    }
    if str_at(old_spec, "volumeName").is_empty() {
        free.push("volumeName");
    }
    let fixed_part = |spec: &Value| {
        let mut rest = without(spec, &free);
        if let Some(resources) = rest.get_mut("resources").and_then(Value::as_object_mut) {
            if bound {
                resources.shift_remove("requests");
            }
        }
        rest
    };
    let (was, now) = (fixed_part(old_spec), fixed_part(new_spec));
    if was != now {
        errs.push(FieldError::forbidden(
            "spec",
            &format!(
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n{}",
                diff(&Value::Object(was), &Value::Object(now), "spec")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kinds::find;
    use crate::testing::check_errors;

    fn kind(group: &str, version: &str, plural: &str) -> &'static Kind {
        find(group, version, plural).expect("a served kind")
    }

    /// (kind, old, new, errors wanted: "field: message" prefixes).
    type Case = (&'static Kind, Value, Value, &'static [&'static str]);

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn what_updates_may_not_change() {
        let pods = kind("", "v1", "pods");
        let c = |image: &str| json!({"name": "c", "image": image});
        let toleration = |seconds: i64| json!({"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds});
        let deployments = kind("apps", "v1", "deployments");
        let web =
            |app: &str| json!({"spec": {"selector": {"matchLabels": {"app": app}}, "replicas": 1}});
        let cms = kind("", "v1", "configmaps");
        let secrets = kind("", "v1", "secrets");
        let services = kind("", "v1", "services");
        let svc = |ip: &str, ty: &str| json!({"spec": {"clusterIP": ip, "type": ty}});
        let nodes = kind("", "v1", "nodes");
        let node = |cidr: &str| json!({"spec": {"podCIDR": cidr}});
        let claims = kind("", "v1", "persistentvolumeclaims");
        let claim = |size: &str, phase: &str| {
            json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
                "status": {"phase": phase}})
        };
        let cases: Vec<Case> = vec![
            // Pods: images, deadlines, added tolerations, removed gates.
            (pods, pod(json!({"containers": [c("a:1")]})), pod(json!({"containers": [c("a:2")]})), &[]),
            (pods, pod(json!({"containers": [c("a:1")]})),
                pod(json!({"containers": [{"name": "c", "image": "a:1", "env": [{"name": "X", "value": "1"}]}]})),
                &["spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"]),
            (pods, pod(json!({"containers": [c("a")]})), pod(json!({"containers": [c("a")], "nodeName": "n1"})),
                &["spec: Forbidden: pod updates may not change fields other than"]),
            (pods, pod(json!({"containers": [c("a")]})), pod(json!({"containers": [c("a")], "activeDeadlineSeconds": 30})), &[]),
            (pods, pod(json!({"containers": [c("a")], "activeDeadlineSeconds": 30})),
                pod(json!({"containers": [c("a")], "activeDeadlineSeconds": 60})),
                &["spec.activeDeadlineSeconds: Invalid value: 60: must be less than or equal to previous value"]),
            (pods, pod(json!({"containers": [c("a")], "activeDeadlineSeconds": 30})), pod(json!({"containers": [c("a")]})),
                &["spec.activeDeadlineSeconds: Invalid value: null: must not update from a positive integer to nil value"]),
            (pods, pod(json!({"containers": [c("a")], "tolerations": [toleration(60)]})),
                pod(json!({"containers": [c("a")], "tolerations": [toleration(30), {"operator": "Exists"}]})), &[]),
            (pods, pod(json!({"containers": [c("a")], "tolerations": [toleration(60)]})),
                pod(json!({"containers": [c("a")], "tolerations": [toleration(90)]})),
                &["spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"]),
            (pods, pod(json!({"containers": [c("a")], "terminationGracePeriodSeconds": -1})),
                pod(json!({"containers": [c("a")], "terminationGracePeriodSeconds": 1})), &[]),
            (pods, pod(json!({"containers": [c("a")], "terminationGracePeriodSeconds": 30})),
                pod(json!({"containers": [c("a")], "terminationGracePeriodSeconds": 1})),
                &["spec: Forbidden: pod updates may not change"]),
            (pods, pod(json!({"containers": [c("a")], "schedulingGates": [{"name": "g"}]})),
                pod(json!({"containers": [c("a")]})), &[]),
            (pods, pod(json!({"containers": [c("a")]})),
                pod(json!({"containers": [c("a")], "schedulingGates": [{"name": "g"}]})),
                &["spec: Forbidden: pod updates may not change"]),
            // Workloads' selectors.
            (deployments, web("a"), web("a"), &[]),
            (deployments, web("a"), web("b"),
                &["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]),
            (kind("apps", "v1", "statefulsets"), json!({"spec": {"serviceName": "a", "replicas": 1}}),
                json!({"spec": {"serviceName": "b", "replicas": 2}}),
                &["spec: Forbidden: updates to statefulset spec for fields other than 'replicas'"]),
            (kind("batch", "v1", "jobs"), json!({"spec": {"completions": 1, "template": {"spec": {}}}}),
                json!({"spec": {"completions": 2, "template": {"spec": {}}}}),
                &["spec.completions: Invalid value: 2: field is immutable"]),
            // Immutable ConfigMaps and Secrets; a Secret's type.
            (cms, json!({"data": {"a": "1"}}), json!({"data": {"a": "2"}}), &[]),
            (cms, json!({"data": {"a": "1"}, "immutable": true}), json!({"data": {"a": "2"}, "immutable": true}),
                &["data: Forbidden: field is immutable when `immutable` is set"]),
            (cms, json!({"data": {"a": "1"}, "immutable": true}), json!({"data": {"a": "1"}, "immutable": false}),
                &["immutable: Forbidden: field is immutable when `immutable` is set"]),
            (cms, json!({"data": {"a": "1"}, "immutable": false}), json!({"data": {"a": "1"}, "immutable": true}), &[]),
            (secrets, json!({"type": "Opaque"}), json!({"type": "kubernetes.io/tls"}),
                &["type: Invalid value: \"kubernetes.io/tls\": field is immutable"]),
            // Services' cluster IPs, Nodes' pod CIDRs.
            (services, svc("10.43.0.5", "ClusterIP"), svc("10.43.0.5", "NodePort"), &[]),
            (services, svc("10.43.0.5", "ClusterIP"), svc("10.43.0.6", "ClusterIP"),
                &["spec.clusterIPs[0]: Invalid value: []string{\"10.43.0.6\"}: may not change once set"]),
            (services, svc("10.43.0.5", "ClusterIP"), svc("", "ClusterIP"), &[]),
            (nodes, node(""), node("10.42.1.0/24"), &[]),
            (nodes, node("10.42.1.0/24"), node("10.42.2.0/24"),
                &["spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"]),
            // Claims grow when bound; other kinds' fixed fields.
            (claims, claim("1Gi", "Bound"), claim("2Gi", "Bound"), &[]),
            (claims, claim("1Gi", "Pending"), claim("2Gi", "Pending"),
                &["spec: Forbidden: spec is immutable after creation except resources.requests"]),
            (kind("discovery.k8s.io", "v1", "endpointslices"), json!({"addressType": "IPv4"}), json!({"addressType": "IPv6"}),
                &["addressType: Invalid value: \"IPv6\": field is immutable"]),
            (kind("scheduling.k8s.io", "v1", "priorityclasses"), json!({"value": 10}), json!({"value": 20}),
                &["value: Forbidden: may not be changed in an update."]),
            (kind("rbac.authorization.k8s.io", "v1", "rolebindings"),
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}),
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}}),
                &["roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"]),
            (kind("storage.k8s.io", "v1", "storageclasses"), json!({"provisioner": "a"}), json!({"provisioner": "b"}),
                &["provisioner: Forbidden: updates to provisioner are forbidden."]),
        ];
        for (i, (kind, old, new, want)) in cases.iter().enumerate() {
            let errs = validate_update(kind, old, new);
            check_errors(&format!("case {i} ({})", kind.kind), &errs, want);
        }
    }

    #[test]
    fn a_forbidden_pod_update_says_what_changed() {
        let old = pod(
            json!({"containers": [{"name": "c", "image": "a", "ports": [{"containerPort": 80}]}]}),
        );
        let new = pod(
            json!({"containers": [{"name": "c", "image": "a", "ports": [{"containerPort": 81}]}]}),
        );
        let errs = validate_update(find("", "v1", "pods").unwrap(), &old, &new);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.ends_with(
                "\n  - spec.containers[0].ports[0].containerPort: 80\n  + spec.containers[0].ports[0].containerPort: 81"
            ),
            "{}",
            errs[0].message
        );
    }
}
