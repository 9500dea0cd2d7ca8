//! The embedded store on redb: multi-version history, group commit, watch replay and compaction.
//!
//! Layout (three tables):
//! - `history`: (key, mod revision) → [`Record`]: every retained version of every key, tombstones
//!   included; a read at revision R takes, per key, the newest version at or below R.
//! - `log`: revision → the keys written at that revision, for watch replay and compaction.
//! - `meta`: the format marker, the current revision and the compaction point.
//!
//! Writes go through one writer thread that takes every request waiting and commits them in one
//! redb transaction (group commit, one fsync); each request keeps its own revision and its guards
//! see the requests batched before it. A request is answered only after the commit is durable.
//! Reads use redb snapshots and never wait for the writer.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle};
use tokio::sync::oneshot;

use crate::codec::{decode_keys, encode_keys, Record};
use crate::watch::{Committed, History, Hub};
use crate::{
    prefix_end, Event, GetResponse, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision,
    Store, StoreError, Txn, TxnResponse, Watch, DEFAULT_PROGRESS_INTERVAL,
};

type HistoryKey<'a> = (&'a [u8], u64);

const HISTORY: TableDefinition<HistoryKey, &[u8]> = TableDefinition::new("history");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"skiff-store/1";
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";
const REDB_MAGIC: &[u8] = b"redb";

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// History kept for reads at past revisions and watch resume; older history is compacted.
    pub history_window: Duration,
    /// How often the writer checks whether history has fallen out of the window.
    pub compaction_interval: Duration,
    /// How often watches send progress notifications by themselves.
    pub progress_interval: Duration,
    /// The most write requests committed together.
    pub max_batch: usize,
    /// redb's page cache. The API server keeps its own watch cache of every object, so this
    /// only needs to hold the B-tree's upper levels and recent writes.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            history_window: Duration::from_secs(5 * 60),
            compaction_interval: Duration::from_secs(30),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            max_batch: 512,
            cache_bytes: 32 << 20,
        }
    }
}

/// The embedded store: a redb file, or redb in memory for tests.
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<(std_mpsc::Sender<WriteRequest>, JoinHandle<()>)>>,
}

struct Shared {
    db: Database,
    /// Where the data lives, for error messages.
    path: String,
    /// The last committed revision (also in `meta`).
    current: AtomicI64,
    hub: Hub,
    options: RedbOptions,
}

