/*
 * CSV records (RFC 4180) with a header row. Every row is bounded by
 * max_line bytes and max_fields cells before it is kept; cell text goes to
 * a scratch buffer, then into the batch's arena.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctl/ctl_internal.h"

struct cell {
	size_t off, len; /* text in the scratch buffer */
	bool quoted;
	int line, col;
};

struct column {
	const char *name; /* in the batch's arena */
	enum isg_value_kind kind;
};

struct csv_reader {
	const char *name, *buf;
	size_t len, pos;
	int line;
	size_t line_start;
	const struct ctl_limits *lim;
	char *err;
	size_t errlen;
	struct strbuf scratch;
	struct cell *cells;
	size_t n_cells, cap_cells;
	struct column *columns;
	size_t n_columns;
	struct isg_field *fields;
};

static int fail(struct csv_reader *r, int code, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(struct csv_reader *r, int code, int line, int col, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (col > 0)
		snprintf(r->err, r->errlen, "%s:%d:%d: %s", r->name, line, col, msg);
	else
		snprintf(r->err, r->errlen, "%s:%d: %s", r->name, line, msg);
	return code;
}

static int col_of(const struct csv_reader *r, size_t pos)
{
	return (int)(pos - r->line_start + 1);
}

static void newline_at(struct csv_reader *r, size_t nl)
{
	r->line++;
	r->line_start = nl + 1;
}

static int cell_begin(struct csv_reader *r, bool quoted)
{
	if (r->n_cells == r->lim->max_fields)
		return fail(r, ISG_ERR_LIMIT, r->line, col_of(r, r->pos),
		            "more than %zu fields in a record", r->lim->max_fields);
	if (r->n_cells == r->cap_cells) {
		size_t cap = r->cap_cells ? r->cap_cells * 2 : 16;
		struct cell *c = realloc(r->cells, cap * sizeof(*c));
		if (!c)
			return ISG_ERR_NOMEM;
		r->cells = c;
		r->cap_cells = cap;
	}
	struct cell *c = &r->cells[r->n_cells++];
	c->off = r->scratch.len;
	c->len = 0;
	c->quoted = quoted;
	c->line = r->line;
	c->col = col_of(r, r->pos);
	return 0;
}

static void cell_append(struct csv_reader *r, const char *s, size_t n)
{
	strbuf_append(&r->scratch, s, n);
	r->cells[r->n_cells - 1].len += n;
}

static int unquoted(struct csv_reader *r)
{
	size_t start = r->pos;
	while (r->pos < r->len) {
		char c = r->buf[r->pos];
		if (c == ',' || c == '\n')
			break;
		if (c == '\r') {
			if (r->pos + 1 < r->len && r->buf[r->pos + 1] == '\n')
				break;
			return fail(r, ISG_ERR_PARSE, r->line, col_of(r, r->pos),
			            "carriage return inside an unquoted field");
		}
		if (c == '"')
			return fail(r, ISG_ERR_PARSE, r->line, col_of(r, r->pos),
			            "quote inside an unquoted field (quote the whole field and "
			            "double the quote)");
		r->pos++;
	}
	cell_append(r, r->buf + start, r->pos - start);
	return 0;
}

static int quoted(struct csv_reader *r)
{
	int qline = r->line, qcol = col_of(r, r->pos);
	r->pos++;
	for (;;) {
		const char *q = memchr(r->buf + r->pos, '"', r->len - r->pos);
		size_t end = q ? (size_t)(q - r->buf) : r->len;
		for (size_t i = r->pos; i < end; i++)
			if (r->buf[i] == '\n')
				newline_at(r, i);
		cell_append(r, r->buf + r->pos, end - r->pos);
		r->pos = end;
		if (!q)
			return fail(r, ISG_ERR_PARSE, qline, qcol, "quoted field is not closed");
		if (r->pos + 1 < r->len && r->buf[r->pos + 1] == '"') {
			cell_append(r, "\"", 1);
			r->pos += 2;
			continue;
		}
		r->pos++;
		break;
	}
	char c = r->pos < r->len ? r->buf[r->pos] : ',';
	bool crlf = c == '\r' && r->pos + 1 < r->len && r->buf[r->pos + 1] == '\n';
	if (c != ',' && c != '\n' && !crlf)
		return fail(r, ISG_ERR_PARSE, r->line, col_of(r, r->pos),
		            "unexpected character after a closing quote");
	return 0;
}

/*
 * Skip lines of nothing but spaces, tabs and carriage returns, as the JSON
 * Lines reader does: one made of spaces would otherwise be a record of one
 * cell, sent as text in a one-column file and "record has 1 fields" in any
 * other. A blank last line without a newline is skipped too.
 */
static void skip_blank_lines(struct csv_reader *r)
{
	for (;;) {
		size_t i = r->pos;
		while (i < r->len && (r->buf[i] == ' ' || r->buf[i] == '\t' || r->buf[i] == '\r'))
			i++;
		if (i == r->len) {
			r->pos = i;
			return;
		}
		if (r->buf[i] != '\n')
			return;
		newline_at(r, i);
		r->pos = i + 1;
	}
}

/* Parse one row into r->cells; 1 when a row was read, 0 at the end, or an error. */
static int parse_row(struct csv_reader *r, int *row_line)
{
	skip_blank_lines(r);
	if (r->pos == r->len)
		return 0;
	size_t row_start = r->pos;
	*row_line = r->line;
	r->n_cells = 0;
	r->scratch.len = 0;
	for (;;) {
		bool q = r->buf[r->pos] == '"';
		int rc = cell_begin(r, q);
		if (rc == 0)
			rc = q ? quoted(r) : unquoted(r);
		if (rc < 0)
			return rc;
		strbuf_append(&r->scratch, "", 1); /* terminate the cell's text */
		if (r->scratch.failed)
			return ISG_ERR_NOMEM;
		if (r->pos - row_start > r->lim->max_line)
			return fail(r, ISG_ERR_LIMIT, *row_line, 0, "record longer than %zu bytes",
			            r->lim->max_line);
		if (r->pos == r->len)
			return 1;
		char c = r->buf[r->pos];
		if (c == ',') {
			r->pos++;
			if (r->pos == r->len) { /* "a,b," ends with an empty cell */
				int e = cell_begin(r, false);
				strbuf_append(&r->scratch, "", 1);
				return e < 0 ? e : r->scratch.failed ? ISG_ERR_NOMEM : 1;
			}
			continue;
		}
		size_t nl = c == '\r' ? r->pos + 1 : r->pos;
		newline_at(r, nl);
		r->pos = nl + 1;
		return 1;
	}
}

static const char *cell_text(const struct csv_reader *r, const struct cell *c)
{
	return r->scratch.p ? r->scratch.p + c->off : "";
}

/*
 * How an error names a column: by its name when that has a field name's
 * shape, else by its place, since a CSV without its header row makes the
 * first record's values (a person's data) the column names.
 */
#define COLUMN_LABEL (sizeof("column ''") + STR_FIELD_NAME_MAX)
static const char *column_label(char buf[static COLUMN_LABEL], const char *name, size_t len,
                                size_t index)
{
	if (str_field_name(name, len))
		snprintf(buf, COLUMN_LABEL, "column '%.*s'", (int)len, name);
	else
		snprintf(buf, COLUMN_LABEL, "column %zu", index + 1);
	return buf;
}

/*
 * "age:integer" is column "age" of integer values; a name without ':' is
 * text. A field name never holds ':' (policy field names are letters,
 * digits, '_' and '-'), so what follows the last ':' is always meant as a
 * type: one isgctl does not know ("age:integr", "count:Integer") is refused
 * here, not sent as a field that the gateway would refuse. The last ':',
 * not the first, so that "a:integer:text", which fetch writes for a text
 * field named "a:integer", reads back.
 */
static int split_type(struct csv_reader *r, const struct cell *c, size_t *name_len,
                      enum isg_value_kind *kind)
{
	static const struct {
		const char *name;
		enum isg_value_kind kind;
	} types[] = {
	    {"text", ISG_VALUE_TEXT},
	    {"integer", ISG_VALUE_INTEGER},
	    {"real", ISG_VALUE_REAL},
	    {"boolean", ISG_VALUE_BOOLEAN},
	};
	const char *s = cell_text(r, c);
	const char *colon = memrchr(s, ':', c->len);
	*name_len = c->len;
	*kind = ISG_VALUE_TEXT;
	if (!colon)
		return 0;
	*name_len = (size_t)(colon - s);
	const char *type = colon + 1;
	for (size_t i = 0; i < ARRAY_LEN(types); i++) {
		if (strcmp(type, types[i].name) == 0) {
			*kind = types[i].kind;
			return 0;
		}
	}
	char label[COLUMN_LABEL];
	column_label(label, s, *name_len, (size_t)(c - r->cells));
	if (*type && !str_field_name(type, strlen(type)))
		return fail(r, ISG_ERR_PARSE, c->line, c->col,
		            "%s: unknown type (give text, integer, real or boolean)", label);
	return fail(r, ISG_ERR_PARSE, c->line, c->col,
	            "%s: unknown type '%s' (give text, integer, real or boolean)", label, type);
}

static int header(struct csv_reader *r, struct ctl_batch *out)
{
	r->columns = calloc(r->n_cells, sizeof(*r->columns));
	r->fields = calloc(r->n_cells, sizeof(*r->fields));
	if (!r->columns || !r->fields)
		return ISG_ERR_NOMEM;
	for (size_t i = 0; i < r->n_cells; i++) {
		const struct cell *c = &r->cells[i];
		const char *text = cell_text(r, c);
		for (size_t k = 0; k < c->len; k++)
			if ((unsigned char)text[k] < 0x20 || text[k] == 0x7f)
				return fail(r, ISG_ERR_PARSE, c->line, c->col,
				            "column name has a control character");
		size_t len;
		enum isg_value_kind kind;
		int rc = split_type(r, c, &len, &kind);
		if (rc < 0)
			return rc;
		if (len == 0)
			return fail(r, ISG_ERR_PARSE, c->line, c->col, "empty column name");
		char *name = ctl_arena_strdup(out, text, len);
		if (!name)
			return ISG_ERR_NOMEM;
		/*
		 * By place only: two equal names are most often a record taken for
		 * the header row ("Smith,Jones,Smith"), and the name is its data.
		 */
		for (size_t k = 0; k < i; k++)
			if (strcmp(r->columns[k].name, name) == 0)
				return fail(r, ISG_ERR_PARSE, c->line, c->col,
				            "column %zu has the same name as column %zu", i + 1,
				            k + 1);
		r->columns[i] = (struct column){.name = name, .kind = kind};
	}
	r->n_columns = r->n_cells;
	return 0;
}

/* A real number: [+-]digits[.digits][e[+-]digits], digits on at least one side of '.'. */
static bool real_syntax(const char *s)
{
	if (*s == '+' || *s == '-')
		s++;
	size_t digits = strspn(s, "0123456789");
	s += digits;
	if (*s == '.') {
		size_t frac = strspn(s + 1, "0123456789");
		digits += frac;
		s += 1 + frac;
	}
	if (digits == 0)
		return false;
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		size_t exp = strspn(s, "0123456789");
		if (exp == 0)
			return false;
		s += exp;
	}
	return *s == '\0';
}

