// Blocking PostgreSQL access for the CLI and `ringbid db migrate` (versioned SQL files).
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "rb_config.h"
#include "rb_err.h"

#define MIGRATION_MAX_BYTES (16 * 1024 * 1024)
#define MIGRATIONS_MAX      1000

// Server notices ("relation already exists, skipping") are not for operators.
static void quiet_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

// The first line of a libpq message, without its trailing newline.
static void first_line(const char *msg, char *out, size_t n)
{
	size_t len = strcspn(msg ? msg : "", "\n");

	if (len >= n)
		len = n - 1;
	memcpy(out, msg ? msg : "", len);
	out[len] = '\0';
}

int cli_db_connect(PGconn **out)
{
	char conninfo[2048], line[512];
	PGconn *conn;

	if (rb_config_conninfo(conninfo, sizeof conninfo) < 0) {
		cli_fail("RINGBID_DATABASE_URL is too long");
		return RB_ECONFIG;
	}
	conn = PQconnectdb(conninfo);
	if (!conn) {
		cli_fail("out of memory connecting to PostgreSQL");
		return RB_ENOMEM;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		first_line(PQerrorMessage(conn), line, sizeof line);
		cli_fail("cannot connect to PostgreSQL (%s): %s",
		         conninfo[0] ? "RINGBID_DATABASE_URL" : "PG* variables", line);
		if (!conninfo[0] && !getenv("PGHOST"))
			fputs("ringbid: hint: run 'ringbid up' first, or set "
			      "RINGBID_DATABASE_URL\n",
			      stderr);
		PQfinish(conn);
		return RB_EDB;
	}
	PQsetNoticeProcessor(conn, quiet_notice, NULL);
	*out = conn;
	return 0;
}

int cli_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                PGresult **res)
{
	PGresult *r = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;

	*res = r;
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return 0;
	return RB_EDB;
}

const char *cli_db_sqlstate(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return s ? s : "";
}

int cli_db_fail(PGconn *conn, const PGresult *res, const char *what)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char line[512];

	first_line(msg ? msg : PQerrorMessage(conn), line, sizeof line);
	return cli_fail("%s: %s", what, line);
}

int cli_migrations_dir(char *out, size_t n)
{
	char exe[PATH_MAX];
	int rc;

	if (getenv("RINGBID_MIGRATIONS") && *getenv("RINGBID_MIGRATIONS")) {
		if ((size_t)snprintf(out, n, "%s", getenv("RINGBID_MIGRATIONS")) >= n)
			return RB_ETOOBIG;
		return 0;
	}
	rc = cli_exe_dir(exe, sizeof exe);
	if (rc < 0)
		return rc;
	if ((size_t)snprintf(out, n, "%s/../db/migrations", exe) >= n)
		return RB_ETOOBIG;
	return 0;
}

// NNNN_name.sql: four digits, an underscore, a name, ".sql".
static bool migration_name(const char *name)
{
	size_t len = strlen(name);

	if (len < 10 || strcmp(name + len - 4, ".sql") != 0 || name[4] != '_')
		return false;
	for (int i = 0; i < 4; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
	}
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_file(const char *path, char **out)
{
	FILE *f = fopen(path, "re");
	char *buf;
	long len;

	if (!f)
		return RB_EIO;
	if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || len > MIGRATION_MAX_BYTES ||
	    fseek(f, 0, SEEK_SET) != 0) {
		fclose(f);
		return RB_EIO;
	}
	buf = malloc((size_t)len + 1);
	if (!buf) {
		fclose(f);
		return RB_ENOMEM;
	}
	if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
		free(buf);
		fclose(f);
		return RB_EIO;
	}
	fclose(f);
	buf[len] = '\0';
	*out = buf;
	return 0;
}

static int simple(PGconn *conn, const char *sql, const char *what)
{
	PGresult *res;
	int rc = cli_db_exec(conn, sql, 0, NULL, &res);

	if (rc < 0)
		cli_db_fail(conn, res, what);
	PQclear(res);
	return rc;
}

