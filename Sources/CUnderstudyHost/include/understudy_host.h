// Host calls that Swift's Glibc module hides behind _GNU_SOURCE. Later also userfaultfd and
// PAGEMAP_SCAN, whose definitions the system headers (Linux 6.1) lack.
#ifndef UNDERSTUDY_HOST_H
#define UNDERSTUDY_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <poll.h>

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; returns the fd or -1 with errno set.
int understudy_accept_nonblocking(int listener);
// ppoll with a nanosecond timeout; timeout_nanos < 0 waits without limit.
int understudy_ppoll(struct pollfd *fds, unsigned long count, int64_t timeout_nanos);
// Fills the buffer from the kernel's entropy pool; returns 0, or -1 with errno set.
int understudy_getrandom(void *buffer, size_t length);
// A non-blocking, close-on-exec pipe.
int understudy_pipe(int ends[2]);

#endif
