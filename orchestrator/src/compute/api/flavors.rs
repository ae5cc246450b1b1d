//! `/v2.1/flavors`: list, show, create, delete and extra specs.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::*;
use crate::compute::model::Flavor;
use crate::compute::service::{get_flavor, visible_flavor};
use crate::compute::store;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::policy::require_admin_for as require_admin;
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::util::new_id;

// ---------------------------------------------------------------- flavors

/// Which flavors a list shows (Nova's `is_public` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicFilter {
    /// Public flavors and the private ones the caller's project may use.
    Public,
    /// Private flavors only.
    Private,
    /// Every flavor.
    All,
}

/// The `is_public` filter of a flavor list. Only admins choose (Nova
/// ignores the parameter for others): `true`, `false` or `none` (all). An
/// admin's list without the parameter shows every flavor; Nova's shows the
/// public ones, but clients (openstacksdk, so the `openstack` CLI) always
/// send the parameter.
pub(crate) fn public_filter(
    ctx: &AuthContext,
    q: &HashMap<String, String>,
) -> ApiResult<PublicFilter> {
    if !ctx.is_admin() {
        return Ok(PublicFilter::Public);
    }
    let Some(v) = q.get("is_public") else {
        return Ok(PublicFilter::All);
    };
    match v.to_ascii_lowercase().as_str() {
        "none" => Ok(PublicFilter::All),
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(PublicFilter::Public),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(PublicFilter::Private),
        _ => Err(ApiError::bad_request(format!(
            "Invalid is_public filter [{v}]"
        ))),
    }
}

pub(crate) async fn list_flavors(
    st: &AppState,
    ctx: &AuthContext,
    base: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Json<Value>> {
    let filter = public_filter(ctx, q)?;
    let conn = st.db.lock();
    let mut flavors = store::flavors(&conn)?;
    match filter {
        PublicFilter::All => {}
        PublicFilter::Private => flavors.retain(|f| !f.is_public),
        PublicFilter::Public => {
            let granted = store::flavors_of_project(&conn, &ctx.project_id)?;
            flavors.retain(|f| f.is_public || granted.contains(&f.id));
        }
    }
    if let Some(min) = non_negative_param(q, "minRam")? {
        flavors.retain(|f| f.ram >= min as i64);
    }
    if let Some(min) = non_negative_param(q, "minDisk")? {
        flavors.retain(|f| f.disk >= min as i64);
    }
    if let Some(marker) = q.get("marker") {
        let pos = flavors
            .iter()
            .position(|f| &f.id == marker)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{marker}] not found")))?;
        flavors.drain(..=pos);
    }
    if let Some(limit) = non_negative_param(q, "limit")? {
        flavors.truncate(limit);
    }
    let list: Vec<Value> = flavors
        .iter()
        .map(|f| {
            if detail {
                f.to_json(base)
            } else {
                json!({ "id": f.id, "name": f.name, "links": f.to_json(base)["links"] })
            }
        })
        .collect();
    Ok(Json(json!({ "flavors": list })))
}

pub(crate) async fn list_flavors_brief(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list_flavors(&st, &ctx, &base, &q, false).await
}

pub(crate) async fn list_flavors_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list_flavors(&st, &ctx, &base, &q, true).await
}

pub(crate) async fn show_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    Ok(Json(
        json!({ "flavor": visible_flavor(&conn, &ctx, &id)?.to_json(&base) }),
    ))
}

pub(crate) async fn flavor_extra_specs(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_flavor(&st.db.lock(), &ctx, &id)?;
    Ok(Json(json!({ "extra_specs": {} })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlavorReq {
    flavor: FlavorFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlavorFields {
    name: String,
    ram: Value,
    vcpus: Value,
    disk: Value,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    swap: Option<Value>,
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    ephemeral: Option<Value>,
    #[serde(default, rename = "os-flavor-access:is_public")]
    is_public: Option<bool>,
    #[serde(default)]
    rxtx_factor: Option<f64>,
    #[serde(default)]
    description: Option<String>,
}

pub(crate) async fn create_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
    JsonBody(req): JsonBody<FlavorReq>,
) -> ApiResult<Response> {
    check_microversion(&headers)?;
    require_admin(&ctx, "os_compute_api:os-flavor-manage:create")?;
    let f = req.flavor;
    let name = checked_name("flavor", &f.name)?;
    let flavor = Flavor {
        id: match f.id {
            None | Some(Value::Null) => new_id(),
            Some(Value::String(s)) if s == "auto" => new_id(),
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= 255
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b)) =>
            {
                s
            }
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => return Err(ApiError::bad_request(format!("invalid flavor id {v}"))),
        },
        name,
        ram: int_field("ram", &f.ram, 1)?,
        vcpus: int_field("vcpus", &f.vcpus, 1)?,
        disk: int_field("disk", &f.disk, 0)?,
        swap: match &f.swap {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) if s.is_empty() => 0,
            Some(v) => int_field("swap", v, 0)?,
        },
        ephemeral: match &f.ephemeral {
            None | Some(Value::Null) => 0,
            Some(v) => int_field("OS-FLV-EXT-DATA:ephemeral", v, 0)?,
        },
        is_public: f.is_public.unwrap_or(true),
        rxtx_factor: f
            .rxtx_factor
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(1.0),
        description: f.description,
    };
    let conn = st.db.lock();
    let r = store::insert_flavor(&conn, &flavor);
    if let Err(rusqlite::Error::SqliteFailure(e, _)) = &r {
        if e.code == rusqlite::ErrorCode::ConstraintViolation {
            return Err(ApiError::conflict(format!(
                "Flavor with name {} or ID {} already exists.",
                flavor.name, flavor.id
            )));
        }
    }
    r?;
    tracing::info!(flavor = %flavor.id, name = ?flavor.name, "flavor created");
    Ok(Json(json!({ "flavor": flavor.to_json(&base) })).into_response())
}

pub(crate) async fn delete_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx, "os_compute_api:os-flavor-manage:delete")?;
    let conn = st.db.lock();
    get_flavor(&conn, &id)?;
    store::delete_flavor(&conn, &id)?;
    Ok(StatusCode::ACCEPTED)
}
