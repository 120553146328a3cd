// Tests for rb_db against a throwaway PostgreSQL 15 cluster that the test starts and stops:
// parameters, SQLSTATEs, queue order, LISTEN/NOTIFY, reconnect after a restart, and closing.
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <uv.h>

#include "rb_db.h"
#include "rb_pgdir.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"

#define PG_BIN "/usr/lib/postgresql/15/bin"

static char cluster[PATH_MAX]; // "" when no cluster could be started: the tests skip
static char conninfo[256];
static int pg_port;

// Runs a PostgreSQL tool as the postgres user when we are root (PostgreSQL refuses root).
static int pg_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int pg_run(const char *fmt, ...)
{
	char cmd[2048];
	char full[2200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (geteuid() == 0)
		snprintf(full, sizeof(full), "runuser -u postgres -- %s", cmd);
	else
		snprintf(full, sizeof(full), "%s", cmd);
	return system(full);
}

static int free_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port = -1;

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static int pg_start(void)
{
	return pg_run(PG_BIN "/pg_ctl -D %s/data -l %s/log -w -t 60 -o '-p %d -k %s "
	                     "-c listen_addresses=127.0.0.1 -c fsync=off' start >/dev/null",
	              cluster, cluster, pg_port, cluster);
}

static int pg_stop(const char *mode)
{
	return pg_run(PG_BIN "/pg_ctl -D %s/data -w -t 60 -m %s stop >/dev/null", cluster, mode);
}

static int group_setup(void **state)
{
	char cmd[PATH_MAX + 64];
	char base[PATH_MAX - 64]; // room for the suffixes added below

	(void)state;
	rb_log_init("db-test");
	if (access(PG_BIN "/initdb", X_OK) != 0) {
		fprintf(stderr, "rb_db_test: no PostgreSQL 15 at " PG_BIN ": skipping\n");
		return 0;
	}
	if (getcwd(base, sizeof(base) - 8) == NULL)
		return -1;
	// Under build/ when run from the repository, so `make clean` removes leftovers.
	if (access("build", W_OK) == 0)
		strcat(base, "/build");
	snprintf(cluster, sizeof(cluster), "%s/rb_db_test.XXXXXX", base);
	if (mkdtemp(cluster) == NULL)
		return -1;
	if (geteuid() == 0) {
		if (rb_pgdir_grant(cluster) != 0)
			return -1;
		snprintf(cmd, sizeof(cmd), "chown postgres: '%s'", cluster);
		if (system(cmd) != 0)
			return -1;
	}
	pg_port = free_port();
	if (pg_port < 0)
		return -1;
	if (pg_run(PG_BIN "/initdb -D %s/data -A trust -U ringbid --no-sync -E UTF8 "
	                  "--locale=C >%s/initdb.log 2>&1",
	           cluster, cluster) != 0) {
		fprintf(stderr, "rb_db_test: initdb failed (see %s/initdb.log)\n", cluster);
		return -1;
	}
	if (pg_start() != 0) {
		fprintf(stderr, "rb_db_test: cannot start PostgreSQL (see %s/log)\n", cluster);
		return -1;
	}
	snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=ringbid dbname=postgres",
	         pg_port);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[PATH_MAX + 32];

	(void)state;
	if (cluster[0] == '\0')
		return 0;
	pg_stop("immediate");
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", cluster);
	return system(cmd) == 0 ? 0 : -1;
}

#define NEED_CLUSTER()                                                                             \
	do {                                                                                       \
		if (cluster[0] == '\0')                                                            \
			skip();                                                                    \
	} while (0)

// A loop that wakes often, so a test can wait for a condition with a deadline.
typedef struct {
	uv_loop_t loop;
	uv_timer_t tick;
} test_loop;

static void tick_cb(uv_timer_t *t)
{
	(void)t;
}

static void loop_init(test_loop *tl)
{
	assert_int_equal(uv_loop_init(&tl->loop), 0);
	assert_int_equal(uv_timer_init(&tl->loop, &tl->tick), 0);
	assert_int_equal(uv_timer_start(&tl->tick, tick_cb, 20, 20), 0);
}

