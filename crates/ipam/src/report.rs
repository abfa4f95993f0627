//! Read-only views for `serval ipam show`, the leak check and the agent's routing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use tracing::info;

use crate::allocator::Ipam;
use crate::error::{Result, store};
use crate::pool::{IpFamily, PoolSpec};
use crate::records::{
    AFFINITY_PREFIX, Affinity, AllocationAttrs, BLOCK_PREFIX, Block, HANDLE_PREFIX, Handle, decode,
};

/// Usage of every pool and block, for `serval ipam show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpamReport {
    pub pools: Vec<PoolReport>,
    /// Blocks inside none of the given pools (a pool was deleted or shrunk).
    pub orphan_blocks: Vec<BlockReport>,
    /// Number of handles (allocation owners).
    pub handles: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolReport {
    pub name: String,
    pub cidr: IpNet,
    pub family: IpFamily,
    pub block_size: u8,
    pub disabled: bool,
    /// Addresses in the pool (saturating at `u128::MAX`). IPv6 totals pass `u64::MAX`: they
    /// serialize as JSON numbers with `serde_json::to_string`/`to_writer`, but
    /// `serde_json::to_value` cannot hold them.
    pub total: u128,
    /// Addresses allocated in the pool's blocks.
    pub allocated: u128,
    /// Claimed blocks, in address order.
    pub blocks: Vec<BlockReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockReport {
    pub cidr: IpNet,
    /// The pool recorded in the block.
    pub pool: String,
    /// The node the block is affine to.
    pub affinity: Option<String>,
    pub allocated: u32,
    pub total: u32,
}

/// A handle whose owner is gone, found by [`Ipam::leaks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub handle: String,
    pub attrs: AllocationAttrs,
    pub addresses: Vec<IpAddr>,
}

impl Ipam {
    /// Every block of `pools` with its affinity and usage. Reads all blocks in one list (one
    /// store revision).
    pub async fn report(&self, pools: &[PoolSpec]) -> Result<IpamReport> {
        let blocks = self.blocks().await?;
        let (handles, _) = self
            .store
            .list(HANDLE_PREFIX)
            .await
            .map_err(store("list", HANDLE_PREFIX))?;
        let mut out = IpamReport {
            pools: pools
                .iter()
                .map(|p| PoolReport {
                    name: p.name.clone(),
                    cidr: p.cidr,
                    family: p.family(),
                    block_size: p.block_size,
                    disabled: p.disabled,
                    total: p.total_addresses(),
                    allocated: 0,
                    blocks: Vec::new(),
                })
                .collect(),
            orphan_blocks: Vec::new(),
            handles: handles.len(),
        };
        for b in blocks {
            let row = BlockReport {
                cidr: b.cidr,
                pool: b.pool.clone(),
                affinity: b.affinity.clone(),
                allocated: b.allocated(),
                total: b.size(),
            };
            // Prefer the pool named in the block; fall back to the one containing it.
            let slot = pools
                .iter()
                .position(|p| p.name == b.pool && p.contains_block(&b.cidr))
                .or_else(|| pools.iter().position(|p| p.contains_block(&b.cidr)));
            match slot {
                Some(i) => {
                    out.pools[i].allocated += u128::from(row.allocated);
                    out.pools[i].blocks.push(row);
                }
                None => out.orphan_blocks.push(row),
            }
        }
        for p in &mut out.pools {
            p.blocks.sort_by_key(|b| b.cidr);
        }
        out.orphan_blocks.sort_by_key(|b| b.cidr);
        Ok(out)
    }

    /// Every block record, in key order.
    pub async fn blocks(&self) -> Result<Vec<Block>> {
        let (kvs, _) = self
            .store
            .list(BLOCK_PREFIX)
            .await
            .map_err(store("list", BLOCK_PREFIX))?;
        kvs.iter().map(decode).collect()
    }

    /// Every handle record, in key order.
    pub async fn handles(&self) -> Result<Vec<Handle>> {
        let (kvs, _) = self
            .store
            .list(HANDLE_PREFIX)
            .await
            .map_err(store("list", HANDLE_PREFIX))?;
        kvs.iter().map(decode).collect()
    }

    /// Node → CIDRs of the blocks affine to it (what the agent routes to each node).
    pub async fn blocks_by_node(&self) -> Result<BTreeMap<String, Vec<IpNet>>> {
        let (kvs, _) = self
            .store
            .list(AFFINITY_PREFIX)
            .await
            .map_err(store("list", AFFINITY_PREFIX))?;
        let mut out: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for kv in &kvs {
            let a: Affinity = decode(kv)?;
            out.entry(a.node).or_default().push(a.block);
        }
        for blocks in out.values_mut() {
            blocks.sort();
        }
        Ok(out)
    }

    /// Handles whose owner `is_live` says is gone (the CLI answers from the pods and workload
    /// endpoints in the datastore). Nothing is changed.
    pub async fn leaks(&self, is_live: impl Fn(&AllocationAttrs) -> bool) -> Result<Vec<Leak>> {
        Ok(self
            .handles()
            .await?
            .into_iter()
            .filter(|h| !is_live(&h.attrs))
            .map(|h| Leak {
                addresses: h.addrs(),
                handle: h.handle,
                attrs: h.attrs,
            })
            .collect())
    }

    /// Finds the leaks as [`Ipam::leaks`] does and releases each; returns what was released
    /// (a leak released by someone else in between is left out).
    pub async fn release_leaks(
        &self,
        is_live: impl Fn(&AllocationAttrs) -> bool,
    ) -> Result<Vec<Leak>> {
        let mut out = Vec::new();
        for mut leak in self.leaks(is_live).await? {
            let freed = self.release_by_handle(&leak.handle).await?;
            if !freed.is_empty() {
                info!(handle = %leak.handle, ?freed, "released leaked addresses");
                leak.addresses = freed;
                out.push(leak);
            }
        }
        Ok(out)
    }
}
