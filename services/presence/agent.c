// Agents, sessions and the agent state machine (DESIGN §4): one transition function, timers as
// deadlines in a tree, silent links found from a list ordered by when each was last heard.
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#define __unused __attribute__((unused))
#include <bsd/sys/tree.h>
#include <uthash.h>

#include "agent.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"

struct presence_agent {
	uint64_t id;

	// From the roster.
	bool in_roster;
	bool suspended;
	uint64_t roster_gen;
	char *secret_hash;
	char **skills;
	size_t n_skills;
	double score;

	// From billing's scores: one allocation holding the n_ps messages, the pointers an
	// AgentUpdate carries, and the program names; sorted by program.
	Ringbid__ProgramScore *ps;
	Ringbid__ProgramScore **ps_ptrs;
	size_t n_ps;
	uint64_t scores_gen;
	bool scores_dirty; // changed during a full scores load: the auction hears at its end

	// The state machine.
	presence_state state;
	uint64_t state_seq;
	uint64_t state_since_us;
	uint64_t available_since_us;
	uint32_t missed;
	char reason[PRESENCE_REASON_MAX];

	// The session: a token (has_session) and the link it is bound to (pipe, live).
	bool has_session;
	bool live;
	uint8_t token_hash[RB_TOKEN_HASH];
	uint64_t token_expires_us;
	uint64_t token_expires_mono;
	uint32_t pipe;
	uint64_t heard_mono;

	// The offer in flight (RESERVED) or the call (ON_CALL, WRAP_UP).
	uint64_t offer_id;
	uint64_t offer_arrived_us;
	uint32_t ring_timeout_ms;
	char caller_masked[PRESENCE_CALLER_MAX + 1];
	char call_id[PRESENCE_ID_MAX + 1];
	char program[PRESENCE_ID_MAX + 1];
	uint32_t wrap_up_s;
	uint64_t answered_us;

	// What was settled last, so that repeats are answered and not refused.
	uint64_t last_offer_id;
	// The offer the agent accepted: while it equals offer_id (RESERVED) the agent is
	// connecting (see connecting()); then the offer of call_id (ON_CALL) or, once over, of
	// ended_call_id; 0 when the broker's CallSync put the agent on the call.
	uint64_t accepted_offer_id;
	char ended_call_id[PRESENCE_ID_MAX + 1];
	bool ended_by_agent;
	bool ended_sale; // the agent's marks on the call it ended, repeated with the hang-up
	bool ended_resolved;
	// The agent ended ended_call_id and the broker has not yet said the call is over (its
	// CallEnded): until then the auction hears the agent is not available, so that no call is
	// matched to an agent the broker still has on a call. Agents in this state are on the
	// core's hanging list, oldest first, each with the time after which presence stops
	// waiting (hangup_deadline, monotonic µs).
	bool hangup_unconfirmed;
	uint64_t hangup_deadline;

	uint64_t timer_at; // ring timeout or end of wrap-up (monotonic µs); 0 none
	uint64_t sync_gen;

	UT_hash_handle hh;       // by id
	UT_hash_handle hh_token; // by token hash, while has_session
	UT_hash_handle hh_pipe;  // by pipe, while pipe != 0
	RB_ENTRY(presence_agent) tnode;
	TAILQ_ENTRY(presence_agent) heard;   // while live: least recently heard first
	TAILQ_ENTRY(presence_agent) expiry;  // while has_session: earliest expiry first
	TAILQ_ENTRY(presence_agent) busy;    // while RESERVED or ON_CALL
	TAILQ_ENTRY(presence_agent) hanging; // while hangup_unconfirmed: oldest hang-up first
	bool in_busy;
};

static int timer_cmp(const presence_agent *x, const presence_agent *y)
{
	if (x->timer_at != y->timer_at)
		return x->timer_at < y->timer_at ? -1 : 1;
	return x->id < y->id ? -1 : (x->id > y->id);
}

RB_HEAD(ptimers, presence_agent);
RB_GENERATE_STATIC(ptimers, presence_agent, tnode, timer_cmp)

struct presence_core {
	presence_ops ops;
	presence_config cfg;
	presence_stats stats;

	presence_agent *by_id;
	presence_agent *by_token;
	presence_agent *by_pipe;
	struct ptimers timers;
	TAILQ_HEAD(, presence_agent) heard;
	TAILQ_HEAD(, presence_agent) expiry;
	TAILQ_HEAD(, presence_agent) busy;
	TAILQ_HEAD(, presence_agent) hanging;

	uint32_t n_agents;
	uint32_t n_live;
	uint32_t counts[PRESENCE_NSTATES];
	uint64_t scheduled; // deadline last handed to ops.schedule; 0 none
	uint64_t snapshot_id;
	// A CallSync may come in chunks: agents named by the chunks of the open sync carry its
	// sync_gen, and what the broker did not name is over only once its last chunk is in.
	uint64_t sync_gen;
	uint64_t sync_id;
	bool sync_open;
	uint64_t roster_gen;
	bool bulk; // inside a full roster load: the auction gets one snapshot at the end
	// A full scores load: agents not mentioned lose their program scores, and the agents that
	// changed (dirty, by id) hear of it at the end.
	bool scores_bulk;
	uint64_t scores_gen;
	uint64_t *dirty;
	size_t n_dirty, dirty_cap;
	size_t n_changed; // agents changed by this load (also those the list lost)
	bool dirty_lost;  // the list could not grow: the end sends a snapshot
	bool roster_loaded;
	bool stopping; // offers are refused: presence is going away
	const presence_agent *quiet;
};

static const char *const state_names[PRESENCE_NSTATES] = {
        "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP",
};

const char *presence_state_name(presence_state s)
{
	if ((unsigned)s >= PRESENCE_NSTATES)
		return "?";
	return state_names[s];
}

static uint64_t wall(const presence_core *c)
{
	return c->ops.wall_us != NULL ? c->ops.wall_us(c->ops.arg) : rb_now_us();
}

static uint64_t mono(const presence_core *c)
{
	return c->ops.mono_us != NULL ? c->ops.mono_us(c->ops.arg) : rb_mono_us();
}

static void copy_str(char *dst, size_t n, const char *src)
{
	snprintf(dst, n, "%s", src != NULL ? src : "");
}

// ---------------------------------------------------------------------------------------------
// Creation and lookup

int presence_core_new(const presence_ops *ops, const presence_config *cfg, presence_core **out)
{
	presence_core *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return RB_ENOMEM;
	c->ops = *ops;
	c->cfg = *cfg;
	if (c->cfg.max_missed < 1)
		c->cfg.max_missed = 1;
	RB_INIT(&c->timers);
	TAILQ_INIT(&c->heard);
	TAILQ_INIT(&c->expiry);
	TAILQ_INIT(&c->busy);
	TAILQ_INIT(&c->hanging);
	*out = c;
	return 0;
}

static void free_skills(presence_agent *a)
{
	for (size_t i = 0; i < a->n_skills; i++)
		free(a->skills[i]);
	free(a->skills);
	a->skills = NULL;
	a->n_skills = 0;
}

static void agent_destroy(presence_core *c, presence_agent *a)
{
	if (a->timer_at != 0)
		RB_REMOVE(ptimers, &c->timers, a);
	if (a->live) {
		TAILQ_REMOVE(&c->heard, a, heard);
		c->n_live--;
	}
	if (a->has_session) {
		HASH_DELETE(hh_token, c->by_token, a);
		TAILQ_REMOVE(&c->expiry, a, expiry);
	}
	if (a->pipe != 0)
		HASH_DELETE(hh_pipe, c->by_pipe, a);
	if (a->in_busy)
		TAILQ_REMOVE(&c->busy, a, busy);
	if (a->hangup_unconfirmed)
		TAILQ_REMOVE(&c->hanging, a, hanging);
	HASH_DELETE(hh, c->by_id, a);
	c->counts[a->state]--;
	c->n_agents--;
	if (c->quiet == a)
		c->quiet = NULL;
	free_skills(a);
	free(a->secret_hash);
	free(a->ps);
	free(a);
}

void presence_core_free(presence_core *c)
{
	if (c == NULL)
		return;
	presence_agent *a, *tmp;
	HASH_ITER(hh, c->by_id, a, tmp)
	{
		agent_destroy(c, a);
	}
	free(c->dirty);
	free(c);
}

