/* kv: a small RESP2 key-value server, enough of Redis for redis-cli and redis-benchmark.
 *
 * One single-threaded poll() loop over non-blocking sockets. Each connection keeps an input
 * buffer, because a request may arrive in pieces or many may arrive at once (pipelining), and an
 * output buffer, because the socket may not take a reply yet. All keys live in one open-addressing
 * hash table of binary-safe keys; a value is a string or a list (a ring buffer of strings).
 *
 * Keys never expire: the guest runs under deterministic replay and must not read the clock, so
 * SET's EX/PX/EXAT/PXAT options are validated and then ignored. Likewise nothing is randomised:
 * the hash function is unseeded. */
#include "net.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#define IN_LIMIT   ((size_t)64 << 20)  /* unparsed bytes one client may have buffered */
#define MAX_BULK   (IN_LIMIT - 4096)  /* so one maximal argument plus its framing still fits */
#define MAX_ARGS   (IN_LIMIT / 6)     /* "$0\r\n\r\n" is the smallest argument: more never fit */
#define MAX_INLINE ((size_t)64 << 10)  /* as Redis: a longer inline line is not a command */
#define MAX_HEADER 32                  /* "*<count>\r\n" and "$<len>\r\n" never need more */
#define OUT_HIGH   ((size_t)1 << 20)   /* stop reading a client whose replies pile up past this */
#define READ_CHUNK ((size_t)16 << 10)
#define BUF_KEEP   ((size_t)1 << 20)   /* an emptied buffer bigger than this is given back */
#define DB_MIN_CAP 1024

#ifdef __wasi__
/* wasi-libc's poll() builds its subscription and event arrays as VLAs on the 256 KiB guest stack,
 * about 160 bytes per pollfd, so the cap must stay well under ~1600 descriptors. */
#define MAX_CONNS  1024
#define SEND_FLAGS 0 /* wasi-libc's send() rejects every flag, and WASI has no SIGPIPE anyway */
#else
#define MAX_CONNS  4096
#define SEND_FLAGS MSG_NOSIGNAL /* a vanished peer must cost an EPIPE, not the whole process */
#endif

static const char E_NOTINT[] = "ERR value is not an integer or out of range";
static const char E_SYNTAX[] = "ERR syntax error";
static const char E_WRONGTYPE[] = "WRONGTYPE Operation against a key holding the wrong kind of value";

/* ---- memory ---------------------------------------------------------------------------- */

/* There is no sensible partial recovery from running out of guest memory mid-command. */
static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("kv: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

static void *xmalloc(size_t n) { return xrealloc(NULL, n); }

static void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size);
    if (!p) {
        fputs("kv: out of memory\n", stderr);
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

/* One huge request or reply must not pin its memory for the rest of the connection's life. */
static void buf_consume(struct buf *b, size_t n) {
    b->start += n;
    if (b->start < b->len) return;
    b->start = b->len = 0;
    if (b->cap > BUF_KEEP) buf_free(b);
}

/* ---- integers -------------------------------------------------------------------------- */

/* Strict like Redis's string2ll: no spaces, no '+', no leading zeros, no overflow, so that a
 * value round-trips through INCR byte for byte. */
static bool parse_ll(const char *p, size_t n, long long *out) {
    if (n == 0 || n > 20) return false;
    if (n == 1 && p[0] == '0') {
        *out = 0;
        return true;
    }
    size_t i = p[0] == '-';
    if (i == n || p[i] < '1' || p[i] > '9') return false;
    unsigned long long v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (d > 9 || v > (ULLONG_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    if (p[0] != '-') {
        if (v > (unsigned long long)LLONG_MAX) return false;
        *out = (long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX + 1) return false;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    }
    return true;
}

/* Writes v in decimal to dst (at least 21 bytes) and returns the length. */
static size_t fmt_ll(char *dst, long long v) {
    char tmp[24];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) dst[len++] = '-';
    while (n) dst[len++] = tmp[--n];
    return len;
}

/* ---- values ---------------------------------------------------------------------------- */

struct arg { /* a request argument: points into the connection's input buffer */
    const char *p;
    size_t len;
};

struct str { /* an owned, binary-safe string */
    char *p;
    size_t len;
};

static struct str str_dup(const char *p, size_t n) {
    struct str s = {xmalloc(n), n};
    if (n) memcpy(s.p, p, n);
    return s;
}

/* A ring buffer so that pushes and pops at both ends are O(1); cap is a power of two. */
struct list {
    struct str *items;
    size_t head, len, cap;
};

static struct str *list_at(const struct list *l, size_t i) { return &l->items[(l->head + i) & (l->cap - 1)]; }

static void list_grow(struct list *l) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    struct str *items = xmalloc(cap * sizeof *items);
    for (size_t i = 0; i < l->len; i++) items[i] = *list_at(l, i);
    free(l->items);
    l->items = items;
    l->head = 0;
    l->cap = cap;
}

static void list_push(struct list *l, struct str s, bool left) {
    if (l->len == l->cap) list_grow(l);
    if (left) {
        l->head = (l->head + l->cap - 1) & (l->cap - 1);
        l->items[l->head] = s;
    } else {
        *list_at(l, l->len) = s;
    }
    l->len++;
}

/* The caller owns the returned string. The list must not be empty. */
static struct str list_pop(struct list *l, bool left) {
    struct str s;
    if (left) {
        s = l->items[l->head];
        l->head = (l->head + 1) & (l->cap - 1);
    } else {
        s = *list_at(l, l->len - 1);
    }
    l->len--;
    return s;
}

static void list_free(struct list *l) {
    for (size_t i = 0; i < l->len; i++) free(list_at(l, i)->p);
    free(l->items);
    free(l);
}

/* ---- the keyspace ---------------------------------------------------------------------- */

enum vtype { T_STR, T_LIST };

struct entry {
    union {
        struct str s;
        struct list *l;
    } v;
    size_t klen;
    unsigned char type;
    char key[];
};

/* Open addressing with linear probing and backward-shift deletion (so no tombstones). tags[i]
 * caches the hash of slots[i] so probes rarely touch an entry that does not match. */
struct db {
    struct entry **slots;
    uint32_t *tags;
    size_t mask, count;
};

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Unseeded on purpose: the guest must behave identically on every replay. */
static uint32_t hash_key(const char *p, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = mix64(h ^ w);
    }
    w = 0;
    if (n) memcpy(&w, p, n);
    return (uint32_t)mix64(h ^ w);
}

