//! What a pod's worker does next, decided without I/O: which container to start (init
//! containers one by one, in order, then every container), which waits in back-off and until
//! when, from the pod's spec and what the runtime says of its containers.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_runtime::{ContainerState, ContainerStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> RestartPolicy {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether an exited container runs again: init containers restart until they succeed
    /// unless the pod never restarts.
    pub fn restarts(self, exited: &ContainerStatus, init: bool) -> bool {
        if init {
            return self != RestartPolicy::Never && !succeeded(exited);
        }
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !succeeded(exited),
            RestartPolicy::Never => false,
        }
    }
}

/// Restart delays of crashing containers: none after the first exit, then `initial` doubling up
/// to `max`; a container that ran `reset_after` or longer restarts at once (kubelet's rules).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// How long after a run ended, having run for `ran`, the next one may start; `crashes` is
    /// how many runs of the current streak ended before it (0: the streak's first run).
    pub fn delay(&self, crashes: u32, ran: Duration) -> Duration {
        if crashes == 0 || ran >= self.reset_after {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(crashes - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// An exited container that ended well: exit code 0 and no start error.
pub fn succeeded(status: &ContainerStatus) -> bool {
    status.state == ContainerState::Exited && status.exit_code == Some(0) && status.error.is_none()
}

pub fn running(status: &ContainerStatus) -> bool {
    status.state == ContainerState::Running
}

/// The newest and the one before of each container of a pod, by name.
#[derive(Debug, Default)]
pub struct Attempts<'a> {
    by_name: BTreeMap<&'a str, (&'a ContainerStatus, Option<&'a ContainerStatus>)>,
}

impl<'a> Attempts<'a> {
    pub fn new(observed: &'a [ContainerStatus]) -> Attempts<'a> {
        let mut sorted: Vec<&ContainerStatus> = observed.iter().collect();
        sorted.sort_by_key(|s| s.id.attempt);
        let mut by_name: BTreeMap<&str, (&ContainerStatus, Option<&ContainerStatus>)> =
            BTreeMap::new();
        for status in sorted {
            let previous = by_name
                .get(status.id.name.as_str())
                .map(|(latest, _)| *latest);
            by_name.insert(&status.id.name, (status, previous));
        }
        Attempts { by_name }
    }

    pub fn latest(&self, name: &str) -> Option<&'a ContainerStatus> {
        self.by_name.get(name).map(|(latest, _)| *latest)
    }

    pub fn previous(&self, name: &str) -> Option<&'a ContainerStatus> {
        self.by_name.get(name).and_then(|(_, previous)| *previous)
    }
}

/// A container waiting for its back-off to pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waiting {
    pub until: Timestamp,
    pub delay: Duration,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Containers to start now, with the attempt number of the new run.
    pub start: Vec<(String, u32)>,
    /// Containers whose restart waits.
    pub backoff: BTreeMap<String, Waiting>,
    /// Every init container has succeeded (or the pod has none, or its containers started).
    pub initialized: bool,
    /// An init container failed and the pod never restarts: the pod has failed.
    pub init_failed: bool,
}

impl Plan {
    /// When the worker must look again even if nothing else happens.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.backoff.values().map(|w| w.until).min()
    }
}

