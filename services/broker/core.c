// The broker's core: applies call events, journals them, runs the per-call timers, and holds
// the outbound messages that must wait until the journal has the change that caused them.
#include "broker.h"

#include <stdlib.h>
#include <string.h>

#include "presence_link.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"

static const double answer_delay_bounds[] = {1, 2, 5, 10, 15, 20, 30, 60, 120, 300};

typedef struct call_timer {
	uv_timer_t handle;
	broker *b;
	broker_call *c;
} call_timer;

// An outbound message waiting for the journal.
typedef struct gated {
	broker *b;
	broker_link link;
	nng_msg *msg;
	uint64_t agent_id; // presence: the agent the message is about (0: none)
	bool sync;         // presence: a CallSync chunk
} gated;

// Held messages to presence about one agent.
struct broker_held {
	uint64_t agent_id;
	uint32_t count;
	UT_hash_handle hh;
};

void broker_presence_hold(broker *b, uint64_t agent_id, bool sync, int delta)
{
	if (sync) {
		if (delta > 0)
			b->presence_gated_syncs++;
		else if (b->presence_gated_syncs > 0)
			b->presence_gated_syncs--;
	}
	if (agent_id == 0)
		return;
	struct broker_held *h = NULL;
	HASH_FIND(hh, b->held, &agent_id, sizeof(agent_id), h);
	if (delta > 0) {
		if (h == NULL) {
			h = calloc(1, sizeof(*h));
			if (h == NULL) {
				// Uncounted, an Offer to this agent may overtake the held message:
				// presence then refuses it and the call goes back in line.
				rb_logf(RB_LOG_ERROR, NULL, agent_id,
				        "out of memory for a held message");
				return;
			}
			h->agent_id = agent_id;
			HASH_ADD(hh, b->held, agent_id, sizeof(h->agent_id), h);
		}
		h->count++;
	} else if (h != NULL && --h->count == 0) {
		HASH_DEL(b->held, h);
		free(h);
	}
}

uint32_t broker_presence_held(const broker *b, uint64_t agent_id)
{
	struct broker_held *h = NULL;
	HASH_FIND(hh, b->held, &agent_id, sizeof(agent_id), h);
	return b->presence_gated_syncs + (h != NULL ? h->count : 0);
}

static rb_bus *link_bus(broker *b, broker_link link)
{
	switch (link) {
	case BROKER_LINK_AUCTION:
		return b->auction;
	case BROKER_LINK_PRESENCE:
		return b->presence[0];
	case BROKER_LINK_BILLING:
		return b->billing;
	default:
		return NULL;
	}
}

static void evicted(broker_call *c, void *arg)
{
	broker_api_evicted(arg, c);
}

static void outbox_changed(broker_outbox *o, void *arg)
{
	broker *b = arg;
	(void)o;
	rb_metric_set(b->m.outbox, (double)broker_outbox_count(&b->outbox));
}

static void billing_refused(broker_outbox *o, void *arg)
{
	(void)o;
	broker_refused(arg, BROKER_LINK_BILLING);
}

