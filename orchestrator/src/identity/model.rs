//! Identity's things as the service keeps them, and their Keystone JSON.

use serde_json::{json, Value};

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
}

/// A domain row.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Whether it is enabled.
    pub enabled: bool,
}

impl Domain {
    /// Keystone's domain JSON.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "id": self.id, "name": self.name, "description": self.description,
            "enabled": self.enabled, "tags": [], "options": {},
            "links": { "self": format!("{base}/identity/v3/domains/{}", self.id) }
        })
    }
}

/// A project row.
#[derive(Debug, Clone)]
pub struct Project {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Its domain.
    pub domain_id: String,
    /// Description.
    pub description: String,
    /// Whether it is enabled.
    pub enabled: bool,
}

impl Project {
    /// Keystone's project JSON.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "id": self.id, "name": self.name, "domain_id": self.domain_id,
            "description": self.description, "enabled": self.enabled,
            "is_domain": false, "parent_id": self.domain_id, "tags": [], "options": {},
            "links": { "self": format!("{base}/identity/v3/projects/{}", self.id) }
        })
    }
}

/// A user row (without its password hash).
#[derive(Debug, Clone)]
pub struct User {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Its domain.
    pub domain_id: String,
    /// The project it is scoped to by default.
    pub default_project_id: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Description.
    pub description: String,
    /// Whether it is enabled.
    pub enabled: bool,
}

impl User {
    /// Keystone's user JSON.
    pub fn to_json(&self, base: &str) -> Value {
        let mut u = json!({
            "id": self.id, "name": self.name, "domain_id": self.domain_id,
            "description": self.description, "enabled": self.enabled,
            "password_expires_at": null, "options": {},
            "links": { "self": format!("{base}/identity/v3/users/{}", self.id) }
        });
        if let Some(p) = &self.default_project_id {
            u["default_project_id"] = json!(p);
        }
        if let Some(e) = &self.email {
            u["email"] = json!(e);
        }
        u
    }
}

/// The fields an update of a user may change (`None`: unchanged).
#[derive(Debug, Default)]
pub struct UserChanges<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New password hash.
    pub password_hash: Option<&'a str>,
    /// New default project.
    pub default_project_id: Option<&'a str>,
    /// New e-mail address.
    pub email: Option<&'a str>,
    /// New description.
    pub description: Option<&'a str>,
    /// Enabled or not.
    pub enabled: Option<bool>,
}

/// The fields an update of a project may change (`None`: unchanged).
#[derive(Debug, Default)]
pub struct ProjectChanges<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New description.
    pub description: Option<&'a str>,
    /// Enabled or not.
    pub enabled: Option<bool>,
}

/// One role assignment, with the names of what it joins.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// User id.
    pub user_id: String,
    /// Project id.
    pub project_id: String,
    /// Role id.
    pub role_id: String,
    /// Role name.
    pub role_name: String,
    /// User name.
    pub user_name: String,
    /// Project name.
    pub project_name: String,
}

/// Keystone's role JSON.
pub fn role_json(base: &str, id: &str, name: &str) -> Value {
    json!({
        "id": id, "name": name, "domain_id": null, "description": null, "options": {},
        "links": { "self": format!("{base}/identity/v3/roles/{id}") }
    })
}

/// A collection's `links` (one page: no previous, no next).
pub fn links(base: &str, path: &str) -> Value {
    json!({ "self": format!("{base}/identity/v3/{path}"), "previous": null, "next": null })
}

/// A token as stored: what it was issued for and until when.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// User id.
    pub user_id: String,
    /// Project id ("" when unscoped).
    pub project_id: String,
    /// Keystone's audit id (identifies the token in logs without revealing it).
    pub audit_id: String,
    /// The audit id of the first token of the chain this one was got from
    /// (`None` for a token got with a password).
    pub audit_chain_id: Option<String>,
    /// The authentication methods behind the token (`password`, `token`).
    pub methods: Vec<String>,
    /// Issue time, `…T…​.ffffffZ`.
    pub issued_at: String,
    /// Expiry time, `…T….ffffffZ`.
    pub expires_at: String,
    /// Expiry time, Unix seconds.
    pub expires_unix: i64,
}

impl TokenRecord {
    /// Keystone's `audit_ids`: the token's own id, then its chain's id when
    /// it was got from another token.
    pub fn audit_ids(&self) -> Vec<&str> {
        std::iter::once(self.audit_id.as_str())
            .chain(self.audit_chain_id.as_deref())
            .collect()
    }
}
