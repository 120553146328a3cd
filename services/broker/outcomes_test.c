// Unit tests of outcomes: every field check, and the forwarding to a stand-in billing over
// real nng sockets (deferred answers, refusals, silence, the in-flight bound, shutdown).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "outcomes.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_time.h"

#define NOW    1763859600000000ull // UTC µs
#define MINUTE (60ull * 1000000u)
#define DAY    (86400ull * 1000000u)
#define TOKEN  "test-token"

// --- field checks -------------------------------------------------------------------------

static Ringbid__Outcome outs[BROKER_OUTCOMES_MAX + 1];
static Ringbid__Outcome *ptrs[BROKER_OUTCOMES_MAX + 1];
static Ringbid__RecordOutcomes ro;
static char why[BROKER_OUTCOME_WHY_MAX];

// n outcomes of call "c-1": a survey of 4, then resolved 1, sale 0, QA 80 by "sup-1", then
// QA reviews by other reviewers.
static Ringbid__RecordOutcomes *make(size_t n)
{
	ringbid__record_outcomes__init(&ro);
	for (size_t i = 0; i < n; i++) {
		Ringbid__Outcome *o = &outs[i];
		ringbid__outcome__init(o);
		o->call_id = (char *)"c-1";
		switch (i) {
		case 0:
			o->kind = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY;
			o->value = 4;
			break;
		case 1:
			o->kind = RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED;
			o->value = 1;
			break;
		case 2:
			o->kind = RINGBID__OUTCOME_KIND__OUTCOME_SALE;
			o->value = 0;
			break;
		default: {
			static char names[BROKER_OUTCOMES_MAX + 1][16];
			snprintf(names[i], sizeof(names[i]), "sup-%zu", i - 2);
			o->kind = RINGBID__OUTCOME_KIND__OUTCOME_QA;
			o->value = 80;
			o->reviewer = names[i];
			break;
		}
		}
		ptrs[i] = o;
	}
	ro.n_outcomes = n;
	ro.outcomes = ptrs;
	return &ro;
}

static void expect_refused(const char *field)
{
	uint64_t recorded = outs[0].recorded_us;
	protobuf_c_boolean known = outs[0].call_known;
	why[0] = '\0';
	assert_int_equal(broker_outcomes_check(&ro, NOW, true, why, sizeof(why)), RB_EINVAL);
	if (strstr(why, field) == NULL)
		fail_msg("refusal \"%s\" does not name %s", why, field);
	// Nothing was filled in.
	assert_int_equal(outs[0].recorded_us, recorded);
	assert_int_equal(outs[0].call_known, known);
}

static void test_check_accepts(void **state)
{
	(void)state;
	make(4);
	outs[1].recorded_us = NOW - 399 * DAY;
	outs[2].recorded_us = NOW + 5 * MINUTE;
	outs[0].call_known = true; // the sender's word does not count
	assert_int_equal(broker_outcomes_check(&ro, NOW, false, why, sizeof(why)), 0);
	assert_int_equal(outs[0].recorded_us, NOW); // 0: when the broker received it
	assert_int_equal(outs[1].recorded_us, NOW - 399 * DAY);
	assert_int_equal(outs[2].recorded_us, NOW + 5 * MINUTE);
	for (int i = 0; i < 4; i++)
		assert_false(outs[i].call_known);
	make(1);
	assert_int_equal(broker_outcomes_check(&ro, NOW, true, why, sizeof(why)), 0);
	assert_true(outs[0].call_known);
	// Every edge of every range.
	static const struct {
		Ringbid__OutcomeKind kind;
		int32_t value;
	} edges[] = {
	        {RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 1},
	        {RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 5},
	        {RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, 0},
	        {RINGBID__OUTCOME_KIND__OUTCOME_SALE, 1},
	        {RINGBID__OUTCOME_KIND__OUTCOME_QA, 0},
	        {RINGBID__OUTCOME_KIND__OUTCOME_QA, 100},
	};
	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
		make(1);
		outs[0].kind = edges[i].kind;
		outs[0].value = edges[i].value;
		if (edges[i].kind == RINGBID__OUTCOME_KIND__OUTCOME_QA)
			outs[0].reviewer = (char *)"sup.7";
		assert_int_equal(broker_outcomes_check(&ro, NOW, true, why, sizeof(why)), 0);
	}
	// Sixteen of one call, each (kind, reviewer) once.
	make(BROKER_OUTCOMES_MAX);
	assert_int_equal(broker_outcomes_check(&ro, NOW, true, why, sizeof(why)), 0);
}

