//! Rows of the compute tables (flavors, servers) and their Nova JSON.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

/// Nova statuses we use.
pub mod status {
    /// Being scheduled and started.
    pub const BUILD: &str = "BUILD";
    /// Running.
    pub const ACTIVE: &str = "ACTIVE";
    /// Stopped (the VMM is not running).
    pub const SHUTOFF: &str = "SHUTOFF";
    /// A soft reboot is in progress.
    pub const REBOOT: &str = "REBOOT";
    /// A hard reboot is in progress.
    pub const HARD_REBOOT: &str = "HARD_REBOOT";
    /// Failed; see the fault.
    pub const ERROR: &str = "ERROR";
}

/// Nova power states.
pub mod power {
    /// Unknown / not started.
    pub const NOSTATE: i64 = 0;
    /// Running.
    pub const RUNNING: i64 = 1;
    /// Shut down.
    pub const SHUTDOWN: i64 = 4;
}

/// A flavor.
#[derive(Debug, Clone)]
pub struct Flavor {
    /// Id (Nova flavor ids are strings).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub ram: i64,
    /// Root disk in GiB (0 = the image's size).
    pub disk: i64,
    /// Swap in MiB.
    pub swap: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral: i64,
    /// Visible to every project.
    pub is_public: bool,
    /// Network bandwidth factor (informational).
    pub rxtx_factor: f64,
    /// Free text.
    pub description: Option<String>,
}

const FLAVOR_COLS: &str =
    "id, name, vcpus, ram, disk, swap, ephemeral, is_public, rxtx_factor, description";

fn flavor_row(r: &Row<'_>) -> rusqlite::Result<Flavor> {
    Ok(Flavor {
        id: r.get(0)?,
        name: r.get(1)?,
        vcpus: r.get(2)?,
        ram: r.get(3)?,
        disk: r.get(4)?,
        swap: r.get(5)?,
        ephemeral: r.get(6)?,
        is_public: r.get(7)?,
        rxtx_factor: r.get(8)?,
        description: r.get(9)?,
    })
}

impl Flavor {
    /// Looks a flavor up by id.
    pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Flavor>> {
        conn.query_row(
            &format!("SELECT {FLAVOR_COLS} FROM flavors WHERE id = ?1"),
            params![id],
            flavor_row,
        )
        .optional()
    }

    /// Every flavor, by RAM then name (Nova's default sort is by flavorid).
    pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Flavor>> {
        let mut st = conn.prepare_cached(&format!(
            "SELECT {FLAVOR_COLS} FROM flavors ORDER BY ram, vcpus, name"
        ))?;
        let rows = st.query_map([], flavor_row)?;
        rows.collect()
    }

    /// Nova's flavor JSON (microversion 2.1 shape).
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "ram": self.ram,
            "vcpus": self.vcpus,
            "disk": self.disk,
            "swap": self.swap,
            "OS-FLV-EXT-DATA:ephemeral": self.ephemeral,
            "OS-FLV-DISABLED:disabled": false,
            "os-flavor-access:is_public": self.is_public,
            "rxtx_factor": self.rxtx_factor,
            "links": links(base, "flavors", &self.id),
        })
    }
}

/// Self and bookmark links of a compute resource.
pub fn links(base: &str, collection: &str, id: &str) -> Value {
    json!([
        { "rel": "self", "href": format!("{base}/compute/v2.1/{collection}/{id}") },
        { "rel": "bookmark", "href": format!("{base}/compute/{collection}/{id}") },
    ])
}

/// A server row.
#[derive(Debug, Clone)]
pub struct Server {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Creating user.
    pub user_id: String,
    /// Boot image.
    pub image_id: String,
    /// Flavor it was created with.
    pub flavor_id: String,
    /// vCPUs (copied from the flavor at create time).
    pub vcpus: i64,
    /// RAM in MiB.
    pub ram: i64,
    /// Disk in GiB.
    pub disk: i64,
    /// Nova status.
    pub status: String,
    /// Nova task state.
    pub task_state: Option<String>,
    /// Nova power state.
    pub power_state: i64,
    /// Fault JSON (`{"code", "message", "created"}`) when in ERROR.
    pub fault: Option<String>,
    /// Metadata JSON object.
    pub metadata: String,
    /// Created.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
    /// Last started.
    pub launched_at: Option<String>,
}

