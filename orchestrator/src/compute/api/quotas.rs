//! `/v2.1/os-quota-sets` and `/v2.1/limits`, read from the shared
//! [`crate::quota`].

use axum::extract::{Path, State};
use axum::Json;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::*;
use crate::compute::store;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::policy::{self, require_admin_for as require_admin};
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::quota;

/// `project`'s limit for `resource`.
pub(crate) fn quota_limit(
    st: &AppState,
    conn: &Connection,
    project: &str,
    resource: &str,
) -> ApiResult<i64> {
    Ok(quota::limit(conn, &st.cfg.quotas, project, resource)?)
}

/// Which form of a quota set to show.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum QuotaView {
    /// The project's limits.
    Limits,
    /// Limits with usage (`/detail`).
    Detail,
    /// The defaults a project without its own limits gets (`/defaults`).
    Defaults,
}

pub(crate) fn quota_set(
    st: &AppState,
    conn: &Connection,
    project: &str,
    view: QuotaView,
) -> ApiResult<Value> {
    let (n, cores, ram) = store::quota_usage(conn, project)?;
    let mut v = json!({ "id": project });
    let shape = |limit: i64, used: i64| match view {
        QuotaView::Detail => json!({ "limit": limit, "in_use": used, "reserved": 0 }),
        QuotaView::Limits | QuotaView::Defaults => json!(limit),
    };
    for (key, used) in quota::RESOURCES.iter().zip([n, cores, ram]) {
        let limit = match view {
            QuotaView::Defaults => quota::default_limit(&st.cfg.quotas, key),
            QuotaView::Limits | QuotaView::Detail => quota_limit(st, conn, project, key)?,
        };
        v[*key] = shape(limit, used);
    }
    for key in [
        "key_pairs",
        "metadata_items",
        "server_groups",
        "server_group_members",
        "injected_files",
        "injected_file_content_bytes",
        "injected_file_path_bytes",
    ] {
        v[key] = shape(-1, 0);
    }
    Ok(v)
}

pub(crate) fn quota_project(ctx: &AuthContext, project: &str) -> ApiResult<()> {
    if policy::owns_or_admin(ctx, project) {
        Ok(())
    } else {
        Err(policy::denied("os_compute_api:os-quota-sets:show"))
    }
}

pub(crate) async fn show_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Limits)
}

pub(crate) async fn show_quota_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Detail)
}

pub(crate) async fn show_quota_defaults(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Defaults)
}

pub(crate) fn quota_view(
    st: &AppState,
    ctx: &AuthContext,
    project: &str,
    view: QuotaView,
) -> ApiResult<Json<Value>> {
    quota_project(ctx, project)?;
    let conn = st.db.lock();
    Ok(Json(
        json!({ "quota_set": quota_set(st, &conn, project, view)? }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct QuotaReq {
    quota_set: serde_json::Map<String, Value>,
}

pub(crate) async fn update_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<QuotaReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-quota-sets:update")?;
    let conn = st.db.lock();
    for (k, v) in &req.quota_set {
        if k == "force" {
            continue;
        }
        if !quota::RESOURCES.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "quota {k} is not supported (supported: instances, cores, ram)"
            )));
        }
        let limit = int_field(k, v, -1)?;
        quota::store::set_hard_limit(&conn, &project, k, limit)?;
    }
    Ok(Json(
        json!({ "quota_set": quota_set(&st, &conn, &project, QuotaView::Limits)? }),
    ))
}

pub(crate) async fn limits(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let (n, cores, ram) = store::quota_usage(&conn, &ctx.project_id)?;
    let lim = |k| quota_limit(&st, &conn, &ctx.project_id, k);
    Ok(Json(json!({ "limits": { "rate": [], "absolute": {
        "maxTotalInstances": lim("instances")?, "totalInstancesUsed": n,
        "maxTotalCores": lim("cores")?, "totalCoresUsed": cores,
        "maxTotalRAMSize": lim("ram")?, "totalRAMUsed": ram,
        "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
        "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
        "totalServerGroupsUsed": 0, "maxSecurityGroups": -1, "totalSecurityGroupsUsed": 0,
        "maxSecurityGroupRules": -1, "maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0
    } } })))
}
