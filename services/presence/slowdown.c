// Login slowdown: a hash of keys to failures in a row, kept in order of their last failure.
#include <stdlib.h>
#include <sys/queue.h>
#include <uthash.h>

#include "rb_err.h"
#include "slowdown.h"

typedef struct sd_key {
	uint64_t key;
	uint32_t fails;
	uint64_t last_fail_us;
	TAILQ_ENTRY(sd_key) age; // oldest failure first
	UT_hash_handle hh;
} sd_key;

struct presence_slowdown {
	uint32_t max_fails;
	uint32_t max_keys;
	uint32_t count;
	sd_key *keys;
	TAILQ_HEAD(, sd_key) by_age;
};

uint64_t presence_slowdown_window_us(uint32_t fails, uint32_t max_fails)
{
	if (fails < max_fails)
		return 0;
	uint32_t extra = fails - max_fails;
	// 1 s << 6 is already past the 60 s cap; avoid shifting into undefined territory.
	if (extra >= 6)
		return PRESENCE_SLOWDOWN_MAX_US;
	uint64_t w = PRESENCE_SLOWDOWN_BASE_US << extra;
	return w > PRESENCE_SLOWDOWN_MAX_US ? PRESENCE_SLOWDOWN_MAX_US : w;
}

int presence_slowdown_new(uint32_t max_fails, uint32_t max_keys, presence_slowdown **out)
{
	presence_slowdown *sd = calloc(1, sizeof(*sd));
	if (sd == NULL)
		return RB_ENOMEM;
	sd->max_fails = max_fails < 1 ? 1 : max_fails;
	sd->max_keys = max_keys < 1 ? 1 : max_keys;
	TAILQ_INIT(&sd->by_age);
	*out = sd;
	return 0;
}

static void drop(presence_slowdown *sd, sd_key *k)
{
	HASH_DEL(sd->keys, k);
	TAILQ_REMOVE(&sd->by_age, k, age);
	sd->count--;
	free(k);
}

void presence_slowdown_free(presence_slowdown *sd)
{
	if (sd == NULL)
		return;
	sd_key *k, *tmp;
	HASH_ITER(hh, sd->keys, k, tmp)
	{
		drop(sd, k);
	}
	free(sd);
}

static sd_key *find(const presence_slowdown *sd, uint64_t key)
{
	sd_key *k = NULL;
	HASH_FIND(hh, sd->keys, &key, sizeof(key), k);
	return k;
}

int presence_slowdown_check(const presence_slowdown *sd, uint64_t key, uint64_t now_us,
                            uint64_t *wait_us)
{
	const sd_key *k = find(sd, key);
	if (wait_us != NULL)
		*wait_us = 0;
	if (k == NULL)
		return 0;
	uint64_t until = k->last_fail_us + presence_slowdown_window_us(k->fails, sd->max_fails);
	if (now_us >= until)
		return 0;
	if (wait_us != NULL)
		*wait_us = until - now_us;
	return RB_ESLOWDOWN;
}

int presence_slowdown_fail(presence_slowdown *sd, uint64_t key, uint64_t now_us)
{
	sd_key *k = find(sd, key);
	if (k == NULL) {
		if (sd->count >= sd->max_keys)
			drop(sd, TAILQ_FIRST(&sd->by_age));
		k = calloc(1, sizeof(*k));
		if (k == NULL)
			return RB_ENOMEM;
		k->key = key;
		HASH_ADD(hh, sd->keys, key, sizeof(k->key), k);
		sd->count++;
	} else {
		TAILQ_REMOVE(&sd->by_age, k, age);
	}
	if (k->fails < UINT32_MAX)
		k->fails++;
	k->last_fail_us = now_us;
	TAILQ_INSERT_TAIL(&sd->by_age, k, age);
	return 0;
}

void presence_slowdown_forget(presence_slowdown *sd, uint64_t key)
{
	sd_key *k = find(sd, key);
	if (k != NULL)
		drop(sd, k);
}

uint32_t presence_slowdown_fails(const presence_slowdown *sd, uint64_t key)
{
	const sd_key *k = find(sd, key);
	return k == NULL ? 0 : k->fails;
}

void presence_slowdown_expire(presence_slowdown *sd, uint64_t now_us)
{
	sd_key *k;
	while ((k = TAILQ_FIRST(&sd->by_age)) != NULL &&
	       k->last_fail_us + PRESENCE_SLOWDOWN_KEEP_US <= now_us)
		drop(sd, k);
}

uint32_t presence_slowdown_count(const presence_slowdown *sd)
{
	return sd->count;
}
