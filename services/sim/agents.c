// The simulated agents: one presence session over its own nng socket per agent, and the person
// behind it, who accepts or sometimes declines offers, talks for the caller's talk time, does
// after-call work, takes breaks, and marks sales and resolutions as their skill allows.
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "sim.h"

#define STREAM_AGENT 1000 // agent i draws from stream 1000 + i

double sim_p_sale(double q)
{
	return 0.05 + 0.30 * q;
}

double sim_p_resolved(double q)
{
	return 0.45 + 0.50 * q;
}

int sim_survey_score(double q, double noise)
{
	double v = 1.0 + 4.0 * q + 0.8 * noise;
	long r = lround(v);

	return r < 1 ? 1 : r > 5 ? 5 : (int)r;
}

static uint64_t now_ms(void)
{
	return rb_mono_us() / 1000;
}

// Simulated seconds drawn from the agent's own stream, in real milliseconds.
static uint64_t draw_real_ms(sim_agent *a, double mean_s)
{
	double ms = sim_rng_exp(&a->rng, mean_s) * 1000.0 / a->sim->opt.time_factor;

	return ms < 1.0 ? 1 : ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms;
}

static bool running(const sim *s)
{
	return s->phase <= SIM_PHASE_DRAIN;
}

// ---------------------------------------------------------------------------------------------
// State bookkeeping

static void account(sim_agent *a, uint64_t now)
{
	sim *s = a->sim;
	uint64_t from = a->state_since_ms, to = now;

	if (s->t0_ms == 0 || a->state >= SIM_NSTATES)
		goto out;
	if (from < s->t0_ms)
		from = s->t0_ms;
	if (s->measure_end_ms && to > s->measure_end_ms)
		to = s->measure_end_ms;
	if (to > from)
		s->state_ms[a->state] += to - from;
out:
	a->state_since_ms = now;
}

static void set_state(sim_agent *a, Ringbid__AgentState st, uint64_t now)
{
	// An offer reaches only an agent that was available, though another program's call
	// may have taken it before the simulator saw AVAILABLE.
	if (a->logged_in && (st == RINGBID__AGENT_STATE__AGENT_AVAILABLE ||
	                     st == RINGBID__AGENT_STATE__AGENT_RESERVED))
		a->went_ready = true;
	if (st == a->state)
		return;
	account(a, now);
	a->state = st;
	if (st == RINGBID__AGENT_STATE__AGENT_AVAILABLE)
		a->free_since_us = rb_mono_us();
}

void sim_agents_account(sim *s, uint64_t now)
{
	for (uint32_t i = 0; i < s->opt.agents; i++)
		account(&s->agents[i], now);
}

void sim_agents_count(const sim *s, uint32_t out[SIM_NSTATES])
{
	memset(out, 0, SIM_NSTATES * sizeof(out[0]));
	for (uint32_t i = 0; i < s->opt.agents; i++)
		if (s->agents[i].state < SIM_NSTATES)
			out[s->agents[i].state]++;
}

// ---------------------------------------------------------------------------------------------
// The person's decisions

static void forget_call(sim_agent *a)
{
	a->call_id[0] = '\0';
	a->call = -1;
	a->end_at_ms = 0;
}

static void take_call(sim_agent *a, const char *call_id, uint64_t now)
{
	sim *s = a->sim;
	int i = sim_call_lookup(s, call_id);

	snprintf(a->call_id, sizeof(a->call_id), "%s", call_id);
	a->call = i;
	if (i < 0) {
		// Somebody else's call (ringbid call, telephony): talk an average while.
		s->foreign_calls++;
		a->end_at_ms = now + draw_real_ms(a, s->opt.talk_mean_s);
		return;
	}
	sim_call *c = &s->calls[i];
	a->end_at_ms = now + sim_scale_ms(s->sched[i].talk_sim_ms, s->opt.time_factor);
	c->agent = (int)a->index;
	c->accepted = true;
	if (c->connected_us == 0)
		c->connected_us = rb_mono_us();
	if (c->state == SIM_CALL_ARRIVING || c->state == SIM_CALL_WAITING ||
	    c->state == SIM_CALL_HANGING_UP)
		sim_call_set(s, (size_t)i, SIM_CALL_CONNECTED);
}

