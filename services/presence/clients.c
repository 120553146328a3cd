// The agent link: decodes and validates client requests, runs logins through the slowdown and
// the asynchronous secret check, and answers every request with a status or an error.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "clients.h"
#include "rb_bus.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_secret.h"
#include "rb_time.h"
#include "slowdown.h"

#define SLOWDOWN_KEYS_MAX 200000
#define PEM_MAX           (1024 * 1024)
// How long a repeat of a login already answered is ignored: a client resends after 2 s
// without an answer, so a resend may cross the answer on its way. Checking it again would
// open a second session and revoke the token the client is about to use. Past this, a
// repeat is a client whose answer was lost, and it is checked afresh.
#define LOGIN_REPEAT_US (10 * 1000000ULL)

typedef struct pipe_rec pipe_rec;

// One login whose secret is being checked. It outlives its connection and even the link:
// the check runs on the thread pool and its callback always comes.
typedef struct pending_login {
	presence_clients *cl; // NULL once the link is closed
	pipe_rec *pr;         // NULL once the connection is closed
	uint32_t pipe;
	uint64_t seq;
	uint64_t agent_id;
	bool had_hash;
	char hash[RB_SECRET_HASH_MAX];
	struct pending_login *prev, *next;
} pending_login;

// An agent id with a check in flight: the slowdown only counts finished checks, so checks for
// one id run one at a time or a burst of parallel guesses would all be checked.
typedef struct agent_rec {
	uint64_t agent_id;
	UT_hash_handle hh;
} agent_rec;

struct pipe_rec {
	uint32_t pipe;
	pending_login *login;
	// The last login answered on this connection (seq 0: none), for LOGIN_REPEAT_US.
	uint64_t answered_seq;
	uint64_t answered_agent;
	uint64_t answered_mono;
	UT_hash_handle hh;
};

struct presence_clients {
	uv_loop_t *loop;
	presence_core *core;
	rb_bus *bus;
	presence_slowdown *by_agent;
	presence_slowdown *by_pipe;
	pipe_rec *pipes;
	agent_rec *checking;   // agent ids with a check in flight
	pending_login *logins; // every check in flight
	uint32_t npending;
	void (*after)(void *arg);
	void *after_arg;
	presence_earnings_fn earnings;
	void *earnings_arg;
};

static void after(presence_clients *cl)
{
	if (cl->after != NULL)
		cl->after(cl->after_arg);
}

// ---------------------------------------------------------------------------------------------
// Sending

void presence_clients_send(presence_clients *cl, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	nng_msg *msg = NULL;
	int rv = rb_pb_pack(&m->base, RB_PB_MAX_DEFAULT, &msg);
	if (rv != 0) {
		rb_error("agent link: cannot pack a message: %s", rb_err_str(rv));
		return;
	}
	nng_pipe p = NNG_PIPE_INITIALIZER;
	p.id = pipe;
	nng_msg_set_pipe(msg, p);
	rb_bus_send(cl->bus, msg);
}

static void reply_status(presence_clients *cl, uint32_t pipe, uint64_t seq, const presence_agent *a,
                         char *token)
{
	Ringbid__AgentStatus st;
	presence_core_status(cl->core, a, &st);
	if (token != NULL)
		st.session_token = token;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
	m.status = &st;
	presence_clients_send(cl, pipe, &m);
}

static void reply_error(presence_clients *cl, uint32_t pipe, uint64_t seq, int code,
                        const char *text)
{
	Ringbid__ErrorReply er = RINGBID__ERROR_REPLY__INIT;
	er.code = code;
	er.message = (char *)text;
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.seq = seq;
	m.body_case = RINGBID__AGENT_MSG__BODY_ERROR;
	m.error = &er;
	presence_core_stats(cl->core)->refused_agents++;
	presence_clients_send(cl, pipe, &m);
}

