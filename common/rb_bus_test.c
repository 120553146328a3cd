// Tests for the nng bus on a real libuv loop over real TCP sockets on 127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "rb_bus.h"

#include <nng/protocol/pair1/pair.h>
#include "rb_err.h"

// A port nothing listens on right now (the kernel's pick, released again).
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

static void make_url(char *out, size_t n)
{
	snprintf(out, n, "tcp://127.0.0.1:%d", free_port());
}

static void tick(uv_timer_t *t)
{
	(void)t;
}

// Runs the loop until *counter reaches target or ms pass. Returns whether it was reached.
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

// Runs the loop for ms whatever happens.
static void run_for(uv_loop_t *loop, int ms)
{
	int never = 0;

	run_until(loop, &never, 1, ms);
}

static nng_msg *text_msg(const char *s)
{
	nng_msg *m;

	assert_int_equal(nng_msg_alloc(&m, 0), 0);
	assert_int_equal(nng_msg_append(m, s, strlen(s)), 0);
	return m;
}

typedef struct {
	int recvs;
	char last[256];
	nng_pipe last_pipe;
	int adds;
	int removes;
	nng_pipe added_pipe[8];
	int requests;
	rb_bus_req *held[8];
	int replies;
	int reply_err[8];
	char reply_text[8][64];
} events;

static void on_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	events *ev = arg;
	size_t n =
	        nng_msg_len(msg) < sizeof(ev->last) - 1 ? nng_msg_len(msg) : sizeof(ev->last) - 1;

	(void)bus;
	memcpy(ev->last, nng_msg_body(msg), n);
	ev->last[n] = '\0';
	ev->last_pipe = nng_msg_get_pipe(msg);
	ev->recvs++;
	nng_msg_free(msg);
}

static void on_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	events *ev = arg;

	(void)bus;
	if (added) {
		if (ev->adds < 8)
			ev->added_pipe[ev->adds] = pipe;
		ev->adds++;
	} else {
		ev->removes++;
	}
}

// Holds every request for the test to answer later.
static void on_request_hold(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	events *ev = arg;

	(void)bus;
	assert_true(nng_pipe_id(rb_bus_req_pipe(req)) > 0);
	if (ev->requests < 8)
		ev->held[ev->requests] = req;
	ev->requests++;
	nng_msg_free(msg);
}

// Answers at once with "re:" and the request.
static void on_request_echo(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	events *ev = arg;
	char buf[128];

	(void)bus;
	snprintf(buf, sizeof(buf), "re:%.*s", (int)nng_msg_len(msg), (char *)nng_msg_body(msg));
	nng_msg_free(msg);
	ev->requests++;
	rb_bus_reply(req, text_msg(buf));
}

static void on_reply(rb_bus *bus, int err, nng_msg *reply, void *arg)
{
	events *ev = arg;

	(void)bus;
	if (ev->replies < 8) {
		ev->reply_err[ev->replies] = err;
		ev->reply_text[ev->replies][0] = '\0';
		if (reply != NULL)
			snprintf(ev->reply_text[ev->replies], 64, "%.*s", (int)nng_msg_len(reply),
			         (char *)nng_msg_body(reply));
	}
	ev->replies++;
	if (reply != NULL)
		nng_msg_free(reply);
}

static rb_bus_opts opts(size_t recv_max)
{
	rb_bus_opts o = {
	        .recv_max = recv_max,
	        .send_timeout_ms = 2000,
	        .reconnect_min_ms = 20,
	        .reconnect_max_ms = 100,
	        .req_resend_ms = 5000,
	        .rep_parallel = 4,
	        .name = "test",
	};
	return o;
}

typedef struct {
	uv_loop_t loop;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));

	uv_loop_init(&f->loop);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;

	// Every bus was freed by its test: the loop must come to rest with nothing open.
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
	return 0;
}

static void test_pair_both_ways(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0}, ce = {0};
	rb_bus *srv, *cli;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &srv), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	rb_bus_on_recv(srv, on_recv, &se);
	rb_bus_on_pipe(srv, on_pipe, &se);
	rb_bus_on_recv(cli, on_recv, &ce);
	rb_bus_on_pipe(cli, on_pipe, &ce);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	assert_true(run_until(&f->loop, &ce.adds, 1, 3000));
	assert_int_equal(rb_bus_peers(srv), 1);
	assert_int_equal(rb_bus_peers(cli), 1);

	assert_int_equal(rb_bus_send(cli, text_msg("hello")), 0);
	assert_true(run_until(&f->loop, &se.recvs, 1, 3000));
	assert_string_equal(se.last, "hello");
	assert_int_equal(nng_pipe_id(se.last_pipe), nng_pipe_id(se.added_pipe[0]));

	// A burst keeps its order through the send pool.
	for (int i = 0; i < 50; i++) {
		char buf[16];

		snprintf(buf, sizeof(buf), "m%d", i);
		assert_int_equal(rb_bus_send(srv, text_msg(buf)), 0);
	}
	assert_true(run_until(&f->loop, &ce.recvs, 50, 3000));
	assert_string_equal(ce.last, "m49");
	assert_int_equal(rb_bus_dropped(srv), 0);

	// A second listener on the same address is refused as busy.
	{
		rb_bus *other;

		assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &other), 0);
		assert_int_equal(rb_bus_listen(other, url), RB_EBUSY);
		rb_bus_free(other);
	}

	// Wrong kinds of use are refused and the message is still taken.
	assert_int_equal(rb_bus_request(srv, text_msg("x"), 100, on_reply, &se), RB_EINVAL);
	rb_bus_free(cli);
	assert_true(run_until(&f->loop, &se.removes, 1, 3000));
	assert_int_equal(rb_bus_peers(srv), 0);
	rb_bus_free(srv);
	rb_bus_free(NULL);
}

