/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Serval's tc programs for the node's uplink (the interface carrying the node address) and its
 * VXLAN devices: part of serval_tc.c (included at its end; it uses the helpers above it and
 * serval_nat.h), not a standalone header.
 *
 *   serval_uplink_in   tc ingress: packets arriving at the node
 *     - a service frontend (NodePort, externalIP, LoadBalancer, or a cluster IP someone
 *       outside routes to us): DNAT to a backend chosen as serval_calc::services::resolve
 *       does for a client outside the cluster (externalTrafficPolicy Local: node-local
 *       backends only, client address kept, dropped without one; Cluster: any backend, source
 *       masqueraded to the node with a port of bpfPSNATPorts, the packet forwarded by FIB
 *       lookup); no backend at all: TCP RST / ICMP port unreachable back out of the uplink;
 *     - a reply to a flow we source-NATed (dst port in bpfPSNATPorts, a wire entry in sv_ct):
 *       both translations reversed from the entry (NAT outgoing: on to the pod through the
 *       stack; masqueraded service flows: forwarded by FIB lookup, the source being ours).
 *   serval_uplink_out  tc egress: NAT outgoing: a packet from a pool with natOutgoing to an
 *       address outside every pool and every node gets the node's address and a port (ICMP
 *       echo: identifier) of bpfPSNATPorts; the flow's original entry remembers the binding.
 *
 * A packet for a workload of this node (after any of the above) takes the fast path: the
 * workload's ingress check runs here (serval_to_ep's work) and the packet goes straight into
 * its namespace (bpf_redirect_peer) when the FIB resolves it. Everything else, and every
 * packet they NATed without forwarding it themselves, is returned with SV_NEXT (TCX_NEXT: the
 * next program, e.g. host endpoint policy, then the stack); NATed and forwarded packets carry
 * SV_MARK_SEEN. Per packet a fixed number of hash/LPM lookups.
 */
#ifndef SERVAL_UPLINK_H
#define SERVAL_UPLINK_H

#define SV_NEXT TC_ACT_UNSPEC /* TCX_NEXT; under clsact: the next filter, then pass */
/* sv_uplink_ingress's verdict for "a new flow to a frontend": sv_uplink_pick. */
#define SV_ACT_NEW_FLOW 0x110

/* The sv_routes flags of addr (0: no route covers it). */
static __always_inline __u32 sv_route_flags(const union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	return r ? r->flags : 0;
}

static __always_inline int sv_in_psnat(const struct sv_host_val *h, __be16 port)
{
	__u32 x = bpf_ntohs(port);
	__u32 lo = h->psnat_min, hi = h->psnat_max;
	if (lo == 0 || hi < lo) {
		lo = SV_PSNAT_MIN_DEFAULT;
		hi = SV_PSNAT_MAX_DEFAULT;
	}
	return x >= lo && x <= hi;
}

/* sv_uplink_pick's verdicts: sv_nat_new, without and with masquerade. */
#define SV_ACT_NAT 0x111
#define SV_ACT_NAT_MASQ 0x112

/*
 * A new flow from the uplink to a service frontend (see the file comment): picks the backend
 * (left in skb->cb for sv_nat_new, which runs in the next stack frame) and decides masquerade
 * as serval_calc::services::resolve does for the packet's source.
 */
static __noinline int sv_uplink_pick(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return SV_NEXT;
	/* kube-proxy's "local traffic": a pod or a node (another node's host, or ours) */
	int inside = (sv_route_flags(&p.saddr) &
		      (SV_RT_F_IN_POOL | SV_RT_F_HOST | SV_RT_F_REMOTE_HOST)) != 0;
	struct sv_backend be;
	__builtin_memset(&be, 0, sizeof(be));
	int reason = SV_DROP_NO_BACKEND;
	int svc = sv_service(&p, bpf_ktime_get_ns(), &be, &reason, !inside);
	if (svc == SV_SVC_NONE)
		return SV_NEXT;
	if (svc == SV_SVC_DROP) {
		sv_drop(reason);
		return reason == SV_DROP_NO_BACKEND ? SV_ACT_REJECT : TC_ACT_SHOT;
	}
	sv_backend_to_cb(skb, &be);
	int masq = (be.fe_flags & SV_NAT_FE_F_EXTERNAL) ? !(be.fe_flags & SV_NAT_FE_F_EXT_LOCAL)
							: !inside;
	if (masq && !inside && (be.fe_flags & SV_NAT_FE_F_EXTERNAL)) {
		/* bpfExternalServiceMode (serval_tunnel.h): the client's source is kept */
		int t = sv_tun_pick(skb, &be.addr);
		return t == SV_TUN_PICK_LOCAL	 ? SV_ACT_NAT
		       : t == SV_TUN_PICK_TUNNEL ? SV_ACT_NAT_TUN
						 : SV_ACT_NAT_MASQ;
	}
	return masq ? SV_ACT_NAT_MASQ : SV_ACT_NAT;
}

