/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors about tracked flows: part of serval_tc.c (included after sv_process; it uses
 * the parsing, conntrack and policy helpers above it), not a standalone header.
 *
 *   sv_icmp_related   run before sv_process / the uplink programs' own work: an ICMP or
 *                     ICMPv6 error (destination unreachable, fragmentation needed / packet
 *                     too big, time exceeded, parameter problem) whose embedded packet
 *                     belongs to a flow in sv_ct is RELATED to that flow (Calico's and
 *                     conntrack's semantics): it passes without policy and without an entry
 *                     of its own, translated the way the flow is, so that its receiver sees
 *                     an error about the addresses it used:
 *                       - the embedded packet's addresses and ports, the embedded IPv4
 *                         header checksum;
 *                       - the outer address that is the flow's (the error's destination, and
 *                         its source when the flow's peer sent it rather than a router);
 *                       - the ICMP / ICMPv6 checksum (ICMPv6: pseudo header included).
 *                     The embedded transport checksum is left as quoted (the receiver's
 *                     stack does not check it; the quote is often too short to hold it).
 *                     Errors about unknown flows go on as before (policed as ICMP
 *                     type/code, tracked as ICMP).
 *
 * Which translation: the embedded packet E travelled opposite to the error. Its entry says
 *   - NAT_FWD (the client's original tuple) and E is a reply (the client's error about a
 *     reply from the frontend): the flow's forward translation, i.e. E's source becomes the
 *     backend (and the error's destination with it); with masquerade (SNAT_FWD) E's
 *     destination and the error's source become the masquerade address;
 *   - a wire entry with DNAT / SNAT_REV and E is a forward packet (the backend's or a
 *     router's error about the client's packet): the replies' reverse translation, E's
 *     destination becomes the frontend (and the error's source, if the backend sent it),
 *     with SNAT_REV E's source and the error's destination become the original client;
 *   - at the uplink's egress only (NAT outgoing, whose source translation happens there): an
 *     original entry with SNAT_FWD and E a reply: E's destination and the error's source
 *     become the node's address and port.
 * Anything else tracked passes untranslated.
 */
#ifndef SERVAL_ICMP_H
#define SERVAL_ICMP_H

/* Where sv_icmp_related runs. */
#define SV_ICMP_AT_EP_EGRESS 0 /* serval_from_ep (SV_DIR_EGRESS) */
#define SV_ICMP_AT_EP_INGRESS 1 /* serval_to_ep and the fast path's ingress check */
#define SV_ICMP_AT_UPLINK_IN 2
#define SV_ICMP_AT_UPLINK_OUT 3

/* sv_icmp_related's verdict for "not an error about a tracked flow: go on as before". */
#define SV_ICMP_UNRELATED 0x130

#define SV_ICMP_TIME_EXCEEDED 11
#define SV_ICMP_PARAMETERPROB 12
#define SV_ICMPV6_PKT_TOOBIG 2
#define SV_ICMPV6_TIME_EXCEED 3
#define SV_ICMPV6_PARAMPROB 4

/* Whether the frame may be an ICMP error (direct packet access: a few loads for the rest).
 * IPv6 with extension headers before ICMPv6 is not recognised (passes as before). */
static __always_inline int sv_maybe_icmp_err(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u8 *icmp;
	int v4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_ICMP ||
		    (ip->frag_off & bpf_htons(SV_IP_OFFSET | SV_IP_MF)))
			return 0;
		icmp = (__u8 *)ip + ip->ihl * 4;
		v4 = 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
			return 0;
		icmp = (__u8 *)(ip6 + 1);
		v4 = 0;
	} else {
		return 0;
	}
	if ((void *)(icmp + 1) > data_end)
		return 0;
	__u8 t = icmp[0];
	if (v4)
		return t == SV_ICMP_DEST_UNREACH || t == SV_ICMP_TIME_EXCEEDED ||
		       t == SV_ICMP_PARAMETERPROB;
	return t == SV_ICMPV6_DEST_UNREACH || t == SV_ICMPV6_PKT_TOOBIG ||
	       t == SV_ICMPV6_TIME_EXCEED || t == SV_ICMPV6_PARAMPROB;
}

/* The error as parsed: offsets and the embedded packet's tuple. */
struct sv_icmp_err {
	union sv_addr osrc; /* the error's outer addresses */
	union sv_addr odst;
	__u32 csum_off; /* the ICMP checksum */
	__u32 in_ip; /* the embedded IP header */
	__u32 in_l4; /* the embedded transport header */
	__u32 in_sport_off; /* where E's source / destination "port" is (echo: the identifier) */
	__u32 in_dport_off;
	__u8 v4;
	__u8 has_ports;
	__u8 pad[2];
};

/* Rewrites the outer source (src) or destination address. */
static __always_inline int sv_icmp_outer(struct __sk_buff *skb, const struct sv_icmp_err *e,
					 int src, const union sv_addr *from, const union sv_addr *to)
{
	if (e->v4) {
		__u32 off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr)
					    : offsetof(struct iphdr, daddr));
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from->w[3],
					to->w[3], 4))
			return -1;
		return bpf_skb_store_bytes(skb, off, &to->w[3], 4, 0) ? -1 : 0;
	}
	__u32 off = ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr)
				    : offsetof(struct ipv6hdr, daddr));
	__s64 diff = bpf_csum_diff((__be32 *)from->w, 16, (__be32 *)to->w, 16, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, e->csum_off, 0, diff, BPF_F_PSEUDO_HDR))
		return -1;
	return bpf_skb_store_bytes(skb, off, to->b, 16, 0) ? -1 : 0;
}

