/*
 * ydoc: a YAML file loaded (with libyaml) into a small tree whose every node
 * knows its line and column, plus a list of diagnostics that config and
 * policy loading fill with file:line:column messages. Anchors, aliases, tags
 * and multi-document streams are refused: admins' files stay plain.
 */
#ifndef ISG_YDOC_H
#define ISG_YDOC_H

#include <stdbool.h>
#include <stddef.h>

enum ydoc_kind { YDOC_SCALAR, YDOC_SEQ, YDOC_MAP };

struct ydoc_node {
	enum ydoc_kind kind;
	int line, col; /* 1-based position of the node's start */
	char *scalar;  /* YDOC_SCALAR: NUL-terminated value */
	bool quoted;   /* scalar was quoted ('x' or "x") */
	size_t n;      /* YDOC_SEQ: items; YDOC_MAP: key/value pairs */
	struct ydoc_node **items;
	struct ydoc_node **keys; /* YDOC_MAP only: keys[i] (scalars) map to items[i] */
};

struct ydoc {
	char *file;             /* path as given, used in diagnostics */
	struct ydoc_node *root; /* NULL for an empty file */
};

struct ydoc_diag {
	char *file;
	int line, col; /* 0 when not about a position */
	bool warning;
	char *message;
};

struct ydoc_diags {
	size_t n, cap;
	struct ydoc_diag *items;
	size_t errors, warnings;
};

void ydoc_diags_init(struct ydoc_diags *d);
void ydoc_diags_release(struct ydoc_diags *d);
/* Record an error at the node's position (node may be NULL: position 0:0). */
void ydoc_error(struct ydoc_diags *d, const char *file, const struct ydoc_node *at, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));
void ydoc_warning(struct ydoc_diags *d, const char *file, const struct ydoc_node *at,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Print every diagnostic as "file:line:column: error: message" lines. */
void ydoc_diags_print(const struct ydoc_diags *d, void *stdio_file);
/* Print one diagnostic as ydoc_diags_print does. */
void ydoc_diag_print(const struct ydoc_diag *g, void *stdio_file);

/*
 * Parse a file (or a buffer named `name`). Files longer than max_bytes are
 * refused. Syntax errors go to diags with their position. Returns 0 (free
 * *out with ydoc_free), ISG_ERR_PARSE (see diags), ISG_ERR_IO,
 * ISG_ERR_TOO_BIG or ISG_ERR_NOMEM.
 */
int ydoc_load_file(const char *path, size_t max_bytes, struct ydoc **out, struct ydoc_diags *d);
int ydoc_load_buffer(const char *name, const char *buf, size_t len, struct ydoc **out,
                     struct ydoc_diags *d);
void ydoc_free(struct ydoc *doc);

/* Lookup in a map node; NULL when absent or when map is not a map. */
const struct ydoc_node *ydoc_get(const struct ydoc_node *map, const char *key);

/*
 * Report every key of `map` that is not in the NULL-terminated `allowed` list
 * ("unknown key 'x' in <where>"), and duplicate keys. Returns the number of
 * problems found.
 */
size_t ydoc_check_keys(struct ydoc_diags *d, const char *file, const struct ydoc_node *map,
                       const char *where, const char *const *allowed);

/*
 * How near a miss `word` is of `name`: their Levenshtein distance when it
 * is 1 or 2, close enough for a "did you mean" hint, as unknown keys get;
 * 0 otherwise (equal, or too far apart).
 */
size_t ydoc_near_miss(const char *word, const char *name);

#endif
