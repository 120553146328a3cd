// ringbid-agent: the remote agent's presence client on a libuv loop (nng link, stdin, timers).
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "client.h"
#include "options.h"
#include "ui.h"
#include "rb_bus.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_svc.h"
#include "rb_time.h"

#define CALL_TIME_EVERY_MS 10000 // how often a person on a call sees the call's time
#define LINE_MAX_BYTES     256   // longest command line kept; longer ones are refused

typedef enum {
	STDIN_NONE = 0, // closed, or not readable at all
	STDIN_STREAM,   // tty or pipe/socket through uv_stream
	STDIN_FILE,     // regular file or character device through uv_fs_read
} stdin_kind;

typedef struct agent_main {
	uv_loop_t loop;
	rb_bus *bus;
	agent_client client;
	agent_ui ui;
	bool interactive;
	int npipes;

	uv_timer_t timer;     // the client's next due work
	uv_timer_t call_time; // human mode: the call's time every CALL_TIME_EVERY_MS
	uv_signal_t sigterm, sigint, sighup;

	stdin_kind in_kind;
	union {
		uv_tty_t tty;
		uv_pipe_t pipe;
	} in;
	bool in_reading;
	uv_fs_t in_req;
	bool in_req_busy;
	char in_buf[4096];
	char line[LINE_MAX_BYTES + 1];
	size_t line_len;
	bool line_too_long;

	bool finishing; // the client finished: the handles are closing
	int exit_code;
	// Human mode: a call just ended, so the agent's earnings are asked for once the client's
	// event has been handled (not from inside it).
	bool want_earnings;
} agent_main;

static void shutdown_all(agent_main *m);

// ---------------------------------------------------------------------------------------------
// The client's callbacks

static int op_send(void *arg, const Ringbid__AgentMsg *msg)
{
	agent_main *m = arg;
	nng_msg *nm = NULL;
	int rv;

	if (m->bus == NULL)
		return RB_ECLOSED;
	rv = rb_pb_pack(&msg->base, RB_PB_MAX_DEFAULT, &nm);
	if (rv != 0)
		return rv;
	return rb_bus_send(m->bus, nm);
}

static void on_timer(uv_timer_t *t);

static void op_event(void *arg, const agent_event *ev)
{
	agent_main *m = arg;
	agent_ui_event(&m->ui, ev);
	if (ev->kind == AGENT_EV_CALL_ENDED && m->ui.mode == AGENT_UI_HUMAN && !m->finishing) {
		m->want_earnings = true;
		uv_timer_start(&m->timer, on_timer, 0, 0);
	}
}

static void op_finish(void *arg, int exit_code)
{
	agent_main *m = arg;

	if (m->finishing)
		return;
	m->finishing = true;
	m->exit_code = exit_code;
	// Closing the bus from inside one of its own callbacks is not safe: do it from the timer.
	uv_timer_start(&m->timer, on_timer, 0, 0);
}

static uint64_t op_mono_ms(void *arg)
{
	(void)arg;
	return rb_mono_us() / 1000;
}

static uint64_t op_wall_us(void *arg)
{
	(void)arg;
	return rb_now_us();
}

// Arms the timer for the client's next due work.
static void rearm(agent_main *m)
{
	if (m->finishing)
		return;
	uint64_t due = m->want_earnings ? 0 : agent_client_next_due(&m->client);
	if (due == UINT64_MAX) {
		uv_timer_stop(&m->timer);
		return;
	}
	uint64_t now = op_mono_ms(m);
	uv_timer_start(&m->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
	agent_main *m = t->data;

	if (m->finishing) {
		shutdown_all(m);
		return;
	}
	if (m->want_earnings) {
		m->want_earnings = false;
		int rv = agent_client_earnings(&m->client);
		if (rv != 0 && rv != RB_ESTATE)
			agent_ui_note(&m->ui, "Earnings not asked for: %s.", rb_err_str(rv));
	}
	agent_client_tick(&m->client);
	rearm(m);
}

static void on_call_time(uv_timer_t *t)
{
	agent_main *m = t->data;
	agent_ui_call_time(&m->ui, &m->client);
}

// ---------------------------------------------------------------------------------------------
// The link to presence

static void on_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	agent_main *m = arg;
	(void)bus;

	if (!m->finishing)
		agent_client_on_data(&m->client, nng_msg_body(msg), nng_msg_len(msg));
	nng_msg_free(msg);
	rearm(m);
}