fn time(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

/// How long an exited run ran, and when it ended (`now` when unknown).
fn ran(exited: &ContainerStatus, now: Timestamp) -> (Duration, Timestamp) {
    let finished = time(exited.finished_at.as_deref()).unwrap_or(now);
    let started = time(exited.started_at.as_deref()).unwrap_or(finished);
    (finished.duration_since(started).unsigned_abs(), finished)
}

/// Where each container's current crash streak began: the attempt after its last run of
/// `reset_after` or more, so that back-off starts over after a long run. The worker keeps it
/// in memory (the runtime keeps only two attempts), as kubelet keeps its back-off.
#[derive(Debug, Default, Clone)]
pub struct Streaks(BTreeMap<String, u32>);

impl Streaks {
    /// Notes the long runs among `observed`.
    pub fn observe(&mut self, observed: &[ContainerStatus], backoff: &Backoff) {
        for status in observed
            .iter()
            .filter(|s| s.state == ContainerState::Exited)
        {
            if ran(status, Timestamp::now()).0 >= backoff.reset_after {
                let start = self.0.entry(status.id.name.clone()).or_insert(0);
                *start = (*start).max(status.id.attempt + 1);
            }
        }
    }

    /// How many runs of the streak ended before this one.
    fn crashes(&self, exited: &ContainerStatus) -> u32 {
        let start = self.0.get(&exited.id.name).copied().unwrap_or(0);
        exited.id.attempt.saturating_sub(start)
    }
}

/// Restarts an exited container now, or says until when it waits.
fn restart(
    plan: &mut Plan,
    exited: &ContainerStatus,
    now: Timestamp,
    backoff: &Backoff,
    streaks: &Streaks,
) {
    let (ran, finished) = ran(exited, now);
    let delay = backoff.delay(streaks.crashes(exited), ran);
    let until = finished
        .checked_add(delay)
        .unwrap_or(Timestamp::MAX)
        .max(finished);
    if now >= until {
        plan.start
            .push((exited.id.name.clone(), exited.id.attempt + 1));
    } else {
        plan.backoff
            .insert(exited.id.name.clone(), Waiting { until, delay });
    }
}

fn containers(pod: &Pod) -> (&[Container], &[Container]) {
    match &pod.spec {
        Some(spec) => (
            spec.init_containers.as_deref().unwrap_or_default(),
            &spec.containers,
        ),
        None => (&[], &[]),
    }
}

/// The next step of a live pod (not being deleted).
pub fn plan(
    pod: &Pod,
    observed: &[ContainerStatus],
    now: Timestamp,
    backoff: &Backoff,
    streaks: &Streaks,
) -> Plan {
    let attempts = Attempts::new(observed);
    let policy = RestartPolicy::of(pod);
    let (inits, mains) = containers(pod);
    let mut plan = Plan {
        initialized: true,
        ..Plan::default()
    };
    // Once a container has run, the init containers are done for good (as kubelet decides).
    let mains_started = mains.iter().any(|c| attempts.latest(&c.name).is_some());
    if !mains_started {
        for init in inits {
            match attempts.latest(&init.name) {
                Some(status) if succeeded(status) => continue,
                None => plan.start.push((init.name.clone(), 0)),
                Some(status) if running(status) => {}
                Some(_) if policy == RestartPolicy::Never => plan.init_failed = true,
                // Failed init containers restart under Always and OnFailure alike.
                Some(status) => restart(&mut plan, status, now, backoff, streaks),
            }
            plan.initialized = false;
            return plan;
        }
    }
    for container in mains {
        match attempts.latest(&container.name) {
            None => plan.start.push((container.name.clone(), 0)),
            Some(status) if running(status) => {}
            Some(status) if policy.restarts(status, false) => {
                restart(&mut plan, status, now, backoff, streaks)
            }
            Some(_) => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_runtime::ContainerId;

    fn pod(policy: &str, inits: &[&str], mains: &[&str]) -> Pod {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "busybox"}))
                .collect::<Vec<_>>()
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "initContainers": list(inits), "containers": list(mains)},
        }))
        .unwrap()
    }

    const T0: i64 = 1_800_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).unwrap()
    }

    /// `name#attempt` running since `started`, or exited with `code` at `finished`.
    fn container(
        name: &str,
        attempt: u32,
        code: Option<i32>,
        started: i64,
        finished: i64,
    ) -> ContainerStatus {
        ContainerStatus {
            id: ContainerId {
                pod_uid: "u".into(),
                name: name.into(),
                attempt,
            },
            image: "busybox".into(),
            image_id: "sha256:1".into(),
            state: if code.is_some() {
                ContainerState::Exited
            } else {
                ContainerState::Running
            },
            pid: None,
            monitor_pid: None,
            started_at: Some(at(started).to_string()),
            finished_at: code.map(|_| at(finished).to_string()),
            exit_code: code,
            signal: None,
            oom_killed: false,
            error: None,
            log_path: Default::default(),
        }
    }

    /// The starts, the back-offs (until, in seconds after T0), initialized, init failed.
    type Expect<'a> = (&'a [(&'a str, u32)], &'a [(&'a str, i64)], bool, bool);

    fn check(pod: &Pod, observed: &[ContainerStatus], now: i64, expect: Expect<'_>) {
        let got = plan(
            pod,
            observed,
            at(now),
            &Backoff::default(),
            &Streaks::default(),
        );
        let starts: Vec<(&str, u32)> = got.start.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let waits: Vec<(&str, i64)> = got
            .backoff
            .iter()
            .map(|(n, w)| (n.as_str(), w.until.as_second() - T0))
            .collect();
        assert_eq!(
            (
                starts.as_slice(),
                waits.as_slice(),
                got.initialized,
                got.init_failed
            ),
            expect,
            "pod {:?} with {observed:?} at {now}",
            pod.spec.as_ref().map(|s| &s.restart_policy)
        );
    }

    #[test]
    fn containers_start_after_init_containers_in_order() {
        let p = pod("Always", &["migrate", "seed"], &["app", "side"]);
        check(&p, &[], 0, (&[("migrate", 0)], &[], false, false));
        let migrating = [container("migrate", 0, None, 0, 0)];
        check(&p, &migrating, 1, (&[], &[], false, false));
        let migrated = [container("migrate", 0, Some(0), 0, 2)];
        check(&p, &migrated, 3, (&[("seed", 0)], &[], false, false));
        let seeded = [migrated[0].clone(), container("seed", 0, Some(0), 3, 4)];
        check(
            &p,
            &seeded,
            5,
            (&[("app", 0), ("side", 0)], &[], true, false),
        );
        // Init containers pruned or failed later do not matter once the containers ran.
        let running = [container("app", 0, None, 5, 5)];
        check(&p, &running, 6, (&[("side", 0)], &[], true, false));
    }

    #[test]
    fn a_failed_init_container_restarts_with_backoff_or_fails_the_pod() {
        let failed = [container("migrate", 0, Some(1), 0, 2)];
        let always = pod("Always", &["migrate"], &["app"]);
        check(&always, &failed, 2, (&[("migrate", 1)], &[], false, false));
        let failed_again = [container("migrate", 1, Some(1), 2, 3)];
        check(
            &always,
            &failed_again,
            4,
            (&[], &[("migrate", 13)], false, false),
        );
        let never = pod("Never", &["migrate"], &["app"]);
        check(&never, &failed, 2, (&[], &[], false, true));
    }

    #[test]
    fn restart_policies_and_crash_loop_backoff() {
        let always = pod("Always", &[], &["app"]);
        let on_failure = pod("OnFailure", &[], &["app"]);
        let never = pod("Never", &[], &["app"]);
        let crashed = |attempt, ran: i64| [container("app", attempt, Some(1), 100, 100 + ran)];
        let completed = [container("app", 0, Some(0), 0, 5)];

        // The first exit restarts at once, then 10 s, 20 s, 40 s ... up to 300 s.
        check(
            &always,
            &crashed(0, 1),
            101,
            (&[("app", 1)], &[], true, false),
        );
        check(
            &always,
            &crashed(1, 1),
            105,
            (&[], &[("app", 111)], true, false),
        );
        check(
            &always,
            &crashed(1, 1),
            111,
            (&[("app", 2)], &[], true, false),
        );
        check(
            &always,
            &crashed(2, 1),
            105,
            (&[], &[("app", 121)], true, false),
        );
        check(
            &always,
            &crashed(3, 1),
            105,
            (&[], &[("app", 141)], true, false),
        );
        check(
            &always,
            &crashed(9, 1),
            105,
            (&[], &[("app", 401)], true, false),
        );
        check(
            &always,
            &crashed(40, 1),
            105,
            (&[], &[("app", 401)], true, false),
        );
        // Ten minutes of running resets the delay.
        check(
            &always,
            &crashed(5, 600),
            701,
            (&[("app", 6)], &[], true, false),
        );

        check(&always, &completed, 6, (&[("app", 1)], &[], true, false));
        check(&on_failure, &completed, 6, (&[], &[], true, false));
        check(
            &on_failure,
            &crashed(0, 1),
            102,
            (&[("app", 1)], &[], true, false),
        );
        check(&never, &crashed(0, 1), 102, (&[], &[], true, false));
        check(&never, &completed, 6, (&[], &[], true, false));
    }

    #[test]
    fn back_off_starts_over_after_a_long_run() {
        let p = pod("Always", &[], &["app"]);
        let backoff = Backoff::default();
        let mut streaks = Streaks::default();
        // Attempt 7 ran 20 minutes: it restarts at once, and so does the next crash; the one
        // after waits `initial`, not the delay of attempt 9's number (the maximum).
        let long = [container("app", 7, Some(1), 0, 1200)];
        streaks.observe(&long, &backoff);
        let first = plan(&p, &long, at(1200), &backoff, &streaks);
        assert_eq!(first.start, [("app".to_string(), 8)]);
        let crash = [container("app", 8, Some(1), 1200, 1201)];
        streaks.observe(&crash, &backoff);
        let second = plan(&p, &crash, at(1201), &backoff, &streaks);
        assert_eq!(second.start, [("app".to_string(), 9)]);
        let again = [container("app", 9, Some(1), 1201, 1202)];
        streaks.observe(&again, &backoff);
        let third = plan(&p, &again, at(1202), &backoff, &streaks);
        assert_eq!(third.backoff["app"].delay, backoff.initial);
        // Without the streak, attempt 9's number alone gives the maximum.
        let forgetful = plan(&p, &again, at(1202), &backoff, &Streaks::default());
        assert_eq!(forgetful.backoff["app"].delay, backoff.max);
    }

    #[test]
    fn attempts_know_the_newest_and_the_one_before() {
        let observed = [
            container("app", 2, None, 3, 3),
            container("app", 0, Some(1), 0, 1),
            container("app", 1, Some(1), 1, 2),
        ];
        let attempts = Attempts::new(&observed);
        assert_eq!(attempts.latest("app").unwrap().id.attempt, 2);
        assert_eq!(attempts.previous("app").unwrap().id.attempt, 1);
        assert!(attempts.latest("side").is_none());
    }
}
