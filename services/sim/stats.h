// The simulator's figures: the end-of-run summary (from the broker's own record of every call),
// dispatch latency percentiles, occupancy, the live line, and their text and JSON forms.
#ifndef SIM_STATS_H
#define SIM_STATS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SIM_SERVICE_LEVEL_US 20000000u // "answered within 20 s", as the broker counts it
#define SIM_NSTATES          6         // Ringbid__AgentState values

// One call as the broker had it at the end of the run.
typedef struct sim_call_result {
	bool known; // the broker took the call (false: refused or never reached)
	int state;  // Ringbid__CallState
	int disposition;
	uint64_t arrived_us, answered_us, ended_us; // broker's UTC microseconds, 0 when not
} sim_call_result;

typedef struct sim_summary {
	// run
	uint64_t seed;
	char digest[17];
	double time_factor;
	double seconds; // real seconds from the first arrival to the summary
	uint32_t agents, agents_logged_in;
	// calls (answered + abandoned + overflow + open = offered)
	uint64_t scheduled; // callers in the schedule
	uint64_t offered;   // calls the broker took
	uint64_t refused;   // CallArrived refused or unanswered
	uint64_t answered, abandoned, overflow, open;
	uint64_t completed, connected_at_end; // answered calls ended / still connected
	uint64_t answered_in_sl;
	double service_level; // answered within 20 s / answered (0..1); 0 with none answered
	uint64_t asa_ms;      // average speed of answer, whole ms (as the broker rounds)
	uint64_t cut_short;   // calls the simulator ended when the drain time ran out
	// agents
	double occupancy; // handling time / (handling + available) time, 0..1
	uint64_t state_ms[SIM_NSTATES];
	uint64_t offers, declines, breaks;
	uint64_t sales, resolved;
	// dispatch
	size_t dispatch_n;
	double dispatch_p50_ms, dispatch_p99_ms, dispatch_max_ms;
	// outcomes
	int outcomes_supported; // 1 the broker took RecordOutcomes, 0 it refused, -1 never tried
	uint64_t surveys_recorded;
} sim_summary;

// Counts the calls: offered, answered, abandoned, overflow, open, service level, ASA.
void sim_summary_calls(sim_summary *s, const sim_call_result *r, size_t n);
// Sorts lat_us in place and fills the dispatch percentiles.
void sim_summary_dispatch(sim_summary *s, uint64_t *lat_us, size_t n);
// Occupancy from the time agents spent in each state.
void sim_summary_occupancy(sim_summary *s, const uint64_t state_ms[SIM_NSTATES]);
// The value at quantile p (0..1) of sorted v (nearest rank); 0 for n 0.
uint64_t sim_percentile(const uint64_t *sorted, size_t n, double p);

// One JSON object (no line break). On success *out is the caller's (free()). 0 or RB_ENOMEM.
int sim_summary_json(const sim_summary *s, char **out);
// The summary for people, several lines.
void sim_summary_print(const sim_summary *s, FILE *f);

// What the live line shows.
typedef struct sim_live {
	double t_s;
	uint64_t offered, answered, abandoned, waiting, talking;
	uint64_t answered_in_sl, answer_ms_sum;
	uint32_t agents[SIM_NSTATES];
	bool draining;
} sim_live;

// Formats the live line (no line break) into out.
void sim_live_line(const sim_live *l, char *out, size_t n);

#endif
