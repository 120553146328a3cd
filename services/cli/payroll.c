// `ringbid rate …` and `ringbid payroll …`: rates, pay periods, closing, exports, explanations.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "rb_err.h"
#include "rb_pb.h"

static const char rate_usage[] =
        "usage: ringbid rate set PROGRAM RATE [--agent ID] [--from ISO-TIME]\n"
        "       ringbid rate list [--program ID] [--agent ID] [--json]\n"
        "\n"
        "Rates are money per talk minute (numeric(12,4), e.g. 0.3000), effective from a time\n"
        "on (default now). A call pays the agent's own rate for its program in effect when it\n"
        "was answered, else the program-wide rate, else the program's default rate.\n";

static const char payroll_usage[] =
        "usage: ringbid payroll periods [--json]\n"
        "       ringbid payroll close PERIOD [--early]\n"
        "       ringbid payroll export PERIOD --format csv|adp|paychex|gusto [--output FILE]\n"
        "       ringbid payroll explain AGENT PERIOD [--json]\n"
        "\n"
        "Pay periods are weeks from Monday 00:00 in RINGBID_PAY_TZ (default UTC). PERIOD is\n"
        "the Monday it starts on (YYYY-MM-DD), 'current' or 'previous'. A closed period never\n"
        "changes; a CDR that arrives later is paid in the open period on a LATE line.\n"
        "close refuses a period that has not ended unless --early says so: calls answered\n"
        "later in that week are then paid next week on LATE lines.\n"
        "export writes FILE ('-': standard output); without --output it writes\n"
        "ringbid-payroll-PERIOD-FORMAT.csv, or ...provisional.csv for a period still open.\n"
        "RINGBID_PAYROLL_COMPANY is the company code written in adp and paychex files.\n";

static const char *const formats[] = {"csv", "adp", "paychex", "gusto"};

bool cli_payroll_format_valid(const char *s)
{
	for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
		if (s && strcmp(s, formats[i]) == 0)
			return true;
	}
	return false;
}

bool cli_payroll_period_valid(const char *s)
{
	if (!s)
		return false;
	if (strcmp(s, "current") == 0 || strcmp(s, "previous") == 0)
		return true;
	if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
		return false;
	for (int i = 0; i < 10; i++) {
		if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
			return false;
	}
	return true;
}

bool cli_valid_time(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 10 || n > 40 || s[0] < '0' || s[0] > '9')
		return false;
	return strspn(s, "0123456789-:.TZ+ ") == n;
}

int cli_payroll_file_name(const char *start, const char *format, bool provisional, char *out,
                          size_t n)
{
	if (!cli_payroll_period_valid(start) || !cli_payroll_format_valid(format))
		return RB_EINVAL;
	if ((size_t)snprintf(out, n, "ringbid-payroll-%s-%s%s.csv", start, format,
	                     provisional ? ".provisional" : "") >= n)
		return RB_ETOOBIG;
	return 0;
}

