/*
 * isgctl audit verify and prove.
 *
 * verify streams the log once, in seq order, keeping the compact tree of
 * every entry so far, the compact tree at the last checkpoint and the leaf
 * hashes since it (cmd_audit_tree.c), and checks:
 *  - every stored checkpoint's signature (a forged or altered one is named
 *    by its size) and that its note agrees with its row;
 *  - seq runs 1, 2, 3... without gaps (deleted entries) and every leaf
 *    holds index == seq (reordered or inserted entries), kind == event and
 *    at == at (the columns agree with the leaf, which is the truth);
 *  - at each checkpoint's size, that the root of the entries so far is the
 *    signed root (changed entries), and a consistency proof, built from the
 *    entries and checked by the verifier of gateway/audit, from the
 *    previous checkpoint to this one (a log rewritten and signed again);
 *  - no checkpoint covers more entries than the log holds (truncated);
 *  - no entry older than the grace (--grace) is left covered by no
 *    checkpoint: isgd signs within seconds and when it stops, so such
 *    entries mean deleted checkpoints (or a crash before the last one);
 *  - each --against checkpoint, saved elsewhere earlier: its signature, its
 *    size within the log and its root at that size (truncated or rolled
 *    back).
 * It prints every problem and exits 1, or a summary and exits 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"

static const char verify_usage[] =
    "usage: isgctl audit verify (--config ISGD_YAML | --store DB [--keys KEYS_DIR])\n"
    "                           [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n"
    "                           [--against FILE ...] [--grace SECONDS]\n";
static const char prove_usage[] =
    "usage: isgctl audit prove SEQ [--size N]\n"
    "                              (--config ISGD_YAML | --store DB [--keys KEYS_DIR])\n"
    "                              [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n";

/* A checkpoint whose signature verified: the size and root it vouches for. */
struct cp {
	uint64_t size;
	uint8_t root[AUDIT_HASH_LEN];
	int64_t at;       /* a stored one's at column: when isgd wrote it (not signed) */
	const char *file; /* --against FILE; NULL for a stored checkpoint */
	bool matched;
};

/* Entries found wanting in one way: how many, the first (and its time), the last. */
struct entry_run {
	uint64_t n;
	int64_t first, last, first_at;
};

static void run_add(struct entry_run *r, int64_t entry, int64_t at)
{
	if (r->n++ == 0) {
		r->first = entry;
		r->first_at = at;
	}
	r->last = entry;
}

/* "entry A is" or "N entries, from entry A to entry B, are" */
static void run_text(const struct entry_run *r, char *out, size_t size)
{
	if (r->n == 1)
		snprintf(out, size, "entry %" PRId64 " is", r->first);
	else
		snprintf(out, size,
		         "%" PRIu64 " entries, from entry %" PRId64 " to entry %" PRId64 ", are",
		         r->n, r->first, r->last);
}

struct verify {
	struct audit_verifier v;
	struct cp *stored, *saved;
	size_t n_stored, n_saved, next_stored, next_saved;
	struct audit_tree tree;
	/* the last stored checkpoint reached, and the leaf hashes since */
	const struct cp *prev;
	struct audit_tree prev_tree;
	uint8_t (*window)[AUDIT_HASH_LEN];
	size_t window_n, window_cap;
	/* seq and index bookkeeping */
	bool any_row;
	int64_t last_seq;
	bool in_run, have_index;
	int64_t run_delta, run_first, run_last;
	uint64_t last_index; /* of the row before (seq last_index_seq), when have_index */
	int64_t last_index_seq;
	/* an entry missing, inserted or out of place: from there on, positions in the tree
	 * are no longer those the checkpoints signed (an entry edited in place moves none) */
	bool misaligned;
	struct aj_doc doc;
	unsigned problems, stored_total, saved_total;
	/* --against files that are no checkpoint at all: they say nothing about the log */
	unsigned saved_unreadable;
	/* stored checkpoints whose signature does not verify: how many were signed by
	 * another key or for another origin, and the largest size any of them claims */
	unsigned other_key;
	uint64_t unverified_max;
	unsigned roots, roots_matched, proofs, proofs_verified;
	/* entries after the last stored checkpoint reached: those older than the grace,
	 * and those dated more than the grace ahead */
	uint64_t covered;
	int64_t uncovered_first; /* the seq of the first entry after covered */
	struct entry_run stale, future;
	int64_t grace_ms, cutoff_ms, ahead_ms;
	/* entries dated after the checkpoint covering them was written; the first one's */
	struct entry_run late;
	int64_t late_cp_at;
	uint64_t late_cp_size;
	/* entries whose time is before the entry's before them: the first, the largest step */
	bool have_at;
	int64_t last_at, last_at_seq;
	uint64_t back;
	int64_t back_seq, back_prev_seq, back_at, back_prev_at, back_max_ms;
	bool back_late; /* the first such entry's predecessor is dated after its checkpoint */
	bool oom;
	FILE *out; /* where problems are written */
};

static void problem(struct verify *vs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct verify *vs, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("problem: ", vs->out);
	vfprintf(vs->out, fmt, ap);
	fputc('\n', vs->out);
	va_end(ap);
	vs->problems++;
}

static int cp_cmp(const void *a, const void *b)
{
	const struct cp *x = a, *y = b;
	return x->size < y->size ? -1 : x->size > y->size;
}

static const char bad_signature[] =
    "its signature does not verify: the checkpoint was forged or altered";
static const char no_signature[] =
    "it carries no signature by this verifier key (another key, or another origin: see "
    "--origin and --pubkey)";
static const char other_origin[] = "its origin is not the verifier key's name";

/*
 * Open a note with the verifier; a reason when it does not verify, with
 * *unreadable set when it is no signed checkpoint at all (its form, not its
 * signature).
 */
static const char *open_note_why(const struct audit_verifier *v, const char *note, size_t len,
                                 struct audit_checkpoint *c, bool *unreadable)
{
	const char *reason = NULL;
	int rc = audit_checkpoint_open(v, note, len, c, &reason);
	*unreadable = rc != 0 && rc != ISG_ERR_NOT_FOUND && rc != ISG_ERR_CRYPTO;
	if (rc == ISG_ERR_NOT_FOUND)
		return no_signature;
	if (rc == ISG_ERR_CRYPTO)
		return bad_signature;
	if (rc != 0)
		return reason ? reason : "it is not a signed checkpoint";
	if (strcmp(c->origin, v->name) != 0)
		return other_origin;
	return NULL;
}

static const char *open_note(const struct audit_verifier *v, const char *note, size_t len,
                             struct audit_checkpoint *c)
{
	bool unreadable;
	return open_note_why(v, note, len, c, &unreadable);
}

