// Checks and conversions of the text operators type: money, scores, ids, skills, import lines.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "rb_err.h"
#include "rb_pb.h"

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

// Counts the digits at the start of s.
static size_t digits(const char *s)
{
	size_t n = 0;

	while (is_digit(s[n]))
		n++;
	return n;
}

// digits{1,int_max} ( '.' digits{1,frac_max} )?
static bool valid_decimal(const char *s, size_t int_max, size_t frac_max)
{
	size_t n = digits(s);

	if (n == 0 || n > int_max)
		return false;
	s += n;
	if (*s == '\0')
		return true;
	if (*s != '.')
		return false;
	s++;
	n = digits(s);
	return n >= 1 && n <= frac_max && s[n] == '\0';
}

bool cli_valid_money(const char *s)
{
	return s && valid_decimal(s, 8, 4);
}

bool cli_valid_score(const char *s)
{
	if (!s || !valid_decimal(s, 3, 2))
		return false;
	// Integer part up to 100; exactly 100 only with a zero fraction.
	size_t n = digits(s);
	long ip = strtol(s, NULL, 10);

	if (ip < 100)
		return true;
	if (ip > 100)
		return false;
	for (const char *p = s + n; *p; p++) {
		if (*p != '.' && *p != '0')
			return false;
	}
	return true;
}

int cli_parse_int(const char *s, long long min, long long max, long long *out)
{
	char *end;
	long long v;

	if (!s || !*s || (!is_digit(s[0]) && !((s[0] == '-' || s[0] == '+') && is_digit(s[1]))))
		return RB_EINVAL;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return RB_EINVAL;
	*out = v;
	return 0;
}

int cli_parse_agent_id(const char *s, uint64_t *out)
{
	long long v;

	if (!s || !is_digit(s[0]) || cli_parse_int(s, 1, INT64_MAX, &v) != 0)
		return RB_EINVAL;
	*out = (uint64_t)v;
	return 0;
}

int cli_parse_seconds_ms(const char *s, int64_t max_ms, int64_t *out_ms)
{
	size_t n;
	int64_t ms = 0;

	if (!s || !valid_decimal(s, 9, 3))
		return RB_EINVAL;
	n = digits(s);
	for (size_t i = 0; i < n; i++)
		ms = ms * 10 + (s[i] - '0');
	ms *= 1000;
	if (s[n] == '.') {
		const char *f = s + n + 1;
		int64_t scale = 100;

		for (; *f; f++, scale /= 10)
			ms += (*f - '0') * scale;
	}
	if (ms > max_ms)
		return RB_EINVAL;
	*out_ms = ms;
	return 0;
}

void cli_list_free(char **list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

int cli_list_parse(const char *text, char sep, char ***out, size_t *n, char *err, size_t errlen)
{
	char **list = NULL;
	size_t count = 0;
	const char *p = text;

	*out = NULL;
	*n = 0;
	if (*text == '\0')
		return 0;
	list = calloc(CLI_SKILLS_MAX, sizeof *list);
	if (!list)
		return RB_ENOMEM;
	for (;;) {
		const char *end = strchr(p, sep);
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char *item = strndup(p, len);
		bool dup = false;

		if (!item) {
			cli_list_free(list, count);
			return RB_ENOMEM;
		}
		if (!rb_valid_id(item, 64)) {
			snprintf(err, errlen,
			         "bad skill '%.64s' (1-64 characters of A-Z a-z 0-9 . _ : -)",
			         item);
			free(item);
			cli_list_free(list, count);
			return RB_EINVAL;
		}
		for (size_t i = 0; i < count && !dup; i++)
			dup = strcmp(list[i], item) == 0;
		if (dup) {
			free(item);
		} else if (count == CLI_SKILLS_MAX) {
			snprintf(err, errlen, "at most %d skills", CLI_SKILLS_MAX);
			free(item);
			cli_list_free(list, count);
			return RB_EINVAL;
		} else {
			list[count++] = item;
		}
		if (!end)
			break;
		p = end + 1;
	}
	*out = list;
	*n = count;
	return 0;
}

int cli_pg_array(char *const *items, size_t n, char **out)
{
	size_t len = 3; // braces and NUL
	char *s, *w;

	for (size_t i = 0; i < n; i++)
		len += 2 * strlen(items[i]) + 3; // worst case: every byte escaped, quotes, comma
	s = malloc(len);
	if (!s)
		return RB_ENOMEM;
	w = s;
	*w++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			*w++ = ',';
		*w++ = '"';
		for (const char *p = items[i]; *p; p++) {
			if (*p == '"' || *p == '\\')
				*w++ = '\\';
			*w++ = *p;
		}
		*w++ = '"';
	}
	*w++ = '}';
	*w = '\0';
	*out = s;
	return 0;
}

