//! Discovery documents built from the kinds table: `/version`, `/api`, `/apis` and each
//! group-version's resource list.

use serde_json::{json, Value};
use skiff_api::kinds::{self, Kind};

/// The Kubernetes minor version served; kubectl's dispatcher picks `kubectl.1.<minor>` from it.
pub const KUBERNETES_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+skiff-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// The architecture as Go (and so every Kubernetes client) spells it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`: the core group's versions.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `/apis`: every named group with its versions.
pub fn api_groups() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (group, version) in kinds::group_versions() {
        if group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => groups.push((group, vec![version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
            json!({
                "name": name,
                "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
                "preferredVersion": gv(versions[0]),
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The resource list of one group-version, or `None` when it is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = kinds::all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for sub in k.subresources {
            resources.push(subresource(k, sub));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The (group, version, kind) a subresource answers with, and its verbs.
fn subresource_kind(
    k: &Kind,
    sub: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        "binding" => ("", "v1", "Binding", &["create"]),
        "eviction" => ("policy", "v1", "Eviction", &["create"]),
        "log" => ("", "v1", "Pod", &["get"]),
        _ => (k.group, k.version, k.kind, &["get", "patch", "update"]),
    }
}

/// The media type of aggregated discovery, which kubectl asks for first.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery (v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// Aggregated discovery: every resource of the core group (`core`) or of the named groups, in
/// one document.
pub fn aggregated(core: bool) -> Value {
    let mut groups: Vec<(&str, Vec<Value>)> = Vec::new();
    for (group, version) in kinds::group_versions() {
        if group.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = kinds::all()
            .iter()
            .filter(|k| k.group == group && k.version == version)
            .map(|k| {
                let subresources: Vec<Value> = k
                    .subresources
                    .iter()
                    .map(|sub| {
                        let (g, v, kind, verbs) = subresource_kind(k, sub);
                        json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs})
                    })
                    .collect();
                json!({
                    "resource": k.plural,
                    "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                    "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": k.singular(),
                    "verbs": k.verbs(),
                    "shortNames": k.short_names,
                    "categories": k.categories,
                    "subresources": subresources,
                })
            })
            .collect();
        let entry = json!({"version": version, "resources": resources, "freshness": "Current"});
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(entry),
            None => groups.push((group, vec![entry])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| json!({"metadata": {"name": name}, "versions": versions}))
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn subresource(k: &Kind, sub: &str) -> Value {
    let (group, version, kind, verbs) = subresource_kind(k, sub);
    let mut r = json!({
        "name": format!("{}/{sub}", k.plural),
        "singularName": "",
        "namespaced": k.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if group != k.group || version != k.version {
        r["group"] = json!(group);
        r["version"] = json!(version);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list_has_kinds_short_names_and_subresources() {
        let list = resource_list("", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        let find = |name: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} is listed"))
        };
        let pods = find("pods");
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
        let eviction = find("pods/eviction");
        assert_eq!(
            (&eviction["group"], &eviction["kind"], &eviction["verbs"]),
            (&json!("policy"), &json!("Eviction"), &json!(["create"]))
        );
        assert_eq!(find("pods/status")["kind"], "Pod");
        assert!(resource_list("apps", "v2").is_none());
    }

    #[test]
    fn aggregated_discovery_has_every_kind_in_its_group() {
        let core = aggregated(true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let named = aggregated(false);
        let apps = named["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        let count: usize = named["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["versions"].as_array().unwrap())
            .map(|v| v["resources"].as_array().unwrap().len())
            .sum();
        let want = kinds::all().iter().filter(|k| !k.group.is_empty()).count();
        assert_eq!(count, want);
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }

    #[test]
    fn groups_list_each_named_group_once() {
        let groups = api_groups();
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"authorization.k8s.io"));
        assert!(!names.contains(&""));
        let mut deduped = names.clone();
        deduped.dedup();
        assert_eq!(names, deduped);
        assert_eq!(version()["minor"], KUBERNETES_MINOR);
    }
}
