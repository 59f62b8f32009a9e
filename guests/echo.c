/* echo: sends every line ('\n'-terminated) back to its client byte for byte, as soon as the
 * line is complete.
 *
 * One single-threaded poll() loop over non-blocking sockets. A line may arrive in pieces and
 * many may arrive at once, so each connection buffers the unfinished line; output the socket
 * will not take yet waits in a per-connection buffer. A trailing fragment without '\n' is not a
 * line and is never echoed. A line whose content exceeds 1 MiB closes the connection, after the
 * lines before it have been echoed. */
#include "net.h"

#include <stdbool.h>

#define LINE_LIMIT ((size_t)1 << 20)  /* bytes of a line before its '\n' */
#define OUT_HIGH   ((size_t)4 << 20)  /* stop reading a client whose echoes pile up past this */
#define READ_CHUNK ((size_t)64 << 10)
#define BUF_KEEP   ((size_t)1 << 20)  /* an emptied buffer bigger than this is given back */

#ifdef __wasi__
/* wasi-libc's poll() builds its subscription and event arrays as VLAs on the 256 KiB guest stack,
 * about 160 bytes per pollfd, so the cap must stay well under ~1600 descriptors. */
#define MAX_CONNS  1024
#define SEND_FLAGS 0 /* wasi-libc's send() rejects every flag, and WASI has no SIGPIPE anyway */
#else
#define MAX_CONNS  4096
#define SEND_FLAGS MSG_NOSIGNAL /* a vanished peer must cost an EPIPE, not the whole process */
#endif

