// The broker's service links: auction (Enqueue/Match/Dequeue), presence (Offer/OfferResult/
// CallSync/stats) and the billing dialers the CDR outbox and the outcomes send on.
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "presence_link.h"
#include "rb_config.h"

#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_secret.h"
#include "rb_time.h"

static const char *const link_names[BROKER_NLINKS] = {"calls", "auction", "presence", "billing"};

static const char *loggable_id(const char *id)
{
	return id != NULL && rb_valid_id(id, BROKER_ID_MAX) ? id : NULL;
}

// Tells the peer why its message changed nothing, logs it and counts it.
static void refuse(broker *b, broker_link link, const char *call_id, uint64_t agent_id, int code,
                   const char *why)
{
	rb_logf(RB_LOG_WARN, call_id, agent_id, "%s link: refused (%s): %s", link_names[link],
	        rb_err_name(code), why);
	broker_refused(b, link);
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)why;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_ERROR;
	env.error = &er;
	broker_send_now(b, link, &env);
}

// Decodes and authenticates one envelope; on failure answers and returns NULL. Frees msg.
static Ringbid__Envelope *open_envelope(broker *b, broker_link link, nng_msg *msg)
{
	Ringbid__Envelope *env = NULL;
	int rc = rb_pb_unpack_msg(&ringbid__envelope__descriptor, msg, RB_PB_MAX_SERVICE,
	                          (ProtobufCMessage **)&env);
	nng_msg_free(msg);
	if (rc != 0) {
		refuse(b, link, NULL, 0, rc,
		       rc == RB_ETOOBIG ? "message too large" : "message is not an Envelope");
		return NULL;
	}
	if (!rb_str_equal_ct(env->token, b->svc.token)) {
		rb_pb_free(&env->base);
		refuse(b, link, NULL, 0, RB_EAUTH, "wrong service token");
		return NULL;
	}
	return env;
}

static void peer_error(broker_link link, const Ringbid__ErrorReply *er)
{
	rb_logf(RB_LOG_WARN, NULL, 0, "%s link: the peer refused a message (%s): %.200s",
	        link_names[link], rb_err_name(er->code),
	        er->message && rb_valid_text(er->message, 200) ? er->message : "");
}

// --- auction ------------------------------------------------------------------------------

static void enqueue_all(broker *b)
{
	unsigned n = 0;
	for (broker_call *c = broker_book_waiting_first(&b->book); c != NULL;
	     c = broker_book_waiting_next(&b->book, c)) {
		if (c->state == BROKER_CALL_QUEUED) {
			broker_send_enqueue(b, c);
			n++;
		}
	}
	rb_logf(RB_LOG_INFO, NULL, 0, "auction link up: %u waiting calls enqueued", n);
}

static void on_match(broker *b, const Ringbid__Match *m)
{
	const char *id = m->call_id;
	if (!rb_valid_id(id, BROKER_ID_MAX) || m->agent_id == 0) {
		refuse(b, BROKER_LINK_AUCTION, loggable_id(id), m->agent_id, RB_EINVAL,
		       "Match needs a call_id and an agent_id");
		return;
	}
	if (m->decision != NULL && m->decision->agent_id != 0 &&
	    m->decision->agent_id != m->agent_id) {
		refuse(b, BROKER_LINK_AUCTION, id, m->agent_id, RB_EINVAL,
		       "the decision names another agent");
		broker_send_dequeue(b, id, m->agent_id);
		return;
	}
	broker_call *c = broker_book_find(&b->book, id);
	if (c == NULL) {
		rb_logf(RB_LOG_INFO, id, m->agent_id, "match for an unknown call: agent released");
		broker_send_dequeue(b, id, m->agent_id);
		return;
	}
	if (c->state != BROKER_CALL_QUEUED) {
		// A repeat of the match behind the current offer: the agent is not free.
		if (c->agent_id == m->agent_id &&
		    (c->state == BROKER_CALL_OFFERED || c->state == BROKER_CALL_CONNECTED)) {
			rb_logf(RB_LOG_DEBUG, id, m->agent_id, "repeated match ignored");
			return;
		}
		rb_logf(RB_LOG_INFO, id, m->agent_id, "match for a %s call: agent released",
		        broker_call_state_name(c->state));
		broker_send_dequeue(b, id, m->agent_id);
		return;
	}
	broker_call *holder = broker_book_agent_call(&b->book, m->agent_id);
	// In both cases below the call is still waiting: release the agent and put the call
	// back in line at once (or, for a repeated bounce, soon), rather than leave it for the
	// janitor's re-enqueue a second later.
	if (holder != NULL) {
		// Usually a race, not a fault: the agent's hang-up of its last call is still on
		// its way from presence while the auction already saw the agent free again.
		// Should the two sides disagree for longer (a busy broker still has the hang-up
		// in its queue, or it was lost), re-enqueueing at once would bounce the call
		// between broker and auction; within 100 ms of the last bounce the call is
		// enqueued again 50 ms later instead, by when the hang-up has usually been read.
		uint64_t now = rb_mono_us();
		bool bounce =
		        c->busy_release_mono_us != 0 && now - c->busy_release_mono_us < 100000;
		rb_logf(bounce ? RB_LOG_WARN : RB_LOG_INFO, id, m->agent_id,
		        "match for an agent who still holds call %s: released", holder->id);
		c->busy_release_mono_us = now;
		broker_send_dequeue(b, id, m->agent_id);
		if (!bounce)
			broker_send_enqueue(b, c);
		else
			broker_requeue_soon(b, c);
		return;
	}
	if (broker_call_excluded(c, m->agent_id)) {
		rb_logf(RB_LOG_WARN, id, m->agent_id,
		        "match for an agent excluded from this call: released");
		broker_send_dequeue(b, id, m->agent_id);
		broker_send_enqueue(b, c);
		return;
	}
	broker_decision d;
	if (m->decision != NULL)
		broker_decision_from_pb(m->decision, &d);
	uint64_t offer_id = 0;
	int rc = broker_offer_id(b, &offer_id);
	if (rc == 0)
		rc = broker_change(b, c, BROKER_EV_OFFER, m->agent_id, offer_id,
		                   m->decision ? &d : NULL);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, id, m->agent_id, "cannot offer the call: %s", rb_err_str(rc));
		broker_send_dequeue(b, id, m->agent_id);
		return;
	}
	rb_logf(RB_LOG_INFO, id, m->agent_id, "offer %llu (%s, score %.2f, %u eligible)",
	        (unsigned long long)offer_id, m->decision ? d.reason : "no decision",
	        m->decision ? d.score : 0.0, m->decision ? d.eligible : 0);
}

