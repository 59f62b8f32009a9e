/* The one piece of glue every guest shares: how it gets its listening socket and accepts
 * connections. Under understudy (wasm32-wasi) the host preopens each `--listen` socket as
 * fd 3, 4, ... (the `wasmtime run --tcplisten` convention) and this wasi-libc has no accept(),
 * so we call sock_accept directly. Built natively (gcc, for tests and the CPU baseline) the guest
 * binds 127.0.0.1:$PORT itself and puts the socket on fd 3, so the rest of the code is identical. */
#ifndef GUEST_NET_H
#define GUEST_NET_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define GUEST_LISTEN_FD 3

#ifdef __wasi__
#include <wasi/api.h>

/* Non-blocking, so a guest can accept until EAGAIN without hanging on the last call. */
static inline int net_listen_setup(void) {
    fcntl(GUEST_LISTEN_FD, F_SETFL, O_NONBLOCK);
    return GUEST_LISTEN_FD;
}

/* Returns a non-blocking connection fd, or -1 with errno set (EAGAIN when none is pending). */
static inline int net_accept(int listen_fd) {
    __wasi_fd_t fd;
    __wasi_errno_t err = __wasi_sock_accept((__wasi_fd_t)listen_fd, __WASI_FDFLAGS_NONBLOCK, &fd);
    if (err != 0) { errno = err; return -1; }
    return (int)fd;
}
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

static inline int net_listen_setup(void) {
    const char *port = getenv("PORT");
    if (!port) return GUEST_LISTEN_FD; /* inherited, as under a socket-activating supervisor */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 512) != 0) {
        perror("bind/listen");
        exit(2);
    }
    fcntl(s, F_SETFL, O_NONBLOCK);
    if (s != GUEST_LISTEN_FD) { dup2(s, GUEST_LISTEN_FD); close(s); }
    return GUEST_LISTEN_FD;
}

static inline int net_accept(int listen_fd) {
    int fd = accept(listen_fd, NULL, NULL);
    if (fd >= 0) {
        int one = 1;
        fcntl(fd, F_SETFL, O_NONBLOCK);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}
#endif

#endif
