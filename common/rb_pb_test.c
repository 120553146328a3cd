// Tests for protobuf framing (size limits both ways, malformed input) and the field validators.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rb_err.h"
#include "rb_pb.h"
#include "ringbid.pb-c.h"

static void test_round_trip(void **state)
{
	Ringbid__CallArrived in = RINGBID__CALL_ARRIVED__INIT;
	char *skills[] = {"spanish", "billing"};
	ProtobufCMessage *out = NULL;
	Ringbid__CallArrived *got;
	nng_msg *msg = NULL;

	(void)state;
	in.call_id = "c-1";
	in.program = "sales";
	in.n_skills = 2;
	in.skills = skills;
	in.priority = -3;
	in.caller = "+15551234567";
	assert_int_equal(rb_pb_pack(&in.base, RB_PB_MAX_DEFAULT, &msg), 0);
	assert_non_null(msg);
	assert_int_equal(nng_msg_len(msg), protobuf_c_message_get_packed_size(&in.base));

	assert_int_equal(
	        rb_pb_unpack_msg(&ringbid__call_arrived__descriptor, msg, RB_PB_MAX_DEFAULT, &out),
	        0);
	got = (Ringbid__CallArrived *)out;
	assert_string_equal(got->call_id, "c-1");
	assert_string_equal(got->program, "sales");
	assert_int_equal(got->n_skills, 2);
	assert_string_equal(got->skills[1], "billing");
	assert_int_equal(got->priority, -3);
	assert_string_equal(got->caller, "+15551234567");
	rb_pb_free(out);
	nng_msg_free(msg);
}

static void test_empty_message(void **state)
{
	Ringbid__ErrorReply in = RINGBID__ERROR_REPLY__INIT;
	ProtobufCMessage *out = NULL;
	nng_msg *msg = NULL;

	(void)state;
	// All fields at their defaults pack to zero bytes: still one valid message.
	assert_int_equal(rb_pb_pack(&in.base, RB_PB_MAX_DEFAULT, &msg), 0);
	assert_int_equal(nng_msg_len(msg), 0);
	assert_int_equal(
	        rb_pb_unpack_msg(&ringbid__error_reply__descriptor, msg, RB_PB_MAX_DEFAULT, &out),
	        0);
	assert_int_equal(((Ringbid__ErrorReply *)out)->code, 0);
	rb_pb_free(out);
	nng_msg_free(msg);
	assert_int_equal(rb_pb_unpack(&ringbid__error_reply__descriptor, NULL, 0, 16, &out), 0);
	rb_pb_free(out);
}

static void test_oversize_pack_refused(void **state)
{
	Ringbid__ErrorReply in = RINGBID__ERROR_REPLY__INIT;
	char *big = malloc(2000);
	nng_msg *msg = (nng_msg *)0x1;

	(void)state;
	memset(big, 'x', 1999);
	big[1999] = '\0';
	in.code = RB_EINVAL;
	in.message = big;
	assert_int_equal(rb_pb_pack(&in.base, 1000, &msg), RB_ETOOBIG);
	assert_null(msg);
	// Exactly at the limit is allowed.
	assert_int_equal(rb_pb_pack(&in.base, protobuf_c_message_get_packed_size(&in.base), &msg),
	                 0);
	nng_msg_free(msg);
	free(big);
}

static void test_oversize_unpack_refused(void **state)
{
	uint8_t buf[100];
	ProtobufCMessage *out = (ProtobufCMessage *)0x1;

	(void)state;
	// A valid encoding, but larger than the limit: refused before decoding.
	memset(buf, 0, sizeof(buf));
	buf[0] = 0x12; // field 2, length-delimited
	buf[1] = 98;
	memset(buf + 2, 'a', 98);
	assert_int_equal(
	        rb_pb_unpack(&ringbid__error_reply__descriptor, buf, sizeof(buf), 99, &out),
	        RB_ETOOBIG);
	assert_null(out);
	assert_int_equal(
	        rb_pb_unpack(&ringbid__error_reply__descriptor, buf, sizeof(buf), 100, &out), 0);
	assert_int_equal(strlen(((Ringbid__ErrorReply *)out)->message), 98);
	rb_pb_free(out);
}

static void test_malformed_refused(void **state)
{
	Ringbid__CallArrived in = RINGBID__CALL_ARRIVED__INIT;
	ProtobufCMessage *out = (ProtobufCMessage *)0x1;
	nng_msg *msg = NULL;
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	                                  0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	static const uint8_t bad_wire_type[] = {0x0f, 0x01};

	(void)state;
	in.call_id = "call-with-a-long-id";
	in.program = "support";
	assert_int_equal(rb_pb_pack(&in.base, RB_PB_MAX_DEFAULT, &msg), 0);
	// Every truncation of a valid message that cuts into a field must be refused, and must
	// never crash.
	for (size_t cut = 1; cut < nng_msg_len(msg); cut++) {
		int rv = rb_pb_unpack(&ringbid__call_arrived__descriptor, nng_msg_body(msg), cut,
		                      RB_PB_MAX_DEFAULT, &out);

		if (rv == 0) {
			rb_pb_free(out);
			continue;
		}
		assert_int_equal(rv, RB_EDECODE);
		assert_null(out);
	}
	// Cutting inside the first string is certainly malformed.
	assert_int_equal(rb_pb_unpack(&ringbid__call_arrived__descriptor, nng_msg_body(msg), 5,
	                              RB_PB_MAX_DEFAULT, &out),
	                 RB_EDECODE);
	nng_msg_free(msg);
	assert_int_equal(rb_pb_unpack(&ringbid__call_arrived__descriptor, garbage, sizeof(garbage),
	                              RB_PB_MAX_DEFAULT, &out),
	                 RB_EDECODE);
	assert_int_equal(rb_pb_unpack(&ringbid__call_arrived__descriptor, bad_wire_type,
	                              sizeof(bad_wire_type), RB_PB_MAX_DEFAULT, &out),
	                 RB_EDECODE);
	rb_pb_free(NULL);
}

