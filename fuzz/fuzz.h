// What every fuzz target shares: the libFuzzer entry point, also driven by fuzz/driver.c.
#ifndef RB_FUZZ_H
#define RB_FUZZ_H
#include <stddef.h>
#include <stdint.h>

// One input. Returns 0 (libFuzzer's convention); a bug shows as a sanitizer report or abort.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Splits data into messages: each is a 2-byte little-endian length, then that many bytes (the
// last one may be short). Calls fn for each; stops after max messages. Lets one input be a
// sequence of messages, so that the fuzzer reaches states that need several.
typedef void (*rb_fuzz_msg_fn)(const uint8_t *msg, size_t len, void *arg);
void rb_fuzz_split(const uint8_t *data, size_t size, size_t max, rb_fuzz_msg_fn fn, void *arg);

#endif
