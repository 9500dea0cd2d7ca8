//! Pulling images from OCI registries into the store, with credentials and progress.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;

use super::format::{self, Index, Manifest};
use super::{Image, ImageStore};
use crate::Error;

/// Credentials for one registry.
#[derive(Clone, Default, PartialEq)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

impl RegistryAuth {
    /// The credentials a `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson` holds for
    /// `registry` (entries may be written as `host`, `https://host` or `https://host/v1/`).
    pub fn from_docker_config(json: &[u8], registry: &str) -> Result<RegistryAuth, Error> {
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| Error::BadCredentials(format!("not a docker config: {e}")))?;
        let host_of = |key: &str| {
            let key = key
                .strip_prefix("https://")
                .or_else(|| key.strip_prefix("http://"))
                .unwrap_or(key);
            key.split('/').next().unwrap_or(key).to_string()
        };
        let wanted = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        let Some(entry) = config
            .auths
            .iter()
            .find(|(key, _)| {
                let host = host_of(key);
                host == registry || host == wanted
            })
            .map(|(_, e)| e)
        else {
            return Ok(RegistryAuth::Anonymous);
        };
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            });
        }
        let Some(auth) = &entry.auth else {
            return Ok(RegistryAuth::Anonymous);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|e| Error::BadCredentials(format!("auth of {registry}: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| Error::BadCredentials(format!("auth of {registry} is not text")))?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            Error::BadCredentials(format!("auth of {registry} is not user:password"))
        })?;
        Ok(RegistryAuth::Basic {
            username: username.into(),
            password: password.into(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub auth: RegistryAuth,
    /// Registries (`host:port`) spoken to over plain HTTP; every other one needs HTTPS.
    pub insecure_registries: Vec<String>,
}

/// How far a pull is: one report per chunk received.
#[derive(Debug, Clone, PartialEq)]
pub struct PullProgress {
    pub blob: String,
    pub received: u64,
    pub total: Option<u64>,
}

const ACCEPTED: &[&str] = &[
    format::MANIFEST_V1,
    format::INDEX_V1,
    format::DOCKER_MANIFEST,
    format::DOCKER_LIST,
];

impl ImageStore {
    /// Pulls an image into the store unless its manifest is there already, and gives it the
    /// reference's name.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, Error> {
        install_crypto_provider();
        let _ingesting = self.ingesting()?;
        let reference = super::parse(reference)?;
        let name = reference.to_string();
        let parsed = reference.to_oci();
        let failed = |e: oci_client::errors::OciDistributionError| Error::Pull {
            reference: name.clone(),
            message: e.to_string(),
        };
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                options.insecure_registries.clone(),
            ),
            ..Default::default()
        });
        let auth = match &options.auth {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        let (mut body, mut digest) = client
            .pull_manifest_raw(&parsed, &auth, ACCEPTED)
            .await
            .map_err(failed)?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Corrupt(format!("manifest of {name}: {e}")))?;
        let media_type = value.get("mediaType").and_then(|m| m.as_str());
        if Manifest::is_index(media_type, &value) {
            let index: Index = serde_json::from_value(value)
                .map_err(|e| Error::Corrupt(format!("index of {name}: {e}")))?;
            let entry = format::pick_platform(&index.manifests).ok_or_else(|| Error::Pull {
                reference: name.clone(),
                message: format!("no image for linux/{}", format::host_architecture()),
            })?;
            (body, digest) = client
                .pull_manifest_raw(
                    &parsed.clone_with_digest(entry.digest.clone()),
                    &auth,
                    ACCEPTED,
                )
                .await
                .map_err(failed)?;
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| Error::Corrupt(format!("manifest of {name}: {e}")))?;
        for part in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if self.has_blob(&part.digest) {
                continue;
            }
            let mut stream = client
                .pull_blob_stream(&parsed, part.digest.as_str())
                .await
                .map_err(failed)?;
            let tmp_dir = self.root.join("tmp");
            let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
                .map_err(|e| Error::io("create file in", &tmp_dir, e))?;
            let mut received = 0u64;
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| Error::Pull {
                    reference: name.clone(),
                    message: format!("blob {}: {e}", part.digest),
                })?;
                tmp.write_all(&chunk)
                    .map_err(|e| Error::io("write", tmp.path(), e))?;
                received += chunk.len() as u64;
                progress(PullProgress {
                    blob: part.digest.clone(),
                    received,
                    total: stream.content_length.or(Some(part.size)),
                });
            }
            let path = tmp
                .into_temp_path()
                .keep()
                .map_err(|e| Error::io("keep", &tmp_dir, e.error))?;
            self.adopt_blob(&path, Some(&part.digest))?;
        }
        let (stored, _) = self.write_blob(body.as_ref(), Some(&digest))?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.commit(&stored, &[name]))
            .await
            .map_err(|e| Error::Corrupt(format!("unpacking stopped: {e}")))?
    }
}

/// oci-client is built without a TLS provider (ring is the project's, see design.md); the
/// process-wide default must be set before its first client.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Already set by the embedding process: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_docker_configs() {
        let basic = |u: &str, p: &str| RegistryAuth::Basic {
            username: u.into(),
            password: p.into(),
        };
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "YWxpY2U6czNjcmV0"},
            "registry.local:5000": {"username": "bob", "password": "pw"}
        }}"#;
        let cases = [
            ("docker.io", basic("alice", "s3cret")),
            ("registry.local:5000", basic("bob", "pw")),
            ("elsewhere.io", RegistryAuth::Anonymous),
        ];
        for (registry, want) in cases {
            assert_eq!(
                RegistryAuth::from_docker_config(config, registry).unwrap(),
                want,
                "{registry}"
            );
        }
        let bad = br#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#;
        assert!(matches!(
            RegistryAuth::from_docker_config(bad, "r.io"),
            Err(Error::BadCredentials(m)) if m.contains("not user:password")
        ));
    }
}
