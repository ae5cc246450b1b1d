//! First start: the `Default` domain, the `admin` project, user and role,
//! the `member` and `reader` roles, and `STATE_DIR/admin-openrc`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::distributions::{Alphanumeric, DistString};
use rusqlite::{params, Connection, OptionalExtension};

use super::model::{DEFAULT_DOMAIN_ID, ROLES};
use super::password;
use crate::util::new_hex_id;

/// Creates the initial identity records unless the admin user exists.
/// Returns whether it created them.
pub fn seed(conn: &Connection, admin_password: &str) -> Result<bool, String> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT id FROM users WHERE name = 'admin' AND domain_id = ?1",
            params![DEFAULT_DOMAIN_ID],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    if exists.is_some() {
        return Ok(false);
    }
    let hash = password::hash(admin_password)?;
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
            params![user, DEFAULT_DOMAIN_ID, hash, project],
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
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    match run() {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| e.to_string())?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.to_string());
        }
    }
    Ok(true)
}

/// A random admin password (24 alphanumerics).
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

/// Writes `admin-openrc` (mode 0600) for `source`-ing before `openstack`.
pub fn write_openrc(path: &Path, auth_url: &str, admin_password: &str) -> std::io::Result<()> {
    let quoted = admin_password.replace('\'', r"'\''");
    let text = format!(
        "# Nubo admin credentials: `source` this file, then run `openstack ...`.\n\
         export OS_AUTH_URL={auth_url}\n\
         export OS_USERNAME=admin\n\
         export OS_PASSWORD='{quoted}'\n\
         export OS_PROJECT_NAME=admin\n\
         export OS_USER_DOMAIN_NAME=Default\n\
         export OS_PROJECT_DOMAIN_NAME=Default\n\
         export OS_IDENTITY_API_VERSION=3\n\
         export OS_REGION_NAME=RegionOne\n\
         export OS_INTERFACE=public\n"
    );
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
