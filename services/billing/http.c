// Billing's HTTP routes for money: the payroll download (finance only) and an agent's own
// earnings. Tokens are looked up by their hash in PostgreSQL, asynchronously, on every request.
#include "http.h"
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_secret.h"

// ---------------------------------------------------------------------------------------------
// Pure parsing

static bool token_char(char c)
{
	return isalnum((unsigned char)c) || c == '.' || c == '_' || c == '~' || c == '+' ||
	       c == '/' || c == '=' || c == '-';
}

int billing_http_bearer(const char *header, char *token, size_t n)
{
	if (header == NULL || token == NULL || n < 2)
		return RB_EAUTH;
	while (*header == ' ' || *header == '\t')
		header++;
	if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t'))
		return RB_EAUTH;
	const char *p = header + 6;
	while (*p == ' ' || *p == '\t')
		p++;
	size_t len = 0;
	while (p[len] != '\0' && token_char(p[len]))
		len++;
	const char *rest = p + len;
	while (*rest == ' ' || *rest == '\t')
		rest++;
	if (len == 0 || len >= n || *rest != '\0')
		return RB_EAUTH;
	memcpy(token, p, len);
	token[len] = '\0';
	return 0;
}

int billing_http_period(const char *text)
{
	static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (text == NULL || strlen(text) != BILLING_PERIOD_LEN || text[4] != '-' || text[7] != '-')
		return RB_EINVAL;
	for (int i = 0; i < BILLING_PERIOD_LEN; i++)
		if (i != 4 && i != 7 && !isdigit((unsigned char)text[i]))
			return RB_EINVAL;
	int y = atoi(text), m = atoi(text + 5), d = atoi(text + 8);
	if (y < 2000 || y > 9999 || m < 1 || m > 12 || d < 1)
		return RB_EINVAL;
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	int max = mdays[m - 1] + (m == 2 && leap ? 1 : 0);
	return d <= max ? 0 : RB_EINVAL;
}

int billing_http_format(const char *text)
{
	static const char *const formats[] = {"csv", "adp", "paychex", "gusto"};

	if (text == NULL)
		return RB_EINVAL;
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
		if (strcmp(text, formats[i]) == 0)
			return 0;
	return RB_EINVAL;
}

int billing_http_filename(const char *period, const char *format, bool provisional, char *out,
                          size_t n)
{
	int len = snprintf(out, n, "ringbid-payroll-%s-%s%s.csv", period, format,
	                   provisional ? ".provisional" : "");
	return len < 0 || (size_t)len >= n ? RB_ETOOBIG : 0;
}

// ---------------------------------------------------------------------------------------------
// Requests

typedef enum {
	ROUTE_EXPORT = 0,
	ROUTE_EARNINGS,
} route_kind;

// One request on its way through PostgreSQL: the token lookup, then the route's query.
typedef struct job {
	billing_http *h;
	rb_http_req *req;
	route_kind kind;
	char period[BILLING_PERIOD_LEN + 1];
	char format[8];
	bool bad_query; // a parameter missing or not valid; answered after the token check
	char who[96];   // for the log: the token's id and name, never the token
	uint64_t agent_id;
} job;

static const char CTYPE_JSON[] = "application/json";

static void reply_text(job *j, int status, const char *text)
{
	rb_http_reply(j->req, status, NULL, text, strlen(text));
	free(j);
}

static void reply_401(job *j, const char *challenge, const char *text)
{
	rb_metric_inc(j->h->m_denied);
	rb_http_reply_hdr(j->req, 401, NULL, "WWW-Authenticate", challenge, text, strlen(text));
	free(j);
}

// The database answered with an error: a refusal of the input (SQLSTATE class 22, or one
// raised by a pay function) is the caller's mistake, anything else is ours.
static void reply_db_error(job *j, int err, const PGresult *res, const char *sqlstate)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char text[300];

	if (err == RB_EDB && sqlstate != NULL &&
	    (strncmp(sqlstate, "22", 2) == 0 || strcmp(sqlstate, "P0001") == 0) && msg != NULL) {
		snprintf(text, sizeof(text), "%.280s\n", msg);
		reply_text(j, 400, text);
		return;
	}
	rb_error("%s query failed: %s (sqlstate %s%s%.200s)",
	         j->kind == ROUTE_EXPORT ? "payroll export" : "earnings", rb_err_str(err),
	         sqlstate ? sqlstate : "", msg ? ", " : "", msg ? msg : "");
	reply_text(j, 503, "the pay database is not available; try again\n");
}

static rb_db *job_db(const job *j)
{
	rb_db *db = j->h->db ? *j->h->db : NULL;
	return db != NULL && rb_db_connected(db) ? db : NULL;
}

