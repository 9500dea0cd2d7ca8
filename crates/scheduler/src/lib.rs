//! The scheduler's core, without I/O: a [`Snapshot`] of nodes and the pods placed on them, and
//! [`schedule`], which picks a node for a pod or says why none fits, in Kubernetes' words, and
//! which lower-priority pods to preempt when that would help. The loop around it (watching,
//! binding, events) is an API client elsewhere (`skiff-controllers`).

mod filter;
mod node;
mod pod;
mod resources;
mod schedule;
mod score;

pub use node::{NodeInfo, Snapshot};
pub use pod::{HostPort, PodInfo};
pub use resources::Resources;
pub use schedule::{schedule, Diagnosis, Placement, Preemption, Victim};
