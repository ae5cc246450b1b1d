//! NAT tables: a router's (`table ip nubo_router`, in its namespace) and
//! the host's masquerade for the one-host external network (`table ip
//! nubo_external`, in the host's namespace).
//!
//! Router: `prerouting` DNATs each floating IP to its fixed IP (from any
//! interface, so the inside reaches a floating IP too); `postrouting`
//! SNATs a fixed IP with a floating IP to it 1:1 when it leaves through the
//! gateway, then (with `enable_snat`) every other inside source to the
//! gateway leg's address; `forward` lets in from the gateway only replies
//! and what a floating IP's DNAT admitted, so a route to a fixed address
//! from outside is no way in. IP forwarding (the sysctl) is the agent's job.
//!
//! External: `postrouting` masquerades the external subnet when it leaves
//! through anything but its own bridge. About the host's `forward` policy:
//! nftables evaluates every base chain of a hook and a drop anywhere is
//! final, so an accept in a nubo table cannot override a host whose
//! `forward` policy is drop (Docker sets iptables' FORWARD to DROP): there
//! the operator must allow the bridge's traffic in that ruleset (for
//! Docker, `iptables -I DOCKER-USER -i BRIDGE -j ACCEPT` and `-o BRIDGE -m
//! conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`). nubo does not touch
//! other rulesets, so it adds no forward chain of its own.

use std::fmt::Write as _;

use super::types::NftPrefix;
use super::{check_ifname, comment, ExternalNat, Family, FloatingNat, NftError, RouterNat, Table};

/// The name of a router's NAT table (one per router namespace).
pub const ROUTER_TABLE: &str = "nubo_router";

/// The name of the host's external-network masquerade table.
pub const EXTERNAL_TABLE: &str = "nubo_external";

/// A router's NAT table (`table ip nubo_router`).
pub fn router_table(r: &RouterNat) -> Result<Table, NftError> {
    check_ifname(&r.gateway_if)?;
    for s in &r.snat_sources {
        s.checked()?;
    }
    let gw = &r.gateway_if;
    let mut fips: Vec<&FloatingNat> = r.floating_ips.iter().collect();
    fips.sort_by_key(|f| (f.floating_ip, f.fixed_ip));
    let mut b = String::new();
    // Writing to a String cannot fail: the results are ignored below.
    let snat = r.enable_snat && !r.snat_sources.is_empty();
    if snat {
        let items: Vec<String> = r
            .snat_sources
            .iter()
            .map(|s| NftPrefix(*s).to_string())
            .collect();
        let _ = write!(
            b,
            "\n\tset inside {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\
             \t\telements = {{ {} }}\n\t}}\n",
            items.join(", ")
        );
    }
    b.push_str(
        "\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n",
    );
    for f in &fips {
        let _ = writeln!(
            b,
            "\t\tip daddr {} dnat to {} comment \"{}\"",
            f.floating_ip,
            f.fixed_ip,
            comment(&f.id)
        );
    }
    b.push_str("\t}\n");
    b.push_str(
        "\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for f in &fips {
        let _ = writeln!(
            b,
            "\t\tip saddr {} oifname \"{gw}\" snat to {} comment \"{}\"",
            f.fixed_ip,
            f.floating_ip,
            comment(&f.id)
        );
    }
    if snat {
        let _ = writeln!(
            b,
            "\t\tip saddr @inside oifname \"{gw}\" snat to {} comment \"SNAT\"",
            r.gateway_ip
        );
    }
    b.push_str("\t}\n");
    // From the outside, only what a floating IP's DNAT let in (or replies)
    // crosses the router: routing to a fixed address is not a way in.
    let _ = write!(
        b,
        "\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{gw}\" ct state established,related accept\n\
         \t\tiifname \"{gw}\" ct status dnat accept\n\
         \t\tiifname \"{gw}\" drop comment \"only floating IPs come in\"\n\t}}\n"
    );
    Table::new(Family::Ip, ROUTER_TABLE, b)
}

/// The host's masquerade table for the external network
/// (`table ip nubo_external`).
pub fn external_table(e: &ExternalNat) -> Result<Table, NftError> {
    check_ifname(&e.bridge)?;
    e.cidr.checked()?;
    let b = format!(
        "\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {} oifname != \"{}\" masquerade\n\t}}\n",
        NftPrefix(e.cidr),
        e.bridge
    );
    Table::new(Family::Ip, EXTERNAL_TABLE, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ipv4Net;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn nat(enable_snat: bool) -> RouterNat {
        RouterNat {
            gateway_if: "qg-0123abcd-01".into(),
            gateway_ip: ip("203.0.113.10"),
            enable_snat,
            snat_sources: vec![
                Ipv4Net::new(ip("10.0.0.0"), 24).unwrap(),
                Ipv4Net::new(ip("10.0.1.0"), 24).unwrap(),
            ],
            floating_ips: vec![
                FloatingNat {
                    id: "fip-2".into(),
                    floating_ip: ip("203.0.113.21"),
                    fixed_ip: ip("10.0.0.6"),
                },
                FloatingNat {
                    id: "fip-1".into(),
                    floating_ip: ip("203.0.113.20"),
                    fixed_ip: ip("10.0.0.5"),
                },
            ],
        }
    }

    #[test]
    fn router_snat_dnat_golden() {
        let t = router_table(&nat(true)).unwrap();
        assert_eq!(t.family(), Family::Ip);
        assert_eq!(t.name(), "nubo_router");
        assert_eq!(
            t.body(),
            "\n\tset inside {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\
             \t\telements = { 10.0.0.0/24, 10.0.1.0/24 }\n\t}\n\
             \n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr 203.0.113.20 dnat to 10.0.0.5 comment \"fip-1\"\n\
             \t\tip daddr 203.0.113.21 dnat to 10.0.0.6 comment \"fip-2\"\n\t}\n\
             \n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.0.0.5 oifname \"qg-0123abcd-01\" snat to 203.0.113.20 comment \"fip-1\"\n\
             \t\tip saddr 10.0.0.6 oifname \"qg-0123abcd-01\" snat to 203.0.113.21 comment \"fip-2\"\n\
             \t\tip saddr @inside oifname \"qg-0123abcd-01\" snat to 203.0.113.10 comment \"SNAT\"\n\t}\n\
             \n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"qg-0123abcd-01\" ct state established,related accept\n\
             \t\tiifname \"qg-0123abcd-01\" ct status dnat accept\n\
             \t\tiifname \"qg-0123abcd-01\" drop comment \"only floating IPs come in\"\n\t}\n"
        );
    }

    #[test]
    fn no_snat_keeps_the_floating_ips_only() {
        let b = router_table(&nat(false)).unwrap().body().to_string();
        assert!(!b.contains("set inside"));
        assert!(!b.contains("@inside"));
        assert!(b.contains("dnat to 10.0.0.5"));
        assert!(b.contains("snat to 203.0.113.20"));
    }

    #[test]
    fn external_masquerade_golden() {
        let t = external_table(&ExternalNat {
            bridge: "brq0123abcd-01".into(),
            cidr: Ipv4Net::new(ip("172.24.4.1"), 24).unwrap(),
        })
        .unwrap();
        assert_eq!(t.name(), "nubo_external");
        assert_eq!(
            t.body(),
            "\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 172.24.4.0/24 oifname != \"brq0123abcd-01\" masquerade\n\t}\n"
        );
    }

    #[test]
    fn bad_interface_is_an_error() {
        let mut r = nat(true);
        r.gateway_if = "qg x".into();
        assert!(router_table(&r).is_err());
    }
}
