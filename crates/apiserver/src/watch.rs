//! Watches: a kind's watch cache turned into Kubernetes watch events, one JSON object per line,
//! with selectors deciding ADDED/MODIFIED/DELETED as objects start and stop matching.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use skiff_api::object::Filter;
use skiff_store::Revision;
use tokio::sync::mpsc;

use crate::cache::{matches, Cached, Change, KindCache, WatchRefusal};
use crate::status::ApiError;

/// What a watch request asked for.
pub struct WatchRequest {
    pub namespace: Option<String>,
    pub filter: Filter,
    /// Events after this revision; `None` starts with the current state as ADDED events.
    pub after: Option<Revision>,
    pub bookmarks: bool,
    pub timeout: Duration,
}

/// Lines waiting to reach a client. A client that lets them pile up stops taking changes from
/// the cache, and is disconnected once it falls behind the cache's fan-out queue.
const QUEUE: usize = 64;

/// A watcher asking for bookmarks gets one when the revision moved, or after this long.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// The line of a change's event as `filter` sees it, made once and shared by every watcher
/// seeing the same.
fn event_line(change: &Change, filter: &Filter) -> Option<Bytes> {
    let (event, obj) = translate(change, filter)?;
    let (Change::Put { lines, .. } | Change::Delete { lines, .. }) = change else {
        return None;
    };
    let slot = match event {
        "ADDED" => 0,
        "MODIFIED" => 1,
        _ => 2,
    };
    Some(lines[slot].get_or_init(|| line(event, &obj.json)).clone())
}

fn line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(object.len() + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"object\":");
    out.put_slice(object);
    out.put_slice(b"}\n");
    out.freeze()
}

/// The event a change is for this watcher, if any: selectors make an update an ADDED when the
/// object starts matching and a DELETED when it stops.
fn translate<'a>(change: &'a Change, filter: &Filter) -> Option<(&'static str, &'a Cached)> {
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

fn error_line(err: &ApiError) -> Bytes {
    let status = serde_json::to_vec(err).expect("a Status serializes");
    line("ERROR", &status)
}

/// Starts the watch and answers with its stream.
pub fn serve(cache: Arc<KindCache>, req: WatchRequest) -> Result<Response, ApiError> {
    let kind = cache.kind();
    let prefix = kind.store_prefix_in(req.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(QUEUE);
    match cache.subscribe(&prefix, &req.filter, req.bookmarks, req.after) {
        Err(WatchRefusal::TooOld { requested, oldest }) => {
            // As Kubernetes does: 200, then the 410 as the stream's only event.
            let err = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {requested} ({oldest})"),
            );
            tx.try_send(Ok(error_line(&err))).expect("an empty queue");
        }
        Ok(subscription) => {
            tokio::spawn(relay(subscription, req, prefix, tx, kind));
        }
    }
    let mut rx = rx;
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static headers are valid"))
}
/// Sends a watcher its backlog, then live changes, until the client goes, the timeout passes,
/// or it falls too far behind.
async fn relay(
    subscription: crate::cache::Subscription,
    req: WatchRequest,
    prefix: String,
    tx: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
    kind: &'static skiff_api::kinds::Kind,
) {
    let mut live = subscription.live;
    // Changes up to here were sent (or were before the start): later duplicates are skipped.
    let mut sent = req.after.unwrap_or(0);
    for change in &subscription.backlog {
        if let Some(line) = event_line(change, &req.filter) {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        sent = sent.max(change.revision().unwrap_or(0));
    }
    let deadline = tokio::time::Instant::now() + req.timeout;
    let mut bookmarked = 0;
    let mut last_bookmark = tokio::time::Instant::now();
    loop {
        let change = tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            c = live.recv() => c,
        };
        // Closed: dropped by the cache for falling behind, or reset.
        let Some(change) = change else { return };
        let Some(revision) = change.revision() else {
            return; // Reset: the client lists again.
        };
        if let Change::Progress(_) = *change {
            let news = revision > bookmarked || last_bookmark.elapsed() >= BOOKMARK_EVERY;
            if req.bookmarks && revision >= sent && news {
                bookmarked = revision;
                last_bookmark = tokio::time::Instant::now();
                let bookmark = json!({
                    "kind": kind.kind,
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": revision.to_string()},
                });
                let bytes = serde_json::to_vec(&bookmark).expect("a JSON value serializes");
                if tx.send(Ok(line("BOOKMARK", &bytes))).await.is_err() {
                    return;
                }
            }
            continue;
        }
        if revision <= sent {
            continue;
        }
        let in_scope = match &*change {
            Change::Put { key, .. } | Change::Delete { key, .. } => key.starts_with(&prefix),
            _ => false,
        };
        if !in_scope {
            continue;
        }
        sent = revision;
        if let Some(line) = event_line(&change, &req.filter) {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use skiff_api::object::Selectable;
    use skiff_api::LabelSelector;

    fn cached(labels: Value) -> Arc<Cached> {
        let pods = skiff_api::kinds::find("", "v1", "pods").unwrap();
        let obj = json!({"metadata": {"name": "p", "labels": labels}});
        Arc::new(Cached {
            selectable: Selectable::of(pods, &obj),
            json: Bytes::from(obj.to_string()),
        })
    }

    #[test]
    fn selectors_turn_updates_into_added_and_deleted() {
        let filter = Filter {
            labels: Some(LabelSelector::parse("app=web").unwrap()),
            fields: None,
        };
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        let put = |now: &Value, old: Option<&Value>| Change::Put {
            revision: 5,
            key: "k".into(),
            new: cached(now.clone()),
            old: old.map(|o| cached(o.clone())),
            lines: Default::default(),
        };
        let delete = |old: &Value| Change::Delete {
            revision: 9,
            key: "k".into(),
            old: cached(old.clone()),
            lines: Default::default(),
        };
        let cases = [
            (put(&web, None), Some("ADDED")),
            (put(&db, None), None),
            (put(&web, Some(&db)), Some("ADDED")),
            (put(&web, Some(&web)), Some("MODIFIED")),
            (put(&db, Some(&web)), Some("DELETED")),
            (put(&db, Some(&db)), None),
            (delete(&web), Some("DELETED")),
            (delete(&db), None),
            (Change::Progress(3), None),
        ];
        for (change, want) in cases {
            let got = translate(&change, &filter).map(|(k, _)| k);
            assert_eq!(got, want, "{change:?}");
            let line = event_line(&change, &filter);
            assert_eq!(line.is_some(), want.is_some());
            if let (Some(line), Some(want)) = (line, want) {
                let parsed: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(parsed["type"], want);
                assert_eq!(parsed["object"]["metadata"]["name"], "p");
            }
        }
    }

    #[test]
    fn lines_are_one_json_event_each() {
        let text = line("ADDED", br#"{"a":1}"#);
        assert_eq!(&text[..], b"{\"type\":\"ADDED\",\"object\":{\"a\":1}}\n");
        let parsed: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(parsed["object"]["a"], 1);
    }
}
