/* A small HTTP/1.1 server: keep-alive, pipelining, a page at / and a counter at /counter that
 * POST increments. It is the guest for "does a real client (curl, wrk) survive a migration":
 * the counter is the state that must come across. */
#include "conn.h"
#include <inttypes.h>
#include <strings.h>

#define HTTP_MAX_HEAD 16384 /* request line + headers; bodies are discarded as they stream in */

static uint64_t counter;

static const char index_html[] =
    "<!doctype html>\n<html><head><title>understudy</title></head>\n"
    "<body><h1>understudy</h1><p>POST /counter to count.</p></body></html>\n";

struct request {
    const char *method, *path;
    size_t method_len, path_len;
    int http10;
    int keep_alive;
    int expect_continue;
    int has_length;
    int chunked;
    uint64_t content_length;
};

/* Length of the request head including its blank line, 0 if it has not all arrived yet.
 * Bare "\n" line ends are accepted as well as "\r\n", as most servers do. */
static size_t head_length(const char *in, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (in[i] != '\n') continue;
        if (i + 1 < len && in[i + 1] == '\n') return i + 2;
        if (i + 2 < len && in[i + 1] == '\r' && in[i + 2] == '\n') return i + 3;
    }
    return 0;
}

static int is_tchar(char ch) {
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Whether a comma-separated header value (e.g. Connection) contains token, ignoring case. */
static int has_token(const char *v, size_t n, const char *token) {
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t start = i;
        while (i < n && v[i] != ',') i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
        if (end - start == tl && strncasecmp(v + start, token, tl) == 0) return 1;
    }
    return 0;
}

static int header_is(const char *name, size_t n, const char *want) {
    return n == strlen(want) && strncasecmp(name, want, n) == 0;
}

/* Content-Length must be plain digits; anything else (sign, spaces inside, overflow) would
 * leave us guessing where the next request starts, so it is a bad request. */
static int parse_length(const char *v, size_t n, uint64_t *out) {
    if (n == 0 || n > 18) return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return 0;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 1;
}

