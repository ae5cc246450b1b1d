//! [`Ipv4Net`]: the one IPv4 prefix type of nubo (interface addresses,
//! route destinations, nftables prefixes, DHCP subnets and routes, and the
//! orchestrator's network plan).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a prefix is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4NetError {
    /// The prefix length is above 32.
    #[error("{addr}/{prefix_len}: prefix length above 32")]
    PrefixLen {
        /// The address.
        addr: Ipv4Addr,
        /// The length given.
        prefix_len: u8,
    },
    /// The text is not `a.b.c.d/n` (or `a.b.c.d`).
    #[error("{0:?}: not an IPv4 prefix (a.b.c.d/n or a.b.c.d)")]
    Parse(String),
}

/// An IPv4 address with a prefix length: `10.0.0.0/24` (a subnet),
/// `10.0.0.1/24` (an interface address in its subnet), `10.0.0.5/32` (one
/// address).
///
/// The address keeps its host bits; [`Ipv4Net::network`] clears them.
/// Serialized (serde) as the struct `{"addr": "a.b.c.d", "prefix_len": n}`;
/// deserializing checks the length (0–32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawIpv4Net")]
pub struct Ipv4Net {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32 (methods treat larger values as 32; [`Ipv4Net::new`]
    /// and [`Ipv4Net::checked`] refuse them).
    pub prefix_len: u8,
}

/// The serde shape of [`Ipv4Net`], checked on the way in.
#[derive(Deserialize)]
struct RawIpv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl TryFrom<RawIpv4Net> for Ipv4Net {
    type Error = Ipv4NetError;

    fn try_from(r: RawIpv4Net) -> Result<Self, Self::Error> {
        Self::new(r.addr, r.prefix_len)
    }
}

impl Ipv4Net {
    /// `0.0.0.0/0`: everything, the default route's destination.
    pub const DEFAULT: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    /// `addr/prefix_len`; [`Ipv4NetError::PrefixLen`] if the length is
    /// above 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, Ipv4NetError> {
        if prefix_len > 32 {
            return Err(Ipv4NetError::PrefixLen { addr, prefix_len });
        }
        Ok(Self { addr, prefix_len })
    }

    /// This prefix if its length is valid (0–32): for values built from
    /// the public fields.
    pub fn checked(self) -> Result<Self, Ipv4NetError> {
        Self::new(self.addr, self.prefix_len)
    }