/* Rewrites the embedded packet's source (src) or destination address and port. */
static __always_inline int sv_icmp_inner(struct __sk_buff *skb, const struct sv_icmp_err *e,
					 int src, const union sv_addr *from, const union sv_addr *to,
					 __be16 from_port, __be16 to_port)
{
	if (e->v4) {
		__u32 off = e->in_ip + (src ? offsetof(struct iphdr, saddr)
					    : offsetof(struct iphdr, daddr));
		/* the embedded header's checksum moves opposite to the address: the ICMP
		 * checksum, over both, stays */
		if (bpf_l3_csum_replace(skb, e->in_ip + offsetof(struct iphdr, check), from->w[3],
					to->w[3], 4) ||
		    bpf_skb_store_bytes(skb, off, &to->w[3], 4, 0))
			return -1;
	} else {
		__u32 off = e->in_ip + (src ? offsetof(struct ipv6hdr, saddr)
					    : offsetof(struct ipv6hdr, daddr));
		__s64 diff = bpf_csum_diff((__be32 *)from->w, 16, (__be32 *)to->w, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, e->csum_off, 0, diff, 0) ||
		    bpf_skb_store_bytes(skb, off, to->b, 16, 0))
			return -1;
	}
	if (!e->has_ports || from_port == to_port)
		return 0;
	__u32 poff = src ? e->in_sport_off : e->in_dport_off;
	if (bpf_l4_csum_replace(skb, e->csum_off, from_port, to_port, 2) ||
	    bpf_skb_store_bytes(skb, poff, &to_port, 2, 0))
		return -1;
	return 0;
}

/*
 * Parses an ICMP error's outer and embedded headers into *e and *in (the embedded packet's
 * tuple as an sv_pkt). Returns 0, or -1 when it is not an error we can relate.
 */
