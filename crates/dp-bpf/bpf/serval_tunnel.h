/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * NodePort tunnel and DSR (FelixConfiguration bpfExternalServiceMode): part of serval_tc.c
 * (included after serval_nat.h; it uses the parsing, conntrack, rewrite and forwarding helpers
 * above it), not a standalone header. ABI: serval_maps.h ("NodePort tunnel and DSR").
 *
 * A client outside the cluster reaches an external frontend (NodePort, externalIP,
 * LoadBalancer; externalTrafficPolicy Cluster) on node R, which picks a backend on node B:
 *
 *   R, serval_uplink_in   DNAT to the backend, the client's source kept (sv_nat_new: wire
 *                         entry DNAT | REDIRECT | TUN_FWD), then sv_tun_fwd: encapsulated to B
 *                         (outer R -> B, UDP to SV_TUN_PORT, struct sv_tun_hdr carrying the
 *                         frontend and, under DSR, SV_TUN_SF_DSR), FIB lookup and redirect.
 *   B, serval_uplink_in   sv_tun_decap: the outer headers removed; the flow's entry records
 *                         TUN_REPLY (+ TUN_DSR), the frontend (nat_*) and R (snat_addr); the
 *                         packet goes on to the stack and serval_to_ep (ingress policy sees
 *                         the client's address).
 *   B, serval_from_ep     the backend's reply (sv_process: SV_ACT_TUN_REPLY) -> sv_tun_reply:
 *                         Tunnel: encapsulated back to R; DSR: source rewritten to the
 *                         frontend and sent straight to the client (FIB lookup and redirect).
 *   R, serval_uplink_in   (Tunnel) sv_tun_decap of the reply: the wire entry's reverse NAT
 *                         (source = the frontend), forwarded to the client.
 *
 * B is the next_hop of the backend's sv_routes entry when that entry is a remote workload's
 * (SV_RT_F_REMOTE_WORKLOAD) and next_hop another node's address (SV_RT_F_REMOTE_HOST), which
 * needs no kernel route; otherwise the gateway of the host's route to the backend when that
 * gateway is another node's address: the native routes of encapsulation None, VXLAN over
 * IPv4 and BGP. Where neither names a node (IPv6 VXLAN's link-local next hops without the
 * sv_routes entry, no route) the flow is masqueraded to the node as kube-proxy does
 * (serval_uplink.h). The tunnel header is VXLAN's
 * 8 bytes (I flag, VNI SV_TUN_VNI; a reserved byte carries SV_TUN_SF_DSR) plus a 20-byte
 * frontend option, followed directly by the inner IP packet (no inner Ethernet header, the
 * same family as the outer): 56 bytes over IPv4, 76 over IPv6. The outer UDP checksum is 0
 * (RFC 6935 for IPv6 tunnels); the source port is a hash of the inner flow.
 */
#ifndef SERVAL_TUNNEL_H
#define SERVAL_TUNNEL_H

/* Verdicts between stack frames (SV_ACT_TUN_REPLY is defined before sv_process). */
#define SV_ACT_NAT_TUN 0x120 /* sv_uplink_pick: DNAT only, then through the tunnel */
#define SV_ACT_TUN_FWD 0x121 /* uplink: a DNATed client packet for the tunnel (sv_tun_fwd) */
#define SV_ACT_TUN_DECAP 0x123 /* uplink: a tunnel packet (sv_tun_decap) */

#define SV_TUN_TTL 64
#define SV_ADJ_ROOM_DECAP_L4_UDP (1ULL << 10) /* BPF_F_ADJ_ROOM_DECAP_L4_UDP */
#define SV_NEXT TC_ACT_UNSPEC /* as serval_uplink.h: TCX_NEXT */

struct sv_tun_outer4 {
	struct iphdr ip;
	struct udphdr udp;
	struct sv_tun_hdr th;
};
_Static_assert(sizeof(struct sv_tun_outer4) == 56, "sv_tun_outer4");

struct sv_tun_outer6 {
	struct ipv6hdr ip;
	struct udphdr udp;
	struct sv_tun_hdr th;
};
_Static_assert(sizeof(struct sv_tun_outer6) == 76, "sv_tun_outer6");

static __always_inline void sv_tun_count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&sv_tun_stats, &which);
	if (c)
		*c += 1; /* per-CPU slot */
}

static __always_inline int sv_tun_drop(void)
{
	sv_tun_count(SV_TUN_DROP);
	return TC_ACT_SHOT;
}

