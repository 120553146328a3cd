// Admin HTTP port on nng's HTTP server: requests are handed to the loop, answered from it.
#include "rb_http.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_metrics.h"

#define HTTP_BODY_MAX (64 * 1024)
// How long a server being freed keeps its connections, so the 503s it just gave are written.
#define HTTP_GRACE_MS 50
#define CTYPE_TEXT    "text/plain; charset=utf-8"
#define CTYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"

typedef struct http_core http_core;
typedef struct route route;

// What nng's threads share with the loop. It outlives the rb_http: nng may still hold a
// handler (and so a route and this core) while a callback finishes after the server stopped,
// so it is reference counted: one for the rb_http, one per registered handler.
struct http_core {
	pthread_mutex_t lock;
	int refs;
	bool closing;        // requests are answered 503 on nng's thread from now on
	uv_async_t *async;   // wakes the loop; not touched once closing is set
	rb_http_req *q_head; // requests waiting for the loop
	rb_http_req *q_tail;
};

struct route {
	route *next; // rb_http's list (loop thread)
	http_core *core;
	nng_http_handler *handler;
	rb_http_fn fn;
	void *arg;
};

struct rb_http_req {
	rb_http_req *qnext;       // the core's queue, then the loop's batch
	rb_http_req *prev, *next; // rb_http's pending list
	rb_http *http;            // NULL once the server was freed under it
	route *route;
	nng_aio *aio;       // NULL once answered
	nng_http_req *hreq; // nng's request: intact until the aio finishes
	char method[16];
	char *path;
	char *query; // raw, without '?'; NULL when absent
	char *body;  // NUL-terminated copy
	size_t body_len;
};

struct rb_http {
	uv_loop_t *loop;
	http_core *core;
	uv_async_t async;
	bool async_init;
	uv_timer_t grace;
	int open_handles; // libuv handles still to be closed before the memory goes
	nng_http_server *server;
	char addr[128];
	bool started;
	bool ready;
	bool closing;
	route *routes;
	rb_http_req *pending; // handed to routes, not answered yet
	rb_http_req *batch;
};

static void core_release(http_core *core)
{
	int left;

	pthread_mutex_lock(&core->lock);
	left = --core->refs;
	pthread_mutex_unlock(&core->lock);
	if (left == 0) {
		pthread_mutex_destroy(&core->lock);
		free(core);
	}
}

static void core_hold(http_core *core)
{
	pthread_mutex_lock(&core->lock);
	core->refs++;
	pthread_mutex_unlock(&core->lock);
}

static int http_err(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case NNG_ENOMEM:
		return RB_ENOMEM;
	case NNG_EADDRINUSE:
		return RB_EBUSY;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
		return RB_EINVAL;
	default:
		return rb_err_from_nng(rv);
	}
}

// Completes nng's handler aio with a response. Any thread; the aio must be pending.
// A header line must not carry a line break: that would let a value start a header of its own.
static bool header_ok(const char *name, const char *value)
{
	return name != NULL && value != NULL && name[0] != '\0' && strpbrk(name, "\r\n:") == NULL &&
	       strpbrk(value, "\r\n") == NULL;
}

