// Agents, their sessions and the agent state machine: pure logic driven by events, no I/O.
//
// Everything presence decides about an agent happens here; the link code decodes and validates
// wire messages, calls these functions, and sends what the core emits through presence_ops.
// Times come from the ops clocks so that tests can drive them.
#ifndef PRESENCE_AGENT_H
#define PRESENCE_AGENT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rb_secret.h"
#include "ringbid.pb-c.h"

#define PRESENCE_ID_MAX         64  // call ids, program ids, skills (rb_valid_id)
#define PRESENCE_CALLER_MAX     128 // a masked caller number shown to the agent
#define PRESENCE_MAX_SKILLS     32  // skills per agent forwarded to the auction
#define PRESENCE_SNAPSHOT_CHUNK 1000
#define PRESENCE_SNAPSHOT_BYTES (1024 * 1024) // a chunk stays well under the 4 MiB link limit
#define PRESENCE_REASON_MAX     96
// Program scores per agent: the auction refuses an AgentUpdate with more (its
// MARKET_MAX_PROGRAM_SCORES).
#define PRESENCE_MAX_PROGRAM_SCORES 256
// How long an agent who ended a call waits for the broker to answer the hang-up before the
// auction hears it is free anyway (the broker answers within milliseconds when it is up).
#define PRESENCE_HANGUP_CONFIRM_MS 2000

// Numerically equal to Ringbid__AgentState, so a state goes on the wire as is.
typedef enum {
	PRESENCE_OFFLINE = 0,
	PRESENCE_NOT_READY = 1,
	PRESENCE_AVAILABLE = 2,
	PRESENCE_RESERVED = 3,
	PRESENCE_ON_CALL = 4,
	PRESENCE_WRAP_UP = 5,
	PRESENCE_NSTATES = 6,
} presence_state;

// What the core tells the world. Every message is only valid during the call: the callee packs
// or copies it. Envelopes come without the service token; the sender adds it.
typedef struct presence_ops {
	// To the client on pipe (nng pipe id); seq 0 marks an event, otherwise a reply.
	void (*client)(void *arg, uint32_t pipe, const Ringbid__AgentMsg *m);
	void (*broker)(void *arg, const Ringbid__Envelope *e);
	void (*auction)(void *arg, const Ringbid__Envelope *e);
	// The earliest deadline (monotonic µs) may now be earlier than the one last scheduled:
	// call presence_core_tick at that time.
	void (*schedule)(void *arg, uint64_t mono_us);
	uint64_t (*wall_us)(void *arg); // NULL: rb_now_us
	uint64_t (*mono_us)(void *arg); // NULL: rb_mono_us
	// A session token began (open, with its expiry in UTC µs) or ended (revoked, replaced,
	// expired, suspended): kept in presence.sessions so that billing knows the agent. NULL:
	// none.
	void (*session)(void *arg, uint64_t agent_id, const uint8_t hash[RB_TOKEN_HASH],
	                uint64_t expires_us, bool open);
	void *arg;
} presence_ops;

typedef struct presence_config {
	uint64_t heartbeat_timeout_ms; // silence that counts as a lost link (15000)
	uint32_t max_missed;           // offers missed in a row before NOT_READY (2)
	uint64_t session_ttl_ms;       // session token lifetime (43200000)
} presence_config;

// Counters for the metrics; the core only ever increases them.
typedef struct presence_stats {
	uint64_t offers[5]; // by Ringbid__OfferResultCode
	uint64_t logins;
	uint64_t login_failures;
	uint64_t refused_agents;  // client messages answered with an ErrorReply
	uint64_t refused_broker;  // broker Envelopes refused
	uint64_t refused_auction; // auction Envelopes refused
	// Hang-ups the broker did not answer within PRESENCE_HANGUP_CONFIRM_MS.
	uint64_t hangups_unconfirmed;
} presence_stats;

// One roster row as read from roster.agents; the core copies what it keeps.
typedef struct presence_roster_row {
	uint64_t id;
	bool suspended;
	const char *secret_hash; // argon2id string; NULL or "" when unusable
	char *const *skills;
	size_t n_skills;
	double score;
} presence_roster_row;

