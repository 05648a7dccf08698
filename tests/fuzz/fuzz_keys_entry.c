/*
 * libFuzzer harness for isgd's reader of the keys.loaded entry a start
 * compares with (daemon/keyvers.c, key_versions_parse): its body comes from
 * the store, which anyone with the file could have edited. Oracles: a
 * refusal gives a reason and nothing else; what it accepts is sorted, each
 * name valid and once; and entry_keys writes it back in a form that parses
 * to the same list.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const struct key_versions *a, const struct key_versions *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->items[i].name, b->items[i].name) != 0 ||
		    a->items[i].version != b->items[i].version)
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct key_versions kv, again;
	const char *reason = NULL;
	int rc = key_versions_parse((const char *)data, size, &kv, &reason);
	if (rc != 0) {
		CHECK(rc == ISG_ERR_PARSE || rc == ISG_ERR_NOMEM);
		CHECK(reason && !kv.items && kv.n == 0);
		return 0;
	}
	for (size_t i = 0; i < kv.n; i++) {
		CHECK(keys_domain_name_valid(kv.items[i].name));
		CHECK(i == 0 || strcmp(kv.items[i - 1].name, kv.items[i].name) < 0);
	}
	char *changes = (char *)"unset";
	size_t len = 0;
	char *entry = entry_keys(&kv, &kv, &changes, &len);
	CHECK(entry && !changes);
	CHECK(key_versions_parse(entry, len, &again, NULL) == 0 && same(&kv, &again));
	key_versions_release(&again);
	free(entry);
	key_versions_release(&kv);
	return 0;
}
