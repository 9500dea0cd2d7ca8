//! The HA store on etcd v3: every operation maps 1:1 onto etcd's Range, Txn, Watch and Compact.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    prefix_end, Event, GetResponse, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision,
    Store, StoreError, Txn, TxnResponse, Watch, WatchResponse, DEFAULT_PROGRESS_INTERVAL,
};

/// Where the etcd cluster is and how watches behave.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// How often a watch asks etcd for a progress notification. etcd before 3.4.31 / 3.5.13
    /// cannot be asked; run it with `--experimental-watch-progress-notify-interval=5s` instead.
    pub progress_interval: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// The largest gRPC message taken from or sent to etcd.
const MAX_MESSAGE: usize = i32::MAX as usize;

pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
    /// Whether etcd answers progress requests correctly (see [`progress_requests_work`]).
    progress_requests: bool,
}

impl EtcdStore {
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let fail = |e: etcd_client::Error| {
            StoreError::Backend(format!("etcd {}: {e}", options.endpoints.join(",")))
        };
        let mut client = Client::connect(&options.endpoints, None)
            .await
            .map_err(fail)?;
        let version = client.status().await.map_err(fail)?.version().to_string();
        let progress_requests = progress_requests_work(&version);
        if !progress_requests {
            tracing::warn!(
                %version,
                "etcd before 3.4.31 / 3.5.13 answers progress requests wrongly; watches rely on its \
                 periodic notifications (--experimental-watch-progress-notify-interval)"
            );
        }
        Ok(Self {
            client,
            options,
            progress_requests,
        })
    }

    /// A KV client without gRPC's default 4 MiB answer limit: a list of many objects is larger
    /// (Kubernetes lifts the limit for etcd too).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn err(&self, requested: Option<Revision>, e: etcd_client::Error) -> StoreError {
        let message = e.to_string();
        if message.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested: requested.unwrap_or(0),
                compacted: None,
            };
        }
        if message.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested: requested.unwrap_or(0),
                current: 0,
            };
        }
        StoreError::Backend(format!(
            "etcd {}: {message}",
            self.options.endpoints.join(",")
        ))
    }

    /// Fills in the current revision, which etcd's error does not carry.
    async fn future(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::FutureRevision { requested, .. } => StoreError::FutureRevision {
                requested,
                current: self.current_revision().await.unwrap_or(0),
            },
            other => other,
        }
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|_| StoreError::Backend("etcd returned a key that is not UTF-8".into()))?
            .to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

/// etcd before 3.4.31 and 3.5.13 answers a progress request with the current revision even while
/// a watcher on the stream is still replaying history (etcd issue 15220, the reason Kubernetes
/// gates its consistent reads from cache on those versions), so the answer cannot be trusted.
fn progress_requests_work(version: &str) -> bool {
    let parts: Vec<u64> = version
        .split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    match parts.as_slice() {
        [3, 4, patch] => *patch >= 31,
        [3, 5, patch] => *patch >= 13,
        [major, minor, _] => (*major, *minor) > (3, 5),
        _ => false,
    }
}