/* A cell its column's type refuses: named by column (column_label), never by value. */
static int bad_value(struct csv_reader *r, const struct cell *c, const struct column *col,
                     const char *what)
{
	char label[COLUMN_LABEL];
	column_label(label, col->name, strlen(col->name), (size_t)(col - r->columns));
	return fail(r, ISG_ERR_PARSE, c->line, c->col, "%s: %s", label, what);
}

static int convert(struct csv_reader *r, const struct cell *c, const struct column *col,
                   struct isg_value *v, struct ctl_batch *out)
{
	const char *text = cell_text(r, c);
	memset(v, 0, sizeof(*v));
	v->kind = col->kind;
	switch (col->kind) {
	case ISG_VALUE_TEXT:
		v->text = ctl_arena_strdup(out, text, c->len);
		return v->text ? 0 : ISG_ERR_NOMEM;
	case ISG_VALUE_INTEGER: {
		int rc = ctl_parse_integer(text, c->len, &v->integer);
		if (rc < 0)
			return bad_value(r, c, col,
			                 rc == ISG_ERR_PARSE ? "not an integer"
			                                     : "integer out of 64-bit range");
		return 0;
	}
	case ISG_VALUE_REAL:
		if (!real_syntax(text))
			return bad_value(r, c, col, "not a number");
		errno = 0;
		v->real = strtod(text, NULL);
		/* ERANGE: beyond a double, or so small it became 0 (a subnormal
		 * result, also ERANGE in glibc, is kept) */
		if (!isfinite(v->real) || (errno == ERANGE && v->real == 0))
			return bad_value(r, c, col, "number out of range");
		return 0;
	case ISG_VALUE_BOOLEAN:
		if (strcasecmp(text, "true") == 0)
			v->boolean = true;
		else if (strcasecmp(text, "false") != 0)
			return bad_value(r, c, col, "not true or false");
		return 0;
	case ISG_VALUE_NONE:
		break;
	}
	return ISG_ERR_INVALID;
}

