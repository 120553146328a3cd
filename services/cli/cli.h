// Declarations shared by the files of the ringbid command-line tool.
#ifndef CLI_H
#define CLI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <nng/nng.h>

#include "ringbid.pb-c.h"

// Process exit statuses.
#define CLI_EXIT_OK       0
#define CLI_EXIT_ERR      1 // the command failed
#define CLI_EXIT_USAGE    2 // bad command line
#define CLI_EXIT_UNSERVED 4 // a call got no agent: abandoned, overflow, or gave up following

#define CLI_NAME_MAX     200 // program and agent display names, bytes
#define CLI_SKILLS_MAX   32  // skills per program, agent or call (the broker's limit too)
#define CLI_SECRET_MAX   256 // agent secret, bytes (presence's limit)
#define CLI_PRIORITY_MAX 1000

// ---------------------------------------------------------------------------------------------
// args.c: command-line options

// One long option of a command: "--name VALUE", "--name=VALUE", or a flag "--name". The parser
// fills value/seen; value points into argv.
typedef struct cli_opt {
	const char *name; // without the leading dashes
	bool has_arg;
	const char *value;
	bool seen;
} cli_opt;

#define CLI_ARGS_HELP 1 // --help or -h was given

// Parses argv[0..argc) (the words after the command's own name) against opts. Positional words
// go to pos (at most maxpos, count in *npos); "--" ends the options. Refuses unknown options,
// a missing value, a value given to a flag, an option given twice, and too many positionals.
// Returns 0, CLI_ARGS_HELP, or RB_EINVAL with a one-line reason in err.
int cli_args_parse(int argc, char **argv, cli_opt *opts, size_t nopts, const char **pos,
                   size_t maxpos, size_t *npos, char *err, size_t errlen);
// The value of option name (flags: "" when seen), or NULL when it was not given.
const char *cli_opt_get(const cli_opt *opts, size_t nopts, const char *name);
// True when option name was given.
bool cli_opt_has(const cli_opt *opts, size_t nopts, const char *name);

// Prints "ringbid <cmd>: <msg>" and a pointer to --help on stderr; returns CLI_EXIT_USAGE.
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prints "ringbid: <msg>" on stderr; returns CLI_EXIT_ERR.
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---------------------------------------------------------------------------------------------
// valid.c: checks and conversions of command-line text (pure)

// Money as text for numeric(12,4): 1..8 digits, optionally '.' and 1..4 digits; never a sign.
bool cli_valid_money(const char *s);
// A score for numeric(5,2) in 0..100: digits, optionally '.' and 1..2 digits.
bool cli_valid_score(const char *s);
// A decimal integer in [min, max], nothing else around it. Returns 0 or RB_EINVAL.
int cli_parse_int(const char *s, long long min, long long max, long long *out);
// An agent id: a decimal integer in 1..INT64_MAX (PostgreSQL bigint). Returns 0 or RB_EINVAL.
int cli_parse_agent_id(const char *s, uint64_t *out);
// Seconds with up to three decimals ("2", "0.5", "12.250") as milliseconds in [0, max_ms].
// Returns 0 or RB_EINVAL.
int cli_parse_seconds_ms(const char *s, int64_t max_ms, int64_t *out_ms);

// "yes" or "no" into *out. Returns 0 or RB_EINVAL.
int cli_parse_yes_no(const char *s, bool *out);
// A number from 0 to 1 with up to three decimals ("0", "0.2", "1.000") as thousandths in
// *out (numeric(4,3) without a float on the way). Returns 0 or RB_EINVAL.
int cli_parse_milli(const char *s, int *out);
// Thousandths as decimal text: 200 -> "0.200". out holds at least 8 bytes.
void cli_milli_text(int milli, char *out, size_t n);

// The five score weights of a program, in the order of --weights S,R,C,A,H.
#define CLI_WEIGHTS 5
// Parses "S,R,C,A,H" into thousandths; each 0..1 with up to three decimals, and they must add
// up to exactly 1 ("weights must add up to 1 (they add up to 0.900)" in err otherwise).
// Returns 0 or RB_EINVAL with the reason in err (milli untouched).
int cli_parse_weights(const char *s, int milli[CLI_WEIGHTS], char *err, size_t errlen);
// An ISO 8601 time "YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH[:MM]|-HH[:MM]]" (no zone: UTC) as
// UTC microseconds since the epoch, from 1970. Returns 0 or RB_EINVAL.
int cli_parse_iso_us(const char *s, uint64_t *out);

