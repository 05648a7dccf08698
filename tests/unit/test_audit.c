/*
 * audit: the Merkle tree against published vectors (the RFC 6962 roots of
 * google/certificate-transparency's 8-leaf test tree, and every inclusion
 * and consistency case of transparency-dev/merkle, each accepted or refused
 * as it must be), proof generation cross-checked against the RFC's
 * recursive definitions and against verification for every size up to 64,
 * the streaming prover against the in-memory generator (every leaf of every
 * size up to 200, and more around 256, 300 and 2^17),
 * and signed notes against the golang.org/x/mod sumdb/note known answer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <cmocka.h>
#include <sodium.h>

#include "audit/audit.h"
#include "util/util.h"

#define H AUDIT_HASH_LEN

static void unhex(const char *hex, uint8_t *out, size_t len)
{
	size_t got = 0;
	assert_int_equal(strlen(hex), 2 * len);
	assert_int_equal(sodium_hex2bin(out, len, hex, 2 * len, NULL, &got, NULL), 0);
	assert_int_equal(got, len);
}

static void assert_hash_hex(const uint8_t h[H], const char *hex)
{
	char got[2 * H + 1];
	hex_encode(got, h, H);
	assert_string_equal(got, hex);
}

/* --- the RFC 6962 test tree (google/certificate-transparency) ------------ */

static const char *const ct_inputs[8] = {
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
};

