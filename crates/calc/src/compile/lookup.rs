//! What the BPF program does with the maps, emulated: the identity of the remote address
//! by longest prefix in `sv_routes` (WORLD on a miss), then `sv_policy` at (ep, identity,
//! dir, proto, port), then at (ep, ANY, …); a miss on both is a deny; a
//! [`PolicyVerdict::BySourcePort`] verdict continues in `sv_pol_sport` at (table, source
//! port), a miss there is a deny too. Tests hold the
//! encoding against the reference evaluator through this; the dp-bpf tests can reuse it to
//! predict what a loaded program must answer.

use std::net::IpAddr;

use ipnet::IpNet;

use super::trie::{Lpm, addr_bytes, route_key};
use super::{
    CompiledPolicy, IDENTITY_ANY, IDENTITY_WORLD, PolicyVerdict, RULE_NONE, dir_code, key_data,
    sport_key_data,
};
use crate::policy::{Direction, IpProto};

/// The policy "port" of a packet as the program computes it: the destination port for TCP,
/// UDP, SCTP and UDPLite, `type << 8 | code` for ICMP and ICMPv6, 0 otherwise.
pub fn policy_port(proto: IpProto, dst_port: u16, icmp: Option<(u8, u8)>) -> u16 {
    match proto.number() {
        6 | 17 | 132 | 136 => dst_port,
        1 | 58 => icmp.map_or(0, |(t, c)| (u16::from(t) << 8) | u16::from(c)),
        _ => 0,
    }
}

/// The two maps of a [`CompiledPolicy`] as LPM tries, for many lookups.
#[derive(Debug, Clone)]
pub struct PolicyIndex {
    routes: Lpm<16, u32>,
    policy: Lpm<12, (PolicyVerdict, u32)>,
    sport: Lpm<8, (PolicyVerdict, u32)>,
}

impl PolicyIndex {
    pub fn new(c: &CompiledPolicy) -> PolicyIndex {
        let mut routes = Lpm::default();
        for (net, id) in &c.identities {
            let (len, data) = route_key(net);
            routes.insert(len, data, *id);
        }
        let mut policy = Lpm::default();
        for e in &c.entries {
            policy.insert(e.prefix_len, e.key_data(), (e.verdict, e.rule_id));
        }
        let mut sport = Lpm::default();
        for e in &c.sport_entries {
            sport.insert(e.prefix_len, e.key_data(), (e.verdict, e.rule_id));
        }
        PolicyIndex {
            routes,
            policy,
            sport,
        }
    }

    /// The identity of an address (`sv_identity` in the program).
    pub fn identity(&self, addr: IpAddr) -> u32 {
        self.routes
            .lookup(&addr_bytes(addr))
            .copied()
            .unwrap_or(IDENTITY_WORLD)
    }

    /// The identity a route prefix must carry when the writer merges routes and
    /// identities: that of the longest identity prefix containing the whole network.
    pub fn identity_of_net(&self, net: &IpNet) -> u32 {
        let (len, data) = route_key(&net.trunc());
        (0..=len)
            .rev()
            .find_map(|l| self.routes.get_exact(l, &data).copied())
            .unwrap_or(IDENTITY_WORLD)
    }

    /// The verdict and rule id of the program's first lookup for a packet of an endpoint:
    /// [`PolicyVerdict::BySourcePort`] (with a table id) when the decision depends on the
    /// source port; [`PolicyIndex::lookup_with_sport`] follows it.
    pub fn lookup(
        &self,
        ep_id: u32,
        dir: Direction,
        remote: IpAddr,
        proto: u8,
        port: u16,
    ) -> (PolicyVerdict, u32) {
        let id = self.identity(remote);
        let d = dir_code(dir);
        self.policy
            .lookup(&key_data(ep_id, id, d, proto, port))
            .or_else(|| {
                self.policy
                    .lookup(&key_data(ep_id, IDENTITY_ANY, d, proto, port))
            })
            .copied()
            .unwrap_or((PolicyVerdict::Deny, RULE_NONE))
    }

    /// The final verdict (Allow or Deny) and rule id the program reaches for a packet of an
    /// endpoint from source port `sport`.
    pub fn lookup_with_sport(
        &self,
        ep_id: u32,
        dir: Direction,
        remote: IpAddr,
        proto: u8,
        sport: u16,
        port: u16,
    ) -> (PolicyVerdict, u32) {
        match self.lookup(ep_id, dir, remote, proto, port) {
            (PolicyVerdict::BySourcePort, table) => self
                .sport
                .lookup(&sport_key_data(table, sport))
                .copied()
                .unwrap_or((PolicyVerdict::Deny, RULE_NONE)),
            v => v,
        }
    }
}

/// One lookup (builds the index; use [`PolicyIndex`] for many).
pub fn lookup(
    c: &CompiledPolicy,
    ep_id: u32,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> (PolicyVerdict, u32) {
    PolicyIndex::new(c).lookup(ep_id, dir, remote, proto, port)
}
