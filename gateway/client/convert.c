/*
 * Between the public record types and the wire's. Outgoing requests point
 * into the caller's strings; deliveries point into the decoded frame, which
 * the returned object keeps alive.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "util/util.h"

static bool utf8_ok(const char *s)
{
	return str_utf8_valid(s, strlen(s));
}

static int check_header(const struct isg_message *msg, struct isg_error *err)
{
	const struct {
		const char *name, *value;
	} parts[] = {
	    {"recipient", msg->recipient},
	    {"agreement_id", msg->agreement_id},
	    {"dataset", msg->dataset},
	};
	for (size_t i = 0; i < ARRAY_LEN(parts); i++) {
		if (!parts[i].value || !*parts[i].value) {
			client_error(err, ISG_CLIENT_E_USAGE, "message has no %s", parts[i].name);
			return -1;
		}
		if (!utf8_ok(parts[i].value)) {
			client_error(err, ISG_CLIENT_E_USAGE, "message %s is not valid UTF-8",
			             parts[i].name);
			return -1;
		}
	}
	if (msg->n_records && !msg->records) {
		client_error(err, ISG_CLIENT_E_USAGE, "message has %zu records but no array",
		             msg->n_records);
		return -1;
	}
	return 0;
}

/*
 * A field's name is quoted when err->field holds it whole; a longer one is
 * named by its position, as the gateway does, so that neither a cut name
 * nor the cut end of the message (the problem itself) misleads.
 */
static int field_problem(struct isg_error *err, size_t rec, size_t idx, const char *name,
                         const char *what)
{
	bool fits = strlen(name) < sizeof(err->field);
	if (fits)
		client_error(err, ISG_CLIENT_E_USAGE, "record %zu field '%s': %s", rec, name, what);
	else
		client_error(err, ISG_CLIENT_E_USAGE,
		             "record %zu: field %zu (its name is %zu bytes): %s", rec, idx,
		             strlen(name), what);
	if (err) {
		err->record_index = (int64_t)rec;
		if (fits)
			str_copy(err->field, name, sizeof(err->field));
	}
	return -1;
}

static int check_field(const struct isg_field *f, size_t rec, size_t idx, struct isg_error *err)
{
	if (!f->name || !*f->name) {
		client_error(err, ISG_CLIENT_E_USAGE, "record %zu: field %zu has no name", rec,
		             idx);
		if (err)
			err->record_index = (int64_t)rec;
		return -1;
	}
	if (!utf8_ok(f->name)) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "record %zu: the name of field %zu is not valid UTF-8", rec, idx);
		if (err)
			err->record_index = (int64_t)rec;
		return -1;
	}
	switch (f->value.kind) {
	case ISG_VALUE_TEXT:
		if (!f->value.text)
			return field_problem(err, rec, idx, f->name, "text value is NULL");
		if (!utf8_ok(f->value.text))
			return field_problem(err, rec, idx, f->name, "text is not valid UTF-8");
		return 0;
	case ISG_VALUE_REAL:
		if (!isfinite(f->value.real))
			return field_problem(err, rec, idx, f->name, "real value is not finite");
		return 0;
	case ISG_VALUE_INTEGER:
	case ISG_VALUE_BOOLEAN:
		return 0;
	case ISG_VALUE_NONE:
		return field_problem(err, rec, idx, f->name, "no value (leave absent fields out)");
	}
	return field_problem(err, rec, idx, f->name, "unknown value kind");
}

static void fill_value(Isg__Value *v, const struct isg_value *in)
{
	isg__value__init(v);
	switch (in->kind) {
	case ISG_VALUE_TEXT:
		v->kind_case = ISG__VALUE__KIND_TEXT;
		v->text = (char *)in->text;
		break;
	case ISG_VALUE_INTEGER:
		v->kind_case = ISG__VALUE__KIND_INTEGER;
		v->integer = in->integer;
		break;
	case ISG_VALUE_REAL:
		v->kind_case = ISG__VALUE__KIND_REAL;
		v->real = in->real;
		break;
	case ISG_VALUE_BOOLEAN:
		v->kind_case = ISG__VALUE__KIND_BOOLEAN;
		v->boolean = in->boolean;
		break;
	case ISG_VALUE_NONE:
		break;
	}
}

