/*
 * What isgctl prints: receipts and deliveries as JSON Lines, deliveries as
 * CSV. Each line is built in memory and written whole, so an allocation
 * failure never leaves half a line.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_internal.h"

void ctl_format_real(char *buf, size_t size, double v)
{
	if (!isfinite(v)) {
		str_copy(buf, "null", size);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, size, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	/* Keep it a real when read back: 3 would be an integer. */
	if (!strpbrk(buf, ".eE")) {
		size_t n = strlen(buf);
		if (n + 2 < size)
			memcpy(buf + n, ".0", 3);
	}
}

void ctl_json_value(struct strbuf *b, const struct isg_value *v)
{
	char num[40];
	switch (v->kind) {
	case ISG_VALUE_TEXT:
		strbuf_json_string(b, v->text ? v->text : "");
		return;
	case ISG_VALUE_INTEGER:
		strbuf_printf(b, "%" PRId64, v->integer);
		return;
	case ISG_VALUE_REAL:
		ctl_format_real(num, sizeof(num), v->real);
		strbuf_puts(b, num);
		return;
	case ISG_VALUE_BOOLEAN:
		strbuf_puts(b, v->boolean ? "true" : "false");
		return;
	case ISG_VALUE_NONE:
		break;
	}
	strbuf_puts(b, "null");
}

/* Write the buffer's line and release it. */
static int emit(FILE *out, struct strbuf *b)
{
	strbuf_append(b, "\n", 1);
	size_t len = 0;
	char *line = strbuf_take(b, &len);
	if (!line)
		return ISG_ERR_NOMEM;
	size_t n = fwrite(line, 1, len, out);
	free(line);
	return n == len ? 0 : ISG_ERR_IO;
}

static void json_key(struct strbuf *b, const char *key, bool first)
{
	if (!first)
		strbuf_append(b, ",", 1);
	strbuf_json_string(b, key);
	strbuf_append(b, ":", 1);
}

static void json_text_member(struct strbuf *b, const char *key, const char *value, bool first)
{
	json_key(b, key, first);
	strbuf_json_string(b, value ? value : "");
}

static void json_u64_member(struct strbuf *b, const char *key, uint64_t value)
{
	json_key(b, key, false);
	strbuf_printf(b, "%" PRIu64, value);
}

static void json_time_member(struct strbuf *b, const char *key, int64_t ms)
{
	char ts[40];
	json_key(b, key, false);
	strbuf_json_string(b, time_format_ms(ts, sizeof(ts), ms));
}

int ctl_write_receipt(FILE *out, const struct isg_receipt *r)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_append(&b, "{", 1);
	json_text_member(&b, "message_id", r->message_id, true);
	json_u64_member(&b, "gateway_id", r->gateway_id);
	json_u64_member(&b, "audit_index", r->audit_index);
	json_time_member(&b, "accepted_at", r->accepted_at_ms);
	json_key(&b, "duplicate", false);
	strbuf_puts(&b, r->duplicate ? "true" : "false");
	json_u64_member(&b, "records", r->record_count);
	json_text_member(&b, "policy_version", r->policy_version, false);
	strbuf_append(&b, "}", 1);
	return emit(out, &b);
}

static void json_record(struct strbuf *b, const struct isg_record *r)
{
	strbuf_append(b, "{", 1);
	for (size_t i = 0; i < r->n_fields; i++) {
		json_key(b, r->fields[i].name ? r->fields[i].name : "", i == 0);
		ctl_json_value(b, &r->fields[i].value);
	}
	strbuf_append(b, "}", 1);
}

int ctl_write_delivery_jsonl(FILE *out, const struct isg_delivery *d)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_append(&b, "{", 1);
	json_key(&b, "gateway_id", true);
	strbuf_printf(&b, "%" PRIu64, d->gateway_id);
	json_text_member(&b, "message_id", d->message_id, false);
	json_text_member(&b, "sender", d->sender, false);
	json_text_member(&b, "agreement_id", d->agreement_id, false);
	json_u64_member(&b, "agreement_version", d->agreement_version);
	json_text_member(&b, "purpose", d->purpose, false);
	json_text_member(&b, "dataset", d->dataset, false);
	json_time_member(&b, "accepted_at", d->accepted_at_ms);
	json_u64_member(&b, "reply_to", d->reply_to);
	json_key(&b, "records", false);
	strbuf_append(&b, "[", 1);
	for (size_t i = 0; i < d->n_records; i++) {
		if (i)
			strbuf_append(&b, ",", 1);
		json_record(&b, &d->records[i]);
	}
	strbuf_append(&b, "]}", 2);
	return emit(out, &b);
}

