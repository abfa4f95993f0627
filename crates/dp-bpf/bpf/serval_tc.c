// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Serval's tc programs for workload interfaces (the host side of each pod veth):
 *
 *   serval_from_ep  tc ingress of the host-side veth: packets sent BY the workload
 *                   (anti-spoofing, conntrack, service DNAT, the endpoint's egress policy,
 *                   hairpin masquerade; the fast path: a same-node destination's ingress
 *                   policy inline and bpf_redirect_peer, FIB redirect to other nodes)
 *   serval_to_ep    tc egress of the host-side veth: packets delivered TO the workload
 *                   (conntrack, reverse NAT, the endpoint's ingress policy)
 *
 * and, in the same object, for the node's uplink and VXLAN devices (serval_uplink.h):
 *
 *   serval_uplink_in   service frontends reached from outside, replies to SNATed flows
 *   serval_uplink_out  NAT outgoing
 *
 * Source NAT, FIB forwarding and the fast path's helpers: serval_nat.h.
 *
 * Per packet: a fixed number of hash/LPM lookups, never a walk over rules, services or
 * endpoints. Maps and their layout: serval_maps.h. Built twice by build.rs: without and with
 * -DSERVAL_DEBUG (bpf_printk of every decision, read with `bpftool prog tracelog`).
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

#define SV_LOG_PREFIX "serval: "
#include "serval_log.h"

/* Maps: serval_maps_def.h (shared with the other objects through their pins). */

/* Wire constants and address helpers, the packet parser (fragment hooks below), drop
 * counting and the policy lookup, shared with serval_hep.c. */
#include "serval_net.h"
#include "serval_parse.h"
#include "serval_policy.h"

/* ---- IP fragments ----------------------------------------------------------------------- */

/* serval_parse.h's fragment hooks: sv_frag_later, sv_frag6_hdr, sv_frag6_id, sv_frag_record.
 * A first fragment's ports are kept in sv_frags; later fragments of its datagram get them. */

/* Per-CPU scratch for the fragment key, value and IPv6 fragment header: off the stack. */
struct sv_frag_scratch {
	struct sv_frag_key key;
	struct sv_frag_val val;
	__u8 hdr[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sv_frag_scratch);
} sv_frag_scratch SEC(".maps");

/* The scratch with the sv_frags key of p's datagram filled in (NULL: no scratch). */
static __always_inline struct sv_frag_scratch *sv_frag_key_of(const struct sv_pkt *p, __be32 id)
{
	__u32 zero = 0;
	struct sv_frag_scratch *s = bpf_map_lookup_elem(&sv_frag_scratch, &zero);
	if (!s)
		return 0;
	s->key.saddr = p->saddr;
	s->key.daddr = p->daddr;
	s->key.id = id;
	s->key.proto = p->proto;
	s->key.family = p->family;
	s->key.pad[0] = 0;
	s->key.pad[1] = 0;
	return s;
}

/*
 * A parsed first fragment (p->frag == SV_FRAG_FIRST): records its ports for the later
 * fragments of its datagram. The identification is read again here (IPv4: from the header;
 * IPv6: from the scratch sv_frag6_hdr filled) rather than kept live across the transport
 * parsing, which would cost stack.
 */
static __always_inline void sv_frag_record(struct __sk_buff *skb, struct sv_pkt *p)
{
	__be32 id;
	if (p->family == SV_FAMILY_V4) {
		void *data_end = (void *)(long)skb->data_end;
		struct iphdr *ip = (void *)(long)skb->data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return;
		id = bpf_htonl(bpf_ntohs(ip->id));
	} else {
		id = sv_frag6_id();
	}
	struct sv_frag_scratch *s = sv_frag_key_of(p, id);
	if (!s)
		return;
	s->val.sport = p->sport;
	s->val.dport = p->dport;
	s->val.pol_port = p->pol_port;
	s->val.icmp_echo = p->icmp_echo;
	s->val.pad = 0;
	/* LRU: never full; a failure only costs this datagram its later fragments. */
	bpf_map_update_elem(&sv_frags, &s->key, &s->val, BPF_ANY);
	sv_log("fragment: first of id %u recorded", bpf_ntohl(id));
}

/* A later fragment: the ports of its datagram, or SV_PARSE_FRAGMENT when the first fragment
 * was not seen here. */
static __always_inline int sv_frag_later(struct sv_pkt *p, __be32 id)
{
	struct sv_frag_scratch *s = sv_frag_key_of(p, id);
	if (!s)
		return SV_PARSE_FRAGMENT;
	struct sv_frag_val *v = bpf_map_lookup_elem(&sv_frags, &s->key);
	if (!v)
		return SV_PARSE_FRAGMENT;
	p->sport = v->sport;
	p->dport = v->dport;
	p->pol_port = v->pol_port;
	p->icmp_echo = v->icmp_echo;
	p->frag = SV_FRAG_LATER;
	return SV_PARSE_OK;
}

/*
 * Reads the IPv6 fragment header at off into the scratch: returns its next header, with
 * SV_FRAG6_LATER set for a later fragment (offset > 0), or -1 when it cannot be read. Results
 * in registers, not through pointers: taking a local's address would put it on the stack.
 */
static __always_inline int sv_frag6_hdr(struct __sk_buff *skb, __u32 off)
{
	__u32 zero = 0;
	struct sv_frag_scratch *s = bpf_map_lookup_elem(&sv_frag_scratch, &zero);
	if (!s || bpf_skb_load_bytes(skb, off, s->hdr, sizeof(s->hdr)))
		return -1;
	/* fragment offset: the top 13 bits of bytes 2-3 */
	int later = (((__u16)s->hdr[2] << 8) | s->hdr[3]) & 0xfff8;
	return s->hdr[0] | (later ? SV_FRAG6_LATER : 0);
}

/* The identification of the IPv6 fragment header sv_frag6_hdr read last. */
static __always_inline __be32 sv_frag6_id(void)
{
	__u32 zero = 0;
	struct sv_frag_scratch *s = bpf_map_lookup_elem(&sv_frag_scratch, &zero);
	if (!s)
		return 0;
	return ((__be32)s->hdr[4]) | ((__be32)s->hdr[5] << 8) | ((__be32)s->hdr[6] << 16) |
	       ((__be32)s->hdr[7] << 24);
}

/*
 * NAT of a later fragment (no transport header): rewrites only the IP address (IPv4: with
 * the header checksum); the port lives in the first fragment, which the full rewrite changed,
 * and the transport checksum there covers the whole datagram.
 */
static __always_inline int sv_rewrite_l3(struct __sk_buff *skb, struct sv_pkt *p, int src,
					 const union sv_addr *addr, __be16 port)
{
	if (p->family == SV_FAMILY_V4) {
		__be32 from = src ? p->saddr.w[3] : p->daddr.w[3], to = addr->w[3];
		__u32 addr_off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr)
						 : offsetof(struct iphdr, daddr));
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to,
					sizeof(to)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0))
			return -1;
	} else {
		__u32 addr_off = ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr)
						 : offsetof(struct ipv6hdr, daddr));
		if (bpf_skb_store_bytes(skb, addr_off, addr->b, sizeof(*addr), 0))
			return -1;
	}
	if (src) {
		p->saddr = *addr;
		p->sport = port;
	} else {
		p->daddr = *addr;
		p->dport = port;
		p->pol_port = port;
	}
	return 0;
}