static __noinline int sv_uplink_ingress(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK || sv_is_ndp(&p))
		return SV_NEXT; /* not ours: the stack (and host endpoint policy) decide */
	if (p.proto == IPPROTO_UDP && p.dport == bpf_htons(SV_TUN_PORT))
		return SV_ACT_TUN_DECAP; /* maybe the NodePort tunnel: sv_tun_decap */
	__u32 zero = 0;
	struct sv_host_val *h = bpf_map_lookup_elem(&sv_host, &zero);
	if (!h)
		return SV_NEXT;

	struct sv_nat_fe_key fk;
	__builtin_memset(&fk, 0, sizeof(fk));
	fk.addr = p.daddr;
	fk.port = p.dport;
	fk.proto = p.proto;
	int frontend = bpf_map_lookup_elem(&sv_nat_fe, &fk) != 0;
	/* Only frontends and replies to our SNAT ports can be ours: nothing else costs a
	 * conntrack lookup. */
	if (!frontend && !sv_in_psnat(h, p.dport) && !sv_host_nat_reply(h, &p))
		return SV_NEXT;

	__u64 now = bpf_ktime_get_ns();
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (ct && ct->kind == SV_CT_TYPE_NAT_FWD) {
		/* the next packet of a service flow: to the flow's backend */
		sv_ct_touch(ct, &p, from_a, now);
		if (!sv_ct_forward(ct->flags, from_a))
			return SV_NEXT;
		int masq = ct->flags & SV_CT_F_SNAT_FWD;
		if (sv_rewrite(skb, &p, 0, &ct->nat_addr, ct->nat_port))
			return sv_drop(SV_DROP_REWRITE);
		if (masq && sv_rewrite(skb, &p, 1, &ct->snat_addr, ct->snat_port))
			return sv_drop(SV_DROP_REWRITE);
		struct sv_ct_key wk;
		int wa = sv_ct_key_of(&p, &wk);
		struct sv_ct_val *wire = bpf_map_lookup_elem(&sv_ct, &wk);
		if (wire)
			sv_ct_touch(wire, &p, wa, now);
		skb->mark |= SV_MARK_SEEN;
		if (!masq && wire && (wire->flags & SV_CT_F_TUN_FWD))
			return SV_ACT_TUN_FWD; /* to the backend's node: sv_tun_fwd */
		return masq ? SV_ACT_FORWARD : SV_NEXT;
	}
	if (ct) {
		/* a wire entry: a reply to a flow we NATed comes back */
		sv_ct_touch(ct, &p, from_a, now);
		__u32 flags = ct->flags;
		if (sv_ct_forward(flags, from_a) || !(flags & (SV_CT_F_DNAT | SV_CT_F_SNAT_REV)))
			return SV_NEXT;
		if ((flags & SV_CT_F_DNAT) && sv_rewrite(skb, &p, 1, &ct->nat_addr, ct->nat_port))
			return sv_drop(SV_DROP_REWRITE);
		if ((flags & SV_CT_F_SNAT_REV) &&
		    sv_rewrite(skb, &p, 0, &ct->snat_addr, ct->snat_port))
			return sv_drop(SV_DROP_REWRITE);
		skb->mark |= SV_MARK_SEEN;
		sv_log("uplink: reply reverse-NATed");
		return (flags & SV_CT_F_REDIRECT) ? SV_ACT_FORWARD : SV_NEXT;
	}
	return frontend ? SV_ACT_NEW_FLOW : SV_NEXT;
}

/* sv_uplink_egress's verdict for "a new NAT outgoing binding": sv_uplink_snat_new. */
#define SV_ACT_SNAT_NEW 0x113

/*
 * NAT outgoing at the uplink's egress (see the file comment): a packet of a flow with a live
 * binding is rewritten here; a flow without one gets it from sv_uplink_snat_new, in the next
 * stack frame.
 */
static __noinline int sv_uplink_egress(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return SV_NEXT;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP && !p.icmp_echo)
		return SV_NEXT; /* nothing to take a port from */
	if (!(sv_route_flags(&p.saddr) & SV_RT_F_NAT_OUTGOING) ||
	    (sv_route_flags(&p.daddr) & (SV_RT_F_IN_POOL | SV_RT_F_HOST | SV_RT_F_REMOTE_HOST)))
		return SV_NEXT;

	struct sv_ct_key key;
	sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (!ct || !(ct->flags & SV_CT_F_SNAT_FWD))
		return SV_ACT_SNAT_NEW;
	/* the flow's binding, if its wire entry is still there (and still ours) */
	struct sv_pkt w = p;
	w.saddr = ct->snat_addr;
	w.sport = ct->snat_port;
	if (w.icmp_echo)
		w.dport = w.sport;
	int wa = sv_ct_key_of(&w, &key);
	struct sv_ct_val *wire = bpf_map_lookup_elem(&sv_ct, &key);
	if (!wire || !(wire->flags & SV_CT_F_SNAT_REV) || !sv_addr_eq(&wire->snat_addr, &p.saddr) ||
	    wire->snat_port != p.sport)
		return SV_ACT_SNAT_NEW; /* gone or taken: a new binding */
	sv_ct_touch(wire, &w, wa, bpf_ktime_get_ns());
	if (sv_rewrite(skb, &p, 1, &w.saddr, w.sport))
		return sv_drop(SV_DROP_REWRITE);
	skb->mark |= SV_MARK_SEEN;
	return SV_NEXT;
}

