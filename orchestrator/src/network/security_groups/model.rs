//! Security groups and rules as the service keeps them, and their Neutron
//! JSON (the fields openstacksdk's `security_group.py` and
//! `security_group_rule.py` read).

use serde_json::{json, Value};

/// The name every project's default group has.
pub const DEFAULT_GROUP_NAME: &str = "default";

/// The default group's description (Neutron's).
pub const DEFAULT_GROUP_DESCRIPTION: &str = "Default security group";

/// A security group row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Id (a UUID).
    pub id: String,
    /// Owner project.
    pub project_id: String,
    /// Name (`default` for the project's default group).
    pub name: String,
    /// Description.
    pub description: String,
    /// Whether this is the project's default group.
    pub is_default: bool,
    /// Bumped on every change of the group or its rules.
    pub revision_number: i64,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

impl SecurityGroup {
    /// Neutron's `security_group` object, with its rules.
    pub fn to_json(&self, rules: &[SecurityGroupRule]) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "security_group_rules": rules.iter().map(SecurityGroupRule::to_json).collect::<Vec<_>>(),
            "stateful": true,
            "shared": false,
            "tags": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
        })
    }
}

/// A security group rule row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    /// Id (a UUID).
    pub id: String,
    /// Its group.
    pub security_group_id: String,
    /// The group's project (rules are counted against it).
    pub project_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// A protocol name (`tcp`) or number (`"6"`); `None`: any.
    pub protocol: Option<String>,
    /// Lowest destination port (ICMP: the type).
    pub port_range_min: Option<i64>,
    /// Highest destination port (ICMP: the code).
    pub port_range_max: Option<i64>,
    /// The remote prefix as given (`10.0.0.5/24`), with a length.
    pub remote_ip_prefix: Option<String>,
    /// The remote group.
    pub remote_group_id: Option<String>,
    /// Description.
    pub description: String,
    /// Bumped on every change.
    pub revision_number: i64,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Whether the rule's group is its project's default group.
    pub belongs_to_default_sg: bool,
}

impl SecurityGroupRule {
    /// Neutron's `security_group_rule` object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "security_group_id": self.security_group_id,
            "direction": self.direction,
            "ethertype": self.ethertype,
            "protocol": self.protocol,
            "port_range_min": self.port_range_min,
            "port_range_max": self.port_range_max,
            "remote_ip_prefix": self.remote_ip_prefix,
            "remote_group_id": self.remote_group_id,
            "remote_address_group_id": null,
            "normalized_cidr": self.remote_ip_prefix.as_deref().and_then(normalized_cidr),
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
            "belongs_to_default_sg": self.belongs_to_default_sg,
        })
    }
}

/// A prefix with its host bits cleared (`10.0.0.5/24` → `10.0.0.0/24`), as
/// Neutron's `normalized_cidr`; `None` if `prefix` does not parse.
pub fn normalized_cidr(prefix: &str) -> Option<String> {
    let (addr, len) = prefix.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(format!(
                "{}/{len}",
                std::net::Ipv4Addr::from(u32::from(a) & mask)
            ))
        }
        std::net::IpAddr::V6(a) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some(format!(
                "{}/{len}",
                std::net::Ipv6Addr::from(u128::from(a) & mask)
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_cidr_clears_host_bits() {
        assert_eq!(
            normalized_cidr("10.0.0.5/24").as_deref(),
            Some("10.0.0.0/24")
        );
        assert_eq!(normalized_cidr("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(normalized_cidr("1.2.3.4/32").as_deref(), Some("1.2.3.4/32"));
        assert_eq!(
            normalized_cidr("2001:db8::1/64").as_deref(),
            Some("2001:db8::/64")
        );
        assert_eq!(normalized_cidr("::/0").as_deref(), Some("::/0"));
        assert_eq!(normalized_cidr("10.0.0.1/33"), None);
        assert_eq!(normalized_cidr("10.0.0.1"), None);
    }
}
