//! The security group rules of the house: visibility, each project's lazy
//! `default` group, quotas, duplicates, in-use and default-group refusals;
//! and what the rest of the Networking service asks
//! ([`ensure_default_group`], [`group_visible`], [`resolve_rules`],
//! [`groups_in_project`]).
//!
//! Re-syncing the host: every change of a group's rules (a rule created or
//! deleted, a group deleted with its rules) changes the plan of the ports
//! in those groups and in groups that name them as remote group. The points
//! are marked `// SYNC:`; the handlers (`api/`) call the network service's
//! `sync()` after each such change commits (project deletion syncs in
//! identity's handler).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde_json::Value;

use super::model::{
    SecurityGroup, SecurityGroupRule, DEFAULT_GROUP_DESCRIPTION, DEFAULT_GROUP_NAME,
};
use super::store;
use super::validate::{protocol_number, GroupRequest, RuleRequest};
use crate::host::net::plan::{Direction, Ipv4Net, Remote, SgRule};
use crate::http::error::{ApiError, ApiResult};
use crate::http::policy;
use crate::identity::AuthContext;
use crate::util::{new_id, now_iso};

/// Quota resource: security groups per project.
pub const QUOTA_SECURITY_GROUP: &str = "security_group";
/// Quota resource: security group rules per project.
pub const QUOTA_SECURITY_GROUP_RULE: &str = "security_group_rule";
/// Neutron's default `quota_security_group`.
pub const DEFAULT_SECURITY_GROUP_QUOTA: i64 = 10;
/// Neutron's default `quota_security_group_rule`.
pub const DEFAULT_SECURITY_GROUP_RULE_QUOTA: i64 = 100;

// ------------------------------------------------- for the other modules

