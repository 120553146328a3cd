// `ringbid up` / `ringbid down`: the embedded stack (a private PostgreSQL and the four services).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_pgdir.h"
#include "rb_time.h"

#define READY_TIMEOUT_MS  30000 // RINGBID_READY_TIMEOUT_MS overrides it
#define STOP_TIMEOUT_MS   10000 // RINGBID_STOP_TIMEOUT_MS overrides it
#define PORT_BASE_DEFAULT 7100
#define LOG_TAIL_LINES    20

typedef struct service {
	const char *name;     // "broker": log/<name>.log, run/<name>.pid
	const char *http_env; // its admin address variable
	int http_offset;
	// The variable naming its own database URL, handed to it as RINGBID_DATABASE_URL; NULL:
	// it never touches the database and gets no URL at all.
	const char *db_env;
} service;

// Start order: what others depend on first. Stopped in reverse.
static const service services[] = {
        {"billing", "RINGBID_BILLING_HTTP", RB_PORT_BILLING_HTTP, "RINGBID_BILLING_DATABASE_URL"},
        {"auction", "RINGBID_AUCTION_HTTP", RB_PORT_AUCTION_HTTP, NULL},
        {"presence", "RINGBID_PRESENCE_HTTP", RB_PORT_PRESENCE_HTTP,
         "RINGBID_PRESENCE_DATABASE_URL"},
        {"broker", "RINGBID_BROKER_HTTP", RB_PORT_BROKER_HTTP, "RINGBID_BROKER_DATABASE_URL"},
};
#define NSERVICES    (sizeof services / sizeof services[0])
#define PRESENCE_SVC 2 // services[PRESENCE_SVC] is presence

// RINGBID_PRESENCE_INSTANCES: presence processes of one stack, each holding some agents'
// sessions. Instance 0 is the usual presence; instance i (1..) listens for agents on port
// base+10+i and answers HTTP on base+85+i, inside the stack's block of 100 ports.
#define PRESENCE_INSTANCES_MAX   15
#define PRESENCE_AGENT_PORT_OFF  10
#define PRESENCE_HTTP_PORT_OFF   85
#define PRESENCE_BROKER_PORT_OFF 60 // instance i > 0 meets the broker at base+60+i
#define NRUNS_MAX                (NSERVICES + PRESENCE_INSTANCES_MAX - 1)

// The logins of the private cluster. The owner runs migrations and the CLI; each service that
// uses PostgreSQL logs in as a member of its group role (db/migrations/0006_roles.sql). Every
// password is random and lives only in its own pgpass file, $RINGBID_HOME/pgpass/<user>
// (mode 0600), which the login's URL names: no URL, environment or log ever holds a password.
typedef struct db_login {
	const char *user;
	const char *group;   // NULL: the owner
	const char *url_env; // where $RINGBID_HOME/env keeps its URL
} db_login;

#define DB_NAME    "ringbid"
#define DB_OWNER   "postgres"
#define PGPASS_DIR "pgpass"
#define DB_URL_MAX 1000 // services read a conninfo of up to 1023 bytes

static const db_login owner_login = {DB_OWNER, NULL, "RINGBID_DATABASE_URL"};
static const db_login service_logins[] = {
        {"ringbid_broker_login", "ringbid_broker", "RINGBID_BROKER_DATABASE_URL"},
        {"ringbid_presence_login", "ringbid_presence", "RINGBID_PRESENCE_DATABASE_URL"},
        {"ringbid_billing_login", "ringbid_billing", "RINGBID_BILLING_DATABASE_URL"},
};
#define NLOGINS (sizeof service_logins / sizeof service_logins[0])

// Every port of a stack, as offsets from RINGBID_PORT_BASE.
static const int port_offsets[] = {
        RB_PORT_BROKER_CALLS,     RB_PORT_BROKER_AUCTION,  RB_PORT_BROKER_PRESENCE,
        RB_PORT_AUCTION_PRESENCE, RB_PORT_PRESENCE_AGENTS, RB_PORT_BILLING_CDRS,
        RB_PORT_BROKER_HTTP,      RB_PORT_AUCTION_HTTP,    RB_PORT_PRESENCE_HTTP,
        RB_PORT_BILLING_HTTP,
};

