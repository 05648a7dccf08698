/*
 * Parse YAML with libyaml's event API into a tree of positioned nodes.
 * Only plain YAML is accepted: one document, no anchors, aliases, tags or
 * %TAG directives, nesting at most YDOC_MAX_DEPTH deep. Nodes are attached
 * to their parent as soon as they start, so an abort at any point frees
 * everything from the root.
 */
#include "ydoc/ydoc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "util/util.h"

#define YDOC_MAX_DEPTH 64

struct frame {
	struct ydoc_node *node; /* a YDOC_SEQ or YDOC_MAP being filled */
	size_t cap;             /* allocated entries of items (and keys) */
	struct ydoc_node *key;  /* YDOC_MAP: key waiting for its value */
};

struct builder {
	const char *name;
	const char *buf;
	size_t len;
	struct ydoc_diags *d;
	struct ydoc *doc;
	struct frame stack[YDOC_MAX_DEPTH];
	size_t depth;
	int documents;
	bool failed;
	bool nomem;
};

static void node_free(struct ydoc_node *n)
{
	if (!n)
		return;
	if (n->kind == YDOC_SCALAR) {
		free(n->scalar);
	} else {
		for (size_t i = 0; i < n->n; i++) {
			node_free(n->items[i]);
			if (n->keys)
				node_free(n->keys[i]);
		}
		free(n->items);
		free(n->keys);
	}
	free(n);
}

void ydoc_free(struct ydoc *doc)
{
	if (!doc)
		return;
	node_free(doc->root);
	free(doc->file);
	free(doc);
}

static struct ydoc_node *node_new(enum ydoc_kind kind, const yaml_mark_t *mark)
{
	struct ydoc_node *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->kind = kind;
	/* libyaml counts from 0; diagnostics count from 1. */
	n->line = mark->line < INT32_MAX ? (int)mark->line + 1 : INT32_MAX;
	n->col = mark->column < INT32_MAX ? (int)mark->column + 1 : INT32_MAX;
	return n;
}

/* Error at a libyaml mark (not yet a node). */
static void error_at(struct builder *b, const yaml_mark_t *mark, const char *msg)
{
	struct ydoc_node at = {.line = (int)mark->line + 1, .col = (int)mark->column + 1};
	ydoc_error(b->d, b->name, &at, "%s", msg);
	b->failed = true;
}

static bool grow(struct frame *f)
{
	struct ydoc_node *n = f->node;
	if (n->n < f->cap)
		return true;
	size_t cap = f->cap ? f->cap * 2 : 4;
	struct ydoc_node **items = realloc(n->items, cap * sizeof(*items));
	if (!items)
		return false;
	n->items = items;
	if (n->kind == YDOC_MAP) {
		struct ydoc_node **keys = realloc(n->keys, cap * sizeof(*keys));
		if (!keys)
			return false;
		n->keys = keys;
	}
	f->cap = cap;
	return true;
}

/* Hang a new node under the current container (or make it the root); takes ownership. */
static bool attach(struct builder *b, struct ydoc_node *n, const yaml_mark_t *mark)
{
	if (b->depth == 0) {
		if (b->doc->root) { /* cannot happen: one node per document */
			node_free(n);
			error_at(b, mark, "unexpected second root node");
			return false;
		}
		b->doc->root = n;
		return true;
	}
	struct frame *f = &b->stack[b->depth - 1];
	if (f->node->kind == YDOC_MAP && !f->key) {
		if (n->kind != YDOC_SCALAR) {
			node_free(n);
			error_at(b, mark, "mapping keys must be plain scalars");
			return false;
		}
		f->key = n;
		return true;
	}
	if (!grow(f)) {
		node_free(n);
		b->nomem = b->failed = true;
		return false;
	}
	if (f->node->kind == YDOC_MAP) {
		f->node->keys[f->node->n] = f->key;
		f->key = NULL;
	}
	f->node->items[f->node->n++] = n;
	return true;
}

