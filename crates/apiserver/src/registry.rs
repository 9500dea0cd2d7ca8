//! Object operations on the store, generic over kinds: create, get, list, update, delete. Objects
//! are stored as JSON without `resourceVersion`, which is the key's store revision on the way out.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use skiff_api::apply;
use skiff_api::conversion;
use skiff_api::kinds::{self, Kind};
use skiff_api::object::Lookup;
use skiff_api::object::{self, Filter, Selectable};
use skiff_api::patch::PatchType;
use skiff_api::service::ServiceRanges;
use skiff_api::strategy::{self, CreateContext, Endpoint, Rejection};
use skiff_store::{KeyValue, Op, RangeRequest, Revision, Store, StoreError, Txn};

use crate::cache::{KindCache, Unversioned, WatchCache};
use crate::services;
use crate::status::{ApiError, Cause, Details};
use crate::written::Written;

/// How many times an unconditional write is retried when a concurrent writer got in first.
const UNCONDITIONAL_RETRIES: usize = 16;

/// The store as the API sees it.
#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
    /// Where Services' cluster IPs and node ports come from.
    pub ranges: ServiceRanges,
    /// Every kind's watch cache (the handlers and controllers read from it); it is told of
    /// each write before it is made, so that the write's store event is not parsed.
    pub cache: Arc<WatchCache>,
    /// The objects written last, parsed, for the next write of each.
    pub(crate) written: Arc<Written>,
}

/// Where an object lives: its kind, namespace (for namespaced kinds) and name.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub kind: &'static Kind,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Target<'_> {
    fn key(&self) -> String {
        self.kind.store_key(self.namespace, self.name)
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(self.kind.group, self.kind.plural, self.name)
    }

    fn conflict(&self) -> ApiError {
        ApiError::conflict(self.kind.group, self.kind.plural, self.name)
    }
}

/// Options of a DELETE, from its body and query.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
    /// What becomes of the object's dependents.
    pub propagation: Propagation,
}

/// A delete's propagation policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents afterwards.
    #[default]
    Background,
    /// The object stays (finalizer `foregroundDeletion`) until its dependents are gone.
    Foreground,
    /// The object stays (finalizer `orphan`) until its dependents no longer refer to it.
    Orphan,
}

impl Propagation {
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        }
    }
}

/// The kinds whose dependents the garbage collector follows: only for these do Foreground and
/// Orphan hold the object (a finalizer on another kind would never be taken off).
impl DeleteOptions {
    /// The options of a `DeleteOptions` body (as a DELETE or an Eviction carries them).
    pub fn from_json(body: &Value) -> Result<DeleteOptions, ApiError> {
        if let Some(p) = body["propagationPolicy"].as_str() {
            if !matches!(p, "Background" | "Foreground" | "Orphan") {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {p:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        }
        let text = |v: &Value| v.as_str().map(str::to_string);
        let propagation = match body["propagationPolicy"].as_str() {
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            _ if body["orphanDependents"] == true => Propagation::Orphan,
            _ => Propagation::Background,
        };
        Ok(DeleteOptions {
            propagation,
            grace_period_seconds: body["gracePeriodSeconds"].as_i64(),
            precondition_uid: text(&body["preconditions"]["uid"]),
            precondition_resource_version: text(&body["preconditions"]["resourceVersion"]),
            dry_run: body["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "All")),
        })
    }
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    pub revision: Revision,
    /// The last key returned, when more keys follow.
    pub continue_after: Option<String>,
}

/// A stored object as `kind`'s endpoint serves it, with its resourceVersion set.
/// The manager of the server's own writes (the objects it keeps at every start).
pub const API_SERVER: &str = "kube-apiserver";

/// Whose write it is, for `managedFields`.
#[derive(Clone, Copy, Debug)]
pub enum Ownership<'a> {
    /// A manager's: it owns what it changes. Through `subresource` (`scale`) when one is
    /// named; a write through the status endpoint names `status` itself.
    Manager {
        name: &'a str,
        subresource: Option<&'static str>,
    },
    /// The object carries its `managedFields` as they are to be stored (server-side apply
    /// computed them).
    AsGiven,
}

impl<'a> Ownership<'a> {
    /// A manager's write through the endpoint itself.
    pub fn by(name: &'a str) -> Self {
        Ownership::Manager {
            name,
            subresource: None,
        }
    }
}

/// How an update runs, and what its caller takes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Checked and answered, not written (`dryRun=All`).
    Dry,
    /// Written; answered with the object as written.
    Object,
    /// Written; answered with the JSON the write made (what a REST handler sends). When the
    /// kind's watch cache is told of the write, the object itself goes to it as what the
    /// controllers read, rather than a copy of it: `Updated::object` is then null (and
    /// `Updated::json` always there).
    Json,
}

impl Run {
    /// This run, or a dry one when `dry_run`.
    pub fn or_dry(self, dry_run: bool) -> Run {
        if dry_run {
            Run::Dry
        } else {
            self
        }
    }
}

pub fn decode(kind: &Kind, kv: &KeyValue) -> Result<Value, ApiError> {
    let stored: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    let mut obj = conversion::from_storage(kind, stored);
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), revision.to_string().into());
    }
}

fn without_resource_version(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("resourceVersion");
    }
    obj
}

/// An object as given to the store, its JSON as served without its resourceVersion (when
/// made), and the watch caches told of that write (see [`KindCache::expect`]), which are to
/// forget it if the write fails.
struct Encoded {
    bytes: Bytes,
    served: Option<Unversioned>,
    told: Vec<Arc<KindCache>>,
}