static bool run_until(test_loop *tl, const bool *flag, int timeout_ms)
{
	uint64_t end = rb_mono_us() + (uint64_t)timeout_ms * 1000;

	while (!*flag && rb_mono_us() < end)
		uv_run(&tl->loop, UV_RUN_ONCE);
	return *flag;
}

static void loop_fini(test_loop *tl)
{
	uv_close((uv_handle_t *)&tl->tick, NULL);
	// Every handle rb_db made must close once it is freed.
	assert_int_equal(uv_run(&tl->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&tl->loop), 0);
}

// One query's outcome.
typedef struct {
	bool done;
	int calls;
	int err;
	char sqlstate[8];
	char value[256];
	bool is_null;
	int order; // when it completed, counting from 1
} outcome;

static int completed;

static void on_result(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	outcome *o = arg;

	(void)db;
	o->calls++;
	o->done = true;
	o->err = err;
	o->order = ++completed;
	snprintf(o->sqlstate, sizeof(o->sqlstate), "%s", sqlstate);
	if (err == 0 && res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK &&
	    PQntuples(res) > 0) {
		o->is_null = PQgetisnull(res, 0, 0);
		snprintf(o->value, sizeof(o->value), "%s", PQgetvalue(res, 0, 0));
	}
}

typedef struct {
	int ups;
	bool up;
} up_state;

static void on_up(rb_db *db, void *arg)
{
	up_state *u = arg;

	(void)db;
	u->ups++;
	u->up = true;
}

typedef struct {
	int count;
	bool got;
	char channel[64];
	char payload[128];
} notify_state;

static void on_notify(rb_db *db, const char *channel, const char *payload, void *arg)
{
	notify_state *n = arg;

	(void)db;
	n->count++;
	n->got = true;
	snprintf(n->channel, sizeof(n->channel), "%s", channel);
	snprintf(n->payload, sizeof(n->payload), "%s", payload);
}

static void test_bad_conninfo(void **state)
{
	uv_loop_t loop;
	rb_db *db = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(rb_db_new(&loop, "host=localhost nonsense_keyword=1", &db), RB_ECONFIG);
	assert_int_equal(rb_db_new(&loop, "this is not conninfo", &db), RB_ECONFIG);
	assert_null(db);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_unreachable_then_free(void **state)
{
	test_loop tl;
	rb_db *db;
	outcome o = {0};
	char ci[128];
	bool never = false;

	(void)state;
	loop_init(&tl);
	// Nothing listens on a port we just found free.
	snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d user=ringbid dbname=postgres",
	         free_port());
	assert_int_equal(rb_db_new(&tl.loop, ci, &db), 0);
	assert_int_equal(rb_db_query(db, "SELECT 1", 0, NULL, on_result, &o), 0);
	assert_int_equal(rb_db_pending(db), 1);
	run_until(&tl, &never, 400); // a few failed attempts with backoff
	assert_false(rb_db_connected(db));
	assert_false(o.done); // queued, waiting for the database
	rb_db_free(db);
	assert_true(o.done);
	assert_int_equal(o.calls, 1);
	assert_int_equal(o.err, RB_ECLOSED);
	loop_fini(&tl);
}

