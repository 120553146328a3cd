// Unit tests of the agent state machine, sessions, offers, timers and broker sync, driven by a
// fake clock and fake links that record what the core sends.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "rb_err.h"
#include "rb_secret.h"

#define CAP 8192
#define MS  1000ULL
#define SEC 1000000ULL

typedef struct cmsg {
	uint32_t pipe;
	uint64_t seq;
	Ringbid__AgentMsg__BodyCase body;
	int state;
	int kind;
	uint64_t offer_id;
	int code;
	uint32_t wait_ms;
	uint32_t ring_ms;
	char call_id[80];
	char text[128];
} cmsg;

typedef struct bmsg {
	Ringbid__Envelope__BodyCase body;
	uint64_t offer_id;
	uint64_t agent_id;
	int result;
	char call_id[80];
} bmsg;

typedef struct amsg {
	Ringbid__Envelope__BodyCase body;
	uint64_t agent_id;
	bool available;
	uint64_t state_seq;
	uint64_t since;
	double score;
	size_t n_skills;
	uint64_t snapshot_id;
	bool first, last;
	size_t n_agents;
	size_t n_ps;   // program scores: of the update, or of every agent in the chunk
	char ps0[72];  // an update's first program score: "program=score"
	size_t packed; // bytes of the snapshot chunk
} amsg;

typedef struct fx {
	presence_core *c;
	uint64_t mono, wall;
	cmsg cm[CAP];
	size_t ncm;
	bmsg bm[CAP];
	size_t nbm;
	amsg am[CAP];
	size_t nam;
	uint64_t scheduled;
	bool count_only; // scale tests: count messages, keep none
	size_t sent;
} fx;

static void op_client(void *arg, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	fx *f = arg;
	if (f->count_only) {
		f->sent++;
		return;
	}
	assert_true(f->ncm < CAP);
	cmsg *x = &f->cm[f->ncm++];
	memset(x, 0, sizeof(*x));
	x->pipe = pipe;
	x->seq = m->seq;
	x->body = m->body_case;
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_STATUS:
		x->state = m->status->state;
		x->offer_id = m->status->offer_id;
		snprintf(x->call_id, sizeof(x->call_id), "%s", m->status->call_id);
		snprintf(x->text, sizeof(x->text), "%s", m->status->reason);
		break;
	case RINGBID__AGENT_MSG__BODY_OFFER:
		x->offer_id = m->offer->offer_id;
		x->wait_ms = m->offer->wait_ms;
		x->ring_ms = m->offer->ring_timeout_ms;
		snprintf(x->call_id, sizeof(x->call_id), "%s", m->offer->call_id);
		break;
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT:
		x->kind = m->call_event->kind;
		x->offer_id = m->call_event->offer_id;
		snprintf(x->call_id, sizeof(x->call_id), "%s", m->call_event->call_id);
		snprintf(x->text, sizeof(x->text), "%s", m->call_event->reason);
		break;
	case RINGBID__AGENT_MSG__BODY_ERROR:
		x->code = m->error->code;
		snprintf(x->text, sizeof(x->text), "%s", m->error->message);
		break;
	default:
		fail_msg("unexpected client message %d", m->body_case);
	}
}

static void op_broker(void *arg, const Ringbid__Envelope *e)
{
	fx *f = arg;
	if (f->count_only) {
		f->sent++;
		return;
	}
	assert_true(f->nbm < CAP);
	bmsg *x = &f->bm[f->nbm++];
	memset(x, 0, sizeof(*x));
	x->body = e->body_case;
	if (e->body_case == RINGBID__ENVELOPE__BODY_OFFER_RESULT) {
		x->offer_id = e->offer_result->offer_id;
		x->agent_id = e->offer_result->agent_id;
		x->result = e->offer_result->result;
		snprintf(x->call_id, sizeof(x->call_id), "%s", e->offer_result->call_id);
	} else if (e->body_case == RINGBID__ENVELOPE__BODY_AGENT_HANGUP) {
		x->agent_id = e->agent_hangup->agent_id;
		snprintf(x->call_id, sizeof(x->call_id), "%s", e->agent_hangup->call_id);
	} else {
		fail_msg("unexpected broker message %d", e->body_case);
	}
}

static void op_auction(void *arg, const Ringbid__Envelope *e)
{
	fx *f = arg;
	if (f->count_only) {
		f->sent++;
		return;
	}
	assert_true(f->nam < CAP);
	amsg *x = &f->am[f->nam++];
	memset(x, 0, sizeof(*x));
	x->body = e->body_case;
	if (e->body_case == RINGBID__ENVELOPE__BODY_AGENT) {
		x->agent_id = e->agent->agent_id;
		x->available = e->agent->available;
		x->state_seq = e->agent->state_seq;
		x->since = e->agent->available_since_us;
		x->score = e->agent->score;
		x->n_skills = e->agent->n_skills;
		x->n_ps = e->agent->n_program_scores;
		if (x->n_ps > 0)
			snprintf(x->ps0, sizeof(x->ps0), "%s=%g",
			         e->agent->program_scores[0]->program,
			         e->agent->program_scores[0]->score);
	} else if (e->body_case == RINGBID__ENVELOPE__BODY_SNAPSHOT) {
		x->snapshot_id = e->snapshot->snapshot_id;
		x->first = e->snapshot->first;
		x->last = e->snapshot->last;
		x->n_agents = e->snapshot->n_agents;
		x->packed = protobuf_c_message_get_packed_size(&e->snapshot->base);
		for (size_t i = 0; i < e->snapshot->n_agents; i++) {
			assert_true(e->snapshot->agents[i]->agent_id != 0);
			x->n_ps += e->snapshot->agents[i]->n_program_scores;
		}
	} else {
		fail_msg("unexpected auction message %d", e->body_case);
	}
}

static void op_schedule(void *arg, uint64_t t)
{
	fx *f = arg;
	f->scheduled = t;
}

static uint64_t op_wall(void *arg)
{
	return ((fx *)arg)->wall;
}

static uint64_t op_mono(void *arg)
{
	return ((fx *)arg)->mono;
}

static fx *fx_new_hb(uint32_t max_missed, uint64_t heartbeat_ms)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->mono = 1000 * SEC;
	f->wall = 1700000000ULL * SEC;
	presence_ops ops = {
	        .client = op_client,
	        .broker = op_broker,
	        .auction = op_auction,
	        .schedule = op_schedule,
	        .wall_us = op_wall,
	        .mono_us = op_mono,
	        .arg = f,
	};
	presence_config cfg = {
	        .heartbeat_timeout_ms = heartbeat_ms,
	        .max_missed = max_missed,
	        .session_ttl_ms = 3600 * 1000,
	};
	assert_int_equal(presence_core_new(&ops, &cfg, &f->c), 0);
	return f;
}

// Most tests are not about heartbeats: an hour of silence is allowed.
static fx *fx_new(uint32_t max_missed)
{
	return fx_new_hb(max_missed, 3600 * 1000);
}

static void fx_free(fx *f)
{
	presence_core_free(f->c);
	free(f);
}

static void clear(fx *f)
{
	f->ncm = f->nbm = f->nam = 0;
}

static void advance(fx *f, uint64_t us)
{
	f->mono += us;
	f->wall += us;
	presence_core_tick(f->c);
}

static presence_agent *add_agent(fx *f, uint64_t id, double score)
{
	char *skills[] = {"sales", "es"};
	presence_roster_row row = {
	        .id = id,
	        .secret_hash = "$argon2id$v=19$m=65536,t=2,p=1$fake",
	        .skills = skills,
	        .n_skills = 2,
	        .score = score,
	};
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	presence_agent *a = presence_core_find(f->c, id);
	assert_non_null(a);
	return a;
}

static presence_agent *login(fx *f, uint64_t id, uint32_t pipe, char token[RB_TOKEN_HEX])
{
	presence_agent *a = presence_core_find(f->c, id);
	if (a == NULL)
		a = add_agent(f, id, 50);
	char tmp[RB_TOKEN_HEX];
	assert_int_equal(presence_core_login(f->c, a, pipe, token != NULL ? token : tmp), 0);
	return a;
}

static presence_agent *ready_agent(fx *f, uint64_t id, uint32_t pipe, char token[RB_TOKEN_HEX])
{
	presence_agent *a = login(f, id, pipe, token);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	return a;
}

static void offer(fx *f, uint64_t offer_id, const char *call_id, uint64_t agent_id,
                  uint32_t ring_ms, uint32_t wrap_s)
{
	Ringbid__Offer o = RINGBID__OFFER__INIT;
	o.offer_id = offer_id;
	o.call_id = (char *)call_id;
	o.agent_id = agent_id;
	o.program = "sales";
	o.arrived_us = f->wall - 12 * SEC;
	o.ring_timeout_ms = ring_ms;
	o.wrap_up_s = wrap_s;
	o.caller_masked = "+1*******42";
	assert_int_equal(presence_core_offer(f->c, &o), 0);
}

// The broker's CallConnected: it has taken the agent's ACCEPTED and the call is connected on
// its disk.
static int call_connected(fx *f, uint64_t offer_id, const char *call_id, uint64_t agent_id,
                          uint64_t answered_us)
{
	Ringbid__CallConnected cc = RINGBID__CALL_CONNECTED__INIT;
	cc.offer_id = offer_id;
	cc.call_id = (char *)call_id;
	cc.agent_id = agent_id;
	cc.answered_us = answered_us;
	return presence_core_call_connected(f->c, &cc);
}

