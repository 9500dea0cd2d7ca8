//! The REST endpoints under `/api` and `/apis`: reads the request (path, query, body), calls the
//! registry or the watch, and answers JSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use skiff_api::kinds::{Kind, Storage};
use skiff_api::object::Lookup;
use skiff_api::object::{check_selectable, Filter};
use skiff_api::patch::PatchType;
use skiff_api::strategy::Endpoint;
use skiff_api::{FieldSelector, LabelSelector};
use skiff_store::Revision;

use crate::format::{self, json_response, Format};
use crate::paths::{self, ApiPath, ResourcePath};
use crate::registry::{DeleteOptions, Ownership, Registry, Run, Target, Updated};
use crate::server::Api;
use crate::status::ApiError;
use crate::subresources::{self, ScaleChange};
use crate::tls::Identity;
use crate::watch::{self, WatchRequest};
use crate::{discovery, protobuf};

/// Kubernetes' limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The longest a watch without `timeoutSeconds` stays open (clients re-watch).
const MAX_WATCH: Duration = Duration::from_secs(30 * 60);

/// `/api/...` and `/apis/...`.
pub async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    match route(&api, req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn route(api: &Arc<Api>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", rest @ ..] => ("", rest),
        ["apis", group] => {
            let groups = discovery::api_groups();
            let found = groups["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == *group))
                .ok_or_else(not_found_path)?;
            let mut doc = found.clone();
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            return Ok(json_response(StatusCode::OK, &doc));
        }
        ["apis", group, rest @ ..] => (*group, rest),
        _ => return Err(not_found_path()),
    };
    match paths::parse(group, rest).map_err(|_| not_found_path())? {
        ApiPath::GroupVersion { group, version } => {
            let list = discovery::resource_list(&group, &version).ok_or_else(not_found_path)?;
            Ok(json_response(StatusCode::OK, &list))
        }
        ApiPath::Resource(resource) => serve_resource(api, resource, req).await,
    }
}

/// The query of a request, first value of each parameter.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            map.entry(k).or_insert(v);
        }
        Ok(Query(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name}: {v:?} is not a valid number"))
                })
            })
            .transpose()
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "dryRun: unsupported value {other:?}: supported values: \"All\""
            ))),
        }
    }

    fn filter(&self, kind: &Kind) -> Result<Filter, ApiError> {
        let labels = self
            .get("labelSelector")
            .map(LabelSelector::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = self
            .get("fieldSelector")
            .map(FieldSelector::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
        if let Some(fields) = &fields {
            check_selectable(fields, kind).map_err(ApiError::bad_request)?;
        }
        Ok(Filter { labels, fields })
    }

    fn revision(&self) -> Result<Option<Revision>, ApiError> {
        match self.get("resourceVersion") {
            None => Ok(None),
            Some(rv) => rv
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}"))),
        }
    }
}

/// What to do with fields a kind does not have (`fieldValidation`): they are dropped in any
/// case, and refused under Strict (kubectl's default) or reported as warnings under Warn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    fn of(query: &Query) -> Result<FieldValidation, ApiError> {
        match query.get("fieldValidation") {
            Some("Strict") => Ok(FieldValidation::Strict),
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }

    /// Drops the unknown fields of `body` (an object of `kind`, or a patch of one) and answers
    /// the warnings to send; under Strict, unknown fields are an error.
    fn check(self, kind: &Kind, body: &mut Value) -> Result<Vec<String>, ApiError> {
        let Some(ty) = skiff_api::schema::root(kind) else {
            return Ok(Vec::new());
        };
        let unknown = skiff_api::schema::prune_unknown(ty, body);
        let described: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match self {
            _ if unknown.is_empty() => Ok(Vec::new()),
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{kind_name} in version {version:?} cannot be handled as a {kind_name}: strict decoding error: {}",
                described.join(", "),
                kind_name = kind.kind,
                version = kind.version,
            ))),
            FieldValidation::Warn => Ok(described),
            FieldValidation::Ignore => Ok(Vec::new()),
        }
    }
}

