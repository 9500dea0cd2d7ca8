//! The objects this server wrote last, parsed: the next write of one of them (a pod's binding
//! after its create, its first status after its binding) starts from here instead of parsing
//! the stored JSON again, when the store still holds that very revision.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use skiff_api::kinds::Kind;
use skiff_store::Revision;

/// How many written objects are kept: a second or so of a busy cluster's writes, more than a
/// pod waits between its create, its binding and its first status.
const KEPT: usize = 4096;

/// Written objects by store key, each with the revision of its write (bounded, oldest out).
/// An object is shared with the writer's caller, not copied (a copy of a pod costs about what
/// parsing it does); the next write takes it over once that caller has let it go.
#[derive(Default)]
pub struct Written {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    objects: HashMap<String, Entry>,
    /// Keys in the order they were written (a key written again appears again; its older
    /// places are passed over).
    order: VecDeque<(String, Revision)>,
}

struct Entry {
    kind: &'static Kind,
    revision: Revision,
    /// As a read of the store at `revision` decodes it (resourceVersion last in `metadata`).
    object: Arc<Value>,
}

impl Written {
    /// Whether objects of `kind` are kept: those whose life is several writes (a spec by its
    /// owner, a status by its controller or node: the kinds with a status subresource), served
    /// as stored, so that the kept object is exactly what a read of the store decodes.
    pub fn keeps(kind: &'static Kind) -> bool {
        kind.subresources.contains(&"status") && skiff_api::conversion::stored_as_served(kind)
    }

    /// Keeps `object`, written as `kind` at `key` at `revision`, its resourceVersion set.
    pub fn keep(&self, kind: &'static Kind, key: &str, revision: Revision, object: Arc<Value>) {
        let mut evicted = Vec::new();
        let mut kept = self.kept.lock().expect("written lock");
        let Kept { objects, order } = &mut *kept;
        let entry = Entry {
            kind,
            revision,
            object,
        };
        evicted.extend(objects.insert(key.to_string(), entry));
        order.push_back((key.to_string(), revision));
        while objects.len() > KEPT || order.len() > 2 * KEPT {
            let Some((oldest, revision)) = order.pop_front() else {
                break;
            };
            if objects.get(&oldest).is_some_and(|e| e.revision == revision) {
                evicted.extend(objects.remove(&oldest));
            }
        }
        // Freed after the lock: a pod is thousands of allocations.
        drop(kept);
        drop(evicted);
    }

    /// The object kept for `key` as `kind` at `revision` (the store's revision of the key now),
    /// taken out: the caller is about to change it (a copy when the first writer's caller
    /// still holds it). Anything else kept for the key is stale and goes too.
    pub fn take(&self, kind: &'static Kind, key: &str, revision: Revision) -> Option<Value> {
        let entry = self
            .kept
            .lock()
            .expect("written lock")
            .objects
            .remove(key)?;
        (std::ptr::eq(entry.kind, kind) && entry.revision == revision)
            .then(|| Arc::try_unwrap(entry.object).unwrap_or_else(|shared| (*shared).clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(plural: &str) -> &'static Kind {
        let group = if plural == "deployments" { "apps" } else { "" };
        skiff_api::kinds::find(group, "v1", plural).unwrap()
    }

    #[test]
    fn kinds_written_again_are_kept_and_others_not() {
        assert!(Written::keeps(kind("pods")));
        assert!(Written::keeps(kind("deployments")));
        assert!(!Written::keeps(kind("configmaps")));
        // core/v1 Events are stored as events.k8s.io/v1: a read converts them.
        assert!(!Written::keeps(kind("events")));
    }

    #[test]
    fn an_object_is_taken_once_at_its_revision_and_kind_only() {
        let written = Written::default();
        let pods = kind("pods");
        written.keep(pods, "/pods/a/web", 7, Arc::new(json!({"n": 1})));
        assert_eq!(written.take(pods, "/pods/a/web", 7), Some(json!({"n": 1})));
        assert_eq!(written.take(pods, "/pods/a/web", 7), None, "taken already");
        written.keep(pods, "/pods/a/web", 8, Arc::new(json!({"n": 2})));
        assert_eq!(
            written.take(pods, "/pods/a/web", 9),
            None,
            "another write since"
        );
        assert_eq!(
            written.take(pods, "/pods/a/web", 8),
            None,
            "a stale entry goes"
        );
        written.keep(pods, "/pods/a/web", 10, Arc::new(json!({"n": 3})));
        assert_eq!(written.take(kind("deployments"), "/pods/a/web", 10), None);
        // Still held by the writer's caller: the taker gets a copy, the caller keeps its own.
        let shared = Arc::new(json!({"n": 4}));
        written.keep(pods, "/pods/a/web", 11, shared.clone());
        assert_eq!(written.take(pods, "/pods/a/web", 11), Some(json!({"n": 4})));
        assert_eq!(*shared, json!({"n": 4}));
    }

    #[test]
    fn the_oldest_writes_go_first_and_a_key_written_again_stays() {
        let written = Written::default();
        let pods = kind("pods");
        written.keep(pods, "first", 1, Arc::new(json!(1)));
        for i in 0..KEPT as i64 {
            written.keep(pods, "again", 2 + i, Arc::new(json!(i)));
        }
        for i in 0..KEPT as i64 - 1 {
            written.keep(pods, &format!("other-{i}"), 10_000 + i, Arc::new(json!(i)));
        }
        assert_eq!(written.take(pods, "first", 1), None, "the oldest went");
        let last = KEPT as i64 - 1;
        assert_eq!(written.take(pods, "again", 2 + last), Some(json!(last)));
        assert_eq!(written.take(pods, "other-0", 10_000), Some(json!(0)));
    }
}