static void db_init(struct db *db, size_t cap) {
    db->slots = xcalloc(cap, sizeof *db->slots);
    db->tags = xmalloc(cap * sizeof *db->tags);
    db->mask = cap - 1;
    db->count = 0;
}

/* Returns the slot holding the key, or the empty slot where it belongs. */
static size_t db_slot(const struct db *db, const char *k, size_t n, uint32_t tag) {
    for (size_t i = tag & db->mask;; i = (i + 1) & db->mask) {
        const struct entry *e = db->slots[i];
        if (!e) return i;
        if (db->tags[i] == tag && e->klen == n && memcmp(e->key, k, n) == 0) return i;
    }
}

static struct entry *db_find(const struct db *db, const struct arg *key) {
    return db->slots[db_slot(db, key->p, key->len, hash_key(key->p, key->len))];
}

static void db_resize(struct db *db, size_t cap) {
    struct entry **old = db->slots;
    uint32_t *old_tags = db->tags;
    size_t old_cap = db->mask + 1, count = db->count;
    db_init(db, cap);
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i]) continue;
        size_t j = old_tags[i] & db->mask;
        while (db->slots[j]) j = (j + 1) & db->mask;
        db->slots[j] = old[i];
        db->tags[j] = old_tags[i];
    }
    db->count = count;
    free(old);
    free(old_tags);
}

/* Adds a key that is known to be absent, with an empty value of the given type. */
static struct entry *db_add(struct db *db, const struct arg *key, enum vtype type) {
    if ((db->count + 1) * 4 > (db->mask + 1) * 3) db_resize(db, (db->mask + 1) * 2);
    uint32_t tag = hash_key(key->p, key->len);
    size_t i = db_slot(db, key->p, key->len, tag);
    struct entry *e = xmalloc(sizeof *e + key->len);
    e->klen = key->len;
    e->type = (unsigned char)type;
    if (key->len) memcpy(e->key, key->p, key->len);
    if (type == T_STR) e->v.s = (struct str){0};
    else e->v.l = xcalloc(1, sizeof *e->v.l);
    db->slots[i] = e;
    db->tags[i] = tag;
    db->count++;
    return e;
}

static void value_free(struct entry *e) {
    if (e->type == T_STR) free(e->v.s.p);
    else list_free(e->v.l);
}

static void entry_free(struct entry *e) {
    value_free(e);
    free(e);
}

/* Backward-shift deletion: pull later members of the probe run into the hole unless that would
 * move them before their home slot, so lookups never need tombstones. */
static void db_remove_slot(struct db *db, size_t hole) {
    entry_free(db->slots[hole]);
    for (size_t j = (hole + 1) & db->mask; db->slots[j]; j = (j + 1) & db->mask) {
        size_t home = db->tags[j] & db->mask;
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        db->slots[hole] = db->slots[j];
        db->tags[hole] = db->tags[j];
        hole = j;
    }
    db->slots[hole] = NULL;
    db->count--;
}

static bool db_delete(struct db *db, const struct arg *key) {
    size_t i = db_slot(db, key->p, key->len, hash_key(key->p, key->len));
    if (!db->slots[i]) return false;
    db_remove_slot(db, i);
    return true;
}

static void db_flush(struct db *db) {
    for (size_t i = 0; i <= db->mask; i++)
        if (db->slots[i]) entry_free(db->slots[i]);
    free(db->slots);
    free(db->tags);
    db_init(db, DB_MIN_CAP);
}

/* Makes e a string holding a copy of p, whatever it held before. */
static void entry_set_str(struct entry *e, const char *p, size_t n) {
    value_free(e);
    e->type = T_STR;
    e->v.s = str_dup(p, n);
}

/* ---- connections and replies ----------------------------------------------------------- */

struct span { /* an argument as an offset into the input, which may move while it is parsed */
    uint32_t off, len;
};

struct conn {
    int fd;
    bool closing; /* input is over (EOF, QUIT, protocol error): flush the replies, then close */
    struct buf in, out;
    /* Multibulk progress survives across reads, so a request arriving in many pieces is not
     * rescanned from its start each time. Offsets are relative to in.start. */
    bool in_mbulk;
    size_t req_pending; /* bulk arguments still expected */
    size_t req_scan;    /* bytes of the current request parsed so far */
    struct span *spans;
    size_t argc, spans_cap;
    bool resp3; /* HELLO 3 was answered: nulls are "_", pairs are maps */
};

