// A run from start to end: set-up, the tick that drives everything, the phases (log in, run,
// drain, close, read back, log out), the live line and the summary.
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"
#include "sim.h"

static uint64_t now_ms(void)
{
	return rb_mono_us() / 1000;
}

static const char *phase_name(sim_phase p)
{
	static const char *const names[] = {"login",     "run",    "drain", "close",
	                                    "reconcile", "logout", "done"};
	return p <= SIM_PHASE_DONE ? names[p] : "?";
}

static void set_phase(sim *s, sim_phase to, uint64_t now);

// ---------------------------------------------------------------------------------------------
// Output

static void live_line(sim *s, uint64_t now)
{
	sim_live l = {.draining = s->phase >= SIM_PHASE_DRAIN};
	char line[400];

	l.t_s = (double)(now - s->t0_ms) / 1000.0;
	for (size_t i = 0; i < s->next_arrival; i++) {
		const sim_call *c = &s->calls[i];
		if (c->state == SIM_CALL_REFUSED || c->state == SIM_CALL_PENDING)
			continue;
		l.offered++;
		if (c->connected_us) {
			uint64_t ms = (c->connected_us - c->sent_us) / 1000;
			l.answered++;
			l.answer_ms_sum += ms;
			l.answered_in_sl += ms <= SIM_SERVICE_LEVEL_US / 1000;
		}
		if (c->state == SIM_CALL_CONNECTED)
			l.talking++;
		else if (c->state == SIM_CALL_ENDED && !c->connected_us &&
		         c->disposition == RINGBID__DISPOSITION__DISP_ABANDONED)
			l.abandoned++;
		else if (c->state == SIM_CALL_ARRIVING || c->state == SIM_CALL_WAITING ||
		         c->state == SIM_CALL_HANGING_UP)
			l.waiting++;
	}
	sim_agents_count(s, l.agents);
	sim_live_line(&l, line, sizeof(line));
	fprintf(s->live, "%s\n", line);
	fflush(s->live);
}

static void summary(sim *s, uint64_t now)
{
	sim_summary sum = {0};
	sim_call_result *res = calloc(s->next_arrival ? s->next_arrival : 1, sizeof(*res));

	if (res == NULL) {
		fprintf(stderr, "ringbid-sim: out of memory for the summary\n");
		s->exit_code = 1;
		return;
	}
	for (size_t i = 0; i < s->next_arrival; i++) {
		res[i] = s->calls[i].result;
		sum.cut_short += s->calls[i].cut_short;
	}
	sum.seed = s->opt.seed;
	memcpy(sum.digest, s->digest, sizeof(sum.digest));
	sum.time_factor = s->opt.time_factor;
	sum.seconds = s->t0_ms ? (double)(now - s->t0_ms) / 1000.0 : 0;
	sum.agents = s->opt.agents;
	sum.agents_logged_in = sim_agents_logged_in(s);
	sum.scheduled = s->ncalls;
	sim_summary_calls(&sum, res, s->next_arrival);
	sim_summary_dispatch(&sum, s->latency_us, s->nlatency);
	sim_summary_occupancy(&sum, s->state_ms);
	sum.offers = s->offers;
	sum.declines = s->declines;
	sum.breaks = s->breaks;
	sum.sales = s->sales;
	sum.resolved = s->resolved;
	sum.outcomes_supported = s->outcomes_supported;
	sum.surveys_recorded = s->surveys_recorded;
	free(res);
	s->summary_done = true;
	if (s->opt.json) {
		char *json = NULL;
		if (sim_summary_json(&sum, &json) != 0) {
			fprintf(stderr, "ringbid-sim: out of memory for the summary\n");
			s->exit_code = 1;
			return;
		}
		printf("%s\n", json);
		free(json);
	} else {
		printf("\n");
		sim_summary_print(&sum, stdout);
	}
	fflush(stdout);
	if (sum.offered == 0 && s->ncalls > 0)
		s->exit_code = 1; // the broker took none of the calls
}

