/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Conntrack tuple reuse: part of serval_tc.c (included after sv_process; it uses the parsing
 * and conntrack helpers above it), not a standalone header.
 *
 *   sv_ct_reuse   run first by every tc entry point: a TCP SYN without ACK whose tuple has
 *                 an entry of a flow that is over (RST seen, FIN both ways, or idle past its
 *                 timeout but not swept yet) deletes that entry and its NAT twin, so the SYN
 *                 opens a new flow: policy evaluated again, a new backend chosen, new
 *                 translations. Without it the new connection inherits the old one's NAT
 *                 (its replies translated back to the old frontend: the client never sees
 *                 them and the connection times out).
 *
 * NAT twins (serval_maps.h): a NAT_FWD entry (the client's original tuple) and the wire entry
 * it names (DNAT), or an original NAT outgoing entry (SNAT_FWD) and its wire entry (SNAT_REV).
 * A twin is deleted only when it points back at the entry being deleted. The old flow's state
 * is read from both: a reply's RST only marks the wire entry.
 *
 * Timeouts: crates/dp-bpf/src/conntrack.rs CtTimeouts::default() (Calico's), for TCP.
 */
#ifndef SERVAL_CT_H
#define SERVAL_CT_H

#define SV_NS_PER_S 1000000000ull
#define SV_CT_TCP_SYN_SENT_NS (20 * SV_NS_PER_S)
#define SV_CT_TCP_ESTABLISHED_NS (3600 * SV_NS_PER_S)
#define SV_CT_TCP_FINS_SEEN_NS (30 * SV_NS_PER_S)
#define SV_CT_TCP_RESET_SEEN_NS (40 * SV_NS_PER_S)

/* Whether a TCP flow's entry is over: closed (RST, FIN both ways) or idle past its timeout. */
static __always_inline int sv_ct_tcp_over(const struct sv_ct_val *ct, __u64 now)
{
	__u32 f = ct->flags;
	if ((f & SV_CT_F_RST) || ((f & SV_CT_F_FIN_A) && (f & SV_CT_F_FIN_B)))
		return 1;
	__u64 idle = now > ct->last_seen_ns ? now - ct->last_seen_ns : 0;
	__u64 timeout =
		(f & SV_CT_F_ESTABLISHED) ? SV_CT_TCP_ESTABLISHED_NS : SV_CT_TCP_SYN_SENT_NS;
	return idle > timeout;
}

/* Per-CPU scratch for the twin's key (off the stack). */
struct sv_ct_reuse_scratch {
	struct sv_ct_key key;
	struct sv_ct_key twin;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sv_ct_reuse_scratch);
} sv_ct_reuse_scratch SEC(".maps");

/* Fills k with the normalised key of the flow (a, ap) <-> (b, bp). */
static __always_inline void sv_ct_key_pair(struct sv_ct_key *k, const union sv_addr *a,
					   __be16 ap, const union sv_addr *b, __be16 bp,
					   __u8 proto, __u8 family)
{
	int c = sv_addr_cmp(a, b);
	int a_first = c < 0 || (c == 0 && bpf_ntohs(ap) <= bpf_ntohs(bp));
	__builtin_memset(k, 0, sizeof(*k));
	k->addr_a = a_first ? *a : *b;
	k->addr_b = a_first ? *b : *a;
	k->port_a = a_first ? ap : bp;
	k->port_b = a_first ? bp : ap;
	k->proto = proto;
	k->family = family;
}

#define SV_TWIN_NONE 0
#define SV_TWIN_NAT 1 /* the twin's nat_* must name this entry's responder */
#define SV_TWIN_SNAT 2 /* the twin's snat_* must name this entry's opener */

/*
 * s->key holds the key of a TCP flow's entry that a SYN without ACK found: when the flow is
 * over (the entry's or its twin's state), deletes both and returns 1.
 */
static __always_inline int sv_ct_reap(struct sv_ct_reuse_scratch *s, __u64 now)
{
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &s->key);
	if (!ct)
		return 0;
	__u32 f = ct->flags;
	int ob = (f & SV_CT_F_OPENER_B) != 0;
	union sv_addr *opener = ob ? &s->key.addr_b : &s->key.addr_a;
	__be16 opener_port = ob ? s->key.port_b : s->key.port_a;
	union sv_addr *responder = ob ? &s->key.addr_a : &s->key.addr_b;
	__be16 responder_port = ob ? s->key.port_a : s->key.port_b;
	int twin = SV_TWIN_NONE;
	if (ct->kind == SV_CT_TYPE_NAT_FWD) {
		/* the wire entry: (masquerade source or the client) -> the backend */
		int masq = (f & SV_CT_F_SNAT_FWD) != 0;
		sv_ct_key_pair(&s->twin, masq ? &ct->snat_addr : opener,
			       masq ? ct->snat_port : opener_port, &ct->nat_addr, ct->nat_port,
			       s->key.proto, s->key.family);
		twin = SV_TWIN_NAT;
	} else if (f & SV_CT_F_DNAT) {
		/* the NAT_FWD entry: (the original client) -> the frontend */
		int masq = (f & SV_CT_F_SNAT_REV) != 0;
		sv_ct_key_pair(&s->twin, masq ? &ct->snat_addr : opener,
			       masq ? ct->snat_port : opener_port, &ct->nat_addr, ct->nat_port,
			       s->key.proto, s->key.family);
		twin = SV_TWIN_NAT;
	} else if (f & (SV_CT_F_SNAT_FWD | SV_CT_F_SNAT_REV)) {
		/* NAT outgoing: the other side of the source translation, same destination */
		sv_ct_key_pair(&s->twin, &ct->snat_addr, ct->snat_port, responder, responder_port,
			       s->key.proto, s->key.family);
		twin = SV_TWIN_SNAT;
	}
	int over = sv_ct_tcp_over(ct, now);
	struct sv_ct_val *tv = twin ? bpf_map_lookup_elem(&sv_ct, &s->twin) : 0;
	if (tv) {
		/* only our own twin: it names this entry's responder (NAT) or opener (SNAT) */
		int mine = twin == SV_TWIN_NAT ? sv_addr_eq(&tv->nat_addr, responder) &&
							 tv->nat_port == responder_port
					       : sv_addr_eq(&tv->snat_addr, opener) &&
							 tv->snat_port == opener_port;
		if (!mine)
			tv = 0;
	}
	if (!over && !(tv && sv_ct_tcp_over(tv, now)))
		return 0;
	if (tv)
		bpf_map_delete_elem(&sv_ct, &s->twin);
	bpf_map_delete_elem(&sv_ct, &s->key);
	sv_log("ct: SYN reuses the tuple of a closed flow: entries deleted");
	return 1;
}

