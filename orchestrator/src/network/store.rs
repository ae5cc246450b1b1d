//! The Networking service's SQL, and the only place with it.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::model::*;

fn std_of(r: &Row<'_>) -> rusqlite::Result<Standard> {
    Ok(Standard {
        id: r.get("id")?,
        name: r.get("name").unwrap_or_default(),
        description: r.get("description")?,
        project_id: r.get("project_id")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        revision: r.get("revision")?,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(s: String) -> Vec<T> {
    serde_json::from_str(&s).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

// ---- networks ----

fn network_of(r: &Row<'_>) -> rusqlite::Result<Network> {
    Ok(Network {
        std: std_of(r)?,
        admin_state_up: r.get("admin_state_up")?,
        shared: r.get("shared")?,
        external: r.get("external")?,
        port_security: r.get("port_security")?,
        mtu: r.get("mtu")?,
        network_type: r.get("network_type")?,
        physnet: r.get("physnet")?,
        segmentation_id: r.get("segmentation_id")?,
        tenant_segment: false,
    })
}

/// Inserts a network.
pub fn insert_network(conn: &Connection, n: &Network) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO networks (id, name, description, project_id, admin_state_up, shared, \
         external, port_security, mtu, network_type, physnet, segmentation_id, created_at, \
         updated_at, revision) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)",
        params![
            n.std.id,
            n.std.name,
            n.std.description,
            n.std.project_id,
            n.admin_state_up,
            n.shared,
            n.external,
            n.port_security,
            n.mtu,
            n.network_type,
            n.physnet,
            n.segmentation_id,
            n.std.created_at,
            n.std.updated_at,
            n.std.revision
        ],
    )?;
    Ok(())
}

/// Writes a network's changeable fields back.
pub fn update_network(conn: &Connection, n: &Network) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE networks SET name=?2, description=?3, admin_state_up=?4, shared=?5, external=?6, \
         port_security=?7, mtu=?8, updated_at=?9, revision=?10 WHERE id=?1",
        params![
            n.std.id,
            n.std.name,
            n.std.description,
            n.admin_state_up,
            n.shared,
            n.external,
            n.port_security,
            n.mtu,
            n.std.updated_at,
            n.std.revision
        ],
    )?;
    Ok(())
}

/// Deletes a network (its subnets, ports and segment go with it).
pub fn delete_network(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM networks WHERE id = ?1", [id])?;
    Ok(())
}

/// One network.
pub fn get_network(conn: &Connection, id: &str) -> rusqlite::Result<Option<Network>> {
    conn.query_row("SELECT * FROM networks WHERE id = ?1", [id], network_of)
        .optional()
}

/// The id of the oldest network called `name`, if any.
pub fn network_id_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT id FROM networks WHERE name = ?1 ORDER BY created_at, id LIMIT 1",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Every network, by creation then id.
pub fn list_networks(conn: &Connection) -> rusqlite::Result<Vec<Network>> {
    let mut st = conn.prepare("SELECT * FROM networks ORDER BY created_at, id")?;
    let rows = st.query_map([], network_of)?;
    rows.collect()
}

/// Records a segment as taken by `network_id`; `false` if it already is.
pub fn allocate_segment(
    conn: &Connection,
    network_type: &str,
    physnet: &str,
    segmentation_id: i64,
    network_id: &str,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO segment_allocations (network_type, physnet, segmentation_id, \
         network_id) VALUES (?1, ?2, ?3, ?4)",
        params![network_type, physnet, segmentation_id, network_id],
    )?;
    Ok(n == 1)
}

/// Whether the segment is taken by `network_id`.
pub fn segment_owner_is(
    conn: &Connection,
    network_type: &str,
    physnet: &str,
    segmentation_id: i64,
    network_id: &str,
) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM segment_allocations WHERE network_type = ?1 AND \
         physnet = ?2 AND segmentation_id = ?3 AND network_id = ?4)",
        params![network_type, physnet, segmentation_id, network_id],
        |r| r.get(0),
    )
}

/// The segmentation ids taken for `network_type` on `physnet`.
pub fn taken_segments(
    conn: &Connection,
    network_type: &str,
    physnet: &str,
) -> rusqlite::Result<HashSet<i64>> {
    let mut st = conn.prepare(
        "SELECT segmentation_id FROM segment_allocations WHERE network_type = ?1 AND physnet = ?2",
    )?;
    let rows = st.query_map(params![network_type, physnet], |r| r.get(0))?;
    rows.collect()
}

