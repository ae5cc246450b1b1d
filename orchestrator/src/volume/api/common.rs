//! What the Block Storage handlers share: the microversion, the project in
//! the URL, query parameters and pagination links.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::policy;
use crate::identity::AuthContext;

/// The lowest microversion we speak.
pub const MIN_VERSION: (u32, u32) = (3, 0);
/// The highest: 3.42 is where an attached volume may be extended; nothing
/// between 3.0 and 3.42 changes a shape we serve, save the snapshot's
/// `user_id` (3.41), which we always show.
pub const MAX_VERSION: (u32, u32) = (3, 42);

/// `3.42`.
pub fn version_str(v: (u32, u32)) -> String {
    format!("{}.{}", v.0, v.1)
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The microversion a request asks for (`OpenStack-API-Version: volume
/// 3.x`, `latest`), 3.0 when it asks none; 406 outside what we speak, 400
/// when unreadable.
pub fn microversion(headers: &HeaderMap) -> ApiResult<(u32, u32)> {
    let Some(raw) = headers
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|v| v.strip_prefix("volume"))
    else {
        return Ok(MIN_VERSION);
    };
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(MAX_VERSION);
    }
    let v = parse_version(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "API Version String {raw} is of invalid format. Must be of format MajorNum.MinorNum."
        ))
    })?;
    if v < MIN_VERSION || v > MAX_VERSION {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Version {raw} is not supported by the API. Minimum is {} and maximum is {}.",
                version_str(MIN_VERSION),
                version_str(MAX_VERSION)
            ),
        ));
    }
    Ok(v)
}

/// Middleware: refuses microversions we do not speak and echoes the one
/// answered with, as Cinder does.
pub async fn version_layer(req: Request, next: Next) -> Response {
    let v = match microversion(req.headers()) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let mut resp = next.run(req).await;
    if let Ok(h) = HeaderValue::from_str(&format!("volume {}", version_str(v))) {
        resp.headers_mut().insert("openstack-api-version", h);
    }
    resp.headers_mut()
        .insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    resp
}

/// 400 as Cinder answers when the project in the URL is not the token's.
pub fn check_project(ctx: &AuthContext, project: &str) -> ApiResult<()> {
    if ctx.project_id == project {
        Ok(())
    } else {
        Err(ApiError::bad_request("Malformed request url"))
    }
}

/// 403 unless the caller may change things.
pub fn require_writer(ctx: &AuthContext) -> ApiResult<()> {
    policy::require_member(ctx, "Policy doesn't allow a reader to change volumes.")
}

/// 403 in Cinder's words unless an admin.
pub fn require_admin(ctx: &AuthContext, rule: &str) -> ApiResult<()> {
    policy::require_admin_for(ctx, rule)
}

/// The largest page (Cinder's `osapi_max_limit`).
pub const MAX_LIMIT: usize = 1000;

/// `limit` (a non-negative integer, at most [`MAX_LIMIT`]).
pub fn limit_param(q: &HashMap<String, String>) -> ApiResult<usize> {
    match q.get("limit") {
        None => Ok(MAX_LIMIT),
        Some(v) => v.parse::<usize>().map(|l| l.min(MAX_LIMIT)).map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid input received: limit must be a non-negative integer, not '{v}'."
            ))
        }),
    }
}

/// Whether `all_tenants` (or `all_projects`) asks for every project's.
pub fn all_tenants(q: &HashMap<String, String>) -> bool {
    ["all_tenants", "all_projects"].iter().any(|k| {
        q.get(*k).is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on" | ""
            )
        })
    })
}

/// `<coll>_links` with the next page when this page is full.
pub fn next_links(
    base: &str,
    path: &str,
    q: &HashMap<String, String>,
    limit: usize,
    got: usize,
    last: Option<&str>,
) -> Option<Value> {
    let last = last?;
    if got < limit || limit == 0 {
        return None;
    }
    let mut params: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "marker" && k.as_str() != "limit")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.sort();
    params.push(("limit".into(), limit.to_string()));
    params.push(("marker".into(), last.to_string()));
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    Some(json!([{ "rel": "next", "href": format!("{base}{path}?{}", query.join("&")) }]))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks a name or description: at most 255 characters, no control ones.
pub fn check_text(field: &str, v: &Option<String>) -> ApiResult<()> {
    if let Some(s) = v {
        if s.chars().count() > 255 || crate::util::has_control_chars(s) {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: {field} must be at most 255 printable characters."
            )));
        }
    }
    Ok(())
}

/// Checks metadata: keys of 1 to 255 characters, values of at most 255.
pub fn check_metadata(m: &std::collections::BTreeMap<String, String>) -> ApiResult<()> {
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 255 || v.chars().count() > 255 {
            return Err(ApiError::bad_request(
                "Invalid input received: metadata keys must be 1 to 255 characters and values at most 255.",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("openstack-api-version", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn microversions_are_read_as_cinder_reads_them() {
        assert_eq!(microversion(&HeaderMap::new()).unwrap(), (3, 0));
        assert_eq!(microversion(&headers("volume 3.42")).unwrap(), (3, 42));
        assert_eq!(
            microversion(&headers("volume latest")).unwrap(),
            MAX_VERSION
        );
        assert_eq!(
            microversion(&headers("compute 2.1, volume 3.10")).unwrap(),
            (3, 10)
        );
        assert_eq!(microversion(&headers("compute 2.90")).unwrap(), (3, 0));
        assert_eq!(
            microversion(&headers("volume 3.43")).unwrap_err().status,
            406
        );
        assert_eq!(
            microversion(&headers("volume 2.0")).unwrap_err().status,
            406
        );
        assert_eq!(microversion(&headers("volume x")).unwrap_err().status, 400);
    }

    #[test]
    fn a_full_page_links_the_next_one() {
        let mut q = HashMap::new();
        q.insert("name".to_string(), "a b".to_string());
        q.insert("marker".to_string(), "old".to_string());
        let l = next_links("http://h", "/volume/v3/p/volumes", &q, 2, 2, Some("m1")).unwrap();
        assert_eq!(
            l[0]["href"],
            "http://h/volume/v3/p/volumes?name=a%20b&limit=2&marker=m1"
        );
        assert!(next_links("http://h", "/x", &q, 2, 1, Some("m1")).is_none());
        assert!(next_links("http://h", "/x", &q, 2, 2, None).is_none());
    }
}
