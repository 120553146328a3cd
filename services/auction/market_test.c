// Unit tests of the matching engine: the rule, exploration, the decisions, reservations,
// snapshots, and a randomized comparison with a brute-force reference.
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "market.h"
#include "rb_err.h"

// ---------------------------------------------------------------------------------------------
// Recording matches

typedef struct rec {
	char call[MARKET_ID_MAX + 1];
	uint64_t agent;
	market_decision d;
	bool resend;
} rec;

typedef struct recorder {
	rec *v;
	size_t n, cap;
} recorder;

static void on_match(const market_match *mm, void *arg)
{
	recorder *r = arg;
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 64;
		r->v = realloc(r->v, r->cap * sizeof *r->v);
		assert_non_null(r->v);
	}
	rec *x = &r->v[r->n++];
	snprintf(x->call, sizeof x->call, "%s", mm->call_id);
	x->agent = mm->agent_id;
	x->d = *mm->decision;
	x->resend = mm->resend;
	assert_int_equal(mm->agent_id, mm->decision->agent_id);
}

typedef struct fixture {
	market *m;
	recorder r;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	assert_int_equal(market_new(NULL, on_match, &f->r, &f->m), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	market_free(f->m);
	free(f->r.v);
	free(f);
	return 0;
}

static market_time T(uint64_t us)
{
	return (market_time){.wall_us = 1700000000000000ull + us, .mono_us = us};
}

// Splits "a,b,c" into up to 32 strings held by the struct.
typedef struct strlist {
	char buf[1024];
	char *v[40];
	size_t n;
} strlist;

static void split(strlist *s, const char *csv)
{
	s->n = 0;
	if (!csv || !*csv)
		return;
	snprintf(s->buf, sizeof s->buf, "%s", csv);
	char *save = NULL;
	for (char *t = strtok_r(s->buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
		s->v[s->n++] = t;
}

static int agent_ps(market *m, uint64_t id, bool avail, double score, const char *skills,
                    uint64_t since, uint64_t seq, const char *prog, double pscore, market_time t)
{
	strlist s;
	split(&s, skills);
	market_program_score ps = {.program = prog, .score = pscore};
	market_agent_info in = {
	        .id = id,
	        .available = avail,
	        .skills = s.v,
	        .nskills = s.n,
	        .score = score,
	        .program_scores = prog ? &ps : NULL,
	        .nprogram_scores = prog ? 1 : 0,
	        .available_since_us = since,
	        .state_seq = seq,
	};
	return market_agent_update(m, &in, t);
}

static int agent(market *m, uint64_t id, bool avail, double score, const char *skills,
                 uint64_t since, uint64_t seq, market_time t)
{
	return agent_ps(m, id, avail, score, skills, since, seq, NULL, 0, t);
}

static int enqueue_share(market *m, const char *id, const char *prog, const char *skills, int prio,
                         uint64_t arrived, const uint64_t *excl, size_t nexcl, double share,
                         market_time t)
{
	strlist s;
	split(&s, skills);
	market_call_info in = {
	        .id = id,
	        .program = prog,
	        .skills = s.v,
	        .nskills = s.n,
	        .priority = prio,
	        .arrived_us = arrived,
	        .excluded = excl,
	        .nexcluded = nexcl,
	        .explore_share = share,
	};
	return market_enqueue(m, &in, t);
}

static int enqueue(market *m, const char *id, const char *prog, const char *skills, int prio,
                   uint64_t arrived, const uint64_t *excl, size_t nexcl, market_time t)
{
	return enqueue_share(m, id, prog, skills, prio, arrived, excl, nexcl, 0.0, t);
}

static const rec *last(const fixture *f)
{
	assert_true(f->r.n > 0);
	return &f->r.v[f->r.n - 1];
}

static void expect_match(const fixture *f, size_t idx, const char *call, uint64_t agent_id)
{
	assert_true(f->r.n > idx);
	assert_string_equal(f->r.v[idx].call, call);
	assert_int_equal(f->r.v[idx].agent, agent_id);
}

// ---------------------------------------------------------------------------------------------
// The rule

static void test_highest_score_wins(void **state)
{
	fixture *f = *state;
	assert_int_equal(agent(f->m, 1, true, 50, "", 100, 1, T(1)), 0);
	assert_int_equal(agent(f->m, 2, true, 90, "", 300, 1, T(1)), 0);
	assert_int_equal(agent(f->m, 3, true, 70, "", 50, 1, T(1)), 0);
	assert_int_equal(enqueue(f->m, "c1", "sales", "", 0, 1000, NULL, 0, T(5)), 0);
	assert_int_equal(f->r.n, 1);
	const rec *x = last(f);
	assert_string_equal(x->call, "c1");
	assert_int_equal(x->agent, 2);
	assert_false(x->resend);
	assert_true(x->d.score == 90);
	assert_int_equal(x->d.runner_up_id, 3);
	assert_true(x->d.runner_up_score == 70);
	assert_int_equal(x->d.eligible, 3);
	assert_string_equal(x->d.reason, MARKET_REASON_SCORE);
	assert_int_equal(x->d.available_since_us, 300);
	assert_int_equal(x->d.at_us, T(5).wall_us);
	assert_int_equal(market_agent_get(f->m, 2, NULL), MARKET_AGENT_RESERVED);

	// The next call goes to the next best, never to the reserved agent.
	assert_int_equal(enqueue(f->m, "c2", "sales", "", 0, 1001, NULL, 0, T(6)), 0);
	x = last(f);
	assert_int_equal(x->agent, 3);
	assert_int_equal(x->d.runner_up_id, 1);
	assert_int_equal(x->d.eligible, 2);
	assert_int_equal(enqueue(f->m, "c3", "sales", "", 0, 1002, NULL, 0, T(7)), 0);
	x = last(f);
	assert_int_equal(x->agent, 1);
	assert_int_equal(x->d.runner_up_id, 0);
	assert_true(x->d.runner_up_score == 0);
	assert_int_equal(x->d.eligible, 1);
	assert_string_equal(x->d.reason, MARKET_REASON_ONLY);
	// Nobody left: the call waits.
	assert_int_equal(enqueue(f->m, "c4", "sales", "", 0, 1003, NULL, 0, T(8)), 0);
	assert_int_equal(f->r.n, 3);
	assert_int_equal(market_call_get(f->m, "c4", NULL), MARKET_CALL_WAITING);
	market_stats st;
	market_get_stats(f->m, &st);
	assert_int_equal(st.calls_waiting, 1);
	assert_int_equal(st.calls_matched, 3);
	assert_int_equal(st.agents_available, 0);
	assert_int_equal(st.agents_reserved, 3);
	assert_int_equal(st.decisions, 3);
}

static void test_tie_longest_available(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 80, "", 300, 1, T(1));
	agent(f->m, 2, true, 80, "", 100, 1, T(1));
	agent(f->m, 3, true, 80, "", 200, 1, T(1));
	agent(f->m, 4, true, 79.99, "", 1, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 2);
	assert_int_equal(x->d.runner_up_id, 3);
	assert_string_equal(x->d.reason, MARKET_REASON_SINCE);
	assert_int_equal(x->d.available_since_us, 100);
	assert_int_equal(x->d.eligible, 4);
}

static void test_tie_lowest_id(void **state)
{
	fixture *f = *state;
	agent(f->m, 9, true, 80, "", 100, 1, T(1));
	agent(f->m, 5, true, 80, "", 100, 1, T(1));
	agent(f->m, 7, true, 80, "", 100, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 5);
	assert_int_equal(x->d.runner_up_id, 7);
	assert_string_equal(x->d.reason, MARKET_REASON_ID);
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(2));
	x = last(f);
	assert_int_equal(x->agent, 7);
	assert_int_equal(x->d.runner_up_id, 9);
	assert_string_equal(x->d.reason, MARKET_REASON_ID);
}

static void test_program_score_overrides_overall(void **state)
{
	fixture *f = *state;
	agent_ps(f->m, 1, true, 90, "", 100, 1, "sales", 40, T(1));
	agent(f->m, 2, true, 60, "", 100, 1, T(1));
	agent_ps(f->m, 3, true, 10, "", 100, 1, "support", 95, T(1));
	// sales: 1 counts 40, 2 counts 60, 3 counts 10.
	enqueue(f->m, "s1", "sales", "", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 2);
	assert_true(x->d.score == 60);
	assert_int_equal(x->d.runner_up_id, 1);
	assert_true(x->d.runner_up_score == 40);
	// support: 1 counts 90, 3 counts 95.
	enqueue(f->m, "u1", "support", "", 0, 1, NULL, 0, T(3));
	x = last(f);
	assert_int_equal(x->agent, 3);
	assert_true(x->d.score == 95);
	assert_int_equal(x->d.runner_up_id, 1);
	assert_true(x->d.runner_up_score == 90);
}

static void test_skills_required(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 99, "fr", 100, 1, T(1));
	agent(f->m, 2, true, 10, "en,fr,de", 100, 1, T(1));
	agent(f->m, 3, true, 50, "en", 100, 1, T(1));
	// The best agent lacks "en": never wins.
	enqueue(f->m, "c1", "p", "fr,en", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 2);
	assert_int_equal(x->d.eligible, 1);
	assert_string_equal(x->d.reason, MARKET_REASON_ONLY);
	// Nobody left with "de": waits even though agents are free.
	enqueue(f->m, "c2", "p", "de", 0, 2, NULL, 0, T(3));
	assert_int_equal(f->r.n, 1);
	assert_int_equal(market_call_get(f->m, "c2", NULL), MARKET_CALL_WAITING);
	// Duplicated skills fold into one queue.
	enqueue(f->m, "c3", "p", "en,en", 0, 3, NULL, 0, T(4));
	expect_match(f, 1, "c3", 3);
	// An agent gaining the skill takes the waiting call.
	agent(f->m, 1, true, 99, "fr,de", 100, 2, T(5));
	expect_match(f, 2, "c2", 1);
}

