// The agent's session with presence: login, resume, heartbeats, offers, calls, request retries.
//
// The client owns no sockets, timers or terminals. Its owner feeds it link changes, messages
// from presence, commands and the passage of time, and it answers through the callbacks in
// agent_client_ops: messages to send, events to show, and the moment it is finished. Every
// function runs on one thread (the program's libuv loop; a test's main thread).
#ifndef AGENT_CLIENT_H
#define AGENT_CLIENT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ringbid.pb-c.h"

#define AGENT_ID_MAX               64   // call ids and program ids: rb_valid_id length limit
#define AGENT_SECRET_MAX           1024 // longest secret accepted from a file or the environment
#define AGENT_TOKEN_MAX            128  // longest session token accepted from presence
#define AGENT_TEXT_MAX             256  // reasons and error messages kept for display
#define AGENT_REQ_RESEND_MS        2000 // a request unanswered this long is sent again
#define AGENT_REQ_TRIES            5    // sends before a request is given up (logins: never)
#define AGENT_LOGOUT_WAIT_MS       2000 // how long a logout waits for presence before leaving anyway
#define AGENT_LOGIN_BACKOFF_MIN_MS 1000
#define AGENT_LOGIN_BACKOFF_MAX_MS 60000
#define AGENT_PENDING_MAX          32 // requests in flight at once
#define AGENT_SILENT_HEARTBEATS    2  // silent this many heartbeat intervals: resume explicitly

// What to do with offers without asking anybody (--auto-answer, --decline, --ignore-offers).
typedef enum {
	AGENT_OFFERS_ASK = 0, // interactive: the person at the keyboard answers
	AGENT_OFFERS_ACCEPT,  // accept every offer, end the call after talk_ms
	AGENT_OFFERS_DECLINE, // decline every offer
	AGENT_OFFERS_IGNORE,  // never answer: the ring timeout runs out
} agent_offer_policy;

// Everything the owner may show: one event per visible change. Strings point into the client
// and are valid only during the event callback.
typedef enum {
	AGENT_EV_LINK_UP = 0,
	AGENT_EV_LINK_DOWN,
	AGENT_EV_LOGIN,           // state
	AGENT_EV_RESUMED,         // state, call_id ("" when none)
	AGENT_EV_STATE,           // state, reason ("" when none)
	AGENT_EV_OFFER,           // offer_id, call_id, program, wait_ms, ring_timeout_ms
	AGENT_EV_ACCEPTED,        // offer_id, call_id: presence has the accept; connecting
	AGENT_EV_DECLINED,        // offer_id, call_id
	AGENT_EV_CALL_CONNECTED,  // call_id: the broker connected it; talk time starts
	AGENT_EV_CALL_ENDED,      // call_id, talk_ms, by_agent, wrap_up_s
	AGENT_EV_OFFER_WITHDRAWN, // offer_id, call_id, reason
	AGENT_EV_ERROR,           // code, message
	AGENT_EV_LOGOUT,
	AGENT_EV_EARNINGS, // earnings (the agent's own figures, as presence computed them)
} agent_event_kind;

typedef struct agent_event {
	agent_event_kind kind;
	Ringbid__AgentState state;
	const char *reason;
	const char *call_id;
	const char *program;
	uint64_t offer_id;
	uint64_t wait_ms;
	uint64_t ring_timeout_ms;
	uint64_t talk_ms;
	uint32_t wrap_up_s;
	bool by_agent;
	int code;
	const char *message;
	const Ringbid__Earnings *earnings; // AGENT_EV_EARNINGS; strings never NULL
} agent_event;

// The owner's side. All callbacks are required except where noted.
typedef struct agent_client_ops {
	// Sends one message to presence. The message and everything it points to belong to the
	// client and live only during the call: pack it before returning. Returns 0 or a code
	// (the client then treats the message as lost and relies on its retry).
	int (*send)(void *arg, const Ringbid__AgentMsg *msg);
	// Shows one event.
	void (*event)(void *arg, const agent_event *ev);
	// The client is done: exit_code 0 (logged out), 1 (failure) or 3 (login refused). Called
	// once; afterwards the client ignores everything but agent_client_fini.
	void (*finish)(void *arg, int exit_code);
	// Monotonic milliseconds (timers) and UTC microseconds (presence's timestamps).
	uint64_t (*mono_ms)(void *arg);
	uint64_t (*wall_us)(void *arg);
	void *arg;
} agent_client_ops;

typedef struct agent_client_config {
	uint64_t agent_id;  // > 0
	const char *secret; // copied; wiped from memory by agent_client_fini
	agent_offer_policy policy;
	uint64_t talk_ms;      // AGENT_OFFERS_ACCEPT: talk time before ending the call
	bool auto_ready;       // go AVAILABLE after login, resume and wrap-up by itself
	uint64_t heartbeat_ms; // > 0
	uint32_t sale_every;   // AGENT_OFFERS_ACCEPT: mark every Nth call a sale (0: never)
} agent_client_config;

// The session with presence, as the client sees it. Transitions happen in one place
// (client.c: set_phase).
typedef enum {
	AGENT_PHASE_WAIT_LINK = 0, // no usable link: waiting for nng to (re)connect
	AGENT_PHASE_LOGIN,         // Login sent, no answer yet
	AGENT_PHASE_RESUME,        // Resume sent with the kept token
	AGENT_PHASE_BACKOFF,       // login refused for now (slow down, no answer): waiting to retry
	AGENT_PHASE_ACTIVE,        // logged in: heartbeats, offers, calls
	AGENT_PHASE_LOGOUT,        // Logout sent, leaving once answered or after a short wait
	AGENT_PHASE_DONE,          // finished; the owner was told through ops.finish
} agent_phase;