/* ---- conntrack -------------------------------------------------------------------------- */

/* Whether a packet from side a (from_a) / b travels in the flow's opening direction. */
static __always_inline int sv_ct_forward(__u32 flags, int from_a)
{
	return from_a == !(flags & SV_CT_F_OPENER_B);
}

static __always_inline void sv_ct_touch(struct sv_ct_val *ct, const struct sv_pkt *p, int from_a,
					__u64 now)
{
	__u32 old = ct->flags;
	__u32 add = sv_ct_bits(p, from_a, old);
	if ((old & add) != add)
		__sync_fetch_and_or(&ct->flags, add);
	ct->last_seen_ns = now;
}

/* Creates an entry for a new flow whose first packet p (sender side from_a) was allowed. */
static __always_inline int sv_ct_create(const struct sv_ct_key *k, const struct sv_pkt *p,
					int from_a, __u32 flags, __u8 kind,
					const union sv_addr *nat_addr, __be16 nat_port,
					__u32 svc_id, __u64 now)
{
	struct sv_ct_val v;
	__builtin_memset(&v, 0, sizeof(v));
	v.created_ns = now;
	v.last_seen_ns = now;
	v.flags = flags | (from_a ? 0 : SV_CT_F_OPENER_B) | sv_ct_bits(p, from_a, 0);
	v.kind = kind;
	v.nat_port = nat_port;
	v.nat_addr = *nat_addr;
	v.svc_id = svc_id;
	int err = bpf_map_update_elem(&sv_ct, k, &v, BPF_NOEXIST);
	/* -EEXIST: another CPU recorded the same new flow first; that entry serves. */
	if (err && err != -17)
		return err;
	return 0;
}

/* ---- policy ----------------------------------------------------------------------------- */

/* The verdict of the endpoint's policy for a packet to/from remote (dir: SV_DIR_*). */
static __always_inline int sv_policy_allows(const struct sv_ep_val *ep, __u8 dir,
					    const union sv_addr *remote, const struct sv_pkt *p)
{
	__u32 id = sv_identity(remote);
	union sv_pol_any_key key;
	struct sv_pol_val *v = sv_policy_lookup(ep->ep_id, dir, id, p, &key);
	int allow = v && v->verdict == SV_VERDICT_ALLOW;
	sv_log("policy ep=%u dir=%u identity=%u", ep->ep_id, dir, id);
	sv_log("policy verdict=%d rule=%u", allow, v ? v->rule_id : 0);
	return allow;
}

/* ---- NAT rewrites ----------------------------------------------------------------------- */

/* Offset of the transport checksum, or 0 when the transport has none we rewrite. */
static __always_inline __u32 sv_l4_csum_off(const struct sv_pkt *p)
{
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + offsetof(struct tcphdr, check);
	if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_UDPLITE)
		return p->l4_off + offsetof(struct udphdr, check); /* UDPLite: the same offset */
	if (p->icmp_echo)
		return p->l4_off + 2; /* type, code, checksum */
	return 0;
}