// One agent's score in one program, from billing.presence_scores.
typedef struct presence_program_score {
	const char *program; // rb_valid_id, at most PRESENCE_ID_MAX
	double score;        // finite, 0..100
} presence_program_score;

typedef struct presence_core presence_core;
typedef struct presence_agent presence_agent;

// Creates the core. ops and cfg are copied. On success *out is the caller's.
int presence_core_new(const presence_ops *ops, const presence_config *cfg, presence_core **out);
// Frees every agent and the core. Emits nothing. NULL is fine.
void presence_core_free(presence_core *c);

presence_stats *presence_core_stats(presence_core *c);
const char *presence_state_name(presence_state s);

// ---- the state machine

// True when from -> to is a transition of the agent state machine (DESIGN §4), including the
// ones that follow the broker's word (a connected call puts the agent ON_CALL from any state
// but ON_CALL) and the end of wrap-up without a live session (WRAP_UP -> OFFLINE).
bool presence_transition_legal(presence_state from, presence_state to);
// The one transition function: refuses an illegal transition with RB_ESTATE (nothing changes),
// else updates the state counts, bumps state_seq, stamps state_since (and available_since on
// AVAILABLE), arms or clears the ring and wrap-up timers, records reason (may be NULL), sends
// the AgentUpdate to the auction and the AgentStatus event to the agent's client.
int presence_transition(presence_core *c, presence_agent *a, presence_state to, const char *reason);

// ---- lookups and read access

presence_agent *presence_core_find(const presence_core *c, uint64_t id);
presence_agent *presence_core_find_pipe(const presence_core *c, uint32_t pipe);
uint64_t presence_agent_id(const presence_agent *a);
presence_state presence_agent_state(const presence_agent *a);
uint64_t presence_agent_state_seq(const presence_agent *a);
uint32_t presence_agent_missed(const presence_agent *a);
uint64_t presence_agent_offer_id(const presence_agent *a);   // current offer, 0 none
const char *presence_agent_call_id(const presence_agent *a); // offered or connected call, ""
uint32_t presence_agent_pipe(const presence_agent *a);       // bound pipe, 0 none
bool presence_agent_live(const presence_agent *a);           // session with a live link
bool presence_agent_has_session(const presence_agent *a);
bool presence_agent_in_roster(const presence_agent *a);
bool presence_agent_suspended(const presence_agent *a);
// RESERVED with its offer accepted: the broker has the ACCEPTED, the call is not connected
// until the broker confirms it (presence_core_call_connected, or a CallSync).
bool presence_agent_connecting(const presence_agent *a);
// The argon2id hash to check a login against: NULL when the agent cannot log in by secret
// (unknown to the roster or no usable hash). Valid until the next roster change.
const char *presence_agent_secret_hash(const presence_agent *a);
// Agents per state, counting roster agents without a session as OFFLINE.
void presence_core_counts(const presence_core *c, uint32_t counts[PRESENCE_NSTATES]);
uint32_t presence_core_size(const presence_core *c);
uint32_t presence_core_live_sessions(const presence_core *c);

// Fills st with the agent's status. Strings point into the agent: valid until the next call
// into the core.
void presence_core_status(const presence_core *c, const presence_agent *a,
                          Ringbid__AgentStatus *st);

// ---- roster (roster.c reads PostgreSQL and feeds these)

// A full load brackets its rows with begin/end: agents missing from it leave the roster, and
// the auction gets one snapshot at the end instead of one update per row.
void presence_core_roster_begin(presence_core *c);
// Adds or updates an agent. Suspension ends its session; a skills or score change is sent to
// the auction. Returns 0, RB_EINVAL (id 0; nothing changes) or RB_ENOMEM.
int presence_core_roster_upsert(presence_core *c, const presence_roster_row *row);
// The agent left the roster: its session ends; the entry goes once no call holds it.
void presence_core_roster_remove(presence_core *c, uint64_t id);
void presence_core_roster_end(presence_core *c);
// True once a full load has completed.
bool presence_core_roster_loaded(const presence_core *c);