/* CSV. */

void ctl_csv_writer_init(struct ctl_csv_writer *w)
{
	memset(w, 0, sizeof(*w));
}

void ctl_csv_writer_release(struct ctl_csv_writer *w)
{
	free(w->header);
	ctl_csv_writer_init(w);
}

/*
 * A separator, then a CSV cell: quoted when it holds a separator, quote or
 * line break, or is empty text.
 */
static void csv_cell(struct strbuf *b, const char *s)
{
	strbuf_append(b, ",", 1);
	if (*s && !strpbrk(s, ",\"\r\n")) {
		strbuf_puts(b, s);
		return;
	}
	strbuf_append(b, "\"", 1);
	for (const char *q; (q = strchr(s, '"')); s = q + 1) {
		strbuf_append(b, s, (size_t)(q - s));
		strbuf_append(b, "\"\"", 2);
	}
	strbuf_puts(b, s);
	strbuf_append(b, "\"", 1);
}

/*
 * The type a column's header names. `send` takes what follows a header's last
 * ':' as the column's type, so a text field whose name holds a ':' (no
 * agreement's does, but a header must read back whatever came) says ":text".
 */
static const char *type_suffix(const char *name, enum isg_value_kind kind)
{
	switch (kind) {
	case ISG_VALUE_INTEGER:
		return ":integer";
	case ISG_VALUE_REAL:
		return ":real";
	case ISG_VALUE_BOOLEAN:
		return ":boolean";
	default:
		return strchr(name, ':') ? ":text" : "";
	}
}

/* The header a record needs; typed columns say their type so `isgctl send` reads them back. */
static char *csv_header(const struct isg_record *r)
{
	struct strbuf b, name;
	strbuf_init(&b);
	strbuf_init(&name);
	strbuf_puts(&b, "gateway_id,message_id,sender,agreement_id,dataset");
	for (size_t i = 0; i < r->n_fields; i++) {
		name.len = 0;
		const char *n = r->fields[i].name ? r->fields[i].name : "";
		strbuf_puts(&name, n);
		strbuf_puts(&name, type_suffix(n, r->fields[i].value.kind));
		csv_cell(&b, name.failed || !name.p ? "" : name.p);
	}
	strbuf_release(&name);
	return strbuf_take(&b, NULL);
}

static void csv_value(struct strbuf *b, const struct isg_value *v)
{
	char num[40];
	switch (v->kind) {
	case ISG_VALUE_TEXT:
		csv_cell(b, v->text ? v->text : "");
		return;
	case ISG_VALUE_INTEGER:
		snprintf(num, sizeof(num), ",%" PRId64, v->integer);
		break;
	case ISG_VALUE_REAL:
		num[0] = ',';
		ctl_format_real(num + 1, sizeof(num) - 1, v->real);
		break;
	case ISG_VALUE_BOOLEAN:
		snprintf(num, sizeof(num), ",%s", v->boolean ? "true" : "false");
		break;
	case ISG_VALUE_NONE:
		str_copy(num, ",", sizeof(num)); /* an empty cell: absent */
		break;
	}
	strbuf_puts(b, num);
}

static int csv_row(FILE *out, struct ctl_csv_writer *w, const struct isg_delivery *d,
                   const struct isg_record *r)
{
	char *header = csv_header(r);
	if (!header)
		return ISG_ERR_NOMEM;
	struct strbuf b;
	strbuf_init(&b);
	if (!w->header || strcmp(w->header, header) != 0) {
		if (w->wrote)
			strbuf_append(&b, "\n", 1);
		strbuf_puts(&b, header);
		strbuf_append(&b, "\n", 1);
		free(w->header);
		w->header = header;
	} else {
		free(header);
	}
	strbuf_printf(&b, "%" PRIu64, d->gateway_id);
	csv_cell(&b, d->message_id ? d->message_id : "");
	csv_cell(&b, d->sender ? d->sender : "");
	csv_cell(&b, d->agreement_id ? d->agreement_id : "");
	csv_cell(&b, d->dataset ? d->dataset : "");
	for (size_t i = 0; i < r->n_fields; i++)
		csv_value(&b, &r->fields[i].value);
	w->wrote = true;
	return emit(out, &b);
}

int ctl_write_delivery_csv(FILE *out, struct ctl_csv_writer *w, const struct isg_delivery *d)
{
	for (size_t i = 0; i < d->n_records; i++) {
		int rc = csv_row(out, w, d, &d->records[i]);
		if (rc < 0)
			return rc;
	}
	return 0;
}
