//! Protobuf request bodies, as kubectl 1.32+ sends them for `create secret|configmap|namespace|
//! service|deployment|priorityclass|serviceaccount`, `auth can-i`, `certificate approve|deny` and drain's delete: the `k8s\0` envelope around a
//! `runtime.Unknown`, decoded with `k8s-pb` and turned into the JSON the rest of the server
//! handles. Answers stay JSON.
//!
//! Protobuf writes out empty strings and zeros: they read as unset here, so defaults apply.
//! The fields those commands set are converted: each conversion takes its fields out of the
//! decoded message, and a body with anything else left (a field no conversion reads) is
//! refused with a 415 asking for JSON rather than stored without it; so are other kinds.

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

/// Takes a field out of a decoded message: what is left afterwards is what no conversion read.
fn t<T: Default>(field: &mut T) -> T {
    std::mem::take(field)
}

fn strings(map: &mut BTreeMap<String, String>) -> Value {
    json!(t(map))
}

/// A timestamp as RFC 3339 in whole seconds (none for the zero time Go writes when unset).
fn time(at: &mut Option<meta::Time>) -> Value {
    let seconds = at.take().and_then(|at| at.seconds).filter(|s| *s != 0);
    json!(seconds
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(skiff_api::object::timestamp))
}

/// An object's metadata: all of it, as a client that read an object writes it back whole
/// (`kubectl certificate approve` does).
fn metadata(m: &mut Option<meta::ObjectMeta>) -> Value {
    let Some(m) = m.as_mut() else {
        return json!({});
    };
    let owners: Vec<Value> = t(&mut m.owner_references)
        .into_iter()
        .map(|mut o| {
            object(&[
                ("apiVersion", json!(t(&mut o.api_version))),
                ("kind", json!(t(&mut o.kind))),
                ("name", json!(t(&mut o.name))),
                ("uid", json!(t(&mut o.uid))),
                ("controller", json!(t(&mut o.controller))),
                ("blockOwnerDeletion", json!(t(&mut o.block_owner_deletion))),
            ])
        })
        .collect();
    let managed: Vec<Value> = m
        .managed_fields
        .iter_mut()
        .map(|e| {
            // Fields that are not JSON stay in the message, which the body is then refused for.
            let raw = e.fields_v1.as_ref().and_then(|f| f.raw.as_deref());
            let fields = raw.and_then(|raw| serde_json::from_slice::<Value>(raw).ok());
            if fields.is_some() || raw.is_none() {
                e.fields_v1 = None;
            }
            object(&[
                ("manager", json!(t(&mut e.manager))),
                ("operation", json!(t(&mut e.operation))),
                ("apiVersion", json!(t(&mut e.api_version))),
                ("time", time(&mut e.time)),
                ("fieldsType", json!(t(&mut e.fields_type))),
                ("fieldsV1", json!(fields)),
                ("subresource", json!(t(&mut e.subresource))),
            ])
        })
        .collect();
    object(&[
        ("name", json!(t(&mut m.name))),
        ("generateName", json!(t(&mut m.generate_name))),
        ("namespace", json!(t(&mut m.namespace))),
        ("selfLink", json!(t(&mut m.self_link))),
        ("uid", json!(t(&mut m.uid))),
        ("resourceVersion", json!(t(&mut m.resource_version))),
        ("generation", json!(t(&mut m.generation))),
        ("creationTimestamp", time(&mut m.creation_timestamp)),
        ("deletionTimestamp", time(&mut m.deletion_timestamp)),
        (
            "deletionGracePeriodSeconds",
            json!(t(&mut m.deletion_grace_period_seconds)),
        ),
        ("labels", strings(&mut m.labels)),
        ("annotations", strings(&mut m.annotations)),
        ("ownerReferences", json!(owners)),
        ("finalizers", json!(t(&mut m.finalizers))),
        ("managedFields", json!(managed)),
    ])
}

fn int_or_string(v: &mut Option<IntOrString>) -> Value {
    match v.take() {
        Some(v) if v.r#type == Some(1) => json!(v.str_val),
        Some(v) => json!(v.int_val),
        None => Value::Null,
    }
}

fn label_selector(s: &mut Option<meta::LabelSelector>) -> Value {
    let Some(mut s) = s.take() else {
        return Value::Null;
    };
    let expressions: Vec<Value> = s
        .match_expressions
        .iter_mut()
        .map(|e| {
            object(&[
                ("key", json!(t(&mut e.key))),
                ("operator", json!(t(&mut e.operator))),
                ("values", json!(t(&mut e.values))),
            ])
        })
        .collect();
    object(&[
        ("matchLabels", strings(&mut s.match_labels)),
        ("matchExpressions", json!(expressions)),
    ])
}

