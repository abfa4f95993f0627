//! [`Ipam`]: allocation of addresses from per-node blocks with compare-and-swap.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serval_store::{Datastore, KeyValue, StoreError, TxnOp};
use tracing::{debug, info, warn};

use crate::error::{IpamError, Result, store};
use crate::pool::{IpFamily, PoolSpec, addr_to_u128, net_end};
use crate::records::{
    AFFINITY_PREFIX, AddrClaim, Affinity, AllocationAttrs, Block, Handle, HeldAddress, NodeClaims,
    affinity_key, block_key, decode, encode, handle_key, node_affinity_prefix, node_key,
    parse_affinity_key,
};

/// How often a compare-and-swap loop re-reads and retries before giving up with
/// [`IpamError::Contention`]. A CAS on a block fails only when another writer changed that
/// block in between, so with N concurrent allocators on one node an allocation loses at most
/// about N times.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 128;

/// Longest pause between two attempts (the pause is random, growing with the attempt).
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// An automatic assignment: one address of each wanted family for `handle` on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignRequest {
    /// The allocation owner (the CNI plugin uses the container ID).
    pub handle: String,
    pub node: String,
    pub attrs: AllocationAttrs,
    /// IPv4 pools usable by the node, in order of preference.
    pub v4_pools: Vec<PoolSpec>,
    /// IPv6 pools usable by the node, in order of preference.
    pub v6_pools: Vec<PoolSpec>,
    pub want_v4: bool,
    pub want_v6: bool,
}

/// An assignment of one specific address (a static IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignIpRequest {
    pub handle: String,
    pub addr: IpAddr,
    pub node: String,
    pub attrs: AllocationAttrs,
}

/// The IP address manager over a [`Datastore`]. Cheap to clone; any number of `Ipam`s in any
/// number of processes and hosts may work on one datastore at once.
#[derive(Debug, Clone)]
pub struct Ipam {
    pub(crate) store: Arc<dyn Datastore>,
    pub(crate) max_attempts: u32,
}

/// The outcome of one block claim.
enum Claim {
    /// This node now owns a new block.
    Claimed,
    /// Another writer changed the blocks first; look again.
    Lost,
    /// No pool has a free block.
    Exhausted,
}

