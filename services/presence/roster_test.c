// Unit tests of the roster's text parsing: PostgreSQL text[] output, scores and notification
// payloads.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "rb_err.h"
#include "roster.h"

static void expect_array(const char *text, size_t n, const char *const *want)
{
	char **v = NULL;
	size_t got = 99;
	int rv = presence_parse_text_array(text, &v, &got);
	if (rv != 0)
		fail_msg("'%s' refused: %d", text, rv);
	assert_int_equal(got, n);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(v[i], want[i]);
	presence_strv_free(v, got);
}

static void expect_bad(const char *text)
{
	char **v = (char **)1;
	size_t n = 99;
	int rv = presence_parse_text_array(text, &v, &n);
	if (rv != RB_EINVAL)
		fail_msg("'%s' accepted (%d)", text != NULL ? text : "(null)", rv);
	assert_null(v);
	assert_int_equal(n, 0);
}

static void test_arrays(void **state)
{
	(void)state;
	expect_array("{}", 0, NULL);
	expect_array("  { }  ", 0, NULL);
	expect_array("{sales}", 1, (const char *const[]){"sales"});
	expect_array("{sales,es,billing.tier-2}", 3,
	             (const char *const[]){"sales", "es", "billing.tier-2"});
	// Quoted elements: spaces, commas, braces, escaped quotes and backslashes.
	expect_array("{\"c d\",e}", 2, (const char *const[]){"c d", "e"});
	expect_array("{\"a,b\",\"{x}\"}", 2, (const char *const[]){"a,b", "{x}"});
	expect_array("{\"say \\\"hi\\\"\",\"back\\\\slash\"}", 2,
	             (const char *const[]){"say \"hi\"", "back\\slash"});
	expect_array("{\"\"}", 1, (const char *const[]){""});
	// NULL elements are skipped; a quoted "NULL" is the word.
	expect_array("{NULL,a,null}", 1, (const char *const[]){"a"});
	expect_array("{\"NULL\"}", 1, (const char *const[]){"NULL"});
	// Spaces around unquoted elements are not part of them.
	expect_array("{ a , b }", 2, (const char *const[]){"a", "b"});
	// Non-default bounds.
	expect_array("[0:1]={x,y}", 2, (const char *const[]){"x", "y"});
}

static void test_bad_arrays(void **state)
{
	(void)state;
	expect_bad(NULL);
	expect_bad("");
	expect_bad("a,b");
	expect_bad("{a,b");
	expect_bad("{a,b}x");
	expect_bad("{{a},{b}}");
	expect_bad("{a,,b}");
	expect_bad("{,}");
	expect_bad("{\"abc}");
	expect_bad("{ab\"c}");
	expect_bad("{a\\");
	expect_bad("[0:1]{a}");
}

static void test_payloads(void **state)
{
	(void)state;
	uint64_t id = 0;
	assert_int_equal(presence_parse_agent_payload("agent:42", &id), 0);
	assert_int_equal(id, 42);
	assert_int_equal(presence_parse_agent_payload("agent:18446744073709551615", &id), 0);
	assert_true(id == UINT64_MAX);
	id = 7;
	assert_int_equal(presence_parse_agent_payload("agent:0", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("agent:", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("agent:12x", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("agent:-1", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("agent: 1", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("agent:18446744073709551616", &id),
	                 RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload("program:sales", &id), RB_EINVAL);
	assert_int_equal(presence_parse_agent_payload(NULL, &id), RB_EINVAL);
	assert_int_equal(id, 7);
}

static void test_scores(void **state)
{
	(void)state;
	double v = -1;
	assert_int_equal(presence_parse_score("87.50", &v), 0);
	assert_true(v == 87.5);
	assert_int_equal(presence_parse_score("0", &v), 0);
	assert_true(v == 0);
	assert_int_equal(presence_parse_score("100.00", &v), 0);
	assert_true(v == 100);
	v = 7;
	static const char *const bad[] = {"",      "100.01", "-0.5", "NaN", "Infinity",
	                                  "12abc", "1e400",  " ",    "50 "};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		if (presence_parse_score(bad[i], &v) != RB_EINVAL)
			fail_msg("score '%s' accepted", bad[i]);
	assert_int_equal(presence_parse_score(NULL, &v), RB_EINVAL);
	assert_true(v == 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_arrays),
	        cmocka_unit_test(test_bad_arrays),
	        cmocka_unit_test(test_payloads),
	        cmocka_unit_test(test_scores),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
