/* The datapath: memoised decisions replayed in C (the poll thread that feeds them and the upcall
 * queue are datapath_poll.c).
 *
 * Theory of operation
 * -------------------
 * Python's pipeline decides what happens to a flow and installs the decision as an action under
 * a key (vs_dp_install); this file replays it on later frames of the flow. The reference is the
 * pure fast path (vswitch/core/fast_path.py driven by Switch.process_batch): same lookups, same
 * per-packet checks, same output bytes, same counters. Whatever could make the pipeline decide
 * differently declines the frame (VS_DP_UPCALL) and Python sees it.
 *
 * One frame goes through three phases, so that a decline never leaves a trace:
 *   1. look up: the flow key, a per-connection marker's connection key, a VXLAN marker's inner
 *      frame; the FDB, neighbour and conntrack checks read the shared arrays only;
 *   2. build: the output is made where it costs least. Frames are executed in place, as the bare
 *      loop a datapath is measured against forwards them: the frame's buffer is writable, with
 *      VS_DP_HEADROOM bytes free in front of it. A switched frame is its own output; a routed or
 *      translated one is rewritten where it lies (MACs, TTL and checksum, NAT), once nothing can
 *      decline it any more; a larger virtio-net header for the out port, and the outer headers
 *      of an encapsulation, go into the room in front. An encapsulation takes the outer
 *      identification it would use without taking it, and keeps the bytes it changes, so that
 *      it can be undone and built again;
 *   3. commit: only after every check has passed and the output exists are the conntrack entry,
 *      the identification counter, the FDB stamp and the counters changed.
 * vs_dp_process (tests, and the daemon when it runs frames itself) copies the frame into such a
 * buffer first and the output out of it, so that it and the poll thread run the very same code.
 *
 * The flow table is bounded and never emptied at once: entries not looked up for a while are
 * swept (vs_dp_sweep, from Python's timer) and a full table evicts one idle entry per new one
 * (see "the flow table's slots" below).
 *
 * Memory: the flow table (vs_exact: key -> index into `actions`), the actions, the ports and
 * the two frame buffers (rx, inner) are allocated when the datapath is created or a port is
 * added. Replaying a hit allocates nothing; queueing an upcall mallocs its copy.
 *
 * Concurrency: one mutex guards everything in struct vs_dp. The poll thread sleeps in epoll_wait
 * without it and holds it for one burst. The shared arrays belong to Python, which writes them
 * without the mutex; every element is naturally aligned, so C reads whole values, and the one
 * counter both sides increment (the outer IPv4 identification) is changed atomically.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "datapath_private.h"

#define ETH_HLEN 14
#define VNET_LEGACY_LEN 10        /* the first 10 bytes every virtio-net header size shares */
#define VNET_F_NEEDS_CSUM 1u
#define VNET_GSO_NONE 0u
#define VNET_GSO_TCPV4 1u
#define VNET_GSO_UDP 3u
#define VNET_GSO_ECN 0x80u
#define VNET_GSO_UDP_TUNNEL 0x60u /* VNET_GSO_UDP_TUNNEL_IPV4 | _IPV6: only crosses decapsulated */
#define PROTO_ICMP 1u
#define PROTO_TCP 6u
#define PROTO_UDP 17u
#define TCP_FIN 0x01u
#define TCP_SYN 0x02u
#define TCP_RST 0x04u
#define TCP_ACK 0x10u
#define NO_PORT UINT32_MAX
#define MAX_L2 64                 /* the largest virtio-net header a port may have */
#define VXLAN_OUTER_LEN 50        /* Ethernet, IPv4, UDP, VXLAN: what a wrap puts in front */
/* The bytes of a frame an encapsulation changes besides the room in front: its virtio-net and
 * Ethernet headers and, of its packet, the IPv4 header (<= 60) and the L4 bytes a NAT rewrite
 * changes (up to the TCP checksum, 18). */
#define KEPT_LEN (MAX_L2 + ETH_HLEN + 60 + 18)

_Static_assert(VS_DP_HEADROOM >= VXLAN_OUTER_LEN + MAX_L2,
               "the room in front takes the outer headers and the largest header growth");

static const uint8_t INNER_PREFIX[4] = {0xff, 'V', 'X', 'L'};

/* The outcome of looking a frame up and checking it: what the build and commit phases need. */
struct hit {
    const vs_dp_action *a;
    uint8_t *frame;              /* the frame the action runs on (the inner one after decap) */
    size_t len;
    size_t l2;
    int connection;              /* the conntrack update applies */
    double ct_expires;           /* its new expiry */
    uint32_t ident;              /* the outer identification the wrap used */
    uint8_t kept[KEPT_LEN];      /* what an encapsulation changed, as read (see undo) */
    size_t kept_len;             /* 0: the frame was not changed yet */
};

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* ---- ports --------------------------------------------------------------------------------- */

