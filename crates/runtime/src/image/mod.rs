//! The node's image store: content-addressed blobs, layers unpacked once, and the names of images.
//!
//! On disk, under the store's root:
//! - `blobs/sha256/<hex>`: manifests, configurations and layer blobs, as fetched or imported;
//! - `layers/<hex of diff ID>/`: each layer unpacked once, shared by every image and container
//!   using it (overlayfs lower directories);
//! - `images.json`: the images, their names, manifests and layers, rewritten atomically under an
//!   exclusive lock (`lock`), so a node and the `skiff image` CLI never race each other.

mod archive;
pub mod format;
mod pull;
pub mod reference;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use reference::Reference;
use sha2::{Digest, Sha256};

pub use crate::layer::unpack as unpack_layer;
pub use archive::ImportProgress;
pub use format::ImageConfig;
pub use pull::{PullOptions, PullProgress, RegistryAuth};

use crate::Error;

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The digest of its configuration, as `docker images` and `crictl images` show IDs.
    pub id: String,
    /// Full references (`docker.io/library/my-api:v2.1`), normalized.
    pub names: Vec<String>,
    /// The digest of its manifest, as `repo@sha256:...` references name it.
    pub manifest: String,
    pub layers: Vec<Layer>,
    /// The compressed size of its blobs, in bytes.
    pub size: u64,
    /// When a container last started from it (seconds since the epoch), for garbage collection.
    #[serde(default)]
    pub last_used: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// The digest of the blob as stored.
    pub digest: String,
    /// The digest of the uncompressed tar, which names the unpacked directory.
    pub diff_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Catalog {
    images: Vec<Image>,
}

/// When unused images are removed: above `high_percent` of the disk used, down to `low_percent`
/// (kubelet's defaults are 85 and 80).
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
        }
    }
}

#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// The normalized form of an image reference: `busybox` is `docker.io/library/busybox:latest`.
pub fn normalize(reference: &str) -> Result<String, Error> {
    Ok(parse(reference)?.to_string())
}

pub(crate) fn parse(reference: &str) -> Result<Reference, Error> {
    Reference::parse(reference).map_err(|message| Error::BadReference {
        reference: reference.to_string(),
        message: message.to_string(),
    })
}