int broker_core_init(broker *b)
{
	broker_book_init(&b->book, BROKER_ENDED_MAX, BROKER_ENDED_KEEP_US);
	broker_book_on_evict(&b->book, evicted, b);
	broker_outbox_init(&b->outbox);
	broker_outbox_on_change(&b->outbox, outbox_changed, b);
	broker_outbox_on_refused(&b->outbox, billing_refused, b);
	broker_outcomes_init(&b->outcomes);
	broker_programs_init(&b->programs);
	memset(&b->kpi, 0, sizeof(b->kpi));
	b->next_offer_id = 1;
	b->journal_ok = true;

	broker_metrics *m = &b->m;
	m->arrived = rb_metrics_counter("ringbid_calls_arrived_total", NULL,
	                                "Calls handed to the broker by telephony.");
	m->answered = rb_metrics_counter("ringbid_calls_answered_total", NULL,
	                                 "Calls connected to an agent.");
	m->abandoned = rb_metrics_counter("ringbid_calls_abandoned_total", NULL,
	                                  "Calls whose caller hung up before an agent answered.");
	m->overflow = rb_metrics_counter("ringbid_calls_overflow_total", NULL,
	                                 "Calls that waited longer than their program allows.");
	m->completed = rb_metrics_counter("ringbid_calls_completed_total", NULL,
	                                  "Connected calls that ended.");
	m->waiting = rb_metrics_gauge("ringbid_calls_waiting", NULL,
	                              "Calls waiting for an agent (queued or ringing).");
	m->offering =
	        rb_metrics_gauge("ringbid_calls_offering", NULL, "Calls ringing at an agent now.");
	m->connected = rb_metrics_gauge("ringbid_calls_connected", NULL,
	                                "Calls connected to an agent now.");
	m->outbox = rb_metrics_gauge("ringbid_cdr_outbox", NULL,
	                             "CDRs not yet acknowledged by billing.");
	m->cdr_lag = rb_metrics_gauge("ringbid_cdr_lag_seconds", NULL,
	                              "Age of the oldest CDR billing has not acknowledged "
	                              "(0 when none): how far billing is behind.");
	m->answer_delay = rb_metrics_histogram(
	        "ringbid_answer_delay_seconds", NULL, "Time from a call's arrival to its answer.",
	        answer_delay_bounds, sizeof(answer_delay_bounds) / sizeof(answer_delay_bounds[0]));
	m->journal_bytes =
	        rb_metrics_gauge("ringbid_journal_bytes", NULL, "Size of the call journal.");
	m->journal_writable = rb_metrics_gauge("ringbid_journal_writable", NULL,
	                                       "1 while the call journal can be written.");
	static const char *const link_labels[BROKER_NLINKS] = {
	        "link=\"calls\"",
	        "link=\"auction\"",
	        "link=\"presence\"",
	        "link=\"billing\"",
	};
	for (int i = 0; i < BROKER_NLINKS; i++)
		m->refused[i] = rb_metrics_counter(
		        "ringbid_messages_refused_total", link_labels[i],
		        "Messages refused: undecodable, oversized, wrong token or invalid fields.");
	if (!m->arrived || !m->answered || !m->abandoned || !m->overflow || !m->completed ||
	    !m->waiting || !m->offering || !m->connected || !m->outbox || !m->cdr_lag ||
	    !m->answer_delay || !m->journal_bytes || !m->journal_writable || !m->refused[0] ||
	    !m->refused[1] || !m->refused[2] || !m->refused[3])
		return RB_ENOMEM;
	return 0;
}

int broker_core_replay(const Ringbid__JournalEntry *e, void *arg)
{
	broker *b = arg;
	int rc;
	switch (e->body_case) {
	case RINGBID__JOURNAL_ENTRY__BODY_CALL: {
		const Ringbid__CallRecord *rec = e->call;
		rc = broker_book_restore(&b->book, rec, rb_now_us(), rb_mono_us(), NULL);
		if (rc == RB_ENOMEM)
			return rc;
		if (rc != 0) {
			const char *id =
			        rec->info && rec->info->call_id &&
			                        rb_valid_id(rec->info->call_id, BROKER_ID_MAX)
			                ? rec->info->call_id
			                : NULL;
			rb_logf(RB_LOG_ERROR, id, rec->info ? rec->info->agent_id : 0,
			        "journal: call record skipped (%s)", rb_err_str(rc));
		}
		if (rec->offer_id >= b->next_offer_id)
			b->next_offer_id = rec->offer_id + 1;
		return 0;
	}
	case RINGBID__JOURNAL_ENTRY__BODY_CDR:
		rc = broker_outbox_add(&b->outbox, e->cdr, true, NULL);
		if (rc == RB_ENOMEM)
			return rc;
		if (rc == RB_EINVAL)
			rb_logf(RB_LOG_ERROR, NULL, 0, "journal: unusable CDR record skipped");
		return 0;
	case RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED:
		if (e->cdr_acked != NULL)
			broker_outbox_ack(&b->outbox, e->cdr_acked);
		return 0;
	case RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID:
		if (e->next_offer_id > b->next_offer_id)
			b->next_offer_id = e->next_offer_id;
		return 0;
	default:
		return 0;
	}
}

void broker_core_replayed(broker *b)
{
	broker_call *c, *tmp;
	HASH_ITER(hh, b->book.by_id, c, tmp)
	{
		broker_kpi_replayed(&b->kpi, c);
		if (c->answered_us != 0)
			rb_metric_observe(b->m.answer_delay,
			                  (double)(c->answered_us - c->arrived_us) / 1e6);
	}
	rb_metric_add(b->m.arrived, (double)b->kpi.arrived);
	rb_metric_add(b->m.answered, (double)b->kpi.answered);
	rb_metric_add(b->m.abandoned, (double)b->kpi.abandoned);
	rb_metric_add(b->m.overflow, (double)b->kpi.overflow);
	rb_metric_add(b->m.completed, (double)b->kpi.completed);
	// Everything below the next id may have been handed out before the restart. What was read
	// may still sit in the page cache only: nothing counts as durable until a reservation
	// written by this process is on disk (broker_core_start writes one).
	b->offer_id_reserved = b->next_offer_id;
	b->offer_id_durable = 0;
	broker_book_expire(&b->book, rb_now_us());
	broker_update_gauges(b);
}

// --- offer ids ----------------------------------------------------------------------------

