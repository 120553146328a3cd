// `ringbid program …` and `ringbid agent …`: the roster in PostgreSQL (schema roster).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_secret.h"

#define IMPORT_BATCH 1000 // rows per INSERT: 5 parameters each, well under libpq's 65535
#define IMPORT_MAX   1000000

// ---------------------------------------------------------------------------------------------
// Printing rows as a table, as "key: value" lines, or as JSON

typedef enum {
	COL_STR,    // JSON string
	COL_INT,    // JSON integer
	COL_NUM,    // JSON number (scores; never money)
	COL_MONEY,  // JSON string: money keeps its exact decimal text
	COL_SKILLS, // comma-joined in SQL, a JSON array of strings
	COL_BOOL,   // JSON true/false, "yes"/"no" on screen
} col_type;

typedef struct col {
	const char *key;    // JSON key and label of `show`
	const char *header; // column title of `list`; NULL: not in the list
	col_type type;
	const char *null_text; // on screen for SQL NULL (JSON null); NULL: "-"
} col;

static const col program_cols[] = {
        {"id", "ID", COL_STR, NULL},
        {"name", "NAME", COL_STR, NULL},
        {"required_skills", "SKILLS", COL_SKILLS, NULL},
        {"ring_timeout_s", "RING", COL_INT, NULL},
        {"wrap_up_s", "WRAP", COL_INT, NULL},
        {"max_wait_s", "MAX WAIT", COL_INT, NULL},
        {"max_talk_s", "MAX TALK", COL_INT, NULL},
        {"default_rate", "RATE/MIN", COL_MONEY, NULL},
        {"rounding", "ROUNDING", COL_STR, NULL},
        {"sale_commission", "COMMISSION", COL_MONEY, NULL},
        {"priority", "PRIO", COL_INT, NULL},
        {"w_satisfaction", NULL, COL_NUM, NULL},
        {"w_resolution", NULL, COL_NUM, NULL},
        {"w_conversion", NULL, COL_NUM, NULL},
        {"w_answer_rate", NULL, COL_NUM, NULL},
        {"w_handle_time", NULL, COL_NUM, NULL},
        {"sells", NULL, COL_BOOL, NULL},
        {"min_calls", NULL, COL_INT, NULL},
        {"provisional_score", NULL, COL_NUM, "median"},
        {"explore_share", "EXPLORE", COL_NUM, NULL},
        {"created_at", NULL, COL_STR, NULL},
        {"updated_at", NULL, COL_STR, NULL},
};

#define TS_UTC(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const char program_select[] =
        "SELECT id, name, array_to_string(required_skills, ','), ring_timeout_s, wrap_up_s, "
        "max_wait_s, max_talk_s, default_rate::text, rounding, sale_commission::text, "
        "priority, w_satisfaction::text, w_resolution::text, w_conversion::text, "
        "w_answer_rate::text, w_handle_time::text, sells, min_calls, provisional_score::text, "
        "explore_share::text, " TS_UTC("created_at") ", " TS_UTC(
                "updated_at") " FROM roster.programs";

static const col agent_cols[] = {
        {"id", "ID", COL_INT, NULL},
        {"name", "NAME", COL_STR, NULL},
        {"status", "STATUS", COL_STR, NULL},
        {"score", "SCORE", COL_NUM, NULL},
        {"score_pinned", "PINNED", COL_BOOL, NULL},
        {"skills", "SKILLS", COL_SKILLS, NULL},
        {"created_at", NULL, COL_STR, NULL},
        {"updated_at", NULL, COL_STR, NULL},
};

static const char agent_select[] =
        "SELECT id, name, status, score::text, score_pinned, array_to_string(skills, ','), " TS_UTC(
                "created_at") ", " TS_UTC("updated_at") " FROM roster.agents";

#define NCOLS(a) (sizeof(a) / sizeof((a)[0]))

static json_t *row_json(const PGresult *res, int row, const col *cols, size_t ncols)
{
	json_t *o = json_object();

	for (size_t c = 0; c < ncols && o; c++) {
		const char *v = PQgetvalue(res, row, (int)c);
		json_t *j = NULL;

		if (PQgetisnull(res, row, (int)c)) {
			json_object_set_new(o, cols[c].key, json_null());
			continue;
		}
		switch (cols[c].type) {
		case COL_STR:
		case COL_MONEY:
			j = json_string(v);
			break;
		case COL_INT:
			j = json_integer(strtoll(v, NULL, 10));
			break;
		case COL_NUM:
			j = json_real(strtod(v, NULL));
			break;
		case COL_BOOL:
			j = json_boolean(strcmp(v, "t") == 0);
			break;
		case COL_SKILLS: {
			char **list;
			size_t n;
			char err[128];

			j = json_array();
			if (cli_list_parse(v, ',', &list, &n, err, sizeof err) == 0) {
				for (size_t i = 0; i < n; i++)
					json_array_append_new(j, json_string(list[i]));
				cli_list_free(list, n);
			}
			break;
		}
		}
		json_object_set_new(o, cols[c].key, j ? j : json_null());
	}
	return o;
}

