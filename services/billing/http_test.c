// Unit tests of the money routes' parsing: the Authorization header and the query parameters.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "http.h"
#include "rb_err.h"

static void test_bearer(void **state)
{
	char tok[BILLING_TOKEN_MAX + 1];
	char small[8];
	(void)state;

	assert_int_equal(billing_http_bearer("Bearer abc123", tok, sizeof(tok)), 0);
	assert_string_equal(tok, "abc123");
	assert_int_equal(billing_http_bearer("  bearer \t x.y-z_~+/= ", tok, sizeof(tok)), 0);
	assert_string_equal(tok, "x.y-z_~+/=");
	assert_int_equal(billing_http_bearer(NULL, tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer ", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Basic dXNlcjpwYXNz", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearerabc", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer a b", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer a\"b", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer a\r\nX: y", tok, sizeof(tok)), RB_EAUTH);
	assert_int_equal(billing_http_bearer("Bearer 1234567", small, sizeof(small)), 0);
	assert_int_equal(billing_http_bearer("Bearer 12345678", small, sizeof(small)), RB_EAUTH);
}

static void test_period(void **state)
{
	(void)state;
	assert_int_equal(billing_http_period("2026-11-16"), 0);
	assert_int_equal(billing_http_period("2024-02-29"), 0);
	assert_int_equal(billing_http_period("2000-02-29"), 0);
	assert_int_equal(billing_http_period("2100-02-29"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-02-29"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-13-01"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-04-31"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-11-00"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-1-16"), RB_EINVAL);
	assert_int_equal(billing_http_period("2026-11-16 "), RB_EINVAL);
	assert_int_equal(billing_http_period("2026/11/16"), RB_EINVAL);
	assert_int_equal(billing_http_period("current"), RB_EINVAL);
	assert_int_equal(billing_http_period(""), RB_EINVAL);
	assert_int_equal(billing_http_period(NULL), RB_EINVAL);
}

static void test_format_and_filename(void **state)
{
	char name[96];
	(void)state;

	assert_int_equal(billing_http_format("csv"), 0);
	assert_int_equal(billing_http_format("adp"), 0);
	assert_int_equal(billing_http_format("paychex"), 0);
	assert_int_equal(billing_http_format("gusto"), 0);
	assert_int_equal(billing_http_format("CSV"), RB_EINVAL);
	assert_int_equal(billing_http_format("pdf"), RB_EINVAL);
	assert_int_equal(billing_http_format(""), RB_EINVAL);
	assert_int_equal(billing_http_format(NULL), RB_EINVAL);
	assert_int_equal(billing_http_filename("2026-11-16", "csv", false, name, sizeof(name)), 0);
	assert_string_equal(name, "ringbid-payroll-2026-11-16-csv.csv");
	assert_int_equal(billing_http_filename("2026-11-16", "adp", true, name, sizeof(name)), 0);
	assert_string_equal(name, "ringbid-payroll-2026-11-16-adp.provisional.csv");
	assert_int_equal(billing_http_filename("2026-11-16", "adp", true, name, 10), RB_ETOOBIG);
}

static void readonly_conninfo(void **state)
{
	(void)state;
	char out[256];
	assert_int_equal(
	        billing_readonly_conninfo("postgresql://u@127.0.0.1:5432/db", out, sizeof out), 0);
	assert_string_equal(out, "postgresql://u@127.0.0.1:5432/db"
	                         "?options=-c%20default_transaction_read_only%3Don");
	assert_int_equal(billing_readonly_conninfo("postgres://h/db?passfile=/p", out, sizeof out),
	                 0);
	assert_string_equal(out, "postgres://h/db?passfile=/p"
	                         "&options=-c%20default_transaction_read_only%3Don");
	assert_int_equal(billing_readonly_conninfo("host=h dbname=d", out, sizeof out), 0);
	assert_string_equal(out, "host=h dbname=d options='-c default_transaction_read_only=on'");
	assert_int_equal(billing_readonly_conninfo("", out, sizeof out), 0);
	assert_string_equal(out, "options='-c default_transaction_read_only=on'");
	assert_int_equal(billing_readonly_conninfo("host=h", out, 10), RB_ETOOBIG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(readonly_conninfo),
	        cmocka_unit_test(test_bearer),
	        cmocka_unit_test(test_period),
	        cmocka_unit_test(test_format_and_filename),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