typedef struct offer_ids_wait {
	broker *b;
	uint64_t mark;
} offer_ids_wait;

static void offer_ids_durable(int err, void *arg)
{
	offer_ids_wait *w = arg;
	if (err == 0 && w->mark > w->b->offer_id_durable)
		w->b->offer_id_durable = w->mark;
	free(w);
}

// Journals that ids below mark may be in use, and notes when that record is on disk. Returns
// 0 or the append's code (nothing reserved).
static int reserve_offer_ids(broker *b, uint64_t mark)
{
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID;
	e.next_offer_id = mark;
	int rc = broker_journal_append(b->journal, &e);
	if (rc != 0)
		return rc;
	b->offer_id_reserved = mark;
	// Without the note the ids are still reserved; their Offers just wait for the journal
	// until a later reservation is known durable.
	offer_ids_wait *w = malloc(sizeof(*w));
	if (w == NULL)
		return 0;
	w->b = b;
	w->mark = mark;
	if (broker_journal_after(b->journal, offer_ids_durable, w) != 0)
		free(w);
	return 0;
}

int broker_offer_id(broker *b, uint64_t *out)
{
	if (b->next_offer_id >= b->offer_id_reserved) {
		int rc = reserve_offer_ids(b, b->next_offer_id + BROKER_OFFER_ID_BLOCK);
		if (rc != 0)
			return rc;
	}
	*out = b->next_offer_id++;
	// An Offer leaves before its record is durable only when its id is covered by a durable
	// reservation (docs/delivery.md, "What waits for the disk"): the next block is reserved
	// while half of this one is left, so that it is on disk long before its first id is
	// needed. Should that append fail, the next id tries again.
	if (b->offer_id_reserved - b->next_offer_id <= BROKER_OFFER_ID_BLOCK / 2)
		(void)reserve_offer_ids(b, b->offer_id_reserved + BROKER_OFFER_ID_BLOCK);
	return 0;
}

// --- sending ------------------------------------------------------------------------------

static void gated_done(int err, void *arg)
{
	gated *g = arg;
	if (g->link == BROKER_LINK_PRESENCE)
		broker_presence_hold(g->b, g->agent_id, g->sync, -1);
	rb_bus *bus = NULL;
	if (err == 0)
		bus = g->link == BROKER_LINK_PRESENCE ? broker_presence_bus(g->b, g->msg)
		                                      : link_bus(g->b, g->link);
	if (bus != NULL)
		rb_bus_send(bus, g->msg);
	else
		nng_msg_free(g->msg);
	free(g);
}

static nng_msg *pack_envelope(broker *b, Ringbid__Envelope *env)
{
	env->token = b->svc.token;
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&env->base, RB_PB_MAX_SERVICE, &msg);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "cannot pack a link message: %s", rb_err_str(rc));
		return NULL;
	}
	return msg;
}

void broker_send(broker *b, broker_link link, Ringbid__Envelope *env)
{
	if (link_bus(b, link) == NULL)
		return;
	nng_msg *msg = pack_envelope(b, env);
	if (msg == NULL)
		return;
	if (link == BROKER_LINK_PRESENCE && broker_presence_route(b, env, msg, true) != 0)
		return;
	gated *g = malloc(sizeof(*g));
	if (g == NULL) {
		nng_msg_free(msg);
		return;
	}
	g->b = b;
	g->link = link;
	g->msg = msg;
	g->agent_id = 0;
	g->sync = false;
	if (link == BROKER_LINK_PRESENCE) {
		const char *call_id;
		(void)broker_presence_about(env, &g->agent_id, &call_id, &g->sync);
	}
	if (broker_journal_after(b->journal, gated_done, g) != 0) {
		nng_msg_free(msg);
		free(g);
		return;
	}
	if (link == BROKER_LINK_PRESENCE)
		broker_presence_hold(b, g->agent_id, g->sync, +1);
}

void broker_send_now(broker *b, broker_link link, Ringbid__Envelope *env)
{
	rb_bus *bus = link_bus(b, link);
	if (bus == NULL)
		return;
	nng_msg *msg = pack_envelope(b, env);
	if (msg == NULL)
		return;
	if (link == BROKER_LINK_PRESENCE) {
		if (broker_presence_route(b, env, msg, false) != 0)
			return;
		bus = broker_presence_bus(b, msg);
		if (bus == NULL) {
			nng_msg_free(msg);
			return;
		}
	}
	rb_bus_send(bus, msg);
}

