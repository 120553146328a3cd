// The agent's session with presence: requests and their retries, pushed events, auto answering.
#include "client.h"
#include "rb_names.h"
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"

// Where an AgentStatus came from: it decides which events it may raise.
typedef enum {
	ORIGIN_PUSH = 0, // seq 0: presence tells us of a change
	ORIGIN_REPLY,    // the answer to one of our requests
	ORIGIN_LOGIN,    // the answer to Login: the LOGIN event carries the state
	ORIGIN_RESUME,   // the answer to Resume: the RESUMED event carries the state
} status_origin;

static uint64_t now_ms(const agent_client *c)
{
	return c->ops.mono_ms(c->ops.arg);
}

static const char *kind_name(Ringbid__AgentMsg__BodyCase kind)
{
	switch (kind) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		return "login";
	case RINGBID__AGENT_MSG__BODY_RESUME:
		return "resume";
	case RINGBID__AGENT_MSG__BODY_SET_STATE:
		return "set_state";
	case RINGBID__AGENT_MSG__BODY_HEARTBEAT:
		return "heartbeat";
	case RINGBID__AGENT_MSG__BODY_ANSWER:
		return "answer";
	case RINGBID__AGENT_MSG__BODY_END_CALL:
		return "end_call";
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		return "logout";
	case RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY:
		return "earnings";
	default:
		return "message";
	}
}

const char *agent_state_name(Ringbid__AgentState s)
{
	const char *name = rb_agent_state_name(s);

	return name != NULL ? name : "UNKNOWN";
}

static bool valid_state(Ringbid__AgentState s)
{
	return s >= RINGBID__AGENT_STATE__AGENT_OFFLINE && s <= RINGBID__AGENT_STATE__AGENT_WRAP_UP;
}

// An optional id: empty, or a well-formed identifier.
static bool valid_opt_id(const char *s)
{
	return s == NULL || s[0] == '\0' || rb_valid_id(s, AGENT_ID_MAX);
}

// Text from presence shown on screen: anything unprintable or overlong is dropped.
static const char *safe_text(const char *s)
{
	if (s == NULL || s[0] == '\0' || !rb_valid_text(s, AGENT_TEXT_MAX))
		return "";
	return s;
}

static void copy_id(char *dst, const char *src)
{
	snprintf(dst, AGENT_ID_MAX + 1, "%s", src ? src : "");
}

static void ev_init(agent_event *ev, agent_event_kind kind)
{
	memset(ev, 0, sizeof(*ev));
	ev->kind = kind;
	ev->reason = "";
	ev->call_id = "";
	ev->program = "";
	ev->message = "";
}

static void emit(agent_client *c, const agent_event *ev)
{
	if (c->phase != AGENT_PHASE_DONE)
		c->ops.event(c->ops.arg, ev);
}

static void emit_simple(agent_client *c, agent_event_kind kind)
{
	agent_event ev;
	ev_init(&ev, kind);
	emit(c, &ev);
}

static void emit_error(agent_client *c, int code, const char *message)
{
	agent_event ev;
	ev_init(&ev, AGENT_EV_ERROR);
	ev.code = code;
	ev.message = message && message[0] ? message : rb_err_str(code);
	emit(c, &ev);
}

// ---------------------------------------------------------------------------------------------
// Requests in flight

static agent_req *req_find(agent_client *c, uint64_t seq)
{
	for (int i = 0; i < c->npending; i++)
		if (c->pending[i].seq == seq)
			return &c->pending[i];
	return NULL;
}

static bool req_pending(const agent_client *c, Ringbid__AgentMsg__BodyCase kind)
{
	for (int i = 0; i < c->npending; i++)
		if (c->pending[i].kind == kind)
			return true;
	return false;
}

static void req_remove(agent_client *c, agent_req *r)
{
	int i = (int)(r - c->pending);
	memmove(&c->pending[i], &c->pending[i + 1],
	        (size_t)(c->npending - i - 1) * sizeof(c->pending[0]));
	c->npending--;
}

static bool is_session_kind(Ringbid__AgentMsg__BodyCase kind)
{
	return kind == RINGBID__AGENT_MSG__BODY_LOGIN || kind == RINGBID__AGENT_MSG__BODY_RESUME ||
	       kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT ||
	       kind == RINGBID__AGENT_MSG__BODY_LOGOUT;
}

// Sends r (again, with the same seq: presence's handling is idempotent).
static void req_send(agent_client *c, agent_req *r)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Login login = RINGBID__LOGIN__INIT;
	Ringbid__Resume resume = RINGBID__RESUME__INIT;
	Ringbid__SetState set_state = RINGBID__SET_STATE__INIT;
	Ringbid__Heartbeat heartbeat = RINGBID__HEARTBEAT__INIT;
	Ringbid__OfferAnswer answer = RINGBID__OFFER_ANSWER__INIT;
	Ringbid__EndCall end_call = RINGBID__END_CALL__INIT;
	Ringbid__Logout logout = RINGBID__LOGOUT__INIT;
	Ringbid__EarningsQuery earnings = RINGBID__EARNINGS_QUERY__INIT;

	m.seq = r->seq;
	m.token = c->token;
	m.body_case = r->kind;
	switch (r->kind) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		login.agent_id = c->cfg.agent_id;
		login.secret = c->secret;
		m.token = "";
		m.login = &login;
		break;
	case RINGBID__AGENT_MSG__BODY_RESUME:
		resume.agent_id = c->cfg.agent_id;
		m.resume = &resume;
		break;
	case RINGBID__AGENT_MSG__BODY_SET_STATE:
		set_state.state = r->want_state;
		m.set_state = &set_state;
		break;
	case RINGBID__AGENT_MSG__BODY_HEARTBEAT:
		m.heartbeat = &heartbeat;
		break;
	case RINGBID__AGENT_MSG__BODY_ANSWER:
		answer.offer_id = r->offer_id;
		answer.accept = r->accept;
		m.answer = &answer;
		break;
	case RINGBID__AGENT_MSG__BODY_END_CALL:
		end_call.call_id = r->call_id;
		end_call.sale = r->sale;
		end_call.resolved = r->resolved;
		m.end_call = &end_call;
		break;
	case RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY:
		m.earnings_query = &earnings;
		break;
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		m.logout = &logout;
		break;
	default:
		return;
	}
	r->tries++;
	r->sent = true;
	r->due_ms = now_ms(c) + AGENT_REQ_RESEND_MS;
	c->spoke_ms = now_ms(c);
	c->spoke_wall_us = c->ops.wall_us(c->ops.arg);
	int rv = c->ops.send(c->ops.arg, &m);
	if (rv != 0)
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id,
		        "sending %s (seq %" PRIu64 ") failed: %s", kind_name(r->kind), r->seq,
		        rb_err_str(rv));
}