// Bad input: an ErrorReply, a log line, and nothing else.
static void refuse(presence_clients *cl, uint32_t pipe, uint64_t seq, uint64_t agent_id, int code,
                   const char *text)
{
	rb_logf(RB_LOG_WARN, NULL, agent_id, "agent link: refused a message from connection %u: %s",
	        pipe, text);
	reply_error(cl, pipe, seq, code, text);
}

// ---------------------------------------------------------------------------------------------
// Connections

static pipe_rec *pipe_find(const presence_clients *cl, uint32_t pipe)
{
	pipe_rec *pr = NULL;
	HASH_FIND(hh, cl->pipes, &pipe, sizeof(pipe), pr);
	return pr;
}

static pipe_rec *pipe_get(presence_clients *cl, uint32_t pipe)
{
	pipe_rec *pr = pipe_find(cl, pipe);
	if (pr != NULL)
		return pr;
	pr = calloc(1, sizeof(*pr));
	if (pr == NULL)
		return NULL;
	pr->pipe = pipe;
	HASH_ADD(hh, cl->pipes, pipe, sizeof(pr->pipe), pr);
	return pr;
}

static void pipe_forget(presence_clients *cl, pipe_rec *pr)
{
	if (pr->login != NULL)
		pr->login->pr = NULL;
	HASH_DEL(cl->pipes, pr);
	free(pr);
}

static bool checking(const presence_clients *cl, uint64_t agent_id)
{
	agent_rec *ar = NULL;
	HASH_FIND(hh, cl->checking, &agent_id, sizeof(agent_id), ar);
	return ar != NULL;
}

static void checking_done(presence_clients *cl, uint64_t agent_id)
{
	agent_rec *ar = NULL;
	HASH_FIND(hh, cl->checking, &agent_id, sizeof(agent_id), ar);
	if (ar != NULL) {
		HASH_DEL(cl->checking, ar);
		free(ar);
	}
}

static void on_pipe(rb_bus *bus, nng_pipe p, bool added, void *arg)
{
	(void)bus;
	presence_clients *cl = arg;
	uint32_t pipe = (uint32_t)nng_pipe_id(p);
	if (added) {
		rb_debug("agent link: connection %u opened", pipe);
		return;
	}
	rb_debug("agent link: connection %u closed", pipe);
	pipe_rec *pr = pipe_find(cl, pipe);
	if (pr != NULL)
		pipe_forget(cl, pr);
	// A new connection is a new source: its record starts afresh (ids keep their own).
	presence_slowdown_forget(cl->by_pipe, pipe);
	presence_core_pipe_closed(cl->core, pipe);
	after(cl);
}

// ---------------------------------------------------------------------------------------------
// Login

static void login_list_remove(presence_clients *cl, pending_login *pl)
{
	if (pl->prev != NULL)
		pl->prev->next = pl->next;
	else
		cl->logins = pl->next;
	if (pl->next != NULL)
		pl->next->prev = pl->prev;
	pl->prev = pl->next = NULL;
}

