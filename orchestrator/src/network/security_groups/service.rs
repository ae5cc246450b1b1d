//! What the security groups answer the rest of the Networking service.
// PLACEHOLDER: replaced by the security-groups branch

use std::net::Ipv4Addr;

use rusqlite::Connection;

use crate::host::net::plan::SgRule;

/// The project's `default` group id, created with Neutron's default rules
/// if missing.
// PLACEHOLDER: replaced by the security-groups branch
pub fn ensure_default_group(_conn: &Connection, project_id: &str) -> rusqlite::Result<String> {
    Ok(format!("default-{project_id}"))
}

/// Whether the caller (of `project_id`, admin or not) may use `group_id`.
// PLACEHOLDER: replaced by the security-groups branch
pub fn group_visible(
    _conn: &Connection,
    _project_id: &str,
    _is_admin: bool,
    _group_id: &str,
) -> rusqlite::Result<bool> {
    Ok(true)
}

/// The rules of `group_ids`, resolved (`members` gives a remote group's
/// addresses).
// PLACEHOLDER: replaced by the security-groups branch
pub fn resolve_rules(
    _conn: &Connection,
    _group_ids: &[String],
    _members: &dyn Fn(&str) -> Vec<Ipv4Addr>,
) -> rusqlite::Result<Vec<SgRule>> {
    Ok(Vec::new())
}