/// The id of `project_id`'s default group, creating it (with Neutron's
/// four rules: egress IPv4 and IPv6 anywhere, ingress IPv4 and IPv6 from
/// the group itself) if the project has none. Safe inside or outside the
/// caller's transaction (a savepoint), and only one default group per
/// project ever exists (a unique index). Made whatever the project's
/// quotas say (as in Neutron), though it counts in their usage.
///
/// Call it before a port of the project is given its groups (a port with
/// no `security_groups` gets this one).
pub fn ensure_default_group(conn: &Connection, project_id: &str) -> rusqlite::Result<String> {
    if let Some(id) = store::default_group_id(conn, project_id)? {
        return Ok(id);
    }
    conn.execute_batch("SAVEPOINT sg_default")?;
    let created = create_default_group(conn, project_id);
    match created {
        Ok(()) => conn.execute_batch("RELEASE sg_default")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO sg_default; RELEASE sg_default");
            return Err(e);
        }
    }
    store::default_group_id(conn, project_id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

fn create_default_group(conn: &Connection, project_id: &str) -> rusqlite::Result<()> {
    let group = new_group(
        project_id,
        DEFAULT_GROUP_NAME,
        DEFAULT_GROUP_DESCRIPTION,
        true,
    );
    if !store::insert_group(conn, &group)? {
        // Another request made it first.
        return Ok(());
    }
    for ethertype in ["IPv4", "IPv6"] {
        store::insert_rule(conn, &plain_rule(&group, "egress", ethertype, None))?;
        let own = Some(group.id.clone());
        store::insert_rule(conn, &plain_rule(&group, "ingress", ethertype, own))?;
    }
    tracing::info!(project = project_id, group = %group.id, "default security group created");
    Ok(())
}

/// Whether group `group_id` exists and a caller of `project_id` (an admin
/// if `is_admin`) may use it: its own project's groups, any for an admin.
pub fn group_visible(
    conn: &Connection,
    project_id: &str,
    is_admin: bool,
    group_id: &str,
) -> rusqlite::Result<bool> {
    Ok(store::load_group(conn, group_id)?.is_some_and(|g| is_admin || g.project_id == project_id))
}

/// The `port_range.1` of an ICMP rule with a type and no code: any code
/// (`netstack::nft::L4::from_neutron` reads a code above 255 so).
pub const ANY_ICMP_CODE: u16 = 256;

/// The IPv4 rules of the groups `group_ids`, resolved for the host: the
/// protocol as a number, a remote group as its members' addresses (asked
/// of `members`), duplicates (the same rule in two groups) once, sorted by
/// rule id. IPv6 rules are dropped (the data plane is IPv4). A prefix of
/// `0.0.0.0/0` is [`Remote::Any`].
///
/// ICMP: `port_range` is `(type, code)`; a rule with a type and no code
/// gets code [`ANY_ICMP_CODE`] (256: above every code, which the host's
/// nftables generator reads as "any code"). A rule whose stored fields do not parse is skipped (and
/// logged): rules only allow, so skipping one never opens anything.
pub fn resolve_rules(
    conn: &Connection,
    group_ids: &[String],
    members: &dyn Fn(&str) -> Vec<Ipv4Addr>,
) -> rusqlite::Result<Vec<SgRule>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for rule in store::rules_of_groups(conn, group_ids)? {
        if rule.ethertype != "IPv4" {
            continue;
        }
        let Some(resolved) = resolve_one(&rule, members) else {
            tracing::warn!(rule = %rule.id, "security group rule skipped: unreadable fields");
            continue;
        };
        let key = (
            resolved.direction,
            resolved.protocol,
            resolved.port_range,
            resolved.remote.clone(),
        );
        if seen.insert(key) {
            out.push(resolved);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn resolve_one(
    rule: &SecurityGroupRule,
    members: &dyn Fn(&str) -> Vec<Ipv4Addr>,
) -> Option<SgRule> {
    let direction = match rule.direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    let protocol = match &rule.protocol {
        None => None,
        Some(p) => Some(protocol_number(p)?),
    };
    let port = |v: i64| u16::try_from(v).ok();
    let port_range = match (rule.port_range_min, rule.port_range_max) {
        (None, None) => None,
        (Some(min), Some(max)) => Some((port(min)?, port(max)?)),
        (Some(min), None) => Some((port(min)?, ANY_ICMP_CODE)),
        (None, Some(_)) => return None,
    };
    let remote = match (&rule.remote_ip_prefix, &rule.remote_group_id) {
        (Some(prefix), _) => match parse_v4_cidr(prefix)? {
            any if any.prefix_len == 0 => Remote::Any,
            cidr => Remote::Prefix(cidr),
        },
        (None, Some(group)) => Remote::Group {
            group_id: group.clone(),
            members: members(group),
        },
        (None, None) => Remote::Any,
    };
    Some(SgRule {
        id: rule.id.clone(),
        direction,
        protocol,
        port_range,
        remote,
    })
}

/// `10.0.0.5/24` → 10.0.0.0/24.
fn parse_v4_cidr(prefix: &str) -> Option<Ipv4Net> {
    let (addr, len) = prefix.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix_len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Some(Ipv4Net {
        addr: Ipv4Addr::from(u32::from(addr) & mask),
        prefix_len,
    })
}

/// How many security groups `project_id` holds besides its default group
/// (which is made lazily, by a mere list, so it does not keep a project
/// in use; [`remove_default_group`] removes it with the project).
pub fn groups_in_project(conn: &Connection, project_id: &str) -> rusqlite::Result<usize> {
    Ok(store::count_groups(conn, project_id, false)?.max(0) as usize)
}

/// What `project_id` uses of its security group quotas, for `quota show`:
/// (groups, rules), the default group and its rules included (Neutron
/// counts them too).
pub fn quota_usage(conn: &Connection, project_id: &str) -> rusqlite::Result<(i64, i64)> {
    Ok((
        store::count_groups(conn, project_id, true)?,
        store::count_rules(conn, project_id)?,
    ))
}

/// Removes `project_id`'s default group and its rules (when the project
/// goes). Ports must no longer use it.
pub fn remove_default_group(conn: &Connection, project_id: &str) -> rusqlite::Result<()> {
    if let Some(id) = store::default_group_id(conn, project_id)? {
        store::delete_group(conn, &id)?;
        // SYNC: rules naming this group as remote group went with it.
    }
    Ok(())
}

// ------------------------------------------------------- for the API

fn new_group(project_id: &str, name: &str, description: &str, is_default: bool) -> SecurityGroup {
    let now = now_iso();
    SecurityGroup {
        id: new_id(),
        project_id: project_id.to_string(),
        name: name.to_string(),
        description: description.to_string(),
        is_default,
        revision_number: 0,
        created_at: now.clone(),
        updated_at: now,
    }
}

/// A rule of `group` with no protocol, ports or prefix.
fn plain_rule(
    group: &SecurityGroup,
    direction: &str,
    ethertype: &str,
    remote_group_id: Option<String>,
) -> SecurityGroupRule {
    let now = now_iso();
    SecurityGroupRule {
        id: new_id(),
        security_group_id: group.id.clone(),
        project_id: group.project_id.clone(),
        direction: direction.to_string(),
        ethertype: ethertype.to_string(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id,
        description: String::new(),
        revision_number: 0,
        created_at: now.clone(),
        updated_at: now,
        belongs_to_default_sg: group.is_default,
    }
}

/// Neutron's 404 for a group.
pub fn group_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Security group {id} does not exist"))
}

/// Neutron's 404 for a rule.
pub fn rule_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Security group rule {id} does not exist"))
}

/// 403 in Neutron's policy words unless the caller may change things.
pub fn require_writer(ctx: &AuthContext, action: &str) -> ApiResult<()> {
    policy::require_member(ctx, &format!("rule:{action} is disallowed by policy"))
}

/// The group `id` if the caller may see it, else 404.
pub fn visible_group(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<SecurityGroup> {
    store::load_group(conn, id)?
        .filter(|g| policy::owns_or_admin(ctx, &g.project_id))
        .ok_or_else(|| group_not_found(id))
}

/// The rule `id` if the caller may see its group, else 404.
pub fn visible_rule(
    conn: &Connection,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<SecurityGroupRule> {
    store::load_rule(conn, id)?
        .filter(|r| policy::owns_or_admin(ctx, &r.project_id))
        .ok_or_else(|| rule_not_found(id))
}

/// A group's JSON with its rules.
pub fn group_json(conn: &Connection, g: &SecurityGroup) -> ApiResult<Value> {
    let rules = store::rules_of_groups(conn, std::slice::from_ref(&g.id))?;
    Ok(g.to_json(&rules))
}

/// The groups the caller sees (all for an admin, else its project's), with
/// their rules, making the caller's default group first (and, for an admin
/// listing one existing project, that project's).
pub fn list_groups(
    conn: &Connection,
    ctx: &AuthContext,
    project_filter: Option<&str>,
) -> ApiResult<Vec<Value>> {
    ensure_default_group(conn, &ctx.project_id)?;
    if let Some(p) = project_filter.filter(|p| ctx.is_admin() && *p != ctx.project_id) {
        if crate::identity::service::project_exists(conn, p)? {
            ensure_default_group(conn, p)?;
        }
    }
    let scope = if ctx.is_admin() {
        None
    } else {
        Some(ctx.project_id.as_str())
    };
    let groups = store::list_groups(conn, scope)?;
    let mut rules: std::collections::HashMap<String, Vec<SecurityGroupRule>> = Default::default();
    for r in store::list_rules(conn, scope)? {
        rules
            .entry(r.security_group_id.clone())
            .or_default()
            .push(r);
    }
    Ok(groups
        .iter()
        .map(|g| g.to_json(rules.get(&g.id).map_or(&[][..], Vec::as_slice)))
        .collect())
}

/// The rules the caller sees (all for an admin, else its project's).
pub fn list_rules(conn: &Connection, ctx: &AuthContext) -> ApiResult<Vec<Value>> {
    let scope = if ctx.is_admin() {
        None
    } else {
        Some(ctx.project_id.as_str())
    };
    Ok(store::list_rules(conn, scope)?
        .iter()
        .map(SecurityGroupRule::to_json)
        .collect())
}

/// The project a body's `project_id` names: the caller's unless given;
/// another only for an admin (Neutron's 400 otherwise).
fn owner_project(ctx: &AuthContext, asked: Option<&str>) -> ApiResult<String> {
    match asked {
        Some(p) if p != ctx.project_id => {
            if ctx.is_admin() {
                Ok(p.to_string())
            } else {
                Err(ApiError::bad_request(
                    "Specifying 'project_id' or 'tenant_id' other than the authenticated \
                     project in request requires admin privileges",
                ))
            }
        }
        _ => Ok(ctx.project_id.clone()),
    }
}

/// `project`'s limit for `resource`: its own (set in the shared `quotas`
/// table), else Neutron's default.
pub fn quota_limit(conn: &Connection, project: &str, resource: &str) -> rusqlite::Result<i64> {
    let default = if resource == QUOTA_SECURITY_GROUP {
        DEFAULT_SECURITY_GROUP_QUOTA
    } else {
        DEFAULT_SECURITY_GROUP_RULE_QUOTA
    };
    Ok(crate::quota::store::hard_limit(conn, project, resource)?.unwrap_or(default))
}

fn over_quota(resource: &str) -> ApiError {
    ApiError::conflict(format!("Quota exceeded for resources: ['{resource}']."))
}

fn immediate(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

/// Creates a group (with egress IPv4 and IPv6 rules) in the caller's
/// project or, for an admin, the one the body names.
pub fn create_group(conn: &Connection, ctx: &AuthContext, req: &GroupRequest) -> ApiResult<Value> {
    let name = req.name.clone().unwrap_or_default();
    if name.eq_ignore_ascii_case(DEFAULT_GROUP_NAME) {
        return Err(ApiError::conflict("Default security group already exists."));
    }
    let project = owner_project(ctx, req.project_id.as_deref())?;
    let tx = immediate(conn)?;
    ensure_default_group(&tx, &project)?;
    let limit = quota_limit(&tx, &project, QUOTA_SECURITY_GROUP)?;
    if limit >= 0 && store::count_groups(&tx, &project, true)? >= limit {
        return Err(over_quota(QUOTA_SECURITY_GROUP));
    }
    let group = new_group(
        &project,
        &name,
        req.description.as_deref().unwrap_or_default(),
        false,
    );
    store::insert_group(&tx, &group)?;
    for ethertype in ["IPv4", "IPv6"] {
        store::insert_rule(&tx, &plain_rule(&group, "egress", ethertype, None))?;
    }
    let body = group_json(&tx, &group)?;
    tx.commit()?;
    tracing::info!(project, group = %group.id, "security group created");
    Ok(body)
}

/// Renames or re-describes group `id`. The default group keeps its name;
/// no other group may take it (Neutron's 409s).
pub fn update_group(
    conn: &Connection,
    ctx: &AuthContext,
    id: &str,
    req: &GroupRequest,
) -> ApiResult<Value> {
    let g = visible_group(conn, ctx, id)?;
    require_writer(ctx, "update_security_group")?;
    let name = req.name.clone().unwrap_or_else(|| g.name.clone());
    if g.is_default && name != g.name {
        return Err(ApiError::conflict(
            "Updating default security group not allowed.",
        ));
    }
    if !g.is_default && name.eq_ignore_ascii_case(DEFAULT_GROUP_NAME) {
        return Err(ApiError::conflict("Default security group already exists."));
    }
    let description = req
        .description
        .clone()
        .unwrap_or_else(|| g.description.clone());
    store::update_group(conn, id, &name, &description, &now_iso())?;
    let g = visible_group(conn, ctx, id)?;
    group_json(conn, &g)
}

/// Deletes group `id` (its rules, and other groups' rules naming it, go
/// with it): 409 while a port uses it, and for the default group unless
/// the caller is an admin (as in Neutron).
pub fn delete_group(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<()> {
    let g = visible_group(conn, ctx, id)?;
    require_writer(ctx, "delete_security_group")?;
    let tx = immediate(conn)?;
    if store::ports_using(&tx, id)? > 0 {
        return Err(ApiError::conflict(format!("Security Group {id} in use.")));
    }
    if g.is_default && !ctx.is_admin() {
        return Err(ApiError::conflict(
            "Insufficient rights for removing default security group.",
        ));
    }
    store::delete_group(&tx, id)?;
    tx.commit()?;
    // SYNC: rules of other groups that named this one as remote group are
    // gone; the ports in those groups need a new plan.
    tracing::info!(group = id, "security group deleted");
    Ok(())
}

/// A remote prefix as the duplicate check compares it: by network, and
/// "anywhere" (`0.0.0.0/0`, `::/0`) the same as none (Neutron's
/// `_rule_to_key`).
fn prefix_key(prefix: Option<&str>) -> Option<String> {
    prefix
        .and_then(super::model::normalized_cidr)
        .filter(|p| p != "0.0.0.0/0" && p != "::/0")
}

/// Whether two rules of one group match the same traffic (Neutron's
/// duplicate check: everything but id and description, protocols compared
/// by number, prefixes by network, "anywhere" the same as no prefix).
fn same_rule(a: &SecurityGroupRule, b: &RuleRequest) -> bool {
    let proto =
        |p: Option<&str>| p.map(|p| protocol_number(p).map_or(p.to_string(), |n| n.to_string()));
    let cidr = prefix_key;
    a.direction == b.direction
        && a.ethertype == b.ethertype
        && proto(a.protocol.as_deref()) == proto(b.protocol.as_deref())
        && a.port_range_min == b.port_range_min
        && a.port_range_max == b.port_range_max
        && cidr(a.remote_ip_prefix.as_deref()) == cidr(b.remote_ip_prefix.as_deref())
        && a.remote_group_id == b.remote_group_id
}

/// Creates a rule in a group the caller may change.
pub fn create_rule(conn: &Connection, ctx: &AuthContext, req: &RuleRequest) -> ApiResult<Value> {
    require_writer(ctx, "create_security_group_rule")?;
    let group = visible_group(conn, ctx, &req.security_group_id)?;
    if req
        .project_id
        .as_deref()
        .is_some_and(|p| p != group.project_id)
    {
        owner_project(ctx, req.project_id.as_deref())?;
    }
    if let Some(remote) = &req.remote_group_id {
        if !group_visible(conn, &ctx.project_id, ctx.is_admin(), remote)? {
            return Err(group_not_found(remote));
        }
    }
    let tx = immediate(conn)?;
    ensure_default_group(&tx, &group.project_id)?;
    let existing = store::rules_of_groups(&tx, std::slice::from_ref(&group.id))?;
    if let Some(dup) = existing.iter().find(|r| same_rule(r, req)) {
        return Err(ApiError::conflict(format!(
            "Security group rule already exists. Rule id is {}.",
            dup.id
        )));
    }
    let limit = quota_limit(&tx, &group.project_id, QUOTA_SECURITY_GROUP_RULE)?;
    if limit >= 0 && store::count_rules(&tx, &group.project_id)? >= limit {
        return Err(over_quota(QUOTA_SECURITY_GROUP_RULE));
    }
    let now = now_iso();
    let rule = SecurityGroupRule {
        id: new_id(),
        security_group_id: group.id.clone(),
        project_id: group.project_id.clone(),
        direction: req.direction.clone(),
        ethertype: req.ethertype.clone(),
        protocol: req.protocol.clone(),
        port_range_min: req.port_range_min,
        port_range_max: req.port_range_max,
        remote_ip_prefix: req.remote_ip_prefix.clone(),
        remote_group_id: req.remote_group_id.clone(),
        description: req.description.clone(),
        revision_number: 0,
        created_at: now.clone(),
        updated_at: now.clone(),
        belongs_to_default_sg: group.is_default,
    };
    store::insert_rule(&tx, &rule)?;
    store::touch_group(&tx, &group.id, &now)?;
    tx.commit()?;
    // SYNC: the ports in this group need a new plan.
    tracing::info!(group = %group.id, rule = %rule.id, "security group rule created");
    Ok(rule.to_json())
}

/// Deletes rule `id` of a group the caller may change.
pub fn delete_rule(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<()> {
    let rule = visible_rule(conn, ctx, id)?;
    require_writer(ctx, "delete_security_group_rule")?;
    let tx = immediate(conn)?;
    store::delete_rule(&tx, id)?;
    store::touch_group(&tx, &rule.security_group_id, &now_iso())?;
    tx.commit()?;
    // SYNC: the ports in the rule's group need a new plan.
    tracing::info!(rule = id, "security group rule deleted");
    Ok(())
}
