//! The Rust types (from `k8s-openapi`) of the served kinds: their OpenAPI schemas, and the
//! shape of every type (which field holds which type, lists and maps) that strategic merge
//! patches walk.

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{Map, Value};

use crate::kinds::{self, Kind};

/// Registers the schema of the Rust type of a served kind; answers its schema name.
macro_rules! kind_types {
    ($($group:literal $version:literal $kind:literal => $ty:ty,)*) => {
        pub fn register(kind: &Kind, generator: &mut SchemaGenerator) -> Option<String> {
            match (kind.group, kind.version, kind.kind) {
                $(($group, $version, $kind) => {
                    generator.subschema_for::<$ty>();
                    Some(<$ty as JsonSchema>::schema_name().into_owned())
                })*
                _ => None,
            }
        }
    };
}

kind_types! {
    "" "v1" "Namespace" => k8s_openapi::api::core::v1::Namespace,
    "" "v1" "Node" => k8s_openapi::api::core::v1::Node,
    "" "v1" "Pod" => k8s_openapi::api::core::v1::Pod,
    "" "v1" "Service" => k8s_openapi::api::core::v1::Service,
    "" "v1" "Endpoints" => k8s_openapi::api::core::v1::Endpoints,
    "" "v1" "ConfigMap" => k8s_openapi::api::core::v1::ConfigMap,
    "" "v1" "Secret" => k8s_openapi::api::core::v1::Secret,
    "" "v1" "Event" => k8s_openapi::api::core::v1::Event,
    "" "v1" "ServiceAccount" => k8s_openapi::api::core::v1::ServiceAccount,
    "" "v1" "PersistentVolume" => k8s_openapi::api::core::v1::PersistentVolume,
    "" "v1" "PersistentVolumeClaim" => k8s_openapi::api::core::v1::PersistentVolumeClaim,
    "" "v1" "ReplicationController" => k8s_openapi::api::core::v1::ReplicationController,
    "apps" "v1" "Deployment" => k8s_openapi::api::apps::v1::Deployment,
    "apps" "v1" "ReplicaSet" => k8s_openapi::api::apps::v1::ReplicaSet,
    "apps" "v1" "StatefulSet" => k8s_openapi::api::apps::v1::StatefulSet,
    "apps" "v1" "DaemonSet" => k8s_openapi::api::apps::v1::DaemonSet,
    "apps" "v1" "ControllerRevision" => k8s_openapi::api::apps::v1::ControllerRevision,
    "batch" "v1" "Job" => k8s_openapi::api::batch::v1::Job,
    "batch" "v1" "CronJob" => k8s_openapi::api::batch::v1::CronJob,
    "coordination.k8s.io" "v1" "Lease" => k8s_openapi::api::coordination::v1::Lease,
    "discovery.k8s.io" "v1" "EndpointSlice" => k8s_openapi::api::discovery::v1::EndpointSlice,
    "events.k8s.io" "v1" "Event" => k8s_openapi::api::events::v1::Event,
    "policy" "v1" "PodDisruptionBudget" => k8s_openapi::api::policy::v1::PodDisruptionBudget,
    "autoscaling" "v2" "HorizontalPodAutoscaler" => k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
    "autoscaling" "v1" "HorizontalPodAutoscaler" => k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler,
    "networking.k8s.io" "v1" "Ingress" => k8s_openapi::api::networking::v1::Ingress,
    "networking.k8s.io" "v1" "IngressClass" => k8s_openapi::api::networking::v1::IngressClass,
    "networking.k8s.io" "v1" "NetworkPolicy" => k8s_openapi::api::networking::v1::NetworkPolicy,
    "rbac.authorization.k8s.io" "v1" "Role" => k8s_openapi::api::rbac::v1::Role,
    "rbac.authorization.k8s.io" "v1" "RoleBinding" => k8s_openapi::api::rbac::v1::RoleBinding,
    "rbac.authorization.k8s.io" "v1" "ClusterRole" => k8s_openapi::api::rbac::v1::ClusterRole,
    "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => k8s_openapi::api::rbac::v1::ClusterRoleBinding,
    "storage.k8s.io" "v1" "StorageClass" => k8s_openapi::api::storage::v1::StorageClass,
    "scheduling.k8s.io" "v1" "PriorityClass" => k8s_openapi::api::scheduling::v1::PriorityClass,
    "certificates.k8s.io" "v1" "CertificateSigningRequest" => k8s_openapi::api::certificates::v1::CertificateSigningRequest,
    "authorization.k8s.io" "v1" "SelfSubjectAccessReview" => k8s_openapi::api::authorization::v1::SelfSubjectAccessReview,
    "authorization.k8s.io" "v1" "SelfSubjectRulesReview" => k8s_openapi::api::authorization::v1::SelfSubjectRulesReview,
}

/// Every schema the served kinds refer to, by name (`io.k8s.api.apps.v1.Deployment`), in
/// OpenAPI 3 form, and each kind's root schema name.
struct Types {
    definitions: Map<String, Value>,
    roots: HashMap<(&'static str, &'static str, &'static str), String>,
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let mut roots = HashMap::new();
        for kind in kinds::all() {
            if let Some(name) = register(kind, &mut generator) {
                roots.insert((kind.group, kind.version, kind.kind), name);
            }
        }
        Types {
            definitions: generator.take_definitions(true).into_iter().collect(),
            roots,
        }
    })
}

