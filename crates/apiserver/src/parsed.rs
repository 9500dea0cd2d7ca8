//! Objects as the in-process controllers read them: without `metadata.managedFields`, parsed
//! once per watch cache entry for every feed of it, or taken from the write that made them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::cache::Cached;

/// Objects the controllers' feeds parsed lately, by the watch cache entry they came from (one
/// memo per kind's cache): four feeds follow pods (workloads and collector, disruption budgets,
/// endpoints, scheduler) and deliver the same changes at about the same time; each change is
/// parsed once for all of them, or not at all when its write gave the cache the object
/// (`keep`). Bounded, and not kept in the cache's entries, whose history would then hold a
/// parsed copy of every version.
#[derive(Default)]
pub struct Recent {
    kept: Mutex<Kept>,
    /// Whether a feed reads through this memo (writes then give their objects to it).
    wanted: AtomicBool,
}

/// The parsed objects by their cache entry's address (the entry held, so that no other can
/// take that address), and those addresses oldest first.
#[derive(Default)]
struct Kept {
    objects: HashMap<usize, (Arc<Cached>, Arc<Value>)>,
    order: VecDeque<usize>,
}

/// A cache entry as the controllers read it.
pub fn parse(cached: &Cached) -> Value {
    without_managed_fields(&cached.json).unwrap_or_else(|e| {
        // The cache keeps JSON this server wrote: never expected.
        tracing::error!(error = %e, "an object of the watch cache does not parse");
        Value::Null
    })
}

/// How many parsed objects [`Recent`] keeps: more than a feed's channel lets one lag behind.
const RECENT: usize = 2048;

impl Recent {
    /// `cached` as the controllers read it, parsed unless a feed just did or its write gave it.
    pub fn object(&self, cached: &Arc<Cached>) -> Arc<Value> {
        let key = Arc::as_ptr(cached) as usize;
        if let Some((_, object)) = self.kept.lock().expect("recent lock").objects.get(&key) {
            return object.clone();
        }
        let object = Arc::new(parse(cached));
        self.keep(cached, object.clone());
        object
    }

    /// Keeps `object`, `cached` as the controllers read it.
    pub fn keep(&self, cached: &Arc<Cached>, object: Arc<Value>) {
        let key = Arc::as_ptr(cached) as usize;
        let mut evicted = Vec::new();
        let mut kept = self.kept.lock().expect("recent lock");
        let Kept { objects, order } = &mut *kept;
        if objects.insert(key, (cached.clone(), object)).is_none() {
            order.push_back(key);
        }
        while order.len() > RECENT {
            if let Some(oldest) = order.pop_front() {
                evicted.extend(objects.remove(&oldest));
            }
        }
        // Freed after the lock: a pod's parsed object is thousands of allocations.
        drop(kept);
        drop(evicted);
    }

    /// Says a feed reads through this memo.
    pub fn wanted(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Whether a feed reads through this memo.
    pub fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }
}

/// A written object as the controllers read it: a copy without `metadata.managedFields`
/// (copied, which costs less than parsing its JSON again).
pub fn view(obj: &Value) -> Value {
    let Value::Object(fields) = obj else {
        return obj.clone();
    };
    let mut out = Map::with_capacity(fields.len());
    for (name, value) in fields {
        let copied = match value {
            Value::Object(meta) if name == "metadata" => Value::Object(
                meta.iter()
                    .filter(|(field, _)| *field != "managedFields")
                    .map(|(field, v)| (field.clone(), v.clone()))
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(name.clone(), copied);
    }
    Value::Object(out)
}

/// [`view`] of an object its caller gives up: the object itself, its managed fields taken out.
pub fn into_view(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("managedFields");
    }
    obj
}

/// An object of the watch cache as the controllers read it: without `metadata.managedFields`,
/// which they never use (a write without them keeps the stored ones) and which is most of a
/// pod's JSON; skipped, not built, as the controllers' feeds parse every change of every pod.
pub fn without_managed_fields(json: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::Map;

    /// An object with the field at the end of a path (of keys, outermost first) scanned past
    /// rather than built.
    struct Skipping(&'static [&'static str]);

    impl<'de> DeserializeSeed<'de> for Skipping {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Skipping {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                match self.0 {
                    [last] if key == *last => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    [first, rest @ ..] if key == *first => {
                        let value = map.next_value_seed(Skipping(rest))?;
                        out.insert(key, value);
                    }
                    _ => {
                        out.insert(key, map.next_value()?);
                    }
                }
            }
            Ok(Value::Object(out))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    let value = Skipping(&["metadata", "managedFields"]).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_written_object_s_view_is_its_json_read_without_managed_fields() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
                "managedFields": [{"manager": "m"}], "labels": {"managedFields": "kept"}},
                "spec": {"managedFields": "kept", "n": 1.5, "big": 18446744073709551615u64},
                "status": {"podIPs": [{"ip": "10.0.0.1"}], "x": null}}),
            json!({"metadata": {}}),
            json!({"kind": "NoMetadata"}),
        ];
        for obj in objects {
            let json = serde_json::to_vec(&obj).unwrap();
            let read = super::without_managed_fields(&json).unwrap();
            assert_eq!(super::view(&obj), read, "{obj}");
            // Given up rather than copied, it is the same, key order included.
            let given = super::into_view(obj.clone());
            assert_eq!(given.to_string(), read.to_string(), "{obj}");
        }
    }

    #[test]
    fn controllers_read_objects_without_managed_fields() {
        let json = br#"{"metadata": {"name": "p", "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}],
            "labels": {"managedFields": "kept"}}, "spec": {"managedFields": "kept"}}"#;
        assert_eq!(
            super::without_managed_fields(json).unwrap(),
            serde_json::json!({"metadata": {"name": "p", "labels": {"managedFields": "kept"}},
                "spec": {"managedFields": "kept"}})
        );
        assert!(super::without_managed_fields(b"{} x").is_err());
    }

    #[test]
    fn feeds_share_each_change_parsed_once_and_keep_only_the_latest() {
        use std::sync::Arc;
        let pods = skiff_api::kinds::find("", "v1", "pods").unwrap();
        let cached = |name: &str| {
            Arc::new(super::Cached::new(
                pods,
                &serde_json::json!({"metadata": {"name": name, "managedFields": []}}),
            ))
        };
        let recent = super::Recent::default();
        let first = cached("p0");
        let parsed = recent.object(&first);
        assert_eq!(*parsed, serde_json::json!({"metadata": {"name": "p0"}}));
        assert!(Arc::ptr_eq(&parsed, &recent.object(&first)));
        // An equal object from another entry of the cache is parsed on its own.
        assert!(!Arc::ptr_eq(&parsed, &recent.object(&cached("p0"))));
        for i in 0..super::RECENT {
            recent.object(&cached(&format!("p{i}")));
        }
        assert_eq!(recent.kept.lock().unwrap().objects.len(), super::RECENT);
        assert!(!Arc::ptr_eq(&parsed, &recent.object(&first)));
    }
}
