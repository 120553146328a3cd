// The callers: each call of the schedule arrives through the broker's call API (CallArrived),
// hangs up when the caller's patience runs out before an agent answers (CallHangup), answers
// the survey after the call (RecordOutcomes, when the broker takes it), and at the end is read
// back (CallQuery) so that the summary counts what the broker recorded.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "sim.h"

typedef enum {
	REQ_ARRIVED = 0,
	REQ_HANGUP,
	REQ_OUTCOME,
	REQ_QUERY,
} req_kind;

typedef struct broker_req {
	sim *s;
	req_kind kind;
	size_t call;
} broker_req;

int sim_call_lookup(const sim *s, const char *call_id)
{
	unsigned long long run;
	size_t idx;
	int used = 0;

	if (call_id == NULL || sscanf(call_id, "s%llx-%zu%n", &run, &idx, &used) != 2 ||
	    call_id[used] != '\0' || run != s->run_id || idx >= s->ncalls)
		return -1;
	return (int)idx;
}

static void call_id_of(const sim *s, size_t i, char *out, size_t n)
{
	snprintf(out, n, "s%llx-%zu", (unsigned long long)s->run_id, i);
}

static bool call_open(const sim_call *c)
{
	return c->state != SIM_CALL_PENDING && c->state != SIM_CALL_ENDED &&
	       c->state != SIM_CALL_REFUSED;
}

void sim_call_set(sim *s, size_t i, sim_call_state to)
{
	sim_call *c = &s->calls[i];

	if (c->state == to)
		return;
	// An ended or refused call stays so; only the broker's final record says more.
	if (c->state == SIM_CALL_ENDED || c->state == SIM_CALL_REFUSED)
		return;
	c->state = to;
	// Calls before first_open are all settled: patience checks start there.
	while (s->first_open < s->next_arrival && !call_open(&s->calls[s->first_open]))
		s->first_open++;
}

void sim_call_ended_at_agent(sim *s, size_t i, double quality)
{
	sim_call *c = &s->calls[i];
	const sim_arrival *arr = &s->sched[i];

	if (c->disposition == 0)
		c->disposition = RINGBID__DISPOSITION__DISP_COMPLETED;
	sim_call_set(s, i, SIM_CALL_ENDED);
	if (arr->survey && c->survey == SIM_SURVEY_NONE) {
		c->survey_value = sim_survey_score(quality, arr->survey_noise);
		c->survey = SIM_SURVEY_DUE;
		s->surveys_due++;
	}
}

// ---------------------------------------------------------------------------------------------
// Requests

static void on_reply(rb_bus *bus, int err, nng_msg *reply, void *arg);

static int send_request(sim *s, Ringbid__CallRequest *req, req_kind kind, size_t call)
{
	nng_msg *msg = NULL;
	broker_req *br = malloc(sizeof(*br));
	int rv;

	if (br == NULL)
		return RB_ENOMEM;
	*br = (broker_req){.s = s, .kind = kind, .call = call};
	req->token = s->token;
	rv = rb_pb_pack(&req->base, RB_PB_MAX_DEFAULT, &msg);
	if (rv == 0)
		rv = rb_bus_request(s->broker, msg, SIM_REQUEST_MS, on_reply, br);
	if (rv != 0) {
		free(br);
		return rv;
	}
	s->inflight++;
	return 0;
}

static void send_arrived(sim *s, size_t i)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallArrived arr = RINGBID__CALL_ARRIVED__INIT;
	char id[48], caller[24];

	call_id_of(s, i, id, sizeof(id));
	// Made-up numbers in the 555-01xx range that is reserved for fiction.
	snprintf(caller, sizeof(caller), "+1555010%04zu", i % 10000);
	arr.call_id = id;
	arr.program = s->opt.programs[s->sched[i].program];
	arr.caller = caller;
	req.body_case = RINGBID__CALL_REQUEST__BODY_ARRIVED;
	req.arrived = &arr;
	s->calls[i].sent_us = rb_mono_us();
	s->calls[i].agent = -1;
	sim_call_set(s, i, SIM_CALL_ARRIVING);
	if (send_request(s, &req, REQ_ARRIVED, i) != 0)
		sim_call_set(s, i, SIM_CALL_REFUSED);
}