static int count_fields(const struct isg_message *msg, size_t *total, struct isg_error *err)
{
	*total = 0;
	for (size_t i = 0; i < msg->n_records; i++) {
		const struct isg_record *r = &msg->records[i];
		if (r->n_fields && !r->fields) {
			client_error(err, ISG_CLIENT_E_USAGE,
			             "record %zu has %zu fields but no array", i, r->n_fields);
			return -1;
		}
		if (r->n_fields > SIZE_MAX / sizeof(Isg__Field) - *total) {
			client_error(err, ISG_CLIENT_E_USAGE, "too many fields");
			return -1;
		}
		*total += r->n_fields;
	}
	return 0;
}

int send_build_init(struct send_build *b, const struct isg_message *msg, const char *message_id,
                    struct isg_error *err)
{
	memset(b, 0, sizeof(*b));
	isg__send_request__init(&b->req);
	size_t total;
	if (check_header(msg, err) < 0 || count_fields(msg, &total, err) < 0)
		return -1;
	size_t n = msg->n_records;
	b->record_ptrs = calloc(n ? n : 1, sizeof(*b->record_ptrs));
	b->records = calloc(n ? n : 1, sizeof(*b->records));
	b->field_ptrs = calloc(total ? total : 1, sizeof(*b->field_ptrs));
	b->fields = calloc(total ? total : 1, sizeof(*b->fields));
	b->values = calloc(total ? total : 1, sizeof(*b->values));
	if (!b->record_ptrs || !b->records || !b->field_ptrs || !b->fields || !b->values) {
		send_build_release(b);
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory building a message");
		return -1;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const struct isg_record *in = &msg->records[i];
		Isg__Record *r = &b->records[i];
		isg__record__init(r);
		r->n_fields = in->n_fields;
		r->fields = &b->field_ptrs[k];
		for (size_t j = 0; j < in->n_fields; j++, k++) {
			if (check_field(&in->fields[j], i, j, err) < 0) {
				send_build_release(b);
				return -1;
			}
			Isg__Field *f = &b->fields[k];
			isg__field__init(f);
			f->name = (char *)in->fields[j].name;
			fill_value(&b->values[k], &in->fields[j].value);
			f->value = &b->values[k];
			b->field_ptrs[k] = f;
		}
		b->record_ptrs[i] = r;
	}
	b->req.message_id = (char *)message_id;
	b->req.recipient = (char *)msg->recipient;
	b->req.agreement_id = (char *)msg->agreement_id;
	b->req.dataset = (char *)msg->dataset;
	b->req.reply_to = msg->reply_to;
	b->req.n_records = n;
	b->req.records = b->record_ptrs;
	return 0;
}

void send_build_release(struct send_build *b)
{
	free(b->record_ptrs);
	free(b->records);
	free(b->field_ptrs);
	free(b->fields);
	free(b->values);
	memset(b, 0, sizeof(*b));
}

/* Deliveries. */

struct list_impl {
	struct isg_delivery_list pub; /* first: the public pointer is this struct's */
	Isg__Frame *frame;
	struct isg_record *records;
	struct isg_field *fields;
};

struct delivery_impl {
	struct isg_delivery pub; /* first */
	Isg__Frame *frame;
	struct isg_record *records;
	struct isg_field *fields;
};

static void count_delivery(const Isg__Delivery *d, size_t *records, size_t *fields)
{
	*records += d->n_records;
	for (size_t i = 0; i < d->n_records; i++)
		*fields += d->records[i]->n_fields;
}

static void convert_value(struct isg_value *out, const Isg__Value *v)
{
	memset(out, 0, sizeof(*out));
	if (!v)
		return;
	switch (v->kind_case) {
	case ISG__VALUE__KIND_TEXT:
		out->kind = ISG_VALUE_TEXT;
		out->text = v->text;
		break;
	case ISG__VALUE__KIND_INTEGER:
		out->kind = ISG_VALUE_INTEGER;
		out->integer = v->integer;
		break;
	case ISG__VALUE__KIND_REAL:
		out->kind = ISG_VALUE_REAL;
		out->real = v->real;
		break;
	case ISG__VALUE__KIND_BOOLEAN:
		out->kind = ISG_VALUE_BOOLEAN;
		out->boolean = v->boolean;
		break;
	default:
		out->kind = ISG_VALUE_NONE;
		break;
	}
}