void cli_agent_row_fini(cli_agent_row *row)
{
	cli_list_free(row->skills, row->nskills);
	row->skills = NULL;
	row->nskills = 0;
}

// Copies the next CSV field of *p into out (NUL-terminated, at most n-1 bytes), advancing *p
// past its comma. A field may be quoted with "" standing for a quote inside. Returns 0, or
// RB_EINVAL (unterminated quote, text after a closing quote) or RB_ETOOBIG.
static int csv_field(const char **p, char *out, size_t n)
{
	const char *s = *p;
	size_t len = 0;

	if (*s == '"') {
		s++;
		for (;;) {
			if (*s == '\0')
				return RB_EINVAL;
			if (*s == '"') {
				if (s[1] != '"')
					break;
				s++;
			}
			if (len + 1 >= n)
				return RB_ETOOBIG;
			out[len++] = *s++;
		}
		s++;
		if (*s != ',' && *s != '\0')
			return RB_EINVAL;
	} else {
		while (*s != ',' && *s != '\0') {
			if (*s == '"')
				return RB_EINVAL;
			if (len + 1 >= n)
				return RB_ETOOBIG;
			out[len++] = *s++;
		}
	}
	out[len] = '\0';
	if (*s == ',')
		s++;
	else
		s = NULL; // no more fields
	*p = s;
	return 0;
}

int cli_csv_agent_line(const char *line, cli_agent_row *row, char *err, size_t errlen)
{
	char fields[4][CLI_NAME_MAX + 1];
	char buf[4096];
	const char *p;
	size_t len = strlen(line), nf = 0;
	uint64_t id;
	char **skills;
	size_t nskills;
	int rc;

	if (len >= sizeof buf) {
		snprintf(err, errlen, "line too long");
		return RB_EINVAL;
	}
	memcpy(buf, line, len + 1);
	if (len > 0 && buf[len - 1] == '\r')
		buf[--len] = '\0';
	p = buf;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0' || *p == '#')
		return CLI_CSV_SKIP;
	if (strncmp(p, "id,", 3) == 0)
		return CLI_CSV_SKIP;

	p = buf;
	while (p) {
		if (nf == 4) {
			snprintf(err, errlen, "more than 4 fields (id,name,skills,score)");
			return RB_EINVAL;
		}
		rc = csv_field(&p, fields[nf], sizeof fields[nf]);
		if (rc == RB_ETOOBIG) {
			snprintf(err, errlen, "field %zu longer than %d bytes", nf + 1,
			         CLI_NAME_MAX);
			return RB_EINVAL;
		}
		if (rc < 0) {
			snprintf(err, errlen, "bad quoting in field %zu", nf + 1);
			return RB_EINVAL;
		}
		nf++;
	}
	if (nf < 2) {
		snprintf(err, errlen, "expected id,name[,skills[,score]]");
		return RB_EINVAL;
	}
	for (size_t i = nf; i < 4; i++)
		fields[i][0] = '\0';
	if (cli_parse_agent_id(fields[0], &id) != 0) {
		snprintf(err, errlen, "bad agent id '%.32s' (a whole number from 1)", fields[0]);
		return RB_EINVAL;
	}
	if (fields[1][0] == '\0' || !rb_valid_text(fields[1], CLI_NAME_MAX)) {
		snprintf(err, errlen, "bad name for agent %llu", (unsigned long long)id);
		return RB_EINVAL;
	}
	if (fields[3][0] != '\0' && !cli_valid_score(fields[3])) {
		snprintf(err, errlen, "bad score '%.16s' (0 to 100, up to 2 decimals)", fields[3]);
		return RB_EINVAL;
	}
	rc = cli_list_parse(fields[2], ';', &skills, &nskills, err, errlen);
	if (rc < 0)
		return rc;
	row->id = id;
	snprintf(row->name, sizeof row->name, "%s", fields[1]);
	row->skills = skills;
	row->nskills = nskills;
	memcpy(row->score, fields[3], strlen(fields[3]) + 1); // cli_valid_score bounds it
	return 0;
}