static void test_pipe_add_remove(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0}, e1 = {0}, e2 = {0};
	rb_bus *srv, *c1, *c2;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR_POLY, &o, &srv), 0);
	rb_bus_on_recv(srv, on_recv, &se);
	rb_bus_on_pipe(srv, on_pipe, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &c1), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &c2), 0);
	rb_bus_on_recv(c1, on_recv, &e1);
	rb_bus_on_recv(c2, on_recv, &e2);
	assert_int_equal(rb_bus_dial(c1, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	assert_int_equal(rb_bus_dial(c2, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 2, 3000));
	assert_int_equal(rb_bus_peers(srv), 2);

	// Polyamorous: a message goes to the pipe it names, and only there.
	{
		nng_msg *m = text_msg("for-second");

		nng_msg_set_pipe(m, se.added_pipe[1]);
		assert_int_equal(rb_bus_send(srv, m), 0);
	}
	assert_true(run_until(&f->loop, &e2.recvs, 1, 3000));
	run_for(&f->loop, 50);
	assert_int_equal(e1.recvs, 0);
	assert_string_equal(e2.last, "for-second");

	// Both directions identify the sender.
	assert_int_equal(rb_bus_send(c1, text_msg("from-first")), 0);
	assert_true(run_until(&f->loop, &se.recvs, 1, 3000));
	assert_int_equal(nng_pipe_id(se.last_pipe), nng_pipe_id(se.added_pipe[0]));

	rb_bus_free(c1);
	assert_true(run_until(&f->loop, &se.removes, 1, 3000));
	assert_int_equal(rb_bus_peers(srv), 1);
	rb_bus_free(c2);
	assert_true(run_until(&f->loop, &se.removes, 2, 3000));
	assert_int_equal(rb_bus_peers(srv), 0);
	rb_bus_free(srv);
}

static void test_pair_refuses_second_peer(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0};
	rb_bus *srv, *c1, *c2;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &srv), 0);
	rb_bus_on_pipe(srv, on_pipe, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &c1), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &c2), 0);
	assert_int_equal(rb_bus_dial(c1, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	assert_int_equal(rb_bus_dial(c2, url), 0);
	// The second peer is turned away by pair1 again and again; none of that is reported.
	run_for(&f->loop, 300);
	assert_int_equal(se.adds, 1);
	assert_int_equal(se.removes, 0);
	assert_int_equal(rb_bus_peers(srv), 1);
	rb_bus_free(c2);
	rb_bus_free(c1);
	assert_true(run_until(&f->loop, &se.removes, 1, 3000));
	rb_bus_free(srv);
}

typedef struct {
	events *ev;
	int idx;
	const char *text;
} later_reply;

static void reply_later(uv_timer_t *t)
{
	later_reply *lr = t->data;

	rb_bus_reply(lr->ev->held[lr->idx], text_msg(lr->text));
	uv_close((uv_handle_t *)t, NULL);
}

static void test_rep_deferred_reply(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0}, ce = {0};
	rb_bus *rep, *req;
	char url[64];
	uv_timer_t t;
	later_reply lr;
	uint64_t t0;

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REP, &o, &rep), 0);
	rb_bus_on_request(rep, on_request_hold, &se);
	assert_int_equal(rb_bus_listen(rep, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REQ, &o, &req), 0);
	assert_int_equal(rb_bus_dial(req, url), 0);

	// More requests in flight than the server receives in parallel (4): the slots must be
	// refilled as requests are held.
	for (int i = 0; i < 6; i++) {
		char buf[16];

		snprintf(buf, sizeof(buf), "q%d", i);
		assert_int_equal(rb_bus_request(req, text_msg(buf), 5000, on_reply, &ce), 0);
	}
	assert_true(run_until(&f->loop, &se.requests, 6, 3000));
	assert_int_equal(ce.replies, 0);

	// Answered out of order, the first one last, from a timer 300 ms later.
	uv_update_time(&f->loop);
	t0 = uv_now(&f->loop);
	lr = (later_reply){.ev = &se, .idx = 0, .text = "late"};
	uv_timer_init(&f->loop, &t);
	t.data = &lr;
	uv_timer_start(&t, reply_later, 300, 0);
	for (int i = 5; i >= 1; i--) {
		char buf[16];

		snprintf(buf, sizeof(buf), "a%d", i);
		rb_bus_reply(se.held[i], text_msg(buf));
	}
	assert_true(run_until(&f->loop, &ce.replies, 5, 3000));
	for (int i = 0; i < 5; i++)
		assert_int_equal(ce.reply_err[i], 0);
	assert_true(run_until(&f->loop, &ce.replies, 6, 3000));
	assert_true(uv_now(&f->loop) - t0 >= 290);
	assert_int_equal(ce.reply_err[5], 0);
	assert_string_equal(ce.reply_text[5], "late");
	assert_int_equal(se.requests, 6); // nothing was resent

	rb_bus_free(req);
	rb_bus_free(rep);
}