static void on_export(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	job *j = arg;
	(void)db;

	if (err != 0) {
		reply_db_error(j, err, res, sqlstate);
		return;
	}
	int rows = PQntuples(res);
	size_t total = 0;
	for (int i = 0; i < rows; i++)
		total += (size_t)PQgetlength(res, i, 0) + 1;
	char *body = malloc(total + 1);
	if (body == NULL) {
		reply_text(j, 500, "out of memory\n");
		return;
	}
	size_t at = 0;
	for (int i = 0; i < rows; i++) {
		size_t len = (size_t)PQgetlength(res, i, 0);
		memcpy(body + at, PQgetvalue(res, i, 0), len);
		at += len;
		body[at++] = '\n';
	}
	body[at] = '\0';
	// No period row yet means nothing about it is final.
	bool provisional = rows == 0 || strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	char name[96], disp[200];
	billing_http_filename(j->period, j->format, provisional, name, sizeof(name));
	snprintf(disp, sizeof(disp), "attachment; filename=\"%s\"", name);
	const char *hnames[] = {"Content-Disposition", "X-Ringbid-Provisional"};
	const char *hvalues[] = {disp, provisional ? "true" : "false"};
	rb_logf(RB_LOG_INFO, NULL, 0, "payroll download by %s: period %s, format %s, %d lines%s",
	        j->who, j->period, j->format, rows, provisional ? " (provisional)" : "");
	rb_metric_inc(j->h->m_downloads);
	rb_http_reply_hdrs(j->req, 200, "text/csv; charset=utf-8", hnames, hvalues, 2, body, at);
	free(body);
	free(j);
}

static void on_earnings(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	job *j = arg;
	(void)db;

	if (err != 0) {
		reply_db_error(j, err, res, sqlstate);
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 9) {
		reply_text(j, 500, "earnings not available\n");
		return;
	}
	json_t *o = json_object();
	bool ok = o != NULL;
	static const char *const names[9] = {
	        "currency",     "period_start", "period_end",    "today_calls",   "today_talk_s",
	        "today_amount", "period_calls", "period_talk_s", "period_amount",
	};
	if (ok)
		ok = json_object_set_new(o, "agent_id", json_integer((json_int_t)j->agent_id)) == 0;
	for (int i = 0; i < 9 && ok; i++) {
		const char *v = PQgetvalue(res, 0, i);
		bool number = i == 3 || i == 4 || i == 6 || i == 7;
		json_t *jv = number ? json_integer(strtoll(v, NULL, 10)) : json_string(v);
		ok = jv != NULL && json_object_set_new(o, names[i], jv) == 0;
	}
	char *s = ok ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(o);
	if (s == NULL) {
		reply_text(j, 500, "out of memory\n");
		return;
	}
	rb_logf(RB_LOG_INFO, NULL, j->agent_id, "earnings shown to the agent");
	size_t len = strlen(s);
	rb_http_reply(j->req, 200, CTYPE_JSON, s, len);
	free(s);
	free(j);
}

static const char EXPORT_SQL[] =
        "SELECT x.line, (SELECT coalesce(bool_and(pp.status <> 'closed'), true)"
        "  FROM billing.pay_periods pp WHERE pp.start_date = $1::date AND pp.tz = $2)"
        " FROM billing.payroll_export($1::date, $2, $3) WITH ORDINALITY AS x(line, n)"
        " ORDER BY x.n";

static const char EARNINGS_SQL[] =
        "SELECT currency, period_start::text, period_end::text, today_calls, today_talk_s,"
        " to_char(today_amount, 'FM999999999990.00'), period_calls, period_talk_s,"
        " to_char(period_amount, 'FM999999999990.00')"
        " FROM billing.agent_earnings($1::bigint, $2)";

static void on_role(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	job *j = arg;
	(void)db;

	if (err != 0) {
		reply_db_error(j, err, res, sqlstate);
		return;
	}
	if (PQntuples(res) != 1) {
		reply_401(j, "Bearer realm=\"ringbid\", error=\"invalid_token\"",
		          "token unknown, expired or revoked\n");
		return;
	}
	const char *role = PQgetvalue(res, 0, 0);
	j->agent_id = PQgetisnull(res, 0, 1) ? 0 : strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	if (PQgetisnull(res, 0, 2))
		snprintf(j->who, sizeof(j->who), "agent %" PRIu64 " (session)", j->agent_id);
	else
		snprintf(j->who, sizeof(j->who), "token %s (%s, %.40s)", PQgetvalue(res, 0, 2),
		         role, PQgetvalue(res, 0, 3));

	bool allowed = j->kind == ROUTE_EXPORT ? strcmp(role, "finance") == 0
	                                       : strcmp(role, "agent") == 0 && j->agent_id != 0;
	if (!allowed) {
		rb_logf(RB_LOG_WARN, NULL, j->agent_id, "%s refused to %s: role %s",
		        j->kind == ROUTE_EXPORT ? "payroll download" : "earnings", j->who, role);
		rb_metric_inc(j->h->m_denied);
		reply_text(j, 403,
		           j->kind == ROUTE_EXPORT
		                   ? "payroll downloads are for finance tokens only\n"
		                   : "earnings are shown to agents' own tokens only\n");
		return;
	}
	rb_db *conn = job_db(j);
	if (conn == NULL) {
		reply_text(j, 503, "the pay database is not available; try again\n");
		return;
	}
	int rv;
	if (j->kind == ROUTE_EXPORT) {
		if (j->bad_query) {
			reply_text(j, 400,
			           "period must be a date YYYY-MM-DD and format one of csv, adp, "
			           "paychex, gusto\n");
			return;
		}
		const char *params[3] = {j->period, j->h->tz, j->format};
		rv = rb_db_query(conn, EXPORT_SQL, 3, params, on_export, j);
	} else {
		char id[24];
		snprintf(id, sizeof(id), "%" PRIu64, j->agent_id);
		const char *params[2] = {id, j->h->tz};
		rv = rb_db_query(conn, EARNINGS_SQL, 2, params, on_earnings, j);
	}
	if (rv != 0)
		reply_text(j, 503, "the pay database is busy; try again\n");
}

