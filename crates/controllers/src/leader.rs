//! Leader election on a coordination.k8s.io Lease, so that several servers on one etcd run one
//! set of controllers: the holder renews the Lease; another takes it once it has expired.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_api::object::Lookup;
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterError};
use crate::runtime::kind;

const NAMESPACE: &str = "kube-system";
const NAME: &str = "skiff-controllers";
/// How long a Lease holds without renewal.
const DURATION: i64 = 15;
/// How often the holder renews, and others look.
const EVERY: Duration = Duration::from_secs(2);

fn now() -> (i64, String) {
    let t = jiff::Timestamp::now();
    (
        t.as_second(),
        t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
    )
}

/// One look at the Lease: take it when free or expired, renew it when held. Answers whether
/// `identity` leads now.
async fn try_lead(cluster: &dyn Cluster, identity: &str) -> Result<bool, ClusterError> {
    let leases = kind("coordination.k8s.io", "leases");
    let current = cluster.get(leases, NAMESPACE, NAME).await?;
    let (seconds, stamp) = now();
    let Some(mut lease) = current else {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": NAME},
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": DURATION,
                     "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
        });
        cluster.create(leases, NAMESPACE, lease).await?;
        return Ok(true);
    };
    let holder = lease
        .lookup("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    let renewed = lease
        .lookup("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second());
    let duration = lease
        .lookup("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DURATION);
    if holder == identity {
        lease["spec"]["renewTime"] = json!(stamp);
    } else if holder.is_empty() || seconds > renewed + duration {
        let transitions = lease
            .lookup("/spec/leaseTransitions")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        lease["spec"] = json!({"holderIdentity": identity, "leaseDurationSeconds": DURATION,
            "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": transitions + 1});
    } else {
        return Ok(false);
    }
    // The resourceVersion read makes this a compare-and-swap: of two takers, one wins.
    cluster.update(leases, lease).await?;
    Ok(true)
}

/// Takes part in the election for the life of the server; the receiver says whether
/// `identity` leads.
pub fn elect(cluster: std::sync::Arc<dyn Cluster>, identity: String) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let leads = match try_lead(cluster.as_ref(), &identity).await {
                Ok(leads) => leads,
                Err(ClusterError::Conflict(_)) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election");
                    false
                }
            };
            if *tx.borrow() != leads {
                tracing::info!(%identity, leads, "controllers leadership changed");
                tx.send_replace(leads);
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    rx
}