static const char *const ct_roots[8] = {
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

static const char empty_root_hex[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

static void ct_leaves(uint8_t leaves[8][H])
{
	for (unsigned i = 0; i < 8; i++) {
		uint8_t in[16];
		size_t len = strlen(ct_inputs[i]) / 2;
		unhex(ct_inputs[i], in, len);
		audit_leaf_hash(in, len, leaves[i]);
	}
}

static void test_hashes(void **state)
{
	(void)state;
	uint8_t h[H], l[H], r[H];
	audit_empty_root(h);
	assert_hash_hex(h, empty_root_hex);
	assert_int_equal(audit_root_from_leaves(NULL, 0, h), 0);
	assert_hash_hex(h, empty_root_hex);
	audit_leaf_hash(NULL, 0, h);
	assert_hash_hex(h, ct_roots[0]);
	/* The node hash is SHA-256(0x01 || left || right). */
	uint8_t buf[1 + 2 * H];
	memset(l, 0xaa, H);
	memset(r, 0x55, H);
	buf[0] = 1;
	memcpy(buf + 1, l, H);
	memcpy(buf + 1 + H, r, H);
	uint8_t want[H];
	crypto_hash_sha256(want, buf, sizeof(buf));
	audit_node_hash(l, r, h);
	assert_memory_equal(h, want, H);
	audit_node_hash(l, r, l); /* out aliasing left */
	assert_memory_equal(l, want, H);
	assert_int_equal(audit_root_from_leaves(NULL, 1, h), ISG_ERR_INVALID);
}

static void test_ct_roots(void **state)
{
	(void)state;
	uint8_t leaves[8][H], root[H];
	ct_leaves(leaves);
	struct audit_tree t;
	audit_tree_init(&t);
	audit_tree_root(&t, root);
	assert_hash_hex(root, empty_root_hex);
	for (unsigned n = 1; n <= 8; n++) {
		assert_int_equal(audit_tree_append(&t, leaves[n - 1]), 0);
		assert_int_equal(audit_tree_size(&t), n);
		audit_tree_root(&t, root);
		assert_hash_hex(root, ct_roots[n - 1]);
		assert_int_equal(audit_root_from_leaves((const uint8_t(*)[H])leaves, n, root), 0);
		assert_hash_hex(root, ct_roots[n - 1]);

		/* The serialised tree carries on exactly where it was. */
		uint8_t enc[AUDIT_TREE_ENCODED_MAX];
		size_t len = audit_tree_encode(&t, enc);
		assert_int_equal(len, 8 + H * (size_t)__builtin_popcount(n));
		assert_int_equal(enc[7], n);
		struct audit_tree u;
		assert_int_equal(audit_tree_decode(&u, enc, len), 0);
		assert_int_equal(audit_tree_size(&u), n);
		audit_tree_root(&u, root);
		assert_hash_hex(root, ct_roots[n - 1]);
		if (n < 8) {
			assert_int_equal(audit_tree_append(&u, leaves[n]), 0);
			audit_tree_root(&u, root);
			assert_hash_hex(root, ct_roots[n]);
		}
		assert_int_equal(audit_tree_decode(&u, enc, len - 1), ISG_ERR_PARSE);
		assert_int_equal(audit_tree_decode(&u, enc, len + 1), ISG_ERR_PARSE);
	}
}

static void test_tree_bounds(void **state)
{
	(void)state;
	struct audit_tree t;
	uint8_t enc[AUDIT_TREE_ENCODED_MAX + 1], leaf[H] = {1};
	audit_tree_init(&t);
	assert_int_equal(audit_tree_encode(&t, enc), 8);
	assert_int_equal(audit_tree_decode(&t, enc, 8), 0);
	assert_int_equal(audit_tree_decode(&t, enc, 7), ISG_ERR_PARSE);
	assert_int_equal(audit_tree_decode(&t, NULL, 0), ISG_ERR_PARSE);

	/* The fullest tree: 64 frontier hashes, and nowhere to grow. */
	memset(enc, 0, sizeof(enc));
	memset(enc, 0xff, 8);
	assert_int_equal(audit_tree_decode(&t, enc, AUDIT_TREE_ENCODED_MAX), 0);
	assert_int_equal(audit_tree_size(&t), UINT64_MAX);
	assert_int_equal(audit_tree_append(&t, leaf), ISG_ERR_LIMIT);
	assert_int_equal(audit_tree_size(&t), UINT64_MAX);
	assert_int_equal(audit_tree_decode(&t, enc, AUDIT_TREE_ENCODED_MAX + 1), ISG_ERR_PARSE);
	assert_int_equal(audit_tree_decode(&t, enc, AUDIT_TREE_ENCODED_MAX - H), ISG_ERR_PARSE);
}

/* --- proofs: RFC 9162's recursive definitions as the reference ----------- */

static uint64_t k_of(uint64_t n)
{
	uint64_t k = 1;
	while (k * 2 < n)
		k *= 2;
	return k;
}

static void mth_ref(const uint8_t (*d)[H], uint64_t n, uint8_t out[H])
{
	if (n == 0) {
		audit_empty_root(out);
	} else if (n == 1) {
		memcpy(out, d[0], H);
	} else {
		uint64_t k = k_of(n);
		uint8_t l[H], r[H];
		mth_ref(d, k, l);
		mth_ref(d + k, n - k, r);
		audit_node_hash(l, r, out);
	}
}

static void path_ref(uint64_t m, const uint8_t (*d)[H], uint64_t n, uint8_t (*out)[H], size_t *len)
{
	if (n == 1)
		return;
	uint64_t k = k_of(n);
	if (m < k) {
		path_ref(m, d, k, out, len);
		mth_ref(d + k, n - k, out[(*len)++]);
	} else {
		path_ref(m - k, d + k, n - k, out, len);
		mth_ref(d, k, out[(*len)++]);
	}
}

static void subproof_ref(uint64_t m, const uint8_t (*d)[H], uint64_t n, bool b, uint8_t (*out)[H],
                         size_t *len)
{
	if (m == n) {
		if (!b)
			mth_ref(d, n, out[(*len)++]);
		return;
	}
	uint64_t k = k_of(n);
	if (m <= k) {
		subproof_ref(m, d, k, b, out, len);
		mth_ref(d + k, n - k, out[(*len)++]);
	} else {
		subproof_ref(m - k, d + k, n - k, false, out, len);
		mth_ref(d, k, out[(*len)++]);
	}
}

#define N_MAX 64

static uint8_t big_leaves[N_MAX][H];
static uint8_t big_roots[N_MAX + 1][H];

static void make_big_tree(void)
{
	struct audit_tree t;
	audit_tree_init(&t);
	audit_tree_root(&t, big_roots[0]);
	for (unsigned i = 0; i < N_MAX; i++) {
		char entry[32];
		int len = snprintf(entry, sizeof(entry), "{\"seq\":%u}", i);
		audit_leaf_hash((const uint8_t *)entry, (size_t)len, big_leaves[i]);
		assert_int_equal(audit_tree_append(&t, big_leaves[i]), 0);
		audit_tree_root(&t, big_roots[i + 1]);
		uint8_t ref[H];
		mth_ref((const uint8_t(*)[H])big_leaves, i + 1, ref);
		assert_memory_equal(big_roots[i + 1], ref, H);
	}
}

static void test_inclusion_all(void **state)
{
	(void)state;
	make_big_tree();
	const uint8_t(*leaves)[H] = (const uint8_t(*)[H])big_leaves;
	uint8_t proof[AUDIT_PROOF_MAX][H], ref[AUDIT_PROOF_MAX][H], bad[AUDIT_PROOF_MAX + 1][H];
	for (uint64_t n = 1; n <= N_MAX; n++) {
		const uint8_t *root = big_roots[n];
		for (uint64_t i = 0; i < n; i++) {
			size_t len = 99, ref_len = 0;
			assert_int_equal(audit_inclusion_proof(leaves, n, i, proof, &len), 0);
			path_ref(i, leaves, n, ref, &ref_len);
			assert_int_equal(len, ref_len);
			if (len)
				assert_memory_equal(proof, ref, len * H);
			assert_int_equal(audit_verify_inclusion(i, n, leaves[i],
			                                        (const uint8_t(*)[H])proof, len,
			                                        root),
			                 0);

			/* Every bit of every hash counts. */
			for (size_t j = 0; j < len; j++) {
				memcpy(bad, proof, len * H);
				bad[j][j % H] ^= 0x10;
				assert_int_equal(audit_verify_inclusion(i, n, leaves[i],
				                                        (const uint8_t(*)[H])bad,
				                                        len, root),
				                 ISG_ERR_CORRUPT);
			}
			/* Another leaf, index, size or root; one hash more or less. */
			const uint8_t(*p)[H] = (const uint8_t(*)[H])proof;
			assert_int_not_equal(
			    audit_verify_inclusion(i, n, leaves[(i + 1) % N_MAX], p, len, root), 0);
			assert_int_not_equal(
			    audit_verify_inclusion(i ^ 1, n, leaves[i], p, len, root), 0);
			/* The root does not bind the size (the signed checkpoint does): a
			 * proof for n can also verify for n + 1, but not for 2n. */
			assert_int_not_equal(
			    audit_verify_inclusion(i, 2 * n, leaves[i], p, len, root), 0);
			assert_int_not_equal(
			    audit_verify_inclusion(i, n, leaves[i], p, len, big_roots[n - 1]), 0);
			assert_int_equal(audit_verify_inclusion(i, i, leaves[i], p, len, root),
			                 ISG_ERR_INVALID);
			memcpy(bad, proof, len * H);
			memcpy(bad[len], root, H);
			assert_int_equal(audit_verify_inclusion(i, n, leaves[i],
			                                        (const uint8_t(*)[H])bad, len + 1,
			                                        root),
			                 ISG_ERR_INVALID);
			if (len > 0)
				assert_int_equal(
				    audit_verify_inclusion(i, n, leaves[i], p, len - 1, root),
				    ISG_ERR_INVALID);
		}
		size_t len;
		assert_int_equal(audit_inclusion_proof(leaves, n, n, proof, &len), ISG_ERR_INVALID);
	}
}

static void test_consistency_all(void **state)
{
	(void)state;
	make_big_tree();
	const uint8_t(*leaves)[H] = (const uint8_t(*)[H])big_leaves;
	uint8_t proof[AUDIT_PROOF_MAX][H], ref[AUDIT_PROOF_MAX][H], bad[AUDIT_PROOF_MAX + 1][H];
	for (uint64_t n2 = 1; n2 <= N_MAX; n2++) {
		for (uint64_t n1 = 1; n1 <= n2; n1++) {
			const uint8_t *r1 = big_roots[n1], *r2 = big_roots[n2];
			size_t len = 99, ref_len = 0;
			assert_int_equal(audit_consistency_proof(leaves, n2, n1, proof, &len), 0);
			subproof_ref(n1, leaves, n2, true, ref, &ref_len);
			assert_int_equal(len, ref_len);
			if (len)
				assert_memory_equal(proof, ref, len * H);
			const uint8_t(*p)[H] = (const uint8_t(*)[H])proof;
			assert_int_equal(audit_verify_consistency(n1, n2, r1, r2, p, len), 0);
			if (n1 == n2) {
				assert_int_equal(len, 0);
				continue;
			}
			for (size_t j = 0; j < len; j++) {
				memcpy(bad, proof, len * H);
				bad[j][(j * 7) % H] ^= 0x01;
				assert_int_equal(audit_verify_consistency(
				                     n1, n2, r1, r2, (const uint8_t(*)[H])bad, len),
				                 ISG_ERR_CORRUPT);
			}
			assert_int_not_equal(audit_verify_consistency(n1, n2, r2, r1, p, len), 0);
			assert_int_not_equal(
			    audit_verify_consistency(n1, n2, r1, big_roots[n2 - 1], p, len), 0);
			assert_int_not_equal(
			    audit_verify_consistency(n1, n2, big_roots[n1 - 1], r2, p, len), 0);
			assert_int_not_equal(audit_verify_consistency(n1 + 1, n2, r1, r2, p, len),
			                     0);
			assert_int_not_equal(audit_verify_consistency(n1, 2 * n2, r1, r2, p, len),
			                     0);
			assert_int_equal(audit_verify_consistency(n1, n2, r1, r2, p, 0),
			                 ISG_ERR_INVALID);
			assert_int_equal(audit_verify_consistency(n1, n2, r1, r2, p, len - 1),
			                 ISG_ERR_INVALID);
			memcpy(bad, proof, len * H);
			memcpy(bad[len], r2, H);
			assert_int_equal(audit_verify_consistency(
			                     n1, n2, r1, r2, (const uint8_t(*)[H])bad, len + 1),
			                 ISG_ERR_INVALID);
			assert_int_equal(audit_verify_consistency(n2, n1, r2, r1, p, len),
			                 ISG_ERR_INVALID);
		}
		size_t len;
		assert_int_equal(audit_consistency_proof(leaves, n2, 0, proof, &len),
		                 ISG_ERR_INVALID);
		assert_int_equal(audit_consistency_proof(leaves, n2, n2 + 1, proof, &len),
		                 ISG_ERR_INVALID);
	}
}

/* --- the streaming prover against the in-memory generator --------------- */

#define STREAM_MAX 300

/* Stream n leaves into a prover for index: its root, proof and leaf hash are the generator's. */
static void check_prover(const uint8_t (*leaves)[H], uint64_t n, uint64_t index,
                         const uint8_t root[H])
{
	struct audit_prover p;
	uint8_t got_root[H], got_leaf[H], proof[AUDIT_PROOF_MAX][H], want[AUDIT_PROOF_MAX][H];
	size_t len = 99, want_len = 0;
	assert_int_equal(audit_prover_init(&p, n, index), 0);
	for (uint64_t i = 0; i < n; i++) {
		assert_int_equal(audit_prover_finish(&p, got_root, proof, &len, got_leaf),
		                 ISG_ERR_INVALID);
		assert_int_equal(audit_prover_append(&p, leaves[i]), 0);
	}
	assert_int_equal(audit_prover_append(&p, leaves[0]), ISG_ERR_LIMIT);
	assert_int_equal(audit_prover_finish(&p, got_root, proof, &len, got_leaf), 0);
	assert_int_equal(audit_inclusion_proof(leaves, n, index, want, &want_len), 0);
	if (len != want_len)
		fail_msg("n %llu index %llu: proof of %zu hashes, not %zu", (unsigned long long)n,
		         (unsigned long long)index, len, want_len);
	for (size_t j = 0; j < len; j++)
		if (memcmp(proof[j], want[j], H) != 0)
			fail_msg("n %llu index %llu: proof hash %zu differs", (unsigned long long)n,
			         (unsigned long long)index, j);
	assert_memory_equal(got_root, root, H);
	assert_memory_equal(got_leaf, leaves[index], H);
}

static void test_prover_all(void **state)
{
	(void)state;
	static uint8_t leaves[STREAM_MAX][H];
	for (unsigned i = 0; i < STREAM_MAX; i++) {
		char entry[32];
		int len = snprintf(entry, sizeof(entry), "{\"seq\":%u}", i);
		audit_leaf_hash((const uint8_t *)entry, (size_t)len, leaves[i]);
	}
	const uint8_t(*l)[H] = (const uint8_t(*)[H])leaves;
	for (uint64_t n = 1; n <= STREAM_MAX; n++) {
		/* Every leaf of size n costs O(n^2): all up to 200, around 256 and at 300; a
		 * sample (edges, powers of two) elsewhere. */
		bool every = n <= 200 || (n >= 254 && n <= 258) || n == STREAM_MAX;
		uint8_t root[H];
		assert_int_equal(audit_root_from_leaves(l, n, root), 0);
		for (uint64_t i = 0; i < n; i++)
			if (every || i % 13 == 0 || i >= n - 2 || (i & (i - 1)) == 0 ||
			    ((i + 1) & i) == 0)
				check_prover(l, n, i, root);
	}
	struct audit_prover p;
	assert_int_equal(audit_prover_init(&p, 0, 0), ISG_ERR_INVALID);
	assert_int_equal(audit_prover_init(&p, 5, 5), ISG_ERR_INVALID);
	assert_int_equal(audit_prover_init(NULL, 5, 1), ISG_ERR_INVALID);
	/* The deepest tree has a proof of 64 hashes, its ranges known before any leaf. */
	assert_int_equal(audit_prover_init(&p, UINT64_MAX, UINT64_MAX - 1), 0);
	assert_int_equal(p.len, 63);
	assert_int_equal(audit_prover_init(&p, UINT64_MAX, 0), 0);
	assert_int_equal(p.len, 64);
}

/* A larger tree, some leaves chosen at its edges: cheap synthetic leaf hashes. */
static void test_prover_large(void **state)
{
	(void)state;
	const uint64_t n = (UINT64_C(1) << 17) + 3;
	uint8_t(*leaves)[H] = malloc(n * H);
	assert_non_null(leaves);
	for (uint64_t i = 0; i < n; i++) {
		memset(leaves[i], 0x5a, H);
		memcpy(leaves[i], &i, sizeof(i));
	}
	const uint8_t(*l)[H] = (const uint8_t(*)[H])leaves;
	uint8_t root[H];
	assert_int_equal(audit_root_from_leaves(l, n, root), 0);
	const uint64_t k16 = UINT64_C(1) << 16, k17 = k16 * 2;
	const uint64_t chosen[] = {0, 1, 12345, k16 - 1, k16, k17 - 1, k17, n - 2, n - 1};
	for (size_t i = 0; i < ARRAY_LEN(chosen); i++)
		check_prover(l, n, chosen[i], root);
	free(leaves);
}

/* Sizes at the top of the 64-bit range: bounded, no shift by 64. */
static void test_proof_extremes(void **state)
{
	(void)state;
	uint8_t proof[AUDIT_PROOF_MAX + 1][H], h[H] = {7};
	memset(proof, 0x33, sizeof(proof));
	const uint8_t(*p)[H] = (const uint8_t(*)[H])proof;
	assert_int_equal(audit_verify_inclusion(UINT64_MAX - 1, UINT64_MAX, h, p, 63, h),
	                 ISG_ERR_CORRUPT);
	assert_int_equal(audit_verify_inclusion(UINT64_MAX - 1, UINT64_MAX, h, p, 64, h),
	                 ISG_ERR_INVALID);
	assert_int_equal(audit_verify_inclusion(0, UINT64_MAX, h, p, 64, h), ISG_ERR_CORRUPT);
	assert_int_equal(audit_verify_inclusion(UINT64_MAX, UINT64_MAX, h, p, 0, h),
	                 ISG_ERR_INVALID);
	assert_int_equal(audit_verify_inclusion(0, 0, h, p, 0, h), ISG_ERR_INVALID);
	/* A consistency proof beyond 2^63 would need 65 hashes. */
	assert_int_equal(audit_verify_consistency(3, UINT64_MAX, h, h, p, 65), ISG_ERR_LIMIT);
	assert_int_equal(audit_verify_consistency(UINT64_C(1) << 62, UINT64_C(1) << 63, h, h, p, 1),
	                 ISG_ERR_CORRUPT);
	assert_int_equal(audit_verify_consistency(3, UINT64_C(1) << 63, h, h, p, 64),
	                 ISG_ERR_CORRUPT);
	assert_int_equal(audit_verify_consistency(0, 0, h, h, p, 0), ISG_ERR_INVALID);
	assert_int_equal(audit_verify_consistency(1, 2, h, h, NULL, 1), ISG_ERR_INVALID);
}

/* --- transparency-dev/merkle test data ----------------------------------- */

#define VEC_MAX_PROOF 80
#define VEC_MAX_BYTES 64

struct blob {
	uint8_t b[VEC_MAX_BYTES];
	size_t len;
};

struct vector {
	bool consistency;
	uint64_t leaf_idx, tree_size, size1, size2;
	struct blob root, root1, root2, leaf_hash;
	struct blob proof[VEC_MAX_PROOF];
	size_t proof_len;
	bool want_err;
	unsigned seen; /* bit per key, to insist on every field */
};

/* A tiny reader for these flat JSON files; false on anything unexpected. */
struct json {
	const char *p, *end;
};

static void json_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
		j->p++;
}

static bool json_lit(struct json *j, const char *lit)
{
	size_t n = strlen(lit);
	json_ws(j);
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return false;
	j->p += n;
	return true;
}

/* A string without escapes into s (NUL-terminated). */
static bool json_str(struct json *j, char *s, size_t size)
{
	if (!json_lit(j, "\""))
		return false;
	size_t n = 0;
	while (j->p < j->end && *j->p != '"') {
		if (*j->p == '\\' || n + 1 >= size)
			return false;
		s[n++] = *j->p++;
	}
	if (j->p == j->end)
		return false;
	j->p++;
	s[n] = '\0';
	return true;
}

static bool json_b64(struct json *j, struct blob *out)
{
	char s[256];
	if (!json_str(j, s, sizeof(s)))
		return false;
	out->len = 0;
	if (s[0] == '\0')
		return true;
	return sodium_base642bin(out->b, sizeof(out->b), s, strlen(s), NULL, &out->len, NULL,
	                         sodium_base64_VARIANT_ORIGINAL) == 0;
}

static bool json_u64(struct json *j, uint64_t *out)
{
	json_ws(j);
	char s[32];
	size_t n = 0;
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9' && n + 1 < sizeof(s))
		s[n++] = *j->p++;
	s[n] = '\0';
	if (n == 0)
		return false;
	char *e;
	errno = 0;
	unsigned long long v = strtoull(s, &e, 10);
	if (errno || *e)
		return false;
	*out = v;
	return true;
}

static bool json_proof(struct json *j, struct vector *v)
{
	v->proof_len = 0;
	if (json_lit(j, "null"))
		return true;
	if (!json_lit(j, "["))
		return false;
	if (json_lit(j, "]"))
		return true;
	do {
		if (v->proof_len == VEC_MAX_PROOF || !json_b64(j, &v->proof[v->proof_len++]))
			return false;
	} while (json_lit(j, ","));
	return json_lit(j, "]");
}

static bool json_value(struct json *j, const char *key, struct vector *v)
{
	static const char *const keys[] = {"leafIdx", "treeSize", "size1",  "size2",
	                                   "root",    "root1",    "root2",  "leafHash",
	                                   "proof",   "desc",     "wantErr"};
	unsigned k = 0;
	while (k < ARRAY_LEN(keys) && strcmp(keys[k], key) != 0)
		k++;
	if (k == ARRAY_LEN(keys) || (v->seen & (1u << k)))
		return false;
	v->seen |= 1u << k;
	char desc[256];
	switch (k) {
	case 0:
		return json_u64(j, &v->leaf_idx);
	case 1:
		return json_u64(j, &v->tree_size);
	case 2:
		return json_u64(j, &v->size1);
	case 3:
		return json_u64(j, &v->size2);
	case 4:
		return json_b64(j, &v->root);
	case 5:
		return json_b64(j, &v->root1);
	case 6:
		return json_b64(j, &v->root2);
	case 7:
		return json_b64(j, &v->leaf_hash);
	case 8:
		return json_proof(j, v);
	case 9:
		return json_str(j, desc, sizeof(desc));
	default:
		v->want_err = json_lit(j, "true");
		return v->want_err || json_lit(j, "false");
	}
}

static bool parse_vector(const char *text, size_t len, struct vector *v)
{
	struct json j = {text, text + len};
	memset(v, 0, sizeof(*v));
	if (!json_lit(&j, "{"))
		return false;
	do {
		char key[32];
		if (!json_str(&j, key, sizeof(key)) || !json_lit(&j, ":") ||
		    !json_value(&j, key, v))
			return false;
	} while (json_lit(&j, ","));
	if (!json_lit(&j, "}"))
		return false;
	json_ws(&j);
	/* Inclusion: leafIdx treeSize root leafHash proof desc wantErr. */
	unsigned incl = 1u | 2u | 16u | 128u | 256u | 512u | 1024u;
	unsigned cons = 4u | 8u | 32u | 64u | 256u | 512u | 1024u;
	v->consistency = v->seen == cons;
	return j.p == j.end && (v->seen == incl || v->seen == cons);
}

/*
 * The API takes hashes as 32-byte arrays. A root or proof hash of another
 * length in a file (the vectors' "WrongRoot", "don't care 1", "") becomes a
 * distinct 32-byte stand-in that no tree hash equals, so such cases still
 * run through the verifier; equal inputs give equal stand-ins.
 */
static void stand_in(const struct blob *in, uint8_t out[H])
{
	if (in->len == H) {
		memcpy(out, in->b, H);
		return;
	}
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const uint8_t *)"not a hash:", 11);
	crypto_hash_sha256_update(&st, in->b, in->len);
	crypto_hash_sha256_final(&st, out);
}

