// Unit tests of the agent's session logic: a fake presence, a fake clock, no sockets.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "client.h"
#include "rb_err.h"
#include "rb_log.h"

#define MAX_SENT   256
#define MAX_EVENTS 256

typedef struct {
	agent_event_kind kind;
	Ringbid__AgentState state;
	char call_id[AGENT_ID_MAX + 1];
	char program[AGENT_ID_MAX + 1];
	char reason[AGENT_TEXT_MAX + 1];
	char message[AGENT_TEXT_MAX + 1];
	uint64_t offer_id;
	uint64_t wait_ms;
	uint64_t talk_ms;
	bool by_agent;
	int code;
} seen_event;

typedef struct {
	agent_client c;
	uint64_t now_ms;
	uint64_t now_us;
	Ringbid__AgentMsg *sent[MAX_SENT];
	int nsent;
	seen_event ev[MAX_EVENTS];
	int nev;
	int finished;
	int exit_code;
} fake;

static int fake_send(void *arg, const Ringbid__AgentMsg *msg)
{
	fake *f = arg;
	size_t len = ringbid__agent_msg__get_packed_size(msg);
	uint8_t *buf = malloc(len ? len : 1);

	assert_non_null(buf);
	ringbid__agent_msg__pack(msg, buf);
	assert_true(f->nsent < MAX_SENT);
	// A round trip through the wire format: what presence would really decode.
	f->sent[f->nsent] = ringbid__agent_msg__unpack(NULL, len, buf);
	assert_non_null(f->sent[f->nsent]);
	f->nsent++;
	free(buf);
	return 0;
}

static void fake_event(void *arg, const agent_event *ev)
{
	fake *f = arg;
	seen_event *s;

	assert_true(f->nev < MAX_EVENTS);
	s = &f->ev[f->nev++];
	memset(s, 0, sizeof(*s));
	s->kind = ev->kind;
	s->state = ev->state;
	snprintf(s->call_id, sizeof(s->call_id), "%s", ev->call_id);
	snprintf(s->program, sizeof(s->program), "%s", ev->program);
	snprintf(s->reason, sizeof(s->reason), "%s", ev->reason);
	snprintf(s->message, sizeof(s->message), "%s", ev->message);
	s->offer_id = ev->offer_id;
	s->wait_ms = ev->wait_ms;
	s->talk_ms = ev->talk_ms;
	s->by_agent = ev->by_agent;
	s->code = ev->code;
}

static void fake_finish(void *arg, int exit_code)
{
	fake *f = arg;
	f->finished++;
	f->exit_code = exit_code;
}

static uint64_t fake_mono(void *arg)
{
	return ((fake *)arg)->now_ms;
}

static uint64_t fake_wall(void *arg)
{
	return ((fake *)arg)->now_us;
}

static fake *fake_new(agent_offer_policy policy, uint64_t talk_ms, bool auto_ready)
{
	fake *f = calloc(1, sizeof(*f));
	agent_client_config cfg = {
	        .agent_id = 42,
	        .secret = "correct horse",
	        .policy = policy,
	        .talk_ms = talk_ms,
	        .auto_ready = auto_ready,
	        .heartbeat_ms = 5000,
	};
	agent_client_ops ops = {
	        .send = fake_send,
	        .event = fake_event,
	        .finish = fake_finish,
	        .mono_ms = fake_mono,
	        .wall_us = fake_wall,
	        .arg = f,
	};

	assert_non_null(f);
	f->now_ms = 1000000;
	f->now_us = 1800000000000000ULL;
	assert_int_equal(agent_client_init(&f->c, &cfg, &ops), 0);
	return f;
}

static void fake_free(fake *f)
{
	for (int i = 0; i < f->nsent; i++)
		ringbid__agent_msg__free_unpacked(f->sent[i], NULL);
	agent_client_fini(&f->c);
	free(f);
}

static void advance(fake *f, uint64_t ms)
{
	f->now_ms += ms;
	f->now_us += ms * 1000;
	agent_client_tick(&f->c);
}

// Moves the clock forward in steps, running every due piece of work on the way.
static void run_for(fake *f, uint64_t ms)
{
	uint64_t end = f->now_ms + ms;
	for (;;) {
		uint64_t due = agent_client_next_due(&f->c);
		if (due > end)
			break;
		uint64_t step = due > f->now_ms ? due - f->now_ms : 0;
		advance(f, step);
	}
	if (end > f->now_ms)
		advance(f, end - f->now_ms);
}

static Ringbid__AgentMsg *last_sent(fake *f)
{
	assert_true(f->nsent > 0);
	return f->sent[f->nsent - 1];
}

// The last message of body kind, or NULL.
static Ringbid__AgentMsg *last_of(fake *f, Ringbid__AgentMsg__BodyCase kind)
{
	for (int i = f->nsent - 1; i >= 0; i--)
		if (f->sent[i]->body_case == kind)
			return f->sent[i];
	return NULL;
}