presence_stats *presence_core_stats(presence_core *c)
{
	return &c->stats;
}

presence_agent *presence_core_find(const presence_core *c, uint64_t id)
{
	presence_agent *a = NULL;
	HASH_FIND(hh, c->by_id, &id, sizeof(id), a);
	return a;
}

presence_agent *presence_core_find_pipe(const presence_core *c, uint32_t pipe)
{
	presence_agent *a = NULL;
	if (pipe == 0)
		return NULL;
	HASH_FIND(hh_pipe, c->by_pipe, &pipe, sizeof(pipe), a);
	return a;
}

static presence_agent *agent_create(presence_core *c, uint64_t id)
{
	presence_agent *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return NULL;
	a->id = id;
	a->state = PRESENCE_OFFLINE;
	a->score = 50.0;
	HASH_ADD(hh, c->by_id, id, sizeof(a->id), a);
	c->counts[PRESENCE_OFFLINE]++;
	c->n_agents++;
	return a;
}

// An agent that is neither in the roster nor holding a call nor logged in is forgotten.
static void maybe_reap(presence_core *c, presence_agent *a)
{
	if (!a->in_roster && a->state == PRESENCE_OFFLINE && !a->has_session && a->pipe == 0)
		agent_destroy(c, a);
}

uint64_t presence_agent_id(const presence_agent *a)
{
	return a->id;
}
presence_state presence_agent_state(const presence_agent *a)
{
	return a->state;
}
uint64_t presence_agent_state_seq(const presence_agent *a)
{
	return a->state_seq;
}
uint32_t presence_agent_missed(const presence_agent *a)
{
	return a->missed;
}
uint64_t presence_agent_offer_id(const presence_agent *a)
{
	return a->offer_id;
}
const char *presence_agent_call_id(const presence_agent *a)
{
	return a->call_id;
}
uint32_t presence_agent_pipe(const presence_agent *a)
{
	return a->pipe;
}
bool presence_agent_live(const presence_agent *a)
{
	return a->live;
}
bool presence_agent_has_session(const presence_agent *a)
{
	return a->has_session;
}
bool presence_agent_in_roster(const presence_agent *a)
{
	return a->in_roster;
}
bool presence_agent_suspended(const presence_agent *a)
{
	return a->suspended;
}

// A RESERVED agent whose offer it accepted is connecting. The broker sends the Offer before its
// record of the match is on disk, so a broker that crashes meanwhile may come back without the
// offer and give the call to somebody else: until the broker confirms the connection
// (CallConnected, or a CallSync listing the call CONNECTED at the agent), the agent is not shown
// the call connected. It stays RESERVED rather than in a state of its own because that is what
// it is to everybody else: unavailable to the auction, holding one offer, counted as reserved on
// the wallboard; only the ring timer is off, for the agent has answered. Offer ids are unique
// across broker restarts, so an accepted id never matches a later offer.
static bool connecting(const presence_agent *a)
{
	return a->state == PRESENCE_RESERVED && a->accepted_offer_id != 0 &&
	       a->accepted_offer_id == a->offer_id;
}

bool presence_agent_connecting(const presence_agent *a)
{
	return connecting(a);
}

const char *presence_agent_secret_hash(const presence_agent *a)
{
	if (a == NULL || !a->in_roster || a->secret_hash == NULL)
		return NULL;
	return a->secret_hash;
}

void presence_core_counts(const presence_core *c, uint32_t counts[PRESENCE_NSTATES])
{
	memcpy(counts, c->counts, sizeof(c->counts));
}

uint32_t presence_core_size(const presence_core *c)
{
	return c->n_agents;
}

uint32_t presence_core_live_sessions(const presence_core *c)
{
	return c->n_live;
}

bool presence_core_roster_loaded(const presence_core *c)
{
	return c->roster_loaded;
}

void presence_core_quiet(presence_core *c, const presence_agent *a)
{
	c->quiet = a;
}

// ---------------------------------------------------------------------------------------------
// Deadlines

static void note_deadline(presence_core *c, uint64_t t)
{
	if (c->scheduled != 0 && c->scheduled <= t)
		return;
	c->scheduled = t;
	if (c->ops.schedule != NULL)
		c->ops.schedule(c->ops.arg, t);
}

static void timer_clear(presence_core *c, presence_agent *a)
{
	if (a->timer_at == 0)
		return;
	RB_REMOVE(ptimers, &c->timers, a);
	a->timer_at = 0;
}

static void timer_arm(presence_core *c, presence_agent *a, uint64_t at)
{
	timer_clear(c, a);
	a->timer_at = at != 0 ? at : 1;
	RB_INSERT(ptimers, &c->timers, a);
	note_deadline(c, a->timer_at);
}

static uint64_t heartbeat_us(const presence_core *c)
{
	return c->cfg.heartbeat_timeout_ms * 1000;
}

uint64_t presence_core_next_deadline(const presence_core *c)
{
	uint64_t next = 0;
	presence_agent *t = RB_MIN(ptimers, (struct ptimers *)&c->timers);
	if (t != NULL)
		next = t->timer_at;
	presence_agent *h = TAILQ_FIRST(&c->heard);
	if (h != NULL) {
		uint64_t at = h->heard_mono + heartbeat_us(c);
		if (next == 0 || at < next)
			next = at;
	}
	presence_agent *g = TAILQ_FIRST(&c->hanging);
	if (g != NULL && (next == 0 || g->hangup_deadline < next))
		next = g->hangup_deadline;
	return next;
}

static void heard_now(presence_core *c, presence_agent *a)
{
	if (a->live)
		TAILQ_REMOVE(&c->heard, a, heard);
	else
		c->n_live++;
	a->live = true;
	a->heard_mono = mono(c);
	TAILQ_INSERT_TAIL(&c->heard, a, heard);
	if (TAILQ_FIRST(&c->heard) == a)
		note_deadline(c, a->heard_mono + heartbeat_us(c));
}

static void heard_drop(presence_core *c, presence_agent *a)
{
	if (!a->live)
		return;
	TAILQ_REMOVE(&c->heard, a, heard);
	c->n_live--;
	a->live = false;
}

// ---------------------------------------------------------------------------------------------
// What the core emits

static void fill_update(const presence_agent *a, Ringbid__AgentUpdate *u)
{
	ringbid__agent_update__init(u);
	u->agent_id = a->id;
	u->available = a->state == PRESENCE_AVAILABLE && a->live && !a->hangup_unconfirmed;
	u->n_skills = a->n_skills;
	u->skills = a->skills;
	u->score = a->score;
	u->n_program_scores = a->n_ps;
	u->program_scores = a->ps_ptrs;
	u->available_since_us = a->available_since_us;
	u->state_seq = a->state_seq;
}

static void send_update(presence_core *c, const presence_agent *a)
{
	if (c->bulk || c->ops.auction == NULL)
		return;
	Ringbid__AgentUpdate u;
	fill_update(a, &u);
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_AGENT;
	e.agent = &u;
	c->ops.auction(c->ops.arg, &e);
}

// The agent has ended its call: the hang-up goes to the broker, which answers with a CallEnded
// once the call is over on its side. The auction would otherwise hear the agent free on its
// own link at once, often before the broker has read the hang-up on another, and match it a
// call the broker must then release and queue again.
static void hanging_begin(presence_core *c, presence_agent *a)
{
	if (a->hangup_unconfirmed)
		TAILQ_REMOVE(&c->hanging, a, hanging);
	a->hangup_unconfirmed = true;
	a->hangup_deadline = mono(c) + (uint64_t)PRESENCE_HANGUP_CONFIRM_MS * 1000;
	TAILQ_INSERT_TAIL(&c->hanging, a, hanging);
	if (TAILQ_FIRST(&c->hanging) == a)
		note_deadline(c, a->hangup_deadline);
}

// The broker has the call over (or presence has stopped waiting): an available agent is now
// available to the auction too.
static void hanging_end(presence_core *c, presence_agent *a, const char *reason)
{
	if (!a->hangup_unconfirmed)
		return;
	TAILQ_REMOVE(&c->hanging, a, hanging);
	a->hangup_unconfirmed = false;
	rb_logf(RB_LOG_DEBUG, a->ended_call_id, a->id, "hang-up settled: %s", reason);
	if (a->state == PRESENCE_AVAILABLE && a->live)
		send_update(c, a);
}

