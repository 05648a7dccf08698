/*
 * wire: the protobuf glue. A frame on the stream is a varint length followed
 * by a packed isg.Frame (protobuf's delimited convention). The length is
 * checked against the limit before anything is allocated.
 */
#ifndef ISG_WIRE_H
#define ISG_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isg.pb-c.h"

#define WIRE_PROTOCOL_VERSION 1
#define WIRE_VARINT_MAX 10
#define WIRE_DEFAULT_MAX_FRAME (4u * 1024 * 1024)

/*
 * Look at the start of a stream buffer. Returns:
 *   1 and sets *hdr_len, *body_len when a whole frame header is present
 *     (the body may not be complete yet: check hdr_len + body_len <= len);
 *   0 when more bytes are needed to read the length;
 *   ISG_ERR_PARSE for a varint longer than 10 bytes or overflowing 64 bits;
 *   ISG_ERR_TOO_BIG when the length exceeds max_frame.
 */
int wire_frame_peek(const uint8_t *buf, size_t len, size_t max_frame, size_t *hdr_len,
                    size_t *body_len);

/*
 * Decode one frame body; NULL when it is not a valid isg.Frame, when it
 * gives a message field that is not repeated twice (protobuf merges the
 * two, protobuf-c does not always: refused rather than read otherwise
 * than its sender meant), or when decoded it would take more than
 * WIRE_ARENA_FACTOR times its size (plus 64 KiB) in memory. Free with
 * wire_frame_free.
 */
#define WIRE_ARENA_FACTOR 64
Isg__Frame *wire_frame_decode(const uint8_t *body, size_t len);
/*
 * The same, choosing the decoder: a frame holding records (Send, Delivery,
 * FetchResult) in the encoding protobuf-c writes is decoded by hand
 * (unpack.c), any other by protobuf-c. WIRE_DECODE_HAND gives NULL where
 * the hand decoder declines; the tests and the benchmark compare the two.
 */
enum wire_decoder { WIRE_DECODE_ANY, WIRE_DECODE_HAND, WIRE_DECODE_PROTOBUF_C };
Isg__Frame *wire_frame_decode_by(const uint8_t *body, size_t len, enum wire_decoder by);
void wire_frame_free(Isg__Frame *frame);

/* Bytes wire_frame_encode will write: varint header plus packed body. */
size_t wire_frame_size(const Isg__Frame *frame);
/* Write the varint header and the packed frame; returns bytes written. */
size_t wire_frame_encode(const Isg__Frame *frame, uint8_t *out);

/*
 * Deliveries whose records go out as they were stored. A stored payload is
 * a packed Delivery that holds only its records (policy_apply), and
 * protobuf merges concatenated encodings: those bytes followed by the
 * packed metadata decode as one Delivery with both (should the stored
 * bytes ever hold metadata, the metadata written after them wins). This
 * spares decoding and encoding again every record of every delivery.
 */
struct wire_delivery {
	const Isg__Delivery *meta; /* the metadata; no records */
	const uint8_t *records;    /* a packed Delivery with records only */
	size_t records_len;
	size_t len; /* bytes of the delivery in a frame, without its own tag and length */
};
/* Fill in d, working out its len once. */
void wire_delivery_init(struct wire_delivery *d, const Isg__Delivery *meta, const uint8_t *records,
                        size_t records_len);

/*
 * True when bytes are a sequence of Delivery.records fields (tag, length,
 * that many bytes) and nothing else: what a stored payload must be before
 * it is sent as it is. The records themselves are not decoded.
 */
bool wire_records_well_formed(const uint8_t *bytes, size_t len);
/*
 * Bytes wire_deliveries_encode will write: a frame with its varint header,
 * Frame{request_id, delivery = d[0]} when push (n must be 1), else
 * Frame{request_id, fetch_result = {deliveries = d[0..n)}}.
 */
size_t wire_deliveries_size(uint64_t request_id, bool push, const struct wire_delivery *d,
                            size_t n);
size_t wire_deliveries_encode(uint64_t request_id, bool push, const struct wire_delivery *d,
                              size_t n, uint8_t *out);
/*
 * Bounds on what wire_deliveries_encode writes, whatever the request_id:
 * a fetch answer is at most WIRE_ANSWER_BYTES plus wire_delivery_bound of
 * each delivery (push false), a push at most wire_delivery_bound (push
 * true). isgd's store measures a fetch with them before it marks the
 * messages delivered, and the handler sends what the store took.
 */
#define WIRE_ANSWER_BYTES 64
size_t wire_delivery_bound(const struct wire_delivery *d, bool push);

/* Varint helpers, inline: the packers call them several times a field. */
static inline size_t wire_varint_encode(uint64_t v, uint8_t out[static WIRE_VARINT_MAX])
{
	size_t n = 0;
	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

static inline size_t wire_varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/*
 * The same bytes as protobuf-c's pack, measuring each string once
 * (pack.c): a Delivery holding only these records (a stored payload), and
 * a SendRequest (what its request hash is taken over). malloc'd; NULL when
 * out of memory.
 */
uint8_t *wire_pack_delivery_records(Isg__Record *const *records, size_t n, size_t *len);
uint8_t *wire_pack_send_request(const Isg__SendRequest *req, size_t *len);
/* The bytes of wire_frame_encode, a Send's through wire_pack_send_request. */
uint8_t *wire_frame_pack(const Isg__Frame *frame, size_t *len);

/*
 * Walk the strings of a decoded Hello, Send, Delivery or Error frame (other
 * bodies are not looked at) and check they are valid UTF-8 (protobuf-c
 * does not). Returns 0 or ISG_ERR_PARSE. isgd and the client check the
 * bytes instead (wire_frame_strings_valid, which also sees a NUL and every
 * body); this is the unit tests' and fuzz_frame's second opinion.
 */
int wire_frame_check_utf8(const Isg__Frame *frame);

/*
 * Whether every string field of a frame's body, at every depth, is valid
 * UTF-8 and holds no NUL. Read from the bytes: a decoded string ends at its
 * first NUL, so "9434765919\0..." would pass as a valid NHS number, and what
 * follows the NUL would be lost without a word.
 */
bool wire_frame_strings_valid(const uint8_t *body, size_t len);

/*
 * wire_frame_decode and wire_frame_strings_valid in one, checking the
 * strings as they are copied when the frame is decoded by hand. Returns 0
 * and the frame; ISG_ERR_PARSE and NULL when it does not decode;
 * ISG_ERR_INVALID and the frame (for its request_id; free it) when a string
 * is not UTF-8 or holds a NUL.
 */
int wire_frame_decode_checked(const uint8_t *body, size_t len, Isg__Frame **out);

/*
 * The bytes a decoded frame's Send was decoded from, when they are exactly
 * what wire_pack_send_request packs of it (as protobuf-c and most encoders
 * write a Send): a request hash taken over them needs no packing. They lie
 * in the buffer the frame was decoded from, so they are only valid while
 * that buffer is unchanged: for isgd, during the net handler's on_frame.
 * false (and nothing to hash) for any other frame, or encoding. Only for a
 * frame from wire_frame_decode, wire_frame_decode_by or
 * wire_frame_decode_checked: it reads the arena the frame lives in.
 */
bool wire_frame_send_bytes(const Isg__Frame *frame, const uint8_t **p, size_t *len);

/* Name of a frame body, for logs ("send", "fetch", ...). */
const char *wire_body_name(Isg__Frame__BodyCase body);

#endif
