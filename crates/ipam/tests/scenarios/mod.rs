//! IPAM scenarios, run against every datastore backend: the crate's unit tests run them on an
//! in-memory store, `tests/sqlite.rs` on the real sqlite backend and `tests/etcd.rs` on a real
//! etcd. Each scenario gets a fresh, empty datastore through its [`Opener`]; calling the
//! opener again gives another connection to the same datastore.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, ensure};
use ipnet::IpNet;
use serval_ipam::{
    AFFINITY_PREFIX, Affinity, AllocationAttrs, AssignIpRequest, AssignRequest, Block, IpFamily,
    Ipam, IpamError, PoolSpec, affinity_key, block_key, decode, parse_affinity_key,
};
use serval_store::{Datastore, EventKind};

/// Opens a new connection to the scenario's datastore.
pub type Opener = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Datastore>>> + Send>>
        + Send
        + Sync,
>;

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn pool(name: &str, cidr: &str, block: u8) -> PoolSpec {
    PoolSpec::new(name, net(cidr), block)
}

pub fn attrs(ns: &str, pod: &str, node: &str) -> AllocationAttrs {
    AllocationAttrs {
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        node: node.into(),
        container_id: None,
    }
}

pub fn req(handle: &str, node: &str, v4: &[PoolSpec], v6: &[PoolSpec]) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        attrs: attrs("default", handle, node),
        v4_pools: v4.to_vec(),
        v6_pools: v6.to_vec(),
        want_v4: !v4.is_empty(),
        want_v6: !v6.is_empty(),
    }
}

async fn block_of(ipam: &Ipam, cidr: &str) -> anyhow::Result<Block> {
    ipam.blocks()
        .await?
        .into_iter()
        .find(|b| b.cidr == net(cidr))
        .with_context(|| format!("no block {cidr}"))
}

/// Allocate, look at the records, release, release again.
pub async fn allocate_and_release(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let pools = [pool("default-ipv4", "10.10.0.0/24", 26)];
    let got = ipam.auto_assign(req("h1", "n1", &pools, &[])).await?;
    assert_eq!(got, vec![ip("10.10.0.0")]);
    let got2 = ipam.auto_assign(req("h2", "n1", &pools, &[])).await?;
    assert_eq!(got2, vec![ip("10.10.0.1")], "same block, next address");

    let h = ipam.handle("h1").await?.context("handle h1 recorded")?;
    assert_eq!(h.addrs(), got);
    assert_eq!(h.attrs.pod.as_deref(), Some("h1"));
    assert_eq!(h.addresses[0].block, net("10.10.0.0/26"));
    let b = block_of(&ipam, "10.10.0.0/26").await?;
    assert_eq!(b.affinity.as_deref(), Some("n1"));
    assert_eq!(b.pool, "default-ipv4");
    assert_eq!(b.allocated(), 2);
    let holders: Vec<_> = b
        .allocated_addrs()
        .map(|(a, al)| (a, al.handle.clone()))
        .collect();
    assert_eq!(
        holders,
        vec![
            (ip("10.10.0.0"), "h1".to_string()),
            (ip("10.10.0.1"), "h2".to_string())
        ]
    );

    assert_eq!(ipam.release_by_handle("h1").await?, got);
    assert!(ipam.handle("h1").await?.is_none(), "handle deleted");
    assert_eq!(block_of(&ipam, "10.10.0.0/26").await?.allocated(), 1);
    assert_eq!(
        ipam.release_by_handle("h1").await?,
        Vec::<IpAddr>::new(),
        "DEL twice"
    );
    assert!(ipam.release_by_handle("never-seen").await?.is_empty());
    assert_eq!(ipam.release_by_handle("h2").await?, got2);
    let b = block_of(&ipam, "10.10.0.0/26").await?;
    assert!(b.is_empty());
    assert_eq!(
        b.affinity.as_deref(),
        Some("n1"),
        "an empty block keeps its affinity"
    );
    // Round-robin: the next allocation does not reuse the just-freed addresses.
    let got3 = ipam.auto_assign(req("h3", "n1", &pools, &[])).await?;
    assert_eq!(got3, vec![ip("10.10.0.2")]);
    Ok(())
}