static void test_req_timeout(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events ce = {0}, se = {0};
	rb_bus *req, *rep;
	char url[64];
	uint64_t t0;

	// Nobody listening: the request times out.
	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REQ, &o, &req), 0);
	assert_int_equal(rb_bus_dial(req, url), 0);
	uv_update_time(&f->loop);
	t0 = uv_now(&f->loop);
	assert_int_equal(rb_bus_request(req, text_msg("anyone?"), 200, on_reply, &ce), 0);
	assert_true(run_until(&f->loop, &ce.replies, 1, 3000));
	assert_int_equal(ce.reply_err[0], RB_ETIMEDOUT);
	assert_true(uv_now(&f->loop) - t0 >= 190);

	// A server that drops the request: the client times out as well.
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REP, &o, &rep), 0);
	rb_bus_on_request(rep, on_request_hold, &se);
	assert_int_equal(rb_bus_listen(rep, url), 0);
	run_for(&f->loop, 200); // let the dialer find it
	assert_int_equal(rb_bus_request(req, text_msg("drop me"), 300, on_reply, &ce), 0);
	assert_true(run_until(&f->loop, &se.requests, 1, 3000));
	rb_bus_reply_drop(se.held[0]);
	assert_true(run_until(&f->loop, &ce.replies, 2, 3000));
	assert_int_equal(ce.reply_err[1], RB_ETIMEDOUT);

	// Bad arguments are refused without a callback.
	assert_int_equal(rb_bus_request(req, text_msg("x"), 0, on_reply, &ce), RB_EINVAL);
	assert_int_equal(rb_bus_request(req, text_msg("x"), 100, NULL, &ce), RB_EINVAL);
	assert_int_equal(rb_bus_send(req, text_msg("x")), RB_EINVAL);
	run_for(&f->loop, 20);
	assert_int_equal(ce.replies, 2);
	rb_bus_free(req);
	rb_bus_free(rep);
}

static void test_echo_many(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0}, ce = {0};
	rb_bus *rep, *req;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REP, &o, &rep), 0);
	rb_bus_on_request(rep, on_request_echo, &se);
	assert_int_equal(rb_bus_listen(rep, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REQ, &o, &req), 0);
	assert_int_equal(rb_bus_dial(req, url), 0);
	for (int round = 0; round < 20; round++) {
		int want = ce.replies + 1;

		assert_int_equal(rb_bus_request(req, text_msg("ping"), 3000, on_reply, &ce), 0);
		assert_true(run_until(&f->loop, &ce.replies, want, 3000));
	}
	assert_int_equal(ce.reply_err[7], 0);
	assert_string_equal(ce.reply_text[7], "re:ping");
	rb_bus_free(req);
	rb_bus_free(rep);
}

// Receives numbered messages "n<i>" and checks each is the next one from its peer, and that the
// peer was announced before its first message.
typedef struct {
	int recvs;
	int adds;
	int removes;
	uint32_t pipes[8];
	int next[8];
	int out_of_order;
	int unannounced;
	int free_after; // > 0: the callback frees the bus on that message
	rb_bus **self;
} burst;

static int burst_peer(burst *b, uint32_t id)
{
	for (int i = 0; i < b->adds && i < 8; i++) {
		if (b->pipes[i] == id)
			return i;
	}
	return -1;
}

static void on_burst_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	burst *b = arg;

	(void)bus;
	if (!added) {
		b->removes++;
		return;
	}
	if (b->adds < 8)
		b->pipes[b->adds] = nng_pipe_id(pipe);
	b->adds++;
}

static void on_burst_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	burst *b = arg;
	int peer = burst_peer(b, nng_pipe_id(nng_msg_get_pipe(msg)));
	char text[32];
	size_t n = nng_msg_len(msg) < sizeof(text) - 1 ? nng_msg_len(msg) : sizeof(text) - 1;

	memcpy(text, nng_msg_body(msg), n);
	text[n] = '\0';
	nng_msg_free(msg);
	b->recvs++;
	if (peer < 0) {
		b->unannounced++;
	} else {
		if (atoi(text + 1) != b->next[peer])
			b->out_of_order++;
		b->next[peer] = atoi(text + 1) + 1;
	}
	if (b->free_after > 0 && b->recvs == b->free_after) {
		rb_bus_free(bus);
		*b->self = NULL;
	}
}

static void send_numbered(rb_bus *bus, int count)
{
	for (int i = 0; i < count; i++) {
		char buf[16];

		snprintf(buf, sizeof(buf), "n%d", i);
		assert_int_equal(rb_bus_send(bus, text_msg(buf)), 0);
	}
}

