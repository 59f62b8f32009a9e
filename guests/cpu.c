/* The CPU baseline: pure computation, no network, so the ratio "understudy time / native time"
 * measures the interpreter alone. It mixes integer-heavy hashing, memory-walking sieving and
 * floating-point iteration, since an interpreter can be fast at one and slow at another.
 *
 * The result is deterministic and should match between gcc and wasm32: only +, -, * and
 * comparisons on doubles (no libm, whose implementations differ), and plain 32/64-bit integers.
 *
 * Usage: cpu [scale=10]   (work is proportional to scale; 10 is about 1 s natively at -O2) */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_BYTES (1u << 20) /* hashed HASH_PASSES times per round */
#define HASH_PASSES 4
#define SIEVE_LIMIT 3000000u
#define MANDEL_SIZE 256
#define MANDEL_ITER 500

/* ---- SHA-256 (FIPS 180-4), one-shot over a buffer ---- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha256(const unsigned char *data, size_t len, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t full = len / 64 * 64;
    for (size_t i = 0; i < full; i += 64) sha256_block(h, data + i);
    unsigned char tail[128] = {0};
    size_t rest = len - full;
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64) sha256_block(h, tail + i);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

/* ---- the three workloads; each returns a value the checksum folds in ---- */

static uint64_t fold(uint64_t acc, uint64_t v) {
    acc ^= v;
    acc *= 0x100000001b3ull;
    return acc ^ (acc >> 31);
}

/* Hashes the buffer repeatedly, feeding each digest back into the buffer so no pass can be
 * skipped or hoisted by the compiler. */
static uint64_t hash_round(unsigned char *buf, uint64_t round) {
    unsigned char digest[32];
    uint64_t acc = round;
    for (int pass = 0; pass < HASH_PASSES; pass++) {
        sha256(buf, HASH_BYTES, digest);
        memcpy(buf + (size_t)(acc % (HASH_BYTES - 32)), digest, 32);
        uint64_t d;
        memcpy(&d, digest, sizeof d);
        acc = fold(acc, d);
    }
    return acc;
}

/* Counts primes below a limit that moves with the round, and sums a few of them. */
static uint64_t sieve_round(unsigned char *composite, uint64_t round) {
    uint32_t limit = SIEVE_LIMIT - (uint32_t)(round % 1000) * 7;
    memset(composite, 0, limit);
    uint64_t count = 0, sum = 0;
    for (uint32_t i = 2; i < limit; i++) {
        if (composite[i]) continue;
        count++;
        sum += i * (count & 7);
        for (uint64_t j = (uint64_t)i * i; j < limit; j += i) composite[j] = 1;
    }
    return fold(count, sum);
}

/* Escape-time counts over a window that drifts with the round. */
static uint64_t mandel_round(uint64_t round) {
    double x0 = -2.0 + (double)(round % 16) * 0.001, y0 = -1.25, step = 2.5 / MANDEL_SIZE;
    uint64_t total = 0;
    for (int py = 0; py < MANDEL_SIZE; py++) {
        double ci = y0 + py * step;
        for (int px = 0; px < MANDEL_SIZE; px++) {
            double cr = x0 + px * step, zr = 0.0, zi = 0.0;
            int it = 0;
            while (it < MANDEL_ITER && zr * zr + zi * zi <= 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                it++;
            }
            total += (uint64_t)it * (uint64_t)(px + 1);
        }
    }
    return total;
}

int main(int argc, char **argv) {
    long scale = argc > 1 ? strtol(argv[1], NULL, 10) : 10;
    if (scale < 1) { fprintf(stderr, "cpu: scale must be >= 1\n"); return 2; }
    unsigned char *buf = malloc(HASH_BYTES);
    unsigned char *composite = malloc(SIEVE_LIMIT);
    if (!buf || !composite) { perror("cpu"); return 1; }
    /* A fixed, cheap fill: the input must be identical on every platform. */
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < HASH_BYTES; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    uint64_t acc = 0;
    for (long r = 0; r < scale; r++) {
        acc = fold(acc, hash_round(buf, (uint64_t)r));
        acc = fold(acc, sieve_round(composite, (uint64_t)r));
        acc = fold(acc, mandel_round((uint64_t)r));
    }
    printf("cpu: result=%016" PRIx64 "\n", acc);
    free(buf);
    free(composite);
    return 0;
}
