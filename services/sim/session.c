// One simulated agent's presence session: the agent link of docs/delivery.md, kept small.
#include "session.h"
#include <stdio.h>
#include <string.h>
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"

static void emit(sim_session *s, sim_session_event *ev)
{
	if (ev->call_id == NULL)
		ev->call_id = "";
	s->ops.event(s->ops.arg, ev);
}

static void emit_kind(sim_session *s, sim_session_event_kind kind, int code,
                      Ringbid__AgentMsg__BodyCase req_kind)
{
	sim_session_event ev = {
	        .kind = kind, .state = s->state, .code = code, .req_kind = req_kind};
	emit(s, &ev);
}

static bool opt_id_ok(const char *id)
{
	return id == NULL || id[0] == '\0' || rb_valid_id(id, SIM_ID_MAX);
}

static bool state_ok(Ringbid__AgentState st)
{
	return st >= RINGBID__AGENT_STATE__AGENT_OFFLINE &&
	       st <= RINGBID__AGENT_STATE__AGENT_WRAP_UP;
}

// ---------------------------------------------------------------------------------------------
// Requests

static sim_session_req *req_find(sim_session *s, uint64_t seq)
{
	for (int i = 0; i < s->npending; i++)
		if (s->pending[i].seq == seq)
			return &s->pending[i];
	return NULL;
}

static void req_remove(sim_session *s, sim_session_req *r)
{
	int i = (int)(r - s->pending);

	memmove(&s->pending[i], &s->pending[i + 1],
	        (size_t)(s->npending - i - 1) * sizeof(s->pending[0]));
	s->npending--;
}

static void req_remove_kind(sim_session *s, Ringbid__AgentMsg__BodyCase kind)
{
	for (int i = 0; i < s->npending;) {
		if (s->pending[i].kind == kind)
			req_remove(s, &s->pending[i]);
		else
			i++;
	}
}

static int req_add(sim_session *s, Ringbid__AgentMsg__BodyCase kind, sim_session_req **out)
{
	if (s->npending >= SIM_SESSION_PENDING)
		return RB_EBUSY;
	sim_session_req *r = &s->pending[s->npending++];
	memset(r, 0, sizeof(*r));
	r->seq = s->next_seq++;
	r->kind = kind;
	*out = r;
	return 0;
}

static void req_send(sim_session *s, sim_session_req *r, uint64_t now_ms)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Login login = RINGBID__LOGIN__INIT;
	Ringbid__Resume resume = RINGBID__RESUME__INIT;
	Ringbid__SetState set_state = RINGBID__SET_STATE__INIT;
	Ringbid__Heartbeat heartbeat = RINGBID__HEARTBEAT__INIT;
	Ringbid__OfferAnswer answer = RINGBID__OFFER_ANSWER__INIT;
	Ringbid__EndCall end_call = RINGBID__END_CALL__INIT;
	Ringbid__Logout logout = RINGBID__LOGOUT__INIT;

	m.seq = r->seq;
	m.token = s->token;
	m.body_case = r->kind;
	switch (r->kind) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		login.agent_id = s->agent_id;
		login.secret = (char *)s->secret;
		m.token = "";
		m.login = &login;
		break;
	case RINGBID__AGENT_MSG__BODY_RESUME:
		resume.agent_id = s->agent_id;
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
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		m.logout = &logout;
		break;
	default:
		return;
	}
	r->sent = true;
	r->tries++;
	r->due_ms = now_ms + SIM_REQ_RESEND_MS;
	if (s->link_up)
		s->ops.send(s->ops.arg, &m); // a lost send is repaired by the resend
}

static bool is_session_kind(Ringbid__AgentMsg__BodyCase kind)
{
	return kind == RINGBID__AGENT_MSG__BODY_LOGIN || kind == RINGBID__AGENT_MSG__BODY_RESUME ||
	       kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT ||
	       kind == RINGBID__AGENT_MSG__BODY_LOGOUT;
}

// Commands wait for an active session; session requests go out at once.
static void req_start(sim_session *s, sim_session_req *r, uint64_t now_ms)
{
	if (is_session_kind(r->kind) || (s->phase == SIM_SESS_ACTIVE && s->link_up))
		req_send(s, r, now_ms);
}

// ---------------------------------------------------------------------------------------------
// Phases

