//! `skiff server --store etcd` against a real Debian etcd: the same API on the HA store.

mod common;

use std::path::Path;

use common::*;
use skiff_testkit::EtcdServer;

#[test]
fn the_api_runs_on_etcd_and_survives_a_server_restart() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let endpoint = etcd.endpoint();
    let args = ["--store", "etcd", "--etcd-endpoints", endpoint.as_str()];
    let bin = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let server = SkiffServer::start(bin, &args).unwrap_or_else(|e| panic!("{e}"));
    for file in ["api-server.yaml", "user-service.yaml", "config.yaml"] {
        kubectl(&server, &["apply", "-f", example(file).to_str().unwrap()]).out();
    }
    let svc = json(&kubectl(&server, &["get", "svc", "user-service", "-o", "json"]).out());
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.43."), "{ip}");
    let out = kubectl(&server, &["get", "cm", "--chunk-size=1", "-o", "name"]).out();
    assert_eq!(out, "configmap/app-config\nconfigmap/kube-root-ca.crt\n");

    // Another server on the same etcd sees the same cluster; the state lives in etcd.
    drop(server);
    let again = SkiffServer::start(bin, &args).unwrap_or_else(|e| panic!("{e}"));
    let svc = json(&kubectl(&again, &["get", "svc", "user-service", "-o", "json"]).out());
    assert_eq!(svc["spec"]["clusterIP"], ip.as_str());
    let deploy = kubectl(
        &again,
        &[
            "get",
            "deploy",
            "api-server",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .out();
    assert_eq!(deploy, "3");
}
