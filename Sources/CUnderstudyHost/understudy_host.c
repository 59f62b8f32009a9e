#define _GNU_SOURCE
#include "understudy_host.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
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
