/*
 * isgctl audit list and subject: the IG officer's questions without SQL.
 *
 * list shows entries, filtered by time, partner, agreement, kind and
 * outcome, as a table, CSV or JSON Lines (the exact entries). Like subject
 * and report, it reads every entry through cmd_audit_read.c and judges it by
 * its signed bytes alone: its time, kind and every member shown or matched
 * come from the signed entry, never from the table's columns.
 *
 * subject finds every exchange whose message named one identifier (an NHS
 * number, a name: a name is not one person's alone). The log never
 * holds an identifier: message.accepted entries list their subjects as
 * pseudonyms under the `audit` linkage domain. subject normalises the
 * identifier it is given, computes its pseudonyms under the versions of the
 * audit key it can reach and lists the matching message.accepted entries
 * with the delivered, acknowledged and expired entries of the same
 * messages. The person is matched over the whole log and --from and --to
 * say only what is listed: a delivery in the period of a message accepted
 * before it is a disclosure in the period. It reads every entry of the log
 * and judges each by its signed bytes, never by the table's at, kind or
 * seq column: anyone who can edit the table could otherwise hide an
 * exchange by relabelling, redating or renumbering its row, and an entry
 * that cannot be read, whatever its row says, makes the answer incomplete.
 * What it finds is listed once the log is read, in signed index order, so
 * the answer does not depend on the rows' order either. The identifier
 * is never printed, and wiped from memory (and from the command line) once
 * hashed; typed at a terminal, it is not echoed.
 *
 * Judging entries by their bytes catches edited columns, not edited bytes:
 * an entry whose pseudonym lost a character reads as an entry about someone
 * else. Only the signed checkpoints vouch for the bytes, so both commands
 * end by running verify's checks (cmd_audit_integrity.c) and saying the
 * result, and fail when the log does not verify.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"
#include "keys/keys.h"
#include "pseudo/pseudo.h"

#define SHOWN_MAX 120 /* bytes of one value shown in a table cell */
#define SUBJECT_LINE_MAX 1024

static const char list_usage[] =
    "usage: isgctl audit list (--config ISGD_YAML | --store DB [--keys KEYS_DIR])\n"
    "                         [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n"
    "                         [--against FILE ...] [--from TIME] [--to TIME]\n"
    "                         [--partner ID] [--agreement ID] [--kind KIND]\n"
    "                         [--outcome accepted|refused] [--format table|csv|jsonl]\n";
static const char subject_usage[] =
    "usage: isgctl audit subject (--nhs-number N | --pnc-id X | --postcode P | --email E |\n"
    "                             --name N | --identifier X)\n"
    "                            (--config ISGD_YAML | --store DB --keys KEYS_DIR)\n"
    "                            [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n"
    "                            [--against FILE ...]\n"
    "                            [--from TIME] [--to TIME] [--format table|csv|jsonl]\n";

enum list_format { FORMAT_TABLE, FORMAT_CSV, FORMAT_JSONL };
enum outcome { OUTCOME_ANY, OUTCOME_ACCEPTED, OUTCOME_REFUSED };

struct list_filter {
	int64_t from_ms, to_ms;
	const char *from, *to; /* as given, for messages */
	const char *partner, *agreement, *kind;
	enum outcome outcome;
	enum list_format format;
};

enum {
	OPT_FROM = AUDIT_OPT_FIRST_OWN,
	OPT_TO,
	OPT_PARTNER,
	OPT_AGREEMENT,
	OPT_KIND,
	OPT_OUTCOME,
	OPT_FORMAT,
	OPT_AGAINST,
	OPT_IDENT, /* OPT_IDENT + pseudo_type: the identifier options of subject */
};

/* ---- options shared by list and subject ---- */

/*
 * What they read: the store, and the verifier key of its checkpoints
 * (KEYS_DIR and the origin, or --pubkey); subject also the audit domain's key.
 */
#define LIST_TAKES AUDIT_TAKES_ALL
#define SUBJECT_TAKES AUDIT_TAKES_ALL

/* --against FILE, repeatable: checkpoints saved elsewhere, as for verify. */
struct against {
	char **files; /* argc long */
	size_t n;
};

static const int against_many[] = {OPT_AGAINST, 0};

/* Each --against file can be opened, said before a long answer rather than after it. */
static int against_readable(const struct against *a)
{
	for (size_t i = 0; i < a->n; i++)
		if (access(a->files[i], R_OK) != 0) {
			ctl_warn("--against '%s': %s", a->files[i], ctl_errno_text(errno));
			return CTL_EXIT_LOCAL;
		}
	return CTL_EXIT_OK;
}

static int against_init(struct against *a, int argc)
{
	a->n = 0;
	a->files = calloc((size_t)argc + 1, sizeof(*a->files));
	if (!a->files)
		ctl_warn("out of memory");
	return a->files ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
}

/*
 * Once the answer is printed: verify's checks over the whole log, in the
 * same snapshot, and what they say of it. The status of the answer stands
 * when worse; a log that does not verify fails an answer that was whole.
 */
static int integrity_after(struct audit_log *l, const struct audit_where *w,
                           const struct against *a, const char *answer, int status)
{
	struct audit_integrity in;
	int checked = audit_integrity_check(l, w, a->files, a->n, &in);
	if (checked == CTL_EXIT_OK)
		checked = audit_integrity_say(&in, answer);
	return status != CTL_EXIT_OK ? status : checked;
}

/* An event, or a family: the part of an event before its dot ("message"). */
static bool kind_known(const char *kind)
{
	size_t n = strlen(kind);
	for (size_t i = 0; i < audit_events_n; i++) {
		const char *e = audit_events[i];
		if (strcmp(kind, e) == 0 || (strncmp(kind, e, n) == 0 && e[n] == '.'))
			return true;
	}
	return false;
}

