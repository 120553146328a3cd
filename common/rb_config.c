// Configuration from the environment: strict typed parsing, secrets from *_FILE, local defaults.
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_MAX_LEN 128
// Integers, durations and booleans are short; anything longer is a mistake.
#define VALUE_MAX             64
#define PORT_BASE_DEFAULT     7100
#define PORT_BASE_MIN         1024
#define PORT_BASE_MAX         65000
#define HOME_DEFAULT          "./var"
#define SERVICE_TOKEN_DEFAULT "ringbid-local-service-token"
// The env file written by `ringbid up` is a few hundred bytes; refuse anything absurd.
#define ENV_FILE_MAX (1024 * 1024)

static atomic_bool token_warned;

static int copy_out(const char *s, size_t len, char *out, size_t n)
{
	if (out == NULL || len >= n)
		return RB_ETOOBIG;
	memcpy(out, s, len);
	out[len] = '\0';
	return 0;
}

// Reads the secret file at path into out, without the one trailing newline editors add.
static int read_secret_file(const char *var, const char *path, char *out, size_t n)
{
	// Room for a value of n - 1 bytes, its newline (maybe "\r\n") and one byte to spot excess.
	size_t cap = n + 2;
	char *buf;
	size_t len = 0;
	int fd;
	int rv = 0;

	if (n == 0)
		return RB_ETOOBIG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rb_error("%s: cannot open %s: %s", var, path, strerror(errno));
		return RB_EIO;
	}
	buf = malloc(cap);
	if (buf == NULL) {
		close(fd);
		return RB_ENOMEM;
	}
	while (len < cap) {
		ssize_t r = read(fd, buf + len, cap - len);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			rb_error("%s: cannot read %s: %s", var, path, strerror(errno));
			rv = RB_EIO;
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len == cap) {
		rb_error("%s: %s is longer than %zu bytes", var, path, n - 1);
		rv = RB_ETOOBIG;
		goto out;
	}
	if (len > 0 && buf[len - 1] == '\n') {
		len--;
		if (len > 0 && buf[len - 1] == '\r')
			len--;
	}
	if (memchr(buf, '\0', len) != NULL) {
		rb_error("%s: %s holds a NUL byte", var, path);
		rv = RB_ECONFIG;
		goto out;
	}
	rv = copy_out(buf, len, out, n);
	if (rv != 0)
		rb_error("%s: %s is longer than %zu bytes", var, path, n - 1);
out:
	explicit_bzero(buf, cap);
	free(buf);
	close(fd);
	return rv;
}

int rb_config_str(const char *name, const char *def, char *out, size_t n)
{
	char file_var[NAME_MAX_LEN + 8];
	const char *v;
	int rv;

	if (name == NULL || out == NULL || n == 0)
		return RB_EINVAL;
	v = getenv(name);
	if (v != NULL) {
		rv = copy_out(v, strlen(v), out, n);
		if (rv != 0)
			rb_error("%s: value longer than %zu bytes", name, n - 1);
		return rv;
	}
	if (strlen(name) > NAME_MAX_LEN)
		return RB_EINVAL;
	snprintf(file_var, sizeof(file_var), "%s_FILE", name);
	v = getenv(file_var);
	if (v != NULL && v[0] != '\0')
		return read_secret_file(file_var, v, out, n);
	if (def == NULL)
		return RB_ENOTFOUND;
	return copy_out(def, strlen(def), out, n);
}

// Reads name into buf; 1 when set, 0 when unset, < 0 on error (logged).
static int get_value(const char *name, char *buf, size_t n)
{
	int rv = rb_config_str(name, NULL, buf, n);

	if (rv == RB_ENOTFOUND)
		return 0;
	if (rv == RB_ETOOBIG)
		return RB_ECONFIG;
	if (rv < 0)
		return rv;
	return 1;
}