static int count_of(fake *f, Ringbid__AgentMsg__BodyCase kind)
{
	int n = 0;
	for (int i = 0; i < f->nsent; i++)
		n += f->sent[i]->body_case == kind;
	return n;
}

static const seen_event *last_event(fake *f)
{
	assert_true(f->nev > 0);
	return &f->ev[f->nev - 1];
}

// The first event of kind at or after index *from (advanced past it), or NULL.
static const seen_event *find_event(fake *f, agent_event_kind kind, int *from)
{
	for (int i = *from; i < f->nev; i++) {
		if (f->ev[i].kind == kind) {
			*from = i + 1;
			return &f->ev[i];
		}
	}
	return NULL;
}

static int count_events(fake *f, agent_event_kind kind)
{
	int n = 0;
	for (int i = 0; i < f->nev; i++)
		n += f->ev[i].kind == kind;
	return n;
}

static void reply_status(fake *f, uint64_t seq, Ringbid__AgentState state, const char *call_id,
                         uint64_t offer_id, const char *token)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__AgentStatus st = RINGBID__AGENT_STATUS__INIT;

	st.agent_id = 42;
	st.state = state;
	st.call_id = (char *)(call_id ? call_id : "");
	st.offer_id = offer_id;
	st.session_token = (char *)(token ? token : "");
	st.state_since_us = f->now_us;
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &st;
	agent_client_on_msg(&f->c, &m);
}

static void push_status(fake *f, Ringbid__AgentState state, const char *call_id, uint64_t offer_id,
                        const char *reason)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__AgentStatus st = RINGBID__AGENT_STATUS__INIT;

	st.agent_id = 42;
	st.state = state;
	st.call_id = (char *)(call_id ? call_id : "");
	st.offer_id = offer_id;
	st.reason = (char *)(reason ? reason : "");
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &st;
	agent_client_on_msg(&f->c, &m);
}

static void reply_error(fake *f, uint64_t seq, int code, const char *message)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__ErrorReply e = RINGBID__ERROR_REPLY__INIT;

	e.code = code;
	e.message = (char *)message;
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_ERROR;
	m.error = &e;
	agent_client_on_msg(&f->c, &m);
}

static void push_offer(fake *f, uint64_t offer_id, const char *call_id, const char *program,
                       uint32_t wait_ms)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__OfferEvent o = RINGBID__OFFER_EVENT__INIT;

	o.offer_id = offer_id;
	o.call_id = (char *)call_id;
	o.program = (char *)program;
	o.wait_ms = wait_ms;
	o.ring_timeout_ms = 15000;
	m.body_case = RINGBID__AGENT_MSG__BODY_OFFER;
	m.offer = &o;
	agent_client_on_msg(&f->c, &m);
}

static void push_call(fake *f, Ringbid__CallEventKind kind, const char *call_id, uint64_t offer_id,
                      const char *reason)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__CallEvent e = RINGBID__CALL_EVENT__INIT;

	e.kind = kind;
	e.call_id = (char *)call_id;
	e.offer_id = offer_id;
	e.wrap_up_s = 30;
	e.reason = (char *)(reason ? reason : "");
	m.body_case = RINGBID__AGENT_MSG__BODY_CALL_EVENT;
	m.call_event = &e;
	agent_client_on_msg(&f->c, &m);
}

#define TOKEN "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// Link up, Login answered: the client is ACTIVE in state.
static void logged_in(fake *f, Ringbid__AgentState state)
{
	agent_client_link(&f->c, true);
	Ringbid__AgentMsg *login = last_of(f, RINGBID__AGENT_MSG__BODY_LOGIN);
	assert_non_null(login);
	reply_status(f, login->seq, state, "", 0, TOKEN);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
}

// ---------------------------------------------------------------------------------------------

static void test_login_on_first_link_up(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	assert_int_equal(f->nsent, 0);
	assert_int_equal(agent_client_next_due(&f->c), UINT64_MAX);
	agent_client_link(&f->c, true);
	assert_int_equal(f->ev[0].kind, AGENT_EV_LINK_UP);
	assert_int_equal(f->nsent, 1);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_LOGIN);
	assert_true(m->seq != 0);
	assert_string_equal(m->token, "");
	assert_int_equal(m->login->agent_id, 42);
	assert_string_equal(m->login->secret, "correct horse");

	reply_status(f, m->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, TOKEN);
	assert_int_equal(last_event(f)->kind, AGENT_EV_LOGIN);
	assert_int_equal(last_event(f)->state, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	// Interactive: the person decides when to go ready.
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 0);

	// Heartbeats carry the token, each with a new seq.
	run_for(f, 5000);
	Ringbid__AgentMsg *hb = last_of(f, RINGBID__AGENT_MSG__BODY_HEARTBEAT);
	assert_non_null(hb);
	assert_string_equal(hb->token, TOKEN);
	uint64_t seq1 = hb->seq;
	run_for(f, 5000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_HEARTBEAT), 2);
	assert_true(last_of(f, RINGBID__AGENT_MSG__BODY_HEARTBEAT)->seq > seq1);
	// Unanswered heartbeats are never resent (the next one says the same) and raise nothing.
	run_for(f, 2500);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_HEARTBEAT), 2);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 0);
	fake_free(f);
}

