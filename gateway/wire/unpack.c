/*
 * The frames that carry records (Send, Delivery, FetchResult) decoded by
 * hand, into the same structures protobuf-c's unpack builds. protobuf-c
 * walks each message twice, looks up every field's descriptor, and calls
 * the allocator for every string, message and array; a 100-record Send
 * spent more time there than in the policy applied to it.
 *
 * Only the encoding protobuf-c itself writes is taken: known fields with
 * their own wire types, each singular field and oneof at most once, and
 * varints (tags included) minimally encoded, and strings of valid UTF-8
 * without a NUL. Anything else (unknown or repeated fields, another frame
 * body, a non-minimal varint, a truncated part, a string that is not UTF-8
 * or holds a NUL) is
 * declined, and wire_frame_decode hands the frame to protobuf-c,
 * which decides (refusing with wire.c's walk what protobuf would read
 * otherwise). So every frame this decodes, protobuf-c decodes to the
 * same thing: the unit tests and fuzz_frame compare the two. The one
 * difference is memory: this takes less than protobuf-c, whose scratch
 * space counts against the same arena's bound (WIRE_ARENA_FACTOR), so a
 * frame of many empty parts near the bound that protobuf-c could not
 * decode within it may decode here, still within the bound.
 *
 * A frame declined at its last byte is decoded twice, by hand and then by
 * protobuf-c: at most about 1.5 times protobuf-c's work alone.
 */
#include <string.h>

#include "util/util.h"
#include "wire/internal.h"

struct in {
	const uint8_t *p, *end;
	ProtobufCAllocator *a;
	struct text *text; /* inside a record: where its strings go */
	bool *repacks;     /* set when protobuf-c would pack what is decoded otherwise */
	bool ascii;        /* inside a record of ASCII bytes only: its strings are UTF-8 */
};

/*
 * A record's strings share one allocation made with it, of the record's
 * length: each string takes its length and a NUL, and came after at least
 * a tag and a length byte of the record.
 */
struct text {
	char *at, *end;
};

enum { WT_VARINT = 0, WT_FIXED64 = 1, WT_LEN = 2, WT_FIXED32 = 5 };

static void *take(struct in *in, size_t size)
{
	return in->a->alloc(in->a->allocator_data, size);
}

/* A minimally encoded varint of at most 64 bits. */
static bool get_varint_long(struct in *in, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned shift = 0; shift < 64 && in->p < in->end; shift += 7) {
		uint8_t b = *in->p++;
		r |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			if ((b == 0 && shift) || (shift == 63 && b > 1))
				return false;
			*v = r;
			return true;
		}
	}
	return false;
}

/*
 * The small readers are inlined into every loop that calls them. Called,
 * each handed its results back through memory for the caller to read at
 * once: a 100-record Send took 102-113 us to decode instead of 65-72.
 */
#define INLINE static inline __attribute__((always_inline))

/* Tags, lengths and most numbers take one byte: that case inline. */
INLINE bool get_varint(struct in *in, uint64_t *v)
{
	if (in->p < in->end && *in->p < 0x80) {
		*v = *in->p++;
		return true;
	}
	return get_varint_long(in, v);
}

INLINE bool get_tag(struct in *in, uint32_t *field, unsigned *wt)
{
	uint64_t t;
	if (!get_varint(in, &t) || t > UINT32_MAX || t >> 3 == 0)
		return false;
	*field = (uint32_t)(t >> 3);
	*wt = (unsigned)(t & 7);
	return true;
}

/* The body of a length-delimited field, as its own input. */
INLINE bool get_len(struct in *in, struct in *body)
{
	uint64_t n;
	if (!get_varint(in, &n) || n > (uint64_t)(in->end - in->p))
		return false;
	*body = (struct in){in->p, in->p + n, in->a, in->text, in->repacks, in->ascii};
	in->p += n;
	return true;
}

