// Protobuf framing: one protobuf message per nng message, with a size limit both ways.
#ifndef RB_PB_H
#define RB_PB_H
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <nng/nng.h>
#include <protobuf-c/protobuf-c.h>

#define RB_PB_MAX_DEFAULT (64 * 1024)       // agent link and call API
#define RB_PB_MAX_SERVICE (4 * 1024 * 1024) // service links (snapshots, CDR batches)

// Packs m into a new nng message. On success *out is the caller's. Returns 0, RB_ETOOBIG when
// the packed size exceeds limit (nothing allocated), or RB_ENOMEM.
int rb_pb_pack(const ProtobufCMessage *m, size_t limit, nng_msg **out);

// Unpacks len bytes as descriptor d. Refuses len > limit (RB_ETOOBIG) before decoding and
// malformed input (RB_EDECODE). On success *out is the caller's: free with rb_pb_free.
int rb_pb_unpack(const ProtobufCMessageDescriptor *d, const void *buf, size_t len, size_t limit,
                 ProtobufCMessage **out);

// As rb_pb_unpack, from an nng message body (the message stays the caller's).
int rb_pb_unpack_msg(const ProtobufCMessageDescriptor *d, nng_msg *msg, size_t limit,
                     ProtobufCMessage **out);

// Frees an unpacked message; NULL is fine.
void rb_pb_free(ProtobufCMessage *m);

// True when s is a usable identifier: 1..maxlen bytes of [A-Za-z0-9._:-]. Call ids, program
// ids and skills must pass before they are stored or forwarded.
bool rb_valid_id(const char *s, size_t maxlen);

// True when s is printable UTF-8 text of at most maxlen bytes (names, reasons).
bool rb_valid_text(const char *s, size_t maxlen);

#endif
