//! Import of image archives: OCI layouts as tar files and `docker save` archives.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::format::{self, Descriptor, DockerArchiveEntry, Index, Manifest};
use super::{normalize, Image, ImageStore};
use crate::layer::Compression;
use crate::Error;

/// How far an import is: bytes of the archive read so far, of its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    pub read: u64,
    pub total: u64,
}

/// A reader telling `progress` how much has been read.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    total: u64,
    progress: &'a dyn Fn(ImportProgress),
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(ImportProgress {
            read: self.read,
            total: self.total,
        });
        Ok(n)
    }
}

pub(super) fn import(
    store: &ImageStore,
    archive: &Path,
    progress: &dyn Fn(ImportProgress),
) -> Result<Vec<Image>, Error> {
    let _ingesting = store.ingesting()?;
    let bad = |message: String| Error::BadArchive {
        file: archive.to_path_buf(),
        message,
    };
    let unpacked = super::tempdir_in(&store.root.join("tmp"))?;
    let result = (|| {
        let file = fs::File::open(archive).map_err(|e| Error::io("open", archive, e))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let counting = Counting {
            inner: file,
            read: 0,
            total,
            progress,
        };
        tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, counting))
            .unpack(&unpacked)
            .map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
        if unpacked.join("manifest.json").exists() {
            import_docker(store, &unpacked, &bad)
        } else if unpacked.join("index.json").exists() {
            import_oci(store, &unpacked, &bad)
        } else {
            Err(bad(
                "neither an OCI layout (index.json) nor a docker save archive (manifest.json)"
                    .into(),
            ))
        }
    })();
    let _ = fs::remove_dir_all(&unpacked);
    result
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    bad: &dyn Fn(String) -> Error,
) -> Result<T, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "{}: {e}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
    })
}

/// Joins a path named inside an archive to the directory it was unpacked in, refusing paths that
/// climb out of it.
fn inside(dir: &Path, name: &str, bad: &dyn Fn(String) -> Error) -> Result<PathBuf, Error> {
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(format!("path {name:?} leaves the archive")));
    }
    Ok(dir.join(relative))
}

/// `docker save`: `manifest.json` lists each image's configuration, layer tars and tags. The
/// store keeps an OCI manifest it writes for it.
fn import_docker(
    store: &ImageStore,
    dir: &Path,
    bad: &dyn Fn(String) -> Error,
) -> Result<Vec<Image>, Error> {
    let entries: Vec<DockerArchiveEntry> = read_json(&dir.join("manifest.json"), bad)?;
    // Images of one archive share files (and older archives link layers to each other): each
    // file is moved into the store once, by its real path.
    let mut adopted: HashMap<PathBuf, (String, u64)> = HashMap::new();
    let mut adopt = |path: PathBuf| -> Result<(String, u64), Error> {
        let real = fs::canonicalize(&path).map_err(|e| Error::io("open", &path, e))?;
        if let Some(known) = adopted.get(&real) {
            return Ok(known.clone());
        }
        let stored = store.adopt_blob(&real, None)?;
        adopted.insert(real, stored.clone());
        Ok(stored)
    };
    let mut images = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = adopt(inside(dir, &entry.config, bad)?)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let path = inside(dir, layer, bad)?;
            let mut head = [0u8; 4];
            let n = std::io::Read::read(
                &mut fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?,
                &mut head,
            )
            .map_err(|e| Error::io("read", &path, e))?;
            let media_type = match Compression::sniff(&head[..n]) {
                Compression::None => format::LAYER_TAR,
                Compression::Gzip => format::LAYER_GZIP,
                Compression::Zstd => format::LAYER_ZSTD,
            };
            let (digest, size) = adopt(path)?;
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size,
                platform: None,
                annotations: Default::default(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(format::MANIFEST_V1.into()),
            config: Descriptor {
                media_type: format::CONFIG_V1.into(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: Default::default(),
            },
            layers,
        };
        let body = serde_json::to_vec(&manifest).expect("manifests serialize");
        let (manifest_digest, _) = store.write_blob(body.as_slice(), None)?;
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| normalize(t))
            .collect::<Result<Vec<_>, _>>()?;
        images.push(store.commit(&manifest_digest, &names)?);
    }
    Ok(images)
}

/// An OCI layout: `index.json` names the manifests (or indexes, of which the entry for this
/// machine's platform is taken) in `blobs/`.
fn import_oci(
    store: &ImageStore,
    dir: &Path,
    bad: &dyn Fn(String) -> Error,
) -> Result<Vec<Image>, Error> {
    let index: Index = read_json(&dir.join("index.json"), bad)?;
    let blob = |digest: &str| -> Result<PathBuf, Error> {
        let hex = super::hex_of(digest)?;
        inside(dir, &format!("blobs/sha256/{hex}"), bad)
    };
    let mut images = Vec::new();
    for entry in &index.manifests {
        let names = entry
            .annotations
            .get(format::CONTAINERD_NAME)
            .or_else(|| {
                // A bare tag ("v2.1") is not a name; a full reference is.
                entry
                    .annotations
                    .get(format::REF_NAME)
                    .filter(|r| r.contains(':') || r.contains('/'))
            })
            .map(|n| normalize(n))
            .transpose()?
            .into_iter()
            .collect::<Vec<_>>();
        if names.is_empty() {
            return Err(bad(format!(
                "manifest {} has no image name (annotation {} or {})",
                entry.digest,
                format::CONTAINERD_NAME,
                format::REF_NAME
            )));
        }
        let mut descriptor = entry.clone();
        let body: serde_json::Value = read_json(&blob(&descriptor.digest)?, bad)?;
        if Manifest::is_index(Some(&descriptor.media_type), &body) {
            let nested: Index = serde_json::from_value(body)
                .map_err(|e| bad(format!("index {}: {e}", descriptor.digest)))?;
            descriptor = format::pick_platform(&nested.manifests)
                .ok_or_else(|| {
                    bad(format!(
                        "index {} has no image for linux/{}",
                        descriptor.digest,
                        format::host_architecture()
                    ))
                })?
                .clone();
        }
        let manifest: Manifest = read_json(&blob(&descriptor.digest)?, bad)?;
        for part in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !store.has_blob(&part.digest) {
                store.adopt_blob(&blob(&part.digest)?, Some(&part.digest))?;
            }
        }
        if !store.has_blob(&descriptor.digest) {
            store.adopt_blob(&blob(&descriptor.digest)?, Some(&descriptor.digest))?;
        }
        images.push(store.commit(&descriptor.digest, &names)?);
    }
    Ok(images)
}