/// Adds `Warning` headers, as kubectl prints them.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - {:?}", warning);
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

/// Reads a JSON, YAML or (for the kinds kubectl sends so) protobuf body holding a `kind`;
/// other media types are refused.
async fn read_body(headers: &HeaderMap, body: Body, kind: &str) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    })?;
    let media = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = media.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|e| ApiError::bad_request(format!("the YAML body is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => protobuf::decode(kind, &bytes),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
            ),
        )),
    }
}

async fn serve_resource(
    api: &Arc<Api>,
    path: ResourcePath,
    req: Request,
) -> Result<Response, ApiError> {
    let kind = path.kind;
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query())?;
    let registry = &api.registry;
    if kind.storage == Storage::Virtual {
        return match (&parts.method, &path.name) {
            (&Method::POST, None) => {
                let review = read_body(&parts.headers, body, kind.kind).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &access_review(kind, review),
                ))
            }
            _ => Err(ApiError::method_not_allowed(parts.method.as_str())),
        };
    }
    let namespace = path.namespace.as_deref();
    let format = Format::of(&parts.headers, query.get("includeObject"));
    let endpoint = match path.subresource.as_deref() {
        None => Endpoint::Main,
        Some("status") if kind.has_status() => Endpoint::Status,
        Some(sub) if kind.subresources.contains(&sub) => {
            let name = path.name.as_deref().ok_or_else(not_found_path)?;
            let target = Target {
                kind,
                namespace,
                name,
            };
            return serve_subresource(api, &target, sub, parts, body, &query).await;
        }
        Some(_) => return Err(not_found_path()),
    };
    let Some(name) = path.name.as_deref() else {
        return match parts.method {
            Method::GET if query.flag("watch") => watch(api, kind, namespace, &query, format).await,
            Method::GET => list(api, kind, namespace, &query, format).await,
            Method::POST => {
                let mut obj = read_body(&parts.headers, body, kind.kind).await?;
                let mut warnings = FieldValidation::of(&query)?.check(kind, &mut obj)?;
                if crate::csr::is_csr(kind) {
                    crate::csr::admit(&mut obj, parts.extensions.get::<Identity>())?;
                }
                let manager = field_manager(&query, &parts.headers)?;
                let created = registry
                    .create(
                        kind,
                        namespace,
                        obj,
                        query.dry_run()?,
                        Ownership::by(&manager),
                    )
                    .await?;
                api.after_create(kind, &created).await;
                warnings.extend(not_enforced(kind));
                Ok(with_warnings(
                    json_response(StatusCode::CREATED, &created),
                    &warnings,
                ))
            }
            Method::DELETE => delete_collection(registry, kind, namespace, &query).await,
            ref m => Err(ApiError::method_not_allowed(m.as_str())),
        };
    };
    let target = Target {
        kind,
        namespace,
        name,
    };
    let mut warnings = Vec::new();
    let answer = match parts.method {
        Method::GET => {
            let obj = registry.get(&target).await?;
            return Ok(format::object(kind, format, StatusCode::OK, &obj));
        }
        Method::PUT => {
            let mut body = read_body(&parts.headers, body, kind.kind).await?;
            warnings = FieldValidation::of(&query)?.check(kind, &mut body)?;
            let manager = field_manager(&query, &parts.headers)?;
            registry
                .update(
                    &target,
                    body,
                    endpoint,
                    Run::Json.or_dry(query.dry_run()?),
                    Ownership::by(&manager),
                )
                .await?
        }
        Method::PATCH => match read_patch(&parts.headers, body).await? {
            Patch::Apply(mut config) => {
                let Some(manager) = query.get("fieldManager") else {
                    return Err(apply_needs_manager());
                };
                warnings = FieldValidation::of(&query)?.check(kind, &mut config)?;
                let subresource = (endpoint == Endpoint::Status).then_some("status");
                registry
                    .apply(
                        &target,
                        &config,
                        (manager, subresource),
                        query.flag("force"),
                        Run::Json.or_dry(query.dry_run()?),
                    )
                    .await?
            }
            Patch::Typed(patch_type, mut patch) => {
                if query.get("force").is_some() {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
                    ));
                }
                if patch_type != PatchType::Json {
                    warnings = FieldValidation::of(&query)?.check(kind, &mut patch)?;
                }
                let manager = field_manager(&query, &parts.headers)?;
                registry
                    .patch(
                        &target,
                        patch_type,
                        &patch,
                        endpoint,
                        Run::Json.or_dry(query.dry_run()?),
                        Ownership::by(&manager),
                    )
                    .await?
            }
        },
        Method::DELETE if endpoint == Endpoint::Main => {
            let options = delete_options(&parts.headers, body, &query).await?;
            let obj = registry.delete(&target, &options).await?;
            api.after_delete(kind, &obj);
            Updated::shown(obj)
        }
        ref m => return Err(ApiError::method_not_allowed(m.as_str())),
    };
    // The JSON the write made, when it made it; the object serialized otherwise.
    let response = match answer.json {
        Some(json) => format::json_bytes_response(StatusCode::OK, json),
        None => json_response(StatusCode::OK, &answer.object),
    };
    Ok(with_warnings(response, &warnings))
}

