/* Shared between the wire module's files; not for its users. */
#ifndef ISG_WIRE_INTERNAL_H
#define ISG_WIRE_INTERNAL_H

#include "wire/wire.h"

/* Some bytes of a buffer. */
struct wire_span {
	const uint8_t *p;
	size_t len;
};

/*
 * A Frame holding a Send, a Delivery or a FetchResult, decoded by hand with
 * allocator a (unpack.c); NULL for every other frame, and for any encoding
 * protobuf-c's own packing would not write, which wire_frame_decode then
 * hands to protobuf-c. Its strings are valid UTF-8. The Frame is a's
 * first allocation. For a Send, taken whole, whose bytes are exactly
 * what wire_pack_send_request packs of it, *send is those bytes within
 * buf; otherwise (the NULL returns included) it is empty.
 */
Isg__Frame *wire_unpack_records_frame(ProtobufCAllocator *a, const uint8_t *buf, size_t len,
                                      struct wire_span *send);

#endif
