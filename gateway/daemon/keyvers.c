/*
 * The current key version of each linkage domain, as a keys.loaded audit
 * entry lists them under "domains", taken from a keyring.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"

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
