/*
 * Diagnostics: file:line:column messages collected while loading YAML files,
 * printed together once loading is over, and the key checks every map of a
 * config or policy file goes through.
 */
#include "ydoc/ydoc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* A hostile file cannot make us hold more than this many messages. */
#define DIAG_MAX_STORED 1000
/* Longer messages are cut (they quote values from the file). */
#define DIAG_MAX_MESSAGE 400

void ydoc_diags_init(struct ydoc_diags *d)
{
	memset(d, 0, sizeof(*d));
}

void ydoc_diags_release(struct ydoc_diags *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++) {
		free(d->items[i].file);
		free(d->items[i].message);
	}
	free(d->items);
	memset(d, 0, sizeof(*d));
}

/* Length of the longest prefix of s (at most max bytes) that ends on a UTF-8 boundary. */
static size_t utf8_prefix(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	size_t n = max;
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	return n;
}

/*
 * Copy src to dst with C0 controls, DEL, C1 controls (U+0080-U+009F: U+009B
 * is CSI, an escape introducer for terminals) and invalid UTF-8 as '?'.
 * Returns the bytes written, at most len.
 */
static size_t clean_controls(char *dst, const char *src, size_t len)
{
	size_t out = 0;
	for (size_t i = 0; i < len;) {
		const char *u = src + i;
		size_t n = str_utf8_char(u, len - i);
		if (n == 0 || str_utf8_control(u, n)) {
			dst[out++] = '?';
		} else {
			memcpy(dst + out, u, n);
			out += n;
		}
		i += n ? n : 1;
	}
	return out;
}

/* Format, cut to DIAG_MAX_MESSAGE and replace control characters so one diagnostic is one line. */
static __attribute__((format(printf, 1, 0))) char *format_message(const char *fmt, va_list ap)
{
	char buf[DIAG_MAX_MESSAGE + 1];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	if (n < 0)
		return NULL;
	size_t len = strlen(buf);
	bool cut = (size_t)n > len;
	len = utf8_prefix(buf, len, cut ? DIAG_MAX_MESSAGE - 3 : len);
	char *msg = malloc(len + 4);
	if (!msg)
		return NULL;
	len = clean_controls(msg, buf, len);
	if (cut) {
		memcpy(msg + len, "...", 3);
		len += 3;
	}
	msg[len] = '\0';
	return msg;
}

/*
 * A file name cleaned as a message is: a policy file named with ESC or a
 * newline must not forge lines or terminal sequences where it is printed.
 */
static char *clean_name(const char *file)
{
	size_t len = strlen(file);
	char *name = malloc(len + 1);
	if (name)
		name[clean_controls(name, file, len)] = '\0';
	return name;
}

static __attribute__((format(printf, 5, 0))) void diag_add(struct ydoc_diags *d, const char *file,
                                                           const struct ydoc_node *at, bool warning,
                                                           const char *fmt, va_list ap)
{
	if (warning)
		d->warnings++;
	else
		d->errors++;
	if (d->n >= DIAG_MAX_STORED)
		return;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		struct ydoc_diag *items = realloc(d->items, cap * sizeof(*items));
		if (!items)
			return;
		d->items = items;
		d->cap = cap;
	}
	struct ydoc_diag *g = &d->items[d->n];
	g->file = clean_name(file ? file : "");
	g->message = format_message(fmt, ap);
	if (!g->file || !g->message) {
		free(g->file);
		free(g->message);
		return;
	}
	g->line = at ? at->line : 0;
	g->col = at ? at->col : 0;
	g->warning = warning;
	d->n++;
}

void ydoc_error(struct ydoc_diags *d, const char *file, const struct ydoc_node *at, const char *fmt,
                ...)
{
	va_list ap;
	va_start(ap, fmt);
	diag_add(d, file, at, false, fmt, ap);
	va_end(ap);
}

void ydoc_warning(struct ydoc_diags *d, const char *file, const struct ydoc_node *at,
                  const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	diag_add(d, file, at, true, fmt, ap);
	va_end(ap);
}

