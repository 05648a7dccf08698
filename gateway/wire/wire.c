#include "wire/wire.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "wire/internal.h"

int wire_frame_peek(const uint8_t *buf, size_t len, size_t max_frame, size_t *hdr_len,
                    size_t *body_len)
{
	uint64_t v = 0;
	for (size_t i = 0; i < WIRE_VARINT_MAX; i++) {
		if (i == len)
			return 0;
		uint8_t b = buf[i];
		if (i == WIRE_VARINT_MAX - 1 && b > 1)
			return ISG_ERR_PARSE; /* would overflow 64 bits */
		v |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			if (v > max_frame)
				return ISG_ERR_TOO_BIG;
			*hdr_len = i + 1;
			*body_len = (size_t)v;
			return 1;
		}
	}
	return ISG_ERR_PARSE;
}

/* A varint as protobuf-c reads it: at most 10 bytes, minimal or not. */
static bool raw_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned i = 0; i < WIRE_VARINT_MAX && *p < end; i++) {
		uint8_t b = *(*p)++;
		r |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*v = r;
			return true;
		}
	}
	return false;
}

/*
 * What a walk over a frame's bytes checks, at every depth (walk):
 *
 * WALK_SHAPE, what protobuf-c takes and protobuf does not read the same
 * way, for a frame protobuf-c decoded:
 * - a field numbered 0 (invalid protobuf), which protobuf-c keeps as an
 *   unknown field when its tag is not minimally encoded, yet refuses its
 *   own re-encoding of; and one numbered past protobuf's largest, 2^29 - 1,
 *   which protobuf-c, reading tags of 32 bits, keeps where protobuf's
 *   runtimes refuse the message;
 * - a message field that is not repeated given twice. protobuf merges the
 *   two; protobuf-c keeps only the second of a oneof's member (a second
 *   send{} drops the first's strings and records) and, merging the others,
 *   drops the first's text where the second has no kind (Field.value). isgd
 *   would act on other values than the sender's runtime wrote.
 *
 * WALK_STRINGS: every string is UTF-8 without a NUL (wire_frame_strings_valid).
 */
enum walk_check { WALK_SHAPE = 1, WALK_STRINGS = 2 };
#define FIELD_NUMBER_MAX 0x1fffffffu

static bool walk(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end,
                 unsigned depth, unsigned check)
{
	if (depth > 8) /* deeper than isg.proto nests */
		return false;
	uint64_t seen = 0; /* the message fields met that are not repeated, by index */
	while (p < end) {
		uint64_t tag, n;
		if (!raw_varint(&p, end, &tag) ||
		    (check & WALK_SHAPE && (tag >> 3 == 0 || tag >> 3 > FIELD_NUMBER_MAX)))
			return false;
		unsigned wt = (unsigned)(tag & 7);
		if (wt == 0 && raw_varint(&p, end, &n))
			continue;
		if ((wt == 1 || wt == 5) && (size_t)(end - p) >= (wt == 1 ? 8u : 4u)) {
			p += wt == 1 ? 8 : 4;
			continue;
		}
		if (wt != 2 || !raw_varint(&p, end, &n) || n > (uint64_t)(end - p))
			return false;
		const ProtobufCFieldDescriptor *f =
		    tag >> 3 <= UINT32_MAX
		        ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3))
		        : NULL;
		if (check & WALK_STRINGS && f && f->type == PROTOBUF_C_TYPE_STRING &&
		    (memchr(p, 0, n) || !str_utf8_valid((const char *)p, n)))
			return false;
		if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
			/* (isg.proto's messages have far fewer than 64 fields) */
			size_t i = (size_t)(f - d->fields);
			if (check & WALK_SHAPE && f->label != PROTOBUF_C_LABEL_REPEATED) {
				if (i >= 64 || seen & (UINT64_C(1) << i))
					return false;
				seen |= UINT64_C(1) << i;
			}
			if (!walk(f->descriptor, p, p + n, depth + 1, check))
				return false;
		}
		p += n;
	}
	return true;
}

