//! Consistent hashing, shared by `source`, `uri` and `hdr`.
//!
//! Each server owns `weight x per_weight` points on a 64-bit ring, placed by hashing its
//! address and the point's number; a key goes to the owner of the first point at or after the
//! key's hash. A point's place depends on nothing but its server, so adding or removing a
//! server (or changing its weight) moves only the keys of the points that came or went: about
//! 1/N of them, never all. A server that is down, draining, full or tried keeps its points and
//! is walked past to the next eligible owner, which keeps every other key where it was.
//!
//! Non-backup and backup servers have a ring each. The rings are rebuilt lazily, at the first
//! pick after a state generation that changed a weight or a backup flag; a generation that only
//! changed health or admin state reuses them.
//!
//! The hash ([`KeyHasher`]) is defined here, not taken from `std` (whose algorithm may change
//! between Rust releases): the same key maps to the same server in every worker, every run
//! and every build.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::balance::{PerGeneration, PickContext, backup_in_use, eligible};
use crate::health::{BackendState, ServerState};

/// Ring points per unit of weight, as long as the ring stays under [`MAX_POINTS`].
const POINTS_PER_WEIGHT: u32 = 160;
/// Ring size above which a backend gets fewer points per unit of weight (at least one).
const MAX_POINTS: u32 = 1 << 16;

/// A consistent-hash ring over a backend's servers, with a pick by key hash.
#[derive(Debug)]
pub(crate) struct HashRing {
    servers: Vec<Arc<ServerState>>,
    view: PerGeneration<View>,
}

#[derive(Debug)]
struct View {
    /// Whether the backup ring is the one in use.
    backup: bool,
    /// Each server's (weight, backup) when the rings were built.
    layout: Vec<(u32, bool)>,
    /// Non-backup ring, backup ring.
    rings: Arc<[Ring; 2]>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Sorted point positions.
    points: Vec<u64>,
    /// `owners[i]`: the server index owning `points[i]`.
    owners: Vec<u32>,
    /// A lookup shortcut: `buckets[j]` is the first point whose top bits are `j` or more,
    /// with the point count appended; about one point per bucket.
    buckets: Vec<u32>,
    /// `64 - log2(bucket count)`: `key >> shift` is a key's bucket.
    shift: u32,
}

impl Ring {
    fn new(mut points: Vec<(u64, u32)>) -> Self {
        points.sort_unstable();
        let bits = points.len().next_power_of_two().trailing_zeros().max(1);
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut at = 0;
        for j in 0..1u64 << bits {
            while at < points.len() && points[at].0 < j << shift {
                at += 1;
            }
            buckets.push(at as u32);
        }
        buckets.push(points.len() as u32);
        Self {
            points: points.iter().map(|&(p, _)| p).collect(),
            owners: points.iter().map(|&(_, o)| o).collect(),
            buckets,
            shift,
        }
    }

    /// The index of the first point at or after `key` (the point count if none).
    fn find(&self, key: u64) -> usize {
        let Some(j) = usize::try_from(key >> self.shift)
            .ok()
            .filter(|&j| j + 1 < self.buckets.len())
        else {
            return 0;
        };
        let (lo, hi) = (self.buckets[j] as usize, self.buckets[j + 1] as usize);
        lo + self.points[lo..hi].partition_point(|&p| p < key)
    }
}

impl HashRing {
    pub(crate) fn new(servers: Vec<Arc<ServerState>>, state: Arc<BackendState>) -> Self {
        let view = PerGeneration::new(state, || view(&servers, None));
        Self { servers, view }
    }

    /// The eligible server a key with this hash goes to.
    pub(crate) fn pick(&self, key: u64, ctx: &PickContext<'_>) -> Option<usize> {
        let view = self.view.get(|old| view(&self.servers, Some(old)));
        let ring = &view.rings[usize::from(view.backup)];
        let (before, from) = ring.owners.split_at(ring.find(key));
        for (step, &owner) in from.iter().chain(before).enumerate() {
            let idx = owner as usize;
            if eligible(&self.servers[idx], idx, ctx) {
                return Some(idx);
            }
            // A long walk: stop it if nothing at all is eligible (every server full, say).
            if step == self.servers.len() && !self.any_eligible(view.backup, ctx) {
                return None;
            }
        }
        None
    }