static void out_bytes(struct conn *c, const void *p, size_t n) { buf_append(&c->out, p, n); }
static void out_cstr(struct conn *c, const char *s) { out_bytes(c, s, strlen(s)); }

/* "<sigil><n>\r\n": the framing shared by integers, bulk lengths and array lengths. */
static void out_prefixed(struct conn *c, char sigil, long long n) {
    char tmp[32];
    size_t len = 1 + fmt_ll(tmp + 1, n);
    tmp[0] = sigil;
    tmp[len++] = '\r';
    tmp[len++] = '\n';
    out_bytes(c, tmp, len);
}

/* Client bytes quoted in an error must not break the line-based reply. */
static void out_sanitized(struct conn *c, const char *p, size_t n) {
    buf_reserve(&c->out, n);
    for (size_t i = 0; i < n; i++) c->out.data[c->out.len++] = (p[i] == '\r' || p[i] == '\n') ? ' ' : p[i];
}

static void reply_ok(struct conn *c) { out_bytes(c, "+OK\r\n", 5); }
static void reply_nil(struct conn *c) {
    if (c->resp3) out_bytes(c, "_\r\n", 3);
    else out_bytes(c, "$-1\r\n", 5);
}
static void reply_int(struct conn *c, long long v) { out_prefixed(c, ':', v); }
static void reply_array(struct conn *c, long long n) { out_prefixed(c, '*', n); }

static void reply_status(struct conn *c, const char *s) {
    out_bytes(c, "+", 1);
    out_cstr(c, s);
    out_bytes(c, "\r\n", 2);
}

static void reply_error(struct conn *c, const char *msg) {
    out_bytes(c, "-", 1);
    out_cstr(c, msg);
    out_bytes(c, "\r\n", 2);
}

static void reply_bulk(struct conn *c, const char *p, size_t n) {
    buf_reserve(&c->out, n + 32); /* one growth for the whole reply */
    out_prefixed(c, '$', (long long)n);
    out_bytes(c, p, n);
    out_bytes(c, "\r\n", 2);
}

static void reply_arity(struct conn *c, const char *name) {
    out_cstr(c, "-ERR wrong number of arguments for '");
    out_cstr(c, name);
    out_cstr(c, "' command\r\n");
}

/* Same wording as Redis 7, which clients and tests match on. */
static void reply_unknown(struct conn *c, const struct arg *av, size_t ac) {
    size_t budget = 128;
    out_cstr(c, "-ERR unknown command '");
    out_sanitized(c, av[0].p, av[0].len < budget ? av[0].len : budget);
    out_cstr(c, "', with args beginning with: ");
    for (size_t i = 1; i < ac && budget > 0; i++) {
        size_t n = av[i].len < budget ? av[i].len : budget;
        out_bytes(c, "'", 1);
        out_sanitized(c, av[i].p, n);
        out_bytes(c, "' ", 2);
        budget -= n;
    }
    out_bytes(c, "\r\n", 2);
}

/* ---- commands -------------------------------------------------------------------------- */

struct server;
typedef void handler(struct server *s, struct conn *c, const struct arg *av, size_t ac);

struct command {
    const char *name; /* lower case */
    int arity;        /* as Redis: n means exactly n arguments, -n at least n (name included) */
    handler *fn;
};

struct server {
    struct db db;
    struct pollfd *pfds; /* [0] is the listener; pfds[i] belongs to conns[i] */
    struct conn **conns;
    size_t n, cap;       /* slots used and allocated, the listener included */
    struct arg *args;    /* the current request's arguments, rebuilt for each request */
    size_t args_cap;
};

static bool arg_is(const struct arg *a, const char *lit) {
    size_t n = strlen(lit);
    if (a->len != n) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = a->p[i];
        if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
        if (ch != lit[i]) return false;
    }
    return true;
}

/* Looks a key up expecting a type. A mismatch has already been answered with WRONGTYPE when
 * *bad comes back true; otherwise NULL means the key is absent. */
static struct entry *lookup_typed(struct server *s, struct conn *c, const struct arg *key, enum vtype type,
                                  bool *bad) {
    struct entry *e = db_find(&s->db, key);
    *bad = e && e->type != type;
    if (*bad) reply_error(c, E_WRONGTYPE);
    return *bad ? NULL : e;
}

static void cmd_ping(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s;
    if (ac > 2) reply_arity(c, "ping");
    else if (ac == 2) reply_bulk(c, av[1].p, av[1].len);
    else reply_status(c, "PONG");
}

static void cmd_echo(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s, (void)ac;
    reply_bulk(c, av[1].p, av[1].len);
}

static void cmd_get(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    bool bad;
    struct entry *e = lookup_typed(s, c, &av[1], T_STR, &bad);
    if (bad) return;
    if (e) reply_bulk(c, e->v.s.p, e->v.s.len);
    else reply_nil(c);
}

struct set_opts {
    bool nx, xx, get;
};

