// Unit tests of the wallboard: figures per program and overall from a real book, folding,
// the names and top lists, and the page's self-containment.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "rb_err.h"
#include "wallboard.h"

#define SEC    1000000ull
#define MINUTE (60 * SEC)
// Half past a minute, so that "an hour ago" lands inside a known slot.
#define T0 ((1700000000000000ull / MINUTE) * MINUTE + 30 * SEC)
#define M0 5000000000ull

static broker_book book;
static broker_programs progs;
static broker_wallboard wb;
static uint64_t next_agent = 100;

static int setup(void **state)
{
	(void)state;
	broker_book_init(&book, 1000, 3600 * SEC);
	broker_programs_init(&progs);
	broker_wallboard_init(&wb);
	next_agent = 100;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	broker_wallboard_fini(&wb);
	broker_book_fini(&book);
	broker_program *p, *tmp;
	HASH_ITER(hh, progs.by_id, p, tmp)
	{
		HASH_DEL(progs.by_id, p);
		free(p);
	}
	return 0;
}

static void apply(broker_call *c, broker_event_kind kind, uint64_t agent, uint64_t offer,
                  uint64_t at)
{
	broker_event ev = {
	        .kind = kind,
	        .agent_id = agent,
	        .offer_id = offer,
	        .now_us = at,
	        .now_mono_us = M0 + (at - T0 + 100 * MINUTE),
	};
	broker_effects fx;
	assert_int_equal(broker_call_apply(&book, c, &ev, &fx), 0);
}

static broker_call *arrive(const char *id, const char *program, uint64_t at)
{
	broker_call_new in = {
	        .id = id,
	        .program = program,
	        .caller_masked = "+1*******42",
	        .now_us = at,
	        .now_mono_us = M0 + (at - T0 + 100 * MINUTE),
	};
	broker_call *c = NULL;
	assert_int_equal(broker_book_add(&book, &in, &c), 0);
	apply(c, BROKER_EV_QUEUE, 0, 0, at);
	return c;
}

// A call answered after wait seconds and, when talk is not 0, ended talk seconds later.
static broker_call *answered(const char *id, const char *program, uint64_t at, uint64_t wait,
                             uint64_t talk)
{
	broker_call *c = arrive(id, program, at);
	uint64_t agent = next_agent++;
	apply(c, BROKER_EV_OFFER, agent, agent * 10, at + wait / 2);
	apply(c, BROKER_EV_CONNECT, agent, agent * 10, at + wait);
	if (talk)
		apply(c, BROKER_EV_HANGUP, 0, 0, at + wait + talk);
	return c;
}

static json_t *document(uint64_t now_us, bool have_agents)
{
	broker_kpi_now now;
	memset(&now, 0, sizeof(now));
	now.now_us = now_us;
	now.have_agents = have_agents;
	now.agents[RINGBID__AGENT_STATE__AGENT_AVAILABLE] = 4;
	now.agents[RINGBID__AGENT_STATE__AGENT_ON_CALL] = 2;
	char *text = NULL;
	assert_int_equal(broker_wallboard_json(&wb, &book, &progs, &now, &text), 0);
	assert_non_null(text);
	json_error_t err;
	json_t *doc = json_loads(text, 0, &err);
	assert_non_null(doc);
	free(text);
	return doc;
}

static json_t *row_of(json_t *doc, const char *id)
{
	json_t *rows = json_object_get(doc, "programs");
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
	{
		if (strcmp(json_string_value(json_object_get(r, "id")), id) == 0)
			return r;
	}
	return NULL;
}

static json_int_t num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

static double ratio(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_real(v));
	return json_real_value(v);
}

// A program the broker knows; the board reads only its id.
static void put_program(const char *id)
{
	broker_program *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	snprintf(p->id, sizeof(p->id), "%s", id);
	HASH_ADD_STR(progs.by_id, id, p);
}