static void test_check_refuses(void **state)
{
	(void)state;
	make(0);
	expect_refused("outcomes");
	make(BROKER_OUTCOMES_MAX + 1);
	expect_refused("at most 16");

	make(2);
	outs[1].call_id = (char *)"bad id";
	expect_refused("outcomes[1].call_id");
	make(2);
	outs[0].call_id = (char *)"";
	expect_refused("outcomes[0].call_id");
	make(2);
	outs[1].call_id = (char *)"c-2";
	expect_refused("outcomes[1].call_id differs");

	make(1);
	outs[0].kind = RINGBID__OUTCOME_KIND__OUTCOME_NONE;
	expect_refused("outcomes[0].kind");
	make(1);
	outs[0].kind = (Ringbid__OutcomeKind)9;
	expect_refused("outcomes[0].kind");

	static const struct {
		Ringbid__OutcomeKind kind;
		int32_t value;
		const char *said;
	} out_of_range[] = {
	        {RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 0, "survey score is 1-5 (got 0)"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 6, "survey score is 1-5 (got 6)"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, 2, "resolved is 0"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, -1, "resolved is 0"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_SALE, 2, "sale is 0"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_QA, 101, "QA review is 0-100 (got 101)"},
	        {RINGBID__OUTCOME_KIND__OUTCOME_QA, -1, "QA review is 0-100 (got -1)"},
	};
	for (size_t i = 0; i < sizeof(out_of_range) / sizeof(out_of_range[0]); i++) {
		make(1);
		outs[0].kind = out_of_range[i].kind;
		outs[0].value = out_of_range[i].value;
		if (out_of_range[i].kind == RINGBID__OUTCOME_KIND__OUTCOME_QA)
			outs[0].reviewer = (char *)"sup-1";
		expect_refused("outcomes[0].value");
		expect_refused(out_of_range[i].said);
	}

	// A QA review needs a reviewer id; nothing else may have one.
	make(4);
	outs[3].reviewer = (char *)"";
	expect_refused("outcomes[3].reviewer");
	make(4);
	outs[3].reviewer = (char *)"not an id";
	expect_refused("outcomes[3].reviewer");
	make(1);
	outs[0].reviewer = (char *)"sup-1";
	expect_refused("outcomes[0].reviewer must be empty for a survey");

	make(2);
	outs[1].recorded_us = NOW - 401 * DAY;
	expect_refused("outcomes[1].recorded_us");
	make(2);
	outs[1].recorded_us = NOW + 5 * MINUTE + 1;
	expect_refused("outcomes[1].recorded_us");

	// One value per (kind, reviewer) in a request; two reviewers may each review.
	make(3);
	outs[2].kind = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY;
	outs[2].value = 4;
	expect_refused("outcomes[2] repeats outcomes[0]");
	make(5);
	outs[4].reviewer = outs[3].reviewer;
	expect_refused("outcomes[4] repeats outcomes[3]");
}

// --- forwarding ---------------------------------------------------------------------------

typedef enum {
	BILLING_ACK,     // acknowledges each outcome; sales are duplicates
	BILLING_REFUSE,  // refuses the batch: unknown call
	BILLING_SILENT,  // never answers
	BILLING_SHORT,   // acknowledges fewer outcomes than it got
	BILLING_GARBAGE, // answers bytes that are no CdrAck
} billing_mode;

static uv_loop_t loop;
static rb_bus *billing, *api, *client;
static broker_outcomes fwd;
static billing_mode mode;
static int batches;        // batches billing received
static size_t last_n;      // outcomes in the last one
static bool last_known;    // call_known of its first outcome
static bool last_has_time; // every recorded_us was set
static bool last_has_cdrs; // a CDR came along (never should)
static rb_bus_req *held[BROKER_OUTCOMES_INFLIGHT + 8];
static int nheld;
static int url_seq;

