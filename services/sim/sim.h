// The simulator's run: the loop, the agents (a presence session and a person each), the
// callers (the broker's call API) and the phases of a run.
#ifndef SIM_SIM_H
#define SIM_SIM_H
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "options.h"
#include "rb_bus.h"
#include "rng.h"
#include "schedule.h"
#include "session.h"
#include "stats.h"

#define SIM_TICK_MS         10    // agents' timers, arrivals and patience run on this tick
#define SIM_BROKER_INFLIGHT 64    // requests in flight to the broker at once
#define SIM_REQUEST_MS      10000 // a broker request unanswered this long has failed
#define SIM_CLOSE_WAIT_MS   15000 // at the end, how long to wait for cut-short calls to end
#define SIM_RUN_LOGOUT_MS   3000

// One caller, as the simulator follows it. Transitions: call_set (run.c).
typedef enum {
	SIM_CALL_PENDING = 0, // not arrived yet
	SIM_CALL_ARRIVING,    // CallArrived sent, no answer yet
	SIM_CALL_WAITING,     // the broker took it; no agent talking yet
	SIM_CALL_CONNECTED,   // an agent is talking to the caller
	SIM_CALL_HANGING_UP,  // the caller's patience ran out: CallHangup sent
	SIM_CALL_ENDED,
	SIM_CALL_REFUSED, // the broker refused it or never answered
} sim_call_state;

typedef enum {
	SIM_SURVEY_NONE = 0,
	SIM_SURVEY_DUE,  // the call ended and the caller answers the survey
	SIM_SURVEY_SENT, // RecordOutcomes in flight
	SIM_SURVEY_DONE, // recorded, refused or skipped
} sim_survey_state;

typedef struct sim_call {
	sim_call_state state;
	int agent;             // agent offered or connected (index), -1 none
	bool accepted;         // an agent accepted: the caller no longer gives up
	bool offered;          // the first offer reached an agent
	bool cut_short;        // ended by the simulator when the drain time ran out
	bool queried;          // the broker's final record is in result
	uint64_t sent_us;      // monotonic: CallArrived sent
	uint64_t connected_us; // monotonic: the agent saw the call connected; 0 not yet
	int disposition;       // what the simulator saw (the broker's final word is in result)
	sim_survey_state survey;
	int survey_value;
	sim_call_result result;
} sim_call;

// One simulated agent: a presence session plus the person behind it.
typedef struct sim_agent {
	struct sim *sim;
	uint32_t index;
	uint64_t id;
	sim_session sess;
	rb_bus *bus;
	int npipes;
	sim_rng rng;
	double quality; // hidden skill in [0, 1]: sales, resolutions and surveys grow with it
	Ringbid__AgentState state;
	uint64_t state_since_ms;
	uint64_t free_since_us; // monotonic: last became AVAILABLE
	bool logged_in, refused, done;
	bool went_ready;              // has been AVAILABLE (or offered a call) since logging in
	char call_id[SIM_ID_MAX + 1]; // the call connected now ("" none)
	int call;                     // its index when it is one of ours, -1 otherwise
	uint64_t end_at_ms;           // when to end that call (0: not planned)
	uint64_t ready_at_ms;         // after-call work done: say ready then (0: none)
	bool on_break;
	uint64_t break_until_ms, next_break_ms;
} sim_agent;

typedef enum {
	SIM_PHASE_LOGIN = 0, // agents log in and go ready
	SIM_PHASE_RUN,       // callers arrive
	SIM_PHASE_DRAIN,     // no more arrivals; calls finish
	SIM_PHASE_CLOSE,     // calls still open are ended; outcomes finish
	SIM_PHASE_RECONCILE, // the broker's record of every call is read back
	SIM_PHASE_LOGOUT,    // agents log out
	SIM_PHASE_DONE,
} sim_phase;