static void login_checked(int result, void *arg)
{
	pending_login *pl = arg;
	presence_clients *cl = pl->cl;
	if (cl == NULL) {
		free(pl);
		return;
	}
	login_list_remove(cl, pl);
	cl->npending--;
	checking_done(cl, pl->agent_id);
	bool connected = pl->pr != NULL;
	if (pl->pr != NULL) {
		pl->pr->login = NULL;
		pl->pr->answered_seq = pl->seq;
		pl->pr->answered_agent = pl->agent_id;
		pl->pr->answered_mono = rb_mono_us();
	}

	presence_core *core = cl->core;
	presence_agent *a = presence_core_find(core, pl->agent_id);
	const char *hash = presence_agent_secret_hash(a);
	// A secret changed while it was being checked is checked against the old one: refuse.
	bool same_hash = pl->had_hash && hash != NULL && strcmp(hash, pl->hash) == 0;
	uint64_t now = rb_mono_us();

	if (result != 0 || !same_hash || a == NULL) {
		presence_slowdown_fail(cl->by_agent, pl->agent_id, now);
		if (connected)
			presence_slowdown_fail(cl->by_pipe, pl->pipe, now);
		presence_core_stats(core)->login_failures++;
		rb_logf(RB_LOG_WARN, NULL, pl->agent_id,
		        "login refused on connection %u: wrong agent id or secret (%u in a row)",
		        pl->pipe, presence_slowdown_fails(cl->by_agent, pl->agent_id));
		if (connected)
			reply_error(cl, pl->pipe, pl->seq, RB_EAUTH, "wrong agent id or secret");
		goto out;
	}
	presence_slowdown_forget(cl->by_agent, pl->agent_id);
	if (connected)
		presence_slowdown_forget(cl->by_pipe, pl->pipe);
	if (presence_agent_suspended(a)) {
		rb_logf(RB_LOG_WARN, NULL, pl->agent_id, "login refused: agent suspended");
		if (connected)
			reply_error(cl, pl->pipe, pl->seq, RB_EFORBIDDEN, "agent suspended");
		goto out;
	}
	if (!connected) {
		rb_logf(RB_LOG_INFO, NULL, pl->agent_id,
		        "login dropped: connection closed during the check");
		goto out;
	}
	char token[RB_TOKEN_HEX];
	presence_core_quiet(core, a);
	int rv = presence_core_login(core, a, pl->pipe, token);
	if (rv != 0)
		reply_error(cl, pl->pipe, pl->seq, rv, "agent may not log in");
	else
		reply_status(cl, pl->pipe, pl->seq, a, token);
	presence_core_quiet(core, NULL);
	memset(token, 0, sizeof(token));
out:
	free(pl);
	after(cl);
}

static void handle_login(presence_clients *cl, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	const Ringbid__Login *l = m->login;
	size_t slen = l->secret != NULL ? strlen(l->secret) : 0;
	if (l->agent_id == 0 || slen == 0 || slen > PRESENCE_SECRET_MAX) {
		refuse(cl, pipe, m->seq, l->agent_id, RB_EINVAL,
		       "login needs an agent id and a secret of 1..256 bytes");
		return;
	}
	if (!presence_core_roster_loaded(cl->core)) {
		reply_error(cl, pipe, m->seq, RB_EBUSY, "roster not loaded yet: try again");
		return;
	}
	pipe_rec *pr = pipe_get(cl, pipe);
	if (pr == NULL) {
		reply_error(cl, pipe, m->seq, RB_ENOMEM, "out of memory");
		return;
	}
	if (pr->login != NULL) {
		// The client resends a request after 2 s without an answer, and the check may
		// wait behind many others: the answer to the first send follows, so a repeat
		// gets none (an error with its number would make the client drop the login).
		if (pr->login->seq == m->seq && pr->login->agent_id == l->agent_id) {
			rb_logf(RB_LOG_DEBUG, NULL, l->agent_id,
			        "login on connection %u sent again while it is checked: ignored",
			        pipe);
			return;
		}
		reply_error(cl, pipe, m->seq, RB_EBUSY, "a login is already being checked");
		return;
	}
	if (pr->answered_seq != 0 && pr->answered_seq == m->seq &&
	    pr->answered_agent == l->agent_id &&
	    rb_mono_us() - pr->answered_mono < LOGIN_REPEAT_US) {
		rb_logf(RB_LOG_DEBUG, NULL, l->agent_id,
		        "login on connection %u sent again after its answer: ignored", pipe);
		return;
	}
	uint64_t now = rb_mono_us(), wait_a = 0, wait_p = 0;
	int ra = presence_slowdown_check(cl->by_agent, l->agent_id, now, &wait_a);
	int rp = presence_slowdown_check(cl->by_pipe, pipe, now, &wait_p);
	if (ra != 0 || rp != 0) {
		uint64_t wait = wait_a > wait_p ? wait_a : wait_p;
		char text[80];
		snprintf(text, sizeof(text), "too many failed logins: wait %llu s",
		         (unsigned long long)((wait + 999999) / 1000000));
		rb_logf(RB_LOG_WARN, NULL, l->agent_id, "login on connection %u slowed down: %s",
		        pipe, text);
		reply_error(cl, pipe, m->seq, RB_ESLOWDOWN, text);
		return;
	}
	if (checking(cl, l->agent_id)) {
		rb_logf(RB_LOG_WARN, NULL, l->agent_id,
		        "login on connection %u slowed down: another login for this agent is "
		        "being checked",
		        pipe);
		reply_error(cl, pipe, m->seq, RB_ESLOWDOWN,
		            "another login for this agent is being checked: wait 1 s");
		return;
	}
	if (cl->npending >= PRESENCE_LOGINS_PENDING_MAX) {
		reply_error(cl, pipe, m->seq, RB_EBUSY, "too many logins at once: try again");
		return;
	}
	pending_login *pl = calloc(1, sizeof(*pl));
	agent_rec *ar = calloc(1, sizeof(*ar));
	if (pl == NULL || ar == NULL) {
		free(pl);
		free(ar);
		reply_error(cl, pipe, m->seq, RB_ENOMEM, "out of memory");
		return;
	}
	const char *hash = presence_agent_secret_hash(presence_core_find(cl->core, l->agent_id));
	pl->cl = cl;
	pl->pr = pr;
	pl->pipe = pipe;
	pl->seq = m->seq;
	pl->agent_id = l->agent_id;
	if (hash != NULL) {
		pl->had_hash = true;
		snprintf(pl->hash, sizeof(pl->hash), "%s", hash);
	}
	// Unknown agents are checked against a dummy hash: same time, same answer.
	int rv = rb_secret_verify(cl->loop, hash, l->secret, login_checked, pl);
	if (rv != 0) {
		free(pl);
		free(ar);
		rb_error("agent link: cannot check a secret: %s", rb_err_str(rv));
		reply_error(cl, pipe, m->seq, RB_EBUSY, "cannot check the secret now: try again");
		return;
	}
	ar->agent_id = l->agent_id;
	HASH_ADD(hh, cl->checking, agent_id, sizeof(ar->agent_id), ar);
	pr->login = pl;
	pl->next = cl->logins;
	if (cl->logins != NULL)
		cl->logins->prev = pl;
	cl->logins = pl;
	cl->npending++;
}