// A burst far larger than one wake-up's batch arrives whole and in order, on a pair link and on
// a polyamorous socket with several peers that send as soon as they are connected.
static void test_burst_in_order(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	burst rb = {0}, pb = {0};
	events se = {0};
	rb_bus *srv, *cli, *poly, *peers[3];
	char url[64], purl[64];
	const int count = 5000;

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &srv), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	rb_bus_on_pipe(srv, on_pipe, &se);
	rb_bus_on_recv(cli, on_burst_recv, &rb);
	rb_bus_on_pipe(cli, on_burst_pipe, &rb);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	send_numbered(srv, count);
	assert_true(run_until(&f->loop, &rb.recvs, count, 20000));
	assert_int_equal(rb.out_of_order, 0);
	assert_int_equal(rb.unannounced, 0);
	assert_int_equal(rb.next[0], count);
	assert_int_equal(rb_bus_dropped(srv), 0);
	rb_bus_free(cli);
	rb_bus_free(srv);

	make_url(purl, sizeof(purl));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR_POLY, &o, &poly), 0);
	rb_bus_on_recv(poly, on_burst_recv, &pb);
	rb_bus_on_pipe(poly, on_burst_pipe, &pb);
	assert_int_equal(rb_bus_listen(poly, purl), 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &peers[i]), 0);
		assert_int_equal(rb_bus_dial(peers[i], purl), 0);
		// Queued before the link is up: sent the moment it is.
		send_numbered(peers[i], 2000);
	}
	assert_true(run_until(&f->loop, &pb.recvs, 3 * 2000, 20000));
	assert_int_equal(pb.adds, 3);
	assert_int_equal(pb.out_of_order, 0);
	assert_int_equal(pb.unannounced, 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(pb.next[i], 2000);
	// A peer's departure is announced after everything it sent.
	rb_bus_free(peers[0]);
	assert_true(run_until(&f->loop, &pb.removes, 1, 3000));
	assert_int_equal(pb.recvs, 3 * 2000);
	rb_bus_free(peers[1]);
	rb_bus_free(peers[2]);
	rb_bus_free(poly);
}

static void send_numbered_to(rb_bus *bus, nng_pipe pipe, int from, int count)
{
	for (int i = from; i < from + count; i++) {
		char buf[16];
		nng_msg *m;

		snprintf(buf, sizeof(buf), "n%d", i);
		m = text_msg(buf);
		nng_msg_set_pipe(m, pipe);
		assert_int_equal(rb_bus_send(bus, m), 0);
	}
}

// A polyamorous socket sends each message to the peer it names, in order, two at a time to
// each of three peers in one loop turn (as presence pushes an event and a status together),
// round after round; freeing it with messages still in its send buffer leaves nothing behind.
static void test_poly_sends_to_each_peer(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0};
	burst got[3] = {{0}};
	rb_bus *srv, *peers[3];
	char url[64];
	const int rounds = 300;

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR_POLY, &o, &srv), 0);
	rb_bus_on_pipe(srv, on_pipe, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &peers[i]), 0);
		rb_bus_on_recv(peers[i], on_burst_recv, &got[i]);
		rb_bus_on_pipe(peers[i], on_burst_pipe, &got[i]);
		assert_int_equal(rb_bus_dial(peers[i], url), 0);
		assert_true(run_until(&f->loop, &se.adds, i + 1, 3000));
		assert_true(run_until(&f->loop, &got[i].adds, 1, 3000));
	}
	for (int r = 0; r < rounds; r++) {
		int want = 2 * (r + 1);

		for (int i = 0; i < 3; i++)
			send_numbered_to(srv, se.added_pipe[i], 2 * r, 2);
		for (int i = 0; i < 3; i++)
			assert_true(run_until(&f->loop, &got[i].recvs, want, 3000));
	}
	for (int i = 0; i < 3; i++) {
		assert_int_equal(got[i].recvs, 2 * rounds);
		assert_int_equal(got[i].next[0], 2 * rounds);
		assert_int_equal(got[i].out_of_order, 0);
		assert_int_equal(got[i].unannounced, 0);
	}
	assert_int_equal(rb_bus_dropped(srv), 0);
	// Freed at once: what is still in nng's buffers is released with the socket.
	send_numbered_to(srv, se.added_pipe[0], 2 * rounds, 200);
	rb_bus_free(srv);
	run_for(&f->loop, 100);
	for (int i = 0; i < 3; i++)
		rb_bus_free(peers[i]);
}

// The receive callback may free its bus in the middle of a burst: nothing more is delivered and
// the messages still buffered are released.
//
// The sender runs on a loop of its own and has finished sending before the receiver's loop
// runs: nng 1.5.2's nng_close can hang for good when it closes a pair socket whose peer is
// still streaming to it (reproduced without ringbid, in one process and across two; fixed in
// later nng releases), so a test that frees a bus under a live stream would hang at random.
static void test_free_during_burst(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	burst b = {0};
	events se = {0};
	rb_bus *srv, *cli;
	uv_loop_t sloop;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(uv_loop_init(&sloop), 0);
	assert_int_equal(rb_bus_new(&sloop, RB_BUS_PAIR, &o, &srv), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	b.free_after = 10;
	b.self = &cli;
	rb_bus_on_pipe(srv, on_pipe, &se);
	rb_bus_on_recv(cli, on_burst_recv, &b);
	rb_bus_on_pipe(cli, on_burst_pipe, &b);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&sloop, &se.adds, 1, 3000));
	// The receiver hears of its peer first (nng reports a new pipe from another thread, so a
	// message sent at once may overtake the report).
	run_for(&f->loop, 200);
	// 100 messages fit the receiver's buffer: all of them leave before it reads any.
	send_numbered(srv, 100);
	run_for(&sloop, 500);
	assert_true(run_until(&f->loop, &b.recvs, 10, 5000));
	run_for(&f->loop, 100);
	assert_null(cli);
	assert_int_equal(b.recvs, 10);
	assert_int_equal(b.out_of_order, 0);
	rb_bus_free(srv);
	run_for(&sloop, 50);
	assert_int_equal(uv_loop_close(&sloop), 0);
}

