// The service skeleton: flags, logging, configuration, the loop, signals, janitor and HTTP port.
#include "rb_svc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_secret.h"

// Services write their own text; one that does not start with a usage line gets ours first.
static void print_usage(FILE *f, const char *name, const char *usage)
{
	if (usage == NULL || strncasecmp(usage, "usage:", 6) != 0)
		fprintf(f, "usage: ringbid-%s [--help] [--version]\n", name);
	if (usage == NULL || usage[0] == '\0')
		return;
	if (strncasecmp(usage, "usage:", 6) != 0)
		fputc('\n', f);
	fputs(usage, f);
	if (usage[strlen(usage) - 1] != '\n')
		fputc('\n', f);
}

static void on_signal(uv_signal_t *handle, int signum)
{
	rb_svc *svc = handle->data;

	if (svc->stopping) {
		// The operator insists: whatever is still draining is abandoned.
		rb_warn("second signal %d while stopping: exiting now", signum);
		_exit(128 + signum);
	}
	svc->stopping = true;
	rb_info("signal %d: stopping", signum);
	if (svc->on_stop != NULL)
		svc->on_stop(svc, svc->arg);
	else
		rb_svc_close_handles(svc);
}

static void on_janitor(uv_timer_t *timer)
{
	rb_svc *svc = timer->data;

	// It keeps running while the service drains (retries may be what the drain waits for),
	// until rb_svc_close_handles.
	if (svc->on_janitor != NULL)
		svc->on_janitor(svc, svc->arg);
}

// Handles owned by the skeleton; which of them exist, so that closing is idempotent.
enum {
	SVC_LOOP = 1 << 0,
	SVC_SIGTERM = 1 << 1,
	SVC_SIGINT = 1 << 2,
	SVC_JANITOR = 1 << 3,
};

static int ignore_sigpipe(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	// A peer closing a socket mid-write must be an error return, not the end of the process.
	return sigaction(SIGPIPE, &sa, NULL) == 0 ? 0 : RB_EIO;
}

int rb_svc_init(rb_svc *svc, const char *name, int argc, char **argv, const char *usage,
                const char *http_env, int http_port_offset)
{
	rb_svc_fn on_stop;
	rb_svc_fn on_janitor_fn;
	void *arg;
	uint64_t janitor_ms;
	char addr[128];
	int rv;

	if (svc == NULL || name == NULL)
		return RB_EINVAL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			print_usage(stdout, name, usage);
			exit(0);
		}
		if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
			printf("ringbid-%s %s\n", name, RB_VERSION);
			exit(0);
		}
	}
	if (argc > 1) {
		fprintf(stderr, "ringbid-%s: unknown argument '%s'\n", name, argv[1]);
		print_usage(stderr, name, usage);
		return RB_EINVAL;
	}

	// Callbacks a service set before init survive it; everything else starts from zero.
	on_stop = svc->on_stop;
	on_janitor_fn = svc->on_janitor;
	arg = svc->arg;
	janitor_ms = svc->janitor_ms;
	memset(svc, 0, sizeof(*svc));
	svc->on_stop = on_stop;
	svc->on_janitor = on_janitor_fn;
	svc->arg = arg;
	svc->janitor_ms = janitor_ms;
	svc->name = name;

	rb_log_init(name);
	if ((rv = ignore_sigpipe()) != 0) {
		rb_error("cannot ignore SIGPIPE");
		return rv;
	}
	if ((rv = rb_config_load_home()) != 0) {
		rb_error("cannot load the environment file: %s", rb_err_str(rv));
		return rv;
	}
	if ((rv = rb_secret_init()) != 0) {
		rb_error("cannot initialise libsodium: %s", rb_err_str(rv));
		return rv;
	}
	if ((rv = rb_config_service_token(svc->token, sizeof(svc->token))) != 0) {
		rb_error("no usable service token: %s", rb_err_str(rv));
		return rv;
	}

	if ((rv = uv_loop_init(&svc->loop)) != 0) {
		rb_error("uv_loop_init: %s", uv_strerror(rv));
		return RB_EIO;
	}
	svc->handles |= SVC_LOOP;
	if (uv_signal_init(&svc->loop, &svc->sigterm) != 0) {
		rv = RB_EIO;
		goto fail;
	}
	svc->sigterm.data = svc;
	svc->handles |= SVC_SIGTERM;
	if (uv_signal_start(&svc->sigterm, on_signal, SIGTERM) != 0) {
		rb_error("cannot watch SIGTERM");
		rv = RB_EIO;
		goto fail;
	}
	if (uv_signal_init(&svc->loop, &svc->sigint) != 0) {
		rv = RB_EIO;
		goto fail;
	}
	svc->sigint.data = svc;
	svc->handles |= SVC_SIGINT;
	if (uv_signal_start(&svc->sigint, on_signal, SIGINT) != 0) {
		rb_error("cannot watch SIGINT");
		rv = RB_EIO;
		goto fail;
	}
	if (uv_timer_init(&svc->loop, &svc->janitor) != 0) {
		rv = RB_EIO;
		goto fail;
	}
	svc->janitor.data = svc;
	svc->handles |= SVC_JANITOR;

	if (http_env != NULL || http_port_offset > 0) {
		if ((rv = rb_config_http(http_env, http_port_offset, addr, sizeof(addr))) != 0) {
			rb_error("bad HTTP address in %s: %s",
			         http_env != NULL ? http_env : "(none)", rb_err_str(rv));
			goto fail;
		}
		if ((rv = rb_http_new(&svc->loop, addr, &svc->http)) != 0) {
			rb_error("cannot set up HTTP on %s: %s", addr, rb_err_str(rv));
			goto fail;
		}
	}
	return 0;