/* 1 when opt was a filter option, 0 when not, CTL_EXIT_USAGE (as -1) on a bad value. */
static int filter_option(struct list_filter *f, int opt, const char *arg, const char *usage)
{
	static const char *const formats[] = {"table", "csv", "jsonl"};
	switch (opt) {
	case OPT_FROM:
	case OPT_TO:
		if (audit_time_parse(arg, opt == OPT_TO,
		                     opt == OPT_FROM ? &f->from_ms : &f->to_ms) != 0) {
			ctl_usage_error(usage,
			                "%s must be a date YYYY-MM-DD or a time "
			                "YYYY-MM-DDTHH:MM:SS[.mmm]Z (UTC), not '%s'",
			                opt == OPT_FROM ? "--from" : "--to", arg);
			return -1;
		}
		*(opt == OPT_FROM ? &f->from : &f->to) = arg;
		return 1;
	case OPT_PARTNER:
		f->partner = arg;
		return 1;
	case OPT_AGREEMENT:
		f->agreement = arg;
		return 1;
	case OPT_KIND:
		if (!kind_known(arg)) {
			ctl_usage_error(
			    usage,
			    "--kind must be a family (connection, message, policy, keys) or "
			    "one of its events (connection.accepted, connection.refused, "
			    "connection.closed, message.accepted, message.refused, "
			    "message.delivered, message.acknowledged, message.expired, "
			    "policy.loaded, policy.refused, keys.loaded), not '%s'",
			    arg);
			return -1;
		}
		f->kind = arg;
		return 1;
	case OPT_OUTCOME:
		if (strcmp(arg, "accepted") == 0 || strcmp(arg, "refused") == 0) {
			f->outcome = arg[0] == 'a' ? OUTCOME_ACCEPTED : OUTCOME_REFUSED;
			return 1;
		}
		ctl_usage_error(usage, "--outcome must be accepted or refused, not '%s'", arg);
		return -1;
	case OPT_FORMAT:
		for (size_t i = 0; i < ARRAY_LEN(formats); i++) {
			if (strcmp(arg, formats[i]) == 0) {
				f->format = (enum list_format)i;
				return 1;
			}
		}
		ctl_usage_error(usage, "--format must be table, csv or jsonl, not '%s'", arg);
		return -1;
	default:
		return 0;
	}
}

/* After the options: a period that ends before it starts is a mistake, as in report. */
static int filter_check(const struct list_filter *f, const char *usage)
{
	if (f->from && f->to && f->to_ms < f->from_ms)
		return ctl_usage_error(usage, "--to '%s' is before --from '%s'", f->to, f->from);
	return CTL_EXIT_OK;
}

static void filter_init(struct list_filter *f)
{
	memset(f, 0, sizeof(*f));
	f->from_ms = INT64_MIN;
	f->to_ms = INT64_MAX;
}

/* ---- matching ---- */

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* KIND is an event ("message.refused") or a family of them ("message"). */
static bool kind_matches(const char *want, const char *event)
{
	if (strcmp(want, event) == 0)
		return true;
	size_t n = strlen(want);
	return !strchr(want, '.') && strncmp(event, want, n) == 0 && event[n] == '.';
}

static bool str_is(const char *s, const char *want)
{
	return s && strcmp(s, want) == 0;
}

static bool entry_matches(const struct list_filter *f, const struct aj_doc *d,
                          const struct audit_leaf *lf)
{
	const struct aj_node *b = lf->body;
	if (f->kind && !kind_matches(f->kind, lf->event))
		return false;
	if (f->outcome == OUTCOME_ACCEPTED && !ends_with(lf->event, ".accepted"))
		return false;
	if (f->outcome == OUTCOME_REFUSED && !ends_with(lf->event, ".refused"))
		return false;
	if (f->agreement && !str_is(aj_string(d, b, "agreement_id"), f->agreement))
		return false;
	if (f->partner && !str_is(aj_string(d, b, "sender"), f->partner) &&
	    !str_is(aj_string(d, b, "recipient"), f->partner) &&
	    !str_is(aj_string(d, b, "partner"), f->partner))
		return false;
	return true;
}

/* ---- output ---- */

struct lister {
	enum list_format format;
	bool header;
	uint64_t shown;
};

/* A member as text: a string (made printable), a number's literal, or "". */
static void member_text(char *out, size_t size, const struct aj_doc *d, const struct aj_node *o,
                        const char *key)
{
	const struct aj_node *m = aj_member(d, o, key);
	out[0] = '\0';
	if (m && (m->type == AJ_STRING || m->type == AJ_NUMBER)) {
		char tmp[SHOWN_MAX + 1];
		size_t n = m->len < SHOWN_MAX ? m->len : SHOWN_MAX;
		memcpy(tmp, m->str, n);
		tmp[n] = '\0';
		audit_ctl_printable(out, size, tmp, SHOWN_MAX);
	}
}

static const char *or_dash(const char *s)
{
	return s[0] ? s : "-";
}

static void print_table_row(const struct aj_doc *d, const struct audit_leaf *lf)
{
	char sender[SHOWN_MAX * 2], recipient[SHOWN_MAX * 2], partner[SHOWN_MAX * 2];
	char agreement[SHOWN_MAX * 2], version[32], dataset[SHOWN_MAX * 2], records[32];
	char rule[SHOWN_MAX * 2], kind[SHOWN_MAX * 2], who[SHOWN_MAX * 5], what[SHOWN_MAX * 3];
	char repeated[32], why[SHOWN_MAX * 3];
	const struct aj_node *b = lf->body;
	member_text(sender, sizeof(sender), d, b, "sender");
	member_text(recipient, sizeof(recipient), d, b, "recipient");
	member_text(partner, sizeof(partner), d, b, "partner");
	member_text(agreement, sizeof(agreement), d, b, "agreement_id");
	member_text(version, sizeof(version), d, b, "agreement_version");
	member_text(dataset, sizeof(dataset), d, b, "dataset");
	member_text(records, sizeof(records), d, b, "records");
	member_text(rule, sizeof(rule), d, b, "rule");
	if (!rule[0])
		member_text(rule, sizeof(rule), d, b, "reason");
	/* A connection.refused entry that stands for several refusals says how many. */
	member_text(repeated, sizeof(repeated), d, b, "repeated");
	if (repeated[0])
		snprintf(why, sizeof(why), "%s (%s refusal%s)", or_dash(rule), repeated,
		         strcmp(repeated, "1") == 0 ? "" : "s");
	else
		snprintf(why, sizeof(why), "%s", or_dash(rule));
	audit_ctl_printable(kind, sizeof(kind), lf->event, SHOWN_MAX);
	if (sender[0] || recipient[0])
		snprintf(who, sizeof(who), "%s -> %s", or_dash(sender), or_dash(recipient));
	else
		snprintf(who, sizeof(who), "%s", or_dash(partner));
	if (agreement[0] && version[0])
		snprintf(what, sizeof(what), "%s v%s", agreement, version);
	else
		snprintf(what, sizeof(what), "%s", or_dash(agreement));
	printf("%6" PRIu64 "  %-24s  %-20s  %-28s  %-34s  %-22s  %7s  %s\n", lf->index, lf->at,
	       kind, who, what, or_dash(dataset), or_dash(records), why);
}

