/*
 * The audit log inside the store: each entry's leaf bytes, the Merkle tree
 * over them that the writer keeps up to date, rebuilding and checking that
 * tree when the store opens, and signed checkpoints (docs/audit-format.md,
 * docs/store.md).
 *
 * Leaf bytes, exactly: {"index":SEQ,"at":"YYYY-MM-DDTHH:MM:SS.mmmZ","entry":BODY}
 * where BODY is the caller's JSON object. Merkle leaf position = seq - 1.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "util/util.h"

#define BODY_PREFIX "{\"event\":\""
/* {"index":<20 digits>,"at":"<24 characters>","entry": */
#define LEAF_HEAD_MAX 80
#define AT_LEN 24 /* 2026-11-23T15:04:05.123Z */

/* --- entry bodies ------------------------------------------------------------ */

/* Kinds are plain names ("message.accepted"): printable ASCII, nothing to escape. */
static bool kind_ok(const char *kind, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)kind[i];
		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
			return false;
	}
	return true;
}

#define ONES 0x0101010101010101u
#define HIGHS 0x8080808080808080u

/*
 * The high bits of a word's control bytes, '"' and '\\'. A borrow may mark
 * a more significant byte than a marked one as well, never a less
 * significant one: the least significant mark is the first such byte.
 */
static uint64_t string_special(uint64_t w)
{
	uint64_t quote = w ^ (ONES * '"'), backslash = w ^ (ONES * '\\');
	uint64_t any = ((w - ONES * 0x20) & ~w) | ((quote - ONES) & ~quote) |
	               ((backslash - ONES) & ~backslash);
	return any & HIGHS;
}

/* Eight bytes, the first in memory the least significant. */
static uint64_t load_le(const char *p)
{
	uint64_t w;
	memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	return w;
}

/*
 * One pass over the body: no white space or control bytes outside strings,
 * no control bytes inside them, brackets balanced and the first '{' closed
 * by the last byte. Not a full JSON parser; the callers are ours. Most of
 * an entry is inside strings (the subjects' pseudonyms), which are skipped
 * eight bytes at a time up to the first byte that matters there.
 */
static bool body_shape_ok(const char *body, size_t len)
{
	bool in_string = false, escaped = false;
	size_t depth = 0;
	for (size_t i = 0; i < len; i++) {
		if (in_string && !escaped) {
			uint64_t m = 0;
			while (len - i >= 8 && !(m = string_special(load_le(body + i))))
				i += 8;
			if (m) /* straight to the byte that matters */
				i += (size_t)__builtin_ctzll(m) / 8;
			if (i == len)
				break;
		}
		unsigned char c = (unsigned char)body[i];
		if (in_string) {
			if (c < 0x20)
				return false;
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				in_string = false;
			continue;
		}
		if (c <= 0x20 || c == 0x7f)
			return false;
		if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			if (depth == 0)
				return false;
			if (--depth == 0 && i != len - 1)
				return false;
		}
	}
	return !in_string && depth == 0;
}

int store_log_check_body(const char *kind, const char *body, size_t len)
{
	const size_t plen = sizeof(BODY_PREFIX) - 1;
	size_t klen = kind ? strnlen(kind, STORE_MAX_KIND + 1) : 0;
	if (!kind_ok(kind, klen) || klen > STORE_MAX_KIND)
		return ISG_ERR_INVALID;
	if (!body || len < plen + klen + 2 || memcmp(body, BODY_PREFIX, plen) != 0 ||
	    memcmp(body + plen, kind, klen) != 0 || body[plen + klen] != '"' ||
	    (body[plen + klen + 1] != ',' && body[plen + klen + 1] != '}'))
		return ISG_ERR_INVALID;
	if (!body_shape_ok(body, len) || !str_utf8_valid(body, len))
		return ISG_ERR_INVALID;
	return 0;
}

/* --- appending ------------------------------------------------------------------ */