static void test_recv_max(void **state)
{
	fixture *f = *state;
	rb_bus_opts small = opts(1024);
	rb_bus_opts big = opts(1024 * 1024);
	events se = {0}, ce = {0};
	rb_bus *srv, *cli;
	char url[64];
	nng_msg *huge;

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &small, &srv), 0);
	rb_bus_on_recv(srv, on_recv, &se);
	rb_bus_on_pipe(srv, on_pipe, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &big, &cli), 0);
	rb_bus_on_pipe(cli, on_pipe, &ce);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));

	assert_int_equal(nng_msg_alloc(&huge, 4096), 0);
	memset(nng_msg_body(huge), 'h', 4096);
	assert_int_equal(rb_bus_send(cli, huge), 0);
	// nng drops the connection that carried the oversized message; the client redials.
	assert_true(run_until(&f->loop, &se.removes, 1, 3000));
	assert_true(run_until(&f->loop, &se.adds, 2, 3000));
	assert_true(run_until(&f->loop, &ce.adds, 2, 3000));
	assert_int_equal(se.recvs, 0);

	assert_int_equal(rb_bus_send(cli, text_msg("small")), 0);
	assert_true(run_until(&f->loop, &se.recvs, 1, 3000));
	assert_string_equal(se.last, "small");
	rb_bus_free(cli);
	rb_bus_free(srv);
}

static void test_send_timeout_drops(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	rb_bus *b;
	char url[64];

	o.send_timeout_ms = 100;
	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &b), 0);
	assert_int_equal(rb_bus_dial(b, url), 0); // nobody there
	// More than the send pool, so some wait in the queue; their wait counts too.
	for (int i = 0; i < 20; i++)
		assert_int_equal(rb_bus_send(b, text_msg("lost")), 0);
	run_for(&f->loop, 400);
	assert_int_equal(rb_bus_dropped(b), 20);
	// Queued sends are dropped (and counted) when the bus is freed.
	assert_int_equal(rb_bus_send(b, text_msg("lost")), 0);
	rb_bus_free(b);
	assert_int_equal(rb_bus_send(NULL, text_msg("x")), RB_EINVAL);
}

typedef struct {
	int calls;
	int err;
	rb_bus *bus;
	int again;
} closed_probe;

static void on_reply_closed(rb_bus *bus, int err, nng_msg *reply, void *arg)
{
	closed_probe *p = arg;

	assert_null(reply);
	p->calls++;
	p->err = err;
	// A closing bus takes no new work, and says so without calling back.
	p->again = rb_bus_request(bus, text_msg("again"), 100, on_reply_closed, arg);
	rb_bus_free(bus); // already being freed: harmless
}

static void test_free_cancels(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0};
	closed_probe p = {0};
	rb_bus *rep, *req;
	char url[64];

	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REP, &o, &rep), 0);
	rb_bus_on_request(rep, on_request_hold, &se);
	assert_int_equal(rb_bus_listen(rep, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REQ, &o, &req), 0);
	assert_int_equal(rb_bus_dial(req, url), 0);
	assert_int_equal(rb_bus_request(req, text_msg("a"), 5000, on_reply_closed, &p), 0);
	assert_int_equal(rb_bus_request(req, text_msg("b"), 5000, on_reply_closed, &p), 0);
	assert_true(run_until(&f->loop, &se.requests, 2, 3000));

	rb_bus_free(req);
	assert_int_equal(p.calls, 2);
	assert_int_equal(p.err, RB_ECLOSED);
	assert_int_equal(p.again, RB_ECLOSED);

	// The server goes away with two requests unanswered: the handles stay safe to use.
	rb_bus_free(rep);
	rb_bus_reply(se.held[0], text_msg("too late"));
	rb_bus_reply_drop(se.held[1]);
	run_for(&f->loop, 20);
	assert_int_equal(p.calls, 2);
}

// A self-signed ECDSA P-256 certificate for "localhost" and 127.0.0.1, valid until 2126, made
// for this test only (its key protects nothing).
static const char test_cert[] = "-----BEGIN CERTIFICATE-----\n"
                                "MIIBmzCCAUGgAwIBAgIUHasd+fvo2X0FB6IwfGxjR+TPo7UwCgYIKoZIzj0EAwIw\n"
                                "FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyMzAxMDEzNFoYDzIxMjYxMDMw\n"
                                "MDEwMTM0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n"
                                "PQMBBwNCAATSD+Exw6BfRgCkNXsaUIGjxjjNt51TSjSYkZniq004BvoFyc6kPklu\n"
                                "gXoagqDScgZBK22UVBGqh2tamNcUmhGYo28wbTAdBgNVHQ4EFgQUQY1XBwMqM6lU\n"
                                "ai07H6x1NexWC/UwHwYDVR0jBBgwFoAUQY1XBwMqM6lUai07H6x1NexWC/UwDwYD\n"
                                "VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI\n"
                                "zj0EAwIDSAAwRQIgHVcKY84JvnTgnFVlq0EYafRlXmYatJZr6agCGRlX/kYCIQCg\n"
                                "OMW9bt6yxAiZXkGop6ZAy+YzyAQ2if9+3nEjHI1fJQ==\n"
                                "-----END CERTIFICATE-----\n";
