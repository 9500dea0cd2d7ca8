//! The API server: certificates, the system namespaces, the routes, authentication, and the
//! namespace lifecycle (the kube-root-ca.crt ConfigMap in each, contents removed on deletion).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::{json, Value};
use skiff_api::kinds::{self, Kind, Storage};
use skiff_api::object::Lookup;
use skiff_api::object::{self, Filter};
use skiff_api::service::ServiceRanges;
use skiff_store::Store;

use crate::cache::{KindCache, WatchCache};
use crate::format::json_response;
use crate::pki::{Pki, PkiError};
use crate::registry::{DeleteOptions, Registry, Target};
use crate::status::ApiError;
use crate::tls::{Identity, TlsError};
use crate::{discovery, openapi, rest, tls};

/// How `skiff server` is started.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names and addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Changes kept per kind for watches resuming from a resourceVersion.
    pub watch_history: crate::cache::History,
    /// Where Services' cluster IPs and node ports come from.
    pub service_ranges: ServiceRanges,
    /// Run the controllers (Deployments, ReplicaSets, garbage collection) in this process.
    pub controllers: bool,
    /// How long Events are kept after they were last seen.
    pub event_ttl: Duration,
    /// When unreachable nodes are tainted and their pods evicted.
    pub node_lifecycle: skiff_controllers::nodelifecycle::Settings,
    /// Where nodes' pod CIDRs come from.
    pub node_ipam: skiff_controllers::nodeipam::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the API: {0}")]
    Bootstrap(String),
    #[error("the API server's client TLS toward agents: {0}")]
    AgentTls(String),
}

/// What the handlers share.
pub struct Api {
    pub registry: Registry,
    /// The cluster CA: its certificate for every namespace, its key for certificate requests.
    pub pki: Arc<Pki>,
    /// Where the API listens (the `kubernetes` Service's endpoint and target port).
    listen: SocketAddr,
    /// TLS toward node agents (logs), with the API server's client certificate.
    pub kubelet_client: Arc<rustls::ClientConfig>,
}

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn kind(group: &str, plural: &str) -> &'static Kind {
    kinds::find(group, "v1", plural).expect("a kind of the table")
}

impl Api {
    /// The watch cache of `kind`, loaded on first use.
    pub async fn cache(&self, kind: &'static Kind) -> Result<Arc<KindCache>, ApiError> {
        self.registry
            .cache
            .of(kind)
            .await
            .map_err(ApiError::from_store)
    }

    /// Runs after every create: a new namespace gets the cluster CA ConfigMap and its
    /// `default` ServiceAccount.
    pub async fn after_create(self: &Arc<Self>, created_kind: &'static Kind, obj: &Value) {
        if crate::csr::is_csr(created_kind) {
            self.settle_csr(created_kind, object::name(obj));
        }
        if created_kind.group.is_empty() && created_kind.kind == "Namespace" {
            if let Err(e) = self.furnish(object::name(obj)).await {
                tracing::warn!(namespace = object::name(obj), error = %e.message, "furnishing a namespace");
            }
        }
    }

