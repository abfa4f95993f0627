/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The packet parser of Serval's tc programs (serval_tc.c and serval_hep.c): Ethernet, IPv4 /
 * IPv6 (up to SV_IPV6_MAX_EXT extension headers), then the transport ports (TCP, UDP,
 * UDPLite, SCTP) or ICMP type, code and echo identifier, into struct sv_pkt; and the
 * normalised conntrack key and state bits of a parsed packet.
 *
 * IP fragments are the including object's choice, through four hooks it defines (after
 * including this header, before its first program):
 *
 *   int sv_frag_later(struct sv_pkt *p, __be32 id)
 *       a non-first fragment (p->proto and p->l4_off set, no transport header): fill the
 *       ports and return SV_PARSE_OK, or return SV_PARSE_FRAGMENT (not policed here);
 *   int sv_frag6_hdr(struct __sk_buff *skb, __u32 off)
 *       read the IPv6 fragment header at off: its next header, with SV_FRAG6_LATER set for a
 *       non-first fragment, or -1 when it cannot be read;
 *   __be32 sv_frag6_id(void)
 *       the identification of the IPv6 fragment header sv_frag6_hdr read last;
 *   void sv_frag_record(struct __sk_buff *skb, struct sv_pkt *p)
 *       a parsed first fragment (p->frag == SV_FRAG_FIRST): remember its ports, or nothing.
 *
 * serval_tc.c tracks fragments in sv_frags (later fragments get their datagram's ports);
 * serval_hep.c does not (a later fragment is SV_PARSE_FRAGMENT). Include after
 * serval_maps_def.h and serval_net.h; every helper is static __always_inline.
 */
#ifndef SERVAL_PARSE_H
#define SERVAL_PARSE_H

#define SV_PARSE_OK 0
#define SV_PARSE_NOT_IP 1
#define SV_PARSE_MALFORMED 2
#define SV_PARSE_FRAGMENT 3

#define SV_FRAG_NONE 0
#define SV_FRAG_FIRST 1 /* offset 0, more to come: carries the transport header */
#define SV_FRAG_LATER 2 /* no transport header: ports from sv_frags (serval_maps.h) */

/* sv_frag6_hdr: the fragment is not the first of its datagram. */
#define SV_FRAG6_LATER 0x100

struct sv_pkt {
	union sv_addr saddr;
	union sv_addr daddr;
	__be16 sport; /* conntrack ports (ICMP echo: the identifier) */
	__be16 dport;
	__be16 pol_port; /* policy port: dport (TCP/UDP/SCTP/UDPLite), type << 8 | code (ICMP) */
	__u8 proto;
	__u8 family;
	__u8 tcp_flags;
	__u8 icmp_echo;
	__u8 frag; /* SV_FRAG_*: an IP fragment (LATER: no transport header at l4_off) */
	__u8 pad;
	__u32 l4_off; /* offset of the transport header from the Ethernet header */
};

/* The fragment hooks (see the file comment): defined by the including object. */
static __always_inline int sv_frag_later(struct sv_pkt *p, __be32 id);
static __always_inline int sv_frag6_hdr(struct __sk_buff *skb, __u32 off);
static __always_inline __be32 sv_frag6_id(void);
static __always_inline void sv_frag_record(struct __sk_buff *skb, struct sv_pkt *p);

static __always_inline int sv_parse_l4(struct __sk_buff *skb, struct sv_pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr tcp;
		if (bpf_skb_load_bytes(skb, p->l4_off, &tcp, sizeof(tcp)))
			return SV_PARSE_MALFORMED;
		p->sport = tcp.source;
		p->dport = tcp.dest;
		p->pol_port = tcp.dest;
		p->tcp_flags = ((__u8 *)&tcp)[13];
		return SV_PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE: {
		/* UDPLite shares UDP's first 4 bytes (ports) */
		struct udphdr udp;
		if (bpf_skb_load_bytes(skb, p->l4_off, &udp, sizeof(udp)))
			return SV_PARSE_MALFORMED;
		p->sport = udp.source;
		p->dport = udp.dest;
		p->pol_port = udp.dest;
		return SV_PARSE_OK;
	}
	case IPPROTO_SCTP: {
		/* SCTP common header: source port, destination port, verification tag, CRC32c */
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return SV_PARSE_MALFORMED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->pol_port = ports[1];
		return SV_PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, then (echo) identifier and sequence */
		__u8 icmp[8];
		if (bpf_skb_load_bytes(skb, p->l4_off, icmp, sizeof(icmp)))
			return SV_PARSE_MALFORMED;
		if ((p->proto == IPPROTO_ICMP) != (p->family == SV_FAMILY_V4))
			return SV_PARSE_MALFORMED;
		__u8 type = icmp[0], code = icmp[1];
		p->pol_port = bpf_htons(((__u16)type << 8) | code);
		if ((p->proto == IPPROTO_ICMP && (type == SV_ICMP_ECHO || type == SV_ICMP_ECHOREPLY)) ||
		    (p->proto == IPPROTO_ICMPV6 &&
		     (type == SV_ICMPV6_ECHO_REQUEST || type == SV_ICMPV6_ECHO_REPLY))) {
			__be16 id;
			__builtin_memcpy(&id, &icmp[4], sizeof(id));
			p->sport = id;
			p->dport = id;
			p->icmp_echo = 1;
		}
		return SV_PARSE_OK;
	}
	default:
		/* other protocols: tracked and policed by protocol alone */
		return SV_PARSE_OK;
	}
}

