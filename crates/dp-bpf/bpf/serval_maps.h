/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The BPF ABI of Serval's eBPF dataplane: every map key and value, the flags in them and the
 * drop reasons. This is the only place they are defined; the Rust mirror is
 * crates/dp-bpf/src/abi.rs (#[repr(C)], explicit padding, size asserts with the same numbers
 * as the _Static_asserts below), and build.rs checks every size and field offset of the two
 * against each other at build time (it compiles and runs bpf/abi_layout.c).
 *
 * Conventions:
 * - Addresses are `union sv_addr`, 16 bytes, network byte order. IPv4 addresses are stored
 *   IPv4-mapped (::ffff:a.b.c.d), so one map serves both families; an IPv4 /n prefix in an LPM
 *   map is prefix length 96 + n.
 * - Ports are network byte order (__be16) everywhere.
 * - Timestamps are bpf_ktime_get_ns(): CLOCK_MONOTONIC nanoseconds.
 * - No bool, no implicit padding: every hole is a named pad field that must be zero (keys are
 *   hashed bytewise).
 *
 * This header is also compiled for the host (abi_layout.c), so it includes nothing but
 * <linux/types.h>.
 */
#ifndef SERVAL_MAPS_H
#define SERVAL_MAPS_H

#include <linux/types.h>

/* ---- addresses -------------------------------------------------------------------------- */

union sv_addr {
	__u8 b[16];
	__u32 w[4];
};
_Static_assert(sizeof(union sv_addr) == 16, "sv_addr");

#define SV_FAMILY_V4 4
#define SV_FAMILY_V6 6

/* Policy direction, from the endpoint's point of view. */
#define SV_DIR_INGRESS 0 /* traffic into the endpoint (program on the veth's tc egress) */
#define SV_DIR_EGRESS 1	 /* traffic out of the endpoint (program on the veth's tc ingress) */

/* ---- conntrack (map sv_ct: HASH, NO_PREALLOC; key sv_ct_key -> sv_ct_val) ---------------- */

/*
 * A flow is keyed by its normalised 5-tuple: side a is the smaller (address, port) pair
 * (bytewise address, then port), so both directions find the same entry. For ICMP echo both
 * ports hold the echo identifier; for other ICMP and for protocols without ports they are 0.
 */
struct sv_ct_key {
	union sv_addr addr_a;
	union sv_addr addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8 proto; /* IPPROTO_* */
	__u8 family; /* SV_FAMILY_V4 / SV_FAMILY_V6 */
	__u8 pad[2];
};
_Static_assert(sizeof(struct sv_ct_key) == 40, "sv_ct_key");

/* sv_ct_val.kind */
#define SV_CT_TYPE_NORMAL 0 /* the flow as it is on the wire (post-DNAT) */
#define SV_CT_TYPE_NAT_FWD 1 /* pre-DNAT tuple (client -> VIP): nat_* is the chosen backend */

/* sv_ct_val.flags */
#define SV_CT_F_SEEN_A (1u << 0) /* a packet from side a was seen */
#define SV_CT_F_SEEN_B (1u << 1)
#define SV_CT_F_SYN_A (1u << 2) /* TCP SYN from side a */
#define SV_CT_F_SYN_B (1u << 3)
#define SV_CT_F_FIN_A (1u << 4) /* TCP FIN from side a */
#define SV_CT_F_FIN_B (1u << 5)
#define SV_CT_F_RST (1u << 6) /* TCP RST from either side */
#define SV_CT_F_ESTABLISHED (1u << 7) /* TCP: SYN both ways; UDP/ICMP/other: packets both ways */
#define SV_CT_F_OPENER_B (1u << 8) /* side b sent the first packet (else side a) */
#define SV_CT_F_APPROVED_SRC (1u << 9) /* the opener endpoint's egress policy allowed the flow */
#define SV_CT_F_APPROVED_DST (1u << 10) /* the responder endpoint's ingress policy allowed it */
#define SV_CT_F_DNAT (1u << 11) /* NORMAL entry of a DNATed flow: nat_* = original dst (VIP) */
/* Entry keyed by a flow's original tuple whose source is rewritten (NAT outgoing, or the
 * NAT_FWD entry of a masqueraded service flow): snat_* = the source forward packets get. */