fail:
	rb_svc_close_handles(svc);
	rb_svc_fini(svc);
	return rv;
}

int rb_svc_run(rb_svc *svc)
{
	int rv;

	if (svc == NULL || !(svc->handles & SVC_LOOP))
		return RB_EINVAL;
	if (svc->janitor_ms > 0 && svc->on_janitor != NULL && (svc->handles & SVC_JANITOR))
		uv_timer_start(&svc->janitor, on_janitor, svc->janitor_ms, svc->janitor_ms);
	if (svc->http != NULL && (rv = rb_http_start(svc->http)) != 0) {
		rb_error("cannot start the HTTP port: %s", rb_err_str(rv));
		return rv;
	}
	rb_info("started ringbid-%s %s", svc->name, RB_VERSION);
	uv_run(&svc->loop, UV_RUN_DEFAULT);
	rb_info("stopped ringbid-%s %s", svc->name, RB_VERSION);
	return 0;
}

void rb_svc_close_handles(rb_svc *svc)
{
	if (svc == NULL)
		return;
	if (svc->handles & SVC_SIGTERM) {
		uv_close((uv_handle_t *)&svc->sigterm, NULL);
		svc->handles &= ~(unsigned)SVC_SIGTERM;
	}
	if (svc->handles & SVC_SIGINT) {
		uv_close((uv_handle_t *)&svc->sigint, NULL);
		svc->handles &= ~(unsigned)SVC_SIGINT;
	}
	if (svc->handles & SVC_JANITOR) {
		uv_close((uv_handle_t *)&svc->janitor, NULL);
		svc->handles &= ~(unsigned)SVC_JANITOR;
	}
	if (svc->http != NULL) {
		rb_http_free(svc->http);
		svc->http = NULL;
	}
}

static void walk_close(uv_handle_t *handle, void *arg)
{
	(void)arg;
	if (!uv_is_closing(handle))
		uv_close(handle, NULL);
}

void rb_svc_fini(rb_svc *svc)
{
	if (svc == NULL)
		return;
	rb_svc_close_handles(svc);
	if (svc->handles & SVC_LOOP) {
		// Let pending close callbacks run. A handle a service forgot would keep the loop
		// from closing; it is closed here (without its owner's callback) so the loop can
		// go.
		uv_run(&svc->loop, UV_RUN_NOWAIT);
		if (uv_loop_close(&svc->loop) == UV_EBUSY) {
			rb_warn("handles still open at exit; closing them");
			uv_walk(&svc->loop, walk_close, NULL);
			uv_run(&svc->loop, UV_RUN_DEFAULT);
			uv_loop_close(&svc->loop);
		}
		svc->handles &= ~(unsigned)SVC_LOOP;
	}
	rb_metrics_fini();
}
