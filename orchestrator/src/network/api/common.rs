//! What the network handlers share: the service context, list filters
//! (Neutron's `?field=value`, repeatable), and answers.

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::network::service::Cx;

/// The query of a list: every `key=value` pair, repeats kept.
pub type ListQuery = Vec<(String, String)>;

/// The service context of a request.
pub fn cx<'a>(st: &'a AppState, ctx: &'a AuthContext) -> Cx<'a> {
    Cx {
        auth: ctx,
        cfg: &st.cfg,
        host: &st.network.host_name,
    }
}

/// Query keys that are not filters.
const NOT_FILTERS: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "page_reverse",
    "all_tenants",
    "all_projects",
];

fn value_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => {
            want.eq_ignore_ascii_case(if *b { "true" } else { "false" })
                || want == if *b { "1" } else { "0" }
        }
        Value::Number(n) => n.to_string() == want,
        Value::Null => want.is_empty() || want == "None" || want == "null",
        _ => true,
    }
}

/// Whether a port's `fixed_ips` match every `fixed_ips=key=value` asked
/// (openstacksdk sends `subnet_id=...`, `ip_address=...`,
/// `ip_address_substr=...`).
fn fixed_ips_match(item: &Value, conds: &[&str]) -> bool {
    let ips = item["fixed_ips"].as_array().cloned().unwrap_or_default();
    conds.iter().all(|c| {
        let (k, v) = c.split_once('=').unwrap_or(("ip_address", c));
        ips.iter().any(|ip| match k {
            "ip_address_substr" => ip["ip_address"].as_str().is_some_and(|a| a.contains(v)),
            _ => ip[k].as_str() == Some(v),
        })
    })
}

/// Keeps the items matching the query: each key's values are alternatives
/// (`?id=a&id=b`), keys must all match; unknown keys are ignored.
pub fn filter(items: Vec<Value>, q: &ListQuery) -> Vec<Value> {
    let mut keys: Vec<&str> = q
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !NOT_FILTERS.contains(k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    items
        .into_iter()
        .filter(|item| {
            keys.iter().all(|k| {
                let wants: Vec<&str> = q
                    .iter()
                    .filter(|(qk, _)| qk == k)
                    .map(|(_, v)| v.as_str())
                    .collect();
                if *k == "fixed_ips" {
                    return fixed_ips_match(item, &wants);
                }
                match item.get(*k) {
                    Some(v) => wants.iter().any(|w| value_matches(v, w)),
                    None => true,
                }
            })
        })
        .collect()
}

/// Keeps only the `?fields=` asked for (all when none are).
pub fn project(items: Vec<Value>, q: &ListQuery) -> Vec<Value> {
    let fields: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "fields")
        .map(|(_, v)| v.as_str())
        .collect();
    if fields.is_empty() {
        return items;
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .filter(|(k, _)| fields.contains(&k.as_str()))
                    .collect(),
            ),
            other => other,
        })
        .collect()
}

/// `{collection: [...]}`, filtered, with the fields asked for.
pub fn list_answer(collection: &str, items: Vec<Value>, q: &ListQuery) -> Json<Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        collection.into(),
        Value::Array(project(filter(items, q), q)),
    );
    Json(Value::Object(m))
}

/// `{key: item}` with 201.
pub fn created(key: &str, item: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!({ key: item })))
}

/// `{key: item}`.
pub fn one(key: &str, item: Value) -> Json<Value> {
    Json(json!({ key: item }))
}

/// A request body that is JSON: 400 "Bad JSON" otherwise (the handlers take
/// raw bytes so the message is Neutron's).
pub fn json_body(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "Malformed request body: The server could not comply with the request since it \
             is either malformed or otherwise incorrect ({e})."
        ))
    })
}