static const char *pay_tz(void)
{
	const char *tz = getenv("RINGBID_PAY_TZ");

	return tz && *tz ? tz : "UTC";
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

static void print_json(json_t *j)
{
	char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;

	if (s) {
		puts(s);
		free(s);
	}
	json_decref(j);
}

// Runs one statement on a fresh connection; prints the failure. On success *conn and *res are
// the caller's (PQfinish, PQclear). Returns 0 or CLI_EXIT_ERR.
static int run(const char *sql, int n, const char *const *params, const char *what, PGconn **conn,
               PGresult **res)
{
	int rc;

	if (cli_db_connect(conn) < 0)
		return CLI_EXIT_ERR;
	rc = cli_db_exec(*conn, sql, n, params, res);
	if (rc < 0) {
		if (strcmp(cli_db_sqlstate(*res), "42P01") == 0 ||
		    strcmp(cli_db_sqlstate(*res), "42883") == 0)
			cli_fail("the pay tables are missing: run 'ringbid db migrate'");
		else
			cli_db_fail(*conn, *res, what);
		PQclear(*res);
		PQfinish(*conn);
		*res = NULL;
		*conn = NULL;
		return CLI_EXIT_ERR;
	}
	return 0;
}

// ---------------------------------------------------------------------------------------------
// rate

static int rate_set(int argc, char **argv)
{
	cli_opt opts[] = {{"agent", true, NULL, false}, {"from", true, NULL, false}};
	const char *pos[2], *agent, *from, *params[4];
	char err[200], agent_text[32] = "";
	size_t npos = 0;
	uint64_t aid = 0;
	PGconn *conn;
	PGresult *res;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 2, pos, 2, &npos, err, sizeof err);
	if (rc != 0)
		return cli_usage_error("rate set", "%s", err);
	if (npos != 2)
		return cli_usage_error("rate set", "expected PROGRAM and RATE");
	if (!rb_valid_id(pos[0], 64))
		return cli_usage_error("rate set", "bad program id '%s'", pos[0]);
	if (!cli_valid_money(pos[1]))
		return cli_usage_error("rate set", "bad rate '%s' (money per minute, e.g. 0.2500)",
		                       pos[1]);
	agent = cli_opt_get(opts, 2, "agent");
	if (agent) {
		if (cli_parse_agent_id(agent, &aid) < 0)
			return cli_usage_error("rate set", "bad agent id '%s'", agent);
		snprintf(agent_text, sizeof agent_text, "%llu", (unsigned long long)aid);
	}
	from = cli_opt_get(opts, 2, "from");
	if (from && !cli_valid_time(from))
		return cli_usage_error("rate set",
		                       "bad time '%s' (ISO 8601, e.g. 2026-11-16T00:00Z)", from);
	params[0] = agent ? agent_text : NULL;
	params[1] = pos[0];
	params[2] = pos[1];
	params[3] = from;
	if (run("WITH chk AS ("
	        " SELECT (SELECT count(*) FROM roster.programs WHERE id = $2) AS p,"
	        "  ($1::bigint IS NULL OR EXISTS (SELECT 1 FROM roster.agents WHERE id = "
	        "$1::bigint))"
	        "   AS a)"
	        " INSERT INTO billing.rates (agent_id, program, rate, effective_from)"
	        " SELECT $1::bigint, $2, $3::numeric, coalesce($4::timestamptz, now()) FROM chk"
	        " WHERE p = 1 AND a"
	        " ON CONFLICT (agent_id, program, effective_from) DO UPDATE SET rate = "
	        "EXCLUDED.rate"
	        " RETURNING to_char(effective_from AT TIME ZONE 'UTC',"
	        "  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), rate::text",
	        4, params, "cannot set the rate", &conn, &res) != 0)
		return CLI_EXIT_ERR;
	PQfinish(conn);
	if (PQntuples(res) == 0) {
		PQclear(res);
		return agent ? cli_fail("no program '%s' or no agent %s", pos[0], agent_text)
		             : cli_fail("no program '%s'", pos[0]);
	}
	printf("rate %s per minute for %s%s%s from %s\n", PQgetvalue(res, 0, 1), pos[0],
	       agent ? ", agent " : " (every agent)", agent ? agent_text : "",
	       PQgetvalue(res, 0, 0));
	PQclear(res);
	return CLI_EXIT_OK;
}