/*
 * Whether the frame may be a TCP segment with SYN and without ACK (and RST): read with direct
 * packet access so that other packets cost a few loads. IPv6 with extension headers answers
 * 1 (the caller parses properly).
 */
static __always_inline int sv_maybe_syn(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u8 *tcp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP ||
		    (ip->frag_off & bpf_htons(SV_IP_OFFSET)))
			return 0;
		tcp = (__u8 *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		if (ip6->nexthdr != IPPROTO_TCP)
			return ip6->nexthdr == IPPROTO_HOPOPTS || ip6->nexthdr == IPPROTO_ROUTING ||
			       ip6->nexthdr == IPPROTO_DSTOPTS || ip6->nexthdr == IPPROTO_FRAGMENT;
		tcp = (__u8 *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(tcp + 14) > data_end)
		return 1; /* not in the linear part: parse it */
	return (tcp[13] & (SV_TCP_SYN | SV_TCP_ACK | SV_TCP_RST)) == SV_TCP_SYN;
}

/* See the file comment. Its own stack frame, a sibling of sv_process. */
static __noinline int sv_ct_reuse(struct __sk_buff *skb)
{
	if (!sv_maybe_syn(skb))
		return 0;
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK || p.proto != IPPROTO_TCP ||
	    (p.tcp_flags & (SV_TCP_SYN | SV_TCP_ACK | SV_TCP_RST)) != SV_TCP_SYN)
		return 0;
	__u32 zero = 0;
	struct sv_ct_reuse_scratch *s = bpf_map_lookup_elem(&sv_ct_reuse_scratch, &zero);
	if (!s)
		return 0;
	sv_ct_key_of(&p, &s->key);
	return sv_ct_reap(s, bpf_ktime_get_ns());
}

#endif /* SERVAL_CT_H */
