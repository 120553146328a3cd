// The agent client's command line and where its secret comes from.
#include "options.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "rb_err.h"

const char agent_usage[] =
        "Usage: ringbid-agent --agent ID [--secret-file FILE] [--url URL] [--auto-answer SECONDS]\n"
        "                     [--sale-every N] [--json] [--decline] [--ignore-offers] "
        "[--no-ready]\n"
        "                     [--help] [--version]\n"
        "\n"
        "Logs a remote agent in to ringbid's presence service, takes offered calls and keeps\n"
        "the session alive.\n"
        "\n"
        "  --agent ID             the agent's numeric id (required)\n"
        "  --secret-file FILE     file holding the agent's secret; otherwise the file named by\n"
        "                         RINGBID_AGENT_SECRET_FILE, otherwise RINGBID_AGENT_SECRET.\n"
        "                         A secret is never accepted on the command line.\n"
        "  --url URL              presence's agent address (default RINGBID_PRESENCE_URL, else\n"
        "                         tcp://127.0.0.1:<RINGBID_PORT_BASE+5>)\n"
        "  --auto-answer SECONDS  answer by itself: go ready, accept every offer, end each call\n"
        "                         after SECONDS of talk (decimals allowed), go ready again\n"
        "  --sale-every N         with --auto-answer: mark every Nth call a sale (1..1000000)\n"
        "  --decline              answer by itself, declining every offer\n"
        "  --ignore-offers        answer by itself, never answering offers (they time out)\n"
        "  --no-ready             with the options above: never go ready by itself\n"
        "  --json                 one JSON object per line on stdout instead of sentences\n"
        "  --help, --version\n"
        "\n"
        "Commands (one per line on stdin): ready, pause, accept (y), decline (n),\n"
        "end [sale] [resolved], earnings, status, logout, quit.\n"
        "\n"
        "Exit status: 0 logged out, 1 failure, 2 usage or no secret, 3 login refused.\n";

static int fail(char *err, size_t errn, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errn, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errn, fmt, ap);
	va_end(ap);
	return RB_EINVAL;
}

static int parse_id(const char *text, uint64_t *out)
{
	uint64_t v = 0;

	if (text == NULL || *text == '\0' || strlen(text) > 19)
		return RB_EINVAL;
	for (const char *p = text; *p; p++) {
		if (*p < '0' || *p > '9')
			return RB_EINVAL;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v == 0 || v > (uint64_t)INT64_MAX)
		return RB_EINVAL;
	*out = v;
	return 0;
}

int agent_parse_seconds(const char *text, uint64_t *ms)
{
	uint64_t whole = 0, frac = 0;
	int whole_digits = 0, frac_digits = 0;
	const char *p = text;

	if (text == NULL)
		return RB_EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (++whole_digits > 6)
			return RB_EINVAL;
		whole = whole * 10 + (uint64_t)(*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			// Milliseconds are the finest a timer here can keep: further digits only
			// have to be digits.
			if (frac_digits < 3) {
				frac = frac * 10 + (uint64_t)(*p - '0');
				frac_digits++;
			} else if (++frac_digits > 9) {
				return RB_EINVAL;
			}
		}
		if (frac_digits == 0 && whole_digits == 0)
			return RB_EINVAL;
	} else if (whole_digits == 0) {
		return RB_EINVAL;
	}
	if (*p != '\0')
		return RB_EINVAL;
	for (int i = frac_digits < 3 ? frac_digits : 3; i < 3; i++)
		frac *= 10;
	if (whole > AGENT_MAX_TALK_S || (whole == AGENT_MAX_TALK_S && frac > 0))
		return RB_EINVAL;
	*ms = whole * 1000 + frac;
	return 0;
}

