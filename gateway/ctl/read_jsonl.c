/*
 * JSON Lines records: each line one flat JSON object (RFC 8259 syntax) whose
 * values are strings, numbers, booleans or null. No recursion: nested
 * values are refused, so depth is never a question.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_internal.h"

/* Longest number literal accepted (digits of a double need far fewer). */
#define MAX_NUMBER_LEN 400

struct jl_reader {
	const char *name;
	const char *p;   /* the current line */
	size_t len, pos; /* line length (without CR/LF) and position in it */
	int line;
	const char *key;  /* the key being read, for messages; NULL before one */
	size_t key_index; /* its place in the object, from 0 */
	const struct ctl_limits *lim;
	char *err;
	size_t errlen;
	struct strbuf scratch;
	struct isg_field *fields;
	size_t n_fields;
	/* keys whose value was null: not fields, but a second copy is still a duplicate */
	const char **nulls;
	size_t n_nulls;
	struct ctl_batch *out;
};

static int fail_at(struct jl_reader *r, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(struct jl_reader *r, size_t pos, const char *fmt, ...)
{
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Named only when it has a field name's shape: a key may be data (an NHS number). */
	if (r->key && str_field_name(r->key, strlen(r->key)))
		snprintf(r->err, r->errlen, "%s:%d:%zu: key '%s': %s", r->name, r->line, pos + 1,
		         r->key, msg);
	else if (r->key)
		snprintf(r->err, r->errlen, "%s:%d:%zu: key %zu: %s", r->name, r->line, pos + 1,
		         r->key_index + 1, msg);
	else
		snprintf(r->err, r->errlen, "%s:%d:%zu: %s", r->name, r->line, pos + 1, msg);
	return ISG_ERR_PARSE;
}

static void skip_ws(struct jl_reader *r)
{
	while (r->pos < r->len && (r->p[r->pos] == ' ' || r->p[r->pos] == '\t' ||
	                           r->p[r->pos] == '\r' || r->p[r->pos] == '\n'))
		r->pos++;
}

static int peek(const struct jl_reader *r)
{
	return r->pos < r->len ? (unsigned char)r->p[r->pos] : -1;
}

static int hex4(const char *s, uint32_t *out)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static void put_utf8(struct strbuf *b, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	strbuf_append(b, u, n);
}

/* \uXXXX at r->pos (after the backslash and 'u'), with surrogate pairs. */
static int unicode_escape(struct jl_reader *r, size_t at)
{
	uint32_t cp, lo;
	if (r->len - r->pos < 4 || hex4(r->p + r->pos, &cp) < 0)
		return fail_at(r, at, "invalid \\u escape");
	r->pos += 4;
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return fail_at(r, at, "unpaired surrogate in \\u escape");
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (r->len - r->pos < 6 || r->p[r->pos] != '\\' || r->p[r->pos + 1] != 'u' ||
		    hex4(r->p + r->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
			return fail_at(r, at, "unpaired surrogate in \\u escape");
		r->pos += 6;
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
	}
	if (cp == 0)
		return fail_at(r, at, "U+0000 is not allowed in text");
	put_utf8(&r->scratch, cp);
	return 0;
}

/* A string at r->pos (on its quote) into r->scratch, NUL-terminated; *len without it. */
static int string(struct jl_reader *r, size_t *len)
{
	size_t start = r->pos++;
	r->scratch.len = 0;
	for (;;) {
		size_t run = r->pos;
		while (r->pos < r->len && r->p[r->pos] != '"' && r->p[r->pos] != '\\' &&
		       (unsigned char)r->p[r->pos] >= 0x20)
			r->pos++;
		strbuf_append(&r->scratch, r->p + run, r->pos - run);
		int c = peek(r);
		if (c < 0)
			return fail_at(r, start, "string is not closed");
		if (c == '"')
			break;
		if (c < 0x20)
			return fail_at(r, r->pos, "control character in a string (escape it)");
		size_t at = r->pos++;
		int e = peek(r);
		r->pos++;
		static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
		const char *k = e > 0 ? strchr(from, e) : NULL;
		if (k) {
			strbuf_append(&r->scratch, &to[k - from], 1);
		} else if (e == 'u') {
			int rc = unicode_escape(r, at);
			if (rc < 0)
				return rc;
		} else {
			return fail_at(r, at, "invalid escape in a string");
		}
	}
	r->pos++;
	*len = r->scratch.len;
	strbuf_append(&r->scratch, "", 1);
	return r->scratch.failed ? ISG_ERR_NOMEM : 0;
}

static size_t digits(const struct jl_reader *r, size_t pos)
{
	size_t n = 0;
	while (pos + n < r->len && r->p[pos + n] >= '0' && r->p[pos + n] <= '9')
		n++;
	return n;
}

/* A number (RFC 8259 grammar): integer when it has no fraction or exponent. */
static int number(struct jl_reader *r, struct isg_value *v)
{
	size_t start = r->pos, i = r->pos;
	bool integer = true;
	if (i < r->len && r->p[i] == '-')
		i++;
	size_t n = digits(r, i);
	if (n == 0 || (n > 1 && r->p[i] == '0'))
		return fail_at(r, start, "invalid number");
	i += n;
	if (i < r->len && r->p[i] == '.') {
		integer = false;
		n = digits(r, ++i);
		if (n == 0)
			return fail_at(r, start, "invalid number");
		i += n;
	}
	if (i < r->len && (r->p[i] == 'e' || r->p[i] == 'E')) {
		integer = false;
		i++;
		if (i < r->len && (r->p[i] == '+' || r->p[i] == '-'))
			i++;
		n = digits(r, i);
		if (n == 0)
			return fail_at(r, start, "invalid number");
		i += n;
	}
	r->pos = i;
	if (i - start > MAX_NUMBER_LEN)
		return fail_at(r, start, "number longer than %d characters", MAX_NUMBER_LEN);
	if (integer) {
		v->kind = ISG_VALUE_INTEGER;
		if (ctl_parse_integer(r->p + start, i - start, &v->integer) < 0)
			return fail_at(r, start, "integer out of 64-bit range");
		return 0;
	}
	char text[MAX_NUMBER_LEN + 1];
	memcpy(text, r->p + start, i - start);
	text[i - start] = '\0';
	v->kind = ISG_VALUE_REAL;
	errno = 0;
	v->real = strtod(text, NULL);
	/* ERANGE: beyond a double, or so small it became 0 (a subnormal
	 * result, also ERANGE in glibc, is kept) */
	if (!isfinite(v->real) || (errno == ERANGE && v->real == 0))
		return fail_at(r, start, "number out of range");
	return 0;
}

static bool literal(struct jl_reader *r, const char *word)
{
	size_t n = strlen(word);
	if (r->len - r->pos < n || memcmp(r->p + r->pos, word, n) != 0)
		return false;
	r->pos += n;
	return true;
}

/* A value; *absent for null. Text goes into the batch's arena. */
static int value(struct jl_reader *r, struct isg_value *v, bool *absent)
{
	memset(v, 0, sizeof(*v));
	*absent = false;
	size_t at = r->pos;
	int c = peek(r);
	if (c == '"') {
		size_t len;
		int rc = string(r, &len);
		if (rc < 0)
			return rc;
		v->kind = ISG_VALUE_TEXT;
		v->text = ctl_arena_strdup(r->out, r->scratch.p, len);
		return v->text ? 0 : ISG_ERR_NOMEM;
	}
	if (c == '-' || (c >= '0' && c <= '9'))
		return number(r, v);
	if (c == '{' || c == '[')
		return fail_at(r, at, "nested objects and arrays are not allowed");
	v->kind = ISG_VALUE_BOOLEAN;
	if (literal(r, "true"))
		v->boolean = true;
	else if (literal(r, "false"))
		v->boolean = false;
	else if (literal(r, "null"))
		*absent = true;
	else
		return fail_at(r, at, c < 0 ? "missing value" : "invalid value");
	return 0;
}

/*
 * Keep a member (absent: its value was null, so it is no field). Null keys
 * count against max_fields too, which bounds the duplicate search.
 */
static int add_field(struct jl_reader *r, const char *key, const struct isg_value *v, bool absent,
                     size_t key_at)
{
	for (size_t i = 0; i < r->n_fields; i++)
		if (strcmp(r->fields[i].name, key) == 0)
			return fail_at(r, key_at, "duplicate key");
	for (size_t i = 0; i < r->n_nulls; i++)
		if (strcmp(r->nulls[i], key) == 0)
			return fail_at(r, key_at, "duplicate key");
	if (r->n_fields + r->n_nulls == r->lim->max_fields)
		return fail_at(r, key_at, "more than %zu keys in an object", r->lim->max_fields);
	if (absent) {
		r->nulls[r->n_nulls++] = key;
		return 0;
	}
	r->fields[r->n_fields].name = key;
	r->fields[r->n_fields].value = *v;
	r->n_fields++;
	return 0;
}

/* One member "key": value; the key is kept in the arena and named in messages. */
static int member(struct jl_reader *r)
{
	size_t key_at = r->pos;
	r->key = NULL;
	if (peek(r) != '"')
		return fail_at(r, r->pos, "expected a key in double quotes");
	size_t len;
	int rc = string(r, &len);
	if (rc < 0)
		return rc;
	if (len == 0)
		return fail_at(r, key_at, "empty key");
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)r->scratch.p[i] < 0x20 || r->scratch.p[i] == 0x7f)
			return fail_at(r, key_at, "key has a control character");
	char *key = ctl_arena_strdup(r->out, r->scratch.p, len);
	if (!key)
		return ISG_ERR_NOMEM;
	r->key = key;
	r->key_index = r->n_fields + r->n_nulls;
	skip_ws(r);
	if (peek(r) != ':')
		return fail_at(r, r->pos, "expected ':'");
	r->pos++;
	skip_ws(r);
	struct isg_value v;
	bool absent;
	if ((rc = value(r, &v, &absent)) < 0)
		return rc;
	if ((rc = add_field(r, key, &v, absent, key_at)) < 0)
		return rc;
	return 0; /* r->key stays: "expected ','" after a value names the key */
}

