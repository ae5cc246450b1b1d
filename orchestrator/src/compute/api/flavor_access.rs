//! Compute v2.1 flavor access (Nova's `os-flavor-access`): an admin lists,
//! grants and takes back the projects that may use a private flavor
//! (`openstack flavor create --private --project`, `flavor set --project`,
//! `flavor unset --project`, and the `access_project_ids` of `flavor show`).
//! Who sees which flavor is decided in `compute` with
//! [`crate::compute::service::may_use_flavor`].

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::compute::model::Flavor;
use crate::compute::service::get_flavor;
use crate::compute::store;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::policy::require_admin_for as require_admin;
use crate::http::AppState;

/// The flavor access routes, relative to `/compute` (merged into the
/// compute router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2.1/flavors/{id}/os-flavor-access", get(list_access))
        .route("/v2.1/flavors/{id}/action", post(flavor_action))
}

/// `{"flavor_access": [{"flavor_id", "tenant_id"}, ...]}`.
fn access_json(conn: &Connection, flavor_id: &str) -> ApiResult<Value> {
    let list: Vec<Value> = store::flavor_projects(conn, flavor_id)?
        .into_iter()
        .map(|p| json!({ "flavor_id": flavor_id, "tenant_id": p }))
        .collect();
    Ok(json!({ "flavor_access": list }))
}

async fn list_access(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-flavor-access")?;
    let conn = st.db.lock();
    if get_flavor(&conn, &id)?.is_public {
        return Err(ApiError::not_found(
            "Access list not available for public flavors.",
        ));
    }
    Ok(Json(access_json(&conn, &id)?))
}

/// The `tenant` of an `addTenantAccess` / `removeTenantAccess` body.
fn tenant_of(action: &str, arg: &Value) -> ApiResult<String> {
    let tenant = arg.get("tenant").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {action}. 'tenant' is a required string property"
        ))
    })?;
    if tenant.is_empty() || tenant.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute tenant. Value: {tenant}. It must be 1 to 255 characters"
        )));
    }
    Ok(tenant.to_string())
}

/// 400 unless `project` is a project (Nova asks Keystone the same).
fn check_project(conn: &Connection, project: &str) -> ApiResult<()> {
    match crate::identity::service::project_exists(conn, project)? {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "Project ID {project} is not a valid project."
        ))),
    }
}

async fn flavor_action(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let mut entries = body.into_iter();
    let (Some((action, arg)), None) = (entries.next(), entries.next()) else {
        return Err(ApiError::bad_request(
            "an action body has exactly one key, the action's name",
        ));
    };
    let add = match action.as_str() {
        "addTenantAccess" => true,
        "removeTenantAccess" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "There is no such action: {other}"
            )))
        }
    };
    let policy = if add {
        "os_compute_api:os-flavor-access:add_tenant_access"
    } else {
        "os_compute_api:os-flavor-access:remove_tenant_access"
    };
    require_admin(&ctx, policy)?;
    let tenant = tenant_of(&action, &arg)?;
    let conn = st.db.lock();
    check_project(&conn, &tenant)?;
    let flavor = get_flavor(&conn, &id)?;
    if add {
        grant(&conn, &flavor, &tenant)?;
    } else {
        take_back(&conn, &flavor, &tenant)?;
    }
    Ok(Json(access_json(&conn, &id)?))
}

/// `addTenantAccess`: 409 for a public flavor (Nova from 2.7 on; before,
/// the grant is stored and means nothing) or a grant that exists.
fn grant(conn: &Connection, flavor: &Flavor, tenant: &str) -> ApiResult<()> {
    if flavor.is_public {
        return Err(ApiError::conflict("Can not add access to a public flavor."));
    }
    if !store::add_flavor_project(conn, &flavor.id, tenant)? {
        return Err(ApiError::conflict(format!(
            "Flavor access already exists for flavor {} and project {tenant} combination.",
            flavor.id
        )));
    }
    tracing::info!(flavor = %flavor.id, project = %tenant, "flavor access granted");
    Ok(())
}

/// `removeTenantAccess`: 404 for a grant that does not exist.
fn take_back(conn: &Connection, flavor: &Flavor, tenant: &str) -> ApiResult<()> {
    if !store::remove_flavor_project(conn, &flavor.id, tenant)? {
        return Err(ApiError::not_found(format!(
            "Flavor access not found for {} / {tenant} combination.",
            flavor.id
        )));
    }
    tracing::info!(flavor = %flavor.id, project = %tenant, "flavor access removed");
    Ok(())
}
