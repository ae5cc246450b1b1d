//! Identity (a Keystone v3 subset): domains, projects, users, roles, role
//! assignments, password authentication and bearer tokens.

pub mod bootstrap;
pub mod password;
pub mod token;

use rusqlite::{params, Connection, OptionalExtension};

/// The three roles every deployment has.
pub const ROLES: [&str; 3] = ["admin", "member", "reader"];

/// The id of the `Default` domain (as in Keystone).
pub const DEFAULT_DOMAIN_ID: &str = "default";

/// Who is calling: the user and project a valid token is scoped to.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// User id.
    pub user_id: String,
    /// User name.
    pub user_name: String,
    /// Project id ("" for an unscoped token).
    pub project_id: String,
    /// Project name ("" for an unscoped token).
    pub project_name: String,
    /// Role names on that project.
    pub roles: Vec<String>,
}

impl AuthContext {
    /// Whether the token carries the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
    /// Whether the token may change things (admin or member; not reader only).
    pub fn can_write(&self) -> bool {
        self.roles.iter().any(|r| r == "admin" || r == "member")
    }
    /// Whether the caller may see (and boot, or boot with) an image owned by
    /// `owner` with this `visibility`: its own project's images, public and
    /// community ones, and every image for an admin. `shared` images only by
    /// their owner: there are no image members.
    pub fn may_see_image(&self, owner: &str, visibility: &str) -> bool {
        self.is_admin()
            || owner == self.project_id
            || visibility == "public"
            || visibility == "community"
    }

    /// The context a server's background work acts in: its creator on its
    /// project with the roles the creator holds there now (as Nova's
    /// compute acts with the request's context). `None` if the user is gone.
    pub fn of_user_on_project(
        conn: &Connection,
        user_id: &str,
        project_id: &str,
    ) -> rusqlite::Result<Option<AuthContext>> {
        let names: Option<(String, String)> = conn
            .query_row(
                "SELECT u.name, coalesce((SELECT name FROM projects WHERE id = ?2), '') \
                 FROM users u WHERE u.id = ?1",
                params![user_id, project_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((user_name, project_name)) = names else {
            return Ok(None);
        };
        let roles = roles_on(conn, user_id, project_id)?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        Ok(Some(AuthContext {
            user_id: user_id.to_string(),
            user_name,
            project_id: project_id.to_string(),
            project_name,
            roles,
        }))
    }
}

/// A domain row.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// Looks a domain up by id or, failing that, by name.
pub fn find_domain(conn: &Connection, id_or_name: &str) -> rusqlite::Result<Option<Domain>> {
    conn.query_row(
        "SELECT id, name FROM domains WHERE id = ?1 UNION ALL \
         SELECT id, name FROM domains WHERE name = ?1 LIMIT 1",
        params![id_or_name],
        |r| {
            Ok(Domain {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        },
    )
    .optional()
}

/// Role names a user holds on a project.
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