bool wire_frame_strings_valid(const uint8_t *body, size_t len)
{
	return walk(&isg__frame__descriptor, body, body + len, 0, WALK_STRINGS);
}

/*
 * A decoded frame lives in an arena of its own: protobuf-c allocates every
 * message, string and array separately (over a thousand times for a Send of
 * 100 records), and bumping a pointer through one chunk costs far less than
 * malloc and free for each. The first chunk starts with the arena, and the
 * Frame is its first allocation, so wire_frame_free finds the arena from
 * the Frame alone.
 *
 * Nothing is freed before the whole frame, so protobuf-c's scratch space
 * and any field a frame repeats stay allocated. Legitimate frames take 4 to
 * 8 times their size; a hostile one of many empty parts 50 to 90 times (as
 * with malloc). The arena holds at most WIRE_ARENA_FACTOR times the frame's
 * size; a frame that needs more does not decode.
 */
struct arena_chunk {
	struct arena_chunk *next;
	size_t size, used;
	alignas(max_align_t) unsigned char data[];
};

struct arena {
	ProtobufCAllocator alloc;
	struct arena_chunk *chunks; /* the newest first; the last holds this arena */
	size_t total, budget;       /* bytes of every chunk; the most they may reach */
	struct wire_span send;      /* see wire_frame_send_bytes */
	alignas(max_align_t) unsigned char data[];
};

#define ARENA_ALIGN alignof(max_align_t)
#define ARENA_MIN_CHUNK 4096
#define ARENA_MAX_GROWTH (1024 * 1024) /* a chunk past the first adds at most this */
#define ARENA_SLACK (64 * 1024)        /* budget beyond the factor, for small frames */

/* Under AddressSanitizer, a poisoned gap after every allocation (so also
 * before the next one) and over the unused rest of each chunk, so an
 * overrun is still caught; a read far before an allocation may land in the
 * one before it unnoticed, as with malloc's redzones. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif
#ifdef ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define ARENA_REDZONE ARENA_ALIGN
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ARENA_REDZONE 0
#endif

static void *arena_alloc(void *ctx, size_t size)
{
	struct arena *a = ctx;
	if (size > SIZE_MAX / 2)
		return NULL;
	size_t asked = size;
	size = (size + ARENA_REDZONE + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
	struct arena_chunk *c = a->chunks;
	if (c->size - c->used < size) {
		size_t want = c->size < ARENA_MAX_GROWTH ? 2 * c->size : ARENA_MAX_GROWTH;
		if (want < size)
			want = size;
		if (want < ARENA_MIN_CHUNK)
			want = ARENA_MIN_CHUNK;
		if (a->budget - a->total < size)
			return NULL; /* the frame would take too much memory */
		if (a->budget - a->total < want)
			want = a->budget - a->total;
		struct arena_chunk *n = malloc(sizeof(*n) + want);
		if (!n)
			return NULL;
		n->next = c;
		n->size = want;
		n->used = 0;
		ASAN_POISON_MEMORY_REGION(n->data, want);
		a->chunks = c = n;
		a->total += want;
	}
	void *p = c->data + c->used;
	c->used += size;
	ASAN_UNPOISON_MEMORY_REGION(p, asked);
	return p;
}

static void arena_free(void *ctx, void *p)
{
	(void)ctx;
	(void)p; /* everything goes at once, in wire_frame_free */
}

/* The arena's chunks; the first of them, allocated with it, goes last. */
static void arena_release(struct arena_chunk *c)
{
	while (c) {
		struct arena_chunk *next = c->next;
		free(c);
		c = next;
	}
}

