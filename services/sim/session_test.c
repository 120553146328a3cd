// Tests for a simulated agent's presence session: login, retries, offers, calls, expiry.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "rb_err.h"
#include "session.h"

typedef struct sent {
	Ringbid__AgentMsg__BodyCase kind;
	uint64_t seq;
	char token[SIM_TOKEN_MAX + 1];
	Ringbid__AgentState want;
	uint64_t offer_id;
	bool accept, sale, resolved;
	char call_id[SIM_ID_MAX + 1];
} sent;

typedef struct fixture {
	sim_session s;
	sent out[64];
	int nout;
	sim_session_event ev[64];
	char ev_call[64][SIM_ID_MAX + 1];
	int nev;
} fixture;

static int fake_send(void *arg, const Ringbid__AgentMsg *m)
{
	fixture *f = arg;
	sent *o = &f->out[f->nout++ % 64];

	memset(o, 0, sizeof(*o));
	o->kind = m->body_case;
	o->seq = m->seq;
	snprintf(o->token, sizeof(o->token), "%s", m->token ? m->token : "");
	if (m->body_case == RINGBID__AGENT_MSG__BODY_SET_STATE)
		o->want = m->set_state->state;
	if (m->body_case == RINGBID__AGENT_MSG__BODY_ANSWER) {
		o->offer_id = m->answer->offer_id;
		o->accept = m->answer->accept;
	}
	if (m->body_case == RINGBID__AGENT_MSG__BODY_END_CALL) {
		snprintf(o->call_id, sizeof(o->call_id), "%s", m->end_call->call_id);
		o->sale = m->end_call->sale;
		o->resolved = m->end_call->resolved;
	}
	return 0;
}

static void fake_event(void *arg, const sim_session_event *ev)
{
	fixture *f = arg;
	int i = f->nev++ % 64;

	f->ev[i] = *ev;
	snprintf(f->ev_call[i], sizeof(f->ev_call[i]), "%s", ev->call_id);
	f->ev[i].call_id = f->ev_call[i];
}

static const sent *last(const fixture *f)
{
	return f->nout ? &f->out[(f->nout - 1) % 64] : NULL;
}

// The last message of this kind sent (heartbeats interleave with everything else).
static const sent *last_of(const fixture *f, Ringbid__AgentMsg__BodyCase kind)
{
	for (int i = f->nout - 1; i >= 0 && i >= f->nout - 64; i--)
		if (f->out[i % 64].kind == kind)
			return &f->out[i % 64];
	return NULL;
}

static const sim_session_event *last_ev(const fixture *f)
{
	return f->nev ? &f->ev[(f->nev - 1) % 64] : NULL;
}

static void reply_status(fixture *f, uint64_t seq, Ringbid__AgentState st, const char *token,
                         uint64_t now)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__AgentStatus s = RINGBID__AGENT_STATUS__INIT;

	s.agent_id = 7;
	s.state = st;
	s.session_token = (char *)(token ? token : "");
	s.call_id = "";
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &s;
	sim_session_on_msg(&f->s, &m, now);
}

static void reply_error(fixture *f, uint64_t seq, int code, uint64_t now)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__ErrorReply e = RINGBID__ERROR_REPLY__INIT;

	e.code = code;
	e.message = "no";
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_ERROR;
	m.error = &e;
	sim_session_on_msg(&f->s, &m, now);
}

static int setup(void **state)
{
	static fixture f;
	sim_session_ops ops = {.send = fake_send, .event = fake_event, .arg = &f};

	memset(&f, 0, sizeof(f));
	assert_int_equal(sim_session_init(&f.s, 7, "secret", 5000, &ops), 0);
	*state = &f;
	return 0;
}

// Logs f's session in at time 0.
static void login(fixture *f)
{
	sim_session_link(&f->s, true, 0);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "tok-1", 0);
	assert_int_equal(f->s.phase, SIM_SESS_ACTIVE);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_ACTIVE);
}