#include "serval_sctp.h"

/*
 * Rewrites the source (src = 1) or destination address and port of p to addr/port, fixing the
 * IPv4 header checksum and the TCP/UDP/ICMP checksum (pseudo header included where the
 * protocol has one: not ICMPv4). UDP over IPv4 with no checksum (0) stays without one
 * (BPF_F_MARK_MANGLED_0). For ICMP echo the "port" is the identifier, which both directions
 * carry in the same field, so p->sport and p->dport both become port.
 */
static __always_inline int sv_rewrite(struct __sk_buff *skb, struct sv_pkt *p, int src,
				      const union sv_addr *addr, __be16 port)
{
	/* SCTP: the port and its CRC32c (serval_sctp.h), then only the address */
	if (p->proto == IPPROTO_SCTP && sv_sctp_rewrite_port(skb, p, src, port))
		return -1;
	if (p->frag == SV_FRAG_LATER || p->proto == IPPROTO_SCTP)
		return sv_rewrite_l3(skb, p, src, addr, port);
	union sv_addr old_addr = src ? p->saddr : p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	__u32 csum_off = sv_l4_csum_off(p);
	/* UDPLite: a checksum that comes out 0 is sent as 0xffff too (RFC 3828) */
	__u64 mangled0 =
		(p->proto == IPPROTO_UDP || p->proto == IPPROTO_UDPLITE) ? BPF_F_MARK_MANGLED_0 : 0;
	int icmp = p->icmp_echo;

	if (!csum_off)
		return -1;
	if (p->family == SV_FAMILY_V4) {
		__be32 from = old_addr.w[3], to = addr->w[3];
		__u32 addr_off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr)
						 : offsetof(struct iphdr, daddr));
		if (!icmp && bpf_l4_csum_replace(skb, csum_off, from, to,
						 BPF_F_PSEUDO_HDR | mangled0 | sizeof(to)))
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to,
					sizeof(to)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0))
			return -1;
	} else {
		union sv_addr to = *addr;
		__u32 addr_off = ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr)
						 : offsetof(struct ipv6hdr, daddr));
		__s64 diff = bpf_csum_diff(old_addr.w, sizeof(old_addr), to.w, sizeof(to), 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled0))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, to.b, sizeof(to), 0))
			return -1;
	}
	if (old_port != port) {
		__u32 port_off = icmp ? p->l4_off + 4 : p->l4_off + (src ? 0 : 2);
		if (bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled0 | sizeof(port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0))
			return -1;
	}
	if (src) {
		p->saddr = *addr;
		p->sport = port;
	} else {
		p->daddr = *addr;
		p->dport = port;
		if (!icmp)
			p->pol_port = port;
	}
	if (icmp) {
		p->sport = port;
		p->dport = port;
	}
	return 0;
}

/* ---- services --------------------------------------------------------------------------- */

#define SV_SVC_NONE 0
#define SV_SVC_HIT 1
#define SV_SVC_DROP 2

struct sv_backend {
	union sv_addr addr;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
	__u32 fe_flags; /* the frontend's SV_NAT_FE_F_* */
};

/* skb->cb (5 words, this program run's scratch) carries a backend address and port from one
 * stack frame to the next (sv_process to sv_hairpin). */
static __always_inline void sv_backend_to_cb(struct __sk_buff *skb, const struct sv_backend *be)
{
	skb->cb[0] = be->addr.w[0];
	skb->cb[1] = be->addr.w[1];
	skb->cb[2] = be->addr.w[2];
	skb->cb[3] = be->addr.w[3];
	skb->cb[4] = be->port;
}


/* ---- Maglev ----------------------------------------------------------------------------- */

static __always_inline __u32 sv_rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* murmur3's 32-bit block mix. */
static __always_inline __u32 sv_maglev_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = sv_rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = sv_rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

/*
 * The flow hash of a new flow to a Maglev frontend: murmur3-32 (seed SV_MAGLEV_SEED) of the
 * source address (4 big-endian words, IPv4-mapped), the destination address, sport << 16 |
 * dport and the protocol. Only the 5-tuple enters it, so every node computes the same value;
 * serval_calc::maglev::flow_hash is the same function (tests/maglev.rs holds them equal).
 */
static __always_inline __u32 sv_maglev_hash(const struct sv_pkt *p)
{
	__u32 h = SV_MAGLEV_SEED;
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = sv_maglev_mix(h, bpf_ntohl(p->saddr.w[i]));
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = sv_maglev_mix(h, bpf_ntohl(p->daddr.w[i]));
	h = sv_maglev_mix(h, ((__u32)bpf_ntohs(p->sport) << 16) | bpf_ntohs(p->dport));
	h = sv_maglev_mix(h, p->proto);
	h ^= 40; /* the input length in bytes, as murmur3 finalizes */
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	return h ^ (h >> 16);
}

/*
 * The backend of p from the Maglev table of svc_id: entry sv_maglev_hash(p) % M, M read from
 * the table's SV_MAGLEV_META entry. Returns 0 (be->addr/port filled) or -1 (no table: the
 * caller falls back to the random choice).
 */
