//! OpenAPI documents: the `/openapi/v3` index and one document per group-version, with each
//! kind's operations marked by group-version-kind and the query parameters they accept (kubectl
//! reads them to know that server-side field validation is there).
//!
//! FIXME(issue 3): the schemas are bare objects; `kubectl explain` needs the real ones.

use serde_json::{json, Map, Value};
use skiff_api::kinds::{self, Kind};

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

/// The document at `path` (below `/openapi/v3/`), or `None` when no group-version is there.
pub fn document(path: &str) -> Option<Value> {
    let (group, version) = kinds::group_versions()
        .into_iter()
        .find(|(g, v)| doc_path(g, v) == path)?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in kinds::all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let gvk = json!({"group": kind.group, "version": kind.version, "kind": kind.kind});
        paths.insert(object_path(kind), operations(kind, &gvk));
        schemas.insert(
            schema_name(kind),
            json!({
                "type": "object",
                "x-kubernetes-group-version-kind": [gvk],
            }),
        );
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

/// The name Kubernetes gives the kind's schema, e.g. `io.k8s.api.apps.v1.Deployment`.
fn schema_name(kind: &Kind) -> String {
    let group = match kind.group {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", kind.version, kind.kind)
}

fn operations(kind: &Kind, gvk: &Value) -> Value {
    let query = |name: &str, ty: &str| json!({"name": name, "in": "query", "schema": {"type": ty}});
    let write_params = [
        query("dryRun", "string"),
        query("fieldManager", "string"),
        query("fieldValidation", "string"),
    ];
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(kind))});
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
    fn every_group_version_document_is_indexed_and_marks_field_validation() {
        let index = index();
        let paths = index["paths"].as_object().unwrap();
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        for path in paths.keys() {
            assert!(document(path).is_some(), "{path} has a document");
        }
        let apps = document("apis/apps/v1").unwrap();
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
        let core = document("api/v1").unwrap();
        assert!(core["paths"]
            .as_object()
            .unwrap()
            .contains_key("/api/v1/namespaces/{name}"));
        assert!(document("apis/apps/v9").is_none());
    }
}
