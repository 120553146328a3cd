// The auction's matching engine: agents, waiting calls and the per-queue indexes (no I/O).
//
// A market holds what presence says about agents and what the broker says about waiting
// calls, and decides who takes which call (DESIGN §3). Every decision is handed to the match
// callback synchronously, from inside the call that caused it. The market is single-threaded:
// one loop owns it. Every input is validated before anything changes: a function that returns
// an error changed nothing and called no callback.
#ifndef AUCTION_MARKET_H
#define AUCTION_MARKET_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MARKET_ID_MAX             64                  // call ids, programs, skills: rb_valid_id
#define MARKET_MAX_SKILLS         32                  // per call and per agent
#define MARKET_MAX_EXCLUDED       1024                // agents excluded from one call
#define MARKET_MAX_PROGRAM_SCORES 256                 // program scores per agent
#define MARKET_RESERVE_MAX_US     (30ull * 1000000)   // reservation backstop
#define MARKET_QUEUE_IDLE_US      (1800ull * 1000000) // an unused queue is dropped after this
#define MARKET_MAX_QUEUES         256                 // distinct (program, skill set) pairs
#define MARKET_CALL_FORGET_US     (3600ull * 1000000) // a call the broker stopped mentioning

typedef struct market market;

// Both clocks of an event: wall for records (Decision.at_us), monotonic for reservation ages.
typedef struct market_time {
	uint64_t wall_us;
	uint64_t mono_us;
} market_time;

typedef struct market_program_score {
	const char *program;
	double score;
} market_program_score;

// What presence says about one agent (AgentUpdate). Strings are only read during the call.
typedef struct market_agent_info {
	uint64_t id; // > 0
	bool available;
	char *const *skills;
	size_t nskills; // <= MARKET_MAX_SKILLS; duplicates are folded
	double score;   // overall, finite, 0..100
	const market_program_score *program_scores;
	size_t nprogram_scores; // <= MARKET_MAX_PROGRAM_SCORES, programs distinct
	uint64_t available_since_us;
	uint64_t state_seq;
} market_agent_info;

// What the broker says about one waiting call (Enqueue).
typedef struct market_call_info {
	const char *id;
	const char *program;
	char *const *skills;
	size_t nskills; // <= MARKET_MAX_SKILLS; duplicates are folded
	int32_t priority;
	uint64_t arrived_us;
	const uint64_t *excluded; // each > 0; duplicates are folded
	size_t nexcluded;         // <= MARKET_MAX_EXCLUDED
	double explore_share;     // the program's exploration share: finite, 0..1
} market_call_info;

// Why an agent won a call; mirrors the wire Decision. The strings are static text.
typedef struct market_decision {
	uint64_t at_us;
	uint64_t agent_id;
	double score;          // the score compared for the call's program
	uint64_t runner_up_id; // 0: none
	double runner_up_score;
	uint32_t eligible;
	const char *reason;
	uint64_t available_since_us;
	bool exploratory;            // chosen by the program's exploration share
	const char *score_basis;     // MARKET_BASIS_PROGRAM or MARKET_BASIS_OVERALL
	const char *runner_up_basis; // likewise; "" when there is no runner-up
} market_decision;

#define MARKET_REASON_SCORE   "highest score"
#define MARKET_REASON_SINCE   "tie on score: longest available"
#define MARKET_REASON_ID      "tie on score and wait: lowest id"
#define MARKET_REASON_ONLY    "only eligible agent"
#define MARKET_REASON_EXPLORE "exploration: longest available"

#define MARKET_BASIS_PROGRAM "program" // the agent's score in the call's program
#define MARKET_BASIS_OVERALL "overall" // the agent has no score in that program

// Exploration (DESIGN §3): whether a call goes to the longest-available eligible agent instead
// of the highest score depends only on its id and its program's share, so every restart of the
// auction decides the same. h = splitmix64(fnv1a64(call_id)); the call is exploratory when
// h % 1000000 < (uint64_t)(explore_share * 1000000 + 0.5).
#define MARKET_EXPLORE_SCALE 1000000u

// One Match to tell the broker. resend: the same decision again (a re-Enqueue of a call that
// is still matched), not a new decision. Everything is valid only during the callback.
typedef struct market_match {
	const char *call_id;
	uint64_t agent_id;
	const market_decision *decision;
	bool resend;
} market_match;

// Called synchronously for every match; must not call back into the market.
typedef void (*market_match_fn)(const market_match *match, void *arg);

typedef struct market_opts {
	uint64_t reserve_max_us; // 0: MARKET_RESERVE_MAX_US
	uint64_t queue_idle_us;  // 0: MARKET_QUEUE_IDLE_US
	size_t max_queues;       // 0: MARKET_MAX_QUEUES
	uint64_t call_forget_us; // 0: MARKET_CALL_FORGET_US
} market_opts;

