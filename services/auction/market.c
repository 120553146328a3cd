// The auction's matching engine: agents, waiting calls and the per-queue ordered indexes.
//
// A queue is one distinct (program, sorted required skills) pair. Each queue keeps the
// available unreserved agents that cover its skills in a red-black tree ordered by the rule
// (score for the queue's program desc, available since asc, id asc), once one of its calls
// explored also in a second tree over the same entries ordered by (available since asc, id
// asc), and its waiting calls in another (priority desc, arrived asc, call id asc). An agent sits
// in the indexes of every queue it covers and remembers those entries, so taking it out costs O(q
// log n) for q queues.
//
// Invariant after every public call: no waiting call has an eligible agent. A single event can
// therefore create matches only around what it changed: the enqueued call, or the agent that
// became available. A snapshot chunk changes many agents at once and runs the general loop.
#include "market.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_pb.h"

// uthash reports allocation failures through this flag instead of exiting the process.
static _Thread_local int hash_oom;
#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(obj) (hash_oom = 1)
#include <uthash.h>

#include <stddef.h>
#define __unused __attribute__((unused))
#include <bsd/sys/tree.h>

struct queue;
struct agent;
struct call;

// One agent in one queue's indexes; the sort keys are copied in so that the agent's data can
// change without disturbing the trees before the entry is taken out.
struct qentry {
	RB_ENTRY(qentry) link;  // in q->agents: the rule's order
	RB_ENTRY(qentry) slink; // in q->since: longest available first
	struct queue *q;
	struct agent *a;
	double score;
	uint64_t since_us;
	bool program_basis; // score is the agent's program score, not its overall score
};
RB_HEAD(agent_tree, qentry);
RB_HEAD(since_tree, qentry);

struct call {
	char id[MARKET_ID_MAX + 1];
	UT_hash_handle hh;
	RB_ENTRY(call) link; // in q->calls while waiting
	struct call *lru_prev, *lru_next;
	uint64_t touched_mono_us;
	struct queue *q;
	bool exploratory; // goes to the longest-available agent (its program's share)
	int32_t priority;
	uint64_t arrived_us;
	uint64_t *excl; // sorted, distinct
	size_t nexcl;
	market_call_state state;
	uint64_t agent_id; // while matched
	market_decision decision;
};
RB_HEAD(call_tree, call);

struct queue {
	char *key; // "program|skill,skill"
	UT_hash_handle hh;
	char program[MARKET_ID_MAX + 1];
	char **skills; // sorted, distinct; one allocation with the strings
	size_t nskills;
	struct agent_tree agents;
	// The same entries as agents, kept only once a call of the queue explored: most programs
	// never explore, and their index changes then cost one tree, not two.
	struct since_tree since;
	bool explores;
	size_t nagents;
	struct call_tree calls;
	size_t refs; // calls of this queue, waiting or matched
	uint64_t idle_since_mono_us;
	size_t slot; // position in market.queues
	bool dirty;  // an agent joined its index since the last general matching loop
};

struct pscore {
	const char *program;
	double score;
};

struct agent {
	uint64_t id;
	UT_hash_handle hh;
	market_agent_state state;
	bool available;
	char **skills; // sorted, distinct; one allocation with the strings
	size_t nskills;
	double score;
	struct pscore *ps; // sorted by program; one allocation with the strings
	size_t nps;
	uint64_t since_us;
	uint64_t seq;
	uint64_t snap_gen;
	// while indexed
	struct qentry **qe;
	size_t nqe, qe_cap;
	struct agent *iprev, *inext;
	// while reserved
	uint64_t res_seq;
	uint64_t res_mono_us;
	struct call *res_call; // NULL once that call let go of it
	RB_ENTRY(agent) rlink;
};
RB_HEAD(res_tree, agent);

struct market {
	market_opts opts;
	market_match_fn fn;
	void *arg;
	struct agent *agents;  // hash by id
	struct call *calls;    // hash by id
	struct queue *qhash;   // hash by key
	struct queue **queues; // the same queues, for iteration
	size_t nqueues;
	struct agent *ihead;              // indexed agents (a queue made later indexes them)
	struct res_tree res;              // reserved agents by (reserved at, id)
	struct call *lru_head, *lru_tail; // calls by last Enqueue, oldest first
	size_t nagents, nindexed, nreserved, nwaiting, nmatched;
	uint64_t decisions;
	uint64_t snap_gen;
	uint64_t snap_id;
	bool snap_open;
};

static int qentry_cmp(const struct qentry *x, const struct qentry *y)
{
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	if (x->since_us != y->since_us)
		return x->since_us < y->since_us ? -1 : 1;
	if (x->a->id != y->a->id)
		return x->a->id < y->a->id ? -1 : 1;
	return 0;
}

static int since_cmp(const struct qentry *x, const struct qentry *y)
{
	if (x->since_us != y->since_us)
		return x->since_us < y->since_us ? -1 : 1;
	if (x->a->id != y->a->id)
		return x->a->id < y->a->id ? -1 : 1;
	return 0;
}

static int call_cmp(const struct call *x, const struct call *y)
{
	if (x->priority != y->priority)
		return x->priority > y->priority ? -1 : 1;
	if (x->arrived_us != y->arrived_us)
		return x->arrived_us < y->arrived_us ? -1 : 1;
	return strcmp(x->id, y->id);
}

static int res_cmp(const struct agent *x, const struct agent *y)
{
	if (x->res_mono_us != y->res_mono_us)
		return x->res_mono_us < y->res_mono_us ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return 0;
}