static void finish(nng_aio *aio, int status, const char *ctype, const char *const *names,
                   const char *const *values, size_t nhdrs, const char *body, size_t len)
{
	nng_http_res *res;
	int rv;

	if ((rv = nng_http_res_alloc(&res)) != 0) {
		nng_aio_finish(aio, rv);
		return;
	}
	if (status < 100 || status > 599)
		status = 500;
	if ((rv = nng_http_res_set_status(res, (uint16_t)status)) != 0 ||
	    (rv = nng_http_res_set_header(res, "Content-Type",
	                                  ctype != NULL ? ctype : CTYPE_TEXT)) != 0)
		goto fail;
	for (size_t i = 0; i < nhdrs; i++) {
		if (!header_ok(names[i], values[i])) {
			rv = NNG_EINVAL;
			goto fail;
		}
		if ((rv = nng_http_res_set_header(res, names[i], values[i])) != 0)
			goto fail;
	}
	if ((rv = nng_http_res_copy_data(res, body != NULL ? body : "", body != NULL ? len : 0)) !=
	    0)
		goto fail;
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
	return;
fail:
	nng_http_res_free(res);
	// The server closes the connection on an error result: the client sees a reset rather
	// than a half-built answer.
	nng_aio_finish(aio, rv);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

// URL-decodes n bytes of src into out (which holds at least n + 1). '+' is a space only in
// query strings. A malformed escape is kept as it is.
static size_t url_decode(const char *src, size_t n, bool plus_space, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (src[i] == '%' && i + 2 < n && hexval(src[i + 1]) >= 0 &&
		    hexval(src[i + 2]) >= 0) {
			out[o++] = (char)(hexval(src[i + 1]) * 16 + hexval(src[i + 2]));
			i += 2;
		} else if (plus_space && src[i] == '+') {
			out[o++] = ' ';
		} else {
			out[o++] = src[i];
		}
	}
	out[o] = '\0';
	return o;
}

static void req_free(rb_http_req *req)
{
	free(req->path);
	free(req->query);
	free(req->body);
	free(req);
}

// Copies what a route needs out of nng's request (nng thread). NULL when out of memory.
static rb_http_req *req_build(nng_http_req *hreq, nng_aio *aio, route *rt)
{
	rb_http_req *req = calloc(1, sizeof(*req));
	const char *method = nng_http_req_get_method(hreq);
	const char *uri = nng_http_req_get_uri(hreq);
	const char *q;
	size_t plen;
	void *data = NULL;
	size_t len = 0;

	if (req == NULL)
		return NULL;
	req->aio = aio;
	req->hreq = hreq;
	req->route = rt;
	snprintf(req->method, sizeof(req->method), "%s", method != NULL ? method : "");
	if (uri == NULL)
		uri = "/";
	// An absolute URI ("http://host/path") names the same path as its path part.
	if (strncasecmp(uri, "http://", 7) == 0 || strncasecmp(uri, "https://", 8) == 0) {
		const char *slash = strchr(strstr(uri, "://") + 3, '/');

		uri = slash != NULL ? slash : "/";
	}
	q = strchr(uri, '?');
	plen = q != NULL ? (size_t)(q - uri) : strlen(uri);
	req->path = malloc(plen + 1);
	if (req->path == NULL)
		goto fail;
	url_decode(uri, plen, false, req->path);
	if (q != NULL && (req->query = strdup(q + 1)) == NULL)
		goto fail;
	nng_http_req_get_data(hreq, &data, &len);
	req->body = malloc(len + 1);
	if (req->body == NULL)
		goto fail;
	if (len > 0)
		memcpy(req->body, data, len);
	req->body[len] = '\0';
	req->body_len = len;
	return req;
fail:
	req_free(req);
	return NULL;
}

// nng's handler, on an nng thread: package the request and hand it to the loop.
static void nng_handler(nng_aio *aio)
{
	nng_http_req *hreq = nng_aio_get_input(aio, 0);
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	route *rt = nng_http_handler_get_data(h);
	http_core *core = rt->core;
	rb_http_req *req = req_build(hreq, aio, rt);
	static const char busy[] = "shutting down\n";
	static const char oom[] = "out of memory\n";

	if (req == NULL) {
		finish(aio, 500, NULL, NULL, NULL, 0, oom, sizeof(oom) - 1);
		return;
	}
	pthread_mutex_lock(&core->lock);
	if (core->closing) {
		pthread_mutex_unlock(&core->lock);
		req_free(req);
		finish(aio, 503, NULL, NULL, NULL, 0, busy, sizeof(busy) - 1);
		return;
	}
	req->qnext = NULL;
	if (core->q_tail != NULL)
		core->q_tail->qnext = req;
	else
		core->q_head = req;
	core->q_tail = req;
	uv_async_send(core->async);
	pthread_mutex_unlock(&core->lock);
}

