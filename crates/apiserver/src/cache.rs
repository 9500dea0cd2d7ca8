//! The watch cache: one store watch per kind keeps every object of the kind in memory as the
//! bytes clients receive, with recent changes for watch resume, and hands each change to the
//! watchers whose selectors it concerns, without touching the store (a watcher is woken only
//! for its own changes). Lists are served from it too, once it has caught up with the store's
//! current revision.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use skiff_api::kinds::Kind;
use skiff_api::object::{Filter, Selectable};
use skiff_store::{Event, KeyValue, RangeRequest, Revision, Store, StoreError};
use tokio::sync::{mpsc, watch};

use crate::parsed::{self, Recent};
use crate::registry::set_resource_version;

/// The changes kept per kind for watches that resume from a resourceVersion (older starts get
/// 410 and list again): at least `changes` of them, and besides those every change younger
/// than `fresh`, up to `MAX_HISTORY`. Kubernetes keeps its watch cache's events 75 s so: a
/// watcher cut off for being slow while thousands of pods change a second resumes where it
/// was instead of listing them all again.
#[derive(Clone, Copy, Debug)]
pub struct History {
    pub changes: usize,
    pub fresh: Duration,
}

impl Default for History {
    fn default() -> Self {
        History {
            changes: 10_000,
            fresh: Duration::from_secs(75),
        }
    }
}

/// The most changes a kind keeps however young (about 300 MB of pods).
const MAX_HISTORY: usize = 150_000;

/// Changes queued for one watcher; one that falls further behind is disconnected.
pub(crate) const WATCHER_QUEUE: usize = 1_024;

/// How long a consistent list waits for the cache to reach the store's revision before it
/// reads the store instead.
const FRESHNESS_WAIT: Duration = Duration::from_secs(1);

/// One object as clients receive it, with what selectors look at.
#[derive(Debug)]
pub struct Cached {
    /// The object's JSON with its resourceVersion.
    pub json: Bytes,
    pub selectable: Selectable,
}

impl Cached {
    pub(crate) fn new(kind: &Kind, obj: &Value) -> Cached {
        Cached {
            selectable: Selectable::of(kind, obj),
            json: Bytes::from(serde_json::to_vec(obj).expect("a JSON value serializes")),
        }
    }

    /// The stored `kv` as `kind`'s endpoint serves it, at `revision` (a delete's, for the last
    /// state of a deleted object).
    fn decode(kind: &Kind, kv: &KeyValue, revision: Revision) -> Result<Cached, String> {
        let mut obj = crate::registry::decode(kind, kv).map_err(|e| e.message)?;
        set_resource_version(&mut obj, revision);
        Ok(Cached::new(kind, &obj))
    }
}

/// An object serialized without its resourceVersion, with the place in its metadata where one
/// goes: what the store keeps of an object served as stored, from which the watch cache makes
/// the JSON clients receive by splicing in the revision its write got, instead of parsing the
/// store's event.
#[derive(Clone)]
pub struct Unversioned {
    pub json: Bytes,
    /// Just after `"metadata":{`; none when the object has no metadata.
    slot: Option<usize>,
    /// Whether other metadata follows the slot (a comma goes after the resourceVersion).
    more: bool,
}

impl Unversioned {
    /// `obj` as compact JSON (as `serde_json::to_vec` writes it) without
    /// `metadata.resourceVersion`.
    pub fn of(obj: &Value) -> Unversioned {
        let Value::Object(map) = obj else {
            return Unversioned {
                json: Bytes::from(serde_json::to_vec(obj).expect("a JSON value serializes")),
                slot: None,
                more: false,
            };
        };
        let mut out = Vec::with_capacity(1024);
        let (mut slot, mut more) = (None, false);
        out.push(b'{');
        for (i, (name, value)) in map.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&mut out, name);
            out.push(b':');
            match value {
                Value::Object(meta) if name == "metadata" => {
                    out.push(b'{');
                    slot = Some(out.len());
                    let fields = meta.iter().filter(|(f, _)| *f != "resourceVersion");
                    for (j, (field, v)) in fields.enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        more = true;
                        write_json(&mut out, field);
                        out.push(b':');
                        write_json(&mut out, v);
                    }
                    out.push(b'}');
                }
                _ => write_json(&mut out, value),
            }
        }
        out.push(b'}');
        Unversioned {
            json: Bytes::from(out),
            slot,
            more,
        }
    }

    /// The JSON with `metadata.resourceVersion` set to `revision`.
    pub fn at(&self, revision: Revision) -> Bytes {
        let Some(slot) = self.slot else {
            return self.json.clone();
        };
        let mut out = Vec::with_capacity(self.json.len() + 40);
        out.extend_from_slice(&self.json[..slot]);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(revision.to_string().as_bytes());
        out.push(b'"');
        if self.more {
            out.push(b',');
        }
        out.extend_from_slice(&self.json[slot..]);
        Bytes::from(out)
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a JSON value serializes");
}