static const char test_key[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrClsiuyHtu3FDmfu\n"
                               "ZX0XoBQSW0spo1IpTBsd+x3OBzmhRANCAATSD+Exw6BfRgCkNXsaUIGjxjjNt51T\n"
                               "SjSYkZniq004BvoFyc6kPklugXoagqDScgZBK22UVBGqh2tamNcUmhGY\n"
                               "-----END PRIVATE KEY-----\n";

static void test_tls(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(4096);
	events se = {0}, ce = {0}, be = {0};
	nng_tls_config *scfg, *ccfg, *bad;
	rb_bus *srv, *cli, *wrong;
	char url[64];

	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", free_port());
	assert_int_equal(nng_tls_config_alloc(&scfg, NNG_TLS_MODE_SERVER), 0);
	assert_int_equal(nng_tls_config_own_cert(scfg, test_cert, test_key, NULL), 0);
	assert_int_equal(nng_tls_config_alloc(&ccfg, NNG_TLS_MODE_CLIENT), 0);
	assert_int_equal(nng_tls_config_ca_chain(ccfg, test_cert, NULL), 0);
	assert_int_equal(nng_tls_config_server_name(ccfg, "localhost"), 0);
	assert_int_equal(nng_tls_config_auth_mode(ccfg, NNG_TLS_AUTH_MODE_REQUIRED), 0);
	assert_int_equal(nng_tls_config_alloc(&bad, NNG_TLS_MODE_CLIENT), 0);
	assert_int_equal(nng_tls_config_ca_chain(bad, test_cert, NULL), 0);
	assert_int_equal(nng_tls_config_server_name(bad, "broker.example"), 0);
	assert_int_equal(nng_tls_config_auth_mode(bad, NNG_TLS_AUTH_MODE_REQUIRED), 0);

	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR_POLY, &o, &srv), 0);
	assert_int_equal(rb_bus_set_tls(srv, scfg), 0);
	rb_bus_on_recv(srv, on_recv, &se);
	rb_bus_on_pipe(srv, on_pipe, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	assert_int_equal(rb_bus_set_tls(cli, ccfg), 0);
	rb_bus_on_pipe(cli, on_pipe, &ce);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &wrong), 0);
	assert_int_equal(rb_bus_set_tls(wrong, bad), 0);
	rb_bus_on_pipe(wrong, on_pipe, &be);
	// The buses hold their own references.
	nng_tls_config_free(scfg);
	nng_tls_config_free(ccfg);
	nng_tls_config_free(bad);

	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_int_equal(rb_bus_dial(wrong, url), 0);
	assert_true(run_until(&f->loop, &ce.adds, 1, 5000));
	assert_int_equal(rb_bus_send(cli, text_msg("secret")), 0);
	assert_true(run_until(&f->loop, &se.recvs, 1, 5000));
	assert_string_equal(se.last, "secret");
	// A client that expects another name never gets a link.
	run_for(&f->loop, 300);
	assert_int_equal(be.adds, 0);
	assert_int_equal(se.adds, 1);
	rb_bus_free(wrong);
	rb_bus_free(cli);
	rb_bus_free(srv);
}

// --- batch links ------------------------------------------------------------------------------

// Receives a batch link's traffic: numbered "n<i>" messages must come in order, and the odd
// ones (empty, or beginning with a batch's own first bytes) must come intact.
typedef struct {
	int recvs;
	int next;
	int out_of_order;
	int empties;
	int keyed; // "\xfa\x7fz" arrived intact
	int garbled;
} batch_rx;

static void on_batch_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	batch_rx *r = arg;
	const char *body = nng_msg_body(msg);
	size_t len = nng_msg_len(msg);

	(void)bus;
	r->recvs++;
	if (len == 0) {
		r->empties++;
	} else if ((uint8_t)body[0] == 0xfa) {
		if (len == 3 && (uint8_t)body[1] == 0x7f && body[2] == 'z')
			r->keyed++;
		else
			r->garbled++;
	} else if (body[0] == 'n') {
		char text[16];
		size_t n = len < sizeof(text) - 1 ? len : sizeof(text) - 1;

		memcpy(text, body, n);
		text[n] = '\0';
		if (atoi(text + 1) != r->next)
			r->out_of_order++;
		r->next = atoi(text + 1) + 1;
	} else {
		r->garbled++;
	}
	nng_msg_free(msg);
}

static nng_msg *bytes_msg(const void *b, size_t n)
{
	nng_msg *m;

	assert_int_equal(nng_msg_alloc(&m, 0), 0);
	if (n > 0)
		assert_int_equal(nng_msg_append(m, b, n), 0);
	return m;
}

// Sends count numbered messages, with an empty one and a "\xfa\x7fz" after every 1,000th.
static int send_mixed(rb_bus *bus, int count)
{
	int sent = 0;

	for (int i = 0; i < count; i++) {
		char buf[16];

		snprintf(buf, sizeof(buf), "n%d", i);
		assert_int_equal(rb_bus_send(bus, text_msg(buf)), 0);
		sent++;
		if (i % 1000 == 999) {
			assert_int_equal(rb_bus_send(bus, bytes_msg(NULL, 0)), 0);
			assert_int_equal(rb_bus_send(bus, bytes_msg("\xfa\x7fz", 3)), 0);
			sent += 2;
		}
	}
	return sent;
}

