//! The IPAM error type.

use std::net::IpAddr;

use ipnet::IpNet;
use serval_store::StoreError;

use crate::pool::IpFamily;

/// Everything that can go wrong in IPAM. Messages name the pool, node, handle or address
/// involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every enabled pool of the family is full (all blocks claimed, and the node's own blocks
    /// have no free address). The CNI plugin turns this into its error JSON.
    #[error(
        "no free {family} address for node {node}: pool(s) {} exhausted; add an IPPool or enlarge one",
        .pools.join(", ")
    )]
    PoolsExhausted {
        family: IpFamily,
        pools: Vec<String>,
        node: String,
    },

    /// The request wants an address of a family for which the caller gave no enabled pool.
    #[error(
        "no enabled {family} IPPool for node {node} (pools given: {}); create an IPPool of that family or enable one",
        if .given.is_empty() { "none".to_string() } else { .given.join(", ") }
    )]
    NoEnabledPool {
        family: IpFamily,
        node: String,
        given: Vec<String>,
    },

    /// A pool was passed in the list of the other family (`v4_pools` holding an IPv6 CIDR).
    #[error("pool {pool} ({cidr}) is not {expected}; pass it in the {expected} pool list")]
    PoolFamilyMismatch {
        pool: String,
        cidr: IpNet,
        expected: IpFamily,
    },

    /// The pool's CIDR is smaller than one block.
    #[error(
        "pool {pool} ({cidr}) is smaller than one block (/{block_size}); use a block size of at least /{} or a larger pool",
        .cidr.prefix_len()
    )]
    BlockLargerThanPool {
        pool: String,
        cidr: IpNet,
        block_size: u8,
    },

    /// The block size is outside what IPAM supports for the family.
    #[error("pool {pool} ({cidr}): block size /{block_size} is out of range; use /{min} to /{max}")]
    BlockSizeOutOfRange {
        pool: String,
        cidr: IpNet,
        block_size: u8,
        min: u8,
        max: u8,
    },

    /// A node name or handle id is empty or contains `/` (they are datastore key segments).
    #[error("invalid {what} {value:?}: must be non-empty and contain no '/'")]
    InvalidName { what: &'static str, value: String },

    /// `auto_assign` was called with neither `want_v4` nor `want_v6`.
    #[error("handle {handle}: the request asks for neither an IPv4 nor an IPv6 address")]
    NothingRequested { handle: String },

    /// `assign_ip` for an address outside every given pool.
    #[error("address {addr} is in none of the given pools ({}); pick an address inside an IPPool", .pools.join(", "))]
    AddressNotInPool { addr: IpAddr, pools: Vec<String> },

    /// `assign_ip` for an address that another handle holds.
    #[error(
        "address {addr} is already allocated to handle {holder}; release it first or pick another"
    )]
    AddressInUse { addr: IpAddr, holder: String },

    /// `assign_ip` for an address in a block affine to another node (strict affinity: a node
    /// never takes addresses from another node's block).
    #[error(
        "address {addr} is in block {block} of node {owner}, not of node {node} (strict affinity); pick an address in a block of node {node} or a free block"
    )]
    ForeignBlock {
        addr: IpAddr,
        block: IpNet,
        owner: String,
        node: String,
    },

    /// Compare-and-swap kept failing because other allocators changed the same records.
    #[error(
        "gave up {op} for {subject} after {attempts} attempts: the IPAM records kept changing under concurrent writers; retry"
    )]
    Contention {
        op: &'static str,
        /// What was being changed ("handle H on node N", "node N").
        subject: String,
        attempts: u32,
    },

    /// The datastore failed.
    #[error("IPAM datastore {op} of {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        /// Boxed: the backends' errors are large.
        #[source]
        source: Box<StoreError>,
    },

    /// A stored IPAM record is not valid JSON of the expected shape.
    #[error("IPAM record {key} is corrupt: {source}; delete it with care or restore it")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// A stored IPAM key does not follow the key layout.
    #[error("IPAM key {key} does not follow the key layout: {reason}")]
    BadKey { key: String, reason: &'static str },
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// Wraps a [`StoreError`] with the operation and key, for `map_err`.
pub(crate) fn store<'k>(
    op: &'static str,
    key: &'k str,
) -> impl FnOnce(StoreError) -> IpamError + 'k {
    move |source| IpamError::Store {
        op,
        key: key.to_string(),
        source: Box::new(source),
    }
}
