/* The datapath's poll thread and its queue of upcalls (the execution is datapath.c).
 *
 * Theory of operation
 * -------------------
 * One thread per datapath sleeps in epoll_wait over every port with an fd (and an internal
 * eventfd that stops it), without the lock. Woken, it takes the lock for one burst: up to BURST
 * frames from each ready port, read with non-blocking read() into one preallocated buffer (with
 * room in front, VS_DP_HEADROOM), each run through vs_dp_run with the monotonic clock, which
 * executes it in that buffer; a hit is written to its port from where vs_dp_run left it in the
 * buffer, everything else, untouched by a decline, is copied into the upcall queue for Python.
 * Then it reads once more the ports it wrote to (see poll_loop) and lets the lock go.
 *
 * Upcalls are fair between ports, as Open vSwitch hands each port's upcalls to the handlers in
 * turn, so that a pod flooding the switch with first packets (a SYN flood, a scan) neither
 * fills the queue for everyone nor makes another pod's first packets wait behind its own:
 *   - each port has its own FIFO of upcalls, each frame malloc'ed when queued and freed when
 *     Python takes it; together they hold at most upcall_capacity frames. A port alone may use
 *     all of it. When it is full, the port with the most frames waiting pays (fq_codel's drop
 *     from the fattest queue): a frame of another port takes the place of that port's oldest
 *     frame; a frame of that port itself (or of one as long) is dropped. Either way the loss is
 *     counted, for the datapath (upcall_lost) and for the port whose frame it was;
 *   - vs_dp_upcall_take goes round the ports (in slot order), taking up to UPCALL_QUANTUM
 *     frames of one port before the next port's turn: a frame of a port that is not flooding
 *     waits for at most one turn of each other port, however many frames the flood has queued;
 *   - a port holding half of upcall_capacity (its share) is paused: taken out of epoll, its
 *     frames wait in its fd (a TAP's queue, where the pod's kernel drops what does not fit and
 *     counts it as the pod's tx_dropped) until Python has taken it down to a quarter. A flood
 *     then costs this thread only the frames Python can take, not a read, a copy and a drop
 *     of every frame the pod can send: the CPU that saves is the innocent pods'.
 * The eventfd is readable exactly while a frame waits: signalled when the first is queued, read
 * back when the last is taken, so Python's event loop can wait on it like on any fd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "datapath_private.h"

#define BURST 64
#define DRAIN_PORTS 16            /* ports re-read after a burst (see poll_loop) */
#define UPCALL_QUANTUM 8          /* frames of one port taken before the next port's turn */

/* ---- upcalls ------------------------------------------------------------------------------- */

void vs_dp_eventfd_signal(int fd)
{
    uint64_t one = 1;
    ssize_t ignored = write(fd, &one, sizeof one);  /* fails only when already signalled */
    (void)ignored;
}

void vs_dp_eventfd_reset(int fd)
{
    uint64_t value;
    ssize_t ignored = read(fd, &value, sizeof value);  /* EAGAIN: was not signalled */
    (void)ignored;
}

/* The port with the most upcalls waiting (the first such in slot order). */
static struct dp_port *fattest_port(vs_dp *dp)
{
    struct dp_port *fattest = NULL;
    for (uint32_t i = 0; i < dp->port_slots; i++)
        if (fattest == NULL || dp->ports[i].upcall_count > fattest->upcall_count)
            fattest = &dp->ports[i];
    return fattest;
}

/* Unlinks and returns the port's oldest upcall (it has one). */
static struct upcall *upcall_pop(vs_dp *dp, struct dp_port *p)
{
    struct upcall *u = p->upcall_head;
    p->upcall_head = u->next;
    if (p->upcall_head == NULL)
        p->upcall_tail = NULL;
    p->upcall_count--;
    if (--dp->upcall_count == 0)
        vs_dp_eventfd_reset(dp->upcall_fd);
    return u;
}

static void upcall_lost(vs_dp *dp, struct dp_port *p)
{
    dp->stats.upcall_lost++;
    p->counters.upcall_lost++;
}

