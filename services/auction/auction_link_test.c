// Unit tests of the auction's protocol: Envelopes in, Matches and ErrorReplies out, and bad
// input refused without any change.
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction_link.h"
#include "rb_err.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "ringbid.pb-c.h"

#define TOKEN "test-service-token"

typedef struct sent {
	auction_link_id link;
	Ringbid__Envelope *env;
} sent;

typedef struct fixture {
	auction *a;
	sent out[256];
	uint32_t pipes[256]; // the connection each message was addressed to (0: none named)
	size_t nout;
} fixture;

static int capture(void *arg, auction_link_id link, nng_msg *msg)
{
	fixture *f = arg;
	ProtobufCMessage *pm = NULL;
	int pipe_id = nng_pipe_id(nng_msg_get_pipe(msg));
	assert_true(f->nout < 256);
	f->pipes[f->nout] = pipe_id > 0 ? (uint32_t)pipe_id : 0;
	assert_int_equal(
	        rb_pb_unpack_msg(&ringbid__envelope__descriptor, msg, RB_PB_MAX_SERVICE, &pm), 0);
	nng_msg_free(msg);
	Ringbid__Envelope *env = (Ringbid__Envelope *)pm;
	assert_string_equal(env->token, TOKEN);
	f->out[f->nout++] = (sent){link, env};
	return 0;
}

static void clear_out(fixture *f)
{
	for (size_t i = 0; i < f->nout; i++)
		rb_pb_free(&f->out[i].env->base);
	f->nout = 0;
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	assert_int_equal(auction_new(TOKEN, capture, f, &f->a), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	clear_out(f);
	auction_free(f->a);
	free(f);
	return 0;
}

static void deliver(fixture *f, auction_link_id link, Ringbid__Envelope *env, const char *token)
{
	env->token = (char *)token;
	size_t n = protobuf_c_message_get_packed_size(&env->base);
	uint8_t *buf = malloc(n ? n : 1);
	assert_non_null(buf);
	protobuf_c_message_pack(&env->base, buf);
	auction_receive(f->a, link, buf, n);
	free(buf);
}

static void send_enqueue_share(fixture *f, const char *call_id, const char *program, char **skills,
                               size_t nskills, uint64_t *excl, size_t nexcl, double share,
                               const char *token)
{
	Ringbid__Enqueue e = RINGBID__ENQUEUE__INIT;
	e.call_id = (char *)call_id;
	e.program = (char *)program;
	e.skills = skills;
	e.n_skills = nskills;
	e.arrived_us = rb_now_us() - 1000;
	e.excluded = excl;
	e.n_excluded = nexcl;
	e.explore_share = share;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_ENQUEUE;
	env.enqueue = &e;
	deliver(f, AUCTION_LINK_BROKER, &env, token);
}

static void send_enqueue(fixture *f, const char *call_id, const char *program, char **skills,
                         size_t nskills, uint64_t *excl, size_t nexcl, const char *token)
{
	send_enqueue_share(f, call_id, program, skills, nskills, excl, nexcl, 0.0, token);
}

static void send_agent(fixture *f, uint64_t id, bool avail, double score, uint64_t seq,
                       const char *token)
{
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	u.agent_id = id;
	u.available = avail;
	u.score = score;
	u.state_seq = seq;
	u.available_since_us = 1000 + id;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_AGENT;
	env.agent = &u;
	deliver(f, AUCTION_LINK_PRESENCE, &env, token);
}

static void send_dequeue(fixture *f, const char *call_id, uint64_t release)
{
	Ringbid__Dequeue d = RINGBID__DEQUEUE__INIT;
	d.call_id = (char *)call_id;
	d.release_agent = release;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_DEQUEUE;
	env.dequeue = &d;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
}

// The only message sent must be an error with code on link.
static void expect_error(fixture *f, auction_link_id link, int code)
{
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].link, link);
	assert_int_equal(f->out[0].env->body_case, RINGBID__ENVELOPE__BODY_ERROR);
	assert_int_equal(f->out[0].env->error->code, code);
	assert_true(strlen(f->out[0].env->error->message) > 0);
	clear_out(f);
}

