//! Server-side apply: which fields each manager owns (`metadata.managedFields`, in the FieldsV1
//! form), how an applied configuration merges into the live object, the conflicts it meets
//! with other managers, the fields a manager stops applying, and the ownership an ordinary
//! write gives its writer. Lists follow `strategic::apply_list` (maps by keys, sets, atomic).

use std::collections::{btree_map, BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::object::Lookup;
use crate::schema::{self, Field};
use crate::strategic::{apply_list, ApplyKeys, ApplyList};

/// A path into an object, one step per element, as FieldsV1 writes them: `f:<field>`,
/// `k:<keys as JSON>`, `v:<value as JSON>`.
pub type Path = Vec<String>;

/// A set of paths: what one manager owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

/// Structs that apply treats as one value, as their types declare (`structType=atomic`).
const ATOMIC_TYPES: &[&str] = &["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"];

/// Metadata the server keeps: never owned.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Paths as a tree of their steps, as FieldsV1 writes them.
#[derive(Default)]
struct Tree {
    member: bool,
    children: BTreeMap<String, Tree>,
}

impl Tree {
    fn encode(self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (step, child) in self.children {
            map.insert(step, child.encode());
        }
        Value::Object(map)
    }
}

impl FieldSet {
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains(path)
    }

    /// Whether `path` has paths below it in the set.
    fn has_below(&self, path: &Path) -> bool {
        use std::ops::Bound::{Excluded, Unbounded};
        // Paths below `path` sort right after it.
        self.0
            .range((Excluded(path.clone()), Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    fn remove_all(&mut self, gone: &FieldSet) {
        self.0.retain(|p| !gone.0.contains(p));
    }

    /// The FieldsV1 form: a tree of steps, `{}` for a path with nothing below, `.` for a path
    /// that is owned and has paths below.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Tree::default();
        for path in &self.0 {
            let mut node = &mut root;
            for step in path {
                node = node.children.entry(step.clone()).or_default();
            }
            node.member = true;
        }
        root.encode()
    }

    /// Reads the FieldsV1 form.
    pub fn from_fields_v1(value: &Value) -> FieldSet {
        fn decode(value: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(map) = value.as_object() else {
                return;
            };
            for (step, child) in map {
                if step == "." {
                    out.insert(path.clone());
                    continue;
                }
                path.push(step.clone());
                if child.as_object().is_some_and(Map::is_empty) {
                    out.insert(path.clone());
                } else {
                    decode(child, path, out);
                }
                path.pop();
            }
        }
        let mut out = BTreeSet::new();
        decode(value, &mut Vec::new(), &mut out);
        FieldSet(out)
    }
}

/// A path as Kubernetes prints it in conflicts: `.spec.replicas`,
/// `.spec.template.spec.containers[name="server"].image`, `.metadata.finalizers[="x"]`.
pub fn show(path: &Path) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(field) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = step.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", shown.join(",")));
        } else if let Some(value) = step.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

fn field_step(name: &str) -> String {
    format!("f:{name}")
}

/// The step naming a list item by its keys (a missing key reads as its default); none when a
/// key without a default is missing.
fn key_step(item: &Value, keys: ApplyKeys) -> Option<String> {
    let mut map = Map::new();
    for (key, default) in keys {
        let value = match item.get(*key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => json!((*default)?),
        };
        map.insert((*key).to_string(), value);
    }
    // Keys in name order, as FieldsV1 writes them.
    map.sort_keys();
    Some(format!("k:{}", Value::Object(map)))
}

fn value_step(item: &Value) -> String {
    format!("v:{item}")
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// What the schema says of the value a path leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// An object of the named type (unknown: fields as they come).
    Struct(Option<&'static str>),
    /// A map of values of the named type (unknown: scalars).
    Map(Option<&'static str>),
    /// A list, field `field` of the type `owner`, of items of the named type.
    List {
        owner: Option<&'static str>,
        field: String,
        item: Option<&'static str>,
    },
    Scalar,
}

impl Node {
    /// The node of field `name` of this one; `top` when this is the object itself.
    fn field(&self, name: &str, top: bool) -> Node {
        match self {
            Node::Struct(_) if top && name == "metadata" => Node::Struct(Some(OBJECT_META)),
            Node::Struct(Some(ty)) => match schema::field(ty, name) {
                Some(Field::Object(o)) => Node::Struct(Some(o)),
                Some(Field::Map(item)) => Node::Map(item),
                Some(Field::List(item)) => Node::List {
                    owner: Some(ty),
                    field: name.to_string(),
                    item,
                },
                Some(Field::Scalar) | None => Node::Scalar,
            },
            Node::Struct(None) => Node::Struct(None),
            Node::Map(Some(item)) => Node::Struct(Some(item)),
            _ => Node::Scalar,
        }
    }

    /// How this list merges and is owned.
    fn list(&self) -> ApplyList {
        match self {
            Node::List { owner, field, .. } => apply_list(*owner, field),
            _ => ApplyList::Atomic,
        }
    }

    /// The node of an item of this list.
    fn item(&self) -> Node {
        match self {
            Node::List { item, .. } => item.map_or(Node::Scalar, |t| Node::Struct(Some(t))),
            _ => Node::Scalar,
        }
    }

    fn atomic(&self) -> bool {
        matches!(self, Node::Struct(Some(t)) if ATOMIC_TYPES.contains(t))
    }
}

/// The item of `items` (a list like `list`) that `step` names.
fn position(items: &[Value], list: ApplyList, step: &str) -> Option<usize> {
    items.iter().position(|item| match list {
        ApplyList::Map(keys) => key_step(item, keys).as_deref() == Some(step),
        _ => value_step(item) == step,
    })
}

/// Where a walk of an object puts the paths it finds: whole paths with what they lead to, or a
/// FieldsV1 tree.
trait Paths<'v> {
    /// Marks the path where this is, which leads to `value`.
    fn member(&mut self, value: &'v Value);
    /// Walks on into the step `step`; leaves nothing there when `walk` added no path.
    fn below(&mut self, step: String, walk: impl FnOnce(&mut Self));
}

/// A walk collecting each path with what it leads to. `unique` stays true unless two items of
/// a keyed list have the same keys (what lies below their path is then the first one's).
struct Valued<'a, 'v> {
    path: &'a mut Path,
    out: BTreeMap<Path, &'v Value>,
    unique: bool,
}

impl<'v> Paths<'v> for Valued<'_, 'v> {
    fn member(&mut self, value: &'v Value) {
        match self.out.entry(self.path.clone()) {
            btree_map::Entry::Vacant(place) => {
                place.insert(value);
            }
            btree_map::Entry::Occupied(_) => self.unique = false,
        }
    }

    fn below(&mut self, step: String, walk: impl FnOnce(&mut Self)) {
        self.path.push(step);
        walk(self);
        self.path.pop();
    }
}

/// [`fields_of`] with what each path leads to, and whether no keyed list has two items with
/// the same keys; only below the fields `taken` takes (see [`walk_object`]).
fn valued_fields_of<'v>(
    obj: &'v Value,
    ty: Option<&'static str>,
    status: bool,
    taken: Taken<'_>,
) -> (BTreeMap<Path, &'v Value>, bool) {
    let mut valued = Valued {
        path: &mut Vec::new(),
        out: BTreeMap::new(),
        unique: true,
    };
    walk_object(obj, ty, status, taken, &mut valued);
    (valued.out, valued.unique)
}

impl Paths<'_> for Tree {
    fn member(&mut self, _: &Value) {
        self.member = true;
    }

    fn below(&mut self, step: String, walk: impl FnOnce(&mut Self)) {
        match self.children.entry(step) {
            btree_map::Entry::Occupied(child) => walk(child.into_mut()),
            btree_map::Entry::Vacant(place) => {
                let mut child = Tree::default();
                walk(&mut child);
                if child.member || !child.children.is_empty() {
                    place.insert(child);
                }
            }
        }
    }
}

/// The paths `obj` (an object of the type named `ty`) sets, as its owner would own them: with
/// `status`, those of its status only (what the status subresource writes); else all but its
/// status, and not the server's own metadata.
pub fn fields_of(obj: &Value, ty: Option<&'static str>, status: bool) -> FieldSet {
    FieldSet(
        valued_fields_of(obj, ty, status, &every_field)
            .0
            .into_keys()
            .collect(),
    )
}

/// [`fields_of`] in the FieldsV1 form (`fields_of(..).to_fields_v1()`, found without making
/// each path): what a create gives its writer.
pub fn fields_v1_of(obj: &Value, ty: Option<&'static str>, status: bool) -> Value {
    let mut root = Tree::default();
    walk_object(obj, ty, status, &every_field, &mut root);
    root.encode()
}

/// Which fields of an object a walk goes into, given a field's name (a field of metadata: its
/// name after "metadata") and value.
type Taken<'t> = &'t dyn Fn(&str, Option<&str>, &Value) -> bool;

fn every_field(_: &str, _: Option<&str>, _: &Value) -> bool {
    true
}

/// Walks the fields of `obj` that [`fields_of`] takes, below the top-level fields (and fields
/// of metadata) `taken` takes.
fn walk_object<'v>(
    obj: &'v Value,
    ty: Option<&'static str>,
    status: bool,
    taken: Taken<'_>,
    out: &mut impl Paths<'v>,
) {
    let Some(map) = obj.as_object() else {
        return;
    };
    let root = Node::Struct(ty);
    for (name, value) in map {
        let skip = matches!(name.as_str(), "apiVersion" | "kind") || (name == "status") != status;
        if skip {
            continue;
        }
        let node = root.field(name, true);
        match (name.as_str(), value) {
            ("metadata", Value::Object(meta)) => out.below(field_step(name), |out| {
                for (m, v) in meta {
                    if SERVER_METADATA.contains(&m.as_str()) || !taken(name, Some(m), v) {
                        continue;
                    }
                    out.below(field_step(m), |out| walk(v, &node.field(m, false), out));
                }
            }),
            _ if !taken(name, None, value) => {}
            _ => out.below(field_step(name), |out| walk(value, &node, out)),
        }
    }
}