static __always_inline int sv_maglev_pick(const struct sv_pkt *p, __u32 svc_id,
					  struct sv_backend *be)
{
	struct sv_maglev_key k = {.svc_id = svc_id, .index = SV_MAGLEV_META};
	struct sv_maglev_val *meta = bpf_map_lookup_elem(&sv_maglev, &k);
	if (!meta || meta->size == 0)
		return -1;
	__u32 size = meta->size;
	k.index = sv_maglev_hash(p) % size;
	struct sv_maglev_val *v = bpf_map_lookup_elem(&sv_maglev, &k);
	if (!v)
		return -1;
	be->addr = v->addr;
	be->port = v->port;
	sv_log("service %u: maglev entry %u of %u", svc_id, k.index, size);
	return 0;
}

/*
 * Looks up p's destination as a service frontend and picks a backend: the client's affinity
 * entry when the service has ClientIP affinity and it is fresh, otherwise the flow's Maglev
 * table entry for a SV_NAT_FE_F_MAGLEV frontend, otherwise a random slot among all backends
 * (or only the node-local ones under internalTrafficPolicy: Local).
 * outside: the client is outside the cluster (a packet from an uplink whose source is no
 * pod or node): an external frontend then picks among the node-local backends only under
 * externalTrafficPolicy: Local and among all under Cluster, whatever internalTrafficPolicy
 * says (serval_calc::services::resolve). Clients inside the cluster meet
 * internalTrafficPolicy for every frontend kind (kube-proxy's short-circuit).
 * Returns SV_SVC_NONE (not a service), SV_SVC_HIT (*be filled) or SV_SVC_DROP (*reason:
 * SV_DROP_NO_BACKEND when the frontend has no backend at all, SV_DROP_NO_LOCAL_BACKEND when a
 * node-local policy leaves none).
 */
static __always_inline int sv_service(const struct sv_pkt *p, __u64 now, struct sv_backend *be,
				      int *reason, int outside)
{
	struct sv_nat_fe_key fk;
	__builtin_memset(&fk, 0, sizeof(fk));
	fk.addr = p->daddr;
	fk.port = p->dport;
	fk.proto = p->proto;
	struct sv_nat_fe_val *fe = bpf_map_lookup_elem(&sv_nat_fe, &fk);
	if (!fe)
		return SV_SVC_NONE;

	__u32 svc_id = fe->svc_id;
	__u32 local_flag = (outside && (fe->flags & SV_NAT_FE_F_EXTERNAL)) ? SV_NAT_FE_F_EXT_LOCAL
									  : SV_NAT_FE_F_INT_LOCAL;
	int local_only = (fe->flags & local_flag) != 0;
	__u32 count = local_only ? fe->local_count : fe->count;
	if (count == 0) {
		*reason = fe->count == 0 ? SV_DROP_NO_BACKEND : SV_DROP_NO_LOCAL_BACKEND;
		return SV_SVC_DROP;
	}
	be->svc_id = svc_id;
	be->fe_flags = fe->flags;

	struct sv_nat_aff_key ak;
	__builtin_memset(&ak, 0, sizeof(ak));
	int affinity = fe->flags & SV_NAT_FE_F_AFFINITY;
	__u64 timeout_ns = (__u64)fe->affinity_timeout_s * 1000000000ull;
	if (affinity) {
		ak.client = p->saddr;
		ak.svc_id = svc_id;
		struct sv_nat_aff_val *av = bpf_map_lookup_elem(&sv_nat_aff, &ak);
		if (av && now - av->ts_ns < timeout_ns) {
			av->ts_ns = now;
			be->addr = av->addr;
			be->port = av->port;
			sv_log("service %u: affinity backend", svc_id);
			return SV_SVC_HIT;
		}
	}

	if (!(fe->flags & SV_NAT_FE_F_MAGLEV) || local_only || sv_maglev_pick(p, svc_id, be)) {
		struct sv_nat_be_key bk = {.svc_id = svc_id, .slot = bpf_get_prandom_u32() % count};
		struct sv_nat_be_val *bv = bpf_map_lookup_elem(&sv_nat_be, &bk);
		if (!bv) {
			*reason = SV_DROP_NAT_BACKEND_MISSING;
			return SV_SVC_DROP;
		}
		be->addr = bv->addr;
		be->port = bv->port;
		sv_log("service %u: backend slot %u of %u", svc_id, bk.slot, count);
	}

	if (affinity) {
		struct sv_nat_aff_val av;
		__builtin_memset(&av, 0, sizeof(av));
		av.ts_ns = now;
		av.addr = be->addr;
		av.port = be->port;
		/* LRU: never full; a failure only costs the affinity of this one client. */
		bpf_map_update_elem(&sv_nat_aff, &ak, &av, BPF_ANY);
	}
	return SV_SVC_HIT;
}

/* ---- reject (service without backends) -------------------------------------------------- */

/* sv_process's verdict for "answer the client with a TCP RST / ICMP port unreachable". */
#define SV_ACT_REJECT 0x100
/* ... for "forward the (NATed) packet yourself": sv_fib_forward. */
#define SV_ACT_FORWARD 0x101
/* ... for "a new hairpin flow: masquerade it" (sv_hairpin, with the chosen backend). */
#define SV_ACT_HAIRPIN 0x102
/* ... for "a reply in a flow that came through the NodePort tunnel": sv_tun_reply
 * (serval_tunnel.h: back through the tunnel, or DSR). */
