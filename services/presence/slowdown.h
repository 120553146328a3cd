// Login slowdown: failures in a row per key (an agent id, or a client connection), and the
// backoff window during which further attempts are refused without checking the secret.
#ifndef PRESENCE_SLOWDOWN_H
#define PRESENCE_SLOWDOWN_H
#include <stdint.h>

#define PRESENCE_SLOWDOWN_BASE_US 1000000ULL  // first window after max_fails failures
#define PRESENCE_SLOWDOWN_MAX_US  60000000ULL // the window never grows beyond this
// A key with no failure for this long starts afresh ("in a row" is broken by the pause).
#define PRESENCE_SLOWDOWN_KEEP_US (15ULL * 60 * 1000000)

typedef struct presence_slowdown presence_slowdown;

// The backoff window after fails failures in a row: 0 below max_fails, then 1 s doubling per
// extra failure, at most 60 s.
uint64_t presence_slowdown_window_us(uint32_t fails, uint32_t max_fails);

// Creates an empty table; max_fails is the number of failures allowed before slowing down
// (at least 1), max_keys bounds the memory (the stalest key is dropped beyond it). On success
// *out is the caller's (presence_slowdown_free).
int presence_slowdown_new(uint32_t max_fails, uint32_t max_keys, presence_slowdown **out);
// Frees the table. NULL is fine.
void presence_slowdown_free(presence_slowdown *sd);

// Returns 0 when an attempt for key may be checked at now_us (monotonic), or RB_ESLOWDOWN with
// the remaining wait in *wait_us (may be NULL).
int presence_slowdown_check(const presence_slowdown *sd, uint64_t key, uint64_t now_us,
                            uint64_t *wait_us);
// Records a failed check for key at now_us. Returns 0 or RB_ENOMEM (nothing recorded).
int presence_slowdown_fail(presence_slowdown *sd, uint64_t key, uint64_t now_us);
// A successful check: key starts afresh.
void presence_slowdown_forget(presence_slowdown *sd, uint64_t key);
// Failures in a row recorded for key (0 when none).
uint32_t presence_slowdown_fails(const presence_slowdown *sd, uint64_t key);
// Drops keys whose last failure is older than PRESENCE_SLOWDOWN_KEEP_US. Cost is the number of
// keys dropped: keys are kept in order of their last failure.
void presence_slowdown_expire(presence_slowdown *sd, uint64_t now_us);
// Number of keys held.
uint32_t presence_slowdown_count(const presence_slowdown *sd);

#endif
