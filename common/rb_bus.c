// nng sockets on a libuv loop: nng threads only queue completions, the loop handles them.
#include "rb_bus.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <uthash.h>

#include "rb_err.h"
#include "rb_log.h"
#include "ringbid.pb-c.h"

// Sends in flight at once on a PAIR socket. Several keep a busy link streaming (each completion
// costs a loop wake-up); a few are enough, since nng queues behind them per peer anyway.
#define SEND_POOL 8

// Messages a PAIR socket buffers between the wire and the loop (NNG_OPT_RECVBUF). Without a
// buffer pair1 holds one message per peer, so a busy loop finds at most one waiting and pays a
// wake-up for each; with one, nng keeps reading while the loop works and the loop takes what
// accumulated in one turn. It holds pointers only: messages are still capped by recv_max.
#define RECV_BUF 256

// Messages a polyamorous socket buffers on their way to their peers' pipes (NNG_OPT_SENDBUF),
// so that rb_bus_send hands them over without waiting (see there). nng drains it as fast as it
// reaches the pipes; a peer whose own queue is full loses the message either way (pair1 poly
// drops rather than block the others).
#define POLY_SEND_BUF 1024

// Messages one wake-up takes from a PAIR socket before the loop attends to its other handles
// (timers, other sockets, the database): a burst is handled in batches, never starving them.
#define RECV_BATCH 128

// A batch (buses with opts.batch) is a protobuf Batch (proto/ringbid.proto): several messages as
// the entries of its one repeated bytes field, number 2047, which Envelope reserves. So a batch
// begins with that field's key, BATCH_KEY0 BATCH_KEY1, and an envelope never does; a message
// that does (only raw bytes could) travels as a batch of one.
#define BATCH_KEY0 0xFA // (2047 << 3 | 2) as a varint
#define BATCH_KEY1 0x7F
// At most this many messages, and about this many bytes, in one batch: enough to carry a busy
// loop turn's messages in a few, small enough that the peer starts on them promptly.
#define BATCH_MSGS  256
#define BATCH_BYTES (256 * 1024)

typedef enum {
	OP_RECV,     // PAIR: the one receive
	OP_SEND,     // PAIR: one of the send pool
	OP_REP_RECV, // REP: one receiving context
	OP_REPLY,    // REP: a reply being sent on the request's context
	OP_REQ,      // REQ: a request, then its reply, on a context of its own
	OP_PIPE,     // a pipe event (heap record, no aio)
} op_type;

typedef struct bus_op bus_op;
struct bus_op {
	bus_op *qnext;       // completion queue (under bus->lock)
	bus_op *prev, *next; // the list this op is on (loop thread)
	rb_bus *bus;
	op_type type;
	nng_aio *aio;
	nng_ctx ctx;
	bool busy; // OP_SEND: an nng_send_aio is outstanding
	// OP_REQ
	bool sent;         // the request went out; now waiting for the reply
	uint64_t deadline; // uv_now() value after which the request has timed out
	rb_bus_reply_fn fn;
	void *arg;
	// OP_PIPE
	nng_pipe pipe;
	bool added;
};

struct rb_bus_req {
	rb_bus *bus; // NULL once the bus was freed: replying then only frees
	nng_ctx ctx;
	nng_pipe pipe;
	rb_bus_req *prev, *next;
};

typedef struct {
	nng_msg *msg;
	uint64_t queued_at; // uv_now() when rb_bus_send took it
} send_item;

typedef struct {
	uint32_t id;
	UT_hash_handle hh;
} pipe_entry;

struct rb_bus {
	uv_loop_t *loop;
	rb_bus_kind kind;
	nng_socket sock;
	bool sock_open;
	rb_bus_opts opts;
	char name[64];
	nng_tls_config *tls;

	uv_async_t async;
	bool async_init;
	// opts.batch on a PAIR bus: sends queued in one loop turn are flushed together when the
	// turn's callbacks are done (check) or before the loop next waits (prepare).
	uv_check_t flush_check;
	uv_prepare_t flush_prepare;
	bool flush_init;
	bool flush_armed;
	int handles; // libuv handles still open; the bus is freed when the last one closes
	pthread_mutex_t lock;
	bus_op *q_head, *q_tail; // completions from nng threads (lock)
	int q_pipes;             // pipe events queued or in the batch, not yet handled (lock)
	bool shut;               // no more wake-ups: the async is being closed (lock)
	bus_op *batch;           // completions taken off the queue, being handled (loop)
	bool closing;            // rb_bus_free has begun (loop)
	bool started;

	rb_bus_recv_fn on_recv;
	void *recv_arg;
	rb_bus_request_fn on_request;
	void *request_arg;
	rb_bus_pipe_fn on_pipe;
	void *pipe_arg;

	bus_op recv_op;
	bus_op send_ops[SEND_POOL];
	nng_aio *now_aio; // PAIR kinds: operations that complete at once or not at all (try_send)
	send_item *fifo;  // ring of queued sends
	size_t fifo_cap, fifo_head, fifo_len;

	bus_op *rep_ops;
	int nrep;

	bus_op *reqs;        // outstanding REQ requests
	bus_op *replies;     // replies being sent
	bus_op *pool;        // idle REQ/REPLY ops with their aio, for reuse
	rb_bus_req *pending; // received requests not yet answered

	pipe_entry *pipes;
	int peers;
	uint64_t dropped;
	uint64_t malformed; // batches refused
};

static void list_add(bus_op **head, bus_op *op)
{
	op->prev = NULL;
	op->next = *head;
	if (*head != NULL)
		(*head)->prev = op;
	*head = op;
}

static void list_del(bus_op **head, bus_op *op)
{
	if (op->prev != NULL)
		op->prev->next = op->next;
	else
		*head = op->next;
	if (op->next != NULL)
		op->next->prev = op->prev;
	op->prev = op->next = NULL;
}

static void pending_add(rb_bus *bus, rb_bus_req *req)
{
	req->prev = NULL;
	req->next = bus->pending;
	if (bus->pending != NULL)
		bus->pending->prev = req;
	bus->pending = req;
}