static int rate_list(int argc, char **argv)
{
	cli_opt opts[] = {{"program", true, NULL, false},
	                  {"agent", true, NULL, false},
	                  {"json", false, NULL, false}};
	const char *pos[1], *params[2];
	char err[200], agent_text[32];
	size_t npos = 0;
	uint64_t aid;
	PGconn *conn;
	PGresult *res;
	bool json;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 3, pos, 0, &npos, err, sizeof err);
	if (rc != 0)
		return cli_usage_error("rate list", "%s", err);
	json = cli_opt_has(opts, 3, "json");
	params[0] = cli_opt_get(opts, 3, "program");
	params[1] = NULL;
	if (params[0] && !rb_valid_id(params[0], 64))
		return cli_usage_error("rate list", "bad program id '%s'", params[0]);
	if (cli_opt_get(opts, 3, "agent")) {
		if (cli_parse_agent_id(cli_opt_get(opts, 3, "agent"), &aid) < 0)
			return cli_usage_error("rate list", "bad agent id '%s'",
			                       cli_opt_get(opts, 3, "agent"));
		snprintf(agent_text, sizeof agent_text, "%llu", (unsigned long long)aid);
		params[1] = agent_text;
	}
	if (run("SELECT program, coalesce(agent_id::text, ''), rate::text,"
	        " to_char(effective_from AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
	        " 'rate' FROM billing.rates"
	        " WHERE ($1::text IS NULL OR program = $1) AND ($2::bigint IS NULL OR agent_id = "
	        "$2)"
	        " UNION ALL SELECT id, '', default_rate::text, '', 'default' FROM roster.programs"
	        " WHERE ($1::text IS NULL OR id = $1) AND $2::bigint IS NULL"
	        " ORDER BY 1, 5, 2, 4",
	        2, params, "cannot read the rates", &conn, &res) != 0)
		return CLI_EXIT_ERR;
	PQfinish(conn);
	if (json) {
		json_t *a = json_array();

		for (int r = 0; r < PQntuples(res) && a; r++) {
			const char *agent = PQgetvalue(res, r, 1);
			bool dflt = strcmp(PQgetvalue(res, r, 4), "default") == 0;

			json_array_append_new(
			        a,
			        json_pack("{s:s, s:o, s:s, s:o, s:b}", "program",
			                  PQgetvalue(res, r, 0), "agent_id",
			                  *agent ? json_integer(strtoll(agent, NULL, 10))
			                         : json_null(),
			                  "rate", PQgetvalue(res, r, 2), "effective_from",
			                  dflt ? json_null() : json_string(PQgetvalue(res, r, 3)),
			                  "program_default", dflt));
		}
		print_json(a);
	} else if (PQntuples(res) == 0) {
		puts("no rates yet");
	} else {
		printf("%-20s  %-12s  %10s  %s\n", "PROGRAM", "AGENT", "RATE/MIN", "FROM");
		for (int r = 0; r < PQntuples(res); r++) {
			bool dflt = strcmp(PQgetvalue(res, r, 4), "default") == 0;
			const char *agent = PQgetvalue(res, r, 1);

			printf("%-20s  %-12s  %10s  %s\n", PQgetvalue(res, r, 0),
			       *agent ? agent : "(all)", PQgetvalue(res, r, 2),
			       dflt ? "(program default)" : PQgetvalue(res, r, 3));
		}
	}
	PQclear(res);
	return CLI_EXIT_OK;
}

