//! Runs probe and lifecycle-hook actions against a container: exec through the runtime, and
//! httpGet, tcpSocket and grpc over sockets made inside the pod's network namespace (a thread
//! enters it to create the socket; the connection then belongs to that namespace).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sched::CloneFlags;
use skiff_runtime::{ContainerId, Runtime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::probe::Outcome;

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http(HTTPGetAction),
    Tcp {
        host: Option<String>,
        port: IntOrString,
    },
    Grpc {
        port: i32,
        service: String,
    },
    Sleep(Duration),
}

impl Action {
    /// The handler kinds probes and hooks share.
    fn common(
        exec: Option<&ExecAction>,
        http: Option<&HTTPGetAction>,
        tcp: Option<&TCPSocketAction>,
    ) -> Option<Action> {
        if let Some(exec) = exec {
            return Some(Action::Exec(exec.command.clone().unwrap_or_default()));
        }
        if let Some(http) = http {
            return Some(Action::Http(http.clone()));
        }
        tcp.map(|tcp| Action::Tcp {
            host: tcp.host.clone(),
            port: tcp.port.clone(),
        })
    }

    pub fn of_probe(probe: &Probe) -> Option<Action> {
        let grpc = || {
            probe.grpc.as_ref().map(|g| Action::Grpc {
                port: g.port,
                service: g.service.clone().unwrap_or_default(),
            })
        };
        Self::common(
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
        )
        .or_else(grpc)
    }

    pub fn of_hook(hook: &LifecycleHandler) -> Option<Action> {
        let sleep = || {
            hook.sleep
                .as_ref()
                .map(|s| Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
        };
        Self::common(
            hook.exec.as_ref(),
            hook.http_get.as_ref(),
            hook.tcp_socket.as_ref(),
        )
        .or_else(sleep)
    }

    /// How the kubelet names the action in a failed hook's event.
    pub fn describe(&self) -> String {
        match self {
            Action::Exec(command) => format!("Exec lifecycle hook ({command:?})"),
            Action::Http(h) => {
                format!("HTTP lifecycle hook ({})", h.path.as_deref().unwrap_or("/"))
            }
            Action::Tcp { .. } => "TCP lifecycle hook".into(),
            Action::Grpc { .. } => "gRPC lifecycle hook".into(),
            Action::Sleep(d) => format!("Sleep lifecycle hook ({}s)", d.as_secs()),
        }
    }
}

/// The container an action runs against.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub id: ContainerId,
    /// The pod's network namespace; `None` connects from the agent's own.
    pub netns: Option<PathBuf>,
    /// The pod's IP, the default host of network actions (loopback while pods have none).
    pub pod_ip: Option<String>,
    pub container: Container,
}

/// Runs `action` within `timeout`.
pub async fn run(action: &Action, target: &Target, timeout: Duration) -> Outcome {
    let work = async {
        match action {
            Action::Exec(command) => exec(target, command, timeout).await,
            Action::Http(http) => http_get(target, http, timeout).await,
            Action::Tcp { host, port } => {
                let addr = address(target, host.as_deref(), port)?;
                connect(target, addr, timeout).await.map(drop)
            }
            Action::Grpc { port, service } => {
                let addr = address(target, None, &IntOrString::Int(*port))?;
                grpc(target, addr, service, timeout).await
            }
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(message)) => Outcome::Failure(message),
        Err(_) => Outcome::Failure(format!(
            "timeout: the action did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

async fn exec(target: &Target, command: &[String], timeout: Duration) -> Result<(), String> {
    let runtime = target.runtime.clone();
    let id = target.id.clone();
    let command = command.to_vec();
    let shown = command.clone();
    match crate::worker::blocking(move || runtime.exec(&id, &command, timeout)).await {
        Ok(r) if r.exit_code == 0 => Ok(()),
        Ok(r) => {
            let mut output = String::from_utf8_lossy(&r.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&r.stderr));
            let output = output.trim();
            Err(if output.is_empty() {
                format!("command {shown:?} exited with {}", r.exit_code)
            } else {
                output.to_string()
            })
        }
        Err(skiff_runtime::Error::ExecTimeout(..)) => Err(format!(
            "command {shown:?} timed out after {}s",
            timeout.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The port a probe names: a number, or the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("unknown port name {name:?}"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {number}"))
}

fn address(target: &Target, host: Option<&str>, p: &IntOrString) -> Result<SocketAddr, String> {
    let port = port(&target.container, p)?;
    let host = host
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| target.pod_ip.clone());
    let Some(host) = host else {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))
}

/// A TCP connection to `addr` made from inside the pod's network namespace.
async fn connect(
    target: &Target,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let netns = target.netns.clone();
    let dial = move || -> Result<TcpStream, String> {
        if let Some(path) = &netns {
            let ns = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("enter {}: {e}", path.display()))?;
        }
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))
    };
    // A thread of its own: one that entered a namespace never goes back to a pool.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(dial());
    });
    let stream = rx
        .await
        .map_err(|_| "the dialing thread died".to_string())??;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}