// Field number 0 in an overlong varint tag: protobuf-c keeps it as an unknown field, but the
// message would not decode once packed again. Refused at the top level and nested.
static void test_field_zero_refused(void **state)
{
	(void)state;
	ProtobufCMessage *m = (ProtobufCMessage *)0x1;
	static const uint8_t top[] = {0x80, 0x00, 0x09};
	assert_int_equal(rb_pb_unpack(&ringbid__call_request__descriptor, top, sizeof top,
	                              RB_PB_MAX_DEFAULT, &m),
	                 RB_EDECODE);
	assert_null(m);
	// CallRequest.arrived (field 10) holding {call_id "c", field 0 = 9}.
	static const uint8_t nested[] = {0x52, 0x06, 0x0a, 0x01, 'c', 0x80, 0x00, 0x09};
	assert_int_equal(rb_pb_unpack(&ringbid__call_request__descriptor, nested, sizeof nested,
	                              RB_PB_MAX_DEFAULT, &m),
	                 RB_EDECODE);
	// Unknown fields with real numbers are kept: a newer peer may send them.
	static const uint8_t newer_ok[] = {0x52, 0x06, 0x0a, 0x01, 'c', 0xf8, 0x07, 0x01};
	assert_int_equal(rb_pb_unpack(&ringbid__call_request__descriptor, newer_ok, sizeof newer_ok,
	                              RB_PB_MAX_DEFAULT, &m),
	                 0);
	assert_non_null(m);
	rb_pb_free(m);
}

static void test_valid_id(void **state)
{
	char longid[70];

	(void)state;
	assert_true(rb_valid_id("sales", 64));
	assert_true(rb_valid_id("a", 1));
	assert_true(rb_valid_id("call-2026.11.23_0001:x", 64));
	assert_true(rb_valid_id("ABCxyz019", 64));
	assert_false(rb_valid_id(NULL, 64));
	assert_false(rb_valid_id("", 64));
	assert_false(rb_valid_id("ab", 1));
	assert_false(rb_valid_id("has space", 64));
	assert_false(rb_valid_id("slash/", 64));
	assert_false(rb_valid_id("semi;colon", 64));
	assert_false(rb_valid_id("quote'", 64));
	assert_false(rb_valid_id("new\nline", 64));
	assert_false(rb_valid_id("caf\xc3\xa9", 64));
	memset(longid, 'a', 64);
	longid[64] = '\0';
	assert_true(rb_valid_id(longid, 64));
	longid[64] = 'a';
	longid[65] = '\0';
	assert_false(rb_valid_id(longid, 64));
}

static void test_valid_text(void **state)
{
	(void)state;
	assert_true(rb_valid_text("Ana Lucía Pérez", 64));
	assert_true(rb_valid_text("", 64));
	assert_true(rb_valid_text("\xe6\x97\xa5\xe6\x9c\xac", 6)); // two CJK characters
	assert_false(rb_valid_text("\xe6\x97\xa5\xe6\x9c\xac", 5));
	assert_true(rb_valid_text("\xf0\x9f\x93\x9e phone", 64));
	assert_false(rb_valid_text(NULL, 64));
	assert_false(rb_valid_text("tab\there", 64));
	assert_false(rb_valid_text("line\nbreak", 64));
	assert_false(rb_valid_text("del\x7f", 64));
	assert_false(rb_valid_text("\xc2\x85", 64));         // C1 control (NEL)
	assert_false(rb_valid_text("\xc3", 64));             // truncated sequence
	assert_false(rb_valid_text("\xc0\xaf", 64));         // overlong '/'
	assert_false(rb_valid_text("\xed\xa0\x80", 64));     // surrogate
	assert_false(rb_valid_text("\xf4\x90\x80\x80", 64)); // above U+10FFFF
	assert_false(rb_valid_text("\xe2\x80\xae", 64));     // right-to-left override
	assert_false(rb_valid_text("\xff", 64));
	assert_false(rb_valid_text("abcdef", 5));
	assert_true(rb_valid_text("abcde", 5));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_round_trip),
	        cmocka_unit_test(test_empty_message),
	        cmocka_unit_test(test_oversize_pack_refused),
	        cmocka_unit_test(test_oversize_unpack_refused),
	        cmocka_unit_test(test_malformed_refused),
	        cmocka_unit_test(test_field_zero_refused),
	        cmocka_unit_test(test_valid_id),
	        cmocka_unit_test(test_valid_text),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
