// Private PostgreSQL clusters started as root: letting the postgres user reach their directory.
#ifndef RB_PGDIR_H
#define RB_PGDIR_H

// PostgreSQL refuses to run as root, so as root ringbid runs it as user postgres; a cluster
// directory under a 0700 directory (a checkout under /root) is then out of its reach. For each
// directory above dir that user cannot enter, grants search permission to that user only (an
// ACL entry u:postgres:--x: entering, not listing), or o+x where the file system has no ACLs,
// and says so on stderr. Does nothing unless running as root. Blocks (spawns setfacl and
// runuser): for the CLI and tests, never a service loop. Returns 0 or RB_EIO.
int rb_pgdir_grant(const char *dir);

#endif
