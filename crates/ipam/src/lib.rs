//! IP address management for pods: Calico's block design, simplified, over the
//! [`serval_store::Datastore`] trait. Pure logic plus datastore I/O; no kernel.
//!
//! # Design
//!
//! **Pools and blocks.** The caller passes the IP pools that apply to a node as
//! [`PoolSpec`]s (name, CIDR, block size, disabled), already filtered by the pools' node
//! selectors, in order of preference. Each pool is carved into blocks of `block_size`
//! (`/26` = 64 addresses for IPv4, `/122` = 64 for IPv6 by default; at most 4096 addresses per
//! block). A block is *affine* to one node, and all its addresses go to pods of that node, so
//! the agent can route one prefix per block to each node.
//!
//! **Records**, all JSON, under [`IPAM_PREFIX`] (`/serval/ipam/`):
//!
//! | key | record |
//! |---|---|
//! | `blocks/<addr>-<len>` (e.g. `blocks/10.0.0.64-26`) | [`Block`]: cidr, pool name, affinity node, per-address allocation (handle and attributes; an absent offset is free), round-robin cursor, sequence |
//! | `affinities/<node>/<addr>-<len>` | [`Affinity`]: node → block; the agent watches [`AFFINITY_PREFIX`] |
//! | `nodes/<node>` | [`NodeClaims`]: the node's block-claim counter (serializes the node's claims) |
//! | `handles/<handle>` | [`Handle`]: what one owner (a container) holds: addresses with their blocks, and its attributes (namespace, pod, node, container id) |
//!
//! **Allocation** ([`Ipam::auto_assign`]), per address family:
//! 1. If the handle already holds an address of the family, that address is the answer
//!    (CNI ADD retries are idempotent).
//! 2. Otherwise try the node's own blocks (pools in the given order): pick a free address,
//!    then in **one transaction** update the block (compare-and-swap on its `mod_revision`)
//!    and create or update (again CAS) the handle record.
//! 3. When every own block is full, *claim* the first free block of the first enabled pool
//!    that has one, by creating the block record and its affinity in one transaction. A
//!    create fails when the key exists, so of two nodes racing for one block exactly one wins;
//!    the loser looks again. The same transaction bumps the node's claim counter by
//!    compare-and-swap against the revision read before the node's blocks were found full, so
//!    when many allocators of one node find its blocks full at once, one claims a block and
//!    the others allocate from it (no node claims more blocks than it needs).
//! 4. When no enabled pool has a free block: [`IpamError::PoolsExhausted`], naming the pools.
//!
//! Every conflict (another writer changed the block or the handle, or created the block
//! first) sends the allocator back to step 1 after a random pause that grows with each
//! failure; after [`DEFAULT_MAX_ATTEMPTS`] attempts it gives up with
//! [`IpamError::Contention`]. Because every write is conditional on the revision that was
//! read, concurrent allocators in different processes and on different hosts never hand out
//! one address twice. A dual-stack request assigns IPv4 then IPv6 and, if IPv6 fails,
//! releases the IPv4 address it just took (all or nothing).
//!
//! **Strict affinity.** A node never borrows a free address from another node's block (as
//! Calico with `StrictAffinity=true`): when its blocks are full and no block is free, the
//! pool is exhausted *for that node*, even if other nodes' blocks have room. This keeps
//! routing per block. [`Ipam::assign_ip`] refuses addresses in other nodes' blocks too.
//!
//! **Release.** [`Ipam::release_by_handle`] frees the handle's addresses in their blocks and
//! deletes the handle, in one transaction. A block that becomes empty keeps its affinity (as
//! Calico's), so the node's routes stay put; [`Ipam::release_node_affinities`] (for a deleted
//! Node) releases the node's empty blocks and reports those still in use.
//!
//! **Limits.** A claim looks for free blocks by listing all affinity records (small; every
//! block has one, written and deleted with it), so a claim costs one list of those; a block
//! record without an affinity (made by hand) is found when its create fails, and skipped. Changing a pool's block size while blocks exist is handled (new blocks
//! skip any overlapping old one), but two nodes claiming overlapping blocks of different sizes
//! at the same moment are not prevented (their keys differ).

//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serval_ipam::{AllocationAttrs, AssignRequest, Ipam, PoolSpec};
//!
//! let ipam = Ipam::new(serval_store::open("sqlite:///var/lib/serval/store.db").await?);
//! let v4 = PoolSpec::new("default-ipv4", "10.244.0.0/16".parse()?, 26);
//! let addrs = ipam
//!     .auto_assign(AssignRequest {
//!         handle: "0123abcd".into(), // the container ID
//!         node: "node-1".into(),
//!         attrs: AllocationAttrs {
//!             namespace: Some("default".into()),
//!             pod: Some("web-0".into()),
//!             node: "node-1".into(),
//!             container_id: Some("0123abcd".into()),
//!         },
//!         v4_pools: vec![v4.clone()],
//!         v6_pools: vec![],
//!         want_v4: true,
//!         want_v6: false,
//!     })
//!     .await?;
//! println!("{addrs:?}"); // [10.244.0.0]
//! let report = ipam.report(&[v4]).await?; // for `serval ipam show`
//! println!("{}", serde_json::to_string_pretty(&report)?);
//! ipam.release_by_handle("0123abcd").await?; // CNI DEL
//! # Ok(())
//! # }
//! ```

mod allocator;
mod error;
mod pool;
mod records;
mod release;
mod report;

#[cfg(test)]
mod memstore;
#[cfg(test)]
mod tests;

pub use allocator::{AssignIpRequest, AssignRequest, DEFAULT_MAX_ATTEMPTS, Ipam};
pub use error::{IpamError, Result};
pub use pool::{
    DEFAULT_V4_BLOCK_SIZE, DEFAULT_V6_BLOCK_SIZE, IpFamily, MAX_BLOCK_HOST_BITS, PoolSpec, addr_at,
    block_for, block_len, offset_in_block,
};
pub use records::{
    AFFINITY_PREFIX, Affinity, Allocation, AllocationAttrs, BLOCK_PREFIX, Block, HANDLE_PREFIX,
    Handle, HeldAddress, IPAM_PREFIX, NODE_PREFIX, NodeClaims, affinity_key, block_key,
    block_key_segment, decode, handle_key, node_key, parse_affinity_key, parse_block_key,
};
pub use release::{AffinityRelease, KeptBlock};
pub use report::{BlockReport, IpamReport, Leak, PoolReport};

/// Lets the shared scenarios under `tests/` name this crate as `serval_ipam` in unit tests.
#[cfg(test)]
extern crate self as serval_ipam;