static void print_json(json_t *j, size_t flags)
{
	// Scores and weights are numeric(5,2) and numeric(4,3) in PostgreSQL: 15 significant
	// digits print them as stored (0.3, not 0.29999999999999999).
	char *s = j ? json_dumps(j, flags | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) : NULL;

	if (s) {
		puts(s);
		free(s);
	}
	json_decref(j);
}

// Skills show as "a,b", an empty list as "-"; booleans as yes/no.
static const char *cell(const PGresult *res, int row, int c, const col *cl)
{
	const char *v = PQgetvalue(res, row, c);

	if (PQgetisnull(res, row, c))
		return cl->null_text ? cl->null_text : "-";
	if (cl->type == COL_BOOL)
		return strcmp(v, "t") == 0 ? "yes" : "no";
	return *v ? v : "-";
}

// Columns on screen: UTF-8 continuation bytes take no column of their own.
static int text_width(const char *s)
{
	int w = 0;

	for (; *s; s++)
		w += ((unsigned char)*s & 0xC0) != 0x80;
	return w;
}

// Prints s in width columns (cut at a character boundary), padded left or right.
static void print_cell(const char *s, int width, bool right, bool pad)
{
	const char *end = s;
	int w = 0;

	while (*end) {
		const char *next = end + 1;

		while (((unsigned char)*next & 0xC0) == 0x80)
			next++;
		if (w == width)
			break;
		w++;
		end = next;
	}
	if (right)
		printf("%*s", width - w, "");
	printf("%.*s", (int)(end - s), s);
	if (!right && pad)
		printf("%*s", width - w, "");
}

static void print_table(const PGresult *res, const col *cols, size_t ncols)
{
	int widths[32] = {0};
	int rows = PQntuples(res);
	size_t last = 0;

	for (size_t c = 0; c < ncols; c++) {
		if (!cols[c].header)
			continue;
		last = c;
		widths[c] = text_width(cols[c].header);
		for (int r = 0; r < rows; r++) {
			int w = text_width(cell(res, r, (int)c, &cols[c]));

			if (w > widths[c])
				widths[c] = w > 40 ? 40 : w;
		}
	}
	for (int r = -1; r < rows; r++) {
		for (size_t c = 0; c <= last; c++) {
			if (!cols[c].header)
				continue;
			if (c > 0)
				fputs("  ", stdout);
			// Long values are cut to the column; the last column is never padded.
			print_cell(r < 0 ? cols[c].header : cell(res, r, (int)c, &cols[c]),
			           widths[c],
			           cols[c].type != COL_STR && cols[c].type != COL_SKILLS &&
			                   cols[c].type != COL_BOOL,
			           c != last);
		}
		putchar('\n');
	}
}

static void print_show(const PGresult *res, const col *cols, size_t ncols)
{
	for (size_t c = 0; c < ncols; c++)
		printf("%-18s %s\n", cols[c].key, cell(res, 0, (int)c, &cols[c]));
}

// Runs a roster query and prints its rows; one_id set: exactly one row expected ("show").
static int print_query(const char *sql, const char *one_id, const char *what, const col *cols,
                       size_t ncols, bool json)
{
	const char *params[1] = {one_id};
	PGconn *conn;
	PGresult *res;
	int rc;

	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = cli_db_exec(conn, sql, one_id ? 1 : 0, one_id ? params : NULL, &res);
	if (rc < 0) {
		rc = strcmp(cli_db_sqlstate(res), "42P01") == 0
		             ? cli_fail("the roster schema is missing: run 'ringbid db migrate'")
		             : cli_db_fail(conn, res, "cannot read the roster");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	PQfinish(conn);
	if (one_id && PQntuples(res) == 0) {
		PQclear(res);
		return cli_fail("no %s '%s'", what, one_id);
	}
	if (one_id && json) {
		print_json(row_json(res, 0, cols, ncols), JSON_INDENT(2));
	} else if (one_id) {
		print_show(res, cols, ncols);
	} else if (json) {
		json_t *a = json_array();

		for (int r = 0; r < PQntuples(res) && a; r++)
			json_array_append_new(a, row_json(res, r, cols, ncols));
		print_json(a, JSON_INDENT(2));
	} else if (PQntuples(res) == 0) {
		printf("no %ss yet\n", what);
	} else {
		print_table(res, cols, ncols);
	}
	PQclear(res);
	return CLI_EXIT_OK;
}

// ---------------------------------------------------------------------------------------------
// Turning options into column assignments

typedef enum {
	F_TEXT,     // a display name
	F_SKILLS,   // comma-separated ids -> text[]
	F_INT,      // an integer in [min, max]
	F_MONEY,    // numeric(12,4) as text
	F_SCORE,    // numeric(5,2) in 0..100
	F_ROUNDING, // per_second | per_started_minute
	F_STATUS,   // active | suspended
	F_WEIGHTS,  // S,R,C,A,H adding up to 1 -> the five w_* columns
	F_YESNO,    // yes | no -> boolean
	F_SHARE,    // 0..1 with up to 3 decimals -> numeric(4,3)
	F_PROV,     // a score, or "median" -> NULL
	F_PIN,      // a score (pinned by hand), or "auto" (unpinned: recompute sets it)
} field_type;

typedef struct field {
	const char *opt; // command-line option
	const char *col; // column
	const char *cast;
	field_type type;
	long long min, max;
} field;

static const field program_fields[] = {
        {"name", "name", "text", F_TEXT, 0, 0},
        {"skills", "required_skills", "text[]", F_SKILLS, 0, 0},
        {"ring-timeout", "ring_timeout_s", "int", F_INT, 1, 300},
        {"wrap-up", "wrap_up_s", "int", F_INT, 0, 3600},
        {"max-wait", "max_wait_s", "int", F_INT, 1, 86400},
        {"max-talk", "max_talk_s", "int", F_INT, 1, 86400},
        {"rate", "default_rate", "numeric", F_MONEY, 0, 0},
        {"rounding", "rounding", "text", F_ROUNDING, 0, 0},
        {"commission", "sale_commission", "numeric", F_MONEY, 0, 0},
        {"priority", "priority", "int", F_INT, -CLI_PRIORITY_MAX, CLI_PRIORITY_MAX},
        {"weights", NULL, "numeric", F_WEIGHTS, 0, 0},
        {"sells", "sells", "boolean", F_YESNO, 0, 0},
        {"min-calls", "min_calls", "int", F_INT, 1, 100000},
        {"provisional-score", "provisional_score", "numeric", F_PROV, 0, 0},
        {"explore-share", "explore_share", "numeric", F_SHARE, 0, 0},
};

// The columns of --weights S,R,C,A,H, in that order.
static const char *const weight_cols[CLI_WEIGHTS] = {
        "w_satisfaction", "w_resolution", "w_conversion", "w_answer_rate", "w_handle_time"};

static const field agent_fields[] = {
        {"name", "name", "text", F_TEXT, 0, 0},
        {"skills", "skills", "text[]", F_SKILLS, 0, 0},
        {"score", "score", "numeric", F_PIN, 0, 0},
        {"status", "status", "text", F_STATUS, 0, 0},
};

#define MAX_ASSIGN 24

// Column assignments collected from the options: columns, casts and parameter texts.
typedef struct assign {
	const char *col[MAX_ASSIGN];
	const char *cast[MAX_ASSIGN];
	char *val[MAX_ASSIGN]; // owned
	bool null[MAX_ASSIGN]; // SQL NULL instead of val
	size_t n;
} assign;

static void assign_fini(assign *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->val[i]);
	a->n = 0;
}

