// Outcomes on their way to billing: field checks, one CdrBatch per API request, deferred replies.
#include "outcomes.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_names.h"
#include "rb_pb.h"

#define PEER_TEXT_MAX 200 // billing's refusal text passed on

// One API request waiting for billing. It lives until its billing request completes, even
// when the API request was answered before (abort): the bus calls back exactly once.
struct broker_outcome_req {
	broker_outcomes *o;
	rb_bus_req *req; // NULL once answered
	char call_id[BROKER_ID_MAX + 1];
	size_t n; // outcomes sent
	broker_outcome_req *next, *prev;
};

static const char *kind_name(Ringbid__OutcomeKind kind)
{
	const char *name = rb_outcome_kind_name(kind);
	return name != NULL ? name : "?";
}

static int say(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int say(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
	return RB_EINVAL;
}

static int check_one(const Ringbid__RecordOutcomes *ro, size_t i, uint64_t now_us, char *why,
                     size_t n)
{
	const Ringbid__Outcome *o = ro->outcomes[i];
	if (o == NULL)
		return say(why, n, "outcomes[%zu] is missing", i);
	if (o->call_id == NULL || !rb_valid_id(o->call_id, BROKER_ID_MAX))
		return say(why, n,
		           "outcomes[%zu].call_id must be 1-64 characters of [A-Za-z0-9._:-]", i);
	if (i > 0 && strcmp(o->call_id, ro->outcomes[0]->call_id) != 0)
		return say(why, n,
		           "outcomes[%zu].call_id differs from outcomes[0].call_id: one call per "
		           "request",
		           i);
	int lo, hi;
	const char *what;
	if (!rb_outcome_range(o->kind, &lo, &hi, &what))
		return say(why, n, "outcomes[%zu].kind must be survey, resolved, sale or qa", i);
	if (o->value < lo || o->value > hi)
		return say(why, n, "outcomes[%zu].value: %s (got %d)", i, what, (int)o->value);
	const char *reviewer = o->reviewer ? o->reviewer : "";
	if (o->kind == RINGBID__OUTCOME_KIND__OUTCOME_QA) {
		if (!rb_valid_id(reviewer, BROKER_REVIEWER_MAX))
			return say(
			        why, n,
			        "outcomes[%zu].reviewer: a QA review needs the reviewer's id, 1-64 "
			        "characters of [A-Za-z0-9._:-]",
			        i);
	} else if (reviewer[0] != '\0') {
		return say(why, n, "outcomes[%zu].reviewer must be empty for a %s outcome", i,
		           kind_name(o->kind));
	}
	if (o->recorded_us != 0) {
		uint64_t oldest =
		        now_us > BROKER_OUTCOME_PAST_US ? now_us - BROKER_OUTCOME_PAST_US : 0;
		if (o->recorded_us < oldest)
			return say(why, n, "outcomes[%zu].recorded_us is more than 400 days ago",
			           i);
		if (o->recorded_us > now_us + BROKER_OUTCOME_FUTURE_US)
			return say(why, n,
			           "outcomes[%zu].recorded_us is more than 5 minutes in the future",
			           i);
	}
	// Two values for one (kind, reviewer) in one request cannot both be stored.
	for (size_t j = 0; j < i; j++) {
		const Ringbid__Outcome *p = ro->outcomes[j];
		if (p->kind == o->kind && strcmp(p->reviewer ? p->reviewer : "", reviewer) == 0)
			return say(why, n,
			           "outcomes[%zu] repeats outcomes[%zu]: one %s%s%s per request", i,
			           j, kind_name(o->kind), reviewer[0] ? " by " : "", reviewer);
	}
	return 0;
}

int broker_outcomes_check(Ringbid__RecordOutcomes *ro, uint64_t now_us, bool call_known, char *why,
                          size_t n)
{
	if (ro == NULL || ro->n_outcomes == 0)
		return say(why, n, "outcomes: send 1-%d outcomes of one call", BROKER_OUTCOMES_MAX);
	if (ro->n_outcomes > BROKER_OUTCOMES_MAX)
		return say(why, n, "outcomes: at most %d per request (got %zu)",
		           BROKER_OUTCOMES_MAX, ro->n_outcomes);
	for (size_t i = 0; i < ro->n_outcomes; i++) {
		int rc = check_one(ro, i, now_us, why, n);
		if (rc != 0)
			return rc;
	}
	for (size_t i = 0; i < ro->n_outcomes; i++) {
		Ringbid__Outcome *o = ro->outcomes[i];
		if (o->recorded_us == 0)
			o->recorded_us = now_us;
		o->call_known = call_known;
	}
	return 0;
}

void broker_outcomes_init(broker_outcomes *o)
{
	memset(o, 0, sizeof(*o));
}

int broker_outcomes_start(broker_outcomes *o, uv_loop_t *loop, const char *url, const char *token)
{
	rb_bus_opts opts = {
	        .recv_max = RB_PB_MAX_SERVICE,
	        .name = "broker-outcomes",
	        // Each request has its own deadline and the client sends again after an RB_EBUSY;
	        // nng's resend inside the deadline would only store the outcomes and answer
	        // "duplicate" to the first sender.
	        .req_resend_ms = 60 * 60 * 1000,
	};
	o->token = token;
	int rc = rb_bus_new(loop, RB_BUS_REQ, &opts, &o->bus);
	if (rc != 0)
		return rc;
	rc = rb_bus_dial(o->bus, url);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "outcomes: cannot dial billing at %s: %s", url,
		        rb_err_str(rc));
		return rc;
	}
	return 0;
}

