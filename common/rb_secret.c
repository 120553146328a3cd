// Agent secrets (argon2id, checked off the loop with bounded concurrency) and session tokens.
#include "rb_secret.h"
#include "rb_err.h"
#include "rb_log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sodium.h>

// Agents type their secrets; nothing legitimate comes near this.
#define SECRET_MAX 1024
#define TOKEN_RAW  32
// Checks waiting for a core; past this a flood is refused rather than queued without end.
#define WAITING_MAX 4096

_Static_assert(RB_SECRET_HASH_MAX == crypto_pwhash_STRBYTES, "hash buffer size");
_Static_assert(RB_TOKEN_HEX == TOKEN_RAW * 2 + 1, "token text size");
_Static_assert(RB_TOKEN_HASH == crypto_generichash_BYTES, "token hash size");

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result = RB_EIO;
// Unknown agents are checked against this so they cost the same time as known ones.
static char dummy_hash[crypto_pwhash_STRBYTES];

static void init_run(void)
{
	char secret[33];
	uint8_t raw[16];

	if (sodium_init() < 0)
		return;
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(secret, sizeof(secret), raw, sizeof(raw));
	if (crypto_pwhash_str(dummy_hash, secret, strlen(secret),
	                      crypto_pwhash_OPSLIMIT_INTERACTIVE,
	                      crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
		init_result = RB_ENOMEM;
		return;
	}
	sodium_memzero(secret, sizeof(secret));
	init_result = 0;
}

int rb_secret_init(void)
{
	pthread_once(&init_once, init_run);
	return init_result;
}

int rb_secret_hash(const char *secret, char *out)
{
	size_t len;

	if (secret == NULL || out == NULL)
		return RB_EINVAL;
	len = strnlen(secret, SECRET_MAX + 1);
	if (len == 0 || len > SECRET_MAX)
		return RB_EINVAL;
	if (rb_secret_init() != 0)
		return RB_EIO;
	if (crypto_pwhash_str(out, secret, len, crypto_pwhash_OPSLIMIT_INTERACTIVE,
	                      crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
		return RB_ENOMEM;
	return 0;
}

// A stored hash we can check: NUL-terminated within the buffer and argon2id.
static bool hash_usable(const char *hash)
{
	static const char prefix[] = crypto_pwhash_argon2id_STRPREFIX;

	if (hash == NULL)
		return false;
	if (strnlen(hash, RB_SECRET_HASH_MAX) >= RB_SECRET_HASH_MAX)
		return false;
	return strncmp(hash, prefix, sizeof(prefix) - 1) == 0;
}

int rb_secret_verify_blocking(const char *hash, const char *secret)
{
	bool usable = hash_usable(hash);
	const char *h = usable ? hash : dummy_hash;
	size_t len;
	int ok;

	if (rb_secret_init() != 0)
		return RB_EAUTH;
	if (secret == NULL)
		secret = "";
	len = strnlen(secret, SECRET_MAX + 1);
	// An over-long secret still pays for a check so its answer comes no faster.
	if (len > SECRET_MAX) {
		len = SECRET_MAX;
		usable = false;
		h = dummy_hash;
	}
	ok = crypto_pwhash_str_verify(h, secret, len) == 0;
	if (!usable)
		return RB_EAUTH;
	return ok ? 0 : RB_EAUTH;
}

// Asynchronous checks. Each loop gets its own limiter: requests are queued on the loop that
// made them, and the next one is handed to the thread pool from that loop's completions.
typedef struct verify_req verify_req;
typedef struct limiter limiter;

struct verify_req {
	uv_work_t work;
	limiter *lim;
	verify_req *next;
	rb_secret_fn fn;
	void *arg;
	int result;
	char hash[RB_SECRET_HASH_MAX]; // "" for an unknown agent
	char secret[SECRET_MAX + 1];
};

struct limiter {
	uv_loop_t *loop;
	limiter *next;
	int running;
	int waiting;
	verify_req *head, *tail; // waiting for a free slot, in arrival order
};

static pthread_mutex_t lim_lock = PTHREAD_MUTEX_INITIALIZER;
static limiter *limiters;

// Called under lim_lock; the core count is read once (sysconf reads a file each time).
static int max_running(void)
{
	static int cached;

	if (cached == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		cached = n < 1 ? 1 : (n > 64 ? 64 : (int)n);
	}
	return cached;
}

static void verify_work(uv_work_t *w)
{
	verify_req *r = w->data;

	r->result = rb_secret_verify_blocking(r->hash[0] != '\0' ? r->hash : NULL, r->secret);
}

static void verify_after(uv_work_t *w, int status);

static void req_free(verify_req *r)
{
	sodium_memzero(r->secret, sizeof(r->secret));
	free(r);
}

static limiter *limiter_get(uv_loop_t *loop)
{
	limiter *l;

	for (l = limiters; l != NULL; l = l->next) {
		if (l->loop == loop)
			return l;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL)
		return NULL;
	l->loop = loop;
	l->next = limiters;
	limiters = l;
	return l;
}

static void limiter_drop_if_idle(limiter *l)
{
	if (l->running > 0 || l->head != NULL)
		return;
	for (limiter **pp = &limiters; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == l) {
			*pp = l->next;
			free(l);
			return;
		}
	}
}

static void verify_after(uv_work_t *w, int status)
{
	verify_req *r = w->data;
	limiter *l = r->lim;
	rb_secret_fn fn = r->fn;
	void *arg = r->arg;
	int result = status == 0 ? r->result : RB_EAUTH;
	verify_req *failed = NULL;

	req_free(r);

	pthread_mutex_lock(&lim_lock);
	l->running--;
	while (l->head != NULL && l->running < max_running()) {
		verify_req *next = l->head;

		l->head = next->next;
		if (l->head == NULL)
			l->tail = NULL;
		l->waiting--;
		next->next = NULL;
		if (uv_queue_work(l->loop, &next->work, verify_work, verify_after) == 0) {
			l->running++;
		} else {
			next->next = failed;
			failed = next;
		}
	}
	limiter_drop_if_idle(l);
	pthread_mutex_unlock(&lim_lock);

	// The thread pool refused work: those callers get a refusal rather than silence.
	while (failed != NULL) {
		verify_req *f = failed;

		failed = f->next;
		f->fn(RB_EAUTH, f->arg);
		req_free(f);
	}
	fn(result, arg);
}

int rb_secret_verify(uv_loop_t *loop, const char *hash, const char *secret, rb_secret_fn fn,
                     void *arg)
{
	verify_req *r;
	limiter *l;
	int rv = 0;

	if (loop == NULL || secret == NULL || fn == NULL)
		return RB_EINVAL;
	if (strnlen(secret, SECRET_MAX + 1) > SECRET_MAX)
		return RB_ETOOBIG;
	if (rb_secret_init() != 0)
		return RB_EIO;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return RB_ENOMEM;
	r->fn = fn;
	r->arg = arg;
	r->work.data = r;
	// A hash we cannot use is checked like an unknown agent: same time, same answer.
	if (hash_usable(hash))
		memcpy(r->hash, hash, strlen(hash) + 1);
	memcpy(r->secret, secret, strlen(secret) + 1);

	pthread_mutex_lock(&lim_lock);
	l = limiter_get(loop);
	if (l == NULL) {
		rv = RB_ENOMEM;
	} else if (l->running < max_running()) {
		r->lim = l;
		rv = rb_err_from_errno(-uv_queue_work(loop, &r->work, verify_work, verify_after));
		if (rv == 0)
			l->running++;
		else
			limiter_drop_if_idle(l);
	} else if (l->waiting >= WAITING_MAX) {
		rv = RB_EBUSY;
	} else {
		r->lim = l;
		l->waiting++;
		if (l->tail != NULL)
			l->tail->next = r;
		else
			l->head = r;
		l->tail = r;
	}
	pthread_mutex_unlock(&lim_lock);
	if (rv != 0)
		req_free(r);
	return rv;
}

void rb_token_new(char *hex, uint8_t hash[RB_TOKEN_HASH])
{
	uint8_t raw[TOKEN_RAW];

	// sodium_init is idempotent and cheap after the first call; randombytes needs it.
	if (sodium_init() < 0)
		abort(); // no randomness means no safe tokens at all
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(hex, RB_TOKEN_HEX, raw, sizeof(raw));
	crypto_generichash(hash, RB_TOKEN_HASH, raw, sizeof(raw), NULL, 0);
	sodium_memzero(raw, sizeof(raw));
}

int rb_token_hash(const char *hex, uint8_t hash[RB_TOKEN_HASH])
{
	uint8_t raw[TOKEN_RAW];
	size_t bin_len = 0;

	if (hex == NULL || hash == NULL)
		return RB_EAUTH;
	if (strnlen(hex, RB_TOKEN_HEX) != RB_TOKEN_HEX - 1)
		return RB_EAUTH;
	// Only the form rb_token_new writes: one text per token, so one hash per token.
	for (size_t i = 0; i < RB_TOKEN_HEX - 1; i++) {
		char c = hex[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return RB_EAUTH;
	}
	if (sodium_init() < 0)
		return RB_EAUTH;
	if (sodium_hex2bin(raw, sizeof(raw), hex, RB_TOKEN_HEX - 1, NULL, &bin_len, NULL) != 0 ||
	    bin_len != sizeof(raw))
		return RB_EAUTH;
	crypto_generichash(hash, RB_TOKEN_HASH, raw, sizeof(raw), NULL, 0);
	sodium_memzero(raw, sizeof(raw));
	return 0;
}

bool rb_token_equal(const uint8_t a[RB_TOKEN_HASH], const uint8_t b[RB_TOKEN_HASH])
{
	if (a == NULL || b == NULL)
		return false;
	return sodium_memcmp(a, b, RB_TOKEN_HASH) == 0;
}

bool rb_str_equal_ct(const char *a, const char *b)
{
	size_t la, lb;

	if (a == NULL || b == NULL)
		return false;
	la = strlen(a);
	lb = strlen(b);
	if (la != lb)
		return false;
	if (la == 0)
		return true;
	return sodium_memcmp(a, b, la) == 0;
}
