/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Drop counting, route and identity lookups and the compiled-policy lookup shared by
 * Serval's tc objects (serval_tc.c: workload policy; serval_hep.c: host endpoint policy).
 * Maps: sv_drops, sv_routes, sv_policy, sv_pol_sport (serval_maps_def.h). Include after
 * serval_parse.h, with sv_log defined; every helper is static __always_inline.
 */
#ifndef SERVAL_POLICY_H
#define SERVAL_POLICY_H

/* Counts a drop for reason (SV_DROP_*) and returns the tc verdict that drops. */
static __always_inline int sv_drop(__u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&sv_drops, &reason);
	if (count)
		*count += 1; /* per-CPU slot: no atomics needed */
	sv_log("drop reason=%u", reason);
	return TC_ACT_SHOT;
}

/* The sv_routes entry covering addr (its longest prefix), if any. */
static __always_inline struct sv_route_val *sv_route(const union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	return bpf_map_lookup_elem(&sv_routes, &k);
}

/*
 * The identity of addr; an address no route covers is WORLD (IPv4) or WORLD6 (IPv6). The
 * family is read off the address itself (IPv4-mapped or not), the same way sv_routes tells
 * the families apart; passing the packet's family instead costs registers the debug build's
 * 512-byte stack cannot spare.
 */
static __always_inline __u32 sv_identity(const union sv_addr *addr)
{
	struct sv_route_key k = {.prefixlen = 128};
	k.addr = *addr;
	struct sv_route_val *r = bpf_map_lookup_elem(&sv_routes, &k);
	if (r)
		return r->identity;
	return sv_addr_is_v4(&k.addr) ? SV_IDENTITY_WORLD : SV_IDENTITY_WORLD6;
}

/*
 * The sv_policy verdict of endpoint ep_id (its policy id) for packet p to/from a remote of
 * identity (dir: SV_DIR_*): the exact remote identity first, then SV_IDENTITY_ANY; a verdict
 * that depends on the source port is followed into its sv_pol_sport table. NULL: no entry
 * (a deny for ordinary policy; "nothing decided" for an untracked set). key is scratch for
 * both lookups (the caller's stack slot).
 */
static __always_inline struct sv_pol_val *sv_policy_lookup(__u32 ep_id, __u8 dir, __u32 identity,
							   const struct sv_pkt *p,
							   union sv_pol_any_key *key)
{
	struct sv_pol_key *k = &key->pol;
	__builtin_memset(key, 0, sizeof(*key));
	k->prefixlen = SV_POL_PREFIX_FULL;
	k->data.ep_id = bpf_htonl(ep_id);
	k->data.remote_id = bpf_htonl(identity);
	k->data.dir = dir;
	k->data.proto = p->proto;
	k->data.port = p->pol_port;
	struct sv_pol_val *v = bpf_map_lookup_elem(&sv_policy, k);
	if (!v) {
		k->data.remote_id = bpf_htonl(SV_IDENTITY_ANY);
		v = bpf_map_lookup_elem(&sv_policy, k);
	}
	/* rules with source ports: the verdict names a source-port table (same stack slot) */
	return sv_pol_by_sport(v, p->sport, key);
}

#endif /* SERVAL_POLICY_H */