static void test_init_refuses_bad_input(void **state)
{
	sim_session s;
	sim_session_ops ops = {.send = fake_send, .event = fake_event};
	(void)state;

	assert_int_equal(sim_session_init(&s, 0, "x", 5000, &ops), RB_EINVAL);
	assert_int_equal(sim_session_init(&s, 1, "", 5000, &ops), RB_EINVAL);
	assert_int_equal(sim_session_init(&s, 1, "x", 0, &ops), RB_EINVAL);
	ops.send = NULL;
	assert_int_equal(sim_session_init(&s, 1, "x", 5000, &ops), RB_EINVAL);
}

static void test_login_ready_heartbeat(void **state)
{
	fixture *f = *state;

	login(f);
	assert_string_equal(f->s.token, "tok-1");
	assert_int_equal(sim_session_set_ready(&f->s, true, 10), 0);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_int_equal(last(f)->want, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_string_equal(last(f)->token, "tok-1");
	assert_true(sim_session_busy(&f->s, RINGBID__AGENT_MSG__BODY_SET_STATE));
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_AVAILABLE, NULL, 20);
	assert_false(sim_session_busy(&f->s, RINGBID__AGENT_MSG__BODY_SET_STATE));
	assert_int_equal(last_ev(f)->kind, SIM_SEV_STATE);
	assert_int_equal(last_ev(f)->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	int before = f->nout;
	sim_session_tick(&f->s, 5000);
	assert_int_equal(f->nout, before + 1);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_HEARTBEAT);
}

static void test_busy_login_backs_off_refusal_finishes(void **state)
{
	fixture *f = *state;

	sim_session_link(&f->s, true, 0);
	reply_error(f, last(f)->seq, RB_EBUSY, 0);
	assert_int_equal(f->s.phase, SIM_SESS_BACKOFF);
	int before = f->nout;
	// Busy: a short wait, spread by agent id, never more than twice SIM_BUSY_RETRY_MS.
	sim_session_tick(&f->s, SIM_BUSY_RETRY_MS - 1);
	assert_int_equal(f->nout, before);
	sim_session_tick(&f->s, 2 * SIM_BUSY_RETRY_MS);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	// Slow down: waits that double.
	reply_error(f, last(f)->seq, RB_ESLOWDOWN, 1000);
	assert_int_equal(f->s.phase, SIM_SESS_BACKOFF);
	before = f->nout;
	sim_session_tick(&f->s, 1000 + SIM_BACKOFF_MIN_MS - 1);
	assert_int_equal(f->nout, before);
	sim_session_tick(&f->s, 1000 + SIM_BACKOFF_MIN_MS);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_error(f, last(f)->seq, RB_ESLOWDOWN, 2000);
	sim_session_tick(&f->s, 2000 + 2 * SIM_BACKOFF_MIN_MS - 1);
	assert_int_equal(f->s.phase, SIM_SESS_BACKOFF);
	sim_session_tick(&f->s, 2000 + 2 * SIM_BACKOFF_MIN_MS);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_error(f, last(f)->seq, RB_EAUTH, 3000);
	assert_int_equal(f->s.phase, SIM_SESS_DONE);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_REFUSED);
	assert_int_equal(last_ev(f)->code, RB_EAUTH);
	assert_int_equal(sim_session_set_ready(&f->s, true, 1), RB_ESTATE);
}

static void test_resend_then_give_up(void **state)
{
	fixture *f = *state;

	login(f);
	assert_int_equal(sim_session_end_call(&f->s, "c-1", true, false, 0), 0);
	uint64_t seq = last(f)->seq;
	for (int i = 1; i < SIM_REQ_TRIES; i++) {
		int before = f->nout;
		sim_session_tick(&f->s, (uint64_t)i * SIM_REQ_RESEND_MS);
		assert_true(f->nout > before);
		const sent *e = last_of(f, RINGBID__AGENT_MSG__BODY_END_CALL);
		assert_non_null(e);
		assert_int_equal(e->seq, seq); // the same request number every time
		assert_true(e->sale);
	}
	sim_session_tick(&f->s, (uint64_t)SIM_REQ_TRIES * SIM_REQ_RESEND_MS);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_FAILED);
	assert_int_equal(last_ev(f)->code, RB_ETIMEDOUT);
	assert_false(sim_session_busy(&f->s, RINGBID__AGENT_MSG__BODY_END_CALL));
	assert_int_equal(sim_session_end_call(&f->s, "bad id!", false, false, 0), RB_EINVAL);
}