/* Check the stored checkpoints' signatures; keep the good ones, sorted by size. */
static int load_stored(struct verify *vs, struct audit_log *l)
{
	struct audit_stored_cp *rows = NULL;
	size_t n = 0;
	int status = audit_log_checkpoints(l, &rows, &n);
	if (status != CTL_EXIT_OK)
		return status;
	vs->stored = calloc(n ? n : 1, sizeof(*vs->stored));
	if (!vs->stored) {
		audit_stored_cps_free(rows, n);
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	vs->stored_total = (unsigned)n;
	for (size_t i = 0; i < n; i++) {
		struct audit_checkpoint c;
		char size_text[24] = "(negative)";
		if (rows[i].size != UINT64_MAX)
			snprintf(size_text, sizeof(size_text), "%" PRIu64, rows[i].size);
		const char *why = open_note(&vs->v, rows[i].note, rows[i].note_len, &c);
		if (why) {
			problem(vs, "checkpoint of size %s: %s", size_text, why);
			vs->other_key += why == no_signature || why == other_origin;
			if (rows[i].size != UINT64_MAX && rows[i].size > vs->unverified_max)
				vs->unverified_max = rows[i].size;
			continue;
		}
		if (c.size != rows[i].size)
			problem(
			    vs,
			    "checkpoint row of size %s holds a signed checkpoint of size %" PRIu64
			    ": the row was altered",
			    size_text, c.size);
		struct cp *k = &vs->stored[vs->n_stored++];
		k->size = c.size;
		k->at = rows[i].at;
		memcpy(k->root, c.root, AUDIT_HASH_LEN);
	}
	audit_stored_cps_free(rows, n);
	qsort(vs->stored, vs->n_stored, sizeof(*vs->stored), cp_cmp);
	return CTL_EXIT_OK;
}

/*
 * A saved checkpoint that went through mail, a ticket or a Windows editor:
 * CRLF line ends made LF, a final newline added when it lost it. Safe: the
 * signature must still verify over the result. buf is len + 1 bytes (NUL);
 * false when out of memory.
 */
static bool normalise_saved(char **buf, size_t *len)
{
	char *b = *buf;
	size_t n = 0;
	for (size_t i = 0; i < *len; i++)
		if (!(b[i] == '\r' && i + 1 < *len && b[i + 1] == '\n'))
			b[n++] = b[i];
	if (n > 0 && b[n - 1] != '\n') {
		char *grown = realloc(b, n + 2);
		if (!grown)
			return false;
		b = grown;
		b[n++] = '\n';
	}
	b[n] = '\0';
	*buf = b;
	*len = n;
	return true;
}

/*
 * Whether text begins as a checkpoint does: its origin line, then a line
 * of decimal digits (the size). Text around a checkpoint (a mail body)
 * fails the signature too, but is no altered checkpoint.
 */
static bool starts_like_checkpoint(const char *text, const char *origin)
{
	size_t n = strlen(origin);
	if (strncmp(text, origin, n) != 0 || text[n] != '\n')
		return false;
	const char *size = text + n + 1;
	size_t digits = strspn(size, "0123456789");
	return digits > 0 && size[digits] == '\n';
}

/* Whether a saved file holds nothing but white space: saved empty, not saved wrong. */
static bool blank(const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n')
			return false;
	return true;
}

/* Read and check each --against file. */
static int load_saved(struct verify *vs, char **files, size_t n)
{
	vs->saved_total = (unsigned)n;
	vs->saved = calloc(n ? n : 1, sizeof(*vs->saved));
	if (!vs->saved) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	for (size_t i = 0; i < n; i++) {
		char *buf = NULL;
		size_t len = 0;
		/* twice the note's bound: each line end may have become CRLF */
		int status = audit_ctl_read_file(files[i], 2 * AUDIT_NOTE_MAX + 2, &buf, &len);
		if (status != CTL_EXIT_OK)
			return status;
		if (!normalise_saved(&buf, &len)) {
			free(buf);
			ctl_warn("out of memory");
			return CTL_EXIT_LOCAL;
		}
		struct audit_checkpoint c;
		bool unreadable = false;
		const char *why = open_note_why(&vs->v, buf, len, &c, &unreadable);
		if (why && unreadable && blank(buf, len))
			why = "the file is empty (save the checkpoint's lines in it)";
		else if (why && !unreadable && why == bad_signature &&
		         !starts_like_checkpoint(buf, vs->v.name)) {
			unreadable = true;
			why = "it does not begin with the checkpoint's origin line and size line "
			      "(save the checkpoint's lines alone)";
		}
		free(buf);
		if (why && unreadable) {
			problem(vs, "saved checkpoint '%s' could not be read as a checkpoint: %s",
			        files[i], why);
			vs->saved_unreadable++;
			continue;
		}
		if (why) {
			problem(vs, "saved checkpoint '%s': %s", files[i], why);
			continue;
		}
		struct cp *k = &vs->saved[vs->n_saved++];
		k->size = c.size;
		k->file = files[i];
		memcpy(k->root, c.root, AUDIT_HASH_LEN);
	}
	qsort(vs->saved, vs->n_saved, sizeof(*vs->saved), cp_cmp);
	return CTL_EXIT_OK;
}

static void flush_run(struct verify *vs)
{
	if (!vs->in_run)
		return;
	vs->in_run = false;
	int64_t d = vs->run_delta;
	if (vs->run_first == vs->run_last)
		problem(vs,
		        "entry %" PRId64 " is out of place: it holds index %" PRId64
		        " (entries were reordered, inserted or deleted)",
		        vs->run_first, vs->run_first - d);
	else
		problem(vs,
		        "entries %" PRId64 "..%" PRId64
		        " are out of place: they hold indexes %" PRId64 "..%" PRId64 " (%s)",
		        vs->run_first, vs->run_last, vs->run_first - d, vs->run_last - d,
		        d > 0 ? "entries were inserted before them"
		              : "entries before them were deleted and the rest renumbered");
}

static void check_index(struct verify *vs, int64_t seq, bool known, uint64_t index)
{
	bool repeat = known && vs->have_index && index == vs->last_index;
	int64_t before = vs->last_index_seq;
	vs->have_index = known;
	vs->last_index = index;
	vs->last_index_seq = seq;
	if (repeat) {
		flush_run(vs);
		vs->misaligned = true;
		problem(vs,
		        "entry %" PRId64 " holds index %" PRIu64 ", as entry %" PRId64
		        " does (one of them was inserted)",
		        seq, index, before);
		return;
	}
	int64_t delta = known && index <= INT64_MAX ? seq - (int64_t)index : 0;
	bool bad = known && (index > INT64_MAX || delta != 0);
	if (vs->in_run && (!bad || delta != vs->run_delta || seq != vs->run_last + 1))
		flush_run(vs);
	if (!bad)
		return;
	vs->misaligned = true;
	if (index > INT64_MAX) {
		problem(vs, "entry %" PRId64 " holds index %" PRIu64 " (inserted)", seq, index);
		return;
	}
	if (!vs->in_run) {
		vs->in_run = true;
		vs->run_delta = delta;
		vs->run_first = seq;
	}
	vs->run_last = seq;
}

static void check_seq(struct verify *vs, int64_t seq)
{
	if (seq < 1) {
		vs->misaligned = true;
		problem(vs, "a row has seq %" PRId64 ", which is no position in the log (inserted)",
		        seq);
		return;
	}
	int64_t expect = vs->any_row && vs->last_seq >= 1 ? vs->last_seq + 1 : 1;
	if (seq > expect) {
		vs->misaligned = true;
		if (seq - expect == 1)
			problem(vs, "entry %" PRId64 " is missing (deleted)", expect);
		else
			problem(vs, "entries %" PRId64 "..%" PRId64 " are missing (deleted)",
			        expect, seq - 1);
	}
	vs->any_row = true;
	vs->last_seq = seq;
}

/*
 * isgd stamps each entry with its wall clock, which an NTP step, a change by
 * hand or a restore onto a host whose clock is behind can set back: entries
 * then have earlier times than the ones before them. So do entries rewritten
 * with later times while no checkpoint covered them, then signed by a
 * restarted isgd, and the roots cannot tell the two apart. What can: isgd
 * writes a checkpoint's at no earlier than any entry it stamped (store_log.c),
 * so an entry dated after the checkpoint covering it was written was not
 * dated by the isgd that signed it. That is a problem; a time going back
 * otherwise is a note, since a period is taken by the entries' times. The
 * at column is not signed: this holds only if the rows were not edited too.
 * Nor does it hold once the log is misaligned: after an entry deleted, the
 * entries after it sit one place early, under a checkpoint signed before
 * they were written, and would all look dated after it; the gap is the
 * problem, and is reported. An entry edited in place moves nothing: the
 * check goes on past it.
 */
static void note_time(struct verify *vs, int64_t seq, const char *text)
{
	int64_t at;
	if (audit_time_parse(text, false, &at) != 0)
		return;
	/* the entry is not appended yet: the next stored checkpoint is the first to cover it */
	const struct cp *cover =
	    vs->next_stored < vs->n_stored && !vs->misaligned ? &vs->stored[vs->next_stored] : NULL;
	if (cover && at > cover->at) {
		if (vs->late.n == 0) {
			vs->late_cp_at = cover->at;
			vs->late_cp_size = cover->size;
		}
		run_add(&vs->late, seq, at);
	}
	if (vs->have_at && at < vs->last_at) {
		int64_t by = vs->last_at - at;
		if (vs->back++ == 0) {
			vs->back_seq = seq;
			vs->back_prev_seq = vs->last_at_seq;
			vs->back_at = at;
			vs->back_prev_at = vs->last_at;
			vs->back_late = vs->late.n && vs->late.last == vs->last_at_seq;
		}
		if (by > vs->back_max_ms)
			vs->back_max_ms = by;
	}
	vs->have_at = true;
	vs->last_at = at;
	vs->last_at_seq = seq;
}

/* The columns against the leaf, which is what was signed. */
static void check_leaf(struct verify *vs, int64_t seq, int64_t at, const char *kind,
                       size_t kind_len, const char *leaf, size_t len)
{
	struct audit_leaf lf;
	const char *reason = NULL;
	int rc = audit_leaf_parse(&vs->doc, leaf, len, &lf, &reason);
	if (rc == ISG_ERR_NOMEM) {
		vs->oom = true;
		return;
	}
	check_index(vs, seq, rc == 0, rc == 0 ? lf.index : 0);
	if (rc != 0) {
		problem(vs, "entry %" PRId64 " is damaged: not in the format isgd writes (%s)", seq,
		        reason);
		return;
	}
	/* event names only: an edited column may hold anything, a person's data included */
	bool nameable;
	bool differs = audit_kind_differs(kind, kind_len, lf.event, &nameable);
	if (differs && nameable)
		problem(vs, "entry %" PRId64 ": its kind column says '%s' but the entry is '%s'",
		        seq, kind, lf.event);
	else if (differs)
		problem(vs, "entry %" PRId64 ": its kind column disagrees with the entry", seq);
	char when[32];
	time_format_ms(when, sizeof(when), at);
	if (strcmp(when, lf.at) != 0)
		problem(vs, "entry %" PRId64 ": its at column says %s but the entry says %s", seq,
		        when, lf.at);
	note_time(vs, seq, lf.at);
}

static void reach_stored(struct verify *vs, struct cp *k)
{
	uint64_t pos = vs->tree.size;
	uint8_t root[AUDIT_HASH_LEN];
	audit_tree_root(&vs->tree, root);
	bool matched = memcmp(root, k->root, AUDIT_HASH_LEN) == 0;
	const struct cp *prev = vs->prev;
	bool consistent = true;
	if (prev && prev->size > 0) {
		uint8_t proof[AUDIT_PROOF_MAX][AUDIT_HASH_LEN];
		size_t n = 0;
		int rc = audit_ctl_consistency_proof(
		    &vs->prev_tree, (const uint8_t(*)[AUDIT_HASH_LEN])vs->window, pos, proof, &n);
		if (rc == 0)
			rc = audit_verify_consistency(prev->size, pos, prev->root, k->root,
			                              (const uint8_t(*)[AUDIT_HASH_LEN])proof, n);
		consistent = rc == 0;
		vs->proofs++;
		vs->proofs_verified += consistent;
	}
	uint64_t from = prev ? prev->size + 1 : 1;
	if (!matched && (!prev || prev->matched))
		problem(vs,
		        "checkpoint of size %" PRIu64
		        " does not match the log: some of entries %" PRIu64 "..%" PRIu64
		        " were changed, deleted, inserted or reordered after it was signed",
		        pos, from, pos);
	else if (!matched)
		problem(vs,
		        "checkpoint of size %" PRIu64
		        " does not match the log either (entries before it already differ)",
		        pos);
	else if (!consistent)
		problem(vs,
		        "checkpoints of sizes %" PRIu64 " and %" PRIu64
		        " are not consistent (the consistency proof fails): the log was rewritten "
		        "and signed again after the checkpoint of size %" PRIu64,
		        prev->size, pos, prev->size);
	k->matched = matched;
	vs->roots++;
	vs->roots_matched += matched;
	vs->prev = k;
	vs->prev_tree = vs->tree;
	vs->window_n = 0;
	vs->covered = pos;
	vs->stale = vs->future = (struct entry_run){0};
}

static void reach_saved(struct verify *vs, struct cp *k)
{
	uint8_t root[AUDIT_HASH_LEN];
	audit_tree_root(&vs->tree, root);
	k->matched = memcmp(root, k->root, AUDIT_HASH_LEN) == 0;
	if (!k->matched)
		problem(vs,
		        "log was truncated or rolled back: saved checkpoint of size %" PRIu64
		        " ('%s') does not match the log's first %" PRIu64
		        " entries: they were changed after it was saved",
		        k->size, k->file, k->size);
}

/* Every checkpoint whose size the tree has just reached. */
static void reach(struct verify *vs)
{
	while (vs->next_stored < vs->n_stored && vs->stored[vs->next_stored].size == vs->tree.size)
		reach_stored(vs, &vs->stored[vs->next_stored++]);
	while (vs->next_saved < vs->n_saved && vs->saved[vs->next_saved].size == vs->tree.size)
		reach_saved(vs, &vs->saved[vs->next_saved++]);
}

static bool window_add(struct verify *vs, const uint8_t hash[static AUDIT_HASH_LEN])
{
	if (!vs->prev)
		return true; /* nothing to prove consistency from yet */
	if (vs->window_n == vs->window_cap) {
		size_t cap = vs->window_cap ? vs->window_cap * 2 : 1024;
		uint8_t(*w)[AUDIT_HASH_LEN] = realloc(vs->window, cap * sizeof(*w));
		if (!w)
			return false;
		vs->window = w;
		vs->window_cap = cap;
	}
	memcpy(vs->window[vs->window_n++], hash, AUDIT_HASH_LEN);
	return true;
}

/*
 * The entry just appended, uncovered so far (it may stay so), is older than
 * the grace, or dated more than the grace ahead of this computer's clock:
 * isgd stamps entries with its clock as it writes them, so no entry it wrote
 * is from the future, and once a restarted isgd signs it, only its time
 * going back in the entries after it would show.
 */
static void note_stale(struct verify *vs, int64_t seq, int64_t at)
{
	if (vs->tree.size == vs->covered + 1)
		vs->uncovered_first = seq;
	/* under a checkpoint row that does not verify (reported): not left uncovered */
	if (vs->tree.size <= vs->unverified_max)
		return;
	if (at > vs->ahead_ms)
		run_add(&vs->future, seq, at);
	else if (at < vs->cutoff_ms)
		run_add(&vs->stale, seq, at);
}

static int stream_entries(struct verify *vs, struct audit_log *l)
{
	sqlite3_stmt *st =
	    audit_log_prepare(l, "SELECT seq, at, kind, entry FROM audit ORDER BY seq");
	if (!st)
		return CTL_EXIT_LOCAL;
	int rc;
	reach(vs);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(st, 0), at = sqlite3_column_int64(st, 1);
		const char *kind = (const char *)sqlite3_column_text(st, 2);
		const char *leaf = sqlite3_column_blob(st, 3);
		size_t len = (size_t)sqlite3_column_bytes(st, 3);
		uint8_t hash[AUDIT_HASH_LEN];
		audit_leaf_hash((const uint8_t *)(leaf ? leaf : ""), len, hash);
		check_seq(vs, seq);
		check_leaf(vs, seq, at, kind ? kind : "",
		           kind ? (size_t)sqlite3_column_bytes(st, 2) : 0, leaf ? leaf : "", len);
		if (audit_tree_append(&vs->tree, hash) != 0 || !window_add(vs, hash))
			vs->oom = true;
		if (vs->oom)
			break;
		note_stale(vs, seq, at);
		reach(vs);
	}
	int status = CTL_EXIT_OK;
	if (vs->oom) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	} else if (rc != SQLITE_DONE) {
		ctl_warn("cannot read the audit log of '%s': %s", l->store_path,
		         sqlite3_errmsg(l->db));
		status = CTL_EXIT_LOCAL;
	}
	sqlite3_finalize(st);
	flush_run(vs);
	return status;
}

