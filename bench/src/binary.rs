//! The `skiff` binary the benchmarks run: built in release mode, as users run it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Builds the release binary (the benchmark measures what users run) and returns its path.
pub fn release_binary() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    // The variables `cargo run` set for this process would make the inner build look different
    // to build scripts and rebuild half the tree each time; the build is asked as from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
            command.env_remove(&name);
        }
    }
    let status = command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "skiff",
            "--bin",
            "skiff",
        ])
        .status()
        .context("running cargo build for the skiff binary")?;
    if !status.success() {
        bail!("building the skiff binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("release/skiff");
    // Just linked, the binary's pages are dirty in the page cache until written back; dirty
    // file pages stay resident in every process mapping them and count as their memory, as
    // an installed binary's never do. Written back before anything runs.
    std::fs::File::open(&binary)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {} back to disk", binary.display()))?;
    Ok(binary)
}
