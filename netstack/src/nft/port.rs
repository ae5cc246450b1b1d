//! A port's filter: `table bridge nubo_p_<tap>`.
//!
//! Frames from the port (`iifname TAP`, on the bridge's `forward` hook and,
//! for frames to the host itself, `input`):
//! 1. anti-spoofing: the Ethernet source must be the port's MAC or an
//!    allowed pair's MAC; ARP must carry a matching sender MAC and IP (the
//!    port's IPs, or `0.0.0.0` for address probes, with the port's MAC; a
//!    pair's prefix with the pair's MAC); IPv4 must come from one of the
//!    port's IPs (with the port's MAC) or an allowed pair's prefix (with the
//!    pair's MAC); a DHCP request from `0.0.0.0` to `255.255.255.255`
//!    (udp 68→67) passes. Everything else is dropped, IPv6 and every other
//!    ethertype included (nubo networks are IPv4 only; VLAN-tagged frames
//!    from a guest are dropped too);
//! 2. DHCP to the server (udp 68→67) passes;
//! 3. `ct state established,related accept`, `ct state invalid drop`;
//! 4. the egress rules (accept); else drop.
//!
//! Frames to the port (`oifname TAP`, on `forward` and, from the host,
//! `output`): `ct state established,related accept`; ARP accept; DHCP
//! replies (udp 67→68) accept; `ct state invalid drop`; anything but IPv4
//! drop; the ingress rules (accept); else drop.
//!
//! Remote groups are named sets `rg_<first 12 characters of the group id>`
//! in the table. Port security off means no table at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::types::{fmt_mac, NftPrefix};
use super::{
    check_ifname, comment, Direction, Family, FilterRule, Mac, NftError, PortFilter, Remote, Table,
    L4,
};
use crate::Ipv4Net;

/// The name of a port's table: `nubo_p_<tap>`.
pub fn port_table_name(tap: &str) -> String {
    format!("nubo_p_{tap}")
}

/// Drops duplicates and prefixes inside another one (nft refuses
/// overlapping intervals in a set); keeps the order otherwise.
fn normalize(nets: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        let covered = nets
            .iter()
            .enumerate()
            .any(|(j, m)| j != i && m.contains(*n) && (m.prefix_len < n.prefix_len || j < i));
        if !covered {
            out.push(*n);
        }
    }
    out
}