#define SV_CT_F_SNAT_FWD (1u << 12)
/* Wire entry (after SNAT) of a source-NATed flow: snat_* = the original source, which replies
 * get back as their destination (with SV_CT_F_DNAT, nat_* becomes their source). */
#define SV_CT_F_SNAT_REV (1u << 13)
/* Wire entry of a flow NATed by an uplink program or masqueraded (hairpin): its packets are
 * forwarded with a FIB lookup and a redirect, not handed to the host's routing, because their
 * source may be an address of this node (the stack drops those as martians). */
#define SV_CT_F_REDIRECT (1u << 14)

struct sv_ct_val {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 flags; /* SV_CT_F_*, updated with atomic or */
	__u8 kind; /* SV_CT_TYPE_* */
	__u8 pad0;
	__be16 nat_port; /* see SV_CT_TYPE_NAT_FWD and SV_CT_F_DNAT */
	union sv_addr nat_addr;
	__u32 svc_id; /* the service of a NATed flow, else 0 */
	__u32 pad1;
	union sv_addr snat_addr; /* see SV_CT_F_SNAT_FWD and SV_CT_F_SNAT_REV */
	__be16 snat_port;
	__u16 pad2;
	__u32 pad3;
};
_Static_assert(sizeof(struct sv_ct_val) == 72, "sv_ct_val");

/* ---- service NAT ------------------------------------------------------------------------ */

/* map sv_nat_fe: HASH, NO_PREALLOC; (VIP, port, proto) -> service */
struct sv_nat_fe_key {
	union sv_addr addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};
_Static_assert(sizeof(struct sv_nat_fe_key) == 20, "sv_nat_fe_key");

#define SV_NAT_FE_F_AFFINITY (1u << 0) /* sessionAffinity: ClientIP (affinity_timeout_s) */
#define SV_NAT_FE_F_EXT_LOCAL (1u << 1) /* externalTrafficPolicy: Local */
#define SV_NAT_FE_F_INT_LOCAL (1u << 2) /* internalTrafficPolicy: Local */
#define SV_NAT_FE_F_EXTERNAL (1u << 3) /* NodePort / externalIP / LoadBalancer frontend */

/*
 * Backends are slots 0..count-1 of the service in sv_nat_be; the node-local ones come first
 * (slots 0..local_count-1), so a *_LOCAL policy picks among the first local_count slots.
 */
struct sv_nat_fe_val {
	__u32 svc_id;
	__u32 count;
	__u32 local_count;
	__u32 flags; /* SV_NAT_FE_F_* */
	__u32 affinity_timeout_s;
	__u32 pad;
};
_Static_assert(sizeof(struct sv_nat_fe_val) == 24, "sv_nat_fe_val");

/* map sv_nat_be: HASH, NO_PREALLOC; (service, slot) -> backend */
struct sv_nat_be_key {
	__u32 svc_id;
	__u32 slot;
};
_Static_assert(sizeof(struct sv_nat_be_key) == 8, "sv_nat_be_key");

#define SV_NAT_BE_F_LOCAL (1u << 0) /* the backend runs on this node */

struct sv_nat_be_val {
	union sv_addr addr;
	__be16 port;
	__u16 pad;
	__u32 flags; /* SV_NAT_BE_F_* */
};
_Static_assert(sizeof(struct sv_nat_be_val) == 24, "sv_nat_be_val");

/* map sv_nat_aff: LRU_HASH; (client, service) -> the backend it was sent to, and when */
struct sv_nat_aff_key {
	union sv_addr client;
	__u32 svc_id;
};
_Static_assert(sizeof(struct sv_nat_aff_key) == 20, "sv_nat_aff_key");