/// Adds the paths of `value`, found where `out` is.
fn walk<'v>(value: &'v Value, node: &Node, out: &mut impl Paths<'v>) {
    match (node, value) {
        (Node::Struct(_), Value::Object(map)) if !node.atomic() && !map.is_empty() => {
            for (name, child) in map {
                out.below(field_step(name), |out| {
                    walk(child, &node.field(name, false), out)
                });
            }
        }
        (Node::Map(_), Value::Object(map)) => {
            out.member(value);
            for (name, child) in map {
                out.below(field_step(name), |out| {
                    walk(child, &node.field(name, false), out)
                });
            }
        }
        (Node::List { .. }, Value::Array(items)) => match node.list() {
            ApplyList::Atomic => out.member(value),
            ApplyList::Set => {
                out.member(value);
                for v in items {
                    out.below(value_step(v), |out| out.member(v));
                }
            }
            ApplyList::Map(keys) => {
                if items.is_empty() {
                    out.member(value);
                }
                for v in items {
                    let Some(step) = key_step(v, keys) else {
                        continue;
                    };
                    out.below(step, |out| {
                        out.member(v);
                        walk(v, &node.item(), out);
                    });
                }
            }
        },
        _ => out.member(value),
    }
}

/// What `path` leads to in `obj` (of the type named `ty`), if anything.
fn lookup<'a>(obj: &'a Value, ty: Option<&'static str>, path: &[String]) -> Option<&'a Value> {
    let mut here = obj;
    let mut node = Node::Struct(ty);
    for (i, step) in path.iter().enumerate() {
        if let Some(name) = step.strip_prefix("f:") {
            here = here.get(name)?;
            node = node.field(name, i == 0);
        } else {
            let items = here.as_array()?;
            here = &items[position(items, node.list(), step)?];
            node = node.item();
        }
    }
    Some(here)
}