static void port_key(uint32_t id, uint8_t key[4])
{
    key[0] = (uint8_t)(id >> 24);
    key[1] = (uint8_t)(id >> 16);
    key[2] = (uint8_t)(id >> 8);
    key[3] = (uint8_t)id;
}

struct dp_port *vs_dp_port_find(vs_dp *dp, uint32_t id)
{
    uint8_t key[4];
    int64_t index;
    port_key(id, key);
    if (!vs_exact_lookup(dp->port_index, key, &index))
        return NULL;
    return &dp->ports[index];
}

int vs_dp_port_watch(vs_dp *dp, struct dp_port *p)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (1ull << 32) | p->id};
    return epoll_ctl(dp->epoll_fd, EPOLL_CTL_ADD, p->fd, &ev) == 0 ? 0 : -1;
}

void vs_dp_port_unpoll(vs_dp *dp, struct dp_port *p)
{
    if (p->polled && !p->paused)
        epoll_ctl(dp->epoll_fd, EPOLL_CTL_DEL, p->fd, NULL);
    p->polled = 0;
    p->paused = 0;
}

/* ---- look up ------------------------------------------------------------------------------- */

/* An entry of the current generation is marked used, hit or declined: its flow is alive (the
 * sweep and the eviction clock spare it). FlowCache's twin is fast_path.lookup. */
static const vs_dp_action *flow_get(vs_dp *dp, const uint8_t *key)
{
    int64_t index;
    if (!vs_exact_lookup(dp->flows, key, &index))
        return NULL;
    const vs_dp_action *a = &dp->actions[index];
    if (a->generation != dp->params.generation)
        return NULL;
    dp->flow_state[index] = FLOW_USED;
    return a;
}

/* connection_key() of fast_path.py: the bytes appended to the flow key, or 0 when the L4 header
 * is not all there. The frame has a flow key, so its IPv4 header is complete. */
static size_t connection_part(const uint8_t *frame, size_t len, size_t l2, uint8_t *part)
{
    size_t l3 = l2 + ETH_HLEN;
    size_t l4 = l3 + (size_t)(frame[l3] & 0x0f) * 4;
    uint8_t proto = frame[l3 + 9];
    if (proto == PROTO_TCP || proto == PROTO_UDP) {
        if (len < l4 + (proto == PROTO_TCP ? 20u : 8u))
            return 0;
        part[0] = proto;
        memcpy(part + 1, frame + l4, 4);
        return 5;
    }
    if (proto == PROTO_ICMP && len >= l4 + 8) {
        part[0] = proto;
        part[1] = frame[l4];
        memcpy(part + 2, frame + l4 + 4, 2);
        return 4;
    }
    return 0;
}

/* lookup() of fast_path.py: the entry under key (4-byte prefix + flow key), following a
 * per-connection marker. */
static const vs_dp_action *lookup(vs_dp *dp, uint8_t *key, const uint8_t *frame, size_t len,
                                  size_t l2)
{
    const vs_dp_action *a = flow_get(dp, key);
    if (a == NULL || a->kind != VS_DP_PER_CONNECTION)
        return a;
    if (connection_part(frame, len, l2, key + 4 + VS_FLOW_KEY_LEN) == 0)
        return NULL;
    a = flow_get(dp, key);
    return a != NULL && a->kind != VS_DP_PER_CONNECTION ? a : NULL;
}

static int fdb_fresh(const vs_dp *dp, uint32_t slot, uint32_t inc, double now)
{
    const vs_dp_shared *s = &dp->shared;
    return s->fdb_seen != NULL && s->fdb_inc != NULL && slot < s->fdb_capacity
        && s->fdb_inc[slot] == inc
        && now - s->fdb_seen[slot] < dp->params.fdb_aging;
}

/* packet_length_on_wire() of fast_path.py: the IPv4 length of each packet this frame becomes
 * (one TSO segment for a GSO frame). */
static size_t length_on_wire(const uint8_t *frame, size_t len, size_t l2)
{
    size_t l3 = l2 + ETH_HLEN;
    if (l2 == 0 || frame[1] == VNET_GSO_NONE)
        return rd16(frame + l3 + 2);
    size_t ihl = (size_t)(frame[l3] & 0x0f) * 4;
    size_t l4_header = 8;
    if (frame[l3 + 9] == PROTO_TCP && len >= l3 + ihl + 20)
        l4_header = (size_t)(frame[l3 + ihl + 12] >> 4) * 4;
    return ihl + l4_header + (size_t)(frame[4] | (frame[5] << 8));
}

