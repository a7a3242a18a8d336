/* The C side of vswitch's fast path.
 *
 * Every function here has a pure-Python twin in vswitch/accel/pure.py with the same Python-level
 * signature; tests hold the two equal. The rules all of it follows (see native/README.md):
 *   - The caller owns every buffer passed in and keeps it alive for the duration of the call; no
 *     function keeps a pointer to caller memory after it returns.
 *   - Nothing reads past the length it is given; short input yields a status, never a crash.
 *   - Tables allocate when they are created or grown by a control-plane call (add/insert of a new
 *     entry that needs room). Lookups, batch lookups and the checksum and flow-key code allocate
 *     nothing.
 */
#ifndef VSWITCH_NATIVE_H
#define VSWITCH_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* ---- Internet checksum (RFC 1071, RFC 1624) ---------------------------------------------- */

uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial);
uint16_t vs_checksum(const uint8_t *data, size_t len);
uint16_t vs_checksum_update16(uint16_t old_csum, uint16_t old_word, uint16_t new_word);
uint16_t vs_checksum_update32(uint16_t old_csum, uint32_t old_value, uint32_t new_value);
uint16_t vs_pseudo_header_sum(const uint8_t *src_ip, const uint8_t *dst_ip, uint8_t proto,
                              uint32_t length);
uint16_t vs_l4_checksum(const uint8_t *src_ip, const uint8_t *dst_ip, int proto,
                        const uint8_t *segment, size_t len);

/* ---- NAT rewrite (RFC 1624 incremental checksums) ----------------------------------------- */

enum vs_nat_status {
    VS_NAT_OK = 0,
    VS_NAT_SHORT = -1,   /* fewer than 20 bytes */
    VS_NAT_BAD_IHL = -2, /* IHL < 5 */
};

/* Rewrites the IPv4 packet of len bytes in place: src_ip/dst_ip (4 bytes each, NULL: keep), the
 * TCP/UDP ports or the ICMP echo identifier (sport, else dport; -1: keep). partial says the L4
 * checksum field holds a virtio-net partial checksum (a pseudo-header sum). */
int vs_nat_rewrite(uint8_t *packet, size_t len, const uint8_t *src_ip, const uint8_t *dst_ip,
                   int32_t sport, int32_t dport, int partial);

/* ---- Exact-match hash table (robin-hood open addressing, backward-shift delete) ---------- */

#define VS_EXACT_MAX_KEY 255u
#define VS_EXACT_MAX_CAPACITY (1u << 28)

typedef struct vs_exact vs_exact;

uint64_t vs_exact_hash(const uint8_t *key, size_t len, uint64_t seed);
uint32_t vs_exact_slots_for(uint32_t capacity);
vs_exact *vs_exact_create(uint32_t key_size, uint32_t capacity, uint64_t seed);
void vs_exact_destroy(vs_exact *t);
uint32_t vs_exact_count(const vs_exact *t);
uint32_t vs_exact_slots(const vs_exact *t);
/* 1: inserted, 2: existing key updated, 0: table full. */
int vs_exact_insert(vs_exact *t, const uint8_t *key, int64_t value);
/* 1: found (value stored), 0: absent. */
int vs_exact_lookup(const vs_exact *t, const uint8_t *key, int64_t *value);
int vs_exact_delete(vs_exact *t, const uint8_t *key);
void vs_exact_clear(vs_exact *t);
/* keys holds n keys of key_size bytes back to back. Returns the number of hits. */
size_t vs_exact_lookup_batch(const vs_exact *t, const uint8_t *keys, size_t n, int64_t *values,
                             uint8_t *found);
/* Copies up to max entries in slot order. Returns the number copied. */
size_t vs_exact_dump(const vs_exact *t, uint8_t *keys, int64_t *values, size_t max);
/* Longest probe distance present, for statistics. */
uint32_t vs_exact_max_probe(const vs_exact *t);

/* ---- IPv4 longest-prefix match (DIR-16-8-8 multibit trie) ------------------------------- */

#define VS_LPM_MAX_VALUE 0x7fffffffu
#define VS_LPM_MAX_ROUTES (1u << 26)

enum vs_lpm_status {
    VS_LPM_OK = 0,
    VS_LPM_FULL = -1,   /* max_routes reached */
    VS_LPM_NOMEM = -2,  /* growing the group pool failed; the table is unchanged */
    VS_LPM_BADARG = -3, /* length > 32 or value > VS_LPM_MAX_VALUE */
};

typedef struct vs_lpm4 vs_lpm4;

