// CDR validation and the one SQL statement that stores a batch of them.
#include "ingest.h"

#include <jansson.h>
#include <sodium.h>
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
	return NULL;
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
