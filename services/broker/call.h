// Calls and their book: the call state machine, its one transition function, and the indexes
// (by id, by agent, waiting line, recently ended) that keep one agent to one call.
#ifndef BROKER_CALL_H
#define BROKER_CALL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#ifndef __unused
#define __unused __attribute__((unused))
#endif
#include <bsd/sys/tree.h>
#include <uthash.h>
#include "ringbid.pb-c.h"

#define BROKER_ID_MAX           64   // call ids, program ids, skills (rb_valid_id)
#define BROKER_CALL_SKILLS_MAX  32   // skills a call may add to its program's
#define BROKER_SKILLS_MAX       96   // program's and call's together
#define BROKER_CALLER_MAX       64   // caller number as telephony sends it
#define BROKER_MASKED_MAX       72   // masked caller, as stored and shown
#define BROKER_REASON_MAX       128  // decision reason text
#define BROKER_DECISIONS_MAX    64   // decisions kept per call (the newest)
#define BROKER_OFFER_LOG_MAX    64   // ended offers kept per call (the newest)
#define BROKER_BASIS_MAX        15   // "program" or "overall"
#define BROKER_EXCLUDED_MAX     4096 // agents excluded from one call
#define BROKER_REFUSALS_EXCLUDE 3    // REFUSED offers in a row before the agent is excluded
#define BROKER_PRIORITY_MIN     (-1000)
#define BROKER_PRIORITY_MAX     1000
#define BROKER_PRESENCE_ID_MAX  63 // presence instances are 0..63 (RINGBID_PRESENCE_ID)

// Same numbers as Ringbid__CallState and Ringbid__Disposition.
typedef enum {
	BROKER_CALL_ARRIVED = 1,
	BROKER_CALL_QUEUED = 2,
	BROKER_CALL_OFFERED = 3,
	BROKER_CALL_CONNECTED = 4,
	BROKER_CALL_ENDED = 5,
} broker_call_state;
#define BROKER_CALL_NSTATES 6

typedef enum {
	BROKER_DISP_NONE = 0,
	BROKER_DISP_COMPLETED = 1,
	BROKER_DISP_ABANDONED = 2,
	BROKER_DISP_OVERFLOW = 3,
} broker_disposition;

typedef enum {
	BROKER_EV_QUEUE,    // ARRIVED -> QUEUED
	BROKER_EV_OFFER,    // QUEUED -> OFFERED to agent_id with offer_id and decision
	BROKER_EV_CONNECT,  // OFFERED -> CONNECTED: agent accepted, or telephony saw the answer
	BROKER_EV_DECLINED, // OFFERED -> QUEUED: the agent declined; excluded
	BROKER_EV_OFFER_TIMEOUT, // OFFERED -> QUEUED: the agent let it ring out; excluded
	BROKER_EV_OFFER_LOST,    // OFFERED -> QUEUED: agent lost (heartbeat, client gone); excluded
	BROKER_EV_RING_EXPIRED,  // OFFERED -> QUEUED: no result by the backstop; excluded
	BROKER_EV_REFUSED,       // OFFERED -> QUEUED: agent was busy; excluded after 3 in a row
	BROKER_EV_HANGUP,        // telephony: QUEUED/OFFERED -> abandoned, CONNECTED -> completed
	BROKER_EV_AGENT_HANGUP,  // the agent: CONNECTED -> completed
	BROKER_EV_MAX_WAIT,      // QUEUED/OFFERED -> overflow
	BROKER_EV_MAX_TALK,      // CONNECTED -> completed, flagged for review
} broker_event_kind;

typedef struct broker_decision {
	uint64_t at_us;
	uint64_t agent_id;
	double score;
	uint64_t runner_up_id;
	double runner_up_score;
	uint32_t eligible;
	bool exploratory;
	uint64_t available_since_us;
	char reason[BROKER_REASON_MAX + 1];
	char score_basis[BROKER_BASIS_MAX + 1]; // "program", "overall" or "" (not said)
	char runner_up_basis[BROKER_BASIS_MAX + 1];
} broker_decision;

// One ended offer of a call and how it ended (the answer rate of DESIGN §6).
typedef struct broker_offer_entry {
	uint64_t agent_id;
	uint64_t offered_us;             // UTC start of the offer
	Ringbid__OfferResultCode result; // accepted, declined, timeout, agent lost, refused
} broker_offer_entry;

typedef struct broker_event {
	broker_event_kind kind;
	// OFFER: the agent and offer. Other kinds: when non-zero, must equal the call's current
	// agent / offer (a result for another offer is refused).
	uint64_t agent_id;
	uint64_t offer_id;
	const broker_decision *decision; // OFFER (NULL: none recorded)
	uint32_t presence_id;            // OFFER: the presence instance holding the agent's session
	uint64_t now_us;                 // UTC
	uint64_t now_mono_us;            // monotonic
} broker_event;

