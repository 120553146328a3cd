// Tests for configuration parsing: integers, durations, booleans, *_FILE secrets, the env file
// and the local addresses derived from the port base.
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

#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"

#define VAR "RB_TEST_VALUE"

static char tmpdir[PATH_MAX];

static int setup(void **state)
{
	(void)state;
	unsetenv(VAR);
	unsetenv(VAR "_FILE");
	unsetenv("RINGBID_PORT_BASE");
	unsetenv("RINGBID_BROKER_URL");
	unsetenv("RINGBID_BROKER_HTTP");
	unsetenv("RINGBID_HOME");
	unsetenv("RINGBID_SERVICE_TOKEN");
	unsetenv("RINGBID_SERVICE_TOKEN_FILE");
	unsetenv("RINGBID_DATABASE_URL");
	return 0;
}

static int group_setup(void **state)
{
	(void)state;
	rb_log_init("config-test");
	// The refusals below are logged on purpose; keep the test output readable.
	rb_log_set_level(RB_LOG_ERROR);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/rb_config_test.XXXXXX");
	return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *content, size_t len)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(content, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void test_int_good(void **state)
{
	long long v = 0;

	(void)state;
	assert_int_equal(rb_config_int(VAR, 42, 0, 100, &v), 0);
	assert_int_equal(v, 42);
	setenv(VAR, "17", 1);
	assert_int_equal(rb_config_int(VAR, 42, 0, 100, &v), 0);
	assert_int_equal(v, 17);
	setenv(VAR, "-5", 1);
	assert_int_equal(rb_config_int(VAR, 42, -10, 100, &v), 0);
	assert_int_equal(v, -5);
	setenv(VAR, "+8", 1);
	assert_int_equal(rb_config_int(VAR, 42, 0, 100, &v), 0);
	assert_int_equal(v, 8);
	setenv(VAR, "9223372036854775807", 1);
	assert_int_equal(rb_config_int(VAR, 0, 0, LLONG_MAX, &v), 0);
	assert_true(v == LLONG_MAX);
	setenv(VAR, "100", 1);
	assert_int_equal(rb_config_int(VAR, 0, 0, 100, &v), 0);
	assert_int_equal(v, 100);
}

static void test_int_bad(void **state)
{
	static const char *const bad[] = {
	        "abc",
	        "12abc",
	        " 12",
	        "12 ",
	        "",
	        "1.5",
	        "0x10",
	        "99999999999999999999",
	        "-99999999999999999999",
	        "+",
	        "-",
	        "1e3",
	};
	long long v = 7;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv(VAR, bad[i], 1);
		assert_int_equal(rb_config_int(VAR, 1, LLONG_MIN, LLONG_MAX, &v), RB_ECONFIG);
		assert_int_equal(v, 7); // untouched
	}
	setenv(VAR, "101", 1);
	assert_int_equal(rb_config_int(VAR, 1, 0, 100, &v), RB_ECONFIG);
	setenv(VAR, "-1", 1);
	assert_int_equal(rb_config_int(VAR, 1, 0, 100, &v), RB_ECONFIG);
	assert_int_equal(v, 7);
}

static void test_parse_ms(void **state)
{
	static const struct {
		const char *text;
		long long ms;
	} good[] = {
	        {"0", 0},       {"1500", 1500}, {"1500ms", 1500},
	        {"15s", 15000}, {"2m", 120000}, {"1h", 3600000},
	        {"0s", 0},      {"500ms", 500}, {"43200000", 43200000},
	};
	static const char *const bad[] = {
	        "abc", "-1",   "99999999999999999999",
	        "",    "15 s", " 15s",
	        "15S", "1.5s", "15sec",
	        "s",   "ms",   "1d",
	        "+5",  "15s ", "9223372036854775807h",
	};
	long long v;

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = -1;
		assert_int_equal(rb_parse_ms(good[i].text, &v), 0);
		assert_true(v == good[i].ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = -7;
		assert_int_equal(rb_parse_ms(bad[i], &v), RB_ECONFIG);
		assert_true(v == -7);
	}
	assert_int_equal(rb_parse_ms(NULL, &v), RB_ECONFIG);
}