int cli_cmd_rate(int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (argc == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
		fputs(rate_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (is_help(argc - 1, argv + 1)) {
		fputs(rate_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(sub, "set") == 0)
		return rate_set(argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0)
		return rate_list(argc - 1, argv + 1);
	return cli_usage_error("rate", "unknown subcommand '%s'", sub);
}

// ---------------------------------------------------------------------------------------------
// payroll

// Resolves PERIOD to its Monday and reads the period's state. On success *start (11 bytes) is
// the date, *closed its status. Returns 0 or CLI_EXIT_ERR / CLI_EXIT_USAGE (reason printed).
static int resolve(PGconn *conn, const char *cmd, const char *period, char *start, bool *closed,
                   char *tz_out, size_t tzn)
{
	const char *params[2] = {period, pay_tz()};
	PGresult *res;
	int rc;

	if (!cli_payroll_period_valid(period))
		return cli_usage_error(cmd,
		                       "bad period '%s' (a Monday as YYYY-MM-DD, current or "
		                       "previous)",
		                       period);
	rc = cli_db_exec(conn,
	                 "SELECT r.start_date::text, r.status, r.tz"
	                 " FROM billing.period_row(billing.resolve_period($1, $2), $2) r",
	                 2, params, &res);
	if (rc < 0) {
		rc = strcmp(cli_db_sqlstate(res), "22023") == 0
		             ? cli_db_fail(conn, res, "bad period")
		             : cli_db_fail(conn, res, "cannot read the pay period");
		PQclear(res);
		return rc;
	}
	snprintf(start, 11, "%s", PQgetvalue(res, 0, 0));
	*closed = strcmp(PQgetvalue(res, 0, 1), "closed") == 0;
	if (tz_out)
		snprintf(tz_out, tzn, "%s", PQgetvalue(res, 0, 2));
	PQclear(res);
	return 0;
}

static int payroll_periods(int argc, char **argv)
{
	cli_opt opts[] = {{"json", false, NULL, false}};
	const char *pos[1], *params[1] = {pay_tz()};
	char err[200];
	size_t npos = 0;
	PGconn *conn;
	PGresult *res;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 1, pos, 0, &npos, err, sizeof err);
	if (rc != 0)
		return cli_usage_error("payroll periods", "%s", err);
	// Stored periods, the current one, and any week with calls not yet in a closed period.
	if (run("WITH ps AS ("
	        " SELECT start_date FROM billing.pay_periods"
	        " UNION SELECT billing.period_start_of(now(), billing.check_tz($1))"
	        " UNION SELECT DISTINCT billing.period_start_of(answered_at, $1) FROM billing.cdrs"
	        "  WHERE answered_at IS NOT NULL AND answered_at >= coalesce((SELECT max(ends_at)"
	        "   FROM billing.pay_periods WHERE status = 'closed'), '-infinity'))"
	        " SELECT ps.start_date::text, (ps.start_date + 6)::text, r.status, r.tz,"
	        "  coalesce(to_char(r.closed_at AT TIME ZONE 'UTC', "
	        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
	        "   ''), t.n, t.c, t.a::text, (r.ends_at <= now())"
	        " FROM ps CROSS JOIN LATERAL billing.period_row(ps.start_date, $1) r"
	        " CROSS JOIN LATERAL (SELECT count(*) AS n,"
	        "  (SELECT count(DISTINCT cdr_id) FROM billing.pay_line_cdrs_for(ps.start_date, "
	        "$1))"
	        "   AS c, coalesce(sum(amount), 0)::numeric(14,2) AS a"
	        "  FROM billing.pay_lines_for(ps.start_date, $1)) t"
	        " ORDER BY ps.start_date DESC",
	        1, params, "cannot list the pay periods", &conn, &res) != 0)
		return CLI_EXIT_ERR;
	PQfinish(conn);
	if (cli_opt_has(opts, 1, "json")) {
		json_t *a = json_array();

		for (int r = 0; r < PQntuples(res) && a; r++) {
			const char *closed_at = PQgetvalue(res, r, 4);

			json_array_append_new(
			        a,
			        json_pack("{s:s, s:s, s:s, s:s, s:o, s:b, s:I, s:I, s:s, s:s}",
			                  "period", PQgetvalue(res, r, 0), "period_end",
			                  PQgetvalue(res, r, 1), "status", PQgetvalue(res, r, 2),
			                  "tz", PQgetvalue(res, r, 3), "closed_at",
			                  *closed_at ? json_string(closed_at) : json_null(),
			                  "ended", strcmp(PQgetvalue(res, r, 8), "t") == 0, "lines",
			                  (json_int_t)strtoll(PQgetvalue(res, r, 5), NULL, 10),
			                  "cdrs",
			                  (json_int_t)strtoll(PQgetvalue(res, r, 6), NULL, 10),
			                  "amount", PQgetvalue(res, r, 7), "currency", "USD"));
		}
		print_json(a);
	} else {
		printf("%-10s  %-10s  %-6s  %-20s  %5s  %6s  %12s  %s\n", "PERIOD", "END", "STATUS",
		       "TZ", "LINES", "CDRS", "AMOUNT", "CLOSED AT");
		for (int r = 0; r < PQntuples(res); r++) {
			const char *closed_at = PQgetvalue(res, r, 4);

			printf("%-10s  %-10s  %-6s  %-20s  %5s  %6s  %12s  %s\n",
			       PQgetvalue(res, r, 0), PQgetvalue(res, r, 1), PQgetvalue(res, r, 2),
			       PQgetvalue(res, r, 3), PQgetvalue(res, r, 5), PQgetvalue(res, r, 6),
			       PQgetvalue(res, r, 7),
			       *closed_at                                ? closed_at
			       : strcmp(PQgetvalue(res, r, 8), "t") == 0 ? "(ended, not closed)"
			                                                 : "(running)");
		}
	}
	PQclear(res);
	return CLI_EXIT_OK;
}

static int payroll_close(int argc, char **argv)
{
	const char *pos[1], *params[2];
	char err[200], start[11], tz[128];
	size_t npos = 0;
	bool closed;
	PGconn *conn;
	PGresult *res;
	int rc;
	cli_opt opts[] = {{.name = "early"}};

	rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(payroll_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc != 0)
		return cli_usage_error("payroll close", "%s", err);
	bool early = cli_opt_has(opts, 1, "early");
	if (npos != 1)
		return cli_usage_error("payroll close", "expected PERIOD");
	if (!cli_payroll_period_valid(pos[0]))
		return cli_usage_error(
		        "payroll close",
		        "bad period '%s' (a Monday as YYYY-MM-DD, current or previous)", pos[0]);
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = resolve(conn, "payroll close", pos[0], start, &closed, tz, sizeof tz);
	if (rc != 0) {
		PQfinish(conn);
		return rc;
	}
	params[0] = start;
	params[1] = tz;
	// --early: the setting lives only in this transaction, so nothing else closes early.
	if (early) {
		rc = cli_db_exec(conn, "BEGIN", 0, NULL, &res);
		PQclear(res);
		if (rc == 0) {
			rc = cli_db_exec(conn,
			                 "SELECT set_config('ringbid.close_early', 'on', true)", 0,
			                 NULL, &res);
			PQclear(res);
		}
		if (rc < 0) {
			rc = cli_fail("cannot close the pay period: %s", PQerrorMessage(conn));
			PQfinish(conn);
			return rc;
		}
	}
	rc = cli_db_exec(conn,
	                 "SELECT status, to_char(closed_at AT TIME ZONE 'UTC',"
	                 " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), lines, cdrs, amount::text"
	                 " FROM billing.close_period($1::date, $2)",
	                 2, params, &res);
	if (rc < 0) {
		const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		rc = cli_db_fail(conn, res, "cannot close the pay period");
		if (state != NULL && strcmp(state, "55000") == 0 && !early)
			fprintf(stderr,
			        "ringbid: --early closes it now; calls answered later in that "
			        "week are then paid next week on LATE lines\n");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	if (early) {
		PGresult *c = NULL;
		if (cli_db_exec(conn, "COMMIT", 0, NULL, &c) < 0) {
			PQclear(c);
			PQclear(res);
			PQfinish(conn);
			return cli_fail("cannot close the pay period: the commit failed");
		}
		PQclear(c);
	}
	if (strcmp(PQgetvalue(res, 0, 0), "already_closed") == 0)
		printf("pay period %s was already closed at %s: %s lines, %s CDRs, %s USD; "
		       "nothing changed\n",
		       start, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3),
		       PQgetvalue(res, 0, 4));
	else
		printf("closed pay period %s (%s): froze %s pay lines from %s CDRs, %s USD\n",
		       start, tz, PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3),
		       PQgetvalue(res, 0, 4));
	PQclear(res);
	PQfinish(conn);
	return CLI_EXIT_OK;
}

// Writes the export lines to f with CRLF endings (RFC 4180). Returns 0 or RB_EIO.
static int write_lines(FILE *f, const PGresult *res)
{
	for (int r = 0; r < PQntuples(res); r++) {
		if (fputs(PQgetvalue(res, r, 0), f) == EOF || fputs("\r\n", f) == EOF)
			return RB_EIO;
	}
	return fflush(f) == 0 ? 0 : RB_EIO;
}

static int payroll_export(int argc, char **argv)
{
	cli_opt opts[] = {{"format", true, NULL, false}, {"output", true, NULL, false}};
	const char *pos[1], *format, *output, *params[3];
	const char *company = getenv("RINGBID_PAYROLL_COMPANY");
	char err[200], start[11], name[128], tmp[4200];
	size_t npos = 0;
	bool closed;
	PGconn *conn;
	PGresult *res;
	FILE *f;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 2, pos, 1, &npos, err, sizeof err);
	if (rc != 0)
		return cli_usage_error("payroll export", "%s", err);
	if (npos != 1)
		return cli_usage_error("payroll export", "expected PERIOD");
	format = cli_opt_get(opts, 2, "format");
	if (!format)
		return cli_usage_error("payroll export", "--format is required (csv, adp, paychex, "
		                                         "gusto)");
	if (!cli_payroll_format_valid(format))
		return cli_usage_error("payroll export",
		                       "unknown format '%s' (csv, adp, paychex, gusto)", format);
	if (!cli_payroll_period_valid(pos[0]))
		return cli_usage_error(
		        "payroll export",
		        "bad period '%s' (a Monday as YYYY-MM-DD, current or previous)", pos[0]);
	output = cli_opt_get(opts, 2, "output");
	if (output && !*output)
		return cli_usage_error("payroll export", "--output needs a file name or '-'");
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = resolve(conn, "payroll export", pos[0], start, &closed, NULL, 0);
	if (rc != 0) {
		PQfinish(conn);
		return rc;
	}
	params[0] = company ? company : "";
	rc = cli_db_exec(conn, "SELECT set_config('ringbid.payroll_company', $1, false)", 1, params,
	                 &res);
	PQclear(res);
	if (rc < 0) {
		PQfinish(conn);
		return cli_fail("cannot set the payroll company code");
	}
	params[0] = start;
	params[1] = pay_tz();
	params[2] = format;
	rc = cli_db_exec(conn, "SELECT line FROM billing.payroll_export($1::date, $2, $3) AS line",
	                 3, params, &res);
	if (rc < 0) {
		rc = cli_db_fail(conn, res, "cannot export the pay period");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	PQfinish(conn);
	if (!output) {
		cli_payroll_file_name(start, format, !closed, name, sizeof name);
		output = name;
	}
	if (!closed)
		fprintf(stderr,
		        "ringbid: pay period %s is still open: this export is PROVISIONAL and will "
		        "change until the period is closed ('ringbid payroll close %s')\n",
		        start, start);
	if (strcmp(output, "-") == 0) {
		rc = write_lines(stdout, res);
		PQclear(res);
		return rc < 0 ? cli_fail("cannot write the export to standard output")
		              : CLI_EXIT_OK;
	}
	// A temporary file renamed into place: a reader never sees half an export.
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", output, (int)getpid()) >= sizeof tmp) {
		PQclear(res);
		return cli_fail("output file name too long");
	}
	f = fopen(tmp, "w");
	if (!f) {
		PQclear(res);
		return cli_fail("cannot write %s: %s", tmp, strerror(errno));
	}
	rc = write_lines(f, res);
	if (fclose(f) != 0)
		rc = RB_EIO;
	if (rc == 0 && rename(tmp, output) != 0)
		rc = RB_EIO;
	if (rc < 0) {
		unlink(tmp);
		PQclear(res);
		return cli_fail("cannot write %s: %s", output, strerror(errno));
	}
	fprintf(stderr, "wrote %d %s lines (%s pay period %s) to %s\n", PQntuples(res) - 1, format,
	        closed ? "closed" : "provisional: open", start, output);
	PQclear(res);
	return CLI_EXIT_OK;
}