/* A new NAT outgoing binding: the wire entry (sv_snat_insert), the binding in the flow's
 * original entry (created if the workload programs did not), the rewrite. */
static __noinline int sv_uplink_snat_new(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return SV_NEXT;
	__u64 now = bpf_ktime_get_ns();
	struct sv_pkt w = p;
	struct sv_ct_val v;
	__builtin_memset(&v, 0, sizeof(v));
	v.created_ns = now;
	v.last_seen_ns = now;
	v.kind = SV_CT_TYPE_NORMAL;
	v.snat_addr = p.saddr;
	v.snat_port = p.sport;
	int rc = sv_snat_insert(&w, SV_CT_F_SNAT_REV, &v);
	if (rc == SV_SNAT_NO_ADDR)
		return SV_NEXT; /* no node address of this family: left to the stack */
	if (rc)
		return sv_drop(sv_snat_reason(rc));
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (ct) {
		ct->snat_addr = w.saddr;
		ct->snat_port = w.sport;
		__sync_fetch_and_or(&ct->flags, SV_CT_F_SNAT_FWD);
	} else {
		v.snat_addr = w.saddr;
		v.snat_port = w.sport;
		v.flags = SV_CT_F_SNAT_FWD | (from_a ? 0 : SV_CT_F_OPENER_B) |
			  sv_ct_bits(&p, from_a, 0);
		bpf_map_update_elem(&sv_ct, &key, &v, BPF_NOEXIST);
	}
	if (sv_rewrite(skb, &p, 1, &w.saddr, w.sport))
		return sv_drop(SV_DROP_REWRITE);
	skb->mark |= SV_MARK_SEEN;
	sv_log("uplink: NAT outgoing to port %u", bpf_ntohs(w.sport));
	return SV_NEXT;
}

SEC("classifier")
int serval_uplink_in(struct __sk_buff *skb)
{
	sv_ct_reuse(skb);
	int verdict = sv_icmp_related(skb, SV_ICMP_AT_UPLINK_IN, 0); /* serval_icmp.h */
	if (verdict == SV_ICMP_UNRELATED)
		verdict = sv_uplink_ingress(skb);
	if (verdict == SV_ACT_TUN_DECAP)
		verdict = sv_tun_decap(skb);
	if (verdict == SV_ACT_NEW_FLOW)
		verdict = sv_uplink_pick(skb);
	/* The wire entry's replies are reverse-NATed and forwarded by FIB lookup (their source,
	 * a NodePort's node address, is ours). */
	if (verdict == SV_ACT_NAT)
		verdict = sv_nat_new(skb, 0, SV_CT_F_DNAT | SV_CT_F_REDIRECT);
	else if (verdict == SV_ACT_NAT_MASQ)
		verdict = sv_nat_new(skb, 1, SV_CT_F_DNAT | SV_CT_F_SNAT_REV | SV_CT_F_REDIRECT);
	else if (verdict == SV_ACT_NAT_TUN)
		verdict = sv_tun_nat_new(skb);
	if (verdict == SV_ACT_TUN_FWD)
		return sv_tun_fwd(skb);
	if (verdict == SV_ACT_REJECT)
		return sv_reject(skb, 0);
	if (verdict == SV_ACT_FORWARD)
		return sv_fib_forward(skb, SV_NEXT, 0);
	if (verdict != SV_NEXT)
		return verdict;
	/* Fast path into a workload of this node: its ingress check (what serval_to_ep would do)
	 * here, then straight into its namespace; what the FIB cannot resolve takes the stack. */
	int target = sv_fast_target(skb);
	if (target <= 0)
		return SV_NEXT;
	verdict = sv_process_related(skb, SV_DIR_INGRESS, (__u32)target);
	if (verdict != TC_ACT_OK)
		return verdict;
	return sv_fib_forward(skb, SV_NEXT, (__u32)target);
}

SEC("classifier")
int serval_uplink_out(struct __sk_buff *skb)
{
	sv_ct_reuse(skb);
	int host = sv_host_nat_egress(skb); /* serval_hostnat.h */
	if (host != SV_NEXT)
		return host;
	int verdict = sv_icmp_related(skb, SV_ICMP_AT_UPLINK_OUT, 0); /* serval_icmp.h */
	if (verdict == SV_ICMP_UNRELATED)
		verdict = sv_uplink_egress(skb);
	if (verdict == SV_ACT_SNAT_NEW)
		verdict = sv_uplink_snat_new(skb);
	return verdict;
}

#endif /* SERVAL_UPLINK_H */
