// Agent secrets and session tokens (libsodium): argon2id hashes, 256-bit random tokens.
#ifndef RB_SECRET_H
#define RB_SECRET_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RB_SECRET_HASH_MAX 128 // crypto_pwhash_STRBYTES
#define RB_TOKEN_HEX       65  // 32 bytes as hex, plus NUL
#define RB_TOKEN_HASH      32  // stored: BLAKE2b-256 of the token

// Initialises libsodium and makes the dummy hash for unknown agents (one argon2id hash, tens of
// milliseconds); call once at start, before any thread pool work. Idempotent. Returns 0,
// RB_EIO, RB_ENOMEM.
int rb_secret_init(void);
// Hashes secret with argon2id (interactive limits) into out (RB_SECRET_HASH_MAX bytes). Blocks
// for tens of milliseconds: CLI or worker threads only. Returns 0, RB_EINVAL (NULL, empty, or
// over 1024 bytes), RB_ENOMEM, RB_EIO.
int rb_secret_hash(const char *secret, char *out);
// Checks secret against hash. Blocking, as above. Returns 0 or RB_EAUTH.
int rb_secret_verify_blocking(const char *hash, const char *secret);

// Checks secret against hash on libuv's thread pool, at most one check per core at a time
// (argon2id takes its whole memory limit per check); fn runs on the loop with 0 or RB_EAUTH.
// hash == NULL (unknown agent) is checked against a dummy hash so it takes the same time.
// A hash that is not an argon2id string is treated like NULL. Copies hash and secret. Call on
// the loop's thread; fn never runs inside rb_secret_verify. Returns 0, or a code without calling
// fn: RB_EINVAL, RB_ETOOBIG (secret over 1024 bytes), RB_EBUSY (4096 checks already wait for a
// core), RB_ENOMEM, RB_EIO.
typedef void (*rb_secret_fn)(int result, void *arg);
int rb_secret_verify(uv_loop_t *loop, const char *hash, const char *secret, rb_secret_fn fn,
                     void *arg);

// A new session token: hex text for the client (RB_TOKEN_HEX) and its hash to keep.
void rb_token_new(char *hex, uint8_t hash[RB_TOKEN_HASH]);
// Hashes a presented token. Returns 0, or RB_EAUTH when hex is not a well-formed token.
int rb_token_hash(const char *hex, uint8_t hash[RB_TOKEN_HASH]);
// Constant-time comparison of two hashes.
bool rb_token_equal(const uint8_t a[RB_TOKEN_HASH], const uint8_t b[RB_TOKEN_HASH]);
// Constant-time comparison of two strings (service tokens); false when lengths differ.
bool rb_str_equal_ct(const char *a, const char *b);

#endif
