//! The datastore key layout and the JSON records stored under it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_store::KeyValue;

use crate::error::{IpamError, Result};
use crate::pool::{addr_at, block_len, offset_in_block};

/// Everything IPAM stores lives under this prefix.
pub const IPAM_PREFIX: &str = "/serval/ipam/";
/// `BLOCK_PREFIX + block_key_segment(cidr)` → [`Block`].
pub const BLOCK_PREFIX: &str = "/serval/ipam/blocks/";
/// `AFFINITY_PREFIX + node + "/" + block_key_segment(cidr)` → [`Affinity`].
pub const AFFINITY_PREFIX: &str = "/serval/ipam/affinities/";
/// `HANDLE_PREFIX + handle` → [`Handle`].
pub const HANDLE_PREFIX: &str = "/serval/ipam/handles/";
/// `NODE_PREFIX + node` → [`NodeClaims`].
pub const NODE_PREFIX: &str = "/serval/ipam/nodes/";

/// A block CIDR as one key segment: `10.0.0.64/26` → `10.0.0.64-26`.
pub fn block_key_segment(cidr: &IpNet) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len())
}

/// The inverse of [`block_key_segment`].
pub fn parse_block_key_segment(seg: &str) -> Option<IpNet> {
    let (addr, len) = seg.rsplit_once('-')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = IpNet::new(addr, len).ok()?;
    (net.trunc() == net).then_some(net)
}

pub fn block_key(cidr: &IpNet) -> String {
    format!("{BLOCK_PREFIX}{}", block_key_segment(cidr))
}

pub fn affinity_key(node: &str, cidr: &IpNet) -> String {
    format!("{AFFINITY_PREFIX}{node}/{}", block_key_segment(cidr))
}

/// The prefix of one node's affinities.
pub fn node_affinity_prefix(node: &str) -> String {
    format!("{AFFINITY_PREFIX}{node}/")
}

pub fn handle_key(handle: &str) -> String {
    format!("{HANDLE_PREFIX}{handle}")
}

pub fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

/// The block CIDR named by a block key (for watchers of [`BLOCK_PREFIX`]).
pub fn parse_block_key(key: &str) -> Result<IpNet> {
    let seg = key.strip_prefix(BLOCK_PREFIX).ok_or(IpamError::BadKey {
        key: key.to_string(),
        reason: "not under the block prefix",
    })?;
    parse_block_key_segment(seg).ok_or(IpamError::BadKey {
        key: key.to_string(),
        reason: "the last segment is not ADDRESS-PREFIXLEN of a network",
    })
}

/// The node and block CIDR named by an affinity key (for watchers of [`AFFINITY_PREFIX`];
/// a delete event carries only the key).
pub fn parse_affinity_key(key: &str) -> Result<(String, IpNet)> {
    let bad = |reason| IpamError::BadKey {
        key: key.to_string(),
        reason,
    };
    let rest = key
        .strip_prefix(AFFINITY_PREFIX)
        .ok_or(bad("not under the affinity prefix"))?;
    let (node, seg) = rest.split_once('/').ok_or(bad("no NODE/BLOCK segments"))?;
    if node.is_empty() {
        return Err(bad("empty node name"));
    }
    let block = parse_block_key_segment(seg).ok_or(bad(
        "the last segment is not ADDRESS-PREFIXLEN of a network",
    ))?;
    Ok((node.to_string(), block))
}

/// Who an allocation is for. Stored on the handle and on every address of the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// One allocated address inside a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub handle: String,
    pub attrs: AllocationAttrs,
}

/// A block record (`/serval/ipam/blocks/<cidr>`): a slice of one pool, affine to one node,
/// with the allocation of each of its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: IpNet,
    /// Name of the pool the block was carved from.
    pub pool: String,
    /// The node the block is affine to (`None` only for hand-made records).
    pub affinity: Option<String>,
    /// Allocated addresses by offset from the block's first address; an offset not present is
    /// free.
    #[serde(default)]
    pub allocations: BTreeMap<u32, Allocation>,
    /// Where the next search for a free address starts: addresses are handed out round-robin
    /// so a just-released address is the last to be reused.
    #[serde(default)]
    pub next: u32,
    /// Bumped on every change of the record.
    #[serde(default)]
    pub sequence: u64,
}

