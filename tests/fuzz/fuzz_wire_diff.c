/*
 * The wire module against protobuf-c, value by value, both ways.
 *
 * 1. The input as a frame body (check_bytes): whatever the hand decoder
 *    (unpack.c) takes, protobuf-c takes and decodes to the same values;
 *    whatever protobuf-c refuses, wire_frame_decode refuses; what
 *    wire_frame_decode gives is protobuf-c's frame; and a frame protobuf-c
 *    takes that wire_frame_decode refuses has one of the reasons wire.h
 *    gives (a field numbered 0 or past 2^29 - 1, a message field given
 *    twice, the memory bound), found here by a walk of this file's own.
 *
 * 2. The input as a recipe for a frame built in memory (gen_message), with
 *    strings in every shape the packers treat apart: pack.c writes
 *    protobuf-c's bytes; wire_deliveries_encode writes bytes that decode to
 *    protobuf-c's frame; the hand decoder takes protobuf-c's encoding of a
 *    frame with records, and a Send's bytes are then hashed as they came;
 *    and the frame encoded again as protobuf allows (reencode: fields in
 *    any order, varints not minimal, uint32s with high bits to drop, a
 *    scalar or another member of a oneof before the one that counts,
 *    repeated numbers packed or not, unknown fields) decodes to the same
 *    values, by protobuf-c and by wire_frame_decode_checked.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "util/util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY 65536
#define MAX_DEPTH 6
#define UNKNOWN_BASE 100 /* field numbers from here are unknown to isg.proto */

/* --- comparing decoded messages ---------------------------------------------------------- */

static size_t elt_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(void *);
	default:
		abort(); /* bytes: not in isg.proto */
	}
}

static bool same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b, bool unknowns);

static bool same_elt(const ProtobufCFieldDescriptor *f, const void *pa, const void *pb,
                     bool unknowns)
{
	if (f->type == PROTOBUF_C_TYPE_STRING) {
		const char *s = *(char *const *)pa, *t = *(char *const *)pb;
		return strcmp(s ? s : "", t ? t : "") == 0;
	}
	if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
		const ProtobufCMessage *m = *(ProtobufCMessage *const *)pa;
		const ProtobufCMessage *n = *(ProtobufCMessage *const *)pb;
		return (!m && !n) || (m && n && same_msg(m, n, unknowns));
	}
	return memcmp(pa, pb, elt_size(f->type)) == 0; /* a double by its bits */
}

static bool same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b, bool unknowns)
{
	const ProtobufCMessageDescriptor *d = a->descriptor;
	if (b->descriptor != d)
		return false;
	const char *pa = (const char *)a, *pb = (const char *)b;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t ca = *(const uint32_t *)(pa + f->quantifier_offset);
			uint32_t cb = *(const uint32_t *)(pb + f->quantifier_offset);
			if (ca != cb)
				return false;
			if (ca != f->id)
				continue;
		}
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(pa + f->quantifier_offset);
			if (n != *(const size_t *)(pb + f->quantifier_offset))
				return false;
			const char *xa = *(char *const *)(pa + f->offset);
			const char *xb = *(char *const *)(pb + f->offset);
			size_t es = elt_size(f->type);
			for (size_t k = 0; k < n; k++)
				if (!same_elt(f, xa + k * es, xb + k * es, unknowns))
					return false;
		} else if (!same_elt(f, pa + f->offset, pb + f->offset, unknowns)) {
			return false;
		}
	}
	if (!unknowns)
		return true;
	if (a->n_unknown_fields != b->n_unknown_fields)
		return false;
	for (unsigned i = 0; i < a->n_unknown_fields; i++) {
		const ProtobufCMessageUnknownField *u = &a->unknown_fields[i];
		const ProtobufCMessageUnknownField *v = &b->unknown_fields[i];
		if (u->tag != v->tag || u->wire_type != v->wire_type || u->len != v->len ||
		    memcmp(u->data, v->data, u->len) != 0)
			return false;
	}
	return true;
}

static bool same_frame(const Isg__Frame *a, const Isg__Frame *b, bool unknowns)
{
	return same_msg(&a->base, &b->base, unknowns);
}

/* --- part 1: bytes ------------------------------------------------------------------------ */