static __always_inline int sv_parse(struct __sk_buff *skb, struct sv_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	p->frag = SV_FRAG_NONE;
	if ((void *)(eth + 1) > data_end)
		return SV_PARSE_MALFORMED;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return SV_PARSE_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return SV_PARSE_MALFORMED;
		p->family = SV_FAMILY_V4;
		sv_addr_v4(&p->saddr, ip->saddr);
		sv_addr_v4(&p->daddr, ip->daddr);
		p->proto = ip->protocol;
		p->l4_off = ETH_HLEN + ip->ihl * 4;
		if (ip->frag_off & bpf_htons(SV_IP_OFFSET))
			return sv_frag_later(p, bpf_htonl(bpf_ntohs(ip->id)));
		if (ip->frag_off & bpf_htons(SV_IP_MF))
			p->frag = SV_FRAG_FIRST;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return SV_PARSE_MALFORMED;
		if (ip6->version != 6)
			return SV_PARSE_MALFORMED;
		p->family = SV_FAMILY_V6;
		__builtin_memcpy(p->saddr.b, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr.b, &ip6->daddr, 16);
		__u8 next = ip6->nexthdr;
		__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
#pragma unroll
		for (int i = 0; i < SV_IPV6_MAX_EXT; i++) {
			if (next == IPPROTO_FRAGMENT) {
				int fh = sv_frag6_hdr(skb, off);
				if (fh < 0)
					return SV_PARSE_MALFORMED;
				next = fh & 0xff;
				off += 8;
				if (fh & SV_FRAG6_LATER) {
					p->proto = next;
					p->l4_off = off;
					return sv_frag_later(p, sv_frag6_id());
				}
				p->frag = SV_FRAG_FIRST;
				continue;
			}
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS)
				break;
			__u8 ext[2]; /* next header, length in 8-octet units not counting the first */
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return SV_PARSE_MALFORMED;
			next = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS || next == IPPROTO_FRAGMENT)
			return SV_PARSE_MALFORMED;
		p->proto = next;
		p->l4_off = off;
	} else {
		return SV_PARSE_NOT_IP;
	}
	int rc = sv_parse_l4(skb, p);
	if (rc == SV_PARSE_OK && p->frag == SV_FRAG_FIRST)
		sv_frag_record(skb, p);
	return rc;
}

/* ---- the conntrack key and state of a parsed packet --------------------------------------- */

/* Fills the normalised key; returns 1 when the packet's sender is side a. */
static __always_inline int sv_ct_key_of(const struct sv_pkt *p, struct sv_ct_key *k)
{
	int c = sv_addr_cmp(&p->saddr, &p->daddr);
	int src_is_a = c < 0 || (c == 0 && bpf_ntohs(p->sport) <= bpf_ntohs(p->dport));

	__builtin_memset(k, 0, sizeof(*k));
	if (src_is_a) {
		k->addr_a = p->saddr;
		k->addr_b = p->daddr;
		k->port_a = p->sport;
		k->port_b = p->dport;
	} else {
		k->addr_a = p->daddr;
		k->addr_b = p->saddr;
		k->port_a = p->dport;
		k->port_b = p->sport;
	}
	k->proto = p->proto;
	k->family = p->family;
	return src_is_a;
}

/* The state bits a packet adds to its flow's entry. */
static __always_inline __u32 sv_ct_bits(const struct sv_pkt *p, int from_a, __u32 old)
{
	__u32 add = from_a ? SV_CT_F_SEEN_A : SV_CT_F_SEEN_B;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & SV_TCP_SYN)
			add |= from_a ? SV_CT_F_SYN_A : SV_CT_F_SYN_B;
		if (p->tcp_flags & SV_TCP_FIN)
			add |= from_a ? SV_CT_F_FIN_A : SV_CT_F_FIN_B;
		if (p->tcp_flags & SV_TCP_RST)
			add |= SV_CT_F_RST;
		__u32 all = old | add;
		if ((all & SV_CT_F_SYN_A) && (all & SV_CT_F_SYN_B))
			add |= SV_CT_F_ESTABLISHED;
	} else {
		__u32 all = old | add;
		if ((all & SV_CT_F_SEEN_A) && (all & SV_CT_F_SEEN_B))
			add |= SV_CT_F_ESTABLISHED;
	}
	return add;
}

#endif /* SERVAL_PARSE_H */
