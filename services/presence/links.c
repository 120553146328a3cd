// The broker and auction links: Envelopes checked for the service token and decoded, their
// bodies handed to the core; refusals answered with an Envelope carrying an ErrorReply.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "links.h"
#include "rb_bus.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_secret.h"

struct presence_links {
	presence_core *core;
	rb_bus *broker;
	rb_bus *auction;
	char token[128];
	uint32_t presence_id; // RINGBID_PRESENCE_ID, on every Envelope sent
	void (*after)(void *arg);
	void *after_arg;
};

static void after(presence_links *l)
{
	if (l->after != NULL)
		l->after(l->after_arg);
}

static void send_env(presence_links *l, rb_bus *bus, const Ringbid__Envelope *e)
{
	Ringbid__Envelope copy = *e;
	copy.token = l->token;
	copy.presence_id = l->presence_id;
	nng_msg *msg = NULL;
	int rv = rb_pb_pack(&copy.base, RB_PB_MAX_SERVICE, &msg);
	if (rv != 0) {
		rb_error("cannot pack a message for the %s: %s",
		         bus == l->broker ? "broker" : "auction", rb_err_str(rv));
		return;
	}
	rb_bus_send(bus, msg);
}

void presence_links_to_broker(presence_links *l, const Ringbid__Envelope *e)
{
	send_env(l, l->broker, e);
}

void presence_links_to_auction(presence_links *l, const Ringbid__Envelope *e)
{
	if (rb_bus_peers(l->auction) == 0)
		return;
	send_env(l, l->auction, e);
}

bool presence_links_broker_up(const presence_links *l)
{
	return rb_bus_peers(l->broker) > 0;
}

bool presence_links_auction_up(const presence_links *l)
{
	return rb_bus_peers(l->auction) > 0;
}

static void refuse(presence_links *l, rb_bus *bus, int code, const char *text)
{
	bool broker = bus == l->broker;
	presence_stats *st = presence_core_stats(l->core);
	if (broker)
		st->refused_broker++;
	else
		st->refused_auction++;
	rb_warn("%s link: refused a message: %s (%s)", broker ? "broker" : "auction", text,
	        rb_err_name(code));
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)text;
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_ERROR;
	e.error = &er;
	send_env(l, bus, &e);
}

// Decodes msg (freed here) and checks its token. Returns the Envelope (rb_pb_free it) or NULL
// after refusing it.
static Ringbid__Envelope *decode(presence_links *l, rb_bus *bus, nng_msg *msg)
{
	ProtobufCMessage *pm = NULL;
	int rv = rb_pb_unpack_msg(&ringbid__envelope__descriptor, msg, RB_PB_MAX_SERVICE, &pm);
	nng_msg_free(msg);
	if (rv != 0) {
		refuse(l, bus, rv, rv == RB_ETOOBIG ? "message too large" : "message not readable");
		return NULL;
	}
	Ringbid__Envelope *e = (Ringbid__Envelope *)pm;
	if (!rb_str_equal_ct(e->token, l->token)) {
		rb_pb_free(pm);
		refuse(l, bus, RB_EAUTH, "wrong service token");
		return NULL;
	}
	return e;
}

static void peer_error(const char *peer, const Ringbid__ErrorReply *er)
{
	// Never answered: two services must not trade refusals forever.
	rb_warn("the %s refused a message of ours: %s: %.200s", peer, rb_err_name(er->code),
	        er->message != NULL ? er->message : "");
}

static void broker_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	presence_links *l = arg;
	Ringbid__Envelope *e = decode(l, bus, msg);
	if (e == NULL) {
		after(l);
		return;
	}
	int rv = 0;
	const char *what = NULL;
	switch (e->body_case) {
	case RINGBID__ENVELOPE__BODY_OFFER:
		rv = presence_core_offer(l->core, e->offer);
		what = "offer fields not valid";
		break;
	case RINGBID__ENVELOPE__BODY_OFFER_CANCEL:
		rv = presence_core_offer_cancel(l->core, e->offer_cancel);
		what = "offer cancel fields not valid";
		break;
	case RINGBID__ENVELOPE__BODY_CALL_ENDED:
		rv = presence_core_call_ended(l->core, e->call_ended);
		what = "call ended fields not valid";
		break;
	case RINGBID__ENVELOPE__BODY_CALL_CONNECTED:
		rv = presence_core_call_connected(l->core, e->call_connected);
		what = "call connected fields not valid";
		break;
	case RINGBID__ENVELOPE__BODY_CALL_SYNC:
		rb_info("call sync from the broker: %zu calls at agents", e->call_sync->n_calls);
		rv = presence_core_call_sync(l->core, e->call_sync);
		what = "call sync entries not valid";
		break;
	case RINGBID__ENVELOPE__BODY_ERROR:
		peer_error("broker", e->error);
		break;
	default:
		rv = RB_EINVAL;
		what = "not a message for presence";
		break;
	}
	if (rv == RB_EINVAL)
		refuse(l, bus, rv, what);
	else if (rv != 0)
		rb_error("broker link: %s", rb_err_str(rv));
	rb_pb_free(&e->base);
	after(l);
}

