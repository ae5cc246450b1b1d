//! The security groups' SQL: the `security_groups` and
//! `security_group_rules` tables, and the one read of
//! `port_security_groups` (whether a port uses a group).

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::model::{SecurityGroup, SecurityGroupRule};

const GROUP_COLUMNS: &str =
    "id, project_id, name, description, is_default, revision_number, created_at, updated_at";

fn group_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecurityGroup> {
    Ok(SecurityGroup {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        is_default: r.get(4)?,
        revision_number: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

const RULE_SELECT: &str = "SELECT r.id, r.security_group_id, r.project_id, r.direction, \
     r.ethertype, r.protocol, r.port_range_min, r.port_range_max, r.remote_ip_prefix, \
     r.remote_group_id, r.description, r.revision_number, r.created_at, r.updated_at, \
     g.is_default FROM security_group_rules r JOIN security_groups g ON g.id = r.security_group_id";

fn rule_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecurityGroupRule> {
    Ok(SecurityGroupRule {
        id: r.get(0)?,
        security_group_id: r.get(1)?,
        project_id: r.get(2)?,
        direction: r.get(3)?,
        ethertype: r.get(4)?,
        protocol: r.get(5)?,
        port_range_min: r.get(6)?,
        port_range_max: r.get(7)?,
        remote_ip_prefix: r.get(8)?,
        remote_group_id: r.get(9)?,
        description: r.get(10)?,
        revision_number: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        belongs_to_default_sg: r.get(14)?,
    })
}

/// Adds a group. With `is_default`, does nothing (and returns false) if
/// the project has its default group already.
pub fn insert_group(conn: &Connection, g: &SecurityGroup) -> rusqlite::Result<bool> {
    let n = conn.execute(
        &format!("INSERT OR IGNORE INTO security_groups ({GROUP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            g.id,
            g.project_id,
            g.name,
            g.description,
            g.is_default,
            g.revision_number,
            g.created_at,
            g.updated_at
        ],
    )?;
    Ok(n == 1)
}

/// The id of `project`'s default group, if it has one.
pub fn default_group_id(conn: &Connection, project: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT id FROM security_groups WHERE project_id = ?1 AND is_default = 1",
        [project],
        |r| r.get(0),
    )
    .optional()
}

/// The group `id`.
pub fn load_group(conn: &Connection, id: &str) -> rusqlite::Result<Option<SecurityGroup>> {
    conn.query_row(
        &format!("SELECT {GROUP_COLUMNS} FROM security_groups WHERE id = ?1"),
        [id],
        group_from_row,
    )
    .optional()
}

/// `project`'s groups, or every group; oldest first.
pub fn list_groups(
    conn: &Connection,
    project: Option<&str>,
) -> rusqlite::Result<Vec<SecurityGroup>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {GROUP_COLUMNS} FROM security_groups \
         WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([project], group_from_row)?;
    rows.collect()
}

/// Sets a group's name and description; bumps its revision.
pub fn update_group(
    conn: &Connection,
    id: &str,
    name: &str,
    description: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE security_groups SET name = ?2, description = ?3, updated_at = ?4, \
         revision_number = revision_number + 1 WHERE id = ?1",
        params![id, name, description, now],
    )?;
    Ok(())
}

/// Bumps a group's revision (its rules changed).
pub fn touch_group(conn: &Connection, id: &str, now: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE security_groups SET updated_at = ?2, revision_number = revision_number + 1 \
         WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// Removes a group; its rules and the rules naming it as remote group go
/// with it (foreign keys).
pub fn delete_group(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM security_groups WHERE id = ?1", [id])?;
    Ok(())
}

/// How many groups `project` has; the default group counted or not.
pub fn count_groups(conn: &Connection, project: &str, with_default: bool) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM security_groups WHERE project_id = ?1 AND (?2 OR is_default = 0)",
        params![project, with_default],
        |r| r.get(0),
    )
}

/// How many ports use group `id`.
pub fn ports_using(conn: &Connection, id: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM port_security_groups WHERE security_group_id = ?1",
        [id],
        |r| r.get(0),
    )
}

/// Adds a rule.
pub fn insert_rule(conn: &Connection, r: &SecurityGroupRule) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, \
         ethertype, protocol, port_range_min, port_range_max, remote_ip_prefix, remote_group_id, \
         description, revision_number, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            r.id,
            r.security_group_id,
            r.project_id,
            r.direction,
            r.ethertype,
            r.protocol,
            r.port_range_min,
            r.port_range_max,
            r.remote_ip_prefix,
            r.remote_group_id,
            r.description,
            r.revision_number,
            r.created_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

/// The rule `id`.
pub fn load_rule(conn: &Connection, id: &str) -> rusqlite::Result<Option<SecurityGroupRule>> {
    conn.query_row(
        &format!("{RULE_SELECT} WHERE r.id = ?1"),
        [id],
        rule_from_row,
    )
    .optional()
}

/// The rules of groups owned by `project`, or every rule; by creation.
pub fn list_rules(
    conn: &Connection,
    project: Option<&str>,
) -> rusqlite::Result<Vec<SecurityGroupRule>> {
    let mut stmt = conn.prepare(&format!(
        "{RULE_SELECT} WHERE ?1 IS NULL OR g.project_id = ?1 ORDER BY r.created_at, r.id"
    ))?;
    let rows = stmt.query_map([project], rule_from_row)?;
    rows.collect()
}

/// The rules of the groups `ids`, by id.
pub fn rules_of_groups(
    conn: &Connection,
    ids: &[String],
) -> rusqlite::Result<Vec<SecurityGroupRule>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let mut stmt = conn.prepare(&format!(
        "{RULE_SELECT} WHERE r.security_group_id IN ({marks}) ORDER BY r.id"
    ))?;
    let rows = stmt.query_map(params_from_iter(ids), rule_from_row)?;
    rows.collect()
}

/// Removes a rule.
pub fn delete_rule(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM security_group_rules WHERE id = ?1", [id])?;
    Ok(())
}

/// How many rules `project` has.
pub fn count_rules(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM security_group_rules WHERE project_id = ?1",
        [project],
        |r| r.get(0),
    )
}
