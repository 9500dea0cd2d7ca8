//! The revisioned key-value store behind the Skiff API server: one trait, several backends.
//!
//! The semantics are those the Kubernetes API server needs from etcd v3, and every backend
//! (`memory`, `redb`, `etcd`) provides exactly these; `tests/conformance.rs` checks each one.
//!
//! # Revisions
//! - The store has one global revision, an `i64` starting at 1 for an empty store and strictly
//!   increasing by one for every successful write transaction. It survives restarts.
//! - Every key carries its `create_revision` (the revision that created it), `mod_revision` (the
//!   revision of its last change) and `version` (1 on creation, +1 on every update). A key deleted
//!   and created again starts over with a new `create_revision` and version 1.
//!
//! # Reads
//! - [`Store::get`] and [`Store::range`] read the latest state, or the state at an earlier revision
//!   still retained. A revision older than the compaction point fails with
//!   [`StoreError::Compacted`]; a revision in the future fails with [`StoreError::FutureRevision`].
//! - A range is over a key prefix, in byte order of the keys, with a `limit`. Its response carries
//!   the revision it was read at; passing that revision and the last key returned (`start_after`)
//!   continues the same consistent snapshot while writes go on.
//! - Reads are linearizable: a read started after a write was acknowledged sees that write.
//!
//! # Writes
//! - A [`Txn`] is a list of operations on distinct keys, each with a guard: [`Op::Create`] needs the
//!   key absent, [`Op::Update`] needs its `mod_revision` to equal the expected one, [`Op::Delete`]
//!   needs the key present (and its `mod_revision` equal to the expected one, if given). Either every
//!   guard holds and all operations are applied at one new revision, or nothing is written and the
//!   first failing guard is reported ([`StoreError::AlreadyExists`], [`StoreError::Conflict`],
//!   [`StoreError::NotFound`]).
//! - Nothing is acknowledged before it is durable (for the embedded store: fsynced).
//!
//! # Watches
//! - [`Store::watch`] delivers every change under a prefix with a revision greater than the start
//!   revision, in revision order, none missing and none duplicated. Deletes carry the previous value;
//!   updates carry it too when it is still retained.
//! - A response with no events is a progress notification: every event up to its revision has been
//!   delivered, even when nothing under the prefix changed. They come periodically (backend option)
//!   and on [`Watch::request_progress`].
//! - A start revision older than the compaction point fails with [`StoreError::Compacted`], at once
//!   or as the first item of the stream.
//!
//! # Compaction
//! [`Store::compact`] at revision C discards history older than C, as etcd does: reads at C and
//! later still work, reads before C fail with `Compacted`, and a watch can replay events from
//! revision C on (`after >= C - 1`). The embedded backend also compacts by itself, keeping a
//! configurable time window.

mod codec;
pub mod etcd;
pub mod redb;
mod watch;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use crate::etcd::{EtcdOptions, EtcdStore};
pub use crate::redb::{RedbOptions, RedbStore};

/// A store revision. Revisions are positive; 0 means "none" where an API needs a sentinel.
pub type Revision = i64;

/// A key with its value and revision metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .finish()
    }
}

/// One guarded operation of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the key; fails with `AlreadyExists` if it exists.
    Create { key: String, value: Bytes },
    /// Replace the value; fails with `Conflict` unless the key's mod revision is `expected`.
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    /// Delete the key; fails with `NotFound` if absent, `Conflict` if `expected` is given and differs.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    /// Checks this operation's guard against the key's current state (`None`: absent).
    pub fn check(&self, existing: Option<&KeyValue>) -> Result<(), StoreError> {
        match (self, existing) {
            (Op::Create { key, .. }, Some(_)) => {
                Err(StoreError::AlreadyExists { key: key.clone() })
            }
            (Op::Delete { key, .. }, None) => Err(StoreError::NotFound { key: key.clone() }),
            (Op::Update { key, expected, .. }, None) => Err(StoreError::Conflict {
                key: key.clone(),
                expected: *expected,
                actual: None,
            }),
            (
                Op::Update { key, expected, .. }
                | Op::Delete {
                    key,
                    expected: Some(expected),
                },
                Some(kv),
            ) if kv.mod_revision != *expected => Err(StoreError::Conflict {
                key: key.clone(),
                expected: *expected,
                actual: Some(kv.mod_revision),
            }),
            _ => Ok(()),
        }
    }
}

