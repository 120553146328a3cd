// Tests for the CLI's text checks: money, scores, numbers, seconds, skill lists, PostgreSQL
// array literals, agent import lines and secret sources.
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_err.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_money(void **state)
{
	const char *good[] = {"0", "0.25", "0.2500", "12345678", "12345678.1234", "1.5", "007"};
	const char *bad[] = {"",          ".25", "1.",   "-1",    "+1",     "1.23456",
	                     "123456789", "1e3", "0x10", "1,5",   " 1",     "1 ",
	                     "1..2",      "NaN", "inf",  "1.2.3", "0.25abc"};

	(void)state;
	for (size_t i = 0; i < N(good); i++)
		assert_true(cli_valid_money(good[i]));
	for (size_t i = 0; i < N(bad); i++)
		assert_false(cli_valid_money(bad[i]));
	assert_false(cli_valid_money(NULL));
}

static void test_score(void **state)
{
	const char *good[] = {"0", "50", "99.99", "100", "100.0", "100.00", "0.5", "87.25"};
	const char *bad[] = {"", "100.01", "101", "1000", "-1", "50.123", "abc", "50.", ".5"};

	(void)state;
	for (size_t i = 0; i < N(good); i++)
		assert_true(cli_valid_score(good[i]));
	for (size_t i = 0; i < N(bad); i++)
		assert_false(cli_valid_score(bad[i]));
}