void broker_send_enqueue(broker *b, const broker_call *c)
{
	Ringbid__Enqueue eq;
	broker_call_enqueue(c, &eq);
	// The auction keeps no program table: the share rides on every Enqueue, so a change
	// reaches the next call (and every re-enqueue) without a restart.
	const broker_program *prog = broker_programs_find(&b->programs, c->program);
	eq.explore_share = prog ? prog->explore_share : 0;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_ENQUEUE;
	env.enqueue = &eq;
	// Not held for the journal: the auction's state is soft (docs/delivery.md). Should the
	// broker crash before the change reaches the disk, the auction's copy of a call the
	// broker no longer knows is bounced by its first Match (Dequeue release_agent).
	broker_send_now(b, BROKER_LINK_AUCTION, &env);
}

void broker_send_dequeue(broker *b, const char *call_id, uint64_t release_agent)
{
	Ringbid__Dequeue dq = RINGBID__DEQUEUE__INIT;
	dq.call_id = (char *)call_id;
	dq.release_agent = release_agent;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_DEQUEUE;
	env.dequeue = &dq;
	// Sent at once like the Enqueue, so the two keep their order on the link.
	broker_send_now(b, BROKER_LINK_AUCTION, &env);
}

void broker_send_call_ended(broker *b, const char *call_id, const char *program, uint64_t agent_id)
{
	broker_limits lim;
	broker_programs_limits(&b->programs, program, &lim);
	Ringbid__CallEnded ce = RINGBID__CALL_ENDED__INIT;
	ce.call_id = (char *)call_id;
	ce.agent_id = agent_id;
	ce.wrap_up_s = lim.wrap_up_s;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_CALL_ENDED;
	env.call_ended = &ce;
	broker_send(b, BROKER_LINK_PRESENCE, &env);
}

void broker_send_call_connected(broker *b, const broker_call *c)
{
	Ringbid__CallConnected cc = RINGBID__CALL_CONNECTED__INIT;
	cc.call_id = (char *)c->id;
	cc.agent_id = c->agent_id;
	cc.offer_id = c->offer_id;
	cc.answered_us = c->answered_us;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_CALL_CONNECTED;
	env.call_connected = &cc;
	// Presence shows the agent the call connected on this word: it must never speak of a
	// connection a crash could take back.
	broker_send(b, BROKER_LINK_PRESENCE, &env);
}

static void send_offer(broker *b, const broker_call *c)
{
	broker_limits lim;
	broker_programs_limits(&b->programs, c->program, &lim);
	Ringbid__Offer of = RINGBID__OFFER__INIT;
	of.offer_id = c->offer_id;
	of.call_id = (char *)c->id;
	of.agent_id = c->agent_id;
	of.program = (char *)c->program;
	of.arrived_us = c->arrived_us;
	of.ring_timeout_ms = lim.ring_timeout_s * 1000u;
	of.wrap_up_s = lim.wrap_up_s;
	of.caller_masked = (char *)c->caller_masked;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_OFFER;
	env.offer = &of;
	// The Offer does not wait for its record's fdatasync: presence shows an accepted offer
	// connected only on the broker's CallConnected, which does (docs/delivery.md). It waits
	// all the same behind a held message about its agent or a held CallSync, so that
	// presence hears of each agent's calls in the order the broker decided (messages about
	// other agents it may overtake: their order is not this agent's), and when its id is not
	// yet covered by a durable reservation, so that no restart can hand the id out again.
	if (broker_presence_held(b, c->agent_id) > 0 || c->offer_id >= b->offer_id_durable)
		broker_send(b, BROKER_LINK_PRESENCE, &env);
	else
		broker_send_now(b, BROKER_LINK_PRESENCE, &env);
}

static void send_offer_cancel(broker *b, const broker_call *c, uint64_t agent_id, uint64_t offer_id)
{
	Ringbid__OfferCancel oc = RINGBID__OFFER_CANCEL__INIT;
	oc.offer_id = offer_id;
	oc.call_id = (char *)c->id;
	oc.agent_id = agent_id;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	env.body_case = RINGBID__ENVELOPE__BODY_OFFER_CANCEL;
	env.offer_cancel = &oc;
	broker_send(b, BROKER_LINK_PRESENCE, &env);
}

void broker_refused(broker *b, broker_link link)
{
	if (link >= 0 && link < BROKER_NLINKS)
		rb_metric_inc(b->m.refused[link]);
}

// --- timers -------------------------------------------------------------------------------

static void timer_closed(uv_handle_t *h)
{
	free(h->data);
}

static void disarm(broker_call *c)
{
	call_timer *t = c->timer;
	if (t == NULL)
		return;
	c->timer = NULL;
	t->c = NULL;
	uv_close((uv_handle_t *)&t->handle, timer_closed);
}

static void arm(broker *b, broker_call *c);