static void pending_del(rb_bus *bus, rb_bus_req *req)
{
	if (req->prev != NULL)
		req->prev->next = req->next;
	else
		bus->pending = req->next;
	if (req->next != NULL)
		req->next->prev = req->prev;
	req->prev = req->next = NULL;
}

// nng's error numbers as ringbid codes; the ones callers branch on are mapped here explicitly.
static int bus_err(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case NNG_ECLOSED:
		return RB_ECLOSED;
	case NNG_ETIMEDOUT:
		return RB_ETIMEDOUT;
	case NNG_ENOMEM:
		return RB_ENOMEM;
	case NNG_EADDRINUSE:
		return RB_EBUSY;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP:
		return RB_EINVAL;
	case NNG_EMSGSIZE:
		return RB_ETOOBIG;
	default:
		return rb_err_from_nng(rv);
	}
}

// ---------------------------------------------------------------------------------------------
// nng threads: queue the completion and wake the loop; never anything more.

static void push_done(rb_bus *bus, bus_op *op)
{
	pthread_mutex_lock(&bus->lock);
	op->qnext = NULL;
	if (bus->q_tail != NULL)
		bus->q_tail->qnext = op;
	else
		bus->q_head = op;
	bus->q_tail = op;
	if (op->type == OP_PIPE)
		bus->q_pipes++;
	// uv_async_send under the lock: rb_bus_free sets shut under it before closing the async.
	if (!bus->shut)
		uv_async_send(&bus->async);
	pthread_mutex_unlock(&bus->lock);
}

static void aio_done(void *arg)
{
	bus_op *op = arg;

	push_done(op->bus, op);
}

static void pipe_event(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
	rb_bus *bus = arg;
	bus_op *op = calloc(1, sizeof(*op));

	if (op == NULL) {
		rb_error("bus %s: out of memory for a pipe event", bus->name);
		return;
	}
	op->bus = bus;
	op->type = OP_PIPE;
	op->pipe = pipe;
	op->added = ev == NNG_PIPE_EV_ADD_POST;
	push_done(bus, op);
}

// ---------------------------------------------------------------------------------------------
// Loop thread.

static int op_init_aio(rb_bus *bus, bus_op *op, op_type type)
{
	int rv;

	op->bus = bus;
	op->type = type;
	if ((rv = nng_aio_alloc(&op->aio, aio_done, op)) != 0) {
		op->aio = NULL;
		return bus_err(rv);
	}
	return 0;
}

// An idle REQ/REPLY op with its aio, from the pool or new. NULL when out of memory.
static bus_op *op_get(rb_bus *bus, op_type type)
{
	bus_op *op = bus->pool;

	if (op != NULL) {
		list_del(&bus->pool, op);
	} else {
		op = calloc(1, sizeof(*op));
		if (op == NULL)
			return NULL;
		if (op_init_aio(bus, op, type) != 0) {
			free(op);
			return NULL;
		}
	}
	op->type = type;
	op->sent = false;
	op->fn = NULL;
	op->arg = NULL;
	return op;
}

static void op_put(rb_bus *bus, bus_op *op)
{
	nng_aio_set_msg(op->aio, NULL);
	op->fn = NULL;
	op->arg = NULL;
	list_add(&bus->pool, op);
}

static void start_recv(rb_bus *bus)
{
	if (bus->started)
		return;
	bus->started = true;
	if (bus->kind == RB_BUS_PAIR || bus->kind == RB_BUS_PAIR_POLY) {
		nng_recv_aio(bus->sock, bus->recv_op.aio);
	} else if (bus->kind == RB_BUS_REP) {
		for (int i = 0; i < bus->nrep; i++)
			nng_ctx_recv(bus->rep_ops[i].ctx, bus->rep_ops[i].aio);
	}
}

static bool batching(const rb_bus *bus)
{
	return bus->opts.batch && bus->kind == RB_BUS_PAIR;
}

static send_item *fifo_at(rb_bus *bus, size_t i)
{
	return &bus->fifo[(bus->fifo_head + i) % bus->fifo_cap];
}

static send_item fifo_pop(rb_bus *bus)
{
	send_item it = bus->fifo[bus->fifo_head];

	bus->fifo_head = (bus->fifo_head + 1) % bus->fifo_cap;
	bus->fifo_len--;
	return it;
}

static bool is_batch(const void *buf, size_t len)
{
	const uint8_t *b = buf;

	return len >= 2 && b[0] == BATCH_KEY0 && b[1] == BATCH_KEY1;
}

// A message that cannot travel alone on a batch bus: the receiver would take it for a batch.
static bool needs_batch(nng_msg *msg)
{
	return is_batch(nng_msg_body(msg), nng_msg_len(msg));
}

// Takes what goes out next: the oldest queued message, or on a batch bus as many of the
// oldest as fit in one Batch. Messages that waited past the send timeout are dropped here (the
// time in this queue counts against it). *age is how long the oldest one taken waited. NULL
// when nothing was taken, or when the one message taken had to be dropped: either way the
// queue is shorter than before.
static nng_msg *fifo_take(rb_bus *bus, uint64_t now, uint64_t limit, uint64_t *age)
{
	ProtobufCBinaryData parts[BATCH_MSGS];
	Ringbid__Batch batch = RINGBID__BATCH__INIT;
	size_t n = 0, bytes = 0;
	nng_msg *frame;

	while (bus->fifo_len > 0) {
		const send_item *it = fifo_at(bus, 0);

		*age = now > it->queued_at ? now - it->queued_at : 0;
		if (*age < limit)
			break;
		nng_msg_free(fifo_pop(bus).msg);
		bus->dropped++;
	}
	if (bus->fifo_len == 0)
		return NULL;
	if (!batching(bus))
		return fifo_pop(bus).msg;
	// The first message always; then those that keep the batch within BATCH_BYTES (each entry
	// costs its bytes, the key and at most 5 bytes of length).
	while (n < bus->fifo_len && n < BATCH_MSGS) {
		nng_msg *m = fifo_at(bus, n)->msg;
		size_t cost = 2 + 5 + nng_msg_len(m);

		if (n > 0 && bytes + cost > BATCH_BYTES)
			break;
		parts[n].len = nng_msg_len(m);
		parts[n].data = nng_msg_body(m);
		bytes += cost;
		n++;
	}
	if (n == 1 && !needs_batch(fifo_at(bus, 0)->msg))
		return fifo_pop(bus).msg;
	batch.n_envelopes = n;
	batch.envelopes = parts;
	if (nng_msg_alloc(&frame, ringbid__batch__get_packed_size(&batch)) != 0) {
		send_item it = fifo_pop(bus);

		if (!needs_batch(it.msg))
			return it.msg;
		rb_warn("bus %s: out of memory packing a batch: a message dropped", bus->name);
		nng_msg_free(it.msg);
		bus->dropped++;
		return NULL;
	}
	ringbid__batch__pack(&batch, nng_msg_body(frame));
	for (size_t i = 0; i < n; i++)
		nng_msg_free(fifo_pop(bus).msg);
	return frame;
}