static struct {
	unsigned files, inclusion, consistency, want_ok, accepted, refused, by_type, wrong;
} tally;

static uint8_t vec_proof[VEC_MAX_PROOF][H];

/* 0 accepted, else the verifier's error; 1 when refused before it (leaf hash length). */
static int run_vector(const struct vector *v)
{
	for (size_t i = 0; i < v->proof_len; i++)
		stand_in(&v->proof[i], vec_proof[i]);
	const uint8_t(*proof)[H] = (const uint8_t(*)[H])vec_proof;
	if (v->consistency) {
		uint8_t r1[H], r2[H];
		stand_in(&v->root1, r1);
		stand_in(&v->root2, r2);
		return audit_verify_consistency(v->size1, v->size2, r1, r2, proof, v->proof_len);
	}
	/* A leaf hash is a uint8_t[32] here: other lengths cannot be passed (as Go checks). */
	if (v->leaf_hash.len != H)
		return 1;
	uint8_t root[H];
	stand_in(&v->root, root);
	return audit_verify_inclusion(v->leaf_idx, v->tree_size, v->leaf_hash.b, proof,
	                              v->proof_len, root);
}

/* Happy paths over the CT tree: the proof we generate is the file's proof. */
static bool same_as_generated(const struct vector *v)
{
	uint8_t leaves[8][H], proof[AUDIT_PROOF_MAX][H];
	size_t len;
	ct_leaves(leaves);
	const uint8_t(*l)[H] = (const uint8_t(*)[H])leaves;
	int rc;
	if (v->consistency)
		rc = audit_consistency_proof(l, v->size2, v->size1, proof, &len);
	else
		rc = audit_inclusion_proof(l, v->tree_size, v->leaf_idx, proof, &len);
	if (rc != 0 || len != v->proof_len)
		return false;
	for (size_t i = 0; i < len; i++)
		if (v->proof[i].len != H || memcmp(v->proof[i].b, proof[i], H) != 0)
			return false;
	return true;
}

