/*
 * audit: the cryptographic core of the tamper-evident audit log (DESIGN.md
 * section 8). Pure functions over bytes: no I/O, no global state, no
 * logging. Two parts:
 *
 *  - a Merkle tree per RFC 6962 / RFC 9162 section 2.1 over the audit
 *    entries: leaf and node hashes, a compact incremental tree, roots,
 *    inclusion and consistency proofs (generation and verification);
 *  - signed checkpoints: the C2SP tlog-checkpoint body signed as a C2SP
 *    signed note with Ed25519, byte-compatible with golang.org/x/mod
 *    sumdb/note and transparency-dev tooling.
 *
 * The exact formats, so that anyone can verify the log without this code,
 * are in docs/audit-format.md.
 *
 * Errors: every function returns 0 or a negative enum isg_err. Where a
 * function takes `const char **reason` (may be NULL), a failure sets it to a
 * static, lowercase string that never quotes the input.
 */
#ifndef ISG_AUDIT_H
#define ISG_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUDIT_HASH_LEN 32
/*
 * Longest proof, in hashes. An inclusion proof has at most ceil(log2(size))
 * hashes (64 for any 64-bit size); a consistency proof up to a tree of 2^63
 * entries has at most 64. A consistency proof that would need more (only
 * for size2 > 2^63) is refused with ISG_ERR_LIMIT.
 */
#define AUDIT_PROOF_MAX 64
/* Right-edge subtree hashes of a compact tree: one per set bit of its size. */
#define AUDIT_FRONTIER_MAX 64

/* --- Merkle tree hashing (RFC 9162 section 2.1.1) ------------------------ */

/* SHA-256(0x00 || entry). */
void audit_leaf_hash(const uint8_t *entry, size_t len, uint8_t out[static AUDIT_HASH_LEN]);
/* SHA-256(0x01 || left || right). out may alias left or right. */
void audit_node_hash(const uint8_t left[static AUDIT_HASH_LEN],
                     const uint8_t right[static AUDIT_HASH_LEN],
                     uint8_t out[static AUDIT_HASH_LEN]);
/* The root of the empty tree: SHA-256 of the empty string. */
void audit_empty_root(uint8_t out[static AUDIT_HASH_LEN]);

/*
 * A compact incremental tree: the hashes of the perfect subtrees along the
 * right edge of the tree of `size` leaves (one per set bit of size, the
 * largest, leftmost one first), which is all that is needed to append a
 * leaf in O(log n) and to compute the current root. Plain data: copy it
 * freely. Persist it with audit_tree_encode, or rebuild it by appending
 * every leaf hash again from the start.
 */
struct audit_tree {
	uint64_t size;
	uint8_t frontier[AUDIT_FRONTIER_MAX][AUDIT_HASH_LEN];
};

void audit_tree_init(struct audit_tree *t);
/* Append one leaf hash (from audit_leaf_hash). ISG_ERR_LIMIT when size is UINT64_MAX. */
int audit_tree_append(struct audit_tree *t, const uint8_t leaf_hash[static AUDIT_HASH_LEN])
    __attribute__((warn_unused_result));
/* The root of the tree as it is now (audit_empty_root when empty). */
void audit_tree_root(const struct audit_tree *t, uint8_t out[static AUDIT_HASH_LEN]);
uint64_t audit_tree_size(const struct audit_tree *t);

/*
 * Serialised form: the size as 8 bytes big-endian, then popcount(size)
 * hashes of 32 bytes, leftmost first. Always at most AUDIT_TREE_ENCODED_MAX
 * bytes; audit_tree_encode returns the length written.
 */
#define AUDIT_TREE_ENCODED_MAX (8 + AUDIT_FRONTIER_MAX * AUDIT_HASH_LEN)
size_t audit_tree_encode(const struct audit_tree *t, uint8_t out[static AUDIT_TREE_ENCODED_MAX]);
/* ISG_ERR_PARSE unless len is exactly 8 + 32 * popcount(size). */
int audit_tree_decode(struct audit_tree *t, const uint8_t *in, size_t len)
    __attribute__((warn_unused_result));

/*
 * MTH of the n leaf hashes leaves[0..n) (RFC 9162 section 2.1.1),
 * iteratively with O(log n) memory. n == 0 gives the empty root.
 */
