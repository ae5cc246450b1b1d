//! Flavor access (Nova's `os-flavor-access`): the projects that may see and
//! boot a private flavor. Public flavors are for everyone and have no list.

use rusqlite::{params, Connection, OptionalExtension};

use super::model::Flavor;
use crate::identity::AuthContext;

/// Whether project `project_id` is on the access list of flavor `flavor_id`.
pub fn has_access(conn: &Connection, flavor_id: &str, project_id: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM flavor_projects WHERE flavor_id = ?1 AND project_id = ?2",
            params![flavor_id, project_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Whether the caller may see and boot `flavor`: it is public, the caller
/// is an admin, or the caller's project is on its access list.
pub fn may_use(conn: &Connection, ctx: &AuthContext, flavor: &Flavor) -> rusqlite::Result<bool> {
    Ok(flavor.is_public || ctx.is_admin() || has_access(conn, &flavor.id, &ctx.project_id)?)
}

/// The projects on the access list of `flavor_id`, sorted.
pub fn projects(conn: &Connection, flavor_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT project_id FROM flavor_projects WHERE flavor_id = ?1 ORDER BY project_id",
    )?;
    let rows = st.query_map(params![flavor_id], |r| r.get(0))?;
    rows.collect()
}

/// Every flavor id whose access list holds `project_id`.
pub fn flavors_of(conn: &Connection, project_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut st =
        conn.prepare_cached("SELECT flavor_id FROM flavor_projects WHERE project_id = ?1")?;
    let rows = st.query_map(params![project_id], |r| r.get(0))?;
    rows.collect()
}

/// Adds `project_id` to the list of `flavor_id`. Returns false if it was
/// there already.
pub fn add(conn: &Connection, flavor_id: &str, project_id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO flavor_projects (flavor_id, project_id) VALUES (?1, ?2)",
        params![flavor_id, project_id],
    )? == 1)
}

/// Removes `project_id` from the list of `flavor_id`. Returns false if it
/// was not there.
pub fn remove(conn: &Connection, flavor_id: &str, project_id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "DELETE FROM flavor_projects WHERE flavor_id = ?1 AND project_id = ?2",
        params![flavor_id, project_id],
    )? == 1)
}
