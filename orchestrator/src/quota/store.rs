//! Quota's SQL: the `quotas` table and nothing else.

use rusqlite::{params, Connection, OptionalExtension};

/// The limit a project was given for `resource`, if any.
pub fn hard_limit(
    conn: &Connection,
    project: &str,
    resource: &str,
) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT hard_limit FROM quotas WHERE project_id = ?1 AND resource = ?2",
        params![project, resource],
        |r| r.get(0),
    )
    .optional()
}

/// Gives `project` the limit `limit` for `resource` (replacing any).
pub fn set_hard_limit(
    conn: &Connection,
    project: &str,
    resource: &str,
    limit: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?1, ?2, ?3) \
         ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = excluded.hard_limit",
        params![project, resource, limit],
    )?;
    Ok(())
}

/// Removes `project`'s own limit for `resource` (back to the default).
pub fn clear_hard_limit(conn: &Connection, project: &str, resource: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM quotas WHERE project_id = ?1 AND resource = ?2",
        params![project, resource],
    )?;
    Ok(())
}

/// The projects with a limit of their own on any of `resources`.
pub fn projects_with_limits(
    conn: &Connection,
    resources: &[&str],
) -> rusqlite::Result<Vec<String>> {
    let mut st =
        conn.prepare("SELECT DISTINCT project_id, resource FROM quotas ORDER BY project_id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out: Vec<String> = Vec::new();
    for row in rows {
        let (p, res) = row?;
        if resources.contains(&res.as_str()) && out.last() != Some(&p) {
            out.push(p);
        }
    }
    Ok(out)
}
