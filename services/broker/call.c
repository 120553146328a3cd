// The call state machine and the book of calls: pure logic, no I/O, no clocks of its own.
#include "call.h"
#include "rb_names.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_pb.h"

static int wait_cmp(const broker_call *a, const broker_call *b)
{
	if (a->arrived_us != b->arrived_us)
		return a->arrived_us < b->arrived_us ? -1 : 1;
	return strcmp(a->id, b->id);
}

RB_GENERATE_STATIC(broker_wait_tree, broker_call, wait_entry, wait_cmp)

static bool state_waiting(broker_call_state s)
{
	return s == BROKER_CALL_QUEUED || s == BROKER_CALL_OFFERED;
}

static bool state_at_agent(broker_call_state s)
{
	return s == BROKER_CALL_OFFERED || s == BROKER_CALL_CONNECTED;
}

void broker_arena_init(broker_arena *a)
{
	memset(a, 0, sizeof(*a));
}

void *broker_arena_alloc(broker_arena *a, size_t size)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;
		void **blocks = realloc(a->blocks, cap * sizeof(*blocks));
		if (blocks == NULL)
			return NULL;
		a->blocks = blocks;
		a->cap = cap;
	}
	void *p = calloc(1, size ? size : 1);
	if (p == NULL)
		return NULL;
	a->blocks[a->n++] = p;
	return p;
}

void broker_arena_fini(broker_arena *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->blocks[i]);
	free(a->blocks);
	memset(a, 0, sizeof(*a));
}

