//! Networks: visibility, validation, segment allocation (tenant VNIs and
//! VLANs, admins' provider segments), update and delete.

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::model::*;
use super::service::*;
use super::store;
use crate::config::TenantNetworkType;
use crate::host::net::plan::Segment;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
/// Network `id` if the caller may see it (its own, shared, external, or any
/// for an admin), else 404.
pub fn visible_network(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<Network> {
    match store::get_network(conn, id)? {
        Some(n) if network_visible(auth, &n) => Ok(n),
        _ => Err(ApiError::not_found(format!(
            "Network {id} could not be found."
        ))),
    }
}

pub(crate) fn network_visible(auth: &AuthContext, n: &Network) -> bool {
    auth.is_admin() || n.std.project_id == auth.project_id || n.shared || n.external
}

/// Every network the caller sees, with its subnets' ids.
pub fn list_networks(
    conn: &Connection,
    auth: &AuthContext,
) -> ApiResult<Vec<(Network, Vec<String>)>> {
    let nets = store::list_networks(conn)?;
    let subnets = store::list_subnets(conn)?;
    Ok(nets
        .into_iter()
        .filter(|n| network_visible(auth, n))
        .map(|n| {
            let ids = subnets
                .iter()
                .filter(|s| s.network_id == n.std.id)
                .map(|s| s.std.id.clone())
                .collect();
            (n, ids)
        })
        .collect())
}

/// The ids of a network's subnets.
pub fn subnet_ids(conn: &Connection, network_id: &str) -> ApiResult<Vec<String>> {
    Ok(store::subnets_of(conn, network_id)?
        .into_iter()
        .map(|s| s.std.id)
        .collect())
}

const NETWORK_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "port_security_enabled",
    "mtu",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "is_default",
    "dns_domain",
    "qos_policy_id",
];

/// The fields a network body may have.
pub fn network_fields() -> &'static [&'static str] {
    NETWORK_FIELDS
}

/// The segment of a network.
pub fn segment_of(n: &Network) -> Segment {
    let physnet = n.physnet.clone().unwrap_or_default();
    let id = n.segmentation_id.unwrap_or(0);
    match n.network_type.as_str() {
        "flat" => Segment::Flat { physnet },
        "vlan" => Segment::Vlan {
            physnet,
            vid: u16::try_from(id).unwrap_or(0),
        },
        _ => Segment::Vxlan {
            vni: u32::try_from(id).unwrap_or(0),
        },
    }
}

fn max_mtu(network_type: &str) -> i64 {
    if network_type == "vxlan" {
        1450
    } else {
        1500
    }
}