// nng_sendmsg and nng_recvmsg with NNG_FLAG_NONBLOCK, on an aio of the bus's own: those two set
// up an aio of their own on each call, and nng 1.5.2 draws a random number from the kernel for
// every aio it sets up (a getrandom system call, about a dozen per call in presence). With a
// zero timeout nng completes the operation, or fails it with NNG_ETIMEDOUT, before
// nng_send_aio or nng_recv_aio returns, and an aio without a callback completes on the calling
// thread, so the wait never blocks the loop.
static int try_send(rb_bus *bus, nng_msg *msg)
{
	int rv;

	nng_aio_set_msg(bus->now_aio, msg);
	nng_aio_set_timeout(bus->now_aio, NNG_DURATION_ZERO);
	nng_send_aio(bus->sock, bus->now_aio);
	nng_aio_wait(bus->now_aio);
	rv = nng_aio_result(bus->now_aio);
	nng_aio_set_msg(bus->now_aio, NULL); // on failure the message is still the caller's
	return rv;
}

// Returns 0 with *msg, NNG_ETIMEDOUT when nothing is waiting, or nng's error.
static int try_recv(rb_bus *bus, nng_msg **msg)
{
	int rv;

	nng_aio_set_timeout(bus->now_aio, NNG_DURATION_ZERO);
	nng_recv_aio(bus->sock, bus->now_aio);
	nng_aio_wait(bus->now_aio);
	rv = nng_aio_result(bus->now_aio);
	*msg = rv == 0 ? nng_aio_get_msg(bus->now_aio) : NULL;
	nng_aio_set_msg(bus->now_aio, NULL);
	return rv;
}

static bool send_in_flight(const rb_bus *bus)
{
	for (int i = 0; i < SEND_POOL; i++) {
		if (bus->send_ops[i].busy)
			return true;
	}
	return false;
}

static bus_op *idle_send_op(rb_bus *bus)
{
	for (int i = 0; i < SEND_POOL; i++) {
		if (!bus->send_ops[i].busy)
			return &bus->send_ops[i];
	}
	return NULL;
}

// Sends what is queued, in order, on the idle ops of the pool (nng queues them per peer in the
// order they were started).
//
// Handing a message straight to nng_sendmsg(NNG_FLAG_NONBLOCK) when nothing is in flight was
// measured and left out: it saves the send's completion wake-up, but with it every hop between
// the services was slower at low load (docs/performance.md, "What changed: batches between
// services").
static void send_pump(rb_bus *bus)
{
	uint64_t now = uv_now(bus->loop);
	uint64_t limit = (uint64_t)bus->opts.send_timeout_ms;
	bus_op *op;

	while (bus->fifo_len > 0 && (op = idle_send_op(bus)) != NULL) {
		uint64_t age = 0;
		nng_msg *msg = fifo_take(bus, now, limit, &age);

		if (msg == NULL)
			continue;
		op->busy = true;
		nng_aio_set_msg(op->aio, msg);
		nng_aio_set_timeout(op->aio, (nng_duration)(limit - age));
		nng_send_aio(bus->sock, op->aio);
	}
}

// A batch bus flushes once the loop turn's callbacks have had their say (check), or before the
// loop waits again when a timer sent (prepare): whatever they queued leaves together.
static void flush_stop(rb_bus *bus)
{
	if (!bus->flush_armed)
		return;
	bus->flush_armed = false;
	uv_check_stop(&bus->flush_check);
	uv_prepare_stop(&bus->flush_prepare);
}

static void flush_check_cb(uv_check_t *h)
{
	rb_bus *bus = h->data;

	flush_stop(bus);
	if (!bus->closing)
		send_pump(bus);
}

static void flush_prepare_cb(uv_prepare_t *h)
{
	rb_bus *bus = h->data;

	flush_stop(bus);
	if (!bus->closing)
		send_pump(bus);
}

static void flush_arm(rb_bus *bus)
{
	if (bus->flush_armed)
		return;
	bus->flush_armed = true;
	uv_check_start(&bus->flush_check, flush_check_cb);
	uv_prepare_start(&bus->flush_prepare, flush_prepare_cb);
}

// Whether a pipe event waits to be handled. Messages taken without the aio must not
// overtake it: a peer's arrival is announced before anything it sent, and its departure after.
static bool pipe_event_waiting(rb_bus *bus)
{
	bool waiting;

	pthread_mutex_lock(&bus->lock);
	waiting = bus->q_pipes > 0;
	pthread_mutex_unlock(&bus->lock);
	return waiting;
}

// Hands one received message to the service. Returns false when the callback freed the bus:
// nothing of it may be touched then but the struct itself, which lives until its handle closes.
static bool deliver_one(rb_bus *bus, nng_msg *msg)
{
	if (bus->on_recv != NULL)
		bus->on_recv(bus, msg, bus->recv_arg);
	else
		nng_msg_free(msg);
	return !bus->closing;
}

