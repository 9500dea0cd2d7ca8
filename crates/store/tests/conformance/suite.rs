//! The store contract, written once: every function here runs against every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff_store::{
    Event, KeyValue, OpResult, RangeRequest, Revision, Store, StoreError, Txn, Watch, WatchResponse,
};

const WAIT: Duration = Duration::from_secs(20);

fn val(s: impl AsRef<str>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref().as_bytes())
}

/// Reads events until `n` have arrived; progress notifications are skipped.
pub async fn collect(watch: &mut Watch, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < n {
        let resp = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} events", events.len()))
            .expect("watch ended")
            .expect("watch error");
        for e in &resp.events {
            assert!(
                e.revision() <= resp.revision,
                "event after its response revision"
            );
        }
        events.extend(resp.events);
    }
    assert_eq!(events.len(), n, "more events than expected: {events:#?}");
    events
}

/// The next progress notification, with the events that came before it.
async fn until_progress(watch: &mut Watch) -> (Vec<Event>, WatchResponse) {
    let mut events = Vec::new();
    loop {
        let resp = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("no progress notification")
            .expect("watch ended")
            .expect("watch error");
        if resp.is_progress() {
            return (events, resp);
        }
        events.extend(resp.events);
    }
}

fn put_kv(e: &Event) -> &KeyValue {
    match e {
        Event::Put { kv, .. } => kv,
        Event::Delete { .. } => panic!("expected a put, got {e:?}"),
    }
}

pub async fn revisions_and_versions(store: &dyn Store) {
    let start = store.current_revision().await.unwrap();
    assert!(start >= 1, "revisions start at 1, got {start}");
    let a = store.create("/t/a", val("1")).await.unwrap();
    assert_eq!(a.mod_revision, start + 1);
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(a.version, 1);
    assert_eq!(a.value, val("1"));
    let a2 = store
        .update("/t/a", val("2"), a.mod_revision)
        .await
        .unwrap();
    assert_eq!(a2.mod_revision, start + 2);
    assert_eq!(a2.create_revision, a.create_revision);
    assert_eq!(a2.version, 2);
    assert_eq!(store.current_revision().await.unwrap(), start + 2);
    let got = store.get("/t/a", None).await.unwrap();
    assert_eq!(got.kv, Some(a2.clone()));
    assert_eq!(got.revision, start + 2);
    assert_eq!(store.get("/t/missing", None).await.unwrap().kv, None);

    let (prev, rev) = store.delete("/t/a", Some(a2.mod_revision)).await.unwrap();
    assert_eq!(prev, a2);
    assert_eq!(rev, start + 3);
    let again = store.create("/t/a", val("3")).await.unwrap();
    assert_eq!(
        again.create_revision,
        start + 4,
        "a re-created key starts over"
    );
    assert_eq!(again.version, 1);
}

pub async fn guards_fail_without_writing(store: &dyn Store) {
    let a = store.create("/g/a", val("1")).await.unwrap();
    let rev = store.current_revision().await.unwrap();
    match store.create("/g/a", val("x")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/g/a"),
        other => panic!("create on existing key: {other:?}"),
    }
    let b = store
        .update("/g/a", val("2"), a.mod_revision)
        .await
        .unwrap();
    match store.update("/g/a", val("3"), a.mod_revision).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(
                (key.as_str(), expected, actual),
                ("/g/a", a.mod_revision, Some(b.mod_revision))
            )
        }
        other => panic!("stale update: {other:?}"),
    }
    match store.update("/g/none", val("3"), 5).await {
        Err(StoreError::Conflict { actual: None, .. }) => {}
        other => panic!("update of a missing key: {other:?}"),
    }
    match store.delete("/g/none", None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/g/none"),
        other => panic!("delete of a missing key: {other:?}"),
    }
    match store.delete("/g/a", Some(a.mod_revision)).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(b.mod_revision)),
        other => panic!("stale delete: {other:?}"),
    }
    assert_eq!(
        store.current_revision().await.unwrap(),
        rev + 1,
        "only the good update wrote"
    );
    assert_eq!(
        store.get("/g/a", None).await.unwrap().kv.unwrap().value,
        val("2")
    );
}