static void auction_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	broker *b = arg;
	(void)bus;
	Ringbid__Envelope *env = open_envelope(b, BROKER_LINK_AUCTION, msg);
	if (env == NULL)
		return;
	if (b->stopping) {
		rb_pb_free(&env->base);
		return;
	}
	switch (env->body_case) {
	case RINGBID__ENVELOPE__BODY_MATCH:
		if (broker_presence_match(b, env->match))
			on_match(b, env->match);
		break;
	case RINGBID__ENVELOPE__BODY_ERROR:
		peer_error(BROKER_LINK_AUCTION, env->error);
		break;
	default:
		refuse(b, BROKER_LINK_AUCTION, NULL, 0, RB_EINVAL,
		       "unexpected message on the auction link");
		break;
	}
	rb_pb_free(&env->base);
}

static void auction_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	broker *b = arg;
	(void)bus;
	(void)pipe;
	if (added && !b->stopping)
		enqueue_all(b);
	else if (!added)
		rb_logf(RB_LOG_WARN, NULL, 0, "auction link down");
}

// --- presence -----------------------------------------------------------------------------
// Several presence instances may connect, each holding some agents' sessions. Each Envelope
// from presence names its instance; offers and call changes go to the instance holding the
// agent only, so that no instance ever hears of another's offers.

typedef struct presence_conn {
	uint32_t pipe;
	bool known; // presence_id is set
	uint32_t presence_id;
	uint64_t order; // when it was identified: the newest connection of an instance wins
	bool have_stats;
	uint32_t agents[BROKER_CALL_NSTATES];
	UT_hash_handle hh;
} presence_conn;

typedef struct agent_home {
	uint64_t agent_id;
	uint32_t presence_id;
	UT_hash_handle hh;
} agent_home;

static struct {
	presence_conn *conns;
	agent_home *agents;
	uint32_t instances;
	uint32_t cur_pipe;   // the connection whose message is being handled (its refusals)
	uint64_t identified; // connections identified so far
	uint64_t sync_id;    // the last CallSync id handed out
} peers = {.instances = 1};

void broker_presence_fini(void)
{
	presence_conn *c, *ctmp;
	HASH_ITER(hh, peers.conns, c, ctmp)
	{
		HASH_DEL(peers.conns, c);
		free(c);
	}
	agent_home *h, *htmp;
	HASH_ITER(hh, peers.agents, h, htmp)
	{
		HASH_DEL(peers.agents, h);
		free(h);
	}
	peers.cur_pipe = 0;
}

void broker_presence_reset(uint32_t instances)
{
	broker_presence_fini();
	peers.instances = instances == 0 ? 1 : instances;
}

uint64_t broker_presence_sync_id(void)
{
	// Counting on from the clock at the first sync keeps the ids of a restarted broker apart
	// from its predecessor's, whose unfinished sync a presence instance may still hold open.
	if (peers.sync_id == 0)
		peers.sync_id = rb_now_us();
	return ++peers.sync_id;
}

void broker_presence_restored(const broker_book *book)
{
	// The journal says where each call's agent was; a presence instance speaking of the agent
	// later does not move it (broker_presence_agent_at), only a newer Match does.
	for (const broker_call *c = book->by_agent; c != NULL; c = c->hh_agent.next)
		broker_presence_agent_at(c->agent_id, c->presence_id, true);
}

static presence_conn *conn_find(uint32_t pipe)
{
	presence_conn *c = NULL;
	HASH_FIND(hh, peers.conns, &pipe, sizeof(pipe), c);
	return c;
}