static void on_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	agent_main *m = arg;
	(void)bus;
	(void)pipe;

	m->npipes += added ? 1 : -1;
	if (m->npipes < 0)
		m->npipes = 0;
	if (!m->finishing)
		agent_client_link(&m->client, m->npipes > 0);
	rearm(m);
}

// ---------------------------------------------------------------------------------------------
// Commands on stdin

static void on_eof(agent_main *m)
{
	if (m->interactive) {
		// The person closed the input (Ctrl-D): leave properly.
		agent_client_logout(&m->client);
	} else {
		rb_info("stdin closed; answering offers on our own until stopped");
	}
	rearm(m);
}

static void on_line(agent_main *m, const char *line)
{
	if (m->finishing)
		return;
	agent_ui_command(&m->ui, &m->client, line);
	rearm(m);
}

static void feed(agent_main *m, const char *buf, size_t len)
{
	for (size_t i = 0; i < len && !m->finishing; i++) {
		char ch = buf[i];
		if (ch == '\n') {
			if (m->line_too_long) {
				agent_ui_note(&m->ui, "Line too long; ignored.");
			} else {
				m->line[m->line_len] = '\0';
				on_line(m, m->line);
			}
			m->line_len = 0;
			m->line_too_long = false;
		} else if (m->line_len < LINE_MAX_BYTES) {
			m->line[m->line_len++] = ch == '\r' ? ' ' : ch;
		} else {
			m->line_too_long = true;
		}
	}
}

// The last line may lack its line break.
static void feed_end(agent_main *m)
{
	if (m->line_len > 0 && !m->line_too_long) {
		m->line[m->line_len] = '\0';
		on_line(m, m->line);
	}
	m->line_len = 0;
	m->line_too_long = false;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	agent_main *m = h->data;
	(void)suggested;
	buf->base = m->in_buf;
	buf->len = sizeof(m->in_buf);
}

static void stdin_stop(agent_main *m);

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	agent_main *m = s->data;

	if (n > 0) {
		feed(m, buf->base, (size_t)n);
		return;
	}
	if (n == 0)
		return;
	if (n != UV_EOF)
		rb_warn("reading stdin: %s", uv_strerror((int)n));
	stdin_stop(m);
	feed_end(m);
	on_eof(m);
}

static void stdin_file_read(agent_main *m);

static void on_fs_read(uv_fs_t *req)
{
	agent_main *m = req->data;
	ssize_t n = req->result;

	uv_fs_req_cleanup(req);
	m->in_req_busy = false;
	if (m->finishing || m->in_kind == STDIN_NONE)
		return;
	if (n > 0) {
		feed(m, m->in_buf, (size_t)n);
		if (!m->finishing)
			stdin_file_read(m);
		return;
	}
	if (n < 0 && n != UV_ECANCELED)
		rb_warn("reading stdin: %s", uv_strerror((int)n));
	m->in_kind = STDIN_NONE;
	feed_end(m);
	on_eof(m);
}

static void stdin_file_read(agent_main *m)
{
	uv_buf_t b = uv_buf_init(m->in_buf, sizeof(m->in_buf));

	m->in_req.data = m;
	if (uv_fs_read(&m->loop, &m->in_req, 0, &b, 1, -1, on_fs_read) == 0) {
		m->in_req_busy = true;
		return;
	}
	m->in_kind = STDIN_NONE;
	on_eof(m);
}