// ---------------------------------------------------------------------------------------------
// Requests with a session

// A connection that carries one agent's session never speaks for another: a token of agent B
// sent on A's connection (a leaked token, or a malicious agent) would otherwise move B's
// session onto A's connection and log B out. A new connection has no agent yet, so a client
// reconnecting with its own token still resumes; logging in with a secret may still take a
// connection over.
static bool pipe_foreign(const presence_clients *cl, uint32_t pipe, const presence_agent *a)
{
	const presence_agent *bound = presence_core_find_pipe(cl->core, pipe);
	return bound != NULL && bound != a;
}

static void handle_resume(presence_clients *cl, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	uint64_t id = m->resume->agent_id;
	if (id == 0) {
		refuse(cl, pipe, m->seq, 0, RB_EINVAL, "resume needs an agent id");
		return;
	}
	presence_agent *a = NULL;
	if (presence_core_auth(cl->core, m->token, &a) != 0 || presence_agent_id(a) != id ||
	    pipe_foreign(cl, pipe, a)) {
		refuse(cl, pipe, m->seq, id, RB_EAUTH, "session not valid: log in again");
		return;
	}
	presence_core_quiet(cl->core, a);
	presence_core_touch(cl->core, a, pipe);
	reply_status(cl, pipe, m->seq, a, NULL);
	presence_core_quiet(cl->core, NULL);
}

