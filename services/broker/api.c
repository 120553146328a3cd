// The call API (req/rep): telephony's CallArrived, CallAnswered, CallHangup, the CallQuery long
// poll, StatusQuery, ExplainQuery and RecordOutcomes; every change is answered once the journal
// has it, and outcomes once billing has them.
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_secret.h"
#include "rb_time.h"

#define EFFECTIVE_PRIORITY_MAX 1000000 // call priority plus program priority, clamped

struct broker_poll {
	broker *b;
	rb_bus_req *req;
	broker_call *c;
	uint64_t after_version;
	uv_timer_t timer;
	broker_poll *call_next, *call_prev; // the call's polls
	broker_poll *next, *prev;           // every poll
};

// A reply waiting for the journal.
typedef struct held_reply {
	rb_bus_req *req;
	nng_msg *msg;
} held_reply;

// A CallArrived waiting for the database to say whether its program exists.
typedef struct arrival {
	broker *b;
	rb_bus_req *req;
	Ringbid__CallRequest *request;
} arrival;

static void reply_now(rb_bus_req *req, Ringbid__CallReply *r)
{
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&r->base, RB_PB_MAX_DEFAULT, &msg);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "cannot pack a call reply: %s", rb_err_str(rc));
		rb_bus_reply_drop(req);
		return;
	}
	rb_bus_reply(req, msg);
}

static void held_done(int err, void *arg)
{
	held_reply *h = arg;
	if (err == 0) {
		rb_bus_reply(h->req, h->msg);
	} else {
		// Not durable: no answer, so telephony asks again.
		nng_msg_free(h->msg);
		rb_bus_reply_drop(h->req);
	}
	free(h);
}

// Answers once everything journaled so far is on disk.
static void reply_held(broker *b, rb_bus_req *req, Ringbid__CallReply *r)
{
	if (b->journal == NULL) {
		rb_bus_reply_drop(req);
		return;
	}
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&r->base, RB_PB_MAX_DEFAULT, &msg);
	held_reply *h = rc == 0 ? malloc(sizeof(*h)) : NULL;
	if (h == NULL) {
		if (msg)
			nng_msg_free(msg);
		rb_bus_reply_drop(req);
		return;
	}
	h->req = req;
	h->msg = msg;
	if (broker_journal_after(b->journal, held_done, h) != 0) {
		nng_msg_free(msg);
		free(h);
		rb_bus_reply_drop(req);
	}
}

static void reply_call(broker *b, rb_bus_req *req, const broker_call *c)
{
	Ringbid__CallInfo info;
	broker_call_info(c, &info);
	Ringbid__CallReply r = RINGBID__CALL_REPLY__INIT;
	r.call = &info;
	reply_held(b, req, &r);
}

// A refusal changes nothing, so it needs no journal and goes out at once.
static void refuse(broker *b, rb_bus_req *req, const char *call_id, int code, const char *why)
{
	rb_logf(RB_LOG_WARN, call_id, 0, "call API: refused (%s): %s", rb_err_name(code), why);
	broker_refused(b, BROKER_LINK_CALLS);
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)why;
	Ringbid__CallReply r = RINGBID__CALL_REPLY__INIT;
	r.error = &er;
	reply_now(req, &r);
}

static const char *loggable_id(const char *id)
{
	return id != NULL && rb_valid_id(id, BROKER_ID_MAX) ? id : NULL;
}

// --- CallArrived --------------------------------------------------------------------------

static int validate_arrived(const Ringbid__CallArrived *a, const char **why)
{
	if (a->call_id[0] != '\0' && !rb_valid_id(a->call_id, BROKER_ID_MAX)) {
		*why = "call_id must be 1-64 characters of [A-Za-z0-9._:-]";
		return RB_EINVAL;
	}
	if (!rb_valid_id(a->program, BROKER_ID_MAX)) {
		*why = "program must be 1-64 characters of [A-Za-z0-9._:-]";
		return RB_EINVAL;
	}
	if (a->n_skills > BROKER_CALL_SKILLS_MAX) {
		*why = "at most 32 skills";
		return RB_ETOOBIG;
	}
	for (size_t i = 0; i < a->n_skills; i++) {
		if (!rb_valid_id(a->skills[i], BROKER_ID_MAX)) {
			*why = "skills must be 1-64 characters of [A-Za-z0-9._:-]";
			return RB_EINVAL;
		}
	}
	if (a->priority < BROKER_PRIORITY_MIN || a->priority > BROKER_PRIORITY_MAX) {
		*why = "priority must be in -1000..1000";
		return RB_EINVAL;
	}
	if (a->caller[0] != '\0' && !rb_valid_text(a->caller, BROKER_CALLER_MAX)) {
		*why = "caller must be printable text of at most 64 bytes";
		return RB_EINVAL;
	}
	return 0;
}