/* Expiry options are checked as Redis would, then dropped: there is no clock to expire by. */
static bool parse_set_opts(struct conn *c, const struct arg *av, size_t ac, struct set_opts *o) {
    bool expiry = false, keepttl = false;
    for (size_t i = 3; i < ac; i++) {
        const struct arg *a = &av[i];
        if (arg_is(a, "nx")) o->nx = true;
        else if (arg_is(a, "xx")) o->xx = true;
        else if (arg_is(a, "get")) o->get = true;
        else if (arg_is(a, "keepttl")) keepttl = true;
        else if ((arg_is(a, "ex") || arg_is(a, "px") || arg_is(a, "exat") || arg_is(a, "pxat")) && i + 1 < ac &&
                 !expiry) {
            long long t;
            if (!parse_ll(av[i + 1].p, av[i + 1].len, &t)) {
                reply_error(c, E_NOTINT);
                return false;
            }
            if (t <= 0) {
                reply_error(c, "ERR invalid expire time in 'set' command");
                return false;
            }
            expiry = true;
            i++;
        } else {
            reply_error(c, E_SYNTAX);
            return false;
        }
    }
    if ((o->nx && o->xx) || (expiry && keepttl)) {
        reply_error(c, E_SYNTAX);
        return false;
    }
    return true;
}

static void cmd_set(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    struct set_opts o = {0};
    if (!parse_set_opts(c, av, ac, &o)) return;
    struct entry *e = db_find(&s->db, &av[1]);
    if (o.get && e && e->type != T_STR) {
        reply_error(c, E_WRONGTYPE);
        return;
    }
    /* With GET the reply is the old value whether or not the condition lets the write happen. */
    if (o.get) {
        if (e) reply_bulk(c, e->v.s.p, e->v.s.len);
        else reply_nil(c);
    }
    if ((o.nx && e) || (o.xx && !e)) {
        if (!o.get) reply_nil(c);
        return;
    }
    if (!e) e = db_add(&s->db, &av[1], T_STR);
    entry_set_str(e, av[2].p, av[2].len);
    if (!o.get) reply_ok(c);
}

static void cmd_setnx(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    if (db_find(&s->db, &av[1])) {
        reply_int(c, 0);
        return;
    }
    entry_set_str(db_add(&s->db, &av[1], T_STR), av[2].p, av[2].len);
    reply_int(c, 1);
}

static void cmd_mset(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    if (ac % 2 == 0) {
        reply_arity(c, "mset");
        return;
    }
    for (size_t i = 1; i < ac; i += 2) {
        struct entry *e = db_find(&s->db, &av[i]);
        if (!e) e = db_add(&s->db, &av[i], T_STR);
        entry_set_str(e, av[i + 1].p, av[i + 1].len);
    }
    reply_ok(c);
}

static void cmd_mget(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    reply_array(c, (long long)(ac - 1));
    for (size_t i = 1; i < ac; i++) {
        const struct entry *e = db_find(&s->db, &av[i]);
        if (e && e->type == T_STR) reply_bulk(c, e->v.s.p, e->v.s.len);
        else reply_nil(c); /* MGET answers nil for lists rather than failing the whole batch */
    }
}

static void cmd_append(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    bool bad;
    struct entry *e = lookup_typed(s, c, &av[1], T_STR, &bad);
    if (bad) return;
    if (!e) e = db_add(&s->db, &av[1], T_STR);
    struct str *v = &e->v.s;
    v->p = xrealloc(v->p, v->len + av[2].len);
    if (av[2].len) memcpy(v->p + v->len, av[2].p, av[2].len);
    v->len += av[2].len;
    reply_int(c, (long long)v->len);
}

static void cmd_strlen(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    bool bad;
    const struct entry *e = lookup_typed(s, c, &av[1], T_STR, &bad);
    if (!bad) reply_int(c, e ? (long long)e->v.s.len : 0);
}

/* The INCR/DECR family: adds delta to the key's integer value, a missing key counting as 0. */
static void incr_by(struct server *s, struct conn *c, const struct arg *key, long long delta) {
    bool bad;
    struct entry *e = lookup_typed(s, c, key, T_STR, &bad);
    if (bad) return;
    long long cur = 0;
    if (e && !parse_ll(e->v.s.p, e->v.s.len, &cur)) {
        reply_error(c, E_NOTINT);
        return;
    }
    if ((delta > 0 && cur > LLONG_MAX - delta) || (delta < 0 && cur < LLONG_MIN - delta)) {
        reply_error(c, "ERR increment or decrement would overflow");
        return;
    }
    cur += delta;
    char digits[24];
    size_t n = fmt_ll(digits, cur);
    if (!e) e = db_add(&s->db, key, T_STR);
    entry_set_str(e, digits, n);
    reply_int(c, cur);
}

static void cmd_incr(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    incr_by(s, c, &av[1], 1);
}

static void cmd_decr(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    incr_by(s, c, &av[1], -1);
}

static void cmd_incrby(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    long long d;
    if (!parse_ll(av[2].p, av[2].len, &d)) reply_error(c, E_NOTINT);
    else incr_by(s, c, &av[1], d);
}

static void cmd_decrby(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    long long d;
    if (!parse_ll(av[2].p, av[2].len, &d)) reply_error(c, E_NOTINT);
    else if (d == LLONG_MIN) reply_error(c, "ERR decrement would overflow"); /* -d does not exist */
    else incr_by(s, c, &av[1], -d);
}

static void cmd_del(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    long long n = 0;
    for (size_t i = 1; i < ac; i++) n += db_delete(&s->db, &av[i]);
    reply_int(c, n);
}

