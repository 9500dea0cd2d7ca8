//! Which Events a component writes, as Kubernetes' recorders decide it (client-go's event
//! correlator): the same event again raises the count of the one written; events about one
//! object with one reason that differ only in their message are combined into one once ten of
//! them came within ten minutes; and a component records at most 25 events about one object at
//! once, then one every five minutes (the rest are dropped). A ReplicaSet creating 100 pods so
//! writes 25 events rather than 100.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Distinct messages of one reason about one object before they are combined.
const AGGREGATE_AFTER: usize = 10;
/// How long after the last of them similar events still count toward combining.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Events one component may record about one object at once...
const BURST: f64 = 25.0;
/// ...and then one each this long.
const REFILL: Duration = Duration::from_secs(300);
/// Entries each table keeps before it starts afresh: forgetting costs only a new event
/// instead of a higher count, or a burst allowed again.
const REMEMBERED: usize = 4096;
/// The prefix of a combined event's message.
pub const COMBINED: &str = "(combined from similar events): ";

/// One occurrence of an event a component records.
#[derive(Clone, Copy, Debug)]
pub struct Occurrence<'a> {
    /// The involved object, as anything that names it uniquely (its uid).
    pub object: &'a str,
    pub warning: bool,
    pub reason: &'a str,
    pub message: &'a str,
}

/// What to write for an occurrence.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Nothing: the object's budget is spent.
    Skip,
    /// A new Event named `name`.
    Create { name: String, message: String },
    /// The Event `name` again: its count becomes `count`, its message `message`.
    Update {
        name: String,
        count: i64,
        message: String,
    },
}

/// Events about one object with one reason, type: the messages seen and when last.
type Group = (String, bool, String);

/// The Event an occurrence counts toward: one per distinct message, or the combined one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Written {
    Single(Group, String),
    Combined(Group),
}

/// A token bucket.
struct Budget {
    tokens: f64,
    at: Instant,
}

/// One component's memory of the events it recorded.
#[derive(Default)]
pub struct Correlator {
    groups: HashMap<Group, (HashSet<String>, Instant)>,
    written: HashMap<Written, (String, i64)>,
    budgets: HashMap<String, Budget>,
}

fn bounded<K, V>(table: &mut HashMap<K, V>) {
    if table.len() >= REMEMBERED {
        table.clear();
    }
}

impl Correlator {
    /// Decides what `occurrence` at `now` writes; `name` names a new Event.
    pub fn correlate(
        &mut self,
        occurrence: Occurrence<'_>,
        now: Instant,
        name: impl FnOnce() -> String,
    ) -> Decision {
        let group: Group = (
            occurrence.object.to_string(),
            occurrence.warning,
            occurrence.reason.to_string(),
        );
        let (written, message) = self.aggregate(group, occurrence.message, now);
        bounded(&mut self.written);
        let decision = match self.written.get_mut(&written) {
            Some((name, count)) => {
                *count += 1;
                Decision::Update {
                    name: name.clone(),
                    count: *count,
                    message,
                }
            }
            None => {
                let name = name();
                self.written.insert(written, (name.clone(), 1));
                Decision::Create { name, message }
            }
        };
        // As Kubernetes does, an occurrence over budget still counts toward the Event's
        // count, which the next one within budget writes.
        if self.spend(occurrence.object, now) {
            decision
        } else {
            Decision::Skip
        }
    }

    /// The Event `message` counts toward in `group`, and the message to write.
    fn aggregate(&mut self, group: Group, message: &str, now: Instant) -> (Written, String) {
        bounded(&mut self.groups);
        let (messages, last) = self
            .groups
            .entry(group.clone())
            .or_insert_with(|| (HashSet::new(), now));
        if now.duration_since(*last) > AGGREGATE_WINDOW {
            messages.clear();
        }
        *last = now;
        messages.insert(message.to_string());
        if messages.len() < AGGREGATE_AFTER {
            return (
                Written::Single(group, message.to_string()),
                message.to_string(),
            );
        }
        // Kept just under the threshold: the set does not grow with every new message.
        let any = messages.iter().next().cloned();
        if let Some(any) = any {
            messages.remove(&any);
        }
        (Written::Combined(group), format!("{COMBINED}{message}"))
    }

