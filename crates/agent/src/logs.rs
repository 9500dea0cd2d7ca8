//! The agent's HTTPS endpoint: container logs (`/containerLogs/<ns>/<pod>/<container>`, as
//! kubelet serves them, with follow, previous, tailLines, timestamps, sinceSeconds, sinceTime
//! and limitBytes), for the API server's `pods/log` only: TLS with a client certificate of the
//! cluster CA naming the API server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::json;
use skiff_runtime::{crilog, ContainerState, ContainerStatus};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::agent::Agent;

/// The agent's serving certificate, the cluster CA, and the one client allowed in.
#[derive(Debug, Clone)]
pub struct ServingTls {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
    /// The common name of the API server's client certificate.
    pub client: String,
}

pub fn server_config(tls: &ServingTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_cert.as_bytes()) {
        roots
            .add(ca.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Accepts connections whose client certificate names the API server, forever.
pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, agent: Arc<Agent>) {
    let acceptor = TlsAcceptor::from(config);
    let allowed = agent.config.tls.client.clone();
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(common_name);
            if who.as_deref() != Some(allowed.as_str()) {
                tracing::warn!(%peer, ?who, "refused a client of the agent endpoint");
                return;
            }
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    #[serde(default)]
    pub follow: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    pub tail_lines: Option<i64>,
    #[serde(default)]
    pub timestamps: Option<String>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

fn flag(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("true") | Some("1") | Some(""))
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One line of a CRI log, partial records joined: its first record's time, stream and text.
#[derive(Debug, PartialEq)]
struct Line {
    time: String,
    content: Vec<u8>,
}

/// The complete lines of CRI log text (a partial line at the end waits for its end).
fn lines(raw: &[u8]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut pending: Option<Line> = None;
    for record in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let time = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let _stream = fields.next();
        let tag = fields.next().unwrap_or_default();
        let content = fields.next().unwrap_or_default();
        let line = pending.get_or_insert_with(|| Line {
            time,
            content: Vec::new(),
        });
        line.content.extend_from_slice(content);
        if tag != b"P" {
            let mut done = pending.take().expect("a line is pending");
            done.content.push(b'\n');
            out.push(done);
        }
    }
    out
}

/// The text `kubectl logs` shows of CRI log text, as the options say.
fn render(raw: &[u8], options: &LogOptions, since: Option<jiff::Timestamp>, tail: bool) -> Vec<u8> {
    let mut selected: Vec<Line> = lines(raw)
        .into_iter()
        .filter(|l| {
            since.is_none_or(|since| l.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since))
        })
        .collect();
    if let (true, Some(n)) = (tail, options.tail_lines) {
        let n = n.max(0) as usize;
        if selected.len() > n {
            selected.drain(..selected.len() - n);
        }
    }
    let mut out = Vec::new();
    for line in selected {
        if flag(&options.timestamps) {
            out.extend_from_slice(line.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&line.content);
    }
    out
}

/// The last `max_lines` lines of a container's log, at most `max_bytes` of them (a failed
/// container's termination message under `FallbackToLogsOnError`).
pub fn tail_text(path: &Path, max_lines: usize, max_bytes: usize) -> String {
    let raw = std::fs::read(path).unwrap_or_default();
    let options = LogOptions {
        tail_lines: Some(max_lines as i64),
        ..LogOptions::default()
    };
    let text = render(&raw, &options, None, true);
    let start = text.len().saturating_sub(max_bytes);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Every file of a log, oldest first (rotated ones before the current).
fn read_all(path: &Path) -> Vec<u8> {
    let mut files: Vec<_> = crilog::files(path, 10).filter(|p| p.exists()).collect();
    files.reverse();
    let mut raw = Vec::new();
    for file in files {
        raw.extend(std::fs::read(file).unwrap_or_default());
    }
    raw
}

/// Why a container that never ran waits, as kubelet tells `kubectl logs`: its waiting reason
/// from the pod's status, "image can't be pulled" for the pull failures.
fn waiting_reason(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> String {
    let reason = pod
        .status
        .iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .chain(s.container_statuses.iter())
        })
        .flatten()
        .find(|c| c.name == container)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    match reason.as_deref() {
        Some(
            "ImagePullBackOff"
            | "ErrImagePull"
            | "ErrImageNeverPull"
            | "RegistryUnavailable"
            | "ErrInvalidImageName",
        ) => "image can't be pulled".into(),
        Some(reason) if !reason.is_empty() => reason.to_string(),
        _ => "ContainerCreating".into(),
    }
}

async fn container_logs(
    State(agent): State<Arc<Agent>>,
    UrlPath((namespace, pod_name, container)): UrlPath<(String, String, String)>,
    Query(options): Query<LogOptions>,
) -> Response {
    let Some(pod) = agent.pod(&namespace, &pod_name) else {
        return status(
            404,
            "NotFound",
            format!("pod {namespace}/{pod_name} is not on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let runtime = agent.runtime.clone();
    let observed = {
        let uid = uid.clone();
        crate::worker::blocking(move || runtime.containers(Some(&uid)))
            .await
            .unwrap_or_default()
    };
    let observed: Vec<ContainerStatus> = observed
        .into_iter()
        .filter(|c| c.id.name == container)
        .collect();
    let attempts = crate::plan::Attempts::new(&observed);
    let chosen = if flag(&options.previous) {
        match attempts.previous(&container) {
            Some(c) => c,
            None => {
                return status(
                    400,
                    "BadRequest",
                    format!(
                        "previous terminated container {container:?} in pod {pod_name:?} not found"
                    ),
                )
            }
        }
    } else {
        match attempts.latest(&container) {
            Some(c) => c,
            None => {
                let why = waiting_reason(&pod, &container);
                return status(
                    400,
                    "BadRequest",
                    format!(
                        "container {container:?} in pod {pod_name:?} is waiting to start: {why}"
                    ),
                );
            }
        }
    };
    let since = match (&options.since_time, options.since_seconds) {
        (Some(t), _) => t.parse::<jiff::Timestamp>().ok(),
        (None, Some(s)) => jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(s))
            .ok(),
        _ => None,
    };
    let raw = read_all(&chosen.log_path);
    let mut first = render(&raw, &options, since, true);
    let limit = options.limit_bytes.filter(|l| *l > 0).map(|l| l as usize);
    if let Some(limit) = limit {
        first.truncate(limit);
    }
    let follow = flag(&options.follow) && chosen.state == ContainerState::Running;
    if !follow || limit.is_some_and(|l| first.len() >= l) {
        return ([("content-type", "text/plain")], first).into_response();
    }
    // Follow: what is there now, then new complete lines until the container ends.
    let path = chosen.log_path.clone();
    let id = chosen.id.clone();
    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let runtime = agent.runtime.clone();
    struct Follow {
        offset: u64,
        sent: usize,
        first: Option<Vec<u8>>,
        done: bool,
    }
    let state = Follow {
        offset,
        sent: first.len(),
        first: Some(first),
        done: false,
    };
    let stream = futures::stream::unfold(state, move |mut state| {
        let path = path.clone();
        let id = id.clone();
        let runtime = runtime.clone();
        let options_ts = options.timestamps.clone();
        async move {
            if let Some(first) = state.first.take() {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(first)), state));
            }
            loop {
                if state.done {
                    return None;
                }
                let raw = std::fs::read(&path).unwrap_or_default();
                let len = raw.len() as u64;
                if len < state.offset {
                    // Rotated: start over on the new file.
                    state.offset = 0;
                }
                let fresh = &raw[(state.offset as usize).min(raw.len())..];
                let complete = fresh.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if complete > 0 {
                    state.offset += complete as u64;
                    let opts = LogOptions {
                        timestamps: options_ts.clone(),
                        ..LogOptions::default()
                    };
                    let mut text = render(&fresh[..complete], &opts, None, false);
                    if let Some(limit) = limit {
                        text.truncate(limit.saturating_sub(state.sent));
                        state.done = state.sent + text.len() >= limit;
                    }
                    state.sent += text.len();
                    return Some((Ok(Bytes::from(text)), state));
                }
                let runtime = runtime.clone();
                let id = id.clone();
                let running = crate::worker::blocking(move || {
                    runtime.containers(Some(&id.pod_uid)).map(|cs| {
                        cs.iter()
                            .any(|c| c.id == id && c.state == ContainerState::Running)
                    })
                })
                .await
                .ok()
                .unwrap_or(false);
                if !running {
                    // One last read for what the container wrote before it ended.
                    state.done = true;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    ([("content-type", "text/plain")], Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_that_never_ran_says_why_it_waits() {
        let pod = |reason: Option<&str>| -> k8s_openapi::api::core::v1::Pod {
            let state = match reason {
                Some(r) => serde_json::json!({"waiting": {"reason": r}}),
                None => serde_json::json!({}),
            };
            serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [
                {"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}}))
            .unwrap()
        };
        for (reason, want) in [
            (Some("ErrImagePull"), "image can't be pulled"),
            (Some("ImagePullBackOff"), "image can't be pulled"),
            (
                Some("CreateContainerConfigError"),
                "CreateContainerConfigError",
            ),
            (None, "ContainerCreating"),
        ] {
            assert_eq!(waiting_reason(&pod(reason), "app"), want, "{reason:?}");
        }
        assert_eq!(
            waiting_reason(&pod(Some("ErrImagePull")), "other"),
            "ContainerCreating"
        );
    }

    const LOG: &str = "2026-11-30T10:00:00.000000001Z stdout F one\n\
                       2026-11-30T10:00:01.000000001Z stderr P tw\n\
                       2026-11-30T10:00:01.500000001Z stderr F o\n\
                       2026-11-30T10:00:02.000000001Z stdout F three\n\
                       2026-11-30T10:00:03.000000001Z stdout P unfinished";

    fn options(tail: Option<i64>, timestamps: bool) -> LogOptions {
        LogOptions {
            tail_lines: tail,
            timestamps: timestamps.then(|| "true".to_string()),
            ..LogOptions::default()
        }
    }

    fn text(options: &LogOptions, since: Option<&str>) -> String {
        let since = since.map(|s| s.parse().unwrap());
        String::from_utf8(render(LOG.as_bytes(), options, since, true)).unwrap()
    }

    #[test]
    fn logs_render_as_kubectl_shows_them() {
        assert_eq!(text(&options(None, false), None), "one\ntwo\nthree\n");
        assert_eq!(text(&options(Some(2), false), None), "two\nthree\n");
        assert_eq!(text(&options(Some(0), false), None), "");
        assert_eq!(
            text(&options(Some(1), true), None),
            "2026-11-30T10:00:02.000000001Z three\n"
        );
        assert_eq!(
            text(&options(None, false), Some("2026-11-30T10:00:01Z")),
            "two\nthree\n"
        );
    }

    #[test]
    fn the_tail_of_a_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        assert_eq!(tail_text(&path, 2, 100), "two\nthree\n");
        assert_eq!(tail_text(&path, 80, 6), "three\n");
        assert_eq!(tail_text(&dir.path().join("none"), 80, 100), "");
    }
}
