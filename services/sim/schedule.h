// The callers of one run, drawn from the seed before the run starts: when each call arrives,
// for which program, how long it would talk, how long the caller waits before hanging up, and
// the dice of its outcome. The same parameters give the same schedule and the same digest.
#ifndef SIM_SCHEDULE_H
#define SIM_SCHEDULE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_PROGRAMS_MAX 16
#define SIM_CALLS_MAX    1000000 // calls in one run

typedef enum {
	SIM_DIST_EXP = 0,   // exponential (the default)
	SIM_DIST_LOGNORMAL, // log-normal, shape 0.8: most calls short, a long tail
	SIM_DIST_FIXED,     // every call the mean
} sim_dist;

typedef struct sim_schedule_params {
	uint64_t seed;
	double rate_per_s;      // arrivals per real second (> 0)
	uint64_t duration_ms;   // arrivals happen in [0, duration_ms) of real time
	uint64_t max_calls;     // and at most this many (0: SIM_CALLS_MAX)
	unsigned nprograms;     // calls are spread evenly over the programs (>= 1)
	sim_dist talk_dist;     //
	double talk_mean_s;     // simulated seconds (> 0)
	double patience_mean_s; // simulated seconds, exponential (> 0)
	double survey_rate;     // share of callers who answer the post-call survey, 0..1
} sim_schedule_params;

typedef struct sim_arrival {
	uint64_t at_ms;           // real milliseconds after the start of arrivals
	unsigned program;         // index into the run's programs
	uint64_t talk_sim_ms;     // talk time in simulated milliseconds (>= 1000)
	uint64_t patience_sim_ms; // simulated milliseconds the caller waits (>= 1000)
	double u_sale;            // uniform draws that decide the outcome once an agent's quality
	double u_resolved;        // is known: sale if u_sale < p_sale(quality), and so on
	bool survey;              // the caller answers the survey
	double survey_noise;      // standard normal: the survey score's spread around quality
} sim_arrival;

// Draws the schedule. On success *out (calloc'd; free()) holds *n arrivals in time order; a
// window too short or a rate too low for any call gives *n 0 and *out NULL. Returns 0,
// RB_EINVAL (a parameter out of range) or RB_ENOMEM.
int sim_schedule_build(const sim_schedule_params *p, sim_arrival **out, size_t *n);

// A digest of the schedule (16 hex digits and a NUL in out[17]): two runs with the same digest
// offered the same callers at the same moments with the same talk times and patience.
void sim_schedule_digest(const sim_arrival *a, size_t n, char out[17]);

// The draws above in real time: simulated ms divided by the time factor, at least 1 ms.
uint64_t sim_scale_ms(uint64_t sim_ms, double time_factor);

#endif
