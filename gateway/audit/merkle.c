/*
 * audit: the RFC 6962 / RFC 9162 Merkle tree over audit entries. Proof
 * generation follows the recursive definitions of RFC 9162 sections 2.1.3.1
 * and 2.1.4.1, unrolled into loops; verification follows the algorithms of
 * sections 2.1.3.2 and 2.1.4.2, after checking the proof length exactly.
 */
#include <string.h>

#include <sodium.h>

#include "audit/audit.h"
#include "util/util.h"

void audit_leaf_hash(const uint8_t *entry, size_t len, uint8_t out[static AUDIT_HASH_LEN])
{
	static const uint8_t prefix = 0x00;
	struct sha256_state st;
	sha256_init(&st);
	sha256_update(&st, &prefix, 1);
	sha256_update(&st, entry, len);
	sha256_final(&st, out);
}

void audit_node_hash(const uint8_t left[static AUDIT_HASH_LEN],
                     const uint8_t right[static AUDIT_HASH_LEN], uint8_t out[static AUDIT_HASH_LEN])
{
	uint8_t buf[1 + 2 * AUDIT_HASH_LEN];
	buf[0] = 0x01;
	memcpy(buf + 1, left, AUDIT_HASH_LEN);
	memcpy(buf + 1 + AUDIT_HASH_LEN, right, AUDIT_HASH_LEN);
	sha256_digest(buf, sizeof(buf), out);
}

void audit_empty_root(uint8_t out[static AUDIT_HASH_LEN])
{
	sha256_digest(NULL, 0, out);
}

/* Bits needed to write x: 0 for 0. */
static unsigned bit_len(uint64_t x)
{
	return x ? 64u - (unsigned)__builtin_clzll(x) : 0u;
}

static unsigned popcount(uint64_t x)
{
	return (unsigned)__builtin_popcountll(x);
}

/* x >> n without the undefined behaviour of shifting by 64. */
static uint64_t shift_right(uint64_t x, unsigned n)
{
	return n >= 64 ? 0 : x >> n;
}

/* The largest power of two smaller than n, for n >= 2 (RFC 9162's k). */
static uint64_t split_point(uint64_t n)
{
	return UINT64_C(1) << (bit_len(n - 1) - 1);
}

/* --- compact tree -------------------------------------------------------- */

void audit_tree_init(struct audit_tree *t)
{
	memset(t, 0, sizeof(*t));
}

int audit_tree_append(struct audit_tree *t, const uint8_t leaf_hash[static AUDIT_HASH_LEN])
{
	if (t->size == UINT64_MAX)
		return ISG_ERR_LIMIT;
	/* Each trailing one bit of size is a perfect subtree the new leaf completes. */
	uint8_t h[AUDIT_HASH_LEN];
	memcpy(h, leaf_hash, AUDIT_HASH_LEN);
	unsigned count = popcount(t->size);
	for (uint64_t n = t->size; n & 1; n >>= 1) {
		count--;
		audit_node_hash(t->frontier[count], h, h);
	}
	memcpy(t->frontier[count], h, AUDIT_HASH_LEN);
	t->size++;
	return 0;
}

void audit_tree_root(const struct audit_tree *t, uint8_t out[static AUDIT_HASH_LEN])
{
	unsigned count = popcount(t->size);
	if (count == 0) {
		audit_empty_root(out);
		return;
	}
	uint8_t r[AUDIT_HASH_LEN];
	memcpy(r, t->frontier[count - 1], AUDIT_HASH_LEN);
	for (unsigned i = count - 1; i > 0; i--)
		audit_node_hash(t->frontier[i - 1], r, r);
	memcpy(out, r, AUDIT_HASH_LEN);
}

uint64_t audit_tree_size(const struct audit_tree *t)
{
	return t->size;
}

size_t audit_tree_encode(const struct audit_tree *t, uint8_t out[static AUDIT_TREE_ENCODED_MAX])
{
	for (unsigned i = 0; i < 8; i++)
		out[i] = (uint8_t)(t->size >> (56 - 8 * i));
	unsigned count = popcount(t->size);
	memcpy(out + 8, t->frontier, (size_t)count * AUDIT_HASH_LEN);
	return 8 + (size_t)count * AUDIT_HASH_LEN;
}

