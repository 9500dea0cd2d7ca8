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

#[test]
fn two_servers_on_one_etcd_run_one_set_of_controllers() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let endpoint = etcd.endpoint();
    let args = ["--store", "etcd", "--etcd-endpoints", endpoint.as_str()];
    let bin = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let first = SkiffServer::start(bin, &args).unwrap_or_else(|e| panic!("{e}"));
    let second = SkiffServer::start(bin, &args).unwrap_or_else(|e| panic!("{e}"));
    kubectl(
        &first,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    let pods = |server: &SkiffServer| {
        kubectl(server, &["get", "pods", "-o", "name"])
            .out()
            .lines()
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pods(&second) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Two sets of controllers would each make the ReplicaSet's pods.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(pods(&first), 3);
    let created = kubectl(
        &second,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulCreate",
            "-o",
            "name",
        ],
    )
    .out();
    assert_eq!(created.lines().count(), 3, "no pod made twice: {created}");
    assert_eq!(
        kubectl(&second, &["get", "rs", "-o", "name"])
            .out()
            .lines()
            .count(),
        1
    );
    let holder = lease_holder(&first);
    assert!(
        !holder.is_empty(),
        "one server holds the controllers' Lease"
    );

    // The leader goes: once its Lease expires the other server takes over and its controllers
    // act (the Lease lasts 15 s without renewal).
    let (leader, follower) = if holds(&first, &holder) {
        (first, second)
    } else {
        (second, first)
    };
    drop(leader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let mut new_holder = holder.clone();
    while new_holder == holder && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        new_holder = lease_holder(&follower);
    }
    assert_ne!(new_holder, holder, "the follower took the Lease");
    assert!(holds(&follower, &new_holder));
    kubectl(
        &follower,
        &["scale", "deployment/api-server", "--replicas=5"],
    )
    .out();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pods(&follower) != 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(pods(&follower), 5, "the new leader's controllers act");
}

fn lease_holder(server: &SkiffServer) -> String {
    let args = [
        "get",
        "lease",
        "-n",
        "kube-system",
        "skiff-controllers",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ];
    kubectl(server, &args).out()
}

/// Whether `server` leads as `identity`: its log names the identity it took the lead as.
fn holds(server: &SkiffServer, identity: &str) -> bool {
    server.log().contains(identity)
}