/* A varint as protobuf-c reads it (tags and lengths of at most 5 bytes, else 10). */
static bool varint_at(const uint8_t **p, const uint8_t *end, unsigned max, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned i = 0; i < max && *p < end; i++) {
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
 * Of bytes protobuf-c decoded: whether a message in them has a field
 * numbered 0 or past 2^29 - 1, or a message field that is not repeated
 * more than once. Written apart from wire.c's walk, as an oracle for it.
 */
static bool merges_or_zero(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                           const uint8_t *end)
{
	unsigned char times[64] = {0}; /* by field number, isg.proto's below 64 */
	while (p < end) {
		uint64_t tag, v;
		if (!varint_at(&p, end, 5, &tag))
			return false; /* cannot happen: protobuf-c decoded it */
		uint32_t number = (uint32_t)(tag >> 3);
		if (number == 0 || number >= 1u << 29)
			return true;
		switch (tag & 7) {
		case 0:
			varint_at(&p, end, 10, &v);
			continue;
		case 1:
			p += 8;
			continue;
		case 5:
			p += 4;
			continue;
		default:
			break;
		}
		varint_at(&p, end, 5, &v);
		const ProtobufCFieldDescriptor *f =
		    protobuf_c_message_descriptor_get_field(d, number);
		if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
			if (f->label != PROTOBUF_C_LABEL_REPEATED && ++times[number] > 1)
				return true;
			if (merges_or_zero(f->descriptor, p, p + v))
				return true;
		}
		p += v;
	}
	return false;
}

/* An allocator that counts what protobuf-c asks for, as the arena lays it out. */
static void *count_alloc(void *ctx, size_t size)
{
	*(size_t *)ctx += (size + 2 * 16 - 1) & ~(size_t)15; /* aligned, a redzone */
	return malloc(size ? size : 1);
}

static void count_free(void *ctx, void *p)
{
	(void)ctx;
	free(p);
}

static void check_bytes(const uint8_t *body, size_t len)
{
	size_t asked = 0;
	ProtobufCAllocator counting = {count_alloc, count_free, &asked};
	Isg__Frame *pc = isg__frame__unpack(&counting, len, body);
	Isg__Frame *hand = wire_frame_decode_by(body, len, WIRE_DECODE_HAND);
	Isg__Frame *in_arena = wire_frame_decode_by(body, len, WIRE_DECODE_PROTOBUF_C);
	Isg__Frame *any;
	int rc = wire_frame_decode_checked(body, len, &any);
	/* What the hand decoder takes, protobuf-c takes alike, and it is what
	 * isgd acts on, with its strings already checked. */
	if (hand)
		CHECK(pc && any && rc == 0 && same_frame(hand, pc, true) &&
		      same_frame(any, pc, true));
	/* What protobuf-c refuses, nothing takes. */
	if (!pc)
		CHECK(!hand && !any && !in_arena);
	/* Whatever decodes is protobuf-c's frame. */
	if (any)
		CHECK(pc && same_frame(any, pc, true));
	if (in_arena)
		CHECK(pc && same_frame(in_arena, pc, true));
	if (!hand)
		CHECK(!any == !in_arena);
	CHECK((rc == ISG_ERR_PARSE) == !any);
	/* Refused where protobuf-c takes it: only for the reasons wire.h gives. */
	if (pc && !any)
		CHECK(merges_or_zero(&isg__frame__descriptor, body, body + len) ||
		      asked > (WIRE_ARENA_FACTOR * len + 64 * 1024) / 2);
	/* A Send is hashed as it came only when the hand decoder took it whole. */
	const uint8_t *sent;
	size_t sent_len;
	if (any && wire_frame_send_bytes(any, &sent, &sent_len))
		CHECK(hand && sent >= body && sent + sent_len <= body + len);
	isg__frame__free_unpacked(pc, &counting);
	wire_frame_free(hand);
	wire_frame_free(in_arena);
	wire_frame_free(any);
}

/* --- part 2: frames built from the input ---------------------------------------------- */

/* The input, read a byte at a time; zeros once it runs out. */
struct src {
	const uint8_t *p;
	size_t n;
};

static unsigned byte(struct src *s)
{
	if (!s->n)
		return 0;
	s->n--;
	return *s->p++;
}

static unsigned below(struct src *s, unsigned n)
{
	return byte(s) % n;
}

