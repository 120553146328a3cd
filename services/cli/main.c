// ringbid: the operators' command-line tool (roster, calls, wallboard, the local stack).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "certs.h"
#include "cli.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_svc.h"

typedef struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
} command;

static const command commands[] = {
        {"up", cli_cmd_up, "start the local stack (private PostgreSQL + the four services)"},
        {"down", cli_cmd_down, "stop the local stack"},
        {"db", cli_cmd_db, "db migrate: apply the database migrations"},
        {"program", cli_cmd_program, "add, set, list, show client programs"},
        {"agent", cli_cmd_agent, "add, set, list, show, import agents"},
        {"call", cli_cmd_call, "place a call to a program and follow it"},
        {"hangup", cli_cmd_hangup, "hang up a call as its caller"},
        {"call-info", cli_cmd_call_info, "show a call"},
        {"status", cli_cmd_status, "the wallboard: agents, queue, service level, ASA"},
        {"explain", cli_cmd_explain, "why a call went to the agent it went to"},
        {"outcome", cli_cmd_outcome, "record a call's survey, resolution, sale or QA review"},
        {"scores", cli_cmd_scores, "scores recompute: recompute agents' performance scores"},
        {"report", cli_cmd_report, "report lift: score routing against exploration"},
        {"rate", cli_cmd_rate, "set, list pay rates per program and agent"},
        {"payroll", cli_cmd_payroll, "pay periods: list, close, export, explain"},
        {"token", cli_cmd_token, "create, list, revoke API tokens (finance, supervisor)"},
        {"certs", cli_cmd_certs, "certs dev: a private CA and presence's TLS certificate"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
	fputs("usage: ringbid COMMAND [ARGS...]\n"
	      "\n"
	      "ringbid places inbound calls with the best available home agent and pays agents\n"
	      "for their talk time. This tool runs a local stack, keeps the roster and follows\n"
	      "calls.\n"
	      "\n"
	      "commands:\n",
	      f);
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fputs("\n"
	      "'ringbid COMMAND --help' describes each command. Settings come from the\n"
	      "environment and $RINGBID_HOME/env (RINGBID_HOME defaults to ./var), which\n"
	      "'ringbid up' writes. Exit status: 0 ok, 1 error, 2 bad command line, 4 a call\n"
	      "got no agent.\n",
	      f);
}

int main(int argc, char **argv)
{
	const command *cmd = NULL;
	int rc;

	if (argc < 2) {
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("ringbid %s\n", RB_VERSION);
		return CLI_EXIT_OK;
	}
	for (size_t i = 0; i < NCOMMANDS && !cmd; i++) {
		if (strcmp(argv[1], commands[i].name) == 0)
			cmd = &commands[i];
	}
	if (!cmd) {
		fprintf(stderr, "ringbid: unknown command '%s' (see 'ringbid --help')\n", argv[1]);
		return CLI_EXIT_USAGE;
	}
	// Library warnings are JSON lines meant for services' logs; an operator needs only the
	// serious ones unless RINGBID_LOG_LEVEL asks for more.
	rb_log_init("cli");
	if (!getenv("RINGBID_LOG_LEVEL"))
		rb_log_set_level(RB_LOG_ERROR);
	// libsodium for random ids and token hashes. Not rb_secret_init: that also derives an
	// argon2id dummy hash (tens of MiB, a third of a second) that only login checks need, and
	// rb_secret_hash initialises itself when `agent add` hashes a secret.
	if (sodium_init() < 0) {
		cli_fail("cannot initialise libsodium");
		return CLI_EXIT_ERR;
	}
	if (cmd->fn != cli_cmd_up) {
		rc = rb_config_load_home();
		if (rc < 0) {
			char home[4096];

			rb_config_home(home, sizeof home);
			cli_fail("cannot read %s/env: %s", home, rb_err_str(rc));
			return CLI_EXIT_ERR;
		}
	}
	rc = cmd->fn(argc - 2, argv + 2);
	fflush(stdout);
	return rc;
}
