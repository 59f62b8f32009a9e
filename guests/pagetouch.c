/* The checkpoint benchmark's guest: a memory of a chosen size in which exactly a chosen number of
 * 4 KiB pages is written between two host calls, round after round. Each round ends with a
 * clock reading (the benchmark's world asks for a suspension there) and sched_yield (where the
 * machine then suspends), so every checkpoint carries that round's pages.
 *
 * Usage: pagetouch [memory MiB=16] [pages per round=100] [rounds=20] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <time.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 16;
    size_t per_round = argc > 2 ? strtoul(argv[2], 0, 10) : 100;
    size_t rounds = argc > 3 ? strtoul(argv[3], 0, 10) : 20;
    size_t pages = mib * 256;
    if (pages == 0 || per_round > pages) {
        fprintf(stderr, "pagetouch: %zu pages per round do not fit in %zu MiB\n", per_round, mib);
        return 2;
    }
    volatile uint8_t *memory = malloc(pages * 4096);
    if (!memory) {
        fprintf(stderr, "pagetouch: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    uint64_t sum = 0;
    for (size_t round = 0; round < rounds; round++) {
        for (size_t i = 0; i < per_round; i++) {
            size_t page = (round * per_round + i) % pages;
            memory[page * 4096 + round % 4096] += 1;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sum += (uint64_t)ts.tv_nsec;
        sched_yield();
    }
    printf("pagetouch %zu MiB %zu pages x %zu rounds %llu\n", mib, per_round, rounds, (unsigned long long)(sum & 0xffff));
    return 0;
}