static bool refuse_decorations(struct builder *b, const yaml_event_t *ev, const yaml_char_t *anchor,
                               const yaml_char_t *tag)
{
	if (anchor) {
		error_at(b, &ev->start_mark, "anchors are not supported");
		return false;
	}
	if (tag) {
		error_at(b, &ev->start_mark, "tags are not supported");
		return false;
	}
	return true;
}

static void on_scalar(struct builder *b, const yaml_event_t *ev)
{
	const yaml_char_t *v = ev->data.scalar.value;
	size_t len = ev->data.scalar.length;
	/* libyaml reports a tag only when the file writes one. */
	if (!refuse_decorations(b, ev, ev->data.scalar.anchor, ev->data.scalar.tag))
		return;
	if (memchr(v, '\0', len)) {
		error_at(b, &ev->start_mark, "scalar contains a NUL character");
		return;
	}
	struct ydoc_node *n = node_new(YDOC_SCALAR, &ev->start_mark);
	char *s = malloc(len + 1);
	if (!n || !s) {
		free(n);
		free(s);
		b->nomem = b->failed = true;
		return;
	}
	memcpy(s, v, len);
	s[len] = '\0';
	n->scalar = s;
	n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
	            ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
	attach(b, n, &ev->start_mark);
}

static void on_start(struct builder *b, const yaml_event_t *ev, enum ydoc_kind kind)
{
	const yaml_char_t *anchor, *tag;
	if (kind == YDOC_MAP) {
		anchor = ev->data.mapping_start.anchor;
		tag = ev->data.mapping_start.tag;
	} else {
		anchor = ev->data.sequence_start.anchor;
		tag = ev->data.sequence_start.tag;
	}
	if (!refuse_decorations(b, ev, anchor, tag))
		return;
	if (b->depth == YDOC_MAX_DEPTH) {
		error_at(b, &ev->start_mark, "nesting deeper than 64 levels");
		return;
	}
	struct ydoc_node *n = node_new(kind, &ev->start_mark);
	if (!n) {
		b->nomem = b->failed = true;
		return;
	}
	if (!attach(b, n, &ev->start_mark))
		return;
	b->stack[b->depth++] = (struct frame){.node = n};
}

static void on_document_start(struct builder *b, const yaml_event_t *ev)
{
	if (++b->documents > 1) {
		error_at(b, &ev->start_mark, "multiple documents are not supported");
		return;
	}
	if (ev->data.document_start.tag_directives.start !=
	    ev->data.document_start.tag_directives.end)
		error_at(b, &ev->start_mark, "%TAG directives are not supported");
}

static void on_event(struct builder *b, const yaml_event_t *ev)
{
	switch (ev->type) {
	case YAML_DOCUMENT_START_EVENT:
		on_document_start(b, ev);
		break;
	case YAML_SCALAR_EVENT:
		on_scalar(b, ev);
		break;
	case YAML_SEQUENCE_START_EVENT:
		on_start(b, ev, YDOC_SEQ);
		break;
	case YAML_MAPPING_START_EVENT:
		on_start(b, ev, YDOC_MAP);
		break;
	case YAML_SEQUENCE_END_EVENT:
	case YAML_MAPPING_END_EVENT:
		if (b->depth > 0)
			b->depth--;
		break;
	case YAML_ALIAS_EVENT:
		error_at(b, &ev->start_mark, "aliases are not supported");
		break;
	default:
		break;
	}
}

/* libyaml's reader errors carry a byte offset only: turn it into line and column. */
static void offset_position(const struct builder *b, size_t offset, int *line, int *col)
{
	*line = 1;
	*col = 1;
	for (size_t i = 0; i < offset && i < b->len; i++) {
		if (b->buf[i] == '\n') {
			(*line)++;
			*col = 1;
		} else if (((unsigned char)b->buf[i] & 0xc0) != 0x80) {
			(*col)++;
		}
	}
}

/* Whether line `line` (0-based) of the buffer is indented with a tab. */
static bool tab_indented(const struct builder *b, size_t line)
{
	size_t i = 0;
	for (size_t n = 0; n < line && i < b->len; i++)
		n += b->buf[i] == '\n';
	for (; i < b->len && (b->buf[i] == ' ' || b->buf[i] == '\t'); i++)
		if (b->buf[i] == '\t')
			return true;
	return false;
}