static bool can_send(const agent_client *c, Ringbid__AgentMsg__BodyCase kind)
{
	if (!c->link_up)
		return false;
	if (kind == RINGBID__AGENT_MSG__BODY_LOGIN || kind == RINGBID__AGENT_MSG__BODY_RESUME)
		return true;
	if (kind == RINGBID__AGENT_MSG__BODY_LOGOUT)
		return c->phase == AGENT_PHASE_LOGOUT;
	return c->phase == AGENT_PHASE_ACTIVE;
}

// Adds a request with a new seq and sends it if the session allows; otherwise it waits for
// the session (login or resume) and is sent then. *out (may be NULL) gets the entry.
static int req_add(agent_client *c, Ringbid__AgentMsg__BodyCase kind, agent_req **out)
{
	if (c->npending == AGENT_PENDING_MAX) {
		// A heartbeat never needs to wait for its answer more than a newer request does.
		for (int i = 0; i < c->npending; i++) {
			if (c->pending[i].kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT) {
				req_remove(c, &c->pending[i]);
				break;
			}
		}
		if (c->npending == AGENT_PENDING_MAX)
			return RB_EBUSY;
	}
	agent_req *r = &c->pending[c->npending++];
	memset(r, 0, sizeof(*r));
	r->seq = c->next_seq++;
	r->kind = kind;
	if (out)
		*out = r;
	return 0;
}

static void req_start(agent_client *c, agent_req *r)
{
	if (can_send(c, r->kind))
		req_send(c, r);
}

// Requests of the old session go; the agent's own requests wait for the next session, with
// the same seq and their tries counted so far.
static void req_suspend(agent_client *c)
{
	for (int i = 0; i < c->npending;) {
		agent_req *r = &c->pending[i];
		if (is_session_kind(r->kind)) {
			req_remove(c, r);
			continue;
		}
		r->sent = false;
		i++;
	}
}

static void req_flush(agent_client *c)
{
	for (int i = 0; i < c->npending; i++)
		if (!c->pending[i].sent && can_send(c, c->pending[i].kind))
			req_send(c, &c->pending[i]);
}

// ---------------------------------------------------------------------------------------------
// The session's phases: every transition happens here.

static void finish(agent_client *c, int exit_code);

static void set_phase(agent_client *c, agent_phase next)
{
	agent_phase prev = c->phase;
	agent_req *r;

	if (prev == AGENT_PHASE_DONE)
		return;
	c->phase = next;
	if (next != AGENT_PHASE_ACTIVE && next != AGENT_PHASE_LOGOUT)
		req_suspend(c);
	rb_logf(RB_LOG_DEBUG, NULL, c->cfg.agent_id, "session phase %d -> %d", (int)prev,
	        (int)next);
	switch (next) {
	case AGENT_PHASE_WAIT_LINK:
		break;
	case AGENT_PHASE_LOGIN:
		c->token[0] = '\0';
		if (req_add(c, RINGBID__AGENT_MSG__BODY_LOGIN, &r) == 0)
			req_start(c, r);
		break;
	case AGENT_PHASE_RESUME:
		if (req_add(c, RINGBID__AGENT_MSG__BODY_RESUME, &r) == 0)
			req_start(c, r);
		break;
	case AGENT_PHASE_BACKOFF:
		if (c->backoff_ms == 0)
			c->backoff_ms = AGENT_LOGIN_BACKOFF_MIN_MS;
		else if (c->backoff_ms * 2 > AGENT_LOGIN_BACKOFF_MAX_MS)
			c->backoff_ms = AGENT_LOGIN_BACKOFF_MAX_MS;
		else
			c->backoff_ms *= 2;
		c->backoff_due_ms = now_ms(c) + c->backoff_ms;
		rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "trying again in %" PRIu64 " ms",
		        c->backoff_ms);
		break;
	case AGENT_PHASE_ACTIVE:
		c->backoff_ms = 0;
		c->heartbeat_due_ms = now_ms(c) + c->cfg.heartbeat_ms;
		// Presence just answered a request of ours: it has heard from us.
		c->spoke_ms = now_ms(c);
		c->spoke_wall_us = c->ops.wall_us(c->ops.arg);
		req_flush(c);
		break;
	case AGENT_PHASE_LOGOUT:
		// Requests still unanswered are moot once the agent leaves.
		c->npending = 0;
		c->logout_due_ms = now_ms(c) + AGENT_LOGOUT_WAIT_MS;
		if (req_add(c, RINGBID__AGENT_MSG__BODY_LOGOUT, &r) == 0)
			req_start(c, r);
		break;
	case AGENT_PHASE_DONE:
		c->npending = 0;
		break;
	}
}

