//! `pods/log`: the pod's node is asked for the container's log over HTTPS, with the API
//! server's client certificate (`kube-apiserver-kubelet-client`), and its answer is streamed
//! back as is.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use skiff_api::kinds;
use skiff_api::object::Lookup;

use crate::registry::Target;
use crate::server::Api;
use crate::status::ApiError;

/// The common name of the client certificate the API server shows agents.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The TLS configuration for talking to agents: the cluster CA as the only root, and the
/// API server's client certificate.
pub fn client_config(ca: &str, cert: &str, key: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

fn form_pairs(query: Option<&str>) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The container a log request is about: the one asked for, or the pod's only one.
fn container_of(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .lookup("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let names = |list: &str| -> Vec<String> {
        pod.lookup(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let inits = names("initContainers");
    match asked.filter(|a| !a.is_empty()) {
        Some(asked) if containers.iter().chain(&inits).any(|c| c == asked) => Ok(asked.to_string()),
        Some(asked) => Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where the node's agent listens: its InternalIP and the published port.
fn agent_address(node: &Value) -> Option<SocketAddr> {
    let ip: IpAddr = node
        .lookup("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))?
        .get("address")?
        .as_str()?
        .parse()
        .ok()?;
    let port = node
        .lookup("/status/daemonEndpoints/kubeletEndpoint/Port")?
        .as_u64()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

fn unavailable(node: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        502,
        "InternalError",
        format!("the agent of node {node:?} could not be reached: {what}"),
    )
}

pub async fn proxy(
    api: &Api,
    target: &Target<'_>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let pod = api.registry.get(target).await?;
    let asked = query_param(query, "container");
    let container = container_of(&pod, asked.as_deref())?;
    let node_name = pod
        .lookup("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {} does not have a host assigned", target.name))
        })?;
    let nodes = kinds::find("", "v1", "nodes").expect("nodes are served");
    let node = api
        .registry
        .get(&Target {
            kind: nodes,
            namespace: None,
            name: node_name,
        })
        .await?;
    let addr = agent_address(&node)
        .ok_or_else(|| unavailable(node_name, "the node publishes no address and port"))?;
    let passed: Vec<(String, String)> = form_pairs(query)
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_ref(),
                "follow"
                    | "previous"
                    | "tailLines"
                    | "timestamps"
                    | "sinceSeconds"
                    | "sinceTime"
                    | "limitBytes"
            )
        })
        .collect();
    let encoded = serde_urlencoded::to_string(&passed).unwrap_or_default();
    let path = format!(
        "/containerLogs/{}/{}/{container}?{encoded}",
        target.namespace.unwrap_or("default"),
        target.name
    );
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(node_name, e))?;
    let connector = tokio_rustls::TlsConnector::from(api.kubelet_client.clone());
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| unavailable(node_name, e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(node_name, e))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Body::empty())
        .expect("a valid request");
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(node_name, e))?;
    let (parts, body) = answer.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_asked_one_or_the_only_one() {
        let one = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]}});
        let two = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}, {"name": "side"}]}});
        assert_eq!(container_of(&one, None).unwrap(), "app");
        assert_eq!(container_of(&one, Some("init")).unwrap(), "init");
        assert_eq!(
            container_of(&one, Some("nope")).unwrap_err().message,
            "container nope is not valid for pod web"
        );
        assert_eq!(
            container_of(&two, None).unwrap_err().message,
            "a container name must be specified for pod web, choose one of: [app side]"
        );
        assert_eq!(
            query_param(
                Some("container=app&follow=true&sinceTime=2026-11-30T10%3A00%3A00Z"),
                "sinceTime"
            )
            .as_deref(),
            Some("2026-11-30T10:00:00Z")
        );
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                                     "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(
            agent_address(&node),
            Some("10.0.0.5:10250".parse().unwrap())
        );
    }
}