int broker_presence_heard(uint32_t pipe, uint32_t presence_id)
{
	if (presence_id > BROKER_PRESENCE_ID_MAX)
		return RB_EINVAL;
	presence_conn *c = conn_find(pipe);
	if (c != NULL && c->known)
		return c->presence_id == presence_id ? 0 : RB_EINVAL;
	if (c == NULL) {
		c = calloc(1, sizeof(*c));
		if (c == NULL)
			return RB_ENOMEM;
		c->pipe = pipe;
		HASH_ADD(hh, peers.conns, pipe, sizeof(c->pipe), c);
	}
	c->known = true;
	c->presence_id = presence_id;
	c->order = ++peers.identified;
	return 1;
}

void broker_presence_gone(uint32_t pipe)
{
	presence_conn *c = conn_find(pipe);
	if (c == NULL)
		return;
	HASH_DEL(peers.conns, c);
	free(c);
}

uint32_t broker_presence_pipe_of(uint32_t presence_id)
{
	// The newest connection wins: an instance that restarted may be heard on its new
	// connection before the loss of its old one is announced.
	const presence_conn *best = NULL;
	for (presence_conn *c = peers.conns; c != NULL; c = c->hh.next)
		if (c->known && c->presence_id == presence_id && (!best || c->order > best->order))
			best = c;
	return best ? best->pipe : 0;
}

bool broker_presence_instance_of(uint32_t pipe, uint32_t *presence_id)
{
	presence_conn *c = conn_find(pipe);
	if (c == NULL || !c->known)
		return false;
	*presence_id = c->presence_id;
	return true;
}

void broker_presence_agent_at(uint64_t agent_id, uint32_t presence_id, bool sure)
{
	if (agent_id == 0 || presence_id > BROKER_PRESENCE_ID_MAX)
		return;
	agent_home *h = NULL;
	HASH_FIND(hh, peers.agents, &agent_id, sizeof(agent_id), h);
	if (h != NULL) {
		if (sure)
			h->presence_id = presence_id;
		return;
	}
	h = calloc(1, sizeof(*h));
	if (h == NULL) {
		rb_logf(RB_LOG_ERROR, NULL, agent_id, "presence link: out of memory for the agent");
		return;
	}
	h->agent_id = agent_id;
	h->presence_id = presence_id;
	HASH_ADD(hh, peers.agents, agent_id, sizeof(h->agent_id), h);
}

bool broker_presence_agent_instance(uint64_t agent_id, uint32_t *presence_id)
{
	agent_home *h = NULL;
	HASH_FIND(hh, peers.agents, &agent_id, sizeof(agent_id), h);
	if (h != NULL) {
		*presence_id = h->presence_id;
		return true;
	}
	if (peers.instances <= 1) {
		*presence_id = 0;
		return true;
	}
	return false;
}

size_t broker_presence_targets(uint64_t agent_id, uint32_t *pipes, size_t max)
{
	uint32_t pid;
	if (broker_presence_agent_instance(agent_id, &pid)) {
		uint32_t pipe = broker_presence_pipe_of(pid);
		if (pipe == 0 || max == 0)
			return 0;
		pipes[0] = pipe;
		return 1;
	}
	size_t n = 0;
	for (presence_conn *c = peers.conns; c != NULL && n < max; c = c->hh.next)
		if (c->known)
			pipes[n++] = c->pipe;
	return n;
}

void broker_presence_stats(uint32_t pipe, const uint32_t *counts, size_t n)
{
	presence_conn *c = conn_find(pipe);
	if (c == NULL)
		return;
	memset(c->agents, 0, sizeof(c->agents));
	for (size_t i = 0; i < n && i < BROKER_CALL_NSTATES; i++)
		c->agents[i] = counts[i];
	c->have_stats = true;
}

bool broker_presence_stats_sum(uint32_t *out, size_t n)
{
	bool any = false;
	memset(out, 0, n * sizeof(*out));
	for (presence_conn *c = peers.conns; c != NULL; c = c->hh.next) {
		if (!c->have_stats)
			continue;
		any = true;
		for (size_t i = 0; i < n && i < BROKER_CALL_NSTATES; i++)
			out[i] = c->agents[i] > UINT32_MAX - out[i] ? UINT32_MAX
			                                            : out[i] + c->agents[i];
	}
	return any;
}

static const char *body_name(Ringbid__Envelope__BodyCase body)
{
	switch (body) {
	case RINGBID__ENVELOPE__BODY_OFFER:
		return "Offer";
	case RINGBID__ENVELOPE__BODY_OFFER_CANCEL:
		return "OfferCancel";
	case RINGBID__ENVELOPE__BODY_CALL_ENDED:
		return "CallEnded";
	case RINGBID__ENVELOPE__BODY_CALL_CONNECTED:
		return "CallConnected";
	case RINGBID__ENVELOPE__BODY_CALL_SYNC:
		return "CallSync";
	default:
		return "an answer";
	}
}

// A message for one more connection, held like broker_send's until the journal has what
// caused it.
typedef struct presence_gated {
	broker *b;
	nng_msg *msg;
	uint64_t agent_id; // what broker_presence_hold counted
	bool sync;
} presence_gated;

static void presence_gated_done(int err, void *arg)
{
	presence_gated *g = arg;
	broker_presence_hold(g->b, g->agent_id, g->sync, -1);
	rb_bus *bus = err == 0 ? broker_presence_bus(g->b, g->msg) : NULL;
	if (bus != NULL)
		rb_bus_send(bus, g->msg);
	else
		nng_msg_free(g->msg);
	free(g);
}