static void finish(agent_client *c, int exit_code)
{
	if (c->phase == AGENT_PHASE_DONE)
		return;
	set_phase(c, AGENT_PHASE_DONE);
	c->ops.finish(c->ops.arg, exit_code);
}

// Presence no longer knows our session (it expired or presence restarted): the secret opens a
// new one; the agent's own requests wait for it.
static void relogin(agent_client *c)
{
	rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "session not recognised: logging in again");
	set_phase(c, AGENT_PHASE_LOGIN);
}

static void leave(agent_client *c)
{
	emit_simple(c, AGENT_EV_LOGOUT);
	finish(c, 0);
}

// ---------------------------------------------------------------------------------------------
// Offers and calls

static void offer_clear(agent_client *c)
{
	memset(&c->offer, 0, sizeof(c->offer));
}

static void offer_withdrawn(agent_client *c, const char *reason)
{
	if (c->offer.announced) {
		agent_event ev;
		ev_init(&ev, AGENT_EV_OFFER_WITHDRAWN);
		ev.offer_id = c->offer.offer_id;
		ev.call_id = c->offer.call_id;
		ev.reason = reason && reason[0] ? reason : "offer withdrawn";
		emit(c, &ev);
	}
	offer_clear(c);
}

static void offer_answered_event(agent_client *c, bool accepted)
{
	agent_event ev;
	ev_init(&ev, accepted ? AGENT_EV_ACCEPTED : AGENT_EV_DECLINED);
	ev.offer_id = c->offer.offer_id;
	ev.call_id = c->offer.call_id;
	emit(c, &ev);
}

// Shows the offer and answers it when the agent chose to answer every offer the same way.
static void offer_announce(agent_client *c)
{
	agent_event ev;

	c->offer.announced = true;
	ev_init(&ev, AGENT_EV_OFFER);
	ev.offer_id = c->offer.offer_id;
	ev.call_id = c->offer.call_id;
	ev.program = c->offer.program;
	ev.wait_ms = c->offer.wait_ms;
	ev.ring_timeout_ms = c->offer.ring_timeout_ms;
	emit(c, &ev);
	if (c->cfg.policy == AGENT_OFFERS_ACCEPT || c->cfg.policy == AGENT_OFFERS_DECLINE) {
		int rv = agent_client_answer(c, c->cfg.policy == AGENT_OFFERS_ACCEPT);
		if (rv != 0)
			emit_error(c, rv, "could not answer the offer");
	}
}

// Talk starts: elapsed_ms of it already passed (a call found running on resume).
static void call_start(agent_client *c, const char *call_id, uint64_t elapsed_ms)
{
	uint64_t now = now_ms(c);
	agent_event ev;

	if (c->offer.present && strcmp(c->offer.call_id, call_id) == 0) {
		if (c->offer.announced && !c->offer.accepted)
			offer_answered_event(c, true);
		offer_clear(c);
	}
	memset(&c->call, 0, sizeof(c->call));
	c->call.present = true;
	copy_id(c->call.call_id, call_id);
	c->call.connected_ms = now >= elapsed_ms ? now - elapsed_ms : 0;
	if (c->cfg.policy == AGENT_OFFERS_ACCEPT)
		c->call.end_due_ms = c->call.connected_ms + c->cfg.talk_ms;
	ev_init(&ev, AGENT_EV_CALL_CONNECTED);
	ev.call_id = c->call.call_id;
	emit(c, &ev);
}

static void call_end(agent_client *c, uint32_t wrap_up_s)
{
	agent_event ev;
	uint64_t now = now_ms(c);

	ev_init(&ev, AGENT_EV_CALL_ENDED);
	ev.call_id = c->call.call_id;
	ev.talk_ms = now > c->call.connected_ms ? now - c->call.connected_ms : 0;
	ev.by_agent = c->call.end_requested;
	ev.wrap_up_s = wrap_up_s;
	emit(c, &ev);
	memset(&c->call, 0, sizeof(c->call));
}

static void state_set(agent_client *c, Ringbid__AgentState next, const char *reason, bool show)
{
	bool changed = !c->state_known || c->state != next;

	c->state = next;
	c->state_known = true;
	if (changed && show) {
		agent_event ev;
		ev_init(&ev, AGENT_EV_STATE);
		ev.state = next;
		ev.reason = reason;
		emit(c, &ev);
	}
	// After-call work is over the moment the agent says ready; in auto mode that is at once.
	if (next == RINGBID__AGENT_STATE__AGENT_WRAP_UP && c->cfg.auto_ready &&
	    c->phase == AGENT_PHASE_ACTIVE && !req_pending(c, RINGBID__AGENT_MSG__BODY_SET_STATE))
		agent_client_set_ready(c, true);
}

static bool status_valid(const agent_client *c, const Ringbid__AgentStatus *st)
{
	if (st == NULL || !valid_state(st->state) || !valid_opt_id(st->call_id))
		return false;
	if (st->agent_id != 0 && st->agent_id != c->cfg.agent_id)
		return false;
	return true;
}

