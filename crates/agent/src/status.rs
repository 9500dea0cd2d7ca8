//! A pod's status as kubelet reports it, computed without I/O from the pod, what the runtime
//! says of its containers, the worker's plan and what the worker noted (pull and
//! configuration errors, probe results): phase, conditions, container states with Kubernetes'
//! reasons, restart counts, last states.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Map, Value};
use skiff_runtime::ContainerStatus;

use crate::plan::{running, succeeded, Attempts, Plan, RestartPolicy};
use crate::probe::Health;

/// Why a container that has no running attempt waits, when it is not for its back-off: the
/// worker's note (`ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub reason: String,
    pub message: String,
}

pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a [ContainerStatus],
    pub plan: &'a Plan,
    pub notes: &'a BTreeMap<String, Note>,
    /// Termination messages of exited attempts, by container ID.
    pub messages: &'a BTreeMap<String, String>,
    /// What the probes say of running containers, by name; a container without probes is
    /// started and ready when it runs.
    pub health: &'a BTreeMap<String, Health>,
    pub host_ip: &'a str,
    pub pod_ip: Option<&'a str>,
    pub now: Timestamp,
}

/// Kubernetes' time format (whole seconds).
pub fn stamp(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A runtime time (RFC 3339 with fractions) in Kubernetes' format.
fn api_time(text: Option<&str>) -> Value {
    match text.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => json!(stamp(t)),
        None => Value::Null,
    }
}

pub fn container_id(status: &ContainerStatus) -> String {
    format!("skiff://{}", status.id)
}

fn terminated(status: &ContainerStatus, messages: &BTreeMap<String, String>) -> Value {
    let code = status.exit_code.unwrap_or(128);
    let reason = if status.oom_killed {
        "OOMKilled"
    } else if status.error.is_some() {
        "StartError"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": code, "reason": reason,
        "startedAt": api_time(status.started_at.as_deref()),
        "finishedAt": api_time(status.finished_at.as_deref()),
        "containerID": container_id(status),
    });
    if let Some(signal) = status.signal {
        t["signal"] = json!(signal);
    }
    let message = status
        .error
        .clone()
        .or_else(|| messages.get(&status.id.to_string()).cloned());
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        t["message"] = json!(message);
    }
    json!({"terminated": t})
}

fn waiting(reason: &str, message: Option<String>) -> Value {
    match message {
        Some(message) => json!({"waiting": {"reason": reason, "message": message}}),
        None => json!({"waiting": {"reason": reason}}),
    }
}

/// How the kubelet names a pod in messages: `name_namespace(uid)`.
pub fn pod_ref(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}_{}({})",
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    )
}

/// How each container of one list counts toward the phase (kubelet's `getPhase`).
#[derive(Default)]
struct Counts {
    waiting: usize,
    running: usize,
    stopped: usize,
    succeeded: usize,
}

