//! `skiff image import|pull|ls|rm`: the node's image store, worked on directly under its lock,
//! long operations showing their progress on a terminal.

use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context;
use clap::Subcommand;
use skiff_runtime::image::{PullOptions, RegistryAuth};
use skiff_runtime::ImageStore;

use crate::progress::{human_size, Progress};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import the images of an OCI archive or a `docker save` archive.
    Import {
        /// The archive (a tar file).
        file: PathBuf,
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Pull an image from its registry (as a pod's pull would; anonymous).
    Pull {
        /// The image reference (`registry/repository:tag`; Docker Hub when no registry).
        image: String,
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
        /// A registry (`host:port`) spoken to over plain HTTP; repeatable.
        #[arg(
            long = "insecure-registry",
            env = "SKIFF_INSECURE_REGISTRY",
            value_delimiter = ','
        )]
        insecure_registries: Vec<String>,
    },
    /// List the images.
    Ls {
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Remove an image by name or ID.
    Rm {
        image: String,
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// The image store of a node's data directory.
pub fn store_of(data_dir: &Path) -> anyhow::Result<ImageStore> {
    let root = data_dir.join("runtime/images");
    ImageStore::open(&root).with_context(|| format!("open the image store in {}", root.display()))
}

pub async fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, data_dir } => {
            let started = std::time::Instant::now();
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            let progress = Progress::new(format!("importing {name}"));
            let imported = store_of(&data_dir)?.import_with_progress(&file, &|p| {
                progress.bytes(p.read, Some(p.total), p.read >= p.total)
            });
            progress.finish();
            for image in imported? {
                done("imported", &image, started);
            }
        }
        ImageCommand::Pull {
            image,
            data_dir,
            insecure_registries,
        } => {
            let started = std::time::Instant::now();
            let options = PullOptions {
                auth: RegistryAuth::Anonymous,
                insecure_registries,
            };
            let progress = Progress::new(format!("pulling {image}"));
            // Bytes of every blob so far, summed.
            let blobs: Mutex<HashMap<String, (u64, Option<u64>)>> = Mutex::default();
            let pulled = store_of(&data_dir)?
                .pull(&image, &options, &|p| {
                    let mut blobs = blobs.lock().expect("progress lock");
                    blobs.insert(p.blob, (p.received, p.total));
                    let done = blobs.values().map(|b| b.0).sum();
                    let total = blobs.values().map(|b| b.1).sum::<Option<u64>>();
                    progress.bytes(done, total, false);
                })
                .await;
            progress.finish();
            done(
                "pulled",
                &pulled.with_context(|| format!("pulling {image}"))?,
                started,
            );
        }
        ImageCommand::Ls { data_dir } => {
            let mut images = store_of(&data_dir)?.list()?;
            images.sort_by(|a, b| a.names.cmp(&b.names));
            println!("{:<50} {:<14} {:>10}", "IMAGE", "ID", "SIZE");
            for image in images {
                for name in &image.names {
                    println!(
                        "{:<50} {:<14} {:>10}",
                        name,
                        short_id(&image.id),
                        human_size(image.size)
                    );
                }
            }
        }
        ImageCommand::Rm { image, data_dir } => {
            let removed = store_of(&data_dir)?.remove(&image)?;
            println!("removed {image} ({})", short_id(&removed.id));
        }
    }
    Ok(())
}

/// The result line of an import or pull.
fn done(what: &str, image: &skiff_runtime::image::Image, started: std::time::Instant) {
    println!(
        "{what} {} ({}, {}) in {:.1?}",
        image.names.join(", "),
        short_id(&image.id),
        human_size(image.size),
        started.elapsed()
    );
}

fn short_id(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}
