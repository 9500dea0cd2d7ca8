//! The store benchmark: the same workloads through the `Store` trait against redb and etcd.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use skiff_store::{EtcdOptions, EtcdStore, RangeRequest, RedbOptions, RedbStore, Store};
use skiff_testkit::{memory_of, EtcdServer};

use crate::report::{ms, percentile, Better, Report};

/// How big each workload is.
pub struct Sizes {
    sequential: usize,
    concurrent_writers: usize,
    per_writer: usize,
    range_keys: usize,
    range_repeats: usize,
    watchers: usize,
    watch_events: usize,
    memory_objects: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        let full = Sizes {
            sequential: 2_000,
            concurrent_writers: 16,
            per_writer: 500,
            range_keys: 10_000,
            range_repeats: 20,
            watchers: 1_000,
            watch_events: 200,
            memory_objects: 100_000,
        };
        if quick {
            Sizes {
                sequential: 200,
                per_writer: 50,
                range_keys: 1_000,
                range_repeats: 5,
                watchers: 100,
                watch_events: 50,
                memory_objects: 5_000,
                ..full
            }
        } else {
            full
        }
    }
}

fn value() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

/// The figures of one backend.
struct Figures {
    sequential: f64,
    concurrent: f64,
    range_ms: f64,
    watch_p50: f64,
    watch_p99: f64,
    memory_mib: f64,
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    eprintln!("redb (durable, file in {})", dir.path().display());
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(
        &dir.path().join("bench.redb"),
        RedbOptions::default(),
    )?);
    let mut ours = measure(redb, &sizes).await?;
    ours.memory_mib = redb_memory(&dir.path().join("memory.redb"), sizes.memory_objects)?;

    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await?
        .map_err(anyhow::Error::msg)?;
    let etcd = EtcdStore::connect(EtcdOptions::new(vec![server.endpoint()])).await?;
    let version = etcd_version().await;
    eprintln!("etcd {version} (Debian, loopback, default durability)");
    let etcd: Arc<dyn Store> = Arc::new(etcd);
    let mut theirs = measure(etcd.clone(), &sizes).await?;
    load(&etcd, "/bench/memory/", sizes.memory_objects, 64).await?;
    theirs.memory_mib = memory_of(server.pid())?.0 as f64 / (1 << 20) as f64;

    let mut report = Report::new("store", "redb", format!("etcd {version}"));
    let s = &sizes;
    report.add(
        format!("sequential creates, 1 KiB ({})", s.sequential),
        "ops/s",
        Better::Higher,
        ours.sequential,
        theirs.sequential,
    );
    report.add(
        format!(
            "{} concurrent writers, 1 KiB ({})",
            s.concurrent_writers,
            s.concurrent_writers * s.per_writer
        ),
        "ops/s",
        Better::Higher,
        ours.concurrent,
        theirs.concurrent,
    );
    report.add(
        format!("range of a {}-key prefix (p50)", s.range_keys),
        "ms",
        Better::Lower,
        ours.range_ms,
        theirs.range_ms,
    );
    report.add(
        format!("watch delivery p50, {} watchers", s.watchers),
        "ms",
        Better::Lower,
        ours.watch_p50,
        theirs.watch_p50,
    );
    report.add(
        format!("watch delivery p99, {} watchers", s.watchers),
        "ms",
        Better::Lower,
        ours.watch_p99,
        theirs.watch_p99,
    );
    report.add(
        format!("resident memory, {} x 1 KiB objects", s.memory_objects),
        "MiB",
        Better::Lower,
        ours.memory_mib,
        theirs.memory_mib,
    );
    Ok(report)
}

