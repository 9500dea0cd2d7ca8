//! The API server benchmark: a release `skiff server` on loopback driven over TLS and HTTP/2,
//! its figures set against issue 3's targets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skiff_testkit::{cpu_seconds_of, memory_of, SkiffServer};

use crate::report::{ms, percentile, Better, Report};

/// How big each workload is.
pub struct Sizes {
    creates: usize,
    clients: usize,
    memory_objects: usize,
    watchers: usize,
    connections: usize,
    events_per_second: usize,
    watch_seconds: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        let full = Sizes {
            creates: 20_000,
            clients: 16,
            memory_objects: 20_000,
            watchers: 10_000,
            connections: 100,
            events_per_second: 100,
            watch_seconds: 10,
        };
        if quick {
            Sizes {
                creates: 2_000,
                memory_objects: 2_000,
                watchers: 1_000,
                connections: 10,
                watch_seconds: 3,
                ..full
            }
        } else {
            full
        }
    }
}

/// HTTP/2 connections to the server with the admin's client certificate.
struct Connector {
    tls: tokio_rustls::TlsConnector,
    port: u16,
}

impl Connector {
    fn new(server: &SkiffServer) -> anyhow::Result<Connector> {
        let pki = server.data_dir().join("pki");
        let read =
            |name: &str| std::fs::read(pki.join(name)).with_context(|| format!("reading {name}"));
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
            roots.add(ca?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("admin.crt")?).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&read("admin.key")?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            port: server.port(),
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let tls = self.tls.connect(name, tcp).await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(conn);
        Ok(send)
    }
}

