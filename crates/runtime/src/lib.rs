//! Skiff's container runtime: the image store, pod sandboxes and containers owned by monitors.
//!
//! It replaces containerd, the CRI and Docker. The node agent drives it through the [`Runtime`]
//! trait; [`fake::FakeRuntime`] serves hollow nodes and tests of the agent's logic.

pub mod cgroups;
pub mod crilog;
pub mod fake;
mod files;
pub mod image;
mod layer;
mod local;
pub mod monitor;
mod sandbox;
mod spec;
mod types;

use std::path::{Path, PathBuf};

pub use image::{Image, ImageStore};
pub use local::{LocalConfig, LocalRuntime};
pub use monitor::OciRuntime;
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("invalid image reference {reference:?}: {message}")]
    BadReference { reference: String, message: String },
    #[error("{}: {message}", file.display())]
    BadArchive { file: PathBuf, message: String },
    #[error("pull {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("registry credentials: {0}")]
    BadCredentials(String),
    #[error("corrupt runtime data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    InvalidContainer(String),
    #[error("pod sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} exists already")]
    ContainerExists(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} did not stop")]
    StopTimeout(String),
    #[error("command in container {0} timed out after {1:?}")]
    ExecTimeout(String, std::time::Duration),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl AsRef<Path>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
