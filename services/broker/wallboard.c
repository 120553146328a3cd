// The live wallboard: figures per program from the book and the rolling windows, names and top
// agents from PostgreSQL, served as JSON and as one self-contained page.
#include "wallboard.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "broker.h"
#include "rb_config.h"
#include "rb_db.h"
#include "rb_err.h"
#include "rb_http.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"

static const char *const agent_states[BROKER_CALL_NSTATES] = {
        "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP",
};

// Program names, the overall top list and each program's top list (agents who have every
// skill the program requires, as the auction's eligibility asks). One statement, so that the
// board never shows names and lists from two different moments.
static const char top_sql[] =
        "SELECT kind, program, agent_id, name, score FROM ("
        " SELECT 'p' AS kind, id AS program, NULL::bigint AS agent_id, name,"
        "        NULL::numeric AS score FROM roster.programs"
        " UNION ALL"
        " SELECT 'a', '', t.id, t.name, t.score FROM"
        "  (SELECT id, name, score FROM roster.agents WHERE status = 'active'"
        "   ORDER BY score DESC, id LIMIT 10) t"
        " UNION ALL"
        " SELECT 'a', p.id, t.id, t.name, t.score FROM roster.programs p CROSS JOIN LATERAL"
        "  (SELECT a.id, a.name, a.score FROM roster.agents a"
        "   WHERE a.status = 'active' AND a.skills @> p.required_skills"
        "   ORDER BY a.score DESC, a.id LIMIT 5) t"
        ") r ORDER BY kind DESC, program, score DESC, agent_id";

// --- programs on the board -------------------------------------------------------------------

static void agents_clear(broker_wb_agent *a, size_t *n)
{
	for (size_t i = 0; i < *n; i++) {
		free(a[i].name);
		a[i].name = NULL;
	}
	*n = 0;
}

static void program_free(broker_wb_program *p)
{
	agents_clear(p->top, &p->ntop);
	free(p->name);
	free(p);
}

// The board's entry for id, made when create is set. NULL: unknown, or out of memory.
static broker_wb_program *program_get(broker_wallboard *w, const char *id, bool create)
{
	broker_wb_program *p = NULL;
	HASH_FIND_STR(w->programs, id, p);
	if (p != NULL || !create)
		return p;
	size_t len = strlen(id);
	if (len > BROKER_ID_MAX)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	memcpy(p->id, id, len + 1);
	HASH_ADD_STR(w->programs, id, p);
	return p;
}

void broker_wallboard_init(broker_wallboard *w)
{
	memset(w, 0, sizeof(*w));
}

void broker_wallboard_fini(broker_wallboard *w)
{
	broker_wb_program *p, *tmp;
	HASH_ITER(hh, w->programs, p, tmp)
	{
		HASH_DEL(w->programs, p);
		program_free(p);
	}
	agents_clear(w->top, &w->ntop);
	memset(w, 0, sizeof(*w));
}

// --- folding ended calls ---------------------------------------------------------------------

int broker_wallboard_fold(broker_wallboard *w, broker_book *book, uint64_t now_us)
{
	// The ended list is ordered by end time: what ended since the last fold is its tail.
	broker_call *first = NULL;
	for (broker_call *c = TAILQ_LAST(&book->ended, broker_ended_list);
	     c != NULL && c->ended_us > w->folded_end_us;
	     c = TAILQ_PREV(c, broker_ended_list, ended_entry))
		first = c;
	for (broker_call *c = first; c != NULL; c = TAILQ_NEXT(c, ended_entry)) {
		broker_wb_program *p = program_get(w, c->program, true);
		if (p == NULL)
			return RB_ENOMEM;
		broker_kpi_window_add(&p->window, c, now_us);
		w->folded_end_us = c->ended_us;
	}
	return 0;
}

// --- names and top agents --------------------------------------------------------------------

enum {
	COL_KIND,
	COL_PROGRAM,
	COL_AGENT,
	COL_NAME,
	COL_SCORE,
	NCOLS
};

static bool parse_agent_id(const char *s, uint64_t *out)
{
	if (s == NULL || *s < '0' || *s > '9')
		return false;
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v == 0)
		return false;
	*out = v;
	return true;
}

static bool parse_score(const char *s, double *out)
{
	if (s == NULL || *s == '\0')
		return false;
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !(v >= 0.0 && v <= 100.0))
		return false;
	*out = v;
	return true;
}

static bool valid_name(const char *s)
{
	return s != NULL && s[0] != '\0' && strlen(s) <= BROKER_WB_NAME_MAX;
}

static bool valid_row(const char *const *r)
{
	const char *kind = r[COL_KIND], *prog = r[COL_PROGRAM];
	uint64_t id;
	double score;
	if (kind == NULL || prog == NULL || !valid_name(r[COL_NAME]))
		return false;
	if (strcmp(kind, "p") == 0)
		return rb_valid_id(prog, BROKER_ID_MAX);
	if (strcmp(kind, "a") != 0)
		return false;
	return (prog[0] == '\0' || rb_valid_id(prog, BROKER_ID_MAX)) &&
	       parse_agent_id(r[COL_AGENT], &id) && parse_score(r[COL_SCORE], &score);
}

