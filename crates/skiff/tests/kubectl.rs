//! The real kubectl against `skiff server`: the workflows of issue 3, each on its own server.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn kubectl_lists_the_system_namespaces_over_tls() {
    let server = server();
    let out = kubectl(&server, &["get", "namespaces", "-o", "name"]).out();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(&format!("namespace/{ns}\n")), "{out}");
    }
    let cms = kubectl(&server, &["get", "configmaps", "-A", "-o", "json"]).out();
    let cms = json(&cms);
    let roots = cms["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|cm| cm["metadata"]["name"] == "kube-root-ca.crt")
        .count();
    assert_eq!(roots, 4, "a CA ConfigMap in each namespace");
    let accounts = kubectl(&server, &["get", "serviceaccounts", "-A", "-o", "name"]).out();
    assert_eq!(
        accounts
            .lines()
            .filter(|l| *l == "serviceaccount/default")
            .count(),
        4,
        "{accounts}"
    );
    kubectl(&server, &["create", "namespace", "team-a"]).out();
    kubectl(
        &server,
        &["get", "serviceaccount", "default", "-n", "team-a"],
    )
    .out();
    let resources = kubectl(&server, &["api-resources", "-o", "name"]).out();
    for want in [
        "deployments.apps",
        "pods",
        "events.events.k8s.io",
        "leases.coordination.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == want),
            "{want} in {resources}"
        );
    }
    let version = kubectl(&server, &["version", "-o", "json"]).out();
    assert_eq!(json(&version)["serverVersion"]["minor"], "33");
}