static void timer_cb(uv_timer_t *h)
{
	call_timer *t = h->data;
	broker *b = t->b;
	broker_call *c = t->c;
	if (c == NULL || b->stopping)
		return;
	broker_limits lim;
	broker_programs_limits(&b->programs, c->program, &lim);
	uint64_t at;
	broker_event_kind kind;
	if (broker_call_deadline(c, &lim, b->grace_ms, &at, &kind) != 0) {
		disarm(c);
		return;
	}
	// The program's settings may have changed since the timer was set.
	if (at > rb_mono_us() + 1000) {
		arm(b, c);
		return;
	}
	switch (kind) {
	case BROKER_EV_RING_EXPIRED:
		rb_logf(RB_LOG_WARN, c->id, c->agent_id,
		        "no result for offer %llu within ring timeout + %llu ms: agent lost",
		        (unsigned long long)c->offer_id, (unsigned long long)b->grace_ms);
		break;
	case BROKER_EV_MAX_WAIT:
		rb_logf(RB_LOG_INFO, c->id, c->agent_id,
		        "waited %u s, the program's maximum: overflow", lim.max_wait_s);
		break;
	case BROKER_EV_MAX_TALK:
		rb_logf(RB_LOG_WARN, c->id, c->agent_id,
		        "connected for %u s, the program's maximum: closed, CDR flagged for review",
		        lim.max_talk_s);
		break;
	default:
		break;
	}
	int rc = broker_change(b, c, kind, 0, 0, NULL);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, c->id, c->agent_id, "timer event refused: %s",
		        rb_err_str(rc));
		// Try again in a second rather than leave the call without a deadline.
		uv_timer_start(h, timer_cb, 1000, 0);
	}
}

static void arm(broker *b, broker_call *c)
{
	broker_limits lim;
	broker_programs_limits(&b->programs, c->program, &lim);
	uint64_t at;
	broker_event_kind kind;
	if (broker_call_deadline(c, &lim, b->grace_ms, &at, &kind) != 0) {
		disarm(c);
		return;
	}
	call_timer *t = c->timer;
	if (t == NULL) {
		t = calloc(1, sizeof(*t));
		if (t == NULL) {
			rb_logf(RB_LOG_ERROR, c->id, 0, "out of memory for the call's timer");
			return;
		}
		uv_timer_init(&b->svc.loop, &t->handle);
		t->handle.data = t;
		t->b = b;
		t->c = c;
		c->timer = t;
	}
	uint64_t now = rb_mono_us();
	uint64_t delay_ms = at > now ? (at - now + 999) / 1000 : 0;
	uv_timer_start(&t->handle, timer_cb, delay_ms, 0);
}

int broker_core_start(broker *b)
{
	int rc = broker_journal_start(b->journal, &b->svc.loop);
	if (rc != 0)
		return rc;
	b->started = true;
	// A block for the first offers, so that they need not wait for the journal once this
	// record is on disk (one sync after the loop starts). Failing here only holds them: the
	// first offer reserves again.
	uint64_t from =
	        b->offer_id_reserved > b->next_offer_id ? b->offer_id_reserved : b->next_offer_id;
	if (reserve_offer_ids(b, from + BROKER_OFFER_ID_BLOCK) != 0)
		rb_logf(RB_LOG_WARN, NULL, 0, "offer ids: no reservation written at start");
	uint64_t now = rb_mono_us();
	broker_call *c, *tmp;
	HASH_ITER(hh, b->book.by_id, c, tmp)
	{
		// Only presence knows how an offer made before the restart went: the agent may have
		// accepted it while the broker was down. Its instance's answer to the CallSync
		// (kept, ACCEPTED again, or AGENT_LOST) settles the offer as soon as it connects,
		// so the backstop, meant for an instance that never does, rings again from here;
		// ending the offer before that answer could hand a connected call to a second
		// agent.
		if (c->state == BROKER_CALL_OFFERED && c->offer_mono_us < now)
			c->offer_mono_us = now;
		if (c->state != BROKER_CALL_ENDED)
			arm(b, c);
	}
	return 0;
}

// --- changes ------------------------------------------------------------------------------

// One call record, into the current group or into a compaction snapshot.
static int write_call(broker_journal *j, const broker_call *c, bool snapshot)
{
	broker_arena a;
	broker_arena_init(&a);
	Ringbid__CallRecord rec;
	int rc = broker_call_record(c, &a, &rec);
	if (rc == 0) {
		Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
		e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CALL;
		e.call = &rec;
		rc = snapshot ? broker_journal_snapshot_add(j, &e) : broker_journal_append(j, &e);
	}
	broker_arena_fini(&a);
	return rc;
}

static int journal_call(broker *b, const broker_call *c)
{
	return write_call(b->journal, c, false);
}