/// etcd's range end for a prefix: the prefix's successor, or "\0" (to the end) for an empty one.
fn range_end(prefix: &str) -> Vec<u8> {
    prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0])
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without a header".into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_requests_are_trusted_from_fixed_etcd_versions() {
        let cases = [
            ("3.4.23", false),
            ("3.4.31", true),
            ("3.5.12", false),
            ("3.5.13", true),
            ("3.6.0", true),
            ("3.6.0-rc.1", true),
            ("3.3.27", false),
            ("garbage", false),
        ];
        for (version, want) in cases {
            assert_eq!(super::progress_requests_work(version), want, "{version}");
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<GetResponse, StoreError> {
        let mut options = GetOptions::new();
        if let Some(r) = revision {
            options = options.with_revision(r);
        }
        let resp = match self.kv().get(key, Some(options)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.future(self.err(revision, e)).await),
        };
        Ok(GetResponse {
            kv: resp.kvs().first().map(to_kv).transpose()?,
            revision: match revision {
                Some(r) => r,
                None => header_revision(resp.header())?,
            },
        })
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let start = match &req.start_after {
            Some(after) if after.as_str() >= req.prefix.as_str() => {
                let mut k = after.clone().into_bytes();
                k.push(0);
                k
            }
            _ if req.prefix.is_empty() => vec![0],
            _ => req.prefix.clone().into_bytes(),
        };
        let mut options = GetOptions::new().with_range(range_end(&req.prefix));
        if let Some(limit) = req.limit {
            options = options.with_limit(limit as i64);
        }
        if let Some(r) = req.revision {
            options = options.with_revision(r);
        }
        let resp = match self.kv().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.future(self.err(req.revision, e)).await),
        };
        Ok(RangeResponse {
            kvs: resp.kvs().iter().map(to_kv).collect::<Result<_, _>>()?,
            revision: match req.revision {
                Some(r) => r,
                None => header_revision(resp.header())?,
            },
            more: resp.more(),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        let mut compares = Vec::new();
        let mut then = Vec::new();
        let mut otherwise = Vec::new();
        for op in &txn.ops {
            let key = op.key();
            compares.push(match op {
                Op::Create { .. } => Compare::create_revision(key, CompareOp::Equal, 0),
                Op::Update { expected, .. }
                | Op::Delete {
                    expected: Some(expected),
                    ..
                } => Compare::mod_revision(key, CompareOp::Equal, *expected),
                Op::Delete { expected: None, .. } => Compare::version(key, CompareOp::Greater, 0),
            });
            then.push(match op {
                Op::Create { value, .. } | Op::Update { value, .. } => {
                    TxnOp::put(key, value.to_vec(), Some(PutOptions::new().with_prev_key()))
                }
                Op::Delete { .. } => TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key())),
            });
            otherwise.push(TxnOp::get(key, None));
        }
        let etcd_txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(then)
            .or_else(otherwise);
        let resp = self
            .kv()
            .txn(etcd_txn)
            .await
            .map_err(|e| self.err(None, e))?;
        let revision = header_revision(resp.header())?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            return Err(first_failed_guard(&txn, &responses)?);
        }
        let mut results = Vec::with_capacity(txn.ops.len());
        for (op, response) in txn.ops.iter().zip(responses) {
            results.push(match (op, response) {
                (
                    Op::Create { key, value } | Op::Update { key, value, .. },
                    TxnOpResponse::Put(put),
                ) => {
                    let prev = put.prev_key().map(to_kv).transpose()?;
                    OpResult::Put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                    })
                }
                (Op::Delete { key, .. }, TxnOpResponse::Delete(del)) => {
                    let prev = del
                        .prev_kvs()
                        .first()
                        .map(to_kv)
                        .transpose()?
                        .ok_or_else(|| {
                            StoreError::Backend(format!(
                                "etcd deleted {key:?} without its previous value"
                            ))
                        })?;
                    OpResult::Deleted(prev)
                }
                (op, other) => {
                    return Err(StoreError::Backend(format!(
                        "etcd answered {other:?} to {op:?}"
                    )))
                }
            });
        }
        Ok(TxnResponse { revision, results })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let (tx, rx) = mpsc::channel(256);
        let (progress_tx, progress_rx) = mpsc::channel(1);
        let relay = Relay {
            client: self
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE),
            prefix: prefix.to_string(),
            tx,
            last: after,
            endpoints: self.options.endpoints.join(","),
            progress_requests: self.progress_requests,
        };
        let stream = relay.open().await.map_err(|e| self.err(Some(after), e))?;
        tokio::spawn(relay.run(stream, progress_rx, self.options.progress_interval));
        Ok(Watch::new(rx, progress_tx))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.kv().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.future(self.err(Some(revision), e)).await),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .kv()
            .get(vec![0], Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| self.err(None, e))?;
        header_revision(resp.header())
    }
}