static void route_dtor(void *arg)
{
	route *rt = arg;
	http_core *core = rt->core;

	free(rt);
	core_release(core);
}

static void pending_add(rb_http *http, rb_http_req *req)
{
	req->prev = NULL;
	req->next = http->pending;
	if (http->pending != NULL)
		http->pending->prev = req;
	http->pending = req;
	req->http = http;
}

static void pending_del(rb_http *http, rb_http_req *req)
{
	if (req->prev != NULL)
		req->prev->next = req->next;
	else
		http->pending = req->next;
	if (req->next != NULL)
		req->next->prev = req->prev;
	req->prev = req->next = NULL;
}

static void take_queue(rb_http *http)
{
	rb_http_req *head;

	pthread_mutex_lock(&http->core->lock);
	head = http->core->q_head;
	http->core->q_head = http->core->q_tail = NULL;
	pthread_mutex_unlock(&http->core->lock);
	if (head == NULL)
		return;
	if (http->batch == NULL) {
		http->batch = head;
	} else {
		rb_http_req *last = http->batch;

		while (last->qnext != NULL)
			last = last->qnext;
		last->qnext = head;
	}
}

static void async_cb(uv_async_t *handle)
{
	rb_http *http = handle->data;

	take_queue(http);
	while (!http->closing && http->batch != NULL) {
		rb_http_req *req = http->batch;

		http->batch = req->qnext;
		req->qnext = NULL;
		pending_add(http, req);
		req->route->fn(req, req->route->arg);
	}
}

static void healthz(rb_http_req *req, void *arg)
{
	(void)arg;
	rb_http_reply(req, 200, NULL, "ok", 2);
}

static void readyz(rb_http_req *req, void *arg)
{
	rb_http *http = arg;

	if (http->ready)
		rb_http_reply(req, 200, NULL, "ready", 5);
	else
		rb_http_reply(req, 503, NULL, "not ready", 9);
}

static void metrics(rb_http_req *req, void *arg)
{
	char *text = NULL;
	size_t len = 0;

	(void)arg;
	if (rb_metrics_render(&text, &len) != 0) {
		rb_http_reply(req, 500, NULL, "out of memory", 13);
		return;
	}
	rb_http_reply(req, 200, CTYPE_METRICS, text, len);
	free(text);
}

int rb_http_route(rb_http *http, const char *method, const char *path, rb_http_fn fn, void *arg)
{
	nng_http_handler *h;
	route *rt;
	int rv;

	if (http == NULL || method == NULL || path == NULL || path[0] != '/' || fn == NULL)
		return RB_EINVAL;
	if (http->started || http->closing)
		return RB_ESTATE;
	rt = calloc(1, sizeof(*rt));
	if (rt == NULL)
		return RB_ENOMEM;
	rt->core = http->core;
	rt->fn = fn;
	rt->arg = arg;
	if ((rv = nng_http_handler_alloc(&h, path, nng_handler)) != 0) {
		free(rt);
		return http_err(rv);
	}
	if ((rv = nng_http_handler_set_method(h, method)) != 0 ||
	    (rv = nng_http_handler_collect_body(h, true, HTTP_BODY_MAX)) != 0) {
		nng_http_handler_free(h);
		free(rt);
		return http_err(rv);
	}
	core_hold(http->core);
	if ((rv = nng_http_handler_set_data(h, rt, route_dtor)) != 0) {
		core_release(http->core);
		nng_http_handler_free(h);
		free(rt);
		return http_err(rv);
	}
	rt->handler = h;
	if ((rv = nng_http_server_add_handler(http->server, h)) != 0) {
		rb_error("http %s: cannot add route %s %s: %s", http->addr, method, path,
		         nng_strerror(rv));
		nng_http_handler_free(h); // frees rt through route_dtor
		return http_err(rv);
	}
	rt->next = http->routes;
	http->routes = rt;
	return 0;
}

static void http_close_cb(uv_handle_t *handle)
{
	rb_http *http = handle->data;

	if (--http->open_handles == 0)
		free(http);
}

