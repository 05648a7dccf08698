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

/* A run of records measured for writing: what the writing pass needs of
 * each field, each record's size, and the run's size in bytes. */
struct records_plan {
	struct lens l;
	size_t *rec_size;
	size_t size;
};

/* 0, ISG_ERR_NOMEM, or 1 when a message has unknown fields; free with records_plan_free. */
static int records_measure(Isg__Record *const *records, size_t n, struct records_plan *pl)
{
	size_t n_fields = 0;
	for (size_t i = 0; i < n; i++)
		n_fields += records[i]->n_fields;
	*pl = (struct records_plan){
	    .l.v = malloc((LENS_PER_FIELD * n_fields + n + 1) * sizeof(size_t))};
	if (!pl->l.v)
		return ISG_ERR_NOMEM;
	pl->rec_size = pl->l.v + LENS_PER_FIELD * n_fields;
	for (size_t i = 0; i < n; i++) {
		if (!record_size(records[i], &pl->l, &pl->rec_size[i]))
			return 1;
		pl->size += 1 + wire_varint_size(pl->rec_size[i]) + pl->rec_size[i];
	}
	return 0;
}

static void records_plan_free(struct records_plan *pl)
{
	free(pl->l.v);
	pl->l.v = NULL;
}

/* The records as the repeated message field `number` (below 16). */
static uint8_t *records_write(uint8_t *p, unsigned number, Isg__Record *const *records, size_t n,
                              struct records_plan *pl)
{
	pl->l.at = 0;
	for (size_t i = 0; i < n; i++) {
		p = put_len(p, TAG_STRING(number), pl->rec_size[i]);
		p = put_record(p, records[i], &pl->l);
	}
	return p;
}

/* A SendRequest measured for writing: its four strings' lengths and its records. */
struct send_plan {
	size_t lens[4];
	struct records_plan recs;
	size_t size;
};

static const char *send_string(const Isg__SendRequest *req, unsigned i)
{
	const char *const strs[4] = {req->message_id, req->recipient, req->agreement_id,
	                             req->dataset};
	return strs[i];
}

/* As records_measure, for the whole request; free with records_plan_free(&sp->recs). */
static int send_measure(const Isg__SendRequest *req, struct send_plan *sp)
{
	*sp = (struct send_plan){0};
	if (has_unknown(&req->base))
		return 1;
	for (unsigned i = 0; i < 4; i++) {
		const char *str = send_string(req, i);
		sp->lens[i] = str ? strlen(str) : 0;
		sp->size += str_field_size(sp->lens[i]);
	}
	if (req->reply_to)
		sp->size += 1 + wire_varint_size(req->reply_to);
	int rc = records_measure(req->records, req->n_records, &sp->recs);
	sp->size += sp->recs.size;
	return rc;
}

/* SendRequest{message_id 1, recipient 2, agreement_id 3, dataset 4, records 5, reply_to 6}. */
static uint8_t *send_write(uint8_t *p, const Isg__SendRequest *req, struct send_plan *sp)
{
	for (unsigned i = 0; i < 4; i++)
		p = put_str(p, TAG_STRING(i + 1), send_string(req, i), sp->lens[i]);
	p = records_write(p, 5, req->records, req->n_records, &sp->recs);
	if (req->reply_to) {
		*p++ = TAG_VARINT(6);
		p += wire_varint_encode(req->reply_to, p);
	}
	return p;
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
	struct records_plan pl;
	int rc = records_measure(records, n, &pl);
	uint8_t *out = NULL;
	if (rc == 0 && (out = malloc(pl.size ? pl.size : 1)) != NULL) {
		records_write(out, 8, records, n, &pl);
		*len = pl.size;
	}
	records_plan_free(&pl);
	if (rc != 1)
		return out;
	Isg__Delivery d = ISG__DELIVERY__INIT;
	d.records = (Isg__Record **)records;
	d.n_records = n;
	return pack_generic(&d.base, len);
}

uint8_t *wire_pack_send_request(const Isg__SendRequest *req, size_t *len)
{
	struct send_plan sp;
	int rc = send_measure(req, &sp);
	uint8_t *out = NULL;
	if (rc == 0 && (out = malloc(sp.size ? sp.size : 1)) != NULL) {
		send_write(out, req, &sp);
		*len = sp.size;
	}
	records_plan_free(&sp.recs);
	return rc == 1 ? pack_generic(&req->base, len) : out;
}

uint8_t *wire_frame_pack(const Isg__Frame *f, size_t *len)
{
	struct send_plan sp = {0};
	int rc = 1;
	if (f->body_case == ISG__FRAME__BODY_SEND && f->send && !has_unknown(&f->base))
		rc = send_measure(f->send, &sp);
	uint8_t *out = NULL;
	if (rc == 0) {
		/* Frame{request_id = 1, send = 12} after its varint length, in one buffer. */
		size_t body = (f->request_id ? 1 + wire_varint_size(f->request_id) : 0) + 1 +
		              wire_varint_size(sp.size) + sp.size;
		*len = wire_varint_size(body) + body;
		if ((out = malloc(*len)) != NULL) {
			uint8_t *p = out + wire_varint_encode(body, out);
			if (f->request_id) {
				*p++ = TAG_VARINT(1);
				p += wire_varint_encode(f->request_id, p);
			}
			send_write(put_len(p, TAG_STRING(12), sp.size), f->send, &sp);
		}
	}
	records_plan_free(&sp.recs);
	if (rc != 1)
		return out;
	*len = wire_frame_size(f);
	out = malloc(*len);
	if (out)
		wire_frame_encode(f, out);
	return out;
}
