//! The specs of the workload and scheduling kinds beyond their pod templates, as Kubernetes
//! checks them: Deployments' strategies and timings, StatefulSets' and DaemonSets' update
//! strategies, Jobs' counts, CronJobs' schedules and policies, HorizontalPodAutoscalers'
//! bounds, PodDisruptionBudgets, PriorityClasses.

use serde_json::Value;

use super::{nonnegative, one_of, pod_spec, str_at};
use crate::object::FieldError;
use crate::object::Lookup;

const NONNEGATIVE: &str = "must be greater than or equal to 0";

fn spec(obj: &Value) -> &Value {
    obj.get("spec").unwrap_or(&Value::Null)
}

/// An int-or-percent field (`maxSurge`, `maxUnavailable`): its value as an integer or a
/// percentage, when it is a valid one.
enum Amount {
    Count(i64),
    Percent(i64),
}

fn amount(v: &Value, path: &str, errs: &mut Vec<FieldError>) -> Option<Amount> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(n) if n >= 0 => Some(Amount::Count(n)),
            _ => {
                errs.push(FieldError::invalid_shown(path, &n.to_string(), NONNEGATIVE));
                None
            }
        },
        Value::String(s) => match s.strip_suffix('%').map(str::parse::<i64>) {
            Some(Ok(p)) if p >= 0 => Some(Amount::Percent(p)),
            _ => {
                errs.push(FieldError::invalid(path, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        _ => None,
    }
}

fn is_zero(a: &Option<Amount>) -> bool {
    matches!(a, Some(Amount::Count(0) | Amount::Percent(0)))
}

/// A Deployment's strategy, history limit and deadlines.
pub(super) fn deployment(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec(obj);
    for field in ["minReadySeconds", "revisionHistoryLimit"] {
        nonnegative(spec, field, "spec", errs);
    }
    let min_ready = spec
        .get("minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(deadline) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64) {
        if deadline <= min_ready {
            errs.push(FieldError::invalid_shown(
                "spec.progressDeadlineSeconds",
                &deadline.to_string(),
                "must be greater than minReadySeconds",
            ));
        }
    }
    let Some(strategy) = spec.get("strategy").filter(|s| !s.is_null()) else {
        return;
    };
    let ty = str_at(strategy, "type");
    const TYPES: [&str; 2] = ["Recreate", "RollingUpdate"];
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.strategy.type", ty, &TYPES));
    }
    let Some(rolling) = strategy.get("rollingUpdate").filter(|r| !r.is_null()) else {
        return;
    };
    if ty == "Recreate" {
        errs.push(FieldError::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
        return;
    }
    let at = "spec.strategy.rollingUpdate";
    let surge = rolling
        .get("maxSurge")
        .and_then(|v| amount(v, &format!("{at}.maxSurge"), errs));
    let unavailable = rolling
        .get("maxUnavailable")
        .and_then(|v| amount(v, &format!("{at}.maxUnavailable"), errs));
    if let Some(Amount::Percent(p)) = unavailable {
        if p > 100 {
            errs.push(FieldError::invalid(
                format!("{at}.maxUnavailable"),
                &format!("{p}%"),
                "must not be greater than 100%",
            ));
        }
    }
    if is_zero(&surge) && is_zero(&unavailable) {
        errs.push(FieldError::invalid_shown(
            format!("{at}.maxUnavailable"),
            "0",
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// A StatefulSet's or DaemonSet's update strategy (and a StatefulSet's pod management).
pub(super) fn update_strategy(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec(obj);
    nonnegative(spec, "minReadySeconds", "spec", errs);
    let strategy = spec.get("updateStrategy").unwrap_or(&Value::Null);
    let types = ["OnDelete", "RollingUpdate"];
    one_of(strategy, "type", "spec.updateStrategy", &types, errs);
    let policies = ["OrderedReady", "Parallel"];
    one_of(spec, "podManagementPolicy", "spec", &policies, errs);
}

/// A Job's counts and deadlines (its template is checked as a pod spec).
pub(super) fn job_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(spec, field, path, errs);
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            errs.push(FieldError::invalid_shown(
                format!("{path}.activeDeadlineSeconds"),
                &d.to_string(),
                "must be greater than 0",
            ));
        }
    }
    one_of(
        spec,
        "completionMode",
        path,
        &["NonIndexed", "Indexed"],
        errs,
    );
}

const SCHEDULE_MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// A CronJob's schedule (five fields or a macro, after an optional `TZ=`), policy, limits and
/// job template.
pub(super) fn cron_job(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec(obj);
    let schedule = str_at(spec, "schedule");
    let fields: Vec<&str> = schedule
        .split_whitespace()
        .skip_while(|f| f.starts_with("TZ=") || f.starts_with("CRON_TZ="))
        .collect();
    if schedule.trim().is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else if let Some(first) = fields.first().filter(|f| f.starts_with('@')) {
        let every = *first == "@every" && fields.len() == 2;
        if !every && (fields.len() != 1 || !SCHEDULE_MACROS.contains(first)) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                schedule,
                &format!("unrecognized descriptor: {first}"),
            ));
        }
    } else if fields.len() != 5 {
        errs.push(FieldError::invalid(
            "spec.schedule",
            schedule,
            &format!(
                "expected exactly 5 fields, found {}: {schedule}",
                fields.len()
            ),
        ));
    }
    let policies = ["Allow", "Forbid", "Replace"];
    one_of(spec, "concurrencyPolicy", "spec", &policies, errs);
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(spec, field, "spec", errs);
    }
    let job = spec.lookup("/jobTemplate/spec").unwrap_or(&Value::Null);
    job_spec(job, "spec.jobTemplate.spec", errs);
    let template = job.lookup("/template/spec").unwrap_or(&Value::Null);
    errs.extend(pod_spec(
        template,
        "spec.jobTemplate.spec.template.spec",
        &["OnFailure", "Never"],
    ));
}

