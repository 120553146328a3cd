// Unit tests of the broker's presence bookkeeping: which connection speaks for which instance,
// where each agent is, where a message about an agent goes, and the agents-by-state sum.
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "presence_link.h"
#include "rb_err.h"
#include "rb_log.h"

static int setup_one(void **state)
{
	(void)state;
	broker_presence_reset(1);
	return 0;
}

static int setup_two(void **state)
{
	(void)state;
	broker_presence_reset(2);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	broker_presence_fini();
	return 0;
}

static void test_connections_identified(void **state)
{
	(void)state;
	uint32_t pid = 99;
	assert_false(broker_presence_instance_of(5, &pid));
	assert_int_equal(broker_presence_pipe_of(0), 0);
	// The first word of a connection asks for its CallSync; later ones do not.
	assert_int_equal(broker_presence_heard(5, 0), 1);
	assert_int_equal(broker_presence_heard(5, 0), 0);
	assert_int_equal(broker_presence_heard(6, 1), 1);
	assert_true(broker_presence_instance_of(6, &pid));
	assert_int_equal(pid, 1);
	assert_int_equal(broker_presence_pipe_of(0), 5);
	assert_int_equal(broker_presence_pipe_of(1), 6);
	// A connection never changes instance; ids stay within 0..63.
	assert_int_equal(broker_presence_heard(5, 1), RB_EINVAL);
	assert_int_equal(broker_presence_heard(7, 64), RB_EINVAL);
	assert_int_equal(broker_presence_pipe_of(1), 6);
	// Instance 1 restarts: its new connection is heard before the old one is gone.
	assert_int_equal(broker_presence_heard(9, 1), 1);
	assert_int_equal(broker_presence_pipe_of(1), 9);
	broker_presence_gone(6);
	assert_int_equal(broker_presence_pipe_of(1), 9);
	broker_presence_gone(9);
	assert_int_equal(broker_presence_pipe_of(1), 0);
	assert_int_equal(broker_presence_pipe_of(0), 5);
}

static void test_messages_follow_the_agent(void **state)
{
	(void)state;
	uint32_t pipes[64];
	assert_int_equal(broker_presence_heard(5, 0), 1);
	assert_int_equal(broker_presence_heard(6, 1), 1);
	// The auction's Match says where the agent is: only that instance hears of it.
	broker_presence_agent_at(100, 1, true);
	broker_presence_agent_at(200, 0, true);
	assert_int_equal(broker_presence_targets(100, pipes, 64), 1);
	assert_int_equal(pipes[0], 6);
	assert_int_equal(broker_presence_targets(200, pipes, 64), 1);
	assert_int_equal(pipes[0], 5);
	// A presence instance speaking of an agent the broker placed does not move it (a late
	// result from where the agent was before); a newer Match does.
	broker_presence_agent_at(100, 0, false);
	assert_int_equal(broker_presence_targets(100, pipes, 64), 1);
	assert_int_equal(pipes[0], 6);
	broker_presence_agent_at(100, 0, true);
	assert_int_equal(broker_presence_targets(100, pipes, 64), 1);
	assert_int_equal(pipes[0], 5);
	// An instance that is not connected gets nothing, and nobody gets it in its stead.
	broker_presence_agent_at(300, 1, true);
	broker_presence_gone(6);
	assert_int_equal(broker_presence_targets(300, pipes, 64), 0);
	// After a broker restart nothing is known of agent 400: with two instances a message
	// about it goes to every identified connection (cancel and end only: the router never
	// sends an offer so), until an instance speaks of it.
	assert_int_equal(broker_presence_heard(8, 1), 1);
	uint32_t pid;
	assert_false(broker_presence_agent_instance(400, &pid));
	assert_int_equal(broker_presence_targets(400, pipes, 64), 2);
	broker_presence_agent_at(400, 1, false);
	assert_true(broker_presence_agent_instance(400, &pid));
	assert_int_equal(pid, 1);
	assert_int_equal(broker_presence_targets(400, pipes, 64), 1);
	assert_int_equal(pipes[0], 8);
}

static void test_one_instance_knows_everyone(void **state)
{
	(void)state;
	uint32_t pipes[64];
	uint32_t pid = 9;
	// With one instance, an agent the broker never placed is on instance 0.
	assert_true(broker_presence_agent_instance(500, &pid));
	assert_int_equal(pid, 0);
	assert_int_equal(broker_presence_targets(500, pipes, 64), 0); // nobody connected
	assert_int_equal(broker_presence_heard(3, 0), 1);
	assert_int_equal(broker_presence_targets(500, pipes, 64), 1);
	assert_int_equal(pipes[0], 3);
}