    fn any_eligible(&self, backup: bool, ctx: &PickContext<'_>) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| s.is_backup() == backup && eligible(s, i, ctx))
    }
}

fn view(servers: &[Arc<ServerState>], old: Option<&View>) -> View {
    let layout: Vec<(u32, bool)> = servers
        .iter()
        .map(|s| (s.weight(), s.is_backup()))
        .collect();
    let rings = match old {
        Some(old) if old.layout == layout => Arc::clone(&old.rings),
        _ => Arc::new([ring(servers, &layout, false), ring(servers, &layout, true)]),
    };
    View {
        backup: backup_in_use(servers.iter().map(|s| &**s)),
        layout,
        rings,
    }
}

fn ring(servers: &[Arc<ServerState>], layout: &[(u32, bool)], backup: bool) -> Ring {
    let members = || {
        servers
            .iter()
            .zip(layout)
            .enumerate()
            .filter(move |(_, (_, (weight, b)))| *b == backup && *weight > 0)
    };
    let total: u32 = members().map(|(_, (_, (w, _)))| w).sum();
    if total == 0 {
        return Ring::default();
    }
    let per_weight = (MAX_POINTS / total).clamp(1, POINTS_PER_WEIGHT);
    let mut points: Vec<(u64, u32)> = Vec::with_capacity((total * per_weight) as usize);
    for (i, (server, &(weight, _))) in members() {
        for n in 0..weight * per_weight {
            points.push((point(server.key.addr, n), i as u32));
        }
    }
    Ring::new(points)
}

/// Where point `n` of the server at `addr` sits on the ring.
fn point(addr: SocketAddr, n: u32) -> u64 {
    let mut h = KeyHasher::new();
    write_ip(&mut h, addr.ip());
    h.write(&addr.port().to_le_bytes());
    h.write(&n.to_le_bytes());
    h.finish()
}

/// The key of a client address; an IPv4-mapped IPv6 address is the IPv4 address.
pub(crate) fn hash_ip(ip: IpAddr) -> u64 {
    let mut h = KeyHasher::new();
    write_ip(&mut h, ip);
    h.finish()
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    h.write(bytes);
    h.finish()
}

fn write_ip(h: &mut KeyHasher, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
}