// Starts reading commands from fd 0 without ever blocking the loop: a terminal or a pipe is
// watched by libuv; a file (or /dev/null) is read on libuv's thread pool.
static void stdin_start(agent_main *m)
{
	uv_handle_type t = uv_guess_handle(0);
	int rv = -1;

	if (t == UV_TTY) {
		rv = uv_tty_init(&m->loop, &m->in.tty, 0, 1);
	} else if (t == UV_NAMED_PIPE || t == UV_TCP) {
		rv = uv_pipe_init(&m->loop, &m->in.pipe, 0);
		if (rv == 0) {
			rv = uv_pipe_open(&m->in.pipe, 0);
			if (rv != 0) {
				uv_close((uv_handle_t *)&m->in.pipe, NULL);
				rv = -1;
			}
		}
	} else if (t == UV_FILE) {
		m->in_kind = STDIN_FILE;
		stdin_file_read(m);
		return;
	}
	if (rv != 0) {
		m->in_kind = STDIN_NONE;
		rb_info("stdin not readable; no typed commands");
		if (m->interactive)
			on_eof(m);
		return;
	}
	m->in_kind = STDIN_STREAM;
	m->in.tty.data = m; // the same handle field in both union members
	rv = uv_read_start((uv_stream_t *)&m->in, on_alloc, on_read);
	if (rv != 0) {
		rb_warn("reading stdin: %s", uv_strerror(rv));
		stdin_stop(m);
		if (m->interactive)
			on_eof(m);
		return;
	}
	m->in_reading = true;
}

static void stdin_stop(agent_main *m)
{
	if (m->in_kind == STDIN_STREAM) {
		if (m->in_reading)
			uv_read_stop((uv_stream_t *)&m->in);
		m->in_reading = false;
		if (!uv_is_closing((uv_handle_t *)&m->in))
			uv_close((uv_handle_t *)&m->in, NULL);
	} else if (m->in_kind == STDIN_FILE && m->in_req_busy) {
		uv_cancel((uv_req_t *)&m->in_req);
	}
	m->in_kind = STDIN_NONE;
}

// ---------------------------------------------------------------------------------------------
// Signals and shutdown

static void on_signal(uv_signal_t *s, int signum)
{
	agent_main *m = s->data;

	if (m->finishing)
		return;
	if (agent_client_phase(&m->client) == AGENT_PHASE_LOGOUT) {
		// Ctrl-C twice: the person does not want to wait for presence. A repeated SIGTERM
		// (a process group and its leader both signalled) just lets the logout finish; it
		// is bounded by AGENT_LOGOUT_WAIT_MS anyway.
		if (signum == SIGINT) {
			rb_info("interrupted again: leaving now");
			op_finish(m, 0);
		}
		return;
	}
	rb_info("signal %d: logging out", signum);
	agent_client_logout(&m->client);
	rearm(m);
}

static void close_if_open(uv_handle_t *h)
{
	if (h->loop != NULL && !uv_is_closing(h))
		uv_close(h, NULL);
}

static void shutdown_all(agent_main *m)
{
	stdin_stop(m);
	close_if_open((uv_handle_t *)&m->timer);
	close_if_open((uv_handle_t *)&m->call_time);
	close_if_open((uv_handle_t *)&m->sigterm);
	close_if_open((uv_handle_t *)&m->sigint);
	close_if_open((uv_handle_t *)&m->sighup);
	rb_bus_free(m->bus);
	m->bus = NULL;
}

// The host part of an nng URL ("tls+tcp://presence.example.com:7105" -> the name).
static void url_host(const char *url, char *out, size_t n)
{
	const char *p = strstr(url, "://");
	size_t len;

	p = p ? p + 3 : url;
	if (*p == '[') {
		p++;
		len = strcspn(p, "]");
	} else {
		len = strcspn(p, ":/");
	}
	snprintf(out, n, "%.*s", (int)len, p);
}

static bool host_is_loopback(const char *host)
{
	return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
	       strcmp(host, "::1") == 0 || host[0] == '\0';
}