// Two programs, every kind of outcome, checked figure by figure.
static void test_figures(void **state)
{
	(void)state;
	put_program("sales");
	put_program("support");
	put_program("idle");
	uint64_t now = T0 + 10 * MINUTE;
	// sales: answered in 5 s and 30 s (ended), one answered in 10 s still connected, one
	// abandoned after 40 s, one waiting since 50 s ago and ringing.
	answered("s1", "sales", T0, 5 * SEC, 60 * SEC);
	answered("s2", "sales", T0 + MINUTE, 30 * SEC, 60 * SEC);
	answered("s3", "sales", now - 2 * MINUTE, 10 * SEC, 0);
	broker_call *c = arrive("s4", "sales", T0 + 2 * MINUTE);
	apply(c, BROKER_EV_HANGUP, 0, 0, T0 + 2 * MINUTE + 40 * SEC);
	c = arrive("s5", "sales", now - 50 * SEC);
	apply(c, BROKER_EV_OFFER, 555, 5550, now - 45 * SEC);
	// support: a short abandon, an overflow, one waiting 7 s.
	c = arrive("p1", "support", T0);
	apply(c, BROKER_EV_HANGUP, 0, 0, T0 + 3 * SEC);
	c = arrive("p2", "support", T0);
	apply(c, BROKER_EV_MAX_WAIT, 0, 0, T0 + 10 * MINUTE - 30 * SEC);
	arrive("p3", "support", now - 7 * SEC);

	json_t *doc = document(now, true);
	json_t *s = row_of(doc, "sales");
	assert_non_null(s);
	assert_int_equal(num(s, "calls_waiting"), 1);
	assert_int_equal(num(s, "calls_ringing"), 1);
	assert_int_equal(num(s, "calls_connected"), 1);
	assert_int_equal(num(s, "longest_wait_ms"), 50000);
	assert_int_equal(num(s, "answered"), 3);
	assert_int_equal(num(s, "answered_within_20s"), 2);
	assert_int_equal(num(s, "abandoned"), 1);
	assert_int_equal(num(s, "abandoned_within_20s"), 0);
	assert_int_equal(num(s, "overflow"), 0);
	assert_int_equal(num(s, "asa_ms"), 15000); // (5 + 30 + 10) / 3
	// SL 2 / (3 answered + 1 late abandon); abandon rate 1 / 4.
	assert_true(ratio(s, "service_level") == 0.5);
	assert_true(ratio(s, "abandon_rate") == 0.25);
	json_t *agents = json_object_get(s, "agents");
	assert_int_equal(num(agents, "RESERVED"), 1);
	assert_int_equal(num(agents, "ON_CALL"), 1);

	json_t *p = row_of(doc, "support");
	assert_non_null(p);
	assert_int_equal(num(p, "calls_waiting"), 1);
	assert_int_equal(num(p, "longest_wait_ms"), 7000);
	assert_int_equal(num(p, "answered"), 0);
	assert_int_equal(num(p, "abandoned"), 1);
	assert_int_equal(num(p, "abandoned_within_20s"), 1);
	assert_int_equal(num(p, "overflow"), 1);
	assert_true(json_is_null(json_object_get(p, "asa_ms")));
	assert_true(ratio(p, "service_level") == 0.0); // the overflow counts against it
	assert_true(ratio(p, "abandon_rate") == 0.5);

	// A known program with nothing going on is listed with empty figures.
	json_t *i = row_of(doc, "idle");
	assert_non_null(i);
	assert_int_equal(num(i, "answered"), 0);
	assert_true(json_is_null(json_object_get(i, "service_level")));
	assert_true(json_is_null(json_object_get(i, "abandon_rate")));
	assert_true(json_is_null(json_object_get(i, "name"))); // not loaded yet

	// Overall: the sum of the programs; longest wait across them; presence's agents.
	json_t *o = json_object_get(doc, "overall");
	assert_int_equal(num(o, "calls_waiting"), 2);
	assert_int_equal(num(o, "longest_wait_ms"), 50000);
	assert_int_equal(num(o, "answered"), 3);
	assert_int_equal(num(o, "abandoned"), 2);
	assert_int_equal(num(o, "overflow"), 1);
	// SL 2 / (3 + 1 late abandon + 1 overflow); abandon rate 2 / 6.
	assert_true(ratio(o, "service_level") == 0.4);
	assert_true(ratio(o, "abandon_rate") > 0.3333 && ratio(o, "abandon_rate") < 0.3334);
	json_t *oa = json_object_get(o, "agents");
	assert_int_equal(num(oa, "AVAILABLE"), 4);
	assert_int_equal(num(oa, "ON_CALL"), 2);
	assert_int_equal(num(oa, "OFFLINE"), 0);
	assert_int_equal(num(json_object_get(doc, "service_level_target"), "seconds"), 20);
	assert_true(ratio(json_object_get(doc, "service_level_target"), "goal") == 0.8);
	assert_int_equal(num(doc, "window_minutes"), 60);
	assert_true(json_is_true(json_object_get(doc, "presence")));
	assert_true(json_is_null(json_object_get(doc, "top_agents_as_of")));
	// Programs come sorted by id.
	json_t *rows = json_object_get(doc, "programs");
	assert_int_equal(json_array_size(rows), 3);
	assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "id")),
	                    "idle");
	json_decref(doc);

	// Presence has not reported: agents by state are unknown, not zero.
	doc = document(now, false);
	assert_true(json_is_null(json_object_get(json_object_get(doc, "overall"), "agents")));
	json_decref(doc);
}