fn quantities(
    map: &mut BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> Value {
    json!(t(map)
        .into_iter()
        .map(|(k, q)| (k, json!(q.string)))
        .collect::<Map<String, Value>>())
}

fn container(c: &mut core::v1::Container) -> Value {
    let ports: Vec<Value> = c
        .ports
        .iter_mut()
        .map(|p| {
            object(&[
                ("name", json!(t(&mut p.name))),
                ("containerPort", json!(t(&mut p.container_port))),
                ("protocol", json!(t(&mut p.protocol))),
                ("hostPort", json!(t(&mut p.host_port))),
            ])
        })
        .collect();
    let env: Vec<Value> = c
        .env
        .iter_mut()
        .map(|e| {
            object(&[
                ("name", json!(t(&mut e.name))),
                ("value", json!(t(&mut e.value))),
            ])
        })
        .collect();
    let resources = c.resources.as_mut().map_or(Value::Null, |r| {
        object(&[
            ("limits", quantities(&mut r.limits)),
            ("requests", quantities(&mut r.requests)),
        ])
    });
    object(&[
        ("name", json!(t(&mut c.name))),
        ("image", json!(t(&mut c.image))),
        ("command", json!(t(&mut c.command))),
        ("args", json!(t(&mut c.args))),
        ("workingDir", json!(t(&mut c.working_dir))),
        ("ports", json!(ports)),
        ("env", json!(env)),
        ("resources", resources),
        ("imagePullPolicy", json!(t(&mut c.image_pull_policy))),
    ])
}

fn pod_template(template: &mut Option<core::v1::PodTemplateSpec>) -> Value {
    let Some(template) = template.as_mut() else {
        return Value::Null;
    };
    let spec = template.spec.as_mut().map_or(Value::Null, |s| {
        object(&[
            (
                "containers",
                json!(s.containers.iter_mut().map(container).collect::<Vec<_>>()),
            ),
            (
                "initContainers",
                json!(s
                    .init_containers
                    .iter_mut()
                    .map(container)
                    .collect::<Vec<_>>()),
            ),
            ("restartPolicy", json!(t(&mut s.restart_policy))),
            ("nodeSelector", strings(&mut s.node_selector)),
            ("serviceAccountName", json!(t(&mut s.service_account_name))),
        ])
    });
    object(&[
        ("metadata", metadata(&mut template.metadata)),
        ("spec", spec),
    ])
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
    let (obj, rest) = match kind {
        "Secret" => {
            let mut s = core::v1::Secret::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let data: Map<String, Value> = t(&mut s.data)
                .into_iter()
                .map(|(k, v)| (k, json!(b64(&v))))
                .collect();
            let obj = typed(
                "v1",
                kind,
                &[
                    ("metadata", metadata(&mut s.metadata)),
                    ("type", json!(t(&mut s.r#type))),
                    ("data", Value::Object(data)),
                    ("stringData", strings(&mut s.string_data)),
                    ("immutable", json!(t(&mut s.immutable))),
                ],
            );
            (obj, s.encode_to_vec())
        }
        "ConfigMap" => {
            let mut c = core::v1::ConfigMap::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let binary: Map<String, Value> = t(&mut c.binary_data)
                .into_iter()
                .map(|(k, v)| (k, json!(b64(&v))))
                .collect();
            let obj = typed(
                "v1",
                kind,
                &[
                    ("metadata", metadata(&mut c.metadata)),
                    ("data", strings(&mut c.data)),
                    ("binaryData", Value::Object(binary)),
                    ("immutable", json!(t(&mut c.immutable))),
                ],
            );
            (obj, c.encode_to_vec())
        }
        "Namespace" => {
            let mut n = core::v1::Namespace::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let obj = typed("v1", kind, &[("metadata", metadata(&mut n.metadata))]);
            (obj, n.encode_to_vec())
        }
        "ServiceAccount" => {
            let mut a =
                core::v1::ServiceAccount::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let obj = typed("v1", kind, &[("metadata", metadata(&mut a.metadata))]);
            (obj, a.encode_to_vec())
        }
        "PriorityClass" => {
            let mut c =
                scheduling::v1::PriorityClass::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let mut obj = typed(
                "scheduling.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(&mut c.metadata)),
                    ("globalDefault", json!(t(&mut c.global_default))),
                    ("description", json!(t(&mut c.description))),
                    ("preemptionPolicy", json!(t(&mut c.preemption_policy))),
                ],
            );
            // Zero is a value like any other here.
            obj["value"] = json!(c.value.take().unwrap_or(0));
            (obj, c.encode_to_vec())
        }
        "Service" => {
            let mut s = core::v1::Service::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let spec = s.spec.as_mut().map_or(Value::Null, |spec| {
                let ports: Vec<Value> = spec
                    .ports
                    .iter_mut()
                    .map(|p| {
                        object(&[
                            ("name", json!(t(&mut p.name))),
                            ("protocol", json!(t(&mut p.protocol))),
                            ("port", json!(t(&mut p.port))),
                            ("targetPort", int_or_string(&mut p.target_port)),
                            ("nodePort", json!(t(&mut p.node_port))),
                        ])
                    })
                    .collect();
                object(&[
                    ("ports", json!(ports)),
                    ("selector", strings(&mut spec.selector)),
                    ("clusterIP", json!(t(&mut spec.cluster_ip))),
                    ("type", json!(t(&mut spec.r#type))),
                    ("externalName", json!(t(&mut spec.external_name))),
                ])
            });
            let obj = typed(
                "v1",
                kind,
                &[("metadata", metadata(&mut s.metadata)), ("spec", spec)],
            );
            (obj, s.encode_to_vec())
        }
        "Deployment" => {
            let mut d = apps::v1::Deployment::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            // Zero replicas are a real request here, not an unset field.
            let no_replicas = d.spec.as_ref().and_then(|s| s.replicas) == Some(0);
            let spec = d.spec.as_mut().map_or(Value::Null, |spec| {
                let strategy = spec.strategy.as_mut().map_or(Value::Null, |s| {
                    let rolling = s.rolling_update.as_mut().map_or(Value::Null, |r| {
                        object(&[
                            ("maxUnavailable", int_or_string(&mut r.max_unavailable)),
                            ("maxSurge", int_or_string(&mut r.max_surge)),
                        ])
                    });
                    object(&[
                        ("type", json!(t(&mut s.r#type))),
                        ("rollingUpdate", rolling),
                    ])
                });
                object(&[
                    ("replicas", json!(t(&mut spec.replicas))),
                    ("selector", label_selector(&mut spec.selector)),
                    ("template", pod_template(&mut spec.template)),
                    ("strategy", strategy),
                ])
            });
            let mut obj = typed(
                "apps/v1",
                kind,
                &[("metadata", metadata(&mut d.metadata)), ("spec", spec)],
            );
            if no_replicas {
                obj["spec"]["replicas"] = json!(0);
            }
            (obj, d.encode_to_vec())
        }
        "CertificateSigningRequest" => {
            let mut c =
                k8s_pb::api::certificates::v1::CertificateSigningRequest::decode(raw.as_slice())
                    .map_err(|e| bad(kind, e))?;
            let spec = c.spec.as_mut().map_or(Value::Null, |spec| {
                object(&[
                    ("request", json!(t(&mut spec.request).as_ref().map(b64))),
                    ("signerName", json!(t(&mut spec.signer_name))),
                    ("usages", json!(t(&mut spec.usages))),
                    ("expirationSeconds", json!(t(&mut spec.expiration_seconds))),
                    ("username", json!(t(&mut spec.username))),
                    ("uid", json!(t(&mut spec.uid))),
                    ("groups", json!(t(&mut spec.groups))),
                    (
                        "extra",
                        json!(t(&mut spec.extra)
                            .into_iter()
                            .map(|(k, v)| (k, json!(v.items)))
                            .collect::<Map<String, Value>>()),
                    ),
                ])
            });
            let certificate = c
                .status
                .as_mut()
                .and_then(|s| s.certificate.take())
                .map(|cert| b64(&cert));
            let conditions: Vec<Value> = c
                .status
                .iter_mut()
                .flat_map(|s| &mut s.conditions)
                .map(|c| {
                    object(&[
                        ("type", json!(t(&mut c.r#type))),
                        ("status", json!(t(&mut c.status))),
                        ("reason", json!(t(&mut c.reason))),
                        ("message", json!(t(&mut c.message))),
                        ("lastUpdateTime", time(&mut c.last_update_time)),
                        ("lastTransitionTime", time(&mut c.last_transition_time)),
                    ])
                })
                .collect();
            let obj = typed(
                "certificates.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(&mut c.metadata)),
                    ("spec", spec),
                    (
                        "status",
                        object(&[
                            ("conditions", json!(conditions)),
                            ("certificate", json!(certificate)),
                        ]),
                    ),
                ],
            );
            (obj, c.encode_to_vec())
        }
        "SelfSubjectAccessReview" => {
            let mut r = authorization::v1::SelfSubjectAccessReview::decode(raw.as_slice())
                .map_err(|e| bad(kind, e))?;
            let spec = r.spec.get_or_insert_with(Default::default);
            let resource = spec.resource_attributes.as_mut().map_or(Value::Null, |a| {
                object(&[
                    ("namespace", json!(t(&mut a.namespace))),
                    ("verb", json!(t(&mut a.verb))),
                    ("group", json!(t(&mut a.group))),
                    ("version", json!(t(&mut a.version))),
                    ("resource", json!(t(&mut a.resource))),
                    ("subresource", json!(t(&mut a.subresource))),
                    ("name", json!(t(&mut a.name))),
                ])
            });
            let non_resource = spec
                .non_resource_attributes
                .as_mut()
                .map_or(Value::Null, |a| {
                    object(&[
                        ("path", json!(t(&mut a.path))),
                        ("verb", json!(t(&mut a.verb))),
                    ])
                });
            let obj = typed(
                "authorization.k8s.io/v1",
                kind,
                &[
                    ("metadata", metadata(&mut r.metadata)),
                    (
                        "spec",
                        object(&[
                            ("resourceAttributes", resource),
                            ("nonResourceAttributes", non_resource),
                        ]),
                    ),
                ],
            );
            (obj, r.encode_to_vec())
        }
        "SelfSubjectRulesReview" => {
            let mut r = authorization::v1::SelfSubjectRulesReview::decode(raw.as_slice())
                .map_err(|e| bad(kind, e))?;
            let namespace = r.spec.as_mut().and_then(|s| s.namespace.take());
            let obj = typed(
                "authorization.k8s.io/v1",
                kind,
                &[("spec", object(&[("namespace", json!(namespace))]))],
            );
            (obj, r.encode_to_vec())
        }
        "DeleteOptions" => {
            let mut o = meta::DeleteOptions::decode(raw.as_slice()).map_err(|e| bad(kind, e))?;
            let preconditions = o.preconditions.as_mut().map_or(Value::Null, |p| {
                object(&[
                    ("uid", json!(t(&mut p.uid))),
                    ("resourceVersion", json!(t(&mut p.resource_version))),
                ])
            });
            let mut obj = object(&[
                ("propagationPolicy", json!(t(&mut o.propagation_policy))),
                ("preconditions", preconditions),
                ("dryRun", json!(t(&mut o.dry_run))),
            ]);
            // A grace period of 0 means "now", not "unset".
            if let Some(grace) = o.grace_period_seconds.take() {
                obj["gracePeriodSeconds"] = json!(grace);
            }
            (obj, o.encode_to_vec())
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
    };
    // What no conversion took would be lost: refused rather than dropped.
    if !all_zero(&rest) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "this protobuf {kind} sets fields the server reads only from JSON; send JSON (application/json)"
            ),
        ));
    }
    Ok(obj)
}

/// Whether protobuf bytes hold only zero values (zeros, empty strings, messages of zero values):
/// what a Go client writes for the fields it leaves unset.
fn all_zero(mut bytes: &[u8]) -> bool {
    use prost::encoding::decode_varint;
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else {
            return false;
        };
        let width = match key & 7 {
            0 => match decode_varint(&mut bytes) {
                Ok(0) => continue,
                _ => return false,
            },
            1 => 8,
            5 => 4,
            2 => match decode_varint(&mut bytes) {
                Ok(len) if len as usize <= bytes.len() => {
                    let (inner, rest) = bytes.split_at(len as usize);
                    if !all_zero(inner) {
                        return false;
                    }
                    bytes = rest;
                    continue;
                }
                _ => return false,
            },
            _ => return false,
        };
        if bytes.len() < width || bytes[..width].iter().any(|b| *b != 0) {
            return false;
        }
        bytes = &bytes[width..];
    }
    true
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

    #[test]
    fn fields_no_conversion_reads_are_refused_not_dropped() {
        let deployment = |min_ready: Option<i32>| apps::v1::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            }),
            spec: Some(apps::v1::DeploymentSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                ..Default::default()
            }),
            // Go clients write empty structs and zeros for what they leave unset.
            status: Some(apps::v1::DeploymentStatus {
                replicas: Some(0),
                ..Default::default()
            }),
        };
        let body = |d: apps::v1::Deployment| envelope("Deployment", "apps/v1", d.encode_to_vec());
        let got = decode("Deployment", &body(deployment(None))).unwrap();
        assert_eq!(got["spec"], json!({"replicas": 0}));
        let refused = decode("Deployment", &body(deployment(Some(10)))).unwrap_err();
        assert_eq!(refused.code, 415);
        // Managed fields whose FieldsV1 is not JSON are not dropped either.
        let namespace = |raw: &[u8]| core::v1::Namespace {
            metadata: Some(meta::ObjectMeta {
                name: Some("team".into()),
                managed_fields: vec![meta::ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    fields_v1: Some(meta::FieldsV1 {
                        raw: Some(raw.to_vec()),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let sent = |raw: &[u8]| envelope("Namespace", "v1", namespace(raw).encode_to_vec());
        let got = decode("Namespace", &sent(br#"{"f:metadata":{}}"#)).unwrap();
        assert_eq!(
            got["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {}})
        );
        assert_eq!(
            decode("Namespace", &sent(b"not json")).unwrap_err().code,
            415
        );
        assert!(
            refused
                .message
                .contains("sets fields the server reads only from JSON"),
            "{}",
            refused.message
        );
    }
}