// Two batch buses: a burst sent in one turn each way arrives whole and in order, empty messages
// and messages that begin with a batch's key included.
static void test_batch_burst_in_order(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(1024 * 1024);
	batch_rx sr = {0}, cr = {0};
	events se = {0}, ce = {0};
	rb_bus *srv, *cli;
	char url[64];
	int down, up;

	o.batch = true;
	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &srv), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	rb_bus_on_pipe(srv, on_pipe, &se);
	rb_bus_on_pipe(cli, on_pipe, &ce);
	rb_bus_on_recv(srv, on_batch_recv, &sr);
	rb_bus_on_recv(cli, on_batch_recv, &cr);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	assert_true(run_until(&f->loop, &ce.adds, 1, 3000));
	down = send_mixed(srv, 20000);
	up = send_mixed(cli, 3000);
	assert_true(run_until(&f->loop, &cr.recvs, down, 20000));
	assert_true(run_until(&f->loop, &sr.recvs, up, 20000));
	run_for(&f->loop, 50);
	assert_int_equal(cr.recvs, down);
	assert_int_equal(cr.next, 20000);
	assert_int_equal(cr.out_of_order, 0);
	assert_int_equal(cr.empties, 20);
	assert_int_equal(cr.keyed, 20);
	assert_int_equal(cr.garbled, 0);
	assert_int_equal(sr.recvs, up);
	assert_int_equal(sr.next, 3000);
	assert_int_equal(sr.out_of_order, 0);
	assert_int_equal(sr.keyed, 3);
	assert_int_equal(rb_bus_dropped(srv), 0);
	assert_int_equal(rb_bus_dropped(cli), 0);
	assert_int_equal(rb_bus_malformed(srv), 0);
	assert_int_equal(rb_bus_malformed(cli), 0);
	// One message a turn still goes at once, unpacked or not.
	assert_int_equal(rb_bus_send(srv, text_msg("n20000")), 0);
	assert_true(run_until(&f->loop, &cr.recvs, down + 1, 3000));
	assert_int_equal(cr.next, 20001);
	rb_bus_free(cli);
	rb_bus_free(srv);
}

typedef struct {
	int parts;
	char text[512][8];
} collected;

static bool collect_part(const void *part, size_t len, void *arg)
{
	collected *c = arg;

	if (c->parts < 512) {
		size_t n = len < 7 ? len : 7;

		if (n > 0)
			memcpy(c->text[c->parts], part, n);
		c->text[c->parts][n] = '\0';
	}
	c->parts++;
	return true;
}

// Reads from a raw nng pair1 socket until want messages were unpacked or 3 s pass. Returns the
// number of nng messages (batches or plain messages) it took; *first_byte is the last one's.
static int raw_read(nng_socket s, collected *c, int want, int *first_byte)
{
	int frames = 0;

	assert_int_equal(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 3000), 0);
	while (c->parts < want) {
		nng_msg *m;

		if (nng_recvmsg(s, &m, 0) != 0)
			break;
		frames++;
		*first_byte = nng_msg_len(m) > 0 ? *(uint8_t *)nng_msg_body(m) : -1;
		assert_true(rb_bus_unpack(nng_msg_body(m), nng_msg_len(m), collect_part, c) > 0);
		nng_msg_free(m);
	}
	return frames;
}

// What a batch bus puts on the wire: what it was given in one turn as one protobuf Batch, its
// messages in order; a lone message as itself; a lone message that begins with a batch's key
// as a batch of one.
static void test_batch_packs_one_turn(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(1024 * 1024);
	events ce = {0};
	collected c = {0}, one = {0}, odd = {0};
	nng_socket raw;
	rb_bus *cli;
	char url[64];
	int first = 0, frames;

	o.batch = true;
	make_url(url, sizeof(url));
	assert_int_equal(nng_pair1_open(&raw), 0);
	assert_int_equal(nng_listen(raw, url, NULL, 0), 0);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &cli), 0);
	rb_bus_on_pipe(cli, on_pipe, &ce);
	assert_int_equal(rb_bus_dial(cli, url), 0);
	assert_true(run_until(&f->loop, &ce.adds, 1, 3000));
	for (int i = 0; i < 200; i++) {
		char buf[16];

		snprintf(buf, sizeof(buf), "m%d", i);
		assert_int_equal(rb_bus_send(cli, text_msg(buf)), 0);
	}
	run_for(&f->loop, 100);
	frames = raw_read(raw, &c, 200, &first);
	assert_int_equal(c.parts, 200);
	assert_int_equal(frames, 1);
	assert_int_equal(first, 0xfa);
	for (int i = 0; i < 200; i++) {
		char want[16];

		snprintf(want, sizeof(want), "m%d", i);
		assert_string_equal(c.text[i], want);
	}

	assert_int_equal(rb_bus_send(cli, text_msg("plain")), 0);
	run_for(&f->loop, 50);
	assert_int_equal(raw_read(raw, &one, 1, &first), 1);
	assert_int_equal(first, 'p');
	assert_string_equal(one.text[0], "plain");

	assert_int_equal(rb_bus_send(cli, bytes_msg("\xfa\x7fy", 3)), 0);
	run_for(&f->loop, 50);
	assert_int_equal(raw_read(raw, &odd, 1, &first), 1);
	assert_int_equal(first, 0xfa);
	assert_int_equal(odd.parts, 1);
	assert_string_equal(odd.text[0], "\xfa\x7fy");
	rb_bus_free(cli);
	run_for(&f->loop, 10);
	nng_close(raw);
}

static void raw_send(nng_socket s, const void *b, size_t n)
{
	nng_msg *m = bytes_msg(b, n);

	assert_int_equal(nng_sendmsg(s, m, 0), 0);
}