static int leaf_reserve(struct store *s, size_t need)
{
	if (need <= s->leaf_cap)
		return 0;
	size_t cap = s->leaf_cap ? s->leaf_cap : 1024;
	while (cap < need)
		cap *= 2;
	uint8_t *p = realloc(s->leaf, cap);
	if (!p)
		return ISG_ERR_NOMEM;
	s->leaf = p;
	s->leaf_cap = cap;
	return 0;
}

/* Room for one more leaf hash the witness has not had. */
static int witness_reserve(struct store *s)
{
	if (!s->has_witness || s->log.witness_pending < s->witness_cap)
		return 0;
	size_t cap = s->witness_cap ? s->witness_cap * 2 : 1024;
	void *p = reallocarray(s->witness_leaves, cap, AUDIT_HASH_LEN);
	if (!p)
		return ISG_ERR_NOMEM;
	s->witness_leaves = p;
	s->witness_cap = cap;
	return 0;
}

int store_log_append(struct store *s, int64_t now, const char *kind, const char *body, size_t len,
                     uint64_t *seq)
{
	uint64_t n = s->log.next_seq;
	char at[32], head[LEAF_HEAD_MAX];
	time_format_ms(at, sizeof(at), now);
	int hl =
	    snprintf(head, sizeof(head), "{\"index\":%" PRIu64 ",\"at\":\"%s\",\"entry\":", n, at);
	if (hl < 0 || (size_t)hl >= sizeof(head) || len > STORE_MAX_AUDIT_ENTRY)
		return ISG_ERR_TOO_BIG;
	size_t total = (size_t)hl + len + 1;
	int rc = leaf_reserve(s, total);
	if (rc == 0)
		rc = witness_reserve(s);
	if (rc)
		return rc;
	memcpy(s->leaf, head, (size_t)hl);
	if (len)
		memcpy(s->leaf + hl, body, len);
	s->leaf[total - 1] = '}';

	sqlite3_stmt *st = s->stmt[ST_AUDIT_INSERT];
	sqlite3_bind_int64(st, 1, (int64_t)n);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 4, s->leaf, (int)total, SQLITE_STATIC);
	rc = store_db_step_done(s, st, "audit.insert");
	if (rc)
		return rc;
	uint8_t hash[AUDIT_HASH_LEN];
	audit_leaf_hash(s->leaf, total, hash);
	/* On failure the job's savepoint is rolled back and the tree restored with it. */
	rc = audit_tree_append(&s->log.tree, hash);
	if (rc)
		return rc;
	if (s->has_witness)
		memcpy(s->witness_leaves[s->log.witness_pending++], hash, AUDIT_HASH_LEN);
	s->log.next_seq = n + 1;
	if (now > s->log.latest_at)
		s->log.latest_at = now;
	*seq = n;
	return 0;
}

/* --- loading at open -------------------------------------------------------------- */

struct latest_checkpoint {
	bool found;
	uint64_t size;
	char *note;
	size_t note_len;
};