static void cmd_exists(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    long long n = 0; /* a key named twice counts twice, as in Redis */
    for (size_t i = 1; i < ac; i++) n += db_find(&s->db, &av[i]) != NULL;
    reply_int(c, n);
}

static void cmd_type(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    const struct entry *e = db_find(&s->db, &av[1]);
    reply_status(c, !e ? "none" : e->type == T_STR ? "string" : "list");
}

static void push_generic(struct server *s, struct conn *c, const struct arg *av, size_t ac, bool left) {
    bool bad;
    struct entry *e = lookup_typed(s, c, &av[1], T_LIST, &bad);
    if (bad) return;
    if (!e) e = db_add(&s->db, &av[1], T_LIST);
    for (size_t i = 2; i < ac; i++) list_push(e->v.l, str_dup(av[i].p, av[i].len), left);
    reply_int(c, (long long)e->v.l->len);
}

static void cmd_lpush(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    push_generic(s, c, av, ac, true);
}

static void cmd_rpush(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    push_generic(s, c, av, ac, false);
}

static void reply_popped(struct conn *c, struct list *l, bool left) {
    struct str v = list_pop(l, left);
    reply_bulk(c, v.p, v.len);
    free(v.p);
}

/* LPOP/RPOP key [count]. Without a count the reply is one bulk; with one it is an array, and a
 * missing key answers a null of the matching shape. A list that empties stops existing. */
static void pop_generic(struct server *s, struct conn *c, const struct arg *av, size_t ac, bool left) {
    long long count = 1;
    if (ac > 3) {
        reply_arity(c, left ? "lpop" : "rpop");
        return;
    }
    if (ac == 3 && (!parse_ll(av[2].p, av[2].len, &count) || count < 0)) {
        reply_error(c, "ERR value is out of range, must be positive");
        return;
    }
    bool bad;
    struct entry *e = lookup_typed(s, c, &av[1], T_LIST, &bad);
    if (bad) return;
    if (!e) {
        if (ac == 3 && !c->resp3) out_cstr(c, "*-1\r\n"); /* RESP3 has one null for both */
        else reply_nil(c);
        return;
    }
    struct list *l = e->v.l;
    if (ac == 2) {
        reply_popped(c, l, left);
    } else {
        size_t n = (unsigned long long)count < l->len ? (size_t)count : l->len;
        reply_array(c, (long long)n);
        while (n--) reply_popped(c, l, left);
    }
    if (l->len == 0) db_delete(&s->db, &av[1]);
}

static void cmd_lpop(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    pop_generic(s, c, av, ac, true);
}

static void cmd_rpop(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    pop_generic(s, c, av, ac, false);
}

static void cmd_llen(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    bool bad;
    const struct entry *e = lookup_typed(s, c, &av[1], T_LIST, &bad);
    if (!bad) reply_int(c, e ? (long long)e->v.l->len : 0);
}

static void cmd_lrange(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)ac;
    long long start, stop;
    if (!parse_ll(av[2].p, av[2].len, &start) || !parse_ll(av[3].p, av[3].len, &stop)) {
        reply_error(c, E_NOTINT);
        return;
    }
    bool bad;
    const struct entry *e = lookup_typed(s, c, &av[1], T_LIST, &bad);
    if (bad) return;
    long long len = e ? (long long)e->v.l->len : 0;
    /* Negative indexes count from the end; out-of-range ends are clamped, never an error. */
    if (start < 0) start = start + len < 0 ? 0 : start + len;
    if (stop < 0) stop += len;
    if (stop >= len) stop = len - 1;
    if (start > stop) {
        reply_array(c, 0);
        return;
    }
    reply_array(c, stop - start + 1);
    for (long long i = start; i <= stop; i++) {
        const struct str *v = list_at(e->v.l, (size_t)i);
        reply_bulk(c, v->p, v->len);
    }
}

static void cmd_dbsize(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)av, (void)ac;
    reply_int(c, (long long)s->db.count);
}

/* FLUSHALL and FLUSHDB: there is only database 0, so they are the same thing. */
static void cmd_flush(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    if (ac > 2 || (ac == 2 && !arg_is(&av[1], "async") && !arg_is(&av[1], "sync"))) {
        reply_error(c, E_SYNTAX);
        return;
    }
    db_flush(&s->db);
    reply_ok(c);
}

static void cmd_select(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s, (void)ac;
    long long db;
    if (!parse_ll(av[1].p, av[1].len, &db)) reply_error(c, E_NOTINT);
    else if (db != 0) reply_error(c, "ERR DB index is out of range");
    else reply_ok(c);
}

static void cmd_quit(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s, (void)av, (void)ac;
    reply_ok(c);
    c->closing = true; /* requests pipelined after QUIT are dropped, as Redis does */
}

/* redis-cli asks for COMMAND DOCS at start-up; an empty answer makes it fall back gracefully. */
static void cmd_command(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s;
    if (ac >= 2 && arg_is(&av[1], "count")) reply_int(c, 0);
    else reply_array(c, 0);
}

/* Only the parameters redis-benchmark reads at start-up have values. */
static const char *config_value(const struct arg *name) {
    if (arg_is(name, "save")) return "";
    if (arg_is(name, "appendonly")) return "no";
    return NULL;
}