fn set_of(nets: &[Ipv4Net]) -> String {
    let items: Vec<String> = nets.iter().map(|n| NftPrefix(*n).to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// Names the remote-group sets: `rg_` + the id's first 12 identifier-safe
/// characters, `_2`, `_3`... when two ids share them.
fn group_sets(rules: &[FilterRule]) -> BTreeMap<String, (String, Vec<Ipv4Addr>)> {
    let mut by_id: BTreeMap<String, (String, Vec<Ipv4Addr>)> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    for r in rules {
        if let Remote::Group { group_id, members } = &r.remote {
            if by_id.contains_key(group_id) {
                continue;
            }
            let short: String = group_id
                .chars()
                .take(12)
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let base = format!("rg_{short}");
            let mut name = base.clone();
            let mut n = 2;
            while names.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            names.push(name.clone());
            let mut m = members.clone();
            m.sort();
            m.dedup();
            by_id.insert(group_id.clone(), (name, m));
        }
    }
    by_id
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

fn l4_match(l4: &L4) -> Option<String> {
    match *l4 {
        L4::Any => None,
        L4::Proto(p) => Some(format!("ip protocol {}", proto_name(p))),
        L4::Ports { proto, min, max } if min <= 1 && max == u16::MAX => {
            Some(format!("ip protocol {}", proto_name(proto)))
        }
        L4::Ports { proto, min, max } => {
            let range = if min == max {
                min.to_string()
            } else {
                format!("{min}-{max}")
            };
            Some(match proto {
                6 | 17 => format!("{} dport {range}", proto_name(proto)),
                p => format!("ip protocol {p} th dport {range}"),
            })
        }
        L4::Icmp {
            icmp_type: None, ..
        } => Some("ip protocol icmp".into()),
        L4::Icmp {
            icmp_type: Some(t),
            code: None,
        } => Some(format!("icmp type {t}")),
        L4::Icmp {
            icmp_type: Some(t),
            code: Some(c),
        } => Some(format!("icmp type {t} icmp code {c}")),
    }
}

fn rule_line(r: &FilterRule, sets: &BTreeMap<String, (String, Vec<Ipv4Addr>)>) -> String {
    let field = match r.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let mut parts = Vec::new();
    match &r.remote {
        Remote::Any => {}
        Remote::Prefix(p) => parts.push(format!("ip {field} {}", NftPrefix(*p))),
        Remote::Group { group_id, .. } => {
            if let Some((name, _)) = sets.get(group_id) {
                parts.push(format!("ip {field} @{name}"));
            }
        }
    }
    parts.extend(l4_match(&r.l4));
    parts.push(format!("accept comment \"{}\"", comment(&r.id)));
    format!("\t\t{}\n", parts.join(" "))
}

/// The filter table of a port with port security on.
pub fn port_table(p: &PortFilter) -> Result<Table, NftError> {
    check_ifname(&p.tap)?;
    let tap = &p.tap;
    for (net, _) in &p.allowed_pairs {
        net.checked()?;
    }
    for r in &p.rules {
        if let Remote::Prefix(net) = r.remote {
            net.checked()?;
        }
    }

    // Addresses each MAC may send from (the port's MAC first).
    let mut by_mac: Vec<(Mac, Vec<Ipv4Net>)> =
        vec![(p.mac, p.ips.iter().map(|ip| Ipv4Net::host(*ip)).collect())];
    for (net, mac) in &p.allowed_pairs {
        let mac = mac.unwrap_or(p.mac);
        match by_mac.iter_mut().find(|(m, _)| *m == mac) {
            Some((_, nets)) => nets.push(*net),
            None => by_mac.push((mac, vec![*net])),
        }
    }
    let by_mac: Vec<(Mac, Vec<Ipv4Net>)> = by_mac
        .into_iter()
        .map(|(m, nets)| (m, normalize(&nets)))
        .collect();
    let macs: Vec<String> = by_mac.iter().map(|(m, _)| fmt_mac(m)).collect();

    let sets = group_sets(&p.rules);
    let mut b = String::new();
    // Writing to a String cannot fail: the results are ignored below.
    for (name, members) in sets.values() {
        let _ = write!(b, "\n\tset {name} {{\n\t\ttype ipv4_addr\n");
        if !members.is_empty() {
            let m: Vec<String> = members.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(b, "\t\telements = {{ {} }}", m.join(", "));
        }
        b.push_str("\t}\n");
    }

    let _ = write!(
        b,
        "\n\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{tap}\" jump from_port\n\
         \t\toifname \"{tap}\" jump to_port\n\
         \t}}\n\
         \n\tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{tap}\" jump from_port\n\
         \t}}\n\
         \n\tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{tap}\" jump to_port\n\
         \t}}\n"
    );

    let _ = write!(
        b,
        "\n\tchain from_port {{\n\
         \t\tether saddr != {{ {} }} drop comment \"spoofed MAC\"\n\
         \t\tether type arp jump from_port_arp\n\
         \t\tether type ip jump from_port_ip\n\
         \t\tdrop comment \"IPv6 and other ethertypes\"\n\
         \t}}\n",
        macs.join(", ")
    );

    b.push_str("\n\tchain from_port_arp {\n");
    for (i, (mac, nets)) in by_mac.iter().enumerate() {
        let mut nets = nets.clone();
        if i == 0 {
            nets.push(Ipv4Net::host(Ipv4Addr::UNSPECIFIED));
            nets = normalize(&nets);
        }
        if !nets.is_empty() {
            let _ = writeln!(
                b,
                "\t\tarp saddr ether {} arp saddr ip {} accept",
                fmt_mac(mac),
                set_of(&nets)
            );
        }
    }
    b.push_str("\t\tdrop comment \"spoofed ARP\"\n\t}\n");

    b.push_str(
        "\n\tchain from_port_ip {\n\
         \t\tip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept comment \"DHCP discover\"\n",
    );
    for (mac, nets) in &by_mac {
        if !nets.is_empty() {
            let _ = writeln!(
                b,
                "\t\tether saddr {} ip saddr {} jump egress",
                fmt_mac(mac),
                set_of(nets)
            );
        }
    }
    b.push_str("\t\tdrop comment \"spoofed IPv4 source\"\n\t}\n");

    b.push_str(
        "\n\tchain egress {\n\
         \t\tudp sport 68 udp dport 67 accept comment \"DHCP\"\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n",
    );
    for r in p.rules.iter().filter(|r| r.direction == Direction::Egress) {
        b.push_str(&rule_line(r, &sets));
    }
    b.push_str("\t\tdrop\n\t}\n");

    b.push_str(
        "\n\tchain to_port {\n\
         \t\tct state established,related accept\n\
         \t\tether type arp accept\n\
         \t\tudp sport 67 udp dport 68 accept comment \"DHCP\"\n\
         \t\tct state invalid drop\n\
         \t\tether type != ip drop comment \"IPv4 and ARP only\"\n",
    );
    for r in p.rules.iter().filter(|r| r.direction == Direction::Ingress) {
        b.push_str(&rule_line(r, &sets));
    }
    b.push_str("\t\tdrop\n\t}\n");

    Table::new(Family::Bridge, &port_table_name(tap), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const PAIR_MAC: Mac = [0xfa, 0x16, 0x3e, 0, 0, 2];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(a: &str, len: u8) -> Ipv4Net {
        Ipv4Net::new(ip(a), len).unwrap()
    }

    fn port(rules: Vec<FilterRule>) -> PortFilter {
        PortFilter {
            tap: "tap0123abcd-01".into(),
            mac: MAC,
            ips: vec![ip("10.0.0.5")],
            allowed_pairs: vec![],
            rules,
        }
    }

    fn rule(id: &str, direction: Direction, l4: L4, remote: Remote) -> FilterRule {
        FilterRule {
            id: id.into(),
            direction,
            l4,
            remote,
        }
    }

    fn body(p: &PortFilter) -> String {
        port_table(p).unwrap().body().to_string()
    }

    #[test]
    fn table_is_named_after_the_tap_in_the_bridge_family() {
        let t = port_table(&port(vec![])).unwrap();
        assert_eq!(t.name(), "nubo_p_tap0123abcd-01");
        assert_eq!(t.family(), Family::Bridge);
        let b = t.body();
        assert!(b.contains(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"tap0123abcd-01\" jump from_port\n\
             \t\toifname \"tap0123abcd-01\" jump to_port\n\t}\n"
        ));
        assert!(b.contains("hook input priority filter; policy accept;\n\t\tiifname \"tap0123abcd-01\" jump from_port\n"));
        assert!(b.contains("hook output priority filter; policy accept;\n\t\toifname \"tap0123abcd-01\" jump to_port\n"));
    }

    #[test]
    fn anti_spoofing_golden() {
        let b = body(&port(vec![]));
        let golden = "\n\tchain from_port {\n\
            \t\tether saddr != { fa:16:3e:00:00:01 } drop comment \"spoofed MAC\"\n\
            \t\tether type arp jump from_port_arp\n\
            \t\tether type ip jump from_port_ip\n\
            \t\tdrop comment \"IPv6 and other ethertypes\"\n\t}\n\
            \n\tchain from_port_arp {\n\
            \t\tarp saddr ether fa:16:3e:00:00:01 arp saddr ip { 10.0.0.5, 0.0.0.0 } accept\n\
            \t\tdrop comment \"spoofed ARP\"\n\t}\n\
            \n\tchain from_port_ip {\n\
            \t\tip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept comment \"DHCP discover\"\n\
            \t\tether saddr fa:16:3e:00:00:01 ip saddr { 10.0.0.5 } jump egress\n\
            \t\tdrop comment \"spoofed IPv4 source\"\n\t}\n\
            \n\tchain egress {\n\
            \t\tudp sport 68 udp dport 67 accept comment \"DHCP\"\n\
            \t\tct state established,related accept\n\
            \t\tct state invalid drop\n\
            \t\tdrop\n\t}\n\
            \n\tchain to_port {\n\
            \t\tct state established,related accept\n\
            \t\tether type arp accept\n\
            \t\tudp sport 67 udp dport 68 accept comment \"DHCP\"\n\
            \t\tct state invalid drop\n\
            \t\tether type != ip drop comment \"IPv4 and ARP only\"\n\
            \t\tdrop\n\t}\n";
        assert!(b.ends_with(golden), "{b}");
    }

    #[test]
    fn allowed_address_pairs_golden() {
        let mut p = port(vec![]);
        p.allowed_pairs = vec![
            (net("10.0.0.100", 32), None),
            (net("192.168.7.0", 24), Some(PAIR_MAC)),
            (net("10.0.0.0", 24), None), // covers the port's own 10.0.0.5 and .100
            (net("192.168.7.9", 32), Some(PAIR_MAC)), // inside the /24
        ];
        let b = body(&p);
        assert!(b.contains(
            "\t\tether saddr != { fa:16:3e:00:00:01, fa:16:3e:00:00:02 } drop comment \"spoofed MAC\"\n"
        ));
        assert!(b.contains(
            "\t\tarp saddr ether fa:16:3e:00:00:01 arp saddr ip { 10.0.0.0/24, 0.0.0.0 } accept\n\
             \t\tarp saddr ether fa:16:3e:00:00:02 arp saddr ip { 192.168.7.0/24 } accept\n"
        ));
        assert!(b.contains(
            "\t\tether saddr fa:16:3e:00:00:01 ip saddr { 10.0.0.0/24 } jump egress\n\
             \t\tether saddr fa:16:3e:00:00:02 ip saddr { 192.168.7.0/24 } jump egress\n"
        ));
    }

    #[test]
    fn rule_kinds_golden() {
        let g = Remote::Group {
            group_id: "5f1c2d3e-aaaa-bbbb".into(),
            members: vec![ip("10.0.0.7"), ip("10.0.0.6"), ip("10.0.0.7")],
        };
        let rules = vec![
            rule(
                "r-tcp",
                Direction::Ingress,
                L4::from_neutron(Some(6), Some((22, 80))).unwrap(),
                Remote::Any,
            ),
            rule(
                "r-udp",
                Direction::Ingress,
                L4::from_neutron(Some(17), Some((53, 53))).unwrap(),
                Remote::Prefix(net("192.0.2.0", 24)),
            ),
            rule(
                "r-icmp",
                Direction::Ingress,
                L4::from_neutron(Some(1), Some((8, 0))).unwrap(),
                Remote::Any,
            ),
            rule(
                "r-icmp-type",
                Direction::Ingress,
                L4::from_neutron(Some(1), Some((3, 256))).unwrap(),
                Remote::Any,
            ),
            rule(
                "r-icmp-any",
                Direction::Ingress,
                L4::from_neutron(Some(1), None).unwrap(),
                Remote::Any,
            ),
            rule(
                "r-group",
                Direction::Ingress,
                L4::from_neutron(None, None).unwrap(),
                g.clone(),
            ),
            rule(
                "r-sctp",
                Direction::Ingress,
                L4::from_neutron(Some(132), Some((10, 20))).unwrap(),
                Remote::Any,
            ),
            rule(
                "r-all-tcp",
                Direction::Ingress,
                L4::from_neutron(Some(6), Some((1, 65535))).unwrap(),
                Remote::Any,
            ),
            rule(
                "e-any",
                Direction::Egress,
                L4::from_neutron(None, None).unwrap(),
                Remote::Any,
            ),
            rule(
                "e-gre",
                Direction::Egress,
                L4::from_neutron(Some(47), None).unwrap(),
                Remote::Prefix(net("198.51.100.1", 32)),
            ),
            rule("e-group", Direction::Egress, L4::Proto(6), g),
        ];
        let b = body(&port(rules));
        assert!(b.starts_with(
            "\n\tset rg_5f1c2d3e_aaa {\n\t\ttype ipv4_addr\n\
             \t\telements = { 10.0.0.6, 10.0.0.7 }\n\t}\n"
        ));
        assert!(b.contains(
            "\t\tct state invalid drop\n\
             \t\taccept comment \"e-any\"\n\
             \t\tip daddr 198.51.100.1 ip protocol 47 accept comment \"e-gre\"\n\
             \t\tip daddr @rg_5f1c2d3e_aaa ip protocol tcp accept comment \"e-group\"\n\
             \t\tdrop\n"
        ));
        assert!(b.contains(
            "\t\tether type != ip drop comment \"IPv4 and ARP only\"\n\
             \t\ttcp dport 22-80 accept comment \"r-tcp\"\n\
             \t\tip saddr 192.0.2.0/24 udp dport 53 accept comment \"r-udp\"\n\
             \t\ticmp type 8 icmp code 0 accept comment \"r-icmp\"\n\
             \t\ticmp type 3 accept comment \"r-icmp-type\"\n\
             \t\tip protocol icmp accept comment \"r-icmp-any\"\n\
             \t\tip saddr @rg_5f1c2d3e_aaa accept comment \"r-group\"\n\
             \t\tip protocol 132 th dport 10-20 accept comment \"r-sctp\"\n\
             \t\tip protocol tcp accept comment \"r-all-tcp\"\n\
             \t\tdrop\n"
        ));
    }

    #[test]
    fn empty_group_and_name_collisions() {
        let rules = vec![
            rule(
                "a",
                Direction::Ingress,
                L4::Any,
                Remote::Group {
                    group_id: "aaaaaaaaaaaa-1".into(),
                    members: vec![],
                },
            ),
            rule(
                "b",
                Direction::Ingress,
                L4::Any,
                Remote::Group {
                    group_id: "aaaaaaaaaaaa-2".into(),
                    members: vec![ip("10.0.0.1")],
                },
            ),
        ];
        let b = body(&port(rules));
        assert!(b.contains("\tset rg_aaaaaaaaaaaa {\n\t\ttype ipv4_addr\n\t}\n"));
        assert!(b.contains("\tset rg_aaaaaaaaaaaa_2 {\n"));
        assert!(b.contains("ip saddr @rg_aaaaaaaaaaaa_2 accept comment \"b\""));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut p = port(vec![]);
        p.tap = "tap\"; flush ruleset".into();
        assert!(port_table(&p).is_err());
        let mut p = port(vec![]);
        p.allowed_pairs = vec![(
            Ipv4Net {
                addr: ip("10.0.0.0"),
                prefix_len: 40,
            },
            None,
        )];
        assert!(port_table(&p).is_err());
        assert!(L4::from_neutron(Some(47), Some((1, 2))).is_err());
        assert!(L4::from_neutron(Some(6), Some((9, 2))).is_err());
        assert!(L4::from_neutron(None, Some((1, 2))).is_err());
        assert!(L4::from_neutron(Some(1), Some((300, 0))).is_err());
    }

    #[test]
    fn same_input_same_hash() {
        let a = port_table(&port(vec![])).unwrap();
        let b = port_table(&port(vec![])).unwrap();
        assert_eq!(a.hash(), b.hash());
        let mut p = port(vec![]);
        p.ips.push(ip("10.0.0.6"));
        assert_ne!(a.hash(), port_table(&p).unwrap().hash());
    }
}
