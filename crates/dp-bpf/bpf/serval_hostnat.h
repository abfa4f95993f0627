/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service NAT of host-networked clients in tc (FelixConfiguration
 * bpfHostNetworkedNATWithoutCTLB, the SV_HOST_F_HOST_NAT flag of sv_host): part of serval_tc.c
 * (included before serval_uplink.h; it uses the helpers above it and serval_nat.h).
 *
 * A process in the node's own network namespace that connects to a service frontend, and that
 * the connect-time programs (serval_ctlb.c) did not translate, sends packets to the frontend.
 * They leave by the node's route for it (the default route: the uplink; Serval adds no route
 * for the service CIDRs) and reach serval_uplink_out, where sv_host_nat_egress
 *   - DNATs the first packet of a flow from a host address to a frontend (TCP, UDP) to a
 *     backend chosen as for a client inside the cluster (sv_service), with the flow's NAT_FWD
 *     and wire entries in sv_ct (sv_nat_new, wire flag SV_CT_F_DNAT), and the flow's next
 *     packets from the NAT_FWD entry;
 *   - forwards the DNATed packet by FIB lookup (the route decision was the frontend's, not the
 *     backend's): bpf_redirect into a local backend's veth (serval_to_ep polices it as a
 *     packet from the host) or out of the interface towards the backend's node.
 * Replies are reverse-NATed (source = the frontend) from the wire entry before the host stack
 * sees them, so the socket and netfilter's conntrack see the frontend answer: from a local
 * backend by serval_from_ep (as for any NATed flow), from another node by serval_uplink_in
 * (sv_host_nat_reply lets a packet to a host address reach its wire-entry lookup).
 * A frontend without backends is dropped (counted as no_backend).
 */
#ifndef SERVAL_HOSTNAT_H
#define SERVAL_HOSTNAT_H

#define SV_HOSTNAT_NEXT TC_ACT_UNSPEC
#define SV_ACT_HOST_NEW 0x130 /* sv_host_nat_out: a new flow to a frontend (sv_host_nat_pick) */
#define SV_ACT_HOST_NAT 0x131 /* sv_host_nat_pick: backend in skb->cb (sv_nat_new) */

static __always_inline __u32 sv_hostnat_route_flags(const union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	return r ? r->flags : 0;
}

static __always_inline int sv_host_nat_on(void)
{
	__u32 zero = 0;
	struct sv_host_val *h = bpf_map_lookup_elem(&sv_host, &zero);
	return h && (h->flags & SV_HOST_F_HOST_NAT);
}

/* serval_uplink_in: a TCP/UDP packet to a host address may be the reply of a host client's
 * NATed flow (its wire entry decides). */
static __always_inline int sv_host_nat_reply(const struct sv_host_val *h, const struct sv_pkt *p)
{
	return (h->flags & SV_HOST_F_HOST_NAT) &&
	       (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
	       (sv_hostnat_route_flags(&p->daddr) & SV_RT_F_HOST);
}

/* The egress side (see the file comment): SV_HOSTNAT_NEXT (not a host client's service flow),
 * SV_ACT_FORWARD (a packet of a known flow, DNATed), SV_ACT_HOST_NEW, or a drop. */
static __noinline int sv_host_nat_out(struct __sk_buff *skb)
{
	if (!sv_host_nat_on())
		return SV_HOSTNAT_NEXT;
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return SV_HOSTNAT_NEXT;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return SV_HOSTNAT_NEXT;
	if (!(sv_hostnat_route_flags(&p.saddr) & SV_RT_F_HOST))
		return SV_HOSTNAT_NEXT;

	__u64 now = bpf_ktime_get_ns();
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (ct && ct->kind == SV_CT_TYPE_NAT_FWD) {
		if (!sv_ct_forward(ct->flags, from_a))
			return SV_HOSTNAT_NEXT;
		sv_ct_touch(ct, &p, from_a, now);
		union sv_addr be = ct->nat_addr;
		__be16 be_port = ct->nat_port;
		if (sv_rewrite(skb, &p, 0, &be, be_port))
			return sv_drop(SV_DROP_REWRITE);
		struct sv_ct_key wk;
		int wa = sv_ct_key_of(&p, &wk);
		struct sv_ct_val *wire = bpf_map_lookup_elem(&sv_ct, &wk);
		if (wire)
			sv_ct_touch(wire, &p, wa, now);
		return SV_ACT_FORWARD;
	}
	struct sv_nat_fe_key fk;
	__builtin_memset(&fk, 0, sizeof(fk));
	fk.addr = p.daddr;
	fk.port = p.dport;
	fk.proto = p.proto;
	if (!bpf_map_lookup_elem(&sv_nat_fe, &fk))
		return SV_HOSTNAT_NEXT;
	return SV_ACT_HOST_NEW;
}

/* A new host client flow: the backend, left in skb->cb for sv_nat_new (its own frame). */
static __noinline int sv_host_nat_pick(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return SV_HOSTNAT_NEXT;
	struct sv_backend be;
	__builtin_memset(&be, 0, sizeof(be));
	int reason = SV_DROP_NO_BACKEND;
	int svc = sv_service(&p, bpf_ktime_get_ns(), &be, &reason, 0);
	if (svc == SV_SVC_NONE)
		return SV_HOSTNAT_NEXT;
	if (svc == SV_SVC_DROP)
		return sv_drop(reason);
	sv_backend_to_cb(skb, &be);
	sv_log("hostnat: new flow to a frontend");
	return SV_ACT_HOST_NAT;
}

/* serval_uplink_out's first step: SV_HOSTNAT_NEXT, or the packet's final verdict. */
static __always_inline int sv_host_nat_egress(struct __sk_buff *skb)
{
	int v = sv_host_nat_out(skb);
	if (v == SV_ACT_HOST_NEW) {
		v = sv_host_nat_pick(skb);
		if (v == SV_ACT_HOST_NAT) {
			v = sv_nat_new(skb, 0, SV_CT_F_DNAT);
			if (v == SV_HOSTNAT_NEXT)
				v = SV_ACT_FORWARD;
		}
	}
	if (v == SV_ACT_FORWARD)
		return sv_fib_forward(skb, SV_HOSTNAT_NEXT, 0);
	return v;
}

#endif /* SERVAL_HOSTNAT_H */
