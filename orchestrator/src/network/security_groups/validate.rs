//! Checking request bodies the way Neutron's attribute map and its
//! security group mixin do, with their messages (clients print them): the
//! envelope and unknown fields, protocols, port ranges, ICMP type and code,
//! ethertypes and remote prefixes.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::http::error::{ApiError, ApiResult};

/// Protocol names Neutron accepts, with their numbers.
pub const PROTOCOLS: [(&str, u8); 24] = [
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// Protocols with ports: tcp, udp, dccp, sctp, udplite.
const PORT_PROTOCOLS: [u8; 5] = [6, 17, 33, 132, 136];
/// ICMP and ICMPv6: the "ports" are the type and the code.
const ICMP_PROTOCOLS: [u8; 2] = [1, 58];
/// Protocols only IPv6 carries.
const IPV6_ONLY_PROTOCOLS: [u8; 6] = [41, 43, 44, 58, 59, 60];

/// The number of a stored protocol (a name or a number string).
pub fn protocol_number(protocol: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(name, _)| *name == protocol)
        .map(|(_, n)| *n)
        .or_else(|| protocol.parse().ok())
}

/// A rule to create, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRequest {
    /// The group it goes into.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// A protocol name (lower case) or a number string; `None`: any.
    pub protocol: Option<String>,
    /// Lowest port, or ICMP type.
    pub port_range_min: Option<i64>,
    /// Highest port, or ICMP code.
    pub port_range_max: Option<i64>,
    /// A prefix with its length (`10.0.0.1` becomes `10.0.0.1/32`).
    pub remote_ip_prefix: Option<String>,
    /// The remote group.
    pub remote_group_id: Option<String>,
    /// Description.
    pub description: String,
    /// `project_id` or `tenant_id` from the body, if given.
    pub project_id: Option<String>,
}

/// A group's fields from a create or update body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRequest {
    /// `name`, if given.
    pub name: Option<String>,
    /// `description`, if given.
    pub description: Option<String>,
    /// `project_id` or `tenant_id`, if given (create only).
    pub project_id: Option<String>,
}

fn invalid(attr: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for {attr}. Reason: {reason}."))
}

/// The object under `key` in `body` (`{"security_group": {...}}`), with no
/// fields but `allowed`.
pub fn envelope<'a>(
    body: &'a Value,
    key: &str,
    allowed: &[&str],
) -> ApiResult<&'a Map<String, Value>> {
    let obj = body
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request(format!("Unable to find '{key}' in request body")))?;
    let mut unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(ApiError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            unknown.join(", ")
        )));
    }
    Ok(obj)
}

/// A string field of at most `max` characters without control characters;
/// `None` if absent.
fn string_field(obj: &Map<String, Value>, attr: &str, max: usize) -> ApiResult<Option<String>> {
    match obj.get(attr) {
        None => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                Err(invalid(
                    attr,
                    format!("'{s}' exceeds maximum length of {max}"),
                ))
            } else if crate::util::has_control_chars(s) {
                Err(invalid(attr, format!("'{s}' contains control characters")))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(invalid(attr, format!("'{other}' is not a valid string"))),
    }
}

/// The project a body names (`project_id` or `tenant_id`, which must agree).
fn project_field(obj: &Map<String, Value>) -> ApiResult<Option<String>> {
    let p = string_field(obj, "project_id", 255)?;
    let t = string_field(obj, "tenant_id", 255)?;
    match (p, t) {
        (Some(p), Some(t)) if p != t => Err(ApiError::bad_request(
            "'project_id' and 'tenant_id' do not match",
        )),
        (p, t) => Ok(p.or(t)),
    }
}

/// Parses a `security_group` body (create or update).
pub fn group_request(body: &Value, create: bool) -> ApiResult<GroupRequest> {
    let allowed: &[&str] = if create {
        &["name", "description", "stateful", "project_id", "tenant_id"]
    } else {
        &["name", "description", "stateful"]
    };
    let obj = envelope(body, "security_group", allowed)?;
    match obj.get("stateful") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(ApiError::bad_request(
                "Stateless security groups are not supported: this cloud's filtering is stateful.",
            ))
        }
        Some(other) => return Err(invalid("stateful", format!("'{other}' is not a boolean"))),
    }
    Ok(GroupRequest {
        name: string_field(obj, "name", 255)?,
        description: string_field(obj, "description", 255)?,
        project_id: project_field(obj)?,
    })
}

const RULE_FIELDS: [&str; 12] = [
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "description",
    "project_id",
    "tenant_id",
    "remote_address_group_id",
];