static void test_stats_summed(void **state)
{
	(void)state;
	uint32_t sum[6];
	assert_false(broker_presence_stats_sum(sum, 6));
	assert_int_equal(broker_presence_heard(5, 0), 1);
	assert_int_equal(broker_presence_heard(6, 1), 1);
	const uint32_t a[6] = {10, 1, 2, 0, 3, 0};
	const uint32_t b[6] = {20, 0, 5, 1, 1, 2};
	broker_presence_stats(5, a, 6);
	broker_presence_stats(6, b, 6);
	assert_true(broker_presence_stats_sum(sum, 6));
	assert_int_equal(sum[0], 30);
	assert_int_equal(sum[2], 7);
	assert_int_equal(sum[5], 2);
	// The latest figures of each instance replace its earlier ones.
	const uint32_t a2[6] = {0, 0, 1, 0, 0, 0};
	broker_presence_stats(5, a2, 6);
	assert_true(broker_presence_stats_sum(sum, 6));
	assert_int_equal(sum[0], 20);
	assert_int_equal(sum[2], 6);
	// A connection that goes takes its figures with it.
	broker_presence_gone(6);
	assert_true(broker_presence_stats_sum(sum, 6));
	assert_int_equal(sum[0], 0);
	assert_int_equal(sum[2], 1);
	broker_presence_gone(5);
	assert_false(broker_presence_stats_sum(sum, 6));
	// Sums saturate rather than wrap.
	assert_int_equal(broker_presence_heard(7, 0), 1);
	assert_int_equal(broker_presence_heard(8, 1), 1);
	const uint32_t big[6] = {UINT32_MAX - 1, 0, 0, 0, 0, 0};
	broker_presence_stats(7, big, 6);
	broker_presence_stats(8, big, 6);
	assert_true(broker_presence_stats_sum(sum, 6));
	assert_int_equal(sum[0], UINT32_MAX);
}

// --- CallSync chunks and routing by call, on a broker without sockets -----------------------

static broker *new_broker(void)
{
	broker *b = calloc(1, sizeof(*b));
	assert_non_null(b);
	broker_book_init(&b->book, 100, 3600ull * 1000000u);
	broker_programs_init(&b->programs);
	return b;
}

static void free_broker(broker *b)
{
	broker_book_fini(&b->book);
	broker_programs_fini(&b->programs);
	free(b);
}

// A call at agent, offered at instance presence_id (connected when connect).
static broker_call *call_at(broker *b, const char *id, uint64_t agent, uint32_t presence_id,
                            bool connect)
{
	broker_call_new in = {.id = id, .program = "sales", .now_us = 1, .now_mono_us = 1};
	broker_call *c = NULL;
	assert_int_equal(broker_book_add(&b->book, &in, &c), 0);
	broker_effects fx;
	broker_event ev = {.kind = BROKER_EV_QUEUE, .now_us = 2, .now_mono_us = 2};
	assert_int_equal(broker_call_apply(&b->book, c, &ev, &fx), 0);
	if (agent == 0)
		return c;
	ev.kind = BROKER_EV_OFFER;
	ev.agent_id = agent;
	ev.offer_id = agent * 10;
	ev.presence_id = presence_id;
	assert_int_equal(broker_call_apply(&b->book, c, &ev, &fx), 0);
	if (connect) {
		ev.kind = BROKER_EV_CONNECT;
		assert_int_equal(broker_call_apply(&b->book, c, &ev, &fx), 0);
	}
	return c;
}

typedef struct chunks {
	size_t n;
	size_t calls[16];
	bool first[16], last[16];
	uint64_t sync_id[16];
	char ids[64][16];
	size_t nids;
	size_t stop_at; // emit fails on this chunk (1-based); 0 never
} chunks;

static int collect_chunk(const Ringbid__CallSync *cs, void *arg)
{
	chunks *k = arg;
	assert_true(k->n < 16);
	if (k->stop_at == k->n + 1)
		return RB_EIO;
	k->calls[k->n] = cs->n_calls;
	k->first[k->n] = cs->first;
	k->last[k->n] = cs->last;
	k->sync_id[k->n] = cs->sync_id;
	k->n++;
	for (size_t i = 0; i < cs->n_calls; i++) {
		const Ringbid__AgentCall *ac = cs->calls[i];
		assert_true(k->nids < 64);
		snprintf(k->ids[k->nids++], 16, "%s", ac->call_id);
		assert_int_equal(ac->offer_id, ac->state == RINGBID__CALL_STATE__CALL_OFFERED
		                                       ? ac->agent_id * 10
		                                       : 0);
	}
	return 0;
}