int broker_outcomes_unanswered(const broker_outcomes *o)
{
	return o->unanswered;
}

void broker_outcomes_on_idle(broker_outcomes *o, broker_outcomes_fn fn, void *arg)
{
	o->idle = fn;
	o->idle_arg = arg;
}

// Sends r's API answer and marks r answered.
static void answer(broker_outcome_req *r, Ringbid__CallReply *reply)
{
	broker_outcomes *o = r->o;
	rb_bus_req *req = r->req;
	r->req = NULL;
	o->unanswered--;
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&reply->base, RB_PB_MAX_DEFAULT, &msg);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, r->call_id, 0, "outcomes: cannot pack the reply: %s",
		        rb_err_str(rc));
		rb_bus_reply_drop(req);
		return;
	}
	rb_bus_reply(req, msg);
}

static void answer_error(broker_outcome_req *r, int code, const char *why)
{
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)why;
	Ringbid__CallReply reply = RINGBID__CALL_REPLY__INIT;
	reply.error = &er;
	answer(r, &reply);
}

static void answer_busy(broker_outcome_req *r, const char *log_why)
{
	rb_logf(RB_LOG_WARN, r->call_id, 0, "outcomes not recorded: %s", log_why);
	answer_error(r, RB_EBUSY, "billing did not answer; send again");
}

// An OutcomeAck billing sent back must name the request's call and a real kind.
static bool ack_usable(const broker_outcome_req *r, const Ringbid__CdrAck *ack)
{
	if (ack->n_outcomes != r->n)
		return false;
	for (size_t i = 0; i < ack->n_outcomes; i++) {
		const Ringbid__OutcomeAck *a = ack->outcomes[i];
		int lo, hi;
		const char *what;
		if (a == NULL || a->call_id == NULL || strcmp(a->call_id, r->call_id) != 0 ||
		    !rb_outcome_range(a->kind, &lo, &hi, &what) || a->reviewer == NULL ||
		    (a->reviewer[0] != '\0' && !rb_valid_id(a->reviewer, BROKER_REVIEWER_MAX)))
			return false;
	}
	return true;
}