// ---- subnets ----

fn subnet_of(r: &Row<'_>) -> rusqlite::Result<Subnet> {
    Ok(Subnet {
        std: std_of(r)?,
        network_id: r.get("network_id")?,
        cidr: r.get("cidr")?,
        gateway_ip: r.get("gateway_ip")?,
        enable_dhcp: r.get("enable_dhcp")?,
        allocation_pools: from_json(r.get("allocation_pools")?),
        dns_nameservers: from_json(r.get("dns_nameservers")?),
        host_routes: from_json(r.get("host_routes")?),
    })
}

/// Inserts a subnet.
pub fn insert_subnet(conn: &Connection, s: &Subnet) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO subnets (id, name, description, project_id, network_id, cidr, gateway_ip, \
         enable_dhcp, allocation_pools, dns_nameservers, host_routes, created_at, updated_at, \
         revision) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
        params![
            s.std.id,
            s.std.name,
            s.std.description,
            s.std.project_id,
            s.network_id,
            s.cidr,
            s.gateway_ip,
            s.enable_dhcp,
            to_json(&s.allocation_pools),
            to_json(&s.dns_nameservers),
            to_json(&s.host_routes),
            s.std.created_at,
            s.std.updated_at,
            s.std.revision
        ],
    )?;
    Ok(())
}

/// Writes a subnet's changeable fields back.
pub fn update_subnet(conn: &Connection, s: &Subnet) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE subnets SET name=?2, description=?3, gateway_ip=?4, enable_dhcp=?5, \
         allocation_pools=?6, dns_nameservers=?7, host_routes=?8, updated_at=?9, revision=?10 \
         WHERE id=?1",
        params![
            s.std.id,
            s.std.name,
            s.std.description,
            s.gateway_ip,
            s.enable_dhcp,
            to_json(&s.allocation_pools),
            to_json(&s.dns_nameservers),
            to_json(&s.host_routes),
            s.std.updated_at,
            s.std.revision
        ],
    )?;
    Ok(())
}

/// Deletes a subnet.
pub fn delete_subnet(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM subnets WHERE id = ?1", [id])?;
    Ok(())
}

/// One subnet.
pub fn get_subnet(conn: &Connection, id: &str) -> rusqlite::Result<Option<Subnet>> {
    conn.query_row("SELECT * FROM subnets WHERE id = ?1", [id], subnet_of)
        .optional()
}

/// Every subnet, by creation then id.
pub fn list_subnets(conn: &Connection) -> rusqlite::Result<Vec<Subnet>> {
    let mut st = conn.prepare("SELECT * FROM subnets ORDER BY created_at, id")?;
    let rows = st.query_map([], subnet_of)?;
    rows.collect()
}

/// A network's subnets, by creation then id.
pub fn subnets_of(conn: &Connection, network_id: &str) -> rusqlite::Result<Vec<Subnet>> {
    let mut st =
        conn.prepare("SELECT * FROM subnets WHERE network_id = ?1 ORDER BY created_at, id")?;
    let rows = st.query_map([network_id], subnet_of)?;
    rows.collect()
}

// ---- ports ----

fn port_of(r: &Row<'_>) -> rusqlite::Result<Port> {
    Ok(Port {
        std: std_of(r)?,
        network_id: r.get("network_id")?,
        mac_address: r.get("mac_address")?,
        admin_state_up: r.get("admin_state_up")?,
        status: r.get("status")?,
        device_id: r.get("device_id")?,
        device_owner: r.get("device_owner")?,
        port_security: r.get("port_security")?,
        host_id: r.get("host_id")?,
        dns_name: r.get("dns_name")?,
        created_by_server: r.get("created_by_server")?,
        nic_index: r.get("nic_index")?,
        fixed_ips: Vec::new(),
        security_groups: Vec::new(),
        allowed_address_pairs: Vec::new(),
    })
}

