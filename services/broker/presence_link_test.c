// Unit tests of the broker's presence bookkeeping: which connection speaks for which instance,
// where each agent is, where a message about an agent goes, and the agents-by-state sum.
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "presence_link.h"
#include "rb_err.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_connections_identified, setup_two, teardown),
	        cmocka_unit_test_setup_teardown(test_messages_follow_the_agent, setup_two,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_one_instance_knows_everyone, setup_one,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_stats_summed, setup_two, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
