//! Kubernetes API semantics as pure functions: no I/O, no HTTP, no store.
//!
//! What is here today: the syntax rules for names, label keys and values ([`names`]), label
//! selectors ([`label_selector`]) and field selectors ([`field_selector`]). The kinds table, validation, defaulting and patches of the API
//! server issues grow here too.

pub mod field_selector;
pub mod kinds;
pub mod label_selector;
pub mod names;

pub use field_selector::{FieldRequirement, FieldSelector, FieldSelectorError};
pub use label_selector::{LabelSelector, Operator, Requirement, SelectorError};
