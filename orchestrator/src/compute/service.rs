//! Compute's rules: which flavors and servers a caller may use or see, how
//! many servers a request may create (asked of the shared [`crate::quota`]),
//! creating them (rows and their `create` actions in one transaction) and
//! starting their builds; and what Compute answers other services (they ask
//! here, never its tables).

use std::sync::Arc;

use rusqlite::Connection;

use super::actions;
use super::model::Requester;
use super::model::{Flavor, Server};
use super::{lifecycle, store, Compute};
use crate::config::QuotaDefaults;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::image::service::Bootable;
use crate::quota;
use crate::util::{new_id, now_iso};

/// How many servers `project` still has (Identity asks before deleting it).
pub fn servers_in_project(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    store::count_servers_in_project(conn, project)
}

/// A server the caller may see: its own project's, or any for admin.
/// The server `id` if the caller may see it, else 404 (never 403: that
/// would tell that the id exists).
pub fn visible_server(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Server> {
    match store::server(conn, id)? {
        Some(s) if ctx.is_admin() || s.project_id == ctx.project_id => Ok(s),
        _ => Err(ApiError::not_found(format!(
            "Instance {id} could not be found."
        ))),
    }
}

/// The flavor `id`, whoever may use it; 404 if there is none.
pub fn get_flavor(conn: &Connection, id: &str) -> ApiResult<Flavor> {
    store::flavor(conn, id)?.ok_or_else(|| flavor_not_found(id))
}

/// Nova's 404 for flavor `id`.
fn flavor_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Flavor {id} could not be found."))
}

/// The flavor `id` if the caller may use it (public, admin, or on its access
/// list); `None` otherwise, also when it exists (never tell a private
/// flavor's id to a project without access).
pub fn usable_flavor(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Option<Flavor>> {
    match store::flavor(conn, id)? {
        Some(f) if may_use_flavor(conn, ctx, &f)? => Ok(Some(f)),
        _ => Ok(None),
    }
}

/// [`usable_flavor`], 404 when `None`.
pub fn visible_flavor(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Flavor> {
    usable_flavor(conn, ctx, id)?.ok_or_else(|| flavor_not_found(id))
}

/// 400 unless `flavor` has room for `image` (its size and minimums).
pub fn check_flavor_fits_image(flavor: &Flavor, image: &Bootable) -> ApiResult<()> {
    if flavor.disk > 0 {
        if let Some(vs) = image.virtual_size {
            if vs > flavor.disk.saturating_mul(1 << 30) {
                return Err(ApiError::bad_request(format!(
                    "Flavor's disk is too small for requested image. Flavor disk is {} bytes, image is {vs} bytes.",
                    flavor.disk.saturating_mul(1 << 30)
                )));
            }
        }
        if image.min_disk > flavor.disk {
            return Err(ApiError::bad_request(
                "Flavor's disk is smaller than the minimum size specified in image metadata.",
            ));
        }
    }
    if image.min_ram > flavor.ram {
        return Err(ApiError::bad_request(
            "Flavor's memory is too small for requested image.",
        ));
    }
    Ok(())
}

/// How many servers of `flavor` (between `min` and `max`) fit `project`'s
/// quota: as many as fit, at least `min`; 403 naming what `min` exceeds.
pub fn quota_count(
    conn: &Connection,
    defaults: &QuotaDefaults,
    project: &str,
    flavor: &Flavor,
    min: i64,
    max: i64,
) -> ApiResult<i64> {
    let (n, cores, ram) = store::quota_usage(conn, project)?;
    let mut demands = Vec::new();
    for (resource, used, per) in [
        ("instances", n, 1),
        ("cores", cores, flavor.vcpus),
        ("ram", ram, flavor.ram),
    ] {
        let limit = quota::limit(conn, defaults, project, resource)?;
        demands.push(quota::Demand {
            resource,
            used,
            per,
            limit,
        });
    }
    quota::fit(&demands, min, max).map_err(|exceeded| {
        ApiError::forbidden(format!("Quota exceeded for {}.", exceeded.join(", ")))
    })
}

/// The servers one create request makes.
#[derive(Debug)]
pub struct NewServers<'a> {
    /// Their name (suffixed `-1`, `-2`, ... when more than one).
    pub name: &'a str,
    /// The image they boot.
    pub image_id: &'a str,
    /// Their flavor.
    pub flavor: &'a Flavor,
    /// Their metadata, as JSON.
    pub metadata: &'a str,
    /// How many.
    pub count: i64,
}

/// Inserts the servers (`BUILD`, `scheduling`) with their `create` actions
/// (in the caller's transaction); returns each id with its action's row.
pub fn insert_servers(
    conn: &Connection,
    ctx: &AuthContext,
    by: &Requester<'_>,
    new: &NewServers<'_>,
) -> ApiResult<Vec<(String, i64)>> {
    let now = now_iso();
    let mut ids = Vec::new();
    for i in 0..new.count {
        let id = new_id();
        let sname = if new.count > 1 {
            format!("{}-{}", new.name, i + 1)
        } else {
            new.name.to_string()
        };
        store::insert_server(
            conn,
            &store::NewServerRow {
                id: &id,
                name: &sname,
                project_id: &ctx.project_id,
                user_id: &ctx.user_id,
                image_id: new.image_id,
                flavor: new.flavor,
                metadata: new.metadata,
                now: &now,
            },
        )?;
        // The create action, in the same transaction as the server.
        let row = store::record_action(conn, &id, "create", by)?;
        ids.push((id, row));
    }
    Ok(ids)
}

/// Starts the build of each new server, tracked by its `create` action;
/// with `new_root`, each boots from a new volume made from that image.
pub fn spawn_builds(
    compute: &Arc<Compute>,
    ids: &[(String, i64)],
    image_id: &str,
    flavor_id: &str,
    new_root: Option<lifecycle::NewRootVolume>,
) {
    for (id, row) in ids {
        tracing::info!(server = %id, image = %image_id, flavor = %flavor_id, "server accepted");
        let build = lifecycle::build(Arc::clone(compute), id.clone(), new_root.clone());
        tokio::spawn(actions::track(Arc::clone(compute), *row, id.clone(), build));
    }
}

/// Whether the caller may see and boot `flavor`: it is public, the caller
/// is an admin, or the caller's project is on its access list.
pub fn may_use_flavor(
    conn: &Connection,
    ctx: &AuthContext,
    flavor: &Flavor,
) -> rusqlite::Result<bool> {
    Ok(flavor.is_public
        || ctx.is_admin()
        || store::has_flavor_access(conn, &flavor.id, &ctx.project_id)?)
}