struct sv_nat_aff_val {
	__u64 ts_ns; /* last use */
	union sv_addr addr;
	__be16 port;
	__u8 pad[6];
};
_Static_assert(sizeof(struct sv_nat_aff_val) == 32, "sv_nat_aff_val");

/* ---- Maglev (map sv_maglev: HASH, NO_PREALLOC; (service, index) -> backend) --------------- */

/*
 * A frontend with SV_NAT_FE_F_MAGLEV picks its backend for a new flow from the service's
 * Maglev lookup table (crates/calc/src/maglev.rs builds it, the same on every node): entry
 * sv_maglev_hash(5-tuple) % size, where size (M, a prime) is read from the table's entry at
 * index SV_MAGLEV_META first. Every entry carries the same size. A missing table falls back to
 * the ordinary random choice among sv_nat_be slots.
 */
#define SV_NAT_FE_F_MAGLEV (1u << 8) /* backend by Maglev (sv_maglev), not at random */

#define SV_MAGLEV_META 0xffffffffu /* index of the entry whose `size` is the table's M */
#define SV_MAGLEV_SEED 0x5e7a1c0du /* seed of the flow hash (calc::maglev::FLOW_HASH_SEED) */

struct sv_maglev_key {
	__u32 svc_id;
	__u32 index; /* 0..size-1, or SV_MAGLEV_META */
};
_Static_assert(sizeof(struct sv_maglev_key) == 8, "sv_maglev_key");

struct sv_maglev_val {
	union sv_addr addr; /* the backend (zero in the META entry) */
	__be16 port;
	__u16 pad;
	__u32 size; /* M, the number of entries of the table */
};
_Static_assert(sizeof(struct sv_maglev_val) == 24, "sv_maglev_val");

/* ---- this node (map sv_host: ARRAY, one entry, key 0) ------------------------------------ */

/*
 * What the uplink programs (and hairpin masquerade) need to know about the node: the address
 * per family that source NAT uses (the node address on its uplink) and FelixConfiguration
 * bpfPSNATPorts, the range SNAT source ports (and ICMP echo identifiers) are taken from.
 */
#define SV_HOST_F_V4 (1u << 0) /* addr4 is set */
#define SV_HOST_F_V6 (1u << 1) /* addr6 is set */

struct sv_host_val {
	__u32 flags; /* SV_HOST_F_* */
	__u16 psnat_min; /* host order, inclusive */
	__u16 psnat_max; /* host order, inclusive */
	union sv_addr addr4; /* IPv4-mapped */
	union sv_addr addr6;
};
_Static_assert(sizeof(struct sv_host_val) == 40, "sv_host_val");

/* ---- NodePort tunnel and DSR (bpf/serval_tunnel.h) ------------------------------------- */

/*
 * FelixConfiguration bpfExternalServiceMode: a node receiving traffic from outside the cluster
 * for an external frontend (NodePort, externalIP, LoadBalancer; externalTrafficPolicy Cluster)
 * whose chosen backend runs on another node DNATs it, keeps the client's source and sends it
 * to the backend's node encapsulated (outer IP + UDP to SV_TUN_PORT + struct sv_tun_hdr + the
 * inner IP packet, same family inside and out). Tunnel (default): replies come back through
 * the tunnel and the receiving node reverse-NATs them; DSR (SV_HOST_F_DSR in sv_host): the
 * backend's node reverse-NATs them itself (the frontend travels in the header) and sends them
 * straight to the client; clients in sv_dsr_optout get Tunnel.
 */
#define SV_HOST_F_DSR (1u << 2) /* bpfExternalServiceMode: DSR (else Tunnel) */
/* bpfHostNetworkedNATWithoutCTLB: the tc programs NAT host-networked clients' service flows
 * (bpf/serval_hostnat.h) */