/// ADD twice with one handle gives the same addresses; adding a family later adds only it.
pub async fn idempotent_readd(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let v4 = [pool("p4", "10.11.0.0/24", 26)];
    let v6 = [pool("p6", "fd00:11::/120", 122)];
    let a = ipam.auto_assign(req("c1", "n1", &v4, &v6)).await?;
    let b = ipam.auto_assign(req("c1", "n1", &v4, &v6)).await?;
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(a[0].is_ipv4() && a[1].is_ipv6());
    let rep = ipam.report(&[v4[0].clone(), v6[0].clone()]).await?;
    assert_eq!(rep.pools[0].allocated, 1, "no second v4 address");
    assert_eq!(rep.pools[1].allocated, 1, "no second v6 address");

    let only4 = ipam.auto_assign(req("c2", "n1", &v4, &[])).await?;
    let both = ipam.auto_assign(req("c2", "n1", &v4, &v6)).await?;
    assert_eq!(both[0], only4[0]);
    assert!(both[1].is_ipv6());
    assert_eq!(ipam.handle("c2").await?.unwrap().addrs(), both);

    // Concurrent ADDs of one handle still give one address.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ipam = Ipam::new(open().await?);
        let r = req("c3", "n1", &v4, &[]);
        tasks.push(tokio::spawn(async move { ipam.auto_assign(r).await }));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        seen.extend(t.await??);
    }
    assert_eq!(seen.len(), 1, "one address for one handle: {seen:?}");
    let rep = ipam.report(&v4).await?;
    assert_eq!(rep.pools[0].allocated, 3);
    Ok(())
}