/* New columns go last, so that a spreadsheet or script reading the first
 * ones by position goes on working. */
static const char *const csv_members[] = {
    "sender",  "recipient", "partner", "agreement_id", "agreement_version", "purpose",  "dataset",
    "records", "code",      "rule",    "reason",       "message_id",        "repeated", "first_at",
    "last_at", "peer",      "subject", "lawful_basis",
};

/* A member's value as one cell: a string or number as it is, an array of
 * strings (lawful_basis) joined with "; ". NULL when out of memory. */
static char *csv_value(const struct aj_doc *d, const struct aj_node *m, bool *number)
{
	*number = m && m->type == AJ_NUMBER;
	if (m && (*number || m->type == AJ_STRING))
		return strndup(m->str, m->len);
	struct strbuf b;
	strbuf_init(&b);
	if (m && m->type == AJ_ARRAY)
		for (const struct aj_node *e = aj_first(d, m); e; e = aj_next(d, e))
			if (e->type == AJ_STRING) {
				if (b.len)
					strbuf_puts(&b, "; ");
				strbuf_append(&b, e->str, e->len);
			}
	size_t len = 0;
	return strbuf_take(&b, &len);
}

/*
 * RFC 4180 cell. Control characters become '?' (the text may come from a
 * partner and end up on a terminal); a text cell a spreadsheet would run as
 * a formula gets a leading quote.
 */
static void csv_cell(struct strbuf *b, const char *raw, bool text)
{
	size_t n = strlen(raw);
	char *s = malloc(n + 8);
	if (!s) {
		b->failed = true;
		return;
	}
	audit_ctl_printable(s, n + 8, raw, n);
	bool formula = text && (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@');
	bool quote = formula || strpbrk(s, ",\"") != NULL;
	strbuf_puts(b, ",");
	if (quote)
		strbuf_puts(b, "\"");
	if (formula)
		strbuf_puts(b, "'");
	for (const char *p = s; *p; p++) {
		if (*p == '"')
			strbuf_puts(b, "\"");
		strbuf_append(b, p, 1);
	}
	if (quote)
		strbuf_puts(b, "\"");
	free(s);
}

static void print_csv_row(const struct aj_doc *d, const struct audit_leaf *lf)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_printf(&b, "%" PRIu64 ",%s", lf->index, lf->at);
	csv_cell(&b, lf->event, true);
	for (size_t i = 0; i < ARRAY_LEN(csv_members); i++) {
		bool number;
		char *copy = csv_value(d, aj_member(d, lf->body, csv_members[i]), &number);
		if (!copy) {
			b.failed = true;
			break;
		}
		csv_cell(&b, copy, !number);
		free(copy);
	}
	strbuf_puts(&b, "\n");
	size_t len = 0;
	char *text = strbuf_take(&b, &len);
	if (text)
		fwrite(text, 1, len, stdout);
	free(text);
}

/* The entry's signed index, time and members: what was signed, not the table's columns. */
static void lister_row(struct lister *ls, const struct aj_doc *d, const struct audit_leaf *lf,
                       const char *leaf, size_t len)
{
	if (!ls->header && ls->format == FORMAT_TABLE)
		printf("%6s  %-24s  %-20s  %-28s  %-34s  %-22s  %7s  %s\n", "SEQ", "TIME", "KIND",
		       "PARTNERS", "AGREEMENT", "DATASET", "RECORDS", "RULE");
	if (!ls->header && ls->format == FORMAT_CSV) {
		printf("seq,at,kind");
		for (size_t i = 0; i < ARRAY_LEN(csv_members); i++)
			printf(",%s", csv_members[i]);
		printf("\n");
	}
	ls->header = true;
	ls->shown++;
	if (ls->format == FORMAT_TABLE)
		print_table_row(d, lf);
	else if (ls->format == FORMAT_CSV)
		print_csv_row(d, lf);
	else if (fwrite(leaf, 1, len, stdout) == len) /* the exact entry, one per line */
		fputc('\n', stdout);
}

/* ---- reading ---- */

/* After the read: a list that could not be written fails (a reader gone, said as such). */
static int lister_flush(int status)
{
	if (fflush(stdout) != 0) {
		ctl_output_warn("cannot write the list: %s", ctl_output_errno_text(stdout, errno));
		return CTL_EXIT_LOCAL;
	}
	return status;
}

/* ---- list ---- */

struct list_ctx {
	const struct list_filter *f;
	struct lister ls;
};

static int list_entry(void *ctx, const struct aj_doc *d, const struct audit_leaf *lf, int64_t at_ms,
                      const char *leaf, size_t len)
{
	struct list_ctx *c = ctx;
	(void)at_ms;
	if (entry_matches(c->f, d, lf))
		lister_row(&c->ls, d, lf, leaf, len);
	return CTL_EXIT_OK;
}

