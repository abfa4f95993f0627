// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Serval's tc programs for host interfaces that have a host endpoint. Calico's semantics with
 * applyOnForward false: host endpoint policy judges traffic to and from the host itself, never
 * traffic the host forwards (pods, services).
 *
 *   serval_hep_ingress  tc ingress: packets FOR this node (the destination has SV_RT_F_HOST in
 *                       sv_routes), against the host endpoint's ingress policy
 *   serval_hep_egress   tc egress: packets FROM this node (the source has SV_RT_F_HOST),
 *                       against the host endpoint's egress policy
 *
 * Per packet, in order (every step a fixed number of hash/LPM lookups):
 *   0. the interface's untracked (doNotTrack) verdict set, when it has one (sv_hep_untracked:
 *      forwarded traffic too, failsafe ports first; Allow accepts without conntrack, Deny
 *      drops, no decision goes on);
 *   1. skb->mark has SV_MARK_SEEN (another Serval program NATed/forwarded it): next;
 *   2. not IP, IPv6 neighbour discovery and MLD, non-first fragments: next (a first fragment carries
 *      the transport header and is policed like a whole packet; the kernel cannot
 *      reassemble the rest without it); a malformed IP packet: dropped (SV_DROP_MALFORMED);
 *   3. the interface has no sv_hep_ifaces entry, or the packet is not host traffic: next;
 *   4. a live entry of the flow in sv_hep_ct (this object's own LRU conntrack; replies of
 *      allowed flows, either direction): next;
 *   5. a failsafe port (sv_hep_fs: failsafeInboundHostPorts / failsafeOutboundHostPorts,
 *      optionally limited to a remote prefix): allowed;
 *   6. VXLAN (UDP 4789) from/to another node's address (SV_RT_F_REMOTE_HOST): allowed, as
 *      Felix allows the overlay between hosts before host endpoint policy;
 *   7. the host endpoint's compiled policy in sv_policy (its ep_id, the remote identity from
 *      sv_routes, direction, protocol, port; then the SV_IDENTITY_ANY fallback; a
 *      SV_VERDICT_BY_SPORT entry goes on to its source-port table in sv_pol_sport): allowed,
 *      or dropped and counted as SV_DROP_HOST_POLICY.
 * Allowed new flows (5-7) are recorded in sv_hep_ct. "next" is TC_ACT_UNSPEC (-1), which is
 * TCX_NEXT under TCX (the next program of the chain, then the stack, decides) and "the
 * default action" under clsact.
 *
 * The driver attaches these AFTER every other Serval program on ingress and BEFORE them on
 * egress, so the uplink programs' NAT is undone/not yet done when they look at addresses.
 * Maps and their layout: serval_maps.h (sv_routes, sv_policy, sv_drops are the node's shared
 * pinned maps; sv_hep_* are this object's own, pinned in the same scope).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "serval_maps_def.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SV_LOG_PREFIX "serval hep: "
#include "serval_log.h"

/* ---- this object's maps ----------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sv_hep_iface_val);
} sv_hep_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_hep_fs_key);
	__type(value, __u32);
} sv_hep_fs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sv_ct_key);
	__type(value, struct sv_hep_ct_val);
} sv_hep_ct SEC(".maps");

/* ---- parsing, drop counting, policy lookup (shared with serval_tc.c) ------------------- */

#define SV_NEXT TC_ACT_UNSPEC /* TCX_NEXT */

#define SV_VXLAN_PORT 4789

#include "serval_net.h"
#include "serval_parse.h"
#include "serval_policy.h"

/* serval_parse.h's fragment hooks: fragments are not tracked here. A later fragment is
 * SV_PARSE_FRAGMENT (its first fragment was policed, and without that one the kernel cannot
 * reassemble the datagram); a first fragment is policed like a whole packet. */
static __always_inline int sv_frag_later(struct sv_pkt *p, __be32 id)
{
	return SV_PARSE_FRAGMENT;
}

static __always_inline int sv_frag6_hdr(struct __sk_buff *skb, __u32 off)
{
	/* next header, reserved, offset << 3 | flags, (identification) */
	__u8 frag[4];
	if (bpf_skb_load_bytes(skb, off, frag, sizeof(frag)))
		return -1;
	int later = ((((__u16)frag[2] << 8) | frag[3]) >> 3) != 0;
	return frag[0] | (later ? SV_FRAG6_LATER : 0);
}

static __always_inline __be32 sv_frag6_id(void)
{
	return 0;
}

static __always_inline void sv_frag_record(struct __sk_buff *skb, struct sv_pkt *p)
{
}

/* IPv6 link control the host needs whatever its policy: multicast listener discovery
 * (130-132, MLDv2 reports 143) and neighbour discovery (133-137). */
static __always_inline int sv_is_ndp(const struct sv_pkt *p)
{
	__u8 type = bpf_ntohs(p->pol_port) >> 8;
	return p->proto == IPPROTO_ICMPV6 && (sv_icmp6_is_mld(type) || sv_icmp6_is_nd(type));
}

/* ---- conntrack of host flows ------------------------------------------------------------ */

#define SV_SEC 1000000000ull
#define SV_HEP_CT_TCP_SYN (20 * SV_SEC)
#define SV_HEP_CT_TCP_EST (3600 * SV_SEC)
#define SV_HEP_CT_TCP_FIN (30 * SV_SEC)
#define SV_HEP_CT_TCP_RST (10 * SV_SEC)
#define SV_HEP_CT_UDP (60 * SV_SEC)
#define SV_HEP_CT_ICMP (5 * SV_SEC)

/* How long an entry in state flags lives without packets (Calico's timeouts). */
static __always_inline __u64 sv_ct_timeout(__u8 proto, __u32 flags)
{
	if (proto == IPPROTO_TCP) {
		if (flags & SV_CT_F_RST)
			return SV_HEP_CT_TCP_RST;
		if ((flags & SV_CT_F_FIN_A) && (flags & SV_CT_F_FIN_B))
			return SV_HEP_CT_TCP_FIN;
		if (flags & SV_CT_F_ESTABLISHED)
			return SV_HEP_CT_TCP_EST;
		return SV_HEP_CT_TCP_SYN;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
		return SV_HEP_CT_ICMP;
	return SV_HEP_CT_UDP;
}

/* ---- the packet path -------------------------------------------------------------------- */

static __always_inline int sv_failsafe(__u8 dir, const struct sv_pkt *p,
				       const union sv_addr *remote)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
		return 0;
	struct sv_hep_fs_key k = {
		.prefixlen = SV_HEP_FS_PREFIX_BASE + 128,
		.data =
			{
				.dir = dir,
				.proto = p->proto,
				.port = p->dport,
			},
	};
	k.data.remote = *remote;
	return bpf_map_lookup_elem(&sv_hep_fs, &k) != 0;
}

static __always_inline int sv_policy_allows(__u32 ep_id, __u8 dir, __u32 identity,
					    const struct sv_pkt *p)
{
	union sv_pol_any_key key;
	struct sv_pol_val *v = sv_policy_lookup(ep_id, dir, identity, p, &key);
	int allow = v && v->verdict == SV_VERDICT_ALLOW;
	sv_log("policy ep=%u dir=%u identity=%u", ep_id, dir, identity);
	sv_log("policy verdict=%d rule=%u", allow, v ? v->rule_id : 0);
	return allow;
}

#define SV_UNTRACKED_GO_ON 1 /* no untracked rule decided: the tracked path goes on */

/* The interface's untracked (doNotTrack) verdict set, before everything else of sv_hep (and
 * before SV_MARK_SEEN: Calico's raw table sees forwarded and NATed traffic too): returns
 * SV_NEXT (an untracked Allow: accepted, no conntrack entry, no ordinary policy),
 * TC_ACT_SHOT (an untracked Deny, counted as SV_DROP_HOST_POLICY) or SV_UNTRACKED_GO_ON (no
 * untracked set, not IP, not policed (fragments, NDP, failsafe ports, which come first), or
 * no untracked rule decided). The remote identity is the remote address's in sv_routes
 * (ingress: source, egress: destination) as for ordinary policy. */
static __noinline int sv_hep_untracked(struct __sk_buff *skb, const __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct sv_hep_iface_val *hep = bpf_map_lookup_elem(&sv_hep_ifaces, &ifindex);
	if (!hep || !hep->untracked_ep_id)
		return SV_UNTRACKED_GO_ON;
	__u32 ep_id = hep->untracked_ep_id;

	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK || sv_is_ndp(&p))
		return SV_UNTRACKED_GO_ON; /* the tracked path judges these as it always has */
	const union sv_addr *remote = dir == SV_DIR_INGRESS ? &p.saddr : &p.daddr;
	if (sv_failsafe(dir, &p, remote))
		return SV_UNTRACKED_GO_ON;
	union sv_pol_any_key key;
	struct sv_pol_val *v = sv_policy_lookup(ep_id, dir, sv_identity(remote), &p, &key);
	if (!v)
		return SV_UNTRACKED_GO_ON; /* an unwritten set decides nothing */
	sv_log("untracked ep=%u verdict=%u rule=%u", ep_id, v->verdict, v->rule_id);
	if (v->verdict != SV_VERDICT_ALLOW) /* Deny (anything else is a deny too) */
		return sv_drop(SV_DROP_HOST_POLICY);
	if (v->rule_id != SV_RULE_NO_POLICY && v->rule_id != SV_RULE_PASSED_ALL_TIERS)
		return SV_NEXT;
	return SV_UNTRACKED_GO_ON;
}

