//! Protobuf request bodies, as kubectl 1.32+ sends them for `create secret|configmap|namespace|
//! service|deployment|priorityclass|serviceaccount`, `auth can-i`, `certificate approve|deny` and drain's delete: the `k8s\0` envelope around a
//! `runtime.Unknown`, decoded with `k8s-pb` and turned into the JSON the rest of the server
//! handles. Answers stay JSON.
//!
//! Protobuf writes out empty strings and zeros: they read as unset here, so defaults apply.
//! FIXME(issue 5): only the kinds and fields those kubectl commands send are converted; other
//! kinds are refused with a 415 asking for JSON.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::{apps, authorization, core, scheduling};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Map, Value};

use crate::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn bad(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body is not a valid {what}: {e}"))
}

/// Inserts `value` under `key` unless it is unset (None, "", 0, false, empty).
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let unset = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !unset {
        map.insert(key.into(), value);
    }
}

fn object(fields: &[(&str, Value)]) -> Value {
    let mut map = Map::new();
    for (k, v) in fields {
        put(&mut map, k, v.clone());
    }
    Value::Object(map)
}

fn strings(map: &BTreeMap<String, String>) -> Value {
    json!(map)
}

fn metadata(m: Option<&meta::ObjectMeta>) -> Value {
    let Some(m) = m else { return json!({}) };
    object(&[
        ("name", json!(m.name)),
        ("generateName", json!(m.generate_name)),
        ("namespace", json!(m.namespace)),
        ("uid", json!(m.uid)),
        ("resourceVersion", json!(m.resource_version)),
        ("labels", strings(&m.labels)),
        ("annotations", strings(&m.annotations)),
        ("finalizers", json!(m.finalizers)),
    ])
}

fn int_or_string(v: Option<&IntOrString>) -> Value {
    match v {
        Some(v) if v.r#type == Some(1) => json!(v.str_val),
        Some(v) => json!(v.int_val),
        None => Value::Null,
    }
}

fn label_selector(s: Option<&meta::LabelSelector>) -> Value {
    let Some(s) = s else { return Value::Null };
    let expressions: Vec<Value> = s
        .match_expressions
        .iter()
        .map(|e| {
            object(&[
                ("key", json!(e.key)),
                ("operator", json!(e.operator)),
                ("values", json!(e.values)),
            ])
        })
        .collect();
    object(&[
        ("matchLabels", strings(&s.match_labels)),
        ("matchExpressions", json!(expressions)),
    ])
}