impl Encoded {
    fn failed(&self) {
        for cache in &self.told {
            cache.forget(&self.bytes);
        }
    }
}

/// An object as an update left it, with its JSON as served when the write made it: what
/// answers the update, without serializing the object again.
pub struct Updated {
    pub object: Value,
    pub json: Option<Bytes>,
}

impl Updated {
    /// An answer to be serialized from its object (nothing written, a dry run).
    pub fn shown(object: Value) -> Updated {
        Updated { object, json: None }
    }
}

/// Whether the JSON of an object says it is being deleted; read without building the object
/// (every create reads its namespace so).
fn terminating(json: &[u8]) -> Result<bool, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Object {
        #[serde(default)]
        metadata: Metadata,
    }
    #[derive(serde::Deserialize, Default)]
    struct Metadata {
        #[serde(default, rename = "deletionTimestamp")]
        deletion_timestamp: Option<serde::de::IgnoredAny>,
    }
    let obj: Object = serde_json::from_slice(json)?;
    Ok(obj.metadata.deletion_timestamp.is_some())
}

/// Five characters as Kubernetes' generateName suffixes have them (no vowels, no look-alikes).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub fn rejection(kind: &'static Kind, name: &str, r: Rejection) -> ApiError {
    match r {
        Rejection::BadRequest(message) => ApiError::bad_request(message),
        Rejection::Invalid(errors) => ApiError::invalid(
            kind.kind,
            name,
            errors
                .into_iter()
                .map(|e| Cause {
                    reason: e.reason,
                    message: e.message,
                    field: e.field,
                })
                .collect(),
        ),
    }
}

impl Registry {
    pub async fn get(&self, target: &Target<'_>) -> Result<Value, ApiError> {
        let (obj, _) = self.get_raw(target).await?;
        Ok(obj)
    }

    /// The object with its resourceVersion, and its mod revision.
    async fn get_raw(&self, target: &Target<'_>) -> Result<(Value, Revision), ApiError> {
        let kv = self.read(target).await?;
        Ok((decode(target.kind, &kv)?, kv.mod_revision))
    }

    /// [`Registry::get_raw`] for a write about to change the object: the object as this server
    /// wrote it when the store still holds that write, rather than its JSON parsed again.
    async fn get_for_write(&self, target: &Target<'_>) -> Result<(Value, Revision), ApiError> {
        let kv = self.read(target).await?;
        let revision = kv.mod_revision;
        let obj = match self.written.take(target.kind, &kv.key, revision) {
            Some(obj) => obj,
            None => decode(target.kind, &kv)?,
        };
        Ok((obj, revision))
    }

    async fn read(&self, target: &Target<'_>) -> Result<KeyValue, ApiError> {
        let resp = self
            .store
            .get(&target.key(), None)
            .await
            .map_err(ApiError::from_store)?;
        resp.kv.ok_or_else(|| target.not_found())
    }

    /// Keeps `obj` just written (its resourceVersion set) for the next write of it, when its
    /// kind's objects are written again (see [`Written::keeps`]) and it is not being deleted.
    fn remember(&self, target: &Target<'_>, obj: &Arc<Value>) {
        if !Written::keeps(target.kind) || obj.lookup("/metadata/deletionTimestamp").is_some() {
            return;
        }
        let revision = object::meta_str(obj, "resourceVersion").and_then(|rv| rv.parse().ok());
        if let Some(revision) = revision {
            self.written
                .keep(target.kind, &target.key(), revision, obj.clone());
        }
    }