// "c" + UTC microseconds + "-" + a counter: unique across restarts unless the clock went back,
// and then the book catches the clash.
static void assign_id(broker *b, char *out, size_t n)
{
	do {
		snprintf(out, n, "c%llu-%llu", (unsigned long long)rb_now_us(),
		         (unsigned long long)++b->call_seq);
	} while (broker_book_find(&b->book, out) != NULL);
}

static void create_call(broker *b, rb_bus_req *req, const Ringbid__CallArrived *a,
                        const broker_program *prog)
{
	const char *given = a->call_id[0] ? a->call_id : NULL;
	// A resend may have created it while the program was being looked up.
	broker_call *c = given ? broker_book_find(&b->book, given) : NULL;
	if (c != NULL) {
		reply_call(b, req, c);
		return;
	}
	if (b->stopping) {
		rb_bus_reply_drop(req);
		return;
	}
	if (!broker_journal_ok(b->journal)) {
		refuse(b, req, given, RB_EIO, "the call journal cannot be written");
		return;
	}
	char id[BROKER_ID_MAX + 1];
	if (given)
		snprintf(id, sizeof(id), "%s", given);
	else
		assign_id(b, id, sizeof(id));
	char **skills = NULL;
	size_t nskills = 0;
	int rc =
	        broker_skills_merge((const char *const *)prog->skills, prog->nskills,
	                            (const char *const *)a->skills, a->n_skills, &skills, &nskills);
	if (rc != 0) {
		refuse(b, req, id, rc, rc == RB_ETOOBIG ? "too many skills" : "out of memory");
		return;
	}
	long long prio = (long long)a->priority + prog->priority;
	if (prio > EFFECTIVE_PRIORITY_MAX)
		prio = EFFECTIVE_PRIORITY_MAX;
	if (prio < -EFFECTIVE_PRIORITY_MAX)
		prio = -EFFECTIVE_PRIORITY_MAX;
	char masked[BROKER_MASKED_MAX + 1];
	rb_mask_caller(a->caller, masked, sizeof(masked));
	broker_call_new in = {
	        .id = id,
	        .program = a->program,
	        .skills = (const char *const *)skills,
	        .nskills = nskills,
	        .priority = (int32_t)prio,
	        .caller_masked = masked,
	        .now_us = rb_now_us(),
	        .now_mono_us = rb_mono_us(),
	};
	rc = broker_book_add(&b->book, &in, &c);
	broker_skills_free(skills, nskills);
	if (rc != 0) {
		refuse(b, req, id, rc, "cannot add the call");
		return;
	}
	rc = broker_change(b, c, BROKER_EV_QUEUE, 0, 0, NULL);
	if (rc != 0) {
		refuse(b, req, id, rc, "cannot queue the call");
		return;
	}
	rb_logf(RB_LOG_INFO, c->id, 0, "call arrived: program %s, priority %d, caller %s",
	        c->program, c->priority, c->caller_masked[0] ? c->caller_masked : "unknown");
	reply_call(b, req, c);
}

static void lookup_done(int err, const broker_program *prog, void *arg)
{
	arrival *ar = arg;
	broker *b = ar->b;
	const Ringbid__CallArrived *a = ar->request->arrived;
	if (err == 0 && prog != NULL) {
		create_call(b, ar->req, a, prog);
	} else if (err == RB_ENOTFOUND) {
		refuse(b, ar->req, loggable_id(a->call_id), RB_ENOTFOUND, "unknown program");
	} else if (err == RB_ECLOSED) {
		rb_bus_reply_drop(ar->req);
	} else {
		refuse(b, ar->req, loggable_id(a->call_id), RB_EBUSY,
		       "programs cannot be read now; try again");
	}
	rb_pb_free(&ar->request->base);
	free(ar);
}

