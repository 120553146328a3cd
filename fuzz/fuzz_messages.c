// Fuzz target: every protobuf message ringbid reads from a socket or a file. The first byte
// picks the message type, the rest is decoded with the limit of the socket it arrives on, then
// packed again and decoded again (protobuf-c 1.4 checks only the wire format, so a value that
// decodes must also survive the round trip), and the billing checks that run on CDRs from the
// broker are applied as billing applies them.
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rb_secret.h"
#include "ingest.h"
#include "rb_pb.h"
#include "ringbid.pb-c.h"

typedef struct fuzz_msg_type {
	const ProtobufCMessageDescriptor *d;
	size_t limit; // the receive limit of the socket (or file) it arrives on
} fuzz_msg_type;

static const fuzz_msg_type types[] = {
        {&ringbid__call_request__descriptor, RB_PB_MAX_DEFAULT},  // telephony -> broker
        {&ringbid__call_reply__descriptor, RB_PB_MAX_DEFAULT},    // broker -> ringbid call
        {&ringbid__agent_msg__descriptor, RB_PB_MAX_DEFAULT},     // agent <-> presence
        {&ringbid__envelope__descriptor, RB_PB_MAX_SERVICE},      // service links
        {&ringbid__cdr_batch__descriptor, RB_PB_MAX_SERVICE},     // broker -> billing
        {&ringbid__cdr_ack__descriptor, RB_PB_MAX_SERVICE},       // billing -> broker
        {&ringbid__journal_entry__descriptor, RB_PB_MAX_SERVICE}, // the broker's journal
};
#define NTYPES (sizeof types / sizeof types[0])

static void check_cdrs(const Ringbid__CdrBatch *b)
{
	for (size_t i = 0; i < b->n_cdrs; i++) {
		char hash[65];
		(void)billing_cdr_invalid(b->cdrs[i]);
		if (billing_cdr_hash(b->cdrs[i], hash) == 0 && strlen(hash) != 64)
			abort();
	}
	char *json = NULL;
	if (b->n_cdrs <= BILLING_MAX_BATCH && billing_batch_json(b->cdrs, b->n_cdrs, &json) == 0) {
		if (json == NULL || json[0] != '[')
			abort();
		free(json);
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
	if (size < 1)
		return 0;
	const fuzz_msg_type *t = &types[data[0] % NTYPES];
	ProtobufCMessage *m = NULL;
	if (rb_pb_unpack(t->d, data + 1, size - 1, t->limit, &m) != 0)
		return 0;

	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *again = malloc(n ? n : 1);
	if (again == NULL)
		abort();
	if (protobuf_c_message_pack(m, again) != n)
		abort();
	ProtobufCMessage *m2 = NULL;
	// Repacking never grows a message: what decoded once must decode again.
	if (rb_pb_unpack(t->d, again, n, t->limit, &m2) != 0)
		abort();
	size_t n2 = protobuf_c_message_get_packed_size(m2);
	uint8_t *third = malloc(n2 ? n2 : 1);
	if (third == NULL || protobuf_c_message_pack(m2, third) != n2)
		abort();
	// protobuf-c packs in a fixed order: the second encoding equals the first (the CDR hash
	// that makes billing's deduplication work relies on this).
	if (n2 != n || memcmp(again, third, n) != 0)
		abort();
	if (t->d == &ringbid__cdr_batch__descriptor)
		check_cdrs((const Ringbid__CdrBatch *)m);
	free(third);
	free(again);
	rb_pb_free(m2);
	rb_pb_free(m);
	return 0;
}