static void upcall_queue(vs_dp *dp, struct dp_port *in, const uint8_t *frame, size_t len)
{
    if (dp->upcall_count == dp->upcall_capacity) {
        struct dp_port *fattest = fattest_port(dp);
        if (fattest->upcall_count <= in->upcall_count) {
            upcall_lost(dp, in);
            return;
        }
        free(upcall_pop(dp, fattest));
        upcall_lost(dp, fattest);
    }
    struct upcall *u = malloc(sizeof *u + len);
    if (u == NULL) {
        upcall_lost(dp, in);
        return;
    }
    u->next = NULL;
    u->len = (uint32_t)len;
    memcpy(u->data, frame, len);
    if (in->upcall_tail != NULL)
        in->upcall_tail->next = u;
    else
        in->upcall_head = u;
    in->upcall_tail = u;
    in->upcall_count++;
    if (dp->upcall_count++ == 0)
        vs_dp_eventfd_signal(dp->upcall_fd);
}

void vs_dp_upcalls_drop(vs_dp *dp, struct dp_port *p)
{
    while (p->upcall_count > 0) {
        free(upcall_pop(dp, p));
        upcall_lost(dp, p);
    }
}

int vs_dp_upcall_fd(vs_dp *dp)
{
    return dp->upcall_fd;
}

/* The port whose turn it is: the one the last take left off at if it still has frames and
 * turn left, else the next port in slot order with frames (one exists: upcall_count > 0). */
static struct dp_port *upcall_turn(vs_dp *dp)
{
    for (;;) {
        struct dp_port *p = &dp->ports[dp->upcall_turn];
        if (p->upcall_count > 0 && dp->upcall_given < UPCALL_QUANTUM)
            return p;
        dp->upcall_turn = (dp->upcall_turn + 1) % dp->port_slots;
        dp->upcall_given = 0;
    }
}

/* The upcalls a port may hold before it is paused, and the most it holds when it is read again
 * (at least one, and less than the first). */
static uint32_t pause_mark(const vs_dp *dp)
{
    return dp->upcall_capacity / 2 > 0 ? dp->upcall_capacity / 2 : 1;
}

static uint32_t resume_mark(const vs_dp *dp)
{
    return pause_mark(dp) / 2;
}

static void port_pause(vs_dp *dp, struct dp_port *p)
{
    epoll_ctl(dp->epoll_fd, EPOLL_CTL_DEL, p->fd, NULL);
    p->paused = 1;
}

/* A port that cannot be watched again is left as one at its end (counted as a read error). */
static void port_resume(vs_dp *dp, struct dp_port *p)
{
    p->paused = 0;
    if (vs_dp_port_watch(dp, p) != 0) {
        dp->stats.read_errors++;
        p->polled = 0;
    }
}

int64_t vs_dp_upcall_take(vs_dp *dp, uint32_t *port, uint8_t *buf, size_t cap)
{
    int64_t n = -1;
    pthread_mutex_lock(&dp->lock);
    if (dp->upcall_count > 0) {
        struct dp_port *p = upcall_turn(dp);
        if (p->upcall_head->len > cap) {
            n = VS_DP_EINVAL;
            goto out;
        }
        struct upcall *u = upcall_pop(dp, p);
        memcpy(buf, u->data, u->len);
        *port = p->id;
        n = u->len;
        free(u);
        dp->upcall_given++;
        if (p->paused && p->upcall_count <= resume_mark(dp))
            port_resume(dp, p);
    }
out:
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/* ---- the poll thread ----------------------------------------------------------------------- */

static double monotonic_now(const vs_dp *dp)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + dp->params.clock_offset;
}

