//! Conntrack expiry: the entries' timeouts (Calico's defaults) and the sweep the agent runs
//! periodically. The programs only stamp `last_seen_ns` (CLOCK_MONOTONIC, like
//! `bpf_ktime_get_ns`) and state bits; deciding when a flow is over happens here.
//!
//! A NATed flow has two entries (the pre-NAT `NAT_FWD` one and the wire one); both see every
//! packet of the flow and expire by the same rules. If only the wire entry is gone, the next
//! forward packet recreates it; if only the `NAT_FWD` entry is gone, the next forward packet
//! is load-balanced afresh and the wire entry ages out.
//!
//! A source-NATed flow (NAT outgoing, masqueraded service traffic, hairpin) holds a port of
//! `bpfPSNATPorts` in its wire entry; its original entry (`SV_CT_F_SNAT_FWD`) names that
//! wire tuple. When the original entry expires, its wire entry goes with it, so the port is
//! free again at once and no binding outlives its flow.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use crate::{
    abi::{
        CtKey, CtVal, SV_CT_F_ESTABLISHED, SV_CT_F_FIN_A, SV_CT_F_FIN_B, SV_CT_F_OPENER_B,
        SV_CT_F_RST, SV_CT_F_SNAT_FWD, SV_CT_TYPE_NAT_FWD,
    },
    error::MapsError,
    maps::Maps,
};

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// Idle timeouts per flow state (FelixConfiguration `bpfConntrackTimeouts`; Calico's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before the responder's SYN was seen.
    pub tcp_syn_sent: Duration,
    pub tcp_established: Duration,
    /// TCP after FIN both ways (time-wait).
    pub tcp_fins_seen: Duration,
    pub tcp_reset_seen: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    /// Any other protocol.
    pub generic: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(20),
            tcp_established: Duration::from_secs(3600),
            tcp_fins_seen: Duration::from_secs(30),
            tcp_reset_seen: Duration::from_secs(40),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(5),
            generic: Duration::from_secs(600),
        }
    }
}

impl CtTimeouts {
    /// How long the entry may stay idle in its current state.
    pub fn timeout(&self, key: &CtKey, val: &CtVal) -> Duration {
        match key.proto {
            PROTO_TCP if val.flags & SV_CT_F_RST != 0 => self.tcp_reset_seen,
            PROTO_TCP if val.flags & SV_CT_F_FIN_A != 0 && val.flags & SV_CT_F_FIN_B != 0 => {
                self.tcp_fins_seen
            }
            PROTO_TCP if val.flags & SV_CT_F_ESTABLISHED != 0 => self.tcp_established,
            PROTO_TCP => self.tcp_syn_sent,
            PROTO_UDP => self.udp,
            PROTO_ICMP | PROTO_ICMPV6 => self.icmp,
            _ => self.generic,
        }
    }

    /// Whether the entry has been idle longer than its timeout at `now_ns` (CLOCK_MONOTONIC).
    pub fn expired(&self, key: &CtKey, val: &CtVal, now_ns: u64) -> bool {
        let idle = now_ns.saturating_sub(val.last_seen_ns);
        u128::from(idle) > self.timeout(key, val).as_nanos()
    }
}

/// The wire entry (after source NAT) of a flow whose original entry is `(key, val)`, if the
/// flow is source-NATed (`SV_CT_F_SNAT_FWD`): the SNAT source (`snat_*`) and the flow's
/// destination after NAT (the backend of a `NAT_FWD` entry, else the side that did not open).
pub fn snat_wire_key(key: &CtKey, val: &CtVal) -> Option<CtKey> {
    if val.flags & SV_CT_F_SNAT_FWD == 0 {
        return None;
    }
    let (dst, dport) = if val.kind == SV_CT_TYPE_NAT_FWD {
        (val.nat_addr, val.nat_port)
    } else if val.flags & SV_CT_F_OPENER_B != 0 {
        (key.addr_a, key.port_a)
    } else {
        (key.addr_b, key.port_b)
    };
    let sport = u16::from_be(val.snat_port);
    // ICMP echo: both "ports" are the (translated) identifier.
    let dport = if matches!(key.proto, PROTO_ICMP | PROTO_ICMPV6) {
        sport
    } else {
        u16::from_be(dport)
    };
    Some(CtKey::of(val.snat_addr.ip(), sport, dst.ip(), dport, key.proto).0)
}

/// CLOCK_MONOTONIC now, in the programs' time base.
pub fn monotonic_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub examined: usize,
    pub removed: usize,
}