#define SV_HOST_F_HOST_NAT (1u << 3)

#define SV_TUN_PORT 4797 /* UDP destination port of the tunnel */
#define SV_TUN_VNI 0x5e7a1 /* VXLAN-style network identifier in every header */
#define SV_TUN_F_VNI 0x08 /* sv_tun_hdr.flags: the VNI is valid (VXLAN's I bit) */
#define SV_TUN_SF_DSR 0x01 /* sv_tun_hdr.sv_flags: the backend's node answers directly */

/* The tunnel header after the outer UDP header: VXLAN's 8 bytes, then the frontend the
 * receiving node DNATed from (zero in replies). */
struct sv_tun_hdr {
	__u8 flags; /* SV_TUN_F_VNI */
	__u8 sv_flags; /* SV_TUN_SF_* (VXLAN: reserved) */
	__u8 rsvd[2];
	__be32 vni; /* SV_TUN_VNI << 8 */
	union sv_addr fe_addr; /* the frontend (IPv4-mapped) */
	__be16 fe_port;
	__u8 pad[2];
};
_Static_assert(sizeof(struct sv_tun_hdr) == 28, "sv_tun_hdr");

/* sv_ct_val.flags of tunnelled flows (snat_addr = the node at the tunnel's other end) */
#define SV_CT_F_TUN_FWD (1u << 15) /* receiving node, wire entry: forward packets go encapsulated */
#define SV_CT_F_TUN_REPLY (1u << 16) /* backend's node: replies go back encapsulated ... */
#define SV_CT_F_TUN_DSR (1u << 17) /* ... or, with this, straight to the client from nat_* */

/* map sv_dsr_optout: LPM_TRIE; struct sv_route_key (client prefix) -> __u32 1 */

/* map sv_tun_stats: PERCPU_ARRAY; key __u32 counter -> __u64 packets */
#define SV_TUN_ENCAP_FWD 0 /* receiving node: client packets sent to the backend's node */
#define SV_TUN_DECAP_FWD 1 /* backend's node: client packets received from the tunnel */
#define SV_TUN_ENCAP_REPLY 2 /* backend's node: replies sent back through the tunnel */
#define SV_TUN_DECAP_REPLY 3 /* receiving node: replies received from the tunnel */
#define SV_TUN_DSR_REPLY 4 /* backend's node: replies sent straight to the client */
#define SV_TUN_DROP 5 /* tunnel packets dropped (bad header, no node address, rewrite) */
#define SV_TUN_STATS 8 /* max_entries of sv_tun_stats */

/* ---- routes and identities (map sv_routes: LPM_TRIE) ------------------------------------ */

/* prefixlen counts bits of addr; IPv4 /n is 96 + n (IPv4-mapped). */
struct sv_route_key {
	__u32 prefixlen;
	union sv_addr addr;
};
_Static_assert(sizeof(struct sv_route_key) == 20, "sv_route_key");

#define SV_RT_F_LOCAL_WORKLOAD (1u << 0) /* a workload on this node (ifindex = its veth) */
#define SV_RT_F_HOST (1u << 1) /* an address of this node */
#define SV_RT_F_REMOTE_WORKLOAD (1u << 2) /* a workload on another node (next_hop = node) */
#define SV_RT_F_REMOTE_HOST (1u << 3) /* another node's address */
#define SV_RT_F_TUNNEL (1u << 4) /* reached through the VXLAN device */
#define SV_RT_F_IN_POOL (1u << 5) /* inside an IP pool */
#define SV_RT_F_NAT_OUTGOING (1u << 6) /* inside a pool with natOutgoing */

/*
 * Identities: 0 is the policy wildcard (never assigned); an IPv4 address no route covers is
 * WORLD, an IPv6 one WORLD6 (the families differ: ipVersion rules make verdicts
 * family-dependent).
 */
