/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The definitions of Serval's pinned BPF maps, shared by every BPF object (each object that
 * includes this header and uses a map gets the same pinned map: the loader gives every map a
 * pin path under the node's scope, so objects loaded in the same scope share their contents).
 * Keys, values and constants: serval_maps.h. Include after <bpf/bpf_helpers.h>.
 */
#ifndef SERVAL_MAPS_DEF_H
#define SERVAL_MAPS_DEF_H

#include "serval_maps.h"

/* ---- maps (max_entries are defaults; the loader sizes them from FelixConfiguration) ----- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_ct_key);
	__type(value, struct sv_ct_val);
} sv_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_nat_fe_key);
	__type(value, struct sv_nat_fe_val);
} sv_nat_fe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_nat_be_key);
	__type(value, struct sv_nat_be_val);
} sv_nat_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sv_nat_aff_key);
	__type(value, struct sv_nat_aff_val);
} sv_nat_aff SEC(".maps");

/* Maglev tables: (M + 1) entries per Maglev frontend (M = 10007, the table of
 * bpfMaglevMaxEndpointsPerService = 100 backends) for bpfMaglevMaxServices = 100 frontends;
 * NO_PREALLOC, so memory follows the tables actually written. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1000800);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_maglev_key);
	__type(value, struct sv_maglev_val);
} sv_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_route_key);
	__type(value, struct sv_route_val);
} sv_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_pol_key);
	__type(value, struct sv_pol_val);
} sv_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_pol_sport_key);
	__type(value, struct sv_pol_val);
} sv_pol_sport SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct sv_frag_key);
	__type(value, struct sv_frag_val);
} sv_frags SEC(".maps");

/* Room for either policy key: lets a program reuse the stack of its sv_policy key. */
union sv_pol_any_key {
	struct sv_pol_key pol;
	struct sv_pol_sport_key sport;
};

/*
 * Follows an sv_policy verdict that depends on the source port (SV_VERDICT_BY_SPORT) into
 * its source-port table; any other verdict (or NULL) is returned as it is. NULL: a deny.
 * `scratch` is overwritten (pass the sv_policy key's storage: no extra stack).
 */
static __always_inline struct sv_pol_val *sv_pol_by_sport(struct sv_pol_val *v, __be16 sport,
							  union sv_pol_any_key *scratch)
{
	if (!v || v->verdict != SV_VERDICT_BY_SPORT)
		return v;
	__u32 table = v->rule_id;
	__builtin_memset(scratch, 0, sizeof(*scratch));
	scratch->sport.prefixlen = SV_POL_SPORT_PREFIX_FULL;
	scratch->sport.data.table_id = bpf_htonl(table);
	scratch->sport.data.sport = sport;
	return bpf_map_lookup_elem(&sv_pol_sport, &scratch->sport);
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sv_ep_val);
} sv_eps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sv_host_val);
} sv_host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SV_DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} sv_drops SEC(".maps");

/* bpfDSROptoutCIDRs: clients that get Tunnel under DSR (serval_tunnel.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sv_route_key);
	__type(value, __u32);
} sv_dsr_optout SEC(".maps");

/* NodePort tunnel counters (SV_TUN_*). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SV_TUN_STATS);
	__type(key, __u32);
	__type(value, __u64);
} sv_tun_stats SEC(".maps");

#endif /* SERVAL_MAPS_DEF_H */
