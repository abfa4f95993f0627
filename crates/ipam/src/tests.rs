//! The shared IPAM scenarios (`tests/scenarios`) on the in-memory test store. The same
//! scenarios run on the real sqlite and etcd backends in the integration tests.

use std::sync::Arc;

use serval_store::Datastore;

use crate::memstore::MemStore;

#[expect(
    dead_code,
    reason = "agent_watch needs watches, which the MemStore lacks"
)]
#[path = "../tests/scenarios/mod.rs"]
mod scenarios;

use scenarios::Opener;

/// A fresh in-memory store; every "connection" shares it.
fn mem() -> Opener {
    let store: Arc<dyn Datastore> = Arc::new(MemStore::default());
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { Ok(store) })
    })
}

#[tokio::test]
async fn allocate_and_release() -> anyhow::Result<()> {
    scenarios::allocate_and_release(mem()).await
}

#[tokio::test]
async fn idempotent_readd() -> anyhow::Result<()> {
    scenarios::idempotent_readd(mem()).await
}

#[tokio::test]
async fn exhaustion_names_the_pool() -> anyhow::Result<()> {
    scenarios::exhaustion_names_the_pool(mem()).await
}

#[tokio::test]
async fn dual_stack_all_or_nothing() -> anyhow::Result<()> {
    scenarios::dual_stack_all_or_nothing(mem()).await
}

#[tokio::test]
async fn block_claim_across_nodes() -> anyhow::Result<()> {
    scenarios::block_claim_across_nodes(mem()).await
}

#[tokio::test]
async fn report_numbers() -> anyhow::Result<()> {
    scenarios::report_numbers(mem()).await
}

