//! Compute's SQL (moving here; `model.rs`, `actions.rs` and
//! `flavor_access.rs` still hold theirs): servers, flavors, their
//! access lists and instance actions.

use rusqlite::{params, Connection};

use rusqlite::{OptionalExtension, Row};

use super::model::{Action, Flavor, Requester, Server};
use crate::util::now_iso;

/// How many servers `project` has.
pub fn count_servers_in_project(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM servers WHERE project_id = ?1",
        params![project],
        |r| r.get(0),
    )
}

/// What a project's servers take, for its quota: how many, their vCPUs and
/// their MiB of RAM.
pub fn quota_usage(conn: &Connection, project: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(vcpus),0), coalesce(sum(ram),0) FROM servers WHERE project_id = ?1",
        params![project],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// How many servers have a task in progress (Nova's `current_workload`).
pub fn count_busy_servers(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM servers WHERE task_state IS NOT NULL",
        [],
        |r| r.get(0),
    )
}

/// Adds a flavor.
pub fn insert_flavor(conn: &Connection, flavor: &Flavor) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO flavors (id, name, vcpus, ram, disk, swap, ephemeral, is_public, rxtx_factor, description, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            flavor.id, flavor.name, flavor.vcpus, flavor.ram, flavor.disk, flavor.swap,
            flavor.ephemeral, flavor.is_public, flavor.rxtx_factor, flavor.description, now_iso()
        ],
    )?;
    Ok(())
}

/// Removes flavor `id`.
pub fn delete_flavor(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM flavors WHERE id = ?1", params![id])?;
    Ok(())
}

/// Which servers a listing reads, and in what order.
#[derive(Debug, Clone)]
pub struct ServerFilter {
    /// Only this project's.
    pub project_id: Option<String>,
    /// Only with this status.
    pub status: Option<String>,
    /// Only booted from this image.
    pub image_id: Option<String>,
    /// Only of this flavor.
    pub flavor_id: Option<String>,
    /// Only those whose name holds this.
    pub name_contains: Option<String>,
    /// `ORDER BY` column and direction (`ASC`/`DESC`), from a fixed list:
    /// never from the client's text.
    pub order: (&'static str, &'static str),
}

/// The servers `f` names, in its order.
pub fn list_servers(conn: &Connection, f: &ServerFilter) -> rusqlite::Result<Vec<Server>> {
    let mut sql = format!("SELECT {SERVER_COLS} FROM servers WHERE 1 = 1");
    let mut args: Vec<&str> = Vec::new();
    for (col, v) in [
        ("project_id", &f.project_id),
        ("status", &f.status),
        ("image_id", &f.image_id),
        ("flavor_id", &f.flavor_id),
    ] {
        if let Some(v) = v {
            args.push(v);
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    }
    if let Some(n) = &f.name_contains {
        args.push(n);
        sql.push_str(&format!(" AND instr(name, ?{}) > 0", args.len()));
    }
    let (column, dir) = f.order;
    sql.push_str(&format!(" ORDER BY {column} {dir}, id {dir}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), server_row)?;
    rows.collect()
}

/// Marks server `id` as being deleted.
pub fn mark_deleting(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE servers SET task_state = 'deleting', updated_at = ?2 WHERE id = ?1",
        params![id, now_iso()],
    )?;
    Ok(())
}

/// Sets server `id`'s status and task state (the start of a transition).
pub fn set_transition(
    conn: &Connection,
    id: &str,
    status: &str,
    task: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE servers SET status = ?2, task_state = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, status, task, now_iso()],
    )?;
    Ok(())
}

/// A new server's row.
#[derive(Debug)]
pub struct NewServerRow<'a> {
    /// Id.
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Project.
    pub project_id: &'a str,
    /// Creator.
    pub user_id: &'a str,
    /// Boot image.
    pub image_id: &'a str,
    /// Flavor (its sizes are copied).
    pub flavor: &'a Flavor,
    /// Metadata, as JSON.
    pub metadata: &'a str,
    /// Creation time.
    pub now: &'a str,
}

