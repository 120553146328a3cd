// Tests for $RINGBID_HOME/env: rendering, refusals, a private atomic write, and that the
// shared loader (rb_config_load_home) reads back what `ringbid up` writes.
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"

static char dir[PATH_MAX];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/ringbid-env-XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char path[PATH_MAX + 16];

	(void)state;
	snprintf(path, sizeof path, "%s/env", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/env.tmp", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

static void test_format(void **state)
{
	const cli_env_kv kv[] = {
	        {"RINGBID_PORT_BASE", "7100"},
	        {"RINGBID_DATABASE_URL", "postgresql://postgres@127.0.0.1:5433/ringbid"},
	        {"EMPTY", ""},
	};
	char *text;

	(void)state;
	assert_int_equal(cli_env_format(kv, 3, &text), 0);
	assert_non_null(strstr(text, "\nRINGBID_PORT_BASE=7100\n"));
	assert_non_null(strstr(
	        text, "\nRINGBID_DATABASE_URL=postgresql://postgres@127.0.0.1:5433/ringbid\n"));
	assert_non_null(strstr(text, "\nEMPTY=\n"));
	assert_int_equal(text[0], '#');
	assert_int_equal(text[strlen(text) - 1], '\n');
	free(text);
}

static void test_refusals(void **state)
{
	const cli_env_kv bad_key[] = {{"lower", "x"}};
	const cli_env_kv bad_key2[] = {{"A=B", "x"}};
	const cli_env_kv empty_key[] = {{"", "x"}};
	const cli_env_kv newline[] = {{"A", "x\nEVIL=1"}};
	const cli_env_kv cr[] = {{"A", "x\r"}};
	char *text = NULL;

	(void)state;
	assert_int_equal(cli_env_format(bad_key, 1, &text), RB_EINVAL);
	assert_int_equal(cli_env_format(bad_key2, 1, &text), RB_EINVAL);
	assert_int_equal(cli_env_format(empty_key, 1, &text), RB_EINVAL);
	assert_int_equal(cli_env_format(newline, 1, &text), RB_EINVAL);
	assert_int_equal(cli_env_format(cr, 1, &text), RB_EINVAL);
	assert_null(text);
}

static void test_write_private_and_replaces(void **state)
{
	const cli_env_kv first[] = {{"RINGBID_PORT_BASE", "7100"}};
	const cli_env_kv second[] = {{"RINGBID_PORT_BASE", "7300"}};
	char path[PATH_MAX + 16], buf[512], tmp[PATH_MAX + 16];
	struct stat st;
	FILE *f;
	size_t len;

	(void)state;
	snprintf(path, sizeof path, "%s/env", dir);
	snprintf(tmp, sizeof tmp, "%s/env.tmp", dir);
	umask(022);
	assert_int_equal(cli_env_write(path, first, 1), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(cli_env_write(path, second, 1), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_not_equal(access(tmp, F_OK), 0);
	f = fopen(path, "r");
	assert_non_null(f);
	len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[len] = '\0';
	assert_non_null(strstr(buf, "RINGBID_PORT_BASE=7300\n"));
	assert_null(strstr(buf, "7100"));
	assert_int_equal(cli_env_write("/nonexistent-dir/env", first, 1), RB_EIO);
}

static void test_loader_reads_it_back(void **state)
{
	const cli_env_kv kv[] = {
	        {"RB_ENVTEST_URL", "postgresql://postgres@127.0.0.1:41234/ringbid"},
	        {"RB_ENVTEST_TOKEN",
	         "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"},
	        {"RB_ENVTEST_KEPT", "from-file"},
	};
	char path[PATH_MAX + 16];

	(void)state;
	snprintf(path, sizeof path, "%s/env", dir);
	assert_int_equal(cli_env_write(path, kv, 3), 0);
	unsetenv("RB_ENVTEST_URL");
	unsetenv("RB_ENVTEST_TOKEN");
	setenv("RB_ENVTEST_KEPT", "from-environment", 1);
	setenv("RINGBID_HOME", dir, 1);
	assert_int_equal(rb_config_load_home(), 0);
	assert_string_equal(getenv("RB_ENVTEST_URL"), kv[0].value);
	assert_string_equal(getenv("RB_ENVTEST_TOKEN"), kv[1].value);
	// The environment wins over the file.
	assert_string_equal(getenv("RB_ENVTEST_KEPT"), "from-environment");
	unsetenv("RINGBID_HOME");
}

static void test_home_abs(void **state)
{
	char out[PATH_MAX], cwd[PATH_MAX], want[PATH_MAX + 16];

	(void)state;
	assert_non_null(getcwd(cwd, sizeof cwd));
	setenv("RINGBID_HOME", "/srv/ringbid/", 1);
	assert_int_equal(cli_home_abs(out, sizeof out), 0);
	assert_string_equal(out, "/srv/ringbid");
	setenv("RINGBID_HOME", "./var/demo", 1);
	assert_int_equal(cli_home_abs(out, sizeof out), 0);
	snprintf(want, sizeof want, "%s/var/demo", strcmp(cwd, "/") ? cwd : "");
	assert_string_equal(out, want);
	unsetenv("RINGBID_HOME");
	assert_int_equal(cli_home_abs(out, sizeof out), 0);
	snprintf(want, sizeof want, "%s/var", strcmp(cwd, "/") ? cwd : "");
	assert_string_equal(out, want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_format),
	        cmocka_unit_test(test_refusals),
	        cmocka_unit_test_setup_teardown(test_write_private_and_replaces, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_loader_reads_it_back, setup, teardown),
	        cmocka_unit_test(test_home_abs),
	};

	rb_log_init("cli-test");
	rb_log_set_level(RB_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