static void to_client(presence_core *c, uint32_t pipe, Ringbid__AgentMsg *m)
{
	if (pipe != 0 && c->ops.client != NULL)
		c->ops.client(c->ops.arg, pipe, m);
}

void presence_core_status(const presence_core *c, const presence_agent *a, Ringbid__AgentStatus *st)
{
	(void)c;
	ringbid__agent_status__init(st);
	st->agent_id = a->id;
	st->state = (Ringbid__AgentState)a->state;
	if (a->state == PRESENCE_RESERVED || a->state == PRESENCE_ON_CALL)
		st->call_id = (char *)a->call_id;
	if (a->state == PRESENCE_RESERVED)
		st->offer_id = a->offer_id;
	st->state_since_us = a->state_since_us;
	st->missed_offers = a->missed;
	if (a->has_session)
		st->token_expires_us = a->token_expires_us;
	st->reason = (char *)a->reason;
}

static void push_status(presence_core *c, const presence_agent *a)
{
	if (a->pipe == 0 || c->quiet == a)
		return;
	Ringbid__AgentStatus st;
	presence_core_status(c, a, &st);
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &st;
	to_client(c, a->pipe, &m);
}

static void error_event(presence_core *c, uint32_t pipe, int code, const char *text)
{
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)text;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.body_case = RINGBID__AGENT_MSG__BODY_ERROR;
	m.error = &er;
	to_client(c, pipe, &m);
}

static void call_event(presence_core *c, const presence_agent *a, Ringbid__CallEventKind kind,
                       uint64_t offer_id, const char *reason)
{
	Ringbid__CallEvent ev = RINGBID__CALL_EVENT__INIT;
	ev.kind = kind;
	ev.call_id = (char *)a->call_id;
	ev.offer_id = offer_id;
	ev.wrap_up_s = a->wrap_up_s;
	ev.reason = (char *)(reason != NULL ? reason : "");
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.body_case = RINGBID__AGENT_MSG__BODY_CALL_EVENT;
	m.call_event = &ev;
	to_client(c, a->pipe, &m);
}

static void offer_event(presence_core *c, const presence_agent *a)
{
	uint64_t now = wall(c);
	uint64_t waited = now > a->offer_arrived_us ? (now - a->offer_arrived_us) / 1000 : 0;
	Ringbid__OfferEvent ev = RINGBID__OFFER_EVENT__INIT;
	ev.offer_id = a->offer_id;
	ev.call_id = (char *)a->call_id;
	ev.program = (char *)a->program;
	ev.wait_ms = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
	ev.ring_timeout_ms = a->ring_timeout_ms;
	ev.caller_masked = (char *)a->caller_masked;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.body_case = RINGBID__AGENT_MSG__BODY_OFFER;
	m.offer = &ev;
	to_client(c, a->pipe, &m);
}

static const char *const result_names[5] = {"ACCEPTED", "DECLINED", "TIMEOUT", "AGENT_LOST",
                                            "REFUSED"};

// again: the result was given before (to a broker that has since restarted); it is not
// counted twice.
static void send_result(presence_core *c, uint64_t offer_id, const char *call_id, uint64_t agent_id,
                        Ringbid__OfferResultCode code, bool again)
{
	if ((unsigned)code < 5 && !again)
		c->stats.offers[code]++;
	rb_logf(RB_LOG_INFO, call_id, agent_id, "offer %llu: %s%s", (unsigned long long)offer_id,
	        (unsigned)code < 5 ? result_names[code] : "?", again ? " (again)" : "");
	if (c->ops.broker == NULL)
		return;
	Ringbid__OfferResult r = RINGBID__OFFER_RESULT__INIT;
	r.offer_id = offer_id;
	r.call_id = (char *)call_id;
	r.agent_id = agent_id;
	r.result = code;
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_OFFER_RESULT;
	e.offer_result = &r;
	c->ops.broker(c->ops.arg, &e);
}

static void offer_result(presence_core *c, uint64_t offer_id, const char *call_id,
                         uint64_t agent_id, Ringbid__OfferResultCode code)
{
	send_result(c, offer_id, call_id, agent_id, code, false);
}

static void agent_hangup(presence_core *c, uint64_t agent_id, const char *call_id, bool sale,
                         bool resolved)
{
	if (c->ops.broker == NULL)
		return;
	Ringbid__AgentHangup h = RINGBID__AGENT_HANGUP__INIT;
	h.call_id = (char *)call_id;
	h.agent_id = agent_id;
	h.sale = sale;
	h.resolved = resolved;
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_AGENT_HANGUP;
	e.agent_hangup = &h;
	c->ops.broker(c->ops.arg, &e);
}

// ---------------------------------------------------------------------------------------------
// The state machine

bool presence_transition_legal(presence_state from, presence_state to)
{
	// rows: from, columns: to (OFFLINE NOT_READY AVAILABLE RESERVED ON_CALL WRAP_UP)
	static const bool legal[PRESENCE_NSTATES][PRESENCE_NSTATES] = {
	        [PRESENCE_OFFLINE] = {0, 1, 0, 0, 1, 0},
	        [PRESENCE_NOT_READY] = {1, 0, 1, 0, 1, 0},
	        [PRESENCE_AVAILABLE] = {1, 1, 0, 1, 1, 0},
	        [PRESENCE_RESERVED] = {1, 1, 1, 0, 1, 0},
	        [PRESENCE_ON_CALL] = {0, 0, 0, 0, 0, 1},
	        [PRESENCE_WRAP_UP] = {1, 1, 1, 0, 1, 0},
	};
	if ((unsigned)from >= PRESENCE_NSTATES || (unsigned)to >= PRESENCE_NSTATES)
		return false;
	return legal[from][to];
}

static void busy_set(presence_core *c, presence_agent *a, bool busy)
{
	if (busy == a->in_busy)
		return;
	if (busy)
		TAILQ_INSERT_TAIL(&c->busy, a, busy);
	else
		TAILQ_REMOVE(&c->busy, a, busy);
	a->in_busy = busy;
}

static void clear_call(presence_agent *a)
{
	a->call_id[0] = '\0';
	a->program[0] = '\0';
	a->caller_masked[0] = '\0';
	a->wrap_up_s = 0;
	a->answered_us = 0;
	a->offer_arrived_us = 0;
	a->ring_timeout_ms = 0;
}