/// Validates a network create body and chooses its segment (a free one for
/// tenant networks); nothing is stored. Ask the host about
/// [`segment_of`] the result, then [`store_network`] it.
pub fn prepare_network(
    conn: &Connection,
    cx: &Cx<'_>,
    m: &Map<String, Value>,
) -> ApiResult<Network> {
    let project = owner_project(cx, m)?;
    crate::http::policy::require_member(cx.auth, &policy_refusal("create_network"))?;
    let shared = get_bool(m, "shared")?.unwrap_or(false);
    let external = get_bool(m, "router:external")?.unwrap_or(false);
    for (flag, rule) in [
        (shared, "create_network:shared"),
        (external, "create_network:router:external"),
    ] {
        if flag && !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(rule)));
        }
    }
    let ptype = get_str(m, "provider:network_type")?;
    let physnet = get_str(m, "provider:physical_network")?;
    let seg_id = get_int(m, "provider:segmentation_id")?;
    if (ptype.is_some() || physnet.is_some() || seg_id.is_some()) && !cx.admin() {
        return Err(ApiError::forbidden(policy_refusal(
            "create_network:provider:network_type",
        )));
    }
    let net = &cx.cfg.network;
    let asked_segment = seg_id.is_some();
    let (network_type, physnet, seg_id) = match ptype.as_deref() {
        None if physnet.is_none() && seg_id.is_none() => match net.tenant_network_type {
            TenantNetworkType::Vxlan => ("vxlan".to_string(), None, Some(free_vni(conn, cx)?)),
            TenantNetworkType::Vlan => {
                let (p, v) = free_tenant_vlan(conn, cx, None)?;
                ("vlan".to_string(), Some(p), Some(v))
            }
        },
        None => {
            return Err(ApiError::bad_request(
                "Invalid input for operation: provider:network_type required.",
            ))
        }
        Some("vxlan") => {
            if physnet.is_some() {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network specified for vxlan network.",
                ));
            }
            let vni = match seg_id {
                Some(v) if (1..=16_777_215).contains(&v) => v,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for operation: segmentation_id {v} out of range (1 through 16777215)."
                    )))
                }
                None => free_vni(conn, cx)?,
            };
            ("vxlan".to_string(), None, Some(vni))
        }
        Some("vlan") => {
            let Some(p) = physnet else {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network required.",
                ));
            };
            if !net.knows_physnet(&p) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: physical_network '{p}' unknown for VLAN provider network."
                )));
            }
            let vid = match seg_id {
                Some(v) if (1..=4094).contains(&v) => v,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for operation: segmentation_id {v} out of range (1 through 4094)."
                    )))
                }
                None => free_tenant_vlan(conn, cx, Some(&p))?.1,
            };
            ("vlan".to_string(), Some(p), Some(vid))
        }
        Some("flat") => {
            let Some(p) = physnet else {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network required.",
                ));
            };
            if seg_id.is_some() {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:segmentation_id specified for flat network.",
                ));
            }
            if !net.knows_physnet(&p) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: physical_network '{p}' unknown for flat provider network."
                )));
            }
            ("flat".to_string(), Some(p), None)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: network_type value '{other}' not supported \
                 (supported: flat, vlan, vxlan)."
            )))
        }
    };
    let max = max_mtu(&network_type);
    let mtu = match get_int(m, "mtu")? {
        Some(v) if (68..=max).contains(&v) => v,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
            "Invalid input for operation: Requested MTU is too big, maximum is {max} (asked {v})."
        )))
        }
        None => max,
    };
    let tenant_segment = !asked_segment && network_type != "flat";
    Ok(Network {
        std: new_standard(m, project)?,
        admin_state_up: get_bool(m, "admin_state_up")?.unwrap_or(true),
        shared,
        external,
        port_security: get_bool(m, "port_security_enabled")?.unwrap_or(true),
        mtu,
        network_type,
        physnet,
        segmentation_id: seg_id,
        tenant_segment,
    })
}

fn free_vni(conn: &Connection, cx: &Cx<'_>) -> ApiResult<i64> {
    let taken = store::taken_segments(conn, "vxlan", "")?;
    let (lo, hi) = cx.cfg.network.vni_range;
    (i64::from(lo)..=i64::from(hi))
        .find(|v| !taken.contains(v))
        .ok_or_else(no_tenant_network)
}

fn no_tenant_network() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "Unable to create the network. No tenant network is available for allocation.",
    )
}

fn free_tenant_vlan(
    conn: &Connection,
    cx: &Cx<'_>,
    physnet: Option<&str>,
) -> ApiResult<(String, i64)> {
    for r in &cx.cfg.network.vlan_ranges {
        if physnet.is_some_and(|p| p != r.physnet) {
            continue;
        }
        let Some((lo, hi)) = r.range else { continue };
        let taken = store::taken_segments(conn, "vlan", &r.physnet)?;
        if let Some(v) = (i64::from(lo)..=i64::from(hi)).find(|v| !taken.contains(v)) {
            return Ok((r.physnet.clone(), v));
        }
    }
    if physnet.is_some() {
        return Err(ApiError::bad_request(
            "Invalid input for operation: provider:segmentation_id required \
             (the physical network has no VLAN range for automatic allocation).",
        ));
    }
    Err(no_tenant_network())
}