typedef struct sim {
	uv_loop_t loop;
	uv_timer_t tick;
	uv_signal_t sigint, sigterm;
	sim_options opt;
	const char *secret;
	char presence_url[512], broker_url[512], token[256];
	uint64_t heartbeat_ms;
	nng_tls_config *tls;

	sim_phase phase;
	uint64_t phase_since_ms;
	uint64_t t0_ms;          // start of arrivals (monotonic ms)
	uint64_t measure_end_ms; // end of the occupancy window (0: still measuring)
	uint64_t run_id;
	int exit_code;
	int signals;

	sim_agent *agents;
	sim_arrival *sched;
	sim_call *calls;
	size_t ncalls, next_arrival, first_open, next_query;
	char digest[17];

	rb_bus *broker;
	int inflight;
	int outcomes_supported; // -1 unknown, 0 refused, 1 taken
	bool outcome_probe;     // the first RecordOutcomes is in flight
	uint64_t surveys_due, surveys_recorded;
	uint64_t offers, declines, breaks, sales, resolved, foreign_calls;
	uint64_t state_ms[SIM_NSTATES];
	uint64_t *latency_us;
	size_t nlatency;

	uint64_t next_live_ms;
	FILE *live;
	bool summary_done;
} sim;

// Runs a whole simulation with the options and the agents' secret (borrowed) against the
// stack at presence_url and broker_url. Prints the live lines and the summary. Returns the
// process exit status: 0 done, 1 failed (no agent could log in, the broker refused every call,
// set-up failed), 130 stopped by a second signal.
int sim_run(const sim_options *o, const char *secret, const char *presence_url,
            const char *broker_url, const char *token, uint64_t heartbeat_ms);

// Reads the agents' secret from path into out (one line; a trailing line break is dropped).
// Returns 0, RB_EIO (unreadable), RB_EINVAL (empty, a NUL byte, several lines) or RB_ETOOBIG.
int sim_secret_load(const char *path, char *out, size_t n);

// The chance that an agent of quality q marks a call a sale / resolved, and the survey score
// (1..5) a caller gives for noise drawn from a standard normal.
double sim_p_sale(double q);
double sim_p_resolved(double q);
int sim_survey_score(double q, double noise);

// Shared between the run's files (agents.c, callers.c, run.c); all on the loop thread.

// Agents: creates each agent's bus and session and dials presence. 0 or a code.
int sim_agents_start(sim *s);
// Session timers and the people's decisions due by now.
void sim_agents_tick(sim *s, uint64_t now_ms);
// Adds the time each agent spent in its state up to now to s->state_ms (within the window).
void sim_agents_account(sim *s, uint64_t now_ms);
void sim_agents_count(const sim *s, uint32_t out[SIM_NSTATES]);
void sim_agents_logout(sim *s, uint64_t now_ms);
// Agents logged in so far / agents whose sessions have finished.
uint32_t sim_agents_logged_in(const sim *s);
bool sim_agents_done(const sim *s);
// True when every agent has logged in and gone ready at least once (or its login was
// refused), whatever other load on the same programs keeps them busy since.
bool sim_agents_ready(const sim *s);
// True while an agent still holds one of our calls.
bool sim_agents_busy(const sim *s);
void sim_agents_free(sim *s);

// Callers: opens the broker's call API. 0 or a code.
int sim_callers_start(sim *s);
// Arrivals, patience, surveys and the end-of-run work due by now.
void sim_callers_tick(sim *s, uint64_t now_ms);
// True when no call is open (every call ended or refused) and nothing is in flight.
bool sim_callers_settled(const sim *s);
// True when every call's final record has been read back.
bool sim_callers_reconciled(const sim *s);
void sim_callers_free(sim *s);
// The index of one of our calls by id, or -1.
int sim_call_lookup(const sim *s, const char *call_id);
// The one place a call changes state.
void sim_call_set(sim *s, size_t i, sim_call_state to);
// A call of ours ended at its agent: surveys and bookkeeping.
void sim_call_ended_at_agent(sim *s, size_t i, double quality);

#endif