/* Only valid UTF-8 is taken, so a frame decoded here needs no other check. */
static bool get_string(struct in *in, char **out)
{
	struct in s;
	if (!get_len(in, &s))
		return false;
	size_t n = (size_t)(s.end - s.p);
	/* protobuf-c decodes it, and wire_frame_strings_valid refuses it. */
	if ((!in->ascii && !str_utf8_valid((const char *)s.p, n)) || memchr(s.p, 0, n))
		return false;
	char *str;
	if (in->text) {
		if ((size_t)(in->text->end - in->text->at) <= n)
			return false; /* cannot happen (see struct text) */
		str = in->text->at;
		in->text->at += n + 1;
	} else if (!(str = take(in, n + 1))) {
		return false;
	}
	memcpy(str, s.p, n);
	str[n] = '\0';
	*out = str;
	return true;
}

static bool skip(struct in *in, unsigned wt)
{
	uint64_t v;
	struct in s;
	switch (wt) {
	case WT_VARINT:
		return get_varint(in, &v);
	case WT_FIXED64:
	case WT_FIXED32: {
		size_t n = wt == WT_FIXED64 ? 8 : 4;
		if ((size_t)(in->end - in->p) < n)
			return false;
		in->p += n;
		return true;
	}
	case WT_LEN:
		return get_len(in, &s);
	default:
		return false; /* groups: not in isg.proto */
	}
}

/* How many times a length-delimited field occurs in a message's body. */
static bool count(struct in in, uint32_t wanted, size_t *n)
{
	*n = 0;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		if (!get_tag(&in, &field, &wt) || !skip(&in, wt))
			return false;
		*n += field == wanted && wt == WT_LEN;
	}
	return true;
}

/* Marks a singular field as seen; false when it was seen already. */
static bool first(uint32_t *seen, uint32_t field)
{
	uint32_t bit = 1u << field;
	if (*seen & bit)
		return false;
	*seen |= bit;
	return true;
}

static bool get_value(struct in in, Isg__Value *v)
{
	*v = (Isg__Value)ISG__VALUE__INIT;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		uint64_t n;
		if (!get_tag(&in, &field, &wt) || v->kind_case != ISG__VALUE__KIND__NOT_SET)
			return false; /* a second member of the oneof */
		if (field == 1 && wt == WT_LEN) {
			if (!get_string(&in, &v->text))
				return false;
		} else if (field == 2 && wt == WT_VARINT) {
			if (!get_varint(&in, &n))
				return false;
			v->integer = (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
		} else if (field == 3 && wt == WT_FIXED64) {
			if (in.end - in.p < 8)
				return false;
			uint64_t bits = 0;
			for (unsigned i = 0; i < 8; i++)
				bits |= (uint64_t)in.p[i] << (8 * i);
			memcpy(&v->real, &bits, sizeof(v->real));
			in.p += 8;
		} else if (field == 4 && wt == WT_VARINT) {
			if (!get_varint(&in, &n) || n > 1)
				return false;
			v->boolean = n == 1;
		} else {
			return false;
		}
		v->kind_case = (Isg__Value__KindCase)field;
	}
	return true;
}

static bool get_field(struct in in, Isg__Field *f, Isg__Value *value)
{
	*f = (Isg__Field)ISG__FIELD__INIT;
	uint32_t seen = 0;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		struct in body;
		if (!get_tag(&in, &field, &wt) || wt != WT_LEN || field > 2 || !first(&seen, field))
			return false;
		if (field == 1) {
			if (!get_string(&in, &f->name))
				return false;
			/* protobuf-c leaves an empty name out, and packs the name first */
			if (!f->name[0] || f->value)
				*in.repacks = true;
		} else {
			f->value = value;
			if (!get_len(&in, &body) || !get_value(body, value))
				return false;
		}
	}
	return true;
}

