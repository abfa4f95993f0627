/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Source NAT and forwarding for Serval's tc programs: part of serval_tc.c (included by it after
 * its parsing, conntrack, rewrite and service helpers, which it uses), not a standalone header.
 *
 *   sv_snat_insert   a free source port of FelixConfiguration bpfPSNATPorts for a new flow,
 *                    recorded as the flow's wire entry in sv_ct (collisions are skipped)
 *   sv_fib_forward   forward a NATed packet with a FIB lookup and a redirect, past the host's
 *                    routing, which drops packets whose source is one of its own addresses
 *   sv_nat_new       the conntrack entries and rewrites of a new NATed flow (uplink service
 *                    flows; hairpin: a workload reaching a service whose backend is itself)
 *
 * Hairpin masquerades to the node's address (sv_host: the address on the node's uplink), as
 * kube-proxy's KUBE-MARK-MASQ + MASQUERADE and Calico do: the workload sees a connection from
 * its node (the reference evaluator's ingress source for hairpin), answers it to the node, and
 * serval_from_ep reverses both translations from the flow's wire entry.
 */
#ifndef SERVAL_NAT_H
#define SERVAL_NAT_H

#define SV_AF_INET 2
#define SV_AF_INET6 10

/* Ports tried for a new SNATed flow before it is dropped (SV_DROP_SNAT_PORTS). */
#define SV_SNAT_TRIES 8
/* bpfPSNATPorts when sv_host holds no usable range. */
#define SV_PSNAT_MIN_DEFAULT 20000
#define SV_PSNAT_MAX_DEFAULT 29999

#define SV_SNAT_OK 0
#define SV_SNAT_NO_ADDR 1 /* sv_host has no address of the packet's family */
#define SV_SNAT_NO_PORT 2 /* every port tried is taken */
#define SV_SNAT_FULL 3 /* sv_ct is full */

/* The drop reason for an sv_snat_insert failure. */
static __always_inline __u32 sv_snat_reason(int rc)
{
	return rc == SV_SNAT_FULL ? SV_DROP_CT_FULL : SV_DROP_SNAT_PORTS;
}

/*
 * Records v as the wire entry of a new flow whose packet after NAT is *w, the source becoming
 * the node's address of w's family and a port of bpfPSNATPorts (for ICMP echo: the
 * identifier). Starting at a random port of the range it tries SV_SNAT_TRIES consecutive
 * ones; a tuple already in sv_ct (any flow, either direction) is skipped, so two flows never
 * share a wire tuple. v->flags gets base_flags and the state bits of w's packet. On success
 * w->saddr and w->sport hold the new source.
 */
static __noinline int sv_snat_insert(struct sv_pkt *w, __u32 base_flags, struct sv_ct_val *v)
{
	__u32 zero = 0;
	struct sv_host_val *h = bpf_map_lookup_elem(&sv_host, &zero);
	if (!h)
		return SV_SNAT_NO_ADDR;
	if (w->family == SV_FAMILY_V4) {
		if (!(h->flags & SV_HOST_F_V4))
			return SV_SNAT_NO_ADDR;
		w->saddr = h->addr4;
	} else {
		if (!(h->flags & SV_HOST_F_V6))
			return SV_SNAT_NO_ADDR;
		w->saddr = h->addr6;
	}
	__u32 lo = h->psnat_min, hi = h->psnat_max;
	if (lo == 0 || hi < lo) {
		lo = SV_PSNAT_MIN_DEFAULT;
		hi = SV_PSNAT_MAX_DEFAULT;
	}
	__u32 n = hi - lo + 1;
	__u32 start = bpf_get_prandom_u32() % n;
	for (int i = 0; i < SV_SNAT_TRIES; i++) {
		__be16 port = bpf_htons((__u16)(lo + (start + i) % n));
		w->sport = port;
		if (w->icmp_echo)
			w->dport = port;
		struct sv_ct_key k;
		int from_a = sv_ct_key_of(w, &k);
		v->flags = base_flags | (from_a ? 0 : SV_CT_F_OPENER_B) | sv_ct_bits(w, from_a, 0);
		int err = bpf_map_update_elem(&sv_ct, &k, v, BPF_NOEXIST);
		if (!err) {
			sv_log("snat: port %u", bpf_ntohs(port));
			return SV_SNAT_OK;
		}
		if (err != -17 /* EEXIST */)
			return SV_SNAT_FULL;
	}
	return SV_SNAT_NO_PORT;
}

/*
 * Forwards the packet (already NATed) the way the host's routing would, without its source
 * check: a FIB lookup gives the egress interface and the MAC addresses, the TTL / hop limit is
 * decremented, the packet is marked SV_MARK_SEEN and redirected to that interface's egress
 * (bpf_redirect_neigh when the neighbour is not resolved yet). With peer (a workload's host
 * veth, which the FIB must name) it goes into that veth's peer instead (bpf_redirect_peer:
 * the workload's namespace, past the veth's tc egress); an unresolved neighbour then takes
 * bpf_redirect_neigh to that veth (its tc egress, serval_to_ep, passes the approved flow),
 * never the host stack: netfilter must not see half a flow whose other packets bypass it
 * (kube-proxy's `--ctstate INVALID -j DROP` would drop the replies). When the FIB cannot
 * tell (no route, TTL running out, ...), returns `fallback` and the stack decides.
 */
static __noinline int sv_fib_forward(struct __sk_buff *skb, int fallback, __u32 peer)
{
	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return fallback;
	int v4 = eth->h_proto == bpf_htons(ETH_P_IP);
	if (v4) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
			return fallback;
		fib.family = SV_AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
			return fallback;
		fib.family = SV_AF_INET6;
		fib.l4_protocol = ip6->nexthdr;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	} else {
		return fallback;
	}
	fib.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		sv_log("fib: lookup %ld, left to the stack", rc);
		return fallback;
	}
	if (peer && fib.ifindex != peer)
		return fallback;
	if (v4) {
		/* ttl and protocol share a 16-bit word of the header checksum */
		__u8 word[2];
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), word, 2))
			return fallback;
		__be16 old, new;
		__builtin_memcpy(&old, word, 2);
		word[0] -= 1;
		__builtin_memcpy(&new, word, 2);
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new,
					sizeof(new)) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), word, 2, 0))
			return fallback;
	} else {
		__u8 hop;
		__u32 off = ETH_HLEN + offsetof(struct ipv6hdr, hop_limit);
		if (bpf_skb_load_bytes(skb, off, &hop, 1))
			return fallback;
		hop -= 1;
		if (bpf_skb_store_bytes(skb, off, &hop, 1, 0))
			return fallback;
	}
	skb->mark |= SV_MARK_SEEN;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		sv_log("fib: redirect_neigh to %u", fib.ifindex);
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	}
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0))
		return fallback;
	if (peer) {
		sv_log("fib: redirect_peer to %u", fib.ifindex);
		return bpf_redirect_peer(fib.ifindex, 0);
	}
	sv_log("fib: redirect to %u", fib.ifindex);
	return bpf_redirect(fib.ifindex, 0);
}

