// Program settings from roster.programs: a full load at start and after every reconnect, and
// one program at a time on NOTIFY ringbid_roster 'program:<id>'.
#include "programs.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"

#define RETRY_MS    2000
#define ELEMENT_MAX 1024

#define PROGRAM_COLUMNS                                                                            \
	"SELECT id, required_skills, ring_timeout_s, wrap_up_s, max_wait_s, max_talk_s, "          \
	"priority, explore_share FROM roster.programs"
#define PROGRAM_NCOLUMNS 8

static const broker_limits schema_defaults = {
        .ring_timeout_s = 15,
        .wrap_up_s = 30,
        .max_wait_s = 600,
        .max_talk_s = 7200,
};

typedef struct lookup {
	broker_programs *p;
	broker_lookup_fn fn; // NULL: a NOTIFY refresh
	void *arg;
	char id[BROKER_ID_MAX + 1];
} lookup;

static void free_program(broker_program *prog)
{
	broker_skills_free(prog->skills, prog->nskills);
	free(prog);
}

static void clear_table(broker_program **table)
{
	broker_program *prog, *tmp;
	HASH_ITER(hh, *table, prog, tmp)
	{
		HASH_DEL(*table, prog);
		free_program(prog);
	}
}

void broker_programs_init(broker_programs *p)
{
	memset(p, 0, sizeof(*p));
}

static const char *skip_ws(const char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	return s;
}

static int push_element(char ***items, size_t *n, size_t max, const char *el, size_t len)
{
	if (*n >= max)
		return RB_ETOOBIG;
	char **grown = realloc(*items, (*n + 1) * sizeof(**items));
	if (grown == NULL)
		return RB_ENOMEM;
	*items = grown;
	char *copy = strndup(el, len);
	if (copy == NULL)
		return RB_ENOMEM;
	(*items)[(*n)++] = copy;
	return 0;
}

// One element starting at *pp: quoted ("..." with backslash escapes) or bare (up to ',' or
// '}', where backslash also escapes). Bare NULL is SQL NULL and yields no element.
static int parse_element(const char **pp, char *buf, size_t *len, bool *is_null)
{
	const char *s = *pp;
	size_t n = 0;
	*is_null = false;
	if (*s == '"') {
		s++;
		while (*s != '"') {
			if (*s == '\0')
				return RB_EINVAL;
			if (*s == '\\') {
				s++;
				if (*s == '\0')
					return RB_EINVAL;
			}
			if (n >= ELEMENT_MAX)
				return RB_ETOOBIG;
			buf[n++] = *s++;
		}
		s++;
	} else {
		size_t last_kept = 0;
		while (*s != ',' && *s != '}') {
			if (*s == '\0' || *s == '{' || *s == '"')
				return RB_EINVAL;
			bool escaped = false;
			if (*s == '\\') {
				s++;
				if (*s == '\0')
					return RB_EINVAL;
				escaped = true;
			}
			if (n >= ELEMENT_MAX)
				return RB_ETOOBIG;
			buf[n++] = *s;
			if (escaped || !isspace((unsigned char)*s))
				last_kept = n;
			s++;
		}
		n = last_kept; // trailing blanks are not part of a bare element
		if (n == 0)
			return RB_EINVAL;
		*is_null = n == 4 && strncasecmp(buf, "NULL", 4) == 0;
	}
	*pp = s;
	*len = n;
	return 0;
}

int broker_pg_text_array(const char *text, size_t max, char ***out, size_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (text == NULL)
		return RB_EINVAL;
	const char *s = skip_ws(text);
	if (*s == '[') { // explicit bounds: "[0:1]={a,b}"
		s = strchr(s, '=');
		if (s == NULL)
			return RB_EINVAL;
		s = skip_ws(s + 1);
	}
	if (*s++ != '{')
		return RB_EINVAL;
	char **items = NULL;
	size_t n = 0;
	char buf[ELEMENT_MAX];
	int rc = 0;
	s = skip_ws(s);
	if (*s == '}') {
		s++;
	} else {
		for (;;) {
			s = skip_ws(s);
			size_t len = 0;
			bool is_null = false;
			if ((rc = parse_element(&s, buf, &len, &is_null)) != 0)
				break;
			if (!is_null && (rc = push_element(&items, &n, max, buf, len)) != 0)
				break;
			s = skip_ws(s);
			if (*s == ',') {
				s++;
				continue;
			}
			if (*s == '}') {
				s++;
				break;
			}
			rc = RB_EINVAL;
			break;
		}
	}
	if (rc == 0 && *skip_ws(s) != '\0')
		rc = RB_EINVAL;
	if (rc != 0) {
		broker_skills_free(items, n);
		return rc;
	}
	*out = items;
	*nout = n;
	return 0;
}