/*
 * Checkpoints the log never reached: it holds fewer entries than they cover.
 * Only a log with no gap, no entry out of place and every root matching is
 * known to have lost them from its end; otherwise they may be any.
 */
static void report_unreached(struct verify *vs)
{
	uint64_t n = vs->tree.size;
	bool from_end = !vs->misaligned && vs->roots_matched == vs->roots;
	const char *which = from_end ? "entries were deleted from its end (the log was truncated)"
	                             : "entries are missing (deleted from the middle or the end)";
	for (size_t i = vs->next_stored; i < vs->n_stored; i++)
		problem(vs,
		        "checkpoint of size %" PRIu64
		        " covers more entries than the log holds (%" PRIu64 "): %s",
		        vs->stored[i].size, n, which);
	for (size_t i = vs->next_saved; i < vs->n_saved; i++)
		problem(vs,
		        "log was truncated or rolled back: saved checkpoint of size %" PRIu64
		        " ('%s') covers more entries than the log holds (%" PRIu64 ")",
		        vs->saved[i].size, vs->saved[i].file, n);
}

/*
 * Entries after the last checkpoint that are older than the grace. isgd
 * signs a checkpoint within audit.checkpoint_interval and when it stops, so
 * only deleted checkpoints, or isgd stopped by a crash, leave them. Starting
 * isgd would sign them, tampered or not: hence a copy first.
 */
