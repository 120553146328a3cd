// Tests for secret hashing and checking (blocking and on a libuv loop) and session tokens.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <uv.h>

#include "rb_err.h"
#include "rb_secret.h"

static char good_hash[RB_SECRET_HASH_MAX];

static int group_setup(void **state)
{
	(void)state;
	if (rb_secret_init() != 0)
		return -1;
	return rb_secret_hash("correct horse", good_hash);
}

static void test_hash_and_verify(void **state)
{
	char other[RB_SECRET_HASH_MAX];

	(void)state;
	assert_int_equal(strncmp(good_hash, "$argon2id$", 10), 0);
	assert_int_equal(rb_secret_verify_blocking(good_hash, "correct horse"), 0);
	assert_int_equal(rb_secret_verify_blocking(good_hash, "correct horsE"), RB_EAUTH);
	assert_int_equal(rb_secret_verify_blocking(good_hash, ""), RB_EAUTH);
	assert_int_equal(rb_secret_verify_blocking(good_hash, NULL), RB_EAUTH);
	assert_int_equal(rb_secret_verify_blocking(NULL, "correct horse"), RB_EAUTH);
	assert_int_equal(rb_secret_verify_blocking("not a hash", "correct horse"), RB_EAUTH);
	assert_int_equal(rb_secret_verify_blocking("", "x"), RB_EAUTH);

	// Salted: the same secret hashes differently, and both verify.
	assert_int_equal(rb_secret_hash("correct horse", other), 0);
	assert_string_not_equal(other, good_hash);
	assert_int_equal(rb_secret_verify_blocking(other, "correct horse"), 0);

	assert_int_equal(rb_secret_hash(NULL, other), RB_EINVAL);
	assert_int_equal(rb_secret_hash("", other), RB_EINVAL);
	assert_int_equal(rb_secret_hash("x", NULL), RB_EINVAL);
}

static void test_unterminated_hash(void **state)
{
	char junk[RB_SECRET_HASH_MAX + 16];

	(void)state;
	memset(junk, 'a', sizeof(junk));
	memcpy(junk, "$argon2id$", 10);
	junk[sizeof(junk) - 1] = '\0'; // longer than any real hash
	assert_int_equal(rb_secret_verify_blocking(junk, "correct horse"), RB_EAUTH);
}

typedef struct verify_state verify_state;
typedef struct {
	verify_state *vs;
	int i;
} verify_slot;

struct verify_state {
	int done;
	int results[16];
	verify_slot slots[16];
};

static void on_verified(int result, void *arg)
{
	verify_slot *slot = arg;

	slot->vs->results[slot->i] = result;
	slot->vs->done++;
}

static void *slot(verify_state *vs, int i)
{
	vs->slots[i].vs = vs;
	vs->slots[i].i = i;
	return &vs->slots[i];
}