static int object(struct jl_reader *r)
{
	r->n_fields = 0;
	r->n_nulls = 0;
	r->key = NULL;
	skip_ws(r);
	if (peek(r) != '{')
		return fail_at(r, r->pos, "expected a JSON object");
	r->pos++;
	skip_ws(r);
	if (peek(r) == '}') {
		r->pos++;
	} else {
		for (;;) {
			int rc = member(r);
			if (rc < 0)
				return rc;
			skip_ws(r);
			int c = peek(r);
			r->pos++;
			if (c == '}')
				break;
			if (c != ',')
				return fail_at(r, r->pos - 1, "expected ',' or '}'");
			skip_ws(r);
		}
	}
	r->key = NULL;
	skip_ws(r);
	if (r->pos != r->len)
		return fail_at(r, r->pos, "unexpected text after the object");
	return 0;
}

static bool blank(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
			return false;
	return true;
}

static int read_lines(struct jl_reader *r, const char *buf, size_t len, size_t start)
{
	size_t pos = start, kept = 0;
	while (pos < len) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - buf) : len;
		r->p = buf + pos;
		r->len = end - pos;
		r->pos = 0;
		if (r->len > r->lim->max_line) {
			snprintf(r->err, r->errlen, "%s:%d: line longer than %zu bytes", r->name,
			         r->line, r->lim->max_line);
			return ISG_ERR_LIMIT;
		}
		if (!blank(r->p, r->len)) {
			if (kept == r->lim->max_records) {
				snprintf(r->err, r->errlen, "%s:%d: more than %zu records", r->name,
				         r->line, r->lim->max_records);
				return ISG_ERR_LIMIT;
			}
			int rc = object(r);
			if (rc == 0)
				rc = ctl_batch_add(r->out, r->fields, r->n_fields, r->line);
			if (rc < 0)
				return rc;
			kept++;
		}
		pos = end + 1;
		r->line++;
	}
	return 0;
}