static void report_stale(struct verify *vs)
{
	if (!vs->stale.n)
		return;
	char when[32], span[96];
	time_format_ms(when, sizeof(when), vs->stale.first_at);
	run_text(&vs->stale, span, sizeof(span));
	problem(vs,
	        "%s covered by no signed checkpoint though written more than %" PRId64
	        " s ago (the first at %s): isgd signs a checkpoint within "
	        "audit.checkpoint_interval (10 s by default) and when it stops, so checkpoints "
	        "were deleted, or isgd stopped without signing (a crash or power loss). Check "
	        "isgd's log for a crash. If it crashed and is stopped, keep a copy of the store "
	        "file, then start isgd: it does not sign at start but within "
	        "audit.checkpoint_interval of starting; then verify again. If isgd was running, "
	        "or did not crash, treat the log as tampered with and keep the store as "
	        "evidence",
	        span, vs->grace_ms / 1000, when);
}

/* Uncovered entries dated more than the grace ahead: see note_stale. */
static void report_future(struct verify *vs)
{
	if (!vs->future.n)
		return;
	char when[32], span[96];
	time_format_ms(when, sizeof(when), vs->future.first_at);
	run_text(&vs->future, span, sizeof(span));
	problem(vs,
	        "%s dated in the future (the first at %s, more than %" PRId64
	        " s ahead of this computer's clock) and no checkpoint covers them: isgd stamps "
	        "each entry with its clock as it writes it, so they were rewritten with later "
	        "times (perhaps after deleting the checkpoints that covered them), or isgd's "
	        "clock is ahead of this computer's. Keep a copy of the store file before isgd "
	        "is started again (it would sign them as they are) and compare with a "
	        "checkpoint saved outside the gateway (--against)",
	        span, when, vs->grace_ms / 1000);
}

/* Entries dated after the checkpoint covering them was written: see note_time. */
static void report_late(struct verify *vs)
{
	if (!vs->late.n)
		return;
	char at[32], cp_at[32], span[96];
	time_format_ms(at, sizeof(at), vs->late.first_at);
	time_format_ms(cp_at, sizeof(cp_at), vs->late_cp_at);
	run_text(&vs->late, span, sizeof(span));
	problem(vs,
	        "%s dated after the checkpoint covering %s was written (the first at %s, "
	        "covered by the checkpoint of size %" PRIu64 " written at %s): isgd never "
	        "writes a checkpoint dated before an entry it stamped while it runs. Innocently, "
	        "isgd stopped without a checkpoint (a crash, a power cut) while its clock was "
	        "ahead and was restarted with the clock corrected: isgd's log then has an "
	        "audit.entries_ahead line at that start. Otherwise their times were rewritten "
	        "while no checkpoint covered them and a restarted isgd then signed them. Ask "
	        "the admin for isgd's log, and compare with a checkpoint saved outside the "
	        "gateway (--against)",
	        span, vs->late.n == 1 ? "it" : "them", at, vs->late_cp_size, cp_at);
}

