// The auction's protocol: Envelopes from presence and the broker checked field by field, applied
// to the market, and the market's Matches sent to the broker.
#include "auction_link.h"

#include <uthash.h>

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_secret.h"
#include "rb_time.h"
#include "ringbid.pb-c.h"

// A snapshot chunk larger than this is refused (presence sends chunks of about a thousand).
#define SNAPSHOT_CHUNK_MAX 100000
// Timestamps further ahead of this clock than this are impossible (clock skew allowance).
#define FUTURE_SKEW_US (3600ull * 1000000)

// One presence connection. It speaks for the instance its Envelopes name; its snapshot
// replaces only that instance's agents.
typedef struct peer {
	uint32_t pipe; // nng pipe id; 0 for callers that do not tell connections apart
	bool known;    // an Envelope came: presence_id is set
	uint32_t presence_id;
	uint64_t snap_gen; // the snapshot being received (its agents are marked with it)
	uint64_t snap_id;  // presence's id of that snapshot
	bool snap_open;
	UT_hash_handle hh;
} peer;

// Where an agent's session lives. Each instance's stream is in order (its state_seq only
// grows), but state_seqs of two instances are separate counters: between instances the
// update that arrives last wins, and only a report of availability moves an agent, because
// every instance also reports the agents it does not hold (as not available).
typedef struct home {
	uint64_t agent_id;
	uint32_t presence_id; // the instance that last reported it (holding it, when held)
	bool held;            // presence_id reported it available and has not gone since
	uint64_t seq;         // the state_seq of the last update applied
	uint64_t arrival;     // order of that update among all applied
	uint64_t snap_gen;    // the last snapshot of presence_id that mentioned it
	UT_hash_handle hh;
} home;

struct auction {
	char token[256];
	auction_send_fn send;
	void *send_arg;
	market *mk;
	bool broker_up;
	bool from_broker; // handling a message the broker just sent: it is connected
	peer *peers;      // presence connections
	size_t npeers;
	peer *cur; // the presence connection whose message is being handled
	home *homes;
	uint64_t arrivals; // updates applied so far
	uint64_t snap_gens;
};

// One registry per process: the auction's metrics are registered once.
static struct {
	bool registered;
	rb_metric *decisions, *exploratory, *resends, *refused, *available, *waiting, *agents,
	        *reserved, *backstops, *forgotten, *presence_peers, *moves, *instance_lost;
} metrics;

static void metric_inc(rb_metric *m)
{
	if (m)
		rb_metric_inc(m);
}

static void metric_add(rb_metric *m, double v)
{
	if (m)
		rb_metric_add(m, v);
}

static void metric_set(rb_metric *m, double v)
{
	if (m)
		rb_metric_set(m, v);
}

static void metrics_register(void)
{
	if (metrics.registered)
		return;
	metrics.registered = true;
	metrics.decisions = rb_metrics_counter("ringbid_auction_decisions_total", NULL,
	                                       "Calls matched to an agent (new decisions).");
	metrics.exploratory =
	        rb_metrics_counter("ringbid_auction_exploratory_decisions_total", NULL,
	                           "Calls matched by the exploration share (longest available).");
	metrics.resends = rb_metrics_counter("ringbid_auction_match_resends_total", NULL,
	                                     "Matches sent again for a re-enqueued matched call.");
	metrics.refused = rb_metrics_counter("ringbid_auction_messages_refused_total", NULL,
	                                     "Messages refused: malformed, wrong token, invalid.");
	metrics.available = rb_metrics_gauge("ringbid_auction_agents_available", NULL,
	                                     "Agents available and not reserved (indexed).");
	metrics.waiting = rb_metrics_gauge("ringbid_auction_calls_waiting", NULL,
	                                   "Calls waiting for an eligible agent.");
	metrics.agents =
	        rb_metrics_gauge("ringbid_auction_agents", NULL, "Agents known from presence.");
	metrics.reserved = rb_metrics_gauge("ringbid_auction_agents_reserved", NULL,
	                                    "Agents matched and not yet released by presence.");
	metrics.backstops = rb_metrics_counter("ringbid_auction_reservations_expired_total", NULL,
	                                       "Reservations ended by the 30 s backstop.");
	metrics.forgotten =
	        rb_metrics_counter("ringbid_auction_calls_forgotten_total", NULL,
	                           "Calls dropped after the broker stopped naming them.");
	metrics.presence_peers = rb_metrics_gauge("ringbid_auction_presence_connections", NULL,
	                                          "Presence instances connected now.");
	metrics.moves = rb_metrics_counter("ringbid_auction_agent_moves_total", NULL,
	                                   "Agents reported available by another presence "
	                                   "instance than the one holding them.");
	metrics.instance_lost =
	        rb_metrics_counter("ringbid_auction_agents_instance_lost_total", NULL,
	                           "Agents that left the market with their presence instance.");
}