/// The columns [`Server::from_row`] reads, in order.
pub const SERVER_COLS: &str =
    "id, name, project_id, user_id, image_id, flavor_id, vcpus, ram, disk, \
    status, task_state, power_state, fault, metadata, created_at, updated_at, launched_at";

impl Server {
    /// Reads a row selected with [`SERVER_COLS`].
    pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Server> {
        Ok(Server {
            id: r.get(0)?,
            name: r.get(1)?,
            project_id: r.get(2)?,
            user_id: r.get(3)?,
            image_id: r.get(4)?,
            flavor_id: r.get(5)?,
            vcpus: r.get(6)?,
            ram: r.get(7)?,
            disk: r.get(8)?,
            status: r.get(9)?,
            task_state: r.get(10)?,
            power_state: r.get(11)?,
            fault: r.get(12)?,
            metadata: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
            launched_at: r.get(16)?,
        })
    }

    /// Looks a server up by id.
    pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Server>> {
        conn.query_row(
            &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
            params![id],
            Server::from_row,
        )
        .optional()
    }

    /// Every server row (for reconciliation).
    pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Server>> {
        let mut st = conn.prepare(&format!("SELECT {SERVER_COLS} FROM servers"))?;
        let rows = st.query_map([], Server::from_row)?;
        rows.collect()
    }

    fn vm_state(&self) -> &'static str {
        match self.status.as_str() {
            status::BUILD => "building",
            status::SHUTOFF => "stopped",
            status::ERROR => "error",
            _ => "active",
        }
    }

    /// Nova's server JSON (microversion 2.1 shape); admin-only fields when
    /// `admin`.
    pub fn to_json(&self, base: &str, admin: bool) -> Value {
        let metadata: Value = serde_json::from_str(&self.metadata).unwrap_or_else(|_| json!({}));
        let host_id = {
            use sha2::{Digest, Sha224};
            hex::encode(Sha224::digest(
                format!("{}nubo", self.project_id).as_bytes(),
            ))
        };
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "tenant_id": self.project_id,
            "user_id": self.user_id,
            "metadata": metadata,
            "hostId": host_id,
            "image": { "id": self.image_id, "links": [
                { "rel": "bookmark", "href": format!("{base}/compute/images/{}", self.image_id) }
            ] },
            "flavor": { "id": self.flavor_id, "links": [
                { "rel": "bookmark", "href": format!("{base}/compute/flavors/{}", self.flavor_id) }
            ] },
            "created": self.created_at,
            "updated": self.updated_at,
            "addresses": {},
            "accessIPv4": "",
            "accessIPv6": "",
            "links": links(base, "servers", &self.id),
            "OS-DCF:diskConfig": "MANUAL",
            "progress": if self.status == status::ACTIVE { 100 } else { 0 },
            "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-STS:task_state": self.task_state,
            "OS-EXT-STS:vm_state": self.vm_state(),
            "OS-EXT-STS:power_state": self.power_state,
            "OS-SRV-USG:launched_at": self.launched_at,
            "OS-SRV-USG:terminated_at": null,
            "config_drive": "",
            "key_name": null,
            "security_groups": [],
            "os-extended-volumes:volumes_attached": [],
        });
        if admin {
            v["OS-EXT-SRV-ATTR:host"] = json!("localhost");
            v["OS-EXT-SRV-ATTR:hypervisor_hostname"] = json!("localhost");
            v["OS-EXT-SRV-ATTR:instance_name"] = json!(format!("instance-{}", self.id));
        }
        if let Some(f) = &self.fault {
            if let Ok(fault) = serde_json::from_str::<Value>(f) {
                v["fault"] = fault;
            }
        }
        v
    }
}
