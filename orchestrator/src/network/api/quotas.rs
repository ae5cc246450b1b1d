//! `/v2.0/quotas`: the network limits of the shared [`crate::quota`].

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::common::json_body;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::policy;
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::network::service::{policy_refusal, usage};
use crate::quota::{self, NETWORK_RESOURCES};

fn project_of(p: &str) -> &str {
    p.strip_suffix(".json").unwrap_or(p)
}

fn may_see(ctx: &AuthContext, project: &str) -> ApiResult<()> {
    if policy::owns_or_admin(ctx, project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(policy_refusal("get_quota")))
    }
}

fn quota_json(st: &AppState, conn: &Connection, project: &str, detail: bool) -> ApiResult<Value> {
    let mut m = Map::new();
    for r in NETWORK_RESOURCES {
        let limit = quota::limit(conn, &st.cfg.quotas, project, r)?;
        m.insert(
            r.to_string(),
            if detail {
                json!({ "limit": limit, "used": usage(conn, project, r)?, "reserved": 0 })
            } else {
                json!(limit)
            },
        );
    }
    Ok(Value::Object(m))
}

pub(crate) async fn list_quotas(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
) -> ApiResult<Json<Value>> {
    policy::require_admin_for(&ctx, "get_quota")
        .map_err(|_| ApiError::forbidden(policy_refusal("get_quota")))?;
    let conn = st.db.lock();
    let mut out = Vec::new();
    for p in quota::store::projects_with_limits(&conn, &NETWORK_RESOURCES)? {
        let mut q = quota_json(&st, &conn, &p, false)?;
        q["project_id"] = json!(p);
        q["tenant_id"] = json!(p);
        out.push(q);
    }
    Ok(Json(json!({ "quotas": out })))
}

pub(crate) async fn show_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = project_of(&project);
    may_see(&ctx, project)?;
    let conn = st.db.lock();
    Ok(Json(
        json!({ "quota": quota_json(&st, &conn, project, false)? }),
    ))
}

pub(crate) async fn show_quota_sub(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, what)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    may_see(&ctx, &project)?;
    let conn = st.db.lock();
    let v = match project_of(&what) {
        "details" => quota_json(&st, &conn, &project, true)?,
        "default" => {
            let mut m = Map::new();
            for r in NETWORK_RESOURCES {
                m.insert(r.into(), json!(quota::default_limit(&st.cfg.quotas, r)));
            }
            Value::Object(m)
        }
        _ => return Err(ApiError::not_found("the resource could not be found")),
    };
    Ok(Json(json!({ "quota": v })))
}

pub(crate) async fn update_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let project = project_of(&project).to_string();
    if !ctx.is_admin() {
        return Err(ApiError::forbidden(policy_refusal("update_quota")));
    }
    let body = json_body(&body)?;
    let Some(q) = body.get("quota").and_then(Value::as_object) else {
        return Err(ApiError::bad_request(
            "Invalid input: the body must be {\"quota\": {...}}",
        ));
    };
    let mut limits = Vec::new();
    for (k, v) in q {
        if k == "force" || k == "check_limit" {
            continue;
        }
        if !NETWORK_RESOURCES.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for {k}. Reason: '{v}' is not an integer >= -1."
                ))
            })?;
        limits.push((k.clone(), n));
    }
    let conn = st.db.lock();
    for (k, n) in limits {
        quota::store::set_hard_limit(&conn, &project, &k, n)?;
    }
    Ok(Json(
        json!({ "quota": quota_json(&st, &conn, &project, false)? }),
    ))
}

pub(crate) async fn delete_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    if !ctx.is_admin() {
        return Err(ApiError::forbidden(policy_refusal("delete_quota")));
    }
    let project = project_of(&project);
    let conn = st.db.lock();
    for r in NETWORK_RESOURCES {
        quota::store::clear_hard_limit(&conn, project, r)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