/// A write of this kind's endpoint about to be made: its store event is recognised by the
/// bytes it carries and served from `served` rather than decoded.
struct Expected {
    /// The bytes given to the store (held, so that no other allocation takes their address).
    stored: Bytes,
    served: Unversioned,
    selectable: Selectable,
    /// The object as the controllers read it, without its resourceVersion, when a feed reads
    /// this kind through [`KindCache::parsed`].
    view: Option<Value>,
    since: Instant,
}

/// How long an expected write waits for its event: one whose write failed or was abandoned
/// is dropped after that.
const EXPECTED_FOR: Duration = Duration::from_secs(10);

/// One change of a kind, as every watcher of it sees it.
#[derive(Debug)]
pub enum Change {
    /// A create or update; `old` is the state before an update.
    Put {
        revision: Revision,
        key: String,
        new: Arc<Cached>,
        old: Option<Arc<Cached>>,
    },
    /// A delete; `old` is the last state, with the delete's resourceVersion.
    Delete {
        revision: Revision,
        key: String,
        old: Arc<Cached>,
    },
    /// Everything up to this revision has been sent (bookmarks come from these).
    Progress(Revision),
    /// The cache lost its store watch and was rebuilt: watchers must start over.
    Reset,
}

impl Change {
    pub fn revision(&self) -> Option<Revision> {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => Some(*revision),
            Change::Progress(r) => Some(*r),
            Change::Reset => None,
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            Change::Put { key, .. } | Change::Delete { key, .. } => Some(key),
            _ => None,
        }
    }
}

struct State {
    /// Everything up to here is applied.
    revision: Revision,
    objects: BTreeMap<String, Arc<Cached>>,
    /// Changes in order, each with when it was applied.
    history: VecDeque<(Instant, Arc<Change>)>,
    /// The oldest revision a watch may resume after.
    oldest: Revision,
}

/// The cache of one kind.
pub struct KindCache {
    kind: &'static Kind,
    history: History,
    state: RwLock<State>,
    watchers: Mutex<Vec<Watcher>>,
    applied: watch::Sender<Revision>,
    progress: mpsc::Sender<()>,
    /// Writes through this kind's endpoint about to be made, by the address of the bytes they
    /// give the store: their store events are taken from here rather than decoded.
    expected: Mutex<HashMap<usize, Expected>>,
    /// The objects the controllers' feeds read lately.
    pub parsed: Recent,
}

/// A live watcher as the feed sees it.
struct Watcher {
    prefix: String,
    filter: Filter,
    bookmarks: bool,
    queue: mpsc::Sender<Arc<Change>>,
}

impl Watcher {
    /// Whether the watcher is told of `change`: changes to objects it sees (before or after),
    /// progress when it wants bookmarks.
    fn concerns(&self, change: &Change) -> bool {
        match change {
            Change::Put { key, .. } | Change::Delete { key, .. } => {
                key.starts_with(&self.prefix) && translate(change, &self.filter).is_some()
            }
            Change::Progress(_) => self.bookmarks,
            Change::Reset => true,
        }
    }
}

/// What a watch starts with: changes already made after its start revision, then the live
/// ones (the queue closes when the watcher is dropped for being too slow, or on a reset).
pub struct Subscription {
    pub backlog: Vec<Arc<Change>>,
    pub live: mpsc::Receiver<Arc<Change>>,
}

/// Why the cache cannot serve a watch.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchRefusal {
    /// The start revision is older than the history kept.
    TooOld {
        requested: Revision,
        oldest: Revision,
    },
}