/* The sv_routes flags of addr (0: no route covers it). */
static __always_inline __u32 sv_tun_route_flags(const union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	return r ? r->flags : 0;
}

/*
 * The node sv_routes names for the remote workload *addr (SV_RT_F_REMOTE_WORKLOAD, next_hop),
 * when next_hop is another node's address. Overwrites *addr with it and returns 0; -1 else.
 */
static __always_inline int sv_tun_node_of_route(union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	if (!r || !(r->flags & SV_RT_F_REMOTE_WORKLOAD))
		return -1;
	union sv_addr node = r->next_hop;
	if (!(sv_tun_route_flags(&node) & SV_RT_F_REMOTE_HOST))
		return -1;
	*addr = node;
	return 0;
}

/*
 * The node behind the remote backend *addr: the one its sv_routes entry names
 * (sv_tun_node_of_route), else the gateway of the host's route towards it when that is
 * another node's address. Overwrites *addr with it and returns 0; -1 when there is none (a
 * local or directly connected backend, no route, a gateway that is no node's address).
 */
static __noinline int sv_tun_node_of(struct __sk_buff *skb, union sv_addr *addr)
{
	if (!sv_tun_node_of_route(addr))
		return 0;
	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	int v4 = sv_addr_is_v4(addr);
	if (v4) {
		fib.family = SV_AF_INET;
		fib.ipv4_dst = addr->w[3];
	} else {
		fib.family = SV_AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, addr->b, 16);
	}
	fib.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	union sv_addr gw;
	if (v4)
		sv_addr_v4(&gw, fib.ipv4_dst);
	else
		__builtin_memcpy(gw.b, fib.ipv6_dst, 16);
	if (!(sv_tun_route_flags(&gw) & SV_RT_F_REMOTE_HOST))
		return -1;
	*addr = gw;
	return 0;
}

/* sv_tun_pick's answers */
#define SV_TUN_PICK_LOCAL 0 /* the backend is on this node: DNAT alone */
#define SV_TUN_PICK_TUNNEL 1 /* behind another node: DNAT and the tunnel */
#define SV_TUN_PICK_MASQ 2 /* neither: kube-proxy's masquerade to this node */

/*
 * For sv_uplink_pick: a flow from outside to an external frontend with externalTrafficPolicy
 * Cluster, backend `be` (in skb->cb already). A backend on this node gets DNAT alone (the
 * client's source kept, as Calico does), a backend behind another node the tunnel, anything
 * else kube-proxy's masquerade to this node.
 */
static __always_inline int sv_tun_pick(struct __sk_buff *skb, const union sv_addr *be)
{
	if (sv_tun_route_flags(be) & SV_RT_F_LOCAL_WORKLOAD)
		return SV_TUN_PICK_LOCAL;
	union sv_addr node = *be;
	return sv_tun_node_of(skb, &node) ? SV_TUN_PICK_MASQ : SV_TUN_PICK_TUNNEL;
}

/* Whether replies to client go straight back from the backend's node: DSR mode and the client
 * in no bpfDSROptoutCIDRs prefix. */
static __always_inline int sv_tun_dsr(const struct sv_host_val *h, const union sv_addr *client)
{
	if (!(h->flags & SV_HOST_F_DSR))
		return 0;
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *client;
	return bpf_map_lookup_elem(&sv_dsr_optout, &k) == 0;
}

/* Marks a DSR flow established on the receiving node: its wire entry ct and its NAT_FWD entry
 * (the client's tuple w to the frontend, nat_*). */
static __noinline void sv_tun_dsr_established(struct sv_ct_val *ct, const struct sv_pkt *w)
{
	__sync_fetch_and_or(&ct->flags, SV_CT_F_ESTABLISHED);
	struct sv_pkt p = *w;
	p.daddr = ct->nat_addr;
	p.dport = ct->nat_port;
	struct sv_ct_key key;
	sv_ct_key_of(&p, &key);
	struct sv_ct_val *fwd = bpf_map_lookup_elem(&sv_ct, &key);
	if (fwd && fwd->kind == SV_CT_TYPE_NAT_FWD)
		__sync_fetch_and_or(&fwd->flags, SV_CT_F_ESTABLISHED);
}

/* A UDP source port for the outer header from the inner flow (49152-65535). */
static __always_inline __be16 sv_tun_entropy(const struct sv_pkt *p)
{
	__u32 h = p->saddr.w[3] ^ p->daddr.w[3] ^ ((__u32)p->sport << 16) ^ p->dport ^ p->proto;
	h ^= h >> 16;
	return bpf_htons(0xc000 | (h & 0x3fff));
}

