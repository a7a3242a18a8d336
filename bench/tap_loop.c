/* A bare TAP-to-TAP loop: the floor any userspace datapath over TAPs is measured against.
 *
 * Usage: tap_loop TAP_A TAP_B
 *
 * Creates (or attaches to) the two TAP devices with the 10-byte virtio-net header
 * (IFF_VNET_HDR) and checksum/TSO offloads (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), as vswitchd
 * opens its pod ports, then forwards every frame read on one to the other, header included and
 * untouched: no parsing, no lookup, no copy beyond the one buffer. One thread, poll() on both
 * descriptors, each readable descriptor drained until EAGAIN. A frame the other side refuses is
 * dropped and counted.
 *
 * Prints "ready" on stdout once both TAPs exist, so that the caller can move them into
 * namespaces (the open descriptors follow the devices). SIGTERM or SIGINT end the loop; the
 * counters go to stderr and the TAPs, which are not persistent, disappear with the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* A 64 KB GSO frame, its Ethernet header and the virtio-net header, with room to spare. */
#define BUFFER_SIZE (1 << 17)
#define VNET_HDR_SIZE 10

static volatile sig_atomic_t stopping;

static void on_signal(int signum)
{
    (void)signum;
    stopping = 1;
}

static int open_tap(const char *name)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        perror("open /dev/net/tun");
        return -1;
    }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (strlen(name) >= IFNAMSIZ) {
        fprintf(stderr, "tap_loop: interface name %s is longer than %d\n", name, IFNAMSIZ - 1);
        close(fd);
        return -1;
    }
    strcpy(ifr.ifr_name, name);
    int hdr_size = VNET_HDR_SIZE;
    unsigned offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr_size) < 0
        || ioctl(fd, TUNSETOFFLOAD, offloads) < 0) {
        fprintf(stderr, "tap_loop: setting up %s: %s\n", name, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

struct direction {
    int from, to;
    unsigned long long forwarded, dropped;
};

/* Forward what ``d->from`` has until it would block; returns -1 on a read error. */
static int drain(struct direction *d, unsigned char *buffer)
{
    for (;;) {
        ssize_t n = read(d->from, buffer, BUFFER_SIZE);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            perror("tap_loop: read");
            return -1;
        }
        if (write(d->to, buffer, (size_t)n) == n)
            d->forwarded++;
        else
            d->dropped++;
    }
}

int main(int argc, char **argv)
{
    static unsigned char buffer[BUFFER_SIZE];
    if (argc != 3) {
        fprintf(stderr, "usage: %s TAP_A TAP_B\n", argv[0]);
        return 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;  /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    int fd_a = open_tap(argv[1]);
    int fd_b = fd_a < 0 ? -1 : open_tap(argv[2]);
    if (fd_b < 0)
        return 1;
    printf("ready\n");
    fflush(stdout);

    struct direction directions[2] = {{fd_a, fd_b, 0, 0}, {fd_b, fd_a, 0, 0}};
    struct pollfd fds[2] = {{fd_a, POLLIN, 0}, {fd_b, POLLIN, 0}};
    int status = 0;
    while (!stopping && status == 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("tap_loop: poll");
            status = 1;
            break;
        }
        for (int i = 0; i < 2 && status == 0; i++) {
            if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) {
                fprintf(stderr, "tap_loop: %s went away\n", argv[1 + i]);
                status = 1;
            } else if (fds[i].revents & POLLIN && drain(&directions[i], buffer) < 0) {
                status = 1;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        fprintf(stderr, "tap_loop: %s -> %s: %llu forwarded, %llu dropped\n", argv[1 + i],
                argv[2 - i], directions[i].forwarded, directions[i].dropped);
    close(fd_a);
    close(fd_b);
    return status;
}