// The agent accepts its offer and the broker connects the call: ON_CALL.
static void accept_call(fx *f, presence_agent *a, uint64_t offer_id)
{
	char call_id[PRESENCE_ID_MAX + 1];
	snprintf(call_id, sizeof(call_id), "%s", presence_agent_call_id(a));
	assert_int_equal(presence_core_answer(f->c, a, offer_id, true), 0);
	assert_true(presence_agent_connecting(a));
	assert_int_equal(call_connected(f, offer_id, call_id, presence_agent_id(a), f->wall), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_false(presence_agent_connecting(a));
}

static const bmsg *last_result(const fx *f)
{
	for (size_t i = f->nbm; i > 0; i--)
		if (f->bm[i - 1].body == RINGBID__ENVELOPE__BODY_OFFER_RESULT)
			return &f->bm[i - 1];
	return NULL;
}

static size_t count_results(const fx *f, int result)
{
	size_t n = 0;
	for (size_t i = 0; i < f->nbm; i++)
		if (f->bm[i].body == RINGBID__ENVELOPE__BODY_OFFER_RESULT &&
		    f->bm[i].result == result)
			n++;
	return n;
}

static const amsg *last_update(const fx *f, uint64_t id)
{
	for (size_t i = f->nam; i > 0; i--)
		if (f->am[i - 1].body == RINGBID__ENVELOPE__BODY_AGENT &&
		    f->am[i - 1].agent_id == id)
			return &f->am[i - 1];
	return NULL;
}

static const cmsg *find_client(const fx *f, Ringbid__AgentMsg__BodyCase body, int kind)
{
	for (size_t i = f->ncm; i > 0; i--) {
		const cmsg *x = &f->cm[i - 1];
		if (x->body == body &&
		    (body != RINGBID__AGENT_MSG__BODY_CALL_EVENT || x->kind == kind))
			return x;
	}
	return NULL;
}

static int group_setup(void **state)
{
	(void)state;
	return rb_secret_init();
}

// ---------------------------------------------------------------------------------------------

static void test_transition_table(void **state)
{
	(void)state;
	// The machine of DESIGN §4, written out pair by pair.
	static const struct {
		presence_state from, to;
	} legal[] = {
	        {PRESENCE_OFFLINE, PRESENCE_NOT_READY},   {PRESENCE_OFFLINE, PRESENCE_ON_CALL},
	        {PRESENCE_NOT_READY, PRESENCE_AVAILABLE}, {PRESENCE_NOT_READY, PRESENCE_OFFLINE},
	        {PRESENCE_NOT_READY, PRESENCE_ON_CALL},   {PRESENCE_AVAILABLE, PRESENCE_NOT_READY},
	        {PRESENCE_AVAILABLE, PRESENCE_RESERVED},  {PRESENCE_AVAILABLE, PRESENCE_OFFLINE},
	        {PRESENCE_AVAILABLE, PRESENCE_ON_CALL},   {PRESENCE_RESERVED, PRESENCE_ON_CALL},
	        {PRESENCE_RESERVED, PRESENCE_AVAILABLE},  {PRESENCE_RESERVED, PRESENCE_NOT_READY},
	        {PRESENCE_RESERVED, PRESENCE_OFFLINE},    {PRESENCE_ON_CALL, PRESENCE_WRAP_UP},
	        {PRESENCE_WRAP_UP, PRESENCE_AVAILABLE},   {PRESENCE_WRAP_UP, PRESENCE_NOT_READY},
	        {PRESENCE_WRAP_UP, PRESENCE_OFFLINE},     {PRESENCE_WRAP_UP, PRESENCE_ON_CALL},
	};
	for (int from = 0; from < PRESENCE_NSTATES; from++) {
		for (int to = 0; to < PRESENCE_NSTATES; to++) {
			bool want = false;
			for (size_t i = 0; i < sizeof(legal) / sizeof(legal[0]); i++)
				if (legal[i].from == (presence_state)from &&
				    legal[i].to == (presence_state)to)
					want = true;
			if (presence_transition_legal(from, to) != want)
				fail_msg("%s -> %s should be %s", presence_state_name(from),
				         presence_state_name(to), want ? "legal" : "illegal");
		}
	}
	assert_false(presence_transition_legal(PRESENCE_NSTATES, PRESENCE_OFFLINE));
	assert_false(presence_transition_legal(PRESENCE_OFFLINE, PRESENCE_NSTATES));
}

// Walks an agent to state s along legal transitions.
static void walk_to(fx *f, presence_agent *a, presence_state s)
{
	static const presence_state path[] = {PRESENCE_NOT_READY, PRESENCE_AVAILABLE,
	                                      PRESENCE_RESERVED, PRESENCE_ON_CALL,
	                                      PRESENCE_WRAP_UP};
	for (size_t i = 0; i < 5 && presence_agent_state(a) != s; i++)
		assert_int_equal(presence_transition(f->c, a, path[i], "walk"), 0);
	assert_int_equal(presence_agent_state(a), s);
}

static void test_transition_function(void **state)
{
	(void)state;
	for (int from = 0; from < PRESENCE_NSTATES; from++) {
		for (int to = 0; to < PRESENCE_NSTATES; to++) {
			fx *f = fx_new(2);
			presence_agent *a = add_agent(f, 7, 60);
			walk_to(f, a, (presence_state)from);
			uint64_t seq = presence_agent_state_seq(a);
			uint32_t counts[PRESENCE_NSTATES];
			clear(f);
			f->wall += SEC;
			int rv = presence_transition(f->c, a, (presence_state)to, "test");
			presence_core_counts(f->c, counts);
			if (presence_transition_legal(from, to)) {
				assert_int_equal(rv, 0);
				assert_int_equal(presence_agent_state(a), to);
				assert_int_equal(presence_agent_state_seq(a), seq + 1);
				assert_int_equal(counts[to], 1);
				// Every transition tells the auction, with the new sequence.
				const amsg *u = last_update(f, 7);
				assert_non_null(u);
				assert_int_equal(u->state_seq, seq + 1);
				assert_int_equal(u->available, false); // no live session
			} else {
				assert_int_equal(rv, RB_ESTATE);
				assert_int_equal(presence_agent_state(a), from);
				assert_int_equal(presence_agent_state_seq(a), seq);
				assert_int_equal(counts[from], 1);
				assert_int_equal(f->nam, 0);
			}
			fx_free(f);
		}
	}
}

static void test_login_and_ready(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	add_agent(f, 1, 80);
	char token[RB_TOKEN_HEX];
	clear(f);
	presence_agent *a = login(f, 1, 11, token);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	assert_true(presence_agent_live(a));
	assert_int_equal(strlen(token), 64);
	// The status event goes to the agent's own connection.
	const cmsg *st = find_client(f, RINGBID__AGENT_MSG__BODY_STATUS, 0);
	assert_non_null(st);
	assert_int_equal(st->pipe, 11);
	assert_int_equal(st->state, PRESENCE_NOT_READY);

	presence_agent *b = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &b), 0);
	assert_ptr_equal(a, b);
	assert_int_equal(presence_core_auth(f->c, "00", &b), RB_EAUTH);
	char other[RB_TOKEN_HEX];
	memcpy(other, token, sizeof(other));
	other[0] = other[0] == 'a' ? 'b' : 'a';
	assert_int_equal(presence_core_auth(f->c, other, &b), RB_EAUTH);

	f->wall += 5 * SEC;
	clear(f);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	const amsg *u = last_update(f, 1);
	assert_non_null(u);
	assert_true(u->available);
	assert_int_equal(u->since, f->wall);
	assert_int_equal(u->n_skills, 2);
	assert_true(u->score == 80);
	// Ready again is not an error and changes nothing.
	uint64_t seq = presence_agent_state_seq(a);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	assert_int_equal(presence_agent_state_seq(a), seq);
	// Pause and back.
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	assert_false(last_update(f, 1)->available);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_ON_CALL), RB_EINVAL);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	fx_free(f);
}

static void test_quiet_request(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = login(f, 1, 11, NULL);
	clear(f);
	// The reply to the client's own request carries the status: no duplicate event.
	presence_core_quiet(f->c, a);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	presence_core_quiet(f->c, NULL);
	assert_int_equal(f->ncm, 0);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), 0);
	assert_int_equal(f->ncm, 1);
	fx_free(f);
}

static void test_offer_accept_end(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	ready_agent(f, 2, 22, NULL);
	clear(f);
	offer(f, 100, "c1", 1, 15000, 30);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_offer_id(a), 100);
	assert_string_equal(presence_agent_call_id(a), "c1");
	// The offer reaches agent 1's connection only.
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_OFFER, 0);
	assert_non_null(ev);
	assert_int_equal(ev->pipe, 11);
	assert_int_equal(ev->offer_id, 100);
	assert_int_equal(ev->wait_ms, 12000);
	assert_int_equal(ev->ring_ms, 15000);
	for (size_t i = 0; i < f->ncm; i++)
		assert_int_equal(f->cm[i].pipe, 11);
	assert_false(last_update(f, 1)->available);
	// The ring timer is scheduled.
	assert_int_equal(f->scheduled, f->mono + 15000 * MS);

	// Another agent's offer id is unknown to this one.
	presence_agent *b = presence_core_find(f->c, 2);
	assert_int_equal(presence_core_answer(f->c, b, 100, true), RB_ENOTFOUND);
	assert_int_equal(presence_agent_state(b), PRESENCE_AVAILABLE);
	assert_int_equal(presence_core_answer(f->c, a, 999, true), RB_ENOTFOUND);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);

	clear(f);
	assert_int_equal(presence_core_answer(f->c, a, 100, true), 0);
	// Accepted, not connected: the broker has the answer, the client no call yet.
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_true(presence_agent_connecting(a));
	const bmsg *r = last_result(f);
	assert_non_null(r);
	assert_int_equal(r->result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_int_equal(r->offer_id, 100);
	assert_int_equal(r->agent_id, 1);
	assert_string_equal(r->call_id, "c1");
	assert_null(find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                        RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED));
	// Accepting again is idempotent: no second result.
	assert_int_equal(presence_core_answer(f->c, a, 100, true), 0);
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED), 1);
	// The ring timer no longer fires.
	clear(f);
	advance(f, 20 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_int_equal(f->nbm, 0);
	// The broker connects the call: now the client hears it.
	assert_int_equal(call_connected(f, 100, "c1", 1, f->wall), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	ev = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                 RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_non_null(ev);
	assert_string_equal(ev->call_id, "c1");
	assert_int_equal(ev->offer_id, 100);
	assert_int_equal(ev->pipe, 11);
	assert_int_equal(f->nbm, 0);

	// Ending another call is refused; ending this one goes to WRAP_UP.
	assert_int_equal(presence_core_end_call(f->c, a, "c2", false, false), RB_ENOTFOUND);
	assert_int_equal(presence_core_end_call(f->c, a, "c1", false, false), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	assert_int_equal(f->bm[f->nbm - 1].body, RINGBID__ENVELOPE__BODY_AGENT_HANGUP);
	assert_string_equal(f->bm[f->nbm - 1].call_id, "c1");
	assert_int_equal(presence_core_end_call(f->c, a, "c1", false, false), 0); // repeated: fine
	assert_int_equal(f->bm[f->nbm - 1].body, RINGBID__ENVELOPE__BODY_AGENT_HANGUP);
	size_t hangups = 0;
	for (size_t i = 0; i < f->nbm; i++)
		hangups += f->bm[i].body == RINGBID__ENVELOPE__BODY_AGENT_HANGUP;
	assert_int_equal(hangups, 1);

	// Wrap-up lasts the offer's 30 s.
	advance(f, 29 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	advance(f, 1 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_true(last_update(f, 1)->available);
	fx_free(f);
}

static void test_wrap_up_zero_and_ready(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 0);
	accept_call(f, a, 1);
	assert_int_equal(presence_core_end_call(f->c, a, "c1", false, false), 0);
	// No wrap-up time: straight back to AVAILABLE.
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);

	offer(f, 2, "c2", 1, 15000, 60);
	accept_call(f, a, 2);
	// The broker ends the call: WRAP_UP, and CallEnded again changes nothing.
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "c2";
	ce.agent_id = 1;
	ce.wrap_up_s = 60;
	clear(f);
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	assert_non_null(find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                            RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED));
	uint64_t seq = presence_agent_state_seq(a);
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(presence_agent_state_seq(a), seq);
	// The agent says ready before the wrap-up time is over; the timer then does nothing.
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	seq = presence_agent_state_seq(a);
	advance(f, 61 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_state_seq(a), seq);
	// WRAP_UP -> NOT_READY on request.
	offer(f, 3, "c3", 1, 15000, 60);
	accept_call(f, a, 3);
	presence_core_end_call(f->c, a, "c3", false, false);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	// SetState is refused in RESERVED and ON_CALL.
	presence_core_set_state(f->c, a, PRESENCE_AVAILABLE);
	offer(f, 4, "c4", 1, 15000, 60);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), RB_ESTATE);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), RB_ESTATE);
	accept_call(f, a, 4);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), RB_ESTATE);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), RB_ESTATE);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	fx_free(f);
}