/// Inserts a new server in `BUILD`/`scheduling`.
pub fn insert_server(conn: &Connection, s: &NewServerRow<'_>) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO servers (id, name, project_id, user_id, image_id, flavor_id, vcpus, ram, disk, \
         status, task_state, power_state, metadata, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'BUILD', 'scheduling', 0, ?10, ?11, ?11)",
        params![
            s.id, s.name, s.project_id, s.user_id, s.image_id, s.flavor.id, s.flavor.vcpus,
            s.flavor.ram, s.flavor.disk, s.metadata, s.now
        ],
    )?;
    Ok(())
}

const FLAVOR_COLS: &str =
    "id, name, vcpus, ram, disk, swap, ephemeral, is_public, rxtx_factor, description";

fn flavor_row(r: &Row<'_>) -> rusqlite::Result<Flavor> {
    Ok(Flavor {
        id: r.get(0)?,
        name: r.get(1)?,
        vcpus: r.get(2)?,
        ram: r.get(3)?,
        disk: r.get(4)?,
        swap: r.get(5)?,
        ephemeral: r.get(6)?,
        is_public: r.get(7)?,
        rxtx_factor: r.get(8)?,
        description: r.get(9)?,
    })
}

/// Looks a flavor up by id.
pub fn flavor(conn: &Connection, id: &str) -> rusqlite::Result<Option<Flavor>> {
    conn.query_row(
        &format!("SELECT {FLAVOR_COLS} FROM flavors WHERE id = ?1"),
        params![id],
        flavor_row,
    )
    .optional()
}

/// Every flavor, by RAM then name (Nova's default sort is by flavorid).
pub fn flavors(conn: &Connection) -> rusqlite::Result<Vec<Flavor>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {FLAVOR_COLS} FROM flavors ORDER BY ram, vcpus, name"
    ))?;
    let rows = st.query_map([], flavor_row)?;
    rows.collect()
}

/// The columns [`server_row`] reads, in order.
pub const SERVER_COLS: &str =
    "id, name, project_id, user_id, image_id, flavor_id, vcpus, ram, disk, \
    status, task_state, power_state, fault, metadata, created_at, updated_at, launched_at";

/// Reads a row selected with [`SERVER_COLS`].
pub fn server_row(r: &Row<'_>) -> rusqlite::Result<Server> {
    Ok(Server {
        id: r.get(0)?,
        name: r.get(1)?,
        project_id: r.get(2)?,
        user_id: r.get(3)?,
        image_id: r.get(4)?,
        flavor_id: r.get(5)?,
        vcpus: r.get(6)?,
        ram: r.get(7)?,
        disk: r.get(8)?,
        status: r.get(9)?,
        task_state: r.get(10)?,
        power_state: r.get(11)?,
        fault: r.get(12)?,
        metadata: r.get(13)?,
        created_at: r.get(14)?,
        updated_at: r.get(15)?,
        launched_at: r.get(16)?,
    })
}

/// Looks a server up by id.
pub fn server(conn: &Connection, id: &str) -> rusqlite::Result<Option<Server>> {
    conn.query_row(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
        params![id],
        server_row,
    )
    .optional()
}

/// Every server row (for reconciliation).
pub fn servers(conn: &Connection) -> rusqlite::Result<Vec<Server>> {
    let mut st = conn.prepare(&format!("SELECT {SERVER_COLS} FROM servers"))?;
    let rows = st.query_map([], server_row)?;
    rows.collect()
}

/// A server is up: `status` (ACTIVE) with no task, power state `pw`, no
/// fault, launched now.
pub fn set_launched(conn: &Connection, id: &str, status: &str, pw: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE servers SET status = ?2, task_state = NULL, power_state = ?3, fault = NULL, \
         updated_at = ?4, launched_at = ?4 WHERE id = ?1",
        params![id, status, pw, now_iso()],
    )
}

