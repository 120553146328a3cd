// The scheduled score recompute: billing.recompute_scores every interval, from the janitor.
#include "scores.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"

const char BILLING_SCORES_SQL[] =
        "SELECT billing.recompute_scores(make_interval(days => $1::int), now(), $2::int)";

int billing_scores_init(billing_scores *s, rb_db *const *db, uint64_t now_mono_us)
{
	long long interval_s, window, min_calls;

	if (rb_config_int("RINGBID_SCORE_INTERVAL_S", BILLING_SCORE_INTERVAL_S_DEF, 0, 86400,
	                  &interval_s) != 0 ||
	    rb_config_int("RINGBID_SCORE_WINDOW_DAYS", BILLING_SCORE_WINDOW_DEF, 1, 400, &window) !=
	            0 ||
	    rb_config_int("RINGBID_SCORE_MIN_CALLS", BILLING_SCORE_MIN_CALLS_DEF, 1, 100000,
	                  &min_calls) != 0)
		return RB_ECONFIG;
	*s = (billing_scores){
	        .db = db,
	        .interval_us = (uint64_t)interval_s * 1000000,
	        .window_days = (int)window,
	        .min_calls = (int)min_calls,
	        .next_us = now_mono_us + (uint64_t)interval_s * 1000000,
	};
	s->m_runs = rb_metrics_counter("ringbid_score_recomputes_total", NULL,
	                               "scheduled score recomputes committed");
	s->m_failed = rb_metrics_counter("ringbid_score_recompute_failures_total", NULL,
	                                 "scheduled score recomputes PostgreSQL did not commit");
	s->m_last = rb_metrics_gauge("ringbid_score_last_recompute_timestamp_seconds", NULL,
	                             "when the last scheduled recompute committed (Unix time)");
	s->m_changed = rb_metrics_gauge("ringbid_score_last_recompute_changed", NULL,
	                                "agents whose scores the last recompute changed");
	return 0;
}

bool billing_scores_due(const billing_scores *s, uint64_t now_mono_us)
{
	return s->interval_us > 0 && !s->running && now_mono_us >= s->next_us;
}

void billing_scores_done(billing_scores *s, int err, const char *changed, const char *sqlstate,
                         const char *message, uint64_t now_mono_us)
{
	double secs = (double)(now_mono_us - s->started_us) / 1e6;

	s->running = false;
	if (err == RB_ECLOSED) {
		rb_info("score recompute abandoned: the service is stopping");
		return;
	}
	if (err != 0) {
		rb_metric_inc(s->m_failed);
		rb_error("score recompute failed after %.1f s (sqlstate %s): %s; next try in "
		         "%" PRIu64 " s",
		         secs, sqlstate && *sqlstate ? sqlstate : "none",
		         message && *message ? message : rb_err_str(err), s->interval_us / 1000000);
		return;
	}
	rb_metric_inc(s->m_runs);
	rb_metric_set(s->m_last, (double)(rb_now_us() / 1000000));
	rb_metric_set(s->m_changed, changed ? strtod(changed, NULL) : 0);
	rb_info("scores recomputed over the last %d days in %.1f s: %s agent(s) changed",
	        s->window_days, secs, changed && *changed ? changed : "0");
}

static void on_recomputed(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	billing_scores *s = arg;
	const char *changed = NULL, *message = NULL;

	if (err == 0 && res != NULL && PQntuples(res) == 1)
		changed = PQgetvalue(res, 0, 0);
	else if (res != NULL)
		message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (err == 0 && changed == NULL)
		err = RB_EDB;
	billing_scores_done(s, err, changed, sqlstate, message, rb_mono_us());
}

void billing_scores_tick(billing_scores *s, uint64_t now_mono_us)
{
	char window[16], min_calls[16];
	const char *params[2] = {window, min_calls};
	rb_db *db = s->db ? *s->db : NULL;
	int rv;

	if (!billing_scores_due(s, now_mono_us) || db == NULL || !rb_db_connected(db))
		return;
	snprintf(window, sizeof(window), "%d", s->window_days);
	snprintf(min_calls, sizeof(min_calls), "%d", s->min_calls);
	rv = rb_db_query(db, BILLING_SCORES_SQL, 2, params, on_recomputed, s);
	if (rv != 0) {
		rb_warn("could not queue the score recompute: %s; trying again in a second",
		        rb_err_str(rv));
		return;
	}
	s->running = true;
	s->started_us = now_mono_us;
	s->next_us = now_mono_us + s->interval_us;
}
