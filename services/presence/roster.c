// The agent roster from PostgreSQL: a full load at start and after every reconnect, one row
// reloaded on each 'agent:<id>' notification, and billing's scores loaded after each full
// load and on each 'scores' notification.
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rb_db.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "roster.h"

#define ROSTER_CHANNEL "ringbid_roster"
#define SELECT_AGENTS  "SELECT id, name, status, secret_hash, skills, score FROM roster.agents"
// One row per agent with program '' (its overall score) and one per program score; ordered so
// that each agent's rows are adjacent.
#define SELECT_SCORES                                                                              \
	"SELECT agent_id, program, score FROM billing.presence_scores ORDER BY agent_id, program"
#define SCORES_PAYLOAD "scores"
#define RETRY_MIN_MS   1000
#define RETRY_MAX_MS   30000

struct presence_roster {
	uv_loop_t *loop;
	presence_core *core;
	rb_db *db;
	uv_timer_t retry;
	uint64_t retry_ms;
	bool load_inflight;
	bool scores_inflight;
	bool scores_again;   // a 'scores' notification came during a load: load once more after it
	bool scores_missing; // the view is not there (logged once until it appears)
	void (*changed)(void *arg);
	void *changed_arg;
};

typedef struct reload_req {
	presence_roster *r;
	uint64_t id;
} reload_req;

// ---------------------------------------------------------------------------------------------
// Parsing

void presence_strv_free(char **v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int strv_push(char ***v, size_t *n, size_t *cap, const char *s)
{
	if (*n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 8;
		char **nv = realloc(*v, ncap * sizeof(*nv));
		if (nv == NULL)
			return RB_ENOMEM;
		*v = nv;
		*cap = ncap;
	}
	char *copy = strdup(s);
	if (copy == NULL)
		return RB_ENOMEM;
	(*v)[(*n)++] = copy;
	return 0;
}

static const char *skip_space(const char *p)
{
	while (*p != '\0' && isspace((unsigned char)*p))
		p++;
	return p;
}

int presence_parse_text_array(const char *text, char ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (text == NULL)
		return RB_EINVAL;
	const char *p = skip_space(text);
	if (*p == '[') {
		// Non-default bounds come first: "[0:1]={a,b}".
		p = strchr(p, '=');
		if (p == NULL)
			return RB_EINVAL;
		p = skip_space(p + 1);
	}
	if (*p != '{')
		return RB_EINVAL;
	p++;
	char *buf = malloc(strlen(p) + 1);
	if (buf == NULL)
		return RB_ENOMEM;
	char **v = NULL;
	size_t count = 0, cap = 0;
	int rv = RB_EINVAL;

	p = skip_space(p);
	if (*p == '}') {
		p++;
		goto tail;
	}
	for (;;) {
		size_t bl = 0;
		bool quoted = false;
		p = skip_space(p);
		if (*p == '"') {
			quoted = true;
			p++;
			for (;;) {
				if (*p == '\0')
					goto fail;
				if (*p == '\\') {
					p++;
					if (*p == '\0')
						goto fail;
					buf[bl++] = *p++;
					continue;
				}
				if (*p == '"') {
					p++;
					break;
				}
				buf[bl++] = *p++;
			}
			p = skip_space(p);
		} else {
			size_t keep = 0; // length up to the last escaped or non-space character
			while (*p != '\0' && *p != ',' && *p != '}') {
				if (*p == '{' || *p == '"')
					goto fail; // nested arrays or stray quotes
				if (*p == '\\') {
					p++;
					if (*p == '\0')
						goto fail;
					buf[bl++] = *p++;
					keep = bl;
					continue;
				}
				buf[bl++] = *p;
				if (!isspace((unsigned char)*p))
					keep = bl;
				p++;
			}
			bl = keep;
			if (bl == 0)
				goto fail;
		}
		buf[bl] = '\0';
		if (quoted || strcasecmp(buf, "NULL") != 0) {
			rv = strv_push(&v, &count, &cap, buf);
			if (rv != 0)
				goto fail;
			rv = RB_EINVAL;
		}
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p == '}') {
			p++;
			break;
		}
		goto fail;
	}
tail:
	p = skip_space(p);
	if (*p != '\0')
		goto fail;
	free(buf);
	*out = v;
	*n = count;
	return 0;
fail:
	free(buf);
	presence_strv_free(v, count);
	return rv;
}

static int parse_u64(const char *s, uint64_t *out)
{
	if (s == NULL || *s < '0' || *s > '9')
		return RB_EINVAL;
	errno = 0;
	char *end = NULL;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return RB_EINVAL;
	*out = v;
	return 0;
}