fn required(obj: &Map<String, Value>, attr: &str) -> ApiResult<String> {
    match obj.get(attr) {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!(
            "Failed to parse request. Required attribute '{attr}' not specified"
        ))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid(attr, format!("'{other}' is not a valid string"))),
    }
}

/// `protocol`: a known name (any case), a number 0–255 (kept as a string,
/// as Neutron does), `any` or null (any protocol).
fn protocol(v: Option<&Value>) -> ApiResult<Option<String>> {
    let unsupported = |p: &dyn std::fmt::Display| {
        let names: Vec<String> = PROTOCOLS.iter().map(|(n, _)| format!("'{n}'")).collect();
        ApiError::bad_request(format!(
            "Security group rule protocol {p} not supported. Only protocol values \
             [None, {}] and integer representations [0 to 255] are supported.",
            names.join(", ")
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if x <= 255 => Ok(Some(x.to_string())),
            _ => Err(unsupported(n)),
        },
        Some(Value::String(s)) => {
            let lower = s.to_ascii_lowercase();
            if lower == "any" {
                Ok(None)
            } else if PROTOCOLS.iter().any(|(n, _)| *n == lower) {
                Ok(Some(lower))
            } else {
                match s.parse::<u16>() {
                    Ok(x) if x <= 255 => Ok(Some(x.to_string())),
                    _ => Err(unsupported(s)),
                }
            }
        }
        Some(other) => Err(unsupported(other)),
    }
}

/// A port (or ICMP type/code) value: an integer 0–65535, or its string.
fn port_value(v: Option<&Value>) -> ApiResult<Option<i64>> {
    let bad =
        |p: &dyn std::fmt::Display| ApiError::bad_request(format!("Invalid value for port {p}"));
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(n))?,
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| bad(s))?,
        Some(other) => return Err(bad(other)),
    };
    if (0..=65535).contains(&n) {
        Ok(Some(n))
    } else {
        Err(bad(&n))
    }
}

/// `remote_ip_prefix`: an address or a prefix, given a length if it has
/// none; must match `ethertype`.
fn remote_prefix(v: Option<&Value>, ethertype: &str) -> ApiResult<Option<String>> {
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid CIDR {other} given as IP prefix."
            )))
        }
    };
    let bad = || ApiError::bad_request(format!("Invalid CIDR {s} given as IP prefix."));
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(l) => l.parse().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        None => max,
    };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    if family != ethertype {
        return Err(ApiError::bad_request(format!(
            "Conflicting value ethertype {ethertype} for CIDR {s}"
        )));
    }
    Ok(Some(format!("{addr}/{len}")))
}

/// The port range checks of Neutron's `_validate_port_range`.
fn check_port_range(protocol: Option<&str>, min: Option<i64>, max: Option<i64>) -> ApiResult<()> {
    if min.is_none() && max.is_none() {
        return Ok(());
    }
    let Some(protocol) = protocol else {
        return Err(ApiError::bad_request(
            "Must also specify protocol if port range is given.",
        ));
    };
    let number = protocol_number(protocol).unwrap_or(255);
    if PORT_PROTOCOLS.contains(&number) {
        if min == Some(0) || max == Some(0) {
            return Err(ApiError::bad_request("Invalid value for port 0"));
        }
        match (min, max) {
            (Some(a), Some(b)) if a <= b => Ok(()),
            _ => Err(ApiError::bad_request(
                "For TCP/UDP protocols, port_range_min must be <= port_range_max",
            )),
        }
    } else if ICMP_PROTOCOLS.contains(&number) {
        for (value, attr, field) in [
            (min, "port_range_min", "type"),
            (max, "port_range_max", "code"),
        ] {
            if let Some(v) = value.filter(|v| !(0..=255).contains(v)) {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255."
                )));
            }
        }
        match (min, max) {
            (None, Some(code)) => Err(ApiError::bad_request(format!(
                "ICMP code (port-range-max) {code} is provided but ICMP type \
                 (port-range-min) is missing."
            ))),
            _ => Ok(()),
        }
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid protocol {protocol} for port range, only supported for TCP, UDP, \
             UDPLITE, SCTP and DCCP."
        )))
    }
}