int presence_transition(presence_core *c, presence_agent *a, presence_state to, const char *reason)
{
	presence_state from = a->state;
	if (!presence_transition_legal(from, to)) {
		rb_logf(RB_LOG_WARN, a->call_id[0] ? a->call_id : NULL, a->id,
		        "refused transition %s -> %s", presence_state_name(from),
		        presence_state_name(to));
		return RB_ESTATE;
	}
	uint64_t now = wall(c);
	c->counts[from]--;
	c->counts[to]++;
	if (from == PRESENCE_RESERVED || from == PRESENCE_WRAP_UP)
		timer_clear(c, a);
	if (from == PRESENCE_RESERVED) {
		a->last_offer_id = a->offer_id;
		a->offer_id = 0;
	}
	a->state = to;
	a->state_seq++;
	a->state_since_us = now;
	if (to == PRESENCE_AVAILABLE)
		a->available_since_us = now;
	copy_str(a->reason, sizeof(a->reason), reason);

	switch (to) {
	case PRESENCE_OFFLINE:
	case PRESENCE_NOT_READY:
	case PRESENCE_AVAILABLE:
		clear_call(a);
		busy_set(c, a, false);
		break;
	case PRESENCE_RESERVED:
		busy_set(c, a, true);
		timer_arm(c, a, mono(c) + (uint64_t)a->ring_timeout_ms * 1000);
		break;
	case PRESENCE_ON_CALL:
		busy_set(c, a, true);
		break;
	case PRESENCE_WRAP_UP:
		busy_set(c, a, false);
		timer_arm(c, a, mono(c) + (uint64_t)a->wrap_up_s * 1000000);
		break;
	default:
		break;
	}
	rb_logf(RB_LOG_DEBUG, a->call_id[0] ? a->call_id : NULL, a->id, "state %s -> %s%s%s",
	        presence_state_name(from), presence_state_name(to), a->reason[0] ? ": " : "",
	        a->reason);
	// Free while the broker has not answered the agent's hang-up: every update since the
	// agent went on the call told the auction it is not available, and it hears otherwise only
	// once the broker has answered (hanging_end), so an update now would say nothing new.
	if (!(to == PRESENCE_AVAILABLE && a->hangup_unconfirmed))
		send_update(c, a);
	push_status(c, a);
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Sessions and links

static void unbind_pipe(presence_core *c, presence_agent *a)
{
	if (a->pipe == 0)
		return;
	HASH_DELETE(hh_pipe, c->by_pipe, a);
	a->pipe = 0;
}

// The agent's data link is gone (silence, closed connection, logout, a newer login): whatever
// depends on a live client ends; a call keeps running, for the voice leg is not the data link.
static void lose_link(presence_core *c, presence_agent *a, const char *reason)
{
	if (!a->live)
		return;
	heard_drop(c, a);
	rb_logf(RB_LOG_INFO, a->call_id[0] ? a->call_id : NULL, a->id, "link lost: %s", reason);
	switch (a->state) {
	case PRESENCE_RESERVED:
		if (connecting(a)) {
			// The broker has the ACCEPTED already: the call connects without the
			// client, as a connected call runs on without it.
			send_update(c, a);
			push_status(c, a);
			break;
		}
		offer_result(c, a->offer_id, a->call_id, a->id,
		             RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
		call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id,
		           reason);
		presence_transition(c, a, PRESENCE_OFFLINE, reason);
		break;
	case PRESENCE_AVAILABLE:
	case PRESENCE_NOT_READY:
		presence_transition(c, a, PRESENCE_OFFLINE, reason);
		break;
	default:
		// ON_CALL and WRAP_UP stay; the auction must still learn the link is gone.
		send_update(c, a);
		push_status(c, a);
		break;
	}
}

static void bind_pipe(presence_core *c, presence_agent *a, uint32_t pipe)
{
	if (a->pipe == pipe)
		return;
	presence_agent *other = presence_core_find_pipe(c, pipe);
	if (other != NULL && other != a) {
		// One connection speaks for one agent; the earlier one loses its link.
		unbind_pipe(c, other);
		lose_link(c, other, "connection taken over by another agent");
		maybe_reap(c, other);
	}
	if (a->pipe != 0) {
		error_event(c, a->pipe, RB_ECLOSED, "session replaced elsewhere");
		unbind_pipe(c, a);
	}
	a->pipe = pipe;
	HASH_ADD(hh_pipe, c->by_pipe, pipe, sizeof(a->pipe), a);
}

static void revoke_token(presence_core *c, presence_agent *a)
{
	if (!a->has_session)
		return;
	HASH_DELETE(hh_token, c->by_token, a);
	TAILQ_REMOVE(&c->expiry, a, expiry);
	if (c->ops.session != NULL)
		c->ops.session(c->ops.arg, a->id, a->token_hash, 0, false);
	a->has_session = false;
	a->token_expires_us = 0;
	a->token_expires_mono = 0;
}

static void end_session(presence_core *c, presence_agent *a, const char *reason)
{
	lose_link(c, a, reason);
	revoke_token(c, a);
	unbind_pipe(c, a);
}

int presence_core_auth(presence_core *c, const char *token, presence_agent **out)
{
	uint8_t h[RB_TOKEN_HASH];
	if (token == NULL || rb_token_hash(token, h) != 0)
		return RB_EAUTH;
	presence_agent *a = NULL;
	HASH_FIND(hh_token, c->by_token, h, RB_TOKEN_HASH, a);
	if (a == NULL || !rb_token_equal(a->token_hash, h))
		return RB_EAUTH;
	if (a->token_expires_mono <= mono(c)) {
		error_event(c, a->pipe, RB_EAUTH, "session expired: log in again");
		end_session(c, a, "session expired");
		return RB_EAUTH;
	}
	*out = a;
	return 0;
}

int presence_core_login(presence_core *c, presence_agent *a, uint32_t pipe,
                        char token_hex[RB_TOKEN_HEX])
{
	if (!a->in_roster || a->suspended)
		return RB_EFORBIDDEN;
	revoke_token(c, a);
	// A new login is a new session: what the previous one had going ends with it, and the
	// previous connection hears so before it is let go.
	lose_link(c, a, "logged in again");
	bind_pipe(c, a, pipe);

	rb_token_new(token_hex, a->token_hash);
	HASH_ADD(hh_token, c->by_token, token_hash, RB_TOKEN_HASH, a);
	a->has_session = true;
	a->token_expires_us = wall(c) + c->cfg.session_ttl_ms * 1000;
	a->token_expires_mono = mono(c) + c->cfg.session_ttl_ms * 1000;
	// The TTL is fixed, so appending keeps the list ordered by expiry.
	TAILQ_INSERT_TAIL(&c->expiry, a, expiry);
	if (c->ops.session != NULL)
		c->ops.session(c->ops.arg, a->id, a->token_hash, a->token_expires_us, true);
	heard_now(c, a);
	c->stats.logins++;
	rb_logf(RB_LOG_INFO, NULL, a->id, "logged in (state %s)", presence_state_name(a->state));
	if (a->state == PRESENCE_OFFLINE)
		presence_transition(c, a, PRESENCE_NOT_READY, "logged in");
	else
		send_update(c, a);
	return 0;
}

void presence_core_touch(presence_core *c, presence_agent *a, uint32_t pipe)
{
	bool rebind = !a->live || a->pipe != pipe;
	if (rebind)
		bind_pipe(c, a, pipe);
	bool was_live = a->live;
	heard_now(c, a);
	if (!rebind)
		return;
	rb_logf(RB_LOG_INFO, NULL, a->id, "session resumed (state %s)",
	        presence_state_name(a->state));
	if (a->state == PRESENCE_OFFLINE) {
		presence_transition(c, a, PRESENCE_NOT_READY, "session resumed");
		return;
	}
	if (!was_live)
		send_update(c, a);
	// The new connection never saw the offer that rings at the agent. An accepted one no
	// longer rings: the status answer shows it, and its call event follows.
	if (a->state == PRESENCE_RESERVED && !connecting(a))
		offer_event(c, a);
}

void presence_core_logout(presence_core *c, presence_agent *a)
{
	rb_logf(RB_LOG_INFO, NULL, a->id, "logged out (state %s)", presence_state_name(a->state));
	end_session(c, a, "logged out");
}

void presence_core_pipe_closed(presence_core *c, uint32_t pipe)
{
	presence_agent *a = presence_core_find_pipe(c, pipe);
	if (a == NULL)
		return;
	unbind_pipe(c, a);
	lose_link(c, a, "connection closed");
	maybe_reap(c, a);
}

// ---------------------------------------------------------------------------------------------
// Client requests

static void finish_wrap_up(presence_core *c, presence_agent *a, const char *reason)
{
	if (a->live && a->has_session)
		presence_transition(c, a, PRESENCE_AVAILABLE, reason);
	else
		presence_transition(c, a, PRESENCE_OFFLINE, "wrap-up ended without a session");
}

static void enter_wrap_up(presence_core *c, presence_agent *a, uint32_t wrap_up_s,
                          const char *reason)
{
	a->wrap_up_s = wrap_up_s;
	if (presence_transition(c, a, PRESENCE_WRAP_UP, reason) != 0)
		return;
	if (wrap_up_s == 0)
		finish_wrap_up(c, a, "no wrap-up time");
}

int presence_core_set_state(presence_core *c, presence_agent *a, presence_state to)
{
	if (to == PRESENCE_AVAILABLE) {
		if (a->state == PRESENCE_AVAILABLE)
			return 0;
		if (a->state != PRESENCE_NOT_READY && a->state != PRESENCE_WRAP_UP)
			return RB_ESTATE;
		a->missed = 0;
		return presence_transition(c, a, PRESENCE_AVAILABLE, "ready");
	}
	if (to == PRESENCE_NOT_READY) {
		if (a->state == PRESENCE_NOT_READY)
			return 0;
		if (a->state != PRESENCE_AVAILABLE && a->state != PRESENCE_WRAP_UP)
			return RB_ESTATE;
		return presence_transition(c, a, PRESENCE_NOT_READY, "paused");
	}
	return RB_EINVAL;
}

int presence_core_answer(presence_core *c, presence_agent *a, uint64_t offer_id, bool accept)
{
	if (offer_id == 0)
		return RB_ENOTFOUND;
	if (offer_id == a->accepted_offer_id &&
	    (offer_id == a->offer_id || offer_id == a->last_offer_id))
		// The broker has this offer's ACCEPTED: a repeat is answered, a change of mind
		// cannot be.
		return accept ? 0 : RB_ESTATE;
	if (a->state == PRESENCE_RESERVED && a->offer_id == offer_id) {
		if (accept) {
			offer_result(c, offer_id, a->call_id, a->id,
			             RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
			a->missed = 0;
			// Connecting (see connecting()): answered, so the ring timer is off; the
			// state changes when the broker confirms.
			a->accepted_offer_id = offer_id;
			timer_clear(c, a);
			rb_logf(RB_LOG_DEBUG, a->call_id, a->id,
			        "offer %llu accepted: waiting for the broker to connect it",
			        (unsigned long long)offer_id);
		} else {
			offer_result(c, offer_id, a->call_id, a->id,
			             RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED);
			presence_transition(c, a, PRESENCE_AVAILABLE, "declined");
		}
		return 0;
	}
	if (offer_id == a->last_offer_id)
		return 0;
	return RB_ENOTFOUND;
}

int presence_core_end_call(presence_core *c, presence_agent *a, const char *call_id, bool sale,
                           bool resolved)
{
	if (call_id == NULL || call_id[0] == '\0')
		return RB_ENOTFOUND;
	if (a->state == PRESENCE_ON_CALL && strcmp(a->call_id, call_id) == 0) {
		agent_hangup(c, a->id, call_id, sale, resolved);
		copy_str(a->ended_call_id, sizeof(a->ended_call_id), call_id);
		a->ended_by_agent = true;
		a->ended_sale = sale;
		a->ended_resolved = resolved;
		if (c->ops.broker != NULL)
			hanging_begin(c, a);
		enter_wrap_up(c, a, a->wrap_up_s, "call ended by the agent");
		return 0;
	}
	if (connecting(a) && strcmp(a->call_id, call_id) == 0)
		return RB_ESTATE; // accepted, not connected: there is no call to end yet
	if (strcmp(a->ended_call_id, call_id) == 0)
		return 0;
	return RB_ENOTFOUND;
}

// ---------------------------------------------------------------------------------------------
// The broker

static bool valid_call_id(const char *s)
{
	return s != NULL && rb_valid_id(s, PRESENCE_ID_MAX);
}

#define MAX_RING_MS 600000u
#define MAX_WRAP_S  86400u

// A connecting agent whose call will not connect (the broker withdrew the offer, the call ended,
// a restarted broker no longer has it): free again, owing no after-call work, its client never
// having been shown the call connected.
static void release_connecting(presence_core *c, presence_agent *a, const char *reason)
{
	rb_logf(RB_LOG_INFO, a->call_id, a->id, "accepted offer %llu released: %s",
	        (unsigned long long)a->offer_id, reason);
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id, reason);
	if (a->live && a->has_session)
		presence_transition(c, a, PRESENCE_AVAILABLE, reason);
	else
		presence_transition(c, a, PRESENCE_OFFLINE, reason);
	maybe_reap(c, a);
}

// The broker has the call the agent accepted CONNECTED on its disk: the agent is on it, and its
// client hears so now, and not before.
static void confirm_connected(presence_core *c, presence_agent *a, uint64_t answered_us,
                              const char *reason)
{
	uint64_t offer_id = a->offer_id;
	a->answered_us = answered_us != 0 ? answered_us : wall(c);
	presence_transition(c, a, PRESENCE_ON_CALL, reason);
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, offer_id, reason);
}