int audit_tree_decode(struct audit_tree *t, const uint8_t *in, size_t len)
{
	if (!in || len < 8)
		return ISG_ERR_PARSE;
	uint64_t size = 0;
	for (unsigned i = 0; i < 8; i++)
		size = size << 8 | in[i];
	size_t count = popcount(size);
	if (len != 8 + count * AUDIT_HASH_LEN)
		return ISG_ERR_PARSE;
	audit_tree_init(t);
	t->size = size;
	memcpy(t->frontier, in + 8, count * AUDIT_HASH_LEN);
	return 0;
}

/* MTH(D[lo:hi]) for lo < hi. */
static void range_root(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t lo, uint64_t hi,
                       uint8_t out[static AUDIT_HASH_LEN])
{
	struct audit_tree t;
	audit_tree_init(&t);
	for (uint64_t i = lo; i < hi; i++)
		if (audit_tree_append(&t, leaves[i]) != 0)
			fatal("audit: compact tree overflow");
	audit_tree_root(&t, out);
}

int audit_root_from_leaves(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n,
                           uint8_t out[static AUDIT_HASH_LEN])
{
	if (n == 0) {
		audit_empty_root(out);
		return 0;
	}
	if (!leaves)
		return ISG_ERR_INVALID;
	range_root(leaves, 0, n, out);
	return 0;
}

/* --- proof generation ---------------------------------------------------- */

/* The loops below collect the top level first; proofs list the bottom first. */
static void reverse_proof(uint8_t (*proof)[AUDIT_HASH_LEN], size_t len)
{
	uint8_t tmp[AUDIT_HASH_LEN];
	for (size_t i = 0, j = len; i + 1 < j; i++, j--) {
		memcpy(tmp, proof[i], AUDIT_HASH_LEN);
		memcpy(proof[i], proof[j - 1], AUDIT_HASH_LEN);
		memcpy(proof[j - 1], tmp, AUDIT_HASH_LEN);
	}
}

int audit_inclusion_proof(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n, uint64_t index,
                          uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN], size_t *proof_len)
{
	if (!leaves || !proof_len || index >= n)
		return ISG_ERR_INVALID;
	size_t len = 0;
	uint64_t lo = 0, hi = n;
	/* PATH(m, D[n]): descend towards leaf index, keeping the sibling subtree. */
	while (hi - lo > 1) {
		if (len == AUDIT_PROOF_MAX)
			return ISG_ERR_LIMIT;
		uint64_t k = split_point(hi - lo);
		if (index - lo < k) {
			range_root(leaves, lo + k, hi, proof[len++]);
			hi = lo + k;
		} else {
			range_root(leaves, lo, lo + k, proof[len++]);
			lo += k;
		}
	}
	reverse_proof(proof, len);
	*proof_len = len;
	return 0;
}

int audit_consistency_proof(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n2, uint64_t n1,
                            uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN],
                            size_t *proof_len)
{
	if (!leaves || !proof_len || n1 == 0 || n1 > n2)
		return ISG_ERR_INVALID;
	size_t len = 0;
	uint64_t lo = 0, hi = n2, m = n1;
	bool whole = true; /* SUBPROOF's b: is D[lo:lo+m] the old tree itself? */
	while (m != hi - lo) {
		if (len == AUDIT_PROOF_MAX)
			return ISG_ERR_LIMIT;
		uint64_t k = split_point(hi - lo);
		if (m <= k) {
			range_root(leaves, lo + k, hi, proof[len++]);
			hi = lo + k;
		} else {
			range_root(leaves, lo, lo + k, proof[len++]);
			m -= k;
			lo += k;
			whole = false;
		}
	}
	if (!whole) {
		if (len == AUDIT_PROOF_MAX)
			return ISG_ERR_LIMIT;
		range_root(leaves, lo, hi, proof[len++]);
	}
	reverse_proof(proof, len);
	*proof_len = len;
	return 0;
}

/* --- streaming inclusion proof ------------------------------------------ */

/*
 * The descent of audit_inclusion_proof, keeping each sibling's range
 * instead of its hash. The left siblings lie before index, the first found
 * first; the right siblings after it, the first found last. So the leaves
 * meet the ranges in the order: left ones as found, then right ones
 * reversed, one range at a time.
 */