static void test_auto_answer_flow(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 1500, true);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	assert_non_null(find_event(f, AGENT_EV_LOGIN, &at));

	// Ready at once after login.
	Ringbid__AgentMsg *ready = last_sent(f);
	assert_int_equal(ready->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_int_equal(ready->set_state->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_string_equal(ready->token, TOKEN);
	reply_status(f, ready->seq, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0, NULL);
	const seen_event *e = find_event(f, AGENT_EV_STATE, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);

	// The offer is accepted without asking.
	push_offer(f, 7, "call-1", "sales", 12000);
	e = find_event(f, AGENT_EV_OFFER, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 7);
	assert_string_equal(e->call_id, "call-1");
	assert_string_equal(e->program, "sales");
	assert_int_equal(e->wait_ms, 12000);
	Ringbid__AgentMsg *ans = last_sent(f);
	assert_int_equal(ans->body_case, RINGBID__AGENT_MSG__BODY_ANSWER);
	assert_int_equal(ans->answer->offer_id, 7);
	assert_true(ans->answer->accept);
	reply_status(f, ans->seq, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-1", 7, NULL);
	e = find_event(f, AGENT_EV_ACCEPTED, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 7);
	assert_string_equal(e->call_id, "call-1");

	// Accepted is not connected: no call, no talk timer, until presence says so.
	advance(f, 5000);
	assert_null(agent_client_call(&f->c, NULL));
	assert_null(last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL));
	assert_int_equal(count_events(f, AGENT_EV_CALL_CONNECTED), 0);
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "call-1", 7, NULL);
	e = find_event(f, AGENT_EV_CALL_CONNECTED, &at);
	assert_non_null(e);
	assert_string_equal(e->call_id, "call-1");
	assert_int_equal(agent_client_state(&f->c), RINGBID__AGENT_STATE__AGENT_ON_CALL);
	assert_null(agent_client_offer(&f->c));

	// The talk timer ends the call after 1.5 s of talk, not before.
	advance(f, 1499);
	assert_null(last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL));
	advance(f, 1);
	Ringbid__AgentMsg *end = last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL);
	assert_non_null(end);
	assert_string_equal(end->end_call->call_id, "call-1");
	reply_status(f, end->seq, RINGBID__AGENT_STATE__AGENT_WRAP_UP, "", 0, NULL);
	e = find_event(f, AGENT_EV_CALL_ENDED, &at);
	assert_non_null(e);
	assert_string_equal(e->call_id, "call-1");
	assert_int_equal(e->talk_ms, 1500);
	assert_true(e->by_agent);
	e = find_event(f, AGENT_EV_STATE, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_WRAP_UP);

	// Wrap-up ends at once: ready again.
	ready = last_sent(f);
	assert_int_equal(ready->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_int_equal(ready->set_state->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	reply_status(f, ready->seq, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0, NULL);
	e = find_event(f, AGENT_EV_STATE, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	// A late CallEvent for the same call changes nothing.
	int before = f->nev;
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED, "call-1", 0, "agent hung up");
	assert_int_equal(f->nev, before);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 0);
	assert_int_equal(f->finished, 0);
	fake_free(f);
}

static void test_no_ready_stays_not_ready(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 100, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 0);
	// A typed 'ready' still works.
	assert_int_equal(agent_client_set_ready(&f->c, true), 0);
	assert_int_equal(last_sent(f)->set_state->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	fake_free(f);
}

static void test_decline_mode(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_DECLINE, 0, true);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 0);
	push_offer(f, 9, "call-9", "support", 500);
	Ringbid__AgentMsg *ans = last_sent(f);
	assert_int_equal(ans->body_case, RINGBID__AGENT_MSG__BODY_ANSWER);
	assert_int_equal(ans->answer->offer_id, 9);
	assert_false(ans->answer->accept);
	reply_status(f, ans->seq, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0, NULL);
	const seen_event *e = find_event(f, AGENT_EV_DECLINED, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 9);
	assert_string_equal(e->call_id, "call-9");
	assert_null(agent_client_offer(&f->c));
	assert_int_equal(count_events(f, AGENT_EV_ACCEPTED), 0);
	assert_int_equal(count_events(f, AGENT_EV_OFFER_WITHDRAWN), 0);
	fake_free(f);
}

