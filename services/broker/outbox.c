// The CDR outbox and its sender: one batch in flight, resent until billing acknowledges it.
#include "outbox.h"

#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"

void broker_outbox_init(broker_outbox *o)
{
	memset(o, 0, sizeof(*o));
	TAILQ_INIT(&o->queue);
}

void broker_outbox_on_change(broker_outbox *o, broker_outbox_fn fn, void *arg)
{
	o->changed = fn;
	o->changed_arg = arg;
}

void broker_outbox_on_refused(broker_outbox *o, broker_outbox_fn fn, void *arg)
{
	o->refused = fn;
	o->refused_arg = arg;
}

static void changed(broker_outbox *o)
{
	if (o->changed)
		o->changed(o, o->changed_arg);
}

static void cdr_free(broker_cdr *c)
{
	free(c->offer_log);
	free(c->offer_ptrs);
	free(c);
}

static int copy_offer_log(broker_cdr *c, const Ringbid__Cdr *cdr)
{
	size_t first = cdr->n_offer_log > BROKER_OFFER_LOG_MAX
	                       ? cdr->n_offer_log - BROKER_OFFER_LOG_MAX
	                       : 0;
	size_t n = cdr->n_offer_log - first;
	if (n == 0)
		return 0;
	c->offer_log = calloc(n, sizeof(*c->offer_log));
	c->offer_ptrs = calloc(n, sizeof(*c->offer_ptrs));
	if (c->offer_log == NULL || c->offer_ptrs == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const Ringbid__CdrOffer *in = cdr->offer_log[first + i];
		Ringbid__CdrOffer *out = &c->offer_log[i];
		ringbid__cdr_offer__init(out);
		out->agent_id = in->agent_id;
		out->offered_us = in->offered_us;
		out->result = in->result;
		c->offer_ptrs[i] = out;
	}
	c->noffer_log = n;
	return 0;
}

static bool offer_log_usable(const Ringbid__Cdr *cdr)
{
	for (size_t i = 0; i < cdr->n_offer_log; i++) {
		const Ringbid__CdrOffer *of = cdr->offer_log[i];
		if (of == NULL || of->agent_id == 0 ||
		    (int)of->result < RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED ||
		    (int)of->result > RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED)
			return false;
	}
	return true;
}

int broker_outbox_add(broker_outbox *o, const Ringbid__Cdr *cdr, bool durable, uint64_t *seq_out)
{
	if (cdr->cdr_id == NULL || !rb_valid_id(cdr->cdr_id, BROKER_ID_MAX) ||
	    cdr->program == NULL || !rb_valid_id(cdr->program, BROKER_ID_MAX) ||
	    !offer_log_usable(cdr))
		return RB_EINVAL;
	if (broker_outbox_find(o, cdr->cdr_id) != NULL)
		return RB_EEXIST;
	broker_cdr *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return RB_ENOMEM;
	if (copy_offer_log(c, cdr) != 0) {
		cdr_free(c);
		return RB_ENOMEM;
	}
	strcpy(c->id, cdr->cdr_id);
	strcpy(c->program, cdr->program);
	c->agent_id = cdr->agent_id;
	c->arrived_us = cdr->arrived_us;
	c->offered_us = cdr->offered_us;
	c->answered_us = cdr->answered_us;
	c->ended_us = cdr->ended_us;
	c->talk_s = cdr->talk_s;
	c->disposition = cdr->disposition;
	c->sale = cdr->sale;
	c->resolved = cdr->resolved;
	c->review = cdr->review;
	c->exploratory = cdr->exploratory;
	c->offers = cdr->offers;
	c->seq = ++o->next_seq;
	c->added_ms = o->loop != NULL ? uv_now(o->loop) : 0;
	if (durable && o->durable_seq < c->seq)
		o->durable_seq = c->seq;
	HASH_ADD_STR(o->by_id, id, c);
	TAILQ_INSERT_TAIL(&o->queue, c, link);
	o->count++;
	if (seq_out)
		*seq_out = c->seq;
	changed(o);
	return 0;
}

void broker_outbox_durable(broker_outbox *o, uint64_t seq)
{
	if (seq > o->durable_seq)
		o->durable_seq = seq;
	broker_outbox_kick(o);
}

const broker_cdr *broker_outbox_find(const broker_outbox *o, const char *id)
{
	broker_cdr *c = NULL;
	HASH_FIND_STR(o->by_id, id, c);
	return c;
}

