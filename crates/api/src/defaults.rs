//! The defaults Kubernetes fills into objects on every write, for the kinds whose clients rely
//! on them (pods and pod templates, the workload kinds, Secrets): kubectl and controllers read
//! `strategy`, `restartPolicy`, `imagePullPolicy`, ... and some crash without them.

use serde_json::{json, Map, Value};

use crate::kinds::Kind;
use crate::object::Lookup;

/// Sets `field` of `map` to `value` when absent or null.
fn or_insert(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.into(), value);
        }
        Some(_) => {}
    }
}

/// The object at `field` of `map`, made when absent.
fn object<'a>(map: &'a mut Map<String, Value>, field: &str) -> Option<&'a mut Map<String, Value>> {
    or_insert(map, field, json!({}));
    map.get_mut(field)?.as_object_mut()
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise, as Kubernetes decides.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    or_insert(c, "imagePullPolicy", pull_policy(&image).into());
    or_insert(c, "terminationMessagePath", "/dev/termination-log".into());
    or_insert(c, "terminationMessagePolicy", "File".into());
    if let Some(resources) = object(c, "resources") {
        // Requests default to the limits given.
        if let Some(limits) = resources.get("limits").cloned() {
            if let Some(requests) = object(resources, "requests") {
                for (name, quantity) in limits.as_object().into_iter().flatten() {
                    or_insert(requests, name, quantity.clone());
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            or_insert(port, "protocol", "TCP".into());
        }
    }
    for which in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(which).and_then(Value::as_object_mut) {
            or_insert(probe, "timeoutSeconds", 1.into());
            or_insert(probe, "periodSeconds", 10.into());
            or_insert(probe, "successThreshold", 1.into());
            or_insert(probe, "failureThreshold", 3.into());
            http_get(probe);
        }
    }
    if let Some(lifecycle) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(handler) = lifecycle.get_mut(hook).and_then(Value::as_object_mut) {
                http_get(handler);
            }
        }
    }
}

/// An httpGet handler's path and scheme.
fn http_get(handler: &mut Map<String, Value>) {
    if let Some(http) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        or_insert(http, "path", "/".into());
        or_insert(http, "scheme", "HTTP".into());
    }
}

/// Volumes' file modes (0644) and host path types.
fn volumes(spec: &mut Map<String, Value>) {
    let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) else {
        return;
    };
    for volume in volumes.iter_mut().filter_map(Value::as_object_mut) {
        for source in ["configMap", "secret", "downwardAPI", "projected"] {
            if let Some(s) = volume.get_mut(source).and_then(Value::as_object_mut) {
                or_insert(s, "defaultMode", 0o644.into());
            }
        }
        if let Some(host) = volume.get_mut("hostPath").and_then(Value::as_object_mut) {
            or_insert(host, "type", "".into());
        }
    }
}

/// Defaults of a pod spec (of a pod, or of a template).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    or_insert(spec, "restartPolicy", "Always".into());
    or_insert(spec, "terminationGracePeriodSeconds", 30.into());
    or_insert(spec, "dnsPolicy", "ClusterFirst".into());
    or_insert(spec, "securityContext", json!({}));
    or_insert(spec, "schedulerName", "default-scheduler".into());
    or_insert(spec, "enableServiceLinks", true.into());
    volumes(spec);
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

/// Defaults of a pod template at `spec.template` of `obj`.
fn template(spec: &mut Map<String, Value>) {
    if let Some(template) = object(spec, "template") {
        if let Some(pod) = object(template, "spec") {
            pod_spec(pod);
        }
    }
}