int rb_bus_unpack(const void *buf, size_t len, rb_bus_part_fn fn, void *arg)
{
	Ringbid__Batch *batch;
	int n;

	if (!is_batch(buf, len)) {
		if (fn != NULL)
			fn(buf, len, arg);
		return 1;
	}
	// protobuf-c decodes the whole batch before any of it is handed on: a malformed one (a
	// length past its end, a broken varint, more messages than a sender ever packs) yields
	// nothing.
	batch = ringbid__batch__unpack(NULL, len, buf);
	if (batch == NULL)
		return RB_EDECODE;
	if (batch->n_envelopes == 0 || batch->n_envelopes > BATCH_MSGS) {
		ringbid__batch__free_unpacked(batch, NULL);
		return RB_EDECODE;
	}
	n = (int)batch->n_envelopes;
	for (size_t i = 0; i < batch->n_envelopes && fn != NULL; i++) {
		if (!fn(batch->envelopes[i].data, batch->envelopes[i].len, arg))
			break;
	}
	ringbid__batch__free_unpacked(batch, NULL);
	return n;
}

typedef struct {
	rb_bus *bus;
	nng_pipe pipe;
	bool freed; // the receive callback freed the bus
} unpack_ctx;

static bool deliver_part(const void *part, size_t len, void *arg)
{
	unpack_ctx *u = arg;
	nng_msg *m;

	if (nng_msg_alloc(&m, len) != 0) {
		rb_error("bus %s: out of memory unpacking a batch: the rest is lost", u->bus->name);
		return false;
	}
	if (len > 0) // an empty entry has no data at all
		memcpy(nng_msg_body(m), part, len);
	nng_msg_set_pipe(m, u->pipe);
	if (!deliver_one(u->bus, m)) {
		u->freed = true;
		return false;
	}
	return true;
}

// A batch: each of its messages is delivered as an nng message of its own, from the batch's
// peer; a malformed batch changes nothing and is only counted.
static bool deliver_batch(rb_bus *bus, nng_msg *frame)
{
	unpack_ctx u = {.bus = bus, .pipe = nng_msg_get_pipe(frame)};

	if (rb_bus_unpack(nng_msg_body(frame), nng_msg_len(frame), deliver_part, &u) < 0) {
		bus->malformed++;
		rb_warn("bus %s: malformed batch of %zu bytes refused", bus->name,
		        nng_msg_len(frame));
	}
	nng_msg_free(frame);
	return !u.freed;
}

static bool deliver(rb_bus *bus, nng_msg *msg)
{
	if (bus->opts.batch && is_batch(nng_msg_body(msg), nng_msg_len(msg)))
		return deliver_batch(bus, msg);
	return deliver_one(bus, msg);
}

// The receive aio completed: its message is delivered, then whatever else nng has buffered is
// taken without waiting (up to RECV_BATCH), and only then is the aio armed again. One loop
// wake-up thus serves a burst instead of one message, and the aio being idle while the loop
// drains keeps the order of messages.
static void handle_recv(rb_bus *bus, bus_op *op)
{
	int rv = nng_aio_result(op->aio);
	nng_msg *msg;

	if (rv != 0) {
		if (rv == NNG_ECLOSED)
			return;
		rb_warn("bus %s: receive failed: %s", bus->name, nng_strerror(rv));
		nng_recv_aio(bus->sock, op->aio);
		return;
	}
	msg = nng_aio_get_msg(op->aio);
	nng_aio_set_msg(op->aio, NULL);
	if (!deliver(bus, msg))
		return;
	for (int n = 1; n < RECV_BATCH && !pipe_event_waiting(bus); n++) {
		rv = try_recv(bus, &msg);
		if (rv == NNG_ETIMEDOUT)
			break;
		if (rv != 0) {
			// The aio reports the same failure (a closed socket) or recovers from it.
			if (rv != NNG_ECLOSED)
				rb_warn("bus %s: receive failed: %s", bus->name, nng_strerror(rv));
			break;
		}
		if (!deliver(bus, msg))
			return;
	}
	nng_recv_aio(bus->sock, op->aio);
}

static void handle_send(rb_bus *bus, bus_op *op)
{
	int rv = nng_aio_result(op->aio);

	op->busy = false;
	if (rv != 0) {
		nng_msg *msg = nng_aio_get_msg(op->aio);

		nng_aio_set_msg(op->aio, NULL);
		if (msg != NULL)
			nng_msg_free(msg);
		bus->dropped++;
		rb_debug("bus %s: send dropped: %s", bus->name, nng_strerror(rv));
	}
	send_pump(bus);
}

static void handle_rep_recv(rb_bus *bus, bus_op *op)
{
	int rv = nng_aio_result(op->aio);
	nng_msg *msg;
	rb_bus_req *req;
	nng_ctx fresh;

	if (rv != 0) {
		if (rv == NNG_ECLOSED)
			return;
		rb_warn("bus %s: receive failed: %s", bus->name, nng_strerror(rv));
		nng_ctx_recv(op->ctx, op->aio);
		return;
	}
	msg = nng_aio_get_msg(op->aio);
	nng_aio_set_msg(op->aio, NULL);
	req = calloc(1, sizeof(*req));
	if (req == NULL || (rv = nng_ctx_open(&fresh, bus->sock)) != 0) {
		// Without a context to keep receiving on, this one stays with the slot; the
		// client's REQ resends the request.
		free(req);
		nng_msg_free(msg);
		rb_warn("bus %s: request dropped: out of resources", bus->name);
		nng_ctx_recv(op->ctx, op->aio);
		return;
	}
	req->bus = bus;
	req->ctx = op->ctx;
	req->pipe = nng_msg_get_pipe(msg);
	op->ctx = fresh;
	nng_ctx_recv(op->ctx, op->aio);
	pending_add(bus, req);
	if (bus->on_request != NULL) {
		bus->on_request(bus, req, msg, bus->request_arg);
	} else {
		nng_msg_free(msg);
		rb_bus_reply_drop(req);
	}
}

static void handle_reply(rb_bus *bus, bus_op *op)
{
	int rv = nng_aio_result(op->aio);

	if (rv != 0) {
		nng_msg *msg = nng_aio_get_msg(op->aio);

		if (msg != NULL)
			nng_msg_free(msg);
		bus->dropped++;
		rb_debug("bus %s: reply dropped: %s", bus->name, nng_strerror(rv));
	}
	nng_ctx_close(op->ctx);
	list_del(&bus->replies, op);
	op_put(bus, op);
}