static uint64_t number(struct src *s)
{
	static const uint64_t edges[] = {
	    0,         1,          127,        128,       300,        16383,      16384,
	    INT32_MAX, UINT32_MAX, 1ull << 32, INT64_MAX, 1ull << 63, UINT64_MAX, UINT64_MAX - 1};
	unsigned how = below(s, 4);
	if (how == 0)
		return edges[below(s, ARRAY_LEN(edges))];
	uint64_t v = 0;
	unsigned bytes = how == 1 ? 1 : how == 2 ? 3 : 8;
	for (unsigned i = 0; i < bytes; i++)
		v = v << 8 | byte(s);
	return v;
}

/* Text of valid UTF-8 without a NUL (isgd refuses any other: part 1 sees those). */
static char *text(struct src *s)
{
	static const char *const pieces[] = {
	    "a", "Z", "9", " ", "-", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "\x7f"};
	size_t len = below(s, 8) == 0 ? 120 + below(s, 200) : below(s, 12);
	char *t = malloc(len * 4 + 1), *at = t;
	for (size_t i = 0; i < len; i++) {
		const char *p = pieces[below(s, ARRAY_LEN(pieces))];
		size_t n = strlen(p);
		memcpy(at, p, n);
		at += n;
	}
	*at = '\0';
	return t;
}

/* A string in each shape the packers treat apart, protobuf-c's empty default among them. */
static char *string(struct src *s, bool oneof)
{
	switch (below(s, 6)) {
	case 0:
		return oneof ? NULL : (char *)protobuf_c_empty_string;
	case 1:
		return (char *)protobuf_c_empty_string;
	case 2:
		return calloc(1, 1);
	default:
		return text(s);
	}
}

/* Unknown fields of every wire type a protobuf runtime writes. */
static void add_unknown(struct src *s, ProtobufCMessage *m)
{
	size_t n = 1 + below(s, 2);
	m->unknown_fields = calloc(n, sizeof(*m->unknown_fields));
	m->n_unknown_fields = n;
	for (size_t i = 0; i < n; i++) {
		ProtobufCMessageUnknownField *u = &m->unknown_fields[i];
		static const ProtobufCWireType wts[] = {
		    PROTOBUF_C_WIRE_TYPE_VARINT, PROTOBUF_C_WIRE_TYPE_64BIT,
		    PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, PROTOBUF_C_WIRE_TYPE_32BIT};
		u->tag = UNKNOWN_BASE + below(s, 2000);
		u->wire_type = wts[below(s, 4)];
		uint8_t buf[WIRE_VARINT_MAX + 8];
		size_t len;
		if (u->wire_type == PROTOBUF_C_WIRE_TYPE_VARINT) {
			len = wire_varint_encode(number(s), buf);
		} else if (u->wire_type == PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED) {
			size_t k = below(s, 8);
			len = wire_varint_encode(k, buf);
			for (size_t j = 0; j < k; j++)
				buf[len++] = (uint8_t)byte(s);
		} else {
			len = u->wire_type == PROTOBUF_C_WIRE_TYPE_64BIT ? 8 : 4;
			for (size_t j = 0; j < len; j++)
				buf[j] = (uint8_t)byte(s);
		}
		u->len = len;
		u->data = malloc(len);
		memcpy(u->data, buf, len);
	}
}

struct gen {
	struct src *s;
	bool unknowns; /* whether a message of the frame has unknown fields */
};

static ProtobufCMessage *gen_message(struct gen *g, const ProtobufCMessageDescriptor *d,
                                     unsigned depth);

/* One value of field f at p (an element of a repeated field, or the field). */
static void gen_value(struct gen *g, const ProtobufCFieldDescriptor *f, void *p, unsigned depth)
{
	struct src *s = g->s;
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING:
		*(char **)p = string(s, f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
		break;
	case PROTOBUF_C_TYPE_MESSAGE:
		*(ProtobufCMessage **)p = gen_message(g, f->descriptor, depth + 1);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)p = (protobuf_c_boolean)below(s, 3); /* 2: true too */
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_ENUM: {
		uint32_t v = (uint32_t)number(s);
		memcpy(p, &v, 4);
		break;
	}
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_DOUBLE: {
		uint64_t v = number(s);
		memcpy(p, &v, 8); /* a double: any bits, NaNs and -0 included */
		break;
	}
	default:
		abort(); /* not in isg.proto */
	}
}