int audit_root_from_leaves(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n,
                           uint8_t out[static AUDIT_HASH_LEN]) __attribute__((warn_unused_result));

/* --- proofs (RFC 9162 sections 2.1.3 and 2.1.4) -------------------------- */

/*
 * Inclusion proof PATH(index, D[n]) for leaf `index` of the tree of the n
 * leaf hashes leaves[0..n): *proof_len hashes, lowest level first, into
 * proof. ISG_ERR_INVALID unless index < n. Costs O(n) hashing; audit_prover
 * below gives the same proof without holding the n hashes.
 */
int audit_inclusion_proof(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n, uint64_t index,
                          uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN], size_t *proof_len)
    __attribute__((warn_unused_result));

/*
 * The same inclusion proof, and the root, computed while the n leaf hashes
 * stream past once, in order, in O(log n) memory: for a log too large to
 * hold one hash per entry. The proof's hashes are the roots of subtrees
 * that, with leaf index, partition the leaves [0, n), and their ranges
 * depend on (index, n) alone; audit_prover_init computes them, and each
 * leaf goes to the compact tree of the whole and to that of its range.
 * Plain data (a few kilobytes, on the stack is fine).
 */
struct audit_prover {
	uint64_t index, size;
	size_t len;                    /* proof hashes */
	size_t next;                   /* the range being filled, in leaf order */
	uint64_t end[AUDIT_PROOF_MAX]; /* one past each range's last leaf, in leaf order */
	uint8_t slot[AUDIT_PROOF_MAX]; /* each range's place in the proof */
	struct audit_tree tree, range; /* every leaf so far; this range's so far */
	uint8_t leaf[AUDIT_HASH_LEN];  /* leaf index's hash, once seen */
	uint8_t proof[AUDIT_PROOF_MAX][AUDIT_HASH_LEN];
};

/* Prepare the proof of leaf index in a tree of size leaves. ISG_ERR_INVALID unless index < size. */
int audit_prover_init(struct audit_prover *p, uint64_t size, uint64_t index)
    __attribute__((warn_unused_result));
/* The next leaf hash, leaf 0 first. ISG_ERR_LIMIT past size leaves. */
int audit_prover_append(struct audit_prover *p, const uint8_t leaf_hash[static AUDIT_HASH_LEN])
    __attribute__((warn_unused_result));
/*
 * Once all size leaves were appended (ISG_ERR_INVALID before): the root of
 * the tree, the proof exactly as audit_inclusion_proof gives it, and the
 * hash of leaf index. Verify the proof against the trusted root with
 * audit_verify_inclusion: this only computes.
 */
int audit_prover_finish(const struct audit_prover *p, uint8_t root[static AUDIT_HASH_LEN],
                        uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN], size_t *proof_len,
                        uint8_t leaf_hash[static AUDIT_HASH_LEN])
    __attribute__((warn_unused_result));

/*
 * Verify an inclusion proof (RFC 9162 section 2.1.3.2): that leaf_hash is
 * leaf `index` of the tree of `size` leaves whose root is `root`.
 * 0 when it is; ISG_ERR_INVALID when index >= size or proof_len is not
 * exactly the length a proof for (index, size) has; ISG_ERR_CORRUPT when
 * the hashes do not lead to root.
 */
int audit_verify_inclusion(uint64_t index, uint64_t size,
                           const uint8_t leaf_hash[static AUDIT_HASH_LEN],
                           const uint8_t (*proof)[AUDIT_HASH_LEN], size_t proof_len,
                           const uint8_t root[static AUDIT_HASH_LEN])
    __attribute__((warn_unused_result));

/*
 * Consistency proof PROOF(n1, D[n2]) that the tree of the first n1 leaves
 * is a prefix of the tree of the n2 leaf hashes leaves[0..n2).
 * ISG_ERR_INVALID unless 0 < n1 <= n2; n1 == n2 gives an empty proof.
 */
int audit_consistency_proof(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n2, uint64_t n1,
                            uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN],
                            size_t *proof_len) __attribute__((warn_unused_result));