static void cmd_config(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s;
    if (arg_is(&av[1], "set") || arg_is(&av[1], "resetstat") || arg_is(&av[1], "rewrite")) {
        reply_ok(c);
        return;
    }
    if (!arg_is(&av[1], "get")) {
        out_cstr(c, "-ERR unknown subcommand '");
        out_sanitized(c, av[1].p, av[1].len < 128 ? av[1].len : 128);
        out_cstr(c, "'. Try CONFIG HELP.\r\n");
        return;
    }
    if (ac < 3) {
        reply_arity(c, "config|get");
        return;
    }
    long long known = 0;
    for (size_t i = 2; i < ac; i++) known += config_value(&av[i]) != NULL;
    if (c->resp3) out_prefixed(c, '%', known);
    else reply_array(c, 2 * known);
    for (size_t i = 2; i < ac; i++) {
        const char *v = config_value(&av[i]);
        if (!v) continue;
        reply_bulk(c, av[i].p, av[i].len);
        reply_bulk(c, v, strlen(v));
    }
}

static bool info_wants(const struct arg *av, size_t ac, const char *section) {
    if (ac < 2 || arg_is(&av[1], "all") || arg_is(&av[1], "default") || arg_is(&av[1], "everything")) return true;
    return arg_is(&av[1], section);
}

static void cmd_info(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    char text[512];
    int n = 0;
    if (info_wants(av, ac, "server"))
        n += snprintf(text + n, sizeof text - (size_t)n,
                      "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nos:understudy\r\n"
                      "arch_bits:%d\r\nmultiplexing_api:poll\r\n\r\n",
                      (int)(sizeof(void *) * CHAR_BIT));
    if (info_wants(av, ac, "clients"))
        n += snprintf(text + n, sizeof text - (size_t)n, "# Clients\r\nconnected_clients:%zu\r\n\r\n", s->n - 1);
    if (info_wants(av, ac, "persistence"))
        n += snprintf(text + n, sizeof text - (size_t)n, "# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n");
    if (info_wants(av, ac, "keyspace")) {
        n += snprintf(text + n, sizeof text - (size_t)n, "# Keyspace\r\n");
        if (s->db.count) /* Redis lists a database only once it holds keys */
            n += snprintf(text + n, sizeof text - (size_t)n, "db0:keys=%zu,expires=0,avg_ttl=0\r\n", s->db.count);
    }
    if (n >= 4 && memcmp(text + n - 4, "\r\n\r\n", 4) == 0) n -= 2; /* no blank line after the last section */
    reply_bulk(c, text, (size_t)n);
}

static void cmd_client(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s, (void)ac;
    if (arg_is(&av[1], "getname")) reply_nil(c); /* names are accepted but not kept */
    else reply_ok(c);
}

/* HELLO [2|3] [AUTH user pass] [SETNAME name], as Redis answers it: the server's description, as
 * an array (RESP2) or a map (RESP3), in the protocol asked for, which the connection then speaks.
 * There are no users: AUTH is accepted as Redis accepts it for the default user without a
 * password; names are accepted but not kept (as CLIENT SETNAME). */
static void cmd_hello(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    (void)s;
    long long version = c->resp3 ? 3 : 2;
    size_t next = 1;
    if (ac >= 2) {
        if (!parse_ll(av[1].p, av[1].len, &version)) {
            reply_error(c, "ERR Protocol version is not an integer or out of range");
            return;
        }
        next = 2;
    }
    if (version < 2 || version > 3) {
        reply_error(c, "NOPROTO unsupported protocol version");
        return;
    }
    while (next < ac) {
        size_t need = arg_is(&av[next], "auth") ? 3 : arg_is(&av[next], "setname") ? 2 : 0;
        if (need == 0 || next + need > ac) {
            out_cstr(c, "-ERR Syntax error in HELLO option '");
            out_sanitized(c, av[next].p, av[next].len < 128 ? av[next].len : 128);
            out_cstr(c, "'\r\n");
            return;
        }
        next += need;
    }
    c->resp3 = version == 3;
    static const char *const fields[] = {"server", "redis", "version", "7.2.0", "mode", "standalone", "role", "master"};
    if (c->resp3) out_prefixed(c, '%', 7);
    else reply_array(c, 14);
    for (size_t i = 0; i < 4; i += 2) {
        reply_bulk(c, fields[i], strlen(fields[i]));
        reply_bulk(c, fields[i + 1], strlen(fields[i + 1]));
    }
    reply_bulk(c, "proto", 5);
    reply_int(c, version);
    reply_bulk(c, "id", 2);
    reply_int(c, (long long)c->fd);
    for (size_t i = 4; i < 8; i += 2) {
        reply_bulk(c, fields[i], strlen(fields[i]));
        reply_bulk(c, fields[i + 1], strlen(fields[i + 1]));
    }
    reply_bulk(c, "modules", 7);
    reply_array(c, 0);
}

/* Most frequent first: the lookup is a linear scan. */
static const struct command commands[] = {
    {"get", 2, cmd_get},         {"set", -3, cmd_set},       {"ping", -1, cmd_ping},
    {"incr", 2, cmd_incr},       {"lpush", -3, cmd_lpush},   {"rpush", -3, cmd_rpush},
    {"lpop", -2, cmd_lpop},      {"rpop", -2, cmd_rpop},     {"mset", -3, cmd_mset},
    {"mget", -2, cmd_mget},      {"del", -2, cmd_del},       {"exists", -2, cmd_exists},
    {"incrby", 3, cmd_incrby},   {"decr", 2, cmd_decr},      {"decrby", 3, cmd_decrby},
    {"llen", 2, cmd_llen},       {"lrange", 4, cmd_lrange},  {"echo", 2, cmd_echo},
    {"setnx", 3, cmd_setnx},     {"append", 3, cmd_append},  {"strlen", 2, cmd_strlen},
    {"type", 2, cmd_type},       {"dbsize", 1, cmd_dbsize},  {"flushall", -1, cmd_flush},
    {"flushdb", -1, cmd_flush},  {"select", 2, cmd_select},  {"quit", -1, cmd_quit},
    {"command", -1, cmd_command}, {"config", -2, cmd_config}, {"info", -1, cmd_info},
    {"client", -2, cmd_client},  {"hello", -1, cmd_hello},
};

