// Unit tests of the agent client's command line and the secret's sources.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "options.h"
#include "rb_err.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static char dir[64];

static int make_dir(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/ringbid-agent-test.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	unsetenv("RINGBID_AGENT_SECRET");
	unsetenv("RINGBID_AGENT_SECRET_FILE");
	return 0;
}

static int remove_dir(void **state)
{
	char path[128];
	static const char *const names[] = {"a", "b", "empty", "two", "crlf", "big"};
	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
	unsetenv("RINGBID_AGENT_SECRET");
	unsetenv("RINGBID_AGENT_SECRET_FILE");
	return 0;
}

static const char *write_file(const char *name, const char *text)
{
	static char path[4][128];
	static int next;
	char *p = path[next++ % 4];
	snprintf(p, sizeof(path[0]), "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return p;
}

static void test_parse_basic(void **state)
{
	char *argv[] = {"ringbid-agent", "--agent",       "42",  "--url=tcp://127.0.0.1:9",
	                "--json",        "--auto-answer", "0.5", "--no-ready"};
	agent_options o;
	char err[256];
	(void)state;

	assert_int_equal(agent_options_parse(ARGC(argv), argv, &o, err, sizeof(err)), 0);
	assert_int_equal(o.agent_id, 42);
	assert_string_equal(o.url, "tcp://127.0.0.1:9");
	assert_true(o.json);
	assert_true(o.auto_answer);
	assert_int_equal(o.talk_ms, 500);
	assert_true(o.no_ready);
	assert_null(o.secret_file);
	assert_int_equal(agent_options_policy(&o), AGENT_OFFERS_ACCEPT);
	assert_false(agent_options_auto_ready(&o));

	char *argv2[] = {"ringbid-agent", "--agent=7", "--decline"};
	assert_int_equal(agent_options_parse(ARGC(argv2), argv2, &o, err, sizeof(err)), 0);
	assert_int_equal(agent_options_policy(&o), AGENT_OFFERS_DECLINE);
	assert_true(agent_options_auto_ready(&o));

	char *argv3[] = {"ringbid-agent", "--agent", "7", "--ignore-offers"};
	assert_int_equal(agent_options_parse(ARGC(argv3), argv3, &o, err, sizeof(err)), 0);
	assert_int_equal(agent_options_policy(&o), AGENT_OFFERS_IGNORE);

	char *argv4[] = {"ringbid-agent", "--agent", "7"};
	assert_int_equal(agent_options_parse(ARGC(argv4), argv4, &o, err, sizeof(err)), 0);
	assert_int_equal(agent_options_policy(&o), AGENT_OFFERS_ASK);
	assert_false(agent_options_auto_ready(&o));

	char *argv5[] = {"ringbid-agent", "--help", "--agent", "x"};
	assert_int_equal(agent_options_parse(2, argv5, &o, err, sizeof(err)), 0);
	assert_true(o.help);
}

static void test_parse_refusals(void **state)
{
	agent_options o;
	char err[512];
	(void)state;

	char *secret[] = {"ringbid-agent", "--agent", "1", "--secret", "hunter2"};
	assert_int_equal(agent_options_parse(ARGC(secret), secret, &o, err, sizeof(err)),
	                 RB_EINVAL);
	assert_non_null(strstr(err, "--secret is refused"));
	assert_non_null(strstr(err, "--secret-file"));
	assert_null(strstr(err, "hunter2"));

	char *secret_eq[] = {"ringbid-agent", "--secret=hunter2", "--agent", "1"};
	assert_int_equal(agent_options_parse(ARGC(secret_eq), secret_eq, &o, err, sizeof(err)),
	                 RB_EINVAL);
	assert_non_null(strstr(err, "refused"));
	assert_null(strstr(err, "hunter2"));

	char *no_agent[] = {"ringbid-agent", "--json"};
	assert_int_equal(agent_options_parse(ARGC(no_agent), no_agent, &o, err, sizeof(err)),
	                 RB_EINVAL);
	char *bad_agent[] = {"ringbid-agent", "--agent", "0"};
	assert_int_equal(agent_options_parse(ARGC(bad_agent), bad_agent, &o, err, sizeof(err)),
	                 RB_EINVAL);
	char *bad_agent2[] = {"ringbid-agent", "--agent", "12x"};
	assert_int_equal(agent_options_parse(ARGC(bad_agent2), bad_agent2, &o, err, sizeof(err)),
	                 RB_EINVAL);
	char *missing[] = {"ringbid-agent", "--agent"};
	assert_int_equal(agent_options_parse(ARGC(missing), missing, &o, err, sizeof(err)),
	                 RB_EINVAL);
	char *both[] = {"ringbid-agent", "--agent", "1", "--decline", "--ignore-offers"};
	assert_int_equal(agent_options_parse(ARGC(both), both, &o, err, sizeof(err)), RB_EINVAL);
	char *unknown[] = {"ringbid-agent", "--agent", "1", "--fast"};
	assert_int_equal(agent_options_parse(ARGC(unknown), unknown, &o, err, sizeof(err)),
	                 RB_EINVAL);
	assert_non_null(strstr(err, "--fast"));
}

static void test_parse_sale_every(void **state)
{
	agent_options o;
	char err[256];
	(void)state;

	char *ok[] = {"ringbid-agent", "--agent", "3", "--auto-answer", "1", "--sale-every", "3"};
	assert_int_equal(agent_options_parse(ARGC(ok), ok, &o, err, sizeof(err)), 0);
	assert_int_equal(o.sale_every, 3);
	char *none[] = {"ringbid-agent", "--agent", "3", "--auto-answer", "1"};
	assert_int_equal(agent_options_parse(ARGC(none), none, &o, err, sizeof(err)), 0);
	assert_int_equal(o.sale_every, 0);
	char *zero[] = {"ringbid-agent", "--agent", "3", "--auto-answer", "1", "--sale-every=0"};
	assert_int_equal(agent_options_parse(ARGC(zero), zero, &o, err, sizeof(err)), RB_EINVAL);
	assert_non_null(strstr(err, "--sale-every"));
	char *big[] = {"ringbid-agent", "--agent", "3", "--auto-answer", "1",
	               "--sale-every",  "1000001"};
	assert_int_equal(agent_options_parse(ARGC(big), big, &o, err, sizeof(err)), RB_EINVAL);
	char *alone[] = {"ringbid-agent", "--agent", "3", "--sale-every", "2"};
	assert_int_equal(agent_options_parse(ARGC(alone), alone, &o, err, sizeof(err)), RB_EINVAL);
	assert_non_null(strstr(err, "--auto-answer"));
}

static void test_parse_seconds(void **state)
{
	uint64_t ms = 0;
	(void)state;

	assert_int_equal(agent_parse_seconds("2", &ms), 0);
	assert_int_equal(ms, 2000);
	assert_int_equal(agent_parse_seconds("0.5", &ms), 0);
	assert_int_equal(ms, 500);
	assert_int_equal(agent_parse_seconds(".25", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(agent_parse_seconds("1.2345", &ms), 0);
	assert_int_equal(ms, 1234);
	assert_int_equal(agent_parse_seconds("0", &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(agent_parse_seconds("86400", &ms), 0);
	assert_int_equal(ms, 86400000);
	assert_int_equal(agent_parse_seconds("86400.1", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds("", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds(".", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds("-1", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds("1e3", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds("1.5s", &ms), RB_EINVAL);
	assert_int_equal(agent_parse_seconds("99999999", &ms), RB_EINVAL);
}

static void test_secret_precedence(void **state)
{
	agent_options o;
	char secret[AGENT_SECRET_MAX + 1];
	char err[512];
	const char *source = NULL;
	(void)state;

	memset(&o, 0, sizeof(o));
	o.agent_id = 1;
	// Nothing anywhere: a clear refusal.
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_ENOTFOUND);
	assert_non_null(strstr(err, "--secret-file"));

	// The plain variable is the last resort.
	setenv("RINGBID_AGENT_SECRET", "from-env", 1);
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 0);
	assert_string_equal(secret, "from-env");
	assert_string_equal(source, "RINGBID_AGENT_SECRET");

	// The _FILE variable beats it; the trailing line break is not part of the secret.
	setenv("RINGBID_AGENT_SECRET_FILE", write_file("b", "from-env-file\n"), 1);
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 0);
	assert_string_equal(secret, "from-env-file");
	assert_string_equal(source, "RINGBID_AGENT_SECRET_FILE");

	// --secret-file beats both.
	o.secret_file = write_file("a", "from-flag");
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 0);
	assert_string_equal(secret, "from-flag");
	assert_string_equal(source, "--secret-file");

	// A named file that cannot be read is an error, not a reason to fall back.
	o.secret_file = "/nonexistent/ringbid/secret";
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_EIO);
	assert_non_null(strstr(err, "/nonexistent/ringbid/secret"));
	o.secret_file = NULL;
	setenv("RINGBID_AGENT_SECRET_FILE", "/nonexistent/ringbid/secret", 1);
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_EIO);

	// An empty variable counts as unset.
	setenv("RINGBID_AGENT_SECRET_FILE", "", 1);
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 0);
	assert_string_equal(secret, "from-env");
	unsetenv("RINGBID_AGENT_SECRET");
	unsetenv("RINGBID_AGENT_SECRET_FILE");
}

static void test_secret_file_contents(void **state)
{
	agent_options o;
	char secret[AGENT_SECRET_MAX + 1];
	char err[512];
	const char *source = NULL;
	char big[AGENT_SECRET_MAX + 10];
	(void)state;

	memset(&o, 0, sizeof(o));
	o.secret_file = write_file("crlf", "windows secret\r\n");
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 0);
	assert_string_equal(secret, "windows secret");

	o.secret_file = write_file("empty", "\n");
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_EINVAL);
	o.secret_file = write_file("two", "one\ntwo\n");
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_EINVAL);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	o.secret_file = write_file("big", big);
	assert_int_equal(agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err)),
	                 RB_ETOOBIG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_parse_basic),
	        cmocka_unit_test(test_parse_refusals),
	        cmocka_unit_test(test_parse_sale_every),
	        cmocka_unit_test(test_parse_seconds),
	        cmocka_unit_test_setup_teardown(test_secret_precedence, make_dir, remove_dir),
	        cmocka_unit_test_setup_teardown(test_secret_file_contents, make_dir, remove_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