    /// One address (`/32`).
    pub const fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    fn mask(self) -> u32 {
        match self.prefix_len {
            0 => 0,
            n if n >= 32 => u32::MAX,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }

    /// The netmask (`/24` → 255.255.255.0).
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The network address (host bits cleared).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Whether `other` lies inside this prefix (as long or longer, and the
    /// same network under this prefix's mask).
    pub fn contains(self, other: Ipv4Net) -> bool {
        other.prefix_len >= self.prefix_len
            && u32::from(other.addr) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Net {
    /// `a.b.c.d/n`, the address as stored (host bits kept).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = Ipv4NetError;

    /// `a.b.c.d/n` (n 0–32), or a bare `a.b.c.d` as `/32`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Ipv4NetError::Parse(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let Some(len) = len else {
            return Ok(Self::host(addr));
        };
        // u8::from_str accepts a leading '+'; a prefix length does not.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(addr, prefix_len)
    }
}

impl From<(Ipv4Addr, u8)> for Ipv4Net {
    /// Unchecked: a length above 32 is kept (methods treat it as 32).
    fn from((addr, prefix_len): (Ipv4Addr, u8)) -> Self {
        Self { addr, prefix_len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn new_checks_the_length() {
        let n = Ipv4Net::new(a("10.1.2.3"), 24).unwrap();
        assert_eq!((n.addr, n.prefix_len), (a("10.1.2.3"), 24));
        assert!(Ipv4Net::new(a("10.1.2.3"), 32).is_ok());
        assert_eq!(
            Ipv4Net::new(Ipv4Addr::LOCALHOST, 33),
            Err(Ipv4NetError::PrefixLen {
                addr: Ipv4Addr::LOCALHOST,
                prefix_len: 33
            })
        );
        assert!(Ipv4Net::from((a("10.0.0.0"), 40)).checked().is_err());
        assert!(Ipv4Net::from((a("10.0.0.0"), 8)).checked().is_ok());
    }

    #[test]
    fn masks_and_networks() {
        let p = |len| Ipv4Net::from((a("10.1.2.3"), len));
        assert_eq!(p(0).netmask(), a("0.0.0.0"));
        assert_eq!(p(12).netmask(), a("255.240.0.0"));
        assert_eq!(p(24).netmask(), a("255.255.255.0"));
        assert_eq!(p(32).netmask(), a("255.255.255.255"));
        assert_eq!(p(99).netmask(), a("255.255.255.255"));
        assert_eq!(p(12).network(), a("10.0.0.0"));
        assert_eq!(p(24).network(), a("10.1.2.0"));
        assert_eq!(p(32).network(), a("10.1.2.3"));
        assert_eq!(p(0).network(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(Ipv4Net::DEFAULT.network(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(Ipv4Net::host(a("10.0.0.5")).prefix_len, 32);
    }

    #[test]
    fn containment() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(n("10.0.0.0/8").contains(n("10.1.0.0/16")));
        assert!(n("10.0.0.0/8").contains(n("10.0.0.0/8")));
        assert!(n("10.0.0.7/24").contains(n("10.0.0.9")));
        assert!(!n("10.1.0.0/16").contains(n("10.0.0.0/8")));
        assert!(!n("10.0.0.0/24").contains(n("10.0.1.0/24")));
        assert!(Ipv4Net::DEFAULT.contains(n("192.0.2.1")));
    }

    #[test]
    fn display_and_parse() {
        let n = Ipv4Net::new(a("10.1.2.3"), 24).unwrap();
        assert_eq!(n.to_string(), "10.1.2.3/24");
        assert_eq!(Ipv4Net::DEFAULT.to_string(), "0.0.0.0/0");
        assert_eq!("10.1.2.3/24".parse::<Ipv4Net>(), Ok(n));
        assert_eq!(
            "192.0.2.1".parse::<Ipv4Net>(),
            Ok(Ipv4Net::host(a("192.0.2.1")))
        );
        assert_eq!("0.0.0.0/0".parse::<Ipv4Net>(), Ok(Ipv4Net::DEFAULT));
        for bad in [
            "",
            "/24",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/256",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
            "::1/128",
            "host",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Net>(), Err(Ipv4NetError::Parse(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Ipv4Net>(),
            Err(Ipv4NetError::PrefixLen { prefix_len: 33, .. })
        ));
    }

    #[test]
    fn serde_is_the_plain_struct_and_checks_the_length() {
        let n = Ipv4Net::new(a("10.0.0.0"), 24).unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, r#"{"addr":"10.0.0.0","prefix_len":24}"#);
        assert_eq!(serde_json::from_str::<Ipv4Net>(&j).unwrap(), n);
        assert!(serde_json::from_str::<Ipv4Net>(r#"{"addr":"10.0.0.0","prefix_len":33}"#).is_err());
        assert!(serde_json::from_str::<Ipv4Net>(r#"{"addr":"x","prefix_len":3}"#).is_err());
    }

    #[test]
    fn ordering_is_by_address_then_length() {
        let mut v = vec![
            Ipv4Net::from((a("10.0.0.2"), 24)),
            Ipv4Net::from((a("10.0.0.1"), 32)),
            Ipv4Net::from((a("10.0.0.1"), 24)),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Ipv4Net::from((a("10.0.0.1"), 24)),
                Ipv4Net::from((a("10.0.0.1"), 32)),
                Ipv4Net::from((a("10.0.0.2"), 24)),
            ]
        );
    }
}