// A malformed batch from a peer is refused whole and counted; the link stays up and what follows
// is delivered.
static void test_batch_refuses_malformed(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(1024 * 1024);
	events se = {0};
	nng_socket raw;
	rb_bus *srv;
	char url[64];
	static uint8_t too_many[3 * 257];
	const uint8_t only_key[] = {0xfa, 0x7f};
	const uint8_t past_end[] = {0xfa, 0x7f, 5, 'a'};
	const uint8_t bad_varint[] = {0xfa, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff,
	                              0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	const uint8_t good[] = {0xfa, 0x7f, 3, 'o', 'k', '1', 0xfa, 0x7f, 3, 'o', 'k', '2'};

	o.batch = true;
	make_url(url, sizeof(url));
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &srv), 0);
	rb_bus_on_pipe(srv, on_pipe, &se);
	rb_bus_on_recv(srv, on_recv, &se);
	assert_int_equal(rb_bus_listen(srv, url), 0);
	assert_int_equal(nng_pair1_open(&raw), 0);
	assert_int_equal(nng_dial(raw, url, NULL, 0), 0);
	assert_true(run_until(&f->loop, &se.adds, 1, 3000));
	for (int i = 0; i < 257; i++) { // 257 empty messages: more than a sender packs
		too_many[3 * i] = 0xfa;
		too_many[3 * i + 1] = 0x7f;
	}
	raw_send(raw, only_key, sizeof(only_key));
	raw_send(raw, past_end, sizeof(past_end));
	raw_send(raw, bad_varint, sizeof(bad_varint));
	raw_send(raw, too_many, sizeof(too_many));
	raw_send(raw, good, sizeof(good));
	raw_send(raw, "ok3", 3);
	assert_true(run_until(&f->loop, &se.recvs, 3, 3000));
	run_for(&f->loop, 100);
	assert_int_equal(se.recvs, 3);
	assert_string_equal(se.last, "ok3");
	assert_int_equal(rb_bus_malformed(srv), 4);
	assert_int_equal(se.removes, 0);
	nng_close(raw);
	run_for(&f->loop, 50);
	rb_bus_free(srv);
}

static bool stop_after_two(const void *part, size_t len, void *arg)
{
	int *n = arg;

	(void)part;
	(void)len;
	return ++*n < 2;
}

// The batch reader on its own, as tools that speak raw nng use it.
static void test_unpack(void **state)
{
	const uint8_t three[] = {0xfa, 0x7f, 1, 'a', 0xfa, 0x7f, 0, 0xfa, 0x7f, 2, 'b', 'c'};
	const uint8_t trailing[] = {0xfa, 0x7f, 1, 'a', 0xfa, 0x7f, 4, 'x'};
	collected c = {0};
	int seen = 0;

	(void)state;
	assert_int_equal(rb_bus_unpack("hello", 5, collect_part, &c), 1);
	assert_string_equal(c.text[0], "hello");
	assert_int_equal(rb_bus_unpack("", 0, NULL, NULL), 1);
	memset(&c, 0, sizeof(c));
	assert_int_equal(rb_bus_unpack(three, sizeof(three), collect_part, &c), 3);
	assert_int_equal(c.parts, 3);
	assert_string_equal(c.text[0], "a");
	assert_string_equal(c.text[1], "");
	assert_string_equal(c.text[2], "bc");
	// The count is of the whole frame, whether or not fn stops early.
	assert_int_equal(rb_bus_unpack(three, sizeof(three), stop_after_two, &seen), 3);
	assert_int_equal(seen, 2);
	memset(&c, 0, sizeof(c));
	assert_int_equal(rb_bus_unpack(trailing, sizeof(trailing), collect_part, &c), RB_EDECODE);
	assert_int_equal(c.parts, 0);
	assert_int_equal(rb_bus_unpack(three, 2, collect_part, &c), RB_EDECODE);
	assert_int_equal(c.parts, 0);
	// Not a batch: one byte of its key is not enough.
	assert_int_equal(rb_bus_unpack(three, 1, collect_part, &c), 1);
}

static void test_bad_args(void **state)
{
	fixture *f = *state;
	rb_bus_opts o = opts(0);
	rb_bus *b = (rb_bus *)0x1;

	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &b), RB_EINVAL);
	assert_null(b);
	o = opts(1024);
	assert_int_equal(rb_bus_new(NULL, RB_BUS_PAIR, &o, &b), RB_EINVAL);
	assert_int_equal(rb_bus_new(&f->loop, (rb_bus_kind)42, &o, &b), RB_EINVAL);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_PAIR, &o, &b), 0);
	assert_int_equal(rb_bus_listen(b, "nonsense://x"), RB_EINVAL);
	assert_int_equal(rb_bus_dial(b, "tcp://"), RB_EINVAL);
	rb_bus_free(b);
	// Batches are for message links, not request/reply.
	o.batch = true;
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REQ, &o, &b), RB_EINVAL);
	assert_int_equal(rb_bus_new(&f->loop, RB_BUS_REP, &o, &b), RB_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_pair_both_ways, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pipe_add_remove, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pair_refuses_second_peer, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_rep_deferred_reply, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_req_timeout, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_echo_many, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_burst_in_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_poly_sends_to_each_peer, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_during_burst, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_recv_max, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_send_timeout_drops, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_cancels, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_tls, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_batch_burst_in_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_batch_packs_one_turn, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_batch_refuses_malformed, setup, teardown),
	        cmocka_unit_test(test_unpack),
	        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
