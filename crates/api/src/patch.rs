//! JSON merge patch (RFC 7386: what `kubectl scale`, `label`, `annotate` and
//! `patch --type=merge` send) and JSON patch (RFC 6902: `rollout undo`, `patch --type=json`).
//! Strategic merge patch is `strategic`.

use serde_json::Value;

/// The patch types a PATCH request may carry (server-side apply aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    /// The patch type of a `Content-Type`.
    pub fn from_media(media: &str) -> Option<PatchType> {
        match media {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }

    /// Applies `patch` to `target`, an object of the type named `ty` (strategic merge patches
    /// follow the type's list strategies).
    pub fn apply(self, target: &mut Value, patch: &Value, ty: Option<&str>) -> Result<(), String> {
        match self {
            PatchType::Json => json_patch(target, patch),
            PatchType::Merge => {
                merge_patch(target, patch);
                Ok(())
            }
            PatchType::Strategic => crate::strategic::strategic_merge(target, patch, ty),
        }
    }
}

/// Applies `patch` to `target`: objects merge key by key, `null` removes a key, anything else
/// (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            map.shift_remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The reference tokens of a JSON pointer (RFC 6901).
fn pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} must start with /"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The value at `tokens`, for reading.
fn at<'a>(doc: &'a Value, tokens: &[String], path: &str) -> Result<&'a Value, String> {
    let mut v = doc;
    for t in tokens {
        v = match v {
            Value::Object(m) => m.get(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    }
    Ok(v)
}

/// The container of the last token, for writing.
fn parent<'a>(doc: &'a mut Value, tokens: &[String], path: &str) -> Result<&'a mut Value, String> {
    let mut v = doc;
    for t in tokens {
        v = match v {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    }
    Ok(v)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = pointer(path)?;
    let Some((last, up)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, up, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "path {path:?}: no index {last} in a list of {}",
                a.len()
            )),
        },
        _ => Err(format!(
            "path {path:?}: the parent is not an object or a list"
        )),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = pointer(path)?;
    let (last, up) = tokens
        .split_last()
        .ok_or_else(|| "the whole document cannot be removed".to_string())?;
    let missing = || format!("path {path:?} does not exist");
    match parent(doc, up, path)? {
        Value::Object(m) => m.shift_remove(last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// Applies a JSON patch: a list of `add`, `remove`, `replace`, `move`, `copy` and `test`
/// operations, all or nothing.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is a list of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {i} lacks {name:?}"))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {i} lacks \"value\""))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                at(&doc, &pointer(path)?, path)?;
                if path.is_empty() {
                    doc = value()?;
                } else {
                    remove(&mut doc, path)?;
                    add(&mut doc, path, value()?)?;
                }
            }
            "move" => {
                let moved = remove(&mut doc, field("from")?)?;
                add(&mut doc, path, moved)?;
            }
            "copy" => {
                let from = field("from")?;
                let copied = at(&doc, &pointer(from)?, from)?.clone();
                add(&mut doc, path, copied)?;
            }
            "test" => {
                if *at(&doc, &pointer(path)?, path)? != value()? {
                    return Err(format!("test operation {i} failed at {path:?}"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x", "d~/e": 1});
        let cases = [
            (
                json!([{"op": "add", "path": "/a/b/1", "value": 9}]),
                Ok(json!({"a": {"b": [1, 9, 2]}, "c": "x", "d~/e": 1})),
            ),
            (
                json!([{"op": "add", "path": "/a/b/-", "value": 3}]),
                Ok(json!({"a": {"b": [1, 2, 3]}, "c": "x", "d~/e": 1})),
            ),
            (
                json!([{"op": "remove", "path": "/d~0~1e"}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "x"})),
            ),
            (
                json!([{"op": "replace", "path": "/c", "value": "y"}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "y", "d~/e": 1})),
            ),
            (
                json!([{"op": "move", "from": "/c", "path": "/a/c"}]),
                Ok(json!({"a": {"b": [1, 2], "c": "x"}, "d~/e": 1})),
            ),
            (
                json!([{"op": "copy", "from": "/a/b/0", "path": "/z"}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "x", "d~/e": 1, "z": 1})),
            ),
            (
                json!([{"op": "test", "path": "/c", "value": "x"}, {"op": "remove", "path": "/c"}]),
                Ok(json!({"a": {"b": [1, 2]}, "d~/e": 1})),
            ),
            (
                json!([{"op": "test", "path": "/c", "value": "nope"}]),
                Err("test operation 0 failed"),
            ),
            (
                json!([{"op": "replace", "path": "/missing", "value": 1}]),
                Err("\"/missing\" does not exist"),
            ),
            (
                json!([{"op": "remove", "path": "/a/b/7"}]),
                Err("does not exist"),
            ),
            (
                json!([{"op": "add", "path": "/a/b/9", "value": 1}]),
                Err("no index 9"),
            ),
            (
                json!([{"op": "jump", "path": "/c"}]),
                Err("unknown op \"jump\""),
            ),
            (json!({"op": "add"}), Err("a list of operations")),
        ];
        for (ops, want) in cases {
            let mut got = doc.clone();
            match (json_patch(&mut got, &ops), want) {
                (Ok(()), Ok(want)) => assert_eq!(got, want, "{ops}"),
                (Err(e), Err(want)) => {
                    assert!(e.contains(want), "{ops}: {e}");
                    assert_eq!(got, doc, "a failed patch changes nothing");
                }
                (got, want) => panic!("{ops}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn rfc_7386_examples() {
        // The examples of RFC 7386, appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }
}