// The agent's hang-up and its availability go out on different links: the auction hears the
// agent free only once the broker has answered the hang-up, a sync shows the call gone, or the
// wait runs out.
static void test_hangup_waits_for_broker(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 0);
	accept_call(f, a, 1);
	clear(f);
	assert_int_equal(presence_core_end_call(f->c, a, "c1", true, false), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(f->bm[f->nbm - 1].body, RINGBID__ENVELOPE__BODY_AGENT_HANGUP);
	assert_non_null(last_update(f, 1));
	assert_false(last_update(f, 1)->available);
	// The broker's end of some other call settles nothing.
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "other";
	ce.agent_id = 1;
	size_t nam = f->nam;
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(f->nam, nam);
	// Its answer to the hang-up does: available, with no new state and nothing for the client.
	uint64_t seq = presence_agent_state_seq(a);
	size_t ncm = f->ncm;
	ce.call_id = "c1";
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(f->nam, nam + 1);
	assert_true(last_update(f, 1)->available);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_state_seq(a), seq);
	assert_int_equal(f->ncm, ncm);
	// A repeat changes nothing.
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(f->nam, nam + 1);
	assert_int_equal(presence_core_stats(f->c)->hangups_unconfirmed, 0);

	// No answer: after PRESENCE_HANGUP_CONFIRM_MS the auction hears the agent free anyway.
	offer(f, 2, "c2", 1, 15000, 0);
	accept_call(f, a, 2);
	presence_core_end_call(f->c, a, "c2", false, false);
	assert_false(last_update(f, 1)->available);
	nam = f->nam;
	advance(f, (PRESENCE_HANGUP_CONFIRM_MS - 1) * 1000ull);
	assert_int_equal(f->nam, nam);
	advance(f, 1000);
	assert_int_equal(f->nam, nam + 1);
	assert_true(last_update(f, 1)->available);
	assert_int_equal(presence_core_stats(f->c)->hangups_unconfirmed, 1);
	// The answer coming late changes nothing more.
	ce.call_id = "c2";
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(f->nam, nam + 1);

	// With wrap-up time: the agent says ready early, and still waits for the broker; a sync
	// that lists no call at the agent settles the hang-up.
	offer(f, 3, "c3", 1, 15000, 60);
	accept_call(f, a, 3);
	presence_core_end_call(f->c, a, "c3", false, false);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	assert_false(last_update(f, 1)->available);
	Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
	cs.first = cs.last = true;
	cs.sync_id = 9;
	nam = f->nam;
	assert_int_equal(presence_core_call_sync(f->c, &cs), 0);
	assert_int_equal(f->nam, nam + 1);
	assert_true(last_update(f, 1)->available);

	// An offer reaching an agent whose hang-up is still unanswered (the broker had it and
	// matched the agent again before the answer arrived) rings as usual.
	offer(f, 4, "c4", 1, 15000, 0);
	accept_call(f, a, 4);
	presence_core_end_call(f->c, a, "c4", false, false);
	offer(f, 5, "c5", 1, 15000, 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_false(last_update(f, 1)->available);
	// Freed with its hang-up still waiting: the core lets it go cleanly.
	accept_call(f, a, 5);
	presence_core_end_call(f->c, a, "c5", false, false);
	assert_false(last_update(f, 1)->available);
	fx_free(f);
}

static void test_offer_refused_and_duplicate(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = login(f, 1, 11, NULL); // NOT_READY
	clear(f);
	offer(f, 5, "c1", 1, 15000, 30);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
	// The auction gets the current picture again.
	assert_non_null(last_update(f, 1));
	// Unknown agent.
	offer(f, 6, "c2", 999, 15000, 30);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
	assert_int_equal(last_result(f)->agent_id, 999);

	presence_core_set_state(f->c, a, PRESENCE_AVAILABLE);
	offer(f, 7, "c3", 1, 15000, 30);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	uint64_t seq = presence_agent_state_seq(a);
	clear(f);
	offer(f, 7, "c3", 1, 15000, 30); // the same offer again
	assert_int_equal(presence_agent_state_seq(a), seq);
	assert_int_equal(f->nbm, 0);
	// A second offer while one rings is refused.
	offer(f, 8, "c4", 1, 15000, 30);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
	assert_int_equal(presence_agent_offer_id(a), 7);

	// Bad fields change nothing.
	Ringbid__Offer o = RINGBID__OFFER__INIT;
	o.offer_id = 9;
	o.agent_id = 1;
	o.call_id = "bad id with spaces";
	o.program = "sales";
	o.ring_timeout_ms = 1000;
	clear(f);
	assert_int_equal(presence_core_offer(f->c, &o), RB_EINVAL);
	o.call_id = "c9";
	o.ring_timeout_ms = 0;
	assert_int_equal(presence_core_offer(f->c, &o), RB_EINVAL);
	o.ring_timeout_ms = 1000;
	o.offer_id = 0;
	assert_int_equal(presence_core_offer(f->c, &o), RB_EINVAL);
	o.offer_id = 9;
	o.caller_masked = "+1\x01";
	assert_int_equal(presence_core_offer(f->c, &o), RB_EINVAL);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	assert_int_equal(presence_agent_offer_id(a), 7);
	fx_free(f);
}

static void test_long_masked_caller(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	Ringbid__Offer o = RINGBID__OFFER__INIT;
	o.offer_id = 1;
	o.agent_id = 1;
	o.call_id = "c1";
	o.program = "sales";
	o.ring_timeout_ms = 1000;
	o.caller_masked = "+** (***) ***-**** ext. ****** / +** (***) ***-**** ext. ****42";
	assert_int_equal(presence_core_offer(f->c, &o), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	fx_free(f);
}

static void test_decline_is_not_a_miss(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 10000, 30);
	clear(f);
	assert_int_equal(presence_core_answer(f->c, a, 1, false), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED);
	assert_int_equal(presence_agent_missed(a), 0);
	assert_true(last_update(f, 1)->available);
	// Declining again: same answer, no second result.
	assert_int_equal(presence_core_answer(f->c, a, 1, false), 0);
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED), 1);

	// Any number of declines never pauses the agent.
	for (uint64_t id = 2; id < 10; id++) {
		offer(f, id, "cx", 1, 10000, 30);
		presence_core_answer(f->c, a, id, false);
	}
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_missed(a), 0);

	// A decline between two misses neither counts nor breaks the count.
	offer(f, 20, "c20", 1, 10000, 30);
	advance(f, 10 * SEC);
	assert_int_equal(presence_agent_missed(a), 1);
	offer(f, 21, "c21", 1, 10000, 30);
	presence_core_answer(f->c, a, 21, false);
	assert_int_equal(presence_agent_missed(a), 1);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	fx_free(f);
}

static void test_missed_offers_pause(void **state)
{
	(void)state;
	fx *f = fx_new(3);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	advance(f, 14999 * MS);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	advance(f, 1 * MS);
	// Ring timeout: TIMEOUT to the broker, withdrawn at the client, one miss, still available.
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT);
	assert_int_equal(last_result(f)->offer_id, 1);
	const cmsg *w = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                            RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN);
	assert_non_null(w);
	assert_int_equal(w->offer_id, 1);
	assert_string_equal(w->call_id, "c1");
	assert_int_equal(presence_agent_missed(a), 1);
	// A late answer to the timed-out offer gets the status, and changes nothing.
	assert_int_equal(presence_core_answer(f->c, a, 1, true), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);

	offer(f, 2, "c2", 1, 15000, 30);
	advance(f, 15 * SEC);
	assert_int_equal(presence_agent_missed(a), 2);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	offer(f, 3, "c3", 1, 15000, 30);
	clear(f);
	advance(f, 15 * SEC);
	// Exactly the third miss in a row pauses the agent.
	assert_int_equal(presence_agent_missed(a), 3);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	const cmsg *st = find_client(f, RINGBID__AGENT_MSG__BODY_STATUS, 0);
	assert_non_null(st);
	assert_string_equal(st->text, "missed 3 offers in a row");
	assert_false(last_update(f, 1)->available);

	// Ready by hand resets the count.
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	assert_int_equal(presence_agent_missed(a), 0);
	offer(f, 4, "c4", 1, 15000, 30);
	advance(f, 15 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_missed(a), 1);
	fx_free(f);
}

static void test_accept_resets_missed(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 1000, 0);
	advance(f, 1 * SEC);
	assert_int_equal(presence_agent_missed(a), 1);
	offer(f, 2, "c2", 1, 1000, 0);
	accept_call(f, a, 2);
	assert_int_equal(presence_agent_missed(a), 0);
	presence_core_end_call(f->c, a, "c2", false, false);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	// One miss after the accept is the first of a new row.
	offer(f, 3, "c3", 1, 1000, 0);
	advance(f, 1 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	offer(f, 4, "c4", 1, 1000, 0);
	advance(f, 1 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	fx_free(f);
}

static void test_offer_cancel(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 30);
	Ringbid__OfferCancel oc = RINGBID__OFFER_CANCEL__INIT;
	oc.offer_id = 2; // not the current offer: ignored
	oc.agent_id = 1;
	oc.call_id = "c1";
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	oc.offer_id = 1;
	clear(f);
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_missed(a), 0);
	assert_int_equal(f->nbm, 0); // the broker withdrew it: no result
	assert_non_null(find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                            RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN));
	// The ring timer of the cancelled offer does not fire.
	advance(f, 20 * SEC);
	assert_int_equal(f->nbm, 0);
	assert_int_equal(presence_agent_missed(a), 0);
	// An answer after the cancel: current status, nothing sent.
	assert_int_equal(presence_core_answer(f->c, a, 1, true), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(f->nbm, 0);
	oc.agent_id = 0;
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), RB_EINVAL);
	fx_free(f);
}

static void test_loss_during_offer(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	presence_core_pipe_closed(f->c, 11);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_false(presence_agent_live(a));
	assert_int_equal(presence_agent_pipe(a), 0);
	assert_true(presence_agent_has_session(a)); // resumable
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	assert_int_equal(last_result(f)->offer_id, 1);
	assert_false(last_update(f, 1)->available);
	assert_int_equal(f->ncm, 0); // the connection is gone: nothing sent to it
	// No TIMEOUT later for the same offer.
	advance(f, 20 * SEC);
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT), 0);
	// A closed connection that carries no session changes nothing.
	presence_core_pipe_closed(f->c, 12345);
	fx_free(f);
}

static void test_silence_during_offer(void **state)
{
	(void)state;
	fx *f = fx_new_hb(2, 15000);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	advance(f, 10 * SEC);
	offer(f, 1, "c1", 1, 30000, 30);
	clear(f);
	advance(f, 4999 * MS);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	advance(f, 1 * MS); // 15 s since the agent was last heard
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	// The connection may still be there: it hears why.
	const cmsg *st = find_client(f, RINGBID__AGENT_MSG__BODY_STATUS, 0);
	assert_non_null(st);
	assert_int_equal(st->state, PRESENCE_OFFLINE);
	fx_free(f);
}

static void test_loss_during_call_and_resume(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char token[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, token);
	offer(f, 1, "c1", 1, 15000, 20);
	accept_call(f, a, 1);
	clear(f);
	presence_core_pipe_closed(f->c, 11);
	// The voice leg is not the data link: the call goes on.
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_string_equal(presence_agent_call_id(a), "c1");
	assert_int_equal(f->nbm, 0);
	advance(f, 60 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);

	// The client comes back on a new connection with its token.
	presence_agent *b = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &b), 0);
	assert_ptr_equal(a, b);
	presence_core_touch(f->c, a, 33);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_pipe(a), 33);
	assert_true(presence_agent_live(a));
	Ringbid__AgentStatus st;
	presence_core_status(f->c, a, &st);
	assert_string_equal(st.call_id, "c1");
	assert_int_equal(st.state, RINGBID__AGENT_STATE__AGENT_ON_CALL);

	// Lost again; the broker ends the call; wrap-up ends without a session: OFFLINE.
	presence_core_pipe_closed(f->c, 33);
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "c1";
	ce.agent_id = 1;
	ce.wrap_up_s = 20;
	presence_core_call_ended(f->c, &ce);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	advance(f, 20 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	// Resuming then starts NOT_READY.
	assert_int_equal(presence_core_auth(f->c, token, &b), 0);
	presence_core_touch(f->c, a, 44);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	fx_free(f);
}

static void test_resume_restores(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char token[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, token);
	presence_core_pipe_closed(f->c, 11);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	presence_agent *b = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &b), 0);
	clear(f);
	presence_core_touch(f->c, a, 12);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	assert_int_equal(presence_agent_pipe(a), 12);
	assert_ptr_equal(presence_core_find_pipe(f->c, 12), a);
	assert_null(presence_core_find_pipe(f->c, 11));
	// A token used from yet another connection rebinds; the old one hears why.
	clear(f);
	presence_core_touch(f->c, a, 13);
	assert_int_equal(presence_agent_pipe(a), 13);
	const cmsg *e = find_client(f, RINGBID__AGENT_MSG__BODY_ERROR, 0);
	assert_non_null(e);
	assert_int_equal(e->pipe, 12);
	assert_string_equal(e->text, "session replaced elsewhere");
	fx_free(f);
}