static int payroll_explain(int argc, char **argv)
{
	cli_opt opts[] = {{"json", false, NULL, false}};
	const char *pos[2], *params[3];
	char err[200], start[11], agent_text[32];
	size_t npos = 0;
	uint64_t aid;
	bool closed, json;
	PGconn *conn;
	PGresult *lines, *cdrs;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 1, pos, 2, &npos, err, sizeof err);
	if (rc != 0)
		return cli_usage_error("payroll explain", "%s", err);
	if (npos != 2)
		return cli_usage_error("payroll explain", "expected AGENT and PERIOD");
	if (cli_parse_agent_id(pos[0], &aid) < 0)
		return cli_usage_error("payroll explain", "bad agent id '%s'", pos[0]);
	json = cli_opt_has(opts, 1, "json");
	snprintf(agent_text, sizeof agent_text, "%llu", (unsigned long long)aid);
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = resolve(conn, "payroll explain", pos[1], start, &closed, NULL, 0);
	if (rc != 0) {
		PQfinish(conn);
		return rc;
	}
	params[0] = start;
	params[1] = pay_tz();
	params[2] = agent_text;
	rc = cli_db_exec(conn,
	                 "SELECT program, code, rate::text, quantity::text, amount::text, currency,"
	                 " coalesce(original_period::text, ''), cdr_count"
	                 " FROM billing.pay_lines_for($1::date, $2) WHERE agent_id = $3::bigint",
	                 3, params, &lines);
	if (rc < 0) {
		rc = cli_db_fail(conn, lines, "cannot read the pay lines");
		PQclear(lines);
		PQfinish(conn);
		return rc;
	}
	rc = cli_db_exec(conn,
	                 "SELECT x.program, x.code, x.rate::text,"
	                 " coalesce(x.original_period::text, ''), x.cdr_id, c.call_id,"
	                 " to_char(c.answered_at AT TIME ZONE 'UTC',"
	                 "  'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), c.talk_s,"
	                 " round(x.quantity, 4)::text, round(x.share, 6)::text"
	                 " FROM billing.pay_line_cdrs_for($1::date, $2) x"
	                 " JOIN billing.cdrs c ON c.cdr_id = x.cdr_id"
	                 " WHERE x.agent_id = $3::bigint ORDER BY c.answered_at, x.cdr_id, x.code",
	                 3, params, &cdrs);
	if (rc < 0) {
		rc = cli_db_fail(conn, cdrs, "cannot read the CDRs behind the pay lines");
		PQclear(cdrs);
		PQclear(lines);
		PQfinish(conn);
		return rc;
	}
	PQfinish(conn);
	if (json) {
		json_t *o = json_pack("{s:I, s:s, s:s, s:b}", "agent_id", (json_int_t)aid, "period",
		                      start, "status", closed ? "closed" : "open", "provisional",
		                      !closed);
		json_t *arr = json_array();

		for (int l = 0; l < PQntuples(lines) && o && arr; l++) {
			const char *orig = PQgetvalue(lines, l, 6);
			json_t *line = json_pack(
			        "{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:I}", "program",
			        PQgetvalue(lines, l, 0), "code", PQgetvalue(lines, l, 1), "rate",
			        PQgetvalue(lines, l, 2), "quantity", PQgetvalue(lines, l, 3),
			        "amount", PQgetvalue(lines, l, 4), "currency",
			        PQgetvalue(lines, l, 5), "original_period",
			        *orig ? json_string(orig) : json_null(), "cdr_count",
			        (json_int_t)strtoll(PQgetvalue(lines, l, 7), NULL, 10));
			json_t *list = json_array();

			for (int c = 0; c < PQntuples(cdrs) && line && list; c++) {
				if (strcmp(PQgetvalue(cdrs, c, 0), PQgetvalue(lines, l, 0)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 1), PQgetvalue(lines, l, 1)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 2), PQgetvalue(lines, l, 2)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 3), orig) != 0)
					continue;
				json_array_append_new(
				        list, json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s}",
				                        "cdr_id", PQgetvalue(cdrs, c, 4), "call_id",
				                        PQgetvalue(cdrs, c, 5), "answered_at",
				                        PQgetvalue(cdrs, c, 6), "talk_s",
				                        (json_int_t)strtoll(PQgetvalue(cdrs, c, 7),
				                                            NULL, 10),
				                        "rate", PQgetvalue(cdrs, c, 2), "quantity",
				                        PQgetvalue(cdrs, c, 8), "amount_share",
				                        PQgetvalue(cdrs, c, 9)));
			}
			json_object_set_new(line, "cdrs", list);
			json_array_append_new(arr, line);
		}
		json_object_set_new(o, "lines", arr);
		print_json(o);
	} else if (PQntuples(lines) == 0) {
		printf("agent %s earned nothing in pay period %s%s\n", agent_text, start,
		       closed ? "" : " (so far)");
	} else {
		printf("agent %s, pay period %s (%s)\n", agent_text, start,
		       closed ? "closed" : "open: provisional");
		for (int l = 0; l < PQntuples(lines); l++) {
			const char *orig = PQgetvalue(lines, l, 6);

			printf("%s %s  %s x %s = %s %s  (%s CDRs%s%s)\n", PQgetvalue(lines, l, 0),
			       PQgetvalue(lines, l, 1), PQgetvalue(lines, l, 3),
			       PQgetvalue(lines, l, 2), PQgetvalue(lines, l, 4),
			       PQgetvalue(lines, l, 5), PQgetvalue(lines, l, 7),
			       *orig ? ", answered in period " : "", orig);
			for (int c = 0; c < PQntuples(cdrs); c++) {
				if (strcmp(PQgetvalue(cdrs, c, 0), PQgetvalue(lines, l, 0)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 1), PQgetvalue(lines, l, 1)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 2), PQgetvalue(lines, l, 2)) != 0 ||
				    strcmp(PQgetvalue(cdrs, c, 3), orig) != 0)
					continue;
				printf("    call %-24s answered %s  talk %6s s  %s x %s = %s\n",
				       PQgetvalue(cdrs, c, 5), PQgetvalue(cdrs, c, 6),
				       PQgetvalue(cdrs, c, 7), PQgetvalue(cdrs, c, 8),
				       PQgetvalue(cdrs, c, 2), PQgetvalue(cdrs, c, 9));
			}
		}
	}
	PQclear(cdrs);
	PQclear(lines);
	return CLI_EXIT_OK;
}

int cli_cmd_payroll(int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (argc == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
		fputs(payroll_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (is_help(argc - 1, argv + 1)) {
		fputs(payroll_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(sub, "periods") == 0)
		return payroll_periods(argc - 1, argv + 1);
	if (strcmp(sub, "close") == 0)
		return payroll_close(argc - 1, argv + 1);
	if (strcmp(sub, "export") == 0)
		return payroll_export(argc - 1, argv + 1);
	if (strcmp(sub, "explain") == 0)
		return payroll_explain(argc - 1, argv + 1);
	return cli_usage_error("payroll", "unknown subcommand '%s'", sub);
}