static int vector_file(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)ftw;
	size_t plen = strlen(path);
	if (type != FTW_F || plen < 5 || strcmp(path + plen - 5, ".json") != 0)
		return 0;
	static char text[65536];
	FILE *f = fopen(path, "rb");
	size_t len = f ? fread(text, 1, sizeof(text), f) : 0;
	if (f)
		fclose(f);
	struct vector v;
	tally.files++;
	if (!f || len == sizeof(text) || (off_t)len != st->st_size ||
	    !parse_vector(text, len, &v)) {
		print_error("%s: cannot read or parse\n", path);
		tally.wrong++;
		return 0;
	}
	tally.want_ok += !v.want_err;
	if (v.consistency)
		tally.consistency++;
	else
		tally.inclusion++;
	int rc = run_vector(&v);
	if ((rc == 0) == v.want_err) {
		print_error("%s: verifier says %d, file says wantErr %d\n", path, rc, v.want_err);
		tally.wrong++;
	}
	if (rc == 0) {
		tally.accepted++;
		/* Only the CT-tree happy paths (not the hand-made additional cases). */
		if (strstr(path, "happy-path") && !same_as_generated(&v)) {
			print_error("%s: generated proof differs\n", path);
			tally.wrong++;
		}
	} else {
		tally.refused++;
		tally.by_type += rc == 1;
	}
	return 0;
}

static void test_transparency_dev_vectors(void **state)
{
	(void)state;
	const char *d = getenv("ISG_TEST_DATA");
	if (!d)
		fail_msg("ISG_TEST_DATA is not set (run through ctest)");
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/merkle/testdata", d);
	memset(&tally, 0, sizeof(tally));
	assert_int_equal(nftw(dir, vector_file, 16, FTW_PHYS), 0);
	print_message("%u files: %u inclusion, %u consistency; %u accepted, %u refused "
	              "(%u by the leaf hash type)\n",
	              tally.files, tally.inclusion, tally.consistency, tally.accepted,
	              tally.refused, tally.by_type);
	assert_int_equal(tally.wrong, 0);
	assert_int_equal(tally.files, 196);
	assert_int_equal(tally.inclusion + tally.consistency, 196);
	assert_int_equal(tally.want_ok, 12);
	assert_int_equal(tally.accepted, tally.want_ok);
	assert_true(tally.by_type < 16); /* nearly every case reaches the verifier */
}

/* --- signed notes: golang.org/x/mod sumdb/note known answer --------------- */

static const char kat_skey[] =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
static const char kat_vkey[] = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
static const char kat_text[] = "If you think cryptography is the answer to your problem,\n"
                               "then you don't know what your problem is.\n";
static const char kat_sig[] =
    "\xe2\x80\x94 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n";

static struct audit_signer *kat_signer(void)
{
	struct audit_signer *s = NULL;
	const char *reason = NULL;
	int rc = audit_signer_from_text(kat_skey, strlen(kat_skey), &s, &reason);
	if (rc)
		print_error("signer: %s\n", reason);
	assert_int_equal(rc, 0);
	return s;
}

static void kat_verifier(struct audit_verifier *v)
{
	const char *reason = NULL;
	int rc = audit_verifier_parse(kat_vkey, strlen(kat_vkey), v, &reason);
	if (rc)
		print_error("verifier: %s\n", reason);
	assert_int_equal(rc, 0);
}