async fn etcd_version() -> String {
    let out = tokio::process::Command::new("etcd")
        .arg("--version")
        .output()
        .await;
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn measure(store: Arc<dyn Store>, s: &Sizes) -> anyhow::Result<Figures> {
    let started = Instant::now();
    for i in 0..s.sequential {
        store.create(&format!("/bench/seq/{i:08}"), value()).await?;
    }
    let sequential = s.sequential as f64 / started.elapsed().as_secs_f64();
    eprintln!("  sequential creates: {sequential:.0}/s");

    let started = Instant::now();
    let writers: Vec<_> = (0..s.concurrent_writers)
        .map(|w| {
            let store = store.clone();
            let n = s.per_writer;
            tokio::spawn(async move {
                for i in 0..n {
                    store
                        .create(&format!("/bench/conc/{w:03}/{i:06}"), value())
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let concurrent = (s.concurrent_writers * s.per_writer) as f64 / started.elapsed().as_secs_f64();
    eprintln!("  concurrent creates: {concurrent:.0}/s");

    load(&store, "/bench/range/", s.range_keys, 64).await?;
    let mut samples = Vec::with_capacity(s.range_repeats);
    for _ in 0..s.range_repeats {
        let started = Instant::now();
        let resp = store.range(RangeRequest::prefix("/bench/range/")).await?;
        samples.push(started.elapsed());
        anyhow::ensure!(
            resp.kvs.len() == s.range_keys,
            "range returned {} keys",
            resp.kvs.len()
        );
    }
    let range_ms = ms(percentile(&mut samples, 50.0));
    eprintln!("  range: {range_ms:.1} ms");

    let (watch_p50, watch_p99) = watch_latency(&store, s.watchers, s.watch_events).await?;
    eprintln!("  watch delivery: p50 {watch_p50:.2} ms, p99 {watch_p99:.2} ms");
    Ok(Figures {
        sequential,
        concurrent,
        range_ms,
        watch_p50,
        watch_p99,
        memory_mib: 0.0,
    })
}

/// Writes `count` 1 KiB keys under `prefix` with `writers` concurrent writers.
async fn load(
    store: &Arc<dyn Store>,
    prefix: &str,
    count: usize,
    writers: usize,
) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in (w..count).step_by(writers) {
                    store.create(&format!("{prefix}{i:08}"), value()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Time from the start of a write to its arrival at each of `watchers` watches, while writes go
/// on at about 100 per second; p50 and p99 in milliseconds.
async fn watch_latency(
    store: &Arc<dyn Store>,
    watchers: usize,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let start = store.current_revision().await?;
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let mut watch = store.watch("/bench/watch/", start).await?;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(events);
            while seen.len() < events {
                let resp = tokio::time::timeout(Duration::from_secs(60), watch.next())
                    .await
                    .context("watch delivered nothing for 60 s")?
                    .context("watch ended")??;
                let now = Instant::now();
                for e in &resp.events {
                    let index: usize = e.key().rsplit('/').next().unwrap_or("").parse()?;
                    seen.push((index, now));
                }
            }
            anyhow::Ok(seen)
        }));
    }
    let mut issued = Vec::with_capacity(events);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    for i in 0..events {
        ticker.tick().await;
        issued.push(Instant::now());
        store
            .create(&format!("/bench/watch/{i:08}"), value())
            .await?;
    }
    let mut samples = Vec::with_capacity(watchers * events);
    for t in tasks {
        for (index, at) in t.await?? {
            samples.push(at.duration_since(issued[index]));
        }
    }
    Ok((
        ms(percentile(&mut samples, 50.0)),
        ms(percentile(&mut samples, 99.0)),
    ))
}

/// Resident memory (MiB) of a separate process holding a redb store with `count` objects.
fn redb_memory(path: &Path, count: usize) -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["store-memory-child", "--path"])
        .arg(path)
        .args(["--count", &count.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "memory child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss: u64 = String::from_utf8(out.stdout)?.trim().parse()?;
    Ok(rss as f64 / (1 << 20) as f64)
}

/// The child's side of [`redb_memory`]: load, then print this process's RSS in bytes.
pub async fn memory_child(path: &Path, count: usize) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(path, RedbOptions::default())?);
    load(&store, "/bench/memory/", count, 64).await?;
    let (rss, _) = memory_of(std::process::id())?;
    println!("{rss}");
    Ok(())
}
