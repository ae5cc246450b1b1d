//! What both handler files do to a list: Neutron's query filters (a field
//! equal to one of the given values) and `fields` (only those keys).

use serde_json::Value;

/// The query's values for `key` (a key may repeat: `?id=a&id=b`).
fn values<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A JSON field as a query compares it (`null` matches nothing).
fn as_query_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keeps the items whose every filterable field named in the query equals
/// one of its values, then cuts each to the `fields` asked for (if any).
/// Other query keys (sorting, paging) are ignored.
pub(crate) fn shape(items: Vec<Value>, q: &[(String, String)], filterable: &[&str]) -> Vec<Value> {
    let filters: Vec<(&str, Vec<&str>)> = filterable
        .iter()
        .map(|k| (*k, values(q, k)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let fields = values(q, "fields");
    items
        .into_iter()
        .filter(|item| {
            filters.iter().all(|(k, wanted)| {
                as_query_text(&item[*k]).is_some_and(|have| {
                    wanted.iter().any(|w| {
                        have == *w || (item[*k].is_boolean() && have.eq_ignore_ascii_case(w))
                    })
                })
            })
        })
        .map(|item| match (&item, fields.is_empty()) {
            (Value::Object(obj), false) => Value::Object(
                obj.iter()
                    .filter(|(k, _)| fields.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => item,
        })
        .collect()
}
