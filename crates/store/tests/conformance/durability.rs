//! What only a store on disk must do: survive restarts and SIGKILL, refuse foreign or damaged files.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_store::{RangeRequest, RedbOptions, RedbStore, Store, StoreError};

use crate::test_options;

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path, test_options()).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

async fn all(store: &RedbStore, prefix: &str) -> Vec<skiff_store::KeyValue> {
    store.range(RangeRequest::prefix(prefix)).await.unwrap().kvs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_data_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (a, deleted_at) = {
        let store = open(&path);
        let a = store
            .create("/k/a", Bytes::from_static(b"1"))
            .await
            .unwrap();
        store
            .create("/k/b", Bytes::from_static(b"2"))
            .await
            .unwrap();
        let (_, deleted_at) = store.delete("/k/b", None).await.unwrap();
        (a, deleted_at)
    };
    let store = open(&path);
    assert_eq!(store.current_revision().await.unwrap(), deleted_at);
    assert_eq!(all(&store, "/k/").await, vec![a.clone()]);
    let next = store
        .create("/k/c", Bytes::from_static(b"3"))
        .await
        .unwrap();
    assert_eq!(
        next.mod_revision,
        deleted_at + 1,
        "revisions continue after a restart"
    );
    // History from before the restart is still there for watch resume.
    let mut watch = store.watch("/k/", a.mod_revision).await.unwrap();
    let events = crate::suite::collect(&mut watch, 3).await;
    assert_eq!(events.last().unwrap().revision(), next.mod_revision);
}

const CRASH_ENV: &str = "SKIFF_STORE_CRASH_CHILD";
const CRASH_WRITERS: usize = 8;

/// Parent: runs this same test in a child process that writes as fast as it can, kills it with
/// SIGKILL mid-stream, and checks acknowledged ⊆ present ⊆ attempted with no revision gap.
/// Child (when `SKIFF_STORE_CRASH_CHILD` names a file): the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    if let Ok(path) = std::env::var(CRASH_ENV) {
        return crash_child(Path::new(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability::acknowledged_writes_survive_sigkill",
            "--nocapture",
        ])
        .env(CRASH_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut attempted: HashMap<String, ()> = HashMap::new();
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in stdout.lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["attempt", key] => {
                attempted.insert(key.to_string(), ());
            }
            ["ack", key, rev] => {
                acked.insert(key.to_string(), rev.parse().unwrap());
            }
            _ => {}
        }
        if !killed && (acked.len() >= 3000 || Instant::now() > deadline) {
            // SAFETY: kill(2) on the PID of the child this test spawned.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the writer stopped by itself: {status}");
    assert!(
        acked.len() >= 100,
        "the writer acknowledged only {} writes",
        acked.len()
    );

    let store = open(&path);
    let present = all(&store, "/crash/").await;
    let current = store.current_revision().await.unwrap();
    for (key, rev) in &acked {
        let kv = present
            .iter()
            .find(|kv| &kv.key == key)
            .unwrap_or_else(|| panic!("acknowledged {key} at {rev} is lost"));
        assert_eq!(kv.mod_revision, *rev, "{key}");
        assert_eq!(kv.value, Bytes::from(key.clone()));
    }
    for kv in &present {
        assert!(
            attempted.contains_key(&kv.key),
            "{} was never attempted",
            kv.key
        );
    }
    let mut revs: Vec<i64> = present.iter().map(|kv| kv.mod_revision).collect();
    revs.sort_unstable();
    let want: Vec<i64> = (2..=current).collect();
    assert_eq!(
        revs, want,
        "every revision up to {current} holds exactly one present write"
    );
    eprintln!(
        "crash: {} attempted, {} acknowledged, {} present at revision {current}",
        attempted.len(),
        acked.len(),
        present.len()
    );
}

