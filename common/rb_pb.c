// Protobuf framing: one protobuf message per nng message, size-limited, plus field validators.
#include "rb_pb.h"

#include <string.h>

#include "rb_err.h"

int rb_pb_pack(const ProtobufCMessage *m, size_t limit, nng_msg **out)
{
	nng_msg *msg;
	size_t size;
	size_t packed;

	if (m == NULL || out == NULL)
		return RB_EINVAL;
	*out = NULL;
	size = protobuf_c_message_get_packed_size(m);
	if (size > limit)
		return RB_ETOOBIG;
	if (nng_msg_alloc(&msg, size) != 0)
		return RB_ENOMEM;
	// nng_msg_alloc(0) still gives a valid message; packing nothing into it is fine.
	packed = protobuf_c_message_pack(m, nng_msg_body(msg));
	if (packed != size) {
		// A message mutated between sizing and packing would overrun the body; refuse it.
		nng_msg_free(msg);
		return RB_EINVAL;
	}
	*out = msg;
	return 0;
}

// protobuf-c 1.4.1 keeps a field numbered 0 written as an overlong varint ("80 00") as an
// unknown field, although field 0 is invalid and the same message packed again no longer
// decodes. Such bytes come only from a broken or hostile peer: refuse them, so that everything
// accepted also survives being packed again (billing hashes CDRs by their encoding). Proto
// types here are not recursive, so the walk is bounded by the schema's depth.
static bool has_field_zero(const ProtobufCMessage *m)
{
	for (unsigned i = 0; i < m->n_unknown_fields; i++) {
		if (m->unknown_fields[i].tag == 0)
			return true;
	}
	const ProtobufCMessageDescriptor *d = m->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		const char *base = (const char *)m;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + f->quantifier_offset);
			ProtobufCMessage *const *sub =
			        *(ProtobufCMessage *const *const *)(base + f->offset);
			for (size_t k = 0; k < n; k++) {
				if (sub[k] != NULL && has_field_zero(sub[k]))
					return true;
			}
		} else {
			const ProtobufCMessage *sub =
			        *(ProtobufCMessage *const *)(base + f->offset);
			// A oneof member's pointer is only meaningful while its case is selected.
			if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
				uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
				if (which != f->id)
					continue;
			}
			if (sub != NULL && has_field_zero(sub))
				return true;
		}
	}
	return false;
}

int rb_pb_unpack(const ProtobufCMessageDescriptor *d, const void *buf, size_t len, size_t limit,
                 ProtobufCMessage **out)
{
	ProtobufCMessage *m;

	if (d == NULL || out == NULL || (buf == NULL && len > 0))
		return RB_EINVAL;
	*out = NULL;
	// The size check comes first so that an oversized body is never handed to the decoder.
	if (len > limit)
		return RB_ETOOBIG;
	m = protobuf_c_message_unpack(d, NULL, len, len > 0 ? buf : (const uint8_t *)"");
	if (m == NULL)
		return RB_EDECODE;
	if (has_field_zero(m)) {
		protobuf_c_message_free_unpacked(m, NULL);
		return RB_EDECODE;
	}
	*out = m;
	return 0;
}

int rb_pb_unpack_msg(const ProtobufCMessageDescriptor *d, nng_msg *msg, size_t limit,
                     ProtobufCMessage **out)
{
	if (msg == NULL) {
		if (out != NULL)
			*out = NULL;
		return RB_EINVAL;
	}
	return rb_pb_unpack(d, nng_msg_body(msg), nng_msg_len(msg), limit, out);
}

void rb_pb_free(ProtobufCMessage *m)
{
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
}

bool rb_valid_id(const char *s, size_t maxlen)
{
	size_t i;

	if (s == NULL || s[0] == '\0')
		return false;
	for (i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i >= maxlen)
			return false;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '_' || c == ':' || c == '-')
			continue;
		return false;
	}
	return true;
}

// Decodes one UTF-8 sequence at s (strictly: no overlong forms, no surrogates, nothing past
// U+10FFFF). Returns its length and stores the code point, or 0 when malformed.
static size_t utf8_decode(const unsigned char *s, uint32_t *cp)
{
	uint32_t c = s[0];
	size_t n;
	uint32_t min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
		c &= 0x1F;
		min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		c &= 0x0F;
		min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		c &= 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		// A NUL here also fails the continuation test, so the scan never runs off the
		// string.
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

// Characters that are not text: controls, line and paragraph separators, bidirectional
// overrides (which can make a name display as something else) and non-characters.
static bool printable(uint32_t cp)
{
	if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F))
		return false;
	if (cp == 0x2028 || cp == 0x2029)
		return false;
	if ((cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069))
		return false;
	if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE)
		return false;
	return true;
}

bool rb_valid_text(const char *s, size_t maxlen)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t off = 0;

	if (s == NULL)
		return false;
	while (p[off] != '\0') {
		uint32_t cp;
		size_t n = utf8_decode(p + off, &cp);

		if (n == 0 || !printable(cp))
			return false;
		off += n;
		if (off > maxlen)
			return false;
	}
	return true;
}