#define SV_IDENTITY_ANY 0
#define SV_IDENTITY_WORLD 1
#define SV_IDENTITY_WORLD6 2

struct sv_route_val {
	__u32 identity;
	__u32 flags; /* SV_RT_F_* */
	__u32 ifindex;
	__u32 pad;
	union sv_addr next_hop;
};
_Static_assert(sizeof(struct sv_route_val) == 32, "sv_route_val");

/* ---- policy verdicts (map sv_policy: LPM_TRIE) ------------------------------------------ */

/*
 * One LPM trie holds the compiled policy of every endpoint. The data after prefixlen is, in
 * matching order: endpoint id, remote identity, direction (always matched in full), then
 * protocol and port, which may be wildcarded from the right:
 *   prefixlen 72        any protocol, any port
 *   prefixlen 80        this protocol, any port
 *   prefixlen 80 + k    this protocol, ports sharing the top k bits of `port`
 * A port range is split into at most 30 aligned power-of-two blocks, so ranges cost a bounded
 * number of entries and one lookup, never a per-packet walk. For ICMP the "port" is
 * (type << 8 | code): prefix 88 = one type, any code. The compiler resolves rule order,
 * Deny and Pass ahead of time and emits a disjoint partition (or relies on longest match).
 *
 * Per packet the program looks up (ep, remote identity, ...) and, on a miss, (ep,
 * SV_IDENTITY_ANY, ...): the compiler gives every identity that one of the endpoint's rules
 * names a complete entry set (at least a prefixlen-72 default) and puts the verdict for all
 * other identities under SV_IDENTITY_ANY. A miss on both is a deny (SV_DROP_POLICY), so an
 * endpoint without policy needs an explicit prefixlen-72 Allow under SV_IDENTITY_ANY.
 */
/* The matched data of sv_pol_key (LPM data is everything after prefixlen). */
struct sv_pol_match {
	__be32 ep_id;
	__be32 remote_id;
	__u8 dir; /* SV_DIR_* */
	__u8 proto; /* IPPROTO_* */
	__be16 port; /* destination port (TCP/UDP/SCTP/UDPLite) or type << 8 | code (ICMP) */
};
_Static_assert(sizeof(struct sv_pol_match) == 12, "sv_pol_match");

struct sv_pol_key {
	__u32 prefixlen;
	struct sv_pol_match data;
};
_Static_assert(sizeof(struct sv_pol_key) == 16, "sv_pol_key");

#define SV_POL_PREFIX_ANY_PROTO 72
#define SV_POL_PREFIX_ANY_PORT 80
#define SV_POL_PREFIX_FULL 96

#define SV_VERDICT_ALLOW 1
#define SV_VERDICT_DENY 2
/* The decision depends on the source port: rule_id is a source-port table id; look up
 * sv_pol_sport at (table, source port). Never a value in sv_pol_sport itself. */
#define SV_VERDICT_BY_SPORT 3

struct sv_pol_val {
	__u32 verdict; /* SV_VERDICT_*; anything else is a deny */
	__u32 rule_id; /* for flow logs: which compiled rule decided (BY_SPORT: the table) */
};
_Static_assert(sizeof(struct sv_pol_val) == 8, "sv_pol_val");

/* ---- IP fragments (map sv_frags: LRU_HASH; key sv_frag_key -> sv_frag_val) ------------- */

/*
 * Only the first fragment of a datagram carries the transport header. When a program sees
 * it, it records the datagram's ports under (addresses, IP identification, protocol), as
 * seen at that hook; a later fragment takes its ports from the record and gets the same
 * conntrack, policy and NAT decisions as the first (a later fragment without a record is
 * dropped: SV_DROP_FRAGMENT). IPv4 and IPv6 (fragment header).
 */
struct sv_frag_key {
	union sv_addr saddr;
	union sv_addr daddr;
	__be32 id; /* IPv4: the 16-bit identification in the low bytes; IPv6: the fragment header's */
	__u8 proto; /* the transport protocol */
	__u8 family; /* SV_FAMILY_* */
	__u8 pad[2];
};
_Static_assert(sizeof(struct sv_frag_key) == 40, "sv_frag_key");