/// Recomputes, from the reads of a failed transaction, which guard failed first.
fn first_failed_guard(txn: &Txn, responses: &[TxnOpResponse]) -> Result<StoreError, StoreError> {
    for (op, response) in txn.ops.iter().zip(responses) {
        let TxnOpResponse::Get(get) = response else {
            continue;
        };
        let existing = get.kvs().first().map(to_kv).transpose()?;
        if let Err(failed) = op.check(existing.as_ref()) {
            return Ok(failed);
        }
    }
    // The guards held when re-read: a concurrent writer changed a key and changed it back.
    Err(StoreError::Backend(
        "etcd transaction failed but every guard holds on re-read".into(),
    ))
}

/// Forwards one etcd watch into a [`Watch`], asking for progress on a timer and on demand.
///
/// All watches share one HTTP/2 connection with every other call, so a relay never stops reading
/// its gRPC stream while its reader is slow: that would exhaust the connection's flow-control
/// window and stall everything (and a dropped stream does not give the window back). When the
/// reader's queue is full the relay cancels the etcd watch, keeps draining the stream until the
/// reader has room, then watches again on the same stream from the last revision it delivered.
struct Relay {
    client: etcd_client::WatchClient,
    prefix: String,
    tx: mpsc::Sender<Result<WatchResponse, StoreError>>,
    /// Every event up to this revision has been queued for the reader.
    last: Revision,
    endpoints: String,
    /// Ask etcd for progress (else rely on its periodic notifications).
    progress_requests: bool,
}

/// What the relay does after one message from etcd.
enum Flow {
    Continue,
    /// The reader's queue is full; this response waits for room while the etcd watch is cancelled.
    Lagging(WatchResponse),
    Fail(StoreError),
    Stop,
}

/// Which etcd watch on the stream is ours.
#[derive(Clone, Copy)]
enum Current {
    /// A create request is out; everything before its `created` answer belongs to an old watch.
    Creating,
    Id(i64),
}

