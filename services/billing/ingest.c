// CDR and outcome validation, and the SQL statements that store a batch of either.
#include "ingest.h"

#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_names.h"
#include "rb_pb.h"

// 2000-01-01 and 2100-01-01 in UTC microseconds: anything outside is a broken clock or a forgery.
#define MIN_US 946684800000000ULL
#define MAX_US 4102444800000000ULL

static int in_range(uint64_t us)
{
	return us >= MIN_US && us < MAX_US;
}

static const char *offer_result_name(int result)
{
	switch (result) {
	case RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED:
		return "accepted";
	case RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED:
		return "declined";
	case RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT:
		return "timeout";
	case RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST:
		return "agent_lost";
	case RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED:
		return "refused";
	default:
		return NULL;
	}
}

// The offer log feeds agents' answer rates, so a broken one is refused with its CDR rather
// than stored as something that never happened.
static const char *offer_log_invalid(const Ringbid__Cdr *c)
{
	if (c->n_offer_log > BILLING_MAX_OFFER_LOG)
		return "offer log longer than 64 offers";
	for (size_t i = 0; i < c->n_offer_log; i++) {
		const Ringbid__CdrOffer *o = c->offer_log[i];

		if (o == NULL || o->agent_id == 0 || o->agent_id > INT64_MAX)
			return "offer log: bad agent id";
		if (o->offered_us < c->arrived_us || o->offered_us > c->ended_us)
			return "offer log: offer time outside the call";
		if (offer_result_name(o->result) == NULL)
			return "offer log: unknown offer result";
	}
	return NULL;
}

const char *billing_cdr_invalid(const Ringbid__Cdr *c)
{
	if (!rb_valid_id(c->cdr_id, 64) || !rb_valid_id(c->call_id, 64))
		return "bad cdr or call id";
	if (strcmp(c->cdr_id, c->call_id) != 0)
		return "cdr id differs from call id";
	if (!rb_valid_id(c->program, 64))
		return "bad program id";
	if (c->agent_id > INT64_MAX)
		return "agent id out of range";
	if (!in_range(c->arrived_us) || !in_range(c->ended_us))
		return "arrival or end time out of range";
	if (c->ended_us < c->arrived_us)
		return "ends before it arrived";
	if (c->offered_us != 0 && (c->offered_us < c->arrived_us || c->offered_us > c->ended_us))
		return "offer time outside the call";
	switch (c->disposition) {
	case RINGBID__DISPOSITION__DISP_COMPLETED:
		if (c->agent_id == 0)
			return "completed call without an agent";
		if (!in_range(c->answered_us) || c->answered_us < c->arrived_us)
			return "answer time out of range";
		if (c->ended_us < c->answered_us)
			return "ends before it was answered";
		if (c->talk_s > BILLING_MAX_TALK_S)
			return "talk time absurd";
		if (c->talk_s != (c->ended_us - c->answered_us) / 1000000)
			return "talk seconds do not match answer and end times";
		break;
	case RINGBID__DISPOSITION__DISP_ABANDONED:
	case RINGBID__DISPOSITION__DISP_OVERFLOW:
		if (c->answered_us != 0 || c->talk_s != 0)
			return "unanswered call with talk time";
		break;
	default:
		return "unknown disposition";
	}
	if (c->offers > 10000)
		return "offer count absurd";
	return offer_log_invalid(c);
}

int billing_cdr_hash(const Ringbid__Cdr *cdr, char out[65])
{
	size_t len = ringbid__cdr__get_packed_size(cdr);
	uint8_t *buf = malloc(len ? len : 1);
	uint8_t h[32];

	if (buf == NULL)
		return RB_ENOMEM;
	ringbid__cdr__pack(cdr, buf);
	crypto_generichash(h, sizeof(h), buf, len, NULL, 0);
	free(buf);
	sodium_bin2hex(out, 65, h, sizeof(h));
	return 0;
}