// Brings the offer, the call and the state in line with presence's view.
static void status_apply(agent_client *c, const Ringbid__AgentStatus *st, status_origin origin)
{
	Ringbid__AgentState next = st->state;
	const char *call_id = st->call_id ? st->call_id : "";
	const char *reason = safe_text(st->reason);
	bool reserved = next == RINGBID__AGENT_STATE__AGENT_RESERVED;

	// A status that leaves the call id out means the call or offer we already know.
	if (call_id[0] == '\0' && next == RINGBID__AGENT_STATE__AGENT_ON_CALL) {
		if (c->call.present)
			call_id = c->call.call_id;
		else if (c->offer.present)
			call_id = c->offer.call_id;
	}
	bool on_call = next == RINGBID__AGENT_STATE__AGENT_ON_CALL && call_id[0] != '\0';

	char id[AGENT_ID_MAX + 1];
	copy_id(id, call_id);
	call_id = id;
	if (c->call.present && !(on_call && strcmp(call_id, c->call.call_id) == 0))
		call_end(c, 0);

	if (c->offer.present) {
		bool same = st->offer_id == c->offer.offer_id ||
		            (st->offer_id == 0 &&
		             (call_id[0] == '\0' || strcmp(call_id, c->offer.call_id) == 0));
		if (reserved && same) {
			// still ringing
		} else if (on_call && strcmp(call_id, c->offer.call_id) == 0) {
			// connected: call_start below takes the offer over
		} else {
			offer_withdrawn(c, reason[0] ? reason : "offer no longer open");
		}
	}

	if (on_call && !c->call.present) {
		uint64_t elapsed = 0;
		if (origin == ORIGIN_RESUME || origin == ORIGIN_LOGIN) {
			// A call that ran while the link was down: its talk time so far comes from
			// presence's clock (bounded, since the two clocks may differ).
			uint64_t now_us = c->ops.wall_us(c->ops.arg);
			if (st->state_since_us != 0 && st->state_since_us < now_us)
				elapsed = (now_us - st->state_since_us) / 1000;
		}
		call_start(c, call_id, elapsed);
	}

	if (reserved && st->offer_id != 0 && !c->offer.present &&
	    (origin == ORIGIN_RESUME || origin == ORIGIN_LOGIN) &&
	    rb_valid_id(call_id, AGENT_ID_MAX)) {
		// An offer made while the link was down: its details went with the old pipe, but
		// it can still be answered by its id.
		c->offer.present = true;
		c->offer.offer_id = st->offer_id;
		copy_id(c->offer.call_id, call_id);
		c->offer.received_ms = now_ms(c);
		offer_announce(c);
	}

	state_set(c, next, reason, origin == ORIGIN_PUSH || origin == ORIGIN_REPLY);

	if ((origin == ORIGIN_LOGIN || origin == ORIGIN_RESUME) && c->cfg.auto_ready &&
	    (next == RINGBID__AGENT_STATE__AGENT_OFFLINE ||
	     next == RINGBID__AGENT_STATE__AGENT_NOT_READY) &&
	    !req_pending(c, RINGBID__AGENT_MSG__BODY_SET_STATE)) {
		agent_client_set_ready(c, true);
		return;
	}

	// Presence gave up on us (heartbeats lost while the connection itself survived, e.g. the
	// computer slept): bind the session to this connection again, as after a reconnect.
	if ((origin == ORIGIN_PUSH || origin == ORIGIN_REPLY) &&
	    next == RINGBID__AGENT_STATE__AGENT_OFFLINE && c->phase == AGENT_PHASE_ACTIVE &&
	    c->link_up) {
		rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id,
		        "presence reports us offline: resuming");
		set_phase(c, AGENT_PHASE_RESUME);
	}
}

// ---------------------------------------------------------------------------------------------
// Messages from presence

static void on_offer(agent_client *c, const Ringbid__OfferEvent *o)
{
	if (o->offer_id == 0 || !rb_valid_id(o->call_id, AGENT_ID_MAX) ||
	    !valid_opt_id(o->program)) {
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id,
		        "malformed offer from presence ignored");
		return;
	}
	if (c->offer.present && c->offer.offer_id == o->offer_id && c->offer.announced)
		return; // the same offer again
	if (c->offer.present && c->offer.offer_id != o->offer_id)
		offer_withdrawn(c, "replaced by a newer offer");
	c->offer.present = true;
	c->offer.offer_id = o->offer_id;
	copy_id(c->offer.call_id, o->call_id);
	copy_id(c->offer.program, o->program);
	c->offer.wait_ms = o->wait_ms;
	c->offer.ring_timeout_ms = o->ring_timeout_ms;
	c->offer.received_ms = now_ms(c);
	rb_logf(RB_LOG_INFO, o->call_id, c->cfg.agent_id, "offer %" PRIu64 " program %s",
	        o->offer_id, c->offer.program);
	if (c->cfg.policy == AGENT_OFFERS_IGNORE)
		rb_logf(RB_LOG_INFO, o->call_id, c->cfg.agent_id,
		        "offer %" PRIu64 " left unanswered", o->offer_id);
	offer_announce(c);
}

static void on_call_event(agent_client *c, const Ringbid__CallEvent *e)
{
	const char *reason = safe_text(e->reason);

	if (!rb_valid_id(e->call_id, AGENT_ID_MAX)) {
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id,
		        "call event without a valid call id ignored");
		return;
	}
	switch (e->kind) {
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED:
		if (c->call.present && strcmp(c->call.call_id, e->call_id) == 0)
			return;
		if (c->call.present)
			call_end(c, 0);
		call_start(c, e->call_id, 0);
		state_set(c, RINGBID__AGENT_STATE__AGENT_ON_CALL, "", true);
		break;
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED:
		if (c->call.present && strcmp(c->call.call_id, e->call_id) == 0) {
			call_end(c, e->wrap_up_s);
			state_set(c, RINGBID__AGENT_STATE__AGENT_WRAP_UP, reason, true);
		} else if (c->offer.present && strcmp(c->offer.call_id, e->call_id) == 0) {
			// An accept that crossed the caller's hang-up: the call never connected.
			offer_withdrawn(c,
			                reason[0] ? reason : "the call ended before it connected");
		}
		break;
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN:
		if (c->offer.present &&
		    (e->offer_id == c->offer.offer_id ||
		     (e->offer_id == 0 && strcmp(c->offer.call_id, e->call_id) == 0)))
			offer_withdrawn(c, reason[0] ? reason : "offer withdrawn");
		break;
	default:
		rb_logf(RB_LOG_WARN, e->call_id, c->cfg.agent_id, "unknown call event %d ignored",
		        (int)e->kind);
		break;
	}
}