static void test_async_verify(void **state)
{
	uv_loop_t loop;
	verify_state vs;

	(void)state;
	memset(&vs, 0, sizeof(vs));
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(
	        rb_secret_verify(&loop, good_hash, "correct horse", on_verified, slot(&vs, 0)), 0);
	assert_int_equal(rb_secret_verify(&loop, good_hash, "wrong", on_verified, slot(&vs, 1)), 0);
	assert_int_equal(rb_secret_verify(&loop, NULL, "correct horse", on_verified, slot(&vs, 2)),
	                 0);
	assert_int_equal(vs.done, 0); // never called inside rb_secret_verify
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(vs.done, 3);
	assert_int_equal(vs.results[0], 0);
	assert_int_equal(vs.results[1], RB_EAUTH);
	assert_int_equal(vs.results[2], RB_EAUTH);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_async_many(void **state)
{
	uv_loop_t loop;
	verify_state vs;
	const int n = 12; // more than the cores, so some wait their turn

	(void)state;
	memset(&vs, 0, sizeof(vs));
	assert_int_equal(uv_loop_init(&loop), 0);
	for (int i = 0; i < n; i++) {
		assert_int_equal(rb_secret_verify(&loop, i % 3 == 2 ? NULL : good_hash,
		                                  i % 2 == 0 ? "correct horse" : "nope",
		                                  on_verified, slot(&vs, i)),
		                 0);
	}
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(vs.done, n);
	for (int i = 0; i < n; i++) {
		int expect = (i % 3 != 2 && i % 2 == 0) ? 0 : RB_EAUTH;

		assert_int_equal(vs.results[i], expect);
	}
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void never_called(int result, void *arg)
{
	(void)result;
	(void)arg;
	fail_msg("callback called for a refused request");
}

static void test_async_refused(void **state)
{
	uv_loop_t loop;
	char big[2000];

	(void)state;
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(rb_secret_verify(&loop, good_hash, NULL, never_called, NULL), RB_EINVAL);
	assert_int_equal(rb_secret_verify(&loop, good_hash, "x", NULL, NULL), RB_EINVAL);
	assert_int_equal(rb_secret_verify(NULL, good_hash, "x", never_called, NULL), RB_EINVAL);
	assert_int_equal(rb_secret_verify(&loop, good_hash, big, never_called, NULL), RB_ETOOBIG);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_tokens(void **state)
{
	char hex[RB_TOKEN_HEX];
	char hex2[RB_TOKEN_HEX];
	uint8_t h1[RB_TOKEN_HASH], h2[RB_TOKEN_HASH], h3[RB_TOKEN_HASH];

	(void)state;
	rb_token_new(hex, h1);
	assert_int_equal(strlen(hex), 64);
	for (int i = 0; i < 64; i++)
		assert_true((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f'));
	assert_int_equal(rb_token_hash(hex, h2), 0);
	assert_true(rb_token_equal(h1, h2));

	rb_token_new(hex2, h3);
	assert_string_not_equal(hex, hex2);
	assert_false(rb_token_equal(h1, h3));
	assert_false(rb_token_equal(h1, NULL));

	// Malformed tokens: wrong length, upper case, non-hex, NULL.
	memcpy(hex2, hex, sizeof(hex));
	hex2[63] = '\0';
	assert_int_equal(rb_token_hash(hex2, h2), RB_EAUTH);
	assert_int_equal(rb_token_hash("", h2), RB_EAUTH);
	assert_int_equal(rb_token_hash(NULL, h2), RB_EAUTH);
	memcpy(hex2, hex, sizeof(hex));
	hex2[5] = 'A';
	assert_int_equal(rb_token_hash(hex2, h2), RB_EAUTH);
	hex2[5] = 'g';
	assert_int_equal(rb_token_hash(hex2, h2), RB_EAUTH);
	{
		char longer[RB_TOKEN_HEX + 1];

		memcpy(longer, hex, 64);
		longer[64] = 'a';
		longer[65] = '\0';
		assert_int_equal(rb_token_hash(longer, h2), RB_EAUTH);
	}
	// A different valid token gives a different hash.
	memcpy(hex2, hex, sizeof(hex));
	hex2[0] = hex2[0] == '0' ? '1' : '0';
	assert_int_equal(rb_token_hash(hex2, h2), 0);
	assert_false(rb_token_equal(h1, h2));
}

static void test_str_equal_ct(void **state)
{
	(void)state;
	assert_true(rb_str_equal_ct("token", "token"));
	assert_true(rb_str_equal_ct("", ""));
	assert_false(rb_str_equal_ct("token", "tokeN"));
	assert_false(rb_str_equal_ct("token", "token2"));
	assert_false(rb_str_equal_ct("", "x"));
	assert_false(rb_str_equal_ct(NULL, "x"));
	assert_false(rb_str_equal_ct("x", NULL));
	assert_false(rb_str_equal_ct(NULL, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_hash_and_verify), cmocka_unit_test(test_unterminated_hash),
	        cmocka_unit_test(test_async_verify),    cmocka_unit_test(test_async_many),
	        cmocka_unit_test(test_async_refused),   cmocka_unit_test(test_tokens),
	        cmocka_unit_test(test_str_equal_ct),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