/// The schema name of a kind's type.
pub fn root(kind: &Kind) -> Option<&'static str> {
    types()
        .roots
        .get(&(kind.group, kind.version, kind.kind))
        .map(String::as_str)
}

/// What a field of a type holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// A named object type.
    Object(&'a str),
    /// A list; of a named object type when known.
    List(Option<&'a str>),
    /// A map from strings to values; of a named object type when known.
    Map(Option<&'a str>),
    /// A string, number, boolean, or anything not described.
    Scalar,
}

/// The type a schema refers to, directly or through `allOf`.
fn referred(schema: &Value) -> Option<&str> {
    let reference = schema
        .get("$ref")
        .or_else(|| schema.get("allOf")?.get(0)?.get("$ref"))?;
    reference.as_str()?.strip_prefix("#/components/schemas/")
}

fn describe(schema: &Value) -> Field<'_> {
    if let Some(name) = referred(schema) {
        return Field::Object(name);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => Field::List(schema.get("items").and_then(referred)),
        Some("object") => Field::Map(schema.get("additionalProperties").and_then(referred)),
        _ => Field::Scalar,
    }
}

/// What field `field` of the type named `ty` holds; `None` when the type has no such field.
pub fn field(ty: &str, field: &str) -> Option<Field<'static>> {
    let schema = types().definitions.get(ty)?;
    schema.get("properties")?.get(field).map(describe)
}

/// Every (type, field) whose field is a list of objects, for checks that each one is given a
/// patch strategy.
pub fn object_lists() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for (ty, schema) in &types().definitions {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (name, property) in properties {
            if let Field::List(Some(_)) = describe(property) {
                out.push((ty.as_str(), name.as_str()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// The schema a property refers to, or the property itself.
fn resolve(schema: &Value) -> &Value {
    match referred(schema) {
        Some(name) => types().definitions.get(name).unwrap_or(schema),
        None => schema,
    }
}

/// Removes the fields of `obj` (an object of the type named `ty`) that the type does not have,
/// and answers their paths (`spec.template.spec.containers[0].imagee`), as Kubernetes' strict
/// decoding names them. Objects without described properties (raw extensions) are left alone.
pub fn prune_unknown(ty: &str, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(schema) = types().definitions.get(ty) {
        prune(schema, obj, "", &mut unknown);
    }
    unknown
}

fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let schema = resolve(schema);
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                map.retain(|key, child| {
                    let here = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match properties.get(key) {
                        // Patch directives ($patch, $setElementOrder/...) are not fields.
                        _ if key.starts_with('$') => true,
                        Some(property) => {
                            prune(property, child, &here, unknown);
                            true
                        }
                        // apiVersion and kind are part of every object, described or not.
                        None if path.is_empty() && (key == "apiVersion" || key == "kind") => true,
                        None => {
                            unknown.push(here);
                            false
                        }
                    }
                });
            } else if let Some(values) =
                schema.get("additionalProperties").filter(|v| v.is_object())
            {
                for (key, child) in map.iter_mut() {
                    prune(values, child, &format!("{path}[{key}]"), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_and_pruned() {
        let mut deploy = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labelz": {"a": "b"}, "labels": {"a": "b"}},
            "spec": {"replicaz": 3, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"spec": {"containers": [{"name": "c", "imagee": "x", "resources": {"limits": {"cpu": "1"}}}]}}},
            "status": {}
        });
        let unknown = prune_unknown("io.k8s.api.apps.v1.Deployment", &mut deploy);
        assert_eq!(
            unknown,
            [
                "metadata.labelz",
                "spec.replicaz",
                "spec.template.spec.containers[0].imagee"
            ]
        );
        assert!(deploy["spec"].get("replicaz").is_none());
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        assert_eq!(deploy["metadata"]["labels"]["a"], "b");
        let mut patch = serde_json::json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "$patch": "delete"}]}}}});
        assert!(prune_unknown("io.k8s.api.apps.v1.Deployment", &mut patch).is_empty());
        let mut cm =
            serde_json::json!({"data": {"any-key": "v"}, "binaryData": {}, "immutable": false});
        assert!(prune_unknown("io.k8s.api.core.v1.ConfigMap", &mut cm).is_empty());
    }

    #[test]
    fn every_kind_has_its_type() {
        for kind in kinds::all() {
            assert!(root(kind).is_some(), "{} has no type", kind.kind);
        }
    }

    #[test]
    fn fields_are_described_through_references() {
        let deploy = root(kinds::find("apps", "v1", "deployments").unwrap()).unwrap();
        assert_eq!(deploy, "io.k8s.api.apps.v1.Deployment");
        let cases = [
            (
                deploy,
                "spec",
                Some(Field::Object("io.k8s.api.apps.v1.DeploymentSpec")),
            ),
            (
                "io.k8s.api.core.v1.PodSpec",
                "containers",
                Some(Field::List(Some("io.k8s.api.core.v1.Container"))),
            ),
            (
                "io.k8s.api.core.v1.Container",
                "args",
                Some(Field::List(None)),
            ),
            (
                "io.k8s.api.core.v1.ConfigMap",
                "data",
                Some(Field::Map(None)),
            ),
            ("io.k8s.api.core.v1.Container", "image", Some(Field::Scalar)),
            ("io.k8s.api.core.v1.Container", "nonsense", None),
        ];
        for (ty, name, want) in cases {
            assert_eq!(field(ty, name), want, "{ty}.{name}");
        }
        assert!(object_lists().contains(&("io.k8s.api.core.v1.PodSpec", "volumes")));
    }
}