    /// Refuses new objects in a namespace that does not exist or is being deleted. Like
    /// Kubernetes' NamespaceLifecycle admission, it reads the namespace from the watch cache,
    /// and from the store only when the cache does not have it (yet): every pod and event
    /// created asked the store before.
    async fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let ns_kind = kinds::find("", "v1", "namespaces").expect("namespaces are served");
        let target = Target {
            kind: ns_kind,
            namespace: None,
            name: namespace,
        };
        let cached = match self.cache.of(ns_kind).await {
            Ok(cache) => cache.object(&target.key(), 0).await.flatten(),
            Err(_) => None,
        };
        let terminating = match cached {
            Some(cached) => terminating(&cached.json)
                .map_err(|e| ApiError::internal(format!("cached namespace {namespace}: {e}")))?,
            None => {
                let ns = self.get(&target).await?;
                ns.lookup("/metadata/deletionTimestamp").is_some()
            }
        };
        if terminating {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        kind: &'static Kind,
        namespace: Option<&str>,
        body: Value,
        dry_run: bool,
        ownership: Ownership<'_>,
    ) -> Result<Arc<Value>, ApiError> {
        if let (true, Some(ns)) = (kind.namespaced, namespace) {
            self.check_namespace(ns).await?;
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let now = object::timestamp(jiff::Timestamp::now());
        let suffix = name_suffix();
        let ctx = CreateContext {
            namespace,
            uid: &uid,
            now: &now,
            name_suffix: &suffix,
        };
        let given_name = object::name(&body).to_string();
        let mut body = body;
        if kind.plural == "pods" && kind.group.is_empty() {
            crate::admission::pod_priority(self, &mut body).await?;
        }
        let mut prepared = strategy::prepare_create(kind, body, &ctx)
            .map_err(|r| rejection(kind, &given_name, r))?;
        if let Ownership::Manager { name, .. } = ownership {
            let api_version = kind.api_version();
            apply::update(
                None,
                &mut prepared,
                &writer(kind, &api_version, name, None, &now),
            );
        }
        let name = object::name(&prepared).to_string();
        let target = Target {
            kind,
            namespace,
            name: &name,
        };
        let key = target.key();
        let asked = services::claims_asked(&prepared);
        for _ in 0..UNCONDITIONAL_RETRIES {
            // Only a Service's claims send a create round again: nothing else is copied for it.
            let mut obj = if services::is_service(kind) {
                prepared.clone()
            } else {
                std::mem::take(&mut prepared)
            };
            let claims = self.claims(kind, None, &mut obj, &key).await?;
            if dry_run {
                return Ok(Arc::new(obj));
            }
            let encoded = self.encode(kind, &mut obj, false);
            let mut txn = Txn::new().create(key.clone(), encoded.bytes.clone());
            txn.ops.extend(claims);
            let written = self.store.txn(txn).await;
            if written.is_err() {
                encoded.failed();
            }
            match written {
                Ok(resp) => {
                    set_resource_version(&mut obj, resp.revision);
                    // Shared with the memo: a pod's binding comes next.
                    let obj = Arc::new(obj);
                    self.remember(&target, &obj);
                    return Ok(obj);
                }
                Err(StoreError::AlreadyExists { key: taken }) if taken == key => {
                    return Err(ApiError::already_exists(
                        kind.group,
                        kind.plural,
                        target.name,
                    ))
                }
                // Another Service claimed a value chosen here first: choose again.
                Err(StoreError::AlreadyExists { key: taken })
                    if services::is_claim(&taken) && !asked.contains(&taken) =>
                {
                    continue
                }
                Err(StoreError::AlreadyExists { key: taken }) if services::is_claim(&taken) => {
                    return Err(services::taken_error(kind, target.name, &taken))
                }
                Err(e) => return Err(ApiError::from_store(e)),
            }
        }
        Err(ApiError::new(
            409,
            "Conflict",
            "could not claim a free cluster IP or node port; try again",
        ))
    }

    /// What writing `obj` claims and releases besides itself (Services' IPs and node ports).
    async fn claims(
        &self,
        kind: &'static Kind,
        old: Option<&Value>,
        obj: &mut Value,
        key: &str,
    ) -> Result<Vec<Op>, ApiError> {
        if services::is_service(kind) {
            services::prepare(self.store.as_ref(), &self.ranges, kind, old, obj, key).await
        } else {
            Ok(Vec::new())
        }
    }

    /// One page of objects matching `filter`, at `revision` (latest when `None`), after the key
    /// `start_after`, at most `limit` items when given.
    pub async fn list(
        &self,
        kind: &'static Kind,
        namespace: Option<&str>,
        filter: &Filter,
        revision: Option<Revision>,
        start_after: Option<String>,
        limit: Option<usize>,
    ) -> Result<ListPage, ApiError> {
        let prefix = kind.store_prefix_in(namespace);
        let mut items = Vec::new();
        let mut revision = revision;
        let mut start_after = start_after;
        loop {
            let want = limit.map(|l| l - items.len());
            let resp = self
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    revision,
                    limit: want,
                    start_after: start_after.clone(),
                })
                .await
                .map_err(ApiError::from_store)?;
            revision = Some(resp.revision);
            start_after = resp.kvs.last().map(|kv| kv.key.clone());
            for kv in &resp.kvs {
                let obj = decode(kind, kv)?;
                if filter.matches(&Selectable::of(kind, &obj)) {
                    items.push(obj);
                }
            }
            let full = limit.is_some_and(|l| items.len() >= l);
            if !resp.more || resp.kvs.is_empty() {
                return Ok(ListPage {
                    items,
                    revision: resp.revision,
                    continue_after: None,
                });
            }
            if full {
                return Ok(ListPage {
                    items,
                    revision: resp.revision,
                    continue_after: start_after,
                });
            }
        }
    }

    /// Replaces an object (through its main or status endpoint). A body with a resourceVersion
    /// must match the stored one; without, the update is unconditional. An update that changes
    /// nothing writes nothing.
    pub async fn update(
        &self,
        target: &Target<'_>,
        body: Value,
        endpoint: Endpoint,
        run: Run,
        ownership: Ownership<'_>,
    ) -> Result<Updated, ApiError> {
        self.update_from(None, target, body, endpoint, run, ownership)
            .await
    }

    /// [`Registry::update`] starting from `read`, the object and revision its caller has just
    /// read (a patch, an apply), rather than reading it again; later attempts read it anew.
    async fn update_from(
        &self,
        mut read: Option<(Value, Revision)>,
        target: &Target<'_>,
        body: Value,
        endpoint: Endpoint,
        run: Run,
        ownership: Ownership<'_>,
    ) -> Result<Updated, ApiError> {
        let wanted_rv = object::meta_str(&body, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        // A write pinned to a resourceVersion is tried once (a conflict is its caller's), but
        // for a Service's claims: its body need not be kept for another try.
        let once = wanted_rv.is_some() && !services::is_service(target.kind);
        let mut body = body;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let (current, revision) = match read.take() {
                Some(read) => read,
                None => self.get_for_write(target).await?,
            };
            if wanted_rv
                .as_deref()
                .is_some_and(|rv| rv != revision.to_string())
            {
                return Err(target.conflict());
            }
            let old = without_resource_version(current);
            let given = if once {
                std::mem::take(&mut body)
            } else {
                body.clone()
            };
            let managed_given = match ownership {
                Ownership::AsGiven if endpoint == Endpoint::Status => {
                    given.lookup("/metadata/managedFields").cloned()
                }
                _ => None,
            };
            let mut new = strategy::prepare_update(target.kind, &old, given, endpoint)
                .map_err(|r| rejection(target.kind, target.name, r))?;
            match ownership {
                Ownership::Manager { name, subresource } => {
                    let subresource =
                        subresource.or((endpoint == Endpoint::Status).then_some("status"));
                    let now = object::timestamp(jiff::Timestamp::now());
                    let api_version = target.kind.api_version();
                    let writer = writer(target.kind, &api_version, name, subresource, &now);
                    apply::update(Some(&old), &mut new, &writer);
                }
                // The status endpoint keeps the stored metadata, but for what apply owns.
                Ownership::AsGiven if endpoint == Endpoint::Status => {
                    if let Some(managed) = managed_given {
                        new["metadata"]["managedFields"] = managed;
                    }
                }
                Ownership::AsGiven => {}
            }
            let claims = self
                .claims(target.kind, Some(&old), &mut new, &target.key())
                .await?;
            if new == old || run == Run::Dry {
                let mut shown = new;
                set_resource_version(&mut shown, revision);
                return Ok(Updated::shown(shown));
            }
            match self.write(target, new, revision, claims, run).await {
                Err(StoreError::Conflict { .. }) if wanted_rv.is_none() => continue,
                Err(StoreError::AlreadyExists { key }) if services::is_claim(&key) => continue,
                Err(StoreError::Conflict { .. }) => return Err(target.conflict()),
                Err(StoreError::NotFound { .. }) => return Err(target.not_found()),
                other => return other.map_err(ApiError::from_store),
            }
        }
        Err(target.conflict())
    }

    /// Applies a patch to the object as it is now (retrying when another writer got in first,
    /// unless the patch names a resourceVersion) and updates it through `endpoint`.
    pub async fn patch(
        &self,
        target: &Target<'_>,
        patch_type: PatchType,
        patch: &Value,
        endpoint: Endpoint,
        run: Run,
        ownership: Ownership<'_>,
    ) -> Result<Updated, ApiError> {
        let pinned = object::meta_str(patch, "resourceVersion").is_some();
        let ty = skiff_api::schema::root(target.kind);
        for _ in 0..UNCONDITIONAL_RETRIES {
            let (current, revision) = self.get_for_write(target).await?;
            let mut patched = current.clone();
            patch_type
                .apply(&mut patched, patch, ty)
                .map_err(|e| crate::subresources::patch_error(target.name, e))?;
            let read = Some((current, revision));
            match self
                .update_from(read, target, patched, endpoint, run, ownership)
                .await
            {
                Err(e) if e.reason == "Conflict" && !pinned => continue,
                other => return other,
            }
        }
        Err(target.conflict())
    }

    /// Server-side apply of `config` by `manager` (through `subresource`, `status` or `scale`,
    /// when one is named): merged into the object as it is now (created when there is none,
    /// unless applied through a subresource), with a 409 naming the fields other managers own
    /// that it changes, unless `force`.
    pub async fn apply(
        &self,
        target: &Target<'_>,
        config: &Value,
        (manager, subresource): (&str, Option<&'static str>),
        force: bool,
        run: Run,
    ) -> Result<Updated, ApiError> {
        if config.lookup("/metadata/managedFields").is_some() {
            return Err(ApiError::bad_request(
                "metadata.managedFields must be nil in an applied configuration",
            ));
        }
        let now = object::timestamp(jiff::Timestamp::now());
        let api_version = target.kind.api_version();
        let writer = writer(target.kind, &api_version, manager, subresource, &now);
        let endpoint = if subresource == Some("status") {
            Endpoint::Status
        } else {
            Endpoint::Main
        };
        for _ in 0..UNCONDITIONAL_RETRIES {
            let read = match self.get_for_write(target).await {
                Ok(read) => Some(read),
                Err(e) if e.code == 404 && subresource.is_none() => None,
                Err(e) => return Err(e),
            };
            let live = read.as_ref().map(|(live, _)| live);
            let mut merged = apply::apply(live, config, &writer, force)
                .map_err(|c| conflict_error(target, &c))?;
            keep_last_applied(live, config, &mut merged);
            let result = match read {
                None => self
                    .create(
                        target.kind,
                        target.namespace,
                        merged,
                        run == Run::Dry,
                        Ownership::AsGiven,
                    )
                    .await
                    .map(|created| Updated::shown(Arc::unwrap_or_clone(created))),
                // The read's resourceVersion makes the write a compare-and-swap.
                Some(read) => {
                    let ownership = Ownership::AsGiven;
                    self.update_from(Some(read), target, merged, endpoint, run, ownership)
                        .await
                }
            };
            match result {
                Err(e) if e.reason == "Conflict" || e.reason == "AlreadyExists" => continue,
                other => return other,
            }
        }
        Err(target.conflict())
    }

    /// Changes the stored object with `change`, as the server's own actions do (a binding),
    /// bypassing the create/update strategy; retries when another writer got in first.
    /// `change` says whether it changed anything (it compares only what it touches: a pod is
    /// not copied to be compared whole); nothing is written when it did not.
    pub async fn modify(
        &self,
        target: &Target<'_>,
        change: impl Fn(&mut Value) -> Result<bool, ApiError>,
    ) -> Result<(), ApiError> {
        for _ in 0..UNCONDITIONAL_RETRIES {
            let (current, revision) = self.get_for_write(target).await?;
            let mut obj = without_resource_version(current);
            if !change(&mut obj)? {
                return Ok(());
            }
            match self
                .write(target, obj, revision, Vec::new(), Run::Object)
                .await
            {
                Ok(written) => {
                    self.remember(target, &Arc::new(written.object));
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Err(target.not_found()),
                Err(e) => return Err(ApiError::from_store(e)),
            }
        }
        Err(target.conflict())
    }

    /// Writes `obj` over the stored revision `expected`, with the `claims` that go with it; an
    /// object being deleted whose last finalizer went is removed instead. Answers as `run`
    /// says (`Run::Object` or `Run::Json`).
    async fn write(
        &self,
        target: &Target<'_>,
        mut obj: Value,
        expected: Revision,
        claims: Vec<Op>,
        run: Run,
    ) -> Result<Updated, StoreError> {
        if obj.lookup("/metadata/deletionTimestamp").is_some()
            && object::finalizers(&obj).is_empty()
            && !deletion_waits_for_grace(target.kind, &obj)
        {
            return self.remove(target, obj, expected).await.map(Updated::shown);
        }
        let encoded = self.encode(target.kind, &mut obj, run == Run::Json);
        let mut txn = Txn::new().update(target.key(), encoded.bytes.clone(), expected);
        txn.ops.extend(claims);
        let resp = self
            .store
            .txn(txn)
            .await
            .inspect_err(|_| encoded.failed())?;
        set_resource_version(&mut obj, resp.revision);
        Ok(Updated {
            object: obj,
            json: encoded.served.map(|served| served.at(resp.revision)),
        })
    }

    /// `obj` of `kind`'s endpoint as the store keeps it (serialized once: an object stored as
    /// served is also what its watch cache serves, with the revision spliced in). The kind's
    /// watch cache, when loaded, is told of the write before it is made, so that its store
    /// event costs no parsing; so are the caches of the kind's other versions (a core/v1 Event
    /// is also an events.k8s.io/v1 one), with the object converted. With `hand_over`, the
    /// object itself goes to its kind's cache (when that is told: the write's JSON is then
    /// made), leaving null in its place.
    fn encode(&self, kind: &'static Kind, obj: &mut Value, hand_over: bool) -> Encoded {
        // A kind stored in another version is converted for the store (and its JSON as served
        // made only for a cache told); any other's JSON as served is what the store keeps.
        let stored = (!conversion::stored_as_served(kind))
            .then(|| conversion::to_storage(kind, obj.clone()));
        let (bytes, served) = match &stored {
            Some(stored) => (
                Bytes::from(serde_json::to_vec(stored).expect("a JSON value serializes")),
                None,
            ),
            None => {
                let served = Unversioned::of(obj);
                (served.json.clone(), Some(served))
            }
        };
        let telling = self.store.events_carry_written_values();
        let mut told = Vec::new();
        for other in kind.stored_with().filter(|_| telling) {
            if let Some(cache) = self.cache.loaded(other) {
                let seen = conversion::from_storage(other, stored.as_ref().unwrap_or(obj).clone());
                let served = Unversioned::of(&seen);
                cache.expect(&bytes, Cow::Owned(seen), served);
                told.push(cache);
            }
        }
        let served = match telling.then(|| self.cache.loaded(kind)).flatten() {
            Some(cache) => {
                let served = served.unwrap_or_else(|| Unversioned::of(obj));
                let given = match hand_over {
                    true => Cow::Owned(std::mem::take(obj)),
                    false => Cow::Borrowed(&*obj),
                };
                cache.expect(&bytes, given, served.clone());
                told.push(cache);
                Some(served)
            }
            None => served,
        };
        Encoded {
            bytes,
            served,
            told,
        }
    }

    /// Removes `obj` from the store with what it holds; answers it with the delete's revision.
    async fn remove(
        &self,
        target: &Target<'_>,
        mut obj: Value,
        expected: Revision,
    ) -> Result<Value, StoreError> {
        let mut txn = Txn::new().delete(target.key(), Some(expected));
        if services::is_service(target.kind) {
            txn.ops
                .extend(services::releases(self.store.as_ref(), &obj).await?);
        }
        let resp = self.store.txn(txn).await?;
        set_resource_version(&mut obj, resp.revision);
        Ok(obj)
    }

    /// Deletes an object, or marks it for deletion while finalizers or a bound pod's grace period
    /// hold it. Answers the object as it is after the call.
    pub async fn delete(
        &self,
        target: &Target<'_>,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        for _ in 0..UNCONDITIONAL_RETRIES {
            let (current, revision) = self.get_raw(target).await?;
            check_preconditions(&current, revision, options)?;
            let mut old = without_resource_version(current.clone());
            if let (Some(finalizer), true) =
                (options.propagation.finalizer(), target.kind.collected())
            {
                if old.lookup("/metadata/deletionTimestamp").is_none() {
                    let list = old["metadata"]["finalizers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !list.iter().any(|f| f == finalizer) {
                        let mut list = list;
                        list.push(finalizer.into());
                        old["metadata"]["finalizers"] = Value::Array(list);
                    }
                }
            }
            let now = jiff::Timestamp::now();
            let next = deletion_step(target.kind, &old, options, now);
            let result = match next {
                DeletionStep::Unchanged => return Ok(current),
                _ if options.dry_run => return Ok(current),
                DeletionStep::Mark(obj) => self
                    .write(target, obj, revision, Vec::new(), Run::Object)
                    .await
                    .map(|written| written.object),
                DeletionStep::Remove => self.remove(target, old, revision).await,
            };
            match result {
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Err(target.not_found()),
                other => return other.map_err(ApiError::from_store),
            }
        }
        Err(target.conflict())
    }

    /// Makes sure a stored object exists, creating it from `obj` when absent.
    /// Creates `obj`, or makes the existing one's `fields` (top-level, absent ones removed)
    /// those of `obj` (the server's own objects, kept as it says at every start).
    pub async fn put(
        &self,
        kind: &'static Kind,
        namespace: Option<&str>,
        obj: Value,
        fields: &[&str],
    ) -> Result<(), ApiError> {
        let name = object::name(&obj).to_string();
        match self
            .create(
                kind,
                namespace,
                obj.clone(),
                false,
                Ownership::by(API_SERVER),
            )
            .await
        {
            Err(e) if e.reason == "AlreadyExists" => {
                let target = Target {
                    kind,
                    namespace,
                    name: &name,
                };
                let mut current = self.get(&target).await?;
                for field in fields {
                    match obj.get(*field) {
                        Some(v) => current[*field] = v.clone(),
                        None => {
                            if let Some(map) = current.as_object_mut() {
                                map.remove(*field);
                            }
                        }
                    }
                }
                self.update(
                    &target,
                    current,
                    Endpoint::Main,
                    Run::Json,
                    Ownership::by(API_SERVER),
                )
                .await
                .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    pub async fn ensure(
        &self,
        kind: &'static Kind,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<(), ApiError> {
        match self
            .create(kind, namespace, obj, false, Ownership::by(API_SERVER))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn check_preconditions(
    current: &Value,
    revision: Revision,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    let name = object::name(current);
    if let Some(uid) = &options.precondition_uid {
        let actual = object::meta_str(current, "uid").unwrap_or_default();
        if uid != actual {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {name}: Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = &options.precondition_resource_version {
        if *rv != revision.to_string() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {name}: Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
                ),
            ));
        }
    }
    Ok(())
}

/// What a DELETE does to an object.
#[derive(Debug, PartialEq)]
enum DeletionStep {
    /// Nothing: already marked, and the call does not shorten its grace period.
    Unchanged,
    /// Write the object marked for deletion.
    Mark(Value),
    /// Remove it from the store.
    Remove,
}

/// Pods on a node go when their node agent says the containers stopped: a DELETE with grace
/// period 0. Namespaces go once their contents are gone.
/// A pod on a node: its node agent finishes its deletion.
fn bound_pod(kind: &Kind, obj: &Value) -> bool {
    kind.group.is_empty()
        && kind.kind == "Pod"
        && obj
            .lookup("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
}

fn deletion_waits_for_grace(kind: &Kind, obj: &Value) -> bool {
    let bound_pod = bound_pod(kind, obj);
    let namespace = kind.group.is_empty() && kind.kind == "Namespace";
    let grace = obj
        .lookup("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    (bound_pod && grace > 0) || namespace
}

fn deletion_step(
    kind: &Kind,
    obj: &Value,
    options: &DeleteOptions,
    now: jiff::Timestamp,
) -> DeletionStep {
    let bound = bound_pod(kind, obj);
    let has_finalizers = !object::finalizers(obj).is_empty();
    let marked_grace = obj
        .lookup("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    let grace = if bound {
        options.grace_period_seconds.unwrap_or_else(|| {
            obj.lookup("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        })
    } else {
        0
    };
    let namespace = kind.group.is_empty() && kind.kind == "Namespace";
    let already_marked = obj.lookup("/metadata/deletionTimestamp").is_some();
    if already_marked {
        // A later DELETE may only shorten a pod's grace period.
        if bound && marked_grace.is_some_and(|g| grace < g) {
            if grace == 0 && !has_finalizers {
                return DeletionStep::Remove;
            }
            return DeletionStep::Mark(mark(obj, now, grace, namespace));
        }
        return DeletionStep::Unchanged;
    }
    if has_finalizers || (bound && grace > 0) || namespace {
        return DeletionStep::Mark(mark(obj, now, grace, namespace));
    }
    DeletionStep::Remove
}

fn mark(obj: &Value, now: jiff::Timestamp, grace: i64, namespace: bool) -> Value {
    let mut obj = obj.clone();
    let at = now + Duration::from_secs(grace.max(0) as u64);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("deletionTimestamp".into(), object::timestamp(at).into());
        meta.insert("deletionGracePeriodSeconds".into(), grace.into());
    }
    if namespace {
        obj["status"] = json!({"phase": "Terminating"});
    }
    obj
}

/// Who writes `kind` (served as `api_version`), through `subresource` if any, for its managed
/// fields.
fn writer<'a>(
    kind: &'static Kind,
    api_version: &'a str,
    manager: &'a str,
    subresource: Option<&'a str>,
    now: &'a str,
) -> apply::Writer<'a> {
    apply::Writer {
        manager,
        api_version,
        ty: skiff_api::schema::root(kind),
        now,
        subresource,
    }
}

/// An object that client-side apply manages keeps its last-applied configuration in step with
/// what is applied server-side, so that both can be used on it (as Kubernetes does).
fn keep_last_applied(live: Option<&Value>, config: &Value, merged: &mut Value) {
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let had = live
        .and_then(|l| l.lookup("/metadata/annotations"))
        .is_some_and(|a| a.get(LAST_APPLIED).is_some());
    if !had {
        return;
    }
    let mut applied = config.clone();
    if let Some(annotations) = applied
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.shift_remove(LAST_APPLIED);
    }
    merged["metadata"]["annotations"][LAST_APPLIED] = json!(applied.to_string());
}

/// Kubernetes' 409 for an apply that meets other managers' fields.
fn conflict_error(target: &Target<'_>, conflicts: &apply::Conflicts) -> ApiError {
    ApiError::new(409, "Conflict", conflicts.message()).with_details(Details {
        name: target.name.to_string(),
        group: target.kind.group,
        kind: target.kind.plural,
        causes: conflicts
            .causes()
            .into_iter()
            .map(|(message, field)| Cause {
                reason: "FieldManagerConflict",
                message,
                field,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        let store: Arc<dyn Store> =
            Arc::new(skiff_store::RedbStore::in_memory(Default::default()).unwrap());
        Registry {
            cache: Arc::new(WatchCache::new(store.clone(), Default::default())),
            store,
            ranges: ServiceRanges::default(),
            written: Default::default(),
        }
    }

    /// The object kept for the next write of `target` is exactly what a read of the store
    /// decodes (key order included); taken, it is gone.
    async fn kept_is_stored(registry: &Registry, target: &Target<'_>) {
        let kv = registry.read(target).await.unwrap();
        let kept = registry
            .written
            .take(target.kind, &kv.key, kv.mod_revision)
            .expect("the write kept its object");
        let stored = decode(target.kind, &kv).unwrap();
        assert_eq!(kept.to_string(), stored.to_string());
        assert!(registry
            .written
            .take(target.kind, &kv.key, kv.mod_revision)
            .is_none());
    }

    #[tokio::test]
    async fn a_pod_s_writes_start_from_the_object_written_before_as_the_store_holds_it() {
        let registry = registry();
        let namespaces = kinds::find("", "v1", "namespaces").unwrap();
        let pods = kinds::find("", "v1", "pods").unwrap();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        registry
            .create(namespaces, None, ns, false, Ownership::by("test"))
            .await
            .unwrap();
        let create = |name: &str| {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "a", "resourceVersion": ""},
                "spec": {"containers": [{"name": "c", "image": "pause"}]}});
            registry.create(pods, Some("a"), pod, false, Ownership::by("test"))
        };
        let target = |name| Target {
            kind: pods,
            namespace: Some("a"),
            name,
        };
        let binding = json!({"target": {"name": "node-1"}});
        let bind = |target| crate::subresources::bind(&registry, target, &binding);
        let running = json!({"status": {"phase": "Running"}});
        let status = |target| {
            let (merge, by) = (PatchType::Merge, Ownership::by("node"));
            registry.patch(target, merge, &running, Endpoint::Status, Run::Object, by)
        };

        // What a create and a binding keep is what the store holds.
        let web = target("web");
        create("web").await.unwrap();
        kept_is_stored(&registry, &web).await;
        bind(&web).await.unwrap();
        kept_is_stored(&registry, &web).await;

        // The binding starts from the created object, the status from the bound one; the
        // answers are what the store holds, and an update keeps nothing.
        let api = target("api");
        let created = create("api").await.unwrap();
        bind(&api).await.unwrap();
        let bound = registry.get(&api).await.unwrap();
        assert_eq!(bound["spec"]["nodeName"], "node-1");
        assert_eq!(bound["metadata"]["uid"], created["metadata"]["uid"]);
        let Updated { object, json } = status(&api).await.unwrap();
        assert_eq!(object["spec"]["nodeName"], "node-1");
        assert_eq!(object["status"]["phase"], "Running");
        let stored = registry.get(&api).await.unwrap();
        assert_eq!(object.to_string(), stored.to_string());
        // The answer's JSON is the write's, resourceVersion spliced in.
        let json: Value = serde_json::from_slice(&json.expect("the write made its JSON")).unwrap();
        assert_eq!(json, stored);
        let rv = object::meta_str(&stored, "resourceVersion").unwrap();
        let key = api.key();
        assert!(registry
            .written
            .take(pods, &key, rv.parse().unwrap())
            .is_none());

        // A kept object the store no longer holds is not used: a write by another path (here
        // straight to the store) made it stale.
        let db = target("db");
        create("db").await.unwrap();
        let kv = registry.read(&db).await.unwrap();
        let mut changed = decode(pods, &kv).unwrap();
        changed["metadata"]["labels"] = json!({"tier": "back"});
        let bytes = serde_json::to_vec(&without_resource_version(changed)).unwrap();
        registry
            .store
            .txn(Txn::new().update(kv.key.clone(), Bytes::from(bytes), kv.mod_revision))
            .await
            .unwrap();
        bind(&db).await.unwrap();
        let bound = registry.get(&db).await.unwrap();
        assert_eq!(bound["metadata"]["labels"], json!({"tier": "back"}));
        assert_eq!(bound["spec"]["nodeName"], "node-1");

        // Answered with its JSON, a write gives its object to the pods' cache: the answer is
        // the JSON alone, the stored object; without a cache told, the object stays.
        let done = json!({"status": {"phase": "Succeeded"}});
        let by = Ownership::by("node");
        let patch = |target| {
            registry.patch(
                target,
                PatchType::Merge,
                &done,
                Endpoint::Status,
                Run::Json,
                by,
            )
        };
        let untold = patch(&db).await.unwrap();
        assert_eq!(untold.object["status"]["phase"], "Succeeded");
        registry.cache.of(pods).await.unwrap();
        let given = patch(&api).await.unwrap();
        assert!(given.object.is_null(), "{}", given.object);
        let json = given.json.expect("the write made its JSON");
        let answered: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(answered, registry.get(&api).await.unwrap());
        assert_eq!(answered["status"]["phase"], "Succeeded");
    }

    /// A write told to its own kind's cache is told to the caches of the kind's other version
    /// too, in that version's form: what each serves is what a read of the store through that
    /// version decodes (but for where the resourceVersion sits, first in what caches serve).
    #[tokio::test]
    async fn an_event_written_in_one_version_is_served_by_both_caches_as_read() {
        let registry = registry();
        let namespaces = kinds::find("", "v1", "namespaces").unwrap();
        let core = kinds::find("", "v1", "events").unwrap();
        let new = kinds::find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(core.stored_with().collect::<Vec<_>>(), [new]);
        assert_eq!(new.stored_with().collect::<Vec<_>>(), [core]);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        registry
            .create(namespaces, None, ns, false, Ownership::by("test"))
            .await
            .unwrap();
        let (core_cache, new_cache) = (
            registry.cache.of(core).await.unwrap(),
            registry.cache.of(new).await.unwrap(),
        );
        let involved = json!({"kind": "Pod", "namespace": "a", "name": "web"});
        // Once both caches have a first event, their feeds follow the store's writes as they
        // are made (an event replayed from the store's history is decoded).
        let first = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e0", "namespace": "a"}, "involvedObject": involved});
        let first = registry
            .create(core, Some("a"), first, false, Ownership::by("test"))
            .await
            .unwrap();
        let revision: Revision = object::meta_str(&first, "resourceVersion")
            .unwrap()
            .parse()
            .unwrap();
        for cache in [&core_cache, &new_cache] {
            let key = cache.kind().store_key(Some("a"), "e0");
            let seen = cache.object(&key, revision).await.flatten();
            assert!(seen.is_some(), "{} has e0", cache.kind().api_version());
        }
        let written = [
            (
                core,
                json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e1", "namespace": "a"}, "involvedObject": involved,
                "reason": "Scheduled", "message": "to node-1", "type": "Normal",
                "source": {"component": "default-scheduler"}, "count": 1}),
            ),
            (
                new,
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "e2", "namespace": "a"}, "regarding": involved,
                "reason": "Pulled", "note": "pulled", "type": "Normal", "action": "Pull",
                "reportingController": "kubelet", "reportingInstance": "node-1",
                "eventTime": "2026-12-02T00:00:00.000000Z"}),
            ),
        ];
        for (kind, event) in written {
            let created = registry
                .create(kind, Some("a"), event, false, Ownership::by("test"))
                .await
                .unwrap();
            let name = object::name(&created);
            let revision = object::meta_str(&created, "resourceVersion").unwrap();
            for (version, cache) in [(core, &core_cache), (new, &new_cache)] {
                let target = Target {
                    kind: version,
                    namespace: Some("a"),
                    name,
                };
                let cached = cache
                    .object(&target.key(), revision.parse().unwrap())
                    .await
                    .expect("the cache caught up")
                    .expect("the cache has the event");
                let served: Value = serde_json::from_slice(&cached.json).unwrap();
                let read = registry.get(&target).await.unwrap();
                assert_eq!(served, read, "{name} through {}", version.api_version());
            }
        }
    }

    #[test]
    fn a_namespace_being_deleted_is_told_from_its_json() {
        let cases = [
            (
                r#"{"metadata":{"name":"a","deletionTimestamp":"2026-12-01T00:00:00Z"}}"#,
                true,
            ),
            (
                r#"{"kind":"Namespace","metadata":{"name":"a","labels":{"x":"y"}},"spec":{}}"#,
                false,
            ),
            (
                r#"{"metadata":{"name":"a","deletionTimestamp":null}}"#,
                false,
            ),
            (r#"{"spec":{"finalizers":["kubernetes"]}}"#, false),
        ];
        for (json, want) in cases {
            assert_eq!(terminating(json.as_bytes()).unwrap(), want, "{json}");
        }
        assert!(terminating(b"\"a string\"").is_err());
    }

    fn step(plural: &str, obj: Value, grace: Option<i64>) -> String {
        let kind = kinds::find("", "v1", plural).unwrap();
        let options = DeleteOptions {
            grace_period_seconds: grace,
            ..DeleteOptions::default()
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        match deletion_step(kind, &obj, &options, now) {
            DeletionStep::Unchanged => "unchanged".into(),
            DeletionStep::Remove => "remove".into(),
            DeletionStep::Mark(o) => format!(
                "mark {} grace {}",
                o["metadata"]["deletionTimestamp"].as_str().unwrap(),
                o["metadata"]["deletionGracePeriodSeconds"]
            ),
        }
    }

    #[test]
    fn deletion_steps() {
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}});
        let marked = json!({"metadata": {"name": "p", "deletionTimestamp": "t", "deletionGracePeriodSeconds": 10}, "spec": {"nodeName": "n1"}});
        let cases = [
            (
                "configmaps",
                json!({"metadata": {"name": "c"}}),
                None,
                "remove",
            ),
            (
                "configmaps",
                json!({"metadata": {"name": "c", "finalizers": ["x"]}}),
                None,
                "mark 2027-01-15T08:00:00Z grace 0",
            ),
            (
                "pods",
                json!({"metadata": {"name": "p"}, "spec": {}}),
                None,
                "remove",
            ),
            (
                "pods",
                bound.clone(),
                None,
                "mark 2027-01-15T08:00:10Z grace 10",
            ),
            ("pods", bound.clone(), Some(0), "remove"),
            ("pods", marked.clone(), Some(20), "unchanged"),
            (
                "pods",
                marked.clone(),
                Some(3),
                "mark 2027-01-15T08:00:03Z grace 3",
            ),
            ("pods", marked, Some(0), "remove"),
            (
                "namespaces",
                json!({"metadata": {"name": "team"}}),
                None,
                "mark 2027-01-15T08:00:00Z grace 0",
            ),
        ];
        for (plural, obj, grace, want) in cases {
            assert_eq!(
                step(plural, obj.clone(), grace),
                want,
                "{plural} {obj} grace {grace:?}"
            );
        }
    }
}