pub async fn transactions_are_all_or_nothing(store: &dyn Store) {
    let ip = store
        .create("/alloc/10.43.0.10", val("svc-a"))
        .await
        .unwrap();
    let before = store.current_revision().await.unwrap();
    // The middle guard fails: nothing may be written.
    let failed = store
        .txn(
            Txn::new()
                .create("/svc/b", val("b"))
                .create("/alloc/10.43.0.10", val("svc-b"))
                .create("/alloc/30001", val("svc-b")),
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::AlreadyExists { ref key }) if key == "/alloc/10.43.0.10"),
        "{failed:?}"
    );
    assert_eq!(store.current_revision().await.unwrap(), before);
    assert_eq!(store.get("/svc/b", None).await.unwrap().kv, None);
    assert_eq!(store.get("/alloc/30001", None).await.unwrap().kv, None);

    let ok = store
        .txn(
            Txn::new()
                .create("/svc/b", val("b"))
                .create("/alloc/10.43.0.11", val("svc-b"))
                .delete("/alloc/10.43.0.10", Some(ip.mod_revision)),
        )
        .await
        .unwrap();
    assert_eq!(ok.revision, before + 1, "one transaction, one revision");
    assert_eq!(ok.results.len(), 3);
    assert!(
        matches!(&ok.results[0], OpResult::Put(kv) if kv.key == "/svc/b" && kv.mod_revision == ok.revision)
    );
    assert!(matches!(&ok.results[2], OpResult::Deleted(kv) if kv == &ip));
    let all = store.range(RangeRequest::prefix("/alloc/")).await.unwrap();
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/alloc/10.43.0.11"]
    );

    for bad in [
        Txn::new(),
        Txn::new().create("/x", val("1")).delete("/x", None),
    ] {
        assert!(matches!(
            store.txn(bad).await,
            Err(StoreError::InvalidTxn(_))
        ));
    }
}

pub async fn concurrent_creates_of_one_key_admit_one(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create("/race/key", val(format!("{i}"))).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won, 1);
}

