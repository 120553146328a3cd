// The simulator's figures and how they are shown.
#include "stats.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include "rb_err.h"
#include "ringbid.pb-c.h"

void sim_summary_calls(sim_summary *s, const sim_call_result *r, size_t n)
{
	uint64_t delay_sum_us = 0;

	s->offered = s->refused = s->answered = s->abandoned = s->overflow = s->open = 0;
	s->completed = s->connected_at_end = s->answered_in_sl = 0;
	for (size_t i = 0; i < n; i++) {
		const sim_call_result *c = &r[i];
		if (!c->known) {
			s->refused++;
			continue;
		}
		s->offered++;
		if (c->answered_us != 0) {
			uint64_t d =
			        c->answered_us > c->arrived_us ? c->answered_us - c->arrived_us : 0;
			s->answered++;
			delay_sum_us += d;
			if (d <= SIM_SERVICE_LEVEL_US)
				s->answered_in_sl++;
			if (c->state == RINGBID__CALL_STATE__CALL_ENDED)
				s->completed++;
			else
				s->connected_at_end++;
		} else if (c->state != RINGBID__CALL_STATE__CALL_ENDED) {
			s->open++;
		} else if (c->disposition == RINGBID__DISPOSITION__DISP_OVERFLOW) {
			s->overflow++;
		} else {
			s->abandoned++;
		}
	}
	s->service_level = s->answered ? (double)s->answered_in_sl / (double)s->answered : 0.0;
	s->asa_ms = s->answered ? delay_sum_us / s->answered / 1000 : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t sim_percentile(const uint64_t *sorted, size_t n, double p)
{
	if (n == 0)
		return 0;
	if (p <= 0)
		return sorted[0];
	if (p >= 1)
		return sorted[n - 1];
	// Nearest rank: the smallest value with at least p of the values at or below it.
	double rank = p * (double)n;
	size_t k = (size_t)rank;
	if ((double)k < rank)
		k++;
	return sorted[k == 0 ? 0 : k - 1];
}

void sim_summary_dispatch(sim_summary *s, uint64_t *lat_us, size_t n)
{
	if (n > 1)
		qsort(lat_us, n, sizeof(*lat_us), cmp_u64);
	s->dispatch_n = n;
	s->dispatch_p50_ms = (double)sim_percentile(lat_us, n, 0.50) / 1000.0;
	s->dispatch_p99_ms = (double)sim_percentile(lat_us, n, 0.99) / 1000.0;
	s->dispatch_max_ms = n ? (double)lat_us[n - 1] / 1000.0 : 0.0;
}

void sim_summary_occupancy(sim_summary *s, const uint64_t state_ms[SIM_NSTATES])
{
	uint64_t busy = state_ms[RINGBID__AGENT_STATE__AGENT_RESERVED] +
	                state_ms[RINGBID__AGENT_STATE__AGENT_ON_CALL] +
	                state_ms[RINGBID__AGENT_STATE__AGENT_WRAP_UP];
	uint64_t staffed = busy + state_ms[RINGBID__AGENT_STATE__AGENT_AVAILABLE];

	memcpy(s->state_ms, state_ms, sizeof(s->state_ms));
	s->occupancy = staffed ? (double)busy / (double)staffed : 0.0;
}

// Rounds to 4 decimals so that the JSON stays readable.
static json_t *ratio(double x)
{
	return json_real((double)(long long)(x * 10000.0 + 0.5) / 10000.0);
}

static json_t *ms3(double x)
{
	return json_real((double)(long long)(x * 1000.0 + 0.5) / 1000.0);
}

int sim_summary_json(const sim_summary *s, char **out)
{
	static const char *const names[SIM_NSTATES] = {"OFFLINE",  "NOT_READY", "AVAILABLE",
	                                               "RESERVED", "ON_CALL",   "WRAP_UP"};
	json_t *o = json_object(), *st = json_object();
	char seed[24];

	*out = NULL;
	if (o == NULL || st == NULL) {
		json_decref(o);
		json_decref(st);
		return RB_ENOMEM;
	}
	// The seed as text: JSON numbers lose precision beyond 2^53.
	snprintf(seed, sizeof(seed), "%llu", (unsigned long long)s->seed);
	json_object_set_new(o, "seed", json_string(seed));
	json_object_set_new(o, "schedule_digest", json_string(s->digest));
	json_object_set_new(o, "time_factor", json_real(s->time_factor));
	json_object_set_new(o, "seconds", ms3(s->seconds));
	json_object_set_new(o, "agents", json_integer(s->agents));
	json_object_set_new(o, "agents_logged_in", json_integer(s->agents_logged_in));
	json_object_set_new(o, "calls_scheduled", json_integer((json_int_t)s->scheduled));
	json_object_set_new(o, "calls_offered", json_integer((json_int_t)s->offered));
	json_object_set_new(o, "calls_refused", json_integer((json_int_t)s->refused));
	json_object_set_new(o, "calls_answered", json_integer((json_int_t)s->answered));
	json_object_set_new(o, "calls_abandoned", json_integer((json_int_t)s->abandoned));
	json_object_set_new(o, "calls_overflow", json_integer((json_int_t)s->overflow));
	json_object_set_new(o, "calls_open", json_integer((json_int_t)s->open));
	json_object_set_new(o, "calls_completed", json_integer((json_int_t)s->completed));
	json_object_set_new(o, "calls_connected_at_end",
	                    json_integer((json_int_t)s->connected_at_end));
	json_object_set_new(o, "calls_cut_short", json_integer((json_int_t)s->cut_short));
	json_object_set_new(o, "answered_within_20s", json_integer((json_int_t)s->answered_in_sl));
	json_object_set_new(o, "service_level", ratio(s->service_level));
	json_object_set_new(o, "asa_ms", json_integer((json_int_t)s->asa_ms));
	json_object_set_new(o, "occupancy", ratio(s->occupancy));
	json_object_set_new(o, "offers", json_integer((json_int_t)s->offers));
	json_object_set_new(o, "declines", json_integer((json_int_t)s->declines));
	json_object_set_new(o, "breaks", json_integer((json_int_t)s->breaks));
	json_object_set_new(o, "sales", json_integer((json_int_t)s->sales));
	json_object_set_new(o, "resolved", json_integer((json_int_t)s->resolved));
	json_object_set_new(o, "dispatch_samples", json_integer((json_int_t)s->dispatch_n));
	json_object_set_new(o, "dispatch_p50_ms", ms3(s->dispatch_p50_ms));
	json_object_set_new(o, "dispatch_p99_ms", ms3(s->dispatch_p99_ms));
	json_object_set_new(o, "dispatch_max_ms", ms3(s->dispatch_max_ms));
	json_object_set_new(o, "outcomes",
	                    s->outcomes_supported < 0 ? json_string("not tried")
	                    : s->outcomes_supported   ? json_string("recorded")
	                                              : json_string("refused"));
	json_object_set_new(o, "surveys_recorded", json_integer((json_int_t)s->surveys_recorded));
	for (int i = 0; i < SIM_NSTATES; i++)
		json_object_set_new(st, names[i], json_integer((json_int_t)s->state_ms[i]));
	json_object_set_new(o, "agent_state_ms", st);
	*out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	json_decref(o);
	return *out ? 0 : RB_ENOMEM;
}

static double pct(uint64_t part, uint64_t whole)
{
	return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

void sim_summary_print(const sim_summary *s, FILE *f)
{
	fprintf(f, "Simulation summary (seed %llu, schedule %s, time factor %g, %.0f s)\n",
	        (unsigned long long)s->seed, s->digest, s->time_factor, s->seconds);
	fprintf(f, "  agents            %u simulated, %u logged in\n", s->agents,
	        s->agents_logged_in);
	fprintf(f, "  calls offered     %llu", (unsigned long long)s->offered);
	if (s->refused)
		fprintf(f, " (%llu more refused by the broker)", (unsigned long long)s->refused);
	fputc('\n', f);
	fprintf(f, "  answered          %llu (%.1f %%)\n", (unsigned long long)s->answered,
	        pct(s->answered, s->offered));
	fprintf(f, "  abandoned         %llu (%.1f %%)\n", (unsigned long long)s->abandoned,
	        pct(s->abandoned, s->offered));
	if (s->overflow)
		fprintf(f, "  overflow          %llu (waited past the program's maximum)\n",
		        (unsigned long long)s->overflow);
	if (s->open || s->connected_at_end)
		fprintf(f, "  still open        %llu waiting, %llu connected\n",
		        (unsigned long long)s->open, (unsigned long long)s->connected_at_end);
	if (s->cut_short)
		fprintf(f, "  cut short         %llu calls ended by the simulator at the end\n",
		        (unsigned long long)s->cut_short);
	if (s->answered)
		fprintf(f, "  service level     %.1f %% answered within 20 s (%llu of %llu)\n",
		        100.0 * s->service_level, (unsigned long long)s->answered_in_sl,
		        (unsigned long long)s->answered);
	else
		fprintf(f, "  service level     - (no call answered)\n");
	fprintf(f, "  speed of answer   %.2f s on average", (double)s->asa_ms / 1000.0);
	if (s->time_factor != 1.0)
		fprintf(f, " (%.0f simulated s)", (double)s->asa_ms / 1000.0 * s->time_factor);
	fputc('\n', f);
	fprintf(f, "  occupancy         %.1f %% of staffed time handling calls\n",
	        100.0 * s->occupancy);
	fprintf(f, "  dispatch latency  p50 %.2f ms, p99 %.2f ms (%zu offers)\n",
	        s->dispatch_p50_ms, s->dispatch_p99_ms, s->dispatch_n);
	fprintf(f, "  agents' answers   %llu offers, %llu declined; %llu breaks taken\n",
	        (unsigned long long)s->offers, (unsigned long long)s->declines,
	        (unsigned long long)s->breaks);
	fprintf(f, "  outcomes          %llu sales, %llu resolved", (unsigned long long)s->sales,
	        (unsigned long long)s->resolved);
	if (s->outcomes_supported == 1)
		fprintf(f, ", %llu survey scores recorded",
		        (unsigned long long)s->surveys_recorded);
	else if (s->outcomes_supported == 0)
		fprintf(f, " (the broker does not take survey scores)");
	fputc('\n', f);
}

void sim_live_line(const sim_live *l, char *out, size_t n)
{
	char sl[32];
	const uint32_t *a = l->agents;

	if (l->answered)
		snprintf(sl, sizeof(sl), "SL %3.0f%% ASA %4.1fs",
		         100.0 * (double)l->answered_in_sl / (double)l->answered,
		         (double)l->answer_ms_sum / (double)l->answered / 1000.0);
	else
		snprintf(sl, sizeof(sl), "SL    - ASA    -");
	snprintf(out, n,
	         "%5.0fs%s calls %4llu in, %4llu answered, %3llu abandoned, %3llu waiting, %3llu "
	         "talking | agents %3u free %3u ringing %3u on call %3u wrap-up %3u away | %s",
	         l->t_s, l->draining ? "+" : " ", (unsigned long long)l->offered,
	         (unsigned long long)l->answered, (unsigned long long)l->abandoned,
	         (unsigned long long)l->waiting, (unsigned long long)l->talking,
	         a[RINGBID__AGENT_STATE__AGENT_AVAILABLE], a[RINGBID__AGENT_STATE__AGENT_RESERVED],
	         a[RINGBID__AGENT_STATE__AGENT_ON_CALL], a[RINGBID__AGENT_STATE__AGENT_WRAP_UP],
	         a[RINGBID__AGENT_STATE__AGENT_NOT_READY] + a[RINGBID__AGENT_STATE__AGENT_OFFLINE],
	         sl);
}
