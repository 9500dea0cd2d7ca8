//! A pod's volumes on the node: emptyDir (on disk, or tmpfs for `medium: Memory`), hostPath,
//! and the files of configMap, secret, downwardAPI and projected volumes, written atomically
//! (a new `..data` directory swapped in by one rename, keys as symlinks into it, as kubelet's
//! atomic writer does) so that running containers see an update all at once.
//!
//! Layout: `<root>/<pod uid>/volumes/<name>/` and `<root>/<pod uid>/termination/`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};
use skiff_api::quantity;

use crate::container::{pod_field, ConfigError, Data, NodeFacts, Sources};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether some volume of the pod has files that follow the API (configMap, secret,
/// downwardAPI, projected): those are brought up to date while the pod runs.
pub fn follows_api(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

/// The names of the ConfigMaps and Secrets a pod refers to, in its containers' environments
/// and in its volumes.
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (config_maps, secrets);
    };
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        crate::container::references(c, &mut config_maps, &mut secrets);
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            config_maps.push(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                config_maps.push(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    config_maps.sort();
    config_maps.dedup();
    secrets.sort();
    secrets.dedup();
    (config_maps, secrets)
}

/// A file of a volume: its path inside the volume, content and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The files `items` select from `data` (every key when there are none).
fn project(
    data: Option<&Data>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    name: &str,
    optional: bool,
    files: &mut Files,
) -> Result<(), ConfigError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(ConfigError(format!("{what} {name:?} not found")));
    };
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(ConfigError(format!(
                        "configmap references non-existent config key: {}",
                        item.key
                    )));
                };
                let mode = item.mode.map_or(mode, |m| m as u32);
                files.insert(item.path.clone(), (value.clone(), mode));
            }
        }
        _ => {
            for (key, value) in data {
                files.insert(key.clone(), (value.clone(), mode));
            }
        }
    }
    Ok(())
}

/// The files of a configMap, secret, downwardAPI or projected volume; `None` for the others.
pub fn volume_files(
    pod: &Pod,
    volume: &Volume,
    sources: &Sources,
    node: &NodeFacts,
) -> Result<Option<Files>, ConfigError> {
    let mut files = Files::new();
    let lookup =
        |map: &BTreeMap<String, Option<Data>>, name: &str| map.get(name).cloned().flatten();
    let downward = |items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
                    mode: u32,
                    files: &mut Files|
     -> Result<(), ConfigError> {
        for item in items {
            let value = match &item.field_ref {
                Some(f) => pod_field(pod, &f.field_path, node)?,
                None => String::new(),
            };
            files.insert(
                item.path.clone(),
                (value.into_bytes(), item.mode.map_or(mode, |m| m as u32)),
            );
        }
        Ok(())
    };
    if let Some(cm) = &volume.config_map {
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        let data = lookup(&sources.config_maps, &cm.name);
        project(
            data.as_ref(),
            cm.items.as_ref(),
            mode,
            "configmap",
            &cm.name,
            cm.optional.unwrap_or(false),
            &mut files,
        )?;
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let mode = secret.default_mode.map_or(0o644, |m| m as u32);
        let data = lookup(&sources.secrets, &name);
        project(
            data.as_ref(),
            secret.items.as_ref(),
            mode,
            "secret",
            &name,
            secret.optional.unwrap_or(false),
            &mut files,
        )?;
    } else if let Some(d) = &volume.downward_api {
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        downward(d.items.as_deref().unwrap_or_default(), mode, &mut files)?;
    } else if let Some(p) = &volume.projected {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        for source in p.sources.iter().flatten() {
            let config_map = source.config_map.as_ref().map(|cm| {
                let data = lookup(&sources.config_maps, &cm.name);
                ("configmap", &cm.name, cm.items.as_ref(), cm.optional, data)
            });
            let secret = source.secret.as_ref().map(|s| {
                let data = lookup(&sources.secrets, &s.name);
                ("secret", &s.name, s.items.as_ref(), s.optional, data)
            });
            for (kind, name, items, optional, data) in config_map.into_iter().chain(secret) {
                let optional = optional.unwrap_or(false);
                project(data.as_ref(), items, mode, kind, name, optional, &mut files)?;
            }
            if let Some(d) = &source.downward_api {
                downward(d.items.as_deref().unwrap_or_default(), mode, &mut files)?;
            }
            // FIXME(issue 8, security issue): serviceAccountToken sources are not written yet.
        }
    } else {
        return Ok(None);
    }
    for path in files.keys() {
        if path.starts_with('/') || path.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(ConfigError(format!(
                "volume {:?}: item path {path:?} must be relative, without '..'",
                volume.name
            )));
        }
    }
    Ok(Some(files))
}

