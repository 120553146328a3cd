// Non-blocking libpq on a libuv loop: one connection, a FIFO of queries, LISTEN and reconnect.
#include "rb_db.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
// libpq ignores connect_timeout under PQconnectPoll, so the timer enforces one.
#define CONNECT_TIMEOUT_MS 10000
// Callers queue while the database is away; past this the queue is refused, not grown.
#define QUEUE_MAX   100000
#define CHANNEL_MAX 63 // NAMEDATALEN - 1
#define PARAMS_MAX  65535
// Addresses of one host name handed to libpq, which tries them in turn.
#define ADDRS_MAX 8

typedef enum {
	DB_WAITING,    // not connected; the timer starts the next attempt
	DB_RESOLVING,  // looking the host name up on the thread pool, under the connect timeout
	DB_CONNECTING, // PQconnectPoll in progress, under the connect timeout
	DB_READY,      // connected: queries run one at a time
	DB_CLOSED,     // rb_db_free was called; handles are closing
} db_state;

typedef struct db_query db_query;
struct db_query {
	db_query *next;
	rb_db_fn fn; // NULL for rb_db's own LISTEN statements
	void *arg;
	int nparams;
	char *sql;
	char **params;
};

typedef struct db_poll {
	uv_poll_t handle;
	rb_db *db;
} db_poll;

struct rb_db {
	uv_loop_t *loop;
	db_state state;
	char *conninfo;
	PGconn *conn;

	// libpq resolves host names with a blocking getaddrinfo inside PQconnectPoll; so a name
	// is looked up here with uv_getaddrinfo and libpq is given the addresses (hostaddr).
	char *resolve_host; // NULL: nothing to look up (IP address, socket directory, host list)
	char *addr_hosts;   // "name,name,..." matching addr_list, for libpq
	char *addr_list;    // "10.0.0.5,fd00::5"
	uv_getaddrinfo_t gai;
	bool gai_busy;

	db_poll *poll; // watches PQsocket; remade whenever the socket changes
	int poll_fd;
	ino_t poll_ino;
	int poll_events;
	uv_timer_t timer; // WAITING: backoff; RESOLVING, CONNECTING: timeout; READY: deferred start
	int open_handles; // handles and requests out; the memory goes when the last one is back

	db_query *head, *tail; // head is the running query while running is set
	int queued;            // every entry of the FIFO
	int pending;           // the callers' entries (not LISTEN)
	bool running;
	PGresult *result; // the running query's result, delivered once libpq has no more

	char **channels;
	int nchannels;

	int backoff_ms;
	bool ever_up;
	bool down_logged;
	uint64_t down_since_us;

	rb_db_notify_fn notify_fn;
	void *notify_arg;
	rb_db_up_fn up_fn;
	void *up_arg;
};

static void db_set_state(rb_db *db, db_state next);
static void db_poll_cb(uv_poll_t *h, int status, int events);
static void db_kick(rb_db *db);

static void db_release(rb_db *db)
{
	if (--db->open_handles > 0)
		return;
	free(db->resolve_host);
	free(db->addr_hosts);
	free(db->addr_list);
	for (int i = 0; i < db->nchannels; i++)
		free(db->channels[i]);
	free(db->channels);
	free(db->conninfo);
	free(db);
}

static void poll_closed(uv_handle_t *h)
{
	db_poll *p = h->data;
	rb_db *db = p->db;

	free(p);
	db_release(db);
}

static void timer_closed(uv_handle_t *h)
{
	db_release(h->data);
}

static void poll_stop(rb_db *db)
{
	if (db->poll == NULL)
		return;
	uv_close((uv_handle_t *)&db->poll->handle, poll_closed);
	db->poll = NULL;
	db->poll_fd = -1;
	db->poll_events = 0;
}

