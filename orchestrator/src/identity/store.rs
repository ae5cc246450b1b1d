//! Identity's SQL: domains, projects, users, roles, role assignments,
//! tokens and the first start's seed. Nothing here decides who may
//! do what; that is [`super::service`] and [`crate::http::policy`].

use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};

use super::model::{
    Assignment, Domain, Project, ProjectChanges, TokenRecord, User, UserChanges, DEFAULT_DOMAIN_ID,
    ROLES,
};
use crate::util::new_hex_id;

const DOMAIN_COLS: &str = "id, name, description, enabled";

fn domain_row(r: &Row<'_>) -> rusqlite::Result<Domain> {
    Ok(Domain {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        enabled: r.get(3)?,
    })
}

/// Looks a domain up by id or, failing that, by name.
pub fn find_domain(conn: &Connection, id_or_name: &str) -> rusqlite::Result<Option<Domain>> {
    conn.query_row(
        &format!(
            "SELECT {DOMAIN_COLS} FROM domains WHERE id = ?1 UNION ALL \
             SELECT {DOMAIN_COLS} FROM domains WHERE name = ?1 LIMIT 1"
        ),
        params![id_or_name],
        domain_row,
    )
    .optional()
}

/// The domain `id`.
pub fn domain(conn: &Connection, id: &str) -> rusqlite::Result<Option<Domain>> {
    conn.query_row(
        &format!("SELECT {DOMAIN_COLS} FROM domains WHERE id = ?1"),
        params![id],
        domain_row,
    )
    .optional()
}

/// Every domain, by name.
pub fn domains(conn: &Connection) -> rusqlite::Result<Vec<Domain>> {
    let mut stmt = conn.prepare(&format!("SELECT {DOMAIN_COLS} FROM domains ORDER BY name"))?;
    let rows = stmt.query_map([], domain_row)?;
    rows.collect()
}

