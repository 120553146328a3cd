// Unit tests of the call state machine, the book's indexes, CDRs, deadlines and restore.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "call.h"
#include "programs.h"
#include "rb_err.h"

#define T0  1700000000000000ull // UTC µs
#define M0  5000000000ull       // monotonic µs
#define SEC 1000000ull

static broker_book book;
static broker_book *bk = &book; // the book the helpers use
static broker_arena arena;      // message views built by a test, freed by teardown

static int setup(void **state)
{
	(void)state;
	broker_book_init(&book, 1000, 3600 * SEC);
	broker_arena_init(&arena);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	broker_book_fini(&book);
	broker_arena_fini(&arena);
	return 0;
}

static void cdr_of(const broker_call *c, Ringbid__Cdr *cdr)
{
	assert_int_equal(broker_call_cdr(c, &arena, cdr), 0);
}

static broker_call *add(const char *id, uint64_t at)
{
	const char *skills[] = {"en", "sales"};
	broker_call_new in = {
	        .id = id,
	        .program = "sales",
	        .skills = skills,
	        .nskills = 2,
	        .priority = 3,
	        .caller_masked = "+1*******42",
	        .now_us = T0 + at,
	        .now_mono_us = M0 + at,
	};
	broker_call *c = NULL;
	assert_int_equal(broker_book_add(bk, &in, &c), 0);
	assert_non_null(c);
	return c;
}

static int ev_at(broker_call *c, broker_event_kind kind, uint64_t agent, uint64_t offer,
                 uint64_t at, broker_effects *fx)
{
	broker_effects local;
	broker_decision d;
	memset(&d, 0, sizeof(d));
	d.agent_id = agent;
	d.score = 88.5;
	d.eligible = 4;
	strcpy(d.reason, "highest score");
	d.at_us = T0 + at;
	broker_event ev = {
	        .kind = kind,
	        .agent_id = agent,
	        .offer_id = offer,
	        .decision = kind == BROKER_EV_OFFER ? &d : NULL,
	        .now_us = T0 + at,
	        .now_mono_us = M0 + at,
	};
	return broker_call_apply(bk, c, &ev, fx ? fx : &local);
}

static int ev(broker_call *c, broker_event_kind kind, uint64_t agent, uint64_t offer)
{
	return ev_at(c, kind, agent, offer, 10 * SEC, NULL);
}

// Brings a fresh call to state s by legal steps (agent 7, offer 70).
static broker_call *call_in(const char *id, broker_call_state s)
{
	broker_call *c = add(id, 0);
	if (s >= BROKER_CALL_QUEUED)
		assert_int_equal(ev_at(c, BROKER_EV_QUEUE, 0, 0, 0, NULL), 0);
	if (s >= BROKER_CALL_OFFERED)
		assert_int_equal(ev_at(c, BROKER_EV_OFFER, 7, 70, 2 * SEC, NULL), 0);
	if (s >= BROKER_CALL_CONNECTED)
		assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 7, 70, 5 * SEC, NULL), 0);
	if (s >= BROKER_CALL_ENDED)
		assert_int_equal(ev_at(c, BROKER_EV_HANGUP, 0, 0, 65500000, NULL), 0);
	assert_int_equal(c->state, s);
	return c;
}

// Every (state, event) pair: the legal ones land in the right state, the others are refused
// and change nothing.
static void test_transition_matrix(void **state)
{
	(void)state;
	static const broker_event_kind kinds[] = {
	        BROKER_EV_QUEUE,        BROKER_EV_OFFER,         BROKER_EV_CONNECT,
	        BROKER_EV_DECLINED,     BROKER_EV_OFFER_TIMEOUT, BROKER_EV_OFFER_LOST,
	        BROKER_EV_RING_EXPIRED, BROKER_EV_REFUSED,       BROKER_EV_HANGUP,
	        BROKER_EV_AGENT_HANGUP, BROKER_EV_MAX_WAIT,      BROKER_EV_MAX_TALK,
	};
	enum {
		Q = BROKER_CALL_QUEUED,
		O = BROKER_CALL_OFFERED,
		K = BROKER_CALL_CONNECTED,
		E = BROKER_CALL_ENDED
	};
	// expected[state][event]: resulting state, or 0 for refused.
	static const int expected[6][12] = {
	        [BROKER_CALL_ARRIVED] = {Q, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
	        [BROKER_CALL_QUEUED] = {0, O, 0, 0, 0, 0, 0, 0, E, 0, E, 0},
	        [BROKER_CALL_OFFERED] = {0, 0, K, Q, Q, Q, Q, Q, E, 0, E, 0},
	        [BROKER_CALL_CONNECTED] = {0, 0, 0, 0, 0, 0, 0, 0, E, E, 0, E},
	        [BROKER_CALL_ENDED] = {0},
	};
	int n = 0;
	for (int s = BROKER_CALL_ARRIVED; s <= BROKER_CALL_ENDED; s++) {
		for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
			char id[32];
			snprintf(id, sizeof(id), "m-%d-%zu", s, k);
			broker_call *c = call_in(id, (broker_call_state)s);
			uint64_t v = c->version;
			// The event's agent: the call's own for events about an offer or a
			// connection, a free one for OFFER.
			uint64_t agent = kinds[k] == BROKER_EV_OFFER ? 900 + (uint64_t)n : 0;
			uint64_t offer = kinds[k] == BROKER_EV_OFFER ? 9000 + (uint64_t)n : 0;
			broker_effects fx;
			int rc = ev_at(c, kinds[k], agent, offer, 10 * SEC, &fx);
			// Presence hears that a call connected on the transition into CONNECTED and
			// on no other: that word is what shows the agent the call connected.
			assert_int_equal((fx.flags & BROKER_FX_CALL_CONNECTED) != 0,
			                 rc == 0 && expected[s][k] == K);
			if (expected[s][k] == 0) {
				assert_int_equal(rc, RB_ESTATE);
				assert_int_equal(c->state, s);
				assert_int_equal(c->version, v);
			} else {
				assert_int_equal(rc, 0);
				assert_int_equal(c->state, expected[s][k]);
				assert_int_equal(c->version, v + 1);
			}
			// Close calls still at an agent so the next iteration's agent 7 is free.
			if (c->state == BROKER_CALL_OFFERED || c->state == BROKER_CALL_CONNECTED ||
			    c->state == BROKER_CALL_QUEUED)
				assert_int_equal(ev(c, BROKER_EV_HANGUP, 0, 0), 0);
			n++;
		}
	}
	assert_null(broker_book_agent_call(&book, 7));
}

