/*
 * Reading the log as list, subject and report do: every entry, judged by
 * its signed bytes.
 *
 * The store's at and kind columns (and its seq, the row's place) are not
 * signed: anyone who can edit the table could redate or relabel a row, so a
 * period or a kind taken from them could hide an exchange that only
 * `isgctl audit verify` would notice. So every row is read, whatever its
 * columns say, and placed in the period by the time inside its leaf; what
 * the commands print or count comes from the leaf too. An entry whose leaf
 * cannot be read (or whose signed time is no time) cannot be placed, so it
 * may belong to any period: the reader counts it, and each command says its
 * answer is INCOMPLETE. A row whose columns disagree with its leaf was
 * edited: the answer is still whole and right, since it comes from the
 * leaf, but the officer must hear of it, so the reader warns, naming the
 * entry by its signed index and, for the kind, the two event names when
 * both are events isgd writes, never another value from the row.
 */
#include <inttypes.h>
#include <string.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"

static bool two_digits(const char *s, int *out)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return false;
	*out = (s[0] - '0') * 10 + (s[1] - '0');
	return true;
}

int audit_time_parse(const char *s, bool end, int64_t *out)
{
	char date[11];
	size_t len = strlen(s);
	int64_t days;
	if (len < 10)
		return ISG_ERR_PARSE;
	memcpy(date, s, 10);
	date[10] = '\0';
	if (date_parse_days(date, &days) != 0)
		return ISG_ERR_PARSE;
	if (len == 10) {
		*out = (days + (end ? 1 : 0)) * 86400000 - (end ? 1 : 0);
		return 0;
	}
	int h, m, sec, ms = 0;
	const char *t = s + 10;
	if (len != 20 && len != 24)
		return ISG_ERR_PARSE;
	if (t[0] != 'T' || !two_digits(t + 1, &h) || t[3] != ':' || !two_digits(t + 4, &m) ||
	    t[6] != ':' || !two_digits(t + 7, &sec) || s[len - 1] != 'Z')
		return ISG_ERR_PARSE;
	if (len == 24) {
		int hi, lo;
		if (t[9] != '.' || !two_digits(t + 10, &hi) || t[12] < '0' || t[12] > '9')
			return ISG_ERR_PARSE;
		lo = t[12] - '0';
		ms = hi * 10 + lo;
	}
	if (h > 23 || m > 59 || sec > 59)
		return ISG_ERR_PARSE;
	/* an end given to the second covers that whole second, as a date covers its day */
	if (end && len == 20)
		ms = 999;
	*out = days * 86400000 + ((int64_t)h * 3600 + m * 60 + sec) * 1000 + ms;
	return 0;
}

void audit_reader_init(struct audit_reader *r, int64_t from_ms, int64_t to_ms)
{
	memset(r, 0, sizeof(*r));
	r->from_ms = from_ms;
	r->to_ms = to_ms;
	aj_doc_init(&r->doc);
}

void audit_reader_release(struct audit_reader *r)
{
	if (r)
		aj_doc_release(&r->doc);
}

/* The first few indexes, then how many more: "3, 9 and 4 more". */
static void seqs_text(struct strbuf *b, const int64_t *seqs, uint64_t n)
{
	for (uint64_t i = 0; i < n && i < AUDIT_READ_SHOWN; i++)
		strbuf_printf(b, "%s%" PRId64, i ? ", " : "", seqs[i]);
	if (n > AUDIT_READ_SHOWN)
		strbuf_printf(b, " and %" PRIu64 " more", n - AUDIT_READ_SHOWN);
}

static void note_unread(struct audit_reader *r, int64_t seq)
{
	if (r->unread < AUDIT_READ_SHOWN)
		r->unread_seq[r->unread] = seq;
	if (r->unread++ == 0 && !r->quiet)
		ctl_warn("entry %" PRId64 " is not a valid audit entry and is left out; run "
		         "'isgctl audit verify'",
		         seq);
}

bool audit_kind_differs(const char *kind, size_t len, const char *event, bool *nameable)
{
	bool plain = len == strlen(kind);
	*nameable = plain && audit_event_known(kind) && audit_event_known(event);
	return !plain || strcmp(kind, event) != 0;
}

/* One row of the table: its unsigned columns. */
struct audit_row {
	int64_t seq, at;
	const char *kind; /* "" when the column is NULL */
	size_t kind_len;  /* its bytes: a NUL inside makes it longer than strlen */
};

/*
 * The row's columns against its leaf (index, time and event), which is what
 * was signed and what the commands go by. The first edited row is named,
 * the others counted.
 */