// Field checks come before the token, so that bad input changes nothing, not even the
// heartbeat clock.
static const char *check_fields(const Ringbid__AgentMsg *m)
{
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_SET_STATE:
		if (m->set_state->state != RINGBID__AGENT_STATE__AGENT_AVAILABLE &&
		    m->set_state->state != RINGBID__AGENT_STATE__AGENT_NOT_READY)
			return "state must be AVAILABLE or NOT_READY";
		return NULL;
	case RINGBID__AGENT_MSG__BODY_ANSWER:
		return m->answer->offer_id == 0 ? "answer needs an offer id" : NULL;
	case RINGBID__AGENT_MSG__BODY_END_CALL:
		return rb_valid_id(m->end_call->call_id, PRESENCE_ID_MAX) ? NULL
		                                                          : "call id not valid";
	default:
		return NULL;
	}
}

static void handle_session(presence_clients *cl, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	const char *bad = check_fields(m);
	if (bad != NULL) {
		refuse(cl, pipe, m->seq, 0, RB_EINVAL, bad);
		return;
	}
	presence_core *core = cl->core;
	presence_agent *a = NULL;
	if (presence_core_auth(core, m->token, &a) != 0 || pipe_foreign(cl, pipe, a)) {
		refuse(cl, pipe, m->seq, 0, RB_EAUTH, "session not valid: log in again");
		return;
	}
	presence_core_quiet(core, a);
	presence_core_touch(core, a, pipe);
	int rv = 0;
	const char *text = NULL;
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_SET_STATE:
		rv = presence_core_set_state(core, a, (presence_state)m->set_state->state);
		text = "not allowed in the agent's current state";
		break;
	case RINGBID__AGENT_MSG__BODY_ANSWER:
		rv = presence_core_answer(core, a, m->answer->offer_id, m->answer->accept);
		text = rv == RB_ESTATE ? "the offer was accepted: it cannot be declined now"
		                       : "no such offer for this agent";
		break;
	case RINGBID__AGENT_MSG__BODY_END_CALL:
		rv = presence_core_end_call(core, a, m->end_call->call_id, m->end_call->sale,
		                            m->end_call->resolved);
		text = rv == RB_ESTATE ? "the call is not connected yet"
		                       : "no such call connected to this agent";
		break;
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
		presence_core_logout(core, a);
		break;
	case RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY:
		// Only the session's own agent: the query carries no agent id to trust.
		if (cl->earnings == NULL) {
			rv = RB_EBUSY;
			text = "earnings are not available";
			break;
		}
		presence_core_quiet(core, NULL);
		cl->earnings(cl->earnings_arg, pipe, m->seq, presence_agent_id(a));
		return;
	default: // heartbeat
		break;
	}
	if (rv != 0) {
		char buf[128];
		snprintf(buf, sizeof(buf), "%s (%s)", text,
		         presence_state_name(presence_agent_state(a)));
		rb_logf(RB_LOG_INFO, NULL, presence_agent_id(a), "agent link: request refused: %s",
		        buf);
		reply_error(cl, pipe, m->seq, rv, buf);
	} else {
		reply_status(cl, pipe, m->seq, a, NULL);
	}
	presence_core_quiet(core, NULL);
}

static void on_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	(void)bus;
	presence_clients *cl = arg;
	uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
	ProtobufCMessage *pm = NULL;
	int rv = rb_pb_unpack_msg(&ringbid__agent_msg__descriptor, msg, RB_PB_MAX_DEFAULT, &pm);
	nng_msg_free(msg);
	if (rv != 0) {
		refuse(cl, pipe, 0, 0, rv,
		       rv == RB_ETOOBIG ? "message too large" : "message not readable");
		after(cl);
		return;
	}
	const Ringbid__AgentMsg *m = (const Ringbid__AgentMsg *)pm;
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_LOGIN:
		handle_login(cl, pipe, m);
		break;
	case RINGBID__AGENT_MSG__BODY_RESUME:
		handle_resume(cl, pipe, m);
		break;
	case RINGBID__AGENT_MSG__BODY_SET_STATE:
	case RINGBID__AGENT_MSG__BODY_HEARTBEAT:
	case RINGBID__AGENT_MSG__BODY_ANSWER:
	case RINGBID__AGENT_MSG__BODY_END_CALL:
	case RINGBID__AGENT_MSG__BODY_LOGOUT:
	case RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY:
		handle_session(cl, pipe, m);
		break;
	default:
		refuse(cl, pipe, m->seq, 0, RB_EINVAL, "not a request");
		break;
	}
	rb_pb_free(pm);
	after(cl);
}