// Takes request.
static void on_arrived(broker *b, rb_bus_req *req, Ringbid__CallRequest *request)
{
	const Ringbid__CallArrived *a = request->arrived;
	const char *why = NULL;
	int rc = validate_arrived(a, &why);
	if (rc != 0) {
		refuse(b, req, loggable_id(a->call_id), rc, why);
		goto done;
	}
	if (a->call_id[0]) {
		broker_call *c = broker_book_find(&b->book, a->call_id);
		if (c != NULL) {
			reply_call(b, req, c); // a resend: the call as it is
			goto done;
		}
	}
	if (!broker_journal_ok(b->journal)) {
		refuse(b, req, loggable_id(a->call_id), RB_EIO,
		       "the call journal cannot be written");
		goto done;
	}
	const broker_program *prog = broker_programs_find(&b->programs, a->program);
	if (prog != NULL) {
		create_call(b, req, a, prog);
		goto done;
	}
	// Loaded once but the database is away now: an unknown program cannot be asked about.
	// Before the first load (a broker just started, answering a call telephony sent while it
	// was down) the lookup below waits for the connection instead of turning the call away.
	if (!broker_programs_ready(&b->programs) && b->programs.loaded) {
		refuse(b, req, loggable_id(a->call_id), RB_EBUSY,
		       "programs cannot be read now; try again");
		goto done;
	}
	// Perhaps added a moment ago, its notification still on the way: ask once.
	arrival *ar = malloc(sizeof(*ar));
	if (ar == NULL) {
		refuse(b, req, loggable_id(a->call_id), RB_ENOMEM, "out of memory");
		goto done;
	}
	ar->b = b;
	ar->req = req;
	ar->request = request;
	rc = broker_programs_lookup(&b->programs, a->program, lookup_done, ar);
	if (rc == 0)
		return;
	free(ar);
	refuse(b, req, loggable_id(a->call_id), rc == RB_EBUSY ? RB_EBUSY : RB_ENOTFOUND,
	       rc == RB_EBUSY ? "too many program lookups; try again" : "unknown program");
done:
	rb_pb_free(&request->base);
}

// --- CallAnswered, CallHangup -------------------------------------------------------------

static broker_call *find_call(broker *b, rb_bus_req *req, const char *id)
{
	if (id == NULL || !rb_valid_id(id, BROKER_ID_MAX)) {
		refuse(b, req, NULL, RB_EINVAL,
		       "call_id must be 1-64 characters of [A-Za-z0-9._:-]");
		return NULL;
	}
	broker_call *c = broker_book_find(&b->book, id);
	if (c == NULL)
		refuse(b, req, id, RB_ENOTFOUND, "unknown call");
	return c;
}

static void on_answered(broker *b, rb_bus_req *req, const Ringbid__CallAnswered *m)
{
	broker_call *c = find_call(b, req, m->call_id);
	if (c == NULL)
		return;
	if (c->state == BROKER_CALL_OFFERED) {
		uint64_t agent = c->agent_id;
		int rc = broker_change(b, c, BROKER_EV_CONNECT, 0, 0, NULL);
		if (rc != 0) {
			refuse(b, req, c->id, rc, "cannot connect the call");
			return;
		}
		rb_logf(RB_LOG_INFO, c->id, agent, "answered (telephony saw the agent leg)");
	}
	reply_call(b, req, c);
}

static void on_hangup(broker *b, rb_bus_req *req, const Ringbid__CallHangup *m)
{
	if (m->side != RINGBID__HANGUP_SIDE__SIDE_CALLER &&
	    m->side != RINGBID__HANGUP_SIDE__SIDE_AGENT &&
	    m->side != RINGBID__HANGUP_SIDE__SIDE_SYSTEM) {
		refuse(b, req, loggable_id(m->call_id), RB_EINVAL, "unknown hang-up side");
		return;
	}
	broker_call *c = find_call(b, req, m->call_id);
	if (c == NULL)
		return;
	if (c->state != BROKER_CALL_ENDED) {
		int rc = broker_change(b, c, BROKER_EV_HANGUP, 0, 0, NULL);
		if (rc != 0) {
			refuse(b, req, c->id, rc, "cannot end the call");
			return;
		}
	}
	reply_call(b, req, c);
}

// --- CallQuery long poll ------------------------------------------------------------------

static void poll_closed(uv_handle_t *h)
{
	free(h->data);
}

