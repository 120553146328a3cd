// One simulated agent's session with presence: login, resume, heartbeats, requests and their
// resends, and the offers and call events presence pushes. Sockets and timers are the owner's:
// it feeds the session messages, link changes and the time, and the session answers through
// sim_session_ops. Everything runs on one thread (the simulator's loop; a test's main thread).
#ifndef SIM_SESSION_H
#define SIM_SESSION_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ringbid.pb-c.h"

#define SIM_ID_MAX          64   // call ids: rb_valid_id length limit
#define SIM_TOKEN_MAX       128  // longest session token accepted from presence
#define SIM_SECRET_MAX      1024 // longest secret accepted from the secret file
#define SIM_REQ_RESEND_MS   2000 // a request unanswered this long is sent again
#define SIM_REQ_TRIES       5    // sends before a request is given up (logins: never)
#define SIM_LOGOUT_WAIT_MS  2000 // a logout waits this long for presence's answer
#define SIM_BACKOFF_MIN_MS  500  // login refused as busy: first wait, doubling
#define SIM_BACKOFF_MAX_MS  8000
#define SIM_BUSY_RETRY_MS   100 // presence busy checking other logins: retry after 100-200 ms
#define SIM_SESSION_PENDING 8   // requests in flight at once

typedef enum {
	SIM_SESS_WAIT_LINK = 0, // no link: nng is (re)connecting
	SIM_SESS_LOGIN,         // Login sent
	SIM_SESS_RESUME,        // Resume sent with the kept token
	SIM_SESS_BACKOFF,       // presence asked to wait (busy, slow down, no answer)
	SIM_SESS_ACTIVE,        // logged in
	SIM_SESS_LOGOUT,        // Logout sent
	SIM_SESS_DONE,          // finished (logged out, or the login was refused)
} sim_session_phase;

typedef enum {
	SIM_SEV_ACTIVE = 0, // logged in or resumed: state, call_id (a call running), offer_id
	SIM_SEV_STATE,      // the agent's state changed: state
	SIM_SEV_OFFER,      // offer_id, call_id
	SIM_SEV_CONNECTED,  // call_id
	SIM_SEV_ENDED,     // call_id: the call ended (agent in WRAP_UP); also the answer to EndCall
	SIM_SEV_WITHDRAWN, // offer_id, call_id: the offer ended unanswered
	SIM_SEV_REFUSED,   // the login was refused for good: code (the session is DONE)
	SIM_SEV_FAILED,    // a request failed: code, kind (the request's body case)
	SIM_SEV_DONE,      // logged out
} sim_session_event_kind;

typedef struct sim_session_event {
	sim_session_event_kind kind;
	Ringbid__AgentState state;
	const char *call_id; // never NULL ("" when none); valid during the callback only
	uint64_t offer_id;
	int code;
	Ringbid__AgentMsg__BodyCase req_kind;
} sim_session_event;

typedef struct sim_session_ops {
	// Sends one message; it lives only during the call (pack it). Returns 0 or a code (the
	// message is then lost and the resend takes over).
	int (*send)(void *arg, const Ringbid__AgentMsg *msg);
	void (*event)(void *arg, const sim_session_event *ev);
	void *arg;
} sim_session_ops;

typedef struct sim_session_req {
	uint64_t seq;
	Ringbid__AgentMsg__BodyCase kind;
	int tries;
	bool sent; // false: waiting for the session to be active
	uint64_t due_ms;
	Ringbid__AgentState want_state;
	uint64_t offer_id;
	bool accept, sale, resolved;
	char call_id[SIM_ID_MAX + 1];
} sim_session_req;

typedef struct sim_session {
	uint64_t agent_id;
	const char *secret; // the owner's; must outlive the session
	uint64_t heartbeat_ms;
	sim_session_ops ops;
	sim_session_phase phase;
	bool link_up;
	char token[SIM_TOKEN_MAX + 1];
	uint64_t next_seq;
	Ringbid__AgentState state;
	sim_session_req pending[SIM_SESSION_PENDING];
	int npending;
	uint64_t heartbeat_due_ms, backoff_ms, backoff_due_ms, logout_due_ms;
	uint64_t logins; // logins and resumes that succeeded
} sim_session;

// Prepares s (embedded). secret is borrowed. Returns 0 or RB_EINVAL (agent 0, empty secret,
// heartbeat 0, a missing callback).
int sim_session_init(sim_session *s, uint64_t agent_id, const char *secret, uint64_t heartbeat_ms,
                     const sim_session_ops *ops);
// Wipes the token. Nothing else to free.
void sim_session_fini(sim_session *s);

void sim_session_link(sim_session *s, bool up, uint64_t now_ms);
// A message from presence (decoded; the caller keeps it). Malformed content is ignored.
void sim_session_on_msg(sim_session *s, const Ringbid__AgentMsg *m, uint64_t now_ms);
// Raw bytes from presence, decoded with the agent link's limit.
void sim_session_on_data(sim_session *s, const void *buf, size_t len, uint64_t now_ms);
// Resends, heartbeats, backoff and logout deadlines due by now_ms.
void sim_session_tick(sim_session *s, uint64_t now_ms);

// Commands. 0 once queued; RB_ESTATE (logging out or done), RB_EBUSY (too many in flight).
int sim_session_set_ready(sim_session *s, bool ready, uint64_t now_ms);
int sim_session_answer(sim_session *s, uint64_t offer_id, bool accept, uint64_t now_ms);
int sim_session_end_call(sim_session *s, const char *call_id, bool sale, bool resolved,
                         uint64_t now_ms);
// Logs out; SIM_SEV_DONE follows (at once when there is no session to end).
void sim_session_logout(sim_session *s, uint64_t now_ms);

// True while a request of this kind is queued or unanswered.
bool sim_session_busy(const sim_session *s, Ringbid__AgentMsg__BodyCase kind);

#endif
