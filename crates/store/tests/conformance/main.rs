//! Store conformance: one suite (`suite.rs`) run against every backend, plus durability tests.

mod durability;
mod etcd_server;
mod suite;

use std::sync::Arc;

use skiff_store::{RedbOptions, RedbStore, Store};

/// A store under test and whatever must live as long as it (a directory, a server).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

macro_rules! conformance {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;

            conformance!(@by_ref $open;
                revisions_and_versions,
                guards_fail_without_writing,
                transactions_are_all_or_nothing,
                reads_at_past_revisions,
                ranges_page_consistently_under_writes,
                watch_delivers_every_change_in_order,
                watch_events_carry_the_written_bytes_when_the_store_says_so,
                watch_resumes_from_a_past_revision,
                progress_notifications_carry_the_current_revision,
                compaction_discards_history_with_a_distinct_error,
                large_values_and_ranges_round_trip
            );
            conformance!(@shared $open;
                concurrent_creates_of_one_key_admit_one,
                concurrent_compare_and_swap_loses_no_increment,
                many_watchers_each_see_everything,
                a_slow_watcher_misses_nothing
            );
        }
    };
    (@by_ref $open:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $open().await;
                suite::$name(&*fixture.store).await;
            }
        )*
    };
    (@shared $open:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $open().await;
                suite::$name(fixture.store.clone()).await;
            }
        )*
    };
}

pub fn test_options() -> RedbOptions {
    RedbOptions {
        progress_interval: std::time::Duration::from_millis(200),
        ..RedbOptions::default()
    }
}

async fn open_memory() -> Fixture {
    Fixture {
        store: Arc::new(RedbStore::in_memory(test_options()).unwrap()),
        _keep: Box::new(()),
    }
}

async fn open_redb() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb"), test_options()).unwrap();
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

conformance!(memory, open_memory);
conformance!(redb, open_redb);
conformance!(etcd, etcd_server::open_etcd);
