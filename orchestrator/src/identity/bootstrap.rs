//! First start: the `Default` domain, the `admin` project, user and role,
//! the `member` and `reader` roles, and `STATE_DIR/admin-openrc`.

use std::path::Path;

use rand::distributions::{Alphanumeric, DistString};
use rusqlite::Connection;

use super::password;
use super::store;

/// Creates the initial identity records unless the admin user exists.
/// Returns whether it created them.
pub fn seed(conn: &Connection, admin_password: &str) -> Result<bool, String> {
    if store::admin_exists(conn).map_err(|e| e.to_string())? {
        return Ok(false);
    }
    let hash = password::hash(admin_password)?;
    store::seed(conn, &hash).map_err(|e| e.to_string())?;
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
    crate::state_dir::write_atomic(path, text.as_bytes())
}
