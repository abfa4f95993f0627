// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Serval's XDP program for host interfaces that have a host endpoint (FelixConfiguration
 * xdpEnabled): enforces the untracked (doNotTrack) Deny rules of host endpoint policy that
 * XDP can express -- a blocklist of source prefixes, optionally per protocol and destination
 * port -- before the kernel allocates a socket buffer.
 *
 *   serval_xdp  1. parse Ethernet (one 802.1Q/802.1ad tag), IPv4 / IPv6 (up to 4 extension
 *                  headers), the transport ports (TCP, UDP, UDPLite, SCTP);
 *                  an invalid or truncated IP header is dropped (SV_XDP_DROP_MALFORMED);
 *               2. failsafe inbound ports (sv_xdp_fs) always pass (SV_XDP_PASS_FAILSAFE);
 *               3. the blocklist (sv_xdp_bl): 3 keys x 2 interfaces, all LPM lookups; a hit
 *                  is XDP_DROP (SV_XDP_DROP_BLOCKLIST);
 *               4. everything else: XDP_PASS (the kernel and the tc programs decide).
 *
 * Non-IP frames (ARP) and ICMPv6 neighbour discovery and MLD pass. Non-first IPv4 fragments and IPv6 fragments carry no ports: only the
 * "any protocol" entries of their source apply. Maps and their layout: serval_maps.h; the
 * maps are this object's own (no tc program uses them), pinned in the node's scope.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "serval_maps.h"
#include "serval_net.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SV_LOG_PREFIX "serval xdp: "
#include "serval_log.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_xdp_bl_key);
	__type(value, struct sv_xdp_bl_val);
} sv_xdp_bl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_xdp_fs_key);
	__type(value, __u32);
} sv_xdp_fs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SV_XDP_STATS);
	__type(key, __u32);
	__type(value, __u64);
} sv_xdp_stats SEC(".maps");

#define SV_ETH_P_8021Q 0x8100
#define SV_ETH_P_8021AD 0x88A8
#define SV_NEXTHDR_HOP 0
#define SV_NEXTHDR_ROUTING 43
#define SV_NEXTHDR_FRAGMENT 44
#define SV_NEXTHDR_DEST 60

struct sv_xdp_pkt {
	union sv_addr saddr;
	__be16 dport; /* 0 when the packet carries no ports (fragments, other protocols) */
	__u8 proto;
	__u8 has_ports;
};

static __always_inline void count(__u32 what)
{
	__u64 *c = bpf_map_lookup_elem(&sv_xdp_stats, &what);
	if (c)
		*c += 1; /* per-CPU: no atomics needed */
}

static __always_inline int sv_ports_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
	       proto == IPPROTO_SCTP;
}

/* Reads the destination port (bytes 2-3 of TCP, UDP, UDPLite and SCTP headers). */
static __always_inline void sv_load_dport(struct sv_xdp_pkt *p, void *l4, void *end)
{
	__be16 *ports = l4;
	if (!sv_ports_proto(p->proto) || (void *)(ports + 2) > end)
		return; /* a truncated transport header: no port, only "any protocol" entries */
	p->dport = ports[1];
	p->has_ports = 1;
}

#define SV_PARSE_OK 0
#define SV_PARSE_PASS 1
#define SV_PARSE_MALFORMED 2