enum WriteRequest {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    Compact(Revision, oneshot::Sender<Result<(), StoreError>>),
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. A file that is not a Skiff store, or is damaged,
    /// gives an error naming it; nothing is ever reset silently.
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        check_magic(path, &name)?;
        let db = open_checked(path, &name, options.cache_bytes)?;
        Self::start(db, name, options)
    }

    /// A store that lives in memory only (the `memory` backend, for tests).
    pub fn in_memory(options: RedbOptions) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| open_error("<memory>", e.into()))?;
        Self::start(db, "<memory>".to_string(), options)
    }

    fn start(db: Database, path: String, options: RedbOptions) -> Result<Self, StoreError> {
        let (revision, _) = init_meta(&db, &path)?;
        let shared = Arc::new(Shared {
            db,
            path,
            current: AtomicI64::new(revision),
            hub: Hub::new(),
            options,
        });
        let (tx, rx) = std_mpsc::channel();
        let writer_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(move || Writer::new(writer_shared).run(rx))
            .map_err(|e| StoreError::Io {
                path: shared.path.clone(),
                source: e,
            })?;
        tracing::debug!(path = %shared.path, revision, "store opened");
        Ok(Self {
            shared,
            writer: Mutex::new(Some((tx, handle))),
        })
    }

    /// The compaction point: reads below it fail with `Compacted` (0 if never compacted).
    pub fn compacted_revision(&self) -> Result<Revision, StoreError> {
        let rtx = self
            .shared
            .db
            .begin_read()
            .map_err(|e| self.shared.err(e))?;
        let meta = rtx.open_table(META).map_err(|e| self.shared.err(e))?;
        self.shared.meta_i64(&meta, COMPACTED_KEY)
    }

    /// The number of live keys (a full scan; for inspection, not the hot path).
    pub fn key_count(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        let mut req = RangeRequest::prefix("");
        loop {
            let page = self.shared.range(&RangeRequest {
                limit: Some(10_000),
                ..req.clone()
            })?;
            count += page.kvs.len();
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => {
                    req.start_after = Some(last.key.clone());
                    req.revision = Some(page.revision);
                }
                _ => return Ok(count),
            }
        }
    }

    fn send(&self, request: WriteRequest) -> Result<(), StoreError> {
        let guard = self.writer.lock().expect("writer lock");
        let (tx, _) = guard.as_ref().ok_or(StoreError::Closed)?;
        tx.send(request).map_err(|_| StoreError::Closed)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Close the queue and wait for the writer so the file is released when drop returns.
        if let Some((tx, handle)) = self.writer.lock().expect("writer lock").take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<GetResponse, StoreError> {
        self.shared.get(key, revision)
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.shared.range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        let (tx, rx) = oneshot::channel();
        self.send(WriteRequest::Txn(txn, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        Ok(self.shared.hub.watch(
            Arc::downgrade(&self.shared),
            prefix,
            after,
            self.shared.options.progress_interval,
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(WriteRequest::Compact(revision, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.current.load(Ordering::Acquire))
    }

    /// The writer puts each op's value into its event as given (`next_version`).
    fn events_carry_written_values(&self) -> bool {
        true
    }
}

/// Refuses files that are clearly not redb before redb sees them.
fn check_magic(path: &Path, name: &str) -> Result<(), StoreError> {
    use std::io::Read;
    let mut head = [0u8; 4];
    match std::fs::File::open(path) {
        Ok(mut f) => match f.read(&mut head) {
            Ok(0) => Ok(()),
            Ok(n) if head[..n] == REDB_MAGIC[..n] && n == head.len() => Ok(()),
            Ok(_) => Err(StoreError::Foreign {
                path: name.to_string(),
                reason: "the file is not a redb database".into(),
            }),
            Err(source) => Err(StoreError::Io {
                path: name.to_string(),
                source,
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: name.to_string(),
            source,
        }),
    }
}

/// Opens the file and verifies every page's checksum, so damage is found at start (naming the
/// file) rather than while serving. redb panics on some malformed files instead of returning an
/// error; those panics are contained here and reported as corruption.
fn open_checked(path: &Path, name: &str, cache_bytes: usize) -> Result<Database, StoreError> {
    let opened = std::panic::catch_unwind(|| {
        let mut db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| open_error(name, e.into()))?;
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(path = %name, "store was repaired to its last durable commit")
            }
            Err(e) => return Err(open_error(name, e.into())),
        }
        Ok(db)
    });
    opened.unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(StoreError::Corrupt {
            path: name.to_string(),
            reason: format!("the file's structure is damaged (redb: {detail})"),
        })
    })
}

fn open_error(path: &str, err: redb::Error) -> StoreError {
    match err {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_string(),
        },
        redb::Error::UpgradeRequired(v) => StoreError::Foreign {
            path: path.to_string(),
            reason: format!("redb file format {v} is older than this build reads"),
        },
        other => redb_error(path, other),
    }
}

fn redb_error(path: &str, err: redb::Error) -> StoreError {
    match err {
        redb::Error::Io(source) => StoreError::Io {
            path: path.to_string(),
            source,
        },
        redb::Error::Corrupted(reason) => StoreError::Corrupt {
            path: path.to_string(),
            reason,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_string(),
        },
        // redb refuses every operation after a failed write until the file is reopened.
        redb::Error::PreviousIo => StoreError::Io {
            path: path.to_string(),
            source: std::io::Error::other(
                "an earlier write failed (is the disk full?); restart Skiff once it has room",
            ),
        },
        other => StoreError::Backend(format!("{path}: {other}")),
    }
}