/* "entry N has an earlier time (T) than entry P (T')[, and ...]": note or problem. */
static void times_back_text(const struct verify *vs, char *out, size_t size)
{
	char at[32], prev[32];
	time_format_ms(at, sizeof(at), vs->back_at);
	time_format_ms(prev, sizeof(prev), vs->back_prev_at);
	int n = snprintf(out, size,
	                 "entry %" PRId64 " has an earlier time (%s) than entry %" PRId64 " (%s)",
	                 vs->back_seq, at, vs->back_prev_seq, prev);
	if (vs->back > 1 && n > 0 && (size_t)n < size)
		snprintf(out + n, size - (size_t)n,
		         ", and the times go back %" PRIu64 " times in all, by up to %" PRId64
		         ".%03d s",
		         vs->back, vs->back_max_ms / 1000, (int)(vs->back_max_ms % 1000));
}

/* The first time going back, when the entry before it is dated after its checkpoint. */
static void report_back(struct verify *vs)
{
	if (!vs->back || !vs->back_late)
		return;
	char text[256];
	times_back_text(vs, text, sizeof(text));
	problem(vs,
	        "%s, and entry %" PRId64 " is dated after the checkpoint covering it was "
	        "written: a clock set back while isgd ran does not look like this. Innocently, "
	        "isgd stopped without a checkpoint (a crash, a power cut) while its clock was "
	        "ahead and was restarted with the clock corrected: isgd's log then has an "
	        "audit.entries_ahead line at that start. Otherwise entries were rewritten with "
	        "later times and then signed by a restarted isgd. Ask the admin for isgd's log, "
	        "and compare with a checkpoint saved outside the gateway (--against)",
	        text, vs->back_prev_seq);
}

static void summarise_times(const struct verify *vs)
{
	if (!vs->back || vs->back_late)
		return;
	char text[256];
	times_back_text(vs, text, sizeof(text));
	printf("note: %s: this is what isgd's clock set back looks like (an NTP step, a "
	       "change by hand, or a restore onto a host whose clock was behind), and also "
	       "what entries rewritten with later times and then signed by a restarted isgd "
	       "look like. Ask the admin for isgd's clock.stepped log line, and compare with "
	       "a checkpoint saved outside the gateway (--against). --from, --to and report "
	       "place each entry by its own time\n",
	       text);
}

/*
 * Entries after the last checkpoint reached: "not yet covered" only when no
 * checkpoint claims them. One that verifies but lies beyond the log's end
 * covers them (reported); rows whose signature does not verify claim them
 * and prove nothing, which is not the same as a checkpoint yet to come.
 */
static void summarise_uncovered(const struct verify *vs)
{
	uint64_t n = vs->tree.size, left = n > vs->covered ? n - vs->covered : 0;
	if (vs->stored_total > 0 && vs->n_stored == 0) {
		char hash[2 * AUDIT_KEY_HASH_LEN + 1];
		sodium_bin2hex(hash, sizeof(hash), vs->v.key_hash, AUDIT_KEY_HASH_LEN);
		printf("note: no checkpoint could be checked with this verifier key (origin '%s', "
		       "key hash %s), so no entry is verified%s\n",
		       vs->v.name, hash,
		       vs->other_key == vs->stored_total
		           ? ": the log's checkpoints were signed by another key or for another "
		             "origin (see --origin and --pubkey)"
		           : "");
		return;
	}
	if (left == 0 || vs->next_stored < vs->n_stored)
		return;
	if (vs->unverified_max > vs->covered) {
		printf("note: entries %" PRId64 "..%" PRId64 " (%" PRIu64
		       ") are covered by no checkpoint that verifies (see the problems above): "
		       "nothing proves them\n",
		       vs->uncovered_first, vs->last_seq, left);
		return;
	}
	uint64_t fresh = left - vs->stale.n;
	int64_t first = vs->stale.n ? vs->stale.last + 1 : vs->uncovered_first;
	if (fresh == 1)
		printf("note: entry %" PRId64 " is not yet covered by a checkpoint\n",
		       vs->last_seq);
	else if (fresh > 1)
		printf("note: entries %" PRId64 "..%" PRId64 " (%" PRIu64
		       ") are not yet covered by a checkpoint\n",
		       first, vs->last_seq, fresh);
}

/*
 * The counts, then what they mean in words: the denominators differ because
 * each check applies to fewer checkpoints than the one before it.
 */
static void summarise_counts(const struct verify *vs)
{
	size_t saved_ok = 0;
	for (size_t i = 0; i < vs->n_saved; i++)
		saved_ok += vs->saved[i].matched;
	uint64_t n = vs->tree.size;
	size_t beyond = vs->n_stored - vs->next_stored;
	printf("verified: %zu of %u checkpoint signatures, %u of %u roots, %u of %u consistency "
	       "proofs, %zu of %u saved checkpoints; %" PRIu64 " entries read\n",
	       vs->n_stored, vs->stored_total, vs->roots_matched, vs->roots, vs->proofs_verified,
	       vs->proofs, saved_ok, vs->saved_total, n);
	printf("which means:\n");
	if (vs->stored_total == 0)
		printf("  - the log holds no checkpoint yet, so no signature covers any entry\n");
	else
		printf(
		    "  - %zu of the log's %u checkpoints carry a valid signature by the verifier "
		    "key\n",
		    vs->n_stored, vs->stored_total);
	if (vs->roots)
		printf("  - %u of the %u signed checkpoints within the log's %" PRIu64
		       " entries match those entries as they are now\n",
		       vs->roots_matched, vs->roots, n);
	if (beyond)
		printf("  - %zu signed checkpoint%s cover%s more entries than the log holds\n",
		       beyond, beyond == 1 ? "" : "s", beyond == 1 ? "s" : "");
	if (vs->proofs)
		printf("  - %u of %u signed checkpoints are shown to extend the checkpoint before "
		       "them without changing any entry it covers\n",
		       vs->proofs_verified, vs->proofs);
	if (vs->saved_total == 0)
		printf("  - no checkpoint saved outside the gateway was given (--against)\n");
	else
		printf("  - %zu of %u checkpoints saved outside the gateway (--against) match the "
		       "log%s\n",
		       saved_ok, vs->saved_total,
		       vs->saved_unreadable ? ", and some could not be read (see above)" : "");
}

static void summarise(const struct verify *vs)
{
	summarise_times(vs);
	summarise_uncovered(vs);
	summarise_counts(vs);
	unsigned unreadable = vs->saved_unreadable;
	if (vs->problems && vs->problems == unreadable) {
		printf(
		    "audit log checks passed, but %u saved checkpoint%s could not be read, so the "
		    "log was NOT checked against %s\n",
		    unreadable, unreadable == 1 ? "" : "s", unreadable == 1 ? "it" : "them");
		return;
	}
	if (vs->problems) {
		printf("audit log FAILED verification: %u problem%s", vs->problems,
		       vs->problems == 1 ? "" : "s");
		if (unreadable == 1)
			printf(
			    " (1 of them a saved checkpoint that could not be read, so the log was "
			    "NOT checked against it)");
		else if (unreadable)
			printf(
			    " (%u of them saved checkpoints that could not be read, so the log was "
			    "NOT checked against them)",
			    unreadable);
		else if (vs->stored_total > 0 && vs->n_stored == 0)
			printf(
			    " (no checkpoint could be checked with this verifier key: see the note "
			    "above)");
		putchar('\n');
		return;
	}
	uint64_t n = vs->tree.size;
	const struct cp *last = vs->n_stored ? &vs->stored[vs->n_stored - 1] : NULL;
	if (!last) {
		printf("audit log OK: %" PRIu64 " entr%s, 0 checkpoints\n", n,
		       n == 1 ? "y" : "ies");
		return;
	}
	char root[64];
	audit_ctl_b64(root, sizeof(root), last->root, AUDIT_HASH_LEN);
	printf("audit log OK: %" PRIu64 " entr%s, %zu checkpoint%s, latest checkpoint size %" PRIu64
	       ", root %s\n",
	       n, n == 1 ? "y" : "ies", vs->n_stored, vs->n_stored == 1 ? "" : "s", last->size,
	       root);
}