// Agent states in the market (not presence's states).
typedef enum {
	MARKET_AGENT_UNKNOWN = 0, // not in the market
	MARKET_AGENT_AWAY,        // known, not available
	MARKET_AGENT_INDEXED,     // available and not reserved: in the indexes of its queues
	MARKET_AGENT_RESERVED,    // matched; out of every index until presence or time frees it
} market_agent_state;

typedef enum {
	MARKET_CALL_UNKNOWN = 0,
	MARKET_CALL_WAITING,
	MARKET_CALL_MATCHED,
} market_call_state;

typedef struct market_stats {
	size_t agents;           // known agents
	size_t agents_available; // in the indexes (available, not reserved)
	size_t agents_reserved;
	size_t calls_waiting;
	size_t calls_matched;
	size_t queues;
	uint64_t decisions; // new matches made so far
} market_stats;

// Creates an empty market. opts NULL means defaults. fn is called for every match. On
// success *out is the caller's (market_free); on failure nothing is allocated.
// Returns 0, RB_EINVAL, RB_ENOMEM.
int market_new(const market_opts *opts, market_match_fn fn, void *arg, market **out);
// Frees the market and everything in it. NULL is fine.
void market_free(market *m);

// Applies one AgentUpdate, then matches: a freed or newly available agent takes the best
// waiting call it is eligible for. Nothing of info is kept. Returns 0, RB_EINVAL (nothing
// changed), RB_ENOMEM (the agent may be left out of the indexes until its next update).
int market_agent_update(market *m, const market_agent_info *info, market_time now);

// One chunk of an AgentSnapshot: first marks every agent stale, each update applies and
// clears its agent's mark, last drops the agents still stale of the snapshot begun by first
// (with their reservations). Matching runs once the chunk is applied, until no match is left.
// The whole chunk is validated before any of it applies. *dropped (may be NULL) gets the
// number of agents dropped. Returns 0, RB_EINVAL (nothing changed), RB_ENOMEM.
int market_snapshot(market *m, uint64_t snapshot_id, bool first, bool last,
                    const market_agent_info *agents, size_t nagents, market_time now,
                    size_t *dropped);

// FNV-1a (64 bits) of call_id's bytes, then splitmix64's increment and finaliser: the hash
// the exploration rule draws on. call_id must be a NUL-terminated string.
uint64_t market_explore_hash(const char *call_id);
// True when a call of this id is exploratory at this share. A share at or below 0 (or NaN)
// never explores; at or above 1 always does.
bool market_call_exploratory(const char *call_id, double explore_share);

// Applies one Enqueue: a new call joins its queue; a known waiting call gets the new
// exclusions; a known matched call whose agent is not excluded and still reserved for it has
// its Match sent again (resend); otherwise it waits again. Then the call is matched if it can
// be. An exploratory call (market_call_exploratory, decided again on every Enqueue) goes to
// its longest-available eligible agent (ties: lowest id) instead of the highest score, and
// its Decision says so. Returns 0, RB_EINVAL (nothing changed), RB_EBUSY (too many distinct
// queues: the call is not taken), RB_ENOMEM.
int market_enqueue(market *m, const market_call_info *call, market_time now);

// Applies one Dequeue: forgets the call; if release_agent is the agent reserved for it, that
// agent is freed (indexed again if presence still says available) and matched. An unknown call
// is fine (idempotent). Returns 0 or RB_EINVAL.
int market_dequeue(market *m, const char *call_id, uint64_t release_agent, market_time now);

typedef struct market_janitor_result {
	size_t reservations_ended; // by the backstop
	size_t calls_forgotten;    // not enqueued again for call_forget_us: their Dequeue was lost
	size_t queues_dropped;     // unused for queue_idle_us
} market_janitor_result;

// Periodic work, never a scan of all agents or calls: ends reservations older than the
// backstop (oldest first) and matches the freed agents; forgets calls the broker has not
// mentioned for call_forget_us (it re-enqueues waiting calls every second, so such a call left
// it and the Dequeue was lost); drops queues unused for queue_idle_us. out may be NULL.
void market_janitor(market *m, market_time now, market_janitor_result *out);

// Counters for metrics and tests.
void market_get_stats(const market *m, market_stats *out);

// State of one agent; *reserved_for (may be NULL) gets the id of the call the agent is
// reserved for, "" when none. The string is valid until the next market call.
market_agent_state market_agent_get(const market *m, uint64_t agent_id, const char **reserved_for);
// State of one call; *agent_id (may be NULL) gets the matched agent, 0 when waiting.
market_call_state market_call_get(const market *m, const char *call_id, uint64_t *agent_id);

// Checks every queue's agent indexes against each other and against the agents' data: the
// same entries in both (the longest-available one empty until a call of the queue explored),
// each in order, each with its agent's current score and
// available-since, and the counts right. O(entries): for tests and debugging, never on a
// hot path. Returns 0, or RB_ESTATE naming nothing (the indexes disagree: a bug).
int market_check(const market *m);

#endif