// agent_id and sync: what the message is about, for broker_presence_hold.
static void send_to_pipe(broker *b, nng_msg *msg, uint32_t pipe, bool gated, uint64_t agent_id,
                         bool sync)
{
	nng_pipe p = NNG_PIPE_INITIALIZER;
	p.id = pipe;
	nng_msg_set_pipe(msg, p);
	if (!gated) {
		rb_bus *bus = broker_presence_bus(b, msg);
		if (bus != NULL)
			rb_bus_send(bus, msg);
		else
			nng_msg_free(msg);
		return;
	}
	presence_gated *g = malloc(sizeof(*g));
	if (g == NULL) {
		nng_msg_free(msg);
		return;
	}
	g->b = b;
	g->msg = msg;
	g->agent_id = agent_id;
	g->sync = sync;
	// Counted so that an Offer to the agent made meanwhile waits behind it (core.c).
	if (broker_journal_after(b->journal, presence_gated_done, g) != 0) {
		nng_msg_free(msg);
		free(g);
		return;
	}
	broker_presence_hold(b, agent_id, sync, +1);
}

bool broker_presence_about(const Ringbid__Envelope *env, uint64_t *agent_id, const char **call_id,
                           bool *sync)
{
	*agent_id = 0;
	*call_id = NULL;
	*sync = env->body_case == RINGBID__ENVELOPE__BODY_CALL_SYNC;
	switch (env->body_case) {
	case RINGBID__ENVELOPE__BODY_OFFER:
		*agent_id = env->offer->agent_id;
		return true;
	case RINGBID__ENVELOPE__BODY_OFFER_CANCEL:
		*agent_id = env->offer_cancel->agent_id;
		*call_id = env->offer_cancel->call_id;
		return true;
	case RINGBID__ENVELOPE__BODY_CALL_ENDED:
		*agent_id = env->call_ended->agent_id;
		*call_id = env->call_ended->call_id;
		return true;
	case RINGBID__ENVELOPE__BODY_CALL_CONNECTED:
		*agent_id = env->call_connected->agent_id;
		*call_id = env->call_connected->call_id;
		return true;
	default:
		return false;
	}
}

int broker_presence_route(broker *b, const Ringbid__Envelope *env, nng_msg *msg, bool gated)
{
	uint32_t pipes[BROKER_PRESENCE_INSTANCES];
	size_t n = 0;
	uint64_t agent_id;
	const char *call_id;
	bool sync;
	// Answers (refusals) go back to the connection whose message is being handled.
	if (!broker_presence_about(env, &agent_id, &call_id, &sync) && peers.cur_pipe != 0)
		pipes[n++] = peers.cur_pipe;
	// A change of an offer, or of the call it connected, goes where that offer was made
	// (journaled with the call), even when the agent has since been placed elsewhere.
	const broker_call *c = call_id != NULL && rb_valid_id(call_id, BROKER_ID_MAX)
	                               ? broker_book_find(&b->book, call_id)
	                               : NULL;
	uint32_t pid = 0;
	bool by_call = c != NULL && broker_call_presence(c, agent_id, &pid);
	if (by_call) {
		uint32_t pipe = broker_presence_pipe_of(pid);
		if (pipe != 0)
			pipes[n++] = pipe;
	} else if (agent_id != 0) {
		n = broker_presence_targets(agent_id, pipes, BROKER_PRESENCE_INSTANCES);
		// Never an offer to more than one instance: it would reach no agent or two.
		if (n > 1 && env->body_case == RINGBID__ENVELOPE__BODY_OFFER)
			n = 0;
	}
	if (n == 0) {
		if (by_call || (agent_id != 0 && broker_presence_agent_instance(agent_id, &pid)))
			rb_logf(RB_LOG_WARN, NULL, agent_id,
			        "presence link: instance %u of the agent is not connected: %s "
			        "dropped",
			        pid, body_name(env->body_case));
		else
			rb_logf(RB_LOG_WARN, NULL, agent_id,
			        "presence link: no presence instance for %s: dropped",
			        body_name(env->body_case));
		nng_msg_free(msg);
		return 1;
	}
	for (size_t i = 1; i < n; i++) {
		nng_msg *copy = NULL;
		if (nng_msg_dup(&copy, msg) != 0) {
			rb_logf(RB_LOG_ERROR, NULL, agent_id, "presence link: out of memory");
			continue;
		}
		send_to_pipe(b, copy, pipes[i], gated, agent_id, false);
	}
	nng_pipe p = NNG_PIPE_INITIALIZER;
	p.id = pipes[0];
	nng_msg_set_pipe(msg, p);
	return 0;
}