/// Writes the format marker into a new store, or checks it in an existing one; returns the
/// current revision and the compaction point.
fn init_meta(db: &Database, path: &str) -> Result<(Revision, Revision), StoreError> {
    let err = |e: redb::Error| redb_error(path, e);
    let wtx = db.begin_write().map_err(|e| err(e.into()))?;
    let existing: Vec<String> = wtx
        .list_tables()
        .map_err(|e| err(e.into()))?
        .map(|t| t.name().to_string())
        .collect();
    {
        let mut meta = wtx.open_table(META).map_err(|e| err(e.into()))?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_vec());
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(StoreError::Foreign {
                    path: path.to_string(),
                    reason: format!(
                        "store format {:?}, this build reads {:?}",
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    ),
                })
            }
            None if !existing.is_empty() => {
                return Err(StoreError::Foreign {
                    path: path.to_string(),
                    reason: format!(
                        "a redb database with other tables ({})",
                        existing.join(", ")
                    ),
                })
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(|e| err(e.into()))?;
                meta.insert(REVISION_KEY, &1u64.to_be_bytes()[..])
                    .map_err(|e| err(e.into()))?;
                meta.insert(COMPACTED_KEY, &0u64.to_be_bytes()[..])
                    .map_err(|e| err(e.into()))?;
            }
        }
        wtx.open_table(HISTORY).map_err(|e| err(e.into()))?;
        wtx.open_table(LOG).map_err(|e| err(e.into()))?;
    }
    wtx.commit().map_err(|e| err(e.into()))?;

    let rtx = db.begin_read().map_err(|e| err(e.into()))?;
    let meta = rtx.open_table(META).map_err(|e| err(e.into()))?;
    let read = |key: &str| -> Result<Revision, StoreError> {
        let v = meta.get(key).map_err(|e| err(e.into()))?;
        decode_i64(path, key, v.as_ref().map(|g| g.value()))
    };
    Ok((read(REVISION_KEY)?, read(COMPACTED_KEY)?))
}

fn decode_i64(path: &str, key: &str, bytes: Option<&[u8]>) -> Result<i64, StoreError> {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_be_bytes(b) as i64)
        .ok_or_else(|| StoreError::Corrupt {
            path: path.to_string(),
            reason: format!("meta entry {key:?} is missing or malformed"),
        })
}

/// A read snapshot of the history table, checked to be readable at `at`.
struct Snapshot {
    history: redb::ReadOnlyTable<HistoryKey<'static>, &'static [u8]>,
    /// The revision to read at.
    at: Revision,
    /// The latest revision committed in the snapshot.
    current: Revision,
}

fn to_kv(key: &str, mod_revision: Revision, record: Record) -> Option<KeyValue> {
    match record {
        Record::Put {
            create_revision,
            version,
            value,
        } => Some(KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision,
            version,
        }),
        Record::Tombstone => None,
    }
}

