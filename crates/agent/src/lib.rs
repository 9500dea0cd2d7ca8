//! Skiff's node agent, the kubelet of the one binary: registers the node and renews its Lease,
//! runs the pods bound to it on the container runtime, reports their status, and serves their
//! logs to the API server.
//!
//! Decisions are pure ([`plan`], [`status`], [`container`], [`probe`]); [`agent`] and [`worker`]
//! are the shell that watches the API and drives the runtime, [`prober`] runs probes and hooks,
//! [`events`] records what happened, [`volumes`] and [`logs`] are its files, [`local`] its
//! record of the node's pods for restarts while the server is away, [`network`] runs
//! the node's pod network, [`service_proxy`] its Service proxy and DNS zone.

pub mod agent;
pub mod container;
pub mod events;
pub mod join;
pub mod local;
pub mod logs;
pub mod network;
pub mod node;
pub mod plan;
pub mod probe;
pub mod prober;
mod service_proxy;
pub mod status;
pub mod volumes;
pub mod worker;

pub use agent::{start, Agent, AgentConfig, AgentError, Running};
pub use logs::ServingTls;
pub use network::NetworkSettings;
pub use node::NodeIdentity;
pub use plan::Backoff;
