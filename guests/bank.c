/* A toy bank over a line protocol. Its point is an invariant a replica can be checked against:
 * money is only ever moved, so AUDIT's total is always accounts * initial balance, and every
 * "OK <txid>" a client saw must still be counted after a failover.
 *
 *   TRANSFER from to amount  -> OK <txid> | ERR insufficient | ERR bad account | ERR syntax
 *   BALANCE a                -> BALANCE <a> <amount> | ERR bad account | ERR syntax
 *   AUDIT                    -> AUDIT <total> <committed transfers>
 *
 * Usage: bank [accounts=100] [initial balance=1000] */
#include "conn.h"
#include <inttypes.h>

#define BANK_MAX_INPUT 16384 /* a line that does not fit drops its client */
#define BANK_MAX_ARGS 4

static uint64_t *balances;
static uint64_t naccounts;
static uint64_t committed; /* also the last txid handed out */

/* Splits line in place on blanks; returns the word count, or BANK_MAX_ARGS + 1 if there are
 * more words than any command takes. */
static int split_words(char *line, char **words) {
    int n = 0;
    for (char *p = line;;) {
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '\0') return n;
        if (n == BANK_MAX_ARGS) return n + 1;
        words[n++] = p;
        while (*p && *p != ' ' && *p != '\t') p++;
        if (*p) *p++ = '\0';
    }
}

/* Unsigned decimal only: "-1", "+1", "1x" and overflow are all syntax errors, so a client
 * can never move money with a number it did not mean. */
static int parse_u64(const char *s, uint64_t *out) {
    uint64_t x = 0;
    if (*s == '\0') return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        uint64_t d = (uint64_t)(*s - '0');
        if (x > (UINT64_MAX - d) / 10) return 0;
        x = x * 10 + d;
    }
    *out = x;
    return 1;
}

static void do_transfer(struct conn *c, char **w, int n) {
    uint64_t from, to, amount;
    if (n != 4 || !parse_u64(w[1], &from) || !parse_u64(w[2], &to) || !parse_u64(w[3], &amount) ||
        amount == 0) {
        conn_printf(c, "ERR syntax\n");
    } else if (from >= naccounts || to >= naccounts) {
        conn_printf(c, "ERR bad account\n");
    } else if (balances[from] < amount) {
        conn_printf(c, "ERR insufficient\n");
    } else {
        /* Cannot overflow: the total is fixed and was checked to fit at start-up. */
        balances[from] -= amount;
        balances[to] += amount;
        conn_printf(c, "OK %" PRIu64 "\n", ++committed);
    }
}

static void do_balance(struct conn *c, char **w, int n) {
    uint64_t a;
    if (n != 2 || !parse_u64(w[1], &a)) conn_printf(c, "ERR syntax\n");
    else if (a >= naccounts) conn_printf(c, "ERR bad account\n");
    else conn_printf(c, "BALANCE %" PRIu64 " %" PRIu64 "\n", a, balances[a]);
}

/* Sums the real balances rather than reporting a stored total: the audit is only worth
 * something if it would catch lost or duplicated money. */
static void do_audit(struct conn *c, int n) {
    if (n != 1) { conn_printf(c, "ERR syntax\n"); return; }
    uint64_t total = 0;
    for (uint64_t i = 0; i < naccounts; i++) total += balances[i];
    conn_printf(c, "AUDIT %" PRIu64 " %" PRIu64 "\n", total, committed);
}

static void on_line(struct conn *c, char *line, size_t len) {
    (void)len;
    char *w[BANK_MAX_ARGS];
    int n = split_words(line, w);
    if (n > 0 && strcmp(w[0], "TRANSFER") == 0) do_transfer(c, w, n);
    else if (n > 0 && strcmp(w[0], "BALANCE") == 0) do_balance(c, w, n);
    else if (n > 0 && strcmp(w[0], "AUDIT") == 0) do_audit(c, n);
    else conn_printf(c, "ERR syntax\n");
}

static long bank_parse(struct conn *c, char *in, size_t len) { return conn_line(c, in, len, on_line); }

static uint64_t arg_u64(int argc, char **argv, int i, uint64_t dflt) {
    uint64_t v;
    if (argc <= i) return dflt;
    if (!parse_u64(argv[i], &v)) {
        fprintf(stderr, "bank: bad argument '%s'\n", argv[i]);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    naccounts = arg_u64(argc, argv, 1, 100);
    uint64_t initial = arg_u64(argc, argv, 2, 1000);
    if (naccounts == 0 || naccounts > (1u << 24) || (initial && naccounts > UINT64_MAX / initial)) {
        fprintf(stderr, "bank: accounts must be 1..%u and accounts*initial must fit in 64 bits\n", 1u << 24);
        return 2;
    }
    balances = malloc(naccounts * sizeof *balances);
    if (!balances) { perror("bank"); return 1; }
    for (uint64_t i = 0; i < naccounts; i++) balances[i] = initial;
    static const struct conn_ops ops = {.name = "bank", .parse = bank_parse, .max_input = BANK_MAX_INPUT};
    return conn_serve(&ops);
}