static int parse_int(const char *text, long min, long max, long *out)
{
	if (text == NULL || *text == '\0')
		return RB_EINVAL;
	errno = 0;
	char *end = NULL;
	long v = strtol(text, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return RB_EINVAL;
	*out = v;
	return 0;
}

// A share in [0, 1] as numeric text ("0.200", "1", "0").
static int parse_share(const char *text, double *out)
{
	if (text == NULL || *text == '\0' || isspace((unsigned char)*text))
		return RB_EINVAL;
	errno = 0;
	char *end = NULL;
	double v = strtod(text, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 || v > 1)
		return RB_EINVAL;
	*out = v;
	return 0;
}

int broker_programs_put(broker_programs *p, const broker_program_row *row)
{
	const char *id = row->id;
	if (id == NULL || !rb_valid_id(id, BROKER_ID_MAX))
		return RB_EINVAL;
	long r, w, mw, mt, pr;
	double share;
	if (parse_int(row->ring, 1, 300, &r) || parse_int(row->wrap, 0, 3600, &w) ||
	    parse_int(row->max_wait, 1, 86400, &mw) || parse_int(row->max_talk, 1, 86400, &mt) ||
	    parse_int(row->priority, INT32_MIN, INT32_MAX, &pr) ||
	    parse_share(row->explore_share, &share))
		return RB_EINVAL;
	char **raw = NULL;
	size_t nraw = 0;
	int rc = broker_pg_text_array(row->skills, BROKER_SKILLS_MAX, &raw, &nraw);
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < nraw; i++) {
		if (!rb_valid_id(raw[i], BROKER_ID_MAX)) {
			broker_skills_free(raw, nraw);
			return RB_EINVAL;
		}
	}
	broker_program *prog = calloc(1, sizeof(*prog));
	if (prog == NULL) {
		broker_skills_free(raw, nraw);
		return RB_ENOMEM;
	}
	rc = broker_skills_merge((const char *const *)raw, nraw, NULL, 0, &prog->skills,
	                         &prog->nskills);
	broker_skills_free(raw, nraw);
	if (rc != 0) {
		free(prog);
		return rc;
	}
	strcpy(prog->id, id);
	prog->limits.ring_timeout_s = (uint32_t)r;
	prog->limits.wrap_up_s = (uint32_t)w;
	prog->limits.max_wait_s = (uint32_t)mw;
	prog->limits.max_talk_s = (uint32_t)mt;
	prog->priority = (int32_t)pr;
	prog->explore_share = share;
	broker_programs_remove(p, id);
	HASH_ADD_STR(p->by_id, id, prog);
	return 0;
}

void broker_programs_remove(broker_programs *p, const char *id)
{
	broker_program *old = NULL;
	HASH_FIND_STR(p->by_id, id, old);
	if (old != NULL) {
		HASH_DEL(p->by_id, old);
		free_program(old);
	}
}

const broker_program *broker_programs_find(const broker_programs *p, const char *id)
{
	broker_program *prog = NULL;
	HASH_FIND_STR(p->by_id, id, prog);
	return prog;
}

void broker_programs_limits(const broker_programs *p, const char *id, broker_limits *out)
{
	const broker_program *prog = broker_programs_find(p, id);
	*out = prog ? prog->limits : schema_defaults;
}

bool broker_programs_ready(const broker_programs *p)
{
	return p->loaded && p->db != NULL && rb_db_connected(p->db);
}

