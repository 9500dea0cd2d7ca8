//! How objects are written back: plain JSON, lists with their items as stored, or the
//! `meta.k8s.io/v1` Table that `kubectl get` asks for.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use skiff_api::kinds::Kind;
use skiff_api::object::Lookup;
use skiff_api::table;

/// The media type of Table answers.
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What a Table row carries of its object (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// How a read is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Table(Include),
}

impl Format {
    /// A Table when the `Accept` header asks for one (as kubectl get does), JSON otherwise.
    pub fn of(headers: &HeaderMap, include_object: Option<&str>) -> Format {
        let accept = headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let wants_table = accept.split(',').any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        });
        if !wants_table {
            return Format::Json;
        }
        Format::Table(match include_object {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        })
    }
}

/// One Table row of `obj`.
fn row(kind: &Kind, obj: &Value, include: Include, now: i64) -> Value {
    let mut row = json!({"cells": table::cells(kind, obj, now)});
    match include {
        Include::None => {}
        Include::Object => row["object"] = obj.clone(),
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(Value::Object(Map::new())),
            })
        }
    }
    row
}

/// A Table of `objects` (each the JSON of one object).
pub fn table(
    kind: &Kind,
    metadata: Value,
    objects: &[impl AsRef<[u8]>],
    include: Include,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let columns: Vec<Value> = table::columns(kind)
        .iter()
        .map(|c| {
            let mut column = json!({
                "name": c.name,
                "type": c.kind,
                "format": "",
                "description": c.description,
                "priority": if c.wide { 1 } else { 0 },
            });
            if c.name == "Name" {
                column["format"] = json!("name");
            }
            column
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(o.as_ref()).ok())
        .map(|o| row(kind, &o, include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

pub fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    json_bytes_response(code, body.into())
}

/// A response of JSON already written.
pub fn json_bytes_response(code: StatusCode, json: Bytes) -> Response {
    (code, [("content-type", "application/json")], json).into_response()
}

/// One object, as JSON or as a one-row Table.
pub fn object(kind: &Kind, format: Format, code: StatusCode, obj: &Value) -> Response {
    match format {
        Format::Json => json_response(code, obj),
        Format::Table(include) => {
            let rv = obj.lookup("/metadata/resourceVersion").cloned();
            let metadata = rv.map_or_else(|| json!({}), |rv| json!({"resourceVersion": rv}));
            let body = serde_json::to_vec(&obj).expect("a JSON value serializes");
            let doc = table(kind, metadata, &[body], include);
            table_response(code, &doc)
        }
    }
}

fn table_response(code: StatusCode, doc: &Value) -> Response {
    let body = serde_json::to_vec(doc).expect("a JSON value serializes");
    (code, [("content-type", TABLE)], body).into_response()
}

/// A list of `items` (each the JSON of one object, written as it is: cached objects are not
/// serialized again), or their Table.
pub fn list(kind: &Kind, format: Format, metadata: Value, items: &[impl AsRef<[u8]>]) -> Response {
    if let Format::Table(include) = format {
        return table_response(StatusCode::OK, &table(kind, metadata, items, include));
    }
    let head = json!({
        "kind": kind.list_kind(),
        "apiVersion": kind.api_version(),
        "metadata": metadata,
    })
    .to_string();
    let size: usize = items.iter().map(|i| i.as_ref().len() + 1).sum();
    let mut body = Vec::with_capacity(head.len() + size + 16);
    // `head` is an object: reopen it to append the items.
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_ref());
    }
    body.extend_from_slice(b"]}");
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_asked_for_by_accept() {
        let headers = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept", accept.parse().unwrap());
            h
        };
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Format::of(&headers(kubectl), None),
            Format::Table(Include::Metadata)
        );
        assert_eq!(
            Format::of(&headers(kubectl), Some("Object")),
            Format::Table(Include::Object)
        );
        assert_eq!(Format::of(&headers("application/json"), None), Format::Json);
        let cms = skiff_api::kinds::find("", "v1", "configmaps").unwrap();
        let doc = table(
            cms,
            json!({"resourceVersion": "7"}),
            &[br#"{"metadata":{"name":"a","namespace":"default"},"data":{"x":"1"}}"#],
            Include::Metadata,
        );
        assert_eq!(doc["columnDefinitions"][0]["format"], "name");
        assert_eq!(doc["rows"][0]["cells"][0], "a");
        assert_eq!(doc["rows"][0]["cells"][1], 1);
        assert_eq!(doc["rows"][0]["object"]["metadata"]["namespace"], "default");
    }
}