static void test_rebind_resends_offer(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	// The client reconnected before the old connection was noticed closed.
	presence_core_touch(f->c, a, 12);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_OFFER, 0);
	assert_non_null(ev);
	assert_int_equal(ev->pipe, 12);
	assert_int_equal(ev->offer_id, 1);
	fx_free(f);
}

static void test_login_replaces_session(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char t1[RB_TOKEN_HEX], t2[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, t1);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	presence_agent *b = login(f, 1, 22, t2);
	assert_ptr_equal(a, b);
	assert_string_not_equal(t1, t2);
	// The older connection is told and unbound; its offer is lost; the new login is NOT_READY.
	const cmsg *e = find_client(f, RINGBID__AGENT_MSG__BODY_ERROR, 0);
	assert_non_null(e);
	assert_int_equal(e->pipe, 11);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	assert_int_equal(presence_agent_state(a), PRESENCE_NOT_READY);
	assert_int_equal(presence_agent_pipe(a), 22);
	presence_agent *x = NULL;
	assert_int_equal(presence_core_auth(f->c, t1, &x), RB_EAUTH);
	assert_int_equal(presence_core_auth(f->c, t2, &x), 0);
	// Closing the old connection now changes nothing.
	presence_core_pipe_closed(f->c, 11);
	assert_true(presence_agent_live(a));

	// Login while ON_CALL keeps the call.
	presence_core_set_state(f->c, a, PRESENCE_AVAILABLE);
	offer(f, 2, "c2", 1, 15000, 30);
	accept_call(f, a, 2);
	presence_core_pipe_closed(f->c, 22);
	login(f, 1, 23, NULL);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_string_equal(presence_agent_call_id(a), "c2");
	fx_free(f);
}

static void test_one_connection_one_agent(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	// Agent 2 logs in over agent 1's connection: agent 1 loses its link.
	presence_agent *b = login(f, 2, 11, NULL);
	assert_ptr_equal(presence_core_find_pipe(f->c, 11), b);
	assert_int_equal(presence_agent_pipe(a), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	fx_free(f);
}

static void test_logout(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char token[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, token);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	presence_core_logout(f->c, a);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	assert_false(presence_agent_has_session(a));
	presence_agent *x = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &x), RB_EAUTH);

	// Logout during a call: the call keeps running until the broker ends it.
	char t2[RB_TOKEN_HEX];
	ready_agent(f, 1, 12, t2);
	offer(f, 2, "c2", 1, 15000, 5);
	accept_call(f, a, 2);
	presence_core_logout(f->c, a);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "c2";
	ce.agent_id = 1;
	ce.wrap_up_s = 5;
	presence_core_call_ended(f->c, &ce);
	advance(f, 5 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	fx_free(f);
}

static void test_silent_list_order(void **state)
{
	(void)state;
	fx *f = fx_new_hb(2, 15000);
	presence_agent *a = login(f, 1, 11, NULL); // heard at t0
	// The first live session sets the wake-up for its silence deadline.
	assert_int_equal(f->scheduled, f->mono + 15 * SEC);
	advance(f, 1 * SEC);
	presence_agent *b = login(f, 2, 22, NULL); // t0+1
	advance(f, 1 * SEC);
	presence_agent *c = login(f, 3, 33, NULL); // t0+2
	uint64_t t0 = f->mono - 2 * SEC;
	assert_int_equal(presence_core_next_deadline(f->c), t0 + 15 * SEC);
	advance(f, 8 * SEC);
	presence_core_touch(f->c, a, 11); // a heard at t0+10: moves to the tail
	assert_int_equal(presence_core_next_deadline(f->c), t0 + 16 * SEC);
	assert_int_equal(presence_core_live_sessions(f->c), 3);

	advance(f, 5999 * MS); // t0+15.999
	assert_true(presence_agent_live(b));
	advance(f, 1 * MS); // t0+16: b is silent 15 s
	assert_false(presence_agent_live(b));
	assert_true(presence_agent_live(c));
	assert_true(presence_agent_live(a));
	assert_int_equal(presence_core_next_deadline(f->c), t0 + 17 * SEC);
	assert_int_equal(f->scheduled, t0 + 17 * SEC);
	advance(f, 1 * SEC);
	assert_false(presence_agent_live(c));
	assert_true(presence_agent_live(a));
	assert_int_equal(presence_core_next_deadline(f->c), t0 + 25 * SEC);
	advance(f, 8 * SEC);
	assert_false(presence_agent_live(a));
	assert_int_equal(presence_core_next_deadline(f->c), 0);
	assert_int_equal(presence_core_live_sessions(f->c), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_int_equal(presence_agent_state(b), PRESENCE_OFFLINE);
	fx_free(f);
}

static void test_session_expiry(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char token[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, token);
	// Keep the link alive for the whole hour.
	for (int i = 0; i < 359; i++) {
		advance(f, 10 * SEC);
		presence_core_touch(f->c, a, 11);
	}
	presence_core_janitor(f->c);
	assert_true(presence_agent_has_session(a));
	advance(f, 10 * SEC); // one hour since login
	clear(f);
	presence_core_janitor(f->c);
	assert_false(presence_agent_has_session(a));
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	presence_agent *x = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &x), RB_EAUTH);
	const cmsg *e = find_client(f, RINGBID__AGENT_MSG__BODY_ERROR, 0);
	assert_non_null(e);
	assert_int_equal(e->code, RB_EAUTH);
	fx_free(f);
}