/* Back to empty, for protobuf-c to start again where unpack.c declined. */
static void arena_reset(struct arena *a)
{
	/* The first chunk is the one the arena itself lives in. */
	struct arena_chunk *first =
	    (struct arena_chunk *)((unsigned char *)a - offsetof(struct arena_chunk, data));
	struct arena_chunk *c = a->chunks;
	while (c != first) {
		struct arena_chunk *next = c->next;
		free(c);
		c = next;
	}
	const size_t head = offsetof(struct arena, data);
	first->used = head;
	ASAN_POISON_MEMORY_REGION(first->data + head, first->size - head);
	a->chunks = first;
	a->total = first->size;
}

Isg__Frame *wire_frame_decode(const uint8_t *body, size_t len)
{
	return wire_frame_decode_by(body, len, WIRE_DECODE_ANY);
}

/* *by_hand: whether unpack.c decoded it (and so checked its strings). */
static Isg__Frame *decode(const uint8_t *body, size_t len, enum wire_decoder by, bool *by_hand)
{
	*by_hand = false;
	/* A Send or Delivery decodes to about 4.5 times its size (every string
	 * gains a NUL, a pointer and alignment, every message its header): one
	 * chunk holds it. */
	const size_t head = offsetof(struct arena, data);
	if (len > (SIZE_MAX - ARENA_SLACK) / WIRE_ARENA_FACTOR)
		return NULL;
	size_t size = head + 5 * len + 1024;
	struct arena_chunk *c = malloc(sizeof(*c) + size);
	if (!c)
		return NULL;
	struct arena *a = (struct arena *)c->data;
	c->next = NULL;
	c->size = size;
	c->used = head;
	ASAN_POISON_MEMORY_REGION(c->data + head, size - head);
	*a = (struct arena){.alloc = {arena_alloc, arena_free, a},
	                    .chunks = c,
	                    .total = size,
	                    .budget = WIRE_ARENA_FACTOR * len + ARENA_SLACK};
	Isg__Frame *f = NULL;
	if (by != WIRE_DECODE_PROTOBUF_C) {
		f = wire_unpack_records_frame(&a->alloc, body, len, &a->send);
		if (f || by == WIRE_DECODE_HAND) {
			if (!f)
				arena_release(a->chunks);
			*by_hand = f != NULL;
			return f;
		}
		arena_reset(a); /* a->send stays empty: the hand decoder declined */
	}
	f = isg__frame__unpack(&a->alloc, len, body);
	/* protobuf-c allocates the message first; if a version ever did not,
	 * no frame would decode, rather than wire_frame_free going astray. */
	bool ok = f && (void *)f == a->data &&
	          walk(&isg__frame__descriptor, body, body + len, 0, WALK_SHAPE);
	if (!ok) {
		arena_release(a->chunks);
		return NULL;
	}
	return f;
}

Isg__Frame *wire_frame_decode_by(const uint8_t *body, size_t len, enum wire_decoder by)
{
	bool by_hand;
	return decode(body, len, by, &by_hand);
}

int wire_frame_decode_checked(const uint8_t *body, size_t len, Isg__Frame **out)
{
	bool by_hand;
	*out = decode(body, len, WIRE_DECODE_ANY, &by_hand);
	if (!*out)
		return ISG_ERR_PARSE;
	if (!by_hand && !wire_frame_strings_valid(body, len))
		return ISG_ERR_INVALID;
	return 0;
}

bool wire_frame_send_bytes(const Isg__Frame *frame, const uint8_t **p, size_t *len)
{
	const struct arena *a =
	    (const struct arena *)((const unsigned char *)frame - offsetof(struct arena, data));
	*p = a->send.p;
	*len = a->send.len;
	return a->send.p != NULL;
}

void wire_frame_free(Isg__Frame *frame)
{
	if (!frame)
		return;
	struct arena *a = (struct arena *)((unsigned char *)frame - offsetof(struct arena, data));
	arena_release(a->chunks);
}

size_t wire_frame_size(const Isg__Frame *frame)
{
	size_t body = isg__frame__get_packed_size(frame);
	return wire_varint_size(body) + body;
}