int presence_core_offer(presence_core *c, const Ringbid__Offer *o)
{
	if (o->offer_id == 0 || o->agent_id == 0 || !valid_call_id(o->call_id) ||
	    !valid_call_id(o->program) || o->ring_timeout_ms == 0 ||
	    o->ring_timeout_ms > MAX_RING_MS || o->wrap_up_s > MAX_WRAP_S ||
	    (o->caller_masked != NULL && !rb_valid_text(o->caller_masked, PRESENCE_CALLER_MAX)))
		return RB_EINVAL;
	presence_agent *a = presence_core_find(c, o->agent_id);
	if (a != NULL && (a->offer_id == o->offer_id || a->last_offer_id == o->offer_id)) {
		rb_logf(RB_LOG_DEBUG, o->call_id, o->agent_id, "offer %llu again: ignored",
		        (unsigned long long)o->offer_id);
		return 0;
	}
	if (a == NULL || a->state != PRESENCE_AVAILABLE || !a->live || c->stopping) {
		offer_result(c, o->offer_id, o->call_id, o->agent_id,
		             RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED);
		// The auction matched on a picture older than ours: send it the current one.
		if (a != NULL)
			send_update(c, a);
		return 0;
	}
	a->offer_id = o->offer_id;
	a->offer_arrived_us = o->arrived_us;
	a->ring_timeout_ms = o->ring_timeout_ms;
	copy_str(a->call_id, sizeof(a->call_id), o->call_id);
	copy_str(a->program, sizeof(a->program), o->program);
	copy_str(a->caller_masked, sizeof(a->caller_masked), o->caller_masked);
	a->wrap_up_s = o->wrap_up_s;
	char reason[PRESENCE_REASON_MAX];
	snprintf(reason, sizeof(reason), "offered call %s", o->call_id);
	presence_transition(c, a, PRESENCE_RESERVED, reason);
	offer_event(c, a);
	return 0;
}

int presence_core_offer_cancel(presence_core *c, const Ringbid__OfferCancel *oc)
{
	if (oc->offer_id == 0 || oc->agent_id == 0 ||
	    (oc->call_id != NULL && oc->call_id[0] != '\0' && !valid_call_id(oc->call_id)))
		return RB_EINVAL;
	presence_agent *a = presence_core_find(c, oc->agent_id);
	if (a == NULL || a->state != PRESENCE_RESERVED || a->offer_id != oc->offer_id)
		return 0;
	if (connecting(a)) {
		release_connecting(c, a, "call ended before it connected");
		return 0;
	}
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id,
	           "offer withdrawn");
	presence_transition(c, a, PRESENCE_AVAILABLE, "offer withdrawn");
	return 0;
}

int presence_core_call_ended(presence_core *c, const Ringbid__CallEnded *ce)
{
	if (ce->agent_id == 0 || !valid_call_id(ce->call_id) || ce->wrap_up_s > MAX_WRAP_S)
		return RB_EINVAL;
	presence_agent *a = presence_core_find(c, ce->agent_id);
	if (a != NULL && connecting(a) && strcmp(a->call_id, ce->call_id) == 0) {
		// An ACCEPTED that crossed the end of the call (the caller hung up, the offer was
		// withdrawn): the agent never had it.
		release_connecting(c, a, "call ended before it connected");
		return 0;
	}
	if (a != NULL && a->hangup_unconfirmed && strcmp(a->ended_call_id, ce->call_id) == 0) {
		// The broker's answer to the agent's hang-up (or its own end of the call, crossing
		// the hang-up): the call is over on both sides.
		hanging_end(c, a, "the broker has the call ended");
		return 0;
	}
	if (a == NULL || a->state != PRESENCE_ON_CALL || strcmp(a->call_id, ce->call_id) != 0)
		return 0;
	copy_str(a->ended_call_id, sizeof(a->ended_call_id), ce->call_id);
	a->ended_by_agent = false;
	a->wrap_up_s = ce->wrap_up_s;
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED, 0, "call ended");
	enter_wrap_up(c, a, ce->wrap_up_s, "call ended");
	return 0;
}