static bool has_id(const chunks *k, const char *id)
{
	for (size_t i = 0; i < k->nids; i++)
		if (strcmp(k->ids[i], id) == 0)
			return true;
	return false;
}

static void test_call_sync_chunks(void **state)
{
	(void)state;
	broker *b = new_broker();
	char id[16];
	// Nine calls at instance 1 (five ringing, four talking), three at instance 0, two waiting.
	for (uint64_t i = 1; i <= 9; i++) {
		snprintf(id, sizeof(id), "one-%llu", (unsigned long long)i);
		call_at(b, id, 100 + i, 1, i > 5);
	}
	for (uint64_t i = 1; i <= 3; i++) {
		snprintf(id, sizeof(id), "zero-%llu", (unsigned long long)i);
		call_at(b, id, 200 + i, 0, i == 1);
	}
	call_at(b, "wait-1", 0, 0, false);
	call_at(b, "wait-2", 0, 0, false);

	// Chunks of four: 4 + 4 + 1, marked first and last, one sync id, every call once.
	chunks k = {0};
	size_t count = 0;
	assert_int_equal(broker_presence_call_sync(b, 1, 77, 4, collect_chunk, &k, &count), 0);
	assert_int_equal(k.n, 3);
	assert_int_equal(count, 9);
	assert_int_equal(k.calls[0], 4);
	assert_int_equal(k.calls[1], 4);
	assert_int_equal(k.calls[2], 1);
	assert_true(k.first[0] && !k.first[1] && !k.first[2]);
	assert_true(!k.last[0] && !k.last[1] && k.last[2]);
	for (size_t i = 0; i < k.n; i++)
		assert_int_equal(k.sync_id[i], 77);
	assert_int_equal(k.nids, 9);
	for (uint64_t i = 1; i <= 9; i++) {
		snprintf(id, sizeof(id), "one-%llu", (unsigned long long)i);
		assert_true(has_id(&k, id));
	}

	// Exactly a chunk's worth: one chunk with both marks.
	memset(&k, 0, sizeof(k));
	assert_int_equal(broker_presence_call_sync(b, 0, 78, 3, collect_chunk, &k, &count), 0);
	assert_int_equal(k.n, 1);
	assert_true(k.first[0] && k.last[0]);
	assert_int_equal(count, 3);
	assert_true(has_id(&k, "zero-1") && has_id(&k, "zero-3") && !has_id(&k, "wait-1"));

	// An instance without calls still hears the (empty) picture.
	memset(&k, 0, sizeof(k));
	assert_int_equal(broker_presence_call_sync(b, 2, 79, 4, collect_chunk, &k, &count), 0);
	assert_int_equal(k.n, 1);
	assert_int_equal(k.calls[0], 0);
	assert_true(k.first[0] && k.last[0]);
	assert_int_equal(count, 0);

	// A chunk that cannot be sent stops the sync: no last mark ever leaves.
	memset(&k, 0, sizeof(k));
	k.stop_at = 2;
	assert_int_equal(broker_presence_call_sync(b, 1, 80, 4, collect_chunk, &k, &count), RB_EIO);
	assert_int_equal(k.n, 1);
	assert_false(k.last[0]);
	assert_int_equal(count, 4);
	free_broker(b);
}

static void test_sync_ids(void **state)
{
	(void)state;
	uint64_t a = broker_presence_sync_id();
	uint64_t c = broker_presence_sync_id();
	assert_true(a != 0);
	assert_true(c > a);
	// Forgetting the connections does not reuse an id.
	broker_presence_reset(2);
	assert_true(broker_presence_sync_id() > c);
}

static uint32_t routed(broker *b, Ringbid__Envelope *env)
{
	// The router reads only env; the bytes of msg do not matter here.
	nng_msg *msg = NULL;
	assert_int_equal(nng_msg_alloc(&msg, 0), 0);
	if (broker_presence_route(b, env, msg, false) != 0)
		return 0; // taken (dropped) by the router
	uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
	nng_msg_free(msg);
	return pipe;
}

