/* The memory-heavy guest: keeps dirtying pages of a working set at a chosen rate, so live
 * migration and checkpointing have a write rate to keep up with. The rate is a knob (argv or
 * "RATE r") rather than a constant so a test can find where pre-copy stops converging.
 *
 *   STATUS  -> STATUS pages_written=<n> working_set_mib=<m> rate=<r> checksum=<sum>
 *   RATE r  -> OK | ERR syntax | ERR range
 *
 * Usage: dirty [pages per second=200] [working set MiB=64] */
#include "conn.h"
#include <inttypes.h>
#include <time.h>

#define PAGE 4096u
#define TICK_NS 10000000ull  /* 10 ms between bursts of writes */
#define MAX_CATCHUP_NS 1000000000ull /* see dirty_tick */
#define MAX_RATE 100000000ull /* keeps rate * MAX_CATCHUP_NS inside 64 bits */

static unsigned char *ws;
static uint64_t npages, ws_mib;
static uint64_t rate;
static uint64_t pages_written;
static uint64_t last_ns;   /* when we last wrote */
static uint64_t carry;     /* page-nanoseconds owed but not yet a whole page */
static uint64_t rng = 0x9E3779B97F4A7C15ull; /* fixed seed: runs are reproducible */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) { uint64_t t = a % b; a = b; b = t; }
    return a;
}

/* Writes count distinct pages. A random start and a random stride coprime with npages visit
 * distinct pages until the stride wraps all the way round, which no burst exceeds; so a burst
 * of n writes really dirties n pages and the next burst lands elsewhere. */
static void write_pages(uint64_t count) {
    if (count > npages) count = npages;
    uint64_t idx = xorshift64() % npages;
    uint64_t stride = (xorshift64() % npages) | 1;
    while (gcd(stride, npages) != 1) stride = (stride + 2) % npages;
    for (uint64_t i = 0; i < count; i++) {
        unsigned char *p = ws + idx * PAGE;
        p[0]++; /* a new value each time, so even a content-comparing tracker sees the change */
        idx += stride;
        if (idx >= npages) idx -= npages;
    }
    pages_written += count;
}

/* Called around every poll: pays off the writes owed for the time elapsed. A paused guest
 * (snapshotted, stopped in a debugger) catches up at most one second, not in one huge burst. */
static int dirty_tick(int timed_out) {
    (void)timed_out;
    uint64_t now = now_ns();
    uint64_t elapsed = now - last_ns;
    if (elapsed < TICK_NS) return (int)((TICK_NS - elapsed + 999999) / 1000000);
    last_ns = now;
    if (elapsed > MAX_CATCHUP_NS) elapsed = MAX_CATCHUP_NS;
    uint64_t owed = rate * elapsed + carry;
    carry = owed % 1000000000ull;
    write_pages(owed / 1000000000ull);
    return (int)(TICK_NS / 1000000);
}

static uint64_t checksum(void) {
    uint64_t sum = 0;
    for (uint64_t i = 0; i < npages; i++) sum += ws[i * PAGE];
    return sum;
}

static int parse_u64(const char *s, uint64_t *out) {
    uint64_t x = 0;
    if (*s == '\0') return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > UINT64_MAX / 10 - 9) return 0;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *out = x;
    return 1;
}

static void on_line(struct conn *c, char *line, size_t len) {
    (void)len;
    uint64_t r;
    if (strcmp(line, "STATUS") == 0) {
        conn_printf(c, "STATUS pages_written=%" PRIu64 " working_set_mib=%" PRIu64 " rate=%" PRIu64
                       " checksum=%" PRIu64 "\n", pages_written, ws_mib, rate, checksum());
    } else if (strncmp(line, "RATE ", 5) == 0) {
        if (!parse_u64(line + 5, &r)) conn_printf(c, "ERR syntax\n");
        else if (r > MAX_RATE) conn_printf(c, "ERR range\n");
        else { rate = r; conn_printf(c, "OK\n"); }
    } else {
        conn_printf(c, "ERR syntax\n");
    }
}

static long dirty_parse(struct conn *c, char *in, size_t len) { return conn_line(c, in, len, on_line); }

static uint64_t arg_u64(int argc, char **argv, int i, uint64_t dflt) {
    uint64_t v;
    if (argc <= i) return dflt;
    if (!parse_u64(argv[i], &v)) {
        fprintf(stderr, "dirty: bad argument '%s'\n", argv[i]);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    rate = arg_u64(argc, argv, 1, 200);
    ws_mib = arg_u64(argc, argv, 2, 64);
    if (rate > MAX_RATE || ws_mib == 0 || ws_mib > 3072) {
        fprintf(stderr, "dirty: rate must be <= %llu and working set 1..3072 MiB\n", MAX_RATE);
        return 2;
    }
    npages = ws_mib * (1024 * 1024 / PAGE);
    /* Page-aligned and fully written once, so the whole working set is resident from the start
     * and every "page" we dirty later is exactly one 4 KiB page of memory. */
    void *p = NULL;
    if (posix_memalign(&p, PAGE, (size_t)(npages * PAGE)) != 0) { perror("dirty"); return 1; }
    ws = p;
    memset(ws, 0, (size_t)(npages * PAGE));
    last_ns = now_ns();
    static const struct conn_ops ops = {
        .name = "dirty", .parse = dirty_parse, .tick = dirty_tick, .max_input = 4096};
    return conn_serve(&ops);
}