impl Maps<'_> {
    /// Deletes every conntrack entry expired at `now_ns` (see [`monotonic_now_ns`]).
    pub fn expire_conntrack(
        &mut self,
        timeouts: &CtTimeouts,
        now_ns: u64,
    ) -> Result<SweepReport, MapsError> {
        let entries = self.conntrack_entries()?;
        let mut report = SweepReport {
            examined: entries.len(),
            removed: 0,
        };
        for (key, val) in entries {
            if !timeouts.expired(&key, &val, now_ns) {
                continue;
            }
            if self.remove_conntrack(&key)? {
                report.removed += 1;
            }
            if let Some(wire) = snat_wire_key(&key, &val)
                && self.remove_conntrack(&wire)?
            {
                report.removed += 1;
            }
        }
        tracing::debug!(
            examined = report.examined,
            removed = report.removed,
            "conntrack sweep"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: u8, flags: u32, last_seen_s: u64) -> (CtKey, CtVal) {
        let key = CtKey {
            proto,
            ..CtKey::default()
        };
        let val = CtVal {
            flags,
            last_seen_ns: last_seen_s * 1_000_000_000,
            ..CtVal::default()
        };
        (key, val)
    }

    #[test]
    fn timeouts_follow_the_flow_state() {
        let t = CtTimeouts::default();
        let s = Duration::from_secs;
        let cases = [
            (PROTO_TCP, 0, s(20)),
            (PROTO_TCP, SV_CT_F_ESTABLISHED, s(3600)),
            (PROTO_TCP, SV_CT_F_ESTABLISHED | SV_CT_F_FIN_A, s(3600)),
            (
                PROTO_TCP,
                SV_CT_F_ESTABLISHED | SV_CT_F_FIN_A | SV_CT_F_FIN_B,
                s(30),
            ),
            (PROTO_TCP, SV_CT_F_ESTABLISHED | SV_CT_F_RST, s(40)),
            (PROTO_UDP, SV_CT_F_ESTABLISHED, s(60)),
            (PROTO_ICMP, 0, s(5)),
            (PROTO_ICMPV6, 0, s(5)),
            (132, 0, s(600)),
        ];
        for (proto, flags, want) in cases {
            let (k, v) = entry(proto, flags, 0);
            assert_eq!(t.timeout(&k, &v), want, "proto {proto} flags {flags:#x}");
        }
        let (k, v) = entry(PROTO_UDP, 0, 100);
        assert!(!t.expired(&k, &v, 160 * 1_000_000_000));
        assert!(t.expired(&k, &v, 160 * 1_000_000_000 + 1));
        // a clock behind the entry (just written) never expires it
        assert!(!t.expired(&k, &v, 0));
    }

    #[test]
    fn the_wire_entry_of_a_source_nated_flow_is_found_from_its_original() {
        use crate::abi::{Addr, SV_CT_TYPE_NORMAL};
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let node = ip("172.31.1.12");
        // NAT outgoing: pod 10.244.0.5:33000 -> outside 172.31.1.100:9000 became node:20005
        let (key, pod_is_a) = CtKey::of(ip("10.244.0.5"), 33000, ip("172.31.1.100"), 9000, 6);
        let val = CtVal {
            kind: SV_CT_TYPE_NORMAL,
            flags: SV_CT_F_SNAT_FWD | if pod_is_a { 0 } else { SV_CT_F_OPENER_B },
            snat_addr: Addr::new(node),
            snat_port: 20005u16.to_be(),
            ..CtVal::default()
        };
        let want = CtKey::of(node, 20005, ip("172.31.1.100"), 9000, 6).0;
        assert_eq!(snat_wire_key(&key, &val), Some(want));
        // a masqueraded service flow: outside -> node:30000, backend 10.244.1.5:80
        let (key, _) = CtKey::of(ip("172.31.1.100"), 40000, node, 30000, 6);
        let val = CtVal {
            kind: SV_CT_TYPE_NAT_FWD,
            flags: SV_CT_F_SNAT_FWD,
            nat_addr: Addr::new(ip("10.244.1.5")),
            nat_port: 80u16.to_be(),
            snat_addr: Addr::new(node),
            snat_port: 20006u16.to_be(),
            ..CtVal::default()
        };
        let want = CtKey::of(node, 20006, ip("10.244.1.5"), 80, 6).0;
        assert_eq!(snat_wire_key(&key, &val), Some(want));
        // ICMP echo: the identifier on both sides
        let (key, _) = CtKey::of(ip("10.244.0.5"), 0x4242, ip("172.31.1.100"), 0x4242, 1);
        let val = CtVal {
            flags: SV_CT_F_SNAT_FWD,
            snat_addr: Addr::new(node),
            snat_port: 20007u16.to_be(),
            ..CtVal::default()
        };
        let want = CtKey::of(node, 20007, ip("172.31.1.100"), 20007, 1).0;
        assert_eq!(snat_wire_key(&key, &val), Some(want));
        // not source-NATed: none
        assert_eq!(snat_wire_key(&key, &CtVal::default()), None);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
    }
}