static void verify_release(struct verify *vs)
{
	free(vs->stored);
	free(vs->saved);
	free(vs->window);
	aj_doc_release(&vs->doc);
}

static int verify_help(void)
{
	printf(
	    "%s\nChecks the audit log against its signed checkpoints and reports every\n"
	    "problem: an entry changed (a checkpoint's root no longer matches), deleted\n"
	    "(a gap in seq), inserted or reordered (an entry whose index is not its seq),\n"
	    "the columns disagreeing with the signed entry, a forged checkpoint (its\n"
	    "signature does not verify), checkpoints that are not consistent with each\n"
	    "other, a log truncated below a checkpoint, entries dated after the checkpoint\n"
	    "covering them was written, and uncovered entries dated in the future. Entries\n"
	    "whose time is earlier than the entry's before them (isgd's clock set back, or\n"
	    "entries rewritten with later times and signed by a restarted isgd) are a note.\n\n"
	    "  --pubkey KEY        the verifier key to trust (isgctl audit pubkey); default:\n"
	    "                      derived from KEYS_DIR/audit-signing.key\n"
	    "  --pubkey-file FILE  the same, read from the first line of FILE\n"
	    "  --against FILE      a checkpoint saved elsewhere earlier (isgctl audit\n"
	    "                      checkpoint > FILE); the log's entries up to its size\n"
	    "                      must still give its root (its own row may be gone):\n"
	    "                      otherwise it was truncated or rolled back. Repeatable.\n"
	    "  --grace SECONDS     entries covered by no checkpoint are a problem once older\n"
	    "                      than this (default 600, or twice the config's\n"
	    "                      audit.checkpoint_interval when that is longer): isgd\n"
	    "                      signs within that interval and when it stops, so they\n"
	    "                      mean deleted checkpoints or a crash; newer ones are a note\n\n"
	    "Exits 0 and prints 'audit log OK: ...' when every check passes, 1 when any\n"
	    "fails (each problem on a line starting 'problem:') or the log cannot be read.\n"
	    "A --against file that is no checkpoint at all says nothing about the log: then\n"
	    "it prints 'audit log checks passed, but N saved checkpoint(s) could not be\n"
	    "read, so the log was NOT checked against it' and exits 1.\n\n",
	    verify_usage);
	audit_where_help(stdout, AUDIT_TAKES_ALL);
	return CTL_EXIT_OK;
}

/* Every check, once the verifier is known; problems go to vs->out. Exit status. */
static int verify_run(struct verify *vs, struct audit_log *l, char **against, size_t n_against)
{
	int status = load_stored(vs, l);
	if (status == CTL_EXIT_OK)
		status = load_saved(vs, against, n_against);
	if (status == CTL_EXIT_OK)
		status = stream_entries(vs, l);
	if (status == CTL_EXIT_OK) {
		report_unreached(vs);
		/* A signed checkpoint the log no longer reaches covers its last entries: they
		 * are missing entries' neighbours (reported), not entries left uncovered. */
		if (vs->next_stored < vs->n_stored)
			vs->stale = vs->future = (struct entry_run){0};
		report_stale(vs);
		report_future(vs);
		report_late(vs);
		report_back(vs);
	}
	return status;
}

int64_t audit_grace_default_ms(const struct audit_log *l)
{
	int64_t twice = l->checkpoint_interval_ms * 2;
	return twice > AUDIT_GRACE_DEFAULT_MS ? twice : AUDIT_GRACE_DEFAULT_MS;
}

int audit_grace_option(const char *arg, const char *usage, int64_t *ms)
{
	int64_t s;
	if (str_to_i64(arg, 0, AUDIT_GRACE_MAX_S, &s) != 0)
		return ctl_usage_error(usage,
		                       "--grace must be a whole number of seconds from 0 to %lld "
		                       "(about 100 years), not '%s'",
		                       (long long)AUDIT_GRACE_MAX_S, arg);
	*ms = s * 1000;
	return CTL_EXIT_OK;
}

/* Entries written before this are past the grace. */
static void set_grace(struct verify *vs, const struct audit_log *l, int64_t grace_ms)
{
	vs->grace_ms = grace_ms >= 0 ? grace_ms : audit_grace_default_ms(l);
	int64_t now = time_now_ms();
	vs->cutoff_ms = now - vs->grace_ms;
	vs->ahead_ms = now + vs->grace_ms;
}

int audit_verify_log(struct audit_log *l, const struct audit_verifier *v, int64_t grace_ms,
                     char **against, size_t n_against, FILE *out, struct audit_verify_result *res)
{
	struct verify vs = {.v = *v, .out = out};
	audit_tree_init(&vs.tree);
	aj_doc_init(&vs.doc);
	memset(res, 0, sizeof(*res));
	set_grace(&vs, l, grace_ms);
	int status = verify_run(&vs, l, against, n_against);
	res->problems = vs.problems;
	res->saved = vs.saved_total;
	res->saved_unreadable = vs.saved_unreadable;
	for (size_t i = 0; i < vs.n_saved; i++)
		res->saved_matched += vs.saved[i].matched;
	res->entries = vs.tree.size;
	res->checkpoints = vs.n_stored;
	const struct cp *last = vs.n_stored ? &vs.stored[vs.n_stored - 1] : NULL;
	if (last) {
		res->latest_size = last->size;
		memcpy(res->latest_root, last->root, AUDIT_HASH_LEN);
	}
	res->uncovered = vs.covered < vs.tree.size ? vs.tree.size - vs.covered : 0;
	res->stale = vs.stale.n;
	res->times_back = vs.back;
	res->times_back_seq = vs.back_seq;
	res->times_back_max_ms = vs.back_max_ms;
	verify_release(&vs);
	return status;
}