static void start_session_req(sim_session *s, Ringbid__AgentMsg__BodyCase kind, uint64_t now_ms)
{
	sim_session_req *r;

	req_remove_kind(s, RINGBID__AGENT_MSG__BODY_LOGIN);
	req_remove_kind(s, RINGBID__AGENT_MSG__BODY_RESUME);
	if (req_add(s, kind, &r) == 0)
		req_send(s, r, now_ms);
}

static void set_phase(sim_session *s, sim_session_phase to, uint64_t now_ms)
{
	s->phase = to;
	switch (to) {
	case SIM_SESS_LOGIN:
		s->token[0] = '\0';
		start_session_req(s, RINGBID__AGENT_MSG__BODY_LOGIN, now_ms);
		break;
	case SIM_SESS_RESUME:
		start_session_req(s, RINGBID__AGENT_MSG__BODY_RESUME, now_ms);
		break;
	case SIM_SESS_BACKOFF:
		s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : SIM_BACKOFF_MIN_MS;
		if (s->backoff_ms > SIM_BACKOFF_MAX_MS)
			s->backoff_ms = SIM_BACKOFF_MAX_MS;
		s->backoff_due_ms = now_ms + s->backoff_ms;
		break;
	case SIM_SESS_ACTIVE:
		s->backoff_ms = 0;
		s->heartbeat_due_ms = now_ms + s->heartbeat_ms;
		// Commands queued while the session was away go out now.
		for (int i = 0; i < s->npending; i++)
			if (!is_session_kind(s->pending[i].kind))
				req_send(s, &s->pending[i], now_ms);
		break;
	case SIM_SESS_LOGOUT: {
		sim_session_req *r;
		s->logout_due_ms = now_ms + SIM_LOGOUT_WAIT_MS;
		if (req_add(s, RINGBID__AGENT_MSG__BODY_LOGOUT, &r) == 0)
			req_send(s, r, now_ms);
		break;
	}
	case SIM_SESS_DONE:
		s->npending = 0;
		break;
	default:
		break;
	}
}

static void finish(sim_session *s, sim_session_event_kind kind, int code, uint64_t now_ms)
{
	if (s->phase == SIM_SESS_DONE)
		return;
	set_phase(s, SIM_SESS_DONE, now_ms);
	emit_kind(s, kind, code, RINGBID__AGENT_MSG__BODY__NOT_SET);
}

// ---------------------------------------------------------------------------------------------
// Messages from presence

static bool status_ok(const Ringbid__AgentStatus *st)
{
	return st != NULL && state_ok(st->state) && opt_id_ok(st->call_id);
}

static void apply_state(sim_session *s, Ringbid__AgentState st)
{
	if (st == s->state)
		return;
	s->state = st;
	emit_kind(s, SIM_SEV_STATE, 0, RINGBID__AGENT_MSG__BODY__NOT_SET);
}

static void became_active(sim_session *s, const Ringbid__AgentStatus *st, uint64_t now_ms)
{
	s->logins++;
	set_phase(s, SIM_SESS_ACTIVE, now_ms);
	s->state = st->state;
	sim_session_event ev = {
	        .kind = SIM_SEV_ACTIVE,
	        .state = st->state,
	        .call_id = st->call_id,
	        .offer_id = st->offer_id,
	};
	emit(s, &ev);
}

static void on_login_reply(sim_session *s, const Ringbid__AgentStatus *st, int code,
                           uint64_t now_ms)
{
	if (st != NULL) {
		const char *tok = st->session_token;
		size_t n = tok ? strnlen(tok, SIM_TOKEN_MAX + 1) : 0;
		if (n == 0 || n > SIM_TOKEN_MAX || !rb_valid_text(tok, SIM_TOKEN_MAX)) {
			rb_logf(RB_LOG_WARN, NULL, s->agent_id, "login answered without a token");
			set_phase(s, SIM_SESS_BACKOFF, now_ms);
			return;
		}
		memcpy(s->token, tok, n + 1);
		became_active(s, st, now_ms);
		return;
	}
	if (code == RB_EBUSY) {
		// Presence checks a few secrets at a time: many agents logging in at once are
		// told to come back, and doubling waits would only stretch the queue. A short
		// wait, spread by agent, lets them through in turn.
		set_phase(s, SIM_SESS_BACKOFF, now_ms);
		s->backoff_ms = 0;
		s->backoff_due_ms =
		        now_ms + SIM_BUSY_RETRY_MS + (s->agent_id * 37) % SIM_BUSY_RETRY_MS;
		return;
	}
	if (code == RB_ESLOWDOWN) {
		set_phase(s, SIM_SESS_BACKOFF, now_ms);
		return;
	}
	rb_logf(RB_LOG_DEBUG, NULL, s->agent_id, "login refused: %s", rb_err_name(code));
	finish(s, SIM_SEV_REFUSED, code, now_ms);
}