/*
 * Verify a consistency proof (RFC 9162 section 2.1.4.2) between the tree of
 * size1 leaves with root1 and the tree of size2 leaves with root2.
 * As in transparency-dev/merkle:
 *  - size1 > size2: ISG_ERR_INVALID;
 *  - size1 == 0: ISG_ERR_INVALID (a proof from the empty tree proves
 *    nothing; a caller holding an empty-tree checkpoint has nothing to check);
 *  - size1 == size2: the proof must be empty (ISG_ERR_INVALID) and the
 *    roots equal (ISG_ERR_CORRUPT);
 *  - otherwise proof_len must be exactly right (ISG_ERR_INVALID), and the
 *    proof must lead to both roots (ISG_ERR_CORRUPT).
 */
int audit_verify_consistency(uint64_t size1, uint64_t size2,
                             const uint8_t root1[static AUDIT_HASH_LEN],
                             const uint8_t root2[static AUDIT_HASH_LEN],
                             const uint8_t (*proof)[AUDIT_HASH_LEN], size_t proof_len)
    __attribute__((warn_unused_result));

/* --- signed notes (C2SP signed-note, Ed25519) ---------------------------- */

/*
 * Key names and checkpoint origins: 1..AUDIT_NAME_MAX bytes of UTF-8, no
 * control characters, no Unicode white space, no '+'.
 */
#define AUDIT_NAME_MAX 255
#define AUDIT_SEED_LEN 32   /* Ed25519 seed (libsodium crypto_sign_seed_keypair) */
#define AUDIT_PUBKEY_LEN 32 /* Ed25519 public key */
#define AUDIT_KEY_HASH_LEN 4
/* "<name>+<8 hex>+<44 base64>" and its NUL. */
#define AUDIT_VERIFIER_KEY_MAX (AUDIT_NAME_MAX + 1 + 8 + 1 + 44 + 1)
/* Bounds on a note read from anywhere: total bytes, bytes per line, signature lines. */
#define AUDIT_NOTE_MAX 16384
#define AUDIT_NOTE_LINE_MAX 1024
#define AUDIT_NOTE_SIGS_MAX 32

/* An Ed25519 note signer; the secret key lives in sodium_malloc'd memory. */
struct audit_signer;

/*
 * A signer for key `name` from a 32-byte Ed25519 seed (the content of
 * audit-signing.key). The seed is not kept; the caller wipes its copy.
 * ISG_ERR_INVALID for a bad name, ISG_ERR_NOMEM.
 */
int audit_signer_new(const char *name, const uint8_t seed[static AUDIT_SEED_LEN],
                     struct audit_signer **out) __attribute__((warn_unused_result));
/*
 * A signer from sumdb/note signer key text
 * "PRIVATE+KEY+<name>+<8 hex key hash>+<base64(0x01 || seed)>" (len bytes,
 * no trailing newline). ISG_ERR_PARSE for malformed text, ISG_ERR_INVALID
 * when the key hash does not match; decoded key bytes are wiped.
 */
int audit_signer_from_text(const char *text, size_t len, struct audit_signer **out,
                           const char **reason) __attribute__((warn_unused_result));
/*
 * A signer whose private key lives elsewhere (isgd's key process): sign
 * makes the Ed25519 signature of msg, 0 or a negative isg_err. public_key
 * must be the key sign signs with; ctx must outlive the signer.
 */
#define AUDIT_SIG_LEN 64
typedef int (*audit_sign_fn)(void *ctx, const uint8_t *msg, size_t len,
                             uint8_t sig[static AUDIT_SIG_LEN]);
int audit_signer_remote(const char *name, const uint8_t public_key[static AUDIT_PUBKEY_LEN],
                        audit_sign_fn sign, void *ctx, struct audit_signer **out)
    __attribute__((warn_unused_result));
/* Wipe and free; NULL ok. */
void audit_signer_free(struct audit_signer *s);
/* The bare Ed25519 signature of msg (what a note's signature line carries). */
int audit_signer_sign(const struct audit_signer *s, const uint8_t *msg, size_t len,
                      uint8_t sig[static AUDIT_SIG_LEN]) __attribute__((warn_unused_result));
const char *audit_signer_name(const struct audit_signer *s);
void audit_signer_public_key(const struct audit_signer *s, uint8_t out[static AUDIT_PUBKEY_LEN]);
/* The verifier key text "<name>+<hex8>+<base64(0x01 || public key)>", NUL-terminated. */
void audit_signer_verifier_key(const struct audit_signer *s,
                               char out[static AUDIT_VERIFIER_KEY_MAX]);

