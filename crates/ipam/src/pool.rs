//! Pools and the pure arithmetic of carving them into blocks and addressing inside a block.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{IpamError, Result};

/// The default block size of an IPv4 pool (64 addresses), as Calico's.
pub const DEFAULT_V4_BLOCK_SIZE: u8 = 26;
/// The default block size of an IPv6 pool (64 addresses), as Calico's.
pub const DEFAULT_V6_BLOCK_SIZE: u8 = 122;
/// The largest block holds 2^12 = 4096 addresses (Calico's limits: /20 for IPv4, /116 for
/// IPv6); a block's allocations live in one datastore record, so it must stay small.
pub const MAX_BLOCK_HOST_BITS: u8 = 12;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// 32 or 128.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// One IP pool as IPAM sees it. The caller (CNI plugin, agent, CLI) maps IPPool resources to
/// this and has already dropped the pools whose node selector does not match the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub cidr: IpNet,
    /// Prefix length of each block (26 carves a v4 pool into /26 blocks).
    pub block_size: u8,
    /// A disabled pool gives out no new addresses (its existing allocations stay).
    pub disabled: bool,
}

impl PoolSpec {
    /// An enabled pool.
    pub fn new(name: impl Into<String>, cidr: IpNet, block_size: u8) -> Self {
        PoolSpec {
            name: name.into(),
            cidr,
            block_size,
            disabled: false,
        }
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// The pool's CIDR with host bits cleared.
    pub fn network(&self) -> IpNet {
        self.cidr.trunc()
    }

    /// Checks the block size against the pool and the family's limits.
    pub fn validate(&self) -> Result<()> {
        let bits = self.family().bits();
        let min = bits - MAX_BLOCK_HOST_BITS;
        if self.block_size > bits || self.block_size < min {
            return Err(IpamError::BlockSizeOutOfRange {
                pool: self.name.clone(),
                cidr: self.cidr,
                block_size: self.block_size,
                min,
                max: bits,
            });
        }
        if self.block_size < self.cidr.prefix_len() {
            return Err(IpamError::BlockLargerThanPool {
                pool: self.name.clone(),
                cidr: self.cidr,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    /// Number of blocks in the pool (saturating at `u128::MAX`). Assumes [`Self::validate`].
    pub fn block_count(&self) -> u128 {
        pow2(self.block_size.saturating_sub(self.cidr.prefix_len()))
    }

    /// Number of addresses in the pool (saturating at `u128::MAX`).
    pub fn total_addresses(&self) -> u128 {
        pow2(self.family().bits() - self.cidr.prefix_len())
    }

    /// Number of addresses in one block of this pool.
    pub fn addresses_per_block(&self) -> u128 {
        pow2(self.family().bits().saturating_sub(self.block_size))
    }

    /// The `index`-th block of the pool, counting from its start; `None` past the end.
    pub fn block_at(&self, index: u128) -> Option<IpNet> {
        if index >= self.block_count() {
            return None;
        }
        let start = addr_to_u128(self.network().network());
        let base = start.checked_add(index.checked_mul(self.addresses_per_block())?)?;
        Some(make_net(self.family(), base, self.block_size))
    }

    /// The block of this pool holding `addr`, if the pool contains `addr`.
    pub fn block_containing(&self, addr: IpAddr) -> Option<IpNet> {
        if !self.cidr.contains(&addr) {
            return None;
        }
        let host_bits = self.family().bits() - self.block_size;
        let v = addr_to_u128(addr);
        let base = if host_bits >= 128 {
            0
        } else {
            v >> host_bits << host_bits
        };
        Some(make_net(self.family(), base, self.block_size))
    }

    /// Whether `block` lies inside this pool (whatever its size).
    pub fn contains_block(&self, block: &IpNet) -> bool {
        self.cidr.contains(block)
    }
}

/// The pool (of `pools`) holding `addr` and the block of that pool holding it.
pub fn block_for(addr: IpAddr, pools: &[PoolSpec]) -> Option<(&PoolSpec, IpNet)> {
    pools
        .iter()
        .find_map(|p| p.block_containing(addr).map(|b| (p, b)))
}

/// 2^n, saturating at `u128::MAX`.
fn pow2(n: u8) -> u128 {
    if n >= 128 { u128::MAX } else { 1u128 << n }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` with integer value `v` (IPv4 uses the low 32 bits).
pub fn u128_to_addr(family: IpFamily, v: u128) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn make_net(family: IpFamily, base: u128, prefix: u8) -> IpNet {
    match u128_to_addr(family, base) {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new_assert(a, prefix)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new_assert(a, prefix)),
    }
}

/// Number of addresses in a block (at most 2^[`MAX_BLOCK_HOST_BITS`] for valid blocks;
/// saturates at `u32::MAX` for larger nets).
pub fn block_len(block: &IpNet) -> u32 {
    let host_bits = block.max_prefix_len() - block.prefix_len();
    if host_bits >= 32 {
        u32::MAX
    } else {
        1u32 << host_bits
    }
}

/// The position of `addr` inside `block`, or `None` when the block does not hold it.
pub fn offset_in_block(block: &IpNet, addr: IpAddr) -> Option<u32> {
    if !block.contains(&addr) {
        return None;
    }
    let off = addr_to_u128(addr) - addr_to_u128(block.network());
    u32::try_from(off).ok()
}

/// The address at `offset` inside `block`, or `None` past the block's end.
pub fn addr_at(block: &IpNet, offset: u32) -> Option<IpAddr> {
    if offset >= block_len(block) {
        return None;
    }
    let base = addr_to_u128(block.network());
    Some(u128_to_addr(
        IpFamily::of_net(block),
        base + u128::from(offset),
    ))
}

/// The last address of `net` as an integer.
pub(crate) fn net_end(net: &IpNet) -> u128 {
    addr_to_u128(net.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_pool_carves_into_26_blocks() {
        let p = PoolSpec::new("p", net("10.1.0.0/24"), 26);
        p.validate().unwrap();
        assert_eq!(p.block_count(), 4);
        assert_eq!(p.addresses_per_block(), 64);
        assert_eq!(p.total_addresses(), 256);
        assert_eq!(p.block_at(0), Some(net("10.1.0.0/26")));
        assert_eq!(p.block_at(1), Some(net("10.1.0.64/26")));
        assert_eq!(p.block_at(3), Some(net("10.1.0.192/26")));
        assert_eq!(p.block_at(4), None, "past the end of the pool");
    }

    #[test]
    fn v6_pool_carves_into_122_blocks() {
        let p = PoolSpec::new("p6", net("fd00:1::/120"), 122);
        p.validate().unwrap();
        assert_eq!(p.block_count(), 4);
        assert_eq!(p.block_at(0), Some(net("fd00:1::/122")));
        assert_eq!(p.block_at(1), Some(net("fd00:1::40/122")));
        assert_eq!(p.block_at(3), Some(net("fd00:1::c0/122")));
        assert_eq!(p.block_at(4), None);
        let big = PoolSpec::new("big", net("fd00::/48"), 122);
        big.validate().unwrap();
        assert_eq!(big.block_count(), 1u128 << 74);
        assert_eq!(big.total_addresses(), 1u128 << 80);
        let last = big.block_at((1u128 << 74) - 1).unwrap();
        assert_eq!(last, net("fd00:0:0:ffff:ffff:ffff:ffff:ffc0/122"));
        assert_eq!(big.block_at(1u128 << 74), None);
        let whole = PoolSpec::new("all", net("::/0"), 116);
        assert_eq!(whole.total_addresses(), u128::MAX, "saturates");
    }

    #[test]
    fn host_bits_in_pool_cidr_are_ignored() {
        let p = PoolSpec::new("p", net("10.1.0.77/24"), 26);
        assert_eq!(p.block_at(1), Some(net("10.1.0.64/26")));
    }

    #[test]
    fn block_containing_at_pool_edges() {
        let p = PoolSpec::new("p", net("10.1.0.0/24"), 26);
        assert_eq!(p.block_containing(ip("10.1.0.0")), Some(net("10.1.0.0/26")));
        assert_eq!(
            p.block_containing(ip("10.1.0.63")),
            Some(net("10.1.0.0/26"))
        );
        assert_eq!(
            p.block_containing(ip("10.1.0.64")),
            Some(net("10.1.0.64/26"))
        );
        assert_eq!(
            p.block_containing(ip("10.1.0.255")),
            Some(net("10.1.0.192/26"))
        );
        assert_eq!(p.block_containing(ip("10.1.1.0")), None);
        assert_eq!(p.block_containing(ip("10.0.255.255")), None);
        assert_eq!(p.block_containing(ip("fd00::1")), None);
        let p6 = PoolSpec::new("p6", net("fd00:1::/120"), 122);
        assert_eq!(
            p6.block_containing(ip("fd00:1::ff")),
            Some(net("fd00:1::c0/122"))
        );
        let single = PoolSpec::new("one", net("10.9.9.9/32"), 32);
        single.validate().unwrap();
        assert_eq!(single.block_count(), 1);
        assert_eq!(
            single.block_containing(ip("10.9.9.9")),
            Some(net("10.9.9.9/32"))
        );
    }

    #[test]
    fn block_for_picks_the_pool_holding_the_address() {
        let pools = vec![
            PoolSpec::new("a", net("10.1.0.0/24"), 26),
            PoolSpec::new("b", net("10.2.0.0/16"), 28),
        ];
        let (p, b) = block_for(ip("10.2.3.17"), &pools).unwrap();
        assert_eq!(p.name, "b");
        assert_eq!(b, net("10.2.3.16/28"));
        assert!(block_for(ip("10.3.0.1"), &pools).is_none());
    }

    #[test]
    fn address_arithmetic_inside_a_block() {
        let b = net("10.1.0.64/26");
        assert_eq!(block_len(&b), 64);
        assert_eq!(offset_in_block(&b, ip("10.1.0.64")), Some(0));
        assert_eq!(offset_in_block(&b, ip("10.1.0.127")), Some(63));
        assert_eq!(offset_in_block(&b, ip("10.1.0.128")), None);
        assert_eq!(offset_in_block(&b, ip("10.1.0.63")), None);
        assert_eq!(addr_at(&b, 0), Some(ip("10.1.0.64")));
        assert_eq!(addr_at(&b, 63), Some(ip("10.1.0.127")));
        assert_eq!(addr_at(&b, 64), None);
        let b6 = net("fd00:1::40/122");
        assert_eq!(block_len(&b6), 64);
        assert_eq!(addr_at(&b6, 63), Some(ip("fd00:1::7f")));
        assert_eq!(offset_in_block(&b6, ip("fd00:1::7f")), Some(63));
        assert_eq!(offset_in_block(&b6, ip("10.1.0.64")), None);
        // The very top of the address space.
        let top = net("255.255.255.192/26");
        assert_eq!(addr_at(&top, 63), Some(ip("255.255.255.255")));
        assert_eq!(net_end(&top), u128::from(u32::MAX));
        let top6 = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122");
        assert_eq!(addr_at(&top6, 63).map(addr_to_u128), Some(u128::MAX));
    }

    #[test]
    fn pool_smaller_than_a_block_is_rejected() {
        let p = PoolSpec::new("tiny", net("10.1.0.0/28"), 26);
        let err = p.validate().unwrap_err();
        assert!(
            matches!(err, IpamError::BlockLargerThanPool { ref pool, block_size: 26, .. } if pool == "tiny"),
            "{err:?}"
        );
        assert!(err.to_string().contains("tiny"), "{err}");
        let p6 = PoolSpec::new("tiny6", net("fd00::/124"), 122);
        assert!(matches!(
            p6.validate(),
            Err(IpamError::BlockLargerThanPool { .. })
        ));
    }

    #[test]
    fn block_size_out_of_range_is_rejected() {
        for (cidr, bs) in [
            ("10.0.0.0/8", 19),
            ("10.0.0.0/8", 33),
            ("fd00::/48", 115),
            ("fd00::/48", 129),
        ] {
            let p = PoolSpec::new("p", net(cidr), bs);
            assert!(
                matches!(p.validate(), Err(IpamError::BlockSizeOutOfRange { .. })),
                "{cidr} /{bs}"
            );
        }
        for (cidr, bs) in [("10.0.0.0/8", 20), ("10.0.0.0/8", 32), ("fd00::/48", 116)] {
            PoolSpec::new("p", net(cidr), bs).validate().unwrap();
        }
    }
}
