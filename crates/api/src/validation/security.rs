//! Security contexts of pods and containers, as Kubernetes checks them: user and group ids,
//! sysctls, seccomp and AppArmor profiles, privilege escalation against privileges.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{items, one_of, str_at};
use crate::object::FieldError;

const MAX_ID: i64 = 2_147_483_647;

fn id(obj: &Value, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj.get(key).and_then(Value::as_i64) {
        if !(0..=MAX_ID).contains(&n) {
            errs.push(FieldError::invalid_shown(
                format!("{path}.{key}"),
                &n.to_string(),
                "must be between 0 and 2147483647, inclusive",
            ));
        }
    }
}

/// A seccomp or AppArmor profile: a known type, a local profile exactly for `Localhost`.
fn profile(sc: &Value, key: &str, what: &str, path: &str, errs: &mut Vec<FieldError>) {
    let Some(profile) = sc.get(key).filter(|p| !p.is_null()) else {
        return;
    };
    let path = format!("{path}.{key}");
    let ty = str_at(profile, "type");
    const TYPES: [&str; 3] = ["Localhost", "RuntimeDefault", "Unconfined"];
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(
            format!("{path}.type"),
            ty,
            &TYPES,
        ));
    }
    let local = str_at(profile, "localhostProfile");
    if ty == "Localhost" && local.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.localhostProfile"),
            &format!("must be set when {what} type is Localhost"),
        ));
    } else if ty != "Localhost" && !local.is_empty() {
        errs.push(FieldError::invalid(
            format!("{path}.localhostProfile"),
            local,
            &format!("can only be set when {what} type is Localhost"),
        ));
    }
}

fn profiles(sc: &Value, path: &str, errs: &mut Vec<FieldError>) {
    profile(sc, "seccompProfile", "seccomp", path, errs);
    profile(sc, "appArmorProfile", "AppArmor", path, errs);
}

/// Whether `name` is a sysctl name (dot or slash separated segments of lower-case letters,
/// digits, `-` and `_`, each starting and ending with a letter or digit).
fn sysctl_name(name: &str) -> bool {
    name.len() <= 253
        && name.split(['.', '/']).all(|segment| {
            let b = segment.as_bytes();
            let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            b.first().is_some_and(edge)
                && b.last().is_some_and(edge)
                && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
        })
}

/// `spec.securityContext` of a pod spec at `path`.
pub(super) fn pod(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(sc) = spec.get("securityContext").filter(|s| !s.is_null()) else {
        return;
    };
    let path = format!("{path}.securityContext");
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        id(sc, key, &path, errs);
    }
    for (i, group) in items(sc, "supplementalGroups") {
        if let Some(n) = group.as_i64().filter(|n| !(0..=MAX_ID).contains(n)) {
            errs.push(FieldError::invalid_shown(
                format!("{path}.supplementalGroups[{i}]"),
                &n.to_string(),
                "must be between 0 and 2147483647, inclusive",
            ));
        }
    }
    let policies = ["OnRootMismatch", "Always"];
    one_of(sc, "fsGroupChangePolicy", &path, &policies, errs);
    let mut seen = BTreeSet::new();
    for (i, sysctl) in items(sc, "sysctls") {
        let at = format!("{path}.sysctls[{i}].name");
        let name = str_at(sysctl, "name");
        if name.is_empty() {
            errs.push(FieldError::required(at, ""));
        } else if !sysctl_name(name) {
            errs.push(FieldError::invalid(
                at,
                name,
                "must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$",
            ));
        } else if !seen.insert(name) {
            errs.push(FieldError::duplicate(at, name));
        }
    }
    profiles(sc, &path, errs);
}

/// A container's `securityContext` at `path`.
pub(super) fn container(container: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(sc) = container.get("securityContext").filter(|s| !s.is_null()) else {
        return;
    };
    let path = format!("{path}.securityContext");
    for key in ["runAsUser", "runAsGroup"] {
        id(sc, key, &path, errs);
    }
    one_of(sc, "procMount", &path, &["Default", "Unmasked"], errs);
    if sc.get("allowPrivilegeEscalation") == Some(&Value::Bool(false)) {
        let shown = sc.to_string();
        if sc.get("privileged") == Some(&Value::Bool(true)) {
            errs.push(FieldError::invalid_shown(
                &path,
                &shown,
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let sys_admin = items(sc.get("capabilities").unwrap_or(&Value::Null), "add")
            .any(|(_, c)| matches!(c.as_str(), Some("SYS_ADMIN" | "CAP_SYS_ADMIN")));
        if sys_admin {
            errs.push(FieldError::invalid_shown(
                &path,
                &shown,
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
    profiles(sc, &path, errs);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testing::check_errors;

    fn check(pod_sc: serde_json::Value, container_sc: serde_json::Value, want: &[&str]) {
        let spec = json!({"securityContext": pod_sc,
            "containers": [{"name": "c", "image": "x", "securityContext": container_sc}]});
        let errs = super::super::pod_spec(&spec, "spec", &["Always"]);
        check_errors(&spec, &errs, want);
    }

    #[test]
    fn security_contexts() {
        check(
            json!({"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000],
                "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}],
                "seccompProfile": {"type": "RuntimeDefault"}}),
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}),
            &[],
        );
        check(
            json!({"runAsUser": -1, "supplementalGroups": [1, 3000000000i64], "fsGroupChangePolicy": "Never",
                "sysctls": [{"name": "kernel.shm_rmid_forced"}, {"name": "Kernel..x"}, {"name": "kernel.shm_rmid_forced"}],
                "seccompProfile": {"type": "Localhost"}}),
            json!({"runAsGroup": -5, "procMount": "Masked", "privileged": true, "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["SYS_ADMIN"]},
                "appArmorProfile": {"type": "RuntimeDefault", "localhostProfile": "x"}}),
            &[
                "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.supplementalGroups[1]: Invalid value: 3000000000: must be between",
                "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Never\"",
                "spec.securityContext.sysctls[1].name: Invalid value: \"Kernel..x\": must have at most 253 characters",
                "spec.securityContext.sysctls[2].name: Duplicate value: \"kernel.shm_rmid_forced\"",
                "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost",
                "spec.containers[0].securityContext.runAsGroup: Invalid value: -5: must be between 0 and 2147483647, inclusive",
                "spec.containers[0].securityContext.procMount: Unsupported value: \"Masked\": supported values: \"Default\", \"Unmasked\"",
                "spec.containers[0].securityContext: Invalid value: {",
                "spec.containers[0].securityContext: Invalid value: {",
                "spec.containers[0].securityContext.appArmorProfile.localhostProfile: Invalid value: \"x\": can only be set when AppArmor type is Localhost",
            ],
        );
    }
}