impl Relay {
    fn options(&self) -> (Vec<u8>, WatchOptions) {
        let options = WatchOptions::new()
            .with_range(range_end(&self.prefix))
            .with_start_revision(self.last + 1)
            .with_prev_key()
            .with_progress_notify();
        let key = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.as_bytes().to_vec()
        };
        (key, options)
    }

    async fn open(&self) -> Result<etcd_client::WatchStream, etcd_client::Error> {
        let (key, options) = self.options();
        self.client.clone().watch(key, Some(options)).await
    }

    async fn run(
        mut self,
        mut stream: etcd_client::WatchStream,
        mut progress: mpsc::Receiver<()>,
        interval: Duration,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut current = Current::Creating;
        loop {
            let flow = tokio::select! {
                msg = stream.message() => self.forward(msg, &mut current),
                Some(()) = progress.recv() => self.ask_progress(&mut stream).await,
                _ = ticker.tick() => self.ask_progress(&mut stream).await,
                _ = self.tx.closed() => Flow::Stop,
            };
            let step = match flow {
                Flow::Continue => Ok(()),
                Flow::Stop => return,
                Flow::Fail(err) => Err(err),
                Flow::Lagging(pending) => self.catch_up(&mut stream, &mut current, pending).await,
            };
            if let Err(err) = step {
                let _ = self.tx.send(Err(err)).await;
                return;
            }
        }
    }

    /// Cancels the etcd watch, drains the stream until the reader takes `pending`, then watches
    /// again from the last revision delivered.
    async fn catch_up(
        &mut self,
        stream: &mut etcd_client::WatchStream,
        current: &mut Current,
        pending: WatchResponse,
    ) -> Result<(), StoreError> {
        let watch_err = |e: etcd_client::Error| {
            StoreError::Backend(format!("etcd {} watch: {e}", self.endpoints))
        };
        if let Current::Id(id) = *current {
            stream.cancel(id).await.map_err(watch_err)?;
        }
        let permit = loop {
            tokio::select! {
                permit = self.tx.reserve() => break permit,
                msg = stream.message() => match msg {
                    // What arrives meanwhile is dropped: the new watch replays it.
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(StoreError::Backend(format!("etcd {} closed the watch stream", self.endpoints))),
                    Err(e) => return Err(watch_err(e)),
                },
            }
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        permit.send(Ok(pending));
        let (key, options) = self.options();
        *current = Current::Creating;
        stream.watch(key, Some(options)).await.map_err(watch_err)
    }

    async fn ask_progress(&self, stream: &mut etcd_client::WatchStream) -> Flow {
        if !self.progress_requests {
            return Flow::Continue;
        }
        match stream.request_progress().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    fn forward(
        &mut self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
        current: &mut Current,
    ) -> Flow {
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return Flow::Stop,
            Err(e) => {
                return Flow::Fail(StoreError::Backend(format!(
                    "etcd {} watch: {e}",
                    self.endpoints
                )))
            }
        };
        match *current {
            Current::Creating if resp.created() => *current = Current::Id(resp.watch_id()),
            Current::Creating => return Flow::Continue,
            // -1 answers a progress request for the whole stream.
            Current::Id(_) if resp.watch_id() == -1 && !self.progress_requests => {
                return Flow::Continue
            }
            Current::Id(id) if resp.watch_id() != id && resp.watch_id() != -1 => {
                return Flow::Continue
            }
            Current::Id(_) => {}
        }
        if resp.compact_revision() > 0 {
            return Flow::Fail(StoreError::Compacted {
                requested: self.last,
                compacted: Some(resp.compact_revision()),
            });
        }
        if resp.canceled() {
            return Flow::Fail(StoreError::Backend(format!(
                "etcd {} cancelled the watch: {}",
                self.endpoints,
                resp.cancel_reason()
            )));
        }
        match self.convert(&resp) {
            Ok(Some(out)) => match self.tx.try_send(Ok(out)) {
                Ok(()) => Flow::Continue,
                Err(mpsc::error::TrySendError::Full(Ok(out))) => Flow::Lagging(out),
                Err(_) => Flow::Stop,
            },
            Ok(None) => Flow::Continue,
            Err(err) => Flow::Fail(err),
        }
    }

    fn convert(
        &mut self,
        resp: &etcd_client::WatchResponse,
    ) -> Result<Option<WatchResponse>, StoreError> {
        if resp.events().is_empty() {
            if resp.created() {
                return Ok(None);
            }
            // A progress notification: etcd has sent every event up to its header revision.
            let revision = header_revision(resp.header())?.max(self.last);
            self.last = revision;
            return Ok(Some(WatchResponse {
                events: Vec::new(),
                revision,
            }));
        }
        let mut events = Vec::with_capacity(resp.events().len());
        for e in resp.events() {
            let kv = e
                .kv()
                .ok_or_else(|| StoreError::Backend("etcd watch event without a key".into()))?;
            let event = match e.event_type() {
                EventType::Put => Event::Put {
                    kv: to_kv(kv)?,
                    prev: e.prev_kv().map(to_kv).transpose()?,
                },
                EventType::Delete => Event::Delete {
                    prev: e.prev_kv().map(to_kv).transpose()?.ok_or_else(|| {
                        StoreError::Backend(format!(
                            "etcd delete event of {:?} without its previous value",
                            String::from_utf8_lossy(kv.key())
                        ))
                    })?,
                    revision: kv.mod_revision(),
                },
            };
            if event.revision() > self.last {
                events.push(event);
            }
        }
        let Some(last) = events.last().map(Event::revision) else {
            return Ok(None);
        };
        self.last = last;
        Ok(Some(WatchResponse {
            events,
            revision: last,
        }))
    }
}