RB_GENERATE_STATIC(agent_tree, qentry, link, qentry_cmp)
RB_GENERATE_STATIC(since_tree, qentry, slink, since_cmp)
RB_GENERATE_STATIC(call_tree, call, link, call_cmp)
RB_GENERATE_STATIC(res_tree, agent, rlink, res_cmp)

// ---------------------------------------------------------------------------------------------
// Small helpers

static int str_ptr_cmp(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static int u64_cmp(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

static bool score_ok(double s)
{
	return isfinite(s) && s >= 0.0 && s <= 100.0;
}

// Sorts and folds duplicates of n strings into one allocation (pointers, then the bytes).
// *out is NULL when n folds to 0. Returns 0 or RB_ENOMEM.
static int strvec_make(char *const *in, size_t n, char ***out, size_t *nout)
{
	const char *tmp[MARKET_MAX_SKILLS];
	size_t k = 0, bytes = 0;
	*out = NULL;
	*nout = 0;
	if (n == 0)
		return 0;
	memcpy(tmp, in, n * sizeof *tmp);
	qsort(tmp, n, sizeof *tmp, str_ptr_cmp);
	for (size_t i = 0; i < n; i++) {
		if (k > 0 && strcmp(tmp[k - 1], tmp[i]) == 0)
			continue;
		tmp[k++] = tmp[i];
		bytes += strlen(tmp[i]) + 1;
	}
	char **v = malloc(k * sizeof *v + bytes);
	if (!v)
		return RB_ENOMEM;
	char *p = (char *)(v + k);
	for (size_t i = 0; i < k; i++) {
		size_t len = strlen(tmp[i]) + 1;
		memcpy(p, tmp[i], len);
		v[i] = p;
		p += len;
	}
	*out = v;
	*nout = k;
	return 0;
}

static bool strvec_equal(char **x, size_t nx, char **y, size_t ny)
{
	if (nx != ny)
		return false;
	for (size_t i = 0; i < nx; i++)
		if (strcmp(x[i], y[i]) != 0)
			return false;
	return true;
}

// True when the sorted set have contains every string of the sorted set need.
static bool strvec_covers(char **have, size_t nhave, char **need, size_t nneed)
{
	size_t i = 0;
	for (size_t j = 0; j < nneed; j++) {
		int c = 1;
		while (i < nhave && (c = strcmp(have[i], need[j])) < 0)
			i++;
		if (i == nhave || c != 0)
			return false;
		i++;
	}
	return true;
}

static int pscore_cmp(const void *x, const void *y)
{
	return strcmp(((const struct pscore *)x)->program, ((const struct pscore *)y)->program);
}

// Program scores sorted by program in one allocation. RB_EINVAL on a repeated program.
static int ps_make(const market_program_score *in, size_t n, struct pscore **out, size_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (n == 0)
		return 0;
	size_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		bytes += strlen(in[i].program) + 1;
	struct pscore *v = malloc(n * sizeof *v + bytes);
	if (!v)
		return RB_ENOMEM;
	char *p = (char *)(v + n);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(in[i].program) + 1;
		memcpy(p, in[i].program, len);
		v[i].program = p;
		v[i].score = in[i].score;
		p += len;
	}
	qsort(v, n, sizeof *v, pscore_cmp);
	for (size_t i = 1; i < n; i++) {
		if (strcmp(v[i - 1].program, v[i].program) == 0) {
			free(v);
			return RB_EINVAL;
		}
	}
	*out = v;
	*nout = n;
	return 0;
}

static bool ps_equal(const struct pscore *x, size_t nx, const struct pscore *y, size_t ny)
{
	if (nx != ny)
		return false;
	for (size_t i = 0; i < nx; i++)
		if (x[i].score != y[i].score || strcmp(x[i].program, y[i].program) != 0)
			return false;
	return true;
}

// The score the rule compares for program: the agent's program score, else its overall score.
// *program_basis tells which.
static double agent_score_for(const struct agent *a, const char *program, bool *program_basis)
{
	size_t lo = 0, hi = a->nps;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(a->ps[mid].program, program);
		if (c == 0) {
			*program_basis = true;
			return a->ps[mid].score;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*program_basis = false;
	return a->score;
}

static const char *basis_name(bool program_basis)
{
	return program_basis ? MARKET_BASIS_PROGRAM : MARKET_BASIS_OVERALL;
}

// ---------------------------------------------------------------------------------------------
// Exploration

uint64_t market_explore_hash(const char *call_id)
{
	uint64_t h = 0xcbf29ce484222325ull; // FNV-1a offset basis
	for (const unsigned char *p = (const unsigned char *)call_id; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ull; // FNV-1a prime
	}
	// splitmix64: FNV alone leaves the low digits of similar ids (call-1, call-2) correlated.
	uint64_t z = h + 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

bool market_call_exploratory(const char *call_id, double explore_share)
{
	if (!(explore_share > 0.0))
		return false;
	if (explore_share >= 1.0)
		return true;
	uint64_t cut = (uint64_t)(explore_share * MARKET_EXPLORE_SCALE + 0.5);
	return market_explore_hash(call_id) % MARKET_EXPLORE_SCALE < cut;
}

static bool call_excludes(const struct call *c, uint64_t agent_id)
{
	return c->nexcl > 0 &&
	       bsearch(&agent_id, c->excl, c->nexcl, sizeof *c->excl, u64_cmp) != NULL;
}

// Sorted, distinct copy of an exclusion list. *out NULL when empty.
static int excl_make(const uint64_t *in, size_t n, uint64_t **out, size_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (n == 0)
		return 0;
	uint64_t *v = malloc(n * sizeof *v);
	if (!v)
		return RB_ENOMEM;
	memcpy(v, in, n * sizeof *v);
	qsort(v, n, sizeof *v, u64_cmp);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (k == 0 || v[k - 1] != v[i])
			v[k++] = v[i];
	*out = v;
	*nout = k;
	return 0;
}

static struct agent *agent_find(const market *m, uint64_t id)
{
	struct agent *a = NULL;
	HASH_FIND(hh, m->agents, &id, sizeof id, a);
	return a;
}

static struct call *call_find(const market *m, const char *id)
{
	struct call *c = NULL;
	HASH_FIND_STR(m->calls, id, c);
	return c;
}

// ---------------------------------------------------------------------------------------------
// Validation: everything is checked before anything changes.

static int validate_agent(const market_agent_info *in)
{
	if (!in || in->id == 0 || in->nskills > MARKET_MAX_SKILLS || !score_ok(in->score) ||
	    in->nprogram_scores > MARKET_MAX_PROGRAM_SCORES)
		return RB_EINVAL;
	if ((in->nskills > 0 && !in->skills) || (in->nprogram_scores > 0 && !in->program_scores))
		return RB_EINVAL;
	for (size_t i = 0; i < in->nskills; i++)
		if (!in->skills[i] || !rb_valid_id(in->skills[i], MARKET_ID_MAX))
			return RB_EINVAL;
	const char *progs[MARKET_MAX_PROGRAM_SCORES];
	for (size_t i = 0; i < in->nprogram_scores; i++) {
		const market_program_score *p = &in->program_scores[i];
		if (!p->program || !rb_valid_id(p->program, MARKET_ID_MAX) || !score_ok(p->score))
			return RB_EINVAL;
		progs[i] = p->program;
	}
	qsort(progs, in->nprogram_scores, sizeof *progs, str_ptr_cmp);
	for (size_t i = 1; i < in->nprogram_scores; i++)
		if (strcmp(progs[i - 1], progs[i]) == 0)
			return RB_EINVAL;
	return 0;
}

static int validate_call(const market_call_info *in)
{
	if (!in || !in->id || !rb_valid_id(in->id, MARKET_ID_MAX) || !in->program ||
	    !rb_valid_id(in->program, MARKET_ID_MAX) || in->nskills > MARKET_MAX_SKILLS ||
	    in->nexcluded > MARKET_MAX_EXCLUDED || !isfinite(in->explore_share) ||
	    in->explore_share < 0.0 || in->explore_share > 1.0)
		return RB_EINVAL;
	if ((in->nskills > 0 && !in->skills) || (in->nexcluded > 0 && !in->excluded))
		return RB_EINVAL;
	for (size_t i = 0; i < in->nskills; i++)
		if (!in->skills[i] || !rb_valid_id(in->skills[i], MARKET_ID_MAX))
			return RB_EINVAL;
	for (size_t i = 0; i < in->nexcluded; i++)
		if (in->excluded[i] == 0)
			return RB_EINVAL;
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Indexes

static int agent_qe_reserve(struct agent *a, size_t want)
{
	if (want <= a->qe_cap)
		return 0;
	size_t cap = a->qe_cap ? a->qe_cap : 4;
	while (cap < want)
		cap *= 2;
	struct qentry **v = realloc(a->qe, cap * sizeof *v);
	if (!v)
		return RB_ENOMEM;
	a->qe = v;
	a->qe_cap = cap;
	return 0;
}

static bool agent_covers(const struct agent *a, const struct queue *q)
{
	return strvec_covers(a->skills, a->nskills, q->skills, q->nskills);
}

// Puts a in q's index; a->qe has room. Returns 0 or RB_ENOMEM.
static int qentry_add(struct queue *q, struct agent *a)
{
	struct qentry *e = malloc(sizeof *e);
	if (!e)
		return RB_ENOMEM;
	e->q = q;
	e->a = a;
	e->score = agent_score_for(a, q->program, &e->program_basis);
	e->since_us = a->since_us;
	RB_INSERT(agent_tree, &q->agents, e);
	if (q->explores)
		RB_INSERT(since_tree, &q->since, e);
	q->nagents++;
	q->dirty = true;
	a->qe[a->nqe++] = e;
	return 0;
}

// Takes e out of both of its queue's agent trees (the caller frees it).
static void qentry_unlink(struct qentry *e)
{
	RB_REMOVE(agent_tree, &e->q->agents, e);
	if (e->q->explores)
		RB_REMOVE(since_tree, &e->q->since, e);
	e->q->nagents--;
}

static void index_remove(market *m, struct agent *a)
{
	for (size_t i = 0; i < a->nqe; i++) {
		struct qentry *e = a->qe[i];
		qentry_unlink(e);
		free(e);
	}
	a->nqe = 0;
	if (a->iprev)
		a->iprev->inext = a->inext;
	else
		m->ihead = a->inext;
	if (a->inext)
		a->inext->iprev = a->iprev;
	a->iprev = a->inext = NULL;
	m->nindexed--;
}

static int index_insert(market *m, struct agent *a)
{
	a->iprev = NULL;
	a->inext = m->ihead;
	if (m->ihead)
		m->ihead->iprev = a;
	m->ihead = a;
	m->nindexed++;
	int rc = agent_qe_reserve(a, m->nqueues);
	for (size_t i = 0; rc == 0 && i < m->nqueues; i++)
		if (agent_covers(a, m->queues[i]))
			rc = qentry_add(m->queues[i], a);
	if (rc != 0)
		index_remove(m, a);
	return rc;
}

// Removes a's entry of q (q is being dropped) from a's list.
static void agent_forget_queue(struct agent *a, const struct queue *q)
{
	for (size_t i = 0; i < a->nqe; i++) {
		if (a->qe[i]->q == q) {
			a->qe[i] = a->qe[--a->nqe];
			return;
		}
	}
}

static bool agent_in_queue(const struct agent *a, const struct queue *q)
{
	for (size_t i = 0; i < a->nqe; i++)
		if (a->qe[i]->q == q)
			return true;
	return false;
}

// ---------------------------------------------------------------------------------------------
// The one transition function of an agent. Leaving INDEXED takes it out of every index,
// leaving RESERVED ends the reservation; entering INDEXED puts it into the index of each queue
// it covers (INDEXED -> INDEXED re-inserts it with new data), entering RESERVED records the
// call, the state_seq and the time. On RB_ENOMEM the agent is left AWAY.

static int agent_transition(market *m, struct agent *a, market_agent_state to, struct call *c,
                            market_time now)
{
	switch (a->state) {
	case MARKET_AGENT_INDEXED:
		index_remove(m, a);
		break;
	case MARKET_AGENT_RESERVED:
		RB_REMOVE(res_tree, &m->res, a);
		m->nreserved--;
		a->res_call = NULL;
		break;
	default:
		break;
	}
	a->state = MARKET_AGENT_AWAY;
	switch (to) {
	case MARKET_AGENT_INDEXED: {
		int rc = index_insert(m, a);
		if (rc != 0)
			return rc;
		break;
	}
	case MARKET_AGENT_RESERVED:
		a->res_call = c;
		a->res_seq = a->seq;
		a->res_mono_us = now.mono_us;
		RB_INSERT(res_tree, &m->res, a);
		m->nreserved++;
		break;
	default:
		break;
	}
	a->state = to == MARKET_AGENT_UNKNOWN ? MARKET_AGENT_AWAY : to;
	return 0;
}

// ---------------------------------------------------------------------------------------------
// The one transition function of a call: WAITING sits in its queue's call index, MATCHED holds
// the agent and the decision, UNKNOWN is on its way to being freed.

static void call_transition(market *m, struct call *c, market_call_state to, uint64_t agent_id)
{
	switch (c->state) {
	case MARKET_CALL_WAITING:
		RB_REMOVE(call_tree, &c->q->calls, c);
		m->nwaiting--;
		break;
	case MARKET_CALL_MATCHED:
		m->nmatched--;
		c->agent_id = 0;
		break;
	default:
		break;
	}
	switch (to) {
	case MARKET_CALL_WAITING:
		RB_INSERT(call_tree, &c->q->calls, c);
		m->nwaiting++;
		break;
	case MARKET_CALL_MATCHED:
		c->agent_id = agent_id;
		m->nmatched++;
		break;
	default:
		break;
	}
	c->state = to;
}

// ---------------------------------------------------------------------------------------------
// Matching

// Eligible agents of c in its queue: the index count minus the excluded agents in the index.
static uint32_t call_eligible(const market *m, const struct call *c)
{
	size_t n = c->q->nagents;
	for (size_t i = 0; i < c->nexcl; i++) {
		const struct agent *a = agent_find(m, c->excl[i]);
		if (a && a->state == MARKET_AGENT_INDEXED && agent_in_queue(a, c->q))
			n--;
	}
	return (uint32_t)n;
}

static bool call_has_eligible(const struct call *c)
{
	const struct queue *q = c->q;
	// More agents than exclusions: at least one is not excluded.
	if (q->nagents > c->nexcl)
		return true;
	struct qentry *e;
	RB_FOREACH(e, agent_tree, (struct agent_tree *)&q->agents)
	{
		if (!call_excludes(c, e->a->id))
			return true;
	}
	return false;
}

static void emit(market *m, const struct call *c, bool resend)
{
	market_match mm = {
	        .call_id = c->id,
	        .agent_id = c->agent_id,
	        .decision = &c->decision,
	        .resend = resend,
	};
	m->fn(&mm, m->arg);
}

// The first two eligible agents of c in the rule's order (*w NULL: none).
static void best_two_by_score(const struct call *c, struct qentry **w, struct qentry **r)
{
	struct qentry *e;
	*w = *r = NULL;
	RB_FOREACH(e, agent_tree, &c->q->agents)
	{
		if (call_excludes(c, e->a->id))
			continue;
		if (!*w) {
			*w = e;
		} else {
			*r = e;
			return;
		}
	}
}

// The first two eligible agents of c by how long they have been available, then id.
static void best_two_by_since(const struct call *c, struct qentry **w, struct qentry **r)
{
	struct qentry *e;
	*w = *r = NULL;
	RB_FOREACH(e, since_tree, &c->q->since)
	{
		if (call_excludes(c, e->a->id))
			continue;
		if (!*w) {
			*w = e;
		} else {
			*r = e;
			return;
		}
	}
}

// Matches waiting call c to the best eligible agent of its queue, if there is one: by the
// rule, or for an exploratory call the longest available (its runner-up is then the next in
// that order, the agent exploration would have picked next).
static bool match_call(market *m, struct call *c, market_time now)
{
	struct qentry *w, *r;
	if (c->exploratory)
		best_two_by_since(c, &w, &r);
	else
		best_two_by_score(c, &w, &r);
	if (!w)
		return false;
	market_decision d = {
	        .at_us = now.wall_us,
	        .agent_id = w->a->id,
	        .score = w->score,
	        .eligible = call_eligible(m, c),
	        .available_since_us = w->since_us,
	        .exploratory = c->exploratory,
	        .score_basis = basis_name(w->program_basis),
	        .runner_up_basis = "",
	};
	if (c->exploratory)
		d.reason = MARKET_REASON_EXPLORE;
	else if (!r)
		d.reason = MARKET_REASON_ONLY;
	else if (w->score != r->score)
		d.reason = MARKET_REASON_SCORE;
	else if (w->since_us != r->since_us)
		d.reason = MARKET_REASON_SINCE;
	else
		d.reason = MARKET_REASON_ID;
	if (r) {
		d.runner_up_id = r->a->id;
		d.runner_up_score = r->score;
		d.runner_up_basis = basis_name(r->program_basis);
	}
	struct agent *a = w->a; // w is freed by the transition
	call_transition(m, c, MARKET_CALL_MATCHED, a->id);
	c->decision = d;
	agent_transition(m, a, MARKET_AGENT_RESERVED, c, now);
	m->decisions++;
	emit(m, c, false);
	return true;
}

// Agent a just joined the indexes: it takes, among the waiting calls it is eligible for, the
// one with the highest priority, then the earliest arrival, then the lowest call id. By the
// invariant no other agent is eligible for those calls, so the call's own choice is a.
static void match_agent(market *m, struct agent *a, market_time now)
{
	while (a->state == MARKET_AGENT_INDEXED) {
		struct call *best = NULL;
		for (size_t i = 0; i < a->nqe; i++) {
			struct call *c;
			RB_FOREACH(c, call_tree, &a->qe[i]->q->calls)
			{
				if (call_excludes(c, a->id))
					continue;
				if (!best || call_cmp(c, best) < 0)
					best = c;
				break;
			}
		}
		if (!best || !match_call(m, best, now))
			return;
	}
}

// The general loop: while some waiting call of a dirty queue has an eligible agent, the best
// such call (priority, arrival, id) across queues takes its best agent.
static void match_all(market *m, market_time now)
{
	for (;;) {
		struct call *best = NULL;
		for (size_t i = 0; i < m->nqueues; i++) {
			struct queue *q = m->queues[i];
			if (!q->dirty)
				continue;
			struct call *c, *cand = NULL;
			if (q->nagents > 0) {
				RB_FOREACH(c, call_tree, &q->calls)
				{
					if (call_has_eligible(c)) {
						cand = c;
						break;
					}
				}
			}
			if (!cand) {
				q->dirty = false;
				continue;
			}
			if (!best || call_cmp(cand, best) < 0)
				best = cand;
		}
		if (!best || !match_call(m, best, now))
			return;
	}
}

// ---------------------------------------------------------------------------------------------
// Queues

static void queue_free(struct queue *q)
{
	if (!q)
		return;
	free(q->key);
	free(q->skills);
	free(q);
}

// Drops an unused queue (no calls): its index entries leave their agents' lists.
static void queue_drop(market *m, struct queue *q)
{
	struct qentry *e;
	while ((e = RB_MIN(agent_tree, &q->agents)) != NULL) {
		qentry_unlink(e);
		agent_forget_queue(e->a, q);
		free(e);
	}
	m->queues[q->slot] = m->queues[--m->nqueues];
	m->queues[q->slot]->slot = q->slot;
	HASH_DEL(m->qhash, q);
	queue_free(q);
}

// The queue's first exploratory call: its longest-available index is built from the agents
// indexed now (O(n log n), once per queue, like opening it) and kept from then on.
static void queue_explore(struct queue *q)
{
	if (q->explores)
		return;
	struct qentry *e;
	RB_FOREACH(e, agent_tree, &q->agents)
	{
		RB_INSERT(since_tree, &q->since, e);
	}
	q->explores = true;
}

static void queue_unref(struct queue *q, market_time now)
{
	if (--q->refs == 0)
		q->idle_since_mono_us = now.mono_us;
}

// Finds or makes the queue of (program, skills); a new queue indexes every available agent
// that covers it (once per distinct queue). Returns 0, RB_EBUSY (too many queues), RB_ENOMEM.
static int queue_get(market *m, const char *program, char *const *skills, size_t nskills,
                     struct queue **out)
{
	char **sv;
	size_t ns;
	int rc = strvec_make(skills, nskills, &sv, &ns);
	if (rc != 0)
		return rc;
	size_t keylen = strlen(program) + 2;
	for (size_t i = 0; i < ns; i++)
		keylen += strlen(sv[i]) + 1;
	char *key = malloc(keylen);
	if (!key) {
		free(sv);
		return RB_ENOMEM;
	}
	char *p = stpcpy(key, program);
	*p++ = '|';
	*p = '\0';
	for (size_t i = 0; i < ns; i++) {
		if (i > 0)
			*p++ = ',';
		p = stpcpy(p, sv[i]);
	}
	struct queue *q = NULL;
	HASH_FIND_STR(m->qhash, key, q);
	if (q) {
		free(key);
		free(sv);
		*out = q;
		return 0;
	}
	if (m->nqueues >= m->opts.max_queues) {
		// Make room by dropping the queue unused for the longest time, if any is unused.
		struct queue *victim = NULL;
		for (size_t i = 0; i < m->nqueues; i++) {
			struct queue *v = m->queues[i];
			if (v->refs == 0 &&
			    (!victim || v->idle_since_mono_us < victim->idle_since_mono_us))
				victim = v;
		}
		if (!victim) {
			free(key);
			free(sv);
			return RB_EBUSY;
		}
		queue_drop(m, victim);
	}
	q = calloc(1, sizeof *q);
	struct queue **qs = q ? realloc(m->queues, (m->nqueues + 1) * sizeof *qs) : NULL;
	if (!qs) {
		free(q);
		free(key);
		free(sv);
		return RB_ENOMEM;
	}
	m->queues = qs;
	q->key = key;
	snprintf(q->program, sizeof q->program, "%s", program);
	q->skills = sv;
	q->nskills = ns;
	RB_INIT(&q->agents);
	RB_INIT(&q->since);
	RB_INIT(&q->calls);
	rc = 0;
	for (struct agent *a = m->ihead; a && rc == 0; a = a->inext) {
		if (!agent_covers(a, q))
			continue;
		rc = agent_qe_reserve(a, a->nqe + 1);
		if (rc == 0)
			rc = qentry_add(q, a);
	}
	hash_oom = 0;
	if (rc == 0) {
		HASH_ADD_KEYPTR(hh, m->qhash, q->key, strlen(q->key), q);
		if (hash_oom)
			rc = RB_ENOMEM;
	}
	if (rc != 0) {
		struct qentry *e;
		while ((e = RB_MIN(agent_tree, &q->agents)) != NULL) {
			qentry_unlink(e);
			agent_forget_queue(e->a, q);
			free(e);
		}
		queue_free(q);
		return rc;
	}
	q->slot = m->nqueues;
	m->queues[m->nqueues++] = q;
	*out = q;
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Calls

static void lru_unlink(market *m, struct call *c)
{
	if (c->lru_prev)
		c->lru_prev->lru_next = c->lru_next;
	else
		m->lru_head = c->lru_next;
	if (c->lru_next)
		c->lru_next->lru_prev = c->lru_prev;
	else
		m->lru_tail = c->lru_prev;
	c->lru_prev = c->lru_next = NULL;
}

static void lru_touch(market *m, struct call *c, market_time now)
{
	if (c->lru_prev || c->lru_next || m->lru_head == c)
		lru_unlink(m, c);
	c->touched_mono_us = now.mono_us;
	c->lru_prev = m->lru_tail;
	if (m->lru_tail)
		m->lru_tail->lru_next = c;
	else
		m->lru_head = c;
	m->lru_tail = c;
}

// Forgets c. The agent reserved for it stays reserved (presence or the backstop frees it);
// returns that agent so the caller may free it instead.
static struct agent *call_forget(market *m, struct call *c, market_time now)
{
	struct agent *held = NULL;
	if (c->state == MARKET_CALL_MATCHED) {
		struct agent *a = agent_find(m, c->agent_id);
		if (a && a->state == MARKET_AGENT_RESERVED && a->res_call == c) {
			a->res_call = NULL;
			held = a;
		}
	}
	call_transition(m, c, MARKET_CALL_UNKNOWN, 0);
	lru_unlink(m, c);
	HASH_DEL(m->calls, c);
	queue_unref(c->q, now);
	free(c->excl);
	free(c);
	return held;
}

// Ends a's reservation: back in the indexes if presence still says available, and matched.
static void agent_release(market *m, struct agent *a, market_time now)
{
	market_agent_state to = a->available ? MARKET_AGENT_INDEXED : MARKET_AGENT_AWAY;
	if (agent_transition(m, a, to, NULL, now) == 0 && a->state == MARKET_AGENT_INDEXED)
		match_agent(m, a, now);
}

// ---------------------------------------------------------------------------------------------
// Public API

int market_new(const market_opts *opts, market_match_fn fn, void *arg, market **out)
{
	if (!fn || !out)
		return RB_EINVAL;
	market *m = calloc(1, sizeof *m);
	if (!m)
		return RB_ENOMEM;
	if (opts)
		m->opts = *opts;
	if (m->opts.reserve_max_us == 0)
		m->opts.reserve_max_us = MARKET_RESERVE_MAX_US;
	if (m->opts.queue_idle_us == 0)
		m->opts.queue_idle_us = MARKET_QUEUE_IDLE_US;
	if (m->opts.max_queues == 0)
		m->opts.max_queues = MARKET_MAX_QUEUES;
	if (m->opts.call_forget_us == 0)
		m->opts.call_forget_us = MARKET_CALL_FORGET_US;
	m->fn = fn;
	m->arg = arg;
	RB_INIT(&m->res);
	*out = m;
	return 0;
}

static void agent_free(struct agent *a)
{
	free(a->skills);
	free(a->ps);
	free(a->qe);
	free(a);
}

// Takes a out of the market entirely (snapshot drop, or a failed first insert).
static void agent_drop(market *m, struct agent *a, market_time now)
{
	agent_transition(m, a, MARKET_AGENT_UNKNOWN, NULL, now);
	HASH_DEL(m->agents, a);
	m->nagents--;
	agent_free(a);
}

void market_free(market *m)
{
	if (!m)
		return;
	market_time zero = {0, 0};
	struct call *c, *ctmp;
	HASH_ITER(hh, m->calls, c, ctmp)
	{
		call_forget(m, c, zero);
	}
	struct agent *a, *atmp;
	HASH_ITER(hh, m->agents, a, atmp)
	{
		agent_drop(m, a, zero);
	}
	while (m->nqueues > 0)
		queue_drop(m, m->queues[m->nqueues - 1]);
	free(m->queues);
	free(m);
}

// Applies one validated update; matching is left to the caller when defer is set.
static int agent_apply(market *m, const market_agent_info *in, market_time now, bool defer)
{
	char **sv;
	size_t ns;
	struct pscore *ps;
	size_t nps;
	int rc = strvec_make(in->skills, in->nskills, &sv, &ns);
	if (rc != 0)
		return rc;
	rc = ps_make(in->program_scores, in->nprogram_scores, &ps, &nps);
	if (rc != 0) {
		free(sv);
		return rc;
	}
	struct agent *a = agent_find(m, in->id);
	bool changed = a == NULL;
	if (!a) {
		a = calloc(1, sizeof *a);
		if (a) {
			a->id = in->id;
			a->state = MARKET_AGENT_AWAY;
			hash_oom = 0;
			HASH_ADD(hh, m->agents, id, sizeof a->id, a);
			if (hash_oom) {
				free(a);
				a = NULL;
			}
		}
		if (!a) {
			free(sv);
			free(ps);
			return RB_ENOMEM;
		}
		m->nagents++;
	}
	changed = changed || !strvec_equal(a->skills, a->nskills, sv, ns) ||
	          !ps_equal(a->ps, a->nps, ps, nps) || a->score != in->score ||
	          a->since_us != in->available_since_us;
	// Swap the data in only now: an indexed agent's entries carry their own sort keys.
	free(a->skills);
	free(a->ps);
	a->skills = sv;
	a->nskills = ns;
	a->ps = ps;
	a->nps = nps;
	a->score = in->score;
	a->since_us = in->available_since_us;
	a->available = in->available;
	a->seq = in->state_seq;
	a->snap_gen = m->snap_gen;

	// An update with the state_seq seen at reservation was sent before the offer reached
	// presence: the reservation holds. Any other seq is a later state (or presence began its
	// counters again after a restart): the reservation ends and the update's availability
	// applies.
	if (a->state == MARKET_AGENT_RESERVED && in->state_seq == a->res_seq)
		return 0;
	market_agent_state to = in->available ? MARKET_AGENT_INDEXED : MARKET_AGENT_AWAY;
	if (to == a->state && (to == MARKET_AGENT_AWAY || !changed))
		return 0;
	rc = agent_transition(m, a, to, NULL, now);
	if (rc != 0)
		return rc;
	if (a->state == MARKET_AGENT_INDEXED && !defer)
		match_agent(m, a, now);
	return 0;
}

int market_agent_update(market *m, const market_agent_info *info, market_time now)
{
	if (!m)
		return RB_EINVAL;
	int rc = validate_agent(info);
	if (rc != 0)
		return rc;
	return agent_apply(m, info, now, false);
}

int market_snapshot(market *m, uint64_t snapshot_id, bool first, bool last,
                    const market_agent_info *agents, size_t nagents, market_time now,
                    size_t *dropped)
{
	if (dropped)
		*dropped = 0;
	if (!m || (nagents > 0 && !agents))
		return RB_EINVAL;
	for (size_t i = 0; i < nagents; i++) {
		int rc = validate_agent(&agents[i]);
		if (rc != 0)
			return rc;
	}
	if (first) {
		// Agents whose generation stays behind are the ones this snapshot does not mention.
		m->snap_gen++;
		m->snap_id = snapshot_id;
		m->snap_open = true;
	}
	int err = 0;
	for (size_t i = 0; i < nagents; i++) {
		int rc = agent_apply(m, &agents[i], now, true);
		if (rc != 0 && err == 0)
			err = rc;
	}
	if (last && m->snap_open && m->snap_id == snapshot_id) {
		size_t n = 0;
		struct agent *a, *tmp;
		HASH_ITER(hh, m->agents, a, tmp)
		{
			if (a->snap_gen != m->snap_gen) {
				agent_drop(m, a, now);
				n++;
			}
		}
		m->snap_open = false;
		if (dropped)
			*dropped = n;
	}
	match_all(m, now);
	return err;
}

int market_enqueue(market *m, const market_call_info *in, market_time now)
{
	if (!m)
		return RB_EINVAL;
	int rc = validate_call(in);
	if (rc != 0)
		return rc;
	uint64_t *excl;
	size_t nexcl;
	rc = excl_make(in->excluded, in->nexcluded, &excl, &nexcl);
	if (rc != 0)
		return rc;
	bool exploratory = market_call_exploratory(in->id, in->explore_share);
	struct call *c = call_find(m, in->id);
	if (c) {
		free(c->excl);
		c->excl = excl;
		c->nexcl = nexcl;
		// The program's share may have changed since the last Enqueue; a match already made
		// keeps its decision.
		c->exploratory = exploratory;
		if (exploratory)
			queue_explore(c->q);
		lru_touch(m, c, now);
		if (c->state == MARKET_CALL_MATCHED) {
			struct agent *a = agent_find(m, c->agent_id);
			bool held = a && a->state == MARKET_AGENT_RESERVED && a->res_call == c;
			if (held && !call_excludes(c, a->id)) {
				// The broker did not get the Match (or sent this before it did).
				emit(m, c, true);
				return 0;
			}
			// The offer failed (the agent is excluded now: presence still holds it as
			// reserved or not ready until it says otherwise), or the reservation ended
			// and the agent may hold another call: the call waits again.
			if (held)
				a->res_call = NULL;
			call_transition(m, c, MARKET_CALL_WAITING, 0);
		}
		match_call(m, c, now);
		return 0;
	}
	struct queue *q;
	rc = queue_get(m, in->program, in->skills, in->nskills, &q);
	if (rc != 0) {
		free(excl);
		return rc;
	}
	c = calloc(1, sizeof *c);
	if (!c) {
		free(excl);
		return RB_ENOMEM;
	}
	snprintf(c->id, sizeof c->id, "%s", in->id);
	c->q = q;
	c->exploratory = exploratory;
	if (exploratory)
		queue_explore(q);
	c->priority = in->priority;
	c->arrived_us = in->arrived_us;
	c->excl = excl;
	c->nexcl = nexcl;
	hash_oom = 0;
	HASH_ADD_STR(m->calls, id, c);
	if (hash_oom) {
		free(excl);
		free(c);
		return RB_ENOMEM;
	}
	q->refs++;
	lru_touch(m, c, now);
	call_transition(m, c, MARKET_CALL_WAITING, 0);
	match_call(m, c, now);
	return 0;
}

int market_dequeue(market *m, const char *call_id, uint64_t release_agent, market_time now)
{
	if (!m || !call_id || !rb_valid_id(call_id, MARKET_ID_MAX))
		return RB_EINVAL;
	struct call *c = call_find(m, call_id);
	if (!c)
		return 0;
	uint64_t matched = c->state == MARKET_CALL_MATCHED ? c->agent_id : 0;
	struct agent *held = call_forget(m, c, now);
	if (held && release_agent != 0 && release_agent == matched)
		agent_release(m, held, now);
	return 0;
}

void market_janitor(market *m, market_time now, market_janitor_result *out)
{
	market_janitor_result r = {0, 0, 0};
	struct agent *a;
	while ((a = RB_MIN(res_tree, &m->res)) != NULL && now.mono_us >= a->res_mono_us &&
	       now.mono_us - a->res_mono_us >= m->opts.reserve_max_us) {
		// The call keeps its match; a later Enqueue of it finds the agent no longer held
		// for it and matches it again.
		agent_release(m, a, now);
		r.reservations_ended++;
	}
	struct call *c;
	while ((c = m->lru_head) != NULL && now.mono_us >= c->touched_mono_us &&
	       now.mono_us - c->touched_mono_us >= m->opts.call_forget_us) {
		call_forget(m, c, now);
		r.calls_forgotten++;
	}
	for (size_t i = 0; i < m->nqueues;) {
		struct queue *q = m->queues[i];
		if (q->refs == 0 && now.mono_us >= q->idle_since_mono_us &&
		    now.mono_us - q->idle_since_mono_us >= m->opts.queue_idle_us) {
			queue_drop(m, q); // moves the last queue into slot i
			r.queues_dropped++;
		} else {
			i++;
		}
	}
	if (out)
		*out = r;
}

void market_get_stats(const market *m, market_stats *out)
{
	*out = (market_stats){
	        .agents = m->nagents,
	        .agents_available = m->nindexed,
	        .agents_reserved = m->nreserved,
	        .calls_waiting = m->nwaiting,
	        .calls_matched = m->nmatched,
	        .queues = m->nqueues,
	        .decisions = m->decisions,
	};
}

market_agent_state market_agent_get(const market *m, uint64_t agent_id, const char **reserved_for)
{
	const struct agent *a = agent_find(m, agent_id);
	if (reserved_for)
		*reserved_for = a && a->state == MARKET_AGENT_RESERVED && a->res_call
		                        ? a->res_call->id
		                        : "";
	return a ? a->state : MARKET_AGENT_UNKNOWN;
}

market_call_state market_call_get(const market *m, const char *call_id, uint64_t *agent_id)
{
	const struct call *c = call_id ? call_find(m, call_id) : NULL;
	if (agent_id)
		*agent_id = c && c->state == MARKET_CALL_MATCHED ? c->agent_id : 0;
	return c ? c->state : MARKET_CALL_UNKNOWN;
}

// Walks one queue's two agent trees: each in its own strict order, the same entries, each
// entry matching its agent's current data and listed by the agent.
static int check_queue(const struct queue *q)
{
	struct queue *mq = (struct queue *)q; // the tree macros take non-const heads
	size_t n = 0;
	struct qentry *e, *prev = NULL;
	RB_FOREACH(e, agent_tree, &mq->agents)
	{
		const struct agent *a = e->a;
		bool basis;
		double score = agent_score_for(a, q->program, &basis);
		if (e->q != q || a->state != MARKET_AGENT_INDEXED || !agent_covers(a, q) ||
		    e->score != score || e->program_basis != basis || e->since_us != a->since_us)
			return RB_ESTATE;
		bool listed = false;
		for (size_t i = 0; i < a->nqe && !listed; i++)
			listed = a->qe[i] == e;
		if (!listed || (prev && qentry_cmp(prev, e) >= 0))
			return RB_ESTATE;
		if (q->explores && RB_FIND(since_tree, &mq->since, e) != e)
			return RB_ESTATE;
		prev = e;
		n++;
	}
	if (n != q->nagents)
		return RB_ESTATE;
	if (!q->explores)
		return RB_EMPTY(&mq->since) ? 0 : RB_ESTATE;
	n = 0;
	prev = NULL;
	RB_FOREACH(e, since_tree, &mq->since)
	{
		if ((prev && since_cmp(prev, e) >= 0) || RB_FIND(agent_tree, &mq->agents, e) != e)
			return RB_ESTATE;
		prev = e;
		n++;
	}
	return n == q->nagents ? 0 : RB_ESTATE;
}

int market_check(const market *m)
{
	for (size_t i = 0; i < m->nqueues; i++) {
		int rc = check_queue(m->queues[i]);
		if (rc != 0)
			return rc;
	}
	// Every indexed agent sits in exactly the queues it covers.
	size_t nindexed = 0;
	for (const struct agent *a = m->ihead; a; a = a->inext) {
		size_t covered = 0;
		for (size_t i = 0; i < m->nqueues; i++)
			covered += agent_covers(a, m->queues[i]);
		if (a->state != MARKET_AGENT_INDEXED || a->nqe != covered)
			return RB_ESTATE;
		nindexed++;
	}
	return nindexed == m->nindexed ? 0 : RB_ESTATE;
}