static bool get_record(struct in in, Isg__Record *r)
{
	*r = (Isg__Record)ISG__RECORD__INIT;
	size_t n;
	if (!count(in, 1, &n))
		return false;
	if (n == 0)
		return in.p == in.end; /* any other field is unknown */
	/* One allocation for the record's parts: n fields take at least 2n
	 * bytes of a frame the arena's budget bounds, so this cannot overflow. */
	size_t len = (size_t)(in.end - in.p);
	Isg__Field **ptrs =
	    take(&in, n * (sizeof(*ptrs) + sizeof(Isg__Field) + sizeof(Isg__Value)) + len);
	if (!ptrs)
		return false;
	Isg__Field *fields = (Isg__Field *)(ptrs + n);
	Isg__Value *values = (Isg__Value *)(fields + n);
	struct text text = {(char *)(values + n), (char *)(values + n) + len};
	in.text = &text;
	/* Any byte of a multi-byte character is above 0x7f: a record without
	 * one holds only ASCII strings, and one check covers them all. */
	in.ascii = str_ascii(in.p, len);
	r->fields = ptrs;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		struct in body;
		if (!get_tag(&in, &field, &wt) || field != 1 || wt != WT_LEN || r->n_fields == n ||
		    !get_len(&in, &body))
			return false; /* (more than counted cannot happen) */
		Isg__Field *f = &fields[r->n_fields];
		if (!get_field(body, f, &values[r->n_fields]))
			return false;
		ptrs[r->n_fields++] = f;
	}
	return true;
}

/* The records of a Send (field 5) or a Delivery (field 8): n of them, counted before. */
static bool records_alloc(struct in *in, size_t n, Isg__Record ***out)
{
	if (n == 0)
		return true;
	Isg__Record **ptrs = take(in, n * sizeof(*ptrs));
	Isg__Record *records = take(in, n * sizeof(*records));
	if (!ptrs || !records)
		return false;
	for (size_t i = 0; i < n; i++)
		ptrs[i] = &records[i];
	*out = ptrs;
	return true;
}

static bool get_send(struct in in, Isg__SendRequest *s)
{
	*s = (Isg__SendRequest)ISG__SEND_REQUEST__INIT;
	size_t n;
	if (!count(in, 5, &n) || !records_alloc(&in, n, &s->records))
		return false;
	uint32_t seen = 0, last = 0;
	char **strings[] = {NULL, &s->message_id, &s->recipient, &s->agreement_id, &s->dataset};
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		struct in body;
		if (!get_tag(&in, &field, &wt))
			return false;
		if (field < last) /* protobuf-c packs fields in the order of their numbers */
			*in.repacks = true;
		last = field;
		if (field >= 1 && field <= 4 && wt == WT_LEN) {
			if (!first(&seen, field) || !get_string(&in, strings[field]))
				return false;
			if (!(*strings[field])[0]) /* left out when empty */
				*in.repacks = true;
		} else if (field == 5 && wt == WT_LEN) {
			if (s->n_records == n || !get_len(&in, &body) ||
			    !get_record(body, s->records[s->n_records++]))
				return false;
		} else if (field == 6 && wt == WT_VARINT) {
			if (!first(&seen, field) || !get_varint(&in, &s->reply_to))
				return false;
			if (s->reply_to == 0) /* left out when zero */
				*in.repacks = true;
		} else {
			return false;
		}
	}
	return true;
}