static void test_config_ms(void **state)
{
	long long v = 0;

	(void)state;
	assert_int_equal(rb_config_ms(VAR, 15000, 1, 60000, &v), 0);
	assert_int_equal(v, 15000);
	setenv(VAR, "15s", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 60000, &v), 0);
	assert_int_equal(v, 15000);
	setenv(VAR, "500ms", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 60000, &v), 0);
	assert_int_equal(v, 500);
	setenv(VAR, "2m", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 600000, &v), 0);
	assert_int_equal(v, 120000);
	setenv(VAR, "1h", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 86400000, &v), 0);
	assert_int_equal(v, 3600000);

	v = 3;
	setenv(VAR, "1h", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 60000, &v), RB_ECONFIG); // over the maximum
	setenv(VAR, "abc", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 60000, &v), RB_ECONFIG);
	setenv(VAR, "-1", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 0, 60000, &v), RB_ECONFIG);
	setenv(VAR, "99999999999999999999", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 0, LLONG_MAX, &v), RB_ECONFIG);
	setenv(VAR, "0", 1);
	assert_int_equal(rb_config_ms(VAR, 1, 1, 60000, &v), RB_ECONFIG); // under the minimum
	assert_int_equal(v, 3);
}

static void test_bool(void **state)
{
	static const char *const yes[] = {"1", "true", "TRUE", "yes", "Yes", "on"};
	static const char *const no[] = {"0", "false", "False", "no", "NO", "off"};
	static const char *const bad[] = {"", "2", "y", "enable", "truee", " true"};
	bool b;

	(void)state;
	assert_int_equal(rb_config_bool(VAR, true, &b), 0);
	assert_true(b);
	assert_int_equal(rb_config_bool(VAR, false, &b), 0);
	assert_false(b);
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		setenv(VAR, yes[i], 1);
		b = false;
		assert_int_equal(rb_config_bool(VAR, false, &b), 0);
		assert_true(b);
		setenv(VAR, no[i], 1);
		b = true;
		assert_int_equal(rb_config_bool(VAR, true, &b), 0);
		assert_false(b);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv(VAR, bad[i], 1);
		assert_int_equal(rb_config_bool(VAR, false, &b), RB_ECONFIG);
	}
}

static void test_str(void **state)
{
	char out[8];

	(void)state;
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), RB_ENOTFOUND);
	assert_int_equal(rb_config_str(VAR, "dflt", out, sizeof(out)), 0);
	assert_string_equal(out, "dflt");
	assert_int_equal(rb_config_str(VAR, "12345678", out, sizeof(out)), RB_ETOOBIG);
	setenv(VAR, "value", 1);
	assert_int_equal(rb_config_str(VAR, "dflt", out, sizeof(out)), 0);
	assert_string_equal(out, "value");
	setenv(VAR, "1234567", 1);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "1234567");
	setenv(VAR, "12345678", 1);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), RB_ETOOBIG);
	setenv(VAR, "", 1);
	assert_int_equal(rb_config_str(VAR, "dflt", out, sizeof(out)), 0);
	assert_string_equal(out, "");
}

static void test_str_file(void **state)
{
	char path[PATH_MAX + 32];
	char out[16];

	(void)state;
	snprintf(path, sizeof(path), "%s/secret", tmpdir);
	setenv(VAR "_FILE", path, 1);

	write_file(path, "s3cret\n", 7);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "s3cret");

	// Only one trailing newline goes.
	write_file(path, "s3cret\n\n", 8);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "s3cret\n");

	write_file(path, "s3cret\r\n", 8);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "s3cret");

	write_file(path, "no-newline", 10);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "no-newline");

	// 15 bytes and a newline fit a 16-byte buffer; 16 bytes do not.
	write_file(path, "123456789012345\n", 16);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "123456789012345");
	write_file(path, "1234567890123456", 16);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), RB_ETOOBIG);
	write_file(path, "1234567890123456789012345678901234567890", 40);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), RB_ETOOBIG);

	write_file(path, "a\0b", 3);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), RB_ECONFIG);

	// The variable itself wins over its file.
	setenv(VAR, "direct", 1);
	assert_int_equal(rb_config_str(VAR, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "direct");
	unsetenv(VAR);

	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	setenv(VAR "_FILE", path, 1);
	assert_int_equal(rb_config_str(VAR, "dflt", out, sizeof(out)), RB_EIO);

	// A number can come from a file too.
	snprintf(path, sizeof(path), "%s/number", tmpdir);
	write_file(path, "250\n", 4);
	setenv(VAR "_FILE", path, 1);
	long long v = 0;
	assert_int_equal(rb_config_int(VAR, 1, 0, 1000, &v), 0);
	assert_int_equal(v, 250);
}

