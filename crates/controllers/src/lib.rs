//! Skiff's controllers, run inside `skiff server`: the runtime ([`runtime`], a [`queue`] of
//! keys fed by changes of the watched kinds), the reconcilers (ReplicaSets, Deployments) and the
//! garbage collector ([`gc`]) over the API as [`cluster`] describes it, and
//! their pure decisions: which pods a ReplicaSet makes or removes ([`replicaset`]) and the
//! rollout arithmetic of Deployments ([`rollout`]). The [`scheduler`]'s loop runs here too,
//! around the pure core of `skiff-scheduler`, the [`nodelifecycle`] controller (unreachable
//! nodes tainted, their pods evicted), [`nodeipam`] (each node's pod CIDR) and [`endpoints`]
//! (Services' Endpoints and EndpointSlices) and [`disruption`] (PodDisruptionBudgets' status).

pub mod cluster;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod queue;
mod reconcile;
pub mod replicaset;
pub mod rollout;
pub mod runtime;
pub mod scheduler;