static int list_help(void)
{
	printf("%s\nLists audit entries, oldest first. Filters (all must match):\n"
	       "  --from TIME, --to TIME   UTC, YYYY-MM-DD (a whole day) or\n"
	       "                           YYYY-MM-DDTHH:MM:SS[.mmm]Z; both ends included\n"
	       "                           (a --to day or second: all of it)\n"
	       "  --partner ID             the entry's sender, recipient or partner\n"
	       "  --agreement ID           the agreement id\n"
	       "  --kind KIND              an event (message.refused) or a family: connection,\n"
	       "                           message, policy or keys\n"
	       "  --outcome accepted|refused  events ending in .accepted or .refused\n"
	       "  --format table|csv|jsonl table (default) for people, csv for a spreadsheet,\n"
	       "                           jsonl for the exact entries, one per line\n"
	       "  --pubkey KEY, --pubkey-file FILE  the verifier key, as for verify\n"
	       "  --against FILE           as for verify: a checkpoint saved elsewhere earlier\n"
	       "                           (repeatable)\n"
	       "Every entry is read and judged by its own bytes, never by the store\n"
	       "table's columns: the times are the entries' own, and a row whose columns\n"
	       "were edited is named in a warning. Then the checks of 'isgctl audit verify'\n"
	       "run over the whole log, and the last line says whether the entries are\n"
	       "those signed: 'audit log OK against N signed checkpoints', 'FAILED' or\n"
	       "'NOT VERIFIED' (no verifier key). Exits 1, after listing what it could\n"
	       "read, when the log FAILED or was NOT VERIFIED (the list may be incomplete\n"
	       "or wrong), or when entries cannot be read: wherever their rows say they\n"
	       "are, they may belong to the list, which is then INCOMPLETE.\n\n",
	       list_usage);
	audit_where_help(stdout, LIST_TAKES);
	return CTL_EXIT_OK;
}

static int list_options(int argc, char **argv, const struct option *opts, struct audit_where *w,
                        struct list_filter *f, struct against *a)
{
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, list_usage);
	o.many = against_many;
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == OPT_AGAINST) {
			a->files[a->n++] = optarg;
			continue;
		}
		int r = filter_option(f, opt, optarg, list_usage);
		if (r < 0)
			return CTL_EXIT_USAGE;
		if (r == 0)
			audit_where_option(w, opt, optarg);
	}
	if (w->help)
		return CTL_EXIT_OK;
	if (optind != argc)
		return ctl_usage_error(list_usage, "audit list takes no arguments");
	return filter_check(f, list_usage);
}

int audit_list_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"against", required_argument, NULL, OPT_AGAINST},
	    {"from", required_argument, NULL, OPT_FROM},
	    {"to", required_argument, NULL, OPT_TO},
	    {"partner", required_argument, NULL, OPT_PARTNER},
	    {"agreement", required_argument, NULL, OPT_AGREEMENT},
	    {"kind", required_argument, NULL, OPT_KIND},
	    {"outcome", required_argument, NULL, OPT_OUTCOME},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {NULL, 0, NULL, 0},
	};
	struct audit_where w = {.takes = LIST_TAKES};
	struct list_filter f;
	struct against a;
	filter_init(&f);
	if (against_init(&a, argc) != CTL_EXIT_OK)
		return CTL_EXIT_LOCAL;
	int status = list_options(argc, argv, opts, &w, &f, &a);
	if (status == CTL_EXIT_OK && w.help)
		status = list_help();
	else if (status == CTL_EXIT_OK)
		status = against_readable(&a);
	if (status != CTL_EXIT_OK || w.help) {
		free(a.files);
		return status;
	}
	struct audit_log l;
	struct audit_reader r;
	struct list_ctx c = {.f = &f, .ls = {.format = f.format}};
	audit_reader_init(&r, f.from_ms, f.to_ms);
	status = audit_log_open(&l, &w, list_usage, true);
	if (status == CTL_EXIT_OK)
		status = lister_flush(audit_read_entries(&l, &r, list_entry, &c));
	bool answered = status == CTL_EXIT_OK;
	/*
	 * An entry that cannot be read cannot be placed in time or matched: it may
	 * belong to the list, so the list must not pass for the whole, as in subject.
	 */
	if (answered && r.unread) {
		audit_reader_incomplete(&r, "the list",
		                        "may belong to it; run 'isgctl audit verify'");
		status = CTL_EXIT_LOCAL;
	} else if (answered && c.ls.shown == 0) {
		ctl_warn("no entry matches");
	}
	if (answered)
		status = integrity_after(&l, &w, &a, "this list", status);
	audit_reader_release(&r);
	audit_log_release(&l);
	free(a.files);
	return status;
}

/* ---- subject ---- */

/*
 * A message.accepted entry about the person, whether an entry of it was
 * listed, and whether the log (in the period or not) says it was handed
 * out or purged: one neither is still waiting at the gateway.
 */
struct subject_message {
	uint64_t index; /* signed */
	bool listed, delivered, expired;
};

/* An entry to list: its exact bytes, printed once the log is read, in index order. */
struct subject_found {
	uint64_t index; /* signed */
	size_t order;   /* its place in the read: rows holding one index stay in it */
	char *leaf;
	size_t len;
};

/* The pseudonyms of one person under every reachable version of the audit key. */
struct subject {
	char (*pseudonyms)[PSEUDO_TEXT_MAX];
	size_t n, cap;
	int64_t from_ms, to_ms;           /* what is listed: entries of this period */
	struct subject_message *messages; /* every one of the whole log, by index */
	size_t n_messages, cap_messages;
	struct subject_found *found; /* what is listed, of the person's messages */
	size_t n_found, cap_found;
	uint64_t exchanges; /* messages with an entry listed */
	uint64_t without_subjects, accepted_seen;
	/*
	 * A delivery is linked to its message only once the message.accepted
	 * entry has been read. Rows come in seq order, which nothing signs: when
	 * they did not come in rising signed order (or an outcome names an index
	 * not before its own), a message may have been read after its delivery,
	 * so the log is read a second time with every message known.
	 */
	uint64_t last_index;
	bool reread, known; /* known: the second read, which adds no message */
	struct lister ls;
};

static bool subject_has(const struct subject *s, const char *p)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->pseudonyms[i], p) == 0)
			return true;
	return false;
}

/*
 * Kept sorted: entries come in seq order, which is index order unless the
 * table was edited, so this nearly always appends.
 */
