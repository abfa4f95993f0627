// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Serval's connect-time load balancer: cgroup v2 socket-address programs, attached to the
 * node's cgroup (every process below it: the node's pods in the lab, the whole host by
 * default on a real one). A socket's service frontend is replaced by a backend once, in the
 * system call, so its packets carry the backend's address from the start and the tc programs
 * see a plain flow (no NAT, no NAT conntrack entry):
 *
 *   serval_ctlb_connect4/6     connect(2) of TCP (and UDP) sockets: frontend -> backend
 *   serval_ctlb_sendmsg4/6     sendto/sendmsg of unconnected UDP sockets: frontend -> backend
 *                              (the socket keeps its backend per frontend: sv_ctlb_fwd)
 *   serval_ctlb_recvmsg4/6     recvfrom/recvmsg of UDP: backend -> frontend (replies appear
 *                              to come from the service address)
 *   serval_ctlb_getpeername4/6 getpeername(2): backend -> frontend
 *
 * The backend is chosen as the tc path (serval_tc.c sv_service) chooses it: ClientIP
 * affinity from sv_nat_aff while fresh, else a random slot among all backends or, under
 * internalTrafficPolicy: Local, the node-local ones. The affinity "client" of a socket is its
 * network namespace (a pod; the node itself for host-networked processes), written as an
 * address of the discard-only prefix 100::/64 (RFC 6666) followed by the netns cookie, which
 * no real client address can equal.
 *
 * A frontend without (local) backends is left alone: the tc program rejects it (TCP RST /
 * ICMP unreachable). Which protocols are translated is the global sv_ctlb_protos
 * (SV_CTLB_F_*), set by the loader from FelixConfiguration bpfConnectTimeLoadBalancing, plus
 * sv_ctlb_host_protos for the sockets of the node's own network namespace
 * (bpfHostNetworkedNATWithoutCTLB).
 *
 * Maps: the node's pinned sv_nat_fe / sv_nat_be / sv_nat_aff (serval_maps_def.h) and this
 * object's own sv_ctlb_fwd / sv_ctlb_rev (LRU, pinned in the same scope by the loader).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "serval_maps_def.h"
#include "serval_net.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SV_LOG_PREFIX "serval ctlb: "
#include "serval_log.h"

/* SV_CTLB_F_*: set by the loader before load (rodata). */
const volatile __u32 sv_ctlb_protos = SV_CTLB_F_TCP;
/*
 * Protocols translated in addition for sockets of the node's own network namespace
 * (host-networked clients), whose cookie is sv_ctlb_host_netns: with
 * bpfConnectTimeLoadBalancing TCP, Calico NATs host-networked UDP in tc; Serval has no tc
 * program on the host's own traffic, so these programs do it for the host's sockets.
 */
const volatile __u32 sv_ctlb_host_protos = 0;
const volatile __u64 sv_ctlb_host_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sv_ctlb_key);
	__type(value, struct sv_ctlb_val);
} sv_ctlb_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sv_ctlb_key);
	__type(value, struct sv_ctlb_val);
} sv_ctlb_rev SEC(".maps");

#define SV_ALLOW 1 /* a cgroup sock_addr program's "go on" */

static __always_inline int sv_proto_on(struct bpf_sock_addr *ctx, __u32 proto)
{
	__u32 bit = proto == IPPROTO_TCP ? SV_CTLB_F_TCP : proto == IPPROTO_UDP ? SV_CTLB_F_UDP : 0;
	if (!bit)
		return 0;
	if (sv_ctlb_protos & bit)
		return 1;
	return (sv_ctlb_host_protos & bit) && sv_ctlb_host_netns &&
	       bpf_get_netns_cookie(ctx) == sv_ctlb_host_netns;
}

/* The affinity client of the socket: 100::/64 + its network namespace's cookie. */
static __always_inline void sv_affinity_client(struct bpf_sock_addr *ctx, union sv_addr *a)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	a->w[0] = bpf_htonl(0x01000000);
	a->w[1] = 0;
	a->w[2] = (__u32)(netns >> 32);
	a->w[3] = (__u32)netns;
}

/*
 * Picks the backend for (vip, vport, proto) into *out. use_fwd: reuse (and record) the
 * backend this socket used for the frontend before (unconnected UDP). Returns 1 when *out is
 * a backend, 0 to leave the address alone (not a frontend, no backends: tc handles it).
 */