async fn crash_child(path: &Path) {
    let store: Arc<dyn Store> = Arc::new(open(path));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let writers: Vec<_> = (0..CRASH_WRITERS)
        .map(|w| {
            let (store, out) = (store.clone(), out.clone());
            tokio::spawn(async move {
                // Bounded: the parent kills the child long before this ends.
                for i in 0..1_000_000 {
                    let key = format!("/crash/{w}/{i}");
                    writeln!(out.lock().unwrap(), "attempt {key}").unwrap();
                    let kv = store.create(&key, Bytes::from(key.clone())).await.unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {key} {}", kv.mod_revision).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

#[test]
fn a_foreign_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n").unwrap();
    match RedbStore::open(&path, RedbOptions::default()) {
        Err(e @ StoreError::Foreign { .. }) => {
            assert!(e.to_string().contains("notes.txt"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a text file opened as a store"),
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "these are my notes, not a database\n",
        "the file is left untouched"
    );
}

#[test]
fn another_programs_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("accounts");
            wtx.open_table(def).unwrap().insert("alice", 10).unwrap();
        }
        wtx.commit().unwrap();
    }
    match RedbStore::open(&path, RedbOptions::default()) {
        Err(e @ StoreError::Foreign { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("other.redb") && msg.contains("accounts"),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("another program's database opened as a store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_fails_loudly_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for damage in ["overwrite", "truncate"] {
        let path = dir.path().join(format!("{damage}.redb"));
        {
            let store = open(&path);
            for i in 0..2000 {
                store
                    .create(&format!("/d/{i:05}"), Bytes::from(vec![b'v'; 512]))
                    .await
                    .unwrap();
            }
        }
        let len = std::fs::metadata(&path).unwrap().len();
        match damage {
            "overwrite" => {
                let mut bytes = std::fs::read(&path).unwrap();
                let (from, to) = (4096, bytes.len() - 4096);
                bytes[from..to].fill(0xab);
                std::fs::write(&path, bytes).unwrap();
            }
            _ => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
        }
        let outcome = match RedbStore::open(&path, RedbOptions::default()) {
            Err(e) => Err(e),
            Ok(store) => store
                .range(RangeRequest::prefix("/d/"))
                .await
                .map(|r| r.kvs.len()),
        };
        match outcome {
            Err(e) => assert!(
                e.to_string().contains(&format!("{damage}.redb")),
                "{damage}: error does not name the file: {e}"
            ),
            Ok(n) => panic!("{damage}: a damaged store opened and listed {n} keys"),
        }
    }
}

#[test]
fn a_second_opener_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = open(&path);
    match RedbStore::open(&path, RedbOptions::default()) {
        Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("store.redb")),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("the store opened twice"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_outside_the_window_is_compacted_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(
        &dir.path().join("store.redb"),
        RedbOptions {
            history_window: Duration::from_millis(300),
            compaction_interval: Duration::from_millis(50),
            ..test_options()
        },
    )
    .unwrap();
    let first = store
        .create("/w/a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let mut kv = first.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        kv = store
            .update("/w/a", Bytes::from_static(b"x"), kv.mod_revision)
            .await
            .unwrap();
        if let Err(StoreError::Compacted { .. }) = store.get("/w/a", Some(first.mod_revision)).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "history was never compacted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.compacted_revision().unwrap() > first.mod_revision);
    assert_eq!(store.get("/w/a", None).await.unwrap().kv, Some(kv));
}

/// A size-limited tmpfs mounted for one test (needs root, as CI has); unmounted when dropped,
/// even when the test fails.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "skiff-test-full-disk",
            ])
            .arg(dir.path())
            .status()
            .expect("the full-disk test needs the mount command (util-linux)");
        assert!(
            status.success(),
            "the full-disk test needs root to mount a tmpfs"
        );
        SmallDisk { dir }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remounting the test tmpfs failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_loses_nothing() {
    let disk = SmallDisk::mount("4m");
    let path = disk.dir.path().join("store.redb");
    let mut acked = Vec::new();
    let failure = {
        let store = open(&path);
        let mut failure = None;
        for i in 0..100_000 {
            let key = format!("/full/{i:06}");
            match store.create(&key, Bytes::from(vec![b'f'; 4096])).await {
                Ok(kv) => acked.push(kv),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("a 4 MiB disk never filled up");
        // Later writes keep failing cleanly, saying what to do, and nothing panics.
        match store.create("/full/after", Bytes::from_static(b"x")).await {
            Err(e @ StoreError::Io { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("store.redb") && msg.contains("restart"),
                    "{msg}"
                );
            }
            other => panic!("a write after the disk filled: {other:?}"),
        }
        failure
    };
    let message = failure.to_string();
    eprintln!("full disk after {} writes: {message}", acked.len());
    assert!(
        message.contains("store.redb"),
        "the error names the file: {message}"
    );
    assert!(acked.len() > 100, "only {} writes fit", acked.len());

    // With room again, the store opens with every acknowledged write and continues.
    disk.resize("64m");
    let store = open(&path);
    let present = all(&store, "/full/").await;
    assert_eq!(
        present, acked,
        "acknowledged writes are all there, nothing else"
    );
    let next = store
        .create("/full/next", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(next.mod_revision, acked.last().unwrap().mod_revision + 1);
}
