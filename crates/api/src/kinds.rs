//! The table of kinds the API serves: what generic code needs to route, store and describe them.

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    /// API group; "" is the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs (`configmaps`).
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served besides the object itself (`status`, `scale`, ...).
    pub subresources: &'static [&'static str],
    /// Fields usable in field selectors besides `metadata.name` and `metadata.namespace`, as
    /// dotted paths into the object.
    pub selectable_fields: &'static [&'static str],
    /// How objects of this kind live: stored, or answered on create and never kept.
    pub storage: Storage,
    /// For a kind also served in another group-version: the (group, plural) whose store prefix
    /// holds its objects, in that version (see `conversion`).
    pub stored_as: Option<(&'static str, &'static str)>,
}

/// Where a kind's objects live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// In the store, under the group's and plural's prefix.
    Stored,
    /// Answered on create and never kept (access reviews).
    Virtual,
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

    /// The singular resource name (`configmap`), as discovery gives it.
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `status` is its own subresource: the main endpoint then ignores status changes, and
    /// `metadata.generation` counts changes to everything else.
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// The (group, plural) whose store prefix holds this kind's objects.
    fn stored_in(&self) -> (&'static str, &'static str) {
        self.stored_as.unwrap_or((self.group, self.plural))
    }

    /// The other kinds served from this kind's stored objects (another version of them:
    /// events.k8s.io/v1 Events of core/v1's, and the other way round).
    pub fn stored_with(&self) -> impl Iterator<Item = &'static Kind> + '_ {
        all().iter().filter(move |k| {
            k.stored_in() == self.stored_in()
                && (k.group, k.version, k.plural) != (self.group, self.version, self.plural)
        })
    }

    /// The store prefix holding every object of this kind; a namespaced kind adds `ns/`.
    pub fn store_prefix(&self) -> String {
        let (group, plural) = self.stored_in();
        let group = if group.is_empty() { "core" } else { group };
        format!("/registry/{group}/{plural}/")
    }

    /// The store prefix of one namespace's objects, or of all objects when `namespace` is `None`.
    pub fn store_prefix_in(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.store_prefix()),
            _ => self.store_prefix(),
        }
    }

    /// The store key of one object.
    pub fn store_key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{}{ns}/{name}", self.store_prefix()),
            None => format!("{}{name}", self.store_prefix()),
        }
    }

    /// Whether the garbage collector follows this kind's objects (their ownerReferences, and
    /// the `orphan` and `foregroundDeletion` finalizers a DELETE may give them): every stored
    /// kind but Namespaces, which their own lifecycle empties, and Events, which expire and
    /// which no recorder gives owners.
    pub fn collected(&self) -> bool {
        self.storage == Storage::Stored && !matches!(self.kind, "Namespace" | "Event")
    }

    /// The verbs served on the resource itself, in discovery's order.
    pub fn verbs(&self) -> &'static [&'static str] {
        match self.storage {
            Storage::Virtual => &["create"],
            Storage::Stored => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        }
    }
}

/// The kinds of one group-version, written compactly: each entry's group and version come from
/// the table they are in.
struct Entry {
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    selectable_fields: &'static [&'static str],
    stored_as: Option<(&'static str, &'static str)>,
}

const NAMESPACED: bool = true;
const CLUSTER: bool = false;

const fn entry(kind: &'static str, plural: &'static str, namespaced: bool) -> Entry {
    Entry {
        kind,
        plural,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        selectable_fields: &[],
        stored_as: None,
    }
}

impl Entry {
    const fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }
    /// In the `all` category (`kubectl get all`).
    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn sub(mut self, subresources: &'static [&'static str]) -> Self {
        self.subresources = subresources;
        self
    }
    const fn fields(mut self, fields: &'static [&'static str]) -> Self {
        self.selectable_fields = fields;
        self
    }
    /// Objects kept in another group-version's prefix, converted on the way in and out.
    const fn stored_as(mut self, group: &'static str, plural: &'static str) -> Self {
        self.stored_as = Some((group, plural));
        self
    }
}

const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["status", "scale"];

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

