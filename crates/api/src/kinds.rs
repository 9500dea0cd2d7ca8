//! The table of kinds the API serves: what generic code needs to route, store and describe them.

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// API group; "" is the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs (`configmaps`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
}

impl Kind {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The store prefix holding every object of this kind; a namespaced kind adds `ns/`.
    pub fn store_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn store_key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{}{ns}/{name}", self.store_prefix()),
            None => format!("{}{name}", self.store_prefix()),
        }
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Kind {
    Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories: &[],
    }
}

/// Every kind served. FIXME(issue 3): the rest of the list joins as each gets validation.
pub static KINDS: &[Kind] = &[
    core("Namespace", "namespaces", "namespace", false, &["ns"]),
    core("ConfigMap", "configmaps", "configmap", true, &["cm"]),
    core("Secret", "secrets", "secret", true, &[]),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
    ),
];

/// The kind served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for k in KINDS {
            assert_eq!(k.plural, k.plural.to_lowercase(), "{}", k.kind);
            assert_eq!(k.singular, k.kind.to_lowercase(), "{}", k.kind);
            assert_eq!(
                find(k.group, k.version, k.plural),
                Some(k),
                "{} is found once",
                k.kind
            );
        }
        let mut names: Vec<&str> = KINDS
            .iter()
            .flat_map(|k| k.short_names.iter().copied())
            .collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before, "short names are unique");
    }

    #[test]
    fn keys_and_versions() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(cm.api_version(), "v1");
        assert_eq!(cm.list_kind(), "ConfigMapList");
        assert_eq!(
            cm.store_key(Some("default"), "app-config"),
            "/registry/core/configmaps/default/app-config"
        );
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.store_key(None, "default"),
            "/registry/core/namespaces/default"
        );
        assert_eq!(find("apps", "v1", "configmaps"), None);
    }
}