#define SV_FAST_NONE (-1)
#define SV_FAST_REMOTE (-2)

/*
 * Where an allowed packet from a workload may go without the host stack: the host-side
 * interface (> 0) of the workload on this node it is addressed to (not the sender's own),
 * SV_FAST_REMOTE for an address of an IP pool on another node, SV_FAST_NONE for anything else
 * (this node, the world: the host stack, with NAT outgoing at the uplink, decides).
 */
static __noinline int sv_fast_target(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return SV_FAST_NONE;
	struct sv_route_key k = {.prefixlen = 128};
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return SV_FAST_NONE;
		sv_addr_v4(&k.addr, ip->daddr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return SV_FAST_NONE;
		__builtin_memcpy(k.addr.b, &ip6->daddr, 16);
	} else {
		return SV_FAST_NONE;
	}
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	if (!r)
		return SV_FAST_NONE;
	if (r->flags & SV_RT_F_LOCAL_WORKLOAD) {
		__u32 ifindex = r->ifindex;
		if (ifindex == 0 || ifindex == skb->ifindex || ifindex > 0x7fffffff)
			return SV_FAST_NONE;
		return (int)ifindex;
	}
	if ((r->flags & SV_RT_F_IN_POOL) && !(r->flags & (SV_RT_F_HOST | SV_RT_F_REMOTE_HOST)))
		return SV_FAST_REMOTE;
	return SV_FAST_NONE;
}