static ProtobufCMessage *gen_message(struct gen *g, const ProtobufCMessageDescriptor *d,
                                     unsigned depth)
{
	struct src *s = g->s;
	ProtobufCMessage *m = calloc(1, d->sizeof_message);
	protobuf_c_message_init(d, m);
	char *base = (char *)m;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		bool nested = f->type == PROTOBUF_C_TYPE_MESSAGE;
		if (nested && depth >= MAX_DEPTH)
			continue;
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t *c = (uint32_t *)(base + f->quantifier_offset);
			if (*c || below(s, 3))
				continue; /* another member is set, or none chosen yet */
			*c = f->id;
			gen_value(g, f, base + f->offset, depth);
		} else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = below(s, nested ? 4 : 6);
			if (!n)
				continue;
			size_t es = elt_size(f->type);
			char *arr = calloc(n, es);
			for (size_t k = 0; k < n; k++)
				gen_value(g, f, arr + k * es, depth);
			*(size_t *)(base + f->quantifier_offset) = n;
			*(char **)(base + f->offset) = arr;
		} else if (below(s, 4)) {
			gen_value(g, f, base + f->offset, depth);
		}
	}
	/* A oneof whose case names no member: the packers write nothing for it. */
	if (d == &isg__value__descriptor && !((Isg__Value *)m)->kind_case && below(s, 16) == 0)
		((Isg__Value *)m)->kind_case = (Isg__Value__KindCase)7;
	if (below(s, 24) == 0) {
		add_unknown(s, m);
		g->unknowns = true;
	}
	return m;
}

static uint8_t *packed(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *b = malloc(*len + 1);
	CHECK(protobuf_c_message_pack(m, b) == *len);
	return b;
}

static void check_same_bytes(uint8_t *got, size_t got_len, const ProtobufCMessage *m)
{
	size_t len;
	uint8_t *want = packed(m, &len);
	CHECK(got && got_len == len && memcmp(got, want, len) == 0);
	free(want);
	free(got);
}

/* The records of a frame's Send, Delivery or first delivery of a FetchResult. */
static Isg__Record **frame_records(const Isg__Frame *f, size_t *n)
{
	*n = 0;
	if (f->body_case == ISG__FRAME__BODY_SEND && f->send) {
		*n = f->send->n_records;
		return f->send->records;
	}
	if (f->body_case == ISG__FRAME__BODY_DELIVERY && f->delivery) {
		*n = f->delivery->n_records;
		return f->delivery->records;
	}
	if (f->body_case == ISG__FRAME__BODY_FETCH_RESULT && f->fetch_result &&
	    f->fetch_result->n_deliveries) {
		*n = f->fetch_result->deliveries[0]->n_records;
		return f->fetch_result->deliveries[0]->records;
	}
	return NULL;
}

/* pack.c writes what protobuf-c writes. */
static void check_packers(const Isg__Frame *f, const uint8_t *c, size_t c_len)
{
	size_t len;
	uint8_t *got = wire_frame_pack(f, &len), hdr[WIRE_VARINT_MAX];
	size_t h = wire_varint_encode(c_len, hdr);
	CHECK(got && len == h + c_len && len == wire_frame_size(f) && memcmp(got, hdr, h) == 0 &&
	      memcmp(got + h, c, c_len) == 0);
	free(got);
	if (f->body_case == ISG__FRAME__BODY_SEND && f->send)
		check_same_bytes(wire_pack_send_request(f->send, &len), len, &f->send->base);
	size_t n;
	Isg__Record **records = frame_records(f, &n);
	Isg__Delivery only = ISG__DELIVERY__INIT;
	only.records = records;
	only.n_records = n;
	check_same_bytes(wire_pack_delivery_records(records, n, &len), len, &only.base);
}

/*
 * A Delivery or FetchResult frame as isgd sends it, its records as stored
 * (pack.c's bytes) and its metadata after them, decodes to the frame
 * protobuf-c packs of the same deliveries (the frame's own unknown fields
 * and the deliveries' aside: isgd's metadata has none).
 */