void ydoc_diag_print(const struct ydoc_diag *g, void *stdio_file)
{
	FILE *f = stdio_file;
	const char *sev = g->warning ? "warning" : "error";
	if (g->line > 0)
		fprintf(f, "%s:%d:%d: %s: %s\n", g->file, g->line, g->col, sev, g->message);
	else
		fprintf(f, "%s: %s: %s\n", g->file, sev, g->message);
}

void ydoc_diags_print(const struct ydoc_diags *d, void *stdio_file)
{
	FILE *f = stdio_file;
	for (size_t i = 0; i < d->n; i++)
		ydoc_diag_print(&d->items[i], f);
	size_t total = d->errors + d->warnings;
	if (total > d->n)
		fprintf(f, "(%zu more diagnostics not shown)\n", total - d->n);
}

const struct ydoc_node *ydoc_get(const struct ydoc_node *map, const char *key)
{
	if (!map || map->kind != YDOC_MAP)
		return NULL;
	for (size_t i = 0; i < map->n; i++)
		if (strcmp(map->keys[i]->scalar, key) == 0)
			return map->items[i];
	return NULL;
}

/* Levenshtein distance, for "did you mean"; large when either string is long. */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 64 || lb > 64)
		return SIZE_MAX;
	size_t row[65];
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* Suggest only close misspellings. */
#define NEAR_MISS_MAX 2

size_t ydoc_near_miss(const char *word, const char *name)
{
	size_t dist = edit_distance(word, name);
	return dist <= NEAR_MISS_MAX ? dist : 0;
}

static const char *closest_key(const char *key, const char *const *allowed)
{
	const char *best = NULL;
	size_t best_d = NEAR_MISS_MAX + 1;
	for (size_t i = 0; allowed[i]; i++) {
		size_t dist = edit_distance(key, allowed[i]);
		if (dist < best_d) {
			best_d = dist;
			best = allowed[i];
		}
	}
	return best;
}

static int key_order(const void *pa, const void *pb)
{
	const struct ydoc_node *a = *(const struct ydoc_node *const *)pa;
	const struct ydoc_node *b = *(const struct ydoc_node *const *)pb;
	int c = strcmp(a->scalar, b->scalar);
	if (c)
		return c;
	if (a->line != b->line)
		return a->line < b->line ? -1 : 1;
	return a->col < b->col ? -1 : a->col > b->col;
}

/* Sort a copy of the keys so finding duplicates costs n log n, not n squared. */
static size_t check_duplicates(struct ydoc_diags *d, const char *file, const struct ydoc_node *map,
                               const char *where)
{
	if (map->n < 2)
		return 0;
	const struct ydoc_node **sorted = malloc(map->n * sizeof(*sorted));
	if (!sorted) {
		ydoc_error(d, file, map, "out of memory checking keys of %s", where);
		return 1;
	}
	memcpy(sorted, map->keys, map->n * sizeof(*sorted));
	qsort(sorted, map->n, sizeof(*sorted), key_order);
	size_t problems = 0;
	for (size_t i = 1; i < map->n; i++) {
		if (strcmp(sorted[i]->scalar, sorted[i - 1]->scalar) == 0) {
			ydoc_error(d, file, sorted[i], "duplicate key '%s' in %s",
			           sorted[i]->scalar, where);
			problems++;
		}
	}
	free(sorted);
	return problems;
}

size_t ydoc_check_keys(struct ydoc_diags *d, const char *file, const struct ydoc_node *map,
                       const char *where, const char *const *allowed)
{
	if (!map || map->kind != YDOC_MAP)
		return 0;
	size_t problems = 0;
	for (size_t i = 0; i < map->n; i++) {
		const char *key = map->keys[i]->scalar;
		size_t k = 0;
		while (allowed[k] && strcmp(allowed[k], key) != 0)
			k++;
		if (allowed[k])
			continue;
		const char *hint = closest_key(key, allowed);
		if (hint)
			ydoc_error(d, file, map->keys[i],
			           "unknown key '%s' in %s (did you mean '%s'?)", key, where, hint);
		else
			ydoc_error(d, file, map->keys[i], "unknown key '%s' in %s", key, where);
		problems++;
	}
	return problems + check_duplicates(d, file, map, where);
}