static __always_inline int sv_pick(struct bpf_sock_addr *ctx, const union sv_addr *vip,
				   __be16 vport, __u8 proto, int use_fwd, struct sv_ctlb_val *out)
{
	struct sv_nat_fe_key fk;
	__builtin_memset(&fk, 0, sizeof(fk));
	fk.addr = *vip;
	fk.port = vport;
	fk.proto = proto;
	struct sv_nat_fe_val *fe = bpf_map_lookup_elem(&sv_nat_fe, &fk);
	if (!fe)
		return 0;
	__u32 svc_id = fe->svc_id;
	__u32 flags = fe->flags;
	__u32 count = (flags & SV_NAT_FE_F_INT_LOCAL) ? fe->local_count : fe->count;
	__u64 timeout_ns = (__u64)fe->affinity_timeout_s * 1000000000ull;
	if (count == 0) {
		sv_log("service %u: no backends, left to tc", svc_id);
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	int affinity = flags & SV_NAT_FE_F_AFFINITY;
	/* Affinity already keeps a client on one backend; the per-socket memory is for the rest. */
	use_fwd = use_fwd && !affinity;

	struct sv_ctlb_key fwd_key;
	__builtin_memset(&fwd_key, 0, sizeof(fwd_key));
	if (use_fwd) {
		fwd_key.cookie = bpf_get_socket_cookie(ctx);
		fwd_key.addr = *vip;
		fwd_key.port = vport;
		fwd_key.proto = proto;
		struct sv_ctlb_val *prev = bpf_map_lookup_elem(&sv_ctlb_fwd, &fwd_key);
		if (prev && prev->svc_id == svc_id && prev->slot < count) {
			struct sv_nat_be_key bk = {.svc_id = svc_id, .slot = prev->slot};
			struct sv_nat_be_val *bv = bpf_map_lookup_elem(&sv_nat_be, &bk);
			if (bv && sv_addr_eq(&bv->addr, &prev->addr) && bv->port == prev->port) {
				*out = *prev;
				return 1;
			}
		}
	}

	struct sv_nat_aff_key ak;
	__builtin_memset(&ak, 0, sizeof(ak));
	if (affinity) {
		sv_affinity_client(ctx, &ak.client);
		ak.svc_id = svc_id;
		struct sv_nat_aff_val *av = bpf_map_lookup_elem(&sv_nat_aff, &ak);
		if (av && now - av->ts_ns < timeout_ns) {
			av->ts_ns = now;
			__builtin_memset(out, 0, sizeof(*out));
			out->addr = av->addr;
			out->port = av->port;
			out->svc_id = svc_id;
			out->slot = SV_CTLB_SLOT_NONE;
			sv_log("service %u: affinity backend", svc_id);
			return 1;
		}
	}

	struct sv_nat_be_key bk = {.svc_id = svc_id, .slot = bpf_get_prandom_u32() % count};
	struct sv_nat_be_val *bv = bpf_map_lookup_elem(&sv_nat_be, &bk);
	if (!bv)
		return 0; /* inconsistent maps: tc counts it */
	__builtin_memset(out, 0, sizeof(*out));
	out->addr = bv->addr;
	out->port = bv->port;
	out->svc_id = svc_id;
	out->slot = bk.slot;
	sv_log("service %u: backend slot %u of %u", svc_id, bk.slot, count);

	if (affinity) {
		struct sv_nat_aff_val av;
		__builtin_memset(&av, 0, sizeof(av));
		av.ts_ns = now;
		av.addr = bv->addr;
		av.port = bv->port;
		bpf_map_update_elem(&sv_nat_aff, &ak, &av, BPF_ANY);
	}
	if (use_fwd)
		bpf_map_update_elem(&sv_ctlb_fwd, &fwd_key, out, BPF_ANY);
	return 1;
}

/* Remembers that this socket's `be` stands for (vip, vport): recvmsg / getpeername. */
static __always_inline void sv_remember(struct bpf_sock_addr *ctx, const struct sv_ctlb_val *be,
					const union sv_addr *vip, __be16 vport, __u8 proto)
{
	struct sv_ctlb_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr = be->addr;
	k.port = be->port;
	k.proto = proto;
	struct sv_ctlb_val v;
	__builtin_memset(&v, 0, sizeof(v));
	v.addr = *vip;
	v.port = vport;
	v.svc_id = be->svc_id;
	v.slot = SV_CTLB_SLOT_NONE;
	/* LRU: never full; a failure only shows the backend's address to the application. */
	bpf_map_update_elem(&sv_ctlb_rev, &k, &v, BPF_ANY);
}

/* The frontend this socket's peer (addr, port) stands for, or NULL. */
static __always_inline struct sv_ctlb_val *sv_recall(struct bpf_sock_addr *ctx,
						     const union sv_addr *addr, __be16 port,
						     __u8 proto)
{
	struct sv_ctlb_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr = *addr;
	k.port = port;
	k.proto = proto;
	return bpf_map_lookup_elem(&sv_ctlb_rev, &k);
}

/* ---- IPv4 ------------------------------------------------------------------------------- */

static __always_inline int sv_to_backend4(struct bpf_sock_addr *ctx, int use_fwd)
{
	__u8 proto = ctx->protocol;
	if (!sv_proto_on(ctx, proto))
		return SV_ALLOW;
	union sv_addr vip;
	sv_addr_v4(&vip, ctx->user_ip4);
	__be16 vport = (__be16)ctx->user_port;
	struct sv_ctlb_val be;
	if (!sv_pick(ctx, &vip, vport, proto, use_fwd, &be))
		return SV_ALLOW;
	if (!sv_addr_is_v4(&be.addr))
		return SV_ALLOW; /* an IPv6 backend for an IPv4 frontend: cannot be */
	sv_remember(ctx, &be, &vip, vport, proto);
	ctx->user_ip4 = be.addr.w[3];
	ctx->user_port = (__u32)be.port;
	return SV_ALLOW;
}

static __always_inline int sv_to_frontend4(struct bpf_sock_addr *ctx, __u8 proto)
{
	union sv_addr peer;
	sv_addr_v4(&peer, ctx->user_ip4);
	struct sv_ctlb_val *fe = sv_recall(ctx, &peer, (__be16)ctx->user_port, proto);
	if (fe && sv_addr_is_v4(&fe->addr)) {
		ctx->user_ip4 = fe->addr.w[3];
		ctx->user_port = (__u32)fe->port;
	}
	return SV_ALLOW;
}

SEC("cgroup/connect4")
int serval_ctlb_connect4(struct bpf_sock_addr *ctx)
{
	return sv_to_backend4(ctx, 0);
}

SEC("cgroup/sendmsg4")
int serval_ctlb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sv_to_backend4(ctx, 1);
}