struct sv_frag_val {
	__be16 sport; /* as struct sv_pkt has them after parsing the first fragment */
	__be16 dport;
	__be16 pol_port;
	__u8 icmp_echo;
	__u8 pad;
};
_Static_assert(sizeof(struct sv_frag_val) == 8, "sv_frag_val");

/* ---- source-port tables (map sv_pol_sport: LPM_TRIE; key sv_pol_sport_key -> sv_pol_val) */

/*
 * Rules with source-port conditions: where the verdict of (ep, identity, dir, proto, port)
 * depends on the source port, sv_policy holds SV_VERDICT_BY_SPORT with a table id, and the
 * table partitions the source ports (the compiler shares identical tables across endpoints):
 *   prefixlen 32        any source port (the table's default)
 *   prefixlen 32 + k    source ports sharing the top k bits of `sport`
 * A miss is a deny. One more lookup, only for the packets such rules concern.
 */
struct sv_pol_sport_match {
	__be32 table_id;
	__be16 sport; /* the packet's source port (TCP/UDP/SCTP/UDPLite) */
	__u8 pad[2];
};
_Static_assert(sizeof(struct sv_pol_sport_match) == 8, "sv_pol_sport_match");

struct sv_pol_sport_key {
	__u32 prefixlen;
	struct sv_pol_sport_match data;
};
_Static_assert(sizeof(struct sv_pol_sport_key) == 12, "sv_pol_sport_key");

#define SV_POL_SPORT_PREFIX_ANY 32
#define SV_POL_SPORT_PREFIX_FULL 48

/* ---- endpoints (map sv_eps: HASH; key __u32 ifindex of the host-side veth) -------------- */

#define SV_EP_F_V4 (1u << 0) /* addr4 is set */
#define SV_EP_F_V6 (1u << 1) /* addr6 is set */

struct sv_ep_val {
	__u32 ep_id; /* the endpoint id used in sv_pol_key */
	__u32 flags; /* SV_EP_F_* */
	union sv_addr addr4; /* IPv4-mapped; the only source the workload may send IPv4 from */
	union sv_addr addr6;
};
_Static_assert(sizeof(struct sv_ep_val) == 40, "sv_ep_val");

/* ---- drop counters (map sv_drops: PERCPU_ARRAY; key __u32 reason -> __u64 packets) ------- */

#define SV_DROP_MALFORMED 0 /* truncated or invalid headers */
#define SV_DROP_UNKNOWN_IFACE 1 /* program on an interface without an sv_eps entry */
#define SV_DROP_SPOOFED 2 /* source address is not the endpoint's */
#define SV_DROP_POLICY 3 /* denied by policy (or no verdict entry) */
#define SV_DROP_NO_BACKEND 4 /* service frontend without (local) backends: rejected with a
			       * TCP RST / ICMP port unreachable (or dropped if none applies) */
#define SV_DROP_CT_FULL 5 /* conntrack map full: the new flow could not be recorded */
#define SV_DROP_NAT_BACKEND_MISSING 6 /* frontend counts a backend slot that is not in sv_nat_be */
#define SV_DROP_REWRITE 7 /* a packet rewrite / checksum helper failed */
#define SV_DROP_FRAGMENT 8 /* a non-first IP fragment whose first fragment was not seen */
#define SV_DROP_NO_LOCAL_BACKEND 9 /* node-local traffic policy, no backend on this node */
#define SV_DROP_SNAT_PORTS 10 /* no free source port in bpfPSNATPorts for a new SNATed flow */
#define SV_DROP_HOST_POLICY 12 /* denied by host endpoint policy (bpf/serval_hep.c) */
#define SV_DROP_REASONS 16 /* max_entries of sv_drops */