static void test_ignore_mode(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_IGNORE, 0, true);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_offer(f, 11, "call-11", "sales", 0);
	assert_non_null(find_event(f, AGENT_EV_OFFER, &at));
	run_for(f, 15000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_ANSWER), 0);
	push_status(f, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-11", 11, "");
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, "call-11", 11,
	          "ring timeout");
	const seen_event *e = find_event(f, AGENT_EV_OFFER_WITHDRAWN, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 11);
	assert_string_equal(e->call_id, "call-11");
	assert_string_equal(e->reason, "ring timeout");
	// After missed offers presence pauses the agent; an ignoring client leaves it paused.
	push_status(f, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, "missed 2 offers");
	e = last_event(f);
	assert_int_equal(e->kind, AGENT_EV_STATE);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	assert_string_equal(e->reason, "missed 2 offers");
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 0);
	fake_free(f);
}

static void test_resume_after_link_down(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 5000, true);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_ON_CALL);
	int logins = count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN);
	agent_client_link(&f->c, false);
	assert_int_equal(last_event(f)->kind, AGENT_EV_LINK_DOWN);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_WAIT_LINK);
	// Nothing is sent while the link is down, and nothing is due.
	int sent = f->nsent;
	run_for(f, 20000);
	assert_int_equal(f->nsent, sent);

	agent_client_link(&f->c, true);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_RESUME);
	assert_int_equal(m->resume->agent_id, 42);
	assert_string_equal(m->token, TOKEN);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), logins);

	// Presence kept the call running; it started 3 s ago by presence's clock.
	Ringbid__AgentMsg r = RINGBID__AGENT_MSG__INIT;
	Ringbid__AgentStatus st = RINGBID__AGENT_STATUS__INIT;
	st.agent_id = 42;
	st.state = RINGBID__AGENT_STATE__AGENT_ON_CALL;
	st.call_id = "call-r";
	st.state_since_us = f->now_us - 3000000;
	r.seq = m->seq;
	r.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	r.status = &st;
	agent_client_on_msg(&f->c, &r);
	int at = 0;
	const seen_event *e = find_event(f, AGENT_EV_RESUMED, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_ON_CALL);
	assert_string_equal(e->call_id, "call-r");
	assert_non_null(find_event(f, AGENT_EV_CALL_CONNECTED, &at));
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
	uint64_t talk = 0;
	assert_non_null(agent_client_call(&f->c, &talk));
	assert_int_equal(talk, 3000);

	// 5 s of talk in all: 2 s left.
	run_for(f, 1999);
	assert_null(last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL));
	run_for(f, 1);
	assert_non_null(last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL));
	fake_free(f);
}

static void test_relogin_when_resume_refused(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 1000, true);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	agent_client_link(&f->c, false);
	agent_client_link(&f->c, true);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_RESUME);

	// Presence restarted and lost its sessions.
	reply_error(f, m->seq, RB_EAUTH, "unknown session");
	Ringbid__AgentMsg *login = last_sent(f);
	assert_int_equal(login->body_case, RINGBID__AGENT_MSG__BODY_LOGIN);
	assert_true(login->seq > m->seq);
	assert_string_equal(login->login->secret, "correct horse");
	assert_int_equal(f->finished, 0);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 0);

	reply_status(f, login->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0,
	             "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
	assert_int_equal(count_events(f, AGENT_EV_LOGIN), 2);
	// Auto mode: ready again, with the new token.
	Ringbid__AgentMsg *ready = last_sent(f);
	assert_int_equal(ready->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_string_equal(ready->token,
	                    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
	fake_free(f);
}

static void test_session_expired_request_goes_again(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	assert_int_equal(agent_client_set_ready(&f->c, true), 0);
	Ringbid__AgentMsg *ready = last_sent(f);
	reply_error(f, ready->seq, RB_EAUTH, "session expired");
	Ringbid__AgentMsg *login = last_sent(f);
	assert_int_equal(login->body_case, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_status(f, login->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, TOKEN);
	Ringbid__AgentMsg *again = last_sent(f);
	assert_int_equal(again->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_int_equal(again->set_state->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	fake_free(f);
}

static void test_request_retry_and_give_up(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_NOT_READY);
	assert_int_equal(agent_client_set_ready(&f->c, true), 0);
	uint64_t seq = last_sent(f)->seq;
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 1);

	// Resent every 2 s with the same seq, 5 sends in all.
	advance(f, 1999);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 1);
	advance(f, 1);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 2);
	assert_int_equal(last_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE)->seq, seq);
	for (int i = 0; i < 3; i++)
		advance(f, 2000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 5);
	for (int i = 0; i < f->nsent; i++)
		if (f->sent[i]->body_case == RINGBID__AGENT_MSG__BODY_SET_STATE)
			assert_int_equal(f->sent[i]->seq, seq);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 0);

	// Then given up with an error event, and never sent again.
	advance(f, 2000);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 1);
	int at = 0;
	const seen_event *e = find_event(f, AGENT_EV_ERROR, &at);
	assert_int_equal(e->code, RB_ETIMEDOUT);
	assert_non_null(strstr(e->message, "set_state"));
	run_for(f, 20000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 5);
	// A late answer to the abandoned request is ignored.
	int before = f->nev;
	reply_status(f, seq, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0, NULL);
	assert_int_equal(f->nev, before);
	assert_int_equal(f->finished, 0);
	fake_free(f);
}