SEC("cgroup/recvmsg4")
int serval_ctlb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sv_to_frontend4(ctx, IPPROTO_UDP);
}

SEC("cgroup/getpeername4")
int serval_ctlb_getpeername4(struct bpf_sock_addr *ctx)
{
	return sv_to_frontend4(ctx, ctx->protocol);
}

/* ---- IPv6 (and IPv4-mapped destinations of IPv6 sockets) -------------------------------- */

static __always_inline void sv_user_ip6(struct bpf_sock_addr *ctx, union sv_addr *a)
{
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void sv_set_user_ip6(struct bpf_sock_addr *ctx, const union sv_addr *a)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

static __always_inline int sv_to_backend6(struct bpf_sock_addr *ctx, int use_fwd)
{
	__u8 proto = ctx->protocol;
	if (!sv_proto_on(ctx, proto))
		return SV_ALLOW;
	union sv_addr vip;
	sv_user_ip6(ctx, &vip);
	__be16 vport = (__be16)ctx->user_port;
	struct sv_ctlb_val be;
	if (!sv_pick(ctx, &vip, vport, proto, use_fwd, &be))
		return SV_ALLOW;
	sv_remember(ctx, &be, &vip, vport, proto);
	sv_set_user_ip6(ctx, &be.addr);
	ctx->user_port = (__u32)be.port;
	return SV_ALLOW;
}

static __always_inline int sv_to_frontend6(struct bpf_sock_addr *ctx, __u8 proto)
{
	union sv_addr peer;
	sv_user_ip6(ctx, &peer);
	struct sv_ctlb_val *fe = sv_recall(ctx, &peer, (__be16)ctx->user_port, proto);
	if (fe) {
		union sv_addr front = fe->addr;
		sv_set_user_ip6(ctx, &front);
		ctx->user_port = (__u32)fe->port;
	}
	return SV_ALLOW;
}

SEC("cgroup/connect6")
int serval_ctlb_connect6(struct bpf_sock_addr *ctx)
{
	return sv_to_backend6(ctx, 0);
}

SEC("cgroup/sendmsg6")
int serval_ctlb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sv_to_backend6(ctx, 1);
}

SEC("cgroup/recvmsg6")
int serval_ctlb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sv_to_frontend6(ctx, IPPROTO_UDP);
}

SEC("cgroup/getpeername6")
int serval_ctlb_getpeername6(struct bpf_sock_addr *ctx)
{
	return sv_to_frontend6(ctx, ctx->protocol);
}