static struct subject_message *message_add(struct subject *s, uint64_t index)
{
	size_t i = s->n_messages;
	while (i > 0 && s->messages[i - 1].index > index)
		i--;
	/* a second entry claiming the same index: one exchange */
	if (i > 0 && s->messages[i - 1].index == index)
		return &s->messages[i - 1];
	if (s->n_messages == s->cap_messages) {
		size_t cap = s->cap_messages ? s->cap_messages * 2 : 64;
		struct subject_message *m = realloc(s->messages, cap * sizeof(*m));
		if (!m)
			return NULL;
		s->messages = m;
		s->cap_messages = cap;
	}
	memmove(&s->messages[i + 1], &s->messages[i], (s->n_messages - i) * sizeof(*s->messages));
	s->messages[i] = (struct subject_message){index, false, false, false};
	s->n_messages++;
	return &s->messages[i];
}

static struct subject_message *message_find(struct subject *s, uint64_t index)
{
	size_t lo = 0, hi = s->n_messages;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->messages[mid].index == index)
			return &s->messages[mid];
		if (s->messages[mid].index < index)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The events that follow a message.accepted entry and name it by accepted_index. */
static bool is_message_outcome(const char *event)
{
	return strcmp(event, "message.delivered") == 0 ||
	       strcmp(event, "message.acknowledged") == 0 || strcmp(event, "message.expired") == 0;
}

static bool about_the_person(const struct subject *s, const struct aj_doc *d,
                             const struct audit_leaf *lf)
{
	const struct aj_node *subjects = aj_member(d, lf->body, "subjects");
	if (!subjects || subjects->type != AJ_ARRAY)
		return false;
	for (const struct aj_node *p = aj_first(d, subjects); p; p = aj_next(d, p)) {
		if (p->type == AJ_STRING && subject_has(s, p->str))
			return true;
	}
	return false;
}

/*
 * The message the entry belongs to when it is about the person, else NULL
 * (*oom set when it could not be remembered). Judged by the signed entry
 * alone (lf), so an edited at, kind or seq column can neither hide an
 * exchange nor break the link from a delivery to it: accepted_index is the
 * signed index of the message.accepted entry.
 */
static struct subject_message *subject_pick(struct subject *s, const struct aj_doc *d,
                                            const struct audit_leaf *lf, bool *oom)
{
	if (strcmp(lf->event, "message.accepted") != 0) {
		uint64_t accepted;
		if (!is_message_outcome(lf->event) ||
		    !aj_uint(aj_member(d, lf->body, "accepted_index"), &accepted))
			return NULL;
		struct subject_message *m = message_find(s, accepted);
		/* rising order reads a message before its outcomes, unless it names a later one */
		if (!m && accepted >= lf->index)
			s->reread = true;
		return m;
	}
	if (s->known)
		return about_the_person(s, d, lf) ? message_find(s, lf->index) : NULL;
	s->accepted_seen++;
	const struct aj_node *subjects = aj_member(d, lf->body, "subjects");
	if (!subjects || subjects->type != AJ_ARRAY)
		s->without_subjects++;
	if (!about_the_person(s, d, lf))
		return NULL;
	struct subject_message *m = message_add(s, lf->index);
	*oom = !m;
	return m;
}

/* Keep a copy of an entry to list: only the person's, so few. */
static int subject_keep(struct subject *s, uint64_t index, const char *leaf, size_t len)
{
	if (s->n_found == s->cap_found) {
		size_t cap = s->cap_found ? s->cap_found * 2 : 16;
		struct subject_found *f = realloc(s->found, cap * sizeof(*f));
		if (!f)
			return ISG_ERR_NOMEM;
		s->found = f;
		s->cap_found = cap;
	}
	char *copy = malloc(len ? len : 1);
	if (!copy)
		return ISG_ERR_NOMEM;
	memcpy(copy, leaf, len);
	s->found[s->n_found] = (struct subject_found){index, s->n_found, copy, len};
	s->n_found++;
	return 0;
}

static void subject_found_clear(struct subject *s)
{
	for (size_t i = 0; i < s->n_found; i++)
		free(s->found[i].leaf);
	s->n_found = 0;
}

/*
 * Every entry of the log comes here, whatever its time: a message accepted
 * before the period may be delivered, acknowledged or expire in it, and only
 * its message.accepted entry says it is about the person. What is listed,
 * and counted as an exchange, is what happened in the period.
 */