/* _routing_allows() of fast_path.py: the neighbour's freshness, TTL, MTU, header checksum. */
static int routing_allows(const vs_dp *dp, const vs_dp_action *a, const uint8_t *frame,
                          size_t len, size_t l2, double now)
{
    const vs_dp_shared *s = &dp->shared;
    size_t l3 = l2 + ETH_HLEN;
    size_t ihl = (size_t)(frame[l3] & 0x0f) * 4;
    return s->nbr_since != NULL && s->nbr_inc != NULL && a->nbr_slot < s->nbr_capacity
        && s->nbr_inc[a->nbr_slot] == a->nbr_inc
        && now - s->nbr_since[a->nbr_slot] < dp->params.reachable_time
        && frame[l3 + 8] > 1
        && length_on_wire(frame, len, l2) <= a->mtu
        && vs_checksum(frame + l3, ihl) == 0;
}

/* The plain conntrack update of _connection() and ConntrackTable.update, checked only: 1 with
 * the new expiry in *expires, or 0 when the pipeline must see the packet. */
static int connection_allows(const vs_dp *dp, const vs_dp_action *a, const uint8_t *frame,
                             size_t len, size_t l2, double now, double *expires)
{
    const vs_dp_shared *s = &dp->shared;
    uint32_t slot = a->ct_slot;
    if (s->ct_expires == NULL || s->ct_seen == NULL || s->ct_packets == NULL
        || s->ct_bytes == NULL || s->ct_state == NULL || s->ct_flags == NULL
        || s->ct_inc == NULL || slot >= s->ct_capacity || s->ct_inc[slot] != a->ct_inc
        || !(s->ct_flags[slot] & VS_CT_IN_TABLE) || !(now < s->ct_expires[slot]))
        return 0;
    size_t l3 = l2 + ETH_HLEN;
    size_t l4 = l3 + (size_t)(frame[l3] & 0x0f) * 4;
    uint8_t proto = frame[l3 + 9];
    uint8_t flags = s->ct_flags[slot];
    int replied = (flags & VS_CT_REPLIED) != 0;
    if (proto == PROTO_TCP) {
        if (len < l4 + 20)
            return 0;
        /* The flags byte only: the NS bit takes no part in the state machine. */
        uint8_t tcp = frame[l4 + 13];
        if (s->ct_state[slot] != VS_TCP_ESTABLISHED || !(flags & VS_CT_ASSURED)
            || (tcp & (TCP_SYN | TCP_FIN | TCP_RST)) || !(tcp & TCP_ACK))
            return 0;
        *expires = now + dp->params.ct_established;
    } else if (proto == PROTO_UDP || proto == PROTO_ICMP) {
        if (a->direction == 1 && !replied)
            return 0;  /* the first reply changes the entry: the pipeline's job */
        if (proto == PROTO_UDP)
            *expires = now + (replied ? dp->params.ct_udp_replied : dp->params.ct_udp_unreplied);
        else
            *expires = now + dp->params.ct_icmp;
    } else {
        return 0;
    }
    /* Moving an expiry earlier reorders the pipeline's timers: its job too. */
    return !(*expires < s->ct_expires[slot]);
}

/* Phase 1: the action for this frame with every per-packet check passed, or an UPCALL status
 * (counted as a miss when the frame had a key). */
static int64_t find(vs_dp *dp, const struct dp_port *in, uint8_t *frame, size_t len,
                    double now, struct hit *hit)
{
    size_t l2 = in->l2;
    uint8_t key[VS_DP_KEY_LEN] = {0};
    port_key(in->id, key);
    if (vs_flow_key(frame, len, len, l2, key + 4) != VS_FK_OK)
        return VS_DP_UPCALL;
    const vs_dp_action *a = lookup(dp, key, frame, len, l2);
    if (a != NULL && a->kind == VS_DP_DECAP) {
        int64_t inner = vs_vxlan_open(a, frame, len, l2, dp->inner, VS_DP_MAX_FRAME);
        a = NULL;
        if (inner >= 0) {
            frame = dp->inner;
            len = (size_t)inner;
            memset(key, 0, sizeof key);
            memcpy(key, INNER_PREFIX, 4);
            if (vs_flow_key(frame, len, len, l2, key + 4) == VS_FK_OK) {
                a = lookup(dp, key, frame, len, l2);
                if (a != NULL && a->kind == VS_DP_DECAP)
                    a = NULL;
            }
        }
    }
    if (a == NULL || (a->kind != VS_DP_FORWARD && a->kind != VS_DP_CONNECTION)
        || !fdb_fresh(dp, a->dst_slot, a->dst_inc, now))
        goto miss;
    int connection = a->kind == VS_DP_CONNECTION;
    double ct_expires = 0;
    if ((connection && !connection_allows(dp, a, frame, len, l2, now, &ct_expires))
        || (a->rewrite_macs && !routing_allows(dp, a, frame, len, l2, now))
        || (a->encap && !a->rewrite_macs))  /* the pipeline only encapsulates routed packets */
        goto miss;
    hit->a = a;  /* only now: vs_dp_run tells a decline after this point by it */
    hit->frame = frame;
    hit->len = len;
    hit->l2 = l2;
    hit->connection = connection;
    hit->ct_expires = ct_expires;
    return 0;
miss:
    dp->stats.misses++;
    return VS_DP_UPCALL;
}

