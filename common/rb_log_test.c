// Tests for the JSON-lines log format, level filtering and caller-number masking.
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "rb_log.h"

// Runs the logging in fn with stderr sent to a file, and returns what was written (free()).
static char *capture(void (*fn)(void))
{
	char path[] = "/tmp/rb_log_test.XXXXXX";
	int fd = mkstemp(path);
	int saved = dup(STDERR_FILENO);
	char *buf = calloc(1, 1 << 20);
	ssize_t n;

	assert_true(fd >= 0);
	assert_true(saved >= 0);
	assert_non_null(buf);
	unlink(path);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	fn();
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	n = read(fd, buf, (1 << 20) - 1);
	assert_true(n >= 0);
	close(fd);
	return buf;
}

// Parses line number idx (0-based) of text as JSON.
static json_t *line_json(const char *text, int idx)
{
	const char *p = text;
	const char *nl;
	json_error_t err;
	json_t *j;

	for (int i = 0; i < idx; i++) {
		p = strchr(p, '\n');
		assert_non_null(p);
		p++;
	}
	nl = strchr(p, '\n');
	assert_non_null(nl); // every line ends in a newline
	j = json_loadb(p, (size_t)(nl - p), 0, &err);
	if (j == NULL)
		fail_msg("not JSON: %.*s (%s)", (int)(nl - p), p, err.text);
	return j;
}

static int count_lines(const char *text)
{
	int n = 0;

	for (; *text != '\0'; text++)
		n += *text == '\n';
	return n;
}

static void log_basic(void)
{
	rb_log_set_level(RB_LOG_INFO);
	rb_info("hello %d", 42);
	rb_logf(RB_LOG_WARN, "call-7", 12, "offer expired");
	rb_debug("not shown");
	rb_error("quote \" backslash \\ newline \n tab \t bell \a end");
}

static void test_format(void **state)
{
	char *out;
	json_t *j;
	const char *ts;

	(void)state;
	rb_log_init("logtest");
	out = capture(log_basic);
	assert_int_equal(count_lines(out), 3);

	j = line_json(out, 0);
	assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
	assert_string_equal(json_string_value(json_object_get(j, "service")), "logtest");
	assert_string_equal(json_string_value(json_object_get(j, "msg")), "hello 42");
	assert_null(json_object_get(j, "call_id"));
	assert_null(json_object_get(j, "agent_id"));
	ts = json_string_value(json_object_get(j, "ts"));
	assert_non_null(ts);
	// 2026-11-23T10:00:00.123456Z
	assert_int_equal(strlen(ts), 27);
	assert_int_equal(ts[10], 'T');
	assert_int_equal(ts[19], '.');
	assert_int_equal(ts[26], 'Z');
	json_decref(j);

	j = line_json(out, 1);
	assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
	assert_string_equal(json_string_value(json_object_get(j, "call_id")), "call-7");
	assert_int_equal(json_integer_value(json_object_get(j, "agent_id")), 12);
	json_decref(j);

	j = line_json(out, 2);
	assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
	assert_string_equal(json_string_value(json_object_get(j, "msg")),
	                    "quote \" backslash \\ newline \n tab \t bell \a end");
	json_decref(j);
	free(out);
}

static void log_hostile(void)
{
	char big[5000];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	rb_info("bad utf8 \xff\xfe and \xc3\x28 and ok \xc3\xa9 and \xe2\x82\xac");
	rb_logf(RB_LOG_INFO, "id\"with\\quote\x01", 9223372036854775807ull, "ids");
	rb_info("%s", big);
}

static void test_hostile_input(void **state)
{
	char *out;
	json_t *j;
	const char *msg;

	(void)state;
	out = capture(log_hostile);
	assert_int_equal(count_lines(out), 3);

	j = line_json(out, 0);
	msg = json_string_value(json_object_get(j, "msg"));
	assert_non_null(strstr(msg, "ok \xc3\xa9 and \xe2\x82\xac"));
	assert_non_null(strstr(msg, "\xef\xbf\xbd")); // U+FFFD stands in for bad bytes
	json_decref(j);

	j = line_json(out, 1);
	assert_string_equal(json_string_value(json_object_get(j, "call_id")),
	                    "id\"with\\quote\x01");
	assert_true(json_integer_value(json_object_get(j, "agent_id")) == INT64_MAX);
	json_decref(j);

	// A long message is cut, marked, and still one valid line.
	j = line_json(out, 2);
	msg = json_string_value(json_object_get(j, "msg"));
	assert_true(strlen(msg) < 5000);
	assert_true(strlen(msg) > 1000);
	assert_string_equal(msg + strlen(msg) - 3, "...");
	json_decref(j);
	free(out);
}

static void log_levels(void)
{
	rb_log_set_level(RB_LOG_WARN);
	rb_debug("d");
	rb_info("i");
	rb_warn("w");
	rb_error("e");
	rb_log_set_level(RB_LOG_DEBUG);
	rb_debug("d2");
	rb_log_set_level(RB_LOG_INFO);
}

static void test_levels(void **state)
{
	char *out;

	(void)state;
	out = capture(log_levels);
	assert_int_equal(count_lines(out), 3);
	assert_non_null(strstr(out, "\"msg\":\"w\""));
	assert_non_null(strstr(out, "\"msg\":\"e\""));
	assert_non_null(strstr(out, "\"msg\":\"d2\""));
	assert_null(strstr(out, "\"msg\":\"i\""));
	free(out);
}

static void test_level_from_env(void **state)
{
	(void)state;
	setenv("RINGBID_LOG_LEVEL", "debug", 1);
	rb_log_init("logtest");
	assert_int_equal(rb_log_get_level(), RB_LOG_DEBUG);
	setenv("RINGBID_LOG_LEVEL", "ERROR", 1);
	rb_log_init("logtest");
	assert_int_equal(rb_log_get_level(), RB_LOG_ERROR);
	setenv("RINGBID_LOG_LEVEL", "warn", 1);
	rb_log_init("logtest");
	assert_int_equal(rb_log_get_level(), RB_LOG_WARN);
	unsetenv("RINGBID_LOG_LEVEL");
	rb_log_init("logtest");
	assert_int_equal(rb_log_get_level(), RB_LOG_INFO);
}

static void test_mask(void **state)
{
	static const struct {
		const char *in;
		const char *out;
	} cases[] = {
	        {"+15551234542", "+*********42"},
	        {"15551234542", "*********42"},
	        {"+1 (555) 123-4542", "+* (***) ***-**42"},
	        {"42", "42"},
	        {"7", "7"},
	        {"+7", "+7"},
	        {"", ""},
	        {"+", "+"},
	        {"anonymous", "*********"},
	        {"12+34", "***34"}, // only a leading '+' is kept
	        {"0044 20 7946 0958", "**** ** **** **58"},
	};
	char out[64];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_ptr_equal(rb_mask_caller(cases[i].in, out, sizeof(out)), out);
		assert_string_equal(out, cases[i].out);
	}
	assert_string_equal(rb_mask_caller(NULL, out, sizeof(out)), "");
	// Too small a buffer: cut, never overrun, and the cut keeps the masked part.
	assert_string_equal(rb_mask_caller("+15551234542", out, 5), "+***");
	assert_string_equal(rb_mask_caller("+15551234542", out, 1), "");
	assert_null(rb_mask_caller("+1555", NULL, 10));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_format), cmocka_unit_test(test_hostile_input),
	        cmocka_unit_test(test_levels), cmocka_unit_test(test_level_from_env),
	        cmocka_unit_test(test_mask),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