// A list of skills: items separated by sep, each passing rb_valid_id(s, 64), at most
// CLI_SKILLS_MAX, duplicates dropped, order kept; "" is the empty list. On success *out is the
// caller's (cli_list_free) and *n its length; on failure nothing is allocated and err names the
// bad item. Returns 0, RB_EINVAL or RB_ENOMEM.
int cli_list_parse(const char *text, char sep, char ***out, size_t *n, char *err, size_t errlen);
// Frees a list from cli_list_parse; NULL is fine.
void cli_list_free(char **list, size_t n);

// A PostgreSQL text[] literal of items: {"a","b"} with '"' and '\' escaped. On success *out is
// the caller's (free()). Returns 0 or RB_ENOMEM.
int cli_pg_array(char *const *items, size_t n, char **out);

// One line of an agent import file: "id,name,skills,score" with skills separated by ';' and
// name optionally in double quotes ("" inside for a quote); skills and score may be empty.
typedef struct cli_agent_row {
	uint64_t id;
	char name[CLI_NAME_MAX + 1];
	char **skills; // owned, cli_agent_row_fini
	size_t nskills;
	char score[8]; // "" when not given
} cli_agent_row;

#define CLI_CSV_SKIP 1 // a blank line, a '#' comment or the header line

// Parses line (without its newline; a trailing '\r' is ignored) into row. Returns 0 (row filled;
// the caller calls cli_agent_row_fini), CLI_CSV_SKIP (row untouched), RB_EINVAL with the reason
// in err (row untouched), or RB_ENOMEM.
int cli_csv_agent_line(const char *line, cli_agent_row *row, char *err, size_t errlen);
void cli_agent_row_fini(cli_agent_row *row);

// Reads an agent secret: the file named by file (when not NULL), else $RINGBID_AGENT_SECRET
// (when env_ok). One trailing newline is dropped; the secret must be 1..CLI_SECRET_MAX bytes.
// Returns 0, RB_ENOTFOUND (no source), RB_EIO (unreadable file) or RB_EINVAL (empty, too long),
// with a one-line reason in err.
int cli_read_secret(const char *file, bool env_ok, char *out, size_t n, char *err, size_t errlen);

// ---------------------------------------------------------------------------------------------
// envfile.c: $RINGBID_HOME/env

typedef struct cli_env_kv {
	const char *key;
	const char *value;
} cli_env_kv;

// Renders KEY=VALUE lines after a comment header. Keys are [A-Z0-9_]+, values carry no newline
// or NUL. On success *out is the caller's (free()). Returns 0, RB_EINVAL or RB_ENOMEM.
int cli_env_format(const cli_env_kv *kv, size_t n, char **out);
// Writes the rendered lines to path atomically (temporary file, fsync, rename) with mode 0600.
// Returns 0, RB_EINVAL, RB_ENOMEM or RB_EIO.
int cli_env_write(const char *path, const cli_env_kv *kv, size_t n);

// ---------------------------------------------------------------------------------------------
// paths.c

// Directory holding the running executable (from /proc/self/exe). Returns 0 or RB_EIO/RB_ETOOBIG.
int cli_exe_dir(char *out, size_t n);
// $RINGBID_HOME (default ./var) made absolute; the directory need not exist. Returns 0 or a code.
int cli_home_abs(char *out, size_t n);
// Creates dir and its missing parents with mode. Returns 0 or RB_EIO.
int cli_mkdirs(const char *dir, unsigned mode);

// ---------------------------------------------------------------------------------------------
// db.c: blocking libpq (the CLI is no loop service)

