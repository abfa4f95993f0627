/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * SCTP port rewrites: part of serval_tc.c (included before sv_rewrite, which calls
 * sv_sctp_rewrite_port for SCTP), not a standalone header.
 *
 * SCTP's checksum is a CRC32c over the whole packet (common header with the checksum field
 * zeroed, then every chunk); it does not cover the IP addresses (no pseudo header), so an
 * address rewrite leaves it alone and a port rewrite changes it. Recomputing it would read the
 * whole packet; instead it is updated from the change, using that a CRC is linear over GF(2):
 * for two messages of the same length, crc(m ^ d) = crc(m) ^ raw(d), where raw is the CRC
 * without its initial value and final xor (those cancel). The change d is zero except the
 * port's 2 bytes, which sit at the start of the packet, so raw(d) is the register after
 * feeding those bytes followed by len - 4 zero bytes:
 *
 *   raw(d) = D(x) * x^(8 * len) mod P(x)
 *
 * with D the 4 port bytes read little-endian (the reflected CRC's bit order: bit 31 is x^0)
 * and P = 0x82f63b78 (Castagnoli, reflected). x^(8 len) mod P is computed by square and
 * multiply over the 16 bits of len, each product a 32-step shift-and-xor (as zlib's
 * crc32_combine does), in a global function the verifier checks once, whatever the call site.
 * The checksum field holds the CRC little-endian, so it is updated by xor with raw(d) as read
 * little-endian too (BPF runs little-endian here; big-endian hosts are not supported).
 *
 * A fragmented SCTP packet (first fragment: the CRC covers fragments not seen here) is not
 * rewritten (SV_DROP_REWRITE).
 */
#ifndef SERVAL_SCTP_H
#define SERVAL_SCTP_H

#define SV_CRC32C_POLY 0x82f63b78u /* Castagnoli, reflected */
#define SV_CRC_X0 0x80000000u	   /* x^0 in the reflected representation */

/* a(x) * b(x) mod P(x), reflected: 32 steps of shift-and-xor. */
static __always_inline __u32 sv_crc_mulmod(__u32 a, __u32 b)
{
	__u32 p = 0;
	for (int i = 0; i < 32; i++) {
		if (a & (SV_CRC_X0 >> i))
			p ^= b;
		b = (b & 1) ? (b >> 1) ^ SV_CRC32C_POLY : b >> 1;
	}
	return p;
}

/*
 * raw(d) for the 4-byte change d (little-endian) at the start of a len-byte message: d(x) *
 * x^(8 len) mod P. Global (not static): verified once, on its own; no stack.
 */
__noinline __u32 sv_sctp_crc_shift(__u32 d, __u32 len)
{
	__u32 r = SV_CRC_X0;
	__u32 sq = SV_CRC_X0 >> 8; /* x^8: one byte */
	for (int i = 0; i < 16; i++) {
		if (len & (1u << i))
			r = sv_crc_mulmod(r, sq);
		sq = sv_crc_mulmod(sq, sq);
	}
	return sv_crc_mulmod(r, d);
}

/* Per-CPU scratch of sv_sctp_rewrite_port (off the stack; few registers live across calls). */
struct sv_sctp_scratch {
	__u32 crc;
	__be16 len;
	__be16 port;
	__u32 l4_off;
	__u32 meta; /* SV_SCTP_V4 | SV_SCTP_SRC */
	__u32 ports; /* old port << 16 | new port (as stored: __be16 values) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sv_sctp_scratch);
} sv_sctp_scratch SEC(".maps");

#define SV_SCTP_V4 1
#define SV_SCTP_SRC 2

/*
 * The port half of sv_rewrite for SCTP: the source (src) or destination port of p becomes
 * port, the CRC32c updated as the file comment says (p itself is left to sv_rewrite_l3, which
 * sv_rewrite runs next for the address: the IPv4 header checksum; SCTP's own does not cover
 * addresses). A fragment (the CRC covers fragments not seen here) cannot have its port
 * changed. Its own stack frame of a few bytes (values in the scratch, not in spilled
 * registers): sv_rewrite is inlined in frames (sv_process, sv_nat_new) at the stack limit.
 */
static __noinline int sv_sctp_rewrite_port(struct __sk_buff *skb, const struct sv_pkt *p, int src,
					   __be16 port)
{
	__u32 zero = 0;
	struct sv_sctp_scratch *s = bpf_map_lookup_elem(&sv_sctp_scratch, &zero);
	if (!s)
		return -1;
	__be16 old_port = src ? p->sport : p->dport;
	if (old_port == port)
		return 0;
	if (p->frag != SV_FRAG_NONE)
		return -1;
	s->l4_off = p->l4_off;
	s->meta = (p->family == SV_FAMILY_V4 ? SV_SCTP_V4 : 0) | (src ? SV_SCTP_SRC : 0);
	s->ports = ((__u32)old_port << 16) | port;
	/* the packet's length: from the IP header, not skb->len (no link-layer padding) */
	int v4 = s->meta & SV_SCTP_V4;
	if (bpf_skb_load_bytes(skb,
			       ETH_HLEN + (v4 ? offsetof(struct iphdr, tot_len)
					      : offsetof(struct ipv6hdr, payload_len)),
			       &s->len, 2))
		return -1;
	__u32 end = ETH_HLEN + bpf_ntohs(s->len) + (v4 ? 0 : sizeof(struct ipv6hdr));
	if (end < s->l4_off + 12 || end > skb->len)
		return -1;
	if (bpf_skb_load_bytes(skb, s->l4_off + 8, &s->crc, 4))
		return -1;
	/* the change, as the 4 port bytes read little-endian (source: bytes 0-1) */
	__u32 d = ((s->ports >> 16) ^ (s->ports & 0xffff)) << ((s->meta & SV_SCTP_SRC) ? 0 : 16);
	s->crc ^= sv_sctp_crc_shift(d, end - s->l4_off);
	s->port = (__be16)(s->ports & 0xffff);
	if (bpf_skb_store_bytes(skb, s->l4_off + 8, &s->crc, 4, 0) ||
	    bpf_skb_store_bytes(skb, s->l4_off + ((s->meta & SV_SCTP_SRC) ? 0 : 2), &s->port, 2,
				0))
		return -1;
	return 0;
}

#endif /* SERVAL_SCTP_H */