static void test_urls(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(
	        rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, out, sizeof(out)), 0);
	assert_string_equal(out, "tcp://127.0.0.1:7101");
	assert_int_equal(
	        rb_config_http("RINGBID_BROKER_HTTP", RB_PORT_BROKER_HTTP, out, sizeof(out)), 0);
	assert_string_equal(out, "127.0.0.1:7181");

	setenv("RINGBID_PORT_BASE", "20000", 1);
	assert_int_equal(
	        rb_config_url("RINGBID_BROKER_URL", RB_PORT_PRESENCE_AGENTS, out, sizeof(out)), 0);
	assert_string_equal(out, "tcp://127.0.0.1:20005");
	assert_int_equal(
	        rb_config_http("RINGBID_BROKER_HTTP", RB_PORT_BILLING_HTTP, out, sizeof(out)), 0);
	assert_string_equal(out, "127.0.0.1:20084");

	setenv("RINGBID_BROKER_URL", "tls+tcp://broker.example:9000", 1);
	assert_int_equal(
	        rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, out, sizeof(out)), 0);
	assert_string_equal(out, "tls+tcp://broker.example:9000");
	assert_int_equal(rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, out, 8),
	                 RB_ETOOBIG);
	unsetenv("RINGBID_BROKER_URL");

	setenv("RINGBID_PORT_BASE", "1023", 1);
	assert_int_equal(
	        rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, out, sizeof(out)),
	        RB_ECONFIG);
	setenv("RINGBID_PORT_BASE", "65001", 1);
	assert_int_equal(
	        rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, out, sizeof(out)),
	        RB_ECONFIG);
	setenv("RINGBID_PORT_BASE", "7100x", 1);
	assert_int_equal(rb_config_http(NULL, RB_PORT_BROKER_HTTP, out, sizeof(out)), RB_ECONFIG);
	setenv("RINGBID_PORT_BASE", "65000", 1);
	assert_int_equal(rb_config_http(NULL, RB_PORT_BILLING_HTTP, out, sizeof(out)), 0);
	assert_string_equal(out, "127.0.0.1:65084");
	assert_int_equal(rb_config_url(NULL, RB_PORT_BROKER_CALLS, out, 10), RB_ETOOBIG);
}

static void test_service_token(void **state)
{
	char path[PATH_MAX + 32];
	char out[128];

	(void)state;
	assert_int_equal(rb_config_service_token(out, sizeof(out)), 0);
	assert_string_equal(out, "ringbid-local-service-token");
	setenv("RINGBID_SERVICE_TOKEN", "tok-123", 1);
	assert_int_equal(rb_config_service_token(out, sizeof(out)), 0);
	assert_string_equal(out, "tok-123");
	setenv("RINGBID_SERVICE_TOKEN", "", 1);
	assert_int_equal(rb_config_service_token(out, sizeof(out)), RB_ECONFIG);
	unsetenv("RINGBID_SERVICE_TOKEN");

	snprintf(path, sizeof(path), "%s/token", tmpdir);
	write_file(path, "from-file\n", 10);
	setenv("RINGBID_SERVICE_TOKEN_FILE", path, 1);
	assert_int_equal(rb_config_service_token(out, sizeof(out)), 0);
	assert_string_equal(out, "from-file");
}