/*
 * Whether line `line` (0-based) has a ':' followed by a blank before its
 * character `col` (0-based, counted in characters as libyaml counts them):
 * an unquoted value that holds ": ", as in "title: Falls: a review".
 */
static bool colon_before(const struct builder *b, size_t line, size_t col)
{
	size_t i = 0;
	for (size_t n = 0; n < line && i < b->len; i++)
		n += b->buf[i] == '\n';
	for (size_t c = 0; c < col && i + 1 < b->len && b->buf[i] != '\n'; i++) {
		if (b->buf[i] == ':' && (b->buf[i + 1] == ' ' || b->buf[i + 1] == '\t'))
			return true;
		c += ((unsigned char)b->buf[i + 1] & 0xc0) != 0x80;
	}
	return false;
}

/*
 * What usually causes libyaml's problem, where one cause is usual: a block
 * mapping or list that "did not find expected key" (or "-") is nearly always
 * a line indented more or less than its siblings; a character that "cannot
 * start any token" at the start of a line, a tab (YAML indents with spaces
 * only); a reader error, a file saved in another encoding. "mapping values
 * are not allowed" is a ": " after a value on the same line (a value that
 * holds ": " unquoted), or else a line indented deeper than its key, which
 * libyaml reads as the value above continued. "" otherwise.
 */
static const char *syntax_hint(const struct builder *b, const yaml_parser_t *p)
{
	if (p->error == YAML_READER_ERROR)
		return " (save the file as UTF-8)";
	if (p->error == YAML_SCANNER_ERROR && p->problem &&
	    (strstr(p->problem, "tab character") || (strstr(p->problem, "cannot start any token") &&
	                                             tab_indented(b, p->problem_mark.line))))
		return " (indent with spaces, not tabs)";
	if (p->error == YAML_SCANNER_ERROR && p->problem &&
	    strcmp(p->problem, "mapping values are not allowed in this context") == 0)
		return colon_before(b, p->problem_mark.line, p->problem_mark.column)
		           ? " (a value that contains ': ' must be quoted)"
		           : " (check this line's indentation against the lines above)";
	static const struct {
		const char *problem, *context;
	} indentation[] = {
	    {"did not find expected key", "while parsing a block mapping"},
	    {"did not find expected '-' indicator", "while parsing a block collection"},
	};
	if (p->error != YAML_PARSER_ERROR || !p->problem || !p->context)
		return "";
	for (size_t i = 0; i < ARRAY_LEN(indentation); i++)
		if (strcmp(p->problem, indentation[i].problem) == 0 &&
		    strcmp(p->context, indentation[i].context) == 0)
			return " (check this line's indentation against the lines above)";
	return "";
}

/* libyaml's own words, marked as YAML syntax so they are not read as ISG's rules. */
static void syntax_error(struct builder *b, const yaml_parser_t *p)
{
	struct ydoc_node at = {0};
	if (p->error == YAML_READER_ERROR) {
		size_t offset = p->problem_offset;
		/* At a bad continuation byte: the sequence it fails starts at its lead byte. */
		if (p->problem && strcmp(p->problem, "invalid trailing UTF-8 octet") == 0 &&
		    offset <= b->len) {
			while (offset > 0 && ((unsigned char)b->buf[offset - 1] & 0xc0) == 0x80)
				offset--;
			if (offset > 0)
				offset--;
		}
		offset_position(b, offset, &at.line, &at.col);
	} else {
		at.line = (int)p->problem_mark.line + 1;
		at.col = (int)p->problem_mark.column + 1;
	}
	const char *problem = p->problem ? p->problem : "syntax error";
	if (p->error == YAML_MEMORY_ERROR)
		b->nomem = true;
	if (p->error == YAML_MEMORY_ERROR)
		ydoc_error(b->d, b->name, &at, "%s", problem);
	else if (p->context)
		ydoc_error(b->d, b->name, &at, "YAML syntax error: %s %s%s", problem, p->context,
		           syntax_hint(b, p));
	else
		ydoc_error(b->d, b->name, &at, "YAML syntax error: %s%s", problem,
		           syntax_hint(b, p));
	b->failed = true;
}