// What a transition asks the service to tell others.
enum {
	BROKER_FX_ENQUEUE = 1 << 0,      // auction: Enqueue the call
	BROKER_FX_DEQUEUE = 1 << 1,      // auction: the call left the line
	BROKER_FX_OFFER = 1 << 2,        // presence: Offer to fx.agent_id
	BROKER_FX_OFFER_CANCEL = 1 << 3, // presence: withdraw fx.offer_id from fx.agent_id
	BROKER_FX_CALL_ENDED = 1 << 4,   // presence: the connected call ended (agent to wrap-up)
	BROKER_FX_CDR = 1 << 5,          // the call ended: write its CDR
	// presence: the call is connected to fx.agent_id by offer fx.offer_id. Presence shows an
	// accepted offer connected only on this word (docs/delivery.md), so it is sent once the
	// CONNECTED record is on disk.
	BROKER_FX_CALL_CONNECTED = 1 << 6,
};

typedef struct broker_effects {
	unsigned flags;
	uint64_t agent_id; // the agent the call was offered to or connected with
	uint64_t offer_id; // that offer
} broker_effects;

// Program settings a call's timers and messages need.
typedef struct broker_limits {
	uint32_t ring_timeout_s;
	uint32_t wrap_up_s;
	uint32_t max_wait_s;
	uint32_t max_talk_s;
} broker_limits;

typedef struct broker_call broker_call;
struct broker_call {
	char id[BROKER_ID_MAX + 1];
	char program[BROKER_ID_MAX + 1];
	char caller_masked[BROKER_MASKED_MAX + 1];
	char **skills; // sorted, unique; owned
	uint32_t nskills;
	int32_t priority;
	broker_call_state state;
	broker_disposition disposition;
	uint64_t agent_id; // offered or connected; after ENDED the connected agent, else 0
	uint64_t offer_id; // current offer (OFFERED), the offer that connected (CONNECTED, ENDED)
	uint64_t arrived_us, offered_us, answered_us, ended_us;
	uint64_t offer_us; // UTC start of the current offer (offered_us is the first offer's)
	uint64_t version;
	// The presence instance holding the agent of the newest offer (journaled): where that
	// offer, and the call it connected, are synchronised, withdrawn and ended.
	uint32_t presence_id;
	uint32_t offers;
	uint32_t missed; // REFUSED in a row by the agent of the newest decision
	bool review;
	bool sale, resolved; // the agent's marks when it hung up (CDR)
	uint64_t *excluded;  // owned
	uint32_t nexcluded, capexcluded;
	broker_decision *decisions; // owned; oldest first, at most BROKER_DECISIONS_MAX
	uint32_t ndecisions;
	broker_offer_entry *offer_log; // owned; oldest first, at most BROKER_OFFER_LOG_MAX
	uint32_t noffer_log, capoffer_log;
	// Monotonic anchors of the timers (rebuilt from the UTC times at replay).
	uint64_t arrived_mono_us, offer_mono_us, answered_mono_us, queued_mono_us;
	// When a match was last handed back because its agent still held another call; not
	// journaled (a pacing hint only).
	uint64_t busy_release_mono_us;
	// Owned by the service layer, never touched here.
	void *timer;
	void *polls;
	UT_hash_handle hh;
	UT_hash_handle hh_agent;
	bool in_agent_index;
	RB_ENTRY(broker_call) wait_entry;
	TAILQ_ENTRY(broker_call) ended_entry;
};

RB_HEAD(broker_wait_tree, broker_call);
TAILQ_HEAD(broker_ended_list, broker_call);

typedef void (*broker_evict_fn)(broker_call *c, void *arg);

typedef struct broker_book {
	broker_call *by_id;
	broker_call *by_agent;           // OFFERED and CONNECTED calls by agent_id
	struct broker_wait_tree waiting; // QUEUED and OFFERED by arrival
	struct broker_ended_list ended;  // ENDED, oldest end first
	uint32_t count[BROKER_CALL_NSTATES];
	size_t ended_max;       // at most this many ended calls kept
	uint64_t ended_keep_us; // ended calls kept at least this long (unless over ended_max)
	broker_evict_fn evict;  // told before an ended call is freed
	void *evict_arg;
} broker_book;

// The fields of a new call. Strings are copied.
typedef struct broker_call_new {
	const char *id;
	const char *program;
	const char *const *skills; // all required skills, sorted and unique (broker_skills_merge)
	size_t nskills;
	int32_t priority;
	const char *caller_masked;
	uint64_t now_us;
	uint64_t now_mono_us;
} broker_call_new;

