#define _GNU_SOURCE
#include "understudy_host.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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