int audit_prover_init(struct audit_prover *p, uint64_t size, uint64_t index)
{
	if (!p || index >= size)
		return ISG_ERR_INVALID;
	memset(p, 0, sizeof(*p));
	p->index = index;
	p->size = size;
	uint64_t right_end[AUDIT_PROOF_MAX];
	size_t right_step[AUDIT_PROOF_MAX], n_right = 0, steps = 0;
	uint64_t lo = 0, hi = size;
	while (hi - lo > 1) {
		if (steps == AUDIT_PROOF_MAX)
			return ISG_ERR_LIMIT;
		uint64_t k = split_point(hi - lo);
		if (index - lo < k) {
			right_end[n_right] = hi;
			right_step[n_right++] = steps;
			hi = lo + k;
		} else {
			p->end[p->len] = lo + k;
			p->slot[p->len++] = (uint8_t)steps;
			lo += k;
		}
		steps++;
	}
	while (n_right > 0) {
		n_right--;
		p->end[p->len] = right_end[n_right];
		p->slot[p->len++] = (uint8_t)right_step[n_right];
	}
	/* Steps count from the top; the proof lists the lowest level first. */
	for (size_t i = 0; i < p->len; i++)
		p->slot[i] = (uint8_t)(steps - 1 - p->slot[i]);
	return 0;
}

int audit_prover_append(struct audit_prover *p, const uint8_t leaf_hash[static AUDIT_HASH_LEN])
{
	if (p->tree.size == p->size)
		return ISG_ERR_LIMIT;
	uint64_t pos = p->tree.size;
	int rc = audit_tree_append(&p->tree, leaf_hash);
	if (rc != 0)
		return rc;
	if (pos == p->index) {
		memcpy(p->leaf, leaf_hash, AUDIT_HASH_LEN);
		return 0;
	}
	rc = audit_tree_append(&p->range, leaf_hash);
	if (rc != 0)
		return rc;
	if (p->next < p->len && pos + 1 == p->end[p->next]) {
		audit_tree_root(&p->range, p->proof[p->slot[p->next]]);
		audit_tree_init(&p->range);
		p->next++;
	}
	return 0;
}

int audit_prover_finish(const struct audit_prover *p, uint8_t root[static AUDIT_HASH_LEN],
                        uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN], size_t *proof_len,
                        uint8_t leaf_hash[static AUDIT_HASH_LEN])
{
	if (!proof_len || p->tree.size != p->size || p->next != p->len)
		return ISG_ERR_INVALID;
	audit_tree_root(&p->tree, root);
	memcpy(proof, p->proof, p->len * AUDIT_HASH_LEN);
	*proof_len = p->len;
	memcpy(leaf_hash, p->leaf, AUDIT_HASH_LEN);
	return 0;
}

/* --- proof verification -------------------------------------------------- */

/*
 * Length of the inclusion proof for (index, size), index < size: the
 * levels below the point where the paths to index and to size - 1 part,
 * plus one hash per left subtree above it (transparency-dev's
 * decompInclProof).
 */
static uint64_t inclusion_len(uint64_t index, uint64_t size)
{
	unsigned inner = bit_len(index ^ (size - 1));
	return inner + popcount(shift_right(index, inner));
}

static bool hash_equal(const uint8_t a[static AUDIT_HASH_LEN],
                       const uint8_t b[static AUDIT_HASH_LEN])
{
	return sodium_memcmp(a, b, AUDIT_HASH_LEN) == 0;
}

int audit_verify_inclusion(uint64_t index, uint64_t size,
                           const uint8_t leaf_hash[static AUDIT_HASH_LEN],
                           const uint8_t (*proof)[AUDIT_HASH_LEN], size_t proof_len,
                           const uint8_t root[static AUDIT_HASH_LEN])
{
	if (index >= size)
		return ISG_ERR_INVALID;
	if (proof_len != inclusion_len(index, size) || (proof_len > 0 && !proof))
		return ISG_ERR_INVALID;

	uint64_t fn = index, sn = size - 1;
	uint8_t r[AUDIT_HASH_LEN];
	memcpy(r, leaf_hash, AUDIT_HASH_LEN);
	for (size_t i = 0; i < proof_len; i++) {
		if (sn == 0)
			return ISG_ERR_INVALID;
		if ((fn & 1) || fn == sn) {
			audit_node_hash(proof[i], r, r);
			while (!(fn & 1) && fn != 0) {
				fn >>= 1;
				sn >>= 1;
			}
		} else {
			audit_node_hash(r, proof[i], r);
		}
		fn >>= 1;
		sn >>= 1;
	}
	if (sn != 0)
		return ISG_ERR_INVALID;
	return hash_equal(r, root) ? 0 : ISG_ERR_CORRUPT;
}