static void update_gauges(const auction *a)
{
	market_stats st;
	market_get_stats(a->mk, &st);
	metric_set(metrics.available, (double)st.agents_available);
	metric_set(metrics.waiting, (double)st.calls_waiting);
	metric_set(metrics.agents, (double)st.agents);
	metric_set(metrics.reserved, (double)st.agents_reserved);
	metric_set(metrics.presence_peers, (double)a->npeers);
}

static market_time now_time(void)
{
	return (market_time){.wall_us = rb_now_us(), .mono_us = rb_mono_us()};
}

static const char *link_name(auction_link_id link)
{
	return link == AUCTION_LINK_PRESENCE ? "presence" : "broker";
}

static const char *body_name(Ringbid__Envelope__BodyCase c)
{
	switch (c) {
	case RINGBID__ENVELOPE__BODY_ENQUEUE:
		return "Enqueue";
	case RINGBID__ENVELOPE__BODY_DEQUEUE:
		return "Dequeue";
	case RINGBID__ENVELOPE__BODY_MATCH:
		return "Match";
	case RINGBID__ENVELOPE__BODY_AGENT:
		return "AgentUpdate";
	case RINGBID__ENVELOPE__BODY_SNAPSHOT:
		return "AgentSnapshot";
	case RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST:
		return "SnapshotRequest";
	case RINGBID__ENVELOPE__BODY_OFFER:
		return "Offer";
	case RINGBID__ENVELOPE__BODY_OFFER_RESULT:
		return "OfferResult";
	case RINGBID__ENVELOPE__BODY_OFFER_CANCEL:
		return "OfferCancel";
	case RINGBID__ENVELOPE__BODY_AGENT_HANGUP:
		return "AgentHangup";
	case RINGBID__ENVELOPE__BODY_CALL_ENDED:
		return "CallEnded";
	case RINGBID__ENVELOPE__BODY_CALL_SYNC:
		return "CallSync";
	case RINGBID__ENVELOPE__BODY_PRESENCE_STATS:
		return "PresenceStats";
	case RINGBID__ENVELOPE__BODY_ERROR:
		return "ErrorReply";
	default:
		return "an Envelope without a body";
	}
}

// Sends env on link; on the presence link to connection pipe only.
static int send_envelope_to(auction *a, auction_link_id link, uint32_t pipe, Ringbid__Envelope *env)
{
	env->token = a->token;
	nng_msg *msg;
	int rc = rb_pb_pack(&env->base, RB_PB_MAX_SERVICE, &msg);
	if (rc != 0) {
		rb_error("cannot pack %s for the %s link: %s", body_name(env->body_case),
		         link_name(link), rb_err_str(rc));
		return rc;
	}
	if (link == AUCTION_LINK_PRESENCE && pipe != 0) {
		nng_pipe p = NNG_PIPE_INITIALIZER;
		p.id = pipe;
		nng_msg_set_pipe(msg, p);
	}
	return a->send(a->send_arg, link, msg);
}

// Sends env on link; on the presence link to the connection being heard.
static int send_envelope(auction *a, auction_link_id link, Ringbid__Envelope *env)
{
	return send_envelope_to(a, link, a->cur ? a->cur->pipe : 0, env);
}

