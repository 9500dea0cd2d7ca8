//! The Kubernetes REST API over TLS, on the Skiff store.

pub mod paths;
pub mod pki;
pub mod status;