bool broker_presence_match(broker *b, const Ringbid__Match *m)
{
	if (m->agent_id == 0 || !rb_valid_id(m->call_id, BROKER_ID_MAX))
		return true; // on_match refuses it
	if (m->presence_id > BROKER_PRESENCE_ID_MAX) {
		refuse(b, BROKER_LINK_AUCTION, m->call_id, m->agent_id, RB_EINVAL,
		       "Match with a presence_id outside 0..63");
		broker_send_dequeue(b, m->call_id, m->agent_id);
		return false;
	}
	broker_presence_agent_at(m->agent_id, m->presence_id, true);
	if (broker_presence_pipe_of(m->presence_id) != 0)
		return true;
	broker_call *c = broker_book_find(&b->book, m->call_id);
	if (c == NULL || c->state != BROKER_CALL_QUEUED)
		return true; // on_match releases the agent
	// The auction has not yet heard that the instance left (or it never connected here).
	// No offer is made: the agent is released and the call keeps its place in line; the
	// janitor enqueues it again within a second, by when the auction has let the instance's
	// agents go.
	rb_logf(RB_LOG_WARN, m->call_id, m->agent_id,
	        "match for an agent on presence instance %u, which is not connected: agent "
	        "released, the call waits",
	        m->presence_id);
	broker_send_dequeue(b, m->call_id, m->agent_id);
	return false;
}

int broker_presence_call_sync(broker *b, uint32_t presence_id, uint64_t sync_id, size_t chunk,
                              broker_sync_emit_fn emit, void *arg, size_t *count)
{
	if (count != NULL)
		*count = 0;
	if (chunk == 0)
		chunk = 1;
	// The instance's calls first, so that the last chunk is known to be the last.
	size_t total = b->book.count[BROKER_CALL_OFFERED] + b->book.count[BROKER_CALL_CONNECTED];
	broker_call **mine = total ? calloc(total, sizeof(*mine)) : NULL;
	size_t cap = total < chunk ? total : chunk;
	Ringbid__AgentCall *calls = cap ? calloc(cap, sizeof(*calls)) : NULL;
	Ringbid__AgentCall **ptrs = cap ? calloc(cap, sizeof(*ptrs)) : NULL;
	if (total && (mine == NULL || calls == NULL || ptrs == NULL)) {
		free(mine);
		free(calls);
		free(ptrs);
		return RB_ENOMEM;
	}
	// Only this instance's calls: another instance would take an offer it does not know for
	// lost, and the call could then reach two agents.
	size_t nmine = 0;
	for (broker_call *c = b->book.by_agent; c != NULL && nmine < total; c = c->hh_agent.next)
		if (c->presence_id == presence_id)
			mine[nmine++] = c;
	int rc = 0;
	size_t done = 0;
	// At least one message, so the instance always hears the broker's picture, empty or not.
	do {
		size_t n = 0;
		for (; done < nmine && n < cap; done++, n++) {
			const broker_call *c = mine[done];
			broker_limits lim;
			broker_programs_limits(&b->programs, c->program, &lim);
			Ringbid__AgentCall *ac = &calls[n];
			ringbid__agent_call__init(ac);
			ac->agent_id = c->agent_id;
			ac->call_id = (char *)c->id;
			ac->offer_id = c->state == BROKER_CALL_OFFERED ? c->offer_id : 0;
			ac->state = (Ringbid__CallState)c->state;
			ac->program = (char *)c->program;
			ac->wrap_up_s = lim.wrap_up_s;
			ac->answered_us = c->answered_us;
			ptrs[n] = ac;
		}
		Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
		cs.n_calls = n;
		cs.calls = ptrs;
		cs.first = done == n;
		cs.last = done == nmine;
		cs.sync_id = sync_id;
		rc = emit(&cs, arg);
		if (rc == 0 && count != NULL)
			*count += n;
	} while (rc == 0 && done < nmine);
	free(mine);
	free(calls);
	free(ptrs);
	return rc;
}

typedef struct sync_send {
	broker *b;
	uint32_t pipe;
} sync_send;

static int send_sync_chunk(const Ringbid__CallSync *cs, void *arg)
{
	sync_send *s = arg;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_CALL_SYNC;
	env.call_sync = (Ringbid__CallSync *)cs;
	env.token = s->b->svc.token;
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&env.base, RB_PB_MAX_SERVICE, &msg);
	if (rc != 0)
		return rc;
	send_to_pipe(s->b, msg, s->pipe, true, 0, true);
	return 0;
}

static void send_call_sync_to(broker *b, uint32_t presence_id, uint32_t pipe)
{
	sync_send s = {.b = b, .pipe = pipe};
	uint64_t sync_id = broker_presence_sync_id();
	size_t sent = 0;
	int rc = broker_presence_call_sync(b, presence_id, sync_id, BROKER_SYNC_CHUNK,
	                                   send_sync_chunk, &s, &sent);
	if (rc != 0) {
		// Without its last chunk the instance withdraws nothing; the calls sent so far
		// are still settled one by one.
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "presence instance %u up: CallSync %llu cut short after %zu calls: %s",
		        presence_id, (unsigned long long)sync_id, sent, rb_err_str(rc));
		return;
	}
	rb_logf(RB_LOG_INFO, NULL, 0,
	        "presence instance %u up: %zu calls at its agents synchronised (sync %llu)",
	        presence_id, sent, (unsigned long long)sync_id);
}