int cli_read_secret(const char *file, bool env_ok, char *out, size_t n, char *err, size_t errlen)
{
	size_t len = 0;

	if (file) {
		int fd = open(file, O_RDONLY | O_CLOEXEC);
		ssize_t r;

		if (fd < 0) {
			snprintf(err, errlen, "cannot read secret file %s: %s", file,
			         strerror(errno));
			return RB_EIO;
		}
		// One byte more than allowed (plus a newline) tells a secret that is too long.
		while (len < n - 1 && (r = read(fd, out + len, n - 1 - len)) != 0) {
			if (r < 0) {
				if (errno == EINTR)
					continue;
				snprintf(err, errlen, "cannot read secret file %s: %s", file,
				         strerror(errno));
				close(fd);
				return RB_EIO;
			}
			len += (size_t)r;
		}
		close(fd);
		out[len] = '\0';
		if (memchr(out, '\0', len)) {
			snprintf(err, errlen, "secret file %s holds a NUL byte", file);
			return RB_EINVAL;
		}
	} else {
		const char *env = env_ok ? getenv("RINGBID_AGENT_SECRET") : NULL;

		if (!env) {
			snprintf(err, errlen,
			         env_ok ? "no agent secret: give --secret-file FILE or set "
			                  "RINGBID_AGENT_SECRET"
			                : "no agent secret: give --secret-file FILE");
			return RB_ENOTFOUND;
		}
		len = strlen(env);
		if (len >= n) {
			snprintf(err, errlen, "agent secret longer than %d bytes", CLI_SECRET_MAX);
			return RB_EINVAL;
		}
		memcpy(out, env, len + 1);
	}
	if (len > 0 && out[len - 1] == '\n')
		out[--len] = '\0';
	if (len > 0 && out[len - 1] == '\r')
		out[--len] = '\0';
	if (len == 0) {
		snprintf(err, errlen, "the agent secret is empty");
		return RB_EINVAL;
	}
	if (len > CLI_SECRET_MAX || strchr(out, '\n')) {
		snprintf(err, errlen, "the agent secret must be one line of at most %d bytes",
		         CLI_SECRET_MAX);
		return RB_EINVAL;
	}
	return 0;
}

int cli_parse_yes_no(const char *s, bool *out)
{
	if (s && strcmp(s, "yes") == 0) {
		*out = true;
		return 0;
	}
	if (s && strcmp(s, "no") == 0) {
		*out = false;
		return 0;
	}
	return RB_EINVAL;
}

int cli_parse_milli(const char *s, int *out)
{
	int v;

	// One integer digit: nothing from 0 to 1 needs more, and "01" is more likely a typo.
	if (!s || !valid_decimal(s, 1, 3))
		return RB_EINVAL;
	v = (s[0] - '0') * 1000;
	if (s[1] == '.') {
		int scale = 100;

		for (const char *f = s + 2; *f; f++, scale /= 10)
			v += (*f - '0') * scale;
	}
	if (v > 1000)
		return RB_EINVAL;
	*out = v;
	return 0;
}

void cli_milli_text(int milli, char *out, size_t n)
{
	snprintf(out, n, "%d.%03d", milli / 1000, milli % 1000);
}