// Watches libpq's socket. libpq may close its socket and open another during connect (next
// host, SSL fallback), possibly under the same number: the inode tells them apart, and a new
// socket gets a new poll handle because uv_poll cannot follow a replaced descriptor.
static int poll_watch(rb_db *db, int events)
{
	int fd = PQsocket(db->conn);
	struct stat st;
	int rv;

	if (fd < 0)
		return RB_ECLOSED;
	// Once connected the socket stays the same: spare the fstat on every query.
	if (db->state == DB_READY && db->poll != NULL) {
		if (db->poll_events == events)
			return 0;
		rv = uv_poll_start(&db->poll->handle, events, db_poll_cb);
		if (rv != 0)
			return rb_err_from_errno(-rv);
		db->poll_events = events;
		return 0;
	}
	if (fstat(fd, &st) != 0)
		return RB_ECLOSED;
	if (db->poll != NULL && (db->poll_fd != fd || db->poll_ino != st.st_ino))
		poll_stop(db);
	if (db->poll == NULL) {
		db_poll *p = calloc(1, sizeof(*p));

		if (p == NULL)
			return RB_ENOMEM;
		rv = uv_poll_init_socket(db->loop, &p->handle, fd);
		if (rv != 0) {
			free(p);
			return rb_err_from_errno(-rv);
		}
		p->db = db;
		p->handle.data = p;
		db->open_handles++;
		db->poll = p;
		db->poll_fd = fd;
		db->poll_ino = st.st_ino;
		db->poll_events = 0;
	}
	if (db->poll_events == events)
		return 0;
	rv = uv_poll_start(&db->poll->handle, events, db_poll_cb);
	if (rv != 0)
		return rb_err_from_errno(-rv);
	db->poll_events = events;
	return 0;
}

static void query_free(db_query *q)
{
	if (q == NULL)
		return;
	if (q->params != NULL) {
		for (int i = 0; i < q->nparams; i++)
			free(q->params[i]);
	}
	free(q->params);
	free(q->sql);
	free(q);
}

static void query_link(rb_db *db, db_query *q, bool front)
{
	if (front) {
		q->next = db->head;
		db->head = q;
		if (db->tail == NULL)
			db->tail = q;
	} else {
		q->next = NULL;
		if (db->tail != NULL)
			db->tail->next = q;
		else
			db->head = q;
		db->tail = q;
	}
	db->queued++;
	if (q->fn != NULL)
		db->pending++;
}

static db_query *query_pop(rb_db *db)
{
	db_query *q = db->head;

	if (q == NULL)
		return NULL;
	db->head = q->next;
	if (db->head == NULL)
		db->tail = NULL;
	q->next = NULL;
	db->queued--;
	if (q->fn != NULL)
		db->pending--;
	return q;
}

// Calls q's callback (if it has one) and frees q. The callback may free db: callers check
// db->state afterwards.
static void query_finish(rb_db *db, db_query *q, int err, const PGresult *res)
{
	const char *sqlstate = NULL;

	if (res != NULL)
		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (sqlstate == NULL)
		sqlstate = "";
	if (q->fn != NULL) {
		q->fn(db, err, res, sqlstate, q->arg);
	} else if (err != 0 && err != RB_ECLOSED && res != NULL) {
		rb_error("database: %s failed: %s", q->sql, PQresultErrorMessage(res));
	}
	query_free(q);
}

static void notice_cb(void *arg, const char *message)
{
	size_t len = strlen(message);

	(void)arg;
	// libpq's notices end in a newline; the log line brings its own.
	while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == '\r'))
		len--;
	rb_logf(RB_LOG_INFO, NULL, 0, "database notice: %.*s", (int)len, message);
}

// Logs the start of an outage, once; why is libpq's own message unless given.
static void log_down_why(rb_db *db, const char *what, const char *why)
{
	char reason[512];
	size_t len;

	if (db->down_logged)
		return;
	db->down_logged = true;
	db->down_since_us = rb_mono_us();
	if (why == NULL)
		why = db->conn != NULL ? PQerrorMessage(db->conn) : "";
	snprintf(reason, sizeof(reason), "%s", why);
	// libpq's message spans lines; a log line should not.
	for (char *c = reason; *c != '\0'; c++) {
		if (*c == '\n' || *c == '\r' || *c == '\t')
			*c = ' ';
	}
	len = strlen(reason);
	while (len > 0 && reason[len - 1] == ' ')
		reason[--len] = '\0';
	rb_error("database %s: %s; reconnecting in the background", what,
	         reason[0] != '\0' ? reason : "no reason given");
}

static void log_down(rb_db *db, const char *what)
{
	log_down_why(db, what, NULL);
}