static int64_t mono_ms(void)
{
	return (int64_t)(rb_mono_us() / 1000);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int path_fmt(char *out, size_t n, const char *a, const char *b)
{
	if ((size_t)snprintf(out, n, "%s/%s", a, b) >= n)
		return RB_ETOOBIG;
	return 0;
}

// Prints the last lines of a log file on stderr.
static void print_tail(const char *path)
{
	char buf[8192];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t size;
	ssize_t len;
	int lines = 0;
	char *start;

	if (fd < 0) {
		fprintf(stderr, "ringbid: (no log at %s)\n", path);
		return;
	}
	size = lseek(fd, 0, SEEK_END);
	lseek(fd, size > (off_t)sizeof buf - 1 ? size - (off_t)(sizeof buf - 1) : 0, SEEK_SET);
	len = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (len <= 0) {
		fprintf(stderr, "ringbid: (%s is empty)\n", path);
		return;
	}
	buf[len] = '\0';
	start = buf + len;
	if (start > buf && start[-1] == '\n')
		start--;
	while (start > buf && lines < LOG_TAIL_LINES) {
		start--;
		if (*start == '\n')
			lines++;
	}
	if (*start == '\n')
		start++;
	fprintf(stderr, "---- last lines of %s ----\n%s%s---- end of %s ----\n", path, start,
	        buf[len - 1] == '\n' ? "" : "\n", path);
}

// ---------------------------------------------------------------------------------------------
// Ports

static bool port_free(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	bool ok;

	if (fd < 0)
		return false;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	// Servers set SO_REUSEADDR too, so a port in TIME_WAIT counts as free, as it is to them.
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	close(fd);
	return ok;
}

static bool block_free(int base)
{
	for (size_t i = 0; i < sizeof port_offsets / sizeof port_offsets[0]; i++) {
		if (!port_free(base + port_offsets[i]))
			return false;
	}
	return true;
}

// A port the kernel says is free now.
static int any_free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof sa;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

	if (fd < 0)
		return -1;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static int choose_port_base(int *out)
{
	long long base;

	if (getenv("RINGBID_PORT_BASE")) {
		if (rb_config_int("RINGBID_PORT_BASE", PORT_BASE_DEFAULT, 1024, 65400, &base) < 0)
			return cli_fail("RINGBID_PORT_BASE must be a number from 1024 to 65400");
		*out = (int)base;
		return 0;
	}
	for (base = PORT_BASE_DEFAULT; base <= 65400; base += 100) {
		if (block_free((int)base)) {
			*out = (int)base;
			return 0;
		}
	}
	return cli_fail("no free block of 100 ports from %d up: set RINGBID_PORT_BASE",
	                PORT_BASE_DEFAULT);
}

// ---------------------------------------------------------------------------------------------
// Child processes

typedef struct run_opts {
	const char *log;  // stdout and stderr appended here; NULL: inherited
	bool as_postgres; // through `runuser -u postgres --` (we are root)
} run_opts;

// Runs argv to completion. Returns its exit status (0..255), or -1 when it could not run.
static int run(const char *const *argv, const run_opts *ro)
{
	const char *full[32];
	size_t n = 0;
	pid_t pid;
	int status;

	if (ro->as_postgres) {
		full[n++] = "runuser";
		full[n++] = "-u";
		full[n++] = "postgres";
		full[n++] = "--";
	}
	for (size_t i = 0; argv[i] && n < 31; i++)
		full[n++] = argv[i];
	full[n] = NULL;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);

		if (in >= 0)
			dup2(in, 0);
		if (ro->log) {
			int fd = open(ro->log, O_WRONLY | O_CREAT | O_APPEND, 0640);

			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
		}
		// The postgres user may not be able to enter our working directory.
		if (chdir("/") != 0)
			_exit(126);
		execvp(full[0], (char *const *)full);
		fprintf(stderr, "ringbid: cannot run %s: %s\n", full[0], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Reads a pid file; 0 when missing or unreadable.
static pid_t read_pid(const char *path)
{
	FILE *f = fopen(path, "re");
	long pid = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%ld", &pid) != 1 || pid <= 1 || pid > INT_MAX)
		pid = 0;
	fclose(f);
	return (pid_t)pid;
}

static int write_pid(const char *path, pid_t pid)
{
	char tmp[PATH_MAX + 8];
	FILE *f;

	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return RB_EIO;
	fprintf(f, "%ld\n", (long)pid);
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return RB_EIO;
	}
	return 0;
}

// True when pid has exited but was not reaped yet (state Z in /proc/<pid>/stat). In a
// container whose first process never reaps, a killed postmaster stays a zombie for good and
// kill(pid, 0) still finds it.
static bool pid_zombie(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t len = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (len <= 0)
		return false;
	buf[len] = '\0';
	// "pid (comm) S ...": the command may hold spaces and parentheses; the state follows the
	// last ')'.
	const char *close_paren = strrchr(buf, ')');
	return close_paren != NULL && close_paren[1] == ' ' && close_paren[2] == 'Z';
}

// True when pid is alive and runs program (a basename): a stale pid file may name a pid the
// system has since given to another process.
static bool pid_runs(pid_t pid, const char *program)
{
	char path[64], cmd[PATH_MAX];
	ssize_t len;
	int fd;
	const char *base;

	if (pid <= 1 || (kill(pid, 0) != 0 && errno != EPERM))
		return false;
	snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	len = read(fd, cmd, sizeof cmd - 1);
	close(fd);
	if (len <= 0)
		return false; // a zombie has an empty command line
	cmd[len] = '\0';
	// Any argument may be the program: a wrapper (RINGBID_SERVICE_WRAPPER) comes first.
	for (char *arg = cmd; arg < cmd + len; arg += strlen(arg) + 1) {
		base = strrchr(arg, '/');
		base = base ? base + 1 : arg;
		if (strcmp(base, program) == 0)
			return true;
	}
	return false;
}

// ---------------------------------------------------------------------------------------------
// Database passwords and URLs of the private cluster

#define PW_MAX 128

// Writes text and suffix to a new file at path with mode 0600, replacing nothing: an existing
// file there is an error (EEXIST). Returns 0, or -1 with errno set.
static int write_new_file(const char *path, const char *text, const char *suffix)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	const char *parts[2] = {text, suffix};
	int err = 0;

	if (fd < 0)
		return -1;
	for (int i = 0; i < 2 && err == 0; i++) {
		size_t len = strlen(parts[i]), off = 0;

		while (off < len) {
			ssize_t w = write(fd, parts[i] + off, len - off);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				err = errno;
				break;
			}
			off += (size_t)w;
		}
	}
	if (err == 0 && fsync(fd) != 0)
		err = errno;
	if (close(fd) != 0 && err == 0)
		err = errno;
	if (err != 0) {
		unlink(path);
		errno = err;
		return -1;
	}
	return 0;
}

// A secret file written anew (an older one at path is removed first).
static int write_secret(const char *path, const char *text, const char *suffix)
{
	if (unlink(path) != 0 && errno != ENOENT)
		return -1;
	return write_new_file(path, text, suffix);
}

static int pgpass_path(const char *home, const char *user, char *out, size_t n)
{
	if ((size_t)snprintf(out, n, "%s/" PGPASS_DIR "/%s", home, user) >= n)
		return RB_ETOOBIG;
	return 0;
}

// Reads user's password from its pgpass file, the one line "*:*:*:<user>:<password>" with a
// password of hex digits (nothing a pgpass file would need to escape). Returns 0,
// RB_ENOTFOUND (no file), RB_EIO or RB_ECONFIG (not such a file).
static int pgpass_read(const char *path, const char *user, char *pw, size_t n)
{
	char buf[512], prefix[128];
	struct stat st;
	ssize_t len;
	size_t plen, pwlen;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return errno == ENOENT ? RB_ENOTFOUND : RB_EIO;
	// libpq ignores a password file that others may read.
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
	    ((st.st_mode & 077) != 0 && fchmod(fd, 0600) != 0)) {
		close(fd);
		return RB_EIO;
	}
	len = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (len < 0)
		return RB_EIO;
	buf[len] = '\0';
	snprintf(prefix, sizeof prefix, "*:*:*:%s:", user);
	plen = strlen(prefix);
	if ((size_t)len <= plen || memcmp(buf, prefix, plen) != 0) {
		explicit_bzero(buf, sizeof buf);
		return RB_ECONFIG;
	}
	pwlen = strspn(buf + plen, "0123456789abcdef");
	if (pwlen < 32 || pwlen >= n || (buf[plen + pwlen] != '\n' && buf[plen + pwlen] != '\0')) {
		explicit_bzero(buf, sizeof buf);
		return RB_ECONFIG;
	}
	memcpy(pw, buf + plen, pwlen);
	pw[pwlen] = '\0';
	explicit_bzero(buf, sizeof buf);
	return 0;
}

// user's password: the one in its pgpass file, else a new random one written there.
// Returns 0 or an exit status (reason printed).
static int pgpass_ensure(const char *home, const char *user, char *pw, size_t n)
{
	char dir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX + 32], line[256];
	unsigned char rnd[32];
	int rc, err;

	if (n < 2 * sizeof rnd + 1 || path_fmt(dir, sizeof dir, home, PGPASS_DIR) < 0 ||
	    pgpass_path(home, user, path, sizeof path) < 0 ||
	    (size_t)snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= sizeof tmp)
		return cli_fail("RINGBID_HOME is too long");
	rc = pgpass_read(path, user, pw, n);
	if (rc == 0)
		return 0;
	if (rc != RB_ENOTFOUND)
		return cli_fail("%s is not the password file of %s (one line *:*:*:%s:PASSWORD)",
		                path, user, user);
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return cli_fail("cannot create %s: %s", dir, strerror(errno));
	randombytes_buf(rnd, sizeof rnd);
	sodium_bin2hex(pw, n, rnd, sizeof rnd);
	sodium_memzero(rnd, sizeof rnd);
	snprintf(line, sizeof line, "*:*:*:%s:%s", user, pw);
	rc = write_secret(tmp, line, "\n");
	explicit_bzero(line, sizeof line);
	if (rc != 0)
		return cli_fail("cannot write %s: %s", tmp, strerror(errno));
	// link, not rename: when two `ringbid up` race, the first file stays and both use it.
	rc = link(tmp, path);
	err = errno;
	unlink(tmp);
	if (rc != 0 && err == EEXIST) {
		if (pgpass_read(path, user, pw, n) != 0)
			return cli_fail("%s is not the password file of %s", path, user);
		return 0;
	}
	if (rc != 0)
		return cli_fail("cannot write %s: %s", path, strerror(err));
	return 0;
}