/// Operations applied atomically at one revision if every guard holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn create(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Create {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn update(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
        expected: Revision,
    ) -> Self {
        self.ops.push(Op::Update {
            key: key.into(),
            value: value.into(),
            expected,
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>, expected: Option<Revision>) -> Self {
        self.ops.push(Op::Delete {
            key: key.into(),
            expected,
        });
        self
    }

    /// Checks what every backend refuses before touching storage.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Err(StoreError::InvalidTxn(
                "a transaction needs at least one operation".into(),
            ));
        }
        let mut keys: Vec<&str> = self.ops.iter().map(Op::key).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::InvalidTxn(format!(
                "key {:?} appears more than once in one transaction",
                w[0]
            )));
        }
        if let Some(k) = keys.iter().find(|k| k.is_empty()) {
            return Err(StoreError::InvalidTxn(format!("empty key {k:?}")));
        }
        Ok(())
    }
}

/// What one operation of a committed transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The key as written by a create or an update.
    Put(KeyValue),
    /// The key as it was before a delete.
    Deleted(KeyValue),
}

/// A committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

/// A single-key read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    pub kv: Option<KeyValue>,
    /// The revision the read was made at.
    pub revision: Revision,
}

/// A range read over a key prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub prefix: String,
    /// Read at this revision; `None` reads the latest state.
    pub revision: Option<Revision>,
    /// Return at most this many keys; `None` returns all.
    pub limit: Option<usize>,
    /// Start after this key (exclusive), to continue a previous page.
    pub start_after: Option<String>,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the range was read at; pass it to continue consistently.
    pub revision: Revision,
    /// More keys follow the last one returned.
    pub more: bool,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A create (`kv.version == 1`) or an update; `prev` is the value before an update when retained.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete at `revision`; `prev` is the key's last value.
    Delete { prev: KeyValue, revision: Revision },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// One message of a watch: events, or (when `events` is empty) a progress notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    pub events: Vec<Event>,
    /// Every event under the prefix up to this revision has been delivered.
    pub revision: Revision,
}

impl WatchResponse {
    pub fn is_progress(&self) -> bool {
        self.events.is_empty()
    }
}

/// A running watch. Dropping it cancels the watch.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchResponse, StoreError>>,
    progress: mpsc::Sender<()>,
}

impl Watch {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<WatchResponse, StoreError>>,
        progress: mpsc::Sender<()>,
    ) -> Self {
        Self { rx, progress }
    }

    /// The next response; `None` when the store closed the watch. After an `Err` the stream ends.
    pub async fn next(&mut self) -> Option<Result<WatchResponse, StoreError>> {
        self.rx.recv().await
    }

    /// Asks for a progress notification; it comes after every event already committed.
    pub fn request_progress(&self) {
        // A full queue already holds a request that will be answered.
        let _ = self.progress.try_send(());
    }
}

/// Errors of every backend. `Compacted`, `FutureRevision` and the guard failures are part of the
/// contract; the API server maps them onto Kubernetes `Status` reasons.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} was modified: expected mod revision {expected}, found {}", fmt_actual(*.actual))]
    Conflict {
        key: String,
        expected: Revision,
        /// The key's mod revision now; `None` if the key no longer exists.
        actual: Option<Revision>,
    },
    #[error("revision {requested} has been compacted{}", fmt_compacted(*.compacted))]
    Compacted {
        requested: Revision,
        /// Where history starts now, when the backend says.
        compacted: Option<Revision>,
    },
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    #[error("store file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path} is not a Skiff store: {reason}")]
    Foreign { path: String, reason: String },
    #[error("store file {path} is in use by another process")]
    Locked { path: String },
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A copy for each of several callers failed by one cause (I/O errors are not `Clone`).
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
            other => StoreError::Backend(other.to_string()),
        }
    }
}

fn fmt_compacted(compacted: Option<Revision>) -> String {
    compacted.map_or(String::new(), |c| format!(" (history starts at {c})"))
}

fn fmt_actual(actual: Option<Revision>) -> String {
    match actual {
        Some(r) => r.to_string(),
        None => "no key".to_string(),
    }
}

