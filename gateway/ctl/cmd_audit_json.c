/*
 * A small JSON reader for audit entries (RFC 8259). Entries come from the
 * store, which anyone with file access could have edited, so every byte is
 * hostile: depth is bounded, every loop is bounded by the input, and the
 * decoded strings of a text of len bytes always fit in len bytes (a string
 * decodes to fewer bytes than its quoted form, leaving room for its NUL).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/cmd_audit.h"

struct aj_parser {
	struct aj_doc *d;
	const char *p;
	size_t len, pos;
	const char *reason;
};

void aj_doc_init(struct aj_doc *d)
{
	memset(d, 0, sizeof(*d));
}

void aj_doc_release(struct aj_doc *d)
{
	free(d->nodes);
	free(d->strings);
	aj_doc_init(d);
}

static int aj_fail(struct aj_parser *ps, const char *reason)
{
	if (!ps->reason)
		ps->reason = reason;
	return ISG_ERR_PARSE;
}

/* A new node; its position, or SIZE_MAX when out of memory. */
static size_t new_node(struct aj_parser *ps, enum aj_type type)
{
	struct aj_doc *d = ps->d;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		struct aj_node *nodes = realloc(d->nodes, cap * sizeof(*nodes));
		if (!nodes)
			return SIZE_MAX;
		d->nodes = nodes;
		d->cap = cap;
	}
	d->nodes[d->n] = (struct aj_node){.type = type};
	return d->n++;
}

