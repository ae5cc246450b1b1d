//! What the compute handlers share: the microversion headers and check,
//! the reader check, integer fields and query parameters, and who is asking
//! (for instance actions).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::Value;

use crate::compute::actions::Requester;
use crate::http::error::{ApiError, ApiResult};
use crate::http::policy;
use crate::http::RequestId;
use crate::identity::AuthContext;

/// Echoes the microversion we answered with, as Nova does.
pub(crate) async fn version_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "openstack-api-version",
        HeaderValue::from_static("compute 2.1"),
    );
    h.insert(
        "x-openstack-nova-api-version",
        HeaderValue::from_static("2.1"),
    );
    h.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}

/// Rejects microversions we do not speak (Nova answers 406).
pub(crate) fn check_microversion(headers: &HeaderMap) -> ApiResult<()> {
    let wanted = headers
        .get("openstack-api-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("compute"))
        .map(str::trim)
        .or_else(|| {
            headers
                .get("x-openstack-nova-api-version")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
    match wanted {
        None | Some("2.1") | Some("latest") => Ok(()),
        Some(v) => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {v} is not supported by the API. Minimum is 2.1 and maximum is 2.1."),
        )),
    }
}

pub(crate) fn require_writer(ctx: &AuthContext) -> ApiResult<()> {
    policy::require_member(ctx, "Policy doesn't allow a reader to change servers.")
}

/// A query parameter that must be a non-negative integer when present (400
/// otherwise, as Nova's query schemas answer).
pub(crate) fn non_negative_param(
    q: &HashMap<String, String>,
    key: &str,
) -> ApiResult<Option<usize>> {
    q.get(key)
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid input for query parameters {key}. Value: {v}. \
                     It must be a non-negative integer."
                ))
            })
        })
        .transpose()
}

/// Nova accepts integers as numbers or numeric strings.
pub(crate) fn int_field(name: &str, v: &Value, min: i64) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= min && n <= i32::MAX as i64 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {name}. Value: {v}. It must be an integer >= {min}."
        ))),
    }
}

/// Who is asking, for [`actions::record`]; a request without a
/// [`RequestId`] (only possible outside the full router) is recorded as
/// `req-unknown`.
pub fn requester<'a>(ctx: &'a AuthContext, rid: &'a Option<Extension<RequestId>>) -> Requester<'a> {
    Requester {
        request_id: rid
            .as_ref()
            .map(|Extension(r)| r.0.as_str())
            .unwrap_or("req-unknown"),
        project_id: &ctx.project_id,
        user_id: &ctx.user_id,
    }
}

/// A `kind` name trimmed, 400 unless 1 to 255 characters without control
/// characters.
pub fn checked_name(kind: &str, raw: &str) -> ApiResult<String> {
    let name = raw.trim().to_string();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "{kind} name must be 1 to 255 characters"
        )));
    }
    if crate::util::has_control_chars(&name) {
        return Err(ApiError::bad_request(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(name)
}
