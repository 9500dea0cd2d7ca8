//! What a request URL under `/api` or `/apis` names: a group-version, or a resource with optional
//! namespace, name and subresource.

use skiff_api::kinds::{self, Kind};

#[derive(Debug, PartialEq, Eq)]
pub enum ApiPath {
    /// `/api/v1`, `/apis/apps/v1`: the resource list.
    GroupVersion {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
}

#[derive(Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Why a path names nothing served.
#[derive(Debug, PartialEq, Eq)]
pub struct Unknown;

/// Parses the segments after `/api` (group "") or `/apis/<group>`.
pub fn parse(group: &str, segments: &[&str]) -> Result<ApiPath, Unknown> {
    let (version, rest) = segments.split_first().ok_or(Unknown)?;
    if rest.is_empty() {
        return Ok(ApiPath::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        });
    }
    let find = |plural: &str| kinds::find(group, version, plural).ok_or(Unknown);
    // namespaces/<ns>/<plural>... is a namespaced resource when <plural> is a namespaced kind;
    // otherwise namespaces/<name>/<subresource> is the Namespace object's subresource.
    if let ["namespaces", ns, plural, tail @ ..] = rest {
        if let Ok(kind) = find(plural) {
            if kind.namespaced && tail.len() <= 2 {
                return Ok(ApiPath::Resource(ResourcePath {
                    kind,
                    namespace: Some(ns.to_string()),
                    name: tail.first().map(|s| s.to_string()),
                    subresource: tail.get(1).map(|s| s.to_string()),
                }));
            }
        }
    }
    let (plural, tail) = rest.split_first().ok_or(Unknown)?;
    let kind = find(plural)?;
    if tail.len() > 2 {
        return Err(Unknown);
    }
    Ok(ApiPath::Resource(ResourcePath {
        kind,
        namespace: None,
        name: tail.first().map(|s| s.to_string()),
        subresource: tail.get(1).map(|s| s.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(group: &str, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match parse(group, &segments) {
            Ok(ApiPath::GroupVersion { group, version }) => format!("gv {group}/{version}"),
            Ok(ApiPath::Resource(r)) => format!(
                "{} ns={} name={} sub={}",
                r.kind.plural,
                r.namespace.as_deref().unwrap_or("-"),
                r.name.as_deref().unwrap_or("-"),
                r.subresource.as_deref().unwrap_or("-")
            ),
            Err(Unknown) => "unknown".into(),
        }
    }

    #[test]
    fn paths() {
        let cases = [
            ("", "v1", "gv /v1"),
            ("", "v1/namespaces", "namespaces ns=- name=- sub=-"),
            (
                "",
                "v1/namespaces/default",
                "namespaces ns=- name=default sub=-",
            ),
            (
                "",
                "v1/namespaces/default/status",
                "namespaces ns=- name=default sub=status",
            ),
            (
                "",
                "v1/namespaces/default/configmaps",
                "configmaps ns=default name=- sub=-",
            ),
            (
                "",
                "v1/namespaces/default/configmaps/app",
                "configmaps ns=default name=app sub=-",
            ),
            ("", "v1/configmaps", "configmaps ns=- name=- sub=-"),
            ("", "v1/namespaces/default/configmaps/app/x/y", "unknown"),
            ("", "v1/widgets", "unknown"),
            ("", "v2/configmaps", "unknown"),
            ("apps", "v1/configmaps", "unknown"),
            ("", "", "unknown"),
        ];
        for (group, path, want) in cases {
            assert_eq!(show(group, path), want, "{group} {path}");
        }
    }
}
