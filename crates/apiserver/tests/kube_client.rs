//! The `kube` client against the API server in-process, on an in-memory store the test can
//! compact: consistency, pagination, watches (resume, selectors, bookmarks, 410), status and
//! generation, graceful and namespace deletion, access reviews.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use skiff_apiserver::server::{self, Config};
use skiff_store::{RedbOptions, RedbStore, Store};

/// Changes the watch cache keeps per kind here: small, so that a test can outrun it.
const HISTORY: usize = 50;

struct Cluster {
    client: Client,
    store: Arc<RedbStore>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RedbStore::in_memory(RedbOptions {
            progress_interval: Duration::from_millis(200),
            ..RedbOptions::default()
        })
        .unwrap(),
    );
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_sans: vec![],
        // Only the last HISTORY changes, however young: the 410 test writes more at once.
        watch_history: skiff_apiserver::cache::History {
            changes: HISTORY,
            fresh: Duration::ZERO,
        },
        service_ranges: Default::default(),
        // These tests write workloads' status themselves; the controllers' tests are in skiff.
        controllers: false,
        event_ttl: Duration::from_secs(24 * 3600),
        node_lifecycle: Default::default(),
        node_ipam: Default::default(),
    };
    let running = server::start(config, store.clone()).await.unwrap();
    let kubeconfig = Kubeconfig::read_from(&running.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Cluster {
        client: Client::try_from(config).unwrap(),
        store,
        _dir: dir,
    }
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

fn rv<K: kube::Resource>(obj: &K) -> String {
    obj.meta().resource_version.clone().unwrap()
}

#[tokio::test]
async fn reads_right_after_writes_see_them() {
    let c = cluster().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for i in 0..30 {
        let name = format!("c{i}");
        cms.create(&PostParams::default(), &cm(&name, json!({})))
            .await
            .unwrap();
        let listed = cms.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), i + 2, "the list after create {i}"); // + kube-root-ca.crt
        assert_eq!(cms.get(&name).await.unwrap().metadata.name.unwrap(), name);
    }
}

#[tokio::test]
async fn pages_are_one_consistent_snapshot() {
    let c = cluster().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for i in 0..10 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("p{i}"), json!({"page": "yes"})),
        )
        .await
        .unwrap();
    }
    let params = ListParams::default().labels("page=yes").limit(4);
    let first = cms.list(&params).await.unwrap();
    assert_eq!(first.items.len(), 4);
    // Written after the first page: not in the rest of this list.
    cms.create(&PostParams::default(), &cm("p99", json!({"page": "yes"})))
        .await
        .unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms.list(&params.clone().continue_token(&t)).await.unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.clone();
    }
    let want: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    assert_eq!(names, want);

    // Once the snapshot is compacted, a continue token is 410 Gone.
    let revision = c.store.current_revision().await.unwrap();
    c.store.compact(revision).await.unwrap();
    let stale = cms
        .list(
            &params
                .clone()
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref e) if e.code == 410),
        "{stale:?}"
    );
}