static void req_finish(rb_bus *bus, bus_op *op, int err, nng_msg *reply)
{
	rb_bus_reply_fn fn = op->fn;
	void *arg = op->arg;

	nng_ctx_close(op->ctx);
	list_del(&bus->reqs, op);
	op_put(bus, op);
	fn(bus, err, reply, arg);
}

static void handle_req(rb_bus *bus, bus_op *op)
{
	int rv = nng_aio_result(op->aio);
	nng_msg *msg = nng_aio_get_msg(op->aio);
	uint64_t now;

	nng_aio_set_msg(op->aio, NULL);
	if (!op->sent) {
		if (rv != 0) {
			if (msg != NULL)
				nng_msg_free(msg);
			req_finish(bus, op, bus_err(rv), NULL);
			return;
		}
		op->sent = true;
		now = uv_now(bus->loop);
		if (now >= op->deadline) {
			req_finish(bus, op, RB_ETIMEDOUT, NULL);
			return;
		}
		nng_aio_set_timeout(op->aio, (nng_duration)(op->deadline - now));
		nng_ctx_recv(op->ctx, op->aio);
		return;
	}
	if (rv != 0) {
		req_finish(bus, op, bus_err(rv), NULL);
		return;
	}
	req_finish(bus, op, 0, msg);
}

static void handle_pipe(rb_bus *bus, bus_op *op)
{
	uint32_t id = nng_pipe_id(op->pipe);
	nng_pipe pipe = op->pipe;
	bool added = op->added;
	pipe_entry *pe;

	free(op);
	pthread_mutex_lock(&bus->lock);
	bus->q_pipes--;
	pthread_mutex_unlock(&bus->lock);
	HASH_FIND(hh, bus->pipes, &id, sizeof(id), pe);
	if (added) {
		if (pe != NULL)
			return;
		pe = calloc(1, sizeof(*pe));
		if (pe == NULL) {
			rb_error("bus %s: out of memory tracking a peer", bus->name);
			return;
		}
		pe->id = id;
		HASH_ADD(hh, bus->pipes, id, sizeof(pe->id), pe);
		bus->peers++;
	} else {
		// nng also reports the removal of pipes it refused (a second peer on a pair
		// socket); those were never announced, so they are not announced gone either.
		if (pe == NULL)
			return;
		HASH_DEL(bus->pipes, pe);
		free(pe);
		bus->peers--;
	}
	if (bus->on_pipe != NULL)
		bus->on_pipe(bus, pipe, added, bus->pipe_arg);
}

static void handle_done(rb_bus *bus, bus_op *op)
{
	switch (op->type) {
	case OP_RECV:
		handle_recv(bus, op);
		break;
	case OP_SEND:
		handle_send(bus, op);
		break;
	case OP_REP_RECV:
		handle_rep_recv(bus, op);
		break;
	case OP_REPLY:
		handle_reply(bus, op);
		break;
	case OP_REQ:
		handle_req(bus, op);
		break;
	case OP_PIPE:
		handle_pipe(bus, op);
		break;
	}
}

static void take_queue(rb_bus *bus)
{
	bus_op *head;

	pthread_mutex_lock(&bus->lock);
	head = bus->q_head;
	bus->q_head = bus->q_tail = NULL;
	pthread_mutex_unlock(&bus->lock);
	if (head == NULL)
		return;
	// Appended behind what is left of an earlier batch, so completions keep their order.
	if (bus->batch == NULL) {
		bus->batch = head;
	} else {
		bus_op *last = bus->batch;

		while (last->qnext != NULL)
			last = last->qnext;
		last->qnext = head;
	}
}

static void async_cb(uv_async_t *handle)
{
	rb_bus *bus = handle->data;

	// uv_async_send coalesces: one wake-up may stand for many completions. Only what is
	// queued now is handled; anything newer comes with a wake-up of its own.
	take_queue(bus);
	while (!bus->closing && bus->batch != NULL) {
		bus_op *op = bus->batch;

		bus->batch = op->qnext;
		op->qnext = NULL;
		handle_done(bus, op);
	}
}

// ---------------------------------------------------------------------------------------------
// Public API.

void rb_bus_on_recv(rb_bus *bus, rb_bus_recv_fn fn, void *arg)
{
	bus->on_recv = fn;
	bus->recv_arg = arg;
}

void rb_bus_on_request(rb_bus *bus, rb_bus_request_fn fn, void *arg)
{
	bus->on_request = fn;
	bus->request_arg = arg;
}

void rb_bus_on_pipe(rb_bus *bus, rb_bus_pipe_fn fn, void *arg)
{
	bus->on_pipe = fn;
	bus->pipe_arg = arg;
}

int rb_bus_set_tls(rb_bus *bus, nng_tls_config *cfg)
{
	if (bus == NULL || cfg == NULL)
		return RB_EINVAL;
	nng_tls_config_hold(cfg);
	if (bus->tls != NULL)
		nng_tls_config_free(bus->tls);
	bus->tls = cfg;
	return 0;
}

static void bus_destroy_ops(rb_bus *bus)
{
	bus_op *lists[] = {bus->reqs, bus->replies, bus->pool};

	if (bus->recv_op.aio != NULL)
		nng_aio_free(bus->recv_op.aio);
	if (bus->now_aio != NULL)
		nng_aio_free(bus->now_aio);
	bus->now_aio = NULL;
	for (int i = 0; i < SEND_POOL; i++) {
		if (bus->send_ops[i].aio != NULL)
			nng_aio_free(bus->send_ops[i].aio);
	}
	for (int i = 0; i < bus->nrep; i++) {
		if (bus->rep_ops[i].aio != NULL)
			nng_aio_free(bus->rep_ops[i].aio);
	}
	free(bus->rep_ops);
	bus->rep_ops = NULL;
	for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
		bus_op *op = lists[l];

		while (op != NULL) {
			bus_op *next = op->next;

			nng_aio_free(op->aio);
			free(op);
			op = next;
		}
	}
	bus->reqs = bus->replies = bus->pool = NULL;
}