// Outcomes older than the window drop out; a connected call counts once, at its answer.
static void test_window_and_connected_calls(void **state)
{
	(void)state;
	put_program("sales");
	broker_call *c = answered("old", "sales", T0, 2 * SEC, 0); // connected, not ended
	uint64_t now = T0 + 5 * MINUTE;
	json_t *doc = document(now, true);
	assert_int_equal(num(row_of(doc, "sales"), "answered"), 1);
	assert_int_equal(num(row_of(doc, "sales"), "calls_connected"), 1);
	json_decref(doc);

	apply(c, BROKER_EV_HANGUP, 0, 0, T0 + 6 * MINUTE);
	now = T0 + 7 * MINUTE;
	doc = document(now, true);
	assert_int_equal(num(row_of(doc, "sales"), "answered"), 1); // not twice
	assert_int_equal(num(row_of(doc, "sales"), "calls_connected"), 0);
	json_decref(doc);
	// Folding again finds nothing new.
	assert_int_equal(broker_wallboard_fold(&wb, &book, now), 0);
	doc = document(now, true);
	assert_int_equal(num(row_of(doc, "sales"), "answered"), 1);
	json_decref(doc);

	// An hour after the answer it has left the window (it ended, so it is in a slot).
	doc = document(T0 + 60 * MINUTE + 2 * SEC, true);
	assert_int_equal(num(row_of(doc, "sales"), "answered"), 0);
	assert_true(json_is_null(json_object_get(row_of(doc, "sales"), "asa_ms")));
	json_decref(doc);
}

// A program the broker no longer knows stays on the board while it has figures, then goes.
static void test_unknown_program_leaves(void **state)
{
	(void)state;
	broker_call *c = arrive("x1", "gone", T0);
	apply(c, BROKER_EV_HANGUP, 0, 0, T0 + 30 * SEC);
	json_t *doc = document(T0 + MINUTE, true);
	json_t *r = row_of(doc, "gone");
	assert_non_null(r);
	assert_true(json_is_false(json_object_get(r, "known")));
	assert_int_equal(num(r, "abandoned"), 1);
	json_decref(doc);
	doc = document(T0 + 61 * MINUTE, true);
	assert_null(row_of(doc, "gone"));
	assert_int_equal(json_array_size(json_object_get(doc, "programs")), 0);
	json_decref(doc);
}

// The first fold takes the book's whole history (a restarted broker's replay).
static void test_first_fold_takes_history(void **state)
{
	(void)state;
	put_program("sales");
	for (int i = 0; i < 5; i++) {
		char id[16];
		snprintf(id, sizeof(id), "h%d", i);
		answered(id, "sales", T0 + (uint64_t)i * MINUTE, 25 * SEC, 30 * SEC);
	}
	json_t *doc = document(T0 + 20 * MINUTE, true);
	json_t *r = row_of(doc, "sales");
	assert_int_equal(num(r, "answered"), 5);
	assert_int_equal(num(r, "answered_within_20s"), 0);
	assert_int_equal(num(r, "asa_ms"), 25000);
	assert_true(ratio(r, "service_level") == 0.0);
	json_decref(doc);
}

#define ROW(kind, prog, agent, name, score) kind, prog, agent, name, score