static void test_answer_once_despite_duplicate_reply(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_offer(f, 5, "call-5", "sales", 2000);
	assert_int_equal(agent_client_answer(&f->c, true), 0);
	uint64_t seq = last_sent(f)->seq;
	advance(f, 2000); // resent: presence will answer twice
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_ANSWER), 2);
	reply_status(f, seq, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-5", 0, NULL);
	reply_status(f, seq, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-5", 0, NULL);
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "call-5", 5, NULL);
	assert_int_equal(count_events(f, AGENT_EV_ACCEPTED), 1);
	assert_int_equal(count_events(f, AGENT_EV_CALL_CONNECTED), 1);
	// Answering again, or with no offer left, changes nothing.
	assert_int_equal(agent_client_answer(&f->c, true), RB_ENOTFOUND);
	fake_free(f);
}

// Between the accept and the broker's confirmation the agent is connecting: no call to end, no
// decline, talk time not running; a call that ends meanwhile is withdrawn, never connected.
static void test_connecting_after_accept(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_status(f, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-8", 8, "offered call call-8");
	push_offer(f, 8, "call-8", "sales", 1000);
	assert_int_equal(agent_client_answer(&f->c, true), 0);
	Ringbid__AgentMsg *ans = last_sent(f);
	assert_int_equal(ans->body_case, RINGBID__AGENT_MSG__BODY_ANSWER);
	reply_status(f, ans->seq, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-8", 8, NULL);
	assert_non_null(find_event(f, AGENT_EV_ACCEPTED, &at));
	const agent_offer *o = agent_client_offer(&f->c);
	assert_non_null(o);
	assert_true(o->accepted);
	assert_null(agent_client_call(&f->c, NULL));
	assert_int_equal(agent_client_state(&f->c), RINGBID__AGENT_STATE__AGENT_RESERVED);
	int sent = f->nsent;
	assert_int_equal(agent_client_answer(&f->c, true), 0);
	assert_int_equal(agent_client_answer(&f->c, false), RB_ESTATE);
	assert_int_equal(agent_client_end_call(&f->c, false, false), RB_ESTATE);
	assert_int_equal(f->nsent, sent);

	// The caller hangs up before the call connects: withdrawn, no call ever shown.
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, "call-8", 8,
	          "call ended before it connected");
	const seen_event *e = find_event(f, AGENT_EV_OFFER_WITHDRAWN, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 8);
	assert_string_equal(e->reason, "call ended before it connected");
	push_status(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0,
	            "call ended before it connected");
	assert_null(agent_client_offer(&f->c));
	assert_int_equal(count_events(f, AGENT_EV_CALL_CONNECTED), 0);
	assert_int_equal(count_events(f, AGENT_EV_CALL_ENDED), 0);
	assert_int_equal(agent_client_end_call(&f->c, false, false), RB_ENOTFOUND);

	// The next one connects; its talk time counts from the connection, not the accept.
	push_offer(f, 9, "call-9", "sales", 1000);
	assert_int_equal(agent_client_answer(&f->c, true), 0);
	reply_status(f, last_sent(f)->seq, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-9", 9, NULL);
	advance(f, 700);
	push_status(f, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-9", 0, "call connected");
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "call-9", 9, "call connected");
	assert_int_equal(count_events(f, AGENT_EV_CALL_CONNECTED), 1);
	advance(f, 2000);
	uint64_t talk = 0;
	assert_non_null(agent_client_call(&f->c, &talk));
	assert_int_equal(talk, 2000);
	assert_int_equal(agent_client_end_call(&f->c, false, false), 0);
	fake_free(f);
}

static void test_call_ended_by_caller(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_offer(f, 3, "call-3", "sales", 0);
	assert_int_equal(agent_client_answer(&f->c, true), 0);
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "call-3", 3, NULL);
	advance(f, 4200);
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED, "call-3", 0, "caller hung up");
	const seen_event *e = find_event(f, AGENT_EV_CALL_ENDED, &at);
	assert_non_null(e);
	assert_false(e->by_agent);
	assert_int_equal(e->talk_ms, 4200);
	assert_int_equal(agent_client_state(&f->c), RINGBID__AGENT_STATE__AGENT_WRAP_UP);
	// Interactive: wrap-up lasts until the person says ready.
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_SET_STATE), 0);
	assert_int_equal(agent_client_end_call(&f->c, false, false), RB_ENOTFOUND);
	fake_free(f);
}

