/* The nondeterminism guest: everything it answers depends on the clocks and on randomness, read
 * on every request and on every 5 ms idle tick. Replayed faithfully (same clock readings, same
 * entropy, same input order) a replica ends in the same state; anything the recorder missed
 * shows up as a different hex number.
 *
 *   STATE      -> STATE <state hex>   (a pure read: folds nothing, numbers no line)
 *   any line   -> <line number> <state hex>   after folding the line, both clocks and 16
 *                 random bytes into the state. Lines are numbered from 1 across all clients,
 *                 so the numbers also record the order the server saw them in. */
#include "conn.h"
#include <inttypes.h>
#include <time.h>

#define IDLE_TICK_MS 5

static uint64_t state = 0xcbf29ce484222325ull;
static uint64_t lines;

/* A 64-bit multiply-xorshift step: cheap, and any changed input bit changes the state. */
static void fold(uint64_t v) {
    state ^= v;
    state *= 0x9E3779B97F4A7C15ull;
    state ^= state >> 29;
}

static void fold_bytes(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t word = 0;
    for (size_t i = 0; i < n; i++) {
        word = word << 8 | b[i];
        if (i % 8 == 7) { fold(word); word = 0; }
    }
    fold(word ^ n); /* the tail, and the length so "a" and "a\0" differ */
}

static void fold_clock(clockid_t id) {
    struct timespec ts = {0, 0};
    clock_gettime(id, &ts);
    fold((uint64_t)ts.tv_sec);
    fold((uint64_t)ts.tv_nsec);
}

/* Every outside input a replay has to reproduce, in one place. */
static void fold_environment(void) {
    unsigned char rnd[16];
    fold_clock(CLOCK_REALTIME);
    fold_clock(CLOCK_MONOTONIC);
    if (getentropy(rnd, sizeof rnd) != 0) memset(rnd, 0, sizeof rnd);
    fold_bytes(rnd, sizeof rnd);
}

static void on_line(struct conn *c, char *line, size_t len) {
    if (strcmp(line, "STATE") == 0) {
        conn_printf(c, "STATE %016" PRIx64 "\n", state);
        return;
    }
    fold_bytes(line, len);
    fold_environment();
    conn_printf(c, "%" PRIu64 " %016" PRIx64 "\n", ++lines, state);
}

static long clocky_parse(struct conn *c, char *in, size_t len) { return conn_line(c, in, len, on_line); }

static int clocky_tick(int timed_out) {
    if (timed_out) fold_environment();
    return IDLE_TICK_MS;
}

int main(void) {
    static const struct conn_ops ops = {
        .name = "clocky", .parse = clocky_parse, .tick = clocky_tick, .max_input = 4096};
    return conn_serve(&ops);
}