// ---------------------------------------------------------------------------------------------
// Life cycle

int presence_clients_new(uv_loop_t *loop, presence_core *core, uint32_t max_fails,
                         void (*after_fn)(void *arg), void *arg, presence_clients **out)
{
	presence_clients *cl = calloc(1, sizeof(*cl));
	if (cl == NULL)
		return RB_ENOMEM;
	cl->loop = loop;
	cl->core = core;
	cl->after = after_fn;
	cl->after_arg = arg;
	int rv = presence_slowdown_new(max_fails, SLOWDOWN_KEYS_MAX, &cl->by_agent);
	if (rv == 0)
		rv = presence_slowdown_new(max_fails, SLOWDOWN_KEYS_MAX, &cl->by_pipe);
	if (rv == 0) {
		rb_bus_opts opts = {
		        .recv_max = RB_PB_MAX_DEFAULT,
		        .name = "presence-agents",
		};
		rv = rb_bus_new(loop, RB_BUS_PAIR_POLY, &opts, &cl->bus);
	}
	if (rv != 0) {
		presence_slowdown_free(cl->by_agent);
		presence_slowdown_free(cl->by_pipe);
		free(cl);
		return rv;
	}
	rb_bus_on_recv(cl->bus, on_recv, cl);
	rb_bus_on_pipe(cl->bus, on_pipe, cl);
	*out = cl;
	return 0;
}

// Reads a whole PEM file (read once at start, before the loop runs). *out is the caller's.
static int read_pem(const char *path, char **out)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		rb_error("agent link: cannot open %s", path);
		return RB_ECONFIG;
	}
	char *buf = malloc(PEM_MAX + 1);
	size_t n = buf != NULL ? fread(buf, 1, PEM_MAX + 1, f) : 0;
	bool bad = ferror(f) != 0;
	fclose(f);
	if (buf == NULL)
		return RB_ENOMEM;
	if (bad || n == 0 || n > PEM_MAX) {
		rb_error("agent link: %s is empty, unreadable or too large", path);
		free(buf);
		return RB_ECONFIG;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static int setup_tls(presence_clients *cl, const char *cert_file, const char *key_file)
{
	if (cert_file == NULL || cert_file[0] == '\0' || key_file == NULL || key_file[0] == '\0') {
		rb_error("agent link: a tls+tcp:// address needs RINGBID_PRESENCE_TLS_CERT and "
		         "RINGBID_PRESENCE_TLS_KEY");
		return RB_ECONFIG;
	}
	char *cert = NULL, *key = NULL;
	int rv = read_pem(cert_file, &cert);
	if (rv == 0)
		rv = read_pem(key_file, &key);
	nng_tls_config *cfg = NULL;
	if (rv == 0 && nng_tls_config_alloc(&cfg, NNG_TLS_MODE_SERVER) != 0)
		rv = RB_ENOMEM;
	if (rv == 0) {
		int nrv = nng_tls_config_own_cert(cfg, cert, key, NULL);
		if (nrv != 0) {
			rb_error("agent link: certificate or key not usable: %s",
			         nng_strerror(nrv));
			rv = RB_ECONFIG;
		}
	}
	if (rv == 0)
		rv = rb_bus_set_tls(cl->bus, cfg);
	if (cfg != NULL)
		nng_tls_config_free(cfg);
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
	free(cert);
	return rv;
}

bool presence_clients_loopback(const char *url)
{
	static const char *const local[] = {
	        "tcp://127.",    "tcp://[::1]:", "tcp://localhost:", "tcp4://127.",
	        "tcp6://[::1]:", "ipc://",       "inproc://"};
	for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
		if (strncmp(url, local[i], strlen(local[i])) == 0)
			return true;
	}
	return false;
}