int presence_core_call_connected(presence_core *c, const Ringbid__CallConnected *cc)
{
	if (cc->agent_id == 0 || cc->offer_id == 0 || !valid_call_id(cc->call_id))
		return RB_EINVAL;
	presence_agent *a = presence_core_find(c, cc->agent_id);
	if (a != NULL && a->state == PRESENCE_RESERVED && a->offer_id == cc->offer_id &&
	    strcmp(a->call_id, cc->call_id) == 0) {
		if (!connecting(a)) {
			// Still ringing here, yet connected: telephony reported the call answered
			// at the agent's phone. The offer is settled by that answer, as by an
			// accept, and needs no result of presence's.
			rb_logf(RB_LOG_INFO, a->call_id, a->id,
			        "offer %llu answered at the telephone: connected",
			        (unsigned long long)a->offer_id);
			a->missed = 0;
			a->accepted_offer_id = a->offer_id;
		}
		confirm_connected(c, a, cc->answered_us, "call connected");
		return 0;
	}
	// The broker says it again (an ACCEPTED repeated after a CallSync), or says it late.
	if (a != NULL && ((a->state == PRESENCE_ON_CALL && strcmp(a->call_id, cc->call_id) == 0) ||
	                  strcmp(a->ended_call_id, cc->call_id) == 0))
		return 0;
	// Not the offer this agent waits on: it settled otherwise here, and the call is the
	// broker's to end. The broker's next CallSync brings the two pictures together.
	rb_logf(RB_LOG_WARN, cc->call_id, cc->agent_id,
	        "call connected at the broker with offer %llu, which the agent is not connecting "
	        "(%s): ignored",
	        (unsigned long long)cc->offer_id,
	        a != NULL ? presence_state_name(a->state) : "unknown agent");
	return 0;
}

static bool valid_agent_call(const Ringbid__AgentCall *ac)
{
	if (ac == NULL || ac->agent_id == 0 || !valid_call_id(ac->call_id) ||
	    ac->wrap_up_s > MAX_WRAP_S)
		return false;
	if (ac->program != NULL && ac->program[0] != '\0' && !valid_call_id(ac->program))
		return false;
	if (ac->state == RINGBID__CALL_STATE__CALL_OFFERED)
		return ac->offer_id != 0;
	return ac->state == RINGBID__CALL_STATE__CALL_CONNECTED;
}

static int sync_connected(presence_core *c, const Ringbid__AgentCall *ac, uint64_t gen)
{
	presence_agent *a = presence_core_find(c, ac->agent_id);
	if (a == NULL) {
		// A call outlives the session and even presence itself: keep the agent ON_CALL.
		a = agent_create(c, ac->agent_id);
		if (a == NULL)
			return RB_ENOMEM;
	}
	a->sync_gen = gen;
	if (a->state == PRESENCE_ON_CALL && strcmp(a->call_id, ac->call_id) == 0)
		return 0;
	if (a->ended_by_agent && strcmp(a->ended_call_id, ac->call_id) == 0) {
		// The agent ended it but the broker never heard: say it again.
		agent_hangup(c, a->id, ac->call_id, a->ended_sale, a->ended_resolved);
		return 0;
	}
	if (connecting(a) && strcmp(a->call_id, ac->call_id) == 0) {
		// The broker connected the offer the agent accepted (its CallConnected went with
		// the old link): this is the confirmation.
		if (ac->program != NULL && ac->program[0] != '\0')
			copy_str(a->program, sizeof(a->program), ac->program);
		a->wrap_up_s = ac->wrap_up_s;
		confirm_connected(c, a, ac->answered_us, "connected call at the broker");
		return 0;
	}
	if (a->state == PRESENCE_RESERVED && strcmp(a->call_id, ac->call_id) != 0)
		call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id,
		           "offer withdrawn");
	copy_str(a->call_id, sizeof(a->call_id), ac->call_id);
	copy_str(a->program, sizeof(a->program), ac->program);
	a->accepted_offer_id = 0;
	a->wrap_up_s = ac->wrap_up_s;
	a->answered_us = ac->answered_us != 0 ? ac->answered_us : wall(c);
	if (a->state == PRESENCE_ON_CALL)
		push_status(c, a);
	else
		presence_transition(c, a, PRESENCE_ON_CALL, "connected call at the broker");
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED, 0,
	           "connected call at the broker");
	return 0;
}

// An OFFERED entry: the broker waits for this offer's result. The agent may have answered it
// while the broker was down (a broker that restarts before the record of the answer reached
// its disk still has the call OFFERED): an accepted offer is accepted again, so that the broker
// connects the agent it is talking to rather than offer the call to another.
static void sync_offered(presence_core *c, const Ringbid__AgentCall *ac, uint64_t gen)
{
	presence_agent *a = presence_core_find(c, ac->agent_id);
	if (a != NULL && a->state == PRESENCE_RESERVED && a->offer_id == ac->offer_id) {
		a->sync_gen = gen;
		// Accepted meanwhile: ACCEPTED again, and the agent goes on waiting for the
		// broker to connect it and say so.
		if (connecting(a))
			send_result(c, ac->offer_id, a->call_id, a->id,
			            RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED, true);
		return;
	}
	bool accepted = a != NULL && a->accepted_offer_id == ac->offer_id;
	if (accepted && a->state == PRESENCE_ON_CALL && strcmp(a->call_id, ac->call_id) == 0) {
		send_result(c, ac->offer_id, ac->call_id, a->id,
		            RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED, true);
		a->sync_gen = gen;
		return;
	}
	if (accepted && a->ended_by_agent && strcmp(a->ended_call_id, ac->call_id) == 0) {
		// The agent has even ended the call since: the broker hears both again, in order,
		// and closes the call as completed instead of offering it to another agent.
		send_result(c, ac->offer_id, ac->call_id, a->id,
		            RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED, true);
		agent_hangup(c, a->id, ac->call_id, a->ended_sale, a->ended_resolved);
		return;
	}
	offer_result(c, ac->offer_id, ac->call_id, ac->agent_id,
	             RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
}

// The end of a sync: what presence holds and the broker did not name is over.
static void sync_sweep(presence_core *c, uint64_t gen)
{
	presence_agent *a = TAILQ_FIRST(&c->busy), *next;
	for (; a != NULL; a = next) {
		next = TAILQ_NEXT(a, busy);
		if (a->sync_gen == gen)
			continue;
		if (connecting(a)) {
			release_connecting(c, a, "call no longer at the broker");
		} else if (a->state == PRESENCE_RESERVED) {
			call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN,
			           a->offer_id, "offer no longer at the broker");
			presence_transition(c, a, PRESENCE_AVAILABLE,
			                    "offer no longer at the broker");
		} else if (a->state == PRESENCE_ON_CALL) {
			copy_str(a->ended_call_id, sizeof(a->ended_call_id), a->call_id);
			a->ended_by_agent = false;
			call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED, 0,
			           "call no longer at the broker");
			enter_wrap_up(c, a, a->wrap_up_s, "call no longer at the broker");
		}
	}
}

int presence_core_call_sync(presence_core *c, const Ringbid__CallSync *cs)
{
	bool valid = (cs->sync_id != 0 || (!cs->first && !cs->last));
	for (size_t i = 0; valid && i < cs->n_calls; i++)
		valid = valid_agent_call(cs->calls[i]);
	if (!valid) {
		// A refused chunk leaves the picture incomplete, whichever sync it belonged to:
		// the open sync withdraws nothing.
		if (c->sync_open) {
			rb_logf(RB_LOG_WARN, NULL, 0,
			        "call sync %llu: a chunk was refused; nothing will be withdrawn",
			        (unsigned long long)c->sync_id);
			c->sync_open = false;
		}
		return RB_EINVAL;
	}
	if (cs->first) {
		if (c->sync_open)
			rb_logf(RB_LOG_INFO, NULL, 0,
			        "call sync %llu left unfinished: sync %llu begins",
			        (unsigned long long)c->sync_id, (unsigned long long)cs->sync_id);
		c->sync_open = true;
		c->sync_id = cs->sync_id;
		c->sync_gen++;
	} else if (!c->sync_open || cs->sync_id != c->sync_id) {
		// A chunk whose first was not seen: each entry still holds on its own, but the
		// picture is not whole, so nothing is withdrawn for want of a mention.
		rb_logf(RB_LOG_WARN, NULL, 0,
		        "call sync %llu: a chunk without its first; its calls are settled, nothing "
		        "is withdrawn",
		        (unsigned long long)cs->sync_id);
		c->sync_open = false;
	}
	uint64_t gen = c->sync_gen;
	int rv = 0;
	for (size_t i = 0; i < cs->n_calls; i++) {
		const Ringbid__AgentCall *ac = cs->calls[i];
		if (ac->state == RINGBID__CALL_STATE__CALL_CONNECTED) {
			int r = sync_connected(c, ac, gen);
			if (r != 0)
				rv = r;
			continue;
		}
		sync_offered(c, ac, gen);
	}
	if (cs->last && c->sync_open) {
		c->sync_open = false;
		sync_sweep(c, gen);
		// A hang-up the broker did not answer, of an agent the broker has no call at: it
		// has nothing left to end.
		presence_agent *a = TAILQ_FIRST(&c->hanging), *next;
		for (; a != NULL; a = next) {
			next = TAILQ_NEXT(a, hanging);
			if (a->sync_gen != gen)
				hanging_end(c, a, "no call at the broker");
		}
	}
	return rv;
}