static void test_conninfo_and_home(void **state)
{
	char out[256];

	(void)state;
	assert_int_equal(rb_config_conninfo(out, sizeof(out)), 0);
	assert_string_equal(out, "");
	setenv("RINGBID_DATABASE_URL", "postgresql://ringbid@localhost/ringbid", 1);
	assert_int_equal(rb_config_conninfo(out, sizeof(out)), 0);
	assert_string_equal(out, "postgresql://ringbid@localhost/ringbid");

	assert_int_equal(rb_config_home(out, sizeof(out)), 0);
	assert_string_equal(out, "./var");
	setenv("RINGBID_HOME", "/srv/ringbid", 1);
	assert_int_equal(rb_config_home(out, sizeof(out)), 0);
	assert_string_equal(out, "/srv/ringbid");
}

static void test_load_home(void **state)
{
	char path[PATH_MAX + 32];
	static const char env[] = "# written by ringbid up\n"
	                          "\n"
	                          "RB_TEST_LOADED=yes\n"
	                          "RB_TEST_KEEP=from-file\n"
	                          "   \n"
	                          "RB_TEST_URL=postgresql://u:p@h/db?sslmode=disable\n"
	                          "RB_TEST_EMPTY=\n"
	                          "RB_TEST_CRLF=v\r\n"
	                          "RB_TEST_LAST=no-newline";

	(void)state;
	unsetenv("RB_TEST_LOADED");
	unsetenv("RB_TEST_URL");
	unsetenv("RB_TEST_EMPTY");
	unsetenv("RB_TEST_CRLF");
	unsetenv("RB_TEST_LAST");
	setenv("RB_TEST_KEEP", "from-env", 1);

	// No file at all is fine.
	setenv("RINGBID_HOME", tmpdir, 1);
	snprintf(path, sizeof(path), "%s/env", tmpdir);
	unlink(path);
	assert_int_equal(rb_config_load_home(), 0);

	write_file(path, env, sizeof(env) - 1);
	assert_int_equal(rb_config_load_home(), 0);
	assert_string_equal(getenv("RB_TEST_LOADED"), "yes");
	assert_string_equal(getenv("RB_TEST_KEEP"), "from-env"); // never overridden
	assert_string_equal(getenv("RB_TEST_URL"), "postgresql://u:p@h/db?sslmode=disable");
	assert_string_equal(getenv("RB_TEST_EMPTY"), "");
	assert_string_equal(getenv("RB_TEST_CRLF"), "v");
	assert_string_equal(getenv("RB_TEST_LAST"), "no-newline");
	unsetenv("RB_TEST_KEEP");
}

static void test_load_home_bad(void **state)
{
	static const char *const bad[] = {
	        "RB_TEST_A=1\nlower=2\n",    "RB_TEST_A=1\nNO_EQUALS\n",  "RB_TEST_A=1\n=value\n",
	        "RB_TEST_A=1\nKEY WITH=x\n", "RB_TEST_A=1\nexport K=v\n",
	};
	char path[PATH_MAX + 32];

	(void)state;
	setenv("RINGBID_HOME", tmpdir, 1);
	snprintf(path, sizeof(path), "%s/env", tmpdir);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsetenv("RB_TEST_A");
		write_file(path, bad[i], strlen(bad[i]));
		assert_int_equal(rb_config_load_home(), RB_ECONFIG);
		// A file with a bad line changes nothing.
		assert_null(getenv("RB_TEST_A"));
	}
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup(test_int_good, setup),
	        cmocka_unit_test_setup(test_int_bad, setup),
	        cmocka_unit_test_setup(test_parse_ms, setup),
	        cmocka_unit_test_setup(test_config_ms, setup),
	        cmocka_unit_test_setup(test_bool, setup),
	        cmocka_unit_test_setup(test_str, setup),
	        cmocka_unit_test_setup(test_str_file, setup),
	        cmocka_unit_test_setup(test_urls, setup),
	        cmocka_unit_test_setup(test_service_token, setup),
	        cmocka_unit_test_setup(test_conninfo_and_home, setup),
	        cmocka_unit_test_setup(test_load_home, setup),
	        cmocka_unit_test_setup(test_load_home_bad, setup),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