static int subject_entry(void *ctx, const struct aj_doc *d, const struct audit_leaf *lf,
                         int64_t at_ms, const char *leaf, size_t len)
{
	struct subject *s = ctx;
	bool oom = false;
	if (lf->index <= s->last_index)
		s->reread = true;
	s->last_index = lf->index;
	struct subject_message *m = subject_pick(s, d, lf, &oom);
	if (m && strcmp(lf->event, "message.delivered") == 0)
		m->delivered = true;
	if (m && strcmp(lf->event, "message.expired") == 0)
		m->expired = true;
	if (!oom && m && at_ms >= s->from_ms && at_ms <= s->to_ms) {
		if (!m->listed)
			s->exchanges++;
		m->listed = true;
		oom = subject_keep(s, lf->index, leaf, len) != 0;
	}
	if (oom) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

static int found_cmp(const void *a, const void *b)
{
	const struct subject_found *x = a, *y = b;
	if (x->index != y->index)
		return x->index < y->index ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* What was found, in signed index order whatever the rows' order. */
static int subject_print(struct subject *s)
{
	struct aj_doc d;
	struct audit_leaf lf;
	int status = CTL_EXIT_OK;
	if (s->n_found)
		qsort(s->found, s->n_found, sizeof(*s->found), found_cmp);
	aj_doc_init(&d);
	for (size_t i = 0; i < s->n_found && status == CTL_EXIT_OK; i++) {
		const struct subject_found *f = &s->found[i];
		/* read whole once already: only memory can fail it now */
		if (audit_leaf_parse(&d, f->leaf, f->len, &lf, NULL) != 0) {
			ctl_warn("out of memory");
			status = CTL_EXIT_LOCAL;
			break;
		}
		lister_row(&s->ls, &d, &lf, f->leaf, f->len);
	}
	aj_doc_release(&d);
	return lister_flush(status);
}

/*
 * Read the log, and again if its rows were out of signed order (see struct
 * subject), then print. r is the first read: it warns, and says what could
 * not be read.
 */
static int subject_search(struct audit_log *l, struct audit_reader *r, struct subject *s)
{
	int status = audit_read_entries(l, r, subject_entry, s);
	if (status == CTL_EXIT_OK && s->reread) {
		struct audit_reader again;
		audit_reader_init(&again, r->from_ms, r->to_ms);
		again.quiet = true;
		subject_found_clear(s); /* nothing listed yet, every message known */
		s->exchanges = 0;
		for (size_t i = 0; i < s->n_messages; i++)
			s->messages[i].listed = false;
		s->known = true;
		status = audit_read_entries(l, &again, subject_entry, s);
		audit_reader_release(&again);
	}
	/* what was found is listed even when the read failed, as list does */
	int printed = subject_print(s);
	return status == CTL_EXIT_OK ? printed : status;
}

struct ident_arg {
	enum pseudo_type type;
	char *value;        /* points into argv: wiped after use */
	const char *option; /* its long option's name */
};

/* What the prompt calls each kind of identifier. */
static const char *ident_prompt(enum pseudo_type t)
{
	switch (t) {
	case PSEUDO_NHS_NUMBER:
		return "NHS number";
	case PSEUDO_PNC_ID:
		return "PNC ID";
	case PSEUDO_POSTCODE:
		return "Postcode";
	case PSEUDO_EMAIL:
		return "Email address";
	case PSEUDO_NAME:
		return "Name";
	default:
		return "Identifier";
	}
}

/* The signal that ended a read at the terminal; 0 while none has. */
static volatile sig_atomic_t tty_signal;

static void tty_interrupted(int sig)
{
	tty_signal = sig;
}

/* Signals that end a read at the terminal, whose echo must come back first. */
static const int tty_signals[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP};

/*
 * One line typed at the terminal, not echoed: an identifier on the screen
 * is in the scrollback, a screen share or a recording. Echo comes back on
 * every path: the line read, end of input, an error, and the signals that
 * end the command (caught, so that the terminal is restored before the
 * signal is raised again); a stop (^Z) is held off while echo is off, as
 * the shell would otherwise be left without it.
 */
static int read_tty_line(const struct ident_arg *id, char *buf, size_t size, size_t *len)
{
	struct termios saved, quiet;
	if (tcgetattr(STDIN_FILENO, &saved) != 0) {
		ctl_warn("--%s -: cannot read the terminal: %s", id->option, ctl_errno_text(errno));
		return CTL_EXIT_LOCAL;
	}
	struct sigaction catch = {.sa_handler = tty_interrupted}, old[ARRAY_LEN(tty_signals)];
	sigemptyset(&catch.sa_mask); /* no SA_RESTART: a signal ends the read */
	sigset_t stops, before;
	sigemptyset(&stops);
	sigaddset(&stops, SIGTSTP);
	sigaddset(&stops, SIGTTIN);
	sigaddset(&stops, SIGTTOU);
	tty_signal = 0;
	for (size_t i = 0; i < ARRAY_LEN(tty_signals); i++)
		sigaction(tty_signals[i], &catch, &old[i]);
	sigprocmask(SIG_BLOCK, &stops, &before);
	quiet = saved;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	fprintf(stderr, "%s (not shown): ", ident_prompt(id->type));
	fflush(stderr);
	ssize_t n = -1;
	int err = 0;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) != 0) {
		err = errno;
	} else {
		*len = 0;
		/* canonical mode: read returns at the end of a line, or at ^D */
		while (*len + 1 < size && !tty_signal &&
		       (n = read(STDIN_FILENO, buf + *len, size - 1 - *len)) > 0) {
			*len += (size_t)n;
			if (buf[*len - 1] == '\n')
				break;
		}
		if (n < 0)
			err = errno;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
	}
	fputc('\n', stderr); /* the line end the user typed was not echoed either */
	for (size_t i = 0; i < ARRAY_LEN(tty_signals); i++)
		sigaction(tty_signals[i], &old[i], NULL);
	sigprocmask(SIG_SETMASK, &before, NULL);
	if (tty_signal) {
		sodium_memzero(buf, size);
		raise(tty_signal); /* as it would have ended the command, now echo is back */
		ctl_warn("--%s -: interrupted", id->option);
		return CTL_EXIT_LOCAL;
	}
	if (err) {
		sodium_memzero(buf, size);
		ctl_warn("--%s -: cannot read the terminal: %s", id->option, ctl_errno_text(err));
		return CTL_EXIT_LOCAL;
	}
	buf[*len] = '\0';
	if (*len == 0) {
		ctl_warn("--%s -: nothing was typed", id->option);
		return CTL_EXIT_LOCAL;
	}
	if (buf[*len - 1] != '\n' && *len + 1 >= size) {
		sodium_memzero(buf, size);
		ctl_warn("--%s -: the line typed is too long", id->option);
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/* The identifier, from the option's value or, for "-", one line of standard input. */
static int read_identifier(const struct ident_arg *id, char *buf, size_t size, size_t *len)
{
	if (strcmp(id->value, "-") != 0) {
		*len = strlen(id->value);
		if (*len >= size) {
			ctl_warn("--%s: too long", id->option);
			return CTL_EXIT_LOCAL;
		}
		memcpy(buf, id->value, *len + 1);
		return CTL_EXIT_OK;
	}
	if (isatty(STDIN_FILENO)) {
		int status = read_tty_line(id, buf, size, len);
		if (status == CTL_EXIT_OK && buf[*len - 1] == '\n')
			buf[--*len] = '\0';
		if (status == CTL_EXIT_OK && *len && buf[*len - 1] == '\r')
			buf[--*len] = '\0';
		return status;
	}
	/* read(2) into buf itself, not stdio: its buffer would keep a copy no one wipes */
	size_t got = 0;
	const char *nl = NULL;
	while (!nl && got + 1 < size) {
		ssize_t n = read(STDIN_FILENO, buf + got, size - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			sodium_memzero(buf, size);
			ctl_warn("--%s -: cannot read standard input: %s", id->option,
			         ctl_errno_text(errno));
			return CTL_EXIT_LOCAL;
		}
		if (n == 0)
			break;
		nl = memchr(buf + got, '\n', (size_t)n);
		got += (size_t)n;
	}
	char more = 0;
	if (!nl && got + 1 >= size && read(STDIN_FILENO, &more, 1) > 0) {
		sodium_memzero(buf, size);
		sodium_memzero(&more, sizeof(more));
		ctl_warn("--%s -: the line on standard input is too long", id->option);
		return CTL_EXIT_LOCAL;
	}
	*len = nl ? (size_t)(nl - buf) : got;
	sodium_memzero(buf + *len, size - *len); /* what followed the line, and the line end */
	if (*len && buf[*len - 1] == '\r')
		buf[--*len] = '\0';
	if (got == 0) {
		ctl_warn("--%s -: nothing on standard input", id->option);
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/* The audit domain's position in the keyring, or SIZE_MAX. */
static size_t audit_domain(const struct keyring *ring, size_t *n_versions)
{
	for (size_t i = 0; i < keyring_domain_count(ring); i++)
		if (strcmp(keyring_domain_name(ring, i, n_versions), KEYS_AUDIT_DOMAIN) == 0)
			return i;
	return SIZE_MAX;
}

/* The subject's pseudonym under every version of the audit key, retired ones included. */
static int subject_pseudonyms(const struct keyring *ring, enum pseudo_type type, const char *norm,
                              size_t len, struct subject *s)
{
	size_t n_versions = 0;
	audit_domain(ring, &n_versions);
	s->pseudonyms = sodium_allocarray(n_versions ? n_versions : 1, PSEUDO_TEXT_MAX);
	if (!s->pseudonyms) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	s->cap = n_versions;
	s->n = keyring_pseudonymise_all(ring, KEYS_AUDIT_DOMAIN, type, norm, len, s->pseudonyms,
	                                s->cap);
	return CTL_EXIT_OK;
}

static int load_audit_keyring(const struct audit_log *l, struct keyring **ring)
{
	char err[512] = "";
	if (!l->keys_dir) {
		ctl_warn("no keys directory: give --keys KEYS_DIR or --config ISGD_YAML");
		return CTL_EXIT_LOCAL;
	}
	int rc = keys_load_domains(l->keys_dir, ring, err, sizeof(err));
	if (rc == ISG_ERR_DENIED &&
	    audit_key_file_unreadable(l->keys_dir, KEYS_DOMAINS_DIR "/" KEYS_AUDIT_DOMAIN ".key")) {
		/* No --pubkey-file here: pseudonymising the subject takes the secret key itself. */
		ctl_warn("%s (run it as the keys' owner: a subject is looked up through the audit "
		         "linkage domain's key, %s/%s.key)",
		         err[0] ? err : isg_strerror(rc), KEYS_DOMAINS_DIR, KEYS_AUDIT_DOMAIN);
		return CTL_EXIT_LOCAL;
	}
	if (rc != 0) {
		ctl_warn("%s", err[0] ? err : isg_strerror(rc));
		return CTL_EXIT_LOCAL;
	}
	if (!keyring_has(*ring, KEYS_AUDIT_DOMAIN)) {
		ctl_warn("no key for the audit linkage domain in '%s/%s/%s.key': the log's "
		         "subjects cannot be searched (create it with 'isgctl keys new-domain %s "
		         "%s')",
		         l->keys_dir, KEYS_DOMAINS_DIR, KEYS_AUDIT_DOMAIN, l->keys_dir,
		         KEYS_AUDIT_DOMAIN);
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/*
 * Read the identifier (at a prompt, when it is '-' at a terminal) and
 * normalise it into guarded memory, *norm (sodium_free it), before the log
 * is opened: a person typing must not hold the store's read snapshot open.
 * Every other copy is wiped, the command line's included.
 */
static int subject_read(const struct ident_arg *id, char **norm)
{
	char *raw = sodium_malloc(SUBJECT_LINE_MAX);
	*norm = sodium_malloc(PSEUDO_VALUE_MAX + 1);
	size_t len = 0;
	int status = raw && *norm ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
	if (status != CTL_EXIT_OK)
		ctl_warn("out of memory");
	if (status == CTL_EXIT_OK)
		status = read_identifier(id, raw, SUBJECT_LINE_MAX, &len);
	sodium_memzero(id->value, strlen(id->value)); /* off the command line (ps) too */
	const char *reason = NULL;
	if (status == CTL_EXIT_OK && pseudo_normalise(id->type, raw, len, *norm, &reason) != 0) {
		ctl_warn("--%s: %s", id->option, reason ? reason : "not a valid value");
		status = CTL_EXIT_LOCAL;
	}
	if (raw)
		sodium_free(raw); /* sodium_free wipes */
	return status;
}

/* The normalised identifier's pseudonyms under every reachable audit key version. */
static int subject_prepare(const struct audit_log *l, const struct ident_arg *id, const char *norm,
                           struct keyring **ring, struct subject *s)
{
	int status = load_audit_keyring(l, ring);
	if (status == CTL_EXIT_OK)
		status = subject_pseudonyms(*ring, id->type, norm, strlen(norm), s);
	return status;
}

static int subject_help(void)
{
	printf("%s\nLists every exchange whose message named one identifier: the\n"
	       "message.accepted entries whose subjects include its pseudonym under the\n"
	       "audit linkage domain, with the delivered, acknowledged and expired entries\n"
	       "of those messages. A name or a postcode is not one person's alone, and a\n"
	       "person may be named by other identifiers: for a subject access request,\n"
	       "search each identifier held for them (the NHS number first) and check each\n"
	       "exchange found. Give exactly one identifier; '-' reads it from standard\n"
	       "input (at a terminal, at a prompt that does not echo it), which keeps it\n"
	       "off the command line (other local users can see command lines). The\n"
	       "identifier is normalised as the gateway does and never printed. Refused\n"
	       "messages and connections hold no subjects and are not found. --from, --to,\n"
	       "--format, --pubkey, --pubkey-file and --against are as for 'isgctl audit\n"
	       "list', and as there the last line says whether the log verified against\n"
	       "its signed checkpoints. The identifier is matched over the whole log:\n"
	       "--from and --to say what is listed, so a delivery in the period of a\n"
	       "message accepted before it is listed, and its exchange counted. Exits 1,\n"
	       "after listing what it found, when the log FAILED or was NOT VERIFIED, or\n"
	       "entries cannot be read (the answer is then INCOMPLETE).\n\n",
	       subject_usage);
	audit_where_help(stdout, SUBJECT_TAKES);
	return CTL_EXIT_OK;
}

static int subject_options(int argc, char **argv, struct audit_where *w, struct list_filter *f,
                           struct ident_arg *id, struct against *a)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"against", required_argument, NULL, OPT_AGAINST},
	    {"from", required_argument, NULL, OPT_FROM},
	    {"to", required_argument, NULL, OPT_TO},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"nhs-number", required_argument, NULL, OPT_IDENT + PSEUDO_NHS_NUMBER},
	    {"pnc-id", required_argument, NULL, OPT_IDENT + PSEUDO_PNC_ID},
	    {"postcode", required_argument, NULL, OPT_IDENT + PSEUDO_POSTCODE},
	    {"email", required_argument, NULL, OPT_IDENT + PSEUDO_EMAIL},
	    {"name", required_argument, NULL, OPT_IDENT + PSEUDO_NAME},
	    {"identifier", required_argument, NULL, OPT_IDENT + PSEUDO_IDENTIFIER},
	    {NULL, 0, NULL, 0},
	};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, subject_usage);
	o.many = against_many;
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == OPT_AGAINST) {
			a->files[a->n++] = optarg;
			continue;
		}
		if (opt > OPT_IDENT && opt <= OPT_IDENT + PSEUDO_IDENTIFIER) {
			if (id->value)
				return ctl_usage_error(subject_usage,
				                       "give one identifier per search");
			id->type = (enum pseudo_type)(opt - OPT_IDENT);
			id->value = optarg;
			id->option = o.name;
			continue;
		}
		int r = filter_option(f, opt, optarg, subject_usage);
		if (r < 0)
			return CTL_EXIT_USAGE;
		if (r == 0)
			audit_where_option(w, opt, optarg);
	}
	if (w->help)
		return CTL_EXIT_OK;
	if (optind != argc)
		return ctl_usage_error(subject_usage, "audit subject takes no arguments");
	if (!id->value)
		return ctl_usage_error(subject_usage, "say whom to search for: --nhs-number, "
		                                      "--pnc-id, --postcode, --email, --name or "
		                                      "--identifier");
	return filter_check(f, subject_usage);
}