// A refused CDR keeps whatever it carried (it goes to quarantine as sent), so entries that fail
// validation are written as they came, with an unknown result as its number.
static json_t *offer_log_json(const Ringbid__Cdr *c)
{
	json_t *arr = json_array();

	for (size_t i = 0; arr != NULL && i < c->n_offer_log; i++) {
		const Ringbid__CdrOffer *o = c->offer_log[i];
		const char *name;
		json_t *e;

		if (o == NULL)
			continue;
		name = offer_result_name(o->result);
		e = json_pack("{s:I, s:I, s:o}", "agent_id", (json_int_t)(o->agent_id & INT64_MAX),
		              "offered_us", (json_int_t)(o->offered_us & INT64_MAX), "result",
		              name ? json_string(name) : json_integer(o->result));
		if (e == NULL || json_array_append_new(arr, e) != 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return arr;
}

// Times go to SQL as integers (json_integer is 64-bit): exact, unlike a float of seconds.
static json_t *cdr_json(const Ringbid__Cdr *c, const char *hash, const char *reason)
{
	json_t *o = json_object();

	if (o == NULL)
		return NULL;
	json_object_set_new(o, "cdr_id", json_string(c->cdr_id ? c->cdr_id : ""));
	json_object_set_new(o, "call_id", json_string(c->call_id ? c->call_id : ""));
	json_object_set_new(o, "program", json_string(c->program ? c->program : ""));
	json_object_set_new(o, "agent_id",
	                    c->agent_id && c->agent_id <= INT64_MAX
	                            ? json_integer((json_int_t)c->agent_id)
	                            : json_null());
	json_object_set_new(o, "arrived_us", json_integer((json_int_t)(c->arrived_us & INT64_MAX)));
	json_object_set_new(o, "offered_us",
	                    c->offered_us ? json_integer((json_int_t)(c->offered_us & INT64_MAX))
	                                  : json_null());
	json_object_set_new(o, "answered_us",
	                    c->answered_us ? json_integer((json_int_t)(c->answered_us & INT64_MAX))
	                                   : json_null());
	json_object_set_new(o, "ended_us", json_integer((json_int_t)(c->ended_us & INT64_MAX)));
	json_object_set_new(o, "talk_s", json_integer((json_int_t)(c->talk_s & INT64_MAX)));
	json_object_set_new(o, "disposition", json_string(rb_disposition_name(c->disposition)));
	json_object_set_new(o, "sale", json_boolean(c->sale));
	json_object_set_new(o, "review", json_boolean(c->review));
	json_object_set_new(o, "resolved", json_boolean(c->resolved));
	json_object_set_new(o, "offers", json_integer(c->offers));
	json_object_set_new(o, "exploratory", json_boolean(c->exploratory));
	if (json_object_set_new(o, "offer_log", offer_log_json(c)) != 0) {
		json_decref(o);
		return NULL;
	}
	json_object_set_new(o, "hash", json_string(hash));
	json_object_set_new(o, "reason", reason ? json_string(reason) : json_null());
	return o;
}

int billing_batch_json(Ringbid__Cdr *const *cdrs, size_t n, char **out)
{
	json_t *arr = json_array();
	char hash[65];

	if (arr == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *reason = billing_cdr_invalid(cdrs[i]);
		json_t *o;

		if (billing_cdr_hash(cdrs[i], hash) != 0 ||
		    (o = cdr_json(cdrs[i], hash, reason)) == NULL ||
		    json_array_append_new(arr, o)) {
			json_decref(arr);
			return RB_ENOMEM;
		}
	}
	*out = json_dumps(arr, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(arr);
	return *out ? 0 : RB_ENOMEM;
}

// billing.ingest_cdrs (db/migrations/0003_pay.sql) stores the batch in one statement: it waits
// while a pay period closes, stores each CDR once, quarantines invalid and conflicting ones,
// and marks CDRs of closed periods for payment as LATE in the open one.
const char BILLING_INGEST_SQL[] =
        "SELECT cdr_id, outcome, reason FROM billing.ingest_cdrs($1::jsonb)";

// ---------------------------------------------------------------------------------------------
// Outcomes

// The texts match billing.record_outcomes' own refusals, so a user reads the same reason
// whichever of the two caught the mistake.
static int outcome_check(const Ringbid__Outcome *o, size_t i, const char *call_id, uint64_t now_us,
                         char *why, size_t why_n)
{
	const bool has_reviewer = o->reviewer != NULL && o->reviewer[0] != '\0';

	if (!rb_valid_id(o->call_id, 64)) {
		snprintf(why, why_n, "outcome %zu: bad call id", i + 1);
		return RB_EINVAL;
	}
	if (strcmp(o->call_id, call_id) != 0) {
		snprintf(
		        why, why_n,
		        "outcome %zu: all outcomes of one request must be for one call (%s and %s)",
		        i + 1, call_id, o->call_id);
		return RB_EINVAL;
	}
	switch (o->kind) {
	case RINGBID__OUTCOME_KIND__OUTCOME_SURVEY:
		if (o->value < 1 || o->value > 5) {
			snprintf(why, why_n, "survey score must be 1-5 (got %" PRId32 ")",
			         o->value);
			return RB_EINVAL;
		}
		break;
	case RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED:
	case RINGBID__OUTCOME_KIND__OUTCOME_SALE:
		if (o->value < 0 || o->value > 1) {
			snprintf(why, why_n, "%s must be 0 or 1 (got %" PRId32 ")",
			         rb_outcome_kind_name(o->kind), o->value);
			return RB_EINVAL;
		}
		break;
	case RINGBID__OUTCOME_KIND__OUTCOME_QA:
		if (o->value < 0 || o->value > 100) {
			snprintf(why, why_n, "QA score must be 0-100 (got %" PRId32 ")", o->value);
			return RB_EINVAL;
		}
		break;
	default:
		snprintf(why, why_n, "outcome %zu: unknown kind %d (survey, resolved, sale, qa)",
		         i + 1, (int)o->kind);
		return RB_EINVAL;
	}
	if (o->kind == RINGBID__OUTCOME_KIND__OUTCOME_QA && !rb_valid_id(o->reviewer, 64)) {
		snprintf(why, why_n,
		         "a QA review needs a reviewer id (1-64 of A-Z a-z 0-9 . _ : -)");
		return RB_EINVAL;
	}
	if (o->kind != RINGBID__OUTCOME_KIND__OUTCOME_QA && has_reviewer) {
		snprintf(why, why_n, "only a QA review has a reviewer (%s has one)",
		         rb_outcome_kind_name(o->kind));
		return RB_EINVAL;
	}
	if (o->recorded_us != 0 && ((now_us > BILLING_OUTCOME_PAST_US &&
	                             o->recorded_us < now_us - BILLING_OUTCOME_PAST_US) ||
	                            o->recorded_us > now_us + BILLING_OUTCOME_FUTURE_US)) {
		snprintf(why, why_n,
		         "outcome %zu: recorded time is more than 400 days ago or in the future",
		         i + 1);
		return RB_EINVAL;
	}
	return 0;
}

int billing_outcomes_check(Ringbid__Outcome *const *out, size_t n, uint64_t now_us, char *why,
                           size_t why_n)
{
	int rv;

	if (why_n > 0)
		why[0] = '\0';
	if (n == 0) {
		snprintf(why, why_n, "no outcomes");
		return RB_EINVAL;
	}
	if (n > BILLING_MAX_OUTCOMES) {
		snprintf(why, why_n, "at most %d outcomes per request (got %zu)",
		         BILLING_MAX_OUTCOMES, n);
		return RB_ETOOBIG;
	}
	for (size_t i = 0; i < n; i++) {
		if (out[i] == NULL) {
			snprintf(why, why_n, "outcome %zu: missing", i + 1);
			return RB_EINVAL;
		}
	}
	if (!rb_valid_id(out[0]->call_id, 64)) {
		snprintf(why, why_n, "outcome 1: bad call id");
		return RB_EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if ((rv = outcome_check(out[i], i, out[0]->call_id, now_us, why, why_n)) != 0)
			return rv;
	return 0;
}

int billing_outcomes_json(Ringbid__Outcome *const *out, size_t n, char **json)
{
	json_t *arr = json_array();

	if (arr == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const Ringbid__Outcome *o = out[i];
		const char *kind = rb_outcome_kind_name(o->kind);
		json_t *e = json_pack(
		        "{s:s, s:o, s:i, s:s, s:I, s:b}", "call_id", o->call_id ? o->call_id : "",
		        "kind", kind ? json_string(kind) : json_null(), "value", (int)o->value,
		        "reviewer", o->reviewer ? o->reviewer : "", "recorded_us",
		        (json_int_t)(o->recorded_us & INT64_MAX), "call_known", (int)o->call_known);

		if (e == NULL || json_array_append_new(arr, e) != 0) {
			json_decref(arr);
			return RB_ENOMEM;
		}
	}
	*json = json_dumps(arr, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(arr);
	return *json ? 0 : RB_ENOMEM;
}

int billing_outcome_refusal(const char *sqlstate)
{
	if (sqlstate == NULL)
		return 0;
	if (strcmp(sqlstate, "P0002") == 0)
		return RB_ENOTFOUND;
	if (strcmp(sqlstate, "23505") == 0)
		return RB_ECONFLICT;
	// raised range checks, and the table's own CHECKs and casts as a backstop
	if (strcmp(sqlstate, "22023") == 0 || strcmp(sqlstate, "23514") == 0 ||
	    strcmp(sqlstate, "22P02") == 0 || strcmp(sqlstate, "22003") == 0)
		return RB_EINVAL;
	return 0;
}

// billing.record_outcomes (db/migrations/0005_scores.sql) checks the batch again, refuses it
// whole (unknown call, a conflicting earlier value, a field out of range) or stores it whole.
const char BILLING_OUTCOMES_SQL[] =
        "SELECT call_id, kind, reviewer, duplicate FROM billing.record_outcomes($1::jsonb)";