static void test_effects(void **state)
{
	(void)state;
	broker_effects fx;
	broker_call *c = add("fx", 0);
	assert_int_equal(ev_at(c, BROKER_EV_QUEUE, 0, 0, 0, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_ENQUEUE);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 5, 50, SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_OFFER);
	assert_int_equal(fx.agent_id, 5);
	assert_int_equal(fx.offer_id, 50);
	assert_ptr_equal(broker_book_agent_call(&book, 5), c);
	assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 5, 50, 3 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_CALL_CONNECTED);
	assert_int_equal(fx.agent_id, 5);
	assert_int_equal(fx.offer_id, 50);
	assert_int_equal(c->answered_us, T0 + 3 * SEC);
	assert_int_equal(ev_at(c, BROKER_EV_AGENT_HANGUP, 5, 0, 9 * SEC, &fx), 0);
	// The CallEnded tells presence the broker has the hang-up.
	assert_int_equal(fx.flags, BROKER_FX_CALL_ENDED | BROKER_FX_CDR);
	assert_int_equal(fx.agent_id, 5);
	assert_int_equal(c->disposition, BROKER_DISP_COMPLETED);
	assert_int_equal(c->agent_id, 5);
	assert_null(broker_book_agent_call(&book, 5));
}

static void test_reoffer_keeps_arrival_and_excludes(void **state)
{
	(void)state;
	broker_call *first = add("early", 0);
	broker_call *c = add("r", 100);
	assert_int_equal(ev(first, BROKER_EV_QUEUE, 0, 0), 0);
	assert_int_equal(ev(c, BROKER_EV_QUEUE, 0, 0), 0);
	broker_effects fx;
	assert_int_equal(ev(c, BROKER_EV_OFFER, 11, 1), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER_LOST, 11, 1, 20 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_ENQUEUE);
	assert_int_equal(c->state, BROKER_CALL_QUEUED);
	assert_int_equal(c->arrived_us, T0 + 100);
	assert_int_equal(c->agent_id, 0);
	assert_true(broker_call_excluded(c, 11));
	assert_null(broker_book_agent_call(&book, 11));
	// An excluded agent cannot be offered the call again.
	assert_int_equal(ev(c, BROKER_EV_OFFER, 11, 2), RB_EINVAL);
	assert_int_equal(ev(c, BROKER_EV_OFFER, 12, 3), 0);
	assert_int_equal(ev_at(c, BROKER_EV_RING_EXPIRED, 0, 0, 40 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_ENQUEUE | BROKER_FX_OFFER_CANCEL);
	assert_int_equal(fx.agent_id, 12);
	assert_int_equal(fx.offer_id, 3);
	assert_true(broker_call_excluded(c, 12));
	assert_int_equal(c->nexcluded, 2);
	assert_int_equal(c->offers, 2);
	assert_int_equal(c->ndecisions, 2);
	assert_int_equal(c->arrived_us, T0 + 100);
	// Its place in line is its arrival: still behind "early", ahead of later calls.
	broker_call *later = add("later", 50 * SEC);
	assert_int_equal(ev(later, BROKER_EV_QUEUE, 0, 0), 0);
	assert_ptr_equal(broker_book_waiting_first(&book), first);
	assert_ptr_equal(broker_book_waiting_next(&book, first), c);
	assert_ptr_equal(broker_book_waiting_next(&book, c), later);
}

static void test_refusals_exclude_after_three(void **state)
{
	(void)state;
	broker_call *c = call_in("ref", BROKER_CALL_QUEUED);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(ev(c, BROKER_EV_OFFER, 21, 100 + (uint64_t)i), 0);
		assert_int_equal(ev(c, BROKER_EV_REFUSED, 21, 100 + (uint64_t)i), 0);
		assert_false(broker_call_excluded(c, 21));
	}
	// Another agent's refusal starts its own count.
	assert_int_equal(ev(c, BROKER_EV_OFFER, 22, 110), 0);
	assert_int_equal(ev(c, BROKER_EV_REFUSED, 22, 110), 0);
	assert_false(broker_call_excluded(c, 22));
	for (int i = 0; i < 3; i++) {
		assert_int_equal(ev(c, BROKER_EV_OFFER, 21, 120 + (uint64_t)i), 0);
		assert_int_equal(ev(c, BROKER_EV_REFUSED, 21, 120 + (uint64_t)i), 0);
		assert_int_equal(broker_call_excluded(c, 21), i == 2);
	}
	assert_int_equal(c->state, BROKER_CALL_QUEUED);
}

