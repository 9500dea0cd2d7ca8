//! The rollout arithmetic of the Deployment controller, as Kubernetes does it: how far the new
//! ReplicaSet may grow (maxSurge) and the old ones shrink (maxUnavailable) at each step of a
//! RollingUpdate, and the steps of a Recreate.

use serde_json::Value;

/// A `maxSurge` or `maxUnavailable`: a number of pods, or a percentage of the desired replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i32),
    Percent(i32),
}

impl IntOrPercent {
    /// Reads `3` or `"25%"` (a number in a string counts as a number, as Kubernetes allows).
    pub fn parse(v: &Value) -> Result<IntOrPercent, String> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(IntOrPercent::Int)
                .ok_or_else(|| format!("{n} is not a whole number of pods")),
            Value::String(s) => match s.strip_suffix('%') {
                Some(p) => p
                    .parse()
                    .map(IntOrPercent::Percent)
                    .map_err(|_| format!("{s:?} is not a percentage")),
                None => s
                    .parse()
                    .map(IntOrPercent::Int)
                    .map_err(|_| format!("{s:?} is neither a number nor a percentage")),
            },
            other => Err(format!("{other} is neither a number nor a percentage")),
        }
    }

    fn of(self, total: i32, round_up: bool) -> i32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = i64::from(total) * i64::from(p);
                let value = if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                value as i32
            }
        }
    }
}

/// The resolved bounds of a rolling update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_surge: i32,
    pub max_unavailable: i32,
}

/// Surge rounds up, unavailability down; when both come to zero, one pod may be unavailable
/// (Kubernetes' ResolveFenceposts), or the rollout could never move.
pub fn limits(desired: i32, max_surge: IntOrPercent, max_unavailable: IntOrPercent) -> Limits {
    let surge = max_surge.of(desired, true);
    let mut unavailable = max_unavailable.of(desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Limits {
        max_surge: surge,
        max_unavailable: unavailable,
    }
}

/// A ReplicaSet as the rollout sees it. Old sets are given oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// One step of a rollout: the replicas to give each set that changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change now.
    Wait,
    /// Scale the new set.
    ScaleNew(i32),
    /// Scale old sets (name, replicas), oldest first.
    ScaleOld(Vec<(String, i32)>),
}

fn total(sets: &[&Set]) -> i32 {
    sets.iter().map(|s| s.replicas).sum()
}

/// The next step of a RollingUpdate to `desired` replicas: first grow the new set as far as the
/// surge allows; otherwise shrink the old ones as far as availability allows, unhealthy pods
/// first.
pub fn rolling_step(desired: i32, limits: Limits, new: &Set, old: &[Set]) -> Step {
    let all: Vec<&Set> = old.iter().chain(std::iter::once(new)).collect();
    // Grow (or trim) the new set.
    if new.replicas > desired {
        return Step::ScaleNew(desired);
    }
    if new.replicas < desired {
        let room = desired + limits.max_surge - total(&all);
        if room > 0 {
            return Step::ScaleNew(new.replicas + room.min(desired - new.replicas));
        }
    }
    // Shrink the old sets.
    let old_total: i32 = old.iter().map(|s| s.replicas).sum();
    if old_total == 0 {
        return Step::Wait;
    }
    let min_available = desired - limits.max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = total(&all) - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Step::Wait;
    }
    let mut replicas: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    // Unhealthy old pods go first: they count for nothing.
    let mut cleaned = 0;
    for (i, set) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = replicas[i] - set.available;
        if replicas[i] == 0 || unhealthy <= 0 {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(unhealthy);
        replicas[i] -= down;
        cleaned += down;
    }
    // Then healthy ones, as long as enough stay available.
    let available: i32 = all.iter().map(|s| s.available).sum();
    if available > min_available {
        let mut to_go = available - min_available;
        for r in replicas.iter_mut() {
            if to_go == 0 {
                break;
            }
            let down = (*r).min(to_go);
            *r -= down;
            to_go -= down;
        }
    }
    let changes: Vec<(String, i32)> = old
        .iter()
        .zip(&replicas)
        .filter(|(set, r)| set.replicas != **r)
        .map(|(set, r)| (set.name.clone(), *r))
        .collect();
    if changes.is_empty() {
        Step::Wait
    } else {
        Step::ScaleOld(changes)
    }
}