// Applies one migration in its own transaction. Concurrent migrators queue on the advisory
// lock, and the second one then finds the version recorded and skips it.
static int apply_one(PGconn *conn, const char *dir, const char *file, bool *applied)
{
	char version[256], path[PATH_MAX], what[300];
	const char *params[1] = {version};
	PGresult *res;
	char *sql;
	int rc;

	*applied = false;
	snprintf(version, sizeof version, "%.*s", (int)(strlen(file) - 4), file);
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, file) >= sizeof path)
		return RB_ETOOBIG;
	if (simple(conn, "BEGIN", "cannot start a transaction") < 0)
		return RB_EDB;
	if (simple(conn, "SELECT pg_advisory_xact_lock(hashtext('ringbid.migrate'))",
	           "cannot take the migration lock") < 0 ||
	    simple(conn,
	           "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
	           "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
	           "cannot create public.schema_migrations") < 0)
		goto fail;
	rc = cli_db_exec(conn, "SELECT 1 FROM public.schema_migrations WHERE version = $1", 1,
	                 params, &res);
	if (rc < 0) {
		cli_db_fail(conn, res, "cannot read public.schema_migrations");
		PQclear(res);
		goto fail;
	}
	if (PQntuples(res) > 0) {
		PQclear(res);
		return simple(conn, "COMMIT", "cannot commit");
	}
	PQclear(res);
	rc = read_file(path, &sql);
	if (rc < 0) {
		cli_fail("cannot read migration %s: %s", path, strerror(errno));
		goto fail;
	}
	// A file of several statements runs through the simple protocol, inside our transaction.
	res = PQexec(conn, sql);
	free(sql);
	if (!res ||
	    (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)) {
		snprintf(what, sizeof what, "migration %s failed", file);
		cli_db_fail(conn, res, what);
		PQclear(res);
		goto fail;
	}
	PQclear(res);
	rc = cli_db_exec(conn, "INSERT INTO public.schema_migrations (version) VALUES ($1)", 1,
	                 params, &res);
	if (rc < 0) {
		cli_db_fail(conn, res, "cannot record the migration");
		PQclear(res);
		goto fail;
	}
	PQclear(res);
	if (simple(conn, "COMMIT", "cannot commit the migration") < 0)
		return RB_EDB;
	*applied = true;
	return 0;
fail:
	PQclear(PQexec(conn, "ROLLBACK"));
	return RB_EDB;
}

int cli_db_migrate(PGconn *conn, const char *dir, bool quiet)
{
	char *files[MIGRATIONS_MAX];
	size_t n = 0, applied = 0;
	struct dirent *de;
	DIR *d = opendir(dir);
	int rc = 0;

	if (!d) {
		cli_fail("cannot open the migrations directory %s: %s (set RINGBID_MIGRATIONS)",
		         dir, strerror(errno));
		return RB_EIO;
	}
	while ((de = readdir(d)) != NULL) {
		if (!migration_name(de->d_name))
			continue;
		if (n == MIGRATIONS_MAX || !(files[n] = strdup(de->d_name))) {
			closedir(d);
			for (size_t i = 0; i < n; i++)
				free(files[i]);
			cli_fail("too many migrations in %s", dir);
			return RB_ETOOBIG;
		}
		n++;
	}
	closedir(d);
	qsort(files, n, sizeof files[0], cmp_str);
	for (size_t i = 0; i < n && rc == 0; i++) {
		bool did;

		rc = apply_one(conn, dir, files[i], &did);
		if (rc == 0 && did) {
			applied++;
			if (!quiet)
				printf("applied %.*s\n", (int)(strlen(files[i]) - 4), files[i]);
		}
	}
	for (size_t i = 0; i < n; i++)
		free(files[i]);
	if (rc == 0 && !quiet) {
		if (applied == 0)
			printf("database is up to date (%zu migrations)\n", n);
		else
			printf("%zu of %zu migrations applied\n", applied, n);
	}
	fflush(stdout);
	return rc;
}

static const char db_usage[] =
        "usage: ringbid db migrate\n"
        "\n"
        "Applies the SQL migrations not yet applied, each in its own "
        "transaction, in order:\n"
        "  $RINGBID_MIGRATIONS, else <bin>/../db/migrations (NNNN_name.sql).\n"
        "Applied versions are recorded in public.schema_migrations.\n"
        "\n"
        "Run it as the login that owns ringbid's schemas (RINGBID_DATABASE_URL): it creates\n"
        "the database roles the first time (0006_roles.sql; the login needs CREATEROLE then)\n"
        "and grants each one its privileges (docs/security-access.md).\n";

int cli_cmd_db(int argc, char **argv)
{
	cli_opt opts[1] = {{.name = "quiet"}};
	const char *pos[1];
	size_t npos;
	char err[256], dir[PATH_MAX];
	PGconn *conn;
	int rc;

	rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(db_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("db", "%s", err);
	if (npos != 1 || strcmp(pos[0], "migrate") != 0)
		return cli_usage_error("db", "expected 'migrate'");
	if (cli_migrations_dir(dir, sizeof dir) < 0)
		return cli_fail("the migrations directory path is too long");
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = cli_db_migrate(conn, dir, cli_opt_has(opts, 1, "quiet"));
	PQfinish(conn);
	return rc < 0 ? CLI_EXIT_ERR : CLI_EXIT_OK;
}
