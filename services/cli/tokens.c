// `ringbid token`: API tokens for billing's money routes (finance, supervisor), shown once.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rb_err.h"
#include "rb_secret.h"

#define TOKEN_TTL_MAX_S (10LL * 366 * 86400) // ten years: longer is a typo, not a policy

static const char token_usage[] =
        "usage: ringbid token create --role finance|supervisor [--name NAME] [--ttl DURATION]\n"
        "       ringbid token list [--json]\n"
        "       ringbid token revoke ID\n"
        "\n"
        "Tokens open billing's HTTP routes (Authorization: Bearer <token>): finance tokens\n"
        "download payroll files; supervisor tokens are refused there. A new token is printed\n"
        "once and only its hash is kept: store it at once. DURATION is a whole number with a\n"
        "unit s, m, h, d or w (e.g. 90d); without --ttl the token lasts until revoked.\n"
        "Agents never get tokens here: their session token from logging in is their key.\n";

int cli_token_ttl_s(const char *text, long long *out_s)
{
	long long v = 0, mult;
	const char *p = text;

	if (text == NULL || *p < '0' || *p > '9')
		return RB_EINVAL;
	while (*p >= '0' && *p <= '9') {
		if (v > TOKEN_TTL_MAX_S)
			return RB_EINVAL;
		v = v * 10 + (*p++ - '0');
	}
	switch (*p) {
	case 's':
		mult = 1;
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	case 'w':
		mult = 7 * 86400;
		break;
	default:
		return RB_EINVAL;
	}
	if (p[1] != '\0' || v == 0 || v > TOKEN_TTL_MAX_S / mult)
		return RB_EINVAL;
	*out_s = v * mult;
	return 0;
}

static void hash_hex(const uint8_t hash[RB_TOKEN_HASH], char out[3 + 2 * RB_TOKEN_HASH])
{
	strcpy(out, "\\x");
	for (int i = 0; i < RB_TOKEN_HASH; i++)
		snprintf(out + 2 + 2 * i, 3, "%02x", hash[i]);
}