// Compaction: the offer counter, every call still in the book (live ones, then the ended ones
// in the order they ended), and every CDR billing has not acknowledged.
int broker_core_snapshot(broker_journal *j, void *arg)
{
	broker *b = arg;
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID;
	e.next_offer_id =
	        b->offer_id_reserved > b->next_offer_id ? b->offer_id_reserved : b->next_offer_id;
	int rc = broker_journal_snapshot_add(j, &e);
	broker_call *c, *tmp;
	HASH_ITER(hh, b->book.by_id, c, tmp)
	{
		if (rc == 0 && c->state != BROKER_CALL_ENDED)
			rc = write_call(j, c, true);
	}
	TAILQ_FOREACH(c, &b->book.ended, ended_entry)
	{
		if (rc == 0)
			rc = write_call(j, c, true);
	}
	if (rc == 0)
		rc = broker_outbox_snapshot(&b->outbox, j);
	return rc;
}

typedef struct cdr_wait {
	broker *b;
	uint64_t seq;
} cdr_wait;

static void cdr_durable(int err, void *arg)
{
	cdr_wait *w = arg;
	if (err == 0)
		broker_outbox_durable(&w->b->outbox, w->seq);
	free(w);
}

static void write_cdr(broker *b, const broker_call *c)
{
	broker_arena a;
	broker_arena_init(&a);
	Ringbid__Cdr cdr;
	int rc = broker_call_cdr(c, &a, &cdr);
	uint64_t seq = 0;
	if (rc == 0) {
		Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
		e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CDR;
		e.cdr = &cdr;
		rc = broker_journal_append(b->journal, &e);
	}
	if (rc == 0)
		rc = broker_outbox_add(&b->outbox, &cdr, false, &seq);
	broker_arena_fini(&a);
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, c->id, c->agent_id, "CDR not queued: %s", rb_err_str(rc));
		return;
	}
	// Billing hears of a CDR only once the journal has it.
	cdr_wait *w = malloc(sizeof(*w));
	if (w == NULL)
		return;
	w->b = b;
	w->seq = seq;
	if (broker_journal_after(b->journal, cdr_durable, w) != 0)
		free(w);
}

int broker_change(broker *b, broker_call *c, broker_event_kind kind, uint64_t agent_id,
                  uint64_t offer_id, const broker_decision *d)
{
	broker_event ev = {
	        .kind = kind,
	        .agent_id = agent_id,
	        .offer_id = offer_id,
	        .decision = d,
	        .now_us = rb_now_us(),
	        .now_mono_us = rb_mono_us(),
	};
	// The offer is made at the instance the auction's Match named (noted just before): it is
	// journaled with the call, so that a restarted broker still knows where the call is.
	if (kind == BROKER_EV_OFFER && !broker_presence_agent_instance(agent_id, &ev.presence_id))
		ev.presence_id = 0;
	broker_call_state from = c->state;
	broker_effects fx;
	int rc = broker_call_apply(&b->book, c, &ev, &fx);
	if (rc != 0)
		return rc;
	rc = journal_call(b, c);
	if (rc != 0)
		rb_logf(RB_LOG_ERROR, c->id, c->agent_id, "call change not journaled: %s",
		        rb_err_str(rc));
	if (fx.flags & BROKER_FX_CDR)
		write_cdr(b, c);

	broker_kpi_transition(&b->kpi, from, c);
	if (from == BROKER_CALL_ARRIVED)
		rb_metric_inc(b->m.arrived);
	if (c->state == BROKER_CALL_CONNECTED) {
		rb_metric_inc(b->m.answered);
		rb_metric_observe(b->m.answer_delay,
		                  (double)(c->answered_us - c->arrived_us) / 1e6);
	}
	if (c->state == BROKER_CALL_ENDED) {
		rb_metric *m = c->disposition == BROKER_DISP_ABANDONED  ? b->m.abandoned
		               : c->disposition == BROKER_DISP_OVERFLOW ? b->m.overflow
		                                                        : b->m.completed;
		rb_metric_inc(m);
	}

	if (fx.flags & BROKER_FX_OFFER_CANCEL)
		send_offer_cancel(b, c, fx.agent_id, fx.offer_id);
	if (fx.flags & BROKER_FX_DEQUEUE)
		broker_send_dequeue(b, c->id, 0);
	if (fx.flags & BROKER_FX_ENQUEUE)
		broker_send_enqueue(b, c);
	if (fx.flags & BROKER_FX_OFFER)
		send_offer(b, c);
	if (fx.flags & BROKER_FX_CALL_ENDED)
		broker_send_call_ended(b, c->id, c->program, fx.agent_id);
	if (fx.flags & BROKER_FX_CALL_CONNECTED)
		broker_send_call_connected(b, c);

	if (c->state == BROKER_CALL_ENDED) {
		disarm(c);
		rb_logf(RB_LOG_INFO, c->id, c->agent_id, "call ended: %s%s, %u offers",
		        broker_disposition_name(c->disposition), c->review ? " (review)" : "",
		        c->offers);
	} else if (b->started) {
		arm(b, c);
	}
	broker_update_gauges(b);
	broker_api_changed(b, c);
	return 0;
}