#[tokio::test]
async fn watches_resume_follow_selectors_and_expire() {
    let c = cluster().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("w", json!({})))
        .await
        .unwrap();
    let start = rv(&first);
    // Changes after `start`, watched afterwards from `start`: none missed.
    let mut relabelled = first.clone();
    relabelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    let second = cms
        .replace("w", &PostParams::default(), &relabelled)
        .await
        .unwrap();
    let mut unlabelled = second.clone();
    unlabelled.metadata.labels = None;
    cms.replace("w", &PostParams::default(), &unlabelled)
        .await
        .unwrap();

    let events: Vec<_> = cms
        .watch(&WatchParams::default().labels("app=web").timeout(2), &start)
        .await
        .unwrap()
        .take(2)
        .try_collect()
        .await
        .unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(
        kinds,
        ["ADDED", "DELETED"],
        "starting and stopping to match"
    );

    // Bookmarks come when asked for.
    let mut bookmarks = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(5),
            &rv(&second),
        )
        .await
        .unwrap()
        .boxed();
    let bookmark = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = bookmarks.next().await {
            if let WatchEvent::Bookmark(b) = event.unwrap() {
                return b;
            }
        }
        panic!("the watch ended without a bookmark");
    })
    .await
    .expect("a bookmark within 5 s");
    assert!(
        bookmark.metadata.resource_version.parse::<i64>().unwrap()
            >= rv(&second).parse::<i64>().unwrap()
    );

    // A start older than the changes kept is 410 Gone, as an ERROR event.
    for i in 0..HISTORY {
        let mut next = cms.get("w").await.unwrap();
        next.data = Some([("i".to_string(), i.to_string())].into());
        cms.replace("w", &PostParams::default(), &next)
            .await
            .unwrap();
    }
    let mut expired = cms
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match expired.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("wanted a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn status_is_its_own_endpoint_and_generation_counts_spec_changes() {
    let c = cluster().await;
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api-server"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "server", "image": "my-api:v2.1"}]}}},
        "status": {"replicas": 7}
    }))
    .unwrap();
    let created = deploys.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status.as_ref().and_then(|s| s.replicas),
        None,
        "clients do not set status"
    );

    let mut scaled = created.clone();
    scaled.spec.as_mut().unwrap().replicas = Some(5);
    scaled.status = Some(serde_json::from_value(json!({"replicas": 9})).unwrap());
    let scaled = deploys
        .replace("api-server", &PostParams::default(), &scaled)
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(scaled.status.as_ref().and_then(|s| s.replicas), None);

    let mut observed = scaled.clone();
    observed.status =
        Some(serde_json::from_value(json!({"replicas": 5, "observedGeneration": 2})).unwrap());
    let after = deploys
        .replace_status("api-server", &PostParams::default(), &observed)
        .await
        .unwrap();
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "status writes leave generation alone"
    );
    assert_eq!(after.status.unwrap().replicas, Some(5));
}

/// The managers of an object's `managedFields`, `manager/operation[/subresource]`, sorted
/// (Kubernetes orders them by the second they wrote in, which a test cannot fix).
fn managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    let mut managers: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            let mut m = format!(
                "{}/{}",
                e.manager.as_deref().unwrap_or(""),
                e.operation.as_deref().unwrap_or("")
            );
            if let Some(sub) = e.subresource.as_deref().filter(|s| !s.is_empty()) {
                m.push_str(&format!("/{sub}"));
            }
            m
        })
        .collect();
    managers.sort();
    managers
}

#[tokio::test]
async fn status_and_scale_writes_and_applies_own_their_fields() {
    let c = cluster().await;
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "server", "image": "my-api:v2.1"}]}}}});
    let applied = deploys
        .patch("web", &PatchParams::apply("deployer"), &Patch::Apply(&web))
        .await
        .unwrap();
    assert_eq!(managers(&applied.metadata), ["deployer/Apply"]);

    // Applying a Scale meets the owner of the replicas; forced, it takes them.
    let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"},
        "spec": {"replicas": 5}});
    let err = deploys
        .patch_scale(
            "web",
            &PatchParams::apply("autoscaler"),
            &Patch::Apply(&scale),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 409);
    assert!(
        status
            .message
            .contains("conflict with \"deployer\": .spec.replicas"),
        "{}",
        status.message
    );
    let scaled = deploys
        .patch_scale(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(5));
    let d = deploys.get("web").await.unwrap();
    assert_eq!(
        managers(&d.metadata),
        ["autoscaler/Apply/scale", "deployer/Apply"]
    );
    // The deployer re-applying its 3 now meets the autoscaler, named with its subresource.
    let err = deploys
        .patch("web", &PatchParams::apply("deployer"), &Patch::Apply(&web))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("conflict with \"autoscaler\" with subresource \"scale\": .spec.replicas"),
        "{err}"
    );

    // A status update owns what it changed, through the status subresource.
    let mut observed = d.clone();
    observed.status =
        Some(serde_json::from_value(json!({"replicas": 5, "readyReplicas": 2})).unwrap());
    let after = deploys
        .replace_status(
            "web",
            &PostParams {
                field_manager: Some("counter".into()),
                ..PostParams::default()
            },
            &observed,
        )
        .await
        .unwrap();
    assert_eq!(
        managers(&after.metadata),
        [
            "autoscaler/Apply/scale",
            "counter/Update/status",
            "deployer/Apply"
        ]
    );
    // An apply through status meets it, and forced takes the field it applies.
    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "status": {"readyReplicas": 5}});
    let err = deploys
        .patch_status("web", &PatchParams::apply("prober"), &Patch::Apply(&status))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "conflict with \"counter\" with subresource \"status\" using apps/v1: .status.readyReplicas"
        ),
        "{err}"
    );
    let probed = deploys
        .patch_status(
            "web",
            &PatchParams::apply("prober").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let status = probed.status.as_ref().unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (Some(5), Some(5)));
    assert_eq!(
        managers(&probed.metadata),
        [
            "autoscaler/Apply/scale",
            "counter/Update/status",
            "deployer/Apply",
            "prober/Apply/status"
        ]
    );
    // Nothing to apply a status to: 404, nothing made.
    let err = deploys
        .patch_status("gone", &PatchParams::apply("prober"), &Patch::Apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gone"}, "status": {"replicas": 1}})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
}

