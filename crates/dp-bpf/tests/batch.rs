//! The batched hash-map writers of `Maps` (`BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`)
//! against real maps: entries land as written, deletes skip missing keys, a full map fails
//! with the entries before the failing one written and nothing after it.

use std::net::{IpAddr, Ipv4Addr};

use serval_dp_bpf::abi::{NatBeKey, NatBeVal, NatFeKey, NatFeVal};
use serval_dp_bpf::{Dataplane, LoadOptions, LogLevel, MapSizes};

fn load(frontends: u32) -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf batched map writes") {
        return None;
    }
    Some(
        Dataplane::load(&LoadOptions {
            pins: None,
            sizes: MapSizes {
                nat_frontend: frontends,
                nat_backend: 64,
                nat_affinity: 64,
                route: 64,
                conntrack: 1024,
                policy: 256,
                endpoints: 16,
            },
            log_level: LogLevel::Off,
        })
        .expect("load the embedded programs"),
    )
}

fn fe(i: u32) -> (NatFeKey, NatFeVal) {
    let ip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i));
    (
        NatFeKey::new(ip, 80, 6),
        NatFeVal {
            svc_id: 1000 + i,
            count: 1,
            local_count: 1,
            flags: 0,
            affinity_timeout_s: i,
            pad: 0,
        },
    )
}

#[test]
fn batched_writes_and_deletes_reach_the_map() {
    let Some(mut dp) = load(64) else { return };
    let mut m = dp.maps();
    let entries: Vec<_> = (0..40).map(fe).collect();
    m.set_frontends(&entries).expect("batched update");
    for (k, v) in &entries {
        assert_eq!(m.frontend(k).unwrap(), Some(*v));
    }
    // Overwriting in a batch replaces values.
    let mut changed = entries[..5].to_vec();
    for (_, v) in &mut changed {
        v.count = 7;
    }
    m.set_frontends(&changed).unwrap();
    assert_eq!(m.frontend(&entries[0].0).unwrap().unwrap().count, 7);
    assert_eq!(m.frontend(&entries[5].0).unwrap().unwrap().count, 1);

    let be: Vec<_> = (0..10u32)
        .map(|slot| {
            (
                NatBeKey { svc_id: 9, slot },
                NatBeVal::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 1)), 8080, 0),
            )
        })
        .collect();
    m.set_backends(&be).unwrap();
    assert_eq!(m.backend(&be[9].0).unwrap(), Some(be[9].1));

    // Deletes: missing keys (never written, or twice in the list) are skipped, not errors.
    let mut keys: Vec<NatFeKey> = entries[..20].iter().map(|(k, _)| *k).collect();
    keys.insert(3, fe(500).0);
    keys.push(entries[0].0);
    keys.push(fe(501).0);
    assert_eq!(m.remove_frontends(&keys).unwrap(), 20);
    for (i, (k, v)) in entries.iter().enumerate() {
        let want = (i >= 20).then_some(*v);
        assert_eq!(m.frontend(k).unwrap(), want, "entry {i}");
    }
    let be_keys: Vec<NatBeKey> = be.iter().map(|(k, _)| *k).collect();
    assert_eq!(m.remove_backends(&be_keys).unwrap(), 10);
    assert_eq!(m.remove_backends(&be_keys).unwrap(), 0);
    assert_eq!(m.backend(&be[0].0).unwrap(), None);
    // Empty batches do nothing.
    m.set_frontends(&[]).unwrap();
    assert_eq!(m.remove_frontends(&[]).unwrap(), 0);
}

#[test]
fn a_full_map_fails_the_batch_after_the_entries_that_fit() {
    let Some(mut dp) = load(8) else { return };
    let mut m = dp.maps();
    let entries: Vec<_> = (0..12).map(fe).collect();
    let err = m
        .set_frontends(&entries)
        .expect_err("more entries than the map holds");
    let text = format!("{err}");
    assert!(text.contains("sv_nat_fe"), "{text}");
    // In order: the first eight are written, none after the failing ninth.
    for (i, (k, v)) in entries.iter().enumerate() {
        let want = (i < 8).then_some(*v);
        assert_eq!(m.frontend(k).unwrap(), want, "entry {i}");
    }
}