/* One frame read from a port: replayed and written, or queued for Python. */
static void poll_frame(vs_dp *dp, struct dp_port *in, size_t len, uint32_t *written,
                       size_t *n_written)
{
    uint32_t target;
    const uint8_t *output;
    int64_t n = vs_dp_run(dp, in, dp->rx, len, monotonic_now(dp), VS_DP_MAX_FRAME, &output,
                          &target);
    if (n == VS_DP_UPCALL) {
        upcall_queue(dp, in, dp->rx, len);
        return;
    }
    if (n < 0)
        return;
    struct dp_port *out = vs_dp_port_find(dp, target);
    ssize_t sent = out->fd >= 0 ? write(out->fd, output, (size_t)n) : -1;
    if (sent < 0) {
        /* Not sent: the tx count taken back, as Switch.note_tx_drop does for the pipeline. */
        out->counters.tx_packets--;
        out->counters.tx_bytes -= (size_t)n - out->l2;
        if (errno == EAGAIN || errno == ENOBUFS)
            out->counters.tx_busy++;
        else
            out->counters.tx_error++;
        return;
    }
    for (size_t i = 0; i < *n_written; i++)
        if (written[i] == target)
            return;
    if (*n_written < DRAIN_PORTS && target != in->id)
        written[(*n_written)++] = target;
}

/* Up to BURST frames of one port, fewer when it reaches its share of the upcalls and is paused
 * (a paused port is not read). A port at its end (EOF, a TAP whose device is gone) leaves the
 * poll set, as does one that fails while epoll reports an error or hang-up on it: left in, it
 * would be reported ready forever and spin the thread. `events`: what epoll reported. The port
 * is looked up once: ports are added and removed under the lock this burst holds, and nothing
 * in it but this loop (its end, a pause) takes one out of the poll set. */
static void poll_port(vs_dp *dp, uint32_t port_id, uint32_t events, uint32_t *written,
                      size_t *n_written)
{
    struct dp_port *p = vs_dp_port_find(dp, port_id);
    if (p == NULL || !p->polled || p->paused)
        return;
    for (int i = 0; i < BURST; i++) {
        ssize_t n = read(p->fd, dp->rx, VS_DP_MAX_FRAME);
        if (n > 0) {
            poll_frame(dp, p, (size_t)n, written, n_written);
            if (p->upcall_count >= pause_mark(dp)) {
                port_pause(dp, p);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n < 0)
            dp->stats.read_errors++;
        if (n == 0 || errno == EBADF || errno == EBADFD || (events & (EPOLLERR | EPOLLHUP)))
            vs_dp_port_unpoll(dp, p);
        return;
    }
}

/* After a burst, the ports it wrote to are read once: writing to a TAP runs the receiving stack
 * inside write(), so a reply is often queued already, and taking it now saves a wake-up per hop
 * (runtime/port_io.py: _drain_answers). One round only, so no port starves the others. */
static void *poll_loop(void *arg)
{
    vs_dp *dp = arg;
    struct epoll_event events[BURST];
    for (;;) {
        int ready = epoll_wait(dp->epoll_fd, events, BURST, -1);
        if (ready < 0 && errno != EINTR)
            break;
        pthread_mutex_lock(&dp->lock);
        dp->stats.wakeups++;
        uint32_t written[DRAIN_PORTS];
        size_t n_written = 0;
        int stop = 0;
        for (int i = 0; i < ready; i++) {
            if (events[i].data.u64 == 0)
                stop = 1;
            else
                poll_port(dp, (uint32_t)events[i].data.u64, events[i].events, written,
                          &n_written);
        }
        size_t drained = n_written;
        uint32_t unused[DRAIN_PORTS];
        size_t n_unused = 0;
        for (size_t i = 0; i < drained; i++)
            poll_port(dp, written[i], 0, unused, &n_unused);
        pthread_mutex_unlock(&dp->lock);
        if (stop)
            break;
    }
    return NULL;
}

int vs_dp_start(vs_dp *dp)
{
    if (dp->running)
        return 0;
    if (pthread_create(&dp->thread, NULL, poll_loop, dp) != 0)
        return VS_DP_EINVAL;
    dp->running = 1;
    return 0;
}

void vs_dp_stop(vs_dp *dp)
{
    if (!dp->running)
        return;
    vs_dp_eventfd_signal(dp->stop_fd);
    pthread_join(dp->thread, NULL);
    vs_dp_eventfd_reset(dp->stop_fd);
    dp->running = 0;
}