static char *kat_note(void)
{
	static char note[512];
	snprintf(note, sizeof(note), "%s\n%s", kat_text, kat_sig);
	return note;
}

static int verify_text(const struct audit_verifier *v, const char *note, const char **reason)
{
	size_t body_len = 12345;
	*reason = NULL;
	int rc = audit_note_verify(v, note, strlen(note), &body_len, reason);
	if (rc == 0)
		assert_null(*reason);
	else
		assert_non_null(*reason);
	return rc;
}

static void test_note_known_answer(void **state)
{
	(void)state;
	struct audit_signer *s = kat_signer();
	assert_string_equal(audit_signer_name(s), "PeterNeumann");
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(s, vkey);
	assert_string_equal(vkey, kat_vkey);

	char note[1024];
	size_t len = 0;
	const char *reason = NULL;
	assert_int_equal(
	    audit_note_sign(s, kat_text, strlen(kat_text), note, sizeof(note), &len, &reason), 0);
	assert_string_equal(note, kat_note());
	assert_int_equal(len, strlen(note));

	struct audit_verifier v;
	kat_verifier(&v);
	assert_string_equal(v.name, "PeterNeumann");
	uint8_t pk[AUDIT_PUBKEY_LEN];
	audit_signer_public_key(s, pk);
	assert_memory_equal(pk, v.public_key, AUDIT_PUBKEY_LEN);
	size_t body_len = 0;
	assert_int_equal(audit_note_verify(&v, note, len, &body_len, &reason), 0);
	assert_int_equal(body_len, strlen(kat_text));

	/* The same signer from the name and the seed in the key text. */
	uint8_t blob[64];
	size_t n;
	const char *b64 = strstr(kat_skey, "c74f20a3+") + 9; /* the base64 may hold '+' */
	assert_int_equal(sodium_base642bin(blob, sizeof(blob), b64, strlen(b64), NULL, &n, NULL,
	                                   sodium_base64_VARIANT_ORIGINAL),
	                 0);
	assert_int_equal(n, 33);
	struct audit_signer *s2 = NULL;
	assert_int_equal(audit_signer_new("PeterNeumann", blob + 1, &s2), 0);
	char note2[1024];
	assert_int_equal(
	    audit_note_sign(s2, kat_text, strlen(kat_text), note2, sizeof(note2), NULL, NULL), 0);
	assert_string_equal(note2, note);
	/* A signature is as long as it is: one byte less room is refused. */
	assert_int_equal(audit_note_sign(s2, kat_text, strlen(kat_text), note2, len, NULL, &reason),
	                 ISG_ERR_TOO_BIG);
	assert_int_equal(
	    audit_note_sign(s2, kat_text, strlen(kat_text), note2, len + 1, NULL, NULL), 0);
	audit_signer_free(s2);
	audit_signer_free(s);
	audit_signer_free(NULL);
}