static void test_call_sync(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a1 = ready_agent(f, 1, 11, NULL);
	presence_agent *a2 = ready_agent(f, 2, 22, NULL);
	presence_agent *a3 = ready_agent(f, 3, 33, NULL);
	presence_agent *a4 = ready_agent(f, 4, 44, NULL);
	offer(f, 10, "keep", 1, 15000, 30);   // listed: kept
	offer(f, 11, "gone", 2, 15000, 30);   // not listed: withdrawn
	offer(f, 12, "oncall", 3, 15000, 30); // connected, not listed: the call is over
	accept_call(f, a3, 12);

	Ringbid__AgentCall c1 = RINGBID__AGENT_CALL__INIT, c2 = RINGBID__AGENT_CALL__INIT,
	                   c3 = RINGBID__AGENT_CALL__INIT, c4 = RINGBID__AGENT_CALL__INIT;
	c1.agent_id = 1;
	c1.call_id = "keep";
	c1.offer_id = 10;
	c1.state = RINGBID__CALL_STATE__CALL_OFFERED;
	c2.agent_id = 4; // presence never saw this offer: lost
	c2.call_id = "unknown-offer";
	c2.offer_id = 13;
	c2.state = RINGBID__CALL_STATE__CALL_OFFERED;
	c3.agent_id = 77; // presence knows nothing of agent 77: a session-less entry
	c3.call_id = "talking";
	c3.state = RINGBID__CALL_STATE__CALL_CONNECTED;
	c3.program = "sales";
	c3.wrap_up_s = 10;
	c4.agent_id = 2;
	c4.call_id = "bad id";
	c4.state = RINGBID__CALL_STATE__CALL_CONNECTED;
	Ringbid__AgentCall *calls[] = {&c1, &c2, &c3, &c4};
	Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
	cs.calls = calls;
	cs.n_calls = 4;
	cs.first = cs.last = true;
	cs.sync_id = 1;
	clear(f);
	// One bad entry: the whole sync is refused and nothing changes.
	assert_int_equal(presence_core_call_sync(f->c, &cs), RB_EINVAL);
	assert_int_equal(f->nbm + f->nam + f->ncm, 0);
	assert_int_equal(presence_agent_state(a2), PRESENCE_RESERVED);

	cs.n_calls = 3;
	assert_int_equal(presence_core_call_sync(f->c, &cs), 0);
	assert_int_equal(presence_agent_state(a1), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_offer_id(a1), 10);
	assert_int_equal(presence_agent_state(a2), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_state(a3), PRESENCE_WRAP_UP);
	assert_int_equal(presence_agent_state(a4), PRESENCE_AVAILABLE);
	presence_agent *a77 = presence_core_find(f->c, 77);
	assert_non_null(a77);
	assert_int_equal(presence_agent_state(a77), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_state_seq(a77), 1);
	assert_false(presence_agent_has_session(a77));
	// Exactly one result: AGENT_LOST for the offer presence never saw.
	assert_int_equal(f->nbm, 1);
	assert_int_equal(f->bm[0].result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	assert_int_equal(f->bm[0].offer_id, 13);
	assert_int_equal(f->bm[0].agent_id, 4);

	// The same picture again changes nothing more.
	uint64_t seq77 = presence_agent_state_seq(a77);
	cs.sync_id = 2;
	clear(f);
	assert_int_equal(presence_core_call_sync(f->c, &cs), 0);
	assert_int_equal(presence_agent_state_seq(a77), seq77);
	assert_int_equal(presence_agent_state(a1), PRESENCE_RESERVED);

	// Counted as ON_CALL in the stats; gone once its call and wrap-up are over.
	uint32_t counts[PRESENCE_NSTATES];
	presence_core_counts(f->c, counts);
	assert_int_equal(counts[PRESENCE_ON_CALL], 1);
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "talking";
	ce.agent_id = 77;
	ce.wrap_up_s = 10;
	presence_core_call_ended(f->c, &ce);
	advance(f, 10 * SEC);
	assert_null(presence_core_find(f->c, 77));
	assert_int_equal(presence_core_size(f->c), 4);
	fx_free(f);
}

static void test_sync_resends_hangup(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 1, "c1", 1, 15000, 60);
	accept_call(f, a, 1);
	presence_core_end_call(f->c, a, "c1", false, false);
	// The broker never heard the hang-up and still lists the call as connected.
	Ringbid__AgentCall ac = RINGBID__AGENT_CALL__INIT;
	ac.agent_id = 1;
	ac.call_id = "c1";
	ac.state = RINGBID__CALL_STATE__CALL_CONNECTED;
	Ringbid__AgentCall *calls[] = {&ac};
	Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
	cs.calls = calls;
	cs.n_calls = 1;
	cs.first = cs.last = true;
	cs.sync_id = 1;
	clear(f);
	assert_int_equal(presence_core_call_sync(f->c, &cs), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	assert_int_equal(f->nbm, 1);
	assert_int_equal(f->bm[0].body, RINGBID__ENVELOPE__BODY_AGENT_HANGUP);
	assert_string_equal(f->bm[0].call_id, "c1");

	// A connected call the agent did not end puts it ON_CALL from AVAILABLE.
	presence_core_set_state(f->c, a, PRESENCE_AVAILABLE);
	ac.call_id = "c2";
	cs.sync_id = 2;
	clear(f);
	assert_int_equal(presence_core_call_sync(f->c, &cs), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_string_equal(presence_agent_call_id(a), "c2");
	assert_non_null(find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                            RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED));
	fx_free(f);
}

// One AgentCall for a sync.
static Ringbid__AgentCall *sync_entry(Ringbid__AgentCall *ac, uint64_t agent_id,
                                      const char *call_id, uint64_t offer_id)
{
	ringbid__agent_call__init(ac);
	ac->agent_id = agent_id;
	ac->call_id = (char *)call_id;
	ac->offer_id = offer_id;
	ac->program = "sales";
	ac->wrap_up_s = 30;
	ac->state = offer_id != 0 ? RINGBID__CALL_STATE__CALL_OFFERED
	                          : RINGBID__CALL_STATE__CALL_CONNECTED;
	return ac;
}

static int sync_chunk(fx *f, uint64_t sync_id, bool first, bool last, Ringbid__AgentCall **calls,
                      size_t n)
{
	Ringbid__CallSync cs = RINGBID__CALL_SYNC__INIT;
	cs.calls = calls;
	cs.n_calls = n;
	cs.first = first;
	cs.last = last;
	cs.sync_id = sync_id;
	return presence_core_call_sync(f->c, &cs);
}

static size_t count_hangups(const fx *f, const char *call_id)
{
	size_t n = 0;
	for (size_t i = 0; i < f->nbm; i++)
		if (f->bm[i].body == RINGBID__ENVELOPE__BODY_AGENT_HANGUP &&
		    strcmp(f->bm[i].call_id, call_id) == 0)
			n++;
	return n;
}

// The broker died after the agent accepted but before its CONNECTED record reached the disk:
// the restarted broker lists the call OFFERED with that offer. The agent, still connecting,
// stays so and the broker hears ACCEPTED again; a call the agent has ended since (a broker that
// listed it OFFERED after having connected it) is accepted and hung up again.
static void test_sync_accepted_before_broker_restart(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a1 = ready_agent(f, 1, 11, NULL);
	presence_agent *a2 = ready_agent(f, 2, 22, NULL);
	presence_agent *a3 = ready_agent(f, 3, 33, NULL);
	offer(f, 10, "k1", 1, 15000, 30);
	offer(f, 11, "k2", 2, 15000, 30);
	offer(f, 12, "k3", 3, 15000, 30);
	assert_int_equal(presence_core_answer(f->c, a1, 10, true), 0);
	accept_call(f, a2, 11);
	accept_call(f, a3, 12);
	assert_int_equal(presence_core_end_call(f->c, a2, "k2", true, false), 0);
	uint64_t accepted = presence_core_stats(f->c)->offers[0];
	uint64_t seq1 = presence_agent_state_seq(a1);

	Ringbid__AgentCall e1, e2, e3;
	Ringbid__AgentCall *calls[] = {
	        sync_entry(&e1, 1, "k1", 10), sync_entry(&e2, 2, "k2", 11),
	        sync_entry(&e3, 3, "k3", 99), // an offer agent 3 never accepted
	};
	clear(f);
	assert_int_equal(sync_chunk(f, 5, true, true, calls, 3), 0);

	// Agent 1 goes on connecting, its client hears nothing, the broker hears ACCEPTED.
	assert_int_equal(presence_agent_state(a1), PRESENCE_RESERVED);
	assert_true(presence_agent_connecting(a1));
	assert_string_equal(presence_agent_call_id(a1), "k1");
	assert_int_equal(presence_agent_state_seq(a1), seq1);
	for (size_t i = 0; i < f->ncm; i++)
		assert_int_not_equal(f->cm[i].pipe, 11);
	size_t n1 = 0;
	for (size_t i = 0; i < f->nbm; i++) {
		const bmsg *m = &f->bm[i];
		if (m->agent_id != 1)
			continue;
		n1++;
		assert_int_equal(m->body, RINGBID__ENVELOPE__BODY_OFFER_RESULT);
		assert_int_equal(m->result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
		assert_int_equal(m->offer_id, 10);
		assert_string_equal(m->call_id, "k1");
	}
	assert_int_equal(n1, 1);

	// Agent 2 ended its call: ACCEPTED, then the hang-up, in that order; still in wrap-up.
	assert_int_equal(presence_agent_state(a2), PRESENCE_WRAP_UP);
	size_t i2 = 0;
	while (i2 < f->nbm && f->bm[i2].agent_id != 2)
		i2++;
	assert_true(i2 + 1 < f->nbm);
	assert_int_equal(f->bm[i2].body, RINGBID__ENVELOPE__BODY_OFFER_RESULT);
	assert_int_equal(f->bm[i2].result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_int_equal(f->bm[i2].offer_id, 11);
	assert_int_equal(f->bm[i2 + 1].body, RINGBID__ENVELOPE__BODY_AGENT_HANGUP);
	assert_string_equal(f->bm[i2 + 1].call_id, "k2");
	assert_int_equal(count_hangups(f, "k2"), 1);

	// Agent 3 is on k3 through another offer: that entry is lost, and k3, which the broker
	// does not list as connected, is over.
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST), 1);
	const bmsg *lost = last_result(f);
	assert_int_equal(lost->agent_id, 3);
	assert_int_equal(lost->offer_id, 99);
	assert_int_equal(presence_agent_state(a3), PRESENCE_WRAP_UP);

	// The repeats are not counted as new answers.
	assert_int_equal(presence_core_stats(f->c)->offers[0], accepted);

	// Once connected, the next sync lists k1 CONNECTED: that confirms it, and the client
	// hears the call connected; the broker hears nothing more.
	Ringbid__AgentCall c1;
	Ringbid__AgentCall *calls2[] = {sync_entry(&c1, 1, "k1", 0)};
	clear(f);
	assert_int_equal(sync_chunk(f, 6, true, true, calls2, 1), 0);
	assert_int_equal(presence_agent_state(a1), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                             RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_non_null(ev);
	assert_int_equal(ev->pipe, 11);
	assert_int_equal(ev->offer_id, 10);
	// Its CallConnected, late, changes nothing.
	clear(f);
	assert_int_equal(call_connected(f, 10, "k1", 1, f->wall), 0);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	fx_free(f);
}

// A CallSync in chunks: what the broker did not list is over only after the last chunk of the
// same sync; a sync that does not finish withdraws nothing.
static void test_sync_in_chunks(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a[7];
	for (uint64_t id = 1; id <= 6; id++) {
		a[id] = ready_agent(f, id, (uint32_t)(10 + id), NULL);
		char call[16];
		snprintf(call, sizeof(call), "c%llu", (unsigned long long)id);
		offer(f, 100 + id, call, id, 60000, 30);
		if (id >= 4) // 1..3 ringing, 4..6 talking
			accept_call(f, a[id], 100 + id);
	}
	Ringbid__AgentCall e[7];
	Ringbid__AgentCall *p[7];
	for (uint64_t id = 1; id <= 6; id++) {
		char *call = calloc(1, 16);
		assert_non_null(call);
		snprintf(call, 16, "c%llu", (unsigned long long)id);
		p[id] = sync_entry(&e[id], id, call, id <= 3 ? 100 + id : 0);
	}

	// Sync 7 in three chunks; agents 3 and 6 are in none.
	clear(f);
	assert_int_equal(sync_chunk(f, 7, true, false, (Ringbid__AgentCall *[]){p[1], p[4]}, 2), 0);
	assert_int_equal(sync_chunk(f, 7, false, false, (Ringbid__AgentCall *[]){p[2], p[5]}, 2),
	                 0);
	for (uint64_t id = 1; id <= 3; id++)
		assert_int_equal(presence_agent_state(a[id]), PRESENCE_RESERVED);
	for (uint64_t id = 4; id <= 6; id++)
		assert_int_equal(presence_agent_state(a[id]), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	assert_int_equal(sync_chunk(f, 7, false, true, NULL, 0), 0);
	assert_int_equal(presence_agent_state(a[1]), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state(a[2]), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state(a[3]), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_state(a[4]), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_state(a[5]), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_state(a[6]), PRESENCE_WRAP_UP);

	// A sync whose first chunk was lost: its calls are settled, nothing is withdrawn, not
	// even by its last chunk.
	clear(f);
	assert_int_equal(sync_chunk(f, 8, false, false, (Ringbid__AgentCall *[]){p[1]}, 1), 0);
	assert_int_equal(sync_chunk(f, 8, false, true, NULL, 0), 0);
	assert_int_equal(presence_agent_state(a[2]), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state(a[5]), PRESENCE_ON_CALL);

	// A sync left open by a broker that restarted: a chunk of the new sync that is not its
	// first ends it without withdrawing anything, and the new one begins with its first.
	assert_int_equal(sync_chunk(f, 9, true, false, (Ringbid__AgentCall *[]){p[1]}, 1), 0);
	assert_int_equal(sync_chunk(f, 10, false, true, (Ringbid__AgentCall *[]){p[4]}, 1), 0);
	assert_int_equal(presence_agent_state(a[2]), PRESENCE_RESERVED);
	assert_int_equal(sync_chunk(f, 9, false, true, NULL, 0), 0); // the old one's late end
	assert_int_equal(presence_agent_state(a[2]), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state(a[5]), PRESENCE_ON_CALL);

	// A first chunk of another sync restarts the comparison: only its own chunks count.
	assert_int_equal(sync_chunk(f, 11, true, false, (Ringbid__AgentCall *[]){p[2]}, 1), 0);
	assert_int_equal(sync_chunk(f, 12, true, false, (Ringbid__AgentCall *[]){p[1], p[4]}, 2),
	                 0);
	assert_int_equal(sync_chunk(f, 12, false, true, (Ringbid__AgentCall *[]){p[5]}, 1), 0);
	assert_int_equal(presence_agent_state(a[1]), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state(a[2]), PRESENCE_AVAILABLE); // named by 11 only
	assert_int_equal(presence_agent_state(a[4]), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_state(a[5]), PRESENCE_ON_CALL);

	// A refused chunk leaves its sync incomplete: nothing is withdrawn at its end.
	Ringbid__AgentCall bad;
	sync_entry(&bad, 4, "bad id", 0);
	clear(f);
	assert_int_equal(sync_chunk(f, 13, true, false, (Ringbid__AgentCall *[]){p[1]}, 1), 0);
	assert_int_equal(sync_chunk(f, 13, false, false, (Ringbid__AgentCall *[]){&bad}, 1),
	                 RB_EINVAL);
	assert_int_equal(sync_chunk(f, 13, false, true, NULL, 0), 0);
	assert_int_equal(presence_agent_state(a[4]), PRESENCE_ON_CALL);
	assert_int_equal(presence_agent_state(a[5]), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	// Marks without a sync id are refused.
	assert_int_equal(sync_chunk(f, 0, true, true, NULL, 0), RB_EINVAL);
	assert_int_equal(presence_agent_state(a[1]), PRESENCE_RESERVED);

	for (uint64_t id = 1; id <= 6; id++)
		free(e[id].call_id);
	fx_free(f);
}

// ---------------------------------------------------------------------------------------------
// Connecting: the agent accepted, the broker has not confirmed the connection yet

static size_t count_events(const fx *f, int kind)
{
	size_t n = 0;
	for (size_t i = 0; i < f->ncm; i++)
		if (f->cm[i].body == RINGBID__AGENT_MSG__BODY_CALL_EVENT && f->cm[i].kind == kind)
			n++;
	return n;
}

// An agent of its own with offer offer_id of call_id accepted: connecting.
static presence_agent *connecting_agent(fx *f, uint64_t id, uint64_t offer_id, const char *call_id,
                                        uint32_t ring_ms, uint32_t wrap_s)
{
	presence_agent *a = ready_agent(f, id, (uint32_t)(10 * id + 1), NULL);
	offer(f, offer_id, call_id, id, ring_ms, wrap_s);
	assert_int_equal(presence_core_answer(f->c, a, offer_id, true), 0);
	assert_true(presence_agent_connecting(a));
	return a;
}

static void test_connecting_until_confirmed(void **state)
{
	(void)state;
	fx *f = fx_new(1); // one miss would pause the agent: none may be counted
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	ready_agent(f, 2, 22, NULL);
	offer(f, 7, "c7", 1, 5000, 30);
	uint64_t seq = presence_agent_state_seq(a);
	clear(f);
	presence_core_quiet(f->c, a); // the accept is the client's request: its answer says it
	assert_int_equal(presence_core_answer(f->c, a, 7, true), 0);
	presence_core_quiet(f->c, NULL);
	// ACCEPTED to the broker; the agent stays RESERVED, not a transition of its own, and
	// nothing reaches the client or the auction.
	assert_int_equal(f->nbm, 1);
	assert_int_equal(f->bm[0].result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_int_equal(f->ncm + f->nam, 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_state_seq(a), seq);
	assert_int_equal(presence_agent_offer_id(a), 7);
	Ringbid__AgentStatus st;
	presence_core_status(f->c, a, &st);
	assert_int_equal(st.state, RINGBID__AGENT_STATE__AGENT_RESERVED);
	assert_int_equal(st.offer_id, 7);
	assert_string_equal(st.call_id, "c7");
	uint32_t counts[PRESENCE_NSTATES];
	presence_core_counts(f->c, counts);
	assert_int_equal(counts[PRESENCE_RESERVED], 1);
	assert_int_equal(counts[PRESENCE_ON_CALL], 0);

	// Still unavailable to the auction: another offer is refused and the auction hears the
	// agent is not available.
	offer(f, 8, "c8", 1, 5000, 30);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
	assert_int_equal(last_result(f)->offer_id, 8);
	assert_false(last_update(f, 1)->available);
	assert_true(presence_agent_connecting(a));

	// The ring timer does not fire: no TIMEOUT, no miss, no pause.
	clear(f);
	advance(f, 60 * SEC);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_RESERVED);
	assert_int_equal(presence_agent_missed(a), 0);
	assert_int_equal(presence_core_next_deadline(f->c) > f->mono + 3000 * SEC, true);

	// A repeated accept is a success that sends nothing; a decline is refused.
	assert_int_equal(presence_core_answer(f->c, a, 7, true), 0);
	assert_int_equal(presence_core_answer(f->c, a, 7, false), RB_ESTATE);
	// Ending the call before it connected is refused, and says nothing to the broker.
	assert_int_equal(presence_core_end_call(f->c, a, "c7", false, false), RB_ESTATE);
	assert_int_equal(presence_core_end_call(f->c, a, "c8", false, false), RB_ENOTFOUND);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	assert_true(presence_agent_connecting(a));
	assert_int_equal(presence_agent_state_seq(a), seq);

	// Confirmations that are not this agent's, this offer's or this call's change nothing;
	// malformed ones are refused.
	assert_int_equal(call_connected(f, 7, "c7", 2, f->wall), 0);  // another agent
	assert_int_equal(call_connected(f, 6, "c7", 1, f->wall), 0);  // another offer
	assert_int_equal(call_connected(f, 7, "c6", 1, f->wall), 0);  // another call
	assert_int_equal(call_connected(f, 7, "c7", 99, f->wall), 0); // unknown agent
	assert_int_equal(call_connected(f, 0, "c7", 1, f->wall), RB_EINVAL);
	assert_int_equal(call_connected(f, 7, "c7", 0, f->wall), RB_EINVAL);
	assert_int_equal(call_connected(f, 7, "bad id", 1, f->wall), RB_EINVAL);
	assert_int_equal(call_connected(f, 7, NULL, 1, f->wall), RB_EINVAL);
	assert_int_equal(call_connected(f, 7, "", 1, f->wall), RB_EINVAL);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	assert_true(presence_agent_connecting(a));
	assert_int_equal(presence_agent_state(presence_core_find(f->c, 2)), PRESENCE_AVAILABLE);

	// The broker's confirmation: ON_CALL, and CALL_EVENT_CONNECTED at the agent's client.
	uint64_t answered = f->wall - 3 * MS;
	assert_int_equal(call_connected(f, 7, "c7", 1, answered), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_false(presence_agent_connecting(a));
	assert_int_equal(presence_agent_state_seq(a), seq + 1);
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                             RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_non_null(ev);
	assert_int_equal(ev->pipe, 11);
	assert_int_equal(ev->offer_id, 7);
	assert_string_equal(ev->call_id, "c7");
	const cmsg *sm = find_client(f, RINGBID__AGENT_MSG__BODY_STATUS, 0);
	assert_non_null(sm);
	assert_int_equal(sm->state, PRESENCE_ON_CALL);
	assert_string_equal(sm->call_id, "c7");
	assert_false(last_update(f, 1)->available);
	assert_int_equal(f->nbm, 0);
	presence_core_counts(f->c, counts);
	assert_int_equal(counts[PRESENCE_RESERVED], 0);
	assert_int_equal(counts[PRESENCE_ON_CALL], 1);

	// Repeats change nothing and say nothing.
	clear(f);
	assert_int_equal(call_connected(f, 7, "c7", 1, answered), 0);
	assert_int_equal(call_connected(f, 7, "c7", 1, 0), 0);
	assert_int_equal(presence_agent_state_seq(a), seq + 1);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	// Connected now: the accept still succeeds, the decline is still refused.
	assert_int_equal(presence_core_answer(f->c, a, 7, true), 0);
	assert_int_equal(presence_core_answer(f->c, a, 7, false), RB_ESTATE);
	assert_int_equal(f->nbm, 0);

	// The call ends; a late confirmation of it does not bring it back.
	assert_int_equal(presence_core_end_call(f->c, a, "c7", false, false), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	seq = presence_agent_state_seq(a);
	clear(f);
	assert_int_equal(call_connected(f, 7, "c7", 1, answered), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_WRAP_UP);
	assert_int_equal(presence_agent_state_seq(a), seq);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	fx_free(f);
}

// Telephony reports the call answered at the agent's phone while the offer still rings: the
// broker's confirmation connects it all the same, without a result from presence.
static void test_connected_while_ringing(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	offer(f, 40, "t40", 1, 15000, 30);
	offer(f, 41, "t41", 1, 15000, 30); // refused: one offer at a time
	advance(f, 15 * SEC - 1);
	clear(f);
	assert_int_equal(call_connected(f, 40, "t40", 1, f->wall), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                             RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_non_null(ev);
	assert_int_equal(ev->offer_id, 40);
	// The ring timer is gone with the offer, and the call's offer counts as answered.
	advance(f, 10 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	assert_int_equal(presence_agent_missed(a), 0);
	assert_int_equal(presence_core_answer(f->c, a, 40, false), RB_ESTATE);
	assert_int_equal(presence_core_answer(f->c, a, 40, true), 0);
	assert_int_equal(f->nbm, 0);
	// The refused offer of another call is not the agent's to be connected to.
	assert_int_equal(call_connected(f, 41, "t41", 1, f->wall), 0);
	assert_string_equal(presence_agent_call_id(a), "t40");
	fx_free(f);
}

// OfferCancel or CallEnded while connecting: AVAILABLE again, no wrap-up, never shown connected.
static void test_connecting_released(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = connecting_agent(f, 1, 10, "c10", 15000, 30);
	uint32_t missed = presence_agent_missed(a);
	Ringbid__OfferCancel oc = RINGBID__OFFER_CANCEL__INIT;
	oc.offer_id = 9; // another offer: ignored
	oc.agent_id = 1;
	oc.call_id = "c10";
	clear(f);
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), 0);
	assert_true(presence_agent_connecting(a));
	oc.offer_id = 10;
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_false(presence_agent_connecting(a));
	assert_int_equal(presence_agent_missed(a), missed);
	const cmsg *w = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                            RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN);
	assert_non_null(w);
	assert_int_equal(w->offer_id, 10);
	assert_string_equal(w->call_id, "c10");
	assert_string_equal(w->text, "call ended before it connected");
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED), 0);
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED), 0);
	assert_int_equal(f->nbm, 0); // the broker withdrew it: no result
	assert_true(last_update(f, 1)->available);
	// Its CallEnded (the broker's answer to an ACCEPTED that crossed the cancel) and a late
	// confirmation change nothing; no wrap-up timer runs.
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "c10";
	ce.agent_id = 1;
	ce.wrap_up_s = 30;
	uint64_t seq = presence_agent_state_seq(a);
	clear(f);
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(call_connected(f, 10, "c10", 1, f->wall), 0);
	advance(f, 40 * SEC);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	assert_int_equal(presence_agent_state_seq(a), seq);
	assert_int_equal(f->nbm + f->ncm + f->nam, 0);
	// The decline of the accepted offer is still refused; an accept is a plain success.
	assert_int_equal(presence_core_answer(f->c, a, 10, false), RB_ESTATE);
	assert_int_equal(presence_core_answer(f->c, a, 10, true), 0);
	assert_int_equal(f->nbm, 0);

	// CallEnded of the call being connected.
	offer(f, 11, "c11", 1, 15000, 30);
	assert_int_equal(presence_core_answer(f->c, a, 11, true), 0);
	ce.call_id = "c10"; // another call: ignored
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_true(presence_agent_connecting(a));
	ce.call_id = "c11";
	clear(f);
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_AVAILABLE);
	w = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN);
	assert_non_null(w);
	assert_int_equal(w->offer_id, 11);
	assert_string_equal(w->text, "call ended before it connected");
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED), 0);
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED), 0);
	assert_int_equal(f->nbm, 0);
	fx_free(f);
}