static void send_hangup(sim *s, size_t i)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallHangup h = RINGBID__CALL_HANGUP__INIT;
	char id[48];

	call_id_of(s, i, id, sizeof(id));
	h.call_id = id;
	h.side = RINGBID__HANGUP_SIDE__SIDE_CALLER;
	req.body_case = RINGBID__CALL_REQUEST__BODY_HANGUP;
	req.hangup = &h;
	if (send_request(s, &req, REQ_HANGUP, i) == 0)
		sim_call_set(s, i, SIM_CALL_HANGING_UP);
}

static void send_survey(sim *s, size_t i)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__RecordOutcomes ro = RINGBID__RECORD_OUTCOMES__INIT;
	Ringbid__Outcome o = RINGBID__OUTCOME__INIT;
	Ringbid__Outcome *list[1] = {&o};
	char id[48];

	call_id_of(s, i, id, sizeof(id));
	o.call_id = id;
	o.kind = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY;
	o.value = s->calls[i].survey_value;
	o.reviewer = "";
	ro.outcomes = list;
	ro.n_outcomes = 1;
	req.body_case = RINGBID__CALL_REQUEST__BODY_OUTCOMES;
	req.outcomes = &ro;
	if (send_request(s, &req, REQ_OUTCOME, i) == 0) {
		s->calls[i].survey = SIM_SURVEY_SENT;
		if (s->outcomes_supported < 0)
			s->outcome_probe = true;
	}
}

static void send_query(sim *s, size_t i)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallQuery q = RINGBID__CALL_QUERY__INIT;
	char id[48];

	call_id_of(s, i, id, sizeof(id));
	q.call_id = id;
	q.wait_ms = 0;
	req.body_case = RINGBID__CALL_REQUEST__BODY_QUERY;
	req.query = &q;
	if (send_request(s, &req, REQ_QUERY, i) != 0)
		s->calls[i].queried = true; // counted as unknown
}

// A CallInfo from the broker: only the fields the simulator uses are checked and taken.
static bool info_ok(const Ringbid__CallInfo *ci)
{
	return ci != NULL && ci->state >= RINGBID__CALL_STATE__CALL_ARRIVED &&
	       ci->state <= RINGBID__CALL_STATE__CALL_ENDED &&
	       ci->disposition >= RINGBID__DISPOSITION__DISPOSITION_NONE &&
	       ci->disposition <= RINGBID__DISPOSITION__DISP_OVERFLOW;
}

// What a reply to CallArrived or CallHangup tells about the call.
static void apply_info(sim *s, size_t i, const Ringbid__CallInfo *ci)
{
	sim_call *c = &s->calls[i];

	if (ci->state == RINGBID__CALL_STATE__CALL_ENDED) {
		c->disposition = ci->disposition;
		sim_call_set(s, i, SIM_CALL_ENDED);
	} else if (ci->state == RINGBID__CALL_STATE__CALL_CONNECTED) {
		c->accepted = true;
		sim_call_set(s, i, SIM_CALL_CONNECTED);
	} else if (c->state == SIM_CALL_ARRIVING || c->state == SIM_CALL_HANGING_UP) {
		sim_call_set(s, i, SIM_CALL_WAITING);
	}
}