#define SV_TUN_MTU_DEFAULT 1500
#define SV_TCP_OPT_MSS 2

/*
 * MSS clamping for the tunnel: a TCP SYN (or SYN-ACK) of a tunnelled flow gets its MSS option
 * lowered to what fits `mtu` after the tunnel's outer headers (outer_len), so neither end
 * sends segments that grow past the node network's MTU once encapsulated. The transport
 * checksum is updated. l4_off: the TCP header (no IPv6 extension headers).
 */
static __noinline void sv_tun_clamp_mss(struct __sk_buff *skb, __u32 l4_off, __u32 ip_len,
					__u32 mtu, __u32 outer_len)
{
	__u8 hdr[20];
	if (bpf_skb_load_bytes(skb, l4_off, hdr, sizeof(hdr)))
		return;
	if (!(hdr[13] & SV_TCP_SYN))
		return;
	__u32 optlen = ((__u32)(hdr[12] >> 4) * 4);
	if (optlen <= 20)
		return;
	optlen -= 20;
	if (optlen < 4 || optlen > 40 || mtu < outer_len + ip_len + 20 + 64)
		return;
	__u16 max = mtu - outer_len - ip_len - 20;
	__u8 opt[40];
	__builtin_memset(opt, 0, sizeof(opt));
	if (bpf_skb_load_bytes(skb, l4_off + 20, opt, optlen))
		return;
	__u32 i = 0;
	for (int n = 0; n < 20; n++) {
		if (i >= optlen || i >= 36)
			return;
		__u8 kind = opt[i & 0x3f];
		if (kind == 0)
			return;
		if (kind == 1) {
			i++;
			continue;
		}
		__u8 len = opt[(i + 1) & 0x3f];
		if (kind == SV_TCP_OPT_MSS && len == 4) {
			__u16 mss = ((__u16)opt[(i + 2) & 0x3f] << 8) | opt[(i + 3) & 0x3f];
			if (mss <= max)
				return;
			__be16 old = bpf_htons(mss), new = bpf_htons(max);
			__u32 off = l4_off + 20 + i + 2;
			if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check), old, new,
						sizeof(new)) == 0)
				bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
			sv_log("tunnel: MSS %u clamped to %u", mss, max);
			return;
		}
		if (len < 2)
			return;
		i += len;
	}
}

/* The inner packet's TCP header offset and IP header length for sv_tun_clamp_mss, or 0 when it
 * is no TCP (or has IPv6 extension headers). */
static __always_inline __u32 sv_tun_tcp_off(struct __sk_buff *skb, int v4, __u32 *ip_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (v4) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
			return 0;
		*ip_len = ip->ihl * 4;
		return ETH_HLEN + ip->ihl * 4;
	}
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
		return 0;
	*ip_len = sizeof(*ip6);
	return ETH_HLEN + sizeof(*ip6);
}

/*
 * Encapsulates the packet (Ethernet, then an IP packet) towards node `dst`: outer IP from this
 * node's address of the family (sv_host), UDP to SV_TUN_PORT from `sport`, header *th; then
 * sends it with a FIB lookup of dst and a redirect (bpf_redirect_neigh while the neighbour is
 * unresolved). Returns the tc verdict; a failure is a drop counted as SV_TUN_DROP.
 */