static void on_reply(sim_session *s, const sim_session_req *r, const Ringbid__AgentMsg *m,
                     uint64_t now_ms)
{
	const Ringbid__AgentStatus *st = NULL;
	int code = 0;

	if (m->body_case == RINGBID__AGENT_MSG__BODY_STATUS && status_ok(m->status)) {
		st = m->status;
	} else if (m->body_case == RINGBID__AGENT_MSG__BODY_ERROR && m->error != NULL) {
		code = m->error->code < 0 && m->error->code >= RB_ECODE_MIN ? m->error->code
		                                                            : RB_EINVAL;
	} else {
		rb_logf(RB_LOG_WARN, NULL, s->agent_id, "malformed answer from presence ignored");
		return;
	}

	switch (r->kind) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		if (s->phase == SIM_SESS_LOGIN)
			on_login_reply(s, st, code, now_ms);
		return;
	case RINGBID__AGENT_MSG__BODY_RESUME:
		if (s->phase != SIM_SESS_RESUME)
			return;
		if (st)
			became_active(s, st, now_ms);
		else if (code == RB_EBUSY || code == RB_ESLOWDOWN)
			set_phase(s, SIM_SESS_BACKOFF, now_ms);
		else
			set_phase(s, SIM_SESS_LOGIN, now_ms); // the session is gone: log in again
		return;
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		finish(s, SIM_SEV_DONE, 0, now_ms);
		return;
	default:
		break;
	}
	if (st != NULL) {
		apply_state(s, st->state);
		if (r->kind == RINGBID__AGENT_MSG__BODY_END_CALL) {
			// Presence pushes no call event for a call the agent ended: the answer is
			// the news.
			sim_session_event ev = {
			        .kind = SIM_SEV_ENDED, .state = s->state, .call_id = r->call_id};
			emit(s, &ev);
		}
		return;
	}
	if (code == RB_EAUTH && s->phase == SIM_SESS_ACTIVE &&
	    r->kind != RINGBID__AGENT_MSG__BODY_HEARTBEAT) {
		// The session expired under us: the request goes again in a new one.
		sim_session_req *again;
		if (req_add(s, r->kind, &again) == 0) {
			uint64_t seq = again->seq;
			*again = *r;
			again->seq = seq;
			again->sent = false;
			again->tries = 0;
		}
		set_phase(s, SIM_SESS_LOGIN, now_ms);
		return;
	}
	if (code == RB_EAUTH && r->kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT &&
	    s->phase == SIM_SESS_ACTIVE) {
		set_phase(s, SIM_SESS_LOGIN, now_ms);
		return;
	}
	emit_kind(s, SIM_SEV_FAILED, code, r->kind);
}

static void on_call_event(sim_session *s, const Ringbid__CallEvent *ce)
{
	if (ce == NULL || ce->call_id == NULL || !rb_valid_id(ce->call_id, SIM_ID_MAX))
		return;
	sim_session_event ev = {
	        .state = s->state, .call_id = ce->call_id, .offer_id = ce->offer_id};
	switch (ce->kind) {
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED:
		ev.kind = SIM_SEV_CONNECTED;
		break;
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED:
		ev.kind = SIM_SEV_ENDED;
		break;
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN:
		ev.kind = SIM_SEV_WITHDRAWN;
		break;
	default:
		return;
	}
	emit(s, &ev);
}