vs_lpm4 *vs_lpm4_create(uint32_t max_routes);
void vs_lpm4_destroy(vs_lpm4 *t);
int vs_lpm4_add(vs_lpm4 *t, uint32_t prefix, unsigned length, uint32_t value);
int vs_lpm4_delete(vs_lpm4 *t, uint32_t prefix, unsigned length);
int vs_lpm4_lookup(const vs_lpm4 *t, uint32_t addr, uint32_t *value);
/* out[i] is the value for addrs[i], or -1 when no route covers it. Returns the number of hits. */
size_t vs_lpm4_lookup_batch(const vs_lpm4 *t, const uint32_t *addrs, size_t n, int32_t *out);
uint32_t vs_lpm4_count(const vs_lpm4 *t);
uint32_t vs_lpm4_groups(const vs_lpm4 *t);
void vs_lpm4_clear(vs_lpm4 *t);

/* ---- Flow-key extraction (Ethernet + IPv4) ----------------------------------------------- */

#define VS_FLOW_KEY_LEN 22

enum vs_flow_key_status {
    VS_FK_OK = 0,
    VS_FK_SHORT = 1,          /* fewer than offset + 14 + 20 bytes */
    VS_FK_NOT_IPV4 = 2,       /* ethertype is not 0x0800 (VLAN tags included) */
    VS_FK_BAD_VERSION = 3,    /* IP version field is not 4 */
    VS_FK_BAD_IHL = 4,        /* IHL < 5 or the header does not fit the frame */
    VS_FK_BAD_TOTAL_LEN = 5,  /* total length < header length or > bytes present */
    VS_FK_FRAGMENT = 6,       /* MF set or fragment offset non-zero */
    VS_FK_WINDOW = 7,         /* the caller passed fewer readable bytes than the checks need */
};

/* Classifies one frame of `len` bytes, of which the first `readable` are at `frame` (readable may
 * be less than len when the caller passes only the headers). Fills key on VS_FK_OK. */
int vs_flow_key(const uint8_t *frame, size_t readable, size_t len, size_t offset, uint8_t *key);
/* Batch form over header windows: window i starts at windows + i * stride and holds the first
 * min(lens[i], stride) bytes of frame i, whose full length is lens[i]. A stride of offset + 34
 * covers every byte the checks and the key need. keys receives n * VS_FLOW_KEY_LEN bytes (zeros
 * where there is no key), status n codes. Returns the number of VS_FK_OK. */
size_t vs_flow_keys_batch(const uint8_t *windows, size_t stride, const uint64_t *lens, size_t n,
                          size_t offset, uint8_t *keys, uint8_t *status);

/* ---- The datapath: cached decisions executed in C (datapath.c, vxlan.c) -------------------
 *
 * Python decides, C executes (Open vSwitch's dpif-netdev split). Python's pipeline memoises a
 * decision as an action under a flow key (vs_dp_install); vs_dp_process replays it on a later
 * frame of the flow, checking first whatever may differ per packet, and declines (VS_DP_UPCALL)
 * whenever the pipeline could decide differently. The pure twin is vswitch/core/fast_path.py;
 * tests hold the two equal byte for byte and counter for counter.
 *
 * State that both sides touch lives in one place: arrays owned by Python (array.array objects,
 * fixed size, handed over once with vs_dp_set_shared) that C reads and writes in place. A slot of
 * those arrays is named by (slot, incarnation): Python bumps the incarnation when it frees or
 * reuses a slot, so an action that names an old incarnation is declined.
 *
 * Locking: one mutex per datapath guards ports, the flow table, actions and counters. Every
 * vs_dp_* call takes it (cffi releases the GIL around calls); the poll thread holds it while it
 * handles a burst and never while it sleeps in epoll_wait. */

#define VS_DP_KEY_LEN 36        /* port (4, big endian) + flow key (22) + connection part (<= 5) + zero padding */
#define VS_DP_MAX_FRAME 65600   /* the largest frame read or written: 24 + 14 + 4 + 65535, rounded up */

enum vs_dp_kind {
    VS_DP_FORWARD = 1,      /* switched or routed (rewrite_macs), maybe encapsulated */
    VS_DP_PER_CONNECTION = 2, /* marker: look the connection key up instead */
    VS_DP_CONNECTION = 3,   /* a translated connection: conntrack update + NAT rewrite, then forward */
    VS_DP_DECAP = 4,        /* marker: VXLAN for our VTEP from a known node: open it, look the inner key up */
};

enum vs_dp_status {
    VS_DP_UPCALL = -1,      /* no valid entry, or the entry declines this frame: Python decides */
    VS_DP_CONSUMED = -2,    /* a hit whose output the target port cannot take (counted there) */
    VS_DP_EINVAL = -3,      /* bad argument (unknown port, buffer too small) */
};