void broker_book_init(broker_book *book, size_t ended_max, uint64_t ended_keep_us);
// Frees every call (evict is not called).
void broker_book_fini(broker_book *book);
void broker_book_on_evict(broker_book *book, broker_evict_fn fn, void *arg);

// Adds a call in ARRIVED. On success *out belongs to the book. Returns 0, RB_EEXIST (id known),
// RB_EINVAL, RB_ENOMEM.
int broker_book_add(broker_book *book, const broker_call_new *in, broker_call **out);
broker_call *broker_book_find(const broker_book *book, const char *id);
// The OFFERED or CONNECTED call an agent holds, or NULL.
broker_call *broker_book_agent_call(const broker_book *book, uint64_t agent_id);
// QUEUED and OFFERED calls, longest waiting first.
broker_call *broker_book_waiting_first(broker_book *book);
broker_call *broker_book_waiting_next(broker_book *book, broker_call *c);
// Drops ended calls older than ended_keep_us, oldest first (evict is called for each).
void broker_book_expire(broker_book *book, uint64_t now_us);

// Sets a call to a journaled record (replay, before the service attaches timers or polls):
// creates the call or replaces it, and rebuilds its indexes and monotonic anchors from the UTC
// times. The record stays the caller's; on success *out (may be NULL) belongs to the book and
// any earlier pointer to the same call is invalid. Returns 0, RB_EINVAL (record unusable),
// RB_ENOMEM, RB_ESTATE (a CONNECTED record for an agent who holds another call: skipped). An
// OFFERED record for an agent who holds another call comes back QUEUED.
int broker_book_restore(broker_book *book, const Ringbid__CallRecord *rec, uint64_t now_us,
                        uint64_t now_mono_us, broker_call **out);

// The one transition function: applies ev to c (a call of book), keeping the indexes and the
// one-agent-one-call rule. On success fills *fx and bumps the version. Returns 0, RB_ESTATE
// (illegal in the call's state; nothing changed), RB_EBUSY (the agent holds another call),
// RB_EINVAL (bad event), RB_ENOMEM. Ended calls are kept by the book and expire later.
int broker_call_apply(broker_book *book, broker_call *c, const broker_event *ev,
                      broker_effects *fx);

// The call's next deadline: the monotonic time and the event to apply then. Returns 0, or
// RB_ENOTFOUND when the call has none (ARRIVED, ENDED). grace_ms is the backstop beyond the
// ring timeout.
int broker_call_deadline(const broker_call *c, const broker_limits *lim, uint64_t grace_ms,
                         uint64_t *at_mono_us, broker_event_kind *kind);

bool broker_call_excluded(const broker_call *c, uint64_t agent_id);
// The presence instance of the call's newest offer, when that offer went to agent_id: the
// instance to tell of a change of that offer or of the call it connected. False when the call
// was never offered to agent_id last.
bool broker_call_presence(const broker_call *c, uint64_t agent_id, uint32_t *presence_id);
const char *broker_call_state_name(int state);
const char *broker_disposition_name(int disposition);

// Merges two lists of skills into one sorted list without duplicates. On success *out is the
// caller's (broker_skills_free). Returns 0, RB_ETOOBIG (more than BROKER_SKILLS_MAX), RB_ENOMEM.
int broker_skills_merge(const char *const *a, size_t na, const char *const *b, size_t nb,
                        char ***out, size_t *nout);
void broker_skills_free(char **skills, size_t n);

// Memory for protobuf messages built from calls; everything is freed at once by fini.
typedef struct broker_arena {
	void **blocks;
	size_t n, cap;
} broker_arena;
void broker_arena_init(broker_arena *a);
// Zeroed memory owned by the arena, or NULL when out of memory.
void *broker_arena_alloc(broker_arena *a, size_t size);
void broker_arena_fini(broker_arena *a);

// Message views of a call. Strings and arrays point into c or into the arena: valid while
// both are unchanged. Return 0 or RB_ENOMEM.
void broker_call_info(const broker_call *c, Ringbid__CallInfo *info);
int broker_call_record(const broker_call *c, broker_arena *a, Ringbid__CallRecord *rec);
int broker_call_explain(const broker_call *c, broker_arena *a, Ringbid__ExplainReply *ex);
void broker_call_enqueue(const broker_call *c, Ringbid__Enqueue *eq);
// The CDR of an ended call (DESIGN §5: talk time only, whole seconds), with the offer log and
// whether the offer that connected was exploratory. Returns 0 or RB_ENOMEM.
int broker_call_cdr(const broker_call *c, broker_arena *a, Ringbid__Cdr *cdr);
// True when the call connected through an offer the auction made by the program's exploration
// share (the Decision of the offer that connected).
bool broker_call_exploratory(const broker_call *c);
// A decision from a Match (validated by the caller).
void broker_decision_from_pb(const Ringbid__Decision *d, broker_decision *out);

#endif