static int read_latest_checkpoint(sqlite3 *db, const char *path, struct latest_checkpoint *cp,
                                  char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = 0;
	if (sqlite3_prepare_v2(db, "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
	                       -1, &st, NULL) != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot read the audit checkpoints: %s", path,
		             sqlite3_errmsg(db));
		return ISG_ERR_CORRUPT;
	}
	int src = sqlite3_step(st);
	if (src == SQLITE_DONE)
		goto out;
	if (src != SQLITE_ROW) {
		store_seterr(err, errlen, "store '%s': cannot read the audit checkpoints: %s", path,
		             sqlite3_errmsg(db));
		rc = ISG_ERR_STORE;
		goto out;
	}
	int64_t size = sqlite3_column_int64(st, 0);
	const unsigned char *note = sqlite3_column_text(st, 1);
	int note_len = sqlite3_column_bytes(st, 1);
	/* A NUL inside would cut the copy short of note_len. */
	if (size <= 0 || !note || note_len <= 0 || note_len > AUDIT_NOTE_MAX ||
	    memchr(note, 0, (size_t)note_len)) {
		store_seterr(err, errlen, "store '%s': audit checkpoint of size %lld is malformed",
		             path, (long long)size);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
	cp->note = strndup((const char *)note, (size_t)note_len);
	if (!cp->note) {
		store_seterr(err, errlen, "store: out of memory");
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	cp->note_len = (size_t)note_len;
	cp->size = (uint64_t)size;
	cp->found = true;
out:
	sqlite3_finalize(st);
	return rc;
}

/* Without a signer (unit tests): the body is everything up to the blank line. */
static int parse_unsigned(const struct latest_checkpoint *cp, struct audit_checkpoint *c,
                          const char **reason)
{
	const char *blank = memmem(cp->note, cp->note_len, "\n\n", 2);
	if (!blank) {
		*reason = "no blank line before the signatures";
		return ISG_ERR_PARSE;
	}
	return audit_checkpoint_parse(cp->note, (size_t)(blank - cp->note) + 1, c, reason);
}

/* Open the latest checkpoint: signature (when there is a signer), origin and size. */
static int open_checkpoint(const struct store *s, const struct latest_checkpoint *cp,
                           const char *path, struct audit_checkpoint *c, char *err, size_t errlen)
{
	const char *reason = "malformed";
	int rc;
	if (s->signer) {
		char vkey[AUDIT_VERIFIER_KEY_MAX];
		struct audit_verifier v;
		audit_signer_verifier_key(s->signer, vkey);
		rc = audit_verifier_parse(vkey, strlen(vkey), &v, &reason);
		if (rc == 0)
			rc = audit_checkpoint_open(&v, cp->note, cp->note_len, c, &reason);
		if (rc) {
			store_seterr(err, errlen,
			             "store '%s': audit checkpoint of size %" PRIu64
			             " does not verify with the audit signing key '%s': %s",
			             path, cp->size, audit_signer_name(s->signer), reason);
			return ISG_ERR_CORRUPT;
		}
		if (strcmp(c->origin, audit_signer_name(s->signer)) != 0) {
			store_seterr(err, errlen,
			             "store '%s': audit checkpoint of size %" PRIu64
			             " has origin '%s', not '%s'",
			             path, cp->size, c->origin, audit_signer_name(s->signer));
			return ISG_ERR_CORRUPT;
		}
	} else if (parse_unsigned(cp, c, &reason) != 0) {
		store_seterr(err, errlen,
		             "store '%s': audit checkpoint of size %" PRIu64 " is malformed: %s",
		             path, cp->size, reason);
		return ISG_ERR_CORRUPT;
	}
	if (c->size != cp->size) {
		store_seterr(err, errlen,
		             "store '%s': audit checkpoint row %" PRIu64
		             " holds a checkpoint of size %" PRIu64,
		             path, cp->size, c->size);
		return ISG_ERR_CORRUPT;
	}
	return 0;
}

/* True when the leaf bytes start {"index":SEQ, */
static bool leaf_index_ok(const void *entry, size_t len, uint64_t seq)
{
	char head[48];
	int hl = snprintf(head, sizeof(head), "{\"index\":%" PRIu64 ",", seq);
	return entry && hl > 0 && (size_t)hl <= len && memcmp(entry, head, (size_t)hl) == 0;
}

/*
 * Append every entry's leaf hash to log->tree in seq order, checking seq
 * runs 1, 2, 3, ... and each leaf names its own index. root_at gets the
 * root when the tree reaches cp_size (if it does).
 */
static int rebuild_tree(sqlite3 *db, const char *path, struct store_log *log, uint64_t cp_size,
                        uint8_t root_at[static AUDIT_HASH_LEN], char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = 0, src;
	uint64_t expect = 1;
	if (sqlite3_prepare_v2(db, "SELECT seq, entry FROM audit ORDER BY seq", -1, &st, NULL) !=
	    SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot read the audit log: %s", path,
		             sqlite3_errmsg(db));
		return ISG_ERR_CORRUPT;
	}
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(st, 0);
		if (seq != (int64_t)expect) {
			if (seq > (int64_t)expect)
				store_seterr(err, errlen,
				             "store '%s': audit entry %" PRIu64
				             " is missing (the log jumps from %" PRIu64 " to %lld)",
				             path, expect, expect - 1, (long long)seq);
			else
				store_seterr(
				    err, errlen,
				    "store '%s': audit log has an entry numbered %lld; numbers "
				    "start at 1",
				    path, (long long)seq);
			rc = ISG_ERR_CORRUPT;
			goto out;
		}
		const void *entry = sqlite3_column_blob(st, 1);
		size_t len = (size_t)sqlite3_column_bytes(st, 1);
		if (!leaf_index_ok(entry, len, expect)) {
			store_seterr(err, errlen,
			             "store '%s': audit entry %" PRIu64
			             " does not hold index %" PRIu64 " in its leaf",
			             path, expect, expect);
			rc = ISG_ERR_CORRUPT;
			goto out;
		}
		uint8_t hash[AUDIT_HASH_LEN];
		audit_leaf_hash(entry, len, hash);
		rc = audit_tree_append(&log->tree, hash);
		if (rc)
			goto out;
		if (audit_tree_size(&log->tree) == cp_size)
			audit_tree_root(&log->tree, root_at);
		expect++;
	}
	if (src != SQLITE_DONE) {
		store_seterr(err, errlen, "store '%s': cannot read the audit log: %s", path,
		             sqlite3_errmsg(db));
		rc = ISG_ERR_STORE;
		goto out;
	}
	log->next_seq = expect;
