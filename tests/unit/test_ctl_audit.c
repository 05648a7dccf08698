/*
 * isgctl audit: the JSON reader for audit entries, the streaming
 * consistency proofs (cross-checked with gateway/audit's generator for
 * every pair of sizes up to 70 and verified with its verifier), and the
 * commands end to end on logs built here by hand as the storage contract
 * says (docs/audit.md), signed with a test key: a good log verifies, and
 * each kind of tampering is reported. The scenario test
 * tests/scenario/test_audit.py does the same to a log written by isgd.
 *
 * The commands run as the isgctl binary next to this test's build
 * (../bin/isgctl); those tests are skipped when it has not been built.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>
#include <sqlite3.h>

#include "ctl/cmd_audit.h"
/* The reader and the proof builder are compiled in: they use only util and audit. */
#include "ctl/cmd_audit_json.c"
#include "ctl/cmd_audit_tree.c"

#define H AUDIT_HASH_LEN
#define ORIGIN "test.isg.example/audit"

/* ---- JSON reader ---- */

static void test_json_values(void **state)
{
	(void)state;
	struct aj_doc d;
	aj_doc_init(&d);
	const char *text =
	    " {\"a\":1,\"b\":[true,false,null,-2.5e3,\"x\"],\"c\":{\"d\":\"\\u00e9\\n"
	    "\\ud83d\\ude00\\\"\"},\"\":0} ";
	const char *reason = NULL;
	assert_int_equal(aj_parse(&d, text, strlen(text), &reason), 0);
	const struct aj_node *root = aj_root(&d);
	assert_int_equal(root->type, AJ_OBJECT);
	uint64_t v = 0;
	assert_true(aj_uint(aj_member(&d, root, "a"), &v));
	assert_int_equal(v, 1);
	const struct aj_node *b = aj_member(&d, root, "b");
	assert_int_equal(b->type, AJ_ARRAY);
	const struct aj_node *e = aj_first(&d, b);
	assert_int_equal(e->type, AJ_TRUE);
	e = aj_next(&d, e);
	assert_int_equal(e->type, AJ_FALSE);
	e = aj_next(&d, e);
	assert_int_equal(e->type, AJ_NULL);
	e = aj_next(&d, e);
	assert_int_equal(e->type, AJ_NUMBER);
	assert_false(aj_uint(e, &v));
	assert_int_equal(e->len, 6);
	e = aj_next(&d, e);
	assert_string_equal(e->str, "x");
	assert_null(aj_next(&d, e));
	const struct aj_node *c = aj_member(&d, root, "c");
	assert_string_equal(aj_string(&d, c, "d"), "\xc3\xa9\n\xf0\x9f\x98\x80\"");
	assert_non_null(aj_member(&d, root, ""));
	assert_null(aj_member(&d, root, "zz"));
	assert_null(aj_string(&d, root, "a")); /* a number, not a string */
	/* The doc is reusable. */
	assert_int_equal(aj_parse(&d, "[]", 2, &reason), 0);
	assert_int_equal(aj_root(&d)->type, AJ_ARRAY);
	assert_null(aj_first(&d, aj_root(&d)));
	aj_doc_release(&d);
}

static void test_json_refusals(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "",         "{",         "{\"a\"}",     "{\"a\":}",     "[1,]",        "[1 2]",
	    "01",       "1.",        "-",           "1e",           "tru",         "\"abc",
	    "\"\\x\"",  "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"",  "\"\\u0000\"", "{} {}",
	    "\"\x01\"", "\"\xff\"",  "{\"a\":1,}",  "[\"a\"\"b\"]",
	};
	struct aj_doc d;
	aj_doc_init(&d);
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		const char *reason = NULL;
		int rc = aj_parse(&d, bad[i], strlen(bad[i]), &reason);
		if (rc != ISG_ERR_PARSE)
			fail_msg("accepted bad JSON #%zu", i);
		assert_non_null(reason);
	}
	/* Depth is bounded, and the bound is exact. */
	char deep[2 * (AJ_DEPTH_MAX + 2) + 1];
	for (int depth = AJ_DEPTH_MAX + 1; depth <= AJ_DEPTH_MAX + 2; depth++) {
		memset(deep, '[', (size_t)depth);
		memset(deep + depth, ']', (size_t)depth);
		int rc = aj_parse(&d, deep, 2 * (size_t)depth, NULL);
		assert_int_equal(rc, depth <= AJ_DEPTH_MAX + 1 ? 0 : ISG_ERR_PARSE);
	}
	aj_doc_release(&d);
}