int broker_outbox_ack(broker_outbox *o, const char *id)
{
	broker_cdr *c = NULL;
	HASH_FIND_STR(o->by_id, id, c);
	if (c == NULL)
		return RB_ENOTFOUND;
	HASH_DEL(o->by_id, c);
	TAILQ_REMOVE(&o->queue, c, link);
	o->count--;
	cdr_free(c);
	changed(o);
	return 0;
}

uint64_t broker_outbox_oldest_us(const broker_outbox *o)
{
	// The queue is in order of arrival, which is the order calls ended (give or take a
	// replay): its head is the CDR billing has waited for longest.
	const broker_cdr *c = TAILQ_FIRST(&o->queue);
	return c != NULL ? c->ended_us : 0;
}

size_t broker_outbox_count(const broker_outbox *o)
{
	return o->count;
}

void broker_cdr_to_pb(const broker_cdr *c, Ringbid__Cdr *out)
{
	ringbid__cdr__init(out);
	out->cdr_id = (char *)c->id;
	out->call_id = (char *)c->id;
	out->program = (char *)c->program;
	out->agent_id = c->agent_id;
	out->arrived_us = c->arrived_us;
	out->offered_us = c->offered_us;
	out->answered_us = c->answered_us;
	out->ended_us = c->ended_us;
	out->talk_s = c->talk_s;
	out->disposition = (Ringbid__Disposition)c->disposition;
	out->sale = c->sale;
	out->resolved = c->resolved;
	out->review = c->review;
	out->offers = c->offers;
	out->exploratory = c->exploratory;
	out->n_offer_log = c->noffer_log;
	out->offer_log = c->offer_ptrs;
}

int broker_outbox_snapshot(const broker_outbox *o, broker_journal *j)
{
	const broker_cdr *c;
	TAILQ_FOREACH(c, &o->queue, link)
	{
		Ringbid__Cdr cdr;
		broker_cdr_to_pb(c, &cdr);
		Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
		e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CDR;
		e.cdr = &cdr;
		int rc = broker_journal_snapshot_add(j, &e);
		if (rc != 0)
			return rc;
	}
	return 0;
}

static void retry_cb(uv_timer_t *t)
{
	broker_outbox_kick(t->data);
}

static void retry_later(broker_outbox *o, const char *why)
{
	uint64_t now = uv_now(o->loop);
	if (!o->failing || now - o->last_warn_ms >= BROKER_CDR_WARN_MS) {
		rb_logf(RB_LOG_WARN, NULL, 0, "billing: %s; %zu CDRs wait in the outbox", why,
		        o->count);
		o->last_warn_ms = now;
	}
	o->failing = true;
	uv_timer_start(&o->retry, retry_cb, BROKER_CDR_RETRY_MS, 0);
}

static void journal_ack(broker_outbox *o, const char *id)
{
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED;
	e.cdr_acked = (char *)id;
	// Without this record the CDR is sent again after a restart; billing keeps it once.
	int rc = broker_journal_append(o->journal, &e);
	if (rc != 0)
		rb_logf(RB_LOG_WARN, id, 0, "cannot journal the acknowledgement: %s",
		        rb_err_str(rc));
}

static size_t take_acks(broker_outbox *o, char **ids, size_t n, const char *what)
{
	size_t taken = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] == NULL || !rb_valid_id(ids[i], BROKER_ID_MAX))
			continue;
		if (what != NULL)
			rb_logf(RB_LOG_WARN, ids[i], 0, "billing %s this CDR", what);
		if (broker_outbox_ack(o, ids[i]) == 0) {
			journal_ack(o, ids[i]);
			taken++;
		}
	}
	return taken;
}

static void reply_cb(rb_bus *bus, int err, nng_msg *reply, void *arg)
{
	broker_outbox *o = arg;
	(void)bus;
	o->inflight = false;
	if (o->closing) {
		if (reply)
			nng_msg_free(reply);
		return;
	}
	if (err != 0) {
		retry_later(o, rb_err_str(err));
		return;
	}
	Ringbid__CdrAck *ack = NULL;
	int rc = rb_pb_unpack_msg(&ringbid__cdr_ack__descriptor, reply, RB_PB_MAX_SERVICE,
	                          (ProtobufCMessage **)&ack);
	nng_msg_free(reply);
	if (rc != 0) {
		if (o->refused)
			o->refused(o, o->refused_arg);
		retry_later(o, "unreadable acknowledgement");
		return;
	}
	if (ack->error != NULL) {
		char why[160];
		snprintf(why, sizeof(why), "refused the batch (%s: %.100s)",
		         rb_err_name(ack->error->code),
		         ack->error->message && rb_valid_text(ack->error->message, 100)
		                 ? ack->error->message
		                 : "");
		rb_pb_free(&ack->base);
		retry_later(o, why);
		return;
	}
	size_t taken = take_acks(o, ack->stored, ack->n_stored, NULL);
	taken += take_acks(o, ack->quarantined, ack->n_quarantined,
	                   "quarantined (same id, different content)");
	taken += take_acks(o, ack->refused, ack->n_refused, "refused");
	rb_pb_free(&ack->base);
	o->acked_total += taken;
	if (taken == 0) {
		retry_later(o, "acknowledged none of the batch");
		return;
	}
	if (o->failing) {
		rb_logf(RB_LOG_INFO, NULL, 0, "billing: taking CDRs again; %zu wait", o->count);
		o->failing = false;
	}
	broker_outbox_kick(o);
}