// CallSync while connecting: the accepted offer OFFERED is accepted again; CONNECTED confirms;
// not listed at all releases the agent.
static void test_connecting_sync(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a1 = connecting_agent(f, 1, 21, "s1", 15000, 30);
	presence_agent *a2 = connecting_agent(f, 2, 22, "s2", 15000, 30);
	presence_agent *a3 = connecting_agent(f, 3, 23, "s3", 15000, 30);
	uint64_t accepted = presence_core_stats(f->c)->offers[0];
	assert_int_equal(accepted, 3);
	Ringbid__AgentCall e1, e2;
	Ringbid__AgentCall *calls[] = {sync_entry(&e1, 1, "s1", 21), sync_entry(&e2, 2, "s2", 0)};
	e2.answered_us = f->wall - 2 * SEC;
	e2.wrap_up_s = 45;
	clear(f);
	assert_int_equal(sync_chunk(f, 4, true, true, calls, 2), 0);

	// Agent 1: ACCEPTED again (not counted twice), still connecting, its client told nothing.
	assert_true(presence_agent_connecting(a1));
	assert_int_equal(f->nbm, 1);
	assert_int_equal(f->bm[0].result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_int_equal(f->bm[0].offer_id, 21);
	assert_int_equal(f->bm[0].agent_id, 1);
	assert_string_equal(f->bm[0].call_id, "s1");
	assert_int_equal(presence_core_stats(f->c)->offers[0], accepted);
	for (size_t i = 0; i < f->ncm; i++)
		assert_int_not_equal(f->cm[i].pipe, 11);

	// Agent 2: confirmed by the CONNECTED entry.
	assert_int_equal(presence_agent_state(a2), PRESENCE_ON_CALL);
	const cmsg *ev = NULL;
	for (size_t i = 0; i < f->ncm; i++)
		if (f->cm[i].pipe == 21 && f->cm[i].body == RINGBID__AGENT_MSG__BODY_CALL_EVENT)
			ev = &f->cm[i];
	assert_non_null(ev);
	assert_int_equal(ev->kind, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_int_equal(ev->offer_id, 22);
	assert_string_equal(ev->call_id, "s2");
	// It keeps the offer it accepted: a decline of it is still refused.
	assert_int_equal(presence_core_answer(f->c, a2, 22, false), RB_ESTATE);

	// Agent 3, not listed: back to AVAILABLE, withdrawn, never shown connected.
	assert_int_equal(presence_agent_state(a3), PRESENCE_AVAILABLE);
	size_t n3 = 0;
	for (size_t i = 0; i < f->ncm; i++) {
		const cmsg *x = &f->cm[i];
		if (x->pipe != 31 || x->body != RINGBID__AGENT_MSG__BODY_CALL_EVENT)
			continue;
		n3++;
		assert_int_equal(x->kind, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN);
		assert_int_equal(x->offer_id, 23);
		assert_string_equal(x->text, "call no longer at the broker");
	}
	assert_int_equal(n3, 1);
	assert_true(last_update(f, 3)->available);

	// The broker connects agent 1 after the sync: confirmed as by a CallConnected.
	clear(f);
	assert_int_equal(call_connected(f, 21, "s1", 1, f->wall), 0);
	assert_int_equal(presence_agent_state(a1), PRESENCE_ON_CALL);
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED), 1);
	// Ended by the broker: wrap-up as the sync said (45 s).
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "s2";
	ce.agent_id = 2;
	ce.wrap_up_s = 45;
	assert_int_equal(presence_core_call_ended(f->c, &ce), 0);
	assert_int_equal(presence_agent_state(a2), PRESENCE_WRAP_UP);
	advance(f, 44 * SEC);
	assert_int_equal(presence_agent_state(a2), PRESENCE_WRAP_UP);
	advance(f, 1 * SEC);
	assert_int_equal(presence_agent_state(a2), PRESENCE_AVAILABLE);
	fx_free(f);
}

