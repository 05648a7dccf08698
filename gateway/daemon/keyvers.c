/*
 * The current key version of each linkage domain, as a keys.loaded audit
 * entry lists them under "domains": taken from a keyring, or read back from
 * the entry a start compares with. That entry comes from the store, which
 * anyone with the file could have edited, so it is read as hostile: only
 * the exact form entry_keys writes is taken, and every loop is bounded by
 * its length.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"

#define KEYS_ENTRY_HEAD "{\"event\":\"keys.loaded\",\"domains\":{"

void key_versions_release(struct key_versions *kv)
{
	if (!kv)
		return;
	free(kv->items);
	kv->items = NULL;
	kv->n = kv->cap = 0;
}

static struct key_version *add(struct key_versions *kv)
{
	if (kv->n == kv->cap) {
		size_t cap = kv->cap ? kv->cap * 2 : 16;
		struct key_version *items = realloc(kv->items, cap * sizeof(*items));
		if (!items)
			return NULL;
		kv->items = items;
		kv->cap = cap;
	}
	memset(&kv->items[kv->n], 0, sizeof(kv->items[0]));
	return &kv->items[kv->n++];
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct key_version *)a)->name, ((const struct key_version *)b)->name);
}

/* Sort by name; false when a name comes twice. */
static bool sort_unique(struct key_versions *kv)
{
	if (kv->n > 1)
		qsort(kv->items, kv->n, sizeof(kv->items[0]), by_name);
	for (size_t i = 1; i < kv->n; i++)
		if (strcmp(kv->items[i - 1].name, kv->items[i].name) == 0)
			return false;
	return true;
}

/* Domain i's current version on day today; 0 when it has none. */
static uint32_t current_version(const struct keyring *ring, size_t i, int64_t today)
{
	size_t nv = 0;
	if (!keyring_domain_name(ring, i, &nv))
		return 0;
	for (size_t j = nv; j-- > 0;) {
		struct keys_version_info v;
		if (keyring_version_info(ring, i, j, today, &v) == 0 &&
		    v.state == KEYS_VERSION_CURRENT)
			return v.version;
	}
	return 0;
}

int key_versions_of_ring(const struct keyring *ring, int64_t today_days, struct key_versions *out)
{
	*out = (struct key_versions){0};
	for (size_t i = 0; ring && i < keyring_domain_count(ring); i++) {
		struct key_version *v = add(out);
		if (!v) {
			key_versions_release(out);
			return ISG_ERR_NOMEM;
		}
		str_copy(v->name, keyring_domain_name(ring, i, NULL), sizeof(v->name));
		v->version = current_version(ring, i, today_days);
	}
	sort_unique(out); /* a keyring names each domain once */
	return 0;
}

/* --- reading "domains" back ----------------------------------------------------------- */

struct cursor {
	const char *p;
	size_t len, pos;
};

static bool take(struct cursor *c, char ch)
{
	if (c->pos >= c->len || c->p[c->pos] != ch)
		return false;
	c->pos++;
	return true;
}

/* "NAME": a valid domain name, which needs no escapes. */
static bool read_name(struct cursor *c, char name[static KEYS_DOMAIN_NAME_MAX + 1])
{
	size_t n = 0;
	if (!take(c, '"'))
		return false;
	while (c->pos < c->len && c->p[c->pos] != '"' && n < KEYS_DOMAIN_NAME_MAX)
		name[n++] = c->p[c->pos++];
	name[n] = '\0';
	return take(c, '"') && keys_domain_name_valid(name);
}

/* A version as entry_keys writes it: decimal, no sign or leading zero, at most 2^32 - 1. */
static bool read_version(struct cursor *c, uint32_t *out)
{
	size_t start = c->pos;
	uint64_t v = 0;
	while (c->pos < c->len && c->pos - start < 11 && c->p[c->pos] >= '0' && c->p[c->pos] <= '9')
		v = v * 10 + (uint64_t)(c->p[c->pos++] - '0');
	size_t n = c->pos - start;
	if (n == 0 || (n > 1 && c->p[start] == '0') || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* "NAME":VERSION members, up to the '}' of "domains", and the ',' or '}' after it. */
static int read_domains(struct cursor *c, struct key_versions *kv, const char **reason)
{
	if (!take(c, '}')) {
		do {
			struct key_version *v = add(kv);
			if (!v)
				return ISG_ERR_NOMEM;
			if (!read_name(c, v->name)) {
				*reason = "a domain name that is not valid";
				return ISG_ERR_PARSE;
			}
			if (!take(c, ':') || !read_version(c, &v->version)) {
				*reason = "a key version that is not a number from 0 to 4294967295";
				return ISG_ERR_PARSE;
			}
		} while (take(c, ','));
		if (!take(c, '}')) {
			*reason = "a domains object that does not end where it should";
			return ISG_ERR_PARSE;
		}
	}
	if (!take(c, ',') && !take(c, '}')) {
		*reason = "a domains object that does not end where it should";
		return ISG_ERR_PARSE;
	}
	return 0;
}

int key_versions_parse(const char *body, size_t len, struct key_versions *out, const char **reason)
{
	static const char head[] = KEYS_ENTRY_HEAD;
	struct cursor c = {.p = body, .len = body ? len : 0};
	const char *why = NULL;
	int rc = ISG_ERR_PARSE;
	*out = (struct key_versions){0};
	if (c.len < sizeof(head) - 1 || memcmp(body, head, sizeof(head) - 1) != 0) {
		why = "not a keys.loaded entry whose first member after the event is domains";
		goto out;
	}
	c.pos = sizeof(head) - 1;
	rc = read_domains(&c, out, &why);
	if (rc == 0 && !sort_unique(out)) {
		why = "a domain listed twice";
		rc = ISG_ERR_PARSE;
	}
out:
	if (rc) {
		key_versions_release(out);
		if (reason)
			*reason = rc == ISG_ERR_NOMEM ? "out of memory" : why;
	}
	return rc;
}