/// A small, fully specified 64-bit hash of byte strings: eight bytes at a time, a multiply and
/// a rotation per word, and MurmurHash3's 64-bit finaliser for avalanche. Not keyed, not meant to
/// resist an attacker (a client choosing its key only chooses its own server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher {
    state: u64,
    len: u64,
}

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl KeyHasher {
    pub(crate) fn new() -> Self {
        Self {
            state: SEED,
            len: 0,
        }
    }

    /// Feeds bytes; each call is padded to whole words, so `write(a); write(b)` and
    /// `write(ab)` may differ (both are deterministic).
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buf = [0; 8];
            buf.copy_from_slice(word);
            self.mix(u64::from_le_bytes(buf));
        }
        // The last 1..=7 bytes in one word, read with fixed-size loads (no copy loop): two
        // overlapping 4-byte reads, or the first, middle and last byte. Together with the
        // length mixed in at the end, distinct tails give distinct words.
        let rest = words.remainder();
        let r = rest.len();
        if r >= 4 {
            self.mix(u64::from(le32(rest)) | u64::from(le32(&rest[r - 4..])) << 32);
        } else if r > 0 {
            let (a, b, c) = (rest[0], rest[r / 2], rest[r - 1]);
            self.mix(u64::from(a) | u64::from(b) << 8 | u64::from(c) << 16);
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(MUL).rotate_left(29);
    }

    pub(crate) fn finish(self) -> u64 {
        let mut h = self.state ^ self.len.wrapping_mul(MUL);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The first four bytes of `b` (at least four long), little-endian.
fn le32(b: &[u8]) -> u32 {
    let mut buf = [0; 4];
    buf.copy_from_slice(&b[..4]);
    u32::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::balance::testkit::{Lab, Req, counts};

    fn keys(ring: &HashRing, n: u32, tried: &[usize]) -> Vec<Option<usize>> {
        let req = Req::new(0);
        let ctx = PickContext {
            req: &req.view(),
            tried,
        };
        (0..n)
            .map(|k| ring.pick(hash_bytes(&k.to_le_bytes()), &ctx))
            .collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing the hash remaps every key of every deployed backend: do it on purpose only.
        assert_eq!(hash_bytes(b""), 0x7acd_bb98_b134_4213);
        assert_eq!(hash_bytes(b"/item/1"), 0xca5b_e3c5_7d0a_e2a3);
        assert_eq!(
            hash_bytes(b"a longer key of more than one word"),
            0xbaa2_a916_9d5d_e1e8
        );
        assert_eq!(
            point("127.0.0.1:9000".parse().expect("addr"), 0),
            0xd2d0_9bec_7a7b_c471
        );
    }

    #[test]
    fn the_bucket_shortcut_finds_what_a_binary_search_finds() {
        for n in [1u32, 2, 3, 100, 1000] {
            let ring = Ring::new((0..n).map(|i| (hash_bytes(&i.to_le_bytes()), i)).collect());
            let mut keys: Vec<u64> = (0..2000u32).map(|k| hash_bytes(&k.to_be_bytes())).collect();
            keys.extend(
                ring.points
                    .iter()
                    .flat_map(|&p| [p, p.wrapping_sub(1), p.wrapping_add(1)]),
            );
            keys.extend([0, u64::MAX]);
            for key in keys {
                assert_eq!(
                    ring.find(key),
                    ring.points.partition_point(|&p| p < key),
                    "n {n}"
                );
            }
        }
        assert_eq!(Ring::default().find(7), 0);
    }

    #[test]
    fn tails_of_every_length_hash_apart() {
        let bytes = b"0123456789abcdefg";
        let hashes: std::collections::HashSet<u64> =
            (0..=bytes.len()).map(|n| hash_bytes(&bytes[..n])).collect();
        assert_eq!(hashes.len(), bytes.len() + 1);
        assert_ne!(hash_bytes(b"abcde"), hash_bytes(b"abcdf"));
        assert_ne!(hash_bytes(b"ab"), hash_bytes(b"ac"));
    }

    #[test]
    fn ipv4_mapped_addresses_hash_as_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().expect("addr");
        let mapped = IpAddr::V6(Ipv6Addr::from_bits(0xffff_c000_0207));
        assert_eq!(hash_ip(v4), hash_ip(mapped));
        assert_ne!(hash_ip(v4), hash_ip("192.0.2.8".parse().expect("addr")));
    }

    #[test]
    fn keys_spread_by_weight() {
        let lab = Lab::new(&[1, 2, 3]);
        let ring = HashRing::new(lab.servers.clone(), lab.backend());
        let got = counts(&keys(&ring, 60_000, &[]), 3);
        for (g, w) in got.iter().zip([10_000.0, 20_000.0, 30_000.0]) {
            assert!((*g as f64 - w).abs() < 2_400.0, "{got:?}");
        }
    }

    #[test]
    fn a_weight_change_moves_only_keys_to_or_from_that_server() {
        let lab = Lab::new(&[1, 1, 1, 1, 1]);
        let ring = HashRing::new(lab.servers.clone(), lab.backend());
        let before = keys(&ring, 10_000, &[]);
        lab.servers[3].set_weight(2);
        let after = keys(&ring, 10_000, &[]);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|(_, a)| **a == Some(3)), "only onto s3");
        assert!(moved.len() < 2_500, "{} keys moved", moved.len());
    }

    #[test]
    fn health_changes_reuse_the_rings() {
        let lab = Lab::new(&[1, 1]);
        let ring = HashRing::new(lab.servers.clone(), lab.backend());
        let rings = Arc::clone(&ring.view.get(|_| unreachable!()).rings);
        lab.servers[0].set_up(false);
        let _ = keys(&ring, 1, &[]);
        let again = &ring.view.get(|_| unreachable!()).rings;
        assert!(Arc::ptr_eq(&rings, again));
    }

    #[test]
    fn the_walk_ends_at_the_only_eligible_server_or_none() {
        let lab = Lab::with_maxconn(&[1; 20], Some(1));
        let ring = HashRing::new(lab.servers.clone(), lab.backend());
        let _full: Vec<_> = lab.servers[..19]
            .iter()
            .map(|s| s.begin_request())
            .collect();
        assert_eq!(keys(&ring, 50, &[]), vec![Some(19); 50]);
        assert_eq!(keys(&ring, 5, &[19]), vec![None; 5]);
        let empty = HashRing::new(Vec::new(), lab.backend());
        assert_eq!(keys(&empty, 1, &[]), vec![None]);
    }
}