int ctl_read_jsonl(const char *name, const char *buf, size_t len, const struct ctl_limits *lim,
                   struct ctl_batch *out, char *err, size_t errlen)
{
	struct jl_reader r = {
	    .name = name,
	    .line = 1,
	    .lim = lim,
	    .err = err,
	    .errlen = errlen,
	    .out = out,
	};
	strbuf_init(&r.scratch);
	int rc = 0;
	size_t bad = ctl_utf8_check(buf, len);
	if (bad < len) {
		int line, col;
		ctl_position(buf, bad, &line, &col);
		snprintf(err, errlen, "%s:%d:%d: %s", name, line, col,
		         buf[bad] ? "invalid UTF-8" : "NUL byte");
		return ISG_ERR_PARSE;
	}
	r.fields = calloc(lim->max_fields ? lim->max_fields : 1, sizeof(*r.fields));
	r.nulls = calloc(lim->max_fields ? lim->max_fields : 1, sizeof(*r.nulls));
	if (!r.fields || !r.nulls)
		rc = ISG_ERR_NOMEM;
	else
		rc = read_lines(&r, buf, len,
		                len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0 ? 3 : 0);
	if (rc == ISG_ERR_NOMEM)
		snprintf(err, errlen, "%s: out of memory", name);
	strbuf_release(&r.scratch);
	free(r.fields);
	free(r.nulls);
	return rc;
}