/// Exhaustion names the pool; later pools take over; disabled pools give nothing.
pub async fn exhaustion_names_the_pool(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let tiny = pool("tiny", "10.12.0.0/30", 30);
    for i in 0..4 {
        ipam.auto_assign(req(
            &format!("t{i}"),
            "n1",
            std::slice::from_ref(&tiny),
            &[],
        ))
        .await?;
    }
    let err = ipam
        .auto_assign(req("t4", "n1", std::slice::from_ref(&tiny), &[]))
        .await
        .unwrap_err();
    match &err {
        IpamError::PoolsExhausted {
            family,
            pools,
            node,
        } => {
            assert_eq!(*family, IpFamily::V4);
            assert_eq!(pools, &vec!["tiny".to_string()]);
            assert_eq!(node, "n1");
        }
        other => panic!("expected PoolsExhausted, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("tiny") && msg.contains("n1"), "{msg}");
    assert!(
        ipam.handle("t4").await?.is_none(),
        "failed ADD leaves no handle"
    );

    // A second pool takes over, in order.
    let second = pool("second", "10.12.1.0/30", 30);
    let got = ipam
        .auto_assign(req("t4", "n1", &[tiny.clone(), second.clone()], &[]))
        .await?;
    assert_eq!(got, vec![ip("10.12.1.0")]);

    // Disabled pools give nothing, and say so.
    let mut off = pool("off", "10.12.2.0/24", 26);
    off.disabled = true;
    let err = ipam
        .auto_assign(req("t5", "n1", std::slice::from_ref(&off), &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::NoEnabledPool {
                family: IpFamily::V4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("off"), "{err}");
    let err = ipam
        .auto_assign(req("t5", "n1", &[tiny.clone(), off.clone()], &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::PoolsExhausted { pools, .. } if pools == &vec!["tiny".to_string()]),
        "{err:?}"
    );
    // A pool smaller than a block is refused before anything is written.
    let small = pool("small", "10.12.3.0/28", 26);
    let err = ipam
        .auto_assign(req("t6", "n1", &[small], &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IpamError::BlockLargerThanPool { .. }),
        "{err:?}"
    );
    // An IPv6 pool in the IPv4 list is refused.
    let err = ipam
        .auto_assign(req("t6", "n1", &[pool("v6", "fd00::/120", 122)], &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IpamError::PoolFamilyMismatch { .. }),
        "{err:?}"
    );
    Ok(())
}

/// Dual stack: both or nothing.
pub async fn dual_stack_all_or_nothing(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let v4 = [pool("p4", "10.13.0.0/24", 26)];
    let v6_tiny = [pool("tiny6", "fd00:13::/127", 127)];
    let got = ipam.auto_assign(req("d1", "n1", &v4, &v6_tiny)).await?;
    assert_eq!(got, vec![ip("10.13.0.0"), ip("fd00:13::")]);
    let got = ipam.auto_assign(req("d2", "n1", &[], &v6_tiny)).await?;
    assert_eq!(got, vec![ip("fd00:13::1")]);

    let err = ipam
        .auto_assign(req("d3", "n1", &v4, &v6_tiny))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::PoolsExhausted { family: IpFamily::V6, pools, .. } if pools == &vec!["tiny6".to_string()]),
        "{err:?}"
    );
    assert!(ipam.handle("d3").await?.is_none(), "v4 rolled back");
    let rep = ipam.report(&v4).await?;
    assert_eq!(rep.pools[0].allocated, 1, "only d1's v4 address remains");
    // The rolled-back v4 address is free again (round-robin hands out the next one first).
    let got = ipam.auto_assign(req("d4", "n1", &v4, &[])).await?;
    assert_eq!(got, vec![ip("10.13.0.2")]);
    let got = ipam.auto_assign(req("d5", "n1", &v4, &[])).await?;
    assert_eq!(got, vec![ip("10.13.0.3")]);

    // An ADD retried after a crash between the families keeps its v4 address on failure.
    ipam.auto_assign(req("d6", "n1", &v4, &[])).await?;
    let err = ipam.auto_assign(req("d6", "n1", &v4, &v6_tiny)).await;
    assert!(err.is_err());
    assert_eq!(ipam.handle("d6").await?.unwrap().addrs().len(), 1);

    // Neither family requested.
    let mut r = req("d7", "n1", &v4, &[]);
    r.want_v4 = false;
    assert!(matches!(
        ipam.auto_assign(r).await,
        Err(IpamError::NothingRequested { .. })
    ));
    Ok(())
}

/// Nodes get their own blocks; strict affinity; the agent's view; node removal.
pub async fn block_claim_across_nodes(open: Opener) -> anyhow::Result<()> {
    let a = Ipam::new(open().await?);
    let b = Ipam::new(open().await?);
    let pools = [pool("p", "10.14.0.0/29", 30)]; // two blocks of four
    let ga = a.auto_assign(req("a1", "node-a", &pools, &[])).await?;
    let gb = b.auto_assign(req("b1", "node-b", &pools, &[])).await?;
    assert_eq!(ga, vec![ip("10.14.0.0")]);
    assert_eq!(gb, vec![ip("10.14.0.4")], "node B gets a block of its own");
    let by_node = a.blocks_by_node().await?;
    assert_eq!(
        by_node,
        BTreeMap::from([
            ("node-a".to_string(), vec![net("10.14.0.0/30")]),
            ("node-b".to_string(), vec![net("10.14.0.4/30")]),
        ])
    );
    for i in 2..=4 {
        a.auto_assign(req(&format!("a{i}"), "node-a", &pools, &[]))
            .await?;
    }
    // node-a's block is full; node-b's has three free addresses, but strict affinity.
    let err = a
        .auto_assign(req("a5", "node-a", &pools, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, IpamError::PoolsExhausted { .. }), "{err:?}");

    // assign_ip: into a foreign block, in use, outside the pools, and fine.
    let err = a
        .assign_ip(
            AssignIpRequest {
                handle: "s1".into(),
                addr: ip("10.14.0.6"),
                node: "node-a".into(),
                attrs: attrs("default", "s1", "node-a"),
            },
            &pools,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::ForeignBlock { owner, .. } if owner == "node-b"),
        "{err:?}"
    );
    let static_req = |h: &str, addr: &str| AssignIpRequest {
        handle: h.into(),
        addr: ip(addr),
        node: "node-b".into(),
        attrs: attrs("default", h, "node-b"),
    };
    let err = b
        .assign_ip(static_req("s1", "10.14.0.4"), &pools)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::AddressInUse { holder, .. } if holder == "b1"),
        "{err:?}"
    );
    let err = b
        .assign_ip(static_req("s1", "10.99.0.1"), &pools)
        .await
        .unwrap_err();
    assert!(matches!(err, IpamError::AddressNotInPool { .. }), "{err:?}");
    b.assign_ip(static_req("s1", "10.14.0.7"), &pools).await?;
    b.assign_ip(static_req("s1", "10.14.0.7"), &pools).await?; // idempotent
    assert_eq!(
        b.handle("s1").await?.unwrap().addrs(),
        vec![ip("10.14.0.7")]
    );
    // auto_assign on node-b skips the static address.
    let mut got = Vec::new();
    for i in 2..=3 {
        got.extend(
            b.auto_assign(req(&format!("b{i}"), "node-b", &pools, &[]))
                .await?,
        );
    }
    assert_eq!(got, vec![ip("10.14.0.5"), ip("10.14.0.6")]);
    // assign_ip claims a free block for the node.
    let wide = [pool("p", "10.14.0.0/28", 30)];
    b.assign_ip(static_req("s2", "10.14.0.9"), &wide).await?;
    assert_eq!(
        b.blocks_by_node().await?["node-b"],
        vec![net("10.14.0.4/30"), net("10.14.0.8/30")]
    );

    // Removing node-b: the empty block goes, the used one stays and is reported.
    b.release_by_handle("s2").await?;
    let rel = b.release_node_affinities("node-b").await?;
    assert_eq!(rel.released, vec![net("10.14.0.8/30")]);
    assert_eq!(rel.kept.len(), 1);
    assert_eq!(rel.kept[0].block, net("10.14.0.4/30"));
    assert_eq!(rel.kept[0].allocated, 4);
    assert_eq!(rel.kept[0].handles, vec!["b1", "b2", "b3", "s1"]);
    for h in ["b1", "b2", "b3", "s1"] {
        b.release_by_handle(h).await?;
    }
    let rel = b.release_node_affinities("node-b").await?;
    assert_eq!(rel.released, vec![net("10.14.0.4/30")]);
    assert!(rel.kept.is_empty());
    assert!(!b.blocks_by_node().await?.contains_key("node-b"));
    // The freed block can now go to node-a.
    let got = a.auto_assign(req("a5", "node-a", &pools, &[])).await?;
    assert_eq!(got, vec![ip("10.14.0.4")]);
    Ok(())
}