fn quantities(map: &BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Value {
    json!(map
        .iter()
        .map(|(k, q)| (k.clone(), json!(q.string)))
        .collect::<Map<String, Value>>())
}

fn container(c: &core::v1::Container) -> Value {
    let ports: Vec<Value> = c
        .ports
        .iter()
        .map(|p| {
            object(&[
                ("name", json!(p.name)),
                ("containerPort", json!(p.container_port)),
                ("protocol", json!(p.protocol)),
                ("hostPort", json!(p.host_port)),
            ])
        })
        .collect();
    let env: Vec<Value> = c
        .env
        .iter()
        .map(|e| object(&[("name", json!(e.name)), ("value", json!(e.value))]))
        .collect();
    let resources = c.resources.as_ref().map_or(Value::Null, |r| {
        object(&[
            ("limits", quantities(&r.limits)),
            ("requests", quantities(&r.requests)),
        ])
    });
    object(&[
        ("name", json!(c.name)),
        ("image", json!(c.image)),
        ("command", json!(c.command)),
        ("args", json!(c.args)),
        ("workingDir", json!(c.working_dir)),
        ("ports", json!(ports)),
        ("env", json!(env)),
        ("resources", resources),
        ("imagePullPolicy", json!(c.image_pull_policy)),
    ])
}

fn pod_template(t: Option<&core::v1::PodTemplateSpec>) -> Value {
    let Some(t) = t else { return Value::Null };
    let spec = t.spec.as_ref().map_or(Value::Null, |s| {
        object(&[
            (
                "containers",
                json!(s.containers.iter().map(container).collect::<Vec<_>>()),
            ),
            (
                "initContainers",
                json!(s.init_containers.iter().map(container).collect::<Vec<_>>()),
            ),
            ("restartPolicy", json!(s.restart_policy)),
            ("nodeSelector", strings(&s.node_selector)),
            ("serviceAccountName", json!(s.service_account_name)),
        ])
    });
    object(&[("metadata", metadata(t.metadata.as_ref())), ("spec", spec)])
}

fn typed(api_version: &str, kind: &str, fields: &[(&str, Value)]) -> Value {
    let mut obj = object(fields);
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    obj
}

/// The object a protobuf body holds, as JSON. `kind` is the endpoint's (the envelope's kind
/// must agree).
pub fn decode(kind: &str, body: &[u8]) -> Result<Value, ApiError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("a protobuf body starts with the bytes \"k8s\\0\""))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(inner)
        .map_err(|e| bad("envelope", e))?;
    let raw = unknown.raw.unwrap_or_default();
    let sent = unknown
        .type_meta
        .as_ref()
        .and_then(|t| t.kind.clone())
        .unwrap_or_default();
    if !sent.is_empty() && sent != kind && kind != "DeleteOptions" {
        return Err(ApiError::bad_request(format!(
            "the protobuf body holds a {sent}, not a {kind}"
        )));
    }
    let b64 = |bytes: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(match kind {
        "Secret" => {
            let s = core::v1::Secret::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let data: Map<String, Value> = s
                .data
                .iter()
                .map(|(k, v)| (k.clone(), json!(b64(v))))
                .collect();
            typed(
                "v1",
                kind,
                &[
                    ("metadata", metadata(s.metadata.as_ref())),
                    ("type", json!(s.r#type)),
                    ("data", Value::Object(data)),
                    ("stringData", strings(&s.string_data)),
                    ("immutable", json!(s.immutable)),
                ],
            )
        }
        "ConfigMap" => {
            let c = core::v1::ConfigMap::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let binary: Map<String, Value> = c
                .binary_data
                .iter()
                .map(|(k, v)| (k.clone(), json!(b64(v))))
                .collect();
            typed(
                "v1",
                kind,
                &[
                    ("metadata", metadata(c.metadata.as_ref())),
                    ("data", strings(&c.data)),
                    ("binaryData", Value::Object(binary)),
                    ("immutable", json!(c.immutable)),
                ],
            )
        }
        "Namespace" => {
            let n = core::v1::Namespace::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            typed("v1", kind, &[("metadata", metadata(n.metadata.as_ref()))])
        }
        "ServiceAccount" => {
            let a = core::v1::ServiceAccount::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            typed("v1", kind, &[("metadata", metadata(a.metadata.as_ref()))])
        }
        "PriorityClass" => {
            let c =
                scheduling::v1::PriorityClass::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let mut obj = typed(
                "scheduling.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(c.metadata.as_ref())),
                    ("globalDefault", json!(c.global_default)),
                    ("description", json!(c.description)),
                    ("preemptionPolicy", json!(c.preemption_policy)),
                ],
            );
            // Zero is a value like any other here.
            obj["value"] = json!(c.value.unwrap_or(0));
            obj
        }
        "Service" => {
            let s = core::v1::Service::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let spec = s.spec.as_ref().map_or(Value::Null, |spec| {
                let ports: Vec<Value> = spec
                    .ports
                    .iter()
                    .map(|p| {
                        object(&[
                            ("name", json!(p.name)),
                            ("protocol", json!(p.protocol)),
                            ("port", json!(p.port)),
                            ("targetPort", int_or_string(p.target_port.as_ref())),
                            ("nodePort", json!(p.node_port)),
                        ])
                    })
                    .collect();
                object(&[
                    ("ports", json!(ports)),
                    ("selector", strings(&spec.selector)),
                    ("clusterIP", json!(spec.cluster_ip)),
                    ("type", json!(spec.r#type)),
                    ("externalName", json!(spec.external_name)),
                ])
            });
            typed(
                "v1",
                kind,
                &[("metadata", metadata(s.metadata.as_ref())), ("spec", spec)],
            )
        }
        "Deployment" => {
            let d = apps::v1::Deployment::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let spec = d.spec.as_ref().map_or(Value::Null, |spec| {
                let strategy = spec.strategy.as_ref().map_or(Value::Null, |s| {
                    let rolling = s.rolling_update.as_ref().map_or(Value::Null, |r| {
                        object(&[
                            ("maxUnavailable", int_or_string(r.max_unavailable.as_ref())),
                            ("maxSurge", int_or_string(r.max_surge.as_ref())),
                        ])
                    });
                    object(&[("type", json!(s.r#type)), ("rollingUpdate", rolling)])
                });
                object(&[
                    ("replicas", json!(spec.replicas)),
                    ("selector", label_selector(spec.selector.as_ref())),
                    ("template", pod_template(spec.template.as_ref())),
                    ("strategy", strategy),
                ])
            });
            // Zero replicas are a real request here, not an unset field.
            let mut obj = typed(
                "apps/v1",
                kind,
                &[("metadata", metadata(d.metadata.as_ref())), ("spec", spec)],
            );
            if d.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
                obj["spec"]["replicas"] = json!(0);
            }
            obj
        }
        "CertificateSigningRequest" => {
            let c =
                k8s_pb::api::certificates::v1::CertificateSigningRequest::decode(raw.as_slice())
                    .map_err(|e| bad(kind, e))?;
            let spec = c.spec.as_ref().map_or(Value::Null, |spec| {
                object(&[
                    ("request", json!(spec.request.as_ref().map(b64))),
                    ("signerName", json!(spec.signer_name)),
                    ("usages", json!(spec.usages)),
                    ("expirationSeconds", json!(spec.expiration_seconds)),
                ])
            });
            let time = |t: Option<&meta::Time>| {
                t.and_then(|t| t.seconds)
                    .and_then(|s| jiff::Timestamp::from_second(s).ok())
                    .map(skiff_api::object::timestamp)
            };
            let conditions: Vec<Value> = c
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .map(|c| {
                    object(&[
                        ("type", json!(c.r#type)),
                        ("status", json!(c.status)),
                        ("reason", json!(c.reason)),
                        ("message", json!(c.message)),
                        ("lastUpdateTime", json!(time(c.last_update_time.as_ref()))),
                        (
                            "lastTransitionTime",
                            json!(time(c.last_transition_time.as_ref())),
                        ),
                    ])
                })
                .collect();
            typed(
                "certificates.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(c.metadata.as_ref())),
                    ("spec", spec),
                    ("status", object(&[("conditions", json!(conditions))])),
                ],
            )
        }
        "SelfSubjectAccessReview" => {
            let r = authorization::v1::SelfSubjectAccessReview::decode(raw.as_slice())
                .map_err(|e| bad(kind, e))?;
            let spec = r.spec.unwrap_or_default();
            let resource = spec.resource_attributes.as_ref().map_or(Value::Null, |a| {
                object(&[
                    ("namespace", json!(a.namespace)),
                    ("verb", json!(a.verb)),
                    ("group", json!(a.group)),
                    ("version", json!(a.version)),
                    ("resource", json!(a.resource)),
                    ("subresource", json!(a.subresource)),
                    ("name", json!(a.name)),
                ])
            });
            let non_resource = spec
                .non_resource_attributes
                .as_ref()
                .map_or(Value::Null, |a| {
                    object(&[("path", json!(a.path)), ("verb", json!(a.verb))])
                });
            typed(
                "authorization.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(r.metadata.as_ref())),
                    (
                        "spec",
                        object(&[
                            ("resourceAttributes", resource),
                            ("nonResourceAttributes", non_resource),
                        ]),
                    ),
                ],
            )
        }
        "SelfSubjectRulesReview" => {
            let r = authorization::v1::SelfSubjectRulesReview::decode(raw.as_slice())
                .map_err(|e| bad(kind, e))?;
            let namespace = r.spec.and_then(|s| s.namespace);
            typed(
                "authorization.k8s.io/v1",
                kind,
                &[("spec", object(&[("namespace", json!(namespace))]))],
            )
        }
        "DeleteOptions" => {
            let o = meta::DeleteOptions::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let preconditions = o.preconditions.as_ref().map_or(Value::Null, |p| {
                object(&[
                    ("uid", json!(p.uid)),
                    ("resourceVersion", json!(p.resource_version)),
                ])
            });
            let mut obj = object(&[
                ("propagationPolicy", json!(o.propagation_policy)),
                ("preconditions", preconditions),
                ("dryRun", json!(o.dry_run)),
            ]);
            // A grace period of 0 means "now", not "unset".
            if let Some(grace) = o.grace_period_seconds {
                obj["gracePeriodSeconds"] = json!(grace);
            }
            obj
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                "protobuf bodies of {other} are not supported yet; send JSON (application/json)"
            ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, api_version: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, unknown.encode_to_vec().as_slice()].concat()
    }

    #[test]
    fn kubectl_create_secret_and_configmap_bodies() {
        let secret = core::v1::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("db-creds".into()),
                namespace: Some(String::new()),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            data: [("password".to_string(), b"s3cur3-p4ss".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let got = decode("Secret", &envelope("Secret", "v1", secret.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({"metadata": {"name": "db-creds"}, "type": "Opaque", "data": {"password": "czNjdXIzLXA0c3M="}, "apiVersion": "v1", "kind": "Secret"})
        );
        let cm = core::v1::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("app-config".into()),
                ..Default::default()
            }),
            data: [("log_level".to_string(), "debug".to_string())].into(),
            ..Default::default()
        };
        let got = decode(
            "ConfigMap",
            &envelope("ConfigMap", "v1", cm.encode_to_vec()),
        )
        .unwrap();
        assert_eq!(got["data"]["log_level"], "debug");
        let wrong = decode("Secret", &envelope("ConfigMap", "v1", cm.encode_to_vec())).unwrap_err();
        assert!(
            wrong.message.contains("holds a ConfigMap, not a Secret"),
            "{}",
            wrong.message
        );
        let no_magic = decode("Secret", b"{}").unwrap_err();
        assert!(no_magic.message.contains("k8s\\0"), "{}", no_magic.message);
        let class = scheduling::v1::PriorityClass {
            metadata: Some(meta::ObjectMeta {
                name: Some("urgent".into()),
                ..Default::default()
            }),
            value: Some(0),
            description: Some(String::new()),
            ..Default::default()
        };
        let got = decode(
            "PriorityClass",
            &envelope(
                "PriorityClass",
                "scheduling.k8s.io/v1",
                class.encode_to_vec(),
            ),
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"metadata": {"name": "urgent"}, "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "value": 0})
        );
        let other = decode("Pod", &envelope("Pod", "v1", vec![])).unwrap_err();
        assert_eq!(other.code, 415);
    }

    #[test]
    fn delete_options_keep_a_zero_grace_period() {
        let options = meta::DeleteOptions {
            grace_period_seconds: Some(0),
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        let got = decode(
            "DeleteOptions",
            &envelope("DeleteOptions", "v1", options.encode_to_vec()),
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"propagationPolicy": "Background", "gracePeriodSeconds": 0})
        );
    }
}