// Heartbeat lost, connection closed or logout while connecting: no AGENT_LOST (ACCEPTED was
// sent); the agent stays connecting and, confirmed, goes ON_CALL without its client.
static void test_connecting_without_client(void **state)
{
	(void)state;
	fx *f = fx_new_hb(2, 15000);
	presence_agent *a = connecting_agent(f, 1, 31, "h1", 10000, 20);
	clear(f);
	advance(f, 15 * SEC); // silent for the heartbeat timeout
	assert_false(presence_agent_live(a));
	assert_true(presence_agent_connecting(a));
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST), 0);
	assert_int_equal(f->nbm, 0);
	assert_int_equal(count_events(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN), 0);
	assert_false(last_update(f, 1)->available);
	// The confirmation puts it ON_CALL, like a connected call whose client is away.
	assert_int_equal(call_connected(f, 31, "h1", 1, f->wall), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	assert_int_equal(f->nbm, 0);
	// The client comes back on a new connection: it finds the call.
	presence_core_touch(f->c, a, 44);
	assert_int_equal(presence_agent_state(a), PRESENCE_ON_CALL);
	Ringbid__AgentStatus st;
	presence_core_status(f->c, a, &st);
	assert_string_equal(st.call_id, "h1");
	fx_free(f);

	// The connection closes while connecting; the client resumes before the confirmation:
	// the offer is not shown ringing again.
	f = fx_new(2);
	char token[RB_TOKEN_HEX];
	a = login(f, 2, 21, token);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
	offer(f, 32, "h2", 2, 10000, 20);
	assert_int_equal(presence_core_answer(f->c, a, 32, true), 0);
	clear(f);
	presence_core_pipe_closed(f->c, 21);
	assert_true(presence_agent_connecting(a));
	assert_int_equal(f->nbm, 0);
	presence_agent *b = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &b), 0);
	presence_core_touch(f->c, a, 23);
	assert_true(presence_agent_connecting(a));
	assert_null(find_client(f, RINGBID__AGENT_MSG__BODY_OFFER, 0));
	presence_core_status(f->c, a, &st);
	assert_int_equal(st.state, RINGBID__AGENT_STATE__AGENT_RESERVED);
	assert_int_equal(st.offer_id, 32);
	assert_int_equal(call_connected(f, 32, "h2", 2, f->wall), 0);
	const cmsg *ev = find_client(f, RINGBID__AGENT_MSG__BODY_CALL_EVENT,
	                             RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED);
	assert_non_null(ev);
	assert_int_equal(ev->pipe, 23);
	fx_free(f);

	// Logged out while connecting, then released: OFFLINE, not AVAILABLE.
	f = fx_new(2);
	a = connecting_agent(f, 3, 33, "h3", 10000, 20);
	presence_core_logout(f->c, a);
	assert_true(presence_agent_connecting(a));
	assert_int_equal(count_results(f, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST), 0);
	Ringbid__OfferCancel oc = RINGBID__OFFER_CANCEL__INIT;
	oc.offer_id = 33;
	oc.agent_id = 3;
	assert_int_equal(presence_core_offer_cancel(f->c, &oc), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	fx_free(f);

	// Presence stops: an accepted offer is not given back.
	f = fx_new(2);
	a = connecting_agent(f, 4, 34, "h4", 10000, 20);
	clear(f);
	assert_int_equal(presence_core_stop(f->c), 0);
	assert_int_equal(f->nbm, 0);
	assert_true(presence_agent_connecting(a));
	fx_free(f);
}

static void test_roster_changes(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	char token[RB_TOKEN_HEX];
	presence_agent *a = ready_agent(f, 1, 11, token);
	// A score change goes to the auction; the same row again does not.
	char *skills[] = {"sales", "es"};
	presence_roster_row row = {
	        .id = 1, .secret_hash = "h", .skills = skills, .n_skills = 2, .score = 91};
	clear(f);
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	assert_int_equal(f->nam, 1);
	assert_true(f->am[0].score == 91);
	assert_true(f->am[0].available);
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	assert_int_equal(f->nam, 1);
	row.n_skills = 1;
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	assert_int_equal(f->nam, 2);
	assert_int_equal(f->am[1].n_skills, 1);

	// Suspension ends the session.
	offer(f, 1, "c1", 1, 15000, 30);
	row.suspended = true;
	clear(f);
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_false(presence_agent_has_session(a));
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	const cmsg *e = find_client(f, RINGBID__AGENT_MSG__BODY_ERROR, 0);
	assert_non_null(e);
	assert_int_equal(e->code, RB_EFORBIDDEN);
	presence_agent *x = NULL;
	assert_int_equal(presence_core_auth(f->c, token, &x), RB_EAUTH);
	char t2[RB_TOKEN_HEX];
	assert_int_equal(presence_core_login(f->c, a, 12, t2), RB_EFORBIDDEN);

	// Removal: the agent goes.
	presence_agent *b = ready_agent(f, 2, 22, NULL);
	assert_non_null(b);
	presence_core_roster_remove(f->c, 2);
	assert_null(presence_core_find(f->c, 2));
	assert_null(presence_core_find_pipe(f->c, 22));
	fx_free(f);
}

static void test_bulk_load_and_snapshot(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	ready_agent(f, 1, 11, NULL);
	clear(f);
	char *skills[] = {"sales"};
	presence_core_roster_begin(f->c);
	for (uint64_t id = 2; id <= 2500; id++) {
		presence_roster_row row = {
		        .id = id, .secret_hash = "h", .skills = skills, .n_skills = 1, .score = 50};
		assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	}
	// Agent 1 is not in this load: it leaves the roster (logged in: its session ends).
	presence_core_roster_end(f->c);
	assert_true(presence_core_roster_loaded(f->c));
	assert_null(presence_core_find(f->c, 1));
	assert_int_equal(presence_core_size(f->c), 2499);
	// No per-agent updates: one snapshot in chunks of 1000.
	size_t chunks = 0, agents = 0;
	uint64_t sid = 0;
	for (size_t i = 0; i < f->nam; i++) {
		assert_int_equal(f->am[i].body, RINGBID__ENVELOPE__BODY_SNAPSHOT);
		assert_int_equal(f->am[i].first, i == 0);
		assert_int_equal(f->am[i].last, i == f->nam - 1);
		assert_true(f->am[i].n_agents <= PRESENCE_SNAPSHOT_CHUNK);
		if (i == 0)
			sid = f->am[i].snapshot_id;
		assert_int_equal(f->am[i].snapshot_id, sid);
		chunks++;
		agents += f->am[i].n_agents;
	}
	assert_int_equal(chunks, 3);
	assert_int_equal(agents, 2499);
	clear(f);
	assert_int_equal(presence_core_snapshot(f->c), 0);
	assert_true(f->am[0].snapshot_id > sid);
	uint32_t counts[PRESENCE_NSTATES];
	presence_core_counts(f->c, counts);
	assert_int_equal(counts[PRESENCE_OFFLINE], 2499);
	fx_free(f);

	// An empty roster still sends one (first and last) chunk.
	f = fx_new(2);
	presence_core_roster_begin(f->c);
	presence_core_roster_end(f->c);
	assert_int_equal(f->nam, 1);
	assert_true(f->am[0].first && f->am[0].last);
	assert_int_equal(f->am[0].n_agents, 0);
	fx_free(f);
}

// ---------------------------------------------------------------------------------------------
// Scores from billing

static size_t count_updates(const fx *f)
{
	size_t n = 0;
	for (size_t i = 0; i < f->nam; i++)
		n += f->am[i].body == RINGBID__ENVELOPE__BODY_AGENT;
	return n;
}

static void test_scores_change_detection(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	add_agent(f, 2, 60);
	clear(f);
	// The same overall score and no program scores: nothing to say.
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, NULL, 0), 0);
	assert_int_equal(f->nam, 0);
	// A program score appears: one AgentUpdate with everything the auction needs.
	presence_program_score one[] = {{"sales", 80}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, one, 1), 0);
	assert_int_equal(f->nam, 1);
	assert_int_equal(f->am[0].agent_id, 1);
	assert_true(f->am[0].available);
	assert_true(f->am[0].score == 50);
	assert_int_equal(f->am[0].n_ps, 1);
	assert_string_equal(f->am[0].ps0, "sales=80");
	// Two programs, then the same two in another order: the second is no change.
	presence_program_score two[] = {{"support", 70}, {"sales", 80}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, two, 2), 0);
	assert_int_equal(f->nam, 2);
	assert_int_equal(f->am[1].n_ps, 2);
	assert_string_equal(f->am[1].ps0, "sales=80"); // sorted by program
	presence_program_score swapped[] = {{"sales", 80}, {"support", 70}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, swapped, 2), 0);
	assert_int_equal(f->nam, 2);
	// One program score moves by a hundredth: a change.
	swapped[1].score = 70.01;
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, swapped, 2), 0);
	assert_int_equal(f->nam, 3);
	// Only the overall score moves: a change; no overall score given: kept.
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 55.5, swapped, 2), 0);
	assert_int_equal(f->nam, 4);
	assert_true(f->am[3].score == 55.5);
	assert_int_equal(presence_core_scores_set(f->c, 1, false, 0, swapped, 2), 0);
	assert_int_equal(f->nam, 4);
	assert_true(presence_agent_score(a) == 55.5);

	// Bad input changes nothing and says nothing.
	presence_program_score dup[] = {{"sales", 1}, {"sales", 2}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, dup, 2), RB_EINVAL);
	presence_program_score bad_name[] = {{"sa les", 1}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, bad_name, 1), RB_EINVAL);
	presence_program_score empty_name[] = {{"", 1}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, empty_name, 1), RB_EINVAL);
	presence_program_score high[] = {{"sales", 100.01}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, high, 1), RB_EINVAL);
	presence_program_score nan[] = {{"sales", NAN}};
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, nan, 1), RB_EINVAL);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, -1, NULL, 0), RB_EINVAL);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, INFINITY, NULL, 0), RB_EINVAL);
	presence_program_score *many = calloc(PRESENCE_MAX_PROGRAM_SCORES + 1, sizeof(*many));
	char(*names)[16] = calloc(PRESENCE_MAX_PROGRAM_SCORES + 1, sizeof(*names));
	assert_non_null(many);
	assert_non_null(names);
	for (size_t i = 0; i <= PRESENCE_MAX_PROGRAM_SCORES; i++) {
		snprintf(names[i], sizeof(names[i]), "p%zu", i);
		many[i] = (presence_program_score){names[i], (double)(i % 101)};
	}
	assert_int_equal(
	        presence_core_scores_set(f->c, 1, true, 50, many, PRESENCE_MAX_PROGRAM_SCORES + 1),
	        RB_EINVAL);
	assert_int_equal(presence_core_scores_set(f->c, 0, true, 50, NULL, 0), RB_EINVAL);
	assert_int_equal(presence_core_scores_set(f->c, 99, true, 50, NULL, 0), RB_ENOTFOUND);
	assert_int_equal(f->nam, 4);
	size_t n;
	const Ringbid__ProgramScore *const *ps = presence_agent_program_scores(a, &n);
	assert_int_equal(n, 2);
	assert_string_equal(ps[0]->program, "sales");
	assert_string_equal(ps[1]->program, "support");
	assert_true(ps[1]->score == 70.01);
	// The auction's limit itself is fine.
	assert_int_equal(
	        presence_core_scores_set(f->c, 2, true, 60, many, PRESENCE_MAX_PROGRAM_SCORES), 0);
	assert_int_equal(f->nam, 5);
	assert_int_equal(f->am[4].n_ps, PRESENCE_MAX_PROGRAM_SCORES);
	free(many);
	free(names);

	// An 'agent:<id>' reload with a new overall score keeps the program scores.
	char *skills[] = {"sales", "es"};
	presence_roster_row row = {
	        .id = 1, .secret_hash = "h", .skills = skills, .n_skills = 2, .score = 61};
	clear(f);
	assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	assert_int_equal(f->nam, 1);
	assert_true(f->am[0].score == 61);
	assert_int_equal(f->am[0].n_ps, 2);
	ps = presence_agent_program_scores(a, &n);
	assert_int_equal(n, 2);
	// State changes carry them too, and so do snapshots.
	clear(f);
	assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_NOT_READY), 0);
	assert_int_equal(last_update(f, 1)->n_ps, 2);
	clear(f);
	assert_int_equal(presence_core_snapshot(f->c), 0);
	assert_int_equal(f->nam, 1);
	assert_int_equal(f->am[0].n_ps, 2 + PRESENCE_MAX_PROGRAM_SCORES);
	fx_free(f);
}