/* What vs_dp_set_shared hands over: arrays of `capacity` elements each, owned by Python. */
typedef struct vs_dp_shared {
    double *fdb_seen;            /* FDB entry: last time its MAC was seen */
    uint32_t *fdb_inc;
    uint32_t fdb_capacity;
    double *nbr_since;           /* neighbour: when it was confirmed if REACHABLE, else -inf */
    uint32_t *nbr_inc;
    uint32_t nbr_capacity;
    double *ct_expires;          /* conntrack entry fields */
    double *ct_seen;
    uint64_t *ct_packets;        /* 2 per entry: [2*slot + direction] */
    uint64_t *ct_bytes;          /* 2 per entry */
    uint8_t *ct_state;           /* TcpState value */
    uint8_t *ct_flags;           /* VS_CT_* bits */
    uint32_t *ct_inc;
    uint32_t ct_capacity;
    uint32_t *vxlan_ident;       /* one counter: the outer IPv4 identification, +1 per packet */
} vs_dp_shared;

#define VS_CT_IN_TABLE 1u
#define VS_CT_REPLIED 2u
#define VS_CT_ASSURED 4u
#define VS_TCP_ESTABLISHED 3u

typedef struct vs_dp_params {
    double fdb_aging;            /* a destination MAC unseen this long is a miss */
    double reachable_time;       /* a neighbour confirmed longer ago is a miss */
    double ct_established;       /* conntrack timeouts of the plain states */
    double ct_udp_unreplied;
    double ct_udp_replied;
    double ct_icmp;
    double clock_offset;         /* poll threads: now = CLOCK_MONOTONIC seconds + clock_offset */
    uint64_t generation;         /* entries of another generation are misses */
    uint8_t upcall_all;          /* every frame goes to Python (a capture is armed) */
} vs_dp_params;

typedef struct vs_dp_action {
    uint64_t generation;
    uint32_t out_port;
    uint8_t kind;                /* enum vs_dp_kind */
    uint8_t rewrite_macs;        /* routed: check TTL > 1, header checksum, MTU, neighbour; set MACs; TTL - 1 */
    uint8_t encap;               /* wrap the routed packet in VXLAN (the encap_* fields) */
    uint8_t direction;           /* connection: 0 original, 1 reply */
    uint32_t mtu;                /* routed: the largest IPv4 packet (per segment of a GSO frame) */
    uint32_t src_slot, src_inc;  /* FDB: set fdb_seen[src_slot] = now on a hit */
    uint32_t dst_slot, dst_inc;  /* FDB: now - fdb_seen[dst_slot] < fdb_aging, or a miss */
    uint32_t nbr_slot, nbr_inc;  /* routed: now - nbr_since[nbr_slot] < reachable_time, or a miss */
    uint8_t rewrite[12];         /* routed: Ethernet destination + source (for encap: the outer ones) */
    uint32_t ct_slot, ct_inc;    /* connection */
    uint8_t target_src[4];       /* connection: the tuple the packet leaves with */
    uint8_t target_dst[4];
    uint16_t target_sport, target_dport;
    uint8_t encap_inner_macs[12];/* encap: inner Ethernet destination + source (the VTEP MACs) */
    uint8_t encap_src_ip[4];     /* encap: our underlay address */
    uint8_t encap_dst_ip[4];     /* encap: the node's underlay address */
    uint16_t encap_port;         /* encap: UDP destination port; decap: the port we listen on */
    uint32_t encap_vni;          /* encap and decap: the VNI */
    uint64_t encap_hash_seed;    /* encap: seeds the outer source port hash (vs_vxlan_source_port) */
    uint8_t decap_vtep_mac[6];   /* decap: our VTEP MAC */
} vs_dp_action;

typedef struct vs_dp_counters {  /* per port, for frames the datapath handled itself */
    uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
    uint64_t tx_busy, tx_offload_unsupported, tx_port_gone, tx_error;
    uint64_t upcall_lost;        /* frames of this port the upcall queue had no room for */
} vs_dp_counters;

typedef struct vs_dp_stats {
    uint64_t hits, misses, installs, flushes, entries, capacity;
    uint64_t upcalls, upcall_lost, upcall_queued, wakeups, read_errors;
    uint64_t evictions;          /* entries a full table evicted to install another */
    uint64_t swept;              /* entries a sweep removed, not looked up since the one before */
} vs_dp_stats;

typedef struct vs_dp vs_dp;

vs_dp *vs_dp_create(uint32_t flow_capacity, uint32_t upcall_capacity, uint64_t seed);
void vs_dp_destroy(vs_dp *dp);  /* stops the poll thread first; never closes a port's fd */
void vs_dp_set_shared(vs_dp *dp, const vs_dp_shared *shared);
void vs_dp_set_params(vs_dp *dp, const vs_dp_params *params);
void vs_dp_set_generation(vs_dp *dp, uint64_t generation);
/* fd -1: a port only vs_dp_process sees (tests, in-memory ports). l2_offset: the virtio-net
 * header's size, 0 without one. upcall_all: every frame of this port goes to Python (traced). */
