//! The Kubernetes REST API over TLS, on the Skiff store.
//!
//! [`server::start`] is the entry point: certificates ([`pki`]), the TLS listener ([`tls`]),
//! discovery ([`discovery`], [`openapi`]), the REST endpoints ([`rest`]) over the generic object
//! operations ([`registry`]) and watches ([`watch`]); every error is a `Status` ([`status`]).

pub mod admission;
pub mod bootstrap;
pub mod cache;
pub mod controllers;
pub mod csr;
pub mod discovery;
pub mod format;
pub mod logs;
pub mod openapi;
pub mod parsed;
pub mod paths;
pub mod pki;
pub mod protobuf;
pub mod registry;
pub mod rest;
pub mod server;
pub mod services;
pub mod status;
pub mod subresources;
pub mod tls;
pub mod watch;
pub mod written;