static void test_params_and_errors(void **state)
{
	test_loop tl;
	rb_db *db;
	up_state up = {0};
	outcome sum = {0}, null = {0}, div = {0}, syntax = {0}, after = {0}, cmd = {0};
	const char *p2[] = {"40", "2"};
	const char *pnull[] = {NULL};
	const char *ptext[] = {"it's \"quoted\"; DROP TABLE x; --"};

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	completed = 0;
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &db), 0);
	rb_db_on_up(db, on_up, &up);
	assert_true(run_until(&tl, &up.up, 10000));
	assert_true(rb_db_connected(db));
	assert_int_equal(up.ups, 1);

	assert_int_equal(rb_db_query(db, "SELECT $1::int + $2::int", 2, p2, on_result, &sum), 0);
	assert_int_equal(rb_db_query(db, "SELECT $1::text IS NULL", 1, pnull, on_result, &null), 0);
	assert_int_equal(rb_db_query(db, "SELECT 1/0", 0, NULL, on_result, &div), 0);
	assert_int_equal(rb_db_query(db, "SELEC nonsense", 0, NULL, on_result, &syntax), 0);
	assert_int_equal(rb_db_query(db, "SELECT $1::text", 1, ptext, on_result, &after), 0);
	assert_int_equal(rb_db_query(db, "CREATE TEMP TABLE t (x int)", 0, NULL, on_result, &cmd),
	                 0);
	assert_int_equal(rb_db_pending(db), 6);
	assert_false(sum.done); // never inside rb_db_query
	assert_true(run_until(&tl, &cmd.done, 10000));
	assert_int_equal(rb_db_pending(db), 0);

	assert_int_equal(sum.err, 0);
	assert_string_equal(sum.value, "42");
	assert_int_equal(null.err, 0);
	assert_string_equal(null.value, "t");
	assert_int_equal(div.err, RB_EDB);
	assert_string_equal(div.sqlstate, "22012");
	assert_int_equal(syntax.err, RB_EDB);
	assert_string_equal(syntax.sqlstate, "42601");
	// An error does not spoil the connection for the next query.
	assert_int_equal(after.err, 0);
	assert_string_equal(after.value, ptext[0]);
	assert_string_equal(after.sqlstate, "");
	assert_int_equal(cmd.err, 0);
	// In order, each exactly once.
	assert_int_equal(sum.order, 1);
	assert_int_equal(null.order, 2);
	assert_int_equal(div.order, 3);
	assert_int_equal(syntax.order, 4);
	assert_int_equal(after.order, 5);
	assert_int_equal(cmd.order, 6);
	assert_int_equal(sum.calls + null.calls + div.calls + syntax.calls + after.calls, 5);

	assert_int_equal(rb_db_query(db, NULL, 0, NULL, on_result, &sum), RB_EINVAL);
	assert_int_equal(rb_db_query(db, "SELECT 1", 1, NULL, on_result, &sum), RB_EINVAL);
	assert_int_equal(rb_db_query(db, "SELECT 1", 0, NULL, NULL, NULL), RB_EINVAL);
	rb_db_free(db);
	loop_fini(&tl);
}

#define MANY 200

static void test_fifo_before_connect(void **state)
{
	test_loop tl;
	rb_db *db;
	static outcome o[MANY];
	char num[MANY][12];
	const char *params[MANY][1];

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	completed = 0;
	memset(o, 0, sizeof(o));
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &db), 0);
	// Queued before the connection is up: they run once it is, in order.
	for (int i = 0; i < MANY; i++) {
		snprintf(num[i], sizeof(num[i]), "%d", i);
		params[i][0] = num[i];
		assert_int_equal(
		        rb_db_query(db, "SELECT $1::int * 2", 1, params[i], on_result, &o[i]), 0);
	}
	assert_true(run_until(&tl, &o[MANY - 1].done, 20000));
	for (int i = 0; i < MANY; i++) {
		char want[16];

		snprintf(want, sizeof(want), "%d", i * 2);
		assert_int_equal(o[i].err, 0);
		assert_string_equal(o[i].value, want);
		assert_int_equal(o[i].order, i + 1);
		assert_int_equal(o[i].calls, 1);
	}
	rb_db_free(db);
	loop_fini(&tl);
}