/// The status of one container and whether it is ready.
fn container_status(
    input: &StatusInput<'_>,
    attempts: &Attempts<'_>,
    container: &Container,
    init: bool,
    counts: &mut Counts,
) -> (Value, bool) {
    let name = container.name.as_str();
    let latest = attempts.latest(name);
    let policy = RestartPolicy::of(input.pod);
    let mut status = json!({
        "name": name,
        "image": container.image.clone().unwrap_or_default(),
        "imageID": latest.map(|s| s.image_id.clone()).unwrap_or_default(),
        "restartCount": latest.map_or(0, |s| s.id.attempt),
        "ready": false,
        "started": false,
    });
    let mut ready = false;
    let note = input.notes.get(name).cloned();
    let (state, last) = match latest {
        None => {
            counts.waiting += 1;
            let state = match note {
                Some(note) => waiting(&note.reason, Some(note.message)),
                None if init || input.plan.initialized => waiting("ContainerCreating", None),
                None => waiting("PodInitializing", None),
            };
            (state, attempts.previous(name))
        }
        Some(current) if running(current) => {
            counts.running += 1;
            let health = input.health.get(name).copied().unwrap_or(Health {
                started: true,
                ready: true,
            });
            ready = health.ready;
            status["started"] = json!(health.started);
            status["containerID"] = json!(container_id(current));
            let state = json!({"running": {"startedAt": api_time(current.started_at.as_deref())}});
            (state, attempts.previous(name))
        }
        Some(exited) => {
            let restarts = policy.restarts(exited, init);
            status["containerID"] = json!(container_id(exited));
            if restarts {
                counts.stopped += 1;
                let state = match (note, input.plan.backoff.get(name)) {
                    (Some(note), _) => waiting(&note.reason, Some(note.message)),
                    (None, Some(wait)) => waiting(
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {}s restarting failed container={name} pod={}",
                            wait.delay.as_secs(),
                            pod_ref(input.pod)
                        )),
                    ),
                    (None, None) => waiting("ContainerCreating", None),
                };
                (state, Some(exited))
            } else {
                counts.stopped += 1;
                if succeeded(exited) {
                    counts.succeeded += 1;
                }
                (terminated(exited, input.messages), attempts.previous(name))
            }
        }
    };
    status["state"] = state;
    status["lastState"] = match last {
        Some(last) => terminated(last, input.messages),
        None => json!({}),
    };
    status["ready"] = json!(ready);
    (status, ready)
}

fn condition(
    pod: &Pod,
    kind: &str,
    ok: bool,
    reason: Option<(&str, String)>,
    now: Timestamp,
) -> Value {
    let status = if ok { "True" } else { "False" };
    // The transition time stays while the condition does not change.
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| json!(t.0))
        .unwrap_or_else(|| json!(stamp(now)));
    let mut c =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let (false, Some((reason, message))) = (ok, reason) {
        c["reason"] = json!(reason);
        c["message"] = json!(message);
    }
    c
}