static void bus_stop_aios(rb_bus *bus)
{
	bus_op *lists[] = {bus->reqs, bus->replies, bus->pool};

	if (bus->recv_op.aio != NULL)
		nng_aio_stop(bus->recv_op.aio);
	for (int i = 0; i < SEND_POOL; i++) {
		if (bus->send_ops[i].aio != NULL)
			nng_aio_stop(bus->send_ops[i].aio);
	}
	for (int i = 0; i < bus->nrep; i++) {
		if (bus->rep_ops[i].aio != NULL)
			nng_aio_stop(bus->rep_ops[i].aio);
	}
	for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
		for (bus_op *op = lists[l]; op != NULL; op = op->next)
			nng_aio_stop(op->aio);
	}
}

static void free_pipes(rb_bus *bus)
{
	pipe_entry *pe;
	pipe_entry *tmp;

	HASH_ITER(hh, bus->pipes, pe, tmp)
	{
		HASH_DEL(bus->pipes, pe);
		free(pe);
	}
	bus->peers = 0;
}

static void bus_close_cb(uv_handle_t *handle)
{
	rb_bus *bus = handle->data;

	if (--bus->handles > 0)
		return;
	pthread_mutex_destroy(&bus->lock);
	free(bus);
}

int rb_bus_new(uv_loop_t *loop, rb_bus_kind kind, const rb_bus_opts *opts, rb_bus **out)
{
	rb_bus *bus;
	int rv;

	if (out != NULL)
		*out = NULL;
	if (loop == NULL || opts == NULL || out == NULL || opts->recv_max == 0)
		return RB_EINVAL;
	if (kind != RB_BUS_PAIR && kind != RB_BUS_PAIR_POLY && kind != RB_BUS_REP &&
	    kind != RB_BUS_REQ)
		return RB_EINVAL;
	if (opts->batch && kind != RB_BUS_PAIR && kind != RB_BUS_PAIR_POLY)
		return RB_EINVAL;
	bus = calloc(1, sizeof(*bus));
	if (bus == NULL)
		return RB_ENOMEM;
	bus->loop = loop;
	bus->kind = kind;
	bus->opts = *opts;
	if (bus->opts.send_timeout_ms <= 0)
		bus->opts.send_timeout_ms = 5000;
	if (bus->opts.reconnect_min_ms <= 0)
		bus->opts.reconnect_min_ms = 100;
	if (bus->opts.reconnect_max_ms <= 0)
		bus->opts.reconnect_max_ms = 2000;
	if (bus->opts.reconnect_max_ms < bus->opts.reconnect_min_ms)
		bus->opts.reconnect_max_ms = bus->opts.reconnect_min_ms;
	if (bus->opts.req_resend_ms <= 0)
		bus->opts.req_resend_ms = 1000;
	if (bus->opts.rep_parallel <= 0)
		bus->opts.rep_parallel = 64;
	snprintf(bus->name, sizeof(bus->name), "%s", opts->name != NULL ? opts->name : "bus");
	bus->opts.name = bus->name;
	pthread_mutex_init(&bus->lock, NULL);

	switch (kind) {
	case RB_BUS_PAIR:
		rv = nng_pair1_open(&bus->sock);
		break;
	case RB_BUS_PAIR_POLY:
		rv = nng_pair1_open_poly(&bus->sock);
		break;
	case RB_BUS_REP:
		rv = nng_rep0_open(&bus->sock);
		break;
	default:
		rv = nng_req0_open(&bus->sock);
		break;
	}
	if (rv != 0)
		goto fail;
	bus->sock_open = true;

	// Limits and backoff go on the socket before any endpoint exists; endpoints made later
	// get them set again explicitly (see endpoint_opts).
	if ((rv = nng_socket_set_size(bus->sock, NNG_OPT_RECVMAXSZ, bus->opts.recv_max)) != 0 ||
	    (rv = nng_socket_set_ms(bus->sock, NNG_OPT_RECONNMINT, bus->opts.reconnect_min_ms)) !=
	            0 ||
	    (rv = nng_socket_set_ms(bus->sock, NNG_OPT_RECONNMAXT, bus->opts.reconnect_max_ms)) !=
	            0)
		goto fail;
	if (kind == RB_BUS_REQ && (rv = nng_socket_set_ms(bus->sock, NNG_OPT_REQ_RESENDTIME,
	                                                  bus->opts.req_resend_ms)) != 0)
		goto fail;
	if ((rv = nng_pipe_notify(bus->sock, NNG_PIPE_EV_ADD_POST, pipe_event, bus)) != 0 ||
	    (rv = nng_pipe_notify(bus->sock, NNG_PIPE_EV_REM_POST, pipe_event, bus)) != 0)
		goto fail;

	if (kind == RB_BUS_PAIR || kind == RB_BUS_PAIR_POLY) {
		// A protocol without a receive buffer keeps working, one message per wake-up.
		if ((rv = nng_socket_set_int(bus->sock, NNG_OPT_RECVBUF, RECV_BUF)) != 0 &&
		    rv != NNG_ENOTSUP)
			goto fail;
		if (kind == RB_BUS_PAIR_POLY &&
		    (rv = nng_socket_set_int(bus->sock, NNG_OPT_SENDBUF, POLY_SEND_BUF)) != 0)
			goto fail;
		if ((rv = nng_aio_alloc(&bus->recv_op.aio, aio_done, &bus->recv_op)) != 0 ||
		    (rv = nng_aio_alloc(&bus->now_aio, NULL, NULL)) != 0)
			goto fail;
		bus->recv_op.bus = bus;
		bus->recv_op.type = OP_RECV;
		for (int i = 0; i < SEND_POOL; i++) {
			bus_op *op = &bus->send_ops[i];

			if ((rv = nng_aio_alloc(&op->aio, aio_done, op)) != 0)
				goto fail;
			op->bus = bus;
			op->type = OP_SEND;
		}
	} else if (kind == RB_BUS_REP) {
		bus->rep_ops = calloc((size_t)bus->opts.rep_parallel, sizeof(bus_op));
		if (bus->rep_ops == NULL) {
			rv = NNG_ENOMEM;
			goto fail;
		}
		for (int i = 0; i < bus->opts.rep_parallel; i++) {
			bus_op *op = &bus->rep_ops[i];

			op->bus = bus;
			op->type = OP_REP_RECV;
			if ((rv = nng_ctx_open(&op->ctx, bus->sock)) != 0)
				goto fail;
			if ((rv = nng_aio_alloc(&op->aio, aio_done, op)) != 0) {
				nng_ctx_close(op->ctx);
				goto fail;
			}
			bus->nrep = i + 1;
		}
	}

	if ((rv = uv_async_init(loop, &bus->async, async_cb)) != 0) {
		rb_error("bus %s: uv_async_init: %s", bus->name, uv_strerror(rv));
		rv = NNG_ENOMEM;
		goto fail;
	}
	bus->async.data = bus;
	bus->async_init = true;
	bus->handles = 1;
	if (batching(bus)) {
		// Neither can fail: they only link the handle into the loop.
		uv_check_init(loop, &bus->flush_check);
		uv_prepare_init(loop, &bus->flush_prepare);
		bus->flush_check.data = bus;
		bus->flush_prepare.data = bus;
		bus->flush_init = true;
		bus->handles += 2;
	}
	*out = bus;
	return 0;

fail:
	rb_error("bus %s: cannot create socket: %s", bus->name, nng_strerror(rv));
	if (bus->sock_open)
		nng_close(bus->sock);
	bus_destroy_ops(bus);
	pthread_mutex_destroy(&bus->lock);
	free(bus);
	return bus_err(rv);
}

