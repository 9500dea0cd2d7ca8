//! Watches: a kind's watch cache turned into Kubernetes watch events, one JSON object per line,
//! with selectors deciding ADDED/MODIFIED/DELETED as objects start and stop matching.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use skiff_api::object::Filter;
use skiff_store::Revision;
use tokio::sync::mpsc;

use crate::cache::{translate, Change, KindCache, WatchRefusal};
use crate::format::{self, Format};
use crate::status::ApiError;

/// What a watch request asked for.
pub struct WatchRequest {
    pub namespace: Option<String>,
    pub filter: Filter,
    /// Events after this revision; `None` starts with the current state as ADDED events.
    pub after: Option<Revision>,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Events carry the object, or (for `kubectl get -w`) a one-row Table of it.
    pub format: Format,
}

/// A watcher asking for bookmarks gets one when the revision moved, or after this long.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Writes the line of `object`'s `kind` event (ADDED, MODIFIED, ...) to `out`.
fn put_line(out: &mut BytesMut, kind: &str, object: &[u8]) {
    out.reserve(object.len() + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"object\":");
    out.put_slice(object);
    out.put_slice(b"}\n");
}

fn line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_line(&mut out, kind, object);
    out.freeze()
}

fn error_line(err: &ApiError) -> Bytes {
    let status = serde_json::to_vec(err).expect("a Status serializes");
    line("ERROR", &status)
}

/// Starts the watch and answers with its stream.
pub fn serve(cache: Arc<KindCache>, req: WatchRequest) -> Result<Response, ApiError> {
    let kind = cache.kind();
    let prefix = kind.store_prefix_in(req.namespace.as_deref());
    let body = match cache.subscribe(&prefix, &req.filter, req.bookmarks, req.after) {
        Err(WatchRefusal::TooOld { requested, oldest }) => {
            // As Kubernetes does: 200, then the 410 as the stream's only event.
            let err = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {requested} ({oldest})"),
            );
            let line = error_line(&err);
            Body::from_stream(futures::stream::once(async move {
                Ok::<_, std::convert::Infallible>(line)
            }))
        }
        Ok(subscription) => Body::from_stream(Relay {
            sent: req.after.unwrap_or(0),
            backlog: subscription.backlog.into_iter(),
            live: subscription.live,
            deadline: Box::pin(tokio::time::sleep(req.timeout)),
            prefix,
            kind,
            filter: req.filter,
            format: req.format,
            bookmarks: req.bookmarks,
            bookmarked: 0,
            last_bookmark: tokio::time::Instant::now(),
            ended: false,
        }),
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .expect("static headers are valid"))
}

/// A watch response body: the backlog, then live changes, until the timeout passes, the client
/// goes (the body is dropped, and with it the cache's queue) or the cache drops the watcher.
/// Lines ready together go out as one chunk.
struct Relay {
    backlog: std::vec::IntoIter<Arc<Change>>,
    live: mpsc::Receiver<Arc<Change>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    prefix: String,
    kind: &'static skiff_api::kinds::Kind,
    filter: Filter,
    format: Format,
    bookmarks: bool,
    /// Changes up to here were sent (or were before the start): later duplicates are skipped.
    sent: Revision,
    bookmarked: Revision,
    last_bookmark: tokio::time::Instant,
    ended: bool,
}

/// The most bytes gathered into one chunk.
const CHUNK: usize = 64 * 1024;

/// Whether the watch goes on after a change.
enum Step {
    Next,
    End,
}

impl Relay {
    /// Writes the line `change` is for this watcher, if any, to `out`.
    fn step(&mut self, change: &Change, out: &mut BytesMut) -> Step {
        let Some(revision) = change.revision() else {
            return Step::End; // Reset: the client lists again.
        };
        if let Change::Progress(_) = change {
            let news = revision > self.bookmarked || self.last_bookmark.elapsed() >= BOOKMARK_EVERY;
            if !(self.bookmarks && revision >= self.sent && news) {
                return Step::Next;
            }
            self.bookmarked = revision;
            self.last_bookmark = tokio::time::Instant::now();
            let bookmark = json!({
                "kind": self.kind.kind,
                "apiVersion": self.kind.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
            });
            let bytes = serde_json::to_vec(&bookmark).expect("a JSON value serializes");
            put_line(out, "BOOKMARK", &bytes);
            return Step::Next;
        }
        let in_scope = match change {
            Change::Put { key, .. } | Change::Delete { key, .. } => key.starts_with(&self.prefix),
            _ => false,
        };
        if revision <= self.sent || !in_scope {
            return Step::Next;
        }
        self.sent = revision;
        if let Some((event, obj)) = translate(change, &self.filter) {
            match self.format {
                Format::Json => put_line(out, event, &obj.json),
                Format::Table(include) => {
                    let table = format::table(self.kind, json!({}), &[&obj.json], include);
                    let bytes = serde_json::to_vec(&table).expect("a JSON value serializes");
                    put_line(out, event, &bytes);
                }
            }
        }
        Step::Next
    }

    /// The next change: from the backlog, else a live one if ready.
    fn poll_change(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Arc<Change>>> {
        match self.backlog.next() {
            Some(change) => Poll::Ready(Some(change)),
            None => self.live.poll_recv(cx),
        }
    }
}

impl futures::Stream for Relay {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended || this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let mut chunk = BytesMut::new();
        loop {
            let change = match this.poll_change(cx) {
                Poll::Ready(Some(change)) => change,
                // Closed: dropped by the cache for falling behind.
                Poll::Ready(None) => {
                    this.ended = true;
                    break;
                }
                Poll::Pending if chunk.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            };
            if let Step::End = this.step(&change, &mut chunk) {
                this.ended = true;
                break;
            }
            if chunk.len() >= CHUNK {
                break;
            }
        }
        if chunk.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(chunk.freeze())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cached;
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

    /// A JSON watch of every pod through `filter`, from the start.
    fn relay(filter: Filter) -> Relay {
        Relay {
            backlog: Vec::new().into_iter(),
            live: mpsc::channel(1).1,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
            prefix: "k".into(),
            kind: skiff_api::kinds::find("", "v1", "pods").unwrap(),
            filter,
            format: Format::Json,
            bookmarks: false,
            sent: 0,
            bookmarked: 0,
            last_bookmark: tokio::time::Instant::now(),
            ended: false,
        }
    }

    #[tokio::test]
    async fn selectors_turn_updates_into_added_and_deleted() {
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
        };
        let delete = |old: &Value| Change::Delete {
            revision: 9,
            key: "k".into(),
            old: cached(old.clone()),
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
            let mut relay = relay(filter.clone());
            let mut out = BytesMut::new();
            assert!(matches!(relay.step(&change, &mut out), Step::Next));
            assert_eq!(out.is_empty(), want.is_none(), "{change:?}");
            if let Some(want) = want {
                let parsed: Value = serde_json::from_slice(&out).unwrap();
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
