//! OpenAPI documents: the `/openapi/v3` index and one document per group-version, with each
//! kind's operations marked by group-version-kind and the query parameters they accept (kubectl
//! reads them to know that server-side field validation is there), and the schemas of the
//! kinds and everything they refer to (what `kubectl explain` shows), from `k8s-openapi`'s
//! types. Each document is built once, when first asked for.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use skiff_api::kinds::{self, Kind};
use skiff_api::schema::register;

/// Changes whenever the documents can change: with the binary.
const HASH: &str = env!("CARGO_PKG_VERSION");

/// The path of a group-version's document below `/openapi/v3/`: `api/v1`, `apis/apps/v1`.
fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub fn index() -> Value {
    let mut paths = Map::new();
    for (group, version) in kinds::group_versions() {
        let path = doc_path(group, version);
        let url = format!("/openapi/v3/{path}?hash={HASH}");
        paths.insert(path, json!({ "serverRelativeURL": url }));
    }
    json!({ "paths": paths })
}

/// The JSON document at `path` (below `/openapi/v3/`), or `None` when no group-version is
/// there. Documents are built on first use and kept, serialized.
pub fn document(path: &str) -> Option<Bytes> {
    static DOCUMENTS: OnceLock<Mutex<HashMap<String, Bytes>>> = OnceLock::new();
    let documents = DOCUMENTS.get_or_init(Default::default);
    if let Some(doc) = documents.lock().expect("documents lock").get(path) {
        return Some(doc.clone());
    }
    let doc = Bytes::from(serde_json::to_vec(&build(path)?).expect("a JSON value serializes"));
    documents
        .lock()
        .expect("documents lock")
        .insert(path.to_string(), doc.clone());
    Some(doc)
}

fn build(path: &str) -> Option<Value> {
    let (group, version) = kinds::group_versions()
        .into_iter()
        .find(|(g, v)| doc_path(g, v) == path)?;
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut named = Vec::new();
    for kind in kinds::all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let gvk = json!({"group": kind.group, "version": kind.version, "kind": kind.kind});
        let name = register(kind, &mut generator)?;
        paths.insert(object_path(kind), operations(&name, &gvk));
        named.push((name, gvk));
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (name, gvk) in named {
        if let Some(schema) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn object_path(kind: &Kind) -> String {
    let base = if kind.group.is_empty() {
        format!("/api/{}", kind.version)
    } else {
        format!("/apis/{}/{}", kind.group, kind.version)
    };
    if kind.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", kind.plural)
    } else {
        format!("{base}/{}/{{name}}", kind.plural)
    }
}

fn operations(schema: &str, gvk: &Value) -> Value {
    let query = |name: &str, ty: &str| json!({"name": name, "in": "query", "schema": {"type": ty}});
    let write_params = [
        query("dryRun", "string"),
        query("fieldManager", "string"),
        query("fieldValidation", "string"),
    ];
    let reference = json!({"$ref": format!("#/components/schemas/{schema}")});
    let op = |action: &str, params: &[Value]| {
        json!({
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        })
    };
    let mut patch_params = write_params.to_vec();
    patch_params.push(query("force", "boolean"));
    json!({
        "get": op("get", &[]),
        "put": op("put", &write_params),
        "patch": op("patch", &patch_params),
        "delete": op("delete", &[query("dryRun", "string")]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_schema() {
        for kind in kinds::all() {
            let mut generator = SchemaSettings::openapi3().into_generator();
            assert!(
                register(kind, &mut generator).is_some(),
                "{} has no schema",
                kind.kind
            );
        }
    }

    #[test]
    fn every_group_version_document_is_indexed_and_marks_field_validation() {
        let index = index();
        let paths = index["paths"].as_object().unwrap();
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        for path in paths.keys() {
            assert!(document(path).is_some(), "{path} has a document");
        }
        let parse =
            |path: &str| -> Value { serde_json::from_slice(&document(path).unwrap()).unwrap() };
        let apps = parse("apis/apps/v1");
        let schemas = apps["components"]["schemas"].as_object().unwrap();
        let deploy = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            deploy["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(
            schemas.contains_key("io.k8s.api.core.v1.PodSpec"),
            "referred schemas come along"
        );
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let core = parse("api/v1");
        assert!(core["paths"]
            .as_object()
            .unwrap()
            .contains_key("/api/v1/namespaces/{name}"));
        assert!(document("apis/apps/v9").is_none());
    }
}