/// A pod's QoS class, from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (mut any, mut guaranteed) = (false, !containers.is_empty());
    for c in &containers {
        let requests = c.lookup("/resources/requests").and_then(Value::as_object);
        let limits = c.lookup("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        let full = |m: Option<&Map<String, Value>>| {
            m.is_some_and(|m| m.contains_key("cpu") && m.contains_key("memory"))
        };
        guaranteed &= full(limits) && requests.is_none_or(|r| Some(r) == limits);
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Fills the defaults of `obj`, an object of `kind`.
pub fn apply(kind: &Kind, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (kind.group, kind.kind) {
        ("", "Secret") => or_insert(map, "type", "Opaque".into()),
        ("", "Pod") => {
            if let Some(spec) = object(map, "spec") {
                pod_spec(spec);
            }
        }
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "replicas", 1.into());
                template(spec);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "replicas", 1.into());
                or_insert(spec, "revisionHistoryLimit", 10.into());
                or_insert(spec, "progressDeadlineSeconds", 600.into());
                if let Some(strategy) = object(spec, "strategy") {
                    or_insert(strategy, "type", "RollingUpdate".into());
                    if strategy.get("type") == Some(&json!("RollingUpdate")) {
                        if let Some(rolling) = object(strategy, "rollingUpdate") {
                            or_insert(rolling, "maxUnavailable", "25%".into());
                            or_insert(rolling, "maxSurge", "25%".into());
                        }
                    }
                }
                template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "replicas", 1.into());
                or_insert(spec, "podManagementPolicy", "OrderedReady".into());
                or_insert(spec, "revisionHistoryLimit", 10.into());
                or_insert(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                or_insert(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "revisionHistoryLimit", 10.into());
                or_insert(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "completions", 1.into());
                or_insert(spec, "parallelism", 1.into());
                or_insert(spec, "backoffLimit", 6.into());
                or_insert(spec, "completionMode", "NonIndexed".into());
                or_insert(spec, "suspend", false.into());
                template(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = object(map, "spec") {
                or_insert(spec, "concurrencyPolicy", "Allow".into());
                or_insert(spec, "suspend", false.into());
                or_insert(spec, "successfulJobsHistoryLimit", 3.into());
                or_insert(spec, "failedJobsHistoryLimit", 1.into());
                if let Some(job) = object(spec, "jobTemplate").and_then(|t| object(t, "spec")) {
                    template(job);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;

    #[test]
    fn pull_policies_follow_the_tag() {
        let cases = [
            ("my-api:v2.1", "IfNotPresent"),
            ("my-api", "Always"),
            ("my-api:latest", "Always"),
            ("registry:5000/team/my-api", "Always"),
            ("registry:5000/team/my-api:v1", "IfNotPresent"),
            ("busybox@sha256:abc", "IfNotPresent"),
        ];
        for (image, want) in cases {
            assert_eq!(pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn the_articles_deployment_gets_kubernetes_defaults() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let mut obj = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {"spec": {"containers": [
            {"name": "server", "image": "my-api:v2.1", "ports": [{"containerPort": 8080}],
             "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"memory": "256Mi"}}}
        ]}}}});
        apply(deploy, &mut obj);
        let spec = &obj["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(
            (
                spec["revisionHistoryLimit"].clone(),
                spec["progressDeadlineSeconds"].clone()
            ),
            (json!(10), json!(600))
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(
            (pod["restartPolicy"].as_str(), pod["dnsPolicy"].as_str()),
            (Some("Always"), Some("ClusterFirst"))
        );
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["resources"]["requests"],
            json!({"memory": "256Mi", "cpu": "500m"}),
            "requests default to limits"
        );
        let again = obj.clone();
        apply(deploy, &mut obj);
        assert_eq!(obj, again, "defaults are idempotent");
        let recreate = &mut json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply(deploy, recreate);
        assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn probes_hooks_and_volumes_get_kubernetes_defaults() {
        let pods = find("", "v1", "pods").unwrap();
        let mut obj = json!({"spec": {
            "containers": [{"name": "c", "image": "x:1",
                "livenessProbe": {"httpGet": {"port": 8080}},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2},
                "lifecycle": {"preStop": {"httpGet": {"port": 80, "path": "/quit"}}}}],
            "volumes": [{"name": "a", "configMap": {"name": "app-config"}},
                        {"name": "b", "secret": {"secretName": "db-creds", "defaultMode": 256}},
                        {"name": "c", "hostPath": {"path": "/data"}},
                        {"name": "d", "emptyDir": {}}]}});
        apply(pods, &mut obj);
        let c = &obj["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 2, "given values stay");
        assert_eq!(
            c["lifecycle"]["preStop"]["httpGet"],
            json!({"port": 80, "path": "/quit", "scheme": "HTTP"})
        );
        let volumes = &obj["spec"]["volumes"];
        assert_eq!(volumes[0]["configMap"]["defaultMode"], 420);
        assert_eq!(volumes[1]["secret"]["defaultMode"], 256);
        assert_eq!(volumes[2]["hostPath"]["type"], "");
        assert_eq!(volumes[3]["emptyDir"], json!({}));
    }

    #[test]
    fn qos_classes() {
        let cases = [
            (json!({"containers": [{"name": "a"}]}), "BestEffort"),
            (
                json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}),
                "Burstable",
            ),
            (
                json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]}),
                "Guaranteed",
            ),
            (
                json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}}]}),
                "Burstable",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(qos_class(&spec), want, "{spec}");
        }
    }
}
