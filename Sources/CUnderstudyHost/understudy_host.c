#define _GNU_SOURCE
#include "understudy_host.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int understudy_accept_nonblocking(int listener) {
    return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int understudy_ppoll(struct pollfd *fds, unsigned long count, int64_t timeout_nanos) {
    if (timeout_nanos < 0) return ppoll(fds, count, NULL, NULL);
    struct timespec timeout = {.tv_sec = timeout_nanos / 1000000000, .tv_nsec = timeout_nanos % 1000000000};
    return ppoll(fds, count, &timeout, NULL);
}

int understudy_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int understudy_epoll_set(int epoll, int operation, int fd, uint32_t events) {
    struct epoll_event event = {.events = events, .data = {.fd = fd}};
    return epoll_ctl(epoll, operation, fd, &event);
}

int understudy_epoll_wait(int epoll, int *fds, uint32_t *events, int capacity, int64_t timeout_nanos) {
    struct epoll_event ready[capacity];
    struct timespec timeout = {.tv_sec = timeout_nanos / 1000000000, .tv_nsec = timeout_nanos % 1000000000};
    int count = epoll_pwait2(epoll, ready, capacity, timeout_nanos < 0 ? NULL : &timeout, NULL);
    for (int index = 0; index < count; index++) {
        fds[index] = ready[index].data.fd;
        events[index] = ready[index].events;
    }
    return count;
}

int understudy_getrandom(void *buffer, size_t length) {
    size_t filled = 0;
    while (filled < length) {
        ssize_t got = getrandom((char *)buffer + filled, length - filled, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        filled += (size_t)got;
    }
    return 0;
}

int understudy_pipe(int ends[2]) {
    return pipe2(ends, O_NONBLOCK | O_CLOEXEC);
}

/* The system headers are Linux 6.1; these come from 6.7 (DESIGN.md, "Dirty memory"). */
#define US_UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define US_UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#define US_PM_SCAN_WP_MATCHING (1ULL << 0)
#define US_PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define US_PAGE_IS_WRITTEN (1ULL << 1)

struct us_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
        category_anyof_mask, return_mask;
};
#define US_PAGEMAP_SCAN _IOWR('f', 16, struct us_pm_scan_arg)

int understudy_uffd_open(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct uffdio_api api = {.api = UFFD_API, .features = US_UFFD_FEATURE_WP_ASYNC | US_UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

int understudy_uffd_track(int uffd, void *start, uint64_t length) {
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)start, .len = length},
                                  .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return -errno;
    struct uffdio_writeprotect protect = {.range = {.start = (uint64_t)(uintptr_t)start, .len = length},
                                          .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &protect) != 0) return -errno;
    return 0;
}

long understudy_pagemap_scan(int pagemap, void *start, uint64_t length, struct understudy_page_range *ranges,
                             uint64_t capacity) {
    struct us_pm_scan_arg arg = {
        .size = sizeof arg,
        .flags = US_PM_SCAN_WP_MATCHING | US_PM_SCAN_CHECK_WPASYNC,
        .start = (uint64_t)(uintptr_t)start,
        .end = (uint64_t)(uintptr_t)start + length,
        .vec = (uint64_t)(uintptr_t)ranges,
        .vec_len = capacity,
        .category_mask = US_PAGE_IS_WRITTEN,
        .return_mask = US_PAGE_IS_WRITTEN,
    };
    long count = ioctl(pagemap, US_PAGEMAP_SCAN, &arg);
    return count < 0 ? -errno : count;
}

int understudy_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <string.h>

// One broadcast ARP frame of `operation` (1 request, 2 reply) in which the sender and the target
// are both `ip` with this interface's MAC: what neighbours take as "ip is now here".
static int send_arp(int fd, const struct sockaddr_ll *to, const unsigned char mac[6], uint32_t ip, uint16_t operation) {
    unsigned char frame[42];
    memset(frame, 0xff, 6);                       // destination: broadcast
    memcpy(frame + 6, mac, 6);                    // source
    frame[12] = 0x08; frame[13] = 0x06;           // EtherType ARP
    frame[14] = 0x00; frame[15] = 0x01;           // hardware: Ethernet
    frame[16] = 0x08; frame[17] = 0x00;           // protocol: IPv4
    frame[18] = 6; frame[19] = 4;
    frame[20] = operation >> 8; frame[21] = operation & 0xff;
    memcpy(frame + 22, mac, 6);                   // sender MAC
    memcpy(frame + 28, &ip, 4);                   // sender IP
    memset(frame + 32, operation == 2 ? 0xff : 0x00, 6);  // target MAC
    memcpy(frame + 38, &ip, 4);                   // target IP
    return sendto(fd, frame, sizeof frame, 0, (const struct sockaddr *)to, sizeof *to) == (ssize_t)sizeof frame ? 0 : -1;
}

int understudy_gratuitous_arp(const char *interface, uint32_t ip) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (fd < 0) return -errno;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, interface, IFNAMSIZ - 1);
    int result = 0;
    if (ioctl(fd, SIOCGIFINDEX, &request) < 0) { result = -errno; goto done; }
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_protocol = htons(ETH_P_ARP);
    to.sll_ifindex = request.ifr_ifindex;
    to.sll_halen = 6;
    memset(to.sll_addr, 0xff, 6);
    if (ioctl(fd, SIOCGIFHWADDR, &request) < 0) { result = -errno; goto done; }
    unsigned char mac[6];
    memcpy(mac, request.ifr_hwaddr.sa_data, 6);
    if (send_arp(fd, &to, mac, ip, 1) < 0 || send_arp(fd, &to, mac, ip, 2) < 0) result = -errno;
done:
    close(fd);
    return result;
}