impl Shared {
    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        redb_error(&self.path, e.into())
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn meta_i64(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<i64, StoreError> {
        let v = meta.get(key).map_err(|e| self.err(e))?;
        decode_i64(&self.path, key, v.as_ref().map(|g| g.value()))
    }

    /// Opens a snapshot and checks that `revision` is readable in it.
    fn snapshot(&self, revision: Option<Revision>) -> Result<Snapshot, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = rtx.open_table(META).map_err(|e| self.err(e))?;
        let current = self.meta_i64(&meta, REVISION_KEY)?;
        let compacted = self.meta_i64(&meta, COMPACTED_KEY)?;
        let at = revision.unwrap_or(current);
        if at > current {
            return Err(StoreError::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: Some(compacted),
            });
        }
        let history = rtx.open_table(HISTORY).map_err(|e| self.err(e))?;
        Ok(Snapshot {
            history,
            at,
            current,
        })
    }

    fn get(&self, key: &str, revision: Option<Revision>) -> Result<GetResponse, StoreError> {
        let Snapshot {
            history,
            at,
            current,
        } = self.snapshot(revision)?;
        let kv = version_at(&history, key, at as u64)
            .map_err(|e| self.err(e))?
            .map(|(rev, bytes)| Record::decode(&bytes).map(|r| to_kv(key, rev as i64, r)))
            .transpose()
            .map_err(|e| self.corrupt(e))?
            .flatten();
        Ok(GetResponse {
            kv,
            revision: revision.unwrap_or(current),
        })
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let Snapshot { history, at, .. } = self.snapshot(req.revision)?;
        let prefix = req.prefix.as_bytes();
        let start = match req.start_after.as_deref() {
            Some(after) if after.as_bytes() >= prefix => {
                Bound::Excluded((after.as_bytes(), u64::MAX))
            }
            _ => Bound::Included((prefix, 0)),
        };
        let end_key = prefix_end(prefix);
        let end = match end_key.as_deref() {
            Some(end) => Bound::Excluded((end, 0)),
            None => Bound::Unbounded,
        };
        let limit = req.limit.unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        let mut more = false;
        // The newest version at or below `at` of the key being scanned.
        let mut candidate: Option<(Vec<u8>, u64, Vec<u8>)> = None;
        let emit = |cand: Option<(Vec<u8>, u64, Vec<u8>)>,
                    kvs: &mut Vec<KeyValue>,
                    more: &mut bool|
         -> Result<bool, StoreError> {
            let Some((key, rev, bytes)) = cand else {
                return Ok(false);
            };
            let record = Record::decode(&bytes).map_err(|e| self.corrupt(e))?;
            if record == Record::Tombstone {
                return Ok(false);
            }
            if kvs.len() >= limit {
                *more = true;
                return Ok(true);
            }
            let key =
                String::from_utf8(key).map_err(|_| self.corrupt("key is not UTF-8".into()))?;
            kvs.extend(to_kv(&key, rev as i64, record));
            Ok(false)
        };
        let iter = history
            .range::<HistoryKey>((start, end))
            .map_err(|e| self.err(e))?;
        for entry in iter {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let (key, rev) = k.value();
            if candidate
                .as_ref()
                .is_some_and(|(ck, _, _)| ck.as_slice() != key)
                && emit(candidate.take(), &mut kvs, &mut more)?
            {
                break;
            }
            if rev <= at as u64 {
                candidate = Some((key.to_vec(), rev, v.value().to_vec()));
            }
        }
        if !more {
            emit(candidate, &mut kvs, &mut more)?;
        }
        Ok(RangeResponse {
            kvs,
            revision: at,
            more,
        })
    }
}

/// The newest version of `key` at or below `at`.
fn version_at(
    history: &impl ReadableTable<HistoryKey<'static>, &'static [u8]>,
    key: &str,
    at: u64,
) -> Result<Option<(u64, Vec<u8>)>, redb::StorageError> {
    let k = key.as_bytes();
    let mut iter = history.range::<HistoryKey>((k, 0)..=(k, at))?;
    match iter.next_back() {
        Some(entry) => {
            let (key, value) = entry?;
            Ok(Some((key.value().1, value.value().to_vec())))
        }
        None => Ok(None),
    }
}

impl History for Shared {
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision), StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = rtx.open_table(META).map_err(|e| self.err(e))?;
        let current = self.meta_i64(&meta, REVISION_KEY)?;
        let compacted = self.meta_i64(&meta, COMPACTED_KEY)?;
        if after + 1 < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: Some(compacted),
            });
        }
        let log = rtx.open_table(LOG).map_err(|e| self.err(e))?;
        let history = rtx.open_table(HISTORY).map_err(|e| self.err(e))?;
        let mut events = Vec::new();
        let from = (after + 1).max(0) as u64;
        for entry in log.range(from..=current as u64).map_err(|e| self.err(e))? {
            let (rev, keys) = entry.map_err(|e| self.err(e))?;
            let rev = rev.value();
            for key in decode_keys(keys.value()).map_err(|e| self.corrupt(e))? {
                if key.starts_with(prefix) {
                    events.push(self.event_at(&history, &key, rev)?);
                }
            }
        }
        Ok((events, current))
    }
}