#[test]
fn requests_without_a_client_certificate_are_unauthorized() {
    let server = server();
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).unwrap();
    // Keep the cluster (CA, address), replace the user by an unknown bearer token.
    let cluster_only: String = kubeconfig
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| {
            if l.trim() == "user:" {
                "  user:\n    token: not-a-real-token".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = server.data_dir().join("anonymous.kubeconfig");
    std::fs::write(&path, cluster_only).unwrap();
    let err = kubectl(
        &server,
        &["--kubeconfig", path.to_str().unwrap(), "get", "configmaps"],
    )
    .err();
    // kubectl's words for a 401.
    assert!(err.contains("You must be logged in to the server"), "{err}");
}

#[test]
fn the_articles_manifests_apply_and_read_back() {
    let server = server();
    for file in ["api-server.yaml", "user-service.yaml", "config.yaml"] {
        let out = kubectl(&server, &["apply", "-f", example(file).to_str().unwrap()]).out();
        assert!(out.contains("created"), "{file}: {out}");
    }
    let again = kubectl(
        &server,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    assert!(
        again.contains("deployment.apps/api-server unchanged"),
        "{again}"
    );
    // The Secret's stringData is never stored, so kubectl always sees a change and patches.
    let patched = kubectl(
        &server,
        &["apply", "-f", example("config.yaml").to_str().unwrap()],
    )
    .out();
    assert!(patched.contains("secret/db-creds configured"), "{patched}");

    let deploy = json(&kubectl(&server, &["get", "deployment", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert!(deploy["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    let yaml = kubectl(&server, &["get", "deploy/api-server", "-o", "yaml"]).out();
    assert!(yaml.contains("image: my-api:v2.1"), "{yaml}");

    // The Secret's stringData is folded into base64 data by the server.
    let secret = json(&kubectl(&server, &["get", "secret", "db-creds", "-o", "json"]).out());
    assert_eq!(secret["data"]["password"], "czNjdXIzLXA0c3M=");
    assert!(secret.get("stringData").is_none());

    // Label and field selectors, all namespaces.
    let by_label = kubectl(&server, &["get", "deploy", "-l", "app=api", "-o", "name"]).out();
    assert_eq!(
        by_label, "",
        "the article's Deployment has no labels of its own"
    );
    let labelled = kubectl(&server, &["label", "deploy", "api-server", "tier=backend"]).out();
    assert!(labelled.contains("labeled"), "{labelled}");
    let by_label = kubectl(
        &server,
        &["get", "deploy", "-l", "tier in (backend)", "-o", "name"],
    )
    .out();
    assert_eq!(by_label, "deployment.apps/api-server\n");
    let by_field = kubectl(
        &server,
        &[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.name=app-config",
            "-o",
            "name",
        ],
    )
    .out();
    assert_eq!(by_field, "configmap/app-config\n");
    let bad_field = kubectl(
        &server,
        &["get", "cm", "--field-selector", "spec.nodeName=x"],
    )
    .err();
    assert!(
        bad_field.contains("field label not supported: spec.nodeName"),
        "{bad_field}"
    );
    let bad_label = kubectl(&server, &["get", "cm", "-l", "a in (b"]).err();
    assert!(
        bad_label.contains("unable to parse requirement"),
        "{bad_label}"
    );
}

#[test]
fn replace_bumps_resource_version_and_stale_updates_conflict() {
    let server = server();
    // Created, not applied: replace would rewrite an apply annotation and so change the object.
    kubectl(
        &server,
        &["create", "-f", example("config.yaml").to_str().unwrap()],
    )
    .out();
    let cm = json(&kubectl(&server, &["get", "cm", "app-config", "-o", "json"]).out());
    let rv: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let mut changed = cm.clone();
    changed["data"]["log_level"] = "info".into();
    let out = kubectl_stdin(&server, &["replace", "-f", "-"], &changed.to_string()).out();
    assert!(out.contains("configmap/app-config replaced"), "{out}");
    let now = json(&kubectl(&server, &["get", "cm", "app-config", "-o", "json"]).out());
    assert_eq!(now["data"]["log_level"], "info");
    let new_rv: i64 = now["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(new_rv > rv, "{new_rv} > {rv}");

    // The same body again carries the old resourceVersion: Conflict.
    let err = kubectl_stdin(&server, &["replace", "-f", "-"], &changed.to_string()).err();
    assert!(
        err.contains("Error from server (Conflict)")
            && err.contains("the object has been modified"),
        "{err}"
    );
    // A replace that changes nothing keeps the resourceVersion.
    kubectl_stdin(&server, &["replace", "-f", "-"], &now.to_string()).out();
    let same = json(&kubectl(&server, &["get", "cm", "app-config", "-o", "json"]).out());
    assert_eq!(
        same["metadata"]["resourceVersion"],
        now["metadata"]["resourceVersion"]
    );
}

#[test]
fn errors_are_statuses_kubectl_prints() {
    let server = server();
    let missing = kubectl(&server, &["get", "cm", "nope"]).err();
    assert!(
        missing.contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{missing}"
    );
    let bad_name = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#;
    let invalid = kubectl_stdin(&server, &["create", "-f", "-"], bad_name).err();
    assert!(
        invalid.contains(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{invalid}"
    );
    let no_ns =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"ghost"}}"#;
    let err = kubectl_stdin(&server, &["create", "-f", "-"], no_ns).err();
    assert!(err.contains("namespaces \"ghost\" not found"), "{err}");
    let dir = server.data_dir();
    let malformed = dir.join("malformed.json");
    std::fs::write(
        &malformed,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},}"#,
    )
    .unwrap();
    let path = "/api/v1/namespaces/default/configmaps";
    let err = kubectl(
        &server,
        &["create", "--raw", path, "-f", malformed.to_str().unwrap()],
    )
    .err();
    assert!(
        err.contains("Error from server (BadRequest): the request body is not valid JSON: trailing comma at line 1 column 63"),
        "{err}"
    );
    let huge = dir.join("huge.json");
    let data = "x".repeat(4 << 20);
    std::fs::write(&huge, format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{data}"}}}}"#)).unwrap();
    let err = kubectl(
        &server,
        &["create", "--raw", path, "-f", huge.to_str().unwrap()],
    )
    .err();
    assert!(err.contains("(RequestEntityTooLarge)"), "{err}");
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"twice"}}"#;
    kubectl_stdin(&server, &["create", "-f", "-"], cm).out();
    let err = kubectl_stdin(&server, &["create", "-f", "-"], cm).err();
    assert!(
        err.contains("Error from server (AlreadyExists)")
            && err.contains("configmaps \"twice\" already exists"),
        "{err}"
    );
}

#[test]
fn pagination_returns_every_object_once() {
    let server = server();
    let items: Vec<String> = (0..25)
        .map(|i| {
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i:02}"}}}}"#)
        })
        .collect();
    let list = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        items.join(",")
    );
    kubectl_stdin(&server, &["create", "-f", "-"], &list).out();
    let out = kubectl(&server, &["get", "cm", "--chunk-size=7", "-o", "name"]).out();
    let names: Vec<&str> = out.lines().filter(|l| l.contains("/cm-")).collect();
    let want: Vec<String> = (0..25).map(|i| format!("configmap/cm-{i:02}")).collect();
    assert_eq!(names, want);
}

#[test]
fn delete_honours_finalizers_preconditions_and_policies() {
    let server = server();
    let held = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"held","finalizers":["example.com/hold"]}}"#;
    kubectl_stdin(&server, &["create", "-f", "-"], held).out();
    kubectl(&server, &["delete", "cm", "held", "--wait=false"]).out();
    let marked = json(&kubectl(&server, &["get", "cm", "held", "-o", "json"]).out());
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    // Dropping the last finalizer lets it go.
    let mut released = marked.clone();
    released["metadata"]["finalizers"] = serde_json::json!([]);
    kubectl_stdin(&server, &["replace", "-f", "-"], &released.to_string()).out();
    kubectl(&server, &["get", "cm", "held"]).err();

    for policy in ["background", "foreground", "orphan"] {
        let name = format!("cm-{policy}");
        let cm =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
        kubectl_stdin(&server, &["create", "-f", "-"], &cm).out();
        let out = kubectl(
            &server,
            &["delete", "cm", &name, &format!("--cascade={policy}")],
        )
        .out();
        assert!(out.contains("deleted"), "{policy}: {out}");
        kubectl(&server, &["get", "cm", &name]).err();
    }
    // ConfigMaps have no dependents: every policy deletes at once (workloads' policies are
    // tested in controllers.rs).

    // A uid precondition that does not hold is a Conflict.
    kubectl_stdin(
        &server,
        &["create", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"pre"}}"#,
    )
    .out();
    let raw = kubectl_stdin(
        &server,
        &[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps/pre",
            "-f",
            "-",
        ],
        r#"{"preconditions":{"uid":"00000000-0000-0000-0000-000000000000"}}"#,
    )
    .err();
    assert!(
        raw.contains("Precondition failed: UID in precondition"),
        "{raw}"
    );
    kubectl(&server, &["get", "cm", "pre"]).out();
}