static void end_call(sim_agent *a, uint64_t now)
{
	sim *s = a->sim;
	bool sale = false, resolved = false;

	if (a->call >= 0) {
		const sim_arrival *arr = &s->sched[a->call];
		sale = arr->u_sale < sim_p_sale(a->quality);
		resolved = arr->u_resolved < sim_p_resolved(a->quality);
	}
	if (sim_session_end_call(&a->sess, a->call_id, sale, resolved, now) != 0)
		return; // tried again on the next tick
	a->end_at_ms = 0;
	s->sales += sale;
	s->resolved += resolved;
}

static void on_offer(sim_agent *a, const sim_session_event *ev, uint64_t now)
{
	sim *s = a->sim;
	int i = sim_call_lookup(s, ev->call_id);
	bool accept = true;

	s->offers++;
	if (i >= 0) {
		sim_call *c = &s->calls[i];
		if (!c->offered && s->nlatency < s->ncalls) {
			// From the moment the call and this free agent were both there.
			uint64_t t = rb_mono_us(), from = c->sent_us;
			if (a->free_since_us > from)
				from = a->free_since_us;
			s->latency_us[s->nlatency++] = t > from ? t - from : 0;
		}
		c->offered = true;
		c->agent = (int)a->index;
	}
	if (running(s) && sim_rng_uniform(&a->rng) < s->opt.decline_rate) {
		accept = false;
		s->declines++;
	}
	if (sim_session_answer(&a->sess, ev->offer_id, accept, now) != 0)
		rb_logf(RB_LOG_WARN, ev->call_id, a->id, "cannot answer the offer now");
	else if (accept && i >= 0)
		s->calls[i].accepted = true;
}

static void on_ended(sim_agent *a, const char *call_id, uint64_t now)
{
	sim *s = a->sim;
	int i = sim_call_lookup(s, call_id);

	if (i >= 0)
		sim_call_ended_at_agent(s, (size_t)i, a->quality);
	if (strcmp(a->call_id, call_id) == 0)
		forget_call(a);
	a->ready_at_ms = now + draw_real_ms(a, s->opt.acw_mean_s);
}

// True when this agent accepted call_id and it has not connected yet: the broker is connecting
// it, and its CALL_EVENT_CONNECTED starts the talk (a decline would only be refused).
static bool accepted_here(const sim_agent *a, const char *call_id)
{
	int i = sim_call_lookup(a->sim, call_id);

	return i >= 0 && a->sim->calls[i].accepted && a->sim->calls[i].agent == (int)a->index &&
	       a->sim->calls[i].state != SIM_CALL_CONNECTED;
}