static void on_login_error(agent_client *c, int code, const char *message)
{
	emit_error(c, code, message);
	switch (code) {
	case RB_EAUTH:
	case RB_EFORBIDDEN:
	case RB_ENOTFOUND:
		rb_logf(RB_LOG_ERROR, NULL, c->cfg.agent_id, "login refused: %s", rb_err_str(code));
		finish(c, 3);
		break;
	case RB_EINVAL:
	case RB_EDECODE:
	case RB_ETOOBIG:
		// Our own Login is malformed in presence's eyes: trying again cannot help.
		rb_logf(RB_LOG_ERROR, NULL, c->cfg.agent_id, "login rejected: %s",
		        rb_err_str(code));
		finish(c, 1);
		break;
	default:
		set_phase(c, AGENT_PHASE_BACKOFF);
		break;
	}
}

static void on_login_status(agent_client *c, const Ringbid__AgentStatus *st)
{
	size_t n = st->session_token ? strlen(st->session_token) : 0;
	agent_event ev;

	if (n == 0 || n > AGENT_TOKEN_MAX || !rb_valid_id(st->session_token, AGENT_TOKEN_MAX)) {
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "login answer without a usable token");
		emit_error(c, RB_EDECODE, "presence answered the login without a session token");
		set_phase(c, AGENT_PHASE_BACKOFF);
		return;
	}
	memcpy(c->token, st->session_token, n + 1);
	set_phase(c, AGENT_PHASE_ACTIVE);
	rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "logged in, state %s",
	        agent_state_name(st->state));
	ev_init(&ev, AGENT_EV_LOGIN);
	ev.state = st->state;
	emit(c, &ev);
	status_apply(c, st, ORIGIN_LOGIN);
}

static void on_resume_status(agent_client *c, const Ringbid__AgentStatus *st)
{
	agent_event ev;

	set_phase(c, AGENT_PHASE_ACTIVE);
	rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "session resumed, state %s",
	        agent_state_name(st->state));
	ev_init(&ev, AGENT_EV_RESUMED);
	ev.state = st->state;
	ev.call_id =
	        st->state == RINGBID__AGENT_STATE__AGENT_ON_CALL && st->call_id ? st->call_id : "";
	emit(c, &ev);
	status_apply(c, st, ORIGIN_RESUME);
}

// An answer that makes no sense: the session requests must not be left without a way on.
static void on_bad_reply(agent_client *c, const agent_req *r, const char *what)
{
	char text[AGENT_TEXT_MAX];

	snprintf(text, sizeof(text), "%s from presence in answer to %s", what, kind_name(r->kind));
	rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "%s", text);
	if ((r->kind == RINGBID__AGENT_MSG__BODY_LOGIN && c->phase == AGENT_PHASE_LOGIN) ||
	    (r->kind == RINGBID__AGENT_MSG__BODY_RESUME && c->phase == AGENT_PHASE_RESUME)) {
		emit_error(c, RB_EDECODE, text);
		set_phase(c, AGENT_PHASE_BACKOFF);
	} else if (r->kind == RINGBID__AGENT_MSG__BODY_LOGOUT) {
		leave(c);
	}
}

static bool earnings_text_ok(const char *s, size_t max)
{
	if (s == NULL)
		return true;
	size_t n = strnlen(s, max + 1);
	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

// Presence's figures are shown as they came; only their shape is checked (short printable
// text), since the amounts are decimal text computed by PostgreSQL.
static void on_earnings(agent_client *c, const Ringbid__Earnings *e)
{
	if (e == NULL || !earnings_text_ok(e->currency, 8) ||
	    !earnings_text_ok(e->period_start, 16) || !earnings_text_ok(e->period_end, 16) ||
	    !earnings_text_ok(e->today_amount, 32) || !earnings_text_ok(e->period_amount, 32)) {
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "malformed earnings ignored");
		emit_error(c, RB_EDECODE, "presence sent malformed earnings");
		return;
	}
	Ringbid__Earnings shown = *e;
	shown.currency = e->currency ? e->currency : "";
	shown.period_start = e->period_start ? e->period_start : "";
	shown.period_end = e->period_end ? e->period_end : "";
	shown.today_amount = e->today_amount ? e->today_amount : "0";
	shown.period_amount = e->period_amount ? e->period_amount : "0";
	agent_event ev;
	ev_init(&ev, AGENT_EV_EARNINGS);
	ev.earnings = &shown;
	emit(c, &ev);
}