// An OfferCancel or CallEnded goes where the call's offer was made, even when a later Match
// placed the agent elsewhere; a message about an agent the call was not offered to last
// follows the agent.
static void test_route_follows_the_call(void **state)
{
	(void)state;
	broker *b = new_broker();
	assert_int_equal(broker_presence_heard(5, 0), 1);
	assert_int_equal(broker_presence_heard(6, 1), 1);
	call_at(b, "talk", 100, 1, true);
	call_at(b, "ring", 101, 1, false);
	// The auction has since seen both agents on instance 0.
	broker_presence_agent_at(100, 0, true);
	broker_presence_agent_at(101, 0, true);

	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = "talk";
	ce.agent_id = 100;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_CALL_ENDED;
	env.call_ended = &ce;
	assert_int_equal(routed(b, &env), 6);
	Ringbid__OfferCancel oc = RINGBID__OFFER_CANCEL__INIT;
	oc.call_id = "ring";
	oc.agent_id = 101;
	oc.offer_id = 1010;
	env.body_case = RINGBID__ENVELOPE__BODY_OFFER_CANCEL;
	env.offer_cancel = &oc;
	assert_int_equal(routed(b, &env), 6);
	// Not the call's agent, or no such call: the agent's instance.
	oc.agent_id = 100;
	assert_int_equal(routed(b, &env), 5);
	oc.call_id = "nobody";
	oc.agent_id = 101;
	assert_int_equal(routed(b, &env), 5);
	// The call's instance is not connected: dropped, never sent elsewhere.
	broker_presence_gone(6);
	env.body_case = RINGBID__ENVELOPE__BODY_CALL_ENDED;
	env.call_ended = &ce;
	assert_int_equal(routed(b, &env), 0);
	free_broker(b);
}

static void test_restored_places_agents(void **state)
{
	(void)state;
	broker *b = new_broker();
	call_at(b, "a", 100, 3, true);
	call_at(b, "b", 101, 2, false);
	call_at(b, "c", 0, 0, false);
	uint32_t pid;
	assert_false(broker_presence_agent_instance(100, &pid));
	broker_presence_restored(&b->book);
	assert_true(broker_presence_agent_instance(100, &pid));
	assert_int_equal(pid, 3);
	assert_true(broker_presence_agent_instance(101, &pid));
	assert_int_equal(pid, 2);
	// A presence instance speaking of the agent later does not move it.
	broker_presence_agent_at(100, 1, false);
	assert_true(broker_presence_agent_instance(100, &pid));
	assert_int_equal(pid, 3);
	free_broker(b);
}

// Each instance has a socket of its own: a message goes out on the socket of the instance its
// connection spoke for, never on another's, and a message for a connection that is gone is
// not sent at all.
static void test_socket_per_instance(void **state)
{
	(void)state;
	broker b;
	memset(&b, 0, sizeof b);
	rb_bus *sock0 = (rb_bus *)&b.api, *sock1 = (rb_bus *)&b.auction; // distinct markers
	b.presence[0] = sock0;
	b.presence[1] = sock1;
	b.npresence = 2;
	assert_int_equal(broker_presence_heard(5, 0), 1);
	assert_int_equal(broker_presence_heard(6, 1), 1);
	nng_msg *msg = NULL;
	assert_int_equal(nng_msg_alloc(&msg, 0), 0);
	nng_pipe p = NNG_PIPE_INITIALIZER;
	p.id = 6;
	nng_msg_set_pipe(msg, p);
	assert_ptr_equal(broker_presence_bus(&b, msg), sock1);
	p.id = 5;
	nng_msg_set_pipe(msg, p);
	assert_ptr_equal(broker_presence_bus(&b, msg), sock0);
	broker_presence_gone(5);
	assert_null(broker_presence_bus(&b, msg));
	p.id = 77; // never identified
	nng_msg_set_pipe(msg, p);
	assert_null(broker_presence_bus(&b, msg));
	// One instance: its one socket, whatever the pipe.
	b.npresence = 1;
	assert_ptr_equal(broker_presence_bus(&b, msg), sock0);
	nng_msg_free(msg);
}

int main(void)
{
	rb_log_set_level(RB_LOG_ERROR);
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_connections_identified, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_messages_follow_the_agent, setup_two,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_one_instance_knows_everyone, setup_one,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_stats_summed, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_call_sync_chunks, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_sync_ids, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_route_follows_the_call, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_restored_places_agents, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_socket_per_instance, setup_two, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
