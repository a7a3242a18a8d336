/* What datapath.c (execution, tables, ports) and datapath_poll.c (poll thread, upcalls) share:
 * the datapath's private state and the few functions one calls in the other. Not part of the API
 * (vswitch_native.h): Python never sees these names. */
#ifndef VSWITCH_DATAPATH_PRIVATE_H
#define VSWITCH_DATAPATH_PRIVATE_H

#include <pthread.h>

#include "vswitch_native.h"

/* The bytes every frame buffer keeps free in front of the frame, so that a frame is executed
 * where it was read even when what goes in front of its packet grows: VXLAN's outer headers (50
 * bytes) and then a larger virtio-net header for the out port (at most 64 more). */
#define VS_DP_HEADROOM 128

struct upcall {
    struct upcall *next;   /* the next frame of the same port, NULL for its newest */
    uint32_t len;
    uint8_t data[];
};

struct dp_port {
    uint32_t id;
    int fd;                /* -1: only vs_dp_process sees this port */
    uint32_t l2;           /* virtio-net header size, 0 without one */
    uint8_t used;
    uint8_t upcall_all;
    uint8_t polled;        /* read by the poll thread (registered with epoll, or paused) */
    uint8_t paused;        /* out of epoll while its upcalls fill its share (datapath_poll.c) */
    vs_dp_counters counters;
    struct upcall *upcall_head, *upcall_tail;  /* this port's upcalls, oldest first */
    uint32_t upcall_count;
};

struct vs_dp {
    pthread_mutex_t lock;
    vs_exact *flows;             /* VS_DP_KEY_LEN-byte key -> index into actions */
    vs_dp_action *actions;
    uint32_t flow_capacity, actions_used;  /* actions_used: slots ever taken since a flush */
    uint8_t (*flow_keys)[VS_DP_KEY_LEN];   /* the key of each slot (to remove it by slot) */
    uint8_t *flow_state;         /* per slot: FLOW_FREE, FLOW_IDLE or FLOW_USED */
    uint32_t *flow_free;         /* slots freed by the sweep, to be taken again */
    uint32_t flow_free_count, flow_hand;   /* flow_hand: the eviction clock's hand */
    vs_exact *port_index;        /* 4-byte port id -> index into ports */
    struct dp_port *ports;
    uint32_t port_slots;
    vs_dp_shared shared;
    vs_dp_params params;
    vs_dp_stats stats;
    /* Frame buffers of VS_DP_HEADROOM + VS_DP_MAX_FRAME bytes; the pointers are past the room. */
    uint8_t *inner;              /* a decapsulated frame */
    uint8_t *rx;                 /* a frame read (poll thread) or handed in (vs_dp_process) */
    /* Upcalls wait in their port's queue (struct dp_port); these count them all, and say whose
     * turn it is to be taken (an index into ports) and how many that turn has given. */
    uint32_t upcall_capacity, upcall_count, upcall_turn, upcall_given;
    int upcall_fd, stop_fd, epoll_fd;
    pthread_t thread;
    int running;
};

/* A slot of the flow table: free, or holding an entry not looked up since the sweep or the
 * eviction clock last passed it (idle), or one looked up since (used). */
enum { FLOW_FREE = 0, FLOW_IDLE = 1, FLOW_USED = 2 };

/* With the lock held. */
struct dp_port *vs_dp_port_find(vs_dp *dp, uint32_t id);
/* Registers a port's fd with epoll (0), or fails (-1). */
int vs_dp_port_watch(vs_dp *dp, struct dp_port *p);
void vs_dp_port_unpoll(vs_dp *dp, struct dp_port *p);
/* Frees the upcalls a port still has waiting (it is being removed), counted as lost. */
void vs_dp_upcalls_drop(vs_dp *dp, struct dp_port *p);
/* vs_dp_process for a port found, with the lock held, executed in place: frame (len bytes) is
 * writable and has VS_DP_HEADROOM writable bytes in front of it. On a hit, the output (at most
 * cap bytes) is at *out, inside [frame - VS_DP_HEADROOM, frame + len), and the frame may have been
 * rewritten; on any other status the frame is as it was. */
int64_t vs_dp_run(vs_dp *dp, struct dp_port *in, uint8_t *frame, size_t len, double now,
                  size_t cap, const uint8_t **out, uint32_t *out_port);
/* An eventfd made readable (1 added) or read back to not readable. */
void vs_dp_eventfd_signal(int fd);
void vs_dp_eventfd_reset(int fd);

#endif
