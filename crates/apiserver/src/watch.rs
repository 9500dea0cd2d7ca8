//! Watches: a store watch of one kind turned into Kubernetes watch events, one JSON object per
//! line, with selectors deciding ADDED/MODIFIED/DELETED as objects start and stop matching.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use skiff_api::kinds::Kind;
use skiff_api::object::Filter;
use skiff_store::{Event, Revision, StoreError};
use tokio::sync::mpsc;

use crate::registry::{decode, Registry};
use crate::status::ApiError;

/// What a watch request asked for.
pub struct WatchRequest {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub filter: Filter,
    /// Events after this revision; `None` starts with the current state as ADDED events.
    pub after: Option<Revision>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

/// Lines waiting to reach a client; a client that lets more pile up is slow and is waited for
/// (the store watch behind it catches up from history, so nothing is buffered without bound).
const QUEUE: usize = 256;

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("a JSON value serializes");
    text.push(b'\n');
    Bytes::from(text)
}

/// The event a store change is for this watcher, if any: selectors make an update an ADDED when
/// the object starts matching and a DELETED when it stops.
fn translate(event: &Event, filter: &Filter) -> Result<Option<(&'static str, Value)>, ApiError> {
    match event {
        Event::Put { kv, prev } => {
            let now = decode(kv)?;
            let matches_now = filter.matches(&now);
            let matched_before = match prev {
                Some(prev) if kv.version > 1 => filter.matches(&decode(prev)?),
                // Not retained: assume it matched as it does now.
                None if kv.version > 1 => matches_now,
                _ => false,
            };
            Ok(match (matched_before, matches_now) {
                (false, true) => Some(("ADDED", now)),
                (true, true) => Some(("MODIFIED", now)),
                (true, false) => Some(("DELETED", now)),
                (false, false) => None,
            })
        }
        Event::Delete { prev, revision } => {
            let mut last = decode(prev)?;
            crate::registry::set_resource_version(&mut last, *revision);
            Ok(filter.matches(&last).then_some(("DELETED", last)))
        }
    }
}

fn error_line(err: ApiError) -> Bytes {
    line(
        "ERROR",
        &serde_json::to_value(&err).expect("a Status serializes"),
    )
}

/// Starts the watch and answers with its stream.
pub async fn serve(registry: Registry, req: WatchRequest) -> Result<Response, ApiError> {
    let prefix = req.kind.store_prefix_in(req.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(QUEUE);
    let after = match req.after {
        Some(rev) => rev,
        None => {
            let page = registry
                .list(
                    req.kind,
                    req.namespace.as_deref(),
                    &req.filter,
                    None,
                    None,
                    None,
                )
                .await?;
            for obj in &page.items {
                // The queue is fresh and holds the first items; later ones wait for the client.
                if tx.send(Ok(line("ADDED", obj))).await.is_err() {
                    break;
                }
            }
            page.revision
        }
    };
    let watch = registry
        .store
        .watch(&prefix, after)
        .await
        .map_err(ApiError::from_store);
    tokio::spawn(async move {
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Ok(error_line(e))).await;
                return;
            }
        };
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, watch.next()).await.ok(),
                    None => Some(watch.next().await),
                }
            };
            let resp = tokio::select! {
                _ = tx.closed() => return,
                r = next => r,
            };
            let resp = match resp {
                None | Some(None) => return,
                Some(Some(Err(e))) => {
                    let _ = tx.send(Ok(error_line(watch_error(e)))).await;
                    return;
                }
                Some(Some(Ok(resp))) => resp,
            };
            if resp.is_progress() {
                if req.bookmarks {
                    let bookmark = json!({
                        "kind": req.kind.kind,
                        "apiVersion": req.kind.api_version(),
                        "metadata": {"resourceVersion": resp.revision.to_string()},
                    });
                    if tx.send(Ok(line("BOOKMARK", &bookmark))).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            for event in &resp.events {
                let out = match translate(event, &req.filter) {
                    Ok(Some((kind, obj))) => line(kind, &obj),
                    Ok(None) => continue,
                    Err(e) => error_line(e),
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static headers are valid"))
}

/// A too-old revision is 410 Gone on a running watch, as Kubernetes sends it.
fn watch_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted { requested, .. } => ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested}"),
        ),
        other => ApiError::from_store(other),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::LabelSelector;
    use skiff_store::KeyValue;

    fn kv(version: i64, labels: Value) -> KeyValue {
        let obj = json!({"metadata": {"name": "p", "labels": labels}});
        KeyValue {
            key: "/registry/core/pods/default/p".into(),
            value: serde_json::to_vec(&obj).unwrap().into(),
            create_revision: 2,
            mod_revision: 1 + version,
            version,
        }
    }

    #[test]
    fn selectors_turn_updates_into_added_and_deleted() {
        let filter = Filter {
            labels: Some(LabelSelector::parse("app=web").unwrap()),
            fields: None,
        };
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        let put = |version, now: &Value, prev: Option<&Value>| Event::Put {
            kv: kv(version, now.clone()),
            prev: prev.map(|p| kv(version - 1, p.clone())),
        };
        let cases = [
            (put(1, &web, None), Some("ADDED")),
            (put(1, &db, None), None),
            (put(2, &web, Some(&db)), Some("ADDED")),
            (put(2, &web, Some(&web)), Some("MODIFIED")),
            (put(2, &db, Some(&web)), Some("DELETED")),
            (put(2, &db, Some(&db)), None),
            (
                Event::Delete {
                    prev: kv(2, web.clone()),
                    revision: 9,
                },
                Some("DELETED"),
            ),
            (
                Event::Delete {
                    prev: kv(2, db.clone()),
                    revision: 9,
                },
                None,
            ),
        ];
        for (event, want) in cases {
            let got = translate(&event, &filter).unwrap().map(|(k, _)| k);
            assert_eq!(got, want, "{event:?}");
        }
    }
}
