// The admin HTTP port of a service (nng's HTTP server): /healthz, /readyz, /metrics and routes
// of the service's own. Route handlers run on the loop thread and may answer later.
#ifndef RB_HTTP_H
#define RB_HTTP_H
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct rb_http rb_http;
typedef struct rb_http_req rb_http_req;

// Handles one request on the loop thread; must call rb_http_reply exactly once (now or later).
typedef void (*rb_http_fn)(rb_http_req *req, void *arg);

// Creates a server for addr "host:port" on loop. /healthz (200 while the loop runs), /readyz
// (200 once rb_http_set_ready(true), else 503) and /metrics (rb_metrics_render) are built in.
// On success *out is the caller's (rb_http_free).
int rb_http_new(uv_loop_t *loop, const char *addr, rb_http **out);
// Adds a route for method ("GET", "POST") and exact path; before rb_http_start.
int rb_http_route(rb_http *http, const char *method, const char *path, rb_http_fn fn, void *arg);
int rb_http_start(rb_http *http);
void rb_http_set_ready(rb_http *http, bool ready);

// Request accessors, valid until rb_http_reply. Header lookup is case-insensitive; NULL if
// absent. rb_http_query_param copies the URL-decoded value of name into out (0, or RB_ENOTFOUND).
const char *rb_http_method(const rb_http_req *req);
const char *rb_http_path(const rb_http_req *req);
const char *rb_http_header(const rb_http_req *req, const char *name);
int rb_http_query_param(const rb_http_req *req, const char *name, char *out, size_t n);
const void *rb_http_body(const rb_http_req *req, size_t *len);

// Answers and frees req. body is copied; ctype NULL means "text/plain; charset=utf-8".
void rb_http_reply(rb_http_req *req, int status, const char *ctype, const char *body, size_t len);
// As rb_http_reply with an extra header (e.g. "Content-Disposition").
void rb_http_reply_hdr(rb_http_req *req, int status, const char *ctype, const char *hname,
                       const char *hvalue, const char *body, size_t len);

// As rb_http_reply with nhdrs extra headers names[i]: values[i]. A name or value holding a line
// break is refused (the client then sees the connection closed, never a forged header).
void rb_http_reply_hdrs(rb_http_req *req, int status, const char *ctype, const char *const *names,
                        const char *const *values, size_t nhdrs, const char *body, size_t len);

// Stops the server; pending requests get 503. NULL is fine. Run the loop afterwards. A request
// a route still holds stays a valid handle: rb_http_reply on it then only frees it.
void rb_http_free(rb_http *http);

#endif