/* Parses "METHOD SP target SP HTTP/1.x". Returns 0 if malformed. */
static int parse_request_line(const char *line, size_t n, struct request *r) {
    const char *sp1 = memchr(line, ' ', n);
    if (!sp1 || sp1 == line) return 0;
    const char *rest = sp1 + 1;
    const char *sp2 = memchr(rest, ' ', n - (size_t)(rest - line));
    if (!sp2 || sp2 == rest) return 0;
    const char *ver = sp2 + 1;
    size_t ver_len = n - (size_t)(ver - line);
    if (ver_len != 8 || memcmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1')) return 0;
    r->method = line;
    r->method_len = (size_t)(sp1 - line);
    for (size_t i = 0; i < r->method_len; i++)
        if (!is_tchar(line[i])) return 0;
    r->path = rest;
    r->path_len = (size_t)(sp2 - rest);
    const char *q = memchr(r->path, '?', r->path_len); /* routing ignores the query */
    if (q) r->path_len = (size_t)(q - r->path);
    r->http10 = ver[7] == '0';
    r->keep_alive = !r->http10;
    return 1;
}

/* Applies one "Name: value" header line. Returns 0 if malformed. */
static int parse_header(const char *line, size_t n, struct request *r) {
    const char *colon = memchr(line, ':', n);
    if (!colon || colon == line) return 0;
    size_t name_len = (size_t)(colon - line);
    for (size_t i = 0; i < name_len; i++)
        if (!is_tchar(line[i])) return 0;
    const char *v = colon + 1;
    size_t vn = n - name_len - 1;
    while (vn > 0 && (*v == ' ' || *v == '\t')) { v++; vn--; }
    while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t')) vn--;
    if (header_is(line, name_len, "content-length")) {
        uint64_t len;
        if (!parse_length(v, vn, &len)) return 0;
        if (r->has_length && len != r->content_length) return 0; /* smuggling-shaped */
        r->has_length = 1;
        r->content_length = len;
    } else if (header_is(line, name_len, "transfer-encoding")) {
        r->chunked = 1;
    } else if (header_is(line, name_len, "connection")) {
        if (has_token(v, vn, "close")) r->keep_alive = 0;
        else if (has_token(v, vn, "keep-alive")) r->keep_alive = 1;
    } else if (header_is(line, name_len, "expect")) {
        r->expect_continue = has_token(v, vn, "100-continue");
    }
    return 1;
}

/* Splits the head into lines and parses them. Returns 0 if malformed. */
static int parse_head(const char *in, size_t head_len, struct request *r) {
    memset(r, 0, sizeof *r);
    size_t pos = 0;
    for (int first = 1;; first = 0) {
        const char *nl = memchr(in + pos, '\n', head_len - pos);
        size_t n = (size_t)(nl - (in + pos));
        const char *line = in + pos;
        pos += n + 1;
        if (n > 0 && line[n - 1] == '\r') n--;
        if (n == 0) return !first; /* the blank line ends the head */
        if (first ? !parse_request_line(line, n, r) : !parse_header(line, n, r)) return 0;
    }
}

static void respond(struct conn *c, const struct request *r, int status, const char *reason,
                    const char *extra_headers, const char *ctype, const char *body, size_t body_len) {
    int head_only = r->method_len == 4 && memcmp(r->method, "HEAD", 4) == 0;
    const char *conn_hdr = !r->keep_alive ? "Connection: close\r\n"
                         : r->http10      ? "Connection: keep-alive\r\n"
                                          : "";
    conn_printf(c, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                status, reason, ctype, body_len, conn_hdr, extra_headers);
    if (!head_only) conn_write(c, body, body_len);
}

static int method_is(const struct request *r, const char *m) {
    return r->method_len == strlen(m) && memcmp(r->method, m, r->method_len) == 0;
}

static int path_is(const struct request *r, const char *p) {
    return r->path_len == strlen(p) && memcmp(r->path, p, r->path_len) == 0;
}

static void respond_text(struct conn *c, const struct request *r, int status, const char *reason,
                         const char *extra_headers, const char *text) {
    respond(c, r, status, reason, extra_headers, "text/plain", text, strlen(text));
}

static void respond_counter(struct conn *c, const struct request *r) {
    char body[32];
    int n = snprintf(body, sizeof body, "%" PRIu64 "\n", counter);
    respond(c, r, 200, "OK", "", "text/plain", body, (size_t)n);
}

/* HEAD is answered wherever GET is: a 405 to HEAD would carry a body the client does not
 * expect and desynchronise the connection. */
static void route(struct conn *c, const struct request *r) {
    int get = method_is(r, "GET") || method_is(r, "HEAD");
    if (path_is(r, "/")) {
        if (get) respond(c, r, 200, "OK", "", "text/html; charset=utf-8", index_html, sizeof index_html - 1);
        else respond_text(c, r, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "method not allowed\n");
    } else if (path_is(r, "/counter")) {
        if (method_is(r, "POST")) counter++;
        if (get || method_is(r, "POST")) respond_counter(c, r);
        else respond_text(c, r, 405, "Method Not Allowed", "Allow: GET, HEAD, POST\r\n", "method not allowed\n");
    } else {
        respond_text(c, r, 404, "Not Found", "", "not found\n");
    }
}

static long http_parse(struct conn *c, char *in, size_t len) {
    /* Clients may put a stray CRLF after a body; RFC 9112 says to skip it. */
    if (in[0] == '\n') return 1;
    if (in[0] == '\r') return len < 2 ? 0 : in[1] == '\n' ? 2 : -1;
    size_t head_len = head_length(in, len);
    if (head_len == 0) return 0;
    struct request r;
    if (!parse_head(in, head_len, &r)) {
        r.keep_alive = 0; /* we cannot know where the next request would start */
        r.method = "GET";
        r.method_len = 3;
        respond_text(c, &r, 400, "Bad Request", "", "bad request\n");
        c->closing = 1;
        return (long)head_len;
    }
    if (r.chunked) {
        /* Without Content-Length we cannot find the body's end, so answer and hang up. */
        r.keep_alive = 0;
        respond_text(c, &r, 501, "Not Implemented", "", "transfer-encoding not supported\n");
        c->closing = 1;
        return (long)head_len;
    }
    /* curl holds back large bodies until it sees this; answering with the final status instead
     * would leave it free not to send the body we are about to wait for and discard. */
    if (r.expect_continue && r.content_length > 0 && !r.http10)
        conn_printf(c, "HTTP/1.1 100 Continue\r\n\r\n");
    route(c, &r);
    c->discard = r.content_length;
    if (!r.keep_alive) c->closing = 1;
    return (long)head_len;
}

int main(void) {
    static const struct conn_ops ops = {.name = "http", .parse = http_parse, .max_input = HTTP_MAX_HEAD};
    return conn_serve(&ops);
}