    /// Whether `object`'s budget allows another event at `now`, spending it if so.
    fn spend(&mut self, object: &str, now: Instant) -> bool {
        if !self.budgets.contains_key(object) {
            bounded(&mut self.budgets);
        }
        let budget = self.budgets.entry(object.to_string()).or_insert(Budget {
            tokens: BURST,
            at: now,
        });
        let refilled = now.duration_since(budget.at).as_secs_f64() / REFILL.as_secs_f64();
        budget.tokens = (budget.tokens + refilled).min(BURST);
        budget.at = now;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each of `messages` (about object `o`, reason `R`, `seconds` apart) writes, in
    /// short: `+name message`, `name#count message`, or `-`.
    fn check(messages: &[&str], seconds: u64) -> Vec<String> {
        let mut c = Correlator::default();
        let start = Instant::now();
        let mut n = 0;
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = start + Duration::from_secs(seconds * i as u64);
                let occurrence = Occurrence {
                    object: "o",
                    warning: false,
                    reason: "R",
                    message: m,
                };
                match c.correlate(occurrence, at, || {
                    n += 1;
                    format!("e{n}")
                }) {
                    Decision::Skip => "-".to_string(),
                    Decision::Create { name, message } => format!("+{name} {message}"),
                    Decision::Update {
                        name,
                        count,
                        message,
                    } => format!("{name}#{count} {message}"),
                }
            })
            .collect()
    }

    #[test]
    fn the_same_event_again_raises_its_count() {
        assert_eq!(
            check(&["a", "a", "b", "a"], 1),
            ["+e1 a", "e1#2 a", "+e2 b", "e1#3 a"]
        );
    }

    #[test]
    fn the_tenth_distinct_message_starts_a_combined_event() {
        let messages: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
        let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
        let got = check(&messages, 1);
        assert_eq!(got[8], "+e9 m8");
        assert_eq!(got[9], format!("+e10 {COMBINED}m9"));
        assert_eq!(got[10], format!("e10#2 {COMBINED}m10"));
        assert_eq!(got[11], format!("e10#3 {COMBINED}m11"));
    }

    #[test]
    fn messages_far_apart_are_not_combined() {
        let messages: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
        let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
        let got = check(&messages, 601);
        assert_eq!(got[11], "+e12 m11");
    }

    #[test]
    fn an_object_gets_25_events_at_once_then_one_each_five_minutes() {
        let same = ["x"; 30];
        let got = check(&same, 0);
        assert_eq!(got[24], "e1#25 x");
        assert_eq!(got[25..], ["-", "-", "-", "-", "-"]);
        // Spread 13 s apart, the first 25 earn the 26th a token (325 s): it is written, with
        // the count of every occurrence so far.
        let got = check(&same, 13);
        assert_eq!(got[25], "e1#26 x");
        assert_eq!(got[26..], ["-", "-", "-", "-"]);
    }

    #[test]
    fn a_replica_set_creating_100_pods_writes_25_events() {
        let messages: Vec<String> = (0..100).map(|i| format!("Created pod: p{i}")).collect();
        let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
        let got = check(&messages, 0);
        let creates = got.iter().filter(|g| g.starts_with('+')).count();
        let updates = got.iter().filter(|g| g.contains('#')).count();
        assert_eq!((creates, updates), (10, 15));
    }

    #[test]
    fn objects_have_budgets_of_their_own() {
        let mut c = Correlator::default();
        let now = Instant::now();
        for i in 0..30 {
            let o = Occurrence {
                object: "a",
                warning: false,
                reason: "R",
                message: "m",
            };
            c.correlate(o, now, || format!("a{i}"));
        }
        let other = Occurrence {
            object: "b",
            warning: true,
            reason: "R",
            message: "m",
        };
        assert_eq!(
            c.correlate(other, now, || "b".into()),
            Decision::Create {
                name: "b".into(),
                message: "m".into()
            }
        );
    }
}