// 200 agents logging in at once wait in presence's queue of secret checks far longer than
// all the resends: the login keeps its request number, and the late answer opens the
// session. (Given up, a new number was refused as busy and the real answer ignored.)
static void test_slow_login_keeps_waiting(void **state)
{
	fixture *f = *state;

	sim_session_link(&f->s, true, 0);
	uint64_t seq = last(f)->seq;
	uint64_t t = 0;
	for (int i = 0; i < 6 * SIM_REQ_TRIES; i++) {
		int before = f->nout;
		t += SIM_REQ_RESEND_MS;
		sim_session_tick(&f->s, t);
		assert_int_equal(f->nout, before + 1);
		assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
		assert_int_equal(last(f)->seq, seq);
		assert_int_equal(f->s.phase, SIM_SESS_LOGIN);
	}
	assert_int_equal(f->nev, 0);
	reply_status(f, seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "tok-slow", t + 1);
	assert_int_equal(f->s.phase, SIM_SESS_ACTIVE);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_ACTIVE);
	assert_string_equal(f->s.token, "tok-slow");
	assert_int_equal(f->s.logins, 1);
	// The session it opened is the one used.
	assert_int_equal(sim_session_set_ready(&f->s, true, t + 2), 0);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_string_equal(last(f)->token, "tok-slow");
	// A lost link ends the wait: the next connection sends a new login.
	sim_session_link(&f->s, false, t + 3);
	f->s.token[0] = '\0';
	sim_session_link(&f->s, true, t + 4);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	assert_true(last(f)->seq > seq);
}

// Presence pushes an offer to the session at time t.
static void push_offer(fixture *f, uint64_t offer_id, const char *call_id, uint64_t t)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__OfferEvent o = RINGBID__OFFER_EVENT__INIT;
	o.offer_id = offer_id;
	o.call_id = (char *)call_id;
	m.body_case = RINGBID__AGENT_MSG__BODY_OFFER;
	m.offer = &o;
	sim_session_on_msg(&f->s, &m, t);
}

static void test_offer_call_and_end(void **state)
{
	fixture *f = *state;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__CallEvent ce = RINGBID__CALL_EVENT__INIT;

	login(f);
	push_offer(f, 11, "c-2", 1);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_OFFER);
	assert_int_equal(last_ev(f)->offer_id, 11);
	assert_string_equal(last_ev(f)->call_id, "c-2");
	// An offer with a malformed call id is ignored.
	int nev = f->nev;
	push_offer(f, 11, "c 2\n", 1);
	assert_int_equal(f->nev, nev);

	assert_int_equal(sim_session_answer(&f->s, 11, true, 2), 0);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_ANSWER);
	assert_true(last(f)->accept);
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_RESERVED, NULL, 3);
	ce.kind = RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED;
	ce.call_id = "c-2";
	m.body_case = RINGBID__AGENT_MSG__BODY_CALL_EVENT;
	m.call_event = &ce;
	sim_session_on_msg(&f->s, &m, 4);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_CONNECTED);
	assert_string_equal(last_ev(f)->call_id, "c-2");

	// Presence pushes no event for a call the agent ends: the answer says it ended.
	assert_int_equal(sim_session_end_call(&f->s, "c-2", false, true, 5), 0);
	assert_true(last(f)->resolved);
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_WRAP_UP, NULL, 6);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_ENDED);
	assert_string_equal(last_ev(f)->call_id, "c-2");
}

static int count_kind(const fixture *f, sim_session_event_kind kind)
{
	int n = 0;
	for (int i = 0; i < f->nev && i < 64; i++)
		n += f->ev[i].kind == kind;
	return n;
}