// "--name=value" or "--name value": the value, or NULL when missing.
static const char *take_value(int argc, char **argv, int *i, const char *name)
{
	const char *arg = argv[*i];
	size_t n = strlen(name);

	if (arg[n] == '=')
		return arg + n + 1;
	if (*i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

// True when arg is --name or --name=...
static bool is_opt(const char *arg, const char *name)
{
	size_t n = strlen(name);
	return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

int agent_options_parse(int argc, char **argv, agent_options *o, char *err, size_t errn)
{
	bool have_agent = false;

	memset(o, 0, sizeof(*o));
	err[0] = '\0';
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *v;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			o->help = true;
		} else if (strcmp(arg, "--version") == 0) {
			o->version = true;
		} else if (is_opt(arg, "--secret") || is_opt(arg, "--password")) {
			return fail(
			        err, errn,
			        "%.10s is refused: a secret on the command line is visible to "
			        "every "
			        "user of this computer. Put it in a file readable only by you and "
			        "use --secret-file FILE (or RINGBID_AGENT_SECRET_FILE).",
			        is_opt(arg, "--secret") ? "--secret" : "--password");
		} else if (is_opt(arg, "--agent")) {
			v = take_value(argc, argv, &i, "--agent");
			if (v == NULL || parse_id(v, &o->agent_id) != 0)
				return fail(
				        err, errn,
				        "--agent needs a positive numeric agent id (got '%.40s')",
				        v ? v : "");
			have_agent = true;
		} else if (is_opt(arg, "--secret-file")) {
			v = take_value(argc, argv, &i, "--secret-file");
			if (v == NULL || *v == '\0')
				return fail(err, errn, "--secret-file needs a file name");
			o->secret_file = v;
		} else if (is_opt(arg, "--url")) {
			v = take_value(argc, argv, &i, "--url");
			if (v == NULL || *v == '\0')
				return fail(err, errn,
				            "--url needs an address such as tcp://host:port");
			o->url = v;
		} else if (is_opt(arg, "--auto-answer")) {
			v = take_value(argc, argv, &i, "--auto-answer");
			if (v == NULL || agent_parse_seconds(v, &o->talk_ms) != 0)
				return fail(err, errn,
				            "--auto-answer needs SECONDS of talk time, such as 30 "
				            "or 0.5 "
				            "(got '%.40s')",
				            v ? v : "");
			o->auto_answer = true;
		} else if (is_opt(arg, "--sale-every")) {
			uint64_t every = 0;
			v = take_value(argc, argv, &i, "--sale-every");
			if (v == NULL || parse_id(v, &every) != 0 || every > 1000000)
				return fail(err, errn,
				            "--sale-every needs a whole number of calls from 1 to "
				            "1000000 (got '%.40s')",
				            v ? v : "");
			o->sale_every = (uint32_t)every;
		} else if (strcmp(arg, "--json") == 0) {
			o->json = true;
		} else if (strcmp(arg, "--decline") == 0) {
			o->decline = true;
		} else if (strcmp(arg, "--ignore-offers") == 0) {
			o->ignore_offers = true;
		} else if (strcmp(arg, "--no-ready") == 0) {
			o->no_ready = true;
		} else {
			return fail(err, errn, "unknown argument '%.60s' (see --help)", arg);
		}
	}
	if (o->help || o->version)
		return 0;
	if (!have_agent)
		return fail(err, errn, "--agent ID is required (see --help)");
	if (o->decline && o->ignore_offers)
		return fail(err, errn, "--decline and --ignore-offers exclude each other");
	if (o->sale_every != 0 && !o->auto_answer)
		return fail(err, errn, "--sale-every only works with --auto-answer");
	return 0;
}

agent_offer_policy agent_options_policy(const agent_options *o)
{
	if (o->decline)
		return AGENT_OFFERS_DECLINE;
	if (o->ignore_offers)
		return AGENT_OFFERS_IGNORE;
	if (o->auto_answer)
		return AGENT_OFFERS_ACCEPT;
	return AGENT_OFFERS_ASK;
}

bool agent_options_auto_ready(const agent_options *o)
{
	return agent_options_policy(o) != AGENT_OFFERS_ASK && !o->no_ready;
}

// Checks a secret's text and copies it into out.
static int secret_store(const char *text, size_t len, const char *what, char *out, size_t n,
                        char *err, size_t errn)
{
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		len--;
	if (len == 0) {
		snprintf(err, errn, "the secret in %s is empty", what);
		return RB_EINVAL;
	}
	if (len > AGENT_SECRET_MAX || len >= n) {
		snprintf(err, errn, "the secret in %s is longer than %d bytes", what,
		         AGENT_SECRET_MAX);
		return RB_ETOOBIG;
	}
	if (memchr(text, '\n', len) || memchr(text, '\r', len) || memchr(text, '\0', len)) {
		snprintf(err, errn, "the secret in %s must be a single line", what);
		return RB_EINVAL;
	}
	memcpy(out, text, len);
	out[len] = '\0';
	return 0;
}

static int secret_from_file(const char *path, const char *what, char *out, size_t n, char *err,
                            size_t errn)
{
	char buf[AGENT_SECRET_MAX + 4];
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(err, errn, "cannot read the secret file %s (%s): %s", path, what,
		         strerror(errno));
		return RB_EIO;
	}
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errn, "cannot read the secret file %s (%s): %s", path, what,
			         strerror(errno));
			close(fd);
			explicit_bzero(buf, sizeof(buf));
			return RB_EIO;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		if (len == sizeof(buf))
			break;
	}
	close(fd);
	char label[300];
	snprintf(label, sizeof(label), "%s", path);
	int rv = secret_store(buf, len, label, out, n, err, errn);
	explicit_bzero(buf, sizeof(buf));
	return rv;
}

int agent_secret_load(const agent_options *o, char *out, size_t n, const char **source, char *err,
                      size_t errn)
{
	const char *env;

	err[0] = '\0';
	if (o->secret_file) {
		*source = "--secret-file";
		return secret_from_file(o->secret_file, "--secret-file", out, n, err, errn);
	}
	env = getenv("RINGBID_AGENT_SECRET_FILE");
	if (env && *env) {
		*source = "RINGBID_AGENT_SECRET_FILE";
		return secret_from_file(env, "RINGBID_AGENT_SECRET_FILE", out, n, err, errn);
	}
	env = getenv("RINGBID_AGENT_SECRET");
	if (env && *env) {
		*source = "RINGBID_AGENT_SECRET";
		return secret_store(env, strlen(env), "RINGBID_AGENT_SECRET", out, n, err, errn);
	}
	*source = "";
	snprintf(err, errn,
	         "no secret: use --secret-file FILE, or set RINGBID_AGENT_SECRET_FILE or "
	         "RINGBID_AGENT_SECRET");
	return RB_ENOTFOUND;
}