static void check_deliveries(const Isg__Frame *f)
{
	bool push = f->body_case == ISG__FRAME__BODY_DELIVERY;
	if ((!push || !f->delivery) &&
	    (f->body_case != ISG__FRAME__BODY_FETCH_RESULT || !f->fetch_result))
		return;
	size_t n = push ? 1 : f->fetch_result->n_deliveries;
	Isg__Delivery *const *ds = push ? &f->delivery : f->fetch_result->deliveries;
	Isg__Delivery *metas = calloc(n + 1, sizeof(*metas)),
	              *wholes = calloc(n + 1, sizeof(*wholes));
	Isg__Delivery **whole_ptrs = calloc(n + 1, sizeof(*whole_ptrs));
	struct wire_delivery *wd = calloc(n + 1, sizeof(*wd));
	uint8_t **stored = calloc(n + 1, sizeof(*stored));
	for (size_t i = 0; i < n; i++) {
		wholes[i] = *ds[i];
		wholes[i].base.n_unknown_fields = 0;
		wholes[i].base.unknown_fields = NULL;
		whole_ptrs[i] = &wholes[i];
		metas[i] = wholes[i];
		metas[i].n_records = 0;
		metas[i].records = NULL;
		size_t len;
		stored[i] = wire_pack_delivery_records(ds[i]->records, ds[i]->n_records, &len);
		CHECK(stored[i] && wire_records_well_formed(stored[i], len));
		wire_delivery_init(&wd[i], &metas[i], stored[i], len);
	}
	size_t size = wire_deliveries_size(f->request_id, push, wd, n);
	uint8_t *buf = malloc(size);
	CHECK(wire_deliveries_encode(f->request_id, push, wd, n, buf) == size);
	size_t hdr, body;
	CHECK(wire_frame_peek(buf, size, SIZE_MAX, &hdr, &body) == 1 && hdr + body == size);
	Isg__FetchResult fr = ISG__FETCH_RESULT__INIT;
	fr.n_deliveries = n;
	fr.deliveries = whole_ptrs;
	Isg__Frame want = ISG__FRAME__INIT;
	want.request_id = f->request_id;
	want.body_case = f->body_case;
	if (push)
		want.delivery = whole_ptrs[0];
	else
		want.fetch_result = &fr;
	size_t want_len;
	uint8_t *want_bytes = packed(&want.base, &want_len);
	Isg__Frame *expect = isg__frame__unpack(NULL, want_len, want_bytes);
	Isg__Frame *got = wire_frame_decode(buf + hdr, body);
	CHECK(expect && got && same_frame(got, expect, true));
	check_bytes(buf + hdr, body);
	wire_frame_free(got);
	isg__frame__free_unpacked(expect, NULL);
	free(want_bytes);
	free(buf);
	for (size_t i = 0; i < n; i++)
		free(stored[i]);
	free(stored);
	free(wd);
	free(whole_ptrs);
	free(wholes);
	free(metas);
}

/* --- encoding again, as protobuf allows ----------------------------------------------- */

struct out {
	uint8_t *b;
	size_t len, cap;
};

static void put(struct out *o, const void *p, size_t n)
{
	if (!o->b || o->len + n > o->cap) {
		o->cap = (o->len + n) * 2 + 64;
		o->b = realloc(o->b, o->cap);
	}
	if (n)
		memcpy(o->b + o->len, p, n);
	o->len += n;
}

/* v in at least its own size and at most max bytes, padded with zero groups. */
static void put_varint(struct out *o, struct src *s, uint64_t v, unsigned max)
{
	unsigned n = (unsigned)wire_varint_size(v);
	if (n < max && below(s, 4) == 0)
		n += below(s, max - n + 1);
	uint8_t b[WIRE_VARINT_MAX];
	for (unsigned i = 0; i < n; i++) {
		uint8_t group = i < 10 && 7 * i < 64 ? (uint8_t)((v >> (7 * i)) & 0x7f) : 0;
		b[i] = (uint8_t)(group | (i + 1 < n ? 0x80 : 0));
	}
	put(o, b, n);
}

static void put_tag(struct out *o, struct src *s, uint32_t number, unsigned wt)
{
	put_varint(o, s, (uint64_t)number << 3 | wt, 5); /* protobuf-c reads 5 bytes at most */
}

static void put_len(struct out *o, struct src *s, const struct out *body)
{
	put_varint(o, s, body->len, 5);
	put(o, body->b, body->len);
}

struct reenc {
	struct src *s;
	bool unknowns; /* unknown fields were added */
	bool merges;   /* a message field not repeated was given twice */
};

static void reencode(struct reenc *r, const ProtobufCMessage *m, struct out *o);

