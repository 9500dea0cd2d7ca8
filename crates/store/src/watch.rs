//! Watch fan-out for in-process backends: replay from history, then follow live commits.
//!
//! The writer publishes every committed revision on a broadcast channel. A watcher subscribes
//! first, replays history up to a snapshot, then follows the channel, skipping what the replay
//! covered. A watcher that falls behind the channel's capacity replays the gap from history
//! instead of being dropped, so nothing is missed, duplicated or buffered without bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::{Event, Revision, StoreError, Watch, WatchResponse};

/// Revisions a slow watcher may fall behind before it replays from history.
const BROADCAST_CAPACITY: usize = 4096;
/// Responses queued per watcher before the watcher task waits for its reader.
const WATCHER_QUEUE: usize = 256;
/// Events per response when replaying history.
const REPLAY_CHUNK: usize = 1000;

/// Everything one write transaction changed, published after it is durable.
#[derive(Debug)]
pub(crate) struct Committed {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// Where a watcher reads the changes it missed.
pub(crate) trait History: Send + Sync + 'static {
    /// Events under `prefix` with revisions in `(after, snapshot]`, and `snapshot`, the latest
    /// committed revision of the read; `Compacted` if `after` is too old.
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision), StoreError>;
}

#[derive(Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Committed>>,
}

impl Hub {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    pub fn publish(&self, committed: Committed) {
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(Arc::new(committed));
    }

    /// Starts a watcher task; `history` is held weakly so a watch never keeps a closed store open.
    pub fn watch<H: History>(
        &self,
        history: std::sync::Weak<H>,
        prefix: &str,
        after: Revision,
        progress_interval: Duration,
    ) -> Watch {
        let live = self.tx.subscribe();
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let (progress_tx, progress_rx) = mpsc::channel(1);
        let watcher = Watcher {
            history,
            prefix: prefix.to_string(),
            last: after,
            tx,
        };
        tokio::spawn(watcher.run(live, progress_rx, progress_interval));
        Watch::new(rx, progress_tx)
    }
}

struct Watcher<H> {
    history: std::sync::Weak<H>,
    prefix: String,
    /// Every event up to this revision has been sent (or filtered out).
    last: Revision,
    tx: mpsc::Sender<Result<WatchResponse, StoreError>>,
}

/// Why a watcher task stops.
enum Stop {
    ReaderGone,
    StoreClosed,
}

impl<H: History> Watcher<H> {
    async fn run(
        mut self,
        mut live: broadcast::Receiver<Arc<Committed>>,
        mut progress: mpsc::Receiver<()>,
        progress_interval: Duration,
    ) {
        if self.replay().await.is_err() {
            return;
        }
        let mut ticker = tokio::time::interval(progress_interval);
        ticker.tick().await;
        loop {
            let step = tokio::select! {
                msg = live.recv() => self.on_live(msg).await,
                Some(()) = progress.recv() => self.progress(&mut live).await,
                _ = ticker.tick() => self.progress(&mut live).await,
                _ = self.tx.closed() => Err(Stop::ReaderGone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Sends what history holds after `self.last`.
    async fn replay(&mut self) -> Result<(), Stop> {
        let history = self.history.upgrade().ok_or(Stop::StoreClosed)?;
        let prefix = self.prefix.clone();
        let after = self.last;
        let result = tokio::task::spawn_blocking(move || history.replay(&prefix, after))
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("watch replay failed: {e}"))));
        match result {
            Ok((events, snapshot)) => {
                let chunks = chunk_at_revisions(events, REPLAY_CHUNK);
                let count = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if chunk.is_empty() {
                        continue;
                    }
                    let revision = if i + 1 < count {
                        chunk.last().map_or(snapshot, Event::revision)
                    } else {
                        snapshot.max(after)
                    };
                    self.send(chunk, revision).await?;
                }
                self.last = snapshot.max(after);
                Ok(())
            }
            Err(err) => {
                let _ = self.tx.send(Err(err)).await;
                Err(Stop::ReaderGone)
            }
        }
    }

    async fn on_live(
        &mut self,
        msg: Result<Arc<Committed>, broadcast::error::RecvError>,
    ) -> Result<(), Stop> {
        match msg {
            Ok(committed) => self.deliver(&committed).await,
            Err(broadcast::error::RecvError::Lagged(_)) => self.replay().await,
            Err(broadcast::error::RecvError::Closed) => Err(Stop::StoreClosed),
        }
    }

    async fn deliver(&mut self, committed: &Committed) -> Result<(), Stop> {
        if committed.revision <= self.last {
            return Ok(());
        }
        let events: Vec<Event> = committed
            .events
            .iter()
            .filter(|e| e.key().starts_with(&self.prefix))
            .cloned()
            .collect();
        if !events.is_empty() {
            self.send(events, committed.revision).await?;
        }
        self.last = committed.revision;
        Ok(())
    }

    /// Takes in every commit already published, then reports the revision reached.
    async fn progress(
        &mut self,
        live: &mut broadcast::Receiver<Arc<Committed>>,
    ) -> Result<(), Stop> {
        loop {
            match live.try_recv() {
                Ok(committed) => self.deliver(&committed).await?,
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.replay().await?,
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return Err(Stop::StoreClosed),
            }
        }
        self.send(Vec::new(), self.last).await
    }

    async fn send(&self, events: Vec<Event>, revision: Revision) -> Result<(), Stop> {
        self.tx
            .send(Ok(WatchResponse { events, revision }))
            .await
            .map_err(|_| Stop::ReaderGone)
    }
}

/// Splits revision-ordered events into chunks of about `size`, never splitting one revision.
fn chunk_at_revisions(events: Vec<Event>, size: usize) -> Vec<Vec<Event>> {
    let mut chunks: Vec<Vec<Event>> = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    for event in events {
        let boundary = current
            .last()
            .is_some_and(|last| last.revision() != event.revision());
        if current.len() >= size && boundary {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(event);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyValue;

    fn put(key: &str, revision: Revision) -> Event {
        Event::Put {
            kv: KeyValue {
                key: key.into(),
                value: Default::default(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
            prev: None,
        }
    }

    #[test]
    fn chunks_never_split_a_revision() {
        let events = vec![
            put("a", 2),
            put("b", 3),
            put("c", 3),
            put("d", 3),
            put("e", 4),
        ];
        let sizes = |size| -> Vec<Vec<Revision>> {
            chunk_at_revisions(events.clone(), size)
                .iter()
                .map(|c| c.iter().map(Event::revision).collect())
                .collect()
        };
        assert_eq!(sizes(1), vec![vec![2], vec![3, 3, 3], vec![4]]);
        assert_eq!(sizes(2), vec![vec![2, 3, 3, 3], vec![4]]);
        assert_eq!(sizes(10), vec![vec![2, 3, 3, 3, 4]]);
        assert_eq!(chunk_at_revisions(Vec::new(), 3), vec![Vec::<Event>::new()]);
    }
}