static void on_offer_result(broker *b, const Ringbid__OfferResult *r)
{
	const char *id = r->call_id;
	if (!rb_valid_id(id, BROKER_ID_MAX) || r->offer_id == 0 || r->agent_id == 0) {
		refuse(b, BROKER_LINK_PRESENCE, loggable_id(id), r->agent_id, RB_EINVAL,
		       "OfferResult needs offer_id, call_id and agent_id");
		return;
	}
	if (r->result < RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED ||
	    r->result > RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED) {
		refuse(b, BROKER_LINK_PRESENCE, id, r->agent_id, RB_EINVAL, "unknown offer result");
		return;
	}
	bool accepted = r->result == RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED;
	broker_call *c = broker_book_find(&b->book, id);
	if (c != NULL && c->offer_id == r->offer_id && c->state == BROKER_CALL_OFFERED) {
		if (c->agent_id != r->agent_id) {
			refuse(b, BROKER_LINK_PRESENCE, id, r->agent_id, RB_EINVAL,
			       "the offer was made to another agent");
			return;
		}
		broker_event_kind kind;
		const char *what;
		switch (r->result) {
		case RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED:
			kind = BROKER_EV_CONNECT;
			what = "accepted: connected";
			break;
		case RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED:
			kind = BROKER_EV_REFUSED;
			what = "refused (agent not available): back in line";
			break;
		case RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED:
			kind = BROKER_EV_DECLINED;
			what = "declined: back in line";
			break;
		case RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT:
			kind = BROKER_EV_OFFER_TIMEOUT;
			what = "ring timeout: back in line";
			break;
		default:
			kind = BROKER_EV_OFFER_LOST;
			what = "agent lost: back in line";
			break;
		}
		int rc = broker_change(b, c, kind, r->agent_id, r->offer_id, NULL);
		if (rc != 0) {
			rb_logf(RB_LOG_ERROR, id, r->agent_id, "offer %llu result not applied: %s",
			        (unsigned long long)r->offer_id, rb_err_str(rc));
			return;
		}
		rb_logf(RB_LOG_INFO, id, r->agent_id, "offer %llu %s",
		        (unsigned long long)r->offer_id, what);
		return;
	}
	// A repeat of the result that connected the call changes nothing; presence, which
	// repeats it when it has not heard the confirmation, is told again.
	if (c != NULL && accepted && c->offer_id == r->offer_id && c->agent_id == r->agent_id &&
	    (c->state == BROKER_CALL_CONNECTED ||
	     (c->state == BROKER_CALL_ENDED && c->disposition == BROKER_DISP_COMPLETED))) {
		if (c->state == BROKER_CALL_CONNECTED)
			broker_send_call_connected(b, c);
		return;
	}
	if (accepted) {
		// The offer was withdrawn (or the call ended) while the agent accepted: release
		// the agent, who would otherwise sit on a call that is not there.
		rb_logf(RB_LOG_INFO, id, r->agent_id,
		        "offer %llu accepted after it was withdrawn: agent released",
		        (unsigned long long)r->offer_id);
		broker_send_call_ended(b, id, c ? c->program : "", r->agent_id);
		return;
	}
	rb_logf(RB_LOG_DEBUG, id, r->agent_id, "result for a past offer %llu ignored",
	        (unsigned long long)r->offer_id);
}

static void on_agent_hangup(broker *b, const Ringbid__AgentHangup *h)
{
	const char *id = h->call_id;
	if (!rb_valid_id(id, BROKER_ID_MAX) || h->agent_id == 0) {
		refuse(b, BROKER_LINK_PRESENCE, loggable_id(id), h->agent_id, RB_EINVAL,
		       "AgentHangup needs call_id and agent_id");
		return;
	}
	broker_call *c = broker_book_find(&b->book, id);
	if (c == NULL || c->state == BROKER_CALL_ENDED) {
		// Already over here (both sides hung up, or the call is long gone): presence
		// holds the agent back from the auction until the broker answers the hang-up.
		if (c == NULL)
			rb_logf(RB_LOG_WARN, id, h->agent_id, "agent hung up an unknown call");
		broker_send_call_ended(b, id, c != NULL ? c->program : "", h->agent_id);
		return;
	}
	if (c->state != BROKER_CALL_CONNECTED || c->agent_id != h->agent_id) {
		refuse(b, BROKER_LINK_PRESENCE, id, h->agent_id, RB_ESTATE,
		       "the agent is not connected to this call");
		return;
	}
	// The marks ride on the call so that the journal entry of the hang-up and the CDR carry
	// them; a repeated hang-up (presence resends after a resync) never reaches here.
	c->sale = h->sale;
	c->resolved = h->resolved;
	int rc = broker_change(b, c, BROKER_EV_AGENT_HANGUP, h->agent_id, 0, NULL);
	if (rc != 0) {
		c->sale = false;
		c->resolved = false;
		rb_logf(RB_LOG_ERROR, id, h->agent_id, "agent hang-up not applied: %s",
		        rb_err_str(rc));
	}
}

