//! Joining a cluster with a token, as k3s agents do: the token carries the hash of the cluster
//! CA, so the agent can trust the server it fetched the CA from; the bootstrap part of the token
//! then obtains the node's client and serving certificates through CertificateSigningRequests.
//! The credentials are kept in the agent's data directory, so a restart needs no token.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The signers of node certificates (as the API server knows them).
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How long a certificate request may wait for its certificate.
const CSR_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token {0}")]
    BadToken(&'static str),
    #[error("the server URL {url:?}: {message}")]
    BadServer { url: String, message: String },
    #[error("fetching the cluster CA from {url}: {message}")]
    FetchCa { url: String, message: String },
    #[error("the cluster CA served by {url} does not match the join token's hash (sha256 {got}): not the cluster the token is for")]
    CaMismatch { url: String, got: String },
    #[error("{0}")]
    Credentials(String),
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        source: kube::Error,
    },
    #[error("certificate request {name} {outcome}")]
    Request { name: String, outcome: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A join token: `K10<sha256 of the CA certificate, hex>::<bootstrap token>`.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub bootstrap: String,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, JoinError> {
        let rest = text
            .trim()
            .strip_prefix("K10")
            .ok_or(JoinError::BadToken("does not start with K10"))?;
        let (hash, bootstrap) = rest
            .split_once("::")
            .ok_or(JoinError::BadToken("has no '::' after the CA hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::BadToken(
                "does not carry a CA hash of 64 hex digits",
            ));
        }
        if bootstrap.is_empty() {
            return Err(JoinError::BadToken("has no bootstrap token after '::'"));
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            bootstrap: bootstrap.to_string(),
        })
    }

    pub fn new(ca_pem: &str, bootstrap: &str) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash(ca_pem),
            bootstrap: bootstrap.to_string(),
        }
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K10{}::{}", self.ca_hash, self.bootstrap)
    }
}

