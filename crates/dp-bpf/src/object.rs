//! The BPF objects build.rs compiled from `bpf/*.c`, embedded in the binary, and the checks
//! that an object is one this build can load: not empty, an eBPF ELF, with the programs and
//! maps we expect and map key/value sizes equal to the Rust mirror in [`crate::abi`] (so an
//! object from an older header is rejected as stale before anything touches the kernel).

use std::mem::size_of;

use crate::{
    abi::{
        CtKey, CtVal, EpVal, NatAffKey, NatAffVal, NatBeKey, NatBeVal, NatFeKey, NatFeVal, PolKey,
        PolVal, RouteKey, RouteVal,
    },
    error::ObjectError,
};

/// `bpf/serval_tc.c` built without `SERVAL_DEBUG`: no per-packet logging.
static SERVAL_TC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_tc.o"));
/// `bpf/serval_tc.c` built with `-DSERVAL_DEBUG`: every decision goes to bpf_printk.
static SERVAL_TC_DEBUG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_tc.debug.o"));

/// Which build of the programs to load (FelixConfiguration `bpfLogLevel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogLevel {
    /// `Off`/`Info`: the default build, nothing logged per packet.
    #[default]
    Off,
    /// `Debug`: the `-DSERVAL_DEBUG` build; decisions are logged with bpf_printk
    /// (`bpftool prog tracelog`).
    Debug,
}

/// The embedded tc object for `level`, as `(name, bytes)`.
pub fn tc_object(level: LogLevel) -> (&'static str, &'static [u8]) {
    match level {
        LogLevel::Off => ("serval_tc.o", SERVAL_TC),
        LogLevel::Debug => ("serval_tc.debug.o", SERVAL_TC_DEBUG),
    }
}

/// `bpf/serval_xdp.c` built without `SERVAL_DEBUG`.
static SERVAL_XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_xdp.o"));
/// `bpf/serval_xdp.c` built with `-DSERVAL_DEBUG`.
static SERVAL_XDP_DEBUG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_xdp.debug.o"));

/// The embedded XDP object (host interfaces, [`crate::xdp`]) for `level`, as `(name, bytes)`.
pub fn xdp_object(level: LogLevel) -> (&'static str, &'static [u8]) {
    match level {
        LogLevel::Off => ("serval_xdp.o", SERVAL_XDP),
        LogLevel::Debug => ("serval_xdp.debug.o", SERVAL_XDP_DEBUG),
    }
}

/// The XDP program of host interfaces (blocklist, failsafe ports).
pub const PROG_XDP: &str = "serval_xdp";
/// The XDP object's own maps (pinned in the node scope like the tc maps).
pub const MAP_XDP_BLOCKLIST: &str = "sv_xdp_bl";
pub const MAP_XDP_FAILSAFE: &str = "sv_xdp_fs";
pub const MAP_XDP_STATS: &str = "sv_xdp_stats";

/// `bpf/serval_ctlb.c` (connect-time load balancing, cgroup programs) built without and with
/// `SERVAL_DEBUG`; loaded by [`crate::cgroup`].
static SERVAL_CTLB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_ctlb.o"));
static SERVAL_CTLB_DEBUG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_ctlb.debug.o"));

/// The embedded connect-time load balancing object for `level`, as `(name, bytes)`.
pub fn ctlb_object(level: LogLevel) -> (&'static str, &'static [u8]) {
    match level {
        LogLevel::Off => ("serval_ctlb.o", SERVAL_CTLB),
        LogLevel::Debug => ("serval_ctlb.debug.o", SERVAL_CTLB_DEBUG),
    }
}

/// `bpf/serval_hep.c` (host endpoint policy on host interfaces) built without and with
/// `SERVAL_DEBUG`; loaded with [`crate::Dataplane::load_hep`].
static SERVAL_HEP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_hep.o"));
static SERVAL_HEP_DEBUG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serval_hep.debug.o"));

/// The embedded host endpoint object for `level`, as `(name, bytes)`.
pub fn hep_object(level: LogLevel) -> (&'static str, &'static [u8]) {
    match level {
        LogLevel::Off => ("serval_hep.o", SERVAL_HEP),
        LogLevel::Debug => ("serval_hep.debug.o", SERVAL_HEP_DEBUG),
    }
}

