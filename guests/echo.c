/* Echoes every line back to its client, byte for byte ("\r" and all), as soon as the line is
 * complete: the network-delay probe of LLM's HighNet workload. A line longer than 1 MiB drops
 * its client. */
#include "conn.h"

#define ECHO_LINE_MAX (1u << 20)

static long echo_parse(struct conn *c, char *in, size_t len) {
    char *newline = memchr(in, '\n', len);
    if (!newline) return 0;
    size_t used = (size_t)(newline - in) + 1;
    conn_write(c, in, used);
    return (long)used;
}

int main(void) {
    static const struct conn_ops ops = {.name = "echo", .parse = echo_parse, .max_input = ECHO_LINE_MAX + 1};
    return conn_serve(&ops);
}