#define SV_ACT_TUN_REPLY 0x122

#define SV_TCP_ACK 0x10
#define SV_ICMP_DEST_UNREACH 3
#define SV_ICMP_PORT_UNREACH 3
#define SV_ICMPV6_DEST_UNREACH 1
#define SV_ICMPV6_PORT_UNREACH 4
/* Bytes of the offending packet an ICMP error quotes (IPv4: a 60-byte header + 8 fits). */
#define SV_QUOTE_MAX 72
#define SV_REPLY_TTL 64

static __always_inline __u16 sv_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct sv_reply {
	__u8 pad[2]; /* puts the IP header on a 4-byte boundary after the 14-byte eth */
	struct ethhdr eth;
	union {
		struct {
			struct iphdr ip;
			__u8 l4[20 + 8];
		} v4;
		struct {
			struct ipv6hdr ip;
			__u8 l4[20 + 8];
		} v6;
	};
};

/* IPv4/IPv6 pseudo header sum (addresses, upper-layer length, protocol) seeded into sum. */
static __always_inline __s64 sv_pseudo_sum(struct sv_reply *r, int v4, __u32 l4_len, __u8 proto)
{
	__be32 tail[2] = {bpf_htonl(l4_len), bpf_htonl(proto)};
	__s64 sum;
	if (v4)
		sum = bpf_csum_diff(0, 0, &r->v4.ip.saddr, 8, 0);
	else
		sum = bpf_csum_diff(0, 0, (__be32 *)&r->v6.ip.saddr, 32, 0);
	if (sum < 0)
		return sum;
	return bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
}

/*
 * Turns the packet (a client's first packet to a service frontend without backends, parsed
 * by sv_parse) into the answer kube-proxy's REJECT gives: a TCP RST for TCP (none for an RST),
 * an ICMP / ICMPv6 port unreachable quoting the packet's start otherwise, and sends it back
 * where it came from: peer = 1 into the workload (tc ingress of the host veth, serval_from_ep),
 * peer = 0 out of the interface it arrived on (an uplink: serval_uplink_in). Not inlined:
 * called from the entry point so its buffers do not add to sv_process's stack.
 */
