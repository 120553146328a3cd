// CDR and outcome validation, and the SQL statements that store a batch of either.
#ifndef BILLING_INGEST_H
#define BILLING_INGEST_H
#include <stddef.h>
#include <stdint.h>
#include "ringbid.pb-c.h"

#define BILLING_MAX_BATCH         5000
#define BILLING_MAX_TALK_S        (24LL * 3600) // a call longer than a day is not a call
#define BILLING_MAX_OFFER_LOG     64            // offers a CDR lists (the broker keeps the oldest)
#define BILLING_MAX_OUTCOMES      16            // outcomes in one RecordOutcomes request
#define BILLING_OUTCOME_PAST_US   (400ULL * 86400 * 1000000) // oldest recorded time accepted
#define BILLING_OUTCOME_FUTURE_US (5ULL * 60 * 1000000)      // clocks may be a little ahead

// Checks one CDR's fields for sense (ids, disposition, time order, talk seconds matching the
// timestamps). Returns NULL when it may be stored, else a static reason text.
const char *billing_cdr_invalid(const Ringbid__Cdr *cdr);

// Hex BLAKE2b-256 of the CDR's protobuf encoding into out (65 bytes). protobuf-c packs fields
// in a fixed order, so the same content always hashes the same. Returns 0 or RB_ENOMEM.
int billing_cdr_hash(const Ringbid__Cdr *cdr, char out[65]);

// Builds the JSON parameter of BILLING_INGEST_SQL for cdrs[0..n): valid ones with their hash,
// invalid ones with their reason, each with its exploration flag and offer log ("offer_log":
// [{"agent_id", "offered_us", "result"}], oldest first). *out is the caller's (free()).
// Returns 0 or RB_ENOMEM.
int billing_batch_json(Ringbid__Cdr *const *cdrs, size_t n, char **out);

// $1: the batch JSON. One statement (billing.ingest_cdrs), so the batch is stored atomically and
// never interleaves with a pay period's close: returns one row per CDR (cdr_id, outcome
// 'stored'|'quarantined'|'refused', reason).
extern const char BILLING_INGEST_SQL[];

// ---- outcomes (a CdrBatch carrying the outcomes of one RecordOutcomes request)

// Checks every field of out[0..n) as PostgreSQL will, against the wall clock now_us: 1..16
// outcomes, all of one valid call id; survey 1..5, resolved and sale 0..1, QA 0..100 with a
// reviewer id (rb_valid_id), no reviewer on other kinds; recorded_us 0 or within
// [now - 400 days, now + 5 min]. Returns 0, or RB_EINVAL / RB_ETOOBIG with the reason, naming
// the field, written into why (n bytes, always terminated).
int billing_outcomes_check(Ringbid__Outcome *const *out, size_t n, uint64_t now_us, char *why,
                           size_t why_n);

// Builds the JSON parameter of BILLING_OUTCOMES_SQL for out[0..n) (checked first): one object
// per outcome with call_id, kind (its name), value, reviewer, recorded_us (0: PostgreSQL's
// now()) and call_known. *json is the caller's (free()). Returns 0 or RB_ENOMEM.
int billing_outcomes_json(Ringbid__Outcome *const *out, size_t n, char **json);

// The code of a refusal raised by billing.record_outcomes (by its SQLSTATE): RB_ENOTFOUND
// (unknown call), RB_ECONFLICT (stored before with another value), RB_EINVAL (a field out of
// range); 0 when the failure is not a refusal (the database failed: the sender should resend).
int billing_outcome_refusal(const char *sqlstate);

// $1: the outcomes JSON. One statement (billing.record_outcomes), all stored or none: one row
// per outcome in request order (call_id, kind, reviewer, duplicate 't'|'f').
extern const char BILLING_OUTCOMES_SQL[];

#endif