impl Ipam {
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Ipam {
            store,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Sets how many times a compare-and-swap loop retries (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Assigns one address of each wanted family to `req.handle` from blocks affine to
    /// `req.node`, claiming new blocks as needed.
    ///
    /// All or nothing: when the IPv6 assignment fails after the IPv4 one succeeded, the IPv4
    /// address is released again. Idempotent per handle: when the handle already holds an
    /// address of a family, that address is returned and nothing new is allocated (also when
    /// the retry names another node: handles are container IDs, unique per container).
    /// Addresses come back IPv4 first.
    pub async fn auto_assign(&self, req: AssignRequest) -> Result<Vec<IpAddr>> {
        check_name("handle", &req.handle)?;
        check_name("node", &req.node)?;
        if !req.want_v4 && !req.want_v6 {
            return Err(IpamError::NothingRequested { handle: req.handle });
        }
        let mut attrs = req.attrs.clone();
        if attrs.node.is_empty() {
            attrs.node = req.node.clone();
        }
        let mut wanted = Vec::new();
        if req.want_v4 {
            wanted.push((IpFamily::V4, &req.v4_pools));
        }
        if req.want_v6 {
            wanted.push((IpFamily::V6, &req.v6_pools));
        }
        for (family, pools) in &wanted {
            check_pools(*family, pools)?;
        }
        let mut addrs = Vec::new();
        let mut fresh = Vec::new();
        for (family, pools) in wanted {
            match self
                .assign_family(&req.handle, &req.node, &attrs, family, pools)
                .await
            {
                Ok((addr, is_new)) => {
                    addrs.push(addr);
                    if is_new {
                        fresh.push(addr);
                    }
                }
                Err(err) => {
                    if !fresh.is_empty() {
                        match self.release_addrs(&req.handle, Some(&fresh)).await {
                            Ok(freed) => {
                                info!(handle = %req.handle, ?freed, "rolled back partial assignment")
                            }
                            Err(rollback) => warn!(
                                handle = %req.handle, addrs = ?fresh, error = %rollback,
                                "could not roll back a partial assignment; the leak check will find it"
                            ),
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(addrs)
    }

    /// The handle record, if the handle holds anything.
    pub async fn handle(&self, handle: &str) -> Result<Option<Handle>> {
        let key = handle_key(handle);
        self.get(&key).await?.map(|kv| decode(&kv)).transpose()
    }

    /// Assigns exactly `req.addr`. The address must lie in one of `pools` (disabled ones too:
    /// this is how static addresses are placed); its block is claimed for `req.node` when
    /// unclaimed, and must be affine to `req.node` when claimed (strict affinity). Assigning
    /// an address the handle already holds succeeds without change.
    pub async fn assign_ip(&self, req: AssignIpRequest, pools: &[PoolSpec]) -> Result<()> {
        check_name("handle", &req.handle)?;
        check_name("node", &req.node)?;
        let Some((pool, cidr)) = crate::pool::block_for(req.addr, pools) else {
            return Err(IpamError::AddressNotInPool {
                addr: req.addr,
                pools: pools.iter().map(|p| p.name.clone()).collect(),
            });
        };
        pool.validate()?;
        let mut attrs = req.attrs.clone();
        if attrs.node.is_empty() {
            attrs.node = req.node.clone();
        }
        let hkey = handle_key(&req.handle);
        let bkey = block_key(&cidr);
        for attempt in 0..self.max_attempts {
            backoff(attempt).await;
            let handle_kv = self.get(&hkey).await?;
            let mut ops = Vec::new();
            match self.get(&bkey).await? {
                None => {
                    let mut block = Block::new(cidr, &pool.name, &req.node);
                    block.allocate_addr(req.addr, &req.handle, &attrs);
                    let aff = Affinity {
                        node: req.node.clone(),
                        block: cidr,
                        pool: pool.name.clone(),
                    };
                    ops.push(TxnOp::Create {
                        key: bkey.clone(),
                        value: encode(&block),
                    });
                    ops.push(TxnOp::Create {
                        key: affinity_key(&req.node, &cidr),
                        value: encode(&aff),
                    });
                }
                Some(bkv) => {
                    let mut block: Block = decode(&bkv)?;
                    if let Some(owner) = block.affinity.as_deref()
                        && owner != req.node
                    {
                        return Err(IpamError::ForeignBlock {
                            addr: req.addr,
                            block: cidr,
                            owner: owner.to_string(),
                            node: req.node,
                        });
                    }
                    match block.allocate_addr(req.addr, &req.handle, &attrs) {
                        AddrClaim::Allocated => ops.push(TxnOp::Update {
                            key: bkey.clone(),
                            value: encode(&block),
                            expected: bkv.mod_revision,
                        }),
                        AddrClaim::AlreadyHeld => {
                            let held = handle_kv
                                .as_ref()
                                .map(decode::<Handle>)
                                .transpose()?
                                .is_some_and(|h| h.addrs().contains(&req.addr));
                            if held {
                                return Ok(());
                            }
                            // The block says ours but the handle record lacks it: repair
                            // the handle below.
                        }
                        AddrClaim::HeldBy(holder) => {
                            return Err(IpamError::AddressInUse {
                                addr: req.addr,
                                holder,
                            });
                        }
                        // `block_for` returned the block holding the address; kept total.
                        AddrClaim::OutsideBlock => {
                            return Err(IpamError::AddressNotInPool {
                                addr: req.addr,
                                pools: vec![pool.name.clone()],
                            });
                        }
                    }
                }
            }
            ops.push(handle_op(
                &req.handle,
                &attrs,
                handle_kv.as_ref(),
                req.addr,
                cidr,
            )?);
            if self.try_txn(ops).await? {
                info!(handle = %req.handle, node = %req.node, addr = %req.addr, block = %cidr, "assigned address");
                return Ok(());
            }
            debug!(handle = %req.handle, attempt, "assign_ip lost a race; retrying");
        }
        Err(IpamError::Contention {
            op: "assigning an address",
            subject: format!("handle {} on node {}", req.handle, req.node),
            attempts: self.max_attempts,
        })
    }

    /// One address of `family` for `handle`: the one it already holds, or a new one.
    /// Returns whether the address is new.
    async fn assign_family(
        &self,
        handle: &str,
        node: &str,
        attrs: &AllocationAttrs,
        family: IpFamily,
        pools: &[PoolSpec],
    ) -> Result<(IpAddr, bool)> {
        let enabled: Vec<&PoolSpec> = pools.iter().filter(|p| !p.disabled).collect();
        if enabled.is_empty() {
            return Err(IpamError::NoEnabledPool {
                family,
                node: node.to_string(),
                given: pools.iter().map(|p| p.name.clone()).collect(),
            });
        }
        let hkey = handle_key(handle);
        let aff_prefix = node_affinity_prefix(node);
        let nkey = node_key(node);
        let mut attempt = 0;
        let mut failures = 0;
        while attempt < self.max_attempts {
            backoff(failures).await;
            attempt += 1;
            // Read before the node's blocks: a claim is valid only if no other claim of the
            // node happened since (see `NodeClaims`).
            let node_kv = self.get(&nkey).await?;
            let handle_kv = self.get(&hkey).await?;
            if let Some(kv) = &handle_kv {
                let rec: Handle = decode(kv)?;
                if let Some(held) = rec
                    .addresses
                    .iter()
                    .find(|h| IpFamily::of_addr(&h.addr) == family)
                {
                    return Ok((held.addr, false));
                }
            }

            // 1. The node's own blocks, pool order first.
            let (affs, _) = self
                .store
                .list(&aff_prefix)
                .await
                .map_err(store("list", &aff_prefix))?;
            let mut mine: Vec<(usize, IpNet)> = affs
                .iter()
                .filter_map(|kv| parse_affinity_key(&kv.key).ok())
                .filter_map(|(_, b)| {
                    enabled
                        .iter()
                        .position(|p| p.contains_block(&b))
                        .map(|i| (i, b))
                })
                .collect();
            mine.sort();
            let mut lost = false;
            for (pool_index, cidr) in mine {
                let bkey = block_key(&cidr);
                let Some(bkv) = self.get(&bkey).await? else {
                    // An affinity without its block (a hand-edited store): recreate the block.
                    warn!(node, block = %cidr, "affinity without block record; recreating the block");
                    let block = Block::new(cidr, &enabled[pool_index].name, node);
                    self.try_txn(vec![TxnOp::Create {
                        key: bkey,
                        value: encode(&block),
                    }])
                    .await?;
                    lost = true;
                    break;
                };
                let mut block: Block = decode(&bkv)?;
                if block.affinity.as_deref() != Some(node) {
                    warn!(node, block = %cidr, owner = ?block.affinity, "stale affinity record: the block belongs elsewhere; skipping it");
                    continue;
                }
                let Some(addr) = block.allocate(handle, attrs) else {
                    continue;
                };
                let ops = vec![
                    TxnOp::Update {
                        key: bkey,
                        value: encode(&block),
                        expected: bkv.mod_revision,
                    },
                    handle_op(handle, attrs, handle_kv.as_ref(), addr, cidr)?,
                ];
                if self.try_txn(ops).await? {
                    info!(handle, node, %addr, block = %cidr, "assigned address");
                    return Ok((addr, true));
                }
                debug!(handle, node, block = %cidr, attempt, "allocation lost a race; retrying");
                lost = true;
                break;
            }
            if lost {
                failures += 1;
                continue;
            }

            // 2. No room in the node's blocks: claim a new one.
            match self
                .claim_block(node, family, &enabled, node_kv.as_ref())
                .await?
            {
                Claim::Claimed => failures = 0,
                Claim::Lost => failures += 1,
                Claim::Exhausted => {
                    return Err(IpamError::PoolsExhausted {
                        family,
                        pools: enabled.iter().map(|p| p.name.clone()).collect(),
                        node: node.to_string(),
                    });
                }
            }
        }
        Err(IpamError::Contention {
            op: "assigning an address",
            subject: format!("handle {handle} on node {node}"),
            attempts: self.max_attempts,
        })
    }

    /// Claims the first free block of the first pool that has one, for `node`.
    /// The claim fails (`Lost`) when the node's claim counter moved past `node_kv`.
    async fn claim_block(
        &self,
        node: &str,
        family: IpFamily,
        pools: &[&PoolSpec],
        node_kv: Option<&KeyValue>,
    ) -> Result<Claim> {
        // Every block has an affinity record, created and deleted with it, and affinity
        // records are small: list those rather than the blocks with all their allocations.
        let (kvs, _) = self
            .store
            .list(AFFINITY_PREFIX)
            .await
            .map_err(store("list", AFFINITY_PREFIX))?;
        // Existing blocks of the family as start → last address (they do not overlap).
        let mut taken: BTreeMap<u128, u128> = kvs
            .iter()
            .filter_map(|kv| parse_affinity_key(&kv.key).ok())
            .map(|(_, b)| b)
            .filter(|b| IpFamily::of_net(b) == family)
            .map(|b| (addr_to_u128(b.network()), net_end(&b)))
            .collect();
        for pool in pools {
            while let Some(cidr) = first_free_block(pool, &taken) {
                let block = Block::new(cidr, &pool.name, node);
                let aff = Affinity {
                    node: node.to_string(),
                    block: cidr,
                    pool: pool.name.clone(),
                };
                let ops = vec![
                    TxnOp::Create {
                        key: block_key(&cidr),
                        value: encode(&block),
                    },
                    TxnOp::Create {
                        key: affinity_key(node, &cidr),
                        value: encode(&aff),
                    },
                    claims_op(node, node_kv)?,
                ];
                match self.txn_failure(ops).await? {
                    None => {
                        info!(node, block = %cidr, pool = %pool.name, "claimed block");
                        return Ok(Claim::Claimed);
                    }
                    // The block (or an affinity to it) exists: another node claimed it since
                    // the list, or it is a record without affinity. Move on to the next one.
                    Some(Some(0 | 1)) => {
                        debug!(node, block = %cidr, "block already claimed; trying the next");
                        taken.insert(addr_to_u128(cidr.network()), net_end(&cidr));
                    }
                    // Another allocator of this node claimed a block: use that one.
                    _ => {
                        debug!(node, block = %cidr, "the node claimed a block meanwhile");
                        return Ok(Claim::Lost);
                    }
                }
            }
        }
        Ok(Claim::Exhausted)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.store.get(key).await.map_err(store("get", key))
    }

    /// Runs a transaction; `Ok(None)` when it went through, `Ok(Some(index))` when it failed
    /// because another writer got there first (see [`Ipam::try_txn`]), with the index of the
    /// failing operation where the store names it.
    async fn txn_failure(&self, ops: Vec<TxnOp>) -> Result<Option<Option<usize>>> {
        let first = ops
            .first()
            .map(|op| op.key().to_string())
            .unwrap_or_default();
        match self.store.txn(ops).await {
            Ok(_) => Ok(None),
            Err(e) if is_contention(&e) => Ok(Some(match e {
                StoreError::TxnFailed { index, .. } => Some(index),
                _ => None,
            })),
            Err(source) => Err(IpamError::Store {
                op: "transaction",
                key: first,
                source: Box::new(source),
            }),
        }
    }

    /// Runs a transaction; `Ok(false)` when it failed because another writer got there first
    /// (a compare-and-swap conflict, a create of an existing key, a delete of a gone one).
    pub(crate) async fn try_txn(&self, ops: Vec<TxnOp>) -> Result<bool> {
        Ok(self.txn_failure(ops).await?.is_none())
    }
}

/// The first block of `pool` overlapping no block in `taken` (start → last address).
fn first_free_block(pool: &PoolSpec, taken: &BTreeMap<u128, u128>) -> Option<IpNet> {
    let pool_start = addr_to_u128(pool.network().network());
    let step = pool.addresses_per_block();
    let mut index = 0u128;
    loop {
        let cand = pool.block_at(index)?;
        let (s, e) = (addr_to_u128(cand.network()), net_end(&cand));
        match taken.range(..=e).next_back() {
            // Blocks do not overlap each other, so the one starting last before our end is
            // the only one that can overlap us.
            Some((_, &te)) if te >= s => index = (te - pool_start) / step + 1,
            _ => return Some(cand),
        }
    }
}

/// The write that bumps the node's claim counter from what `existing` says.
fn claims_op(node: &str, existing: Option<&KeyValue>) -> Result<TxnOp> {
    let key = node_key(node);
    Ok(match existing {
        Some(kv) => {
            let mut rec: NodeClaims = decode(kv)?;
            rec.claims += 1;
            TxnOp::Update {
                key,
                value: encode(&rec),
                expected: kv.mod_revision,
            }
        }
        None => TxnOp::Create {
            key,
            value: encode(&NodeClaims {
                node: node.to_string(),
                claims: 1,
            }),
        },
    })
}

/// The handle write that records `addr` (in `block`) for `handle`.
fn handle_op(
    handle: &str,
    attrs: &AllocationAttrs,
    existing: Option<&KeyValue>,
    addr: IpAddr,
    block: IpNet,
) -> Result<TxnOp> {
    let key = handle_key(handle);
    let held = HeldAddress { addr, block };
    Ok(match existing {
        Some(kv) => {
            let mut rec: Handle = decode(kv)?;
            if !rec.addresses.contains(&held) {
                rec.addresses.push(held);
            }
            TxnOp::Update {
                key,
                value: encode(&rec),
                expected: kv.mod_revision,
            }
        }
        None => TxnOp::Create {
            key,
            value: encode(&Handle {
                handle: handle.to_string(),
                attrs: attrs.clone(),
                addresses: vec![held],
            }),
        },
    })
}

/// Whether a store error means "another writer changed it first" (retry after re-reading).
pub(crate) fn is_contention(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict { .. }
        | StoreError::AlreadyExists { .. }
        | StoreError::NotFound { .. } => true,
        StoreError::TxnFailed { source, .. } => is_contention(source),
        _ => false,
    }
}

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains('/') {
        return Err(IpamError::InvalidName {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn check_pools(family: IpFamily, pools: &[PoolSpec]) -> Result<()> {
    for p in pools {
        if p.family() != family {
            return Err(IpamError::PoolFamilyMismatch {
                pool: p.name.clone(),
                cidr: p.cidr,
                expected: family,
            });
        }
        p.validate()?;
    }
    Ok(())
}

/// Sleeps a random time that grows with the number of failures (none before the first try).
pub(crate) async fn backoff(failures: u32) {
    if failures == 0 {
        return;
    }
    let cap = (200u64 << failures.min(16)).min(MAX_BACKOFF.as_micros() as u64);
    tokio::time::sleep(Duration::from_micros(random_below(cap + 1))).await;
}

/// A random number below `n` (jitter only; not for anything secret).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn taken(blocks: &[&str]) -> BTreeMap<u128, u128> {
        blocks
            .iter()
            .map(|b| {
                let n = net(b);
                (addr_to_u128(n.network()), net_end(&n))
            })
            .collect()
    }

    #[test]
    fn first_free_block_skips_taken_and_overlapping_blocks() {
        let p = PoolSpec::new("p", net("10.0.0.0/24"), 26);
        assert_eq!(first_free_block(&p, &taken(&[])), Some(net("10.0.0.0/26")));
        assert_eq!(
            first_free_block(&p, &taken(&["10.0.0.0/26", "10.0.0.128/26"])),
            Some(net("10.0.0.64/26"))
        );
        // A larger block from an earlier block size covers two of ours.
        assert_eq!(
            first_free_block(&p, &taken(&["10.0.0.0/25"])),
            Some(net("10.0.0.128/26"))
        );
        // A smaller block inside our second block.
        assert_eq!(
            first_free_block(&p, &taken(&["10.0.0.0/26", "10.0.0.96/28"])),
            Some(net("10.0.0.128/26"))
        );
        // Blocks of other ranges do not matter; a full pool has none.
        assert_eq!(
            first_free_block(
                &p,
                &taken(&[
                    "10.0.0.0/26",
                    "10.0.0.64/26",
                    "10.0.0.128/26",
                    "10.0.0.192/26",
                    "10.0.1.0/26"
                ])
            ),
            None
        );
        let p6 = PoolSpec::new("p6", net("fd00::/64"), 122);
        assert_eq!(
            first_free_block(&p6, &taken(&["fd00::/122", "fd00::40/122"])),
            Some(net("fd00::80/122"))
        );
    }

    #[test]
    fn contention_errors_are_recognised() {
        let conflict = StoreError::Conflict {
            key: "k".into(),
            expected: 1,
            actual: 2,
        };
        assert!(is_contention(&conflict));
        assert!(is_contention(&StoreError::TxnFailed {
            index: 1,
            source: Box::new(StoreError::AlreadyExists { key: "k".into() }),
        }));
        assert!(!is_contention(&StoreError::WatchClosed {
            reason: "x".into()
        }));
    }

    #[test]
    fn names_with_slashes_are_rejected() {
        assert!(check_name("node", "a/b").is_err());
        assert!(check_name("node", "").is_err());
        check_name("node", "node-1.example").unwrap();
    }
}