// The URL of user's login to the private cluster: postgresql://user@127.0.0.1:port/ringbid
// with its pgpass file as the passfile parameter (percent-encoded). Returns 0 or RB_ETOOBIG.
static int db_url(char *out, size_t n, const char *home, const char *user, int port)
{
	static const char hex[] = "0123456789ABCDEF";
	char path[PATH_MAX];
	size_t off;
	int len;

	if (pgpass_path(home, user, path, sizeof path) < 0)
		return RB_ETOOBIG;
	len = snprintf(out, n, "postgresql://%s@127.0.0.1:%d/" DB_NAME "?passfile=", user, port);
	if (len < 0 || (size_t)len >= n)
		return RB_ETOOBIG;
	off = (size_t)len;
	for (const unsigned char *c = (const unsigned char *)path; *c; c++) {
		bool plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		             (*c >= '0' && *c <= '9') || strchr("/-._~", *c) != NULL;

		if (off + 4 > n)
			return RB_ETOOBIG;
		if (plain) {
			out[off++] = (char)*c;
		} else {
			out[off++] = '%';
			out[off++] = hex[*c >> 4];
			out[off++] = hex[*c & 15];
		}
	}
	out[off] = '\0';
	return off > DB_URL_MAX ? RB_ETOOBIG : 0;
}

// Connects to dbname of the private cluster as the owner, with the owner's pgpass file.
// On success *out is the caller's (PQfinish). Returns 0 or an exit status (reason printed).
static int owner_connect(const char *home, int port, const char *dbname, PGconn **out)
{
	char path[PATH_MAX], conninfo[2 * PATH_MAX + 256];
	size_t off;
	PGconn *conn;
	int rc;

	if (pgpass_path(home, DB_OWNER, path, sizeof path) < 0)
		return cli_fail("RINGBID_HOME is too long");
	off = (size_t)snprintf(conninfo, sizeof conninfo,
	                       "host=127.0.0.1 port=%d user=" DB_OWNER
	                       " dbname=%s connect_timeout=10 passfile='",
	                       port, dbname);
	// A quoted conninfo value escapes ' and \ with a backslash.
	for (const char *c = path; *c && off + 4 < sizeof conninfo; c++) {
		if (*c == '\'' || *c == '\\')
			conninfo[off++] = '\\';
		conninfo[off++] = *c;
	}
	conninfo[off++] = '\'';
	conninfo[off] = '\0';
	conn = PQconnectdb(conninfo);
	if (!conn || PQstatus(conn) != CONNECTION_OK) {
		rc = cli_fail("cannot connect to the private PostgreSQL as %s: %s", DB_OWNER,
		              conn ? PQerrorMessage(conn) : "out of memory");
		PQfinish(conn);
		return rc;
	}
	*out = conn;
	return 0;
}

static int exec_simple(PGconn *conn, const char *sql, const char *what)
{
	PGresult *res = PQexec(conn, sql);
	int rc = 0;

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = cli_db_fail(conn, res, what);
	PQclear(res);
	return rc;
}

// Sets user's password. Only its SCRAM verifier, computed here, reaches the server, so the
// password itself never appears in a statement, a server log or pg_stat_activity.
static int set_password(PGconn *conn, const char *user, const char *pw)
{
	char sql[512], what[128];
	char *verifier = PQencryptPasswordConn(conn, pw, user, "scram-sha-256");
	char *lit = verifier ? PQescapeLiteral(conn, verifier, strlen(verifier)) : NULL;
	int rc;

	PQfreemem(verifier);
	if (!lit)
		return cli_fail("cannot make the password verifier of %s: %s", user,
		                PQerrorMessage(conn));
	snprintf(what, sizeof what, "cannot set the password of %s", user);
	if ((size_t)snprintf(sql, sizeof sql, "ALTER ROLE %s PASSWORD %s", user, lit) >= sizeof sql)
		rc = cli_fail("%s: verifier too long", what);
	else
		rc = exec_simple(conn, sql, what);
	PQfreemem(lit);
	return rc;
}

// ---------------------------------------------------------------------------------------------
// The private PostgreSQL

typedef struct pg {
	char bindir[PATH_MAX];
	char home[PATH_MAX]; // $RINGBID_HOME
	char dir[PATH_MAX];  // $RINGBID_HOME/pg
	char log[PATH_MAX];  // $RINGBID_HOME/log/postgres.log
	bool as_postgres;
	uid_t uid;
	gid_t gid;
} pg;

// The newest /usr/lib/postgresql/N/bin holding pg_ctl (RINGBID_PG_BIN overrides).
static int find_pg_bin(char *out, size_t n)
{
	glob_t g;
	long best = -1;

	if (getenv("RINGBID_PG_BIN") && *getenv("RINGBID_PG_BIN")) {
		snprintf(out, n, "%s", getenv("RINGBID_PG_BIN"));
		return 0;
	}
	if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, NULL, &g) != 0)
		return cli_fail(
		        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl); "
		        "install it (scripts/install-deps.sh) or set RINGBID_DATABASE_URL");
	for (size_t i = 0; i < g.gl_pathc; i++) {
		const char *v = g.gl_pathv[i] + strlen("/usr/lib/postgresql/");
		long ver = strtol(v, NULL, 10);

		if (ver > best) {
			best = ver;
			snprintf(out, n, "%.*s", (int)(strrchr(g.gl_pathv[i], '/') - g.gl_pathv[i]),
			         g.gl_pathv[i]);
		}
	}
	globfree(&g);
	return 0;
}

static int pg_own(const pg *p, const char *path)
{
	if (p->as_postgres && chown(path, p->uid, p->gid) != 0)
		return cli_fail("cannot give %s to the postgres user: %s", path, strerror(errno));
	return 0;
}

// Finds the programs and paths of the private cluster; creates nothing.
static int pg_setup(pg *p, const char *home)
{
	char logdir[PATH_MAX];
	int rc;

	if ((rc = find_pg_bin(p->bindir, sizeof p->bindir)) != 0)
		return rc;
	if ((size_t)snprintf(p->home, sizeof p->home, "%s", home) >= sizeof p->home ||
	    path_fmt(p->dir, sizeof p->dir, home, "pg") < 0 ||
	    path_fmt(logdir, sizeof logdir, home, "log") < 0 ||
	    path_fmt(p->log, sizeof p->log, logdir, "postgres.log") < 0)
		return cli_fail("RINGBID_HOME is too long");
	p->as_postgres = geteuid() == 0;
	if (p->as_postgres) {
		struct passwd *pw = getpwnam("postgres");

		if (!pw)
			return cli_fail("running as root, but there is no 'postgres' user to run "
			                "PostgreSQL as (install the postgresql package)");
		p->uid = pw->pw_uid;
		p->gid = pw->pw_gid;
	}
	return 0;
}

