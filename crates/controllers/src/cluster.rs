//! What the controllers need of the API: lists that include their own writes, a feed of
//! changes per kind, and writes that go through the same registry path as kubectl's.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use skiff_api::kinds::Kind;
use skiff_api::object::Filter;
use tokio::sync::mpsc;

/// Why a call failed, as far as a controller cares.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another writer got in first, or a precondition failed: read again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

/// One change of a watched kind.
#[derive(Clone, Debug)]
pub struct Changed {
    /// The object as it is now, or its last state when deleted; shared by every feed that
    /// delivers the same change.
    pub object: Arc<Value>,
    pub deleted: bool,
}

/// A kind's feed: first the objects that exist when it begins (`initial` of them, as changes),
/// then every change.
pub struct Feed {
    pub initial: usize,
    pub changes: mpsc::Receiver<Changed>,
}

/// The API as in-process controllers use it.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The objects of `kind` in `namespace` (all namespaces when empty) that `filter` selects,
    /// at least as new as every write made through this client so far.
    async fn list(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ClusterError>;

    /// The objects [`Cluster::list`] gives, shared with the feeds rather than copied for the
    /// caller (pods a feed has just delivered are not parsed again): for a caller that reads
    /// them, copying only what it changes.
    async fn list_shared(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Arc<Value>>, ClusterError>;

    /// The JSON of each object [`Cluster::list`] gives, unparsed: for a caller that reads a few
    /// fields of many objects (the events' expiry reads every event's times each minute).
    async fn list_json(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Bytes>, ClusterError>;

    /// The object of `kind` named `name` in `namespace` ("" for cluster-scoped kinds), at least
    /// as new as every write made through this client so far.
    async fn get(
        &self,
        kind: &'static Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ClusterError>;

    /// The current objects of `kind` (as changes), then every change. The feed ends when the
    /// client falls behind; the caller subscribes again.
    async fn changes(&self, kind: &'static Kind) -> Result<Feed, ClusterError>;

    /// Creates an object; answers it as created, shared with the server (a pod's binding
    /// starts from it).
    async fn create(
        &self,
        kind: &'static Kind,
        namespace: &str,
        obj: Value,
    ) -> Result<Arc<Value>, ClusterError>;

    /// Replaces an object; its resourceVersion must still be current.
    async fn update(&self, kind: &'static Kind, obj: Value) -> Result<Value, ClusterError>;

    /// Replaces an object's status; its resourceVersion must still be current.
    async fn update_status(&self, kind: &'static Kind, obj: Value) -> Result<Value, ClusterError>;

    /// Binds a pod (by uid, when given) to a node through `pods/binding`.
    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<(), ClusterError>;

    /// Deletes an object if its uid is still `uid`; `foreground` keeps it until its own
    /// dependents are gone.
    async fn delete(
        &self,
        kind: &'static Kind,
        namespace: &str,
        name: &str,
        uid: &str,
        foreground: bool,
    ) -> Result<(), ClusterError>;
}
