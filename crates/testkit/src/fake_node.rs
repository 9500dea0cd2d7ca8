//! A stand-in for the scheduler and a node agent, for controller tests without containers:
//! it binds every pending pod to `fake-node`, reports it Running and Ready, and finishes the
//! deletion of pods being deleted, through the API like the real ones will.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::json;

use crate::SkiffServer;

/// Runs until dropped.
pub struct FakeNode {
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeNode {
    pub fn start(server: &SkiffServer) -> FakeNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("the admin kubeconfig");
        runtime.spawn(async move {
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .expect("a client config");
            let client = kube::Client::try_from(config).expect("a client");
            let pods: Api<Pod> = Api::all(client.clone());
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                    Ok(_) => continue,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                // Failures are retried on the pod's next event.
                let _ = tend(&api, &pod).await;
            }
        });
        FakeNode {
            runtime: Some(runtime),
        }
    }
}

async fn tend(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        api.delete(&name, &now).await?;
        return Ok(());
    }
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .is_some();
    if !bound {
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": "fake-node"}});
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await?;
        return Ok(());
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !running {
        let mut status_pod = pod.clone();
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let statuses: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0,
                            "started": true, "state": {"running": {"startedAt": now}}}))
            .collect();
        status_pod.status = Some(
            serde_json::from_value(json!({
                "phase": "Running", "podIP": "10.42.0.2", "hostIP": "10.0.0.1", "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
                ],
                "containerStatuses": statuses,
            }))
            .expect("a pod status"),
        );
        api.replace_status(&name, &PostParams::default(), &status_pod)
            .await?;
    }
    Ok(())
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