/// Stores a network prepared by [`prepare_network`]: quota, segment (409 if
/// taken meanwhile or by an admin's choice) and row, in one transaction.
pub fn store_network(conn: &Connection, cx: &Cx<'_>, n: &mut Network) -> ApiResult<()> {
    let tx = conn.unchecked_transaction()?;
    check_quota(&tx, cx.cfg, &n.std.project_id, "network", 1)?;
    store::insert_network(&tx, n)?;
    let physnet = n.physnet.clone().unwrap_or_default();
    let mut seg = n.segmentation_id.unwrap_or(0);
    // A tenant segment chosen before the host was asked may have been taken
    // meanwhile by a concurrent create: take the next free one of the same
    // kind (the host's answer holds for it too).
    while !store::allocate_segment(&tx, &n.network_type, &physnet, seg, &n.std.id)?
        && n.tenant_segment
    {
        seg = match n.network_type.as_str() {
            "vxlan" => free_vni(&tx, cx)?,
            _ => free_tenant_vlan(&tx, cx, Some(&physnet))?.1,
        };
        n.segmentation_id = Some(seg);
        store::delete_network(&tx, &n.std.id)?;
        store::insert_network(&tx, n)?;
    }
    if !store::segment_owner_is(&tx, &n.network_type, &physnet, seg, &n.std.id)? {
        return Err(ApiError::conflict(match n.network_type.as_str() {
            "vlan" => format!(
                "Unable to create the network. The VLAN {seg} on physical network {physnet} is in use."
            ),
            "flat" => format!(
                "Unable to create the flat network. Physical network {physnet} is in use."
            ),
            _ => format!("Unable to create the network. The tunnel ID {seg} is in use."),
        }));
    }
    tx.commit()?;
    Ok(())
}

/// Updates a network (name, description, admin_state_up, shared,
/// router:external, port_security_enabled, mtu).
pub fn update_network(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<Network> {
    let mut n = visible_network(conn, cx.auth, id)?;
    require_write(cx, &n.std.project_id, "update_network")?;
    for k in [
        "provider:network_type",
        "provider:physical_network",
        "provider:segmentation_id",
    ] {
        if m.contains_key(k) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: Plugin does not support updating the \
                 following provider network attributes: {k}."
            )));
        }
    }
    for (k, rule) in [
        ("shared", "update_network:shared"),
        ("router:external", "update_network:router:external"),
    ] {
        if m.contains_key(k) && !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(rule)));
        }
    }
    touch(&mut n.std, m)?;
    if let Some(b) = get_bool(m, "admin_state_up")? {
        n.admin_state_up = b;
    }
    if let Some(b) = get_bool(m, "shared")? {
        n.shared = b;
    }
    if let Some(b) = get_bool(m, "router:external")? {
        n.external = b;
    }
    if let Some(b) = get_bool(m, "port_security_enabled")? {
        n.port_security = b;
    }
    if let Some(v) = get_int(m, "mtu")? {
        let max = max_mtu(&n.network_type);
        if !(68..=max).contains(&v) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: Requested MTU is too big, maximum is {max} (asked {v})."
            )));
        }
        n.mtu = v;
    }
    store::update_network(conn, &n)?;
    Ok(n)
}