out:
	sqlite3_finalize(st);
	return rc;
}

/*
 * Entries no checkpoint covers that are dated after isgd's clock: isgd
 * stopped without a checkpoint (a crash, a power cut) while its clock was
 * ahead, and the clock was corrected before this start; or their times were
 * rewritten. The checkpoint this isgd signs over them is dated before them,
 * and `isgctl audit verify` reports that: this line, at the start, is what
 * tells the innocent case apart. Indexes and times only.
 */
static void warn_entries_ahead(sqlite3 *db, uint64_t covered)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db,
	                       "SELECT COUNT(*), MIN(seq), MAX(seq), MAX(at) FROM audit "
	                       "WHERE seq > ?1 AND at > ?2",
	                       -1, &st, NULL) != SQLITE_OK)
		return;
	int64_t now = time_now_ms();
	sqlite3_bind_int64(st, 1, (int64_t)covered);
	sqlite3_bind_int64(st, 2, now);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0) {
		char latest[32], now_text[32];
		time_format_ms(latest, sizeof(latest), sqlite3_column_int64(st, 3));
		time_format_ms(now_text, sizeof(now_text), now);
		log_event(LOG_WARN, "audit.entries_ahead",
		          "entries=%lld first=%lld last=%lld latest_at=%s now=%s",
		          (long long)sqlite3_column_int64(st, 0),
		          (long long)sqlite3_column_int64(st, 1),
		          (long long)sqlite3_column_int64(st, 2), latest, now_text);
	}
	sqlite3_finalize(st);
}