static void conn_drop(rb_db *db)
{
	// The poll handle goes first: libuv must stop watching before libpq closes the socket.
	poll_stop(db);
	if (db->result != NULL) {
		PQclear(db->result);
		db->result = NULL;
	}
	if (db->conn != NULL) {
		PQfinish(db->conn);
		db->conn = NULL;
	}
	db->running = false;
}

// The connection broke (or libpq was handed something it cannot do here). The running query
// fails with RB_EDB; queued ones wait for the next connection.
static void db_lost(rb_db *db, const char *what)
{
	db_query *q = NULL;
	PGresult *res = db->result;

	db->result = NULL;
	log_down(db, what);
	if (db->running) {
		q = query_pop(db);
		// libpq may still hold the server's last word (e.g. 57P01 on shutdown); take it
		// only if that cannot block.
		for (int i = 0; i < 4 && db->conn != NULL && !PQisBusy(db->conn); i++) {
			PGresult *r = PQgetResult(db->conn);

			if (r == NULL)
				break;
			if (res == NULL || (PQresultStatus(res) != PGRES_FATAL_ERROR &&
			                    PQresultStatus(r) == PGRES_FATAL_ERROR)) {
				PQclear(res);
				res = r;
			} else {
				PQclear(r);
			}
		}
	}
	// A result that arrived complete before the loss is not the failure's result.
	if (res != NULL && PQresultStatus(res) != PGRES_FATAL_ERROR) {
		PQclear(res);
		res = NULL;
	}
	db_set_state(db, DB_WAITING);
	if (q != NULL)
		query_finish(db, q, RB_EDB, res);
	PQclear(res);
}

static void timer_cb(uv_timer_t *t)
{
	rb_db *db = t->data;

	switch (db->state) {
	case DB_WAITING:
		db_set_state(db, db->resolve_host != NULL ? DB_RESOLVING : DB_CONNECTING);
		break;
	case DB_RESOLVING:
		// A lookup already running cannot be cancelled: its answer is dropped if it comes
		// while waiting, and used if it comes during the next attempt.
		uv_cancel((uv_req_t *)&db->gai);
		log_down_why(db, "connect timed out", "the host name lookup took too long");
		db_set_state(db, DB_WAITING);
		break;
	case DB_CONNECTING:
		log_down(db, "connect timed out");
		db_set_state(db, DB_WAITING);
		break;
	case DB_READY:
		db_kick(db);
		break;
	case DB_CLOSED:
		break;
	}
}

// Joins up to ADDRS_MAX distinct addresses into "a,b,c", and the host name as many times.
static int addrs_join(rb_db *db, const struct addrinfo *ai)
{
	char addrs[ADDRS_MAX][INET6_ADDRSTRLEN];
	size_t n = 0, alen = 0;
	size_t hlen = strlen(db->resolve_host);
	char *list, *hosts;

	for (; ai != NULL && n < ADDRS_MAX; ai = ai->ai_next) {
		const void *a;
		bool dup = false;

		if (ai->ai_family == AF_INET)
			a = &((const struct sockaddr_in *)(const void *)ai->ai_addr)->sin_addr;
		else if (ai->ai_family == AF_INET6)
			a = &((const struct sockaddr_in6 *)(const void *)ai->ai_addr)->sin6_addr;
		else
			continue;
		if (inet_ntop(ai->ai_family, a, addrs[n], sizeof(addrs[n])) == NULL)
			continue;
		for (size_t i = 0; i < n && !dup; i++)
			dup = strcmp(addrs[i], addrs[n]) == 0;
		if (!dup)
			alen += strlen(addrs[n++]) + 1;
	}
	if (n == 0)
		return RB_ENOTFOUND;
	list = malloc(alen);
	hosts = malloc((hlen + 1) * n);
	if (list == NULL || hosts == NULL) {
		free(list);
		free(hosts);
		return RB_ENOMEM;
	}
	list[0] = '\0';
	hosts[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i > 0) {
			strcat(list, ",");
			strcat(hosts, ",");
		}
		strcat(list, addrs[i]);
		strcat(hosts, db->resolve_host);
	}
	free(db->addr_list);
	free(db->addr_hosts);
	db->addr_list = list;
	db->addr_hosts = hosts;
	return 0;
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	rb_db *db = req->data;
	char why[256];
	int rv;

	db->gai_busy = false;
	if (db->state != DB_RESOLVING) {
		// Closed, or timed out and waiting: this answer is not wanted now.
		uv_freeaddrinfo(res);
		db_release(db);
		return;
	}
	db->open_handles--; // the timer still holds db
	rv = status == 0 ? addrs_join(db, res) : RB_ENOTFOUND;
	uv_freeaddrinfo(res);
	if (rv == 0) {
		rb_debug("database: %s is %s", db->resolve_host, db->addr_list);
		db_set_state(db, DB_CONNECTING);
		return;
	}
	snprintf(why, sizeof(why), "cannot look up %s: %s", db->resolve_host,
	         status != 0 ? uv_strerror(status) : rb_err_str(rv));
	log_down_why(db, db->ever_up ? "reconnect failed" : "connect failed", why);
	db_set_state(db, DB_WAITING);
}