#[test]
fn get_watch_sees_changes() {
    let server = server();
    let watching = watch(
        &server,
        &[
            "get",
            "cm",
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.type} {.object.metadata.name} {.object.data.k}{\"\\n\"}",
        ],
    );
    let rx = &watching.lines;
    let next = |want: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the watch did not print {want:?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.join(" ") == want {
            return;
        }
    };
    next("ADDED kube-root-ca.crt");
    let cm = |v: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"w"}},"data":{{"k":"{v}"}}}}"#
        )
    };
    kubectl_stdin(&server, &["create", "-f", "-"], &cm("1")).out();
    next("ADDED w 1");
    kubectl_stdin(&server, &["replace", "-f", "-"], &cm("2")).out();
    next("MODIFIED w 2");
    kubectl(&server, &["delete", "cm", "w"]).out();
    next("DELETED w 2");
}

#[test]
fn every_kubectl_from_1_27_to_1_33_applies_a_manifest() {
    let server = server();
    for minor in 27..=33 {
        let bin = versioned_kubectl(minor);
        let manifest = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-{minor}\ndata:\n  k: v\n"
        );
        let run = kubectl_with(&bin, &server, &["apply", "-f", "-"], Some(&manifest));
        assert!(
            run.ok,
            "kubectl 1.{minor} apply: {}{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout
                .contains(&format!("configmap/from-{minor} created")),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn server_restart_keeps_objects() {
    let server = server();
    kubectl(
        &server,
        &["apply", "-f", example("config.yaml").to_str().unwrap()],
    )
    .out();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_skiff"));
    let dir = server.stop();
    let again = SkiffServer::start_in(bin, dir, &[]).unwrap();
    let out = kubectl(
        &again,
        &[
            "get",
            "cm",
            "app-config",
            "-o",
            "jsonpath={.data.log_level}",
        ],
    )
    .out();
    assert_eq!(out, "debug");
}

#[test]
fn scale_merge_patches_and_warnings() {
    let server = server();
    kubectl(
        &server,
        &["apply", "-f", example("api-server.yaml").to_str().unwrap()],
    )
    .out();
    let out = kubectl(&server, &["scale", "deployment/api-server", "--replicas=5"]).out();
    assert!(out.contains("scaled"), "{out}");
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 5);
    assert_eq!(deploy["metadata"]["generation"], 2, "a spec change");
    let scale = json(
        &kubectl(
            &server,
            &[
                "get",
                "--raw",
                "/apis/apps/v1/namespaces/default/deployments/api-server/scale",
            ],
        )
        .out(),
    );
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=api");

    kubectl(
        &server,
        &[
            "patch",
            "deploy",
            "api-server",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ],
    )
    .out();
    kubectl(
        &server,
        &["annotate", "deploy", "api-server", "team=payments"],
    )
    .out();
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["annotations"]["team"], "payments");
    let smp = kubectl(
        &server,
        &[
            "patch",
            "deploy",
            "api-server",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    )
    .out();
    assert!(smp.contains("patched"), "{smp}");
    let json_patch = r#"[{"op":"replace","path":"/spec/replicas","value":4},{"op":"add","path":"/metadata/labels","value":{"via":"json-patch"}}]"#;
    kubectl(
        &server,
        &[
            "patch",
            "deploy",
            "api-server",
            "--type=json",
            "-p",
            json_patch,
        ],
    )
    .out();
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 4);
    assert_eq!(deploy["metadata"]["labels"]["via"], "json-patch");
    let failing = r#"[{"op":"test","path":"/spec/replicas","value":99}]"#;
    let err = kubectl(
        &server,
        &[
            "patch",
            "deploy",
            "api-server",
            "--type=json",
            "-p",
            failing,
        ],
    )
    .err();
    assert!(err.contains("test operation 0 failed"), "{err}");

    let policy = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny"},"spec":{"podSelector":{}}}"#;
    let created = kubectl_stdin(&server, &["create", "-f", "-"], policy);
    assert!(created.ok, "{}", created.stderr);
    assert!(
        created
            .stderr
            .contains("Warning: skiff: NetworkPolicies are stored but not enforced yet"),
        "{}",
        created.stderr
    );
}