static void test_load_names_and_top_lists(void **state)
{
	(void)state;
	put_program("sales");
	static const char *const rows[] = {
	        ROW("p", "sales", NULL, "Sales line", NULL),
	        ROW("p", "care", NULL, "Customer care <b>", NULL),
	        ROW("a", "", "7", "Ann \"A\" Lee", "97.50"),
	        ROW("a", "", "3", "Bo", "80.00"),
	        ROW("a", "care", "3", "Bo", "80.00"),
	        ROW("a", "sales", "9", "Cy", "70.25"),
	        ROW("a", "sales", "10", "Di", "70.00"),
	        ROW("a", "sales", "11", "Ed", "69.00"),
	        ROW("a", "sales", "12", "Fa", "68.00"),
	        ROW("a", "sales", "13", "Gus", "67.00"),
	        ROW("a", "sales", "14", "Past the list", "66.00"),
	};
	assert_int_equal(broker_wallboard_load(&wb, rows, 11, T0), 0);
	json_t *doc = document(T0 + SEC, true);
	json_t *top = json_object_get(json_object_get(doc, "overall"), "top_agents");
	assert_int_equal(json_array_size(top), 2);
	assert_int_equal(num(json_array_get(top, 0), "id"), 7);
	assert_string_equal(json_string_value(json_object_get(json_array_get(top, 0), "name")),
	                    "Ann \"A\" Lee");
	assert_true(ratio(json_array_get(top, 0), "score") == 97.5);
	json_t *s = row_of(doc, "sales");
	assert_string_equal(json_string_value(json_object_get(s, "name")), "Sales line");
	json_t *st = json_object_get(s, "top_agents");
	assert_int_equal(json_array_size(st), BROKER_WB_TOP_PROGRAM_MAX);
	assert_int_equal(num(json_array_get(st, 4), "id"), 13);
	// A program only the roster knows is listed under its name.
	json_t *c = row_of(doc, "care");
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(c, "name")), "Customer care <b>");
	assert_true(json_is_false(json_object_get(c, "known")));
	assert_non_null(json_object_get(doc, "top_agents_as_of"));
	assert_true(json_is_string(json_object_get(doc, "top_agents_as_of")));
	json_decref(doc);

	// Malformed rows change nothing.
	static const char *const bad[][5] = {
	        {ROW("a", "", "0", "Zero", "50")},          // agent id 0
	        {ROW("a", "", "12x", "Junk", "50")},        // not a number
	        {ROW("a", "", "5", "Hi", "100.5")},         // score over 100
	        {ROW("a", "", "5", "Hi", NULL)},            // no score
	        {ROW("a", "bad id!", "5", "Hi", "50")},     // program id
	        {ROW("p", "", NULL, "No id", NULL)},        // program without an id
	        {ROW("x", "sales", NULL, "Kind", NULL)},    // unknown kind
	        {ROW("p", "sales", NULL, "", NULL)},        // empty name
	        {ROW(NULL, "sales", NULL, "No kind", NULL)} // no kind
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *cells[10];
		memcpy(cells, rows, 5 * sizeof(cells[0])); // a good row first
		memcpy(cells + 5, bad[i], 5 * sizeof(cells[0]));
		assert_int_equal(broker_wallboard_load(&wb, cells, 2, T0 + MINUTE), RB_EINVAL);
	}
	doc = document(T0 + 2 * MINUTE, true);
	assert_int_equal(
	        json_array_size(json_object_get(json_object_get(doc, "overall"), "top_agents")), 2);
	assert_non_null(row_of(doc, "care"));
	json_decref(doc);

	// The next load replaces everything: care has left the roster, sales has one agent.
	static const char *const next[] = {
	        ROW("p", "sales", NULL, "Sales", NULL),
	        ROW("a", "sales", "9", "Cy", "71"),
	};
	assert_int_equal(broker_wallboard_load(&wb, next, 2, T0 + 3 * MINUTE), 0);
	doc = document(T0 + 3 * MINUTE, true);
	assert_null(row_of(doc, "care"));
	s = row_of(doc, "sales");
	assert_string_equal(json_string_value(json_object_get(s, "name")), "Sales");
	assert_int_equal(json_array_size(json_object_get(s, "top_agents")), 1);
	assert_int_equal(
	        json_array_size(json_object_get(json_object_get(doc, "overall"), "top_agents")), 0);
	json_decref(doc);
}

static void test_page_is_self_contained(void **state)
{
	(void)state;
	const char *page = broker_wallboard_page();
	assert_non_null(strstr(page, "<!doctype html>"));
	assert_non_null(strstr(page, "wallboard.json"));
	assert_null(strstr(page, "http://"));
	assert_null(strstr(page, "https://"));
	assert_null(strstr(page, "src="));
	assert_null(strstr(page, "innerHTML"));
	assert_non_null(strstr(page, "stale"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_figures, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_window_and_connected_calls, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_unknown_program_leaves, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_first_fold_takes_history, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_load_names_and_top_lists, setup, teardown),
	        cmocka_unit_test(test_page_is_self_contained),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