typedef struct agent_req {
	uint64_t seq;
	Ringbid__AgentMsg__BodyCase kind;
	int tries;       // sends so far
	bool sent;       // false: waiting for the session before it can be sent
	uint64_t due_ms; // resend (or give up) at this monotonic time
	Ringbid__AgentState want_state;
	uint64_t offer_id;
	bool accept;
	bool sale, resolved; // END_CALL: the agent's marks
	char call_id[AGENT_ID_MAX + 1];
} agent_req;

typedef struct agent_offer {
	bool present;
	bool announced; // the OFFER event went out (an offer seen only in a status has no details)
	bool answered;  // an answer is on its way
	bool accepted;  // the ACCEPTED event went out: connecting until the call connects
	uint64_t offer_id;
	char call_id[AGENT_ID_MAX + 1];
	char program[AGENT_ID_MAX + 1];
	uint64_t wait_ms;
	uint64_t ring_timeout_ms;
	uint64_t received_ms;
} agent_offer;

typedef struct agent_call {
	bool present;
	bool end_requested; // the agent asked to end it: a later end is "by agent"
	char call_id[AGENT_ID_MAX + 1];
	uint64_t connected_ms; // monotonic time the talk started
	uint64_t end_due_ms;   // AGENT_OFFERS_ACCEPT: when to end it (0: not planned)
} agent_call;

typedef struct agent_client {
	agent_client_config cfg;
	agent_client_ops ops;
	char secret[AGENT_SECRET_MAX + 1];
	char token[AGENT_TOKEN_MAX + 1]; // session token, memory only; "" before login
	agent_phase phase;
	bool link_up;
	uint64_t next_seq;
	Ringbid__AgentState state;
	bool state_known;
	agent_req pending[AGENT_PENDING_MAX];
	int npending;
	agent_offer offer;
	agent_call call;
	uint64_t heartbeat_due_ms;
	uint64_t spoke_ms;       // monotonic time the client last sent presence anything
	uint64_t spoke_wall_us;  // the same on the wall clock
	uint64_t backoff_ms;     // current login backoff
	uint64_t backoff_due_ms; // AGENT_PHASE_BACKOFF: retry login then
	uint64_t logout_due_ms;  // AGENT_PHASE_LOGOUT: leave then, answered or not
	bool logout_requested;   // leave as soon as the session allows (logout before login)
	uint64_t auto_ended;     // calls ended by the auto mode (for sale_every)
} agent_client;

// Prepares c (embedded object). cfg->secret is copied. Returns 0 or RB_EINVAL (agent id 0,
// empty or overlong secret, heartbeat 0, missing callbacks). Nothing is sent until the link is
// up. On failure c needs no agent_client_fini (calling it is harmless).
int agent_client_init(agent_client *c, const agent_client_config *cfg, const agent_client_ops *ops);
// Wipes the secret and the token. c may be used for nothing afterwards but another init.
void agent_client_fini(agent_client *c);

// The link to presence came up (nng connected) or went away.
void agent_client_link(agent_client *c, bool up);
// One message from presence (already decoded; the caller keeps it).
void agent_client_on_msg(agent_client *c, const Ringbid__AgentMsg *msg);
// Raw bytes from presence: decoded with the agent link's size limit; bad input is logged and
// ignored. The bytes stay the caller's.
void agent_client_on_data(agent_client *c, const void *buf, size_t len);
// Runs everything that is due by now (resends, heartbeats, the talk timer, login backoff).
void agent_client_tick(agent_client *c);
// Monotonic time at which agent_client_tick next has work, or UINT64_MAX for none.
uint64_t agent_client_next_due(const agent_client *c);

// Commands (from the keyboard, the auto mode or signals). Each returns 0 once the request is
// queued, or RB_ENOTFOUND (no offer / no call), RB_ESTATE (finished), RB_EBUSY (too many
// requests in flight).
int agent_client_set_ready(agent_client *c, bool ready);
// An accepted offer is connecting: accepting it again is 0 and sends nothing, declining it is
// RB_ESTATE. The call starts only when presence says it connected (AGENT_EV_CALL_CONNECTED).
int agent_client_answer(agent_client *c, bool accept);
// end_call marks the call a sale and/or resolved (both false: neither). RB_ESTATE also when the
// offer is accepted but the call has not connected yet.
int agent_client_end_call(agent_client *c, bool sale, bool resolved);
// Asks presence for the agent's own earnings; the answer comes as AGENT_EV_EARNINGS.
int agent_client_earnings(agent_client *c);
// Logs out and finishes with exit code 0: at once when there is no session, else after
// presence answers or AGENT_LOGOUT_WAIT_MS. Calling it again is harmless.
int agent_client_logout(agent_client *c);

// Read-only views for the screen.
agent_phase agent_client_phase(const agent_client *c);
// The agent's state as presence last reported it (OFFLINE before any report).
Ringbid__AgentState agent_client_state(const agent_client *c);
// The offer waiting for an answer, or NULL.
const agent_offer *agent_client_offer(const agent_client *c);
// The call in progress, or NULL; *talk_ms (may be NULL) gets its talk time so far.
const agent_call *agent_client_call(const agent_client *c, uint64_t *talk_ms);

// "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP" ("UNKNOWN" otherwise).
const char *agent_state_name(Ringbid__AgentState s);

#endif