void presence_core_stats_msg(const presence_core *c, Ringbid__AgentCount counts[PRESENCE_NSTATES],
                             Ringbid__AgentCount *ptrs[PRESENCE_NSTATES])
{
	for (int s = 0; s < PRESENCE_NSTATES; s++) {
		ringbid__agent_count__init(&counts[s]);
		counts[s].state = (Ringbid__AgentState)s;
		counts[s].count = c->counts[s];
		ptrs[s] = &counts[s];
	}
}

uint32_t presence_core_stop(presence_core *c)
{
	c->stopping = true;
	uint32_t n = 0;
	presence_agent *a = TAILQ_FIRST(&c->busy), *next;
	for (; a != NULL; a = next) {
		next = TAILQ_NEXT(a, busy);
		// An accepted offer has had its one result: the broker connects it, and the next
		// presence finds the call in the broker's CallSync.
		if (a->state != PRESENCE_RESERVED || connecting(a))
			continue;
		offer_result(c, a->offer_id, a->call_id, a->id,
		             RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST);
		call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id,
		           "presence is restarting");
		// The link goes with presence: the agent is not offered anything else meanwhile.
		heard_drop(c, a);
		presence_transition(c, a, PRESENCE_OFFLINE, "presence is restarting");
		n++;
	}
	return n;
}

// ---------------------------------------------------------------------------------------------
// The auction

int presence_core_snapshot(presence_core *c)
{
	if (c->ops.auction == NULL)
		return 0;
	Ringbid__AgentUpdate *ups = calloc(PRESENCE_SNAPSHOT_CHUNK, sizeof(*ups));
	Ringbid__AgentUpdate **ptrs = calloc(PRESENCE_SNAPSHOT_CHUNK, sizeof(*ptrs));
	if (ups == NULL || ptrs == NULL) {
		free(ups);
		free(ptrs);
		return RB_ENOMEM;
	}
	uint64_t id = ++c->snapshot_id;
	Ringbid__AgentSnapshot snap = RINGBID__AGENT_SNAPSHOT__INIT;
	Ringbid__Envelope e = RINGBID__ENVELOPE__INIT;
	e.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT;
	e.snapshot = &snap;
	snap.snapshot_id = id;
	snap.first = true;
	snap.agents = ptrs;
	size_t n = 0, bytes = 0;
	presence_agent *a, *tmp;
	HASH_ITER(hh, c->by_id, a, tmp)
	{
		Ringbid__AgentUpdate u;
		fill_update(a, &u);
		// Agents with many program scores make large entries: a chunk is closed by count or
		// by size, whichever comes first, so that no chunk nears the link's limit.
		size_t size = ringbid__agent_update__get_packed_size(&u) + 8;
		if (n > 0 &&
		    (n == PRESENCE_SNAPSHOT_CHUNK || bytes + size > PRESENCE_SNAPSHOT_BYTES)) {
			snap.n_agents = n;
			snap.last = false;
			c->ops.auction(c->ops.arg, &e);
			snap.first = false;
			n = 0;
			bytes = 0;
		}
		ups[n] = u;
		ptrs[n] = &ups[n];
		n++;
		bytes += size;
	}
	snap.n_agents = n;
	snap.last = true;
	c->ops.auction(c->ops.arg, &e);
	rb_logf(RB_LOG_INFO, NULL, 0, "snapshot %llu of %u agents sent to the auction",
	        (unsigned long long)id, c->n_agents);
	free(ups);
	free(ptrs);
	return 0;
}

// ---------------------------------------------------------------------------------------------
// The roster

void presence_core_roster_begin(presence_core *c)
{
	c->roster_gen++;
	c->bulk = true;
}

static bool same_skills(const presence_agent *a, const presence_roster_row *row, size_t n)
{
	if (a->n_skills != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (strcmp(a->skills[i], row->skills[i]) != 0)
			return false;
	return true;
}

static int set_skills(presence_agent *a, const presence_roster_row *row, size_t n)
{
	char **v = n > 0 ? calloc(n, sizeof(*v)) : NULL;
	if (n > 0 && v == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		v[i] = strdup(row->skills[i]);
		if (v[i] == NULL) {
			for (size_t j = 0; j < i; j++)
				free(v[j]);
			free(v);
			return RB_ENOMEM;
		}
	}
	free_skills(a);
	a->skills = v;
	a->n_skills = n;
	return 0;
}

int presence_core_roster_upsert(presence_core *c, const presence_roster_row *row)
{
	if (row->id == 0)
		return RB_EINVAL;
	size_t n = row->n_skills > PRESENCE_MAX_SKILLS ? PRESENCE_MAX_SKILLS : row->n_skills;
	char *hash = NULL;
	if (row->secret_hash != NULL && row->secret_hash[0] != '\0' &&
	    strlen(row->secret_hash) < RB_SECRET_HASH_MAX) {
		hash = strdup(row->secret_hash);
		if (hash == NULL)
			return RB_ENOMEM;
	}
	presence_agent *a = presence_core_find(c, row->id);
	bool created = false;
	if (a == NULL) {
		a = agent_create(c, row->id);
		if (a == NULL) {
			free(hash);
			return RB_ENOMEM;
		}
		created = true;
	}
	bool changed =
	        created || !a->in_roster || a->score != row->score || !same_skills(a, row, n);
	if (!same_skills(a, row, n) && set_skills(a, row, n) != 0) {
		free(hash);
		if (created)
			agent_destroy(c, a);
		return RB_ENOMEM;
	}
	free(a->secret_hash);
	a->secret_hash = hash;
	a->score = row->score;
	a->in_roster = true;
	a->roster_gen = c->roster_gen;
	bool newly_suspended = row->suspended && !a->suspended;
	a->suspended = row->suspended;
	if (newly_suspended && (a->has_session || a->pipe != 0)) {
		rb_logf(RB_LOG_INFO, NULL, a->id, "suspended: session ended");
		error_event(c, a->pipe, RB_EFORBIDDEN, "agent suspended");
		end_session(c, a, "agent suspended");
	}
	if (changed)
		send_update(c, a);
	return 0;
}

void presence_core_roster_remove(presence_core *c, uint64_t id)
{
	presence_agent *a = presence_core_find(c, id);
	if (a == NULL || !a->in_roster)
		return;
	a->in_roster = false;
	free(a->secret_hash);
	a->secret_hash = NULL;
	if (a->has_session || a->pipe != 0) {
		rb_logf(RB_LOG_INFO, NULL, a->id, "removed from the roster: session ended");
		error_event(c, a->pipe, RB_EFORBIDDEN, "agent removed from the roster");
		end_session(c, a, "agent removed from the roster");
	}
	maybe_reap(c, a);
}

void presence_core_roster_end(presence_core *c)
{
	presence_agent *a, *tmp;
	HASH_ITER(hh, c->by_id, a, tmp)
	{
		if (a->in_roster && a->roster_gen != c->roster_gen)
			presence_core_roster_remove(c, a->id);
	}
	c->bulk = false;
	c->roster_loaded = true;
	presence_core_snapshot(c);
}

// ---------------------------------------------------------------------------------------------
// Scores

const Ringbid__ProgramScore *const *presence_agent_program_scores(const presence_agent *a,
                                                                  size_t *n)
{
	*n = a->n_ps;
	return (const Ringbid__ProgramScore *const *)a->ps_ptrs;
}

double presence_agent_score(const presence_agent *a)
{
	return a->score;
}

void presence_core_scores_begin(presence_core *c)
{
	c->scores_gen++;
	c->scores_bulk = true;
	c->n_dirty = 0;
	c->n_changed = 0;
	c->dirty_lost = false;
}

static bool score_valid(double s)
{
	return isfinite(s) && s >= 0 && s <= 100;
}

static int pps_cmp(const void *x, const void *y)
{
	return strcmp(((const presence_program_score *)x)->program,
	              ((const presence_program_score *)y)->program);
}

// Builds the sorted block of program scores (see presence_agent.ps) from n checked entries.
// *out is NULL when n is 0. Returns 0, RB_EINVAL (a program named twice) or RB_ENOMEM.
static int ps_block(const presence_program_score *in, size_t n, Ringbid__ProgramScore **out)
{
	*out = NULL;
	if (n == 0)
		return 0;
	presence_program_score sorted[PRESENCE_MAX_PROGRAM_SCORES];
	memcpy(sorted, in, n * sizeof(*sorted));
	qsort(sorted, n, sizeof(*sorted), pps_cmp);
	size_t bytes = 0;
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(sorted[i - 1].program, sorted[i].program) == 0)
			return RB_EINVAL;
		bytes += strlen(sorted[i].program) + 1;
	}
	Ringbid__ProgramScore *v =
	        malloc(n * (sizeof(*v) + sizeof(Ringbid__ProgramScore *)) + bytes);
	if (v == NULL)
		return RB_ENOMEM;
	Ringbid__ProgramScore **ptrs = (Ringbid__ProgramScore **)(v + n);
	char *p = (char *)(ptrs + n);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(sorted[i].program) + 1;
		memcpy(p, sorted[i].program, len);
		ringbid__program_score__init(&v[i]);
		v[i].program = p;
		v[i].score = sorted[i].score;
		ptrs[i] = &v[i];
		p += len;
	}
	*out = v;
	return 0;
}