static void test_abandon(void **state)
{
	(void)state;
	broker_effects fx;
	broker_call *q = call_in("ab-q", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(q, BROKER_EV_HANGUP, 0, 0, 30 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_CDR);
	assert_int_equal(q->disposition, BROKER_DISP_ABANDONED);
	assert_int_equal(q->ended_us, T0 + 30 * SEC);

	broker_call *o = call_in("ab-o", BROKER_CALL_OFFERED);
	assert_int_equal(ev_at(o, BROKER_EV_HANGUP, 0, 0, 31 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_OFFER_CANCEL | BROKER_FX_CDR);
	assert_int_equal(fx.agent_id, 7);
	assert_int_equal(fx.offer_id, 70);
	assert_int_equal(o->disposition, BROKER_DISP_ABANDONED);
	assert_int_equal(o->agent_id, 0);
	assert_null(broker_book_agent_call(&book, 7));

	// A caller hang-up of a connected call completes it and tells presence.
	broker_call *k = call_in("ab-c", BROKER_CALL_CONNECTED);
	assert_int_equal(ev_at(k, BROKER_EV_HANGUP, 0, 0, 40 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_CALL_ENDED | BROKER_FX_CDR);
	assert_int_equal(fx.agent_id, 7);
	assert_int_equal(k->disposition, BROKER_DISP_COMPLETED);
	assert_int_equal(book.count[BROKER_CALL_ENDED], 3);
}

static void test_overflow(void **state)
{
	(void)state;
	broker_effects fx;
	broker_call *q = call_in("ov-q", BROKER_CALL_QUEUED);
	assert_int_equal(ev(q, BROKER_EV_MAX_WAIT, 0, 0), 0);
	assert_int_equal(q->disposition, BROKER_DISP_OVERFLOW);
	broker_call *o = call_in("ov-o", BROKER_CALL_OFFERED);
	assert_int_equal(ev_at(o, BROKER_EV_MAX_WAIT, 0, 0, 600 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_OFFER_CANCEL | BROKER_FX_CDR);
	assert_int_equal(o->disposition, BROKER_DISP_OVERFLOW);
	assert_null(broker_book_agent_call(&book, 7));
	// Overflow never applies to a connected call.
	broker_call *k = call_in("ov-c", BROKER_CALL_CONNECTED);
	assert_int_equal(ev(k, BROKER_EV_MAX_WAIT, 0, 0), RB_ESTATE);
}

static void test_max_talk_review(void **state)
{
	(void)state;
	broker_effects fx;
	broker_call *c = call_in("mt", BROKER_CALL_CONNECTED);
	assert_int_equal(ev_at(c, BROKER_EV_MAX_TALK, 0, 0, 5 * SEC + 7200 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_CALL_ENDED | BROKER_FX_CDR);
	assert_int_equal(fx.agent_id, 7);
	assert_true(c->review);
	assert_int_equal(c->disposition, BROKER_DISP_COMPLETED);
	Ringbid__Cdr cdr;
	cdr_of(c, &cdr);
	assert_true(cdr.review);
	assert_int_equal(cdr.talk_s, 7200);
}

static void test_one_call_per_agent(void **state)
{
	(void)state;
	broker_call *a = call_in("g-a", BROKER_CALL_QUEUED);
	broker_call *b = call_in("g-b", BROKER_CALL_QUEUED);
	assert_int_equal(ev(a, BROKER_EV_OFFER, 31, 1), 0);
	uint64_t v = b->version;
	assert_int_equal(ev(b, BROKER_EV_OFFER, 31, 2), RB_EBUSY);
	assert_int_equal(b->state, BROKER_CALL_QUEUED);
	assert_int_equal(b->version, v);
	assert_int_equal(b->offers, 0);
	assert_int_equal(ev(a, BROKER_EV_CONNECT, 31, 1), 0);
	assert_int_equal(ev(b, BROKER_EV_OFFER, 31, 2), RB_EBUSY);
	assert_ptr_equal(broker_book_agent_call(&book, 31), a);
	// A result for another offer or another agent is refused.
	broker_call *c = call_in("g-c", BROKER_CALL_QUEUED);
	assert_int_equal(ev(c, BROKER_EV_OFFER, 32, 3), 0);
	assert_int_equal(ev(c, BROKER_EV_CONNECT, 32, 99), RB_ESTATE);
	assert_int_equal(ev(c, BROKER_EV_CONNECT, 33, 3), RB_ESTATE);
	assert_int_equal(ev(c, BROKER_EV_OFFER_LOST, 32, 4), RB_ESTATE);
	assert_int_equal(c->state, BROKER_CALL_OFFERED);
	// Once the agent is free again the call can go to it.
	assert_int_equal(ev(a, BROKER_EV_AGENT_HANGUP, 31, 0), 0);
	assert_int_equal(ev(b, BROKER_EV_OFFER, 31, 2), 0);
	assert_ptr_equal(broker_book_agent_call(&book, 31), b);
	// Offers need an agent and an offer id.
	broker_call *d = call_in("g-d", BROKER_CALL_QUEUED);
	assert_int_equal(ev(d, BROKER_EV_OFFER, 0, 5), RB_EINVAL);
	assert_int_equal(ev(d, BROKER_EV_OFFER, 40, 0), RB_EINVAL);
}

static void test_cdr_fields(void **state)
{
	(void)state;
	Ringbid__Cdr cdr;
	// Connected: talk time floor((ended - answered) / 1 s); offered_us is the first offer.
	broker_call *c = call_in("cdr-c", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 41, 1, 2 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER_LOST, 41, 1, 4 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 42, 2, 6 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 42, 2, 8 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_HANGUP, 0, 0, 8 * SEC + 125999999, NULL), 0);
	cdr_of(c, &cdr);
	assert_string_equal(cdr.cdr_id, "cdr-c");
	assert_string_equal(cdr.call_id, "cdr-c");
	assert_string_equal(cdr.program, "sales");
	assert_int_equal(cdr.agent_id, 42);
	assert_int_equal(cdr.arrived_us, T0);
	assert_int_equal(cdr.offered_us, T0 + 2 * SEC);
	assert_int_equal(cdr.answered_us, T0 + 8 * SEC);
	assert_int_equal(cdr.ended_us, T0 + 8 * SEC + 125999999);
	assert_int_equal(cdr.talk_s, 125);
	assert_int_equal(cdr.disposition, RINGBID__DISPOSITION__DISP_COMPLETED);
	assert_int_equal(cdr.offers, 2);
	assert_false(cdr.review);
	assert_false(cdr.sale);

	// Abandoned while ringing: offered but never answered, no agent, no talk.
	broker_call *o = call_in("cdr-o", BROKER_CALL_OFFERED);
	assert_int_equal(ev_at(o, BROKER_EV_HANGUP, 0, 0, 9 * SEC, NULL), 0);
	cdr_of(o, &cdr);
	assert_int_equal(cdr.agent_id, 0);
	assert_int_equal(cdr.offered_us, T0 + 2 * SEC);
	assert_int_equal(cdr.answered_us, 0);
	assert_int_equal(cdr.talk_s, 0);
	assert_int_equal(cdr.disposition, RINGBID__DISPOSITION__DISP_ABANDONED);
	assert_int_equal(cdr.offers, 1);

	// Overflow without an offer.
	broker_call *q = call_in("cdr-q", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(q, BROKER_EV_MAX_WAIT, 0, 0, 600 * SEC, NULL), 0);
	cdr_of(q, &cdr);
	assert_int_equal(cdr.offered_us, 0);
	assert_int_equal(cdr.talk_s, 0);
	assert_int_equal(cdr.disposition, RINGBID__DISPOSITION__DISP_OVERFLOW);

	// A wall clock that stepped back never makes a call end before its answer.
	broker_call *w = call_in("cdr-w", BROKER_CALL_CONNECTED);
	broker_event back = {.kind = BROKER_EV_HANGUP, .now_us = T0, .now_mono_us = M0};
	broker_effects fx;
	assert_int_equal(broker_call_apply(&book, w, &back, &fx), 0);
	cdr_of(w, &cdr);
	assert_true(cdr.ended_us >= cdr.answered_us);
	assert_int_equal(cdr.talk_s, 0);
}

static void test_deadlines(void **state)
{
	(void)state;
	broker_limits lim = {
	        .ring_timeout_s = 15, .wrap_up_s = 30, .max_wait_s = 600, .max_talk_s = 7200};
	uint64_t at;
	broker_event_kind kind;
	broker_call *c = add("dl", 0);
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), RB_ENOTFOUND);
	assert_int_equal(ev_at(c, BROKER_EV_QUEUE, 0, 0, 0, NULL), 0);
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), 0);
	assert_int_equal(kind, BROKER_EV_MAX_WAIT);
	assert_int_equal(at, M0 + 600 * SEC);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 51, 1, 100 * SEC, NULL), 0);
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), 0);
	assert_int_equal(kind, BROKER_EV_RING_EXPIRED);
	assert_int_equal(at, M0 + 100 * SEC + 15 * SEC + 5 * SEC);
	// Near the end of the wait, the wait wins over the ring backstop.
	lim.max_wait_s = 110;
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), 0);
	assert_int_equal(kind, BROKER_EV_MAX_WAIT);
	assert_int_equal(at, M0 + 110 * SEC);
	assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 51, 1, 105 * SEC, NULL), 0);
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), 0);
	assert_int_equal(kind, BROKER_EV_MAX_TALK);
	assert_int_equal(at, M0 + 105 * SEC + 7200 * SEC);
	assert_int_equal(ev(c, BROKER_EV_HANGUP, 0, 0), 0);
	assert_int_equal(broker_call_deadline(c, &lim, 5000, &at, &kind), RB_ENOTFOUND);
}

