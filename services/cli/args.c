// Command-line option parsing for ringbid's commands: long options only, unknown ones refused.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "rb_err.h"

static cli_opt *find_opt(cli_opt *opts, size_t nopts, const char *name, size_t len)
{
	for (size_t i = 0; i < nopts; i++) {
		if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
			return &opts[i];
	}
	return NULL;
}

__attribute__((format(printf, 3, 4))) static int bad(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return RB_EINVAL;
}

int cli_args_parse(int argc, char **argv, cli_opt *opts, size_t nopts, const char **pos,
                   size_t maxpos, size_t *npos, char *err, size_t errlen)
{
	bool only_pos = false;
	bool help = false;

	*npos = 0;
	if (errlen > 0)
		err[0] = '\0';
	for (size_t i = 0; i < nopts; i++) {
		opts[i].value = NULL;
		opts[i].seen = false;
	}
	for (int i = 0; i < argc; i++) {
		const char *w = argv[i];

		if (!only_pos && strcmp(w, "--") == 0) {
			only_pos = true;
			continue;
		}
		if (!only_pos && (strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0)) {
			help = true;
			continue;
		}
		// A lone "-" is a positional (stdin for file arguments); so is a negative number.
		if (only_pos || w[0] != '-' || w[1] == '\0' || (w[1] >= '0' && w[1] <= '9')) {
			if (*npos >= maxpos)
				return bad(err, errlen, "unexpected argument '%s'", w);
			pos[(*npos)++] = w;
			continue;
		}
		if (w[1] != '-')
			return bad(err, errlen, "unknown option '%s'", w);

		const char *name = w + 2;
		const char *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		cli_opt *o = find_opt(opts, nopts, name, len);

		if (!o)
			return bad(err, errlen, "unknown option '%s'", w);
		if (o->seen)
			return bad(err, errlen, "option --%s given twice", o->name);
		if (o->has_arg) {
			if (eq) {
				o->value = eq + 1;
			} else {
				if (i + 1 >= argc)
					return bad(err, errlen, "option --%s needs a value",
					           o->name);
				o->value = argv[++i];
			}
		} else {
			if (eq)
				return bad(err, errlen, "option --%s takes no value", o->name);
			o->value = "";
		}
		o->seen = true;
	}
	return help ? CLI_ARGS_HELP : 0;
}

const char *cli_opt_get(const cli_opt *opts, size_t nopts, const char *name)
{
	for (size_t i = 0; i < nopts; i++) {
		if (strcmp(opts[i].name, name) == 0)
			return opts[i].seen ? opts[i].value : NULL;
	}
	return NULL;
}

bool cli_opt_has(const cli_opt *opts, size_t nopts, const char *name)
{
	return cli_opt_get(opts, nopts, name) != NULL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "ringbid %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see 'ringbid %s --help')\n", cmd);
	return CLI_EXIT_USAGE;
}

int cli_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("ringbid: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_EXIT_ERR;
}