fn hex_of(digest: &str) -> Result<&str, Error> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Corrupt(format!("unsupported digest {digest:?}")))
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, Error> {
        let root = root.into();
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn list(&self) -> Result<Vec<Image>, Error> {
        Ok(self.read_catalog()?.images)
    }

    /// The image a reference names: a name (normalized as `normalize` does), `name@sha256:...`
    /// (by manifest digest), or an ID or unambiguous ID prefix (with or without `sha256:`).
    pub fn get(&self, reference: &str) -> Result<Image, Error> {
        let catalog = self.read_catalog()?;
        find(&catalog.images, reference)
            .map(|i| catalog.images[i].clone())
            .ok_or_else(|| Error::ImageNotFound(reference.to_string()))
    }

    pub fn config(&self, image: &Image) -> Result<ImageConfig, Error> {
        self.read_blob_json(&image.id)
    }

    /// The unpacked layers of an image, topmost first, as overlayfs' `lowerdir` lists them.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, Error> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| Ok(self.root.join("layers").join(hex_of(&l.diff_id)?)))
            .collect()
    }

    /// Notes that a container starts from the image now, for least-recently-used collection.
    pub fn touch(&self, id: &str, now: i64) -> Result<(), Error> {
        self.update(|catalog| {
            if let Some(image) = catalog.images.iter_mut().find(|i| i.id == id) {
                image.last_used = now;
            }
            Ok(())
        })
    }

    /// Imports the images of an OCI archive (an OCI layout as a tar) or a `docker save` archive.
    pub fn import(&self, archive: &Path) -> Result<Vec<Image>, Error> {
        archive::import(self, archive, &|_| {})
    }

    /// Like [`ImageStore::import`], telling `progress` how much of the archive was read.
    pub fn import_with_progress(
        &self,
        archive: &Path,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<Vec<Image>, Error> {
        archive::import(self, archive, progress)
    }

    /// Removes a name, or with an ID every name; an image left without names is deleted with
    /// the blobs and layers no other image uses. Returns the image as it was.
    pub fn remove(&self, reference: &str) -> Result<Image, Error> {
        let removed = self.update(|catalog| {
            let i = find(&catalog.images, reference)
                .ok_or_else(|| Error::ImageNotFound(reference.to_string()))?;
            let image = catalog.images[i].clone();
            let name = normalize(reference).ok();
            match name {
                Some(name) if image.names.len() > 1 && image.names.contains(&name) => {
                    catalog.images[i].names.retain(|n| *n != name);
                }
                _ => {
                    catalog.images.remove(i);
                }
            }
            Ok(image)
        })?;
        self.sweep()?;
        Ok(removed)
    }

    /// Removes unused images, least recently used first, while the disk holding the store is
    /// fuller than the policy's high mark and until it is below the low mark. `in_use` holds
    /// the IDs of images containers run from.
    pub fn collect_garbage(
        &self,
        in_use: &HashSet<String>,
        policy: GcPolicy,
    ) -> Result<Vec<Image>, Error> {
        let usage = || disk_usage_percent(&self.root);
        if usage()? < f64::from(policy.high_percent) {
            return Ok(Vec::new());
        }
        let mut candidates: Vec<Image> = self
            .list()?
            .into_iter()
            .filter(|i| !in_use.contains(&i.id))
            .collect();
        candidates.sort_by_key(|i| i.last_used);
        let mut removed = Vec::new();
        for image in candidates {
            if usage()? < f64::from(policy.low_percent) {
                break;
            }
            self.update(|catalog| {
                catalog.images.retain(|i| i.id != image.id);
                Ok(())
            })?;
            self.sweep()?;
            tracing::info!(image = %image.id, names = ?image.names, "removed unused image");
            removed.push(image);
        }
        Ok(removed)
    }

    /// Records an image whose blobs are all in the store: unpacks its layers, then gives it its
    /// names (taking them from any image that had them).
    fn commit(&self, manifest_digest: &str, names: &[String]) -> Result<Image, Error> {
        let manifest: format::Manifest = self.read_blob_json(manifest_digest)?;
        let config: ImageConfig = self.read_blob_json(&manifest.config.digest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Corrupt(format!(
                "image {manifest_digest}: {} layers but {} diff IDs in its configuration",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (blob, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            self.unpack_layer(&blob.digest, diff_id)?;
            layers.push(Layer {
                digest: blob.digest.clone(),
                diff_id: diff_id.clone(),
            });
        }
        let image = Image {
            id: manifest.config.digest.clone(),
            names: names.to_vec(),
            manifest: manifest_digest.to_string(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            layers,
            last_used: 0,
        };
        self.update(|catalog| {
            for other in &mut catalog.images {
                other.names.retain(|n| !names.contains(n));
            }
            let mut image = image.clone();
            if let Some(existing) = catalog.images.iter().position(|i| i.id == image.id) {
                let old = catalog.images.remove(existing);
                image.last_used = old.last_used;
                for name in old.names {
                    if !image.names.contains(&name) {
                        image.names.push(name);
                    }
                }
            }
            // A retagged image left without names is gone, as `docker tag` leaves `<none>`
            // images that nothing can reach; their blobs are swept below.
            catalog.images.retain(|i| !i.names.is_empty());
            catalog.images.push(image);
            Ok(())
        })?;
        self.get(&image.id)
    }

    fn unpack_layer(&self, blob_digest: &str, diff_id: &str) -> Result<(), Error> {
        let dest = self.root.join("layers").join(hex_of(diff_id)?);
        if dest.exists() {
            return Ok(());
        }
        let blob = self.blob_path(blob_digest)?;
        let tmp = tempdir_in(&self.root.join("tmp"))?;
        let file = fs::File::open(&blob).map_err(|e| Error::io("open layer", &blob, e))?;
        let unpacked = tmp.join("layer");
        fs::create_dir(&unpacked).map_err(|e| Error::io("create directory", &unpacked, e))?;
        let actual = crate::layer::unpack(file, &unpacked);
        let result = actual.and_then(|actual| {
            if actual != diff_id {
                return Err(Error::Corrupt(format!(
                    "layer {blob_digest} unpacks to {actual}, its image says {diff_id}"
                )));
            }
            match fs::rename(&unpacked, &dest) {
                // Another import unpacked the same layer meanwhile.
                Err(_) if dest.exists() => Ok(()),
                other => other.map_err(|e| Error::io("rename layer", &dest, e)),
            }
        });
        let _ = fs::remove_dir_all(&tmp);
        result
    }

    /// Deletes blobs and layers no image refers to, and what interrupted imports left. It waits
    /// for running imports and pulls (whose blobs no image refers to yet) to finish.
    fn sweep(&self) -> Result<(), Error> {
        let _no_ingest = self.lock("ingest.lock", nix::fcntl::FlockArg::LockExclusive)?;
        let tmp = self.root.join("tmp");
        remove_unlisted(&tmp, &HashSet::new())?;
        self.update(|catalog| {
            let mut blobs = HashSet::new();
            let mut layers = HashSet::new();
            for image in &catalog.images {
                blobs.insert(hex_of(&image.id)?.to_string());
                blobs.insert(hex_of(&image.manifest)?.to_string());
                for layer in &image.layers {
                    blobs.insert(hex_of(&layer.digest)?.to_string());
                    layers.insert(hex_of(&layer.diff_id)?.to_string());
                }
            }
            remove_unlisted(&self.root.join("blobs/sha256"), &blobs)?;
            remove_unlisted(&self.root.join("layers"), &layers)
        })
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    fn read_blob_json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T, Error> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(|e| Error::io("read blob", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("blob {digest}: {e}")))
    }

    /// Writes a blob from a reader, checking it against `expected` when given; returns its digest
    /// and size.
    pub(crate) fn write_blob(
        &self,
        mut from: impl Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), Error> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|e| Error::io("create file in", &tmp_dir, e))?;
        io::copy(&mut from, &mut tmp).map_err(|e| Error::io("write blob", tmp.path(), e))?;
        let path = tmp
            .into_temp_path()
            .keep()
            .map_err(|e| Error::io("keep", &tmp_dir, e.error))?;
        self.adopt_blob(&path, expected)
    }

    /// Moves a file already in the store's filesystem (an unpacked archive's, a download's)
    /// into the blobs, checking it against `expected` when given; returns its digest and size.
    /// The file is read once and never copied.
    pub(crate) fn adopt_blob(
        &self,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<(String, u64), Error> {
        let mut file = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read blob", path, e))?;
        let digest = format!("sha256:{:x}", hasher.finalize());
        if let Some(expected) = expected.filter(|e| **e != digest) {
            let _ = fs::remove_file(path);
            return Err(Error::Corrupt(format!(
                "blob should be {expected} but its content is {digest}"
            )));
        }
        let dest = self.blob_path(&digest)?;
        fs::rename(path, &dest).map_err(|e| Error::io("store blob", &dest, e))?;
        Ok((digest, size))
    }

    fn read_catalog(&self) -> Result<Catalog, Error> {
        Ok(crate::files::read_json(&self.root.join("images.json"))?.unwrap_or_default())
    }

    /// An flock on a file of the store, held until the result is dropped; across processes, so
    /// that the CLI and a node never race.
    fn lock(
        &self,
        name: &str,
        how: nix::fcntl::FlockArg,
    ) -> Result<nix::fcntl::Flock<fs::File>, Error> {
        let path = self.root.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        nix::fcntl::Flock::lock(file, how).map_err(|(_, e)| Error::io("lock", &path, e.into()))
    }

    /// Held (shared) while an import or pull writes blobs no image refers to yet.
    pub(crate) fn ingesting(&self) -> Result<nix::fcntl::Flock<fs::File>, Error> {
        self.lock("ingest.lock", nix::fcntl::FlockArg::LockShared)
    }

    /// Runs `change` on the catalog under the store's exclusive lock and writes the result.
    fn update<T>(&self, change: impl FnOnce(&mut Catalog) -> Result<T, Error>) -> Result<T, Error> {
        let _guard = self.lock("lock", nix::fcntl::FlockArg::LockExclusive)?;
        let mut catalog = self.read_catalog()?;
        let result = change(&mut catalog)?;
        crate::files::write_atomic(
            &self.root.join("images.json"),
            &serde_json::to_vec_pretty(&catalog).expect("catalogs serialize"),
        )?;
        Ok(result)
    }
}

fn find(images: &[Image], reference: &str) -> Option<usize> {
    if let Ok(name) = normalize(reference) {
        if let Some((_, digest)) = name.split_once('@') {
            if let Some(i) = images.iter().position(|i| i.manifest == digest) {
                return Some(i);
            }
        }
        if let Some(i) = images.iter().position(|i| i.names.contains(&name)) {
            return Some(i);
        }
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() < 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut matching = images
        .iter()
        .enumerate()
        .filter(|(_, i)| i.id.trim_start_matches("sha256:").starts_with(hex));
    match (matching.next(), matching.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

fn remove_unlisted(dir: &Path, keep: &HashSet<String>) -> Result<(), Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io("remove", &path, e))?;
    }
    Ok(())
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, Error> {
    tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(dir)
        .map(|d| d.keep())
        .map_err(|e| Error::io("create directory in", dir, e))
}

fn disk_usage_percent(path: &Path) -> Result<f64, Error> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| Error::io("statfs", path, e.into()))?;
    let total = stat.blocks() as f64;
    if total == 0.0 {
        return Ok(0.0);
    }
    Ok(100.0 * (total - stat.blocks_available() as f64) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, names: &[&str]) -> Image {
        Image {
            id: format!("sha256:{id:0<64}"),
            names: names.iter().map(|n| normalize(n).unwrap()).collect(),
            manifest: format!("sha256:{:f<64}", id),
            layers: vec![],
            size: 0,
            last_used: 0,
        }
    }

    #[test]
    fn references_are_normalized() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("my-api:v2.1", "docker.io/library/my-api:v2.1"),
            ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
        ] {
            assert_eq!(normalize(given).unwrap(), want);
        }
        assert!(matches!(
            normalize("Bad:Name:x"),
            Err(Error::BadReference { .. })
        ));
    }

    #[test]
    fn images_are_found_by_name_digest_and_id_prefix() {
        let images = [
            image("abc123", &["my-api:v2.1"]),
            image("abd456", &["busybox"]),
        ];
        assert_eq!(find(&images, "my-api:v2.1"), Some(0));
        assert_eq!(find(&images, "docker.io/library/busybox:latest"), Some(1));
        assert_eq!(find(&images, "abd456"), Some(1));
        assert_eq!(find(&images, "sha256:abc1"), None, "too short a prefix");
        assert_eq!(find(&images, "abc123"), Some(0));
        assert_eq!(find(&images, "ab"), None);
        let by_digest = format!("my-api@sha256:{:f<64}", "abd456");
        assert_eq!(find(&images, &by_digest), Some(1));
        assert_eq!(find(&images, "my-api:v9"), None);
    }
}