// --- enqueue again, soon ------------------------------------------------------------------

#define BROKER_REQUEUE_SOON_MS  50
#define BROKER_REQUEUE_SOON_MAX 65536 // beyond this the janitor's round takes the rest

static void requeue_due(uv_timer_t *h)
{
	broker *b = h->data;
	size_t n = b->nrequeue;
	b->nrequeue = 0;
	for (size_t i = 0; i < n && !b->stopping; i++) {
		broker_call *c = broker_book_find(&b->book, b->requeue[i]);
		if (c != NULL && c->state == BROKER_CALL_QUEUED)
			broker_send_enqueue(b, c);
	}
}

void broker_requeue_soon(broker *b, const broker_call *c)
{
	if (b->stopping)
		return;
	if (!b->requeue_timer_init) {
		uv_timer_init(&b->svc.loop, &b->requeue_timer);
		b->requeue_timer.data = b;
		b->requeue_timer_init = true;
	}
	if (b->nrequeue == b->caprequeue) {
		size_t cap = b->caprequeue ? b->caprequeue * 2 : 64;
		void *grown = cap <= BROKER_REQUEUE_SOON_MAX
		                      ? realloc(b->requeue, cap * sizeof(*b->requeue))
		                      : NULL;
		if (grown == NULL)
			return; // the janitor enqueues it within a second
		b->requeue = grown;
		b->caprequeue = cap;
	}
	memcpy(b->requeue[b->nrequeue++], c->id, sizeof(c->id));
	if (!uv_is_active((uv_handle_t *)&b->requeue_timer))
		uv_timer_start(&b->requeue_timer, requeue_due, BROKER_REQUEUE_SOON_MS, 0);
}

// --- status, readiness, janitor -----------------------------------------------------------

void broker_kpi_snapshot(broker *b, broker_kpi_now *now)
{
	memset(now, 0, sizeof(*now));
	now->now_us = rb_now_us();
	broker_call *oldest = broker_book_waiting_first(&b->book);
	now->oldest_waiting_arrived_us = oldest ? oldest->arrived_us : 0;
	now->waiting = b->book.count[BROKER_CALL_QUEUED] + b->book.count[BROKER_CALL_OFFERED];
	now->offering = b->book.count[BROKER_CALL_OFFERED];
	now->connected = b->book.count[BROKER_CALL_CONNECTED];
	now->outbox = (uint32_t)broker_outbox_count(&b->outbox);
	now->have_agents = b->have_agents;
	memcpy(now->agents, b->agents, sizeof(now->agents));
}

void broker_update_gauges(broker *b)
{
	uint32_t queued = b->book.count[BROKER_CALL_QUEUED];
	uint32_t offered = b->book.count[BROKER_CALL_OFFERED];
	rb_metric_set(b->m.waiting, (double)(queued + offered));
	rb_metric_set(b->m.offering, (double)offered);
	rb_metric_set(b->m.connected, (double)b->book.count[BROKER_CALL_CONNECTED]);
	rb_metric_set(b->m.outbox, (double)broker_outbox_count(&b->outbox));
	uint64_t oldest = broker_outbox_oldest_us(&b->outbox), now = rb_now_us();
	rb_metric_set(b->m.cdr_lag, oldest != 0 && now > oldest ? (double)(now - oldest) / 1e6 : 0);
	if (b->journal != NULL) {
		rb_metric_set(b->m.journal_bytes, (double)broker_journal_size(b->journal));
		rb_metric_set(b->m.journal_writable, broker_journal_ok(b->journal) ? 1 : 0);
	}
}

void broker_refresh_ready(broker *b)
{
	bool ready = !b->stopping && b->journal != NULL && broker_journal_ok(b->journal) &&
	             broker_programs_ready(&b->programs) && b->api != NULL;
	if (b->svc.http != NULL)
		rb_http_set_ready(b->svc.http, ready);
}

void broker_janitor(broker *b)
{
	uint64_t now_us = rb_now_us();
	broker_book_expire(&b->book, now_us);
	// Lost Enqueue (or lost Match) repair: the auction takes a repeat as a no-op.
	if (b->auction != NULL && rb_bus_peers(b->auction) > 0) {
		uint64_t now = rb_mono_us();
		for (broker_call *c = broker_book_waiting_first(&b->book); c != NULL;
		     c = broker_book_waiting_next(&b->book, c)) {
			if (c->state == BROKER_CALL_QUEUED &&
			    now - c->queued_mono_us >= BROKER_REQUEUE_AFTER_US)
				broker_send_enqueue(b, c);
		}
	}
	broker_update_gauges(b);
	broker_refresh_ready(b);
}

