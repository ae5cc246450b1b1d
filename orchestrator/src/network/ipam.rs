//! IPv4 address management: CIDRs, allocation pools and picking a free
//! address. Pure functions over addresses; what is taken comes from the
//! store.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::host::net::plan::Ipv4Net;

/// An allocation pool: the first and last address, inclusive.
pub type Pool = (Ipv4Addr, Ipv4Addr);

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

/// Parses `a.b.c.d/n`. With `strict`, an address with host bits set is an
/// error (Neutron refuses `10.0.0.1/24` as a subnet's cidr).
pub fn parse_cidr(s: &str, strict: bool) -> Result<Ipv4Net, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l),
        None => (s, "32"),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("'{s}' is not a valid IPv4 CIDR"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("'{s}' is not a valid IPv4 CIDR"))?;
    let net = Ipv4Addr::from(u32::from(addr) & mask(prefix_len));
    if strict && net != addr {
        return Err(format!(
            "'{s}' isn't a recognized IP subnet cidr, '{net}/{prefix_len}' is recommended"
        ));
    }
    Ok(Ipv4Net {
        addr: net,
        prefix_len,
    })
}

/// Whether `ip` is inside `cidr`.
pub fn contains(cidr: &Ipv4Net, ip: Ipv4Addr) -> bool {
    u32::from(ip) & mask(cidr.prefix_len) == u32::from(cidr.addr)
}

/// Whether two prefixes share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    contains(a, b.addr) || contains(b, a.addr)
}

/// The last address of `cidr` (its broadcast).
pub fn last(cidr: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.addr) | !mask(cidr.prefix_len))
}

/// The usable host range of `cidr`: without the network and broadcast
/// addresses, except for /31 and /32 where every address is usable.
pub fn host_range(cidr: &Ipv4Net) -> (u32, u32) {
    let (first, last) = (u32::from(cidr.addr), u32::from(last(cidr)));
    if cidr.prefix_len >= 31 {
        (first, last)
    } else {
        (first + 1, last - 1)
    }
}

/// The default gateway of a subnet: its first host address.
pub fn default_gateway(cidr: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(host_range(cidr).0)
}

/// The default allocation pools: the host range without the gateway.
pub fn default_pools(cidr: &Ipv4Net, gateway: Option<Ipv4Addr>) -> Vec<Pool> {
    let (first, last) = host_range(cidr);
    let mut pools = Vec::new();
    match gateway
        .map(u32::from)
        .filter(|g| (first..=last).contains(g))
    {
        Some(g) => {
            if g > first {
                pools.push((Ipv4Addr::from(first), Ipv4Addr::from(g - 1)));
            }
            if g < last {
                pools.push((Ipv4Addr::from(g + 1), Ipv4Addr::from(last)));
            }
        }
        None => pools.push((Ipv4Addr::from(first), Ipv4Addr::from(last))),
    }
    pools
}

/// Checks given pools: each inside the host range of `cidr`, start ≤ end,
/// no two overlapping, none holding the gateway. The error is Neutron's
/// wording.
pub fn validate_pools(
    cidr: &Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pools: &[Pool],
) -> Result<(), String> {
    let (first, last) = host_range(cidr);
    for (i, (s, e)) in pools.iter().enumerate() {
        let (s32, e32) = (u32::from(*s), u32::from(*e));
        if s32 > e32 {
            return Err(format!(
                "The allocation pool {s}-{e} spans beyond the subnet cidr {cidr}."
            ));
        }
        if s32 < first || e32 > last {
            return Err(format!(
                "The allocation pool {s}-{e} spans beyond the subnet cidr {cidr}."
            ));
        }
        if let Some(g) = gateway {
            if (s32..=e32).contains(&u32::from(g)) {
                return Err(format!(
                    "Gateway ip {g} conflicts with allocation pool {s}-{e}"
                ));
            }
        }
        for (s2, e2) in &pools[i + 1..] {
            if s32 <= u32::from(*e2) && u32::from(*s2) <= e32 {
                return Err(format!(
                    "Found overlapping allocation pools: {s}-{e} and {s2}-{e2} for subnet {cidr}."
                ));
            }
        }
    }
    Ok(())
}