/// Removes what `path` leads to from `obj`, if it is there.
fn remove(obj: &mut Value, ty: Option<&'static str>, path: &[String]) {
    let mut here = obj;
    let mut node = Node::Struct(ty);
    for (i, step) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        if let Some(name) = step.strip_prefix("f:") {
            if last {
                if let Some(map) = here.as_object_mut() {
                    map.shift_remove(name);
                }
                return;
            }
            let Some(next) = here.get_mut(name) else {
                return;
            };
            here = next;
            node = node.field(name, i == 0);
        } else {
            let Some(items) = here.as_array_mut() else {
                return;
            };
            let Some(at) = position(items, node.list(), step) else {
                return;
            };
            if last {
                items.remove(at);
                return;
            }
            here = &mut items[at];
            node = node.item();
        }
    }
}

/// Merges the applied `config` into `live`, as server-side apply does: objects and maps field
/// by field, lists by their apply type (maps by key, sets by value), the rest replaced.
fn merge(live: &mut Value, config: &Value, node: &Node) {
    match (node, live.is_object(), config) {
        (Node::Struct(_) | Node::Map(_), true, Value::Object(fields)) if !node.atomic() => {
            let map = live.as_object_mut().expect("checked above");
            for (name, value) in fields {
                let child = node.field(name, false);
                match map.get_mut(name) {
                    Some(existing) => merge(existing, value, &child),
                    None => {
                        map.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        (Node::List { .. }, _, Value::Array(applied)) if live.is_array() => {
            let list = node.list();
            let items = live.as_array_mut().expect("checked above");
            match list {
                ApplyList::Atomic => *items = applied.clone(),
                ApplyList::Set => {
                    for v in applied {
                        if !items.contains(v) {
                            items.push(v.clone());
                        }
                    }
                }
                ApplyList::Map(keys) => {
                    for v in applied {
                        let at = key_step(v, keys).and_then(|k| position(items, list, &k));
                        match at {
                            Some(at) => merge(&mut items[at], v, &node.item()),
                            None => items.push(v.clone()),
                        }
                    }
                }
            }
        }
        _ => *live = config.clone(),
    }
}

/// One entry of `managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
    /// The subresource written through (`status`, `scale`); none for the object itself.
    pub subresource: Option<String>,
}

impl Entry {
    pub fn from_json(v: &Value) -> Entry {
        let text = |f: &str| v[f].as_str().unwrap_or("").to_string();
        Entry {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            time: text("time"),
            fields: FieldSet::from_fields_v1(&v["fieldsV1"]),
            subresource: v["subresource"].as_str().map(str::to_string),
        }
    }

    pub fn to_json(&self) -> Value {
        entry_json(
            [
                &self.manager,
                &self.operation,
                &self.api_version,
                &self.time,
            ],
            self.fields.to_fields_v1(),
            self.subresource.as_deref(),
        )
    }

    /// Whether this is the entry of `writer`'s `operation`s.
    fn is(&self, writer: &Writer<'_>, operation: &str) -> bool {
        self.manager == writer.manager
            && self.operation == operation
            && self.subresource.as_deref() == writer.subresource
    }

    /// How Kubernetes names the manager in conflicts.
    fn shown(&self) -> String {
        let mut shown = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            shown.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            shown.push_str(&format!(" using {}", self.api_version));
        }
        shown
    }
}

/// A `managedFields` entry of `[manager, operation, apiVersion, time]`.
fn entry_json(names: [&str; 4], fields_v1: Value, subresource: Option<&str>) -> Value {
    let [manager, operation, api_version, time] = names;
    // Built field by field: `json!` would serialize `fields_v1` into a copy of itself.
    let mut v = Map::with_capacity(7);
    v.insert("manager".into(), manager.into());
    v.insert("operation".into(), operation.into());
    v.insert("apiVersion".into(), api_version.into());
    v.insert("time".into(), time.into());
    v.insert("fieldsType".into(), "FieldsV1".into());
    v.insert("fieldsV1".into(), fields_v1);
    if let Some(sub) = subresource {
        v.insert("subresource".into(), sub.into());
    }
    Value::Object(v)
}

/// The entries of an object's `managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.lookup("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(Entry::from_json).collect())
        .unwrap_or_default()
}

/// Writes `entries` into `obj`'s metadata (none: the field goes), in Kubernetes' order: Apply
/// before Update, then oldest first, then by manager, version and subresource.
pub fn set_entries(obj: &mut Value, entries: &[Entry]) {
    set_managed(obj, entries.iter().map(Entry::to_json).collect());
}

/// [`set_entries`] of entries in their JSON form.
fn set_managed(obj: &mut Value, mut list: Vec<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.shift_remove("managedFields");
        return;
    }
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or("").to_string();
    list.sort_by_cached_key(|e| {
        (
            text(e, "operation"),
            text(e, "time"),
            text(e, "manager"),
            text(e, "apiVersion"),
            text(e, "subresource"),
        )
    });
    meta.insert("managedFields".into(), Value::Array(list));
}