static void resolve_start(rb_db *db)
{
	struct addrinfo hints;
	int rv;

	uv_timer_start(&db->timer, timer_cb, CONNECT_TIMEOUT_MS, 0);
	if (db->gai_busy)
		return; // an earlier lookup is still out: its answer will do
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	db->gai.data = db;
	rv = uv_getaddrinfo(db->loop, &db->gai, resolved, db->resolve_host, NULL, &hints);
	if (rv != 0) {
		log_down_why(db, db->ever_up ? "reconnect failed" : "connect failed",
		             uv_strerror(rv));
		db_set_state(db, DB_WAITING);
		return;
	}
	db->gai_busy = true;
	db->open_handles++;
}

static void conn_start(rb_db *db)
{
	// Defaults first, then the caller's conninfo, which overrides any of them; keepalives
	// notice a silently dead server in about a minute instead of two hours.
	// Looked-up addresses come after it, so they replace the conninfo's host name.
	static const char *const keys[] = {"keepalives_idle",  "keepalives_interval",
	                                   "keepalives_count", "fallback_application_name",
	                                   "dbname",           "host",
	                                   "hostaddr",         NULL};
	const char *vals[] = {"30",         "10",           "3",           "ringbid",
	                      db->conninfo, db->addr_hosts, db->addr_list, NULL};
	int rv;

	db->conn = PQconnectStartParams(keys, vals, 1);
	if (db->conn == NULL || PQstatus(db->conn) == CONNECTION_BAD) {
		log_down(db, "connect failed");
		db_set_state(db, DB_WAITING);
		return;
	}
	PQsetNoticeProcessor(db->conn, notice_cb, db);
	uv_timer_start(&db->timer, timer_cb, CONNECT_TIMEOUT_MS, 0);
	// libpq's rule: start as if PQconnectPoll had asked to write.
	rv = poll_watch(db, UV_WRITABLE);
	if (rv != 0) {
		log_down(db, "connect failed");
		db_set_state(db, DB_WAITING);
	}
}

// Puts a LISTEN for every channel at the front of the queue, replacing any from before, so
// no notification is missed by queries the on_up callback queues.
static void listen_requeue(rb_db *db)
{
	db_query **pp = &db->head;

	while (*pp != NULL) {
		db_query *q = *pp;

		if (q->fn == NULL) {
			*pp = q->next;
			db->queued--;
			query_free(q);
		} else {
			pp = &q->next;
		}
	}
	db->tail = NULL;
	for (db_query *q = db->head; q != NULL; q = q->next)
		db->tail = q;
	for (int i = db->nchannels - 1; i >= 0; i--) {
		db_query *q = calloc(1, sizeof(*q));
		size_t len = strlen(db->channels[i]) + 16;

		if (q != NULL)
			q->sql = malloc(len);
		if (q == NULL || q->sql == NULL) {
			free(q);
			rb_error("database: out of memory re-issuing LISTEN %s", db->channels[i]);
			continue;
		}
		snprintf(q->sql, len, "LISTEN \"%s\"", db->channels[i]);
		query_link(db, q, true);
	}
}