/*
 * The translations of a new service flow whose backend was chosen in an earlier stack frame
 * and left in skb->cb (sv_backend_to_cb): writes the flow's wire entry (the tuple after NAT,
 * with wire_flags: DNAT, and for masquerade SNAT_REV; nat_* = the frontend, snat_* = the
 * client), then its NAT_FWD entry on the original tuple (the backend, and with masq the
 * masquerade source for the flow's next packets), and rewrites the packet. masq: the source
 * becomes the node's address with a port of bpfPSNATPorts (sv_snat_insert). Returns
 * SV_ACT_FORWARD for a masqueraded packet (the stack would drop a packet whose source is the
 * node's own address), else SV_NEXT (-1, also TC_ACT_UNSPEC). Its own frame, kept small:
 * sv_snat_insert's adds to it.
 *
 * Hairpin (a workload reaching a service whose chosen backend is itself) is masqueraded to
 * the node's address, as kube-proxy and Calico do: the workload sees a connection from its
 * node (the reference evaluator's ingress source for hairpin) and answers it to the node;
 * serval_from_ep reverses both translations from the flow's wire entry.
 */
static __noinline int sv_nat_new(struct __sk_buff *skb, int masq, __u32 wire_flags)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return sv_drop(SV_DROP_MALFORMED);
	__u64 now = bpf_ktime_get_ns();

	/* w: the packet after NAT, to the backend (from skb->cb) */
	struct sv_pkt w = p;
	w.daddr.w[0] = skb->cb[0];
	w.daddr.w[1] = skb->cb[1];
	w.daddr.w[2] = skb->cb[2];
	w.daddr.w[3] = skb->cb[3];
	w.dport = (__be16)skb->cb[4];
	w.pol_port = w.dport;
	struct sv_ct_val v;
	__builtin_memset(&v, 0, sizeof(v));
	{
		struct sv_nat_fe_key fk;
		__builtin_memset(&fk, 0, sizeof(fk));
		fk.addr = p.daddr;
		fk.port = p.dport;
		fk.proto = p.proto;
		struct sv_nat_fe_val *fe = bpf_map_lookup_elem(&sv_nat_fe, &fk);
		if (fe)
			v.svc_id = fe->svc_id;
	}
	v.created_ns = now;
	v.last_seen_ns = now;
	v.kind = SV_CT_TYPE_NORMAL;
	v.nat_addr = p.daddr;
	v.nat_port = p.dport;
	struct sv_ct_key k;
	if (masq) {
		v.snat_addr = p.saddr;
		v.snat_port = p.sport;
		int rc = sv_snat_insert(&w, wire_flags, &v);
		if (rc)
			return sv_drop(sv_snat_reason(rc));
	} else {
		int wa = sv_ct_key_of(&w, &k);
		v.flags = wire_flags | (wa ? 0 : SV_CT_F_OPENER_B) | sv_ct_bits(&w, wa, 0);
		if (bpf_map_update_elem(&sv_ct, &k, &v, BPF_ANY))
			return sv_drop(SV_DROP_CT_FULL);
	}

	int from_a = sv_ct_key_of(&p, &k);
	v.kind = SV_CT_TYPE_NAT_FWD;
	v.nat_addr = w.daddr;
	v.nat_port = w.dport;
	if (masq) {
		v.snat_addr = w.saddr;
		v.snat_port = w.sport;
	}
	v.flags = (masq ? SV_CT_F_SNAT_FWD : 0) | (from_a ? 0 : SV_CT_F_OPENER_B) |
		  sv_ct_bits(&p, from_a, 0);
	int err = bpf_map_update_elem(&sv_ct, &k, &v, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: another CPU recorded it first */) {
		sv_ct_key_of(&w, &k);
		bpf_map_delete_elem(&sv_ct, &k);
		return sv_drop(SV_DROP_CT_FULL);
	}
	if (sv_rewrite(skb, &p, 0, &w.daddr, w.dport))
		return sv_drop(SV_DROP_REWRITE);
	if (masq && sv_rewrite(skb, &p, 1, &w.saddr, w.sport))
		return sv_drop(SV_DROP_REWRITE);
	skb->mark |= SV_MARK_SEEN;
	sv_log("new NATed flow svc=%u masquerade=%d", v.svc_id, masq);
	return masq ? SV_ACT_FORWARD : TC_ACT_UNSPEC;
}

/* A new hairpin flow (see sv_nat_new). */
static __always_inline int sv_hairpin(struct __sk_buff *skb)
{
	return sv_nat_new(skb, 1,
			  SV_CT_F_APPROVED_SRC | SV_CT_F_DNAT | SV_CT_F_SNAT_REV | SV_CT_F_REDIRECT);
}

#endif /* SERVAL_NAT_H */