int audit_verify_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"against", required_argument, NULL, AUDIT_OPT_FIRST_OWN},
	    {"grace", required_argument, NULL, AUDIT_OPT_FIRST_OWN + 1},
	    {NULL, 0, NULL, 0},
	};
	struct audit_where w = {.takes = AUDIT_TAKES_ALL};
	char **against = calloc((size_t)argc + 1, sizeof(*against));
	size_t n_against = 0;
	int64_t grace_ms = -1;
	int opt, status = CTL_EXIT_OK;
	if (!against) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	static const int many[] = {AUDIT_OPT_FIRST_OWN, 0}; /* --against: each saved checkpoint */
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, verify_usage);
	o.many = many;
	while (status == CTL_EXIT_OK && (opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			status = CTL_EXIT_USAGE;
		else if (opt == AUDIT_OPT_FIRST_OWN)
			against[n_against++] = optarg;
		else if (opt == AUDIT_OPT_FIRST_OWN + 1)
			status = audit_grace_option(optarg, verify_usage, &grace_ms);
		else
			audit_where_option(&w, opt, optarg);
	}
	if (status == CTL_EXIT_OK && w.help) {
		free(against);
		return verify_help();
	}
	if (status == CTL_EXIT_OK && optind != argc)
		status = ctl_usage_error(verify_usage, "audit verify takes no arguments");
	if (status != CTL_EXIT_OK) {
		free(against);
		return status;
	}
	struct audit_log l;
	struct verify vs = {.out = stdout};
	char key[AUDIT_VERIFIER_KEY_MAX];
	const char *from = NULL;
	audit_tree_init(&vs.tree);
	aj_doc_init(&vs.doc);
	status = audit_log_open(&l, &w, verify_usage, true);
	if (status == CTL_EXIT_OK)
		status = audit_log_verifier(&l, &w, &vs.v, key, &from);
	if (status == CTL_EXIT_OK) {
		printf("verifier key: %s (from %s)\n", key, from);
		set_grace(&vs, &l, grace_ms);
		status = verify_run(&vs, &l, against, n_against);
	}
	if (status == CTL_EXIT_OK) {
		summarise(&vs);
		status = vs.problems ? CTL_EXIT_LOCAL : CTL_EXIT_OK;
	}
	verify_release(&vs);
	audit_log_release(&l);
	free(against);
	return status;
}

/* ---- prove ---- */

struct prove_args {
	uint64_t seq, size; /* size 0: the latest checkpoint */
};

static int prove_options(int argc, char **argv, struct audit_where *w, struct prove_args *a)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"size", required_argument, NULL, AUDIT_OPT_FIRST_OWN},
	    {NULL, 0, NULL, 0},
	};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, prove_usage);
	int opt;
	int64_t v;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == AUDIT_OPT_FIRST_OWN) {
			if (str_to_i64(optarg, 1, INT64_MAX, &v) != 0)
				return ctl_usage_error(
				    prove_usage,
				    "--size must be a tree size of 1 or more, not "
				    "'%s'",
				    optarg);
			a->size = (uint64_t)v;
		} else {
			audit_where_option(w, opt, optarg);
		}
	}
	if (w->help)
		return CTL_EXIT_OK;
	if (argc - optind != 1)
		return ctl_usage_error(prove_usage, "audit prove takes one entry number (SEQ)");
	if (str_to_i64(argv[optind], 1, INT64_MAX, &v) != 0)
		return ctl_usage_error(prove_usage,
		                       "SEQ must be an entry number of 1 or more, not '%s'",
		                       argv[optind]);
	a->seq = (uint64_t)v;
	return CTL_EXIT_OK;
}

/*
 * An entry past the end of the log is not "not yet covered": no checkpoint
 * will ever cover it, so say that it does not exist rather than to wait.
 */
static int prove_entry_exists(struct audit_log *l, uint64_t seq)
{
	uint64_t count = 0, max_seq = 0;
	int status = audit_log_count(l, &count, &max_seq);
	if (status != CTL_EXIT_OK || seq <= max_seq)
		return status;
	if (count == max_seq)
		ctl_warn("entry %" PRIu64 " does not exist: the log has %" PRIu64 " entr%s", seq,
		         count, count == 1 ? "y" : "ies");
	else /* entries are missing: numbers and count disagree */
		ctl_warn("entry %" PRIu64 " does not exist: the log has %" PRIu64
		         " entries, the last numbered %" PRIu64 "; run 'isgctl audit verify'",
		         seq, count, max_seq);
	return CTL_EXIT_LOCAL;
}

/* None of rows has size: say which sizes there are, nearest first. */
static void no_checkpoint_of_size(const struct audit_stored_cp *rows, size_t n, uint64_t size)
{
	uint64_t below = 0, above = 0;
	for (size_t i = 0; i < n; i++) {
		if (rows[i].size < size && rows[i].size > below)
			below = rows[i].size;
		if (rows[i].size > size && (above == 0 || rows[i].size < above))
			above = rows[i].size;
	}
	char near[96];
	if (below && above)
		snprintf(near, sizeof(near), "the nearest have sizes %" PRIu64 " and %" PRIu64,
		         below, above);
	else if (below || above)
		snprintf(near, sizeof(near), "the nearest has size %" PRIu64,
		         below ? below : above);
	else
		snprintf(near, sizeof(near), "the log has no checkpoint yet");
	ctl_warn("no stored checkpoint has size %" PRIu64 ": %s (see 'isgctl audit verify')", size,
	         near);
}

/* The checkpoint to prove against: of size a->size, or the latest; verified. */
static int prove_checkpoint(struct audit_log *l, const struct audit_verifier *v,
                            const struct prove_args *a, struct audit_checkpoint *c, char **note)
{
	struct audit_stored_cp *rows = NULL;
	size_t n = 0;
	int status = audit_log_checkpoints(l, &rows, &n);
	if (status != CTL_EXIT_OK)
		return status;
	const struct audit_stored_cp *pick = NULL;
	for (size_t i = 0; i < n; i++)
		if (a->size ? rows[i].size == a->size : i + 1 == n)
			pick = &rows[i];
	status = CTL_EXIT_LOCAL;
	if (!pick && a->size)
		no_checkpoint_of_size(rows, n, a->size);
	else if (!pick)
		ctl_warn("the log has no checkpoint yet");
	else if (open_note(v, pick->note, pick->note_len, c) || c->size != pick->size)
		ctl_warn("the checkpoint of size %" PRIu64
		         " does not verify; run 'isgctl audit verify'",
		         pick->size);
	else if (a->seq > c->size)
		ctl_warn("entry %" PRIu64 " is not covered by the checkpoint of size %" PRIu64 "%s",
		         a->seq, c->size,
		         a->size ? "" : " (the latest): wait for the next checkpoint");
	else if (!(*note = strdup(pick->note)))
		ctl_warn("out of memory");
	else
		status = CTL_EXIT_OK;
	audit_stored_cps_free(rows, n);
	return status;
}

/* Entry seq of the stream at pos (entries 1..size, in seq order): to the prover. */
static int prove_row(sqlite3_stmt *st, uint64_t pos, uint64_t seq, struct audit_prover *p,
                     char **leaf, size_t *leaf_len)
{
	int64_t s = sqlite3_column_int64(st, 0);
	const void *blob = sqlite3_column_blob(st, 1);
	size_t len = (size_t)sqlite3_column_bytes(st, 1);
	if (s != (int64_t)pos + 1) {
		ctl_warn("the log is not in order at entry %" PRIu64
		         " (a gap or an inserted row); run 'isgctl audit verify'",
		         pos + 1);
		return CTL_EXIT_LOCAL;
	}
	uint8_t hash[AUDIT_HASH_LEN];
	audit_leaf_hash(blob ? blob : (const void *)"", len, hash);
	if (audit_prover_append(p, hash) != 0)
		fatal("audit prove: more entries than the tree size");
	if (s != (int64_t)seq)
		return CTL_EXIT_OK;
	if (!(*leaf = malloc(len + 1))) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	if (len)
		memcpy(*leaf, blob, len);
	*leaf_len = len;
	return CTL_EXIT_OK;
}