/// The store the API server runs on. Every method is safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key, at the latest revision or at `revision`.
    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<GetResponse, StoreError>;

    /// Reads keys under a prefix (see [`RangeRequest`]).
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError>;

    /// Applies a guarded transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Watches a prefix for changes after `after` (exclusive).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError>;

    /// Discards history before `revision`; the state at `revision` stays readable.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The latest committed revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Whether the watch event of a write carries the very bytes the write was given (the
    /// same allocation), so that a writer can recognise its own write's event without reading
    /// the value. An in-process store can; one behind the network cannot.
    fn events_carry_written_values(&self) -> bool {
        false
    }

    /// Creates a key that must not exist.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let resp = self.txn(Txn::new().create(key, value)).await?;
        Ok(single_put(resp))
    }

    /// Replaces a key's value if its mod revision is still `expected`.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let resp = self.txn(Txn::new().update(key, value, expected)).await?;
        Ok(single_put(resp))
    }

    /// Deletes a key (if its mod revision is still `expected`, when given); returns its last value
    /// and the revision of the delete.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let resp = self.txn(Txn::new().delete(key, expected)).await?;
        match resp.results.into_iter().next() {
            Some(OpResult::Deleted(prev)) => Ok((prev, resp.revision)),
            other => Err(StoreError::Backend(format!(
                "delete returned {other:?} instead of the deleted key"
            ))),
        }
    }
}

fn single_put(resp: TxnResponse) -> KeyValue {
    match resp.results.into_iter().next() {
        Some(OpResult::Put(kv)) => kv,
        other => unreachable!("a one-put transaction returned {other:?}"),
    }
}

/// The first key after every key that starts with `prefix` (etcd's "range end"); `None` when the
/// prefix is empty or all 0xff, meaning "to the end of the key space".
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// How often a watch sends progress notifications by itself, unless a backend option says otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_below_ff() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"/registry/pods/", Some(b"/registry/pods0")),
            (b"a", Some(b"b")),
            (b"a\xff", Some(b"b")),
            (b"\xff\xff", None),
            (b"", None),
        ];
        for (prefix, want) in cases {
            assert_eq!(prefix_end(prefix).as_deref(), *want, "prefix {prefix:?}");
        }
    }

    #[test]
    fn guards_against_the_current_state() {
        let kv = KeyValue {
            key: "k".into(),
            value: Bytes::new(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
        };
        let create = Op::Create {
            key: "k".into(),
            value: Bytes::new(),
        };
        let update = |expected| Op::Update {
            key: "k".into(),
            value: Bytes::new(),
            expected,
        };
        let delete = |expected| Op::Delete {
            key: "k".into(),
            expected,
        };
        let cases: Vec<(Op, Option<&KeyValue>, &str)> = vec![
            (create.clone(), None, "ok"),
            (create, Some(&kv), "already exists"),
            (update(5), Some(&kv), "ok"),
            (update(4), Some(&kv), "expected mod revision 4, found 5"),
            (update(5), None, "expected mod revision 5, found no key"),
            (delete(None), Some(&kv), "ok"),
            (delete(Some(5)), Some(&kv), "ok"),
            (
                delete(Some(6)),
                Some(&kv),
                "expected mod revision 6, found 5",
            ),
            (delete(None), None, "not found"),
            (delete(Some(5)), None, "not found"),
        ];
        for (op, existing, want) in cases {
            let got = op
                .check(existing)
                .map_or_else(|e| e.to_string(), |()| "ok".into());
            assert!(got.contains(want), "{op:?} over {existing:?}: {got}");
        }
    }

    #[test]
    fn txn_validation_refuses_empty_duplicate_and_blank_keys() {
        let cases = [
            (Txn::new(), Some("at least one operation")),
            (
                Txn::new().create("a", "1").delete("a", None),
                Some("more than once"),
            ),
            (Txn::new().create("", "1"), Some("empty key")),
            (Txn::new().create("a", "1").delete("b", Some(3)), None),
        ];
        for (txn, want) in cases {
            let got = txn.validate().err().map(|e| e.to_string());
            match (got, want) {
                (None, None) => {}
                (Some(msg), Some(w)) => assert!(msg.contains(w), "{msg} should mention {w}"),
                (got, want) => panic!("{txn:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