// tls+tcp:// addresses: presence's certificate must chain to RINGBID_AGENT_TLS_CA_FILE and
// carry the server's name (RINGBID_AGENT_TLS_SERVER_NAME, else the URL's host), because nng
// checks neither unless told to. Plain tcp:// is meant for loopback only: the secret would
// cross the network readable.
static int tls_setup(rb_bus *bus, const char *url)
{
	char host[256];
	const char *ca = getenv("RINGBID_AGENT_TLS_CA_FILE");
	const char *name = getenv("RINGBID_AGENT_TLS_SERVER_NAME");
	nng_tls_config *cfg = NULL;
	int rv;

	url_host(url, host, sizeof(host));
	if (strncmp(url, "tls+", 4) != 0) {
		if (!host_is_loopback(host))
			rb_warn("%s is not encrypted: the agent's secret and calls cross the "
			        "network "
			        "readable; use a tls+tcp:// address",
			        url);
		return 0;
	}
	if (ca == NULL || *ca == '\0') {
		fprintf(stderr,
		        "ringbid-agent: %s needs RINGBID_AGENT_TLS_CA_FILE, the certificate "
		        "authority that signed presence's certificate\n",
		        url);
		return RB_ECONFIG;
	}
	if (name == NULL || *name == '\0')
		name = host;
	if ((rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT)) != 0 ||
	    (rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
	    (rv = nng_tls_config_server_name(cfg, name)) != 0 ||
	    (rv = nng_tls_config_ca_file(cfg, ca)) != 0) {
		fprintf(stderr, "ringbid-agent: TLS set-up with %s failed: %s\n", ca,
		        nng_strerror(rv));
		if (cfg)
			nng_tls_config_free(cfg);
		return rb_err_from_nng(rv);
	}
	rv = rb_bus_set_tls(bus, cfg);
	nng_tls_config_free(cfg);
	return rv;
}

static int start_signal(agent_main *m, uv_signal_t *s, int signum)
{
	int rv = uv_signal_init(&m->loop, s);
	if (rv != 0)
		return rv;
	s->data = m;
	return uv_signal_start(s, on_signal, signum);
}

// ---------------------------------------------------------------------------------------------

static int run(agent_main *m, const agent_options *o, const char *secret, const char *url,
               uint64_t heartbeat_ms)
{
	agent_client_config cfg = {
	        .agent_id = o->agent_id,
	        .secret = secret,
	        .policy = agent_options_policy(o),
	        .talk_ms = o->talk_ms,
	        .auto_ready = agent_options_auto_ready(o),
	        .heartbeat_ms = heartbeat_ms,
	        .sale_every = o->sale_every,
	};
	agent_client_ops ops = {
	        .send = op_send,
	        .event = op_event,
	        .finish = op_finish,
	        .mono_ms = op_mono_ms,
	        .wall_us = op_wall_us,
	        .arg = m,
	};
	rb_bus_opts bo = {
	        .recv_max = RB_PB_MAX_DEFAULT,
	        .send_timeout_ms = AGENT_REQ_RESEND_MS,
	        .name = "agent-presence",
	};
	int rv;

	m->interactive = cfg.policy == AGENT_OFFERS_ASK;
	agent_ui_init(&m->ui, o->json ? AGENT_UI_JSON : AGENT_UI_HUMAN, o->agent_id, cfg.policy,
	              stdout);
	rv = agent_client_init(&m->client, &cfg, &ops);
	if (rv != 0) {
		fprintf(stderr, "ringbid-agent: cannot start: %s\n", rb_err_str(rv));
		return 1;
	}
	if ((rv = uv_loop_init(&m->loop)) != 0) {
		fprintf(stderr, "ringbid-agent: cannot start the event loop: %s\n",
		        uv_strerror(rv));
		agent_client_fini(&m->client);
		return 1;
	}
	uv_timer_init(&m->loop, &m->timer);
	m->timer.data = m;
	uv_timer_init(&m->loop, &m->call_time);
	m->call_time.data = m;
	if (start_signal(m, &m->sigterm, SIGTERM) != 0 ||
	    start_signal(m, &m->sigint, SIGINT) != 0 || start_signal(m, &m->sighup, SIGHUP) != 0) {
		fprintf(stderr, "ringbid-agent: cannot watch signals\n");
		m->exit_code = 1;
		goto out;
	}

	rv = rb_bus_new(&m->loop, RB_BUS_PAIR, &bo, &m->bus);
	if (rv == 0 && (rv = tls_setup(m->bus, url)) != 0) {
		m->exit_code = 1;
		goto out;
	}
	if (rv == 0) {
		rb_bus_on_recv(m->bus, on_recv, m);
		rb_bus_on_pipe(m->bus, on_pipe, m);
		rv = rb_bus_dial(m->bus, url);
	}
	if (rv != 0) {
		fprintf(stderr, "ringbid-agent: cannot connect to %s: %s\n", url, rb_err_str(rv));
		m->exit_code = 1;
		goto out;
	}
	rb_logf(RB_LOG_INFO, NULL, o->agent_id, "connecting to presence at %s", url);
	agent_ui_note(&m->ui, "Connecting to presence at %s as agent %" PRIu64 "...", url,
	              o->agent_id);
	if (!o->json && m->interactive)
		uv_timer_start(&m->call_time, on_call_time, CALL_TIME_EVERY_MS, CALL_TIME_EVERY_MS);
	stdin_start(m);
	rearm(m);
	uv_run(&m->loop, UV_RUN_DEFAULT);
	agent_client_fini(&m->client);
	agent_ui_fini(&m->ui);
	if (uv_loop_close(&m->loop) != 0)
		rb_debug("event loop closed with handles still open");
	return m->exit_code;

out:
	m->finishing = true;
	shutdown_all(m);
	uv_run(&m->loop, UV_RUN_DEFAULT);
	agent_client_fini(&m->client);
	agent_ui_fini(&m->ui);
	uv_loop_close(&m->loop);
	return m->exit_code;
}