/* The varint a scalar field's value goes as, with what protobuf lets a parser drop. */
static uint64_t varint_of(struct src *s, const ProtobufCFieldDescriptor *f, const void *p)
{
	uint32_t u32;
	uint64_t u64;
	switch (f->type) {
	case PROTOBUF_C_TYPE_BOOL:
		/* Any value but 0 is true. */
		return *(const protobuf_c_boolean *)p ? (below(s, 2) ? 1 : number(s) | 1) : 0;
	case PROTOBUF_C_TYPE_UINT32:
		memcpy(&u32, p, 4);
		return below(s, 4) ? u32 : (number(s) << 32 | u32); /* the high bits go */
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t i32;
		memcpy(&i32, p, 4);
		/* A negative one in 10 bytes, as protobuf writes it, or in 5. */
		return below(s, 4) ? (uint64_t)(int64_t)i32 : (uint64_t)(uint32_t)i32;
	}
	case PROTOBUF_C_TYPE_SINT64: {
		int64_t i64;
		memcpy(&i64, p, 8);
		return ((uint64_t)i64 << 1) ^ (uint64_t)(i64 >> 63);
	}
	default:
		memcpy(&u64, p, 8);
		return u64;
	}
}

/* One occurrence of field f with the value at p, tag and all. */
static void put_field(struct reenc *r, const ProtobufCFieldDescriptor *f, const void *p,
                      struct out *o)
{
	struct src *s = r->s;
	struct out body = {0};
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *str = *(char *const *)p;
		put_tag(o, s, f->id, 2);
		put(&body, str, str ? strlen(str) : 0);
		put_len(o, s, &body);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		put_tag(o, s, f->id, 2);
		reencode(r, *(ProtobufCMessage *const *)p, &body);
		put_len(o, s, &body);
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		put_tag(o, s, f->id, 1);
		put(o, p, 8); /* little-endian, as on the wire */
		break;
	default:
		put_tag(o, s, f->id, 0);
		put_varint(o, s, varint_of(s, f, p), 10);
		break;
	}
	free(body.b);
}

/* A repeated number field as runs, each packed (perhaps empty) or not. */
static void put_numbers(struct reenc *r, const ProtobufCFieldDescriptor *f, const char *arr,
                        size_t n, struct out *o)
{
	struct src *s = r->s;
	size_t es = elt_size(f->type), k = 0;
	do {
		size_t run = n - k ? 1 + below(r->s, (unsigned)(n - k)) : 0;
		if (below(s, 2) || !run) {
			struct out body = {0};
			for (size_t j = 0; j < run; j++)
				put_varint(&body, s, varint_of(s, f, arr + (k + j) * es), 10);
			put_tag(o, s, f->id, 2);
			put_len(o, s, &body);
			free(body.b);
		} else {
			for (size_t j = 0; j < run; j++)
				put_field(r, f, arr + (k + j) * es, o);
		}
		k += run;
	} while (k < n);
}

/*
 * An earlier value for a field not repeated, which the one after it
 * replaces: a scalar or a string, or another member of a oneof. For a
 * message field, an empty message, which protobuf merges with the real one
 * before or after it (and isgd refuses, wire.h says why).
 */
static void put_decoy(struct reenc *r, const ProtobufCFieldDescriptor *f, struct out *o)
{
	struct src *s = r->s;
	if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
		put_tag(o, s, f->id, 2);
		put_varint(o, s, 0, 5);
		return;
	}
	uint64_t v = number(s);
	char *str = text(s);
	put_field(r, f, f->type == PROTOBUF_C_TYPE_STRING ? (const void *)&str : &v, o);
	free(str);
}

/*
 * One occurrence of something in a message: a field's value (an element
 * of a repeated one), a run of repeated numbers, a decoy, an unknown field
 * of the message, or one added.
 */
struct occ {
	unsigned queue; /* occurrences of one queue keep their order */
	const ProtobufCFieldDescriptor *f;
	const void *p; /* the value; NULL for a decoy */
	bool numbers;  /* p holds n repeated numbers */
	size_t n;
	int unknown;    /* index of an unknown field of the message, or -1 */
	uint32_t extra; /* the number of an unknown field added, or 0 */
};

#define MAX_OCC 256
#define QUEUE_ONEOF 1000u /* plus the oneof's case offset: its members share a queue */
#define QUEUE_UNKNOWN 100000u

static void put_occ(struct reenc *r, const ProtobufCMessage *m, const struct occ *c, struct out *o)
{
	struct src *s = r->s;
	if (c->unknown >= 0) {
		const ProtobufCMessageUnknownField *u = &m->unknown_fields[c->unknown];
		put_tag(o, s, u->tag, u->wire_type);
		put(o, u->data, u->len);
	} else if (c->extra) {
		put_tag(o, s, c->extra, 0);
		put_varint(o, s, number(s), 10);
	} else if (!c->p) {
		put_decoy(r, c->f, o);
	} else if (c->numbers) {
		put_numbers(r, c->f, c->p, c->n, o);
	} else {
		put_field(r, c->f, c->p, o);
	}
}