void sim_session_on_msg(sim_session *s, const Ringbid__AgentMsg *m, uint64_t now_ms)
{
	if (m == NULL || s->phase == SIM_SESS_DONE)
		return;
	if (m->seq != 0) {
		sim_session_req *found = req_find(s, m->seq);
		if (found == NULL)
			return; // answer to a request already answered or given up
		sim_session_req r = *found;
		req_remove(s, found);
		on_reply(s, &r, m, now_ms);
		return;
	}
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_STATUS:
		if (status_ok(m->status) && s->phase == SIM_SESS_ACTIVE)
			apply_state(s, m->status->state);
		break;
	case RINGBID__AGENT_MSG__BODY_OFFER:
		if (m->offer && m->offer->offer_id != 0 && m->offer->call_id &&
		    rb_valid_id(m->offer->call_id, SIM_ID_MAX)) {
			sim_session_event ev = {.kind = SIM_SEV_OFFER,
			                        .state = s->state,
			                        .call_id = m->offer->call_id,
			                        .offer_id = m->offer->offer_id};
			emit(s, &ev);
		}
		break;
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT:
		on_call_event(s, m->call_event);
		break;
	case RINGBID__AGENT_MSG__BODY_ERROR:
		if (m->error && m->error->code == RB_ECLOSED && s->phase == SIM_SESS_ACTIVE) {
			// Another client took the session over: fighting it would never end.
			rb_logf(RB_LOG_ERROR, NULL, s->agent_id, "session taken over elsewhere");
			finish(s, SIM_SEV_REFUSED, RB_ECLOSED, now_ms);
		}
		break;
	default:
		break;
	}
}

void sim_session_on_data(sim_session *s, const void *buf, size_t len, uint64_t now_ms)
{
	ProtobufCMessage *pm = NULL;

	if (rb_pb_unpack(&ringbid__agent_msg__descriptor, buf, len, RB_PB_MAX_DEFAULT, &pm) != 0) {
		rb_logf(RB_LOG_WARN, NULL, s->agent_id, "undecodable message from presence");
		return;
	}
	sim_session_on_msg(s, (const Ringbid__AgentMsg *)pm, now_ms);
	rb_pb_free(pm);
}

// ---------------------------------------------------------------------------------------------
// Link, time, commands

void sim_session_link(sim_session *s, bool up, uint64_t now_ms)
{
	if (s->phase == SIM_SESS_DONE || s->link_up == up)
		return;
	s->link_up = up;
	if (up) {
		if (s->phase == SIM_SESS_WAIT_LINK)
			set_phase(s, s->token[0] ? SIM_SESS_RESUME : SIM_SESS_LOGIN, now_ms);
		return;
	}
	if (s->phase == SIM_SESS_LOGOUT)
		finish(s, SIM_SEV_DONE, 0, now_ms);
	else if (s->phase == SIM_SESS_LOGIN || s->phase == SIM_SESS_RESUME ||
	         s->phase == SIM_SESS_ACTIVE)
		set_phase(s, SIM_SESS_WAIT_LINK, now_ms);
}

void sim_session_tick(sim_session *s, uint64_t now_ms)
{
	if (s->phase == SIM_SESS_DONE)
		return;
	if (s->phase == SIM_SESS_LOGOUT && now_ms >= s->logout_due_ms) {
		finish(s, SIM_SEV_DONE, 0, now_ms);
		return;
	}
	if (s->phase == SIM_SESS_BACKOFF && now_ms >= s->backoff_due_ms) {
		if (!s->link_up)
			set_phase(s, SIM_SESS_WAIT_LINK, now_ms);
		else
			set_phase(s, s->token[0] ? SIM_SESS_RESUME : SIM_SESS_LOGIN, now_ms);
	}
	for (int i = 0; i < s->npending && s->phase != SIM_SESS_DONE;) {
		sim_session_req *r = &s->pending[i];
		if (!r->sent || r->due_ms > now_ms || r->kind == RINGBID__AGENT_MSG__BODY_LOGOUT) {
			i++;
			continue;
		}
		if (r->kind == RINGBID__AGENT_MSG__BODY_HEARTBEAT) {
			req_remove(s, r); // the next heartbeat says the same
			continue;
		}
		// A login is never given up while the link holds: its secret check may wait
		// behind many others at presence, which answers the first send and ignores the
		// repeats. A new request number would be refused as busy, and the real answer,
		// under the old number, would open a session nobody uses.
		if (r->tries < SIM_REQ_TRIES || r->kind == RINGBID__AGENT_MSG__BODY_LOGIN) {
			if (r->tries == SIM_REQ_TRIES)
				rb_logf(RB_LOG_INFO, NULL, s->agent_id,
				        "login not answered after %d tries: still waiting",
				        SIM_REQ_TRIES);
			req_send(s, r, now_ms);
			i++;
			continue;
		}
		sim_session_req gone = *r;
		req_remove(s, r);
		rb_logf(RB_LOG_WARN, NULL, s->agent_id, "no answer from presence after %d tries",
		        SIM_REQ_TRIES);
		if (gone.kind == RINGBID__AGENT_MSG__BODY_LOGIN ||
		    gone.kind == RINGBID__AGENT_MSG__BODY_RESUME) {
			set_phase(s, SIM_SESS_BACKOFF, now_ms);
			i = 0;
			continue;
		}
		emit_kind(s, SIM_SEV_FAILED, RB_ETIMEDOUT, gone.kind);
	}
	if (s->phase == SIM_SESS_ACTIVE && s->link_up && now_ms >= s->heartbeat_due_ms) {
		sim_session_req *r;
		s->heartbeat_due_ms = now_ms + s->heartbeat_ms;
		if (req_add(s, RINGBID__AGENT_MSG__BODY_HEARTBEAT, &r) == 0)
			req_send(s, r, now_ms);
	}
}