/* ---- connect-time load balancing (bpf/serval_ctlb.c; its own maps, pinned in the node scope) */

/* Which protocols the cgroup programs translate (the object's global sv_ctlb_protos):
 * FelixConfiguration bpfConnectTimeLoadBalancing TCP = TCP only, Enabled = both. */
#define SV_CTLB_F_TCP (1u << 0)
#define SV_CTLB_F_UDP (1u << 1)

/*
 * maps sv_ctlb_fwd and sv_ctlb_rev: LRU_HASH; keyed by the socket (its cookie) and an address:
 * - sv_ctlb_fwd: (socket, frontend) -> the backend an unconnected UDP socket sends that
 *   frontend's datagrams to (so it keeps one backend, as a conntrack entry would);
 * - sv_ctlb_rev: (socket, backend) -> the frontend the socket asked for: recvmsg and
 *   getpeername show the frontend instead of the backend.
 * Addresses are IPv4-mapped for IPv4 as everywhere.
 */
struct sv_ctlb_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	union sv_addr addr;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad[5];
};
_Static_assert(sizeof(struct sv_ctlb_key) == 32, "sv_ctlb_key");

#define SV_CTLB_SLOT_NONE 0xffffffffu /* sv_ctlb_val.slot of a reverse entry */

struct sv_ctlb_val {
	union sv_addr addr;
	__be16 port;
	__u16 pad;
	__u32 svc_id; /* sv_ctlb_fwd: the frontend's service and the backend's slot, checked */
	__u32 slot;   /* against sv_nat_fe / sv_nat_be before the entry is reused */
	__u32 pad1;
};
_Static_assert(sizeof(struct sv_ctlb_val) == 32, "sv_ctlb_val");

/* ---- XDP on host interfaces (bpf/serval_xdp.c; its own maps, pinned in the node scope) --- */

/*
 * map sv_xdp_bl: LPM_TRIE, NO_PREALLOC; the blocklist: untracked (doNotTrack) Deny rules of
 * host endpoint policy that XDP can express, as (interface, protocol, destination port,
 * source prefix). ifindex 0 = every interface the program is attached to (a `*` host
 * endpoint); proto 0 = any protocol (then port is 0); port 0 = any port of that protocol.
 * prefixlen = SV_XDP_BL_PREFIX_BASE + the source prefix bits (IPv4 /n: 96 + n, mapped).
 * Per packet: 3 keys (any protocol; protocol; protocol + port) x 2 interfaces (own, 0).
 */
struct sv_xdp_bl_match {
	__be32 ifindex;
	__u8 proto;
	__u8 pad;
	__be16 port;
	union sv_addr addr;
};
_Static_assert(sizeof(struct sv_xdp_bl_match) == 24, "sv_xdp_bl_match");

struct sv_xdp_bl_key {
	__u32 prefixlen;
	struct sv_xdp_bl_match data;
};
_Static_assert(sizeof(struct sv_xdp_bl_key) == 28, "sv_xdp_bl_key");

#define SV_XDP_BL_PREFIX_BASE 64

struct sv_xdp_bl_val {
	__u32 rule_id; /* which compiled rule (for logs); informational */
	__u32 pad;
};
_Static_assert(sizeof(struct sv_xdp_bl_val) == 8, "sv_xdp_bl_val");

/*
 * map sv_xdp_fs: LPM_TRIE, NO_PREALLOC; failsafe inbound ports (FelixConfiguration
 * failsafeInboundHostPorts), checked before the blocklist: (protocol, destination port,
 * source prefix). A port without `net` is prefixlen SV_XDP_FS_PREFIX_BASE (any source).
 */
struct sv_xdp_fs_match {
	__u8 proto;
	__u8 pad;
	__be16 port;
	union sv_addr addr;
};
_Static_assert(sizeof(struct sv_xdp_fs_match) == 20, "sv_xdp_fs_match");

