// The skeleton every service shares: flags, logging, the loop, signals, the janitor timer and
// the admin HTTP port.
#ifndef RB_SVC_H
#define RB_SVC_H
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "rb_http.h"

typedef struct rb_svc rb_svc;
typedef void (*rb_svc_fn)(rb_svc *svc, void *arg);

struct rb_svc {
	const char *name; // "broker"
	uv_loop_t loop;
	rb_http *http;
	uv_signal_t sigterm, sigint;
	uv_timer_t janitor;
	uint64_t janitor_ms;
	rb_svc_fn on_stop;    // SIGTERM/SIGINT: drain, then call rb_svc_close_handles
	rb_svc_fn on_janitor; // periodic work (DESIGN §9.7)
	void *arg;
	bool stopping;
	char token[128];  // shared service token
	unsigned handles; // rb_svc's own bookkeeping: which of its handles are open
};

// Handles --help (prints usage, exits 0) and --version; sets up logging, the loop, signals and
// the HTTP port (address from http_env, default port base + http_port_offset; the HTTP port is
// started by rb_svc_run, so routes can be added in between). Returns 0 or a code; exits on
// --help/--version.
int rb_svc_init(rb_svc *svc, const char *name, int argc, char **argv, const char *usage,
                const char *http_env, int http_port_offset);
// Starts the janitor every janitor_ms (0: none), starts HTTP, runs the loop until every handle
// is closed. Returns 0 or a code.
int rb_svc_run(rb_svc *svc);
// Called by the service from on_stop once it has drained: stops signals, the janitor and HTTP.
// The service closes its own handles (buses, db) itself.
void rb_svc_close_handles(rb_svc *svc);
// Frees what rb_svc_init made (after rb_svc_run returned).
void rb_svc_fini(rb_svc *svc);

#define RB_VERSION "0.1.0"

#endif