static void on_stats(broker *b, const Ringbid__PresenceStats *s)
{
	uint32_t agents[BROKER_CALL_NSTATES] = {0};
	for (size_t i = 0; i < s->n_agents; i++) {
		const Ringbid__AgentCount *ac = s->agents[i];
		if (ac->state < RINGBID__AGENT_STATE__AGENT_OFFLINE ||
		    ac->state > RINGBID__AGENT_STATE__AGENT_WRAP_UP) {
			refuse(b, BROKER_LINK_PRESENCE, NULL, 0, RB_EINVAL,
			       "PresenceStats with an unknown agent state");
			return;
		}
		uint32_t *slot = &agents[ac->state];
		*slot = ac->count > UINT32_MAX - *slot ? UINT32_MAX : *slot + ac->count;
	}
	// Agents by state for the KPIs: the sum of every instance's latest figures.
	broker_presence_stats(peers.cur_pipe, agents, BROKER_CALL_NSTATES);
	b->have_agents = broker_presence_stats_sum(b->agents, BROKER_CALL_NSTATES);
}

// Learns the instance of the connection from the Envelope; its first word is when it gets
// its CallSync. False: refused.
static bool presence_identify(broker *b, uint32_t pipe, uint32_t presence_id)
{
	int rc = broker_presence_heard(pipe, presence_id);
	if (rc == 1) {
		rb_logf(RB_LOG_INFO, NULL, 0, "presence connection %u is instance %u", pipe,
		        presence_id);
		send_call_sync_to(b, presence_id, pipe);
		return true;
	}
	if (rc == 0)
		return true;
	if (rc == RB_EINVAL)
		refuse(b, BROKER_LINK_PRESENCE, NULL, 0, RB_EINVAL,
		       "presence_id outside 0..63 or not the instance this connection spoke for");
	else
		rb_logf(RB_LOG_ERROR, NULL, 0, "presence link: %s", rb_err_str(rc));
	return false;
}

// Each presence socket's callbacks get the broker and which instance the socket is for.
typedef struct presence_slot {
	broker *b;
	uint32_t instance;
} presence_slot;

static presence_slot slots[BROKER_PRESENCE_INSTANCES];
static uint32_t cur_slot; // the socket of peers.cur_pipe, while its message is handled

rb_bus *broker_presence_bus(broker *b, nng_msg *msg)
{
	if (b->npresence <= 1)
		return b->presence[0];
	uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
	// An answer to a connection that has not said which instance it is goes back on the
	// socket its message came in on.
	if (pipe != 0 && pipe == peers.cur_pipe)
		return b->presence[cur_slot];
	uint32_t pid = 0;
	if (!broker_presence_instance_of(pipe, &pid) || pid >= b->npresence)
		return NULL;
	return b->presence[pid];
}

static void presence_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	const presence_slot *slot = arg;
	broker *b = slot->b;
	(void)bus;
	peers.cur_pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
	cur_slot = slot->instance;
	Ringbid__Envelope *env = open_envelope(b, BROKER_LINK_PRESENCE, msg);
	if (env == NULL) {
		peers.cur_pipe = 0;
		return;
	}
	// With several instances each has a socket of its own: a connection on instance i's
	// socket that speaks for another would have its answers sent where nobody expects them.
	if (!b->stopping && b->npresence > 1 && env->body_case != RINGBID__ENVELOPE__BODY_ERROR &&
	    env->presence_id != slot->instance) {
		refuse(b, BROKER_LINK_PRESENCE, NULL, 0, RB_EINVAL,
		       "presence_id is not the instance this address is for");
		rb_pb_free(&env->base);
		peers.cur_pipe = 0;
		return;
	}
	if (b->stopping || (env->body_case != RINGBID__ENVELOPE__BODY_ERROR &&
	                    !presence_identify(b, peers.cur_pipe, env->presence_id))) {
		rb_pb_free(&env->base);
		peers.cur_pipe = 0;
		return;
	}
	switch (env->body_case) {
	case RINGBID__ENVELOPE__BODY_OFFER_RESULT:
		broker_presence_agent_at(env->offer_result->agent_id, env->presence_id, false);
		on_offer_result(b, env->offer_result);
		break;
	case RINGBID__ENVELOPE__BODY_AGENT_HANGUP:
		broker_presence_agent_at(env->agent_hangup->agent_id, env->presence_id, false);
		on_agent_hangup(b, env->agent_hangup);
		break;
	case RINGBID__ENVELOPE__BODY_PRESENCE_STATS:
		on_stats(b, env->presence_stats);
		break;
	case RINGBID__ENVELOPE__BODY_ERROR:
		peer_error(BROKER_LINK_PRESENCE, env->error);
		break;
	default:
		refuse(b, BROKER_LINK_PRESENCE, NULL, 0, RB_EINVAL,
		       "unexpected message on the presence link");
		break;
	}
	rb_pb_free(&env->base);
	peers.cur_pipe = 0;
}

static void presence_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	broker *b = ((const presence_slot *)arg)->b;
	(void)bus;
	uint32_t id = (uint32_t)nng_pipe_id(pipe);
	if (added) {
		// Its CallSync waits for its first Envelope, which says which instance it is
		// (presence sends its stats as soon as it connects).
		rb_logf(RB_LOG_INFO, NULL, 0, "presence connection %u up", id);
		return;
	}
	uint32_t pid = 0;
	bool known = broker_presence_instance_of(id, &pid);
	broker_presence_gone(id);
	b->have_agents = broker_presence_stats_sum(b->agents, BROKER_CALL_NSTATES);
	if (known)
		rb_logf(RB_LOG_WARN, NULL, 0, "presence instance %u down (connection %u)", pid, id);
	else
		rb_logf(RB_LOG_WARN, NULL, 0, "presence connection %u down", id);
}

