// Tests for the admin HTTP port: built-in routes, deferred answers, bodies, shutdown, all over
// real TCP with a plain blocking client on a helper thread.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>

#include "rb_err.h"
#include "rb_http.h"
#include "rb_metrics.h"

static int free_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port;

	assert_true(fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

// One HTTP exchange, run on a helper thread so the test thread can run the loop.
typedef struct {
	int port;
	char request[128 * 1024];
	size_t request_len;
	// results
	int status; // 0: no answer (connection failed or closed early)
	char head[4096];
	char body[8192];
	size_t body_len;
	// hand-off back to the loop
	uv_async_t done;
	int *finished;
	pthread_t thread;
} exchange;

static void *client_main(void *arg)
{
	exchange *x = arg;
	struct sockaddr_in sa;
	struct timeval tv = {.tv_sec = 5};
	char *resp = malloc(256 * 1024);
	size_t got = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char *sep;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)x->port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		goto out;
	for (size_t off = 0; off < x->request_len;) {
		ssize_t n = send(fd, x->request + off, x->request_len - off, MSG_NOSIGNAL);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	for (;;) {
		ssize_t n = recv(fd, resp + got, 256 * 1024 - 1 - got, 0);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	resp[got] = '\0';
	if (sscanf(resp, "HTTP/1.1 %d", &x->status) != 1)
		x->status = 0;
	sep = strstr(resp, "\r\n\r\n");
	if (sep != NULL) {
		size_t hl = (size_t)(sep - resp);

		if (hl >= sizeof(x->head))
			hl = sizeof(x->head) - 1;
		memcpy(x->head, resp, hl);
		x->head[hl] = '\0';
		x->body_len = got - (size_t)(sep + 4 - resp);
		if (x->body_len >= sizeof(x->body))
			x->body_len = sizeof(x->body) - 1;
		memcpy(x->body, sep + 4, x->body_len);
		x->body[x->body_len] = '\0';
	}
out:
	close(fd);
	free(resp);
	uv_async_send(&x->done);
	return NULL;
}

static void exchange_done(uv_async_t *a)
{
	exchange *x = a->data;

	(*x->finished)++;
	uv_close((uv_handle_t *)a, NULL);
}

static exchange *start_request(uv_loop_t *loop, int port, int *finished, const char *method,
                               const char *target, const char *extra_headers, const char *body,
                               size_t body_len)
{
	exchange *x = calloc(1, sizeof(*x));
	int n;

	x->port = port;
	x->finished = finished;
	n = snprintf(x->request, sizeof(x->request),
	             "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
	             "Content-Length: %zu\r\n\r\n",
	             method, target, extra_headers != NULL ? extra_headers : "", body_len);
	assert_true(n > 0 && (size_t)n + body_len < sizeof(x->request));
	if (body_len > 0)
		memcpy(x->request + n, body, body_len);
	x->request_len = (size_t)n + body_len;
	uv_async_init(loop, &x->done, exchange_done);
	x->done.data = x;
	assert_int_equal(pthread_create(&x->thread, NULL, client_main, x), 0);
	return x;
}

static void tick(uv_timer_t *t)
{
	(void)t;
}

static bool run_until(uv_loop_t *loop, const int *counter, int target, int ms)
{
	uv_timer_t t;
	uint64_t end;

	uv_update_time(loop);
	end = uv_now(loop) + (uint64_t)ms;
	uv_timer_init(loop, &t);
	uv_timer_start(&t, tick, 5, 5);
	while (*counter < target && uv_now(loop) < end)
		uv_run(loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	return *counter >= target;
}

// Runs one request to completion and returns it (the caller frees it).
static exchange *do_request(uv_loop_t *loop, int port, const char *method, const char *target,
                            const char *headers, const char *body, size_t body_len)
{
	int finished = 0;
	exchange *x = start_request(loop, port, &finished, method, target, headers, body, body_len);

	assert_true(run_until(loop, &finished, 1, 8000));
	pthread_join(x->thread, NULL);
	return x;
}

typedef struct {
	uv_loop_t loop;
	int port;
	rb_http *http;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	char addr[64];

	uv_loop_init(&f->loop);
	f->port = free_port();
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->port);
	assert_int_equal(rb_http_new(&f->loop, addr, &f->http), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;

	rb_http_free(f->http);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	rb_metrics_fini();
	free(f);
	return 0;
}

static void test_builtin_routes(void **state)
{
	fixture *f = *state;
	rb_metric *m;
	exchange *x;

	m = rb_metrics_counter("ringbid_test_requests_total", NULL, "Requests seen by the test.");
	rb_metric_add(m, 7);
	assert_int_equal(rb_http_start(f->http), 0);

	x = do_request(&f->loop, f->port, "GET", "/healthz", NULL, NULL, 0);
	assert_int_equal(x->status, 200);
	assert_string_equal(x->body, "ok");
	free(x);

	x = do_request(&f->loop, f->port, "GET", "/readyz", NULL, NULL, 0);
	assert_int_equal(x->status, 503);
	assert_string_equal(x->body, "not ready");
	free(x);
	rb_http_set_ready(f->http, true);
	x = do_request(&f->loop, f->port, "GET", "/readyz", NULL, NULL, 0);
	assert_int_equal(x->status, 200);
	assert_string_equal(x->body, "ready");
	free(x);

	x = do_request(&f->loop, f->port, "GET", "/metrics", NULL, NULL, 0);
	assert_int_equal(x->status, 200);
	assert_non_null(
	        strcasestr(x->head, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
	assert_string_equal(x->body,
	                    "# HELP ringbid_test_requests_total Requests seen by the test.\n"
	                    "# TYPE ringbid_test_requests_total counter\n"
	                    "ringbid_test_requests_total 7\n");
	free(x);

	x = do_request(&f->loop, f->port, "GET", "/nothing-here", NULL, NULL, 0);
	assert_int_equal(x->status, 404);
	free(x);
	x = do_request(&f->loop, f->port, "POST", "/healthz", NULL, "x", 1);
	assert_int_equal(x->status, 405);
	free(x);
}

typedef struct {
	rb_http_req *held;
	int seen;
	char path[64];
	char who[64];
	char n[16];
	int missing;
	char token[64];
	bool no_header;
} route_state;

static void answer_later(uv_timer_t *t)
{
	route_state *rs = t->data;
	char body[160];
	int n = snprintf(body, sizeof(body), "hello %s (%s)", rs->who, rs->n);

	const char *names[] = {"X-Ringbid", "X-Second"};
	const char *values[] = {"yes", "two"};

	rb_http_reply_hdrs(rs->held, 202, "application/json", names, values, 2, body, (size_t)n);
	rs->held = NULL;
	uv_close((uv_handle_t *)t, NULL);
}

static void deferred_route(rb_http_req *req, void *arg)
{
	route_state *rs = arg;
	const char *tok = rb_http_header(req, "x-token"); // any case
	char small[3];

	rs->seen++;
	snprintf(rs->path, sizeof(rs->path), "%s", rb_http_path(req));
	assert_string_equal(rb_http_method(req), "GET");
	assert_int_equal(rb_http_query_param(req, "who", rs->who, sizeof(rs->who)), 0);
	assert_int_equal(rb_http_query_param(req, "n", rs->n, sizeof(rs->n)), 0);
	rs->missing = rb_http_query_param(req, "absent", small, sizeof(small));
	assert_int_equal(rb_http_query_param(req, "who", small, sizeof(small)), RB_ETOOBIG);
	snprintf(rs->token, sizeof(rs->token), "%s", tok != NULL ? tok : "");
	rs->no_header = rb_http_header(req, "X-Absent") == NULL;
	rs->held = req;
}

static void test_deferred_route(void **state)
{
	fixture *f = *state;
	route_state rs = {0};
	uv_timer_t t;
	int finished = 0;
	exchange *x;

	assert_int_equal(rb_http_route(f->http, "GET", "/api/hello", deferred_route, &rs), 0);
	assert_int_equal(rb_http_start(f->http), 0);
	// Routes are fixed once the server runs.
	assert_int_equal(rb_http_route(f->http, "GET", "/late", deferred_route, &rs), RB_ESTATE);

	x = start_request(&f->loop, f->port, &finished, "GET",
	                  "/api/hello?who=Ana%20Mar%C3%ADa&n=1+2&flag", "X-Token: s3cret\r\n", NULL,
	                  0);
	assert_true(run_until(&f->loop, &rs.seen, 1, 5000));
	assert_string_equal(rs.path, "/api/hello");
	assert_string_equal(rs.who, "Ana Mar\xc3\xad"
	                            "a");
	assert_string_equal(rs.n, "1 2");
	assert_int_equal(rs.missing, RB_ENOTFOUND);
	assert_string_equal(rs.token, "s3cret");
	assert_true(rs.no_header);

	// The loop keeps running while the answer is pending; it comes from a timer.
	uv_timer_init(&f->loop, &t);
	t.data = &rs;
	uv_timer_start(&t, answer_later, 150, 0);
	assert_true(run_until(&f->loop, &finished, 1, 5000));
	pthread_join(x->thread, NULL);
	assert_int_equal(x->status, 202);
	assert_string_equal(x->body, "hello Ana Mar\xc3\xad"
	                             "a (1 2)");
	assert_non_null(strcasestr(x->head, "Content-Type: application/json"));
	assert_non_null(strcasestr(x->head, "X-Ringbid: yes"));
	assert_non_null(strcasestr(x->head, "X-Second: two"));
	free(x);
}

static void echo_route(rb_http_req *req, void *arg)
{
	size_t len;
	const void *body = rb_http_body(req, &len);

	(*(int *)arg)++;
	assert_string_equal(rb_http_method(req), "POST");
	rb_http_reply(req, 200, NULL, body, len);
}

static void test_post_body_and_limit(void **state)
{
	fixture *f = *state;
	int calls = 0;
	char *big = malloc(70 * 1024);
	exchange *x;

	assert_int_equal(rb_http_route(f->http, "POST", "/echo", echo_route, &calls), 0);
	assert_int_equal(rb_http_start(f->http), 0);
	x = do_request(&f->loop, f->port, "POST", "/echo", "Content-Type: text/plain\r\n",
	               "payroll please", 14);
	assert_int_equal(x->status, 200);
	assert_string_equal(x->body, "payroll please");
	assert_non_null(strcasestr(x->head, "Content-Type: text/plain; charset=utf-8"));
	free(x);

	// Over 64 KiB: refused by the server before the route sees it.
	memset(big, 'b', 70 * 1024);
	x = do_request(&f->loop, f->port, "POST", "/echo", NULL, big, 70 * 1024);
	assert_true(x->status == 400 || x->status == 413);
	free(x);
	assert_int_equal(calls, 1);
	free(big);
}

static void hold_route(rb_http_req *req, void *arg)
{
	route_state *rs = arg;

	rs->seen++;
	rs->held = req;
}

static void test_free_with_pending(void **state)
{
	fixture *f = *state;
	route_state rs = {0};
	int finished = 0;
	exchange *x;

	assert_int_equal(rb_http_route(f->http, "GET", "/slow", hold_route, &rs), 0);
	assert_int_equal(rb_http_start(f->http), 0);
	x = start_request(&f->loop, f->port, &finished, "GET", "/slow", NULL, NULL, 0);
	assert_true(run_until(&f->loop, &rs.seen, 1, 5000));

	// Shutting down answers what is pending; the route's handle stays safe to answer.
	rb_http_free(f->http);
	f->http = NULL;
	assert_true(run_until(&f->loop, &finished, 1, 5000));
	pthread_join(x->thread, NULL);
	assert_int_equal(x->status, 503);
	free(x);
	rb_http_reply(rs.held, 200, NULL, "too late", 8);
}

static void test_port_busy(void **state)
{
	fixture *f = *state;
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	rb_http *h2 = NULL;
	char addr[64];
	int port = free_port();

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 4), 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	assert_int_equal(rb_http_new(&f->loop, addr, &h2), 0);
	assert_int_equal(rb_http_start(h2), RB_EBUSY);
	rb_http_free(h2);
	close(fd);

	assert_int_equal(rb_http_new(&f->loop, "", &h2), RB_EINVAL);
	assert_int_equal(rb_http_new(&f->loop, "not a host:port:at all", &h2) != 0, 1);
	assert_int_equal(rb_http_route(f->http, "GET", "relative", hold_route, NULL), RB_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_builtin_routes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_deferred_route, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_post_body_and_limit, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_port_busy, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