static int assign_add(assign *a, const char *colname, const char *cast, char *val)
{
	if (!val)
		return RB_ENOMEM;
	if (a->n == MAX_ASSIGN) {
		free(val);
		return RB_ETOOBIG;
	}
	a->col[a->n] = colname;
	a->cast[a->n] = cast;
	a->val[a->n] = val;
	a->null[a->n] = false;
	a->n++;
	return 0;
}

static int assign_add_null(assign *a, const char *colname, const char *cast)
{
	int rc = assign_add(a, colname, cast, strdup(""));

	if (rc == 0)
		a->null[a->n - 1] = true;
	return rc;
}

// The five weight columns of --weights; the value is checked already.
static int assign_weights(assign *a, const int milli[CLI_WEIGHTS])
{
	for (size_t i = 0; i < CLI_WEIGHTS; i++) {
		char text[16];
		int rc;

		cli_milli_text(milli[i], text, sizeof text);
		rc = assign_add(a, weight_cols[i], "numeric", strdup(text));
		if (rc < 0)
			return rc;
	}
	return 0;
}

// Validates every option given for fields and adds it to a. Returns 0, or CLI_EXIT_USAGE
// after printing the reason, or CLI_EXIT_ERR (out of memory).
static int collect(const char *cmd, const cli_opt *opts, size_t nopts, const field *fields,
                   size_t nfields, assign *a)
{
	for (size_t i = 0; i < nfields; i++) {
		const field *f = &fields[i];
		const char *v = cli_opt_get(opts, nopts, f->opt);
		char err[160], *text = NULL;
		long long num;
		int milli[CLI_WEIGHTS];
		bool yes;

		if (!v)
			continue;
		switch (f->type) {
		case F_TEXT:
			if (!*v || !rb_valid_text(v, CLI_NAME_MAX))
				return cli_usage_error(cmd,
				                       "--%s must be 1-%d bytes of printable text",
				                       f->opt, CLI_NAME_MAX);
			text = strdup(v);
			break;
		case F_SKILLS: {
			char **list;
			size_t n;
			int rc = cli_list_parse(v, ',', &list, &n, err, sizeof err);

			if (rc == RB_EINVAL)
				return cli_usage_error(cmd, "--%s: %s", f->opt, err);
			if (rc < 0 || cli_pg_array(list, n, &text) < 0)
				text = NULL;
			if (rc == 0)
				cli_list_free(list, n);
			break;
		}
		case F_INT:
			if (cli_parse_int(v, f->min, f->max, &num) < 0)
				return cli_usage_error(
				        cmd, "--%s must be a whole number from %lld to %lld",
				        f->opt, f->min, f->max);
			if (asprintf(&text, "%lld", num) < 0)
				text = NULL;
			break;
		case F_MONEY:
			if (!cli_valid_money(v))
				return cli_usage_error(
				        cmd, "--%s must be an amount like 0.25 (up to 4 decimals)",
				        f->opt);
			text = strdup(v);
			break;
		case F_SCORE:
			if (!cli_valid_score(v))
				return cli_usage_error(
				        cmd, "--%s must be from 0 to 100 (up to 2 decimals)",
				        f->opt);
			text = strdup(v);
			break;
		case F_ROUNDING:
			if (strcmp(v, "per_second") != 0 && strcmp(v, "per_started_minute") != 0)
				return cli_usage_error(
				        cmd, "--%s must be per_second or per_started_minute",
				        f->opt);
			text = strdup(v);
			break;
		case F_STATUS:
			if (strcmp(v, "active") != 0 && strcmp(v, "suspended") != 0)
				return cli_usage_error(cmd, "--%s must be active or suspended",
				                       f->opt);
			text = strdup(v);
			break;
		case F_WEIGHTS:
			if (cli_parse_weights(v, milli, err, sizeof err) < 0)
				return cli_usage_error(cmd, "--%s: %s", f->opt, err);
			if (assign_weights(a, milli) < 0)
				return cli_fail("out of memory");
			continue;
		case F_YESNO:
			if (cli_parse_yes_no(v, &yes) < 0)
				return cli_usage_error(cmd, "--%s must be yes or no", f->opt);
			text = strdup(yes ? "true" : "false");
			break;
		case F_SHARE:
			if (cli_parse_milli(v, &milli[0]) < 0)
				return cli_usage_error(
				        cmd,
				        "--%s must be from 0 to 1 (up to 3 decimals, "
				        "e.g. 0.2 for a fifth of the calls)",
				        f->opt);
			text = strdup(v);
			break;
		case F_PROV:
			if (strcmp(v, "median") == 0) {
				if (assign_add_null(a, f->col, f->cast) < 0)
					return cli_fail("out of memory");
				continue;
			}
			if (!cli_valid_score(v))
				return cli_usage_error(
				        cmd,
				        "--%s must be from 0 to 100 (up to 2 decimals) "
				        "or median",
				        f->opt);
			text = strdup(v);
			break;
		case F_PIN:
			// A score typed by a supervisor is pinned: the recompute leaves it alone
			// until "auto" hands the agent back to the computed score.
			if (strcmp(v, "auto") == 0) {
				if (assign_add(a, "score_pinned", "boolean", strdup("false")) < 0)
					return cli_fail("out of memory");
				continue;
			}
			if (!cli_valid_score(v))
				return cli_usage_error(
				        cmd,
				        "--%s must be from 0 to 100 (up to 2 decimals) "
				        "or auto",
				        f->opt);
			if (assign_add(a, "score_pinned", "boolean", strdup("true")) < 0)
				return cli_fail("out of memory");
			text = strdup(v);
			break;
		}
		if (assign_add(a, f->col, f->cast, text) < 0)
			return cli_fail("out of memory");
	}
	return 0;
}

