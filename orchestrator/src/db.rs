//! The daemon's state: one SQLite file (`STATE_DIR/nubo.db`) in WAL mode,
//! with versioned migrations recorded in `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

/// Errors of opening or migrating the state database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer nubo.
    #[error("state database has schema version {found}, newer than this nubo ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
}

/// The schema, one entry per version; entry N brings the file from N to N+1.
const MIGRATIONS: &[&str] = &[
    // 1: identity, images, flavors, servers, placement allocations, quotas.
    r#"
    CREATE TABLE domains (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE projects (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL REFERENCES domains(id),
        description TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL DEFAULT 1,
        UNIQUE (domain_id, name));
    CREATE TABLE users (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL REFERENCES domains(id),
        password_hash TEXT, default_project_id TEXT, email TEXT,
        description TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL DEFAULT 1,
        UNIQUE (domain_id, name));
    CREATE TABLE roles (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE role_assignments (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        role_id TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, project_id, role_id));
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, project_id TEXT NOT NULL,
        audit_id TEXT NOT NULL, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL,
        expires_unix INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE images (
        id TEXT PRIMARY KEY, name TEXT, owner TEXT NOT NULL, status TEXT NOT NULL,
        visibility TEXT NOT NULL, protected INTEGER NOT NULL DEFAULT 0,
        os_hidden INTEGER NOT NULL DEFAULT 0,
        disk_format TEXT, container_format TEXT, size INTEGER, virtual_size INTEGER,
        checksum TEXT, os_hash_algo TEXT, os_hash_value TEXT,
        min_disk INTEGER NOT NULL DEFAULT 0, min_ram INTEGER NOT NULL DEFAULT 0,
        properties TEXT NOT NULL DEFAULT '{}', tags TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX images_owner ON images(owner);
    CREATE TABLE flavors (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, vcpus INTEGER NOT NULL,
        ram INTEGER NOT NULL, disk INTEGER NOT NULL, swap INTEGER NOT NULL DEFAULT 0,
        ephemeral INTEGER NOT NULL DEFAULT 0, is_public INTEGER NOT NULL DEFAULT 1,
        rxtx_factor REAL NOT NULL DEFAULT 1.0, description TEXT,
        created_at TEXT NOT NULL);
    CREATE TABLE servers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL,
        user_id TEXT NOT NULL, image_id TEXT NOT NULL, flavor_id TEXT NOT NULL,
        vcpus INTEGER NOT NULL, ram INTEGER NOT NULL, disk INTEGER NOT NULL,
        status TEXT NOT NULL, task_state TEXT, power_state INTEGER NOT NULL DEFAULT 0,
        fault TEXT, metadata TEXT NOT NULL DEFAULT '{}', host TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, launched_at TEXT);
    CREATE INDEX servers_project ON servers(project_id);
    CREATE TABLE allocations (
        consumer_id TEXT PRIMARY KEY, vcpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL,
        disk_gb INTEGER NOT NULL);
    CREATE TABLE quotas (
        project_id TEXT NOT NULL, resource TEXT NOT NULL, hard_limit INTEGER NOT NULL,
        PRIMARY KEY (project_id, resource));
    "#,
    // 2: instance actions (what was asked of a server and how it ended).
    r#"
    CREATE TABLE instance_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, server_id TEXT NOT NULL,
        request_id TEXT NOT NULL, action TEXT NOT NULL, project_id TEXT NOT NULL,
        user_id TEXT NOT NULL, start_time TEXT NOT NULL, finish_time TEXT,
        result TEXT, detail TEXT);
    CREATE INDEX instance_actions_server ON instance_actions(server_id);
    "#,
    // 3: token chains (a token got from a token keeps its origin's expiry and
    // audit chain, and is revoked with it) and the authentication methods a
    // token was issued for; flavor access (the projects that may use a
    // private flavor).
    r#"
    ALTER TABLE tokens ADD COLUMN audit_chain_id TEXT;
    ALTER TABLE tokens ADD COLUMN methods TEXT NOT NULL DEFAULT '["password"]';
    CREATE INDEX tokens_audit_chain ON tokens(audit_chain_id);
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE flavor_projects (
        flavor_id TEXT NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        PRIMARY KEY (flavor_id, project_id));
    CREATE INDEX flavor_projects_project ON flavor_projects(project_id);
    "#,
    // 4: networking (Neutron): networks and their segments, subnets, ports
    // with their fixed IPs, security group bindings (the groups come in
    // migration 5: no foreign key) and allowed address pairs, routers and
    // their routes, floating IPs.
    r#"
    CREATE TABLE networks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
        project_id TEXT NOT NULL, admin_state_up INTEGER NOT NULL DEFAULT 1,
        shared INTEGER NOT NULL DEFAULT 0, external INTEGER NOT NULL DEFAULT 0,
        port_security INTEGER NOT NULL DEFAULT 1, mtu INTEGER NOT NULL,
        network_type TEXT NOT NULL, physnet TEXT, segmentation_id INTEGER,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1);
    CREATE INDEX networks_project ON networks(project_id);
    CREATE TABLE segment_allocations (
        network_type TEXT NOT NULL, physnet TEXT NOT NULL, segmentation_id INTEGER NOT NULL,
        network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
        PRIMARY KEY (network_type, physnet, segmentation_id));
    CREATE TABLE subnets (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
        project_id TEXT NOT NULL,
        network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
        cidr TEXT NOT NULL, gateway_ip TEXT, enable_dhcp INTEGER NOT NULL DEFAULT 1,
        allocation_pools TEXT NOT NULL DEFAULT '[]', dns_nameservers TEXT NOT NULL DEFAULT '[]',
        host_routes TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1);
    CREATE INDEX subnets_network ON subnets(network_id);
    CREATE TABLE ports (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
        project_id TEXT NOT NULL,
        network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
        mac_address TEXT NOT NULL, admin_state_up INTEGER NOT NULL DEFAULT 1,
        status TEXT NOT NULL DEFAULT 'DOWN', device_id TEXT NOT NULL DEFAULT '',
        device_owner TEXT NOT NULL DEFAULT '', port_security INTEGER NOT NULL DEFAULT 1,
        host_id TEXT NOT NULL DEFAULT '', dns_name TEXT NOT NULL DEFAULT '',
        created_by_server INTEGER NOT NULL DEFAULT 0, nic_index INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1,
        UNIQUE (network_id, mac_address));
    CREATE INDEX ports_network ON ports(network_id);
    CREATE INDEX ports_device ON ports(device_id);
    CREATE TABLE port_fixed_ips (
        port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
        subnet_id TEXT NOT NULL REFERENCES subnets(id) ON DELETE CASCADE,
        ip_address TEXT NOT NULL, position INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (subnet_id, ip_address));
    CREATE INDEX port_fixed_ips_port ON port_fixed_ips(port_id);
    CREATE TABLE port_security_groups (
        port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
        security_group_id TEXT NOT NULL,
        PRIMARY KEY (port_id, security_group_id));
    CREATE INDEX port_security_groups_group ON port_security_groups(security_group_id);
    CREATE TABLE port_allowed_address_pairs (
        port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
        ip_address TEXT NOT NULL, mac_address TEXT NOT NULL,
        PRIMARY KEY (port_id, ip_address, mac_address));
    CREATE TABLE routers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
        project_id TEXT NOT NULL, admin_state_up INTEGER NOT NULL DEFAULT 1,
        gw_network_id TEXT REFERENCES networks(id), gw_port_id TEXT,
        enable_snat INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE router_routes (
        router_id TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
        destination TEXT NOT NULL, nexthop TEXT NOT NULL,
        PRIMARY KEY (router_id, destination, nexthop));
    CREATE TABLE floating_ips (
        id TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', project_id TEXT NOT NULL,
        floating_network_id TEXT NOT NULL REFERENCES networks(id),
        floating_ip_address TEXT NOT NULL, floating_port_id TEXT NOT NULL,
        port_id TEXT, fixed_ip_address TEXT, router_id TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1);
    "#,
    // 5: security groups and their rules. At most one default group per
    // project (the partial unique index), however many requests race to
    // create it. A group's rules, and the rules of other groups that name it
    // as their remote group, go with it (as in Neutron).
    r#"
    CREATE TABLE security_groups (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '', is_default INTEGER NOT NULL DEFAULT 0,
        revision_number INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX security_groups_project ON security_groups(project_id);
    CREATE UNIQUE INDEX security_groups_one_default
        ON security_groups(project_id) WHERE is_default = 1;
    CREATE TABLE security_group_rules (
        id TEXT PRIMARY KEY,
        security_group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL, direction TEXT NOT NULL, ethertype TEXT NOT NULL,
        protocol TEXT, port_range_min INTEGER, port_range_max INTEGER,
        remote_ip_prefix TEXT,
        remote_group_id TEXT REFERENCES security_groups(id) ON DELETE CASCADE,
        description TEXT NOT NULL DEFAULT '', revision_number INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX security_group_rules_group ON security_group_rules(security_group_id);
    CREATE INDEX security_group_rules_remote ON security_group_rules(remote_group_id);
    CREATE INDEX security_group_rules_project ON security_group_rules(project_id);
    "#,
    // 6: Block Storage: volume types, volumes, snapshots, attachments and
    // the user-visible messages of failed operations. A volume's row goes
    // when its data is gone; its attachments go with it.
    r#"
    CREATE TABLE volume_types (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '', is_public INTEGER NOT NULL DEFAULT 1,
        extra_specs TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL);
    CREATE TABLE volumes (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
        name TEXT, description TEXT, size INTEGER NOT NULL, status TEXT NOT NULL,
        volume_type_id TEXT NOT NULL, backend TEXT NOT NULL,
        bootable INTEGER NOT NULL DEFAULT 0, multiattach INTEGER NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '{}', image_metadata TEXT,
        snapshot_id TEXT, source_volid TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX volumes_project ON volumes(project_id);
    CREATE TABLE volume_snapshots (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
        volume_id TEXT NOT NULL, name TEXT, description TEXT,
        size INTEGER NOT NULL, status TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX volume_snapshots_volume ON volume_snapshots(volume_id);
    CREATE INDEX volume_snapshots_project ON volume_snapshots(project_id);
    CREATE TABLE volume_attachments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        server_id TEXT NOT NULL, device TEXT NOT NULL, status TEXT NOT NULL,
        delete_on_termination INTEGER NOT NULL DEFAULT 0, boot_index INTEGER,
        attached_at TEXT, UNIQUE (volume_id, server_id));
    CREATE INDEX volume_attachments_server ON volume_attachments(server_id);
    CREATE TABLE volume_messages (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, resource_type TEXT NOT NULL,
        resource_id TEXT NOT NULL, message TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE INDEX volume_messages_project ON volume_messages(project_id);
    "#,
];

/// A shared handle on the state database. Statements are short; one
/// connection behind a mutex serialises writers the way SQLite would anyway.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Locks the connection. A panic while holding it cannot leave SQLite
    /// inconsistent (transactions roll back on drop), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies every migration newer than the file's `user_version`, each in its
/// own transaction.
fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(DbError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "state database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_file_and_reopens_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nubo.db");
        {
            let db = Db::open(&path).expect("open");
            let v: i64 = db
                .lock()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .expect("version");
            assert_eq!(v, MIGRATIONS.len() as i64);
            db.lock()
                .execute("INSERT INTO roles (id, name) VALUES ('r', 'x')", [])
                .expect("insert");
        }
        let db = Db::open(&path).expect("reopen");
        let n: i64 = db
            .lock()
            .query_row("SELECT count(*) FROM roles", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nubo.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "user_version", 999).expect("set");
        }
        assert!(matches!(Db::open(&path), Err(DbError::TooNew { .. })));
    }
}