static __always_inline int sv_parse(struct xdp_md *ctx, struct sv_xdp_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return SV_PARSE_PASS;
	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(SV_ETH_P_8021Q) || proto == bpf_htons(SV_ETH_P_8021AD)) {
		/* VLAN tag: TCI, then the inner EtherType */
		__be16 *tag = l3;
		if ((void *)(tag + 2) > end)
			return SV_PARSE_PASS;
		proto = tag[1];
		l3 = tag + 2;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return SV_PARSE_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return SV_PARSE_MALFORMED;
		__u32 hlen = ip->ihl * 4;
		if (l3 + hlen > end || bpf_ntohs(ip->tot_len) < hlen)
			return SV_PARSE_MALFORMED;
		sv_addr_v4(&p->saddr, ip->saddr);
		p->proto = ip->protocol;
		/* a non-first fragment has no transport header */
		if (ip->frag_off & bpf_htons(SV_IP_OFFSET))
			return SV_PARSE_OK;
		sv_load_dport(p, l3 + hlen, end);
		return SV_PARSE_OK;
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return SV_PARSE_MALFORMED;
		if (ip6->version != 6)
			return SV_PARSE_MALFORMED;
		__builtin_memcpy(&p->saddr, &ip6->saddr, sizeof(p->saddr));
		__u8 next = ip6->nexthdr;
		void *l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < SV_IPV6_MAX_EXT; i++) {
			if (next != SV_NEXTHDR_HOP && next != SV_NEXTHDR_ROUTING &&
			    next != SV_NEXTHDR_DEST && next != SV_NEXTHDR_FRAGMENT)
				break;
			__u8 *ext = l4;
			if ((void *)(ext + 8) > end) {
				p->proto = next;
				return SV_PARSE_OK; /* truncated extension header: no ports */
			}
			if (next == SV_NEXTHDR_FRAGMENT) {
				/* the protocol is known, ports only in the first fragment */
				__be16 off = *(__be16 *)(ext + 2);
				p->proto = ext[0];
				if (off & bpf_htons(0xfff8))
					return SV_PARSE_OK;
				sv_load_dport(p, ext + 8, end);
				return SV_PARSE_OK;
			}
			next = ext[0];
			l4 = ext + (ext[1] + 1) * 8;
		}
		p->proto = next;
		if (next == IPPROTO_ICMPV6) {
			/* Neighbour discovery (router/neighbour solicitation and advertisement,
			 * redirect) is IPv6's ARP: never dropped, as ARP is not, or the host
			 * could not answer a blocked source even on a failsafe port. MLD
			 * (multicast listener query/report/done, v2 report) neither, as the
			 * host endpoint programs do. */
			__u8 *icmp6 = l4;
			if ((void *)(icmp6 + 1) <= end &&
			    (sv_icmp6_is_nd(icmp6[0]) || sv_icmp6_is_mld(icmp6[0])))
				return SV_PARSE_PASS;
		}
		sv_load_dport(p, l4, end);
		return SV_PARSE_OK;
	}
	return SV_PARSE_PASS;
}

static __always_inline int sv_failsafe(const struct sv_xdp_pkt *p)
{
	if (!p->has_ports)
		return 0;
	struct sv_xdp_fs_key k = {
		.prefixlen = SV_XDP_FS_PREFIX_BASE + 128,
		.data = {.proto = p->proto, .pad = 0, .port = p->dport},
	};
	__builtin_memcpy(&k.data.addr, &p->saddr, sizeof(k.data.addr));
	return bpf_map_lookup_elem(&sv_xdp_fs, &k) != 0;
}

/* The blocklist entry for (ifindex, proto, port) covering the source, if any. */
static __always_inline struct sv_xdp_bl_val *sv_bl_lookup(struct sv_xdp_bl_key *k, __u32 ifindex,
							  __u8 proto, __be16 port)
{
	k->prefixlen = SV_XDP_BL_PREFIX_BASE + 128;
	k->data.ifindex = bpf_htonl(ifindex);
	k->data.proto = proto;
	k->data.pad = 0;
	k->data.port = port;
	return bpf_map_lookup_elem(&sv_xdp_bl, k);
}

static __always_inline struct sv_xdp_bl_val *sv_blocked(const struct sv_xdp_pkt *p,
							__u32 ifindex)
{
	struct sv_xdp_bl_key k = {};
	__builtin_memcpy(&k.data.addr, &p->saddr, sizeof(k.data.addr));
	struct sv_xdp_bl_val *v;
	__u32 ifaces[2] = {ifindex, 0};
#pragma unroll
	for (int i = 0; i < 2; i++) {
		v = sv_bl_lookup(&k, ifaces[i], 0, 0);
		if (v)
			return v;
		if (p->proto == 0)
			continue;
		v = sv_bl_lookup(&k, ifaces[i], p->proto, 0);
		if (v)
			return v;
		if (!p->has_ports || p->dport == 0)
			continue;
		v = sv_bl_lookup(&k, ifaces[i], p->proto, p->dport);
		if (v)
			return v;
	}
	return 0;
}

SEC("xdp")
int serval_xdp(struct xdp_md *ctx)
{
	struct sv_xdp_pkt p = {};
	int r = sv_parse(ctx, &p);
	if (r == SV_PARSE_PASS)
		return XDP_PASS;
	if (r == SV_PARSE_MALFORMED) {
		count(SV_XDP_DROP_MALFORMED);
		sv_log("drop malformed ifindex=%u", ctx->ingress_ifindex);
		return XDP_DROP;
	}
	if (sv_failsafe(&p)) {
		count(SV_XDP_PASS_FAILSAFE);
		sv_log("failsafe proto=%u port=%u", p.proto, bpf_ntohs(p.dport));
		return XDP_PASS;
	}
	struct sv_xdp_bl_val *v = sv_blocked(&p, ctx->ingress_ifindex);
	if (v) {
		count(SV_XDP_DROP_BLOCKLIST);
		sv_log("drop blocklist rule=%u ifindex=%u", v->rule_id, ctx->ingress_ifindex);
		return XDP_DROP;
	}
	return XDP_PASS;
}