fn fill_port(conn: &Connection, mut p: Port) -> rusqlite::Result<Port> {
    let mut st = conn.prepare_cached(
        "SELECT subnet_id, ip_address FROM port_fixed_ips WHERE port_id = ?1 ORDER BY position",
    )?;
    p.fixed_ips = st
        .query_map([&p.std.id], |r| {
            Ok(FixedIp {
                subnet_id: r.get(0)?,
                ip_address: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare_cached(
        "SELECT security_group_id FROM port_security_groups WHERE port_id = ?1 \
         ORDER BY security_group_id",
    )?;
    p.security_groups = st
        .query_map([&p.std.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare_cached(
        "SELECT ip_address, mac_address FROM port_allowed_address_pairs WHERE port_id = ?1 \
         ORDER BY ip_address, mac_address",
    )?;
    p.allowed_address_pairs = st
        .query_map([&p.std.id], |r| {
            Ok(AddressPair {
                ip_address: r.get(0)?,
                mac_address: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(p)
}

fn write_port_children(conn: &Connection, p: &Port) -> rusqlite::Result<()> {
    for t in [
        "port_fixed_ips",
        "port_security_groups",
        "port_allowed_address_pairs",
    ] {
        conn.execute(&format!("DELETE FROM {t} WHERE port_id = ?1"), [&p.std.id])?;
    }
    for (i, ip) in p.fixed_ips.iter().enumerate() {
        conn.execute(
            "INSERT INTO port_fixed_ips (port_id, subnet_id, ip_address, position) \
             VALUES (?1, ?2, ?3, ?4)",
            params![p.std.id, ip.subnet_id, ip.ip_address, i as i64],
        )?;
    }
    for g in &p.security_groups {
        conn.execute(
            "INSERT OR IGNORE INTO port_security_groups (port_id, security_group_id) \
             VALUES (?1, ?2)",
            params![p.std.id, g],
        )?;
    }
    for a in &p.allowed_address_pairs {
        conn.execute(
            "INSERT OR IGNORE INTO port_allowed_address_pairs (port_id, ip_address, mac_address) \
             VALUES (?1, ?2, ?3)",
            params![p.std.id, a.ip_address, a.mac_address],
        )?;
    }
    Ok(())
}

/// Inserts a port with its fixed IPs, groups and address pairs. A fixed IP
/// already taken is a constraint error (the caller checked first).
pub fn insert_port(conn: &Connection, p: &Port) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO ports (id, name, description, project_id, network_id, mac_address, \
         admin_state_up, status, device_id, device_owner, port_security, host_id, dns_name, \
         created_by_server, nic_index, created_at, updated_at, revision) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
        params![
            p.std.id,
            p.std.name,
            p.std.description,
            p.std.project_id,
            p.network_id,
            p.mac_address,
            p.admin_state_up,
            p.status,
            p.device_id,
            p.device_owner,
            p.port_security,
            p.host_id,
            p.dns_name,
            p.created_by_server,
            p.nic_index,
            p.std.created_at,
            p.std.updated_at,
            p.std.revision
        ],
    )?;
    write_port_children(conn, p)
}

/// Writes a port back, children included.
pub fn update_port(conn: &Connection, p: &Port) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE ports SET name=?2, description=?3, admin_state_up=?4, status=?5, device_id=?6, \
         device_owner=?7, port_security=?8, host_id=?9, dns_name=?10, created_by_server=?11, \
         nic_index=?12, updated_at=?13, revision=?14, mac_address=?15 WHERE id=?1",
        params![
            p.std.id,
            p.std.name,
            p.std.description,
            p.admin_state_up,
            p.status,
            p.device_id,
            p.device_owner,
            p.port_security,
            p.host_id,
            p.dns_name,
            p.created_by_server,
            p.nic_index,
            p.std.updated_at,
            p.std.revision,
            p.mac_address
        ],
    )?;
    write_port_children(conn, p)
}

/// Sets the status of the given ports (no revision bump: the agent's view).
pub fn set_port_status(conn: &Connection, ids: &[String], status: &str) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached("UPDATE ports SET status = ?2 WHERE id = ?1")?;
    for id in ids {
        st.execute(params![id, status])?;
    }
    Ok(())
}

/// Deletes a port.
pub fn delete_port(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM ports WHERE id = ?1", [id])?;
    Ok(())
}

/// One port, with its children.
pub fn get_port(conn: &Connection, id: &str) -> rusqlite::Result<Option<Port>> {
    match conn
        .query_row("SELECT * FROM ports WHERE id = ?1", [id], port_of)
        .optional()?
    {
        Some(p) => Ok(Some(fill_port(conn, p)?)),
        None => Ok(None),
    }
}

/// Ports matching `where_sql` (a fixed clause with `?1`), with children.
fn ports_where(conn: &Connection, where_sql: &str, arg: &str) -> rusqlite::Result<Vec<Port>> {
    let mut st = conn.prepare(&format!(
        "SELECT * FROM ports WHERE {where_sql} ORDER BY created_at, id"
    ))?;
    let rows: Vec<Port> = st
        .query_map([arg], port_of)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|p| fill_port(conn, p)).collect()
}

/// Every port.
pub fn list_ports(conn: &Connection) -> rusqlite::Result<Vec<Port>> {
    ports_where(conn, "?1 = ?1", "")
}

/// A network's ports.
pub fn ports_of_network(conn: &Connection, network_id: &str) -> rusqlite::Result<Vec<Port>> {
    ports_where(conn, "network_id = ?1", network_id)
}

/// The ports of a device (a server, a router), in NIC order.
pub fn ports_of_device(conn: &Connection, device_id: &str) -> rusqlite::Result<Vec<Port>> {
    let mut v = ports_where(conn, "device_id = ?1", device_id)?;
    v.sort_by(|a, b| a.nic_index.cmp(&b.nic_index).then(a.std.id.cmp(&b.std.id)));
    Ok(v)
}

/// The ports bound to `host`.
pub fn ports_on_host(conn: &Connection, host: &str) -> rusqlite::Result<Vec<Port>> {
    ports_where(conn, "host_id = ?1", host)
}

/// The ports with an address on `subnet_id`.
pub fn ports_on_subnet(conn: &Connection, subnet_id: &str) -> rusqlite::Result<Vec<Port>> {
    ports_where(
        conn,
        "id IN (SELECT port_id FROM port_fixed_ips WHERE subnet_id = ?1)",
        subnet_id,
    )
}

/// The addresses taken on a subnet.
pub fn taken_ips(conn: &Connection, subnet_id: &str) -> rusqlite::Result<HashSet<String>> {
    let mut st = conn.prepare("SELECT ip_address FROM port_fixed_ips WHERE subnet_id = ?1")?;
    let rows = st.query_map([subnet_id], |r| r.get(0))?;
    rows.collect()
}

/// Whether `mac` is used on `network_id`.
pub fn mac_in_use(conn: &Connection, network_id: &str, mac: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM ports WHERE network_id = ?1 AND mac_address = ?2)",
        params![network_id, mac],
        |r| r.get(0),
    )
}

/// The addresses (fixed IPs, allowed address pairs) of the ports in a
/// security group.
pub fn group_member_addresses(conn: &Connection, group_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT f.ip_address FROM port_fixed_ips f JOIN port_security_groups g \
         ON g.port_id = f.port_id WHERE g.security_group_id = ?1 \
         UNION SELECT a.ip_address FROM port_allowed_address_pairs a JOIN port_security_groups g \
         ON g.port_id = a.port_id WHERE g.security_group_id = ?1 ORDER BY 1",
    )?;
    let rows = st.query_map([group_id], |r| r.get(0))?;
    rows.collect()
}

// ---- routers ----

fn router_of(r: &Row<'_>) -> rusqlite::Result<Router> {
    Ok(Router {
        std: std_of(r)?,
        admin_state_up: r.get("admin_state_up")?,
        gw_network_id: r.get("gw_network_id")?,
        gw_port_id: r.get("gw_port_id")?,
        enable_snat: r.get("enable_snat")?,
        routes: Vec::new(),
    })
}

fn fill_router(conn: &Connection, mut r: Router) -> rusqlite::Result<Router> {
    let mut st = conn.prepare_cached(
        "SELECT destination, nexthop FROM router_routes WHERE router_id = ?1 \
         ORDER BY destination, nexthop",
    )?;
    r.routes = st
        .query_map([&r.std.id], |row| {
            Ok(RouteJson {
                destination: row.get(0)?,
                nexthop: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(r)
}

/// Inserts or replaces a router and its routes.
pub fn save_router(conn: &Connection, r: &Router) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO routers (id, name, description, project_id, admin_state_up, gw_network_id, \
         gw_port_id, enable_snat, created_at, updated_at, revision) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11) ON CONFLICT (id) DO UPDATE SET \
         name=excluded.name, description=excluded.description, \
         admin_state_up=excluded.admin_state_up, gw_network_id=excluded.gw_network_id, \
         gw_port_id=excluded.gw_port_id, enable_snat=excluded.enable_snat, \
         updated_at=excluded.updated_at, revision=excluded.revision",
        params![
            r.std.id,
            r.std.name,
            r.std.description,
            r.std.project_id,
            r.admin_state_up,
            r.gw_network_id,
            r.gw_port_id,
            r.enable_snat,
            r.std.created_at,
            r.std.updated_at,
            r.std.revision
        ],
    )?;
    conn.execute(
        "DELETE FROM router_routes WHERE router_id = ?1",
        [&r.std.id],
    )?;
    for rt in &r.routes {
        conn.execute(
            "INSERT OR IGNORE INTO router_routes (router_id, destination, nexthop) \
             VALUES (?1, ?2, ?3)",
            params![r.std.id, rt.destination, rt.nexthop],
        )?;
    }
    Ok(())
}

/// Deletes a router.
pub fn delete_router(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM routers WHERE id = ?1", [id])?;
    Ok(())
}

/// One router.
pub fn get_router(conn: &Connection, id: &str) -> rusqlite::Result<Option<Router>> {
    match conn
        .query_row("SELECT * FROM routers WHERE id = ?1", [id], router_of)
        .optional()?
    {
        Some(r) => Ok(Some(fill_router(conn, r)?)),
        None => Ok(None),
    }
}

/// Every router.
pub fn list_routers(conn: &Connection) -> rusqlite::Result<Vec<Router>> {
    let mut st = conn.prepare("SELECT * FROM routers ORDER BY created_at, id")?;
    let rows: Vec<Router> = st
        .query_map([], router_of)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|r| fill_router(conn, r)).collect()
}

// ---- floating IPs ----

fn fip_of(r: &Row<'_>) -> rusqlite::Result<FloatingIp> {
    Ok(FloatingIp {
        std: std_of(r)?,
        floating_network_id: r.get("floating_network_id")?,
        floating_ip_address: r.get("floating_ip_address")?,
        floating_port_id: r.get("floating_port_id")?,
        port_id: r.get("port_id")?,
        fixed_ip_address: r.get("fixed_ip_address")?,
        router_id: r.get("router_id")?,
    })
}

/// Inserts or replaces a floating IP.
pub fn save_fip(conn: &Connection, f: &FloatingIp) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO floating_ips (id, description, project_id, floating_network_id, \
         floating_ip_address, floating_port_id, port_id, fixed_ip_address, router_id, \
         created_at, updated_at, revision) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12) \
         ON CONFLICT (id) DO UPDATE SET description=excluded.description, \
         port_id=excluded.port_id, fixed_ip_address=excluded.fixed_ip_address, \
         router_id=excluded.router_id, updated_at=excluded.updated_at, revision=excluded.revision",
        params![
            f.std.id,
            f.std.description,
            f.std.project_id,
            f.floating_network_id,
            f.floating_ip_address,
            f.floating_port_id,
            f.port_id,
            f.fixed_ip_address,
            f.router_id,
            f.std.created_at,
            f.std.updated_at,
            f.std.revision
        ],
    )?;
    Ok(())
}

/// Deletes a floating IP.
pub fn delete_fip(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM floating_ips WHERE id = ?1", [id])?;
    Ok(())
}

/// One floating IP.
pub fn get_fip(conn: &Connection, id: &str) -> rusqlite::Result<Option<FloatingIp>> {
    conn.query_row("SELECT * FROM floating_ips WHERE id = ?1", [id], fip_of)
        .optional()
}

/// Every floating IP.
pub fn list_fips(conn: &Connection) -> rusqlite::Result<Vec<FloatingIp>> {
    let mut st = conn.prepare("SELECT * FROM floating_ips ORDER BY created_at, id")?;
    let rows = st.query_map([], fip_of)?;
    rows.collect()
}

// ---- usage ----

/// How many of a quota resource `project` has.
pub fn usage(conn: &Connection, project: &str, resource: &str) -> rusqlite::Result<i64> {
    let table = match resource {
        "network" => "networks",
        "subnet" => "subnets",
        "port" => "ports",
        "router" => "routers",
        "floatingip" => "floating_ips",
        _ => return Ok(0),
    };
    conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE project_id = ?1"),
        [project],
        |r| r.get(0),
    )
}