/// Report numbers.
pub async fn report_numbers(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let v4 = pool("p4", "10.15.0.0/24", 26);
    let v6 = pool("p6", "fd00:15::/64", 122);
    for i in 0..70 {
        ipam.auto_assign(req(&format!("x{i}"), "n1", std::slice::from_ref(&v4), &[]))
            .await?;
    }
    for i in 0..3 {
        ipam.auto_assign(req(
            &format!("y{i}"),
            "n2",
            std::slice::from_ref(&v4),
            std::slice::from_ref(&v6),
        ))
        .await?;
    }
    let rep = ipam.report(&[v4.clone(), v6.clone()]).await?;
    assert_eq!(rep.handles, 73);
    let p4 = &rep.pools[0];
    assert_eq!(
        (p4.name.as_str(), p4.total, p4.allocated, p4.block_size),
        ("p4", 256, 73, 26)
    );
    let rows: Vec<_> = p4
        .blocks
        .iter()
        .map(|b| (b.cidr, b.affinity.clone().unwrap(), b.allocated, b.total))
        .collect();
    assert_eq!(
        rows,
        vec![
            (net("10.15.0.0/26"), "n1".to_string(), 64, 64),
            (net("10.15.0.64/26"), "n1".to_string(), 6, 64),
            (net("10.15.0.128/26"), "n2".to_string(), 3, 64),
        ]
    );
    let p6 = &rep.pools[1];
    assert_eq!((p6.total, p6.allocated), (1u128 << 64, 3));
    assert_eq!(p6.blocks.len(), 1);
    assert_eq!(p6.blocks[0].cidr, net("fd00:15::/122"));
    // Blocks outside the given pools are orphans; the JSON form serializes.
    let rep = ipam.report(std::slice::from_ref(&v4)).await?;
    assert_eq!(rep.orphan_blocks.len(), 1);
    let json = serde_json::to_value(&rep)?;
    assert_eq!(json["pools"][0]["allocated"], 73);
    assert_eq!(json["pools"][0]["blocks"][2]["affinity"], "n2");
    // IPv6 totals pass u64: they serialize as plain JSON numbers through a writer.
    let text = serde_json::to_string(&ipam.report(&[v4, v6]).await?)?;
    assert!(text.contains(r#""total":18446744073709551616"#), "{text}");
    Ok(())
}

/// Leak check.
pub async fn leak_check(open: Opener) -> anyhow::Result<()> {
    let ipam = Ipam::new(open().await?);
    let v4 = [pool("p4", "10.16.0.0/24", 26)];
    let mut by_pod = BTreeMap::new();
    for pod in ["alive", "gone-1", "gone-2"] {
        let got = ipam
            .auto_assign(req(&format!("cid-{pod}"), "n1", &v4, &[]))
            .await?;
        by_pod.insert(pod, got);
    }
    let live = |a: &AllocationAttrs| a.pod.as_deref() == Some("cid-alive");
    let leaks = ipam.leaks(live).await?;
    let names: Vec<_> = leaks.iter().map(|l| l.handle.as_str()).collect();
    assert_eq!(names, vec!["cid-gone-1", "cid-gone-2"]);
    assert_eq!(leaks[0].addresses, by_pod["gone-1"]);
    assert_eq!(ipam.handles().await?.len(), 3, "leaks() changes nothing");
    let released = ipam.release_leaks(live).await?;
    assert_eq!(released, leaks);
    assert!(ipam.leaks(live).await?.is_empty());
    let left: Vec<_> = ipam
        .handles()
        .await?
        .into_iter()
        .map(|h| h.handle)
        .collect();
    assert_eq!(left, vec!["cid-alive"]);
    assert_eq!(ipam.report(&v4).await?.pools[0].allocated, 1);
    Ok(())
}

/// What one concurrent ADD asked for (varied within each node: nodes are `i % nodes`).
fn wants(i: usize) -> (bool, bool) {
    match (i / 3) % 3 {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    }
}

pub const CONCURRENT_V4: &str = "10.30.0.0/16";
pub const CONCURRENT_V6: &str = "fd00:30::/112";

/// One ADD of the concurrency test: handle `c<i>` on node `node-<i % nodes>`.
pub async fn concurrent_add(ipam: &Ipam, i: usize, nodes: usize) -> anyhow::Result<Vec<IpAddr>> {
    let (w4, w6) = wants(i);
    let node = format!("node-{}", i % nodes);
    let r = AssignRequest {
        handle: format!("c{i}"),
        node: node.clone(),
        attrs: attrs("default", &format!("pod-{i}"), &node),
        v4_pools: vec![pool("cc4", CONCURRENT_V4, 26)],
        v6_pools: vec![pool("cc6", CONCURRENT_V6, 122)],
        want_v4: w4,
        want_v6: w6,
    };
    Ok(ipam.auto_assign(r).await?)
}

/// Checks the outcome of `n` concurrent ADDs (handle `c<i>` → its addresses): unique, of the
/// families asked for, recorded, and in a block of the handle's node.
pub async fn check_concurrent_adds(
    ipam: &Ipam,
    got: &BTreeMap<usize, Vec<IpAddr>>,
    n: usize,
    nodes: usize,
) -> anyhow::Result<()> {
    ensure!(got.len() == n, "{} of {n} ADDs returned", got.len());
    let mut seen = BTreeSet::new();
    let blocks = ipam.blocks().await?;
    for (&i, addrs) in got {
        let (w4, w6) = wants(i);
        let fams: Vec<_> = addrs.iter().map(IpFamily::of_addr).collect();
        let expect: Vec<_> = [(w4, IpFamily::V4), (w6, IpFamily::V6)]
            .into_iter()
            .filter(|(w, _)| *w)
            .map(|(_, f)| f)
            .collect();
        ensure!(fams == expect, "c{i} asked for {expect:?}, got {addrs:?}");
        for a in addrs {
            ensure!(
                seen.insert(*a),
                "address {a} handed out twice (again to c{i})"
            );
            let node = format!("node-{}", i % nodes);
            let block = blocks
                .iter()
                .find(|b| b.cidr.contains(a))
                .with_context(|| format!("{a} in no block"))?;
            ensure!(
                block.affinity.as_deref() == Some(node.as_str()),
                "{a} of {node} is in block {} of {:?}",
                block.cidr,
                block.affinity
            );
            let holder = block
                .allocated_addrs()
                .find(|(x, _)| x == a)
                .map(|(_, al)| al.handle.clone());
            ensure!(
                holder == Some(format!("c{i}")),
                "{a}: block says {holder:?}"
            );
        }
        let h = ipam.handle(&format!("c{i}")).await?.context("handle")?;
        ensure!(
            &h.addrs() == addrs,
            "c{i}: handle record {:?} != {addrs:?}",
            h.addrs()
        );
    }
    // No node claimed more blocks than it needed, however many of its allocators found its
    // blocks full at once (64 addresses per block in these pools).
    let mut per_node: BTreeMap<(String, IpFamily), (usize, usize)> = BTreeMap::new();
    for (&i, addrs) in got {
        for a in addrs {
            per_node
                .entry((format!("node-{}", i % nodes), IpFamily::of_addr(a)))
                .or_default()
                .0 += 1;
        }
    }
    for (node, cidrs) in ipam.blocks_by_node().await? {
        for c in cidrs {
            per_node
                .entry((node.clone(), IpFamily::of_net(&c)))
                .or_default()
                .1 += 1;
        }
    }
    for ((node, family), (addrs, blocks)) in &per_node {
        ensure!(
            *blocks == addrs.div_ceil(64),
            "{node} claimed {blocks} {family} blocks for {addrs} addresses"
        );
    }
    let allocated: u32 = blocks.iter().map(Block::allocated).sum();
    ensure!(
        allocated as usize == seen.len(),
        "blocks hold {allocated} allocations, {} were handed out",
        seen.len()
    );
    Ok(())
}

/// The records agree with each other: every address a handle lists is allocated to it in its
/// block, every allocation in a block belongs to a handle that lists it, and every block has
/// exactly the affinity record of its node.
pub async fn check_consistency(ipam: &Ipam) -> anyhow::Result<()> {
    let blocks = ipam.blocks().await?;
    let handles = ipam.handles().await?;
    let by_cidr: BTreeMap<IpNet, &Block> = blocks.iter().map(|b| (b.cidr, b)).collect();
    let mut listed = BTreeSet::new();
    for h in &handles {
        ensure!(!h.addresses.is_empty(), "handle {} holds nothing", h.handle);
        for held in &h.addresses {
            let b = by_cidr
                .get(&held.block)
                .with_context(|| format!("handle {}: block {} missing", h.handle, held.block))?;
            let holder = b
                .allocated_addrs()
                .find(|(a, _)| *a == held.addr)
                .map(|(_, al)| al.handle.as_str());
            ensure!(
                holder == Some(h.handle.as_str()),
                "handle {} lists {} but its block says {holder:?}",
                h.handle,
                held.addr
            );
            ensure!(listed.insert(held.addr), "{} listed twice", held.addr);
        }
    }
    for b in &blocks {
        for (a, al) in b.allocated_addrs() {
            ensure!(
                listed.contains(&a),
                "{a} allocated to {} in {} but no handle lists it",
                al.handle,
                b.cidr
            );
            // Strict affinity: an address goes only to a pod of the block's node.
            ensure!(
                b.affinity.as_deref() == Some(al.attrs.node.as_str()),
                "{a} of node {} is in block {} of {:?}",
                al.attrs.node,
                b.cidr,
                b.affinity
            );
        }
    }
    let by_node = ipam.blocks_by_node().await?;
    let from_affinities: BTreeSet<(String, IpNet)> = by_node
        .into_iter()
        .flat_map(|(n, bs)| bs.into_iter().map(move |b| (n.clone(), b)))
        .collect();
    let from_blocks: BTreeSet<(String, IpNet)> = blocks
        .iter()
        .map(|b| (b.affinity.clone().unwrap_or_default(), b.cidr))
        .collect();
    ensure!(
        from_affinities == from_blocks,
        "affinity records {from_affinities:?} != blocks' affinities {from_blocks:?}"
    );
    Ok(())
}

/// After the releases: every block empty, no handle left.
pub async fn check_all_free(ipam: &Ipam) -> anyhow::Result<()> {
    for b in ipam.blocks().await? {
        ensure!(
            b.is_empty(),
            "block {} still holds {:?}",
            b.cidr,
            b.allocations
        );
    }
    let handles = ipam.handles().await?;
    ensure!(handles.is_empty(), "handles left: {handles:?}");
    Ok(())
}

/// The issue's concurrency test: `n` concurrent ADDs across `nodes` nodes, each task on its
/// own datastore connection; then every DEL in parallel.
pub async fn concurrent_adds_and_dels(open: Opener, n: usize, nodes: usize) -> anyhow::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Ipam::new(open().await?));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ipam) in conns.iter().cloned().enumerate() {
        tasks.spawn(async move { (i, concurrent_add(&ipam, i, nodes).await) });
    }
    let mut got = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, addrs) = r?;
        got.insert(i, addrs.with_context(|| format!("ADD c{i}"))?);
    }
    let check = Ipam::new(open().await?);
    check_concurrent_adds(&check, &got, n, nodes).await?;
    check_consistency(&check).await?;
    let rep = check
        .report(&[
            pool("cc4", CONCURRENT_V4, 26),
            pool("cc6", CONCURRENT_V6, 122),
        ])
        .await?;
    let total: u128 = rep.pools.iter().map(|p| p.allocated).sum();
    ensure!(total as usize == got.values().map(Vec::len).sum::<usize>());

    let mut dels = tokio::task::JoinSet::new();
    for (i, ipam) in conns.iter().cloned().enumerate() {
        let want = got[&i].clone();
        dels.spawn(async move {
            let r = ipam.release_by_handle(&format!("c{i}")).await;
            (
                i,
                r.map(|mut freed| {
                    let mut want = want;
                    want.sort();
                    freed.sort();
                    (freed, want)
                })
                .map_err(anyhow::Error::from),
            )
        });
    }
    while let Some(r) = dels.join_next().await {
        let (i, res) = r?;
        let (freed, want) = res.with_context(|| format!("DEL c{i}"))?;
        ensure!(freed == want, "DEL c{i} freed {freed:?}, held {want:?}");
    }
    check_all_free(&check).await?;
    check_consistency(&check).await?;
    Ok(())
}