static void test_login_refused_exits_3(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 0, true);
	(void)state;

	agent_client_link(&f->c, true);
	reply_error(f, last_sent(f)->seq, RB_EAUTH, "wrong agent or secret");
	const seen_event *e = last_event(f);
	assert_int_equal(e->kind, AGENT_EV_ERROR);
	assert_int_equal(e->code, RB_EAUTH);
	assert_string_equal(e->message, "wrong agent or secret");
	assert_int_equal(f->finished, 1);
	assert_int_equal(f->exit_code, 3);
	// Finished: everything else is ignored.
	int sent = f->nsent, nev = f->nev;
	run_for(f, 60000);
	agent_client_link(&f->c, false);
	assert_int_equal(f->nsent, sent);
	assert_int_equal(f->nev, nev);
	assert_int_equal(f->finished, 1);
	fake_free(f);
}

static void test_login_slowdown_backoff(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 0, true);
	(void)state;

	agent_client_link(&f->c, true);
	reply_error(f, last_sent(f)->seq, RB_ESLOWDOWN, "too many failed logins");
	assert_int_equal(f->finished, 0);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_BACKOFF);
	assert_int_equal(last_event(f)->code, RB_ESLOWDOWN);
	advance(f, AGENT_LOGIN_BACKOFF_MIN_MS - 1);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), 1);
	advance(f, 1);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), 2);
	// Each refusal doubles the wait, up to a minute.
	uint64_t wait = AGENT_LOGIN_BACKOFF_MIN_MS;
	for (int i = 0; i < 8; i++) {
		int logins = count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN);
		reply_error(f, last_of(f, RINGBID__AGENT_MSG__BODY_LOGIN)->seq, RB_ESLOWDOWN, "");
		wait = wait * 2 > AGENT_LOGIN_BACKOFF_MAX_MS ? AGENT_LOGIN_BACKOFF_MAX_MS
		                                             : wait * 2;
		advance(f, wait - 1);
		assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), logins);
		advance(f, 1);
		assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), logins + 1);
	}
	assert_int_equal(wait, AGENT_LOGIN_BACKOFF_MAX_MS);
	reply_status(f, last_sent(f)->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, TOKEN);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
	assert_int_equal(f->finished, 0);
	fake_free(f);
}

// Presence checks secrets a few at a time and ignores repeats of a login it is checking: the
// client keeps resending the same request and takes the answer whenever it comes.
static void test_login_unanswered_keeps_waiting(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	agent_client_link(&f->c, true);
	uint64_t seq = last_sent(f)->seq;
	for (int i = 0; i < 4 * AGENT_REQ_TRIES; i++)
		advance(f, AGENT_REQ_RESEND_MS);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), 4 * AGENT_REQ_TRIES + 1);
	for (int i = 0; i < f->nsent; i++)
		assert_int_equal(f->sent[i]->seq, seq); // one request, sent again and again
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_LOGIN);
	assert_int_equal(count_events(f, AGENT_EV_ERROR), 0);
	reply_status(f, seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, TOKEN);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
	assert_int_equal(last_event(f)->kind, AGENT_EV_LOGIN);
	// A lost link ends the wait: the next connection gets a new login.
	agent_client_link(&f->c, false);
	f->c.token[0] = '\0';
	agent_client_link(&f->c, true);
	assert_true(last_sent(f)->seq > seq);
	fake_free(f);
}

static void test_requests_wait_for_the_session(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	assert_int_equal(agent_client_set_ready(&f->c, true), 0);
	assert_int_equal(f->nsent, 0);
	agent_client_link(&f->c, true);
	assert_int_equal(f->nsent, 1); // the login only
	reply_status(f, last_sent(f)->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "", 0, TOKEN);
	Ringbid__AgentMsg *ready = last_sent(f);
	assert_int_equal(ready->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_string_equal(ready->token, TOKEN);
	fake_free(f);
}

static void test_logout(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_int_equal(agent_client_logout(&f->c), 0);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_LOGOUT);
	assert_string_equal(m->token, TOKEN);
	assert_int_equal(f->finished, 0);
	assert_int_equal(agent_client_set_ready(&f->c, true), RB_ESTATE);
	reply_status(f, m->seq, RINGBID__AGENT_STATE__AGENT_OFFLINE, "", 0, NULL);
	assert_int_equal(last_event(f)->kind, AGENT_EV_LOGOUT);
	assert_int_equal(f->finished, 1);
	assert_int_equal(f->exit_code, 0);
	fake_free(f);

	// Unanswered: leaves after a short wait.
	f = fake_new(AGENT_OFFERS_ASK, 0, false);
	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	agent_client_logout(&f->c);
	advance(f, AGENT_LOGOUT_WAIT_MS - 1);
	assert_int_equal(f->finished, 0);
	advance(f, 1);
	assert_int_equal(f->finished, 1);
	assert_int_equal(f->exit_code, 0);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGOUT), 1);
	fake_free(f);

	// Never logged in: leaves at once.
	f = fake_new(AGENT_OFFERS_ASK, 0, false);
	agent_client_logout(&f->c);
	assert_int_equal(f->finished, 1);
	assert_int_equal(f->exit_code, 0);
	assert_int_equal(f->nsent, 0);
	fake_free(f);
}

