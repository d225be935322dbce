//! IP subnets, restricted to the documentation ranges tests may use.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::error::Error;

/// An IPv4 or IPv6 network: an address with its host bits cleared and a
/// prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: IpAddr,
    prefix: u8,
}

/// The only ranges test hosts may use: RFC 5737 TEST-NET-2 and TEST-NET-3,
/// and RFC 3849's IPv6 documentation prefix. TEST-NET-1 (192.0.2.0/24) is
/// excluded on purpose: this machine's own network sits in it.
pub const DOCUMENTATION_RANGES: [&str; 3] = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"];

impl Subnet {
    /// Builds a subnet, clearing host bits; `None` if the prefix is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = max_prefix(addr);
        (prefix <= max).then(|| Self {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// A single address as a /32 or /128.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            network: addr,
            prefix: max_prefix(addr),
        }
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv6 subnet.
    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// Whether `addr` lies in this subnet.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv6() == self.is_ipv6() && mask(addr, self.prefix) == self.network
    }

    /// Whether the two subnets share any address (one contains the other).
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        self.is_ipv6() == other.is_ipv6()
            && mask(self.network, shorter) == mask(other.network, shorter)
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn covers(&self, other: &Subnet) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The `n`-th address of the subnet (`nth(1)` of 198.51.100.0/24 is
    /// 198.51.100.1); `None` if it falls outside.
    pub fn nth(&self, n: u32) -> Option<IpAddr> {
        let addr = match self.network {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).checked_add(n)?)),
            IpAddr::V6(v6) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6).checked_add(u128::from(n))?))
            }
        };
        self.contains(addr).then_some(addr)
    }

    /// Whether the subnet lies inside one of [`DOCUMENTATION_RANGES`].
    pub fn is_documentation(&self) -> bool {
        DOCUMENTATION_RANGES
            .iter()
            .filter_map(|r| r.parse::<Subnet>().ok())
            .any(|range| range.covers(self))
    }
}

impl FromStr for Subnet {
    type Err = Error;

    /// Parses `ADDR/LEN` or a bare address (a host route).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadSubnet(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                Self::new(addr, len).ok_or_else(bad)
            }
            None => Ok(Self::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv6() { 128 } else { 32 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(net("198.51.100.7/24").to_string(), "198.51.100.0/24");
        assert_eq!(net("2001:db8:1::5/64").to_string(), "2001:db8:1::/64");
        assert_eq!(net("203.0.113.9").to_string(), "203.0.113.9/32");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("198.51.100.0/33".parse::<Subnet>().is_err());
        assert!("nonsense/24".parse::<Subnet>().is_err());
    }

    #[test]
    fn overlap_and_containment() {
        assert!(net("198.51.100.0/24").overlaps(&net("198.51.100.128/25")));
        assert!(net("198.51.100.128/25").overlaps(&net("198.51.100.0/24")));
        assert!(!net("198.51.100.0/25").overlaps(&net("198.51.100.128/25")));
        assert!(!net("198.51.100.0/24").overlaps(&net("2001:db8::/32")));
        assert!(net("2001:db8::/32").covers(&net("2001:db8:5::/64")));
        assert!(!net("2001:db8:5::/64").covers(&net("2001:db8::/32")));
    }

    #[test]
    fn only_documentation_ranges_are_allowed() {
        assert!(net("198.51.100.0/24").is_documentation());
        assert!(net("203.0.113.64/26").is_documentation());
        assert!(net("2001:db8:ff::/64").is_documentation());
        assert!(!net("192.0.2.0/24").is_documentation());
        assert!(!net("198.51.0.0/16").is_documentation());
        assert!(!net("2001:db9::/64").is_documentation());
    }

    #[test]
    fn nth_stays_inside() {
        assert_eq!(
            net("198.51.100.0/24").nth(2),
            Some("198.51.100.2".parse().unwrap())
        );
        assert_eq!(net("198.51.100.0/30").nth(4), None);
        assert_eq!(
            net("2001:db8:1::/64").nth(1),
            Some("2001:db8:1::1".parse().unwrap())
        );
    }
}