int cli_parse_weights(const char *s, int milli[CLI_WEIGHTS], char *err, size_t errlen)
{
	static const char *const names[CLI_WEIGHTS] = {"satisfaction", "resolution", "conversion",
	                                               "answer rate", "handle time"};
	char item[16], sum_text[16];
	const char *p = s;
	int got[CLI_WEIGHTS], sum = 0;
	size_t k = 0;

	if (!s) {
		snprintf(err, errlen, "no weights");
		return RB_EINVAL;
	}
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (k == CLI_WEIGHTS) {
			snprintf(err, errlen,
			         "expected five weights S,R,C,A,H (satisfaction, resolution, "
			         "conversion, answer rate, handle time), got more");
			return RB_EINVAL;
		}
		if (len >= sizeof item) {
			snprintf(err, errlen,
			         "the %s weight '%.16s...' is not a number from 0 to 1", names[k],
			         p);
			return RB_EINVAL;
		}
		memcpy(item, p, len);
		item[len] = '\0';
		if (cli_parse_milli(item, &got[k]) < 0) {
			snprintf(err, errlen,
			         "the %s weight '%s' must be from 0 to 1 with up to 3 decimals",
			         names[k], item);
			return RB_EINVAL;
		}
		sum += got[k++];
		if (!end)
			break;
		p = end + 1;
	}
	if (k != CLI_WEIGHTS) {
		snprintf(err, errlen,
		         "expected five weights S,R,C,A,H (satisfaction, resolution, conversion, "
		         "answer rate, handle time), got %zu",
		         k);
		return RB_EINVAL;
	}
	if (sum != 1000) {
		cli_milli_text(sum, sum_text, sizeof sum_text);
		snprintf(err, errlen, "weights must add up to 1 (they add up to %s)", sum_text);
		return RB_EINVAL;
	}
	memcpy(milli, got, sizeof got);
	return 0;
}

// Reads exactly n digits at *p as a number; advances *p.
static bool fixed_digits(const char **p, size_t n, int *out)
{
	int v = 0;

	for (size_t i = 0; i < n; i++) {
		if (!is_digit((*p)[i]))
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

int cli_parse_iso_us(const char *s, uint64_t *out)
{
	static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h = 0, mi = 0, sec = 0, off_h = 0, off_m = 0, sign = 0;
	int64_t frac_us = 0, days, t;
	const char *p = s;

	if (!s || !fixed_digits(&p, 4, &y) || *p++ != '-' || !fixed_digits(&p, 2, &mo) ||
	    *p++ != '-' || !fixed_digits(&p, 2, &d))
		return RB_EINVAL;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
		return RB_EINVAL;
	if (mo == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return RB_EINVAL;
	if (*p == 'T' || *p == ' ') {
		p++;
		if (!fixed_digits(&p, 2, &h) || *p++ != ':' || !fixed_digits(&p, 2, &mi))
			return RB_EINVAL;
		if (*p == ':') {
			p++;
			if (!fixed_digits(&p, 2, &sec))
				return RB_EINVAL;
			if (*p == '.') {
				int64_t scale = 100000;
				size_t nd = 0;

				for (p++; is_digit(*p); p++, nd++, scale /= 10) {
					if (nd == 6)
						return RB_EINVAL;
					frac_us += (*p - '0') * scale;
				}
				if (nd == 0)
					return RB_EINVAL;
			}
		}
		if (h > 23 || mi > 59 || sec > 59)
			return RB_EINVAL;
	}
	if (*p == 'Z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p++ == '-' ? -1 : 1;
		if (!fixed_digits(&p, 2, &off_h))
			return RB_EINVAL;
		if (*p == ':')
			p++;
		if (*p && !fixed_digits(&p, 2, &off_m))
			return RB_EINVAL;
		if (off_h > 14 || off_m > 59)
			return RB_EINVAL;
	}
	if (*p != '\0')
		return RB_EINVAL;
	// Days from the civil date (Howard Hinnant's algorithm): no timegm, no TZ environment.
	{
		int yy = mo <= 2 ? y - 1 : y;
		int era = yy / 400;
		int yoe = yy - era * 400;
		int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
		int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

		days = (int64_t)era * 146097 + doe - 719468;
	}
	t = days * 86400 + h * 3600 + mi * 60 + sec - sign * (off_h * 3600 + off_m * 60);
	if (t < 0)
		return RB_EINVAL;
	*out = (uint64_t)t * 1000000u + (uint64_t)frac_us;
	return 0;
}