// ---- scores (roster.c reads billing.presence_scores and feeds these)
//
// The roster gives each agent its overall score; billing's recompute also gives program
// scores, which only this path sets. An 'agent:<id>' reload (presence_core_roster_upsert)
// keeps them.

// A full load of the scores brackets its agents with begin/end: agents it does not mention lose
// their program scores, and the auction hears of every change once, at the end.
void presence_core_scores_begin(presence_core *c);
// Sets one agent's scores: its overall score (when has_score) and its program scores, which
// replace the ones it had (programs in any order). Everything is checked before anything
// changes: programs valid identifiers and distinct, scores finite within 0..100, at most
// PRESENCE_MAX_PROGRAM_SCORES. An agent whose scores differ from what it had gets an
// AgentUpdate to the auction (at the end of a full load). Nothing of ps is kept. Returns 0,
// RB_EINVAL (nothing changed), RB_ENOTFOUND (no such agent: the roster has not loaded it yet;
// nothing changed) or RB_ENOMEM (nothing changed).
int presence_core_scores_set(presence_core *c, uint64_t id, bool has_score, double score,
                             const presence_program_score *ps, size_t n);
// Ends a full load. When more agents changed than one snapshot chunk holds, the auction gets
// one AgentSnapshot instead of one AgentUpdate each (cheaper on both sides, same result).
// *changed (may be NULL) gets the number of agents whose scores changed.
void presence_core_scores_end(presence_core *c, size_t *changed);
// The agent's program scores (sorted by program) and how many. Valid until the next call into
// the core.
const Ringbid__ProgramScore *const *presence_agent_program_scores(const presence_agent *a,
                                                                  size_t *n);
double presence_agent_score(const presence_agent *a);

// ---- the agent's client (the clients link validates fields before calling these)

// While a request of agent a is handled, its status changes are not pushed as events: the
// reply carries them. a NULL ends it.
void presence_core_quiet(presence_core *c, const presence_agent *a);
// Finds the session of token (hex). Returns 0 and *out, or RB_EAUTH (malformed, unknown or
// expired token).
int presence_core_auth(presence_core *c, const char *token, presence_agent **out);
// A successful login on pipe: a new session (the old token, if any, is revoked; an older pipe
// is told "session replaced elsewhere"), bound to pipe; OFFLINE -> NOT_READY, a call keeps
// its state. Writes the token for the client into token_hex. Returns 0 or RB_EFORBIDDEN
// (suspended or not in the roster; nothing changes).
int presence_core_login(presence_core *c, presence_agent *a, uint32_t pipe,
                        char token_hex[RB_TOKEN_HEX]);
// A valid message from the agent's client on pipe: counts as a heartbeat; rebinds the session
// to pipe if it was bound elsewhere or its link was lost (OFFLINE -> NOT_READY).
void presence_core_touch(presence_core *c, presence_agent *a, uint32_t pipe);
// SetState AVAILABLE or NOT_READY. Returns 0 (also when already there), RB_EINVAL (another
// state) or RB_ESTATE (not allowed now).
int presence_core_set_state(presence_core *c, presence_agent *a, presence_state to);
// Answers the agent's current offer. An accept sends ACCEPTED to the broker and leaves the
// agent RESERVED, connecting, its ring timer disarmed: the call is shown connected only when
// the broker confirms it. Returns 0 (also for a repeated answer to the offer it answered last),
// RB_ESTATE (a decline of an offer the agent accepted; nothing changes) or RB_ENOTFOUND (not
// this agent's offer).
int presence_core_answer(presence_core *c, presence_agent *a, uint64_t offer_id, bool accept);
// The agent ends its connected call, marking it a sale and/or resolved (passed on to the broker
// for the CDR). Until the broker answers the hang-up with a CallEnded (or a CallSync shows no
// call at the agent, or PRESENCE_HANGUP_CONFIRM_MS pass), the auction hears the agent is not
// available, whatever its state. Returns 0 (also when it already ended that call), RB_ESTATE
// (the call was accepted but is not connected yet; nothing changes) or RB_ENOTFOUND.
int presence_core_end_call(presence_core *c, presence_agent *a, const char *call_id, bool sale,
                           bool resolved);