static void test_bad_input_ignored(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 1000, true);
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	int sent = f->nsent, nev = f->nev;
	agent_client_on_data(&f->c, garbage, sizeof(garbage));
	push_offer(f, 0, "call-x", "sales", 0);             // no offer id
	push_offer(f, 4, "bad id with spaces", "sales", 0); // malformed call id
	push_offer(f, 4, "call-x", "sales\n", 0);           // malformed program
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "", 0, NULL);
	push_call(f, (Ringbid__CallEventKind)99, "call-x", 0, NULL);
	// A status for another agent, and one with an impossible state.
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__AgentStatus st = RINGBID__AGENT_STATUS__INIT;
	st.agent_id = 43;
	st.state = RINGBID__AGENT_STATE__AGENT_ON_CALL;
	st.call_id = "call-y";
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &st;
	agent_client_on_msg(&f->c, &m);
	st.agent_id = 42;
	st.state = (Ringbid__AgentState)17;
	agent_client_on_msg(&f->c, &m);
	// A reply to nothing we asked.
	reply_status(f, 999, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-z", 0, NULL);
	assert_int_equal(f->nsent, sent);
	assert_int_equal(f->nev, nev);
	assert_int_equal(agent_client_state(&f->c), RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_null(agent_client_call(&f->c, NULL));

	// The wire path decodes real messages.
	Ringbid__AgentMsg off = RINGBID__AGENT_MSG__INIT;
	Ringbid__OfferEvent o = RINGBID__OFFER_EVENT__INIT;
	o.offer_id = 21;
	o.call_id = "call-21";
	o.program = "sales";
	off.body_case = RINGBID__AGENT_MSG__BODY_OFFER;
	off.offer = &o;
	uint8_t buf[256];
	size_t len = ringbid__agent_msg__pack(&off, buf);
	agent_client_on_data(&f->c, buf, len);
	assert_int_equal(last_event(f)->kind, AGENT_EV_OFFER);
	assert_int_equal(last_sent(f)->body_case, RINGBID__AGENT_MSG__BODY_ANSWER);
	fake_free(f);
}

static void test_pushed_error_shown(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	reply_error(f, 0, RB_EDECODE, "undecodable message");
	assert_int_equal(last_event(f)->kind, AGENT_EV_ERROR);
	assert_int_equal(last_event(f)->code, RB_EDECODE);
	// An out-of-range code is not passed through as is.
	reply_error(f, 0, 12345, "odd");
	assert_int_equal(last_event(f)->code, RB_EINVAL);
	assert_int_equal(f->finished, 0);
	fake_free(f);
}

static void test_offer_withdrawn_by_status(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_offer(f, 8, "call-8", "sales", 0);
	push_status(f, RINGBID__AGENT_STATE__AGENT_RESERVED, "call-8", 8, "");
	assert_non_null(agent_client_offer(&f->c));
	push_status(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE, "", 0, "caller hung up");
	int at = 0;
	const seen_event *e = find_event(f, AGENT_EV_OFFER_WITHDRAWN, &at);
	assert_non_null(e);
	assert_int_equal(e->offer_id, 8);
	assert_string_equal(e->reason, "caller hung up");
	assert_null(agent_client_offer(&f->c));
	// The matching CallEvent afterwards is not shown twice.
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, "call-8", 8,
	          "caller hung up");
	assert_int_equal(count_events(f, AGENT_EV_OFFER_WITHDRAWN), 1);
	fake_free(f);
}

static void test_session_taken_over_leaves(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 1000, true);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	int logins = count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_error(f, 0, RB_ECLOSED, "session replaced elsewhere");
	assert_int_equal(last_event(f)->kind, AGENT_EV_ERROR);
	assert_int_equal(last_event(f)->code, RB_ECLOSED);
	assert_int_equal(f->finished, 1);
	assert_int_equal(f->exit_code, 1);
	run_for(f, 20000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), logins);
	fake_free(f);
}

static void test_offline_while_connected_resumes(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ACCEPT, 1000, true);
	int at = 0;
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	int logins = count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN);
	push_status(f, RINGBID__AGENT_STATE__AGENT_OFFLINE, "", 0, "heartbeat lost");
	const seen_event *e = find_event(f, AGENT_EV_STATE, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_OFFLINE);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_RESUME);
	assert_string_equal(m->token, TOKEN);
	reply_status(f, m->seq, RINGBID__AGENT_STATE__AGENT_OFFLINE, "", 0, NULL);
	assert_non_null(find_event(f, AGENT_EV_RESUMED, &at));
	// Auto mode: ready again; no loop of resumes, no new login.
	assert_int_equal(last_sent(f)->body_case, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_RESUME), 1);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_LOGIN), logins);
	fake_free(f);
}