static void test_big_query(void **state)
{
	test_loop tl;
	rb_db *db;
	outcome o = {0};
	size_t len = 4 * 1024 * 1024; // far more than a socket buffer: PQflush must repeat
	char *big = malloc(len + 1);
	const char *params[1] = {big};

	(void)state;
	NEED_CLUSTER();
	assert_non_null(big);
	for (size_t i = 0; i < len; i++)
		big[i] = (char)('a' + i % 26);
	big[len] = '\0';
	loop_init(&tl);
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &db), 0);
	assert_int_equal(rb_db_query(db, "SELECT length($1::text)", 1, params, on_result, &o), 0);
	free(big); // the parameters were copied
	assert_true(run_until(&tl, &o.done, 20000));
	assert_int_equal(o.err, 0);
	assert_string_equal(o.value, "4194304");
	rb_db_free(db);
	loop_fini(&tl);
}

static void test_listen_notify(void **state)
{
	test_loop tl;
	rb_db *db;
	notify_state n = {0};
	outcome o = {0}, o2 = {0};
	const char *params[] = {"ringbid_roster", "agent:7"};

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &db), 0);
	rb_db_on_notify(db, on_notify, &n);
	assert_int_equal(rb_db_listen(db, "ringbid_roster"), 0);
	assert_int_equal(rb_db_listen(db, "ringbid_roster"), 0); // once is enough
	assert_int_equal(rb_db_listen(db, "bad channel"), RB_EINVAL);
	assert_int_equal(rb_db_listen(db, ""), RB_EINVAL);
	assert_int_equal(rb_db_pending(db), 0); // LISTEN is rb_db's own business
	assert_int_equal(rb_db_query(db, "SELECT pg_notify($1, $2)", 2, params, on_result, &o), 0);
	assert_true(run_until(&tl, &n.got, 10000));
	assert_int_equal(o.err, 0);
	assert_string_equal(n.channel, "ringbid_roster");
	assert_string_equal(n.payload, "agent:7");

	// A channel added once connected is listened to at once.
	n.got = false;
	assert_int_equal(rb_db_listen(db, "other_channel"), 0);
	assert_int_equal(
	        rb_db_query(db, "NOTIFY other_channel, 'program:sales'", 0, NULL, on_result, &o2),
	        0);
	assert_true(run_until(&tl, &n.got, 10000));
	assert_string_equal(n.channel, "other_channel");
	assert_string_equal(n.payload, "program:sales");
	assert_int_equal(n.count, 2);
	rb_db_free(db);
	loop_fini(&tl);
}

static void test_reconnect(void **state)
{
	test_loop tl;
	rb_db *db;
	up_state up = {0};
	notify_state n = {0};
	outcome slow = {0}, queued = {0}, notify = {0};
	const char *params[] = {"ringbid_roster", "program:support"};
	bool never = false;

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &db), 0);
	rb_db_on_up(db, on_up, &up);
	rb_db_on_notify(db, on_notify, &n);
	assert_int_equal(rb_db_listen(db, "ringbid_roster"), 0);
	assert_true(run_until(&tl, &up.up, 10000));

	// A query is running when the server goes away: it fails with RB_EDB.
	assert_int_equal(rb_db_query(db, "SELECT pg_sleep(30)", 0, NULL, on_result, &slow), 0);
	run_until(&tl, &never, 300);
	assert_false(slow.done);
	assert_int_equal(pg_stop("fast"), 0);
	assert_true(run_until(&tl, &slow.done, 10000));
	assert_int_equal(slow.err, RB_EDB);
	// The server said why before it closed the connection.
	assert_string_equal(slow.sqlstate, "57P01");
	assert_int_equal(slow.calls, 1);
	assert_false(rb_db_connected(db));

	// Queued while the database is down; runs after it comes back.
	up.up = false;
	assert_int_equal(rb_db_query(db, "SELECT 'back'", 0, NULL, on_result, &queued), 0);
	run_until(&tl, &never, 500);
	assert_false(queued.done);
	assert_int_equal(pg_start(), 0);
	assert_true(run_until(&tl, &queued.done, 20000));
	assert_int_equal(queued.err, 0);
	assert_string_equal(queued.value, "back");
	assert_true(up.up);
	assert_int_equal(up.ups, 2);
	assert_true(rb_db_connected(db));

	// LISTEN was issued again on the new connection.
	assert_int_equal(rb_db_query(db, "SELECT pg_notify($1, $2)", 2, params, on_result, &notify),
	                 0);
	assert_true(run_until(&tl, &n.got, 10000));
	assert_string_equal(n.payload, "program:support");
	rb_db_free(db);
	loop_fini(&tl);
}