static __noinline int sv_tun_send(struct __sk_buff *skb, const union sv_addr *dst,
				  const struct sv_tun_hdr *th, __be16 sport)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return sv_tun_drop();
	int v4 = eth->h_proto == bpf_htons(ETH_P_IP);
	__u32 inner_len;
	if (v4) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return sv_tun_drop();
		inner_len = bpf_ntohs(ip->tot_len);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return sv_tun_drop();
		inner_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	}
	__u32 zero = 0;
	struct sv_host_val *h = bpf_map_lookup_elem(&sv_host, &zero);
	if (!h || !(h->flags & (v4 ? SV_HOST_F_V4 : SV_HOST_F_V6)))
		return sv_tun_drop();

	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	if (v4) {
		fib.family = SV_AF_INET;
		fib.ipv4_src = h->addr4.w[3];
		fib.ipv4_dst = dst->w[3];
	} else {
		fib.family = SV_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, h->addr6.b, 16);
		__builtin_memcpy(fib.ipv6_dst, dst->b, 16);
	}
	fib.l4_protocol = IPPROTO_UDP;
	fib.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH &&
	    rc != BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		sv_log("tunnel: no route to the node (fib %ld)", rc);
		return sv_tun_drop();
	}
	{
		/* tot_len 0: on success the FIB reports the egress device's MTU */
		__u32 mtu = rc == BPF_FIB_LKUP_RET_NO_NEIGH ? SV_TUN_MTU_DEFAULT : fib.mtu_result;
		__u32 ip_len = 0;
		__u32 tcp = sv_tun_tcp_off(skb, v4, &ip_len);
		if (tcp)
			sv_tun_clamp_mss(skb, tcp, ip_len, mtu ? mtu : SV_TUN_MTU_DEFAULT,
					 v4 ? sizeof(struct sv_tun_outer4)
					    : sizeof(struct sv_tun_outer6));
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return sv_tun_drop(); /* the packet itself is over the MTU already */

	if (v4) {
		struct sv_tun_outer4 o;
		__builtin_memset(&o, 0, sizeof(o));
		o.ip.version = 4;
		o.ip.ihl = 5;
		o.ip.tot_len = bpf_htons(sizeof(o) + inner_len);
		o.ip.ttl = SV_TUN_TTL;
		o.ip.protocol = IPPROTO_UDP;
		o.ip.saddr = h->addr4.w[3];
		o.ip.daddr = dst->w[3];
		__s64 s = bpf_csum_diff(0, 0, (__be32 *)&o.ip, sizeof(o.ip), 0);
		if (s < 0)
			return sv_tun_drop();
		o.ip.check = sv_csum_fold(s);
		o.udp.source = sport;
		o.udp.dest = bpf_htons(SV_TUN_PORT);
		o.udp.len = bpf_htons(sizeof(o) - sizeof(o.ip) + inner_len);
		o.th = *th;
		if (bpf_skb_adjust_room(skb, sizeof(o), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			return sv_tun_drop();
	} else {
		struct sv_tun_outer6 o;
		__builtin_memset(&o, 0, sizeof(o));
		o.ip.version = 6;
		o.ip.payload_len = bpf_htons(sizeof(o) - sizeof(o.ip) + inner_len);
		o.ip.nexthdr = IPPROTO_UDP;
		o.ip.hop_limit = SV_TUN_TTL;
		__builtin_memcpy(&o.ip.saddr, h->addr6.b, 16);
		__builtin_memcpy(&o.ip.daddr, dst->b, 16);
		o.udp.source = sport;
		o.udp.dest = bpf_htons(SV_TUN_PORT);
		o.udp.len = o.ip.payload_len;
		o.th = *th;
		if (bpf_skb_adjust_room(skb, sizeof(o), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			return sv_tun_drop();
	}
	skb->mark |= SV_MARK_SEEN;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		sv_log("tunnel: redirect_neigh to %u", fib.ifindex);
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	}
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0))
		return sv_tun_drop();
	sv_log("tunnel: redirect to %u", fib.ifindex);
	return bpf_redirect(fib.ifindex, 0);
}

/*
 * Receiving node: a client packet already DNATed to a backend behind another node (its wire
 * entry has SV_CT_F_TUN_FWD; snat_addr caches that node) goes through the tunnel with the
 * frontend (the wire entry's nat_*) and the DSR decision in the header.
 */
static __noinline int sv_tun_fwd(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return sv_tun_drop();
	__u32 zero = 0;
	struct sv_host_val *h = bpf_map_lookup_elem(&sv_host, &zero);
	if (!h)
		return sv_tun_drop();
	struct sv_ct_key key;
	sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (!ct || !(ct->flags & SV_CT_F_TUN_FWD))
		return SV_NEXT;
	struct sv_tun_hdr th;
	__builtin_memset(&th, 0, sizeof(th));
	th.flags = SV_TUN_F_VNI;
	th.vni = bpf_htonl(SV_TUN_VNI << 8);
	th.fe_addr = ct->nat_addr;
	th.fe_port = ct->nat_port;
	if (sv_tun_dsr(h, &p.saddr)) {
		th.sv_flags = SV_TUN_SF_DSR;
		/* DSR: this node never sees a reply. A TCP client's ACK without SYN shows that the
		 * handshake completed: the flow counts as established here (idle timeout of an
		 * established flow, not of a half-open one), its NAT_FWD entry too. */
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (SV_TCP_ACK | SV_TCP_SYN)) == SV_TCP_ACK &&
		    !(ct->flags & SV_CT_F_ESTABLISHED))
			sv_tun_dsr_established(ct, &p);
	}
	union sv_addr node = ct->snat_addr;
	if (!node.w[0] && !node.w[1] && !node.w[2] && !node.w[3]) {
		node = p.daddr;
		if (sv_tun_node_of(skb, &node))
			return SV_NEXT; /* the route changed: the stack routes it natively */
		ct = bpf_map_lookup_elem(&sv_ct, &key);
		if (ct)
			ct->snat_addr = node;
	}
	sv_tun_count(SV_TUN_ENCAP_FWD);
	sv_log("tunnel: client packet to the backend's node (dsr=%u)", th.sv_flags);
	return sv_tun_send(skb, &node, &th, sv_tun_entropy(&p));
}