int vs_dp_port_add(vs_dp *dp, uint32_t port_id, int fd, uint32_t l2_offset, int upcall_all);
int vs_dp_port_set_upcall_all(vs_dp *dp, uint32_t port_id, int upcall_all);
/* After it returns the poll thread no longer reads or writes the port's fd; the port's upcalls
 * still waiting are dropped (counted in upcall_lost). */
int vs_dp_port_del(vs_dp *dp, uint32_t port_id);
int vs_dp_port_counters(vs_dp *dp, uint32_t port_id, vs_dp_counters *out);
/* 1 installed, 0 installed in the place of an entry the full table evicted (counted in
 * evictions): the first idle one the clock's hand reaches (see datapath.c). */
int vs_dp_install(vs_dp *dp, const uint8_t *key, const vs_dp_action *action);
/* Removes the entries not looked up since the sweep before (counted in swept) and marks the
 * others idle: the number removed. Python's timer runs it (NativeFlowCache.expire). */
uint32_t vs_dp_sweep(vs_dp *dp);
void vs_dp_flush(vs_dp *dp);     /* every entry, at once (counted in flushes) */
void vs_dp_stats_get(vs_dp *dp, vs_dp_stats *out);
/* One frame through the cached path, synchronously: the output's length (>= 0, written to out,
 * framed for *out_port) on a hit, else a vs_dp_status. Counts exactly as the poll thread does.
 * A frame longer than VS_DP_MAX_FRAME is VS_DP_EINVAL (no port reads one). */
int64_t vs_dp_process(vs_dp *dp, uint32_t in_port, const uint8_t *frame, size_t len, double now,
                      uint8_t *out, size_t out_cap, uint32_t *out_port);
/* The poll thread: reads every port with an fd, handles hits, queues the rest for Python, in one
 * queue per port; all together hold at most upcall_capacity frames, and when they are full the
 * port with the most waiting loses its oldest to make room for another port's frame. A port
 * holding half of them is not read (its frames wait in its fd) until Python has taken it down
 * to a quarter. */
int vs_dp_start(vs_dp *dp);
void vs_dp_stop(vs_dp *dp);
int vs_dp_upcall_fd(vs_dp *dp);  /* an eventfd, readable while upcalls wait */
/* The next waiting upcall, taking the ports in turn (up to 8 frames of one port per turn, each
 * port's oldest first): its length (copied to buf) and port, or -1 when none waits. */
int64_t vs_dp_upcall_take(vs_dp *dp, uint32_t *port, uint8_t *buf, size_t cap);

/* ---- VXLAN in the datapath (vxlan.c) ----------------------------------------------------- */

/* The outer UDP source port for an inner flow key (vxlan.inner_flow_key's bytes): the exact
 * table's hash (vs_exact_hash) with seed, mapped into 32768..60999 (vxlan.source_port). */
uint16_t vs_vxlan_source_port(const uint8_t *flow_key, size_t len, uint64_t seed);
/* The routed inner IPv4 packet (ip, ip_len; TTL already lowered) wrapped for a->encap_*: writes
 * the outer frame (virtio-net header of l2_offset bytes converted from vnet, rewrite, outer IPv4
 * with identification ident + UDP + VXLAN, inner Ethernet, the packet) to out. Its length
 * (l2_offset + 64 + ip_len), or -1 when the frame cannot cross the tunnel as it is (the pipeline
 * then decides), when l2_offset is not 0, 10 or 24, when ip is not an IPv4 header that fits
 * ip_len, or when cap is too small. The twin: FastPath._encapsulated after tunnel.outer_vnet.
 * out may end where ip begins (in place: the datapath wraps a packet where it was read). */
int64_t vs_vxlan_wrap(const vs_dp_action *a, const uint8_t *vnet, size_t l2_offset,
                      const uint8_t *ip, size_t ip_len, uint16_t ident, uint8_t *out, size_t cap);
/* The inner frame (with its virtio-net header of l2_offset bytes, converted) of a VXLAN frame of
 * len bytes for the VTEP a->decap_vtep_mac / a->encap_port / a->encap_vni, written to out: its
 * length, or -1 for anything vxlan-decap would drop or treat specially, for an l2_offset other
 * than 0, 10 or 24, or when cap is too small. The twin: FastPath._opened. */
int64_t vs_vxlan_open(const vs_dp_action *a, const uint8_t *frame, size_t len, size_t l2_offset,
                      uint8_t *out, size_t cap);

#endif