static int token_create(int argc, char **argv)
{
	static const char cmd[] = "token create";
	cli_opt opts[] = {{"role", true, NULL, false},
	                  {"name", true, NULL, false},
	                  {"ttl", true, NULL, false}};
	const size_t nopts = sizeof opts / sizeof opts[0];
	const char *pos[1];
	size_t npos = 0;
	char err[200];
	long long ttl_s = 0;

	int rc = cli_args_parse(argc, argv, opts, nopts, pos, 0, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(token_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	const char *role = cli_opt_get(opts, nopts, "role");
	if (role == NULL || (strcmp(role, "finance") != 0 && strcmp(role, "supervisor") != 0))
		return cli_usage_error(cmd, "--role must be finance or supervisor");
	const char *name = cli_opt_get(opts, nopts, "name");
	if (name == NULL)
		name = "";
	if (strlen(name) > CLI_NAME_MAX)
		return cli_usage_error(cmd, "--name is longer than %d bytes", CLI_NAME_MAX);
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return cli_usage_error(cmd, "--name may not hold control characters");
	const char *ttl = cli_opt_get(opts, nopts, "ttl");
	if (ttl != NULL && cli_token_ttl_s(ttl, &ttl_s) != 0)
		return cli_usage_error(
		        cmd,
		        "bad --ttl '%.32s': a whole number and a unit s, m, h, d or w "
		        "(at most ten years), e.g. 90d",
		        ttl);

	char token[RB_TOKEN_HEX], hex[3 + 2 * RB_TOKEN_HASH], ttl_text[32];
	uint8_t hash[RB_TOKEN_HASH];
	rb_token_new(token, hash);
	hash_hex(hash, hex);
	snprintf(ttl_text, sizeof ttl_text, "%lld", ttl_s);

	PGconn *conn = NULL;
	if (cli_db_connect(&conn) != 0) {
		explicit_bzero(token, sizeof token);
		return CLI_EXIT_ERR;
	}
	const char *params[4] = {role, name, hex, ttl ? ttl_text : NULL};
	PGresult *res = NULL;
	rc = cli_db_exec(conn,
	                 "INSERT INTO billing.api_tokens (role, name, token_hash, expires_at)"
	                 " VALUES ($1, $2, $3::bytea, now() + $4::bigint * interval '1 second')"
	                 " RETURNING id, coalesce(to_char(expires_at AT TIME ZONE 'UTC',"
	                 " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'never')",
	                 4, params, &res);
	if (rc != 0) {
		explicit_bzero(token, sizeof token);
		rc = cli_db_fail(conn, res, "cannot store the token");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	printf("%s\n", token);
	fprintf(stderr, "token %s (%s%s%s) expires %s. It is shown only this once: keep it now.\n",
	        PQgetvalue(res, 0, 0), role, name[0] ? ", " : "", name, PQgetvalue(res, 0, 1));
	explicit_bzero(token, sizeof token);
	PQclear(res);
	PQfinish(conn);
	return CLI_EXIT_OK;
}

static int token_list(int argc, char **argv)
{
	static const char cmd[] = "token list";
	cli_opt opts[] = {{"json", false, NULL, false}};
	const char *pos[1];
	size_t npos = 0;
	char err[200];

	int rc = cli_args_parse(argc, argv, opts, 1, pos, 0, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(token_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	bool json = cli_opt_has(opts, 1, "json");

	PGconn *conn = NULL;
	if (cli_db_connect(&conn) != 0)
		return CLI_EXIT_ERR;
	PGresult *res = NULL;
	rc = cli_db_exec(
	        conn,
	        "SELECT id, role, coalesce(agent_id::text, ''), name,"
	        " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
	        " coalesce(to_char(expires_at AT TIME ZONE 'UTC',"
	        "  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''),"
	        " CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"
	        "  WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'"
	        "  ELSE 'active' END"
	        " FROM billing.api_tokens ORDER BY id",
	        0, NULL, &res);
	if (rc != 0) {
		rc = cli_db_fail(conn, res, "cannot list tokens");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	int rows = PQntuples(res);
	if (json) {
		json_t *arr = json_array();
		for (int i = 0; arr != NULL && i < rows; i++) {
			json_t *o = json_pack(
			        "{s:I,s:s,s:s,s:s,s:s,s:s}", "id",
			        (json_int_t)strtoll(PQgetvalue(res, i, 0), NULL, 10), "role",
			        PQgetvalue(res, i, 1), "name", PQgetvalue(res, i, 3), "created_at",
			        PQgetvalue(res, i, 4), "expires_at", PQgetvalue(res, i, 5),
			        "status", PQgetvalue(res, i, 6));
			if (o == NULL || json_array_append_new(arr, o) != 0) {
				json_decref(arr);
				arr = NULL;
			}
		}
		char *s = arr ? json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(arr);
		if (s == NULL) {
			PQclear(res);
			PQfinish(conn);
			return cli_fail("out of memory");
		}
		printf("%s\n", s);
		free(s);
	} else {
		printf("%-6s %-10s %-8s %-20s %-20s %-20s %s\n", "ID", "ROLE", "STATUS", "CREATED",
		       "EXPIRES", "AGENT", "NAME");
		for (int i = 0; i < rows; i++) {
			const char *exp = PQgetvalue(res, i, 5);
			printf("%-6s %-10s %-8s %-20s %-20s %-20s %s\n", PQgetvalue(res, i, 0),
			       PQgetvalue(res, i, 1), PQgetvalue(res, i, 6), PQgetvalue(res, i, 4),
			       exp[0] ? exp : "never", PQgetvalue(res, i, 2),
			       PQgetvalue(res, i, 3));
		}
	}
	PQclear(res);
	PQfinish(conn);
	return CLI_EXIT_OK;
}

static int token_revoke(int argc, char **argv)
{
	static const char cmd[] = "token revoke";
	const char *pos[1];
	size_t npos = 0;
	char err[200];
	long long id = 0;

	int rc = cli_args_parse(argc, argv, NULL, 0, pos, 1, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(token_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	if (npos != 1 || cli_parse_int(pos[0], 1, INT64_MAX, &id) != 0)
		return cli_usage_error(cmd, "expected a token ID (a whole number from 1)");

	PGconn *conn = NULL;
	if (cli_db_connect(&conn) != 0)
		return CLI_EXIT_ERR;
	PGresult *res = NULL;
	const char *params[1] = {pos[0]};
	rc = cli_db_exec(conn,
	                 "UPDATE billing.api_tokens SET revoked_at = coalesce(revoked_at, now())"
	                 " WHERE id = $1::bigint RETURNING id",
	                 1, params, &res);
	if (rc != 0) {
		rc = cli_db_fail(conn, res, "cannot revoke the token");
	} else if (PQntuples(res) == 0) {
		rc = cli_fail("no token %lld", id);
	} else {
		printf("token %lld revoked\n", id);
		rc = CLI_EXIT_OK;
	}
	PQclear(res);
	PQfinish(conn);
	return rc;
}

int cli_cmd_token(int argc, char **argv)
{
	if (argc < 1)
		return cli_usage_error("token", "expected create, list or revoke");
	if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
		fputs(token_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(argv[0], "create") == 0)
		return token_create(argc - 1, argv + 1);
	if (strcmp(argv[0], "list") == 0)
		return token_list(argc - 1, argv + 1);
	if (strcmp(argv[0], "revoke") == 0)
		return token_revoke(argc - 1, argv + 1);
	return cli_usage_error("token", "unknown subcommand '%.32s' (create, list, revoke)",
	                       argv[0]);
}
