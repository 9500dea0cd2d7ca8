//! `skiff store`: inspect the embedded store of a data directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use skiff_store::{RedbOptions, RedbStore, Store};

/// The embedded store's file inside a data directory.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store.redb")
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Print the store's revision, compaction point and size (the server must not be running).
    Inspect {
        /// The data directory holding `store.redb`.
        #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
    },
}

pub async fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Inspect { data_dir } => inspect(&data_dir).await,
    }
}

async fn inspect(data_dir: &Path) -> anyhow::Result<()> {
    let path = store_path(data_dir);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("no store at {}", path.display()))?
        .len();
    let store = RedbStore::open(&path, RedbOptions::default())?;
    println!("store:      {}", path.display());
    println!("size:       {size} bytes");
    println!("revision:   {}", store.current_revision().await?);
    println!("compacted:  {}", store.compacted_revision()?);
    println!("keys:       {}", store.key_count()?);
    Ok(())
}
