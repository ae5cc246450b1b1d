//! What Compute answers other services (they ask here, never its tables).

use rusqlite::Connection;

use super::store;

/// How many servers `project` still has (Identity asks before deleting it).
pub fn servers_in_project(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    store::count_servers_in_project(conn, project)
}