static int put_agent(broker_wb_agent *list, size_t *n, size_t max, const char *const *r)
{
	if (*n >= max)
		return 0;
	broker_wb_agent *a = &list[*n];
	parse_agent_id(r[COL_AGENT], &a->id);
	parse_score(r[COL_SCORE], &a->score);
	if ((a->name = strdup(r[COL_NAME])) == NULL)
		return RB_ENOMEM;
	(*n)++;
	return 0;
}

int broker_wallboard_load(broker_wallboard *w, const char *const *cells, size_t nrows,
                          uint64_t now_us)
{
	for (size_t i = 0; i < nrows; i++) {
		if (!valid_row(cells + i * NCOLS))
			return RB_EINVAL;
	}
	broker_wb_program *p, *tmp;
	HASH_ITER(hh, w->programs, p, tmp)
	{
		p->in_db = false;
		free(p->name);
		p->name = NULL;
		agents_clear(p->top, &p->ntop);
	}
	agents_clear(w->top, &w->ntop);
	w->loaded_us = now_us;
	for (size_t i = 0; i < nrows; i++) {
		const char *const *r = cells + i * NCOLS;
		int rc;
		if (r[COL_KIND][0] == 'a' && r[COL_PROGRAM][0] == '\0') {
			rc = put_agent(w->top, &w->ntop, BROKER_WB_TOP_MAX, r);
		} else if ((p = program_get(w, r[COL_PROGRAM], true)) == NULL) {
			rc = RB_ENOMEM;
		} else if (r[COL_KIND][0] == 'a') {
			rc = put_agent(p->top, &p->ntop, BROKER_WB_TOP_PROGRAM_MAX, r);
		} else {
			p->in_db = true;
			free(p->name);
			p->name = strdup(r[COL_NAME]);
			rc = p->name ? 0 : RB_ENOMEM;
		}
		if (rc != 0)
			return rc;
	}
	return 0;
}

// --- the document ------------------------------------------------------------------------------

// Collects the live calls per program: waiting, ringing, connected, the oldest arrival, and
// the answers of connected calls made within the window (their outcome is not folded until
// they end).
static int live_pass(broker_wallboard *w, broker_book *book, uint64_t now_us)
{
	broker_wb_program *p, *tmp;
	HASH_ITER(hh, w->programs, p, tmp)
	{
		p->waiting = p->ringing = p->connected = 0;
		p->oldest_arrived_us = 0;
		memset(&p->live, 0, sizeof(p->live));
	}
	for (broker_call *c = broker_book_waiting_first(book); c != NULL;
	     c = broker_book_waiting_next(book, c)) {
		if ((p = program_get(w, c->program, true)) == NULL)
			return RB_ENOMEM;
		p->waiting++;
		if (c->state == BROKER_CALL_OFFERED)
			p->ringing++;
		if (p->oldest_arrived_us == 0 || c->arrived_us < p->oldest_arrived_us)
			p->oldest_arrived_us = c->arrived_us;
	}
	broker_call *c, *ctmp;
	HASH_ITER(hh_agent, book->by_agent, c, ctmp)
	{
		if (c->state != BROKER_CALL_CONNECTED)
			continue;
		if ((p = program_get(w, c->program, true)) == NULL)
			return RB_ENOMEM;
		p->connected++;
		uint64_t at = c->answered_us > now_us ? now_us : c->answered_us;
		if (at / BROKER_KPI_MINUTE_US + BROKER_KPI_WINDOW_MIN >
		    now_us / BROKER_KPI_MINUTE_US)
			broker_kpi_outcome(c, &p->live);
	}
	return 0;
}

static int by_id(const void *a, const void *b)
{
	const broker_wb_program *pa = *(const broker_wb_program *const *)a;
	const broker_wb_program *pb = *(const broker_wb_program *const *)b;
	return strcmp(pa->id, pb->id);
}

// Counts and figures of one row of the board. ok turns false when memory ran out.
static void put(json_t *o, const char *key, json_t *v, bool *ok)
{
	if (v == NULL || json_object_set_new(o, key, v) != 0)
		*ok = false;
}

static json_t *jstr(const char *s)
{
	json_t *v = json_string(s);
	// A name that is not UTF-8 never reaches PostgreSQL's UTF8 roster; show it as empty
	// rather than fail the whole board.
	return v != NULL ? v : json_string("");
}