// Sets an option on a new endpoint. Transports without the option (inproc has no size limit)
// are fine; any other failure is the caller's.
static int endpoint_opt(int rv)
{
	return rv == NNG_ENOTSUP ? 0 : rv;
}

int rb_bus_listen(rb_bus *bus, const char *url)
{
	nng_listener l;
	int rv;

	if (bus == NULL || url == NULL)
		return RB_EINVAL;
	if (bus->closing)
		return RB_ECLOSED;
	if ((rv = nng_listener_create(&l, bus->sock, url)) != 0) {
		rb_error("bus %s: cannot listen on %s: %s", bus->name, url, nng_strerror(rv));
		return bus_err(rv);
	}
	rv = endpoint_opt(nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, bus->opts.recv_max));
	if (rv == 0 && bus->tls != NULL)
		rv = endpoint_opt(nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, bus->tls));
	if (rv == 0)
		rv = nng_listener_start(l, 0);
	if (rv != 0) {
		nng_listener_close(l);
		rb_error("bus %s: cannot listen on %s: %s", bus->name, url, nng_strerror(rv));
		return bus_err(rv);
	}
	start_recv(bus);
	rb_info("bus %s: listening on %s", bus->name, url);
	return 0;
}

int rb_bus_dial(rb_bus *bus, const char *url)
{
	nng_dialer d;
	int rv;

	if (bus == NULL || url == NULL)
		return RB_EINVAL;
	if (bus->closing)
		return RB_ECLOSED;
	if ((rv = nng_dialer_create(&d, bus->sock, url)) != 0) {
		rb_error("bus %s: cannot dial %s: %s", bus->name, url, nng_strerror(rv));
		return bus_err(rv);
	}
	rv = endpoint_opt(nng_dialer_set_size(d, NNG_OPT_RECVMAXSZ, bus->opts.recv_max));
	if (rv == 0)
		rv = endpoint_opt(
		        nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, bus->opts.reconnect_min_ms));
	if (rv == 0)
		rv = endpoint_opt(
		        nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, bus->opts.reconnect_max_ms));
	if (rv == 0 && bus->tls != NULL)
		rv = endpoint_opt(nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, bus->tls));
	// Non-blocking: a peer that is not up yet is retried in the background with backoff.
	if (rv == 0)
		rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK);
	if (rv != 0) {
		nng_dialer_close(d);
		rb_error("bus %s: cannot dial %s: %s", bus->name, url, nng_strerror(rv));
		return bus_err(rv);
	}
	start_recv(bus);
	rb_info("bus %s: dialing %s", bus->name, url);
	return 0;
}

static int fifo_push(rb_bus *bus, nng_msg *msg)
{
	if (bus->fifo_len == bus->fifo_cap) {
		size_t cap = bus->fifo_cap > 0 ? bus->fifo_cap * 2 : 64;
		send_item *nf = malloc(cap * sizeof(*nf));

		if (nf == NULL)
			return RB_ENOMEM;
		for (size_t i = 0; i < bus->fifo_len; i++)
			nf[i] = bus->fifo[(bus->fifo_head + i) % bus->fifo_cap];
		free(bus->fifo);
		bus->fifo = nf;
		bus->fifo_cap = cap;
		bus->fifo_head = 0;
	}
	bus->fifo[(bus->fifo_head + bus->fifo_len) % bus->fifo_cap] =
	        (send_item){.msg = msg, .queued_at = uv_now(bus->loop)};
	bus->fifo_len++;
	return 0;
}

int rb_bus_send(rb_bus *bus, nng_msg *msg)
{
	int rv;

	if (msg == NULL)
		return RB_EINVAL;
	if (bus == NULL || (bus->kind != RB_BUS_PAIR && bus->kind != RB_BUS_PAIR_POLY)) {
		nng_msg_free(msg);
		return RB_EINVAL;
	}
	if (bus->closing) {
		nng_msg_free(msg);
		return RB_ECLOSED;
	}
	// A polyamorous socket takes a message into its send buffer at once (pair1 poly only
	// queues it there for the peer's pipe), so when nothing of ours waits ahead of it, it is
	// handed over on this thread: no send completion, no loop wake-up per message. A full
	// buffer (or any refusal) leaves it to the queue below, behind which later ones wait.
	if (bus->kind == RB_BUS_PAIR_POLY && bus->fifo_len == 0 && !send_in_flight(bus) &&
	    try_send(bus, msg) == 0)
		return 0;
	if ((rv = fifo_push(bus, msg)) != 0) {
		nng_msg_free(msg);
		bus->dropped++;
		return rv;
	}
	if (batching(bus))
		flush_arm(bus);
	else
		send_pump(bus);
	return 0;
}

