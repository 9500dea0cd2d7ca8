//! When a container's startup, liveness and readiness probes run and what their results mean,
//! decided without I/O (kubelet's prober rules): startup gates the other two, thresholds count
//! consecutive results, and each attempt of a container starts afresh.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Probe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As the kubelet's events name it ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => container.startup_probe.as_ref(),
            Kind::Liveness => container.liveness_probe.as_ref(),
            Kind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// A probe's timing fields with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn seconds(value: Option<i32>, default: u64, min: u64) -> Duration {
    Duration::from_secs(value.map_or(default, |v| v.max(0) as u64).max(min))
}

impl Timing {
    pub fn of(probe: &Probe) -> Timing {
        Timing {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// What one run of a probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success,
    /// Failed, with what the kubelet would say after "Liveness probe failed: ".
    Failure(String),
}

/// What the worker must do after a result.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing changes.
    Steady,
    /// The liveness or startup probe failed its threshold: kill the container (it restarts as
    /// its pod's restart policy says).
    Kill,
    /// The readiness result flipped.
    Readiness(bool),
    /// The startup probe succeeded: liveness and readiness probes begin.
    Started,
}

#[derive(Debug, Clone)]
struct Tracker {
    kind: Kind,
    timing: Timing,
    last_run: Option<Timestamp>,
    successes: u32,
    failures: u32,
    /// The current result: readiness and startup start false, liveness true.
    ok: bool,
}

impl Tracker {
    fn due_at(&self, since: Timestamp) -> Timestamp {
        let at = match self.last_run {
            None => since.checked_add(self.timing.initial_delay),
            Some(last) => last.checked_add(self.timing.period),
        };
        at.unwrap_or(since)
    }
}

/// The probes of one attempt of one container.
#[derive(Debug, Clone)]
pub struct Probes {
    /// When the attempt started (initial delays count from here).
    started_at: Timestamp,
    trackers: Vec<Tracker>,
}

/// Whether a running container counts as started and ready for the pod's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub started: bool,
    pub ready: bool,
}

impl Probes {
    pub fn new(container: &Container, started_at: Timestamp) -> Probes {
        let trackers = [Kind::Startup, Kind::Liveness, Kind::Readiness]
            .into_iter()
            .filter_map(|kind| {
                let probe = kind.of(container)?;
                Some(Tracker {
                    kind,
                    timing: Timing::of(probe),
                    last_run: None,
                    successes: 0,
                    failures: 0,
                    ok: kind == Kind::Liveness,
                })
            })
            .collect();
        Probes {
            started_at,
            trackers,
        }
    }

    fn started(&self) -> bool {
        self.trackers
            .iter()
            .find(|t| t.kind == Kind::Startup)
            .is_none_or(|t| t.ok)
    }

    pub fn health(&self) -> Health {
        let started = self.started();
        let ready = started
            && self
                .trackers
                .iter()
                .find(|t| t.kind == Kind::Readiness)
                .is_none_or(|t| t.ok);
        Health { started, ready }
    }

    /// The probes that may run now: the startup probe until it succeeds, then the others.
    fn active(&self) -> impl Iterator<Item = &Tracker> {
        let started = self.started();
        self.trackers.iter().filter(move |t| match t.kind {
            Kind::Startup => !t.ok,
            _ => started,
        })
    }

    /// The probes due at `now`, with their timeouts.
    pub fn due(&self, now: Timestamp) -> Vec<(Kind, Duration)> {
        self.active()
            .filter(|t| t.due_at(self.started_at) <= now)
            .map(|t| (t.kind, t.timing.timeout))
            .collect()
    }

    /// When the next probe is due, if any will run.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.active().map(|t| t.due_at(self.started_at)).min()
    }

    /// Counts a result of the `kind` probe run at `now`.
    pub fn record(&mut self, kind: Kind, outcome: &Outcome, now: Timestamp) -> Verdict {
        let Some(t) = self.trackers.iter_mut().find(|t| t.kind == kind) else {
            return Verdict::Steady;
        };
        t.last_run = Some(now);
        let was = t.ok;
        match outcome {
            Outcome::Success => {
                t.failures = 0;
                t.successes = t.successes.saturating_add(1);
                // Liveness and startup probes succeed on one success, whatever the spec says.
                let needed = if kind == Kind::Readiness {
                    t.timing.success_threshold
                } else {
                    1
                };
                if t.successes >= needed {
                    t.ok = true;
                }
            }
            Outcome::Failure(_) => {
                t.successes = 0;
                t.failures = t.failures.saturating_add(1);
                if t.failures >= t.timing.failure_threshold {
                    t.ok = false;
                    if kind != Kind::Readiness {
                        // Counted afresh should the container keep running after the kill.
                        t.failures = 0;
                        return Verdict::Kill;
                    }
                }
            }
        }
        match (kind, was, t.ok) {
            (Kind::Readiness, a, b) if a != b => Verdict::Readiness(b),
            (Kind::Startup, false, true) => Verdict::Started,
            _ => Verdict::Steady,
        }
    }
}

/// The probes of each running attempt of a pod's containers, by container name.
#[derive(Debug, Default)]
pub struct PodProbes {
    by_name: BTreeMap<String, (u32, Probes)>,
}