static void on_outcome_reply(sim *s, size_t i, int err, const Ringbid__CallReply *r)
{
	sim_call *c = &s->calls[i];

	c->survey = SIM_SURVEY_DONE;
	if (s->surveys_due > 0)
		s->surveys_due--;
	s->outcome_probe = false;
	if (err == 0 && r->error == NULL && r->n_outcomes > 0) {
		s->outcomes_supported = 1;
		s->surveys_recorded++;
		return;
	}
	if (err == 0 && r->error != NULL && s->outcomes_supported < 0) {
		s->outcomes_supported = 0;
		rb_logf(RB_LOG_INFO, NULL, 0,
		        "the broker does not take outcomes (%s): survey scores are not recorded",
		        rb_err_name(r->error->code));
		return;
	}
	rb_logf(RB_LOG_WARN, NULL, 0, "a survey score was not recorded: %s",
	        err ? rb_err_str(err) : rb_err_name(r->error ? r->error->code : RB_EINVAL));
}

static void on_reply(rb_bus *bus, int err, nng_msg *reply, void *arg)
{
	broker_req *br = arg;
	sim *s = br->s;
	size_t i = br->call;
	Ringbid__CallReply *r = NULL;
	(void)bus;

	s->inflight--;
	if (err == 0) {
		err = rb_pb_unpack_msg(&ringbid__call_reply__descriptor, reply, RB_PB_MAX_DEFAULT,
		                       (ProtobufCMessage **)&r);
		nng_msg_free(reply);
	}
	if (err == 0 && r->error != NULL && (r->error->code >= 0 || r->error->code < RB_ECODE_MIN))
		r->error->code = RB_EINVAL;
	char id[48];
	call_id_of(s, i, id, sizeof(id));

	switch (br->kind) {
	case REQ_ARRIVED:
		if (err != 0 || r->error != NULL) {
			int code = err ? err : r->error->code;
			rb_logf(RB_LOG_WARN, id, 0, "the broker did not take the call: %s",
			        rb_err_str(code));
			sim_call_set(s, i, SIM_CALL_REFUSED);
		} else if (info_ok(r->call)) {
			apply_info(s, i, r->call);
		}
		break;
	case REQ_HANGUP:
		if (err == 0 && r->error == NULL && info_ok(r->call)) {
			apply_info(s, i, r->call);
		} else if (s->calls[i].state == SIM_CALL_HANGING_UP) {
			// Tried again on the next tick.
			rb_logf(RB_LOG_WARN, id, 0, "hang-up not taken: %s",
			        rb_err_str(err ? err : r->error->code));
			sim_call_set(s, i, SIM_CALL_WAITING);
		}
		break;
	case REQ_OUTCOME:
		on_outcome_reply(s, i, err, r);
		break;
	case REQ_QUERY: {
		sim_call *c = &s->calls[i];
		c->queried = true;
		if (err == 0 && r->error == NULL && info_ok(r->call)) {
			const Ringbid__CallInfo *ci = r->call;
			c->result = (sim_call_result){
			        .known = true,
			        .state = ci->state,
			        .disposition = ci->disposition,
			        .arrived_us = ci->arrived_us,
			        .answered_us = ci->answered_us,
			        .ended_us = ci->ended_us,
			};
		} else if (err != 0) {
			rb_logf(RB_LOG_WARN, id, 0, "cannot read the call back: %s",
			        rb_err_str(err));
		}
		break;
	}
	}
	free(br);
	rb_pb_free(r ? &r->base : NULL);
}

// ---------------------------------------------------------------------------------------------
// The tick

static void arrivals(sim *s, uint64_t now)
{
	while (s->next_arrival < s->ncalls && s->inflight < SIM_BROKER_INFLIGHT &&
	       s->t0_ms + s->sched[s->next_arrival].at_ms <= now) {
		size_t i = s->next_arrival++;
		send_arrived(s, i);
	}
}

static void patience(sim *s, uint64_t now)
{
	for (size_t i = s->first_open; i < s->next_arrival && s->inflight < SIM_BROKER_INFLIGHT;
	     i++) {
		sim_call *c = &s->calls[i];
		if (c->state != SIM_CALL_WAITING || c->accepted)
			continue;
		uint64_t wait_us =
		        sim_scale_ms(s->sched[i].patience_sim_ms, s->opt.time_factor) * 1000;
		if (now * 1000 >= c->sent_us + wait_us)
			send_hangup(s, i);
	}
}