/// The first address of `pools` not in `taken`, if any.
pub fn pick_free(pools: &[Pool], taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    pools.iter().find_map(|(s, e)| {
        (u32::from(*s)..=u32::from(*e))
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Net {
        parse_cidr(s, true).unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_are_parsed_and_host_bits_refused() {
        assert_eq!(c("10.0.0.0/24").to_string(), "10.0.0.0/24");
        assert!(parse_cidr("10.0.0.1/24", true)
            .unwrap_err()
            .contains("10.0.0.0/24"));
        assert_eq!(
            parse_cidr("10.0.0.1/24", false).unwrap().to_string(),
            "10.0.0.0/24"
        );
        for bad in ["10.0.0.0/33", "x/24", "10.0.0/24", "", "fe80::/64"] {
            assert!(parse_cidr(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_pools_skip_network_broadcast_and_gateway() {
        let cidr = c("10.0.0.0/24");
        assert_eq!(default_gateway(&cidr), ip("10.0.0.1"));
        assert_eq!(
            default_pools(&cidr, Some(ip("10.0.0.1"))),
            vec![(ip("10.0.0.2"), ip("10.0.0.254"))]
        );
        assert_eq!(
            default_pools(&cidr, Some(ip("10.0.0.100"))),
            vec![
                (ip("10.0.0.1"), ip("10.0.0.99")),
                (ip("10.0.0.101"), ip("10.0.0.254"))
            ]
        );
        assert_eq!(
            default_pools(&cidr, None),
            vec![(ip("10.0.0.1"), ip("10.0.0.254"))]
        );
    }

    #[test]
    fn given_pools_must_lie_in_the_cidr_and_miss_the_gateway() {
        let cidr = c("10.0.0.0/24");
        let gw = Some(ip("10.0.0.1"));
        assert!(validate_pools(&cidr, gw, &[(ip("10.0.0.10"), ip("10.0.0.20"))]).is_ok());
        assert!(validate_pools(&cidr, gw, &[(ip("10.0.0.10"), ip("10.0.1.20"))]).is_err());
        assert!(validate_pools(&cidr, gw, &[(ip("10.0.0.0"), ip("10.0.0.20"))]).is_err());
        assert!(
            validate_pools(&cidr, gw, &[(ip("10.0.0.1"), ip("10.0.0.20"))])
                .unwrap_err()
                .contains("Gateway")
        );
        assert!(validate_pools(&cidr, gw, &[(ip("10.0.0.20"), ip("10.0.0.10"))]).is_err());
        assert!(validate_pools(
            &cidr,
            gw,
            &[
                (ip("10.0.0.10"), ip("10.0.0.20")),
                (ip("10.0.0.15"), ip("10.0.0.30"))
            ]
        )
        .unwrap_err()
        .contains("overlapping"));
    }

    #[test]
    fn picking_skips_taken_addresses_and_reports_exhaustion() {
        let pools = vec![(ip("10.0.0.2"), ip("10.0.0.3"))];
        let mut taken = HashSet::new();
        assert_eq!(pick_free(&pools, &taken), Some(ip("10.0.0.2")));
        taken.insert(ip("10.0.0.2"));
        assert_eq!(pick_free(&pools, &taken), Some(ip("10.0.0.3")));
        taken.insert(ip("10.0.0.3"));
        assert_eq!(pick_free(&pools, &taken), None);
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(&c("10.0.0.0/24"), &c("10.0.0.128/25")));
        assert!(overlaps(&c("10.0.0.128/25"), &c("10.0.0.0/16")));
        assert!(!overlaps(&c("10.0.0.0/24"), &c("10.0.1.0/24")));
        assert!(contains(&c("0.0.0.0/0"), ip("8.8.8.8")));
    }
}
