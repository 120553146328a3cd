// Fuzz target: the auction's two links. One input is a sequence of messages (fuzz.h), each
// tagged with the link it arrives on; they go through auction_receive exactly as main.c hands
// over the bytes from nng, so decoding, checking and the market's state changes are all
// reached. The market's own invariants are asserted by its code; a crash, leak or sanitizer
// report is a bug.
#include <stdlib.h>
#include <string.h>

#include "auction_link.h"
#include "fuzz.h"
#include "rb_secret.h"
#include "rb_log.h"

#define FUZZ_TOKEN "fuzz-service-token-0123456789abcdef"

static int drop(void *arg, auction_link_id link, nng_msg *msg)
{
	(void)arg;
	(void)link;
	nng_msg_free(msg);
	return 0;
}

// The first byte of each message picks the link and, now and then, a link event or the
// janitor; a valid token is put in front when asked, so that inputs get past the token check.
static void one(const uint8_t *msg, size_t len, void *arg)
{
	auction *a = arg;
	if (len == 0)
		return;
	uint8_t ctl = msg[0];
	auction_link_id link = (ctl & 1) ? AUCTION_LINK_BROKER : AUCTION_LINK_PRESENCE;
	switch ((ctl >> 1) & 7) {
	case 0:
		auction_link_event(a, link, (ctl >> 4) & 1);
		return;
	case 1:
		auction_janitor(a);
		return;
	case 2: {
		// Envelope.token (field 1, length-delimited) with the right value, then the rest.
		size_t tl = strlen(FUZZ_TOKEN);
		uint8_t *buf = malloc(2 + tl + len - 1);
		if (buf == NULL)
			abort();
		buf[0] = 0x0a;
		buf[1] = (uint8_t)tl;
		memcpy(buf + 2, FUZZ_TOKEN, tl);
		memcpy(buf + 2 + tl, msg + 1, len - 1);
		auction_receive(a, link, buf, 2 + tl + len - 1);
		free(buf);
		return;
	}
	default:
		auction_receive(a, link, msg + 1, len - 1);
		return;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		if (rb_secret_init() != 0) // libsodium: token comparison and hashes
			abort();
		ready = 1;
	}
	static int quiet;
	if (!quiet) {
		rb_log_set_level(RB_LOG_ERROR);
		quiet = 1;
	}
	auction *a = NULL;
	if (auction_new(FUZZ_TOKEN, drop, NULL, &a) != 0)
		abort();
	auction_link_event(a, AUCTION_LINK_PRESENCE, true);
	auction_link_event(a, AUCTION_LINK_BROKER, true);
	rb_fuzz_split(data, size, 256, one, a);
	auction_free(a);
	return 0;
}