static void surveys(sim *s)
{
	if (s->surveys_due == 0)
		return;
	if (s->outcomes_supported == 0) {
		// The broker refused outcomes: nothing due is sent.
		for (size_t i = 0; i < s->next_arrival; i++)
			if (s->calls[i].survey == SIM_SURVEY_DUE)
				s->calls[i].survey = SIM_SURVEY_DONE;
		s->surveys_due = 0;
		return;
	}
	for (size_t i = 0; i < s->next_arrival && s->inflight < SIM_BROKER_INFLIGHT; i++) {
		// While nobody knows whether the broker takes outcomes, one goes first.
		if (s->outcomes_supported < 0 && s->outcome_probe)
			return;
		if (s->calls[i].survey == SIM_SURVEY_DUE)
			send_survey(s, i);
	}
}

// The drain time is over: waiting callers hang up; agents end their calls (agents.c sees the
// phase and ends connected calls at once).
static void close_calls(sim *s)
{
	for (size_t i = s->first_open; i < s->next_arrival && s->inflight < SIM_BROKER_INFLIGHT;
	     i++) {
		sim_call *c = &s->calls[i];
		if (c->state == SIM_CALL_WAITING && !c->accepted) {
			c->cut_short = true;
			send_hangup(s, i);
		} else if (c->state == SIM_CALL_CONNECTED && !c->cut_short) {
			c->cut_short = true;
			if (c->agent >= 0 && (uint32_t)c->agent < s->opt.agents) {
				sim_agent *a = &s->agents[c->agent];
				if (a->call == (int)i && a->end_at_ms != 0)
					a->end_at_ms = 1;
			}
		}
	}
}

static void queries(sim *s)
{
	while (s->next_query < s->next_arrival && s->inflight < SIM_BROKER_INFLIGHT) {
		size_t i = s->next_query++;
		if (s->calls[i].state == SIM_CALL_PENDING)
			s->calls[i].queried = true;
		else
			send_query(s, i);
	}
}

void sim_callers_tick(sim *s, uint64_t now)
{
	switch (s->phase) {
	case SIM_PHASE_RUN:
		arrivals(s, now);
		patience(s, now);
		break;
	case SIM_PHASE_DRAIN:
		patience(s, now);
		break;
	case SIM_PHASE_CLOSE:
		close_calls(s);
		break;
	case SIM_PHASE_RECONCILE:
		queries(s);
		break;
	default:
		break;
	}
	if (s->phase >= SIM_PHASE_RUN && s->phase <= SIM_PHASE_CLOSE)
		surveys(s);
}

bool sim_callers_settled(const sim *s)
{
	if (s->inflight > 0 || s->surveys_due > 0)
		return false;
	for (size_t i = s->first_open; i < s->next_arrival; i++)
		if (call_open(&s->calls[i]))
			return false;
	return true;
}

bool sim_callers_reconciled(const sim *s)
{
	return s->inflight == 0 && s->next_query >= s->next_arrival;
}

int sim_callers_start(sim *s)
{
	rb_bus_opts bo = {
	        .recv_max = RB_PB_MAX_DEFAULT,
	        .name = "sim-broker",
	};
	int rv = rb_bus_new(&s->loop, RB_BUS_REQ, &bo, &s->broker);

	if (rv == 0)
		rv = rb_bus_dial(s->broker, s->broker_url);
	if (rv != 0)
		fprintf(stderr, "ringbid-sim: cannot reach the broker at %s: %s\n", s->broker_url,
		        rb_err_str(rv));
	return rv;
}

void sim_callers_free(sim *s)
{
	rb_bus_free(s->broker); // pending requests get RB_ECLOSED (and free their context)
	s->broker = NULL;
}