static double metric(const char *name)
{
	char *text;
	size_t len;
	assert_int_equal(rb_metrics_render(&text, &len), 0);
	double v = -1;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		size_t n = strlen(name);
		if (strncmp(line, name, n) == 0 && line[n] == ' ')
			v = strtod(line + n + 1, NULL);
	}
	free(text);
	return v;
}

static void links_up(fixture *f)
{
	auction_link_event(f->a, AUCTION_LINK_PRESENCE, true);
	auction_link_event(f->a, AUCTION_LINK_BROKER, true);
	clear_out(f);
}

static void test_match_sent_to_broker(void **state)
{
	fixture *f = *state;
	links_up(f);
	double before = metric("ringbid_auction_decisions_total");
	send_agent(f, 7, true, 80, 1, TOKEN);
	send_agent(f, 8, true, 60, 1, TOKEN);
	assert_int_equal(f->nout, 0);
	assert_true(metric("ringbid_auction_agents_available") == 2);
	char *skills[] = {"en"};
	send_enqueue(f, "call-1", "sales", skills, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].link, AUCTION_LINK_BROKER);
	Ringbid__Envelope *env = f->out[0].env;
	assert_int_equal(env->body_case, RINGBID__ENVELOPE__BODY_MATCH);
	assert_string_equal(env->match->call_id, "call-1");
	assert_int_equal(env->match->agent_id, 7);
	const Ringbid__Decision *d = env->match->decision;
	assert_non_null(d);
	assert_int_equal(d->agent_id, 7);
	assert_true(d->score == 80);
	assert_int_equal(d->runner_up_id, 8);
	assert_true(d->runner_up_score == 60);
	assert_int_equal(d->eligible, 2);
	assert_string_equal(d->reason, "highest score");
	assert_int_equal(d->available_since_us, 1007);
	assert_false(d->exploratory);
	assert_string_equal(d->score_basis, "overall");
	assert_string_equal(d->runner_up_basis, "overall");
	uint64_t now = rb_now_us();
	assert_true(d->at_us <= now && d->at_us + 60000000 > now);
	assert_true(metric("ringbid_auction_decisions_total") == before + 1);
	assert_true(metric("ringbid_auction_agents_available") == 1);
	clear_out(f);
	// A skill nobody has: the call waits.
	send_enqueue(f, "call-2", "sales", skills, 1, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 0);
	assert_true(metric("ringbid_auction_calls_waiting") == 1);
	// The broker dequeues call-1 releasing 7, who never got the offer.
	send_dequeue(f, "call-1", 7);
	assert_int_equal(f->nout, 0);
	assert_int_equal(market_agent_get(auction_market(f->a), 7, NULL), MARKET_AGENT_INDEXED);
}