static void on_event(void *arg, const sim_session_event *ev)
{
	sim_agent *a = arg;
	sim *s = a->sim;
	uint64_t now = now_ms();

	switch (ev->kind) {
	case SIM_SEV_ACTIVE:
		if (!a->logged_in)
			rb_logf(RB_LOG_DEBUG, NULL, a->id, "logged in");
		a->logged_in = true;
		set_state(a, ev->state, now);
		if (ev->state == RINGBID__AGENT_STATE__AGENT_ON_CALL && ev->call_id[0] &&
		    strcmp(a->call_id, ev->call_id) != 0) {
			// A call left running from an earlier session: end it so the agent can
			// take part.
			take_call(a, ev->call_id, now);
			a->end_at_ms = now;
		} else if (ev->state == RINGBID__AGENT_STATE__AGENT_ON_CALL && ev->call_id[0] &&
		           a->end_at_ms == 0) {
			// Still on the call this agent had already ended: that end-call went to a
			// session that is gone (presence restarted). Say it again.
			a->end_at_ms = now;
		} else if (ev->state == RINGBID__AGENT_STATE__AGENT_RESERVED && ev->offer_id &&
		           !accepted_here(a, ev->call_id)) {
			// An offer made while the link was down: its details went with the old
			// link, so the agent passes it on.
			sim_session_answer(&a->sess, ev->offer_id, false, now);
		}
		break;
	case SIM_SEV_STATE:
		set_state(a, ev->state, now);
		break;
	case SIM_SEV_OFFER:
		on_offer(a, ev, now);
		break;
	case SIM_SEV_CONNECTED:
		// Only now is the call the agent's: its talk time runs from here, not from the
		// accept (the broker confirms the connection once it is on its disk).
		take_call(a, ev->call_id, now);
		if (!running(s))
			a->end_at_ms = now; // the run is closing: no long talks any more
		break;
	case SIM_SEV_ENDED:
		on_ended(a, ev->call_id, now);
		break;
	case SIM_SEV_WITHDRAWN: {
		int i = sim_call_lookup(s, ev->call_id);
		if (i >= 0 && s->calls[i].state != SIM_CALL_CONNECTED)
			s->calls[i].accepted = false;
		break;
	}
	case SIM_SEV_REFUSED:
		a->refused = true;
		a->done = true;
		rb_logf(RB_LOG_ERROR, NULL, a->id, "agent %" PRIu64 " cannot log in: %s", a->id,
		        rb_err_str(ev->code));
		break;
	case SIM_SEV_FAILED:
		if (ev->req_kind == RINGBID__AGENT_MSG__BODY_END_CALL && ev->code == RB_ENOTFOUND)
			forget_call(a); // the call is gone already
		else if (ev->req_kind == RINGBID__AGENT_MSG__BODY_END_CALL && a->call_id[0])
			a->end_at_ms = now; // not heard (presence away, session renewed): again
		break;
	case SIM_SEV_DONE:
		a->done = true;
		break;
	}
}

static void person_tick(sim_agent *a, uint64_t now)
{
	sim *s = a->sim;
	sim_session *ss = &a->sess;
	Ringbid__AgentState st = a->state;
	bool set_busy = sim_session_busy(ss, RINGBID__AGENT_MSG__BODY_SET_STATE);

	if (ss->phase != SIM_SESS_ACTIVE)
		return;
	if (a->call_id[0] && a->end_at_ms && now >= a->end_at_ms &&
	    !sim_session_busy(ss, RINGBID__AGENT_MSG__BODY_END_CALL))
		end_call(a, now);
	if (!running(s)) {
		a->on_break = false;
		return;
	}
	if (s->opt.break_every_s > 0 && s->phase != SIM_PHASE_LOGIN) {
		if (!a->on_break && a->next_break_ms == 0)
			a->next_break_ms = now + draw_real_ms(a, s->opt.break_every_s);
		if (!a->on_break && now >= a->next_break_ms &&
		    (st == RINGBID__AGENT_STATE__AGENT_AVAILABLE ||
		     st == RINGBID__AGENT_STATE__AGENT_WRAP_UP)) {
			a->on_break = true;
			a->break_until_ms = now + draw_real_ms(a, s->opt.break_mean_s);
			s->breaks++;
		} else if (a->on_break && now >= a->break_until_ms) {
			a->on_break = false;
			a->next_break_ms = now + draw_real_ms(a, s->opt.break_every_s);
		}
	}
	if (set_busy)
		return;
	if (a->on_break) {
		if (st == RINGBID__AGENT_STATE__AGENT_AVAILABLE ||
		    st == RINGBID__AGENT_STATE__AGENT_WRAP_UP)
			sim_session_set_ready(ss, false, now);
		return;
	}
	if (st == RINGBID__AGENT_STATE__AGENT_NOT_READY ||
	    (st == RINGBID__AGENT_STATE__AGENT_WRAP_UP && now >= a->ready_at_ms))
		sim_session_set_ready(ss, true, now);
}

void sim_agents_tick(sim *s, uint64_t now)
{
	for (uint32_t i = 0; i < s->opt.agents; i++) {
		sim_agent *a = &s->agents[i];
		if (a->done)
			continue;
		sim_session_tick(&a->sess, now);
		person_tick(a, now);
	}
}

// ---------------------------------------------------------------------------------------------
// Sockets

static int op_send(void *arg, const Ringbid__AgentMsg *msg)
{
	sim_agent *a = arg;
	nng_msg *nm = NULL;
	int rv;

	if (a->bus == NULL)
		return RB_ECLOSED;
	rv = rb_pb_pack(&msg->base, RB_PB_MAX_DEFAULT, &nm);
	if (rv != 0)
		return rv;
	return rb_bus_send(a->bus, nm);
}

