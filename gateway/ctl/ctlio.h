/*
 * ctlio: what isgctl reads and writes, kept apart from the commands so unit
 * tests and fuzzers can drive it: records from CSV and JSON Lines, receipts
 * and deliveries as JSON Lines or CSV, and the client config file.
 *
 * Readers take the whole input in memory and treat every byte as hostile:
 * lines, fields and records are bounded, text must be UTF-8, and errors
 * name file:line:column and the column or key, never a value.
 */
#ifndef ISG_CTLIO_H
#define ISG_CTLIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "isgclient.h"
#include "util/util.h"
#include "ydoc/ydoc.h"

/* Records read from a file; the batch owns every string and array. */
struct ctl_batch {
	size_t n, cap;
	struct isg_record *records;
	int *lines;                    /* line where each record starts, for messages */
	struct ctl_arena_chunk *arena; /* private */
};

void ctl_batch_init(struct ctl_batch *b);
void ctl_batch_release(struct ctl_batch *b);

enum ctl_format { CTL_FORMAT_NONE, CTL_FORMAT_CSV, CTL_FORMAT_JSONL };

/* .csv is CSV; .jsonl and .ndjson are JSON Lines (case-insensitive); else NONE. */
enum ctl_format ctl_format_from_name(const char *path);
/* "csv" or "jsonl" (also "ndjson"); 0 or ISG_ERR_PARSE. */
int ctl_format_parse(const char *s, enum ctl_format *out);

struct ctl_limits {
	size_t max_line;    /* bytes of one line (CSV: one record, quoted newlines included) */
	size_t max_fields;  /* fields (columns, keys) per record */
	size_t max_records; /* records per input */
};
#define CTL_MAX_LINE_DEFAULT (1024u * 1024)
#define CTL_MAX_FIELDS_DEFAULT 1024u
#define CTL_MAX_RECORDS_DEFAULT 1000000u
#define CTL_MAX_INPUT_DEFAULT (64u * 1024 * 1024)
void ctl_limits_default(struct ctl_limits *l);

/*
 * CSV (RFC 4180) with a header row naming the fields. Quoted fields may hold
 * commas, quotes ("") and line breaks; lines end in CRLF or LF; blank lines
 * are skipped; a UTF-8 byte order mark is ignored. An empty cell means the
 * field is absent; a quoted empty cell ("") is empty text. Values are text
 * unless the header gives a type: "age:integer", "score:real",
 * "consent:boolean" (true/false), "name:text"; any other text after a
 * header's last ':' is refused as an unknown type. An error names a column
 * by its place when its name lacks a field name's shape (str_field_name).
 *
 * Returns 0, or ISG_ERR_PARSE / ISG_ERR_LIMIT with "name:line:col: message"
 * in err, or ISG_ERR_NOMEM. The batch is appended to.
 */
int ctl_read_csv(const char *name, const char *buf, size_t len, const struct ctl_limits *lim,
                 struct ctl_batch *out, char *err, size_t errlen);

/*
 * JSON Lines: one JSON object per line, blank lines skipped. A string is
 * text, an integer number (no fraction or exponent, within 64 bits) is an
 * integer, any other number is real, true/false are boolean, null means
 * absent. Nested objects and arrays, duplicate keys and U+0000 are refused.
 * An error names a key by its place when it lacks a field name's shape.
 */
int ctl_read_jsonl(const char *name, const char *buf, size_t len, const struct ctl_limits *lim,
                   struct ctl_batch *out, char *err, size_t errlen);

int ctl_read_records(enum ctl_format format, const char *name, const char *buf, size_t len,
                     const struct ctl_limits *lim, struct ctl_batch *out, char *err, size_t errlen);

/* strerror(e) with a lowercase first letter, in a static buffer. */
const char *ctl_errno_text(int e);

/* Whether a write to f failed with e because its reader went away (EPIPE, or, when the
 * stream no longer knows its errno, a pipe or socket with no reader left). */
bool ctl_output_closed(FILE *f, int e);

/*
 * Why a write to f failed, for "cannot write X: %s": a reader that went away
 * (a pager quit, "| head") is said as such, not as "broken pipe"; else
 * ctl_errno_text(e), or "a write failed" when e is 0.
 */
const char *ctl_output_errno_text(FILE *f, int e);

/* fsync the directory path is in, so a name just given in it survives a crash: 0 or -1. */
int ctl_sync_dir_of(const char *path);

/* Read a whole file, or standard input for "-", refusing more than max bytes. */
int ctl_slurp(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen);

/* Output. Each function writes whole lines and returns 0 or ISG_ERR_IO / ISG_ERR_NOMEM. */

/* A value as JSON: strings escaped (non-ASCII kept), reals round-trip, NONE is null. */
void ctl_json_value(struct strbuf *b, const struct isg_value *v);
/* Shortest text that reads back as the same double; always has '.', 'e' or is "null". */
void ctl_format_real(char *buf, size_t size, double v);

int ctl_write_receipt(FILE *out, const struct isg_receipt *r);
int ctl_write_delivery_jsonl(FILE *out, const struct isg_delivery *d);

/* CSV output: one row per record; a new header (after an empty line) when columns change. */
struct ctl_csv_writer {
	char *header; /* the last header written */
	bool wrote;
};
void ctl_csv_writer_init(struct ctl_csv_writer *w);
void ctl_csv_writer_release(struct ctl_csv_writer *w);
int ctl_write_delivery_csv(FILE *out, struct ctl_csv_writer *w, const struct isg_delivery *d);

/*
 * The client config file (YAML): gateway, certificate, key, ca, server_name,
 * timeout. Relative paths are made relative to the file's directory.
 * Problems go to diags; returns 0, ISG_ERR_PARSE, ISG_ERR_IO or ISG_ERR_NOMEM.
 */
struct ctl_client_config {
	char *gateway, *certificate, *key, *ca, *server_name;
	int timeout_ms; /* 0 when not given */
};
#define CTL_CONFIG_MAX_BYTES (64u * 1024)
void ctl_client_config_init(struct ctl_client_config *c);
void ctl_client_config_release(struct ctl_client_config *c);
int ctl_client_config_load(const char *path, struct ctl_client_config *out,
                           struct ydoc_diags *diags);
int ctl_client_config_parse(const char *name, const char *buf, size_t len,
                            struct ctl_client_config *out, struct ydoc_diags *diags);
/* A timeout: "2500" (milliseconds) or a duration ("30s", "250ms"); 1 ms to 1 day. */
int ctl_parse_timeout(const char *s, int *out_ms);

#endif
