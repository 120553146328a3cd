// The broker's service links: auction (Enqueue/Match/Dequeue), presence (Offer/OfferResult/
// CallSync/stats) and the billing dialers the CDR outbox and the outcomes send on.
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	// straight back in line, rather than leave it for the janitor's re-enqueue a second later.
	if (holder != NULL) {
		// Usually a race, not a fault: the agent's hang-up of its last call is still on
		// its way from presence while the auction already saw the agent free again.
		// Should the two sides disagree for longer (a lost hang-up), re-enqueueing at once
		// would bounce the call between broker and auction; within 100 ms of the last
		// bounce, the janitor's re-enqueue paces it instead.
		uint64_t now = rb_mono_us();
		bool bounce =
		        c->busy_release_mono_us != 0 && now - c->busy_release_mono_us < 100000;
		rb_logf(bounce ? RB_LOG_WARN : RB_LOG_INFO, id, m->agent_id,
		        "match for an agent who still holds call %s: released", holder->id);
		c->busy_release_mono_us = now;
		broker_send_dequeue(b, id, m->agent_id);
		if (!bounce)
			broker_send_enqueue(b, c);
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

static void send_call_sync(broker *b)
{
	size_t total = b->book.count[BROKER_CALL_OFFERED] + b->book.count[BROKER_CALL_CONNECTED];
	size_t cap = total < BROKER_SYNC_CHUNK ? total : BROKER_SYNC_CHUNK;
	Ringbid__AgentCall *calls = cap ? calloc(cap, sizeof(*calls)) : NULL;
	Ringbid__AgentCall **ptrs = cap ? calloc(cap, sizeof(*ptrs)) : NULL;
	if (cap && (calls == NULL || ptrs == NULL)) {
		free(calls);
		free(ptrs);
		rb_logf(RB_LOG_ERROR, NULL, 0, "presence link: out of memory for CallSync");
		return;
	}
	size_t n = 0, sent = 0;
	broker_call *c = b->book.by_agent;
	// At least one message, so presence always hears the broker's picture, empty or not.
	do {
		n = 0;
		for (; c != NULL && n < cap; c = c->hh_agent.next) {
			broker_limits lim;
			broker_programs_limits(&b->programs, c->program, &lim);
			Ringbid__AgentCall *ac = &calls[n];
			ringbid__agent_call__init(ac);
			ac->agent_id = c->agent_id;
			ac->call_id = c->id;
			ac->offer_id = c->state == BROKER_CALL_OFFERED ? c->offer_id : 0;
			ac->state = (Ringbid__CallState)c->state;
			ac->program = c->program;
			ac->wrap_up_s = lim.wrap_up_s;
			ac->answered_us = c->answered_us;
			ptrs[n++] = ac;
		}
		Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
		cs.n_calls = n;
		cs.calls = ptrs;
		Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
		env.body_case = RINGBID__ENVELOPE__BODY_CALL_SYNC;
		env.call_sync = &cs;
		broker_send(b, BROKER_LINK_PRESENCE, &env);
		sent += n;
	} while (c != NULL);
	free(calls);
	free(ptrs);
	rb_logf(RB_LOG_INFO, NULL, 0, "presence link up: %zu calls at agents synchronised", sent);
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
	// A repeat of the result that connected the call changes nothing.
	if (c != NULL && accepted && c->offer_id == r->offer_id && c->agent_id == r->agent_id &&
	    (c->state == BROKER_CALL_CONNECTED ||
	     (c->state == BROKER_CALL_ENDED && c->disposition == BROKER_DISP_COMPLETED)))
		return;
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
	if (c == NULL) {
		rb_logf(RB_LOG_WARN, id, h->agent_id, "agent hung up an unknown call");
		return;
	}
	if (c->state == BROKER_CALL_ENDED)
		return; // already ended (both sides hung up)
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
	memcpy(b->agents, agents, sizeof(agents));
	b->have_agents = true;
}

static void presence_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	broker *b = arg;
	(void)bus;
	Ringbid__Envelope *env = open_envelope(b, BROKER_LINK_PRESENCE, msg);
	if (env == NULL)
		return;
	if (b->stopping) {
		rb_pb_free(&env->base);
		return;
	}
	switch (env->body_case) {
	case RINGBID__ENVELOPE__BODY_OFFER_RESULT:
		on_offer_result(b, env->offer_result);
		break;
	case RINGBID__ENVELOPE__BODY_AGENT_HANGUP:
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
}

static void presence_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	broker *b = arg;
	(void)bus;
	(void)pipe;
	if (added && !b->stopping) {
		send_call_sync(b);
	} else if (!added) {
		b->have_agents = false;
		rb_logf(RB_LOG_WARN, NULL, 0, "presence link down");
	}
}

// --- setup --------------------------------------------------------------------------------

static int open_pair(broker *b, const char *name, const char *url, rb_bus_recv_fn recv,
                     rb_bus_pipe_fn pipe, rb_bus **out)
{
	rb_bus_opts opts = {
	        .recv_max = RB_PB_MAX_SERVICE,
	        .name = name,
	};
	int rc = rb_bus_new(&b->svc.loop, RB_BUS_PAIR, &opts, out);
	if (rc != 0)
		return rc;
	rb_bus_on_recv(*out, recv, b);
	rb_bus_on_pipe(*out, pipe, b);
	rc = rb_bus_listen(*out, url);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "%s: cannot listen on %s: %s", name, url,
		        rb_err_str(rc));
		return rc;
	}
	rb_logf(RB_LOG_INFO, NULL, 0, "%s listening on %s", name, url);
	return 0;
}

int broker_links_start(broker *b, const char *auction_url, const char *presence_url,
                       const char *billing_url)
{
	int rc = open_pair(b, "broker-auction", auction_url, auction_recv, auction_pipe,
	                   &b->auction);
	if (rc == 0)
		rc = open_pair(b, "broker-presence", presence_url, presence_recv, presence_pipe,
		               &b->presence);
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