static const struct command *command_find(const struct arg *name) {
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (arg_is(name, commands[i].name)) return &commands[i];
    return NULL;
}

static void dispatch(struct server *s, struct conn *c, const struct arg *av, size_t ac) {
    const struct command *cmd = command_find(&av[0]);
    if (!cmd) {
        reply_unknown(c, av, ac);
        return;
    }
    bool ok = cmd->arity > 0 ? ac == (size_t)cmd->arity : ac >= (size_t)-cmd->arity;
    if (!ok) reply_arity(c, cmd->name);
    else cmd->fn(s, c, av, ac);
}

/* ---- request parsing ------------------------------------------------------------------- */

enum parse { P_DONE, P_MORE, P_ERROR };

static void push_span(struct conn *c, size_t off, size_t len) {
    if (c->argc == c->spans_cap) {
        c->spans_cap = c->spans_cap ? c->spans_cap * 2 : 8;
        c->spans = xrealloc(c->spans, c->spans_cap * sizeof *c->spans);
    }
    /* Both fit in 32 bits: the whole request is bounded by IN_LIMIT. */
    c->spans[c->argc++] = (struct span){(uint32_t)off, (uint32_t)len};
}

/* Parses "<sigil><integer>\r\n" at p. Returns the bytes it spans, 0 if it is not all here yet,
 * or -1 if it is malformed. */
static long parse_header(const char *p, size_t avail, long long *val) {
    const char *nl = memchr(p, '\n', avail < MAX_HEADER ? avail : MAX_HEADER);
    if (!nl) return avail < MAX_HEADER ? 0 : -1;
    size_t n = (size_t)(nl - p);
    if (n < 2 || p[n - 1] != '\r' || !parse_ll(p + 1, n - 2, val)) return -1;
    return (long)n + 1;
}

/* "*<n>\r\n" then n times "$<len>\r\n<len bytes>\r\n", resuming where the last call stopped. */
static enum parse parse_mbulk(struct conn *c, const char **err) {
    const char *base = buf_head(&c->in);
    size_t avail = buf_used(&c->in);
    long long n;
    if (!c->in_mbulk) {
        long h = parse_header(base, avail, &n);
        if (h == 0) return P_MORE;
        if (h < 0 || n > (long long)MAX_ARGS) {
            *err = "Protocol error: invalid multibulk length";
            return P_ERROR;
        }
        c->req_scan = (size_t)h;
        c->argc = 0;
        if (n <= 0) return P_DONE; /* Redis ignores empty multibulks */
        c->in_mbulk = true;
        c->req_pending = (size_t)n;
    }
    while (c->req_pending > 0) {
        const char *p = base + c->req_scan;
        size_t left = avail - c->req_scan;
        if (left == 0) return P_MORE;
        if (*p != '$') {
            *err = "Protocol error: expected '$'";
            return P_ERROR;
        }
        long h = parse_header(p, left, &n);
        if (h == 0) return P_MORE;
        if (h < 0 || n < 0 || n > (long long)MAX_BULK) {
            *err = "Protocol error: invalid bulk length";
            return P_ERROR;
        }
        if (left - (size_t)h < (size_t)n + 2) return P_MORE; /* the header is cheap to re-read */
        push_span(c, c->req_scan + (size_t)h, (size_t)n);
        c->req_scan += (size_t)h + (size_t)n + 2;
        c->req_pending--;
    }
    c->in_mbulk = false;
    return P_DONE;
}

static bool is_blank(char ch) { return ch == ' ' || ch == '\t'; }

/* A plain text line such as "PING\r\n", split on blanks (no quoting), as telnet users and
 * redis-benchmark's PING_INLINE send. */
static enum parse parse_inline(struct conn *c, const char **err) {
    const char *base = buf_head(&c->in);
    size_t avail = buf_used(&c->in);
    const char *nl = memchr(base, '\n', avail < MAX_INLINE ? avail : MAX_INLINE);
    if (!nl) {
        if (avail < MAX_INLINE) return P_MORE;
        *err = "Protocol error: too big inline request";
        return P_ERROR;
    }
    size_t end = (size_t)(nl - base);
    c->req_scan = end + 1;
    if (end > 0 && base[end - 1] == '\r') end--;
    c->argc = 0;
    for (size_t i = 0; i < end;) {
        while (i < end && is_blank(base[i])) i++;
        size_t start = i;
        while (i < end && !is_blank(base[i])) i++;
        if (i > start) push_span(c, start, i - start);
    }
    return P_DONE;
}

static enum parse parse_request(struct conn *c, const char **err) {
    if (buf_used(&c->in) == 0) return P_MORE;
    if (c->in_mbulk || buf_head(&c->in)[0] == '*') return parse_mbulk(c, err);
    return parse_inline(c, err);
}