static __noinline int sv_reject(struct __sk_buff *skb, int peer)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return TC_ACT_SHOT;
	int v4 = p.family == SV_FAMILY_V4;
	struct sv_reply r;
	__builtin_memset(&r, 0, sizeof(r));
	if (bpf_skb_load_bytes(skb, 0, &r.eth, sizeof(r.eth)))
		return TC_ACT_SHOT;
	/* Ethernet: back to the sender. */
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, r.eth.h_source, ETH_ALEN);
	__builtin_memcpy(r.eth.h_source, r.eth.h_dest, ETH_ALEN);
	__builtin_memcpy(r.eth.h_dest, mac, ETH_ALEN);

	__u32 ip_len = v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 l4_len;
	__u8 proto;
	__u8 quote[SV_QUOTE_MAX];
	__u32 quote_len = 0;
	__u8 *l4 = v4 ? r.v4.l4 : r.v6.l4;

	if (p.proto == IPPROTO_TCP) {
		if (p.tcp_flags & SV_TCP_RST)
			return TC_ACT_SHOT; /* never answer a reset */
		struct tcphdr in;
		if (bpf_skb_load_bytes(skb, p.l4_off, &in, sizeof(in)))
			return TC_ACT_SHOT;
		/* segment length: the IP payload after the TCP header, plus SYN and FIN */
		__u32 pkt_l3_end;
		if (v4) {
			struct iphdr ip;
			if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
				return TC_ACT_SHOT;
			pkt_l3_end = ETH_HLEN + bpf_ntohs(ip.tot_len);
		} else {
			struct ipv6hdr ip;
			if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
				return TC_ACT_SHOT;
			pkt_l3_end = ETH_HLEN + sizeof(ip) + bpf_ntohs(ip.payload_len);
		}
		__u32 hdr_end = p.l4_off + in.doff * 4;
		__u32 seg_len = pkt_l3_end > hdr_end ? pkt_l3_end - hdr_end : 0;
		if (p.tcp_flags & SV_TCP_SYN)
			seg_len++;
		if (p.tcp_flags & SV_TCP_FIN)
			seg_len++;
		struct tcphdr *t = (struct tcphdr *)l4;
		t->source = in.dest;
		t->dest = in.source;
		t->doff = sizeof(*t) / 4;
		t->rst = 1;
		if (p.tcp_flags & SV_TCP_ACK) {
			/* RFC 793: <SEQ=SEG.ACK><CTL=RST> */
			t->seq = in.ack_seq;
		} else {
			/* <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> */
			t->ack = 1;
			t->ack_seq = bpf_htonl(bpf_ntohl(in.seq) + seg_len);
		}
		l4_len = sizeof(*t);
		proto = IPPROTO_TCP;
	} else if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6) {
		return TC_ACT_SHOT; /* no ICMP error about an ICMP message */
	} else {
		/* ICMP(v6) port unreachable quoting the IP header(s) and 8 bytes of payload */
		__u32 avail = skb->len > ETH_HLEN ? skb->len - ETH_HLEN : 0;
		quote_len = p.l4_off - ETH_HLEN + 8;
		if (quote_len > avail)
			quote_len = avail;
		if (quote_len > SV_QUOTE_MAX)
			quote_len = SV_QUOTE_MAX;
		__builtin_memset(quote, 0, sizeof(quote));
		if (quote_len < 1 || bpf_skb_load_bytes(skb, ETH_HLEN, quote, quote_len))
			return TC_ACT_SHOT;
		l4[0] = v4 ? SV_ICMP_DEST_UNREACH : SV_ICMPV6_DEST_UNREACH;
		l4[1] = v4 ? SV_ICMP_PORT_UNREACH : SV_ICMPV6_PORT_UNREACH;
		l4_len = 8;
		proto = v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
	}

	__u32 total_l4 = l4_len + quote_len;
	if (v4) {
		r.v4.ip.version = 4;
		r.v4.ip.ihl = 5;
		r.v4.ip.tot_len = bpf_htons(sizeof(struct iphdr) + total_l4);
		r.v4.ip.ttl = SV_REPLY_TTL;
		r.v4.ip.protocol = proto;
		r.v4.ip.saddr = p.daddr.w[3];
		r.v4.ip.daddr = p.saddr.w[3];
		__s64 s = bpf_csum_diff(0, 0, (__be32 *)&r.v4.ip, sizeof(r.v4.ip), 0);
		if (s < 0)
			return TC_ACT_SHOT;
		r.v4.ip.check = sv_csum_fold(s);
	} else {
		r.v6.ip.version = 6;
		r.v6.ip.payload_len = bpf_htons(total_l4);
		r.v6.ip.nexthdr = proto;
		r.v6.ip.hop_limit = SV_REPLY_TTL;
		__builtin_memcpy(&r.v6.ip.saddr, p.daddr.b, 16);
		__builtin_memcpy(&r.v6.ip.daddr, p.saddr.b, 16);
	}

	/* transport checksum: the pseudo header except for ICMPv4, the header, the quote */
	__s64 sum = 0;
	if (proto != IPPROTO_ICMP) {
		sum = sv_pseudo_sum(&r, v4, total_l4, proto);
		if (sum < 0)
			return TC_ACT_SHOT;
	}
	sum = bpf_csum_diff(0, 0, (__be32 *)l4, l4_len, sum);
	if (sum < 0)
		return TC_ACT_SHOT;
	__u32 quote_words = ((quote_len + 3) & ~3u) & 0x7f;
	if (quote_words > SV_QUOTE_MAX)
		return TC_ACT_SHOT;
	if (quote_words) {
		sum = bpf_csum_diff(0, 0, (__be32 *)quote, quote_words, sum);
		if (sum < 0)
			return TC_ACT_SHOT;
	}
	__u16 csum = sv_csum_fold(sum);
	if (proto == IPPROTO_TCP)
		((struct tcphdr *)l4)->check = csum;
	else
		__builtin_memcpy(&l4[2], &csum, sizeof(csum));

	__u32 hdr_len = ETH_HLEN + ip_len + l4_len;
	if (bpf_skb_change_tail(skb, hdr_len + quote_len, 0))
		return TC_ACT_SHOT;
	if (hdr_len > sizeof(r) - 2 || bpf_skb_store_bytes(skb, 0, &r.eth, hdr_len & 0x7f, 0))
		return TC_ACT_SHOT;
	if (quote_len) {
		__u32 n = quote_len & 0x7f;
		if (n > SV_QUOTE_MAX || bpf_skb_store_bytes(skb, hdr_len, quote, n, 0))
			return TC_ACT_SHOT;
	}
	sv_log("reject: proto=%u sent back", proto);
	/* Into the workload's interface (the veth peer), past the host veth's egress: there
	 * serval_to_ep would take the answer for a new flow and police it against the client's
	 * ingress policy (iptables lets REJECT's answer pass as part of the flow). */
	if (!peer)
		return bpf_redirect(skb->ifindex, 0); /* an uplink: back out where it came in */
	return bpf_redirect_peer(skb->ifindex, 0);
}

/* ---- the packet path -------------------------------------------------------------------- */

static __always_inline int sv_is_ndp(const struct sv_pkt *p)
{
	__u8 type = bpf_ntohs(p->pol_port) >> 8;
	return p->proto == IPPROTO_ICMPV6 && sv_icmp6_is_nd(type);
}

/*
 * Not inlined: the entry points call it and then, for SV_ACT_REJECT, sv_reject, so the two
 * frames are never on the stack together (the combined limit is 512 bytes).
 * dir is the policy direction of the endpoint this program serves: SV_DIR_EGRESS for packets
 * the workload sends (from_ep), SV_DIR_INGRESS for packets delivered to it (to_ep); ifindex
 * is that endpoint's host-side interface (skb->ifindex, or for the fast path's inline
 * ingress check the destination's).
 */