/// Host endpoint ingress policy (tc ingress of a host interface: traffic to the host).
pub const PROG_HEP_INGRESS: &str = "serval_hep_ingress";
/// Host endpoint egress policy (tc egress of a host interface: traffic from the host).
pub const PROG_HEP_EGRESS: &str = "serval_hep_egress";
pub const HEP_PROGRAMS: [&str; 2] = [PROG_HEP_INGRESS, PROG_HEP_EGRESS];
/// The host endpoint object's own maps (pinned in the node scope like the tc maps).
pub const MAP_HEP_IFACES: &str = "sv_hep_ifaces";
pub const MAP_HEP_FAILSAFE: &str = "sv_hep_fs";
pub const MAP_HEP_CT: &str = "sv_hep_ct";
pub const HEP_MAPS: [MapSpec; 3] = [
    spec::<u32, crate::abi::HepIfaceVal>(MAP_HEP_IFACES),
    spec::<crate::abi::HepFsKey, u32>(MAP_HEP_FAILSAFE),
    spec::<CtKey, crate::abi::HepCtVal>(MAP_HEP_CT),
];
/// The host endpoint object: its programs; the shared maps and its own.
pub const HEP_SPEC: ObjectSpec = ObjectSpec {
    programs: &HEP_PROGRAMS,
    maps: &[&MAPS, &HEP_MAPS],
};

/// Program for packets the workload sends (tc ingress of the host-side veth).
pub const PROG_FROM_EP: &str = "serval_from_ep";
/// Program for packets delivered to the workload (tc egress of the host-side veth).
pub const PROG_TO_EP: &str = "serval_to_ep";
/// Program for packets arriving at the node's uplink or VXLAN device (tc ingress): service
/// frontends reached from outside, replies to source-NATed flows.
pub const PROG_UPLINK_IN: &str = "serval_uplink_in";
/// Program for packets leaving through the node's uplink or VXLAN device (tc egress): NAT
/// outgoing.
pub const PROG_UPLINK_OUT: &str = "serval_uplink_out";
/// Every program of the tc object.
pub const PROGRAMS: [&str; 4] = [PROG_FROM_EP, PROG_TO_EP, PROG_UPLINK_IN, PROG_UPLINK_OUT];

pub const MAP_CT: &str = "sv_ct";
pub const MAP_NAT_FE: &str = "sv_nat_fe";
pub const MAP_NAT_BE: &str = "sv_nat_be";
pub const MAP_NAT_AFF: &str = "sv_nat_aff";
pub const MAP_ROUTES: &str = "sv_routes";
pub const MAP_POLICY: &str = "sv_policy";
/// Ports of fragmented datagrams, recorded from first fragments
/// ([`crate::abi::FragKey`] → [`crate::abi::FragVal`]).
pub const MAP_FRAGS: &str = "sv_frags";
/// Source-port tables of the compiled policy ([`crate::abi::PolSportKey`] → [`PolVal`]).
pub const MAP_POL_SPORT: &str = "sv_pol_sport";
pub const MAP_EPS: &str = "sv_eps";
pub const MAP_DROPS: &str = "sv_drops";
/// Maglev lookup tables ([`crate::abi::MaglevKey`] → [`crate::abi::MaglevVal`]).
pub const MAP_MAGLEV: &str = "sv_maglev";
/// This node's SNAT addresses and `bpfPSNATPorts` (one entry, [`crate::abi::HostVal`]).
pub const MAP_HOST: &str = "sv_host";
/// `bpfDSROptoutCIDRs` (LPM, [`RouteKey`] → `u32`), see [`crate::tunnel`].
pub const MAP_DSR_OPTOUT: &str = "sv_dsr_optout";
/// NodePort tunnel counters (per-CPU `u64` per `SV_TUN_*`), see [`crate::tunnel`].
pub const MAP_TUN_STATS: &str = "sv_tun_stats";

/// A map the programs use, with the key and value sizes of its Rust mirror.
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
}

const fn spec<K, V>(name: &'static str) -> MapSpec {
    MapSpec {
        name,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
    }
}

/// Every map of the tc object.
pub const MAPS: [MapSpec; 14] = [
    spec::<CtKey, CtVal>(MAP_CT),
    spec::<NatFeKey, NatFeVal>(MAP_NAT_FE),
    spec::<NatBeKey, NatBeVal>(MAP_NAT_BE),
    spec::<NatAffKey, NatAffVal>(MAP_NAT_AFF),
    spec::<RouteKey, RouteVal>(MAP_ROUTES),
    spec::<PolKey, PolVal>(MAP_POLICY),
    spec::<crate::abi::PolSportKey, PolVal>(MAP_POL_SPORT),
    spec::<crate::abi::FragKey, crate::abi::FragVal>(MAP_FRAGS),
    spec::<u32, EpVal>(MAP_EPS),
    spec::<u32, u64>(MAP_DROPS),
    spec::<crate::abi::MaglevKey, crate::abi::MaglevVal>(MAP_MAGLEV),
    spec::<u32, crate::abi::HostVal>(MAP_HOST),
    spec::<RouteKey, u32>(MAP_DSR_OPTOUT),
    spec::<u32, u64>(MAP_TUN_STATS),
];

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_BPF: u16 = 247;