/*
 * The decapsulated packet (parsed here) of a tunnel from node *peer with header *th:
 * - a reply of a flow this node sent through the tunnel (receiving node, Tunnel mode): the
 *   wire entry's reverse NAT (source = the frontend), then SV_ACT_FORWARD to the client;
 * - a client packet for a workload of this node (backend's node): the flow's entry records
 *   how replies go back (TUN_REPLY, + TUN_DSR with the frontend in nat_*), R in snat_addr;
 *   then on to the stack (SV_NEXT), which delivers it through serval_to_ep.
 */
static __noinline int sv_tun_inner(struct __sk_buff *skb, const union sv_addr *peer,
				   const struct sv_tun_hdr *th)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return sv_tun_drop();
	__u64 now = bpf_ktime_get_ns();
	struct sv_ct_key key;
	int from_a = sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (ct && (ct->flags & SV_CT_F_TUN_FWD) && !sv_ct_forward(ct->flags, from_a)) {
		sv_ct_touch(ct, &p, from_a, now);
		if (sv_rewrite(skb, &p, 1, &ct->nat_addr, ct->nat_port))
			return sv_tun_drop();
		/* p is now the reply as the client sees it: the flow's NAT_FWD entry sees it too
		 * (else it would never be established and expire early) */
		from_a = sv_ct_key_of(&p, &key);
		struct sv_ct_val *fwd = bpf_map_lookup_elem(&sv_ct, &key);
		if (fwd && fwd->kind == SV_CT_TYPE_NAT_FWD)
			sv_ct_touch(fwd, &p, from_a, now);
		sv_tun_count(SV_TUN_DECAP_REPLY);
		skb->mark |= SV_MARK_SEEN;
		sv_log("tunnel: reply reverse-NATed");
		return SV_ACT_FORWARD;
	}
	if (!(sv_tun_route_flags(&p.daddr) & SV_RT_F_LOCAL_WORKLOAD))
		return sv_tun_drop();
	__u32 tun = SV_CT_F_TUN_REPLY | ((th->sv_flags & SV_TUN_SF_DSR) ? SV_CT_F_TUN_DSR : 0);
	if (ct) {
		sv_ct_touch(ct, &p, from_a, now);
		if ((ct->flags & (SV_CT_F_TUN_REPLY | SV_CT_F_TUN_DSR)) != tun)
			ct->flags = (ct->flags & ~(SV_CT_F_TUN_REPLY | SV_CT_F_TUN_DSR)) | tun;
		ct->nat_addr = th->fe_addr;
		ct->nat_port = th->fe_port;
		ct->snat_addr = *peer;
	} else {
		struct sv_ct_val v;
		__builtin_memset(&v, 0, sizeof(v));
		v.created_ns = now;
		v.last_seen_ns = now;
		v.kind = SV_CT_TYPE_NORMAL;
		v.flags = tun | (from_a ? 0 : SV_CT_F_OPENER_B) | sv_ct_bits(&p, from_a, 0);
		v.nat_addr = th->fe_addr;
		v.nat_port = th->fe_port;
		v.snat_addr = *peer;
		int err = bpf_map_update_elem(&sv_ct, &key, &v, BPF_NOEXIST);
		if (err && err != -17 /* EEXIST: another CPU first */)
			return sv_drop(SV_DROP_CT_FULL);
	}
	sv_tun_count(SV_TUN_DECAP_FWD);
	skb->mark |= SV_MARK_SEEN;
	sv_log("tunnel: client packet decapsulated (dsr=%u)", th->sv_flags);
	return SV_NEXT;
}