static void billing_request(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	(void)bus;
	(void)arg;
	Ringbid__CdrBatch *in = NULL;
	assert_int_equal(rb_pb_unpack_msg(&ringbid__cdr_batch__descriptor, msg, RB_PB_MAX_SERVICE,
	                                  (ProtobufCMessage **)&in),
	                 0);
	nng_msg_free(msg);
	assert_string_equal(in->token, TOKEN);
	batches++;
	last_n = in->n_outcomes;
	last_has_cdrs = in->n_cdrs != 0;
	last_known = in->n_outcomes > 0 && in->outcomes[0]->call_known;
	last_has_time = true;
	for (size_t i = 0; i < in->n_outcomes; i++)
		last_has_time = last_has_time && in->outcomes[i]->recorded_us != 0;

	Ringbid__CdrAck ack = RINGBID__CDR_ACK__INIT;
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	Ringbid__OutcomeAck acks[BROKER_OUTCOMES_MAX];
	Ringbid__OutcomeAck *ackp[BROKER_OUTCOMES_MAX];
	nng_msg *out = NULL;
	switch (mode) {
	case BILLING_SILENT:
		assert_true(nheld < (int)(sizeof(held) / sizeof(held[0])));
		held[nheld++] = req;
		rb_pb_free(&in->base);
		return;
	case BILLING_GARBAGE:
		assert_int_equal(nng_msg_alloc(&out, 0), 0);
		assert_int_equal(nng_msg_append(out, "\xff\xff\xff", 3), 0);
		rb_bus_reply(req, out);
		rb_pb_free(&in->base);
		return;
	case BILLING_REFUSE:
		er.code = RB_ENOTFOUND;
		er.message = (char *)"unknown call c-1";
		ack.error = &er;
		break;
	case BILLING_ACK:
	case BILLING_SHORT:
		for (size_t i = 0; i < in->n_outcomes; i++) {
			ringbid__outcome_ack__init(&acks[i]);
			acks[i].call_id = in->outcomes[i]->call_id;
			acks[i].kind = in->outcomes[i]->kind;
			acks[i].reviewer = in->outcomes[i]->reviewer;
			acks[i].duplicate =
			        in->outcomes[i]->kind == RINGBID__OUTCOME_KIND__OUTCOME_SALE;
			ackp[i] = &acks[i];
		}
		ack.n_outcomes = in->n_outcomes - (mode == BILLING_SHORT ? 1 : 0);
		ack.outcomes = ackp;
		break;
	}
	assert_int_equal(rb_pb_pack(&ack.base, RB_PB_MAX_SERVICE, &out), 0);
	rb_bus_reply(req, out);
	rb_pb_free(&in->base);
}

// The call API's part: check, then forward or refuse at once (as api.c does).
static void api_request(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	(void)bus;
	(void)arg;
	Ringbid__CallRequest *r = NULL;
	assert_int_equal(rb_pb_unpack_msg(&ringbid__call_request__descriptor, msg,
	                                  RB_PB_MAX_DEFAULT, (ProtobufCMessage **)&r),
	                 0);
	nng_msg_free(msg);
	char text[BROKER_OUTCOME_WHY_MAX] = "busy";
	int rc = broker_outcomes_check(r->outcomes, rb_now_us(), true, text, sizeof(text));
	if (rc == 0)
		rc = broker_outcomes_forward(&fwd, req, r->outcomes);
	if (rc != 0) {
		Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
		er.code = rc;
		er.message = text;
		Ringbid__CallReply reply = RINGBID__CALL_REPLY__INIT;
		reply.error = &er;
		nng_msg *out = NULL;
		assert_int_equal(rb_pb_pack(&reply.base, RB_PB_MAX_DEFAULT, &out), 0);
		rb_bus_reply(req, out);
	}
	rb_pb_free(&r->base);
}

typedef struct answer {
	bool done;
	int err;
	Ringbid__CallReply *reply;
	uint64_t at_ms; // loop time of the answer
} answer;

static void client_reply(rb_bus *bus, int err, nng_msg *msg, void *arg)
{
	(void)bus;
	answer *a = arg;
	a->err = err;
	a->at_ms = uv_now(&loop);
	if (msg != NULL) {
		assert_int_equal(rb_pb_unpack_msg(&ringbid__call_reply__descriptor, msg,
		                                  RB_PB_MAX_DEFAULT,
		                                  (ProtobufCMessage **)&a->reply),
		                 0);
		nng_msg_free(msg);
	}
	a->done = true;
}

static void ask(size_t n, answer *a)
{
	memset(a, 0, sizeof(*a));
	Ringbid__CallRequest r = RINGBID__CALL_REQUEST__INIT;
	r.token = (char *)TOKEN;
	r.body_case = RINGBID__CALL_REQUEST__BODY_OUTCOMES;
	r.outcomes = make(n);
	nng_msg *msg = NULL;
	assert_int_equal(rb_pb_pack(&r.base, RB_PB_MAX_DEFAULT, &msg), 0);
	assert_int_equal(rb_bus_request(client, msg, 20000, client_reply, a), 0);
}