/// The pod's status (the `status` object a merge patch writes).
pub fn pod_status(input: &StatusInput<'_>) -> Value {
    let pod = input.pod;
    let attempts = Attempts::new(input.observed);
    let (inits, mains) = match &pod.spec {
        Some(spec) => (
            spec.init_containers.clone().unwrap_or_default(),
            spec.containers.clone(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut init_counts = Counts::default();
    let init_statuses: Vec<Value> = inits
        .iter()
        .map(|c| container_status(input, &attempts, c, true, &mut init_counts).0)
        .collect();
    let mut counts = Counts::default();
    let mut unready = Vec::new();
    let statuses: Vec<Value> = mains
        .iter()
        .map(|c| {
            let (status, ready) = container_status(input, &attempts, c, false, &mut counts);
            if !ready {
                unready.push(c.name.clone());
            }
            status
        })
        .collect();

    let policy = RestartPolicy::of(pod);
    let phase = if input.plan.init_failed {
        "Failed"
    } else if !input.plan.initialized || counts.waiting > 0 {
        "Pending"
    } else if counts.running > 0 || policy == RestartPolicy::Always {
        "Running"
    } else if counts.stopped == counts.succeeded {
        "Succeeded"
    } else if policy == RestartPolicy::Never {
        "Failed"
    } else {
        "Running"
    };

    let incomplete: Vec<&str> = inits
        .iter()
        .filter(|c| !attempts.latest(&c.name).is_some_and(succeeded))
        .map(|c| c.name.as_str())
        .collect();
    let completed = phase == "Succeeded" || phase == "Failed";
    let ready_reason = || {
        if completed {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        }
    };
    let containers_ready = unready.is_empty() && !mains.is_empty();
    let conditions = vec![
        condition(
            pod,
            "PodReadyToStartContainers",
            !completed,
            None,
            input.now,
        ),
        condition(
            pod,
            "Initialized",
            input.plan.initialized,
            Some((
                "ContainersNotInitialized",
                format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                ),
            )),
            input.now,
        ),
        condition(
            pod,
            "Ready",
            containers_ready,
            Some(ready_reason()),
            input.now,
        ),
        condition(
            pod,
            "ContainersReady",
            containers_ready,
            Some(ready_reason()),
            input.now,
        ),
        condition(pod, "PodScheduled", true, None, input.now),
    ];

    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| json!(t.0))
        .unwrap_or_else(|| json!(stamp(input.now)));
    let mut status = Map::new();
    status.insert("phase".into(), json!(phase));
    status.insert("conditions".into(), json!(conditions));
    status.insert("hostIP".into(), json!(input.host_ip));
    status.insert("hostIPs".into(), json!([{"ip": input.host_ip}]));
    if let Some(ip) = input.pod_ip {
        status.insert("podIP".into(), json!(ip));
        status.insert("podIPs".into(), json!([{"ip": ip}]));
    }
    status.insert("startTime".into(), start);
    if !inits.is_empty() {
        status.insert("initContainerStatuses".into(), json!(init_statuses));
    }
    status.insert("containerStatuses".into(), json!(statuses));
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, Backoff, Streaks};
    use skiff_runtime::{ContainerId, ContainerState};

    const T0: i64 = 1_800_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).unwrap()
    }

    fn pod(policy: &str, inits: &[&str], mains: &[&str]) -> Pod {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "my-api:v2.1"}))
                .collect::<Vec<_>>()
        };
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": policy, "initContainers": list(inits), "containers": list(mains)},
        }))
        .unwrap()
    }

    struct Run {
        name: &'static str,
        attempt: u32,
        exit: Option<i32>,
        oom: bool,
        error: Option<&'static str>,
    }

    fn run(name: &'static str, attempt: u32, exit: Option<i32>) -> Run {
        Run {
            name,
            attempt,
            exit,
            oom: false,
            error: None,
        }
    }

    fn observed(runs: &[Run]) -> Vec<ContainerStatus> {
        runs.iter()
            .map(|r| ContainerStatus {
                id: ContainerId {
                    pod_uid: "u1".into(),
                    name: r.name.into(),
                    attempt: r.attempt,
                },
                image: "my-api:v2.1".into(),
                image_id: "sha256:abc".into(),
                state: if r.exit.is_some() {
                    ContainerState::Exited
                } else {
                    ContainerState::Running
                },
                pid: None,
                monitor_pid: None,
                started_at: Some(at(i64::from(r.attempt) * 10).to_string()),
                finished_at: r
                    .exit
                    .map(|_| at(i64::from(r.attempt) * 10 + 1).to_string()),
                exit_code: r.exit,
                signal: r.oom.then_some(9),
                oom_killed: r.oom,
                error: r.error.map(str::to_string),
                log_path: Default::default(),
            })
            .collect()
    }

    /// The status at `now` (seconds after T0), with the worker's notes.
    fn status_of(pod: &Pod, runs: &[Run], now: i64, notes: &[(&str, &str, &str)]) -> Value {
        status_with(pod, runs, now, notes, &BTreeMap::new())
    }

    fn status_with(
        pod: &Pod,
        runs: &[Run],
        now: i64,
        notes: &[(&str, &str, &str)],
        health: &BTreeMap<String, Health>,
    ) -> Value {
        let observed = observed(runs);
        let plan = plan(
            pod,
            &observed,
            at(now),
            &Backoff::default(),
            &Streaks::default(),
        );
        let notes: BTreeMap<String, Note> = notes
            .iter()
            .map(|(c, r, m)| {
                (
                    c.to_string(),
                    Note {
                        reason: r.to_string(),
                        message: m.to_string(),
                    },
                )
            })
            .collect();
        let messages = BTreeMap::from([("u1-app-0".to_string(), "bye".to_string())]);
        pod_status(&StatusInput {
            pod,
            observed: &observed,
            plan: &plan,
            notes: &notes,
            messages: &messages,
            health,
            host_ip: "10.0.0.1",
            pod_ip: None,
            now: at(now),
        })
    }

    /// phase, then per container: state key and its reason, ready, restartCount, the last
    /// state's reason.
    fn summary(status: &Value) -> String {
        let mut out = status["phase"].as_str().unwrap().to_string();
        for list in ["initContainerStatuses", "containerStatuses"] {
            for c in status[list].as_array().into_iter().flatten() {
                let (state, detail) = c["state"].as_object().unwrap().iter().next().unwrap();
                let reason = detail["reason"].as_str().unwrap_or("");
                let last = c["lastState"]["terminated"]["reason"]
                    .as_str()
                    .unwrap_or("-");
                out += &format!(
                    " {}:{state}/{reason}/ready={}/restarts={}/last={last}",
                    c["name"].as_str().unwrap(),
                    c["ready"],
                    c["restartCount"]
                );
            }
        }
        out
    }

    fn condition_of<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn states_reasons_and_phases() {
        let always = pod("Always", &[], &["app"]);
        let never = pod("Never", &[], &["app"]);
        let on_failure = pod("OnFailure", &[], &["app"]);
        let oom = Run {
            oom: true,
            ..run("app", 0, Some(137))
        };
        let unstartable = Run {
            error: Some("executable 'nope' not found in $PATH"),
            ..run("app", 0, Some(128))
        };
        type Notes<'a> = Vec<(&'a str, &'a str, &'a str)>;
        let cases: Vec<(&Pod, Vec<Run>, i64, Notes, &str)> = vec![
            (
                &always,
                vec![],
                0,
                vec![],
                "Pending app:waiting/ContainerCreating/ready=false/restarts=0/last=-",
            ),
            (
                &always,
                vec![],
                0,
                vec![("app", "ErrImagePull", "no such image")],
                "Pending app:waiting/ErrImagePull/ready=false/restarts=0/last=-",
            ),
            (
                &always,
                vec![run("app", 0, None)],
                1,
                vec![],
                "Running app:running//ready=true/restarts=0/last=-",
            ),
            (
                &always,
                vec![run("app", 0, Some(1)), run("app", 1, None)],
                12,
                vec![],
                "Running app:running//ready=true/restarts=1/last=Error",
            ),
            (
                &always,
                vec![run("app", 1, Some(1))],
                12,
                vec![],
                "Running app:waiting/CrashLoopBackOff/ready=false/restarts=1/last=Error",
            ),
            (
                &always,
                vec![oom],
                5,
                vec![],
                "Running app:waiting/ContainerCreating/ready=false/restarts=0/last=OOMKilled",
            ),
            (
                &never,
                vec![run("app", 0, Some(0))],
                5,
                vec![],
                "Succeeded app:terminated/Completed/ready=false/restarts=0/last=-",
            ),
            (
                &never,
                vec![run("app", 0, Some(2))],
                5,
                vec![],
                "Failed app:terminated/Error/ready=false/restarts=0/last=-",
            ),
            (
                &never,
                vec![unstartable],
                5,
                vec![],
                "Failed app:terminated/StartError/ready=false/restarts=0/last=-",
            ),
            (
                &on_failure,
                vec![run("app", 1, Some(3))],
                12,
                vec![],
                "Running app:waiting/CrashLoopBackOff/ready=false/restarts=1/last=Error",
            ),
            (
                &always,
                vec![run("app", 0, Some(1))],
                2,
                vec![(
                    "app",
                    "CreateContainerConfigError",
                    "configmap \"x\" not found",
                )],
                "Running app:waiting/CreateContainerConfigError/ready=false/restarts=0/last=Error",
            ),
        ];
        for (pod, runs, now, notes, want) in cases {
            let status = status_of(pod, &runs, now, &notes);
            // The OOM case is planned at once: the status is of the restart's moment.
            assert_eq!(summary(&status), want);
        }
    }

    #[test]
    fn crash_loop_message_and_last_state_detail() {
        let always = pod("Always", &[], &["app"]);
        let status = status_of(&always, &[run("app", 1, Some(1))], 12, &[]);
        let app = &status["containerStatuses"][0];
        assert_eq!(
            app["state"]["waiting"]["message"],
            "back-off 10s restarting failed container=app pod=web_default(u1)"
        );
        assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(
            app["lastState"]["terminated"]["containerID"],
            "skiff://u1-app-1"
        );
        assert_eq!(
            app["lastState"]["terminated"]["finishedAt"],
            stamp(at(11)).as_str()
        );
        assert_eq!(condition_of(&status, "Ready")["status"], "False");
        assert_eq!(
            condition_of(&status, "Ready")["message"],
            "containers with unready status: [app]"
        );
        // The termination message of an attempt is its terminated state's message.
        let never = pod("Never", &[], &["app"]);
        let done = status_of(&never, &[run("app", 0, Some(0))], 5, &[]);
        assert_eq!(
            done["containerStatuses"][0]["state"]["terminated"]["message"],
            "bye"
        );
        assert_eq!(condition_of(&done, "Ready")["reason"], "PodCompleted");
    }

    #[test]
    fn probes_decide_started_and_ready() {
        let p = pod("Always", &[], &["app"]);
        let unstarted = BTreeMap::from([(
            "app".to_string(),
            Health {
                started: false,
                ready: false,
            },
        )]);
        let status = status_with(&p, &[run("app", 0, None)], 1, &[], &unstarted);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["containerStatuses"][0]["started"], false);
        assert_eq!(status["containerStatuses"][0]["ready"], false);
        assert_eq!(condition_of(&status, "Ready")["status"], "False");
        assert_eq!(condition_of(&status, "ContainersReady")["status"], "False");
        let unready = BTreeMap::from([(
            "app".to_string(),
            Health {
                started: true,
                ready: false,
            },
        )]);
        let status = status_with(&p, &[run("app", 0, None)], 1, &[], &unready);
        assert_eq!(status["containerStatuses"][0]["started"], true);
        assert_eq!(
            condition_of(&status, "Ready")["message"],
            "containers with unready status: [app]"
        );
    }

    #[test]
    fn init_containers_hold_the_pod_pending() {
        let p = pod("Always", &["migrate"], &["app"]);
        let status = status_of(&p, &[run("migrate", 0, None)], 1, &[]);
        assert_eq!(
            summary(&status),
            "Pending migrate:running//ready=true/restarts=0/last=- app:waiting/PodInitializing/ready=false/restarts=0/last=-"
        );
        assert_eq!(condition_of(&status, "Initialized")["status"], "False");
        assert_eq!(
            condition_of(&status, "Initialized")["message"],
            "containers with incomplete status: [migrate]"
        );
        let never = pod("Never", &["migrate"], &["app"]);
        let failed = status_of(&never, &[run("migrate", 0, Some(1))], 2, &[]);
        assert_eq!(failed["phase"], "Failed");
        let done = status_of(
            &p,
            &[run("migrate", 0, Some(0)), run("app", 0, None)],
            3,
            &[],
        );
        assert_eq!(done["phase"], "Running");
        assert_eq!(condition_of(&done, "Initialized")["status"], "True");
        assert_eq!(condition_of(&done, "Ready")["status"], "True");
    }

    #[test]
    fn transition_times_stay_while_conditions_hold() {
        let mut p = pod("Always", &[], &["app"]);
        let first = status_of(&p, &[run("app", 0, None)], 1, &[]);
        p.status = Some(serde_json::from_value(first.clone()).unwrap());
        let later = status_of(&p, &[run("app", 0, None)], 50, &[]);
        assert_eq!(
            condition_of(&later, "Ready")["lastTransitionTime"],
            stamp(at(1)).as_str()
        );
        assert_eq!(later["startTime"], stamp(at(1)).as_str());
        let crashed = status_of(&p, &[run("app", 1, Some(1))], 60, &[]);
        assert_eq!(
            condition_of(&crashed, "Ready")["lastTransitionTime"],
            stamp(at(60)).as_str()
        );
    }
}