/* Whether protobuf-c writes field f of a message (proto3: not a default). */
static bool written(const ProtobufCFieldDescriptor *f, const char *base)
{
	const void *p = base + f->offset;
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *str = *(char *const *)p;
		return str && str[0];
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(ProtobufCMessage *const *)p != NULL;
	default: {
		static const uint8_t zero[8];
		return memcmp(p, zero, elt_size(f->type)) != 0;
	}
	}
}

static void add(struct occ *occ, size_t *n, struct occ c)
{
	CHECK(*n < MAX_OCC); /* the frames built here have far fewer */
	occ[(*n)++] = c;
}

/* A message field's value c at p, now and then with an empty one before or after it. */
static void add_twice(struct reenc *r, struct occ c, const void *p, struct occ *occ, size_t *n)
{
	struct occ real = c;
	real.p = p;
	bool twice = c.f->type == PROTOBUF_C_TYPE_MESSAGE && below(r->s, 8) == 0;
	bool after = twice && below(r->s, 2);
	if (twice && !after)
		add(occ, n, c);
	add(occ, n, real);
	if (after)
		add(occ, n, c);
	r->merges |= twice;
}

/* The occurrences of a oneof's member f at p: perhaps another member first. */
static void add_oneof(struct reenc *r, const ProtobufCMessageDescriptor *d,
                      const ProtobufCFieldDescriptor *f, const void *p, struct occ *occ, size_t *n)
{
	struct src *s = r->s;
	struct occ c = {.queue = QUEUE_ONEOF + f->quantifier_offset, .f = f, .unknown = -1};
	if (below(s, 4) == 0) {
		const ProtobufCFieldDescriptor *others[32];
		size_t k = 0;
		for (unsigned j = 0; j < d->n_fields && k < ARRAY_LEN(others); j++)
			if (&d->fields[j] != f &&
			    d->fields[j].flags & PROTOBUF_C_FIELD_FLAG_ONEOF &&
			    d->fields[j].quantifier_offset == f->quantifier_offset)
				others[k++] = &d->fields[j];
		if (k) {
			struct occ decoy = c;
			decoy.f = others[below(s, (unsigned)k)];
			add(occ, n, decoy);
		}
	}
	add_twice(r, c, p, occ, n);
}

/* The occurrences of field f, not in a oneof, of the message at base. */
static void add_field(struct reenc *r, unsigned i, const ProtobufCFieldDescriptor *f,
                      const char *base, struct occ *occ, size_t *n)
{
	struct src *s = r->s;
	const void *p = base + f->offset;
	struct occ c = {.queue = i, .f = f, .unknown = -1};
	bool message = f->type == PROTOBUF_C_TYPE_MESSAGE;
	if (f->label == PROTOBUF_C_LABEL_REPEATED) {
		size_t k = *(const size_t *)(base + f->quantifier_offset);
		const char *arr = *(char *const *)p;
		if (!message) { /* numbers: runs, and an empty packed run even when none */
			if (k || below(s, 8) == 0) {
				c.p = arr ? arr : base;
				c.numbers = true;
				c.n = k;
				add(occ, n, c);
			}
			return;
		}
		for (size_t j = 0; j < k; j++) {
			c.p = arr + j * elt_size(f->type);
			add(occ, n, c);
		}
		return;
	}
	if (message) {
		if (written(f, base))
			add_twice(r, c, p, occ, n);
		return;
	}
	/* A decoy first, and then the value even where it is a default: written
	 * out, a default decodes as if left out. */
	bool decoy = below(s, 6) == 0;
	if (decoy)
		add(occ, n, c);
	if (decoy || written(f, base) || below(s, 4) == 0) {
		c.p = p;
		add(occ, n, c);
	}
}