static bool get_delivery(struct in in, Isg__Delivery *d)
{
	*d = (Isg__Delivery)ISG__DELIVERY__INIT;
	size_t n;
	if (!count(in, 8, &n) || !records_alloc(&in, n, &d->records))
		return false;
	uint32_t seen = 0;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		uint64_t v = 0;
		char **str = NULL;
		struct in body;
		if (!get_tag(&in, &field, &wt))
			return false;
		switch (field) {
		case 2:
			str = &d->message_id;
			break;
		case 3:
			str = &d->sender;
			break;
		case 4:
			str = &d->agreement_id;
			break;
		case 6:
			str = &d->purpose;
			break;
		case 7:
			str = &d->dataset;
			break;
		case 8:
			if (wt != WT_LEN || d->n_records == n || !get_len(&in, &body) ||
			    !get_record(body, d->records[d->n_records++]))
				return false;
			continue;
		case 1:
		case 5:
		case 9:
		case 10:
			if (wt != WT_VARINT || !first(&seen, field) || !get_varint(&in, &v))
				return false;
			break;
		default:
			return false;
		}
		if (str) {
			if (wt != WT_LEN || !first(&seen, field) || !get_string(&in, str))
				return false;
		} else if (field == 1) {
			d->gateway_id = v;
		} else if (field == 5) {
			if (v > UINT32_MAX)
				return false;
			d->agreement_version = (uint32_t)v;
		} else if (field == 9) {
			d->reply_to = v;
		} else {
			d->accepted_at_ms = (int64_t)v;
		}
	}
	return true;
}

static bool get_fetch_result(struct in in, Isg__FetchResult *r)
{
	*r = (Isg__FetchResult)ISG__FETCH_RESULT__INIT;
	size_t n;
	if (!count(in, 1, &n))
		return false;
	if (n == 0)
		return in.p == in.end; /* any other field is unknown */
	r->deliveries = take(&in, n * sizeof(*r->deliveries));
	Isg__Delivery *d = take(&in, n * sizeof(*d));
	if (!r->deliveries || !d)
		return false;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		struct in body;
		if (!get_tag(&in, &field, &wt) || field != 1 || wt != WT_LEN ||
		    r->n_deliveries == n || !get_len(&in, &body))
			return false;
		r->deliveries[r->n_deliveries] = &d[r->n_deliveries];
		if (!get_delivery(body, r->deliveries[r->n_deliveries++]))
			return false;
	}
	return true;
}

Isg__Frame *wire_unpack_records_frame(ProtobufCAllocator *a, const uint8_t *buf, size_t len,
                                      struct wire_span *send)
{
	bool repacks = false;
	struct in in = {buf, buf + len, a, NULL, &repacks, false};
	struct wire_span span = {0};
	*send = span;
	Isg__Frame *f = take(&in, sizeof(*f)); /* first, as wire_frame_free expects */
	if (!f)
		return NULL;
	*f = (Isg__Frame)ISG__FRAME__INIT;
	bool id_seen = false;
	while (in.p < in.end) {
		uint32_t field;
		unsigned wt;
		struct in body;
		if (!get_tag(&in, &field, &wt))
			return NULL;
		if (field == 1 && wt == WT_VARINT && !id_seen) {
			id_seen = true;
			if (!get_varint(&in, &f->request_id))
				return NULL;
			continue;
		}
		if (wt != WT_LEN || f->body_case != ISG__FRAME__BODY__NOT_SET ||
		    !get_len(&in, &body))
			return NULL;
		bool ok;
		switch (field) {
		case ISG__FRAME__BODY_SEND:
			ok = (f->send = take(&in, sizeof(*f->send))) && get_send(body, f->send);
			span = (struct wire_span){body.p, (size_t)(body.end - body.p)};
			break;
		case ISG__FRAME__BODY_DELIVERY:
			ok = (f->delivery = take(&in, sizeof(*f->delivery))) &&
			     get_delivery(body, f->delivery);
			break;
		case ISG__FRAME__BODY_FETCH_RESULT:
			ok = (f->fetch_result = take(&in, sizeof(*f->fetch_result))) &&
			     get_fetch_result(body, f->fetch_result);
			break;
		default:
			ok = false;
		}
		if (!ok)
			return NULL;
		f->body_case = (Isg__Frame__BodyCase)field;
	}
	/* Only these bodies: the rest are small, and protobuf-c's to decode. */
	if (f->body_case == ISG__FRAME__BODY__NOT_SET)
		return NULL;
	if (f->body_case == ISG__FRAME__BODY_SEND && !repacks)
		*send = span; /* only for a frame taken whole */
	return f;
}