static __noinline int sv_process(struct __sk_buff *skb, const __u8 dir, __u32 ifindex)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));

	int rc = sv_parse(skb, &p);
	if (rc == SV_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (rc == SV_PARSE_FRAGMENT)
		return sv_drop(SV_DROP_FRAGMENT);
	if (rc != SV_PARSE_OK)
		return sv_drop(SV_DROP_MALFORMED);
	/* IPv6 neighbour discovery (link-local, no policy) must always work. */
	if (sv_is_ndp(&p))
		return TC_ACT_OK;

	struct sv_ep_val *ep = bpf_map_lookup_elem(&sv_eps, &ifindex);
	if (!ep)
		return sv_drop(SV_DROP_UNKNOWN_IFACE);

	if (dir == SV_DIR_EGRESS) {
		int ok = p.family == SV_FAMILY_V4
				 ? (ep->flags & SV_EP_F_V4) && sv_addr_eq(&p.saddr, &ep->addr4)
				 : (ep->flags & SV_EP_F_V6) && sv_addr_eq(&p.saddr, &ep->addr6);
		if (!ok)
			return sv_drop(SV_DROP_SPOOFED);
	}

	__u64 now = bpf_ktime_get_ns();
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);

	/* The pre-DNAT tuple of a NATed flow: replies (already reverse-NATed) pass; forward
	 * packets go to the backend chosen for the flow. */
	struct sv_ct_key nat_key = key;
	int nat_from_a = from_a;
	int nat_known = 0;
	struct sv_backend be;
	__builtin_memset(&be, 0, sizeof(be));
	union sv_addr vip = p.daddr;
	__be16 vport = p.dport;

	if (ct && ct->kind == SV_CT_TYPE_NAT_FWD) {
		sv_ct_touch(ct, &p, from_a, now);
		if (!sv_ct_forward(ct->flags, from_a)) {
			sv_log("ct: reply of a NATed flow");
			return TC_ACT_OK;
		}
		be.addr = ct->nat_addr;
		be.port = ct->nat_port;
		be.svc_id = ct->svc_id;
		int masq = ct->flags & SV_CT_F_SNAT_FWD;
		if (sv_rewrite(skb, &p, 0, &be.addr, be.port))
			return sv_drop(SV_DROP_REWRITE);
		if (masq && sv_rewrite(skb, &p, 1, &ct->snat_addr, ct->snat_port))
			return sv_drop(SV_DROP_REWRITE);
		nat_known = 1;
		from_a = sv_ct_key_of(&p, &key);
		ct = bpf_map_lookup_elem(&sv_ct, &key);
		if (!ct && masq) {
			/* the masqueraded flow's wire entry is gone: start over with a new flow */
			bpf_map_delete_elem(&sv_ct, &nat_key);
			return sv_drop(SV_DROP_CT_FULL);
		}
	}

	if (ct) {
		sv_ct_touch(ct, &p, from_a, now);
		/* Packets the workload sends in a flow NATed by an uplink program or masqueraded
		 * (hairpin) may carry an address of this node as their source: forwarded by FIB
		 * lookup, past the host's routing (which drops them as martians). */
		int pass = (dir == SV_DIR_EGRESS && (ct->flags & SV_CT_F_REDIRECT)) ? SV_ACT_FORWARD
										    : TC_ACT_OK;
		if (!sv_ct_forward(ct->flags, from_a)) {
			if (dir == SV_DIR_EGRESS && (ct->flags & SV_CT_F_TUN_REPLY))
				return SV_ACT_TUN_REPLY;
			if (ct->flags & SV_CT_F_DNAT) {
				/* reply from the backend: the client must see the VIP */
				union sv_addr orig = ct->nat_addr;
				if (sv_rewrite(skb, &p, 1, &orig, ct->nat_port))
					return sv_drop(SV_DROP_REWRITE);
				sv_log("ct: reverse NAT of a reply");
			}
			/* ... and goes back to the client's own address and port */
			if ((ct->flags & SV_CT_F_SNAT_REV) &&
			    sv_rewrite(skb, &p, 0, &ct->snat_addr, ct->snat_port))
				return sv_drop(SV_DROP_REWRITE);
			return pass;
		}
		__u32 leg = dir == SV_DIR_EGRESS ? SV_CT_F_APPROVED_SRC : SV_CT_F_APPROVED_DST;
		if (ct->flags & leg)
			return pass; /* established: no policy */
		union sv_addr *remote = dir == SV_DIR_EGRESS ? &p.daddr : &p.saddr;
		if (!sv_policy_allows(ep, dir, remote, &p))
			return sv_drop(SV_DROP_POLICY);
		__sync_fetch_and_or(&ct->flags, leg);
		return pass;
	}

	/* A new flow. Services are resolved where the client's packets enter: at from_ep. */
	int natted = nat_known;
	if (!nat_known && dir == SV_DIR_EGRESS) {
		int reason = SV_DROP_NO_BACKEND;
		int svc = sv_service(&p, now, &be, &reason, 0);
		if (svc == SV_SVC_DROP && reason == SV_DROP_NO_BACKEND) {
			sv_drop(reason); /* counted as no_backend, answered by sv_reject */
			return SV_ACT_REJECT;
		}
		if (svc == SV_SVC_DROP)
			return sv_drop(reason);
		natted = svc == SV_SVC_HIT;
	}

	/* Policy sees the post-DNAT destination. */
	struct sv_pkt post = p;
	if (natted && !nat_known) {
		post.daddr = be.addr;
		post.dport = be.port;
		post.pol_port = be.port;
	}
	union sv_addr *remote = dir == SV_DIR_EGRESS ? &post.daddr : &post.saddr;
	if (!sv_policy_allows(ep, dir, remote, &post))
		return sv_drop(SV_DROP_POLICY);

	__u32 leg = dir == SV_DIR_EGRESS ? SV_CT_F_APPROVED_SRC : SV_CT_F_APPROVED_DST;
	union sv_addr zero;
	__builtin_memset(&zero, 0, sizeof(zero));
	if (natted && !nat_known && dir == SV_DIR_EGRESS && sv_addr_eq(&be.addr, &p.saddr)) {
		/* serval_from_ep masquerades it (sv_hairpin, in its own stack frame): the chosen
		 * backend travels in skb->cb */
		sv_backend_to_cb(skb, &be);
		return SV_ACT_HAIRPIN;
	}
	if (natted) {
		if (!nat_known &&
		    sv_ct_create(&nat_key, &p, nat_from_a, 0, SV_CT_TYPE_NAT_FWD, &be.addr, be.port,
				 be.svc_id, now))
			return sv_drop(SV_DROP_CT_FULL);
		struct sv_ct_key post_key;
		int post_from_a = sv_ct_key_of(&post, &post_key);
		/* a SYN's new flow replaces a closed flow's wire entry of this tuple (serval_ct.h) */
		if ((p.tcp_flags & (SV_TCP_SYN | SV_TCP_ACK | SV_TCP_RST)) == SV_TCP_SYN &&
		    p.proto == IPPROTO_TCP)
			bpf_map_delete_elem(&sv_ct, &post_key);
		if (sv_ct_create(&post_key, &post, post_from_a, leg | SV_CT_F_DNAT,
				 SV_CT_TYPE_NORMAL, &vip, vport, be.svc_id, now)) {
			if (!nat_known)
				bpf_map_delete_elem(&sv_ct, &nat_key);
			return sv_drop(SV_DROP_CT_FULL);
		}
		if (!nat_known && sv_rewrite(skb, &p, 0, &be.addr, be.port))
			return sv_drop(SV_DROP_REWRITE);
		sv_log("new NATed flow svc=%u", be.svc_id);
		return TC_ACT_OK;
	}
	if (sv_ct_create(&key, &p, from_a, leg, SV_CT_TYPE_NORMAL, &zero, 0, 0, now))
		return sv_drop(SV_DROP_CT_FULL);
	sv_log("new flow proto=%u", p.proto);
	return TC_ACT_OK;
}