static GROUPS: &[(&str, &str, &[Entry])] = &[
    (
        "",
        "v1",
        &[
            entry("Namespace", "namespaces", CLUSTER)
                .short(&["ns"])
                .sub(STATUS)
                .fields(&["status.phase"]),
            entry("Node", "nodes", CLUSTER)
                .short(&["no"])
                .sub(STATUS)
                .fields(&["spec.unschedulable"]),
            entry("Pod", "pods", NAMESPACED)
                .short(&["po"])
                .all()
                .sub(&["status", "binding", "eviction", "log"])
                .fields(POD_FIELDS),
            entry("Service", "services", NAMESPACED)
                .short(&["svc"])
                .all()
                .sub(STATUS),
            entry("Endpoints", "endpoints", NAMESPACED).short(&["ep"]),
            entry("ConfigMap", "configmaps", NAMESPACED).short(&["cm"]),
            entry("Secret", "secrets", NAMESPACED).fields(&["type"]),
            entry("Event", "events", NAMESPACED)
                .short(&["ev"])
                .fields(EVENT_FIELDS),
            entry("ServiceAccount", "serviceaccounts", NAMESPACED).short(&["sa"]),
            entry("PersistentVolume", "persistentvolumes", CLUSTER)
                .short(&["pv"])
                .sub(STATUS),
            entry(
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                NAMESPACED,
            )
            .short(&["pvc"])
            .sub(STATUS),
            entry(
                "ReplicationController",
                "replicationcontrollers",
                NAMESPACED,
            )
            .short(&["rc"])
            .all()
            .sub(STATUS_SCALE)
            .fields(&["status.replicas"]),
        ],
    ),
    (
        "apps",
        "v1",
        &[
            entry("Deployment", "deployments", NAMESPACED)
                .short(&["deploy"])
                .all()
                .sub(STATUS_SCALE),
            entry("ReplicaSet", "replicasets", NAMESPACED)
                .short(&["rs"])
                .all()
                .sub(STATUS_SCALE)
                .fields(&["status.replicas"]),
            entry("StatefulSet", "statefulsets", NAMESPACED)
                .short(&["sts"])
                .all()
                .sub(STATUS_SCALE),
            entry("DaemonSet", "daemonsets", NAMESPACED)
                .short(&["ds"])
                .all()
                .sub(STATUS),
            entry("ControllerRevision", "controllerrevisions", NAMESPACED),
        ],
    ),
    (
        "batch",
        "v1",
        &[
            entry("Job", "jobs", NAMESPACED)
                .all()
                .sub(STATUS)
                .fields(&["status.successful"]),
            entry("CronJob", "cronjobs", NAMESPACED)
                .short(&["cj"])
                .all()
                .sub(STATUS),
        ],
    ),
    (
        "coordination.k8s.io",
        "v1",
        &[entry("Lease", "leases", NAMESPACED)],
    ),
    (
        "discovery.k8s.io",
        "v1",
        &[entry("EndpointSlice", "endpointslices", NAMESPACED)],
    ),
    (
        "events.k8s.io",
        "v1",
        &[entry("Event", "events", NAMESPACED).stored_as("", "events")],
    ),
    (
        "policy",
        "v1",
        &[
            entry("PodDisruptionBudget", "poddisruptionbudgets", NAMESPACED)
                .short(&["pdb"])
                .sub(STATUS),
        ],
    ),
    (
        "autoscaling",
        "v2",
        &[entry(
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            NAMESPACED,
        )
        .short(&["hpa"])
        .all()
        .sub(STATUS)],
    ),
    (
        "autoscaling",
        "v1",
        &[entry(
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            NAMESPACED,
        )
        .all()
        .sub(STATUS)
        .stored_as("autoscaling", "horizontalpodautoscalers")],
    ),
    (
        "networking.k8s.io",
        "v1",
        &[
            entry("Ingress", "ingresses", NAMESPACED)
                .short(&["ing"])
                .sub(STATUS),
            entry("IngressClass", "ingressclasses", CLUSTER),
            entry("NetworkPolicy", "networkpolicies", NAMESPACED).short(&["netpol"]),
        ],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        &[
            entry("Role", "roles", NAMESPACED),
            entry("RoleBinding", "rolebindings", NAMESPACED),
            entry("ClusterRole", "clusterroles", CLUSTER),
            entry("ClusterRoleBinding", "clusterrolebindings", CLUSTER),
        ],
    ),
    (
        "storage.k8s.io",
        "v1",
        &[entry("StorageClass", "storageclasses", CLUSTER).short(&["sc"])],
    ),
    (
        "scheduling.k8s.io",
        "v1",
        &[entry("PriorityClass", "priorityclasses", CLUSTER).short(&["pc"])],
    ),
    (
        "certificates.k8s.io",
        "v1",
        &[entry(
            "CertificateSigningRequest",
            "certificatesigningrequests",
            CLUSTER,
        )
        .short(&["csr"])
        .sub(&["status", "approval"])],
    ),
];