/// Whether the FieldsV1 tree `fields` owns any of `paths`.
fn owns_any(fields: &Value, paths: &FieldSet) -> bool {
    paths.paths().any(|path| {
        let mut node = fields;
        for step in path {
            match node.get(step) {
                Some(below) => node = below,
                None => return false,
            }
        }
        node.as_object()
            .is_some_and(|m| m.is_empty() || m.contains_key("."))
    })
}

/// Who writes, and how the object is typed.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    /// The group-version written through (`apps/v1`).
    pub api_version: &'a str,
    /// The object's type in the schema.
    pub ty: Option<&'static str>,
    /// Now, RFC 3339.
    pub now: &'a str,
    /// The subresource written through (`status`, `scale`), if any. Through `status` the
    /// writer owns status fields only; otherwise anything but the status.
    pub subresource: Option<&'a str>,
}

impl Writer<'_> {
    fn status(&self) -> bool {
        self.subresource == Some("status")
    }

    /// This writer's `managedFields` entry for `operation`s, owning `fields_v1`, as of now.
    fn entry(&self, operation: &str, fields_v1: Value) -> Value {
        let names = [self.manager, operation, self.api_version, self.now];
        entry_json(names, fields_v1, self.subresource)
    }
}

/// Fields whose applied values differ from other managers', each with the manager.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflicts(pub Vec<(String, Path)>);

impl Conflicts {
    /// Kubernetes' message: `Apply failed with 1 conflict: conflict with "kubectl-patch" using
    /// apps/v1: .spec.replicas`.
    pub fn message(&self) -> String {
        if let [(manager, path)] = self.0.as_slice() {
            return format!(
                "Apply failed with 1 conflict: conflict with {manager}: {}",
                show(path)
            );
        }
        let mut by_manager: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
        for (manager, path) in &self.0 {
            by_manager.entry(manager).or_default().push(path);
        }
        let mut lines = Vec::new();
        for (manager, paths) in by_manager {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {}", show(p))));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.0.len(),
            lines.join("\n")
        )
    }

    /// (manager, field) pairs, as the Status' causes give them.
    pub fn causes(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(m, p)| (format!("conflict with {m}"), show(p)))
            .collect()
    }
}