/* ---- build --------------------------------------------------------------------------------- */

/* lower_ttl() of pipeline/ttl.py on an IPv4 header in place. */
static void lower_ttl(uint8_t *ip)
{
    uint8_t ttl = ip[8], proto = ip[9];
    uint16_t csum = vs_checksum_update16(rd16(ip + 10), (uint16_t)((ttl << 8) | proto),
                                         (uint16_t)(((ttl - 1) << 8) | proto));
    ip[8] = (uint8_t)(ttl - 1);
    ip[10] = (uint8_t)(csum >> 8);
    ip[11] = (uint8_t)csum;
}

/* convert_framing() of core/egress.py, in two steps so that the decision comes before any byte
 * moves: may a frame with the header `vnet` (in_l2 bytes) go to a port with out_l2 bytes? */
static int framing_allows(const uint8_t *vnet, size_t in_l2, size_t out_l2)
{
    if (in_l2 == out_l2 || in_l2 == 0)
        return 1;
    if (out_l2 > 0)
        return !(vnet[1] & VNET_GSO_UDP_TUNNEL);  /* those only cross decapsulated */
    /* Segmenting or completing checksums in software is not implemented. */
    return vnet[1] == VNET_GSO_NONE && !(vnet[0] & VNET_F_NEEDS_CSUM);
}

/* The out port's header for a frame that carried `vnet`: zeros, or the shared legacy 10 bytes
 * followed by zeros. */
static void write_vnet(const uint8_t *vnet, size_t in_l2, uint8_t *out, size_t out_l2)
{
    size_t kept = in_l2 == 0 || out_l2 == 0 ? 0 : VNET_LEGACY_LEN;
    memcpy(out, vnet, kept);
    memset(out + kept, 0, out_l2 - kept);
}

/* The routed IPv4 packet `ip` wrapped in VXLAN into out (framed like the in port, whose header
 * was `vnet`), with the identification the next increment of the shared counter gives; the
 * counter itself is taken only at commit (fast_path.py takes overlay.next_ident() only for a
 * packet it sends). */
static int64_t wrap(vs_dp *dp, struct hit *hit, const uint8_t *vnet, const uint8_t *ip,
                    size_t ip_len, uint8_t *out, size_t cap)
{
    if (dp->shared.vxlan_ident == NULL)
        return -1;
    hit->ident = __atomic_load_n(dp->shared.vxlan_ident, __ATOMIC_RELAXED) + 1;
    return vs_vxlan_wrap(hit->a, vnet, hit->l2, ip, ip_len, (uint16_t)hit->ident, out, cap);
}

/* Puts back what an encapsulation changed in the frame: declined after all, or to be built
 * again with another identification, it is the frame as read again. */
static void undo(struct hit *hit)
{
    memcpy(hit->frame, hit->kept, hit->kept_len);
    hit->kept_len = 0;
}

/* build() for an encapsulating action, in place as well: the packet translated and its TTL
 * lowered where it lies (find let only routed actions encapsulate), then the outer headers and
 * the inner Ethernet header written in front of it, over the frame's own headers and into the
 * room in front (vs_vxlan_wrap copies the packet onto itself). Whether the wrap can be made
 * depends on nothing the rewrite changes, but it is known only once it is tried: the bytes it
 * may change are kept first and put back (undo) when it cannot. */
static int64_t encapsulate(vs_dp *dp, struct hit *hit, size_t out_l2, size_t cap,
                           uint8_t **start)
{
    const vs_dp_action *a = hit->a;
    uint8_t *frame = hit->frame;
    size_t l2 = hit->l2, l3 = l2 + ETH_HLEN;
    size_t total = rd16(frame + l3 + 2);
    if (cap < VS_DP_MAX_FRAME)
        return VS_DP_EINVAL;  /* so that a declined wrap means the frame, not the buffer */
    hit->kept_len = hit->len < KEPT_LEN ? hit->len : KEPT_LEN;
    memcpy(hit->kept, frame, hit->kept_len);
    uint8_t *ip = frame + l3;
    if (hit->connection) {
        int partial = l2 > 0 && (frame[0] & VNET_F_NEEDS_CSUM);
        vs_nat_rewrite(ip, total, a->target_src, a->target_dst, a->target_sport,
                       a->target_dport, partial);
    }
    lower_ttl(ip);
    /* The inner Ethernet header lands on the frame's own, the rest in front of it. */
    uint8_t *out = frame - VXLAN_OUTER_LEN;
    int64_t n = wrap(dp, hit, hit->kept, ip, total, out, VXLAN_OUTER_LEN + hit->len);
    if (n < 0 || (size_t)n - l2 + out_l2 > cap) {
        undo(hit);
        return n < 0 ? VS_DP_UPCALL : VS_DP_EINVAL;
    }
    *start = out;
    return n;
}

