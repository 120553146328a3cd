// ringbid-sim's command line.
#include "options.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_err.h"
#include "rb_pb.h"

const char sim_usage[] =
        "usage: ringbid-sim [options]\n"
        "\n"
        "Drives a running ringbid stack with simulated agents (real presence sessions) and\n"
        "callers arriving as a Poisson process, then prints what happened. The agents must\n"
        "exist (ringbid agent add/import) with ids FIRST..FIRST+N-1 and one shared secret.\n"
        "\n"
        "  --agents N            simulated agents (default 20, at most 10000)\n"
        "  --first-agent ID      id of the first agent (default 1001)\n"
        "  --secret-file FILE    the agents' secret (else $RINGBID_SIM_SECRET_FILE)\n"
        "  --programs A,B        programs the calls go to, evenly (default sales)\n"
        "  --rate R              arrivals per real second; R/min and R/h work too (default 1)\n"
        "  --duration S          real seconds during which callers arrive (default 60)\n"
        "  --calls N             at most N callers (default: no limit)\n"
        "  --time-factor F       simulated seconds per real second for talk, patience, breaks\n"
        "                        and after-call work (default 1; 60: a minute per second)\n"
        "  --talk-mean S         mean talk time, simulated seconds (default 240)\n"
        "  --talk-dist D         exp (default), lognormal or fixed\n"
        "  --patience-mean S     callers' mean patience before hanging up, simulated (120)\n"
        "  --decline-rate P      share of offers an agent declines (default 0.05)\n"
        "  --break-every S       mean simulated time between an agent's breaks (3600; 0 none)\n"
        "  --break-mean S        mean break, simulated seconds (default 300)\n"
        "  --acw-mean S          mean after-call work before ready, simulated (default 15)\n"
        "  --survey-rate P       share of callers who answer the survey (default 0.5)\n"
        "  --seed N              the run's seed (default: from the clock; printed)\n"
        "  --drain S             after the arrivals, wait up to S real s for calls (60)\n"
        "  --login-wait S        wait up to S for agents to log in (default 60)\n"
        "  --every S             live line period in seconds (default 1; 0: none)\n"
        "  --json                the summary as one JSON object on stdout (live lines: stderr)\n"
        "  --quiet               no live lines\n"
        "  --help, --version\n"
        "\n"
        "The stack is found as ringbid-agent finds it: $RINGBID_HOME/env, RINGBID_PRESENCE_URL,\n"
        "RINGBID_BROKER_URL, RINGBID_SERVICE_TOKEN. See docs/simulator.md.\n";

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
	return RB_EINVAL;
}

static int parse_double(const char *s, double min, double max, double *out)
{
	char *end;

	if (s == NULL || *s == '\0')
		return RB_EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
		return RB_EINVAL;
	*out = v;
	return 0;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;

	if (s == NULL || *s < '0' || *s > '9')
		return RB_EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return RB_EINVAL;
	*out = v;
	return 0;
}

int sim_parse_rate(const char *text, double *per_s)
{
	char num[64];
	const char *slash = text ? strchr(text, '/') : NULL;
	double unit = 1.0, v;

	if (text == NULL)
		return RB_EINVAL;
	if (slash) {
		if (strcmp(slash, "/s") == 0)
			unit = 1.0;
		else if (strcmp(slash, "/min") == 0)
			unit = 60.0;
		else if (strcmp(slash, "/h") == 0)
			unit = 3600.0;
		else
			return RB_EINVAL;
		if ((size_t)(slash - text) >= sizeof(num))
			return RB_EINVAL;
		snprintf(num, sizeof(num), "%.*s", (int)(slash - text), text);
	} else {
		snprintf(num, sizeof(num), "%s", text);
	}
	if (parse_double(num, 0, 1e9, &v) != 0 || !(v > 0))
		return RB_EINVAL;
	v /= unit;
	if (v > 1e5)
		return RB_EINVAL;
	*per_s = v;
	return 0;
}

static int parse_programs(const char *text, sim_options *o, char *err, size_t n)
{
	const char *p = text;

	o->nprograms = 0;
	while (*p) {
		size_t len = strcspn(p, ",");
		char id[80];
		if (len == 0 || len > 64)
			return fail(err, n, "--programs: bad program list '%s'", text);
		if (o->nprograms == SIM_PROGRAMS_MAX)
			return fail(err, n, "--programs: at most %d programs", SIM_PROGRAMS_MAX);
		snprintf(id, sizeof(id), "%.*s", (int)len, p);
		if (!rb_valid_id(id, 64))
			return fail(err, n, "--programs: bad program id '%s'", id);
		memcpy(o->programs[o->nprograms++], id, len + 1);
		p += len;
		if (*p == ',') {
			p++;
			if (*p == '\0')
				return fail(err, n, "--programs: bad program list '%s'", text);
		}
	}
	return o->nprograms ? 0 : fail(err, n, "--programs: no program given");
}

typedef struct dbl_opt {
	const char *name;
	double *dst;
	double min, max;
} dbl_opt;

static bool known_option(const char *a, const dbl_opt *dbls, size_t ndbls)
{
	static const char *const others[] = {"--agents",   "--first-agent", "--secret-file",
	                                     "--programs", "--program",     "--rate",
	                                     "--calls",    "--talk-dist",   "--seed"};

	for (size_t k = 0; k < ndbls; k++)
		if (strcmp(a, dbls[k].name) == 0)
			return true;
	for (size_t k = 0; k < sizeof(others) / sizeof(others[0]); k++)
		if (strcmp(a, others[k]) == 0)
			return true;
	return false;
}