static void poll_unlink(broker *b, broker_poll *p)
{
	if (p->c != NULL) {
		if (p->call_prev)
			p->call_prev->call_next = p->call_next;
		else
			p->c->polls = p->call_next;
		if (p->call_next)
			p->call_next->call_prev = p->call_prev;
		p->c = NULL;
	}
	if (p->prev)
		p->prev->next = p->next;
	else
		b->polls = p->next;
	if (p->next)
		p->next->prev = p->prev;
	b->npolls--;
}

// Answers with the call as it is now and forgets the poll.
static void poll_answer(broker *b, broker_poll *p, bool held)
{
	Ringbid__CallInfo info;
	Ringbid__CallReply r = RINGBID__CALL_REPLY__INIT;
	if (p->c != NULL) {
		broker_call_info(p->c, &info);
		r.call = &info;
	}
	rb_bus_req *req = p->req;
	p->req = NULL;
	if (held)
		reply_held(b, req, &r);
	else
		reply_now(req, &r);
	poll_unlink(b, p);
	uv_close((uv_handle_t *)&p->timer, poll_closed);
}

static void poll_timeout(uv_timer_t *t)
{
	broker_poll *p = t->data;
	poll_answer(p->b, p, true);
}

static void on_query(broker *b, rb_bus_req *req, const Ringbid__CallQuery *q)
{
	broker_call *c = find_call(b, req, q->call_id);
	if (c == NULL)
		return;
	if (c->version > q->after_version || q->wait_ms == 0) {
		reply_call(b, req, c);
		return;
	}
	if (b->npolls >= BROKER_POLLS_MAX) {
		refuse(b, req, c->id, RB_EBUSY, "too many calls followed at once; try again");
		return;
	}
	broker_poll *p = calloc(1, sizeof(*p));
	if (p == NULL) {
		refuse(b, req, c->id, RB_ENOMEM, "out of memory");
		return;
	}
	p->b = b;
	p->req = req;
	p->c = c;
	p->after_version = q->after_version;
	uv_timer_init(&b->svc.loop, &p->timer);
	p->timer.data = p;
	uint32_t wait = q->wait_ms < BROKER_POLL_MAX_MS ? q->wait_ms : BROKER_POLL_MAX_MS;
	uv_timer_start(&p->timer, poll_timeout, wait, 0);
	p->call_next = c->polls;
	if (p->call_next)
		p->call_next->call_prev = p;
	c->polls = p;
	p->next = b->polls;
	if (p->next)
		p->next->prev = p;
	b->polls = p;
	b->npolls++;
}

void broker_api_changed(broker *b, broker_call *c)
{
	broker_poll *p = c->polls;
	while (p != NULL) {
		broker_poll *next = p->call_next;
		if (c->version > p->after_version)
			poll_answer(b, p, true);
		p = next;
	}
}

void broker_api_evicted(broker *b, broker_call *c)
{
	while (c->polls != NULL)
		poll_answer(b, c->polls, false);
}

void broker_api_flush_polls(broker *b)
{
	while (b->polls != NULL)
		poll_answer(b, b->polls, false);
}

// --- StatusQuery, ExplainQuery ------------------------------------------------------------

static void on_status(broker *b, rb_bus_req *req)
{
	broker_kpi_now now;
	broker_kpi_snapshot(b, &now);
	broker_kpi_msg km;
	broker_kpi_fill(&b->kpi, &now, &km);
	Ringbid__CallReply r = RINGBID__CALL_REPLY__INIT;
	r.kpis = &km.kpis;
	reply_now(req, &r);
}

static void on_explain(broker *b, rb_bus_req *req, const Ringbid__ExplainQuery *q)
{
	broker_call *c = find_call(b, req, q->call_id);
	if (c == NULL)
		return;
	broker_arena a;
	broker_arena_init(&a);
	Ringbid__ExplainReply ex;
	int rc = broker_call_explain(c, &a, &ex);
	if (rc != 0) {
		broker_arena_fini(&a);
		refuse(b, req, c->id, rc, "out of memory");
		return;
	}
	Ringbid__CallReply r = RINGBID__CALL_REPLY__INIT;
	r.call = ex.call;
	r.explain = &ex;
	reply_now(req, &r);
	broker_arena_fini(&a);
}