static void test_scores_full_load(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	for (uint64_t id = 1; id <= 5; id++)
		add_agent(f, id, 50);
	presence_program_score sales[] = {{"sales", 80}};
	presence_program_score support[] = {{"support", 40}};
	assert_int_equal(presence_core_scores_set(f->c, 2, true, 50, sales, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 3, true, 50, support, 1), 0);
	clear(f);
	// A load: 1 gains a program score, 2 is unchanged, 3 is not mentioned (its program score
	// is gone: too few calls now, or pinned), 4 gets a new overall score, 5 is unchanged.
	presence_core_scores_begin(f->c);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, support, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 2, true, 50, sales, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 4, true, 72.25, NULL, 0), 0);
	assert_int_equal(presence_core_scores_set(f->c, 5, true, 50, NULL, 0), 0);
	assert_int_equal(presence_core_scores_set(f->c, 77, true, 50, NULL, 0), RB_ENOTFOUND);
	assert_int_equal(f->nam, 0); // nothing before the end
	size_t changed = 99;
	presence_core_scores_end(f->c, &changed);
	assert_int_equal(changed, 3);
	assert_int_equal(f->nam, 3);
	assert_int_equal(count_updates(f), 3);
	assert_string_equal(last_update(f, 1)->ps0, "support=40");
	assert_int_equal(last_update(f, 3)->n_ps, 0);
	assert_true(last_update(f, 4)->score == 72.25);
	assert_null(last_update(f, 2));
	assert_null(last_update(f, 5));
	size_t n;
	presence_agent_program_scores(presence_core_find(f->c, 3), &n);
	assert_int_equal(n, 0);
	// The same load again: nothing changes, nothing is sent.
	clear(f);
	presence_core_scores_begin(f->c);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 50, support, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 2, true, 50, sales, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 4, true, 72.25, NULL, 0), 0);
	presence_core_scores_end(f->c, &changed);
	assert_int_equal(changed, 0);
	assert_int_equal(f->nam, 0);
	// An agent set twice in one load is sent once.
	presence_core_scores_begin(f->c);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 10, support, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 1, true, 20, support, 1), 0);
	assert_int_equal(presence_core_scores_set(f->c, 2, true, 50, sales, 1), 0);
	presence_core_scores_end(f->c, &changed);
	assert_int_equal(changed, 1);
	assert_int_equal(f->nam, 1);
	assert_true(f->am[0].score == 20);
	fx_free(f);

	// A recompute that changes more agents than a snapshot chunk holds: one snapshot.
	f = fx_new(2);
	for (uint64_t id = 1; id <= 2500; id++)
		add_agent(f, id, 50);
	clear(f);
	presence_core_scores_begin(f->c);
	for (uint64_t id = 1; id <= 2500; id++)
		assert_int_equal(
		        presence_core_scores_set(f->c, id, true, (double)(id % 100), sales, id % 2),
		        0);
	presence_core_scores_end(f->c, &changed);
	assert_int_equal(changed, 2500 - 25); // id % 100 == 50 with no program score: unchanged
	assert_int_equal(count_updates(f), 0);
	size_t agents = 0, pscores = 0;
	for (size_t i = 0; i < f->nam; i++) {
		assert_int_equal(f->am[i].body, RINGBID__ENVELOPE__BODY_SNAPSHOT);
		assert_int_equal(f->am[i].first, i == 0);
		assert_int_equal(f->am[i].last, i == f->nam - 1);
		agents += f->am[i].n_agents;
		pscores += f->am[i].n_ps;
	}
	assert_int_equal(agents, 2500);
	assert_int_equal(pscores, 1250);
	// The next small load goes back to single updates.
	clear(f);
	presence_core_scores_begin(f->c);
	assert_int_equal(presence_core_scores_set(f->c, 7, true, 99, NULL, 0), 0);
	presence_core_scores_end(f->c, &changed);
	// 7 was only in this load: the other agents lost their program scores.
	assert_int_equal(changed, 1 + 1250 - 1);
	fx_free(f);
}

static void test_snapshot_chunks_by_size(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	enum {
		AGENTS = 300
	};
	presence_program_score *ps = calloc(PRESENCE_MAX_PROGRAM_SCORES, sizeof(*ps));
	char(*names)[PRESENCE_ID_MAX + 1] = calloc(PRESENCE_MAX_PROGRAM_SCORES, sizeof(*names));
	assert_non_null(ps);
	assert_non_null(names);
	for (size_t i = 0; i < PRESENCE_MAX_PROGRAM_SCORES; i++) {
		snprintf(names[i], sizeof(names[i]), "%060zu", i); // long program names
		ps[i] = (presence_program_score){names[i], 12.34};
	}
	for (uint64_t id = 1; id <= AGENTS; id++) {
		add_agent(f, id, 50);
		assert_int_equal(presence_core_scores_set(f->c, id, true, 50, ps,
		                                          PRESENCE_MAX_PROGRAM_SCORES),
		                 0);
	}
	clear(f);
	assert_int_equal(presence_core_snapshot(f->c), 0);
	// About 19 KB per agent: several chunks, each under the byte budget.
	size_t agents = 0;
	assert_true(f->nam > 3);
	for (size_t i = 0; i < f->nam; i++) {
		assert_true(f->am[i].packed <= PRESENCE_SNAPSHOT_BYTES);
		assert_true(f->am[i].n_agents > 0);
		assert_int_equal(f->am[i].n_ps, f->am[i].n_agents * PRESENCE_MAX_PROGRAM_SCORES);
		agents += f->am[i].n_agents;
	}
	assert_int_equal(agents, AGENTS);
	free(ps);
	free(names);
	fx_free(f);
}

static void test_stop(void **state)
{
	(void)state;
	fx *f = fx_new(2);
	presence_agent *a = ready_agent(f, 1, 11, NULL);
	presence_agent *b = ready_agent(f, 2, 22, NULL);
	offer(f, 1, "c1", 1, 15000, 30);
	clear(f);
	assert_int_equal(presence_core_stop(f->c), 1);
	assert_int_equal(f->nbm, 1);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
	assert_int_equal(presence_agent_state(a), PRESENCE_OFFLINE);
	assert_false(last_update(f, 1)->available);
	// While presence stops, a new offer is refused even to an available agent.
	offer(f, 2, "c2", 2, 15000, 30);
	assert_int_equal(last_result(f)->result, RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
	assert_int_equal(presence_agent_state(b), PRESENCE_AVAILABLE);
	fx_free(f);
}

static void test_many_agents(void **state)
{
	(void)state;
	enum {
		N = 100000
	};
	fx *f = fx_new_hb(2, 15000);
	f->count_only = true;
	char *skills[] = {"sales"};
	presence_core_roster_begin(f->c);
	for (uint64_t id = 1; id <= N; id++) {
		presence_roster_row row = {.id = id,
		                           .secret_hash = "h",
		                           .skills = skills,
		                           .n_skills = 1,
		                           .score = (double)(id % 100)};
		assert_int_equal(presence_core_roster_upsert(f->c, &row), 0);
	}
	presence_core_roster_end(f->c);
	assert_int_equal(f->sent, N / PRESENCE_SNAPSHOT_CHUNK);
	char token[RB_TOKEN_HEX];
	for (uint64_t id = 1; id <= N; id++) {
		presence_agent *a = presence_core_find(f->c, id);
		assert_int_equal(presence_core_login(f->c, a, (uint32_t)id, token), 0);
		assert_int_equal(presence_core_set_state(f->c, a, PRESENCE_AVAILABLE), 0);
		if (id % 1000 == 0)
			f->mono += 1000; // logins spread over 100 ms
	}
	assert_int_equal(presence_core_live_sessions(f->c), N);
	// Offers to a tenth of them; every other agent heartbeats; the rest fall silent.
	for (uint64_t id = 1; id <= N; id += 10)
		offer(f, id, "c", id, 5000, 0);
	f->mono += 5 * SEC;
	f->wall += 5 * SEC;
	presence_core_tick(f->c);
	for (uint64_t id = 2; id <= N; id += 2)
		presence_core_touch(f->c, presence_core_find(f->c, id), (uint32_t)id);
	f->mono += 11 * SEC;
	f->wall += 11 * SEC;
	presence_core_tick(f->c);
	uint32_t counts[PRESENCE_NSTATES];
	presence_core_counts(f->c, counts);
	assert_int_equal(counts[PRESENCE_OFFLINE], N / 2);
	assert_int_equal(counts[PRESENCE_AVAILABLE], N / 2);
	assert_int_equal(counts[PRESENCE_NOT_READY] + counts[PRESENCE_RESERVED], 0);
	assert_int_equal(presence_core_live_sessions(f->c), N / 2);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_transition_table),
	        cmocka_unit_test(test_transition_function),
	        cmocka_unit_test(test_login_and_ready),
	        cmocka_unit_test(test_quiet_request),
	        cmocka_unit_test(test_offer_accept_end),
	        cmocka_unit_test(test_wrap_up_zero_and_ready),
	        cmocka_unit_test(test_hangup_waits_for_broker),
	        cmocka_unit_test(test_offer_refused_and_duplicate),
	        cmocka_unit_test(test_long_masked_caller),
	        cmocka_unit_test(test_decline_is_not_a_miss),
	        cmocka_unit_test(test_missed_offers_pause),
	        cmocka_unit_test(test_accept_resets_missed),
	        cmocka_unit_test(test_offer_cancel),
	        cmocka_unit_test(test_loss_during_offer),
	        cmocka_unit_test(test_silence_during_offer),
	        cmocka_unit_test(test_loss_during_call_and_resume),
	        cmocka_unit_test(test_resume_restores),
	        cmocka_unit_test(test_rebind_resends_offer),
	        cmocka_unit_test(test_login_replaces_session),
	        cmocka_unit_test(test_one_connection_one_agent),
	        cmocka_unit_test(test_logout),
	        cmocka_unit_test(test_silent_list_order),
	        cmocka_unit_test(test_session_expiry),
	        cmocka_unit_test(test_call_sync),
	        cmocka_unit_test(test_sync_resends_hangup),
	        cmocka_unit_test(test_sync_accepted_before_broker_restart),
	        cmocka_unit_test(test_sync_in_chunks),
	        cmocka_unit_test(test_connecting_until_confirmed),
	        cmocka_unit_test(test_connected_while_ringing),
	        cmocka_unit_test(test_connecting_released),
	        cmocka_unit_test(test_connecting_sync),
	        cmocka_unit_test(test_connecting_without_client),
	        cmocka_unit_test(test_roster_changes),
	        cmocka_unit_test(test_bulk_load_and_snapshot),
	        cmocka_unit_test(test_scores_change_detection),
	        cmocka_unit_test(test_scores_full_load),
	        cmocka_unit_test(test_snapshot_chunks_by_size),
	        cmocka_unit_test(test_stop),
	        cmocka_unit_test(test_many_agents),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
