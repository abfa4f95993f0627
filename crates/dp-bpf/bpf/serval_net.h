/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire constants and address helpers every Serval BPF object uses: no maps, no context type
 * (serval_tc.c, serval_hep.c, serval_xdp.c and serval_ctlb.c include it). Addresses are
 * union sv_addr (serval_maps.h): IPv6, or IPv4-mapped (::ffff:a.b.c.d) for IPv4, the way
 * sv_routes and every other map key tells the families apart. Include after
 * <bpf/bpf_endian.h> and serval_maps.h.
 */
#ifndef SERVAL_NET_H
#define SERVAL_NET_H

/* IPv4 fragment bits of frag_off (host order; compare with bpf_htons). */
#define SV_IP_MF 0x2000
#define SV_IP_OFFSET 0x1fff

/* TCP flags (byte 13 of the header). */
#define SV_TCP_FIN 0x01
#define SV_TCP_SYN 0x02
#define SV_TCP_RST 0x04

/* ICMP types (linux/icmp.h pulls in libc headers, which do not build for -target bpf). */
#define SV_ICMP_ECHOREPLY 0
#define SV_ICMP_ECHO 8
#define SV_ICMPV6_ECHO_REQUEST 128
#define SV_ICMPV6_ECHO_REPLY 129

/* ICMPv6 link control: neighbour discovery (IPv6's ARP) and multicast listener discovery. */
#define SV_ICMPV6_MLD_FIRST 130 /* multicast listener query */
#define SV_ICMPV6_MLD_LAST 132 /* multicast listener done */
#define SV_ICMPV6_ND_FIRST 133 /* router solicitation */
#define SV_ICMPV6_ND_LAST 137 /* redirect */
#define SV_ICMPV6_MLD2_REPORT 143

/* IPv6 extension headers skipped before the transport header. */
#define SV_IPV6_MAX_EXT 4

/* Whether an ICMPv6 type is neighbour discovery (router/neighbour solicitation and
 * advertisement, redirect). */
static __always_inline int sv_icmp6_is_nd(__u8 type)
{
	return type >= SV_ICMPV6_ND_FIRST && type <= SV_ICMPV6_ND_LAST;
}

/* Whether an ICMPv6 type is multicast listener discovery (query, report, done, v2 report). */
static __always_inline int sv_icmp6_is_mld(__u8 type)
{
	return (type >= SV_ICMPV6_MLD_FIRST && type <= SV_ICMPV6_MLD_LAST) ||
	       type == SV_ICMPV6_MLD2_REPORT;
}

/* a = the IPv4-mapped address of v4. */
static __always_inline void sv_addr_v4(union sv_addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

/* An IPv4-mapped address (::ffff:a.b.c.d), i.e. one of the IPv4 family in sv_routes. */
static __always_inline int sv_addr_is_v4(const union sv_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline int sv_addr_eq(const union sv_addr *a, const union sv_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

/* <0, 0, >0 like memcmp (network byte order compares as big-endian numbers). */
static __always_inline int sv_addr_cmp(const union sv_addr *a, const union sv_addr *b)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 x = bpf_ntohl(a->w[i]), y = bpf_ntohl(b->w[i]);
		if (x != y)
			return x < y ? -1 : 1;
	}
	return 0;
}

#endif /* SERVAL_NET_H */