/* Spans become pointers only now: until the request is complete the input buffer may move. */
static void run_request(struct server *s, struct conn *c) {
    if (c->argc > s->args_cap) {
        s->args_cap = c->argc * 2;
        s->args = xrealloc(s->args, s->args_cap * sizeof *s->args);
    }
    const char *base = buf_head(&c->in);
    for (size_t i = 0; i < c->argc; i++) s->args[i] = (struct arg){base + c->spans[i].off, c->spans[i].len};
    dispatch(s, c, s->args, c->argc);
}

/* Answers the complete requests buffered, in order. Returns true if it stopped early because
 * replies are piling up, i.e. complete requests may remain. */
static bool conn_process(struct server *s, struct conn *c) {
    while (!c->closing) {
        if (buf_used(&c->out) >= OUT_HIGH) return true;
        const char *err = NULL;
        enum parse r = parse_request(c, &err);
        if (r == P_MORE) return false;
        if (r == P_ERROR) {
            out_cstr(c, "-ERR ");
            out_cstr(c, err);
            out_bytes(c, "\r\n", 2);
            c->closing = true; /* the stream can no longer be framed */
            return false;
        }
        if (c->argc > 0) run_request(s, c);
        buf_consume(&c->in, c->req_scan);
        c->req_scan = 0;
        c->argc = 0;
    }
    return false;
}

/* ---- socket I/O ------------------------------------------------------------------------ */

static bool would_block(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

/* One recv per readiness event keeps a fast client from starving the others. Returns false when
 * the connection must be dropped. */
static bool conn_read(struct conn *c) {
    size_t used = buf_used(&c->in);
    /* Everything buffered is one incomplete request here (complete ones were answered first). */
    if (used >= IN_LIMIT) return false;
    size_t room = IN_LIMIT - used;
    buf_reserve(&c->in, room < READ_CHUNK ? room : READ_CHUNK);
    size_t want = c->in.cap - c->in.len;
    ssize_t r = recv(c->fd, c->in.data + c->in.len, want < room ? want : room, 0);
    if (r > 0) c->in.len += (size_t)r;
    else if (r == 0) c->closing = true;
    else if (!would_block()) return false;
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

/* Reading pauses while replies pile up, so a client that pipelines without reading its answers
 * is held back by its own socket instead of growing our memory. */
static short conn_events(const struct conn *c) {
    short ev = 0;
    if (!c->closing && buf_used(&c->out) < OUT_HIGH) ev |= POLLIN;
    if (buf_used(&c->out) > 0) ev |= POLLOUT;
    return ev;
}

/* Handles one connection's poll result. Returns false when it should be closed. */
static bool conn_service(struct server *s, struct conn *c, short revents) {
    if (revents & (POLLERR | POLLNVAL)) return false;
    if ((revents & (POLLIN | POLLHUP)) && !c->closing && !conn_read(c)) return false;
    for (;;) {
        bool more = conn_process(s, c);
        if (!conn_flush(c)) return false;
        if (!more || buf_used(&c->out) >= OUT_HIGH) break;
    }
    /* After a hangup the peer can take no more output, so what is left is dropped. */
    if (c->closing && (buf_used(&c->out) == 0 || (revents & POLLHUP))) return false;
    return true;
}

/* ---- the server ------------------------------------------------------------------------ */

static void server_init(struct server *s, int listen_fd) {
    *s = (struct server){0};
    db_init(&s->db, DB_MIN_CAP);
    s->cap = 64;
    s->pfds = xmalloc(s->cap * sizeof *s->pfds);
    s->conns = xmalloc(s->cap * sizeof *s->conns);
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
    struct conn *c = xcalloc(1, sizeof *c);
    c->fd = fd;
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
    free(c->spans);
    free(c);
    s->n--;
    s->conns[i] = s->conns[s->n];
    s->pfds[i] = s->pfds[s->n];
}

/* Beyond the cap a client gets Redis's refusal rather than a silent hang. */
static void refuse(int fd) {
    static const char msg[] = "-ERR max number of clients reached\r\n";
    ssize_t ignored = send(fd, msg, sizeof msg - 1, SEND_FLAGS); /* best effort: it is going anyway */
    (void)ignored;
    close(fd);
}

static void accept_all(struct server *s) {
    for (;;) {
        int fd = net_accept(s->pfds[0].fd);
        if (fd < 0) return; /* EAGAIN: drained. Anything else: retry on the next readiness. */
        if (s->n - 1 >= MAX_CONNS) refuse(fd);
        else server_add(s, fd);
    }
}

/* Walks backwards so that server_drop's swap only ever moves an already handled slot. */
static void serve_ready(struct server *s) {
    for (size_t i = s->n - 1; i >= 1; i--) {
        short revents = s->pfds[i].revents;
        if (!revents) continue;
        if (conn_service(s, s->conns[i], revents)) s->pfds[i].events = conn_events(s->conns[i]);
        else server_drop(s, i);
    }
}

int main(void) {
    struct server s;
    server_init(&s, net_listen_setup());
    fprintf(stderr, "kv: serving\n");
    for (;;) {
        if (poll(s.pfds, (nfds_t)s.n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("kv: poll");
            return 1;
        }
        serve_ready(&s);
        if (s.pfds[0].revents & POLLIN) accept_all(&s);
    }
}