static void check_columns(struct audit_reader *r, const struct audit_row *row,
                          const struct audit_leaf *lf, int64_t at)
{
	bool nameable;
	bool kind = audit_kind_differs(row->kind, row->kind_len, lf->event, &nameable);
	bool seq = row->seq < 1 || (uint64_t)row->seq != lf->index;
	if (!kind && !seq && row->at == at)
		return;
	int64_t index = lf->index > INT64_MAX ? INT64_MAX : (int64_t)lf->index;
	if (r->edited < AUDIT_READ_SHOWN)
		r->edited_index[r->edited] = index;
	if (r->edited++ > 0 || r->quiet)
		return;
	const char *what = "the table was edited, and the signed entry is what counts (run 'isgctl "
	                   "audit verify')";
	if (kind && nameable) {
		ctl_warn("entry %" PRId64 ": its kind column says '%s' but the signed entry is "
		         "'%s': %s",
		         index, row->kind, lf->event, what);
		return;
	}
	/* the columns by name, never what was written into them */
	bool at_edited = row->at != at;
	ctl_warn("entry %" PRId64 ": its %s%s%s%s%s column%s disagree%s with the signed entry: %s",
	         index, kind ? "kind" : "", kind && (seq || at_edited) ? ", " : "",
	         seq ? "seq" : "", seq && at_edited ? ", " : "", at_edited ? "at" : "",
	         kind + seq + at_edited > 1 ? "s" : "", kind + seq + at_edited > 1 ? "" : "s",
	         what);
}

/* One row: CTL_EXIT_OK, or the callback's status, which stops the read. */
static int read_row(struct audit_reader *r, const struct audit_row *row, const char *leaf,
                    size_t len, audit_entry_fn fn, void *ctx)
{
	struct audit_leaf lf;
	int64_t at;
	int rc = audit_leaf_parse(&r->doc, leaf ? leaf : "", len, &lf, NULL);
	if (rc == ISG_ERR_NOMEM) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	/* a time that is no date (a 31 February) cannot be placed in any period */
	if (rc != 0 || audit_time_parse(lf.at, false, &at) != 0) {
		note_unread(r, row->seq);
		return CTL_EXIT_OK;
	}
	check_columns(r, row, &lf, at);
	if (at < r->from_ms || at > r->to_ms)
		return CTL_EXIT_OK;
	return fn(ctx, &r->doc, &lf, at, leaf, len);
}

int audit_read_entries(struct audit_log *l, struct audit_reader *r, audit_entry_fn fn, void *ctx)
{
	/* every row, in the table's order: no column narrows the read (see the top) */
	sqlite3_stmt *st =
	    audit_log_prepare(l, "SELECT seq, at, kind, entry FROM audit ORDER BY seq");
	if (!st)
		return CTL_EXIT_LOCAL;
	int rc = SQLITE_DONE, status = CTL_EXIT_OK;
	while (status == CTL_EXIT_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(st, 2);
		struct audit_row row = {sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
		                        kind ? kind : "",
		                        kind ? (size_t)sqlite3_column_bytes(st, 2) : 0};
		const char *leaf = sqlite3_column_blob(st, 3);
		status = read_row(r, &row, leaf, (size_t)sqlite3_column_bytes(st, 3), fn, ctx);
	}
	if (status == CTL_EXIT_OK && rc != SQLITE_DONE) {
		ctl_warn("cannot read the audit log of '%s': %s", l->store_path,
		         sqlite3_errmsg(l->db));
		status = CTL_EXIT_LOCAL;
	}
	sqlite3_finalize(st);
	if (r->edited > 1 && !r->quiet) {
		struct strbuf b;
		strbuf_init(&b);
		seqs_text(&b, r->edited_index, r->edited);
		ctl_warn("%" PRIu64
		         " entries in all (%s) disagree with their rows' at, kind or seq "
		         "column; for each, the signed entry is what counts",
		         r->edited, b.p ? b.p : "?");
		strbuf_release(&b);
	}
	return status;
}

void audit_reader_unread_text(const struct audit_reader *r, struct strbuf *b)
{
	seqs_text(b, r->unread_seq, r->unread);
}

void audit_reader_incomplete(const struct audit_reader *r, const char *answer, const char *why)
{
	struct strbuf b;
	strbuf_init(&b);
	audit_reader_unread_text(r, &b);
	ctl_warn("%s is INCOMPLETE: %" PRIu64 " entr%s (%s) could not be read and %s", answer,
	         r->unread, r->unread == 1 ? "y" : "ies", b.p ? b.p : "?", why);
	strbuf_release(&b);
}