/// Role ids and names a user holds on a project.
pub fn roles_on(
    conn: &Connection,
    user_id: &str,
    project_id: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut st = conn.prepare_cached(
        "SELECT r.id, r.name FROM role_assignments a JOIN roles r ON r.id = a.role_id \
         WHERE a.user_id = ?1 AND a.project_id = ?2 ORDER BY r.name",
    )?;
    let rows = st.query_map(params![user_id, project_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The user's name and the project's (`""` if there is no such project);
/// `None` if the user does not exist.
pub fn user_and_project_names(
    conn: &Connection,
    user_id: &str,
    project_id: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT u.name, coalesce((SELECT name FROM projects WHERE id = ?2), '') \
         FROM users u WHERE u.id = ?1",
        params![user_id, project_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// The user's default project, if it has one.
pub fn default_project_of(conn: &Connection, user_id: &str) -> rusqlite::Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT default_project_id FROM users WHERE id = ?1",
            params![user_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

/// The id of the enabled project `id`.
pub fn enabled_project_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT id FROM projects WHERE id = ?1 AND enabled = 1",
        params![id],
        |r| r.get(0),
    )
    .optional()
}

/// The id of the enabled project called `name` in `domain_id`.
pub fn enabled_project_by_name(
    conn: &Connection,
    name: &str,
    domain_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT id FROM projects WHERE name = ?1 AND domain_id = ?2 AND enabled = 1",
        params![name, domain_id],
        |r| r.get(0),
    )
    .optional()
}

/// A user's name and domain id (an error if it does not exist).
pub fn user_name_and_domain(
    conn: &Connection,
    user_id: &str,
) -> rusqlite::Result<(String, String)> {
    conn.query_row(
        "SELECT name, domain_id FROM users WHERE id = ?1",
        params![user_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// A project's name and domain id (an error if it does not exist).
pub fn project_name_and_domain(
    conn: &Connection,
    project_id: &str,
) -> rusqlite::Result<(String, String)> {
    conn.query_row(
        "SELECT name, domain_id FROM projects WHERE id = ?1",
        params![project_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What a password check needs of a user: its id, password hash and
/// whether it is enabled.
pub type Credentials = (String, Option<String>, bool);

/// [`Credentials`] of the user `id`.
pub fn credentials_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<Credentials>> {
    conn.query_row(
        "SELECT id, password_hash, enabled FROM users WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// [`Credentials`] of the user called `name` in `domain_id`.
pub fn credentials_by_name(
    conn: &Connection,
    name: &str,
    domain_id: &str,
) -> rusqlite::Result<Option<Credentials>> {
    conn.query_row(
        "SELECT id, password_hash, enabled FROM users WHERE name = ?1 AND domain_id = ?2",
        params![name, domain_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// Which projects a listing reads.
#[derive(Debug, Clone, Copy)]
pub enum Projects<'a> {
    /// Every project.
    All,
    /// The one project with this id.
    Id(&'a str),
    /// The projects this user has a role on.
    OfUser(&'a str),
    /// The enabled projects this user has a role on.
    EnabledOfUser(&'a str),
}

/// The projects `which` names, by name.
pub fn projects(conn: &Connection, which: Projects<'_>) -> rusqlite::Result<Vec<Project>> {
    const OF_USER: &str = "id IN (SELECT project_id FROM role_assignments WHERE user_id = ?1)";
    let (where_sql, args): (String, Vec<&dyn ToSql>) = match &which {
        Projects::All => (String::new(), vec![]),
        Projects::Id(id) => ("WHERE id = ?1".into(), vec![id as &dyn ToSql]),
        Projects::OfUser(u) => (format!("WHERE {OF_USER}"), vec![u as &dyn ToSql]),
        Projects::EnabledOfUser(u) => (
            format!("WHERE enabled = 1 AND {OF_USER}"),
            vec![u as &dyn ToSql],
        ),
    };
    let sql = format!(
        "SELECT id, name, domain_id, description, enabled FROM projects {where_sql} ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(args.as_slice(), |r| {
        Ok(Project {
            id: r.get(0)?,
            name: r.get(1)?,
            domain_id: r.get(2)?,
            description: r.get(3)?,
            enabled: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Adds a project.
pub fn insert_project(conn: &Connection, p: &Project) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO projects (id, name, domain_id, description, enabled) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![p.id, p.name, p.domain_id, p.description, p.enabled],
    )?;
    Ok(())
}

/// Changes the fields of project `id` that `c` sets, in one statement.
pub fn update_project(conn: &Connection, id: &str, c: &ProjectChanges<'_>) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE projects SET name = coalesce(?2, name), description = coalesce(?3, description), \
         enabled = coalesce(?4, enabled) WHERE id = ?1",
        params![id, c.name, c.description, c.enabled],
    )?;
    Ok(())
}

/// Removes project `id`.
pub fn delete_project(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM projects WHERE id = ?1", params![id])?;
    Ok(())
}

/// Every user, or the one with `id`, by name.
pub fn users(conn: &Connection, id: Option<&str>) -> rusqlite::Result<Vec<User>> {
    let (where_sql, args): (&str, Vec<&dyn ToSql>) = match &id {
        None => ("", vec![]),
        Some(id) => ("WHERE id = ?1", vec![id as &dyn ToSql]),
    };
    let sql = format!(
        "SELECT id, name, domain_id, default_project_id, email, description, enabled FROM users {where_sql} ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(args.as_slice(), |r| {
        Ok(User {
            id: r.get(0)?,
            name: r.get(1)?,
            domain_id: r.get(2)?,
            default_project_id: r.get(3)?,
            email: r.get(4)?,
            description: r.get(5)?,
            enabled: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Adds a user with this password hash.
pub fn insert_user(
    conn: &Connection,
    u: &User,
    password_hash: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO users (id, name, domain_id, password_hash, default_project_id, email, description, enabled) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            u.id, u.name, u.domain_id, password_hash, u.default_project_id, u.email,
            u.description, u.enabled
        ],
    )?;
    Ok(())
}

/// Changes the fields of user `id` that `c` sets, in one statement.
pub fn update_user(conn: &Connection, id: &str, c: &UserChanges<'_>) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE users SET name = coalesce(?2, name), password_hash = coalesce(?3, password_hash), \
         default_project_id = coalesce(?4, default_project_id), email = coalesce(?5, email), \
         description = coalesce(?6, description), enabled = coalesce(?7, enabled) WHERE id = ?1",
        params![
            id,
            c.name,
            c.password_hash,
            c.default_project_id,
            c.email,
            c.description,
            c.enabled
        ],
    )?;
    Ok(())
}

/// Removes user `id` and its tokens.
pub fn delete_user(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM tokens WHERE user_id = ?1", params![id])?;
    conn.execute("DELETE FROM users WHERE id = ?1", params![id])?;
    Ok(())
}

/// Every role's id and name, by name.
pub fn roles(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare("SELECT id, name FROM roles ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The name of role `id`.
pub fn role_name(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT name FROM roles WHERE id = ?1", params![id], |r| {
        r.get(0)
    })
    .optional()
}

/// Adds a role.
pub fn insert_role(conn: &Connection, id: &str, name: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO roles (id, name) VALUES (?1, ?2)",
        params![id, name],
    )?;
    Ok(())
}

/// Removes role `id`.
pub fn delete_role(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM roles WHERE id = ?1", params![id])?;
    Ok(())
}

/// Gives user `u` role `r` on project `p` (no-op if it has it).
pub fn grant(conn: &Connection, u: &str, p: &str, r: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO role_assignments (user_id, project_id, role_id) VALUES (?1, ?2, ?3)",
        params![u, p, r],
    )?;
    Ok(())
}

/// Whether user `u` has role `r` on project `p`.
pub fn has_grant(conn: &Connection, u: &str, p: &str, r: &str) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role_id = ?3",
        params![u, p, r],
        |row| row.get(0),
    )?;
    Ok(n > 0)
}

/// Takes role `r` on project `p` from user `u`; false if it had none.
pub fn revoke_grant(conn: &Connection, u: &str, p: &str, r: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "DELETE FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role_id = ?3",
        params![u, p, r],
    )?;
    Ok(n > 0)
}

/// Every role assignment with names.
pub fn assignments(conn: &Connection) -> rusqlite::Result<Vec<Assignment>> {
    let mut stmt = conn.prepare(
        "SELECT a.user_id, a.project_id, a.role_id, r.name, u.name, p.name FROM role_assignments a \
         JOIN roles r ON r.id = a.role_id JOIN users u ON u.id = a.user_id \
         JOIN projects p ON p.id = a.project_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Assignment {
            user_id: r.get(0)?,
            project_id: r.get(1)?,
            role_id: r.get(2)?,
            role_name: r.get(3)?,
            user_name: r.get(4)?,
            project_name: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Whether the first start's `admin` user exists.
pub fn admin_exists(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT id FROM users WHERE name = 'admin' AND domain_id = ?1",
            params![DEFAULT_DOMAIN_ID],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .is_some())
}

/// The first start's records, in one transaction: the `Default` domain, the
/// `admin` project and user (with this password hash), the built-in roles,
/// and every role for `admin` on `admin`.
pub fn seed(conn: &Connection, password_hash: &str) -> rusqlite::Result<()> {
    let run = || -> rusqlite::Result<()> {
        conn.execute(
            "INSERT OR IGNORE INTO domains (id, name, description) VALUES (?1, 'Default', 'The default domain')",
            params![DEFAULT_DOMAIN_ID],
        )?;
        let project = new_hex_id();
        conn.execute(
            "INSERT INTO projects (id, name, domain_id, description) VALUES (?1, 'admin', ?2, 'Bootstrap project')",
            params![project, DEFAULT_DOMAIN_ID],
        )?;
        let user = new_hex_id();
        conn.execute(
            "INSERT INTO users (id, name, domain_id, password_hash, default_project_id) VALUES (?1, 'admin', ?2, ?3, ?4)",
            params![user, DEFAULT_DOMAIN_ID, password_hash, project],
        )?;
        for role in ROLES {
            conn.execute(
                "INSERT OR IGNORE INTO roles (id, name) VALUES (?1, ?2)",
                params![new_hex_id(), role],
            )?;
        }
        conn.execute(
            "INSERT INTO role_assignments (user_id, project_id, role_id) \
             SELECT ?1, ?2, id FROM roles WHERE name IN ('admin', 'member', 'reader')",
            params![user, project],
        )?;
        Ok(())
    };
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match run() {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Forgets tokens that expired before `unix` (seconds).
pub fn forget_tokens_expired_before(conn: &Connection, unix: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM tokens WHERE expires_unix < ?1", params![unix])?;
    Ok(())
}

/// Stores a new token's record under the SHA-256 `hash` of its secret.
pub fn insert_token(conn: &Connection, hash: &str, rec: &TokenRecord) -> rusqlite::Result<()> {
    let methods = serde_json::to_string(&rec.methods)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.execute(
        "INSERT INTO tokens (hash, user_id, project_id, audit_id, audit_chain_id, methods, \
         issued_at, expires_at, expires_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            hash,
            rec.user_id,
            rec.project_id,
            rec.audit_id,
            rec.audit_chain_id,
            methods,
            rec.issued_at,
            rec.expires_at,
            rec.expires_unix
        ],
    )?;
    Ok(())
}

fn record_row(r: &Row<'_>) -> rusqlite::Result<(TokenRecord, String)> {
    let methods: String = r.get(5)?;
    Ok((
        TokenRecord {
            user_id: r.get(0)?,
            project_id: r.get(1)?,
            audit_id: r.get(2)?,
            audit_chain_id: r.get(3)?,
            methods: serde_json::from_str(&methods).unwrap_or_else(|_| vec!["password".into()]),
            issued_at: r.get(6)?,
            expires_at: r.get(7)?,
            expires_unix: r.get(8)?,
        },
        r.get(4)?,
    ))
}

/// The record of the token whose secret hashes to `hash`, with its user's
/// name, if it is unrevoked, unexpired at `now_unix`, and its user enabled.
pub fn live_token(
    conn: &Connection,
    hash: &str,
    now_unix: i64,
) -> rusqlite::Result<Option<(TokenRecord, String)>> {
    conn.query_row(
        "SELECT t.user_id, t.project_id, t.audit_id, t.audit_chain_id, u.name, t.methods, \
         t.issued_at, t.expires_at, t.expires_unix \
         FROM tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.hash = ?1 AND t.revoked = 0 AND t.expires_unix > ?2 AND u.enabled = 1",
        params![hash, now_unix],
        record_row,
    )
    .optional()
}

/// The name of project `id` if it is enabled.
pub fn enabled_project_name(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT name FROM projects WHERE id = ?1 AND enabled = 1",
        params![id],
        |r| r.get(0),
    )
    .optional()
}

/// The audit id of the unrevoked token whose secret hashes to `hash`.
pub fn live_token_audit_id(conn: &Connection, hash: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT audit_id FROM tokens WHERE hash = ?1 AND revoked = 0",
        params![hash],
        |r| r.get(0),
    )
    .optional()
}

/// Which live tokens to revoke.
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    /// A token (by audit id) and every token got from it.
    Chain(&'a str),
    /// Every token of a user.
    User(&'a str),
    /// Every token scoped to a project.
    Project(&'a str),
    /// A user's tokens scoped to a project.
    UserOnProject(&'a str, &'a str),
    /// The tokens of every user on every project where they hold a role.
    Role(&'a str),
}

/// Revokes the live tokens `which` names. Returns how many there were.
pub fn revoke_tokens(conn: &Connection, which: Revoke<'_>) -> rusqlite::Result<usize> {
    const LIVE: &str = "UPDATE tokens SET revoked = 1 WHERE revoked = 0 AND";
    match which {
        Revoke::Chain(audit_id) => conn.execute(
            &format!("{LIVE} (audit_id = ?1 OR audit_chain_id = ?1)"),
            params![audit_id],
        ),
        Revoke::User(u) => conn.execute(&format!("{LIVE} (user_id = ?1)"), params![u]),
        Revoke::Project(p) => conn.execute(&format!("{LIVE} (project_id = ?1)"), params![p]),
        Revoke::UserOnProject(u, p) => conn.execute(
            &format!("{LIVE} (user_id = ?1 AND project_id = ?2)"),
            params![u, p],
        ),
        Revoke::Role(r) => conn.execute(
            &format!(
                "{LIVE} (EXISTS (SELECT 1 FROM role_assignments a WHERE a.role_id = ?1 \
                 AND a.user_id = tokens.user_id AND a.project_id = tokens.project_id))"
            ),
            params![r],
        ),
    }
}