/*
 * A UDP packet to SV_TUN_PORT at the uplink: when it is a tunnel packet from another node (the
 * outer source a node's address, the header's VNI ours), the outer headers are removed and
 * sv_tun_inner decides; anything else is left to the stack (SV_NEXT).
 */
static __noinline int sv_tun_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return SV_NEXT;
	union sv_addr peer;
	__u32 hl;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return SV_NEXT;
		sv_addr_v4(&peer, ip->saddr);
		hl = sizeof(struct sv_tun_outer4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return SV_NEXT;
		__builtin_memcpy(peer.b, &ip6->saddr, 16);
		hl = sizeof(struct sv_tun_outer6);
	} else {
		return SV_NEXT;
	}
	struct sv_tun_hdr th;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + hl - sizeof(th), &th, sizeof(th)))
		return SV_NEXT;
	if (!(th.flags & SV_TUN_F_VNI) || th.vni != bpf_htonl(SV_TUN_VNI << 8))
		return SV_NEXT;
	if (!(sv_tun_route_flags(&peer) & SV_RT_F_REMOTE_HOST)) {
		sv_log("tunnel: packet from a non-node, left to the stack");
		return SV_NEXT;
	}
	/* BPF_F_ADJ_ROOM_DECAP_L4_UDP (1 << 10, newer kernels) also resets the GSO tunnel state
	 * of a GRO-merged packet; a kernel without it refuses the flag and the plain call runs. */
	if (bpf_skb_adjust_room(skb, -(__s32)hl, BPF_ADJ_ROOM_MAC, SV_ADJ_ROOM_DECAP_L4_UDP) &&
	    bpf_skb_adjust_room(skb, -(__s32)hl, BPF_ADJ_ROOM_MAC, 0))
		return sv_tun_drop();
	return sv_tun_inner(skb, &peer, &th);
}

/*
 * serval_from_ep, SV_ACT_TUN_REPLY: a backend's reply in a flow that came through the tunnel.
 * DSR: source rewritten to the frontend, straight to the client; Tunnel: back to the
 * receiving node, encapsulated.
 */
static __noinline int sv_tun_reply(struct __sk_buff *skb)
{
	struct sv_pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	if (sv_parse(skb, &p) != SV_PARSE_OK)
		return sv_tun_drop();
	struct sv_ct_key key;
	sv_ct_key_of(&p, &key);
	struct sv_ct_val *ct = bpf_map_lookup_elem(&sv_ct, &key);
	if (!ct || !(ct->flags & SV_CT_F_TUN_REPLY))
		return TC_ACT_OK;
	if (ct->flags & SV_CT_F_TUN_DSR) {
		/* the client's packets reach us through the tunnel: its MSS must leave room */
		__u32 ip_len = 0;
		int v4 = p.family == SV_FAMILY_V4;
		__u32 tcp = sv_tun_tcp_off(skb, v4, &ip_len);
		if (tcp)
			sv_tun_clamp_mss(skb, tcp, ip_len, SV_TUN_MTU_DEFAULT,
					 v4 ? sizeof(struct sv_tun_outer4)
					    : sizeof(struct sv_tun_outer6));
		union sv_addr fe = ct->nat_addr;
		if (sv_rewrite(skb, &p, 1, &fe, ct->nat_port))
			return sv_tun_drop();
		sv_tun_count(SV_TUN_DSR_REPLY);
		skb->mark |= SV_MARK_SEEN;
		sv_log("tunnel: DSR reply straight to the client");
		return sv_fib_forward(skb, TC_ACT_OK, 0);
	}
	union sv_addr peer = ct->snat_addr;
	struct sv_tun_hdr th;
	__builtin_memset(&th, 0, sizeof(th));
	th.flags = SV_TUN_F_VNI;
	th.vni = bpf_htonl(SV_TUN_VNI << 8);
	sv_tun_count(SV_TUN_ENCAP_REPLY);
	sv_log("tunnel: reply back to the receiving node");
	return sv_tun_send(skb, &peer, &th, sv_tun_entropy(&p));
}

/* serval_uplink_in, SV_ACT_NAT_TUN: the new flow's DNAT and entries (sv_nat_new), then the
 * tunnel. */
static __always_inline int sv_tun_nat_new(struct __sk_buff *skb)
{
	int verdict = sv_nat_new(skb, 0, SV_CT_F_DNAT | SV_CT_F_REDIRECT | SV_CT_F_TUN_FWD);
	return verdict == TC_ACT_UNSPEC ? SV_ACT_TUN_FWD : verdict;
}

#endif /* SERVAL_TUNNEL_H */