static int command_ok(const sim_session *s)
{
	return s->phase == SIM_SESS_DONE || s->phase == SIM_SESS_LOGOUT ? RB_ESTATE : 0;
}

int sim_session_set_ready(sim_session *s, bool ready, uint64_t now_ms)
{
	sim_session_req *r;
	int rv = command_ok(s);

	if (rv == 0)
		rv = req_add(s, RINGBID__AGENT_MSG__BODY_SET_STATE, &r);
	if (rv != 0)
		return rv;
	r->want_state = ready ? RINGBID__AGENT_STATE__AGENT_AVAILABLE
	                      : RINGBID__AGENT_STATE__AGENT_NOT_READY;
	req_start(s, r, now_ms);
	return 0;
}

int sim_session_answer(sim_session *s, uint64_t offer_id, bool accept, uint64_t now_ms)
{
	sim_session_req *r;
	int rv = command_ok(s);

	if (rv == 0)
		rv = req_add(s, RINGBID__AGENT_MSG__BODY_ANSWER, &r);
	if (rv != 0)
		return rv;
	r->offer_id = offer_id;
	r->accept = accept;
	req_start(s, r, now_ms);
	return 0;
}

int sim_session_end_call(sim_session *s, const char *call_id, bool sale, bool resolved,
                         uint64_t now_ms)
{
	sim_session_req *r;
	int rv = command_ok(s);

	if (rv == 0 && (call_id == NULL || !rb_valid_id(call_id, SIM_ID_MAX)))
		rv = RB_EINVAL;
	if (rv == 0)
		rv = req_add(s, RINGBID__AGENT_MSG__BODY_END_CALL, &r);
	if (rv != 0)
		return rv;
	snprintf(r->call_id, sizeof(r->call_id), "%s", call_id);
	r->sale = sale;
	r->resolved = resolved;
	req_start(s, r, now_ms);
	return 0;
}

void sim_session_logout(sim_session *s, uint64_t now_ms)
{
	if (s->phase == SIM_SESS_DONE || s->phase == SIM_SESS_LOGOUT)
		return;
	if (s->phase == SIM_SESS_ACTIVE && s->link_up)
		set_phase(s, SIM_SESS_LOGOUT, now_ms);
	else
		finish(s, SIM_SEV_DONE, 0, now_ms); // presence times the session out
}

bool sim_session_busy(const sim_session *s, Ringbid__AgentMsg__BodyCase kind)
{
	for (int i = 0; i < s->npending; i++)
		if (s->pending[i].kind == kind)
			return true;
	return false;
}

int sim_session_init(sim_session *s, uint64_t agent_id, const char *secret, uint64_t heartbeat_ms,
                     const sim_session_ops *ops)
{
	memset(s, 0, sizeof(*s));
	s->phase = SIM_SESS_DONE;
	if (agent_id == 0 || secret == NULL || secret[0] == '\0' ||
	    strlen(secret) > SIM_SECRET_MAX || heartbeat_ms == 0 || ops == NULL ||
	    ops->send == NULL || ops->event == NULL)
		return RB_EINVAL;
	s->agent_id = agent_id;
	s->secret = secret;
	s->heartbeat_ms = heartbeat_ms;
	s->ops = *ops;
	s->next_seq = 1;
	s->state = RINGBID__AGENT_STATE__AGENT_OFFLINE;
	s->phase = SIM_SESS_WAIT_LINK;
	return 0;
}

void sim_session_fini(sim_session *s)
{
	explicit_bzero(s->token, sizeof(s->token));
	s->phase = SIM_SESS_DONE;
	s->npending = 0;
}
