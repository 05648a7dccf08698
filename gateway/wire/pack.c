/*
 * Records packed by hand, byte for byte as protobuf-c packs them, in one
 * pass over their strings. protobuf-c works out a nested message's size
 * again at every level it is nested in, so each value of a Delivery's
 * records was measured five times (strlen included) before it was written;
 * here each string is measured once and its length kept for the writing.
 *
 * The rules followed are protobuf-c's for proto3 (tests/unit/test_wire.c
 * compares the two on every case): a string or message field outside a
 * oneof is left out when empty or NULL, a number when zero; a oneof member
 * is written whenever its case is set, except a string that is NULL or
 * protobuf-c's own empty default. Messages with unknown fields, which only
 * a decoded request can have, are handed to protobuf-c.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "wire/wire.h"

/* Tags (number << 3 | wire type) of the fields packed here. */
#define TAG_STRING(n) ((uint8_t)((n) << 3 | 2))
#define TAG_VARINT(n) ((uint8_t)((n) << 3))
#define TAG_FIXED64(n) ((uint8_t)((n) << 3 | 1))

/* What the sizing pass measured of each field, in order, for the writing pass:
 * its name's and text's lengths, its value's size and its own. */
#define LENS_PER_FIELD 4
struct lens {
	size_t *v;
	size_t at;
};

static uint64_t zigzag(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static size_t str_field_size(size_t len)
{
	return len ? 1 + wire_varint_size(len) + len : 0;
}

static size_t value_size(const Isg__Value *v, size_t text_len)
{
	switch (v->kind_case) {
	case ISG__VALUE__KIND_TEXT:
		if (!v->text || v->text == protobuf_c_empty_string)
			return 0;
		return 1 + wire_varint_size(text_len) + text_len;
	case ISG__VALUE__KIND_INTEGER:
		return 1 + wire_varint_size(zigzag(v->integer));
	case ISG__VALUE__KIND_REAL:
		return 1 + 8;
	case ISG__VALUE__KIND_BOOLEAN:
		return 1 + 1;
	default:
		return 0;
	}
}

static bool has_unknown(const ProtobufCMessage *m)
{
	return m->n_unknown_fields != 0;
}

static bool text_set(const Isg__Value *v)
{
	return v->kind_case == ISG__VALUE__KIND_TEXT && v->text &&
	       v->text != protobuf_c_empty_string;
}

/*
 * The size of one record's fields (its body), keeping what the writing
 * pass needs of each field in l; false when a message in it has unknown
 * fields.
 */
static bool record_size(const Isg__Record *r, struct lens *l, size_t *size)
{
	if (has_unknown(&r->base))
		return false;
	size_t n = 0;
	for (size_t i = 0; i < r->n_fields; i++) {
		const Isg__Field *f = r->fields[i];
		if (has_unknown(&f->base) || (f->value && has_unknown(&f->value->base)))
			return false;
		size_t name = f->name ? strlen(f->name) : 0;
		size_t text = f->value && text_set(f->value) ? strlen(f->value->text) : 0;
		size_t vs = f->value ? value_size(f->value, text) : 0;
		size_t fs = str_field_size(name) + (f->value ? 1 + wire_varint_size(vs) + vs : 0);
		l->v[l->at++] = name;
		l->v[l->at++] = text;
		l->v[l->at++] = vs;
		l->v[l->at++] = fs;
		n += 1 + wire_varint_size(fs) + fs;
	}
	*size = n;
	return true;
}

static uint8_t *put_len(uint8_t *p, uint8_t tag, size_t len)
{
	*p++ = tag;
	return p + wire_varint_encode(len, p);
}

static uint8_t *put_str(uint8_t *p, uint8_t tag, const char *s, size_t len)
{
	if (!len)
		return p;
	p = put_len(p, tag, len);
	memcpy(p, s, len);
	return p + len;
}

static uint8_t *put_value(uint8_t *p, const Isg__Value *v, size_t text_len)
{
	switch (v->kind_case) {
	case ISG__VALUE__KIND_TEXT:
		if (text_set(v)) {
			p = put_len(p, TAG_STRING(1), text_len);
			memcpy(p, v->text, text_len);
			p += text_len;
		}
		break;
	case ISG__VALUE__KIND_INTEGER:
		*p++ = TAG_VARINT(2);
		p += wire_varint_encode(zigzag(v->integer), p);
		break;
	case ISG__VALUE__KIND_REAL: {
		uint64_t bits;
		memcpy(&bits, &v->real, 8);
		*p++ = TAG_FIXED64(3);
		for (int i = 0; i < 8; i++)
			*p++ = (uint8_t)(bits >> (8 * i));
		break;
	}
	case ISG__VALUE__KIND_BOOLEAN:
		*p++ = TAG_VARINT(4);
		*p++ = v->boolean ? 1 : 0;
		break;
	default:
		break;
	}
	return p;
}

static uint8_t *put_record(uint8_t *p, const Isg__Record *r, struct lens *l)
{
	for (size_t i = 0; i < r->n_fields; i++) {
		const Isg__Field *f = r->fields[i];
		const size_t *m = l->v + l->at;
		l->at += LENS_PER_FIELD;
		p = put_len(p, TAG_STRING(1), m[3]);
		p = put_str(p, TAG_STRING(1), f->name, m[0]);
		if (f->value) {
			p = put_len(p, TAG_STRING(2), m[2]);
			p = put_value(p, f->value, m[1]);
		}
	}
	return p;
}

/*
 * Records as the repeated message field `number` (below 16), with head_len
 * bytes left free before them and tail_len after, for the caller to fill:
 * 0, ISG_ERR_NOMEM, or 1 when a message has unknown fields.
 */
static int pack_records(size_t head_len, unsigned number, Isg__Record *const *records, size_t n,
                        size_t tail_len, uint8_t **out, size_t *len)
{
	size_t n_fields = 0;
	for (size_t i = 0; i < n; i++)
		n_fields += records[i]->n_fields;
	struct lens l = {.v = malloc((LENS_PER_FIELD * n_fields + n + 1) * sizeof(size_t))};
	if (!l.v)
		return ISG_ERR_NOMEM;
	size_t *rec_size = l.v + LENS_PER_FIELD * n_fields, total = head_len + tail_len;
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (!record_size(records[i], &l, &rec_size[i]))
			rc = 1;
		else
			total += 1 + wire_varint_size(rec_size[i]) + rec_size[i];
	}
	uint8_t *buf = rc == 0 ? malloc(total ? total : 1) : NULL;
	if (rc == 0 && !buf)
		rc = ISG_ERR_NOMEM;
	if (rc == 0) {
		uint8_t *p = buf + head_len;
		l.at = 0;
		for (size_t i = 0; i < n; i++) {
			p = put_len(p, TAG_STRING(number), rec_size[i]);
			p = put_record(p, records[i], &l);
		}
		*out = buf;
		*len = total;
	}
	free(l.v);
	return rc;
}

