/* The event loop the network guests share: one thread, one poll() over the listener and every
 * connection, per-connection input/output buffers. A guest supplies a parser (and optionally a
 * timer hook) in a struct conn_ops and calls conn_serve(); everything about non-blocking I/O,
 * partial reads, pipelining, back-pressure and closing lives here so the guests stay about
 * their protocol. Header-only because the Makefile compiles each guest as one .c file. */
#ifndef GUEST_CONN_H
#define GUEST_CONN_H

#include "net.h"
#include <stdarg.h>
#include <stdint.h>

/* wasi-libc's poll() puts two subscriptions and two events per fd on the stack (about 160 bytes),
 * and guests link with a 256 KiB stack, so the connection count has to stay near a thousand. */
#ifndef CONN_MAX
#define CONN_MAX 1024
#endif

/* Stop parsing (and reading) while this much output waits for a client that is not reading,
 * so a pipelining client cannot make us buffer without bound. */
#define CONN_OUT_HIGH (256u * 1024u)

#define CONN_IN_INITIAL 4096u

#ifdef __wasi__
#define CONN_SEND_FLAGS 0 /* wasi-libc's send() fails with EOPNOTSUPP on any flag */
#else
#define CONN_SEND_FLAGS MSG_NOSIGNAL /* a vanished peer must cost an EPIPE, not the process */
#endif

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
    uint64_t discard; /* input bytes to drop unparsed, e.g. an HTTP body nobody wants */
    int eof;          /* peer finished sending; answer what is buffered, then close */
    int closing;      /* parse no more requests; close once output is flushed */
    int dead;         /* unrecoverable: close without flushing */
};

struct conn_ops {
    const char *name; /* for the one "NAME: serving" line */
    /* Looks at the unparsed input in[0..len) (writable, so a parser may NUL-terminate in place),
     * answers at most one complete request with conn_write/conn_printf and returns the bytes it
     * used: 0 means "incomplete, wait for more", -1 means "drop this client". The loop calls it
     * again until it returns 0, which is how pipelined requests get answered in order. */
    long (*parse)(struct conn *c, char *in, size_t len);
    /* Optional. Called before the first poll and after every poll (timed_out says whether that
     * poll timed out); returns the next poll timeout in ms, -1 for none. */
    int (*tick)(int timed_out);
    size_t max_input; /* a request that does not fit in this many bytes gets its client dropped */
};

static inline size_t conn_pending(const struct conn *c) { return c->out_len - c->out_off; }

/* Makes room for n more output bytes. Already-sent bytes are reclaimed first so a connection
 * that keeps up never grows its buffer past one burst of responses. */
static inline int conn_reserve(struct conn *c, size_t n) {
    if (c->out_off > 0 && (c->out_off == c->out_len || c->out_cap - c->out_len < n)) {
        memmove(c->out, c->out + c->out_off, conn_pending(c));
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_cap - c->out_len >= n) return 0;
    size_t cap = c->out_cap ? c->out_cap : 1024;
    while (cap - c->out_len < n) cap *= 2;
    char *p = realloc(c->out, cap);
    if (!p) { c->dead = 1; return -1; }
    c->out = p;
    c->out_cap = cap;
    return 0;
}