static void test_leaf_parse(void **state)
{
	(void)state;
	struct aj_doc d;
	aj_doc_init(&d);
	struct audit_leaf lf;
	const char *good = "{\"index\":42,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":"
	                   "{\"event\":\"message.accepted\",\"sender\":\"met-police\"}}";
	assert_int_equal(audit_leaf_parse(&d, good, strlen(good), &lf, NULL), 0);
	assert_int_equal(lf.index, 42);
	assert_string_equal(lf.at, "2026-11-23T15:04:05.123Z");
	assert_string_equal(lf.event, "message.accepted");
	assert_string_equal(aj_string(&d, lf.body, "sender"), "met-police");
	static const char *const bad[] = {
	    "[1]",
	    "{\"at\":\"2026-11-23T15:04:05.123Z\",\"index\":1,\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":\"x\"},\"y\":1}",
	    "{\"index\":-1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1.5,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1,\"at\":\"2026-11-23 15:04:05.123Z\",\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05Z\",\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":[]}",
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":1}}",
	    "{\"index\":99999999999999999999999,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{}}",
	    /* valid JSON, but a line break is no part of an entry isgd wrote */
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\n\"entry\":{\"event\":\"x\"}}",
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":\"x\"}}\r",
	    /* well formed, but no event isgd writes: an edit, perhaps holding a person's data */
	    ("{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":"
	     "{\"event\":\"okafor.9434765919\"}}"),
	    "{\"index\":1,\"at\":\"2026-11-23T15:04:05.123Z\",\"entry\":{\"event\":\"message\"}}",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		const char *reason = NULL;
		if (audit_leaf_parse(&d, bad[i], strlen(bad[i]), &lf, &reason) != ISG_ERR_PARSE)
			fail_msg("accepted bad leaf #%zu", i);
		assert_non_null(reason);
	}
	aj_doc_release(&d);
}

/* ---- consistency proofs from a frontier and the later leaves ---- */

static void test_consistency_streaming(void **state)
{
	(void)state;
	enum { N = 70 };
	uint8_t leaves[N][H];
	for (int i = 0; i < N; i++) {
		char e[16];
		int len = snprintf(e, sizeof(e), "entry %d", i);
		audit_leaf_hash((const uint8_t *)e, (size_t)len, leaves[i]);
	}
	for (uint64_t n1 = 1; n1 <= N; n1++) {
		struct audit_tree t1;
		audit_tree_init(&t1);
		for (uint64_t i = 0; i < n1; i++)
			assert_int_equal(audit_tree_append(&t1, leaves[i]), 0);
		uint8_t r1[H];
		audit_tree_root(&t1, r1);
		for (uint64_t n2 = n1; n2 <= N; n2++) {
			uint8_t want[AUDIT_PROOF_MAX][H], got[AUDIT_PROOF_MAX][H], r2[H];
			size_t nwant = 0, ngot = 0;
			assert_int_equal(audit_consistency_proof((const uint8_t(*)[H])leaves, n2,
			                                         n1, want, &nwant),
			                 0);
			assert_int_equal(audit_ctl_consistency_proof(
			                     &t1, (const uint8_t(*)[H])leaves + n1, n2, got, &ngot),
			                 0);
			if (ngot != nwant || memcmp(got, want, nwant * H) != 0)
				fail_msg("proof %llu -> %llu differs", (unsigned long long)n1,
				         (unsigned long long)n2);
			assert_int_equal(
			    audit_root_from_leaves((const uint8_t(*)[H])leaves, n2, r2), 0);
			assert_int_equal(audit_verify_consistency(n1, n2, r1, r2,
			                                          (const uint8_t(*)[H])got, ngot),
			                 0);
		}
	}
	struct audit_tree empty;
	audit_tree_init(&empty);
	uint8_t p[AUDIT_PROOF_MAX][H];
	size_t n = 0;
	assert_int_equal(audit_ctl_consistency_proof(&empty, (const uint8_t(*)[H])leaves, 3, p, &n),
	                 ISG_ERR_INVALID);
}

/* ---- the commands on a log built by hand ---- */

struct fixture {
	char dir[64], db[128], keys[128], isgctl[4096];
	struct audit_signer *signer;
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	char out[65536];
};