// Runs INSERT (update false) or UPDATE ... WHERE id = $1 for table with the assignments.
// Returns the exit status, printing what happened.
static int write_row(const char *table, const char *what, const char *id, const char *id_cast,
                     const assign *a, bool update)
{
	char sql[2048];
	const char *params[MAX_ASSIGN + 1];
	size_t off = 0;
	PGconn *conn;
	PGresult *res;
	int rc;

	params[0] = id;
	for (size_t i = 0; i < a->n; i++)
		params[i + 1] = a->null[i] ? NULL : a->val[i];
	if (update) {
		off += (size_t)snprintf(sql + off, sizeof sql - off, "UPDATE %s SET ", table);
		for (size_t i = 0; i < a->n; i++)
			off += (size_t)snprintf(sql + off, sizeof sql - off, "%s%s = $%zu::%s",
			                        i ? ", " : "", a->col[i], i + 2, a->cast[i]);
		snprintf(sql + off, sizeof sql - off, " WHERE id = $1::%s", id_cast);
	} else {
		off += (size_t)snprintf(sql + off, sizeof sql - off, "INSERT INTO %s (id", table);
		for (size_t i = 0; i < a->n; i++)
			off += (size_t)snprintf(sql + off, sizeof sql - off, ", %s", a->col[i]);
		off += (size_t)snprintf(sql + off, sizeof sql - off, ") VALUES ($1::%s", id_cast);
		for (size_t i = 0; i < a->n; i++)
			off += (size_t)snprintf(sql + off, sizeof sql - off, ", $%zu::%s", i + 2,
			                        a->cast[i]);
		snprintf(sql + off, sizeof sql - off, ")");
	}
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = cli_db_exec(conn, sql, (int)a->n + 1, params, &res);
	if (rc < 0) {
		const char *state = cli_db_sqlstate(res);

		const char *cons = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;

		if (strcmp(state, "23505") == 0)
			rc = cli_fail("%s %s already exists (change it with 'ringbid %s set')",
			              what, id, what);
		else if (strcmp(state, "23514") == 0 && cons &&
		         strcmp(cons, "programs_weights_sum") == 0)
			rc = cli_fail("%s refused: the weights must add up to 1 (give all five "
			              "with --weights S,R,C,A,H)",
			              update ? "update" : "insert");
		else if (strcmp(state, "42703") == 0)
			rc = cli_fail("the database lacks the score columns: run 'ringbid db "
			              "migrate'");
		else if (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)
			rc = cli_fail("the roster schema is missing: run 'ringbid db migrate'");
		else
			rc = cli_db_fail(conn, res, update ? "update refused" : "insert refused");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	rc = update && strcmp(PQcmdTuples(res), "0") == 0;
	PQclear(res);
	PQfinish(conn);
	if (rc)
		return cli_fail("no %s '%s'", what, id);
	printf("%s %s %s\n", what, id, update ? "updated" : "added");
	return CLI_EXIT_OK;
}

// ---------------------------------------------------------------------------------------------
// ringbid program

static const char program_usage[] =
        "usage: ringbid program add ID --name NAME [options]\n"
        "       ringbid program set ID [options]\n"
        "       ringbid program list [--json]\n"
        "       ringbid program show ID [--json]\n"
        "\n"
        "A program is one client's line of business: its calls, skills, timers and pay.\n"
        "ID is 1-64 characters of A-Z a-z 0-9 . _ : -\n"
        "\n"
        "options:\n"
        "  --name NAME              display name\n"
        "  --skills a,b             skills every call of the program needs (\"\" for none)\n"
        "  --ring-timeout S         seconds an offer rings at an agent (1-300, default 15)\n"
        "  --wrap-up S              after-call work seconds (0-3600, default 30)\n"
        "  --max-wait S             seconds a caller waits before overflow (1-86400, default 600)\n"
        "  --max-talk S             talk seconds after which a call is closed for review\n"
        "                           (1-86400, default 7200)\n"
        "  --rate 0.2500            pay per talk minute (up to 4 decimals, default 0.2500)\n"
        "  --rounding R             per_second (default) or per_started_minute\n"
        "  --commission 0.00        fixed pay per call marked as a sale (default 0)\n"
        "  --priority N             ordering among programs' waiting calls (-1000..1000)\n"
        "\n"
        "performance scores (see 'ringbid agent score'):\n"
        "  --weights S,R,C,A,H      weights of satisfaction, resolution, conversion, answer\n"
        "                           rate and handle time; each 0-1, adding up to 1\n"
        "                           (default 0.3,0.25,0.15,0.15,0.15)\n"
        "  --sells yes|no           the program sells: conversion counts (default no)\n"
        "  --min-calls N            calls in the program an agent needs for a program score\n"
        "                           of its own (1-100000, default 20)\n"
        "  --provisional-score N|median\n"
        "                           score of agents new to the program (0-100; default\n"
        "                           median: the median of the program's established agents)\n"
        "  --explore-share F        share of calls (0-1, default 0) sent at random to the\n"
        "                           longest-available agent instead of the top score, to\n"
        "                           measure the lift of score routing ('ringbid report lift')\n"
        "  --json                   list/show: JSON output\n";

static int program_write(const char *sub, int argc, char **argv)
{
	cli_opt opts[] = {
	        {.name = "name", .has_arg = true},
	        {.name = "skills", .has_arg = true},
	        {.name = "ring-timeout", .has_arg = true},
	        {.name = "wrap-up", .has_arg = true},
	        {.name = "max-wait", .has_arg = true},
	        {.name = "max-talk", .has_arg = true},
	        {.name = "rate", .has_arg = true},
	        {.name = "rounding", .has_arg = true},
	        {.name = "commission", .has_arg = true},
	        {.name = "priority", .has_arg = true},
	        {.name = "weights", .has_arg = true},
	        {.name = "sells", .has_arg = true},
	        {.name = "min-calls", .has_arg = true},
	        {.name = "provisional-score", .has_arg = true},
	        {.name = "explore-share", .has_arg = true},
	};
	const size_t nopts = NCOLS(opts);
	const bool update = strcmp(sub, "set") == 0;
	const char *cmd = update ? "program set" : "program add";
	const char *pos[1];
	size_t npos;
	char err[256];
	assign a = {0};
	int rc = cli_args_parse(argc, argv, opts, nopts, pos, 1, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(program_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	if (npos != 1)
		return cli_usage_error(cmd, "expected a program ID");
	if (!rb_valid_id(pos[0], 64))
		return cli_usage_error(cmd, "bad program ID '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)",
		                       pos[0]);
	if (!update && !cli_opt_has(opts, nopts, "name"))
		return cli_usage_error(cmd, "--name is required");
	rc = collect(cmd, opts, nopts, program_fields, NCOLS(program_fields), &a);
	if (rc == 0 && update && a.n == 0)
		rc = cli_usage_error(cmd, "nothing to change: give at least one option");
	if (rc == 0)
		rc = write_row("roster.programs", "program", pos[0], "text", &a, update);
	assign_fini(&a);
	return rc;
}

// list / show for both programs and agents.
static int roster_read(const char *cmd, const char *what, const char *select, const col *cols,
                       size_t ncols, bool show, int argc, char **argv)
{
	cli_opt opts[] = {{.name = "json"}};
	const char *pos[1];
	size_t npos;
	char err[256], sql[1024];
	uint64_t id;
	int rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);

	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	if (show && npos != 1)
		return cli_usage_error(cmd, "expected an ID");
	if (!show && npos != 0)
		return cli_usage_error(cmd, "unexpected argument '%s'", pos[0]);
	if (show && cols[0].type == COL_INT && cli_parse_agent_id(pos[0], &id) < 0)
		return cli_usage_error(cmd, "bad ID '%.32s' (a whole number from 1)", pos[0]);
	if (show && cols[0].type != COL_INT && !rb_valid_id(pos[0], 64))
		return cli_usage_error(cmd, "bad ID '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)", pos[0]);
	snprintf(sql, sizeof sql, "%s%s ORDER BY id", select,
	         !show ? ""
	               : (cols[0].type == COL_INT ? " WHERE id = $1::bigint" : " WHERE id = $1"));
	return print_query(sql, show ? pos[0] : NULL, what, cols, ncols,
	                   cli_opt_has(opts, 1, "json"));
}

static bool is_help(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return false;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return true;
	}
	return false;
}

int cli_cmd_program(int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (argc == 0 || (argc >= 1 && (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0))) {
		fputs(program_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (strcmp(sub, "add") != 0 && strcmp(sub, "set") != 0 && strcmp(sub, "list") != 0 &&
	    strcmp(sub, "show") != 0)
		return cli_usage_error("program", "unknown subcommand '%s'", sub);
	if (is_help(argc - 1, argv + 1)) {
		fputs(program_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(sub, "add") == 0 || strcmp(sub, "set") == 0)
		return program_write(sub, argc - 1, argv + 1);
	return roster_read(strcmp(sub, "list") == 0 ? "program list" : "program show", "program",
	                   program_select, program_cols, NCOLS(program_cols),
	                   strcmp(sub, "show") == 0, argc - 1, argv + 1);
}

// ---------------------------------------------------------------------------------------------
// ringbid agent

static const char agent_usage[] =
        "usage: ringbid agent add ID --name NAME [--skills a,b] [--score N] [--secret-file FILE]\n"
        "       ringbid agent set ID [--name NAME] [--skills a,b] [--score N|auto]\n"
        "                            [--status active|suspended] [--secret-file FILE]\n"
        "       ringbid agent list [--json]\n"
        "       ringbid agent show ID [--json]\n"
        "       ringbid agent score ID [--json]\n"
        "       ringbid agent import FILE [--secret-file FILE]\n"
        "\n"
        "ID is a whole number from 1. The agent's secret (what the agent logs in with) is read\n"
        "from --secret-file, or for add and import from $RINGBID_AGENT_SECRET; never from the\n"
        "command line. It is stored only as an argon2id hash.\n"
        "\n"
        "options:\n"
        "  --name NAME          display name\n"
        "  --skills a,b         the agent's skills (\"\" for none)\n"
        "  --score N            performance score 0-100 set by hand: pinned, the scheduled\n"
        "                       recompute leaves it alone. Without it the agent starts at 50\n"
        "                       and the recompute computes its score from its outcomes\n"
        "  --score auto         (set) unpin: the next recompute computes the score again\n"
        "  --status S           active or suspended (a suspended agent cannot log in)\n"
        "  --secret-file FILE   file holding the secret (one line)\n"
        "  --json               list/show: JSON output\n"
        "\n"
        "import reads CSV lines 'id,name,skills,score' (skills separated by ';', score optional;\n"
        "'#' comments and a header line are skipped; FILE '-' is stdin). Every imported agent\n"
        "gets the same secret; existing agents are updated (name, skills, score, secret).\n"
        "A score in the file is pinned like --score N; an empty one leaves the score to the\n"
        "recompute (50 for a new agent, unchanged for an existing one).\n"
        "\n"
        "score shows the agent's overall and program scores and, for each, the parts: raw\n"
        "value, normalised value (0-1), weight and number of observations; the window and\n"
        "when it was computed; whether a score is provisional or pinned.\n";

// Reads and hashes the secret into hash. Returns 0, or the exit status after printing why.
static int secret_hash(const char *cmd, const char *file, bool env_ok, bool required,
                       char hash[RB_SECRET_HASH_MAX], bool *have)
{
	char secret[CLI_SECRET_MAX + 8], err[512];
	int rc = cli_read_secret(file, env_ok, secret, sizeof secret, err, sizeof err);

	*have = false;
	if (rc == RB_ENOTFOUND && !required)
		return 0;
	if (rc == RB_ENOTFOUND)
		return cli_usage_error(cmd, "%s", err);
	if (rc < 0)
		return cli_fail("%s", err);
	rc = rb_secret_hash(secret, hash);
	explicit_bzero(secret, sizeof secret);
	if (rc < 0)
		return cli_fail("cannot hash the secret: %s", rb_err_str(rc));
	*have = true;
	return 0;
}

// A refused secret on the command line gets its own message: it would sit in shell history.
static int refuse_secret_argv(const char *cmd, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--secret") == 0 || strncmp(argv[i], "--secret=", 9) == 0)
			return cli_usage_error(cmd,
			                       "the secret is never taken from the command line: "
			                       "use --secret-file FILE or RINGBID_AGENT_SECRET");
	}
	return 0;
}

static int agent_write(const char *sub, int argc, char **argv)
{
	cli_opt opts[] = {
	        {.name = "name", .has_arg = true},        {.name = "skills", .has_arg = true},
	        {.name = "score", .has_arg = true},       {.name = "status", .has_arg = true},
	        {.name = "secret-file", .has_arg = true},
	};
	const size_t nopts = NCOLS(opts);
	const bool update = strcmp(sub, "set") == 0;
	const char *cmd = update ? "agent set" : "agent add";
	const char *pos[1];
	size_t npos;
	char err[256], hash[RB_SECRET_HASH_MAX];
	uint64_t id;
	bool have_hash;
	assign a = {0};
	int rc = refuse_secret_argv(cmd, argc, argv);

	if (rc)
		return rc;
	rc = cli_args_parse(argc, argv, opts, nopts, pos, 1, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(agent_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	if (npos != 1)
		return cli_usage_error(cmd, "expected an agent ID");
	if (cli_parse_agent_id(pos[0], &id) < 0)
		return cli_usage_error(cmd, "bad agent ID '%.32s' (a whole number from 1)", pos[0]);
	if (!update && !cli_opt_has(opts, nopts, "name"))
		return cli_usage_error(cmd, "--name is required");
	if (!update && cli_opt_has(opts, nopts, "status"))
		return cli_usage_error(cmd, "--status is for 'agent set'; new agents are active");
	rc = collect(cmd, opts, nopts, agent_fields, NCOLS(agent_fields), &a);
	if (rc == 0)
		rc = secret_hash(cmd, cli_opt_get(opts, nopts, "secret-file"), !update, !update,
		                 hash, &have_hash);
	if (rc == 0 && have_hash && assign_add(&a, "secret_hash", "text", strdup(hash)) < 0)
		rc = cli_fail("out of memory");
	if (rc == 0 && update && a.n == 0)
		rc = cli_usage_error(cmd, "nothing to change: give at least one option");
	if (rc == 0) {
		char idtext[24];

		snprintf(idtext, sizeof idtext, "%llu", (unsigned long long)id);
		rc = write_row("roster.agents", "agent", idtext, "bigint", &a, update);
	}
	explicit_bzero(hash, sizeof hash);
	assign_fini(&a);
	return rc;
}

typedef struct rows {
	cli_agent_row *v;
	size_t n, cap;
} rows;

static void rows_fini(rows *r)
{
	for (size_t i = 0; i < r->n; i++)
		cli_agent_row_fini(&r->v[i]);
	free(r->v);
}

static int cmp_row_id(const void *a, const void *b)
{
	uint64_t x = ((const cli_agent_row *)a)->id, y = ((const cli_agent_row *)b)->id;

	return x < y ? -1 : x > y;
}

// Reads every line of the import file; any bad line refuses the whole file.
static int import_read(const char *path, rows *out)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "re");
	char *line = NULL, err[256];
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int rc = CLI_EXIT_OK;

	if (!f)
		return cli_fail("cannot read %s: %s", path, strerror(errno));
	while ((len = getline(&line, &cap, f)) >= 0) {
		cli_agent_row row = {0};

		lineno++;
		if (len > 0 && line[len - 1] == '\n')
			line[len - 1] = '\0';
		int r = cli_csv_agent_line(line, &row, err, sizeof err);

		if (r == CLI_CSV_SKIP)
			continue;
		if (r < 0) {
			rc = cli_fail("%s:%zu: %s", path, lineno, err);
			break;
		}
		if (out->n == out->cap) {
			size_t ncap = out->cap ? out->cap * 2 : 256;
			cli_agent_row *nv =
			        out->n < IMPORT_MAX ? realloc(out->v, ncap * sizeof *nv) : NULL;

			if (!nv) {
				cli_agent_row_fini(&row);
				rc = cli_fail("%s: too many rows", path);
				break;
			}
			out->v = nv;
			out->cap = ncap;
		}
		out->v[out->n++] = row;
	}
	if (rc == CLI_EXIT_OK && ferror(f))
		rc = cli_fail("cannot read %s: %s", path, strerror(errno));
	free(line);
	if (f != stdin)
		fclose(f);
	if (rc != CLI_EXIT_OK)
		return rc;
	// Two lines for one agent are most likely a mistake in the file, not an update.
	qsort(out->v, out->n, sizeof *out->v, cmp_row_id);
	for (size_t i = 1; i < out->n; i++) {
		if (out->v[i].id == out->v[i - 1].id)
			return cli_fail("%s: agent %llu appears twice", path,
			                (unsigned long long)out->v[i].id);
	}
	return CLI_EXIT_OK;
}

// Inserts or updates rows [from, to) with one statement; adds to *added and *updated.
static int import_batch(PGconn *conn, const rows *r, size_t from, size_t to, const char *hash,
                        size_t *added, size_t *updated)
{
	size_t n = to - from, np = 0;
	char *sql = malloc(n * 160 + 768);
	const char **params = calloc(n * 5, sizeof *params);
	char(*ids)[24] = calloc(n, sizeof *ids);
	char **arrays = calloc(n, sizeof *arrays);
	size_t off = 0;
	PGresult *res = NULL;
	int rc = CLI_EXIT_OK;

	if (!sql || !params || !ids || !arrays) {
		rc = cli_fail("out of memory");
		goto out;
	}
	off += (size_t)sprintf(sql, "INSERT INTO roster.agents AS a (id, name, skills, score, "
	                            "score_pinned, secret_hash) VALUES ");
	for (size_t i = 0; i < n; i++) {
		const cli_agent_row *row = &r->v[from + i];

		snprintf(ids[i], sizeof ids[i], "%llu", (unsigned long long)row->id);
		if (cli_pg_array(row->skills, row->nskills, &arrays[i]) < 0) {
			rc = cli_fail("out of memory");
			goto out;
		}
		params[np++] = ids[i];
		params[np++] = row->name;
		params[np++] = arrays[i];
		params[np++] = row->score[0] ? row->score : NULL;
		params[np++] = hash;
		off += (size_t)sprintf(sql + off,
		                       "%s($%zu::bigint, $%zu::text, $%zu::text[], "
		                       "coalesce($%zu::numeric, 50), $%zu::numeric IS NOT NULL, "
		                       "$%zu::text)",
		                       i ? ", " : "", np - 4, np - 3, np - 2, np - 1, np - 1, np);
	}
	// A score in the file is set by hand (pinned); an empty one keeps what the agent has. Every
	// row carries the same hash ($5): EXCLUDED.secret_hash would need the right to read the
	// column, which supervisors do not have.
	sprintf(sql + off, " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
	                   "skills = EXCLUDED.skills, score = CASE WHEN EXCLUDED.score_pinned "
	                   "THEN EXCLUDED.score ELSE a.score END, "
	                   "score_pinned = a.score_pinned OR EXCLUDED.score_pinned, "
	                   "secret_hash = $5::text RETURNING (xmax = 0)");
	if (cli_db_exec(conn, sql, (int)np, params, &res) < 0) {
		rc = strcmp(cli_db_sqlstate(res), "42P01") == 0
		             ? cli_fail("the roster schema is missing: run 'ringbid db migrate'")
		             : cli_db_fail(conn, res, "import refused");
		goto out;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		if (strcmp(PQgetvalue(res, i, 0), "t") == 0)
			(*added)++;
		else
			(*updated)++;
	}
out:
	PQclear(res);
	if (arrays) {
		for (size_t i = 0; i < n; i++)
			free(arrays[i]);
	}
	free(arrays);
	free(ids);
	free(params);
	free(sql);
	return rc;
}

static int agent_import(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "secret-file", .has_arg = true}};
	const char *pos[1];
	size_t npos, added = 0, updated = 0;
	char err[256], hash[RB_SECRET_HASH_MAX];
	bool have_hash;
	rows r = {0};
	PGconn *conn = NULL;
	PGresult *res;
	int rc = refuse_secret_argv("agent import", argc, argv);

	if (rc)
		return rc;
	rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(agent_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("agent import", "%s", err);
	if (npos != 1)
		return cli_usage_error("agent import", "expected a CSV file ('-' for stdin)");
	rc = import_read(pos[0], &r);
	if (rc == CLI_EXIT_OK && r.n == 0)
		rc = cli_fail("%s: no agents in the file", pos[0]);
	// One argon2id hash for the whole file: hashing is deliberately slow.
	if (rc == CLI_EXIT_OK)
		rc = secret_hash("agent import", cli_opt_get(opts, 1, "secret-file"), true, true,
		                 hash, &have_hash);
	if (rc == CLI_EXIT_OK && cli_db_connect(&conn) < 0)
		rc = CLI_EXIT_ERR;
	if (rc == CLI_EXIT_OK) {
		if (cli_db_exec(conn, "BEGIN", 0, NULL, &res) < 0)
			rc = cli_db_fail(conn, res, "cannot start a transaction");
		PQclear(res);
	}
	for (size_t from = 0; rc == CLI_EXIT_OK && from < r.n; from += IMPORT_BATCH) {
		size_t to = from + IMPORT_BATCH < r.n ? from + IMPORT_BATCH : r.n;

		rc = import_batch(conn, &r, from, to, hash, &added, &updated);
	}
	if (rc == CLI_EXIT_OK) {
		if (cli_db_exec(conn, "COMMIT", 0, NULL, &res) < 0)
			rc = cli_db_fail(conn, res, "cannot commit the import");
		PQclear(res);
	} else if (conn) {
		PQclear(PQexec(conn, "ROLLBACK"));
	}
	PQfinish(conn);
	if (rc == CLI_EXIT_OK)
		printf("imported %zu agents (%zu added, %zu updated)\n", added + updated, added,
		       updated);
	explicit_bzero(hash, sizeof hash);
	rows_fini(&r);
	return rc;
}

int cli_cmd_agent(int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (argc == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
		fputs(agent_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (strcmp(sub, "add") != 0 && strcmp(sub, "set") != 0 && strcmp(sub, "list") != 0 &&
	    strcmp(sub, "show") != 0 && strcmp(sub, "import") != 0 && strcmp(sub, "score") != 0)
		return cli_usage_error("agent", "unknown subcommand '%s'", sub);
	if (strcmp(sub, "score") == 0)
		return cli_agent_score(argc - 1, argv + 1);
	if (is_help(argc - 1, argv + 1)) {
		fputs(agent_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(sub, "add") == 0 || strcmp(sub, "set") == 0)
		return agent_write(sub, argc - 1, argv + 1);
	if (strcmp(sub, "import") == 0)
		return agent_import(argc - 1, argv + 1);
	return roster_read(strcmp(sub, "list") == 0 ? "agent list" : "agent show", "agent",
	                   agent_select, agent_cols, NCOLS(agent_cols), strcmp(sub, "show") == 0,
	                   argc - 1, argv + 1);
}
