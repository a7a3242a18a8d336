/* What datapath.c (execution, tables, ports) and datapath_poll.c (poll thread, upcalls) share:
 * the datapath's private state and the few functions one calls in the other. Not part of the API
 * (vswitch_native.h): Python never sees these names. */
#ifndef VSWITCH_DATAPATH_PRIVATE_H
#define VSWITCH_DATAPATH_PRIVATE_H

#include <pthread.h>

#include "vswitch_native.h"

struct dp_port {
    uint32_t id;
    int fd;                /* -1: only vs_dp_process sees this port */
    uint32_t l2;           /* virtio-net header size, 0 without one */
    uint8_t used;
    uint8_t upcall_all;
    uint8_t polled;        /* registered with epoll */
    vs_dp_counters counters;
};

struct upcall {
    uint32_t port;
    uint32_t len;
    uint8_t data[];
};

struct vs_dp {
    pthread_mutex_t lock;
    vs_exact *flows;             /* VS_DP_KEY_LEN-byte key -> index into actions */
    vs_dp_action *actions;
    uint32_t flow_capacity, actions_used;
    vs_exact *port_index;        /* 4-byte port id -> index into ports */
    struct dp_port *ports;
    uint32_t port_slots;
    vs_dp_shared shared;
    vs_dp_params params;
    vs_dp_stats stats;
    uint8_t *inner;              /* a decapsulated frame */
    uint8_t *packet;             /* the IPv4 packet of a translated connection, rewritten */
    uint8_t *rx, *tx;            /* the poll thread's frame buffers */
    struct upcall **upcalls;     /* ring of upcall_capacity */
    uint32_t upcall_capacity, upcall_head, upcall_count;
    int upcall_fd, stop_fd, epoll_fd;
    pthread_t thread;
    int running;
};

/* With the lock held. */
struct dp_port *vs_dp_port_find(vs_dp *dp, uint32_t id);
void vs_dp_port_unpoll(vs_dp *dp, struct dp_port *p);
/* vs_dp_process for a port found, with the lock held. */
int64_t vs_dp_run(vs_dp *dp, struct dp_port *in, const uint8_t *frame, size_t len, double now,
                  uint8_t *out, size_t cap, uint32_t *out_port);
/* An eventfd made readable (1 added) or read back to not readable. */
void vs_dp_eventfd_signal(int fd);
void vs_dp_eventfd_reset(int fd);

#endif