static bool ps_same(const Ringbid__ProgramScore *x, size_t nx, const Ringbid__ProgramScore *y,
                    size_t ny)
{
	if (nx != ny)
		return false;
	for (size_t i = 0; i < nx; i++)
		if (x[i].score != y[i].score || strcmp(x[i].program, y[i].program) != 0)
			return false;
	return true;
}

static void ps_swap(presence_agent *a, Ringbid__ProgramScore *v, size_t n)
{
	free(a->ps);
	a->ps = v;
	a->ps_ptrs = n > 0 ? (Ringbid__ProgramScore **)(v + n) : NULL;
	a->n_ps = n;
}

// The agent's scores changed: the auction hears now, or at the end of a full load.
static void scores_changed(presence_core *c, presence_agent *a)
{
	if (!c->scores_bulk) {
		send_update(c, a);
		return;
	}
	if (a->scores_dirty)
		return;
	a->scores_dirty = true;
	c->n_changed++;
	if (c->n_dirty == c->dirty_cap) {
		size_t cap = c->dirty_cap ? c->dirty_cap * 2 : 256;
		uint64_t *v = realloc(c->dirty, cap * sizeof(*v));
		if (v == NULL) {
			c->dirty_lost = true;
			return;
		}
		c->dirty = v;
		c->dirty_cap = cap;
	}
	c->dirty[c->n_dirty++] = a->id;
}

int presence_core_scores_set(presence_core *c, uint64_t id, bool has_score, double score,
                             const presence_program_score *ps, size_t n)
{
	if (id == 0 || (has_score && !score_valid(score)) || n > PRESENCE_MAX_PROGRAM_SCORES ||
	    (n > 0 && ps == NULL))
		return RB_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (ps[i].program == NULL || !rb_valid_id(ps[i].program, PRESENCE_ID_MAX) ||
		    !score_valid(ps[i].score))
			return RB_EINVAL;
	presence_agent *a = presence_core_find(c, id);
	if (a == NULL)
		return RB_ENOTFOUND;
	Ringbid__ProgramScore *v;
	int rv = ps_block(ps, n, &v);
	if (rv != 0)
		return rv;
	a->scores_gen = c->scores_gen;
	bool changed = (has_score && score != a->score) || !ps_same(a->ps, a->n_ps, v, n);
	if (!changed) {
		free(v);
		return 0;
	}
	ps_swap(a, v, n);
	if (has_score)
		a->score = score;
	scores_changed(c, a);
	return 0;
}

void presence_core_scores_end(presence_core *c, size_t *changed)
{
	if (!c->scores_bulk) {
		if (changed != NULL)
			*changed = 0;
		return;
	}
	presence_agent *a, *tmp;
	HASH_ITER(hh, c->by_id, a, tmp)
	{
		// Not in this load: billing has no program scores for it (any more).
		if (a->scores_gen != c->scores_gen && a->n_ps > 0) {
			ps_swap(a, NULL, 0);
			scores_changed(c, a);
		}
	}
	c->scores_bulk = false;
	size_t n = c->n_dirty;
	if (c->dirty_lost || n > PRESENCE_SNAPSHOT_CHUNK) {
		HASH_ITER(hh, c->by_id, a, tmp)
		{
			a->scores_dirty = false;
		}
		if (presence_core_snapshot(c) != 0) {
			// No memory for a snapshot: each changed agent known on its own instead;
			// the next snapshot (the auction asks for one when its link comes back) or
			// load brings the rest.
			rb_logf(RB_LOG_WARN, NULL, 0,
			        "scores: no memory for a snapshot: %zu of %zu changed agents sent",
			        n, c->n_changed);
			for (size_t i = 0; i < n; i++)
				if ((a = presence_core_find(c, c->dirty[i])) != NULL)
					send_update(c, a);
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			if ((a = presence_core_find(c, c->dirty[i])) != NULL) {
				a->scores_dirty = false;
				send_update(c, a);
			}
		}
	}
	if (changed != NULL)
		*changed = c->n_changed;
	c->n_dirty = 0;
	c->n_changed = 0;
	c->dirty_lost = false;
}

// ---------------------------------------------------------------------------------------------
// Time

static void ring_timeout(presence_core *c, presence_agent *a)
{
	offer_result(c, a->offer_id, a->call_id, a->id, RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT);
	call_event(c, a, RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN, a->offer_id,
	           "no answer");
	if (a->missed < UINT32_MAX)
		a->missed++;
	if (a->missed >= c->cfg.max_missed) {
		char reason[PRESENCE_REASON_MAX];
		snprintf(reason, sizeof(reason), "missed %u offers in a row", a->missed);
		rb_logf(RB_LOG_INFO, NULL, a->id, "%s: not ready", reason);
		presence_transition(c, a, PRESENCE_NOT_READY, reason);
	} else {
		presence_transition(c, a, PRESENCE_AVAILABLE, "offer not answered");
	}
}

void presence_core_tick(presence_core *c)
{
	uint64_t now = mono(c);
	c->scheduled = 0;
	for (;;) {
		presence_agent *a = RB_MIN(ptimers, &c->timers);
		if (a != NULL && a->timer_at <= now) {
			timer_clear(c, a);
			if (a->state == PRESENCE_RESERVED && !connecting(a)) {
				ring_timeout(c, a);
			} else if (a->state == PRESENCE_WRAP_UP) {
				finish_wrap_up(c, a, "wrap-up ended");
				maybe_reap(c, a);
			}
			continue;
		}
		presence_agent *h = TAILQ_FIRST(&c->heard);
		if (h != NULL && h->heard_mono + heartbeat_us(c) <= now) {
			char reason[PRESENCE_REASON_MAX];
			snprintf(reason, sizeof(reason), "no heartbeat for %llu ms",
			         (unsigned long long)c->cfg.heartbeat_timeout_ms);
			lose_link(c, h, reason);
			continue;
		}
		presence_agent *g = TAILQ_FIRST(&c->hanging);
		if (g != NULL && g->hangup_deadline <= now) {
			// The broker is slow or away: the auction hears the agent free after all;
			// should the broker still have the call, it releases the match.
			c->stats.hangups_unconfirmed++;
			rb_logf(RB_LOG_INFO, g->ended_call_id, g->id,
			        "the broker has not answered the hang-up in %u ms: available "
			        "anyway",
			        (unsigned)PRESENCE_HANGUP_CONFIRM_MS);
			hanging_end(c, g, "not answered in time");
			continue;
		}
		break;
	}
	uint64_t next = presence_core_next_deadline(c);
	if (next != 0)
		note_deadline(c, next);
}

void presence_core_janitor(presence_core *c)
{
	uint64_t now = mono(c);
	presence_agent *a;
	while ((a = TAILQ_FIRST(&c->expiry)) != NULL && a->token_expires_mono <= now) {
		error_event(c, a->pipe, RB_EAUTH, "session expired: log in again");
		end_session(c, a, "session expired");
		maybe_reap(c, a);
	}
}