    /// Approves and signs a certificate request in the background, as Kubernetes' approver and
    /// signer controllers do.
    pub fn settle_csr(self: &Arc<Self>, kind: &'static Kind, name: &str) {
        let api = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Err(e) = crate::csr::settle(&api, kind, &name).await {
                tracing::warn!(csr = %name, error = %e.message, "settling a certificate request");
            }
        });
    }

    /// What every namespace has: the cluster CA ConfigMap and the `default` ServiceAccount.
    async fn furnish(&self, namespace: &str) -> Result<(), ApiError> {
        self.publish_root_ca(namespace).await?;
        let account =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        self.registry
            .ensure(kind("", "serviceaccounts"), Some(namespace), account)
            .await
    }

    /// Runs after every delete: a namespace marked for deletion has its contents removed.
    pub fn after_delete(&self, deleted_kind: &Kind, obj: &Value) {
        if deleted_kind.group.is_empty()
            && deleted_kind.kind == "Namespace"
            && obj.lookup("/metadata/deletionTimestamp").is_some()
        {
            tokio::spawn(empty_namespace(
                self.registry.clone(),
                object::name(obj).to_string(),
            ));
        }
    }

    async fn publish_root_ca(&self, namespace: &str) -> Result<(), ApiError> {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt"},
            "data": {"ca.crt": self.pki.ca_cert},
        });
        self.registry
            .ensure(kind("", "configmaps"), Some(namespace), cm)
            .await
    }

    /// The `kubernetes` Service's endpoints: this server's address, when pods can reach it (a
    /// loopback or wildcard listen address is no endpoint: the Service then refuses).
    /// FIXME(issue 9): a wildcard address could list the machine's addresses; several servers
    /// on one etcd overwrite each other's (Kubernetes' endpoint reconciler merges them).
    async fn kubernetes_endpoints(&self) -> Result<(), ApiError> {
        let ip = self.listen.ip();
        let usable = !ip.is_loopback() && !ip.is_unspecified() && ip.is_ipv4();
        let port = self.listen.port();
        let labels = json!({"kubernetes.io/service-name": "kubernetes",
                            "endpointslice.kubernetes.io/managed-by": "skiff-apiserver"});
        let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}});
        let mut slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
        if usable {
            endpoints["subsets"] = json!([{"addresses": [{"ip": ip.to_string()}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
            slice["endpoints"] =
                json!([{"addresses": [ip.to_string()], "conditions": {"ready": true}}]);
        }
        let slices =
            kinds::find("discovery.k8s.io", "v1", "endpointslices").expect("a served kind");
        self.registry
            .put(
                kind("", "endpoints"),
                Some("default"),
                endpoints,
                &["subsets"],
            )
            .await?;
        self.registry
            .put(slices, Some("default"), slice, &["endpoints", "ports"])
            .await
    }

    /// The system namespaces, the CA ConfigMap in every namespace, and the removal of
    /// namespaces whose deletion a previous run did not finish.
    async fn bootstrap(&self) -> Result<(), ApiError> {
        let namespaces = kind("", "namespaces");
        for ns in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            self.registry.ensure(namespaces, None, obj).await?;
        }
        // The API's own Service, at the first address of the range, as in every cluster.
        let kubernetes = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": self.registry.ranges.first_ip().to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.listen.port()}],
            },
        });
        self.registry
            .ensure(kind("", "services"), Some("default"), kubernetes)
            .await?;
        self.kubernetes_endpoints().await?;
        // Cluster DNS at the range's tenth address: every node answers it, so its endpoints
        // are the nodes' DNS servers (the endpoints controller lists them), not pods; each
        // pod asks its own node's (a silent node's DNS fails only its own pods).
        let dns_port = |name: &str, protocol: &str| json!({"name": name, "port": 53, "protocol": protocol, "targetPort": 53});
        let kube_dns = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": self.registry.ranges.dns_ip().to_string(),
                "internalTrafficPolicy": "Local",
                "ports": [dns_port("dns", "UDP"), dns_port("dns-tcp", "TCP")],
            },
        });
        self.registry
            .ensure(kind("", "services"), Some("kube-system"), kube_dns)
            .await?;
        let all = self
            .registry
            .list(namespaces, None, &Filter::default(), None, None, None)
            .await?;
        for ns in &all.items {
            if ns.lookup("/metadata/deletionTimestamp").is_some() {
                tokio::spawn(empty_namespace(
                    self.registry.clone(),
                    object::name(ns).to_string(),
                ));
            } else {
                self.furnish(object::name(ns)).await?;
            }
        }
        Ok(())
    }
}

/// Deletes everything in a namespace marked for deletion, then the namespace once nothing is
/// left (objects with finalizers or pods still stopping hold it).
async fn empty_namespace(registry: Registry, namespace: String) {
    let namespaced: Vec<&'static Kind> = kinds::all()
        .iter()
        .filter(|k| k.namespaced && k.storage == Storage::Stored)
        .collect();
    loop {
        let mut remaining = 0;
        for kind in &namespaced {
            // Two group-versions may share a store prefix; each object is deleted once.
            let page = match registry
                .list(kind, Some(&namespace), &Filter::default(), None, None, None)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%namespace, error = %e.message, "listing a namespace's contents");
                    remaining += 1;
                    continue;
                }
            };
            for obj in &page.items {
                let target = Target {
                    kind,
                    namespace: Some(&namespace),
                    name: object::name(obj),
                };
                match registry.delete(&target, &DeleteOptions::default()).await {
                    Ok(after) if after.lookup("/metadata/deletionTimestamp").is_some() => {
                        remaining += 1
                    }
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(_) => remaining += 1,
                }
            }
        }
        if remaining == 0 {
            let key = kind("", "namespaces").store_key(None, &namespace);
            if let Err(e) = registry.store.delete(&key, None).await {
                tracing::warn!(%namespace, error = %e, "removing an emptied namespace");
            }
            tracing::info!(%namespace, "namespace deleted");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Requests are made by the subject of their client certificate, or by the bootstrap token
/// they carry; others get 401, except the public version, health and CA endpoints (Kubernetes'
/// `system:public-info-viewer`, k3s' `/cacerts`). A bootstrap token may only ask for node
/// certificates.
async fn authenticate(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    let public = matches!(
        req.uri().path(),
        "/version" | "/healthz" | "/livez" | "/readyz" | "/cacerts"
    );
    if public || req.extensions().get::<Identity>().is_some() {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = bearer else {
        return ApiError::unauthorized().into_response();
    };
    match crate::bootstrap::authenticate(&api.registry, &token).await {
        Some(who) => match crate::bootstrap::authorize(&who, req.method(), req.uri().path()) {
            Ok(()) => {
                req.extensions_mut().insert(who);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        },
        None => ApiError::unauthorized().into_response(),
    }
}

fn ok() -> Response {
    (StatusCode::OK, "ok").into_response()
}

async fn openapi_v3_document(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match openapi::document(&path) {
        Some(doc) => (StatusCode::OK, [("content-type", "application/json")], doc).into_response(),
        None => {
            ApiError::new(404, "NotFound", format!("no OpenAPI document at {path}")).into_response()
        }
    }
}

/// `/api` and `/apis`: aggregated discovery when the client asks for it, the plain lists
/// otherwise.
fn group_discovery(headers: &HeaderMap, core: bool) -> Response {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if discovery::wants_aggregated(accept) {
        let body = serde_json::to_vec(&discovery::aggregated(core)).expect("JSON serializes");
        return (
            StatusCode::OK,
            [("content-type", discovery::AGGREGATED)],
            body,
        )
            .into_response();
    }
    let doc = if core {
        discovery::api_versions()
    } else {
        discovery::api_groups()
    };
    json_response(StatusCode::OK, &doc)
}

/// kubectl 1.27 and 1.28 insist on fetching the v2 document; an empty one in its protobuf media
/// type satisfies them (newer ones read v3).
fn openapi_v2() -> Response {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )],
        Vec::<u8>::new(),
    )
        .into_response()
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
        )
        .route("/healthz", get(|| async { ok() }))
        .route("/livez", get(|| async { ok() }))
        .route("/readyz", get(|| async { ok() }))
        .route(
            "/cacerts",
            get(|State(api): State<Arc<Api>>| async move {
                (StatusCode::OK, api.pki.ca_cert.clone()).into_response()
            }),
        )
        .route(
            "/api",
            get(|headers: HeaderMap| async move { group_discovery(&headers, true) }),
        )
        .route(
            "/apis",
            get(|headers: HeaderMap| async move { group_discovery(&headers, false) }),
        )
        .route("/openapi/v2", get(|| async { openapi_v2() }))
        .route(
            "/openapi/v3",
            get(|| async { json_response(StatusCode::OK, &openapi::index()) }),
        )
        .route("/openapi/v3/{*path}", get(openapi_v3_document))
        .route("/api/{*rest}", any(rest::handle))
        .route("/apis/{*rest}", any(rest::handle))
        .fallback(|| async {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
            .into_response()
        })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ))
        .with_state(api)
}