// Sets up the private cluster, creating it (initdb) the first time.
static int pg_init(pg *p, const char *home)
{
	char initdb_log[PATH_MAX], version[PATH_MAX + 16], logdir[PATH_MAX], pwfile[PATH_MAX];
	char pwopt[PATH_MAX + 16], pw[PW_MAX];
	struct stat st;
	int rc;

	if ((rc = pg_setup(p, home)) != 0)
		return rc;
	if (path_fmt(logdir, sizeof logdir, home, "log") < 0)
		return cli_fail("RINGBID_HOME is too long");
	snprintf(version, sizeof version, "%s/PG_VERSION", p->dir);
	if (stat(version, &st) == 0)
		return 0;

	// A new cluster.
	if (cli_mkdirs(p->dir, 0700) < 0)
		return cli_fail("cannot create %s: %s", p->dir, strerror(errno));
	if ((rc = pg_own(p, p->dir)) != 0)
		return rc;
	if (p->as_postgres)
		if (rb_pgdir_grant(p->dir) != 0)
			return cli_fail("user postgres cannot reach %s", p->dir);
	if (path_fmt(initdb_log, sizeof initdb_log, logdir, "initdb.log") < 0 ||
	    path_fmt(pwfile, sizeof pwfile, home, "pg.pwfile") < 0 ||
	    (size_t)snprintf(pwopt, sizeof pwopt, "--pwfile=%s", pwfile) >= sizeof pwopt)
		return cli_fail("RINGBID_HOME is too long");
	// The owner has a password from the first moment: there is no window in which the
	// cluster lets anyone in without one.
	if ((rc = pgpass_ensure(home, DB_OWNER, pw, sizeof pw)) != 0)
		return rc;
	rc = write_secret(pwfile, pw, "\n");
	explicit_bzero(pw, sizeof pw);
	if (rc != 0)
		return cli_fail("cannot write %s: %s", pwfile, strerror(errno));
	if ((rc = pg_own(p, pwfile)) != 0) {
		unlink(pwfile);
		return rc;
	}
	printf("creating a private PostgreSQL cluster in %s\n", p->dir);
	fflush(stdout);
	char initdb[PATH_MAX + 16];

	snprintf(initdb, sizeof initdb, "%s/initdb", p->bindir);
	const char *argv[] = {
	        initdb, "-D", p->dir, "-U",          DB_OWNER,    "--auth=scram-sha-256",
	        pwopt,  "-E", "UTF8", "--no-locale", "--no-sync", NULL};
	const run_opts ro = {.log = initdb_log, .as_postgres = p->as_postgres};

	rc = run(argv, &ro);
	unlink(pwfile);
	if (rc != 0) {
		cli_fail("initdb failed");
		print_tail(initdb_log);
		return CLI_EXIT_ERR;
	}
	return 0;
}

// The postmaster running on the cluster, and its port, from postmaster.pid (line 1: pid,
// line 4: port).
static bool pg_running(const pg *p, int *port)
{
	char path[PATH_MAX + 32], line[256];
	FILE *f;
	long pid = 0, prt = 0;

	snprintf(path, sizeof path, "%s/postmaster.pid", p->dir);
	f = fopen(path, "re");
	if (!f)
		return false;
	for (int i = 1; i <= 4 && fgets(line, sizeof line, f); i++) {
		if (i == 1)
			pid = strtol(line, NULL, 10);
		if (i == 4)
			prt = strtol(line, NULL, 10);
	}
	fclose(f);
	if (pid <= 1 || (kill((pid_t)pid, 0) != 0 && errno != EPERM) || pid_zombie((pid_t)pid) ||
	    prt <= 0 || prt > 65535)
		return false;
	if (port)
		*port = (int)prt;
	return true;
}

static int pg_start(pg *p, bool port_from_caller, int *port_out)
{
	char pg_ctl[PATH_MAX + 16], opts[256];
	long long port;
	int fd, rc;

	if (pg_running(p, port_out)) {
		printf("PostgreSQL already running in %s on 127.0.0.1:%d\n", p->dir, *port_out);
		return 0;
	}
	if (getenv("RINGBID_PG_PORT")) {
		if (rb_config_int("RINGBID_PG_PORT", 0, 1, 65535, &port) < 0)
			return cli_fail("RINGBID_PG_PORT must be a port number");
		// A port remembered in the env file may have been taken since; one the caller
		// asked for must be used as it is.
		if (!port_free((int)port) && !port_from_caller)
			port = any_free_port();
	} else {
		port = any_free_port();
	}
	if (port <= 0)
		return cli_fail("no free port for PostgreSQL");
	fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0)
		return cli_fail("cannot open %s: %s", p->log, strerror(errno));
	close(fd);
	if ((rc = pg_own(p, p->log)) != 0)
		return rc;
	snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", p->bindir);
	// pg_ctl hands -o to a shell: '' is an empty value there (no Unix socket at all).
	snprintf(opts, sizeof opts,
	         "-c listen_addresses=127.0.0.1 -p %lld -c unix_socket_directories=''", port);
	const char *argv[] = {pg_ctl, "-s",   "-w", "-t", "60",    "-D", p->dir,
	                      "-l",   p->log, "-o", opts, "start", NULL};
	const run_opts ro = {.log = NULL, .as_postgres = p->as_postgres};

	printf("starting PostgreSQL on 127.0.0.1:%lld (log %s)\n", port, p->log);
	fflush(stdout);
	if (run(argv, &ro) != 0) {
		cli_fail("PostgreSQL did not start");
		print_tail(p->log);
		return CLI_EXIT_ERR;
	}
	*port_out = (int)port;
	return 0;
}

static int pg_create_db(const pg *p, int port)
{
	PGconn *conn;
	PGresult *res;
	int rc;

	if ((rc = owner_connect(p->home, port, "postgres", &conn)) != 0)
		return rc;
	res = PQexec(conn, "SELECT 1 FROM pg_database WHERE datname = '" DB_NAME "'");
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 0) {
		PQclear(res);
		res = PQexec(conn, "CREATE DATABASE " DB_NAME);
		// Another `ringbid up` may have created it meanwhile (42P04): that is fine.
		if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		    strcmp(cli_db_sqlstate(res), "42P04") != 0)
			rc = cli_db_fail(conn, res, "cannot create database " DB_NAME);
		else
			printf("created database " DB_NAME "\n");
	} else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = cli_db_fail(conn, res, "cannot list databases");
	}
	PQclear(res);
	PQfinish(conn);
	return rc;
}

// The private cluster's only client rules: loopback TCP (it has no Unix socket), a password
// for every login.
static const char hba_rules[] =
        "# ringbid's private cluster, written by `ringbid up`: loopback only, and every login\n"
        "# proves its password (SCRAM). The passwords are in $RINGBID_HOME/" PGPASS_DIR "/.\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n";

