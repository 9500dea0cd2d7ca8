//! Skiff's controllers. What is here: the pure decisions of the ReplicaSet controller
//! ([`replicaset`]: which pods to make or remove, and the status) and the rollout arithmetic of
//! the Deployment controller ([`rollout`]). They do no I/O; the controller runtime that feeds
//! them objects and writes their decisions through the API server's registry comes next
//! (issue 6).

pub mod replicaset;
pub mod rollout;