void broker_api_status_http(rb_http_req *req, void *arg)
{
	broker *b = arg;
	broker_kpi_now now;
	broker_kpi_snapshot(b, &now);
	broker_kpi_msg km;
	broker_kpi_fill(&b->kpi, &now, &km);
	char *json = NULL;
	if (broker_kpi_json(&km.kpis, &json) != 0) {
		rb_http_reply(req, 500, NULL, "out of memory\n", 14);
		return;
	}
	size_t len = strlen(json);
	rb_http_reply(req, 200, "application/json", json, len);
	free(json);
}

// --- RecordOutcomes -----------------------------------------------------------------------

static void on_outcomes(broker *b, rb_bus_req *req, Ringbid__RecordOutcomes *ro)
{
	const char *id = ro->n_outcomes > 0 && ro->outcomes[0] != NULL
	                         ? loggable_id(ro->outcomes[0]->call_id)
	                         : NULL;
	// Live, or ended within the hour: its CDR is in the outbox or already with billing, so
	// billing may take outcomes that arrive before the CDR does.
	bool known = id != NULL && broker_book_find(&b->book, id) != NULL;
	char why[BROKER_OUTCOME_WHY_MAX];
	int rc = broker_outcomes_check(ro, rb_now_us(), known, why, sizeof(why));
	if (rc != 0) {
		refuse(b, req, id, rc, why);
		return;
	}
	rc = broker_outcomes_forward(&b->outcomes, req, ro);
	if (rc == 0)
		return;
	if (rc == RB_EBUSY)
		refuse(b, req, id, RB_EBUSY,
		       "too many outcome requests waiting for billing; try again");
	else
		refuse(b, req, id, rc == RB_ENOMEM ? RB_ENOMEM : RB_EBUSY,
		       "the outcomes cannot be sent to billing now; try again");
}

// --- dispatch -----------------------------------------------------------------------------

static void on_request(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	broker *b = arg;
	(void)bus;
	if (b->stopping) {
		// Not answered: telephony's REQ resends to the broker that comes next.
		nng_msg_free(msg);
		rb_bus_reply_drop(req);
		return;
	}
	Ringbid__CallRequest *r = NULL;
	int rc = rb_pb_unpack_msg(&ringbid__call_request__descriptor, msg, RB_PB_MAX_DEFAULT,
	                          (ProtobufCMessage **)&r);
	nng_msg_free(msg);
	if (rc != 0) {
		refuse(b, req, NULL, rc,
		       rc == RB_ETOOBIG ? "request too large" : "request is not a CallRequest");
		return;
	}
	if (!rb_str_equal_ct(r->token, b->svc.token)) {
		rb_pb_free(&r->base);
		refuse(b, req, NULL, RB_EAUTH, "wrong service token");
		return;
	}
	switch (r->body_case) {
	case RINGBID__CALL_REQUEST__BODY_ARRIVED:
		on_arrived(b, req, r); // takes r
		return;
	case RINGBID__CALL_REQUEST__BODY_ANSWERED:
		on_answered(b, req, r->answered);
		break;
	case RINGBID__CALL_REQUEST__BODY_HANGUP:
		on_hangup(b, req, r->hangup);
		break;
	case RINGBID__CALL_REQUEST__BODY_QUERY:
		on_query(b, req, r->query);
		break;
	case RINGBID__CALL_REQUEST__BODY_STATUS:
		on_status(b, req);
		break;
	case RINGBID__CALL_REQUEST__BODY_EXPLAIN:
		on_explain(b, req, r->explain);
		break;
	case RINGBID__CALL_REQUEST__BODY_OUTCOMES:
		on_outcomes(b, req, r->outcomes);
		break;
	default:
		refuse(b, req, NULL, RB_EINVAL, "empty request");
		break;
	}
	rb_pb_free(&r->base);
}

int broker_api_start(broker *b, const char *url)
{
	rb_bus_opts opts = {
	        .recv_max = RB_PB_MAX_DEFAULT,
	        .rep_parallel = 128,
	        .name = "broker-calls",
	};
	int rc = rb_bus_new(&b->svc.loop, RB_BUS_REP, &opts, &b->api);
	if (rc != 0)
		return rc;
	rb_bus_on_request(b->api, on_request, b);
	rc = rb_bus_listen(b->api, url);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "call API: cannot listen on %s: %s", url,
		        rb_err_str(rc));
		return rc;
	}
	rb_logf(RB_LOG_INFO, NULL, 0, "call API listening on %s", url);
	return 0;
}