int sim_options_parse(int argc, char **argv, sim_options *o, char *err, size_t n)
{
	memset(o, 0, sizeof(*o));
	o->agents = 20;
	o->first_agent = 1001;
	snprintf(o->programs[0], sizeof(o->programs[0]), "sales");
	o->nprograms = 1;
	o->rate_per_s = 1.0;
	o->duration_s = 60;
	o->time_factor = 1;
	o->talk_dist = SIM_DIST_EXP;
	o->talk_mean_s = 240;
	o->patience_mean_s = 120;
	o->decline_rate = 0.05;
	o->break_every_s = 3600;
	o->break_mean_s = 300;
	o->acw_mean_s = 15;
	o->survey_rate = 0.5;
	o->drain_s = 60;
	o->login_wait_s = 60;
	o->every_s = 1;

	const dbl_opt dbls[] = {
	        {"--duration", &o->duration_s, 0.001, 7 * 86400.0},
	        {"--time-factor", &o->time_factor, 0.001, 100000},
	        {"--talk-mean", &o->talk_mean_s, 1, 86400},
	        {"--patience-mean", &o->patience_mean_s, 1, 86400},
	        {"--decline-rate", &o->decline_rate, 0, 1},
	        {"--break-every", &o->break_every_s, 0, 7 * 86400.0},
	        {"--break-mean", &o->break_mean_s, 1, 86400},
	        {"--acw-mean", &o->acw_mean_s, 0, 86400},
	        {"--survey-rate", &o->survey_rate, 0, 1},
	        {"--drain", &o->drain_s, 0, 86400},
	        {"--login-wait", &o->login_wait_s, 0, 3600},
	        {"--every", &o->every_s, 0, 3600},
	};

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool matched = false;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			o->help = true;
			return 0;
		}
		if (strcmp(a, "--version") == 0) {
			o->version = true;
			return 0;
		}
		if (strcmp(a, "--json") == 0) {
			o->json = true;
			continue;
		}
		if (strcmp(a, "--quiet") == 0) {
			o->quiet = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0)
			return fail(err, n, "unexpected argument '%s'", a);
		if (strcmp(a, "--secret") == 0)
			return fail(err, n,
			            "a secret is never taken on the command line (others can "
			            "read it there): use --secret-file");
		if (!known_option(a, dbls, sizeof(dbls) / sizeof(dbls[0])))
			return fail(err, n, "unknown option '%s' (see --help)", a);
		if (v == NULL)
			return fail(err, n, "%s needs a value", a);
		for (size_t k = 0; k < sizeof(dbls) / sizeof(dbls[0]); k++) {
			if (strcmp(a, dbls[k].name) != 0)
				continue;
			if (parse_double(v, dbls[k].min, dbls[k].max, dbls[k].dst) != 0)
				return fail(err, n, "%s must be a number from %g to %g", a,
				            dbls[k].min, dbls[k].max);
			matched = true;
			break;
		}
		i++;
		if (matched)
			continue;
		uint64_t u;
		if (strcmp(a, "--agents") == 0) {
			if (parse_u64(v, 1, SIM_AGENTS_MAX, &u) != 0)
				return fail(err, n, "--agents must be 1 to %d", SIM_AGENTS_MAX);
			o->agents = (uint32_t)u;
		} else if (strcmp(a, "--first-agent") == 0) {
			if (parse_u64(v, 1, (uint64_t)1 << 52, &o->first_agent) != 0)
				return fail(err, n, "--first-agent must be a positive agent id");
		} else if (strcmp(a, "--secret-file") == 0) {
			if (*v == '\0')
				return fail(err, n, "--secret-file needs a file name");
			o->secret_file = v;
		} else if (strcmp(a, "--programs") == 0 || strcmp(a, "--program") == 0) {
			if (parse_programs(v, o, err, n) != 0)
				return RB_EINVAL;
		} else if (strcmp(a, "--rate") == 0) {
			if (sim_parse_rate(v, &o->rate_per_s) != 0)
				return fail(err, n,
				            "--rate must be calls per second (> 0, at most "
				            "100000), optionally as R/min or R/h");
		} else if (strcmp(a, "--calls") == 0) {
			if (parse_u64(v, 1, SIM_CALLS_MAX, &o->max_calls) != 0)
				return fail(err, n, "--calls must be 1 to %d", SIM_CALLS_MAX);
		} else if (strcmp(a, "--talk-dist") == 0) {
			if (strcmp(v, "exp") == 0 || strcmp(v, "exponential") == 0)
				o->talk_dist = SIM_DIST_EXP;
			else if (strcmp(v, "lognormal") == 0)
				o->talk_dist = SIM_DIST_LOGNORMAL;
			else if (strcmp(v, "fixed") == 0)
				o->talk_dist = SIM_DIST_FIXED;
			else
				return fail(err, n, "--talk-dist must be exp, lognormal or fixed");
		} else if (strcmp(a, "--seed") == 0) {
			if (parse_u64(v, 0, UINT64_MAX, &o->seed) != 0)
				return fail(err, n, "--seed must be a whole number (0 to 2^64-1)");
			o->seed_set = true;
		} else {
			return fail(err, n, "unknown option '%s' (see --help)", a);
		}
	}
	if (o->first_agent + o->agents - 1 < o->first_agent)
		return fail(err, n, "--first-agent is too large");
	return 0;
}