static void conn_ready(rb_db *db)
{
	uv_timer_stop(&db->timer);
	db->backoff_ms = BACKOFF_MIN_MS;
	if (PQsetnonblocking(db->conn, 1) != 0 || poll_watch(db, UV_READABLE) != 0) {
		db_lost(db, "connection unusable");
		return;
	}
	if (db->down_logged) {
		rb_info("database connection recovered after %llu ms",
		        (unsigned long long)((rb_mono_us() - db->down_since_us) / 1000));
		db->down_logged = false;
	} else if (!db->ever_up) {
		rb_info("database connected");
	}
	db->ever_up = true;
	listen_requeue(db);
	if (db->up_fn != NULL) {
		db->up_fn(db, db->up_arg);
		if (db->state != DB_READY)
			return;
	}
	db_kick(db);
}

static void fail_all(rb_db *db, int err)
{
	db_query *q;

	while ((q = query_pop(db)) != NULL)
		query_finish(db, q, err, NULL);
}

// The one place where the connection's state changes, with what each state needs on entry.
static void db_set_state(rb_db *db, db_state next)
{
	db->state = next;
	switch (next) {
	case DB_WAITING:
		conn_drop(db);
		uv_timer_start(&db->timer, timer_cb, (uint64_t)db->backoff_ms, 0);
		db->backoff_ms =
		        db->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : db->backoff_ms * 2;
		break;
	case DB_RESOLVING:
		resolve_start(db);
		break;
	case DB_CONNECTING:
		conn_start(db);
		break;
	case DB_READY:
		conn_ready(db);
		break;
	case DB_CLOSED:
		// A lookup in progress comes back (cancelled or not) to resolved(), which lets go.
		if (db->gai_busy)
			uv_cancel((uv_req_t *)&db->gai);
		conn_drop(db);
		uv_timer_stop(&db->timer);
		uv_close((uv_handle_t *)&db->timer, timer_closed);
		fail_all(db, RB_ECLOSED);
		break;
	}
}

static void connect_step(rb_db *db)
{
	int rv = 0;

	switch (PQconnectPoll(db->conn)) {
	case PGRES_POLLING_READING:
		rv = poll_watch(db, UV_READABLE);
		break;
	case PGRES_POLLING_WRITING:
		rv = poll_watch(db, UV_WRITABLE);
		break;
	case PGRES_POLLING_OK:
		db_set_state(db, DB_READY);
		return;
	default:
		rv = RB_EDB;
		break;
	}
	if (rv != 0) {
		log_down(db, db->ever_up ? "reconnect failed" : "connect failed");
		db_set_state(db, DB_WAITING);
	}
}