static void test_restore_round_trip(void **state)
{
	(void)state;
	broker_call *c = call_in("rt", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 61, 1, 2 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER_LOST, 61, 1, 3 * SEC, NULL), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER, 62, 2, 4 * SEC, NULL), 0);
	broker_arena a;
	broker_arena_init(&a);
	Ringbid__CallRecord rec;
	assert_int_equal(broker_call_record(c, &a, &rec), 0);

	broker_book other;
	broker_book_init(&other, 10, 3600 * SEC);
	broker_call *r = NULL;
	// Restored 30 s later: the monotonic anchors move with the UTC times.
	assert_int_equal(broker_book_restore(&other, &rec, T0 + 34 * SEC, 9 * M0 + 34 * SEC, &r),
	                 0);
	assert_non_null(r);
	assert_string_equal(r->id, "rt");
	assert_string_equal(r->program, "sales");
	assert_int_equal(r->state, BROKER_CALL_OFFERED);
	assert_int_equal(r->agent_id, 62);
	assert_int_equal(r->offer_id, 2);
	assert_int_equal(r->arrived_us, c->arrived_us);
	assert_int_equal(r->offered_us, c->offered_us);
	assert_int_equal(r->version, c->version);
	assert_int_equal(r->offers, 2);
	assert_int_equal(r->nskills, 2);
	assert_string_equal(r->skills[0], "en");
	assert_string_equal(r->skills[1], "sales");
	assert_int_equal(r->nexcluded, 1);
	assert_int_equal(r->excluded[0], 61);
	assert_int_equal(r->ndecisions, 2);
	assert_string_equal(r->decisions[1].reason, "highest score");
	assert_string_equal(r->caller_masked, "+1*******42");
	assert_int_equal(r->priority, 3);
	assert_int_equal(r->arrived_mono_us, 9 * M0);
	assert_int_equal(r->offer_mono_us, 9 * M0 + 4 * SEC);
	assert_ptr_equal(broker_book_agent_call(&other, 62), r);
	assert_ptr_equal(broker_book_waiting_first(&other), r);

	// A later record of the same call replaces it (last wins).
	assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 62, 2, 5 * SEC, NULL), 0);
	broker_arena_fini(&a);
	broker_arena_init(&a);
	assert_int_equal(broker_call_record(c, &a, &rec), 0);
	assert_int_equal(broker_book_restore(&other, &rec, T0 + 34 * SEC, 9 * M0 + 34 * SEC, &r),
	                 0);
	assert_int_equal(r->state, BROKER_CALL_CONNECTED);
	assert_int_equal(other.count[BROKER_CALL_OFFERED], 0);
	assert_int_equal(other.count[BROKER_CALL_CONNECTED], 1);
	assert_null(broker_book_waiting_first(&other));

	// An unusable record is refused.
	rec.info->call_id = (char *)"bad id";
	assert_int_equal(broker_book_restore(&other, &rec, T0, M0, NULL), RB_EINVAL);
	broker_arena_fini(&a);
	broker_book_fini(&other);
}

static int evictions;
static void count_evict(broker_call *c, void *arg)
{
	(void)c;
	(void)arg;
	evictions++;
}

static void test_ended_bounds(void **state)
{
	(void)state;
	broker_book small;
	broker_book_init(&small, 2, 3600 * SEC);
	broker_book_on_evict(&small, count_evict, NULL);
	bk = &small;
	evictions = 0;
	char id[16];
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "e%d", i);
		broker_call *c = add(id, (uint64_t)i * SEC);
		assert_int_equal(ev_at(c, BROKER_EV_QUEUE, 0, 0, (uint64_t)i * SEC, NULL), 0);
		assert_int_equal(ev_at(c, BROKER_EV_HANGUP, 0, 0, (uint64_t)i * SEC, NULL), 0);
	}
	// The oldest ended call gave way to the bound.
	assert_int_equal(evictions, 1);
	assert_null(broker_book_find(&small, "e0"));
	assert_non_null(broker_book_find(&small, "e1"));
	// Age: kept an hour, then dropped oldest first.
	broker_book_expire(&small, T0 + 3600 * SEC + SEC / 2);
	assert_non_null(broker_book_find(&small, "e1"));
	broker_book_expire(&small, T0 + 3600 * SEC + 1 * SEC + 1);
	assert_null(broker_book_find(&small, "e1"));
	assert_non_null(broker_book_find(&small, "e2"));
	assert_int_equal(evictions, 2);
	broker_book_fini(&small);
	bk = &book;
}

static void test_add_refuses(void **state)
{
	(void)state;
	add("dup", 0);
	broker_call_new in = {.id = "dup", .program = "sales", .now_us = T0, .now_mono_us = M0};
	broker_call *c = NULL;
	assert_int_equal(broker_book_add(&book, &in, &c), RB_EEXIST);
	in.id = "has space";
	assert_int_equal(broker_book_add(&book, &in, &c), RB_EINVAL);
	in.id = "ok";
	in.program = "";
	assert_int_equal(broker_book_add(&book, &in, &c), RB_EINVAL);
	assert_null(broker_book_find(&book, "ok"));
}