/* Phase 2: the output, framed like the in port, at *start; its length, VS_DP_UPCALL when the
 * action declines after all (a wrap that cannot be made), VS_DP_EINVAL when it would not fit in
 * cap bytes once framed for the out port (out_l2 bytes of header). Everything but an
 * encapsulation is done in place, after the last check: a frame it changes is a hit. */
static int64_t build(vs_dp *dp, struct hit *hit, size_t out_l2, size_t cap, uint8_t **start)
{
    const vs_dp_action *a = hit->a;
    if (a->encap)
        return encapsulate(dp, hit, out_l2, cap, start);
    uint8_t *frame = hit->frame;
    size_t l2 = hit->l2, l3 = l2 + ETH_HLEN;
    size_t total = rd16(frame + l3 + 2);
    int switched = !hit->connection && !a->rewrite_macs;
    /* A switched frame leaves whole; a rewritten one without the padding after its packet. */
    size_t n = switched ? hit->len : l3 + total;
    if (n > cap || n - l2 + out_l2 > cap)
        return VS_DP_EINVAL;
    if (hit->connection) {
        int partial = l2 > 0 && (frame[0] & VNET_F_NEEDS_CSUM);
        vs_nat_rewrite(frame + l3, total, a->target_src, a->target_dst, a->target_sport,
                       a->target_dport, partial);
    }
    if (a->rewrite_macs) {
        memcpy(frame + l2, a->rewrite, 12);
        lower_ttl(frame + l3);
    }
    *start = frame;
    return (int64_t)n;
}

/* ---- commit -------------------------------------------------------------------------------- */

/* Phase 3 for the state a hit changes: conntrack, the identification counter, the FDB stamp.
 * 0, or -1 when the identification moved under us (Python took one): build again. */