static const uint8_t test_seed[AUDIT_SEED_LEN] = {
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
};

static void exec_sql(sqlite3 *db, const char *sql)
{
	char *err = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("sql failed: %s: %s", sql, err ? err : "?");
}

/* The leaf bytes of entry seq, as the store writes them. */
static int make_leaf(char *out, size_t size, uint64_t seq, int64_t at)
{
	char when[32];
	time_format_ms(when, sizeof(when), at);
	const char *kind = seq % 3 ? "message.accepted" : "message.refused";
	return snprintf(out, size,
	                "{\"index\":%llu,\"at\":\"%s\",\"entry\":{\"event\":\"%s\",\"sender\":"
	                "\"met-police\",\"recipient\":\"nhs-trust\",\"agreement_id\":\"ag-%llu\","
	                "\"records\":%llu}}",
	                (unsigned long long)seq, when, kind, (unsigned long long)(seq % 2),
	                (unsigned long long)seq);
}

static void add_checkpoint(sqlite3 *db, struct audit_signer *s, uint64_t size,
                           const uint8_t (*leaves)[H])
{
	struct audit_checkpoint c = {.size = size};
	str_copy(c.origin, ORIGIN, sizeof(c.origin));
	assert_int_equal(audit_root_from_leaves(leaves, size, c.root), 0);
	char note[1024];
	size_t len = 0;
	assert_int_equal(audit_checkpoint_sign(s, &c, note, sizeof(note), &len, NULL), 0);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "INSERT INTO checkpoints VALUES (?1, ?2, ?3)", -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, (int64_t)size);
	sqlite3_bind_int64(st, 2, 1795000000000 + (int64_t)size * 1000); /* its last entry's time */
	sqlite3_bind_text(st, 3, note, (int)len, SQLITE_TRANSIENT);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
}

/* 25 entries; checkpoints at 10, 20 and 25. */
static void build_log(struct fixture *f)
{
	enum { N = 25 };
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
	exec_sql(db, "CREATE TABLE audit(seq INTEGER PRIMARY KEY, at INTEGER NOT NULL,"
	             " kind TEXT NOT NULL, entry BLOB NOT NULL);"
	             "CREATE TABLE checkpoints(size INTEGER PRIMARY KEY, at INTEGER NOT NULL,"
	             " note TEXT NOT NULL);");
	uint8_t leaves[N][H];
	for (uint64_t seq = 1; seq <= N; seq++) {
		char leaf[512];
		int64_t at = 1795000000000 + (int64_t)seq * 1000;
		int len = make_leaf(leaf, sizeof(leaf), seq, at);
		audit_leaf_hash((const uint8_t *)leaf, (size_t)len, leaves[seq - 1]);
		sqlite3_stmt *st = NULL;
		assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO audit VALUES (?1, ?2, ?3, ?4)",
		                                    -1, &st, NULL),
		                 SQLITE_OK);
		sqlite3_bind_int64(st, 1, (int64_t)seq);
		sqlite3_bind_int64(st, 2, at);
		sqlite3_bind_text(st, 3, seq % 3 ? "message.accepted" : "message.refused", -1,
		                  SQLITE_STATIC);
		sqlite3_bind_blob(st, 4, leaf, len, SQLITE_TRANSIENT);
		assert_int_equal(sqlite3_step(st), SQLITE_DONE);
		sqlite3_finalize(st);
	}
	add_checkpoint(db, f->signer, 10, (const uint8_t(*)[H])leaves);
	add_checkpoint(db, f->signer, 20, (const uint8_t(*)[H])leaves);
	add_checkpoint(db, f->signer, 25, (const uint8_t(*)[H])leaves);
	sqlite3_close(db);
}