/*
 * Sign a note text (body): it must be 1..AUDIT_NOTE_MAX bytes of UTF-8
 * lines, each ending in '\n', none empty, none longer than
 * AUDIT_NOTE_LINE_MAX, no control characters but '\n'. Writes
 * body "\n" "— <name> <base64(key hash || signature)>\n" and a NUL to out;
 * *note_len (may be NULL) gets the length without the NUL.
 * ISG_ERR_INVALID for a bad body, ISG_ERR_TOO_BIG when out is too small.
 */
int audit_note_sign(const struct audit_signer *s, const char *body, size_t len, char *out,
                    size_t size, size_t *note_len, const char **reason)
    __attribute__((warn_unused_result));

/* A parsed verifier key. */
struct audit_verifier {
	char name[AUDIT_NAME_MAX + 1];
	uint8_t key_hash[AUDIT_KEY_HASH_LEN];
	uint8_t public_key[AUDIT_PUBKEY_LEN];
};

/*
 * Parse verifier key text "<name>+<hex8>+<base64(0x01 || public key)>"
 * (len bytes, no trailing newline). ISG_ERR_PARSE for malformed text or an
 * algorithm other than Ed25519, ISG_ERR_INVALID when the key hash does not
 * match name and key.
 */
int audit_verifier_parse(const char *text, size_t len, struct audit_verifier *out,
                         const char **reason) __attribute__((warn_unused_result));

/*
 * Verify a signed note (len bytes) against one verifier key. The note is
 * text, a blank line, and one or more signature lines; signature lines of
 * other keys (other name or key hash) are parsed but ignored, as the spec
 * requires. On success *body_len gets the length of the signed text, which
 * is note[0 .. *body_len) and ends in '\n'.
 * Refuses with: ISG_ERR_TOO_BIG (over AUDIT_NOTE_MAX), ISG_ERR_PARSE
 * (invalid UTF-8, control characters, a line over AUDIT_NOTE_LINE_MAX, no
 * blank line before the signatures, a malformed signature line, bad
 * base64, a signature of the wrong length, over AUDIT_NOTE_SIGS_MAX
 * signatures), ISG_ERR_NOT_FOUND (no signature by this key),
 * ISG_ERR_CRYPTO (a signature by this key does not verify).
 */
int audit_note_verify(const struct audit_verifier *v, const char *note, size_t len,
                      size_t *body_len, const char **reason) __attribute__((warn_unused_result));

/* --- checkpoints (C2SP tlog-checkpoint) ---------------------------------- */

/* Origin line, tree size in decimal, base64 root, and the newlines. */
#define AUDIT_CHECKPOINT_MAX (AUDIT_NAME_MAX + 1 + 20 + 1 + 44 + 1)

struct audit_checkpoint {
	char origin[AUDIT_NAME_MAX + 1];
	uint64_t size;
	uint8_t root[AUDIT_HASH_LEN];
};

/*
 * The checkpoint body "<origin>\n<size>\n<base64 root>\n" into out (with a
 * NUL; AUDIT_CHECKPOINT_MAX + 1 bytes always suffice); *len (may be NULL)
 * gets its length. ISG_ERR_INVALID for a bad origin, ISG_ERR_TOO_BIG.
 */
int audit_checkpoint_format(const struct audit_checkpoint *c, char *out, size_t size, size_t *len)
    __attribute__((warn_unused_result));

/*
 * Parse a checkpoint body strictly: exactly the three lines above, origin a
 * valid name, size in decimal without sign or leading zeros ("0" alone),
 * at most UINT64_MAX, root canonical base64 of exactly 32 bytes.
 * Extension lines are refused: ISG never writes them. ISG_ERR_PARSE.
 */
int audit_checkpoint_parse(const char *body, size_t len, struct audit_checkpoint *out,
                           const char **reason) __attribute__((warn_unused_result));

/* Format and sign: the signed checkpoint note into out (see audit_note_sign). */
int audit_checkpoint_sign(const struct audit_signer *s, const struct audit_checkpoint *c, char *out,
                          size_t size, size_t *note_len, const char **reason)
    __attribute__((warn_unused_result));

/*
 * Verify a signed checkpoint note with audit_note_verify, then parse its
 * body. The caller still compares out->origin with the origin it expects.
 */
int audit_checkpoint_open(const struct audit_verifier *v, const char *note, size_t len,
                          struct audit_checkpoint *out, const char **reason)
    __attribute__((warn_unused_result));

#endif