pub async fn concurrent_compare_and_swap_loses_no_increment(store: Arc<dyn Store>) {
    store.create("/counter", val("0")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while done < 20 {
                    let kv = store.get("/counter", None).await.unwrap().kv.unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    match store
                        .update("/counter", val((n + 1).to_string()), kv.mod_revision)
                        .await
                    {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let kv = store.get("/counter", None).await.unwrap().kv.unwrap();
    assert_eq!(kv.value, val("320"));
    assert_eq!(kv.version, 321);
}

pub async fn reads_at_past_revisions(store: &dyn Store) {
    let v1 = store.create("/h/a", val("1")).await.unwrap();
    let v2 = store
        .update("/h/a", val("2"), v1.mod_revision)
        .await
        .unwrap();
    let (_, deleted_at) = store.delete("/h/a", None).await.unwrap();
    let at = |r| store.get("/h/a", Some(r));
    assert_eq!(at(v1.mod_revision).await.unwrap().kv, Some(v1.clone()));
    assert_eq!(at(v2.mod_revision).await.unwrap().kv, Some(v2.clone()));
    assert_eq!(at(deleted_at).await.unwrap().kv, None);
    assert_eq!(at(v1.mod_revision - 1).await.unwrap().kv, None);
    let current = store.current_revision().await.unwrap();
    match store.get("/h/a", Some(current + 10)).await {
        Err(StoreError::FutureRevision { requested, .. }) => assert_eq!(requested, current + 10),
        other => panic!("future read: {other:?}"),
    }
    let past = store
        .range(RangeRequest {
            revision: Some(v2.mod_revision),
            ..RangeRequest::prefix("/h/")
        })
        .await
        .unwrap();
    assert_eq!(past.revision, v2.mod_revision);
    assert_eq!(past.kvs, vec![v2]);
}

pub async fn ranges_page_consistently_under_writes(store: &dyn Store) {
    for i in 0..25 {
        store
            .create(&format!("/r/k{i:02}"), val(format!("{i}")))
            .await
            .unwrap();
    }
    store.create("/rx/outside", val("no")).await.unwrap();
    store.create("/r", val("not under /r/")).await.unwrap();

    let first = store
        .range(RangeRequest {
            limit: Some(10),
            ..RangeRequest::prefix("/r/")
        })
        .await
        .unwrap();
    assert_eq!(first.kvs.len(), 10);
    assert!(first.more);
    // Writes between pages must not show up in the pages of the first read.
    store.create("/r/k05a", val("new")).await.unwrap();
    store.delete("/r/k20", None).await.unwrap();
    let k21 = store.get("/r/k21", None).await.unwrap().kv.unwrap();
    store
        .update("/r/k21", val("changed"), k21.mod_revision)
        .await
        .unwrap();

    let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut last = keys.last().cloned();
    loop {
        let page = store
            .range(RangeRequest {
                prefix: "/r/".into(),
                revision: Some(first.revision),
                limit: Some(10),
                start_after: last.clone(),
            })
            .await
            .unwrap();
        assert_eq!(page.revision, first.revision);
        for kv in &page.kvs {
            if kv.key == "/r/k21" {
                assert_eq!(
                    kv.value,
                    val("21"),
                    "a page shows the value at the first read's revision"
                );
            }
        }
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        last = keys.last().cloned();
        if !page.more {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("/r/k{i:02}")).collect();
    assert_eq!(keys, want);

    let latest = store.range(RangeRequest::prefix("/r/")).await.unwrap();
    assert_eq!(latest.kvs.len(), 25);
    assert!(!latest.more);
    assert!(latest.kvs.iter().any(|kv| kv.key == "/r/k05a"));
    assert!(!latest.kvs.iter().any(|kv| kv.key == "/r/k20"));
    let exact = store
        .range(RangeRequest {
            limit: Some(25),
            ..RangeRequest::prefix("/r/")
        })
        .await
        .unwrap();
    assert!(
        !exact.more,
        "a limit equal to the count leaves nothing more"
    );
}

pub async fn watch_delivers_every_change_in_order(store: &dyn Store) {
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/w/", start).await.unwrap();
    let a = store.create("/w/a", val("1")).await.unwrap();
    store.create("/other/x", val("not watched")).await.unwrap();
    let a2 = store
        .update("/w/a", val("2"), a.mod_revision)
        .await
        .unwrap();
    let (_, del_rev) = store.delete("/w/a", None).await.unwrap();
    let t = store
        .txn(Txn::new().create("/w/b", val("b")).create("/w/c", val("c")))
        .await
        .unwrap();

    let events = collect(&mut watch, 5).await;
    assert_eq!(
        events[0],
        Event::Put {
            kv: a.clone(),
            prev: None
        }
    );
    assert_eq!(
        events[1],
        Event::Put {
            kv: a2.clone(),
            prev: Some(a)
        }
    );
    assert_eq!(
        events[2],
        Event::Delete {
            prev: a2,
            revision: del_rev
        }
    );
    assert_eq!(put_kv(&events[3]).key, "/w/b");
    assert_eq!(put_kv(&events[4]).key, "/w/c");
    assert_eq!(events[3].revision(), t.revision);
    assert_eq!(events[4].revision(), t.revision);
}

/// A store that says its events carry the written values gives the write's own bytes to every
/// watcher (the API server's watch cache recognises its writes so); one that does not still
/// delivers equal values.
pub async fn watch_events_carry_the_written_bytes_when_the_store_says_so(store: &dyn Store) {
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/carry/", start).await.unwrap();
    // A watch starts by reading what was written since `start` back from the store: once it
    // has delivered a write made after it began, it follows the writes themselves.
    store.create("/carry/warm", val("up")).await.unwrap();
    collect(&mut watch, 1).await;
    let created = val("first");
    let a = store.create("/carry/a", created.clone()).await.unwrap();
    let updated = val("second");
    store
        .update("/carry/a", updated.clone(), a.mod_revision)
        .await
        .unwrap();
    let events = collect(&mut watch, 2).await;
    for (event, written) in events.iter().zip([&created, &updated]) {
        let carried = &put_kv(event).value;
        assert_eq!(carried, written);
        assert_eq!(
            carried.as_ptr() == written.as_ptr(),
            store.events_carry_written_values(),
            "the event's value is the written allocation exactly when the store says so"
        );
    }
}

pub async fn many_watchers_each_see_everything(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let mut watches = Vec::new();
    for _ in 0..64 {
        watches.push(store.watch("/m/", start).await.unwrap());
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    store
                        .create(&format!("/m/{w}/{i}"), val("x"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    for mut watch in watches {
        let events = collect(&mut watch, 200).await;
        let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "events out of order or duplicated"
        );
        let keys: HashSet<&str> = events.iter().map(Event::key).collect();
        assert_eq!(keys.len(), 200);
    }
}

pub async fn watch_resumes_from_a_past_revision(store: &dyn Store) {
    let a = store.create("/p/a", val("1")).await.unwrap();
    let b = store.create("/p/b", val("1")).await.unwrap();
    let a2 = store
        .update("/p/a", val("2"), a.mod_revision)
        .await
        .unwrap();
    let mut watch = store.watch("/p/", a.mod_revision).await.unwrap();
    let c = store.create("/p/c", val("1")).await.unwrap();
    let events = collect(&mut watch, 3).await;
    assert_eq!(
        events.iter().map(Event::revision).collect::<Vec<_>>(),
        vec![b.mod_revision, a2.mod_revision, c.mod_revision]
    );
    assert_eq!(
        events[1],
        Event::Put {
            kv: a2,
            prev: Some(a)
        }
    );
}

pub async fn a_slow_watcher_misses_nothing(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/slow/", start).await.unwrap();
    // Far more revisions than any queue between writer and watcher holds, written while the
    // watcher reads nothing.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..700 {
                    store
                        .create(&format!("/slow/{w}/{i}"), val("x"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let events = collect(&mut watch, 5600).await;
    let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "events out of order or duplicated"
    );
}

pub async fn progress_notifications_carry_the_current_revision(store: &dyn Store) {
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/quiet/", start).await.unwrap();
    let other = store.create("/busy/x", val("1")).await.unwrap();
    watch.request_progress();
    let (events, progress) = until_progress(&mut watch).await;
    assert!(events.is_empty());
    // A notification may have been sent before the write; ask until it reaches it.
    let mut progress = progress;
    for _ in 0..50 {
        if progress.revision >= other.mod_revision {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        watch.request_progress();
        progress = until_progress(&mut watch).await.1;
    }
    assert!(
        progress.revision >= other.mod_revision,
        "progress {} behind write {}",
        progress.revision,
        other.mod_revision
    );
    // After a progress notification at R, an event under the prefix must come with a revision > R.
    let mine = store.create("/quiet/a", val("1")).await.unwrap();
    let events = collect(&mut watch, 1).await;
    assert_eq!(put_kv(&events[0]), &mine);
}

pub async fn compaction_discards_history_with_a_distinct_error(store: &dyn Store) {
    let a = store.create("/c/a", val("1")).await.unwrap();
    let a2 = store
        .update("/c/a", val("2"), a.mod_revision)
        .await
        .unwrap();
    let b = store.create("/c/b", val("1")).await.unwrap();
    store.delete("/c/b", None).await.unwrap();
    let a3 = store
        .update("/c/a", val("3"), a2.mod_revision)
        .await
        .unwrap();
    let at = a3.mod_revision;
    store.compact(at).await.unwrap();

    for rev in [a.mod_revision, a2.mod_revision, at - 1] {
        match store.get("/c/a", Some(rev)).await {
            Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, rev),
            other => panic!("read at compacted {rev}: {other:?}"),
        }
    }
    assert!(matches!(
        store
            .range(RangeRequest {
                revision: Some(b.mod_revision),
                ..RangeRequest::prefix("/c/")
            })
            .await,
        Err(StoreError::Compacted { .. })
    ));
    assert_eq!(
        store.get("/c/a", Some(at)).await.unwrap().kv,
        Some(a3.clone())
    );
    assert_eq!(store.get("/c/b", Some(at)).await.unwrap().kv, None);
    let now = store.range(RangeRequest::prefix("/c/")).await.unwrap();
    assert_eq!(now.kvs, vec![a3.clone()]);

    // A watch from before the compaction point fails with Compacted, now or as its first item.
    match store.watch("/c/", a.mod_revision).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut w) => {
            let first = tokio::time::timeout(WAIT, w.next())
                .await
                .expect("no answer");
            assert!(
                matches!(first, Some(Err(StoreError::Compacted { .. }))),
                "{first:?}"
            );
        }
        Err(e) => panic!("watch from a compacted revision: {e}"),
    }
    // Events from the compaction point on are still delivered.
    let mut w = store.watch("/c/", at - 1).await.unwrap();
    let events = collect(&mut w, 1).await;
    assert_eq!(put_kv(&events[0]), &a3);
    assert!(matches!(
        store.compact(at - 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let current = store.current_revision().await.unwrap();
    assert!(matches!(
        store.compact(current + 5).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

pub async fn large_values_and_ranges_round_trip(store: &dyn Store) {
    // 1 MiB values (within etcd's default 1.5 MiB request limit) and a 6 MiB range, beyond gRPC's
    // default 4 MiB message limit.
    let big = |i: u8| Bytes::from(vec![i; 1 << 20]);
    let start = store.current_revision().await.unwrap();
    for i in 0..6u8 {
        store.create(&format!("/big/{i}"), big(i)).await.unwrap();
    }
    let all = store.range(RangeRequest::prefix("/big/")).await.unwrap();
    assert_eq!(all.kvs.len(), 6);
    for (i, kv) in all.kvs.iter().enumerate() {
        assert_eq!(kv.value, big(i as u8), "{}", kv.key);
    }
    let mut watch = store.watch("/big/", start).await.unwrap();
    let events = collect(&mut watch, 6).await;
    assert_eq!(put_kv(&events[5]).value, big(5));
}