// Connects with rb_config_conninfo(); prints the reason on failure. On success *out is the
// caller's (PQfinish). Returns 0 or RB_EDB.
int cli_db_connect(PGconn **out);
// Runs one statement with text parameters. On success *res is the caller's (PQclear). On
// failure returns RB_EDB and *res is the failed result (caller's, may be NULL) for its SQLSTATE.
int cli_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                PGresult **res);
// Prints "ringbid: <what>: <server message>" for a failed result; returns CLI_EXIT_ERR.
int cli_db_fail(PGconn *conn, const PGresult *res, const char *what);
// The SQLSTATE of a failed result, "" when none.
const char *cli_db_sqlstate(const PGresult *res);
// Where migrations are: $RINGBID_MIGRATIONS, else <executable dir>/../db/migrations.
int cli_migrations_dir(char *out, size_t n);
// Applies pending migrations from dir in order, printing each one applied (unless quiet) and
// the outcome. Returns 0 or a code (reason printed).
int cli_db_migrate(PGconn *conn, const char *dir, bool quiet);

// ---------------------------------------------------------------------------------------------
// calls.c: what the broker tells about calls, as text and JSON (pure)

// Milliseconds the caller waited (arrival to answer, or to the end, or to now_us) and talked.
uint64_t cli_call_wait_ms(const Ringbid__CallInfo *ci, uint64_t now_us);
uint64_t cli_call_talk_ms(const Ringbid__CallInfo *ci);
// The summary object of `ringbid call --json` ({"call_id", "program", "state", "disposition",
// "agent_id", "wait_ms", "talk_ms", "offers", "review"}); full adds priority, skills, version and
// the times (`call-info`). The caller owns the result (json_decref); NULL when out of memory.
json_t *cli_call_json(const Ringbid__CallInfo *ci, bool full, uint64_t now_us);
// The object of `ringbid status --json`. The caller owns the result.
json_t *cli_kpis_json(const Ringbid__Kpis *k);
// The object of `ringbid explain --json`. The caller owns the result.
json_t *cli_explain_json(const Ringbid__ExplainReply *e, uint64_t now_us);

// The broker's call API over one REQ socket (`call`, `explain`, `outcome`, ...).
typedef struct cli_broker {
	nng_socket sock;
	char url[512];
	char token[256];
} cli_broker;

// Opens a REQ socket and dials the broker (RINGBID_BROKER_URL) with the service token. Returns
// 0 (the caller calls cli_broker_close) or an exit status after printing why.
int cli_broker_open(cli_broker *b);
void cli_broker_close(cli_broker *b);
// Sends req (token filled in here) and waits up to 10 s + extra_wait_ms for the reply. On
// success returns 0 with *out the caller's (rb_pb_free). On a refusal prints "ringbid:
// <refused>: <the broker's reason> (<code>)" and returns CLI_EXIT_ERR with *out NULL; other
// failures print their reason likewise.
int cli_broker_call(cli_broker *b, Ringbid__CallRequest *req, uint32_t extra_wait_ms,
                    const char *refused, Ringbid__CallReply **out);

// ---------------------------------------------------------------------------------------------
// scores.c: outcomes, scores and the lift report

#define CLI_OUTCOMES_MAX 4 // survey, resolved, sale and one QA review per command

// What `ringbid outcome` sends: outcomes of one call; strings point into argv.
typedef struct cli_outcome_req {
	const char *call_id;
	Ringbid__Outcome items[CLI_OUTCOMES_MAX];
	size_t n;
	bool json;
} cli_outcome_req;

// Parses the words after `ringbid outcome` and checks every value against the contract the
// broker and billing enforce (survey 1-5, yes/no, QA 0-100 with a reviewer, --at within 400
// days back and 5 minutes ahead of now_us). Returns 0, CLI_ARGS_HELP, or RB_EINVAL with a
// one-line reason in err. req holds no allocation.
int cli_outcome_parse(int argc, char **argv, uint64_t now_us, cli_outcome_req *req, char *err,
                      size_t errlen);
// "survey", "resolved", "sale", "qa"; "" for anything else. Static storage.
const char *cli_outcome_kind_name(int kind);
// The object of `ringbid outcome --json`: {"call_id", "outcomes": [{"kind", "value",
// "reviewer", "duplicate"}]} from the request and the broker's acks (request order). The
// caller owns the result (json_decref); NULL when out of memory.
json_t *cli_outcome_json(const cli_outcome_req *req, const Ringbid__CallReply *reply);