/*
 * What was found, on standard error: how many exchanges held the
 * identifier, not how many concerned the person (a name or a postcode is
 * not a person's alone), and those still waiting at the gateway.
 */
static void subject_summary(const struct subject *s)
{
	if (s->without_subjects)
		ctl_warn("note: %" PRIu64 " of the log's %" PRIu64
		         " message.accepted entries carry no "
		         "subjects (written before isgd audited subjects) and cannot be "
		         "searched",
		         s->without_subjects, s->accepted_seen);
	ctl_warn("%" PRIu64 " exchange%s named this identifier (%" PRIu64 " entr%s listed)",
	         s->exchanges, s->exchanges == 1 ? "" : "s", s->ls.shown,
	         s->ls.shown == 1 ? "y" : "ies");
	uint64_t waiting = 0, expired = 0;
	for (size_t i = 0; i < s->n_messages; i++) {
		const struct subject_message *m = &s->messages[i];
		if (m->listed && !m->delivered)
			*(m->expired ? &expired : &waiting) += 1;
	}
	if (waiting)
		ctl_warn("%" PRIu64 " of them not yet delivered: no message.delivered entry in the "
		         "log, so the recipient has not collected %s",
		         waiting, waiting == 1 ? "it" : "them");
	if (expired)
		ctl_warn("%" PRIu64 " of them expired undelivered: purged, never collected by the "
		         "recipient",
		         expired);
}

