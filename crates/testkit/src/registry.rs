//! A throw-away OCI registry on loopback: Debian's `docker-registry`, optionally behind basic
//! auth, with a push of the test images.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::images::ImageSpec;

/// A registry process; killed (by its PID) and reaped when dropped, its storage removed.
pub struct Registry {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `credentials`, every request needs them (htpasswd, bcrypt).
    pub fn start(credentials: Option<(&str, &str)>) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = credentials {
            let hash = bcrypt::hash(password, 4).map_err(|e| e.to_string())?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start docker-registry ({e}): install Debian's docker-registry package"
                )
            })?;
        let registry = Registry {
            child,
            port,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("docker-registry did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes a test image as `<host>/<spec's name>` and returns that reference.
    pub async fn push(&self, spec: &ImageSpec) -> Result<String, String> {
        let reference = format!("{}/{}", self.host(), spec.name);
        let parsed: oci_client::Reference = reference.parse().map_err(|e| format!("{e}"))?;
        let (config, layers) = crate::images::parts(spec);
        let layers: Vec<oci_client::client::ImageLayer> = layers
            .into_iter()
            .map(|l| oci_client::client::ImageLayer::oci_v1_gzip(crate::images::gzip(&l), None))
            .collect();
        let config = oci_client::client::Config::oci_v1(config, None);
        // oci-client is built without a TLS provider; ring is the project's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let auth = match &self.credentials {
            Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        client
            .push(&parsed, &layers, config, &auth, None)
            .await
            .map_err(|e| format!("push {reference}: {e}"))?;
        Ok(reference)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
