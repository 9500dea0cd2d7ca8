//! The rollout arithmetic of the Deployment controller, as Kubernetes does it: how far the new
//! ReplicaSet may grow (maxSurge) and the old ones shrink (maxUnavailable) at each step of a
//! RollingUpdate, the steps of a Recreate, and the proportional scaling of every ReplicaSet
//! when a Deployment's replicas change in the middle of a rollout.

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
    /// The Deployment's replicas when this set was last scaled for it
    /// (`deployment.kubernetes.io/desired-replicas`).
    pub desired_then: Option<i32>,
    /// The Deployment's replicas plus its surge then (`deployment.kubernetes.io/max-replicas`).
    pub max_then: Option<i32>,
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

/// Whether the Deployment's replicas changed since its running sets were last scaled for it
/// (Kubernetes' `isScalingEvent`): then every set is scaled in proportion before the rollout
/// goes on.
pub fn is_scaling_event(desired: i32, sets: &[&Set]) -> bool {
    sets.iter()
        .filter(|s| s.replicas > 0)
        .any(|s| s.desired_then.is_some_and(|d| d != desired))
}

/// What a change of the Deployment's replicas does to its sets (`new`, if it exists, and `old`,
/// oldest first), as Kubernetes' `scale`: the one running set (or the newest) takes all the
/// replicas; a saturated new set leaves the old ones none; during a RollingUpdate the difference
/// to `desired + max_surge` is shared among the running sets in proportion to their size (the
/// largest first, newer first among equals when growing, older first when shrinking; rounding
/// leftovers go to the largest). `deployed` is the Deployment's `status.replicas`, the size
/// before the change when a set does not say it. Answers the sets to write: those whose
/// replicas change, and running ones whose annotations still name the old size.
pub fn proportional(
    desired: i32,
    max_surge: i32,
    rolling: bool,
    deployed: i32,
    new: Option<&Set>,
    old: &[Set],
) -> Vec<(String, i32)> {
    // Oldest to newest: the position is the age.
    let all: Vec<&Set> = old.iter().chain(new).collect();
    let mut active: Vec<(usize, &Set)> = all
        .iter()
        .enumerate()
        .filter(|(_, s)| s.replicas > 0)
        .map(|(i, s)| (i, *s))
        .collect();
    let write = |s: &Set, n: i32| {
        let stale = s.desired_then != Some(desired) || s.max_then != Some(desired + max_surge);
        (s.replicas != n || stale).then(|| (s.name.clone(), n))
    };
    match active.len() {
        0 => {
            return all
                .last()
                .and_then(|s| write(s, desired))
                .into_iter()
                .collect()
        }
        1 => return write(active[0].1, desired).into_iter().collect(),
        _ => {}
    }
    if let Some(n) = new {
        let saturated =
            n.replicas == desired && n.desired_then == Some(desired) && n.available == desired;
        if saturated {
            return active
                .iter()
                .filter(|(_, s)| s.name != n.name)
                .filter_map(|(_, s)| write(s, 0))
                .collect();
        }
    }
    let total: i32 = active.iter().map(|(_, s)| s.replicas).sum();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = if rolling { allowed - total } else { 0 };
    // Largest first; among equals, newer first when growing, older first when shrinking.
    active.sort_by(|(ia, a), (ib, b)| {
        b.replicas
            .cmp(&a.replicas)
            .then(if to_add > 0 { ib.cmp(ia) } else { ia.cmp(ib) })
    });
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(active.len());
    for (_, s) in &active {
        let before = s
            .max_then
            .filter(|m| *m > 0)
            .or(Some(deployed).filter(|d| *d > 0));
        let fraction = match before {
            _ if to_add == 0 || added == to_add => 0,
            _ if desired == 0 => -s.replicas,
            // Rounded half away from zero, as Go's math.Round.
            Some(before) => {
                (f64::from(s.replicas) * f64::from(allowed) / f64::from(before)).round() as i32
                    - s.replicas
            }
            None => 0,
        };
        let room = to_add - added;
        let share = if to_add > 0 {
            fraction.min(room)
        } else {
            fraction.max(room)
        };
        added += share;
        sizes.push(s.replicas + share);
    }
    // Leftovers from rounding go to the largest set.
    sizes[0] = (sizes[0] + to_add - added).max(0);
    active
        .iter()
        .zip(sizes)
        .filter_map(|((_, s), n)| write(s, n))
        .collect()
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
            desired_then: None,
            max_then: None,
        }
    }

    /// A set last scaled for a Deployment of `desired` replicas with a surge of `surge`.
    fn scaled(name: &str, replicas: i32, desired: i32, surge: i32) -> Set {
        Set {
            desired_then: Some(desired),
            max_then: Some(desired + surge),
            ..set(name, replicas, replicas)
        }
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // Kubernetes' documented example: 10 replicas, maxSurge 3, a rollout stuck with 8 old
        // and 5 new pods, scaled to 15: the 5 extra go 3 to the old set and 2 to the new one.
        let old = [scaled("old", 8, 10, 3)];
        let new = scaled("new", 5, 10, 3);
        assert!(is_scaling_event(15, &[&old[0], &new]));
        assert!(!is_scaling_event(10, &[&old[0], &new]));
        let mut got = proportional(15, 3, true, 13, Some(&new), &old);
        got.sort();
        assert_eq!(got, [("new".into(), 7), ("old".into(), 11)]);
        // Scaled down: 13 -> 5 + 3 surge, the larger set losing more.
        let mut got = proportional(5, 3, true, 13, Some(&new), &old);
        got.sort();
        assert_eq!(got, [("new".into(), 3), ("old".into(), 5)]);
        // To zero: every set goes.
        let mut got = proportional(0, 0, true, 13, Some(&new), &old);
        got.sort();
        assert_eq!(got, [("new".into(), 0), ("old".into(), 0)]);
        // One running set takes everything; none running: the newest.
        assert_eq!(
            proportional(5, 2, true, 3, Some(&set("new", 0, 0)), &[set("old", 3, 3)]),
            [("old".into(), 5)]
        );
        assert_eq!(
            proportional(5, 2, true, 0, Some(&set("new", 0, 0)), &[set("old", 0, 0)]),
            [("new".into(), 5)]
        );
        // A saturated new set: the old ones go.
        let full = scaled("new", 3, 3, 1);
        assert_eq!(
            proportional(3, 1, true, 4, Some(&full), &[set("old", 1, 1)]),
            [("old".into(), 0)]
        );
        // Recreate does not share; only the annotations are brought up to date.
        let mut got = proportional(15, 0, false, 13, Some(&new), &old);
        got.sort();
        assert_eq!(got, [("new".into(), 5), ("old".into(), 8)]);
        assert!(proportional(10, 3, false, 13, Some(&new), &old).is_empty());
        // Without annotations the Deployment's own count is the size before.
        let mut got = proportional(
            20,
            0,
            true,
            10,
            Some(&set("new", 5, 5)),
            &[set("old", 5, 5)],
        );
        got.sort();
        assert_eq!(got, [("new".into(), 10), ("old".into(), 10)]);
        // Equal sets growing by an odd number: the newer one gets the leftover.
        let mut got = proportional(
            11,
            0,
            true,
            10,
            Some(&scaled("new", 5, 10, 0)),
            &[scaled("old", 5, 10, 0)],
        );
        got.sort();
        assert_eq!(got, [("new".into(), 6), ("old".into(), 5)]);
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