static int commit_state(vs_dp *dp, struct hit *hit, double now)
{
    const vs_dp_action *a = hit->a;
    vs_dp_shared *s = &dp->shared;
    if (a->encap) {
        uint32_t expected = hit->ident - 1;
        if (!__atomic_compare_exchange_n(s->vxlan_ident, &expected, hit->ident, 0,
                                         __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return -1;
    }
    if (hit->connection) {
        size_t at = 2 * (size_t)a->ct_slot + (a->direction ? 1 : 0);
        s->ct_packets[at] += 1;
        s->ct_bytes[at] += rd16(hit->frame + hit->l2 + ETH_HLEN + 2);
        s->ct_seen[a->ct_slot] = now;
        s->ct_expires[a->ct_slot] = hit->ct_expires;
    }
    if (s->fdb_seen != NULL && s->fdb_inc != NULL && a->src_slot < s->fdb_capacity
        && s->fdb_inc[a->src_slot] == a->src_inc)
        s->fdb_seen[a->src_slot] = now;
    return 0;
}

/* fast_path.vnet_plausible: 0 for a virtio-net header that cannot describe its frame (a
 * checksum to complete past the end, a GSO type that is not the packet's, a GSO size of 0),
 * which the pipeline counts and drops; it is never replayed to an output port. */
static int vnet_plausible(const uint8_t *frame, size_t len, size_t l2)
{
    if (l2 == 0 || len < l2 + ETH_HLEN + 20)
        return 1;  /* no header, or no flow key: find declines the frame anyway */
    unsigned flags = frame[0], gso_type = frame[1];
    if (flags == 0 && gso_type == VNET_GSO_NONE)
        return 1;
    size_t csum_start = frame[6] | (size_t)frame[7] << 8;
    size_t csum_offset = frame[8] | (size_t)frame[9] << 8;
    if ((flags & VNET_F_NEEDS_CSUM) && csum_start + csum_offset + 2 > len - l2)
        return 0;
    if (gso_type == VNET_GSO_NONE || (gso_type & VNET_GSO_UDP_TUNNEL))
        return 1;
    unsigned base = gso_type & ~VNET_GSO_ECN & 0xffu, proto = frame[l2 + ETH_HLEN + 9];
    unsigned gso_size = frame[4] | (unsigned)frame[5] << 8;
    return gso_size > 0 && ((base == VNET_GSO_TCPV4 && proto == PROTO_TCP)
                            || (base == VNET_GSO_UDP && proto == PROTO_UDP));
}

int64_t vs_dp_run(vs_dp *dp, struct dp_port *in, uint8_t *frame, size_t len, double now,
                  size_t cap, const uint8_t **out, uint32_t *out_port)
{
    *out_port = NO_PORT;
    *out = NULL;
    if (in->upcall_all || dp->params.upcall_all) {
        dp->stats.upcalls++;
        return VS_DP_UPCALL;
    }
    struct hit hit;  /* find fills it on a hit; kept[] is not cleared for every frame */
    hit.a = NULL;
    hit.kept_len = 0;
    int64_t n = find(dp, in, frame, len, now, &hit);
    if (n == 0 && !vnet_plausible(frame, len, in->l2))
        n = VS_DP_UPCALL;  /* a miss, as the pure fast path's apply declines it */
    struct dp_port *outp = n == 0 ? vs_dp_port_find(dp, hit.a->out_port) : NULL;
    size_t out_l2 = outp != NULL ? outp->l2 : in->l2;
    uint8_t *start = NULL;
    for (int attempt = 0; n == 0; attempt++) {
        n = build(dp, &hit, out_l2, cap, &start);
        if (n < 0 || commit_state(dp, &hit, now) == 0)
            break;
        /* The identification moved: Python encapsulated meanwhile (only an encapsulation takes
         * one). The frame as read again, build again, a few times. */
        undo(&hit);
        n = attempt < 8 ? 0 : VS_DP_UPCALL;
    }
    if (n < 0) {
        if (n == VS_DP_UPCALL) {
            if (hit.a != NULL)
                dp->stats.misses++;
            dp->stats.upcalls++;
        }
        return n;
    }
    dp->stats.hits++;
    in->counters.rx_packets++;
    in->counters.rx_bytes += len - in->l2;
    *out_port = hit.a->out_port;
    if (outp == NULL) {
        in->counters.tx_port_gone++;  /* the target has no counters left: its source counts */
        return VS_DP_CONSUMED;
    }
    size_t body = (size_t)n - in->l2;
    if (out_l2 != in->l2) {
        /* The body stays; the out port's header is written in front of it, in the headroom
         * when it is the larger. */
        uint8_t vnet[MAX_L2];
        memcpy(vnet, start, in->l2);
        if (!framing_allows(vnet, in->l2, out_l2)) {
            outp->counters.tx_offload_unsupported++;
            return VS_DP_CONSUMED;
        }
        start = start - out_l2 + in->l2;
        write_vnet(vnet, in->l2, start, out_l2);
    }
    outp->counters.tx_packets++;
    outp->counters.tx_bytes += body;
    *out = start;
    return (int64_t)(out_l2 + body);
}

/* ---- control ------------------------------------------------------------------------------- */

/* A frame buffer: VS_DP_MAX_FRAME bytes with VS_DP_HEADROOM more in front; the pointer is past
 * the room. */
static uint8_t *frame_buffer_new(void)
{
    uint8_t *room = malloc(VS_DP_HEADROOM + VS_DP_MAX_FRAME);
    return room != NULL ? room + VS_DP_HEADROOM : NULL;
}

static void frame_buffer_free(uint8_t *buffer)
{
    if (buffer != NULL)
        free(buffer - VS_DP_HEADROOM);
}

vs_dp *vs_dp_create(uint32_t flow_capacity, uint32_t upcall_capacity, uint64_t seed)
{
    if (flow_capacity == 0 || flow_capacity > VS_EXACT_MAX_CAPACITY || upcall_capacity == 0)
        return NULL;
    vs_dp *dp = calloc(1, sizeof *dp);
    if (dp == NULL)
        return NULL;
    dp->upcall_fd = dp->stop_fd = dp->epoll_fd = -1;
    if (pthread_mutex_init(&dp->lock, NULL) != 0) {
        free(dp);
        return NULL;
    }
    dp->flow_capacity = flow_capacity;
    dp->upcall_capacity = upcall_capacity;
    dp->flows = vs_exact_create(VS_DP_KEY_LEN, flow_capacity, seed);
    dp->actions = calloc(flow_capacity, sizeof *dp->actions);
    dp->flow_keys = calloc(flow_capacity, sizeof *dp->flow_keys);
    dp->flow_state = calloc(flow_capacity, 1);
    dp->flow_free = calloc(flow_capacity, sizeof *dp->flow_free);
    dp->port_index = vs_exact_create(4, 4096, seed);
    dp->inner = frame_buffer_new();
    dp->rx = frame_buffer_new();
    dp->upcall_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event stop = {.events = EPOLLIN, .data.u64 = 0};
    if (dp->flows == NULL || dp->actions == NULL || dp->flow_keys == NULL
        || dp->flow_state == NULL || dp->flow_free == NULL || dp->port_index == NULL
        || dp->inner == NULL || dp->rx == NULL || dp->upcall_fd < 0 || dp->stop_fd < 0
        || dp->epoll_fd < 0
        || epoll_ctl(dp->epoll_fd, EPOLL_CTL_ADD, dp->stop_fd, &stop) != 0) {
        vs_dp_destroy(dp);
        return NULL;
    }
    dp->stats.capacity = flow_capacity;
    return dp;
}

void vs_dp_destroy(vs_dp *dp)
{
    if (dp == NULL)
        return;
    vs_dp_stop(dp);
    for (uint32_t i = 0; i < dp->port_slots; i++)
        vs_dp_upcalls_drop(dp, &dp->ports[i]);
    vs_exact_destroy(dp->flows);
    vs_exact_destroy(dp->port_index);
    free(dp->actions);
    free(dp->flow_keys);
    free(dp->flow_state);
    free(dp->flow_free);
    free(dp->ports);
    frame_buffer_free(dp->inner);
    frame_buffer_free(dp->rx);
    int fds[3] = {dp->upcall_fd, dp->stop_fd, dp->epoll_fd};
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_mutex_destroy(&dp->lock);
    free(dp);
}

void vs_dp_set_shared(vs_dp *dp, const vs_dp_shared *shared)
{
    pthread_mutex_lock(&dp->lock);
    dp->shared = *shared;
    pthread_mutex_unlock(&dp->lock);
}

void vs_dp_set_params(vs_dp *dp, const vs_dp_params *params)
{
    pthread_mutex_lock(&dp->lock);
    dp->params = *params;
    pthread_mutex_unlock(&dp->lock);
}

void vs_dp_set_generation(vs_dp *dp, uint64_t generation)
{
    pthread_mutex_lock(&dp->lock);
    dp->params.generation = generation;
    pthread_mutex_unlock(&dp->lock);
}

/* The poll thread reads with read() and must never block holding the lock: the fd is made
 * non-blocking (a flag of the open file, which Python's own I/O on it expects as well). */
int vs_dp_port_add(vs_dp *dp, uint32_t port_id, int fd, uint32_t l2_offset, int upcall_all)
{
    if ((l2_offset != 0 && l2_offset < VNET_LEGACY_LEN) || l2_offset > MAX_L2)
        return VS_DP_EINVAL;
    if (fd >= 0) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return VS_DP_EINVAL;
    }
    int status = VS_DP_EINVAL;
    pthread_mutex_lock(&dp->lock);
    if (vs_dp_port_find(dp, port_id) != NULL)
        goto out;
    uint32_t index = 0;
    while (index < dp->port_slots && dp->ports[index].used)
        index++;
    if (index == dp->port_slots) {
        uint32_t slots = dp->port_slots ? 2 * dp->port_slots : 16;
        struct dp_port *grown = realloc(dp->ports, slots * sizeof *grown);
        if (grown == NULL)
            goto out;
        memset(grown + dp->port_slots, 0, (slots - dp->port_slots) * sizeof *grown);
        dp->ports = grown;
        dp->port_slots = slots;
    }
    uint8_t key[4];
    port_key(port_id, key);
    if (vs_exact_insert(dp->port_index, key, index) != 1)
        goto out;
    struct dp_port *p = &dp->ports[index];
    memset(p, 0, sizeof *p);
    p->id = port_id;
    p->fd = fd;
    p->l2 = l2_offset;
    p->used = 1;
    p->upcall_all = upcall_all != 0;
    if (fd >= 0) {
        if (vs_dp_port_watch(dp, p) != 0) {
            vs_exact_delete(dp->port_index, key);
            p->used = 0;
            goto out;
        }
        p->polled = 1;
    }
    status = 0;
out:
    pthread_mutex_unlock(&dp->lock);
    return status;
}

int vs_dp_port_set_upcall_all(vs_dp *dp, uint32_t port_id, int upcall_all)
{
    pthread_mutex_lock(&dp->lock);
    struct dp_port *p = vs_dp_port_find(dp, port_id);
    if (p != NULL)
        p->upcall_all = upcall_all != 0;
    pthread_mutex_unlock(&dp->lock);
    return p != NULL ? 0 : VS_DP_EINVAL;
}

int vs_dp_port_del(vs_dp *dp, uint32_t port_id)
{
    pthread_mutex_lock(&dp->lock);
    struct dp_port *p = vs_dp_port_find(dp, port_id);
    if (p != NULL) {
        uint8_t key[4];
        port_key(port_id, key);
        vs_dp_port_unpoll(dp, p);
        vs_dp_upcalls_drop(dp, p);
        vs_exact_delete(dp->port_index, key);
        p->used = 0;
    }
    pthread_mutex_unlock(&dp->lock);
    return p != NULL ? 0 : VS_DP_EINVAL;
}

int vs_dp_port_counters(vs_dp *dp, uint32_t port_id, vs_dp_counters *out)
{
    pthread_mutex_lock(&dp->lock);
    struct dp_port *p = vs_dp_port_find(dp, port_id);
    if (p != NULL)
        *out = p->counters;
    pthread_mutex_unlock(&dp->lock);
    return p != NULL ? 0 : VS_DP_EINVAL;
}

/* ---- the flow table's slots ------------------------------------------------------------------
 *
 * FlowCache (vswitch/core/flow_cache.py) is the twin, slot for slot. An entry lives in a slot of
 * `actions`; a slot is taken from the sweep's free list first, then from the never used ones,
 * and only when every slot holds an entry is one evicted, by a clock (second chance): the hand
 * goes round the slots, marking a used entry idle and passing on, until it reaches an idle one,
 * which goes. An entry looked up since the hand last passed it is never the one evicted while
 * another is idle, so a full table sheds the flows that ended, not the ones that run. */

static void flow_remove(vs_dp *dp, uint32_t slot)
{
    vs_exact_delete(dp->flows, dp->flow_keys[slot]);
    dp->flow_state[slot] = FLOW_FREE;
}

static uint32_t flow_evict(vs_dp *dp)
{
    for (;;) {
        uint32_t slot = dp->flow_hand;
        dp->flow_hand = (slot + 1) % dp->flow_capacity;
        if (dp->flow_state[slot] == FLOW_USED) {
            dp->flow_state[slot] = FLOW_IDLE;
            continue;
        }
        flow_remove(dp, slot);
        dp->stats.evictions++;
        return slot;
    }
}

static uint32_t sweep_locked(vs_dp *dp)
{
    uint32_t swept = 0;
    for (uint32_t slot = 0; slot < dp->actions_used; slot++) {
        if (dp->flow_state[slot] == FLOW_USED) {
            dp->flow_state[slot] = FLOW_IDLE;
        } else if (dp->flow_state[slot] == FLOW_IDLE) {
            flow_remove(dp, slot);
            dp->flow_free[dp->flow_free_count++] = slot;
            swept++;
        }
    }
    dp->stats.swept += swept;
    return swept;
}

static void flush_locked(vs_dp *dp)
{
    vs_exact_clear(dp->flows);
    memset(dp->flow_state, FLOW_FREE, dp->flow_capacity);
    dp->actions_used = dp->flow_free_count = dp->flow_hand = 0;
}

int vs_dp_install(vs_dp *dp, const uint8_t *key, const vs_dp_action *action)
{
    int installed = 1;
    int64_t index;
    pthread_mutex_lock(&dp->lock);
    if (!vs_exact_lookup(dp->flows, key, &index)) {
        uint32_t slot;
        if (dp->flow_free_count > 0) {
            slot = dp->flow_free[--dp->flow_free_count];
        } else if (dp->actions_used < dp->flow_capacity) {
            slot = dp->actions_used++;
        } else {
            slot = flow_evict(dp);
            installed = 0;
        }
        memcpy(dp->flow_keys[slot], key, VS_DP_KEY_LEN);
        vs_exact_insert(dp->flows, key, slot);
        index = slot;
    }
    dp->actions[index] = *action;
    dp->flow_state[index] = FLOW_USED;
    dp->stats.installs++;
    pthread_mutex_unlock(&dp->lock);
    return installed;
}

uint32_t vs_dp_sweep(vs_dp *dp)
{
    pthread_mutex_lock(&dp->lock);
    uint32_t swept = sweep_locked(dp);
    pthread_mutex_unlock(&dp->lock);
    return swept;
}

void vs_dp_flush(vs_dp *dp)
{
    pthread_mutex_lock(&dp->lock);
    flush_locked(dp);
    dp->stats.flushes++;
    pthread_mutex_unlock(&dp->lock);
}

void vs_dp_stats_get(vs_dp *dp, vs_dp_stats *out)
{
    pthread_mutex_lock(&dp->lock);
    dp->stats.entries = vs_exact_count(dp->flows);
    dp->stats.upcall_queued = dp->upcall_count;
    *out = dp->stats;
    pthread_mutex_unlock(&dp->lock);
}

/* The frame is run where the poll thread runs it, in dp->rx (free under the lock: the poll thread
 * holds the lock while it uses it); a frame longer than any port reads is EINVAL. */
int64_t vs_dp_process(vs_dp *dp, uint32_t in_port, const uint8_t *frame, size_t len, double now,
                      uint8_t *out, size_t out_cap, uint32_t *out_port)
{
    int64_t n = VS_DP_EINVAL;
    *out_port = NO_PORT;
    pthread_mutex_lock(&dp->lock);
    struct dp_port *in = vs_dp_port_find(dp, in_port);
    if (in != NULL && len <= VS_DP_MAX_FRAME) {
        const uint8_t *output;
        memcpy(dp->rx, frame, len);
        n = vs_dp_run(dp, in, dp->rx, len, now, out_cap, &output, out_port);
        if (n >= 0)
            memcpy(out, output, (size_t)n);
    }
    pthread_mutex_unlock(&dp->lock);
    return n;
}