static void test_exclusions(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 100, 1, T(1));
	agent(f->m, 2, true, 80, "", 100, 1, T(1));
	agent(f->m, 3, true, 70, "", 100, 1, T(1));
	agent(f->m, 4, false, 99, "", 100, 1, T(1));
	// Excluded: the top agent, an unavailable agent, an unknown one and a repeat.
	uint64_t ex[] = {1, 4, 77, 1};
	enqueue(f->m, "c1", "p", "", 0, 1, ex, 4, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 2);
	assert_int_equal(x->d.runner_up_id, 3);
	assert_int_equal(x->d.eligible, 2);
	// Everyone excluded: waits.
	uint64_t all[] = {1, 3};
	enqueue(f->m, "c2", "p", "", 0, 2, all, 2, T(3));
	assert_int_equal(f->r.n, 1);
	assert_int_equal(market_call_get(f->m, "c2", NULL), MARKET_CALL_WAITING);
	// Re-enqueued with fewer exclusions: matched now.
	uint64_t some[] = {1};
	enqueue(f->m, "c2", "p", "", 0, 2, some, 1, T(4));
	expect_match(f, 1, "c2", 3);
	// A call that excludes the freed agent is skipped for the next one.
	agent(f->m, 1, false, 90, "", 100, 2, T(5));
	uint64_t ex2[] = {5};
	enqueue(f->m, "c3", "p", "", 9, 3, ex2, 1, T(5));
	enqueue(f->m, "c4", "p", "", 0, 4, NULL, 0, T(5));
	agent(f->m, 5, true, 10, "", 100, 1, T(6));
	expect_match(f, 2, "c4", 5);
	assert_int_equal(market_call_get(f->m, "c3", NULL), MARKET_CALL_WAITING);
}

static void test_waiting_priority_then_age(void **state)
{
	fixture *f = *state;
	enqueue(f->m, "a", "p", "", 0, 100, NULL, 0, T(1));
	enqueue(f->m, "b", "p", "", 5, 300, NULL, 0, T(1));
	enqueue(f->m, "d", "p", "", 5, 200, NULL, 0, T(1));
	enqueue(f->m, "c", "p", "", 5, 200, NULL, 0, T(1));
	// Another queue (other program, a skill) with a lower priority but an older call.
	enqueue(f->m, "e", "q", "x", 4, 1, NULL, 0, T(1));
	enqueue(f->m, "f", "q", "x", 6, 900, NULL, 0, T(1));
	assert_int_equal(f->r.n, 0);
	// An agent without "x" serves only queue p: priority 5 first, the older, then call id.
	agent(f->m, 1, true, 50, "", 10, 1, T(2));
	expect_match(f, 0, "c", 1);
	assert_string_equal(f->r.v[0].d.reason, MARKET_REASON_ONLY);
	assert_int_equal(f->r.v[0].d.eligible, 1);
	agent(f->m, 2, true, 50, "", 10, 1, T(3));
	expect_match(f, 1, "d", 2);
	// An agent with "x" sees both queues: f (priority 6) beats b (5).
	agent(f->m, 3, true, 50, "x", 10, 1, T(4));
	expect_match(f, 2, "f", 3);
	agent(f->m, 4, true, 50, "x", 10, 1, T(5));
	expect_match(f, 3, "b", 4);
	agent(f->m, 5, true, 50, "x", 10, 1, T(6));
	expect_match(f, 4, "e", 5);
	agent(f->m, 6, true, 50, "x", 10, 1, T(7));
	expect_match(f, 5, "a", 6);
	assert_int_equal(f->r.n, 6);
}

static void test_reserved_not_matched_twice(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 50, "", 10, 7, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(2));
	assert_int_equal(f->r.n, 1);
	expect_match(f, 0, "c1", 1);
	const char *rf;
	assert_int_equal(market_agent_get(f->m, 1, &rf), MARKET_AGENT_RESERVED);
	assert_string_equal(rf, "c1");
	// Presence's update with the seq seen at reservation (sent before the offer reached it):
	// still reserved, data updated, no second call.
	agent(f->m, 1, true, 60, "", 10, 7, T(3));
	assert_int_equal(f->r.n, 1);
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_RESERVED);
	// Offer reached presence: RESERVED there, seq 8, not available.
	agent(f->m, 1, false, 60, "", 10, 8, T(4));
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(f->r.n, 1);
	// Call connected: the broker dequeues it; the agent is on the call (not available).
	market_dequeue(f->m, "c1", 0, T(5));
	assert_int_equal(market_call_get(f->m, "c1", NULL), MARKET_CALL_UNKNOWN);
	// Back to AVAILABLE after wrap-up: takes c2.
	agent(f->m, 1, true, 60, "", 500, 10, T(6));
	expect_match(f, 1, "c2", 1);
	assert_int_equal(f->r.v[1].d.available_since_us, 500);
	assert_true(f->r.v[1].d.score == 60);
}

static void test_state_seq_ends_reservation(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 50, "", 10, 3, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	expect_match(f, 0, "c1", 1);
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(3));
	// A newer state that is available (the offer was refused at presence, say): the
	// reservation ends and the agent takes the waiting call.
	agent(f->m, 1, true, 50, "", 20, 4, T(4));
	expect_match(f, 1, "c2", 1);
	const char *rf;
	assert_int_equal(market_agent_get(f->m, 1, &rf), MARKET_AGENT_RESERVED);
	assert_string_equal(rf, "c2");
	// c1 is no longer held by agent 1: its re-Enqueue matches it again (nobody free: waits).
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(5));
	assert_int_equal(f->r.n, 2);
	assert_int_equal(market_call_get(f->m, "c1", NULL), MARKET_CALL_WAITING);
}

static void test_enqueue_matched_resends_or_rematches(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	agent(f->m, 2, true, 80, "", 10, 1, T(1));
	enqueue(f->m, "c1", "p", "", 3, 1, NULL, 0, T(2));
	expect_match(f, 0, "c1", 1);
	market_decision first = f->r.v[0].d;
	// Lost Match: the same Enqueue again sends the same Match, same decision.
	enqueue(f->m, "c1", "p", "", 3, 1, NULL, 0, T(3));
	assert_int_equal(f->r.n, 2);
	expect_match(f, 1, "c1", 1);
	assert_true(f->r.v[1].resend);
	assert_memory_equal(&f->r.v[1].d, &first, sizeof first);
	// An exclusion of another agent does not change the match either.
	uint64_t other[] = {2};
	enqueue(f->m, "c1", "p", "", 3, 1, other, 1, T(4));
	assert_int_equal(f->r.n, 3);
	assert_true(f->r.v[2].resend);
	// The offer failed: agent 1 excluded, the call goes to agent 2; 1 stays reserved.
	uint64_t ex[] = {1};
	enqueue(f->m, "c1", "p", "", 3, 1, ex, 1, T(5));
	assert_int_equal(f->r.n, 4);
	expect_match(f, 3, "c1", 2);
	assert_false(f->r.v[3].resend);
	assert_int_equal(f->r.v[3].d.eligible, 1);
	assert_int_equal(f->r.v[3].d.at_us, T(5).wall_us);
	const char *rf;
	assert_int_equal(market_agent_get(f->m, 1, &rf), MARKET_AGENT_RESERVED);
	assert_string_equal(rf, "");
	uint64_t who;
	assert_int_equal(market_call_get(f->m, "c1", &who), MARKET_CALL_MATCHED);
	assert_int_equal(who, 2);
	// Excluding both: waits.
	uint64_t both[] = {1, 2};
	enqueue(f->m, "c1", "p", "", 3, 1, both, 2, T(6));
	assert_int_equal(market_call_get(f->m, "c1", &who), MARKET_CALL_WAITING);
	assert_int_equal(who, 0);
	assert_int_equal(f->r.n, 4);
}

