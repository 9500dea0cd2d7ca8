//! Amounts of resources: what a node offers and what pods ask, in the units the scheduler
//! compares (millicores, bytes, counts).

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_api::object::Lookup;
use skiff_api::quantity;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`nvidia.com/gpu`, ...), in whole units.
    pub extended: BTreeMap<String, i64>,
}

/// What the scheduler counts for a pod that asks nothing, so that such pods still spread
/// (Kubernetes' non-zero defaults: 100m CPU, 200Mi memory).
pub const DEFAULT_CPU_MILLI: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

impl Resources {
    /// A resource list (`{"cpu": "2", "memory": "4Gi", "pods": "110", ...}`).
    pub fn from_list(list: Option<&Value>) -> Resources {
        let mut r = Resources::default();
        let Some(list) = list.and_then(Value::as_object) else {
            return r;
        };
        for (name, value) in list {
            let Some(q) = value.as_str().and_then(|s| quantity::parse(s).ok()) else {
                continue;
            };
            let clamp = |v: i128| v.clamp(0, i64::MAX as i128) as i64;
            match name.as_str() {
                "cpu" => r.cpu_milli = clamp(q.milli()),
                "memory" => r.memory = clamp(q.units()),
                "ephemeral-storage" => r.ephemeral_storage = clamp(q.units()),
                "pods" => r.pods = clamp(q.units()),
                other if other.contains('/') || other.starts_with("hugepages-") => {
                    r.extended.insert(other.to_string(), clamp(q.units()));
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (name, v) in &other.extended {
            *self.extended.entry(name.clone()).or_default() += v;
        }
    }

    pub fn subtract(&mut self, other: &Resources) {
        self.cpu_milli -= other.cpu_milli;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (name, v) in &other.extended {
            *self.extended.entry(name.clone()).or_default() -= v;
        }
    }

    fn max_with(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.max(other.cpu_milli);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.extended {
            let e = self.extended.entry(name.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// A pod's effective requests: its containers' summed, or its largest init container's
    /// where that is more, plus its overhead; one pod.
    pub fn of_pod(spec: &Value) -> Resources {
        let requests = |c: &Value| Resources::from_list(c.lookup("/resources/requests"));
        let mut total = Resources::default();
        for c in spec["containers"].as_array().into_iter().flatten() {
            total.add(&requests(c));
        }
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            total.max_with(&requests(c));
        }
        total.add(&Resources::from_list(spec.get("overhead")));
        total.pods = 1;
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_sum_containers_and_take_the_largest_init_container() {
        let spec = json!({
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"resources": {"requests": {"cpu": "250m", "nvidia.com/gpu": "1"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
            "overhead": {"memory": "1Mi"},
        });
        let r = Resources::of_pod(&spec);
        assert_eq!(r.cpu_milli, 2000);
        assert_eq!(r.memory, 65 * 1024 * 1024);
        assert_eq!(r.extended["nvidia.com/gpu"], 1);
        assert_eq!(r.pods, 1);
    }
}
