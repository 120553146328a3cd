// CDR validation and the one SQL statement that stores a batch of them.
#include "ingest.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
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

static const char *disposition_name(Ringbid__Disposition d)
{
	switch (d) {
	case RINGBID__DISPOSITION__DISP_COMPLETED:
		return "completed";
	case RINGBID__DISPOSITION__DISP_ABANDONED:
		return "abandoned";
	case RINGBID__DISPOSITION__DISP_OVERFLOW:
		return "overflow";
	default:
		return "none";
	}
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
	json_object_set_new(o, "disposition", json_string(disposition_name(c->disposition)));
	json_object_set_new(o, "sale", json_boolean(c->sale));
	json_object_set_new(o, "review", json_boolean(c->review));
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

// One statement: every CTE sees the table as it was before the statement, so "conflict" means
// an earlier stored CDR with the same id and another hash. Invalid CDRs and conflicts go to the
// quarantine with their reason; everything else is inserted once (ON CONFLICT DO NOTHING makes
// a resend a no-op).
const char BILLING_INGEST_SQL[] =
        "WITH input AS ("
        " SELECT DISTINCT ON (cdr_id) * FROM jsonb_to_recordset($1::jsonb) AS r("
        "  cdr_id text, call_id text, program text, agent_id bigint, arrived_us bigint,"
        "  offered_us bigint, answered_us bigint, ended_us bigint, talk_s bigint,"
        "  disposition text, sale boolean, review boolean, offers int, hash text, reason text)"
        " ORDER BY cdr_id),"
        " checked AS ("
        " SELECT i.*, coalesce(i.reason,"
        "   CASE WHEN p.id IS NULL THEN 'unknown program'"
        "        WHEN i.agent_id IS NOT NULL AND a.id IS NULL THEN 'unknown agent'"
        "        WHEN s.cdr_id IS NOT NULL AND s.payload_hash <> decode(i.hash, 'hex')"
        "          THEN 'same cdr id with different content' END) AS why,"
        "   (i.reason IS NULL AND p.id IS NOT NULL AND (i.agent_id IS NULL OR a.id IS NOT NULL)"
        "    AND s.cdr_id IS NOT NULL AND s.payload_hash <> decode(i.hash, 'hex')) AS conflict"
        " FROM input i"
        " LEFT JOIN roster.programs p ON p.id = i.program"
        " LEFT JOIN roster.agents a ON a.id = i.agent_id"
        " LEFT JOIN billing.cdrs s ON s.cdr_id = i.cdr_id),"
        " ins AS ("
        " INSERT INTO billing.cdrs (cdr_id, call_id, program, agent_id, arrived_at, offered_at,"
        "  answered_at, ended_at, talk_s, disposition, sale, review, offers, payload_hash)"
        " SELECT cdr_id, call_id, program, agent_id,"
        "  'epoch'::timestamptz + arrived_us * interval '1 microsecond',"
        "  'epoch'::timestamptz + offered_us * interval '1 microsecond',"
        "  'epoch'::timestamptz + answered_us * interval '1 microsecond',"
        "  'epoch'::timestamptz + ended_us * interval '1 microsecond',"
        "  talk_s, disposition, sale, review, offers, decode(hash, 'hex')"
        " FROM checked WHERE why IS NULL"
        " ON CONFLICT (cdr_id) DO NOTHING RETURNING cdr_id),"
        " quar AS ("
        " INSERT INTO billing.cdr_quarantine (cdr_id, reason, payload_hash, payload)"
        " SELECT cdr_id, why, decode(hash, 'hex'), to_jsonb(checked) - 'why' - 'conflict'"
        " FROM checked WHERE why IS NOT NULL"
        " ON CONFLICT (cdr_id, payload_hash) DO NOTHING RETURNING cdr_id)"
        " SELECT cdr_id, CASE WHEN why IS NULL THEN 'stored'"
        "  WHEN conflict THEN 'quarantined' ELSE 'refused' END, coalesce(why, '')"
        " FROM checked ORDER BY cdr_id";