/// The next step of a Recreate: all old pods go first; the new set grows once none is left
/// (`old_pods_running` counts the old sets' pods that still exist).
pub fn recreate_step(desired: i32, new: &Set, old: &[Set], old_pods_running: i32) -> Step {
    let shrink: Vec<(String, i32)> = old
        .iter()
        .filter(|s| s.replicas > 0)
        .map(|s| (s.name.clone(), 0))
        .collect();
    if !shrink.is_empty() {
        return Step::ScaleOld(shrink);
    }
    if old_pods_running > 0 || new.replicas == desired {
        return Step::Wait;
    }
    Step::ScaleNew(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(name: &str, replicas: i32, available: i32) -> Set {
        Set {
            name: name.into(),
            replicas,
            available,
        }
    }

    #[test]
    fn bounds_resolve_as_kubernetes_does() {
        let cases = [
            (json!("25%"), json!("25%"), 3, (1, 0)),
            (json!("25%"), json!("25%"), 10, (3, 2)),
            (json!(0), json!(0), 3, (0, 1)),
            (json!(1), json!(0), 3, (1, 0)),
            (json!("2"), json!("100%"), 4, (2, 4)),
        ];
        for (surge, unavailable, desired, want) in cases {
            let got = limits(
                desired,
                IntOrPercent::parse(&surge).unwrap(),
                IntOrPercent::parse(&unavailable).unwrap(),
            );
            assert_eq!(
                (got.max_surge, got.max_unavailable),
                want,
                "{surge} {unavailable} of {desired}"
            );
        }
        assert!(IntOrPercent::parse(&json!("lots")).is_err());
        assert!(IntOrPercent::parse(&json!(1.5)).is_err());
    }

    #[test]
    fn single_steps() {
        let l = Limits {
            max_surge: 1,
            max_unavailable: 0,
        };
        let cases = [
            // A new rollout: the new set grows by the surge.
            (
                3,
                l,
                set("new", 0, 0),
                vec![set("old", 3, 3)],
                Step::ScaleNew(1),
            ),
            // At the surge: old shrinks only when the new pod is available.
            (3, l, set("new", 1, 0), vec![set("old", 3, 3)], Step::Wait),
            (
                3,
                l,
                set("new", 1, 1),
                vec![set("old", 3, 3)],
                Step::ScaleOld(vec![("old".into(), 2)]),
            ),
            // Unhealthy old pods go first, even below availability.
            (3, l, set("new", 1, 0), vec![set("old", 3, 1)], Step::Wait),
            // (4 pods, 2 must stay available, the new one is not yet: one may go, an unhealthy one.)
            (
                3,
                Limits {
                    max_surge: 1,
                    max_unavailable: 1,
                },
                set("new", 1, 0),
                vec![set("old", 3, 1)],
                Step::ScaleOld(vec![("old".into(), 2)]),
            ),
            // Done: nothing to do.
            (3, l, set("new", 3, 3), vec![set("old", 0, 0)], Step::Wait),
            // Scaled down during a rollout: the new set is trimmed.
            (2, l, set("new", 3, 3), vec![], Step::ScaleNew(2)),
            // Oldest old sets shrink first.
            (
                4,
                Limits {
                    max_surge: 0,
                    max_unavailable: 2,
                },
                set("new", 0, 0),
                vec![set("a", 2, 2), set("b", 2, 2)],
                Step::ScaleOld(vec![("a".into(), 0)]),
            ),
        ];
        for (desired, limits, new, old, want) in cases {
            assert_eq!(
                rolling_step(desired, limits, &new, &old),
                want,
                "{desired} {limits:?} {new:?} {old:?}"
            );
        }
    }

    /// Runs a rolling update to the end, pods becoming available at once, and checks
    /// Kubernetes' promises at every step.
    fn roll(desired: i32, surge: Value, unavailable: Value) -> usize {
        let l = limits(
            desired,
            IntOrPercent::parse(&surge).unwrap(),
            IntOrPercent::parse(&unavailable).unwrap(),
        );
        let mut new = set("new", 0, 0);
        let mut old = vec![set("old", desired, desired)];
        for steps in 0..1000 {
            match rolling_step(desired, l, &new, &old) {
                Step::Wait => {
                    assert_eq!((new.replicas, old[0].replicas), (desired, 0), "stuck");
                    return steps;
                }
                Step::ScaleNew(n) => new.replicas = n,
                Step::ScaleOld(changes) => {
                    for (_, r) in changes {
                        old[0].replicas = r;
                        old[0].available = r;
                    }
                }
            }
            let total = new.replicas + old[0].replicas;
            let available = new.available + old[0].available;
            assert!(total <= desired + l.max_surge, "surge exceeded: {total}");
            assert!(
                available >= desired - l.max_unavailable,
                "too few available: {available}"
            );
            // The new pods start and become available before the next step.
            new.available = new.replicas;
        }
        panic!("the rollout did not finish");
    }

    #[test]
    fn rollouts_finish_within_their_bounds() {
        assert_eq!(roll(3, json!(1), json!(0)), 6);
        roll(3, json!("25%"), json!("25%"));
        roll(10, json!("25%"), json!("25%"));
        roll(1000, json!("10%"), json!(0));
        roll(5, json!(0), json!(1));
    }

    #[test]
    fn recreate_waits_for_the_old_pods() {
        let old = vec![set("old", 3, 3)];
        assert_eq!(
            recreate_step(3, &set("new", 0, 0), &old, 3),
            Step::ScaleOld(vec![("old".into(), 0)])
        );
        let gone = vec![set("old", 0, 0)];
        assert_eq!(recreate_step(3, &set("new", 0, 0), &gone, 2), Step::Wait);
        assert_eq!(
            recreate_step(3, &set("new", 0, 0), &gone, 0),
            Step::ScaleNew(3)
        );
        assert_eq!(recreate_step(3, &set("new", 3, 3), &gone, 0), Step::Wait);
    }
}