static int listen_one(presence_clients *cl, const char *url, const char *cert_file,
                      const char *key_file)
{
	bool plaintext_ok = false;

	if (strncmp(url, "tls+tcp://", 10) == 0) {
		int rv = setup_tls(cl, cert_file, key_file);
		if (rv != 0)
			return rv;
	} else if (presence_clients_loopback(url)) {
		rb_info("agent link on %s is plain TCP: allowed on loopback only", url);
	} else if (rb_config_bool("RINGBID_PRESENCE_ALLOW_PLAINTEXT", false, &plaintext_ok) != 0) {
		rb_error("RINGBID_PRESENCE_ALLOW_PLAINTEXT: not a yes/no value");
		return RB_ECONFIG;
	} else if (plaintext_ok) {
		// Behind a proxy that terminates TLS for the agents (stunnel, a TCP load balancer):
		// the operator says so explicitly, and the log says it on every start.
		rb_warn("agent link on %s is plain TCP beyond loopback "
		        "(RINGBID_PRESENCE_ALLOW_PLAINTEXT): agents' traffic must be encrypted "
		        "before it reaches this port",
		        url);
	} else {
		// Agents log in with secrets and carry session tokens from home networks: never in
		// clear text over a real network.
		rb_error("agent link on %s refused: plain TCP is allowed on loopback only; use "
		         "tls+tcp:// with RINGBID_PRESENCE_TLS_CERT and RINGBID_PRESENCE_TLS_KEY",
		         url);
		return RB_ECONFIG;
	}
	return rb_bus_listen(cl->bus, url);
}

// url may list several addresses separated by commas: one TCP address gives a client host at
// most one ephemeral port range, so a large floor behind one NAT or a load test spreads its
// sessions over several listener addresses.
int presence_clients_listen(presence_clients *cl, const char *url, const char *cert_file,
                            const char *key_file)
{
	char list[1024], *save = NULL, *one;
	int n = 0;

	if (strlen(url) >= sizeof(list))
		return RB_ETOOBIG;
	memcpy(list, url, strlen(url) + 1);
	for (one = strtok_r(list, ",", &save); one != NULL; one = strtok_r(NULL, ",", &save)) {
		int rv = listen_one(cl, one, cert_file, key_file);

		if (rv != 0) {
			rb_error("cannot listen for agents on %s: %s", one, rb_err_str(rv));
			return rv;
		}
		n++;
	}
	return n > 0 ? 0 : RB_EINVAL;
}

void presence_clients_janitor(presence_clients *cl)
{
	uint64_t now = rb_mono_us();
	presence_slowdown_expire(cl->by_agent, now);
	presence_slowdown_expire(cl->by_pipe, now);
}

int presence_clients_peers(const presence_clients *cl)
{
	return rb_bus_peers(cl->bus);
}

void presence_clients_on_earnings(presence_clients *cl, presence_earnings_fn fn, void *arg)
{
	cl->earnings = fn;
	cl->earnings_arg = arg;
}

void presence_clients_earnings_failed(presence_clients *cl, uint32_t pipe, uint64_t seq,
                                      uint64_t agent_id, int code, const char *text)
{
	refuse(cl, pipe, seq, agent_id, code, text);
}

void presence_clients_free(presence_clients *cl)
{
	if (cl == NULL)
		return;
	rb_bus_free(cl->bus);
	for (pending_login *pl = cl->logins; pl != NULL; pl = pl->next)
		pl->cl = NULL;
	pipe_rec *pr, *tmp;
	HASH_ITER(hh, cl->pipes, pr, tmp)
	{
		pipe_forget(cl, pr);
	}
	agent_rec *ar, *atmp;
	HASH_ITER(hh, cl->checking, ar, atmp)
	{
		HASH_DEL(cl->checking, ar);
		free(ar);
	}
	presence_slowdown_free(cl->by_agent);
	presence_slowdown_free(cl->by_pipe);
	free(cl);
}