int rb_http_new(uv_loop_t *loop, const char *addr, rb_http **out)
{
	rb_http *http;
	char url[160];
	nng_url *u = NULL;
	int rv;

	if (out != NULL)
		*out = NULL;
	if (loop == NULL || addr == NULL || addr[0] == '\0' || out == NULL ||
	    strlen(addr) >= sizeof(http->addr))
		return RB_EINVAL;
	http = calloc(1, sizeof(*http));
	if (http == NULL)
		return RB_ENOMEM;
	http->loop = loop;
	snprintf(http->addr, sizeof(http->addr), "%s", addr);
	http->core = calloc(1, sizeof(*http->core));
	if (http->core == NULL) {
		free(http);
		return RB_ENOMEM;
	}
	pthread_mutex_init(&http->core->lock, NULL);
	http->core->refs = 1;
	http->core->async = &http->async;

	snprintf(url, sizeof(url), "http://%s", addr);
	if ((rv = nng_url_parse(&u, url)) != 0) {
		rb_error("http: bad address %s: %s", addr, nng_strerror(rv));
		goto fail;
	}
	rv = nng_http_server_hold(&http->server, u);
	nng_url_free(u);
	if (rv != 0) {
		rb_error("http %s: %s", addr, nng_strerror(rv));
		goto fail;
	}
	if ((rv = uv_async_init(loop, &http->async, async_cb)) != 0) {
		rb_error("http %s: uv_async_init: %s", addr, uv_strerror(rv));
		rv = NNG_ENOMEM;
		goto fail;
	}
	http->async.data = http;
	http->async_init = true;
	http->open_handles = 1;
	*out = http;
	if ((rv = rb_http_route(http, "GET", "/healthz", healthz, http)) != 0 ||
	    (rv = rb_http_route(http, "GET", "/readyz", readyz, http)) != 0 ||
	    (rv = rb_http_route(http, "GET", "/metrics", metrics, http)) != 0) {
		*out = NULL;
		rb_http_free(http);
		return rv;
	}
	return 0;

fail:
	if (http->server != NULL)
		nng_http_server_release(http->server);
	core_release(http->core);
	free(http);
	return http_err(rv);
}

int rb_http_start(rb_http *http)
{
	int rv;

	if (http == NULL)
		return RB_EINVAL;
	if (http->closing)
		return RB_ECLOSED;
	if (http->started)
		return 0;
	if ((rv = nng_http_server_start(http->server)) != 0) {
		rb_error("http %s: cannot listen: %s", http->addr, nng_strerror(rv));
		return http_err(rv);
	}
	http->started = true;
	rb_info("http listening on %s", http->addr);
	return 0;
}

void rb_http_set_ready(rb_http *http, bool ready)
{
	if (http != NULL)
		http->ready = ready;
}

const char *rb_http_method(const rb_http_req *req)
{
	return req->method;
}

const char *rb_http_path(const rb_http_req *req)
{
	return req->path;
}

const char *rb_http_header(const rb_http_req *req, const char *name)
{
	// nng offers no way to list headers, so they are read from nng's request, which nng
	// leaves alone until the answer is given (the handler's aio is still pending).
	if (req == NULL || name == NULL || req->hreq == NULL || req->aio == NULL)
		return NULL;
	return nng_http_req_get_header(req->hreq, name);
}