/// A HorizontalPodAutoscaler's bounds and target.
pub(super) fn autoscaler(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec(obj);
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    if min < 1 {
        errs.push(FieldError::invalid_shown(
            "spec.minReplicas",
            &min.to_string(),
            "must be greater than or equal to 1",
        ));
    }
    if max < 1 {
        errs.push(FieldError::invalid_shown(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than 0",
        ));
    } else if max < min {
        errs.push(FieldError::invalid_shown(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let target = spec.get("scaleTargetRef").unwrap_or(&Value::Null);
    for field in ["kind", "name"] {
        if str_at(target, field).is_empty() {
            errs.push(FieldError::required(
                format!("spec.scaleTargetRef.{field}"),
                "",
            ));
        }
    }
}

/// A PodDisruptionBudget says one of minAvailable and maxUnavailable.
pub(super) fn disruption_budget(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec(obj);
    let given = |f: &str| spec.get(f).is_some_and(|v| !v.is_null());
    if given("minAvailable") && given("maxUnavailable") {
        errs.push(FieldError::invalid_shown(
            "spec",
            &spec.to_string(),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for field in ["minAvailable", "maxUnavailable"] {
        if let Some(v) = spec.get(field) {
            let path = format!("spec.{field}");
            if let Some(Amount::Percent(p)) = amount(v, &path, errs) {
                if p > 100 {
                    errs.push(FieldError::invalid(
                        path,
                        &format!("{p}%"),
                        "must not be greater than 100%",
                    ));
                }
            }
        }
    }
}

/// The highest priority a PriorityClass outside the `system-` ones may have.
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

pub(super) fn priority_class(obj: &Value, errs: &mut Vec<FieldError>) {
    let name = crate::object::name(obj);
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if !name.starts_with("system-") && value > HIGHEST_USER_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            &format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        ));
    }
    one_of(
        obj,
        "preemptionPolicy",
        "",
        &["Never", "PreemptLowerPriority"],
        errs,
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::kinds::find;
    use crate::testing::check_errors;

    fn check(group: &str, version: &str, plural: &str, obj: serde_json::Value, want: &[&str]) {
        let kind = find(group, version, plural).unwrap();
        let errs = super::super::validate(kind, &obj);
        check_errors(&obj, &errs, want);
    }

    fn deployment(strategy: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        let mut d = json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            "strategy": strategy}});
        for (k, v) in extra.as_object().unwrap() {
            d["spec"][k] = v.clone();
        }
        d
    }

    #[test]
    fn deployment_strategies_and_deadlines() {
        let check = |d, want: &[&str]| check("apps", "v1", "deployments", d, want);
        let rolling = |surge: serde_json::Value, unavailable: serde_json::Value| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
        check(
            deployment(
                rolling(json!("25%"), json!("25%")),
                json!({"progressDeadlineSeconds": 600}),
            ),
            &[],
        );
        check(deployment(json!({"type": "Recreate"}), json!({})), &[]);
        check(
            deployment(json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}), json!({})),
            &["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"],
        );
        check(
            deployment(json!({"type": "Sideways"}), json!({})),
            &["spec.strategy.type: Unsupported value: \"Sideways\": supported values: \"Recreate\", \"RollingUpdate\""],
        );
        check(
            deployment(rolling(json!(0), json!("0%")), json!({})),
            &["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"],
        );
        check(
            deployment(rolling(json!("lots"), json!("150%")), json!({})),
            &[
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"lots\": a valid percent string",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
            ],
        );
        check(
            deployment(rolling(json!(1), json!(0)), json!({"minReadySeconds": 10, "progressDeadlineSeconds": 10, "revisionHistoryLimit": -1})),
            &[
                "spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds",
                "spec.revisionHistoryLimit: Invalid value: \"-1\": must be greater than or equal to 0",
            ],
        );
    }

    #[test]
    fn jobs_cron_jobs_autoscalers_budgets_and_priorities() {
        let job = |spec: serde_json::Value| {
            let mut j = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}});
            for (k, v) in spec.as_object().unwrap() {
                j["spec"][k] = v.clone();
            }
            j
        };
        check(
            "batch",
            "v1",
            "jobs",
            job(json!({"parallelism": 2, "completions": 4})),
            &[],
        );
        check(
            "batch",
            "v1",
            "jobs",
            job(
                json!({"parallelism": -1, "activeDeadlineSeconds": 0, "completionMode": "Sometimes"}),
            ),
            &[
                "spec.parallelism: Invalid value: \"-1\"",
                "spec.activeDeadlineSeconds: Invalid value: 0: must be greater than 0",
                "spec.completionMode: Unsupported value: \"Sometimes\"",
            ],
        );
        let cron = |schedule: &str| {
            json!({"spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "x"}]}}}}}})
        };
        for good in [
            "*/5 * * * *",
            "@hourly",
            "TZ=Europe/Paris 0 3 * * 1",
            "@every 1h",
        ] {
            check("batch", "v1", "cronjobs", cron(good), &[]);
        }
        check("batch", "v1", "cronjobs", cron("* * *"), &["spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: * * *"]);
        check(
            "batch",
            "v1",
            "cronjobs",
            cron("@sometimes"),
            &["spec.schedule: Invalid value: \"@sometimes\": unrecognized descriptor: @sometimes"],
        );
        check(
            "batch",
            "v1",
            "cronjobs",
            cron(""),
            &["spec.schedule: Required value"],
        );
        let mut always = cron("@daily");
        always["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] =
            json!("Always");
        check(
            "batch",
            "v1",
            "cronjobs",
            always,
            &["spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\""],
        );

        let hpa = |min: i64, max: i64| {
            json!({"spec": {"minReplicas": min, "maxReplicas": max,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}})
        };
        check(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            hpa(1, 5),
            &[],
        );
        check(
            "autoscaling", "v2", "horizontalpodautoscalers", hpa(3, 2),
            &["spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"],
        );
        check(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            json!({"spec": {"minReplicas": 0, "maxReplicas": 0, "scaleTargetRef": {}}}),
            &[
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.maxReplicas: Invalid value: 0: must be greater than 0",
                "spec.scaleTargetRef.kind: Required value",
                "spec.scaleTargetRef.name: Required value",
            ],
        );
        check(
            "policy",
            "v1",
            "poddisruptionbudgets",
            json!({"spec": {"minAvailable": 1, "maxUnavailable": "120%"}}),
            &[
                "spec: Invalid value: {",
                "spec.maxUnavailable: Invalid value: \"120%\": must not be greater than 100%",
            ],
        );
        check(
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            json!({"metadata": {"name": "urgent"}, "value": 2000000000, "preemptionPolicy": "Always"}),
            &[
                "value: Forbidden: maximum allowed value of a user defined priority is 1000000000",
                "preemptionPolicy: Unsupported value: \"Always\"",
            ],
        );
        check(
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            json!({"metadata": {"name": "system-node-critical"}, "value": 2000001000}),
            &[],
        );
    }
}
