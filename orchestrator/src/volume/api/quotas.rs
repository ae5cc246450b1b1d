//! `/v3/{project}/os-quota-sets`, `/limits` and `/messages`: a project's
//! volume quotas (admins change them), its absolute limits and usage, and
//! the messages failed operations left.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::common::{check_project, require_admin};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::{policy, AppState};
use crate::identity::AuthContext;
use crate::quota::VOLUME_RESOURCES;
use crate::volume::{service, store};

/// Quota keys Cinder shows that Nubo does not count (always their defaults).
const FIXED: [(&str, i64); 4] = [
    ("backups", 10),
    ("backup_gigabytes", 1000),
    ("groups", 10),
    ("per_volume_gigabytes", -1),
];

fn quota_set(state: &AppState, target: &str, usage: bool, defaults: bool) -> ApiResult<Value> {
    let conn = state.db.lock();
    let (lv, lg, ls) = if defaults {
        let d = &state.cfg.quotas;
        (d.volumes, d.gigabytes, d.snapshots)
    } else {
        service::limits(&conn, &state.volume, target)?
    };
    let (uv, ug, us) = store::usage(&conn, target)?;
    let mut out = Map::new();
    out.insert("id".into(), json!(target));
    let entry = |limit: i64, used: i64| {
        if usage {
            json!({ "limit": limit, "in_use": used, "reserved": 0, "allocated": 0 })
        } else {
            json!(limit)
        }
    };
    out.insert("volumes".into(), entry(lv, uv));
    out.insert("gigabytes".into(), entry(lg, ug));
    out.insert("snapshots".into(), entry(ls, us));
    for (k, v) in FIXED {
        out.insert(k.into(), entry(v, 0));
    }
    for t in store::list_types(&conn, true)? {
        for r in VOLUME_RESOURCES {
            out.insert(format!("{r}_{}", t.name), entry(-1, 0));
        }
    }
    Ok(Value::Object(out))
}

fn may_see(ctx: &AuthContext, target: &str) -> ApiResult<()> {
    if policy::owns_or_admin(ctx, target) {
        Ok(())
    } else {
        Err(policy::denied("volume_extension:quotas:show"))
    }
}

/// `GET /v3/{project}/os-quota-sets/{target}` (`?usage=true`).
pub(super) async fn show_quota(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, target)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    may_see(&ctx, &target)?;
    let usage = q
        .get("usage")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Json(
        json!({ "quota_set": quota_set(&state, &target, usage, false)? }),
    ))
}

/// `GET /v3/{project}/os-quota-sets/{target}/defaults`.
pub(super) async fn show_defaults(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, target)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    Ok(Json(
        json!({ "quota_set": quota_set(&state, &target, false, true)? }),
    ))
}

fn limit_value(k: &str, v: &Value) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= -1 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input received: Quota limit {v} for {k} must be an integer of -1 or more."
        ))),
    }
}

/// `PUT /v3/{project}/os-quota-sets/{target}` (admin).
pub(super) async fn update_quota(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, target)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:quotas:update")?;
    let Some(set) = body.get("quota_set").and_then(Value::as_object) else {
        return Err(ApiError::bad_request(
            "Missing required element 'quota_set' in request body.",
        ));
    };
    let mut changes = Vec::new();
    for (k, v) in set {
        if VOLUME_RESOURCES.contains(&k.as_str()) {
            changes.push((k.clone(), limit_value(k, v)?));
        } else if !FIXED.iter().any(|(f, _)| f == k) && k != "id" && !k.contains('_') {
            return Err(ApiError::bad_request(format!(
                "Bad key(s) in quota set: {k}"
            )));
        }
    }
    {
        let conn = state.db.lock();
        for (k, v) in &changes {
            crate::quota::store::set_hard_limit(&conn, &target, k, *v)?;
        }
    }
    let mut shown = quota_set(&state, &target, false, false)?;
    if let Some(o) = shown.as_object_mut() {
        o.remove("id");
    }
    Ok(Json(json!({ "quota_set": shown })))
}

/// `DELETE /v3/{project}/os-quota-sets/{target}` (admin): back to defaults.
pub(super) async fn delete_quota(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, target)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:quotas:delete")?;
    let conn = state.db.lock();
    for r in VOLUME_RESOURCES {
        crate::quota::store::clear_hard_limit(&conn, &target, r)?;
    }
    Ok(StatusCode::OK)
}

/// `GET /v3/{project}/limits`: absolute limits and usage.
pub(super) async fn limits(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let target = match q.get("project_id") {
        Some(p) if ctx.is_admin() => p.clone(),
        _ => project,
    };
    let conn = state.db.lock();
    let (lv, lg, ls) = service::limits(&conn, &state.volume, &target)?;
    let (uv, ug, us) = store::usage(&conn, &target)?;
    Ok(Json(json!({ "limits": { "rate": [], "absolute": {
        "maxTotalVolumes": lv, "totalVolumesUsed": uv,
        "maxTotalVolumeGigabytes": lg, "totalGigabytesUsed": ug,
        "maxTotalSnapshots": ls, "totalSnapshotsUsed": us,
        "maxTotalBackups": 10, "totalBackupsUsed": 0,
        "maxTotalBackupGigabytes": 1000, "totalBackupGigabytesUsed": 0,
    }}})))
}

fn message_json(base: &str, project: &str, m: &store::MessageRow) -> Value {
    let (id, kind, resource, text, at) = m;
    json!({
        "id": id, "message_level": "ERROR", "user_message": text,
        "event_id": "VOLUME_000001", "resource_type": kind, "resource_uuid": resource,
        "request_id": Value::Null, "created_at": at, "guaranteed_until": Value::Null,
        "links": [{ "rel": "self", "href": format!("{base}/volume/v3/{project}/messages/{id}") }],
    })
}

/// `GET /v3/{project}/messages`: why operations failed.
pub(super) async fn list_messages(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let msgs = store::messages(&state.db.lock(), Some(&project))?;
    let shown: Vec<Value> = msgs
        .iter()
        .filter(|m| q.get("resource_uuid").is_none_or(|r| r == &m.2))
        .map(|m| message_json(&base, &project, m))
        .collect();
    Ok(Json(json!({ "messages": shown })))
}

/// `GET /v3/{project}/messages/{id}`.
pub(super) async fn show_message(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let msgs = store::messages(&state.db.lock(), Some(&project))?;
    let m = msgs
        .iter()
        .find(|m| m.0 == id)
        .ok_or_else(|| ApiError::not_found(format!("Message {id} could not be found.")))?;
    Ok(Json(json!({ "message": message_json(&base, &project, m) })))
}
