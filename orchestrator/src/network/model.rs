//! The Networking service's things and their Neutron JSON.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Device owner of the DHCP port of a network.
pub const OWNER_DHCP: &str = "network:dhcp";
/// Device owner of a router's inside leg.
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
/// Device owner of a router's gateway leg.
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
/// Device owner of the port holding a floating IP's address.
pub const OWNER_FLOATINGIP: &str = "network:floatingip";
/// Device owner of a server's NIC.
pub const OWNER_COMPUTE: &str = "compute:nova";

/// What every Neutron resource carries.
#[derive(Debug, Clone, Default)]
pub struct Standard {
    /// Id.
    pub id: String,
    /// Name ("" if none).
    pub name: String,
    /// Description.
    pub description: String,
    /// Owning project ("" for some network-owned ports).
    pub project_id: String,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Bumped on every change.
    pub revision: i64,
}

impl Standard {
    /// The common fields as JSON, to be extended.
    pub fn json(&self, with_name: bool) -> Value {
        let mut v = json!({
            "id": self.id, "description": self.description,
            "project_id": self.project_id, "tenant_id": self.project_id,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "revision_number": self.revision, "tags": [],
        });
        if with_name {
            v["name"] = json!(self.name);
        }
        v
    }
}

/// A network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Common fields.
    pub std: Standard,
    /// `admin_state_up`.
    pub admin_state_up: bool,
    /// `shared`.
    pub shared: bool,
    /// `router:external`.
    pub external: bool,
    /// `port_security_enabled` (the default of its ports).
    pub port_security: bool,
    /// `mtu`.
    pub mtu: i64,
    /// `provider:network_type`: flat, vlan, vxlan.
    pub network_type: String,
    /// `provider:physical_network`.
    pub physnet: Option<String>,
    /// `provider:segmentation_id`.
    pub segmentation_id: Option<i64>,
    /// The segment was chosen from the tenant ranges (not by an admin), so
    /// another free one will do. Not stored.
    pub tenant_segment: bool,
}

impl Network {
    /// Neutron's JSON; `subnets` are its subnets' ids; the provider
    /// attributes only for admins.
    pub fn to_json(&self, subnets: &[String], admin: bool) -> Value {
        let mut v = self.std.json(true);
        let extra = json!({
            "status": "ACTIVE", "admin_state_up": self.admin_state_up,
            "shared": self.shared, "router:external": self.external,
            "port_security_enabled": self.port_security, "mtu": self.mtu,
            "subnets": subnets, "availability_zone_hints": [], "availability_zones": [],
            "is_default": false, "ipv4_address_scope": null, "ipv6_address_scope": null,
            "l2_adjacency": true, "qos_policy_id": null, "dns_domain": "",
        });
        merge(&mut v, extra);
        if admin {
            v["provider:network_type"] = json!(self.network_type);
            v["provider:physical_network"] = json!(self.physnet);
            v["provider:segmentation_id"] = json!(self.segmentation_id);
        }
        v
    }
}

/// `{start, end}` of an allocation pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolJson {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// `{destination, nexthop}` of a host route or a router route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteJson {
    /// Destination CIDR.
    pub destination: String,
    /// Next hop address.
    pub nexthop: String,
}

/// A subnet (IPv4).
#[derive(Debug, Clone)]
pub struct Subnet {
    /// Common fields.
    pub std: Standard,
    /// Its network.
    pub network_id: String,
    /// Normalized CIDR.
    pub cidr: String,
    /// Gateway, if any.
    pub gateway_ip: Option<String>,
    /// `enable_dhcp`.
    pub enable_dhcp: bool,
    /// Allocation pools.
    pub allocation_pools: Vec<PoolJson>,
    /// DNS servers.
    pub dns_nameservers: Vec<String>,
    /// Host routes.
    pub host_routes: Vec<RouteJson>,
}

impl Subnet {
    /// Neutron's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = self.std.json(true);
        merge(
            &mut v,
            json!({
                "network_id": self.network_id, "ip_version": 4, "cidr": self.cidr,
                "gateway_ip": self.gateway_ip, "enable_dhcp": self.enable_dhcp,
                "allocation_pools": self.allocation_pools,
                "dns_nameservers": self.dns_nameservers, "host_routes": self.host_routes,
                "subnetpool_id": null, "ipv6_address_mode": null, "ipv6_ra_mode": null,
                "service_types": [], "segment_id": null, "dns_publish_fixed_ip": false,
            }),
        );
        v
    }
}

/// One fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address.
    pub ip_address: String,
}

/// An allowed address pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    /// Address or CIDR.
    pub ip_address: String,
    /// MAC (the port's when not given).
    pub mac_address: String,
}