static void wait_answers(answer *a, size_t n)
{
	for (int i = 0; i < 1000000; i++) {
		size_t done = 0;
		for (size_t k = 0; k < n; k++)
			done += a[k].done;
		if (done == n)
			return;
		uv_run(&loop, UV_RUN_ONCE);
	}
	fail_msg("answers did not come");
}

static void free_answer(answer *a)
{
	if (a->reply)
		rb_pb_free(&a->reply->base);
	a->reply = NULL;
}

static int fwd_setup(void **state)
{
	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	char billing_url[64], api_url[64];
	url_seq++;
	snprintf(billing_url, sizeof(billing_url), "inproc://outcomes-billing-%d", url_seq);
	snprintf(api_url, sizeof(api_url), "inproc://outcomes-api-%d", url_seq);
	rb_bus_opts rep = {.recv_max = RB_PB_MAX_SERVICE, .rep_parallel = 128, .name = "billing"};
	assert_int_equal(rb_bus_new(&loop, RB_BUS_REP, &rep, &billing), 0);
	rb_bus_on_request(billing, billing_request, NULL);
	assert_int_equal(rb_bus_listen(billing, billing_url), 0);
	rep.name = "api";
	assert_int_equal(rb_bus_new(&loop, RB_BUS_REP, &rep, &api), 0);
	rb_bus_on_request(api, api_request, NULL);
	assert_int_equal(rb_bus_listen(api, api_url), 0);
	rb_bus_opts req = {.recv_max = RB_PB_MAX_SERVICE, .req_resend_ms = 600000, .name = "tel"};
	assert_int_equal(rb_bus_new(&loop, RB_BUS_REQ, &req, &client), 0);
	assert_int_equal(rb_bus_dial(client, api_url), 0);
	broker_outcomes_init(&fwd);
	assert_int_equal(broker_outcomes_start(&fwd, &loop, billing_url, TOKEN), 0);
	mode = BILLING_ACK;
	batches = 0;
	nheld = 0;
	return 0;
}

static int fwd_teardown(void **state)
{
	(void)state;
	broker_outcomes_fini(&fwd);
	rb_bus_free(client);
	rb_bus_free(api);
	rb_bus_free(billing);
	for (int i = 0; i < nheld; i++)
		rb_bus_reply_drop(held[i]);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	return 0;
}

static void test_forward_acknowledged(void **state)
{
	(void)state;
	answer a;
	ask(4, &a);
	wait_answers(&a, 1);
	assert_int_equal(a.err, 0);
	assert_non_null(a.reply);
	assert_null(a.reply->error);
	assert_int_equal(a.reply->n_outcomes, 4);
	assert_string_equal(a.reply->outcomes[3]->reviewer, "sup-1");
	assert_int_equal(a.reply->outcomes[3]->kind, RINGBID__OUTCOME_KIND__OUTCOME_QA);
	assert_false(a.reply->outcomes[0]->duplicate);
	assert_true(a.reply->outcomes[2]->duplicate); // billing had the sale already
	free_answer(&a);
	// One batch of outcomes only, with the broker's fields filled in.
	assert_int_equal(batches, 1);
	assert_int_equal(last_n, 4);
	assert_false(last_has_cdrs);
	assert_true(last_known);
	assert_true(last_has_time);
	assert_int_equal(broker_outcomes_unanswered(&fwd), 0);
}

static void test_forward_refused(void **state)
{
	(void)state;
	answer a;
	mode = BILLING_REFUSE;
	ask(2, &a);
	wait_answers(&a, 1);
	assert_non_null(a.reply->error);
	assert_int_equal(a.reply->error->code, RB_ENOTFOUND);
	assert_string_equal(a.reply->error->message, "unknown call c-1");
	assert_int_equal(a.reply->n_outcomes, 0);
	free_answer(&a);
	// An answer that does not cover what was sent, or does not decode: send again.
	mode = BILLING_SHORT;
	ask(3, &a);
	wait_answers(&a, 1);
	assert_int_equal(a.reply->error->code, RB_EBUSY);
	assert_string_equal(a.reply->error->message, "billing did not answer; send again");
	free_answer(&a);
	mode = BILLING_GARBAGE;
	ask(1, &a);
	wait_answers(&a, 1);
	assert_int_equal(a.reply->error->code, RB_EBUSY);
	free_answer(&a);
}

