// Host calls that Swift's Glibc module hides behind _GNU_SOURCE. Later also userfaultfd and
// PAGEMAP_SCAN, whose definitions the system headers (Linux 6.1) lack.
#ifndef UNDERSTUDY_HOST_H
#define UNDERSTUDY_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <spawn.h>

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; returns the fd or -1 with errno set.
int understudy_accept_nonblocking(int listener);
// ppoll with a nanosecond timeout; timeout_nanos < 0 waits without limit.
int understudy_ppoll(struct pollfd *fds, unsigned long count, int64_t timeout_nanos);
// epoll, whose `struct epoll_event` is packed (Swift cannot lay it out): a close-on-exec epoll
// descriptor; EPOLL_CTL_ADD/DEL/MOD (1, 2, 3) of `fd` for `events`; and a wait with a nanosecond
// timeout (< 0: none) filling up to `capacity` ready descriptors and their events. -1 and errno.
int understudy_epoll_create(void);
int understudy_epoll_set(int epoll, int operation, int fd, uint32_t events);
int understudy_epoll_wait(int epoll, int *fds, uint32_t *events, int capacity, int64_t timeout_nanos);
// Fills the buffer from the kernel's entropy pool; returns 0, or -1 with errno set.
int understudy_getrandom(void *buffer, size_t length);
// A non-blocking, close-on-exec pipe.
int understudy_pipe(int ends[2]);
// posix_spawn_file_actions_addclosefrom_np: the child closes every descriptor from `lowest` up.
int understudy_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest);
// Gratuitous ARP for `ip` (network order) on `interface`: a broadcast request and a broadcast
// reply, each naming `ip` at the interface's MAC. 0, or -errno.
int understudy_gratuitous_arp(const char *interface, uint32_t ip);

#endif

// Dirty-page tracking by userfaultfd asynchronous write-protect and PAGEMAP_SCAN (Linux 6.7+).
// Each returns 0 or a negative errno.
struct understudy_page_range {  // the kernel's struct page_region
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};
// Opens a userfaultfd with WP_ASYNC | WP_UNPOPULATED; returns the fd or a negative errno.
int understudy_uffd_open(void);
// Registers [start, start+length) for write-protect tracking and protects it.
int understudy_uffd_track(int uffd, void *start, uint64_t length);
// Writes up to `capacity` ranges written since the last scan into `ranges` and re-protects them
// in the same step; returns how many, or a negative errno.
long understudy_pagemap_scan(int pagemap, void *start, uint64_t length, struct understudy_page_range *ranges,
                             uint64_t capacity);

// CRC-32C of `count` bytes, continuing from `previous` (0 to start): SSE4.2 where available.
uint32_t understudy_crc32c(uint32_t previous, const void *bytes, size_t count);

// XXH64 of `count` bytes: the block hash active-mode syncs compare (not cryptographic).
uint64_t understudy_hash64(const void *bytes, size_t count, uint64_t seed);