static const char ROLE_SQL[] =
        "SELECT role, agent_id, token_id, name FROM billing.token_role($1::bytea)";

static void handle(rb_http_req *req, billing_http *h, route_kind kind)
{
	job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		rb_http_reply(req, 500, NULL, "out of memory\n", 14);
		return;
	}
	j->h = h;
	j->req = req;
	j->kind = kind;

	char token[BILLING_TOKEN_MAX + 1];
	uint8_t hash[RB_TOKEN_HASH];
	if (billing_http_bearer(rb_http_header(req, "Authorization"), token, sizeof(token)) != 0) {
		reply_401(j, "Bearer realm=\"ringbid\"",
		          "an Authorization: Bearer <token> header is required\n");
		return;
	}
	int bad = rb_token_hash(token, hash);
	explicit_bzero(token, sizeof(token));
	if (bad != 0) {
		reply_401(j, "Bearer realm=\"ringbid\", error=\"invalid_token\"",
		          "token unknown, expired or revoked\n");
		return;
	}
	if (kind == ROUTE_EXPORT) {
		if (rb_http_query_param(req, "period", j->period, sizeof(j->period)) != 0 ||
		    billing_http_period(j->period) != 0 ||
		    rb_http_query_param(req, "format", j->format, sizeof(j->format)) != 0 ||
		    billing_http_format(j->format) != 0)
			j->bad_query = true;
	}
	rb_db *conn = job_db(j);
	if (conn == NULL) {
		reply_text(j, 503, "the pay database is not available; try again\n");
		return;
	}
	char hex[3 + 2 * RB_TOKEN_HASH] = "\\x";
	for (int i = 0; i < RB_TOKEN_HASH; i++)
		snprintf(hex + 2 + 2 * i, 3, "%02x", hash[i]);
	const char *params[1] = {hex};
	if (rb_db_query(conn, ROLE_SQL, 1, params, on_role, j) != 0)
		reply_text(j, 503, "the pay database is busy; try again\n");
}

static void on_export_route(rb_http_req *req, void *arg)
{
	handle(req, arg, ROUTE_EXPORT);
}

static void on_earnings_route(rb_http_req *req, void *arg)
{
	handle(req, arg, ROUTE_EARNINGS);
}

int billing_http_init(billing_http *h, rb_http *http, rb_db *const *db, const char *tz)
{
	memset(h, 0, sizeof(*h));
	if (tz == NULL || tz[0] == '\0' || strlen(tz) > BILLING_TZ_MAX)
		return RB_EINVAL;
	h->db = db;
	strcpy(h->tz, tz);
	h->m_downloads = rb_metrics_counter("ringbid_payroll_downloads_total", NULL,
	                                    "payroll files downloaded over HTTP");
	h->m_denied = rb_metrics_counter("ringbid_http_denied_total", "route=\"money\"",
	                                 "money requests refused for a missing or weak token");
	int rv = rb_http_route(http, "GET", "/payroll/export", on_export_route, h);
	if (rv == 0)
		rv = rb_http_route(http, "GET", "/me/earnings", on_earnings_route, h);
	return rv;
}

int billing_readonly_conninfo(const char *conninfo, char *out, size_t n)
{
	int len;
	if (strncmp(conninfo, "postgresql://", 13) == 0 ||
	    strncmp(conninfo, "postgres://", 11) == 0)
		len = snprintf(out, n, "%s%coptions=-c%%20default_transaction_read_only%%3Don",
		               conninfo, strchr(conninfo, '?') != NULL ? '&' : '?');
	else
		len = snprintf(out, n, "%s%soptions='-c default_transaction_read_only=on'",
		               conninfo, conninfo[0] != '\0' ? " " : "");
	return len < 0 || (size_t)len >= n ? RB_ETOOBIG : 0;
}
