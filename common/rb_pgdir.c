// Private PostgreSQL clusters started as root: letting the postgres user reach their directory.
#include "rb_pgdir.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rb_err.h"

extern char **environ;

// Runs argv quietly (output to /dev/null); true when it exits 0.
static bool run_ok(char *const argv[])
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int status, rv;

	if (posix_spawn_file_actions_init(&fa) != 0)
		return false;
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	rv = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rv != 0)
		return false;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return false;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int rb_pgdir_grant(const char *dir)
{
	char path[PATH_MAX];

	if (geteuid() != 0)
		return 0;
	if (strlen(dir) >= sizeof(path))
		return RB_EIO;
	memcpy(path, dir, strlen(dir) + 1);
	for (char *slash = strrchr(path, '/'); slash && slash != path; slash = strrchr(path, '/')) {
		char *test[] = {"runuser", "-u", "postgres", "--", "test", "-x", path, NULL};
		char *acl[] = {"setfacl", "-m", "u:postgres:--x", path, NULL};
		struct stat st;

		*slash = '\0';
		if (stat(path, &st) != 0 || run_ok(test))
			continue;
		if (run_ok(acl)) {
			fprintf(stderr,
			        "ringbid: let user postgres enter %s (setfacl u:postgres:--x)\n",
			        path);
			continue;
		}
		if (chmod(path, (st.st_mode & 07777) | S_IXOTH) != 0) {
			fprintf(stderr, "ringbid: user postgres cannot enter %s: %s\n", path,
			        strerror(errno));
			return RB_EIO;
		}
		fprintf(stderr, "ringbid: let user postgres enter %s (chmod o+x)\n", path);
	}
	return 0;
}
