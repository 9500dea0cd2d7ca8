//! Cluster IPs and node ports: claimed by keys in the store, in the same transaction that writes
//! the Service holding them, so a value is never given twice and is released with its Service.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bytes::Bytes;
use serde_json::Value;
use skiff_api::kinds::Kind;
use skiff_api::service::{self, Held, ServiceRanges};
use skiff_store::{Op, RangeRequest, Store, StoreError};

use crate::registry::rejection;
use crate::status::ApiError;

const IPS: &str = "/registry/ranges/serviceips/";
const NODE_PORTS: &str = "/registry/ranges/servicenodeports/";

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IPS}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{NODE_PORTS}{port}")
}

pub fn is_service(kind: &Kind) -> bool {
    kind.group.is_empty() && kind.kind == "Service"
}

/// Whether a failed claim was on one of the ranges' keys.
pub fn is_claim(key: &str) -> bool {
    key.starts_with(IPS) || key.starts_with(NODE_PORTS)
}

fn keys(held: &Held) -> BTreeSet<String> {
    held.ip
        .map(ip_key)
        .into_iter()
        .chain(held.node_ports.iter().map(|p| port_key(*p)))
        .collect()
}

async fn taken(store: &dyn Store) -> Result<(BTreeSet<Ipv4Addr>, BTreeSet<u16>), ApiError> {
    let suffixes = |prefix: &str| {
        let prefix = prefix.to_string();
        async move {
            let resp = store
                .range(RangeRequest::prefix(prefix.clone()))
                .await
                .map_err(ApiError::from_store)?;
            Ok::<Vec<String>, ApiError>(
                resp.kvs
                    .iter()
                    .map(|kv| kv.key[prefix.len()..].to_string())
                    .collect(),
            )
        }
    };
    let ips = suffixes(IPS)
        .await?
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let ports = suffixes(NODE_PORTS)
        .await?
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok((ips, ports))
}

/// Defaults, checks and fills a Service being created (`old` is `None`) or updated, and answers
/// the store operations claiming its new values and releasing those it dropped. `owner` is the
/// Service's store key, kept as the claims' value.
pub async fn prepare(
    store: &dyn Store,
    ranges: &ServiceRanges,
    kind: &'static Kind,
    old: Option<&Value>,
    obj: &mut Value,
    owner: &str,
) -> Result<Vec<Op>, ApiError> {
    let name = skiff_api::object::name(obj).to_string();
    service::set_defaults(obj);
    if let Some(old) = old {
        service::carry_over(old, obj);
    }
    let errors = service::validate(obj, ranges);
    if !errors.is_empty() {
        return Err(rejection(
            kind,
            &name,
            skiff_api::strategy::Rejection::Invalid(errors),
        ));
    }
    let had = old.map(service::held).unwrap_or_default();
    let (mut ips, mut ports) = taken(store).await?;
    if let Some(ip) = had.ip {
        ips.remove(&ip);
    }
    for p in &had.node_ports {
        ports.remove(p);
    }
    let seed = uuid::Uuid::new_v4().as_u128() as u32;
    service::assign(obj, ranges, &ips, &ports, seed).map_err(|e| {
        rejection(
            kind,
            &name,
            skiff_api::strategy::Rejection::Invalid(vec![e]),
        )
    })?;
    let (before, after) = (keys(&had), keys(&service::held(obj)));
    let value = Bytes::from(owner.to_string());
    let mut ops: Vec<Op> = after
        .difference(&before)
        .map(|key| Op::Create {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    ops.extend(before.difference(&after).map(|key| Op::Delete {
        key: key.clone(),
        expected: None,
    }));
    Ok(ops)
}

/// The operations releasing what a deleted Service held (claims already gone are skipped).
pub async fn releases(store: &dyn Store, obj: &Value) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::new();
    for key in keys(&service::held(obj)) {
        if store.get(&key, None).await?.kv.is_some() {
            ops.push(Op::Delete {
                key,
                expected: None,
            });
        }
    }
    Ok(ops)
}

/// The claims a Service asks for by value (a given cluster IP or node port), as opposed to
/// values the server chooses.
pub fn claims_asked(obj: &Value) -> BTreeSet<String> {
    keys(&service::held(obj))
}

/// A claim that another Service got first: the given value is taken.
pub fn taken_error(kind: &'static Kind, name: &str, key: &str) -> ApiError {
    let (field, value, what) = match key.strip_prefix(IPS) {
        Some(ip) => (
            "spec.clusterIP".to_string(),
            ip,
            "provided IP is already allocated",
        ),
        None => (
            "spec.ports[*].nodePort".to_string(),
            key.strip_prefix(NODE_PORTS).unwrap_or(key),
            "provided port is already allocated",
        ),
    };
    rejection(
        kind,
        name,
        skiff_api::strategy::Rejection::Invalid(vec![skiff_api::object::FieldError::invalid(
            field, value, what,
        )]),
    )
}