// ---------------------------------------------------------------------------------------------
// Phases

static void set_phase(sim *s, sim_phase to, uint64_t now)
{
	if (s->phase == to)
		return;
	rb_logf(RB_LOG_DEBUG, NULL, 0, "phase %s -> %s", phase_name(s->phase), phase_name(to));
	s->phase = to;
	s->phase_since_ms = now;
	switch (to) {
	case SIM_PHASE_RUN: {
		uint32_t in = sim_agents_logged_in(s);
		s->t0_ms = now;
		s->next_live_ms = now + (uint64_t)(s->opt.every_s * 1000);
		// Agents' state time counts from here.
		for (uint32_t i = 0; i < s->opt.agents; i++)
			s->agents[i].state_since_ms = now;
		if (!s->opt.quiet)
			fprintf(s->live,
			        "%u of %u agents logged in; %zu callers over %.0f s (seed %" PRIu64
			        ", schedule %s)\n",
			        in, s->opt.agents, s->ncalls, s->opt.duration_s, s->opt.seed,
			        s->digest);
		break;
	}
	case SIM_PHASE_CLOSE:
		sim_agents_account(s, now);
		s->measure_end_ms = now;
		break;
	case SIM_PHASE_LOGOUT:
		// A run that never started (no agent, or stopped while logging in) has nothing
		// to sum up.
		if (s->t0_ms != 0)
			summary(s, now);
		sim_agents_logout(s, now);
		break;
	case SIM_PHASE_DONE:
		uv_timer_stop(&s->tick);
		if (!uv_is_closing((uv_handle_t *)&s->tick))
			uv_close((uv_handle_t *)&s->tick, NULL);
		uv_close((uv_handle_t *)&s->sigint, NULL);
		uv_close((uv_handle_t *)&s->sigterm, NULL);
		sim_agents_free(s);
		sim_callers_free(s);
		break;
	default:
		break;
	}
}

static void advance(sim *s, uint64_t now)
{
	uint64_t in_phase = now - s->phase_since_ms;

	switch (s->phase) {
	case SIM_PHASE_LOGIN:
		if (sim_agents_ready(s) && sim_agents_logged_in(s) > 0) {
			set_phase(s, SIM_PHASE_RUN, now);
		} else if (in_phase >= (uint64_t)(s->opt.login_wait_s * 1000) ||
		           sim_agents_done(s)) {
			if (sim_agents_logged_in(s) == 0) {
				fprintf(stderr,
				        "ringbid-sim: no agent could log in (is the stack up, and "
				        "do "
				        "agents %" PRIu64 "..%" PRIu64
				        " exist with this secret?)\n",
				        s->opt.first_agent, s->opt.first_agent + s->opt.agents - 1);
				s->exit_code = 1;
				set_phase(s, SIM_PHASE_LOGOUT, now);
			} else {
				set_phase(s, SIM_PHASE_RUN, now);
			}
		}
		break;
	case SIM_PHASE_RUN:
		if (s->next_arrival >= s->ncalls &&
		    now >= s->t0_ms + (uint64_t)(s->opt.duration_s * 1000))
			set_phase(s, SIM_PHASE_DRAIN, now);
		break;
	case SIM_PHASE_DRAIN:
		if ((sim_callers_settled(s) && !sim_agents_busy(s)) ||
		    in_phase >= (uint64_t)(s->opt.drain_s * 1000))
			set_phase(s, SIM_PHASE_CLOSE, now);
		break;
	case SIM_PHASE_CLOSE:
		if ((sim_callers_settled(s) && !sim_agents_busy(s)) ||
		    in_phase >= SIM_CLOSE_WAIT_MS)
			set_phase(s, SIM_PHASE_RECONCILE, now);
		break;
	case SIM_PHASE_RECONCILE:
		if (sim_callers_reconciled(s))
			set_phase(s, SIM_PHASE_LOGOUT, now);
		break;
	case SIM_PHASE_LOGOUT:
		if (sim_agents_done(s) || in_phase >= SIM_RUN_LOGOUT_MS)
			set_phase(s, SIM_PHASE_DONE, now);
		break;
	default:
		break;
	}
}