/// `scale`, `binding`, `eviction`, `log`.
async fn serve_subresource(
    api: &Arc<Api>,
    target: &Target<'_>,
    sub: &str,
    parts: axum::http::request::Parts,
    body: Body,
    query: &Query,
) -> Result<Response, ApiError> {
    let registry = &api.registry;
    let created = || json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    match (sub, &parts.method) {
        ("scale", &Method::GET) => {
            let obj = registry.get(target).await?;
            Ok(json_response(
                StatusCode::OK,
                &subresources::scale_of(&obj)?,
            ))
        }
        ("scale", &Method::PUT | &Method::PATCH) => {
            let manager = field_manager(query, &parts.headers)?;
            let change = if parts.method == Method::PUT {
                ScaleChange::Replace(read_body(&parts.headers, body, "Scale").await?)
            } else {
                match read_patch(&parts.headers, body).await? {
                    Patch::Typed(patch_type, patch) => ScaleChange::Patch(patch_type, patch),
                    Patch::Apply(config) => {
                        let Some(manager) = query.get("fieldManager") else {
                            return Err(apply_needs_manager());
                        };
                        let scale = subresources::apply_scale(
                            registry,
                            target,
                            &config,
                            manager,
                            query.flag("force"),
                            query.dry_run()?,
                        )
                        .await?;
                        return Ok(json_response(StatusCode::OK, &scale));
                    }
                }
            };
            let scale =
                subresources::update_scale(registry, target, change, &manager, query.dry_run()?)
                    .await?;
            Ok(json_response(StatusCode::OK, &scale))
        }
        ("binding", &Method::POST) => {
            let binding = read_body(&parts.headers, body, "Binding").await?;
            subresources::bind(registry, target, &binding).await?;
            Ok(json_response(StatusCode::CREATED, &created()))
        }
        ("log", &Method::GET) => crate::logs::proxy(api, target, parts.uri.query()).await,
        ("approval", &Method::PUT) => {
            let body = read_body(&parts.headers, body, target.kind.kind).await?;
            let conditions = body
                .lookup("/status/conditions")
                .cloned()
                .unwrap_or_else(|| json!([]));
            registry
                .modify(target, |obj| {
                    let changed = obj["status"]["conditions"] != conditions;
                    obj["status"]["conditions"] = conditions.clone();
                    Ok(changed)
                })
                .await?;
            api.settle_csr(target.kind, target.name);
            Ok(json_response(StatusCode::OK, &registry.get(target).await?))
        }
        ("eviction", &Method::POST) => {
            let eviction = read_body(&parts.headers, body, "Eviction").await?;
            let status = subresources::evict(registry, target, &eviction).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (_, m) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// Kinds stored but not yet acted on: their creation says so.
fn not_enforced(kind: &Kind) -> Option<String> {
    let what = match (kind.group, kind.kind) {
        ("networking.k8s.io", "NetworkPolicy") => "NetworkPolicies are stored but not enforced",
        ("networking.k8s.io", "Ingress") => {
            "Ingresses are stored but no ingress controller serves them"
        }
        _ => return None,
    };
    Some(format!("skiff: {what} yet"))
}

/// A PATCH body: a patch of one of the three types, or an applied configuration.
enum Patch {
    Typed(PatchType, Value),
    Apply(Value),
}

/// Reads a PATCH body and its type.
async fn read_patch(headers: &HeaderMap, body: Body) -> Result<Patch, ApiError> {
    let media = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = media.split(';').next().unwrap_or_default().trim();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if media == "application/apply-patch+yaml" {
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            ApiError::bad_request(format!("the applied configuration is not UTF-8: {e}"))
        })?;
        let config = serde_saphyr::from_str(text).map_err(|e| {
            ApiError::bad_request(format!("the applied configuration is not valid YAML: {e}"))
        })?;
        return Ok(Patch::Apply(config));
    }
    let Some(kind) = PatchType::from_media(media) else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the patch type {media:?} is not supported; supported: application/apply-patch+yaml, application/strategic-merge-patch+json, application/merge-patch+json, application/json-patch+json"
            ),
        ));
    };
    let patch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    Ok(Patch::Typed(kind, patch))
}

