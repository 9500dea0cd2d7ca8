//! The work queue: keys waiting to be reconciled, each at most once in the queue and never by
//! two workers at once (a key added while it is being worked on comes back when that ends),
//! retried with exponential backoff after a failure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(30);

struct State<K> {
    order: VecDeque<K>,
    queued: HashSet<K>,
    /// Keys a worker has taken and not finished.
    processing: HashSet<K>,
    /// Keys added while being processed: they come back when that ends.
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
}

/// A queue of keys to reconcile. Cloning shares it.
pub struct Queue<K> {
    state: Arc<Mutex<State<K>>>,
    ready: Arc<Notify>,
}

impl<K> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Queue {
            state: self.state.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            state: Arc::new(Mutex::new(State {
                order: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
            })),
            ready: Arc::new(Notify::new()),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Queue<K> {
    /// Queues `key` unless it is already waiting; a key being worked on comes back when the
    /// work ends.
    pub fn add(&self, key: K) {
        let mut state = self.state.lock().expect("queue lock");
        if state.processing.contains(&key) {
            state.dirty.insert(key);
        } else if state.queued.insert(key.clone()) {
            state.order.push_back(key);
            self.ready.notify_one();
        }
    }

    /// The work on `key` ended: queue it again if it was added meanwhile.
    fn finish(&self, key: &K) {
        let again = {
            let mut state = self.state.lock().expect("queue lock");
            state.processing.remove(key);
            state.dirty.remove(key)
        };
        if again {
            self.add(key.clone());
        }
    }

    /// The next key, waiting for one.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.ready.notified();
            if let Some(key) = self.pop() {
                return key;
            }
            notified.await;
        }
    }

    fn pop(&self) -> Option<K> {
        let mut state = self.state.lock().expect("queue lock");
        let key = state.order.pop_front()?;
        state.queued.remove(&key);
        state.processing.insert(key.clone());
        Some(key)
    }

    /// The key was reconciled: its backoff starts over.
    pub fn done(&self, key: &K) {
        self.state.lock().expect("queue lock").failures.remove(key);
        self.finish(key);
    }

    /// Queues `key` again after `delay` (a deadline to check, with nothing else to say so).
    pub fn add_after(&self, key: K, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// The key failed: it comes back after a delay doubling with each failure in a row.
    pub fn retry(&self, key: K) -> Duration {
        let delay = {
            let mut state = self.state.lock().expect("queue lock");
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            FIRST_RETRY
                .saturating_mul(2u32.saturating_pow(*n - 1))
                .min(LAST_RETRY)
        };
        self.finish(&key);
        self.add_after(key, delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_are_deduplicated_and_retried_with_backoff() {
        let q: Queue<&str> = Queue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert!(q.pop().is_none(), "a was queued once");
        // Added while being worked on: it waits for the work to end.
        q.add("a");
        assert!(q.pop().is_none(), "no second worker gets a");
        q.done(&"a");
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        q.done(&"b");
        let delays: Vec<Duration> = (0..12).map(|_| q.retry("c")).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[11], Duration::from_secs(30), "capped");
        assert_eq!(q.next().await, "c", "comes back after the delay");
        q.done(&"c");
        assert_eq!(
            q.retry("c"),
            Duration::from_millis(50),
            "success resets the backoff"
        );
    }
}