static inline void conn_write(struct conn *c, const void *data, size_t n) {
    if (conn_reserve(c, n) != 0) return;
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

__attribute__((format(printf, 2, 3)))
static inline void conn_printf(struct conn *c, const char *fmt, ...) {
    for (size_t want = 128;;) {
        if (conn_reserve(c, want) != 0) return;
        size_t room = c->out_cap - c->out_len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(c->out + c->out_len, room, fmt, ap);
        va_end(ap);
        if (n < 0) { c->dead = 1; return; }
        if ((size_t)n < room) { c->out_len += (size_t)n; return; }
        want = (size_t)n + 1; /* truncated: grow and format again */
    }
}

/* For line protocols: hands the first complete line to fn with its "\n" and an optional "\r"
 * stripped and NUL-terminated in place. Returns what conn_ops.parse should return. */
static inline long conn_line(struct conn *c, char *in, size_t len, void (*fn)(struct conn *c, char *line, size_t n)) {
    char *nl = memchr(in, '\n', len);
    if (!nl) return 0;
    size_t n = (size_t)(nl - in);
    long used = (long)n + 1;
    if (n > 0 && in[n - 1] == '\r') n--;
    in[n] = '\0';
    fn(c, in, n);
    return used;
}

/* Sends as much pending output as the socket takes now; the rest waits for POLLOUT. Returns
 * the bytes sent so the caller can tell a stuck connection from a slow one. */
static inline size_t conn_flush(struct conn *c) {
    size_t sent = 0;
    while (!c->dead && conn_pending(c) > 0) {
        ssize_t n = send(c->fd, c->out + c->out_off, conn_pending(c), CONN_SEND_FLAGS);
        if (n > 0) { c->out_off += (size_t)n; sent += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        c->dead = 1;
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    return sent;
}

/* Runs the parser over buffered input until it needs more, the client is closing, or output
 * backs up; then keeps only the unparsed remainder. Returns the bytes consumed. */
static inline size_t conn_process(struct conn *c, const struct conn_ops *ops) {
    size_t off = 0;
    int starved = 0; /* parser is waiting for more bytes of a request */
    while (!c->dead && off < c->in_len) {
        size_t avail = c->in_len - off;
        if (c->discard > 0) {
            size_t d = c->discard < avail ? (size_t)c->discard : avail;
            off += d;
            c->discard -= d;
            continue;
        }
        if (c->closing || conn_pending(c) >= CONN_OUT_HIGH) break;
        long n = ops->parse(c, c->in + off, avail);
        if (n < 0) c->dead = 1;
        else if (n == 0) starved = 1;
        else off += (size_t)n;
        if (n <= 0) break;
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    /* The buffer is at its bound and still holds no complete request: it never will. */
    if (starved && c->in_len >= ops->max_input) c->dead = 1;
    return off;
}

/* One recv into the connection's buffer, grown on demand up to max_input so idle clients stay
 * cheap. Returns bytes read, 0 at EOF, -1 when nothing could be read. */
static inline ssize_t conn_read(struct conn *c, const struct conn_ops *ops) {
    if (c->in_cap - c->in_len < 1024 && c->in_cap < ops->max_input) {
        size_t cap = c->in_cap ? c->in_cap * 2 : CONN_IN_INITIAL;
        if (cap > ops->max_input) cap = ops->max_input;
        char *p = realloc(c->in, cap);
        if (!p) { c->dead = 1; return -1; }
        c->in = p;
        c->in_cap = cap;
    }
    if (c->in_len == c->in_cap) return -1; /* full: conn_process decides whether that is fatal */
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) { c->in_len += (size_t)n; return n; }
    if (n == 0) { c->eof = 1; return 0; }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->dead = 1;
    return -1;
}

static inline short conn_events(const struct conn *c) {
    short ev = 0;
    int reading = !c->eof && (!c->closing || c->discard > 0);
    if (reading && conn_pending(c) < CONN_OUT_HIGH) ev |= POLLIN;
    if (conn_pending(c) > 0) ev |= POLLOUT;
    return ev;
}

/* Whether the connection has nothing left to do. A client that is closing but still sending a
 * body we agreed to discard is drained first: closing on unread input would make the kernel
 * send RST, which can destroy the response the client has not read yet. The last test keeps
 * a connection with no events out of poll(), which this wasi-libc rejects with ENOSYS. */
static inline int conn_finished(const struct conn *c) {
    if (c->dead) return 1;
    if (conn_pending(c) > 0) return 0;
    return c->eof || (c->closing && c->discard == 0) || conn_events(c) == 0;
}

/* Parse and flush in turns: flushing may lift the back-pressure that stopped the parser. */
static inline size_t conn_pump(struct conn *c, const struct conn_ops *ops) {
    size_t progress = 0;
    for (;;) {
        size_t used = conn_process(c, ops);
        progress += used + conn_flush(c);
        if (used == 0 || c->dead) return progress;
    }
}

/* Handles one connection's poll result; returns nonzero when it should be closed. */
static inline int conn_handle(struct conn *c, short revents, const struct conn_ops *ops) {
    if (revents & (POLLERR | POLLNVAL)) return 1;
    size_t progress = 0;
    if (revents & (POLLIN | POLLHUP)) {
        ssize_t n = conn_read(c, ops);
        if (n > 0) progress += (size_t)n;
        if (n == 0) progress++; /* EOF is news too */
    }
    progress += conn_pump(c, ops);
    /* POLLHUP stays set forever; if it brought nothing to read and nothing could be sent,
     * the peer is gone and polling again would only spin. */
    if ((revents & POLLHUP) && progress == 0) return 1;
    return conn_finished(c);
}

static inline void conn_free(struct conn *c) {
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Takes every pending connection. Beyond CONN_MAX a client is accepted and closed at once:
 * a refusal it can see beats a hang in the backlog. */
static inline void conn_accept_all(int lfd, struct conn **conns, int *nconns) {
    for (;;) {
        int fd = net_accept(lfd);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN: drained; anything else (EMFILE...): retry on the next poll */
        }
        struct conn *c = *nconns < CONN_MAX ? calloc(1, sizeof *c) : NULL;
        if (!c) { close(fd); continue; }
        c->fd = fd;
        conns[(*nconns)++] = c;
    }
}

static inline int conn_serve(const struct conn_ops *ops) {
    static struct pollfd pfd[CONN_MAX + 1];
    static struct conn *conns[CONN_MAX];
    int nconns = 0;
    int lfd = net_listen_setup();
    fprintf(stderr, "%s: serving\n", ops->name);
    int timeout = ops->tick ? ops->tick(0) : -1;
    for (;;) {
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < nconns; i++)
            pfd[i + 1] = (struct pollfd){.fd = conns[i]->fd, .events = conn_events(conns[i])};
        int ready = poll(pfd, (nfds_t)nconns + 1, timeout);
        if (ready < 0 && errno != EINTR) { perror("poll"); return 1; }
        /* Walk downwards so that closing i (moving the last connection into its slot) only
         * ever moves a connection that has already been handled this round. */
        for (int i = nconns - 1; ready > 0 && i >= 0; i--) {
            short rev = pfd[i + 1].revents;
            if (rev == 0) continue;
            if (conn_handle(conns[i], rev, ops)) {
                conn_free(conns[i]);
                conns[i] = conns[--nconns];
            }
        }
        if (ready > 0 && (pfd[0].revents & POLLIN)) conn_accept_all(lfd, conns, &nconns);
        if (ops->tick) timeout = ops->tick(ready == 0);
    }
}

#endif