/* dir: SV_DIR_INGRESS (tc ingress, traffic to the host) or SV_DIR_EGRESS (from it). */
static __noinline int sv_hep(struct __sk_buff *skb, const __u8 dir)
{
	int untracked = sv_hep_untracked(skb, dir);
	if (untracked != SV_UNTRACKED_GO_ON)
		return untracked;
	if (skb->mark & SV_MARK_SEEN)
		return SV_NEXT;

	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	int rc = sv_parse(skb, &p);
	if (rc == SV_PARSE_NOT_IP)
		return SV_NEXT;
	/* A later fragment has no ports; its first fragment was policed, and without that
	 * one the kernel cannot reassemble the packet. */
	if (rc == SV_PARSE_FRAGMENT)
		return SV_NEXT;
	if (rc != SV_PARSE_OK)
		return sv_drop(SV_DROP_MALFORMED);
	if (sv_is_ndp(&p))
		return SV_NEXT;

	__u32 ifindex = skb->ifindex;
	struct sv_hep_iface_val *hep = bpf_map_lookup_elem(&sv_hep_ifaces, &ifindex);
	if (!hep)
		return SV_NEXT;
	__u32 ep_id = hep->ep_id;

	const union sv_addr *local = dir == SV_DIR_INGRESS ? &p.daddr : &p.saddr;
	const union sv_addr *remote = dir == SV_DIR_INGRESS ? &p.saddr : &p.daddr;
	struct sv_route_val *lr = sv_route(local);
	if (!lr || !(lr->flags & SV_RT_F_HOST))
		return SV_NEXT; /* forwarded, not the host's own traffic */

	__u64 now = bpf_ktime_get_ns();
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_hep_ct_val *ct = bpf_map_lookup_elem(&sv_hep_ct, &key);
	if (ct && now - ct->last_seen_ns <= sv_ct_timeout(p.proto, ct->flags)) {
		__u32 add = sv_ct_bits(&p, from_a, ct->flags);
		if ((ct->flags & add) != add)
			__sync_fetch_and_or(&ct->flags, add);
		ct->last_seen_ns = now;
		return SV_NEXT;
	}

	int allow = sv_failsafe(dir, &p, remote);
	if (allow) {
		sv_log("failsafe proto=%u port=%u", p.proto, bpf_ntohs(p.dport));
	} else {
		struct sv_route_val *rr = sv_route(remote);
		if (rr && (rr->flags & SV_RT_F_REMOTE_HOST) && p.proto == IPPROTO_UDP &&
		    p.dport == bpf_htons(SV_VXLAN_PORT)) {
			allow = 1;
			sv_log("vxlan between nodes");
		} else {
			__u32 id = rr ? rr->identity
				      : (sv_addr_is_v4(remote) ? SV_IDENTITY_WORLD
							       : SV_IDENTITY_WORLD6);
			allow = sv_policy_allows(ep_id, dir, id, &p);
		}
	}
	if (!allow)
		return sv_drop(SV_DROP_HOST_POLICY);

	struct sv_hep_ct_val v;
	__builtin_memset(&v, 0, sizeof(v));
	v.last_seen_ns = now;
	v.flags = sv_ct_bits(&p, from_a, 0);
	/* LRU: never full; a failed insert only costs re-evaluating the next packet. */
	bpf_map_update_elem(&sv_hep_ct, &key, &v, BPF_ANY);
	return SV_NEXT;
}

SEC("classifier")
int serval_hep_ingress(struct __sk_buff *skb)
{
	return sv_hep(skb, SV_DIR_INGRESS);
}

SEC("classifier")
int serval_hep_egress(struct __sk_buff *skb)
{
	return sv_hep(skb, SV_DIR_EGRESS);
}