// The answer to request r (removed from the table already; r is a copy).
static void on_reply(agent_client *c, const agent_req *r, const Ringbid__AgentMsg *m)
{
	const Ringbid__AgentStatus *st = NULL;
	int code = 0;
	const char *message = "";

	if (m->body_case == RINGBID__AGENT_MSG__BODY_ERROR) {
		if (m->error == NULL) {
			on_bad_reply(c, r, "empty error");
			return;
		}
		code = m->error->code;
		if (code >= 0 || code < RB_ECODE_MIN)
			code = RB_EINVAL;
		message = safe_text(m->error->message);
	} else if (m->body_case == RINGBID__AGENT_MSG__BODY_STATUS) {
		st = m->status;
		if (!status_valid(c, st)) {
			on_bad_reply(c, r, "malformed status");
			return;
		}
	} else if (m->body_case == RINGBID__AGENT_MSG__BODY_EARNINGS &&
	           r->kind == RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY) {
		on_earnings(c, m->earnings);
		return;
	} else {
		on_bad_reply(c, r, "unexpected message");
		return;
	}

	switch (r->kind) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		if (c->phase != AGENT_PHASE_LOGIN)
			return;
		if (st)
			on_login_status(c, st);
		else
			on_login_error(c, code, message);
		return;
	case RINGBID__AGENT_MSG__BODY_RESUME:
		if (c->phase != AGENT_PHASE_RESUME)
			return;
		if (st) {
			on_resume_status(c, st);
		} else if (code == RB_ESLOWDOWN || code == RB_EBUSY) {
			emit_error(c, code, message);
			set_phase(c, AGENT_PHASE_BACKOFF);
		} else {
			// Presence lost the session (restart, expiry): the secret opens a new one.
			rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "resume refused (%s)",
			        rb_err_name(code));
			set_phase(c, AGENT_PHASE_LOGIN);
		}
		return;
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		if (!st)
			emit_error(c, code, message);
		leave(c);
		return;
	default:
		break;
	}

	if (!st) {
		if (code == RB_EAUTH && c->phase == AGENT_PHASE_ACTIVE) {
			// The session expired under us: this request goes again in the new session.
			agent_req *again;
			if (r->kind != RINGBID__AGENT_MSG__BODY_HEARTBEAT &&
			    req_add(c, r->kind, &again) == 0) {
				uint64_t seq = again->seq;
				*again = *r;
				again->seq = seq;
				again->sent = false;
				again->tries = 0;
			}
			relogin(c);
			return;
		}
		if (r->kind == RINGBID__AGENT_MSG__BODY_ANSWER && c->offer.present &&
		    c->offer.offer_id == r->offer_id) {
			emit_error(c, code, message);
			if (code == RB_ENOTFOUND || code == RB_ESTATE)
				offer_clear(c); // gone at presence's side: nothing left to answer
			else
				c->offer.answered = false;
			return;
		}
		if (r->kind == RINGBID__AGENT_MSG__BODY_END_CALL && c->call.present &&
		    strcmp(c->call.call_id, r->call_id) == 0)
			c->call.end_requested = false;
		emit_error(c, code, message);
		return;
	}

	if (r->kind == RINGBID__AGENT_MSG__BODY_ANSWER && c->offer.present &&
	    c->offer.offer_id == r->offer_id) {
		if (r->accept) {
			if (!c->offer.accepted) {
				c->offer.accepted = true;
				offer_answered_event(c, true);
			}
		} else {
			offer_answered_event(c, false);
			offer_clear(c);
		}
	}
	status_apply(c, st, ORIGIN_REPLY);
}

void agent_client_on_msg(agent_client *c, const Ringbid__AgentMsg *m)
{
	if (c->phase == AGENT_PHASE_DONE || m == NULL)
		return;
	if (m->seq != 0) {
		agent_req *found = req_find(c, m->seq);
		if (found == NULL) {
			rb_logf(RB_LOG_DEBUG, NULL, c->cfg.agent_id,
			        "answer to seq %" PRIu64 " no longer awaited", m->seq);
			return;
		}
		agent_req r = *found;
		req_remove(c, found);
		on_reply(c, &r, m);
		return;
	}
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_STATUS:
		if (!status_valid(c, m->status)) {
			rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "malformed status ignored");
			return;
		}
		status_apply(c, m->status, ORIGIN_PUSH);
		break;
	case RINGBID__AGENT_MSG__BODY_OFFER:
		if (m->offer)
			on_offer(c, m->offer);
		break;
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT:
		if (m->call_event)
			on_call_event(c, m->call_event);
		break;
	case RINGBID__AGENT_MSG__BODY_ERROR: {
		if (m->error == NULL)
			break;
		int code = m->error->code;
		if (code >= 0 || code < RB_ECODE_MIN)
			code = RB_EINVAL;
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "presence reports %s: %s",
		        rb_err_name(code), safe_text(m->error->message));
		emit_error(c, code, safe_text(m->error->message));
		if (code == RB_ECLOSED && c->phase == AGENT_PHASE_ACTIVE) {
			// The agent logged in from another client, which now holds the session.
			// Logging in again here would only take it back, and so on forever.
			rb_logf(RB_LOG_ERROR, NULL, c->cfg.agent_id,
			        "session taken over by another client: leaving");
			finish(c, 1);
		}
		break;
	}
	default:
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "unexpected message %d ignored",
		        (int)m->body_case);
		break;
	}
}

void agent_client_on_data(agent_client *c, const void *buf, size_t len)
{
	ProtobufCMessage *pm = NULL;
	int rv = rb_pb_unpack(&ringbid__agent_msg__descriptor, buf, len, RB_PB_MAX_DEFAULT, &pm);

	if (rv != 0) {
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "undecodable message (%zu bytes): %s",
		        len, rb_err_str(rv));
		return;
	}
	agent_client_on_msg(c, (const Ringbid__AgentMsg *)pm);
	rb_pb_free(pm);
}

// ---------------------------------------------------------------------------------------------
// Links, time and commands

void agent_client_link(agent_client *c, bool up)
{
	if (c->phase == AGENT_PHASE_DONE || c->link_up == up)
		return;
	c->link_up = up;
	emit_simple(c, up ? AGENT_EV_LINK_UP : AGENT_EV_LINK_DOWN);
	if (up) {
		if (c->phase == AGENT_PHASE_WAIT_LINK)
			set_phase(c, c->token[0] ? AGENT_PHASE_RESUME : AGENT_PHASE_LOGIN);
		return;
	}
	switch (c->phase) {
	case AGENT_PHASE_LOGOUT:
		// Presence cannot be told; the session will time out there.
		leave(c);
		break;
	case AGENT_PHASE_LOGIN:
	case AGENT_PHASE_RESUME:
	case AGENT_PHASE_ACTIVE:
		set_phase(c, AGENT_PHASE_WAIT_LINK);
		break;
	default:
		break;
	}
}

