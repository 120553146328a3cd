// ringbid-sim: simulated agents and callers against a running ringbid stack.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "options.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_svc.h"
#include "rb_time.h"
#include "session.h"
#include "sim.h"

int main(int argc, char **argv)
{
	sim_options o;
	char err[512], secret[SIM_SECRET_MAX + 2], presence[512], broker[512], token[256];
	const char *secret_file;
	long long heartbeat_ms = 0;
	int rv;

	if (sim_options_parse(argc, argv, &o, err, sizeof(err)) != 0) {
		fprintf(stderr, "ringbid-sim: %s\n", err);
		return 2;
	}
	if (o.help) {
		fputs(sim_usage, stdout);
		return 0;
	}
	if (o.version) {
		printf("ringbid-sim %s\n", RB_VERSION);
		return 0;
	}
	rb_log_init("sim");
	// The live lines and the summary are the output; routine log lines would bury them.
	if (getenv("RINGBID_LOG_LEVEL") == NULL)
		rb_log_set_level(RB_LOG_WARN);
	signal(SIGPIPE, SIG_IGN);
	if ((rv = rb_config_load_home()) != 0)
		fprintf(stderr, "ringbid-sim: ignoring $RINGBID_HOME/env: %s\n", rb_err_str(rv));

	secret_file = o.secret_file ? o.secret_file : getenv("RINGBID_SIM_SECRET_FILE");
	if (secret_file == NULL || *secret_file == '\0') {
		fprintf(stderr, "ringbid-sim: the agents' secret is needed: --secret-file FILE or "
		                "RINGBID_SIM_SECRET_FILE\n");
		return 2;
	}
	if ((rv = sim_secret_load(secret_file, secret, sizeof(secret))) != 0) {
		fprintf(stderr, "ringbid-sim: cannot use the secret in %s: %s\n", secret_file,
		        rv == RB_EINVAL ? "it must be one non-empty line" : rb_err_str(rv));
		return 2;
	}
	if (rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, presence,
	                  sizeof(presence)) != 0 ||
	    rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, broker, sizeof(broker)) !=
	            0) {
		fprintf(stderr, "ringbid-sim: bad RINGBID_PORT_BASE or service URL\n");
		explicit_bzero(secret, sizeof(secret));
		return 2;
	}
	// Several presence addresses (a list, as benchmarks use) are not for the simulator.
	char *comma = strchr(presence, ',');
	if (comma)
		*comma = '\0';
	if (rb_config_service_token(token, sizeof(token)) != 0) {
		fprintf(stderr,
		        "ringbid-sim: cannot read the service token (RINGBID_SERVICE_TOKEN)\n");
		explicit_bzero(secret, sizeof(secret));
		return 2;
	}
	if (rb_config_ms("RINGBID_HEARTBEAT_MS", 5000, 10, 60000, &heartbeat_ms) != 0) {
		fprintf(stderr, "ringbid-sim: RINGBID_HEARTBEAT_MS must be 10 ms to 60 s\n");
		explicit_bzero(secret, sizeof(secret));
		return 2;
	}
	if (!o.seed_set) {
		// Printed in the summary, so that an interesting run can be repeated.
		o.seed = rb_now_us() % 1000000000ULL;
	}
	rv = sim_run(&o, secret, presence, broker, token, (uint64_t)heartbeat_ms);
	explicit_bzero(secret, sizeof(secret));
	explicit_bzero(token, sizeof(token));
	return rv;
}