/// Parses and checks a `security_group_rule` create body. What needs the
/// database (the groups exist, duplicates, quota) is the service's.
pub fn rule_request(body: &Value) -> ApiResult<RuleRequest> {
    let obj = envelope(body, "security_group_rule", &RULE_FIELDS)?;
    let security_group_id = required(obj, "security_group_id")?;
    let direction = required(obj, "direction")?;
    if direction != "ingress" && direction != "egress" {
        return Err(invalid(
            "direction",
            format!("'{direction}' is not in ['ingress', 'egress']"),
        ));
    }
    let ethertype = match obj.get("ethertype") {
        None | Some(Value::Null) => "IPv4".to_string(),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("ipv4") => "IPv4".to_string(),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("ipv6") => "IPv6".to_string(),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string);
            return Err(invalid(
                "ethertype",
                format!("'{shown}' is not in ['IPv4', 'IPv6']"),
            ));
        }
    };
    let protocol = protocol(obj.get("protocol"))?;
    if let Some(p) = &protocol {
        let number = protocol_number(p).unwrap_or(255);
        if ethertype == "IPv4" && IPV6_ONLY_PROTOCOLS.contains(&number) {
            return Err(ApiError::bad_request(format!(
                "Invalid ethertype {ethertype} for protocol {p}."
            )));
        }
    }
    let port_range_min = port_value(obj.get("port_range_min"))?;
    let port_range_max = port_value(obj.get("port_range_max"))?;
    check_port_range(protocol.as_deref(), port_range_min, port_range_max)?;
    let remote_group_id = match obj.get("remote_group_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(invalid(
                "remote_group_id",
                format!("'{other}' is not a valid string"),
            ))
        }
    };
    if !matches!(obj.get("remote_address_group_id"), None | Some(Value::Null)) {
        return Err(ApiError::bad_request(
            "Address groups are not supported: remote_address_group_id must be null.",
        ));
    }
    let remote_ip_prefix = remote_prefix(obj.get("remote_ip_prefix"), &ethertype)?;
    if remote_ip_prefix.is_some() && remote_group_id.is_some() {
        return Err(ApiError::bad_request(
            "Only remote_ip_prefix or remote_group_id or remote_address_group_id may be provided.",
        ));
    }
    Ok(RuleRequest {
        security_group_id,
        direction,
        ethertype,
        protocol,
        port_range_min,
        port_range_max,
        remote_ip_prefix,
        remote_group_id,
        description: string_field(obj, "description", 255)?.unwrap_or_default(),
        project_id: project_field(obj)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(fields: Value) -> ApiResult<RuleRequest> {
        let mut obj = json!({ "security_group_id": "g", "direction": "ingress" });
        if let (Some(o), Some(f)) = (obj.as_object_mut(), fields.as_object()) {
            for (k, v) in f {
                o.insert(k.clone(), v.clone());
            }
        }
        rule_request(&json!({ "security_group_rule": obj }))
    }

    fn err(fields: Value) -> String {
        let e = rule(fields).expect_err("must be refused");
        assert_eq!(e.status.as_u16(), 400, "{}", e.message);
        e.message
    }

    #[test]
    fn a_plain_rule_gets_neutrons_defaults() {
        let r = rule(json!({})).unwrap();
        assert_eq!(r.ethertype, "IPv4");
        assert_eq!(r.protocol, None);
        assert_eq!(r.remote_ip_prefix, None);
        let r = rule(
            json!({ "protocol": "TCP", "port_range_min": "22", "port_range_max": 22,
                             "remote_ip_prefix": "10.0.0.5", "ethertype": "ipv4" }),
        )
        .unwrap();
        assert_eq!(r.protocol.as_deref(), Some("tcp"));
        assert_eq!((r.port_range_min, r.port_range_max), (Some(22), Some(22)));
        assert_eq!(r.remote_ip_prefix.as_deref(), Some("10.0.0.5/32"));
        assert_eq!(
            rule(json!({ "protocol": 132 }))
                .unwrap()
                .protocol
                .as_deref(),
            Some("132")
        );
        assert_eq!(rule(json!({ "protocol": "any" })).unwrap().protocol, None);
    }

    #[test]
    fn bad_fields_are_refused_in_neutrons_words() {
        assert!(err(json!({ "protocol": "bogus" }))
            .starts_with("Security group rule protocol bogus not supported."));
        assert!(err(json!({ "protocol": 256 })).contains("not supported"));
        assert_eq!(
            err(json!({ "protocol": "gre", "port_range_min": 1, "port_range_max": 2 })),
            "Invalid protocol gre for port range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP."
        );
        assert_eq!(
            err(json!({ "port_range_min": 1, "port_range_max": 2 })),
            "Must also specify protocol if port range is given."
        );
        assert_eq!(
            err(json!({ "protocol": "tcp", "port_range_min": 30, "port_range_max": 20 })),
            "For TCP/UDP protocols, port_range_min must be <= port_range_max"
        );
        assert_eq!(
            err(json!({ "protocol": "tcp", "port_range_min": 0, "port_range_max": 20 })),
            "Invalid value for port 0"
        );
        assert_eq!(
            err(json!({ "protocol": "tcp", "port_range_min": 1, "port_range_max": 65536 })),
            "Invalid value for port 65536"
        );
        assert_eq!(
            err(json!({ "protocol": "udp", "port_range_min": "x" })),
            "Invalid value for port x"
        );
        assert_eq!(
            err(json!({ "protocol": "icmp", "port_range_min": 256 })),
            "Invalid value for ICMP type (port_range_min) 256. It must be 0 to 255."
        );
        assert_eq!(
            err(json!({ "protocol": "icmp", "port_range_min": 8, "port_range_max": 300 })),
            "Invalid value for ICMP code (port_range_max) 300. It must be 0 to 255."
        );
        assert!(err(json!({ "protocol": "icmp", "port_range_max": 0 }))
            .contains("ICMP type (port-range-min) is missing"));
        assert!(rule(json!({ "protocol": "icmp", "port_range_min": 8 })).is_ok());
        assert!(
            rule(json!({ "protocol": "icmp", "port_range_min": 0, "port_range_max": 0 })).is_ok()
        );
        assert_eq!(
            err(json!({ "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "x" })),
            "Only remote_ip_prefix or remote_group_id or remote_address_group_id may be provided."
        );
        assert_eq!(
            err(json!({ "remote_ip_prefix": "::/0" })),
            "Conflicting value ethertype IPv4 for CIDR ::/0"
        );
        assert_eq!(
            err(json!({ "remote_ip_prefix": "10.0.0.0/33" })),
            "Invalid CIDR 10.0.0.0/33 given as IP prefix."
        );
        assert_eq!(
            err(json!({ "remote_ip_prefix": "nope" })),
            "Invalid CIDR nope given as IP prefix."
        );
        assert_eq!(
            err(json!({ "direction": "sideways" })),
            "Invalid input for direction. Reason: 'sideways' is not in ['ingress', 'egress']."
        );
        assert_eq!(
            err(json!({ "ethertype": "IPX" })),
            "Invalid input for ethertype. Reason: 'IPX' is not in ['IPv4', 'IPv6']."
        );
        assert_eq!(
            err(json!({ "protocol": "ipv6-icmp" })),
            "Invalid ethertype IPv4 for protocol ipv6-icmp."
        );
        assert_eq!(
            err(json!({ "x": 1, "b": 2 })),
            "Unrecognized attribute(s) 'b, x'"
        );
        assert_eq!(
            err(json!({ "direction": null })),
            "Failed to parse request. Required attribute 'direction' not specified"
        );
        let e = rule_request(&json!({ "rule": {} })).unwrap_err();
        assert_eq!(
            e.message,
            "Unable to find 'security_group_rule' in request body"
        );
    }

    #[test]
    fn ipv6_rules_take_ipv6_prefixes() {
        let r = rule(
            json!({ "ethertype": "IPv6", "remote_ip_prefix": "2001:db8::/64",
                             "protocol": "ipv6-icmp" }),
        )
        .unwrap();
        assert_eq!(r.remote_ip_prefix.as_deref(), Some("2001:db8::/64"));
        assert_eq!(
            err(json!({ "ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8" })),
            "Conflicting value ethertype IPv6 for CIDR 10.0.0.0/8"
        );
    }

    #[test]
    fn group_bodies() {
        let g = group_request(&json!({ "security_group": { "name": "web" } }), true).unwrap();
        assert_eq!(g.name.as_deref(), Some("web"));
        let e = group_request(&json!({ "security_group": { "shared": true } }), true).unwrap_err();
        assert_eq!(e.message, "Unrecognized attribute(s) 'shared'");
        let e =
            group_request(&json!({ "security_group": { "tenant_id": "p" } }), false).unwrap_err();
        assert_eq!(e.message, "Unrecognized attribute(s) 'tenant_id'");
        let e = group_request(
            &json!({ "security_group": { "name": "x".repeat(256) } }),
            true,
        )
        .unwrap_err();
        assert!(
            e.message.contains("exceeds maximum length of 255"),
            "{}",
            e.message
        );
        assert!(group_request(&json!({ "security_group": { "stateful": false } }), true).is_err());
    }

    #[test]
    fn protocol_numbers() {
        assert_eq!(protocol_number("tcp"), Some(6));
        assert_eq!(protocol_number("udp"), Some(17));
        assert_eq!(protocol_number("icmp"), Some(1));
        assert_eq!(protocol_number("112"), Some(112));
        assert_eq!(protocol_number("300"), None);
        assert_eq!(protocol_number("bogus"), None);
    }
}
