/*
 * libFuzzer harness for isgctl's reader of audit entries (cmd_audit_json.c):
 * the JSON parser that verify, list, subject and report run over every
 * leaf of a store that may have been tampered with. Oracles: every string
 * it hands back is as long as it says and holds no NUL, every node is
 * reachable once, and a leaf it accepts has the shape it promises.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/cmd_audit_json.c"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Visits n and everything below it; returns how many nodes that is. */
static size_t walk(const struct aj_doc *d, const struct aj_node *n, int depth)
{
	CHECK(depth <= AJ_DEPTH_MAX + 1);
	if (n->type == AJ_STRING) /* decoded: NUL-terminated, no NUL inside */
		CHECK(n->str && strlen(n->str) == n->len);
	if (n->type == AJ_NUMBER) { /* its literal, within the input, not terminated */
		CHECK(n->str && n->len > 0);
		for (size_t i = 0; i < n->len; i++)
			CHECK(strchr("-+.eE0123456789", n->str[i]) && n->str[i] != '\0');
	}
	if (n->key)
		(void)strlen(n->key);
	uint64_t u;
	if (aj_uint(n, &u))
		CHECK(n->type == AJ_NUMBER);
	size_t seen = 1;
	for (const struct aj_node *c = aj_first(d, n); c; c = aj_next(d, c)) {
		CHECK(n->type == AJ_ARRAY || n->type == AJ_OBJECT);
		if (n->type == AJ_OBJECT)
			CHECK(c->key && aj_member(d, n, c->key));
		seen += walk(d, c, depth + 1);
	}
	return seen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct aj_doc d;
	aj_doc_init(&d);
	const char *reason = NULL;
	if (aj_parse(&d, (const char *)data, size, &reason) == 0)
		CHECK(walk(&d, aj_root(&d), 0) == d.n);
	else
		CHECK(reason);
	struct audit_leaf leaf;
	reason = NULL;
	if (audit_leaf_parse(&d, (const char *)data, size, &leaf, &reason) == 0) {
		CHECK(leaf.at && strlen(leaf.at) == 24);
		CHECK(leaf.body && leaf.body->type == AJ_OBJECT);
		CHECK(leaf.event && aj_string(&d, leaf.body, "event") == leaf.event);
	}
	aj_doc_release(&d);
	return 0;
}