/* What protobuf-c packs, for messages with unknown fields. */
static uint8_t *pack_generic(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *out = malloc(*len ? *len : 1);
	if (out)
		protobuf_c_message_pack(m, out);
	return out;
}

uint8_t *wire_pack_delivery_records(Isg__Record *const *records, size_t n, size_t *len)
{
	uint8_t *out = NULL;
	int rc = pack_records(0, 8, records, n, 0, &out, len);
	if (rc != 1)
		return rc == 0 ? out : NULL;
	Isg__Delivery d = ISG__DELIVERY__INIT;
	d.records = (Isg__Record **)records;
	d.n_records = n;
	return pack_generic(&d.base, len);
}

uint8_t *wire_pack_send_request(const Isg__SendRequest *req, size_t *len)
{
	if (has_unknown(&req->base))
		return pack_generic(&req->base, len);
	const char *const strs[4] = {req->message_id, req->recipient, req->agreement_id,
	                             req->dataset};
	size_t lens[4], head_len = 0,
	                tail_len = req->reply_to ? 1 + wire_varint_size(req->reply_to) : 0;
	for (unsigned i = 0; i < 4; i++) {
		lens[i] = strs[i] ? strlen(strs[i]) : 0;
		head_len += str_field_size(lens[i]);
	}
	uint8_t *out = NULL;
	int rc = pack_records(head_len, 5, req->records, req->n_records, tail_len, &out, len);
	if (rc == 1)
		return pack_generic(&req->base, len);
	if (rc != 0)
		return NULL;
	uint8_t *p = out;
	for (unsigned i = 0; i < 4; i++)
		p = put_str(p, TAG_STRING(i + 1), strs[i], lens[i]);
	p = out + *len - tail_len;
	if (req->reply_to) {
		*p++ = TAG_VARINT(6);
		wire_varint_encode(req->reply_to, p);
	}
	return out;
}

uint8_t *wire_frame_pack(const Isg__Frame *f, size_t *len)
{
	size_t send_len = 0;
	uint8_t *send = NULL, *out;
	if (f->body_case == ISG__FRAME__BODY_SEND && f->send && !has_unknown(&f->base))
		send = wire_pack_send_request(f->send, &send_len);
	if (!send) {
		*len = wire_frame_size(f);
		out = malloc(*len);
		if (out)
			wire_frame_encode(f, out);
		return out;
	}
	/* Frame{request_id = 1, send = 12}: a varint, then the request. */
	size_t body = (f->request_id ? 1 + wire_varint_size(f->request_id) : 0) + 1 +
	              wire_varint_size(send_len) + send_len;
	*len = wire_varint_size(body) + body;
	out = malloc(*len);
	if (out) {
		uint8_t *p = out + wire_varint_encode(body, out);
		if (f->request_id) {
			*p++ = TAG_VARINT(1);
			p += wire_varint_encode(f->request_id, p);
		}
		p = put_len(p, TAG_STRING(12), send_len);
		memcpy(p, send, send_len);
	}
	free(send);
	return out;
}