static int record(struct csv_reader *r, int row_line, struct ctl_batch *out, size_t *kept)
{
	if (r->n_cells != r->n_columns)
		return fail(r, ISG_ERR_PARSE, row_line, 0,
		            "record has %zu fields, the header has %zu", r->n_cells, r->n_columns);
	if (*kept == r->lim->max_records)
		return fail(r, ISG_ERR_LIMIT, row_line, 0, "more than %zu records",
		            r->lim->max_records);
	size_t n = 0;
	for (size_t i = 0; i < r->n_cells; i++) {
		const struct cell *c = &r->cells[i];
		if (c->len == 0 && !c->quoted)
			continue; /* absent */
		r->fields[n].name = r->columns[i].name;
		int rc = convert(r, c, &r->columns[i], &r->fields[n].value, out);
		if (rc < 0)
			return rc;
		n++;
	}
	(*kept)++;
	return ctl_batch_add(out, r->fields, n, row_line);
}

static int check_encoding(struct csv_reader *r)
{
	size_t bad = ctl_utf8_check(r->buf, r->len);
	if (bad == r->len)
		return 0;
	int line, col;
	ctl_position(r->buf, bad, &line, &col);
	return fail(r, ISG_ERR_PARSE, line, col, r->buf[bad] ? "invalid UTF-8" : "NUL byte");
}

int ctl_read_csv(const char *name, const char *buf, size_t len, const struct ctl_limits *lim,
                 struct ctl_batch *out, char *err, size_t errlen)
{
	struct csv_reader r = {
	    .name = name,
	    .buf = buf,
	    .len = len,
	    .line = 1,
	    .lim = lim,
	    .err = err,
	    .errlen = errlen,
	};
	strbuf_init(&r.scratch);
	size_t kept = 0;
	int rc = check_encoding(&r);
	if (rc < 0)
		goto out;
	if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0)
		r.pos = r.line_start = 3;
	int row_line = 1;
	rc = parse_row(&r, &row_line);
	if (rc == 0)
		rc = fail(&r, ISG_ERR_PARSE, 1, 0, "no header row");
	if (rc < 0 || (rc = header(&r, out)) < 0)
		goto out;
	while ((rc = parse_row(&r, &row_line)) == 1)
		if ((rc = record(&r, row_line, out, &kept)) < 0)
			goto out;
out:
	if (rc == ISG_ERR_NOMEM)
		snprintf(err, errlen, "%s: out of memory", name);
	strbuf_release(&r.scratch);
	free(r.cells);
	free(r.columns);
	free(r.fields);
	return rc < 0 ? rc : 0;
}