/* Replace the first occurrence of from by to in a copy of s. */
static char *replaced(const char *s, const char *from, const char *to)
{
	static char out[AUDIT_NOTE_MAX * 2];
	const char *at = strstr(s, from);
	if (!at)
		fail_msg("no \"%s\" in the note", from);
	snprintf(out, sizeof(out), "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
	return out;
}

static void test_note_tampered(void **state)
{
	(void)state;
	struct audit_verifier v;
	kat_verifier(&v);
	const char *note = kat_note(), *reason;
	assert_int_equal(verify_text(&v, note, &reason), 0);

	/* Body changed. */
	assert_int_equal(verify_text(&v, replaced(note, "answer", "answar"), &reason),
	                 ISG_ERR_CRYPTO);
	assert_int_equal(verify_text(&v, replaced(note, "is.\n", "is!\n"), &reason),
	                 ISG_ERR_CRYPTO);
	/* An extra line in the text. */
	assert_int_equal(verify_text(&v, replaced(note, "is.\n", "is.\nx\n"), &reason),
	                 ISG_ERR_CRYPTO);
	/* Signature changed: one byte of the Ed25519 signature, re-encoded. */
	uint8_t blob[68];
	size_t n;
	const char *b64 = strrchr(kat_sig, ' ') + 1;
	assert_int_equal(sodium_base642bin(blob, sizeof(blob), b64, strlen(b64) - 1, NULL, &n, NULL,
	                                   sodium_base64_VARIANT_ORIGINAL),
	                 0);
	assert_int_equal(n, 68);
	for (size_t i = 4; i < 68; i += 9) {
		char enc[96], line[200];
		blob[i] ^= 0x04;
		sodium_bin2base64(enc, sizeof(enc), blob, 68, sodium_base64_VARIANT_ORIGINAL);
		blob[i] ^= 0x04;
		snprintf(line, sizeof(line), "\xe2\x80\x94 PeterNeumann %s\n", enc);
		assert_int_equal(verify_text(&v, replaced(note, kat_sig, line), &reason),
		                 ISG_ERR_CRYPTO);
		assert_string_equal(reason, "signature does not verify");
	}
	/* Key name or key hash changed: not a signature by this key. */
	assert_int_equal(verify_text(&v, replaced(note, "PeterNeumann", "PeterNeumanm"), &reason),
	                 ISG_ERR_NOT_FOUND);
	assert_int_equal(verify_text(&v, replaced(note, " x08go", " x09go"), &reason),
	                 ISG_ERR_NOT_FOUND);
	/* Another key with the same name. */
	uint8_t seed[AUDIT_SEED_LEN] = {42};
	struct audit_signer *other = NULL;
	assert_int_equal(audit_signer_new("PeterNeumann", seed, &other), 0);
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(other, vkey);
	struct audit_verifier w;
	assert_int_equal(audit_verifier_parse(vkey, strlen(vkey), &w, NULL), 0);
	assert_int_equal(verify_text(&w, note, &reason), ISG_ERR_NOT_FOUND);
	assert_string_equal(reason, "note has no signature by this key");

	/* Signatures by other keys are ignored, before or after ours. */
	char cosigned[1024], line2[300];
	size_t len;
	assert_int_equal(audit_note_sign(other, kat_text, strlen(kat_text), cosigned,
	                                 sizeof(cosigned), &len, NULL),
	                 0);
	snprintf(line2, sizeof(line2), "%s%s", strstr(cosigned, "\n\n") + 2, kat_sig);
	assert_int_equal(verify_text(&v, replaced(note, kat_sig, line2), &reason), 0);
	assert_int_equal(verify_text(&w, replaced(note, kat_sig, line2), &reason), 0);
	assert_int_equal(
	    verify_text(&v, replaced(note, kat_sig, "\xe2\x80\x94 witness AAAAAAA=\n"), &reason),
	    ISG_ERR_NOT_FOUND);
	snprintf(line2, sizeof(line2), "%s\xe2\x80\x94 witness.example AAAAAAA=\n", kat_sig);
	assert_int_equal(verify_text(&v, replaced(note, kat_sig, line2), &reason), 0);
	/* ...but a bad signature by this key is refused even next to a good one. */
	snprintf(line2, sizeof(line2), "%s%s", kat_sig, replaced(kat_sig, "x08go/", "x08go+"));
	assert_int_equal(verify_text(&v, replaced(note, kat_sig, line2), &reason), ISG_ERR_CRYPTO);
	audit_signer_free(other);
}

static void test_note_malformed(void **state)
{
	(void)state;
	struct audit_verifier v;
	kat_verifier(&v);
	const char *note = kat_note(), *reason;
	struct {
		const char *from, *to;
		int err;
		const char *reason;
	} cases[] = {
	    {"is.\n\n", "is.\n", ISG_ERR_PARSE, "note has no blank line before its signatures"},
	    {"nAM=\n", "nAM=", ISG_ERR_PARSE, "note does not end in a newline"},
	    {"nAM=\n", "nAM=\nx", ISG_ERR_PARSE, "note does not end in a newline"},
	    {"nAM=\n", "nAM=\n\n", ISG_ERR_PARSE, "note has no signature lines"},
	    {"If you", "\nIf you", ISG_ERR_CRYPTO, "signature does not verify"},
	    {"\xe2\x80\x94 ", "- ", ISG_ERR_PARSE,
	     "signature line does not start with an em dash and a space"},
	    {"\xe2\x80\x94 ", "\xe2\x80\x94", ISG_ERR_PARSE,
	     "signature line does not start with an em dash and a space"},
	    {"PeterNeumann x08", "PeterNeumannx08", ISG_ERR_PARSE,
	     "signature line has no space after the key name"},
	    {"PeterNeumann x08", "Peter+Neumann x08", ISG_ERR_PARSE,
	     "signature line has an invalid key name"},
	    {"PeterNeumann x08", " x08", ISG_ERR_PARSE, "signature line has an invalid key name"},
	    {"PeterNeumann x08", "PeterNeumann  x08", ISG_ERR_PARSE,
	     "signature is not valid base64"},
	    {"x08go/", "x08go!", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"x08go/", "x08g\xc3\xa9", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"nAM=", "nAM", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"nAM=", "nAM=x", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"nAM=", "nAN=", ISG_ERR_PARSE, "signature is not valid base64"}, /* non-canonical */
	    {"nAM=", "nAM= ", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"JnAM=", "JnA", ISG_ERR_PARSE, "signature is not valid base64"},
	    {"x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
	     "BwJnAM=",
	     "x08g", ISG_ERR_PARSE, "signature is too short"},
	    {"x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
	     "BwJnAM=",
	     "x08go/Y=", ISG_ERR_PARSE, "signature has the wrong length for Ed25519"},
	    {"answer", "ans\twer", ISG_ERR_PARSE, "note contains a control character"},
	    {"answer", "ans\rwer", ISG_ERR_PARSE, "note contains a control character"},
	    {"answer", "ans\xffwer", ISG_ERR_PARSE, "note is not valid UTF-8"},
	    {"answer", "ans\xc0\xafwer", ISG_ERR_PARSE, "note is not valid UTF-8"},
	    {"answer", "ans\xed\xa0\x80wer", ISG_ERR_PARSE, "note is not valid UTF-8"},
	    {"answer", "ans\xe2\x80wer", ISG_ERR_PARSE, "note is not valid UTF-8"},
	    {"If you think cryptography is the answer to your problem,\nthen you don't know what "
	     "your problem is.\n",
	     "\n", ISG_ERR_PARSE, "note text is empty"},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const char *bad = replaced(note, cases[i].from, cases[i].to);
		int rc = verify_text(&v, bad, &reason);
		if (rc != cases[i].err || strcmp(reason, cases[i].reason) != 0)
			print_error("case %zu: %d %s\n", i, rc, reason);
		assert_int_equal(rc, cases[i].err);
		assert_string_equal(reason, cases[i].reason);
	}

	/* Signatures of 67 and 69 bytes under this key's hash. */
	uint8_t blob[69] = {0xc7, 0x4f, 0x20, 0xa3};
	for (size_t n = 67; n <= 69; n += 2) {
		char enc[128], sig_line[200];
		sodium_bin2base64(enc, sizeof(enc), blob, n, sodium_base64_VARIANT_ORIGINAL);
		snprintf(sig_line, sizeof(sig_line), "\xe2\x80\x94 PeterNeumann %s\n", enc);
		assert_int_equal(verify_text(&v, replaced(note, kat_sig, sig_line), &reason),
		                 ISG_ERR_PARSE);
		assert_string_equal(reason, "signature has the wrong length for Ed25519");
	}
	/* A NUL byte is a control character like any other. */
	char nul[512];
	size_t nul_len = strlen(note), body_len;
	memcpy(nul, note, nul_len);
	nul[5] = '\0';
	assert_int_equal(audit_note_verify(&v, nul, nul_len, &body_len, &reason), ISG_ERR_PARSE);
	assert_string_equal(reason, "note contains a control character");

	/* Bounds: a long line, a long note, many signature lines. */
	static char big[AUDIT_NOTE_MAX + 64];
	char line[AUDIT_NOTE_LINE_MAX + 2];
	memset(line, 'a', sizeof(line));
	line[AUDIT_NOTE_LINE_MAX] = '\n';
	line[AUDIT_NOTE_LINE_MAX + 1] = '\0';
	snprintf(big, sizeof(big), "%s%s", line, note);
	assert_int_equal(verify_text(&v, big, &reason), ISG_ERR_CRYPTO); /* 1024 is allowed */
	line[AUDIT_NOTE_LINE_MAX] = 'a';
	snprintf(big, sizeof(big), "%s\n%s", line, note);
	assert_int_equal(verify_text(&v, big, &reason), ISG_ERR_PARSE);
	assert_string_equal(reason, "note has a line that is too long");

	memset(big, 'a', sizeof(big));
	for (size_t i = 100; i < sizeof(big); i += 100)
		big[i] = '\n';
	size_t off = AUDIT_NOTE_MAX - strlen(note) + 1;
	memcpy(big + off - 1, "\n", 1);
	memcpy(big + off, note, strlen(note) + 1);
	assert_int_equal(audit_note_verify(&v, big, strlen(big), &body_len, &reason),
	                 ISG_ERR_TOO_BIG);
	assert_int_equal(audit_note_verify(&v, big + 1, strlen(big + 1), &body_len, &reason),
	                 ISG_ERR_CRYPTO);

	char many[8192];
	size_t pos = (size_t)snprintf(many, sizeof(many), "%s\n", kat_text);
	for (int i = 0; i < AUDIT_NOTE_SIGS_MAX; i++)
		pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "%s", kat_sig);
	assert_int_equal(verify_text(&v, many, &reason), 0);
	snprintf(many + pos, sizeof(many) - pos, "\xe2\x80\x94 other AAAAAAA=\n");
	assert_int_equal(verify_text(&v, many, &reason), ISG_ERR_PARSE);
	assert_string_equal(reason, "note has too many signature lines");

	assert_int_equal(audit_note_verify(&v, "", 0, &body_len, &reason), ISG_ERR_PARSE);
	assert_int_equal(audit_note_verify(&v, NULL, 0, &body_len, &reason), ISG_ERR_INVALID);
	assert_int_equal(audit_note_verify(NULL, note, strlen(note), &body_len, NULL),
	                 ISG_ERR_INVALID);
}