/// The volumes of the pods of one node.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p.replace("\\040", " ") == wanted)
}

fn mount_tmpfs(dir: &Path, size: Option<i128>) -> Result<(), VolumeError> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let options = size.map(|s| format!("size={s}"));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        options.as_deref(),
    )
    .map_err(|e| VolumeError::Io {
        action: "mount tmpfs on",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// Reads what a volume's `..data` holds, to skip rewriting what did not change.
fn current_files(dir: &Path, wanted: &Files) -> Option<Files> {
    let data = dir.join("..data");
    let mut out = Files::new();
    for path in wanted.keys() {
        let file = data.join(path);
        let bytes = fs::read(&file).ok()?;
        let mode = fs::metadata(&file).ok()?.permissions().mode() & 0o7777;
        out.insert(path.clone(), (bytes, mode));
    }
    Some(out)
}

/// Writes `files` into `dir` atomically: a fresh timestamped directory, the `..data` symlink
/// swapped to it by rename, top-level symlinks for each first path component, and the old
/// directory removed.
fn write_atomically(dir: &Path, files: &Files) -> Result<(), VolumeError> {
    if current_files(dir, files).as_ref() == Some(files) {
        let listed = fs::read_dir(dir.join("..data"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        let top: std::collections::BTreeSet<&str> = files
            .keys()
            .map(|p| p.split('/').next().unwrap_or(p))
            .collect();
        if listed == top.len() {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let fresh = dir.join(&stamp);
    for (path, (bytes, mode)) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        fs::write(&file, bytes).map_err(io("write", &file))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))
            .map_err(io("chmod", &file))?;
    }
    fs::create_dir_all(&fresh).map_err(io("create directory", &fresh))?;
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("link", &tmp))?;
    fs::rename(&tmp, dir.join("..data")).map_err(io("swap", &dir.join("..data")))?;
    let top: std::collections::BTreeSet<&str> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)
                .map_err(io("link", &link))?;
        }
    }
    // Keys that went away lose their links.
    for entry in fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(name.as_str()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&stamp)) {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

impl Volumes {
    pub fn new(root: impl Into<PathBuf>) -> Volumes {
        Volumes { root: root.into() }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    /// The uids of the pods that have volumes here.
    pub fn pods(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes (or brings up to date) every volume of the pod and returns where each is on the
    /// node.
    pub fn prepare(
        &self,
        pod: &Pod,
        sources: &Sources,
        node: &NodeFacts,
    ) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let base = self.pod_dir(uid).join("volumes");
        let mut out = BTreeMap::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(host) = &volume.host_path {
                let path = PathBuf::from(&host.path);
                if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) {
                    fs::create_dir_all(&path).map_err(io("create directory", &path))?;
                }
                out.insert(volume.name.clone(), path);
                continue;
            }
            let dir = base.join(&volume.name);
            fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
            if let Some(empty) = &volume.empty_dir {
                if empty.medium.as_deref() == Some("Memory") {
                    let size = empty
                        .size_limit
                        .as_ref()
                        .and_then(|q| quantity::parse(&q.0).ok())
                        .map(|q| q.units());
                    mount_tmpfs(&dir, size)?;
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                    .map_err(io("chmod", &dir))?;
            } else if let Some(files) = volume_files(pod, volume, sources, node)? {
                if volume.secret.is_some() {
                    // Secrets never touch the node's disk.
                    mount_tmpfs(&dir, None)?;
                }
                write_atomically(&dir, &files)?;
            } else {
                return Err(VolumeError::Config(ConfigError(format!(
                    "volume {:?}: this kind of volume is not supported",
                    volume.name
                ))));
            }
            out.insert(volume.name.clone(), dir);
        }
        Ok(out)
    }

    /// An empty file for attempt `attempt` of a container's termination message.
    pub fn termination_file(
        &self,
        uid: &str,
        name: &str,
        attempt: u32,
    ) -> Result<PathBuf, VolumeError> {
        let dir = self.pod_dir(uid).join("termination");
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let file = dir.join(format!("{name}-{attempt}"));
        fs::write(&file, b"").map_err(io("write", &file))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666))
            .map_err(io("chmod", &file))?;
        Ok(file)
    }

    /// What a finished attempt wrote to its termination message file (at most 4 KiB).
    pub fn termination_message(&self, uid: &str, name: &str, attempt: u32) -> Option<String> {
        let file = self
            .pod_dir(uid)
            .join("termination")
            .join(format!("{name}-{attempt}"));
        let bytes = fs::read(file).ok()?;
        let bytes = &bytes[..bytes.len().min(4096)];
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Unmounts and removes everything of the pod.
    pub fn remove(&self, uid: &str) -> Result<(), VolumeError> {
        let dir = self.pod_dir(uid);
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return Ok(());
        };
        for point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            let point = PathBuf::from(point.replace("\\040", " "));
            if point.starts_with(&dir) {
                nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                    VolumeError::Io {
                        action: "unmount",
                        path: point.clone(),
                        source: e.into(),
                    }
                })?;
            }
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "x"}], "volumes": volumes},
        }))
        .unwrap()
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap_or_else(|e| format!("<{e}>"))
    }

    #[test]
    fn config_volumes_are_written_and_updated_atomically() {
        let root = tempfile::tempdir().unwrap();
        let volumes = Volumes::new(root.path());
        let p = pod(json!([
            {"name": "config", "configMap": {"name": "app-config"}},
            {"name": "level", "configMap": {"name": "app-config", "items": [{"key": "log_level", "path": "conf/level", "mode": 0o600}]}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "cache", "emptyDir": {}},
        ]));
        let node = NodeFacts::default();
        let dirs = volumes
            .prepare(&p, &Sources::article("debug"), &node)
            .unwrap();
        assert_eq!(read(&dirs["config"], "log_level"), "debug");
        assert_eq!(read(&dirs["config"], "database_url"), "postgres://db");
        assert_eq!(read(&dirs["level"], "conf/level"), "debug");
        let mode = fs::metadata(dirs["level"].join("conf/level"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&dirs["info"], "labels"), "app=\"web\"");
        assert!(dirs["cache"].is_dir());
        let before = fs::read_link(dirs["config"].join("..data")).unwrap();

        // Unchanged data is not rewritten; changed data is swapped in whole.
        volumes
            .prepare(&p, &Sources::article("debug"), &node)
            .unwrap();
        assert_eq!(
            fs::read_link(dirs["config"].join("..data")).unwrap(),
            before
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        volumes
            .prepare(&p, &Sources::article("info"), &node)
            .unwrap();
        assert_eq!(read(&dirs["config"], "log_level"), "info");
        assert_ne!(
            fs::read_link(dirs["config"].join("..data")).unwrap(),
            before
        );
        assert!(
            !dirs["config"].join(&before).exists(),
            "the old data is gone"
        );

        volumes.remove("u1").unwrap();
        assert!(!root.path().join("u1").exists());
    }

    #[test]
    fn references_are_collected_once_from_containers_and_volumes() {
        let mut p = pod(json!([
            {"name": "c", "configMap": {"name": "b"}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "s2"}}]}},
        ]));
        p.spec.as_mut().unwrap().containers[0] =
            serde_json::from_value(json!({"name": "app", "image": "x",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s"}}],
            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "a", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}}]}))
            .unwrap();
        assert_eq!(
            references(&p),
            (vec!["a".into(), "b".into()], vec!["s".into(), "s2".into()])
        );
    }

    #[test]
    fn missing_sources_and_bad_paths_are_refused() {
        let node = NodeFacts::default();
        let files = |volumes: serde_json::Value| {
            let p = pod(volumes);
            let v = p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].clone();
            volume_files(&p, &v, &Sources::article("x"), &node)
                .map(|f| f.map(|f| f.keys().cloned().collect::<Vec<_>>()))
        };
        assert_eq!(
            files(json!([{"name": "c", "configMap": {"name": "nope"}}])),
            Err(ConfigError("configmap \"nope\" not found".into()))
        );
        assert_eq!(
            files(json!([{"name": "c", "configMap": {"name": "nope", "optional": true}}])),
            Ok(Some(vec![]))
        );
        assert_eq!(
            files(
                json!([{"name": "c", "configMap": {"name": "app-config", "items": [{"key": "log_level", "path": "../x"}]}}])
            ),
            Err(ConfigError(
                "volume \"c\": item path \"../x\" must be relative, without '..'".into()
            ))
        );
        assert_eq!(
            files(
                json!([{"name": "s", "projected": {"sources": [{"secret": {"name": "db-creds"}}, {"configMap": {"name": "app-config", "items": [{"key": "log_level", "path": "level"}]}}]}}])
            ),
            Ok(Some(vec!["level".into(), "password".into()]))
        );
        assert_eq!(files(json!([{"name": "e", "emptyDir": {}}])), Ok(None));
    }
}