impl Shared {
    /// The event that wrote `key` at `rev`, with the version before it when still retained.
    fn event_at(
        &self,
        history: &impl ReadableTable<HistoryKey<'static>, &'static [u8]>,
        key: &str,
        rev: u64,
    ) -> Result<Event, StoreError> {
        let decode = |found: Option<(u64, Vec<u8>)>| -> Result<Option<KeyValue>, StoreError> {
            match found {
                Some((r, bytes)) => Ok(to_kv(
                    key,
                    r as i64,
                    Record::decode(&bytes).map_err(|e| self.corrupt(e))?,
                )),
                None => Ok(None),
            }
        };
        let this = history
            .get((key.as_bytes(), rev))
            .map_err(|e| self.err(e))?
            .map(|v| (rev, v.value().to_vec()));
        let Some(this_bytes) = this else {
            return Err(self.corrupt(format!(
                "revision log names {key:?} at {rev} but history lacks it"
            )));
        };
        let prev = if rev > 0 {
            decode(version_at(history, key, rev - 1).map_err(|e| self.err(e))?)?
        } else {
            None
        };
        match decode(Some(this_bytes))? {
            Some(kv) => Ok(Event::Put { kv, prev }),
            None => match prev {
                Some(prev) => Ok(Event::Delete {
                    prev,
                    revision: rev as i64,
                }),
                None => Err(self.corrupt(format!(
                    "delete of {key:?} at {rev} has no previous version"
                ))),
            },
        }
    }
}

/// The single writer: batches requests, commits them durably, publishes them to watchers.
struct Writer {
    shared: Arc<Shared>,
    /// Requests in the last batch: about as many writers are waiting to write again.
    last_batch: usize,
    /// (when, revision) samples, to find the revision at the edge of the history window.
    samples: VecDeque<(Instant, Revision)>,
    last_compaction_check: Instant,
}

type Reply = oneshot::Sender<Result<TxnResponse, StoreError>>;