static void test_skills_merge(void **state)
{
	(void)state;
	const char *a[] = {"sales", "en", "vip"};
	const char *b[] = {"en", "billing"};
	char **out = NULL;
	size_t n = 0;
	assert_int_equal(broker_skills_merge(a, 3, b, 2, &out, &n), 0);
	assert_int_equal(n, 4);
	assert_string_equal(out[0], "billing");
	assert_string_equal(out[1], "en");
	assert_string_equal(out[2], "sales");
	assert_string_equal(out[3], "vip");
	broker_skills_free(out, n);
	assert_int_equal(broker_skills_merge(NULL, 0, NULL, 0, &out, &n), 0);
	assert_int_equal(n, 0);
	assert_null(out);
	char names[BROKER_SKILLS_MAX + 1][8];
	const char *many[BROKER_SKILLS_MAX + 1];
	for (int i = 0; i <= BROKER_SKILLS_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "s%d", i);
		many[i] = names[i];
	}
	assert_int_equal(broker_skills_merge(many, BROKER_SKILLS_MAX + 1, NULL, 0, &out, &n),
	                 RB_ETOOBIG);
}

static void test_pg_text_array(void **state)
{
	(void)state;
	char **v = NULL;
	size_t n = 0;
	assert_int_equal(broker_pg_text_array("{}", 8, &v, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(broker_pg_text_array("{en,sales}", 8, &v, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0], "en");
	assert_string_equal(v[1], "sales");
	broker_skills_free(v, n);
	assert_int_equal(broker_pg_text_array("{\"a b\",\"c\\\"d\",NULL,\"NULL\", x }", 8, &v, &n),
	                 0);
	assert_int_equal(n, 4);
	assert_string_equal(v[0], "a b");
	assert_string_equal(v[1], "c\"d");
	assert_string_equal(v[2], "NULL");
	assert_string_equal(v[3], "x");
	broker_skills_free(v, n);
	assert_int_equal(broker_pg_text_array("[0:1]={a,b}", 8, &v, &n), 0);
	assert_int_equal(n, 2);
	broker_skills_free(v, n);
	assert_int_equal(broker_pg_text_array("{a,b,c}", 2, &v, &n), RB_ETOOBIG);
	assert_int_equal(broker_pg_text_array("{a,{b}}", 8, &v, &n), RB_EINVAL);
	assert_int_equal(broker_pg_text_array("{a,b", 8, &v, &n), RB_EINVAL);
	assert_int_equal(broker_pg_text_array("{\"a}", 8, &v, &n), RB_EINVAL);
	assert_int_equal(broker_pg_text_array("{a,,b}", 8, &v, &n), RB_EINVAL);
	assert_int_equal(broker_pg_text_array("a,b", 8, &v, &n), RB_EINVAL);
	assert_int_equal(broker_pg_text_array("{a} x", 8, &v, &n), RB_EINVAL);
	assert_null(v);
}

static void test_program_rows(void **state)
{
	(void)state;
	broker_programs p;
	broker_programs_init(&p);
	broker_program_row row = {
	        .id = "sales",
	        .skills = "{sales,en,en}",
	        .ring = "20",
	        .wrap = "45",
	        .max_wait = "900",
	        .max_talk = "3600",
	        .priority = "5",
	        .explore_share = "0.200",
	};
	assert_int_equal(broker_programs_put(&p, &row), 0);
	const broker_program *prog = broker_programs_find(&p, "sales");
	assert_non_null(prog);
	assert_int_equal(prog->nskills, 2);
	assert_string_equal(prog->skills[0], "en");
	assert_int_equal(prog->limits.ring_timeout_s, 20);
	assert_int_equal(prog->limits.wrap_up_s, 45);
	assert_int_equal(prog->limits.max_wait_s, 900);
	assert_int_equal(prog->limits.max_talk_s, 3600);
	assert_int_equal(prog->priority, 5);
	assert_float_equal(prog->explore_share, 0.2, 1e-12);
	broker_limits lim;
	broker_programs_limits(&p, "gone", &lim);
	assert_int_equal(lim.ring_timeout_s, 15);
	assert_int_equal(lim.max_talk_s, 7200);
	// Every edge of the share is taken; anything outside [0, 1] or not a number is not.
	static const char *const good_shares[] = {"0", "0.000", "1", "1.000", "0.001"};
	for (size_t i = 0; i < sizeof(good_shares) / sizeof(good_shares[0]); i++) {
		row.explore_share = good_shares[i];
		assert_int_equal(broker_programs_put(&p, &row), 0);
	}
	assert_float_equal(broker_programs_find(&p, "sales")->explore_share, 0.001, 1e-12);
	broker_program_row bad = row;
	bad.id = "x";
	static const char *const bad_shares[] = {"-0.001", "1.001", "nan",  "inf",
	                                         "0.2x",   "",      " 0.2", "1e400"};
	for (size_t i = 0; i < sizeof(bad_shares) / sizeof(bad_shares[0]); i++) {
		bad.explore_share = bad_shares[i];
		assert_int_equal(broker_programs_put(&p, &bad), RB_EINVAL);
	}
	bad.explore_share = NULL;
	assert_int_equal(broker_programs_put(&p, &bad), RB_EINVAL);
	bad = row;
	bad.id = "x";
	bad.ring = "0";
	assert_int_equal(broker_programs_put(&p, &bad), RB_EINVAL);
	bad = row;
	bad.id = "x";
	bad.skills = "{\"bad skill\"}";
	assert_int_equal(broker_programs_put(&p, &bad), RB_EINVAL);
	bad = row;
	bad.id = "x";
	bad.max_wait = "9x";
	assert_int_equal(broker_programs_put(&p, &bad), RB_EINVAL);
	assert_null(broker_programs_find(&p, "x"));
	broker_programs_remove(&p, "sales");
	assert_null(broker_programs_find(&p, "sales"));
	broker_programs_fini(&p);
}

// An offer with a decision of the caller's choosing (ev_at's is a plain "highest score").
static int offer_at(broker_call *c, uint64_t agent, uint64_t offer, uint64_t at, bool exploratory)
{
	broker_decision d;
	memset(&d, 0, sizeof(d));
	d.agent_id = agent;
	d.at_us = T0 + at;
	d.exploratory = exploratory;
	strcpy(d.reason, exploratory ? "exploration: longest available" : "highest score");
	broker_event e = {
	        .kind = BROKER_EV_OFFER,
	        .agent_id = agent,
	        .offer_id = offer,
	        .decision = &d,
	        .now_us = T0 + at,
	        .now_mono_us = M0 + at,
	};
	broker_effects fx;
	return broker_call_apply(bk, c, &e, &fx);
}

static void expect_entry(const broker_offer_entry *e, uint64_t agent, uint64_t offered_us,
                         Ringbid__OfferResultCode result)
{
	assert_int_equal(e->agent_id, agent);
	assert_int_equal(e->offered_us, offered_us);
	assert_int_equal(e->result, result);
}

// Every way an offer ends by the agent's doing is logged with the offer's start; the CDR
// carries the log oldest first.
static void test_offer_log(void **state)
{
	(void)state;
	broker_call *c = call_in("log", BROKER_CALL_QUEUED);
	assert_int_equal(c->noffer_log, 0);
	static const broker_event_kind ends[] = {
	        BROKER_EV_DECLINED,     BROKER_EV_OFFER_TIMEOUT, BROKER_EV_OFFER_LOST,
	        BROKER_EV_RING_EXPIRED, BROKER_EV_REFUSED,
	};
	static const Ringbid__OfferResultCode results[] = {
	        RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED,
	        RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT,
	        RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST,
	        RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST, // no result within the backstop
	        RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED,
	};
	for (size_t i = 0; i < 5; i++) {
		uint64_t at = (10 + 10 * i) * SEC;
		assert_int_equal(offer_at(c, 100 + i, 1 + i, at, false), 0);
		assert_int_equal(c->noffer_log, i);
		assert_int_equal(ev_at(c, ends[i], 100 + i, 1 + i, at + 3 * SEC, NULL), 0);
		assert_int_equal(c->noffer_log, i + 1);
		expect_entry(&c->offer_log[i], 100 + i, T0 + at, results[i]);
	}
	assert_int_equal(offer_at(c, 200, 9, 70 * SEC, false), 0);
	assert_int_equal(ev_at(c, BROKER_EV_CONNECT, 200, 9, 72 * SEC, NULL), 0);
	assert_int_equal(c->noffer_log, 6);
	expect_entry(&c->offer_log[5], 200, T0 + 70 * SEC,
	             RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	// The end of a connected call is no offer's end.
	assert_int_equal(ev_at(c, BROKER_EV_AGENT_HANGUP, 200, 0, 90 * SEC, NULL), 0);
	assert_int_equal(c->noffer_log, 6);

	Ringbid__Cdr cdr;
	cdr_of(c, &cdr);
	assert_int_equal(cdr.offers, 6);
	assert_int_equal(cdr.n_offer_log, 6);
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(cdr.offer_log[i]->agent_id, 100 + i);
		assert_int_equal(cdr.offer_log[i]->offered_us, T0 + (10 + 10 * i) * SEC);
		assert_int_equal(cdr.offer_log[i]->result, results[i]);
	}
	assert_int_equal(cdr.offer_log[5]->result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_false(cdr.exploratory);
}

// An offer withdrawn because the caller hung up or the call overflowed is not the agent's
// doing: it is counted in offers but not logged.
static void test_offer_log_leaves_out_withdrawn(void **state)
{
	(void)state;
	broker_call *a = call_in("wd-a", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(a, 31, 1, 2 * SEC, false), 0);
	assert_int_equal(ev_at(a, BROKER_EV_DECLINED, 31, 1, 4 * SEC, NULL), 0);
	assert_int_equal(offer_at(a, 32, 2, 5 * SEC, false), 0);
	assert_int_equal(ev_at(a, BROKER_EV_HANGUP, 0, 0, 6 * SEC, NULL), 0);
	assert_int_equal(a->offers, 2);
	assert_int_equal(a->noffer_log, 1);
	expect_entry(&a->offer_log[0], 31, T0 + 2 * SEC,
	             RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED);
	Ringbid__Cdr cdr;
	cdr_of(a, &cdr);
	assert_int_equal(cdr.offers, 2);
	assert_int_equal(cdr.n_offer_log, 1);
	assert_int_equal(cdr.offer_log[0]->agent_id, 31);

	broker_call *o = call_in("wd-o", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(o, 33, 3, 2 * SEC, false), 0);
	assert_int_equal(ev_at(o, BROKER_EV_MAX_WAIT, 0, 0, 600 * SEC, NULL), 0);
	assert_int_equal(o->noffer_log, 0);
	cdr_of(o, &cdr);
	assert_int_equal(cdr.n_offer_log, 0);
	assert_null(cdr.offer_log);

	// A refused event (wrong offer) logs nothing either.
	broker_call *r = call_in("wd-r", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(r, 34, 4, 2 * SEC, false), 0);
	assert_int_equal(ev(r, BROKER_EV_DECLINED, 34, 99), RB_ESTATE);
	assert_int_equal(r->noffer_log, 0);
}

// A call offered more than 64 times keeps the newest 64, oldest first.
static void test_offer_log_bound(void **state)
{
	(void)state;
	broker_call *c = call_in("many", BROKER_CALL_QUEUED);
	const uint64_t n = BROKER_OFFER_LOG_MAX + 6;
	for (uint64_t i = 0; i < n; i++) {
		// Refusals by fresh agents never exclude, so any number of offers fit.
		assert_int_equal(offer_at(c, 1000 + i, 1 + i, i * SEC, false), 0);
		assert_int_equal(ev_at(c, BROKER_EV_REFUSED, 1000 + i, 1 + i, i * SEC + 1, NULL),
		                 0);
	}
	assert_int_equal(c->offers, n);
	assert_int_equal(c->noffer_log, BROKER_OFFER_LOG_MAX);
	assert_int_equal(c->offer_log[0].agent_id, 1000 + n - BROKER_OFFER_LOG_MAX);
	assert_int_equal(c->offer_log[BROKER_OFFER_LOG_MAX - 1].agent_id, 1000 + n - 1);
	assert_int_equal(ev(c, BROKER_EV_HANGUP, 0, 0), 0);
	Ringbid__Cdr cdr;
	cdr_of(c, &cdr);
	assert_int_equal(cdr.n_offer_log, BROKER_OFFER_LOG_MAX);
	for (size_t i = 1; i < cdr.n_offer_log; i++)
		assert_true(cdr.offer_log[i - 1]->offered_us < cdr.offer_log[i]->offered_us);
}

// The CDR is exploratory exactly when the offer that connected came from exploration.
static void test_exploratory_cdr(void **state)
{
	(void)state;
	Ringbid__Cdr cdr;
	// Explored first, declined, then connected by score: not exploratory.
	broker_call *a = call_in("ex-a", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(a, 51, 1, 1 * SEC, true), 0);
	assert_int_equal(ev_at(a, BROKER_EV_DECLINED, 51, 1, 2 * SEC, NULL), 0);
	assert_int_equal(offer_at(a, 52, 2, 3 * SEC, false), 0);
	assert_int_equal(ev_at(a, BROKER_EV_CONNECT, 52, 2, 4 * SEC, NULL), 0);
	assert_int_equal(ev_at(a, BROKER_EV_HANGUP, 0, 0, 64 * SEC, NULL), 0);
	cdr_of(a, &cdr);
	assert_false(cdr.exploratory);

	// Connected through an exploratory offer (telephony saw the answer): exploratory.
	broker_call *b = call_in("ex-b", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(b, 53, 3, 1 * SEC, true), 0);
	assert_int_equal(ev_at(b, BROKER_EV_CONNECT, 0, 0, 2 * SEC, NULL), 0);
	assert_true(broker_call_exploratory(b));
	assert_int_equal(ev_at(b, BROKER_EV_MAX_TALK, 0, 0, 7300 * SEC, NULL), 0);
	cdr_of(b, &cdr);
	assert_true(cdr.exploratory);
	assert_true(cdr.review);

	// Offered by exploration but abandoned while ringing: never connected, not exploratory.
	broker_call *c = call_in("ex-c", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(c, 54, 4, 1 * SEC, true), 0);
	assert_int_equal(ev_at(c, BROKER_EV_HANGUP, 0, 0, 2 * SEC, NULL), 0);
	assert_false(broker_call_exploratory(c));
	cdr_of(c, &cdr);
	assert_false(cdr.exploratory);
}

// The offer log, the current offer's start and the decisions' score basis survive the journal.
static void test_offer_log_restore(void **state)
{
	(void)state;
	broker_call *c = call_in("olr", BROKER_CALL_QUEUED);
	assert_int_equal(offer_at(c, 71, 1, 2 * SEC, false), 0);
	assert_int_equal(ev_at(c, BROKER_EV_OFFER_TIMEOUT, 71, 1, 17 * SEC, NULL), 0);
	assert_int_equal(offer_at(c, 72, 2, 20 * SEC, true), 0);
	strcpy(c->decisions[1].score_basis, "program");
	strcpy(c->decisions[1].runner_up_basis, "overall");
	Ringbid__CallRecord rec;
	assert_int_equal(broker_call_record(c, &arena, &rec), 0);
	assert_int_equal(rec.n_offer_log, 1);
	assert_string_equal(rec.decisions[1]->score_basis, "program");

	// Through the wire format, as replay reads it.
	size_t len = ringbid__call_record__get_packed_size(&rec);
	uint8_t *buf = malloc(len);
	assert_non_null(buf);
	ringbid__call_record__pack(&rec, buf);
	Ringbid__CallRecord *back = ringbid__call_record__unpack(NULL, len, buf);
	free(buf);
	assert_non_null(back);
	broker_book other;
	broker_book_init(&other, 10, 3600 * SEC);
	broker_call *r = NULL;
	assert_int_equal(broker_book_restore(&other, back, T0 + 30 * SEC, M0 + 30 * SEC, &r), 0);
	assert_int_equal(r->noffer_log, 1);
	expect_entry(&r->offer_log[0], 71, T0 + 2 * SEC, RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT);
	assert_int_equal(r->offer_us, T0 + 20 * SEC);
	assert_string_equal(r->decisions[1].score_basis, "program");
	assert_string_equal(r->decisions[1].runner_up_basis, "overall");
	assert_true(r->decisions[1].exploratory);
	// The restored offer ends into the log with its own start.
	bk = &other;
	assert_int_equal(ev_at(r, BROKER_EV_CONNECT, 72, 2, 31 * SEC, NULL), 0);
	bk = &book;
	assert_int_equal(r->noffer_log, 2);
	expect_entry(&r->offer_log[1], 72, T0 + 20 * SEC,
	             RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	assert_true(broker_call_exploratory(r));

	// A log entry with an unknown result or no agent makes the record unusable.
	back->offer_log[0]->result = (Ringbid__OfferResultCode)9;
	assert_int_equal(broker_book_restore(&other, back, T0, M0, NULL), RB_EINVAL);
	back->offer_log[0]->result = RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED;
	back->offer_log[0]->agent_id = 0;
	assert_int_equal(broker_book_restore(&other, back, T0, M0, NULL), RB_EINVAL);
	ringbid__call_record__free_unpacked(back, NULL);
	broker_book_fini(&other);
}

// A score basis from the auction is kept only when it is one the auction defines.
static void test_decision_basis(void **state)
{
	(void)state;
	Ringbid__Decision d = RINGBID__DECISION__INIT;
	broker_decision out;
	d.agent_id = 5;
	d.reason = (char *)"highest score";
	d.score_basis = (char *)"overall";
	d.runner_up_basis = (char *)"program";
	broker_decision_from_pb(&d, &out);
	assert_string_equal(out.score_basis, "overall");
	assert_string_equal(out.runner_up_basis, "program");
	d.score_basis = (char *)"programme";
	d.runner_up_basis = (char *)"";
	broker_decision_from_pb(&d, &out);
	assert_string_equal(out.score_basis, "");
	assert_string_equal(out.runner_up_basis, "");
}

// The presence instance of an offer is kept with the call, journaled, restored, and names
// where the offer and the call it connects are told of.
static void test_presence_instance(void **state)
{
	(void)state;
	broker_call *c = call_in("pi", BROKER_CALL_QUEUED);
	broker_decision d;
	memset(&d, 0, sizeof(d));
	broker_event ev = {
	        .kind = BROKER_EV_OFFER,
	        .agent_id = 7,
	        .offer_id = 70,
	        .decision = &d,
	        .presence_id = BROKER_PRESENCE_ID_MAX + 1,
	        .now_us = T0 + 2 * SEC,
	        .now_mono_us = M0 + 2 * SEC,
	};
	broker_effects fx;
	uint64_t version = c->version;
	assert_int_equal(broker_call_apply(bk, c, &ev, &fx), RB_EINVAL);
	assert_int_equal(c->state, BROKER_CALL_QUEUED);
	assert_int_equal(c->version, version);
	ev.presence_id = 5;
	assert_int_equal(broker_call_apply(bk, c, &ev, &fx), 0);
	assert_int_equal(c->presence_id, 5);
	uint32_t pid = 0;
	assert_true(broker_call_presence(c, 7, &pid));
	assert_int_equal(pid, 5);
	assert_false(broker_call_presence(c, 8, &pid));
	assert_false(broker_call_presence(c, 0, &pid));

	// Journaled and restored with the call.
	Ringbid__CallRecord rec;
	assert_int_equal(broker_call_record(c, &arena, &rec), 0);
	assert_int_equal(rec.presence_id, 5);
	broker_book other;
	broker_book_init(&other, 10, 3600 * SEC);
	broker_call *r = NULL;
	assert_int_equal(broker_book_restore(&other, &rec, T0 + 9 * SEC, M0 + 9 * SEC, &r), 0);
	assert_int_equal(r->presence_id, 5);
	assert_true(broker_call_presence(r, 7, &pid));
	assert_int_equal(pid, 5);
	rec.presence_id = BROKER_PRESENCE_ID_MAX + 1;
	assert_int_equal(broker_book_restore(&other, &rec, T0 + 9 * SEC, M0 + 9 * SEC, NULL),
	                 RB_EINVAL);
	broker_book_fini(&other);

	// Back in line, the call still says where its last offer went (the cancel of an offer
	// the backstop ended goes there); the next offer replaces it.
	assert_int_equal(ev_at(c, BROKER_EV_RING_EXPIRED, 0, 0, 40 * SEC, &fx), 0);
	assert_true(fx.flags & BROKER_FX_OFFER_CANCEL);
	assert_true(broker_call_presence(c, 7, &pid));
	assert_int_equal(pid, 5);
	ev.agent_id = 8;
	ev.offer_id = 71;
	ev.presence_id = 0;
	assert_int_equal(broker_call_apply(bk, c, &ev, &fx), 0);
	assert_false(broker_call_presence(c, 7, &pid));
	assert_true(broker_call_presence(c, 8, &pid));
	assert_int_equal(pid, 0);
}

// The broker died after the agent accepted but before the CONNECTED record reached the disk:
// the restored call is OFFERED, and presence's ACCEPTED again for that very offer connects it.
static void test_accept_after_restore(void **state)
{
	(void)state;
	broker_call *c = call_in("ar", BROKER_CALL_OFFERED);
	Ringbid__CallRecord rec;
	assert_int_equal(broker_call_record(c, &arena, &rec), 0);
	broker_book other;
	broker_book_init(&other, 10, 3600 * SEC);
	broker_book *saved = bk;
	bk = &other;
	broker_call *r = NULL;
	assert_int_equal(broker_book_restore(&other, &rec, T0 + 9 * SEC, M0 + 90 * SEC, &r), 0);
	assert_int_equal(r->state, BROKER_CALL_OFFERED);
	assert_ptr_equal(broker_book_agent_call(&other, 7), r);
	// Another offer's answer, or another agent's, connects nothing.
	assert_int_equal(ev_at(r, BROKER_EV_CONNECT, 7, 69, 10 * SEC, NULL), RB_ESTATE);
	assert_int_equal(ev_at(r, BROKER_EV_CONNECT, 8, 70, 10 * SEC, NULL), RB_ESTATE);
	broker_effects fx;
	assert_int_equal(ev_at(r, BROKER_EV_CONNECT, 7, 70, 10 * SEC, &fx), 0);
	assert_int_equal(r->state, BROKER_CALL_CONNECTED);
	assert_int_equal(r->agent_id, 7);
	assert_int_equal(r->offer_id, 70);
	// The agent's presence has kept it connecting since the first ACCEPTED: this connection
	// is what it waits for.
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_CALL_CONNECTED);
	assert_int_equal(fx.agent_id, 7);
	assert_int_equal(fx.offer_id, 70);
	assert_int_equal(r->noffer_log, 1);
	assert_int_equal(r->offer_log[0].result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	// A third ACCEPTED is not a transition (the link takes it as a repeat).
	assert_int_equal(ev_at(r, BROKER_EV_CONNECT, 7, 70, 11 * SEC, NULL), RB_ESTATE);
	bk = saved;
	broker_book_fini(&other);
}

// The CallConnected presence waits for: sent for the offer that connected, to its agent,
// whether the agent's ACCEPTED or telephony's answer connected the call, and never for an
// answer that connects nothing.
static void test_connect_tells_presence(void **state)
{
	(void)state;
	broker_effects fx;
	broker_call *a = call_in("cc-a", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(a, BROKER_EV_OFFER, 5, 50, SEC, &fx), 0);
	assert_false(fx.flags & BROKER_FX_CALL_CONNECTED);
	// An answer for another offer, or from another agent, connects nothing and says nothing.
	assert_int_equal(ev_at(a, BROKER_EV_CONNECT, 5, 49, 2 * SEC, &fx), RB_ESTATE);
	assert_int_equal(fx.flags, 0);
	assert_int_equal(ev_at(a, BROKER_EV_CONNECT, 6, 50, 2 * SEC, &fx), RB_ESTATE);
	assert_int_equal(fx.flags, 0);
	assert_int_equal(ev_at(a, BROKER_EV_CONNECT, 5, 50, 3 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_CALL_CONNECTED);
	assert_int_equal(fx.agent_id, 5);
	assert_int_equal(fx.offer_id, 50);
	assert_int_equal(a->state, BROKER_CALL_CONNECTED);
	assert_int_equal(a->agent_id, 5);
	assert_int_equal(a->offer_id, 50);
	assert_int_equal(a->answered_us, T0 + 3 * SEC);
	// A second ACCEPTED is no transition: the link answers it with CallConnected itself.
	assert_int_equal(ev_at(a, BROKER_EV_CONNECT, 5, 50, 4 * SEC, &fx), RB_ESTATE);
	assert_int_equal(fx.flags, 0);
	// The end of the call says nothing more of its connection.
	assert_int_equal(ev_at(a, BROKER_EV_HANGUP, 0, 0, 9 * SEC, &fx), 0);
	assert_false(fx.flags & BROKER_FX_CALL_CONNECTED);

	// Telephony saw the agent's leg answer (no agent or offer in the event): the same word,
	// naming the call's own agent and offer.
	broker_call *t = call_in("cc-t", BROKER_CALL_QUEUED);
	assert_int_equal(ev_at(t, BROKER_EV_OFFER, 6, 60, SEC, &fx), 0);
	assert_int_equal(ev_at(t, BROKER_EV_CONNECT, 0, 0, 5 * SEC, &fx), 0);
	assert_int_equal(fx.flags, BROKER_FX_DEQUEUE | BROKER_FX_CALL_CONNECTED);
	assert_int_equal(fx.agent_id, 6);
	assert_int_equal(fx.offer_id, 60);
	assert_int_equal(t->answered_us, T0 + 5 * SEC);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_transition_matrix, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_effects, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_reoffer_keeps_arrival_and_excludes, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_refusals_exclude_after_three, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_abandon, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_overflow, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_max_talk_review, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_one_call_per_agent, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_cdr_fields, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_deadlines, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_restore_round_trip, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_ended_bounds, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_add_refuses, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_offer_log, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_offer_log_leaves_out_withdrawn, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_offer_log_bound, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_exploratory_cdr, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_offer_log_restore, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_presence_instance, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_accept_after_restore, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_connect_tells_presence, setup, teardown),
	        cmocka_unit_test(test_decision_basis),
	        cmocka_unit_test(test_skills_merge),
	        cmocka_unit_test(test_pg_text_array),
	        cmocka_unit_test(test_program_rows),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