impl PodProbes {
    /// The probes of `attempt` of `container`: kept while the attempt is the same, afresh for a
    /// new one.
    pub fn attempt(
        &mut self,
        container: &Container,
        attempt: u32,
        started_at: Timestamp,
    ) -> &mut Probes {
        let entry = self
            .by_name
            .entry(container.name.clone())
            .or_insert_with(|| (attempt, Probes::new(container, started_at)));
        if entry.0 != attempt {
            *entry = (attempt, Probes::new(container, started_at));
        }
        &mut entry.1
    }

    /// Forgets containers that no longer run.
    pub fn retain(&mut self, running: impl Fn(&str, u32) -> bool) {
        self.by_name
            .retain(|name, (attempt, _)| running(name, *attempt));
    }

    pub fn health(&self) -> BTreeMap<String, Health> {
        self.by_name
            .iter()
            .map(|(name, (_, p))| (name.clone(), p.health()))
            .collect()
    }

    pub fn next_due(&self) -> Option<Timestamp> {
        self.by_name
            .values()
            .filter_map(|(_, p)| p.next_due())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn container(spec: serde_json::Value) -> Container {
        let mut c = json!({"name": "web", "image": "x"});
        c.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    fn fail() -> Outcome {
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
    }

    #[test]
    fn liveness_kills_after_the_failure_threshold_of_consecutive_failures() {
        let c = container(json!({"livenessProbe": {"exec": {"command": ["true"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2}}));
        let mut p = Probes::new(&c, at(0));
        assert!(p.health().ready, "no readiness probe: ready when running");
        assert!(p.due(at(4)).is_empty(), "initial delay holds the first run");
        assert_eq!(p.next_due(), Some(at(5)));
        assert_eq!(p.due(at(5)), vec![(Kind::Liveness, Duration::from_secs(1))]);
        assert_eq!(p.record(Kind::Liveness, &fail(), at(5)), Verdict::Steady);
        assert!(p.due(at(6)).is_empty(), "the period separates runs");
        assert_eq!(p.next_due(), Some(at(7)));
        // A success in between resets the count.
        assert_eq!(
            p.record(Kind::Liveness, &Outcome::Success, at(7)),
            Verdict::Steady
        );
        assert_eq!(p.record(Kind::Liveness, &fail(), at(9)), Verdict::Steady);
        assert_eq!(p.record(Kind::Liveness, &fail(), at(11)), Verdict::Kill);
    }

    #[test]
    fn readiness_flips_by_its_thresholds() {
        let c = container(json!({"readinessProbe": {"tcpSocket": {"port": 80},
            "successThreshold": 2, "failureThreshold": 1}}));
        let mut p = Probes::new(&c, at(0));
        assert!(!p.health().ready, "unready until the probe says otherwise");
        assert!(p.health().started);
        assert_eq!(
            p.record(Kind::Readiness, &Outcome::Success, at(0)),
            Verdict::Steady
        );
        assert_eq!(
            p.record(Kind::Readiness, &Outcome::Success, at(10)),
            Verdict::Readiness(true)
        );
        assert!(p.health().ready);
        assert_eq!(
            p.record(Kind::Readiness, &fail(), at(20)),
            Verdict::Readiness(false)
        );
        assert!(!p.health().ready);
        assert_eq!(p.record(Kind::Readiness, &fail(), at(30)), Verdict::Steady);
    }

    #[test]
    fn startup_gates_the_other_probes_and_kills_when_it_gives_up() {
        let c = container(json!({
            "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 2},
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"exec": {"command": ["true"]}}}));
        let mut p = Probes::new(&c, at(0));
        assert_eq!(
            p.health(),
            Health {
                started: false,
                ready: false
            }
        );
        assert_eq!(p.due(at(0)), vec![(Kind::Startup, Duration::from_secs(1))]);
        assert_eq!(
            p.record(Kind::Startup, &Outcome::Success, at(0)),
            Verdict::Started
        );
        assert_eq!(
            p.health(),
            Health {
                started: true,
                ready: false
            }
        );
        let due: Vec<Kind> = p.due(at(1)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            due,
            vec![Kind::Liveness, Kind::Readiness],
            "startup runs no more"
        );

        let mut q = Probes::new(&c, at(0));
        assert_eq!(q.record(Kind::Startup, &fail(), at(0)), Verdict::Steady);
        assert_eq!(q.record(Kind::Startup, &fail(), at(1)), Verdict::Kill);
    }

    #[test]
    fn a_new_attempt_starts_its_probes_afresh() {
        let c = container(json!({"readinessProbe": {"exec": {"command": ["true"]}}}));
        let mut pods = PodProbes::default();
        pods.attempt(&c, 0, at(0))
            .record(Kind::Readiness, &Outcome::Success, at(0));
        assert!(pods.health()["web"].ready);
        assert!(
            pods.attempt(&c, 0, at(0)).health().ready,
            "same attempt kept"
        );
        assert!(
            !pods.attempt(&c, 1, at(50)).health().ready,
            "new attempt afresh"
        );
        pods.retain(|_, _| false);
        assert!(pods.health().is_empty());
    }
}
