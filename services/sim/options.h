// ringbid-sim's command line: what to simulate, parsed and range-checked.
#ifndef SIM_OPTIONS_H
#define SIM_OPTIONS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "schedule.h"

#define SIM_AGENTS_MAX 10000

typedef struct sim_options {
	uint32_t agents;         // --agents N (default 20)
	uint64_t first_agent;    // --first-agent ID (default 1001)
	const char *secret_file; // --secret-file FILE (else RINGBID_SIM_SECRET_FILE); argv's
	char programs[SIM_PROGRAMS_MAX][65];
	unsigned nprograms;     // --programs a,b (default "sales")
	double rate_per_s;      // --rate R[/s|/min|/h] (default 1/s)
	double duration_s;      // --duration S: arrivals during S real seconds (default 60)
	uint64_t max_calls;     // --calls N: at most N callers (0: no limit)
	double time_factor;     // --time-factor F (default 1)
	sim_dist talk_dist;     // --talk-dist exp|lognormal|fixed
	double talk_mean_s;     // --talk-mean S, simulated (default 240)
	double patience_mean_s; // --patience-mean S, simulated (default 120)
	double decline_rate;    // --decline-rate P (default 0.05)
	double break_every_s; // --break-every S, simulated mean time between breaks (3600; 0 none)
	double break_mean_s;  // --break-mean S, simulated (default 300)
	double acw_mean_s;    // --acw-mean S: after-call work, simulated (default 15)
	double survey_rate;   // --survey-rate P (default 0.5)
	uint64_t seed;        // --seed N (default: from the clock, printed)
	bool seed_set;
	double drain_s;      // --drain S: after arrivals, wait up to S real s for calls (60)
	double login_wait_s; // --login-wait S: wait up to S for agents to log in (60)
	double every_s;      // --every S: live line period (default 1; 0 none)
	bool json;           // --json: one JSON object on stdout; live lines on stderr
	bool quiet;          // --quiet: no live lines
	bool help, version;
} sim_options;

extern const char sim_usage[];

// Parses argv into o (defaults first). Returns 0, or RB_EINVAL with a sentence in err. Strings
// in o point into argv.
int sim_options_parse(int argc, char **argv, sim_options *o, char *err, size_t errlen);
// Parses "2", "2/s", "90/min", "3600/h" into calls per second (> 0). 0 or RB_EINVAL.
int sim_parse_rate(const char *text, double *per_s);

#endif