/// Deletes a network: 409 while ports other than its DHCP port are on it.
pub fn delete_network(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let n = visible_network(conn, cx.auth, id)?;
    require_write(cx, &n.std.project_id, "delete_network")?;
    let ports = store::ports_of_network(conn, id)?;
    if ports.iter().any(|p| p.device_owner != OWNER_DHCP) {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation on network {id}. There are one or more ports \
             still in use on the network."
        )));
    }
    let tx = conn.unchecked_transaction()?;
    for p in ports {
        store::delete_port(&tx, &p.std.id)?;
    }
    store::delete_network(&tx, id)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NetworkConfig, VlanRange};
    use crate::db::Db;
    use serde_json::json;

    fn config(network: NetworkConfig) -> Config {
        Config {
            state_dir: "/nonexistent".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            vmm_binary: "/nonexistent".into(),
            default_kernel: None,
            default_initrd: None,
            default_cmdline: String::new(),
            token_ttl: std::time::Duration::from_secs(1),
            max_image_size: 0,
            overcommit: Default::default(),
            quotas: Default::default(),
            shutdown_timeout: std::time::Duration::from_secs(1),
            admin_password: None,
            vmm_uid_base: None,
            network,
            volume: Default::default(),
        }
    }

    fn auth(admin: bool) -> AuthContext {
        AuthContext {
            user_id: "u".into(),
            user_name: "u".into(),
            project_id: "p".into(),
            project_name: "p".into(),
            roles: vec![if admin { "admin" } else { "member" }.into()],
        }
    }

    fn create(conn: &Connection, cx: &Cx<'_>, body: Value) -> ApiResult<Network> {
        let m = body.as_object().unwrap().clone();
        let mut n = prepare_network(conn, cx, &m)?;
        store_network(conn, cx, &mut n)?;
        Ok(n)
    }

    #[test]
    fn tenant_vnis_are_the_lowest_free_and_run_out() {
        let db = Db::open_in_memory().unwrap();
        let conn = db.lock();
        let cfg = config(NetworkConfig {
            vni_range: (5, 6),
            ..Default::default()
        });
        let a = auth(false);
        let cx = Cx {
            auth: &a,
            cfg: &cfg,
            host: "h",
        };
        let n1 = create(&conn, &cx, json!({})).unwrap();
        let n2 = create(&conn, &cx, json!({})).unwrap();
        assert_eq!((n1.segmentation_id, n2.segmentation_id), (Some(5), Some(6)));
        let e = create(&conn, &cx, json!({})).unwrap_err();
        assert_eq!(e.status.as_u16(), 503);
        // Two creates that chose the same VNI before storing: the second
        // takes the next free one.
        delete_network(&conn, &cx, &n2.std.id).unwrap();
        let m = serde_json::Map::new();
        let mut a1 = prepare_network(&conn, &cx, &m).unwrap();
        let mut a2 = prepare_network(&conn, &cx, &m).unwrap();
        assert_eq!(a1.segmentation_id, a2.segmentation_id);
        store_network(&conn, &cx, &mut a1).unwrap();
        assert_eq!(
            store_network(&conn, &cx, &mut a2)
                .unwrap_err()
                .status
                .as_u16(),
            503
        );
        delete_network(&conn, &cx, &a1.std.id).unwrap();
        // A freed VNI is taken again.
        delete_network(&conn, &cx, &n1.std.id).unwrap();
        assert_eq!(
            create(&conn, &cx, json!({})).unwrap().segmentation_id,
            Some(5)
        );
    }

    #[test]
    fn admin_segments_must_be_free_and_tenant_vlans_come_from_the_range() {
        let db = Db::open_in_memory().unwrap();
        let conn = db.lock();
        let cfg = config(NetworkConfig {
            tenant_network_type: TenantNetworkType::Vlan,
            vlan_ranges: vec![VlanRange {
                physnet: "physnet1".into(),
                range: Some((100, 101)),
            }],
            ..Default::default()
        });
        let a = auth(true);
        let cx = Cx {
            auth: &a,
            cfg: &cfg,
            host: "h",
        };
        let t = create(&conn, &cx, json!({})).unwrap();
        assert_eq!(t.network_type, "vlan");
        assert_eq!(t.segmentation_id, Some(100));
        assert_eq!(t.mtu, 1500);
        // The admin takes 101 by hand: the next tenant network has none.
        let v = json!({ "provider:network_type": "vlan",
                        "provider:physical_network": "physnet1",
                        "provider:segmentation_id": 101 });
        create(&conn, &cx, v.clone()).unwrap();
        assert_eq!(create(&conn, &cx, v).unwrap_err().status.as_u16(), 409);
        assert_eq!(
            create(&conn, &cx, json!({})).unwrap_err().status.as_u16(),
            503
        );
        // The same VNI twice, and one flat network per physical network.
        let x = json!({ "provider:network_type": "vxlan", "provider:segmentation_id": 7 });
        create(&conn, &cx, x.clone()).unwrap();
        assert_eq!(create(&conn, &cx, x).unwrap_err().status.as_u16(), 409);
        let f = json!({ "provider:network_type": "flat", "provider:physical_network": "physnet1" });
        create(&conn, &cx, f.clone()).unwrap();
        assert_eq!(create(&conn, &cx, f).unwrap_err().status.as_u16(), 409);
        for bad in [
            json!({ "provider:network_type": "vlan", "provider:physical_network": "physnet1",
                    "provider:segmentation_id": 4095 }),
            json!({ "provider:network_type": "gre" }),
            json!({ "provider:network_type": "vxlan", "mtu": 1500 }),
            json!({ "provider:network_type": "flat" }),
        ] {
            assert_eq!(
                create(&conn, &cx, bad.clone()).unwrap_err().status.as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