int store_log_load(struct store *s, sqlite3 *db, const char *path, char *err, size_t errlen)
{
	struct latest_checkpoint cp = {.found = false};
	struct audit_checkpoint c = {.size = 0};
	struct store_log log;
	uint8_t root_at[AUDIT_HASH_LEN] = {0};
	audit_tree_init(&log.tree);
	log.next_seq = 1;
	log.witness_pending = 0;
	log.latest_at = 0; /* not the log's: its times may have been rewritten */
	int rc = read_latest_checkpoint(db, path, &cp, err, errlen);
	if (rc == 0 && cp.found)
		rc = open_checkpoint(s, &cp, path, &c, err, errlen);
	if (rc == 0)
		rc = rebuild_tree(db, path, &log, cp.found ? cp.size : 0, root_at, err, errlen);
	if (rc)
		goto out;
	if (cp.found && (audit_tree_size(&log.tree) < cp.size ||
	                 sodium_memcmp(root_at, c.root, AUDIT_HASH_LEN) != 0)) {
		store_seterr(err, errlen,
		             "store '%s': audit log does not match its checkpoint of size %" PRIu64,
		             path, cp.size);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
	warn_entries_ahead(db, cp.found ? cp.size : 0);
	s->log = log;
	s->checkpoint_size = cp.found ? cp.size : 0;
	free(s->checkpoint_note);
	s->checkpoint_note = cp.note;
	cp.note = NULL;
out:
	free(cp.note);
	return rc;
}

/*
 * Before the writer starts, so before any entry of this run (and before
 * isgd serves a partner): the witness trusts this tree, checked above
 * against the latest checkpoint, as the log's start.
 */
int store_log_witness_start(struct store *s, char *err, size_t errlen)
{
	if (!s->has_witness)
		return 0;
	uint8_t tree[AUDIT_TREE_ENCODED_MAX];
	size_t len = audit_tree_encode(&s->log.tree, tree);
	int rc = s->witness.start(s->witness.ctx, tree, len);
	if (rc)
		store_seterr(err, errlen,
		             "store '%s': the audit log's witness refused its start at %" PRIu64
		             " entries: %s",
		             s->path, audit_tree_size(&s->log.tree), isg_strerror(rc));
	return rc;
}

/* --- reading an entry back --------------------------------------------------------------- */

/*
 * The body inside a leaf of entry seq: after {"index":SEQ,"at":"<24>","entry":
 * and before the final '}'. NULL when the leaf is not in that form.
 */
static const char *leaf_body(const char *leaf, size_t len, uint64_t seq, size_t *body_len)
{
	static const char tail[] = "\",\"entry\":";
	char head[LEAF_HEAD_MAX];
	int hl = snprintf(head, sizeof(head), "{\"index\":%" PRIu64 ",\"at\":\"", seq);
	if (!leaf || hl < 0 || (size_t)hl >= sizeof(head))
		return NULL;
	size_t at_end = (size_t)hl + AT_LEN, start = at_end + sizeof(tail) - 1;
	if (len <= start || len > LEAF_HEAD_MAX + STORE_MAX_AUDIT_ENTRY + 1 ||
	    memcmp(leaf, head, (size_t)hl) != 0 ||
	    memcmp(leaf + at_end, tail, sizeof(tail) - 1) != 0 || leaf[len - 1] != '}')
		return NULL;
	*body_len = len - start - 1;
	return leaf + start;
}

/* Whether a body's event, the first member as store_audit writes it, is kind. */
static bool body_event_is(const char *body, size_t len, const char *kind)
{
	const size_t plen = sizeof(BODY_PREFIX) - 1, klen = strlen(kind);
	return len > plen + klen && memcmp(body, BODY_PREFIX, plen) == 0 &&
	       memcmp(body + plen, kind, klen) == 0 && body[plen + klen] == '"';
}

/*
 * The row (seq, kind, entry) st is on, judged by its leaf: 0 and its body
 * when the leaf holds a body of kind (any kind when NULL) in the form
 * store_audit checks and the row's kind column agrees; 1 when the leaf is
 * of another kind (look further back); ISG_ERR_CORRUPT, *seq set, when the
 * leaf cannot be read or the columns disagree with it: an entry of kind may
 * be hidden there, and an older one would not be the newest.
 */
static int judge_row(sqlite3_stmt *st, const char *kind, uint64_t *seq, const char **body,
                     size_t *len)
{
	int64_t row = sqlite3_column_int64(st, 0);
	const char *column = (const char *)sqlite3_column_text(st, 1);
	const char *leaf = sqlite3_column_blob(st, 2);
	size_t leaf_len = (size_t)sqlite3_column_bytes(st, 2);
	*seq = row > 0 ? (uint64_t)row : 0;
	const char *b = row > 0 ? leaf_body(leaf, leaf_len, *seq, len) : NULL;
	if (!b)
		return ISG_ERR_CORRUPT;
	if (kind && !body_event_is(b, *len, kind))
		return column && strcmp(column, kind) == 0 ? ISG_ERR_CORRUPT : 1;
	if (!column || store_log_check_body(column, b, *len) != 0)
		return ISG_ERR_CORRUPT;
	*body = b;
	return 0;
}

int store_audit_newest(struct store *s, const char *kind, uint64_t *seq, char **body, size_t *len)
{
	if (body)
		*body = NULL;
	if (len)
		*len = 0;
	*seq = 0;
	if (!s || (kind && strnlen(kind, STORE_MAX_KIND + 1) > STORE_MAX_KIND) || (body && !len))
		return ISG_ERR_INVALID;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int err = ISG_ERR_STORE;
	if (store_db_reader(s, &db) != SQLITE_OK)
		goto out;
	/* From the newest row back, each judged by its leaf, not by its kind
	 * column, which nothing signs: relabelling the newest entry of kind must
	 * not make an older one pass for it. */
	static const char sql[] = "SELECT seq, kind, entry FROM audit ORDER BY seq DESC";
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	int rc;
	const char *b = NULL;
	size_t n = 0;
	err = ISG_ERR_NOT_FOUND;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW &&
	       (err = judge_row(st, kind, seq, &b, &n)) == 1)
		err = ISG_ERR_NOT_FOUND;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		err = ISG_ERR_STORE;
	else if (err == 0 && body) {
		*body = strndup(b, n);
		*len = n;
		err = *body ? 0 : ISG_ERR_NOMEM;
	}
	if (err == ISG_ERR_NOT_FOUND)
		*seq = 0;
out:
	if (err == ISG_ERR_STORE) {
		char q[512];
		log_event(LOG_ERROR, "store.sqlite_error", "op=audit.newest error=%s",
		          log_quote(q, sizeof(q), db ? sqlite3_errmsg(db) : "cannot open"));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return err;
}

/* --- checkpoints ------------------------------------------------------------------------ */

bool store_log_checkpoint_due(const struct store *s, int64_t mono_now)
{
	if (!s->signer)
		return false;
	uint64_t grown = audit_tree_size(&s->log.tree) - s->checkpoint_size;
	if (grown == 0 || mono_now < s->checkpoint_retry_mono)
		return false;
	return grown >= s->checkpoint_every || atomic_load(&s->checkpoint_soon) ||
	       mono_now - s->checkpoint_mono >= s->checkpoint_interval_ms;
}

int64_t store_log_checkpoint_deadline(const struct store *s)
{
	uint64_t size = audit_tree_size(&s->log.tree);
	if (!s->signer || size == s->checkpoint_size)
		return INT64_MAX;
	int64_t due =
	    size - s->checkpoint_size >= s->checkpoint_every || atomic_load(&s->checkpoint_soon)
	        ? s->checkpoint_retry_mono
	        : s->checkpoint_mono + s->checkpoint_interval_ms;
	return due > s->checkpoint_retry_mono ? due : s->checkpoint_retry_mono;
}

/*
 * The row's at is when the checkpoint was written, but never earlier than an
 * entry this isgd stamped: a clock set back between an entry and the
 * checkpoint covering it leaves at no earlier than the entry's time. So an
 * entry dated after the checkpoint covering it was not dated by the isgd
 * that signed it (`isgctl audit verify` reports it: entries rewritten with
 * later times while uncovered, then signed by a restarted isgd).
 */
static int checkpoint_insert(struct store *s, uint64_t size, const char *note, size_t len)
{
	sqlite3_stmt *st = s->stmt[ST_CHECKPOINT_INSERT];
	int64_t now = time_now_ms();
	sqlite3_bind_int64(st, 1, (int64_t)size);
	sqlite3_bind_int64(st, 2, now > s->log.latest_at ? now : s->log.latest_at);
	sqlite3_bind_text(st, 3, note, (int)len, SQLITE_STATIC);
	/* Outside any transaction: the statement is a transaction of its own,
	 * whose commit may fail as a batch's does. */
	int rc = store_db_commit(s, st, "checkpoint.insert");
	if (rc == ISG_ERR_UNKNOWN)
		store_fail(s, store_db_errmsg(s->db));
	return rc;
}

/*
 * Give the witness every leaf hash it has not had, in appends of at most
 * STORE_WITNESS_APPEND_MAX; those it took leave the buffer even when a
 * later append fails. Only committed entries are pending here (see
 * checkpoint_if_due). A refusal means the witness has seen another log
 * than this one: nothing more will be signed until isgd restarts.
 */
static int witness_catch_up(struct store *s)
{
	size_t n = s->log.witness_pending, done = 0;
	uint64_t from = audit_tree_size(&s->log.tree) - n;
	int rc = 0;
	while (rc == 0 && done < n) {
		size_t k =
		    n - done < STORE_WITNESS_APPEND_MAX ? n - done : STORE_WITNESS_APPEND_MAX;
		rc = s->witness.append(s->witness.ctx, from + done, s->witness_leaves[done], k);
		if (rc == 0)
			done += k;
	}
	if (done > 0 && done < n)
		memmove(s->witness_leaves, s->witness_leaves[done], (n - done) * AUDIT_HASH_LEN);
	s->log.witness_pending = n - done;
	if (rc) {
		char q[64];
		log_event(LOG_ERROR,
		          rc == ISG_ERR_DENIED ? "audit.witness_refused" : "audit.witness_failed",
		          "size=%" PRIu64 " unwitnessed=%zu error=%s",
		          audit_tree_size(&s->log.tree), n - done,
		          log_quote(q, sizeof(q), isg_strerror(rc)));
	}
	return rc;
}

int store_log_checkpoint(struct store *s)
{
	int rc = s->has_witness && s->log.witness_pending > 0 ? witness_catch_up(s) : 0;
	if (rc) {
		s->checkpoint_retry_mono = time_mono_ms() + STORE_CHECKPOINT_RETRY_MS;
		return rc;
	}
	struct audit_checkpoint c;
	char note[STORE_NOTE_MAX];
	size_t len = 0;
	const char *reason = NULL;
	memset(&c, 0, sizeof(c));
	str_copy(c.origin, audit_signer_name(s->signer), sizeof(c.origin));
	c.size = audit_tree_size(&s->log.tree);
	audit_tree_root(&s->log.tree, c.root);
	rc = audit_checkpoint_sign(s->signer, &c, note, sizeof(note), &len, &reason);
	if (rc) {
		char q[128];
		log_event(LOG_ERROR, "audit.checkpoint_failed", "size=%" PRIu64 " error=%s", c.size,
		          log_quote(q, sizeof(q), reason ? reason : isg_strerror(rc)));
	} else {
		rc = checkpoint_insert(s, c.size, note, len);
	}
	int64_t mono = time_mono_ms();
	if (rc) {
		s->checkpoint_retry_mono = mono + STORE_CHECKPOINT_RETRY_MS;
		return rc;
	}
	char *copy = strndup(note, len);
	pthread_mutex_lock(&s->mu);
	if (copy) {
		free(s->checkpoint_note);
		s->checkpoint_note = copy;
	}
	pthread_mutex_unlock(&s->mu);
	s->checkpoint_size = c.size;
	s->checkpoint_mono = mono;
	s->checkpoint_retry_mono = 0;
	atomic_store(&s->checkpoint_soon, false); /* the writer wrote every entry it covers */
	log_event(LOG_DEBUG, "audit.checkpoint", "size=%" PRIu64, c.size);
	return 0;
}

int store_latest_checkpoint(struct store *s, char *note, size_t size)
{
	if (!s || !note || size == 0)
		return ISG_ERR_INVALID;
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	if (!s->checkpoint_note)
		rc = ISG_ERR_NOT_FOUND;
	else if (str_copy(note, s->checkpoint_note, size) >= size)
		rc = ISG_ERR_TOO_BIG;
	pthread_mutex_unlock(&s->mu);
	if (rc)
		note[0] = '\0';
	return rc;
}
