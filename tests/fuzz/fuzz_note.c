/*
 * libFuzzer harness for the audit module's parsers: verifier and signer key
 * text, signed notes, checkpoint bodies, and the Merkle tree's serialised
 * form. The first byte picks the parser, the rest is its input.
 * Checks, beyond "no crash": an accepted checkpoint formats back to the
 * same bytes; a verified note's text is a prefix ending in a newline and
 * the note never verifies under another key; what the signer accepts to
 * sign, the verifier accepts with the same text; a parsed key round-trips.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "audit/audit.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The golang.org/x/mod sumdb/note test key (tests/unit/test_audit.c). */
static const char kat_skey[] =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";

static struct audit_signer *signer, *other;
static struct audit_verifier verifier, other_verifier;

static void setup(void)
{
	if (signer)
		return;
	static const uint8_t seed[AUDIT_SEED_LEN] = {9, 9, 9};
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	if (audit_signer_from_text(kat_skey, strlen(kat_skey), &signer, NULL) != 0 ||
	    audit_signer_new("PeterNeumann", seed, &other) != 0)
		abort();
	audit_signer_verifier_key(signer, vkey);
	if (audit_verifier_parse(vkey, strlen(vkey), &verifier, NULL) != 0)
		abort();
	audit_signer_verifier_key(other, vkey);
	if (audit_verifier_parse(vkey, strlen(vkey), &other_verifier, NULL) != 0)
		abort();
}

static void check_reason(int rc, const char *reason)
{
	if ((rc == 0) != (reason == NULL))
		abort();
}

static void fuzz_verifier_key(const char *in, size_t len)
{
	struct audit_verifier v;
	const char *reason = NULL;
	int rc = audit_verifier_parse(in, len, &v, &reason);
	check_reason(rc, reason);
	if (rc)
		return;
	/* Rebuild the text: it differs from the input at most in the hex case. */
	size_t name_len = strlen(v.name);
	if (name_len == 0 || name_len > AUDIT_NAME_MAX || len < name_len + 10 ||
	    in[name_len] != '+' || memcmp(in, v.name, name_len) != 0)
		abort();
	char hex[9];
	hex_encode(hex, v.key_hash, AUDIT_KEY_HASH_LEN);
	if (strncasecmp(in + name_len + 1, hex, 8) != 0)
		abort();
}

static void fuzz_signer_key(const char *in, size_t len)
{
	struct audit_signer *s = NULL;
	const char *reason = NULL;
	int rc = audit_signer_from_text(in, len, &s, &reason);
	check_reason(rc, reason);
	if (rc) {
		if (s)
			abort();
		return;
	}
	char vkey[AUDIT_VERIFIER_KEY_MAX], note[512];
	struct audit_verifier v;
	size_t note_len, body_len;
	audit_signer_verifier_key(s, vkey);
	if (audit_verifier_parse(vkey, strlen(vkey), &v, NULL) != 0 ||
	    audit_note_sign(s, "x\n", 2, note, sizeof(note), &note_len, NULL) != 0 ||
	    audit_note_verify(&v, note, note_len, &body_len, NULL) != 0 || body_len != 2)
		abort();
	audit_signer_free(s);
}

static void fuzz_note_verify(const char *in, size_t len)
{
	size_t body_len = 0;
	const char *reason = NULL;
	int rc = audit_note_verify(&verifier, in, len, &body_len, &reason);
	check_reason(rc, reason);
	if (rc == 0) {
		if (body_len == 0 || body_len >= len || in[body_len - 1] != '\n' ||
		    in[body_len] != '\n')
			abort();
		/* Same name, other key: never verifies. */
		if (audit_note_verify(&other_verifier, in, len, &body_len, NULL) == 0)
			abort();
	}
	struct audit_checkpoint c;
	reason = NULL;
	rc = audit_checkpoint_open(&verifier, in, len, &c, &reason);
	check_reason(rc, reason);
}

static void fuzz_checkpoint(const char *in, size_t len)
{
	struct audit_checkpoint c;
	const char *reason = NULL;
	int rc = audit_checkpoint_parse(in, len, &c, &reason);
	check_reason(rc, reason);
	if (rc)
		return;
	char out[AUDIT_CHECKPOINT_MAX + 1];
	size_t out_len;
	if (audit_checkpoint_format(&c, out, sizeof(out), &out_len) != 0 || out_len != len ||
	    memcmp(out, in, len) != 0)
		abort();
}

static void fuzz_sign(const char *in, size_t len)
{
	static char note[AUDIT_NOTE_MAX + 1];
	size_t note_len = 0, body_len = 0;
	const char *reason = NULL;
	int rc = audit_note_sign(signer, in, len, note, sizeof(note), &note_len, &reason);
	check_reason(rc, reason);
	if (rc)
		return;
	if (note_len <= len || memcmp(note, in, len) != 0 || note[note_len] != '\0' ||
	    audit_note_verify(&verifier, note, note_len, &body_len, NULL) != 0 || body_len != len)
		abort();
	/* The body parses as a checkpoint exactly when the signed note opens as one. */
	struct audit_checkpoint a, b;
	int parsed = audit_checkpoint_parse(in, len, &a, NULL);
	int opened = audit_checkpoint_open(&verifier, note, note_len, &b, NULL);
	if (parsed != opened || (parsed == 0 && memcmp(&a, &b, sizeof(a)) != 0))
		abort();
}

static void fuzz_tree(const uint8_t *in, size_t len)
{
	struct audit_tree t;
	if (audit_tree_decode(&t, in, len) != 0)
		return;
	uint8_t enc[AUDIT_TREE_ENCODED_MAX], root[AUDIT_HASH_LEN];
	if (audit_tree_encode(&t, enc) != len || memcmp(enc, in, len) != 0)
		abort();
	audit_tree_root(&t, root);
	uint8_t leaf[AUDIT_HASH_LEN] = {0};
	(void)audit_tree_append(&t, leaf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	setup();
	const char *in = (const char *)data + 1;
	size_t len = size - 1;
	switch (data[0] % 6) {
	case 0:
		fuzz_verifier_key(in, len);
		break;
	case 1:
		fuzz_signer_key(in, len);
		break;
	case 2:
		fuzz_note_verify(in, len);
		break;
	case 3:
		fuzz_checkpoint(in, len);
		break;
	case 4:
		fuzz_sign(in, len);
		break;
	default:
		fuzz_tree(data + 1, len);
		break;
	}
	return 0;
}
