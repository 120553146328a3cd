// nng sockets driven from a libuv loop: every callback here runs on the loop thread, and no
// call here blocks it (sends are asynchronous and queued).
//
// nng completes aios on its own threads; those completions are put on a locked queue and the
// loop is woken with uv_async_send, which coalesces wake-ups, so the loop drains the whole
// queue each time.
#ifndef RB_BUS_H
#define RB_BUS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <uv.h>

typedef enum {
	RB_BUS_PAIR,      // pair1: one peer, messages both ways (service links)
	RB_BUS_PAIR_POLY, // pair1 polyamorous: many peers; sends go to the pipe set on the message
	RB_BUS_REP,       // rep0 server: each request gets a reply handle, replies may be deferred
	RB_BUS_REQ,       // req0 client: requests with a callback for the reply
} rb_bus_kind;

typedef struct rb_bus rb_bus;
typedef struct rb_bus_req rb_bus_req; // one received request on a REP bus, awaiting its reply

// A message arrived (PAIR, PAIR_POLY). msg is the callback's to free or keep; nng_msg_get_pipe
// tells the sender.
typedef void (*rb_bus_recv_fn)(rb_bus *bus, nng_msg *msg, void *arg);
// A request arrived (REP). msg is the callback's; req must be answered exactly once with
// rb_bus_reply (now or later) or dropped with rb_bus_reply_drop.
typedef void (*rb_bus_request_fn)(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg);
// A peer connected (added true) or went away (added false).
typedef void (*rb_bus_pipe_fn)(rb_bus *bus, nng_pipe pipe, bool added, void *arg);
// A REQ completed: err 0 and reply (the callback's to free), or err < 0 and reply NULL.
typedef void (*rb_bus_reply_fn)(rb_bus *bus, int err, nng_msg *reply, void *arg);

typedef struct rb_bus_opts {
	size_t recv_max;      // NNG_OPT_RECVMAXSZ, set before any listen or dial (required)
	int send_timeout_ms;  // a queued send still waiting this long is dropped (default 5000)
	int reconnect_min_ms; // dialer backoff (default 100)
	int reconnect_max_ms; // (default 2000)
	int req_resend_ms;    // REQ: resend after this long without a reply (default 1000)
	int rep_parallel;     // REP: requests received concurrently (default 64)
	const char *name;     // for logs ("broker-auction")
	// Service links (PAIR, PAIR_POLY; both ends must set it): messages may travel packed,
	// several in one nng message. A PAIR bus then packs what it is given in one loop turn
	// and sends it as the turn ends; every batch bus unpacks what it receives, and the
	// receive callback still gets one message at a time, in order. A polyamorous bus sends
	// unpacked (its messages go to different peers).
	bool batch;
} rb_bus_opts;

// Creates a socket of kind on loop. On success *out is the caller's (rb_bus_free).
int rb_bus_new(uv_loop_t *loop, rb_bus_kind kind, const rb_bus_opts *opts, rb_bus **out);

// Callbacks; set before rb_bus_listen/rb_bus_dial. arg is passed back untouched.
void rb_bus_on_recv(rb_bus *bus, rb_bus_recv_fn fn, void *arg);
void rb_bus_on_request(rb_bus *bus, rb_bus_request_fn fn, void *arg);
void rb_bus_on_pipe(rb_bus *bus, rb_bus_pipe_fn fn, void *arg);

// TLS for the tls+tcp:// listeners and dialers made after this call (a dialer checks the peer's
// name only if cfg has nng_tls_config_server_name). The bus holds its own reference: cfg stays
// the caller's to free. Returns 0 or RB_EINVAL.
int rb_bus_set_tls(rb_bus *bus, nng_tls_config *cfg);

// Listens on url and starts receiving. Returns 0 or a code (RB_EBUSY: address in use).
int rb_bus_listen(rb_bus *bus, const char *url);
// Dials url without blocking; nng reconnects with backoff for as long as the bus lives.
int rb_bus_dial(rb_bus *bus, const char *url);

// Sends msg (PAIR, PAIR_POLY). Always takes msg, even on failure. Never blocks: the message is
// queued and sent when the peer can take it; dropped (and counted) after send_timeout_ms.
int rb_bus_send(rb_bus *bus, nng_msg *msg);

// Sends a request (REQ); fn is called on the loop exactly once, with the reply or with
// RB_ETIMEDOUT after timeout_ms, or RB_ECLOSED when the bus is freed first. Takes msg always.
// Returns 0, or a code without calling fn.
int rb_bus_request(rb_bus *bus, nng_msg *msg, int timeout_ms, rb_bus_reply_fn fn, void *arg);

// Answers a request (REP). Takes req and reply, always.
void rb_bus_reply(rb_bus_req *req, nng_msg *reply);
// Drops a request without an answer (the client's REQ resends or times out). Takes req.
void rb_bus_reply_drop(rb_bus_req *req);
// The pipe a pending request came from.
nng_pipe rb_bus_req_pipe(const rb_bus_req *req);

// Number of peers connected now.
int rb_bus_peers(const rb_bus *bus);
// Messages dropped because they could not be sent in time.
uint64_t rb_bus_dropped(const rb_bus *bus);
// Batches refused as malformed (buses with opts.batch).
uint64_t rb_bus_malformed(const rb_bus *bus);

// Called for each message unpacked, in order; returns false to stop.
typedef bool (*rb_bus_part_fn)(const void *part, size_t len, void *arg);
// For whoever reads a batch link without a bus (tools and tests speaking raw nng): walks what
// one nng message carried (its body, len bytes). A plain message is one part, itself; a batch
// (a protobuf Batch, docs/delivery.md) is decoded whole and then each of its messages is passed
// to fn (NULL: only counted). Returns the number of messages, or RB_EDECODE for a malformed
// batch, without calling fn.
int rb_bus_unpack(const void *buf, size_t len, rb_bus_part_fn fn, void *arg);

// Closes the socket, cancels pending work (REQ callbacks get RB_ECLOSED, before this returns),
// frees the bus once libuv has released its handles. NULL is fine. A request still unanswered
// stays a valid handle: rb_bus_reply/rb_bus_reply_drop on it then only free it. Call on the
// loop thread; afterwards run the loop (uv_run) so the close completes.
void rb_bus_free(rb_bus *bus);

#endif