static void put_figures(json_t *o, const broker_kpi_tally *t, uint32_t waiting, uint32_t ringing,
                        uint32_t connected, uint64_t oldest_us, uint64_t now_us, bool *ok)
{
	double sl, ar;
	uint64_t asa;
	uint64_t longest =
	        waiting && oldest_us && oldest_us < now_us ? (now_us - oldest_us) / 1000u : 0;
	put(o, "calls_waiting", json_integer(waiting), ok);
	put(o, "calls_ringing", json_integer(ringing), ok);
	put(o, "calls_connected", json_integer(connected), ok);
	put(o, "longest_wait_ms", json_integer((json_int_t)longest), ok);
	put(o, "answered", json_integer((json_int_t)t->answered), ok);
	put(o, "answered_within_20s", json_integer((json_int_t)t->answered_in_sl), ok);
	put(o, "abandoned", json_integer((json_int_t)t->abandoned), ok);
	put(o, "abandoned_within_20s", json_integer((json_int_t)t->abandoned_in_sl), ok);
	put(o, "overflow", json_integer((json_int_t)t->overflow), ok);
	put(o, "service_level", broker_kpi_service_level(t, &sl) ? json_real(sl) : json_null(), ok);
	put(o, "asa_ms",
	    broker_kpi_tally_asa_ms(t, &asa) ? json_integer((json_int_t)asa) : json_null(), ok);
	put(o, "abandon_rate", broker_kpi_abandon_rate(t, &ar) ? json_real(ar) : json_null(), ok);
}

static json_t *agents_json(const broker_wb_agent *a, size_t n, bool *ok)
{
	json_t *list = json_array();
	if (list == NULL) {
		*ok = false;
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_object();
		if (e == NULL || json_array_append_new(list, e) != 0) {
			*ok = false;
			break;
		}
		put(e, "id", json_integer((json_int_t)a[i].id), ok);
		put(e, "name", jstr(a[i].name), ok);
		put(e, "score", json_real(a[i].score), ok);
	}
	return list;
}

static json_t *time_json(uint64_t us)
{
	char iso[40];
	return us ? json_string(rb_time_iso(us, iso, sizeof(iso))) : json_null();
}

// Ensures every program the broker knows has a row, then drops rows nobody needs any more: not
// in the roster, not known, nothing in the window, no live call.
static int list_programs(broker_wallboard *w, const broker_programs *programs, uint64_t now_us,
                         broker_wb_program ***out, size_t *n)
{
	if (programs != NULL) {
		const broker_program *bp, *btmp;
		HASH_ITER(hh, programs->by_id, bp, btmp)
		{
			if (program_get(w, bp->id, true) == NULL)
				return RB_ENOMEM;
		}
	}
	broker_wb_program *p, *tmp;
	HASH_ITER(hh, w->programs, p, tmp)
	{
		broker_kpi_tally t;
		broker_kpi_window_sum(&p->window, now_us, &t);
		bool active = t.answered || t.abandoned || t.overflow || p->waiting || p->connected;
		bool known = programs != NULL && broker_programs_find(programs, p->id) != NULL;
		if (!active && !known && !p->in_db) {
			HASH_DEL(w->programs, p);
			program_free(p);
		}
	}
	*n = HASH_COUNT(w->programs);
	*out = NULL;
	if (*n == 0)
		return 0;
	broker_wb_program **list = malloc(*n * sizeof(*list));
	if (list == NULL)
		return RB_ENOMEM;
	size_t i = 0;
	HASH_ITER(hh, w->programs, p, tmp)
	{
		list[i++] = p;
	}
	qsort(list, *n, sizeof(*list), by_id);
	*out = list;
	return 0;
}

int broker_wallboard_json(broker_wallboard *w, broker_book *book, const broker_programs *programs,
                          const broker_kpi_now *now, char **out)
{
	*out = NULL;
	uint64_t now_us = now->now_us;
	broker_wb_program **list = NULL;
	size_t n = 0;
	int rc = broker_wallboard_fold(w, book, now_us);
	if (rc == 0)
		rc = live_pass(w, book, now_us);
	if (rc == 0)
		rc = list_programs(w, programs, now_us, &list, &n);
	if (rc != 0)
		return rc;

	bool ok = true;
	json_t *doc = json_object(), *rows = json_array(), *overall = json_object();
	if (doc == NULL || rows == NULL || overall == NULL) {
		json_decref(rows);
		json_decref(overall);
		ok = false;
	} else {
		put(doc, "programs", rows, &ok);
		put(doc, "overall", overall, &ok);
	}
	broker_kpi_tally all;
	memset(&all, 0, sizeof(all));
	uint32_t waiting = 0, ringing = 0, connected = 0;
	uint64_t oldest = 0;
	for (size_t i = 0; ok && i < n; i++) {
		broker_wb_program *p = list[i];
		broker_kpi_tally t;
		broker_kpi_window_sum(&p->window, now_us, &t);
		broker_kpi_tally_add(&t, &p->live);
		broker_kpi_tally_add(&all, &t);
		waiting += p->waiting;
		ringing += p->ringing;
		connected += p->connected;
		if (p->oldest_arrived_us && (oldest == 0 || p->oldest_arrived_us < oldest))
			oldest = p->oldest_arrived_us;

		json_t *row = json_object();
		if (row == NULL || json_array_append_new(rows, row) != 0) {
			ok = false;
			break;
		}
		put(row, "id", json_string(p->id), &ok);
		put(row, "name", p->name ? jstr(p->name) : json_null(), &ok);
		put(row, "known", json_boolean(programs && broker_programs_find(programs, p->id)),
		    &ok);
		put_figures(row, &t, p->waiting, p->ringing, p->connected, p->oldest_arrived_us,
		            now_us, &ok);
		// Presence reports agents overall only; per program the broker knows the agents
		// its own calls hold.
		json_t *agents = json_object();
		put(row, "agents", agents, &ok);
		if (agents != NULL) {
			put(agents, "RESERVED", json_integer(p->ringing), &ok);
			put(agents, "ON_CALL", json_integer(p->connected), &ok);
		}
		put(row, "top_agents", agents_json(p->top, p->ntop, &ok), &ok);
	}
	free(list);
	if (ok) {
		put_figures(overall, &all, waiting, ringing, connected, oldest, now_us, &ok);
		json_t *agents = json_null();
		if (now->have_agents) {
			agents = json_object();
			for (int s = 0; agents != NULL && s < BROKER_CALL_NSTATES; s++)
				put(agents, agent_states[s], json_integer(now->agents[s]), &ok);
		}
		put(overall, "agents", agents, &ok);
		put(overall, "top_agents", agents_json(w->top, w->ntop, &ok), &ok);

		json_t *target = json_object();
		put(doc, "service_level_target", target, &ok);
		if (target != NULL) {
			put(target, "seconds", json_integer(BROKER_KPI_SERVICE_LEVEL_US / 1000000u),
			    &ok);
			put(target, "goal", json_real(BROKER_WB_SL_GOAL_PCT / 100.0), &ok);
		}
		put(doc, "as_of", time_json(now_us), &ok);
		put(doc, "as_of_us", json_integer((json_int_t)now_us), &ok);
		put(doc, "window_minutes", json_integer(BROKER_KPI_WINDOW_MIN), &ok);
		put(doc, "presence", json_boolean(now->have_agents), &ok);
		put(doc, "top_agents_as_of", time_json(w->loaded_us), &ok);
	}
	if (ok)
		*out = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6));
	json_decref(doc);
	return *out != NULL ? 0 : RB_ENOMEM;
}