// --- setup --------------------------------------------------------------------------------

// arg goes to recv and pipe.
static int open_pair(broker *b, const char *name, rb_bus_kind kind, const char *url,
                     rb_bus_recv_fn recv, rb_bus_pipe_fn pipe, rb_bus **out, void *arg)
{
	rb_bus_opts opts = {
	        .recv_max = RB_PB_MAX_SERVICE,
	        .name = name,
	        .batch = true, // a service link: see docs/delivery.md, "Batches"
	};
	int rc = rb_bus_new(&b->svc.loop, kind, &opts, out);
	if (rc != 0)
		return rc;
	rb_bus_on_recv(*out, recv, arg);
	rb_bus_on_pipe(*out, pipe, arg);
	rc = rb_bus_listen(*out, url);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "%s: cannot listen on %s: %s", name, url,
		        rb_err_str(rc));
		return rc;
	}
	rb_logf(RB_LOG_INFO, NULL, 0, "%s listening on %s", name, url);
	return 0;
}

#define BROKER_URL_MAX 256

// The address of each presence instance's socket: RINGBID_BROKER_PRESENCE_URLS, one URL per
// instance in order, when there are several; presence_url alone when there is one.
static int presence_urls(const char *presence_url, uint32_t instances, char urls[][BROKER_URL_MAX])
{
	if (instances == 1) {
		if (strlen(presence_url) >= BROKER_URL_MAX)
			return RB_ECONFIG;
		strcpy(urls[0], presence_url);
		return 0;
	}
	const char *list = getenv("RINGBID_BROKER_PRESENCE_URLS");
	if (list == NULL || list[0] == '\0') {
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "RINGBID_BROKER_PRESENCE_URLS must list the broker's address for each of "
		        "the "
		        "%u presence instances (comma-separated, instance 0 first)",
		        instances);
		return RB_ECONFIG;
	}
	uint32_t n = 0;
	for (const char *p = list; *p != '\0';) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (n == instances || len == 0 || len >= BROKER_URL_MAX) {
			n = instances + 1;
			break;
		}
		memcpy(urls[n], p, len);
		urls[n++][len] = '\0';
		p += len + (end ? 1 : 0);
		if (end != NULL && *p == '\0') {
			n = instances + 1; // a trailing comma
			break;
		}
	}
	if (n != instances) {
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "RINGBID_BROKER_PRESENCE_URLS must hold exactly %u non-empty URLs, one per "
		        "presence instance",
		        instances);
		return RB_ECONFIG;
	}
	return 0;
}

int broker_links_start(broker *b, const char *auction_url, const char *presence_url,
                       const char *billing_url)
{
	long long instances = 1;
	int rc = rb_config_int("RINGBID_PRESENCE_INSTANCES", 1, 1, BROKER_PRESENCE_INSTANCES,
	                       &instances);
	if (rc != 0)
		return rc;
	static char urls[BROKER_PRESENCE_INSTANCES][BROKER_URL_MAX];
	rc = presence_urls(presence_url, (uint32_t)instances, urls);
	if (rc != 0)
		return rc;
	broker_presence_reset((uint32_t)instances);
	broker_presence_restored(&b->book);
	rc = open_pair(b, "broker-auction", RB_BUS_PAIR, auction_url, auction_recv, auction_pipe,
	               &b->auction, b);
	// One plain pair socket per presence instance, each at its own address: a send to a busy
	// instance waits in its socket. (nng 1.5.2's polyamorous pair1 would queue two messages per
	// connection and drop the rest without an error; a burst of Offers would lose some.)
	for (uint32_t i = 0; rc == 0 && i < (uint32_t)instances; i++) {
		char name[32] = "broker-presence";
		if (instances > 1)
			snprintf(name, sizeof name, "broker-presence-%u", i);
		slots[i] = (presence_slot){.b = b, .instance = i};
		rc = open_pair(b, name, RB_BUS_PAIR, urls[i], presence_recv, presence_pipe,
		               &b->presence[i], &slots[i]);
		if (b->presence[i] != NULL)
			b->npresence = i + 1; // freed at close, listening or not
	}
	if (rc != 0)
		return rc;
	rb_bus_opts opts = {
	        .recv_max = RB_PB_MAX_SERVICE,
	        .name = "broker-billing",
	        // The outbox resends on its own schedule; nng's resend would only duplicate.
	        .req_resend_ms = 60 * 60 * 1000,
	};
	rc = rb_bus_new(&b->svc.loop, RB_BUS_REQ, &opts, &b->billing);
	if (rc != 0)
		return rc;
	rc = rb_bus_dial(b->billing, billing_url);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "billing: cannot dial %s: %s", billing_url,
		        rb_err_str(rc));
		return rc;
	}
	rb_logf(RB_LOG_INFO, NULL, 0, "CDRs go to billing at %s", billing_url);
	rc = broker_outcomes_start(&b->outcomes, &b->svc.loop, billing_url, b->svc.token);
	if (rc != 0)
		return rc;
	return broker_outbox_start(&b->outbox, &b->svc.loop, b->billing, b->journal, b->svc.token);
}