static void write_key_file(const struct fixture *f)
{
	char path[256], b64[64];
	assert_int_equal(mkdir(f->keys, 0700), 0);
	snprintf(path, sizeof(path), "%s/audit-signing.key", f->keys);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(chmod(path, 0600), 0);
	audit_ctl_b64(b64, sizeof(b64), test_seed, sizeof(test_seed));
	fprintf(fp, "isg-key-v1 audit-signing-ed25519 %s\n", b64);
	assert_int_equal(fclose(fp), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	ssize_t n = readlink("/proc/self/exe", f->isgctl, sizeof(f->isgctl) - 32);
	assert_true(n > 0);
	f->isgctl[n] = '\0';
	char *slash = strrchr(f->isgctl, '/');
	assert_non_null(slash);
	snprintf(slash, 32, "/../bin/isgctl"); /* 32 bytes were kept free */
	str_copy(f->dir, "/tmp/isg-ctl-audit-XXXXXX", sizeof(f->dir));
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->db, sizeof(f->db), "%s/isg.db", f->dir);
	snprintf(f->keys, sizeof(f->keys), "%s/keys", f->dir);
	assert_int_equal(audit_signer_new(ORIGIN, test_seed, &f->signer), 0);
	audit_signer_verifier_key(f->signer, f->vkey);
	write_key_file(f);
	build_log(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", f->dir);
	audit_signer_free(f->signer);
	free(f);
	return 0;
}

/* Run isgctl with args (a shell fragment of safe words); stdout into f->out; exit status. */
static int run(struct fixture *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int run(struct fixture *f, const char *fmt, ...)
{
	if (access(f->isgctl, X_OK) != 0)
		skip();
	char args[2048], cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "'%s' audit %s 2>&1", f->isgctl, args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(f->out, 1, sizeof(f->out) - 1, p);
	f->out[n] = '\0';
	int status = pclose(p);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void assert_out_has(const struct fixture *f, const char *want)
{
	if (!strstr(f->out, want))
		fail_msg("output lacks '%s':\n%s", want, f->out);
}

/* A copy of the log to tamper with, changed by sql. */
static const char *tampered(struct fixture *f, const char *name, const char *sql)
{
	static char path[256];
	char cmd[512];
	snprintf(path, sizeof(path), "%s/%s.db", f->dir, name);
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", f->db, path);
	assert_int_equal(system(cmd), 0);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	exec_sql(db, sql);
	sqlite3_close(db);
	return path;
}

static void test_cmd_good_log(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(run(f, "pubkey --keys %s --origin %s", f->keys, ORIGIN), 0);
	char want[AUDIT_VERIFIER_KEY_MAX + 2];
	snprintf(want, sizeof(want), "%s\n", f->vkey);
	assert_string_equal(f->out, want);

	assert_int_equal(run(f, "verify --store %s --keys %s --origin %s", f->db, f->keys, ORIGIN),
	                 0);
	assert_out_has(f, "audit log OK: 25 entries, 3 checkpoints, latest checkpoint size 25, "
	                  "root ");
	assert_out_has(f, "2 of 2 consistency proofs");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", f->db, f->vkey), 0);
	/* Two keys to trust is a mistake, not a choice for isgctl to make. */
	assert_int_equal(
	    run(f, "verify --store %s --pubkey %s --pubkey-file %s/none", f->db, f->vkey, f->dir),
	    2);
	assert_out_has(f, "give one verifier key: --pubkey or --pubkey-file, not both");
	/* report writes each file it is given: a second --csv would silently drop the first. */
	assert_int_equal(run(f,
	                     "report --store %s --pubkey %s --from 2001-01-01 --to 2001-01-02 "
	                     "--csv %s/a.csv --csv %s/b.csv",
	                     f->db, f->vkey, f->dir, f->dir),
	                 2);
	assert_out_has(f, "--csv given twice");
	char written[512];
	snprintf(written, sizeof(written), "%s/b.csv", f->dir);
	assert_int_equal(access(written, F_OK), -1); /* nothing written */

	/* The wrong origin: no checkpoint carries a signature by that key. Its entries are
	 * covered all the same: they are unverified, not waiting for a checkpoint. */
	assert_int_equal(run(f, "verify --store %s --keys %s", f->db, f->keys), 1);
	assert_out_has(f, "checkpoint of size 10: it carries no signature by this verifier key");
	assert_out_has(f, "note: no checkpoint could be checked with this verifier key (origin "
	                  "'isg-gateway', key hash ");
	assert_out_has(f,
	               "), so no entry is verified: the log's checkpoints were signed by another "
	               "key or for another origin (see --origin and --pubkey)\n");
	assert_out_has(f, "audit log FAILED verification: 3 problems (no checkpoint could be "
	                  "checked with this verifier key: see the note above)\n");
	assert_null(strstr(f->out, "not yet covered"));
	/* Without --keys, the recorded verifier key serves as well. */
	assert_int_equal(run(f, "verify --store %s", f->db), 1);
	assert_out_has(f, "isgctl: no keys directory: give --keys KEYS_DIR or --config ISGD_YAML, "
	                  "or the recorded verifier key with --pubkey KEY or --pubkey-file FILE\n");

	assert_int_equal(run(f, "checkpoint --store %s", f->db), 0);
	assert_true(strncmp(f->out, ORIGIN "\n25\n", strlen(ORIGIN) + 4) == 0);

	assert_int_equal(run(f, "prove 7 --store %s --pubkey %s", f->db, f->vkey), 0);
	assert_out_has(f, "{\"index\":7,\"leaf_index\":6,\"tree_size\":25,");
	assert_int_equal(run(f, "prove 7 --size 10 --store %s --pubkey %s", f->db, f->vkey), 0);
	assert_out_has(f, "\"tree_size\":10,");
	assert_int_equal(run(f, "prove 11 --size 10 --store %s --pubkey %s", f->db, f->vkey), 1);
	assert_out_has(f, "entry 11 is not covered by the checkpoint of size 10");
	assert_int_equal(run(f, "prove 7 --size 12 --store %s --pubkey %s", f->db, f->vkey), 1);
	assert_out_has(f, "no stored checkpoint has size 12");
}

static void test_cmd_prove_past_the_end(void **state)
{
	struct fixture *f = *state;
	/* No checkpoint will ever cover an entry that is not there: not "wait". */
	assert_int_equal(run(f, "prove 26 --store %s --pubkey %s", f->db, f->vkey), 1);
	assert_string_equal(f->out, "isgctl: entry 26 does not exist: the log has 25 entries\n");
	assert_int_equal(run(f, "prove 26 --size 10 --store %s --pubkey %s", f->db, f->vkey), 1);
	assert_string_equal(f->out, "isgctl: entry 26 does not exist: the log has 25 entries\n");
	/* An entry written after the latest checkpoint is there: wait for the next one. */
	const char *db = tampered(f, "uncovered", "DELETE FROM checkpoints WHERE size = 25");
	assert_int_equal(run(f, "prove 25 --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "entry 25 is not covered by the checkpoint of size 20 (the latest): wait "
	                  "for the next checkpoint");
	/* Entries deleted from the middle: the count and the last number disagree. */
	db = tampered(f, "gap", "DELETE FROM audit WHERE seq = 5");
	assert_int_equal(run(f, "prove 26 --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "entry 26 does not exist: the log has 24 entries, the last numbered 25; "
	                  "run 'isgctl audit verify'");
}

static void test_cmd_list(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(run(f, "list --pubkey %s --store %s --kind message.refused --format csv",
	                     f->vkey, f->db),
	                 0);
	assert_out_has(f, "seq,at,kind,sender,");
	assert_out_has(f, "\n3,");
	assert_out_has(f, "\n24,");
	assert_null(strstr(f->out, "\n4,"));
	assert_int_equal(
	    run(f, "list --pubkey %s --store %s --agreement ag-1 --outcome refused --format jsonl",
	        f->vkey, f->db),
	    0);
	/* Refused (seq divisible by 3) and odd: 3, 9, 15, 21. */
	assert_out_has(f, "{\"index\":9,");
	assert_null(strstr(f->out, "{\"index\":6,"));
	assert_int_equal(run(f, "list --pubkey %s --store %s --partner nobody", f->vkey, f->db), 0);
	assert_out_has(f, "no entry matches");
	assert_int_equal(run(f, "list --pubkey %s --store %s --outcome maybe", f->vkey, f->db), 2);
	assert_int_equal(run(f, "list --pubkey %s --store %s --from 2026-13-01", f->vkey, f->db),
	                 2);
}

/*
 * list answers from the entries as they are now, so it ends by saying what
 * the signed checkpoints say of them: OK, FAILED (an entry's bytes edited,
 * which no column shows) or NOT VERIFIED (no key to check them with).
 */
static void test_cmd_list_integrity(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(run(f, "list --pubkey %s --store %s --kind keys", f->vkey, f->db), 0);
	assert_out_has(f, "isgctl: audit log OK against 3 signed checkpoints: 25 entries, latest "
	                  "checkpoint size 25, root ");
	assert_int_equal(
	    run(f, "list --keys %s --origin %s --store %s --kind keys", f->keys, ORIGIN, f->db), 0);
	assert_out_has(f, "isgctl: audit log OK against 3 signed checkpoints");
	/* an entry's own bytes edited: a valid entry, listed as it now reads, but not signed */
	const char *db = tampered(f, "list-changed",
	                          "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT),"
	                          " '\"records\":14', '\"records\":15') AS BLOB) WHERE seq = 14");
	assert_int_equal(run(f, "list --pubkey %s --store %s --format csv", f->vkey, db), 1);
	assert_out_has(f, "\n14,");
	assert_out_has(f, "isgctl: audit log FAILED verification: 2 problems; run 'isgctl audit "
	                  "verify' for the details: this list may be incomplete or wrong\n");
	assert_null(strstr(f->out, "audit log OK"));
	/* no key to check with: listed, but said to be unchecked, and not a success */
	assert_int_equal(run(f, "list --store %s --kind keys", f->db), 1);
	assert_out_has(f, "isgctl: audit log NOT VERIFIED: isgctl had no verifier key it could use "
	                  "(no keys directory: give --keys KEYS_DIR or --config ISGD_YAML, or the "
	                  "recorded verifier key with --pubkey KEY or --pubkey-file FILE); this "
	                  "list was not checked against the signed checkpoints\n");
}

/*
 * --from and --to are UTC dates or times to the millisecond, read strictly:
 * anything else is a usage error (exit 2) naming the value, never a period
 * read some other way. Dates outside 1970..2038 are dates like any other.
 */
static void test_cmd_times_strict(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
	    "2026-02-30", /* no such day */
	    "2026-02-29", /* not a leap year */
	    "1900-02-29", /* nor is 1900 */
	    "2026-00-10",
	    "2026-1-1",
	    "2026-01-01T24:00:00Z",      /* 24:00 is the next day's 00:00 */
	    "2016-12-31T23:59:60Z",      /* a leap second: Unix time, and the log, have none */
	    "2026-01-01T12:00:00+01:00", /* offsets: give the time in UTC */
	    "2026-01-01T12:00:00",       /* no Z: local time? */
	    "2026-01-01T12:00Z",
	    "2026-01-01T12:00:00.5Z",
	    "2026-01-01T12:00:00.500z",
	    "2026-01-01 12:00:00Z",
	    "10000-01-01",
	    "+2026-01-01",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(
		    run(f, "list --pubkey %s --store %s --from '%s'", f->vkey, f->db, bad[i]), 2);
		char want[128];
		snprintf(want, sizeof(want),
		         "--from must be a date YYYY-MM-DD or a time "
		         "YYYY-MM-DDTHH:MM:SS[.mmm]Z (UTC), not '%s'",
		         bad[i]);
		assert_out_has(f, want);
		assert_int_equal(
		    run(f, "list --pubkey %s --store %s --to '%s'", f->vkey, f->db, bad[i]), 2);
	}
	/* An empty value is refused as for every option (docs/isgctl.md, "Options"). */
	assert_int_equal(run(f, "list --pubkey %s --store %s --from ''", f->vkey, f->db), 2);
	assert_out_has(f, "option '--from' has an empty value");
	static const char *const good[] = {
	    "2024-02-29", "2000-02-29",           "1969-12-31",
	    "0000-01-01", "2038-01-19T03:14:08Z", "9999-12-31T23:59:59.999Z",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(
		    run(f, "list --pubkey %s --store %s --from '%s'", f->vkey, f->db, good[i]), 0);
	/* the whole log is from 2026: to the end of 1969 lists nothing, to 9999 everything */
	assert_int_equal(
	    run(f, "list --pubkey %s --store %s --to 1969-12-31 --format csv", f->vkey, f->db), 0);
	assert_null(strstr(f->out, "\n1,"));
	assert_int_equal(
	    run(f, "list --pubkey %s --store %s --from 1969-12-31 --to 9999-12-31 --format csv",
	        f->vkey, f->db),
	    0);
	assert_out_has(f, "\n25,");
}

static void test_cmd_changed(void **state)
{
	struct fixture *f = *state;
	const char *db = tampered(f, "changed",
	                          "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT),"
	                          " '\"records\":14', '\"records\":15') AS BLOB) WHERE seq = 14");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: checkpoint of size 20 does not match the log: some of entries "
	                  "11..20 were changed");
	assert_out_has(f, "problem: checkpoint of size 25 does not match the log either");
	assert_null(strstr(f->out, "size 10 does not match"));
	assert_out_has(f, "audit log FAILED verification: 2 problems");
}

static void test_cmd_deleted_reordered(void **state)
{
	struct fixture *f = *state;
	/* Entries 6.. now sit one place early, under checkpoints written before them: the
	 * deletion is the problem, not their dates. */
	const char *db = tampered(f, "deleted", "DELETE FROM audit WHERE seq = 5");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: entry 5 is missing (deleted)\n");
	assert_out_has(f, "problem: checkpoint of size 25 covers more entries than the log holds "
	                  "(24): entries are missing (deleted from the middle or the end)\n");
	assert_null(strstr(f->out, "dated after the checkpoint"));
	assert_null(strstr(f->out, "not yet covered"));
	assert_out_has(f, "audit log FAILED verification: 4 problems\n");

	db = tampered(f, "bad-number",
	              "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), '\"index\":14',"
	              " '\"index\":-') AS BLOB) WHERE seq = 14");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(
	    f, "problem: entry 14 is damaged: not in the format isgd writes (bad number)\n");

	db = tampered(f, "swapped",
	              "UPDATE audit SET seq = 100 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq"
	              " = 8; UPDATE audit SET seq = 8 WHERE seq = 100;");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: entry 4 is out of place: it holds index 8");
	assert_out_has(f, "problem: entry 8 is out of place: it holds index 4");
	assert_out_has(f, "checkpoint of size 10 does not match the log");

	db = tampered(f, "inserted",
	              "UPDATE audit SET seq = seq + 1000 WHERE seq >= 12;"
	              "UPDATE audit SET seq = seq - 999 WHERE seq >= 1012;"
	              "INSERT INTO audit SELECT 12, at, kind, entry FROM audit WHERE seq = 11;");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(
	    f, "problem: entry 12 holds index 11, as entry 11 does (one of them was inserted)");
	assert_out_has(f, "problem: entries 13..26 are out of place: they hold indexes 12..25 "
	                  "(entries were inserted before them)");
}

static void test_cmd_columns_forged(void **state)
{
	struct fixture *f = *state;
	const char *db = tampered(f, "columns",
	                          "UPDATE audit SET kind = 'message.delivered', at = at + 1"
	                          " WHERE seq = 2");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "entry 2: its kind column says 'message.delivered' but the entry is "
	                  "'message.accepted'");
	assert_out_has(f, "entry 2: its at column says");
	/* A kind column holding what is no kind (a person's data, say) is named, not shown. */
	db = tampered(f, "kind-data",
	              "UPDATE audit SET kind = 'Mrs O''Brien 9434765919' WHERE seq = 2");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: entry 2: its kind column disagrees with the entry\n");
	assert_null(strstr(f->out, "9434765919"));
	assert_null(strstr(f->out, "Brien"));
	/* A NUL inside: the column's bytes, not its C string, are compared. */
	db = tampered(
	    f, "kind-nul",
	    "UPDATE audit SET kind = CAST('message.accepted' || x'00' || 'anything' AS TEXT)"
	    " WHERE seq = 2");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: entry 2: its kind column disagrees with the entry\n");
	assert_out_has(f, "audit log FAILED verification: 1 problem\n");
	/* The listing goes by the signed entry, but the log does not verify: it fails. */
	assert_int_equal(run(f, "list --pubkey %s --store %s --format csv", f->vkey, db), 1);
	assert_out_has(f, "entry 2: its kind column disagrees with the signed entry");
	assert_out_has(f, "isgctl: audit log FAILED verification: 1 problem; run 'isgctl audit "
	                  "verify' for the details: this list may be incomplete or wrong\n");

	db = tampered(f, "forged",
	              "UPDATE checkpoints SET note = replace(note, char(10) || '20' || char(10),"
	              " char(10) || '21' || char(10)) WHERE size = 20");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: checkpoint of size 20: its signature does not verify");
	assert_out_has(f, "audit log FAILED verification: 1 problem\n");
}

static void test_cmd_truncated(void **state)
{
	struct fixture *f = *state;
	char saved[256], cmd[8192];
	snprintf(saved, sizeof(saved), "%s/saved-25.cp", f->dir);
	snprintf(cmd, sizeof(cmd), "'%s' audit checkpoint --store %s > %s", f->isgctl, f->db,
	         saved);
	if (access(f->isgctl, X_OK) != 0)
		skip();
	assert_int_equal(system(cmd), 0);
	const char *db = tampered(f, "truncated",
	                          "DELETE FROM audit WHERE seq > 20; DELETE FROM checkpoints WHERE"
	                          " size > 20");
	/* On its own the shorter log is consistent... */
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 0);
	/* ...but not with a checkpoint kept elsewhere. */
	assert_int_equal(run(f, "verify --store %s --pubkey %s --against %s", db, f->vkey, saved),
	                 1);
	assert_out_has(f, "problem: log was truncated or rolled back: saved checkpoint of size 25");
	assert_int_equal(
	    run(f, "verify --store %s --pubkey %s --against %s", f->db, f->vkey, saved), 0);
	assert_out_has(f, "1 of 1 saved checkpoints");
	/* A saved checkpoint that is none at all says nothing about the log, so it neither
	 * passes nor fails: verify says it was not checked against it. */
	char junk[256];
	snprintf(junk, sizeof(junk), "%s/junk.cp", f->dir);
	snprintf(cmd, sizeof(cmd), "(echo 'the checkpoint:'; cat %s) > %s", saved, junk);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(run(f, "verify --store %s --pubkey %s --against %s", f->db, f->vkey, junk),
	                 1);
	assert_out_has(f, "could not be read as a checkpoint");
	assert_out_has(f, "\naudit log checks passed, but 1 saved checkpoint could not be read, so "
	                  "the log was NOT checked against it\n");
	assert_null(strstr(f->out, "FAILED"));
	assert_int_equal(run(f, "verify --store %s --pubkey %s --against %s", db, f->vkey, junk),
	                 1);
	/* With the log failing too, the last line says both. */
	const char *cut = tampered(f, "cut", "DELETE FROM audit WHERE seq > 22");
	assert_int_equal(run(f, "verify --store %s --pubkey %s --against %s --against %s", cut,
	                     f->vkey, junk, junk),
	                 1);
	assert_out_has(f, "problem: checkpoint of size 25 covers more entries than the log holds "
	                  "(22): entries were deleted from its end (the log was truncated)\n");
	assert_out_has(f, "audit log FAILED verification: 3 problems (2 of them saved checkpoints "
	                  "that could not be read, so the log was NOT checked against them)\n");
}

/*
 * isgd dates a checkpoint row no earlier than the entries it stamped: entries
 * dated after the checkpoint covering them were dated by someone else.
 */
static void test_cmd_dated_after_checkpoint(void **state)
{
	struct fixture *f = *state;
	const char *db =
	    tampered(f, "late", "UPDATE checkpoints SET at = at - 5000 WHERE size = 20");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f,
	               "problem: 5 entries, from entry 16 to entry 20, are dated after the "
	               "checkpoint "
	               "covering them was written (the first at 2026-11-18T11:06:56.000Z, "
	               "covered by the checkpoint of size 20 written at 2026-11-18T11:06:55.000Z)");
	assert_out_has(f, "audit log FAILED verification: 1 problem\n");
	/* One entry a second after it; dated at its time: OK. */
	db = tampered(f, "at-time", "UPDATE checkpoints SET at = at - 1000 WHERE size = 20");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f,
	               "problem: entry 20 is dated after the checkpoint covering it was written");
	db = tampered(f, "same-time", "UPDATE checkpoints SET at = at WHERE size = 20");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 0);
	/* An entry edited in place before them moves nothing: they are still caught. */
	db = tampered(f, "edited-then-late",
	              "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT),"
	              " '\"records\":14', '\"records\":15') AS BLOB) WHERE seq = 14;"
	              "UPDATE checkpoints SET at = at - 5000 WHERE size = 20");
	assert_int_equal(run(f, "verify --store %s --pubkey %s", db, f->vkey), 1);
	assert_out_has(f, "problem: 5 entries, from entry 16 to entry 20, are dated after the "
	                  "checkpoint covering them was written");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_json_values),
	    cmocka_unit_test(test_json_refusals),
	    cmocka_unit_test(test_leaf_parse),
	    cmocka_unit_test(test_consistency_streaming),
	    cmocka_unit_test_setup_teardown(test_cmd_good_log, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_prove_past_the_end, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_list, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_list_integrity, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_times_strict, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_changed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_deleted_reordered, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_columns_forged, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_truncated, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cmd_dated_after_checkpoint, setup, teardown),
	};
	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