/// A snapshot list from the cache.
pub struct Snapshot {
    pub revision: Revision,
    /// (store key, object) in key order.
    pub items: Vec<(String, Arc<Cached>)>,
}

impl KindCache {
    /// Subscribes to changes after `after`; `None` means "from now, with the current objects
    /// as the backlog" (returned as `Put` changes without `old`).
    pub fn subscribe(
        &self,
        prefix: &str,
        filter: &Filter,
        bookmarks: bool,
        after: Option<Revision>,
    ) -> Result<Subscription, WatchRefusal> {
        // Registering under the read lock: no change is applied in between, so the backlog and
        // the live changes together miss nothing (a change applied but not yet handed out may
        // come twice; watchers skip revisions they have sent).
        let state = self.state.read().expect("cache lock");
        let backlog = match after {
            None => state
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(key, obj)| {
                    Arc::new(Change::Put {
                        revision: state.revision,
                        key: key.clone(),
                        new: obj.clone(),
                        old: None,
                    })
                })
                .collect(),
            Some(after) if after < state.oldest => {
                return Err(WatchRefusal::TooOld {
                    requested: after,
                    oldest: state.oldest,
                })
            }
            Some(after) => state
                .history
                .iter()
                .map(|(_, c)| c)
                .filter(|c| c.revision().is_some_and(|r| r > after))
                .filter(|c| c.key().is_some_and(|k| k.starts_with(prefix)))
                .cloned()
                .collect(),
        };
        let (queue, live) = mpsc::channel(WATCHER_QUEUE);
        self.watchers.lock().expect("watchers lock").push(Watcher {
            prefix: prefix.to_string(),
            filter: filter.clone(),
            bookmarks,
            queue,
        });
        Ok(Subscription { backlog, live })
    }

    /// Waits until the cache has applied `at_least`; false when it does not in time.
    async fn caught_up(&self, at_least: Revision) -> bool {
        let mut applied = self.applied.subscribe();
        if *applied.borrow() < at_least {
            let _ = self.progress.try_send(());
            let caught_up =
                tokio::time::timeout(FRESHNESS_WAIT, applied.wait_for(|r| *r >= at_least)).await;
            return matches!(caught_up, Ok(Ok(_)));
        }
        true
    }

    /// The object under store key `key`, once the cache has caught up with `at_least`: the
    /// outer `None` when it does not in time (the caller reads the store).
    pub async fn object(&self, key: &str, at_least: Revision) -> Option<Option<Arc<Cached>>> {
        if !self.caught_up(at_least).await {
            return None;
        }
        let state = self.state.read().expect("cache lock");
        Some(state.objects.get(key).cloned())
    }

    /// The objects under `prefix` that `filter` selects, at the latest revision, once the
    /// cache has caught up with `at_least`; `None` when it does not in time (the caller reads
    /// the store).
    pub async fn snapshot(
        &self,
        prefix: &str,
        filter: &Filter,
        at_least: Revision,
    ) -> Option<Snapshot> {
        if !self.caught_up(at_least).await {
            return None;
        }
        let state = self.state.read().expect("cache lock");
        let items = state
            .objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| matches(filter, v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Snapshot {
            revision: state.revision,
            items,
        })
    }

    pub fn kind(&self) -> &'static Kind {
        self.kind
    }

    /// Tells the cache of a write of `obj` about to be given to the store as `stored` (through
    /// this kind's endpoint, `served` being its JSON as served): when the store's events carry
    /// written values, that write's event is served from `served` with the revision spliced
    /// in, and costs no parsing, nor does it for the controllers' feeds. Told before the write,
    /// as the event may be applied before the write returns.
    /// The object given is the controllers' view of the write (without copying it) when it is
    /// the caller's to give.
    pub fn expect(&self, stored: &Bytes, obj: Cow<'_, Value>, served: Unversioned) {
        let selectable = Selectable::of(self.kind, &obj);
        let view = self.parsed.is_wanted().then(|| match obj {
            Cow::Borrowed(obj) => parsed::view(obj),
            Cow::Owned(obj) => parsed::into_view(obj),
        });
        let expected = Expected {
            stored: stored.clone(),
            served,
            selectable,
            view,
            since: Instant::now(),
        };
        let mut pending = self.expected.lock().expect("expected lock");
        pending.insert(stored.as_ptr() as usize, expected);
    }

    /// Forgets a write told to [`KindCache::expect`] that failed.
    pub fn forget(&self, stored: &Bytes) {
        let mut pending = self.expected.lock().expect("expected lock");
        if let Entry::Occupied(e) = pending.entry(stored.as_ptr() as usize) {
            if e.get().stored.len() == stored.len() {
                e.remove();
            }
        }
    }

    /// Hands changes to the watchers they concern; drops watchers that are gone or too slow.
    fn dispatch(&self, changes: &[Arc<Change>]) {
        let mut watchers = self.watchers.lock().expect("watchers lock");
        watchers.retain(|w| {
            for change in changes {
                if !w.concerns(change) {
                    continue;
                }
                match w.queue.try_send(change.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(
                            kind = self.kind.plural,
                            "disconnecting a watcher too slow to keep up"
                        );
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// Drops every watcher: after a reload their streams end and clients start over.
    fn reset(&self) {
        self.watchers.lock().expect("watchers lock").clear();
    }

    /// Applies one store response; returns the changes to publish.
    fn apply(&self, events: &[Event], revision: Revision) -> Result<Vec<Arc<Change>>, String> {
        let mut state = self.state.write().expect("cache lock");
        let mut expected = self.expected.lock().expect("expected lock");
        let mut out = Vec::with_capacity(events.len().max(1));
        // Objects the writes gave for the controllers, kept once the locks are released.
        let mut views = Vec::new();
        for event in events {
            let change = match event {
                Event::Put { kv, .. } => {
                    let new = match expected.remove(&(kv.value.as_ptr() as usize)) {
                        Some(e) if e.stored.len() == kv.value.len() => {
                            let cached = Arc::new(Cached {
                                json: e.served.at(kv.mod_revision),
                                selectable: e.selectable,
                            });
                            if let Some(mut view) = e.view {
                                set_resource_version(&mut view, kv.mod_revision);
                                views.push((cached.clone(), view));
                            }
                            cached
                        }
                        _ => Arc::new(Cached::decode(self.kind, kv, kv.mod_revision)?),
                    };
                    let old = state.objects.insert(kv.key.clone(), new.clone());
                    Change::Put {
                        revision: kv.mod_revision,
                        key: kv.key.clone(),
                        new,
                        old,
                    }
                }
                Event::Delete { prev, revision } => {
                    state.objects.remove(&prev.key);
                    Change::Delete {
                        revision: *revision,
                        key: prev.key.clone(),
                        old: Arc::new(Cached::decode(self.kind, prev, *revision)?),
                    }
                }
            };
            let change = Arc::new(change);
            let now = Instant::now();
            state.history.push_back((now, change.clone()));
            while state.history.len() > self.history.changes {
                let stale = state.history.front().is_some_and(|(at, _)| {
                    now.duration_since(*at) > self.history.fresh
                        || state.history.len() > MAX_HISTORY
                });
                if !stale {
                    break;
                }
                if let Some((_, dropped)) = state.history.pop_front() {
                    state.oldest = dropped.revision().unwrap_or(state.oldest);
                }
            }
            out.push(change);
        }
        state.revision = state.revision.max(revision);
        if !expected.is_empty() {
            let now = Instant::now();
            expected.retain(|_, e| now.duration_since(e.since) < EXPECTED_FOR);
        }
        if events.is_empty() {
            out.push(Arc::new(Change::Progress(state.revision)));
        }
        drop((state, expected));
        // Before the changes reach the feeds (`dispatch`), which look for these.
        for (cached, view) in views {
            self.parsed.keep(&cached, Arc::new(view));
        }
        Ok(out)
    }

    /// Replaces everything with a fresh list (at start, and after losing the store watch).
    fn load(&self, objects: BTreeMap<String, Arc<Cached>>, revision: Revision) {
        let mut state = self.state.write().expect("cache lock");
        self.expected.lock().expect("expected lock").clear();
        *state = State {
            revision,
            objects,
            history: VecDeque::new(),
            oldest: revision,
        };
    }
}

/// Every kind's cache, made on first use.
pub struct WatchCache {
    store: Arc<dyn Store>,
    history: History,
    kinds: Mutex<HashMap<KindId, Arc<KindCache>>>,
}

/// A served kind: group, version, plural (found without allocating, as every write asks).
type KindId = (&'static str, &'static str, &'static str);

impl WatchCache {
    /// A cache keeping `history` per kind for watch resume.
    pub fn new(store: Arc<dyn Store>, history: History) -> Self {
        WatchCache {
            store,
            history,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of `kind` if it is loaded.
    pub fn loaded(&self, kind: &'static Kind) -> Option<Arc<KindCache>> {
        let kinds = self.kinds.lock().expect("caches lock");
        kinds.get(&Self::id(kind)).cloned()
    }

    fn id(kind: &'static Kind) -> KindId {
        (kind.group, kind.version, kind.plural)
    }

    /// The cache of `kind`, loading it on first use.
    /// A kind served in two group-versions has a cache per version, each in its own version.
    pub async fn of(&self, kind: &'static Kind) -> Result<Arc<KindCache>, StoreError> {
        let id = Self::id(kind);
        if let Some(cache) = self.kinds.lock().expect("caches lock").get(&id) {
            return Ok(cache.clone());
        }
        let (objects, revision) = list_all(self.store.as_ref(), kind).await?;
        let (progress_tx, progress_rx) = mpsc::channel(1);
        let cache = Arc::new(KindCache {
            kind,
            history: self.history,
            state: RwLock::new(State {
                revision,
                objects,
                history: VecDeque::new(),
                oldest: revision,
            }),
            watchers: Mutex::new(Vec::new()),
            applied: watch::channel(revision).0,
            progress: progress_tx,
            expected: Mutex::new(HashMap::new()),
            parsed: Recent::default(),
        });
        let mut kinds = self.kinds.lock().expect("caches lock");
        // Another request may have loaded it meanwhile; the first one stays.
        if let Some(existing) = kinds.get(&id) {
            return Ok(existing.clone());
        }
        kinds.insert(id, cache.clone());
        tokio::spawn(feed(self.store.clone(), cache.clone(), progress_rx));
        Ok(cache)
    }
}

async fn list_all(
    store: &dyn Store,
    kind: &'static Kind,
) -> Result<(BTreeMap<String, Arc<Cached>>, Revision), StoreError> {
    let mut objects = BTreeMap::new();
    let mut request = RangeRequest {
        prefix: kind.store_prefix(),
        limit: Some(10_000),
        ..RangeRequest::default()
    };
    loop {
        let page = store.range(request.clone()).await?;
        for kv in &page.kvs {
            let cached = Cached::decode(kind, kv, kv.mod_revision).map_err(StoreError::Backend)?;
            objects.insert(kv.key.clone(), Arc::new(cached));
        }
        if !page.more || page.kvs.is_empty() {
            return Ok((objects, page.revision));
        }
        request.revision = Some(page.revision);
        request.start_after = page.kvs.last().map(|kv| kv.key.clone());
    }
}

/// Follows the store for one kind for the life of the server; on losing the watch, lists again
/// and tells watchers to start over.
async fn feed(store: Arc<dyn Store>, cache: Arc<KindCache>, mut progress: mpsc::Receiver<()>) {
    let prefix = cache.kind.store_prefix();
    loop {
        let from = cache.state.read().expect("cache lock").revision;
        let reason = match store.watch(&prefix, from).await {
            Ok(mut w) => loop {
                tokio::select! {
                    Some(()) = progress.recv() => w.request_progress(),
                    next = w.next() => match next {
                        None => break "the store closed the watch".to_string(),
                        Some(Err(e)) => break e.to_string(),
                        Some(Ok(resp)) => match cache.apply(&resp.events, resp.revision) {
                            Ok(changes) => {
                                cache.dispatch(&changes);
                                cache.applied.send_replace(resp.revision);
                            }
                            Err(e) => break e,
                        },
                    },
                }
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(kind = cache.kind.plural, %reason, "watch cache lost its store watch; reloading");
        tokio::time::sleep(Duration::from_millis(200)).await;
        match list_all(store.as_ref(), cache.kind).await {
            Ok((objects, revision)) => {
                cache.load(objects, revision);
                cache.reset();
                cache.applied.send_replace(revision);
            }
            Err(e) => {
                tracing::warn!(kind = cache.kind.plural, error = %e, "reloading the watch cache")
            }
        }
    }
}

/// The event a change is for this watcher, if any: selectors make an update an ADDED when the
/// object starts matching and a DELETED when it stops.
pub fn translate<'a>(change: &'a Change, filter: &Filter) -> Option<(&'static str, &'a Cached)> {
    match change {
        Change::Put { new, old, .. } => {
            let now = matches(filter, new);
            let before = old.as_ref().is_some_and(|o| matches(filter, o));
            match (before, now) {
                (false, true) => Some(("ADDED", new)),
                (true, true) => Some(("MODIFIED", new)),
                (true, false) => Some(("DELETED", new)),
                (false, false) => None,
            }
        }
        Change::Delete { old, .. } => matches(filter, old).then_some(("DELETED", old)),
        Change::Progress(_) | Change::Reset => None,
    }
}

/// Whether `filter` matches a cached object.
pub fn matches(filter: &Filter, obj: &Cached) -> bool {
    filter.matches(&obj.selectable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_store::{RedbOptions, RedbStore};

    #[test]
    fn unversioned_json_is_serde_json_s_and_takes_its_revision_in_the_metadata() {
        let cases = [
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "namespace": "default"}, "data": {"k": "v\"}"}}),
            // A resourceVersion given is not kept: the spliced one replaces it.
            json!({"metadata": {"name": "c", "resourceVersion": "7", "labels": {"a": "b"}}}),
            json!({"kind": "X", "metadata": {}}),
            json!({"metadata": {"resourceVersion": "7"}}),
            json!({"kind": "X"}),
        ];
        for obj in cases {
            let mut bare = obj.clone();
            if let Some(meta) = bare.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.shift_remove("resourceVersion");
            }
            let unversioned = Unversioned::of(&obj);
            assert_eq!(
                unversioned.json,
                serde_json::to_vec(&bare).unwrap(),
                "{obj}"
            );
            let served: Value = serde_json::from_slice(&unversioned.at(42)).unwrap();
            let mut want = bare.clone();
            set_resource_version(&mut want, 42);
            assert_eq!(served, want, "{obj}");
        }
    }

    #[tokio::test]
    async fn an_expected_write_is_served_as_expected_and_none_is_kept_after() {
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(RedbOptions::default()).unwrap());
        let cache = WatchCache::new(store.clone(), History::default());
        let kind = skiff_api::kinds::find("", "v1", "configmaps").unwrap();
        let cms = cache.of(kind).await.unwrap();
        let applied = |at: Revision| {
            let mut applied = cms.applied.subscribe();
            async move { applied.wait_for(|r| *r >= at).await.map(|_| ()) }
        };
        let expected_count = || cms.expected.lock().unwrap().len();
        let served = |key: String, at: Revision| {
            let cms = cms.clone();
            async move {
                let got = cms.object(&key, at).await.unwrap().unwrap();
                serde_json::from_slice::<Value>(&got.json).unwrap()
            }
        };

        // Once a write made after the cache began is applied, its feed follows the store's
        // writes themselves (it began by reading what it had missed back from the store).
        let warm_up = kind.store_key(Some("default"), "warm-up");
        let warm = store.create(&warm_up, "{}".into()).await.unwrap();
        applied(warm.mod_revision).await.unwrap();

        // What the cache is told is marked, so that the test tells it from the stored bytes.
        let key = kind.store_key(Some("default"), "c");
        let stored = json!({"metadata": {"name": "c", "namespace": "default"}});
        let bytes = Unversioned::of(&stored).json;
        let mut marked = stored.clone();
        marked["data"] = json!({"expected": "yes"});
        cms.expect(&bytes, Cow::Borrowed(&marked), Unversioned::of(&marked));
        let written = store.create(&key, bytes.clone()).await.unwrap();
        applied(written.mod_revision).await.unwrap();
        let mut want = marked.clone();
        set_resource_version(&mut want, written.mod_revision);
        assert_eq!(served(key, written.mod_revision).await, want);
        assert_eq!(expected_count(), 0, "taken by its event");

        // Equal bytes in another allocation are another write's: decoded from the store.
        let other = kind.store_key(Some("default"), "d");
        let stored = json!({"metadata": {"name": "d", "namespace": "default"}});
        let told = Unversioned::of(&stored).json;
        cms.expect(&told, Cow::Borrowed(&marked), Unversioned::of(&marked));
        let given = Bytes::from(told.to_vec());
        let written = store.create(&other, given).await.unwrap();
        applied(written.mod_revision).await.unwrap();
        let got = served(other, written.mod_revision).await;
        assert_eq!(got["metadata"]["name"], "d");
        assert!(got.get("data").is_none());
        assert_eq!(expected_count(), 1, "still waiting for its own write");
        cms.forget(&told);
        assert_eq!(expected_count(), 0, "forgotten when its write failed");
    }

    #[tokio::test]
    async fn a_watcher_that_stops_reading_is_disconnected_not_buffered() {
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(RedbOptions::default()).unwrap());
        let cache = WatchCache::new(store.clone(), History::default());
        let kind = skiff_api::kinds::find("", "v1", "configmaps").unwrap();
        let cms = cache.of(kind).await.unwrap();
        let everything = Filter::default();
        let slow = cms
            .subscribe(&kind.store_prefix(), &everything, false, None)
            .unwrap();
        let mut reading = cms
            .subscribe(&kind.store_prefix(), &everything, false, None)
            .unwrap();
        let writes = WATCHER_QUEUE + 10;
        for i in 0..writes {
            let key = kind.store_key(Some("default"), &format!("c{i}"));
            let value = format!(r#"{{"metadata":{{"name":"c{i}","namespace":"default"}}}}"#);
            store.create(&key, value.into()).await.unwrap();
            // The reading watcher keeps up.
            while let Ok(change) = reading.live.try_recv() {
                assert!(change.revision().is_some());
            }
        }
        // Wait until the feed has handed out every write.
        let last = store.current_revision().await.unwrap();
        let mut applied = cms.applied.subscribe();
        applied.wait_for(|r| *r >= last).await.unwrap();
        let mut live = slow.live;
        let mut queued = 0;
        while live.recv().await.is_some() {
            queued += 1;
        }
        assert_eq!(
            queued, WATCHER_QUEUE,
            "the slow watcher got what its queue held, then its end"
        );
        assert_eq!(
            cms.watchers.lock().unwrap().len(),
            1,
            "only the reading watcher is left"
        );
    }

    /// Writes `count` ConfigMaps and waits until the cache applied them; answers the revision
    /// of the first.
    async fn burst(store: &Arc<dyn Store>, cms: &KindCache, count: usize) -> Revision {
        let kind = cms.kind;
        let mut first = None;
        for i in 0..count {
            let key = kind.store_key(Some("default"), &format!("b{i}"));
            let value = format!(r#"{{"metadata":{{"name":"b{i}","namespace":"default"}}}}"#);
            let revision = store.create(&key, value.into()).await.unwrap().mod_revision;
            first.get_or_insert(revision);
        }
        let last = store.current_revision().await.unwrap();
        cms.applied
            .subscribe()
            .wait_for(|r| *r >= last)
            .await
            .unwrap();
        first.unwrap()
    }

    #[tokio::test]
    async fn recent_changes_are_kept_beyond_the_count_so_a_watch_resumes() {
        let kind = skiff_api::kinds::find("", "v1", "configmaps").unwrap();
        let everything = Filter::default();
        for (fresh, resumes) in [(Duration::from_secs(75), true), (Duration::ZERO, false)] {
            let store: Arc<dyn Store> =
                Arc::new(RedbStore::in_memory(RedbOptions::default()).unwrap());
            let cache = WatchCache::new(store.clone(), History { changes: 10, fresh });
            let cms = cache.of(kind).await.unwrap();
            let first = burst(&store, &cms, 50).await;
            let resumed = cms.subscribe(&kind.store_prefix(), &everything, false, Some(first));
            match resumed {
                Ok(sub) if resumes => {
                    assert_eq!(sub.backlog.len(), 49, "every change after the first")
                }
                Err(WatchRefusal::TooOld { .. }) if !resumes => {}
                Ok(_) => panic!("fresh {fresh:?}: resumed from beyond the last 10 changes"),
                Err(_) => panic!("fresh {fresh:?}: young changes were dropped"),
            }
        }
    }
}