static __always_inline int sv_icmp_parse(struct __sk_buff *skb, struct sv_icmp_err *e,
					 struct sv_pkt *in)
{
	__builtin_memset(in, 0, sizeof(*in));
	__u32 l4;
	if (e->v4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl < 5)
			return -1;
		sv_addr_v4(&e->osrc, ip.saddr);
		sv_addr_v4(&e->odst, ip.daddr);
		l4 = ETH_HLEN + ip.ihl * 4;
		e->in_ip = l4 + 8;
		struct iphdr inner;
		if (bpf_skb_load_bytes(skb, e->in_ip, &inner, sizeof(inner)) || inner.ihl < 5 ||
		    inner.version != 4 || (inner.frag_off & bpf_htons(SV_IP_OFFSET)))
			return -1;
		sv_addr_v4(&in->saddr, inner.saddr);
		sv_addr_v4(&in->daddr, inner.daddr);
		in->proto = inner.protocol;
		in->family = SV_FAMILY_V4;
		e->in_l4 = e->in_ip + inner.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(e->osrc.b, &ip6.saddr, 16);
		__builtin_memcpy(e->odst.b, &ip6.daddr, 16);
		l4 = ETH_HLEN + sizeof(ip6);
		e->in_ip = l4 + 8;
		if (bpf_skb_load_bytes(skb, e->in_ip, &ip6, sizeof(ip6)) || ip6.version != 6)
			return -1;
		__builtin_memcpy(in->saddr.b, &ip6.saddr, 16);
		__builtin_memcpy(in->daddr.b, &ip6.daddr, 16);
		in->proto = ip6.nexthdr; /* extension headers in the quote: not related */
		in->family = SV_FAMILY_V6;
		e->in_l4 = e->in_ip + sizeof(ip6);
	}
	e->csum_off = l4 + 2;
	__u8 h[8];
	switch (in->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, e->in_l4, h, 4))
			return -1;
		__builtin_memcpy(&in->sport, &h[0], 2);
		__builtin_memcpy(&in->dport, &h[2], 2);
		e->in_sport_off = e->in_l4;
		e->in_dport_off = e->in_l4 + 2;
		e->has_ports = 1;
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* an error about an echo: its identifier; no error about an error */
		if (bpf_skb_load_bytes(skb, e->in_l4, h, 8))
			return -1;
		if (h[0] != SV_ICMP_ECHO && h[0] != SV_ICMP_ECHOREPLY &&
		    h[0] != SV_ICMPV6_ECHO_REQUEST && h[0] != SV_ICMPV6_ECHO_REPLY)
			return -1;
		__builtin_memcpy(&in->sport, &h[4], 2);
		in->dport = in->sport;
		in->icmp_echo = 1;
		e->in_sport_off = e->in_l4 + 4;
		e->in_dport_off = e->in_l4 + 4;
		e->has_ports = 1;
		return 0;
	default:
		e->has_ports = 0;
		return 0;
	}
}