int presence_parse_score(const char *text, double *out)
{
	if (text == NULL || *text == '\0')
		return RB_EINVAL;
	char *end = NULL;
	errno = 0;
	double v = strtod(text, &end);
	if (errno != 0 || end == text || *end != '\0' || !isfinite(v) || v < 0 || v > 100)
		return RB_EINVAL;
	*out = v;
	return 0;
}

int presence_parse_agent_payload(const char *payload, uint64_t *id)
{
	static const char prefix[] = "agent:";
	if (payload == NULL || strncmp(payload, prefix, sizeof(prefix) - 1) != 0)
		return RB_EINVAL;
	uint64_t v;
	if (parse_u64(payload + sizeof(prefix) - 1, &v) != 0 || v == 0)
		return RB_EINVAL;
	*id = v;
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Rows

// Reads row i into the core. Returns 0, RB_EINVAL (row skipped, logged) or RB_ENOMEM.
static int apply_row(presence_roster *r, const PGresult *res, int i)
{
	uint64_t id;
	if (parse_u64(PQgetvalue(res, i, 0), &id) != 0 || id == 0) {
		rb_warn("roster: agent id '%s' not valid: row skipped", PQgetvalue(res, i, 0));
		return RB_EINVAL;
	}
	char **raw = NULL;
	size_t nraw = 0;
	int rv = presence_parse_text_array(PQgetvalue(res, i, 4), &raw, &nraw);
	if (rv != 0) {
		rb_logf(RB_LOG_WARN, NULL, id, "roster: skills '%s' not readable: agent has none",
		        PQgetvalue(res, i, 4));
		if (rv == RB_ENOMEM)
			return rv;
		raw = NULL;
		nraw = 0;
	}
	// Keep the skills the auction can use; a bad one is dropped, not passed on.
	size_t n = 0;
	for (size_t k = 0; k < nraw; k++) {
		if (!rb_valid_id(raw[k], PRESENCE_ID_MAX)) {
			rb_logf(RB_LOG_WARN, NULL, id, "roster: skill '%.64s' not valid: ignored",
			        raw[k]);
			free(raw[k]);
			continue;
		}
		if (n >= PRESENCE_MAX_SKILLS) {
			rb_logf(RB_LOG_WARN, NULL, id, "roster: more than %d skills: '%s' ignored",
			        PRESENCE_MAX_SKILLS, raw[k]);
			free(raw[k]);
			continue;
		}
		raw[n++] = raw[k];
	}

	const char *score_text = PQgetvalue(res, i, 5);
	double score;
	if (presence_parse_score(score_text, &score) != 0) {
		rb_logf(RB_LOG_WARN, NULL, id, "roster: score '%s' not valid: using 0", score_text);
		score = 0;
	}
	presence_roster_row row = {
	        .id = id,
	        .suspended = strcmp(PQgetvalue(res, i, 2), "active") != 0,
	        .secret_hash = PQgetisnull(res, i, 3) ? NULL : PQgetvalue(res, i, 3),
	        .skills = raw,
	        .n_skills = n,
	        .score = score,
	};
	rv = presence_core_roster_upsert(r->core, &row);
	presence_strv_free(raw, n);
	return rv;
}

// ---------------------------------------------------------------------------------------------
// Queries

static void issue_load(presence_roster *r);
static void issue_scores(presence_roster *r);

static void retry_cb(uv_timer_t *t)
{
	issue_load(t->data);
}

static void retry_later(presence_roster *r)
{
	if (uv_is_active((uv_handle_t *)&r->retry))
		return;
	rb_warn("roster: loading again in %llu ms", (unsigned long long)r->retry_ms);
	uv_timer_start(&r->retry, retry_cb, r->retry_ms, 0);
	r->retry_ms = r->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : r->retry_ms * 2;
}

static void load_done(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	(void)db;
	if (err == RB_ECLOSED)
		return; // the roster is closing: it may be gone already
	presence_roster *r = arg;
	r->load_inflight = false;
	if (err != 0) {
		rb_error("roster: loading agents failed (%s): %s", sqlstate[0] ? sqlstate : "?",
		         res != NULL ? PQresultErrorMessage(res) : rb_err_str(err));
		retry_later(r);
		return;
	}
	int rows = PQntuples(res), skipped = 0;
	presence_core_roster_begin(r->core);
	for (int i = 0; i < rows; i++)
		if (apply_row(r, res, i) != 0)
			skipped++;
	presence_core_roster_end(r->core);
	r->retry_ms = RETRY_MIN_MS;
	rb_info("roster: %d agents loaded%s", rows - skipped,
	        skipped ? " (some rows skipped)" : "");
	if (r->changed != NULL)
		r->changed(r->changed_arg);
	// The roster carries only overall scores: program scores come from billing's view.
	issue_scores(r);
}

static void issue_load(presence_roster *r)
{
	if (r->load_inflight)
		return;
	int rv = rb_db_query(r->db, SELECT_AGENTS, 0, NULL, load_done, r);
	if (rv != 0) {
		rb_error("roster: cannot queue the roster query: %s", rb_err_str(rv));
		retry_later(r);
		return;
	}
	r->load_inflight = true;
}

static void reload_done(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	(void)db;
	reload_req *req = arg;
	if (err == RB_ECLOSED) {
		free(req);
		return;
	}
	presence_roster *r = req->r;
	uint64_t id = req->id;
	free(req);
	if (err != 0) {
		rb_logf(RB_LOG_ERROR, NULL, id, "roster: reloading agent failed (%s): %s",
		        sqlstate[0] ? sqlstate : "?",
		        res != NULL ? PQresultErrorMessage(res) : rb_err_str(err));
		// A full load catches up with whatever this missed.
		retry_later(r);
		return;
	}
	if (PQntuples(res) == 0) {
		rb_logf(RB_LOG_INFO, NULL, id, "roster: agent removed");
		presence_core_roster_remove(r->core, id);
	} else {
		apply_row(r, res, 0);
		rb_logf(RB_LOG_INFO, NULL, id, "roster: agent reloaded");
	}
	if (r->changed != NULL)
		r->changed(r->changed_arg);
}

// ---------------------------------------------------------------------------------------------
// Scores

// Applies one agent's rows [from, to) of the scores result. Returns what
// presence_core_scores_set returned (RB_EINVAL when no row of the agent was usable).
static int apply_scores(presence_roster *r, const PGresult *res, int from, int to, uint64_t id)
{
	presence_program_score ps[PRESENCE_MAX_PROGRAM_SCORES];
	size_t n = 0;
	bool has_score = false;
	double overall = 0;
	for (int i = from; i < to; i++) {
		const char *program = PQgetvalue(res, i, 1);
		double score;
		if (PQgetisnull(res, i, 2) ||
		    presence_parse_score(PQgetvalue(res, i, 2), &score) != 0) {
			rb_logf(RB_LOG_WARN, NULL, id,
			        "scores: score '%.32s' for program '%.64s' "
			        "not valid: ignored",
			        PQgetvalue(res, i, 2), program);
			continue;
		}
		if (program[0] == '\0') {
			has_score = true;
			overall = score;
			continue;
		}
		if (!rb_valid_id(program, PRESENCE_ID_MAX)) {
			rb_logf(RB_LOG_WARN, NULL, id, "scores: program '%.64s' not valid: ignored",
			        program);
			continue;
		}
		if (n == PRESENCE_MAX_PROGRAM_SCORES) {
			rb_logf(RB_LOG_WARN, NULL, id,
			        "scores: more than %d program scores: '%s' and later ignored",
			        PRESENCE_MAX_PROGRAM_SCORES, program);
			break;
		}
		ps[n++] = (presence_program_score){program, score};
	}
	if (!has_score && n == 0 && to > from)
		return RB_EINVAL;
	return presence_core_scores_set(r->core, id, has_score, overall, ps, n);
}

static void scores_done(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	(void)db;
	if (err == RB_ECLOSED)
		return; // the roster is closing: it may be gone already
	presence_roster *r = arg;
	r->scores_inflight = false;
	if (err != 0) {
		// 42P01: the view does not exist; 3F000: nor its schema. Billing's migration adds
		// it; until then agents keep the roster's overall score, and the load is tried
		// again on the next 'scores' notification or reconnect.
		if (strcmp(sqlstate, "42P01") == 0 || strcmp(sqlstate, "3F000") == 0) {
			if (!r->scores_missing)
				rb_warn("scores: billing.presence_scores does not exist yet: "
				        "agents "
				        "keep their roster scores");
			r->scores_missing = true;
		} else {
			rb_error("scores: loading failed (%s): %s", sqlstate[0] ? sqlstate : "?",
			         res != NULL ? PQresultErrorMessage(res) : rb_err_str(err));
			// A full load catches up, and loads the scores again after it.
			retry_later(r);
		}
		r->scores_again = false;
		return;
	}
	r->scores_missing = false;
	int rows = PQntuples(res), agents = 0, skipped = 0, unknown = 0;
	presence_core_scores_begin(r->core);
	for (int i = 0; i < rows;) {
		uint64_t id;
		int j = i + 1;
		if (parse_u64(PQgetvalue(res, i, 0), &id) != 0 || id == 0) {
			rb_warn("scores: agent id '%.32s' not valid: row skipped",
			        PQgetvalue(res, i, 0));
			skipped++;
			i = j;
			continue;
		}
		while (j < rows && strcmp(PQgetvalue(res, j, 0), PQgetvalue(res, i, 0)) == 0)
			j++;
		int rv = apply_scores(r, res, i, j, id);
		if (rv == 0)
			agents++;
		else if (rv == RB_ENOTFOUND)
			unknown++; // not in the roster yet: its 'agent:<id>' reload comes first
		else
			skipped++;
		if (rv == RB_EINVAL)
			rb_logf(RB_LOG_WARN, NULL, id,
			        "scores: no valid row: overall score kept, program scores dropped");
		i = j;
	}
	size_t changed = 0;
	presence_core_scores_end(r->core, &changed);
	rb_info("scores: %d agents loaded, %zu changed%s%s", agents, changed,
	        unknown ? ", some not in the roster" : "", skipped ? ", some skipped" : "");
	if (r->scores_again) {
		r->scores_again = false;
		issue_scores(r);
	}
}

static void issue_scores(presence_roster *r)
{
	if (r->scores_inflight) {
		r->scores_again = true;
		return;
	}
	int rv = rb_db_query(r->db, SELECT_SCORES, 0, NULL, scores_done, r);
	if (rv != 0) {
		rb_error("scores: cannot queue the scores query: %s", rb_err_str(rv));
		retry_later(r);
		return;
	}
	r->scores_inflight = true;
}

static void on_notify(rb_db *db, const char *channel, const char *payload, void *arg)
{
	presence_roster *r = arg;
	uint64_t id;
	if (strcmp(channel, ROSTER_CHANNEL) != 0)
		return;
	if (payload != NULL && strcmp(payload, SCORES_PAYLOAD) == 0) {
		issue_scores(r);
		return;
	}
	if (presence_parse_agent_payload(payload, &id) != 0)
		return;
	reload_req *req = malloc(sizeof(*req));
	if (req == NULL) {
		retry_later(r);
		return;
	}
	req->r = r;
	req->id = id;
	char idtext[24];
	snprintf(idtext, sizeof(idtext), "%" PRIu64, id);
	const char *params[1] = {idtext};
	int rv = rb_db_query(db, SELECT_AGENTS " WHERE id = $1", 1, params, reload_done, req);
	if (rv != 0) {
		free(req);
		rb_logf(RB_LOG_ERROR, NULL, id, "roster: cannot queue a reload: %s",
		        rb_err_str(rv));
		retry_later(r);
	}
}

static void on_up(rb_db *db, void *arg)
{
	(void)db;
	presence_roster *r = arg;
	// Notifications sent while the connection was down are lost: load everything again.
	issue_load(r);
	if (r->changed != NULL)
		r->changed(r->changed_arg);
}

int presence_roster_new(uv_loop_t *loop, presence_core *core, const char *conninfo,
                        void (*changed)(void *arg), void *arg, presence_roster **out)
{
	presence_roster *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return RB_ENOMEM;
	r->loop = loop;
	r->core = core;
	r->retry_ms = RETRY_MIN_MS;
	r->changed = changed;
	r->changed_arg = arg;
	int rv = rb_db_new(loop, conninfo, &r->db);
	if (rv != 0) {
		free(r);
		return rv;
	}
	rv = uv_timer_init(loop, &r->retry);
	if (rv != 0) {
		rb_db_free(r->db);
		free(r);
		return rb_err_from_errno(-rv);
	}
	r->retry.data = r;
	rb_db_on_notify(r->db, on_notify, r);
	rb_db_on_up(r->db, on_up, r);
	rv = rb_db_listen(r->db, ROSTER_CHANNEL);
	if (rv != 0)
		rb_error("roster: cannot listen on %s: %s", ROSTER_CHANNEL, rb_err_str(rv));
	issue_load(r);
	*out = r;
	return 0;
}

bool presence_roster_connected(const presence_roster *r)
{
	return r != NULL && rb_db_connected(r->db);
}

static void roster_closed(uv_handle_t *h)
{
	free(h->data);
}

void presence_roster_free(presence_roster *r)
{
	if (r == NULL)
		return;
	rb_db_free(r->db);
	r->db = NULL;
	uv_timer_stop(&r->retry);
	uv_close((uv_handle_t *)&r->retry, roster_closed);
}

rb_db *presence_roster_db(presence_roster *r)
{
	return r ? r->db : NULL;
}
