//! The API as the in-process controllers see it: lists from the watch cache that include their
//! own writes, feeds of changes from it, and writes through the registry, as kubectl's go.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use skiff_api::kinds::Kind;
use skiff_api::object::Filter;
use skiff_api::object::Lookup;
use skiff_api::strategy::Endpoint;
use skiff_controllers::cluster::{Changed, Cluster, ClusterError, Feed};
use skiff_store::Revision;
use tokio::sync::mpsc;

use crate::cache::{Cached, Change, KindCache, Subscription};
use crate::parsed::{parse, without_managed_fields};
use crate::registry::{DeleteOptions, Ownership, Propagation, Run, Target};
use crate::server::Api;
use crate::status::ApiError;

/// The manager the controllers' writes are recorded under in `managedFields`, as Kubernetes
/// records its controllers'.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// A list's objects: entries of the kind's watch cache, or objects read from the store.
enum Listed {
    Cached(Arc<KindCache>, Vec<Arc<Cached>>),
    Stored(Vec<Value>),
}

/// The controllers' client inside the server.
pub struct InProcess {
    api: Arc<Api>,
    /// The newest revision this client wrote: its lists wait until the cache has it.
    written: AtomicI64,
}

impl InProcess {
    pub fn new(api: Arc<Api>) -> Self {
        InProcess {
            api,
            written: AtomicI64::new(0),
        }
    }