// Billing silent: 64 requests wait, the next is turned away at once, and the 64 are answered
// RB_EBUSY when their 5 s are up.
static void test_forward_bound_and_timeout(void **state)
{
	(void)state;
	mode = BILLING_SILENT;
	static answer a[BROKER_OUTCOMES_INFLIGHT + 1];
	uint64_t start = uv_now(&loop);
	for (int i = 0; i < BROKER_OUTCOMES_INFLIGHT; i++)
		ask(1, &a[i]);
	for (int i = 0; i < 1000000 && broker_outcomes_unanswered(&fwd) < BROKER_OUTCOMES_INFLIGHT;
	     i++)
		uv_run(&loop, UV_RUN_ONCE);
	assert_int_equal(broker_outcomes_unanswered(&fwd), BROKER_OUTCOMES_INFLIGHT);
	ask(1, &a[BROKER_OUTCOMES_INFLIGHT]);
	wait_answers(&a[BROKER_OUTCOMES_INFLIGHT], 1);
	assert_int_equal(a[BROKER_OUTCOMES_INFLIGHT].reply->error->code, RB_EBUSY);
	assert_true(a[BROKER_OUTCOMES_INFLIGHT].at_ms - start < BROKER_OUTCOMES_TIMEOUT_MS);
	wait_answers(a, BROKER_OUTCOMES_INFLIGHT);
	for (int i = 0; i <= BROKER_OUTCOMES_INFLIGHT; i++) {
		assert_int_equal(a[i].err, 0);
		assert_int_equal(a[i].reply->error->code, RB_EBUSY);
		if (i < BROKER_OUTCOMES_INFLIGHT) {
			assert_string_equal(a[i].reply->error->message,
			                    "billing did not answer; send again");
			assert_true(a[i].at_ms - start >= BROKER_OUTCOMES_TIMEOUT_MS - 100);
		}
		free_answer(&a[i]);
	}
	assert_int_equal(broker_outcomes_unanswered(&fwd), 0);
	assert_int_equal(batches, BROKER_OUTCOMES_INFLIGHT);
}

static int idle_calls;
static void on_idle(broker_outcomes *o, void *arg)
{
	(void)o;
	(void)arg;
	idle_calls++;
}

// Shutdown: waiting requests are answered at once when the broker gives up on billing, and
// the idle hook tells when the last answer went out.
static void test_forward_abort_and_idle(void **state)
{
	(void)state;
	idle_calls = 0;
	broker_outcomes_on_idle(&fwd, on_idle, NULL);
	answer a[2];
	ask(1, &a[0]);
	wait_answers(&a[0], 1);
	assert_int_equal(idle_calls, 1);
	free_answer(&a[0]);

	mode = BILLING_SILENT;
	ask(1, &a[0]);
	ask(2, &a[1]);
	for (int i = 0; i < 1000000 && nheld < 2; i++)
		uv_run(&loop, UV_RUN_ONCE);
	assert_int_equal(broker_outcomes_unanswered(&fwd), 2);
	broker_outcomes_abort(&fwd, RB_EBUSY, "the broker is stopping; send again");
	assert_int_equal(broker_outcomes_unanswered(&fwd), 0);
	wait_answers(a, 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(a[i].reply->error->code, RB_EBUSY);
		assert_string_equal(a[i].reply->error->message,
		                    "the broker is stopping; send again");
		free_answer(&a[i]);
	}
	// Closing completes the billing requests without a second answer.
	broker_outcomes_fini(&fwd);
	assert_int_equal(fwd.inflight, 0);
	answer late;
	ask(1, &late);
	wait_answers(&late, 1);
	assert_int_equal(late.reply->error->code, RB_ECLOSED);
	free_answer(&late);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_check_accepts),
	        cmocka_unit_test(test_check_refuses),
	        cmocka_unit_test_setup_teardown(test_forward_acknowledged, fwd_setup, fwd_teardown),
	        cmocka_unit_test_setup_teardown(test_forward_refused, fwd_setup, fwd_teardown),
	        cmocka_unit_test_setup_teardown(test_forward_bound_and_timeout, fwd_setup,
	                                        fwd_teardown),
	        cmocka_unit_test_setup_teardown(test_forward_abort_and_idle, fwd_setup,
	                                        fwd_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