/// Checks that `data` is a usable tc object for this build (see the module docs). Pure: no
/// syscalls.
pub fn validate(name: &str, data: &[u8]) -> Result<aya_obj::Object, ObjectError> {
    validate_spec(name, data, &TC_SPEC)
}

/// What an object loaded as a [`crate::Dataplane`] must hold: its programs, and the maps
/// (with their Rust mirror sizes) the loader pins in the node scope.
#[derive(Clone, Copy, Debug)]
pub struct ObjectSpec {
    pub programs: &'static [&'static str],
    /// Groups of maps (the shared tc maps, the object's own).
    pub maps: &'static [&'static [MapSpec]],
}

impl ObjectSpec {
    /// Every map of the spec.
    pub fn all_maps(&self) -> impl Iterator<Item = MapSpec> + '_ {
        self.maps.iter().flat_map(|m| m.iter().copied())
    }
}

/// The workload object `serval_tc`.
pub const TC_SPEC: ObjectSpec = ObjectSpec {
    programs: &PROGRAMS,
    maps: &[&MAPS],
};

/// Checks that `data` is a usable object of `spec` for this build (see the module docs).
/// Pure: no syscalls.
pub fn validate_spec(
    name: &str,
    data: &[u8],
    object: &ObjectSpec,
) -> Result<aya_obj::Object, ObjectError> {
    if data.is_empty() {
        return Err(ObjectError::Empty {
            name: name.to_owned(),
        });
    }
    let not_bpf = |reason| ObjectError::NotBpfElf {
        name: name.to_owned(),
        reason,
    };
    if data.len() < 20 || &data[..4] != ELF_MAGIC {
        return Err(not_bpf("no ELF header"));
    }
    // e_machine at offset 18; eBPF objects are little-endian here (EI_DATA = 1).
    if data[5] != 1 || u16::from_le_bytes([data[18], data[19]]) != EM_BPF {
        return Err(not_bpf("machine is not EM_BPF (little-endian)"));
    }
    let obj = aya_obj::Object::parse(data).map_err(|source| ObjectError::Parse {
        name: name.to_owned(),
        source,
    })?;
    for &program in object.programs {
        if !obj.programs.contains_key(program) {
            return Err(ObjectError::MissingProgram {
                name: name.to_owned(),
                program,
            });
        }
    }
    for spec in object.all_maps() {
        let Some(map) = obj.maps.get(spec.name) else {
            return Err(ObjectError::MissingMap {
                name: name.to_owned(),
                map: spec.name,
            });
        };
        for (what, found, expected) in [
            ("key size", map.key_size(), spec.key_size),
            ("value size", map.value_size(), spec.value_size),
        ] {
            if found != expected {
                return Err(ObjectError::AbiMismatch {
                    name: name.to_owned(),
                    map: spec.name,
                    what,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_objects_are_valid() {
        for level in [LogLevel::Off, LogLevel::Debug] {
            let (name, data) = tc_object(level);
            validate(name, data).unwrap_or_else(|e| panic!("{name}: {e}: {e:?}"));
        }
    }

    #[test]
    fn debug_build_differs_and_only_it_prints() {
        let (_, release) = tc_object(LogLevel::Off);
        let (_, debug) = tc_object(LogLevel::Debug);
        assert_ne!(release, debug);
        let has = |data: &[u8], needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        assert!(has(debug, b"serval: drop reason"));
        assert!(!has(release, b"serval: drop reason"));
    }

    #[test]
    fn empty_and_foreign_objects_are_rejected() {
        assert!(matches!(
            validate("x.o", &[]),
            Err(ObjectError::Empty { .. })
        ));
        assert!(matches!(
            validate("x.o", b"#!/bin/sh\necho not an object\n"),
            Err(ObjectError::NotBpfElf { .. })
        ));
        // A host ELF (this test binary's own first bytes are an x86-64/arm64 ELF header).
        let exe = std::fs::read("/proc/self/exe").expect("read own executable");
        assert!(matches!(
            validate("host.o", &exe[..64]),
            Err(ObjectError::NotBpfElf { .. })
        ));
    }
}