// --- the page ----------------------------------------------------------------------------------

// One document with its style and script inline: nothing is fetched from anywhere but the
// broker, so the board works on a screen with no internet. Data reaches the page only through
// textContent, never as markup.
static const char page[] =
        "<!doctype html>\n"
        "<html lang=\"en\">\n"
        "<head>\n"
        "<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>ringbid wallboard</title>\n"
        "<style>\n"
        ":root {\n"
        "  --bg: #0b0f14; --panel: #141b24; --line: #243040; --text: #e8eef5; --dim: #8a9bb0;\n"
        "  --good: #3ddc84; --warn: #ffc24b; --bad: #ff5c5c; --accent: #5cb8ff;\n"
        "}\n"
        "* { box-sizing: border-box; }\n"
        "html, body { margin: 0; background: var(--bg); color: var(--text); }\n"
        "body {\n"
        "  font-family: \"DejaVu Sans\", \"Liberation Sans\", system-ui, sans-serif;\n"
        "  font-variant-numeric: tabular-nums; padding: 1.2vw 1.6vw; min-height: 100vh;\n"
        "}\n"
        "header { display: flex; align-items: center; gap: 2vw; margin-bottom: 1vw; }\n"
        "header h1 { font-size: clamp(1.2rem, 2.2vw, 3rem); margin: 0; font-weight: 600; flex: 1; "
        "}\n"
        "header h1 span { color: var(--dim); font-weight: 400; }\n"
        "#clock { font-size: clamp(1.2rem, 2.2vw, 3rem); color: var(--dim); }\n"
        "#status {\n"
        "  font-size: clamp(1rem, 1.6vw, 2.2rem); font-weight: 700; padding: .3em .8em; "
        "border-radius: .4em;\n"
        "  background: #123524; color: var(--good); letter-spacing: .05em;\n"
        "}\n"
        "body.stale #status { background: var(--bad); color: #fff; animation: blink 1s steps(2) "
        "infinite; }\n"
        "@keyframes blink { 50% { opacity: .55; } }\n"
        "body.stale main { opacity: .35; filter: grayscale(1); }\n"
        ".row { display: grid; gap: 1vw; margin-bottom: 1vw; }\n"
        ".tiles { grid-template-columns: repeat(5, 1fr); }\n"
        ".agents { grid-template-columns: repeat(6, 1fr); }\n"
        ".tile { background: var(--panel); border: 1px solid var(--line); border-radius: .6vw; "
        "padding: .8vw 1vw; }\n"
        ".tile .label { color: var(--dim); font-size: clamp(.8rem, 1.25vw, 1.8rem); "
        "text-transform: uppercase; letter-spacing: .04em; }\n"
        ".tile .value { font-size: clamp(2rem, 5.6vw, 8rem); font-weight: 700; line-height: 1.1; "
        "white-space: nowrap; }\n"
        ".agents .tile .value { font-size: clamp(1.6rem, 3.6vw, 5.5rem); }\n"
        ".tile .sub { color: var(--dim); font-size: clamp(.7rem, 1vw, 1.4rem); }\n"
        ".good { color: var(--good); } .warn { color: var(--warn); } .bad { color: var(--bad); }\n"
        ".bottom { display: grid; grid-template-columns: minmax(0, 3fr) minmax(16em, 1fr); gap: "
        "1vw; align-items: start; }\n"
        "section { min-width: 0; background: var(--panel); border: 1px solid var(--line); "
        "border-radius: .6vw; padding: .8vw 1vw; }\n"
        "section h2 { margin: 0 0 .5vw; font-size: clamp(.9rem, 1.4vw, 2rem); color: var(--dim); "
        "font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }\n"
        "table { width: 100%; border-collapse: collapse; font-size: clamp(.9rem, 1.5vw, 2.2rem); "
        "}\n"
        "th { color: var(--dim); font-weight: 400; text-align: right; padding: .2em .5em; "
        "border-bottom: 1px solid var(--line); font-size: .75em; }\n"
        "td { text-align: right; padding: .25em .5em; border-bottom: 1px solid var(--line); "
        "white-space: nowrap; }\n"
        "th:first-child, td:first-child { text-align: left; }\n"
        "td.name { white-space: normal; }\n"
        "td.name small { color: var(--dim); margin-left: .4em; font-size: .7em; white-space: "
        "nowrap; }\n"
        ".top { color: var(--dim); font-size: .62em; line-height: 1.5; }\n"
        ".top span { white-space: nowrap; margin-right: .9em; }\n"
        ".top b { color: var(--accent); }\n"
        "ol { margin: 0; padding-left: 0; list-style-position: inside; font-size: clamp(.9rem, "
        "1.5vw, 2.2rem); }\n"
        "ol li { padding: .15em 0; border-bottom: 1px solid var(--line); white-space: nowrap; "
        "overflow: hidden; text-overflow: ellipsis; }\n"
        "ol li .score { float: right; margin-left: .5em; color: var(--accent); font-weight: 700; "
        "}\n"
        ".empty { color: var(--dim); font-style: italic; }\n"
        "footer { margin-top: .8vw; color: var(--dim); font-size: clamp(.7rem, .95vw, 1.3rem); }\n"
        "</style>\n"
        "</head>\n"
        "<body>\n"
        "<header>\n"
        "  <h1>ringbid <span>&middot; live wallboard</span></h1>\n"
        "  <div id=\"clock\"></div>\n"
        "  <div id=\"status\">CONNECTING</div>\n"
        "</header>\n"
        "<main>\n"
        "  <div class=\"row tiles\" id=\"overall\">\n"
        "    <div class=\"tile\"><div class=\"label\">Calls waiting</div><div class=\"value\" "
        "data-key=\"calls_waiting\">&ndash;</div><div class=\"sub\">ringing <b "
        "data-key=\"calls_ringing\">&ndash;</b> &middot; connected <b "
        "data-key=\"calls_connected\">&ndash;</b></div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Longest wait</div><div class=\"value\" "
        "data-key=\"longest_wait_ms\">&ndash;</div><div class=\"sub\">minutes:seconds</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Service level</div><div class=\"value\" "
        "data-key=\"service_level\">&ndash;</div><div class=\"sub\" "
        "id=\"sl-target\">target</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">ASA</div><div class=\"value\" "
        "data-key=\"asa_ms\">&ndash;</div><div class=\"sub\">answered <b "
        "data-key=\"answered\">&ndash;</b></div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Abandon rate</div><div class=\"value\" "
        "data-key=\"abandon_rate\">&ndash;</div><div class=\"sub\">abandoned <b "
        "data-key=\"abandoned\">&ndash;</b> &middot; overflow <b "
        "data-key=\"overflow\">&ndash;</b></div></div>\n"
        "  </div>\n"
        "  <div class=\"row agents\" id=\"agents\">\n"
        "    <div class=\"tile\"><div class=\"label\">Available</div><div class=\"value good\" "
        "data-state=\"AVAILABLE\">&ndash;</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Ringing</div><div class=\"value\" "
        "data-state=\"RESERVED\">&ndash;</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">On call</div><div class=\"value\" "
        "data-state=\"ON_CALL\">&ndash;</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Wrap-up</div><div class=\"value\" "
        "data-state=\"WRAP_UP\">&ndash;</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Not ready</div><div class=\"value\" "
        "data-state=\"NOT_READY\">&ndash;</div></div>\n"
        "    <div class=\"tile\"><div class=\"label\">Offline</div><div class=\"value\" "
        "data-state=\"OFFLINE\">&ndash;</div></div>\n"
        "  </div>\n"
        "  <div class=\"bottom\">\n"
        "    <section>\n"
        "      <h2>Programs</h2>\n"
        "      <table>\n"
        "        "
        "<thead><tr><th>Program</th><th>Waiting</th><th>Longest</th><th>SL</th><th>ASA</"
        "th><th>Abandon</th><th>Ringing</th><th>On call</th><th>Answered</th></tr></thead>\n"
        "        <tbody id=\"programs\"><tr><td colspan=\"9\" class=\"empty\">waiting for the "
        "broker&hellip;</td></tr></tbody>\n"
        "      </table>\n"
        "    </section>\n"
        "    <section>\n"
        "      <h2>Top agents</h2>\n"
        "      <ol id=\"top\"><li class=\"empty\">waiting for the broker&hellip;</li></ol>\n"
        "    </section>\n"
        "  </div>\n"
        "</main>\n"
        "<footer id=\"footer\">Figures cover the last hour. Service level: calls answered within "
        "the target time &divide; (answered + abandoned after it + overflowed); abandon rate: "
        "abandoned &divide; (answered + abandoned + overflowed).</footer>\n"
        "<script>\n"
        "(function () {\n"
        "  'use strict';\n"
        "  var POLL_MS = 1000, TIMEOUT_MS = 2500, STALE_MS = 3000;\n"
        "  var lastOk = 0, goal = 0.8, started = Date.now();\n"
        "\n"
        "  function pad(n) { return (n < 10 ? '0' : '') + n; }\n"
        "  function count(v) { return v == null ? '\\u2014' : "
        "String(v).replace(/\\B(?=(\\d{3})+(?!\\d))/g, ','); }\n"
        "  function duration(ms) {\n"
        "    if (ms == null) return '\\u2014';\n"
        "    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor(s % 3600 / "
        "60);\n"
        "    return (h ? h + ':' + pad(m) : String(m)) + ':' + pad(s % 60);\n"
        "  }\n"
        "  function pct0(x) { return x == null ? '\\u2014' : Math.round(x * 100) + '%'; }\n"
        "  function pct1(x) { return x == null ? '\\u2014' : (x * 100).toFixed(1) + '%'; }\n"
        "  var FORMATS = { longest_wait_ms: duration, asa_ms: duration, service_level: pct0, "
        "abandon_rate: pct1 };\n"
        "  function format(key, v) { return (FORMATS[key] || count)(v); }\n"
        "\n"
        "  function show(el, key, v) {\n"
        "    el.textContent = format(key, v);\n"
        "    el.setAttribute('data-value', v == null ? '' : String(v));\n"
        "  }\n"
        "  function grade(el, cls) {\n"
        "    el.classList.remove('good', 'warn', 'bad');\n"
        "    if (cls) el.classList.add(cls);\n"
        "  }\n"
        "  function slGrade(v) { return v == null ? '' : v >= goal ? 'good' : v >= goal - 0.1 ? "
        "'warn' : 'bad'; }\n"
        "  function waitGrade(ms) { return ms >= 120000 ? 'bad' : ms > 20000 ? 'warn' : ''; }\n"
        "  function td(text, cls) {\n"
        "    var c = document.createElement('td');\n"
        "    c.textContent = text;\n"
        "    if (cls) c.className = cls;\n"
        "    return c;\n"
        "  }\n"
        "  function figure(key, v, cls) {\n"
        "    var c = td('', cls);\n"
        "    c.setAttribute('data-key', key);\n"
        "    show(c, key, v);\n"
        "    return c;\n"
        "  }\n"
        "  function topAgents(list) {\n"
        "    var c = document.createElement('div');\n"
        "    c.className = 'top';\n"
        "    (list || []).forEach(function (a) {\n"
        "      var s = document.createElement('span'), b = document.createElement('b');\n"
        "      s.textContent = a.name + ' ';\n"
        "      b.textContent = a.score.toFixed(1);\n"
        "      s.appendChild(b);\n"
        "      c.appendChild(s);\n"
        "      c.appendChild(document.createTextNode(' '));\n"
        "    });\n"
        "    return c;\n"
        "  }\n"
        "\n"
        "  function render(d) {\n"
        "    goal = d.service_level_target.goal;\n"
        "    document.getElementById('sl-target').textContent =\n"
        "      'target ' + Math.round(goal * 100) + '% in ' + d.service_level_target.seconds + ' "
        "s';\n"
        "    var o = d.overall;\n"
        "    document.querySelectorAll('#overall [data-key]').forEach(function (el) {\n"
        "      var k = el.getAttribute('data-key');\n"
        "      show(el, k, o[k]);\n"
        "    });\n"
        "    grade(document.querySelector('#overall [data-key=\"service_level\"]'), "
        "slGrade(o.service_level));\n"
        "    grade(document.querySelector('#overall [data-key=\"longest_wait_ms\"]'), "
        "waitGrade(o.longest_wait_ms));\n"
        "    document.querySelectorAll('#agents [data-state]').forEach(function (el) {\n"
        "      var s = el.getAttribute('data-state');\n"
        "      el.textContent = o.agents ? count(o.agents[s]) : '\\u2014';\n"
        "      el.setAttribute('data-value', o.agents ? String(o.agents[s]) : '');\n"
        "    });\n"
        "\n"
        "    var body = document.getElementById('programs');\n"
        "    var rows = document.createDocumentFragment();\n"
        "    d.programs.forEach(function (p) {\n"
        "      var tr = document.createElement('tr');\n"
        "      tr.setAttribute('data-program', p.id);\n"
        "      var name = td(p.name || p.id, 'name');\n"
        "      if (p.name) {\n"
        "        var small = document.createElement('small');\n"
        "        small.textContent = p.id;\n"
        "        name.appendChild(small);\n"
        "      }\n"
        "      name.appendChild(topAgents(p.top_agents));\n"
        "      tr.appendChild(name);\n"
        "      tr.appendChild(figure('calls_waiting', p.calls_waiting));\n"
        "      tr.appendChild(figure('longest_wait_ms', p.longest_wait_ms, "
        "waitGrade(p.longest_wait_ms)));\n"
        "      tr.appendChild(figure('service_level', p.service_level, "
        "slGrade(p.service_level)));\n"
        "      tr.appendChild(figure('asa_ms', p.asa_ms));\n"
        "      tr.appendChild(figure('abandon_rate', p.abandon_rate));\n"
        "      tr.appendChild(figure('calls_ringing', p.calls_ringing));\n"
        "      tr.appendChild(figure('calls_connected', p.calls_connected));\n"
        "      tr.appendChild(figure('answered', p.answered));\n"
        "      rows.appendChild(tr);\n"
        "    });\n"
        "    if (!d.programs.length) rows.appendChild(td('no programs yet', 'empty'));\n"
        "    body.replaceChildren(rows);\n"
        "\n"
        "    var top = document.getElementById('top');\n"
        "    var items = document.createDocumentFragment();\n"
        "    (o.top_agents || []).forEach(function (a) {\n"
        "      var li = document.createElement('li');\n"
        "      li.setAttribute('data-agent', String(a.id));\n"
        "      var sc = document.createElement('span');\n"
        "      sc.className = 'score';\n"
        "      sc.textContent = a.score.toFixed(1);\n"
        "      li.appendChild(sc);\n"
        "      li.appendChild(document.createTextNode(a.name));\n"
        "      items.appendChild(li);\n"
        "    });\n"
        "    if (!o.top_agents || !o.top_agents.length) {\n"
        "      var li = document.createElement('li');\n"
        "      li.className = 'empty';\n"
        "      li.textContent = d.top_agents_as_of ? 'no active agents' : 'loading from the "
        "roster\\u2026';\n"
        "      items.appendChild(li);\n"
        "    }\n"
        "    top.replaceChildren(items);\n"
        "    document.body.setAttribute('data-as-of', String(d.as_of_us));\n"
        "  }\n"
        "\n"
        "  function updateStatus() {\n"
        "    var now = Date.now();\n"
        "    var st = document.getElementById('status');\n"
        "    var stale = lastOk ? now - lastOk > STALE_MS : now - started > STALE_MS;\n"
        "    document.body.classList.toggle('stale', stale);\n"
        "    if (stale) {\n"
        "      st.textContent = lastOk ? 'STALE \\u00b7 no answer since ' + new "
        "Date(lastOk).toLocaleTimeString()\n"
        "                              : 'STALE \\u00b7 broker not answering';\n"
        "    } else {\n"
        "      st.textContent = lastOk ? 'LIVE' : 'CONNECTING';\n"
        "    }\n"
        "    document.getElementById('clock').textContent = new Date(now).toLocaleTimeString();\n"
        "  }\n"
        "\n"
        "  function poll() {\n"
        "    var ctl = typeof AbortController === 'function' ? new AbortController() : null;\n"
        "    var timer = setTimeout(function () { if (ctl) ctl.abort(); }, TIMEOUT_MS);\n"
        "    fetch('wallboard.json', { cache: 'no-store', signal: ctl ? ctl.signal : undefined })\n"
        "      .then(function (r) {\n"
        "        if (!r.ok) throw new Error('HTTP ' + r.status);\n"
        "        return r.json();\n"
        "      })\n"
        "      .then(function (d) {\n"
        "        render(d);\n"
        "        lastOk = Date.now();\n"
        "      })\n"
        "      .catch(function () {})\n"
        "      .then(function () {\n"
        "        clearTimeout(timer);\n"
        "        updateStatus();\n"
        "        setTimeout(poll, POLL_MS);\n"
        "      });\n"
        "  }\n"
        "  setInterval(updateStatus, 500);\n"
        "  updateStatus();\n"
        "  poll();\n"
        "})();\n"
        "</script>\n"
        "</body>\n"
        "</html>\n";