// Makes the cluster ask every login for its password. A cluster made before ringbid used
// passwords trusts every loopback connection: the owner's password is set first, while the old
// rules still let us in, and then the rules change and the server reloads them.
static int pg_secure(const pg *p, int port)
{
	char path[PATH_MAX + 16], tmp[PATH_MAX + 32], cur[sizeof hba_rules + 1], pw[PW_MAX];
	PGconn *conn;
	ssize_t len = -1;
	int fd, rc;

	snprintf(path, sizeof path, "%s/pg_hba.conf", p->dir);
	snprintf(tmp, sizeof tmp, "%s/pg_hba.conf.%ld.tmp", p->dir, (long)getpid());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		len = read(fd, cur, sizeof cur - 1);
		close(fd);
	}
	if (len == (ssize_t)strlen(hba_rules) && memcmp(cur, hba_rules, (size_t)len) == 0)
		return 0;
	if ((rc = pgpass_ensure(p->home, DB_OWNER, pw, sizeof pw)) != 0)
		return rc;
	if ((rc = owner_connect(p->home, port, "postgres", &conn)) != 0) {
		explicit_bzero(pw, sizeof pw);
		return rc;
	}
	rc = set_password(conn, DB_OWNER, pw);
	explicit_bzero(pw, sizeof pw);
	if (rc == 0) {
		if (write_secret(tmp, hba_rules, "") != 0 || pg_own(p, tmp) != 0 ||
		    rename(tmp, path) != 0) {
			rc = cli_fail("cannot write %s: %s", path, strerror(errno));
			unlink(tmp);
		} else {
			rc = exec_simple(conn, "SELECT pg_reload_conf()",
			                 "cannot reload the client rules");
		}
	}
	PQfinish(conn);
	if (rc == 0)
		printf("PostgreSQL asks every login for its password (%s)\n", path);
	return rc;
}

// Gives each service its own login, a member of its group role only (the roles are made by
// the migrations, so this runs after them). Idempotent: an existing login gets its password
// from the pgpass file again and keeps its other memberships.
static int pg_logins(const char *home, int port)
{
	char pw[PW_MAX], sql[256], what[160];
	const char *params[1];
	PGconn *conn;
	PGresult *res;
	int rc;

	if ((rc = owner_connect(home, port, DB_NAME, &conn)) != 0)
		return rc;
	for (size_t i = 0; i < NLOGINS && rc == 0; i++) {
		const db_login *l = &service_logins[i];

		if ((rc = pgpass_ensure(home, l->user, pw, sizeof pw)) != 0)
			break;
		params[0] = l->group;
		rc = cli_db_exec(conn, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1, params,
		                 &res);
		if (rc == 0 && PQntuples(res) == 0) {
			rc = cli_fail(
			        "role %s does not exist: the migrations (0006_roles.sql) have "
			        "not run on this database",
			        l->group);
		} else if (rc < 0) {
			rc = cli_db_fail(conn, res, "cannot read the roles");
		}
		PQclear(res);
		if (rc != 0)
			break;
		snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", l->user);
		res = PQexec(conn, sql);
		// 42710: it exists already (an earlier `ringbid up`, or one running beside us).
		if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		    strcmp(cli_db_sqlstate(res), "42710") != 0) {
			snprintf(what, sizeof what, "cannot create login %s", l->user);
			rc = cli_db_fail(conn, res, what);
		}
		PQclear(res);
		snprintf(sql, sizeof sql,
		         "ALTER ROLE %s WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
		         "NOREPLICATION NOBYPASSRLS",
		         l->user);
		snprintf(what, sizeof what, "cannot set up login %s", l->user);
		if (rc == 0)
			rc = exec_simple(conn, sql, what);
		if (rc == 0)
			rc = set_password(conn, l->user, pw);
		snprintf(sql, sizeof sql, "GRANT %s TO %s", l->group, l->user);
		if (rc == 0)
			rc = exec_simple(conn, sql, what);
	}
	explicit_bzero(pw, sizeof pw);
	PQfinish(conn);
	if (rc == 0)
		printf("database logins ready: one per service, passwords in %s/" PGPASS_DIR "/\n",
		       home);
	return rc;
}

static int pg_stop(const pg *p)
{
	char pg_ctl[PATH_MAX + 16];
	int port;

	if (!pg_running(p, &port))
		return 0;
	snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", p->bindir);
	const char *argv[] = {pg_ctl, "-s", "-w",   "-t",   "60", "-D",
	                      p->dir, "-m", "fast", "stop", NULL};
	const run_opts ro = {.log = NULL, .as_postgres = p->as_postgres};

	if (run(argv, &ro) != 0)
		return cli_fail("PostgreSQL in %s did not stop", p->dir);
	printf("stopped PostgreSQL (%s)\n", p->dir);
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Readiness: a tiny HTTP/1.0 client

// GET path on "host:port"; returns the HTTP status, or -1 when nothing answered in time.
static int http_status(const char *addr, const char *path, int timeout_ms)
{
	char host[256], req[512], buf[64];
	const char *colon = strrchr(addr, ':');
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	struct pollfd pfd;
	size_t len = 0;
	int fd = -1, status = -1, flags, err = 0;
	socklen_t elen = sizeof err;

	if (!colon || (size_t)(colon - addr) >= sizeof host)
		return -1;
	snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	if (!host[0] || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0)
		snprintf(host, sizeof host, "127.0.0.1");
	else if (strcmp(host, "::") == 0)
		snprintf(host, sizeof host, "::1");
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai)
		return -1;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto out;
	flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS)
		goto out;
	pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
	if (poll(&pfd, 1, timeout_ms) != 1 ||
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0)
		goto out;
	fcntl(fd, F_SETFL, flags);
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr);
	if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req))
		goto out;
	while (len < sizeof buf - 1) {
		ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);

		if (r <= 0)
			break;
		len += (size_t)r;
		if (memchr(buf, '\n', len))
			break;
	}
	buf[len] = '\0';
	if (strncmp(buf, "HTTP/1.", 7) == 0 && len >= 12)
		status = (int)strtol(buf + 9, NULL, 10);
out:
	if (fd >= 0)
		close(fd);
	freeaddrinfo(ai);
	return status;
}

// ---------------------------------------------------------------------------------------------
// Services

typedef struct svc_run {
	const service *svc;
	char name[32];    // "presence-2" for a further presence instance, else svc->name
	int instance;     // presence instance number (RINGBID_PRESENCE_ID); 0 for the others
	char agents[256]; // instance > 0: its RINGBID_PRESENCE_URL
	char broker[256]; // instance > 0: its RINGBID_BROKER_PRESENCE_URL
	char bin[PATH_MAX];
	char log[PATH_MAX];
	char pidfile[PATH_MAX];
	char http[256];
	pid_t pid;
	bool started; // by us, now: a child we can reap
	bool ready;
} svc_run;