/* ---- source NAT and forwarding: serval_nat.h --------------------------------------------- */

#include "serval_nat.h"

/* ---- NodePort tunnel and DSR: serval_tunnel.h --------------------------------------------- */

#include "serval_tunnel.h"

/* ---- conntrack tuple reuse: serval_ct.h -------------------------------------------------- */

#include "serval_ct.h"

/* ---- ICMP errors about tracked flows: serval_icmp.h --------------------------------------- */

#include "serval_icmp.h"

/*
 * Packets the workload sends. Allowed packets to another workload take the fast path
 * (sv_fast_target): on this node the destination's ingress check (what serval_to_ep would
 * do) runs here and the packet goes straight into the destination's namespace
 * (bpf_redirect_peer), past the host stack and serval_to_ep; to a workload on another node it
 * leaves by FIB lookup and redirect. Whatever the FIB cannot resolve takes the host stack.
 */
SEC("classifier")
int serval_from_ep(struct __sk_buff *skb)
{
	sv_ct_reuse(skb);
	int verdict = sv_process_related(skb, SV_DIR_EGRESS, skb->ifindex);
	if (verdict == SV_ACT_REJECT)
		return sv_reject(skb, 1);
	if (verdict == SV_ACT_TUN_REPLY)
		return sv_tun_reply(skb);
	if (verdict == SV_ACT_HAIRPIN)
		verdict = sv_hairpin(skb);
	if (verdict == SV_ACT_FORWARD)
		return sv_fib_forward(skb, TC_ACT_OK, 0);
	if (verdict != TC_ACT_OK)
		return verdict;
	int target = sv_fast_target(skb);
	if (target == SV_FAST_REMOTE)
		return sv_fib_forward(skb, TC_ACT_OK, 0);
	if (target > 0) {
		verdict = sv_process_related(skb, SV_DIR_INGRESS, (__u32)target);
		if (verdict != TC_ACT_OK)
			return verdict;
		return sv_fib_forward(skb, TC_ACT_OK, (__u32)target);
	}
	return TC_ACT_OK;
}

SEC("classifier")
int serval_to_ep(struct __sk_buff *skb)
{
	sv_ct_reuse(skb);
	return sv_process_related(skb, SV_DIR_INGRESS, skb->ifindex);
}

/* ---- uplink and VXLAN devices: serval_uplink.h ------------------------------------------ */

#include "serval_hostnat.h"
#include "serval_uplink.h"