    /// The objects of a list, from the watch cache once it has every write of this client;
    /// from the store when it is behind (a burst keeps its feed busy), as kubectl's lists are
    /// answered then. Failing instead sent the controller's key into backoff, and at 150,000
    /// pods Deployments waited for seconds between their syncs.
    async fn listed(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Listed, ClusterError> {
        let cache = self.cache(kind).await?;
        let at_least = self.written.load(Ordering::SeqCst);
        // An empty namespace lists them all.
        let namespace = scope(namespace);
        let prefix = kind.store_prefix_in(namespace);
        Ok(match cache.snapshot(&prefix, filter, at_least).await {
            Some(snapshot) => {
                let items = snapshot.items.into_iter().map(|(_, o)| o).collect();
                Listed::Cached(cache, items)
            }
            None => {
                let page = self
                    .api
                    .registry
                    .list(kind, namespace, filter, None, None, None)
                    .await
                    .map_err(error)?;
                Listed::Stored(page.items)
            }
        })
    }

    async fn replace(
        &self,
        kind: &'static Kind,
        obj: Value,
        endpoint: Endpoint,
    ) -> Result<Value, ClusterError> {
        // The object goes to the registry whole: its name and namespace are copied, not it.
        let (namespace, name) = {
            let Target {
                namespace, name, ..
            } = target(kind, &obj);
            (namespace.map(str::to_string), name.to_string())
        };
        let target = Target {
            kind,
            namespace: namespace.as_deref(),
            name: &name,
        };
        let updated = self
            .api
            .registry
            .update(
                &target,
                obj,
                endpoint,
                Run::Object,
                Ownership::by(CONTROLLER_MANAGER),
            )
            .await
            .map_err(error)?
            .object;
        self.wrote(&updated);
        Ok(updated)
    }

    async fn cache(&self, kind: &'static Kind) -> Result<Arc<KindCache>, ClusterError> {
        self.api.cache(kind).await.map_err(error)
    }

    fn wrote(&self, obj: &Value) {
        let revision = obj
            .lookup("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|rv| rv.parse::<Revision>().ok())
            .unwrap_or(0);
        self.written.fetch_max(revision, Ordering::SeqCst);
    }
}

/// Whether the objects of `kind` reach the controllers through the memo of parsed objects
/// (`KindCache::parsed`). Only pods have several feeds and lists of many objects read again
/// and again (a ReplicaSet's pods at each of its syncs). Every kind through the memo (5,000
/// nodes' Leases among them) stalled the 150,000-pod density run, when a feed cut off for
/// falling behind ended and its controller took in every pod again (`forward` now resumes
/// instead).
fn through_memo(kind: &Kind) -> bool {
    kind.plural == "pods"
}

/// The namespace the controllers name ("" for cluster-scoped objects and for all of them), as
/// the registry takes it.
fn scope(namespace: &str) -> Option<&str> {
    Some(namespace).filter(|n| !n.is_empty())
}

fn error(e: ApiError) -> ClusterError {
    match e.code {
        409 => ClusterError::Conflict(e.message),
        404 => ClusterError::NotFound(e.message),
        _ => ClusterError::Other(e.message),
    }
}

fn target<'a>(kind: &'static Kind, obj: &'a Value) -> Target<'a> {
    Target {
        kind,
        namespace: obj.lookup("/metadata/namespace").and_then(Value::as_str),
        name: obj
            .lookup("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(""),
    }
}

#[async_trait]
impl Cluster for InProcess {
    async fn list(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ClusterError> {
        match self.listed(kind, namespace, filter).await? {
            // Selected before parsing: only the objects asked for are decoded.
            Listed::Cached(_, items) => items
                .iter()
                .map(|obj| {
                    without_managed_fields(&obj.json)
                        .map_err(|e| ClusterError::Other(e.to_string()))
                })
                .collect(),
            Listed::Stored(items) => Ok(items),
        }
    }

    async fn list_shared(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Arc<Value>>, ClusterError> {
        match self.listed(kind, namespace, filter).await? {
            Listed::Cached(cache, items) if through_memo(kind) => {
                Ok(items.iter().map(|obj| cache.parsed.object(obj)).collect())
            }
            Listed::Cached(_, items) => items
                .iter()
                .map(|obj| {
                    without_managed_fields(&obj.json)
                        .map(Arc::new)
                        .map_err(|e| ClusterError::Other(e.to_string()))
                })
                .collect(),
            Listed::Stored(items) => Ok(items.into_iter().map(Arc::new).collect()),
        }
    }

    async fn list_json(
        &self,
        kind: &'static Kind,
        namespace: &str,
        filter: &Filter,
    ) -> Result<Vec<Bytes>, ClusterError> {
        Ok(match self.listed(kind, namespace, filter).await? {
            Listed::Cached(_, items) => items.iter().map(|obj| obj.json.clone()).collect(),
            Listed::Stored(items) => items
                .iter()
                .map(|obj| Bytes::from(serde_json::to_vec(obj).expect("JSON serializes")))
                .collect(),
        })
    }

    async fn get(
        &self,
        kind: &'static Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ClusterError> {
        let cache = self.cache(kind).await?;
        let namespace = scope(namespace);
        let key = kind.store_key(namespace, name);
        let Some(found) = cache
            .object(&key, self.written.load(Ordering::SeqCst))
            .await
        else {
            // Behind this client's writes: read the store, as for lists.
            let target = Target {
                kind,
                namespace,
                name,
            };
            return match self.api.registry.get(&target).await {
                Ok(obj) => Ok(Some(obj)),
                Err(e) if e.code == 404 => Ok(None),
                Err(e) => Err(error(e)),
            };
        };
        found
            .map(|obj| {
                without_managed_fields(&obj.json).map_err(|e| ClusterError::Other(e.to_string()))
            })
            .transpose()
    }

    async fn changes(&self, kind: &'static Kind) -> Result<Feed, ClusterError> {
        let cache = self.cache(kind).await?;
        let subscription = cache
            .subscribe(&kind.store_prefix(), &Filter::default(), false, None)
            .map_err(|e| ClusterError::Other(format!("{e:?}")))?;
        let initial = subscription
            .backlog
            .iter()
            .filter(|c| matches!(&***c, Change::Put { .. } | Change::Delete { .. }))
            .count();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(forward(cache, subscription, through_memo(kind), tx));
        Ok(Feed {
            initial,
            changes: rx,
        })
    }

    async fn create(
        &self,
        kind: &'static Kind,
        namespace: &str,
        obj: Value,
    ) -> Result<Arc<Value>, ClusterError> {
        let created = self
            .api
            .registry
            .create(
                kind,
                Some(namespace),
                obj,
                false,
                Ownership::by(CONTROLLER_MANAGER),
            )
            .await
            .map_err(error)?;
        self.wrote(&created);
        Ok(created)
    }

    async fn update(&self, kind: &'static Kind, obj: Value) -> Result<Value, ClusterError> {
        self.replace(kind, obj, Endpoint::Main).await
    }

    async fn update_status(&self, kind: &'static Kind, obj: Value) -> Result<Value, ClusterError> {
        self.replace(kind, obj, Endpoint::Status).await
    }

    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let pods = skiff_api::kinds::find("", "v1", "pods").expect("pods are served");
        let target = Target {
            kind: pods,
            namespace: Some(namespace),
            name,
        };
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        crate::subresources::bind(&self.api.registry, &target, &binding)
            .await
            .map_err(error)
    }

    async fn delete(
        &self,
        kind: &'static Kind,
        namespace: &str,
        name: &str,
        uid: &str,
        foreground: bool,
    ) -> Result<(), ClusterError> {
        let target = Target {
            kind,
            namespace: Some(namespace),
            name,
        };
        let options = DeleteOptions {
            precondition_uid: Some(uid.to_string()).filter(|u| !u.is_empty()),
            propagation: if foreground {
                Propagation::Foreground
            } else {
                Propagation::Background
            },
            ..DeleteOptions::default()
        };
        let last = self
            .api
            .registry
            .delete(&target, &options)
            .await
            .map_err(error)?;
        self.wrote(&last);
        Ok(())
    }
}

/// Passes a subscription's changes on to a controller feed, parsed (through the cache's memo
/// of parsed objects with `parsed`); ends when the consumer is gone, on a reset, or when it
/// cannot resume.
async fn forward(
    cache: Arc<KindCache>,
    subscription: Subscription,
    parsed: bool,
    tx: mpsc::Sender<Changed>,
) {
    if parsed {
        cache.parsed.wanted();
    }
    let prefix = cache.kind().store_prefix();
    let mut live = subscription.live;
    let mut backlog = subscription.backlog.into_iter();
    // The revision of the last change passed on.
    let mut last: Revision = 0;
    loop {
        let change = match backlog.next() {
            Some(c) => c,
            None => match live.recv().await {
                // Also in the backlog (applied as the subscription began).
                Some(c) if c.revision().is_some_and(|r| r <= last) => continue,
                Some(c) => c,
                // Cut off for falling behind a burst (or the cache reloaded): resumed from the
                // changes the cache keeps, as a client's watch would be, rather than ended,
                // which would have the consumer take in every object again (150,000 pods: a
                // stall of many seconds, during which it falls behind again). Ended when those
                // changes are gone.
                None => match cache.subscribe(&prefix, &Filter::default(), false, Some(last)) {
                    Ok(resumed) => {
                        tracing::debug!(kind = cache.kind().plural, last, "feed resumed");
                        live = resumed.live;
                        backlog = resumed.backlog.into_iter();
                        continue;
                    }
                    Err(_) => return,
                },
            },
        };
        last = last.max(change.revision().unwrap_or(last));
        let (cached, deleted) = match &*change {
            Change::Put { new, .. } => (new, false),
            Change::Delete { old, .. } => (old, true),
            Change::Progress(_) => continue,
            Change::Reset => return,
        };
        let object = if parsed {
            cache.parsed.object(cached)
        } else {
            Arc::new(parse(cached))
        };
        if tx.send(Changed { object, deleted }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_feed_cut_off_for_falling_behind_resumes_without_a_gap_or_a_repeat() {
        use super::{mpsc, Arc, Filter};
        use crate::cache::{History, WatchCache, WATCHER_QUEUE};
        use skiff_store::{RedbOptions, RedbStore, Store};
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(RedbOptions::default()).unwrap());
        let caches = WatchCache::new(store.clone(), History::default());
        let kind = skiff_api::kinds::find("", "v1", "configmaps").unwrap();
        let cache = caches.of(kind).await.unwrap();
        let prefix = kind.store_prefix();
        let subscription = cache
            .subscribe(&prefix, &Filter::default(), false, None)
            .unwrap();
        let (tx, mut feed) = mpsc::channel(16);
        tokio::spawn(super::forward(cache.clone(), subscription, false, tx));
        let write = |name: String| {
            let store = store.clone();
            let key = kind.store_key(Some("default"), &name);
            async move {
                let value = format!(r#"{{"metadata":{{"name":"{name}","namespace":"default"}}}}"#);
                store.create(&key, value.into()).await.unwrap();
            }
        };
        // Written while nobody reads the feed: its queue in the cache overflows, and the cache
        // cuts it off.
        let writes = WATCHER_QUEUE * 3;
        for i in 0..writes {
            write(format!("c{i}")).await;
        }
        for i in 0..writes {
            let changed = feed.recv().await.expect("the feed goes on");
            assert_eq!(changed.object["metadata"]["name"], format!("c{i}"));
        }
        write("last".into()).await;
        let changed = feed.recv().await.expect("the feed goes on");
        assert_eq!(changed.object["metadata"]["name"], "last");
    }
}