/* Input length cap for libyaml's int-sized marks, far above any sane file. */
#define YDOC_MAX_BUFFER ((size_t)1 << 30)

int ydoc_load_buffer(const char *name, const char *buf, size_t len, struct ydoc **out,
                     struct ydoc_diags *d)
{
	*out = NULL;
	if (len > YDOC_MAX_BUFFER) {
		ydoc_error(d, name, NULL, "file is larger than %zu bytes", YDOC_MAX_BUFFER);
		return ISG_ERR_TOO_BIG;
	}
	/*
	 * A UTF-8 byte order mark (some editors write one) is no content.
	 * libyaml, told the encoding, would read it as a character of the
	 * first line: skipped here, so columns on line 1 count from after it.
	 */
	if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) {
		buf += 3;
		len -= 3;
	}
	struct builder b = {.name = name, .buf = buf, .len = len, .d = d};
	b.doc = calloc(1, sizeof(*b.doc));
	if (!b.doc || !(b.doc->file = strdup(name))) {
		free(b.doc);
		return ISG_ERR_NOMEM;
	}
	yaml_parser_t p;
	if (!yaml_parser_initialize(&p)) {
		ydoc_free(b.doc);
		return ISG_ERR_NOMEM;
	}
	yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
	yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
	for (bool done = false; !done && !b.failed;) {
		yaml_event_t ev;
		if (!yaml_parser_parse(&p, &ev)) {
			syntax_error(&b, &p);
			break;
		}
		on_event(&b, &ev);
		done = ev.type == YAML_STREAM_END_EVENT;
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&p);
	/* A key left waiting (after an abort) is not in the tree yet. */
	for (size_t i = 0; i < b.depth; i++)
		node_free(b.stack[i].key);
	if (b.failed) {
		ydoc_free(b.doc);
		if (b.nomem) {
			ydoc_error(d, name, NULL, "out of memory");
			return ISG_ERR_NOMEM;
		}
		return ISG_ERR_PARSE;
	}
	*out = b.doc;
	return 0;
}

/* Read a whole regular file of at most max bytes. */
static int read_file(const char *path, size_t max, char **buf, size_t *len, struct ydoc_diags *d)
{
	int err = 0;
	char *data = NULL;
	/* O_NONBLOCK: a FIFO must be refused below, not wait for a writer. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		ydoc_error(d, path, NULL, "cannot open: %s", strerror(errno));
		return ISG_ERR_IO;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		ydoc_error(d, path, NULL, "not a regular file");
		err = ISG_ERR_IO;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		ydoc_error(d, path, NULL, "file is larger than %zu bytes", max);
		err = ISG_ERR_TOO_BIG;
		goto out;
	}
	/* One byte more than allowed, to notice a file that grew since fstat. */
	size_t cap = (size_t)st.st_size + 1;
	data = malloc(cap);
	if (!data) {
		err = ISG_ERR_NOMEM;
		goto out;
	}
	ssize_t used = fd_read_up_to(fd, data, cap);
	if (used < 0) {
		ydoc_error(d, path, NULL, "cannot read: %s", strerror(errno));
		err = ISG_ERR_IO;
		goto out;
	}
	if ((size_t)used == cap) {
		ydoc_error(d, path, NULL, "file changed while being read");
		err = ISG_ERR_IO;
		goto out;
	}
	*buf = data;
	*len = (size_t)used;
	data = NULL;
out:
	free(data);
	close(fd);
	return err;
}

int ydoc_load_file(const char *path, size_t max_bytes, struct ydoc **out, struct ydoc_diags *d)
{
	*out = NULL;
	char *buf = NULL;
	size_t len = 0;
	int err = read_file(path, max_bytes, &buf, &len, d);
	if (err)
		return err;
	err = ydoc_load_buffer(path, buf, len, out, d);
	free(buf);
	return err;
}