/// Sends one request and reads the whole answer; fails on a non-2xx status.
async fn call(
    conn: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Bytes> {
    conn.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

/// A ConfigMap; watch workloads add a label group and the send time as an annotation.
fn configmap(name: &str, data: &str, watched: Option<(usize, u128)>) -> String {
    let extra = watched
        .map(|(group, sent)| {
            format!(r#","labels":{{"group":"{group}"}},"annotations":{{"bench/sent":"{sent}"}}"#)
        })
        .unwrap_or_default();
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"{extra}}},"data":{{"d":"{data}"}}}}"#
    )
}

async fn create_namespace(conn: &mut SendRequest<Full<Bytes>>, name: &str) -> anyhow::Result<()> {
    let ns = format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#);
    call(conn, "POST", "/api/v1/namespaces", Some(ns)).await?;
    Ok(())
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(memory_of(pid)?.0 as f64 / (1024.0 * 1024.0))
}

pub async fn run(sizes: Sizes) -> anyhow::Result<Report> {
    let bin = crate::binary::release_binary()?;
    let server = SkiffServer::start(&bin, &[]).map_err(anyhow::Error::msg)?;
    let mut report = Report::new("apiserver", "skiff", "target (issue 3)".into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(server.pid())?;
    report.add(
        "idle resident memory, empty store",
        "MiB",
        Better::Lower,
        idle,
        20.0,
    );

    let connector = Connector::new(&server)?;
    let (rate, get_p99) = creates_under_load(&connector, &sizes).await?;
    report.add(
        format!("ConfigMap creates, {} TLS clients", sizes.clients),
        "creates/s",
        Better::Higher,
        rate,
        5_000.0,
    );
    report.add(
        "GET p99 during the creates",
        "ms",
        Better::Lower,
        get_p99,
        10.0,
    );

    let per_object = memory_per_object(&connector, &server, &sizes).await?;
    report.add(
        "resident memory per stored 1 KiB object",
        "KiB",
        Better::Lower,
        per_object,
        3.0,
    );

    for (groups, what) in [(100, "1% of"), (1, "all")] {
        let w = watch_delivery(&connector, &server, &sizes, groups).await?;
        let label = format!(
            "event p99, {} watches/{} conns, {what} see each",
            sizes.watchers, sizes.connections
        );
        report.add(label, "ms", Better::Lower, w.p99_ms, 100.0);
        eprintln!(
            "    ({} of {} events/s written; server CPU {:.2} cores; {} deliveries)",
            w.write_rate as u64, sizes.events_per_second, w.server_cores, w.deliveries
        );
    }
    Ok(report)
}

/// Starts `clients` connections creating `total` ConfigMaps holding `data` in `namespace`
/// between them, counting them in `done`.
async fn spawn_creators(
    connector: &Connector,
    clients: usize,
    namespace: &str,
    data: &str,
    total: usize,
    done: &Arc<AtomicUsize>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let next = Arc::new(AtomicUsize::new(0));
    let path = format!("/api/v1/namespaces/{namespace}/configmaps");
    let mut writers = Vec::new();
    for _ in 0..clients {
        let mut conn = connector.connect().await?;
        let (next, done, data, path) = (next.clone(), done.clone(), data.to_string(), path.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok(());
                }
                let body = configmap(&format!("cm-{i}"), &data, None);
                call(&mut conn, "POST", &path, Some(body)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    Ok(writers)
}

/// Creates small ConfigMaps from concurrent clients while one more client GETs one object over
/// and over; answers creates per second and the GETs' p99 in ms.
async fn creates_under_load(connector: &Connector, s: &Sizes) -> anyhow::Result<(f64, f64)> {
    let mut setup = connector.connect().await?;
    create_namespace(&mut setup, "bench-create").await?;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers = spawn_creators(
        connector,
        s.clients,
        "bench-create",
        "small",
        s.creates,
        &done,
    )
    .await?;
    let mut reader = connector.connect().await?;
    let mut gets = Vec::new();
    while done.load(Ordering::Relaxed) < s.creates && !writers.iter().all(|w| w.is_finished()) {
        let t = Instant::now();
        call(
            &mut reader,
            "GET",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            None,
        )
        .await?;
        gets.push(t.elapsed());
    }
    for w in writers {
        w.await??;
    }
    let rate = s.creates as f64 / started.elapsed().as_secs_f64();
    Ok((rate, ms(percentile(&mut gets, 99.0))))
}

/// Resident memory added by storing 1 KiB ConfigMaps, per object, in KiB.
async fn memory_per_object(
    connector: &Connector,
    server: &SkiffServer,
    s: &Sizes,
) -> anyhow::Result<f64> {
    let mut conn = connector.connect().await?;
    create_namespace(&mut conn, "bench-memory").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mib(server.pid())?;
    let data = "x".repeat(1024);
    let done = Arc::new(AtomicUsize::new(0));
    let writers = spawn_creators(
        connector,
        s.clients,
        "bench-memory",
        &data,
        s.memory_objects,
        &done,
    )
    .await?;
    for w in writers {
        w.await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(server.pid())?;
    Ok((after - before) * 1024.0 / s.memory_objects as f64)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The send time a watch event carries in its `bench/sent` annotation.
fn sent_at(line: &[u8]) -> Option<u128> {
    const MARK: &[u8] = b"\"bench/sent\":\"";
    let start = line.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let end = start + line[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&line[start..end]).ok()?.parse().ok()
}

/// What one watch workload measured.
struct WatchFigures {
    p99_ms: f64,
    /// Writes per second actually achieved (the target rate when the server keeps up).
    write_rate: f64,
    /// The server's CPU use during the writes, in cores.
    server_cores: f64,
    deliveries: usize,
}

/// From writing an object to each watcher reading its event, with `s.watchers` watches over
/// `s.connections` HTTP/2 connections and `s.events_per_second` writes; each watcher selects
/// one of `groups` label groups, and each write is in one group.
async fn watch_delivery(
    connector: &Connector,
    server: &SkiffServer,
    s: &Sizes,
    groups: usize,
) -> anyhow::Result<WatchFigures> {
    let ns = format!("bench-watch-{groups}");
    let mut conn = connector.connect().await?;
    create_namespace(&mut conn, &ns).await?;
    let list = call(
        &mut conn,
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        None,
    )
    .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let total = s.events_per_second * s.watch_seconds as usize;
    let expected = total / groups;
    let mut readers = Vec::new();
    for c in 0..s.connections {
        let mut conn = connector.connect().await?;
        let mut watches = Vec::new();
        for w in 0..s.watchers / s.connections {
            let group = (c * (s.watchers / s.connections) + w) % groups;
            let path = format!(
                "/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds={}&labelSelector=group%3D{group}",
                s.watch_seconds * 4 + 30
            );
            conn.ready().await?;
            let req = Request::builder()
                .uri(format!("https://127.0.0.1{path}"))
                .body(Full::new(Bytes::new()))?;
            let resp = conn.send_request(req).await?;
            watches.push(read_events(resp.into_body(), expected));
        }
        // One task per connection reads all its watches: the client stays light, so the
        // machine's cores go to the server being measured.
        readers.push(tokio::spawn(futures::future::join_all(watches)));
    }
    // Let every watch reach the server before the first write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interval = Duration::from_secs(1) / s.events_per_second as u32;
    let mut ticker = tokio::time::interval(interval);
    let cpu_before = cpu_seconds_of(server.pid())?;
    let writing = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let body = configmap(&format!("w-{i}"), "v", Some((i % groups, now_nanos())));
        call(
            &mut conn,
            "POST",
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(body),
        )
        .await?;
    }
    let wrote_in = writing.elapsed();
    let server_cores = (cpu_seconds_of(server.pid())? - cpu_before) / wrote_in.as_secs_f64();
    let mut latencies = Vec::with_capacity(s.watchers * expected);
    let mut short = Vec::new();
    for r in readers {
        for watch in tokio::time::timeout(Duration::from_secs(120), r).await?? {
            let (got, seen) = watch?;
            if seen < expected {
                short.push(seen);
            }
            latencies.extend(got.into_iter().map(|us| Duration::from_micros(us as u64)));
        }
    }
    if !short.is_empty() {
        bail!(
            "{} watchers ended before receiving all {expected} events (fewest {}, most {}); the \
             writes took {wrote_in:?}; p99 of what arrived: {:.1} ms",
            short.len(),
            short.iter().min().unwrap_or(&0),
            short.iter().max().unwrap_or(&0),
            ms(percentile(&mut latencies, 99.0))
        );
    }
    Ok(WatchFigures {
        deliveries: latencies.len(),
        p99_ms: ms(percentile(&mut latencies, 99.0)),
        write_rate: total as f64 / wrote_in.as_secs_f64(),
        server_cores,
    })
}

/// Reads watch events until `expected` arrived; answers each one's delivery latency in µs.
async fn read_events(
    mut body: hyper::body::Incoming,
    expected: usize,
) -> anyhow::Result<(Vec<u32>, usize)> {
    let mut latencies = Vec::with_capacity(expected);
    let mut pending: Vec<u8> = Vec::new();
    while latencies.len() < expected {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let arrived = now_nanos();
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            if let Some(sent) = sent_at(&pending[..end]) {
                latencies.push(((arrived.saturating_sub(sent)) / 1000) as u32);
            }
            pending.drain(..=end);
        }
    }
    let seen = latencies.len();
    Ok((latencies, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_read_from_event_lines() {
        let line =
            br#"{"type":"ADDED","object":{"metadata":{"annotations":{"bench/sent":"1234"}}}}"#;
        assert_eq!(sent_at(line), Some(1234));
        assert_eq!(sent_at(br#"{"type":"BOOKMARK"}"#), None);
        let body = configmap("a", "v", Some((3, 99)));
        assert_eq!(sent_at(body.as_bytes()), Some(99));
    }
}
