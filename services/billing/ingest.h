// CDR validation and the one SQL statement that stores a batch of them.
#ifndef BILLING_INGEST_H
#define BILLING_INGEST_H
#include <stddef.h>
#include "ringbid.pb-c.h"

#define BILLING_MAX_BATCH  5000
#define BILLING_MAX_TALK_S (24LL * 3600) // a call longer than a day is not a call

// Checks one CDR's fields for sense (ids, disposition, time order, talk seconds matching the
// timestamps). Returns NULL when it may be stored, else a static reason text.
const char *billing_cdr_invalid(const Ringbid__Cdr *cdr);

// Hex BLAKE2b-256 of the CDR's protobuf encoding into out (65 bytes). protobuf-c packs fields
// in a fixed order, so the same content always hashes the same. Returns 0 or RB_ENOMEM.
int billing_cdr_hash(const Ringbid__Cdr *cdr, char out[65]);

// Builds the JSON parameter of BILLING_INGEST_SQL for cdrs[0..n): valid ones with their hash,
// invalid ones with their reason. *out is the caller's (free()). Returns 0 or RB_ENOMEM.
int billing_batch_json(Ringbid__Cdr *const *cdrs, size_t n, char **out);

// $1: the batch JSON. One statement (billing.ingest_cdrs), so the batch is stored atomically and
// never interleaves with a pay period's close: returns one row per CDR (cdr_id, outcome
// 'stored'|'quarantined'|'refused', reason).
extern const char BILLING_INGEST_SQL[];

#endif
