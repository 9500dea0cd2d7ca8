//! Kubernetes API semantics as pure functions: no I/O, no HTTP, no store.
//!
//! What is here: the syntax rules for names, label keys and values ([`names`]), label selectors
//! ([`label_selector`]), field selectors ([`field_selector`]), the table of served kinds
//! ([`kinds`]) and their Rust types' schemas ([`schema`]), objects held as JSON ([`object`]),
//! what the server does to an object on create and update ([`strategy`], with [`defaults`] and
//! [`validation`]), conversions between served versions ([`conversion`]), patches ([`patch`],
//! [`strategic`]), server-side apply and field ownership ([`apply`]), Services' addresses ([`service`]), which Events a component writes ([`events`]), IPv4 networks ([`cidr`]), PodDisruptionBudgets ([`disruption`]), resource quantities ([`quantity`]) and
//! `kubectl get` columns ([`table`]).

pub mod apply;
pub mod cidr;
pub mod conversion;
pub mod defaults;
pub mod disruption;
pub mod events;
pub mod field_selector;
pub mod kinds;
pub mod label_selector;
pub mod names;
pub mod object;
pub mod patch;
pub mod quantity;
pub mod schema;
pub mod service;
pub mod strategic;
pub mod strategy;
pub mod table;
pub mod validation;

pub use field_selector::{FieldRequirement, FieldSelector, FieldSelectorError};
pub use label_selector::{LabelSelector, Operator, Requirement, SelectorError};

#[cfg(test)]
mod testing {
    use std::fmt::Display;

    use crate::object::FieldError;

    /// Field errors checked against a list: as many as wanted, each starting with one of
    /// them (`"field: message"`).
    pub fn check_errors(what: &dyn Display, errors: &[FieldError], want: &[&str]) {
        let got: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "{what}: {got:?} lacks {w}"
            );
        }
    }

    /// Table check for parsers: each case is (input, canonical form), or (input, "error: " and a
    /// fragment the error message must contain).
    pub fn check_parse<T: Display, E: Display>(
        cases: &[(&str, &str)],
        parse: impl Fn(&str) -> Result<T, E>,
    ) {
        for (input, want) in cases {
            let got = match parse(input) {
                Ok(parsed) => parsed.to_string(),
                Err(e) => format!("error: {e}"),
            };
            match want.strip_prefix("error: ") {
                Some(fragment) => assert!(
                    got.starts_with("error: ") && got.contains(fragment),
                    "{input:?}: {got}"
                ),
                None => assert_eq!(&got, want, "{input:?}"),
            }
        }
    }
}