// One row of billing.agent_score_parts, as text from PostgreSQL (NULL: SQL NULL).
typedef struct cli_score_row {
	const char *program; // "" for the overall score
	const char *score;
	bool provisional;
	long long calls;
	const char *parts; // JSON array text
	const char *window_start, *window_end, *computed_at;
} cli_score_row;

// An agent's scores as `ringbid agent score` shows them.
typedef struct cli_agent_scores {
	uint64_t agent_id;
	const char *name;
	const char *score; // roster.agents.score: what routing uses without a program score
	bool pinned;
	const cli_score_row *rows;
	size_t nrows;
} cli_agent_scores;

// The object of `ringbid agent score --json`. The caller owns the result; NULL when out of
// memory.
json_t *cli_agent_scores_json(const cli_agent_scores *s);
// The text of `ringbid agent score` on f.
void cli_agent_scores_print(FILE *f, const cli_agent_scores *s);

// One route of billing.lift_report as text from PostgreSQL (NULL: SQL NULL).
typedef struct cli_lift_group {
	long long calls, surveyed;
	const char *satisfaction, *resolved_share, *sale_share, *avg_handle_s;
} cli_lift_group;

// The object of `ringbid report lift --json`: {"program", "days", "auction": {...},
// "exploration": {...}, "lift": {...}}. The caller owns the result; NULL when out of memory.
json_t *cli_lift_json(const char *program, long long days, const cli_lift_group *auction,
                      const cli_lift_group *exploration);
// The text of `ringbid report lift` on f.
void cli_lift_print(FILE *f, const char *program, long long days, const cli_lift_group *auction,
                    const cli_lift_group *exploration);

// ---------------------------------------------------------------------------------------------
// payroll.c: checks of pay command-line text (pure)

// A payroll file format: csv, adp, paychex, gusto.
bool cli_payroll_format_valid(const char *s);
// A pay period as typed: "current", "previous" or YYYY-MM-DD (PostgreSQL checks the date).
bool cli_payroll_period_valid(const char *s);
// An ISO 8601 time as typed for --from: starts with a digit, 10-40 of [0-9-:.TZ+ ].
bool cli_valid_time(const char *s);
// The default export file name: ringbid-payroll-START-FORMAT[.provisional].csv. Returns 0,
// RB_EINVAL (bad start or format) or RB_ETOOBIG.
int cli_payroll_file_name(const char *start, const char *format, bool provisional, char *out,
                          size_t n);

// ---------------------------------------------------------------------------------------------
// Commands. Each takes the words after its name and returns the process exit status.

int cli_cmd_db(int argc, char **argv);
int cli_cmd_program(int argc, char **argv);
int cli_cmd_agent(int argc, char **argv);
int cli_cmd_call(int argc, char **argv);
int cli_cmd_hangup(int argc, char **argv);
int cli_cmd_call_info(int argc, char **argv);
int cli_cmd_status(int argc, char **argv);
int cli_cmd_explain(int argc, char **argv);
int cli_cmd_rate(int argc, char **argv);
int cli_cmd_payroll(int argc, char **argv);
// scores.c: `ringbid outcome`, `ringbid scores recompute`, `ringbid report lift`.
int cli_cmd_outcome(int argc, char **argv);
int cli_cmd_scores(int argc, char **argv);
int cli_cmd_report(int argc, char **argv);
// `ringbid agent score ID [--json]` (the words after "score"), reached through cli_cmd_agent.
int cli_agent_score(int argc, char **argv);
// tokens.c: `ringbid token create|list|revoke`.
int cli_cmd_token(int argc, char **argv);
// A token lifetime "<n>s|m|h|d|w" in seconds, 1 s to ten years. Returns 0 or RB_EINVAL.
int cli_token_ttl_s(const char *text, long long *out_s);
// `up` loads $RINGBID_HOME/env itself: it must first see what the caller's environment holds.
int cli_cmd_up(int argc, char **argv);
int cli_cmd_down(int argc, char **argv);

#endif