// instance > 0 names a further presence instance (svc is presence's entry).
static int svc_paths(svc_run *s, const service *svc, int instance, const char *bindir,
                     const char *home)
{
	char name[64];

	s->svc = svc;
	s->instance = instance;
	if (instance > 0)
		snprintf(s->name, sizeof s->name, "%s-%d", svc->name, instance);
	else
		snprintf(s->name, sizeof s->name, "%s", svc->name);
	snprintf(name, sizeof name, "ringbid-%s", svc->name);
	if (path_fmt(s->bin, sizeof s->bin, bindir, name) < 0 ||
	    (size_t)snprintf(s->log, sizeof s->log, "%s/log/%s.log", home, s->name) >=
	            sizeof s->log ||
	    (size_t)snprintf(s->pidfile, sizeof s->pidfile, "%s/run/%s.pid", home, s->name) >=
	            sizeof s->pidfile)
		return RB_ETOOBIG;
	if (instance == 0)
		return rb_config_http(svc->http_env, svc->http_offset, s->http, sizeof s->http) < 0
		               ? RB_ECONFIG
		               : 0;
	long long base;

	if (rb_config_int("RINGBID_PORT_BASE", PORT_BASE_DEFAULT, 1024, 65400, &base) < 0)
		return RB_ECONFIG;
	snprintf(s->agents, sizeof s->agents, "tcp://127.0.0.1:%lld",
	         base + PRESENCE_AGENT_PORT_OFF + instance);
	snprintf(s->http, sizeof s->http, "127.0.0.1:%lld",
	         base + PRESENCE_HTTP_PORT_OFF + instance);
	snprintf(s->broker, sizeof s->broker, "tcp://127.0.0.1:%lld",
	         base + PRESENCE_BROKER_PORT_OFF + instance);
	return 0;
}

// The services of a stack in start order, with n presence instances. Returns how many runs.
static int svc_plan(svc_run *runs, int instances, const char *bindir, const char *home, size_t *n)
{
	*n = 0;
	for (size_t i = 0; i < NSERVICES; i++) {
		memset(&runs[*n], 0, sizeof runs[*n]);
		if (svc_paths(&runs[(*n)++], &services[i], 0, bindir, home) < 0)
			return cli_fail("bad path or address for %s", services[i].name);
		if (i != PRESENCE_SVC)
			continue;
		for (int k = 1; k < instances; k++) {
			memset(&runs[*n], 0, sizeof runs[*n]);
			if (svc_paths(&runs[(*n)++], &services[i], k, bindir, home) < 0)
				return cli_fail("bad path or address for presence instance %d", k);
		}
	}
	return 0;
}