static void test_dequeue_release(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(2));
	expect_match(f, 0, "c1", 1);
	// A release naming another agent changes nothing for agent 1.
	market_dequeue(f->m, "c1", 5, T(3));
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_RESERVED);
	assert_int_equal(f->r.n, 1);
	// Matched again through seq change, then released by the broker: takes c2 at once.
	agent(f->m, 1, true, 90, "", 10, 2, T(4));
	expect_match(f, 1, "c2", 1);
	enqueue(f->m, "c3", "p", "", 0, 3, NULL, 0, T(5));
	market_dequeue(f->m, "c2", 1, T(6));
	expect_match(f, 2, "c3", 1);
	// Released with nothing waiting: back in the index.
	market_dequeue(f->m, "c3", 1, T(8));
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_INDEXED);
	// Unknown call: fine.
	assert_int_equal(market_dequeue(f->m, "nope", 1, T(9)), 0);
	assert_int_equal(market_dequeue(f->m, "bad id!", 0, T(9)), RB_EINVAL);
}

static void test_release_unavailable_agent(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	// Same seq, but presence marked it unavailable (data only while reserved).
	agent(f->m, 1, false, 90, "", 10, 1, T(3));
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_RESERVED);
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(3));
	market_dequeue(f->m, "c1", 1, T(4));
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(f->r.n, 1);
}

static void test_snapshot_drops_missing(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	agent(f->m, 2, true, 80, "", 10, 1, T(1));
	agent(f->m, 3, true, 70, "", 10, 1, T(1));
	agent(f->m, 4, false, 70, "", 10, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(2));
	expect_match(f, 0, "c1", 1);
	// Snapshot in two chunks mentions only 2 (first chunk) and 4 (last chunk).
	market_agent_info a2 = {
	        .id = 2, .available = true, .score = 80, .available_since_us = 10, .state_seq = 1};
	market_agent_info a4 = {.id = 4, .available = false, .score = 70, .state_seq = 1};
	size_t dropped = 99;
	assert_int_equal(market_snapshot(f->m, 7, true, false, &a2, 1, T(3), &dropped), 0);
	assert_int_equal(dropped, 0);
	assert_int_equal(market_agent_get(f->m, 3, NULL), MARKET_AGENT_INDEXED);
	// An update between chunks counts as seen.
	agent(f->m, 3, false, 70, "", 10, 2, T(3));
	assert_int_equal(market_snapshot(f->m, 7, false, true, &a4, 1, T(4), &dropped), 0);
	assert_int_equal(dropped, 1);
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_UNKNOWN);
	assert_int_equal(market_agent_get(f->m, 2, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(market_agent_get(f->m, 3, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(market_agent_get(f->m, 4, NULL), MARKET_AGENT_AWAY);
	market_stats st;
	market_get_stats(f->m, &st);
	assert_int_equal(st.agents, 3);
	assert_int_equal(st.agents_reserved, 0);
	assert_int_equal(st.agents_available, 1);
	// The matched call's agent is gone: a re-Enqueue matches it anew (to 2).
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(5));
	expect_match(f, 1, "c1", 2);
	assert_false(f->r.v[1].resend);
	// A last chunk of a snapshot whose first chunk was never seen drops nothing.
	assert_int_equal(market_snapshot(f->m, 8, false, true, &a4, 1, T(6), &dropped), 0);
	assert_int_equal(dropped, 0);
	assert_int_equal(market_agent_get(f->m, 3, NULL), MARKET_AGENT_AWAY);
}

static void test_snapshot_serves_calls_in_order(void **state)
{
	fixture *f = *state;
	enqueue(f->m, "low", "p", "", 1, 1, NULL, 0, T(1));
	enqueue(f->m, "high", "p", "", 3, 3, NULL, 0, T(1));
	enqueue(f->m, "mid", "p", "", 2, 2, NULL, 0, T(1));
	enqueue(f->m, "other", "q", "z", 2, 1, NULL, 0, T(1));
	// Many agents available at once, the weakest first in the chunk: the best call still
	// gets the best agent.
	market_agent_info v[3] = {
	        {.id = 1, .available = true, .score = 10, .available_since_us = 5, .state_seq = 1},
	        {.id = 2, .available = true, .score = 50, .available_since_us = 5, .state_seq = 1},
	        {.id = 3, .available = true, .score = 90, .available_since_us = 5, .state_seq = 1},
	};
	assert_int_equal(market_snapshot(f->m, 1, true, true, v, 3, T(2), NULL), 0);
	assert_int_equal(f->r.n, 3);
	expect_match(f, 0, "high", 3);
	assert_int_equal(f->r.v[0].d.eligible, 3);
	assert_int_equal(f->r.v[0].d.runner_up_id, 2);
	expect_match(f, 1, "mid", 2);
	assert_int_equal(f->r.v[1].d.eligible, 2);
	expect_match(f, 2, "low", 1);
	assert_int_equal(f->r.v[2].d.eligible, 1);
	assert_int_equal(market_call_get(f->m, "other", NULL), MARKET_CALL_WAITING);
}

static void test_reservation_backstop(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	agent(f->m, 2, false, 90, "", 10, 1, T(1));
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(1000000));
	expect_match(f, 0, "c1", 1);
	agent(f->m, 2, true, 90, "", 10, 2, T(2000000));
	enqueue(f->m, "c2", "p", "", 0, 2, NULL, 0, T(2000000));
	expect_match(f, 1, "c2", 2);
	enqueue(f->m, "c3", "p", "", 0, 3, NULL, 0, T(2000000));
	market_janitor_result jr;
	market_janitor(f->m, T(1000000 + MARKET_RESERVE_MAX_US - 1), &jr);
	assert_int_equal(jr.reservations_ended, 0);
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_RESERVED);
	// Agent 1's reservation is 30 s old: it ends and 1 takes the waiting call; 2's holds.
	market_janitor(f->m, T(1000000 + MARKET_RESERVE_MAX_US), &jr);
	assert_int_equal(jr.reservations_ended, 1);
	expect_match(f, 2, "c3", 1);
	assert_int_equal(market_agent_get(f->m, 2, NULL), MARKET_AGENT_RESERVED);
	// c1 is still matched to 1 in the market's eyes, but 1 now holds c3: a re-Enqueue of c1
	// must not send agent 1 again.
	enqueue(f->m, "c1", "p", "", 0, 1, NULL, 0, T(1000000 + MARKET_RESERVE_MAX_US + 1));
	assert_int_equal(f->r.n, 3);
	assert_int_equal(market_call_get(f->m, "c1", NULL), MARKET_CALL_WAITING);
}

static void test_forget_and_queue_gc(void **state)
{
	(void)state;
	recorder r = {0};
	market *m;
	market_opts o = {.call_forget_us = 1000, .queue_idle_us = 500};
	assert_int_equal(market_new(&o, on_match, &r, &m), 0);
	agent(m, 1, true, 50, "a", 1, 1, T(0));
	enqueue(m, "c1", "p", "b", 0, 1, NULL, 0, T(0));
	enqueue(m, "c2", "p", "a", 0, 1, NULL, 0, T(0));
	enqueue(m, "c1", "p", "b", 0, 1, NULL, 0, T(600)); // still mentioned by the broker
	market_janitor_result jr;
	market_janitor(m, T(1000), &jr);
	assert_int_equal(jr.calls_forgotten, 1); // c2, matched, never mentioned again
	assert_int_equal(market_call_get(m, "c2", NULL), MARKET_CALL_UNKNOWN);
	assert_int_equal(market_call_get(m, "c1", NULL), MARKET_CALL_WAITING);
	assert_int_equal(jr.queues_dropped, 0);
	market_janitor(m, T(1499), &jr);
	assert_int_equal(jr.queues_dropped, 0);
	market_janitor(m, T(1500), &jr);
	assert_int_equal(jr.queues_dropped, 1); // p|a, unused since 1000
	market_stats st;
	market_get_stats(m, &st);
	assert_int_equal(st.queues, 1);
	// The dropped queue is made again when needed; agent 1 (reserved for the forgotten c2)
	// comes back through presence.
	agent(m, 1, true, 50, "a", 1, 2, T(1600));
	enqueue(m, "c3", "p", "a", 0, 1, NULL, 0, T(1600));
	assert_int_equal(r.n, 2);
	assert_string_equal(r.v[1].call, "c3");
	market_free(m);
	free(r.v);
}

static void test_queue_limit(void **state)
{
	(void)state;
	recorder r = {0};
	market *m;
	market_opts o = {.max_queues = 2};
	assert_int_equal(market_new(&o, on_match, &r, &m), 0);
	assert_int_equal(enqueue(m, "c1", "p", "a", 0, 1, NULL, 0, T(0)), 0);
	assert_int_equal(enqueue(m, "c2", "p", "b", 0, 1, NULL, 0, T(0)), 0);
	assert_int_equal(enqueue(m, "c3", "p", "c", 0, 1, NULL, 0, T(0)), RB_EBUSY);
	assert_int_equal(market_call_get(m, "c3", NULL), MARKET_CALL_UNKNOWN);
	market_dequeue(m, "c1", 0, T(1));
	// An unused queue makes room.
	assert_int_equal(enqueue(m, "c3", "p", "c", 0, 1, NULL, 0, T(2)), 0);
	agent(m, 1, true, 50, "c", 1, 1, T(3));
	assert_int_equal(r.n, 1);
	assert_string_equal(r.v[0].call, "c3");
	market_free(m);
	free(r.v);
}