/// Sets a server's status, task state and power state, and its fault (as
/// JSON) when given.
pub fn set_state(
    conn: &Connection,
    id: &str,
    status: &str,
    task: Option<&str>,
    pw: i64,
    fault_json: Option<&str>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE servers SET status = ?2, task_state = ?3, power_state = ?4, \
         fault = coalesce(?5, fault), updated_at = ?6 WHERE id = ?1",
        params![id, status, task, pw, fault_json, now_iso()],
    )
}

/// Removes server `id`'s row.
pub fn delete_server(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM servers WHERE id = ?1", params![id])?;
    Ok(())
}

/// Every server's id and boot image id.
pub fn server_images(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare("SELECT id, image_id FROM servers")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Records `action` on `server_id` as started now; returns its row id.
pub fn record_action(
    conn: &Connection,
    server_id: &str,
    action: &str,
    by: &Requester<'_>,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO instance_actions (server_id, request_id, action, project_id, user_id, start_time) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![server_id, by.request_id, action, by.project_id, by.user_id, now_iso()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Marks action `row` finished now: a success, or a failure with `error`.
pub fn finish_action(conn: &Connection, row: i64, error: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE instance_actions SET finish_time = ?2, result = ?3, detail = ?4 WHERE id = ?1",
        params![
            row,
            now_iso(),
            if error.is_some() { "Error" } else { "Success" },
            error
        ],
    )?;
    Ok(())
}

/// The actions of `server_id`, newest first.
pub fn list_actions(conn: &Connection, server_id: &str) -> rusqlite::Result<Vec<Action>> {
    let mut stmt = conn.prepare(
        "SELECT server_id, request_id, action, project_id, user_id, start_time, finish_time, \
         result, detail FROM instance_actions WHERE server_id = ?1 ORDER BY id DESC",
    )?;
    let rows = stmt.query_map(params![server_id], |r| {
        Ok(Action {
            server_id: r.get(0)?,
            request_id: r.get(1)?,
            action: r.get(2)?,
            project_id: r.get(3)?,
            user_id: r.get(4)?,
            start_time: r.get(5)?,
            finish_time: r.get(6)?,
            result: r.get(7)?,
            detail: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// Forgets the actions of `server_id` (it was deleted).
pub fn forget_actions(conn: &Connection, server_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM instance_actions WHERE server_id = ?1",
        params![server_id],
    )?;
    Ok(())
}

/// Whether project `project_id` is on the access list of flavor `flavor_id`.
pub fn has_flavor_access(
    conn: &Connection,
    flavor_id: &str,
    project_id: &str,
) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM flavor_projects WHERE flavor_id = ?1 AND project_id = ?2",
            params![flavor_id, project_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The projects on the access list of `flavor_id`, sorted.
pub fn flavor_projects(conn: &Connection, flavor_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT project_id FROM flavor_projects WHERE flavor_id = ?1 ORDER BY project_id",
    )?;
    let rows = st.query_map(params![flavor_id], |r| r.get(0))?;
    rows.collect()
}

/// Every flavor id whose access list holds `project_id`.
pub fn flavors_of_project(conn: &Connection, project_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut st =
        conn.prepare_cached("SELECT flavor_id FROM flavor_projects WHERE project_id = ?1")?;
    let rows = st.query_map(params![project_id], |r| r.get(0))?;
    rows.collect()
}

/// Adds `project_id` to the list of `flavor_id`. Returns false if it was
/// there already.
pub fn add_flavor_project(
    conn: &Connection,
    flavor_id: &str,
    project_id: &str,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO flavor_projects (flavor_id, project_id) VALUES (?1, ?2)",
        params![flavor_id, project_id],
    )? == 1)
}

/// Removes `project_id` from the list of `flavor_id`. Returns false if it
/// was not there.
pub fn remove_flavor_project(
    conn: &Connection,
    flavor_id: &str,
    project_id: &str,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "DELETE FROM flavor_projects WHERE flavor_id = ?1 AND project_id = ?2",
        params![flavor_id, project_id],
    )? == 1)
}