/// The SHA-256 of the CA certificate as served (its PEM text), in hex.
pub fn ca_hash(ca_pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where an `https://host:port` server URL points.
fn server_address(url: &str) -> Result<(String, SocketAddr), JoinError> {
    let bad = |message: &str| JoinError::BadServer {
        url: url.to_string(),
        message: message.to_string(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https://"));
    }
    let host = uri.host().ok_or_else(|| bad("has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(6443);
    let host_only = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host_only, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot be resolved: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address"))?;
    Ok((host, addr))
}

/// The address this machine sends from toward the server (no packet is sent).
pub fn source_address(server_url: &str) -> Result<IpAddr, JoinError> {
    let (_, addr) = server_address(server_url)?;
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let io = |source| JoinError::BadServer {
        url: server_url.to_string(),
        message: format!("no route: {source}"),
    };
    let socket = UdpSocket::bind(any).map_err(io)?;
    socket.connect(addr).map_err(io)?;
    Ok(socket.local_addr().map_err(io)?.ip())
}

/// Fetches the CA from the server's `/cacerts` (trusting nothing yet) and checks it against the
/// token's hash.
pub async fn fetch_ca(server_url: &str, token: &JoinToken) -> Result<String, JoinError> {
    let url = format!("{}/cacerts", server_url.trim_end_matches('/'));
    let fail = |message: String| JoinError::FetchCa {
        url: url.clone(),
        message,
    };
    let (host, addr) = server_address(server_url)?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| fail("timed out connecting".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(crate::prober::insecure_client());
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let request = format!("GET /cacerts HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut response = Vec::new();
    let read = tls.read_to_end(&mut response).await;
    // A server may close without TLS close_notify; what was read is what counts.
    if response.is_empty() {
        return Err(fail(format!("no answer ({read:?})")));
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("a malformed HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default().to_string();
        return Err(fail(status));
    }
    let ca = body.to_string();
    let got = ca_hash(&ca);
    if got != token.ca_hash {
        return Err(JoinError::CaMismatch { url, got });
    }
    Ok(ca)
}

/// How a client authenticates.
pub enum Auth<'a> {
    Token(&'a str),
    Certificate { cert: &'a str, key: &'a str },
}

/// A kube client for `server` trusting `ca`.
pub async fn client(server: &str, ca: &str, auth: Auth<'_>) -> Result<kube::Client, JoinError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match auth {
        Auth::Token(token) => json!({"token": token}),
        Auth::Certificate { cert, key } => {
            json!({"client-certificate-data": b64(cert), "client-key-data": b64(key)})
        }
    };
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "skiff", "context": {"cluster": "skiff", "user": "node"}}],
        "current-context": "skiff",
    });
    let bad = |e: String| JoinError::Credentials(format!("the node's kubeconfig: {e}"));
    let parsed: Kubeconfig = serde_json::from_value(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    multiplexed(config).map_err(|e| bad(e.to_string()))
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// A kube client that speaks HTTP/2 when the server offers it, as client-go does: every
/// request and watch of the node shares one connection (kube's default client speaks HTTP/1.1
/// only and keeps a connection per concurrent request: about a hundred for a hundred pods).
fn multiplexed(config: kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // Small frames of many streams share the connection: Nagle's delay would hold them.
    http.set_nodelay(true);
    // A server out of reach fails a request in seconds rather than after the kernel's SYN
    // retries (about two minutes), so the agent can run from its local record meanwhile.
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // Pings find a connection whose peer vanished (a cut link, a server machine gone) so that
    // watches reconnect instead of waiting on it for the kernel's retransmissions (~15 min).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_timeout(KEEP_ALIVE)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// The node's credentials: the cluster CA, its client certificate and its serving certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

const FILES: [&str; 5] = [
    "ca.crt",
    "client.crt",
    "client.key",
    "serving.crt",
    "serving.key",
];

impl Credentials {
    /// The credentials kept in `dir`, if all are there.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, JoinError> {
        let mut texts = Vec::new();
        for name in FILES {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => texts.push(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(JoinError::Io { path, source }),
            }
        }
        let [ca, client_cert, client_key, serving_cert, serving_key] =
            <[String; 5]>::try_from(texts).expect("five files");
        Ok(Some(Credentials {
            ca,
            client_cert,
            client_key,
            serving_cert,
            serving_key,
        }))
    }

    /// Keeps the credentials in `dir`, keys readable by the owner only.
    pub fn save(&self, dir: &Path) -> Result<(), JoinError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JoinError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let texts = [
            &self.ca,
            &self.client_cert,
            &self.client_key,
            &self.serving_cert,
            &self.serving_key,
        ];
        for (name, text) in FILES.iter().zip(texts) {
            let path = dir.join(name);
            let partial = dir.join(format!(".{name}.partial"));
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&partial)
                .map_err(io(&partial))?;
            std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io(&partial))?;
            file.sync_all().map_err(io(&partial))?;
            std::fs::rename(&partial, &path).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// A new key and a request for a certificate of `user` in `system:nodes` with `sans`.
fn request(user: &str, sans: &[String]) -> Result<(String, String), JoinError> {
    let fail =
        |e: rcgen::Error| JoinError::Credentials(format!("making a certificate request: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(fail)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, user);
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// Asks for a certificate and waits until it is issued.
async fn certificate(
    client: &kube::Client,
    request_pem: &str,
    signer: &str,
    usages: &[&str],
    prefix: &str,
) -> Result<String, JoinError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": prefix},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
            "signerName": signer,
            "usages": usages,
        },
    }))
    .expect("a CertificateSigningRequest");
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| JoinError::Api {
            what: "creating a certificate request",
            source,
        })?;
    let name = created.metadata.name.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + CSR_WAIT;
    loop {
        let csr = api.get(&name).await.map_err(|source| JoinError::Api {
            what: "reading a certificate request",
            source,
        })?;
        let status = csr.status.unwrap_or_default();
        if let Some(cert) = status.certificate {
            return String::from_utf8(cert.0).map_err(|_| JoinError::Request {
                name,
                outcome: "was answered with a certificate that is not PEM text".into(),
            });
        }
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            return Err(JoinError::Request {
                name,
                outcome: format!(
                    "was {}: {}",
                    c.type_.to_lowercase(),
                    c.message.clone().unwrap_or_default()
                ),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::Request {
                name,
                outcome: format!(
                    "got no certificate within {}s (approve it with `kubectl certificate approve`)",
                    CSR_WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's credentials: those kept in `dir`, or new ones obtained with `token` (and kept).
pub async fn credentials(
    server: &str,
    token: Option<&JoinToken>,
    node: &str,
    node_ip: &str,
    dir: &Path,
) -> Result<Credentials, JoinError> {
    if let Some(kept) = Credentials::load(dir)? {
        // A token for another cluster means the node is being moved there.
        if token.is_none_or(|t| t.ca_hash == ca_hash(&kept.ca)) {
            return Ok(kept);
        }
    }
    let token = token.ok_or_else(|| {
        JoinError::Credentials(format!(
            "this node has no credentials in {} yet: give a join token (`skiff token create` on the server prints one)",
            dir.display()
        ))
    })?;
    let ca = fetch_ca(server, token).await?;
    let bootstrap = client(server, &ca, Auth::Token(&token.bootstrap)).await?;
    let user = format!("system:node:{node}");
    let (client_request, client_key) = request(&user, &[])?;
    let client_cert = certificate(
        &bootstrap,
        &client_request,
        CLIENT_SIGNER,
        &["digital signature", "client auth"],
        "node-csr-",
    )
    .await?;
    let node_client = client(
        server,
        &ca,
        Auth::Certificate {
            cert: &client_cert,
            key: &client_key,
        },
    )
    .await?;
    let (serving_request, serving_key) = request(&user, &[node_ip.to_string(), node.to_string()])?;
    let serving_cert = certificate(
        &node_client,
        &serving_request,
        SERVING_SIGNER,
        &["digital signature", "server auth"],
        "node-serving-csr-",
    )
    .await?;
    let credentials = Credentials {
        ca,
        client_cert,
        client_key,
        serving_cert,
        serving_key,
    };
    credentials.save(dir)?;
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_ca_hash_and_the_bootstrap_token() {
        let token = JoinToken::new("-----BEGIN CERTIFICATE-----\n", "abcdef.0123456789abcdef");
        assert_eq!(token.ca_hash.len(), 64);
        let text = token.to_string();
        assert!(text.starts_with("K10") && text.ends_with("::abcdef.0123456789abcdef"));
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        for (bad, why) in [
            ("abc", "does not start with K10"),
            ("K10abc", "has no '::' after the CA hash"),
            ("K10abc::x.y", "does not carry a CA hash of 64 hex digits"),
        ] {
            assert_eq!(
                JoinToken::parse(bad).unwrap_err().to_string(),
                format!("the join token {why}")
            );
        }
        // Known vector: sha256("abc").
        assert_eq!(
            ca_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn server_urls_must_be_https() {
        assert!(server_address("https://127.0.0.1:6443").is_ok());
        assert_eq!(server_address("https://127.0.0.1").unwrap().1.port(), 6443);
        let err = server_address("http://127.0.0.1:6443")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with https://"), "{err}");
        assert_eq!(
            source_address("https://127.0.0.1:6443").unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn credentials_are_kept_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), None);
        let c = Credentials {
            ca: "ca".into(),
            client_cert: "cc".into(),
            client_key: "ck".into(),
            serving_cert: "sc".into(),
            serving_key: "sk".into(),
        };
        c.save(dir.path()).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), Some(c));
        let mode = std::fs::metadata(dir.path().join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