static void auction_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	presence_links *l = arg;
	Ringbid__Envelope *e = decode(l, bus, msg);
	if (e == NULL) {
		after(l);
		return;
	}
	switch (e->body_case) {
	case RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST:
		if (presence_core_snapshot(l->core) != 0)
			rb_error("auction link: out of memory for a snapshot");
		break;
	case RINGBID__ENVELOPE__BODY_ERROR:
		peer_error("auction", e->error);
		break;
	default:
		refuse(l, bus, RB_EINVAL, "not a message for presence");
		break;
	}
	rb_pb_free(&e->base);
	after(l);
}

static void send_stats(presence_links *l);

static void broker_pipe(rb_bus *bus, nng_pipe p, bool added, void *arg)
{
	(void)bus;
	(void)p;
	presence_links *l = arg;
	if (added) {
		rb_info("broker link up (presence instance %u)", l->presence_id);
		// The broker learns which instance this connection speaks for from the Envelopes
		// it receives, and only then sends this instance its CallSync: say so at once
		// rather than at the next janitor tick.
		send_stats(l);
	} else {
		rb_warn("broker link down");
	}
	after(l);
}

static void auction_pipe(rb_bus *bus, nng_pipe p, bool added, void *arg)
{
	(void)bus;
	(void)p;
	presence_links *l = arg;
	if (added) {
		rb_info("auction link up");
		// The auction's state is soft: it rebuilds availability from this.
		if (presence_core_snapshot(l->core) != 0)
			rb_error("auction link: out of memory for a snapshot");
	} else {
		rb_warn("auction link down");
	}
	after(l);
}

static void send_stats(presence_links *l)
{
	Ringbid__AgentCount counts[PRESENCE_NSTATES];
	Ringbid__AgentCount *ptrs[PRESENCE_NSTATES];
	presence_core_stats_msg(l->core, counts, ptrs);
	Ringbid__PresenceStats ps = RINGBID__PRESENCE_STATS__INIT;
	ps.n_agents = PRESENCE_NSTATES;
	ps.agents = ptrs;
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_PRESENCE_STATS;
	e.presence_stats = &ps;
	send_env(l, l->broker, &e);
}

void presence_links_janitor(presence_links *l)
{
	if (rb_bus_peers(l->broker) > 0)
		send_stats(l);
}

int presence_links_new(uv_loop_t *loop, presence_core *core, const char *token,
                       uint32_t presence_id, void (*after_fn)(void *arg), void *arg,
                       presence_links **out)
{
	if (presence_id > PRESENCE_INSTANCE_MAX)
		return RB_EINVAL;
	presence_links *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return RB_ENOMEM;
	if (strlen(token) >= sizeof(l->token)) {
		free(l);
		return RB_ETOOBIG;
	}
	snprintf(l->token, sizeof(l->token), "%s", token);
	l->core = core;
	l->presence_id = presence_id;
	l->after = after_fn;
	l->after_arg = arg;
	// Service links: see docs/delivery.md, "Batches".
	rb_bus_opts bo = {.recv_max = RB_PB_MAX_SERVICE, .name = "presence-broker", .batch = true};
	int rv = rb_bus_new(loop, RB_BUS_PAIR, &bo, &l->broker);
	if (rv == 0) {
		rb_bus_opts ao = {
		        .recv_max = RB_PB_MAX_SERVICE, .name = "presence-auction", .batch = true};
		rv = rb_bus_new(loop, RB_BUS_PAIR, &ao, &l->auction);
	}
	if (rv != 0) {
		rb_bus_free(l->broker);
		free(l);
		return rv;
	}
	rb_bus_on_recv(l->broker, broker_recv, l);
	rb_bus_on_pipe(l->broker, broker_pipe, l);
	rb_bus_on_recv(l->auction, auction_recv, l);
	rb_bus_on_pipe(l->auction, auction_pipe, l);
	*out = l;
	return 0;
}

int presence_links_dial(presence_links *l, const char *broker_url, const char *auction_url)
{
	int rv = rb_bus_dial(l->broker, broker_url);
	if (rv != 0) {
		rb_error("cannot dial the broker at %s: %s", broker_url, rb_err_str(rv));
		return rv;
	}
	rv = rb_bus_dial(l->auction, auction_url);
	if (rv != 0)
		rb_error("cannot dial the auction at %s: %s", auction_url, rb_err_str(rv));
	return rv;
}

void presence_links_free(presence_links *l)
{
	if (l == NULL)
		return;
	rb_bus_free(l->broker);
	rb_bus_free(l->auction);
	memset(l->token, 0, sizeof(l->token));
	free(l);
}