int main(int argc, char **argv)
{
	static agent_main m; // large (buffers); one per process
	agent_options o;
	char err[512];
	char secret[AGENT_SECRET_MAX + 1];
	char url[512];
	const char *source = "";
	long long heartbeat_ms = 0;
	int rv;

	if (agent_options_parse(argc, argv, &o, err, sizeof(err)) != 0) {
		fprintf(stderr, "ringbid-agent: %s\n", err);
		return 2;
	}
	if (o.help) {
		fputs(agent_usage, stdout);
		return 0;
	}
	if (o.version) {
		printf("ringbid-agent %s\n", RB_VERSION);
		return 0;
	}
	rb_log_init("agent");
	// A person at the terminal reads the sentences on stdout; routine log lines would bury
	// them. Scripts (--json, auto modes) keep the usual level.
	if (getenv("RINGBID_LOG_LEVEL") == NULL && !o.json &&
	    agent_options_policy(&o) == AGENT_OFFERS_ASK)
		rb_log_set_level(RB_LOG_WARN);
	signal(SIGPIPE, SIG_IGN);

	rv = rb_config_load_home();
	if (rv != 0)
		fprintf(stderr, "ringbid-agent: ignoring $RINGBID_HOME/env: %s\n", rb_err_str(rv));
	rv = agent_secret_load(&o, secret, sizeof(secret), &source, err, sizeof(err));
	if (rv != 0) {
		fprintf(stderr, "ringbid-agent: %s\n", err);
		return 2;
	}
	if (o.url) {
		snprintf(url, sizeof(url), "%s", o.url);
	} else if ((rv = rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, url,
	                               sizeof(url))) != 0) {
		fprintf(stderr, "ringbid-agent: bad presence address: %s\n", rb_err_str(rv));
		explicit_bzero(secret, sizeof(secret));
		return 2;
	}
	if (rb_config_ms("RINGBID_HEARTBEAT_MS", 5000, 10, 60000, &heartbeat_ms) != 0) {
		fprintf(stderr, "ringbid-agent: RINGBID_HEARTBEAT_MS must be a duration of 10 ms "
		                "to 60 s\n");
		explicit_bzero(secret, sizeof(secret));
		return 2;
	}
	rb_logf(RB_LOG_DEBUG, NULL, o.agent_id, "secret from %s", source);
	rv = run(&m, &o, secret, url, (uint64_t)heartbeat_ms);
	explicit_bzero(secret, sizeof(secret));
	return rv;
}