// Parses a whole decimal integer: optional sign, digits, nothing else.
static int parse_ll(const char *s, long long *out)
{
	char *end;
	long long v;

	if (s[0] == '\0' || !(s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9')))
		return RB_ECONFIG;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return RB_ECONFIG;
	*out = v;
	return 0;
}

int rb_config_int(const char *name, long long def, long long min, long long max, long long *out)
{
	char buf[VALUE_MAX];
	long long v;
	int rv;

	if (out == NULL)
		return RB_EINVAL;
	rv = get_value(name, buf, sizeof(buf));
	if (rv < 0)
		return RB_ECONFIG;
	if (rv == 0) {
		*out = def;
		return 0;
	}
	if (parse_ll(buf, &v) != 0) {
		rb_error("%s: '%s' is not an integer", name, buf);
		return RB_ECONFIG;
	}
	if (v < min || v > max) {
		rb_error("%s: %lld is outside %lld..%lld", name, v, min, max);
		return RB_ECONFIG;
	}
	*out = v;
	return 0;
}

int rb_parse_ms(const char *text, long long *out_ms)
{
	static const struct {
		const char *suffix;
		long long mult;
	} units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
	const char *p = text;
	long long v = 0;

	if (text == NULL || out_ms == NULL)
		return RB_ECONFIG;
	// Durations are never negative, so no sign: "-1" is a mistake, not "forever".
	if (*p < '0' || *p > '9')
		return RB_ECONFIG;
	while (*p >= '0' && *p <= '9') {
		int d = *p - '0';

		if (v > (LLONG_MAX - d) / 10)
			return RB_ECONFIG;
		v = v * 10 + d;
		p++;
	}
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].suffix) != 0)
			continue;
		if (v > LLONG_MAX / units[i].mult)
			return RB_ECONFIG;
		*out_ms = v * units[i].mult;
		return 0;
	}
	return RB_ECONFIG;
}

int rb_config_ms(const char *name, long long def_ms, long long min_ms, long long max_ms,
                 long long *out_ms)
{
	char buf[VALUE_MAX];
	long long v;
	int rv;

	if (out_ms == NULL)
		return RB_EINVAL;
	rv = get_value(name, buf, sizeof(buf));
	if (rv < 0)
		return RB_ECONFIG;
	if (rv == 0) {
		*out_ms = def_ms;
		return 0;
	}
	if (rb_parse_ms(buf, &v) != 0) {
		rb_error("%s: '%s' is not a duration (1500, 1500ms, 15s, 2m, 1h)", name, buf);
		return RB_ECONFIG;
	}
	if (v < min_ms || v > max_ms) {
		rb_error("%s: %lld ms is outside %lld..%lld ms", name, v, min_ms, max_ms);
		return RB_ECONFIG;
	}
	*out_ms = v;
	return 0;
}

int rb_config_bool(const char *name, bool def, bool *out)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"0", "false", "no", "off"};
	char buf[VALUE_MAX];
	int rv;

	if (out == NULL)
		return RB_EINVAL;
	rv = get_value(name, buf, sizeof(buf));
	if (rv < 0)
		return RB_ECONFIG;
	if (rv == 0) {
		*out = def;
		return 0;
	}
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(buf, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(buf, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	rb_error("%s: '%s' is not a boolean (true/false, yes/no, on/off, 1/0)", name, buf);
	return RB_ECONFIG;
}

static int port_for(int port_offset, int *port)
{
	long long base;
	int rv = rb_config_int("RINGBID_PORT_BASE", PORT_BASE_DEFAULT, PORT_BASE_MIN, PORT_BASE_MAX,
	                       &base);

	if (rv != 0)
		return rv;
	if (port_offset < 0 || base + port_offset > 65535)
		return RB_ECONFIG;
	*port = (int)(base + port_offset);
	return 0;
}

// Uses env when it is set and not empty, else prefix + "127.0.0.1:<base + offset>".
static int address_for(const char *env, int port_offset, const char *prefix, char *out, size_t n)
{
	int port;
	int rv;

	if (out == NULL || n == 0)
		return RB_EINVAL;
	if (env != NULL) {
		rv = rb_config_str(env, NULL, out, n);
		if (rv == 0 && out[0] != '\0')
			return 0;
		if (rv != 0 && rv != RB_ENOTFOUND)
			return rv;
	}
	rv = port_for(port_offset, &port);
	if (rv != 0)
		return rv;
	rv = snprintf(out, n, "%s127.0.0.1:%d", prefix, port);
	if (rv < 0 || (size_t)rv >= n)
		return RB_ETOOBIG;
	return 0;
}

int rb_config_url(const char *env, int port_offset, char *out, size_t n)
{
	return address_for(env, port_offset, "tcp://", out, n);
}

int rb_config_http(const char *env, int port_offset, char *out, size_t n)
{
	return address_for(env, port_offset, "", out, n);
}

int rb_config_service_token(char *out, size_t n)
{
	int rv = rb_config_str("RINGBID_SERVICE_TOKEN", NULL, out, n);

	if (rv == 0 && out[0] == '\0') {
		rb_error("RINGBID_SERVICE_TOKEN is empty");
		return RB_ECONFIG;
	}
	if (rv != RB_ENOTFOUND)
		return rv;
	rv = copy_out(SERVICE_TOKEN_DEFAULT, strlen(SERVICE_TOKEN_DEFAULT), out, n);
	if (rv == 0 && !atomic_exchange(&token_warned, true))
		rb_warn("RINGBID_SERVICE_TOKEN is not set: using the local default token, "
		        "which is fit only for a single machine");
	return rv;
}

int rb_config_conninfo(char *out, size_t n)
{
	return rb_config_str("RINGBID_DATABASE_URL", "", out, n);
}

int rb_config_home(char *out, size_t n)
{
	int rv = rb_config_str("RINGBID_HOME", HOME_DEFAULT, out, n);

	if (rv == 0 && out[0] == '\0')
		return copy_out(HOME_DEFAULT, strlen(HOME_DEFAULT), out, n);
	return rv;
}

static bool is_blank(const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s != ' ' && *s != '\t' && *s != '\r')
			return false;
	}
	return true;
}