/// The longest a batch waits for the writers of the previous batch to come back.
const GATHER_WAIT: Duration = Duration::from_micros(200);

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            last_batch: 1,
            samples: VecDeque::new(),
            last_compaction_check: Instant::now(),
        }
    }

    fn run(mut self, rx: std_mpsc::Receiver<WriteRequest>) {
        let interval = self.shared.options.compaction_interval;
        loop {
            let first = match rx.recv_timeout(interval) {
                Ok(req) => req,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.maybe_auto_compact();
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let batch = self.gather(first, &rx);
            self.last_batch = batch.len();
            let mut txns = Vec::new();
            let mut compactions = Vec::new();
            for req in batch {
                match req {
                    WriteRequest::Txn(txn, reply) => txns.push((txn, reply)),
                    WriteRequest::Compact(rev, reply) => compactions.push((rev, reply)),
                }
            }
            if !txns.is_empty() {
                self.commit_batch(txns);
            }
            for (rev, reply) in compactions {
                let _ = reply.send(self.compact(rev));
            }
            self.maybe_auto_compact();
        }
        tracing::debug!(path = %self.shared.path, "store writer stopped");
    }

    /// Takes every request already waiting. When the last batch was larger, its writers are
    /// probably about to write again (their answers were just sent): wait a moment for about as
    /// many, so that concurrent writers share one fsync instead of alternating small and large
    /// batches. A lone writer (a batch of one) never waits.
    fn gather(
        &self,
        first: WriteRequest,
        rx: &std_mpsc::Receiver<WriteRequest>,
    ) -> Vec<WriteRequest> {
        let max = self.shared.options.max_batch;
        let mut batch = vec![first];
        batch.extend(std::iter::from_fn(|| rx.try_recv().ok()).take(max - 1));
        let expected = self.last_batch.min(max);
        let deadline = Instant::now() + GATHER_WAIT;
        while batch.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        batch
    }

    fn commit_batch(&mut self, txns: Vec<(Txn, Reply)>) {
        let start = self.shared.current.load(Ordering::Acquire);
        match self.write_batch(start, &txns) {
            Ok((outcomes, committed)) => {
                let revision = start + committed.len() as i64;
                self.shared.current.store(revision, Ordering::Release);
                for c in committed {
                    self.shared.hub.publish(c);
                }
                for ((_, reply), outcome) in txns.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                tracing::error!(path = %self.shared.path, %err, batch = txns.len(), "store commit failed");
                for (_, reply) in txns {
                    let _ = reply.send(Err(err.duplicate()));
                }
            }
        }
    }

    /// Applies each transaction whose guards hold, in order, in one durable redb transaction.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &self,
        start: Revision,
        txns: &[(Txn, Reply)],
    ) -> Result<(Vec<Result<TxnResponse, StoreError>>, Vec<Committed>), StoreError> {
        let shared = &self.shared;
        let wtx = shared.db.begin_write().map_err(|e| shared.err(e))?;
        let mut outcomes = Vec::with_capacity(txns.len());
        let mut committed = Vec::new();
        {
            let mut history = wtx.open_table(HISTORY).map_err(|e| shared.err(e))?;
            let mut log = wtx.open_table(LOG).map_err(|e| shared.err(e))?;
            let mut revision = start;
            for (txn, _) in txns {
                match self.apply(&mut history, &mut log, revision + 1, txn)? {
                    Ok((response, events)) => {
                        revision += 1;
                        committed.push(Committed { revision, events });
                        outcomes.push(Ok(response));
                    }
                    Err(guard) => outcomes.push(Err(guard)),
                }
            }
            if revision != start {
                let mut meta = wtx.open_table(META).map_err(|e| shared.err(e))?;
                meta.insert(REVISION_KEY, &(revision as u64).to_be_bytes()[..])
                    .map_err(|e| shared.err(e))?;
            }
        }
        wtx.commit().map_err(|e| shared.err(e))?;
        Ok((outcomes, committed))
    }

    /// Checks every guard of `txn`, then writes it at `revision`. The outer error is a storage
    /// failure (aborting the batch); the inner one a failed guard (only this transaction fails).
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        history: &mut Table<HistoryKey<'static>, &'static [u8]>,
        log: &mut Table<u64, &'static [u8]>,
        revision: Revision,
        txn: &Txn,
    ) -> Result<Result<(TxnResponse, Vec<Event>), StoreError>, StoreError> {
        let shared = &self.shared;
        let mut current = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            let key = op.key();
            let found = version_at(history, key, u64::MAX).map_err(|e| shared.err(e))?;
            let existing = match found {
                Some((rev, bytes)) => to_kv(
                    key,
                    rev as i64,
                    Record::decode(&bytes).map_err(|e| shared.corrupt(e))?,
                ),
                None => None,
            };
            if let Err(guard) = op.check(existing.as_ref()) {
                return Ok(Err(guard));
            }
            current.push(existing);
        }
        let mut results = Vec::with_capacity(txn.ops.len());
        let mut events = Vec::with_capacity(txn.ops.len());
        for (op, existing) in txn.ops.iter().zip(current) {
            let (record, result, event) = next_version(op, existing, revision);
            history
                .insert(
                    (op.key().as_bytes(), revision as u64),
                    record.encode().as_slice(),
                )
                .map_err(|e| shared.err(e))?;
            results.push(result);
            events.push(event);
        }
        log.insert(
            revision as u64,
            encode_keys(txn.ops.iter().map(Op::key)).as_slice(),
        )
        .map_err(|e| shared.err(e))?;
        Ok(Ok((TxnResponse { revision, results }, events)))
    }

    fn maybe_auto_compact(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_compaction_check) < self.shared.options.compaction_interval
        {
            return;
        }
        self.last_compaction_check = now;
        self.samples
            .push_back((now, self.shared.current.load(Ordering::Acquire)));
        let window = self.shared.options.history_window;
        // The newest sample older than the window marks where history may start.
        let mut target = None;
        while let Some(&(when, rev)) = self.samples.front() {
            if now.duration_since(when) < window {
                break;
            }
            target = Some(rev);
            self.samples.pop_front();
        }
        if let Some(rev) = target {
            match self.compact(rev) {
                Ok(()) | Err(StoreError::Compacted { .. }) => {}
                Err(err) => {
                    tracing::warn!(path = %self.shared.path, %err, revision = rev, "automatic compaction failed")
                }
            }
        }
    }

    /// Drops every version that no read at `revision` or later, and no watch of events at
    /// `revision` or later, can need.
    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let shared = &self.shared;
        let wtx = shared.db.begin_write().map_err(|e| shared.err(e))?;
        {
            let mut meta = wtx.open_table(META).map_err(|e| shared.err(e))?;
            let current = shared.meta_i64(&meta, REVISION_KEY)?;
            let compacted = shared.meta_i64(&meta, COMPACTED_KEY)?;
            if revision > current {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            if revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted: Some(compacted),
                });
            }
            let mut log = wtx.open_table(LOG).map_err(|e| shared.err(e))?;
            let mut history = wtx.open_table(HISTORY).map_err(|e| shared.err(e))?;
            let entries: Vec<(u64, Vec<String>)> = log
                .range(..revision as u64)
                .map_err(|e| shared.err(e))?
                .map(|entry| {
                    let (rev, keys) = entry.map_err(|e| shared.err(e))?;
                    Ok((
                        rev.value(),
                        decode_keys(keys.value()).map_err(|e| shared.corrupt(e))?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
            for (rev, keys) in &entries {
                for key in keys {
                    prune_key(&mut history, key, *rev, revision as u64)
                        .map_err(|e| shared.err(e))?;
                }
                log.remove(rev).map_err(|e| shared.err(e))?;
            }
            meta.insert(COMPACTED_KEY, &(revision as u64).to_be_bytes()[..])
                .map_err(|e| shared.err(e))?;
            tracing::debug!(path = %shared.path, revision, revisions = entries.len(), "compacted");
        }
        wtx.commit().map_err(|e| shared.err(e))
    }
}

/// Compaction for one (key, rev) with rev below the compaction point `until`: older versions are
/// superseded by this one; a tombstone goes too unless a later version below `until` follows it.
fn prune_key(
    history: &mut Table<HistoryKey<'static>, &'static [u8]>,
    key: &str,
    rev: u64,
    until: u64,
) -> Result<(), redb::StorageError> {
    let k = key.as_bytes();
    let older: Vec<u64> = history
        .range::<HistoryKey>((k, 0)..(k, rev))?
        .map(|e| e.map(|(key, _)| key.value().1))
        .collect::<Result<_, _>>()?;
    for r in older {
        history.remove((k, r))?;
    }
    let is_tombstone = history
        .get((k, rev))?
        .is_some_and(|v| v.value() == Record::Tombstone.encode().as_slice());
    if is_tombstone {
        let later_below = history
            .range::<HistoryKey>((k, rev + 1)..(k, until))?
            .next()
            .is_some();
        if !later_below {
            history.remove((k, rev))?;
        }
    }
    Ok(())
}

/// The record `op` writes at `revision` over `existing`, what the caller gets back, and the event.
fn next_version(
    op: &Op,
    existing: Option<KeyValue>,
    revision: Revision,
) -> (Record, OpResult, Event) {
    match op {
        Op::Create { key, value } | Op::Update { key, value, .. } => {
            let (create_revision, version) = existing
                .as_ref()
                .map_or((revision, 1), |kv| (kv.create_revision, kv.version + 1));
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision,
                mod_revision: revision,
                version,
            };
            let record = Record::Put {
                create_revision,
                version,
                value: value.clone(),
            };
            (
                record,
                OpResult::Put(kv.clone()),
                Event::Put { kv, prev: existing },
            )
        }
        Op::Delete { .. } => {
            let prev = existing.expect("guard checked the key exists");
            (
                Record::Tombstone,
                OpResult::Deleted(prev.clone()),
                Event::Delete { prev, revision },
            )
        }
    }
}
