//! Address blocks (`10.244.0.0/16`, `fd00::/8`): the webhook's cluster networks, the enforcer's
//! trusted proxies.

use std::net::IpAddr;

/// An address block, `10.244.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a CIDR block (e.g. 10.244.0.0/16)");
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// An address as a 128-bit number and its family's width.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl Cidr {
    fn masked(ip: IpAddr, prefix: u8) -> Option<u128> {
        let (value, width) = bits(ip);
        if prefix > width {
            return None;
        }
        let shift = u32::from(width - prefix);
        Some(if shift >= 128 { 0 } else { value >> shift })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.is_ipv4() == ip.is_ipv4()
            && Cidr::masked(self.net, self.prefix) == Cidr::masked(ip, self.prefix)
    }

    /// Whether the two blocks share any address (one contains the other's network).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.net.is_ipv4() != other.net.is_ipv4() {
            return false;
        }
        let prefix = self.prefix.min(other.prefix);
        Cidr::masked(self.net, prefix) == Cidr::masked(other.net, prefix)
    }
}
