//! Releasing addresses (by handle) and blocks (by node).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serval_store::TxnOp;
use tracing::{debug, info, warn};

use crate::allocator::{Ipam, backoff, check_name};
use crate::error::{IpamError, Result, store};
use crate::records::{
    Block, Handle, block_key, decode, encode, handle_key, node_affinity_prefix, node_key,
    parse_affinity_key,
};

/// What [`Ipam::release_node_affinities`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AffinityRelease {
    /// Empty blocks whose affinity (and block record) were deleted, in address order.
    pub released: Vec<IpNet>,
    /// Blocks that still hold addresses and so keep their affinity, in address order.
    pub kept: Vec<KeptBlock>,
}

/// A block that could not be released because addresses in it are still allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptBlock {
    pub block: IpNet,
    pub allocated: u32,
    /// The handles holding those addresses (to release them, or find their pods).
    pub handles: Vec<String>,
}

impl Ipam {
    /// Releases every address `handle` holds and deletes the handle, in one transaction.
    /// Returns the addresses freed; an unknown handle frees nothing and is not an error
    /// (CNI DEL must be idempotent). Blocks that become empty keep their affinity.
    pub async fn release_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        check_name("handle", handle)?;
        self.release_addrs(handle, None).await
    }

    /// Releases the addresses of `handle` in `only` (all of them with `None`). The handle
    /// record is deleted once it holds nothing.
    pub(crate) async fn release_addrs(
        &self,
        handle: &str,
        only: Option<&[IpAddr]>,
    ) -> Result<Vec<IpAddr>> {
        let hkey = handle_key(handle);
        let wanted = |a: IpAddr| only.is_none_or(|o| o.contains(&a));
        for attempt in 0..self.max_attempts {
            backoff(attempt).await;
            let Some(hkv) = self.get(&hkey).await? else {
                return Ok(Vec::new());
            };
            let mut rec: Handle = decode(&hkv)?;
            let blocks: BTreeSet<IpNet> = rec
                .addresses
                .iter()
                .filter(|h| wanted(h.addr))
                .map(|h| h.block)
                .collect();
            let mut ops = Vec::new();
            let mut freed = Vec::new();
            for cidr in blocks {
                let bkey = block_key(&cidr);
                let Some(bkv) = self.get(&bkey).await? else {
                    warn!(handle, block = %cidr, "the handle's block is gone; dropping its addresses from the handle");
                    continue;
                };
                let mut block: Block = decode(&bkv)?;
                let f = block.release(handle, wanted);
                if !f.is_empty() {
                    ops.push(TxnOp::Update {
                        key: bkey,
                        value: encode(&block),
                        expected: bkv.mod_revision,
                    });
                    freed.extend(f);
                }
            }
            rec.addresses.retain(|h| !wanted(h.addr));
            ops.push(if rec.addresses.is_empty() {
                TxnOp::Delete {
                    key: hkey.clone(),
                    expected: Some(hkv.mod_revision),
                }
            } else {
                TxnOp::Update {
                    key: hkey.clone(),
                    value: encode(&rec),
                    expected: hkv.mod_revision,
                }
            });
            if self.try_txn(ops).await? {
                freed.sort();
                info!(handle, ?freed, "released addresses");
                return Ok(freed);
            }
            debug!(handle, attempt, "release lost a race; retrying");
        }
        Err(IpamError::Contention {
            op: "releasing addresses",
            subject: format!("handle {handle}"),
            attempts: self.max_attempts,
        })
    }

    /// Releases the blocks affine to `node` that hold no address (for a deleted Node). Blocks
    /// still holding addresses keep their affinity and are reported in
    /// [`AffinityRelease::kept`]: release their handles first.
    pub async fn release_node_affinities(&self, node: &str) -> Result<AffinityRelease> {
        check_name("node", node)?;
        let prefix = node_affinity_prefix(node);
        let (affs, _) = self
            .store
            .list(&prefix)
            .await
            .map_err(store("list", &prefix))?;
        let mut out = AffinityRelease::default();
        for akv in affs {
            let (_, cidr) = parse_affinity_key(&akv.key)?;
            let bkey = block_key(&cidr);
            let mut done = false;
            for attempt in 0..self.max_attempts {
                backoff(attempt).await;
                let Some(akv) = self.get(&akv.key).await? else {
                    // Someone else released it meanwhile.
                    done = true;
                    break;
                };
                let bkv = self.get(&bkey).await?;
                let block = bkv.as_ref().map(decode::<Block>).transpose()?;
                let mut ops = vec![TxnOp::Delete {
                    key: akv.key.clone(),
                    expected: Some(akv.mod_revision),
                }];
                match (&bkv, &block) {
                    (Some(bkv), Some(b)) if b.affinity.as_deref() == Some(node) => {
                        if !b.is_empty() {
                            out.kept.push(KeptBlock {
                                block: cidr,
                                allocated: b.allocated(),
                                handles: b
                                    .allocations
                                    .values()
                                    .map(|a| a.handle.clone())
                                    .collect::<BTreeSet<_>>()
                                    .into_iter()
                                    .collect(),
                            });
                            done = true;
                            break;
                        }
                        ops.push(TxnOp::Delete {
                            key: bkey.clone(),
                            expected: Some(bkv.mod_revision),
                        });
                    }
                    // No block, or a block owned elsewhere: only the stale affinity goes.
                    _ => {}
                }
                if self.try_txn(ops).await? {
                    info!(node, block = %cidr, "released block affinity");
                    out.released.push(cidr);
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(IpamError::Contention {
                    op: "releasing a block affinity",
                    subject: format!("block {cidr} of node {node}"),
                    attempts: self.max_attempts,
                });
            }
        }
        out.released.sort();
        out.kept.sort_by_key(|k| k.block);
        if out.kept.is_empty() {
            let key = node_key(node);
            self.store
                .delete(&key, None)
                .await
                .map_err(store("delete", &key))?;
        }
        Ok(out)
    }
}