/* Per-CPU scratch for the parsed error and the embedded packet (off the stack). */
struct sv_icmp_scratch {
	struct sv_icmp_err e;
	struct sv_pkt in;
	struct sv_ct_key key;
	union sv_addr to; /* a translation's address (copied out of the entry) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sv_icmp_scratch);
} sv_icmp_scratch SEC(".maps");

/*
 * See the file comment. at: SV_ICMP_AT_*; ifindex: the endpoint's host interface (workload
 * contexts). Returns SV_ICMP_UNRELATED, the context's "go on" verdict for a related error
 * (TC_ACT_OK at an endpoint, SV_NEXT at the uplink), SV_ACT_FORWARD for one of a flow
 * forwarded by FIB lookup (SV_CT_F_REDIRECT: its addresses may be this node's), or a drop.
 */
static __noinline int sv_icmp_related(struct __sk_buff *skb, int at, __u32 ifindex)
{
	if (!sv_maybe_icmp_err(skb))
		return SV_ICMP_UNRELATED;
	__u32 zero = 0;
	struct sv_icmp_scratch *s = bpf_map_lookup_elem(&sv_icmp_scratch, &zero);
	if (!s)
		return SV_ICMP_UNRELATED;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return SV_ICMP_UNRELATED;
	__builtin_memset(&s->e, 0, sizeof(s->e));
	s->e.v4 = eth->h_proto == bpf_htons(ETH_P_IP);
	if (sv_icmp_parse(skb, &s->e, &s->in))
		return SV_ICMP_UNRELATED;
	/* the error goes back to the embedded packet's sender */
	if (!sv_addr_eq(&s->e.odst, &s->in.saddr))
		return SV_ICMP_UNRELATED;
	int workload = at == SV_ICMP_AT_EP_EGRESS || at == SV_ICMP_AT_EP_INGRESS;
	if (workload) {
		struct sv_ep_val *ep = bpf_map_lookup_elem(&sv_eps, &ifindex);
		if (!ep)
			return SV_ICMP_UNRELATED; /* sv_process counts it */
		if (at == SV_ICMP_AT_EP_EGRESS &&
		    !(s->e.v4 ? (ep->flags & SV_EP_F_V4) && sv_addr_eq(&s->e.osrc, &ep->addr4)
			      : (ep->flags & SV_EP_F_V6) && sv_addr_eq(&s->e.osrc, &ep->addr6)))
			return SV_ICMP_UNRELATED; /* spoofed: sv_process drops it */
	}
	int from_a = sv_ct_key_of(&s->in, &s->key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &s->key);
	if (!ct)
		return SV_ICMP_UNRELATED;
	int pass = workload ? TC_ACT_OK : SV_NEXT;
	__u32 f = ct->flags;
	int e_fwd = sv_ct_forward(f, from_a);
	/* as the flow's own packets: forwarded by FIB lookup from where a program may redirect */
	int can_fwd = at == SV_ICMP_AT_EP_EGRESS || at == SV_ICMP_AT_UPLINK_IN;
	if (can_fwd && (f & SV_CT_F_REDIRECT))
		pass = SV_ACT_FORWARD;
	sv_log("icmp: error related to a tracked flow (forward=%d)", e_fwd);

	if (at == SV_ICMP_AT_UPLINK_OUT) {
		/* NAT outgoing's source translation happens here */
		if (ct->kind != SV_CT_TYPE_NORMAL || !(f & SV_CT_F_SNAT_FWD) || e_fwd)
			return pass;
		s->to = ct->snat_addr;
		__be16 port = ct->snat_port;
		if (sv_icmp_inner(skb, &s->e, 0, &s->in.daddr, &s->to, s->in.dport, port))
			return sv_drop(SV_DROP_REWRITE);
		if (sv_addr_eq(&s->e.osrc, &s->in.daddr) &&
		    sv_icmp_outer(skb, &s->e, 1, &s->e.osrc, &s->to))
			return sv_drop(SV_DROP_REWRITE);
		skb->mark |= SV_MARK_SEEN;
		return pass;
	}
	if (ct->kind == SV_CT_TYPE_NAT_FWD && !e_fwd) {
		/* the forward translation: E's source (the frontend) becomes the backend */
		int masq = (f & SV_CT_F_SNAT_FWD) != 0;
		union sv_addr snat = ct->snat_addr;
		__be16 snat_port = ct->snat_port;
		s->to = ct->nat_addr;
		if (sv_icmp_inner(skb, &s->e, 1, &s->in.saddr, &s->to, s->in.sport, ct->nat_port) ||
		    sv_icmp_outer(skb, &s->e, 0, &s->e.odst, &s->to))
			return sv_drop(SV_DROP_REWRITE);
		if (masq) {
			s->to = snat;
			if (sv_icmp_inner(skb, &s->e, 0, &s->in.daddr, &s->to, s->in.dport,
					  snat_port))
				return sv_drop(SV_DROP_REWRITE);
			if (sv_addr_eq(&s->e.osrc, &s->in.daddr) &&
			    sv_icmp_outer(skb, &s->e, 1, &s->e.osrc, &s->to))
				return sv_drop(SV_DROP_REWRITE);
		}
		skb->mark |= SV_MARK_SEEN;
		return masq && can_fwd ? SV_ACT_FORWARD : pass;
	}
	if (ct->kind == SV_CT_TYPE_NORMAL && (f & (SV_CT_F_DNAT | SV_CT_F_SNAT_REV)) && e_fwd) {
		/* the replies' reverse translation */
		union sv_addr snat = ct->snat_addr;
		__be16 snat_port = ct->snat_port;
		if (f & SV_CT_F_DNAT) {
			s->to = ct->nat_addr;
			if (sv_icmp_inner(skb, &s->e, 0, &s->in.daddr, &s->to, s->in.dport,
					  ct->nat_port))
				return sv_drop(SV_DROP_REWRITE);
			if (sv_addr_eq(&s->e.osrc, &s->in.daddr) &&
			    sv_icmp_outer(skb, &s->e, 1, &s->e.osrc, &s->to))
				return sv_drop(SV_DROP_REWRITE);
		}
		if (f & SV_CT_F_SNAT_REV) {
			s->to = snat;
			if (sv_icmp_inner(skb, &s->e, 1, &s->in.saddr, &s->to, s->in.sport,
					  snat_port) ||
			    sv_icmp_outer(skb, &s->e, 0, &s->e.odst, &s->to))
				return sv_drop(SV_DROP_REWRITE);
		}
		skb->mark |= SV_MARK_SEEN;
		return pass;
	}
	return pass;
}

/* sv_process with related ICMP errors first (see sv_icmp_related). */
static __always_inline int sv_process_related(struct __sk_buff *skb, const __u8 dir,
					      __u32 ifindex)
{
	int v = sv_icmp_related(skb,
				dir == SV_DIR_EGRESS ? SV_ICMP_AT_EP_EGRESS : SV_ICMP_AT_EP_INGRESS,
				ifindex);
	return v == SV_ICMP_UNRELATED ? sv_process(skb, dir, ifindex) : v;
}

#endif /* SERVAL_ICMP_H */