size_t wire_frame_encode(const Isg__Frame *frame, uint8_t *out)
{
	size_t body = isg__frame__get_packed_size(frame);
	size_t n = wire_varint_encode(body, out);
	return n + isg__frame__pack(frame, out + n);
}

/* Field tags (number << 3 | wire type) of proto/isg.proto's fields written by hand below. */
#define TAG_FRAME_REQUEST_ID 0x08u        /* Frame.request_id = 1, varint */
#define TAG_FRAME_FETCH_RESULT 0x7au      /* Frame.fetch_result = 15, length-delimited */
#define TAG_FRAME_DELIVERY 0x82u          /* Frame.delivery = 16, length-delimited ... */
#define TAG_FRAME_DELIVERY_2 0x01u        /* ... as a two-byte varint */
#define TAG_FETCH_RESULT_DELIVERIES 0x0au /* FetchResult.deliveries = 1, length-delimited */
#define TAG_DELIVERY_RECORDS 0x42u        /* Delivery.records = 8, length-delimited */

void wire_delivery_init(struct wire_delivery *d, const Isg__Delivery *meta, const uint8_t *records,
                        size_t records_len)
{
	*d = (struct wire_delivery){.meta = meta,
	                            .records = records,
	                            .records_len = records_len,
	                            .len = records_len + isg__delivery__get_packed_size(meta)};
}

/* The frame body's size; *inner gets the size of the delivery or fetch_result inside it. */
static size_t deliveries_body(uint64_t request_id, bool push, const struct wire_delivery *d,
                              size_t n, size_t *inner)
{
	size_t in = 0;
	if (push) {
		in = d[0].len;
	} else {
		for (size_t i = 0; i < n; i++)
			in += 1 + wire_varint_size(d[i].len) + d[i].len;
	}
	*inner = in;
	return (request_id ? 1 + wire_varint_size(request_id) : 0) + (push ? 2 : 1) +
	       wire_varint_size(in) + in;
}

size_t wire_deliveries_size(uint64_t request_id, bool push, const struct wire_delivery *d, size_t n)
{
	size_t inner;
	size_t body = deliveries_body(request_id, push, d, n, &inner);
	return wire_varint_size(body) + body;
}

/* In an answer: its tag and length (at most 11 bytes); pushed, a frame of
 * its own (varint length, request_id's tag and varint, the delivery's two
 * byte tag and varint length: at most 33 bytes). */
#define DELIVERY_BYTES 16
_Static_assert(WIRE_VARINT_MAX + 1 + WIRE_VARINT_MAX + 1 + WIRE_VARINT_MAX <= WIRE_ANSWER_BYTES &&
                   1 + WIRE_VARINT_MAX <= DELIVERY_BYTES &&
                   WIRE_VARINT_MAX + 1 + WIRE_VARINT_MAX + 2 + WIRE_VARINT_MAX <=
                       WIRE_ANSWER_BYTES + DELIVERY_BYTES,
               "the bounds hold every header");

size_t wire_delivery_bound(const struct wire_delivery *d, bool push)
{
	return d->len + DELIVERY_BYTES + (push ? WIRE_ANSWER_BYTES : 0);
}

/* The stored records first, then the metadata: of a field given twice, the last counts. */
static size_t put_delivery(const struct wire_delivery *d, uint8_t *out)
{
	if (d->records_len)
		memcpy(out, d->records, d->records_len);
	return d->records_len + isg__delivery__pack(d->meta, out + d->records_len);
}

bool wire_records_well_formed(const uint8_t *p, size_t len)
{
	while (len > 0) {
		/* After the tag, a length and that many bytes: a frame header's shape. */
		size_t hdr, body;
		if (p[0] != TAG_DELIVERY_RECORDS ||
		    wire_frame_peek(p + 1, len - 1, len - 1, &hdr, &body) != 1 ||
		    body > len - 1 - hdr)
			return false;
		p += 1 + hdr + body;
		len -= 1 + hdr + body;
	}
	return true;
}