#[test]
fn explain_reads_the_served_schemas() {
    let server = server();
    let out = kubectl(&server, &["explain", "deployment.spec.replicas"]).out();
    assert!(out.contains("FIELD: replicas <integer>"), "{out}");
    assert!(out.contains("Number of desired pods"), "{out}");
    let pods = kubectl(&server, &["explain", "pods.spec.containers"]).out();
    assert!(pods.contains("image\t<string>"), "{pods}");
    let missing = kubectl(&server, &["explain", "deployment.spec.nonsense"]).err();
    assert!(
        missing.contains("field \"nonsense\" does not exist"),
        "{missing}"
    );
}

#[test]
fn reapply_set_image_set_env_and_restart_patch_strategically() {
    let server = server();
    let manifest = std::fs::read_to_string(example("api-server.yaml")).unwrap();
    apply(&server, &manifest);
    let unchanged = apply(&server, &manifest);
    assert!(
        unchanged.contains("deployment.apps/api-server unchanged"),
        "{unchanged}"
    );

    // A sidecar added by someone else survives re-applies: containers merge by name.
    let sidecar =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"proxy","image":"proxy:1"}]}}}}"#;
    kubectl(&server, &["patch", "deploy", "api-server", "-p", sidecar]).out();
    let changed = manifest
        .replace("replicas: 3", "replicas: 4")
        .replace("cpu: \"500m\"", "cpu: \"1\"");
    let configured = apply(&server, &changed);
    assert!(
        configured.contains("deployment.apps/api-server configured"),
        "{configured}"
    );
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 4);
    assert_eq!(deploy["metadata"]["generation"], 3);
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["server", "proxy"]);
    assert_eq!(containers[0]["resources"]["limits"]["cpu"], "1");
    assert_eq!(
        containers[0]["ports"][0]["containerPort"], 8080,
        "untouched fields stay"
    );

    kubectl(
        &server,
        &[
            "set",
            "image",
            "deployment/api-server",
            "server=my-api:v2.2",
        ],
    )
    .out();
    kubectl(
        &server,
        &[
            "set",
            "env",
            "deployment/api-server",
            "-c",
            "server",
            "LOG_LEVEL=debug",
        ],
    )
    .out();
    kubectl(&server, &["rollout", "restart", "deployment/api-server"]).out();
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    let template = &deploy["spec"]["template"];
    assert_eq!(template["spec"]["containers"][0]["image"], "my-api:v2.2");
    assert_eq!(
        template["spec"]["containers"][0]["env"][0],
        serde_json::json!({"name": "LOG_LEVEL", "value": "debug"})
    );
    assert_eq!(template["spec"]["containers"][1]["image"], "proxy:1");
    assert!(template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string());
}