// Pushes the running query's bytes out; waits for writability while libpq still holds some.
static int db_flush(rb_db *db)
{
	int r = PQflush(db->conn);

	if (r < 0)
		return RB_EDB;
	return poll_watch(db, r > 0 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

// Sends the next queued query when the connection is idle.
static void db_kick(rb_db *db)
{
	while (db->state == DB_READY && !db->running && db->head != NULL) {
		db_query *q = db->head;

		if (PQsendQueryParams(db->conn, q->sql, q->nparams, NULL,
		                      (const char *const *)q->params, NULL, NULL, 0) == 0) {
			if (PQstatus(db->conn) == CONNECTION_BAD) {
				db_lost(db, "connection lost");
				return;
			}
			// Refused by libpq itself (e.g. out of memory): this query only.
			rb_warn("database: cannot send query: %s", PQerrorMessage(db->conn));
			query_finish(db, query_pop(db), RB_EDB, NULL);
			continue;
		}
		db->running = true;
		if (db_flush(db) != 0)
			db_lost(db, "connection lost");
	}
}

static void query_done(rb_db *db)
{
	db_query *q = query_pop(db);
	PGresult *res = db->result;
	ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	int err = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? 0 : RB_EDB;

	db->result = NULL;
	db->running = false;
	query_finish(db, q, err, res);
	PQclear(res);
}

// Takes what libpq has parsed: the running query's results, then the next query.
static void collect_results(rb_db *db)
{
	while (db->state == DB_READY && db->running && !PQisBusy(db->conn)) {
		PGresult *r = PQgetResult(db->conn);
		ExecStatusType st;

		if (r == NULL) {
			query_done(db);
			if (db->state != DB_READY)
				return;
			db_kick(db);
			continue;
		}
		st = PQresultStatus(r);
		if (st == PGRES_COPY_IN) {
			// COPY needs a data stream this interface has no way to supply: end it so
			// the server answers with an error for this query.
			PQclear(r);
			if (PQputCopyEnd(db->conn, "COPY is not supported here") < 0 ||
			    db_flush(db) != 0) {
				db_lost(db, "connection lost");
				return;
			}
			continue;
		}
		if (st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
			PQclear(r);
			rb_error("database: COPY TO is not supported here; resetting the "
			         "connection");
			db_lost(db, "connection reset");
			return;
		}
		// Keep the first error, else the last result.
		if (db->result == NULL ||
		    (PQresultStatus(db->result) != PGRES_FATAL_ERROR && st == PGRES_FATAL_ERROR)) {
			PQclear(db->result);
			db->result = r;
		} else {
			PQclear(r);
		}
	}
}

static void read_input(rb_db *db)
{
	PGnotify *n;

	if (PQconsumeInput(db->conn) == 0 || PQstatus(db->conn) == CONNECTION_BAD) {
		db_lost(db, "connection lost");
		return;
	}
	while (db->state == DB_READY && (n = PQnotifies(db->conn)) != NULL) {
		if (db->notify_fn != NULL)
			db->notify_fn(db, n->relname, n->extra, db->notify_arg);
		PQfreemem(n);
	}
	if (db->state == DB_READY)
		collect_results(db);
}

static void db_poll_cb(uv_poll_t *h, int status, int events)
{
	db_poll *p = h->data;
	rb_db *db = p->db;

	if (db->poll != p)
		return; // a replaced handle still closing
	// libuv stops a handle that reports an error; remember that so it is started again.
	if (status < 0)
		db->poll_events = 0;
	switch (db->state) {
	case DB_CONNECTING:
		// libpq reads the socket's error itself, and may go on to the next host.
		connect_step(db);
		break;
	case DB_READY:
		if (status < 0) {
			db_lost(db, "connection lost");
			return;
		}
		if ((events & UV_WRITABLE) && db_flush(db) != 0) {
			db_lost(db, "connection lost");
			return;
		}
		if (events & UV_READABLE)
			read_input(db);
		break;
	case DB_WAITING:
	case DB_RESOLVING:
	case DB_CLOSED:
		break;
	}
}

static const char *conninfo_get(const PQconninfoOption *opts, const char *key)
{
	for (; opts != NULL && opts->keyword != NULL; opts++) {
		if (strcmp(opts->keyword, key) == 0)
			return opts->val;
	}
	return NULL;
}

// Decides whether rb_db looks the host up itself: a single host name given by conninfo or
// PGHOST, with no hostaddr. A list of hosts is left to libpq (and its blocking lookups).
static int resolve_host_pick(rb_db *db, const PQconninfoOption *opts)
{
	const char *host = conninfo_get(opts, "host");
	const char *addr = conninfo_get(opts, "hostaddr");
	unsigned char buf[sizeof(struct in6_addr)];

	if (host == NULL || host[0] == '\0')
		host = getenv("PGHOST");
	if (addr == NULL || addr[0] == '\0')
		addr = getenv("PGHOSTADDR");
	if (host == NULL || host[0] == '\0' || (addr != NULL && addr[0] != '\0'))
		return 0;
	if (host[0] == '/' || host[0] == '@' || strchr(host, ',') != NULL)
		return 0;
	if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
		return 0;
	db->resolve_host = strdup(host);
	return db->resolve_host != NULL ? 0 : RB_ENOMEM;
}

int rb_db_new(uv_loop_t *loop, const char *conninfo, rb_db **out)
{
	PQconninfoOption *opts = NULL;
	rb_db *db;

	if (loop == NULL || out == NULL)
		return RB_EINVAL;
	if (conninfo == NULL)
		conninfo = "";
	if (conninfo[0] != '\0') {
		char *errmsg = NULL;

		opts = PQconninfoParse(conninfo, &errmsg);
		if (opts == NULL) {
			// errmsg may quote the conninfo, password included: do not log it.
			rb_error("database: the connection string is not valid");
			PQfreemem(errmsg);
			return RB_ECONFIG;
		}
	}
	db = calloc(1, sizeof(*db));
	if (db == NULL || (db->conninfo = strdup(conninfo)) == NULL ||
	    resolve_host_pick(db, opts) != 0) {
		if (db != NULL) {
			free(db->conninfo);
			free(db);
		}
		PQconninfoFree(opts);
		return RB_ENOMEM;
	}
	PQconninfoFree(opts);
	db->loop = loop;
	db->poll_fd = -1;
	db->backoff_ms = BACKOFF_MIN_MS;
	uv_timer_init(loop, &db->timer);
	db->timer.data = db;
	db->open_handles = 1;
	db->state = DB_WAITING;
	db_set_state(db, db->resolve_host != NULL ? DB_RESOLVING : DB_CONNECTING);
	*out = db;
	return 0;
}

void rb_db_on_notify(rb_db *db, rb_db_notify_fn fn, void *arg)
{
	if (db == NULL)
		return;
	db->notify_fn = fn;
	db->notify_arg = arg;
}

void rb_db_on_up(rb_db *db, rb_db_up_fn fn, void *arg)
{
	if (db == NULL)
		return;
	db->up_fn = fn;
	db->up_arg = arg;
}

static bool valid_channel(const char *s)
{
	size_t len = 0;

	for (; s[len] != '\0'; len++) {
		char c = s[len];

		if (len >= CHANNEL_MAX)
			return false;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return len > 0;
}

// Starts the queue on the next loop turn, so no callback ever runs inside an API call.
static void kick_soon(rb_db *db)
{
	if (db->state == DB_READY && !db->running)
		uv_timer_start(&db->timer, timer_cb, 0, 0);
}

int rb_db_listen(rb_db *db, const char *channel)
{
	char **ch;
	db_query *q;
	size_t len;

	if (db == NULL || channel == NULL || !valid_channel(channel))
		return RB_EINVAL;
	if (db->state == DB_CLOSED)
		return RB_ECLOSED;
	for (int i = 0; i < db->nchannels; i++) {
		if (strcmp(db->channels[i], channel) == 0)
			return 0;
	}
	ch = realloc(db->channels, sizeof(*ch) * (size_t)(db->nchannels + 1));
	if (ch == NULL)
		return RB_ENOMEM;
	db->channels = ch;
	ch[db->nchannels] = strdup(channel);
	if (ch[db->nchannels] == NULL)
		return RB_ENOMEM;
	db->nchannels++;
	// Not connected: the LISTEN goes out with the others when the connection comes up.
	if (db->state != DB_READY)
		return 0;
	len = strlen(channel) + 16;
	q = calloc(1, sizeof(*q));
	if (q != NULL)
		q->sql = malloc(len);
	if (q == NULL || q->sql == NULL) {
		free(q);
		free(ch[--db->nchannels]);
		return RB_ENOMEM;
	}
	snprintf(q->sql, len, "LISTEN \"%s\"", channel);
	query_link(db, q, false);
	kick_soon(db);
	return 0;
}

int rb_db_query(rb_db *db, const char *sql, int nparams, const char *const *params, rb_db_fn fn,
                void *arg)
{
	db_query *q;

	if (db == NULL || sql == NULL || fn == NULL || nparams < 0 || nparams > PARAMS_MAX ||
	    (nparams > 0 && params == NULL))
		return RB_EINVAL;
	if (db->state == DB_CLOSED)
		return RB_ECLOSED;
	if (db->queued >= QUEUE_MAX)
		return RB_EBUSY;
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return RB_ENOMEM;
	q->fn = fn;
	q->arg = arg;
	q->sql = strdup(sql);
	if (q->sql == NULL)
		goto nomem;
	if (nparams > 0) {
		q->params = calloc((size_t)nparams, sizeof(*q->params));
		if (q->params == NULL)
			goto nomem;
		q->nparams = nparams;
		for (int i = 0; i < nparams; i++) {
			if (params[i] == NULL)
				continue;
			q->params[i] = strdup(params[i]);
			if (q->params[i] == NULL)
				goto nomem;
		}
	}
	query_link(db, q, false);
	kick_soon(db);
	return 0;
nomem:
	query_free(q);
	return RB_ENOMEM;
}

bool rb_db_connected(const rb_db *db)
{
	return db != NULL && db->state == DB_READY;
}

int rb_db_pending(const rb_db *db)
{
	return db != NULL ? db->pending : 0;
}

void rb_db_free(rb_db *db)
{
	if (db == NULL || db->state == DB_CLOSED)
		return;
	db_set_state(db, DB_CLOSED);
}
