//! Identity's rules: lookups that answer 404 in Keystone's words, what a
//! name may be, and whether a project may go (each service that keeps
//! things per project is asked, through its own `service.rs`).

use rusqlite::Connection;

use super::model::{AuthContext, Project, User};
use super::store::{self, Projects};
use crate::http::error::{ApiError, ApiResult};

impl AuthContext {
    /// The context a server's background work acts in: its creator on its
    /// project with the roles the creator holds there now (as Nova's
    /// compute acts with the request's context). `None` if the user is gone.
    pub fn of_user_on_project(
        conn: &Connection,
        user_id: &str,
        project_id: &str,
    ) -> rusqlite::Result<Option<AuthContext>> {
        let Some((user_name, project_name)) =
            store::user_and_project_names(conn, user_id, project_id)?
        else {
            return Ok(None);
        };
        let roles = store::roles_on(conn, user_id, project_id)?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        Ok(Some(AuthContext {
            user_id: user_id.to_string(),
            user_name,
            project_id: project_id.to_string(),
            project_name,
            roles,
        }))
    }
}

/// The project `id`, or 404.
pub fn project(conn: &Connection, id: &str) -> ApiResult<Project> {
    store::projects(conn, Projects::Id(id))?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("could not find project: {id}")))
}

/// The bootstrap `admin` project's id, if it exists and is enabled.
pub fn admin_project_id(conn: &Connection) -> rusqlite::Result<Option<String>> {
    super::store::enabled_project_by_name(conn, "admin", super::DEFAULT_DOMAIN_ID)
}

/// Whether project `id` exists (other services ask here).
pub fn project_exists(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(!store::projects(conn, Projects::Id(id))?.is_empty())
}

/// The user `id`, or 404.
pub fn user(conn: &Connection, id: &str) -> ApiResult<User> {
    store::users(conn, Some(id))?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("could not find user: {id}")))
}

/// The name of role `id`, or 404.
pub fn role(conn: &Connection, id: &str) -> ApiResult<String> {
    store::role_name(conn, id)?
        .ok_or_else(|| ApiError::not_found(format!("could not find role: {id}")))
}

/// 404 unless project `p`, user `u` and role `r` all exist.
pub fn check_triple(conn: &Connection, p: &str, u: &str, r: &str) -> ApiResult<()> {
    project(conn, p)?;
    user(conn, u)?;
    role(conn, r)?;
    Ok(())
}

/// 400 unless `name` is 1 to 255 characters without control characters.
pub fn valid_name(kind: &str, name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "{kind} name must be 1 to 255 characters"
        )));
    }
    if crate::util::has_control_chars(name) {
        return Err(ApiError::bad_request(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(())
}

/// A unique-constraint failure as 409 with `what`; other errors as usual.
pub fn unique_violation(e: rusqlite::Error, what: String) -> ApiError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            ApiError::conflict(what)
        }
        e => e.into(),
    }
}

/// 409 if project `id` still holds something another service keeps (today:
/// compute's servers).
pub fn check_project_unused(conn: &Connection, id: &str) -> ApiResult<()> {
    let servers = crate::compute::service::servers_in_project(conn, id)?;
    if servers > 0 {
        return Err(ApiError::conflict(format!(
            "project {id} still has {servers} server(s); delete them first"
        )));
    }
    let network = crate::network::service::resources_in_project(conn, id)?;
    if network > 0 {
        return Err(ApiError::conflict(format!(
            "project {id} still has {network} network resource(s) (networks, subnets, ports, \
             routers, floating IPs); delete them first"
        )));
    }
    let groups = crate::network::security_groups::service::groups_in_project(conn, id)?;
    if groups > 0 {
        return Err(ApiError::conflict(format!(
            "project {id} still has {groups} security group(s) besides its default one; \
             delete them first"
        )));
    }
    Ok(())
}