// An accepted offer is not a call: the call starts with presence's CALL_EVENT_CONNECTED, and one
// that ends before it connects comes back as withdrawn.
static void test_accepted_connects_only_on_event(void **state)
{
	fixture *f = *state;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__CallEvent ce = RINGBID__CALL_EVENT__INIT;

	login(f);
	push_offer(f, 21, "c-21", 1);
	assert_int_equal(sim_session_answer(&f->s, 21, true, 2), 0);
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_RESERVED, NULL, 3);
	assert_int_equal(count_kind(f, SIM_SEV_CONNECTED), 0);
	assert_false(sim_session_busy(&f->s, RINGBID__AGENT_MSG__BODY_ANSWER));
	// A decline after the accept is refused by presence: reported, nothing else.
	assert_int_equal(sim_session_answer(&f->s, 21, false, 4), 0);
	reply_error(f, last(f)->seq, RB_ESTATE, 5);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_FAILED);
	assert_int_equal(last_ev(f)->code, RB_ESTATE);
	assert_int_equal(last_ev(f)->req_kind, RINGBID__AGENT_MSG__BODY_ANSWER);
	// The caller hung up before the call connected.
	ce.kind = RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN;
	ce.call_id = "c-21";
	ce.offer_id = 21;
	ce.reason = "call ended before it connected";
	m.body_case = RINGBID__AGENT_MSG__BODY_CALL_EVENT;
	m.call_event = &ce;
	sim_session_on_msg(&f->s, &m, 6);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_WITHDRAWN);
	assert_int_equal(last_ev(f)->offer_id, 21);
	assert_string_equal(last_ev(f)->call_id, "c-21");
	assert_int_equal(count_kind(f, SIM_SEV_CONNECTED), 0);
	assert_int_equal(count_kind(f, SIM_SEV_ENDED), 0);
}

static void test_expired_session_logs_in_again(void **state)
{
	fixture *f = *state;

	login(f);
	assert_int_equal(sim_session_set_ready(&f->s, true, 10), 0);
	reply_error(f, last(f)->seq, RB_EAUTH, 11);
	assert_int_equal(f->s.phase, SIM_SESS_LOGIN);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	assert_true(sim_session_busy(&f->s, RINGBID__AGENT_MSG__BODY_SET_STATE));
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "tok-2", 12);
	// The request that met the expired session goes again in the new one.
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_SET_STATE);
	assert_string_equal(last(f)->token, "tok-2");
}

static void test_link_loss_resumes_and_logout(void **state)
{
	fixture *f = *state;

	login(f);
	sim_session_link(&f->s, false, 100);
	assert_int_equal(f->s.phase, SIM_SESS_WAIT_LINK);
	sim_session_link(&f->s, true, 200);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_RESUME);
	// Presence forgot the session: a fresh login follows.
	reply_error(f, last(f)->seq, RB_ENOTFOUND, 201);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGIN);
	reply_status(f, last(f)->seq, RINGBID__AGENT_STATE__AGENT_NOT_READY, "tok-3", 202);
	assert_int_equal(f->s.logins, 2);
	sim_session_logout(&f->s, 300);
	assert_int_equal(last(f)->kind, RINGBID__AGENT_MSG__BODY_LOGOUT);
	sim_session_tick(&f->s, 300 + SIM_LOGOUT_WAIT_MS);
	assert_int_equal(f->s.phase, SIM_SESS_DONE);
	assert_int_equal(last_ev(f)->kind, SIM_SEV_DONE);
}

static void test_garbage_is_ignored(void **state)
{
	fixture *f = *state;
	const unsigned char junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};

	login(f);
	int nev = f->nev, nout = f->nout;
	sim_session_on_data(&f->s, junk, sizeof(junk), 5);
	reply_status(f, 9999, RINGBID__AGENT_STATE__AGENT_AVAILABLE, NULL, 5); // nobody asked
	assert_int_equal(f->nev, nev);
	assert_int_equal(f->nout, nout);
	assert_int_equal(f->s.phase, SIM_SESS_ACTIVE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_init_refuses_bad_input),
	        cmocka_unit_test_setup(test_login_ready_heartbeat, setup),
	        cmocka_unit_test_setup(test_busy_login_backs_off_refusal_finishes, setup),
	        cmocka_unit_test_setup(test_resend_then_give_up, setup),
	        cmocka_unit_test_setup(test_slow_login_keeps_waiting, setup),
	        cmocka_unit_test_setup(test_offer_call_and_end, setup),
	        cmocka_unit_test_setup(test_accepted_connects_only_on_event, setup),
	        cmocka_unit_test_setup(test_expired_session_logs_in_again, setup),
	        cmocka_unit_test_setup(test_link_loss_resumes_and_logout, setup),
	        cmocka_unit_test_setup(test_garbage_is_ignored, setup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