async fn http_get(target: &Target, http: &HTTPGetAction, timeout: Duration) -> Result<(), String> {
    let addr = address(target, http.host.as_deref(), &http.port)?;
    let stream = connect(target, addr, timeout).await?;
    let path = http
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let headers = http.http_headers.iter().flatten();
    if !headers.clone().any(|h| h.name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !headers
        .clone()
        .any(|h| h.name.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    for h in headers {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    let https = http
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let response = if https {
        let connector = tokio_rustls::TlsConnector::from(insecure_client());
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        exchange(tls, request.as_bytes()).await?
    } else {
        exchange(stream, request.as_bytes()).await?
    };
    let code =
        status_code(&response).ok_or_else(|| format!("malformed HTTP response from {addr}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Sends the request and reads the response's head (up to 10 KiB, as the kubelet does).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while response.len() < 10 * 1024 && !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    Ok(response)
}

/// The status code of an HTTP/1 response head.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// A TLS client that accepts any server certificate: kubelet's HTTPS probes do not verify, and
/// a joining agent checks the CA it fetched against its token's hash instead.
pub(crate) fn insecure_client() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    let provider = rustls::crypto::ring::default_provider();
    let verifier = AnyCertificate(provider.signature_verification_algorithms);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// The gRPC health-checking protocol's `Check` call over HTTP/2 without TLS, as kubelet's grpc
/// probe makes it: SERVING is success.
async fn grpc(
    target: &Target,
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect(target, addr, timeout).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("gRPC connection to {addr}: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(Full::new(Bytes::from(grpc_request(service))))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("gRPC call to {addr}: {e}"))?;
    let headers = response.headers().clone();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("gRPC response from {addr}: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    if grpc_status != "0" {
        let message = trailers
            .get("grpc-message")
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(format!(
            "health rpc probe failed: grpc-status {grpc_status} {message}"
        ));
    }
    match grpc_serving_status(&collected.to_bytes()) {
        Some(1) => Ok(()),
        Some(status) => Err(format!(
            "service unhealthy (responded with {:?})",
            serving_status_name(status)
        )),
        None => Err("malformed gRPC health response".into()),
    }
}

/// A length-prefixed `HealthCheckRequest { service }` message.
fn grpc_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when the field is absent).
fn grpc_serving_status(body: &[u8]) -> Option<u64> {
    let length = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    let message = body.get(5..5 + length)?;
    let mut i = 0;
    while i < message.len() {
        let key = message[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        if key & 0x07 != 0 {
            return None; // only varint fields are expected
        }
        loop {
            let b = *message.get(i)?;
            i += 1;
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if key >> 3 == 1 {
            return Some(value);
        }
    }
    Some(0)
}

fn serving_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNRECOGNIZED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_by_number_or_name() {
        let c: Container = serde_json::from_value(json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(port(&c, &IntOrString::Int(80)), Ok(80));
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port(&c, &IntOrString::String("81".into())), Ok(81));
        assert_eq!(
            port(&c, &IntOrString::String("grpc".into())),
            Err("unknown port name \"grpc\"".into())
        );
        assert_eq!(port(&c, &IntOrString::Int(0)), Err("invalid port 0".into()));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 oops\r\n"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    #[test]
    fn grpc_health_messages() {
        assert_eq!(grpc_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_request("db"), vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_serving_status(&[0, 0]), None);
    }

    #[tokio::test]
    async fn network_actions_reach_a_listener_and_report_refusals() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().take(2) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if request.starts_with("GET /healthz ") {
                    200
                } else {
                    500
                };
                write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = Target {
            runtime: Arc::new(skiff_runtime::fake::FakeRuntime::new()),
            id: ContainerId {
                pod_uid: "u".into(),
                name: "web".into(),
                attempt: 0,
            },
            netns: None,
            pod_ip: None,
            container: serde_json::from_value(json!({"name": "web"})).unwrap(),
        };
        let get = |path: &str, port: u16| {
            Action::Http(serde_json::from_value(json!({"path": path, "port": port})).unwrap())
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            run(&get("/healthz", open), &target, second).await,
            Outcome::Success
        );
        assert_eq!(
            run(&get("/other", open), &target, second).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let refused = run(
            &Action::Tcp {
                host: None,
                port: IntOrString::Int(closed.into()),
            },
            &target,
            second,
        )
        .await;
        let Outcome::Failure(message) = refused else {
            panic!("a closed port passed a tcpSocket probe");
        };
        assert!(message.contains("refused"), "{message}");
    }
}
