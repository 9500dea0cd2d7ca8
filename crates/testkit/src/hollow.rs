//! Hollow nodes for tests and benchmarks: `skiff-hollow`'s nodes against a test server, on a
//! runtime of their own, for as long as the handle lives. The scheduler binds pods to them;
//! they report the pods Running and Ready, through the API like real agents.

use kube::config::{KubeConfigOptions, Kubeconfig};
pub use skiff_hollow::HollowConfig;

use crate::SkiffServer;

/// Runs until dropped.
pub struct HollowNodes {
    runtime: Option<tokio::runtime::Runtime>,
}

impl HollowNodes {
    /// Starts the nodes and returns once they are registered.
    pub fn start(server: &SkiffServer, config: HollowConfig) -> HollowNodes {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("the admin kubeconfig");
        let (registered, wait) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let client_config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .expect("a client config");
            let client = kube::Client::try_from(client_config).expect("a client");
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
            let names = config.names();
            let run = tokio::spawn(skiff_hollow::run(client, config));
            // Registered once the last node has its status.
            loop {
                let last = names.last().expect("at least one node");
                if let Ok(node) = nodes.get(last).await {
                    if node.status.is_some_and(|s| s.conditions.is_some()) {
                        break;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = registered.send(());
            if let Ok(Err(e)) = run.await {
                panic!("hollow nodes: {e}");
            }
        });
        wait.recv_timeout(std::time::Duration::from_secs(60))
            .expect("hollow nodes registered");
        HollowNodes {
            runtime: Some(runtime),
        }
    }
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