/* Deal the occurrences out: each time the next of a queue the input picks. */
static void deal(struct reenc *r, const ProtobufCMessage *m, const struct occ *occ, size_t n,
                 struct out *o)
{
	bool done[MAX_OCC] = {false};
	size_t heads[MAX_OCC];
	for (size_t left = n; left > 0; left--) {
		size_t h = 0;
		for (size_t j = 0; j < n; j++) {
			bool head = !done[j];
			for (size_t k = 0; k < j && head; k++)
				head = done[k] || occ[k].queue != occ[j].queue;
			if (head)
				heads[h++] = j;
		}
		size_t at = heads[below(r->s, (unsigned)h)];
		done[at] = true;
		put_occ(r, m, &occ[at], o);
	}
}

static void reencode(struct reenc *r, const ProtobufCMessage *m, struct out *o)
{
	struct src *s = r->s;
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *base = (const char *)m;
	struct occ *occ = calloc(MAX_OCC, sizeof(*occ));
	size_t n = 0;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			add_field(r, i, f, base, occ, &n);
		else if (*(const uint32_t *)(base + f->quantifier_offset) == f->id)
			add_oneof(r, d, f, base + f->offset, occ, &n);
	}
	for (unsigned k = 0; k < m->n_unknown_fields; k++)
		add(occ, &n, (struct occ){.queue = QUEUE_UNKNOWN, .unknown = (int)k});
	if (below(s, 8) == 0) {
		add(occ, &n,
		    (struct occ){.queue = QUEUE_UNKNOWN + 1,
		                 .unknown = -1,
		                 .extra = UNKNOWN_BASE + 3000 + below(s, 100)});
		r->unknowns = true;
	}
	deal(r, m, occ, n, o);
	free(occ);
}

static void check_generated(struct src *s)
{
	struct gen g = {s, false};
	Isg__Frame *f = (Isg__Frame *)gen_message(&g, &isg__frame__descriptor, 0);
	size_t c_len;
	uint8_t *c = packed(&f->base, &c_len);
	check_packers(f, c, c_len);
	check_deliveries(f);
	/* protobuf-c reads its own bytes; that frame is the reference. */
	Isg__Frame *ref = isg__frame__unpack(NULL, c_len, c);
	CHECK(ref);
	check_bytes(c, c_len);
	bool records = ref->body_case == ISG__FRAME__BODY_SEND ||
	               ref->body_case == ISG__FRAME__BODY_DELIVERY ||
	               ref->body_case == ISG__FRAME__BODY_FETCH_RESULT;
	if (records && !g.unknowns && c_len <= MAX_BODY) {
		/* protobuf-c's own encoding of a frame with records: the hand
		 * decoder takes it, and a Send's bytes are hashed as they came. */
		Isg__Frame *hand = wire_frame_decode_by(c, c_len, WIRE_DECODE_HAND);
		CHECK(hand && same_frame(hand, ref, true));
		const uint8_t *sent;
		size_t sent_len, want_len;
		if (hand->body_case == ISG__FRAME__BODY_SEND) {
			uint8_t *want = wire_pack_send_request(ref->send, &want_len);
			CHECK(wire_frame_send_bytes(hand, &sent, &sent_len) && want &&
			      sent_len == want_len && memcmp(sent, want, want_len) == 0);
			free(want);
		}
		wire_frame_free(hand);
	}
	for (int k = 0; k < 2 && s->n; k++) {
		struct reenc r = {s, false, false};
		struct out o = {0};
		reencode(&r, &ref->base, &o);
		put(&o, "", 0); /* a buffer even when empty: the decoders take no NULL */
		if (o.len > MAX_BODY) {
			free(o.b);
			break;
		}
		/* Unknown fields added are kept by protobuf-c: compared only
		 * where none was added. */
		bool unknowns = !r.unknowns;
		Isg__Frame *pc = isg__frame__unpack(NULL, o.len, o.b);
		Isg__Frame *got;
		int rc = wire_frame_decode_checked(o.b, o.len, &got);
		if (r.merges) {
			/* protobuf-c may read it otherwise than protobuf: refused. */
			CHECK(rc == ISG_ERR_PARSE);
		} else {
			CHECK(pc && same_frame(pc, ref, unknowns));
			CHECK(rc == 0 && same_frame(got, ref, unknowns));
		}
		check_bytes(o.b, o.len);
		wire_frame_free(got);
		isg__frame__free_unpacked(pc, NULL);
		free(o.b);
	}
	isg__frame__free_unpacked(ref, NULL);
	free(c);
	protobuf_c_message_free_unpacked(&f->base, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size <= MAX_BODY)
		check_bytes(data, size);
	struct src s = {data, size};
	check_generated(&s);
	return 0;
}