// Puts row i of res into p; a bad row is logged and left out.
static int put_row(broker_programs *p, const PGresult *res, int i)
{
	const char *v[PROGRAM_NCOLUMNS];
	for (int c = 0; c < PROGRAM_NCOLUMNS; c++)
		v[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
	broker_program_row row = {
	        .id = v[0],
	        .skills = v[1],
	        .ring = v[2],
	        .wrap = v[3],
	        .max_wait = v[4],
	        .max_talk = v[5],
	        .priority = v[6],
	        .explore_share = v[7],
	};
	int rc = broker_programs_put(p, &row);
	if (rc == RB_ENOMEM)
		return rc;
	if (rc != 0)
		rb_logf(RB_LOG_ERROR, NULL, 0, "program '%s' has unusable settings (%s): left out",
		        v[0] && rb_valid_id(v[0], BROKER_ID_MAX) ? v[0] : "?", rb_err_str(rc));
	return 0;
}

static void load_all(broker_programs *p);

static void retry_cb(uv_timer_t *t)
{
	load_all(t->data);
}

static void load_all_done(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	broker_programs *p = arg;
	p->loading = false;
	if (p->closing)
		return;
	if (err != 0) {
		rb_logf(RB_LOG_WARN, NULL, 0, "loading programs failed (%s%s%s); retrying",
		        rb_err_str(err), sqlstate[0] ? ", SQLSTATE " : "", sqlstate);
		uv_timer_start(&p->retry, retry_cb, RETRY_MS, 0);
		return;
	}
	// The new table is built aside so a failure leaves the old one whole.
	broker_programs fresh;
	broker_programs_init(&fresh);
	int rows = PQntuples(res);
	for (int i = 0; i < rows; i++) {
		if (put_row(&fresh, res, i) != 0) {
			clear_table(&fresh.by_id);
			rb_logf(RB_LOG_ERROR, NULL, 0, "loading programs: out of memory");
			uv_timer_start(&p->retry, retry_cb, RETRY_MS, 0);
			return;
		}
	}
	clear_table(&p->by_id);
	p->by_id = fresh.by_id;
	bool first = !p->loaded;
	p->loaded = true;
	if (first)
		rb_logf(RB_LOG_INFO, NULL, 0, "loaded %u programs", HASH_COUNT(p->by_id));
	if (p->changed)
		p->changed(p, NULL, p->changed_arg);
	if (p->reload) {
		p->reload = false;
		load_all(p);
	}
	(void)db;
}

static void load_all(broker_programs *p)
{
	if (p->closing)
		return;
	if (p->loading) {
		p->reload = true;
		return;
	}
	int rc = rb_db_query(p->db, PROGRAM_COLUMNS, 0, NULL, load_all_done, p);
	if (rc != 0) {
		rb_logf(RB_LOG_WARN, NULL, 0, "loading programs: %s; retrying", rb_err_str(rc));
		uv_timer_start(&p->retry, retry_cb, RETRY_MS, 0);
		return;
	}
	p->loading = true;
}

static void one_done(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	lookup *lk = arg;
	broker_programs *p = lk->p;
	(void)db;
	if (lk->fn != NULL)
		p->lookups--;
	if (p->closing) {
		if (lk->fn)
			lk->fn(RB_ECLOSED, NULL, lk->arg);
		free(lk);
		return;
	}
	if (err != 0) {
		rb_logf(RB_LOG_WARN, NULL, 0, "reading program '%s' failed (%s%s%s)", lk->id,
		        rb_err_str(err), sqlstate[0] ? ", SQLSTATE " : "", sqlstate);
		if (lk->fn)
			lk->fn(err, NULL, lk->arg);
		free(lk);
		return;
	}
	int rc = 0;
	if (PQntuples(res) > 0) {
		rc = put_row(p, res, 0);
	} else {
		broker_programs_remove(p, lk->id);
	}
	const broker_program *prog = broker_programs_find(p, lk->id);
	if (rc == 0 && p->changed)
		p->changed(p, lk->id, p->changed_arg);
	if (lk->fn)
		lk->fn(rc != 0 ? rc : prog ? 0 : RB_ENOTFOUND, prog, lk->arg);
	free(lk);
}

static int query_one(broker_programs *p, const char *id, broker_lookup_fn fn, void *arg)
{
	lookup *lk = calloc(1, sizeof(*lk));
	if (lk == NULL)
		return RB_ENOMEM;
	lk->p = p;
	lk->fn = fn;
	lk->arg = arg;
	strcpy(lk->id, id);
	const char *params[1] = {id};
	int rc = rb_db_query(p->db, PROGRAM_COLUMNS " WHERE id = $1", 1, params, one_done, lk);
	if (rc != 0) {
		free(lk);
		return rc;
	}
	if (fn != NULL)
		p->lookups++;
	return 0;
}

int broker_programs_lookup(broker_programs *p, const char *id, broker_lookup_fn fn, void *arg)
{
	if (p->closing || p->db == NULL)
		return RB_ECLOSED;
	if (!rb_valid_id(id, BROKER_ID_MAX))
		return RB_EINVAL;
	if (p->lookups >= BROKER_LOOKUPS_MAX)
		return RB_EBUSY;
	return query_one(p, id, fn, arg);
}

static void on_notify(rb_db *db, const char *channel, const char *payload, void *arg)
{
	broker_programs *p = arg;
	(void)db;
	(void)channel;
	if (payload == NULL || strncmp(payload, "program:", 8) != 0)
		return;
	const char *id = payload + 8;
	if (!rb_valid_id(id, BROKER_ID_MAX)) {
		rb_logf(RB_LOG_WARN, NULL, 0, "roster notification for an unusable program id");
		return;
	}
	int rc = query_one(p, id, NULL, NULL);
	if (rc != 0)
		rb_logf(RB_LOG_WARN, NULL, 0, "cannot refresh program '%s': %s", id,
		        rb_err_str(rc));
}

// Notifications sent while the connection was down are lost: every (re)connect reloads all.
static void on_up(rb_db *db, void *arg)
{
	(void)db;
	load_all(arg);
}

int broker_programs_start(broker_programs *p, uv_loop_t *loop, const char *conninfo)
{
	p->loop = loop;
	int rc = uv_timer_init(loop, &p->retry);
	if (rc != 0)
		return RB_EIO;
	p->retry.data = p;
	p->timer_init = true;
	rc = rb_db_new(loop, conninfo, &p->db);
	if (rc != 0)
		return rc;
	rb_db_on_notify(p->db, on_notify, p);
	rb_db_on_up(p->db, on_up, p);
	return rb_db_listen(p->db, "ringbid_roster");
}

void broker_programs_on_change(broker_programs *p, broker_programs_fn fn, void *arg)
{
	p->changed = fn;
	p->changed_arg = arg;
}

void broker_programs_fini(broker_programs *p)
{
	p->closing = true;
	if (p->timer_init) {
		uv_close((uv_handle_t *)&p->retry, NULL);
		p->timer_init = false;
	}
	rb_db_free(p->db);
	p->db = NULL;
	clear_table(&p->by_id);
}