const char *broker_wallboard_page(void)
{
	return page;
}

// --- the service -------------------------------------------------------------------------------

// The board of the one broker in this process: the HTTP routes hold a pointer to it until the
// process ends, so it is static, and `running` says whether its contents may be used.
typedef struct wb_service {
	broker *b;
	broker_wallboard w;
	rb_db *db;
	uv_timer_t timer;
	bool running;
	bool querying;
	bool db_failing;
	uint64_t next_load_mono_us;
} wb_service;

static wb_service wbs;

static void wb_stop(wb_service *s)
{
	if (!s->running)
		return;
	s->running = false;
	uv_timer_stop(&s->timer);
	uv_close((uv_handle_t *)&s->timer, NULL);
	rb_db_free(s->db);
	s->db = NULL;
	broker_wallboard_fini(&s->w);
}

static void on_rows(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	wb_service *s = arg;
	(void)db;
	s->querying = false;
	if (!s->running)
		return;
	if (err == 0 && PQnfields(res) != NCOLS)
		err = RB_EDB;
	if (err != 0) {
		if (!s->db_failing)
			rb_warn("wallboard: cannot load names and top agents: %s%s%s",
			        rb_err_str(err), sqlstate && *sqlstate ? ", SQLSTATE " : "",
			        sqlstate ? sqlstate : "");
		s->db_failing = true;
		return;
	}
	size_t nrows = (size_t)PQntuples(res);
	const char **cells = calloc(nrows ? nrows * NCOLS : 1, sizeof(*cells));
	if (cells == NULL) {
		rb_warn("wallboard: out of memory loading top agents");
		return;
	}
	for (size_t i = 0; i < nrows; i++) {
		for (int f = 0; f < NCOLS; f++) {
			if (!PQgetisnull(res, (int)i, f))
				cells[i * NCOLS + f] = PQgetvalue(res, (int)i, f);
		}
	}
	int rc = broker_wallboard_load(&s->w, cells, nrows, rb_now_us());
	free(cells);
	if (rc != 0) {
		rb_warn("wallboard: top agents not loaded: %s", rb_err_str(rc));
		return;
	}
	if (s->db_failing)
		rb_info("wallboard: names and top agents load again");
	s->db_failing = false;
}

