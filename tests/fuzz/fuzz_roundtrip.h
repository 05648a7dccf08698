/*
 * Shared by fuzz_csv.c and fuzz_jsonl.c: whatever a reader accepts must
 * survive isgctl's writers and read back identical, so the fuzzers check
 * the writers and readers against each other, not only for crashes.
 */
#ifndef ISG_FUZZ_ROUNDTRIP_H
#define ISG_FUZZ_ROUNDTRIP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctlio.h"

#define FUZZ_CHECKED_RECORDS 8

static void fuzz_limits(struct ctl_limits *lim)
{
	lim->max_line = 4096;
	lim->max_fields = 64;
	lim->max_records = 256;
}

static bool same_value(const struct isg_value *a, const struct isg_value *b)
{
	if (a->kind != b->kind)
		return false;
	switch (a->kind) {
	case ISG_VALUE_TEXT:
		return strcmp(a->text, b->text) == 0;
	case ISG_VALUE_INTEGER:
		return a->integer == b->integer;
	case ISG_VALUE_REAL:
		return a->real == b->real;
	case ISG_VALUE_BOOLEAN:
		return a->boolean == b->boolean;
	case ISG_VALUE_NONE:
		return true;
	}
	return false;
}

/* got has `skip` leading fields (CSV metadata columns) before the record's own. */
static void check_same(const struct isg_record *want, const struct isg_record *got, size_t skip)
{
	if (got->n_fields != want->n_fields + skip)
		abort();
	for (size_t i = 0; i < want->n_fields; i++) {
		if (strcmp(want->fields[i].name, got->fields[skip + i].name) != 0 ||
		    !same_value(&want->fields[i].value, &got->fields[skip + i].value))
			abort();
	}
}

static bool names_clash_with_metadata(const struct isg_record *r)
{
	static const char *const meta[] = {"gateway_id", "message_id", "sender", "agreement_id",
	                                   "dataset"};
	for (size_t i = 0; i < r->n_fields; i++)
		for (size_t k = 0; k < ARRAY_LEN(meta); k++)
			if (strcmp(r->fields[i].name, meta[k]) == 0)
				return true;
	return false;
}

static void csv_roundtrip(const struct isg_record *r)
{
	if (names_clash_with_metadata(r))
		return;
	struct isg_delivery d = {.gateway_id = 1,
	                         .message_id = "m",
	                         .sender = "s",
	                         .agreement_id = "a",
	                         .dataset = "d",
	                         .n_records = 1,
	                         .records = r};
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	struct ctl_csv_writer w;
	ctl_csv_writer_init(&w);
	int rc = ctl_write_delivery_csv(f, &w, &d);
	fclose(f);
	ctl_csv_writer_release(&w);
	if (rc == 0) {
		struct ctl_batch back;
		ctl_batch_init(&back);
		struct ctl_limits lim;
		ctl_limits_default(&lim);
		char err[512];
		if (ctl_read_csv("out", text, len, &lim, &back, err, sizeof(err)) != 0 ||
		    back.n != 1) {
			fprintf(stderr, "csv round trip: %s\n%s", err, text);
			abort();
		}
		check_same(r, &back.records[0], 5);
		ctl_batch_release(&back);
	}
	free(text);
}

static void jsonl_roundtrip(const struct isg_record *r)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{");
	for (size_t i = 0; i < r->n_fields; i++) {
		if (i)
			strbuf_puts(&b, ",");
		strbuf_json_string(&b, r->fields[i].name);
		strbuf_puts(&b, ":");
		ctl_json_value(&b, &r->fields[i].value);
	}
	strbuf_puts(&b, "}\n");
	size_t len = 0;
	char *text = strbuf_take(&b, &len);
	if (!text)
		return;
	struct ctl_batch back;
	ctl_batch_init(&back);
	struct ctl_limits lim;
	ctl_limits_default(&lim);
	char err[512];
	if (ctl_read_jsonl("out", text, len, &lim, &back, err, sizeof(err)) != 0 || back.n != 1) {
		fprintf(stderr, "jsonl round trip: %s\n%s", err, text);
		abort();
	}
	check_same(r, &back.records[0], 0);
	ctl_batch_release(&back);
	free(text);
}

static void fuzz_writers(const struct ctl_batch *batch)
{
	FILE *null = fopen("/dev/null", "w");
	if (!null)
		return;
	struct isg_delivery d = {.gateway_id = 1,
	                         .message_id = "m",
	                         .sender = "s",
	                         .agreement_id = "a",
	                         .dataset = "d",
	                         .n_records = batch->n,
	                         .records = batch->records};
	struct ctl_csv_writer w;
	ctl_csv_writer_init(&w);
	ctl_write_delivery_csv(null, &w, &d);
	ctl_write_delivery_jsonl(null, &d);
	ctl_csv_writer_release(&w);
	fclose(null);
	for (size_t i = 0; i < batch->n && i < FUZZ_CHECKED_RECORDS; i++) {
		csv_roundtrip(&batch->records[i]);
		jsonl_roundtrip(&batch->records[i]);
	}
}

#endif