// True when the client has said nothing for AGENT_SILENT_HEARTBEATS heartbeat intervals on a
// live session: its process was stopped or the computer slept, and presence may have counted
// the link lost meanwhile, though the connection survived. The wall clock counts too, because
// the monotonic one stands still while a computer is suspended.
static bool slept(const agent_client *c, uint64_t now)
{
	uint64_t limit = AGENT_SILENT_HEARTBEATS * c->cfg.heartbeat_ms;
	uint64_t wall = c->ops.wall_us(c->ops.arg);

	if (c->phase != AGENT_PHASE_ACTIVE || !c->link_up)
		return false;
	if (now > c->spoke_ms && now - c->spoke_ms >= limit)
		return true;
	return c->spoke_wall_us != 0 && wall > c->spoke_wall_us &&
	       (wall - c->spoke_wall_us) / 1000 >= limit;
}

void agent_client_tick(agent_client *c)
{
	uint64_t now = now_ms(c);

	if (c->phase == AGENT_PHASE_DONE)
		return;
	if (c->phase == AGENT_PHASE_LOGOUT && now >= c->logout_due_ms) {
		rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id, "no answer to logout; leaving anyway");
		leave(c);
		return;
	}
	if (c->phase == AGENT_PHASE_BACKOFF && now >= c->backoff_due_ms) {
		if (!c->link_up)
			set_phase(c, AGENT_PHASE_WAIT_LINK);
		else
			set_phase(c, c->token[0] ? AGENT_PHASE_RESUME : AGENT_PHASE_LOGIN);
	}
	if (slept(c, now)) {
		// Presence keeps a call (and wrap-up) across a lost link and says nothing new
		// about it, so only an explicit Resume shows the agent that the session is
		// back, and with which call.
		rb_logf(RB_LOG_INFO, NULL, c->cfg.agent_id,
		        "silent for %" PRIu64 " ms (asleep or stopped): resuming the session",
		        now - c->spoke_ms);
		set_phase(c, AGENT_PHASE_RESUME);
	}

	for (int i = 0; i < c->npending && c->phase != AGENT_PHASE_DONE;) {
		agent_req *r = &c->pending[i];
		if (!r->sent || r->due_ms > now || r->kind == RINGBID__AGENT_MSG__BODY_LOGOUT) {
			i++;
			continue;
		}
		if (r->kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT) {
			// The next heartbeat says the same; only its answer was worth waiting for.
			req_remove(c, r);
			continue;
		}
		// A login is never given up while the link holds: presence checks secrets a few
		// at a time, answers the first send and ignores the repeats, so a login may
		// wait in its queue longer than all the resends. A new request number would be
		// refused as busy, and the real answer, under the old one, would be lost.
		if (r->tries < AGENT_REQ_TRIES || r->kind == RINGBID__AGENT_MSG__BODY_LOGIN) {
			if (r->tries == AGENT_REQ_TRIES)
				rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id,
				        "no answer to login after %d tries: still waiting",
				        AGENT_REQ_TRIES);
			rb_logf(RB_LOG_DEBUG, NULL, c->cfg.agent_id,
			        "no answer to %s (seq %" PRIu64 "): sending again",
			        kind_name(r->kind), r->seq);
			req_send(c, r);
			i++;
			continue;
		}
		agent_req gone = *r;
		char text[AGENT_TEXT_MAX];
		req_remove(c, r);
		snprintf(text, sizeof(text), "no answer from presence to %s after %d tries",
		         kind_name(gone.kind), AGENT_REQ_TRIES);
		rb_logf(RB_LOG_WARN, NULL, c->cfg.agent_id, "%s", text);
		emit_error(c, RB_ETIMEDOUT, text);
		if (gone.kind == RINGBID__AGENT_MSG__BODY_LOGIN ||
		    gone.kind == RINGBID__AGENT_MSG__BODY_RESUME) {
			set_phase(c, AGENT_PHASE_BACKOFF);
			i = 0;
			continue;
		}
		if (gone.kind == RINGBID__AGENT_MSG__BODY_ANSWER && c->offer.present &&
		    c->offer.offer_id == gone.offer_id)
			c->offer.answered = false;
		if (gone.kind == RINGBID__AGENT_MSG__BODY_END_CALL && c->call.present &&
		    strcmp(c->call.call_id, gone.call_id) == 0)
			c->call.end_requested = false;
	}
	if (c->phase == AGENT_PHASE_DONE)
		return;

	if (c->phase == AGENT_PHASE_ACTIVE && c->link_up && now >= c->heartbeat_due_ms) {
		agent_req *r;
		c->heartbeat_due_ms = now + c->cfg.heartbeat_ms;
		if (req_add(c, RINGBID__AGENT_MSG__BODY_HEARTBEAT, &r) == 0)
			req_start(c, r);
	}

	if (c->call.present && c->call.end_due_ms != 0 && now >= c->call.end_due_ms) {
		c->call.end_due_ms = 0;
		rb_logf(RB_LOG_INFO, c->call.call_id, c->cfg.agent_id,
		        "talk time over: ending call");
		c->auto_ended++;
		bool sale = c->cfg.sale_every != 0 && c->auto_ended % c->cfg.sale_every == 0;
		int rv = agent_client_end_call(c, sale, false);
		if (rv != 0)
			emit_error(c, rv, "could not end the call");
	}
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