/*
 * Stream entries 1..size once, in order, into the prover (O(log size)
 * memory, whatever the log's size), keeping a copy of entry seq's leaf.
 */
static int prove_stream(struct audit_log *l, uint64_t size, uint64_t seq, struct audit_prover *p,
                        char **leaf, size_t *leaf_len)
{
	uint64_t count = 0, max_seq = 0;
	int status = audit_log_count(l, &count, &max_seq);
	if (status != CTL_EXIT_OK)
		return status;
	if (count < size) {
		ctl_warn("the log holds %" PRIu64 " entries, fewer than the checkpoint's %" PRIu64
		         "; run 'isgctl audit verify'",
		         count, size);
		return CTL_EXIT_LOCAL;
	}
	sqlite3_stmt *st =
	    audit_log_prepare(l, "SELECT seq, entry FROM audit WHERE seq <= ?1 ORDER BY seq");
	if (!st) {
		ctl_warn("cannot read the audit log");
		return CTL_EXIT_LOCAL;
	}
	sqlite3_bind_int64(st, 1, (int64_t)size);
	uint64_t pos = 0;
	while (status == CTL_EXIT_OK && pos < size && sqlite3_step(st) == SQLITE_ROW)
		status = prove_row(st, pos++, seq, p, leaf, leaf_len);
	if (status == CTL_EXIT_OK && pos != size) {
		ctl_warn("cannot read entries 1..%" PRIu64 " of the log; run 'isgctl audit verify'",
		         size);
		status = CTL_EXIT_LOCAL;
	}
	sqlite3_finalize(st);
	return status;
}

static int print_proof(const struct prove_args *a, const struct audit_checkpoint *c,
                       const uint8_t hash[static AUDIT_HASH_LEN],
                       const uint8_t (*proof)[AUDIT_HASH_LEN], size_t n, const char *leaf,
                       size_t leaf_len, const char *note)
{
	char b64[64];
	struct strbuf b;
	strbuf_init(&b);
	audit_ctl_b64(b64, sizeof(b64), hash, AUDIT_HASH_LEN);
	strbuf_printf(&b,
	              "{\"index\":%" PRIu64 ",\"leaf_index\":%" PRIu64 ",\"tree_size\":%" PRIu64
	              ",\"leaf_hash\":\"%s\",\"proof\":[",
	              a->seq, a->seq - 1, c->size, b64);
	for (size_t i = 0; i < n; i++) {
		audit_ctl_b64(b64, sizeof(b64), proof[i], AUDIT_HASH_LEN);
		strbuf_printf(&b, "%s\"%s\"", i ? "," : "", b64);
	}
	audit_ctl_b64(b64, sizeof(b64), c->root, AUDIT_HASH_LEN);
	strbuf_printf(&b, "],\"root\":\"%s\",\"leaf\":\"", b64);
	size_t elen = sodium_base64_ENCODED_LEN(leaf_len, sodium_base64_VARIANT_ORIGINAL);
	char *enc = malloc(elen);
	if (enc) {
		audit_ctl_b64(enc, elen, (const uint8_t *)leaf, leaf_len);
		strbuf_puts(&b, enc);
		free(enc);
	} else {
		b.failed = true;
	}
	strbuf_puts(&b, "\",\"checkpoint\":");
	strbuf_json_string(&b, note);
	strbuf_puts(&b, "}\n");
	size_t len = 0;
	char *text = strbuf_take(&b, &len);
	int status = CTL_EXIT_OK;
	if (!text) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	} else if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
		ctl_output_warn("cannot write the proof: %s", ctl_output_errno_text(stdout, errno));
		status = CTL_EXIT_LOCAL;
	}
	free(text);
	return status;
}

static int prove_help(void)
{
	printf("%s\nPrints, as one JSON object, a proof that entry SEQ is in the log: its\n"
	       "leaf hash, the inclusion proof (RFC 9162), the root and the signed\n"
	       "checkpoint of the tree it is proved in (the latest, or the stored one of size\n"
	       "N), and the entry itself (base64). The proof is verified before it is\n"
	       "printed. SEQ is the audit index a receipt or an error carries.\n\n",
	       prove_usage);
	audit_where_help(stdout, AUDIT_TAKES_ALL);
	return CTL_EXIT_OK;
}

int audit_prove_cmd(int argc, char **argv)
{
	struct audit_where w = {.takes = AUDIT_TAKES_ALL};
	struct prove_args a = {0};
	int status = prove_options(argc, argv, &w, &a);
	if (status != CTL_EXIT_OK)
		return status;
	if (w.help)
		return prove_help();
	struct audit_log l;
	struct audit_verifier v;
	struct audit_checkpoint c;
	struct audit_prover p;
	char key[AUDIT_VERIFIER_KEY_MAX], *note = NULL, *leaf = NULL;
	const char *from = NULL;
	size_t leaf_len = 0, n = 0;
	uint8_t proof[AUDIT_PROOF_MAX][AUDIT_HASH_LEN], root[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN];
	status = audit_log_open(&l, &w, prove_usage, true);
	if (status == CTL_EXIT_OK)
		status = audit_log_verifier(&l, &w, &v, key, &from);
	if (status == CTL_EXIT_OK)
		status = prove_entry_exists(&l, a.seq);
	if (status == CTL_EXIT_OK)
		status = prove_checkpoint(&l, &v, &a, &c, &note);
	/* prove_checkpoint made sure that 1 <= seq <= c.size. */
	if (status == CTL_EXIT_OK && audit_prover_init(&p, c.size, a.seq - 1) != 0)
		fatal("audit prove: entry %" PRIu64 " outside the tree", a.seq);
	if (status == CTL_EXIT_OK)
		status = prove_stream(&l, c.size, a.seq, &p, &leaf, &leaf_len);
	if (status == CTL_EXIT_OK && (audit_prover_finish(&p, root, proof, &n, hash) != 0 ||
	                              memcmp(root, c.root, AUDIT_HASH_LEN) != 0)) {
		ctl_warn("the log does not match the checkpoint of size %" PRIu64
		         "; run 'isgctl audit verify'",
		         c.size);
		status = CTL_EXIT_LOCAL;
	}
	const uint8_t(*path)[AUDIT_HASH_LEN] = (const uint8_t(*)[AUDIT_HASH_LEN])proof;
	if (status == CTL_EXIT_OK &&
	    audit_verify_inclusion(a.seq - 1, c.size, hash, path, n, c.root) != 0) {
		ctl_warn("the inclusion proof of entry %" PRIu64 " does not verify", a.seq);
		status = CTL_EXIT_LOCAL;
	}
	if (status == CTL_EXIT_OK)
		status = print_proof(&a, &c, hash, path, n, leaf, leaf_len, note);
	free(leaf);
	free(note);
	audit_log_release(&l);
	return status;
}
