//! Addresses and networks in ACLs: `src` and `-m ip` patterns, and the `hdr_ip` sample, matched
//! across address families as HAProxy matches them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address or network from a `src` (or `-m ip`) pattern. IPv4-mapped IPv6 patterns and
/// clients are treated as the IPv4 address they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNet {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl IpNet {
    /// `addr` must already be canonical (`IpAddr::to_canonical`).
    pub fn contains_canonical(&self, addr: IpAddr) -> bool {
        match (*self, addr) {
            (Self::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.contains_canonical(addr.to_canonical())
    }

    /// Whether an ACL sample (`src`, `hdr_ip`) is in this network, with HAProxy's rules across
    /// address families: an IPv4 address against an IPv6 network is its IPv4-mapped form
    /// (`::ffff:a.b.c.d`); an IPv6 address that carries an IPv4 one (IPv4-compatible
    /// `::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) against an IPv4 network is that address.
    /// Trust lists (`accept_proxy`) use the stricter [`IpNet::contains`]. `addr` must already
    /// be canonical.
    pub fn matches_sample(&self, addr: IpAddr) -> bool {
        match (*self, addr) {
            (Self::V6 { net, mask }, IpAddr::V4(a)) => u128::from(a.to_ipv6_mapped()) & mask == net,
            (Self::V4 { net, mask }, IpAddr::V6(a)) => {
                carried_v4(a).is_some_and(|a| u32::from(a) & mask == net)
            }
            _ => self.contains_canonical(addr),
        }
    }

    pub(super) fn new(addr: IpAddr, prefix: u32) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                Self::V4 {
                    net: u32::from(a) & mask,
                    mask,
                }
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Self::new(IpAddr::V4(v4), prefix - 96),
                _ => {
                    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                    Self::V6 {
                        net: u128::from(a) & mask,
                        mask,
                    }
                }
            },
        }
    }
}

/// The IPv4 address an IPv6 one carries, as HAProxy reads it: `::a.b.c.d`, `::ffff:a.b.c.d`,
/// or 6to4's `2002:AABB:CCDD::/48`.
fn carried_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let (s, o) = (a.segments(), a.octets());
    if s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// A header value as `hdr_ip` reads it, as HAProxy does: an IPv4 address (leading zeros are
/// decimal) followed by anything that is not a digit or a dot (`10.1.2.3:8080`), else a whole
/// IPv6 address. Canonical (an IPv4-mapped IPv6 address is IPv4).
pub fn sample_ip(value: &[u8]) -> Option<IpAddr> {
    let end = value
        .iter()
        .position(|b| !b.is_ascii_digit() && *b != b'.')
        .unwrap_or(value.len());
    let mut octets = [0u8; 4];
    let mut parts = value[..end].split(|&b| b == b'.');
    let mut v4 = true;
    for octet in &mut octets {
        match parts.next() {
            Some(p) if !p.is_empty() => match p.iter().try_fold(0u32, |n, d| {
                let n = n * 10 + u32::from(d - b'0');
                (n <= 255).then_some(n)
            }) {
                Some(n) => *octet = n as u8,
                None => v4 = false,
            },
            _ => v4 = false,
        }
    }
    if v4 && parts.next().is_none() {
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    std::str::from_utf8(value)
        .ok()?
        .parse::<Ipv6Addr>()
        .ok()
        .map(|a| IpAddr::V6(a).to_canonical())
}
