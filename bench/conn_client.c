/* New TCP connections per second: the client, and the server it talks to.
 *
 * Usage: conn_client serve PORT THREADS
 *        conn_client connect HOST PORT SECONDS WORKERS MODE
 *
 * serve: listens on every address of the namespace, port PORT (backlog 4096), and prints "ready"
 * on stdout. THREADS threads each accept a connection, wait up to 1 s for one byte, write it back
 * if one came, and close; then accept the next. It runs until it is killed.
 *
 * connect: WORKERS threads each, for SECONDS seconds, open a connection to HOST:PORT (a
 * non-blocking connect, at most 1 s for the handshake), in MODE "echo" write one byte and wait
 * up to 1 s for it to come back, in MODE "open" nothing more, then close, and start over at
 * once. The connection closes first on the client's side, so the TIME_WAIT stays in the client's
 * namespace; the caller widens the local port range and sets tcp_tw_reuse there, which lets a
 * port be reused one second after its connection closed.
 *
 * Prints one JSON object on stdout: connections completed, elapsed seconds, the rate, failures by
 * kind (refused, timeout, reset, no_local_port, closed: the server closed without answering,
 * other) and the 50th and 99th percentiles of one connection's duration in microseconds
 * (socket() to close(), completed ones only; 10 µs buckets up to 100 ms).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 1000
#define BUCKET_US 10
#define BUCKETS 10000 /* 100 ms */
#define MAX_THREADS 64

enum failure { REFUSED, TIMEOUT, RESET, NO_LOCAL_PORT, CLOSED, OTHER, FAILURE_KINDS };
static const char *const FAILURE_NAMES[FAILURE_KINDS] = {
    "refused", "timeout", "reset", "no_local_port", "closed", "other"};

struct worker {
    pthread_t thread;
    struct sockaddr_in target;
    double until;
    int echo;
    unsigned long completed;
    unsigned long failures[FAILURE_KINDS];
    unsigned long histogram[BUCKETS + 1];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static enum failure classify(int error)
{
    switch (error) {
    case ECONNREFUSED: return REFUSED;
    case ETIMEDOUT: return TIMEOUT;
    case ECONNRESET: case EPIPE: return RESET;
    case EADDRNOTAVAIL: case EADDRINUSE: return NO_LOCAL_PORT;
    default: return OTHER;
    }
}

/* Waits for `events` on `fd` up to TIMEOUT_MS; returns 0, or the failure. */
static int wait_for(int fd, short events, enum failure *failure)
{
    struct pollfd p = {.fd = fd, .events = events};
    int ready = poll(&p, 1, TIMEOUT_MS);
    if (ready == 0) {
        *failure = TIMEOUT;
        return -1;
    }
    if (ready < 0) {
        *failure = OTHER;
        return -1;
    }
    return 0;
}

/* One connection; returns 0 when it completed, else -1 with the failure set. */
static int one_connection(const struct worker *w, enum failure *failure)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int result = -1;
    if (fd < 0) {
        *failure = OTHER;
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)&w->target, sizeof w->target) < 0) {
        if (errno != EINPROGRESS) {
            *failure = classify(errno);
            goto out;
        }
        if (wait_for(fd, POLLOUT, failure) < 0)
            goto out;
        int error = 0;
        socklen_t len = sizeof error;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
        if (error) {
            *failure = classify(error);
            goto out;
        }
    }
    if (w->echo) {
        char byte = 'x';
        if (write(fd, &byte, 1) != 1) {
            *failure = classify(errno);
            goto out;
        }
        if (wait_for(fd, POLLIN, failure) < 0)
            goto out;
        ssize_t got = read(fd, &byte, 1);
        if (got <= 0) {
            *failure = got == 0 ? CLOSED : classify(errno);
            goto out;
        }
    }
    result = 0;
out:
    close(fd);
    return result;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    for (double start = now_s(); start < w->until; ) {
        enum failure failure = OTHER;
        if (one_connection(w, &failure) == 0) {
            double end = now_s();
            long bucket = (long)((end - start) * 1e6 / BUCKET_US);
            w->histogram[bucket < BUCKETS ? bucket : BUCKETS]++;
            w->completed++;
            start = end;
        } else {
            w->failures[failure]++;
            start = now_s();
        }
    }
    return NULL;
}