uint64_t agent_client_next_due(const agent_client *c)
{
	uint64_t due = UINT64_MAX;

	switch (c->phase) {
	case AGENT_PHASE_DONE:
		return UINT64_MAX;
	case AGENT_PHASE_LOGOUT:
		due = c->logout_due_ms;
		break;
	case AGENT_PHASE_BACKOFF:
		due = c->backoff_due_ms;
		break;
	case AGENT_PHASE_ACTIVE:
		if (c->link_up)
			due = c->heartbeat_due_ms;
		break;
	default:
		break;
	}
	for (int i = 0; i < c->npending; i++)
		if (c->pending[i].sent && c->pending[i].kind != RINGBID__AGENT_MSG__BODY_LOGOUT)
			due = min_u64(due, c->pending[i].due_ms);
	if (c->call.present && c->call.end_due_ms != 0)
		due = min_u64(due, c->call.end_due_ms);
	return due;
}

static int command_allowed(const agent_client *c)
{
	if (c->phase == AGENT_PHASE_DONE || c->phase == AGENT_PHASE_LOGOUT)
		return RB_ESTATE;
	return 0;
}

int agent_client_set_ready(agent_client *c, bool ready)
{
	agent_req *r;
	int rv = command_allowed(c);

	if (rv != 0)
		return rv;
	rv = req_add(c, RINGBID__AGENT_MSG__BODY_SET_STATE, &r);
	if (rv != 0)
		return rv;
	r->want_state = ready ? RINGBID__AGENT_STATE__AGENT_AVAILABLE
	                      : RINGBID__AGENT_STATE__AGENT_NOT_READY;
	req_start(c, r);
	return 0;
}

int agent_client_answer(agent_client *c, bool accept)
{
	agent_req *r;
	int rv = command_allowed(c);

	if (rv != 0)
		return rv;
	if (!c->offer.present)
		return RB_ENOTFOUND;
	// Presence has the accept and the broker is connecting the call: no change of mind.
	if (c->offer.accepted)
		return accept ? 0 : RB_ESTATE;
	if (c->offer.answered)
		return 0;
	rv = req_add(c, RINGBID__AGENT_MSG__BODY_ANSWER, &r);
	if (rv != 0)
		return rv;
	r->offer_id = c->offer.offer_id;
	r->accept = accept;
	copy_id(r->call_id, c->offer.call_id);
	c->offer.answered = true;
	req_start(c, r);
	return 0;
}

int agent_client_end_call(agent_client *c, bool sale, bool resolved)
{
	agent_req *r;
	int rv = command_allowed(c);

	if (rv != 0)
		return rv;
	if (!c->call.present)
		// An accepted offer is not a call until presence says it connected.
		return c->offer.present && c->offer.accepted ? RB_ESTATE : RB_ENOTFOUND;
	if (c->call.end_requested)
		return 0;
	rv = req_add(c, RINGBID__AGENT_MSG__BODY_END_CALL, &r);
	if (rv != 0)
		return rv;
	copy_id(r->call_id, c->call.call_id);
	r->sale = sale;
	r->resolved = resolved;
	c->call.end_requested = true;
	c->call.end_due_ms = 0;
	req_start(c, r);
	return 0;
}

int agent_client_earnings(agent_client *c)
{
	agent_req *r;
	int rv = command_allowed(c);

	if (rv != 0)
		return rv;
	rv = req_add(c, RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY, &r);
	if (rv != 0)
		return rv;
	req_start(c, r);
	return 0;
}

int agent_client_logout(agent_client *c)
{
	if (c->phase == AGENT_PHASE_DONE || c->logout_requested)
		return 0;
	c->logout_requested = true;
	if (c->phase == AGENT_PHASE_ACTIVE && c->link_up)
		set_phase(c, AGENT_PHASE_LOGOUT);
	else
		leave(c); // no session to end, or no way to tell presence: it times the session out
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Life cycle and views

int agent_client_init(agent_client *c, const agent_client_config *cfg, const agent_client_ops *ops)
{
	memset(c, 0, sizeof(*c));
	c->phase = AGENT_PHASE_DONE;
	if (cfg == NULL || ops == NULL || cfg->agent_id == 0 || cfg->secret == NULL ||
	    cfg->heartbeat_ms == 0 || ops->send == NULL || ops->event == NULL ||
	    ops->finish == NULL || ops->mono_ms == NULL || ops->wall_us == NULL)
		return RB_EINVAL;
	size_t n = strlen(cfg->secret);
	if (n == 0 || n > AGENT_SECRET_MAX)
		return RB_EINVAL;
	c->cfg = *cfg;
	memcpy(c->secret, cfg->secret, n + 1);
	c->cfg.secret = NULL;
	c->ops = *ops;
	c->next_seq = 1;
	c->state = RINGBID__AGENT_STATE__AGENT_OFFLINE;
	c->phase = AGENT_PHASE_WAIT_LINK;
	return 0;
}

void agent_client_fini(agent_client *c)
{
	explicit_bzero(c->secret, sizeof(c->secret));
	explicit_bzero(c->token, sizeof(c->token));
	c->phase = AGENT_PHASE_DONE;
	c->npending = 0;
}

agent_phase agent_client_phase(const agent_client *c)
{
	return c->phase;
}

Ringbid__AgentState agent_client_state(const agent_client *c)
{
	return c->state;
}

const agent_offer *agent_client_offer(const agent_client *c)
{
	return c->offer.present ? &c->offer : NULL;
}

const agent_call *agent_client_call(const agent_client *c, uint64_t *talk_ms)
{
	if (!c->call.present)
		return NULL;
	if (talk_ms) {
		uint64_t now = now_ms(c);
		*talk_ms = now > c->call.connected_ms ? now - c->call.connected_ms : 0;
	}
	return &c->call;
}