/// A started server.
pub struct Running {
    /// The address it listens on (the port is known here when 0 was asked for).
    pub addr: SocketAddr,
    /// `https://` and an address clients on this machine reach it at.
    pub url: String,
    pub kubeconfig: PathBuf,
    /// The cluster's certificates, to issue more (a node's in `skiff up`).
    pub pki: Arc<Pki>,
    pub serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The names the serving certificate must carry.
fn sans(config: &Config) -> Vec<String> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(host.trim().to_string());
    }
    sans.push(config.listen.ip().to_string());
    sans.extend(config.tls_sans.iter().cloned());
    sans.retain(|s| !s.is_empty() && s != "0.0.0.0" && s != "::");
    let mut seen = Vec::new();
    sans.retain(|s| {
        let new = !seen.contains(s);
        seen.push(s.clone());
        new
    });
    sans
}

/// Prepares certificates and the system namespaces, binds, writes the admin kubeconfig and
/// starts serving. Ready when this returns.
pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<Running, ServerError> {
    let pki = Arc::new(Pki::load_or_create(&config.data_dir, &sans(&config))?);
    let tls = tls::server_config(&pki)?;
    let listen_error = |source| ServerError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let (kubelet_cert, kubelet_key) =
        pki.issue(crate::logs::KUBELET_CLIENT, &["system:masters"], &[])?;
    let kubelet_client = crate::logs::client_config(&pki.ca_cert, &kubelet_cert, &kubelet_key)
        .map_err(ServerError::AgentTls)?;
    let api = Arc::new(Api {
        registry: Registry {
            cache: Arc::new(WatchCache::new(store.clone(), config.watch_history)),
            store,
            ranges: config.service_ranges,
            written: Default::default(),
        },
        pki: pki.clone(),
        listen: addr,
        kubelet_client,
    });
    // Every kind's cache from the start, so that watches can resume from any revision since.
    for kind in kinds::all().iter().filter(|k| k.storage == Storage::Stored) {
        api.registry.cache.of(kind).await.map_err(|e| {
            ServerError::Bootstrap(format!("loading the {} cache: {e}", kind.plural))
        })?;
    }
    api.bootstrap()
        .await
        .map_err(|e| ServerError::Bootstrap(e.message))?;
    if config.controllers {
        let client = Arc::new(crate::controllers::InProcess::new(api.clone()));
        let identity = format!(
            "{}_{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            uuid::Uuid::new_v4()
        );
        skiff_controllers::runtime::start(
            client,
            identity,
            skiff_controllers::runtime::Settings {
                workers: 2,
                event_ttl: config.event_ttl,
                node_lifecycle: config.node_lifecycle,
                node_ipam: config.node_ipam,
            },
        );
    }
    let mut reachable = addr;
    if addr.ip().is_unspecified() {
        reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("https://{reachable}");
    let kubeconfig = pki.write_admin_kubeconfig(&config.data_dir, &url)?;
    let serving = tokio::spawn(tls::serve(listener, tls, router(api)));
    Ok(Running {
        addr,
        url,
        kubeconfig,
        pki,
        serving,
    })
}