// The computer slept (or the process was stopped) during a call while the connection held:
// presence counted the link lost but kept the call, and said nothing new about it. Awake, the
// client resumes explicitly and shows the session back with its call.
static void test_resumed_on_call_after_sleep(void **state)
{
	fake *f = fake_new(AGENT_OFFERS_ASK, 0, false);
	(void)state;

	logged_in(f, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	push_call(f, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, "call-s", 0, "");
	push_status(f, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-s", 0, "accepted");
	assert_non_null(agent_client_call(&f->c, NULL));
	// Awake and working: heartbeats only, however long the call.
	run_for(f, 60000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_RESUME), 0);
	int connected = count_events(f, AGENT_EV_CALL_CONNECTED);
	int evs = f->nev;

	// Asleep for four heartbeat intervals: the first tick after waking finds the silence.
	advance(f, 4 * 5000);
	Ringbid__AgentMsg *m = last_sent(f);
	assert_int_equal(m->body_case, RINGBID__AGENT_MSG__BODY_RESUME);
	assert_string_equal(m->token, TOKEN);
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_RESUME);
	// Presence's own notice of the lost link (the same state) changes nothing.
	push_status(f, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-s", 0, "accepted");
	reply_status(f, m->seq, RINGBID__AGENT_STATE__AGENT_ON_CALL, "call-s", 0, NULL);
	int at = evs;
	const seen_event *e = find_event(f, AGENT_EV_RESUMED, &at);
	assert_non_null(e);
	assert_int_equal(e->state, RINGBID__AGENT_STATE__AGENT_ON_CALL);
	assert_string_equal(e->call_id, "call-s");
	assert_int_equal(agent_client_phase(&f->c), AGENT_PHASE_ACTIVE);
	// The same call goes on: not ended, not connected a second time.
	assert_int_equal(count_events(f, AGENT_EV_CALL_CONNECTED), connected);
	assert_int_equal(count_events(f, AGENT_EV_CALL_ENDED), 0);
	assert_non_null(agent_client_call(&f->c, NULL));
	// Heartbeats again, no loop of resumes.
	run_for(f, 30000);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_RESUME), 1);
	assert_int_equal(last_sent(f)->body_case, RINGBID__AGENT_MSG__BODY_HEARTBEAT);

	// A suspended computer's monotonic clock stands still; the wall clock tells.
	f->now_us += 4 * 5000 * 1000ULL;
	agent_client_tick(&f->c);
	assert_int_equal(last_sent(f)->body_case, RINGBID__AGENT_MSG__BODY_RESUME);
	assert_int_equal(count_of(f, RINGBID__AGENT_MSG__BODY_RESUME), 2);
	fake_free(f);
}

static void test_init_refuses_bad_config(void **state)
{
	agent_client c;
	agent_client_config cfg = {.agent_id = 1, .secret = "s", .heartbeat_ms = 1000};
	agent_client_ops ops = {.send = fake_send,
	                        .event = fake_event,
	                        .finish = fake_finish,
	                        .mono_ms = fake_mono,
	                        .wall_us = fake_wall};
	(void)state;

	assert_int_equal(agent_client_init(&c, &cfg, &ops), 0);
	agent_client_fini(&c);
	cfg.agent_id = 0;
	assert_int_equal(agent_client_init(&c, &cfg, &ops), RB_EINVAL);
	cfg.agent_id = 1;
	cfg.secret = "";
	assert_int_equal(agent_client_init(&c, &cfg, &ops), RB_EINVAL);
	cfg.secret = "s";
	ops.send = NULL;
	assert_int_equal(agent_client_init(&c, &cfg, &ops), RB_EINVAL);
	agent_client_fini(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_login_on_first_link_up),
	        cmocka_unit_test(test_auto_answer_flow),
	        cmocka_unit_test(test_no_ready_stays_not_ready),
	        cmocka_unit_test(test_decline_mode),
	        cmocka_unit_test(test_ignore_mode),
	        cmocka_unit_test(test_resume_after_link_down),
	        cmocka_unit_test(test_relogin_when_resume_refused),
	        cmocka_unit_test(test_session_expired_request_goes_again),
	        cmocka_unit_test(test_request_retry_and_give_up),
	        cmocka_unit_test(test_answer_once_despite_duplicate_reply),
	        cmocka_unit_test(test_connecting_after_accept),
	        cmocka_unit_test(test_call_ended_by_caller),
	        cmocka_unit_test(test_login_refused_exits_3),
	        cmocka_unit_test(test_login_slowdown_backoff),
	        cmocka_unit_test(test_login_unanswered_keeps_waiting),
	        cmocka_unit_test(test_requests_wait_for_the_session),
	        cmocka_unit_test(test_logout),
	        cmocka_unit_test(test_bad_input_ignored),
	        cmocka_unit_test(test_pushed_error_shown),
	        cmocka_unit_test(test_offer_withdrawn_by_status),
	        cmocka_unit_test(test_session_taken_over_leaves),
	        cmocka_unit_test(test_offline_while_connected_resumes),
	        cmocka_unit_test(test_resumed_on_call_after_sleep),
	        cmocka_unit_test(test_init_refuses_bad_config),
	};
	rb_log_init("agent-test");
	rb_log_set_level(RB_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
