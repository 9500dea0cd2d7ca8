//! The agent's local record of what the API last told it, so that an agent restarted while the
//! server is out of reach runs the node's pods as they were: each pod bound to the node (as
//! JSON, without its status), the node's pod CIDR and the `kubernetes` Service's address, and
//! whether the node was ever registered. The API stays the authority: a pod is stopped only
//! when the API says it is gone, never because the record lacks it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The record's directory under the agent's data directory.
pub const DIR: &str = "state";

/// The record, under the agent's `state` directory.
pub struct Local {
    dir: PathBuf,
    /// A hash of what each pod's file holds now, to write only changes (status updates
    /// change nothing here).
    written: Mutex<HashMap<String, u64>>,
}

/// Writes `bytes` to `path` by a rename (a crashed agent never leaves half a file). Not
/// synced: it runs on the pod watch's path, and a record lost with the machine's power is
/// only a cache of the API.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::File::create(&partial)?.write_all(bytes)?;
    std::fs::rename(&partial, path)
}

impl Local {
    pub fn new(dir: PathBuf) -> Local {
        Local {
            dir,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    fn save<T: Serialize>(&self, name: &str, value: &T) {
        let path = self.dir.join(name);
        let saved = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomic(&path, &serde_json::to_vec(value).unwrap_or_default()));
        if let Err(e) = saved {
            tracing::warn!(path = %path.display(), error = %e, "writing the agent's local state");
        }
    }

    fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let bytes = std::fs::read(self.dir.join(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Notes that the node is registered with the server (it may run from the record later).
    pub fn set_registered(&self) {
        self.save("registered", &true);
    }

    pub fn registered(&self) -> bool {
        self.load::<bool>("registered").unwrap_or(false)
    }

    pub fn set_pod_cidr(&self, cidr: &str) {
        if self.pod_cidr().as_deref() != Some(cidr) {
            self.save("pod-cidr", &cidr);
        }
    }

    pub fn pod_cidr(&self) -> Option<String> {
        self.load("pod-cidr")
    }

    pub fn set_api_service(&self, service: &(String, u16)) {
        self.save("kubernetes-service", service);
    }

    pub fn api_service(&self) -> Option<(String, u16)> {
        self.load("kubernetes-service")
    }

    /// Records the pod as the API gave it (its status left out), if it changed.
    pub fn keep_pod(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let mut kept = pod.clone();
        kept.status = None;
        kept.metadata.resource_version = None;
        kept.metadata.managed_fields = None;
        let bytes = serde_json::to_vec(&kept).unwrap_or_default();
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            hasher.finish()
        };
        let mut written = self.written.lock().expect("local state lock");
        if written.get(uid) == Some(&hash) {
            return;
        }
        let dir = self.pods_dir();
        let path = dir.join(format!("{uid}.json"));
        match std::fs::create_dir_all(&dir).and_then(|()| write_atomic(&path, &bytes)) {
            Ok(()) => {
                written.insert(uid.to_string(), hash);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "recording the pod locally")
            }
        }
    }

    /// Forgets a pod that is gone from the node.
    pub fn forget_pod(&self, uid: &str) {
        self.written.lock().expect("local state lock").remove(uid);
        let path = self.pods_dir().join(format!("{uid}.json"));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "forgetting the pod locally");
            }
        }
    }

    /// The pods recorded, as last given by the API.
    pub fn pods(&self) -> Vec<Pod> {
        let Ok(entries) = std::fs::read_dir(self.pods_dir()) else {
            return Vec::new();
        };
        let mut pods = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Pod>(&b)) {
                Ok(Ok(pod)) => pods.push(pod),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "an unreadable pod record")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading a pod record")
                }
            }
        }
        pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "default", "uid": uid, "resourceVersion": "7"},
            "spec": {"containers": [{"name": "server", "image": image}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    #[test]
    fn pods_and_facts_survive_a_new_record_on_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::new(dir.path().join("state"));
        assert!(!local.registered());
        assert_eq!(local.pods(), Vec::<Pod>::new());
        local.set_registered();
        local.set_pod_cidr("10.42.3.0/24");
        local.set_api_service(&("10.43.0.1".into(), 443));
        local.keep_pod(&pod("u1", "my-api:v2.1"));
        local.keep_pod(&pod("u2", "my-api:v2.1"));
        local.keep_pod(&pod("u1", "my-api:v2.2"));
        local.forget_pod("u2");

        let again = Local::new(dir.path().join("state"));
        assert!(again.registered());
        assert_eq!(again.pod_cidr().as_deref(), Some("10.42.3.0/24"));
        assert_eq!(again.api_service(), Some(("10.43.0.1".to_string(), 443)));
        let pods = again.pods();
        assert_eq!(pods.len(), 1);
        let kept = &pods[0];
        assert_eq!(kept.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(
            kept.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("my-api:v2.2")
        );
        assert!(kept.status.is_none() && kept.metadata.resource_version.is_none());
    }
}
