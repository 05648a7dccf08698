/*
 * Consistency proofs for a verifier that streams the log. audit.h builds a
 * proof from every leaf hash of the larger tree, which costs O(n2) per
 * proof; checking every pair of consecutive checkpoints that way costs
 * O(n^2) over a long log. Every hash in PROOF(n1, D[0:n2]) is a subtree of
 * either the first n1 leaves, and then one on the frontier of the compact
 * tree of size n1 (the proof's left siblings and its last, old-tree node
 * together partition [0, n1) into perfect subtrees of decreasing size,
 * which is exactly the frontier), or of the leaves n1 .. n2-1. So the
 * verifier keeps the compact tree at each checkpoint and the leaf hashes
 * since it, and nothing more.
 */
#include <string.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"

void audit_ctl_b64(char *out, size_t size, const uint8_t *in, size_t len)
{
	if (size < sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL)) {
		if (size)
			out[0] = '\0';
		return;
	}
	sodium_bin2base64(out, size, in, len, sodium_base64_VARIANT_ORIGINAL);
}

struct proof_source {
	const struct audit_tree *t1;
	const uint8_t (*later)[AUDIT_HASH_LEN];
};

/* MTH(D[a:b]) for a subtree the proof needs (see the comment at the top). */
static int subtree_hash(const struct proof_source *src, uint64_t a, uint64_t b,
                        uint8_t out[static AUDIT_HASH_LEN])
{
	uint64_t n1 = src->t1->size;
	if (a >= n1)
		return audit_root_from_leaves(src->later + (a - n1), b - a, out);
	uint64_t start = 0;
	size_t i = 0;
	for (int bit = 63; bit >= 0; bit--) {
		uint64_t w = UINT64_C(1) << bit;
		if (!(n1 & w))
			continue;
		if (start == a && start + w == b) {
			memcpy(out, src->t1->frontier[i], AUDIT_HASH_LEN);
			return 0;
		}
		start += w;
		i++;
	}
	return ISG_ERR_INVALID; /* not a frontier subtree: cannot happen for a real proof */
}

int audit_ctl_consistency_proof(const struct audit_tree *t1, const uint8_t (*later)[AUDIT_HASH_LEN],
                                uint64_t n2, uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN],
                                size_t *proof_len)
{
	uint64_t n1 = t1->size;
	*proof_len = 0;
	if (n1 == 0 || n1 > n2)
		return ISG_ERR_INVALID;
	const struct proof_source src = {.t1 = t1, .later = later};
	/* SUBPROOF of RFC 9162 2.1.4.1, unrolled: the hashes come out root first. */
	uint64_t lo = 0, hi = n2, m = n1;
	bool whole = true; /* the b flag: still on the path of the old tree's root */
	size_t n = 0;
	int rc = 0;
	while (rc == 0) {
		uint64_t size = hi - lo;
		if (m == size) {
			if (!whole)
				rc = n < AUDIT_PROOF_MAX ? subtree_hash(&src, lo, hi, proof[n++])
				                         : ISG_ERR_LIMIT;
			break;
		}
		uint64_t k = UINT64_C(1) << (63 - __builtin_clzll(size - 1));
		if (n == AUDIT_PROOF_MAX)
			return ISG_ERR_LIMIT;
		if (m <= k) {
			rc = subtree_hash(&src, lo + k, hi, proof[n++]);
			hi = lo + k;
		} else {
			rc = subtree_hash(&src, lo, lo + k, proof[n++]);
			lo += k;
			m -= k;
			whole = false;
		}
	}
	if (rc)
		return rc;
	for (size_t i = 0; i < n / 2; i++) { /* lowest level first */
		uint8_t tmp[AUDIT_HASH_LEN];
		memcpy(tmp, proof[i], AUDIT_HASH_LEN);
		memcpy(proof[i], proof[n - 1 - i], AUDIT_HASH_LEN);
		memcpy(proof[n - 1 - i], tmp, AUDIT_HASH_LEN);
	}
	*proof_len = n;
	return 0;
}