static void on_tick(uv_timer_t *t)
{
	wb_service *s = t->data;
	if (s->b->stopping) {
		wb_stop(s);
		return;
	}
	if (broker_wallboard_fold(&s->w, &s->b->book, rb_now_us()) != 0)
		rb_warn("wallboard: out of memory counting ended calls");
	uint64_t mono = rb_mono_us();
	if (s->querying || mono < s->next_load_mono_us)
		return;
	s->next_load_mono_us = mono + BROKER_WB_TOP_EVERY_MS * 1000ull;
	int rc = rb_db_query(s->db, top_sql, 0, NULL, on_rows, s);
	if (rc == 0)
		s->querying = true;
	else
		rb_debug("wallboard: top agents query not queued: %s", rb_err_str(rc));
}

static const char *const page_hnames[] = {
        "Cache-Control",
        "X-Content-Type-Options",
        "Referrer-Policy",
        "Content-Security-Policy",
};
static const char *const page_hvalues[] = {
        "no-cache",
        "nosniff",
        "no-referrer",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

static void page_http(rb_http_req *req, void *arg)
{
	(void)arg;
	rb_http_reply_hdrs(req, 200, "text/html; charset=utf-8", page_hnames, page_hvalues,
	                   sizeof(page_hnames) / sizeof(page_hnames[0]), page, sizeof(page) - 1);
}

static void json_http(rb_http_req *req, void *arg)
{
	static const char *const names[] = {"Cache-Control", "X-Content-Type-Options"};
	static const char *const values[] = {"no-store", "nosniff"};
	static const char stopping[] = "{\"error\":\"the broker is stopping\"}";
	wb_service *s = arg;
	if (!s->running) {
		rb_http_reply_hdrs(req, 503, "application/json", names, values, 2, stopping,
		                   sizeof(stopping) - 1);
		return;
	}
	broker_kpi_now now;
	broker_kpi_snapshot(s->b, &now);
	char *json = NULL;
	if (broker_wallboard_json(&s->w, &s->b->book, &s->b->programs, &now, &json) != 0) {
		rb_http_reply(req, 500, NULL, "out of memory\n", 14);
		return;
	}
	rb_http_reply_hdrs(req, 200, "application/json", names, values, 2, json, strlen(json));
	free(json);
}

int broker_wallboard_start(broker *b)
{
	wb_service *s = &wbs;
	if (b->svc.http == NULL)
		return 0;
	if (s->running)
		return RB_ESTATE;
	char conninfo[1024];
	int rc = rb_config_conninfo(conninfo, sizeof(conninfo));
	if (rc != 0)
		return rc;
	broker_wallboard_init(&s->w);
	s->b = b;
	s->querying = false;
	s->db_failing = false;
	s->next_load_mono_us = 0;
	if ((rc = rb_db_new(&b->svc.loop, conninfo, &s->db)) != 0) {
		rb_error("wallboard: cannot set up the database connection: %s", rb_err_str(rc));
		return rc;
	}
	if ((rc = uv_timer_init(&b->svc.loop, &s->timer)) != 0) {
		rb_db_free(s->db);
		s->db = NULL;
		return rb_err_from_errno(-rc);
	}
	s->timer.data = s;
	s->running = true;
	if ((rc = rb_http_route(b->svc.http, "GET", "/wallboard", page_http, s)) != 0 ||
	    (rc = rb_http_route(b->svc.http, "GET", "/wallboard.json", json_http, s)) != 0) {
		wb_stop(s);
		return rc;
	}
	uv_timer_start(&s->timer, on_tick, 0, BROKER_WB_TICK_MS);
	return 0;
}