static int svc_start(svc_run *s)
{
	pid_t pid;

	s->pid = read_pid(s->pidfile);
	if (s->pid && pid_runs(s->pid, strrchr(s->bin, '/') + 1)) {
		printf("%-8s already running (pid %ld)\n", s->name, (long)s->pid);
		return 0;
	}
	// Something else answering on the service's port would pass for it in the readiness wait.
	if (http_status(s->http, "/healthz", 500) > 0)
		return cli_fail("%s: something already answers on http://%s (another ringbid stack "
		                "with RINGBID_PORT_BASE=%s?)",
		                s->name, s->http, getenv("RINGBID_PORT_BASE"));
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return cli_fail("cannot start %s: %s", s->name, strerror(errno));
	if (pid == 0) {
		// RINGBID_SERVICE_WRAPPER runs each service under a command, e.g. valgrind for the
		// leak check at shutdown; words are split on spaces.
		char wrapper[1024];
		const char *argv[34];
		size_t n = 0;
		const char *w = getenv("RINGBID_SERVICE_WRAPPER");
		int in = open("/dev/null", O_RDONLY), out;

		if (w != NULL && strlen(w) < sizeof wrapper) {
			char *save = NULL;

			memcpy(wrapper, w, strlen(w) + 1);
			for (char *t = strtok_r(wrapper, " ", &save); t != NULL && n < 32;
			     t = strtok_r(NULL, " ", &save))
				argv[n++] = t;
		}
		argv[n++] = s->bin;
		argv[n] = NULL;

		// Each service logs in to PostgreSQL as itself; one without a database gets no URL
		// (set and empty, so that it does not take the owner's from $RINGBID_HOME/env).
		if (s->svc->db_env == NULL) {
			setenv("RINGBID_DATABASE_URL", "", 1);
		} else {
			const char *u = getenv(s->svc->db_env);

			if (u != NULL && *u != '\0')
				setenv("RINGBID_DATABASE_URL", u, 1);
		}
		if (s->svc == &services[PRESENCE_SVC]) {
			char id[16];

			snprintf(id, sizeof id, "%d", s->instance);
			setenv("RINGBID_PRESENCE_ID", id, 1);
			if (s->instance > 0) {
				setenv("RINGBID_PRESENCE_URL", s->agents, 1);
				setenv("RINGBID_BROKER_PRESENCE_URL", s->broker, 1);
				setenv(s->svc->http_env, s->http, 1);
			}
		}
		setsid();
		out = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0640);
		if (in >= 0)
			dup2(in, 0);
		if (out >= 0) {
			dup2(out, 1);
			dup2(out, 2);
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "ringbid: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	s->pid = pid;
	s->started = true;
	if (write_pid(s->pidfile, pid) < 0)
		return cli_fail("cannot write %s: %s", s->pidfile, strerror(errno));
	printf("%-8s started (pid %ld, log %s)\n", s->name, (long)pid, s->log);
	return 0;
}

static bool svc_alive(svc_run *s)
{
	int status;

	if (s->started)
		return waitpid(s->pid, &status, WNOHANG) == 0;
	return pid_runs(s->pid, strrchr(s->bin, '/') + 1);
}

// Waits until every service answers 200 on /readyz. Returns 0 or an exit status.
static int wait_ready(svc_run *runs, size_t n)
{
	long long timeout_ms = READY_TIMEOUT_MS;

	if (rb_config_ms("RINGBID_READY_TIMEOUT_MS", READY_TIMEOUT_MS, 1000, 600000, &timeout_ms) !=
	    0)
		timeout_ms = READY_TIMEOUT_MS;
	const int64_t deadline = mono_ms() + timeout_ms;
	size_t ready = 0;

	for (;;) {
		for (size_t i = 0; i < n; i++) {
			svc_run *s = &runs[i];

			if (s->ready)
				continue;
			if (!svc_alive(s)) {
				unlink(s->pidfile);
				cli_fail("%s exited while starting", s->name);
				print_tail(s->log);
				return CLI_EXIT_ERR;
			}
			if (http_status(s->http, "/readyz", 1000) == 200) {
				s->ready = true;
				ready++;
				printf("%-8s ready (http://%s/readyz)\n", s->name, s->http);
				fflush(stdout);
			}
		}
		if (ready == n)
			return 0;
		if (mono_ms() >= deadline)
			break;
		sleep_ms(200);
	}
	for (size_t i = 0; i < n; i++) {
		if (runs[i].ready)
			continue;
		cli_fail("%s is not ready after %d s (GET http://%s/readyz)", runs[i].name,
		         READY_TIMEOUT_MS / 1000, runs[i].http);
		print_tail(runs[i].log);
	}
	return CLI_EXIT_ERR;
}

// ---------------------------------------------------------------------------------------------
// ringbid up

static const char up_usage[] =
        "usage: ringbid up [--no-db]\n"
        "\n"
        "Starts ringbid on this machine, in $RINGBID_HOME (default ./var):\n"
        "  - unless RINGBID_DATABASE_URL or PGHOST is set, a private PostgreSQL cluster in\n"
        "    $RINGBID_HOME/pg on a free loopback port (RINGBID_PG_PORT to choose it), where\n"
        "    every login needs its password (random, in $RINGBID_HOME/pgpass/<login>)\n"
        "  - the database migrations, as the owner login (RINGBID_DATABASE_URL)\n"
        "  - on the private cluster, one login per service, a member of its role only\n"
        "  - ringbid-billing, -auction, -presence and -broker in the background, logging to\n"
        "    $RINGBID_HOME/log/<name>.log, their pids in $RINGBID_HOME/run/<name>.pid; each\n"
        "    gets RINGBID_<NAME>_DATABASE_URL as its RINGBID_DATABASE_URL when that is set\n"
        "    (the auction gets none)\n"
        "    RINGBID_PRESENCE_INSTANCES (1 to 15, default 1) starts that many presence\n"
        "    processes, numbered 0.., each holding the sessions of the agents that connect\n"
        "    to it: the first on the usual agents' port, instance i on port base+10+i\n"
        "    (HTTP base+85+i, the broker's socket for it base+60+i); their URLs go to\n"
        "    $RINGBID_HOME/env as RINGBID_PRESENCE_URLS and RINGBID_BROKER_PRESENCE_URLS\n"
        "and waits until each answers on /readyz. The chosen settings (database URLs, port\n"
        "base, service token) are written to $RINGBID_HOME/env, where every ringbid program\n"
        "finds them. Services already running are left alone.\n"
        "\n"
        "options:\n"
        "  --no-db    neither start a private PostgreSQL nor run migrations: the services use\n"
        "             RINGBID_<NAME>_DATABASE_URL, RINGBID_DATABASE_URL / PG* as they are\n";

int cli_cmd_up(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "no-db"}};
	const char *pos[1];
	size_t npos;
	char err[256], home[PATH_MAX], bindir[PATH_MAX], envpath[PATH_MAX], dir[PATH_MAX];
	char portbase[16], pgport[16], url[DB_URL_MAX + 1], token[256], migrations[PATH_MAX];
	char svc_urls[NLOGINS][DB_URL_MAX + 1];
	char instances_text[16], urls[PRESENCE_INSTANCES_MAX * 40];
	char broker_urls[PRESENCE_INSTANCES_MAX * 300];
	cli_env_kv kv[8 + NLOGINS];
	size_t nkv = 0, nruns = 0;
	long long instances = 1;
	svc_run runs[NRUNS_MAX];
	bool no_db, external, pg_port_from_caller, token_file;
	int base = PORT_BASE_DEFAULT, port = 0, rc;

	rc = cli_args_parse(argc, argv, opts, 1, pos, 0, &npos, err, sizeof err);
	if (rc == CLI_ARGS_HELP) {
		fputs(up_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("up", "%s", err);
	no_db = cli_opt_has(opts, 1, "no-db");

	// What the caller's environment says, before $RINGBID_HOME/env fills in the rest.
	external = (getenv("RINGBID_DATABASE_URL") && *getenv("RINGBID_DATABASE_URL")) ||
	           (getenv("PGHOST") && *getenv("PGHOST"));
	pg_port_from_caller = getenv("RINGBID_PG_PORT") != NULL;
	if (cli_home_abs(home, sizeof home) < 0)
		return cli_fail("cannot resolve RINGBID_HOME");
	setenv("RINGBID_HOME", home, 1);
	if (cli_exe_dir(bindir, sizeof bindir) < 0)
		return cli_fail("cannot find the directory of the ringbid executable");
	for (size_t i = 0; i < NSERVICES; i++) {
		char bin[PATH_MAX];

		if ((size_t)snprintf(bin, sizeof bin, "%s/ringbid-%s", bindir, services[i].name) >=
		            sizeof bin ||
		    access(bin, X_OK) != 0)
			return cli_fail("%s is missing: build it ('make')", bin);
	}
	const char *subdirs[] = {"", "log", "run"};

	for (size_t i = 0; i < 3; i++) {
		if (path_fmt(dir, sizeof dir, home, subdirs[i]) < 0 || cli_mkdirs(dir, 0755) < 0)
			return cli_fail("cannot create %s: %s", dir, strerror(errno));
	}
	rc = rb_config_load_home();
	if (rc < 0)
		return cli_fail("cannot read %s/env: %s", home, rb_err_str(rc));
	printf("ringbid home: %s\n", home);

	if ((rc = choose_port_base(&base)) != 0)
		return rc;
	snprintf(portbase, sizeof portbase, "%d", base);
	setenv("RINGBID_PORT_BASE", portbase, 1);
	kv[nkv++] = (cli_env_kv){"RINGBID_PORT_BASE", portbase};

	if (rb_config_int("RINGBID_PRESENCE_INSTANCES", 1, 1, PRESENCE_INSTANCES_MAX, &instances) <
	    0)
		return cli_fail("RINGBID_PRESENCE_INSTANCES must be a number from 1 to %d",
		                PRESENCE_INSTANCES_MAX);
	// The broker reads the count too: with one instance it knows where every agent is.
	snprintf(instances_text, sizeof instances_text, "%lld", instances);
	setenv("RINGBID_PRESENCE_INSTANCES", instances_text, 1);
	kv[nkv++] = (cli_env_kv){"RINGBID_PRESENCE_INSTANCES", instances_text};
	if (instances > 1) {
		// Clients are spread over the instances by whoever runs them: each instance
		// holds the sessions of the agents that connect to it.
		size_t len;

		rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, urls, sizeof urls);
		len = strlen(urls);
		for (long long i = 1; i < instances && len < sizeof urls; i++)
			len += (size_t)snprintf(urls + len, sizeof urls - len,
			                        ",tcp://127.0.0.1:%lld",
			                        base + PRESENCE_AGENT_PORT_OFF + i);
		kv[nkv++] = (cli_env_kv){"RINGBID_PRESENCE_URLS", urls};
		// The broker has one socket per instance (a plain pair each), so each instance
		// meets it at an address of its own.
		rb_config_url("RINGBID_BROKER_PRESENCE_URL", RB_PORT_BROKER_PRESENCE, broker_urls,
		              sizeof broker_urls);
		len = strlen(broker_urls);
		for (long long i = 1; i < instances && len < sizeof broker_urls; i++)
			len += (size_t)snprintf(broker_urls + len, sizeof broker_urls - len,
			                        ",tcp://127.0.0.1:%lld",
			                        base + PRESENCE_BROKER_PORT_OFF + i);
		setenv("RINGBID_BROKER_PRESENCE_URLS", broker_urls, 1);
		kv[nkv++] = (cli_env_kv){"RINGBID_BROKER_PRESENCE_URLS", broker_urls};
	}

	token_file = !getenv("RINGBID_SERVICE_TOKEN") && getenv("RINGBID_SERVICE_TOKEN_FILE");
	if (getenv("RINGBID_SERVICE_TOKEN") && *getenv("RINGBID_SERVICE_TOKEN")) {
		snprintf(token, sizeof token, "%s", getenv("RINGBID_SERVICE_TOKEN"));
	} else if (!token_file) {
		unsigned char rnd[32];

		randombytes_buf(rnd, sizeof rnd);
		sodium_bin2hex(token, sizeof token, rnd, sizeof rnd);
		setenv("RINGBID_SERVICE_TOKEN", token, 1);
	}
	if (!token_file)
		kv[nkv++] = (cli_env_kv){"RINGBID_SERVICE_TOKEN", token};

	if (!no_db && !external) {
		pg p;

		memset(&p, 0, sizeof p);

		if ((rc = pg_init(&p, home)) != 0 ||
		    (rc = pg_start(&p, pg_port_from_caller, &port)) != 0 ||
		    (rc = pg_secure(&p, port)) != 0 || (rc = pg_create_db(&p, port)) != 0)
			return rc;
		if (db_url(url, sizeof url, home, owner_login.user, port) < 0)
			return cli_fail("RINGBID_HOME is too long for a database URL");
		snprintf(pgport, sizeof pgport, "%d", port);
		setenv(owner_login.url_env, url, 1);
		setenv("RINGBID_PG_PORT", pgport, 1);
		kv[nkv++] = (cli_env_kv){owner_login.url_env, url};
		kv[nkv++] = (cli_env_kv){"RINGBID_PG_PORT", pgport};
		for (size_t i = 0; i < NLOGINS; i++) {
			const db_login *l = &service_logins[i];

			if (db_url(svc_urls[i], sizeof svc_urls[i], home, l->user, port) < 0)
				return cli_fail("RINGBID_HOME is too long for a database URL");
			setenv(l->url_env, svc_urls[i], 1);
			kv[nkv++] = (cli_env_kv){l->url_env, svc_urls[i]};
		}
	} else {
		if (getenv("RINGBID_DATABASE_URL") && *getenv("RINGBID_DATABASE_URL")) {
			snprintf(url, sizeof url, "%s", getenv("RINGBID_DATABASE_URL"));
			kv[nkv++] = (cli_env_kv){"RINGBID_DATABASE_URL", url};
		}
		// An outside database's logins are the administrator's: each service's URL is kept
		// as given, and a service without one shares the URL above.
		for (size_t i = 0; i < NLOGINS; i++) {
			const char *u = getenv(service_logins[i].url_env);

			if (!u || !*u)
				continue;
			if (strlen(u) >= sizeof svc_urls[i])
				return cli_fail("%s is too long", service_logins[i].url_env);
			snprintf(svc_urls[i], sizeof svc_urls[i], "%s", u);
			kv[nkv++] = (cli_env_kv){service_logins[i].url_env, svc_urls[i]};
		}
	}
	if (path_fmt(envpath, sizeof envpath, home, "env") < 0 ||
	    (rc = cli_env_write(envpath, kv, nkv)) < 0)
		return cli_fail("cannot write %s/env: %s", home, rb_err_str(rc));
	explicit_bzero(token, sizeof token);

	if (!no_db) {
		PGconn *conn;

		if (cli_migrations_dir(migrations, sizeof migrations) < 0)
			return cli_fail("the migrations directory path is too long");
		if (cli_db_connect(&conn) < 0)
			return CLI_EXIT_ERR;
		rc = cli_db_migrate(conn, migrations, false);
		PQfinish(conn);
		if (rc < 0)
			return CLI_EXIT_ERR;
		if (!external && (rc = pg_logins(home, port)) != 0)
			return rc;
	}

	if ((rc = svc_plan(runs, (int)instances, bindir, home, &nruns)) != 0)
		return rc;
	for (size_t i = 0; i < nruns; i++) {
		if ((rc = svc_start(&runs[i])) != 0)
			return rc;
	}
	if ((rc = wait_ready(runs, nruns)) != 0)
		return rc;
	char shown[256];

	rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, shown, sizeof shown);
	printf("ringbid is up: calls at %s", shown);
	rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, shown, sizeof shown);
	printf(", agents at %s\n", shown);
	if (instances > 1)
		printf("%lld presence instances, agents at %s\n", instances, urls);
	printf("settings in %s, logs in %s/log/; stop with 'ringbid down'\n", envpath, home);
	return CLI_EXIT_OK;
}