static void test_keys(void **state)
{
	(void)state;
	struct audit_verifier v;
	const char *reason = NULL;
	struct {
		const char *text;
		int err;
		const char *reason;
	} vcases[] = {
	    {"PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_INVALID,
	     "key hash does not match the key name and key"},
	    {"PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_INVALID,
	     "key hash does not match the key name and key"},
	    {"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX", ISG_ERR_INVALID,
	     "key hash does not match the key name and key"},
	    {"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T=", ISG_ERR_PARSE,
	     "key is not valid base64"},
	    {"PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", 0, NULL},
	    {"PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_PARSE,
	     "key hash is not 8 hex digits"},
	    {"PeterNeumann+c74f20ag+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_PARSE,
	     "key hash is not 8 hex digits"},
	    {"PeterNeumann+c74f20a3", ISG_ERR_PARSE, "key has no '+' after its key hash"},
	    {"PeterNeumann", ISG_ERR_PARSE, "key has no '+' after its name"},
	    {"", ISG_ERR_PARSE, "key has no '+' after its name"},
	    {"+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_PARSE,
	     "key name is not valid"},
	    {"Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_PARSE,
	     "key name is not valid"},
	    {"PeterNeumann+c74f20a3+", ISG_ERR_PARSE, "key is not valid base64"},
	    {"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10\xc3\xa9",
	     ISG_ERR_PARSE, "key is not valid base64"},
	    {"PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ISG_ERR_PARSE,
	     "key algorithm is not Ed25519"},
	    {"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy", ISG_ERR_PARSE,
	     "key has the wrong length for Ed25519"},
	    {"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n", ISG_ERR_PARSE,
	     "key is not valid base64"},
	};
	for (size_t i = 0; i < ARRAY_LEN(vcases); i++) {
		reason = NULL;
		int rc = audit_verifier_parse(vcases[i].text, strlen(vcases[i].text), &v, &reason);
		if (rc != vcases[i].err)
			print_error("case %zu: %d %s\n", i, rc, reason);
		assert_int_equal(rc, vcases[i].err);
		if (vcases[i].reason)
			assert_string_equal(reason, vcases[i].reason);
	}

	struct audit_signer *s = (struct audit_signer *)&v;
	assert_int_equal(audit_signer_from_text(kat_skey + 1, strlen(kat_skey) - 1, &s, &reason),
	                 ISG_ERR_PARSE);
	assert_null(s);
	const char *bad_hash =
	    "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
	assert_int_equal(audit_signer_from_text(bad_hash, strlen(bad_hash), &s, &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "key hash does not match the key name and key");
	assert_null(s);
	const char *verifier_as_signer =
	    "PRIVATE+KEY+PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
	assert_int_equal(
	    audit_signer_from_text(verifier_as_signer, strlen(verifier_as_signer), &s, &reason),
	    ISG_ERR_INVALID);

	/* Names: what sumdb/note accepts, bounded. */
	static const char *const bad_names[] = {
	    "",
	    "a b",
	    "a+b",
	    "a\tb",
	    "a\nb",
	    "a\x01",
	    "a\x7f",
	    "a\xc2\xa0"
	    "b",
	    "a\xe2\x80\x83"
	    "b",
	    "a\xe3\x80\x80"
	    "b",
	    "a\xc2\x85"
	    "b",
	    "\xff",
	    "a\xc0\x80",
	};
	uint8_t seed[AUDIT_SEED_LEN] = {1};
	for (size_t i = 0; i < ARRAY_LEN(bad_names); i++) {
		s = (struct audit_signer *)&v;
		assert_int_equal(audit_signer_new(bad_names[i], seed, &s), ISG_ERR_INVALID);
		assert_null(s);
	}
	char name[AUDIT_NAME_MAX + 2];
	memset(name, 'n', sizeof(name));
	name[AUDIT_NAME_MAX + 1] = '\0';
	assert_int_equal(audit_signer_new(name, seed, &s), ISG_ERR_INVALID);
	name[AUDIT_NAME_MAX] = '\0';
	assert_int_equal(audit_signer_new(name, seed, &s), 0);
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(s, vkey);
	assert_int_equal(strlen(vkey), AUDIT_VERIFIER_KEY_MAX - 1);
	assert_int_equal(audit_verifier_parse(vkey, strlen(vkey), &v, NULL), 0);
	assert_string_equal(v.name, name);
	audit_signer_free(s);
	assert_int_equal(audit_signer_new("gateway.example/\xc3\xa9t\xc3\xa9", seed, &s), 0);
	audit_signer_free(s);
}

static void test_note_sign_refusals(void **state)
{
	(void)state;
	struct audit_signer *s = kat_signer();
	char out[AUDIT_NOTE_MAX + 512];
	const char *reason;
	struct {
		const char *body;
		const char *reason;
	} cases[] = {
	    {"", "note text is empty"},
	    {"no newline", "note text does not end in a newline"},
	    {"\n", "note text has an empty line"},
	    {"a\n\nb\n", "note text has an empty line"},
	    {"a\rb\n", "note contains a control character"},
	    {"a\xff\n", "note is not valid UTF-8"},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		reason = NULL;
		assert_int_equal(audit_note_sign(s, cases[i].body, strlen(cases[i].body), out,
		                                 sizeof(out), NULL, &reason),
		                 ISG_ERR_INVALID);
		assert_string_equal(reason, cases[i].reason);
	}
	static char body[AUDIT_NOTE_MAX + 2];
	memset(body, 'b', sizeof(body));
	for (size_t i = 99; i < sizeof(body); i += 100)
		body[i] = '\n';
	body[AUDIT_NOTE_MAX - 1] = '\n';
	assert_int_equal(audit_note_sign(s, body, AUDIT_NOTE_MAX, out, sizeof(out), NULL, &reason),
	                 ISG_ERR_TOO_BIG);
	assert_string_equal(reason, "signed note would be too long");
	body[AUDIT_NOTE_MAX] = '\n';
	assert_int_equal(
	    audit_note_sign(s, body, AUDIT_NOTE_MAX + 1, out, sizeof(out), NULL, &reason),
	    ISG_ERR_INVALID);
	/* The longest body that can be signed verifies. */
	size_t room = AUDIT_NOTE_MAX - (1 + 4 + strlen("PeterNeumann") + 1 + 92 + 1);
	body[room - 1] = '\n';
	size_t len;
	assert_int_equal(audit_note_sign(s, body, room, out, sizeof(out), &len, &reason), 0);
	assert_int_equal(len, AUDIT_NOTE_MAX);
	struct audit_verifier v;
	kat_verifier(&v);
	size_t body_len;
	assert_int_equal(audit_note_verify(&v, out, len, &body_len, &reason), 0);
	assert_int_equal(body_len, room);
	audit_signer_free(s);
}

/* --- checkpoints --------------------------------------------------------- */

static int parse_cp(const char *body, struct audit_checkpoint *c, const char **reason)
{
	*reason = NULL;
	return audit_checkpoint_parse(body, strlen(body), c, reason);
}

static void test_checkpoint_format_parse(void **state)
{
	(void)state;
	struct audit_checkpoint c = {.origin = "isg.example.nhs.uk/audit", .size = 8}, d;
	unhex(ct_roots[7], c.root, H);
	char body[AUDIT_CHECKPOINT_MAX + 1];
	size_t len;
	assert_int_equal(audit_checkpoint_format(&c, body, sizeof(body), &len), 0);
	assert_string_equal(body, "isg.example.nhs.uk/audit\n8\n"
	                          "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n");
	assert_int_equal(len, strlen(body));
	assert_int_equal(audit_checkpoint_format(&c, body, len, &len), ISG_ERR_TOO_BIG);
	const char *reason;
	assert_int_equal(audit_checkpoint_format(&c, body, sizeof(body), &len), 0);
	assert_int_equal(parse_cp(body, &d, &reason), 0);
	assert_string_equal(d.origin, c.origin);
	assert_int_equal(d.size, 8);
	assert_memory_equal(d.root, c.root, H);

	/* The longest checkpoint fits AUDIT_CHECKPOINT_MAX. */
	memset(c.origin, 'o', AUDIT_NAME_MAX);
	c.origin[AUDIT_NAME_MAX] = '\0';
	c.size = UINT64_MAX;
	assert_int_equal(audit_checkpoint_format(&c, body, sizeof(body), &len), 0);
	assert_int_equal(len, AUDIT_CHECKPOINT_MAX);
	assert_int_equal(parse_cp(body, &d, &reason), 0);
	assert_int_equal(d.size, UINT64_MAX);
	assert_string_equal(d.origin, c.origin);

	struct audit_checkpoint bad = {.origin = "has space"};
	assert_int_equal(audit_checkpoint_format(&bad, body, sizeof(body), &len), ISG_ERR_INVALID);
	bad.origin[0] = '\0';
	assert_int_equal(audit_checkpoint_format(&bad, body, sizeof(body), &len), ISG_ERR_INVALID);

	static const char root[] = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n";
	struct {
		const char *origin, *size, *root;
		uint64_t want; /* UINT64_MAX - 1: refused */
	} cases[] = {
	    {"o", "0", root, 0},
	    {"o", "1", root, 1},
	    {"o", "18446744073709551615", root, UINT64_MAX},
	    {"o", "18446744073709551616", root, UINT64_MAX - 1},
	    {"o", "99999999999999999999", root, UINT64_MAX - 1},
	    {"o", "100000000000000000000", root, UINT64_MAX - 1},
	    {"o", "00", root, UINT64_MAX - 1},
	    {"o", "01", root, UINT64_MAX - 1},
	    {"o", "-1", root, UINT64_MAX - 1},
	    {"o", "+1", root, UINT64_MAX - 1},
	    {"o", " 1", root, UINT64_MAX - 1},
	    {"o", "1 ", root, UINT64_MAX - 1},
	    {"o", "", root, UINT64_MAX - 1},
	    {"o", "0x10", root, UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQy==\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=X\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg= \n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyg=\n", UINT64_MAX - 1},
	    {"o", "1", "\n", UINT64_MAX - 1},
	    /* Bytes >= 0x80 (libsodium 1.0.18 alone would take them as base64 digits). */
	    {"o", "1", "XcnaeacGWamtVZy3A\x9c\xc0ZoqudgjqtL0lgz+Nw7/RgQyg=\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3A\xc3\xa9ZoqudgjqtL0lgz+Nw7/RgQyg=\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\nextension\n", UINT64_MAX - 1},
	    {"o", "1", "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\r\n", UINT64_MAX - 1},
	    {"o", "1\r", root, UINT64_MAX - 1},
	    {"", "1", root, UINT64_MAX - 1},
	    {"o o", "1", root, UINT64_MAX - 1},
	    {"o+o", "1", root, UINT64_MAX - 1},
	    {"o\r", "1", root, UINT64_MAX - 1},
	    {"\xff", "1", root, UINT64_MAX - 1},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char text[600];
		snprintf(text, sizeof(text), "%s\n%s\n%s", cases[i].origin, cases[i].size,
		         cases[i].root);
		int rc = parse_cp(text, &d, &reason);
		if ((rc == 0) != (cases[i].want != UINT64_MAX - 1))
			print_error("case %zu: %d %s\n", i, rc, reason ? reason : "accepted");
		if (cases[i].want == UINT64_MAX - 1) {
			assert_int_equal(rc, ISG_ERR_PARSE);
			assert_non_null(reason);
		} else {
			assert_int_equal(rc, 0);
			assert_int_equal(d.size, cases[i].want);
			/* What parses formats back to the same bytes. */
			char again[AUDIT_CHECKPOINT_MAX + 1];
			assert_int_equal(audit_checkpoint_format(&d, again, sizeof(again), NULL),
			                 0);
			assert_string_equal(again, text);
		}
	}
	assert_int_equal(parse_cp("o\n1\n", &d, &reason), ISG_ERR_PARSE);
	assert_string_equal(reason, "checkpoint has fewer than three lines");
	assert_int_equal(parse_cp("", &d, &reason), ISG_ERR_PARSE);
	assert_int_equal(
	    parse_cp("o\n1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\nx\n", &d, &reason),
	    ISG_ERR_PARSE);
	assert_string_equal(reason, "checkpoint has extension lines");
}

static void test_checkpoint_sign_open(void **state)
{
	(void)state;
	uint8_t seed[AUDIT_SEED_LEN];
	for (unsigned i = 0; i < AUDIT_SEED_LEN; i++)
		seed[i] = (uint8_t)i;
	struct audit_signer *s = NULL;
	assert_int_equal(audit_signer_new("isg.example/audit", seed, &s), 0);
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(s, vkey);
	struct audit_verifier v;
	assert_int_equal(audit_verifier_parse(vkey, strlen(vkey), &v, NULL), 0);

	struct audit_checkpoint c = {.origin = "isg.example/audit", .size = 5}, d;
	unhex(ct_roots[4], c.root, H);
	char note[AUDIT_NOTE_MAX];
	size_t len;
	const char *reason = NULL;
	assert_int_equal(audit_checkpoint_sign(s, &c, note, sizeof(note), &len, &reason), 0);
	assert_int_equal(audit_checkpoint_open(&v, note, len, &d, &reason), 0);
	assert_memory_equal(&c, &d, sizeof(c));
	assert_non_null(
	    strstr(note, "isg.example/audit\n5\nTju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=\n\n"
	                 "\xe2\x80\x94 isg.example/audit "));

	/* A forged size or root, or a rollback to a smaller tree, breaks the signature. */
	char forged[AUDIT_NOTE_MAX];
	memcpy(forged, note, len + 1);
	forged[strlen("isg.example/audit\n")] = '4';
	assert_int_equal(audit_checkpoint_open(&v, forged, len, &d, &reason), ISG_ERR_CRYPTO);
	assert_int_equal(d.size, 0);

	/* A correctly signed note that is not a checkpoint. */
	assert_int_equal(audit_note_sign(s, "hello\n", 6, note, sizeof(note), &len, NULL), 0);
	assert_int_equal(audit_checkpoint_open(&v, note, len, &d, &reason), ISG_ERR_PARSE);
	assert_string_equal(reason, "checkpoint has fewer than three lines");

	struct audit_checkpoint bad = {.origin = "bad origin"};
	assert_int_equal(audit_checkpoint_sign(s, &bad, note, sizeof(note), &len, &reason),
	                 ISG_ERR_INVALID);
	audit_signer_free(s);
}

/*
 * The worked example of docs/audit-format.md: the key with seed 00 01 .. 1f
 * signs the tree of the entries "entry 0" .. "entry 4". The same bytes were
 * verified independently with Python (hashlib and cryptography's Ed25519).
 */
static void test_checkpoint_known_answer(void **state)
{
	(void)state;
	uint8_t seed[AUDIT_SEED_LEN];
	for (unsigned i = 0; i < AUDIT_SEED_LEN; i++)
		seed[i] = (uint8_t)i;
	struct audit_signer *s = NULL;
	assert_int_equal(audit_signer_new("isg.example/audit", seed, &s), 0);
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(s, vkey);
	assert_string_equal(vkey, "isg.example/audit+ae0a0836+"
	                          "AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4");

	struct audit_tree t;
	audit_tree_init(&t);
	for (int i = 0; i < 5; i++) {
		char entry[16];
		uint8_t h[H];
		int n = snprintf(entry, sizeof(entry), "entry %d", i);
		audit_leaf_hash((const uint8_t *)entry, (size_t)n, h);
		assert_int_equal(audit_tree_append(&t, h), 0);
	}
	struct audit_checkpoint c = {.origin = "isg.example/audit", .size = audit_tree_size(&t)};
	audit_tree_root(&t, c.root);
	char note[1024];
	assert_int_equal(audit_checkpoint_sign(s, &c, note, sizeof(note), NULL, NULL), 0);
	assert_string_equal(note,
	                    "isg.example/audit\n"
	                    "5\n"
	                    "fKo0Xb2JKmZFTWxlEuo8PqPw0+whvj/C4jdXBf049nI=\n"
	                    "\n"
	                    "\xe2\x80\x94 isg.example/audit "
	                    "rgoINlhIUajt0qCjwrSK+emW+JWuOxWd+g63bz1sgepw2WXGr4sQUB2118ScyM87dneN0"
	                    "dfPCtAxy+wif5Uen93SCgA=\n");
	audit_signer_free(s);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hashes),
	    cmocka_unit_test(test_ct_roots),
	    cmocka_unit_test(test_tree_bounds),
	    cmocka_unit_test(test_inclusion_all),
	    cmocka_unit_test(test_consistency_all),
	    cmocka_unit_test(test_prover_all),
	    cmocka_unit_test(test_prover_large),
	    cmocka_unit_test(test_proof_extremes),
	    cmocka_unit_test(test_transparency_dev_vectors),
	    cmocka_unit_test(test_note_known_answer),
	    cmocka_unit_test(test_note_tampered),
	    cmocka_unit_test(test_note_malformed),
	    cmocka_unit_test(test_keys),
	    cmocka_unit_test(test_note_sign_refusals),
	    cmocka_unit_test(test_checkpoint_format_parse),
	    cmocka_unit_test(test_checkpoint_sign_open),
	    cmocka_unit_test(test_checkpoint_known_answer),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
