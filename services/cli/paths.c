// Where ringbid's files are: the executable's directory, the home directory, making folders.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "rb_config.h"
#include "rb_err.h"

int cli_exe_dir(char *out, size_t n)
{
	char buf[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", buf, sizeof buf - 1);
	char *slash;

	if (len < 0)
		return RB_EIO;
	buf[len] = '\0';
	slash = strrchr(buf, '/');
	if (!slash)
		return RB_EIO;
	*slash = '\0';
	if ((size_t)snprintf(out, n, "%s", buf[0] ? buf : "/") >= n)
		return RB_ETOOBIG;
	return 0;
}

int cli_home_abs(char *out, size_t n)
{
	char home[PATH_MAX], cwd[PATH_MAX];
	size_t len;
	int rc = rb_config_home(home, sizeof home);

	if (rc < 0)
		return rc;
	len = strlen(home);
	while (len > 1 && home[len - 1] == '/')
		home[--len] = '\0';
	if (home[0] == '/') {
		if ((size_t)snprintf(out, n, "%s", home) >= n)
			return RB_ETOOBIG;
		return 0;
	}
	if (!getcwd(cwd, sizeof cwd))
		return RB_EIO;
	const char *rel = home;

	if (strcmp(rel, ".") == 0)
		rel = "";
	else if (strncmp(rel, "./", 2) == 0)
		rel += 2;
	if ((size_t)snprintf(out, n, "%s%s%s", cwd, *rel && strcmp(cwd, "/") ? "/" : "", rel) >= n)
		return RB_ETOOBIG;
	return 0;
}

int cli_mkdirs(const char *dir, unsigned mode)
{
	char buf[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof buf)
		return RB_EIO;
	memcpy(buf, dir, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
			return RB_EIO;
		*p = '/';
	}
	if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
		return RB_EIO;
	return 0;
}
