//! Compute's SQL (moving here from the handlers): servers, flavors, their
//! access lists and instance actions.

use rusqlite::{params, Connection};

/// How many servers `project` has.
pub fn count_servers_in_project(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM servers WHERE project_id = ?1",
        params![project],
        |r| r.get(0),
    )
}