int rb_bus_request(rb_bus *bus, nng_msg *msg, int timeout_ms, rb_bus_reply_fn fn, void *arg)
{
	bus_op *op;
	int rv;

	if (msg == NULL)
		return RB_EINVAL;
	if (bus == NULL || bus->kind != RB_BUS_REQ || fn == NULL || timeout_ms <= 0) {
		nng_msg_free(msg);
		return RB_EINVAL;
	}
	if (bus->closing) {
		nng_msg_free(msg);
		return RB_ECLOSED;
	}
	if ((op = op_get(bus, OP_REQ)) == NULL) {
		nng_msg_free(msg);
		return RB_ENOMEM;
	}
	if ((rv = nng_ctx_open(&op->ctx, bus->sock)) != 0) {
		op_put(bus, op);
		nng_msg_free(msg);
		return bus_err(rv);
	}
	op->fn = fn;
	op->arg = arg;
	op->deadline = uv_now(bus->loop) + (uint64_t)timeout_ms;
	list_add(&bus->reqs, op);
	nng_aio_set_msg(op->aio, msg);
	nng_aio_set_timeout(op->aio, timeout_ms);
	nng_ctx_send(op->ctx, op->aio);
	return 0;
}

void rb_bus_reply(rb_bus_req *req, nng_msg *reply)
{
	rb_bus *bus;
	bus_op *op;

	if (req == NULL) {
		if (reply != NULL)
			nng_msg_free(reply);
		return;
	}
	if (reply == NULL) {
		rb_bus_reply_drop(req);
		return;
	}
	bus = req->bus;
	if (bus == NULL) {
		// The bus was freed while the request waited: there is no one left to answer.
		nng_msg_free(reply);
		free(req);
		return;
	}
	pending_del(bus, req);
	if ((op = op_get(bus, OP_REPLY)) == NULL) {
		nng_msg_free(reply);
		nng_ctx_close(req->ctx);
		free(req);
		bus->dropped++;
		return;
	}
	op->ctx = req->ctx;
	free(req);
	list_add(&bus->replies, op);
	nng_aio_set_msg(op->aio, reply);
	nng_aio_set_timeout(op->aio, bus->opts.send_timeout_ms);
	nng_ctx_send(op->ctx, op->aio);
}

void rb_bus_reply_drop(rb_bus_req *req)
{
	if (req == NULL)
		return;
	if (req->bus != NULL) {
		pending_del(req->bus, req);
		nng_ctx_close(req->ctx);
	}
	free(req);
}

nng_pipe rb_bus_req_pipe(const rb_bus_req *req)
{
	nng_pipe none = NNG_PIPE_INITIALIZER;

	return req != NULL ? req->pipe : none;
}

int rb_bus_peers(const rb_bus *bus)
{
	return bus != NULL ? bus->peers : 0;
}

uint64_t rb_bus_malformed(const rb_bus *bus)
{
	return bus != NULL ? bus->malformed : 0;
}

uint64_t rb_bus_dropped(const rb_bus *bus)
{
	return bus != NULL ? bus->dropped : 0;
}

// After the socket is closed and every aio stopped: releases what the completions still hold.
static void discard(rb_bus *bus, bus_op *op)
{
	int rv;
	nng_msg *msg;

	if (op->type == OP_PIPE) {
		free(op);
		return;
	}
	rv = nng_aio_result(op->aio);
	msg = nng_aio_get_msg(op->aio);
	nng_aio_set_msg(op->aio, NULL);
	switch (op->type) {
	case OP_RECV:
	case OP_REP_RECV:
		if (rv == 0 && msg != NULL)
			nng_msg_free(msg);
		break;
	case OP_REQ:
		// A reply that arrived (rv 0 after the request went out) or a request that did
		// not go out (rv != 0): either way the message is still here to free.
		if (msg != NULL && (op->sent ? rv == 0 : rv != 0))
			nng_msg_free(msg);
		break;
	case OP_SEND:
	case OP_REPLY:
		if (rv != 0 && msg != NULL) {
			nng_msg_free(msg);
			bus->dropped++;
		}
		break;
	case OP_PIPE:
		break;
	}
}

void rb_bus_free(rb_bus *bus)
{
	bus_op *op;

	if (bus == NULL || bus->closing)
		return;
	bus->closing = true;

	// Requests the service still holds stay valid handles; answering them just frees them.
	while (bus->pending != NULL) {
		rb_bus_req *req = bus->pending;

		pending_del(bus, req);
		req->bus = NULL;
	}

	pthread_mutex_lock(&bus->lock);
	bus->shut = true;
	pthread_mutex_unlock(&bus->lock);

	// Closing the socket fails every operation in flight; nng_aio_stop then waits for their
	// callbacks, which only queue, so nothing here waits on this thread.
	nng_close(bus->sock);
	bus->sock_open = false;
	bus_stop_aios(bus);

	take_queue(bus);
	while ((op = bus->batch) != NULL) {
		bus->batch = op->qnext;
		op->qnext = NULL;
		discard(bus, op);
	}
	while (bus->fifo_len > 0) {
		nng_msg_free(bus->fifo[bus->fifo_head].msg);
		bus->fifo_head = (bus->fifo_head + 1) % bus->fifo_cap;
		bus->fifo_len--;
		bus->dropped++;
	}
	free(bus->fifo);
	bus->fifo = NULL;

	// Every request still outstanding hears RB_ECLOSED, once. The callback may use other
	// buses; this one refuses new work since closing is set.
	while ((op = bus->reqs) != NULL) {
		rb_bus_reply_fn fn = op->fn;
		void *arg = op->arg;

		list_del(&bus->reqs, op);
		list_add(&bus->pool, op);
		fn(bus, RB_ECLOSED, NULL, arg);
	}
	bus_destroy_ops(bus);
	free_pipes(bus);
	if (bus->tls != NULL) {
		nng_tls_config_free(bus->tls);
		bus->tls = NULL;
	}
	if (bus->flush_init) {
		flush_stop(bus);
		uv_close((uv_handle_t *)&bus->flush_check, bus_close_cb);
		uv_close((uv_handle_t *)&bus->flush_prepare, bus_close_cb);
	}
	if (bus->async_init) {
		uv_close((uv_handle_t *)&bus->async, bus_close_cb);
	} else {
		pthread_mutex_destroy(&bus->lock);
		free(bus);
	}
}