// Refuses a message: a warn line, the counter, and an Envelope{error} on the same link.
static void refuse(auction *a, auction_link_id link, int code, const char *call_id,
                   uint64_t agent_id, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void refuse(auction *a, auction_link_id link, int code, const char *call_id,
                   uint64_t agent_id, const char *fmt, ...)
{
	char text[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	metric_inc(metrics.refused);
	rb_logf(RB_LOG_WARN, call_id, agent_id, "refused on the %s link: %s (%s)", link_name(link),
	        text, rb_err_name(code));
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = text;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_ERROR;
	env.error = &er;
	send_envelope(a, link, &env);
}

// ---------------------------------------------------------------------------------------------
// Matches to the broker

static void on_match(const market_match *mm, void *arg)
{
	auction *a = arg;
	const market_decision *d = mm->decision;
	if (mm->resend) {
		metric_inc(metrics.resends);
		rb_logf(RB_LOG_DEBUG, mm->call_id, mm->agent_id, "match sent again");
	} else {
		metric_inc(metrics.decisions);
		if (d->exploratory)
			metric_inc(metrics.exploratory);
		rb_logf(RB_LOG_INFO, mm->call_id, mm->agent_id,
		        "matched: %s, score %.2f (%s), runner-up %" PRIu64 " (%.2f%s%s), %" PRIu32
		        " eligible",
		        d->reason, d->score, d->score_basis, d->runner_up_id, d->runner_up_score,
		        d->runner_up_basis[0] ? " " : "", d->runner_up_basis, d->eligible);
	}
	if (!a->broker_up && !a->from_broker) {
		// The broker enqueues every waiting call when it connects; this Match goes then.
		rb_logf(RB_LOG_DEBUG, mm->call_id, mm->agent_id, "broker link down: match kept");
		return;
	}
	Ringbid__Decision dec = RINGBID__DECISION__INIT;
	dec.at_us = d->at_us;
	dec.agent_id = d->agent_id;
	dec.score = d->score;
	dec.runner_up_id = d->runner_up_id;
	dec.runner_up_score = d->runner_up_score;
	dec.eligible = d->eligible;
	dec.exploratory = d->exploratory;
	dec.reason = (char *)d->reason;
	dec.available_since_us = d->available_since_us;
	dec.score_basis = (char *)d->score_basis;
	dec.runner_up_basis = (char *)d->runner_up_basis;
	Ringbid__Match m = RINGBID__MATCH__INIT;
	m.call_id = (char *)mm->call_id;
	m.agent_id = mm->agent_id;
	m.decision = &dec;
	// Only an agent reported available is matched, so its instance is known; the broker
	// sends the offer on that instance's connection.
	uint32_t pid = 0;
	auction_agent_instance(a, mm->agent_id, &pid);
	m.presence_id = pid;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_MATCH;
	env.match = &m;
	send_envelope(a, AUCTION_LINK_BROKER, &env);
}

// ---------------------------------------------------------------------------------------------
// Field checks: each names what is wrong, for the log and the ErrorReply.

static bool check_skills(char **skills, size_t n, char *why, size_t len)
{
	if (n > MARKET_MAX_SKILLS) {
		snprintf(why, len, "%zu skills (at most %d)", n, MARKET_MAX_SKILLS);
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (!rb_valid_id(skills[i], MARKET_ID_MAX)) {
			snprintf(why, len, "skill %zu is not a valid identifier", i + 1);
			return false;
		}
	}
	return true;
}

static bool check_score(double s)
{
	return isfinite(s) && s >= 0.0 && s <= 100.0;
}

static bool check_agent(const Ringbid__AgentUpdate *u, uint64_t now_us, char *why, size_t len)
{
	if (u->agent_id == 0) {
		snprintf(why, len, "agent_id 0");
		return false;
	}
	if (!check_skills(u->skills, u->n_skills, why, len))
		return false;
	if (!check_score(u->score)) {
		snprintf(why, len, "score %g outside 0..100", u->score);
		return false;
	}
	if (u->n_program_scores > MARKET_MAX_PROGRAM_SCORES) {
		snprintf(why, len, "%zu program scores (at most %d)", u->n_program_scores,
		         MARKET_MAX_PROGRAM_SCORES);
		return false;
	}
	for (size_t i = 0; i < u->n_program_scores; i++) {
		const Ringbid__ProgramScore *p = u->program_scores[i];
		if (!p || !rb_valid_id(p->program, MARKET_ID_MAX)) {
			snprintf(why, len, "program score %zu: program is not a valid identifier",
			         i + 1);
			return false;
		}
		if (!check_score(p->score)) {
			snprintf(why, len, "program score for %s: %g outside 0..100", p->program,
			         p->score);
			return false;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(u->program_scores[j]->program, p->program) == 0) {
				snprintf(why, len, "program %s scored twice", p->program);
				return false;
			}
		}
	}
	if (u->available_since_us > now_us + FUTURE_SKEW_US) {
		snprintf(why, len, "available_since_us in the future");
		return false;
	}
	return true;
}

// Fills info from u; ps must hold u->n_program_scores entries. Valid while u lives.
static void agent_info(const Ringbid__AgentUpdate *u, market_program_score *ps,
                       market_agent_info *info)
{
	for (size_t i = 0; i < u->n_program_scores; i++)
		ps[i] = (market_program_score){u->program_scores[i]->program,
		                               u->program_scores[i]->score};
	*info = (market_agent_info){
	        .id = u->agent_id,
	        .available = u->available,
	        .skills = u->skills,
	        .nskills = u->n_skills,
	        .score = u->score,
	        .program_scores = ps,
	        .nprogram_scores = u->n_program_scores,
	        .available_since_us = u->available_since_us,
	        .state_seq = u->state_seq,
	};
}

static bool check_enqueue(const Ringbid__Enqueue *e, uint64_t now_us, char *why, size_t len)
{
	if (!rb_valid_id(e->call_id, MARKET_ID_MAX)) {
		snprintf(why, len, "call_id is not a valid identifier");
		return false;
	}
	if (!rb_valid_id(e->program, MARKET_ID_MAX)) {
		snprintf(why, len, "program is not a valid identifier");
		return false;
	}
	if (!check_skills(e->skills, e->n_skills, why, len))
		return false;
	if (e->n_excluded > MARKET_MAX_EXCLUDED) {
		snprintf(why, len, "%zu excluded agents (at most %d)", e->n_excluded,
		         MARKET_MAX_EXCLUDED);
		return false;
	}
	for (size_t i = 0; i < e->n_excluded; i++) {
		if (e->excluded[i] == 0) {
			snprintf(why, len, "excluded agent 0");
			return false;
		}
	}
	if (e->arrived_us == 0 || e->arrived_us > now_us + FUTURE_SKEW_US) {
		snprintf(why, len, "arrived_us %" PRIu64 " is impossible", e->arrived_us);
		return false;
	}
	if (!isfinite(e->explore_share) || e->explore_share < 0.0 || e->explore_share > 1.0) {
		snprintf(why, len, "explore_share %g outside 0..1", e->explore_share);
		return false;
	}
	return true;
}

// ---------------------------------------------------------------------------------------------
// Messages

static void on_enqueue(auction *a, const Ringbid__Enqueue *e)
{
	market_time now = now_time();
	const char *cid = rb_valid_id(e->call_id, MARKET_ID_MAX) ? e->call_id : NULL;
	char why[160];
	if (!check_enqueue(e, now.wall_us, why, sizeof why)) {
		refuse(a, AUCTION_LINK_BROKER, RB_EINVAL, cid, 0, "Enqueue: %s", why);
		return;
	}
	market_call_info in = {
	        .id = e->call_id,
	        .program = e->program,
	        .skills = e->skills,
	        .nskills = e->n_skills,
	        .priority = e->priority,
	        .arrived_us = e->arrived_us,
	        .excluded = e->excluded,
	        .nexcluded = e->n_excluded,
	        .explore_share = e->explore_share,
	};
	int rc = market_enqueue(a->mk, &in, now);
	if (rc == RB_EBUSY)
		refuse(a, AUCTION_LINK_BROKER, rc, cid, 0,
		       "Enqueue: too many distinct (program, skills) queues in use");
	else if (rc != 0)
		refuse(a, AUCTION_LINK_BROKER, rc, cid, 0, "Enqueue: %s", rb_err_str(rc));
}

static void on_dequeue(auction *a, const Ringbid__Dequeue *d)
{
	if (!rb_valid_id(d->call_id, MARKET_ID_MAX)) {
		refuse(a, AUCTION_LINK_BROKER, RB_EINVAL, NULL, d->release_agent,
		       "Dequeue: call_id is not a valid identifier");
		return;
	}
	int rc = market_dequeue(a->mk, d->call_id, d->release_agent, now_time());
	if (rc != 0)
		refuse(a, AUCTION_LINK_BROKER, rc, d->call_id, 0, "Dequeue: %s", rb_err_str(rc));
}

// ---------------------------------------------------------------------------------------------
// Agents and the instances holding them

static home *home_find(const auction *a, uint64_t agent_id)
{
	home *h = NULL;
	HASH_FIND(hh, a->homes, &agent_id, sizeof agent_id, h);
	return h;
}

// The agent leaves the market: not available, its reservation (if any) ended. The market has
// no removal of a single agent, so it stays known there as away until presence speaks of it
// again. The state_seq given is one past the last applied: never the one a reservation was
// taken at, so the reservation ends (docs/delivery.md).
static void release(auction *a, home *h, market_time now)
{
	market_agent_info info = {
	        .id = h->agent_id,
	        .available = false,
	        .state_seq = h->seq + 1,
	};
	int rc = market_agent_update(a->mk, &info, now);
	if (rc != 0)
		rb_logf(RB_LOG_ERROR, NULL, h->agent_id, "cannot take the agent out: %s",
		        rb_err_str(rc));
	h->seq++;
	h->held = false;
}

typedef enum {
	ROUTE_APPLY, // the update is the agent's news: apply it
	ROUTE_SKIP,  // an instance that does not hold the agent says it is not available there
} route;

// Decides what an update from instance pid does to the agent, ending the hold of another
// instance when the agent is available on pid now (a move: the agent logged in there).
static route route_update(auction *a, uint32_t pid, const Ringbid__AgentUpdate *u, market_time now)
{
	home *h = home_find(a, u->agent_id);
	if (h == NULL || !h->held || h->presence_id == pid)
		return ROUTE_APPLY;
	if (!u->available)
		return ROUTE_SKIP;
	metric_inc(metrics.moves);
	rb_logf(RB_LOG_INFO, NULL, u->agent_id,
	        "available on presence instance %" PRIu32 ", held by instance %" PRIu32
	        " until now: moved",
	        pid, h->presence_id);
	release(a, h, now);
	return ROUTE_APPLY;
}

// Records that instance pid's update u was applied. Returns the agent's entry, or NULL when
// there is no memory for it (the agent is then matched as if held by no instance).
static home *note_applied(auction *a, uint32_t pid, const Ringbid__AgentUpdate *u)
{
	home *h = home_find(a, u->agent_id);
	if (h == NULL) {
		h = calloc(1, sizeof *h);
		if (h == NULL) {
			rb_logf(RB_LOG_ERROR, NULL, u->agent_id,
			        "out of memory for the agent's home");
			return NULL;
		}
		h->agent_id = u->agent_id;
		HASH_ADD(hh, a->homes, agent_id, sizeof h->agent_id, h);
	}
	if (h->presence_id != pid)
		h->held = false;
	h->presence_id = pid;
	if (u->available)
		h->held = true;
	h->seq = u->state_seq;
	h->arrival = ++a->arrivals;
	return h;
}

// Every agent held by instance pid leaves the market; with snap_gen non-zero only those its
// snapshot of that generation did not mention. Returns how many left.
static size_t release_instance(auction *a, uint32_t pid, uint64_t snap_gen, market_time now)
{
	size_t n = 0;
	home *h, *tmp;
	HASH_ITER(hh, a->homes, h, tmp)
	{
		if (h->presence_id != pid || !h->held || (snap_gen != 0 && h->snap_gen == snap_gen))
			continue;
		release(a, h, now);
		n++;
	}
	return n;
}

// The instance the connection being heard speaks for.
static uint32_t cur_pid(const auction *a)
{
	return a->cur && a->cur->known ? a->cur->presence_id : 0;
}

static void on_agent(auction *a, const Ringbid__AgentUpdate *u)
{
	market_time now = now_time();
	char why[160];
	if (!check_agent(u, now.wall_us, why, sizeof why)) {
		refuse(a, AUCTION_LINK_PRESENCE, RB_EINVAL, NULL, u->agent_id, "AgentUpdate: %s",
		       why);
		return;
	}
	uint32_t pid = cur_pid(a);
	if (route_update(a, pid, u, now) == ROUTE_SKIP)
		return;
	market_program_score ps[MARKET_MAX_PROGRAM_SCORES];
	market_agent_info info;
	agent_info(u, ps, &info);
	int rc = market_agent_update(a->mk, &info, now);
	if (rc == RB_EINVAL) {
		refuse(a, AUCTION_LINK_PRESENCE, rc, NULL, u->agent_id, "AgentUpdate: %s",
		       rb_err_str(rc));
		return;
	}
	note_applied(a, pid, u);
	if (rc != 0)
		refuse(a, AUCTION_LINK_PRESENCE, rc, NULL, u->agent_id, "AgentUpdate: %s",
		       rb_err_str(rc));
}

// One chunk of an instance's snapshot. Its agents are applied by the rules of single updates;
// when the last chunk is in, the agents the instance held that it no longer mentions leave
// the market. Other instances' agents are not touched.
static void on_snapshot(auction *a, const Ringbid__AgentSnapshot *s)
{
	market_time now = now_time();
	char why[160];
	if (s->n_agents > SNAPSHOT_CHUNK_MAX) {
		refuse(a, AUCTION_LINK_PRESENCE, RB_ETOOBIG, NULL, 0,
		       "AgentSnapshot: %zu agents in one chunk (at most %d)", s->n_agents,
		       SNAPSHOT_CHUNK_MAX);
		return;
	}
	size_t nps = 0;
	for (size_t i = 0; i < s->n_agents; i++) {
		const Ringbid__AgentUpdate *u = s->agents[i];
		if (!u || !check_agent(u, now.wall_us, why, sizeof why)) {
			refuse(a, AUCTION_LINK_PRESENCE, RB_EINVAL, NULL, u ? u->agent_id : 0,
			       "AgentSnapshot %" PRIu64 ", agent %zu: %s", s->snapshot_id, i + 1,
			       u ? why : "missing");
			return;
		}
		nps += u->n_program_scores;
	}
	market_agent_info *infos = calloc(s->n_agents ? s->n_agents : 1, sizeof *infos);
	market_program_score *ps = calloc(nps ? nps : 1, sizeof *ps);
	const Ringbid__AgentUpdate **applied =
	        calloc(s->n_agents ? s->n_agents : 1, sizeof *applied);
	if (!infos || !ps || !applied) {
		free(infos);
		free(ps);
		free(applied);
		refuse(a, AUCTION_LINK_PRESENCE, RB_ENOMEM, NULL, 0, "AgentSnapshot %" PRIu64,
		       s->snapshot_id);
		return;
	}
	peer *p = a->cur;
	uint32_t pid = cur_pid(a);
	if (s->first && p) {
		p->snap_gen = ++a->snap_gens;
		p->snap_id = s->snapshot_id;
		p->snap_open = true;
	}
	bool ours = p && p->snap_open && p->snap_id == s->snapshot_id;
	size_t n = 0, off = 0, skipped = 0;
	for (size_t i = 0; i < s->n_agents; i++) {
		const Ringbid__AgentUpdate *u = s->agents[i];
		if (route_update(a, pid, u, now) == ROUTE_SKIP) {
			skipped++;
			continue;
		}
		agent_info(u, ps + off, &infos[n]);
		off += u->n_program_scores;
		applied[n++] = u;
	}
	// Not first, not last: the market applies the chunk and matches once, and drops nobody
	// (dropping is done here, per instance).
	int rc = market_snapshot(a->mk, s->snapshot_id, false, false, infos, n, now, NULL);
	if (rc != RB_EINVAL) {
		for (size_t i = 0; i < n; i++) {
			home *h = note_applied(a, pid, applied[i]);
			if (h && ours)
				h->snap_gen = p->snap_gen;
		}
	}
	free(infos);
	free(ps);
	free(applied);
	if (rc != 0) {
		refuse(a, AUCTION_LINK_PRESENCE, rc, NULL, 0, "AgentSnapshot %" PRIu64 ": %s",
		       s->snapshot_id, rb_err_str(rc));
		return;
	}
	size_t dropped = 0;
	if (s->last && ours) {
		dropped = release_instance(a, pid, p->snap_gen, now);
		p->snap_open = false;
	}
	if (s->first || s->last)
		rb_info("agent snapshot %" PRIu64 " of presence instance %" PRIu32
		        ": %s chunk, %zu agents (%zu held by other instances)",
		        s->snapshot_id, pid, s->first ? (s->last ? "single" : "first") : "last",
		        s->n_agents, skipped);
	if (dropped > 0)
		rb_info("agent snapshot %" PRIu64 ": %zu agents presence instance %" PRIu32
		        " no longer has left the market",
		        s->snapshot_id, dropped, pid);
}

static void on_peer_error(auction_link_id link, const Ringbid__ErrorReply *er, bool token_ok)
{
	const char *text = er && rb_valid_text(er->message, 256) ? er->message : "(unprintable)";
	rb_warn("the %s refused a message of ours: %s (%s)%s", link_name(link), text,
	        rb_err_name(er ? er->code : 0), token_ok ? "" : " [reply with a wrong token]");
}

int auction_new(const char *token, auction_send_fn send, void *send_arg, auction **out)
{
	if (!token || !send || !out || strlen(token) >= sizeof((auction *)0)->token)
		return RB_EINVAL;
	auction *a = calloc(1, sizeof *a);
	if (!a)
		return RB_ENOMEM;
	snprintf(a->token, sizeof a->token, "%s", token);
	a->send = send;
	a->send_arg = send_arg;
	int rc = market_new(NULL, on_match, a, &a->mk);
	if (rc != 0) {
		free(a);
		return rc;
	}
	metrics_register();
	update_gauges(a);
	*out = a;
	return 0;
}

void auction_free(auction *a)
{
	if (!a)
		return;
	market_free(a->mk);
	peer *p, *ptmp;
	HASH_ITER(hh, a->peers, p, ptmp)
	{
		HASH_DEL(a->peers, p);
		free(p);
	}
	home *h, *htmp;
	HASH_ITER(hh, a->homes, h, htmp)
	{
		HASH_DEL(a->homes, h);
		free(h);
	}
	free(a);
}

static peer *peer_find(const auction *a, uint32_t pipe)
{
	peer *p = NULL;
	HASH_FIND(hh, a->peers, &pipe, sizeof pipe, p);
	return p;
}

// The connection's entry, made when its first message comes before the news of its arrival.
static peer *peer_get(auction *a, uint32_t pipe)
{
	peer *p = peer_find(a, pipe);
	if (p)
		return p;
	p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->pipe = pipe;
	HASH_ADD(hh, a->peers, pipe, sizeof p->pipe, p);
	a->npeers++;
	return p;
}

// Another connection up now speaks for instance pid (an instance that reconnected before its
// old connection's loss was announced).
static bool instance_connected_elsewhere(const auction *a, const peer *gone)
{
	for (const peer *p = a->peers; p; p = p->hh.next)
		if (p != gone && p->known && p->presence_id == gone->presence_id)
			return true;
	return false;
}

// Learns (or checks) the instance a presence connection speaks for. False: refused.
static bool presence_identify(auction *a, peer *p, uint32_t presence_id)
{
	if (presence_id > AUCTION_PRESENCE_ID_MAX) {
		refuse(a, AUCTION_LINK_PRESENCE, RB_EINVAL, NULL, 0,
		       "presence_id %" PRIu32 " outside 0..%d", presence_id,
		       AUCTION_PRESENCE_ID_MAX);
		return false;
	}
	if (p->known && p->presence_id != presence_id) {
		refuse(a, AUCTION_LINK_PRESENCE, RB_EINVAL, NULL, 0,
		       "presence_id %" PRIu32 " on a connection of instance %" PRIu32, presence_id,
		       p->presence_id);
		return false;
	}
	if (!p->known) {
		p->known = true;
		p->presence_id = presence_id;
		if (instance_connected_elsewhere(a, p))
			rb_warn("presence instance %" PRIu32 " has two connections: two processes "
			        "with one RINGBID_PRESENCE_ID, or a restart whose old connection "
			        "is not gone yet",
			        presence_id);
		else
			rb_info("presence connection %" PRIu32 " is instance %" PRIu32, p->pipe,
			        presence_id);
	}
	return true;
}

void auction_receive(auction *a, auction_link_id link, const void *buf, size_t len)
{
	auction_receive_from(a, link, 0, buf, len);
}

void auction_receive_from(auction *a, auction_link_id link, uint32_t pipe, const void *buf,
                          size_t len)
{
	a->cur = NULL;
	if (link == AUCTION_LINK_PRESENCE) {
		a->cur = peer_get(a, pipe);
		if (!a->cur) {
			rb_error("out of memory for a presence connection: message dropped");
			return;
		}
	}
	ProtobufCMessage *pm = NULL;
	int rc = rb_pb_unpack(&ringbid__envelope__descriptor, buf, len, RB_PB_MAX_SERVICE, &pm);
	if (rc != 0) {
		refuse(a, link, rc, NULL, 0, "%zu bytes that are not an Envelope", len);
		a->cur = NULL;
		return;
	}
	Ringbid__Envelope *env = (Ringbid__Envelope *)pm;
	bool token_ok = rb_str_equal_ct(env->token, a->token);
	Ringbid__Envelope__BodyCase body = env->body_case;
	if (body == RINGBID__ENVELOPE__BODY_ERROR) {
		on_peer_error(link, env->error, token_ok);
	} else if (!token_ok) {
		refuse(a, link, RB_EAUTH, NULL, 0, "%s with a wrong service token",
		       body_name(body));
	} else if (link == AUCTION_LINK_BROKER && body == RINGBID__ENVELOPE__BODY_ENQUEUE) {
		// Its message may come before the loop hears of its connection.
		a->from_broker = true;
		on_enqueue(a, env->enqueue);
		a->from_broker = false;
	} else if (link == AUCTION_LINK_BROKER && body == RINGBID__ENVELOPE__BODY_DEQUEUE) {
		a->from_broker = true;
		on_dequeue(a, env->dequeue);
		a->from_broker = false;
	} else if (link == AUCTION_LINK_PRESENCE && body == RINGBID__ENVELOPE__BODY_AGENT) {
		if (presence_identify(a, a->cur, env->presence_id))
			on_agent(a, env->agent);
	} else if (link == AUCTION_LINK_PRESENCE && body == RINGBID__ENVELOPE__BODY_SNAPSHOT) {
		if (presence_identify(a, a->cur, env->presence_id))
			on_snapshot(a, env->snapshot);
	} else {
		refuse(a, link, RB_EINVAL, NULL, 0, "%s does not belong on this link",
		       body_name(body));
	}
	rb_pb_free(pm);
	a->cur = NULL;
	update_gauges(a);
}

void auction_link_event(auction *a, auction_link_id link, bool up)
{
	auction_peer_event(a, link, 0, up);
}

static void presence_up(auction *a, uint32_t pipe)
{
	peer *p = peer_get(a, pipe);
	if (!p) {
		rb_error("out of memory for a presence connection");
		return;
	}
	rb_info("presence connection %" PRIu32 " up (%zu connected)", pipe, a->npeers);
	Ringbid__SnapshotRequest req = RINGBID__SNAPSHOT_REQUEST__INIT;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST;
	env.snapshot_request = &req;
	send_envelope_to(a, AUCTION_LINK_PRESENCE, pipe, &env);
}

static void presence_down(auction *a, uint32_t pipe)
{
	peer *p = peer_find(a, pipe);
	if (!p)
		return;
	HASH_DEL(a->peers, p);
	a->npeers--;
	if (!p->known) {
		rb_info("presence connection %" PRIu32 " down (%zu connected)", pipe, a->npeers);
	} else if (instance_connected_elsewhere(a, p)) {
		rb_info("presence connection %" PRIu32 " down; instance %" PRIu32
		        " is connected again already",
		        pipe, p->presence_id);
	} else {
		size_t n = release_instance(a, p->presence_id, 0, now_time());
		metric_add(metrics.instance_lost, (double)n);
		rb_warn("presence instance %" PRIu32 " gone: %zu agents left the market "
		        "(%zu connections remain)",
		        p->presence_id, n, a->npeers);
	}
	free(p);
}

void auction_peer_event(auction *a, auction_link_id link, uint32_t pipe, bool up)
{
	if (link == AUCTION_LINK_PRESENCE) {
		if (up)
			presence_up(a, pipe);
		else
			presence_down(a, pipe);
	} else {
		if (a->broker_up != up)
			rb_info("broker link %s", up ? "up" : "down");
		a->broker_up = up;
	}
	update_gauges(a);
}

bool auction_ready(const auction *a)
{
	return a->npeers > 0 && a->broker_up;
}

bool auction_agent_instance(const auction *a, uint64_t agent_id, uint32_t *presence_id)
{
	const home *h = home_find(a, agent_id);
	if (!h || !h->held)
		return false;
	*presence_id = h->presence_id;
	return true;
}

size_t auction_presence_peers(const auction *a)
{
	return a->npeers;
}

void auction_janitor(auction *a)
{
	market_janitor_result r;
	market_janitor(a->mk, now_time(), &r);
	if (r.reservations_ended > 0) {
		metric_add(metrics.backstops, (double)r.reservations_ended);
		rb_info("reservation backstop: %zu agents held for 30 s without news released",
		        r.reservations_ended);
	}
	if (r.calls_forgotten > 0) {
		metric_add(metrics.forgotten, (double)r.calls_forgotten);
		rb_warn("forgot %zu calls the broker stopped enqueueing (a Dequeue was lost)",
		        r.calls_forgotten);
	}
	if (r.queues_dropped > 0)
		rb_debug("dropped %zu unused queues", r.queues_dropped);
	update_gauges(a);
}

market *auction_market(auction *a)
{
	return a->mk;
}