// ---------------------------------------------------------------------------------------------
// ringbid down

static const char down_usage[] =
        "usage: ringbid down [--keep-db]\n"
        "\n"
        "Stops the services started by 'ringbid up' (SIGTERM, then SIGKILL after 10 s) and the\n"
        "private PostgreSQL.\n"
        "\n"
        "options:\n"
        "  --keep-db    stop only the services\n";

int cli_cmd_down(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "keep-db"}};
	const char *pos[1];
	size_t npos, nstopping = 0, nruns = 0;
	char err[256], home[PATH_MAX], bindir[PATH_MAX];
	svc_run runs[NRUNS_MAX];
	bool stopping[NRUNS_MAX] = {false};
	int rc = cli_args_parse(argc, argv, opts, 1, pos, 0, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(down_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("down", "%s", err);
	if (cli_home_abs(home, sizeof home) < 0)
		return cli_fail("cannot resolve RINGBID_HOME");
	if (cli_exe_dir(bindir, sizeof bindir) < 0)
		return cli_fail("cannot find the directory of the ringbid executable");

	// Every presence instance that may run: one left from a larger stack has its pid file.
	if ((rc = svc_plan(runs, PRESENCE_INSTANCES_MAX, bindir, home, &nruns)) != 0)
		return rc;
	// Reverse start order: the broker stops taking calls first.
	for (size_t k = 0; k < nruns; k++) {
		size_t i = nruns - 1 - k;
		svc_run *s = &runs[i];

		s->pid = read_pid(s->pidfile);
		if (s->pid && pid_runs(s->pid, strrchr(s->bin, '/') + 1) &&
		    kill(s->pid, SIGTERM) == 0) {
			stopping[i] = true;
			nstopping++;
		} else {
			unlink(s->pidfile);
		}
	}
	long long stop_ms = STOP_TIMEOUT_MS;

	if (rb_config_ms("RINGBID_STOP_TIMEOUT_MS", STOP_TIMEOUT_MS, 1000, 600000, &stop_ms) != 0)
		stop_ms = STOP_TIMEOUT_MS;
	const int64_t deadline = mono_ms() + stop_ms;

	while (nstopping > 0) {
		bool late = mono_ms() >= deadline;

		for (size_t k = 0; k < nruns; k++) {
			size_t i = nruns - 1 - k;
			svc_run *s = &runs[i];

			if (!stopping[i])
				continue;
			if (!pid_runs(s->pid, strrchr(s->bin, '/') + 1)) {
				printf("%-8s stopped (pid %ld)\n", s->name, (long)s->pid);
			} else if (late) {
				kill(s->pid, SIGKILL);
				printf("%-8s killed (pid %ld): it did not stop within %lld s\n",
				       s->name, (long)s->pid, stop_ms / 1000);
			} else {
				continue;
			}
			unlink(s->pidfile);
			stopping[i] = false;
			nstopping--;
		}
		if (nstopping > 0)
			sleep_ms(100);
	}
	fflush(stdout);
	if (!cli_opt_has(opts, 1, "keep-db")) {
		pg p;

		memset(&p, 0, sizeof p);
		char pgdir[PATH_MAX];
		struct stat st;

		if (path_fmt(pgdir, sizeof pgdir, home, "pg") == 0 && stat(pgdir, &st) == 0 &&
		    pg_setup(&p, home) == 0 && (rc = pg_stop(&p)) != 0)
			return rc;
	}
	printf("ringbid is down (%s)\n", home);
	return CLI_EXIT_OK;
}