// Billing's answer, passed on: its refusal (nothing stored) or its acknowledgements.
static void answer_from_billing(broker_outcome_req *r, nng_msg *msg)
{
	Ringbid__CdrAck *ack = NULL;
	int rc = rb_pb_unpack_msg(&ringbid__cdr_ack__descriptor, msg, RB_PB_MAX_SERVICE,
	                          (ProtobufCMessage **)&ack);
	if (rc != 0) {
		answer_busy(r, "billing's answer does not decode");
		return;
	}
	if (ack->error != NULL) {
		int code = ack->error->code;
		const char *text = ack->error->message;
		if (code >= 0 || code < RB_ECODE_MIN)
			code = RB_EIO;
		if (text == NULL || text[0] == '\0' || !rb_valid_text(text, PEER_TEXT_MAX))
			text = "billing refused the outcomes";
		rb_logf(RB_LOG_WARN, r->call_id, 0, "outcomes refused by billing (%s): %s",
		        rb_err_name(code), text);
		answer_error(r, code, text);
	} else if (!ack_usable(r, ack)) {
		answer_busy(r, "billing's answer does not match the outcomes sent");
	} else {
		size_t dup = 0;
		for (size_t i = 0; i < ack->n_outcomes; i++)
			dup += ack->outcomes[i]->duplicate;
		rb_logf(RB_LOG_INFO, r->call_id, 0, "outcomes recorded: %zu (%zu already stored)",
		        ack->n_outcomes, dup);
		Ringbid__CallReply reply = RINGBID__CALL_REPLY__INIT;
		reply.n_outcomes = ack->n_outcomes;
		reply.outcomes = ack->outcomes;
		answer(r, &reply);
	}
	rb_pb_free(&ack->base);
}

static void unlink_req(broker_outcomes *o, broker_outcome_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		o->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	o->inflight--;
}

static void billing_replied(rb_bus *bus, int err, nng_msg *reply, void *arg)
{
	broker_outcome_req *r = arg;
	broker_outcomes *o = r->o;
	(void)bus;
	unlink_req(o, r);
	bool was_waiting = r->req != NULL;
	if (r->req != NULL) {
		if (err != 0)
			answer_busy(r, rb_err_str(err));
		else
			answer_from_billing(r, reply);
	}
	if (reply != NULL)
		nng_msg_free(reply);
	free(r);
	if (was_waiting && o->unanswered == 0 && !o->closing && o->idle != NULL)
		o->idle(o, o->idle_arg);
}

int broker_outcomes_forward(broker_outcomes *o, rb_bus_req *req, const Ringbid__RecordOutcomes *ro)
{
	if (o->bus == NULL || o->closing)
		return RB_ECLOSED;
	if (o->inflight >= BROKER_OUTCOMES_INFLIGHT)
		return RB_EBUSY;
	Ringbid__CdrBatch batch = RINGBID__CDR_BATCH__INIT;
	batch.token = (char *)o->token;
	batch.n_outcomes = ro->n_outcomes;
	batch.outcomes = ro->outcomes;
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&batch.base, RB_PB_MAX_SERVICE, &msg);
	if (rc != 0)
		return rc;
	broker_outcome_req *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		nng_msg_free(msg);
		return RB_ENOMEM;
	}
	r->o = o;
	r->req = req;
	r->n = ro->n_outcomes;
	snprintf(r->call_id, sizeof(r->call_id), "%s", ro->outcomes[0]->call_id);
	r->next = o->reqs;
	if (r->next)
		r->next->prev = r;
	o->reqs = r;
	o->inflight++;
	rc = rb_bus_request(o->bus, msg, BROKER_OUTCOMES_TIMEOUT_MS, billing_replied, r);
	if (rc != 0) {
		unlink_req(o, r);
		free(r);
		return rc;
	}
	o->unanswered++;
	return 0;
}

void broker_outcomes_abort(broker_outcomes *o, int code, const char *why)
{
	for (broker_outcome_req *r = o->reqs; r != NULL; r = r->next) {
		if (r->req == NULL)
			continue;
		rb_logf(RB_LOG_WARN, r->call_id, 0, "outcomes not recorded: %s", why);
		answer_error(r, code, why);
	}
}

void broker_outcomes_fini(broker_outcomes *o)
{
	o->closing = true;
	// Freeing the bus completes every request with RB_ECLOSED before it returns.
	rb_bus_free(o->bus);
	o->bus = NULL;
}