static void test_host_name(void **state)
{
	test_loop tl;
	rb_db *db;
	outcome o = {0};
	char ci[128];

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	// A name: looked up on the thread pool, then every address tried in turn.
	snprintf(ci, sizeof(ci), "postgresql://ringbid@localhost:%d/postgres", pg_port);
	assert_int_equal(rb_db_new(&tl.loop, ci, &db), 0);
	assert_int_equal(rb_db_query(db, "SELECT inet_server_addr()", 0, NULL, on_result, &o), 0);
	assert_true(run_until(&tl, &o.done, 10000));
	assert_int_equal(o.err, 0);
	assert_string_equal(o.value, "127.0.0.1"); // the server listens on IPv4 only
	rb_db_free(db);
	loop_fini(&tl);
}

static void test_unknown_host(void **state)
{
	test_loop tl;
	rb_db *db;
	outcome o = {0};
	bool never = false;

	(void)state;
	loop_init(&tl);
	assert_int_equal(rb_db_new(&tl.loop, "host=no-such-host.invalid dbname=x", &db), 0);
	assert_int_equal(rb_db_query(db, "SELECT 1", 0, NULL, on_result, &o), 0);
	run_until(&tl, &never, 300);
	assert_false(rb_db_connected(db));
	assert_false(o.done);
	rb_db_free(db);
	assert_int_equal(o.err, RB_ECLOSED);

	// Freed while the lookup is still out: the loop still winds down cleanly.
	assert_int_equal(rb_db_new(&tl.loop, "host=no-such-host.invalid dbname=x", &db), 0);
	rb_db_free(db);
	loop_fini(&tl);
}

typedef struct {
	rb_db *db;
	int calls;
	int errs[4];
	bool all;
} free_state;

static void free_in_callback(rb_db *db, int err, const PGresult *res, const char *sqlstate,
                             void *arg)
{
	free_state *f = arg;

	(void)res;
	(void)sqlstate;
	f->errs[f->calls++] = err;
	f->all = f->calls == 3;
	if (f->calls == 1) {
		rb_db_free(db);
		// Freed: new queries are refused without a callback.
		assert_int_equal(rb_db_query(db, "SELECT 1", 0, NULL, free_in_callback, f),
		                 RB_ECLOSED);
	}
}

static void test_free_in_callback(void **state)
{
	test_loop tl;
	free_state f = {0};

	(void)state;
	NEED_CLUSTER();
	loop_init(&tl);
	assert_int_equal(rb_db_new(&tl.loop, conninfo, &f.db), 0);
	assert_int_equal(rb_db_query(f.db, "SELECT 1", 0, NULL, free_in_callback, &f), 0);
	assert_int_equal(rb_db_query(f.db, "SELECT 2", 0, NULL, free_in_callback, &f), 0);
	assert_int_equal(rb_db_query(f.db, "SELECT 3", 0, NULL, free_in_callback, &f), 0);
	assert_true(run_until(&tl, &f.all, 10000));
	assert_int_equal(f.calls, 3);
	assert_int_equal(f.errs[0], 0);
	assert_int_equal(f.errs[1], RB_ECLOSED);
	assert_int_equal(f.errs[2], RB_ECLOSED);
	loop_fini(&tl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_bad_conninfo),
	        cmocka_unit_test(test_unreachable_then_free),
	        cmocka_unit_test(test_params_and_errors),
	        cmocka_unit_test(test_fifo_before_connect),
	        cmocka_unit_test(test_big_query),
	        cmocka_unit_test(test_listen_notify),
	        cmocka_unit_test(test_free_in_callback),
	        cmocka_unit_test(test_host_name),
	        cmocka_unit_test(test_unknown_host),
	        cmocka_unit_test(test_reconnect),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