// Checks one line; on success *eq points at its '='. Blank and comment lines give 1.
static int check_env_line(char *line, char **eq)
{
	const char *p = line;

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0' || *p == '#' || is_blank(p))
		return 1;
	for (p = line; (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'; p++)
		;
	if (p == line || *p != '=')
		return RB_ECONFIG;
	*eq = (char *)p;
	return 0;
}

// Reads the whole env file into a NUL-terminated buffer (*out is the caller's).
static int read_env_file(const char *path, char **out, size_t *len_out)
{
	struct stat st;
	char *buf;
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		if (errno == ENOENT)
			return RB_ENOTFOUND;
		rb_error("cannot open %s: %s", path, strerror(errno));
		return RB_EIO;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > ENV_FILE_MAX) {
		rb_error("%s is not a regular file of at most %d bytes", path, ENV_FILE_MAX);
		close(fd);
		return RB_EIO;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return RB_ENOMEM;
	}
	while (len < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rb_error("cannot read %s: %s", path, strerror(errno));
			free(buf);
			close(fd);
			return RB_EIO;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	*out = buf;
	*len_out = len;
	return 0;
}

int rb_config_load_home(void)
{
	char home[PATH_MAX];
	char path[PATH_MAX + 8];
	char *buf;
	size_t len;
	int rv;

	rv = rb_config_home(home, sizeof(home));
	if (rv != 0)
		return rv == RB_ETOOBIG ? RB_ECONFIG : rv;
	if ((size_t)snprintf(path, sizeof(path), "%s/env", home) >= sizeof(path))
		return RB_ECONFIG;
	rv = read_env_file(path, &buf, &len);
	if (rv == RB_ENOTFOUND)
		return 0;
	if (rv != 0)
		return rv;
	if (memchr(buf, '\0', len) != NULL) {
		rb_error("%s holds a NUL byte", path);
		free(buf);
		return RB_ECONFIG;
	}

	// Two passes: a file with a bad line changes nothing.
	for (int pass = 0; pass < 2 && rv == 0; pass++) {
		char *line = buf;
		int lineno = 0;

		while (line != NULL && *line != '\0') {
			char *nl = strchr(line, '\n');
			char *next = nl != NULL ? nl + 1 : NULL;
			char *eq = NULL;
			int kind;

			lineno++;
			if (nl != NULL)
				*nl = '\0';
			kind = check_env_line(line, &eq);
			if (kind < 0) {
				rb_error("%s:%d: expected KEY=VALUE with KEY of A-Z, 0-9 and _",
				         path, lineno);
				rv = RB_ECONFIG;
				break;
			}
			if (kind == 0 && pass == 1) {
				size_t vlen;

				*eq = '\0';
				vlen = strlen(eq + 1);
				if (vlen > 0 && eq[vlen] == '\r')
					eq[vlen] = '\0';
				if (setenv(line, eq + 1, 0) != 0) {
					rv = rb_err_from_errno(errno);
					break;
				}
				*eq = '=';
			}
			if (nl != NULL)
				*nl = '\n';
			line = next;
		}
	}
	explicit_bzero(buf, len);
	free(buf);
	return rv;
}
