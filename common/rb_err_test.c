// Tests for the error table and the nng and errno conversions.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <nng/nng.h>

#include "rb_err.h"

static void test_every_code_named(void **state)
{
	(void)state;
	for (int code = 0; code >= RB_ECODE_MIN; code--) {
		const char *name = rb_err_name(code);
		const char *text = rb_err_str(code);

		assert_non_null(name);
		assert_non_null(text);
		assert_string_not_equal(name, "RB_E?");
		assert_true(strncmp(name, "RB_", 3) == 0);
		assert_true(strlen(text) > 0);
		assert_string_not_equal(text, "unknown error");
		// Every code has its own name.
		for (int other = code - 1; other >= RB_ECODE_MIN; other--)
			assert_string_not_equal(name, rb_err_name(other));
	}
}

static void test_names_and_texts(void **state)
{
	(void)state;
	assert_string_equal(rb_err_name(RB_OK), "RB_OK");
	assert_string_equal(rb_err_name(RB_EAUTH), "RB_EAUTH");
	assert_string_equal(rb_err_str(RB_EAUTH), "wrong secret or token");
	assert_string_equal(rb_err_name(RB_ETOOBIG), "RB_ETOOBIG");
	assert_string_equal(rb_err_name(RB_EFORBIDDEN), "RB_EFORBIDDEN");
	assert_string_equal(rb_err_str(RB_ESLOWDOWN), "too many failed attempts: wait");
	assert_string_equal(rb_err_name(RB_ECONFLICT), "RB_ECONFLICT");
}

static void test_unknown_codes(void **state)
{
	(void)state;
	assert_string_equal(rb_err_name(RB_ECODE_MIN - 1), "RB_E?");
	assert_string_equal(rb_err_name(1), "RB_E?");
	assert_string_equal(rb_err_name(-1000), "RB_E?");
	assert_string_equal(rb_err_str(-1000), "unknown error");
}

static void test_from_nng(void **state)
{
	(void)state;
	assert_int_equal(rb_err_from_nng(0), RB_OK);
	assert_int_equal(rb_err_from_nng(NNG_ETIMEDOUT), RB_ETIMEDOUT);
	assert_int_equal(rb_err_from_nng(NNG_ECLOSED), RB_ECLOSED);
	assert_int_equal(rb_err_from_nng(NNG_ENOMEM), RB_ENOMEM);
	assert_int_equal(rb_err_from_nng(NNG_EINVAL), RB_EINVAL);
	assert_int_equal(rb_err_from_nng(NNG_EMSGSIZE), RB_ETOOBIG);
	assert_int_equal(rb_err_from_nng(NNG_EADDRINUSE), RB_EBUSY);
	assert_int_equal(rb_err_from_nng(NNG_ECONNREFUSED), RB_ECLOSED);
	assert_int_equal(rb_err_from_nng(NNG_ECONNSHUT), RB_ECLOSED);
	assert_int_equal(rb_err_from_nng(NNG_ENOTSUP), RB_ENNG);
	assert_int_equal(rb_err_from_nng(NNG_ECRYPTO), RB_ENNG);
	assert_int_equal(rb_err_from_nng(NNG_ESYSERR | ENOMEM), RB_ENOMEM);
}

static void test_from_errno(void **state)
{
	(void)state;
	assert_int_equal(rb_err_from_errno(0), RB_OK);
	assert_int_equal(rb_err_from_errno(ENOMEM), RB_ENOMEM);
	assert_int_equal(rb_err_from_errno(EINVAL), RB_EINVAL);
	assert_int_equal(rb_err_from_errno(ENOENT), RB_ENOTFOUND);
	assert_int_equal(rb_err_from_errno(EEXIST), RB_EEXIST);
	assert_int_equal(rb_err_from_errno(ETIMEDOUT), RB_ETIMEDOUT);
	assert_int_equal(rb_err_from_errno(EAGAIN), RB_EBUSY);
	assert_int_equal(rb_err_from_errno(EADDRINUSE), RB_EBUSY);
	assert_int_equal(rb_err_from_errno(EPIPE), RB_ECLOSED);
	assert_int_equal(rb_err_from_errno(EACCES), RB_EFORBIDDEN);
	assert_int_equal(rb_err_from_errno(EIO), RB_EIO);
	assert_int_equal(rb_err_from_errno(ENOSPC), RB_EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_every_code_named), cmocka_unit_test(test_names_and_texts),
	        cmocka_unit_test(test_unknown_codes),    cmocka_unit_test(test_from_nng),
	        cmocka_unit_test(test_from_errno),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