impl Block {
    pub fn new(cidr: IpNet, pool: &str, node: &str) -> Self {
        Block {
            cidr,
            pool: pool.to_string(),
            affinity: Some(node.to_string()),
            allocations: BTreeMap::new(),
            next: 0,
            sequence: 0,
        }
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u32 {
        block_len(&self.cidr)
    }

    pub fn allocated(&self) -> u32 {
        self.allocations.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// Marks the first free address at or after the cursor (wrapping) as allocated to
    /// `handle`; `None` when the block is full.
    pub fn allocate(&mut self, handle: &str, attrs: &AllocationAttrs) -> Option<IpAddr> {
        let size = self.size();
        if self.allocated() >= size {
            return None;
        }
        let start = self.next % size;
        let offset = (start..size)
            .chain(0..start)
            .find(|o| !self.allocations.contains_key(o))?;
        self.allocations.insert(
            offset,
            Allocation {
                handle: handle.to_string(),
                attrs: attrs.clone(),
            },
        );
        self.next = (offset + 1) % size;
        self.sequence += 1;
        addr_at(&self.cidr, offset)
    }

    /// Marks `addr` as allocated to `handle`.
    pub fn allocate_addr(
        &mut self,
        addr: IpAddr,
        handle: &str,
        attrs: &AllocationAttrs,
    ) -> AddrClaim {
        let Some(offset) = offset_in_block(&self.cidr, addr) else {
            return AddrClaim::OutsideBlock;
        };
        match self.allocations.get(&offset) {
            Some(a) if a.handle == handle => AddrClaim::AlreadyHeld,
            Some(a) => AddrClaim::HeldBy(a.handle.clone()),
            None => {
                self.allocations.insert(
                    offset,
                    Allocation {
                        handle: handle.to_string(),
                        attrs: attrs.clone(),
                    },
                );
                self.sequence += 1;
                AddrClaim::Allocated
            }
        }
    }

    /// Frees every address of `handle` that `only` accepts; returns the freed addresses.
    pub fn release(&mut self, handle: &str, only: impl Fn(IpAddr) -> bool) -> Vec<IpAddr> {
        let cidr = self.cidr;
        let mut freed = Vec::new();
        self.allocations.retain(|&off, a| {
            let Some(addr) = addr_at(&cidr, off) else {
                return true;
            };
            if a.handle == handle && only(addr) {
                freed.push(addr);
                false
            } else {
                true
            }
        });
        if !freed.is_empty() {
            self.sequence += 1;
        }
        freed
    }

    /// Allocated addresses with their allocation.
    pub fn allocated_addrs(&self) -> impl Iterator<Item = (IpAddr, &Allocation)> {
        self.allocations
            .iter()
            .filter_map(|(&off, a)| addr_at(&self.cidr, off).map(|addr| (addr, a)))
    }
}

/// The outcome of [`Block::allocate_addr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrClaim {
    Allocated,
    /// The handle already held the address.
    AlreadyHeld,
    /// Another handle holds the address.
    HeldBy(String),
    OutsideBlock,
}

/// An affinity record (`/serval/ipam/affinities/<node>/<cidr>`): node → block. The agent
/// watches these to route each block to its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub node: String,
    pub block: IpNet,
    pub pool: String,
}

/// A node's claim counter (`/serval/ipam/nodes/<node>`). Every automatic block claim of the
/// node bumps it by compare-and-swap against the revision read *before* the allocator found
/// the node's blocks full, so of several allocators of one node that find its blocks full at
/// once, only one claims a new block and the others use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaims {
    pub node: String,
    /// Number of blocks the node has claimed so far (never decreases).
    pub claims: u64,
}

/// One address a handle holds and the block it is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAddress {
    pub addr: IpAddr,
    pub block: IpNet,
}

/// A handle record (`/serval/ipam/handles/<handle>`): what one allocation owner (a container)
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub handle: String,
    pub attrs: AllocationAttrs,
    pub addresses: Vec<HeldAddress>,
}

impl Handle {
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|h| h.addr).collect()
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("IPAM records serialize to JSON infallibly")
}

/// Parses a stored record.
pub fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|source| IpamError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn keys_round_trip() {
        for s in ["10.0.0.64/26", "fd00:1::40/122", "0.0.0.0/26", "::/122"] {
            let n = net(s);
            assert_eq!(parse_block_key(&block_key(&n)).unwrap(), n);
            let (node, b) = parse_affinity_key(&affinity_key("node-1", &n)).unwrap();
            assert_eq!((node.as_str(), b), ("node-1", n));
        }
        assert_eq!(
            block_key(&net("10.0.0.64/26")),
            "/serval/ipam/blocks/10.0.0.64-26"
        );
        assert_eq!(
            affinity_key("n1", &net("fd00::40/122")),
            "/serval/ipam/affinities/n1/fd00::40-122"
        );
        assert!(parse_block_key("/serval/ipam/blocks/10.0.0.65-26").is_err());
        assert!(parse_block_key("/serval/ipam/blocks/garbage").is_err());
        assert!(parse_affinity_key("/serval/ipam/affinities/n1").is_err());
        assert!(parse_affinity_key("/serval/ipam/affinities//10.0.0.0-26").is_err());
    }

    #[test]
    fn block_allocates_round_robin_and_fills() {
        let mut b = Block::new(net("10.0.0.0/30"), "p", "n");
        let attrs = AllocationAttrs::default();
        let got: Vec<_> = (0..4)
            .map(|i| b.allocate(&format!("h{i}"), &attrs))
            .collect();
        assert_eq!(
            got,
            ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|s| Some(s.parse().unwrap()))
        );
        assert_eq!(b.allocate("h4", &attrs), None, "full");
        assert_eq!(
            b.release("h1", |_| true),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(b.release("h1", |_| true).is_empty(), "already released");
        assert_eq!(b.allocate("h5", &attrs), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(b.allocated(), 4);
        // Round-robin: after releasing .3 and .0, the next allocation takes .3 (the cursor is
        // at .2's successor), then .0.
        b.release("h3", |_| true);
        b.release("h0", |_| true);
        assert_eq!(b.allocate("h6", &attrs), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(b.allocate("h7", &attrs), Some("10.0.0.0".parse().unwrap()));
    }

    #[test]
    fn block_record_json_round_trips() {
        let mut b = Block::new(net("fd00::40/122"), "p6", "n");
        let attrs = AllocationAttrs {
            namespace: Some("default".into()),
            pod: Some("web".into()),
            node: "n".into(),
            container_id: Some("abc".into()),
        };
        b.allocate("abc", &attrs).unwrap();
        let kv = KeyValue {
            key: block_key(&b.cidr),
            value: encode(&b),
            create_revision: 1,
            mod_revision: 1,
        };
        let back: Block = decode(&kv).unwrap();
        assert_eq!(back, b);
        let bad = KeyValue {
            value: b"{".to_vec(),
            ..kv
        };
        assert!(matches!(
            decode::<Block>(&bad),
            Err(IpamError::Corrupt { .. })
        ));
    }
}
