// $RINGBID_HOME/env: the settings `ringbid up` chose, read back by every ringbid program.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "rb_err.h"

static const char header[] = "# ringbid settings written by `ringbid up`; every ringbid program "
                             "reads them.\n"
                             "# Variables already set in the environment take precedence.\n";

static bool valid_key(const char *k)
{
	if (!k || !*k)
		return false;
	for (; *k; k++) {
		if (!((*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') || *k == '_'))
			return false;
	}
	return true;
}

int cli_env_format(const cli_env_kv *kv, size_t n, char **out)
{
	size_t len = sizeof header;
	char *s, *w;

	for (size_t i = 0; i < n; i++) {
		if (!valid_key(kv[i].key) || !kv[i].value || strpbrk(kv[i].value, "\r\n"))
			return RB_EINVAL;
		len += strlen(kv[i].key) + strlen(kv[i].value) + 2;
	}
	s = malloc(len);
	if (!s)
		return RB_ENOMEM;
	w = s;
	memcpy(w, header, sizeof header - 1);
	w += sizeof header - 1;
	for (size_t i = 0; i < n; i++)
		w += sprintf(w, "%s=%s\n", kv[i].key, kv[i].value);
	*w = '\0';
	*out = s;
	return 0;
}

int cli_env_write(const char *path, const cli_env_kv *kv, size_t n)
{
	char tmp[4096];
	char *text;
	size_t len, off = 0;
	int fd, rc;

	rc = cli_env_format(kv, n, &text);
	if (rc < 0)
		return rc;
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
		free(text);
		return RB_EINVAL;
	}
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(text);
		return RB_EIO;
	}
	len = strlen(text);
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			break;
		off += (size_t)w;
	}
	free(text);
	// The umask may have narrowed the mode; the service token must stay private either way.
	if (off < len || fchmod(fd, 0600) != 0 || fsync(fd) != 0) {
		close(fd);
		unlink(tmp);
		return RB_EIO;
	}
	if (close(fd) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return RB_EIO;
	}
	return 0;
}