struct sv_xdp_fs_key {
	__u32 prefixlen;
	struct sv_xdp_fs_match data;
};
_Static_assert(sizeof(struct sv_xdp_fs_key) == 24, "sv_xdp_fs_key");

#define SV_XDP_FS_PREFIX_BASE 32

/* map sv_xdp_stats: PERCPU_ARRAY; key __u32 counter -> __u64 packets */
#define SV_XDP_DROP_BLOCKLIST 0 /* dropped: source in the blocklist */
#define SV_XDP_DROP_MALFORMED 1 /* dropped: truncated or invalid IP header */
#define SV_XDP_PASS_FAILSAFE 2 /* passed: a failsafe port (whatever the blocklist says) */
#define SV_XDP_STATS 8 /* max_entries of sv_xdp_stats */

/* ---- host endpoints (bpf/serval_hep.c; its own maps, pinned in the node scope) ---------- */

#ifndef SV_MARK_SEEN
/* skb->mark bit: a Serval program already handled this packet on this node (NATed, forwarded,
 * approved); later programs on the path (host endpoint policy) let it pass. */
#define SV_MARK_SEEN 0x10000000u
#endif

/* map sv_hep_ifaces: HASH; key __u32 ifindex of a host interface with a host endpoint */
#define SV_HEP_F_ALL_IFACES (1u << 0) /* the endpoint is an all-interfaces (`*`) one */

struct sv_hep_iface_val {
	__u32 ep_id; /* the host endpoint's endpoint id in sv_policy */
	__u32 flags; /* SV_HEP_F_* */
	/* The endpoint id of its untracked (doNotTrack) verdict set in sv_policy, 0: none.
	 * Allow with rule_id SV_RULE_NO_POLICY / SV_RULE_PASSED_ALL_TIERS = no untracked rule
	 * decided (go on); other Allow = accept untracked; Deny = drop. */
	__u32 untracked_ep_id;
};
_Static_assert(sizeof(struct sv_hep_iface_val) == 12, "sv_hep_iface_val");
#define SV_RULE_NO_POLICY 1
#define SV_RULE_PASSED_ALL_TIERS 2

/*
 * map sv_hep_fs: LPM_TRIE, NO_PREALLOC; failsafe ports, allowed before host endpoint policy:
 * dir SV_DIR_INGRESS = failsafeInboundHostPorts (remote = the source), SV_DIR_EGRESS =
 * failsafeOutboundHostPorts (remote = the destination); port = the destination port.
 * prefixlen = SV_HEP_FS_PREFIX_BASE + the remote prefix bits (IPv4 /n: 96 + n, mapped; a port
 * without `net`: SV_HEP_FS_PREFIX_BASE, any address of either family). Value: __u32 1.
 */
struct sv_hep_fs_match {
	__u8 dir; /* SV_DIR_* */
	__u8 proto; /* IPPROTO_TCP / UDP / SCTP */
	__be16 port;
	union sv_addr remote;
};
_Static_assert(sizeof(struct sv_hep_fs_match) == 20, "sv_hep_fs_match");

struct sv_hep_fs_key {
	__u32 prefixlen;
	struct sv_hep_fs_match data;
};
_Static_assert(sizeof(struct sv_hep_fs_key) == 24, "sv_hep_fs_key");

#define SV_HEP_FS_PREFIX_BASE 32

/* map sv_hep_ct: LRU_HASH; key struct sv_ct_key (normalised as for sv_ct) -> host flow state.
 * Only flows to/from the host that host endpoint policy (or a failsafe port) allowed. */
struct sv_hep_ct_val {
	__u64 last_seen_ns;
	__u32 flags; /* SV_CT_F_SEEN_*, SYN_*, FIN_*, RST, ESTABLISHED */
	__u32 pad;
};
_Static_assert(sizeof(struct sv_hep_ct_val) == 16, "sv_hep_ct_val");

#endif /* SERVAL_MAPS_H */