/* There is no sensible partial recovery from running out of guest memory. */
static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("echo: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

/* ---- byte buffers ---------------------------------------------------------------------- */

/* Live bytes are [start, len): consuming from the front is O(1), and the dead prefix is
 * reclaimed lazily when room is needed at the back. */
struct buf {
    char *data;
    size_t start, len, cap;
};

static size_t buf_used(const struct buf *b) { return b->len - b->start; }
static char *buf_head(const struct buf *b) { return b->data + b->start; }

static void buf_free(struct buf *b) {
    free(b->data);
    *b = (struct buf){0};
}

/* Makes room for n more bytes. The dead prefix is moved out only once it is at least half the
 * buffer, which keeps the memmove cost amortised O(1) per byte. */
static void buf_reserve(struct buf *b, size_t n) {
    if (b->cap - b->len >= n) return;
    if (b->start > 0 && b->start >= b->len / 2) {
        memmove(b->data, b->data + b->start, b->len - b->start);
        b->len -= b->start;
        b->start = 0;
        if (b->cap - b->len >= n) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *p, size_t n) {
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* One burst of traffic must not pin its memory for the rest of the connection's life. */
static void buf_consume(struct buf *b, size_t n) {
    b->start += n;
    if (b->start < b->len) return;
    b->start = b->len = 0;
    if (b->cap > BUF_KEEP) buf_free(b);
}

/* ---- connections ----------------------------------------------------------------------- */

struct conn {
    int fd;
    bool closing;   /* input is over (EOF or an overlong line): flush the echoes, then close */
    struct buf in;  /* the unfinished line */
    struct buf out; /* echoes the socket has not taken yet */
    size_t scanned; /* leading bytes of `in` already known to hold no '\n' */
};

/* Moves every complete line from the input to the output. Returns false if a line, finished
 * or not, is longer than the limit; the lines before it are still echoed. */
static bool echo_lines(struct conn *c) {
    const char *base = buf_head(&c->in);
    size_t used = buf_used(&c->in), done = 0;
    bool ok = true;
    for (size_t pos = c->scanned; pos < used;) {
        const char *nl = memchr(base + pos, '\n', used - pos);
        if (!nl) break;
        size_t end = (size_t)(nl - base) + 1;
        if (end - done - 1 > LINE_LIMIT) {
            ok = false;
            break;
        }
        done = pos = end;
    }
    if (used - done > LINE_LIMIT) ok = false; /* no need to wait for the '\n' to know */
    buf_append(&c->out, base, done); /* contiguous lines go out in one copy */
    buf_consume(&c->in, done);
    c->scanned = buf_used(&c->in);
    return ok;
}

static bool would_block(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

/* One recv per readiness event keeps a fast client from starving the others. Returns false when
 * the connection must be dropped at once. */
static bool conn_read(struct conn *c) {
    buf_reserve(&c->in, READ_CHUNK);
    ssize_t r = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
    if (r > 0) {
        c->in.len += (size_t)r;
        if (!echo_lines(c)) c->closing = true;
    } else if (r == 0) {
        c->closing = true; /* an unfinished last line is not a line: it is dropped */
    } else if (!would_block()) {
        return false;
    }
    return true;
}

/* Sends as much pending output as the socket takes. Returns false on a dead connection. */
static bool conn_flush(struct conn *c) {
    while (buf_used(&c->out) > 0) {
        ssize_t w = send(c->fd, buf_head(&c->out), buf_used(&c->out), SEND_FLAGS);
        if (w > 0) buf_consume(&c->out, (size_t)w);
        else if (w < 0 && errno == EINTR) continue;
        else return w < 0 && would_block(); /* full socket: POLLOUT will say when to resume */
    }
    return true;
}

/* Reading pauses while echoes pile up, so a client that sends without reading is held back by
 * its own socket instead of growing our memory. */
static short conn_events(const struct conn *c) {
    short ev = 0;
    if (!c->closing && buf_used(&c->out) < OUT_HIGH) ev |= POLLIN;
    if (buf_used(&c->out) > 0) ev |= POLLOUT;
    return ev;
}

/* Handles one connection's poll result. Returns false when it should be closed. */
static bool conn_service(struct conn *c, short revents) {
    if (revents & (POLLERR | POLLNVAL)) return false;
    if ((revents & (POLLIN | POLLHUP)) && !c->closing && !conn_read(c)) return false;
    if (!conn_flush(c)) return false;
    /* After a hangup the peer can take no more output, so what is left is dropped. */
    if (c->closing && (buf_used(&c->out) == 0 || (revents & POLLHUP))) return false;
    return true;
}

/* ---- the server ------------------------------------------------------------------------ */

struct server {
    struct pollfd *pfds; /* [0] is the listener; pfds[i] belongs to conns[i] */
    struct conn **conns;
    size_t n, cap;       /* slots used and allocated, the listener included */
};

static void server_init(struct server *s, int listen_fd) {
    s->cap = 64;
    s->pfds = xrealloc(NULL, s->cap * sizeof *s->pfds);
    s->conns = xrealloc(NULL, s->cap * sizeof *s->conns);
    s->pfds[0] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
    s->conns[0] = NULL;
    s->n = 1;
}

static void server_add(struct server *s, int fd) {
    if (s->n == s->cap) {
        s->cap *= 2;
        s->pfds = xrealloc(s->pfds, s->cap * sizeof *s->pfds);
        s->conns = xrealloc(s->conns, s->cap * sizeof *s->conns);
    }
    struct conn *c = xrealloc(NULL, sizeof *c);
    *c = (struct conn){.fd = fd};
    s->conns[s->n] = c;
    s->pfds[s->n] = (struct pollfd){.fd = fd, .events = POLLIN};
    s->n++;
}

/* Swaps the last connection into slot i, so the arrays stay dense for poll(). */
static void server_drop(struct server *s, size_t i) {
    struct conn *c = s->conns[i];
    close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
    s->n--;
    s->conns[i] = s->conns[s->n];
    s->pfds[i] = s->pfds[s->n];
}

static void accept_all(struct server *s) {
    for (;;) {
        int fd = net_accept(s->pfds[0].fd);
        if (fd < 0) return; /* EAGAIN: drained. Anything else: retry on the next readiness. */
        if (s->n - 1 >= MAX_CONNS) close(fd);
        else server_add(s, fd);
    }
}

/* Walks backwards so that server_drop's swap only ever moves an already handled slot. */
static void serve_ready(struct server *s) {
    for (size_t i = s->n - 1; i >= 1; i--) {
        short revents = s->pfds[i].revents;
        if (!revents) continue;
        if (conn_service(s->conns[i], revents)) s->pfds[i].events = conn_events(s->conns[i]);
        else server_drop(s, i);
    }
}

int main(void) {
    struct server s;
    server_init(&s, net_listen_setup());
    fprintf(stderr, "echo: serving\n");
    for (;;) {
        if (poll(s.pfds, (nfds_t)s.n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("echo: poll");
            return 1;
        }
        serve_ready(&s);
        if (s.pfds[0].revents & POLLIN) accept_all(&s);
    }
}