static void test_match_kept_while_broker_down(void **state)
{
	fixture *f = *state;
	auction_link_event(f->a, AUCTION_LINK_PRESENCE, true);
	clear_out(f);
	// Nobody available: the call waits.
	send_enqueue(f, "c1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 0);
	// An agent freed while the broker is away takes it: the Match is kept, not sent.
	send_agent(f, 1, true, 50, 1, TOKEN);
	assert_int_equal(f->nout, 0);
	uint64_t who;
	assert_int_equal(market_call_get(auction_market(f->a), "c1", &who), MARKET_CALL_MATCHED);
	assert_int_equal(who, 1);
	// The broker connects and enqueues its waiting calls: the Match goes now.
	auction_link_event(f->a, AUCTION_LINK_BROKER, true);
	assert_int_equal(f->nout, 0);
	send_enqueue(f, "c1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].link, AUCTION_LINK_BROKER);
	assert_int_equal(f->out[0].env->body_case, RINGBID__ENVELOPE__BODY_MATCH);
	assert_int_equal(f->out[0].env->match->agent_id, 1);
	clear_out(f);
	// The offer failed: excluded, nobody else: waits; no message.
	uint64_t ex[] = {1};
	send_enqueue(f, "c1", "p", NULL, 0, ex, 1, TOKEN);
	assert_int_equal(f->nout, 0);
	assert_int_equal(market_call_get(auction_market(f->a), "c1", NULL), MARKET_CALL_WAITING);
	// A broker message arriving before its connection is announced proves it is there.
	auction_link_event(f->a, AUCTION_LINK_BROKER, false);
	send_agent(f, 2, true, 50, 1, TOKEN);
	assert_int_equal(f->nout, 0); // c1 matched to 2, kept
	send_agent(f, 3, true, 50, 1, TOKEN);
	send_enqueue(f, "c2", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_string_equal(f->out[0].env->match->call_id, "c2");
	assert_int_equal(f->out[0].env->match->agent_id, 3);
}

static void test_snapshot_request_and_ready(void **state)
{
	fixture *f = *state;
	assert_false(auction_ready(f->a));
	auction_link_event(f->a, AUCTION_LINK_BROKER, true);
	assert_int_equal(f->nout, 0);
	assert_false(auction_ready(f->a));
	auction_link_event(f->a, AUCTION_LINK_PRESENCE, true);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].link, AUCTION_LINK_PRESENCE);
	assert_int_equal(f->out[0].env->body_case, RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST);
	assert_true(auction_ready(f->a));
	clear_out(f);
	auction_link_event(f->a, AUCTION_LINK_BROKER, false);
	assert_false(auction_ready(f->a));
}

static void test_snapshot_chunks(void **state)
{
	fixture *f = *state;
	links_up(f);
	send_agent(f, 1, true, 50, 1, TOKEN);
	send_agent(f, 2, true, 50, 1, TOKEN);
	send_agent(f, 3, true, 50, 1, TOKEN);
	Ringbid__AgentUpdate u2 = RINGBID__AGENT_UPDATE__INIT, u3 = RINGBID__AGENT_UPDATE__INIT;
	u2.agent_id = 2;
	u2.available = true;
	u2.score = 70;
	u2.state_seq = 1;
	u3.agent_id = 3;
	u3.score = 20;
	u3.state_seq = 2;
	Ringbid__ProgramScore ps = RINGBID__PROGRAM_SCORE__INIT;
	ps.program = "sales";
	ps.score = 99;
	Ringbid__ProgramScore *psv[] = {&ps};
	u2.program_scores = psv;
	u2.n_program_scores = 1;
	Ringbid__AgentUpdate *c1[] = {&u2}, *c2[] = {&u3};
	Ringbid__AgentSnapshot s = RINGBID__AGENT_SNAPSHOT__INIT;
	s.snapshot_id = 4;
	s.first = true;
	s.agents = c1;
	s.n_agents = 1;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT;
	env.snapshot = &s;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	s.first = false;
	s.last = true;
	s.agents = c2;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	assert_int_equal(f->nout, 0);
	market *m = auction_market(f->a);
	// Agent 1, held by this instance and not in its snapshot, left the market.
	assert_int_equal(market_agent_get(m, 1, NULL), MARKET_AGENT_AWAY);
	uint32_t pid = 99;
	assert_false(auction_agent_instance(f->a, 1, &pid));
	assert_int_equal(market_agent_get(m, 2, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(market_agent_get(m, 3, NULL), MARKET_AGENT_AWAY);
	send_enqueue(f, "c1", "sales", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->agent_id, 2);
	assert_true(f->out[0].env->match->decision->score == 99);
	assert_string_equal(f->out[0].env->match->decision->reason, "only eligible agent");
	clear_out(f);
	// A chunk with one invalid agent applies nothing.
	u3.available = true;
	u3.state_seq = 3;
	Ringbid__AgentUpdate bad = RINGBID__AGENT_UPDATE__INIT;
	bad.agent_id = 9;
	bad.score = NAN;
	Ringbid__AgentUpdate *c3[] = {&u3, &bad};
	s.first = true;
	s.last = true;
	s.agents = c3;
	s.n_agents = 2;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	assert_int_equal(market_agent_get(m, 3, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(market_agent_get(m, 2, NULL), MARKET_AGENT_RESERVED);
}

static void test_bad_input_refused(void **state)
{
	fixture *f = *state;
	links_up(f);
	send_agent(f, 1, true, 50, 1, TOKEN);
	market *m = auction_market(f->a);
	market_stats before, after;
	market_get_stats(m, &before);
	double refused = metric("ringbid_auction_messages_refused_total");

	// Garbage, on both links.
	const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
	auction_receive(f->a, AUCTION_LINK_BROKER, junk, sizeof junk);
	expect_error(f, AUCTION_LINK_BROKER, RB_EDECODE);
	auction_receive(f->a, AUCTION_LINK_PRESENCE, junk, sizeof junk);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EDECODE);
	// Over the service limit.
	size_t big = RB_PB_MAX_SERVICE + 1;
	uint8_t *huge = calloc(1, big);
	assert_non_null(huge);
	auction_receive(f->a, AUCTION_LINK_BROKER, huge, big);
	free(huge);
	expect_error(f, AUCTION_LINK_BROKER, RB_ETOOBIG);
	// Wrong token, missing token.
	send_enqueue(f, "c1", "p", NULL, 0, NULL, 0, "not-the-token");
	expect_error(f, AUCTION_LINK_BROKER, RB_EAUTH);
	send_enqueue(f, "c1", "p", NULL, 0, NULL, 0, "");
	expect_error(f, AUCTION_LINK_BROKER, RB_EAUTH);
	send_agent(f, 2, true, 50, 1, "test-service-tokeN");
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EAUTH);
	// Bodies on the wrong link, or never sent to the auction, or none at all.
	send_agent(f, 2, true, 50, 1, TOKEN);
	assert_int_equal(f->nout, 0);
	Ringbid__Enqueue e = RINGBID__ENQUEUE__INIT;
	e.call_id = "c1";
	e.program = "p";
	e.arrived_us = 5;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_ENQUEUE;
	env.enqueue = &e;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	Ringbid__Match mt = RINGBID__MATCH__INIT;
	mt.call_id = "c1";
	mt.agent_id = 1;
	env.body_case = RINGBID__ENVELOPE__BODY_MATCH;
	env.match = &mt;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	Ringbid__SnapshotRequest sr = RINGBID__SNAPSHOT_REQUEST__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST;
	env.snapshot_request = &sr;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	env.body_case = RINGBID__ENVELOPE__BODY__NOT_SET;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);

	// Invalid fields.
	char *skills33[33];
	for (int i = 0; i < 33; i++)
		skills33[i] = "s";
	send_enqueue(f, "c1", "p", skills33, 33, NULL, 0, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	char *badskill[] = {"en", "f r"};
	send_enqueue(f, "c1", "p", badskill, 2, NULL, 0, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	send_enqueue(f, "c 1", "p", NULL, 0, NULL, 0, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	send_enqueue(f, "c1", "", NULL, 0, NULL, 0, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	uint64_t zero[] = {0};
	send_enqueue(f, "c1", "p", NULL, 0, zero, 1, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	uint64_t *many = calloc(1025, sizeof *many);
	for (int i = 0; i < 1025; i++)
		many[i] = (uint64_t)i + 1;
	send_enqueue(f, "c1", "p", NULL, 0, many, 1025, TOKEN);
	free(many);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	e.arrived_us = 0;
	env.body_case = RINGBID__ENVELOPE__BODY_ENQUEUE;
	env.enqueue = &e;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	e.arrived_us = rb_now_us() + 24ull * 3600 * 1000000;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	send_dequeue(f, "", 1);
	expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	send_agent(f, 0, true, 50, 1, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	send_agent(f, 3, true, NAN, 1, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	send_agent(f, 3, true, 100.01, 1, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	send_agent(f, 3, true, -0.5, 1, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	u.agent_id = 3;
	u.score = 10;
	Ringbid__ProgramScore p1 = RINGBID__PROGRAM_SCORE__INIT, p2 = RINGBID__PROGRAM_SCORE__INIT;
	p1.program = "sales";
	p1.score = 1;
	p2.program = "sales";
	p2.score = 2;
	Ringbid__ProgramScore *pv[] = {&p1, &p2};
	u.program_scores = pv;
	u.n_program_scores = 2;
	env.body_case = RINGBID__ENVELOPE__BODY_AGENT;
	env.agent = &u;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	p2.program = "support";
	p2.score = INFINITY;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	u.n_program_scores = 0;
	u.available_since_us = rb_now_us() + 24ull * 3600 * 1000000;
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);

	// An ErrorReply from a peer is logged, never answered.
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = RB_EAUTH;
	er.message = "wrong service token";
	env.body_case = RINGBID__ENVELOPE__BODY_ERROR;
	env.error = &er;
	deliver(f, AUCTION_LINK_BROKER, &env, TOKEN);
	deliver(f, AUCTION_LINK_PRESENCE, &env, "wrong");
	assert_int_equal(f->nout, 0);

	market_get_stats(m, &after);
	assert_int_equal(after.agents, before.agents + 1); // agent 2, the one valid update
	assert_int_equal(after.calls_waiting, 0);
	assert_int_equal(after.calls_matched, 0);
	assert_int_equal(market_call_get(m, "c1", NULL), MARKET_CALL_UNKNOWN);
	assert_int_equal(market_agent_get(m, 3, NULL), MARKET_AGENT_UNKNOWN);
	assert_true(metric("ringbid_auction_messages_refused_total") == refused + 26);
	// Still working afterwards.
	send_enqueue(f, "c1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->body_case, RINGBID__ENVELOPE__BODY_MATCH);
}

static void test_exploration_on_the_wire(void **state)
{
	fixture *f = *state;
	links_up(f);
	// available_since_us is 1000 + id: 9 has waited longest, 10 has the better score.
	send_agent(f, 9, true, 40, 1, TOKEN);
	send_agent(f, 10, true, 95, 1, TOKEN);
	double explored = metric("ringbid_auction_exploratory_decisions_total");
	send_enqueue_share(f, "e1", "p", NULL, 0, NULL, 0, 1.0, TOKEN);
	assert_int_equal(f->nout, 1);
	const Ringbid__Decision *d = f->out[0].env->match->decision;
	assert_int_equal(f->out[0].env->match->agent_id, 9);
	assert_true(d->exploratory);
	assert_string_equal(d->reason, "exploration: longest available");
	assert_true(d->score == 40);
	assert_string_equal(d->score_basis, "overall");
	assert_int_equal(d->runner_up_id, 10);
	assert_string_equal(d->runner_up_basis, "overall");
	assert_true(metric("ringbid_auction_exploratory_decisions_total") == explored + 1);
	clear_out(f);
	// A program score is named as such; with no runner-up its basis is empty.
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	Ringbid__ProgramScore p = RINGBID__PROGRAM_SCORE__INIT;
	Ringbid__ProgramScore *pv[] = {&p};
	p.program = "sales";
	p.score = 77;
	u.agent_id = 11;
	u.available = true;
	u.score = 10;
	u.state_seq = 1;
	u.program_scores = pv;
	u.n_program_scores = 1;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_AGENT;
	env.agent = &u;
	send_enqueue(f, "e2", "p", NULL, 0, NULL, 0, TOKEN); // takes 10, the best score
	clear_out(f);
	deliver(f, AUCTION_LINK_PRESENCE, &env, TOKEN);
	assert_int_equal(f->nout, 0);
	send_enqueue(f, "e3", "sales", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	d = f->out[0].env->match->decision;
	assert_int_equal(d->agent_id, 11);
	assert_false(d->exploratory);
	assert_true(d->score == 77);
	assert_string_equal(d->score_basis, "program");
	assert_int_equal(d->runner_up_id, 0);
	assert_string_equal(d->runner_up_basis, "");
	assert_true(metric("ringbid_auction_exploratory_decisions_total") == explored + 1);
	clear_out(f);
	// A share that is no share refuses the Enqueue and changes nothing.
	market_stats before, after;
	market_get_stats(auction_market(f->a), &before);
	static const double bad[] = {-0.01, 1.0001, NAN, INFINITY, -INFINITY};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		send_enqueue_share(f, "e4", "p", NULL, 0, NULL, 0, bad[i], TOKEN);
		assert_int_equal(f->nout, 1);
		assert_non_null(strstr(f->out[0].env->error->message, "explore_share"));
		expect_error(f, AUCTION_LINK_BROKER, RB_EINVAL);
	}
	market_get_stats(auction_market(f->a), &after);
	assert_int_equal(after.calls_waiting, before.calls_waiting);
	assert_int_equal(after.calls_matched, before.calls_matched);
	assert_int_equal(market_call_get(auction_market(f->a), "e4", NULL), MARKET_CALL_UNKNOWN);
}

static void test_janitor_updates_gauges(void **state)
{
	fixture *f = *state;
	links_up(f);
	send_enqueue(f, "w1", "p", NULL, 0, NULL, 0, TOKEN);
	send_enqueue(f, "w2", "p", NULL, 0, NULL, 0, TOKEN);
	auction_janitor(f->a);
	assert_true(metric("ringbid_auction_calls_waiting") == 2);
	send_dequeue(f, "w1", 0);
	assert_true(metric("ringbid_auction_calls_waiting") == 1);
	assert_int_equal(f->nout, 0);
}

// --- several presence instances, one connection each ------------------------------------------

static void agent_from(fixture *f, uint32_t pipe, uint32_t pid, uint64_t id, bool avail,
                       double score, uint64_t seq)
{
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	u.agent_id = id;
	u.available = avail;
	u.score = score;
	u.state_seq = seq;
	u.available_since_us = 1000 + id;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_AGENT;
	env.agent = &u;
	env.presence_id = pid;
	env.token = TOKEN;
	size_t n = protobuf_c_message_get_packed_size(&env.base);
	uint8_t *buf = malloc(n ? n : 1);
	assert_non_null(buf);
	protobuf_c_message_pack(&env.base, buf);
	auction_receive_from(f->a, AUCTION_LINK_PRESENCE, pipe, buf, n);
	free(buf);
}

// A whole snapshot of one instance in one chunk.
static void snapshot_from(fixture *f, uint32_t pipe, uint32_t pid, uint64_t snap_id,
                          Ringbid__AgentUpdate **agents, size_t n)
{
	Ringbid__AgentSnapshot s = RINGBID__AGENT_SNAPSHOT__INIT;
	s.snapshot_id = snap_id;
	s.first = true;
	s.last = true;
	s.agents = agents;
	s.n_agents = n;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT;
	env.snapshot = &s;
	env.presence_id = pid;
	env.token = TOKEN;
	size_t len = protobuf_c_message_get_packed_size(&env.base);
	uint8_t *buf = malloc(len ? len : 1);
	assert_non_null(buf);
	protobuf_c_message_pack(&env.base, buf);
	auction_receive_from(f->a, AUCTION_LINK_PRESENCE, pipe, buf, len);
	free(buf);
}

static uint32_t instance_of(fixture *f, uint64_t agent)
{
	uint32_t pid = 999;
	if (!auction_agent_instance(f->a, agent, &pid))
		return 999;
	return pid;
}

static void two_instances_up(fixture *f)
{
	auction_link_event(f->a, AUCTION_LINK_BROKER, true);
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 11, true);
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 12, true);
	// Each connection is asked for its own snapshot, on that connection only.
	assert_int_equal(f->nout, 2);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(f->out[i].link, AUCTION_LINK_PRESENCE);
		assert_int_equal(f->out[i].env->body_case,
		                 RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST);
	}
	assert_int_equal(f->pipes[0], 11);
	assert_int_equal(f->pipes[1], 12);
	assert_int_equal(auction_presence_peers(f->a), 2);
	clear_out(f);
}

static void test_match_names_the_instance(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	// The best agent on instance 1, the second best on instance 0.
	agent_from(f, 11, 0, 20, true, 60, 1);
	agent_from(f, 12, 1, 21, true, 90, 1);
	assert_int_equal(instance_of(f, 20), 0);
	assert_int_equal(instance_of(f, 21), 1);
	send_enqueue(f, "m1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->agent_id, 21);
	assert_int_equal(f->out[0].env->match->presence_id, 1);
	clear_out(f);
	send_enqueue(f, "m2", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->agent_id, 20);
	assert_int_equal(f->out[0].env->match->presence_id, 0);
}

static void test_instance_roster_view_ignored(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	agent_from(f, 12, 1, 30, true, 70, 5);
	// Instance 0 has the same roster and reports agent 30 not available there: that is
	// not news about the agent, whose session is on instance 1.
	agent_from(f, 11, 0, 30, false, 70, 1);
	assert_int_equal(f->nout, 0);
	assert_int_equal(market_agent_get(m, 30, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(instance_of(f, 30), 1);
	// Instance 0's snapshot, which lists agent 30 as not available, changes nothing of it.
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	u.agent_id = 30;
	u.score = 70;
	u.state_seq = 1;
	Ringbid__AgentUpdate *v[] = {&u};
	snapshot_from(f, 11, 0, 1, v, 1);
	assert_int_equal(f->nout, 0);
	assert_int_equal(market_agent_get(m, 30, NULL), MARKET_AGENT_INDEXED);
	// Its own instance says it is not available any more: that counts.
	agent_from(f, 12, 1, 30, false, 70, 6);
	assert_int_equal(market_agent_get(m, 30, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(instance_of(f, 30), 1);
}

static void test_agent_moves_between_instances(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	double moves = metric("ringbid_auction_agent_moves_total");
	agent_from(f, 11, 0, 40, true, 50, 7);
	send_enqueue(f, "v1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->presence_id, 0);
	clear_out(f);
	const char *res = NULL;
	assert_int_equal(market_agent_get(m, 40, &res), MARKET_AGENT_RESERVED);
	// The agent logs in on instance 1 (its counters begin again; the seq even equals the
	// one of its reservation): the newest report wins, the reservation on instance 0 ends.
	agent_from(f, 12, 1, 40, true, 50, 7);
	assert_int_equal(instance_of(f, 40), 1);
	assert_true(metric("ringbid_auction_agent_moves_total") == moves + 1);
	assert_int_equal(market_agent_get(m, 40, NULL), MARKET_AGENT_INDEXED);
	// Instance 0 then notices the old session is gone: too late to count.
	agent_from(f, 11, 0, 40, false, 50, 8);
	assert_int_equal(market_agent_get(m, 40, NULL), MARKET_AGENT_INDEXED);
	// The broker re-enqueues v1 after the lost offer: it goes to the agent on instance 1.
	send_enqueue(f, "v1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->agent_id, 40);
	assert_int_equal(f->out[0].env->match->presence_id, 1);
	assert_false(f->out[0].env->match->decision == NULL);
}

static void test_snapshot_replaces_one_instance(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	agent_from(f, 11, 0, 50, true, 50, 1);
	agent_from(f, 11, 0, 51, true, 50, 1);
	agent_from(f, 12, 1, 52, true, 50, 1);
	// Instance 0's snapshot has 50 only: 51 leaves, 52 (instance 1's) stays.
	Ringbid__AgentUpdate u = RINGBID__AGENT_UPDATE__INIT;
	u.agent_id = 50;
	u.available = true;
	u.score = 50;
	u.state_seq = 1;
	Ringbid__AgentUpdate *v[] = {&u};
	snapshot_from(f, 11, 0, 9, v, 1);
	assert_int_equal(f->nout, 0);
	assert_int_equal(market_agent_get(m, 50, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(market_agent_get(m, 51, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(market_agent_get(m, 52, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(instance_of(f, 51), 999);
	assert_int_equal(instance_of(f, 52), 1);
}

static void test_instance_lost(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	agent_from(f, 11, 0, 60, true, 5, 1);
	agent_from(f, 12, 1, 61, true, 10, 1);
	agent_from(f, 12, 1, 62, true, 20, 1);
	send_enqueue(f, "l1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->out[0].env->match->agent_id, 62);
	clear_out(f);
	// Instance 1 goes: its agents leave, the reserved one too; instance 0's stay.
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 12, false);
	assert_int_equal(auction_presence_peers(f->a), 1);
	assert_true(auction_ready(f->a));
	assert_int_equal(market_agent_get(m, 61, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(market_agent_get(m, 62, NULL), MARKET_AGENT_AWAY);
	assert_int_equal(market_agent_get(m, 60, NULL), MARKET_AGENT_INDEXED);
	// The broker's offer to 62 was lost: the call goes to instance 0's agent.
	send_enqueue(f, "l1", "p", NULL, 0, NULL, 0, TOKEN);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->out[0].env->match->agent_id, 60);
	assert_int_equal(f->out[0].env->match->presence_id, 0);
	clear_out(f);
	// It comes back on a new connection with its sessions: its agents are matched again.
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 13, true);
	clear_out(f);
	agent_from(f, 13, 1, 61, true, 10, 1);
	assert_int_equal(instance_of(f, 61), 1);
	assert_int_equal(market_agent_get(m, 61, NULL), MARKET_AGENT_INDEXED);
	// The last presence connection goes: not ready.
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 11, false);
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 13, false);
	assert_false(auction_ready(f->a));
	assert_int_equal(market_agent_get(m, 61, NULL), MARKET_AGENT_AWAY);
}

static void test_instance_restart_overlap(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	agent_from(f, 12, 1, 70, true, 50, 1);
	// Instance 1 restarted; its new connection speaks before the old one's loss is told.
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 14, true);
	clear_out(f);
	agent_from(f, 14, 1, 70, true, 50, 2);
	auction_peer_event(f->a, AUCTION_LINK_PRESENCE, 12, false);
	assert_int_equal(market_agent_get(m, 70, NULL), MARKET_AGENT_INDEXED);
	assert_int_equal(instance_of(f, 70), 1);
}

static void test_presence_id_checked(void **state)
{
	fixture *f = *state;
	two_instances_up(f);
	market *m = auction_market(f->a);
	agent_from(f, 11, 64, 80, true, 50, 1);
	assert_int_equal(f->nout, 1);
	assert_int_equal(f->pipes[0], 11);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	assert_int_equal(market_agent_get(m, 80, NULL), MARKET_AGENT_UNKNOWN);
	agent_from(f, 11, 0, 80, true, 50, 1);
	assert_int_equal(f->nout, 0);
	// A connection speaks for one instance only.
	agent_from(f, 11, 3, 81, true, 50, 1);
	assert_int_equal(f->pipes[0], 11);
	expect_error(f, AUCTION_LINK_PRESENCE, RB_EINVAL);
	assert_int_equal(market_agent_get(m, 81, NULL), MARKET_AGENT_UNKNOWN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_match_sent_to_broker, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_match_kept_while_broker_down, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_snapshot_request_and_ready, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_snapshot_chunks, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_bad_input_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_exploration_on_the_wire, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_janitor_updates_gauges, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_match_names_the_instance, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_instance_roster_view_ignored, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_agent_moves_between_instances, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_snapshot_replaces_one_instance, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_instance_lost, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_instance_restart_overlap, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_presence_id_checked, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
