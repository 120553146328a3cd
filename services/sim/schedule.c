// The callers of one run: a Poisson process of arrivals with talk times, patience and outcome
// dice drawn from the seed's schedule stream.
#include "schedule.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_err.h"
#include "rng.h"

#define STREAM_SCHEDULE 1 // agents use streams 1000 + index
#define LOGNORMAL_SIGMA 0.8
#define MIN_DRAW_MS     1000 // nobody talks or waits less than a simulated second

static uint64_t draw_ms(sim_rng *r, sim_dist d, double mean_s)
{
	double s;

	switch (d) {
	case SIM_DIST_LOGNORMAL:
		s = sim_rng_lognormal(r, mean_s, LOGNORMAL_SIGMA);
		break;
	case SIM_DIST_FIXED:
		// The draw is still taken, so that the other fields of a call do not depend on
		// the distribution.
		(void)sim_rng_uniform(r);
		(void)sim_rng_uniform(r);
		s = mean_s;
		break;
	case SIM_DIST_EXP:
	default:
		s = sim_rng_exp(r, mean_s);
		(void)sim_rng_uniform(r);
		break;
	}
	double ms = s * 1000.0;
	if (!(ms >= MIN_DRAW_MS))
		return MIN_DRAW_MS;
	if (ms > 1e12)
		return (uint64_t)1e12;
	return (uint64_t)ms;
}

int sim_schedule_build(const sim_schedule_params *p, sim_arrival **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (p == NULL || !(p->rate_per_s > 0) || p->rate_per_s > 1e5 || p->duration_ms == 0 ||
	    p->nprograms == 0 || p->nprograms > SIM_PROGRAMS_MAX || !(p->talk_mean_s > 0) ||
	    !(p->patience_mean_s > 0) || !(p->survey_rate >= 0 && p->survey_rate <= 1) ||
	    p->max_calls > SIM_CALLS_MAX)
		return RB_EINVAL;
	size_t cap = p->max_calls ? p->max_calls : SIM_CALLS_MAX;
	// The expected count plus ten standard deviations, so one allocation nearly always does.
	double expect = p->rate_per_s * (double)p->duration_ms / 1000.0;
	size_t guess = (size_t)(expect + 10.0 * sqrt(expect) + 16.0);
	if (guess > cap)
		guess = cap;

	sim_arrival *a = calloc(guess, sizeof(*a));
	if (a == NULL)
		return RB_ENOMEM;
	size_t have = guess, count = 0;
	sim_rng r;
	sim_rng_seed(&r, p->seed, STREAM_SCHEDULE);
	double t_ms = 0;
	for (;;) {
		// Every call takes the same number of draws, in the same order.
		t_ms += sim_rng_exp(&r, 1000.0 / p->rate_per_s);
		unsigned prog = (unsigned)(sim_rng_uniform(&r) * p->nprograms);
		uint64_t talk = draw_ms(&r, p->talk_dist, p->talk_mean_s);
		uint64_t patience = draw_ms(&r, SIM_DIST_EXP, p->patience_mean_s);
		double u_sale = sim_rng_uniform(&r);
		double u_resolved = sim_rng_uniform(&r);
		bool survey = sim_rng_uniform(&r) < p->survey_rate;
		double noise = sim_rng_normal(&r);

		if (t_ms >= (double)p->duration_ms || count >= cap)
			break;
		if (count == have) {
			size_t more = have * 2 > cap ? cap : have * 2;
			sim_arrival *b = realloc(a, more * sizeof(*a));
			if (b == NULL) {
				free(a);
				return RB_ENOMEM;
			}
			a = b;
			have = more;
		}
		a[count++] = (sim_arrival){
		        .at_ms = (uint64_t)t_ms,
		        .program = prog < p->nprograms ? prog : p->nprograms - 1,
		        .talk_sim_ms = talk,
		        .patience_sim_ms = patience,
		        .u_sale = u_sale,
		        .u_resolved = u_resolved,
		        .survey = survey,
		        .survey_noise = noise,
		};
	}
	if (count == 0) {
		free(a);
		return 0;
	}
	*out = a;
	*n = count;
	return 0;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 0x100000001b3ULL;
	}
	return h;
}

void sim_schedule_digest(const sim_arrival *a, size_t n, char out[17])
{
	uint64_t h = 0xcbf29ce484222325ULL;

	h = fnv_u64(h, n);
	for (size_t i = 0; i < n; i++) {
		h = fnv_u64(h, a[i].at_ms);
		h = fnv_u64(h, a[i].program);
		h = fnv_u64(h, a[i].talk_sim_ms);
		h = fnv_u64(h, a[i].patience_sim_ms);
		// Outcome dice to a millionth: exact on every machine, since they are exact
		// binary fractions drawn from the same integers.
		h = fnv_u64(h, (uint64_t)(a[i].u_sale * 1e6));
		h = fnv_u64(h, (uint64_t)(a[i].u_resolved * 1e6));
		h = fnv_u64(h, a[i].survey);
	}
	snprintf(out, 17, "%016llx", (unsigned long long)h);
}

uint64_t sim_scale_ms(uint64_t sim_ms, double time_factor)
{
	if (!(time_factor > 0))
		return sim_ms;
	double ms = (double)sim_ms / time_factor;
	return ms < 1.0 ? 1 : (uint64_t)ms;
}
