// Tests for the CLI's option parser: values, flags, positionals, help and every refusal.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_err.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static cli_opt opts_template[] = {
        {.name = "name", .has_arg = true},
        {.name = "skills", .has_arg = true},
        {.name = "json"},
};

static int parse(char **argv, int argc, cli_opt *opts, const char **pos, size_t *npos, char *err)
{
	memcpy(opts, opts_template, sizeof opts_template);
	return cli_args_parse(argc, argv, opts, N(opts_template), pos, 2, npos, err, 128);
}

static void test_values_flags_positionals(void **state)
{
	char *argv[] = {"sales", "--name", "Sales line", "--skills=a,b", "--json"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	assert_int_equal(parse(argv, 5, opts, pos, &npos, err), 0);
	assert_int_equal(npos, 1);
	assert_string_equal(pos[0], "sales");
	assert_string_equal(cli_opt_get(opts, N(opts), "name"), "Sales line");
	assert_string_equal(cli_opt_get(opts, N(opts), "skills"), "a,b");
	assert_string_equal(cli_opt_get(opts, N(opts), "json"), "");
	assert_true(cli_opt_has(opts, N(opts), "json"));
	assert_null(cli_opt_get(opts, N(opts), "missing"));
}

static void test_options_anywhere_and_empty_value(void **state)
{
	char *argv[] = {"--skills", "", "x", "--name=", "y"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	assert_int_equal(parse(argv, 5, opts, pos, &npos, err), 0);
	assert_int_equal(npos, 2);
	assert_string_equal(pos[0], "x");
	assert_string_equal(pos[1], "y");
	assert_string_equal(cli_opt_get(opts, N(opts), "skills"), "");
	assert_string_equal(cli_opt_get(opts, N(opts), "name"), "");
	assert_false(cli_opt_has(opts, N(opts), "json"));
}

static void test_value_may_start_with_dash(void **state)
{
	char *argv[] = {"--name", "--json"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	assert_int_equal(parse(argv, 2, opts, pos, &npos, err), 0);
	assert_string_equal(cli_opt_get(opts, N(opts), "name"), "--json");
	assert_false(cli_opt_has(opts, N(opts), "json"));
}

static void test_double_dash_and_negative_numbers(void **state)
{
	char *argv[] = {"-5", "--", "--json"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	assert_int_equal(parse(argv, 3, opts, pos, &npos, err), 0);
	assert_int_equal(npos, 2);
	assert_string_equal(pos[0], "-5");
	assert_string_equal(pos[1], "--json");
	assert_false(cli_opt_has(opts, N(opts), "json"));
}

static void test_help(void **state)
{
	char *argv1[] = {"x", "--help"};
	char *argv2[] = {"-h"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	assert_int_equal(parse(argv1, 2, opts, pos, &npos, err), CLI_ARGS_HELP);
	assert_int_equal(parse(argv2, 1, opts, pos, &npos, err), CLI_ARGS_HELP);
}

static void test_refusals(void **state)
{
	struct {
		char *argv[4];
		int argc;
		const char *msg;
	} cases[] = {
	        {{"--bogus"}, 1, "unknown option '--bogus'"},
	        {{"-x"}, 1, "unknown option '-x'"},
	        {{"--name"}, 1, "option --name needs a value"},
	        {{"--json=1"}, 1, "option --json takes no value"},
	        {{"--json", "--json"}, 2, "option --json given twice"},
	        {{"--name", "a", "--name=b"}, 3, "option --name given twice"},
	        {{"a", "b", "c"}, 3, "unexpected argument 'c'"},
	        {{"--nam", "x"}, 2, "unknown option '--nam'"},
	};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	for (size_t i = 0; i < N(cases); i++) {
		assert_int_equal(parse(cases[i].argv, cases[i].argc, opts, pos, &npos, err),
		                 RB_EINVAL);
		assert_string_equal(err, cases[i].msg);
	}
}

static void test_reparse_resets(void **state)
{
	char *argv1[] = {"--json"};
	char *argv2[] = {"x"};
	cli_opt opts[N(opts_template)];
	const char *pos[2];
	size_t npos;
	char err[128];

	(void)state;
	memcpy(opts, opts_template, sizeof opts);
	assert_int_equal(cli_args_parse(1, argv1, opts, N(opts), pos, 2, &npos, err, sizeof err),
	                 0);
	assert_true(cli_opt_has(opts, N(opts), "json"));
	assert_int_equal(cli_args_parse(1, argv2, opts, N(opts), pos, 2, &npos, err, sizeof err),
	                 0);
	assert_false(cli_opt_has(opts, N(opts), "json"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_values_flags_positionals),
	        cmocka_unit_test(test_options_anywhere_and_empty_value),
	        cmocka_unit_test(test_value_may_start_with_dash),
	        cmocka_unit_test(test_double_dash_and_negative_numbers),
	        cmocka_unit_test(test_help),
	        cmocka_unit_test(test_refusals),
	        cmocka_unit_test(test_reparse_resets),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