static double percentile_us(const unsigned long *histogram, unsigned long total, double fraction)
{
    unsigned long rank = (unsigned long)(fraction * total), seen = 0;
    for (int i = 0; i <= BUCKETS; i++) {
        seen += histogram[i];
        if (seen > rank)
            return (i + 0.5) * BUCKET_US;
    }
    return 0;
}

static int run_client(const char *host, int port, double seconds, int workers, int echo)
{
    static struct worker pool[MAX_THREADS];
    static unsigned long histogram[BUCKETS + 1];
    struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        return 2;
    }
    double started = now_s();
    for (int i = 0; i < workers; i++) {
        pool[i].target = target;
        pool[i].until = started + seconds;
        pool[i].echo = echo;
        if (pthread_create(&pool[i].thread, NULL, run_worker, &pool[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    unsigned long completed = 0, failures[FAILURE_KINDS] = {0};
    for (int i = 0; i < workers; i++) {
        pthread_join(pool[i].thread, NULL);
        completed += pool[i].completed;
        for (int k = 0; k < FAILURE_KINDS; k++)
            failures[k] += pool[i].failures[k];
        for (int b = 0; b <= BUCKETS; b++)
            histogram[b] += pool[i].histogram[b];
    }
    double elapsed = now_s() - started;
    printf("{\"connections\": %lu, \"seconds\": %.3f, \"per_second\": %.1f, \"failures\": {",
           completed, elapsed, completed / elapsed);
    for (int k = 0; k < FAILURE_KINDS; k++)
        printf("%s\"%s\": %lu", k ? ", " : "", FAILURE_NAMES[k], failures[k]);
    printf("}, \"duration_us_p50\": %.0f, \"duration_us_p99\": %.0f, \"workers\": %d, "
           "\"mode\": \"%s\"}\n",
           percentile_us(histogram, completed, 0.5), percentile_us(histogram, completed, 0.99),
           workers, echo ? "echo" : "open");
    return 0;
}

static void *serve_one_at_a_time(void *arg)
{
    int listener = *(int *)arg;
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char byte;
        if (poll(&p, 1, TIMEOUT_MS) == 1 && read(fd, &byte, 1) == 1 && write(fd, &byte, 1) != 1)
            perror("write");
        close(fd);
    }
    return NULL;
}

static int run_server(int port, int threads)
{
    static int listener;
    static pthread_t pool[MAX_THREADS];
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_ANY)};
    int one = 1;
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
        || bind(listener, (struct sockaddr *)&address, sizeof address) < 0
        || listen(listener, 4096) < 0) {
        perror("listen");
        return 1;
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&pool[i], NULL, serve_one_at_a_time, &listener) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    pthread_join(pool[0], NULL);
    return 0;
}

static int count_in_range(const char *text, int low, int high)
{
    char *end;
    long value = strtol(text, &end, 10);
    return *end == '\0' && value >= low && value <= high ? (int)value : -1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "serve") == 0) {
        int port = count_in_range(argv[2], 1, 65535);
        int threads = count_in_range(argv[3], 1, MAX_THREADS);
        if (port > 0 && threads > 0)
            return run_server(port, threads);
    } else if (argc == 7 && strcmp(argv[1], "connect") == 0) {
        int port = count_in_range(argv[3], 1, 65535);
        int workers = count_in_range(argv[5], 1, MAX_THREADS);
        double seconds = atof(argv[4]);
        int echo = strcmp(argv[6], "echo") == 0;
        if (port > 0 && workers > 0 && seconds > 0 && (echo || strcmp(argv[6], "open") == 0))
            return run_client(argv[2], port, seconds, workers, echo);
    }
    fprintf(stderr, "usage: %s serve PORT THREADS\n"
                    "       %s connect HOST PORT SECONDS WORKERS echo|open\n", argv[0], argv[0]);
    return 2;
}