static void skip_ws(struct aj_parser *ps)
{
	while (ps->pos < ps->len) {
		char c = ps->p[ps->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			return;
		ps->pos++;
	}
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

/* A \uXXXX escape (and its low surrogate) at ps->pos, just after the 'u'. */
static int read_u_escape(struct aj_parser *ps, uint32_t *cp)
{
	if (ps->len - ps->pos < 4 || hex4(ps->p + ps->pos, cp) != 0)
		return aj_fail(ps, "bad \\u escape");
	ps->pos += 4;
	if (*cp >= 0xdc00 && *cp <= 0xdfff)
		return aj_fail(ps, "lone low surrogate");
	if (*cp >= 0xd800 && *cp <= 0xdbff) {
		uint32_t lo;
		if (ps->len - ps->pos < 6 || ps->p[ps->pos] != '\\' || ps->p[ps->pos + 1] != 'u' ||
		    hex4(ps->p + ps->pos + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
			return aj_fail(ps, "lone high surrogate");
		ps->pos += 6;
		*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
	}
	if (*cp == 0)
		return aj_fail(ps, "U+0000 in a string");
	return 0;
}

static int read_escape(struct aj_parser *ps, char *out, size_t *n)
{
	char c = ps->p[ps->pos++];
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *hit = c ? strchr(from, c) : NULL;
	if (hit) {
		out[(*n)++] = to[hit - from];
		return 0;
	}
	if (c != 'u')
		return aj_fail(ps, "bad escape");
	uint32_t cp;
	int rc = read_u_escape(ps, &cp);
	if (rc == 0)
		*n += utf8_encode(cp, out + *n);
	return rc;
}

/* A string starting at the opening quote; *out points into d->strings. */
static int read_string(struct aj_parser *ps, const char **out, size_t *out_len)
{
	struct aj_doc *d = ps->d;
	size_t start = ++ps->pos; /* after the quote */
	char *dst = d->strings + d->used;
	size_t n = 0;
	while (ps->pos < ps->len) {
		unsigned char c = (unsigned char)ps->p[ps->pos];
		if (c == '"') {
			if (!str_utf8_valid(ps->p + start, ps->pos - start))
				return aj_fail(ps, "invalid UTF-8 in a string");
			ps->pos++;
			dst[n] = '\0';
			d->used += n + 1;
			*out = dst;
			*out_len = n;
			return 0;
		}
		if (c < 0x20)
			return aj_fail(ps, "control character in a string");
		ps->pos++;
		if (c != '\\') {
			dst[n++] = (char)c;
			continue;
		}
		if (ps->pos >= ps->len)
			break;
		int rc = read_escape(ps, dst, &n);
		if (rc)
			return rc;
	}
	return aj_fail(ps, "unterminated string");
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static size_t digits(const struct aj_parser *ps, size_t pos)
{
	size_t start = pos;
	while (pos < ps->len && is_digit(ps->p[pos]))
		pos++;
	return pos - start;
}

static int read_number(struct aj_parser *ps, size_t node)
{
	size_t start = ps->pos, pos = ps->pos;
	if (pos < ps->len && ps->p[pos] == '-')
		pos++;
	size_t n = digits(ps, pos);
	if (n == 0 || (n > 1 && ps->p[pos] == '0'))
		return aj_fail(ps, "bad number");
	pos += n;
	if (pos < ps->len && ps->p[pos] == '.') {
		n = digits(ps, ++pos);
		if (n == 0)
			return aj_fail(ps, "bad number");
		pos += n;
	}
	if (pos < ps->len && (ps->p[pos] == 'e' || ps->p[pos] == 'E')) {
		pos++;
		if (pos < ps->len && (ps->p[pos] == '+' || ps->p[pos] == '-'))
			pos++;
		n = digits(ps, pos);
		if (n == 0)
			return aj_fail(ps, "bad number");
		pos += n;
	}
	ps->d->nodes[node].str = ps->p + start;
	ps->d->nodes[node].len = pos - start;
	ps->pos = pos;
	return 0;
}

static int read_value(struct aj_parser *ps, size_t *node, int depth);

/* Link child after *last under parent. */
static void link_child(struct aj_doc *d, size_t parent, size_t *last, size_t child)
{
	if (*last)
		d->nodes[*last].next = child;
	else
		d->nodes[parent].child = child;
	*last = child;
}

static int read_array(struct aj_parser *ps, size_t node, int depth)
{
	size_t last = 0;
	ps->pos++;
	skip_ws(ps);
	if (ps->pos < ps->len && ps->p[ps->pos] == ']') {
		ps->pos++;
		return 0;
	}
	for (;;) {
		size_t child;
		int rc = read_value(ps, &child, depth + 1);
		if (rc)
			return rc;
		link_child(ps->d, node, &last, child);
		skip_ws(ps);
		if (ps->pos >= ps->len)
			return aj_fail(ps, "unterminated array");
		char c = ps->p[ps->pos++];
		if (c == ']')
			return 0;
		if (c != ',')
			return aj_fail(ps, "expected ',' or ']'");
	}
}

static int read_object(struct aj_parser *ps, size_t node, int depth)
{
	size_t last = 0;
	ps->pos++;
	skip_ws(ps);
	if (ps->pos < ps->len && ps->p[ps->pos] == '}') {
		ps->pos++;
		return 0;
	}
	for (;;) {
		const char *key;
		size_t key_len, child;
		skip_ws(ps);
		if (ps->pos >= ps->len || ps->p[ps->pos] != '"')
			return aj_fail(ps, "expected a member name");
		int rc = read_string(ps, &key, &key_len);
		if (rc)
			return rc;
		skip_ws(ps);
		if (ps->pos >= ps->len || ps->p[ps->pos] != ':')
			return aj_fail(ps, "expected ':'");
		ps->pos++;
		rc = read_value(ps, &child, depth + 1);
		if (rc)
			return rc;
		ps->d->nodes[child].key = key;
		link_child(ps->d, node, &last, child);
		skip_ws(ps);
		if (ps->pos >= ps->len)
			return aj_fail(ps, "unterminated object");
		char c = ps->p[ps->pos++];
		if (c == '}')
			return 0;
		if (c != ',')
			return aj_fail(ps, "expected ',' or '}'");
	}
}

static int read_word(struct aj_parser *ps, const char *word)
{
	size_t n = strlen(word);
	if (ps->len - ps->pos < n || memcmp(ps->p + ps->pos, word, n) != 0)
		return aj_fail(ps, "unexpected character");
	ps->pos += n;
	return 0;
}

static enum aj_type type_at(char c)
{
	switch (c) {
	case '{':
		return AJ_OBJECT;
	case '[':
		return AJ_ARRAY;
	case '"':
		return AJ_STRING;
	case 't':
		return AJ_TRUE;
	case 'f':
		return AJ_FALSE;
	case 'n':
		return AJ_NULL;
	default:
		return AJ_NUMBER;
	}
}

static int read_value(struct aj_parser *ps, size_t *node, int depth)
{
	if (depth > AJ_DEPTH_MAX)
		return aj_fail(ps, "nested too deeply");
	skip_ws(ps);
	if (ps->pos >= ps->len)
		return aj_fail(ps, "unexpected end of text");
	enum aj_type type = type_at(ps->p[ps->pos]);
	size_t n = new_node(ps, type);
	if (n == SIZE_MAX)
		return ISG_ERR_NOMEM;
	*node = n;
	switch (type) {
	case AJ_OBJECT:
		return read_object(ps, n, depth);
	case AJ_ARRAY:
		return read_array(ps, n, depth);
	case AJ_STRING:
		return read_string(ps, &ps->d->nodes[n].str, &ps->d->nodes[n].len);
	case AJ_TRUE:
		return read_word(ps, "true");
	case AJ_FALSE:
		return read_word(ps, "false");
	case AJ_NULL:
		return read_word(ps, "null");
	case AJ_NUMBER:
		return read_number(ps, n);
	}
	return aj_fail(ps, "unexpected character");
}

int aj_parse(struct aj_doc *d, const char *text, size_t len, const char **reason)
{
	struct aj_parser ps = {.d = d, .p = text, .len = len};
	d->n = 0;
	d->used = 0;
	if (d->size < len + 1) {
		char *s = realloc(d->strings, len + 1);
		if (!s)
			return ISG_ERR_NOMEM;
		d->strings = s;
		d->size = len + 1;
	}
	size_t root; /* always node 0 */
	int rc = read_value(&ps, &root, 0);
	if (rc == 0) {
		skip_ws(&ps);
		if (ps.pos != len)
			rc = aj_fail(&ps, "text after the value");
	}
	if (rc == ISG_ERR_PARSE && reason)
		*reason = ps.reason;
	if (rc == ISG_ERR_NOMEM && reason)
		*reason = "out of memory";
	return rc;
}

const struct aj_node *aj_root(const struct aj_doc *d)
{
	return d->n ? &d->nodes[0] : NULL;
}

const struct aj_node *aj_first(const struct aj_doc *d, const struct aj_node *n)
{
	return n && n->child ? &d->nodes[n->child] : NULL;
}

const struct aj_node *aj_next(const struct aj_doc *d, const struct aj_node *n)
{
	return n && n->next ? &d->nodes[n->next] : NULL;
}

const struct aj_node *aj_member(const struct aj_doc *d, const struct aj_node *o, const char *key)
{
	if (!o || o->type != AJ_OBJECT)
		return NULL;
	for (const struct aj_node *m = aj_first(d, o); m; m = aj_next(d, m))
		if (strcmp(m->key, key) == 0)
			return m;
	return NULL;
}

const char *aj_string(const struct aj_doc *d, const struct aj_node *o, const char *key)
{
	const struct aj_node *m = aj_member(d, o, key);
	return m && m->type == AJ_STRING ? m->str : NULL;
}

bool aj_uint(const struct aj_node *n, uint64_t *out)
{
	if (!n || n->type != AJ_NUMBER || n->len == 0 || n->len > 20)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n->len; i++) {
		char c = n->str[i];
		if (!is_digit(c))
			return false;
		unsigned d = (unsigned)(c - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" in shape (the values are checked by comparing with the column). */
static bool at_shape(const char *s, size_t len)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
	if (len != sizeof(shape) - 1)
		return false;
	for (size_t i = 0; i < len; i++)
		if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != shape[i])
			return false;
	return true;
}

const char *const audit_events[] = {
    "connection.accepted", "connection.refused", "connection.closed",    "message.accepted",
    "message.refused",     "message.delivered",  "message.acknowledged", "message.expired",
    "policy.loaded",       "policy.refused",     "keys.loaded",
};
const size_t audit_events_n = ARRAY_LEN(audit_events);

bool audit_event_known(const char *s)
{
	for (size_t i = 0; i < audit_events_n; i++)
		if (strcmp(s, audit_events[i]) == 0)
			return true;
	return false;
}

int audit_leaf_parse(struct aj_doc *d, const char *leaf, size_t len, struct audit_leaf *out,
                     const char **reason)
{
	const char *why = NULL;
	if (len > AUDIT_LEAF_PARSE_MAX)
		why = "entry too long to read";
	/*
	 * isgd writes no white space outside strings, and a string holds no raw
	 * control character, so a line break is damage; refused, so that no entry
	 * printed as it was signed (list --format jsonl) takes two lines.
	 */
	else if (memchr(leaf, '\n', len) || memchr(leaf, '\r', len))
		why = "it holds a line break";
	int rc = why ? ISG_ERR_PARSE : aj_parse(d, leaf, len, &why);
	if (rc == ISG_ERR_NOMEM)
		return rc;
	const struct aj_node *root = rc == 0 ? aj_root(d) : NULL;
	const struct aj_node *index = aj_first(d, root);
	const struct aj_node *at = aj_next(d, index);
	const struct aj_node *body = aj_next(d, at);
	if (why) {
	} else if (root->type != AJ_OBJECT) {
		why = "not a JSON object";
	} else if (!index || strcmp(index->key, "index") != 0 || !at ||
	           strcmp(at->key, "at") != 0 || !body || strcmp(body->key, "entry") != 0 ||
	           aj_next(d, body)) {
		why = "members are not exactly index, at, entry";
	} else if (!aj_uint(index, &out->index)) {
		why = "index is not a whole number";
	} else if (at->type != AJ_STRING || !at_shape(at->str, at->len)) {
		why = "at is not a time YYYY-MM-DDTHH:MM:SS.mmmZ";
	} else if (body->type != AJ_OBJECT) {
		why = "entry is not an object";
	} else if (!aj_string(d, body, "event")) {
		why = "entry has no event";
	} else if (!audit_event_known(aj_string(d, body, "event"))) {
		/* not shown: an edited entry may hold anything, a person's data included */
		why = "its event is not one isgd writes";
	}
	if (why) {
		if (reason)
			*reason = why;
		return ISG_ERR_PARSE;
	}
	out->at = at->str;
	out->body = body;
	out->event = aj_string(d, body, "event");
	return 0;
}
