/*
 * libFuzzer harness for isgd's reader of the key process's description of
 * a generation of domain keys (keyring_from_description, the LOAD answer):
 * bytes from the other side of the privilege boundary, checked as hostile
 * input. Oracles: a refusal is ISG_ERR_PARSE (or out of memory) with no
 * keyring; an accepted description is canonical, so keyring_describe gives
 * back the very bytes read; and the keyring holds no key (its service
 * refuses, keyring_pseudonymise_all answers nothing).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "keys/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_keyless(const struct keyring *ring)
{
	size_t n = keyring_domain_count(ring);
	for (size_t i = 0; i < n; i++) {
		size_t versions = 0;
		const char *name = keyring_domain_name(ring, i, &versions);
		CHECK(name && keys_domain_name_valid(name) && versions > 0);
		CHECK(keyring_has(ring, name));
		for (size_t j = 0; j < versions; j++) {
			struct keys_version_info v;
			CHECK(keyring_version_info(ring, i, j, 20000, &v) == 0);
		}
		char out[2][PSEUDO_TEXT_MAX];
		CHECK(keyring_pseudonymise_all(ring, name, PSEUDO_NHS_NUMBER, "x", 1, out, 2) == 0);
		struct pseudo_request r = {
		    .domain = name, .type = PSEUDO_NHS_NUMBER, .norm = "x", .len = 1};
		struct pseudo_service svc = keyring_service(ring);
		CHECK(svc.pseudonymise(svc.ctx, &r, 1, 20000) == ISG_ERR_CRYPTO);
	}
	CHECK(keyring_domain_name(ring, n, NULL) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct keyring *ring = (struct keyring *)1;
	int rc = keyring_from_description(data, size, &ring);
	if (rc != 0) {
		CHECK(rc == ISG_ERR_PARSE || rc == ISG_ERR_NOMEM);
		CHECK(ring == NULL);
		return 0;
	}
	CHECK(ring != NULL);
	check_keyless(ring);
	uint8_t *again = NULL;
	size_t len = 0;
	CHECK(keyring_describe(ring, &again, &len) == 0);
	CHECK(len == size && memcmp(again, data, size) == 0);
	free(again);
	keyring_free(ring);
	return 0;
}