#[tokio::test]
async fn leak_check() -> anyhow::Result<()> {
    scenarios::leak_check(mem()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_and_dels() -> anyhow::Result<()> {
    scenarios::concurrent_adds_and_dels(mem(), 200, 3).await
}

#[tokio::test]
async fn odd_records() -> anyhow::Result<()> {
    scenarios::odd_records(mem()).await
}

mod model {
    //! Random sequences of assignments and releases on small pools, checking after every step
    //! that the records agree, that no address is given twice, and that a pool is reported
    //! exhausted only when the node truly has no room.

    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::{mem, scenarios};
    use crate::{
        AllocationAttrs, AssignIpRequest, AssignRequest, IpFamily, Ipam, IpamError, PoolSpec,
    };

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            handle: u8,
            node: u8,
            v4: bool,
            v6: bool,
        },
        Del {
            handle: u8,
        },
        Static {
            handle: u8,
            node: u8,
            offset: u8,
        },
        RemoveNode {
            node: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..12, 0u8..3, any::<bool>(), any::<bool>())
                .prop_map(|(handle, node, v4, v6)| Op::Add { handle, node, v4, v6 }),
            3 => (0u8..12).prop_map(|handle| Op::Del { handle }),
            1 => (0u8..12, 0u8..3, 0u8..16).prop_map(|(handle, node, offset)| Op::Static { handle, node, offset }),
            1 => (0u8..3).prop_map(|node| Op::RemoveNode { node }),
        ]
    }

    fn pools() -> (PoolSpec, PoolSpec) {
        // Four blocks of four addresses per family: exhaustion comes quickly.
        (
            PoolSpec::new("m4", "10.40.0.0/28".parse().unwrap(), 30),
            PoolSpec::new("m6", "fd00:40::/124".parse().unwrap(), 126),
        )
    }

    /// Whether `node` has no free address of `pool` and `pool` no free block.
    async fn truly_full(ipam: &Ipam, pool: &PoolSpec, node: &str) -> bool {
        let blocks: Vec<_> = ipam
            .blocks()
            .await
            .unwrap()
            .into_iter()
            .filter(|b| pool.contains_block(&b.cidr))
            .collect();
        let own_full = blocks
            .iter()
            .filter(|b| b.affinity.as_deref() == Some(node))
            .all(|b| b.allocated() == b.size());
        own_full && blocks.len() as u128 == pool.block_count()
    }

    async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let ipam = Ipam::new(mem()().await.unwrap());
        let (p4, p6) = pools();
        for op in ops {
            match op {
                Op::Add {
                    handle,
                    node,
                    v4,
                    v6,
                } => {
                    let (handle, node) = (format!("h{handle}"), format!("n{node}"));
                    let before = ipam.handle(&handle).await.unwrap();
                    let r = ipam
                        .auto_assign(AssignRequest {
                            handle: handle.clone(),
                            node: node.clone(),
                            attrs: AllocationAttrs::default(),
                            v4_pools: vec![p4.clone()],
                            v6_pools: vec![p6.clone()],
                            want_v4: v4,
                            want_v6: v6,
                        })
                        .await;
                    let after = ipam.handle(&handle).await.unwrap();
                    match r {
                        Ok(addrs) => {
                            let fams: Vec<_> = addrs.iter().map(IpFamily::of_addr).collect();
                            let want: Vec<_> = [(v4, IpFamily::V4), (v6, IpFamily::V6)]
                                .into_iter()
                                .filter_map(|(w, f)| w.then_some(f))
                                .collect();
                            prop_assert_eq!(fams, want);
                            let held = after.unwrap().addrs();
                            for a in &addrs {
                                prop_assert!(held.contains(a), "{} not recorded", a);
                            }
                            // Idempotent: what the handle held before is still what it has.
                            if let Some(b) = before {
                                for a in b.addrs() {
                                    prop_assert!(held.contains(&a));
                                }
                            }
                        }
                        Err(IpamError::NothingRequested { .. }) => prop_assert!(!v4 && !v6),
                        Err(IpamError::PoolsExhausted {
                            family,
                            pools,
                            node: n,
                        }) => {
                            let pool = if family == IpFamily::V4 { &p4 } else { &p6 };
                            prop_assert_eq!(&pools, &vec![pool.name.clone()]);
                            prop_assert!(
                                truly_full(&ipam, pool, &n).await,
                                "{} not full for {}",
                                pool.name,
                                n
                            );
                            // All or nothing: the handle holds what it held before.
                            prop_assert_eq!(
                                before.map(|h| h.addrs()).unwrap_or_default(),
                                after.map(|h| h.addrs()).unwrap_or_default()
                            );
                        }
                        Err(e) => prop_assert!(false, "unexpected error {}", e),
                    }
                }
                Op::Del { handle } => {
                    let handle = format!("h{handle}");
                    let before = ipam.handle(&handle).await.unwrap();
                    let mut freed = ipam.release_by_handle(&handle).await.unwrap();
                    let mut held = before.map(|h| h.addrs()).unwrap_or_default();
                    held.sort();
                    freed.sort();
                    prop_assert_eq!(freed, held);
                    prop_assert!(ipam.handle(&handle).await.unwrap().is_none());
                }
                Op::Static {
                    handle,
                    node,
                    offset,
                } => {
                    let handle = format!("h{handle}");
                    let addr = IpAddr::V4(std::net::Ipv4Addr::new(10, 40, 0, offset));
                    let r = ipam
                        .assign_ip(
                            AssignIpRequest {
                                handle: handle.clone(),
                                addr,
                                node: format!("n{node}"),
                                attrs: AllocationAttrs::default(),
                            },
                            std::slice::from_ref(&p4),
                        )
                        .await;
                    match r {
                        Ok(()) => prop_assert!(
                            ipam.handle(&handle)
                                .await
                                .unwrap()
                                .unwrap()
                                .addrs()
                                .contains(&addr)
                        ),
                        Err(IpamError::AddressInUse { .. } | IpamError::ForeignBlock { .. }) => {}
                        Err(e) => prop_assert!(false, "unexpected error {}", e),
                    }
                }
                Op::RemoveNode { node } => {
                    let node = format!("n{node}");
                    let rel = ipam.release_node_affinities(&node).await.unwrap();
                    for k in &rel.kept {
                        prop_assert!(k.allocated > 0);
                    }
                    let left = ipam
                        .blocks_by_node()
                        .await
                        .unwrap()
                        .remove(&node)
                        .unwrap_or_default();
                    let kept: Vec<_> = rel.kept.iter().map(|k| k.block).collect();
                    prop_assert_eq!(left, kept);
                }
            }
            if let Err(e) = scenarios::check_consistency(&ipam).await {
                prop_assert!(false, "inconsistent records: {:#}", e);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_sequences_keep_the_records_consistent(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run(ops))?;
        }
    }
}