static void test_int(void **state)
{
	long long v = 7;

	(void)state;
	assert_int_equal(cli_parse_int("15", 1, 300, &v), 0);
	assert_int_equal(v, 15);
	assert_int_equal(cli_parse_int("-1000", -1000, 1000, &v), 0);
	assert_int_equal(v, -1000);
	assert_int_equal(cli_parse_int("+3", 0, 10, &v), 0);
	assert_int_equal(v, 3);
	v = 7;
	assert_int_equal(cli_parse_int("301", 1, 300, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int("0", 1, 300, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int("", 0, 10, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int(" 5", 0, 10, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int("5s", 0, 10, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int("1.5", 0, 10, &v), RB_EINVAL);
	assert_int_equal(cli_parse_int("99999999999999999999", 0, LLONG_MAX, &v), RB_EINVAL);
	assert_int_equal(v, 7);
}

static void test_agent_id(void **state)
{
	uint64_t id = 0;

	(void)state;
	assert_int_equal(cli_parse_agent_id("1001", &id), 0);
	assert_int_equal(id, 1001);
	assert_int_equal(cli_parse_agent_id("9223372036854775807", &id), 0);
	assert_int_equal(cli_parse_agent_id("9223372036854775808", &id), RB_EINVAL);
	assert_int_equal(cli_parse_agent_id("0", &id), RB_EINVAL);
	assert_int_equal(cli_parse_agent_id("-5", &id), RB_EINVAL);
	assert_int_equal(cli_parse_agent_id("+5", &id), RB_EINVAL);
	assert_int_equal(cli_parse_agent_id("12a", &id), RB_EINVAL);
}

static void test_seconds(void **state)
{
	int64_t ms = -1;

	(void)state;
	assert_int_equal(cli_parse_seconds_ms("2", 86400000, &ms), 0);
	assert_int_equal(ms, 2000);
	assert_int_equal(cli_parse_seconds_ms("0.5", 86400000, &ms), 0);
	assert_int_equal(ms, 500);
	assert_int_equal(cli_parse_seconds_ms("12.250", 86400000, &ms), 0);
	assert_int_equal(ms, 12250);
	assert_int_equal(cli_parse_seconds_ms("0.001", 86400000, &ms), 0);
	assert_int_equal(ms, 1);
	assert_int_equal(cli_parse_seconds_ms("0", 86400000, &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(cli_parse_seconds_ms("86400", 86400000, &ms), 0);
	assert_int_equal(cli_parse_seconds_ms("86400.001", 86400000, &ms), RB_EINVAL);
	assert_int_equal(cli_parse_seconds_ms("0.0001", 86400000, &ms), RB_EINVAL);
	assert_int_equal(cli_parse_seconds_ms("-1", 86400000, &ms), RB_EINVAL);
	assert_int_equal(cli_parse_seconds_ms("5s", 86400000, &ms), RB_EINVAL);
	assert_int_equal(cli_parse_seconds_ms("", 86400000, &ms), RB_EINVAL);
}

static void test_list(void **state)
{
	char **list;
	size_t n;
	char err[128];

	(void)state;
	assert_int_equal(cli_list_parse("sales,support,sales", ',', &list, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(list[0], "sales");
	assert_string_equal(list[1], "support");
	cli_list_free(list, n);

	assert_int_equal(cli_list_parse("", ',', &list, &n, err, sizeof err), 0);
	assert_int_equal(n, 0);
	assert_null(list);

	assert_int_equal(cli_list_parse("a;b:c.d-e_f", ';', &list, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(list[1], "b:c.d-e_f");
	cli_list_free(list, n);

	assert_int_equal(cli_list_parse("a,,b", ',', &list, &n, err, sizeof err), RB_EINVAL);
	assert_int_equal(cli_list_parse("a,", ',', &list, &n, err, sizeof err), RB_EINVAL);
	assert_int_equal(cli_list_parse("a b", ',', &list, &n, err, sizeof err), RB_EINVAL);
	assert_non_null(strstr(err, "'a b'"));
	assert_int_equal(cli_list_parse("a\"b", ',', &list, &n, err, sizeof err), RB_EINVAL);
	assert_int_equal(cli_list_parse("a;b", ',', &list, &n, err, sizeof err), RB_EINVAL);

	char long_item[80];

	memset(long_item, 'x', 65);
	long_item[65] = '\0';
	assert_int_equal(cli_list_parse(long_item, ',', &list, &n, err, sizeof err), RB_EINVAL);
	long_item[64] = '\0';
	assert_int_equal(cli_list_parse(long_item, ',', &list, &n, err, sizeof err), 0);
	cli_list_free(list, n);

	char many[33 * 4] = "";

	for (int i = 0; i < 33; i++)
		snprintf(many + strlen(many), sizeof many - strlen(many), "%s%d", i ? "," : "", i);
	assert_int_equal(cli_list_parse(many, ',', &list, &n, err, sizeof err), RB_EINVAL);
	*strrchr(many, ',') = '\0';
	assert_int_equal(cli_list_parse(many, ',', &list, &n, err, sizeof err), 0);
	assert_int_equal(n, 32);
	cli_list_free(list, n);
	cli_list_free(NULL, 0);
}

static void test_pg_array(void **state)
{
	char *items[] = {"sales", "a\"b", "c\\d", ""};
	char *out;

	(void)state;
	assert_int_equal(cli_pg_array(items, 0, &out), 0);
	assert_string_equal(out, "{}");
	free(out);
	assert_int_equal(cli_pg_array(items, 1, &out), 0);
	assert_string_equal(out, "{\"sales\"}");
	free(out);
	assert_int_equal(cli_pg_array(items, 4, &out), 0);
	assert_string_equal(out, "{\"sales\",\"a\\\"b\",\"c\\\\d\",\"\"}");
	free(out);
}

static void test_csv_lines(void **state)
{
	cli_agent_row row = {0};
	char err[128];

	(void)state;
	assert_int_equal(cli_csv_agent_line("1001,Ada,sales;support,87.5", &row, err, sizeof err),
	                 0);
	assert_int_equal(row.id, 1001);
	assert_string_equal(row.name, "Ada");
	assert_int_equal(row.nskills, 2);
	assert_string_equal(row.skills[0], "sales");
	assert_string_equal(row.skills[1], "support");
	assert_string_equal(row.score, "87.5");
	cli_agent_row_fini(&row);

	assert_int_equal(cli_csv_agent_line("7,\"Lee, \"\"Jo\"\"\",,\r", &row, err, sizeof err), 0);
	assert_int_equal(row.id, 7);
	assert_string_equal(row.name, "Lee, \"Jo\"");
	assert_int_equal(row.nskills, 0);
	assert_string_equal(row.score, "");
	cli_agent_row_fini(&row);

	assert_int_equal(cli_csv_agent_line("8,Kim", &row, err, sizeof err), 0);
	assert_int_equal(row.nskills, 0);
	assert_string_equal(row.score, "");
	cli_agent_row_fini(&row);
}

static void test_csv_skips(void **state)
{
	cli_agent_row row = {0};
	char err[128];

	(void)state;
	assert_int_equal(cli_csv_agent_line("", &row, err, sizeof err), CLI_CSV_SKIP);
	assert_int_equal(cli_csv_agent_line("   ", &row, err, sizeof err), CLI_CSV_SKIP);
	assert_int_equal(cli_csv_agent_line("\r", &row, err, sizeof err), CLI_CSV_SKIP);
	assert_int_equal(cli_csv_agent_line("# agents", &row, err, sizeof err), CLI_CSV_SKIP);
	assert_int_equal(cli_csv_agent_line("id,name,skills,score", &row, err, sizeof err),
	                 CLI_CSV_SKIP);
}

static void test_csv_refusals(void **state)
{
	const char *bad[] = {
	        "abc,Ada",            // id
	        "0,Ada",              // id
	        "1001",               // no name
	        "1001,,sales",        // empty name
	        "1001,Ada,sa les,50", // skill
	        "1001,Ada,sales,101", // score
	        "1001,Ada,sales,5,x", // fields
	        "1001,\"Ada,sales,5", // quote
	        "1001,\"Ada\"x,,5",   // after quote
	        "1001,A\"da,,5",      // stray quote
	        "1001,Ada\x01,,5",    // control character
	};
	cli_agent_row row = {0};
	char err[128];

	(void)state;
	for (size_t i = 0; i < N(bad); i++) {
		err[0] = '\0';
		assert_int_equal(cli_csv_agent_line(bad[i], &row, err, sizeof err), RB_EINVAL);
		assert_true(strlen(err) > 0);
		assert_null(row.skills);
	}
}

static void test_secret_sources(void **state)
{
	char path[] = "/tmp/ringbid-secret-XXXXXX", out[CLI_SECRET_MAX + 8], err[256];
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "file-secret\n", 12), 12);
	close(fd);

	setenv("RINGBID_AGENT_SECRET", "env-secret", 1);
	// The file wins over the environment; one newline is dropped.
	assert_int_equal(cli_read_secret(path, true, out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "file-secret");
	assert_int_equal(cli_read_secret(NULL, true, out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "env-secret");
	// Where the environment is not accepted, it is not used.
	assert_int_equal(cli_read_secret(NULL, false, out, sizeof out, err, sizeof err),
	                 RB_ENOTFOUND);
	unsetenv("RINGBID_AGENT_SECRET");
	assert_int_equal(cli_read_secret(NULL, true, out, sizeof out, err, sizeof err),
	                 RB_ENOTFOUND);
	assert_non_null(strstr(err, "--secret-file"));

	assert_int_equal(
	        cli_read_secret("/nonexistent/secret", true, out, sizeof out, err, sizeof err),
	        RB_EIO);

	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "\n", 1), 1);
	close(fd);
	assert_int_equal(cli_read_secret(path, true, out, sizeof out, err, sizeof err), RB_EINVAL);

	char big[CLI_SECRET_MAX + 2];

	memset(big, 'k', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, big, strlen(big)), (ssize_t)strlen(big));
	close(fd);
	assert_int_equal(cli_read_secret(path, true, out, sizeof out, err, sizeof err), RB_EINVAL);
	big[CLI_SECRET_MAX] = '\0';
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, big, strlen(big)), (ssize_t)strlen(big));
	close(fd);
	assert_int_equal(cli_read_secret(path, true, out, sizeof out, err, sizeof err), 0);
	assert_int_equal(strlen(out), CLI_SECRET_MAX);

	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "two\nlines\n", 10), 10);
	close(fd);
	assert_int_equal(cli_read_secret(path, true, out, sizeof out, err, sizeof err), RB_EINVAL);
	unlink(path);
}

static void test_yes_no(void **state)
{
	const char *bad[] = {"", "y", "n", "Yes", "NO", "true", "1", "0", "yes ", " no", "yess"};
	bool v = false;

	(void)state;
	assert_int_equal(cli_parse_yes_no("yes", &v), 0);
	assert_true(v);
	assert_int_equal(cli_parse_yes_no("no", &v), 0);
	assert_false(v);
	v = true;
	for (size_t i = 0; i < N(bad); i++)
		assert_int_equal(cli_parse_yes_no(bad[i], &v), RB_EINVAL);
	assert_int_equal(cli_parse_yes_no(NULL, &v), RB_EINVAL);
	assert_true(v); // untouched by refusals
}

static void test_milli(void **state)
{
	static const struct {
		const char *in;
		int want;
	} good[] = {{"0", 0},        {"1", 1000},   {"0.2", 200}, {"0.25", 250}, {"0.125", 125},
	            {"1.000", 1000}, {"1.0", 1000}, {"0.001", 1}, {"0.0", 0},    {"0.999", 999}};
	const char *bad[] = {"",     "1.5",  "2",    "1.001", "-0.1", "0.1234", ".5",
	                     "0.",   "01",   "10",   "0,5",   "1e-1", "nan",    "0.2 ",
	                     " 0.2", "+0.2", "0.2x", "1..0",  "0.-1"};
	char text[16];
	int v = -1;

	(void)state;
	for (size_t i = 0; i < N(good); i++) {
		assert_int_equal(cli_parse_milli(good[i].in, &v), 0);
		assert_int_equal(v, good[i].want);
	}
	v = 7;
	for (size_t i = 0; i < N(bad); i++)
		assert_int_equal(cli_parse_milli(bad[i], &v), RB_EINVAL);
	assert_int_equal(v, 7);
	assert_int_equal(cli_parse_milli(NULL, &v), RB_EINVAL);
	cli_milli_text(200, text, sizeof text);
	assert_string_equal(text, "0.200");
	cli_milli_text(1000, text, sizeof text);
	assert_string_equal(text, "1.000");
	cli_milli_text(5, text, sizeof text);
	assert_string_equal(text, "0.005");
}

static void test_weights(void **state)
{
	int w[CLI_WEIGHTS] = {-1, -1, -1, -1, -1};
	char err[256];

	(void)state;
	assert_int_equal(cli_parse_weights("0.3,0.25,0.15,0.15,0.15", w, err, sizeof err), 0);
	assert_int_equal(w[0], 300);
	assert_int_equal(w[1], 250);
	assert_int_equal(w[2], 150);
	assert_int_equal(w[3], 150);
	assert_int_equal(w[4], 150);
	assert_int_equal(cli_parse_weights("1,0,0,0,0", w, err, sizeof err), 0);
	assert_int_equal(w[0], 1000);
	assert_int_equal(w[4], 0);
	// Thousandths add up exactly: 0.333 + 0.333 + 0.334 is 1, with no float on the way.
	assert_int_equal(cli_parse_weights("0.333,0.333,0.334,0,0", w, err, sizeof err), 0);
	assert_int_equal(w[2], 334);

	// The sum is named, with three decimals.
	assert_int_equal(cli_parse_weights("0.3,0.25,0.15,0.15,0.05", w, err, sizeof err),
	                 RB_EINVAL);
	assert_string_equal(err, "weights must add up to 1 (they add up to 0.900)");
	assert_int_equal(w[0], 333); // untouched by a refusal
	assert_int_equal(cli_parse_weights("1,1,0,0,0", w, err, sizeof err), RB_EINVAL);
	assert_string_equal(err, "weights must add up to 1 (they add up to 2.000)");
	assert_int_equal(cli_parse_weights("0,0,0,0,0", w, err, sizeof err), RB_EINVAL);
	assert_string_equal(err, "weights must add up to 1 (they add up to 0.000)");

	// Count and shape.
	assert_int_equal(cli_parse_weights("0.5,0.5", w, err, sizeof err), RB_EINVAL);
	assert_non_null(strstr(err, "got 2"));
	assert_int_equal(cli_parse_weights("0.2,0.2,0.2,0.2,0.1,0.1", w, err, sizeof err),
	                 RB_EINVAL);
	assert_non_null(strstr(err, "five weights"));
	assert_int_equal(cli_parse_weights("", w, err, sizeof err), RB_EINVAL);
	assert_int_equal(cli_parse_weights("0.3,0.25,,0.15,0.3", w, err, sizeof err), RB_EINVAL);
	assert_non_null(strstr(err, "conversion"));
	assert_int_equal(cli_parse_weights("0.3,0.25,0.15,1.5,0", w, err, sizeof err), RB_EINVAL);
	assert_non_null(strstr(err, "answer rate weight '1.5'"));
	assert_int_equal(cli_parse_weights("0.3,0.25,0.15,0.15,-0.15", w, err, sizeof err),
	                 RB_EINVAL);
	assert_non_null(strstr(err, "handle time"));
	assert_int_equal(cli_parse_weights("0.3,0.25,0.15,0.15,0.1500", w, err, sizeof err),
	                 RB_EINVAL);
	assert_int_equal(
	        cli_parse_weights("0.30000000000000000000001,0,0,0,0.7", w, err, sizeof err),
	        RB_EINVAL);
	assert_int_equal(cli_parse_weights(NULL, w, err, sizeof err), RB_EINVAL);
}

static void test_iso_time(void **state)
{
	static const struct {
		const char *in;
		uint64_t want;
	} good[] = {
	        {"1970-01-01", 0},
	        {"1970-01-01T00:00:01Z", 1000000},
	        {"2023-11-14T22:13:20Z", 1700000000000000ull},
	        {"2023-11-14T22:13:20.3Z", 1700000000300000ull},
	        {"2023-11-14T22:13:20.123456Z", 1700000000123456ull},
	        {"2023-11-14T22:13:20", 1700000000000000ull},
	        {"2023-11-14 22:13:20", 1700000000000000ull},
	        {"2023-11-14T22:13Z", 1700000000000000ull - 20000000},
	        {"2023-11-15T00:13:20+02:00", 1700000000000000ull},
	        {"2023-11-14T20:13:20-0200", 1700000000000000ull},
	        {"2023-11-14T23:13:20+01", 1700000000000000ull},
	        {"2024-02-29T00:00:00Z", 1709164800000000ull},
	        {"2000-02-29", 951782400000000ull},
	        {"2026-12-31T23:59:59Z", 1798761599000000ull},
	};
	const char *bad[] = {"",
	                     "2023",
	                     "2023-11",
	                     "2023-11-14T",
	                     "2023-11-14T22",
	                     "2023-13-01",
	                     "2023-00-10",
	                     "2023-11-31",
	                     "2023-02-29",
	                     "1900-02-29",
	                     "2023-11-14T24:00:00Z",
	                     "2023-11-14T22:60:00Z",
	                     "2023-11-14T22:13:60Z",
	                     "2023-11-14T22:13:20.Z",
	                     "2023-11-14T22:13:20.1234567Z",
	                     "2023-11-14T22:13:20ZZ",
	                     "2023-11-14T22:13:20+15:00",
	                     "2023-11-14T22:13:20 UTC",
	                     "1969-12-31T23:59:59Z",
	                     "23-11-14",
	                     "2023/11/14",
	                     "now",
	                     "1970-01-01T00:30:00+01:00"};
	uint64_t v = 42;

	(void)state;
	for (size_t i = 0; i < N(good); i++) {
		assert_int_equal(cli_parse_iso_us(good[i].in, &v), 0);
		assert_int_equal(v, good[i].want);
	}
	v = 42;
	for (size_t i = 0; i < N(bad); i++)
		assert_int_equal(cli_parse_iso_us(bad[i], &v), RB_EINVAL);
	assert_int_equal(cli_parse_iso_us(NULL, &v), RB_EINVAL);
	assert_int_equal(v, 42);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_money),
	        cmocka_unit_test(test_score),
	        cmocka_unit_test(test_int),
	        cmocka_unit_test(test_agent_id),
	        cmocka_unit_test(test_seconds),
	        cmocka_unit_test(test_list),
	        cmocka_unit_test(test_pg_array),
	        cmocka_unit_test(test_csv_lines),
	        cmocka_unit_test(test_csv_skips),
	        cmocka_unit_test(test_csv_refusals),
	        cmocka_unit_test(test_secret_sources),
	        cmocka_unit_test(test_yes_no),
	        cmocka_unit_test(test_milli),
	        cmocka_unit_test(test_weights),
	        cmocka_unit_test(test_iso_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