/* Fill one delivery, taking records and fields from the cursors. */
static void convert_delivery(struct isg_delivery *out, const Isg__Delivery *d,
                             struct isg_record **rec, struct isg_field **fld)
{
	out->gateway_id = d->gateway_id;
	out->message_id = d->message_id;
	out->sender = d->sender;
	out->agreement_id = d->agreement_id;
	out->agreement_version = d->agreement_version;
	out->purpose = d->purpose;
	out->dataset = d->dataset;
	out->reply_to = d->reply_to;
	out->accepted_at_ms = d->accepted_at_ms;
	out->n_records = d->n_records;
	out->records = *rec;
	for (size_t i = 0; i < d->n_records; i++) {
		const Isg__Record *r = d->records[i];
		struct isg_record *o = (*rec)++;
		o->n_fields = r->n_fields;
		o->fields = *fld;
		for (size_t j = 0; j < r->n_fields; j++) {
			struct isg_field *f = (*fld)++;
			f->name = r->fields[j]->name;
			convert_value(&f->value, r->fields[j]->value);
		}
	}
}

int client_deliveries_from_fetch(Isg__Frame *f, struct isg_delivery_list **out,
                                 struct isg_error *err)
{
	const Isg__FetchResult *res = f->fetch_result;
	size_t n_rec = 0, n_fld = 0;
	for (size_t i = 0; i < res->n_deliveries; i++)
		count_delivery(res->deliveries[i], &n_rec, &n_fld);
	struct list_impl *l = calloc(1, sizeof(*l));
	if (l) {
		l->pub.items =
		    calloc(res->n_deliveries ? res->n_deliveries : 1, sizeof(*l->pub.items));
		l->records = calloc(n_rec ? n_rec : 1, sizeof(*l->records));
		l->fields = calloc(n_fld ? n_fld : 1, sizeof(*l->fields));
		l->frame = f;
	}
	if (!l || !l->pub.items || !l->records || !l->fields) {
		if (l)
			isg_delivery_list_free(&l->pub);
		else
			wire_frame_free(f);
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory for deliveries");
		return -1;
	}
	struct isg_record *rec = l->records;
	struct isg_field *fld = l->fields;
	for (size_t i = 0; i < res->n_deliveries; i++)
		convert_delivery(&l->pub.items[i], res->deliveries[i], &rec, &fld);
	l->pub.n = res->n_deliveries;
	*out = &l->pub;
	return 0;
}

ISG_CLIENT_API void isg_delivery_list_free(struct isg_delivery_list *list)
{
	if (!list)
		return;
	struct list_impl *l = (struct list_impl *)list;
	free(l->pub.items);
	free(l->records);
	free(l->fields);
	wire_frame_free(l->frame);
	free(l);
}

int client_delivery_from_push(Isg__Frame *f, struct isg_delivery **out, struct isg_error *err)
{
	size_t n_rec = 0, n_fld = 0;
	count_delivery(f->delivery, &n_rec, &n_fld);
	struct delivery_impl *d = calloc(1, sizeof(*d));
	if (d) {
		d->records = calloc(n_rec ? n_rec : 1, sizeof(*d->records));
		d->fields = calloc(n_fld ? n_fld : 1, sizeof(*d->fields));
		d->frame = f;
	}
	if (!d || !d->records || !d->fields) {
		if (d)
			isg_delivery_free(&d->pub);
		else
			wire_frame_free(f);
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory for a delivery");
		return -1;
	}
	struct isg_record *rec = d->records;
	struct isg_field *fld = d->fields;
	convert_delivery(&d->pub, f->delivery, &rec, &fld);
	*out = &d->pub;
	return 0;
}

ISG_CLIENT_API void isg_delivery_free(struct isg_delivery *delivery)
{
	if (!delivery)
		return;
	struct delivery_impl *d = (struct delivery_impl *)delivery;
	free(d->records);
	free(d->fields);
	wire_frame_free(d->frame);
	free(d);
}
