// The scheduled score recompute: billing.recompute_scores every interval, from the janitor.
#ifndef BILLING_SCORES_H
#define BILLING_SCORES_H
#include <stdbool.h>
#include <stdint.h>
#include "rb_db.h"
#include "rb_metrics.h"

#define BILLING_SCORE_INTERVAL_S_DEF 300 // RINGBID_SCORE_INTERVAL_S; 0 turns the schedule off
#define BILLING_SCORE_WINDOW_DEF     30  // RINGBID_SCORE_WINDOW_DAYS
#define BILLING_SCORE_MIN_CALLS_DEF  20  // RINGBID_SCORE_MIN_CALLS

typedef struct billing_scores {
	rb_db *const *db;     // the service's connection; NULL while stopping
	uint64_t interval_us; // 0: no scheduled recompute
	int window_days;
	int min_calls;
	uint64_t next_us; // monotonic time the next recompute is due
	bool running;     // one in flight at a time
	uint64_t started_us;
	rb_metric *m_runs, *m_failed, *m_last, *m_changed;
} billing_scores;

// Reads RINGBID_SCORE_INTERVAL_S (0..86400), RINGBID_SCORE_WINDOW_DAYS (1..400) and
// RINGBID_SCORE_MIN_CALLS (1..100000), and registers the metrics. The first recompute is due
// one interval after now_mono_us. s must outlive every query it starts (it is the service's);
// *db is read at each run. Returns 0 or RB_ECONFIG (a variable out of range, logged).
int billing_scores_init(billing_scores *s, rb_db *const *db, uint64_t now_mono_us);

// Called by the janitor: starts a recompute when one is due, none is running and the database
// is connected (otherwise it tries again at the next call). Never blocks: the query runs
// through rb_db and its result is logged when it arrives.
void billing_scores_tick(billing_scores *s, uint64_t now_mono_us);

// ---- exported for the unit tests

// True when a recompute should start now.
bool billing_scores_due(const billing_scores *s, uint64_t now_mono_us);
// Ends the recompute in flight: err 0 with changed (the function's result as text), else a
// failure (sqlstate, message) logged at error level. The next one stays due at its time.
void billing_scores_done(billing_scores *s, int err, const char *changed, const char *sqlstate,
                         const char *message, uint64_t now_mono_us);

// $1: window in whole days, $2: the minimum calls for an overall score.
extern const char BILLING_SCORES_SQL[];

#endif