static void test_validation_changes_nothing(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 50, "", 1, 1, T(0));
	market_stats before, after;
	market_get_stats(f->m, &before);
	assert_int_equal(agent(f->m, 0, true, 50, "", 1, 1, T(1)), RB_EINVAL);
	assert_int_equal(agent(f->m, 2, true, -1, "", 1, 1, T(1)), RB_EINVAL);
	assert_int_equal(agent(f->m, 2, true, 100.5, "", 1, 1, T(1)), RB_EINVAL);
	assert_int_equal(agent(f->m, 2, true, NAN, "", 1, 1, T(1)), RB_EINVAL);
	assert_int_equal(agent(f->m, 2, true, INFINITY, "", 1, 1, T(1)), RB_EINVAL);
	assert_int_equal(agent(f->m, 1, true, 50, "bad skill", 1, 2, T(1)), RB_EINVAL);
	assert_int_equal(agent_ps(f->m, 1, true, 50, "", 1, 2, "p", 101, T(1)), RB_EINVAL);
	assert_int_equal(agent_ps(f->m, 1, true, 50, "", 1, 2, "p q", 10, T(1)), RB_EINVAL);
	assert_int_equal(agent_ps(f->m, 1, true, 50, "", 1, 2, "", 10, T(1)), RB_EINVAL);
	char many[1024] = "";
	for (int i = 0; i < 33; i++)
		snprintf(many + strlen(many), sizeof many - strlen(many), "%ss%d", i ? "," : "", i);
	assert_int_equal(agent(f->m, 1, true, 50, many, 1, 2, T(1)), RB_EINVAL);
	market_program_score dup[] = {{"p", 1}, {"q", 2}, {"p", 3}};
	market_agent_info in = {.id = 1,
	                        .available = true,
	                        .score = 1,
	                        .program_scores = dup,
	                        .nprogram_scores = 3,
	                        .state_seq = 2};
	assert_int_equal(market_agent_update(f->m, &in, T(1)), RB_EINVAL);
	assert_int_equal(market_agent_update(f->m, NULL, T(1)), RB_EINVAL);

	assert_int_equal(enqueue(f->m, "", "p", "", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	assert_int_equal(enqueue(f->m, "c 1", "p", "", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	assert_int_equal(enqueue(f->m, "c1", "", "", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	assert_int_equal(enqueue(f->m, "c1", "p/x", "", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	assert_int_equal(enqueue(f->m, "c1", "p", many, 0, 1, NULL, 0, T(1)), RB_EINVAL);
	assert_int_equal(enqueue(f->m, "c1", "p", "a,b\"", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	char longid[80];
	memset(longid, 'x', sizeof longid - 1);
	longid[sizeof longid - 1] = '\0';
	assert_int_equal(enqueue(f->m, longid, "p", "", 0, 1, NULL, 0, T(1)), RB_EINVAL);
	uint64_t zero[] = {3, 0};
	assert_int_equal(enqueue(f->m, "c1", "p", "", 0, 1, zero, 2, T(1)), RB_EINVAL);
	uint64_t *big = calloc(MARKET_MAX_EXCLUDED + 1, sizeof *big);
	for (size_t i = 0; i <= MARKET_MAX_EXCLUDED; i++)
		big[i] = i + 1;
	assert_int_equal(enqueue(f->m, "c1", "p", "", 0, 1, big, MARKET_MAX_EXCLUDED + 1, T(1)),
	                 RB_EINVAL);
	// The limit itself is fine.
	assert_int_equal(enqueue(f->m, "c9", "p", "", 0, 1, big, MARKET_MAX_EXCLUDED, T(1)), 0);
	assert_int_equal(market_call_get(f->m, "c9", NULL), MARKET_CALL_WAITING);
	market_dequeue(f->m, "c9", 0, T(1));
	free(big);
	// A snapshot chunk with one bad agent applies none of it.
	market_agent_info v[2] = {{.id = 5, .available = true, .score = 5, .state_seq = 1},
	                          {.id = 6, .available = true, .score = 500, .state_seq = 1}};
	assert_int_equal(market_snapshot(f->m, 1, true, true, v, 2, T(1), NULL), RB_EINVAL);
	assert_int_equal(market_agent_get(f->m, 5, NULL), MARKET_AGENT_UNKNOWN);
	assert_int_equal(market_agent_get(f->m, 1, NULL), MARKET_AGENT_INDEXED);

	market_get_stats(f->m, &after);
	assert_int_equal(after.agents, before.agents);
	assert_int_equal(after.agents_available, before.agents_available);
	assert_int_equal(after.calls_waiting, before.calls_waiting);
	assert_int_equal(after.calls_matched, before.calls_matched);
	assert_int_equal(f->r.n, 0);
}

static void test_new_queue_indexes_available_agents(void **state)
{
	fixture *f = *state;
	for (uint64_t id = 1; id <= 20; id++)
		agent(f->m, id, true, (double)(id % 7), id % 2 ? "odd" : "even", 100 - id, 1, T(1));
	// A skill set never seen before: the new queue finds the agents already available.
	enqueue(f->m, "c1", "p", "odd", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	// Odd ids with score id%7: 13 (6) since 87 and ... 5 (5), 19 (5) etc.; best is 13.
	assert_int_equal(x->agent, 13);
	assert_int_equal(x->d.eligible, 10);
	enqueue(f->m, "c2", "p", "", 0, 1, NULL, 0, T(3));
	x = last(f);
	// All but 13: score 6 is 6 and 20; 6 has since 94, 20 since 80 -> 20.
	assert_int_equal(x->agent, 20);
	assert_int_equal(x->d.eligible, 19);
	assert_int_equal(x->d.runner_up_id, 6);
	assert_string_equal(x->d.reason, MARKET_REASON_SINCE);
}

static void test_score_change_reorders(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "", 10, 1, T(1));
	agent(f->m, 2, true, 80, "", 10, 1, T(1));
	enqueue(f->m, "warm", "p", "", 0, 1, NULL, 0, T(1));
	expect_match(f, 0, "warm", 1);
	market_dequeue(f->m, "warm", 1, T(2));
	// Scores pushed by billing while available: 2 overtakes 1.
	agent(f->m, 1, true, 70, "", 10, 1, T(3));
	enqueue(f->m, "c1", "p", "", 0, 2, NULL, 0, T(4));
	expect_match(f, 1, "c1", 2);
	assert_int_equal(f->r.v[1].d.runner_up_id, 1);
	assert_true(f->r.v[1].d.runner_up_score == 70);
}

// ---------------------------------------------------------------------------------------------
// Exploration and the score basis

// The rule written out again, independently of the engine: FNV-1a 64, then splitmix64.
static uint64_t ref_explore_hash(const char *id)
{
	uint64_t h = 14695981039346656037ull;
	for (size_t i = 0; id[i]; i++) {
		h ^= (uint8_t)id[i];
		h *= 1099511628211ull;
	}
	h += 0x9e3779b97f4a7c15ull;
	h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
	h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
	return h ^ (h >> 31);
}

static bool ref_exploratory(const char *id, double share)
{
	return ref_explore_hash(id) % 1000000 < (uint64_t)(share * 1000000 + 0.5);
}

static void test_explore_hash_rule(void **state)
{
	(void)state;
	// Fixed values, computed outside C: a change of the rule would move calls between the
	// exploration and auction groups of calls already recorded.
	assert_true(market_explore_hash("") == 0xc3817c016ba4ff30ull);
	assert_true(market_explore_hash("call-1") == 0xed406901f270e088ull);
	assert_true(market_explore_hash("7f3c2a9e-1b4d-4c6e-9a0f-2d8e5b7c1a34") ==
	            0xf5ae62e9e320f9a9ull);
	assert_true(market_explore_hash("CA0123456789") == 0x51c525aacd742a31ull);
	// "call-1": h % 1e6 = 770376.
	assert_false(market_call_exploratory("call-1", 0.770376));
	assert_true(market_call_exploratory("call-1", 0.770377));
	char id[32];
	for (int i = 0; i < 2000; i++) {
		snprintf(id, sizeof id, "c-%d", i * 7919);
		assert_true(market_explore_hash(id) == ref_explore_hash(id));
		for (double share = 0.0; share <= 1.0; share += 0.125) {
			bool x = market_call_exploratory(id, share);
			assert_int_equal(x, ref_exploratory(id, share));
			assert_int_equal(x, market_call_exploratory(id, share)); // deterministic
		}
		assert_false(market_call_exploratory(id, 0.0));
		assert_false(market_call_exploratory(id, -1.0));
		assert_false(market_call_exploratory(id, NAN));
		assert_true(market_call_exploratory(id, 1.0));
	}
	// The share over 100,000 ids: within 5 standard deviations of n*p.
	static const double shares[] = {0.01, 0.05, 0.2, 0.5, 0.9};
	for (size_t k = 0; k < sizeof shares / sizeof *shares; k++) {
		double p = shares[k];
		int n = 100000, hits = 0;
		for (int i = 0; i < n; i++) {
			snprintf(id, sizeof id, "call-%d", i);
			hits += market_call_exploratory(id, p);
		}
		double sd = sqrt(n * p * (1 - p));
		print_message("share %.2f: %d of %d ids exploratory (expected %.0f +- %.0f)\n", p,
		              hits, n, n * p, 5 * sd);
		assert_true(fabs(hits - n * p) < 5 * sd);
	}
}

static void test_exploration_picks_longest_available(void **state)
{
	fixture *f = *state;
	agent(f->m, 1, true, 90, "en", 300, 1, T(1));
	agent(f->m, 2, true, 50, "en", 100, 1, T(1));
	agent(f->m, 3, true, 70, "en", 100, 1, T(1));
	agent(f->m, 4, true, 10, "en", 200, 1, T(1));
	agent(f->m, 5, true, 99, "fr", 1, 1, T(1)); // longest available, lacks the skill
	// Share 1: every call explores. 2 and 3 tie on since: the lowest id.
	assert_int_equal(enqueue_share(f->m, "x1", "p", "en", 0, 1, NULL, 0, 1.0, T(2)), 0);
	const rec *x = last(f);
	assert_string_equal(x->call, "x1");
	assert_int_equal(x->agent, 2);
	assert_true(x->d.exploratory);
	assert_string_equal(x->d.reason, MARKET_REASON_EXPLORE);
	assert_true(x->d.score == 50);
	assert_int_equal(x->d.available_since_us, 100);
	assert_int_equal(x->d.runner_up_id, 3); // next in the same order
	assert_true(x->d.runner_up_score == 70);
	assert_int_equal(x->d.eligible, 4);
	assert_string_equal(x->d.score_basis, MARKET_BASIS_OVERALL);
	assert_string_equal(x->d.runner_up_basis, MARKET_BASIS_OVERALL);
	// Excluding 3: the next by since is 4 (200), not 1 (300) who has the best score.
	uint64_t ex[] = {3};
	assert_int_equal(enqueue_share(f->m, "x2", "p", "en", 0, 2, ex, 1, 1.0, T(3)), 0);
	x = last(f);
	assert_int_equal(x->agent, 4);
	assert_int_equal(x->d.runner_up_id, 1);
	assert_int_equal(x->d.eligible, 1 + 1); // 1 and 4
	// Share 0: the rule as ever.
	assert_int_equal(enqueue_share(f->m, "x3", "p", "en", 0, 3, NULL, 0, 0.0, T(4)), 0);
	x = last(f);
	assert_int_equal(x->agent, 1);
	assert_false(x->d.exploratory);
	assert_string_equal(x->d.reason, MARKET_REASON_SCORE);
	assert_int_equal(x->d.runner_up_id, 3);
	// Only one left and the call explores: still the exploration reason.
	assert_int_equal(enqueue_share(f->m, "x4", "p", "en", 0, 4, NULL, 0, 1.0, T(5)), 0);
	x = last(f);
	assert_int_equal(x->agent, 3);
	assert_true(x->d.exploratory);
	assert_string_equal(x->d.reason, MARKET_REASON_EXPLORE);
	assert_int_equal(x->d.runner_up_id, 0);
	assert_string_equal(x->d.runner_up_basis, "");
	assert_int_equal(market_check(f->m), 0);
}

static void test_waiting_exploratory_call_marked(void **state)
{
	fixture *f = *state;
	assert_int_equal(enqueue_share(f->m, "ex", "p", "", 0, 1, NULL, 0, 1.0, T(1)), 0);
	assert_int_equal(enqueue_share(f->m, "plain", "p", "", 0, 2, NULL, 0, 0.0, T(1)), 0);
	assert_int_equal(f->r.n, 0);
	// A freed agent takes the oldest waiting call, which explores: marked as such.
	agent(f->m, 1, true, 80, "", 10, 1, T(2));
	expect_match(f, 0, "ex", 1);
	assert_true(f->r.v[0].d.exploratory);
	assert_string_equal(f->r.v[0].d.reason, MARKET_REASON_EXPLORE);
	agent(f->m, 2, true, 80, "", 10, 1, T(3));
	expect_match(f, 1, "plain", 2);
	assert_false(f->r.v[1].d.exploratory);
	assert_string_equal(f->r.v[1].d.reason, MARKET_REASON_ONLY);
	// A resent Match keeps its decision.
	assert_int_equal(enqueue_share(f->m, "ex", "p", "", 0, 1, NULL, 0, 1.0, T(4)), 0);
	assert_true(last(f)->resend);
	assert_true(last(f)->d.exploratory);
	// The share changed between Enqueues: the call is decided again with it.
	uint64_t ex1[] = {1};
	agent(f->m, 3, true, 10, "", 5, 1, T(5));
	agent(f->m, 4, true, 90, "", 50, 1, T(5));
	assert_int_equal(enqueue_share(f->m, "ex", "p", "", 0, 1, ex1, 1, 0.0, T(6)), 0);
	assert_int_equal(last(f)->agent, 4);
	assert_false(last(f)->d.exploratory);
}

static void test_score_basis(void **state)
{
	fixture *f = *state;
	agent_ps(f->m, 1, true, 40, "", 10, 1, "sales", 95, T(1));
	agent_ps(f->m, 2, true, 90, "", 10, 1, "support", 10, T(1));
	agent(f->m, 3, true, 20, "", 10, 1, T(1));
	enqueue(f->m, "s1", "sales", "", 0, 1, NULL, 0, T(2));
	const rec *x = last(f);
	assert_int_equal(x->agent, 1);
	assert_true(x->d.score == 95);
	assert_string_equal(x->d.score_basis, MARKET_BASIS_PROGRAM);
	assert_int_equal(x->d.runner_up_id, 2);
	assert_true(x->d.runner_up_score == 90);
	assert_string_equal(x->d.runner_up_basis, MARKET_BASIS_OVERALL);
	enqueue(f->m, "s2", "support", "", 0, 2, NULL, 0, T(3));
	x = last(f);
	assert_int_equal(x->agent, 3); // 2 scores 10 in support, below 3's overall 20
	assert_string_equal(x->d.score_basis, MARKET_BASIS_OVERALL);
	assert_int_equal(x->d.runner_up_id, 2);
	assert_true(x->d.runner_up_score == 10);
	assert_string_equal(x->d.runner_up_basis, MARKET_BASIS_PROGRAM);
}

// The longest-available index follows every change: a new available_since while indexed,
// reservations, agents leaving, queues dropped and made again.
static void test_since_index_in_step(void **state)
{
	(void)state;
	recorder r = {0};
	market *m;
	market_opts o = {.queue_idle_us = 10};
	assert_int_equal(market_new(&o, on_match, &r, &m), 0);
	agent(m, 1, true, 10, "en", 100, 1, T(1));
	agent(m, 2, true, 20, "en", 200, 1, T(1));
	agent(m, 3, true, 30, "en,fr", 300, 1, T(1));
	assert_int_equal(market_check(m), 0);
	// 1 becomes available again later (a new available_since): 2 is now the longest.
	agent(m, 1, true, 10, "en", 400, 2, T(2));
	assert_int_equal(market_check(m), 0);
	enqueue_share(m, "a", "p", "en", 0, 1, NULL, 0, 1.0, T(3));
	assert_int_equal(r.v[r.n - 1].agent, 2);
	assert_int_equal(market_check(m), 0);
	// 2 is reserved: out of both trees. 3 (300) is next, then 1 (400).
	enqueue_share(m, "b", "p", "en", 0, 2, NULL, 0, 1.0, T(4));
	assert_int_equal(r.v[r.n - 1].agent, 3);
	assert_int_equal(market_check(m), 0);
	// Presence frees 2 with a new since; 1 goes away.
	agent(m, 2, true, 20, "en", 500, 2, T(5));
	agent(m, 1, false, 10, "en", 400, 3, T(5));
	assert_int_equal(market_check(m), 0);
	enqueue_share(m, "c", "p", "en", 0, 3, NULL, 0, 1.0, T(6));
	assert_int_equal(r.v[r.n - 1].agent, 2);
	market_dequeue(m, "a", 0, T(7));
	market_dequeue(m, "b", 0, T(7));
	market_dequeue(m, "c", 2, T(7));
	assert_int_equal(market_check(m), 0);
	// The queue is dropped when idle, and made again with the agents available then.
	market_janitor_result jr;
	market_janitor(m, T(100), &jr);
	assert_int_equal(jr.queues_dropped, 1);
	assert_int_equal(market_check(m), 0);
	agent(m, 1, true, 10, "en", 50, 4, T(101));
	enqueue_share(m, "d", "p", "en", 0, 4, NULL, 0, 1.0, T(102));
	assert_int_equal(r.v[r.n - 1].agent, 1);
	assert_int_equal(market_check(m), 0);
	// A snapshot that leaves 2 out drops it from the indexes.
	market_agent_info one = {.id = 1, .available = true, .score = 10, .state_seq = 9};
	assert_int_equal(market_snapshot(m, 1, true, true, &one, 1, T(103), NULL), 0);
	assert_int_equal(market_agent_get(m, 2, NULL), MARKET_AGENT_UNKNOWN);
	assert_int_equal(market_check(m), 0);
	market_free(m);
	free(r.v);
}

// ---------------------------------------------------------------------------------------------
// A brute-force reference: every decision recomputed with O(n) scans, compared one by one.

#define O_AGENTS 24
#define O_CALLS  40
#define O_SKILLS 5
#define O_PROGS  3

typedef struct o_agent {
	bool known, available;
	unsigned skills;
	double score;
	bool has_ps[O_PROGS];
	double ps[O_PROGS];
	uint64_t since, seq;
	market_agent_state st;
	uint64_t res_seq, res_mono;
	int res_call; // -1 none
} o_agent;

typedef struct o_call {
	bool known;
	char id[16];
	int prog;
	unsigned skills;
	int prio;
	uint64_t arrived;
	uint64_t excl[8];
	size_t nexcl;
	double share; // exploration share of its last Enqueue
	market_call_state st;
	uint64_t agent;
	market_decision d;
} o_call;

typedef struct oracle {
	o_agent a[O_AGENTS + 1]; // ids 1..O_AGENTS
	o_call c[O_CALLS];
	recorder expect;
} oracle;

static const char *skill_names[O_SKILLS] = {"s0", "s1", "s2", "s3", "s4"};
static const char *prog_names[O_PROGS] = {"p0", "p1", "p2"};

static bool o_excluded(const o_call *c, uint64_t id)
{
	for (size_t i = 0; i < c->nexcl; i++)
		if (c->excl[i] == id)
			return true;
	return false;
}

static bool o_eligible(const oracle *o, const o_call *c, uint64_t id)
{
	const o_agent *a = &o->a[id];
	return a->known && a->st == MARKET_AGENT_INDEXED && (a->skills & c->skills) == c->skills &&
	       !o_excluded(c, id);
}

static double o_score(const o_agent *a, int prog)
{
	return a->has_ps[prog] ? a->ps[prog] : a->score;
}

// True when agent x ranks before agent y for prog: by the rule, or for an exploratory call by
// how long each has been available only.
static bool o_agent_before(const oracle *o, uint64_t x, uint64_t y, int prog, bool explore)
{
	double sx = o_score(&o->a[x], prog), sy = o_score(&o->a[y], prog);
	if (!explore && sx != sy)
		return sx > sy;
	if (o->a[x].since != o->a[y].since)
		return o->a[x].since < o->a[y].since;
	return x < y;
}

static bool o_call_before(const o_call *x, const o_call *y)
{
	if (x->prio != y->prio)
		return x->prio > y->prio;
	if (x->arrived != y->arrived)
		return x->arrived < y->arrived;
	return strcmp(x->id, y->id) < 0;
}

static void o_push(oracle *o, const o_call *c, bool resend)
{
	market_match mm = {
	        .call_id = c->id, .agent_id = c->agent, .decision = &c->d, .resend = resend};
	on_match(&mm, &o->expect);
}

static void o_reserve(o_agent *a, int call, uint64_t mono)
{
	a->st = MARKET_AGENT_RESERVED;
	a->res_seq = a->seq;
	a->res_mono = mono;
	a->res_call = call;
}

static void o_match_all(oracle *o, market_time now)
{
	for (;;) {
		int best = -1;
		for (int i = 0; i < O_CALLS; i++) {
			o_call *c = &o->c[i];
			if (!c->known || c->st != MARKET_CALL_WAITING)
				continue;
			bool any = false;
			for (uint64_t id = 1; id <= O_AGENTS && !any; id++)
				any = o_eligible(o, c, id);
			if (any && (best < 0 || o_call_before(c, &o->c[best])))
				best = i;
		}
		if (best < 0)
			return;
		o_call *c = &o->c[best];
		bool explore = ref_exploratory(c->id, c->share);
		uint64_t w = 0, r = 0;
		uint32_t n = 0;
		for (uint64_t id = 1; id <= O_AGENTS; id++) {
			if (!o_eligible(o, c, id))
				continue;
			n++;
			if (!w || o_agent_before(o, id, w, c->prog, explore)) {
				r = w;
				w = id;
			} else if (!r || o_agent_before(o, id, r, c->prog, explore)) {
				r = id;
			}
		}
		market_decision d = {.at_us = now.wall_us,
		                     .agent_id = w,
		                     .score = o_score(&o->a[w], c->prog),
		                     .eligible = n,
		                     .available_since_us = o->a[w].since,
		                     .exploratory = explore,
		                     .score_basis = o->a[w].has_ps[c->prog] ? MARKET_BASIS_PROGRAM
		                                                            : MARKET_BASIS_OVERALL,
		                     .runner_up_basis = ""};
		if (r)
			d.runner_up_basis = o->a[r].has_ps[c->prog] ? MARKET_BASIS_PROGRAM
			                                            : MARKET_BASIS_OVERALL;
		if (explore) {
			d.reason = MARKET_REASON_EXPLORE;
			if (r) {
				d.runner_up_id = r;
				d.runner_up_score = o_score(&o->a[r], c->prog);
			}
		} else if (!r) {
			d.reason = MARKET_REASON_ONLY;
		} else {
			d.runner_up_id = r;
			d.runner_up_score = o_score(&o->a[r], c->prog);
			if (d.score != d.runner_up_score)
				d.reason = MARKET_REASON_SCORE;
			else if (o->a[w].since != o->a[r].since)
				d.reason = MARKET_REASON_SINCE;
			else
				d.reason = MARKET_REASON_ID;
		}
		c->st = MARKET_CALL_MATCHED;
		c->agent = w;
		c->d = d;
		o_reserve(&o->a[w], best, now.mono_us);
		o_push(o, c, false);
	}
}

static void o_end_reservation(oracle *o, uint64_t id)
{
	o_agent *a = &o->a[id];
	a->res_call = -1;
	a->st = a->available ? MARKET_AGENT_INDEXED : MARKET_AGENT_AWAY;
}

// Random agent data for the reference (in *a, applied by o_apply_agent) and the engine's input
// (strings in sl).
static void random_agent(const oracle *o, uint64_t id, o_agent *a, market_agent_info *in,
                         strlist *sl, market_program_score *ps, bool bump_seq)
{
	*a = o->a[id];
	a->available = rand() % 3 != 0;
	a->skills = (unsigned)rand() & ((1u << O_SKILLS) - 1);
	a->score = (double)(rand() % 5) * 10;
	for (int p = 0; p < O_PROGS; p++) {
		a->has_ps[p] = rand() % 4 == 0;
		a->ps[p] = (double)(rand() % 5) * 10 + 5 * (rand() % 2);
	}
	if (rand() % 2)
		a->since = (uint64_t)(rand() % 4) * 100;
	if (bump_seq || !a->known)
		a->seq++;
	sl->n = 0;
	for (int s = 0; s < O_SKILLS; s++)
		if (a->skills & (1u << s))
			sl->v[sl->n++] = (char *)skill_names[s];
	size_t np = 0;
	for (int p = 0; p < O_PROGS; p++)
		if (a->has_ps[p])
			ps[np++] = (market_program_score){prog_names[p], a->ps[p]};
	*in = (market_agent_info){.id = id,
	                          .available = a->available,
	                          .skills = sl->v,
	                          .nskills = sl->n,
	                          .score = a->score,
	                          .program_scores = ps,
	                          .nprogram_scores = np,
	                          .available_since_us = a->since,
	                          .state_seq = a->seq};
}

// The reference's AgentUpdate.
static void o_apply_agent(oracle *o, uint64_t id, const o_agent *data)
{
	o_agent *a = &o->a[id];
	a->available = data->available;
	a->skills = data->skills;
	a->score = data->score;
	memcpy(a->has_ps, data->has_ps, sizeof a->has_ps);
	memcpy(a->ps, data->ps, sizeof a->ps);
	a->since = data->since;
	a->seq = data->seq;
	if (!a->known) {
		a->known = true;
		a->st = MARKET_AGENT_AWAY;
		a->res_call = -1;
	}
	if (a->st == MARKET_AGENT_RESERVED && a->seq == a->res_seq)
		return;
	if (a->st == MARKET_AGENT_RESERVED)
		a->res_call = -1;
	a->st = a->available ? MARKET_AGENT_INDEXED : MARKET_AGENT_AWAY;
}

static void compare(const recorder *got, const recorder *want)
{
	if (got->n != want->n)
		fail_msg("matches: got %zu, want %zu", got->n, want->n);
	for (size_t i = 0; i < got->n; i++) {
		const rec *g = &got->v[i], *w = &want->v[i];
		if (strcmp(g->call, w->call) != 0 || g->agent != w->agent || g->resend != w->resend)
			fail_msg("match %zu: got %s->%llu%s, want %s->%llu%s", i, g->call,
			         (unsigned long long)g->agent, g->resend ? " (resend)" : "",
			         w->call, (unsigned long long)w->agent,
			         w->resend ? " (resend)" : "");
		if (g->d.eligible != w->d.eligible)
			fail_msg("match %zu %s->%llu: eligible got %u want %u", i, g->call,
			         (unsigned long long)g->agent, g->d.eligible, w->d.eligible);
		assert_int_equal(g->d.at_us, w->d.at_us);
		assert_true(g->d.score == w->d.score);
		assert_int_equal(g->d.runner_up_id, w->d.runner_up_id);
		assert_true(g->d.runner_up_score == w->d.runner_up_score);
		assert_int_equal(g->d.eligible, w->d.eligible);
		assert_string_equal(g->d.reason, w->d.reason);
		assert_int_equal(g->d.available_since_us, w->d.available_since_us);
		assert_int_equal(g->d.exploratory, w->d.exploratory);
		assert_string_equal(g->d.score_basis, w->d.score_basis);
		assert_string_equal(g->d.runner_up_basis, w->d.runner_up_basis);
	}
}

static void check_states(market *m, const oracle *o)
{
	for (uint64_t id = 1; id <= O_AGENTS; id++) {
		market_agent_state want = o->a[id].known ? o->a[id].st : MARKET_AGENT_UNKNOWN;
		const char *rf;
		assert_int_equal(market_agent_get(m, id, &rf), want);
		if (want == MARKET_AGENT_RESERVED)
			assert_string_equal(rf, o->a[id].res_call >= 0 ? o->c[o->a[id].res_call].id
			                                               : "");
	}
	for (int i = 0; i < O_CALLS; i++) {
		uint64_t who;
		market_call_state want = o->c[i].known ? o->c[i].st : MARKET_CALL_UNKNOWN;
		char id[16];
		snprintf(id, sizeof id, "call%02d", i);
		assert_int_equal(market_call_get(m, id, &who), want);
		if (want == MARKET_CALL_MATCHED)
			assert_int_equal(who, o->c[i].agent);
	}
}

// What the randomized runs exercised, so that a run that stops reaching a path is noticed.
typedef struct coverage {
	size_t matches, resends, backstops, dropped, tie_since, tie_id, runner_ups, explored,
	        program_basis;
} coverage;

static void run_random(unsigned seed, int steps, coverage *cov)
{
	srand(seed);
	recorder got = {0};
	market *m;
	assert_int_equal(market_new(NULL, on_match, &got, &m), 0);
	oracle *o = calloc(1, sizeof *o);
	assert_non_null(o);
	for (int i = 0; i < O_CALLS; i++)
		snprintf(o->c[i].id, sizeof o->c[i].id, "call%02d", i);
	uint64_t mono = 1;
	uint64_t snap = 0;
	for (int step = 0; step < steps; step++) {
		mono += (uint64_t)(rand() % 4000000);
		market_time now = {.wall_us = 1700000000000000ull + mono, .mono_us = mono};
		int kind = rand() % 100;
		if (kind < 35) {
			// AgentUpdate: same seq (data only when reserved) or the next one.
			uint64_t id = 1 + (uint64_t)(rand() % O_AGENTS);
			market_agent_info in;
			strlist sl;
			market_program_score ps[O_PROGS];
			o_agent data;
			random_agent(o, id, &data, &in, &sl, ps, rand() % 3 != 0);
			assert_int_equal(market_agent_update(m, &in, now), 0);
			o_apply_agent(o, id, &data);
			o_match_all(o, now);
		} else if (kind < 70) {
			// Enqueue: a new call, or a known one with new exclusions.
			int i = rand() % O_CALLS;
			o_call *c = &o->c[i];
			bool fresh = !c->known;
			if (fresh) {
				c->known = true;
				c->prog = rand() % O_PROGS;
				c->skills = (unsigned)rand() & (unsigned)rand() &
				            ((1u << O_SKILLS) - 1);
				c->prio = rand() % 3;
				c->arrived = (uint64_t)(rand() % 10);
				c->st = MARKET_CALL_WAITING;
			}
			// Three calls in seven explore on some calls or all; the share may change
			// between two Enqueues of one call.
			static const double shares[] = {0, 0, 0, 0, 0.3, 0.7, 1};
			if (fresh || rand() % 5 == 0)
				c->share = shares[rand() % 7];
			c->nexcl = (size_t)(rand() % 4);
			for (size_t k = 0; k < c->nexcl; k++)
				c->excl[k] = 1 + (uint64_t)(rand() % (O_AGENTS + 2));
			if (c->st == MARKET_CALL_MATCHED && rand() % 2 && c->nexcl < 8)
				c->excl[c->nexcl++] = c->agent; // the offer failed
			strlist sl;
			sl.n = 0;
			for (int s = 0; s < O_SKILLS; s++)
				if (c->skills & (1u << s))
					sl.v[sl.n++] = (char *)skill_names[s];
			market_call_info in = {.id = c->id,
			                       .program = prog_names[c->prog],
			                       .skills = sl.v,
			                       .nskills = sl.n,
			                       .priority = c->prio,
			                       .arrived_us = c->arrived,
			                       .excluded = c->excl,
			                       .nexcluded = c->nexcl,
			                       .explore_share = c->share};
			assert_int_equal(market_enqueue(m, &in, now), 0);
			if (c->st == MARKET_CALL_MATCHED) {
				o_agent *a = &o->a[c->agent];
				bool held = a->known && a->st == MARKET_AGENT_RESERVED &&
				            a->res_call == i;
				if (held && !o_excluded(c, c->agent)) {
					o_push(o, c, true);
				} else {
					if (held)
						a->res_call = -1;
					c->st = MARKET_CALL_WAITING;
					c->agent = 0;
				}
			}
			o_match_all(o, now);
		} else if (kind < 82) {
			// Dequeue, with the matched agent released or not.
			int i = rand() % O_CALLS;
			o_call *c = &o->c[i];
			uint64_t rel = 0;
			if (c->known && c->st == MARKET_CALL_MATCHED && rand() % 2)
				rel = c->agent;
			else if (rand() % 4 == 0)
				rel = 1 + (uint64_t)(rand() % O_AGENTS);
			assert_int_equal(market_dequeue(m, c->id, rel, now), 0);
			if (c->known) {
				if (c->st == MARKET_CALL_MATCHED) {
					o_agent *a = &o->a[c->agent];
					if (a->known && a->st == MARKET_AGENT_RESERVED &&
					    a->res_call == i) {
						a->res_call = -1;
						if (rel == c->agent)
							o_end_reservation(o, c->agent);
					}
				}
				memset(c, 0, sizeof *c);
				snprintf(c->id, sizeof c->id, "call%02d", i);
				o_match_all(o, now);
			}
		} else if (kind < 92) {
			// Janitor: the backstop ends old reservations, oldest first.
			market_janitor_result jr;
			market_janitor(m, now, &jr);
			size_t ended = 0;
			for (;;) {
				uint64_t pick = 0;
				for (uint64_t id = 1; id <= O_AGENTS; id++) {
					o_agent *a = &o->a[id];
					if (!a->known || a->st != MARKET_AGENT_RESERVED ||
					    mono - a->res_mono < MARKET_RESERVE_MAX_US)
						continue;
					if (!pick || a->res_mono < o->a[pick].res_mono)
						pick = id;
				}
				if (!pick)
					break;
				o_end_reservation(o, pick);
				ended++;
				o_match_all(o, now);
			}
			assert_int_equal(jr.reservations_ended, ended);
			cov->backstops += ended;
		} else {
			// A snapshot in one or two chunks that leaves some agents out.
			snap++;
			market_agent_info in[O_AGENTS];
			strlist sl[O_AGENTS];
			market_program_score ps[O_AGENTS][O_PROGS];
			o_agent data[O_AGENTS];
			uint64_t ids[O_AGENTS];
			size_t n = 0;
			for (uint64_t id = 1; id <= O_AGENTS; id++) {
				if (rand() % 6 == 0)
					continue;
				random_agent(o, id, &data[n], &in[n], &sl[n], ps[n], rand() % 2);
				ids[n++] = id;
			}
			size_t cut = rand() % 2 ? n / 2 : n;
			size_t dropped;
			assert_int_equal(
			        market_snapshot(m, snap, true, cut == n, in, cut, now, &dropped),
			        0);
			cov->dropped += dropped;
			for (size_t k = 0; k < cut; k++)
				o_apply_agent(o, ids[k], &data[k]);
			bool seen[O_AGENTS + 1] = {false};
			for (size_t k = 0; k < n; k++)
				seen[ids[k]] = true;
			if (cut == n) {
				for (uint64_t id = 1; id <= O_AGENTS; id++)
					if (!seen[id])
						memset(&o->a[id], 0, sizeof o->a[id]);
			}
			o_match_all(o, now);
			if (cut < n) {
				assert_int_equal(market_snapshot(m, snap, false, true, in + cut,
				                                 n - cut, now, &dropped),
				                 0);
				cov->dropped += dropped;
				for (size_t k = cut; k < n; k++)
					o_apply_agent(o, ids[k], &data[k]);
				for (uint64_t id = 1; id <= O_AGENTS; id++)
					if (!seen[id])
						memset(&o->a[id], 0, sizeof o->a[id]);
				o_match_all(o, now);
			}
		}
		compare(&got, &o->expect);
		check_states(m, o);
		assert_int_equal(market_check(m), 0);
		market_stats st;
		market_get_stats(m, &st);
		size_t waiting = 0, matched = 0;
		for (int i = 0; i < O_CALLS; i++) {
			waiting += o->c[i].known && o->c[i].st == MARKET_CALL_WAITING;
			matched += o->c[i].known && o->c[i].st == MARKET_CALL_MATCHED;
		}
		assert_int_equal(st.calls_waiting, waiting);
		assert_int_equal(st.calls_matched, matched);
	}
	for (size_t i = 0; i < got.n; i++) {
		const rec *x = &got.v[i];
		cov->matches++;
		cov->resends += x->resend;
		cov->runner_ups += x->d.runner_up_id != 0;
		cov->tie_since += strcmp(x->d.reason, MARKET_REASON_SINCE) == 0;
		cov->tie_id += strcmp(x->d.reason, MARKET_REASON_ID) == 0;
		cov->explored += x->d.exploratory;
		cov->program_basis += strcmp(x->d.score_basis, MARKET_BASIS_PROGRAM) == 0;
	}
	market_free(m);
	free(got.v);
	free(o->expect.v);
	free(o);
}

static void test_random_against_reference(void **state)
{
	(void)state;
	coverage cov = {0};
	for (unsigned seed = 1; seed <= 60; seed++)
		run_random(seed, 600, &cov);
	print_message("randomized: %zu matches, %zu resends, %zu with a runner-up, %zu ties on "
	              "score, %zu ties on score and wait, %zu backstops, %zu dropped by "
	              "snapshots, %zu exploratory, %zu on a program score\n",
	              cov.matches, cov.resends, cov.runner_ups, cov.tie_since, cov.tie_id,
	              cov.backstops, cov.dropped, cov.explored, cov.program_basis);
	assert_true(cov.matches > 1000);
	assert_true(cov.resends > 10);
	assert_true(cov.runner_ups > 100);
	assert_true(cov.tie_since > 10);
	assert_true(cov.tie_id > 10);
	assert_true(cov.backstops > 10);
	assert_true(cov.dropped > 10);
	assert_true(cov.explored > 500);
	assert_true(cov.matches - cov.explored > 500);
	assert_true(cov.program_basis > 100);
}

// ---------------------------------------------------------------------------------------------
// Scale: 100,000 agents and many events; nothing here may be quadratic.

static void test_hundred_thousand_agents(void **state)
{
	(void)state;
	enum {
		N = 100000,
		CALLS = 60000
	};
	recorder r = {0};
	market *m;
	assert_int_equal(market_new(NULL, on_match, &r, &m), 0);
	static const char *sk[] = {"en", "fr", "de", "es", "billing", "tech"};
	srand(42);
	// Calls wait first, in 12 queues.
	char id[32];
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof id, "w%d", i);
		char *skills[2] = {(char *)sk[i % 6], (char *)sk[(i / 6) % 2 + 4]};
		market_call_info in = {.id = id,
		                       .program = i % 2 ? "sales" : "support",
		                       .skills = skills,
		                       .nskills = (size_t)(i % 3 == 0 ? 2 : 1),
		                       .priority = i % 5,
		                       .arrived_us = (uint64_t)i};
		assert_int_equal(market_enqueue(m, &in, T(1)), 0);
	}
	// Then a snapshot of every agent in chunks of 1000.
	market_agent_info *v = calloc(1000, sizeof *v);
	char *(*skills)[3] = calloc(1000, sizeof *skills);
	market_program_score *ps = calloc(1000, sizeof *ps);
	for (int base = 0; base < N; base += 1000) {
		for (int k = 0; k < 1000; k++) {
			uint64_t aid = (uint64_t)(base + k + 1);
			skills[k][0] = (char *)sk[aid % 4];
			skills[k][1] = (char *)sk[(aid / 4) % 4];
			skills[k][2] = (char *)sk[4 + aid % 2];
			ps[k] = (market_program_score){"sales", (double)(rand() % 101)};
			v[k] = (market_agent_info){.id = aid,
			                           .available = true,
			                           .skills = skills[k],
			                           .nskills = 3,
			                           .score = (double)(rand() % 1001) / 10,
			                           .program_scores = &ps[k],
			                           .nprogram_scores = aid % 3 == 0,
			                           .available_since_us =
			                                   (uint64_t)(rand() % 100000),
			                           .state_seq = 1};
		}
		assert_int_equal(
		        market_snapshot(m, 1, base == 0, base + 1000 == N, v, 1000, T(2), NULL), 0);
	}
	market_stats st;
	market_get_stats(m, &st);
	assert_int_equal(st.agents, N);
	assert_int_equal(st.calls_waiting, 0);
	assert_int_equal(st.decisions, 5000);
	// A stream of calls, a fifth exploratory: each matched at once; every agent is freed
	// again by presence.
	uint64_t seq = 2;
	size_t explored = 0;
	for (int i = 0; i < CALLS; i++) {
		snprintf(id, sizeof id, "c%d", i);
		char *cs[1] = {(char *)sk[i % 6]};
		uint64_t ex[3] = {(uint64_t)(i % N) + 1, (uint64_t)(i * 7 % N) + 1, 5};
		market_call_info in = {.id = id,
		                       .program = i % 2 ? "sales" : "support",
		                       .skills = cs,
		                       .nskills = 1,
		                       .priority = 0,
		                       .arrived_us = (uint64_t)i,
		                       .excluded = ex,
		                       .nexcluded = 3,
		                       .explore_share = 0.2};
		size_t before = r.n;
		assert_int_equal(market_enqueue(m, &in, T(3 + (uint64_t)i)), 0);
		assert_int_equal(r.n, before + 1);
		uint64_t aid = r.v[r.n - 1].agent;
		explored += r.v[r.n - 1].d.exploratory;
		market_dequeue(m, id, 0, T(3 + (uint64_t)i));
		// RESERVED, then ON_CALL at presence, later AVAILABLE again.
		char *as[3] = {(char *)sk[aid % 4], (char *)sk[(aid / 4) % 4],
		               (char *)sk[4 + aid % 2]};
		market_agent_info up = {.id = aid,
		                        .available = false,
		                        .skills = as,
		                        .nskills = 3,
		                        .score = 50,
		                        .state_seq = seq++};
		assert_int_equal(market_agent_update(m, &up, T(4 + (uint64_t)i)), 0);
		up.available = true;
		up.state_seq = seq++;
		up.available_since_us = 200000 + (uint64_t)i;
		assert_int_equal(market_agent_update(m, &up, T(5 + (uint64_t)i)), 0);
	}
	market_get_stats(m, &st);
	print_message("%zu agents in %zu queues, %" PRIu64 " decisions, %zu exploratory\n",
	              st.agents, st.queues, st.decisions, explored);
	assert_true(explored > CALLS / 5 - 600 && explored < CALLS / 5 + 600);
	assert_int_equal(market_check(m), 0);
	assert_int_equal(st.agents_available, N - 5000);
	assert_int_equal(st.agents_reserved, 5000);
	assert_int_equal(st.decisions, 5000 + CALLS);
	// The first 5000 were never freed by presence: the backstop frees them all.
	market_janitor_result jr;
	market_janitor(m, T(100000000), &jr);
	assert_int_equal(jr.reservations_ended, 5000);
	market_get_stats(m, &st);
	assert_int_equal(st.agents_available, N);
	assert_int_equal(st.agents_reserved, 0);
	free(v);
	free(skills);
	free(ps);
	market_free(m);
	free(r.v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_highest_score_wins, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_tie_longest_available, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_tie_lowest_id, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_program_score_overrides_overall, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_skills_required, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_exclusions, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_waiting_priority_then_age, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_reserved_not_matched_twice, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_state_seq_ends_reservation, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_enqueue_matched_resends_or_rematches, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_dequeue_release, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_release_unavailable_agent, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_snapshot_drops_missing, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_snapshot_serves_calls_in_order, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_reservation_backstop, setup, teardown),
	        cmocka_unit_test(test_forget_and_queue_gc),
	        cmocka_unit_test(test_queue_limit),
	        cmocka_unit_test_setup_teardown(test_validation_changes_nothing, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_new_queue_indexes_available_agents, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_score_change_reorders, setup, teardown),
	        cmocka_unit_test(test_explore_hash_rule),
	        cmocka_unit_test_setup_teardown(test_exploration_picks_longest_available, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_waiting_exploratory_call_marked, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_score_basis, setup, teardown),
	        cmocka_unit_test(test_since_index_in_step),
	        cmocka_unit_test(test_random_against_reference),
	        cmocka_unit_test(test_hundred_thousand_agents),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
