//! FelixConfiguration `bpfExternalServiceMode` and `bpfDSROptoutCIDRs` through the eBPF driver
//! into real pinned maps (root, bpffs, a fresh network namespace): the DSR flag of `sv_host`
//! and the prefixes of `sv_dsr_optout`. A settings change is applied the way the agent does
//! it (the old driver dropped without cleanup, a new one opened on the same pins, as for any
//! changed `BpfSettings`): the flag follows the mode and the opt-out map is brought to the new
//! list by diff (stale prefixes removed, new ones added), nothing else reloaded from scratch.

use std::collections::BTreeSet;

use aya::maps::{Array, LpmTrie, Map, MapData};
use serval_agent::dataplane::Dataplane;
use serval_agent::dataplane::bpf::uplink::ExternalSettings;
use serval_agent::dataplane::bpf::{BpfDriver, BpfSettings};
use serval_calc::{Model, desired_state};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{Addr, HostVal, SV_HOST_F_DSR};
use serval_dp_bpf::object::{MAP_DSR_OPTOUT, MAP_HOST};
use serval_sys::testing::{NetNsGuard, require_root};

fn settings(dsr: bool, optout: &[&str]) -> BpfSettings {
    BpfSettings {
        external: ExternalSettings {
            dsr,
            dsr_optout: optout.iter().map(|c| c.parse().unwrap()).collect(),
        },
        ..BpfSettings::default()
    }
}

fn host(pins: &PinScope) -> HostVal {
    let d = MapData::from_pin(pins.map_path(MAP_HOST)).expect("pinned sv_host");
    let a: Array<MapData, HostVal> = Array::try_from(Map::Array(d)).expect("an array");
    a.get(&0, 0).expect("entry 0")
}

/// `sv_dsr_optout` as (LPM prefix length, address).
fn optout(pins: &PinScope) -> BTreeSet<(u32, [u8; 16])> {
    let d = MapData::from_pin(pins.map_path(MAP_DSR_OPTOUT)).expect("pinned sv_dsr_optout");
    let m: LpmTrie<MapData, Addr, u32> = LpmTrie::try_from(Map::LpmTrie(d)).expect("an LPM trie");
    m.keys()
        .map(|k| {
            let k = k.expect("key");
            (k.prefix_len(), k.data().0)
        })
        .collect()
}

fn entry(cidr: &str) -> (u32, [u8; 16]) {
    let n: ipnet::IpNet = cidr.parse().unwrap();
    (
        serval_dp_bpf::abi::lpm_prefix_len(n.addr(), n.prefix_len()),
        Addr::new(n.addr()).0,
    )
}

#[test]
fn external_service_mode_and_optout_cidrs_reach_the_maps_and_follow_changes() {
    if !require_root("agent bpf external service mode test") {
        return;
    }
    let ns = NetNsGuard::new("svxm").expect("test namespace");
    ns.run(|| {
        let scope = format!("xmode{}", std::process::id());
        let state = desired_state(&Model::default(), Some("node1"));
        let mut d = BpfDriver::with_scope(&scope, settings(false, &[])).expect("driver");
        let pins = d.pins();
        // cleanup even when an assertion fails
        struct Clean(PinScope);
        impl Drop for Clean {
            fn drop(&mut self) {
                let _ = serval_dp_bpf::attach::cleanup(&self.0, None);
            }
        }
        let _clean = Clean(pins.clone());

        d.apply(&state).expect("apply (Tunnel)");
        assert_eq!(host(&pins).flags & SV_HOST_F_DSR, 0, "Tunnel: no DSR flag");
        assert!(optout(&pins).is_empty());

        // DSR with two opt-out prefixes (one given with host bits: truncated)
        drop(d);
        let mut d = BpfDriver::with_scope(
            &scope,
            settings(true, &["192.0.2.77/24", "2001:db8:1::/64"]),
        )
        .expect("driver");
        d.apply(&state).expect("apply (DSR)");
        assert_ne!(host(&pins).flags & SV_HOST_F_DSR, 0, "DSR flag set");
        assert_eq!(
            optout(&pins),
            BTreeSet::from([entry("192.0.2.0/24"), entry("2001:db8:1::/64")])
        );

        // one prefix replaced, one kept
        drop(d);
        let mut d = BpfDriver::with_scope(
            &scope,
            settings(true, &["2001:db8:1::/64", "198.51.100.0/25"]),
        )
        .expect("driver");
        d.apply(&state).expect("apply (DSR, other opt-outs)");
        assert_eq!(
            optout(&pins),
            BTreeSet::from([entry("198.51.100.0/25"), entry("2001:db8:1::/64")])
        );

        // back to Tunnel without opt-outs; a resync keeps it so
        drop(d);
        let mut d = BpfDriver::with_scope(&scope, settings(false, &[])).expect("driver");
        d.apply(&state).expect("apply (Tunnel again)");
        d.resync().expect("resync");
        assert_eq!(host(&pins).flags & SV_HOST_F_DSR, 0, "the DSR flag cleared");
        assert!(optout(&pins).is_empty(), "stale opt-out prefixes removed");
        d.cleanup().expect("cleanup");
    })
    .expect("run in the test namespace");
}