static void on_tick(uv_timer_t *t)
{
	sim *s = t->data;
	uint64_t now = now_ms();

	if (s->phase == SIM_PHASE_DONE)
		return;
	sim_agents_tick(s, now);
	sim_callers_tick(s, now);
	if (s->opt.every_s > 0 && !s->opt.quiet && s->t0_ms && s->phase <= SIM_PHASE_CLOSE &&
	    now >= s->next_live_ms) {
		live_line(s, now);
		s->next_live_ms += (uint64_t)(s->opt.every_s * 1000);
		if (s->next_live_ms <= now)
			s->next_live_ms = now + (uint64_t)(s->opt.every_s * 1000);
	}
	advance(s, now);
}

static void on_signal(uv_signal_t *h, int signum)
{
	sim *s = h->data;
	uint64_t now = now_ms();

	s->signals++;
	if (s->signals == 1 && s->phase < SIM_PHASE_CLOSE) {
		fprintf(stderr, "ringbid-sim: signal %d: ending the run (again to leave at once)\n",
		        signum);
		if (s->phase == SIM_PHASE_LOGIN)
			set_phase(s, SIM_PHASE_LOGOUT, now);
		else
			set_phase(s, SIM_PHASE_CLOSE, now);
		return;
	}
	if (s->signals >= 2) {
		s->exit_code = 130;
		set_phase(s, SIM_PHASE_DONE, now);
	}
}

// ---------------------------------------------------------------------------------------------
// Set-up

int sim_secret_load(const char *path, char *out, size_t n)
{
	FILE *f = fopen(path, "r");
	size_t len;

	if (f == NULL)
		return RB_EIO;
	len = fread(out, 1, n, f);
	bool err = ferror(f) != 0;
	fclose(f);
	if (err) {
		explicit_bzero(out, n);
		return RB_EIO;
	}
	if (len == n) {
		explicit_bzero(out, n);
		return RB_ETOOBIG;
	}
	out[len] = '\0';
	if (len > 0 && out[len - 1] == '\n')
		out[--len] = '\0';
	if (len > 0 && out[len - 1] == '\r')
		out[--len] = '\0';
	if (len == 0 || strlen(out) != len || strchr(out, '\n') != NULL) {
		explicit_bzero(out, n);
		return RB_EINVAL;
	}
	return 0;
}