/// Applies `config` (the applied configuration) to `live` (none: the object is created) for
/// `writer`: the merged object with its new `managedFields`, or the conflicts with other
/// managers' fields (unless `force`, which takes those fields from them). Fields the writer
/// applied before and no longer applies are removed, unless another manager owns them.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    writer: &Writer<'_>,
    force: bool,
) -> Result<Value, Conflicts> {
    let empty = json!({});
    let before = live.unwrap_or(&empty);
    let mut managed = entries(before);
    let applied = fields_of(config, writer.ty, writer.status());
    let mut merged = before.clone();
    merge(
        &mut merged,
        &strip_server_fields(config),
        &Node::Struct(writer.ty),
    );
    // Conflicts: fields another manager owns whose value the configuration changes.
    let mut conflicts = Vec::new();
    for entry in managed.iter().filter(|e| !e.is(writer, "Apply")) {
        for path in applied.paths().filter(|p| entry.fields.contains(p)) {
            if applied.has_below(path) {
                continue;
            }
            if lookup(before, writer.ty, path) != lookup(config, writer.ty, path) {
                conflicts.push((entry.shown(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    let taken = FieldSet(conflicts.into_iter().map(|(_, p)| p).collect());
    for entry in managed.iter_mut() {
        if !entry.is(writer, "Apply") {
            entry.fields.remove_all(&taken);
        }
    }
    // Fields no longer applied go, unless someone else owns them.
    let previous = managed
        .iter()
        .find(|e| e.is(writer, "Apply"))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut dropped: Vec<&Path> = previous
        .paths()
        .filter(|p| !applied.contains(p))
        .filter(|p| {
            !managed
                .iter()
                .any(|e| !e.is(writer, "Apply") && e.fields.contains(p))
        })
        .collect();
    // Deepest first, so that an item's fields go before the item.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        remove(&mut merged, writer.ty, path);
    }
    managed.retain(|e| !e.is(writer, "Apply"));
    managed.push(Entry {
        manager: writer.manager.to_string(),
        operation: "Apply".into(),
        api_version: writer.api_version.to_string(),
        time: writer.now.to_string(),
        fields: applied,
        subresource: writer.subresource.map(str::to_string),
    });
    managed.retain(|e| !e.fields.is_empty());
    set_entries(&mut merged, &managed);
    Ok(merged)
}

/// The configuration without what the server keeps (it is not applied).
fn strip_server_fields(config: &Value) -> Value {
    let mut c = config.clone();
    if let Some(meta) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            if !matches!(*field, "name" | "namespace") {
                meta.shift_remove(*field);
            }
        }
    }
    c
}

/// The paths `writer` changed writing `new` over `old`: those `new` sets that `old` did not,
/// or to another value (where nothing lies below them); and those `old` set that `new` does not.
fn changes(old: &Value, new: &Value, writer: &Writer<'_>) -> (FieldSet, FieldSet) {
    let (ty, status) = (writer.ty, writer.status());
    // A field (or field of metadata) equal on both sides leads to the same paths and values on
    // both: only the others are walked (a status write compares the spec, it does not list it).
    let ((old_paths, old_unique), (new_paths, new_unique)) = (
        valued_fields_of(old, ty, status, &|name, meta, v| {
            differs(new, name, meta, v)
        }),
        valued_fields_of(new, ty, status, &|name, meta, v| {
            differs(old, name, meta, v)
        }),
    );
    if !(old_unique && new_unique) {
        return changes_by_lookup(old, new, writer);
    }
    let mut changed = BTreeSet::new();
    let mut paths = new_paths.iter().peekable();
    while let Some((path, value)) = paths.next() {
        // Paths below `path` sort right after it.
        let leaf = !paths.peek().is_some_and(|(next, _)| next.starts_with(path));
        match old_paths.get(path) {
            Some(was) if !leaf || was == value => {}
            _ => {
                changed.insert(path.clone());
            }
        }
    }
    let removed = old_paths
        .into_keys()
        .filter(|p| !new_paths.contains_key(p))
        .collect();
    (FieldSet(changed), FieldSet(removed))
}

/// Whether `other` has a value other than `value` at its field `name` (its metadata's `meta`).
fn differs(other: &Value, name: &str, meta: Option<&str>, value: &Value) -> bool {
    let there = match meta {
        Some(m) => other.get(name).and_then(|meta| meta.get(m)),
        None => other.get(name),
    };
    there != Some(value)
}

/// [`changes`] found path by path, for objects with list items of the same keys (a path
/// below them leads into the first).
fn changes_by_lookup(old: &Value, new: &Value, writer: &Writer<'_>) -> (FieldSet, FieldSet) {
    let old_set = fields_of(old, writer.ty, writer.status());
    let new_set = fields_of(new, writer.ty, writer.status());
    let changed = FieldSet(
        new_set
            .paths()
            .filter(|p| {
                !old_set.contains(p)
                    || (!new_set.has_below(p)
                        && lookup(old, writer.ty, p) != lookup(new, writer.ty, p))
            })
            .cloned()
            .collect(),
    );
    let removed = FieldSet(
        old_set
            .paths()
            .filter(|p| !new_set.contains(p))
            .cloned()
            .collect(),
    );
    (changed, removed)
}

/// The `managedFields` after an ordinary write (create, update, patch) by `writer` of `new` over
/// `old` (none: a create): the writer owns what it changed, taken from the others, and what it
/// removed is nobody's any more. A write that sets `managedFields` itself keeps them as given.
pub fn update(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>) {
    let kept = old.and_then(|o| o.lookup("/metadata/managedFields"));
    let given = new.lookup("/metadata/managedFields");
    if old.is_some() && given.is_some() && given != kept {
        // Set by the client (kubectl's move from client-side to server-side apply).
        let given: Vec<Entry> = entries(new)
            .into_iter()
            .filter(|e| !e.fields.is_empty())
            .collect();
        set_entries(new, &given);
        return;
    }
    let Some(before) = old else {
        // A create: the writer owns all it sets.
        let fields = fields_v1_of(new, writer.ty, writer.status());
        let owns = fields.as_object().is_some_and(|f| !f.is_empty());
        let mine = owns.then(|| writer.entry("Update", fields));
        set_managed(new, mine.into_iter().collect());
        return;
    };
    // The stored entries, taken from `new` when it carries them unchanged (a patch).
    let stored: Vec<Value> = match new.pointer_mut("/metadata/managedFields") {
        Some(list) => match list.take() {
            Value::Array(list) => list,
            _ => Vec::new(),
        },
        None => kept.and_then(Value::as_array).cloned().unwrap_or_default(),
    };
    let (changed, removed) = changes(before, new, writer);
    if changed.is_empty() && removed.is_empty() {
        set_managed(new, stored);
        return;
    }
    // Entries that own none of the paths changed or removed stay as stored, unparsed.
    let mut managed = Vec::with_capacity(stored.len() + 1);
    let mut mine = None;
    for value in stored {
        let is_mine = value["manager"] == writer.manager
            && value["operation"] == "Update"
            && value["subresource"].as_str() == writer.subresource;
        let fields = &value["fieldsV1"];
        if !is_mine && !owns_any(fields, &changed) && !owns_any(fields, &removed) {
            managed.push(value);
            continue;
        }
        let mut entry = Entry::from_json(&value);
        entry.fields.remove_all(&removed);
        if is_mine {
            mine = Some(entry);
        } else {
            entry.fields.remove_all(&changed);
            if !entry.fields.is_empty() {
                managed.push(entry.to_json());
            }
        }
    }
    let mut mine = mine.unwrap_or_else(|| Entry {
        manager: writer.manager.to_string(),
        operation: "Update".into(),
        api_version: String::new(),
        time: String::new(),
        fields: FieldSet::default(),
        subresource: writer.subresource.map(str::to_string),
    });
    mine.fields.0.extend(changed.0);
    mine.time = writer.now.to_string();
    mine.api_version = writer.api_version.to_string();
    if !mine.fields.is_empty() {
        managed.push(mine.to_json());
    }
    set_managed(new, managed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment_type() -> Option<&'static str> {
        schema::root(crate::kinds::find("apps", "v1", "deployments").unwrap())
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            ty: deployment_type(),
            now: "2026-12-01T00:00:00Z",
            subresource: None,
        }
    }

    fn web(replicas: i64, labels: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "server", "image": "my-api:v2.1",
                        "ports": [{"containerPort": 8080}]}]}}}})
    }

    /// `web(replicas, labels)` applied by `manager` over `live`.
    fn applied(
        live: Option<&Value>,
        replicas: i64,
        labels: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, Conflicts> {
        apply(live, &web(replicas, labels), &writer(manager), force)
    }

    fn owners(obj: &Value) -> Vec<(String, String)> {
        entries(obj)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn fields_are_written_as_kubernetes_writes_them() {
        let set = fields_of(&web(3, json!({"app": "web"})), deployment_type(), false);
        let want = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"server\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}}}}}}}}});
        assert_eq!(set.to_fields_v1(), want);
        assert_eq!(FieldSet::from_fields_v1(&want), set);
        let port = set
            .paths()
            .find(|p| p.last().is_some_and(|s| s == "f:containerPort"))
            .unwrap();
        assert_eq!(
            show(port),
            ".spec.template.spec.containers[name=\"server\"].ports[containerPort=8080,protocol=\"TCP\"].containerPort"
        );
    }

    #[test]
    fn a_create_s_fields_v1_found_directly_are_its_paths() {
        let pod_type = schema::root(crate::kinds::find("", "v1", "pods").unwrap());
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "web"}, "annotations": {},
                "finalizers": ["a/b", "c/d"], "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "rs", "uid": "x", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["x", "y"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom":
                        {"secretKeyRef": {"name": "db-creds", "key": "password"}}}],
                    "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                    "resources": {"requests": {"cpu": "100m"}, "limits": {}}}],
                "tolerations": [], "nodeSelector": {"disk": "ssd"}, "volumes": [],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In",
                        "values": ["v"]}]}]}}}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "podIPs": [{"ip": "10.0.0.1"}]}});
        let cases = [
            (web(3, json!({"app": "web"})), deployment_type()),
            (web(1, json!({})), deployment_type()),
            (pod, pod_type),
            (
                json!({"metadata": {"name": "only-server-fields", "uid": "u"}}),
                pod_type,
            ),
            (json!({"metadata": null, "spec": {}}), pod_type),
            (
                json!({"data": {"k": "v"}, "metadata": {"labels": {"a": "b"}}}),
                None,
            ),
        ];
        for (obj, ty) in cases {
            for status in [false, true] {
                assert_eq!(
                    fields_v1_of(&obj, ty, status),
                    fields_of(&obj, ty, status).to_fields_v1(),
                    "{obj} (status: {status})"
                );
            }
        }
    }

    #[test]
    fn changes_found_in_one_walk_are_those_found_path_by_path() {
        let base = web(3, json!({"app": "web", "tier": "api"}));
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            f(&mut v);
            v
        };
        let containers = "/spec/template/spec/containers";
        let news = [
            base.clone(),
            edit(&|v| v["spec"]["replicas"] = json!(5)),
            edit(&|v| v["metadata"]["labels"] = json!({})),
            edit(&|v| v["metadata"]["labels"] = json!({"app": "web", "new": "x"})),
            edit(&|v| {
                v.pointer_mut(containers).unwrap()[0]["ports"] = json!([{"containerPort": 9090}])
            }),
            edit(&|v| {
                v.pointer_mut(containers)
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "sidecar", "image": "s", "args": ["a", "b"]}))
            }),
            edit(&|v| v.pointer_mut(containers).unwrap()[0]["args"] = json!(["x"])),
            edit(&|v| v.pointer_mut(containers).unwrap()[0]["ports"] = json!([])),
            edit(&|v| {
                v["status"] = json!({"replicas": 3, "conditions": [
                    {"type": "Available", "status": "True"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
            }),
            // Two items of the same keys: the path below leads into the first.
            edit(&|v| {
                v.pointer_mut(containers)
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "server", "image": "other", "tty": true}))
            }),
        ];
        for (old, new) in news.iter().flat_map(|a| news.iter().map(move |b| (a, b))) {
            for w in [
                writer("m"),
                Writer {
                    subresource: Some("status"),
                    ..writer("m")
                },
            ] {
                assert_eq!(
                    changes(old, new, &w),
                    changes_by_lookup(old, new, &w),
                    "{old} -> {new} (status: {})",
                    w.status()
                );
            }
        }
    }

    #[test]
    fn applying_creates_merges_and_removes_what_is_no_longer_applied() {
        let created = applied(
            None,
            3,
            json!({"app": "web", "tier": "api"}),
            "kubectl",
            false,
        )
        .unwrap();
        assert_eq!(owners(&created), [("kubectl".into(), "Apply".into())]);
        assert_eq!(created["metadata"]["labels"]["tier"], "api");
        // Another manager's field stays when the applier never set it.
        let mut live = created.clone();
        live["metadata"]["annotations"] = json!({"note": "x"});
        update(Some(&created), &mut live, &writer("kubectl-annotate"));
        // The tier label is no longer applied: it goes; the annotation stays.
        let again = applied(Some(&live), 3, json!({"app": "web"}), "kubectl", false).unwrap();
        assert_eq!(again["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(again["metadata"]["annotations"], json!({"note": "x"}));
        assert_eq!(
            owners(&again),
            [
                ("kubectl".into(), "Apply".into()),
                ("kubectl-annotate".into(), "Update".into())
            ]
        );
        // A field another manager also owns is not removed when the applier drops it.
        let mut shared = again.clone();
        shared["metadata"]["labels"]["tier"] = json!("api");
        update(Some(&again), &mut shared, &writer("kubectl-label"));
        let with = applied(
            Some(&shared),
            3,
            json!({"app": "web", "tier": "api"}),
            "kubectl",
            false,
        )
        .unwrap();
        let without = applied(Some(&with), 3, json!({"app": "web"}), "kubectl", false).unwrap();
        assert_eq!(without["metadata"]["labels"]["tier"], "api");
    }

    #[test]
    fn conflicts_name_the_other_manager_and_force_takes_the_fields() {
        let created = applied(None, 3, json!({"app": "web"}), "kubectl", false).unwrap();
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        update(Some(&created), &mut scaled, &writer("kubectl-patch"));
        // The same value applied again: shared, no conflict.
        let same = applied(Some(&scaled), 5, json!({"app": "web"}), "other", false).unwrap();
        assert_eq!(same["spec"]["replicas"], 5);
        let err = applied(Some(&scaled), 3, json!({"app": "web"}), "kubectl", false).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using apps/v1: .spec.replicas"
        );
        assert_eq!(
            err.causes(),
            [(
                "conflict with \"kubectl-patch\" using apps/v1".to_string(),
                ".spec.replicas".to_string()
            )]
        );
        let forced = applied(Some(&scaled), 3, json!({"app": "web"}), "kubectl", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        // kubectl-patch owned nothing else: its entry goes.
        assert_eq!(owners(&forced), [("kubectl".into(), "Apply".into())]);
        // Two conflicts with two managers.
        let mut relabelled = forced.clone();
        relabelled["metadata"]["labels"]["app"] = json!("other");
        update(Some(&forced), &mut relabelled, &writer("kubectl-label"));
        let mut both = relabelled.clone();
        both["spec"]["replicas"] = json!(7);
        update(Some(&relabelled), &mut both, &writer("kubectl-scale"));
        let err = applied(Some(&both), 3, json!({"app": "web"}), "kubectl", false).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 2 conflicts: conflicts with \"kubectl-label\" using apps/v1:\n- .metadata.labels.app\nconflicts with \"kubectl-scale\" using apps/v1:\n- .spec.replicas"
        );
    }

    #[test]
    fn writes_own_what_they_change() {
        let mut created = web(3, json!({"app": "web"}));
        update(None, &mut created, &writer("kubectl-create"));
        assert_eq!(
            owners(&created),
            [("kubectl-create".into(), "Update".into())]
        );
        let mut image = created.clone();
        image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("my-api:v2.2");
        update(Some(&created), &mut image, &writer("kubectl-set"));
        let set = &entries(&image)[1];
        assert_eq!(set.manager, "kubectl-set");
        assert_eq!(
            set.fields.paths().map(show).collect::<Vec<_>>(),
            [".spec.template.spec.containers[name=\"server\"].image"]
        );
        assert!(!entries(&image)[0]
            .fields
            .paths()
            .any(|p| show(p).ends_with(".image")));
        // Nothing changed: nothing moves, not even the time.
        let mut same = image.clone();
        update(
            Some(&image),
            &mut same,
            &Writer {
                now: "2026-12-02T00:00:00Z",
                ..writer("kubectl-set")
            },
        );
        assert_eq!(same, image);
        // Managed fields set by the client are kept as given.
        let mut given = image.clone();
        given["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply",
            "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
        update(
            Some(&image),
            &mut given,
            &writer("kubectl-client-side-apply"),
        );
        assert_eq!(owners(&given), [("kubectl".into(), "Apply".into())]);
    }

    #[test]
    fn status_writes_own_status_fields_apart() {
        let status = |manager| Writer {
            subresource: Some("status"),
            ..writer(manager)
        };
        let mut live = web(3, json!({"app": "web"}));
        update(None, &mut live, &writer("deployer"));
        let mut counted = live.clone();
        counted["status"] = json!({"replicas": 3, "readyReplicas": 1});
        update(
            Some(&live),
            &mut counted,
            &status("kube-controller-manager"),
        );
        let mine = entries(&counted);
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[1].subresource.as_deref(), Some("status"));
        let owned: Vec<String> = mine[1].fields.paths().map(show).collect();
        assert_eq!(owned, [".status.readyReplicas", ".status.replicas"]);
        // Another status writer takes what it changes; the object's writers keep theirs.
        let mut ready = counted.clone();
        ready["status"]["readyReplicas"] = json!(3);
        update(Some(&counted), &mut ready, &status("kubelet"));
        let owners: Vec<(String, Vec<String>)> = entries(&ready)
            .iter()
            .map(|e| (e.manager.clone(), e.fields.paths().map(show).collect()))
            .collect();
        assert_eq!(owners[0].0, "deployer");
        assert!(owners[0].1.iter().all(|p| !p.starts_with(".status")));
        assert_eq!(
            owners[1],
            (
                "kube-controller-manager".into(),
                vec![".status.replicas".into()]
            )
        );
        assert_eq!(
            owners[2],
            ("kubelet".into(), vec![".status.readyReplicas".into()])
        );
        // Applying through status owns the applied status fields only, and meets the others'.
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 9}, "status": {"replicas": 5}});
        let err = apply(Some(&ready), &config, &status("tool"), false).unwrap_err();
        assert!(
            err.message().contains(
                "conflict with \"kube-controller-manager\" with subresource \"status\" using apps/v1: .status.replicas"
            ),
            "{}",
            err.message()
        );
        let applied = apply(Some(&ready), &config, &status("tool"), true).unwrap();
        let tool = entries(&applied)
            .into_iter()
            .find(|e| e.manager == "tool")
            .unwrap();
        assert_eq!(
            (tool.operation.as_str(), tool.subresource.as_deref()),
            ("Apply", Some("status"))
        );
        assert_eq!(
            tool.fields.paths().map(show).collect::<Vec<_>>(),
            [".status.replicas"]
        );
    }
}