// A whole batch is sendable (the queue is in order of seq).
static bool full_batch(const broker_outbox *o)
{
	if (o->count < BROKER_CDR_BATCH)
		return false;
	size_t n = 0;
	const broker_cdr *c;
	TAILQ_FOREACH(c, &o->queue, link)
	{
		if (c->seq > o->durable_seq)
			return false;
		if (++n == BROKER_CDR_BATCH)
			return true;
	}
	return false;
}

void broker_outbox_kick(broker_outbox *o)
{
	if (o->bus == NULL || o->inflight || o->closing)
		return;
	if (uv_is_active((uv_handle_t *)&o->retry))
		return;
	// The head of the queue is the oldest CDR (replayed ones count as old). Checked before
	// anything is built: the outbox is kicked after every journal flush.
	const broker_cdr *c = TAILQ_FIRST(&o->queue);
	if (c == NULL || c->seq > o->durable_seq)
		return;
	uint64_t now = uv_now(o->loop);
	if (c->added_ms + BROKER_CDR_LINGER_MS > now && !full_batch(o)) {
		if (!uv_is_active((uv_handle_t *)&o->linger))
			uv_timer_start(&o->linger, retry_cb, c->added_ms + BROKER_CDR_LINGER_MS - now,
			               0);
		return;
	}
	uv_timer_stop(&o->linger);
	Ringbid__Cdr cdrs[BROKER_CDR_BATCH];
	Ringbid__Cdr *ptrs[BROKER_CDR_BATCH];
	size_t n = 0;
	TAILQ_FOREACH(c, &o->queue, link)
	{
		if (n == BROKER_CDR_BATCH || c->seq > o->durable_seq)
			break;
		broker_cdr_to_pb(c, &cdrs[n]);
		ptrs[n] = &cdrs[n];
		n++;
	}
	Ringbid__CdrBatch batch = RINGBID__CDR_BATCH__INIT;
	batch.token = (char *)o->token;
	batch.n_cdrs = n;
	batch.cdrs = ptrs;
	nng_msg *msg = NULL;
	int rc = rb_pb_pack(&batch.base, RB_PB_MAX_SERVICE, &msg);
	if (rc != 0) {
		retry_later(o, rb_err_str(rc));
		return;
	}
	o->inflight = true;
	rc = rb_bus_request(o->bus, msg, BROKER_CDR_TIMEOUT_MS, reply_cb, o);
	if (rc != 0) {
		o->inflight = false;
		retry_later(o, rb_err_str(rc));
	}
}

int broker_outbox_start(broker_outbox *o, uv_loop_t *loop, rb_bus *bus, broker_journal *journal,
                        const char *token)
{
	o->loop = loop;
	o->journal = journal;
	o->token = token;
	if (uv_timer_init(loop, &o->retry) != 0)
		return RB_EIO;
	if (uv_timer_init(loop, &o->linger) != 0) {
		uv_close((uv_handle_t *)&o->retry, NULL);
		return RB_EIO;
	}
	o->retry.data = o;
	o->linger.data = o;
	o->timer_init = true;
	o->bus = bus;
	broker_outbox_kick(o);
	return 0;
}

void broker_outbox_stop(broker_outbox *o)
{
	o->closing = true;
	if (o->timer_init) {
		uv_close((uv_handle_t *)&o->retry, NULL);
		uv_close((uv_handle_t *)&o->linger, NULL);
		o->timer_init = false;
	}
}

void broker_outbox_fini(broker_outbox *o)
{
	broker_cdr *c, *tmp;
	HASH_ITER(hh, o->by_id, c, tmp)
	{
		HASH_DEL(o->by_id, c);
		cdr_free(c);
	}
	TAILQ_INIT(&o->queue);
	o->count = 0;
}