size_t wire_deliveries_encode(uint64_t request_id, bool push, const struct wire_delivery *d,
                              size_t n, uint8_t *out)
{
	size_t inner;
	size_t body = deliveries_body(request_id, push, d, n, &inner);
	uint8_t *p = out + wire_varint_encode(body, out);
	if (request_id) {
		*p++ = TAG_FRAME_REQUEST_ID;
		p += wire_varint_encode(request_id, p);
	}
	if (push) {
		*p++ = TAG_FRAME_DELIVERY;
		*p++ = TAG_FRAME_DELIVERY_2;
	} else {
		*p++ = TAG_FRAME_FETCH_RESULT;
	}
	p += wire_varint_encode(inner, p);
	if (push) {
		p += put_delivery(&d[0], p);
	} else {
		for (size_t i = 0; i < n; i++) {
			*p++ = TAG_FETCH_RESULT_DELIVERIES;
			p += wire_varint_encode(d[i].len, p);
			p += put_delivery(&d[i], p);
		}
	}
	return (size_t)(p - out);
}

static bool str_ok(const char *s)
{
	return !s || str_utf8_valid(s, strlen(s));
}

static bool records_ok(size_t n, Isg__Record **records)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < records[i]->n_fields; j++) {
			const Isg__Field *f = records[i]->fields[j];
			if (!str_ok(f->name))
				return false;
			if (f->value && f->value->kind_case == ISG__VALUE__KIND_TEXT &&
			    !str_ok(f->value->text))
				return false;
		}
	}
	return true;
}

int wire_frame_check_utf8(const Isg__Frame *f)
{
	bool ok = true;
	switch (f->body_case) {
	case ISG__FRAME__BODY_HELLO:
		ok = str_ok(f->hello->client_name);
		break;
	case ISG__FRAME__BODY_SEND: {
		const Isg__SendRequest *s = f->send;
		ok = str_ok(s->message_id) && str_ok(s->recipient) && str_ok(s->agreement_id) &&
		     str_ok(s->dataset) && records_ok(s->n_records, s->records);
		break;
	}
	case ISG__FRAME__BODY_DELIVERY: {
		const Isg__Delivery *d = f->delivery;
		ok = str_ok(d->message_id) && str_ok(d->sender) && str_ok(d->agreement_id) &&
		     str_ok(d->purpose) && str_ok(d->dataset) &&
		     records_ok(d->n_records, d->records);
		break;
	}
	case ISG__FRAME__BODY_ERROR:
		ok = str_ok(f->error->message) && str_ok(f->error->field) && str_ok(f->error->rule);
		break;
	default:
		break;
	}
	return ok ? 0 : ISG_ERR_PARSE;
}

const char *wire_body_name(Isg__Frame__BodyCase body)
{
	switch (body) {
	case ISG__FRAME__BODY_HELLO:
		return "hello";
	case ISG__FRAME__BODY_WELCOME:
		return "welcome";
	case ISG__FRAME__BODY_SEND:
		return "send";
	case ISG__FRAME__BODY_SEND_RESULT:
		return "send_result";
	case ISG__FRAME__BODY_FETCH:
		return "fetch";
	case ISG__FRAME__BODY_FETCH_RESULT:
		return "fetch_result";
	case ISG__FRAME__BODY_DELIVERY:
		return "delivery";
	case ISG__FRAME__BODY_ACK:
		return "ack";
	case ISG__FRAME__BODY_ACK_RESULT:
		return "ack_result";
	case ISG__FRAME__BODY_SUBSCRIBE:
		return "subscribe";
	case ISG__FRAME__BODY_PING:
		return "ping";
	case ISG__FRAME__BODY_PONG:
		return "pong";
	case ISG__FRAME__BODY_ERROR:
		return "error";
	default:
		return "none";
	}
}