/// What the agent does: watch the affinities, learn each node's blocks as they are claimed
/// and released. Needs a datastore with watches (not the unit tests' in-memory one).
pub async fn agent_watch(open: Opener) -> anyhow::Result<()> {
    let store = open().await?;
    let ipam = Ipam::new(open().await?);
    let mut w = store
        .watch(AFFINITY_PREFIX, store.revision().await?)
        .await?;
    let next = async |w: &mut serval_store::Watch| -> anyhow::Result<serval_store::WatchEvent> {
        // A guard against a hang, not a timing assertion.
        let ev = tokio::time::timeout(std::time::Duration::from_secs(30), w.next())
            .await
            .context("no watch event")?
            .context("watch ended")??;
        Ok(ev)
    };
    let pools = [pool("p", "10.17.0.0/24", 26)];
    ipam.auto_assign(req("w1", "n1", &pools, &[])).await?;
    let ev = next(&mut w).await?;
    assert_eq!(ev.kind, EventKind::Put);
    assert_eq!(
        parse_affinity_key(&ev.kv.key)?,
        ("n1".to_string(), net("10.17.0.0/26"))
    );
    let aff: Affinity = decode(&ev.kv)?;
    assert_eq!(
        (aff.node.as_str(), aff.block, aff.pool.as_str()),
        ("n1", net("10.17.0.0/26"), "p")
    );
    ipam.release_by_handle("w1").await?;
    let rel = ipam.release_node_affinities("n1").await?;
    assert_eq!(rel.released, vec![net("10.17.0.0/26")]);
    let ev = next(&mut w).await?;
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(
        parse_affinity_key(&ev.kv.key)?,
        ("n1".to_string(), net("10.17.0.0/26"))
    );
    assert!(ipam.blocks_by_node().await?.is_empty());
    assert!(
        ipam.blocks().await?.is_empty(),
        "the block record went with its affinity"
    );
    Ok(())
}