#[tokio::test]
async fn bound_pods_go_gracefully_and_namespaces_take_their_contents() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("web").await.unwrap();
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // A longer grace period cannot undo a shorter one; the node's DELETE with 0 removes it.
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(60),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        pods.get("web")
            .await
            .unwrap()
            .metadata
            .deletion_grace_period_seconds,
        Some(30)
    );
    let uid = terminating.metadata.uid.clone().unwrap();
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    pods.delete("web", &now).await.unwrap();
    assert!(pods.get_opt("web").await.unwrap().is_none());

    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team-a");
    cms.get("kube-root-ca.crt")
        .await
        .expect("every namespace gets the CA");
    cms.create(&PostParams::default(), &cm("inside", json!({})))
        .await
        .unwrap();
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    let refused = cms
        .create(&PostParams::default(), &cm("late", json!({})))
        .await;
    match refused {
        Err(kube::Error::Api(e)) => assert!(e.code == 403 || e.code == 404, "{e:?}"),
        other => panic!("creating in a terminating namespace: {other:?}"),
    }
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while namespaces.get_opt("team-a").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the namespace is deleted once empty");
    assert!(cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn access_reviews_allow_every_authenticated_user() {
    let c = cluster().await;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(c.client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("delete".into()),
                resource: Some("pods".into()),
                namespace: Some("default".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert!(status.allowed);
    assert!(status.reason.unwrap().contains("no RBAC yet"));
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports_never_twice() {
    use k8s_openapi::api::core::v1::Service;
    let c = cluster().await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let api = services.get("kubernetes").await.unwrap();
    assert_eq!(api.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));

    let svc = |name: &str, spec: serde_json::Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..20 {
        let created = services
            .create(
                &PostParams::default(),
                &svc(&format!("s{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .unwrap();
        let spec = created.spec.unwrap();
        let ip = spec.cluster_ip.unwrap();
        assert!(ip.starts_with("10.43."), "{ip}");
        assert_eq!(spec.cluster_ips, Some(vec![ip.clone()]));
        assert!(ips.insert(ip), "an address given twice");
    }
    let node_port = services
        .create(
            &PostParams::default(),
            &svc("np", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    let port = node_port.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&port), "{port}");

    // Asking for a taken address or port is Invalid; freed ones can be asked for again.
    let taken = services
        .create(
            &PostParams::default(),
            &svc(
                "dup",
                json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&taken, kube::Error::Api(e) if e.code == 422 && e.message.contains("provided IP is already allocated")),
        "{taken:?}"
    );
    let taken_port = services
        .create(
            &PostParams::default(),
            &svc(
                "dup2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&taken_port, kube::Error::Api(e) if e.code == 422),
        "{taken_port:?}"
    );
    let s0 = services.get("s0").await.unwrap();
    let s0_ip = s0.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    // An update that leaves the address out keeps it.
    let mut relabelled = svc("s0", json!({"ports": [{"port": 81}]}));
    relabelled.metadata.resource_version = s0.metadata.resource_version.clone();
    let updated = services
        .replace("s0", &PostParams::default(), &relabelled)
        .await
        .unwrap();
    assert_eq!(
        updated.spec.unwrap().cluster_ip.as_deref(),
        Some(s0_ip.as_str())
    );
    services
        .delete("s0", &DeleteParams::default())
        .await
        .unwrap();
    services
        .delete("np", &DeleteParams::default())
        .await
        .unwrap();
    let again = services
        .create(&PostParams::default(), &svc("again", json!({"clusterIP": s0_ip, "type": "NodePort", "ports": [{"port": 80, "nodePort": port}]})))
        .await
        .unwrap();
    assert_eq!(again.spec.unwrap().cluster_ip, Some(s0_ip));

    let invalid = services
        .create(
            &PostParams::default(),
            &svc("bad", json!({"ports": [{"port": 0}]})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&invalid, kube::Error::Api(e) if e.code == 422 && e.message.contains("spec.ports[0].port")),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn pods_are_bound_once_and_evicted() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let binding = |node: &str| {
        json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "web"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}
        })
    };
    let bound: serde_json::Value = pods
        .create_subresource("binding", "web", &PostParams::default(), &binding("node-1"))
        .await
        .unwrap();
    assert_eq!(bound["status"], "Success");
    let pod = pods.get("web").await.unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-1")
    );
    let scheduled = pod.status.unwrap().conditions.unwrap();
    assert!(scheduled
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    let again = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "web",
            &PostParams::default(),
            &binding("node-2"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&again, kube::Error::Api(e) if e.code == 409 && e.message.contains("already assigned to node \"node-1\"")),
        "{again:?}"
    );

    // Evicting a bound pod starts its graceful deletion.
    pods.evict("web", &kube::api::EvictParams::default())
        .await
        .unwrap();
    let evicted = pods.get("web").await.unwrap();
    assert!(evicted.metadata.deletion_timestamp.is_some());
}

#[tokio::test]
async fn events_and_hpas_are_one_object_in_two_versions() {
    use k8s_openapi::api::autoscaling::{v1 as hpa_v1, v2 as hpa_v2};
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let c = cluster().await;
    let new_events: Api<NewEvent> = Api::namespaced(c.client.clone(), "default");
    let core_events: Api<CoreEvent> = Api::namespaced(c.client.clone(), "default");
    let mut watch = core_events
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let event: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.pulled"},
        "eventTime": "2026-11-25T12:00:00.000000Z",
        "regarding": {"kind": "Pod", "namespace": "default", "name": "web"},
        "note": "Pulled image my-api:v2.1", "reason": "Pulled", "type": "Normal", "action": "Pull",
        "reportingController": "skiff/agent", "reportingInstance": "node-1"
    }))
    .unwrap();
    new_events
        .create(&PostParams::default(), &event)
        .await
        .unwrap();
    let core = core_events.get("web.pulled").await.unwrap();
    assert_eq!(core.message.as_deref(), Some("Pulled image my-api:v2.1"));
    assert_eq!(core.involved_object.name.as_deref(), Some("web"));
    assert_eq!(core.reporting_component.as_deref(), Some("skiff/agent"));
    match watch.next().await {
        Some(Ok(WatchEvent::Added(e))) => {
            assert_eq!(e.message.as_deref(), Some("Pulled image my-api:v2.1"))
        }
        other => panic!("the core/v1 watch should see the event: {other:?}"),
    }
    let by_field = core_events
        .list(&ListParams::default().fields("involvedObject.name=web"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let back = new_events.get("web.pulled").await.unwrap();
    assert_eq!(back.note.as_deref(), Some("Pulled image my-api:v2.1"));

    let v1: Api<hpa_v1::HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), "default");
    let v2: Api<hpa_v2::HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), "default");
    let hpa: hpa_v1::HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api-server"},
                 "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}
    }))
    .unwrap();
    v1.create(&PostParams::default(), &hpa).await.unwrap();
    let as_v2 = v2.get("api").await.unwrap();
    let metric = &as_v2.spec.unwrap().metrics.unwrap()[0];
    assert_eq!(
        metric.resource.as_ref().unwrap().target.average_utilization,
        Some(70)
    );
    let as_v1 = v1.get("api").await.unwrap();
    assert_eq!(
        as_v1.spec.unwrap().target_cpu_utilization_percentage,
        Some(70)
    );
}

#[tokio::test]
async fn aggregated_and_legacy_discovery_agree() {
    let c = cluster().await;
    for aggregated in [true, false] {
        let discovery = kube::Discovery::new(c.client.clone());
        let discovery = if aggregated {
            discovery.run_aggregated().await.unwrap()
        } else {
            discovery.run().await.unwrap()
        };
        let apps = discovery.get("apps").expect("the apps group");
        let (deploy, caps) = apps
            .recommended_resources()
            .into_iter()
            .find(|(r, _)| r.plural == "deployments")
            .expect("deployments are served");
        assert_eq!(
            (deploy.kind.as_str(), deploy.version.as_str()),
            ("Deployment", "v1")
        );
        assert!(caps.supports_operation("watch"), "aggregated: {aggregated}");
        let autoscaling = discovery.get("autoscaling").unwrap();
        assert_eq!(autoscaling.preferred_version_or_latest(), "v2");
    }
}