void broker_skills_free(char **skills, size_t n)
{
	if (skills == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(skills[i]);
	free(skills);
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int broker_skills_merge(const char *const *a, size_t na, const char *const *b, size_t nb,
                        char ***out, size_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (na + nb == 0)
		return 0;
	const char **all = malloc((na + nb) * sizeof(*all));
	if (all == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < na; i++)
		all[i] = a[i];
	for (size_t i = 0; i < nb; i++)
		all[na + i] = b[i];
	qsort(all, na + nb, sizeof(*all), cmp_str_ptr);
	size_t n = 0;
	for (size_t i = 0; i < na + nb; i++)
		if (n == 0 || strcmp(all[n - 1], all[i]) != 0)
			all[n++] = all[i];
	if (n > BROKER_SKILLS_MAX) {
		free(all);
		return RB_ETOOBIG;
	}
	char **skills = calloc(n, sizeof(*skills));
	if (skills == NULL) {
		free(all);
		return RB_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		skills[i] = strdup(all[i]);
		if (skills[i] == NULL) {
			broker_skills_free(skills, i);
			free(all);
			return RB_ENOMEM;
		}
	}
	free(all);
	*out = skills;
	*nout = n;
	return 0;
}

void broker_book_init(broker_book *book, size_t ended_max, uint64_t ended_keep_us)
{
	memset(book, 0, sizeof(*book));
	RB_INIT(&book->waiting);
	TAILQ_INIT(&book->ended);
	book->ended_max = ended_max ? ended_max : 1;
	book->ended_keep_us = ended_keep_us;
}

static void call_free(broker_call *c)
{
	broker_skills_free(c->skills, c->nskills);
	free(c->excluded);
	free(c->decisions);
	free(c->offer_log);
	free(c);
}

void broker_book_fini(broker_book *book)
{
	broker_call *c, *tmp;
	HASH_CLEAR(hh_agent, book->by_agent);
	HASH_ITER(hh, book->by_id, c, tmp)
	{
		HASH_DELETE(hh, book->by_id, c);
		call_free(c);
	}
	memset(book, 0, sizeof(*book));
}

void broker_book_on_evict(broker_book *book, broker_evict_fn fn, void *arg)
{
	book->evict = fn;
	book->evict_arg = arg;
}

broker_call *broker_book_find(const broker_book *book, const char *id)
{
	broker_call *c = NULL;
	HASH_FIND(hh, book->by_id, id, strlen(id), c);
	return c;
}

broker_call *broker_book_agent_call(const broker_book *book, uint64_t agent_id)
{
	broker_call *c = NULL;
	if (agent_id == 0)
		return NULL;
	HASH_FIND(hh_agent, book->by_agent, &agent_id, sizeof(agent_id), c);
	return c;
}

broker_call *broker_book_waiting_first(broker_book *book)
{
	return RB_MIN(broker_wait_tree, &book->waiting);
}

broker_call *broker_book_waiting_next(broker_book *book, broker_call *c)
{
	(void)book; // the tree's successor needs only the node
	return RB_NEXT(broker_wait_tree, &book->waiting, c);
}

// Ended calls are kept in order of their end; replayed ones may come slightly out of order,
// so insertion walks back from the tail (one step in the usual case).
static void ended_insert(broker_book *book, broker_call *c)
{
	broker_call *after = TAILQ_LAST(&book->ended, broker_ended_list);
	while (after != NULL && after->ended_us > c->ended_us)
		after = TAILQ_PREV(after, broker_ended_list, ended_entry);
	if (after == NULL)
		TAILQ_INSERT_HEAD(&book->ended, c, ended_entry);
	else
		TAILQ_INSERT_AFTER(&book->ended, after, c, ended_entry);
}

static void index_enter(broker_book *book, broker_call *c)
{
	book->count[c->state]++;
	if (state_waiting(c->state))
		RB_INSERT(broker_wait_tree, &book->waiting, c);
	if (state_at_agent(c->state) && c->agent_id != 0) {
		HASH_ADD(hh_agent, book->by_agent, agent_id, sizeof(c->agent_id), c);
		c->in_agent_index = true;
	}
	if (c->state == BROKER_CALL_ENDED)
		ended_insert(book, c);
}

static void index_leave(broker_book *book, broker_call *c)
{
	book->count[c->state]--;
	if (state_waiting(c->state))
		RB_REMOVE(broker_wait_tree, &book->waiting, c);
	if (c->in_agent_index) {
		HASH_DELETE(hh_agent, book->by_agent, c);
		c->in_agent_index = false;
	}
	if (c->state == BROKER_CALL_ENDED)
		TAILQ_REMOVE(&book->ended, c, ended_entry);
}

static void evict(broker_book *book, broker_call *c)
{
	if (book->evict)
		book->evict(c, book->evict_arg);
	index_leave(book, c);
	HASH_DELETE(hh, book->by_id, c);
	call_free(c);
}

// Keeps the ended list within its bound, never dropping keep (the call just changed).
static void ended_trim(broker_book *book, const broker_call *keep)
{
	while (book->count[BROKER_CALL_ENDED] > book->ended_max) {
		broker_call *old = TAILQ_FIRST(&book->ended);
		if (old == NULL || old == keep)
			break;
		evict(book, old);
	}
}

void broker_book_expire(broker_book *book, uint64_t now_us)
{
	broker_call *c;
	while ((c = TAILQ_FIRST(&book->ended)) != NULL) {
		if (c->ended_us + book->ended_keep_us > now_us &&
		    book->count[BROKER_CALL_ENDED] <= book->ended_max)
			break;
		evict(book, c);
	}
}

static int copy_id(char *dst, const char *src)
{
	if (src == NULL || !rb_valid_id(src, BROKER_ID_MAX))
		return RB_EINVAL;
	strcpy(dst, src);
	return 0;
}

static int copy_skills(broker_call *c, const char *const *skills, size_t n)
{
	if (n > BROKER_SKILLS_MAX)
		return RB_ETOOBIG;
	c->skills = n ? calloc(n, sizeof(*c->skills)) : NULL;
	if (n && c->skills == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (!rb_valid_id(skills[i], BROKER_ID_MAX))
			return RB_EINVAL;
		c->skills[i] = strdup(skills[i]);
		if (c->skills[i] == NULL)
			return RB_ENOMEM;
		c->nskills = (uint32_t)(i + 1);
	}
	return 0;
}

static void copy_masked(char *dst, const char *src)
{
	if (src == NULL)
		src = "";
	size_t n = strnlen(src, BROKER_MASKED_MAX);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

int broker_book_add(broker_book *book, const broker_call_new *in, broker_call **out)
{
	if (in->id == NULL || !rb_valid_id(in->id, BROKER_ID_MAX))
		return RB_EINVAL;
	if (broker_book_find(book, in->id) != NULL)
		return RB_EEXIST;
	broker_call *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return RB_ENOMEM;
	int rc = copy_id(c->id, in->id);
	if (rc == 0)
		rc = copy_id(c->program, in->program);
	if (rc == 0)
		rc = copy_skills(c, in->skills, in->nskills);
	if (rc != 0) {
		call_free(c);
		return rc;
	}
	copy_masked(c->caller_masked, in->caller_masked);
	c->priority = in->priority;
	c->state = BROKER_CALL_ARRIVED;
	c->arrived_us = in->now_us;
	c->arrived_mono_us = in->now_mono_us;
	c->queued_mono_us = in->now_mono_us;
	c->version = 1;
	HASH_ADD(hh, book->by_id, id, strlen(c->id), c);
	index_enter(book, c);
	*out = c;
	return 0;
}

bool broker_call_excluded(const broker_call *c, uint64_t agent_id)
{
	for (uint32_t i = 0; i < c->nexcluded; i++)
		if (c->excluded[i] == agent_id)
			return true;
	return false;
}

bool broker_call_presence(const broker_call *c, uint64_t agent_id, uint32_t *presence_id)
{
	// Every offer adds its decision, naming the agent: the newest names the newest offer's.
	if (agent_id == 0 || c->ndecisions == 0 ||
	    c->decisions[c->ndecisions - 1].agent_id != agent_id)
		return false;
	*presence_id = c->presence_id;
	return true;
}

// A call keeps at most BROKER_EXCLUDED_MAX exclusions; past that the oldest gives way, so a
// very patient caller may meet an early decliner again rather than the call growing forever.
static int exclude(broker_call *c, uint64_t agent_id)
{
	if (agent_id == 0 || broker_call_excluded(c, agent_id))
		return 0;
	if (c->nexcluded == BROKER_EXCLUDED_MAX) {
		memmove(c->excluded, c->excluded + 1, (c->nexcluded - 1) * sizeof(*c->excluded));
		c->nexcluded--;
	}
	if (c->nexcluded == c->capexcluded) {
		uint32_t cap = c->capexcluded ? c->capexcluded * 2 : 4;
		if (cap > BROKER_EXCLUDED_MAX)
			cap = BROKER_EXCLUDED_MAX;
		uint64_t *ex = realloc(c->excluded, cap * sizeof(*ex));
		if (ex == NULL)
			return RB_ENOMEM;
		c->excluded = ex;
		c->capexcluded = cap;
	}
	c->excluded[c->nexcluded++] = agent_id;
	return 0;
}

static int add_decision(broker_call *c, const broker_decision *d)
{
	if (c->decisions == NULL) {
		c->decisions = calloc(BROKER_DECISIONS_MAX, sizeof(*c->decisions));
		if (c->decisions == NULL)
			return RB_ENOMEM;
	}
	if (c->ndecisions == BROKER_DECISIONS_MAX) {
		memmove(c->decisions, c->decisions + 1,
		        (c->ndecisions - 1) * sizeof(*c->decisions));
		c->ndecisions--;
	}
	c->decisions[c->ndecisions++] = *d;
	return 0;
}

// Makes room for the next entry of the offer log, so that the append after it cannot fail.
static int offer_log_reserve(broker_call *c)
{
	if (c->noffer_log < c->capoffer_log || c->capoffer_log == BROKER_OFFER_LOG_MAX)
		return 0;
	// Most calls see one or two offers: grow by doubling rather than hold the bound in each.
	uint32_t cap = c->capoffer_log ? c->capoffer_log * 2 : 2;
	if (cap > BROKER_OFFER_LOG_MAX)
		cap = BROKER_OFFER_LOG_MAX;
	broker_offer_entry *log = realloc(c->offer_log, cap * sizeof(*log));
	if (log == NULL)
		return RB_ENOMEM;
	c->offer_log = log;
	c->capoffer_log = cap;
	return 0;
}

static void offer_log_append(broker_call *c, uint64_t agent_id, uint64_t offered_us,
                             Ringbid__OfferResultCode result)
{
	// At the bound the oldest entry gives way: a call offered 64 times has told the answer
	// rate enough, and its record must stay bounded.
	if (c->noffer_log == BROKER_OFFER_LOG_MAX) {
		memmove(c->offer_log, c->offer_log + 1,
		        (c->noffer_log - 1) * sizeof(*c->offer_log));
		c->noffer_log--;
	}
	broker_offer_entry *e = &c->offer_log[c->noffer_log++];
	e->agent_id = agent_id;
	e->offered_us = offered_us;
	e->result = result;
}

// How an event ends the current offer, for the offer log. False when it does not end an offer,
// or ends it by no doing of the agent's: an offer withdrawn because the caller hung up or the
// call overflowed says nothing about the agent's answer rate, so it is left out of the log.
static bool offer_result(broker_event_kind kind, Ringbid__OfferResultCode *out)
{
	switch (kind) {
	case BROKER_EV_CONNECT:
		*out = RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED;
		return true;
	case BROKER_EV_DECLINED:
		*out = RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED;
		return true;
	case BROKER_EV_OFFER_TIMEOUT:
		*out = RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT;
		return true;
	case BROKER_EV_OFFER_LOST:
	case BROKER_EV_RING_EXPIRED: // no result at all within the backstop: the agent is lost
		*out = RINGBID__OFFER_RESULT_CODE__OFFER_AGENT_LOST;
		return true;
	case BROKER_EV_REFUSED:
		*out = RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED;
		return true;
	default:
		return false;
	}
}

static bool event_matches(const broker_call *c, const broker_event *ev)
{
	if (ev->agent_id != 0 && ev->agent_id != c->agent_id)
		return false;
	if (ev->offer_id != 0 && ev->offer_id != c->offer_id)
		return false;
	return true;
}

static uint64_t at_least(uint64_t t, uint64_t floor)
{
	return t < floor ? floor : t;
}

// Checks that ev may be applied to c now; no side effects.
static int check(const broker_book *book, const broker_call *c, const broker_event *ev)
{
	switch (ev->kind) {
	case BROKER_EV_QUEUE:
		return c->state == BROKER_CALL_ARRIVED ? 0 : RB_ESTATE;
	case BROKER_EV_OFFER:
		if (c->state != BROKER_CALL_QUEUED)
			return RB_ESTATE;
		if (ev->agent_id == 0 || ev->offer_id == 0 ||
		    ev->presence_id > BROKER_PRESENCE_ID_MAX)
			return RB_EINVAL;
		if (broker_call_excluded(c, ev->agent_id))
			return RB_EINVAL;
		if (broker_book_agent_call(book, ev->agent_id) != NULL)
			return RB_EBUSY;
		return 0;
	case BROKER_EV_CONNECT:
		if (c->state != BROKER_CALL_OFFERED || !event_matches(c, ev))
			return RB_ESTATE;
		// The agent must hold this call and nothing else (the index says which).
		if (broker_book_agent_call(book, c->agent_id) != c)
			return RB_EBUSY;
		return 0;
	case BROKER_EV_DECLINED:
	case BROKER_EV_OFFER_TIMEOUT:
	case BROKER_EV_OFFER_LOST:
	case BROKER_EV_RING_EXPIRED:
	case BROKER_EV_REFUSED:
		if (c->state != BROKER_CALL_OFFERED || !event_matches(c, ev))
			return RB_ESTATE;
		return 0;
	case BROKER_EV_HANGUP:
		if (c->state != BROKER_CALL_QUEUED && c->state != BROKER_CALL_OFFERED &&
		    c->state != BROKER_CALL_CONNECTED)
			return RB_ESTATE;
		return 0;
	case BROKER_EV_AGENT_HANGUP:
	case BROKER_EV_MAX_TALK:
		if (c->state != BROKER_CALL_CONNECTED || !event_matches(c, ev))
			return RB_ESTATE;
		return 0;
	case BROKER_EV_MAX_WAIT:
		if (c->state != BROKER_CALL_QUEUED && c->state != BROKER_CALL_OFFERED)
			return RB_ESTATE;
		return 0;
	}
	return RB_EINVAL;
}

// Leaves the agent (an offer withdrawn or refused): the call goes back to the line, keeping
// its arrival time and so its place.
static void requeue(broker_call *c, const broker_event *ev)
{
	c->state = BROKER_CALL_QUEUED;
	c->agent_id = 0;
	c->offer_id = 0;
	c->offer_us = 0;
	c->queued_mono_us = ev->now_mono_us;
}

static void end(broker_call *c, const broker_event *ev, broker_disposition disp)
{
	c->state = BROKER_CALL_ENDED;
	c->disposition = disp;
	// Wall clocks can step back; a record must never end before it was answered.
	c->ended_us = at_least(ev->now_us, c->answered_us ? c->answered_us : c->arrived_us);
	if (disp != BROKER_DISP_COMPLETED)
		c->agent_id = 0;
}

int broker_call_apply(broker_book *book, broker_call *c, const broker_event *ev, broker_effects *fx)
{
	memset(fx, 0, sizeof(*fx));
	int rc = check(book, c, ev);
	if (rc != 0)
		return rc;
	broker_call_state from = c->state;
	fx->agent_id = c->agent_id;
	fx->offer_id = c->offer_id;

	// Allocation that can fail happens before anything is changed.
	Ringbid__OfferResultCode result = RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED;
	bool logged = from == BROKER_CALL_OFFERED && offer_result(ev->kind, &result);
	if (logged && (rc = offer_log_reserve(c)) != 0)
		return rc;
	if (ev->kind == BROKER_EV_OFFER) {
		broker_decision d;
		if (ev->decision != NULL) {
			d = *ev->decision;
		} else {
			memset(&d, 0, sizeof(d));
			d.at_us = ev->now_us;
		}
		d.agent_id = ev->agent_id;
		// Replay measures the ring backstop from the newest decision: it needs a time.
		if (d.at_us == 0)
			d.at_us = ev->now_us;
		if (c->ndecisions > 0 && c->decisions[c->ndecisions - 1].agent_id != ev->agent_id)
			c->missed = 0;
		rc = add_decision(c, &d);
	} else if (ev->kind == BROKER_EV_DECLINED || ev->kind == BROKER_EV_OFFER_TIMEOUT ||
	           ev->kind == BROKER_EV_OFFER_LOST || ev->kind == BROKER_EV_RING_EXPIRED) {
		rc = exclude(c, c->agent_id);
	} else if (ev->kind == BROKER_EV_REFUSED && c->missed + 1 >= BROKER_REFUSALS_EXCLUDE) {
		rc = exclude(c, c->agent_id);
	}
	if (rc != 0)
		return rc;
	if (logged)
		offer_log_append(c, c->agent_id, c->offer_us, result);

	index_leave(book, c);
	switch (ev->kind) {
	case BROKER_EV_QUEUE:
		c->state = BROKER_CALL_QUEUED;
		c->queued_mono_us = ev->now_mono_us;
		fx->flags = BROKER_FX_ENQUEUE;
		break;
	case BROKER_EV_OFFER:
		c->state = BROKER_CALL_OFFERED;
		c->agent_id = ev->agent_id;
		c->offer_id = ev->offer_id;
		c->presence_id = ev->presence_id;
		c->offers++;
		c->offer_us = at_least(ev->now_us, c->arrived_us);
		if (c->offered_us == 0)
			c->offered_us = c->offer_us;
		c->offer_mono_us = ev->now_mono_us;
		fx->flags = BROKER_FX_OFFER;
		fx->agent_id = c->agent_id;
		fx->offer_id = c->offer_id;
		break;
	case BROKER_EV_CONNECT:
		c->state = BROKER_CALL_CONNECTED;
		c->answered_us = at_least(ev->now_us, c->arrived_us);
		c->answered_mono_us = ev->now_mono_us;
		c->missed = 0;
		// Whether the agent's ACCEPTED or telephony's answer connected it, the agent is on
		// the call now, and only this word lets presence show it so.
		fx->flags = BROKER_FX_DEQUEUE | BROKER_FX_CALL_CONNECTED;
		break;
	case BROKER_EV_DECLINED:
	case BROKER_EV_OFFER_TIMEOUT:
	case BROKER_EV_OFFER_LOST:
		requeue(c, ev);
		fx->flags = BROKER_FX_ENQUEUE;
		break;
	case BROKER_EV_RING_EXPIRED:
		requeue(c, ev);
		fx->flags = BROKER_FX_ENQUEUE | BROKER_FX_OFFER_CANCEL;
		break;
	case BROKER_EV_REFUSED:
		c->missed++;
		if (c->missed >= BROKER_REFUSALS_EXCLUDE)
			c->missed = 0;
		requeue(c, ev);
		fx->flags = BROKER_FX_ENQUEUE;
		break;
	case BROKER_EV_HANGUP:
		if (from == BROKER_CALL_CONNECTED) {
			end(c, ev, BROKER_DISP_COMPLETED);
			fx->flags = BROKER_FX_CALL_ENDED | BROKER_FX_CDR;
		} else {
			end(c, ev, BROKER_DISP_ABANDONED);
			fx->flags = BROKER_FX_DEQUEUE | BROKER_FX_CDR;
			if (from == BROKER_CALL_OFFERED)
				fx->flags |= BROKER_FX_OFFER_CANCEL;
		}
		break;
	case BROKER_EV_AGENT_HANGUP:
		end(c, ev, BROKER_DISP_COMPLETED);
		// The CallEnded answers the hang-up: presence tells the auction the agent is free
		// only once it has it.
		fx->flags = BROKER_FX_CALL_ENDED | BROKER_FX_CDR;
		break;
	case BROKER_EV_MAX_WAIT:
		end(c, ev, BROKER_DISP_OVERFLOW);
		fx->flags = BROKER_FX_DEQUEUE | BROKER_FX_CDR;
		if (from == BROKER_CALL_OFFERED)
			fx->flags |= BROKER_FX_OFFER_CANCEL;
		break;
	case BROKER_EV_MAX_TALK:
		end(c, ev, BROKER_DISP_COMPLETED);
		c->review = true;
		fx->flags = BROKER_FX_CALL_ENDED | BROKER_FX_CDR;
		break;
	}
	c->version++;
	index_enter(book, c);
	if (c->state == BROKER_CALL_ENDED)
		ended_trim(book, c);
	return 0;
}

int broker_call_deadline(const broker_call *c, const broker_limits *lim, uint64_t grace_ms,
                         uint64_t *at_mono_us, broker_event_kind *kind)
{
	uint64_t wait_end = c->arrived_mono_us + (uint64_t)lim->max_wait_s * 1000000u;
	switch (c->state) {
	case BROKER_CALL_QUEUED:
		*at_mono_us = wait_end;
		*kind = BROKER_EV_MAX_WAIT;
		return 0;
	case BROKER_CALL_OFFERED: {
		uint64_t ring_end = c->offer_mono_us + (uint64_t)lim->ring_timeout_s * 1000000u +
		                    grace_ms * 1000u;
		if (ring_end < wait_end) {
			*at_mono_us = ring_end;
			*kind = BROKER_EV_RING_EXPIRED;
		} else {
			*at_mono_us = wait_end;
			*kind = BROKER_EV_MAX_WAIT;
		}
		return 0;
	}
	case BROKER_CALL_CONNECTED:
		*at_mono_us = c->answered_mono_us + (uint64_t)lim->max_talk_s * 1000000u;
		*kind = BROKER_EV_MAX_TALK;
		return 0;
	default:
		return RB_ENOTFOUND;
	}
}

// The broker's enums carry the wire values (checked here), so the shared names serve both.
_Static_assert((int)BROKER_CALL_ARRIVED == (int)RINGBID__CALL_STATE__CALL_ARRIVED &&
                       (int)BROKER_CALL_QUEUED == (int)RINGBID__CALL_STATE__CALL_QUEUED &&
                       (int)BROKER_CALL_OFFERED == (int)RINGBID__CALL_STATE__CALL_OFFERED &&
                       (int)BROKER_CALL_CONNECTED == (int)RINGBID__CALL_STATE__CALL_CONNECTED &&
                       (int)BROKER_CALL_ENDED == (int)RINGBID__CALL_STATE__CALL_ENDED,
               "broker call states differ from the wire's");
_Static_assert((int)BROKER_DISP_COMPLETED == (int)RINGBID__DISPOSITION__DISP_COMPLETED &&
                       (int)BROKER_DISP_ABANDONED == (int)RINGBID__DISPOSITION__DISP_ABANDONED &&
                       (int)BROKER_DISP_OVERFLOW == (int)RINGBID__DISPOSITION__DISP_OVERFLOW,
               "broker dispositions differ from the wire's");

const char *broker_call_state_name(int state)
{
	return rb_call_state_name(state);
}

const char *broker_disposition_name(int disposition)
{
	return rb_disposition_name(disposition);
}

// The monotonic time that corresponds to UTC time t, given one pair of readings of both.
static uint64_t mono_of(uint64_t t, uint64_t now_us, uint64_t now_mono_us)
{
	if (t == 0 || t >= now_us)
		return now_mono_us;
	uint64_t ago = now_us - t;
	return ago >= now_mono_us ? 0 : now_mono_us - ago;
}

static int fill_from_record(broker_call *c, const Ringbid__CallRecord *rec)
{
	const Ringbid__CallInfo *info = rec->info;
	int rc = copy_skills(c, (const char *const *)info->skills, info->n_skills);
	if (rc != 0)
		return rc;
	size_t nex = rec->n_excluded;
	const uint64_t *ex = rec->excluded;
	if (nex > BROKER_EXCLUDED_MAX) {
		ex += nex - BROKER_EXCLUDED_MAX;
		nex = BROKER_EXCLUDED_MAX;
	}
	for (size_t i = 0; i < nex; i++)
		if ((rc = exclude(c, ex[i])) != 0)
			return rc;
	size_t first = rec->n_decisions > BROKER_DECISIONS_MAX
	                       ? rec->n_decisions - BROKER_DECISIONS_MAX
	                       : 0;
	for (size_t i = first; i < rec->n_decisions; i++) {
		broker_decision d;
		broker_decision_from_pb(rec->decisions[i], &d);
		if ((rc = add_decision(c, &d)) != 0)
			return rc;
	}
	first = rec->n_offer_log > BROKER_OFFER_LOG_MAX ? rec->n_offer_log - BROKER_OFFER_LOG_MAX
	                                                : 0;
	for (size_t i = first; i < rec->n_offer_log; i++) {
		const Ringbid__CdrOffer *o = rec->offer_log[i];
		if ((rc = offer_log_reserve(c)) != 0)
			return rc;
		offer_log_append(c, o->agent_id, o->offered_us, o->result);
	}
	return 0;
}

static bool record_usable(const Ringbid__CallRecord *rec)
{
	const Ringbid__CallInfo *info = rec->info;
	if (info == NULL || !rb_valid_id(info->call_id, BROKER_ID_MAX) ||
	    !rb_valid_id(info->program, BROKER_ID_MAX))
		return false;
	if ((int)info->state < BROKER_CALL_ARRIVED || (int)info->state > BROKER_CALL_ENDED)
		return false;
	if ((int)info->disposition < BROKER_DISP_NONE ||
	    (int)info->disposition > BROKER_DISP_OVERFLOW)
		return false;
	if (info->n_skills > BROKER_SKILLS_MAX)
		return false;
	for (size_t i = 0; i < rec->n_decisions; i++)
		if (rec->decisions[i] == NULL)
			return false;
	for (size_t i = 0; i < rec->n_offer_log; i++) {
		const Ringbid__CdrOffer *o = rec->offer_log[i];
		if (o == NULL || o->agent_id == 0 ||
		    (int)o->result < RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED ||
		    (int)o->result > RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED)
			return false;
	}
	if (state_at_agent((broker_call_state)info->state) && info->agent_id == 0)
		return false;
	if (rec->presence_id > BROKER_PRESENCE_ID_MAX)
		return false;
	return true;
}

int broker_book_restore(broker_book *book, const Ringbid__CallRecord *rec, uint64_t now_us,
                        uint64_t now_mono_us, broker_call **out)
{
	if (out)
		*out = NULL;
	if (!record_usable(rec))
		return RB_EINVAL;
	const Ringbid__CallInfo *info = rec->info;
	broker_call_state state = (broker_call_state)info->state;
	// ARRIVED is never journaled on its own (a call is queued in the same step); a record
	// that says so is treated as waiting.
	if (state == BROKER_CALL_ARRIVED)
		state = BROKER_CALL_QUEUED;
	uint64_t agent_id = info->agent_id;
	uint64_t offer_id = rec->offer_id;
	broker_call *old = broker_book_find(book, info->call_id);
	if (state_at_agent(state)) {
		broker_call *holder = broker_book_agent_call(book, agent_id);
		if (holder != NULL && holder != old) {
			if (state == BROKER_CALL_CONNECTED)
				return RB_ESTATE;
			state = BROKER_CALL_QUEUED;
			agent_id = 0;
			offer_id = 0;
		}
	}

	broker_call *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return RB_ENOMEM;
	strcpy(c->id, info->call_id);
	strcpy(c->program, info->program);
	int rc = fill_from_record(c, rec);
	if (rc != 0) {
		call_free(c);
		return rc;
	}
	copy_masked(c->caller_masked, rec->caller_masked);
	c->priority = info->priority;
	if (c->priority < BROKER_PRIORITY_MIN * 2 || c->priority > BROKER_PRIORITY_MAX * 2)
		c->priority = 0;
	c->state = state;
	c->disposition = (broker_disposition)info->disposition;
	c->agent_id = agent_id;
	c->offer_id = offer_id;
	c->arrived_us = info->arrived_us;
	c->offered_us = info->offered_us;
	c->answered_us = info->answered_us;
	c->ended_us = info->ended_us;
	c->version = info->version ? info->version : 1;
	// A record written before the instance was journaled says 0, which is right for a
	// single presence instance.
	c->presence_id = rec->presence_id;
	c->offers = info->offers;
	c->missed = rec->missed;
	c->review = info->review;
	c->sale = info->sale;
	c->resolved = info->resolved;
	c->arrived_mono_us = mono_of(c->arrived_us, now_us, now_mono_us);
	c->answered_mono_us = mono_of(c->answered_us, now_us, now_mono_us);
	c->queued_mono_us = now_mono_us;
	// The offer started around its decision; a backstop measured from there is never late
	// by more than the time the broker was down.
	uint64_t offer_at = c->ndecisions ? c->decisions[c->ndecisions - 1].at_us : now_us;
	c->offer_mono_us = mono_of(at_least(offer_at, c->arrived_us), now_us, now_mono_us);
	// The record does not carry the current offer's start; its decision is the best witness,
	// and the same one the backstop above is measured from.
	if (c->state == BROKER_CALL_OFFERED)
		c->offer_us = at_least(offer_at, c->arrived_us);

	if (old != NULL) {
		index_leave(book, old);
		HASH_DELETE(hh, book->by_id, old);
		call_free(old);
	}
	HASH_ADD(hh, book->by_id, id, strlen(c->id), c);
	index_enter(book, c);
	if (c->state == BROKER_CALL_ENDED)
		ended_trim(book, c);
	if (out)
		*out = c;
	return 0;
}

// Keeps a score basis only when it is one the auction defines; anything else is left unsaid.
static void copy_basis(char *dst, const char *src)
{
	dst[0] = '\0';
	if (src != NULL && (strcmp(src, "program") == 0 || strcmp(src, "overall") == 0))
		strcpy(dst, src);
}

void broker_decision_from_pb(const Ringbid__Decision *d, broker_decision *out)
{
	memset(out, 0, sizeof(*out));
	out->at_us = d->at_us;
	out->agent_id = d->agent_id;
	// Scores come from another process: a NaN or an infinity is kept out of records and
	// replies rather than passed on.
	out->score = isfinite(d->score) ? d->score : 0;
	out->runner_up_id = d->runner_up_id;
	out->runner_up_score = isfinite(d->runner_up_score) ? d->runner_up_score : 0;
	out->eligible = d->eligible;
	out->exploratory = d->exploratory;
	out->available_since_us = d->available_since_us;
	if (d->reason != NULL && rb_valid_text(d->reason, BROKER_REASON_MAX))
		strcpy(out->reason, d->reason);
	copy_basis(out->score_basis, d->score_basis);
	copy_basis(out->runner_up_basis, d->runner_up_basis);
}

void broker_call_info(const broker_call *c, Ringbid__CallInfo *info)
{
	ringbid__call_info__init(info);
	info->call_id = (char *)c->id;
	info->program = (char *)c->program;
	info->state = (Ringbid__CallState)c->state;
	info->disposition = (Ringbid__Disposition)c->disposition;
	info->agent_id = c->agent_id;
	info->arrived_us = c->arrived_us;
	info->offered_us = c->offered_us;
	info->answered_us = c->answered_us;
	info->ended_us = c->ended_us;
	info->version = c->version;
	info->offers = c->offers;
	info->priority = c->priority;
	info->n_skills = c->nskills;
	info->skills = c->skills;
	info->review = c->review;
	info->sale = c->sale;
	info->resolved = c->resolved;
}

static int decisions_pb(const broker_call *c, broker_arena *a, Ringbid__Decision ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (c->ndecisions == 0)
		return 0;
	Ringbid__Decision **ptrs = broker_arena_alloc(a, c->ndecisions * sizeof(*ptrs));
	Ringbid__Decision *ds = broker_arena_alloc(a, c->ndecisions * sizeof(*ds));
	if (ptrs == NULL || ds == NULL)
		return RB_ENOMEM;
	for (uint32_t i = 0; i < c->ndecisions; i++) {
		const broker_decision *d = &c->decisions[i];
		ringbid__decision__init(&ds[i]);
		ds[i].at_us = d->at_us;
		ds[i].agent_id = d->agent_id;
		ds[i].score = d->score;
		ds[i].runner_up_id = d->runner_up_id;
		ds[i].runner_up_score = d->runner_up_score;
		ds[i].eligible = d->eligible;
		ds[i].exploratory = d->exploratory;
		ds[i].reason = (char *)d->reason;
		ds[i].available_since_us = d->available_since_us;
		ds[i].score_basis = (char *)d->score_basis;
		ds[i].runner_up_basis = (char *)d->runner_up_basis;
		ptrs[i] = &ds[i];
	}
	*out = ptrs;
	*n = c->ndecisions;
	return 0;
}

static int offer_log_pb(const broker_call *c, broker_arena *a, Ringbid__CdrOffer ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (c->noffer_log == 0)
		return 0;
	Ringbid__CdrOffer **ptrs = broker_arena_alloc(a, c->noffer_log * sizeof(*ptrs));
	Ringbid__CdrOffer *os = broker_arena_alloc(a, c->noffer_log * sizeof(*os));
	if (ptrs == NULL || os == NULL)
		return RB_ENOMEM;
	for (uint32_t i = 0; i < c->noffer_log; i++) {
		ringbid__cdr_offer__init(&os[i]);
		os[i].agent_id = c->offer_log[i].agent_id;
		os[i].offered_us = c->offer_log[i].offered_us;
		os[i].result = c->offer_log[i].result;
		ptrs[i] = &os[i];
	}
	*out = ptrs;
	*n = c->noffer_log;
	return 0;
}

int broker_call_record(const broker_call *c, broker_arena *a, Ringbid__CallRecord *rec)
{
	ringbid__call_record__init(rec);
	Ringbid__CallInfo *info = broker_arena_alloc(a, sizeof(*info));
	if (info == NULL)
		return RB_ENOMEM;
	broker_call_info(c, info);
	rec->info = info;
	rec->n_excluded = c->nexcluded;
	rec->excluded = c->excluded;
	rec->offer_id = c->offer_id;
	rec->caller_masked = (char *)c->caller_masked;
	rec->missed = c->missed;
	rec->presence_id = c->presence_id;
	int rc = decisions_pb(c, a, &rec->decisions, &rec->n_decisions);
	if (rc == 0)
		rc = offer_log_pb(c, a, &rec->offer_log, &rec->n_offer_log);
	return rc;
}

int broker_call_explain(const broker_call *c, broker_arena *a, Ringbid__ExplainReply *ex)
{
	ringbid__explain_reply__init(ex);
	Ringbid__CallInfo *info = broker_arena_alloc(a, sizeof(*info));
	if (info == NULL)
		return RB_ENOMEM;
	broker_call_info(c, info);
	ex->call = info;
	ex->n_excluded = c->nexcluded;
	ex->excluded = c->excluded;
	return decisions_pb(c, a, &ex->decisions, &ex->n_decisions);
}

void broker_call_enqueue(const broker_call *c, Ringbid__Enqueue *eq)
{
	ringbid__enqueue__init(eq);
	eq->call_id = (char *)c->id;
	eq->program = (char *)c->program;
	eq->n_skills = c->nskills;
	eq->skills = c->skills;
	eq->priority = c->priority;
	eq->arrived_us = c->arrived_us;
	eq->n_excluded = c->nexcluded;
	eq->excluded = c->excluded;
}

bool broker_call_exploratory(const broker_call *c)
{
	if (c->answered_us == 0 || c->agent_id == 0 || c->ndecisions == 0)
		return false;
	// Every offer adds its decision, so the newest is the one of the offer that connected.
	const broker_decision *d = &c->decisions[c->ndecisions - 1];
	return d->agent_id == c->agent_id && d->exploratory;
}

int broker_call_cdr(const broker_call *c, broker_arena *a, Ringbid__Cdr *cdr)
{
	ringbid__cdr__init(cdr);
	cdr->cdr_id = (char *)c->id;
	cdr->call_id = (char *)c->id;
	cdr->program = (char *)c->program;
	bool talked = c->answered_us != 0 && c->disposition == BROKER_DISP_COMPLETED;
	cdr->agent_id = talked ? c->agent_id : 0;
	cdr->arrived_us = c->arrived_us;
	cdr->offered_us = c->offered_us;
	cdr->answered_us = talked ? c->answered_us : 0;
	cdr->ended_us = c->ended_us;
	cdr->talk_s = talked && c->ended_us > c->answered_us
	                      ? (c->ended_us - c->answered_us) / 1000000u
	                      : 0;
	cdr->disposition = (Ringbid__Disposition)c->disposition;
	cdr->sale = talked && c->sale;
	cdr->resolved = talked && c->resolved;
	cdr->review = c->review;
	cdr->offers = c->offers;
	cdr->exploratory = talked && broker_call_exploratory(c);
	return offer_log_pb(c, a, &cdr->offer_log, &cdr->n_offer_log);
}