/// Records made by hand (or left by an older version): a block without affinity is never
/// claimed over; an affinity without its block gets its block back.
pub async fn odd_records(open: Opener) -> anyhow::Result<()> {
    let store = open().await?;
    let ipam = Ipam::new(open().await?);
    let pools = [pool("p", "10.18.0.0/24", 26)];
    let orphan = Block::new(net("10.18.0.0/26"), "p", "elsewhere");
    store
        .create(&block_key(&orphan.cidr), serde_json::to_vec(&orphan)?)
        .await?;
    let got = ipam.auto_assign(req("o1", "n1", &pools, &[])).await?;
    assert_eq!(
        got,
        vec![ip("10.18.0.64")],
        "the block without affinity is skipped"
    );

    let aff = Affinity {
        node: "n2".into(),
        block: net("10.18.0.192/26"),
        pool: "p".into(),
    };
    store
        .create(&affinity_key("n2", &aff.block), serde_json::to_vec(&aff)?)
        .await?;
    let got = ipam.auto_assign(req("o2", "n2", &pools, &[])).await?;
    assert_eq!(
        got,
        vec![ip("10.18.0.192")],
        "the affinity's block is recreated and used"
    );
    let b = block_of(&ipam, "10.18.0.192/26").await?;
    assert_eq!((b.affinity.as_deref(), b.allocated()), (Some("n2"), 1));
    Ok(())
}