// --- shutdown -----------------------------------------------------------------------------

static void stop_timer_closed(uv_handle_t *h)
{
	(void)h;
}

void broker_close(broker *b)
{
	if (b->closed)
		return;
	b->closed = true;
	b->stopping = true;
	broker_api_flush_polls(b);
	broker_call *c, *tmp;
	HASH_ITER(hh, b->book.by_id, c, tmp)
	{
		disarm(c);
	}
	broker_outbox_stop(&b->outbox);
	// Before the call API closes, so that an outcome request still waiting gets its answer.
	broker_outcomes_fini(&b->outcomes);
	rb_bus_free(b->api);
	b->api = NULL;
	rb_bus_free(b->auction);
	b->auction = NULL;
	for (uint32_t i = 0; i < b->npresence; i++) {
		rb_bus_free(b->presence[i]);
		b->presence[i] = NULL;
	}
	b->npresence = 0;
	rb_bus_free(b->billing);
	b->billing = NULL;
	broker_programs_fini(&b->programs);
	broker_journal_free(b->journal);
	b->journal = NULL;
	if (b->stop_timer_init) {
		uv_close((uv_handle_t *)&b->stop_timer, stop_timer_closed);
		b->stop_timer_init = false;
	}
	if (b->requeue_timer_init) {
		uv_close((uv_handle_t *)&b->requeue_timer, stop_timer_closed);
		b->requeue_timer_init = false;
	}
	rb_svc_close_handles(&b->svc);
}

static void linger_done(uv_timer_t *t)
{
	broker_close(t->data);
}

// The messages released last (journal-gated sends, outcome answers) are queued on their buses;
// give them a moment to leave before the sockets close.
static void linger(broker *b)
{
	if (b->stop_timer_init)
		uv_timer_start(&b->stop_timer, linger_done, 200, 0);
	else
		broker_close(b);
}

static void stop_deadline(uv_timer_t *t)
{
	broker *b = t->data;
	if (b->journal != NULL && !broker_journal_idle(b->journal))
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "stopping: the journal did not drain within %d ms; unsynced changes are "
		        "lost",
		        BROKER_DRAIN_MS);
	if (broker_outcomes_unanswered(&b->outcomes) > 0) {
		broker_outcomes_abort(&b->outcomes, RB_EBUSY, "the broker is stopping; send again");
		linger(b);
		return;
	}
	broker_close(b);
}

// Stopping ends once the journal has everything and billing has answered every outcome
// request (or the deadline passed).
static void stop_if_done(broker *b)
{
	if (b->closed || !b->drained || broker_outcomes_unanswered(&b->outcomes) > 0)
		return;
	linger(b);
}

static void drained(int err, void *arg)
{
	broker *b = arg;
	if (err != 0 || b->closed)
		return;
	rb_logf(RB_LOG_INFO, NULL, 0, "journal drained");
	b->drained = true;
	if (broker_outcomes_unanswered(&b->outcomes) > 0)
		rb_logf(RB_LOG_INFO, NULL, 0,
		        "stopping: waiting for billing to answer %d outcome "
		        "requests",
		        broker_outcomes_unanswered(&b->outcomes));
	stop_if_done(b);
}

static void outcomes_idle(broker_outcomes *o, void *arg)
{
	(void)o;
	broker *b = arg;
	if (b->stopping)
		stop_if_done(b);
}

void broker_stop(broker *b)
{
	if (b->stopping)
		return;
	b->stopping = true;
	broker_refresh_ready(b);
	broker_api_flush_polls(b);
	broker_outcomes_on_idle(&b->outcomes, outcomes_idle, b);
	if (b->journal == NULL || !b->started) {
		broker_close(b);
		return;
	}
	if (uv_timer_init(&b->svc.loop, &b->stop_timer) == 0) {
		b->stop_timer.data = b;
		b->stop_timer_init = true;
		uv_timer_start(&b->stop_timer, stop_deadline, BROKER_DRAIN_MS, 0);
	}
	if (broker_journal_after(b->journal, drained, b) != 0)
		broker_close(b);
}

void broker_fini(broker *b)
{
	struct broker_held *h, *htmp;
	HASH_ITER(hh, b->held, h, htmp)
	{
		HASH_DEL(b->held, h);
		free(h);
	}
	free(b->requeue);
	b->requeue = NULL;
	b->nrequeue = b->caprequeue = 0;
	broker_presence_fini();
	broker_book_fini(&b->book);
	broker_outbox_fini(&b->outbox);
}