/// The words of each line of kubectl's output, spaces folded.
fn table(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn get_shows_kubernetes_columns() {
    let server = server();
    for file in ["api-server.yaml", "user-service.yaml", "config.yaml"] {
        kubectl(&server, &["apply", "-f", example(file).to_str().unwrap()]).out();
    }
    let deploy = table(&kubectl(&server, &["get", "deploy"]).out());
    assert_eq!(deploy[0], "NAME READY UP-TO-DATE AVAILABLE AGE");
    // UP-TO-DATE is 0 or 3 depending on whether the controller got there first.
    let row: Vec<&str> = deploy[1].split(' ').collect();
    assert_eq!(
        (row[0], row[1], row[3]),
        ("api-server", "0/3", "0"),
        "{deploy:?}"
    );
    assert!(row[2] == "0" || row[2] == "3", "{deploy:?}");
    let svc = table(&kubectl(&server, &["get", "svc", "user-service", "-o", "wide"]).out());
    assert_eq!(
        svc[0],
        "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE SELECTOR"
    );
    assert!(
        svc[1].starts_with("user-service ClusterIP 10.43."),
        "{svc:?}"
    );
    assert!(
        svc[1].contains(" <none> 8080/TCP ") && svc[1].ends_with(" app=users"),
        "{svc:?}"
    );
    let cms = table(&kubectl(&server, &["get", "cm", "-A"]).out());
    assert_eq!(cms[0], "NAMESPACE NAME DATA AGE");
    assert!(
        cms.iter().any(|l| l.starts_with("default app-config 2 ")),
        "{cms:?}"
    );
    let secret = table(&kubectl(&server, &["get", "secret", "db-creds"]).out());
    assert!(secret[1].starts_with("db-creds Opaque 1 "), "{secret:?}");
    let ns = table(&kubectl(&server, &["get", "ns", "kube-system"]).out());
    assert!(ns[1].starts_with("kube-system Active "), "{ns:?}");
    let none = kubectl(&server, &["get", "pods", "-n", "kube-public"]);
    assert!(
        none.ok
            && none
                .stderr
                .contains("No resources found in kube-public namespace."),
        "{}",
        none.stderr
    );
}

#[test]
fn unknown_fields_follow_field_validation() {
    let server = server();
    let typo = std::fs::read_to_string(example("api-server.yaml"))
        .unwrap()
        .replace(
            "image: my-api:v2.1",
            "image: my-api:v2.1\n        imagePulPolicy: Always",
        )
        .replace("replicas: 3", "replicaz: 3");
    let strict = kubectl_stdin(&server, &["apply", "-f", "-"], &typo).err();
    assert!(
        strict.contains("Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.replicaz\", unknown field \"spec.template.spec.containers[0].imagePulPolicy\""),
        "{strict}"
    );
    let warned = kubectl_stdin(&server, &["apply", "--validate=warn", "-f", "-"], &typo);
    assert!(warned.ok, "{}", warned.stderr);
    assert!(
        warned
            .stderr
            .contains("Warning: unknown field \"spec.replicaz\""),
        "{}",
        warned.stderr
    );
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert!(
        deploy["spec"].get("replicaz").is_none(),
        "unknown fields are dropped"
    );
    let ignored = kubectl_stdin(&server, &["replace", "--validate=false", "-f", "-"], &typo);
    assert!(
        ignored.ok && !ignored.stderr.contains("Warning"),
        "{}",
        ignored.stderr
    );
}

#[test]
fn invalid_workloads_and_defaults_read_as_in_kubernetes() {
    let server = server();
    let manifest = std::fs::read_to_string(example("api-server.yaml")).unwrap();
    // Each broken manifest (a piece of the article's replaced) and what kubectl must print.
    let broken: [(&str, &str, &[&str]); 7] = [
        ("image: my-api:v2.1", "", &["The Deployment \"api-server\" is invalid: spec.template.spec.containers[0].image: Required value"]),
        ("      labels:\n        app: api", "      labels:\n        app: web", &["`selector` does not match template `labels`"]),
        ("cpu: \"250m\"", "cpu: \"2\"", &["spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 500m"]),
        ("memory: \"256Mi\"", "memory: \"lots\"", &["spec.template.spec.containers[0].resources.requests[memory]: Invalid value: \"lots\": quantities must match the regular expression"]),
        (
            "  replicas: 3\n",
            "  replicas: 3\n  strategy:\n    rollingUpdate:\n      maxSurge: 0\n      maxUnavailable: 0\n",
            &["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"],
        ),
        (
            "      containers:\n",
            "      topologySpreadConstraints:\n      - maxSkew: 0\n        topologyKey: zone\n        whenUnsatisfiable: DoNotSchedule\n      containers:\n",
            &["spec.template.spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero"],
        ),
        // A mount of a volume the pod lacks, and a liveness probe without a handler.
        (
            "        - containerPort: 8080\n",
            "        - containerPort: 8080\n        volumeMounts:\n        - name: config\n          mountPath: /etc/app\n        livenessProbe:\n          periodSeconds: 5\n",
            &[
                "spec.template.spec.containers[0].volumeMounts[0].name: Not found: \"config\"",
                "spec.template.spec.containers[0].livenessProbe: Required value: must specify a handler type",
            ],
        ),
    ];
    for (piece, replacement, wants) in broken {
        assert!(
            manifest.contains(piece),
            "the article's manifest has {piece:?}"
        );
        let err = kubectl_stdin(
            &server,
            &["apply", "-f", "-"],
            &manifest.replace(piece, replacement),
        )
        .err();
        for want in wants {
            assert!(err.contains(want), "{want} in:\n{err}");
        }
    }

    // With the volume and a handler, the probe and the volume come back with Kubernetes'
    // defaults.
    let probed = manifest.replace(
        "        - containerPort: 8080\n",
        "        - containerPort: 8080\n        volumeMounts:\n        - name: config\n          mountPath: /etc/app\n        livenessProbe:\n          httpGet:\n            port: 8080\n",
    ) + "      volumes:\n      - name: config\n        configMap:\n          name: app-config\n";
    apply(&server, &probed);
    let pod_spec = json(
        &kubectl(
            &server,
            &[
                "get",
                "deploy",
                "api-server",
                "-o",
                "jsonpath={.spec.template.spec}",
            ],
        )
        .out(),
    );
    assert_eq!(
        pod_spec["containers"][0]["livenessProbe"],
        serde_json::json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                           "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(pod_spec["volumes"][0]["configMap"]["defaultMode"], 420);
    kubectl(&server, &["delete", "deploy", "api-server"]).out();

    apply(&server, &manifest);
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["restartPolicy"],
        "Always"
    );
    // Re-applying after defaulting is still "unchanged".
    let again = apply(&server, &manifest);
    assert!(again.contains("unchanged"), "{again}");
}

#[test]
fn updates_cannot_change_what_kubernetes_fixes() {
    let server = server();
    let manifest = std::fs::read_to_string(example("api-server.yaml")).unwrap();
    apply(&server, &manifest);
    // A Deployment's selector is fixed: re-applying with other labels is refused.
    let relabelled = manifest.replace("app: api", "app: api2");
    let err = kubectl_stdin(&server, &["apply", "-f", "-"], &relabelled).err();
    assert!(
        err.contains("The Deployment \"api-server\" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"api2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"),
        "{err}"
    );

    // A pod takes a new image, not a new environment.
    kubectl(
        &server,
        &["run", "one", "--image=busybox:1", "--restart=Never"],
    )
    .out();
    kubectl(&server, &["set", "image", "pod/one", "one=busybox:2"]).out();
    let image = kubectl(
        &server,
        &[
            "get",
            "pod",
            "one",
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ],
    )
    .out();
    assert_eq!(image, "busybox:2");
    let err = kubectl(&server, &["set", "env", "pod/one", "MODE=fast"]).err();
    assert!(
        err.contains("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`")
            && err.contains("+ spec.containers[0].env: [{\"name\":\"MODE\",\"value\":\"fast\"}]"),
        "{err}"
    );

    // An immutable ConfigMap keeps its data, and stays immutable.
    kubectl_stdin(
        &server,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fixed\ndata:\n  mode: slow\nimmutable: true\n",
    )
    .out();
    let err = kubectl(
        &server,
        &["patch", "cm", "fixed", "-p", r#"{"data":{"mode":"fast"}}"#],
    )
    .err();
    assert!(
        err.contains("The ConfigMap \"fixed\" is invalid: data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let err = kubectl(
        &server,
        &["patch", "cm", "fixed", "-p", r#"{"immutable":false}"#],
    )
    .err();
    assert!(
        err.contains("immutable: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    // Labels are metadata: they still change.
    kubectl(&server, &["label", "cm", "fixed", "tier=config"]).out();
}

#[test]
fn create_commands_and_auth_can_i_send_protobuf() {
    let server = server();
    let secret = kubectl(
        &server,
        &[
            "create",
            "secret",
            "generic",
            "db-creds",
            "--from-literal=password=s3cur3-p4ss",
        ],
    )
    .out();
    assert!(secret.contains("secret/db-creds created"), "{secret}");
    let read = kubectl(
        &server,
        &[
            "get",
            "secret",
            "db-creds",
            "-o",
            "jsonpath={.type} {.data.password}",
        ],
    )
    .out();
    assert_eq!(read, "Opaque czNjdXIzLXA0c3M=");
    kubectl(
        &server,
        &[
            "create",
            "configmap",
            "app-config",
            "--from-literal=log_level=debug",
        ],
    )
    .out();
    let cm = kubectl(
        &server,
        &[
            "get",
            "cm",
            "app-config",
            "-o",
            "jsonpath={.data.log_level}",
        ],
    )
    .out();
    assert_eq!(cm, "debug");
    kubectl(&server, &["create", "namespace", "team-a"]).out();
    let ns = kubectl(
        &server,
        &["get", "ns", "team-a", "-o", "jsonpath={.status.phase}"],
    )
    .out();
    assert_eq!(ns, "Active");
    kubectl(
        &server,
        &[
            "create",
            "service",
            "clusterip",
            "user-service",
            "--tcp=8080:8080",
        ],
    )
    .out();
    let svc = json(&kubectl(&server, &["get", "svc", "user-service", "-o", "json"]).out());
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10.43."));
    kubectl(
        &server,
        &[
            "create",
            "deployment",
            "api-server",
            "--image=my-api:v2.1",
            "--replicas=3",
            "--port=8080",
        ],
    )
    .out();
    let deploy = json(&kubectl(&server, &["get", "deploy", "api-server", "-o", "json"]).out());
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"]["app"],
        "api-server"
    );
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["image"].as_str(), c["ports"][0]["containerPort"].as_i64()),
        (Some("my-api:v2.1"), Some(8080))
    );
    let dry = kubectl(
        &server,
        &[
            "create",
            "configmap",
            "dry",
            "--from-literal=a=b",
            "--dry-run=server",
        ],
    )
    .out();
    assert!(
        dry.contains("configmap/dry created (server dry run)"),
        "{dry}"
    );
    kubectl(&server, &["get", "cm", "dry"]).err();

    let can = kubectl(&server, &["auth", "can-i", "delete", "pods"]).out();
    assert_eq!(can.trim(), "yes");
    let list = kubectl(&server, &["auth", "can-i", "--list"]).out();
    assert!(list.contains("*.*"), "{list}");
}

#[test]
fn user_certificate_requests_wait_for_approval_then_are_signed() {
    use base64::Engine;
    let server = server();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "jane");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "developers");
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let request = base64::engine::general_purpose::STANDARD.encode(pem);
    apply(
        &server,
        &format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: jane\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"
        ),
    );
    let csr = json(&kubectl(&server, &["get", "csr", "jane", "-o", "json"]).out());
    assert_eq!(csr["spec"]["username"], "admin", "the requester is stamped");
    assert!(
        csr["status"].get("certificate").is_none(),
        "not approved yet: {csr}"
    );

    kubectl(&server, &["certificate", "approve", "jane"]).out();
    let mut issued = String::new();
    for _ in 0..50 {
        issued = kubectl(
            &server,
            &["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"],
        )
        .out();
        if !issued.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pem = base64::engine::general_purpose::STANDARD
        .decode(issued.trim())
        .expect("a base64 certificate");
    let pem = String::from_utf8(pem).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let condition = kubectl(&server, &["get", "csr", "jane"]).out();
    assert!(condition.contains("Approved,Issued"), "{condition}");

    // A request that is not a PKCS#10 request is refused with the field named.
    let refused = kubectl_stdin(
        &server,
        &["create", "-f", "-"],
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: junk\nspec:\n  request: bm90IGEgcmVxdWVzdA==\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n",
    )
    .err();
    assert!(refused.contains("spec.request"), "{refused}");
}

#[test]
fn flags_come_from_the_environment_and_the_kubeconfig_is_printed() {
    let skiff = env!("CARGO_BIN_EXE_skiff");
    let bad = std::process::Command::new(skiff)
        .arg("server")
        .env("SKIFF_LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("invalid value 'nowhere' for '--listen <LISTEN>'"),
        "{stderr}"
    );

    let server = server();
    let printed = std::process::Command::new(skiff)
        .arg("kubeconfig")
        .env("SKIFF_DATA_DIR", server.data_dir())
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8(printed.stdout).unwrap(),
        std::fs::read_to_string(server.kubeconfig()).unwrap()
    );
    // A config file gives flags; the command line wins over it; unknown keys are named.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("skiff.yaml");
    std::fs::write(&config, "data-dir: /nonexistent/from-config\n").unwrap();
    let from_file = std::process::Command::new(skiff)
        .arg("kubeconfig")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&from_file.stderr);
    assert!(
        stderr.contains("/nonexistent/from-config/admin.kubeconfig"),
        "{stderr}"
    );
    let overridden = std::process::Command::new(skiff)
        .arg("kubeconfig")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(
        overridden.status.success(),
        "{}",
        String::from_utf8_lossy(&overridden.stderr)
    );
    std::fs::write(&config, "data-dri: /x\n").unwrap();
    let unknown = std::process::Command::new(skiff)
        .args(["kubeconfig", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains(&format!(
            "config {}: key \"data-dri\" is not a flag",
            config.display()
        )),
        "{stderr}"
    );

    let missing = std::process::Command::new(skiff)
        .args(["kubeconfig", "--data-dir", "/nonexistent/skiff"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("reading /nonexistent/skiff/admin.kubeconfig"),
        "{stderr}"
    );
}

/// The managers of an object, each with its operation and subresource, sorted (see [`sorted`]):
/// `kubectl-patch/Update kubectl/Apply kubectl/Update/scale`.
fn managers(server: &SkiffServer, what: &str) -> String {
    let shown = kubectl(
        server,
        &[
            "get",
            what,
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}/{.subresource} {end}",
        ],
    )
    .out();
    sorted(&shown)
}

/// Words sorted: the managers of an object compared in any order.
fn sorted(words: &str) -> String {
    let mut words: Vec<&str> = words
        .split_whitespace()
        .map(|w| w.trim_end_matches('/'))
        .collect();
    words.sort();
    words.join(" ")
}

/// What the controllers own of a Deployment once they have seen it: its revision annotation,
/// and its status. (`managers` sorts them: Kubernetes orders entries by time, which races the
/// controllers' writes here.)
const CONTROLLERS: &str = "kube-controller-manager/Update kube-controller-manager/Update/status";

#[test]
fn server_side_apply_owns_fields_meets_conflicts_and_takes_over_from_client_side_apply() {
    let server = server();
    let web = |replicas: u32, labels: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
{labels}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: server
        image: my-api:v2.1
        ports:
        - containerPort: 8080
"
        )
    };
    let ssa = |manifest: &str, extra: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend(extra);
        kubectl_stdin(&server, &args, manifest)
    };
    let both = "    app: web\n    tier: api";
    let out = ssa(&web(3, both), &[]).out();
    assert_eq!(out, "deployment.apps/web serverside-applied\n");
    eventually("the controllers' fields", || {
        let m = managers(&server, "deploy/web");
        (m != sorted(&format!("kubectl/Apply {CONTROLLERS}"))).then_some(m)
    });
    let fields = kubectl(
        &server,
        &[
            "get",
            "deploy/web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[0].fieldsV1.f:spec.f:template.f:spec.f:containers}",
        ],
    )
    .out();
    assert!(
        fields.contains(r#"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}"#)
            || fields.contains(r#"k:{"containerPort":8080,"protocol":"TCP"}"#),
        "{fields}"
    );

    // Another manager changes a field the applier owns: the next apply conflicts, naming it.
    kubectl(
        &server,
        &["patch", "deploy/web", "-p", r#"{"spec":{"replicas":5}}"#],
    )
    .out();
    assert_eq!(
        managers(&server, "deploy/web"),
        sorted(&format!("kubectl/Apply {CONTROLLERS} kubectl-patch/Update"))
    );
    let err = ssa(&web(3, both), &[]).err();
    assert!(
        err.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );
    // Forced, the applier takes the field back.
    ssa(&web(3, both), &["--force-conflicts"]).out();
    let replicas = kubectl(
        &server,
        &["get", "deploy/web", "-o", "jsonpath={.spec.replicas}"],
    )
    .out();
    assert_eq!(replicas, "3");
    assert_eq!(
        managers(&server, "deploy/web"),
        sorted(&format!("kubectl/Apply {CONTROLLERS}"))
    );
    // Scaling writes through the scale subresource, which the next apply meets.
    kubectl(&server, &["scale", "deploy/web", "--replicas=4"]).out();
    assert_eq!(
        managers(&server, "deploy/web"),
        sorted(&format!("kubectl/Apply {CONTROLLERS} kubectl/Update/scale"))
    );
    let err = ssa(&web(3, both), &[]).err();
    assert!(
        err.contains(
            "conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );
    ssa(&web(3, both), &["--force-conflicts"]).out();

    // A field no longer applied goes.
    ssa(&web(3, "    app: web"), &[]).out();
    let labels = kubectl(
        &server,
        &["get", "deploy/web", "-o", "jsonpath={.metadata.labels}"],
    )
    .out();
    assert_eq!(labels, r#"{"app":"web"}"#);

    // From client-side to server-side apply: kubectl moves the ownership, the server takes it,
    // and a key dropped afterwards goes.
    let settings = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n{data}")
    };
    let out = kubectl_stdin(
        &server,
        &["apply", "-f", "-"],
        &settings("  a: \"1\"\n  b: \"2\"\n"),
    )
    .out();
    assert_eq!(out, "configmap/settings created\n");
    assert_eq!(
        managers(&server, "configmap/settings"),
        sorted("kubectl-client-side-apply/Update")
    );
    let out = ssa(&settings("  a: \"1\"\n  b: \"2\"\n"), &[]).out();
    assert_eq!(out, "configmap/settings serverside-applied\n");
    // (kubectl gives the last-applied annotation a manager of its own.)
    assert_eq!(
        managers(&server, "configmap/settings"),
        sorted("kubectl-last-applied/Apply kubectl/Apply")
    );
    ssa(&settings("  a: \"1\"\n"), &[]).out();
    let data = kubectl(
        &server,
        &["get", "configmap/settings", "-o", "jsonpath={.data}"],
    )
    .out();
    assert_eq!(data, r#"{"a":"1"}"#);
    // Client-side apply still works after, from the last-applied configuration the server keeps.
    let out = kubectl_stdin(&server, &["apply", "-f", "-"], &settings("  a: \"3\"\n")).out();
    assert_eq!(out, "configmap/settings configured\n");

    // A load balancer's controller applies a Service's status through its subresource: the
    // address shows, the fields are its own, and applying without them takes them away.
    kubectl_stdin(
        &server,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  type: LoadBalancer\n  selector:\n    app: web\n  ports:\n  - port: 80\n",
    )
    .out();
    let lb = |ingress: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nstatus:\n  loadBalancer:\n{ingress}")
    };
    let apply_status = |manifest: &str| {
        kubectl_stdin(
            &server,
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--field-manager=lb",
                "-f",
                "-",
            ],
            manifest,
        )
        .out()
    };
    apply_status(&lb("    ingress:\n    - ip: 192.0.2.10\n"));
    let shown = kubectl(&server, &["get", "svc", "front", "--no-headers"]).out();
    assert!(shown.contains("192.0.2.10"), "{shown}");
    assert_eq!(
        managers(&server, "svc/front"),
        sorted("kubectl-client-side-apply/Update lb/Apply/status")
    );
    apply_status(&lb("    {}\n"));
    let ingress = kubectl(
        &server,
        &[
            "get",
            "svc",
            "front",
            "-o",
            "jsonpath={.status.loadBalancer}",
        ],
    )
    .out();
    assert_eq!(ingress, "{}");
}