/// Kinds answered on create and never stored.
static VIRTUAL: &[(&str, &str, &[Entry])] = &[(
    "authorization.k8s.io",
    "v1",
    &[
        entry(
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            CLUSTER,
        ),
        entry("SelfSubjectRulesReview", "selfsubjectrulesreviews", CLUSTER),
    ],
)];

fn build() -> Vec<Kind> {
    let tables = [(GROUPS, Storage::Stored), (VIRTUAL, Storage::Virtual)];
    let mut kinds = Vec::new();
    for (groups, storage) in tables {
        for (group, version, entries) in groups.iter() {
            for e in entries.iter() {
                kinds.push(Kind {
                    group,
                    version,
                    kind: e.kind,
                    plural: e.plural,
                    namespaced: e.namespaced,
                    short_names: e.short_names,
                    categories: e.categories,
                    subresources: e.subresources,
                    selectable_fields: e.selectable_fields,
                    stored_as: e.stored_as,
                    storage,
                });
            }
        }
    }
    kinds
}

/// Every kind served, in discovery order.
pub fn all() -> &'static [Kind] {
    static KINDS: std::sync::OnceLock<Vec<Kind>> = std::sync::OnceLock::new();
    KINDS.get_or_init(build)
}

/// The kind served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    all()
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// The kind an ownerReference names by `apiVersion` and `kind`: that group-version's, or
/// another served version of the group's (a reference written for an older version).
pub fn owner(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let of_group = || {
        all()
            .iter()
            .filter(move |k| k.group == group && k.kind == kind)
    };
    of_group()
        .find(|k| k.version == version)
        .or_else(|| of_group().find(|k| k.stored_as.is_none()))
}

/// The group-versions served, in discovery order, each with its kinds.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in all() {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for k in all() {
            assert_eq!(k.plural, k.plural.to_lowercase(), "{}", k.kind);
            assert_eq!(
                find(k.group, k.version, k.plural),
                Some(k),
                "{} is found once",
                k.kind
            );
        }
        let mut names: Vec<&str> = all()
            .iter()
            .flat_map(|k| k.short_names.iter().copied())
            .collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before, "short names are unique");
    }

    #[test]
    fn owners_by_api_version_and_kind() {
        let rs = owner("apps/v1", "ReplicaSet").unwrap();
        assert_eq!((rs.group, rs.plural), ("apps", "replicasets"));
        assert_eq!(owner("v1", "Pod").unwrap().plural, "pods");
        // An older version of a served group finds the served one, not a copy served elsewhere.
        assert_eq!(
            owner("autoscaling/v2beta2", "HorizontalPodAutoscaler")
                .unwrap()
                .version,
            "v2"
        );
        assert_eq!(
            owner("autoscaling/v1", "HorizontalPodAutoscaler")
                .unwrap()
                .version,
            "v1"
        );
        assert!(owner("example.com/v1", "Widget").is_none());
        assert!(owner("apps/v1", "Pod").is_none());
        assert!(rs.collected());
        assert!(!owner("v1", "Namespace").unwrap().collected());
        assert!(!owner("v1", "Event").unwrap().collected());
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