// Ends the session: token revoked, link unbound; AVAILABLE/NOT_READY/RESERVED -> OFFLINE (an
// offer still ringing is AGENT_LOST); a call keeps running, and so does an accepted offer
// waiting for the broker (its ACCEPTED is sent).
void presence_core_logout(presence_core *c, presence_agent *a);
// The connection pipe closed: the session bound to it (if any) loses its link.
void presence_core_pipe_closed(presence_core *c, uint32_t pipe);

// ---- the broker (the broker link checks the token; field checks are here)

// Returns 0 (including REFUSED and ignored duplicates) or RB_EINVAL (nothing changes).
int presence_core_offer(presence_core *c, const Ringbid__Offer *o);
int presence_core_offer_cancel(presence_core *c, const Ringbid__OfferCancel *oc);
// OfferCancel and CallEnded of a call the agent is connecting release it (AVAILABLE, or
// OFFLINE without a live session; no wrap-up) with CALL_EVENT_OFFER_WITHDRAWN: its client never
// saw the call connected. A CallEnded of the call the agent ended settles its hang-up.
int presence_core_call_ended(presence_core *c, const Ringbid__CallEnded *ce);
// The broker connected the call of the agent's offer (its CONNECTED record is on disk): the
// agent, connecting or, when telephony reported the call answered, still ringing, goes ON_CALL
// (answered_us from the message, 0: now) and its client gets CALL_EVENT_CONNECTED. A repeat, or
// a call the agent has already left, changes nothing; so does a confirmation of an offer the
// agent does not hold (logged). Returns 0 or RB_EINVAL (a field not valid; nothing changes).
int presence_core_call_connected(presence_core *c, const Ringbid__CallConnected *cc);
// One chunk of the broker's CallSync. Each entry is settled as it arrives (an offer kept, or
// accepted again when the agent accepted it meanwhile, the agent still connecting, or
// AGENT_LOST; a connected call makes its agent ON_CALL, which confirms a connecting agent);
// offers and calls the broker did not list are withdrawn (a connecting agent released, never
// shown connected) and ended only at the last chunk of a sync whose first chunk was seen, with
// no chunk of it refused. Returns 0,
// RB_EINVAL (an entry not valid, or first/last without a sync_id: nothing of the chunk is
// applied, and the open sync withdraws nothing) or RB_ENOMEM.
int presence_core_call_sync(presence_core *c, const Ringbid__CallSync *cs);
// Fills counts for PresenceStats (PRESENCE_NSTATES entries).
void presence_core_stats_msg(const presence_core *c, Ringbid__AgentCount counts[PRESENCE_NSTATES],
                             Ringbid__AgentCount *ptrs[PRESENCE_NSTATES]);
// Presence is stopping: every offer still ringing is given back to the broker (AGENT_LOST) and
// its agent goes OFFLINE (an accepted one is the broker's already: its agent is left
// connecting); offers arriving from now on are REFUSED. Returns how many were given back.
uint32_t presence_core_stop(presence_core *c);

// ---- the auction

// Sends every agent, with its program scores, as an AgentSnapshot in chunks of at most
// PRESENCE_SNAPSHOT_CHUNK agents and about PRESENCE_SNAPSHOT_BYTES. Returns 0 or RB_ENOMEM
// (nothing sent).
int presence_core_snapshot(presence_core *c);

// ---- time

// Runs every deadline that is due: ring timeouts, wrap-up ends, silent links. Then schedules
// the next one.
void presence_core_tick(presence_core *c);
// The earliest deadline (monotonic µs), or 0 when none.
uint64_t presence_core_next_deadline(const presence_core *c);
// Periodic work: ends sessions whose token expired.
void presence_core_janitor(presence_core *c);

#endif