/// A port.
#[derive(Debug, Clone)]
pub struct Port {
    /// Common fields.
    pub std: Standard,
    /// Its network.
    pub network_id: String,
    /// `mac_address`.
    pub mac_address: String,
    /// `admin_state_up`.
    pub admin_state_up: bool,
    /// DOWN, ACTIVE.
    pub status: String,
    /// `device_id`.
    pub device_id: String,
    /// `device_owner`.
    pub device_owner: String,
    /// `port_security_enabled`.
    pub port_security: bool,
    /// `binding:host_id` ("" when unbound).
    pub host_id: String,
    /// `dns_name`.
    pub dns_name: String,
    /// Created by a server (deleted with it) rather than given to it.
    pub created_by_server: bool,
    /// Position among the server's NICs.
    pub nic_index: i64,
    /// Fixed IPs.
    pub fixed_ips: Vec<FixedIp>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Allowed address pairs.
    pub allowed_address_pairs: Vec<AddressPair>,
}

impl Port {
    /// Neutron's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = self.std.json(true);
        let bound = !self.host_id.is_empty();
        merge(
            &mut v,
            json!({
                "network_id": self.network_id, "mac_address": self.mac_address,
                "admin_state_up": self.admin_state_up, "status": self.status,
                "device_id": self.device_id, "device_owner": self.device_owner,
                "fixed_ips": self.fixed_ips, "security_groups": self.security_groups,
                "port_security_enabled": self.port_security,
                "allowed_address_pairs": self.allowed_address_pairs,
                "binding:host_id": self.host_id,
                "binding:vif_type": if bound { "tap" } else { "unbound" },
                "binding:vnic_type": "normal", "binding:vif_details": {},
                "binding:profile": {}, "dns_name": self.dns_name, "dns_assignment": [],
                "extra_dhcp_opts": [], "qos_policy_id": null, "qos_network_policy_id": null,
                "propagate_uplink_status": false, "resource_request": null,
            }),
        );
        v
    }
}

/// A router.
#[derive(Debug, Clone)]
pub struct Router {
    /// Common fields.
    pub std: Standard,
    /// `admin_state_up`.
    pub admin_state_up: bool,
    /// The external network of its gateway.
    pub gw_network_id: Option<String>,
    /// The gateway port.
    pub gw_port_id: Option<String>,
    /// `enable_snat`.
    pub enable_snat: bool,
    /// Extra routes.
    pub routes: Vec<RouteJson>,
}

impl Router {
    /// Neutron's JSON; `gw_ips` are the gateway port's fixed IPs.
    pub fn to_json(&self, gw_ips: &[FixedIp]) -> Value {
        let mut v = self.std.json(true);
        let gw = self.gw_network_id.as_ref().map(|n| {
            json!({ "network_id": n, "enable_snat": self.enable_snat,
                    "external_fixed_ips": gw_ips })
        });
        merge(
            &mut v,
            json!({
                "status": "ACTIVE", "admin_state_up": self.admin_state_up,
                "external_gateway_info": gw, "routes": self.routes,
                "distributed": false, "ha": false, "availability_zone_hints": [],
                "availability_zones": [], "flavor_id": null,
            }),
        );
        v
    }
}

/// A floating IP.
#[derive(Debug, Clone)]
pub struct FloatingIp {
    /// Common fields (no name).
    pub std: Standard,
    /// The external network.
    pub floating_network_id: String,
    /// The address.
    pub floating_ip_address: String,
    /// The `network:floatingip` port holding the address.
    pub floating_port_id: String,
    /// The associated port.
    pub port_id: Option<String>,
    /// The associated fixed IP.
    pub fixed_ip_address: Option<String>,
    /// The router doing the NAT.
    pub router_id: Option<String>,
}

impl FloatingIp {
    /// Neutron's JSON; `port` is the associated port, for `port_details`.
    pub fn to_json(&self, port: Option<&Port>) -> Value {
        let mut v = self.std.json(false);
        let details = port.map(|p| {
            json!({ "name": p.std.name, "network_id": p.network_id,
                    "mac_address": p.mac_address, "admin_state_up": p.admin_state_up,
                    "status": p.status, "device_id": p.device_id,
                    "device_owner": p.device_owner })
        });
        merge(
            &mut v,
            json!({
                "floating_network_id": self.floating_network_id,
                "floating_ip_address": self.floating_ip_address,
                "fixed_ip_address": self.fixed_ip_address, "port_id": self.port_id,
                "router_id": self.router_id,
                "status": if self.port_id.is_some() { "ACTIVE" } else { "DOWN" },
                "port_details": details, "port_forwardings": [], "dns_domain": "",
                "dns_name": "", "qos_policy_id": null, "qos_network_policy_id": null,
            }),
        );
        v
    }
}

fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}