int rb_http_query_param(const rb_http_req *req, const char *name, char *out, size_t n)
{
	const char *p;

	if (req == NULL || name == NULL || out == NULL || n == 0)
		return RB_EINVAL;
	out[0] = '\0';
	p = req->query;
	while (p != NULL && *p != '\0') {
		const char *amp = strchr(p, '&');
		size_t plen = amp != NULL ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', plen);
		size_t klen = eq != NULL ? (size_t)(eq - p) : plen;
		char key[256];

		if (klen < sizeof(key)) {
			url_decode(p, klen, true, key);
			if (strcmp(key, name) == 0) {
				const char *v = eq != NULL ? eq + 1 : p + plen;
				size_t vlen = (size_t)(p + plen - v);
				char *tmp = malloc(vlen + 1);
				size_t dlen;

				if (tmp == NULL)
					return RB_ENOMEM;
				dlen = url_decode(v, vlen, true, tmp);
				if (dlen >= n) {
					free(tmp);
					return RB_ETOOBIG;
				}
				memcpy(out, tmp, dlen + 1);
				free(tmp);
				return 0;
			}
		}
		p = amp != NULL ? amp + 1 : NULL;
	}
	return RB_ENOTFOUND;
}

const void *rb_http_body(const rb_http_req *req, size_t *len)
{
	if (len != NULL)
		*len = req != NULL ? req->body_len : 0;
	return req != NULL ? req->body : NULL;
}

void rb_http_reply_hdrs(rb_http_req *req, int status, const char *ctype, const char *const *names,
                        const char *const *values, size_t nhdrs, const char *body, size_t len)
{
	if (req == NULL)
		return;
	if (req->aio != NULL)
		finish(req->aio, status, ctype, names, values, nhdrs, body, len);
	if (req->http != NULL)
		pending_del(req->http, req);
	req_free(req);
}

void rb_http_reply_hdr(rb_http_req *req, int status, const char *ctype, const char *hname,
                       const char *hvalue, const char *body, size_t len)
{
	rb_http_reply_hdrs(req, status, ctype, &hname, &hvalue, hname != NULL && hvalue != NULL,
	                   body, len);
}

void rb_http_reply(rb_http_req *req, int status, const char *ctype, const char *body, size_t len)
{
	rb_http_reply_hdrs(req, status, ctype, NULL, NULL, 0, body, len);
}

// Stops nng's server and lets go of everything: the last step of rb_http_free.
static void http_shutdown(rb_http *http)
{
	if (http->started)
		nng_http_server_stop(http->server);
	for (route *rt = http->routes, *next; rt != NULL; rt = next) {
		next = rt->next;
		if (nng_http_server_del_handler(http->server, rt->handler) == 0)
			nng_http_handler_free(rt->handler); // may free rt
	}
	http->routes = NULL;
	nng_http_server_release(http->server);
	http->server = NULL;
	core_release(http->core);
	http->core = NULL;
	if (http->async_init)
		uv_close((uv_handle_t *)&http->async, http_close_cb);
	else
		free(http);
}

static void grace_done(uv_timer_t *timer)
{
	rb_http *http = timer->data;

	uv_close((uv_handle_t *)timer, http_close_cb);
	http_shutdown(http);
}

void rb_http_free(rb_http *http)
{
	static const char busy[] = "shutting down\n";
	rb_http_req *req;
	bool answered = false;

	if (http == NULL || http->closing)
		return;
	http->closing = true;

	pthread_mutex_lock(&http->core->lock);
	http->core->closing = true;
	pthread_mutex_unlock(&http->core->lock);
	take_queue(http);

	// Every request must be finished before the server stops: nng waits for each handler's
	// aio while it tears a connection down, on a thread other sockets need too.
	while ((req = http->batch) != NULL) {
		http->batch = req->qnext;
		finish(req->aio, 503, NULL, NULL, NULL, 0, busy, sizeof(busy) - 1);
		req_free(req);
		answered = true;
	}
	// Requests a route still holds stay valid handles: answering one later only frees it.
	while ((req = http->pending) != NULL) {
		pending_del(http, req);
		finish(req->aio, 503, NULL, NULL, NULL, 0, busy, sizeof(busy) - 1);
		req->aio = NULL;
		req->hreq = NULL;
		req->http = NULL;
		answered = true;
	}

	if (answered && http->async_init && uv_timer_init(http->loop, &http->grace) == 0) {
		http->grace.data = http;
		http->open_handles++;
		uv_timer_start(&http->grace, grace_done, HTTP_GRACE_MS, 0);
		return;
	}
	http_shutdown(http);
}