static int tls_setup(sim *s)
{
	const char *ca = getenv("RINGBID_AGENT_TLS_CA_FILE");
	const char *name = getenv("RINGBID_AGENT_TLS_SERVER_NAME");
	char host[256];
	int rv;

	if (strncmp(s->presence_url, "tls+", 4) != 0)
		return 0;
	if (ca == NULL || *ca == '\0') {
		fprintf(stderr, "ringbid-sim: %s needs RINGBID_AGENT_TLS_CA_FILE\n",
		        s->presence_url);
		return RB_ECONFIG;
	}
	if (name == NULL || *name == '\0') {
		const char *p = strstr(s->presence_url, "://");
		p = p ? p + 3 : s->presence_url;
		snprintf(host, sizeof(host), "%.*s", (int)strcspn(p, ":/"), p);
		name = host;
	}
	if ((rv = nng_tls_config_alloc(&s->tls, NNG_TLS_MODE_CLIENT)) != 0 ||
	    (rv = nng_tls_config_auth_mode(s->tls, NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
	    (rv = nng_tls_config_server_name(s->tls, name)) != 0 ||
	    (rv = nng_tls_config_ca_file(s->tls, ca)) != 0) {
		fprintf(stderr, "ringbid-sim: TLS set-up with %s failed: %s\n", ca,
		        nng_strerror(rv));
		return rb_err_from_nng(rv);
	}
	return 0;
}

static int prepare(sim *s)
{
	sim_schedule_params p = {
	        .seed = s->opt.seed,
	        .rate_per_s = s->opt.rate_per_s,
	        .duration_ms = (uint64_t)(s->opt.duration_s * 1000),
	        .max_calls = s->opt.max_calls,
	        .nprograms = s->opt.nprograms,
	        .talk_dist = s->opt.talk_dist,
	        .talk_mean_s = s->opt.talk_mean_s,
	        .patience_mean_s = s->opt.patience_mean_s,
	        .survey_rate = s->opt.survey_rate,
	};
	int rv = sim_schedule_build(&p, &s->sched, &s->ncalls);

	if (rv != 0) {
		fprintf(stderr, "ringbid-sim: cannot draw the schedule: %s\n", rb_err_str(rv));
		return rv;
	}
	sim_schedule_digest(s->sched, s->ncalls, s->digest);
	s->calls = calloc(s->ncalls ? s->ncalls : 1, sizeof(*s->calls));
	s->latency_us = calloc(s->ncalls ? s->ncalls : 1, sizeof(*s->latency_us));
	if (s->calls == NULL || s->latency_us == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < s->ncalls; i++)
		s->calls[i].agent = -1;
	// Call ids of one run never repeat an earlier run's, whatever the seed: the broker
	// treats a known call id as the same call.
	s->run_id = (rb_now_us() / 1000) ^ ((uint64_t)getpid() << 40);
	return 0;
}

int sim_run(const sim_options *o, const char *secret, const char *presence_url,
            const char *broker_url, const char *token, uint64_t heartbeat_ms)
{
	static sim s; // one per process; large enough not to live on the stack
	int rv;

	memset(&s, 0, sizeof(s));
	s.opt = *o;
	s.secret = secret;
	s.heartbeat_ms = heartbeat_ms;
	s.outcomes_supported = -1;
	s.live = o->json ? stderr : stdout;
	snprintf(s.presence_url, sizeof(s.presence_url), "%s", presence_url);
	snprintf(s.broker_url, sizeof(s.broker_url), "%s", broker_url);
	snprintf(s.token, sizeof(s.token), "%s", token);

	if ((rv = uv_loop_init(&s.loop)) != 0) {
		fprintf(stderr, "ringbid-sim: cannot start the event loop: %s\n", uv_strerror(rv));
		return 1;
	}
	rv = prepare(&s);
	if (rv == 0)
		rv = tls_setup(&s);
	uv_timer_init(&s.loop, &s.tick);
	s.tick.data = &s;
	uv_signal_init(&s.loop, &s.sigint);
	uv_signal_init(&s.loop, &s.sigterm);
	s.sigint.data = s.sigterm.data = &s;
	if (rv == 0)
		rv = sim_callers_start(&s);
	if (rv == 0)
		rv = sim_agents_start(&s);
	if (rv == 0) {
		uv_signal_start(&s.sigint, on_signal, SIGINT);
		uv_signal_start(&s.sigterm, on_signal, SIGTERM);
		s.phase_since_ms = now_ms();
		if (!o->quiet)
			fprintf(s.live,
			        "Logging in %u agents (%" PRIu64 "..%" PRIu64 ") at %s...\n",
			        o->agents, o->first_agent, o->first_agent + o->agents - 1,
			        presence_url);
		uv_timer_start(&s.tick, on_tick, SIM_TICK_MS, SIM_TICK_MS);
	} else {
		s.exit_code = 1;
		set_phase(&s, SIM_PHASE_DONE, now_ms());
	}
	uv_run(&s.loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&s.loop) != 0)
		rb_debug("event loop closed with handles still open");
	if (s.tls)
		nng_tls_config_free(s.tls);
	free(s.agents);
	free(s.calls);
	free(s.sched);
	free(s.latency_us);
	return s.exit_code;
}