/// Who writes, for the managed fields: `fieldManager` when given (at most 128 characters),
/// else the client's name from its User-Agent (`kubectl/v1.33.0 (...)`: `kubectl`).
/// Kubernetes' answer to an apply patch without `fieldManager`.
fn apply_needs_manager() -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
    )
}

fn field_manager(query: &Query, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(manager) = query.get("fieldManager") {
        if manager.chars().count() > 128 {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes",
            ));
        }
        return Ok(manager.to_string());
    }
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = agent.split('/').next().unwrap_or_default().trim();
    Ok(if name.is_empty() { "unknown" } else { name }.to_string())
}

/// A list's metadata: its revision, and where the next page starts.
fn list_metadata(revision: Revision, continue_after: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(after) = continue_after {
        metadata["continue"] = json!(encode_continue(revision, after));
    }
    metadata
}

/// A continue token: the revision of the first page and the last key returned.
fn encode_continue(revision: Revision, after: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": after});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match (v["rv"].as_i64(), v["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_string())),
        _ => Err(bad()),
    }
}

async fn list(
    api: &Api,
    kind: &'static Kind,
    namespace: Option<&str>,
    query: &Query,
    format: Format,
) -> Result<Response, ApiError> {
    let filter = query.filter(kind)?;
    let limit = query.number::<usize>("limit")?.filter(|l| *l > 0);
    let (revision, start_after) = match query.get("continue") {
        Some(token) => {
            let (rev, after) = decode_continue(token)?;
            (Some(rev), Some(after))
        }
        None if query.get("resourceVersionMatch") == Some("Exact") => (query.revision()?, None),
        // Anything else is served at the latest revision, which is never older than asked.
        None => match list_from_cache(api, kind, namespace, &filter, limit, format).await? {
            Some(response) => return Ok(response),
            None => (None, None),
        },
    };
    let page = api
        .registry
        .list(kind, namespace, &filter, revision, start_after, limit)
        .await
        .map_err(|e| {
            if e.code == 410 && query.get("continue").is_some() {
                ApiError::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
    let items: Vec<Vec<u8>> = page
        .items
        .iter()
        .map(|o| serde_json::to_vec(o).expect("a JSON value serializes"))
        .collect();
    let last = page.continue_after.as_deref();
    Ok(format::list(
        kind,
        format,
        list_metadata(page.revision, last),
        &items,
    ))
}

/// A consistent list from the watch cache, once it has caught up with every write acknowledged
/// before the request; `None` when it does not in time. A page cut short by `limit` continues
/// from the store at the same revision.
async fn list_from_cache(
    api: &Api,
    kind: &'static Kind,
    namespace: Option<&str>,
    filter: &Filter,
    limit: Option<usize>,
    format: Format,
) -> Result<Option<Response>, ApiError> {
    let cache = api.cache(kind).await?;
    let current = api
        .registry
        .store
        .current_revision()
        .await
        .map_err(ApiError::from_store)?;
    let Some(snapshot) = cache
        .snapshot(&kind.store_prefix_in(namespace), filter, current)
        .await
    else {
        return Ok(None);
    };
    let mut items = Vec::new();
    let mut last = None;
    let mut more = false;
    for (key, obj) in &snapshot.items {
        if limit.is_some_and(|l| items.len() >= l) {
            // Another match beyond the page: the list continues after the last key sent.
            more = true;
            break;
        }
        items.push(obj.json.clone());
        last = Some(key.as_str());
    }
    let last = if more { last } else { None };
    Ok(Some(format::list(
        kind,
        format,
        list_metadata(snapshot.revision, last),
        &items,
    )))
}

async fn watch(
    api: &Api,
    kind: &'static Kind,
    namespace: Option<&str>,
    query: &Query,
    format: Format,
) -> Result<Response, ApiError> {
    let after = query.revision()?.filter(|rv| *rv > 0);
    let timeout = query
        .number::<u64>("timeoutSeconds")?
        .map(Duration::from_secs)
        .unwrap_or(MAX_WATCH);
    let cache = api.cache(kind).await?;
    watch::serve(
        cache,
        WatchRequest {
            namespace: namespace.map(str::to_string),
            filter: query.filter(kind)?,
            after,
            bookmarks: query.flag("allowWatchBookmarks"),
            timeout,
            format,
        },
    )
}

/// A DELETE's options: its body, with the query's parameters where the body is silent.
async fn delete_options(
    headers: &HeaderMap,
    body: Body,
    query: &Query,
) -> Result<DeleteOptions, ApiError> {
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut from_body: Value = if body.is_empty() {
        json!({})
    } else {
        read_body(headers, Body::from(body), "DeleteOptions").await?
    };
    if let (Some(policy), Some(map)) = (query.get("propagationPolicy"), from_body.as_object_mut()) {
        map.entry("propagationPolicy").or_insert(policy.into());
    }
    let mut options = DeleteOptions::from_json(&from_body)?;
    if options.grace_period_seconds.is_none() {
        options.grace_period_seconds = query.number::<i64>("gracePeriodSeconds")?;
    }
    options.dry_run |= query.dry_run()?;
    Ok(options)
}

async fn delete_collection(
    registry: &Registry,
    kind: &'static Kind,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response, ApiError> {
    let filter = query.filter(kind)?;
    let page = registry
        .list(kind, namespace, &filter, None, None, None)
        .await?;
    let options = DeleteOptions {
        dry_run: query.dry_run()?,
        grace_period_seconds: query.number("gracePeriodSeconds")?,
        ..DeleteOptions::default()
    };
    let mut items = Vec::new();
    for obj in page.items {
        let ns = skiff_api::object::meta_str(&obj, "namespace");
        let target = Target {
            kind,
            namespace: ns,
            name: skiff_api::object::name(&obj),
        };
        match registry.delete(&target, &options).await {
            Ok(deleted) => items.push(deleted),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": kind.list_kind(),
        "apiVersion": kind.api_version(),
        "metadata": {},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// Until RBAC arrives every authenticated user may do everything, and the reviews say so.
fn access_review(kind: &Kind, mut review: Value) -> Value {
    const REASON: &str = "skiff has no RBAC yet: every authenticated user may do everything";
    review["status"] = match kind.kind {
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
            "evaluationError": "",
        }),
        _ => json!({"allowed": true, "reason": REASON}),
    };
    review["apiVersion"] = json!(kind.api_version());
    review["kind"] = json!(kind.kind);
    review
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_bad_ones_are_refused() {
        let token = encode_continue(42, "/registry/core/configmaps/default/a");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, "/registry/core/configmaps/default/a".to_string())
        );
        for bad in ["", "!!", "e30"] {
            let err = decode_continue(bad).unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
        }
    }
}