int audit_subject_cmd(int argc, char **argv)
{
	/* --keys is read for the audit domain's key, whatever verifier key is given */
	struct audit_where w = {.takes = SUBJECT_TAKES, .keys_read = true};
	struct list_filter f;
	struct ident_arg id = {0};
	struct against a;
	filter_init(&f);
	if (against_init(&a, argc) != CTL_EXIT_OK)
		return CTL_EXIT_LOCAL;
	int status = subject_options(argc, argv, &w, &f, &id, &a);
	if (status == CTL_EXIT_OK && !w.help)
		status = against_readable(&a);
	if (id.value && (status != CTL_EXIT_OK || w.help))
		sodium_memzero(id.value, strlen(id.value));
	if (status == CTL_EXIT_OK && w.help)
		status = subject_help();
	if (status != CTL_EXIT_OK || w.help) {
		free(a.files);
		return status;
	}
	struct audit_log l;
	struct keyring *ring = NULL;
	struct subject s = {.from_ms = f.from_ms, .to_ms = f.to_ms, .ls = {.format = f.format}};
	struct audit_reader r;
	audit_reader_init(&r, INT64_MIN, INT64_MAX); /* the person is matched over the whole log */
	char *norm = NULL;
	status = subject_read(&id, &norm);
	if (status == CTL_EXIT_OK)
		status = audit_log_open(&l, &w, subject_usage, true);
	else
		memset(&l, 0, sizeof(l)); /* nothing to release */
	if (status == CTL_EXIT_OK)
		status = subject_prepare(&l, &id, norm, &ring, &s);
	if (norm)
		sodium_free(norm);
	if (status == CTL_EXIT_OK)
		status = subject_search(&l, &r, &s);
	bool answered = status == CTL_EXIT_OK;
	if (answered)
		subject_summary(&s);
	/* An answer to a subject access request that left entries out must not look complete. */
	if (answered && r.unread) {
		audit_reader_incomplete(
		    &r, "the answer",
		    "may be about this person; run 'isgctl audit verify' and do "
		    "not send this answer as complete");
		status = CTL_EXIT_LOCAL;
	}
	/* nor one read from entries that are not what was signed */
	if (answered)
		status = integrity_after(&l, &w, &a, "this answer", status);
	if (s.pseudonyms)
		sodium_free(s.pseudonyms);
	free(s.messages);
	subject_found_clear(&s);
	free(s.found);
	keyring_free(ring);
	audit_reader_release(&r);
	audit_log_release(&l);
	free(a.files);
	return status;
}