/*
 * Length of the consistency proof for 0 < size1 < size2: the inclusion
 * proof of leaf size1 - 1 in size2 without its lowest `shift` levels (the
 * perfect subtree of 2^shift leaves that ends at size1 is given whole),
 * plus that subtree's hash unless it is the old tree itself.
 */
static uint64_t consistency_len(uint64_t size1, uint64_t size2)
{
	unsigned shift = (unsigned)__builtin_ctzll(size1);
	unsigned inner = bit_len((size1 - 1) ^ (size2 - 1));
	uint64_t border = popcount(shift_right(size1 - 1, inner));
	uint64_t start = size1 == UINT64_C(1) << shift ? 0 : 1;
	return start + (inner - shift) + border;
}

/* RFC 9162 section 2.1.4.2 steps 2 to 7 over the path (root1 prepended or not). */
static int consistency_chain(uint64_t size1, uint64_t size2, const uint8_t *first,
                             const uint8_t (*rest)[AUDIT_HASH_LEN], size_t n_rest,
                             const uint8_t root1[static AUDIT_HASH_LEN],
                             const uint8_t root2[static AUDIT_HASH_LEN])
{
	uint64_t fn = size1 - 1, sn = size2 - 1;
	while (fn & 1) {
		fn >>= 1;
		sn >>= 1;
	}
	uint8_t fr[AUDIT_HASH_LEN], sr[AUDIT_HASH_LEN];
	memcpy(fr, first, AUDIT_HASH_LEN);
	memcpy(sr, first, AUDIT_HASH_LEN);
	for (size_t i = 0; i < n_rest; i++) {
		if (sn == 0)
			return ISG_ERR_INVALID;
		if ((fn & 1) || fn == sn) {
			audit_node_hash(rest[i], fr, fr);
			audit_node_hash(rest[i], sr, sr);
			while (!(fn & 1) && fn != 0) {
				fn >>= 1;
				sn >>= 1;
			}
		} else {
			audit_node_hash(sr, rest[i], sr);
		}
		fn >>= 1;
		sn >>= 1;
	}
	if (sn != 0)
		return ISG_ERR_INVALID;
	/* Evaluate both so the result does not depend on which root failed first. */
	bool ok1 = hash_equal(fr, root1), ok2 = hash_equal(sr, root2);
	return ok1 && ok2 ? 0 : ISG_ERR_CORRUPT;
}

int audit_verify_consistency(uint64_t size1, uint64_t size2,
                             const uint8_t root1[static AUDIT_HASH_LEN],
                             const uint8_t root2[static AUDIT_HASH_LEN],
                             const uint8_t (*proof)[AUDIT_HASH_LEN], size_t proof_len)
{
	if (size1 > size2 || size1 == 0)
		return ISG_ERR_INVALID;
	if (size1 == size2) {
		if (proof_len != 0)
			return ISG_ERR_INVALID;
		return hash_equal(root1, root2) ? 0 : ISG_ERR_CORRUPT;
	}
	if (proof_len == 0 || !proof)
		return ISG_ERR_INVALID;
	uint64_t want = consistency_len(size1, size2);
	if (want > AUDIT_PROOF_MAX)
		return ISG_ERR_LIMIT;
	if (proof_len != want)
		return ISG_ERR_INVALID;

	/* Step 2: when size1 is a power of two, the old root is the path's first node. */
	if ((size1 & (size1 - 1)) == 0)
		return consistency_chain(size1, size2, root1, proof, proof_len, root1, root2);
	return consistency_chain(size1, size2, proof[0], proof + 1, proof_len - 1, root1, root2);
}