static void on_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	sim_agent *a = arg;
	(void)bus;

	if (!a->done)
		sim_session_on_data(&a->sess, nng_msg_body(msg), nng_msg_len(msg), now_ms());
	nng_msg_free(msg);
}

static void on_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	sim_agent *a = arg;
	(void)bus;
	(void)pipe;

	a->npipes += added ? 1 : -1;
	if (a->npipes < 0)
		a->npipes = 0;
	if (!a->done)
		sim_session_link(&a->sess, a->npipes > 0, now_ms());
}

int sim_agents_start(sim *s)
{
	sim_session_ops ops = {.send = op_send, .event = on_event};
	rb_bus_opts bo = {
	        .recv_max = RB_PB_MAX_DEFAULT,
	        .send_timeout_ms = SIM_REQ_RESEND_MS,
	        .name = "sim-agent",
	};
	uint64_t now = now_ms();

	s->agents = calloc(s->opt.agents, sizeof(*s->agents));
	if (s->agents == NULL)
		return RB_ENOMEM;
	for (uint32_t i = 0; i < s->opt.agents; i++) {
		sim_agent *a = &s->agents[i];
		int rv;

		a->sim = s;
		a->index = i;
		a->id = s->opt.first_agent + i;
		a->call = -1;
		a->state_since_ms = now;
		sim_rng_seed(&a->rng, s->opt.seed, STREAM_AGENT + i);
		// Quality: the mean of two uniforms, so that most agents are middling and a few
		// are very good or poor.
		a->quality = (sim_rng_uniform(&a->rng) + sim_rng_uniform(&a->rng)) / 2.0;
		ops.arg = a;
		rv = sim_session_init(&a->sess, a->id, s->secret, s->heartbeat_ms, &ops);
		if (rv == 0)
			rv = rb_bus_new(&s->loop, RB_BUS_PAIR, &bo, &a->bus);
		if (rv == 0 && s->tls != NULL)
			rv = rb_bus_set_tls(a->bus, s->tls);
		if (rv == 0) {
			rb_bus_on_recv(a->bus, on_recv, a);
			rb_bus_on_pipe(a->bus, on_pipe, a);
			rv = rb_bus_dial(a->bus, s->presence_url);
		}
		if (rv != 0) {
			fprintf(stderr,
			        "ringbid-sim: agent %" PRIu64 ": cannot reach presence at %s: %s\n",
			        a->id, s->presence_url, rb_err_str(rv));
			return rv;
		}
	}
	return 0;
}

void sim_agents_logout(sim *s, uint64_t now)
{
	for (uint32_t i = 0; i < s->opt.agents; i++)
		if (!s->agents[i].done)
			sim_session_logout(&s->agents[i].sess, now);
}

uint32_t sim_agents_logged_in(const sim *s)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->opt.agents; i++)
		n += s->agents[i].logged_in;
	return n;
}

bool sim_agents_done(const sim *s)
{
	for (uint32_t i = 0; i < s->opt.agents; i++)
		if (!s->agents[i].done)
			return false;
	return true;
}

// Each agent counts once it has gone ready: calls of others (ringbid call, another
// simulator on the same program) keep some agents busy at any moment, so waiting for all of
// them to be AVAILABLE at once could wait for ever.
bool sim_agents_ready(const sim *s)
{
	for (uint32_t i = 0; i < s->opt.agents; i++) {
		const sim_agent *a = &s->agents[i];
		if (!a->refused && !a->went_ready)
			return false;
	}
	return true;
}

bool sim_agents_busy(const sim *s)
{
	for (uint32_t i = 0; i < s->opt.agents; i++)
		if (!s->agents[i].done && s->agents[i].call >= 0)
			return true;
	return false;
}

void sim_agents_free(sim *s)
{
	if (s->agents == NULL)
		return;
	for (uint32_t i = 0; i < s->opt.agents; i++) {
		sim_agent *a = &s->agents[i];
		rb_bus_free(a->bus);
		a->bus = NULL;
		a->done = true;
		sim_session_fini(&a->sess);
	}
}
