//! `skiff image import|ls|rm`: the node's image store, worked on directly under its lock.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use skiff_runtime::ImageStore;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import the images of an OCI archive or a `docker save` archive.
    Import {
        /// The archive (a tar file).
        file: PathBuf,
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
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

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, data_dir } => {
            let started = std::time::Instant::now();
            let images = store_of(&data_dir)?.import(&file)?;
            for image in images {
                println!(
                    "imported {} ({}, {}) in {:.1?}",
                    image.names.join(", "),
                    short_id(&image.id),
                    human_size(image.size),
                    started.elapsed()
                );
            }
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

fn short_id(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
